"""The diffusion sampler's problem: one crystal's fixed data as tensors, built once.

What the denoiser sees of a diffraction problem is built so that |F| ambiguities vanish:
three origin-free views of the data (none of them changes under an allowed origin shift,
and none carries an absolute position):

- the Patterson function P(u) = sum_h (|E_h|² - 1) cos(2 pi h.u) on a grid (FFT), read at
  the interatomic vectors u of the graph's edges (model.graph);
- the gradient of the amplitude misfit at the current atoms (guidance.misfit_gradient);
- tokens for an attention encoder over the reflections: reciprocal vector h* (Å⁻¹, from
  the cell metric), s = 1/d, |E|, sigma(|E|); reflections are expanded by the point group
  and Friedel's law so the token set has the crystal's symmetry.

`problem_from_record` reads a record (composition, site orders from the cell contents);
`make_problem` builds the Problem from a DataSet; training builds its examples with it too.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, fields, replace

import gemmi
import numpy as np
import torch

from xdxd import records
from xdxd.crystal import symmetry
from xdxd.crystal.chemistry import is_hydrogen
from xdxd.crystal.dataset import DataSet
from xdxd.crystal.statistics import epsilon_factors, expected_intensity, normalized_e, wilson_scale
from xdxd.crystal.structure_factors import StructureFactors, inverse_d2
from xdxd.crystal.symmetry import SymOps, onto_site_torch
from xdxd.model.graph import PATTERSON_BLURS
from xdxd.solve.diffusion.bonding import BondingTables, bonding_tables

EIGHT_PI2 = 8.0 * math.pi ** 2


@dataclass
class Problem:
    """One crystal's fixed data, as tensors on one device.

    cell/ops: the crystal; elements (N,) the asymmetric-unit atoms to place (no H);
    orth (3,3) frac -> Cartesian Å, deorth (3,3) Cartesian -> frac;
    rot (O,3,3), tran (O,3) fractional operations; rot_cart (O,3,3) the same rotations
    in Cartesian (orthogonal matrices); F_obs (M,), s2 (M,) Å⁻², E (M,);
    patterson (C,n1,n2,n3) grid; tokens (T,7) reflection tokens; uiso Å² from Wilson
    (a first guess: every |Fc| is judged at the overall Uiso that fits it best, `fit_u`);
    site_weight (N,) 1/(stabilizer order) each atom is sampled with (1: general position,
    1/2 on a mirror or 2-fold axis, ...: `symmetry.site_orders`); bonding the per-atom tables
    of the bonding prior (solve.diffusion.bonding).
    """
    cell: gemmi.UnitCell
    ops: SymOps
    elements: list[str]
    z: torch.Tensor
    orth: torch.Tensor
    deorth: torch.Tensor
    rot: torch.Tensor
    tran: torch.Tensor
    rot_cart: torch.Tensor
    sf: StructureFactors
    type_idx: torch.Tensor
    F_obs: torch.Tensor
    s2: torch.Tensor
    E: torch.Tensor
    patterson: torch.Tensor
    tokens: torch.Tensor
    uiso: float
    site_weight: torch.Tensor
    bonding: BondingTables

    @property
    def n_atoms(self) -> int:
        return len(self.elements)

    @property
    def n_ops(self) -> int:
        return self.rot.shape[0]

    @property
    def device(self) -> torch.device:
        return self.F_obs.device

    def to(self, device: str | torch.device) -> "Problem":
        """The same problem with every tensor (its structure-factor tables too) on device."""
        device = torch.device(device)
        if device == self.device:
            return self
        sf = copy.copy(self.sf)
        sf.device = device
        for name in ("hkl", "s2", "f0", "hR", "ht"):
            setattr(sf, name, getattr(sf, name).to(device))
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self)
                 if isinstance(getattr(self, f.name), (torch.Tensor, BondingTables))}
        return replace(self, sf=sf, **moved)


def make_problem(data: DataSet, elements: list[str], hydrogens: float = 0,
                 device: str | torch.device = "cpu", max_tokens: int = 256,
                 generator: torch.Generator | None = None,
                 site_orders: list[int] | None = None) -> Problem:
    """Build a Problem from measured (or simulated) amplitudes.

    data: the reflections (those with |F| > 0 are used); elements: ASU non-H atoms to
    place; hydrogens: H atoms per ASU (for normalisation only). Tokens beyond max_tokens
    are subsampled with `generator`.
    site_orders (N,): the stabilizer order of each atom's site (default: all 1, general
    positions); an atom of order k is sampled with weight 1/k in every |Fc|.
    """
    data = data.nonzero()
    cell, sg, ops = data.cell, data.spacegroup, data.ops
    hkl, F, sigma = data.hkl, data.F, data.sigma
    orders = np.ones(len(elements)) if site_orders is None else np.asarray(site_orders, float)
    if len(orders) != len(elements) or np.any(orders < 1):
        raise ValueError(f"site_orders {list(orders)} do not fit {len(elements)} atoms")
    composition: dict[str, float] = {}
    for e, k in zip(elements, orders):
        composition[e] = composition.get(e, 0) + 1.0 / k
    E = normalized_e(F, hkl, cell, sg, composition, hydrogens)
    sig_E = E * sigma / np.maximum(F, 1e-9)
    s2 = inverse_d2(cell, hkl)
    # overall isotropic U from the Wilson plot, used for |Fc| while sampling
    sum_f2 = expected_intensity(cell, ops, hkl, composition, hydrogens)
    _, B = wilson_scale(F, s2, sum_f2, epsilon_factors(sg, hkl))
    uiso = float(np.clip(B / EIGHT_PI2, 0.02, 0.08))

    kw = dict(device=device, dtype=torch.float32)
    orth = np.array(cell.orth.mat, dtype=float)
    deorth = np.array(cell.frac.mat, dtype=float)
    rot_cart = np.einsum("ij,ojk,kl->oil", orth, ops.rot, deorth)
    types = sorted(set(elements))
    sf = StructureFactors(cell, ops, hkl, types, device=device)
    return Problem(
        cell=cell, ops=ops, elements=list(elements),
        z=torch.tensor([gemmi.Element(e).atomic_number for e in elements], device=device),
        orth=torch.tensor(orth, **kw), deorth=torch.tensor(deorth, **kw),
        rot=torch.tensor(ops.rot, **kw), tran=torch.tensor(ops.tran, **kw),
        rot_cart=torch.tensor(rot_cart, **kw), sf=sf, type_idx=sf.type_index(list(elements)),
        F_obs=torch.tensor(F, **kw), s2=torch.tensor(s2, **kw), E=torch.tensor(E, **kw),
        patterson=torch.tensor(patterson_grid(cell, ops, hkl, E), **kw),
        tokens=reflection_tokens(cell, ops, hkl, E, sig_E, max_tokens, generator).to(device),
        uiso=uiso, site_weight=torch.tensor(1.0 / orders, **kw),
        bonding=bonding_tables(list(elements), device))


def problem_from_record(rec: dict, device: str = "cpu", seed: int = 0) -> Problem:
    """Record -> Problem (ASU non-H elements, heaviest first).

    With `cell_contents` in the record, sites whose count in the cell says they lie on a
    special position (symmetry.site_orders) are sampled with their stabilizer order;
    without it every site is taken to be general.
    """
    data = DataSet.from_record(rec)
    rid = str(rec.get("id", "?"))
    comp = {e: int(round(float(n))) for e, n in (rec.get("composition") or {}).items()
            if not is_hydrogen(e) and float(n) > 0}
    if not comp:
        raise records.RecordError(f"{rid}: no composition (non-H element counts of the asymmetric unit)")
    orders = {e: [1] * n for e, n in comp.items()}
    if rec.get("cell_contents"):
        try:
            orders = symmetry.site_orders(comp, rec["cell_contents"], data.ops)
        except ValueError as e:
            raise records.RecordError(f"{rid}: {e}")
    elements = sorted(comp, key=lambda e: -gemmi.Element(e).atomic_number)
    site_orders = [k for e in elements for k in orders[e]]
    elements = [e for e in elements for _ in orders[e]]
    if int((data.F > 0).sum()) < 10:
        raise records.RecordError(f"{rid}: too few reflections ({int((data.F > 0).sum())}) to solve")
    return make_problem(data, elements, hydrogens=float(rec.get("hydrogens") or 0), device=device,
                        generator=torch.Generator().manual_seed(seed), site_orders=site_orders)


def expand_reflections(ops: SymOps, hkl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All symmetry equivalents of unique reflections, Friedel mates included.

    Returns (hkl (K,3) int, index (K,) of the unique reflection each came from).
    """
    rots = np.unique(np.round(ops.rot).astype(np.int64), axis=0)  # point-group part
    eq = np.einsum("mi,oij->omj", hkl, rots)  # h R
    eq = np.concatenate([eq, -eq], axis=0)  # (2O,M,3)
    idx = np.broadcast_to(np.arange(len(hkl))[None], eq.shape[:2])
    flat = eq.reshape(-1, 3)
    _, first = np.unique(flat, axis=0, return_index=True)
    return flat[first], idx.reshape(-1)[first]


