"""The bonding prior and special positions in the sampler: real structures cost nothing,
clashes and impossible distances cost about a unit each, the gradient is the energy's, and
atoms of a site order k > 1 are sampled on their site symmetry."""
from __future__ import annotations

from pathlib import Path

import gemmi
import numpy as np
import pytest
import torch

from xdxd.crystal.dataset import DataSet
from xdxd.crystal.symmetry import (find_spacegroup, stabilizer_order,
                                   site_orders, spacegroup_from_record, spglib_number,
                                   stabilizer_orders, symops, unique_images)
from xdxd.solve.diffusion import bonding
from xdxd.solve.diffusion.config import SamplerConfig
from xdxd.solve.diffusion.guidance import bonding_gradient
from xdxd.solve.diffusion.problem import make_problem, special_images
from xdxd.score import site_match
from xdxd.prep import prepare_from_model_cif

DATA = Path(__file__).parent / "data" / "cod"


RELOCATE_100 = SamplerConfig(relocate_moves=100, relocate_proposals=64)


def reference_problem(cod_id: str, d_min: float = 2.0, **prep):
    """(record, Problem with the reference's site orders, reference non-H frac (N,3))."""
    rec = prepare_from_model_cif(str(DATA / f"{cod_id}.cif"), d_min=d_min, **prep)[0]
    atoms = [a for a in rec["reference"]["atoms"] if a["element"] not in ("H", "D")]
    sg = spacegroup_from_record(rec["spacegroup"])
    cell = gemmi.UnitCell(*rec["cell"])
    frac = np.array([a["xyz"] for a in atoms]) % 1.0
    orders = stabilizer_order(frac, symops(sg), cell)
    refl = rec["reflections"]
    hkl = np.stack([refl["h"], refl["k"], refl["l"]], 1)
    F = np.array(refl["F"])
    prob = make_problem(DataSet(cell, sg, hkl, F, np.zeros_like(F)), [a["element"] for a in atoms],
                        site_orders=[int(k) for k in orders])
    return rec, prob, frac


@pytest.mark.parametrize("cod_id", ["2205750", "2202108", "2203315", "4021477", "1100688"])
def test_real_structures_have_no_bonding_faults(cod_id):
    _, prob, frac = reference_problem(cod_id)
    energy, grad = bonding_gradient(prob, torch.tensor(frac, dtype=torch.float32)[None])
    assert energy.item() < 0.05, f"{cod_id}: {energy.item()}"
    assert torch.isfinite(grad).all()


def test_faults_cost_about_a_unit_each():
    """Two C atoms: a bond costs nothing, 1.9 Å (the gap) and 0.9 Å (a clash) cost."""
    cell = gemmi.UnitCell(20, 20, 20, 90, 90, 90)
    sg = find_spacegroup("P 1")
    ops = symops(sg)
    rot, tran = torch.tensor(ops.rot, dtype=torch.float32), torch.tensor(ops.tran, dtype=torch.float32)
    orth = torch.tensor(np.array(cell.orth.mat), dtype=torch.float32)
    tables = bonding.bonding_tables(["C", "C"])

    def energy_at(d):
        x = torch.tensor([[[0.5, 0.5, 0.5], [0.5 + d / 20, 0.5, 0.5]]])
        return bonding.energy_terms(x, tables, rot, tran, orth)

    bond = energy_at(1.45)
    assert sum(v.item() for v in bond.values()) < 1e-6
    assert 0.5 < energy_at(1.93)["gap"].item() <= 1.0
    assert energy_at(0.9)["close"].item() > 1.0
    lonely = energy_at(3.0)
    assert lonely["isolated"].item() > 2.0  # both atoms have no bond


def test_gradient_is_the_energy_derivative():
    _, prob, frac = reference_problem("2205750")
    x = torch.tensor(frac, dtype=torch.float32)[None]
    x = torch.remainder(x + 0.02 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1)), 1.0)
    e0, g = bonding_gradient(prob, x)
    step = 1e-3  # Å, along a random Cartesian direction
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    v = v / v.norm()
    e1, _ = bonding_gradient(prob, torch.remainder(x + step * v @ prob.deorth.T, 1.0))
    e_1, _ = bonding_gradient(prob, torch.remainder(x - step * v @ prob.deorth.T, 1.0))
    numeric = (e1 - e_1) / (2 * step)
    assert e0.item() > 0.0
    torch.testing.assert_close(numeric, (g * v).sum().reshape(1), rtol=0.05, atol=0.05)


