"""The xdxd record: one JSON object per line, read, extended and written by every stage.

A record is a plain dict (see man/xdxd-record.5.md for every field). Helpers here
read and write streams of records, turn failures into error records, and convert
between the record's atom lists and the arrays the crystal core works on.

    {"schema": "xdxd/1", "id": "1000000", "cell": [a, b, c, alpha, beta, gamma],
     "spacegroup": {"hall": "-P 2ybc", "hm": "P 1 21/c 1", "number": 14},
     "composition": {"C": 10, "O": 2}, "hydrogens": 12,
     "wavelength_A": 0.71073, "d_min_A": 2.0,
     "reflections": {"h": [...], "k": [...], "l": [...], "F": [...], "sigma": [...]},
     "reference": {"atoms": [...]}, "candidates": [...], "solution": {...},
     "metrics": {...}, "error": null, "history": [...]}

An atom is {"element": "C", "label": "C1", "xyz": [x, y, z] (fractional),
"uiso": Å², "occ": chemical occupancy}; "uaniso": [U11, U22, U33, U12, U13, U23] (Å²) is optional.
"""
from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import IO, Iterable, Iterator

import numpy as np

from xdxd import __version__

SCHEMA = "xdxd/1"


class RecordError(ValueError):
    """A problem with one input or record; the message names the file (and line)."""


# ---------------------------------------------------------------------------
# streams

class InputRecord(dict):
    """A record as read, with `where` it came from ("file:line") for log messages."""
    where: str = ""


def read_records(stream: IO[str], name: str = "-") -> Iterator[dict]:
    """Yield records (InputRecord: `where` is "name:line") from a JSON-lines stream; a bad
    line yields an error record."""
    for lineno, line in enumerate(stream, 1):
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            yield error_record(f"{name}:{lineno}", f"{name}:{lineno}: not a JSON record ({e})")
            continue
        rec = InputRecord(rec)
        rec.where = f"{name}:{lineno}"
        yield rec


def write_record(rec: dict, out: IO[str]) -> bool:
    """Write one record as a line and flush, so a pipe sees it at once; True if it is an error.

    JSON has no NaN: a record holding NaN or infinity goes out as an error record
    (its fields kept, the non-finite numbers written as null) instead of breaking the stream.
    """
    try:
        line = json.dumps(rec, separators=(",", ":"), default=_json_default, allow_nan=False)
    except ValueError:
        rec = _nonfinite_to_none(rec)
        rec["error"] = rec.get("error") or f"{rec.get('id', '?')}: result holds NaN or infinite numbers"
        line = json.dumps(rec, separators=(",", ":"), default=_json_default, allow_nan=False)
    out.write(line)
    out.write("\n")
    out.flush()
    return bool(rec.get("error"))


