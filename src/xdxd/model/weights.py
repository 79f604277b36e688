"""Weights I/O: one safetensors file with the config in its metadata, one loader for all.

    weights/xdxd-diffusion.safetensors   tensors + metadata {"config": ModelConfig JSON,
                                         "training": JSON of data, steps, date, losses}
    weights/xdxd-diffusion.json          the same metadata, for people and tools
    weights/xdxd-diffusion-train.pt      optimizer state for resuming (not committed if large)

`default_weights_path()` is the repository's weights/ folder (or $XDXD_WEIGHTS).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from xdxd.model.network import Denoiser, ModelConfig

WEIGHTS_NAME = "xdxd-diffusion.safetensors"


class WeightsError(FileNotFoundError):
    pass


def default_weights_path() -> Path:
    """$XDXD_WEIGHTS if set, else <repo>/weights/xdxd-diffusion.safetensors."""
    env = os.environ.get("XDXD_WEIGHTS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "weights" / WEIGHTS_NAME


def resolve_weights(path: str | os.PathLike | None) -> Path:
    """A weights file path; a folder means <folder>/xdxd-diffusion.safetensors."""
    p = default_weights_path() if path in (None, "") else Path(path)
    if p.is_dir():
        p = p / WEIGHTS_NAME
    return p


def save_model(model: Denoiser, path: str | os.PathLike, training: dict | None = None) -> Path:
    """Write tensors + metadata, and the metadata as JSON beside (same stem, .json)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": "xdxd-diffusion/1", "config": model.cfg.to_dict(),
            "n_params": model.n_params(), "training": training or {}}
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"xdxd": json.dumps(meta)})
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return path


def read_metadata(path: str | os.PathLike) -> dict:
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["xdxd"])


def load_model(path: str | os.PathLike | None = None, device: str | torch.device = "cpu"
               ) -> tuple[Denoiser, dict]:
    """(model in eval mode on device, metadata) from a weights file; strict key match."""
    p = resolve_weights(path)
    if not p.exists():
        raise WeightsError(
            f"no diffusion weights at {p}: train them with `xdxd-train --data SHARDS --out "
            f"weights/`, or point --weights / $XDXD_WEIGHTS at a .safetensors file")
    meta = read_metadata(p)
    model = Denoiser(ModelConfig.from_dict(meta["config"]))
    model.load_state_dict(load_file(str(p)), strict=True)
    return model.to(device).eval(), meta