def test_site_orders_from_cell_contents():
    p21m = symops(find_spacegroup("P 1 21/m 1"))
    assert stabilizer_orders(p21m) == (2,)
    # 2203315: the whole molecule on the mirror
    assert site_orders({"C": 6, "N": 3, "O": 3}, {"C": 12, "N": 6, "O": 6}, p21m) == \
        {"C": [2] * 6, "N": [2] * 3, "O": [2] * 3}
    assert site_orders({"C": 2}, {"C": 8}, p21m) == {"C": [1, 1]}
    assert site_orders({"C": 2}, {"C": 6}, p21m) == {"C": [2, 1]}
    with pytest.raises(ValueError):
        site_orders({"C": 2}, {"C": 5}, p21m)
    assert stabilizer_orders(symops(find_spacegroup("P 21 21 21"))) == ()
    assert set(stabilizer_orders(symops(find_spacegroup("I 41/a c d:2")))) == {2, 4}


def test_prep_records_cell_contents_and_the_sampler_reads_special_sites():
    from xdxd.solve.diffusion import problem_from_record
    rec = prepare_from_model_cif(str(DATA / "2203315.cif"), d_min=2.0)[0]
    assert rec["cell_contents"] == {"C": 12, "N": 6, "O": 6}
    prob = problem_from_record(rec)
    assert torch.allclose(prob.site_weight, torch.full((12,), 0.5))
    general = prepare_from_model_cif(str(DATA / "2205750.cif"), d_min=2.0)[0]
    assert torch.all(problem_from_record(general).site_weight == 1.0)


def test_special_images_put_atoms_on_the_mirror_and_samples_keep_the_group():
    from xdxd.model import diffusion
    from xdxd.solve.diffusion import sampler
    rec, prob, frac = reference_problem("2203315")
    sg = spacegroup_from_record(rec["spacegroup"])
    x = torch.rand(4, prob.n_atoms, 3, generator=torch.Generator().manual_seed(0))
    on = special_images(prob, x)
    # P 1 21/m 1 has order-2 sites only: the mirrors y = 1/4, 3/4 and the inversion centres;
    # each atom goes to the nearest, at most half the distance to its nearest image
    for f, f0 in zip(on.numpy().astype(float), x.numpy().astype(float)):
        assert np.all(stabilizer_order(f, prob.ops, prob.cell, tol=1e-3) == 2)
        moved = np.linalg.norm(((f - f0 + 0.5) % 1.0 - 0.5) @ np.array(prob.cell.orth.mat).T, axis=1)
        assert np.all(moved < 0.5 * min(prob.cell.a, prob.cell.b, prob.cell.c))
    on_mirror = torch.minimum((on[..., 1] - 0.25).abs(), (on[..., 1] - 0.75).abs()) < 1e-5
    assert torch.allclose(on[..., [0, 2]][on_mirror], x[..., [0, 2]][on_mirror])
    out, r1 = sampler.sample(None, diffusion.NoiseSchedule(bonding_free_cfg()), prob, 3,
                             SamplerConfig(bonding=0.05), steps=6, seed=1)
    z = np.array([gemmi.Element(e).atomic_number for e in prob.elements])
    for f in out.numpy().astype(float):
        assert np.all(stabilizer_order(f, prob.ops, prob.cell, tol=1e-3) == 2)
        images, owner = unique_images(f, prob.ops, prob.cell, tol=1e-3)
        assert len(images) == 2 * prob.n_atoms  # two images per site, not four
        assert spglib_number(prob.cell, images, z[owner]) == sg.number
    assert torch.isfinite(r1).all()


