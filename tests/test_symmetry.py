"""Space-group handling: lookup, expansion, special positions, origin shifts."""
import gemmi
import numpy as np
import pytest

from xdxd.crystal.symmetry import (SpaceGroupError, find_spacegroup, make_cell, origin_shifts,
                                   stabilizer_order, special_position_projector,
                                   spacegroup_from_record, spacegroup_to_record, symops,
                                   unique_images)


def test_lookup_by_any_name():
    for key in ("P 1 21/c 1", "P21/c", "-P 2ybc", "14"):
        assert find_spacegroup(key).number == 14
    rec = spacegroup_to_record(find_spacegroup("P 1 21/n 1"))
    assert spacegroup_from_record(rec).xhm() == "P 1 21/n 1"
    assert spacegroup_from_record({"number": 19}).xhm() == "P 21 21 21"
    with pytest.raises(SpaceGroupError):
        find_spacegroup("Q 42/x")


def test_expansion_counts_special_positions_once():
    cell = make_cell([12.0, 7.5, 9.1, 90, 110, 90])
    ops = symops(find_spacegroup("C 1 2/c 1"))
    frac = np.array([[0.1, 0.2, 0.3], [0.0, 0.31, 0.25], [0.0, 0.0, 0.0]])
    pos, owner = unique_images(frac, ops, cell)
    assert np.bincount(owner).tolist() == [8, 4, 4]  # general, 2-fold axis, inversion centre
    assert stabilizer_order(frac, ops, cell).tolist() == [1, 2, 2]


def test_special_position_projector_keeps_site_on_axis():
    cell = make_cell([12.0, 7.5, 9.1, 90, 110, 90])
    ops = symops(find_spacegroup("C 1 2/c 1"))
    x0, P = special_position_projector(np.array([0.003, 0.31, 0.251]), ops, cell)
    assert np.allclose(x0, [0.0, 0.31, 0.25], atol=1e-9)
    moved = x0 + P @ np.array([0.05, 0.05, 0.05])
    assert np.allclose(moved[[0, 2]], [0.0, 0.25])  # still on the 2-fold axis along b
    assert stabilizer_order(moved[None], ops, cell)[0] == 2


def test_origin_shifts():
    shifts, polar = origin_shifts(symops(find_spacegroup("P 1 21/c 1")))
    assert len(polar) == 0
    assert len(shifts) == 8 and any(np.allclose(s, [0.5, 0, 0.5]) for s in shifts)
    _, polar = origin_shifts(symops(find_spacegroup("P 1 21 1")))
    assert len(polar) == 1 and abs(abs(polar[0][1]) - 1) < 1e-9  # free along b
    shifts, polar = origin_shifts(symops(find_spacegroup("I 41/a :1")))
    assert len(polar) == 0 and len(shifts) >= 2


def test_origin_shift_leaves_amplitudes_unchanged():
    from xdxd.crystal.structure_factors import structure_factors_of_atoms
    cell = make_cell([6.0, 7.5, 8.1, 90, 101, 90])
    sg = find_spacegroup("P 1 21/c 1")
    ops = symops(sg)
    rng = np.random.default_rng(1)
    frac = rng.random((4, 3))
    hkl = np.array([[h, k, l] for h in range(-3, 4) for k in range(0, 4) for l in range(0, 4)
                    if (h, k, l) != (0, 0, 0)])
    args = (["C", "N", "O", "C"], None, np.full(4, 0.03), np.ones(4))
    F0 = np.abs(structure_factors_of_atoms(cell, ops, hkl, args[0], frac, *args[2:]))
    shifts, _ = origin_shifts(ops)
    for s in shifts:
        F1 = np.abs(structure_factors_of_atoms(cell, ops, hkl, args[0], frac + s, *args[2:]))
        assert np.allclose(F0, F1, rtol=1e-9, atol=1e-9)
