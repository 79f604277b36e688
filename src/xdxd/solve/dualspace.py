"""Dual-space structure solution: random atoms, E-maps and peak picking, recycled.

The classic route of SHELXD (Sheldrick & Schneider, Methods Enzymol. 1997; Usón &
Sheldrick, Curr. Opin. Struct. Biol. 1999) for small molecules, vectorised over a batch
of B independent trials:

    random atoms (B, N, 3) ──▶ E_calc of the strong reflections: point atoms, the
        ▲                      composition's elements on the peaks by height
        │                             │ phases φ_c
        │                             ▼
    keep ~70% of the peaks ◀── peaks of the E-map  sum |E_obs| exp(i φ_c)   (FFT)
        (random omit)              (N unique peaks, symmetry images merged)

After `cycles` cycles the last few, without omission, are scored by CC_all, the
correlation of E_obs² and E_calc² over all reflections (SHELXD's figure of merit), and
CC_weak over the weak reflections not used in phasing. The best trials get elements
by peak height (heaviest elements on the highest peaks), three cycles of xdxd.refine's
least squares, greedy element swaps, R1, and are returned as candidates, distinct by
their |F_calc| pattern.

    cands, info = solve(problem, samples=8, seed=0)      # problem = Problem.from_record(rec)
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import gemmi
import numpy as np
import torch

from xdxd import records
from xdxd.crystal import fourier, statistics, symmetry
from xdxd.crystal.chemistry import is_hydrogen
from xdxd.crystal.dataset import DataSet
from xdxd.crystal.structure_factors import StructureFactors
from xdxd.refine.least_squares import LsqOptions, refine_batch
from xdxd.refine.swaps import Verdict, greedy_swaps
from xdxd.solve.options import config_from


@dataclass
class DualSpaceOptions:
    """Settings of the dual-space search (defaults tuned on cod-dev organics at 1.0 Å)."""
    trials: int = 1024          # random starts at most (a time budget or success may stop earlier)
    batch: int = 64             # trials run together as one tensor batch
    cycles: int = 40            # real/reciprocal-space cycles per trial
    final_cycles: int = 4       # last cycles without random omit, each scored by CC_all
    omit: float = 0.3           # fraction of picked peaks left out at random (SHELXD "random omit")
    peak_factor: float = 1.0    # peaks picked per expected non-H atom
    e_min: float = 1.2          # reflections with |E| above this are phased ...
    strong_per_atom: float = 8  # ... but at least this many per atom, strongest first
    weak_fraction: float = 0.3  # the weakest reflections, for CC_weak
    atom_types: str = "composition"  # E_calc atoms: elements by peak rank, or "equal" point atoms
    weighting: str = "plain"    # E-map coefficients: plain |E_obs| e^{i phi_c}, or "sim" (|E_obs| tanh(|E_obs E_c|))
    merge_A: float = 0.6        # peaks closer than this (Å) to a higher peak or its image are one
    refine_cycles: int = 3      # least-squares cycles for each of the best trials
    stop_cc: float = 0.0        # stop launching batches once a trial reaches this CC_all (0: never)
    stop_r1: float = 0.12       # ... or once a refined candidate reaches this R1 (0: never)
    dtype: torch.dtype = torch.float32


@dataclass
class Problem:
    """What the search needs from a problem record: the data (reflections with |F| > 0),
    their normalised |E| (M,) and epsilon factors (M,), and the non-H atoms of the
    asymmetric unit (N,), heaviest first."""
    rid: str
    data: DataSet
    E: np.ndarray
    eps: np.ndarray
    elements: list[str]

    @classmethod
    def from_record(cls, rec: dict) -> "Problem":
        rid = str(rec.get("id", "?"))
        data = DataSet.from_record(rec).nonzero()
        comp = rec.get("composition")
        if not comp:
            raise records.RecordError(f"{rid}: no composition (element counts of the asymmetric unit)")
        if len(data) < 10:
            raise records.RecordError(f"{rid}: too few reflections ({len(data)}) to solve")
        comp = {e: float(n) for e, n in comp.items() if not is_hydrogen(e) and float(n) > 0}
        E = statistics.normalized_e(data.F, data.hkl, data.cell, data.spacegroup, comp,
                                    float(rec.get("hydrogens") or 0))
        if not np.all(np.isfinite(E)):
            raise records.RecordError(f"{rid}: |E| values are not finite (|F| up to {data.F.max():.3g}: "
                                      "check the data's scale)")
        eps = statistics.epsilon_factors(data.spacegroup, data.hkl)
        elements = records.composition_elements({e: int(round(n)) for e, n in comp.items()})
        elements.sort(key=lambda e: -gemmi.Element(e).atomic_number)
        if not elements:
            raise records.RecordError(f"{rid}: composition has no non-H atoms")
        return cls(rid, data, E, eps, elements)


@dataclass
class SearchState:
    """Best atoms of each finished trial: frac (T,N,3), height (T,N), weight (T,N), cc (T,)."""
    frac: list = field(default_factory=list)
    height: list = field(default_factory=list)
    weight: list = field(default_factory=list)
    cc: list = field(default_factory=list)
    cc_weak: list = field(default_factory=list)


class DualSpace:
    """The search for one problem, on one device; `run_batch` runs B trials."""

    def __init__(self, prob: Problem, opts: DualSpaceOptions, device: str = "cpu"):
        self.prob, self.opts = prob, opts
        self.device = torch.device(device)
        kw = dict(device=self.device, dtype=opts.dtype)
        N = len(prob.elements)
        self.n_pick = max(1, int(round(opts.peak_factor * N)))
        # strong reflections for phasing: |E| > e_min, at least strong_per_atom per atom
        order = np.argsort(-prob.E)
        n_strong = max(int((prob.E > opts.e_min).sum()), int(opts.strong_per_atom * N))
        self.strong = np.sort(order[:min(n_strong, len(order))])
        self.weak = np.sort(order[len(order) - max(1, int(opts.weak_fraction * len(order))):])
        # point atoms without temperature factor, the k-th highest peak carrying the k-th
        # heaviest element of the composition ("composition"), or all alike ("equal");
        # E_calc = F_calc / sqrt(sum of f² over the asymmetric unit) per reflection
        types = sorted(set(prob.elements)) if opts.atom_types == "composition" else ["C"]
        ranked = [e if opts.atom_types == "composition" else "C" for e in prob.elements]
        ranked += [ranked[-1]] * max(0, self.n_pick - N)
        self.type_rank = torch.tensor([types.index(e) for e in ranked[:self.n_pick]],
                                      device=self.device)                     # (K,)
        self.sf_strong = StructureFactors(prob.data.cell, prob.data.ops, prob.data.hkl[self.strong], types, **kw)
        self.sf_all = StructureFactors(prob.data.cell, prob.data.ops, prob.data.hkl, types, **kw)
        f2 = lambda sf: (sf.f0[self.type_rank] ** 2).sum(0).sqrt()           # (M,)
        self.f_strong, self.f_all = f2(self.sf_strong), f2(self.sf_all)
        self.e_strong = torch.tensor(prob.E[self.strong], **kw)               # (Ms,)
        self.e2_all = torch.tensor(prob.E ** 2, **kw)                         # (M,)
        self.eps_all = torch.tensor(prob.eps, **kw)                           # (M,)
        self.weak_idx = torch.tensor(self.weak, device=self.device)
        self.grid = fourier.FourierGrid(prob.data.cell, prob.data.ops, prob.data.hkl[self.strong],
                                        d_min_A=prob.data.d_min_A, device=self.device, dtype=opts.dtype)
        self.orth = torch.tensor(np.array(prob.data.cell.orth.mat), **kw)
        self.rot = torch.tensor(prob.data.ops.rot, **kw)                           # (O,3,3)
        self.tran = torch.tensor(prob.data.ops.tran, **kw)                         # (O,3)

    # -- one cycle -----------------------------------------------------------------
    def e_calc(self, frac: torch.Tensor, weight: torch.Tensor, strong: bool) -> torch.Tensor:
        """Complex E (B,Ms) or (B,M) of point atoms at frac (B,K,3), peaks highest first."""
        sf = self.sf_strong if strong else self.sf_all
        f = self.f_strong if strong else self.f_all
        B, K, _ = frac.shape
        u0 = torch.zeros(B, K, dtype=frac.dtype, device=self.device)
        return sf.calc(frac, self.type_rank[:K], u0, weight) / f

    def coefficients(self, ec: torch.Tensor) -> torch.Tensor:
        """E-map coefficients (B,Ms) from the current E_calc (B,Ms): |E_obs| w exp(i phi_c)."""
        amp = ec.abs()
        phase = ec / amp.clamp_min(1e-12)
        if self.opts.weighting == "sim":
            ecn = amp / amp.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-12)  # <|E_c|²> = 1
            return self.e_strong * torch.tanh(self.e_strong * ecn) * phase
        return self.e_strong * phase

    def pick(self, coef: torch.Tensor) -> fourier.Peaks:
        """Unique peaks (B, n_pick) of the map of coefficients (B, Ms)."""
        rho = self.grid.map(coef)                                             # (B,n1,n2,n3)
        pk = fourier.find_peaks(rho, 3 * self.n_pick + 6, mask=self.grid.asu_mask)
        pk = fourier.merge_images(pk, self.prob.data.ops, self.prob.data.cell, self.opts.merge_A)
        return fourier.Peaks(pk.frac[:, :self.n_pick], pk.height[:, :self.n_pick])

    def site_weight(self, pk: fourier.Peaks) -> torch.Tensor:
        """1 / (stabilizer order) for each peak, 0 for missing peaks (B,K)."""
        order = symmetry.stabilizer_order_torch(pk.frac, self.rot, self.tran, self.orth,
                                                0.5 * self.opts.merge_A)
        w = 1.0 / order.to(pk.frac.dtype)
        return torch.where(torch.isfinite(pk.height), w, torch.zeros_like(w))

    def figures_of_merit(self, frac: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CC_all and CC_weak (B,) between E_obs² and E_calc² (equal point atoms)."""
        ec2 = self.e_calc(frac, weight, strong=False).abs() ** 2 / self.eps_all  # (B,M)
        cc_all = statistics.pearson(self.e2_all, ec2)
        cc_weak = statistics.pearson(self.e2_all[self.weak_idx], ec2[:, self.weak_idx])
        return cc_all, cc_weak

    def run_batch(self, B: int, gen: torch.Generator):
        """B trials from random atoms; returns the best state of each over the final cycles."""
        o = self.opts
        dev, dt = self.device, o.dtype
        frac = torch.rand(B, self.n_pick, 3, generator=gen, device=dev, dtype=dt)  # (B,K,3)
        weight = torch.ones(B, self.n_pick, device=dev, dtype=dt)                # (B,K)
        best = None
        for cycle in range(o.cycles):
            ec = self.e_calc(frac, weight, strong=True)                           # (B,Ms)
            pk = self.pick(self.coefficients(ec))                                 # (B,K)
            frac, weight = pk.frac, self.site_weight(pk)
            if cycle < o.cycles - o.final_cycles:
                keep = torch.rand(B, self.n_pick, generator=gen, device=dev, dtype=dt) >= o.omit
                weight = weight * keep
                continue
            cc, ccw = self.figures_of_merit(frac, weight)
            h = pk.height
            if best is None:
                best = [frac, h, weight, cc, ccw]
            else:
                better = cc > best[3]
                best = [torch.where(better[:, None, None], frac, best[0]),
                        torch.where(better[:, None], h, best[1]),
                        torch.where(better[:, None], weight, best[2]),
                        torch.where(better, cc, best[3]), torch.where(better, ccw, best[4])]
        return best


