"""xdxd.refine.hydrogens: riding H counts and positions, special positions, and what
riding H do for refinement and C/N/O labels (problems simulated from tests/data/cod)."""
from __future__ import annotations

import numpy as np
import pytest

from test_refine import heavy_atoms, one_thread, simulate_record  # noqa: F401 (autouse fixture)
from xdxd import records
from xdxd.crystal.symmetry import (apply_ops, frac_distance, make_cell, spacegroup_from_record,
                                   symops, unique_images)
from xdxd.refine import LsqOptions, refine_record
from xdxd.crystal.chemistry import xh_distance
from xdxd.refine.hydrogens import RidingH, h_labels, neighbours, place


def _setup(cod_id: str, d_min: float = 1.0):
    rec = simulate_record(cod_id, d_min, hydrogens=True)
    cell = make_cell(rec["cell"])
    ops = symops(spacegroup_from_record(rec["spacegroup"]))
    return rec, cell, ops, heavy_atoms(rec)


def _cell_h(cell, ops, frac, occ) -> float:
    """H atoms in the unit cell: distinct images of each site × its occupancy."""
    if len(frac) == 0:
        return 0.0
    _, owner = unique_images(np.asarray(frac), ops, cell)
    return float(sum(occ[k] for k in owner))


def _cn_swapped(elements: list[str]) -> tuple[int, int, list[str]]:
    """(i, j, elements with the first N and the first C exchanged)."""
    i = elements.index("N")
    j = elements.index("C")
    wrong = list(elements)
    wrong[i], wrong[j] = wrong[j], wrong[i]
    return i, j, wrong


@pytest.mark.parametrize("cod_id", ["2205750", "2000724", "2016470", "2202108"])
def test_placed_h_match_the_published_ones(cod_id):
    rec, cell, ops, a = _setup(cod_id)
    h = place(cell, ops, a.elements, a.frac, rec["hydrogens"])
    assert sum(h.counts) == rec["hydrogens"] == len(h.frac)
    for x, p in zip(h.frac, h.parent):  # every H at its riding distance from its parent
        n_nb = len(neighbours(cell, ops, a.elements, a.frac)[p].vectors)
        d = frac_distance(x, a.frac[p], cell)
        assert d == pytest.approx(xh_distance(a.elements[p], n_nb, h.counts[p]), abs=1e-6)
    ref = np.array([x["xyz"] for x in rec["reference"]["atoms"] if x["element"] == "H"])
    images = apply_ops(ref, ops)                              # (H,O,3)
    nearest = [frac_distance(images, x[None, None], cell).min() for x in h.frac]
    assert np.median(nearest) < 0.2, nearest                  # Å; methyl rotations may be off


@pytest.mark.parametrize("cod_id", ["2203315", "1100688"])  # P21/m, Pmn21: parents on mirrors
def test_h_on_special_positions_are_not_doubled(cod_id):
    """H of a group on a mirror that are each other's images are placed once, and the
    cell holds as many H as the published model."""
    rec, cell, ops, a = _setup(cod_id)
    h = place(cell, ops, a.elements, a.frac, rec["hydrogens"])
    ref = [x for x in rec["reference"]["atoms"] if x["element"] == "H"]
    want = _cell_h(cell, ops, [x["xyz"] for x in ref], [x["occ"] for x in ref])
    assert _cell_h(cell, ops, h.frac, np.ones(len(h.frac))) == pytest.approx(want)
    images = apply_ops(h.frac, ops)
    for k in range(len(h.frac)):
        others = np.delete(images, k, axis=0)
        assert frac_distance(others, h.frac[k][None, None], cell).min() > 0.5


def test_neighbours_see_both_mirror_images():
    """C8 of 1100688 lies on the mirror between N2 and its image: three neighbours."""
    rec, cell, ops, a = _setup("1100688")
    nb = neighbours(cell, ops, a.elements, a.frac)[a.labels.index("C8")]
    assert sorted(nb.elements) == ["N", "N", "S"]


def test_riding_h_lower_r1_of_the_true_model():
    rec, _, _, a = _setup("2205750")
    rec["reference"]["atoms"] = [x for x in rec["reference"]["atoms"] if x["element"] != "H"]
    plain = refine_record(rec, source="reference", cycles=5, riding_h=False)["solution"]
    ride = refine_record(rec, source="reference", cycles=5)["solution"]  # on by default
    assert plain["r1"] > 0.02 and ride["r1"] < 0.005
    h = [x for x in ride["atoms"] if x["element"] == "H"]
    assert len(h) == rec["hydrogens"] and all(x["riding"] in a.labels for x in h)
    assert ride["riding_h"] == {"placed": 3, "sites": 3, "wanted": 3}
    # the statistics are those of the refinement, not of the pass that places the last H
    assert 1 <= ride["cycles"] <= 5 and ride["converged"] is True


