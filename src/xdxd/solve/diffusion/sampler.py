"""The guided sampler and the search around its best: how xdxd-sample --method diffusion
finds candidate structures.

`sample` is guided ancestral sampling with the trained denoiser (model.network) on the
noise schedule of model.diffusion, the data's misfit gradient (and optionally the bonding
prior) adding to the learned score at every step; `search` samples a population, polishes
it, and searches around its best for a few rounds (re-noise, denoise, keep the best),
then finishes the best distinct structures with Monte Carlo relocation moves (moves).
"""
from __future__ import annotations

import math
import time

import torch

from xdxd.crystal.statistics import distinct_patterns
from xdxd.model.diffusion import NoiseSchedule, add_noise
from xdxd.model.graph import build_graph
from xdxd.model.network import Denoiser
from xdxd.solve.diffusion.config import SamplerConfig
from xdxd.solve.diffusion.guidance import (atom_fit, blur_for_sigma, bonding_ramp, guidance_direction,
                                           misfit_gradient, objective, polish, r1_of, site_pattern)
from xdxd.solve.diffusion.moves import relocate, swap_labels
from xdxd.solve.diffusion.problem import Problem, special_images


def denoiser_eps(model: Denoiser, problem: Problem, frac: torch.Tensor, sigma: torch.Tensor,
                 context: torch.Tensor, b_max: float = 30.0
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the conditioning and the network at frac (B,N,3), sigma (B,).

    Returns (eps_hat (B,N,3), misfit (B,), misfit gradient (B,N,3) Å⁻¹ at the blurred data).
    """
    misfit, grad = misfit_gradient(problem, frac, blur_for_sigma(sigma, b_max))
    graph = build_graph(problem, frac, model.cfg.knn)
    device_type = frac.device.type
    with torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=device_type == "cuda"):
        eps = model(problem, graph, sigma, context, misfit, grad)
    return eps.float(), misfit, grad


@torch.no_grad()
def sample(model: Denoiser | None, schedule: NoiseSchedule, problem: Problem, n_samples: int,
           cfg: SamplerConfig = SamplerConfig(), steps: int | None = None, seed: int = 0,
           start: torch.Tensor | None = None, sigma_start: float | None = None,
           keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Guided ancestral sampling: n_samples ASU structures for one problem, `steps`
    steps (default cfg.steps); cfg gives guidance, b_max, tweedie, resample_every,
    resample_ess, chunk and bonding.

    Each step: eps_hat from the network, the denoised estimate x0 = x - sigma eps_hat
    (Tweedie), the data score -guidance * g/|g| / sigma with g the misfit gradient at x0
    (tweedie=True; at x itself otherwise) and blur B(sigma), then the VE ancestral update
        x <- x + (sigma_i² - sigma_{i+1}²) * score + sqrt((sigma_i² - sigma_{i+1}²)) * sigma_{i+1}/sigma_i * z.
    resample_every > 0: every so many steps the population is resampled (systematic, as
    a particle filter) with weights exp(-misfit(x0)/T), T set so that the effective
    sample size is resample_ess of the population: compute moves to the trajectories
    that fit the data. bonding > 0 adds the bonding prior's gradient to the guidance
    (`guidance_direction`, weight `bonding_ramp`). Atoms on special positions
    (problem.site_weight < 1) are moved onto their site symmetry after every step
    (`special_images`). Noise is drawn on the CPU from torch.Generator(seed) and moved,
    so CPU and CUDA give the same draws. model=None drops the learned prior (eps = 0):
    annealed, blurred Langevin descent on the data alone, the baseline the prior is
    measured against. start (n_samples,N,3) with sigma_start (Å): begin from these
    structures, noised to sigma_start, instead of uniform noise at sigma_max (re-noising
    good candidates and denoising them again: a search step around them). keep
    (n_samples,N) bool with start: those atoms are held at their start positions, noised to
    each step's level (inpainting, as RePaint does), and only the others are sampled anew.
    Returns (frac (n_samples,N,3) in [0,1), R1 (n_samples,)).
    """
    steps = cfg.steps if steps is None else steps
    guidance, b_max, chunk, bonding = cfg.guidance, cfg.b_max, cfg.chunk, cfg.bonding
    gen = torch.Generator().manual_seed(seed)
    dev = problem.device
    N = problem.n_atoms
    sigmas = schedule.sampling_sigmas(steps, sigma_start if start is not None else None).to(dev)
    context = model.context(problem) if model is not None else None
    if start is None:
        x = special_images(problem, torch.rand(n_samples, N, 3, generator=gen).to(dev))
    else:
        x = add_noise(start.to(dev), sigmas[0].expand(n_samples),
                      problem.deorth, torch.randn(n_samples, N, 3, generator=gen).to(dev))
    if keep is not None and start is None:
        raise ValueError("keep needs start")
    for i in range(steps):
        s_now, s_next = sigmas[i], sigmas[i + 1]
        z = torch.randn(n_samples, N, 3, generator=gen).to(dev)
        scores, misfits = [], []
        for c0 in range(0, n_samples, chunk):
            xc = x[c0:c0 + chunk]
            sig = s_now.expand(len(xc))
            blur = blur_for_sigma(sig, b_max)
            w_bond = bonding_ramp(s_now, bonding) if bonding > 0 else 0.0
            if model is None:
                eps = torch.zeros_like(xc)
                misfit, g, _ = guidance_direction(problem, xc, blur, w_bond)
            else:
                eps, misfit, grad = denoiser_eps(model, problem, xc, sig, context, b_max)
                at = torch.remainder(xc - (s_now * eps) @ problem.deorth.T, 1.0) if cfg.tweedie else xc
                misfit, g, _ = guidance_direction(problem, at, blur, w_bond)
            scores.append(-(eps + guidance * g) / s_now)  # score, Cartesian Å⁻¹
            misfits.append(misfit)
        score = torch.cat(scores)
        dvar = s_now ** 2 - s_next ** 2
        step = dvar * score + torch.sqrt(dvar) * (s_next / s_now) * z  # (B,N,3) Å
        x = special_images(problem, torch.remainder(x + step @ problem.deorth.T, 1.0))
        if keep is not None:
            held = add_noise(start.to(dev), s_next.expand(n_samples), problem.deorth,
                             torch.randn(n_samples, N, 3, generator=gen).to(dev))
            x = torch.where(keep.to(dev)[..., None], special_images(problem, held), x)
        if cfg.resample_every and (i + 1) % cfg.resample_every == 0 and i + 1 < steps:
            x = x[resample(torch.cat(misfits).cpu(), cfg.resample_ess, gen).to(dev)]
    return x, r1_of(problem, x)


def resample(misfit: torch.Tensor, ess: float, gen: torch.Generator) -> torch.Tensor:
    """Systematic resampling indices (B,) with weights exp(-misfit/T), T chosen by bisection
    so that the effective sample size is about ess × B (sorted: copies stay together)."""
    B = len(misfit)
    m = misfit.double() - misfit.min()

    def weights(T):
        w = torch.exp(-m / T)
        return w / w.sum()

    lo, hi = 1e-6, 1e3
    for _ in range(40):  # ESS grows with T
        T = (lo * hi) ** 0.5
        if 1.0 / (weights(T) ** 2).sum() < ess * B:
            lo = T
        else:
            hi = T
    cdf = torch.cumsum(weights(hi), 0)
    u = (torch.rand(1, generator=gen, dtype=torch.float64) + torch.arange(B)) / B
    return torch.searchsorted(cdf, u).clamp(max=B - 1)


def search(model: Denoiser | None, schedule: NoiseSchedule, problem: Problem, n_samples: int,
           cfg: SamplerConfig = SamplerConfig(), seed: int = 0,
           time_budget_s: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample, then search around the best: a population of n_samples structures.

    The settings are cfg's (SamplerConfig). Round 0 is `sample` from noise (cfg.steps, fewer
    when a first pass of that many would take more than half of time_budget_s). Each
    further round keeps the `keep` best structures
    (after `polish`; best = lowest `objective`, R1 + rank_bonding * bonding energy),
    noises copies of them back to a restart level (cycling through restart_sigmas, Å)
    and denoises them again with restart_steps guided steps (each structure is polished
    with polish_steps of descent on the misfit), so the prior proposes chemically
    sensible rearrangements of the parts that fit worst and the data picks among them
    (basin hopping with a learned move). bonding: weight of the bonding prior in the
    guidance and the polish (0: data alone). After each polish, up to `swaps` greedy
    label swaps per structure (`swap_labels`, judged on R1) and a second, shorter polish.
    With relocate_moves > 0 the `relocate_pool` best distinct structures then get up to
    that many relocation moves (moves.relocate, relocate_proposals places tried
    per move, Metropolis at relocate_temperature), which take relocate_share of the time
    budget. With omit, half the copies instead keep
    their atoms and sample only the 1 to N/3 that sit worst in the map (`omit_mask`)
    anew from omit_sigma Å (inpainting), as an omit map would suggest (off by default:
    on six small cod-dev structures at 2.0 Å, 3 seeds, it found all sites in 1 of 6
    each time, against 2 of 6 with whole-structure restarts alone). Stops after
    `rounds` rounds or before a round that would end past time_budget_s (s). Returns
    (frac (M,N,3), objective (M,)), best first, M = keep + n_samples (or n_samples with
    rounds=0).
    """
    t0 = time.perf_counter()
    total_budget = time_budget_s
    n_keep, rank_bonding = cfg.keep, cfg.rank_bonding
    if time_budget_s is not None and cfg.relocate_moves > 0:
        time_budget_s = time_budget_s * (1.0 - cfg.relocate_share)
    steps = cfg.steps
    if time_budget_s is not None:  # the first pass takes at most half the budget
        per_step = step_seconds(model, problem, n_samples, cfg.bonding)
        steps = max(min(steps, 12), min(steps, int(0.5 * time_budget_s / per_step)))
    x, _ = sample(model, schedule, problem, n_samples, cfg, steps=steps, seed=seed)
    x = finish(problem, x, cfg)
    # a round costs about restart_steps/steps of round 0; one that would overrun is not begun
    last = (time.perf_counter() - t0) * (cfg.restart_steps + cfg.polish_steps) / (steps + cfg.polish_steps)
    for r in range(cfg.rounds):
        t_round = time.perf_counter()
        if time_budget_s is not None and t_round - t0 + last > time_budget_s:
            break
        elite = x[torch.argsort(objective(problem, x, rank_bonding)[0])[:n_keep]]
        start = elite.repeat((n_samples + n_keep - 1) // n_keep, 1, 1)[:n_samples]
        half = n_samples // 2 if cfg.omit else 0
        sigma = cfg.restart_sigmas[r % len(cfg.restart_sigmas)]
        parts = [] if half == n_samples else [sample(
            model, schedule, problem, n_samples - half, cfg, steps=cfg.restart_steps,
            seed=seed + 1 + r, start=start[half:], sigma_start=sigma)[0]]
        if half:  # the worst-fitting atoms of the other half are sampled anew
            held = omit_mask(problem, start[:half], seed + 1 + r)
            parts.insert(0, sample(model, schedule, problem, half, cfg, steps=cfg.restart_steps,
                                   seed=seed + 1001 + r, start=start[:half],
                                   sigma_start=cfg.omit_sigma, keep=held)[0])
        x = torch.cat([elite, finish(problem, torch.cat(parts), cfg)])
        last = time.perf_counter() - t_round
    if cfg.relocate_moves > 0:
        obj = objective(problem, x, rank_bonding)[0]
        pick = distinct_patterns(site_pattern(problem, x).cpu().numpy(),
                                 torch.argsort(obj).cpu().numpy(), cfg.relocate_pool)
        pick = torch.tensor(pick, device=x.device)
        left = None if total_budget is None else max(0.0, total_budget - (time.perf_counter() - t0))
        moved = relocate(problem, x[pick], cfg, seed=seed, time_budget_s=left)
        x = torch.cat([moved, x])
    obj = objective(problem, x, rank_bonding)[0]
    order = torch.argsort(obj)
    return x[order], obj[order]


def finish(problem: Problem, frac: torch.Tensor, cfg: SamplerConfig) -> torch.Tensor:
    """Polish (cfg.polish_steps), swap labels where that fits the data better (up to
    cfg.swaps per structure, judged on R1), polish the swapped again."""
    x = polish(problem, frac, steps=cfg.polish_steps, bonding=cfg.bonding)
    if cfg.swaps <= 0:
        return x
    y = swap_labels(problem, x, rounds=cfg.swaps)
    moved = (y != x).any(-1).any(-1)
    if bool(moved.any()):
        y[moved] = polish(problem, y[moved], steps=max(1, cfg.polish_steps // 3), bonding=cfg.bonding)
    return y


def step_seconds(model: Denoiser | None, problem: Problem, n_samples: int,
                 bonding: float = 0.0) -> float:
    """Seconds one guided step of `sample` takes on n_samples structures (timed once on
    random structures), so that a search can fit its first pass into a time budget."""
    t = time.perf_counter()
    x = torch.rand(n_samples, problem.n_atoms, 3, generator=torch.Generator().manual_seed(0))
    x = x.to(problem.device)
    sig = torch.full((n_samples,), 0.5, device=problem.device)
    with torch.no_grad():
        if model is not None:
            denoiser_eps(model, problem, x, sig, model.context(problem))
        guidance_direction(problem, x, blur_for_sigma(sig), bonding)
    if problem.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def omit_mask(problem: Problem, frac: torch.Tensor, seed: int) -> torch.Tensor:
    """(B,N) bool: True for the atoms to keep; per structure the k atoms with the lowest
    `atom_fit` are left out, k drawn from 1..ceil(N/3) (torch.Generator(seed))."""
    B, N, _ = frac.shape
    gen = torch.Generator().manual_seed(seed)
    k = torch.randint(1, max(1, math.ceil(N / 3)) + 1, (B,), generator=gen)
    rank = torch.argsort(torch.argsort(atom_fit(problem, frac).cpu(), dim=1), dim=1)  # 0 = worst
    return (rank >= k[:, None]).to(frac.device)
