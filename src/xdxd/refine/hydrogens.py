"""Riding hydrogen atoms: how many H each heavy atom carries, and where they sit.

At 1.5–2.5 Å the hydrogens are a sixth of the electrons of an organic crystal and most of
what tells C from N from O apart: a model without them refines to R1 ≈ 0.04–0.05 on
perfect data, and C/N/O label swaps can fit better than the true labels. SHELXL and Olex2
add them geometrically (HFIX / AFIX) and let them ride on their parent atom; so does this
module.

1. `h_options`: from each heavy atom's bonded neighbours (count, angles, bond lengths) the
   H counts it may carry, most likely first, with a penalty for each alternative (e.g. a
   2-connected N at 120° is pyridine-like (0 H) or pyrrole/amide-like (1 H); a
   1-connected O at 1.22 Å is C=O (0 H), at 1.36 Å O–H).
2. `assign_counts`: the combination with the smallest penalty whose total is the
   composition's H count (dynamic programming over atoms; the nearest total if none hits).
3. `place`: ideal positions (`crystal.chemistry.xh_distance`, SHELXL's riding distances: C–H 0.93
   aromatic/sp², 0.97 CH₂, 0.96 CH₃, 0.98 methine; N–H 0.86 (0.89 NH₃⁺); O–H 0.82; S–H
   1.20 Å), tetrahedral or trigonal, methyl and hydroxyl groups staggered / pointing at
   the nearest acceptor; Uiso 1.2 × the parent's (1.5 for CH₃, NH₃, OH).

Water (an O with no heavy neighbour) gets no H placed: its H cannot be placed from
geometry alone. Coordinates are fractional, distances Å.
"""
from __future__ import annotations

from dataclasses import dataclass

import gemmi
import numpy as np

from xdxd.crystal.dataset import DataSet
from xdxd.crystal.symmetry import SymOps, apply_ops, frac_distance
from xdxd.refine.least_squares import LsqOptions, refine_structure
from xdxd.crystal.chemistry import find_bonds, find_contacts, is_hydrogen, xh_distance

TETRAHEDRAL = np.degrees(np.arccos(-1.0 / 3.0))   # 109.47°


@dataclass
class Neighbours:
    """Bonded heavy neighbours of one asymmetric-unit atom: Cartesian vectors (k,3) Å from
    the atom to each neighbour, and the neighbours' elements and ASU indices."""
    vectors: np.ndarray
    elements: list[str]
    index: list[int]


def neighbours(cell: gemmi.UnitCell, ops: SymOps, elements: list[str],
               frac: np.ndarray) -> list[Neighbours]:
    """Bonded heavy neighbours of every atom (H atoms in the model are ignored), each
    image once: an atom on a mirror sees both its neighbour and the neighbour's image."""
    frac = np.asarray(frac, float).reshape(-1, 3)
    heavy = [k for k, e in enumerate(elements) if not is_hydrogen(e)]
    out = [Neighbours(np.zeros((0, 3)), [], []) for _ in elements]
    if not heavy:
        return out
    x = frac[heavy]
    c = find_bonds(cell, ops, [elements[k] for k in heavy], x, both_ways=True)
    orth = np.array(cell.orth.mat)
    vec: dict[int, list] = {k: [] for k in range(len(heavy))}
    for i, j, o, s, d in zip(c.i, c.j, c.op, c.shift, c.d):
        if d >= 0.5:
            xj = ops.rot[o] @ x[j] + ops.tran[o] + s
            vec[i].append(((xj - x[i]) @ orth.T, j))
    for k, lst in vec.items():  # find_bonds lists each distinct image once
        out[heavy[k]] = Neighbours(np.array([v for v, _ in lst]).reshape(-1, 3),
                                   [elements[heavy[j]] for _, j in lst], [heavy[j] for _, j in lst])
    return out


def _angles(v: np.ndarray) -> list[float]:
    """Angles (°) between every pair of bond vectors (k,3)."""
    u = v / np.linalg.norm(v, axis=1, keepdims=True)
    return [float(np.degrees(np.arccos(np.clip(u[a] @ u[b], -1, 1))))
            for a in range(len(u)) for b in range(a + 1, len(u))]


