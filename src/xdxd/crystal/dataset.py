"""The data set as a type: a crystal and its unique reflections, and how to simulate one.

    data = DataSet.from_record(rec)                  # what every solver and refiner takes
    data = simulate(cell, sg, elements, frac, uiso, occ, d_min_A=2.0, noise=0.02, rng=rng)

A DataSet is built once per record (or per simulated experiment) and handed to the
samplers, the refinement and training, instead of cell, space group, hkl, |F| and sigma
travelling as loose arguments. Units: Å, Å⁻¹; |F| and sigma(|F|) on the data's own scale.

Simulation (`simulate`, used by xdxd-prep and by training): every unique reflection to
d_min (gemmi's reciprocal ASU of the Laue class, Friedel mates merged, systematic absences
left out), |F| from the crystal core's structure factors, then one noise model: sigma(|F|)
= noise |F| + 0.5 % of the mean |F|, and |F| drawn as |F + sigma z|, z ~ N(0, 1); noise-free
data (noise = 0) carry sigma = 1 % of |F| + the same floor, so that weights stay finite.
`missing` drops that share of the reflections at random.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import gemmi
import numpy as np

from xdxd.crystal.structure_factors import inverse_d2, structure_factors_of_atoms
from xdxd.crystal.symmetry import (SymOps, make_cell, spacegroup_from_record, symops,
                                   systematically_absent)

SIGMA_FLOOR = 0.005      # sigma(|F|) floor, times the mean |F|
NOISE_FREE_SIGMA = 0.01  # relative sigma(|F|) of noise-free data


@dataclass(frozen=True)
class DataSet:
    """One crystal's unique reflections: cell, space group, hkl (M,3) int, F (M,) |F|,
    sigma (M,) sigma(|F|) (0 where unknown)."""
    cell: gemmi.UnitCell
    spacegroup: gemmi.SpaceGroup
    hkl: np.ndarray
    F: np.ndarray
    sigma: np.ndarray

    @classmethod
    def from_record(cls, rec: dict) -> "DataSet":
        """The record's cell, space group and reflections (records.check_problem first:
        raises RecordError for a record that lacks them)."""
        from xdxd import records
        records.check_problem(rec)
        hkl, F, sigma = records.reflections_to_arrays(rec["reflections"])
        return cls(make_cell(rec["cell"]), spacegroup_from_record(rec["spacegroup"]), hkl, F, sigma)

    def __len__(self) -> int:
        return len(self.F)

    @cached_property
    def ops(self) -> SymOps:
        return symops(self.spacegroup)

    @property
    def d_min_A(self) -> float:
        """The highest resolution (Å) of the reflections."""
        return 1.0 / math.sqrt(float(inverse_d2(self.cell, self.hkl).max())) if len(self) else math.inf

    def subset(self, keep) -> "DataSet":
        """The reflections keep (a boolean mask or indices)."""
        return DataSet(self.cell, self.spacegroup, self.hkl[keep], self.F[keep], self.sigma[keep])

    def nonzero(self) -> "DataSet":
        """The reflections with |F| > 0 (what the samplers phase and score)."""
        return self.subset(self.F > 0)


def simulate(cell: gemmi.UnitCell, spacegroup: gemmi.SpaceGroup, elements: list[str],
             frac: np.ndarray, uiso: np.ndarray, occ: np.ndarray, d_min_A: float,
             uaniso: np.ndarray | None = None, noise: float = 0.0,
             rng: np.random.Generator | None = None, missing: float = 0.0) -> DataSet:
    """A diffraction experiment on a model (elements (N,), frac (N,3), uiso (N,) Å², occ
    (N,) chemical occupancy, uaniso (N,6) Å² or NaN rows) to d_min_A Å: see the module
    docstring. noise: relative sigma(|F|); missing: share of reflections dropped at random.
    rng is needed when noise or missing > 0. Raises ValueError when no reflection is left
    or |F| is not finite."""
    hkl = np.asarray(gemmi.make_miller_array(cell, spacegroup, d_min_A), dtype=np.int64)
    hkl = hkl[~systematically_absent(hkl, spacegroup)]
    if len(hkl) == 0:
        raise ValueError(f"no reflection with d >= {d_min_A} Å in this cell")
    F = np.abs(structure_factors_of_atoms(cell, symops(spacegroup), hkl, elements, frac, uiso,
                                          occ, uaniso))
    if not np.all(np.isfinite(F)):
        raise ValueError("simulated |F| are not finite")
    floor = SIGMA_FLOOR * float(F.mean())
    if noise > 0:
        sigma = noise * F + floor
        F = np.abs(F + rng.standard_normal(F.shape) * sigma)
    else:
        sigma = NOISE_FREE_SIGMA * F + floor
    data = DataSet(cell, spacegroup, hkl, F, sigma)
    return data.subset(rng.random(len(F)) >= missing) if missing > 0 else data
