"""Batched, differentiable X-ray structure factors in torch (CPU or CUDA).

F(h) = sum_atoms w_j f_j(s) T_j(h) sum_ops exp(2 pi i h.(R x_j + t))

with f_j the IT92 form factor of gemmi (neutral atoms, s = 1/d in Å⁻¹, no dispersion),
T_j = exp(-2 pi² U s²) (isotropic, U in Å²) or exp(-(hR) beta (hR)^T) (anisotropic),
and w_j = occupancy / (order of the site's stabilizer), so a site on a special position
counts once per distinct image, as gemmi does after change_occupancies_to_crystallographic.

The sum over operations is shortened where the reflections allow it (`reduced_ops`): a
centring translation c adds a factor 2 (or 3, 4) for every h with h.c integral, and an
inversion centre at the origin pairs each operation with its inverse, so F is real and
2 sum cos over half the operations. The isotropic path has its own gradient
(`_OpsSum`), which keeps one copy of cos and sin instead of autograd's several.

Every command computes structure factors through `StructureFactors`.
"""
from __future__ import annotations

import math

import gemmi
import numpy as np
import torch

from xdxd.crystal.symmetry import SymOps

TWO_PI = 2.0 * math.pi


def it92_coefficients(elements: list[str]) -> np.ndarray:
    """IT92 form-factor coefficients (T,9): a1..a4, b1..b4, c, for each element symbol."""
    out = []
    for e in elements:
        el = gemmi.Element(e)
        if el.atomic_number == 0 or el.it92 is None:
            raise ValueError(f"unknown element {e!r}")
        out.append(el.it92.get_coefs())
    return np.array(out, dtype=float)


def form_factors(elements: list[str], s2: np.ndarray) -> np.ndarray:
    """f(s) for each element and reflection (T,M); s2 = 1/d² in Å⁻²."""
    c = it92_coefficients(elements)
    stol2 = s2[None, :] / 4.0
    f = c[:, 8:9] + sum(c[:, i:i + 1] * np.exp(-c[:, 4 + i:5 + i] * stol2) for i in range(4))
    return f


def inverse_d2(cell: gemmi.UnitCell, hkl: np.ndarray) -> np.ndarray:
    """1/d² (M,) in Å⁻² for Miller indices (M,3)."""
    frac_to_recip = np.array(cell.frac.mat)  # rows: a*, b*, c* components
    g = frac_to_recip @ frac_to_recip.T  # reciprocal metric tensor
    hkl = np.asarray(hkl, dtype=float)
    return np.einsum("mi,ij,mj->m", hkl, g, hkl)


def beta_from_ucif(cell: gemmi.UnitCell, uaniso: torch.Tensor) -> torch.Tensor:
    """U_cif (...,6: U11 U22 U33 U12 U13 U23, Å²) -> beta (...,3,3) with T = exp(-h beta h)."""
    n = torch.tensor([cell.reciprocal().a, cell.reciprocal().b, cell.reciprocal().c],
                     dtype=uaniso.dtype, device=uaniso.device)
    u11, u22, u33, u12, u13, u23 = uaniso.unbind(-1)
    U = torch.stack([torch.stack([u11, u12, u13], -1), torch.stack([u12, u22, u23], -1),
                     torch.stack([u13, u23, u33], -1)], -2)
    return 2 * math.pi ** 2 * U * n[:, None] * n[None, :]


def _integral(x: np.ndarray, tol: float = 1e-6) -> bool:
    return bool(np.all(np.abs(x - np.round(x)) < tol))


def reduced_ops(ops: SymOps, hkl: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, bool]:
    """(rot (K,3,3), tran (K,3), factor, centric): operations that give, for these
    reflections (M,3), F = factor × sum over the K operations of exp(2 pi i h.(R x + t)),
    or, when centric, factor × sum of cos (F real). Pure translations (centring) are
    dropped when h.c is integral for every reflection, and an inversion centre at the
    origin (or one centring vector away) halves the rest; otherwise all operations, factor 1."""
    rot, tran = np.asarray(ops.rot, float), np.asarray(ops.tran, float)
    hkl = np.asarray(hkl, float).reshape(-1, 3)
    eye = np.eye(3)
    factor, centric = 1.0, False
    centring = [t for r, t in zip(rot, tran) if np.allclose(r, eye)]
    if len(centring) > 1 and all(_integral(hkl @ c) for c in centring):
        first = [k for k in range(len(rot)) if not any(np.allclose(rot[k], rot[j]) for j in range(k))]
        rot, tran, factor = rot[first], tran[first], factor * len(centring)
    inversion = [t for r, t in zip(rot, tran) if np.allclose(r, -eye)]
    if any(_integral(hkl @ t) for t in inversion):
        half: list[int] = []  # an operation stays unless its rotation is minus one that stayed
        for k in range(len(rot)):
            if not any(np.allclose(rot[k], -rot[j]) for j in half):
                half.append(k)
        rot, tran, factor, centric = rot[half], tran[half], factor * 2, True
    return rot, tran, factor, centric