# ---------------------------------------------------------------------------
# from trials to candidates

def assign_elements(height: np.ndarray, elements: list[str]) -> list[str]:
    """Elements (heaviest first) onto peaks by height: (N,) heights -> (N,) symbols."""
    order = np.argsort(-height, kind="stable")
    out = [""] * len(height)
    for rank, i in enumerate(order):
        out[i] = elements[min(rank, len(elements) - 1)]
    return out


def _refine(prob: Problem, elements, frac, weight, opts: DualSpaceOptions, device: str):
    """Short least-squares refinement of C candidates (xdxd.refine, all in one batch).

    elements: C lists of N symbols; frac (C,N,3); weight (C,N), 0 for missing peaks.
    Returns frac (C,N,3), uiso (C,N) Å², R1 (C,).
    """
    occ = (np.asarray(weight) > 0).astype(float)  # chemical occupancy; special positions found there
    res = refine_batch(prob.data, elements, frac, occ=occ, cycles=opts.refine_cycles,
                       opts=LsqOptions(device=device))
    return (np.array([r.frac for r in res]), np.array([r.uiso for r in res]),
            np.array([r.r1 for r in res]))


def solve(prob: Problem, samples: int = 8, seed: int = 0, device: str = "cpu",
          time_budget_s: float | None = None, opts: DualSpaceOptions | None = None,
          ) -> tuple[list[dict], dict]:
    """Run the dual-space search; return (candidates best first, run statistics).

    Each candidate: {"atoms", "r1", "cc", "cc_weak", "method": "dualspace", "trial"}.
    """
    opts = opts or DualSpaceOptions()
    t0 = time.perf_counter()
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    ds = DualSpace(prob, opts, device)
    state = SearchState()
    n_done = 0
    stopped = "trials"
    cands = None
    per_trial = None  # seconds per trial, timed on the first batch
    while n_done < opts.trials:
        if time_budget_s is not None and n_done and time.perf_counter() - t0 > time_budget_s:
            stopped = "time budget"
            break
        B = min(opts.batch, opts.trials - n_done)
        if time_budget_s is not None:  # a first small batch times a trial; then fill the budget
            left = time_budget_s - (time.perf_counter() - t0)
            B = min(B, max(8, int(left / per_trial)) if n_done else 16)
        t_batch = time.perf_counter()
        frac, height, weight, cc, ccw = ds.run_batch(B, gen)
        state.frac.append(frac.cpu()); state.height.append(height.cpu())
        state.weight.append(weight.cpu()); state.cc.append(cc.cpu()); state.cc_weak.append(ccw.cpu())
        n_done += B
        per_trial = (time.perf_counter() - t_batch) / B
        if opts.stop_cc and float(cc.max()) >= opts.stop_cc:
            stopped = "CC reached"
            break
        cands = None
        if opts.stop_r1:
            cands = _finish(prob, state, samples, opts, device)
            if cands and cands[0]["r1"] is not None and cands[0]["r1"] <= opts.stop_r1:
                stopped = "R1 reached"
                break
    if cands is None or stopped == "time budget":  # else the last check saw the same trials
        cands = _finish(prob, state, samples, opts, device)
    info = {"trials": n_done, "stopped": stopped, "time_s": round(time.perf_counter() - t0, 3),
            "best_cc": round(float(torch.cat(state.cc).max()), 4)}
    return cands, info


