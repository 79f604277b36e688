"""A molecule's own symmetry: the pairings of its atoms that a site symmetry can realise.

A molecule on an inversion centre, a 2-fold axis or a mirror is mapped onto itself by the
site's operation, each atom onto a partner of the same kind: an involution of its bonded
graph (a permutation P with P(P(a)) = a that keeps elements, H counts and bonds), or for a
molecule lying in a mirror, every atom onto itself. `involutions` lists them for the heavy
atoms of an RDKit molecule, the ones the conformer itself comes closest to first.
"""
from __future__ import annotations

import numpy as np

MAX_MATCHES = 4096  # graph automorphisms enumerated (RDKit substructure matches of the molecule on itself)


def involutions(bare, xyz: np.ndarray, limit: int = 16) -> np.ndarray:
    """Involutions (P,n) of the heavy atoms of an RDKit molecule without explicit H
    (`bare`, n atoms): graph automorphisms of order 2 that keep each atom's element, H
    count and charge, at most `limit`, ordered by how far the conformer's heavy atoms xyz
    (n,3) Å are from being mapped onto their partners by one rotation or rotation-inversion
    about their centroid (the closest first)."""
    label = [(a.GetAtomicNum(), a.GetTotalNumHs(), a.GetFormalCharge()) for a in bare.GetAtoms()]
    n = len(label)
    out, seen = [], set()
    for match in bare.GetSubstructMatches(bare, uniquify=False, useChirality=False, maxMatches=MAX_MATCHES):
        p = np.asarray(match)
        if (p == np.arange(n)).all() or not (p[p] == np.arange(n)).all():
            continue
        if any(label[a] != label[b] for a, b in enumerate(p)) or tuple(p) in seen:
            continue
        seen.add(tuple(p))
        out.append(p)
    out.sort(key=lambda p: superposition_misfit(xyz, p))
    return np.array(out[:limit], dtype=np.int64).reshape(-1, n)


def relabellings(bare, xyz: np.ndarray, limit: int = 8) -> np.ndarray:
    """Permutations (P,n) of the heavy atoms of an RDKit molecule without explicit H
    (`bare`, n atoms) that keep its bonded graph but not the kinds of its atoms (element,
    H count, charge): placed by one, atom a goes where atom p[a] was, so a molecule whose
    shape is nearly symmetric (a morpholinium's O and N, a diol's OH and CH3 ends) can be
    tried the other way round. One per distinct arrangement of kinds, the molecule's own
    excluded; at most `limit`, those the conformer's heavy atoms xyz (n,3) Å come closest
    to by a rotation first."""
    from rdkit import Chem
    label = [(a.GetAtomicNum(), a.GetTotalNumHs(), a.GetFormalCharge()) for a in bare.GetAtoms()]
    n = len(label)
    blind = Chem.RWMol(bare)  # the bare graph: every atom a carbon, every bond single
    for a in blind.GetAtoms():
        a.SetAtomicNum(6)
        a.SetFormalCharge(0)
        a.SetIsAromatic(False)
        a.SetNoImplicit(True)
        a.SetChiralTag(Chem.ChiralType.CHI_UNSPECIFIED)
    for b in blind.GetBonds():
        b.SetBondType(Chem.BondType.SINGLE)
        b.SetIsAromatic(False)
    blind = blind.GetMol()
    out, seen = [], {tuple(label)}
    for match in blind.GetSubstructMatches(blind, uniquify=False, useChirality=False, maxMatches=MAX_MATCHES):
        p = np.asarray(match)
        kinds = [None] * n
        for a in range(n):
            kinds[p[a]] = label[a]
        if tuple(kinds) in seen:
            continue
        seen.add(tuple(kinds))
        out.append(p)
    out.sort(key=lambda p: superposition_misfit(xyz, p, "rotation"))
    return np.array(out[:limit], dtype=np.int64).reshape(-1, n)


def superposition_misfit(xyz: np.ndarray, p: np.ndarray, kind: str | None = None) -> float:
    """RMS distance Å between points xyz (n,3) turned about their centroid and their
    partners xyz[p]: by the best rotation or rotation-inversion (kind None), by the
    inversion, by the best rotation ('rotation') or the best rotation-inversion ('mirror')
    (Kabsch)."""
    x = xyz - xyz.mean(0)
    y = x[p]
    if kind == "inversion":
        return float(np.sqrt(((x + y) ** 2).sum() / len(x)))
    h = x.T @ y
    s = np.linalg.svd(h, compute_uv=False)
    d = 1.0 if np.linalg.det(h) >= 0 else -1.0   # max tr(R h): s1 + s2 + d s3 proper, - d s3 improper
    best = {None: s.sum(), "rotation": s[0] + s[1] + d * s[2], "mirror": s[0] + s[1] - d * s[2]}[kind]
    ss = (x * x).sum() + (y * y).sum() - 2 * best
    return float(np.sqrt(max(ss, 0.0) / len(x)))


SPREAD_A = 0.25  # Å, RMS distance from a line (plane) within which atoms count as on an axis (in a mirror)
RIGID_MISFIT_A = 1.0  # Å, a molecule without torsions is held only by pairings its conformations come this close to


