"""Score a solution against a known structure with pymatgen's StructureMatcher.

Both structures are expanded by symmetry into their P1 unit cells (non-H atoms only,
element = species, occupancy ignored) and handed to pymatgen, which searches lattice
settings, origin translations and atom assignments itself. We never match atoms
ourselves. Two tolerance sets:

    loose   stol=0.5, ltol=0.3, angle_tol=10°   (the XDXD/DiffCSP convention)
    strict  stol=0.3, ltol=0.2, angle_tol=5°    (pymatgen's defaults)

`matched_*` is `StructureMatcher.fit`: after the best lattice setting and translation,
every atom lies within stol × (V/n)^(1/3) of its partner, V the cell volume (Å³) and n
the number of non-H atoms in the P1 cell. `rms_*` is `StructureMatcher.get_rms_dist`,
the RMS displacement divided by that same length (V/n)^(1/3), or None when no setting
gives an RMS below stol. DiffCSP's `compute_metrics.py` counts a match whenever that RMS
exists (`matched_loose_diffcsp` here); it lets one far-off atom pass, so our
`matched_*` (every atom within stol) is the stricter, crystallographic reading.
`rmsd_A` = rms_loose × (V/n)^(1/3) in Å, pymatgen's own normalisation undone.

pymatgen's lattice search includes improper bases, so the enantiomorph (the inverted
structure, indistinguishable from |F| without anomalous scattering) also matches.

    from xdxd.score import score_record
    rec = score_record(rec)   # adds rec["metrics"]: matched_loose, rms_loose, rmsd_A, ...

`site_match` is the one measure with partial credit: the share of true sites a predicted
set finds within 0.5 Å, one to one, best over origin choices, elements ignored (training
validation and the experiments use it; the pipeline's verdict is pymatgen's).
"""
from __future__ import annotations

import math
import statistics
import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from xdxd import records
from xdxd.crystal import symmetry

# StructureMatcher tolerances: stol in units of (V/n)^(1/3), ltol fractional, angle_tol in °
LOOSE = {"stol": 0.5, "ltol": 0.3, "angle_tol": 10.0}
STRICT = {"stol": 0.3, "ltol": 0.2, "angle_tol": 5.0}

# Images of one site closer than this (Å) are one atom on a special position. cod-dev
# guarantees no two non-H atoms closer than 0.5 Å, so the reference is never merged wrongly.
MERGE_TOL_A = 0.5

HYDROGENS = ("H", "D")


class ScoreError(ValueError):
    """A record cannot be scored (no solution, no reference, no atoms...)."""


@dataclass
class P1Cell:
    """A structure expanded into its P1 unit cell, non-H atoms only.

    `reduced` is what StructureMatcher would reduce `structure` to itself (Niggli cell,
    then pymatgen's primitive cell), done once here: pymatgen would redo it for every
    fit/get_rms_dist call, and its cache compares structures site by site (O(n²)).
    """
    structure: "object"     # pymatgen.core.Structure, the P1 cell
    reduced: "object"       # pymatgen.core.Structure, its Niggli-reduced primitive cell
    n_asu: int              # non-H atoms in the asymmetric unit
    volume_A3: float        # cell volume, Å³

    @property
    def length_A(self) -> float:
        """(V/n)^(1/3) in Å: pymatgen's normalisation length for stol and RMS."""
        return (self.volume_A3 / len(self.structure)) ** (1.0 / 3.0)


def p1_cell(atoms: list[dict], cell: list[float], spacegroup: dict,
            merge_tol_A: float = MERGE_TOL_A) -> P1Cell:
    """Record atoms (asymmetric unit) -> P1Cell of the non-H atoms.

    cell: [a, b, c (Å), alpha, beta, gamma (°)]; spacegroup: the record's {"hall", "hm", "number"}.
    Images of one site closer than merge_tol_A (Å) are merged (special positions).
    """
    from pymatgen.core import Lattice, Structure

    heavy = [a for a in atoms if a.get("element") not in HYDROGENS]
    if not heavy:
        raise ScoreError("no non-H atoms")
    arr = records.atoms_to_arrays(heavy)
    if not np.all(np.isfinite(arr.frac)):
        raise ScoreError("non-finite fractional coordinates")
    ucell = symmetry.make_cell(cell)
    ops = symmetry.symops(symmetry.spacegroup_from_record(spacegroup))
    frac, owner = symmetry.unique_images(np.mod(arr.frac, 1.0), ops, ucell, tol=merge_tol_A)
    species = [arr.elements[i] for i in owner]
    lattice = Lattice.from_parameters(*[float(v) for v in cell])
    structure = Structure(lattice, species, frac)
    reduced = structure.get_reduced_structure(reduction_algo="niggli").get_primitive_structure()
    return P1Cell(structure, reduced, len(heavy), float(ucell.volume))


