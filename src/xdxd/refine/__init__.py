"""Refinement: least squares against the data, chemistry checks, element swaps.

`refine_record(rec)` is what `xdxd-refine` does to one record:

1. take the structures to refine: the record's `candidates` (the `top` best by their
   sampler R1), or its `solution`, or its `reference` (`source="reference"`, to validate
   the pipeline on a known structure);
2. refine them all at once (`least_squares.refine_batch`), check each one's chemistry
   (`chemistry.check`) and rank by R1 + CHEM_WEIGHT * chemistry score;
3. try element swaps on the best (`chemistry.swap_elements`; on by default for
   candidates and solutions, off for a reference); a model without H whose composition
   has H gets riding H atoms first (`hydrogens`), and each swap variant its own;
4. refine the winner to convergence with esds (`least_squares.refine_structure`; with
   riding H, also the swap search's near-ties, keeping the best, and if the swaps changed
   labels, search once more from that refinement, SWAP_PASSES in all) and write it as the
   record's `solution`; each refined candidate gets `r1_refined` and `chemistry_score`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from xdxd import records
from xdxd.crystal.chemistry import is_hydrogen
from xdxd.crystal.dataset import DataSet
from xdxd.refine.chemistry import CHEM_WEIGHT, check
from xdxd.refine.hydrogens import h_labels, refine_riding
from xdxd.refine.least_squares import (WEIGHT_A, WEIGHT_B, LsqOptions, RefinementResult, refine_batch,
                                       refine_structure)
from xdxd.refine.swaps import swap_elements, swap_riding

__all__ = ["refine_record", "RefineOptions", "refine_structure", "refine_batch", "RefinementResult", "LsqOptions",
           "swap_elements", "check"]

TOP = 8              # candidates refined by default
RIDING_TOP = 3       # of these, the best (R1 + chemistry) are ranked again with riding H
RANK_CYCLES = 8      # cycles for the batch that ranks candidates
SWAP_PASSES = 2      # swap searches, each from the full refinement of the last one's labels
BONDS_FROM_DMIN_A = 1.5  # bond-length restraints by default for data that stop here (± 0.02 Å) or lower
MIN_PER_PARAMETER = 3.0  # observations (reflections + restraints) per parameter below which fewer are refined


def element_labels(elements: list[str], old: list[str] | None = None) -> list[str]:
    """SHELX-style labels C1, C2, N1, ...; an old label is kept where it starts with
    its atom's element symbol (and is unique)."""
    count: dict[str, int] = {}
    used: set[str] = set()
    out = []
    for n, e in enumerate(elements):
        lab = old[n] if old else None
        ok = lab and lab.upper().startswith(e.upper()) and lab not in used and \
            not lab[len(e):len(e) + 1].isalpha()
        if not ok:
            while True:
                count[e] = count.get(e, 0) + 1
                lab = f"{e}{count[e]}"
                if lab not in used:
                    break
        used.add(lab)
        out.append(lab)
    return out


def _structures(rec: dict, source: str, top: int) -> tuple[str, list[tuple[int, list[dict]]]]:
    """(source used, [(candidate index or -1, atoms)]) to refine."""
    rid = rec.get("id", "?")
    if source == "auto":
        source = "candidates" if rec.get("candidates") else "solution" if rec.get("solution") else "none"
    if source == "candidates":
        cands = rec.get("candidates") or []
        order = sorted(range(len(cands)), key=lambda i: _r1_key(cands[i]))
        picked = [(i, cands[i].get("atoms") or []) for i in order[:top]]
    elif source in ("solution", "reference"):
        picked = [(-1, (rec.get(source) or {}).get("atoms") or [])]
    else:
        picked = []
    picked = [(i, a) for i, a in picked if a]
    if not picked:
        what = {"reference": "no reference atoms", "solution": "no solution atoms"}.get(
            source, "no candidates to refine (run xdxd-sample first, or refine --from reference)")
        raise records.RecordError(f"{rid}: {what}")
    return source, picked