def test_riding_h_off_when_the_data_have_none():
    rec = simulate_record("2205750", 1.0)  # metrics.hydrogens_in_data false
    rec["reference"]["atoms"] = [x for x in rec["reference"]["atoms"] if x["element"] != "H"]
    s = refine_record(rec, source="reference", cycles=3)["solution"]
    assert "riding_h" not in s and all(x["element"] != "H" for x in s["atoms"])


def test_riding_h_fix_labels_that_heavy_atoms_alone_get_wrong():
    """2016470 (P41) at 2.0 Å: a C/N swap the heavy-atom model keeps, riding H undo
    (without bond restraints, which undo it too: they are off here to see the H alone)."""
    rec, _, _, a = _setup("2016470", 2.0)
    i, j, wrong = _cn_swapped(a.elements)
    rec["solution"] = {"atoms": records.arrays_to_atoms(
        records.AtomArrays(wrong, a.frac, a.uiso, a.occ, a.labels))}
    plain = refine_record(rec, source="solution", cycles=10, riding_h=False, bonds=False)["solution"]
    ride = refine_record(rec, source="solution", cycles=10, bonds=False)["solution"]
    heavy = lambda s: [x["element"] for x in s["atoms"] if x["element"] != "H"]  # noqa: E731
    assert heavy(plain) != a.elements
    assert heavy(ride) == a.elements and ride["r1"] < plain["r1"]


def test_recount_fixes_h_counts_read_off_a_rough_model():
    """2202108 at 2.0 Å shaken by 0.15 Å: the H counts read off the shaken model are
    wrong; decided again on the refined parents (recount) they are those of the true
    geometry, and R1 falls."""
    from test_refine import data, perturb
    from xdxd.refine.hydrogens import h_counts, refine_riding
    rec, cell, ops, a = _setup("2202108", 2.0)
    d = data(rec)
    H = rec["hydrogens"]
    start = perturb(rec, a.frac, 0.15, seed=2)
    true = h_counts(cell, ops, a.elements, a.frac, H)
    assert h_counts(cell, ops, a.elements, start, H) != true
    runs = [refine_riding(d, a.elements, start, a.uiso,
                          a.occ, None, H, cycles=10, recount=again) for again in (False, True)]
    (plain, h0), (recounted, h1) = runs
    assert list(h0.counts) != true and list(h1.counts) == true
    assert recounted.r1 < plain.r1 - 0.01


def test_riding_solution_rewritten_with_zero_cycles_keeps_its_h():
    """`--from solution --cycles 0` (how the CIF and .res are written) re-places the riding
    H on the same parents instead of treating them as fixed atoms."""
    rec, _, _, _ = _setup("2205750")
    rec["reference"]["atoms"] = [x for x in rec["reference"]["atoms"] if x["element"] != "H"]
    first = refine_record(rec, source="reference", cycles=5)
    again = refine_record(first, source="solution", cycles=0, swap=False)["solution"]
    h0 = [x for x in first["solution"]["atoms"] if x.get("riding")]
    h1 = [x for x in again["atoms"] if x.get("riding")]
    assert [x["riding"] for x in h1] == [x["riding"] for x in h0] and len(h1) == 3
    assert again["r1"] == pytest.approx(first["solution"]["r1"], abs=1e-4)


def test_assign_counts_meets_the_total():
    from xdxd.refine.hydrogens import assign_counts
    opts = [[(0, 0.0), (1, 2.0)], [(1, 0.0), (2, 1.0)], [(3, 0.0), (2, 1.5)]]
    assert assign_counts(opts, None) == [0, 1, 3]
    assert assign_counts(opts, 4) == [0, 1, 3]
    assert assign_counts(opts, 5) == [0, 2, 3]          # the cheapest way to one more
    assert assign_counts(opts, 2) == [0, 1, 1]          # CH3 -> CH at the fallback price
    assert sum(assign_counts(opts, 9)) == 6             # unreachable: the nearest total


def test_ranked_counts_lists_the_next_best_assignments():
    from xdxd.refine.hydrogens import assign_counts, ranked_counts
    opts = [[(0, 0.0), (1, 0.7)], [(2, 0.0), (1, 1.0)], [(1, 0.0), (2, 2.0)]]
    ranked = ranked_counts(opts, 3, 3)
    assert ranked[0][1] == assign_counts(opts, 3) == [0, 2, 1]
    assert [c for _, c in ranked] == [[0, 2, 1], [1, 1, 1], [0, 1, 2]]  # NH instead of CH2, ...
    assert [p for p, _ in ranked] == pytest.approx([0.0, 1.7, 3.0])
    assert all(sum(c) == 3 for _, c in ranked)


