"""Pack molecules into crystals: space group drawn from real statistics, pyxtal places the
molecules, then the cell is squeezed until van der Waals contacts touch.

Steps for one crystal (see `make_crystal`):
1. draw a space group (`SG_ORGANIC`, or `SG_SOHNCKE` for an enantiopure molecule) and a
   packing mode: Z'=1, half a molecule on a special position, Z'=2, molecule + solvent;
2. pyxtal (Fredericks et al., Comput. Phys. Commun. 261 (2021) 107810) places rigid
   molecules on Wyckoff positions in a loose random cell;
3. `squeeze`: rigid-body lattice-energy minimisation (Adam, analytic gradients) with the
   DREIDING exp-6 potential plus a hydrogen-bond well: first under pressure (1 GPa) to
   bring pyxtal's loose molecules into contact, then at zero pressure, where the contacts
   settle at realistic distances (C···C ≈ 3.5 Å, H···H ≈ 2.3 Å, as in real crystals). Cell
   lengths, free angles (triclinic; β in monoclinic), molecule centres and orientations
   move; a molecule on a special position moves only as its site symmetry allows (turns
   freely on an inversion centre; turns about and slides along a 2-fold axis). A stiff
   wall at the `ContactRules` limits (a fraction of the Bondi van der Waals sum, shorter
   for N/O-H···N/O) is a backstop, and `compress` opens the cell if any contact is left
   below it. A cell still above MAX_VOLUME_RATIO × the Hofmann (2002) volume is redone.
   The potential keeps real crystals near their volume (relaxing five cod-dev structures
   from their published geometry changed the volume by -6 to +2 %), but one minimisation
   from a random start jams ~10 % looser than a real crystal (the same with the real
   crystal's own conformer): a search limit, not the potential's;
4. keep the asymmetric unit: atoms of a molecule on a special position that a symmetry
   operation maps onto another atom of the same molecule are listed once.

Coordinates: fractional in [0, 1); Cartesian in Å with gemmi's orthogonalisation
(a along x, b in the xy plane).
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from functools import lru_cache

import gemmi
import numpy as np

from xdxd.crystal.chemistry import covalent_radius, is_bond, vdw_radius
from xdxd.crystal.symmetry import (SymOps, apply_ops, find_spacegroup, make_cell, stabilizer_order,
                                   symops, unique_images)
from xdxd.synth.molecules import Molecule3D

# Space-group frequencies (%) of organic crystal structures, rounded. Sources: CSD space-group
# statistics (CCDC, www.ccdc.cam.ac.uk "CSD space group statistics", 2023 release, all
# entries) and for organic homomolecular crystals Belsky, Zorkaya & Zorky, Acta Cryst. A51
# (1995) 473; Baur & Kassner, Acta Cryst. B48 (1992) 356. The 25 groups below cover ~98% of
# organic structures; the tail is dropped. Used for molecules that are achiral or racemic.
SG_ORGANIC = {
    14: 35.0,  # P21/c
    2: 19.0,   # P-1
    15: 8.0,   # C2/c
    19: 8.0,   # P212121
    4: 5.5,    # P21
    61: 4.0,   # Pbca
    33: 1.6,   # Pna21
    9: 1.0,    # Cc
    1: 1.0,    # P1
    62: 1.0,   # Pnma
    29: 0.8,   # Pca21
    5: 0.8,    # C2
    60: 0.7,   # Pbcn
    18: 0.5,   # P21212
    13: 0.5,   # P2/c
    11: 0.4,   # P21/m
    12: 0.4,   # C2/m
    56: 0.3,   # Pccn
    43: 0.3,   # Fdd2
    88: 0.3,   # I41/a
    148: 0.3,
    7: 0.3,    # Pc
    20: 0.2,   # C2221
    92: 0.2,   # P41212
    96: 0.2,   # P43212
}

# Sohncke groups (proper rotations only) for enantiopure molecules, rounded shares among
# CSD structures of enantiopure compounds (same sources; P212121 and P21 dominate).
SG_SOHNCKE = {
    19: 45.0,  # P212121
    4: 33.0,   # P21
    5: 7.0,    # C2
    1: 5.0,    # P1
    18: 3.0,   # P21212
    20: 1.0,   # C2221
    92: 1.0,   # P41212
    96: 1.0,   # P43212
    152: 0.8,  # P3121
    154: 0.8,  # P3221
    76: 0.5,   # P41
    78: 0.5,   # P43
    169: 0.4,  # P61
    170: 0.4,  # P65
    146: 0.3,  # R3
}

# Space groups for a molecule on a special position, by the molecule's own symmetry. A
# centrosymmetric molecule sits on an inversion centre mostly in P21/c, P-1, C2/c and Pbca;
# a C2-symmetric one on a 2-fold axis mostly in C2/c, Pbcn, P21212, C2, P2/c and Pccn
# (Pidcock, Motherwell & Cole, Acta Cryst. B59 (2003) 634, "A database survey of molecular
# and crystallographic symmetry"; shares rounded from their CSD counts).
SG_SPECIAL = {
    "ci": {14: 55.0, 2: 25.0, 15: 10.0, 61: 10.0},
    "c2": {15: 50.0, 60: 15.0, 18: 10.0, 5: 10.0, 13: 8.0, 56: 7.0},
    "c2-chiral": {5: 40.0, 18: 35.0, 20: 15.0, 92: 5.0, 96: 5.0},
}

# packing modes and their shares: Z'>1 is ~11% of CSD entries (Steed & Steed, Chem. Rev.
# 115 (2015) 2895); molecules on special positions ~15% in centrosymmetric groups; solvates
# ~15% (Görbitz & Hersleth 2000).
# pyxtal cell volume = factor × Σ molecular box volumes. The squeeze's pressure phase
# compresses any start; a denser start (0.6) only makes pyxtal slower (to 30 s for a large
# dimer) without a denser result.
PYXTAL_VOLUME_FACTOR = 1.0
# Mean volume (Å³) an atom takes in organic crystals (Hofmann, Acta Cryst. B58 (2002) 489,
# Table 2, rounded). V_cell / (Z · Σ v_atom) is ~1.0 ± 0.05 for real structures; a
# generated cell far above that is a loose, unrealistic packing and is redone.
HOFMANN_VOLUME = {1: 5.08, 5: 7.48, 6: 13.87, 7: 11.80, 8: 11.39, 9: 11.17, 14: 38.79,
                  15: 29.50, 16: 25.20, 17: 25.80, 35: 31.50, 53: 44.55}
MAX_VOLUME_RATIO = 1.30


def hofmann_volume(z: np.ndarray) -> float:
    """Expected crystal volume (Å³) of the atoms z (Hofmann 2002; others: 20 Å³)."""
    return float(sum(HOFMANN_VOLUME.get(int(k), 20.0) for k in z))


STARTS = 1  # random placements minimised per crystal (the lowest lattice energy is kept)

MODES = {"z1": 0.66, "special": 0.12, "z2": 0.08, "solvate": 0.14}


class LoosePacking(RuntimeError):
    pass


@dataclass
class ContactRules:
    """Closest allowed intermolecular distance = factor × (Bondi r_i + r_j), Å.

    Real organic crystals: C···C ≥ ~3.3 Å (0.97), H···H ≥ ~2.1 Å (0.88), hydrogen bonds
    O-H···O ≈ 1.8 Å (0.66), O···O ≈ 2.6 Å (0.86).
    """
    heavy: float = 0.93        # both non-H
    h_heavy: float = 0.90      # H with a non-H atom
    hh: float = 0.87           # H with H
    hbond_h: float = 0.68      # H on N/O with acceptor N/O
    hbond_da: float = 0.85     # donor/acceptor N/O pair


@dataclass
class Crystal:
    """A crystal as the shards store it: cell (6,) in Å/°, space group as Hall + number, and
    the asymmetric-unit atoms (atomic numbers (n,), fractional (n,3) in [0,1))."""
    id: str
    cell: np.ndarray
    hall: str
    sg_number: int
    atomic_number: np.ndarray
    frac: np.ndarray
    is_hydrogen: np.ndarray
    info: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"id": self.id, "cell": self.cell, "hall": self.hall, "sg_number": self.sg_number,
                "atomic_number": self.atomic_number, "frac": self.frac,
                "is_hydrogen": self.is_hydrogen}


@dataclass
class _RigidMolecule:
    """One molecule of the asymmetric unit: fractional centre (3,), Cartesian offsets
    (n,3) Å from it (gemmi frame), atomic numbers (n,), and which atoms are in the ASU."""
    centre: np.ndarray
    offsets: np.ndarray
    z: np.ndarray
    polar_h: np.ndarray        # (n,) bool: H bonded to N or O
    asu: np.ndarray            # (n,) bool
    radius: float = 0.0        # Å, farthest atom from the centre + 2 Å vdW margin
    fixed: bool = False        # on a special position (squeeze moves it only as its site allows)


def draw_spacegroup(rng: np.random.Generator, chiral: bool, point_symmetry: str = "") -> int:
    """A space-group number: for a molecule on a special position of its own symmetry
    (point_symmetry 'ci' or 'c2') from SG_SPECIAL, otherwise from SG_SOHNCKE (chiral) or
    SG_ORGANIC."""
    if point_symmetry:
        table = SG_SPECIAL[point_symmetry + ("-chiral" if chiral else "")]
    else:
        table = SG_SOHNCKE if chiral else SG_ORGANIC
    numbers = list(table)
    w = np.array([table[n] for n in numbers])
    return int(rng.choice(numbers, p=w / w.sum()))


@lru_cache(maxsize=256)
def _pyxtal_hall(sg_number: int) -> str:
    """Hall symbol of the setting pyxtal uses for this group (from its general position)."""
    from pyxtal.symmetry import Group
    ops = Group(sg_number).Wyckoff_positions[0].ops
    go = gemmi.GroupOps([gemmi.Op(op.as_xyz_str().replace(" ", "")) for op in ops])
    return gemmi.find_spacegroup_by_ops(go).hall


def _axis_groups(sg: gemmi.SpaceGroup) -> list[list[int]]:
    """Cell axes that may be scaled independently without breaking the lattice metric."""
    system = sg.crystal_system_str()
    if system in ("triclinic", "monoclinic", "orthorhombic"):
        return [[0], [1], [2]]
    if system == "cubic":
        return [[0, 1, 2]]
    return [[0, 1], [2]]  # tetragonal, trigonal (hexagonal axes), hexagonal


def _vdw(z: np.ndarray) -> np.ndarray:
    return np.array([vdw_radius(int(k)) for k in z])


def _limit_matrix(z1, pol1, z2, pol2, rules: ContactRules) -> np.ndarray:
    """(n1,n2) closest allowed distance in Å between atoms of two molecules."""
    r1, r2 = _vdw(z1), _vdw(z2)
    h1, h2 = (z1 == 1)[:, None], (z2 == 1)[None, :]
    da1, da2 = np.isin(z1, (7, 8))[:, None], np.isin(z2, (7, 8))[None, :]
    f = np.full((len(z1), len(z2)), rules.heavy)
    f = np.where(h1 ^ h2, rules.h_heavy, f)
    f = np.where(h1 & h2, rules.hh, f)
    f = np.where(da1 & da2, rules.hbond_da, f)
    f = np.where((pol1[:, None] & da2) | (da1 & pol2[None, :]), rules.hbond_h, f)
    return f * (r1[:, None] + r2[None, :])


# DREIDING exp-6 van der Waals parameters per element (Mayo, Olafson & Goddard, J. Phys. Chem.
# 94 (1990) 8897, Table II): R0 (Å, minimum of the pair curve), D0 (kcal/mol), zeta.
# Pairs: R0 arithmetic mean, D0 geometric mean, zeta arithmetic mean. Other elements: Br-like.
EXP6 = {1: (3.195, 0.0152, 12.382), 5: (4.02, 0.095, 14.23), 6: (3.8983, 0.0951, 14.034),
        7: (3.6621, 0.0774, 13.843), 8: (3.4046, 0.0957, 13.483), 9: (3.472, 0.0725, 13.144),
        14: (4.27, 0.31, 12.175), 15: (4.15, 0.32, 12.0), 16: (4.03, 0.344, 12.0),
        17: (3.9503, 0.2833, 13.861), 35: (3.95, 0.37, 12.0), 53: (4.15, 0.51, 12.0)}
# hydrogen bond between an H on N/O and an acceptor N/O: D [5 (r0/r)^12 - 6 (r0/r)^10], the
# DREIDING form without its angle factor, with r0 the H···A distance of X-ray structures
# (H at riding positions: O-H···O ≈ 1.8-2.0 Å) and D the DREIDING well depth
HBOND_R0 = 1.90     # Å
HBOND_D0 = 4.0      # kcal/mol
CUTOFF = 7.0        # Å, pair cutoff of the lattice energy (smoothly switched off from 6 Å)
GPA = 0.1439        # 1 GPa in kcal/mol per Å³


@dataclass
class PairTable:
    """(n1,n2) parameters for the atom pairs between two molecules: contact limit (Å), exp-6
    R0 (Å), D0 (kcal/mol), zeta, and whether the pair is a hydrogen bond (polar H, N/O)."""
    limit: np.ndarray
    r0: np.ndarray
    d0: np.ndarray
    zeta: np.ndarray
    hbond: np.ndarray


def _exp6(z: np.ndarray) -> np.ndarray:
    return np.array([EXP6.get(int(k), EXP6[35]) for k in z])


def pair_table(z1, pol1, z2, pol2, rules: ContactRules) -> PairTable:
    """Pair parameters between the atoms of two molecules (z: atomic numbers, pol: H on N/O)."""
    p1, p2 = _exp6(z1), _exp6(z2)
    da1, da2 = np.isin(z1, (7, 8))[:, None], np.isin(z2, (7, 8))[None, :]
    hb = (pol1[:, None] & da2) | (da1 & pol2[None, :])
    r0 = 0.5 * (p1[:, None, 0] + p2[None, :, 0])
    r0 = np.where(da1 & da2, 0.85 * r0, r0)  # donor/acceptor pairs come closer
    return PairTable(_limit_matrix(z1, pol1, z2, pol2, rules), r0,
                     np.sqrt(p1[:, None, 1] * p2[None, :, 1]), 0.5 * (p1[:, None, 2] + p2[None, :, 2]),
                     hb)


class PairPotential:
    """The lattice-energy pair potential of a fixed list of pairs (parameters as in
    `PairTable`, flattened): exp-6 D0 [6/(ζ-6) exp(ζ(1 - r/R0)) - ζ/(ζ-6) (R0/r)^6] for
    ordinary pairs, the 10-12 hydrogen-bond well HBOND_D0 [5 (R/r)^12 - 6 (R/r)^10] for hbond
    pairs; both switched smoothly (cubic) to zero between 6 Å and CUTOFF. The coefficients
    are computed once, so a minimisation evaluates it cheaply at every step."""

    def __init__(self, r0: np.ndarray, d0: np.ndarray, zeta: np.ndarray, hbond: np.ndarray):
        self.order = np.argsort(~hbond, kind="stable")   # hydrogen bonds first
        self.in_order = bool((self.order == np.arange(len(hbond))).all())
        self.n_hb = int(hbond.sum())
        x = self.order[self.n_hb:]
        r0, d0, zeta = r0[x], d0[x], zeta[x]
        self.zeta, self.zr = zeta, zeta / r0
        self.ea = d0 * 6.0 / (zeta - 6.0)             # e = ea exp(ζ - ζ r/R0) - eb / r⁶
        self.eb = d0 * zeta / (zeta - 6.0) * r0 ** 6

    def energy(self, dist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pair energies (kcal/mol) and d E / d r (kcal/mol/Å) at distances dist (Å)."""
        r = np.maximum(dist, 0.5)
        if not self.in_order:
            r = r[self.order]
        n = self.n_hb
        e, de = np.empty_like(r), np.empty_like(r)
        h = HBOND_R0 / r[:n]
        h10 = h ** 10
        h12 = h10 * h * h
        e[:n] = HBOND_D0 * (5 * h12 - 6 * h10)
        de[:n] = HBOND_D0 * 60 * (h10 - h12) / r[:n]
        rx = r[n:]
        ex = self.ea * np.exp(self.zeta - self.zr * rx)
        q6 = self.eb / rx ** 6
        e[n:] = ex - q6
        de[n:] = 6.0 * q6 / rx - self.zr * ex
        t = np.clip((r - 6.0) / (CUTOFF - 6.0), 0.0, 1.0)
        sw = 1 - t * t * (3 - 2 * t)
        e, de = e * sw, de * sw - e * (6 * t * (1 - t) / (CUTOFF - 6.0))
        if not self.in_order:
            back = np.empty_like(self.order)
            back[self.order] = np.arange(len(back))
            e, de = e[back], de[back]
        return e, de