def _stack_aniso(arrays: list[records.AtomArrays]) -> np.ndarray | None:
    """(B,N,6) fixed anisotropic ADPs (NaN rows for isotropic atoms), or None."""
    if all(a.uaniso is None for a in arrays):
        return None
    return np.stack([a.uaniso if a.uaniso is not None else np.full((len(a), 6), np.nan)
                     for a in arrays])


def _riding_counts(atoms: list[dict]) -> list[int] | None:
    """H atoms riding on each non-riding atom (in order), or None without riding atoms."""
    parents = [a["riding"] for a in atoms if a.get("riding")]
    if not parents:
        return None
    return [parents.count(a.get("label")) for a in atoms if not a.get("riding")]


def _labels_fixed(rec: dict, source: str, picked: list) -> bool:
    """True when the elements come from the molecules the record names (candidates of the
    molecule method): no element swaps then."""
    if not rec.get("molecules") or source != "candidates":
        return False
    return all(rec["candidates"][i].get("method") == "molecule" for i, _ in picked)


def _given_restraints(rec: dict, source: str, index: int) -> list[list]:
    """The restraints [label, label, d0 Å, sigma Å, DFIX | DANG] a candidate (index) or the
    solution brings along: the molecule's own geometry (xdxd-sample --method molecule)."""
    if source == "candidates":
        return rec["candidates"][index].get("restraints") or []
    return (rec.get(source) or {}).get("restraints") or []


def _distances(atoms: list[dict], restraints: list[list]) -> tuple:
    """LsqOptions.distances (i, j, d0, sigma) of restraints on atoms (no riding H) by label."""
    where = {a.get("label"): n for n, a in enumerate(atoms)}
    return tuple((where[a], where[b], float(d0), float(sigma)) for a, b, d0, sigma, *_ in restraints
                 if a in where and b in where)


def _parameter_set(lsq: LsqOptions, n_reflections: int, picked: list, distances: list
                   ) -> tuple[LsqOptions, str, str | None]:
    """(options, what is refined, warning or None) for the data at hand: never more
    parameters than observations (reflections + the molecule's restraints), and below
    MIN_PER_PARAMETER per parameter fewer of them: one Uiso per element, then, if the
    positions alone outnumber the observations, no positions either (the model as the
    search placed it, its U and scale refined). Counted for the largest picked model
    (heavy atoms; H ride)."""
    if not lsq.refine_uiso:
        return lsq, "positions", None
    n, kinds = 0, 0
    for _, atoms in picked:
        heavy = [a["element"] for a in atoms if not is_hydrogen(a["element"])]
        n, kinds = max(n, len(heavy)), max(kinds, len(set(heavy)))
    obs = n_reflections + min((len(d) for d in distances), default=0)
    full, shared = 4 * n + 1, 3 * n + kinds + 1
    if obs >= MIN_PER_PARAMETER * full:
        return lsq, "positions and one Uiso per atom", None
    what = f"{n_reflections} reflections and {obs - n_reflections} restraints for {n} atoms"
    if obs >= shared:
        return (replace(lsq, u_per_element=True), "positions and one Uiso per element",
                f"warning: {what}: one Uiso per element (fewer than {MIN_PER_PARAMETER:g} observations "
                f"per parameter with one per atom)")
    return (replace(lsq, u_per_element=True, refine_positions=False), "one Uiso per element, positions fixed",
            f"warning: {what}: positions not refined, one Uiso per element (more position "
            f"parameters than observations); R1 describes the search's model")


def _r1_key(cand: dict) -> float:
    r = cand.get("r1")
    return float(r) if isinstance(r, (int, float)) and math.isfinite(r) else math.inf


