"""The `diffusion` method of `xdxd.solve.sample_record`: guided sampling from the trained model.

    xdxd-prep x.cif --dmin 2.0 | xdxd-sample --method diffusion --samples 64 | xdxd-refine

Reads the problem record (cell, space group, composition without H, reflections:
problem.problem_from_record), loads the weights (model.weights.resolve_weights), draws
`samples` structures in one batch with the data-guided sampler (sampler.sample),
polishes each with a short descent on the amplitude misfit, searches around the best
for a few rounds (sampler.search: re-noise, denoise, keep the best), moves atoms of the
best (moves.relocate) and returns them as candidates, lowest objective first, for
xdxd-refine:
{"atoms": [...], "r1": R1, "cc": CC(|Fo|², |Fc|²), "bonding": energy, "method": "diffusion", "sample": i}.
Every setting and its default is in config.SamplerConfig.
"""
from __future__ import annotations

import time
from dataclasses import asdict
from functools import lru_cache

import numpy as np

from xdxd.solve.diffusion.config import SamplerConfig
from xdxd.solve.diffusion.problem import problem_from_record
from xdxd.solve.options import config_from


@lru_cache(maxsize=4)
def _model(path: str, device: str):
    from xdxd.model.diffusion import NoiseSchedule
    from xdxd.model.weights import load_model
    model, meta = load_model(path, device)
    return model, NoiseSchedule(model.cfg).to(device), meta


def sample(rec: dict, samples: int = 64, seed: int = 0, device: str = "cpu",
           time_budget_s: float | None = None, weights: str | None = None,
           **options) -> tuple[list[dict], dict]:
    """Record -> (the `samples` best distinct candidates, info).

    options: fields of SamplerConfig to change (steps, rounds, guidance, prior, ...;
    ValueError for others). `samples` structures are drawn in one batch and searched
    around for cfg.rounds rounds (sampler.search), or until time_budget_s (s) is spent: a
    search that ends with more than cfg.min_pass_share of the budget (and cfg.min_pass_s)
    left is followed by another from new noise (seed + cfg.pass_seed k), until the budget
    is spent; of all their populations the best by R1 + cfg.rank_bonding × bonding energy
    are returned, one per site pattern (copies that differ only by an origin shift, the
    enantiomorph or the labels are dropped: crystal.statistics.distinct_patterns).
    prior=False samples without the network (data guidance alone, same schedule and
    search): the baseline that shows what the learned prior adds.
    """
    import torch
    from xdxd.crystal.statistics import distinct_patterns
    from xdxd.model.weights import resolve_weights
    from xdxd.solve.diffusion.guidance import (agreement_of_amplitudes, amplitudes, bonding_energy,
                                               site_pattern)
    from xdxd.solve.diffusion.sampler import search
    cfg = config_from(SamplerConfig, "diffusion", **options)
    t0 = time.perf_counter()
    path = resolve_weights(weights)
    model, schedule, meta = _model(str(path), str(device))
    prob = problem_from_record(rec, device, seed)
    passes = []
    while True:  # a search that ends early leaves its time to another, from new noise
        left = None if time_budget_s is None else time_budget_s - (time.perf_counter() - t0)
        if passes and (left is None or left < max(cfg.min_pass_s, cfg.min_pass_share * time_budget_s)):
            break
        x, _ = search(model if cfg.prior else None, schedule, prob, samples, cfg,
                      seed=seed + cfg.pass_seed * len(passes),
                      time_budget_s=None if left is None else max(0.0, left))
        passes.append(x)
    frac = torch.cat(passes)
    fc, uiso = amplitudes(prob, frac)
    r1, cc = (t.cpu().numpy() for t in agreement_of_amplitudes(prob, fc))
    uiso = uiso.cpu().numpy()
    energy = bonding_energy(prob, frac).cpu().numpy()
    order = np.argsort(r1 + cfg.rank_bonding * energy, kind="stable")
    keep = distinct_patterns(site_pattern(prob, frac).cpu().numpy(), order, samples)
    frac = frac.cpu().numpy()
    out = []
    for i in keep:
        count: dict[str, int] = {}
        atoms = []
        for e, xyz in zip(prob.elements, frac[i]):
            count[e] = count.get(e, 0) + 1
            atoms.append({"element": e, "label": f"{e}{count[e]}",
                          "xyz": [round(float(v), 6) for v in xyz],
                          "uiso": round(float(uiso[i]), 5), "occ": 1.0})
        out.append({"atoms": atoms, "r1": round(float(r1[i]), 5), "cc": round(float(cc[i]), 5),
                    "bonding": round(float(energy[i]), 3), "method": "diffusion",
                    "sample": int(i)})
    info = {"weights": str(path), "weights_steps": meta.get("training", {}).get("total_steps"),
            "samples": samples, **asdict(cfg), "passes": len(passes),
            "site_orders": [int(round(1 / w)) for w in prob.site_weight.tolist()],
            "seconds": round(time.perf_counter() - t0, 3)}
    return out, info
