"""Training shards: a folder of shard-00000.safetensors, ... plus index.json.

One shard holds S structures, A atoms in all (asymmetric-unit atoms only):
    cell           (S,6)   float32  a, b, c in Å; α, β, γ in °
    sg_number      (S,)    int32    International Tables number
    hall_index     (S,)    int32    index into metadata "halls" (JSON list of Hall symbols,
                                    the structure's own setting)
    atom_offset    (S+1,)  int64    atoms of structure s: atom_offset[s]:atom_offset[s+1]
    atomic_number  (A,)    int16
    frac           (A,3)   float32  fractional coordinates in [0, 1)
    is_hydrogen    (A,)    bool
Metadata (strings): "halls" and "ids" (JSON lists), "format" = "xdxd-shard-1".
Expanding a structure's atoms with xdxd.crystal.symmetry.apply_ops / unique_images gives
the full crystal; atoms on special positions are listed once.

index.json: {"format", "shards": [{"file", "count", "atoms"}], "count", "settings", "seed",
"xdxd_version", "git"}.
"""
from __future__ import annotations

import json
import os
from typing import Iterable, Iterator

import numpy as np

FORMAT = "xdxd-shard-1"


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.safetensors"


def write_shard(path: str, structures: Iterable[dict]) -> int:
    """Write structures (dicts with id, cell, hall, sg_number, atomic_number, frac,
    is_hydrogen) to one safetensors file, atomically. Returns the number written."""
    from safetensors.numpy import save_file

    structures = list(structures)
    halls: list[str] = []
    hall_pos: dict[str, int] = {}
    for s in structures:
        if s["hall"] not in hall_pos:
            hall_pos[s["hall"]] = len(halls)
            halls.append(s["hall"])
    counts = [len(s["atomic_number"]) for s in structures]
    frac = (np.concatenate([np.asarray(s["frac"], np.float64).reshape(-1, 3) for s in structures])
            if structures else np.zeros((0, 3)))
    frac = np.mod(frac, 1.0).astype(np.float32)
    frac[frac >= 1.0] = 0.0  # float32 rounding of 0.99999999
    tensors = {
        "cell": np.array([s["cell"] for s in structures], np.float32).reshape(-1, 6),
        "sg_number": np.array([s["sg_number"] for s in structures], np.int32),
        "hall_index": np.array([hall_pos[s["hall"]] for s in structures], np.int32),
        "atom_offset": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        "atomic_number": (np.concatenate([np.asarray(s["atomic_number"]) for s in structures])
                          if structures else np.zeros(0)).astype(np.int16),
        "frac": frac,
        "is_hydrogen": (np.concatenate([np.asarray(s["is_hydrogen"], bool) for s in structures])
                        if structures else np.zeros(0, bool)),
    }
    meta = {"format": FORMAT, "halls": json.dumps(halls),
            "ids": json.dumps([str(s["id"]) for s in structures])}
    tmp = f"{path}.tmp{os.getpid()}"
    save_file(tensors, tmp, metadata=meta)
    os.chmod(tmp, 0o644)  # safetensors writes 0600; shards are shared data
    os.replace(tmp, path)
    return len(structures)


def read_shard(path: str) -> tuple[dict[str, np.ndarray], dict[str, list]]:
    """(tensors as numpy arrays, {"halls": [...], "ids": [...]}) of one shard."""
    from safetensors import safe_open

    with safe_open(path, framework="numpy") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not an {FORMAT} file (format={meta.get('format')!r})")
    return tensors, {"halls": json.loads(meta["halls"]), "ids": json.loads(meta["ids"])}


def shard_files(folder: str) -> list[str]:
    """Shard paths in order: from index.json when present, else by name."""
    index = os.path.join(folder, "index.json")
    if os.path.exists(index):
        with open(index) as f:
            return [os.path.join(folder, s["file"]) for s in json.load(f)["shards"]]
    return sorted(os.path.join(folder, n) for n in os.listdir(folder)
                  if n.startswith("shard-") and n.endswith(".safetensors"))


def iter_structures(folder: str) -> Iterator[dict]:
    """Every structure of a shard folder as a dict: id, cell (6,) float32 Å/°, hall,
    sg_number, atomic_number (n,) int16, frac (n,3) float32, is_hydrogen (n,) bool."""
    for path in shard_files(folder):
        t, meta = read_shard(path)
        off = t["atom_offset"]
        for s in range(len(t["cell"])):
            a, b = off[s], off[s + 1]
            yield {"id": meta["ids"][s], "cell": t["cell"][s],
                   "hall": meta["halls"][t["hall_index"][s]], "sg_number": int(t["sg_number"][s]),
                   "atomic_number": t["atomic_number"][a:b], "frac": t["frac"][a:b],
                   "is_hydrogen": t["is_hydrogen"][a:b]}


def load_folder(folder: str) -> dict:
    """All shards of a folder in memory, concatenated in the shard layout (for training):
    the tensors above with atom_offset running over the whole set and hall_index into one
    merged "halls" list; plus "ids"."""
    parts, halls, hall_pos, ids = [], [], {}, []
    atom_base = 0
    for path in shard_files(folder):
        t, meta = read_shard(path)
        remap = np.array([hall_pos.setdefault(h, len(hall_pos)) for h in meta["halls"]],
                         np.int32)
        t["hall_index"] = remap[t["hall_index"]] if len(t["hall_index"]) else t["hall_index"]
        t["atom_offset"] = t["atom_offset"][:-1] + atom_base
        atom_base += len(t["atomic_number"])
        parts.append(t)
        ids.extend(meta["ids"])
    halls = sorted(hall_pos, key=hall_pos.get)
    if not parts:
        raise FileNotFoundError(f"no shards in {folder}")
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    out["atom_offset"] = np.concatenate([out["atom_offset"], [atom_base]]).astype(np.int64)
    out["halls"] = halls
    out["ids"] = ids
    return out


def write_index(folder: str, shards: list[dict], settings: dict, seed: int) -> None:
    """index.json with shard counts, generator settings, seed and versions."""
    import subprocess

    import xdxd
    try:
        git = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                             text=True, cwd=os.path.dirname(__file__), timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        git = ""
    index = {"format": FORMAT, "count": sum(s["count"] for s in shards), "shards": shards,
             "settings": settings, "seed": seed,
             "xdxd_version": getattr(xdxd, "__version__", ""), "git": git}
    tmp = os.path.join(folder, ".index.json.tmp")
    with open(tmp, "w") as f:
        json.dump(index, f, indent=1)
    os.replace(tmp, os.path.join(folder, "index.json"))
