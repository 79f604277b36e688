"""Space groups: the one place that turns a record's space group into symmetry operations.

Operations come from gemmi (every symmetry operation combined with every centring
vector). Conventions: fractional coordinates, an operation maps x -> R x + t.

Every symmetry expansion of positions goes through `apply_ops` (numpy) or
`apply_ops_torch` (torch, batched), and every stabilizer order through `stabilizer_order`
(numpy) or `stabilizer_order_torch`.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache

import gemmi
import numpy as np
import torch


class SpaceGroupError(ValueError):
    pass


def find_spacegroup(text: str | int | None = None, hall: str | None = None,
                    number: int | None = None) -> gemmi.SpaceGroup:
    """Look up a space group by Hall symbol, H-M symbol (any gemmi spelling) or IT number."""
    sg = None
    if hall:
        try:
            sg = gemmi.find_spacegroup_by_ops(gemmi.symops_from_hall(hall))
        except (RuntimeError, ValueError):
            sg = None
    if sg is None and text not in (None, ""):
        s = str(text).strip()
        if s.isdigit():
            number = number or int(s)
        else:
            sg = gemmi.find_spacegroup_by_name(s)
            if sg is None:
                try:  # e.g. "-P 2ybc" given as a name
                    sg = gemmi.find_spacegroup_by_ops(gemmi.symops_from_hall(s))
                except (RuntimeError, ValueError):
                    sg = None
    if sg is None and number:
        sg = gemmi.find_spacegroup_by_number(int(number))
    if sg is None:
        raise SpaceGroupError(f"unknown space group {text or hall or number!r}")
    return sg


def spacegroup_from_record(sg: dict) -> gemmi.SpaceGroup:
    """Record field {"hall", "hm", "number"} -> gemmi.SpaceGroup (Hall wins)."""
    if not isinstance(sg, dict):
        return find_spacegroup(sg)
    return find_spacegroup(sg.get("hm"), hall=sg.get("hall"), number=sg.get("number"))


def spacegroup_to_record(sg: gemmi.SpaceGroup) -> dict:
    return {"hall": sg.hall, "hm": sg.xhm(), "number": sg.number}


@dataclass(frozen=True)
class SymOps:
    """All operations of a space group, centring included: x' = rot @ x + tran.

    rot: (O,3,3) float, tran: (O,3) float in [0,1).
    """
    rot: np.ndarray
    tran: np.ndarray
    centrosymmetric: bool
    sohncke: bool
    hall: str

    def __len__(self) -> int:
        return len(self.rot)

    def take(self, idx, shift: np.ndarray | None = None) -> "SymOps":
        """The operations idx (K,), each translation plus a lattice shift (K,3) if given."""
        tran = self.tran[idx] if shift is None else self.tran[idx] + shift
        return SymOps(self.rot[idx], tran, self.centrosymmetric, self.sohncke, self.hall)


# the 27 lattice translations around a cell, (27,3) fractional; (0,0,0) is row 13
NEIGHBOUR_CELLS = np.array([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)],
                           dtype=float)


@lru_cache(maxsize=512)
def _symops_cached(hall: str) -> SymOps:
    sg = gemmi.find_spacegroup_by_ops(gemmi.symops_from_hall(hall))
    mats = np.array([op.float_seitz() for op in sg.operations()])
    return SymOps(mats[:, :3, :3].copy(), np.mod(mats[:, :3, 3], 1.0), sg.is_centrosymmetric(),
                  sg.is_sohncke(), sg.hall)


def symops(sg: gemmi.SpaceGroup) -> SymOps:
    return _symops_cached(sg.hall)


def apply_ops(frac: np.ndarray, ops: SymOps, wrap: bool = True) -> np.ndarray:
    """All images R x + t of fractional positions (N,3) -> (N,O,3), wrapped into [0,1)
    unless wrap=False."""
    images = np.einsum("oij,nj->noi", ops.rot, frac) + ops.tran[None]
    return np.mod(images, 1.0) if wrap else images


def apply_ops_torch(frac: torch.Tensor, rot: torch.Tensor, tran: torch.Tensor,
                    wrap: bool = False) -> torch.Tensor:
    """All images R x + t of fractional positions frac (...,3) under the operations
    rot (O,3,3), tran (O,3) -> (...,O,3), wrapped into [0,1) if wrap (torch, batched)."""
    images = torch.einsum("oij,...j->...oi", rot, frac) + tran
    return torch.remainder(images, 1.0) if wrap else images


def systematically_absent(hkl: np.ndarray, sg: gemmi.SpaceGroup) -> np.ndarray:
    """Boolean (M,) mask of the reflections hkl (M,3) the space group extinguishes."""
    if len(hkl) == 0:
        return np.zeros(0, dtype=bool)
    return np.asarray(sg.operations().systematic_absences(np.asarray(hkl, dtype=np.int32)), dtype=bool)


def frac_distance(a: np.ndarray, b: np.ndarray, cell: gemmi.UnitCell) -> np.ndarray:
    """Shortest distance in Å between fractional points a (...,3) and b (...,3), periodic."""
    d = a - b
    d -= np.round(d)
    orth = np.array(cell.orth.mat)
    return np.linalg.norm(d @ orth.T, axis=-1)


def stabilizer(frac_xyz: np.ndarray, ops: SymOps, cell: gemmi.UnitCell, tol: float = 0.1) -> np.ndarray:
    """Indices of the operations that map one site onto itself (within tol Å)."""
    images = apply_ops(frac_xyz[None], ops)[0]  # (O,3)
    return np.nonzero(frac_distance(images, frac_xyz[None], cell) < tol)[0]


def site_symmetry(point: np.ndarray, ops: SymOps) -> tuple[np.ndarray, SymOps]:
    """(their indices in ops (k,), the operations) that map a fractional point (3,) exactly
    onto itself (1e-6), each translation shifted by the lattice vector that makes
    R p + t = p (not wrapped)."""
    images = apply_ops(point[None], ops, wrap=False)[0]                    # (O,3)
    shift = np.round(point - images)
    fixed = np.nonzero(np.all(np.abs(images + shift - point) < 1e-6, axis=-1))[0]
    return fixed, ops.take(fixed, shift[fixed])


def stabilizer_order(frac: np.ndarray, ops: SymOps, cell: gemmi.UnitCell,
                     tol: float = 0.1) -> np.ndarray:
    """Order of each site's stabilizer (N,) float: 1 for a general position, 2 on a 2-fold
    axis, ...; the operations mapping a site within tol Å of itself."""
    return np.array([len(stabilizer(x, ops, cell, tol)) for x in frac], dtype=float)


def onto_site_torch(frac: torch.Tensor, order: torch.Tensor, rot: torch.Tensor,
                    tran: torch.Tensor, orth: torch.Tensor) -> torch.Tensor:
    """Points frac (…,3) moved to the mean of their order (…,) nearest symmetry images
    (themselves included): onto the nearest site of that stabilizer order. Fractional;
    rot (O,3,3), tran (O,3) the operations, orth (3,3) frac -> Å."""
    d = apply_ops_torch(frac, rot, tran, wrap=True) - frac[..., None, :]  # (…,O,3)
    d = d - torch.round(d)  # fractional, nearest image
    dist = (d @ orth.T).norm(dim=-1)  # (…,O) Å
    rank = torch.argsort(torch.argsort(dist, dim=-1), dim=-1)  # 0 = itself
    pick = (rank < order[..., None]).to(frac.dtype)
    shift = (pick[..., None] * d).sum(-2) / order[..., None].to(frac.dtype)
    return torch.remainder(frac + shift, 1.0)


def stabilizer_order_torch(frac: torch.Tensor, rot: torch.Tensor, tran: torch.Tensor,
                           orth: torch.Tensor, tol_A: float) -> torch.Tensor:
    """`stabilizer_order` in torch: the operations rot (O,3,3), tran (O,3) that map each
    point of frac (B,K,3) within tol_A Å of itself, (B,K) >= 1; orth (3,3) frac -> Å."""
    d = frac[:, :, None, :] - apply_ops_torch(frac, rot, tran)              # (B,K,O,3)
    d = d - torch.round(d)
    dist = torch.linalg.vector_norm(d @ orth.T, dim=-1)                     # (B,K,O)
    return (dist < tol_A).sum(-1)


def special_position_projector(frac_xyz: np.ndarray, ops: SymOps, cell: gemmi.UnitCell,
                               tol: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Constraint for a site on a special position: x = x0 + P @ dx keeps it there.

    Returns (x0, P): x0 is the site moved exactly onto the special position
    (average of its stabilizer images), P (3,3) the projector (mean of the stabilizer's R).
    """
    idx = stabilizer(frac_xyz, ops, cell, tol)
    images = apply_ops(frac_xyz[None], ops)[0][idx]
    d = images - frac_xyz
    d -= np.round(d)
    x0 = frac_xyz + d.mean(axis=0)
    P = ops.rot[idx].mean(axis=0)
    return x0, P


