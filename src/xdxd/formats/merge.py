"""Merging measured reflections into unique amplitudes.

    observations (h, k, l, I or F, sigma), space group, cell
      -> refuse NaN/infinite values, drop flagged records (sigma <= 0) and 0 0 0
      -> keep d >= d_min
      -> map every index to gemmi's reciprocal-space ASU of the Laue class
         (symmetry equivalents and Friedel mates collapse; gemmi.ReciprocalAsu)
      -> drop systematic absences (gemmi.GroupOps.systematic_absences)
      -> inverse-variance weighted mean per unique index, sigma = (sum w)^-1/2
      -> intensities to amplitudes by French & Wilson (1978): posterior mean of |F| under
         an acentric/centric Wilson prior whose mean intensity follows the resolution
         shells of the data themselves (sqrt(I) for I >= 5 sigma); never NaN, never the
         root of a negative number.

Statistics (SHELX/XPREP conventions): Rint = sum|I - <I>| / sum I over every
observation with at least one equivalent; Rsigma = sum sigma(<I>) / sum <I>.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import gemmi
import numpy as np

from xdxd.crystal.structure_factors import inverse_d2
from xdxd.crystal.symmetry import systematically_absent
from xdxd.formats.reflections import AMPLITUDE, INTENSITY, Observations
from xdxd.records import RecordError


@dataclass
class Merged:
    """Unique reflections after merging.

    hkl (M,3) ASU indices; F, sigma_F (M,) amplitudes; I, sigma_I (M,) merged intensities
    (None for amplitude data); multiplicity (M,) observations per index; stats: counts and
    R values for the record's metrics.
    """
    hkl: np.ndarray
    F: np.ndarray
    sigma_F: np.ndarray
    I: np.ndarray | None
    sigma_I: np.ndarray | None
    multiplicity: np.ndarray
    stats: dict = field(default_factory=dict)


def asu_indices(hkl: np.ndarray, sg: gemmi.SpaceGroup) -> np.ndarray:
    """Map Miller indices (M,3) to gemmi's ASU of the Laue class (Friedel mates included)."""
    ops = sg.operations()
    asu = gemmi.ReciprocalAsu(sg)
    return np.array([asu.to_asu(h, ops)[0] for h in np.asarray(hkl, dtype=int).tolist()],
                    dtype=np.int64).reshape(-1, 3)


def d_spacing(cell: gemmi.UnitCell, hkl: np.ndarray) -> np.ndarray:
    """d (M,) in Å."""
    s2 = inverse_d2(cell, hkl)
    with np.errstate(divide="ignore"):
        return 1.0 / np.sqrt(s2)


def merge(obs: Observations, sg: gemmi.SpaceGroup, cell: gemmi.UnitCell,
          d_min: float | None = None) -> Merged:
    """Merge observations to unique amplitudes (see module docstring).

    d_min in Å (None or 0 keeps all). Raises RecordError (naming obs.source) when no
    usable reflection is left.
    """
    src = obs.source or "reflections"
    hkl, val, sig = obs.hkl, obs.value, obs.sigma
    stats: dict = {"n_records": int(len(val))}
    finite = np.isfinite(val) & np.isfinite(sig)
    if not finite.any():
        raise RecordError(f"{src}: every reflection has a NaN or infinite value")
    if not finite.all():  # readers drop legitimately missing values; a NaN here is damage
        first = hkl[np.argmin(finite)].tolist()
        raise RecordError(f"{src}: {int((~finite).sum())} reflection(s) with a NaN or infinite "
                          f"value or sigma (first: {first[0]} {first[1]} {first[2]})")
    flagged = sig <= 0
    stats["n_flagged"] = int(flagged.sum())
    keep = ~flagged & np.any(hkl != 0, axis=1)
    if obs.kind == AMPLITUDE:
        keep &= val >= 0
    d = d_spacing(cell, hkl)
    stats["d_min_data_A"] = round(float(d[keep].min()), 4) if keep.any() else None
    if d_min:
        stats["n_beyond_dmin"] = int((keep & (d < d_min - 1e-9)).sum())
        keep &= d >= d_min - 1e-9
    hkl, val, sig = hkl[keep], val[keep], sig[keep]
    if len(val) == 0:
        raise RecordError(f"{src}: no reflections left (after dropping flagged records"
                          + (f" and d < {d_min} Å)" if d_min else ")"))
    asu = asu_indices(hkl, sg)
    absent = systematically_absent(asu, sg)
    stats["n_absent"] = int(absent.sum())
    if absent.any():  # a diagnostic for the space group: absences should be weak
        stats["absent_mean_i_over_sigma"] = round(float(np.mean(val[absent] / sig[absent])), 3)
    asu, val, sig = asu[~absent], val[~absent], sig[~absent]
    if len(val) == 0:
        raise RecordError(f"{src}: every reflection is systematically absent in {sg.xhm()}")
    stats["n_observations"] = int(len(val))

    uniq, inv, counts = np.unique(asu, axis=0, return_inverse=True, return_counts=True)
    inv = inv.reshape(-1)
    w = 1.0 / sig ** 2
    sw = np.bincount(inv, weights=w)
    mean = np.bincount(inv, weights=w * val) / sw
    sigma = 1.0 / np.sqrt(sw)
    multi = counts[inv] > 1
    denom = np.abs(val[multi]).sum()
    stats["rint"] = round(float(np.abs(val[multi] - mean[inv][multi]).sum() / denom), 4) if denom > 0 else None
    stats["rsigma"] = round(float(sigma.sum() / max(np.abs(mean).sum(), 1e-30)), 4)
    stats["n_unique"] = int(len(uniq))
    stats["mean_multiplicity"] = round(float(counts.mean()), 3)
    stats["mean_i_over_sigma"] = round(float(np.mean(mean / sigma)), 3)

    if obs.kind == INTENSITY:
        F, sF = french_wilson(mean, sigma, uniq, sg, cell)
        return Merged(uniq, F, sF, mean, sigma, counts, stats)
    return Merged(uniq, mean, sigma, None, None, counts, stats)


