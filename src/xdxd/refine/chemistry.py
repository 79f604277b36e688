"""Chemistry of a model: bonds, valences, short contacts, and element swaps.

A crystal model from a sampler knows only where its atoms are and which element each
one has been given. This module asks whether that makes chemical sense:

- contacts / bonds: interatomic distances with symmetry images included (every image
  of every atom around each asymmetric-unit atom, nearest lattice translations);
  a bond is d < r_i + r_j + `BOND_TOL` with gemmi's covalent radii r.
- valence: a bond order per bond from its length, BO = exp((d1 - d) / 0.3) (Pauling's
  relation; d1 the single-bond length, r_i + r_j + 0.05 Å, or from `SINGLE_BOND_A` for
  the polar bonds of P, S and Si to O and N, some 0.15 Å shorter than their radii add up
  to; 1.54 Å C-C -> 0.9, 1.34 Å C=C -> 1.8, 1.21 Å C=O -> 2.2, 1.43 Å S=O -> 1.6), summed
  per atom (the bond-valence sum) and compared with the element's usual valences
  (`VALENCES`); what is missing is taken to be hydrogens, counted against the record's
  `hydrogens` budget.
- too-short contacts (d < `SHORT_FACTOR` (r_i + r_j): 1.09 Å for C-N, so that a nitrile's
  1.14 Å triple bond is a bond), too many neighbours, and isolated atoms.

`chemistry_score` adds these up (0 good, higher worse; roughly one unit per clear
problem), and `swap_elements` exchanges the elements of pairs of atoms (C/N/O, S/Cl, ...)
when that lowers R1 plus a chemistry penalty, re-refining after each swap.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import gemmi
import numpy as np

from xdxd.crystal.symmetry import NEIGHBOUR_CELLS, SymOps, apply_ops

BOND_TOL = 0.45        # Å added to the sum of covalent radii for a bond
SHORT_FACTOR = 0.76    # a contact shorter than this times r_i + r_j is too short (C#N 0.79)
BO_OFFSET = 0.05       # Å added to r_i + r_j for a bond of order 1
# single-bond lengths (Å) where r_i + r_j + BO_OFFSET is far off: polar bonds of the
# third-row elements (Allen et al. 1987: P-O(C) 1.57-1.61, S-O(C) 1.58, Si-O 1.63,
# P-N 1.63-1.70, S-N 1.63-1.67, Si/P/S-Cl 2.02-2.07; the radius sums give 1.76-1.83, 2.12-2.18)
SINGLE_BOND_A = {
    frozenset(("P", "O")): 1.60, frozenset(("S", "O")): 1.58, frozenset(("Si", "O")): 1.64,
    frozenset(("P", "N")): 1.68, frozenset(("S", "N")): 1.66,
    frozenset(("Si", "Cl")): 2.05, frozenset(("P", "Cl")): 2.04, frozenset(("S", "Cl")): 2.05,
}
BO_SLOPE = 0.30        # Å, Pauling's bond-order slope
OVERBOND_TOL = 0.75    # bond-valence sum allowed above the largest usual valence

# usual valences (sum of bond orders incl. H; N 5 is a nitro group drawn with double
# bonds), and the most neighbours an atom may have
VALENCES = {
    "C": (4,), "N": (3, 4, 5), "O": (2,), "S": (2, 4, 6), "P": (3, 5), "Se": (2, 4, 6),
    "F": (1,), "Cl": (1,), "Br": (1,), "I": (1, 3), "B": (3, 4), "Si": (4,), "H": (1,),
}
MAX_NEIGHBOURS = {
    "C": 4, "N": 4, "O": 2, "S": 6, "P": 6, "Se": 6, "F": 1, "Cl": 1, "Br": 1, "I": 2,
    "B": 4, "Si": 5, "H": 1,
}
# elements a swap may exchange (X-ray scattering close enough to be confused at low resolution)
SWAP_GROUPS = ({"C", "N", "O"}, {"N", "O", "F"}, {"Si", "P", "S", "Cl"}, {"As", "Se", "Br"})


def covalent_radius(element: str) -> float:
    """Covalent radius in Å (gemmi's table)."""
    return float(gemmi.Element(element).covalent_r)


def is_hydrogen(element: str) -> bool:
    return element in ("H", "D")


# ---------------------------------------------------------------------------
# neighbour search

@dataclass
class Contacts:
    """Directed contacts around asymmetric-unit atoms, symmetry images included.

    For contact c: atom i (asymmetric unit) sees atom j moved by operation op and
    lattice translation shift: x = R_op x_j + t_op + shift, at distance d Å.
    Each unordered pair i != j appears once (i < j); an atom's contacts with its own
    images appear once per operation.
    """
    i: np.ndarray      # (C,) int
    j: np.ndarray      # (C,) int
    op: np.ndarray     # (C,) int
    shift: np.ndarray  # (C,3) float
    d: np.ndarray      # (C,) Å

    def __len__(self) -> int:
        return len(self.i)


def find_contacts(cell: gemmi.UnitCell, ops: SymOps, frac: np.ndarray, cutoff: float,
                  min_self: float = 0.1, both_ways: bool = False) -> Contacts:
    """All contacts shorter than cutoff Å between sites frac (N,3) and their images.

    Images of an atom within min_self Å of itself (a special position) are skipped, and
    images that coincide (j on a special position) are kept once. both_ways: list every
    atom's own surroundings (i > j too), so that each atom i sees all its neighbours.
    Lattice translations -1..+1 around the nearest image are searched, so oblique
    cells are handled.
    """
    frac = np.asarray(frac, dtype=float).reshape(-1, 3)
    orth = np.array(cell.orth.mat)
    img = apply_ops(frac, ops, wrap=False)  # (N,O,3)
    raw = img[None, :, :, :] - frac[:, None, None, :]  # (N_i,N_j,O,3)
    base = -np.round(raw)  # lattice translation to the nearest image
    diff = raw + base
    grid = NEIGHBOUR_CELLS
    cart = (diff[..., None, :] + grid) @ orth.T  # (N,N,O,27,3) Å
    d = np.linalg.norm(cart, axis=-1)  # (N,N,O,27)
    out = {k: [] for k in ("i", "j", "op", "shift", "d")}
    seen: dict[tuple[int, int], list[np.ndarray]] = {}  # Å vectors kept per pair
    for i, j, o, g in zip(*np.nonzero(d < cutoff)):
        if (i > j and not both_ways) or (i == j and d[i, j, o, g] < min_self):
            continue
        # an atom on a special position has fewer distinct images than operations
        kept = seen.setdefault((i, j), [])
        v = cart[i, j, o, g]
        if any(np.abs(v - w).max() < min_self for w in kept):
            continue
        kept.append(v)
        out["i"].append(i)
        out["j"].append(j)
        out["op"].append(o)
        out["shift"].append(base[i, j, o] + grid[g])
        out["d"].append(d[i, j, o, g])
    return Contacts(np.array(out["i"], int), np.array(out["j"], int), np.array(out["op"], int),
                    np.array(out["shift"], float).reshape(-1, 3), np.array(out["d"], float))


# ---------------------------------------------------------------------------
# bonding check

@dataclass
class Chemistry:
    """Result of `check`: a score (0 good) and the issues behind it."""
    score: float
    n_bonds: int
    valence_sum: list[float]          # (N,) bond-valence sum of each atom (non-H bonds; None for H)
    implicit_h: int                   # hydrogens the valences call for
    hydrogens: int | None             # the composition's budget, if known
    issues: list[str] = field(default_factory=list)
    bonds: list[tuple] = field(default_factory=list)  # (i, j, op, d Å, bond order), model indices
    neighbours: list[int] = field(default_factory=list)  # (N,) non-H neighbours per atom
    h_per_atom: list[int] = field(default_factory=list)  # (N,) hydrogens the valences call for

    def as_dict(self) -> dict:
        return {"score": round(self.score, 3), "n_bonds": self.n_bonds,
                "implicit_h": self.implicit_h, "hydrogens": self.hydrogens,
                "issues": self.issues}


@lru_cache(maxsize=None)
def single_bond_length(a: str, b: str) -> float:
    """Length in Å of a single bond between elements a and b (`SINGLE_BOND_A`, or the
    covalent radii's sum + BO_OFFSET)."""
    return SINGLE_BOND_A.get(frozenset((a, b)), covalent_radius(a) + covalent_radius(b) + BO_OFFSET)


def bond_order(d: np.ndarray, single: np.ndarray) -> np.ndarray:
    """Pauling bond order of a bond d Å long whose single bond is `single` Å long."""
    return np.exp((single - d) / BO_SLOPE)


def check(cell: gemmi.UnitCell, ops: SymOps, elements: list[str], frac: np.ndarray,
          hydrogens: int | None = None, labels: list[str] | None = None,
          contacts: Contacts | None = None) -> Chemistry:
    """Bonding check of one model (H atoms in the model are ignored).

    Score terms (each about 1 for a clear problem):
      too-short contact     1 per contact, + how far inside (Å / 0.1)
      too many neighbours   1 per extra neighbour
      over-bonded           excess of the bond-valence sum over the largest usual valence
                            + OVERBOND_TOL (short aromatic C-N bonds overshoot Pauling's law)
      isolated atom         1 (0.3 for O, halogens and metals: water, anions, ions)
      hydrogen budget       0.25 per hydrogen of |implicit H - hydrogens| beyond 1 per 4 atoms
    """
    heavy = [k for k, e in enumerate(elements) if not is_hydrogen(e)]
    els = [elements[k] for k in heavy]
    lab = [(labels[k] if labels else f"{elements[k]}{k + 1}") for k in heavy]
    x = np.asarray(frac, dtype=float).reshape(-1, 3)[heavy]
    N = len(els)
    r = np.array([covalent_radius(e) for e in els])
    if contacts is None:
        contacts = find_contacts(cell, ops, x, cutoff=(2 * r.max() + BOND_TOL) if N else 0.0)
    issues: list[str] = []
    score = 0.0
    bvs = np.zeros(N)
    nbr = np.zeros(N, dtype=int)
    n_bonds = 0
    bonds = []
    for i, j, o, d in zip(contacts.i, contacts.j, contacts.op, contacts.d):
        rsum = r[i] + r[j]
        if d >= rsum + BOND_TOL:
            continue
        if d < SHORT_FACTOR * rsum:
            score += 1.0 + (SHORT_FACTOR * rsum - d) / 0.1
            issues.append(f"short contact {lab[i]}-{lab[j]} {d:.2f} A")
        bo = float(bond_order(d, single_bond_length(els[i], els[j])))
        bo = min(bo, 3.0)
        n_bonds += 1
        bonds.append((heavy[i], heavy[j], int(o), round(float(d), 3), round(bo, 2)))
        # a contact i < j is a bond of i and of (an image of) j; a contact of an atom
        # with its own image under op is one bond of it (op^-1 gives the other end)
        bvs[i] += bo
        nbr[i] += 1
        if j != i:
            bvs[j] += bo
            nbr[j] += 1
    implicit = 0.0
    h_atom = np.zeros(N)
    for k, e in enumerate(els):
        vals = VALENCES.get(e)
        maxn = MAX_NEIGHBOURS.get(e)
        if maxn is not None and nbr[k] > maxn:
            score += nbr[k] - maxn
            issues.append(f"{lab[k]} has {nbr[k]} neighbours (at most {maxn} for {e})")
        if nbr[k] == 0:
            soft = e in ("O", "F", "Cl", "Br", "I") or e not in VALENCES
            score += 0.3 if soft else 1.0
            issues.append(f"{lab[k]} is isolated")
            continue
        if vals is None:
            continue
        if bvs[k] > max(vals) + OVERBOND_TOL:
            score += bvs[k] - max(vals) - OVERBOND_TOL
            issues.append(f"{lab[k]} over-bonded: valence {bvs[k]:.1f} > {max(vals)} for {e}")
        target = min(vals, key=lambda v: abs(v - bvs[k]))  # the nearest usual valence
        h_atom[k] = max(0.0, target - bvs[k])
        implicit += h_atom[k]
    implicit_h = int(round(implicit))
    if hydrogens is not None and N:
        excess = abs(implicit_h - hydrogens) - max(1, N // 4)
        if excess > 0:
            score += 0.25 * excess
            issues.append(f"valences call for {implicit_h} H, composition has {hydrogens}")
    n_all = len(elements)
    full = lambda v, fill: [fill] * n_all if not heavy else \
        [v[heavy.index(m)] if m in heavy else fill for m in range(n_all)]
    return Chemistry(float(score), n_bonds, full([round(float(v), 2) for v in bvs], None),
                     implicit_h, hydrogens, issues, bonds, full([int(v) for v in nbr], None),
                     full([int(round(v)) for v in h_atom], None))


def chemistry_score(cell, ops, elements, frac, hydrogens=None) -> float:
    """The score of `check` alone (0 good, higher worse)."""
    return check(cell, ops, elements, frac, hydrogens).score


# ---------------------------------------------------------------------------
# element swaps

def swappable(a: str, b: str) -> bool:
    """True if the elements of two atoms may be exchanged (a != b, same swap group)."""
    return a != b and any(a in g and b in g for g in SWAP_GROUPS)


def swap_pairs(elements: list[str]) -> list[tuple[int, int]]:
    """Pairs (i, j), i < j, of non-H atoms whose elements may be exchanged."""
    return [(i, j) for i in range(len(elements)) for j in range(i + 1, len(elements))
            if swappable(elements[i], elements[j])]


def swap_variants(elements: list[str]) -> tuple[list[tuple[int, int]], list[list[str]]]:
    """Every single swap of `swap_pairs`: (pairs, element lists with that pair exchanged)."""
    pairs = swap_pairs(elements)
    variants = []
    for i, j in pairs:
        v = list(elements)
        v[i], v[j] = v[j], v[i]
        variants.append(v)
    return pairs, variants


CHEM_WEIGHT = 0.01  # R1 units per unit of chemistry score, in ranking and swaps


@dataclass
class SwapResult:
    elements: list[str]
    result: object          # least_squares.RefinementResult of the final model
    chemistry: Chemistry
    swaps: list[dict]       # [{"i", "j", "from": [e_i, e_j], "r1", "score"}] in the order made


def swap_elements(cell, sg, hkl, F, sigma, elements: list[str], frac: np.ndarray,
                  uiso: np.ndarray | None = None, occ: np.ndarray | None = None,
                  uaniso: np.ndarray | None = None, hydrogens: int | None = None,
                  max_rounds: int = 6, cycles: int = 4, batch: int = 64, device: str = "cpu", **opts) -> SwapResult:
    """Greedy element swaps with re-refinement, keeping the element counts fixed.

    Each round exchanges the elements of every swappable pair of non-H atoms in turn
    (C/N/O, Si/P/S/Cl, ...; `SWAP_GROUPS`), refines all the variants at once for `cycles`
    cycles (`least_squares.refine_batch`), and keeps the best variant if it lowers
    R1 + CHEM_WEIGHT * chemistry score; it stops when no swap helps or after max_rounds.
    frac (N,3) fractional, uiso (N,) Å², as refined before the call.
    """
    from xdxd.refine.least_squares import refine_batch  # least_squares imports this module
    from xdxd.crystal.symmetry import cell_and_spacegroup, symops
    cell_g, sg_g = cell_and_spacegroup(cell, sg)
    ops = symops(sg_g)
    els = list(elements)
    res = refine_batch(cell, sg, hkl, F, sigma, els, frac, uiso, occ, uaniso=uaniso, cycles=cycles,
                       device=device, **opts)[0]
    chem = check(cell_g, ops, els, res.frac, hydrogens)
    best = res.r1 + CHEM_WEIGHT * chem.score
    swaps: list[dict] = []
    for _ in range(max_rounds):
        pairs, variants = swap_variants(els)
        if not pairs:
            break
        found = None
        for s in range(0, len(variants), batch):
            chunk = variants[s:s + batch]
            out = refine_batch(cell, sg, hkl, F, sigma, chunk, res.frac, res.uiso, occ, uaniso=uaniso,
                               cycles=cycles, device=device, **opts)
            for v, (i, j), r in zip(chunk, pairs[s:s + batch], out):
                c = check(cell_g, ops, v, r.frac, hydrogens)
                obj = r.r1 + CHEM_WEIGHT * c.score
                if obj < best - 1e-4 and (found is None or obj < found[0]):
                    found = (obj, v, (i, j), r, c)
        if found is None:
            break
        best, v, (i, j), res, chem = found
        swaps.append({"i": i, "j": j, "from": [els[i], els[j]], "r1": round(res.r1, 5),
                      "score": round(chem.score, 3)})
        els = v
    return SwapResult(els, res, chem, swaps)