def h_options(element: str, nb: Neighbours) -> list[tuple[int, float]]:
    """H counts the atom may carry, with a penalty each (0: the usual case), from its
    element, number of heavy neighbours, bond angles and lengths."""
    n = len(nb.vectors)
    d = np.linalg.norm(nb.vectors, axis=1) if n else np.zeros(0)
    ang = _angles(nb.vectors) if n > 1 else []
    planar = n == 3 and sum(ang) > 350.0
    if element == "C":
        if n >= 4:
            return [(0, 0.0)]
        if n == 3:
            return [(0, 0.0), (1, 2.0)] if planar else [(1, 0.0), (0, 1.5)]
        if n == 2:
            a = ang[0]
            if a > 165:
                return [(0, 0.0), (1, 3.0)]
            if d.mean() < 1.46:                      # aromatic / sp2 (5-ring C–H at ~107°)
                return [(1, 0.0), (0, 2.0), (2, 2.0)] if a > 112 else [(1, 0.0), (2, 1.0), (0, 2.0)]
            return [(2, 0.0), (1, 1.0)]              # CH2 between single bonds
        if n == 1:
            if d[0] < 1.25:                       # C≡C-H, C≡N (terminal C of a nitrile is 2-connected)
                return [(1, 0.0), (0, 1.0)]
            if d[0] < 1.42:                       # =CH2, or an aromatic C-H misplaced
                return [(2, 0.0), (3, 1.0), (1, 2.0)]
            return [(3, 0.0), (2, 1.5)]
        return [(4, 0.0)]
    if element == "N":
        if n >= 3:
            return [(0, 0.0), (1, 2.5)]              # amine, amide, nitro / ammonium
        if n == 2:
            a = ang[0]
            if a > 165:
                return [(0, 0.0)]
            short = d.min() < 1.32                   # a C=N double bond: imine / pyridine
            return [(0, 0.0), (1, 0.7)] if short else [(1, 0.0), (0, 0.7), (2, 2.5)]
        if n == 1:
            if d[0] < 1.20:
                return [(0, 0.0)]                   # nitrile
            if d[0] < 1.42:
                return [(2, 0.0), (1, 1.0), (0, 2.0)]   # amide / aniline NH2, imine
            return [(2, 0.0), (3, 0.5), (1, 1.5)]      # amine NH2, ammonium NH3+
        return [(0, 0.0), (3, 1.5), (4, 2.0)]
    if element == "O":
        if n >= 2:
            return [(0, 0.0), (1, 3.0)]
        if n == 1:
            if d[0] < 1.28:
                return [(0, 0.0), (1, 1.5)]          # C=O, carboxylate, N-O
            return [(1, 0.0), (0, 1.0)]             # hydroxyl (or an ether-like long C-O⁻)
        return [(0, 0.0)]                           # water / oxide: not placed
    if element == "S":
        if n == 1:                                   # thiol C–S 1.80–1.83, thione C=S 1.66–1.71
            return [(1, 0.0), (0, 1.0)] if d[0] > 1.76 else [(0, 0.0), (1, 1.0)]
        return [(0, 0.0)]
    return [(0, 0.0)]


FALLBACK_PENALTY = 5.0   # an H count an atom's geometry does not suggest, so that the total is met


def assign_counts(options: list[list[tuple[int, float]]], total: int | None) -> list[int]:
    """One H count per atom: the least total penalty whose sum is `total` (or, if none
    reaches it, the nearest reachable sum; with total None each atom's first option).
    Besides its options, each atom may take any smaller count at FALLBACK_PENALTY, so a
    distorted model (a C with one neighbour that should have two) still meets the total."""
    return ranked_counts(options, total, 1)[0][1]


def ranked_counts(options: list[list[tuple[int, float]]], total: int | None,
                  k: int) -> list[tuple[float, list[int]]]:
    """The k least-penalty H-count assignments (penalty, counts) meeting `total`, best
    first, as `assign_counts` chooses the first (dynamic programming keeping the k best
    partial assignments of every running sum)."""
    if total is None:
        return [(0.0, [o[0][0] for o in options])]
    # best[s]: up to k (penalty, choices) for the atoms so far, summing to s
    best: dict[int, list[tuple[float, list[int]]]] = {0: [(0.0, [])]}
    for opts in options:
        listed = {h for h, _ in opts}  # any count up to the largest listed, at a high price,
        opts = list(opts) + [(h, FALLBACK_PENALTY) for h in range(max(listed)) if h not in listed]
        nxt: dict[int, list[tuple[float, list[int]]]] = {}
        for s, partial in best.items():
            for p, ch in partial:
                for h, q in opts:
                    nxt.setdefault(s + h, []).append((p + q, ch + [h]))
        best = {s: sorted(v, key=lambda t: t[0])[:k] for s, v in nxt.items()}
    target = min(best, key=lambda s: (abs(s - total), best[s][0][0]))
    return best[target]