def test_h_labels_are_unique_when_parents_share_a_number():
    # C2 and O2 both carry H: a CIF or .res must not get two atoms called H2
    h = RidingH(frac=np.zeros((5, 3)), parent=np.array([0, 1, 2, 2, 2]),
                uiso_factor=np.full(5, 1.2), counts=[1, 1, 3], wanted=5, unplaced=0)
    labels = h_labels(["O2", "C2", "N1"], ["O", "C", "N"], h)
    assert labels == ["H2O", "H2", "H1A", "H1B", "H1C"]
    h.parent = np.array([0, 1, 1])
    assert h_labels(["C1", "C2"], ["C", "C"], h) == ["H1", "H2A", "H2B"]
    h.parent = np.array([0, 1])  # labels that do not start with their element: numbered by site
    labels = h_labels(["X", "Y"], ["C", "N"], h)
    assert len(set(labels)) == 2 and labels == ["H1", "H2"]


def test_riding_h_move_with_their_parents():
    """refine_batch(riding=): an H has no parameters of its own; it keeps its offset from
    its parent (Å) and its Uiso stays factor × the parent's, while the parents refine."""
    from test_refine import data, perturb
    from xdxd.refine import refine_batch
    from xdxd.refine.hydrogens import riders
    rec, cell, ops, a = _setup("2205750")
    d = data(rec)
    h = place(cell, ops, a.elements, a.frac, rec["hydrogens"])
    start = perturb(rec, a.frac, 0.2, seed=3)
    h_start = h.frac + (start - a.frac)[h.parent]  # each H moved with its parent
    n = len(a)
    els = a.elements + ["H"] * len(h.frac)
    frac = np.vstack([start, h_start])
    uiso = np.concatenate([np.full(n, 0.04), 0.04 * h.uiso_factor])
    r, = refine_batch(d, els, frac, uiso, cycles=10,
                      riding=riders(n, h))
    orth = lambda f: f @ np.array(cell.orth.mat).T  # noqa: E731
    offset = lambda f: orth(f[n:] - f[h.parent])  # noqa: E731
    assert np.abs(r.frac[:n] - start).max() > 0.005  # the parents moved ...
    assert np.allclose(offset(r.frac), offset(frac), atol=1e-9)  # ... and took their H along
    assert np.allclose(r.uiso[n:], h.uiso_factor * r.uiso[h.parent])
    assert abs(r.uiso[0] - 0.04) > 1e-3 and r.r1 < 0.01


def test_riding_refinement_keeps_the_h_where_they_rode_when_that_fits_better():
    """Measured L-alanine at 2.0 Å from a start 0.15 Å off: the OH/NH3 H placed afresh on
    the refined parents turn away from where they rode (R1 0.070 with them); the riding
    refinement keeps whichever H fit the data better."""
    from xdxd.bench import prep_stage
    from test_refine import data, perturb
    from xdxd.refine.hydrogens import _statistics, _with_h, refine_riding
    from pathlib import Path
    rec = prep_stage(str(Path(__file__).parent / "data" / "measured" / "l-alanine"), 2.0, 0,
                     data="measured")
    d = data(rec)
    a = heavy_atoms(rec)
    cell, ops = make_cell(rec["cell"]), symops(spacegroup_from_record(rec["spacegroup"]))
    start = perturb(rec, a.frac, 0.15, seed=6)
    r, h = refine_riding(d, a.elements, start,
                         np.full(len(a), 0.04), a.occ, None, rec["hydrogens"], cycles=20)
    n = len(a)
    fresh = _statistics(d, _with_h(cell, ops, a.elements, r.frac[:n], r.uiso[:n], a.occ, None,
                                   rec["hydrogens"], h.counts), n, LsqOptions())
    assert r.r1 <= fresh.r1 + 1e-9 and r.r1 < 0.05, (r.r1, fresh.r1)


