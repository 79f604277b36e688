"""What the data and the bonding prior say about a batch of candidate structures.

- the amplitude misfit and its Cartesian gradient at an extra blur (`misfit_gradient`):
  the data term of the sampler's guidance and an input of the network;
- |Fc| at each structure's best overall Uiso (`amplitudes`, `fit_u`), R1 and CC against
  |Fo| (`agreement_of`), how well each atom sits in the density (`atom_fit`), a site
  fingerprint that ignores labels (`site_pattern`);
- the bonding prior's energy and gradient (`bonding_energy`, `bonding_gradient`; the
  prior itself is solve.diffusion.bonding), the ranking `objective` R1 + rank_bonding ×
  energy, and the direction and descent that follow them (`guidance_direction`, `polish`).

Every structure factor comes from crystal.structure_factors, every scale and R1 from
crystal.statistics. Shapes: frac (B,N,3) fractional; |F| (B,M).
"""
from __future__ import annotations

import torch

from xdxd.crystal import statistics
from xdxd.crystal.statistics import pearson, scale_factor
from xdxd.solve.diffusion import bonding
from xdxd.solve.diffusion.problem import EIGHT_PI2, Problem, special_images

U_GRID_A2 = tuple(0.01 * i for i in range(13))  # overall Uiso fitted per candidate, 0-0.12 Å²


def unit_rms(g: torch.Tensor) -> torch.Tensor:
    """Per-atom vectors g (B,N,3) scaled so that each structure's RMS length is 1."""
    return g / g.pow(2).sum(-1).mean(-1).sqrt().clamp_min(1e-12)[:, None, None]


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
    with torch.no_grad(), torch.autocast(device_type=frac.device.type, enabled=False):
        return torch.cat([bonding.energy(frac[b:b + chunk].float(), problem.bonding, problem.rot,
                                 problem.tran, problem.orth, problem.site_weight)
                          for b in range(0, frac.shape[0], chunk)])


def bonding_gradient(problem: Problem, frac: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bonding-prior energy (B,) of frac (B,N,3) and its Cartesian gradient (B,N,3) per Å
    (solve.diffusion.bonding: about one unit per clear chemical fault)."""
    return bonding.energy_gradient(frac, problem.bonding, problem.rot, problem.tran, problem.orth,
                           problem.deorth, problem.site_weight)


def site_pattern(problem: Problem, frac: torch.Tensor) -> torch.Tensor:
    """|Fc| (B,M) of frac (B,N,3) with every atom given the first element's form factor: a
    fingerprint of the sites alone (labels ignored), for telling candidates apart."""
    with torch.no_grad():
        B, N, _ = frac.shape
        uiso = torch.full((B, N), problem.uiso, device=frac.device)
        same = torch.zeros(N, dtype=torch.long, device=frac.device)
        return problem.sf.calc(frac.float(), same, uiso,
                               problem.site_weight.expand(B, -1)).abs()


def objective(problem: Problem, frac: torch.Tensor, rank_bonding: float = 0.0
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """How candidates are ranked: (R1 + rank_bonding * bonding energy, R1, energy), each (B,)."""
    r1 = r1_of(problem, frac)
    energy = bonding_energy(problem, frac) if rank_bonding > 0 else torch.zeros_like(r1)
    return r1 + rank_bonding * energy, r1, energy


def guidance_direction(problem: Problem, frac: torch.Tensor, blur: torch.Tensor,
                       bonding: float | torch.Tensor = 0.0
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where the data and the bonding prior want atoms to go, at frac (B,N,3).

    Returns (misfit (B,), direction (B,N,3), bonding energy (B,)): the misfit gradient
    (blur B Å² on |Fo| and |Fc|) scaled to unit RMS per atom, plus bonding times the
    bonding prior's gradient (per Å; one unit of energy per clear fault), both uphill.
    """
    misfit, grad = misfit_gradient(problem, frac, blur)
    g = unit_rms(grad)
    energy = torch.zeros_like(misfit)
    if isinstance(bonding, torch.Tensor) or bonding > 0:
        energy, gb = bonding_gradient(problem, frac)
        w = bonding if not isinstance(bonding, torch.Tensor) else bonding.reshape(-1, 1, 1)
        g = g + w * gb
    return misfit, g, energy


def bonding_ramp(sigma: torch.Tensor, weight: float, sigma_on_A: float = 1.0) -> torch.Tensor:
    """Weight of the bonding prior at noise level sigma (Å): full below sigma_on_A, fading as
    (sigma_on_A/sigma)² above it (a blurred Tweedie estimate has no bonds to judge)."""
    return weight * (sigma_on_A / sigma.clamp_min(sigma_on_A)) ** 2


def polish(problem: Problem, frac: torch.Tensor, steps: int = 60, lr_A: float = 0.05,
           bonding: float = 0.0) -> torch.Tensor:
    """A short descent on the unblurred misfit (plus bonding times the bonding prior), a
    fixed step in Å along the unit-RMS direction, shrinking to zero; frac (B,N,3)."""
    x = special_images(problem, frac.clone())
    zero = torch.zeros(len(x), device=x.device)
    for i in range(steps):
        _, g, _ = guidance_direction(problem, x, zero, bonding)
        g = unit_rms(g)
        step = lr_A * (1.0 - i / steps)
        x = special_images(problem, torch.remainder(x - (step * g) @ problem.deorth.T, 1.0))
    return x
