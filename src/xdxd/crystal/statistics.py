"""Agreement statistics and normalisation: R1, wR2, GooF, scale, Wilson plot, E-values.

Definitions follow SHELXL:
  R1   = sum ||Fo| - k|Fc|| / sum |Fo|          (on amplitudes; also for Fo > 4 sigma(Fo))
  wR2  = sqrt( sum w (Fo² - k²Fc²)² / sum w (Fo²)² )
  GooF = sqrt( sum w (Fo² - k²Fc²)² / (n - p) )
  w    = 1 / (sigma²(Fo²) + (a P)² + b P),  P = (max(Fo², 0) + 2 k²Fc²) / 3
with sigma(Fo²) = 2 |Fo| sigma(|Fo|) for data given as amplitudes.
All functions take numpy arrays or torch tensors of one structure (M,) or a batch (B,M).
"""
from __future__ import annotations

from dataclasses import dataclass

import gemmi
import numpy as np
import torch

from xdxd.crystal.structure_factors import form_factors, inverse_d2
from xdxd.crystal.symmetry import SymOps, symops


def _t(x, like: torch.Tensor | None = None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    dtype = like.dtype if like is not None else torch.float64
    return torch.as_tensor(np.asarray(x), dtype=dtype)


def scale_factor(fo, fc) -> torch.Tensor:
    """Least-squares scale k minimising sum (|Fo| - k|Fc|)²: (B,) or scalar."""
    fo, fc = _t(fo), _t(fc)
    return (fo * fc).sum(-1) / (fc * fc).sum(-1).clamp_min(1e-12)


def r1(fo, fc, scale=None, mask=None) -> torch.Tensor:
    """R1 on amplitudes with scale k (least-squares scale if None)."""
    fo, fc = _t(fo), _t(fc)
    if mask is not None:
        mask = _t(mask).to(torch.bool)
        fo = torch.where(mask, fo, torch.zeros_like(fo))
        fc = torch.where(mask, fc, torch.zeros_like(fc))
    k = scale_factor(fo, fc) if scale is None else _t(scale, fo)
    k = k.unsqueeze(-1) if k.dim() > 0 else k
    return (fo - k * fc).abs().sum(-1) / fo.abs().sum(-1).clamp_min(1e-12)


def shelx_weights(fo2, sig_fo2, fc2, a: float = 0.1, b: float = 0.0,
                  floor: float = 0.0) -> torch.Tensor:
    """SHELXL weights w = 1/(sigma²(Fo²) + (aP)² + bP + floor), P = (max(Fo²,0) + 2Fc²)/3;
    floor, a variance added to every reflection, keeps Fo = Fc = 0 from an infinite weight."""
    P = (fo2.clamp_min(0) + 2 * fc2) / 3
    return 1.0 / (sig_fo2 ** 2 + (a * P) ** 2 + b * P + floor).clamp_min(1e-12)


def pearson(x, y) -> torch.Tensor:
    """Correlation coefficient along the last axis: x (M,) or (…,M) with y (…,M) -> (…,)."""
    x, y = _t(x), _t(y)
    x = x - x.mean(-1, keepdim=True)
    y = y - y.mean(-1, keepdim=True)
    return (x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1)).clamp_min(1e-12)


@dataclass
class Agreement:
    r1: float          # all reflections
    r1_obs: float      # Fo > 4 sigma(Fo)
    wr2: float
    goof: float
    scale: float
    n_reflections: int
    n_obs: int
    n_params: int

    def as_dict(self) -> dict:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def agreement(fo: np.ndarray, sigma: np.ndarray, fc: np.ndarray, n_params: int = 0,
              weight_a: float = 0.1, weight_b: float = 0.0) -> Agreement:
    """R1 (all and Fo > 4 sigma), wR2 and GooF of one structure; fc are amplitudes |Fc|."""
    fo, sigma, fc = (torch.as_tensor(np.asarray(v, dtype=float)) for v in (fo, sigma, fc))
    k = scale_factor(fo, fc)
    obs = fo > 4 * sigma
    fo2, fc2 = fo ** 2, (k * fc) ** 2
    sig_fo2 = 2 * fo * sigma
    w = shelx_weights(fo2, sig_fo2, fc2, weight_a, weight_b)
    resid = (w * (fo2 - fc2) ** 2).sum()
    n = int(fo.numel())
    wr2 = torch.sqrt(resid / (w * fo2 ** 2).sum().clamp_min(1e-12))
    goof = torch.sqrt(resid / max(1, n - n_params))
    return Agreement(float(r1(fo, fc, k)), float(r1(fo, fc, k, obs)) if obs.any() else float("nan"),
                     float(wr2), float(goof), float(k), n, int(obs.sum()), n_params)


