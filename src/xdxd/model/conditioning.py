"""What the denoiser sees of a diffraction problem, built so that |F| ambiguities vanish.

Three origin-free views of the data (none of them changes under an allowed origin shift,
and none carries an absolute position):

- the Patterson function P(u) = sum_h (|E_h|² - 1) cos(2 pi h.u) on a grid (FFT), read at
  the interatomic vectors u of the graph's edges (trilinear, periodic);
- the gradient of the amplitude misfit at the current atoms (it moves with the atoms:
  equivariant), with an extra blur B (Å²) on both |Fo| and |Fc|;
- tokens for an attention encoder over the reflections: reciprocal vector h* (Å⁻¹, from
  the cell metric), s = 1/d, |E|, sigma(|E|); reflections are expanded by the point group
  and Friedel's law so the token set has the crystal's symmetry.

`Problem` holds what is fixed for one problem (cell, operations, data, grids);
`build_graph` turns a batch of asymmetric-unit coordinates into the symmetry-expanded
graph the network runs on; `misfit_gradient` is the data term used both as a feature and
as the sampler's guidance. Every structure factor comes from crystal.structure_factors.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, fields, replace

import gemmi
import numpy as np
import torch

from xdxd.crystal import statistics
from xdxd.crystal.statistics import (epsilon_factors, expected_intensity, normalized_e, pearson,
                                     scale_factor, wilson_scale)
from xdxd.crystal.dataset import DataSet
from xdxd.crystal.structure_factors import StructureFactors, inverse_d2
from xdxd.crystal.symmetry import NEIGHBOUR_CELLS, SymOps, apply_ops_torch, find_spacegroup, symops
from xdxd.model.bonding import BondingTables, bonding_tables

EIGHT_PI2 = 8.0 * math.pi ** 2
PATTERSON_BLURS = (0.0, 20.0)  # Å²: one sharp and one smoothed Patterson channel
U_GRID_A2 = tuple(0.01 * i for i in range(13))  # overall Uiso fitted per candidate, 0-0.12 Å²


@dataclass
class Problem:
    """One crystal's fixed data, as tensors on one device.

    cell/ops: the crystal; elements (N,) the asymmetric-unit atoms to place (no H);
    orth (3,3) frac -> Cartesian Å, deorth (3,3) Cartesian -> frac;
    rot (O,3,3), tran (O,3) fractional operations; rot_cart (O,3,3) the same rotations
    in Cartesian (orthogonal matrices); F_obs (M,), s2 (M,) Å⁻², E (M,);
    patterson (C,n1,n2,n3) grid; tokens (T,7) reflection tokens; uiso Å² from Wilson
    (a first guess: every |Fc| is judged at the overall Uiso that fits it best, `fit_u`);
    site_weight (N,) 1/(stabilizer order) each atom is sampled with (1: general position,
    1/2 on a mirror or 2-fold axis, ...: `sites.site_orders`); bonding the per-atom tables
    of the bonding prior (model.bonding).
    """
    cell: gemmi.UnitCell
    ops: SymOps
    elements: list[str]
    z: torch.Tensor
    orth: torch.Tensor
    deorth: torch.Tensor
    rot: torch.Tensor
    tran: torch.Tensor
    rot_cart: torch.Tensor
    sf: StructureFactors
    type_idx: torch.Tensor
    F_obs: torch.Tensor
    s2: torch.Tensor
    E: torch.Tensor
    patterson: torch.Tensor
    tokens: torch.Tensor
    uiso: float
    site_weight: torch.Tensor
    bonding: BondingTables

    @property
    def n_atoms(self) -> int:
        return len(self.elements)

    @property
    def n_ops(self) -> int:
        return self.rot.shape[0]

    @property
    def device(self) -> torch.device:
        return self.F_obs.device

    def to(self, device: str | torch.device) -> "Problem":
        """The same problem with every tensor (its structure-factor tables too) on device."""
        device = torch.device(device)
        if device == self.device:
            return self
        sf = copy.copy(self.sf)
        sf.device = device
        for name in ("hkl", "s2", "f0", "hR", "ht"):
            setattr(sf, name, getattr(sf, name).to(device))
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self)
                 if isinstance(getattr(self, f.name), (torch.Tensor, BondingTables))}
        return replace(self, sf=sf, **moved)


def make_problem(data: DataSet, elements: list[str], hydrogens: float = 0,
                 device: str | torch.device = "cpu", max_tokens: int = 256,
                 generator: torch.Generator | None = None,
                 site_orders: list[int] | None = None) -> Problem:
    """Build a Problem from measured (or simulated) amplitudes.

    data: the reflections (those with |F| > 0 are used); elements: ASU non-H atoms to
    place; hydrogens: H atoms per ASU (for normalisation only). Tokens beyond max_tokens
    are subsampled with `generator`.
    site_orders (N,): the stabilizer order of each atom's site (default: all 1, general
    positions); an atom of order k is sampled with weight 1/k in every |Fc|.
    """
    data = data.nonzero()
    cell, sg, ops = data.cell, data.spacegroup, data.ops
    hkl, F, sigma = data.hkl, data.F, data.sigma
    orders = np.ones(len(elements)) if site_orders is None else np.asarray(site_orders, float)
    if len(orders) != len(elements) or np.any(orders < 1):
        raise ValueError(f"site_orders {list(orders)} do not fit {len(elements)} atoms")
    composition: dict[str, float] = {}
    for e, k in zip(elements, orders):
        composition[e] = composition.get(e, 0) + 1.0 / k
    E = normalized_e(F, hkl, cell, sg, composition, hydrogens)
    sig_E = E * sigma / np.maximum(F, 1e-9)
    s2 = inverse_d2(cell, hkl)
    # overall isotropic U from the Wilson plot, used for |Fc| while sampling
    sum_f2 = expected_intensity(cell, ops, hkl, composition, hydrogens)
    _, B = wilson_scale(F, s2, sum_f2, epsilon_factors(sg, hkl))
    uiso = float(np.clip(B / EIGHT_PI2, 0.02, 0.08))

    kw = dict(device=device, dtype=torch.float32)
    orth = np.array(cell.orth.mat, dtype=float)
    deorth = np.array(cell.frac.mat, dtype=float)
    rot_cart = np.einsum("ij,ojk,kl->oil", orth, ops.rot, deorth)
    types = sorted(set(elements))
    sf = StructureFactors(cell, ops, hkl, types, device=device)
    return Problem(
        cell=cell, ops=ops, elements=list(elements),
        z=torch.tensor([gemmi.Element(e).atomic_number for e in elements], device=device),
        orth=torch.tensor(orth, **kw), deorth=torch.tensor(deorth, **kw),
        rot=torch.tensor(ops.rot, **kw), tran=torch.tensor(ops.tran, **kw),
        rot_cart=torch.tensor(rot_cart, **kw), sf=sf, type_idx=sf.type_index(list(elements)),
        F_obs=torch.tensor(F, **kw), s2=torch.tensor(s2, **kw), E=torch.tensor(E, **kw),
        patterson=torch.tensor(patterson_grid(cell, ops, hkl, E), **kw),
        tokens=reflection_tokens(cell, ops, hkl, E, sig_E, max_tokens, generator).to(device),
        uiso=uiso, site_weight=torch.tensor(1.0 / orders, **kw),
        bonding=bonding_tables(list(elements), device))


def expand_reflections(ops: SymOps, hkl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All symmetry equivalents of unique reflections, Friedel mates included.

    Returns (hkl (K,3) int, index (K,) of the unique reflection each came from).
    """
    rots = np.unique(np.round(ops.rot).astype(np.int64), axis=0)  # point-group part
    eq = np.einsum("mi,oij->omj", hkl, rots)  # h R
    eq = np.concatenate([eq, -eq], axis=0)  # (2O,M,3)
    idx = np.broadcast_to(np.arange(len(hkl))[None], eq.shape[:2])
    flat = eq.reshape(-1, 3)
    _, first = np.unique(flat, axis=0, return_index=True)
    return flat[first], idx.reshape(-1)[first]