def _matcher(tol: dict):
    """pymatgen's StructureMatcher on cells that P1Cell has already reduced."""
    from pymatgen.analysis.structure_matcher import StructureMatcher
    return StructureMatcher(**tol, primitive_cell=False)


def _forget_reduced_cells(sm) -> None:
    """Empty pymatgen's cache of reduced cells before a call.

    A cache hit (the same reference again and again) costs a site-by-site structure
    comparison, O(n²) with numpy calls: ~1 s for 84 atoms, far more than the Niggli
    reduction it saves on our already reduced cells.
    """
    cached = getattr(type(sm), "_get_reduced_istructure", None)
    if hasattr(cached, "cache_clear"):
        cached.cache_clear()


def compare(solution: P1Cell, reference: P1Cell, strict: bool = True) -> dict:
    """Match one P1 cell onto another, loose (and strict). Returns the metrics dict.

    matched_loose/strict (bool), rms_loose/strict (normalised, or None),
    matched_loose_diffcsp (bool: rms_loose is not None), rmsd_A and max_dist_A
    (Å, from the loose RMS search, or None), matched_sites (loose match with the elements
    ignored: every site found, C/N/O labels maybe wrong), n_atoms (non-H, asymmetric unit
    of the reference), n_atoms_p1, same_composition.
    """
    ref, sol = reference.reduced, solution.reduced
    out = {"n_atoms": reference.n_asu, "n_atoms_p1": len(reference.structure),
           "same_composition": ref.composition == sol.composition}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns about e.g. missing oxidation states
        for name, tol in (("loose", LOOSE), ("strict", STRICT))[:2 if strict else 1]:
            sm = _matcher(tol)
            _forget_reduced_cells(sm)
            rms = sm.get_rms_dist(ref, sol) if out["same_composition"] else None
            # fit() implies an RMS below stol, so it only needs asking when there is one
            _forget_reduced_cells(sm)
            out[f"matched_{name}"] = bool(rms is not None and sm.fit(ref, sol))
            out[f"rms_{name}"] = None if rms is None else round(float(rms[0]), 5)
            if name == "loose":
                out["matched_loose_diffcsp"] = rms is not None
                length = reference.length_A
                out["rmsd_A"] = None if rms is None else round(float(rms[0]) * length, 4)
                out["max_dist_A"] = None if rms is None else round(float(rms[1]) * length, 4)
                # the sites alone: every atom one element, as a structure with C/N/O
                # labels still to sort out would count for a crystallographer
                out["matched_sites"] = bool(out["matched_loose"] or (
                    len(ref) == len(sol) and sm.fit(_one_element(ref), _one_element(sol))))
    return out


def _one_element(structure):
    """A copy of a pymatgen Structure with every site made carbon."""
    s = structure.copy()
    s.replace_species({sp: "C" for sp in s.composition.elements})
    return s


def _atoms_of(structure, what: str) -> list[dict]:
    """The atom list of a solution, candidate or reference ({"atoms": [...]} or a bare list)."""
    if isinstance(structure, list):
        return structure
    if isinstance(structure, dict) and isinstance(structure.get("atoms"), list):
        return structure["atoms"]
    raise ScoreError(f"{what} has no atom list")


def _frame(structure, rec: dict) -> tuple[list[float], dict]:
    """Cell and space group of a structure: its own if it carries them, else the record's."""
    own = structure if isinstance(structure, dict) else {}
    return own.get("cell") or rec["cell"], own.get("spacegroup") or rec["spacegroup"]


def reference_cell(rec: dict) -> P1Cell:
    """The record's reference as a P1Cell (raises ScoreError when it has no atoms)."""
    ref = rec.get("reference")
    try:
        return p1_cell(_atoms_of(ref, "reference"), *_frame(ref, rec))
    except ScoreError as e:
        raise ScoreError(f"reference: {e}") from None


def score_structure(structure, reference: P1Cell, rec: dict, what: str = "solution",
                    strict: bool = True) -> dict:
    """Metrics of one structure ({"atoms": [...]}, in rec's cell and space group unless it
    carries its own) against the reference P1 cell. Raises ScoreError naming `what`."""
    try:
        cell = p1_cell(_atoms_of(structure, what), *_frame(structure, rec))
    except ScoreError as e:
        raise ScoreError(f"{what}: {e}") from None
    return compare(cell, reference, strict=strict)