# ---------------------------------------------------------------------------
# normalisation

def expected_intensity(cell: gemmi.UnitCell, ops: SymOps, hkl: np.ndarray,
                       composition: dict[str, float], hydrogens: float = 0) -> np.ndarray:
    """Sum over the unit cell of f² (M,), for an asymmetric unit of this composition.

    composition: element -> ASU site count (non-H); hydrogens added as H.
    """
    els = dict(composition)
    if hydrogens:
        els["H"] = els.get("H", 0) + hydrogens
    names = list(els)
    f = form_factors(names, inverse_d2(cell, hkl))  # (T,M)
    counts = np.array([els[e] for e in names], dtype=float)[:, None]
    return len(ops) * (counts * f ** 2).sum(0)


def epsilon_factors(sg: gemmi.SpaceGroup, hkl: np.ndarray) -> np.ndarray:
    """Statistical weight epsilon of each reflection (M,), centring excluded (as for E-values)."""
    go = sg.operations()
    return np.array([go.epsilon_factor_without_centering(list(map(int, h))) for h in hkl], dtype=float)


def wilson_scale(F: np.ndarray, s2: np.ndarray, sum_f2: np.ndarray,
                 eps: np.ndarray | None = None) -> tuple[float, float]:
    """Wilson plot: fit ln(<F²>/sum f²) = ln K - 2 B s²/4 over resolution shells.

    Returns (K, B in Å²) such that <F²> ≈ K sum f² exp(-B s²/2). s2 = 1/d² (Å⁻²).
    """
    eps = np.ones_like(F) if eps is None else eps
    ratio = F ** 2 / (eps * sum_f2)
    order = np.argsort(s2)
    n_shells = int(np.clip(len(F) // 50, 1, 20))
    xs, ys = [], []
    for chunk in np.array_split(order, n_shells):
        if len(chunk) == 0:
            continue
        xs.append(s2[chunk].mean())
        ys.append(np.log(max(ratio[chunk].mean(), 1e-12)))
    if len(xs) < 2:
        return float(np.exp(ys[0])), 0.0
    slope, intercept = np.polyfit(xs, ys, 1)
    return float(np.exp(intercept)), float(max(-2 * slope, 0.0))


def normalized_e(F: np.ndarray, hkl: np.ndarray, cell: gemmi.UnitCell, sg: gemmi.SpaceGroup,
                 composition: dict[str, float], hydrogens: float = 0,
                 n_shells: int = 10) -> np.ndarray:
    """|E| values (M,): |F| normalised so that <|E|²> = 1 in every resolution shell.

    Wilson scaling first (overall K and B), then a per-shell correction, with the
    epsilon factor of each reflection.
    """
    s2 = inverse_d2(cell, hkl)
    sum_f2 = expected_intensity(cell, symops(sg), hkl, composition, hydrogens)
    eps = epsilon_factors(sg, hkl)
    K, B = wilson_scale(F, s2, sum_f2, eps)
    e2 = F ** 2 / (K * eps * sum_f2 * np.exp(-B * s2 / 2))
    order = np.argsort(s2)
    for chunk in np.array_split(order, max(1, min(n_shells, len(F) // 20))):
        if len(chunk):
            e2[chunk] /= max(e2[chunk].mean(), 1e-12)
    return np.sqrt(np.clip(e2, 0, None))


def distinct_patterns(fc: np.ndarray, order, limit: int, same: float = 0.98) -> list[int]:
    """Indices from `order` whose |Fc| patterns (C,M) correlate below `same` with every
    one kept before, at most `limit` of them.

    |F| does not see origin shifts or the enantiomorph, so this catches those copies of
    a structure too.
    """
    z = np.asarray(fc, dtype=float)
    z = z - z.mean(1, keepdims=True)
    z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    kept: list[int] = []
    for i in order:
        if not kept or float((z[kept] @ z[int(i)]).max()) < same:
            kept.append(int(i))
        if len(kept) == limit:
            break
    return kept