def patterson_grid(cell: gemmi.UnitCell, ops: SymOps, hkl: np.ndarray, E: np.ndarray,
                   spacing_A: float = 0.4) -> np.ndarray:
    """Origin-removed Patterson P(u) = sum_h (|E|²-1) exp(-B s²/4) cos(2 pi h.u), (C,n1,n2,n3).

    One channel per blur B in PATTERSON_BLURS, each scaled to unit standard deviation.
    Grid: at least 2 h_max + 1 points per axis and no coarser than spacing_A.
    """
    full, idx = expand_reflections(ops, hkl)
    s2 = inverse_d2(cell, full)
    lengths = (cell.a, cell.b, cell.c)
    n = [max(2 * int(np.abs(full[:, i]).max()) + 2, int(math.ceil(lengths[i] / spacing_A)))
         for i in range(3)]
    channels = []
    for B in PATTERSON_BLURS:
        coef = np.zeros(n, dtype=complex)
        w = (E[idx] ** 2 - 1.0) * np.exp(-B * s2 / 4.0)
        np.add.at(coef, (full[:, 0] % n[0], full[:, 1] % n[1], full[:, 2] % n[2]), w)
        grid = np.fft.ifftn(coef).real  # sum_h c_h exp(+2 pi i h.u) / n1n2n3
        channels.append(grid / max(grid.std(), 1e-12))
    return np.stack(channels).astype(np.float32)


