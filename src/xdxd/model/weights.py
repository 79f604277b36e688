"""Weights I/O: one safetensors file with the config in its metadata, one loader for all.

    weights/xdxd-diffusion.safetensors   tensors + metadata {"config": ModelConfig JSON,
                                         "training": JSON of data, steps, date, losses}
    weights/xdxd-diffusion.json          the same metadata, for people and tools
    weights/xdxd-diffusion-train.pt      optimizer state for resuming (not committed if large)

Which weights `xdxd-sample --method diffusion` loads, the first of (`resolve_weights`):

    --weights FILE|DIR         weights= in the library; a folder holds xdxd-diffusion.safetensors
    $XDXD_WEIGHTS FILE|DIR
    <installed xdxd>/weights/  package data: pip install copies the top-level weights/ there
    <checkout>/weights/        the source checkout the code runs from (xdxd-train writes here)

A --weights or $XDXD_WEIGHTS that names no file is an error, not a step to the next place.
"""
from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from xdxd.model.network import Denoiser, ModelConfig

WEIGHTS_NAME = "xdxd-diffusion.safetensors"
HOW_TO_GET = ("train them with `xdxd-train --data SHARDS --output weights/`, or point --weights or "
              "$XDXD_WEIGHTS at a .safetensors file")


class WeightsError(FileNotFoundError):
    pass


def weights_search_path() -> list[tuple[str, Path]]:
    """Where the shipped weights may be, in search order: (what, file)."""
    package = Path(str(resources.files("xdxd") / "weights" / WEIGHTS_NAME))
    checkout = Path(__file__).resolve().parents[3] / "weights" / WEIGHTS_NAME
    return [("package data", package), ("source checkout", checkout)]


def default_weights_path() -> Path:
    """$XDXD_WEIGHTS if set, else the first file of weights_search_path() that exists."""
    env = os.environ.get("XDXD_WEIGHTS")
    if env:
        return _existing(env, "$XDXD_WEIGHTS")
    places = weights_search_path()
    for _, p in places:
        if p.exists():
            return p
    looked = "; ".join(f"{what}: {p}" for what, p in places)
    raise WeightsError(f"no diffusion weights found (--weights not given, $XDXD_WEIGHTS not set; "
                       f"looked at {looked}): {HOW_TO_GET}")


def resolve_weights(path: str | os.PathLike | None = None) -> Path:
    """The weights file to load: `path` (--weights), else default_weights_path().

    A folder means <folder>/xdxd-diffusion.safetensors. Raises WeightsError if there is none.
    """
    if path in (None, ""):
        return default_weights_path()
    return _existing(path, "--weights")


def _existing(path: str | os.PathLike, given_by: str) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / WEIGHTS_NAME
    if not p.exists():
        raise WeightsError(f"no diffusion weights at {p} (from {given_by}): {HOW_TO_GET}")
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
    """(model in eval mode on device, metadata) from a weights file (see resolve_weights);
    strict key match."""
    p = resolve_weights(path)
    meta = read_metadata(p)
    model = Denoiser(ModelConfig.from_dict(meta["config"]))
    model.load_state_dict(load_file(str(p)), strict=True)
    return model.to(device).eval(), meta