def lattice_energy(dist: np.ndarray, r0, d0, zeta, hbond) -> tuple[np.ndarray, np.ndarray]:
    """Pair energies (kcal/mol) and d E / d r (kcal/mol/Å) at distances dist (Å); see
    `PairPotential`."""
    return PairPotential(r0, d0, zeta, hbond).energy(dist)


def _near_images(cell: gemmi.UnitCell, mols: list[_RigidMolecule], ops: SymOps,
                 reach: float = 4.0) -> dict:
    """For each pair (i, j) of ASU molecules, the images of j with an atom that can come
    within `reach` Å of an atom of i: (operation indices (K,), lattice shifts (K,3)). The
    image of i that is i itself is left out (same centre: identity, or a stabilizer
    operation of a special position)."""
    orth = np.array(cell.orth.mat)
    spacing = 1.0 / np.linalg.norm(np.array(cell.frac.mat), axis=1)  # interplanar, Å
    out = {}
    for i, mi in enumerate(mols):
        for j, mj in enumerate(mols):
            centres = mi.radius + mj.radius - 4.0 + reach  # radii carry a 2 Å margin each
            n = np.ceil(centres / spacing).astype(int)
            grid = np.stack(np.meshgrid(*[np.arange(-k, k + 1) for k in n], indexing="ij"),
                            -1).reshape(-1, 3)                          # (T,3)
            c_img = apply_ops(mj.centre[None], ops, wrap=False)[0]        # (O,3)
            shift = np.round(mi.centre - c_img)[:, None, :] + grid[None]  # (O,T,3)
            dc = c_img[:, None, :] + shift - mi.centre                   # (O,T,3) frac
            dist_c = np.linalg.norm(dc @ orth.T, axis=-1)                 # (O,T) Å
            near = dist_c < centres
            if i == j:
                near &= dist_c > 1e-3
            o_idx, t_idx = np.nonzero(near)
            if len(o_idx):
                out[i, j] = (o_idx, shift[o_idx, t_idx])
    return out