def _finish(prob: Problem, state: SearchState, samples: int, opts: DualSpaceOptions,
            device: str) -> list[dict]:
    """Best trials by CC_all -> elements, refinement, R1 -> distinct candidates."""
    cc = torch.cat(state.cc).numpy()                                          # (T,)
    ccw = torch.cat(state.cc_weak).numpy()
    frac = torch.cat(state.frac).numpy()                                      # (T,N,3)
    height = torch.cat(state.height).numpy()
    weight = torch.cat(state.weight).numpy()
    n_try = min(len(cc), max(2 * samples, 8))
    top = np.argsort(-cc, kind="stable")[:n_try]
    N = len(prob.elements)
    elements, fr, wt = [], [], []
    for t in top:
        ok = np.isfinite(height[t]) & (weight[t] > 0)
        idx = np.nonzero(ok)[0][:N]
        n_ok = len(idx)
        if n_ok < N:  # too few peaks: pad with copies at zero weight
            idx = np.concatenate([idx, np.full(N - n_ok, idx[-1] if n_ok else 0)])
        w = weight[t][idx].copy()
        w[n_ok:] = 0
        elements.append(assign_elements(height[t][idx], prob.elements))
        fr.append(frac[t][idx])
        wt.append(w)
    fr, wt = np.array(fr), np.array(wt)                                       # (C,N,3), (C,N)
    fr, uiso, r1 = _refine(prob, elements, fr, wt, opts, device)
    # the few best: greedy element swaps where they lower R1, then refine again
    best = np.argsort(r1, kind="stable")[:min(3, samples)]
    for i in best:
        elements[i] = swap_elements(prob, elements[i], fr[i], uiso[i], wt[i], device, opts.dtype)
    fr[best], uiso[best], r1[best] = _refine(prob, [elements[i] for i in best], fr[best], wt[best],
                                             opts, device)
    fc = _fcalc(prob, elements, fr, uiso, wt, device, opts.dtype)             # (C,M) |Fc|
    order = np.lexsort((-cc[top], r1))                                        # R1, then CC
    keep = statistics.distinct_patterns(fc, order, samples)
    out = []
    for i in keep:
        atoms = [{"element": e, "xyz": [round(float(v), 6) for v in fr[i][j]],
                  "uiso": round(float(uiso[i][j]), 5), "occ": 1.0}
                 for j, e in enumerate(elements[i]) if wt[i][j] > 0]
        out.append({"atoms": _label(atoms), "r1": _finite(r1[i]),
                    "cc": _finite(cc[top[i]]), "cc_weak": _finite(ccw[top[i]]),
                    "method": "dualspace", "trial": int(top[i])})
    return out