class _OpsSum(torch.autograd.Function):
    """(Re F, Im F) (B,m) = sum_n amp (B,N,m) sum_o (cos, sin) phase, with
    phase = frac . hR2 + ht2 (B,N,O,m) in radians (hR2 = 2 pi h R, ht2 = 2 pi h.t) and the
    gradient in frac (B,N,3) and amp written out; centric: Im F = 0. Nothing of size
    (B,N,O,m) is kept for the backward pass: it computes the phases again. On a CPU that is
    about twice as fast as keeping them (a chunk of reflections stays in cache through
    phase, cos and sum) and needs a fraction of the memory."""

    @staticmethod
    def _phase(frac, hR2, ht2):
        B, N, _ = frac.shape
        O, m, _ = hR2.shape
        return torch.addmm(ht2.reshape(1, O * m), frac.reshape(B * N, 3),
                           hR2.reshape(O * m, 3).T).view(B, N, O, m)

    @staticmethod
    def forward(ctx, frac, amp, hR2, ht2, centric):
        phase = _OpsSum._phase(frac, hR2, ht2)
        re = (amp * phase.cos().sum(2)).sum(1)
        im = torch.zeros_like(re) if centric else (amp * phase.sin_().sum(2)).sum(1)
        ctx.centric = centric
        ctx.save_for_backward(frac, amp, hR2, ht2)
        return re, im

    @staticmethod
    def backward(ctx, g_re, g_im):
        frac, amp, hR2, ht2 = ctx.saved_tensors
        B, N, _ = frac.shape
        O, m, _ = hR2.shape
        phase = _OpsSum._phase(frac, hR2, ht2)
        sin = phase.sin()
        cos = None if ctx.centric and not ctx.needs_input_grad[1] else phase.cos_()
        g_frac = g_amp = None
        if ctx.needs_input_grad[1]:
            g_amp = cos.sum(2) * g_re[:, None]
            if not ctx.centric:
                g_amp = g_amp + sin.sum(2) * g_im[:, None]
        if ctx.needs_input_grad[0]:
            d_phase = sin.mul_((-amp * g_re[:, None])[:, :, None])                  # (B,N,O,m)
            if not ctx.centric:
                d_phase += cos.mul_((amp * g_im[:, None])[:, :, None])
            g_frac = (d_phase.view(B * N, O * m) @ hR2.reshape(O * m, 3)).view(B, N, 3)
        return g_frac, g_amp, None, None, None