def reflection_tokens(cell: gemmi.UnitCell, ops: SymOps, hkl: np.ndarray, E: np.ndarray,
                      sig_E: np.ndarray, max_tokens: int,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Tokens (T,7): h* Cartesian (Å⁻¹, 3), s = 1/d (Å⁻¹), |E|, sigma(|E|), 1/d_min.

    Expanded by the point group and Friedel's law, then subsampled to max_tokens.
    """
    full, idx = expand_reflections(ops, hkl)
    recip = full @ np.array(cell.frac.mat, dtype=float)  # h* = h . frac matrix (rows a*, b*, c*)
    s = np.sqrt(inverse_d2(cell, full))
    tok = np.concatenate([recip, s[:, None], E[idx, None], sig_E[idx, None],
                          np.full((len(full), 1), s.max())], axis=1)
    tok = torch.tensor(tok, dtype=torch.float32)
    if len(tok) > max_tokens:
        pick = torch.randperm(len(tok), generator=generator)[:max_tokens]
        tok = tok[pick]
    return tok


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


def build_graph(problem: Problem, frac: torch.Tensor, knn: int) -> Graph:
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


def blur_for_sigma(sigma_A: torch.Tensor, b_max: float = 30.0) -> torch.Tensor:
    """Extra B (Å²) on |Fo| and |Fc| at noise level sigma (Å): 8 pi² sigma², capped at b_max.

    A Gaussian displacement of sigma per axis damps |F| by exp(-8 pi² sigma² s²/4), so the
    blur makes the data as sharp as the current atoms are; 30 Å² is the cap the physics
    samplers found useful, annealed to zero as the noise goes.
    """
    return torch.clamp(EIGHT_PI2 * sigma_A ** 2, max=b_max)


def misfit_gradient(problem: Problem, frac: torch.Tensor, b_extra: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Amplitude misfit and its Cartesian gradient at frac (B,N,3), extra blur b_extra (B,) Å².

    misfit (B,) = sum (|Fo_b| - k|Fc_b|)² / sum |Fo_b|² with the least-squares scale k and
    |F_b| = |F| exp(-b s²/4); |Fc| at each structure's best overall Uiso (`fit_u`, held
    fixed in the gradient); gradient (B,N,3) in Å⁻¹ (dmisfit/dx_cart). Invariant (the
    misfit) and equivariant (the gradient) under allowed origin shifts.
    """
    with torch.enable_grad(), torch.autocast(device_type=frac.device.type, enabled=False):
        x = frac.detach().float().requires_grad_(True)
        b = b_extra.float().reshape(-1, 1)  # (B,1)
        uiso = (b / EIGHT_PI2).expand(x.shape[0], x.shape[1])  # (B,N): the blur alone
        weight = problem.site_weight.expand(x.shape[0], -1)
        fc0 = problem.sf.calc(x, problem.type_idx, uiso, weight).abs()  # (B,M), U = 0
        fo = problem.F_obs[None] * torch.exp(-b * problem.s2[None] / 4.0)  # (B,M)
        u = fit_u(problem, fc0.detach(), fo)
        fc = fc0 * debye_waller(problem, u)
        k = scale_factor(fo, fc).unsqueeze(-1)  # (B,1)
        misfit = ((fo - k * fc) ** 2).sum(-1) / (fo * fo).sum(-1).clamp_min(1e-12)  # (B,)
        (g,) = torch.autograd.grad(misfit.sum(), x)
    return misfit.detach(), g @ problem.deorth  # dL/dcart = dL/dfrac . d(frac)/d(cart)


def r1_of(problem: Problem, frac: torch.Tensor) -> torch.Tensor:
    """R1 (B,) of frac (B,N,3) against F_obs, least-squares scale, Wilson Uiso."""
    return agreement_of(problem, frac)[0]


def amplitudes(problem: Problem, frac: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(|Fc| (B,M), overall Uiso (B,) Å²) of frac (B,N,3) at its best overall Uiso (`fit_u`)."""
    with torch.no_grad():
        uiso = torch.zeros(frac.shape[:2], device=frac.device)
        weight = problem.site_weight.expand(frac.shape[0], -1)
        fc0 = problem.sf.calc(frac.float(), problem.type_idx, uiso, weight).abs()
        u = fit_u(problem, fc0)
        return fc0 * debye_waller(problem, u), u


def debye_waller(problem: Problem, u: torch.Tensor) -> torch.Tensor:
    """exp(-2 pi² U s²) (…,M) for overall Uiso u (…,) Å²."""
    return torch.exp(-(EIGHT_PI2 / 4.0) * u[..., None] * problem.s2)


def fit_u(problem: Problem, fc0: torch.Tensor, fo: torch.Tensor | None = None) -> torch.Tensor:
    """The overall Uiso (…,) Å² on U_GRID_A2 that gives |Fc| its lowest R1 against fo.

    fc0 (…,M): |Fc| with U = 0; one U shared by all atoms factors out of the sum, so
    |Fc(U)| = |Fc(0)| exp(-2 pi² U s²) and the whole grid costs one structure-factor sum.
    fo (…,M) defaults to F_obs. At 2 Å the Wilson estimate of U is poor (its 0.02-0.08 Å²
    bounds are often hit) and a model without H wants a smaller U than the true one: on
    cod-dev the true structures' R1 falls from 0.153 to 0.121 (2202108), 0.087 to 0.063
    (1100656) when U is fitted.
    """
    grid = torch.tensor(U_GRID_A2, device=fc0.device, dtype=fc0.dtype)  # (G,)
    fc = fc0[..., None, :] * debye_waller(problem, grid)  # (…,G,M)
    r1 = r1_of_amplitudes(problem, fc, None if fo is None else fo[..., None, :])  # (…,G)
    return grid[r1.argmin(-1)]


def agreement_of(problem: Problem, frac: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(R1 (B,), CC (B,)) of frac (B,N,3), |Fc| at the best overall Uiso (`amplitudes`)."""
    return agreement_of_amplitudes(problem, amplitudes(problem, frac)[0])


def agreement_of_amplitudes(problem: Problem, fc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(R1 (B,), CC (B,)) of |Fc| (B,M): R1 on |F| with the least-squares scale, CC the
    Pearson correlation of |Fo|² and |Fc|²."""
    with torch.no_grad():
        return r1_of_amplitudes(problem, fc), pearson(problem.F_obs[None] ** 2, fc ** 2)


def r1_of_amplitudes(problem: Problem, fc: torch.Tensor, fo: torch.Tensor | None = None
                     ) -> torch.Tensor:
    """R1 (…,) of calculated amplitudes |Fc| (…,M) against fo (…,M; default F_obs),
    least-squares scale."""
    return statistics.r1(problem.F_obs if fo is None else fo, fc)


def atom_fit(problem: Problem, frac: torch.Tensor) -> torch.Tensor:
    """How well each atom sits in the density of |Fo| with the model's own phases, (B,N).

    fit_j = Σ_h Re(conj(F_j) |Fo| e^{iφc}) / (k Σ_h |F_j|²), with F_j atom j's contribution
    (all its images), φc the phases of the whole model and k the |Fo|/|Fc| scale: about 1
    for an atom where the data want one, near 0 (or below) for a misplaced one. A
    Fourier-space reading of the Fo map at the atoms, as an omit decision would use it.
    """
    with torch.no_grad():
        B, N, _ = frac.shape
        uiso = torch.full((B * N, 1), problem.uiso, device=frac.device)
        fa = problem.sf.calc(frac.float().reshape(B * N, 1, 3),
                             problem.type_idx.repeat(B).reshape(B * N, 1), uiso,
                             problem.site_weight.repeat(B).reshape(B * N, 1))
        fa = fa.reshape(B, N, -1)  # (B,N,M) complex
        fc = fa.sum(1)  # (B,M)
        fo = problem.F_obs[None]
        k = scale_factor(fo, fc.abs())  # (B,)
        fo_phased = fo * fc / fc.abs().clamp_min(1e-12)  # (B,M)
        num = (fa.conj() * fo_phased[:, None]).real.sum(-1)  # (B,N)
        return num / (k[:, None] * (fa.abs() ** 2).sum(-1)).clamp_min(1e-12)


def bonding_energy(problem: Problem, frac: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Bonding-prior energy (B,) of frac (B,N,3), without its gradient, in batch chunks."""
    from xdxd.model.bonding import energy
    with torch.no_grad(), torch.autocast(device_type=frac.device.type, enabled=False):
        return torch.cat([energy(frac[b:b + chunk].float(), problem.bonding, problem.rot,
                                 problem.tran, problem.orth, problem.site_weight)
                          for b in range(0, frac.shape[0], chunk)])


def bonding_gradient(problem: Problem, frac: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bonding-prior energy (B,) of frac (B,N,3) and its Cartesian gradient (B,N,3) per Å
    (model.bonding: about one unit per clear chemical fault)."""
    from xdxd.model.bonding import energy_gradient
    return energy_gradient(frac, problem.bonding, problem.rot, problem.tran, problem.orth,
                           problem.deorth, problem.site_weight)


def special_images(problem: Problem, frac: torch.Tensor) -> torch.Tensor:
    """Each atom moved onto the nearest point of its site symmetry, (B,N,3) fractional.

    An atom of stabilizer order k (problem.site_weight = 1/k) goes to the mean of its k
    nearest images (itself included): on a mirror, the foot of the perpendicular; near an
    inversion centre, the centre. Atoms of order 1 are returned as they are.
    """
    k = torch.round(1.0 / problem.site_weight).long()  # (N,)
    if bool((k == 1).all()):
        return frac
    return onto_site(problem, frac, k.expand(frac.shape[:-1]))


def onto_site(problem: Problem, frac: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Points frac (…,3) moved to the mean of their order (…,) nearest symmetry images
    (themselves included): onto the nearest site of that stabilizer order. Fractional."""
    d = apply_ops_torch(frac, problem.rot, problem.tran, wrap=True) - frac[..., None, :]  # (…,O,3)
    d = d - torch.round(d)  # fractional, nearest image
    dist = (d @ problem.orth.T).norm(dim=-1)  # (…,O) Å
    rank = torch.argsort(torch.argsort(dist, dim=-1), dim=-1)  # 0 = itself
    pick = (rank < order[..., None]).to(frac.dtype)
    shift = (pick[..., None] * d).sum(-2) / order[..., None].to(frac.dtype)
    return torch.remainder(frac + shift, 1.0)


def site_pattern(problem: Problem, frac: torch.Tensor) -> torch.Tensor:
    """|Fc| (B,M) of frac (B,N,3) with every atom given the first element's form factor: a
    fingerprint of the sites alone (labels ignored), for telling candidates apart."""
    with torch.no_grad():
        B, N, _ = frac.shape
        uiso = torch.full((B, N), problem.uiso, device=frac.device)
        same = torch.zeros(N, dtype=torch.long, device=frac.device)
        return problem.sf.calc(frac.float(), same, uiso,
                               problem.site_weight.expand(B, -1)).abs()