def score_candidates(candidates: list, reference: P1Cell, rec: dict) -> dict:
    """Which sampler candidate matches the reference best (loose, lowest RMS).

    Returns best_candidate (index into candidates, or None), best_candidate_rms_loose,
    n_candidates, n_candidates_matched_loose, and n_candidates_unscored with the first
    reason: a candidate that cannot be expanded or matched (no atoms, bad coordinates,
    a pymatgen failure) counts as not matched instead of failing the record.
    """
    best, best_rms, n_matched, unscored = None, math.inf, 0, []
    for i, cand in enumerate(candidates):
        try:
            m = score_structure(cand, reference, rec, f"candidate {i}", strict=False)
        except Exception as e:  # counted and reported below
            unscored.append(f"candidate {i}: {e}")
            continue
        if not m["matched_loose"]:
            continue
        n_matched += 1
        if best is None or m["rms_loose"] < best_rms:
            best, best_rms = i, m["rms_loose"]
    out = {"best_candidate": best, "best_candidate_rms_loose": None if best is None else best_rms,
           "n_candidates": len(candidates), "n_candidates_matched_loose": n_matched,
           "n_candidates_unscored": len(unscored)}
    if unscored:
        out["candidates_unscored_reason"] = unscored[0]
    return out


def score_record(rec: dict, candidates: bool = True) -> dict:
    """Add metrics to a record that has `solution` and `reference`; returns the record.

    metrics gains: matched_loose, matched_strict, matched_loose_diffcsp, rms_loose,
    rms_strict, rmsd_A, max_dist_A, same_composition, n_atoms, n_atoms_p1, r1 (copied
    from the solution) and, when the record has `candidates` and candidates=True,
    best_candidate, best_candidate_rms_loose, n_candidates, n_candidates_matched_loose,
    n_candidates_unscored. Raises ScoreError (message starts with the record id) when
    it cannot be scored.
    """
    rid = str(rec.get("id", "?"))
    try:
        records.check_problem(rec, need_reflections=False)
        if not rec.get("solution"):
            raise ScoreError("no solution to score (run xdxd-refine first)")
        if not rec.get("reference"):
            raise ScoreError("no reference structure to score against")
        reference = reference_cell(rec)
        metrics = score_structure(rec["solution"], reference, rec)
        if candidates and rec.get("candidates"):
            metrics.update(score_candidates(rec["candidates"], reference, rec))
    except (ScoreError, records.RecordError, symmetry.SpaceGroupError) as e:
        msg = str(e)
        raise ScoreError(msg if msg.startswith(rid) else f"{rid}: {msg}") from None
    except Exception as e:  # pymatgen's own failures: name them, keep the stream going
        raise ScoreError(f"{rid}: structure matching failed ({type(e).__name__}: {e})") from e
    metrics["r1"] = _r1_of(rec)
    sol = rec.get("solution") or {}
    # how well the data determine that R1 (xdxd-refine refines fewer parameters below 3)
    metrics["reflections_per_parameter"] = sol.get("reflections_per_parameter")
    metrics["parameters"] = sol.get("parameters")
    out = dict(rec)
    out["metrics"] = {**(rec.get("metrics") or {}), **metrics}
    return out


def _r1_of(rec: dict) -> float | None:
    sol = rec.get("solution") or {}
    for source in (sol, sol.get("metrics") or {}, rec.get("metrics") or {}):
        if isinstance(source, dict) and source.get("r1") is not None:
            return source["r1"]
    return None


# ---------------------------------------------------------------------------
# the sites alone, with partial credit (training validation, experiments)

@lru_cache(maxsize=256)
def _origin_choices(hall: str) -> tuple[symmetry.SymOps, np.ndarray, np.ndarray]:
    """(operations, allowed discrete origin shifts, polar axes) of a space group."""
    ops = symmetry.symops(symmetry.find_spacegroup(hall=hall))
    return (ops, *symmetry.origin_shifts(ops))


