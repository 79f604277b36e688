"""Generate synthetic crystals shard by shard, reproducibly.

Structure i of shard k uses numpy's generator seeded with (seed, k, i), so a shard's content
depends only on the seed and the settings, not on --jobs or on how work is split.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import numpy as np

from xdxd.synth import molecules
from xdxd.synth.packing import MODES, Crystal, make_crystal


@dataclass
class Settings:
    """Generator settings (stored in index.json)."""
    smiles: str = ""                 # SMILES file; "" = the shipped sample
    count: int = 1000                # structures in all
    shard_size: int = 1000           # structures per shard
    peptide_fraction: float = 0.1    # share of peptides (di-, tri-, tetra-, zwitterionic)
    max_heavy: int = 60              # skip molecules with more non-H atoms
    modes: dict = field(default_factory=lambda: dict(MODES))  # packing modes and shares
    max_tries: int = 12              # molecules tried per structure before giving up


# molecules on special positions are mostly small (a dimer of two <= 20-atom fragments)
MAX_HEAVY_DIMER = 40

_SMILES_CACHE: dict[str, list] = {}


def _smiles(path: str) -> list[tuple[str, str]]:
    path = path or molecules.sample_smiles_path()
    if path not in _SMILES_CACHE:
        _SMILES_CACHE[path] = molecules.read_smiles_file(path)
    return _SMILES_CACHE[path]


def n_shards(settings: Settings) -> int:
    return (settings.count + settings.shard_size - 1) // settings.shard_size


def shard_count(settings: Settings, k: int) -> int:
    """Structures in shard k (the last one takes the remainder)."""
    return min(settings.shard_size, settings.count - k * settings.shard_size)


def one_structure(settings: Settings, seed: int, shard: int, index: int) -> tuple[Crystal | None, list[str]]:
    """Structure `index` of shard `shard`: (crystal or None, reasons of failed tries)."""
    rng = np.random.default_rng([seed, shard, index])
    source = _smiles(settings.smiles)
    modes = list(settings.modes)
    p = np.array([settings.modes[m] for m in modes], dtype=float)
    failures = []
    for _ in range(settings.max_tries):
        if rng.random() < settings.peptide_fraction:
            smi, name = molecules.random_peptide(rng)
        else:
            smi, name = source[int(rng.integers(len(source)))]
        mode = str(rng.choice(modes, p=p / p.sum()))
        try:
            if mode == "special":  # an exactly symmetric dimer of a fragment of the molecule
                mol = molecules.symmetric_dimer(smi, name, int(rng.integers(2**31)), rng,
                                                min(settings.max_heavy, MAX_HEAVY_DIMER))
                smi, name = mol.smiles, mol.name
            else:
                mol = molecules.conformer(smi, name, int(rng.integers(2**31)), settings.max_heavy)
            second = solvent = None
            if mode == "z2":
                second = molecules.conformer(smi, name, int(rng.integers(2**31)), settings.max_heavy)
            if mode == "solvate":
                s = molecules.random_solvent(rng)
                solvent = molecules.conformer(s, s, int(rng.integers(2**31)))
            xtal = make_crystal(mol, rng, solvent=solvent, second=second, mode=mode)
            if mode == "special" and not xtal.info["special_position"]:
                mode = "z1"  # packed on a general position after all (make_crystal's last try)
            xtal.id = f"{name}|{mode}" + (f"+{solvent.smiles}" if solvent else "")
            xtal.info["smiles"] = smi + (f".{solvent.smiles}" if solvent else "")
            return xtal, failures
        except Exception as e:  # noqa: BLE001  a bad molecule or packing: try another
            failures.append(type(e).__name__)
    return None, failures


def make_chunk(settings: Settings, seed: int, shard: int, start: int, stop: int) -> tuple[int, int, list[dict], list[str]]:
    """Structures start..stop-1 of a shard, as shard dicts. Runs in a worker process."""
    import torch
    torch.set_num_threads(1)
    out, failures = [], []
    for i in range(start, stop):
        xtal, fails = one_structure(settings, seed, shard, i)
        failures.extend(fails)
        if xtal is not None:
            d = xtal.as_dict()
            d["smiles"] = xtal.info.get("smiles", "")
            out.append(d)
    return shard, start, out, failures


def settings_dict(settings: Settings) -> dict:
    d = asdict(settings)
    d["smiles"] = os.path.abspath(settings.smiles) if settings.smiles else "shipped sample"
    return d