def _perpendicular(u: np.ndarray) -> np.ndarray:
    a = np.array([1.0, 0, 0]) if abs(u[0]) < 0.9 else np.array([0, 1.0, 0])
    p = np.cross(u, a)
    return p / np.linalg.norm(p)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def geometry(element: str, nb: Neighbours, n_h: int) -> str:
    """'linear' (≡C–H), 'trigonal' (=CH₂, planar NH₂) or 'tetrahedral' for an atom with
    one heavy neighbour; atoms with more neighbours follow from those."""
    d = float(np.linalg.norm(nb.vectors[0]))
    if element == "C" and n_h == 1 and d < 1.25:
        return "linear"
    if n_h == 2 and d < 1.42 and element in ("C", "N"):
        return "trigonal"
    return "tetrahedral"


def afix_code(element: str, nb: Neighbours, h_vectors: np.ndarray) -> int:
    """SHELXL's riding code (AFIX mn) for the H atoms on one atom: its bonded heavy
    neighbours nb and the H atoms as Cartesian vectors (n_h,3) Å from it. 137 for a
    rotating CH3/NH3, 23 for CH2 (NH2+) between two neighbours, 93 for a planar terminal
    =CH2/NH2, 13 for a tertiary X-H, 43 for an H in the plane of an atom with two
    neighbours (aromatic C-H, amide N-H), 147 for a rotating O-H/S-H, 163 for ≡C-H;
    3 (ride, positions as given) for anything else (water, a pyramidal NH, ...)."""
    n_h, k = len(h_vectors), len(nb.elements)
    if n_h == 3 and k == 1:
        return 137
    if n_h == 2 and k == 2:
        return 23
    if n_h == 2 and k == 1 and geometry(element, nb, 2) == "trigonal":
        return 93
    if n_h == 1 and k == 3:
        return 13
    if n_h == 1 and k == 2:
        normal = np.cross(nb.vectors[0], nb.vectors[1])
        normal /= max(float(np.linalg.norm(normal)), 1e-9)
        return 43 if abs(float(h_vectors[0] @ normal)) < 0.25 else 3
    if n_h == 1 and k == 1 and element in ("O", "S"):
        return 147
    if n_h == 1 and k == 1 and geometry(element, nb, 1) == "linear":
        return 163
    return 3


def directions(nb: Neighbours, n_h: int, shape: str = "tetrahedral",
               second: np.ndarray | None = None, target: np.ndarray | None = None) -> np.ndarray:
    """Unit vectors (n_h,3) from the parent to its H atoms.

    Two or three neighbours: one H on the outer bisector (sp² C–H, N–H, methine), two H
    tetrahedrally about it in the plane normal to the neighbours' plane (CH₂). One
    neighbour (vector v): H on a cone about -v at 180° − the H–X–Y angle (109.5°, 120° for
    `shape` 'trigonal', straight for 'linear'). Around the cone, `target` (a vector to an
    H-bond acceptor) gets the first H; otherwise the H atoms are staggered against
    `second` (a vector from the parent to a substituent of its neighbour), and trigonal H
    atoms lie in its plane."""
    if n_h == 0 or len(nb.vectors) == 0:
        return np.zeros((0, 3))
    u = nb.vectors / np.linalg.norm(nb.vectors, axis=1, keepdims=True)
    if len(u) >= 2:
        total = u.sum(0)
        b = -_unit(total) if np.linalg.norm(total) > 1e-3 else _perpendicular(u[0])
        if n_h == 1:
            return b[None]
        cross = np.cross(u[0], u[1])
        normal = _unit(cross) if np.linalg.norm(cross) > 1e-3 else _perpendicular(b)
        half = np.radians(TETRAHEDRAL / 2)
        return np.array([b * np.cos(half) + k * normal * np.sin(half) for k in (1, -1)])[:n_h]
    axis = -u[0]
    if shape == "linear":
        return axis[None]
    ref = target if target is not None else second
    perp = None if ref is None else ref - (ref @ axis) * axis
    perp = _perpendicular(axis) if perp is None or np.linalg.norm(perp) < 1e-3 else _unit(perp)
    side = np.cross(axis, perp)
    tilt = np.radians(180.0 - (120.0 if shape == "trigonal" else TETRAHEDRAL))
    if shape == "trigonal":
        turns = [0.0, 180.0]
    elif target is not None:
        turns = [0.0, 120.0, 240.0]
    else:
        turns = [180.0, 60.0, 300.0]  # staggered: the first H anti to `second`
    out = [axis * np.cos(tilt) + (np.cos(t) * perp + np.sin(t) * side) * np.sin(tilt)
           for t in np.radians(turns[:n_h])]
    return np.array(out)


