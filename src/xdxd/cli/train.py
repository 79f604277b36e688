"""xdxd-train: train (or keep training) the diffusion model on structure shards.

    xdxd-train --data data/shards --out weights/ --steps 2000 --threads 1
    xdxd-train --data data/shards --data data/cod-shards --out weights/ --steps 50000 \\
               --batch 16 --device cuda            # GPU: bf16 autocast for the network

Weights go to <out>/xdxd-diffusion.safetensors (+ .json), the optimizer state to
<out>/xdxd-diffusion-train.pt. If weights already exist there (or --init names some),
training continues from them. Loss lines and validation on stderr.
"""
from __future__ import annotations

from typing import List, Optional

import typer

from xdxd.cli.common import (DeviceOpt, Log, QuietOpt, SeedOpt, ThreadsOpt, VersionOpt,
                             resolve_device, set_threads)

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def train(
    data: List[str] = typer.Option(..., "--data", help="Shard folder from xdxd-synth (repeatable)."),
    out: str = typer.Option("weights", "--out", help="Folder for the weights and checkpoint."),
    steps: int = typer.Option(1000, "--steps", help="Optimizer steps in this run."),
    batch: int = typer.Option(4, "--batch", help="Structures per step (each simulated afresh)."),
    draws: int = typer.Option(4, "--draws", help="Noise levels per structure per step."),
    lr: float = typer.Option(3e-4, "--lr", help="Peak AdamW learning rate (warm-up, cosine to 10 %)."),
    init: Optional[str] = typer.Option(None, "--init", "--resume",
                                       help="Weights to continue from (default: <out>/xdxd-diffusion.safetensors if present)."),
    hidden: int = typer.Option(64, "--hidden", help="Network width, for a fresh model only."),
    layers: int = typer.Option(4, "--layers", help="Message-passing layers, for a fresh model only."),
    max_atoms: int = typer.Option(40, "--max-atoms", help="Skip structures with more non-H ASU atoms."),
    log_every: int = typer.Option(50, "--log-every", help="Steps between loss lines."),
    val_every: int = typer.Option(500, "--val-every", help="Steps between validation samplings (0: never)."),
    save_every: int = typer.Option(500, "--save-every", help="Steps between checkpoints."),
    time_limit: float = typer.Option(0.0, "--time-limit", help="Stop and save after this many minutes (0: none)."),
    workers: int = typer.Option(0, "--workers", min=0, help="Processes that simulate the experiments beside training (0: none)."),
    seed: int = SeedOpt,
    device: str = DeviceOpt,
    threads: int = ThreadsOpt,
    quiet: bool = QuietOpt,
    version: bool = VersionOpt,
) -> None:
    """Train the diffraction-conditioned diffusion model; diffraction is simulated on the fly."""
    from xdxd.model.network import ModelConfig
    from xdxd.model.train import TrainConfig, train as run_train

    log = Log(quiet)
    set_threads(threads)
    dev = resolve_device(device)
    cfg = TrainConfig(steps=steps, batch=batch, draws=draws, lr=lr, max_atoms=max_atoms,
                      log_every=log_every, val_every=val_every, save_every=save_every,
                      seed=seed, time_limit_s=time_limit * 60.0, workers=workers)
    try:
        run_train(data, out, cfg, device=dev, init=init,
                  model_cfg=ModelConfig(hidden=hidden, layers=layers), log=log.info)
    except (FileNotFoundError, ValueError) as e:
        log.error(str(e))
        raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