def closest_contact_ratio(cell: gemmi.UnitCell, mols: list[_RigidMolecule], ops: SymOps,
                          limits: dict, stop_below: float = 0.0) -> float:
    """Smallest d / d_allowed over all intermolecular atom pairs (>= 1 means no clash).

    Each ASU molecule is compared with every symmetry and lattice image of every ASU
    molecule, except itself (see `_near_images`).
    """
    orth = np.array(cell.orth.mat)
    frac_m = np.array(cell.frac.mat)
    fr = [m.centre + m.offsets @ frac_m.T for m in mols]  # (n,3) fractional, unwrapped
    best = np.inf
    for (i, j), (o_idx, shift) in _near_images(cell, mols, ops).items():
        img = apply_ops(fr[j], ops.take(o_idx, shift), wrap=False).transpose(1, 0, 2)  # (K,nj,3)
        d = (img[:, None, :, :] - fr[i][None, :, None, :]) @ orth.T   # (K,ni,nj,3) Å
        ratio = np.sqrt((d * d).sum(-1)) / limits[i, j][None]
        best = min(best, float(ratio.min()))
        if best < stop_below:
            break
    return best


def _contact_pairs(cell_par: np.ndarray, mols: list[_RigidMolecule], ops: SymOps,
                   tables: dict, cutoff: float = CUTOFF + 1.0) -> dict:
    """Intermolecular atom pairs closer than cutoff Å, flattened over all molecule pairs:
    molecule i, atom of i (global index), molecule j, atom of j, operation, lattice shift
    (P,3), and the pair's parameters (limit, r0, d0, zeta, hbond; see PairTable)."""
    cell = make_cell(cell_par)
    orth = np.array(cell.orth.mat)
    frac_m = np.array(cell.frac.mat)
    start = np.cumsum([0] + [len(m.z) for m in mols])
    fr = [m.centre + m.offsets @ frac_m.T for m in mols]
    keys = ("i", "a", "j", "b", "op", "shift", "limit", "r0", "d0", "zeta", "hbond")
    cols = {k: [] for k in keys}
    cart = [f @ orth.T for f in fr]
    for (i, j), (o_idx, shift) in _near_images(cell, mols, ops, reach=cutoff).items():
        img = apply_ops(fr[j], ops.take(o_idx, shift), wrap=False).transpose(1, 0, 2)  # (K,nj,3)
        img = img @ orth.T                                                # (K,nj,3) Å
        d2 = ((cart[i] ** 2).sum(-1)[None, :, None] + (img ** 2).sum(-1)[:, None, :]
              - 2 * (img @ cart[i].T).transpose(0, 2, 1))                  # (K,ni,nj) Å²
        k, a, b = np.nonzero(d2 < cutoff * cutoff)
        t = tables[i, j]
        cols["i"].append(np.full(len(k), i))
        cols["j"].append(np.full(len(k), j))
        cols["a"].append(a + start[i])
        cols["b"].append(b + start[j])
        cols["op"].append(o_idx[k])
        cols["shift"].append(shift[k].reshape(-1, 3))
        for name in ("limit", "r0", "d0", "zeta", "hbond"):
            cols[name].append(getattr(t, name)[a, b])
    if not cols["i"]:
        return {k: (np.zeros((0, 3)) if k == "shift" else np.zeros(0, bool if k == "hbond" else
                    float if k in ("limit", "r0", "d0", "zeta") else int)) for k in keys}
    return {k: np.concatenate(v) for k, v in cols.items()}