def test_final_refinement_decides_between_close_labellings(monkeypatch):
    """swap_riding's runners-up (labellings whose 4-cycle score came within CLOSE_MARGIN
    of its choice) are refined in full too, and the best of them is kept; here the swaps
    are made to choose a C/N swap of 2016470 (P41, 2.0 Å) with the true labels close."""
    import xdxd.refine as refine
    from xdxd.refine.swaps import swap_riding
    rec, _, _, a = _setup("2016470", 2.0)
    i, j, wrong = _cn_swapped(a.elements)
    rec["solution"] = {"atoms": records.arrays_to_atoms(
        records.AtomArrays(a.elements, a.frac, a.uiso, a.occ, a.labels))}
    back = {"i": i, "j": j, "from": [wrong[i], wrong[j]], "objective": 0.05, "riding_h": True}
    monkeypatch.setattr(refine, "swap_riding",
                        lambda *args, **kw: (wrong, [], None, [(list(a.elements), None, [back])]))
    s = refine_record(rec, source="solution", cycles=10)["solution"]
    assert [x["element"] for x in s["atoms"] if x["element"] != "H"] == a.elements
    assert s["swaps"] == [dict(back, by="final refinement")]
    # swap_riding's runners-up: the last round's labellings, best first, not its choice
    monkeypatch.undo()
    from test_refine import data
    import xdxd.refine.swaps as swap_search
    monkeypatch.setattr(swap_search, "CLOSE_MARGIN", 1.0)  # every labelling is close
    d = data(rec)
    els, swaps, _, close = swap_riding(d, wrong, a.frac,
                                       a.uiso, a.occ, rec["hydrogens"], count_frac=a.frac)
    assert els == a.elements and len(close) == 2 and all(e != els for e, _, _ in close)
    scores = [sw[-1]["objective"] for _, _, sw in close]
    assert scores == sorted(scores) and scores[0] > swaps[-1]["objective"] - 1e-4  # none was better


def test_swap_search_screens_many_variants_before_refining(monkeypatch):
    """With more swap variants than `screen`, all are judged as they stand (0 cycles) and
    only the `screen` best are refined; the wrong C/N pair of 2016470 is still put right."""
    import xdxd.refine.swaps as swap_search
    from test_refine import data
    from xdxd.refine.swaps import swap_riding
    rec, _, _, a = _setup("2016470", 2.0)
    _, _, wrong = _cn_swapped(a.elements)
    calls = []
    real = swap_search.refine_batch

    def spy(*args, cycles=10, **kw):
        calls.append((cycles, len(args[2])))
        return real(*args, cycles=cycles, **kw)
    monkeypatch.setattr(swap_search, "refine_batch", spy)
    d = data(rec)
    els, swaps, _, _ = swap_riding(d, wrong, a.frac,
                                   a.uiso, a.occ, rec["hydrogens"], screen=4)
    assert els == a.elements and len(swaps) == 1
    screened = sum(b for c, b in calls if c == 0)
    assert screened > 4 and all(b <= 4 for c, b in calls if c > 0)


def test_swap_search_runs_again_from_the_final_refinement(monkeypatch):
    """Once the swaps changed labels, the search runs a second time from the full
    refinement of the labels chosen (not from the positions the wrong labels left), and
    what it finds is kept only if the final score is better: here the first pass puts the
    C/N pair of 2016470 (P41, 2.0 Å) right; a second pass made to swap it back is refused."""
    import xdxd.refine as refine
    real = refine.swap_riding
    rec, _, _, a = _setup("2016470", 2.0)
    i, j, wrong = _cn_swapped(a.elements)
    rec["solution"] = {"atoms": records.arrays_to_atoms(
        records.AtomArrays(wrong, a.frac, a.uiso, a.occ, a.labels))}
    calls = []

    def spy(data, elements, frac, *args, **kw):
        calls.append((list(elements), np.array(frac)))
        if len(calls) == 1:
            return real(data, elements, frac, *args, **kw)
        back = {"i": i, "j": j, "from": [elements[i], elements[j]], "objective": 0.0, "riding_h": True}
        return wrong, [back], None, []
    monkeypatch.setattr(refine, "swap_riding", spy)
    s = refine_record(rec, source="solution", cycles=10)["solution"]
    assert len(calls) == 2 and calls[1][0] == a.elements
    heavy = [x for x in s["atoms"] if not x.get("riding")]
    assert [x["element"] for x in heavy] == a.elements and len(s["swaps"]) == 1
    # the second pass started from the final refinement of the first pass's labels
    assert not np.allclose(calls[1][1], calls[0][1], atol=1e-4)
    final = np.array([x["xyz"] for x in heavy])
    assert np.allclose(calls[1][1], final, atol=2e-6)
    # right labels from the start: no swaps, no second pass
    calls.clear()
    rec["solution"] = {"atoms": records.arrays_to_atoms(
        records.AtomArrays(a.elements, a.frac, a.uiso, a.occ, a.labels))}
    monkeypatch.setattr(refine, "swap_riding", lambda *args, **kw: (calls.append(1), real(*args, **kw))[1])
    s = refine_record(rec, source="solution", cycles=10)["solution"]
    assert len(calls) == 1 and s["swaps"] == []