def unique_images(frac: np.ndarray, ops: SymOps, cell: gemmi.UnitCell,
                  tol: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Symmetry-expand sites into the unit cell, merging images closer than tol Å.

    Returns (positions (K,3) in [0,1), site index (K,) of the asymmetric-unit atom).
    """
    out, owner = [], []
    for i, images in enumerate(apply_ops(frac, ops)):
        kept: list[np.ndarray] = []
        for p in images:
            if not kept or frac_distance(np.array(kept), p[None], cell).min() >= tol:
                kept.append(p)
        out.extend(kept)
        owner.extend([i] * len(kept))
    return np.mod(np.array(out).reshape(-1, 3), 1.0), np.array(owner, dtype=int)


def origin_shifts(ops: SymOps, grid: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Origin shifts s that leave every |F| unchanged for this space group.

    Returns (discrete shifts (S,3) on a 1/grid lattice, polar axes (P,3)): a shift s is
    allowed when (R - I) s is a lattice or centring translation for every R; a polar axis
    is a direction v with (R - I) v = 0 for all R (a continuous shift).
    """
    cen = [t for r, t in zip(ops.rot, ops.tran) if np.allclose(r, np.eye(3))]
    cen = np.array(cen)  # (C,3), includes 0
    steps = np.arange(grid) / grid
    shifts = []
    for s in itertools.product(steps, repeat=3):
        s = np.array(s)
        ok = True
        for r in ops.rot:
            d = (r - np.eye(3)) @ s
            diff = d[None] - cen
            if not np.any(np.all(np.abs(diff - np.round(diff)) < 1e-6, axis=1)):
                ok = False
                break
        if ok:
            shifts.append(s)
    # polar directions: common null space of all (R - I)
    stack = np.concatenate([r - np.eye(3) for r in ops.rot], axis=0)
    _, sv, vt = np.linalg.svd(stack)
    polar = vt[np.sum(sv > 1e-8):]
    return np.array(shifts), polar


def spglib_number(cell: gemmi.UnitCell, frac: np.ndarray, numbers: np.ndarray,
                  symprec: float = 1e-3) -> int | None:
    """International number spglib finds for a P1 list of atoms (a check, not a source)."""
    import spglib
    lattice = np.array(cell.orth.mat).T  # rows are a, b, c in Å
    ds = spglib.get_symmetry_dataset((lattice, frac, numbers), symprec=symprec)
    return None if ds is None else int(ds.number)


def make_cell(cell: list[float] | tuple) -> gemmi.UnitCell:
    return gemmi.UnitCell(*[float(v) for v in cell])


@lru_cache(maxsize=256)
def _stabilizer_orders(hall: str) -> tuple[int, ...]:
    pts, fixed = _grid_stabilizers(hall)
    return tuple(sorted(set(int(k) for k in fixed.sum(-1) if k > 1)))


@lru_cache(maxsize=64)
def _grid_stabilizers(hall: str) -> tuple[np.ndarray, np.ndarray]:
    """Points (P,3) of a 1/24 grid of the cell (every special position has coordinates in
    1/24ths) and which operations (P,O) bool map each onto itself."""
    ops = symops(gemmi.find_spacegroup_by_ops(gemmi.symops_from_hall(hall)))
    g = np.arange(24) / 24.0
    pts = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    d = apply_ops(pts, ops, wrap=False) - pts[:, None]
    return pts, np.all(np.abs(d - np.round(d)) < 1e-6, axis=-1)


def special_sites(ops: SymOps, order: int) -> np.ndarray:
    """The special positions of one stabilizer order: points (S,3) fractional, one per set
    of symmetry-equivalent points of a 1/24 grid."""
    pts, fixed = _grid_stabilizers(ops.hall)
    rows = np.nonzero(fixed.sum(-1) == order)[0]
    seen: set[tuple] = set()
    keep = []
    for i in rows:
        key = tuple(np.round(pts[i] * 24).astype(int) % 24)
        if key in seen:
            continue
        keep.append(i)
        for img in apply_ops(pts[i][None], ops)[0]:  # its symmetry equivalents are the same site
            seen.add(tuple(np.round(img * 24).astype(int) % 24))
    return pts[keep].reshape(-1, 3)


def stabilizer_orders(ops: SymOps) -> tuple[int, ...]:
    """The orders > 1 that a site's stabilizer can have in this space group (its special
    Wyckoff positions), found on a 1/24 grid of the cell."""
    return _stabilizer_orders(ops.hall)


def site_orders(sites: dict[str, int], cell_contents: dict[str, float], ops: SymOps
                ) -> dict[str, list[int]]:
    """Stabilizer orders of the asymmetric-unit sites that fit the cell contents.

    sites: sites per asymmetric unit by element (a site on a special position counts
    once); cell_contents: atoms per unit cell by element. A site of order k gives
    len(ops)/k atoms in the cell, so for each element the orders k_i must satisfy
    sum_i len(ops)/k_i = cell count, each k_i a stabilizer order of the group. Of the
    possible choices the one with the lowest highest order, then the fewest special
    sites, then the lowest orders, is returned, as {element: [k, ...]} sorted with the
    general sites (k = 1) last. Raises ValueError when no choice fits.
    """
    O = len(ops)
    divisors = list(stabilizer_orders(ops))
    out: dict[str, list[int]] = {}
    for e, n in sites.items():
        n = int(n)
        target = float(cell_contents.get(e, n * O))
        best = None
        # m special sites with orders from `divisors`, the other n - m general
        for m in range(0, n + 1):
            for combo in itertools.combinations_with_replacement(divisors, m):
                count = (n - m) * O + sum(O / k for k in combo)
                if abs(count - target) < 1e-6:
                    key = (max(combo, default=1), m, sorted(combo))
                    if best is None or key < best:
                        best = key
        if best is None:
            raise ValueError(f"{n} {e} site(s) per asymmetric unit cannot give {target:g} "
                             f"{e} in the cell with {O} symmetry operations")
        out[e] = sorted(best[2], reverse=True) + [1] * (n - best[1])
    return out