def patterson_grid(cell: gemmi.UnitCell, ops: SymOps, hkl: np.ndarray, E: np.ndarray,
                   spacing_A: float = 0.4) -> np.ndarray:
    """Origin-removed Patterson P(u) = sum_h (|E|²-1) exp(-B s²/4) cos(2 pi h.u), (C,n1,n2,n3).

    One channel per blur B in PATTERSON_BLURS, each scaled to unit standard deviation.
    Grid: at least 2 h_max + 1 points per axis and no coarser than spacing_A.
    """
    full, idx = expand_reflections(ops, hkl)
    s2 = inverse_d2(cell, full)
    lengths = (cell.a, cell.b, cell.c)
    n = [max(2 * int(np.abs(full[:, i]).max()) + 2, int(math.ceil(lengths[i] / spacing_A)))
         for i in range(3)]
    channels = []
    for B in PATTERSON_BLURS:
        coef = np.zeros(n, dtype=complex)
        w = (E[idx] ** 2 - 1.0) * np.exp(-B * s2 / 4.0)
        np.add.at(coef, (full[:, 0] % n[0], full[:, 1] % n[1], full[:, 2] % n[2]), w)
        grid = np.fft.ifftn(coef).real  # sum_h c_h exp(+2 pi i h.u) / n1n2n3
        channels.append(grid / max(grid.std(), 1e-12))
    return np.stack(channels).astype(np.float32)