def completeness(hkl: np.ndarray, sg: gemmi.SpaceGroup, cell: gemmi.UnitCell, d_min: float) -> float:
    """Unique reflections present / those possible (no absences) to d_min (Å)."""
    possible = gemmi.make_miller_array(cell, sg, d_min * (1 - 1e-9))
    possible = possible[~systematically_absent(possible, sg)]
    return float(len(hkl)) / max(len(possible), 1)


# ---------------------------------------------------------------------------
# French & Wilson

def wilson_mean_intensity(I: np.ndarray, s2: np.ndarray, eps: np.ndarray,
                          n_shells: int = 20) -> np.ndarray:
    """Expected intensity Sigma(s²) / eps per reflection, from equal-count resolution shells.

    The shell mean of I/eps (negative intensities included) is interpolated linearly in s²
    between shell centres and kept positive (floor: 1 % of the overall mean).
    """
    order = np.argsort(s2)
    n = len(I)
    n_shells = max(1, min(n_shells, n // 50))
    edges = np.linspace(0, n, n_shells + 1).astype(int)
    centres, means = [], []
    for a, b in zip(edges[:-1], edges[1:]):
        idx = order[a:b]
        centres.append(s2[idx].mean())
        means.append(np.mean(I[idx] / eps[idx]))
    means = np.array(means)
    floor = 0.01 * max(float(np.mean(np.abs(I / eps))), 1e-30)
    means = np.maximum(means, floor)
    return np.interp(s2, centres, means)


def french_wilson(I: np.ndarray, sigma_I: np.ndarray, hkl: np.ndarray, sg: gemmi.SpaceGroup,
                  cell: gemmi.UnitCell, n_grid: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """|F| and sigma(|F|) from merged intensities (French & Wilson 1978, Acta Cryst A34, 517).

    Weak reflections (I < 3 sigma) get the posterior mean and s.d. of F given
    I ~ N(F², sigma_I²) and the Wilson prior (acentric: p(F) = 2F/S exp(-F²/S); centric:
    p(F) = sqrt(2/(pi S)) exp(-F²/(2S)); S = eps x the shell's mean intensity), integrated
    numerically on a grid in F spanning the likelihood, sqrt(max(I - 8 sigma, 0)) ..
    sqrt(max(I, 0) + 8 sigma). Strong ones (I >= 5 sigma) get F = sqrt(I),
    sigma_F = sigma_I / (2F), where the prior would only bias them; in between, a linear
    blend keeps F continuous and increasing in I. Negative I give small positive F.
    """
    I = np.asarray(I, dtype=float)
    sigma_I = np.asarray(sigma_I, dtype=float)
    ops = sg.operations()
    h32 = np.asarray(hkl, dtype=np.int32)
    centric = np.asarray(ops.centric_flag_array(h32), dtype=bool)
    eps = np.asarray(ops.epsilon_factor_array(h32), dtype=float)
    S = eps * wilson_mean_intensity(I, inverse_d2(cell, hkl), eps)

    F = np.zeros_like(I)
    sF = np.zeros_like(I)
    t = np.linspace(0.0, 1.0, n_grid)
    for start in range(0, len(I), 4096):
        sl = slice(start, start + 4096)
        i, s, Sw, c = I[sl, None], sigma_I[sl, None], S[sl, None], centric[sl, None]
        f_lo = np.sqrt(np.maximum(i - 8.0 * s, 0.0))  # the likelihood is negligible outside
        f_hi = np.sqrt(np.maximum(i, 0.0) + 8.0 * s)
        f = f_lo + (f_hi - f_lo) * t[None, :]  # (m, n_grid)
        loglik = -0.5 * ((i - f * f) / s) ** 2
        with np.errstate(divide="ignore"):
            logprior = np.where(c, -0.5 * f * f / Sw, np.log(f) - f * f / Sw)
        logp = loglik + logprior
        logp -= logp.max(axis=1, keepdims=True)
        p = np.exp(logp)
        p[:, [0, -1]] *= 0.5  # trapezoid weights (uniform grid per row: the spacing cancels)
        z = p.sum(axis=1)
        m1 = (p * f).sum(axis=1) / z
        m2 = (p * f * f).sum(axis=1) / z
        F[sl] = m1
        sF[sl] = np.sqrt(np.maximum(m2 - m1 * m1, 0.0))
    # strong reflections: the data, not the (random-atom) prior, decide; blend smoothly from
    # the posterior at I = 3 sigma to sqrt(I), sigma/(2 sqrt(I)) at I = 5 sigma and above
    w = np.clip((I / sigma_I - 3.0) / 2.0, 0.0, 1.0)
    root = np.sqrt(np.maximum(I, 1e-300))
    F = (1 - w) * F + w * root
    sF = (1 - w) * sF + w * sigma_I / (2 * root)
    assert np.all(np.isfinite(F)) and np.all(np.isfinite(sF)), "French-Wilson gave a non-finite F"
    return F, sF
