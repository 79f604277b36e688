"""The `diffusion` method of `xdxd.solve.sample_record`: guided sampling from the trained model.

    xdxd-prep x.cif --dmin 2.0 | xdxd-sample --method diffusion --samples 64 | xdxd-refine

Reads the problem record (cell, space group, composition without H, reflections), loads
the weights (default: the repository's weights/xdxd-diffusion.safetensors, or
$XDXD_WEIGHTS, or weights=...), draws `samples` structures in one batch with the
data-guided sampler (sampler.sample), polishes each with a short descent on the
amplitude misfit, searches around the best for a few rounds (sampler.search:
re-noise, denoise, keep the best) and returns them as candidates, lowest R1 first, for
xdxd-refine:
{"atoms": [...], "r1": R1, "cc": CC(|Fo|², |Fc|²), "method": "diffusion", "sample": i}.
"""
from __future__ import annotations

import time
from functools import lru_cache

import numpy as np

from xdxd.solve.diffusion.problem import problem_from_record

BONDING = 0.0        # weight of the bonding prior in guidance and polish (per unit of energy)
RANK_BONDING = 0.01  # R1 units per unit of bonding energy in the ranking and relocation moves
RELOCATE_MOVES = 2000  # relocation moves on the best distinct structures, at most
RELOCATE_SHARE = 0.2   # ... in this share of the time budget (greedy moves settle: the rest searches)
RELOCATE_PROPOSALS = 128  # places tried per relocation move (bin/relocation-completion: 32 -> 26/96, 128 -> 31/96)
MIN_PASS_S, MIN_PASS_SHARE = 5.0, 0.1  # a search ending with this much budget left (s, share) starts another
PASS_SEED = 7919       # seed offset of each further search pass


@lru_cache(maxsize=4)
def _model(path: str, device: str):
    from xdxd.model.diffusion import NoiseSchedule
    from xdxd.model.weights import load_model
    model, meta = load_model(path, device)
    return model, NoiseSchedule(model.cfg).to(device), meta


def sample(rec: dict, samples: int = 64, seed: int = 0, device: str = "cpu",
           time_budget_s: float | None = None, steps: int = 60, guidance: float = 1.0,
           rounds: int = 8, weights: str | None = None, prior: bool = True,
           bonding: float = BONDING, rank_bonding: float = RANK_BONDING,
           relocate_moves: int = RELOCATE_MOVES, relocate_share: float = RELOCATE_SHARE,
           relocate_proposals: int = RELOCATE_PROPOSALS, **sampler) -> tuple[list[dict], dict]:
    """Record -> (the `samples` best distinct candidates, info).

    `samples` structures are drawn in one batch and searched around for `rounds` rounds
    (xdxd.model.diffusion.search), or until time_budget_s is spent: a search that ends
    with more than a tenth of the budget (and 5 s) left is followed by another from new
    noise (seed + 7919 k), until the budget is spent; of all their populations
    the best are returned, one per site pattern (copies that differ only by an origin
    shift, the enantiomorph or the labels are dropped: crystal.statistics.distinct_patterns). prior=False samples
    without the network (data guidance alone, same schedule and search): the baseline
    that shows what the learned prior adds. bonding: weight of the bonding prior
    (model.bonding) in the guidance and polish; rank_bonding: R1 units per unit of its
    energy when candidates are ranked and relocations judged (0 and 0: the data alone
    decide); relocate_moves: relocation moves (model.moves) on the best distinct structures
    after the search, in relocate_share of the time budget (0: none), relocate_proposals
    places tried per move. sampler: further settings of
    xdxd.model.diffusion.search and sample (keep, restart_sigmas, restart_steps,
    polish_steps, tweedie, resample_every, b_max).
    """
    import torch
    from xdxd.crystal.statistics import distinct_patterns
    from xdxd.model.weights import resolve_weights
    from xdxd.solve.diffusion.sampler import search
    from xdxd.solve.diffusion.guidance import (agreement_of_amplitudes, amplitudes, bonding_energy,
                                               site_pattern)
    t0 = time.perf_counter()
    path = resolve_weights(weights)
    model, schedule, meta = _model(str(path), str(device))
    prob = problem_from_record(rec, device, seed)
    passes = []
    while True:  # a search that ends early leaves its time to another, from new noise
        left = None if time_budget_s is None else time_budget_s - (time.perf_counter() - t0)
        if passes and (left is None or left < max(MIN_PASS_S, MIN_PASS_SHARE * time_budget_s)):
            break
        x, _ = search(model if prior else None, schedule, prob, samples, steps=steps,
                                guidance=guidance, seed=seed + PASS_SEED * len(passes),
                                rounds=rounds, bonding=bonding, rank_bonding=rank_bonding,
                                relocate_moves=relocate_moves, relocate_share=relocate_share,
                                relocate_proposals=relocate_proposals,
                                time_budget_s=None if left is None else max(0.0, left), **sampler)
        passes.append(x)
    frac = torch.cat(passes)
    fc, uiso = amplitudes(prob, frac)
    r1, cc = (t.cpu().numpy() for t in agreement_of_amplitudes(prob, fc))
    uiso = uiso.cpu().numpy()
    energy = bonding_energy(prob, frac).cpu().numpy()
    order = np.argsort(r1 + rank_bonding * energy, kind="stable")
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
            "steps": steps, "guidance": guidance, "samples": samples, "rounds": rounds,
            "prior": prior, "bonding": bonding, "rank_bonding": rank_bonding,
            "relocate_moves": relocate_moves, "relocate_share": relocate_share,
            "relocate_proposals": relocate_proposals,
            "passes": len(passes),
            "site_orders": [int(round(1 / w)) for w in prob.site_weight.tolist()],
            "seconds": round(time.perf_counter() - t0, 3)}
    return out, info