def test_the_true_structure_with_special_sites_fits_its_data():
    """Weights 1/k in |Fc| reproduce the data of a structure on a mirror (no H in the data,
    one Uiso for its anisotropic atoms); counting some of them twice (weight 1) does not."""
    from xdxd.solve.diffusion.guidance import r1_of
    _, prob, frac = reference_problem("2203315", hydrogens_in_data=False, biso=3.0)
    x = torch.tensor(frac, dtype=torch.float32)[None]
    assert r1_of(prob, x).item() < 0.02
    prob.site_weight = torch.where(torch.arange(prob.n_atoms) < 6, 1.0, prob.site_weight)
    assert r1_of(prob, x).item() > 0.1


def bonding_free_cfg():
    from xdxd.model.network import ModelConfig
    return ModelConfig(n_sigmas=100)


def test_label_swaps_put_the_heavy_atom_back_on_its_site():
    from xdxd.solve.diffusion import moves
    from xdxd.solve.diffusion.guidance import r1_of
    _, prob, frac = reference_problem("2205750", hydrogens_in_data=False, biso=3.0)
    x = torch.tensor(frac, dtype=torch.float32)[None]
    s, c = prob.elements.index("S"), prob.elements.index("C")
    wrong = x.clone()
    wrong[0, [s, c]] = x[0, [c, s]]
    fixed = moves.swap_labels(prob, torch.cat([wrong, x]))
    assert torch.equal(fixed[0], x[0]) and torch.equal(fixed[1], x[0])
    assert r1_of(prob, wrong).item() > 3 * r1_of(prob, x).item()


def test_candidates_are_distinct_site_patterns():
    from xdxd.crystal.statistics import distinct_patterns
    from xdxd.solve.diffusion.guidance import site_pattern
    _, prob, frac = reference_problem("2205750")
    x = torch.tensor(frac, dtype=torch.float32)[None]
    shifted = torch.remainder(x + torch.tensor([0.5, 0.0, 0.5]), 1.0)  # allowed in Pna21
    relabelled = x[:, torch.randperm(prob.n_atoms, generator=torch.Generator().manual_seed(0))]
    other = torch.rand(1, prob.n_atoms, 3, generator=torch.Generator().manual_seed(1))
    fc = site_pattern(prob, torch.cat([x, shifted, relabelled, other])).numpy()
    assert distinct_patterns(fc, range(4), limit=4) == [0, 3]
    assert distinct_patterns(fc, range(4), limit=1) == [0]


def test_relocation_puts_a_misplaced_atom_back_and_never_loses_the_best():
    from xdxd.solve.diffusion import moves
    _, prob, frac = reference_problem("2205750", hydrogens_in_data=False, biso=3.0)
    x = torch.tensor(frac, dtype=torch.float32)[None]
    o = prob.elements.index("O")
    wrong = x.clone()
    wrong[0, o] = torch.remainder(wrong[0, o] + torch.tensor([0.31, 0.17, 0.45]), 1.0)
    start = moves.objective(prob, wrong, 0.01)[0]
    out = moves.relocate(prob, wrong.repeat(4, 1, 1), RELOCATE_100, seed=0)
    end = moves.objective(prob, out, 0.01)[0]
    assert torch.all(end <= start + 1e-6)
    truth = moves.objective(prob, x, 0.01)[0]
    best = int(end.argmin())
    # back to the true structure (any O on that site): from 0.43 to within 0.01 of the truth
    # (0.006-0.008 above it with seed 0, depending on float32 rounding in the structure factors)
    assert end[best] < truth + 0.01
    assert site_match(prob.cell, prob.ops.hall, out[best].numpy(), frac) == 1.0


def test_difference_map_peaks_show_where_a_missing_atom_belongs():
    from xdxd.crystal.fourier import FourierGrid
    from xdxd.solve.diffusion import moves
    from xdxd.solve.diffusion.guidance import debye_waller, fit_u
    _, prob, frac = reference_problem("2205750", hydrogens_in_data=False, biso=3.0)
    x = torch.tensor(frac, dtype=torch.float32)[None].repeat(3, 1, 1)
    gen = torch.Generator().manual_seed(0)
    lost = [prob.elements.index("O"), prob.elements.index("N"), len(frac) - 1]
    for b, j in enumerate(lost):  # one light atom somewhere wrong in each structure
        x[b, j] = torch.rand(3, generator=gen)
    fc = moves._structure_factors(prob, x, prob.type_idx.expand(3, -1), prob.site_weight.expand(3, -1))
    fc = fc * debye_waller(prob, fit_u(prob, fc.abs()))  # at each structure's overall U
    grid = FourierGrid(prob.cell, prob.ops, prob.sf.hkl.numpy())
    peaks = moves.difference_peaks(prob, grid, fc)  # (3,P,3)
    for b, j in enumerate(lost):
        true = torch.tensor(frac[j], dtype=torch.float32)
        images = torch.einsum("oij,j->oi", prob.rot, true) + prob.tran  # (O,3)
        d = peaks[b, 0][None] - images
        d = d - torch.round(d)
        assert (d @ prob.orth.T).norm(dim=-1).min() < 0.5  # the highest peak is on its site