def _fcalc(prob: Problem, elements: list[list[str]], frac: np.ndarray, uiso: np.ndarray,
           weight: np.ndarray, device: str, dtype: torch.dtype) -> np.ndarray:
    """|Fc| (C,M) of C candidates with N atoms each."""
    types = sorted({e for els in elements for e in els})
    kw = dict(device=device, dtype=dtype)
    sf = StructureFactors(prob.data.cell, prob.data.ops, prob.data.hkl, types, **kw)
    tidx = torch.tensor([[types.index(e) for e in els] for els in elements], device=device)
    with torch.no_grad():
        fc = sf.calc(torch.tensor(frac, **kw), tidx, torch.tensor(uiso, **kw), torch.tensor(weight, **kw))
    return fc.abs().cpu().numpy()


def swap_elements(prob: Problem, elements: list[str], frac: np.ndarray, uiso: np.ndarray,
                  weight: np.ndarray, device: str = "cpu", dtype: torch.dtype = torch.float32,
                  rounds: int = 4) -> list[str]:
    """Greedy element swaps between any two atoms while R1 drops by 1e-3 (refine.swaps;
    composition kept). frac (N,3), uiso (N,), weight (N,): each swap is judged against the
    same atoms unswapped, both with the pair's Uiso set to the median (the refined Uiso
    had absorbed the wrong element's scattering); a round is one batch of |Fc|."""
    def judge(els, pairs, variants, uiso):
        if not variants:
            return uiso, []
        u = np.repeat(uiso[None], 2 * len(pairs), 0)                          # (2C,N)
        for c, (i, j) in enumerate(pairs):
            u[c, [i, j]] = u[len(pairs) + c, [i, j]] = np.median(uiso)
        trial = variants + [els] * len(pairs)
        C = len(trial)
        fc = _fcalc(prob, trial, np.repeat(frac[None], C, 0), u, np.repeat(weight[None], C, 0),
                    device, dtype)
        r = statistics.r1(prob.data.F[None].repeat(C, 0), fc).numpy()
        gain = r[len(pairs):] - r[:len(pairs)]                                # > 0: swap helps
        return uiso, [Verdict(float(g), u[c]) for c, g in enumerate(gain)]

    return greedy_swaps(elements, judge, uiso, rounds, min_gain=1e-3, groups=False)[0]


def _finite(x, digits: int = 5) -> float | None:
    """A number for the record: rounded, or None where NaN/inf (JSON has neither)."""
    x = float(x)
    return round(x, digits) if math.isfinite(x) else None


def _label(atoms: list[dict]) -> list[dict]:
    """Number atoms per element: C1, C2, ..., N1, ..."""
    count: dict[str, int] = {}
    for a in atoms:
        count[a["element"]] = count.get(a["element"], 0) + 1
        a["label"] = f"{a['element']}{count[a['element']]}"
    return atoms


def sample(rec: dict, samples: int = 8, seed: int = 0, device: str = "cpu",
           time_budget_s: float | None = None, **opts) -> tuple[list[dict], dict]:
    """The `dualspace` method of `xdxd.solve.sample_record`: record -> (candidates, info).

    opts: any field of DualSpaceOptions (trials, batch, cycles, omit, ...).
    """
    settings = config_from(DualSpaceOptions, "dualspace", **opts)
    return solve(Problem.from_record(rec), samples, seed, device, time_budget_s, settings)