def _nonfinite_to_none(obj):
    if isinstance(obj, dict):
        return {k: _nonfinite_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nonfinite_to_none(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _nonfinite_to_none(obj.tolist())
    if isinstance(obj, (float, np.floating)) and not math.isfinite(float(obj)):
        return None
    return obj


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot write {type(obj).__name__} to a record")


def error_record(rid: str, message: str, rec: dict | None = None) -> dict:
    """A record marked failed: the input record (if any) with `error` set."""
    out = dict(rec) if rec else {"schema": SCHEMA, "id": rid}
    out["error"] = message
    return out


def add_history(rec: dict, stage: str, seed: int | None = None, **extra) -> None:
    """Append {stage, version, argv, seed} to the record's provenance list (like @PG)."""
    entry = {"stage": stage, "version": __version__, "argv": sys.argv[1:]}
    if seed is not None:
        entry["seed"] = seed
    entry.update(extra)
    rec.setdefault("history", []).append(entry)


def atomic_write_text(path: str, text: str) -> None:
    """Write a file atomically: a temporary file in the same folder, then rename."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ---------------------------------------------------------------------------
# validation

def check_problem(rec: dict, need_reflections: bool = True) -> None:
    """Raise RecordError if the record lacks what a solver or refiner needs."""
    rid = rec.get("id", "?")
    if rec.get("error"):
        raise RecordError(f"{rid}: upstream error: {rec['error']}")
    cell = rec.get("cell")
    if not cell or len(cell) != 6 or not all(_finite_positive(v) for v in cell):
        raise RecordError(f"{rid}: missing or invalid cell {cell!r}")
    sg = rec.get("spacegroup")
    if not sg or not (sg.get("hall") or sg.get("hm") or sg.get("number")):
        raise RecordError(f"{rid}: missing space group")
    if need_reflections:
        refl = rec.get("reflections")
        if not refl or not refl.get("h"):
            raise RecordError(f"{rid}: no reflections")
        F = np.asarray(refl["F"], dtype=float)
        if not np.all(np.isfinite(F)):
            raise RecordError(f"{rid}: reflections contain NaN or infinite F")


def _finite_positive(v) -> bool:
    try:
        return math.isfinite(float(v)) and float(v) > 0
    except (TypeError, ValueError):
        return False


# ---------------------------------------------------------------------------
# atoms <-> arrays

@dataclass
class AtomArrays:
    """Atoms of one structure as arrays: elements (N,), frac (N,3), uiso (N,) Å², occ (N,)."""
    elements: list[str]
    frac: np.ndarray
    uiso: np.ndarray
    occ: np.ndarray
    labels: list[str]
    uaniso: np.ndarray | None = None  # (N,6) U11 U22 U33 U12 U13 U23 Å², or None

    def __len__(self) -> int:
        return len(self.elements)

    def without_hydrogens(self) -> "AtomArrays":
        keep = [i for i, e in enumerate(self.elements) if e not in ("H", "D")]
        return self.subset(keep)

    def subset(self, idx) -> "AtomArrays":
        idx = list(idx)
        return AtomArrays(
            [self.elements[i] for i in idx], self.frac[idx], self.uiso[idx], self.occ[idx],
            [self.labels[i] for i in idx], None if self.uaniso is None else self.uaniso[idx])


def atoms_to_arrays(atoms: list[dict], default_uiso: float = 0.05) -> AtomArrays:
    """Record atom list -> AtomArrays."""
    elements = [a["element"] for a in atoms]
    frac = np.array([a["xyz"] for a in atoms], dtype=float).reshape(-1, 3)
    uiso = np.array([a.get("uiso", default_uiso) if a.get("uiso") is not None else default_uiso
                     for a in atoms], dtype=float)
    occ = np.array([a.get("occ", 1.0) for a in atoms], dtype=float)
    labels = [a.get("label") or f"{e}{i + 1}" for i, (a, e) in enumerate(zip(atoms, elements))]
    uaniso = None
    if any(a.get("uaniso") for a in atoms):  # NaN rows mark the isotropic atoms
        uaniso = np.array([a.get("uaniso") or [np.nan] * 6 for a in atoms], dtype=float)
    return AtomArrays(elements, frac, uiso, occ, labels, uaniso)


def arrays_to_atoms(arr: AtomArrays) -> list[dict]:
    """AtomArrays -> record atom list (coordinates rounded to 1e-6, U to 1e-5 Å²)."""
    out = []
    for i, e in enumerate(arr.elements):
        a = {"element": e, "label": arr.labels[i],
             "xyz": [round(float(v), 6) for v in arr.frac[i]],
             "uiso": round(float(arr.uiso[i]), 5), "occ": round(float(arr.occ[i]), 4)}
        if arr.uaniso is not None and np.all(np.isfinite(arr.uaniso[i])):
            a["uaniso"] = [round(float(v), 5) for v in arr.uaniso[i]]
        out.append(a)
    return out


def reflections_to_arrays(refl: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Record reflections -> hkl (M,3) int, F (M,), sigma (M,)."""
    hkl = np.stack([refl["h"], refl["k"], refl["l"]], axis=1).astype(np.int64)
    F = np.asarray(refl["F"], dtype=float)
    sigma = np.asarray(refl.get("sigma") or np.zeros_like(F), dtype=float)
    return hkl, F, sigma


def arrays_to_reflections(hkl: np.ndarray, F: np.ndarray, sigma: np.ndarray) -> dict:
    """hkl (M,3), F (M,), sigma (M,) -> record reflections (F, sigma rounded to 1e-4)."""
    hkl = np.asarray(hkl, dtype=int)
    return {"h": hkl[:, 0].tolist(), "k": hkl[:, 1].tolist(), "l": hkl[:, 2].tolist(),
            "F": [round(float(v), 4) for v in F], "sigma": [round(float(v), 4) for v in sigma]}


def composition_of(elements: Iterable[str]) -> dict[str, int]:
    """Element counts in Hill order (C, H, then alphabetical)."""
    counts: dict[str, int] = {}
    for e in elements:
        counts[e] = counts.get(e, 0) + 1
    return {e: counts[e] for e in hill_order(counts)}


def hill_order(elements: Iterable[str]) -> list[str]:
    els = set(elements)
    head = [e for e in ("C", "H") if e in els and "C" in els]
    return head + sorted(els - set(head))


def composition_elements(composition: dict[str, int]) -> list[str]:
    """{"C": 2, "O": 1} -> ["C", "C", "O"] (heaviest first is the caller's choice)."""
    return [e for e, n in composition.items() for _ in range(int(n))]