class Symmetrised:
    """A molecule held in the symmetry of a site of order 2 (inversion centre, 2-fold axis,
    mirror): each heavy atom is moved halfway to where the site's operation s puts its
    partner P(a), x ← (x + s⁻¹ x[P]) / 2, so that s maps the molecule exactly onto itself
    whatever its torsions and orientation; each H moves with its parent.

    One start per (symmetry element, pairing): points (S,3) fractional, a point on each
    element (the first of `special_sites` on it), and for each the inverse rotation (S,3,3),
    the translation (S,3) with R p + t = p, the operation's index in the space group's
    list (S,), and the pairing (S,n) of all atoms."""

    def __init__(self, points, inverse, tran, op, pairing, ride, heavy):
        self.points, self.inverse, self.tran, self.op, self.pairing = points, inverse, tran, op, pairing
        self.ride, self.heavy = ride, heavy

    @staticmethod
    def of(model, points: np.ndarray, ops, limit: int = 4, device: str = "cpu") -> "Symmetrised | None":
        """The starts for a molecule (tree.MoleculeModel) on the sites of order 2 `points`
        (S,3) fractional of a space group (ops: SymOps): for each symmetry element, up to
        `limit` pairings of its atoms that such an element can realise (`_pairings`). None
        when there is none."""
        import torch
        from xdxd.crystal.symmetry import site_symmetry
        heavy = np.nonzero(model.heavy)[0]  # model.involutions number the heavy atoms among themselves
        xyz = model.xyz[heavy]
        rows, seen = [], set()
        for x0 in points:
            index, site = site_symmetry(np.asarray(x0, float), ops)
            if len(site) != 2:
                continue
            k = 1 if np.allclose(site.rot[0], np.eye(3)) else 0
            rot, t, op, kind = site.rot[k], site.tran[k], int(index[k]), _kind(site.rot[k])
            key = (tuple(np.round(rot.ravel()).astype(int)), tuple(np.round(t * 24).astype(int)))
            if key in seen:
                continue
            seen.add(key)
            pairings = _pairings(model.involutions, xyz, kind)
            if not len(model.torsions):  # nothing can turn it into that symmetry (Mg(H2O)6 from RDKit
                pairings = [p for p in pairings  # is no octahedron): no hold, the data place it
                            if min(superposition_misfit(c[heavy], p, kind) for c in model.conformers)
                            <= RIGID_MISFIT_A]
            for p in pairings[:limit]:
                rows.append((x0, np.linalg.inv(rot), t, op, p))
        if not rows:
            return None
        full = np.tile(np.arange(model.n_atoms), (len(rows), 1))
        full[:, heavy] = heavy[np.array([r[4] for r in rows])]
        kw = dict(dtype=torch.float32, device=device)
        ride = np.where(model.parent >= 0, model.parent, np.arange(model.n_atoms))
        return Symmetrised(np.array([r[0] for r in rows]), torch.tensor(np.array([r[1] for r in rows]), **kw),
                           torch.tensor(np.array([r[2] for r in rows]), **kw),
                           torch.tensor([r[3] for r in rows], device=device), torch.tensor(full, device=device),
                           torch.tensor(ride, device=device), torch.tensor(heavy, device=device))

    def apply(self, x, start, orth):
        """(x held in the symmetry (B,n,3) fractional, how far its heavy atoms moved Σ|Δ|²
        (B,) Å²) for a molecule x (B,n,3) fractional and each particle's start (B,)."""
        import torch
        pair = self.pairing[start]                                                # (B,n)
        partner = torch.gather(x, 1, pair[..., None].expand(-1, -1, 3))
        image = torch.einsum("bij,bnj->bni", self.inverse[start], partner - self.tran[start][:, None])
        delta = 0.5 * (image - x)[:, self.ride]                                   # H ride on their parents
        moved = (delta[:, self.heavy] @ orth.T).square().sum((1, 2))
        return x + delta, moved


def _kind(rot: np.ndarray) -> str:
    """'inversion', 'rotation' (a 2-fold axis) or 'mirror' for the rotation part of an
    operation of order 2."""
    if np.allclose(rot, -np.eye(3)):
        return "inversion"
    return "rotation" if np.linalg.det(rot) > 0 else "mirror"


def _pairings(candidates: np.ndarray, xyz: np.ndarray, kind: str) -> list[np.ndarray]:
    """The pairings an element of this kind can realise: every atom onto itself (a single
    atom, a linear molecule on a 2-fold axis, a planar one in a mirror) and the
    involutions (P,n), the conformer's heavy atoms xyz (n,3) Å closest to that symmetry
    first. The atoms a pairing fixes lie on the element: no more than one on an inversion
    centre, on a line on an axis, in a plane in a mirror."""
    out = []
    for p in [np.arange(len(xyz)), *candidates]:
        fixed = xyz[p == np.arange(len(p))]
        if kind == "inversion" and len(fixed) > 1:
            continue
        if kind == "rotation" and len(fixed) > 2 and _spread(fixed, 1) > SPREAD_A:
            continue
        if kind == "mirror" and len(fixed) > 3 and _spread(fixed, 2) > SPREAD_A:
            continue
        out.append(p)
    return sorted(out, key=lambda p: superposition_misfit(xyz, p, kind))


def _spread(x: np.ndarray, dims: int) -> float:
    """RMS distance Å of points x (m,3) from their best line (dims=1) or plane (dims=2)."""
    s = np.linalg.svd(x - x.mean(0), compute_uv=False)
    return float(np.sqrt((s[dims:] ** 2).sum() / len(x)))