@dataclass
class RidingH:
    """Hydrogens placed on a heavy-atom model."""
    frac: np.ndarray          # (H,3) fractional
    parent: np.ndarray        # (H,) index of the parent atom in the model
    uiso_factor: np.ndarray   # (H,) Uiso(H) = factor × Uiso(parent)
    counts: list[int]         # (N,) H per model atom
    wanted: int | None        # the composition's H count
    unplaced: int             # H the composition has beyond those placed (water, …)


def _acceptor(cell, ops, elements, frac, k: int, nb: Neighbours) -> np.ndarray | None:
    """Vector (Å) from atom k to the nearest non-bonded N or O within 2.5–3.2 Å."""
    acc = [m for m, e in enumerate(elements) if e in ("N", "O")]
    if not acc:
        return None
    x = np.asarray(frac, float)
    c = find_contacts(cell, ops, np.vstack([x[k:k + 1], x[acc]]), cutoff=3.2)
    orth = np.array(cell.orth.mat)
    best = None
    for i, j, o, s, d in zip(c.i, c.j, c.op, c.shift, c.d):
        if i != 0 or j == 0 or d < 2.5:
            continue
        xj = ops.rot[o] @ x[acc[j - 1]] + ops.tran[o] + s
        if best is None or d < best[0]:
            best = (d, (xj - x[k]) @ orth.T)
    return None if best is None else best[1]


def h_counts(cell: gemmi.UnitCell, ops: SymOps, elements: list[str], frac: np.ndarray,
             hydrogens: int | None, nbs: list[Neighbours] | None = None) -> list[int]:
    """H per model atom (N,), 0 for H atoms: `h_options` of each heavy atom in this
    geometry (frac (N,3) fractional), matched to the total `hydrogens` by `assign_counts`."""
    return h_count_choices(cell, ops, elements, frac, hydrogens, 1, nbs)[0][1]


def h_count_choices(cell: gemmi.UnitCell, ops: SymOps, elements: list[str], frac: np.ndarray,
                    hydrogens: int | None, k: int, nbs: list[Neighbours] | None = None
                    ) -> list[tuple[float, list[int]]]:
    """The k most likely H counts per model atom, [(penalty, counts (N,))], best first
    (`h_counts` is the first): the alternatives for a model whose geometry is too rough
    (a 2 Å candidate) to tell an NH from a CH₂ alone."""
    nbs = neighbours(cell, ops, elements, frac) if nbs is None else nbs
    heavy = [i for i, e in enumerate(elements) if not is_hydrogen(e)]
    out = []
    for penalty, chosen in ranked_counts([h_options(elements[i], nbs[i]) for i in heavy],
                                         hydrogens, k):
        counts = [0] * len(elements)
        for i, n_h in zip(heavy, chosen):
            counts[i] = n_h
        out.append((penalty, counts))
    return out


def place(cell: gemmi.UnitCell, ops: SymOps, elements: list[str], frac: np.ndarray,
          hydrogens: int | None, counts: list[int] | None = None) -> RidingH:
    """Riding H atoms for the heavy atoms of a model (frac (N,3) fractional); H atoms
    already in the model are ignored and not counted. counts (N,): H per atom as decided
    before (`h_counts`, `RidingH.counts`), instead of deciding them from this geometry."""
    frac = np.asarray(frac, float).reshape(-1, 3)
    nbs = neighbours(cell, ops, elements, frac)
    heavy = [k for k, e in enumerate(elements) if not is_hydrogen(e)]
    if counts is None:
        counts = h_counts(cell, ops, elements, frac, hydrogens, nbs)
    counts = [int(counts[k]) if k in heavy else 0 for k in range(len(elements))]
    fracm = np.array(cell.frac.mat)
    xyz, parent, ufac = [], [], []
    for k in heavy:
        n_h = counts[k]
        nb = nbs[k]
        if n_h == 0 or len(nb.vectors) == 0:
            continue
        second = target = None
        if len(nb.vectors) == 1:
            j = nb.index[0]
            back = [w for w, m in zip(nbs[j].vectors, nbs[j].index) if m != k or
                    np.linalg.norm(w + nb.vectors[0]) > 0.1]
            if back:
                second = nb.vectors[0] + back[0]          # parent -> a neighbour's neighbour
            if elements[k] in ("O", "N") and n_h in (1, 3):
                target = _acceptor(cell, ops, elements, frac, k, nb)
        dist = xh_distance(elements[k], len(nb.vectors), n_h)
        shape = geometry(elements[k], nb, n_h) if len(nb.vectors) == 1 else ""
        for u in directions(nb, n_h, shape, second, target):
            xyz.append(frac[k] + fracm @ (dist * u))
            parent.append(k)
            ufac.append(1.5 if (n_h == 3 or (elements[k] == "O" and n_h == 1)) else 1.2)
    xyz = np.array(xyz).reshape(-1, 3)
    keep = _distinct_sites(cell, ops, xyz)
    return RidingH(xyz[keep], np.array(parent, int)[keep], np.array(ufac)[keep],
                   counts, hydrogens, (hydrogens - len(xyz)) if hydrogens is not None else 0)


