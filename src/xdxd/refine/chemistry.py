"""The chemistry check of a model: bonds, valences, short contacts.

A crystal model from a sampler knows only where its atoms are and which element each
one has been given. `check` asks whether that makes chemical sense, with the tables and
the bond criterion of `crystal.chemistry` (bonds d < r_i + r_j + BOND_TOL, symmetry
images included):

- valence: a bond order per bond from its length (Pauling, `chemistry.bond_order`),
  summed per atom (the bond-valence sum) and compared with the element's usual valences
  (`VALENCES`); what is missing is taken to be hydrogens, counted against the record's
  `hydrogens` budget;
- too-short contacts (d < SHORT_FACTOR (r_i + r_j)), too many neighbours, isolated atoms.

`chemistry_score` adds these up (0 good, higher worse; roughly one unit per clear
problem); refinement ranks models, and the swap search (refine.swaps) judges element
swaps, by R1 + CHEM_WEIGHT × that score.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import gemmi
import numpy as np

from xdxd.crystal.chemistry import (MAX_NEIGHBOURS, MAY_BE_ISOLATED, SHORT_FACTOR, VALENCES, bond_order,
                                    covalent_radius, find_bonds, is_hydrogen, single_bond_length)
from xdxd.crystal.symmetry import SymOps

OVERBOND_TOL = 0.75    # bond-valence sum allowed above the largest usual valence
CHEM_WEIGHT = 0.01     # R1 units per unit of chemistry score, in ranking and swaps


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


def check(cell: gemmi.UnitCell, ops: SymOps, elements: list[str], frac: np.ndarray,
          hydrogens: int | None = None, labels: list[str] | None = None) -> Chemistry:
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
    bonded = find_bonds(cell, ops, els, x)
    issues: list[str] = []
    score = 0.0
    bvs = np.zeros(N)
    nbr = np.zeros(N, dtype=int)
    n_bonds = 0
    bonds = []
    for i, j, o, d in zip(bonded.i, bonded.j, bonded.op, bonded.d):
        rsum = r[i] + r[j]
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
            soft = e in MAY_BE_ISOLATED or e not in VALENCES
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