@dataclass(frozen=True)
class RefineOptions:
    """What `refine_record` (xdxd-refine) does to a record, beyond the cycles and device."""
    source: str = "auto"          # auto | candidates | solution | reference: what to refine
    swap: bool | None = None      # element swaps; None: on, except for a reference
    riding_h: bool | None = None  # riding H on a model without H whose composition has H;
                                  # None: on unless metrics.hydrogens_in_data is false
    aniso: bool = True            # atoms given with uaniso keep those ADPs fixed (False: isotropic)
    bonds: bool | None = None     # bond-length restraints; None: on for d_min >= BONDS_FROM_DMIN_A
    restraints: bool = True       # anti-bump restraints between non-H atoms
    refine_uiso: bool = True      # refine Uiso per atom (Å²)
    refine_hydrogens: bool = False  # refine H positions and Uiso too
    weight_a: float = WEIGHT_A    # SHELXL WGHT a
    weight_b: float = WEIGHT_B    # SHELXL WGHT b
    rank_cycles: int = RANK_CYCLES  # cycles of the batch that ranks candidates


def refine_record(rec: dict, cycles: int = 20, device: str = "cpu", top: int | None = None,
                  **options) -> dict:
    """Refine a record's candidates (or solution / reference) and write `solution`.

    options: fields of RefineOptions (TypeError for others). Bond-length restraints are
    on by default for data with d_min ≥ BONDS_FROM_DMIN_A, 1.5 Å, where a free refinement
    has 2-4 reflections per parameter and lands in different minima from starts 0.1 Å
    apart; off for finer data. Riding H (on by default) are placed by `hydrogens.place`
    and element swaps are judged with them. Returns the record (a new dict) with
    `solution` and updated `candidates`.
    """
    opts = RefineOptions(**options)
    records.check_problem(rec)
    rid = rec.get("id", "?")
    rec = dict(rec)
    source, picked = _structures(rec, opts.source, top or TOP)
    # riding H (of a molecule, or of an earlier refinement) give each atom's H count, and
    # are placed afresh on the refined parents
    given_counts = [_riding_counts(atoms) for _, atoms in picked]
    picked = [(i, [a for a in atoms if not a.get("riding")]) for i, atoms in picked]
    keep_aniso = opts.aniso
    riding_h = opts.riding_h
    if riding_h is None:  # on, unless the record says its (simulated) data have no H
        riding_h = rec.get("metrics", {}).get("hydrogens_in_data", True) is not False
    if opts.swap is None:  # on, except for a reference and where the molecules fix the labels
        swap = source != "reference" and not _labels_fixed(rec, source, picked)
    else:
        swap = opts.swap
    rank_cycles = min(cycles, opts.rank_cycles)
    bonds = opts.bonds

    data = DataSet.from_record(rec)
    cell, ops = data.cell, data.ops
    if bonds is None:
        bonds = bool(len(data)) and data.d_min_A >= BONDS_FROM_DMIN_A - 0.02
    lsq = LsqOptions(refine_uiso=opts.refine_uiso, restraints=opts.restraints, bonds=bool(bonds),
                     refine_hydrogens=opts.refine_hydrogens, weight_a=opts.weight_a,
                     weight_b=opts.weight_b, device=device)
    # the molecule's own bond lengths and 1,3 distances replace the tabulated bonds where
    # bond restraints are on (the low-resolution case)
    given = [_given_restraints(rec, source, i) if bonds else [] for i, _ in picked]
    distances = [_distances(atoms, g) for (_, atoms), g in zip(picked, given)]
    for e in {a["element"] for _, atoms in picked for a in atoms}:
        if e not in _known_elements():
            raise records.RecordError(f"{rid}: unknown element {e!r} in the model")

    lsq, parameters, warning = _parameter_set(lsq, len(data), picked, distances)

    # refine every picked structure; those with equal atom counts share one batch
    try:
        arrays = [records.atoms_to_arrays(atoms) for _, atoms in picked]
    except (KeyError, TypeError, ValueError) as e:
        raise records.RecordError(f"{rid}: malformed atoms in the model ({e})") from None
    if not all(np.isfinite(a.frac).all() for a in arrays):
        raise records.RecordError(f"{rid}: the model has NaN or infinite coordinates")
    if not keep_aniso:
        for a in arrays:
            a.uaniso = None
    refined: list[RefinementResult | None] = [None] * len(picked)
    by_n: dict[tuple, list[int]] = {}
    for n, a in enumerate(arrays):
        by_n.setdefault((len(a), distances[n]), []).append(n)
    for (_, dist), idx in by_n.items():
        out = refine_batch(data, [arrays[n].elements for n in idx],
                           np.stack([arrays[n].frac for n in idx]),
                           np.stack([arrays[n].uiso for n in idx]),
                           np.stack([arrays[n].occ for n in idx]),
                           _stack_aniso([arrays[n] for n in idx]), cycles=rank_cycles,
                           opts=replace(lsq, distances=dist))
        for n, r in zip(idx, out):
            refined[n] = r

    # chemistry.check ignores H atoms in a model, so the whole H count is its budget
    hyd = rec.get("hydrogens")
    hyd = None if hyd is None else int(hyd)

    chems = [check(cell, ops, r.elements, r.frac, hyd, a.labels) for r, a in zip(refined, arrays)]
    keys = [r.r1 + CHEM_WEIGHT * c.score for r, c in zip(refined, chems)]
    riding_h = bool(riding_h and hyd and not any(is_hydrogen(e) for a in arrays for e in a.elements))
    best = int(np.argmin(keys))
    if riding_h and len(picked) > 1:
        # H scatter about as much as a wrong model misfits at 2 Å: the leaders are ranked
        # again with riding H, and the best of them is taken
        lead = {}
        for n in np.argsort(keys, kind="stable")[:RIDING_TOP]:
            r = refined[n]
            res, _ = refine_riding(data, r.elements, r.frac, r.uiso, r.occ, r.uaniso, hyd,
                                   cycles=rank_cycles, rounds=2, count_frac=arrays[n].frac,
                                   counts=given_counts[n], opts=replace(lsq, distances=distances[n]))
            lead[int(n)] = res.r1 + CHEM_WEIGHT * chems[n].score
        best = min(lead, key=lead.get)
    cand_index, _ = picked[best]
    lsq = replace(lsq, distances=distances[best])
    if source == "candidates":
        cands = [dict(c) for c in rec["candidates"]]
        for (i, _), r, c in zip(picked, refined, chems):
            cands[i]["r1_refined"] = round(r.r1, 5)
            cands[i]["chemistry_score"] = round(c.score, 3)
        rec["candidates"] = cands

    r = refined[best]
    elements, swaps = list(r.elements), []
    riding = None
    if riding_h:
        # H from the composition, none in the model: riding H, and swaps judged with them
        n = len(elements)
        frac, uiso = r.frac, r.uiso
        # H counts from the model as given: a heavy-atom refinement at 2 Å bends rings enough
        # to mislead them (measured: right labels back in 33 vs 25 of 59 single swaps)
        count_frac = arrays[best].frac
        counts = given_counts[best]  # else decided from count_frac, unless the swaps chose them
        recount = counts is None
        if swap:  # the swaps are judged on positions refined with the H of the current labels
            pre, _ = refine_riding(data, elements, frac, uiso, r.occ, r.uaniso, hyd,
                                   cycles=rank_cycles, rounds=2, count_frac=count_frac,
                                   counts=counts, opts=lsq)
            frac, uiso = pre.frac[:n], pre.uiso[:n]

        def finish(els: list[str], counts, swaps: list[dict], close: list[tuple], frac, uiso) -> tuple:
            """The labelling the swaps chose and those that scored about as well (`close`),
            each refined in full from frac, uiso (H counts decided again on the refined
            parents): (R1 + CHEM_WEIGHT × chemistry, elements, swaps, (result, riding H))
            of the best."""
            kept = None
            for k, (e, cts, sws) in enumerate([(els, counts, swaps)] + close):
                if k:  # a runner-up: its last swap did not lower the 4-cycle objective
                    sws = sws[:-1] + [dict(sws[-1], by="final refinement")]
                fin = refine_riding(data, e, frac, uiso, r.occ, r.uaniso, hyd, cycles=cycles,
                                    count_frac=count_frac, counts=cts, recount=recount, opts=lsq)
                score = fin[0].r1 + CHEM_WEIGHT * check(cell, ops, e, fin[0].frac[:n], hyd).score
                if kept is None or score < kept[0] - 1e-9:
                    kept = (score, e, sws, fin)
            return kept

        close = []  # labellings that scored about as well as the swaps' choice
        if swap:
            elements, swaps, counts, close = swap_riding(data, elements, frac, uiso, r.occ, hyd,
                                                         count_frac=count_frac, opts=lsq)
        best_final = finish(elements, counts, swaps, close, frac, uiso)
        for _ in range(SWAP_PASSES - 1 if swap else 0):
            # a 2 Å refinement with wrong labels pulls bonds to wrong lengths, which can hide
            # the right swap (2006609): once swaps were made, the search runs again from the
            # full refinement of the labels chosen, and its result is kept if it scores better
            score, els, sws, (fin, _) = best_final
            if not sws:
                break
            frac, uiso = fin.frac[:n], fin.uiso[:n]
            els, more, counts, close = swap_riding(data, els, frac, uiso, r.occ, hyd,
                                                   count_frac=count_frac, opts=lsq)
            if not more:
                break
            again = finish(els, counts, sws + more, [(e, c, sws + sw) for e, c, sw in close],
                           frac, uiso)
            if not again[0] < score - 1e-9:
                break
            best_final = again
        _, elements, swaps, (final, riding) = best_final
        heavy_labels = element_labels(elements, arrays[best].labels)
        labels = heavy_labels + h_labels(heavy_labels, elements, riding)
        parents = [None] * len(elements) + [heavy_labels[p] for p in riding.parent]
        elements = final.elements
    else:
        if swap:
            s = swap_elements(data, elements, r.frac, r.uiso, r.occ, r.uaniso, hydrogens=hyd,
                              opts=lsq)
            elements, swaps = s.elements, s.swaps
            if swaps:
                r = s.result
        final = refine_structure(data, elements, r.frac, r.uiso, r.occ, r.uaniso, cycles=cycles,
                                 opts=lsq)
        labels = element_labels(elements, arrays[best].labels)
        parents = [None] * len(elements)
    chem = check(cell, ops, elements, final.frac, hyd, labels)
    atoms = []
    for n, e in enumerate(elements):
        a = {"element": e, "label": labels[n], "xyz": [round(float(v), 6) for v in final.frac[n]],
             "uiso": round(float(final.uiso[n]), 5), "occ": round(float(final.occ[n]), 4)}
        if final.uaniso is not None and np.all(np.isfinite(final.uaniso[n])):
            a["uaniso"] = [round(float(v), 5) for v in final.uaniso[n]]
        if final.frac_esd is not None and parents[n] is None:
            a["xyz_esd"] = [round(float(v), 6) for v in final.frac_esd[n]]
        if parents[n] is not None:
            a["riding"] = parents[n]
        atoms.append(a)
    rec["solution"] = {
        "atoms": atoms, **final.stats(), "candidate_index": cand_index, "source": source,
        "weight_a": lsq.weight_a, "weight_b": lsq.weight_b,
        "chemistry": chem.as_dict(), "swaps": swaps,
    }
    rec["solution"]["parameters"] = parameters
    if warning:
        rec["solution"]["warning"] = warning
    if lsq.distances:  # the restraints used, for xdxd-refine --from solution and the .res
        rec["solution"]["restraints"] = [g for g in given[best] if g[0] in labels and g[1] in labels]
    if riding is not None:
        rec["solution"]["riding_h"] = {"placed": int(sum(riding.counts)), "sites": len(riding.frac),
                                       "wanted": hyd}
    records.add_history(rec, "refine", cycles=cycles, source=source, swap=bool(swap), bonds=lsq.bonds)
    return rec


def _known_elements() -> set[str]:
    import gemmi
    return {gemmi.Element(z).name for z in range(1, 119)} | {"D"}