def reflection_tokens(cell: gemmi.UnitCell, ops: SymOps, hkl: np.ndarray, E: np.ndarray,
                      sig_E: np.ndarray, max_tokens: int,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Tokens (T,7): h* Cartesian (Å⁻¹, 3), s = 1/d (Å⁻¹), |E|, sigma(|E|), 1/d_min.

    Expanded by the point group and Friedel's law, then subsampled to max_tokens.
    """
    full, idx = expand_reflections(ops, hkl)
    recip = full @ np.array(cell.frac.mat, dtype=float)  # h* = h . frac matrix (rows a*, b*, c*)
    s = np.sqrt(inverse_d2(cell, full))
    tok = np.concatenate([recip, s[:, None], E[idx, None], sig_E[idx, None],
                          np.full((len(full), 1), s.max())], axis=1)
    tok = torch.tensor(tok, dtype=torch.float32)
    if len(tok) > max_tokens:
        pick = torch.randperm(len(tok), generator=generator)[:max_tokens]
        tok = tok[pick]
    return tok


def special_images(problem: Problem, frac: torch.Tensor) -> torch.Tensor:
    """Each atom moved onto the nearest point of its site symmetry, (B,N,3) fractional.

    An atom of stabilizer order k (problem.site_weight = 1/k) goes to the mean of its k
    nearest images (itself included): on a mirror, the foot of the perpendicular; near an
    inversion centre, the centre. Atoms of order 1 are returned as they are.
    """
    k = torch.round(1.0 / problem.site_weight).long()  # (N,)
    if bool((k == 1).all()):
        return frac
    return onto_site_torch(frac, k.expand(frac.shape[:-1]), problem.rot, problem.tran, problem.orth)
