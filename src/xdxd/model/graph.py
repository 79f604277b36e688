"""The graph the denoiser runs on: the symmetry-expanded cell as k nearest neighbours.

Every image of every asymmetric-unit atom (all space-group operations) is a node; its
edges go to the k nearest images (periodic, the 27 neighbouring cells searched), and
each edge carries its Cartesian vector and the Patterson function read at it (one
channel per blur in PATTERSON_BLURS: the interatomic vectors the data say exist).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from xdxd.crystal.symmetry import NEIGHBOUR_CELLS, apply_ops_torch

PATTERSON_BLURS = (0.0, 20.0)  # Å²: one sharp and one smoothed Patterson channel


def interpolate_periodic(grid: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Trilinear, periodic read of grid (C,n1,n2,n3) at fractional points u (...,3) -> (...,C)."""
    C, n1, n2, n3 = grid.shape
    n = torch.tensor([n1, n2, n3], device=u.device, dtype=u.dtype)
    p = torch.remainder(u, 1.0) * n  # (...,3) grid units
    i0 = torch.floor(p)
    f = p - i0
    i0 = i0.long()
    flat = grid.reshape(C, -1)
    out = 0.0
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                ix = (i0[..., 0] + dx) % n1
                iy = (i0[..., 1] + dy) % n2
                iz = (i0[..., 2] + dz) % n3
                w = ((f[..., 0] if dx else 1 - f[..., 0]) * (f[..., 1] if dy else 1 - f[..., 1])
                     * (f[..., 2] if dz else 1 - f[..., 2]))
                val = flat[:, (ix * n2 + iy) * n3 + iz]  # (C,...)
                out = out + w.unsqueeze(-1) * val.movedim(0, -1)
    return out


@dataclass
class Graph:
    """The symmetry-expanded cell as a k-nearest-neighbour graph, K = N*O images.

    z (K,) atomic numbers; op (K,) operation index of each image (atom-major order);
    vec (B,K,k,3) Cartesian Å from image i to neighbour j (minimum image);
    dist (B,K,k) Å; nbr (B,K,k) neighbour index; patterson (B,K,k,C) at the edge vectors;
    cutoff (B,K) Å the distance of the (k+1)-th nearest image, where edge weights reach
    zero (so which of two equidistant images is the k-th never matters).
    """
    z: torch.Tensor
    op: torch.Tensor
    vec: torch.Tensor
    dist: torch.Tensor
    nbr: torch.Tensor
    patterson: torch.Tensor
    cutoff: torch.Tensor


def build_graph(problem, frac: torch.Tensor, knn: int) -> Graph:
    """Graph over all images of frac (B,N,3); edges to the knn nearest images (periodic).

    Candidates per pair of images: the fractional minimum image plus its 26 neighbouring
    lattice translations, so skewed cells, short axes and exact ties (dy = ±1/2 across a
    2_1 axis) are all seen; the nearest knn of them become edges.
    """
    B, N, _ = frac.shape
    O = problem.n_ops
    K = N * O
    img = apply_ops_torch(frac, problem.rot, problem.tran, wrap=True).reshape(B, K, 3)  # (B,K,3)
    cells = torch.tensor(NEIGHBOUR_CELLS, dtype=torch.float32, device=frac.device)  # (27,3)
    C = len(cells)
    k = min(knn, C * K - 2)
    self_edge = torch.zeros(K, K, C, device=frac.device)
    self_edge[torch.arange(K), torch.arange(K), C // 2] = 1e6  # no edge from an image to itself
    self_edge = self_edge.reshape(K, C * K)
    chunk = max(1, 8_000_000 // (K * K * C))  # bound memory: b*K*K*27 floats
    vecs, dists, nbrs, dfracs, cutoffs = [], [], [], [], []
    lat = cells @ problem.orth.T  # (27,3) Å lattice translations
    lat2 = (lat ** 2).sum(-1)  # (27,)
    for b0 in range(0, B, chunk):
        x = img[b0:b0 + chunk]
        d = x[:, None, :, :] - x[:, :, None, :]  # (b,K,K,3) frac, j - i
        d = d - torch.round(d)
        c = d @ problem.orth.T  # (b,K,K,3) Å, minimum image in fractional terms
        # |c + L n|² for the 27 translations n: (b,K,K,27), no (…,27,3) tensor needed
        dist2 = (c ** 2).sum(-1, keepdim=True) + 2 * c @ lat.T + lat2
        dist = dist2.clamp_min(0).sqrt().reshape(len(x), K, K * C) + self_edge
        dist_k, cand = torch.topk(dist, k + 1, dim=-1, largest=False)  # (b,K,k+1)
        cutoffs.append(dist_k[..., k])  # the (k+1)-th distance: edges fade out there
        dist_k, cand = dist_k[..., :k], cand[..., :k]
        j = torch.div(cand, C, rounding_mode="floor")  # (b,K,k) neighbour image
        n = cand % C  # (b,K,k) lattice translation
        idx = j.unsqueeze(-1).expand(-1, -1, -1, 3)
        vecs.append(torch.gather(c, 2, idx) + lat[n])
        dfracs.append(torch.gather(d, 2, idx) + cells[n])
        dists.append(dist_k)
        nbrs.append(j)
    dfrac = torch.cat(dfracs)  # (B,K,k,3)
    patt = interpolate_periodic(problem.patterson, dfrac)  # (B,K,k,C)
    z = problem.z.repeat_interleave(O)  # (K,)
    op = torch.arange(O, device=frac.device).repeat(N)  # (K,)
    return Graph(z=z, op=op, vec=torch.cat(vecs), dist=torch.cat(dists), nbr=torch.cat(nbrs),
                 patterson=patt, cutoff=torch.cat(cutoffs))
