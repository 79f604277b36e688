"""Chemistry tables and the bond criterion: the one place every command takes them from.

- radii: gemmi's covalent radii (`covalent_radius`) and van der Waals radii (`vdw_radius`), Å;
  non-bonded heavy atoms no closer than MIN_CONTACT_FACTOR (r_i + r_j) of the latter;
- the bond criterion: two atoms are bonded when d < r_i + r_j + BOND_TOL (`is_bond`; the
  sampler's smooth version counts a bond in full up to r_i + r_j + BOND_FULL_A, fading to
  zero at the same limit); a contact shorter than SHORT_FACTOR (r_i + r_j) is too short
  (1.09 Å for C-N, so that a nitrile's 1.14 Å triple bond is a bond);
- bond lengths: single-bond lengths for bond orders (`single_bond_length`, `bond_order`:
  Pauling's BO = exp((d1 - d) / 0.3)) and the tabulated lengths bonds are restrained to
  (`BOND_LENGTHS`, `bond_target`);
- valences and the most neighbours an element takes (`VALENCES`, `MAX_NEIGHBOURS`);
- riding X-H distances as X-ray refinements use them (`xh_distance`);
- which elements a refinement may exchange (`SWAP_GROUPS`, `swap_pairs`);
- the neighbour search: every contact of the asymmetric-unit atoms with all symmetry
  images, nearest lattice translations (`find_contacts`, `find_bonds`).

The sampler's bonding prior (solve), the refinement's restraints, checks, riding H and
swaps (refine) and the training-data generator (synth) all read these.
Distances in Å, coordinates fractional.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import gemmi
import numpy as np

from xdxd.crystal.symmetry import NEIGHBOUR_CELLS, SymOps, apply_ops

BOND_TOL = 0.45        # Å added to the sum of covalent radii for a bond
BOND_FULL_A = 0.15     # Å above r_i + r_j a smooth bond count (the sampler's prior) starts to
                       # fall from 1; it reaches 0 at BOND_TOL, where `is_bond` ends
SHORT_FACTOR = 0.76    # a contact shorter than this times r_i + r_j is too short (C#N 0.79)
MIN_CONTACT_FACTOR = 0.8  # non-bonded heavy atoms come no closer than this times their van der
                          # Waals radii's sum (short O-H...O 2.45 Å is 0.81, C...C 3.3 Å 0.97)
BO_OFFSET = 0.05       # Å added to r_i + r_j for a bond of order 1
BO_SLOPE = 0.30        # Å, Pauling's bond-order slope
# single-bond lengths (Å) where r_i + r_j + BO_OFFSET is far off: polar bonds of the
# third-row elements (Allen et al. 1987: P-O(C) 1.57-1.61, S-O(C) 1.58, Si-O 1.63,
# P-N 1.63-1.70, S-N 1.63-1.67, Si/P/S-Cl 2.02-2.07; the radius sums give 1.76-1.83, 2.12-2.18)
SINGLE_BOND_A = {
    frozenset(("P", "O")): 1.60, frozenset(("S", "O")): 1.58, frozenset(("Si", "O")): 1.64,
    frozenset(("P", "N")): 1.68, frozenset(("S", "N")): 1.66,
    frozenset(("Si", "Cl")): 2.05, frozenset(("P", "Cl")): 2.04, frozenset(("S", "Cl")): 2.05,
}
# typical lengths (Å) of bonds between non-H atoms, single to multiple and aromatic
# (Allen et al., J. Chem. Soc. Perkin Trans. 2 (1987) S1; International Tables C, 9.5),
# rounded; a restrained bond is pulled to the one nearest its current length
BOND_LENGTHS = {
    ("C", "C"): (1.20, 1.34, 1.39, 1.47, 1.53), ("C", "N"): (1.15, 1.28, 1.34, 1.40, 1.47),
    ("C", "O"): (1.21, 1.31, 1.36, 1.43), ("C", "S"): (1.67, 1.74, 1.81),
    ("C", "F"): (1.34,), ("C", "Cl"): (1.74,), ("Br", "C"): (1.90,), ("C", "I"): (2.10,),
    ("N", "N"): (1.12, 1.24, 1.35, 1.42), ("N", "O"): (1.22, 1.36, 1.42),
    ("O", "S"): (1.44, 1.58), ("N", "S"): (1.56, 1.63, 1.68), ("O", "P"): (1.48, 1.58),
    ("C", "P"): (1.80,), ("S", "S"): (2.04,), ("C", "Si"): (1.86,), ("O", "Si"): (1.63,),
    ("B", "C"): (1.57,), ("B", "F"): (1.38,), ("B", "O"): (1.37,), ("N", "P"): (1.66,),
    ("C", "Se"): (1.94,), ("O", "O"): (1.48,),
}
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
HYDROGENS = ("H", "D")
MAY_BE_ISOLATED = ("O", "F", "Cl", "Br", "I")  # may have no non-H neighbour: water, anions


def is_hydrogen(element: str) -> bool:
    return element in HYDROGENS


def covalent_radius(element: str) -> float:
    """Covalent radius in Å (gemmi's table)."""
    return float(gemmi.Element(element).covalent_r)


def vdw_radius(element: str | int) -> float:
    """Van der Waals radius in Å (gemmi's table, Bondi's values); a symbol or atomic number."""
    return float(gemmi.Element(element).vdw_r)


def is_bond(d, r_sum):
    """The bond criterion: d < r_i + r_j + BOND_TOL, for distances d (Å) and radius sums
    r_sum = r_i + r_j (Å), numbers or arrays."""
    return d < r_sum + BOND_TOL


def longest_bond(radii) -> float:
    """The longest distance (Å) `is_bond` accepts between atoms of these covalent radii."""
    return 2 * float(np.max(radii)) + BOND_TOL


@lru_cache(maxsize=None)
def single_bond_length(a: str, b: str) -> float:
    """Length in Å of a single bond between elements a and b (`SINGLE_BOND_A`, or the
    covalent radii's sum + BO_OFFSET)."""
    return SINGLE_BOND_A.get(frozenset((a, b)), covalent_radius(a) + covalent_radius(b) + BO_OFFSET)


def bond_order(d: np.ndarray, single: np.ndarray) -> np.ndarray:
    """Pauling bond order of a bond d Å long whose single bond is `single` Å long."""
    return np.exp((single - d) / BO_SLOPE)


def bond_target(a: str, b: str, d: float) -> float | None:
    """The tabulated length (Å) nearest to d of a bond between elements a and b, or None
    when the pair has no entry (BOND_LENGTHS)."""
    lengths = BOND_LENGTHS.get(tuple(sorted((a, b))))
    return None if lengths is None else min(lengths, key=lambda x: abs(x - d))


def xh_distance(element: str, n_neighbours: int, n_h: int, default: float | None = 0.96
                ) -> float | None:
    """X–H riding distance (Å), SHELXL's room-temperature defaults (Sheldrick, Acta Cryst.
    C71 (2015) 3; X-ray sees the H electron shifted toward X, ~0.1 Å shorter than the
    nuclear distance): C–H 0.93 aromatic, sp² and ≡C–H, 0.98 methine, 0.97 CH₂, 0.96 CH₃;
    N–H 0.86 (0.89 NH₃⁺); O–H 0.82; S–H 1.20; B–H 1.10; `default` for other X.
    n_neighbours: heavy-atom neighbours of X; n_h: H atoms on X."""
    if element == "C":
        if n_h == 3:
            return 0.96
        if n_h == 2:
            return 0.93 if n_neighbours == 1 else 0.97
        return 0.98 if n_neighbours == 3 else 0.93
    return {"N": 0.89 if n_h == 3 else 0.86, "O": 0.82, "S": 1.20, "B": 1.10}.get(element, default)


def swappable(a: str, b: str) -> bool:
    """True if the elements of two atoms may be exchanged (a != b, same swap group)."""
    return a != b and any(a in g and b in g for g in SWAP_GROUPS)


def swap_pairs(elements: list[str], groups: bool = True,
               orders: list[int] | None = None) -> list[tuple[int, int]]:
    """Pairs (i, j), i < j, of atoms whose elements differ and may be exchanged: in one
    of SWAP_GROUPS (groups=True) or any two elements (groups=False); with orders (N,),
    only atoms whose sites have the same stabilizer order."""
    return [(i, j) for i in range(len(elements)) for j in range(i + 1, len(elements))
            if elements[i] != elements[j]
            and (not groups or swappable(elements[i], elements[j]))
            and (orders is None or orders[i] == orders[j])]


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

    def subset(self, keep: np.ndarray) -> "Contacts":
        return Contacts(self.i[keep], self.j[keep], self.op[keep], self.shift[keep], self.d[keep])


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


def find_bonds(cell: gemmi.UnitCell, ops: SymOps, elements: list[str], frac: np.ndarray,
               both_ways: bool = False) -> Contacts:
    """The bonds (`is_bond`) among the atoms elements (N,), frac (N,3) and their images;
    i, j index these atoms (pass the non-H atoms only to leave H out)."""
    if not len(elements):
        return find_contacts(cell, ops, np.zeros((0, 3)), 0.0)
    r = np.array([covalent_radius(e) for e in elements])
    c = find_contacts(cell, ops, frac, cutoff=longest_bond(r), both_ways=both_ways)
    return c.subset(is_bond(c.d, r[c.i] + r[c.j]))