def _distinct_sites(cell: gemmi.UnitCell, ops: SymOps, frac: np.ndarray,
                    tol: float = 0.5) -> np.ndarray:
    """Indices of the sites (N,3 fractional) that are no symmetry image of an earlier one
    (within tol Å). On a parent on a mirror or 2-fold axis the H atoms of one group are
    each other's images (the two off-plane H of a CH₃ on a mirror); one of them stands
    for both, as the parent itself stands for its whole orbit."""
    images = apply_ops(frac, ops)                     # (N,O,3)
    keep: list[int] = []
    for k in range(len(frac)):
        if not keep or frac_distance(images[keep], frac[k][None, None], cell).min() >= tol:
            keep.append(k)
    return np.array(keep, int)


def add_to_model(cell: gemmi.UnitCell, ops: SymOps, elements: list[str], frac: np.ndarray,
                 uiso: np.ndarray, hydrogens: int | None, counts: list[int] | None = None
                 ) -> tuple[list[str], np.ndarray, np.ndarray, RidingH]:
    """The heavy-atom model (elements, frac (N,3), uiso (N,) Å²) with riding H appended:
    (elements, frac, uiso, the placement). H Uiso = 1.2 (1.5) × the parent's."""
    frac = np.asarray(frac, float).reshape(-1, 3)
    uiso = np.asarray(uiso, float)
    h = place(cell, ops, elements, frac, hydrogens, counts)
    return (list(elements) + ["H"] * len(h.frac), np.vstack([frac, h.frac]),
            np.concatenate([uiso, h.uiso_factor * uiso[h.parent]]), h)


def h_labels(labels: list[str], elements: list[str], h: RidingH) -> list[str]:
    """SHELX-style H labels from the parent's, unique: H3 on C3, H5A/H5B on C5; where two
    parents share a number (C2 and O2) the H on the heteroatom carries its element (H2O,
    H1NA/H1NB), as many CIFs write them; anything still repeated gets a running number."""
    stems = [lab[len(e):] if lab.upper().startswith(e.upper()) and lab[len(e):] else str(p + 1)
             for p, (lab, e) in enumerate(zip(labels, elements))]
    parents = [int(p) for p in h.parent]
    shared = {stems[p] for p in set(parents) for q in set(parents) if p != q and stems[p] == stems[q]}
    out, used = [], set(labels)
    for k, p in enumerate(parents):
        stem = stems[p] + (elements[p] if stems[p] in shared and elements[p] != "C" else "")
        n = parents.count(p)
        lab = f"H{stem}" + ("" if n == 1 else "ABCDEFGH"[parents[:k].count(p)])
        base, i = lab, 1
        while lab in used:
            i += 1
            lab = f"{base}_{i}"
        used.add(lab)
        out.append(lab)
    return out


# ---------------------------------------------------------------------------
# refinement with riding H

RIDING_ROUNDS = 3   # refine, re-place the H on the moved parents, refine again, ...


def _with_h(cell, ops, elements, frac, uiso, occ, uaniso, hydrogens, counts=None):
    els, fa, ua, h = add_to_model(cell, ops, elements, frac, uiso, hydrogens, counts)
    oa = np.concatenate([np.asarray(occ, float), np.ones(len(h.frac))])
    aa = None if uaniso is None else np.vstack([uaniso, np.full((len(h.frac), 6), np.nan)])
    return els, fa, ua, oa, aa, h


def riders(n: int, h: RidingH) -> np.ndarray:
    """least_squares' `riding` for a model of n heavy atoms followed by h's H: -1, then parents."""
    return np.concatenate([np.full(n, -1), np.asarray(h.parent, int)])


