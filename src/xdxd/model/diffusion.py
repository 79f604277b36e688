"""Score-based diffusion on the torus of fractional coordinates, noise isotropic in Å.

Forward process (variance exploding, as DiffCSP's coordinate diffusion: Jiao et al.,
NeurIPS 2023, diffcsp/pl_modules/diffusion.py): x_t = wrap(x_0 + L⁻¹ sigma eps), eps ~ N(0, I)
in Cartesian Å, L the orthogonalisation matrix. The transition density is a wrapped normal
on the lattice; its score is a softmax-weighted sum over lattice translations n:

    -sigma * score = sum_n w_n (d + L n) / sigma,  w_n ∝ exp(-|d + L n|² / 2 sigma²)

and the network is trained to predict it (eps-prediction; equal to eps where wrapping does
not matter). Why this and not flow matching: the wrapped-normal score gives a consistent
stochastic sampler into which the data-misfit gradient adds like a likelihood score, and
the noise level sigma (Å) pairs directly with the blur schedule (B = 8 pi² sigma²).
Noise in Å rather than in fractions: molecules are isotropic in Cartesian space, so one
sigma means the same thing along a 5 Å and a 25 Å axis.

The guided sampler that runs this in reverse is solve.diffusion.sampler.
"""
from __future__ import annotations

import itertools

import torch
import torch.nn as nn

from xdxd.model.network import ModelConfig

# lattice translations summed in the wrapped-normal score
LATTICE_SHIFTS = torch.tensor(list(itertools.product(range(-3, 4), repeat=3)), dtype=torch.float32)


class NoiseSchedule(nn.Module):
    """Geometric noise levels sigma_i (Å), i = 0..n-1 from sigma_min to sigma_max, as a buffer."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        t = torch.linspace(0.0, 1.0, cfg.n_sigmas)
        self.register_buffer("sigmas", cfg.sigma_min_A * (cfg.sigma_max_A / cfg.sigma_min_A) ** t)

    def sample_sigma(self, n: int, generator: torch.Generator | None = None,
                     focus: tuple[float, float] | None = None, focus_share: float = 0.0
                     ) -> torch.Tensor:
        """n noise levels (n,) drawn uniformly over the schedule's indices (CPU generator);
        with focus (lo, hi) Å, a focus_share of them only from the levels in that band."""
        idx = torch.randint(0, len(self.sigmas), (n,), generator=generator)
        if focus is not None and focus_share > 0:
            sig = self.sigmas.cpu()
            lo = int(torch.searchsorted(sig, torch.tensor(float(focus[0]))))
            hi = int(torch.searchsorted(sig, torch.tensor(float(focus[1]))))
            band = torch.randint(lo, max(hi, lo + 1), (n,), generator=generator)
            pick = torch.rand(n, generator=generator) < focus_share
            idx = torch.where(pick, band, idx)
        return self.sigmas[idx.to(self.sigmas.device)]

    def sampling_sigmas(self, steps: int, sigma_start: float | None = None) -> torch.Tensor:
        """steps+1 decreasing levels (sigma_max, or the level nearest sigma_start Å, down to
        sigma_min, then 0) for the sampler."""
        top = len(self.sigmas) - 1
        if sigma_start is not None:
            top = int(torch.searchsorted(self.sigmas, torch.tensor(float(sigma_start),
                                                                    device=self.sigmas.device)).clamp(max=top))
        idx = torch.linspace(top, 0, steps).round().long()
        return torch.cat([self.sigmas[idx], self.sigmas.new_zeros(1)])


def wrapped_normal_eps(frac_t: torch.Tensor, frac_0: torch.Tensor, sigma: torch.Tensor,
                       orth: torch.Tensor) -> torch.Tensor:
    """Training target -sigma * score of the wrapped normal, Cartesian (B,N,3).

    frac_t, frac_0 (B,N,3); sigma (B,) Å; orth (3,3) frac -> Cartesian.
    """
    d = frac_t - frac_0
    d = d - torch.round(d)  # (B,N,3) frac
    shifts = LATTICE_SHIFTS.to(frac_t.device)  # (S,3)
    cart = (d[:, :, None, :] + shifts) @ orth.T  # (B,N,S,3) Å
    s = sigma[:, None, None]
    logw = -(cart ** 2).sum(-1) / (2 * s ** 2)  # (B,N,S)
    w = torch.softmax(logw, dim=-1)
    return (w[..., None] * cart).sum(2) / s  # (B,N,3)


def add_noise(frac_0: torch.Tensor, sigma: torch.Tensor, deorth: torch.Tensor,
              noise: torch.Tensor) -> torch.Tensor:
    """x_t = wrap(x_0 + L⁻¹ sigma eps); frac_0 (B,N,3), sigma (B,), noise eps (B,N,3) Å."""
    return torch.remainder(frac_0 + (sigma[:, None, None] * noise) @ deorth.T, 1.0)