class StructureFactors:
    """Structure factors of many candidate structures at one set of reflections.

    Built once per problem (cell, operations, reflections, element types); then
    `calc(frac, uiso, weight)` returns complex F (B,M) and is differentiable in
    frac (B,N,3), uiso (B,N) and weight (B,N).
    """

    def __init__(self, cell: gemmi.UnitCell, ops: SymOps, hkl: np.ndarray, types: list[str],
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 chunk_elements: int = 1 << 20):
        self.cell = cell
        self.ops = ops
        self.types = list(types)
        self.device = torch.device(device)
        self.dtype = dtype
        self.chunk_elements = chunk_elements
        hkl = np.asarray(hkl, dtype=float).reshape(-1, 3)
        s2 = inverse_d2(cell, hkl)
        kw = dict(device=self.device, dtype=dtype)
        self.hkl = torch.tensor(hkl, **kw)
        self.s2 = torch.tensor(s2, **kw)  # (M,) Å⁻²
        self.f0 = torch.tensor(form_factors(self.types, s2), **kw)  # (T,M)
        # h R for every op: (O,M,3); phase of the translation: (O,M)
        self.hR = torch.tensor(np.einsum("mi,oij->omj", hkl, ops.rot), **kw)
        self.ht = torch.tensor(np.einsum("mi,oi->om", hkl, ops.tran), **kw)
        # the same sum with fewer operations (isotropic path): F = factor x sum over them
        rot, tran, self.factor, self.centric = reduced_ops(ops, hkl)
        self.hR_reduced = torch.tensor(np.einsum("mi,oij->omj", hkl, rot), **kw)
        self.ht_reduced = torch.tensor(np.einsum("mi,oi->om", hkl, tran), **kw)
        self._hR2 = TWO_PI * self.hR_reduced  # (O,M,3) and (O,M): phases in radians
        self._ht2 = TWO_PI * self.ht_reduced

    @property
    def n_reflections(self) -> int:
        return self.hkl.shape[0]

    def type_index(self, elements: list[str]) -> torch.Tensor:
        return torch.tensor([self.types.index(e) for e in elements], device=self.device)

    def calc(self, frac: torch.Tensor, type_idx: torch.Tensor, uiso: torch.Tensor | None,
             weight: torch.Tensor | None = None, uaniso: torch.Tensor | None = None,
             aniso_mask: torch.Tensor | None = None, first: int | None = None) -> torch.Tensor:
        """Complex F (B,M), or (B,first) for the first `first` reflections only.

        frac (B,N,3) fractional; type_idx (N,) or (B,N) index into self.types;
        uiso (B,N) Å², or None for U = 0 (no Debye-Waller factor at all);
        weight (B,N) or (1,N) occupancy/stabilizer order (default 1);
        uaniso (B,N,6) U_cif Å² used where aniso_mask (N,) or (B,N) is True.
        """
        B, N, _ = frac.shape
        if weight is None:
            weight = torch.ones(B, N, device=frac.device, dtype=frac.dtype)
        M = self.n_reflections if first is None else min(first, self.n_reflections)
        O = self.hR_reduced.shape[0] if uaniso is None else self.hR.shape[0]
        step = max(1, self.chunk_elements // max(1, B * N * O))
        parts = []
        for m0 in range(0, M, step):
            parts.append(self._calc_chunk(frac, type_idx, uiso, weight, uaniso, aniso_mask,
                                          slice(m0, min(M, m0 + step))))
        return torch.cat(parts, dim=1)

    def _calc_chunk(self, frac, type_idx, uiso, weight, uaniso, aniso_mask, sl):
        s2 = self.s2[sl]
        f0 = self.f0[:, sl][type_idx]  # (N,m) or (B,N,m)
        if f0.dim() == 2:
            f0 = f0.unsqueeze(0)
        amp = weight[..., None] * f0  # (B,N,m) or (1,N,m)
        if uiso is not None:
            dw_iso = torch.exp(-2 * math.pi ** 2 * uiso[..., None] * s2)  # (B,N,m)
            amp = amp * dw_iso
        if uaniso is None or aniso_mask is None or not bool(aniso_mask.any()):
            amp = (self.factor * amp).expand(frac.shape[0], -1, -1)
            re, im = _OpsSum.apply(frac, amp, self._hR2[:, sl], self._ht2[:, sl], self.centric)
            return torch.complex(re, im)
        hR, ht = self.hR[:, sl], self.ht[:, sl]
        phase = TWO_PI * (torch.einsum("bnc,omc->bnom", frac, hR) + ht[None, None])
        beta = beta_from_ucif(self.cell, uaniso)  # (B,N,3,3)
        q = torch.einsum("omi,bnij,omj->bnom", hR, beta, hR)
        # anisotropic atoms: replace the isotropic factor by the per-image one
        mask = aniso_mask.to(frac.dtype)  # (N,) or (B,N)
        mask = mask[None, :, None, None] if mask.dim() == 1 else mask[:, :, None, None]
        amp_img = (weight[..., None] * f0)[:, :, None, :] * (
            mask * torch.exp(-q) + (1 - mask) * (1.0 if uiso is None else dw_iso[:, :, None, :]))
        re = (amp_img * torch.cos(phase)).sum(dim=(1, 2))
        im = (amp_img * torch.sin(phase)).sum(dim=(1, 2))
        return torch.complex(re, im)


def structure_factors_of_atoms(cell: gemmi.UnitCell, ops: SymOps, hkl: np.ndarray,
                               elements: list[str], frac: np.ndarray, uiso: np.ndarray,
                               occ: np.ndarray, uaniso: np.ndarray | None = None,
                               dtype: torch.dtype = torch.float64) -> np.ndarray:
    """Complex F (M,) of one structure: a convenience wrapper for simulation and tests.

    Site stabilizers are found here, so occupancies are chemical (1 for a full site,
    whether on a special position or not).
    """
    from xdxd.crystal.symmetry import stabilizer_order
    types = sorted(set(elements))
    sf = StructureFactors(cell, ops, hkl, types, dtype=dtype)
    stab = stabilizer_order(np.asarray(frac), ops, cell)
    t = lambda a: torch.tensor(np.asarray(a, dtype=float), dtype=dtype)[None]
    mask = None
    ua = None
    if uaniso is not None:
        ua_np = np.asarray(uaniso, dtype=float)
        finite = np.all(np.isfinite(ua_np), axis=1)
        mask = torch.tensor(finite)
        ua = t(np.where(finite[:, None], ua_np, 0.0))
    F = sf.calc(t(frac), sf.type_index(list(elements)), t(uiso), t(np.asarray(occ) / stab),
                uaniso=ua, aniso_mask=mask)
    return F[0].numpy()