def _rotate(q: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Rotate the rows of q (n,3) by the rotation vector w (3,) in rad (Rodrigues)."""
    theta = float(np.linalg.norm(w))
    if theta < 1e-12:
        return q
    k = w / theta
    return (q * np.cos(theta) + np.cross(k, q) * np.sin(theta)
            + np.outer(q @ k, k) * (1 - np.cos(theta)))


class _Adam:
    """Adam on a flat parameter vector with one learning rate per entry."""

    def __init__(self, lr: np.ndarray, beta1: float = 0.9, beta2: float = 0.999):
        self.lr, self.b1, self.b2 = lr, beta1, beta2
        self.m = np.zeros_like(lr)
        self.v = np.zeros_like(lr)
        self.t = 0

    def step(self, grad: np.ndarray) -> np.ndarray:
        """The parameter change for this gradient."""
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * grad
        self.v = self.b2 * self.v + (1 - self.b2) * grad * grad
        m_hat = self.m / (1 - self.b1 ** self.t)
        v_hat = self.v / (1 - self.b2 ** self.t)
        return -self.lr * m_hat / (np.sqrt(v_hat) + 1e-8)


def _site_freedom(centre: np.ndarray, ops: SymOps, orth: np.ndarray, tol: float = 1e-3
                  ) -> tuple[np.ndarray, np.ndarray]:
    """How a rigid molecule centred at `centre` (fractional) may move and keep its site
    symmetry: (projector (3,3) onto the allowed fractional translations, projector (3,3)
    onto the allowed Cartesian rotation vectors). With the site operations R_s (those
    mapping the centre onto itself), translations must be fixed by every R_s (projector:
    the mean of R_s) and rotation vectors, axial, by every det(R_s)·R_s (Cartesian): on an
    inversion centre the molecule turns freely and stays put, on a 2-fold axis it turns
    about and slides along the axis, on a mirror it turns about the normal and slides in
    the plane; on a general position it moves freely."""
    d = apply_ops(centre[None], ops, wrap=False)[0] - centre
    rot = ops.rot[np.abs(d - np.round(d)).max(axis=1) < tol]
    cart = np.einsum("ij,ojk,kl->oil", orth, rot, np.linalg.inv(orth))
    det = np.linalg.det(rot)
    return rot.mean(axis=0), (det[:, None, None] * cart).mean(axis=0)


def _row_index(index: np.ndarray) -> np.ndarray:
    """(3P,): the flat positions of the rows `index` (P,) of an (n,3) array, for `_sum_rows`."""
    return (3 * index[:, None] + np.arange(3)).ravel()


def _sum_rows(flat: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """(n,3): the rows of values (P,3) summed into rows given by `_row_index` (np.add.at, fast)."""
    return np.bincount(flat, values.ravel(), minlength=3 * n).reshape(n, 3)


def _orth_matrix(par: np.ndarray) -> np.ndarray:
    """Orthogonalisation matrix (3,3), Å, of a cell (6,) in Å/°, in gemmi's convention
    (a along x, c* along z); numpy, for the many cells of a minimisation."""
    a, b, c = par[:3]
    ca, cb, cg = np.cos(np.radians(par[3:]))
    sb, sg = np.sin(np.radians(par[4])), np.sin(np.radians(par[5]))
    cos_as = (cb * cg - ca) / (sb * sg)
    sin_as = np.sqrt(max(1.0 - cos_as * cos_as, 0.0))
    return np.array([[a, b * cg, c * cb], [0.0, b * sg, -c * sb * cos_as], [0.0, 0.0, c * sb * sin_as]])


class _SqueezePairs:
    """squeeze's view of a pair list (`_contact_pairs`), hydrogen bonds first: flat image
    indices and the pair potential, computed once per list update."""

    def __init__(self, pairs: dict, ops: SymOps, n_mol: int, n_q: int):
        order = np.argsort(~pairs["hbond"], kind="stable")
        p = {k: v[order] for k, v in pairs.items()}
        self.i, self.a = p["i"], p["a"]
        self.oj = p["op"] * n_mol + p["j"]          # row of the image centre (O·K,3)
        self.ob = p["op"] * n_q + p["b"]            # row of the image offset (O·N,3)
        self.rows = {k: _row_index(v) for k, v in
                     (("i", self.i), ("oj", self.oj), ("a", self.a), ("ob", self.ob))}
        self.shift = ops.tran[p["op"]] + p["shift"]  # (P,3) fractional
        self.inv_limit = 1.0 / p["limit"]
        self.potential = PairPotential(p["r0"], p["d0"], p["zeta"], p["hbond"])

    def de_dr(self, dist: np.ndarray, stiffness: float) -> np.ndarray:
        """d E / d r (kcal/mol/Å) of every pair: the `PairPotential` plus the contact wall."""
        _, de = self.potential.energy(dist)
        over = np.maximum(1.0 - dist * self.inv_limit, 0.0)
        return de - 2 * stiffness * over * self.inv_limit


def squeeze(cell_par: np.ndarray, sg: gemmi.SpaceGroup, mols: list[_RigidMolecule],
            rules: ContactRules, steps: int = 400, pressure_gpa: float = 1.0,
            relax_gpa: float = 0.0, stiffness: float = 200.0, lr: float = 0.015,
            relax: float = 0.5) -> np.ndarray:
    """Rigid-body lattice-energy minimisation (Adam, analytic gradients).

    Energy per asymmetric unit (kcal/mol): exp-6 dispersion-repulsion and hydrogen bonds
    (`lattice_energy`) over intermolecular pairs within CUTOFF, a stiff wall
    stiffness·(1 - d/d_allowed)₊² at the `ContactRules` limits, and P·V. The first
    (1 - relax) of the steps run at pressure_gpa to bring pyxtal's loose molecules into
    contact; the rest at zero pressure, where the attraction alone holds the crystal and
    the contacts settle near their exp-6 minima (as in crystal structure prediction).

    Cell lengths (per axis group), free angles, molecule centres (fractional) and
    orientations move; molecules on special positions keep centre and orientation.
    Updates `mols` in place; returns the cell (6,) in Å/°.

    With d = M u + C_o q_j - q_i (M: orthogonalisation matrix, u: fractional centre
    difference of the image, C_o = M R_o M⁻¹ the Cartesian operation, q: Cartesian atom
    offsets from the molecule centre), C_o does not change under the cell changes allowed,
    so ∂E/∂M = Σ f uᵀ with f = ∂E/∂d.
    """
    ops = symops(sg)
    n_ops = len(ops)
    groups = _axis_groups(sg)
    axis_group = np.zeros(3, dtype=int)
    for g, axes in enumerate(groups):
        axis_group[axes] = g
    system = sg.crystal_system_str()
    angle_free = np.array([system == "triclinic", system in ("triclinic", "monoclinic"),
                           system == "triclinic"])
    n_mol = len(mols)
    M0 = np.array(make_cell(cell_par).orth.mat)
    site = [_site_freedom(m.centre, ops, M0) for m in mols]
    move_t = np.stack([t for t, _ in site])     # (K,3,3) fractional translation projectors
    move_r = np.stack([r for _, r in site])     # (K,3,3) Cartesian rotation projectors
    loglen = np.log(cell_par[:3][[a[0] for a in groups]])
    angles = np.array(cell_par[3:], dtype=float)
    centre = np.array([m.centre for m in mols], dtype=float)       # (K,3) fractional
    q = np.concatenate([m.offsets for m in mols])                  # (N,3) Å
    owner = np.concatenate([np.full(len(m.z), k) for k, m in enumerate(mols)])
    tables = {(i, j): pair_table(a.z, a.polar_h, b.z, b.polar_h, rules)
              for i, a in enumerate(mols) for j, b in enumerate(mols)}
    n_len = len(groups)
    lr_vec = np.concatenate([np.full(n_len, lr), np.full(3, 50 * lr),
                             np.full(3 * n_mol, 0.2 * lr), np.full(3 * n_mol, 2 * lr)])
    adam = _Adam(lr_vec)

    def par_now():
        return np.concatenate([np.exp(loglen)[axis_group], angles])

    def snapshot():
        start = np.cumsum([0] + [len(m.z) for m in mols])
        return [_RigidMolecule(centre[k], q[start[k]:start[k + 1]], m.z, m.polar_h, m.asu,
                               m.radius) for k, m in enumerate(mols)]

    n_q = len(q)
    owner_rows = _row_index(owner)
    pairs = None
    for step in range(steps):
        par = par_now()
        M = _orth_matrix(par)
        if step % 10 == 0:
            pairs = _SqueezePairs(_contact_pairs(par, snapshot(), ops, tables), ops, n_mol, n_q)
            cart_op = np.einsum("ij,ojk,kl->oil", M, ops.rot, np.linalg.inv(M))  # (O,3,3)
        p = GPA * (relax_gpa if step >= (1 - relax) * steps else pressure_gpa)
        rot_centre = np.einsum("oij,kj->oki", ops.rot, centre).reshape(-1, 3)  # (O·K,3) image centres
        rot_q = np.einsum("oij,nj->oni", cart_op, q).reshape(-1, 3)             # (O·N,3) image offsets
        u = rot_centre[pairs.oj] + pairs.shift - centre[pairs.i]   # (P,3) frac
        d = u @ M.T + rot_q[pairs.ob] - q[pairs.a]                  # (P,3) Å
        dist = np.sqrt((d * d).sum(-1)) + 1e-12
        de = pairs.de_dr(dist, stiffness)
        f = (0.5 * de / dist)[:, None] * d      # ∂E/∂d; every pair is listed twice (i-j, j-i)
        # cell: ∂E/∂M, then per log length and per angle (finite difference of M)
        volume = float(np.linalg.det(M))
        dM = f.T @ u
        g_len = np.zeros(n_len)
        np.add.at(g_len, axis_group, (dM * M).sum(0) + p * volume / n_ops)
        g_ang = np.zeros(3)
        for m_ in np.nonzero(angle_free)[0]:
            h = np.zeros(6)
            h[3 + m_] = 1e-3
            M_plus, M_minus = _orth_matrix(par + h), _orth_matrix(par - h)
            dMa = (M_plus - M_minus) / 2e-3
            dV = (np.linalg.det(M_plus) - np.linalg.det(M_minus)) / 2e-3
            g_ang[m_] = (dM * dMa).sum() + p * dV / n_ops
        # centres (fractional) and orientations (torque on the offsets)
        fM = f @ M
        g_cen = (-_sum_rows(pairs.rows["i"], fM, n_mol)
                 + np.einsum("oji,okj->ki", ops.rot, _sum_rows(pairs.rows["oj"], fM, n_ops * n_mol)
                             .reshape(n_ops, n_mol, 3)))
        g_q = (-_sum_rows(pairs.rows["a"], f, n_q)
               + np.einsum("oji,onj->ni", cart_op, _sum_rows(pairs.rows["ob"], f, n_ops * n_q)
                           .reshape(n_ops, n_q, 3)))
        g_rot = _sum_rows(owner_rows, np.cross(q, g_q), n_mol)
        g_cen = np.einsum("kij,kj->ki", move_t, g_cen)
        g_rot = np.einsum("kij,kj->ki", move_r, g_rot)
        delta = adam.step(np.concatenate([g_len, g_ang, g_cen.ravel(), g_rot.ravel()]))
        loglen += delta[:n_len]
        angles = np.clip(angles + delta[n_len:n_len + 3] * angle_free, 60.0, 130.0)
        centre += np.einsum("kij,kj->ki", move_t, delta[n_len + 3:n_len + 3 + 3 * n_mol]
                            .reshape(n_mol, 3))
        w = np.einsum("kij,kj->ki", move_r, delta[n_len + 3 + 3 * n_mol:].reshape(n_mol, 3))
        for k in range(n_mol):
            q[owner == k] = _rotate(q[owner == k], w[k])
    par = par_now()
    for k, m in enumerate(snapshot()):
        mols[k].centre, mols[k].offsets = m.centre.copy(), m.offsets.copy()
    return par


def energy_per_asu(cell_par: np.ndarray, sg: gemmi.SpaceGroup, mols: list[_RigidMolecule],
                   rules: ContactRules) -> float:
    """Lattice energy (kcal/mol) per asymmetric unit at zero pressure (see `squeeze`)."""
    ops = symops(sg)
    tables = {(i, j): pair_table(a.z, a.polar_h, b.z, b.polar_h, rules)
              for i, a in enumerate(mols) for j, b in enumerate(mols)}
    pairs = _contact_pairs(cell_par, mols, ops, tables)
    cell = make_cell(cell_par)
    orth, frac_m = np.array(cell.orth.mat), np.array(cell.frac.mat)
    start = np.cumsum([0] + [len(m.z) for m in mols])
    fr = np.concatenate([m.centre + m.offsets @ frac_m.T for m in mols])
    o = pairs["op"]
    img = np.einsum("pij,pj->pi", ops.rot[o], fr[pairs["b"]]) + ops.tran[o] + pairs["shift"]
    dist = np.linalg.norm((img - fr[pairs["a"]]) @ orth.T, axis=-1)
    e, _ = lattice_energy(dist, pairs["r0"], pairs["d0"], pairs["zeta"], pairs["hbond"])
    return 0.5 * float(e.sum())


def compress(cell_par: np.ndarray, sg: gemmi.SpaceGroup, mols: list[_RigidMolecule],
             rules: ContactRules, rng: np.random.Generator, cycles: int = 1,
             steps: int = 6, lowest: float = 0.9) -> np.ndarray:
    """Shrink the cell axes (bisection, rigid molecules at fixed fractional centres) until
    the closest contact reaches its limit. Returns the new cell (6,) in Å/°."""
    ops = symops(sg)
    limits = {(i, j): _limit_matrix(a.z, a.polar_h, b.z, b.polar_h, rules)
              for i, a in enumerate(mols) for j, b in enumerate(mols)}

    def ok(par):
        return closest_contact_ratio(make_cell(par), mols, ops, limits, stop_below=1.0) >= 1.0

    par = np.array(cell_par, dtype=float)
    if not ok(par):  # the squeeze leaves small overlaps: open up just enough (bisection)
        lo, hi = 1.0, 1.6
        big = par.copy()
        big[:3] *= hi
        if not ok(big):
            raise RuntimeError("could not find a clash-free cell")
        for _ in range(steps):
            mid = 0.5 * (lo + hi)
            trial = par.copy()
            trial[:3] *= mid
            lo, hi = (lo, mid) if ok(trial) else (mid, hi)
        par[:3] *= hi
    groups = _axis_groups(sg)
    for _ in range(cycles):
        for g in rng.permutation(len(groups)):
            axes = groups[g]
            lo, hi = lowest, 1.0  # scale factors: hi is known to be clash-free
            for _ in range(steps):
                mid = 0.5 * (lo + hi)
                trial = par.copy()
                trial[axes] *= mid
                if ok(trial):
                    hi = mid
                else:
                    lo = mid
            par[axes] *= hi
    return par


def _polar_h(z: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """H atoms within 1.25 Å of an N or O (donor hydrogens)."""
    h = np.nonzero(z == 1)[0]
    da = np.nonzero(np.isin(z, (7, 8)))[0]
    out = np.zeros(len(z), bool)
    if len(h) and len(da):
        d = np.linalg.norm(xyz[h, None] - xyz[None, da], axis=-1)
        out[h] = d.min(axis=1) < 1.25
    return out


def _asu_mask(frac: np.ndarray, ops: SymOps, cell: gemmi.UnitCell, tol: float = 0.3) -> np.ndarray:
    """Atoms of one molecule to keep: drop an atom that an operation maps onto an earlier
    kept atom of the same molecule (the other half of a molecule on a special position)."""
    orth = np.array(cell.orth.mat)
    images = apply_ops(frac, ops)  # (n,O,3)
    keep = np.ones(len(frac), bool)
    for i in range(len(frac)):
        if not keep[i]:
            continue
        d = images[i][:, None, :] - frac[None, i + 1:] % 1.0   # (O,m,3)
        d -= np.round(d)
        close = np.linalg.norm(d @ orth.T, axis=-1) < tol      # (O,m)
        dup = close.any(axis=0)
        keep[i + 1:] &= ~dup
    return keep


def _quiet():
    """pyxtal prints warnings on stdout; records own stdout, so swallow them."""
    return contextlib.redirect_stdout(io.StringIO())


def _random_start(species: list, counts: list[int], sg_number: int, ops: SymOps,
                  rng: np.random.Generator) -> tuple[np.ndarray, list[_RigidMolecule], list[str]]:
    """pyxtal's random placement of the molecules: (cell (6,) Å/°, rigid molecules in
    gemmi's Cartesian frame, Wyckoff labels). Raises RuntimeError when pyxtal fails."""
    from pyxtal import pyxtal

    with _quiet():
        xtal = pyxtal(molecular=True)
        xtal.from_random(3, sg_number, species, counts, factor=PYXTAL_VOLUME_FACTOR,
                         random_state=int(rng.integers(2**31)))
    if not xtal.valid:
        raise RuntimeError(f"pyxtal found no packing in space group {sg_number}")
    par = np.array(xtal.lattice.get_para(degree=True), dtype=float)
    orth = np.array(make_cell(par).orth.mat)
    mols = []
    for site in xtal.mol_sites:
        frac, symbols = site._get_coords_and_species(first=True)
        z = np.array([gemmi.Element(s).atomic_number for s in symbols], dtype=np.int16)
        centre = site.wp.ops[0].operate(site.position)
        offsets = (frac - centre) @ orth.T  # gemmi Cartesian frame, Å
        rad = float(np.linalg.norm(offsets, axis=1).max()) + 2.0
        # pyxtal may reorder atoms only through symmetrisation; polar H from geometry
        fixed = site.wp.multiplicity < len(ops)
        mols.append(_RigidMolecule(np.asarray(centre, float), offsets, z,
                                   _polar_h(z, offsets), np.ones(len(z), bool), rad, fixed))
    return par, mols, [s.wp.get_label() for s in xtal.mol_sites]


def pack(molecules: list[Molecule3D], counts: list[int], sg_number: int,
         rng: np.random.Generator, symmetrize: bool = False, rules: ContactRules | None = None,
         crystal_id: str = "", max_volume_ratio: float = MAX_VOLUME_RATIO,
         starts: int = STARTS) -> Crystal:
    """Pack molecules into one crystal of space group sg_number (pyxtal's standard setting).

    counts: molecules of each kind in the conventional cell (e.g. [4] for Z'=1 in P21/c,
    [2] for half a molecule on an inversion centre, [4, 4] for Z'=2 or a 1:1 solvate).
    `starts` random placements are each minimised (`squeeze`); the one with the lowest
    lattice energy is kept, as crystal structure prediction keeps its lowest minima.
    Raises RuntimeError (or pyxtal's errors) when no packing is found, LoosePacking when
    the cell ends up more than max_volume_ratio × the Hofmann volume.
    """
    from pymatgen.core import Molecule
    from pyxtal.molecule import pyxtal_molecule

    rules = rules or ContactRules()
    with _quiet():
        species = [pyxtal_molecule(Molecule(m.symbols, m.xyz), symmetrize=symmetrize,
                                   random_state=int(rng.integers(2**31)))
                   for m in molecules]
    hall = _pyxtal_hall(sg_number)
    sg = find_spacegroup(hall=hall)
    ops = symops(sg)
    best = None
    for _ in range(starts):
        par, mols, wyckoff = _random_start(species, counts, sg_number, ops, rng)
        par = squeeze(par, sg, mols, rules)
        energy = energy_per_asu(par, sg, mols, rules)
        if best is None or energy < best[0]:
            best = (energy, par, mols, wyckoff)
    energy, par, mols, wyckoff = best
    par = compress(par, sg, mols, rules, rng, cycles=0)  # only clear any overlap left
    cell = make_cell(par)
    frac_m = np.array(cell.frac.mat)
    zs, fr = [], []
    for m in mols:
        f = m.centre + m.offsets @ frac_m.T
        m.asu = _asu_mask(f, ops, cell)
        zs.append(m.z[m.asu])
        fr.append(np.mod(f[m.asu], 1.0))
    z = np.concatenate(zs)
    frac = np.mod(np.concatenate(fr), 1.0)
    n_cell = sum(len(m.z) * len(ops) // int(stabilizer_order(m.centre[None], ops, cell, 0.01)[0])
                 for m in mols)
    if len(unique_images(frac, ops, cell, tol=0.3)[0]) != n_cell:
        # e.g. a molecule with more symmetry than its site: the halves are not told apart
        raise RuntimeError("asymmetric unit does not expand to the packed cell")
    ratio = cell.volume / (len(ops) * hofmann_volume(z))
    if ratio > max_volume_ratio:
        raise LoosePacking(f"cell volume {ratio:.2f} × Hofmann estimate")
    frac[frac >= 1.0] = 0.0
    return Crystal(crystal_id, par.astype(np.float32), hall, sg.number, z.astype(np.int16),
                   frac.astype(np.float32), z == 1,
                   info={"n_mol_sites": len(mols), "volume_ratio": ratio,
                         "special_position": any(m.fixed for m in mols),
                         "wyckoff": wyckoff, "energy_kcal_mol": energy})


def make_crystal(main: Molecule3D, rng: np.random.Generator, solvent: Molecule3D | None = None,
                 second: Molecule3D | None = None, mode: str = "z1", sg_number: int | None = None,
                 rules: ContactRules | None = None, crystal_id: str = "",
                 tries: int = 3) -> Crystal:
    """One crystal of `main` in a packing mode (see MODES); the space group is drawn from
    the statistics unless given (for mode 'special', among the groups that have a site of
    the molecule's point_symmetry). `second` is another conformer for Z'=2, `solvent` the
    co-crystallised molecule for mode 'solvate'. Falls back to Z'=1 when a special position
    does not fit the molecule's symmetry; tries the same space group again when packing
    fails or is loose, and another one on the last try."""
    from pyxtal.symmetry import Group

    last_err: Exception | None = None
    site = main.point_symmetry if mode == "special" else ""
    sg_n = sg_number if sg_number is not None else draw_spacegroup(rng, main.chiral, site)
    for attempt in range(tries):
        if attempt == tries - 1 and sg_number is None:  # last try: another space group
            sg_n = draw_spacegroup(rng, main.chiral, site)
        mult = len(Group(sg_n)[0])  # general-position multiplicity
        try:
            if mode == "special" and attempt < tries - 1:
                return pack([main], [mult // 2], sg_n, rng, symmetrize=True, rules=rules,
                            crystal_id=crystal_id)
            if mode == "z2" and second is not None:
                return pack([main, second], [mult, mult], sg_n, rng, rules=rules,
                            crystal_id=crystal_id)
            if mode == "solvate" and solvent is not None:
                return pack([main, solvent], [mult, mult], sg_n, rng, rules=rules,
                            crystal_id=crystal_id)
            return pack([main], [mult], sg_n, rng, rules=rules, crystal_id=crystal_id)
        except Exception as e:  # pyxtal raises its own error types for impossible combos
            last_err = e
    raise RuntimeError(f"{crystal_id}: no crystal after {tries} tries ({last_err})")


def rigid_from_structure(s: dict) -> list[_RigidMolecule]:
    """The asymmetric unit of a shard structure dict as rigid molecules (covalent fragments:
    atoms joined by `chemistry.is_bond` through the nearest lattice image), for relaxing a
    real crystal with `squeeze` or scoring it with `energy_per_asu`."""
    cell = make_cell(s["cell"])
    orth = np.array(cell.orth.mat)
    z = np.asarray(s["atomic_number"])
    radius = np.array([covalent_radius(int(k)) for k in z])
    frac = np.asarray(s["frac"], float)
    unplaced = set(range(len(z)))
    mols = []
    while unplaced:
        start = min(unplaced)
        unplaced.remove(start)
        members, pos = [start], {start: frac[start]}
        grew = True
        while grew:
            grew = False
            for i in sorted(unplaced):
                d = frac[i] - np.array([pos[k] for k in members])
                d -= np.round(d)
                dist = np.linalg.norm(d @ orth.T, axis=1)
                bonded = is_bond(dist, radius[i] + radius[members])
                if bonded.any():
                    k = int(np.where(bonded, dist, np.inf).argmin())
                    pos[i] = pos[members[k]] + d[k]
                    members.append(i)
                    unplaced.remove(i)
                    grew = True
        xyz = np.array([pos[k] for k in members])
        centre = xyz.mean(axis=0)
        offsets = (xyz - centre) @ orth.T
        zm = z[members]
        mols.append(_RigidMolecule(centre, offsets, zm, _polar_h(zm, offsets),
                                   np.ones(len(zm), bool),
                                   float(np.linalg.norm(offsets, axis=1).max()) + 2.0))
    return mols
