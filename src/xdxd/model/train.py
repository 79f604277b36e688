"""Training: diffraction on the fly from structure shards, denoising score matching, checkpoints.

    xdxd-train --data data/shards --out weights/ --steps 20000 --batch 4 --device cuda

Each step draws `batch` structures; for each, a fresh diffraction experiment is simulated
with crystal.structure_factors (H atoms included in the data, never in the model):
d_min ~ U(0.9, 3.0) Å, Uiso ~ U(0.02, 0.08) Å² with per-atom jitter, noise on |F|, 0-20 %
of the reflections missing. `draws` noise levels per structure share that experiment.
Loss: mean squared error between the network's eps and the wrapped-normal target
(diffusion.wrapped_normal_eps), logged overall and by noise band.

Checkpoints: <out>/xdxd-diffusion.safetensors (+ .json) and <out>/xdxd-diffusion-train.pt
(optimizer and step, for --resume). When weights exist at the init path (default: the
output file) training continues from them, so the shipped model improves step by step.
"""
from __future__ import annotations

import datetime as _dt
import math
import os
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable

import gemmi
import numpy as np
import torch

from xdxd.crystal.dataset import simulate as simulate_data
from xdxd.crystal.symmetry import SymOps, find_spacegroup, stabilizer_order, symops
from xdxd.model.diffusion import NoiseSchedule, add_noise, wrapped_normal_eps
from xdxd.model.network import Denoiser, ModelConfig
from xdxd.model.weights import WEIGHTS_NAME, load_model, save_model
from xdxd.score import site_match
from xdxd.solve.diffusion.guidance import polish
from xdxd.solve.diffusion.problem import Problem, make_problem
from xdxd.solve.diffusion.sampler import denoiser_eps, sample


@dataclass
class TrainConfig:
    steps: int = 1000            # optimizer steps in this run
    batch: int = 4               # structures per step
    draws: int = 4               # noise levels per structure (share one simulated experiment)
    lr: float = 3e-4             # AdamW learning rate (cosine decay to 10 % over the run)
    weight_decay: float = 0.0
    grad_clip: float = 1.0       # max gradient norm
    d_min_range_A: tuple = (0.9, 3.0)   # resolution drawn uniformly, Å
    uiso_range_A2: tuple = (0.02, 0.08)  # overall Uiso drawn uniformly, Å²
    f_noise_max: float = 0.05    # relative noise on |F| drawn from U(0, f_noise_max)
    missing_max: float = 0.2     # fraction of reflections dropped, U(0, missing_max)
    sigma_focus_A: tuple = (0.05, 2.0)  # noise band where structures form and the search
    sigma_focus_share: float = 0.6       # restarts; this share of draws comes from it
    max_atoms: int = 40          # skip structures with more non-H ASU atoms
    max_images: int = 480        # skip structures with more atoms in the cell (non-H)
    log_every: int = 50          # steps between loss lines
    val_every: int = 500         # steps between validation samplings (0: never)
    save_every: int = 500        # steps between checkpoints
    val_structures: int = 4      # held-out structures sampled at validation
    val_samples: int = 8
    val_steps: int = 40
    val_d_min_A: float = 2.0
    seed: int = 0
    time_limit_s: float = 0.0    # stop (and save) after this wall time; 0: no limit
    workers: int = 0             # processes simulating experiments (0: in the training loop)


# ---------------------------------------------------------------------------
# data

@dataclass
class Structure:
    """One training crystal: cell (6,), Hall symbol, Z (A,), frac (A,3), is_h (A,)."""
    id: str
    cell: np.ndarray
    hall: str
    z: np.ndarray
    frac: np.ndarray
    is_h: np.ndarray


def read_structures(folders: Iterable[str | os.PathLike]) -> list[Structure]:
    """All structures of xdxd-synth shard folders (xdxd.synth.shards.iter_structures)."""
    from xdxd.synth.shards import iter_structures
    out = []
    for folder in folders:
        for s in iter_structures(str(folder)):
            out.append(Structure(str(s["id"]), np.asarray(s["cell"], dtype=float), str(s["hall"]),
                                 np.asarray(s["atomic_number"], dtype=int),
                                 np.asarray(s["frac"], dtype=float),
                                 np.asarray(s["is_hydrogen"], dtype=bool)))
    return out