def refine_riding(data: DataSet, elements: list[str], frac: np.ndarray, uiso: np.ndarray,
                  occ: np.ndarray, uaniso: np.ndarray | None, hydrogens: int | None,
                  cycles: int = 20, rounds: int = RIDING_ROUNDS,
                  count_frac: np.ndarray | None = None, counts: list[int] | None = None,
                  recount: bool = False, opts: LsqOptions = LsqOptions()):
    """Refine a heavy-atom model (elements, frac (N,3), uiso, occ, uaniso) with riding H:
    each round places the H on the current parents (`place`) and refines the heavy atoms
    with the H riding on them (least_squares' `riding`: an H moves with its parent's
    shifts, its Uiso a multiple of the parent's); the next round, and the last pass that
    gives the statistics, take the H either placed afresh on the refined parents or where
    they rode, whichever fits the data better (`_fresh_or_ridden`). Esds come from the last
    refinement. How many H each atom
    carries is decided once, on the starting model (or on count_frac (N,3), e.g. the
    unrefined candidate's positions), so that the rounds cannot flip it; or given as
    counts (N,) (what `swap_riding` chose). recount: then decide the counts again on the
    refined parents and, if they differ, refine once more from there with them; the lower
    R1 is kept (counts read off a rough 2 Å candidate are often wrong, a CH₃ taken for a
    CH₂, and cost more R1 than a C/N label).
    Returns (RefinementResult of heavy atoms + H, the placement)."""
    cell_g, ops = data.cell, data.ops
    n = len(elements)
    f, u = np.asarray(frac, float), np.asarray(uiso, float)
    rounds = rounds if cycles > 0 else 0   # cycles 0: only place the H on the model as it is
    if counts is None:
        counts = h_counts(cell_g, ops, elements, f if count_frac is None else count_frac, hydrogens)
    last = res = None
    model = _with_h(cell_g, ops, elements, f, u, occ, uaniso, hydrogens, counts)
    for r in range(rounds):
        els, fa, ua, oa, aa, h = model
        final_round = r == rounds - 1
        last = refine_structure(data, els, fa, ua, oa, aa, riders(n, h),
                                cycles=cycles if final_round else max(4, cycles // 3),
                                esd=final_round, opts=opts)
        f, u = last.frac[:n], last.uiso[:n]
        fresh = _with_h(cell_g, ops, elements, f, u, occ, uaniso, hydrogens, counts)
        model, res = _fresh_or_ridden(data, fresh, last, h, n, opts)
    if last is None:
        res = _statistics(data, model, n, opts)
    else:  # the statistics pass did no cycles: report the last refinement's, and its esds
        res.cycles, res.converged = last.cycles, last.converged
        res.frac_esd, res.uiso_esd = last.frac_esd, last.uiso_esd
    h = model[5]
    if recount and rounds:
        again = h_counts(cell_g, ops, elements, f, hydrogens)
        if list(again) != list(h.counts):
            alt = refine_riding(data, elements, f, u, occ, uaniso, hydrogens, cycles=cycles,
                                rounds=rounds, counts=again, opts=opts)
            if alt[0].r1 < res.r1:
                return alt
    return res, h


def _statistics(data: DataSet, model: tuple, n: int, opts: LsqOptions):
    """Agreement of a model from `_with_h` as it stands (a zero-cycle refinement)."""
    els, fa, ua, oa, aa, h = model
    return refine_structure(data, els, fa, ua, oa, aa, riders(n, h), cycles=0, opts=opts)


def _fresh_or_ridden(data: DataSet, fresh: tuple, last, h_last: RidingH, n: int,
                     opts: LsqOptions) -> tuple[tuple, object]:
    """(model, its statistics): the H on the refined parents of `last` (a refinement of
    heavy atoms + h_last's riders) either placed afresh (`fresh`, from `_with_h`) or where
    they rode, whichever has the lower R1. A rotatable OH or NH₃ placed afresh can turn by
    120-180° when its parent moves 0.1 Å (another acceptor or reference neighbour):
    measured on L-alanine at 2.0 Å, R1 0.031 after the refinement, 0.10 with the H placed
    again on the same parents."""
    from dataclasses import replace
    ridden = (list(last.elements), last.frac, last.uiso, last.occ, last.uaniso,
              replace(h_last, frac=last.frac[n:].copy()))
    a = _statistics(data, fresh, n, opts)
    b = _statistics(data, ridden, n, opts)
    return (fresh, a) if a.r1 <= b.r1 else (ridden, b)
