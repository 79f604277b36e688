"""Measured reflections as read from a file, before merging.

Every reader in `xdxd.formats` returns an `Observations`: one row per measured
record (h, k, l, value, sigma), where value is an intensity (F², any scale) or an
amplitude |F|, as `kind` says. Merging (`xdxd.formats.merge`) turns them into
unique amplitudes for the record.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

INTENSITY = "I"   # value is F² (or I on any scale), sigma is sigma(F²)
AMPLITUDE = "F"   # value is |F|, sigma is sigma(|F|)


@dataclass
class Observations:
    """Raw reflection records of one data set.

    hkl (M,3) int Miller indices; value (M,) intensity or amplitude; sigma (M,)
    its standard uncertainty (<= 0 means flagged/omitted by the writer);
    kind "I" or "F"; source names the file (and block) for messages.
    """
    hkl: np.ndarray
    value: np.ndarray
    sigma: np.ndarray
    kind: str
    source: str = ""
    notes: list[str] = field(default_factory=list)   # what the reader had to guess
    sigma_estimated: bool = False  # no sigma column in the file; sigma made up (see reader)

    def __post_init__(self):
        self.hkl = np.asarray(self.hkl, dtype=np.int64).reshape(-1, 3)
        self.value = np.asarray(self.value, dtype=float).reshape(-1)
        self.sigma = np.asarray(self.sigma, dtype=float).reshape(-1)
        assert self.kind in (INTENSITY, AMPLITUDE), f"kind must be I or F, not {self.kind!r}"
        assert len(self.hkl) == len(self.value) == len(self.sigma), "hkl, value, sigma lengths differ"

    def __len__(self) -> int:
        return len(self.value)

    @classmethod
    def from_rows(cls, rows: list[tuple], kind: str, source: str) -> "Observations":
        """From rows (h, k, l, value, sigma) as a reader collects them; an empty list is an
        empty set (the reader says why that is an error)."""
        table = np.array(rows, dtype=float).reshape(-1, 5)
        return cls(table[:, :3].astype(np.int64), table[:, 3], table[:, 4], kind, source)


def estimate_sigma(value: np.ndarray, kind: str) -> np.ndarray:
    """A stand-in sigma for files that give none: 3 % of the value plus 0.5 % of the mean.

    Only used so that weights stay finite; the record notes `sigma_estimated`.
    """
    value = np.asarray(value, dtype=float)
    floor = 0.005 * float(np.mean(np.abs(value))) if len(value) else 0.0
    return 0.03 * np.abs(value) + max(floor, 1e-6)