def split_holdout(structures: list[Structure], n_val: int) -> tuple[list, list]:
    """Every k-th structure (by position) is held out, up to n_val of them."""
    if n_val <= 0 or len(structures) < 4 * n_val:
        return structures, []
    stride = len(structures) // n_val
    val_idx = set(range(stride // 2, len(structures), stride)[:n_val])
    train = [s for i, s in enumerate(structures) if i not in val_idx]
    return train, [structures[i] for i in sorted(val_idx)]


@lru_cache(maxsize=1024)
def _ops(hall: str) -> tuple[gemmi.SpaceGroup, SymOps]:
    sg = find_spacegroup(hall=hall)
    return sg, symops(sg)


def usable(s: Structure, cfg: TrainConfig) -> bool:
    """Fits the size limits and has no non-H atom on a special position (not modelled yet)."""
    heavy = ~s.is_h
    n = int(heavy.sum())
    if n < 2 or n > cfg.max_atoms:
        return False
    sg, ops = _ops(s.hall)
    if n * len(ops) > cfg.max_images:
        return False
    cell = gemmi.UnitCell(*s.cell)
    return bool(np.all(stabilizer_order(s.frac[heavy], ops, cell) == 1))


@dataclass
class Example:
    problem: Problem
    frac: torch.Tensor  # (N,3) true ASU non-H coordinates
    d_min_A: float

    def to(self, device: str | torch.device) -> "Example":
        return Example(self.problem.to(device), self.frac.to(device), self.d_min_A)


class ExampleStream(torch.utils.data.IterableDataset):
    """Endless simulated experiments on random training structures, built on the CPU.

    With a torch DataLoader and num_workers > 0 each worker runs its own stream (seeded
    with (seed, worker id)), so simulation runs beside the training step; the loader
    hands the examples out round-robin, in the same order every time.
    """

    def __init__(self, structures: list[Structure], cfg: "TrainConfig", max_tokens: int,
                 seed: int):
        self.structures, self.cfg, self.max_tokens, self.seed = structures, cfg, max_tokens, seed

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid = info.id if info is not None else 0
        rng = np.random.default_rng([self.seed, wid])
        gen = torch.Generator().manual_seed(self.seed * 1009 + wid)
        while True:
            s = self.structures[int(rng.integers(len(self.structures)))]
            ex = simulate(s, rng, gen, self.cfg, "cpu", self.max_tokens)
            if ex is not None:
                yield ex


def simulate(s: Structure, rng: np.random.Generator, gen: torch.Generator, cfg: TrainConfig,
             device: str, max_tokens: int, d_min_A: float | None = None,
             clean: bool = False) -> Example | None:
    """A diffraction experiment on structure s (crystal.dataset.simulate, the one xdxd-prep
    uses), augmented unless clean: d_min, overall Uiso with per-atom jitter, relative noise
    on |F| and a share of reflections missing drawn from cfg's ranges. As an Example."""
    sg, ops = _ops(s.hall)
    cell = gemmi.UnitCell(*s.cell)
    d_min = d_min_A if d_min_A is not None else rng.uniform(*cfg.d_min_range_A)
    elements = [gemmi.Element(int(z)).name for z in s.z]
    u0 = 0.04 if clean else rng.uniform(*cfg.uiso_range_A2)
    uiso = np.where(s.is_h, 1.2 * u0, u0 *
                    np.clip(1 + (0 if clean else 0.15) * rng.standard_normal(len(s.z)), 0.6, 1.6))
    noise = 0.0 if clean else rng.uniform(0, cfg.f_noise_max)
    missing = 0.0 if clean else rng.uniform(0, cfg.missing_max)
    try:
        data = simulate_data(cell, sg, elements, s.frac, uiso, np.ones(len(s.z)), d_min,
                             noise=noise, rng=rng, missing=missing)
    except ValueError:
        return None
    if len(data) < 8:
        return None
    heavy = ~s.is_h
    problem = make_problem(data, [e for e, h in zip(elements, heavy) if h],
                           hydrogens=int(s.is_h.sum()), device=device, max_tokens=max_tokens,
                           generator=gen)
    frac = torch.tensor(s.frac[heavy], dtype=torch.float32, device=device)
    return Example(problem, frac, d_min)


# ---------------------------------------------------------------------------
# loss

def diffusion_loss(model: Denoiser, schedule: NoiseSchedule, ex: Example, draws: int,
                   gen: torch.Generator, focus: tuple[float, float] | None = None,
                   focus_share: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Score-matching loss for one example at `draws` noise levels (focus, focus_share:
    see NoiseSchedule.sample_sigma).

    Returns (mean loss, per-draw loss (draws,), sigma (draws,) Å).
    """
    p = ex.problem
    dev = p.device
    sigma = schedule.sample_sigma(draws, gen, focus, focus_share).to(dev)  # (S,)
    noise = torch.randn(draws, p.n_atoms, 3, generator=gen).to(dev)  # (S,N,3) Å/sigma
    x0 = ex.frac[None].expand(draws, -1, -1)  # (S,N,3)
    xt = add_noise(x0, sigma, p.deorth, noise)
    target = wrapped_normal_eps(xt, x0, sigma, p.orth)  # (S,N,3)
    context = model.context(p)
    eps, _, _ = denoiser_eps(model, p, xt, sigma, context)
    per = ((eps - target) ** 2).sum(-1).mean(-1)  # (S,)
    return per.mean(), per.detach(), sigma


# ---------------------------------------------------------------------------
# validation: does sampling find the structure?

def validate(model: Denoiser, schedule: NoiseSchedule, val: list[Structure], cfg: TrainConfig,
             device: str, max_tokens: int) -> dict:
    """Sample each held-out structure at val_d_min_A; best site match over samples."""
    if not val:
        return {}
    model.eval()
    rng = np.random.default_rng(12345)
    gen = torch.Generator().manual_seed(12345)
    matches = []
    for s in val:
        ex = simulate(s, rng, gen, cfg, device, max_tokens, d_min_A=cfg.val_d_min_A, clean=True)
        if ex is None:
            continue
        frac, _ = sample(model, schedule, ex.problem, cfg.val_samples, steps=cfg.val_steps, seed=0)
        frac = polish(ex.problem, frac).cpu().numpy()
        cell = gemmi.UnitCell(*s.cell)
        true = s.frac[~s.is_h]
        matches.append(max(site_match(cell, s.hall, f, true) for f in frac))
    model.train()
    m = np.array(matches)
    return {"val_match": float(m.mean()) if len(m) else float("nan"),
            "val_solved": int((m >= 0.9).sum()), "val_n": int(len(m))}


# ---------------------------------------------------------------------------
# the loop

def lr_at(step: int, total: int, base: float) -> float:
    warmup = max(1, min(100, total // 10))
    if step < warmup:
        return base * (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def train(data: list[str], out: str | os.PathLike, cfg: TrainConfig, device: str = "cpu",
          init: str | os.PathLike | None = None, model_cfg: ModelConfig | None = None,
          log: Callable[[str], None] = lambda msg: None,
          structures: list[Structure] | None = None) -> dict:
    """Train (or continue training) and save weights in `out`; returns the run summary.

    init: weights to start from (default: <out>/xdxd-diffusion.safetensors if present);
    its optimizer state (<stem>-train.pt beside it) is restored when present.
    structures: already-read structures (tests); otherwise read from `data`.
    """
    t_start = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights_path = out / WEIGHTS_NAME
    state_path = out / WEIGHTS_NAME.replace(".safetensors", "-train.pt")
    init_path = Path(init) if init else (weights_path if weights_path.exists() else None)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)

    history: list = []
    step0 = 0
    if init_path is not None:
        model, meta = load_model(init_path, device)
        history = list(meta.get("training", {}).get("runs", []))
        step0 = int(meta.get("training", {}).get("total_steps", 0))
        log(f"continuing from {init_path} ({step0} steps so far)")
    else:
        model = Denoiser(model_cfg or ModelConfig()).to(device)
        log("starting from random weights")
    model.train()
    schedule = NoiseSchedule(model.cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    init_state = Path(str(init_path).replace(".safetensors", "-train.pt")) if init_path else None
    if init_state is not None and init_state.exists():
        st = torch.load(init_state, map_location=device, weights_only=True)
        if st.get("total_steps") == step0:
            opt.load_state_dict(st["optimizer"])
            log(f"optimizer state restored from {init_state}")

    if structures is None:
        structures = read_structures(data)
    n_read = len(structures)
    structures = [s for s in structures if usable(s, cfg)]
    train_set, val_set = split_holdout(structures, cfg.val_structures)
    if not train_set:
        raise ValueError(f"no usable training structures in {data} ({n_read} read)")
    log(f"{n_read} structures read, {len(train_set)} for training, {len(val_set)} held out; "
        f"model {model.n_params():,} parameters on {device}")

    curve: list = []
    run = {"data": [str(d) for d in data], "n_structures": len(train_set), "device": str(device),
           "start_step": step0, "config": {k: (list(v) if isinstance(v, tuple) else v)
                                           for k, v in asdict(cfg).items()},
           "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    acc = {"loss": 0.0, "low": [], "mid": [], "high": [], "n": 0, "t": time.time()}
    last_val: dict = {}
    step = 0

    def checkpoint():
        run.update(end_step=step0 + step, steps=step,
                   wall_s=round(time.time() - t_start, 1), loss_curve=curve, **last_val)
        training = {"total_steps": step0 + step, "runs": history + [run],
                    "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        save_model(model, weights_path, training)
        torch.save({"optimizer": opt.state_dict(), "total_steps": step0 + step}, state_path)

    stream = None
    if cfg.workers > 0:  # simulation in worker processes, beside the training step
        loader = torch.utils.data.DataLoader(
            ExampleStream(train_set, cfg, model.cfg.max_tokens, cfg.seed * 7919 + step0),
            batch_size=None, num_workers=cfg.workers, prefetch_factor=4,
            persistent_workers=True)
        stream = iter(loader)
    for step in range(1, cfg.steps + 1):
        for g in opt.param_groups:
            g["lr"] = lr_at(step - 1, cfg.steps, cfg.lr)
        opt.zero_grad(set_to_none=True)
        losses = []
        n_ok = 0
        while n_ok < cfg.batch:
            if stream is not None:
                ex = next(stream).to(device)
            else:
                s = train_set[int(rng.integers(len(train_set)))]
                ex = simulate(s, rng, gen, cfg, device, model.cfg.max_tokens)
            if ex is None:
                continue
            loss, per, sig = diffusion_loss(model, schedule, ex, cfg.draws, gen,
                                            tuple(cfg.sigma_focus_A), cfg.sigma_focus_share)
            (loss / cfg.batch).backward()
            losses.append(loss.item())
            for v, sg_ in zip(per.tolist(), sig.tolist()):
                acc["low" if sg_ < 0.1 else "mid" if sg_ < 1.0 else "high"].append(v)
            n_ok += 1
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        acc["loss"] += float(np.mean(losses))
        acc["n"] += 1
        if step % cfg.log_every == 0 or step == cfg.steps:
            mean = acc["loss"] / acc["n"]
            bands = {k: (float(np.mean(acc[k])) if acc[k] else float("nan"))
                     for k in ("low", "mid", "high")}
            rate = acc["n"] / (time.time() - acc["t"])
            curve.append([step0 + step, round(mean, 4)])
            log(f"step {step0 + step} loss {mean:.4f} (sigma<0.1 Å {bands['low']:.3f}, "
                f"0.1-1 Å {bands['mid']:.3f}, >1 Å {bands['high']:.3f}) "
                f"lr {opt.param_groups[0]['lr']:.2e} {rate:.2f} steps/s")
            acc = {"loss": 0.0, "low": [], "mid": [], "high": [], "n": 0, "t": time.time()}
        if cfg.val_every and step % cfg.val_every == 0:
            last_val = validate(model, schedule, val_set, cfg, device, model.cfg.max_tokens)
            if last_val:
                log(f"step {step0 + step} validation: site match {last_val['val_match']:.3f}, "
                    f"{last_val['val_solved']}/{last_val['val_n']} solved (>= 90 % sites within 0.5 Å)")
        if step % cfg.save_every == 0:
            checkpoint()
        if cfg.time_limit_s and time.time() - t_start > cfg.time_limit_s:
            log(f"time limit reached after {step} steps")
            break
    checkpoint()
    log(f"saved {weights_path} ({step0 + step} steps in total)")
    return run