def test_relocation_moves_atoms_on_special_positions_within_their_site_symmetry():
    from xdxd.solve.diffusion import moves
    _, prob, frac = reference_problem("2203315", hydrogens_in_data=False, biso=3.0)  # P21/m
    assert torch.all(prob.site_weight == 0.5)  # the whole molecule lies on the mirror
    x = torch.tensor(frac, dtype=torch.float32)[None]
    c = len(frac) - 1
    wrong = x.clone()
    wrong[0, c] = torch.remainder(wrong[0, c] + torch.tensor([0.3, 0.0, 0.4]), 1.0)  # still on the mirror
    out = moves.relocate(prob, wrong.repeat(4, 1, 1), RELOCATE_100, seed=0)
    assert torch.allclose(special_images(prob, out), out, atol=1e-5)
    best = int(moves.objective(prob, out, 0.01)[0].argmin())
    assert site_match(prob.cell, prob.ops.hall, out[best].numpy(), frac) == 1.0


def test_atom_energy_is_the_change_of_the_bonding_energy():
    from xdxd.solve.diffusion.guidance import bonding_gradient
    _, prob, frac = reference_problem("2205750")
    x = torch.tensor(frac, dtype=torch.float32)[None]
    a = torch.tensor([3])
    pts = torch.remainder(x[:, 3:4] + 0.05 * torch.randn(1, 5, 3, generator=torch.Generator().manual_seed(0)), 1.0)
    args = (prob.bonding, prob.rot, prob.tran, prob.orth, prob.site_weight)
    e = bonding.atom_energy(pts, a, x, *args) - bonding.atom_energy(x[:, 3:4], a, x, *args)
    for k in range(5):
        y = x.clone()
        y[0, 3] = pts[0, k]
        total = bonding_gradient(prob, y)[0] - bonding_gradient(prob, x)[0]
        torch.testing.assert_close(e[0, k:k + 1], total, atol=1e-4, rtol=1e-4)


def test_pruned_lattice_cells_give_the_energy_of_all_27(monkeypatch):
    """Only translations along axes shorter than twice the reach are searched; energies,
    gradients and single-atom energies equal those over all 27 neighbouring cells, in a
    cell with one short axis (2205750: 3 cells) and one with two (1100688: 9)."""
    for cod_id, n_cells in (("2205750", 3), ("1100688", 9)):
        _, prob, frac = reference_problem(cod_id)
        assert len(bonding.lattice_cells(prob.orth)[0]) == n_cells
        gen = torch.Generator().manual_seed(0)
        x = torch.cat([torch.tensor(frac, dtype=torch.float32)[None],
                       torch.rand(7, len(frac), 3, generator=gen)])
        pts = torch.rand(8, 6, 3, generator=gen)
        atom = torch.randint(0, len(frac), (8,), generator=gen)
        args = (prob.bonding, prob.rot, prob.tran, prob.orth, prob.site_weight)
        pruned = (bonding_gradient(prob, x), bonding.atom_energy(pts, atom, x, *args))
        monkeypatch.setattr(bonding, "lattice_cells", lambda orth, reach_A=None: (bonding._CELLS, 13))
        full = (bonding_gradient(prob, x), bonding.atom_energy(pts, atom, x, *args))
        monkeypatch.undo()
        torch.testing.assert_close(pruned[0][0], full[0][0], atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(pruned[0][1], full[0][1], atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(pruned[1], full[1], atol=1e-3, rtol=1e-5)
