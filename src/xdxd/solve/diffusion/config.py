"""The diffusion sampler's settings, with their defaults in one place.

What `xdxd-sample --method diffusion` runs is `SamplerConfig()`; the command's options
(--steps, --rounds, --guidance, --no-prior) and `sample_record(rec, "diffusion", **opts)`
override single fields (solve.options.config_from). Experiments pass their own SamplerConfig instead of patching
module constants. Units: Å for lengths and noise levels, Å² for blurs, s for time.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SamplerConfig:
    # the guided sampler (sampler.sample)
    steps: int = 60                      # denoising steps from noise in the first pass
    guidance: float = 1.0                # weight of the |F| misfit gradient (unit RMS per atom)
    prior: bool = True                   # use the network; False: data guidance alone (baseline)
    b_max: float = 30.0                  # Å², cap of the blur 8 pi² sigma² on |Fo| and |Fc|
    tweedie: bool = True                 # guidance at the denoised estimate x0, not at x
    resample_every: int = 0              # resample the population every so many steps (0: never)
    resample_ess: float = 0.5            # ... to this effective sample size, share of the population
    chunk: int = 64                      # structures per network call
    bonding: float = 0.0                 # weight of the bonding prior in guidance and polish (per unit)
    # the search around the best (sampler.search)
    rounds: int = 8                      # search rounds after the first pass
    keep: int = 8                        # best structures kept and re-noised each round
    restart_sigmas: tuple = (0.8, 1.2, 0.5)  # Å, re-noising levels, cycled through the rounds
    restart_steps: int = 30              # denoising steps of a restart
    polish_steps: int = 60               # descent steps on the misfit after each pass
    swaps: int = 3                       # greedy label swaps per structure after each polish
    omit: bool = False                   # half the restarts resample only the worst-fitting atoms
    omit_sigma: float = 2.0              # Å, their restart level
    rank_bonding: float = 0.01           # R1 units per unit of bonding energy in ranking and moves
    # relocation moves on the best distinct structures (moves.relocate)
    relocate_moves: int = 2000           # moves at most
    relocate_share: float = 0.2          # share of the time budget they take
    relocate_pool: int = 32              # distinct structures moved
    relocate_proposals: int = 128        # places tried per move
    relocate_temperature: tuple = (0.0, 0.0)  # Metropolis T (start, end), objective units; 0: greedy
    relocate_polish_every: int = 25      # a short polish every so many moves
    bond_range: tuple = (0.82, 1.06)     # proposed bond lengths, times r_i + r_j (C=O 0.87, C-C 1.05)
    worst_share: float = 0.5             # share of moves that take the atom sitting worst in the density
    free_share: float = 0.1              # share of places anywhere in the cell (water, ions)
    map_share: float = 0.5               # share of places at difference-map peaks (model phases)
    map_peaks: int = 12                  # difference-map peaks kept per structure
    map_jitter: float = 0.2              # Å, spread of a place around its peak
    # passes within a time budget (the diffusion method)
    min_pass_s: float = 5.0              # a search ending with this much budget left (s) ...
    min_pass_share: float = 0.1          # ... and this share of it starts another from new noise
    pass_seed: int = 7919                # seed offset of each further pass
