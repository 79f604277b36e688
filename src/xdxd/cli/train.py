"""xdxd-train: train (or keep training) the diffusion model on structure shards.

    xdxd-train --data data/shards -o weights/ --steps 2000 --threads 1
    xdxd-train --data data/shards --data data/cod-shards -o weights/ --steps 50000 \\
               --batch 16 --device cuda            # GPU: bf16 autocast for the network

Weights go to <output>/xdxd-diffusion.safetensors (+ .json), the optimizer state to
<output>/xdxd-diffusion-train.pt. If weights already exist there (or --init names some),
training continues from them. Loss lines and validation on stderr.
"""
from __future__ import annotations

from typing import List, Optional

import typer

from xdxd.cli.common import (DeviceOpt, Log, OldOutOpt, QuietOpt, SeedOpt, ThreadsOpt, VersionOpt,
                             renamed, resolve_device, set_threads)

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def train(
    ctx: typer.Context,
    data: List[str] = typer.Option(..., "--data", help="Shard folder from xdxd-synth (repeatable)."),
    output: str = typer.Option("weights", "--output", "-o", help="Folder for the weights and checkpoint."),
    steps: int = typer.Option(1000, "--steps", help="Optimizer steps in this run."),
    batch: int = typer.Option(4, "--batch", help="Structures per step (each simulated afresh)."),
    draws: int = typer.Option(4, "--draws", help="Noise levels per structure per step."),
    lr: float = typer.Option(3e-4, "--lr", help="Peak AdamW learning rate (warm-up, cosine to 10 %)."),
    init: Optional[str] = typer.Option(None, "--init", "--resume",
                                       help="Weights to continue from (default: <output>/xdxd-diffusion.safetensors if present)."),
    hidden: int = typer.Option(64, "--hidden", help="Network width, for a fresh model only."),
    layers: int = typer.Option(4, "--layers", help="Message-passing layers, for a fresh model only."),
    max_atoms: int = typer.Option(40, "--max-atoms", help="Skip structures with more non-H ASU atoms."),
    log_every: int = typer.Option(50, "--log-every", help="Steps between loss lines."),
    val_every: int = typer.Option(500, "--val-every", help="Steps between validation samplings (0: never)."),
    save_every: int = typer.Option(500, "--save-every", help="Steps between checkpoints."),
    time_budget: Optional[float] = typer.Option(None, "--time-budget", min=0.0,
                                                help="Stop and save after this many seconds (default or 0: no limit)."),
    workers: int = typer.Option(0, "--workers", min=0, help="Processes that simulate the experiments beside training (0: none)."),
    seed: int = SeedOpt,
    device: str = DeviceOpt,
    threads: int = ThreadsOpt,
    quiet: bool = QuietOpt,
    version: bool = VersionOpt,
    out: Optional[str] = OldOutOpt,
    time_limit: Optional[float] = typer.Option(None, "--time-limit", hidden=True,
                                               help="Old form of --time-budget, in minutes."),
) -> None:
    """Train the diffraction-conditioned diffusion model; diffraction is simulated on the fly."""
    from xdxd.model.network import ModelConfig
    from xdxd.model.train import TrainConfig, train as run_train

    output = renamed(ctx, "output", output, "--out", out)
    limit_s = None if time_limit is None else 60.0 * time_limit  # --time-limit is in minutes
    time_budget = renamed(ctx, "time_budget", time_budget, "--time-limit", limit_s)
    log = Log(quiet)
    set_threads(threads)
    dev = resolve_device(device)
    cfg = TrainConfig(steps=steps, batch=batch, draws=draws, lr=lr, max_atoms=max_atoms,
                      log_every=log_every, val_every=val_every, save_every=save_every,
                      seed=seed, time_limit_s=time_budget or 0.0, workers=workers)
    try:
        run_train(data, output, cfg, device=dev, init=init,
                  model_cfg=ModelConfig(hidden=hidden, layers=layers), log=log.info)
    except (FileNotFoundError, ValueError) as e:
        log.error(str(e))
        raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
