"""Fourier maps and peak search on a periodic grid, batched in torch (CPU or CUDA).

    rho(x) = sum_h F(h) exp(-2 pi i h.x)          (unnormalised; 1/V dropped)

A map is built from coefficients of the unique reflections only: `FourierGrid` expands
them to the whole sphere with the space-group operations,

    F(h R) = F(h) exp(-2 pi i h.t)      for every operation x -> R x + t,

and with Friedel's law F(-h) = conj F(h), then one real inverse FFT gives the map on an
(n1, n2, n3) grid. Grid sizes have only the prime factors 2, 3 and 5, a spacing of about
d_min/3 and room for every index (n > 2 |h|max). `find_peaks` finds local maxima of the
periodic map (3x3x3 neighbourhood), refines each by a parabola through its neighbours
along each axis, and optionally keeps one peak per set of symmetry images (`merge_images`).

Everything carries a leading batch dimension B (one map per candidate structure).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import gemmi
import numpy as np
import torch

from xdxd.crystal.symmetry import SymOps, apply_ops


def good_fft_size(n_min: int, factor: int = 1) -> int:
    """Smallest n >= n_min that is a multiple of `factor` with prime factors 2, 3, 5 only."""
    n = max(1, int(n_min))
    while True:
        if n % factor == 0:
            m = n
            for p in (2, 3, 5):
                while m % p == 0:
                    m //= p
            if m == 1:
                return n
        n += 1


def grid_shape(cell: gemmi.UnitCell, hkl: np.ndarray, d_min_A: float | None = None,
               spacing: float = 1 / 3, ops: SymOps | None = None) -> tuple[int, int, int]:
    """FFT grid (n1, n2, n3) with a spacing of about spacing * d_min Å along each axis.

    Each n is even, has no prime factor above 5, exceeds 2 |h_i|max, and (when `ops`
    is given) is a multiple of the denominators of the operations' translations, so
    symmetry images of grid points are grid points.
    """
    hkl = np.asarray(hkl)
    if d_min_A is None:
        from xdxd.crystal.structure_factors import inverse_d2
        d_min_A = 1.0 / math.sqrt(float(inverse_d2(cell, hkl).max()))
    lengths = (cell.a, cell.b, cell.c)
    shape = []
    for i in range(3):
        factor = 2
        if ops is not None:
            for t in ops.tran[:, i]:
                for den in (2, 3, 4, 6, 8):
                    if abs(t * den - round(t * den)) < 1e-6:
                        factor = math.lcm(factor, den)
                        break
        n_min = max(math.ceil(lengths[i] / (spacing * d_min_A)), 2 * int(np.abs(hkl[:, i]).max()) + 1)
        shape.append(good_fft_size(n_min, factor))
    return tuple(shape)


class FourierGrid:
    """Map synthesis for one set of unique reflections: built once, used for many maps.

    hkl (M,3) unique reflections; the expansion by symmetry and Friedel's law is done
    once here as index arrays, so `map(coef)` is one scatter and one FFT per batch.
    """

    def __init__(self, cell: gemmi.UnitCell, ops: SymOps, hkl: np.ndarray,
                 shape: tuple[int, int, int] | None = None, d_min_A: float | None = None,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        hkl = np.asarray(hkl, dtype=np.int64).reshape(-1, 3)
        self.cell = cell
        self.ops = ops
        self.device = torch.device(device)
        self.dtype = dtype
        self.shape = tuple(shape) if shape else grid_shape(cell, hkl, d_min_A, ops=ops)
        n = np.array(self.shape)
        # every image h R of every unique h, and its Friedel mate -h R
        rot = np.rint(ops.rot).astype(np.int64)
        hR = np.einsum("mi,oij->omj", hkl, rot)                 # (O,M,3)
        shift = -np.einsum("mi,oi->om", hkl, ops.tran)           # (O,M) cycles, F(hR) = F(h) e^{2 pi i shift}
        src = np.broadcast_to(np.arange(len(hkl)), shift.shape)  # (O,M) which unique reflection
        hR = np.concatenate([hR, -hR]).reshape(-1, 3)            # (2OM,3)
        shift = np.concatenate([shift, -shift]).ravel()          # Friedel: conj -> negate the phase
        conj = np.concatenate([np.zeros_like(src), np.ones_like(src)]).ravel().astype(bool)
        src = np.concatenate([src, src]).ravel()
        # irfftn wants the half spectrum G(h) = conj F(h) for 0 <= h3 <= n3/2; as the map
        # rho(x) = sum_h F(h) e^{-2 pi i h.x} = sum_h conj F(h) e^{+2 pi i h.x} (rho real)
        idx = np.mod(hR, n)
        keep = idx[:, 2] <= n[2] // 2
        idx, shift, conj, src = idx[keep], shift[keep], conj[keep], src[keep]
        # one entry per grid point (images of special reflections coincide)
        flat = (idx[:, 0] * n[1] + idx[:, 1]) * (n[2] // 2 + 1) + idx[:, 2]
        flat, first = np.unique(flat, return_index=True)
        kw = dict(device=self.device)
        self._flat = torch.tensor(flat, **kw)                               # (K,)
        self._src = torch.tensor(src[first], **kw)                          # (K,)
        self._conj = torch.tensor(conj[first], **kw)                        # (K,) bool
        ph = 2 * math.pi * shift[first]
        self._phase = torch.tensor(np.cos(ph) + 1j * np.sin(ph), dtype=torch.complex64
                                   if dtype == torch.float32 else torch.complex128, **kw)  # (K,)
        self._half = (int(n[0]), int(n[1]), int(n[2]) // 2 + 1)
        self.asu_mask = asu_brick_mask(ops, self.shape, self.device)       # (n1,n2,n3) bool

    def map(self, coef: torch.Tensor) -> torch.Tensor:
        """Map (B, n1, n2, n3) from complex coefficients of the unique reflections (B, M)."""
        B = coef.shape[0]
        g = coef[:, self._src]                                              # (B,K) F(h)
        g = torch.where(self._conj, g.conj(), g) * self._phase              # F at h R or -h R
        spec = torch.zeros(B, math.prod(self._half), dtype=g.dtype, device=g.device)
        spec[:, self._flat] = g.conj()                                      # G = conj F
        spec = spec.view(B, *self._half)
        return torch.fft.irfftn(spec, s=self.shape, dim=(1, 2, 3), norm="forward")

    def grid_to_frac(self, idx: torch.Tensor) -> torch.Tensor:
        """Grid indices (..., 3) -> fractional coordinates (..., 3)."""
        return idx / torch.tensor(self.shape, dtype=self.dtype, device=idx.device)


@dataclass
class Peaks:
    """Peaks of a batch of maps, highest first: frac (B,K,3), height (B,K).

    Missing peaks (fewer maxima than asked for) have height -inf.
    """
    frac: torch.Tensor
    height: torch.Tensor


def asu_brick_mask(ops: SymOps, shape: tuple[int, int, int],
                   device: str | torch.device = "cpu") -> torch.Tensor:
    """Grid points (n1,n2,n3) bool inside gemmi's asymmetric-unit brick, one step of margin.

    Every point of the cell has a symmetry image in the brick, so a peak search may look
    there only. Checked on random points; if the check fails the whole cell is used.
    """
    full = torch.ones(shape, dtype=torch.bool, device=device)
    try:
        sg = gemmi.find_spacegroup_by_ops(gemmi.symops_from_hall(ops.hall))
        upper = np.array(gemmi.find_asu_brick(sg).size) / 24.0             # (3,) fraction of the cell
    except (RuntimeError, ValueError, AttributeError):
        return full
    rng = np.random.default_rng(0)
    pts = rng.random((2000, 3))
    images = apply_ops(pts, ops)                                            # (n,O,3)
    inside = np.all(images <= upper + 1e-9, axis=-1).any(axis=1)
    if not inside.all():
        return full
    masks = []
    for n, u in zip(shape, upper):
        i = np.arange(n)
        masks.append(torch.tensor((i <= np.floor(u * n + 1e-9) + 1) | (i >= n - 1), device=device))
    return masks[0][:, None, None] & masks[1][None, :, None] & masks[2][None, None, :]


def find_peaks(rho: torch.Tensor, k: int, interpolate: bool = True,
               mask: torch.Tensor | None = None) -> Peaks:
    """The k highest local maxima of periodic maps rho (B, n1, n2, n3).

    A maximum is a grid point not lower than its 26 neighbours (periodic); `mask`
    (n1,n2,n3) bool limits the search to part of the grid (e.g. `FourierGrid.asu_mask`). With
    `interpolate`, each position and height comes from a parabola through the point
    and its two neighbours along each axis (shift clamped to half a grid step).
    """
    B = rho.shape[0]
    shape = rho.shape[1:]
    n = torch.tensor(shape, device=rho.device)
    local_max = rho                                                         # (B,n1,n2,n3)
    for dim in (1, 2, 3):  # separable periodic 3x3x3 maximum
        local_max = torch.maximum(local_max, torch.maximum(local_max.roll(1, dim), local_max.roll(-1, dim)))
    is_max = rho >= local_max
    if mask is not None:
        is_max = is_max & mask
    score = torch.where(is_max, rho, torch.full_like(rho, -math.inf)).view(B, -1)
    k = min(k, score.shape[1])
    height, flat = torch.topk(score, k, dim=1)                              # (B,k)
    i1 = flat // (shape[1] * shape[2])
    i2 = (flat // shape[2]) % shape[1]
    i3 = flat % shape[2]
    idx = torch.stack([i1, i2, i3], dim=-1)                                 # (B,k,3)
    pos = idx.to(rho.dtype)
    if interpolate:
        # parabola f0 + b x + c x²/2 through (-1, f_dn), (0, f0), (+1, f_up) on each axis:
        # vertex at x* = -b/c, height f0 + b x*/2
        flat_rho = rho.view(B, -1)
        finite = torch.isfinite(height)
        gain = torch.zeros_like(height)
        for axis in range(3):
            step = torch.zeros(3, dtype=idx.dtype, device=idx.device)
            step[axis] = 1
            f_up = flat_rho.gather(1, _ravel(torch.remainder(idx + step, n), shape))  # (B,k)
            f_dn = flat_rho.gather(1, _ravel(torch.remainder(idx - step, n), shape))
            b = 0.5 * (f_up - f_dn)
            c = f_up + f_dn - 2 * torch.where(finite, height, torch.zeros_like(height))
            x = torch.where(c < 0, -b / c.clamp(max=-1e-12), torch.zeros_like(c)).clamp(-0.5, 0.5)
            pos[..., axis] += x
            gain += 0.5 * b * x
        height = torch.where(finite, height + gain, height)
    frac = torch.remainder(pos / n.to(rho.dtype), 1.0)
    return Peaks(frac, height)


def _ravel(idx: torch.Tensor, shape) -> torch.Tensor:
    return (idx[..., 0] * shape[1] + idx[..., 1]) * shape[2] + idx[..., 2]


def image_distances(frac: torch.Tensor, ops: SymOps, orth: torch.Tensor) -> torch.Tensor:
    """Shortest distance in Å from each point to every symmetry image of every point.

    frac (B,K,3) -> (B,K,K): d[b,i,j] = min over operations and lattice translations of
    |x_i - (R x_j + t)|. The diagonal is the distance of a point to its own nearest
    image other than itself under the identity (0 for the identity, so use
    `symmetry.stabilizer_order_torch` for special positions).
    """
    rot = torch.as_tensor(ops.rot, dtype=frac.dtype, device=frac.device)    # (O,3,3)
    tran = torch.as_tensor(ops.tran, dtype=frac.dtype, device=frac.device)  # (O,3)
    best = None
    for o in range(rot.shape[0]):
        img = frac @ rot[o].T + tran[o]                                     # (B,K,3)
        d = frac[:, :, None, :] - img[:, None, :, :]                        # (B,K,K,3)
        d = d - torch.round(d)
        dist = torch.linalg.vector_norm(d @ orth.T, dim=-1)                 # (B,K,K) Å
        best = dist if best is None else torch.minimum(best, dist)
    return best


def merge_images(peaks: Peaks, ops: SymOps, cell: gemmi.UnitCell, tol_A: float = 0.5) -> Peaks:
    """Keep the highest peak of each set of symmetry images (within tol_A Å); highest first.

    A peak is dropped when any higher peak, or one of its images, lies within tol_A Å.
    Dropped peaks move to the end with height -inf; the output has the input's size.
    """
    orth = torch.tensor(np.array(cell.orth.mat), dtype=peaks.frac.dtype, device=peaks.frac.device)
    d = image_distances(peaks.frac, ops, orth)                              # (B,K,K)
    K = d.shape[1]
    higher = torch.ones(K, K, dtype=torch.bool, device=d.device).tril(-1)   # j < i
    dup = ((d < tol_A) & higher & torch.isfinite(peaks.height)[:, None, :]).any(-1)
    height = torch.where(dup, torch.full_like(peaks.height, -math.inf), peaks.height)
    height, order = torch.sort(height, dim=1, descending=True, stable=True)
    frac = peaks.frac.gather(1, order[..., None].expand(-1, -1, 3))
    return Peaks(frac, height)
