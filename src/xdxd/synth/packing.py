"""Pack molecules into crystals: space group drawn from real statistics, pyxtal places the
molecules, then the cell is squeezed until van der Waals contacts touch.

Steps for one crystal (see `make_crystal`):
1. draw a space group (`SG_ORGANIC`, or `SG_SOHNCKE` for an enantiopure molecule) and a
   packing mode: Z'=1, half a molecule on a special position, Z'=2, molecule + solvent;
2. pyxtal (Fredericks et al., Comput. Phys. Commun. 261 (2021) 107810) places rigid
   molecules on Wyckoff positions in a loose random cell;
3. `squeeze`: rigid-body compression by gradient descent (torch autograd): pressure on
   ln V against soft walls at the contact limits (`ContactRules`: a fraction of the Bondi
   van der Waals sum, shorter for N/O-H···N/O). Cell lengths, free angles (triclinic;
   β in monoclinic), molecule centres and orientations move; molecules on special
   positions keep centre and orientation. Then `compress` opens the cell just enough to
   clear the last overlaps and shrinks each free axis by bisection until a contact
   touches. A cell still above MAX_VOLUME_RATIO × the Hofmann (2002) volume is redone.
   pyxtal's cells start at density ~0.4-0.9 g/cm³; this lifts them to ~1.1-1.3 (real
   organic crystals: ~1.2-1.5, packing coefficient 0.65-0.75, Kitaigorodskii 1973);
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

from xdxd.crystal.symmetry import SymOps, apply_ops, find_spacegroup, make_cell, symops
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

# packing modes and their shares: Z'>1 is ~11% of CSD entries (Steed & Steed, Chem. Rev.
# 115 (2015) 2895); molecules on special positions ~15% in centrosymmetric groups; solvates
# ~15% (Görbitz & Hersleth 2000).
# pyxtal cell volume = factor × Σ molecular box volumes; small gives a denser start
PYXTAL_VOLUME_FACTOR = 0.6
# Mean volume (Å³) an atom takes in organic crystals (Hofmann, Acta Cryst. B58 (2002) 489,
# Table 2, rounded). V_cell / (Z · Σ v_atom) is ~1.0 ± 0.05 for real structures; a
# generated cell far above that is a loose, unrealistic packing and is redone.
HOFMANN_VOLUME = {1: 5.08, 5: 7.48, 6: 13.87, 7: 11.80, 8: 11.39, 9: 11.17, 14: 38.79,
                  15: 29.50, 16: 25.20, 17: 25.80, 35: 31.50, 53: 44.55}
MAX_VOLUME_RATIO = 1.30


def hofmann_volume(z: np.ndarray) -> float:
    """Expected crystal volume (Å³) of the atoms z (Hofmann 2002; others: 20 Å³)."""
    return float(sum(HOFMANN_VOLUME.get(int(k), 20.0) for k in z))


MODES = {"z1": 0.70, "special": 0.08, "z2": 0.08, "solvate": 0.14}


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
    fixed: bool = False        # on a special position: centre and orientation stay put


def draw_spacegroup(rng: np.random.Generator, chiral: bool) -> int:
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
    return np.array([gemmi.Element(int(k)).vdw_r for k in z])


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


def _near_images(cell: gemmi.UnitCell, mols: list[_RigidMolecule], ops: SymOps,
                 frac: list[np.ndarray] | None = None) -> dict:
    """For each pair (i, j) of ASU molecules, the images of j that can touch i:
    (operation indices (K,), lattice shifts (K,3)). The image of i that is i itself is left
    out (same centre: identity, or a stabilizer operation of a special position)."""
    orth = np.array(cell.orth.mat)
    spacing = 1.0 / np.linalg.norm(np.array(cell.frac.mat), axis=1)  # interplanar, Å
    out = {}
    for i, mi in enumerate(mols):
        for j, mj in enumerate(mols):
            reach = mi.radius + mj.radius  # radii carry a 2 Å vdW margin each
            n = np.ceil(reach / spacing).astype(int)
            grid = np.stack(np.meshgrid(*[np.arange(-k, k + 1) for k in n], indexing="ij"),
                            -1).reshape(-1, 3)                          # (T,3)
            c_img = np.einsum("oij,j->oi", ops.rot, mj.centre) + ops.tran  # (O,3)
            shift = np.round(mi.centre - c_img)[:, None, :] + grid[None]  # (O,T,3)
            dc = c_img[:, None, :] + shift - mi.centre                   # (O,T,3) frac
            dist_c = np.linalg.norm(dc @ orth.T, axis=-1)                 # (O,T) Å
            near = dist_c < reach
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
        img = np.einsum("oij,nj->oni", ops.rot[o_idx], fr[j]) + (ops.tran[o_idx] + shift)[:, None]
        d = (img[:, None, :, :] - fr[i][None, :, None, :]) @ orth.T   # (K,ni,nj,3) Å
        ratio = np.sqrt((d * d).sum(-1)) / limits[i, j][None]
        best = min(best, float(ratio.min()))
        if best < stop_below:
            break
    return best


def _contact_pairs(cell_par: np.ndarray, mols: list[_RigidMolecule], ops: SymOps,
                   limits: dict, margin: float = 1.0) -> dict:
    """Intermolecular atom pairs closer than their limit + margin Å, flattened over all
    molecule pairs: molecule i, atom of i (global index), molecule j, atom of j, operation,
    lattice shift (P,3) and limit (P,) in Å."""
    cell = make_cell(cell_par)
    orth = np.array(cell.orth.mat)
    frac_m = np.array(cell.frac.mat)
    start = np.cumsum([0] + [len(m.z) for m in mols])
    fr = [m.centre + m.offsets @ frac_m.T for m in mols]
    cols = {k: [] for k in ("i", "a", "j", "b", "op", "shift", "limit")}
    for (i, j), (o_idx, shift) in _near_images(cell, mols, ops).items():
        img = np.einsum("oij,nj->oni", ops.rot[o_idx], fr[j]) + (ops.tran[o_idx] + shift)[:, None]
        d = np.linalg.norm((img[:, None, :, :] - fr[i][None, :, None, :]) @ orth.T, axis=-1)
        k, a, b = np.nonzero(d < limits[i, j][None] + margin)
        cols["i"].append(np.full(len(k), i))
        cols["j"].append(np.full(len(k), j))
        cols["a"].append(a + start[i])
        cols["b"].append(b + start[j])
        cols["op"].append(o_idx[k])
        cols["shift"].append(shift[k].reshape(-1, 3))
        cols["limit"].append(limits[i, j][a, b])
    if not cols["i"]:
        return {"i": np.zeros(0, int), "a": np.zeros(0, int), "j": np.zeros(0, int),
                "b": np.zeros(0, int), "op": np.zeros(0, int), "shift": np.zeros((0, 3)),
                "limit": np.zeros(0)}
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


def squeeze(cell_par: np.ndarray, sg: gemmi.SpaceGroup, mols: list[_RigidMolecule],
            rules: ContactRules, steps: int = 400, pressure: float = 12.0,
            stiffness: float = 20.0, lr: float = 0.015, relax: float = 0.4) -> np.ndarray:
    """Rigid-body compression by gradient descent (Adam, analytic gradients): energy =
    pressure·ln V + stiffness·Σ (1 - d/d_allowed)₊² over intermolecular atom pairs.

    Cell lengths (per axis group), free angles, molecule centres (fractional) and
    orientations move; molecules on special positions keep centre and orientation. The
    last `relax` share of the steps has little pressure and stiff walls. Updates `mols`
    in place; returns the cell (6,) in Å/°. Leaves small overlaps: `compress` then opens
    the cell just enough.

    With d = M u + C_o q_j - q_i (M: orthogonalisation matrix, u: fractional centre
    difference of the image, C_o = M R_o M⁻¹ the Cartesian operation, q: Cartesian atom
    offsets from the molecule centre), C_o does not change under the cell changes allowed,
    so ∂E/∂M = Σ f uᵀ with f = ∂E/∂d.
    """
    ops = symops(sg)
    groups = _axis_groups(sg)
    axis_group = np.zeros(3, dtype=int)
    for g, axes in enumerate(groups):
        axis_group[axes] = g
    system = sg.crystal_system_str()
    angle_free = np.array([system == "triclinic", system in ("triclinic", "monoclinic"),
                           system == "triclinic"])
    n_mol = len(mols)
    free = np.array([not m.fixed for m in mols])
    loglen = np.log(cell_par[:3][[a[0] for a in groups]])
    angles = np.array(cell_par[3:], dtype=float)
    centre = np.array([m.centre for m in mols], dtype=float)       # (K,3) fractional
    q = np.concatenate([m.offsets for m in mols])                  # (N,3) Å
    owner = np.concatenate([np.full(len(m.z), k) for k, m in enumerate(mols)])
    limits = {(i, j): _limit_matrix(a.z, a.polar_h, b.z, b.polar_h, rules)
              for i, a in enumerate(mols) for j, b in enumerate(mols)}
    n_len = len(groups)
    lr_vec = np.concatenate([np.full(n_len, lr), np.full(3, 50 * lr),
                             np.full(3 * n_mol, 0.2 * lr), np.full(3 * n_mol, 2 * lr)])
    adam = _Adam(lr_vec)

    def par_now():
        return np.concatenate([np.exp(loglen)[axis_group], angles])

    def orth_of(par):
        return np.array(make_cell(par).orth.mat)

    def snapshot():
        start = np.cumsum([0] + [len(m.z) for m in mols])
        return [_RigidMolecule(centre[k], q[start[k]:start[k + 1]], m.z, m.polar_h, m.asu,
                               m.radius) for k, m in enumerate(mols)]

    pairs = None
    for step in range(steps):
        par = par_now()
        M = orth_of(par)
        if step % 10 == 0:
            pairs = _contact_pairs(par, snapshot(), ops, limits)
            cart_op = np.einsum("ij,ojk,kl->oil", M, ops.rot, np.linalg.inv(M))  # (O,3,3)
        relaxing = step >= (1 - relax) * steps
        k_wall = (4 if relaxing else 1) * stiffness
        p = pressure * (0.05 if relaxing else 1.0)
        i, a, j, b, o = pairs["i"], pairs["a"], pairs["j"], pairs["b"], pairs["op"]
        u = (np.einsum("pij,pj->pi", ops.rot[o], centre[j]) + ops.tran[o] + pairs["shift"]
             - centre[i])                                                     # (P,3) frac
        cq = np.einsum("pij,pj->pi", cart_op[o], q[b])
        d = u @ M.T + cq - q[a]                                               # (P,3) Å
        dist = np.sqrt((d * d).sum(-1)) + 1e-12
        over = np.maximum(1.0 - dist / pairs["limit"], 0.0)
        f = (-2 * k_wall * over / pairs["limit"] / dist)[:, None] * d        # ∂E/∂d
        # cell: ∂E/∂M, then per log length and per angle (finite difference of M)
        dM = f.T @ u
        g_len = np.zeros(n_len)
        np.add.at(g_len, axis_group, (dM * M).sum(0) + p)
        g_ang = np.zeros(3)
        for m_ in np.nonzero(angle_free)[0]:
            h = np.zeros(6)
            h[3 + m_] = 1e-3
            dMa = (orth_of(par + h) - orth_of(par - h)) / 2e-3
            dlnV = (np.log(np.linalg.det(orth_of(par + h)))
                    - np.log(np.linalg.det(orth_of(par - h)))) / 2e-3
            g_ang[m_] = (dM * dMa).sum() + p * dlnV
        # centres (fractional) and orientations (torque on the offsets)
        g_cen = np.zeros((n_mol, 3))
        np.add.at(g_cen, i, -(f @ M))
        np.add.at(g_cen, j, np.einsum("pji,pj->pi", ops.rot[o], f @ M))
        g_q = np.zeros_like(q)
        np.add.at(g_q, a, -f)
        np.add.at(g_q, b, np.einsum("pji,pj->pi", cart_op[o], f))
        g_rot = np.zeros((n_mol, 3))
        np.add.at(g_rot, owner, np.cross(q, g_q))
        g_cen[~free] = 0.0
        g_rot[~free] = 0.0
        delta = adam.step(np.concatenate([g_len, g_ang, g_cen.ravel(), g_rot.ravel()]))
        loglen += delta[:n_len]
        angles = np.clip(angles + delta[n_len:n_len + 3] * angle_free, 60.0, 130.0)
        centre += delta[n_len + 3:n_len + 3 + 3 * n_mol].reshape(n_mol, 3) * free[:, None]
        w = delta[n_len + 3 + 3 * n_mol:].reshape(n_mol, 3)
        for k in np.nonzero(free)[0]:
            q[owner == k] = _rotate(q[owner == k], w[k])
    par = par_now()
    for k, m in enumerate(snapshot()):
        mols[k].centre, mols[k].offsets = m.centre.copy(), m.offsets.copy()
    return par


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


def pack(molecules: list[Molecule3D], counts: list[int], sg_number: int,
         rng: np.random.Generator, symmetrize: bool = False, rules: ContactRules | None = None,
         crystal_id: str = "", max_volume_ratio: float = MAX_VOLUME_RATIO) -> Crystal:
    """Pack molecules into one crystal of space group sg_number (pyxtal's standard setting).

    counts: molecules of each kind in the conventional cell (e.g. [4] for Z'=1 in P21/c,
    [2] for half a molecule on an inversion centre, [4, 4] for Z'=2 or a 1:1 solvate).
    Raises RuntimeError (or pyxtal's errors) when no packing is found, LoosePacking when
    the cell ends up more than max_volume_ratio × the Hofmann volume.
    """
    from pymatgen.core import Molecule
    from pyxtal import pyxtal
    from pyxtal.molecule import pyxtal_molecule

    rules = rules or ContactRules()
    with _quiet():
        species = [pyxtal_molecule(Molecule(m.symbols, m.xyz), symmetrize=symmetrize,
                                   random_state=int(rng.integers(2**31)))
                   for m in molecules]
        xtal = pyxtal(molecular=True)
        xtal.from_random(3, sg_number, species, counts, factor=PYXTAL_VOLUME_FACTOR,
                         random_state=int(rng.integers(2**31)))
    if not xtal.valid:
        raise RuntimeError(f"pyxtal found no packing in space group {sg_number}")

    hall = _pyxtal_hall(sg_number)
    sg = find_spacegroup(hall=hall)
    ops = symops(sg)
    lat = xtal.lattice.matrix  # rows a, b, c in pyxtal's Cartesian frame
    par = np.array(xtal.lattice.get_para(degree=True), dtype=float)
    cell = make_cell(par)
    orth = np.array(cell.orth.mat)
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
    par = squeeze(par, sg, mols, rules)
    par = compress(par, sg, mols, rules, rng)
    cell = make_cell(par)
    frac_m = np.array(cell.frac.mat)
    zs, fr = [], []
    for m in mols:
        f = m.centre + m.offsets @ frac_m.T
        m.asu = _asu_mask(f, ops, cell)
        zs.append(m.z[m.asu])
        fr.append(np.mod(f[m.asu], 1.0))
    z = np.concatenate(zs)
    ratio = cell.volume / (len(ops) * hofmann_volume(z))
    if ratio > max_volume_ratio:
        raise LoosePacking(f"cell volume {ratio:.2f} × Hofmann estimate")
    frac = np.mod(np.concatenate(fr), 1.0)
    frac[frac >= 1.0] = 0.0
    return Crystal(crystal_id, par.astype(np.float32), hall, sg.number, z.astype(np.int16),
                   frac.astype(np.float32), z == 1,
                   info={"n_mol_sites": len(mols), "volume_ratio": ratio,
                         "special_position": any(m.fixed for m in mols),
                         "wyckoff": [s.wp.get_label() for s in xtal.mol_sites]})


def make_crystal(main: Molecule3D, rng: np.random.Generator, solvent: Molecule3D | None = None,
                 second: Molecule3D | None = None, mode: str = "z1", sg_number: int | None = None,
                 rules: ContactRules | None = None, crystal_id: str = "",
                 tries: int = 3) -> Crystal:
    """One crystal of `main` in a packing mode (see MODES); the space group is drawn from
    the statistics unless given. `second` is another conformer for Z'=2, `solvent` the
    co-crystallised molecule for mode 'solvate'. Falls back to Z'=1 when a special position
    does not fit the molecule's symmetry; tries the same space group again when packing
    fails or is loose, and another one on the last try."""
    from pyxtal.symmetry import Group

    last_err: Exception | None = None
    sg_n = sg_number if sg_number is not None else draw_spacegroup(rng, main.chiral)
    for attempt in range(tries):
        if attempt == tries - 1 and sg_number is None:  # last try: another space group
            sg_n = draw_spacegroup(rng, main.chiral)
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