def site_match(cell, hall: str, pred: np.ndarray, true: np.ndarray, tol_A: float = 0.5) -> float:
    """Fraction of true ASU sites (N,3) matched one-to-one by a predicted site (K,3) within
    tol_A Å, best over origin choices (fractional coordinates; cell a gemmi.UnitCell, hall
    the space group's Hall symbol): partial credit, where `compare` says solved or not.

    Sites are paired by an optimal assignment on the distance to the nearest symmetry
    image, so two predicted atoms on one true site count once. Origin choices: the
    allowed discrete shifts, continuous shifts along polar axes (tried from pairs of
    predicted/true sites) and, if not centrosymmetric, the inverted structure. Elements
    are not compared (element assignment is the refiner's job).
    """
    from scipy.optimize import linear_sum_assignment

    ops, shifts, polar = _origin_choices(hall)
    orth = np.array(cell.orth.mat)
    n_true = len(true)
    true_img = symmetry.apply_ops(true, ops).reshape(-1, 3)  # (N*O,3), atom-major
    best = 0.0
    P = polar.T @ polar if len(polar) else np.zeros((3, 3))  # projector onto the polar axes
    if len(polar):  # discrete shifts that differ only along a polar axis are the same choice
        shifts = np.unique(np.round(np.mod(shifts - shifts @ P.T, 1.0), 6) % 1.0, axis=0)
    for sign in ((1.0,) if ops.centrosymmetric else (1.0, -1.0)):
        p0 = sign * pred
        for s in shifts:
            cands = [np.zeros(3)]
            if len(polar):
                diff = true_img[None] - (p0[:3] + s)[:, None]  # (3,N*O,3)
                cands = list((diff.reshape(-1, 3) @ P.T))
            for c in cands:
                q = p0 + s + c  # (N,3)
                d = q[:, None] - true_img[None]
                d -= np.round(d)
                dist = np.linalg.norm(d @ orth.T, axis=-1).reshape(len(q), n_true, -1).min(-1)
                if (dist.min(0) < tol_A).mean() <= best:  # cannot beat the best so far
                    continue
                rows, cols = linear_sum_assignment(dist)
                best = max(best, float((dist[rows, cols] < tol_A).sum()) / n_true)
                if best == 1.0:
                    return best
    return best


# ---------------------------------------------------------------------------
# summaries

def pipeline_seconds(rec: dict) -> float | None:
    """Seconds the record spent in the solving stages (sum of timing_s without "score")."""
    t = rec.get("timing_s") or {}
    vals = [v for k, v in t.items() if k != "score" and isinstance(v, (int, float))]
    return float(sum(vals)) if vals else None


def summarize(metrics: list[dict | None], seconds: list[float | None] | None = None) -> dict:
    """Summary over records: metrics[i] is a record's metrics, or None if it failed.

    Returns n, n_scored, n_error, solved_loose / solved_strict / solved_loose_diffcsp and
    sites_found (elements ignored) (fractions of n, failed records count as unsolved), found_loose (fraction where some
    candidate matched loose, over records with candidates), mean_rms_loose and
    mean_rmsd_A (over loose-matched records), median_r1, median_seconds.
    """
    n = len(metrics)
    ok = [m for m in metrics if m is not None]
    matched = [m for m in ok if m.get("matched_loose")]
    with_cands = [m for m in ok if "n_candidates_matched_loose" in m]

    def frac(count: int, total: int) -> float | None:
        return round(count / total, 4) if total else None

    def mean(vals) -> float | None:
        vals = [v for v in vals if v is not None]
        return round(statistics.fmean(vals), 5) if vals else None

    def median(vals) -> float | None:
        vals = [v for v in vals if v is not None]
        return round(statistics.median(vals), 5) if vals else None

    return {
        "n": n, "n_scored": len(ok), "n_error": n - len(ok),
        "solved_loose": frac(len(matched), n),
        "solved_strict": frac(sum(bool(m.get("matched_strict")) for m in ok), n),
        "solved_loose_diffcsp": frac(sum(bool(m.get("matched_loose_diffcsp")) for m in ok), n),
        "sites_found": frac(sum(bool(m.get("matched_sites")) for m in ok), n),
        "found_loose": frac(sum(m["n_candidates_matched_loose"] > 0 for m in with_cands),
                            len(with_cands)),
        "mean_rms_loose": mean(m.get("rms_loose") for m in matched),
        "mean_rmsd_A": mean(m.get("rmsd_A") for m in matched),
        "median_r1": median(m.get("r1") for m in ok),
        "median_seconds": median(seconds or []),
    }


def pct(x: float | None) -> str:
    """A fraction as a percentage for tables ("–" for None)."""
    return "–" if x is None else f"{100 * x:.0f}%"


def num(x: float | None, digits: int) -> str:
    """A number with `digits` decimals for tables ("–" for None)."""
    return "–" if x is None else f"{x:.{digits}f}"
