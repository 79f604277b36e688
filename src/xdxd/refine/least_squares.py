"""Full-matrix least-squares refinement against X-ray data, as SHELXL's L.S. does it.

Minimises, for each candidate structure,

    S = sum_h w_h (Fo_h² - k² |Fc_h|²)²  +  sum_bumps ((d0 - d) / BUMP_SIGMA)²
        [+ sum_bonds ((d0 - d) / BOND_SIGMA)²]

on F² with SHELXL's weights w = 1 / (sigma²(Fo²) + (a P)² + b P), P = (Fo² + 2 k²Fc²)/3
(a = 0.1, b = 0 as SHELXL's default WGHT), recomputed at the start of every cycle and
held fixed within it. Why F² and these weights: that is what SHELXL refines and reports
(wR2, GooF), weak and negative intensities need no special treatment, and the (a P)²
term bounds every reflection's pull to a relative error, so simulated data with sigma = 0
refine as well as measured data.

Parameters (per candidate): positions, 3 per atom, fewer on special positions (x = x0 +
B p with B an orthonormal basis of the site's projector from
`symmetry.special_position_projector`, so constrained coordinates stay exact); Uiso per
atom, kept in [UISO_MIN, UISO_MAX] Å²; one overall scale k (on F). Hydrogen atoms
have no parameters by default: they stay fixed, or, given `riding`, they ride on their
parents (each moves with its parent's shifts, its Uiso a fixed multiple of the
parent's, and its derivatives add to the parent's). Atoms that come
with anisotropic ADPs keep them fixed and refine their positions (anisotropic refinement
is not implemented; drop `uaniso` to refine such atoms isotropically).

Each cycle is one Levenberg-Marquardt step. The Jacobian of the residuals comes from the
crystal core's structure factors, atom by atom: each atom's contribution to F depends on
its own parameters only, so the position columns of all atoms come from six displaced
copies of the structure (central differences); the Uiso and scale columns are analytic.
The normal matrix J^T J is solved with Marquardt damping, and a step is kept only if S
goes down.

Anti-bump restraint: every contact between occupied non-H atoms (symmetry images included,
found by `crystal.chemistry.find_contacts`) shorter than d0 = BUMP_FACTOR (r_i + r_j) (gemmi
covalent radii; C...C 1.11 Å, C...N 1.09 Å, C...O 1.06 Å, O...O 1.00 Å: shorter than any
bond between them, a nitrile's 1.14 Å C#N included) adds ((d0 - d)/0.02 Å)² to S, as
SHELXL's BUMP does with sigma 0.02 Å.

Bond-length restraints (bonds=True; off by default here, refine_record turns them on for
data with d_min ≥ 1.5 Å): every bond the chemistry check sees
(d < r_i + r_j + 0.45 Å) is restrained two-sidedly to the tabulated length for its element
pair (crystal.chemistry.BOND_LENGTHS) nearest its current length, sigma 0.03 Å, as a DFIX per bond would do:
geometry regularisation for low-resolution data, which never changes a bond's type.

Many candidates are refined at once (a leading batch dimension B everywhere):
`refine_batch` ranks sampler output; `refine_structure` is the same code with B = 1,
plus esds of the coordinates from the inverse normal matrix.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import gemmi
import numpy as np
import torch

from xdxd.crystal.dataset import DataSet
from xdxd.crystal.statistics import Agreement, agreement, scale_factor, shelx_weights
from xdxd.crystal.structure_factors import StructureFactors
from xdxd.crystal.symmetry import SymOps, special_position_projector, stabilizer_order
from xdxd.crystal.chemistry import (SHORT_FACTOR, bond_target, covalent_radius, find_contacts,
                                    is_bond, is_hydrogen, longest_bond)

WEIGHT_A = 0.1          # SHELXL WGHT a
WEIGHT_B = 0.0          # SHELXL WGHT b
UISO_MIN = 0.005        # Å², lower bound of Uiso
UISO_MAX = 0.3          # Å², upper bound of Uiso
UISO_START = 0.04       # Å², Uiso of atoms that come without one
BUMP_FACTOR = SHORT_FACTOR  # d0 = BUMP_FACTOR * (r_i + r_j), Å
BUMP_SIGMA = 0.02       # Å, sigma of the anti-bump restraint
BOND_SIGMA = 0.03       # Å, sigma of a bond-length restraint (SHELXL DFIX default 0.02)
LAMBDA_START = 1e-3     # initial Marquardt damping
STOP_DECREASE = 1e-6    # stop when S falls by less than this fraction in a cycle
MAX_BATCH_ELEMENTS = 4e6  # B*N*M per batch at most (larger batches are split)
SPECIAL_TOL = 0.7       # Å: an atom this close to its own image is put on the special position


@dataclass(frozen=True)
class LsqOptions:
    """How a least-squares refinement is run; the defaults are SHELXL's where it has one."""
    refine_uiso: bool = True        # refine an isotropic U (Å²) per atom
    u_per_element: bool = False     # ... or one per element (few reflections per parameter)
    refine_positions: bool = True   # refine positions (False: too few reflections for them)
    restraints: bool = True         # anti-bump restraints between non-H atoms
    bonds: bool = False             # restrain every bond to the nearest tabulated length
    distances: tuple = ()           # (i, j, d0 Å, sigma Å) of the molecule's own geometry, atom
                                    # indices into the model (SHELXL DFIX/DANG); these pairs
                                    # take no tabulated bond restraint
    refine_hydrogens: bool = False  # refine H positions and Uiso too (else fixed or riding)
    weight_a: float = WEIGHT_A      # SHELXL WGHT a
    weight_b: float = WEIGHT_B      # SHELXL WGHT b
    device: str = "cpu"             # torch device
    dtype: torch.dtype = torch.float64


@dataclass
class RefinementResult:
    """One refined structure and its statistics."""
    elements: list[str]
    frac: np.ndarray            # (N,3) fractional, in [0,1)
    uiso: np.ndarray            # (N,) Å²
    occ: np.ndarray             # (N,) chemical occupancy (not refined)
    scale: float                # k, with |Fo| ~ k |Fc|
    agreement: Agreement        # R1, R1(Fo > 4 sigma), wR2, GooF, ...
    n_params: int
    n_reflections: int
    cycles: int                 # cycles run
    converged: bool
    bumps: int                  # anti-bump contacts still violated at the end
    frac_esd: np.ndarray | None = None  # (N,3) fractional esds (refine_structure only)
    uiso_esd: np.ndarray | None = None  # (N,) Å²
    fc: np.ndarray | None = None        # (M,) k|Fc|, on the scale of Fo
    uaniso: np.ndarray | None = None    # (N,6) fixed U_cif Å², NaN rows for isotropic atoms

    @property
    def r1(self) -> float:
        return self.agreement.r1

    def stats(self) -> dict:
        a = self.agreement
        return {"r1": round(a.r1, 5), "r1_obs": None if math.isnan(a.r1_obs) else round(a.r1_obs, 5),
                "wr2": round(a.wr2, 5), "goof": round(a.goof, 4), "scale": round(self.scale, 6),
                "n_params": self.n_params, "n_reflections": self.n_reflections,
                "reflections_per_parameter": round(self.n_reflections / max(1, self.n_params), 2),
                "n_obs": a.n_obs, "cycles": self.cycles, "converged": self.converged,
                "bumps": self.bumps}


# ---------------------------------------------------------------------------
# problem set-up

class _Reflections:
    """A data set's |Fo|, weights' terms and the structure-factor engine as tensors, shared
    by all candidates of one refinement."""

    def __init__(self, data: DataSet, types: list[str], device: str, dtype: torch.dtype):
        self.cell, self.ops = data.cell, data.ops
        self.sf = StructureFactors(data.cell, data.ops, data.hkl, types, device=device, dtype=dtype)
        kw = dict(device=device, dtype=dtype)
        F = data.F
        self.fo = torch.tensor(np.asarray(F, float), **kw)  # (M,)
        sig = np.asarray(data.sigma, float) if data.sigma is not None else np.zeros(len(F))
        self.sigma = torch.tensor(np.where(np.isfinite(sig), np.maximum(sig, 0.0), 0.0), **kw)
        self.fo2 = self.fo ** 2
        self.sig_fo2 = 2 * self.fo.abs() * self.sigma
        # floor on the variance so that Fo = Fc = 0 cannot give an infinite weight
        self.var_floor = float((1e-4 * self.fo2.max()) ** 2) if len(F) else 1.0
        self.orth = torch.tensor(np.array(data.cell.orth.mat), **kw)  # frac -> Å
        self.rot = torch.tensor(data.ops.rot, **kw)  # (O,3,3)
        self.tran = torch.tensor(data.ops.tran, **kw)  # (O,3)
        self.device, self.dtype = device, dtype

    def weights(self, fc2_scaled: torch.Tensor, a: float, b: float) -> torch.Tensor:
        """SHELXL weights (B,M) for k²|Fc|² (B,M)."""
        return shelx_weights(self.fo2, self.sig_fo2, fc2_scaled, a, b, self.var_floor)


def _site_constraints(frac: np.ndarray, ops: SymOps, cell: gemmi.UnitCell, snap: np.ndarray):
    """Per atom: x0 on its special position (N,3), basis (N,3,3) with zero columns for
    constrained directions, and stabilizer order (N,).

    An atom with snap[n] (refined, fully occupied) closer than SPECIAL_TOL Å to one of its
    own images is moved onto the special position first (repeated, so that a partial set
    of images closes into the site group); other atoms use the core's 0.1 Å (a partly
    occupied atom near a mirror is disorder, not a special position).
    """
    N = len(frac)
    x0 = np.zeros((N, 3))
    basis = np.zeros((N, 3, 3))
    order = np.ones(N)
    for n, x in enumerate(np.asarray(frac, float)):
        tol = SPECIAL_TOL if snap[n] else 0.1
        for _ in range(4):
            if stabilizer_order(x[None], ops, cell, tol)[0] == 1:
                break
            x_new, _ = special_position_projector(x, ops, cell, tol)
            moved = np.abs(x_new - x).max()
            x = x_new
            if moved < 1e-9:
                break
        order[n] = stabilizer_order(x[None], ops, cell, 0.01)[0]
        if order[n] == 1:
            x0[n], basis[n] = x, np.eye(3)
            continue
        x0[n], P = special_position_projector(x, ops, cell, 0.01)
        U, S, _ = np.linalg.svd(P)
        r = int(np.sum(S > 0.5))
        basis[n, :, :r] = U[:, :r]
    return np.mod(x0, 1.0), basis, order


class _Bumps:
    """Distance restraint rows for a batch, on a contact list fixed within one cycle:
    anti-bump rows (one-sided, d0 = BUMP_FACTOR (r_i + r_j), BUMP_SIGMA) and, with bonds,
    bond-length rows (two-sided, d0 = `chemistry.bond_target`, BOND_SIGMA) for every bond
    (`chemistry.is_bond`). frac (B,N,3) as the parameters give
    it, not wrapped: contacts are found on the positions wrapped into the cell, and
    `geometry` takes later positions through the same lattice offset (a two-sided bond row
    seen through the wrong offset pulls an atom across the cell)."""

    def __init__(self, data: _Reflections, elements: list[list[str]], frac: np.ndarray, occ: np.ndarray,
                 enabled: bool, bonds: bool = False, distances: tuple = ()):
        B, N, _ = frac.shape
        offset = np.floor(frac)
        frac = frac - offset  # in [0, 1)
        rows = []  # (b, i, j, op, shift, d0, sigma, two-sided)
        for b in range(B):
            if not enabled:
                break
            heavy = [n for n, e in enumerate(elements[b]) if not is_hydrogen(e) and occ[b, n] > 0]
            if not heavy:
                continue
            els = [elements[b][n] for n in heavy]
            r = np.array([covalent_radius(e) for e in els])
            where = {n: k for k, n in enumerate(heavy)}
            given = {}  # (i, j) in heavy -> (d0, sigma): the molecule's own distances
            for i, j, d0, sigma in distances:
                if i in where and j in where:
                    given[min(where[i], where[j]), max(where[i], where[j])] = (d0, sigma)
            reach = longest_bond(r) if bonds else BUMP_FACTOR * 2 * r.max() + 0.3
            reach = max([reach] + [d0 + 0.5 for d0, _ in given.values()])
            c = find_contacts(data.cell, data.ops, frac[b, heavy], cutoff=reach)
            nearest = {}  # (i, j) -> its shortest contact: the image a restrained pair is bonded through
            for k, (i, j, d) in enumerate(zip(c.i, c.j, c.d)):
                key = (min(i, j), max(i, j))
                if key in given and (key not in nearest or d < c.d[nearest[key]]):
                    nearest[key] = k
            for key, k in nearest.items():
                d0, sigma = given[key]
                rows.append((b, heavy[c.i[k]], heavy[c.j[k]], c.op[k], c.shift[k], d0, sigma, True))
            for i, j, o, s, d in zip(c.i, c.j, c.op, c.shift, c.d):
                if (min(i, j), max(i, j)) in given:
                    continue
                d0 = BUMP_FACTOR * (r[i] + r[j])
                target = bond_target(els[i], els[j], d) if bonds else None
                if bonds and is_bond(d, r[i] + r[j]) and target is not None and d > d0:
                    rows.append((b, heavy[i], heavy[j], o, s, target, BOND_SIGMA, True))
                elif d < d0 + 0.3:
                    rows.append((b, heavy[i], heavy[j], o, s, d0, BUMP_SIGMA, False))
        self.n = len(rows)
        kw = dict(device=data.device, dtype=data.dtype)
        self.b = torch.tensor([r[0] for r in rows], dtype=torch.long, device=data.device)
        self.i = torch.tensor([r[1] for r in rows], dtype=torch.long, device=data.device)
        self.j = torch.tensor([r[2] for r in rows], dtype=torch.long, device=data.device)
        self.op = torch.tensor([r[3] for r in rows], dtype=torch.long, device=data.device)
        self.shift = torch.tensor(np.array([r[4] for r in rows]).reshape(-1, 3), **kw)
        self.d0 = torch.tensor([r[5] for r in rows], **kw)
        self.sigma = torch.tensor([r[6] for r in rows], **kw)
        self.two_sided = torch.tensor([r[7] for r in rows], dtype=torch.bool, device=data.device)
        self.offset = torch.tensor(offset, **kw)  # (B,N,3) lattice translation taken off
        self.data = data

    def _active(self, d: torch.Tensor) -> torch.Tensor:
        return (self.two_sided | (d < self.d0)).to(d.dtype)

    def geometry(self, frac: torch.Tensor):
        """Distances (R,) Å and the Å-vector from atom i to the image of j (R,3)."""
        D = self.data
        frac = frac - self.offset
        xi = frac[self.b, self.i]  # (R,3)
        xj = frac[self.b, self.j]
        img = torch.einsum("rab,rb->ra", D.rot[self.op], xj) + D.tran[self.op] + self.shift
        v = (img - xi) @ D.orth.T  # (R,3) Å
        return v.norm(dim=-1), v

    def residuals(self, frac: torch.Tensor, B: int) -> torch.Tensor:
        """Per-candidate restraint cost (B,): sum ((d0 - d)/sigma)² over violated contacts."""
        cost = torch.zeros(B, device=frac.device, dtype=frac.dtype)
        if self.n == 0:
            return cost
        d, _ = self.geometry(frac)
        r = self._active(d) * (self.d0 - d) / self.sigma
        return cost.index_add(0, self.b, r ** 2)

    def jacobian(self, frac: torch.Tensor, basis: torch.Tensor, B: int, N: int):
        """Residuals (R,) and their derivatives wrt the position parameters (R,N,3)."""
        D = self.data
        d, v = self.geometry(frac)
        active = self._active(d)
        r = active * (self.d0 - d) / self.sigma
        u = v / d.clamp_min(1e-6)[:, None]  # unit vector, Å
        g_cart = -(active / self.sigma)[:, None] * u  # dr/d(img - xi) in Å, (R,3)
        g_frac = g_cart @ D.orth  # dr/d(frac diff) (R,3)
        gj = torch.einsum("ra,rab->rb", g_frac, D.rot[self.op])  # through R_op
        gi = -g_frac
        J = torch.zeros(self.n, N, 3, device=frac.device, dtype=frac.dtype)
        rows = torch.arange(self.n, device=frac.device)
        # into each site's parameter basis: dr/dp = B^T dr/dx
        J.index_put_((rows, self.i), torch.einsum("rab,ra->rb", basis[self.b, self.i], gi),
                     accumulate=True)
        J.index_put_((rows, self.j), torch.einsum("rab,ra->rb", basis[self.b, self.j], gj),
                     accumulate=True)
        return r, J

    def violated(self, frac: torch.Tensor) -> np.ndarray:
        if self.n == 0:
            return np.zeros(0, dtype=int)
        d, _ = self.geometry(frac)
        return self.b[(d < self.d0) & ~self.two_sided].cpu().numpy()


# ---------------------------------------------------------------------------
# the refinement

def refine_batch(data: DataSet, elements: list[str] | list[list[str]], frac: np.ndarray,
                 uiso: np.ndarray | None = None, occ: np.ndarray | None = None,
                 uaniso: np.ndarray | None = None, riding: np.ndarray | None = None,
                 cycles: int = 10, esd: bool = False,
                 opts: LsqOptions = LsqOptions()) -> list[RefinementResult]:
    """Refine B candidate structures of N atoms each against one data set, all at once.

    data: the reflections (|Fo| and sigma(|Fo|), 0 where unknown); elements: N symbols
    shared by all candidates, or B lists of N;
    frac (B,N,3) or (N,3) fractional; uiso (B,N) Å² (default UISO_START); occ (B,N)
    chemical occupancies (default 1); uaniso (B,N,6) U_cif Å² (U11 U22 U33 U12 U13 U23), NaN
    rows for isotropic atoms: anisotropic atoms keep these ADPs fixed (anisotropic
    refinement is not implemented) and refine their positions only. frac (N,3) with B
    element lists refines B element variants of one structure. riding (B,N) or (N,):
    index of the atom each atom rides on, -1 for none: a rider has no parameters of its
    own; it moves with its parent's shifts and its Uiso stays the given multiple of the
    parent's (SHELXL's riding model, AFIX/HFIX), so H placed on a rough model stay on
    their parents while those move. esd: esds from the inverse normal matrix. Large
    batches are split so that B*N*M stays under MAX_BATCH_ELEMENTS. Returns B results in
    input order.
    """
    cell, ops = data.cell, data.ops
    device, dtype = opts.device, opts.dtype
    weight_a, weight_b = opts.weight_a, opts.weight_b
    frac = np.asarray(frac, dtype=float)
    shared = bool(elements) and isinstance(elements[0], str)
    if frac.ndim == 2:  # one structure; with B element lists, B variants of it
        frac = np.repeat(frac[None], 1 if shared else len(elements), axis=0)
    B, N, _ = frac.shape
    els = [list(elements)] * B if shared else [list(e) for e in elements]
    assert len(els) == B and all(len(e) == N for e in els), "elements must match frac (B,N,3)"
    uiso = np.full((B, N), UISO_START) if uiso is None else \
        np.broadcast_to(np.asarray(uiso, float), (B, N)).copy()
    uiso = np.where(np.isfinite(uiso), uiso, UISO_START)
    occ = np.ones((B, N)) if occ is None else np.broadcast_to(np.asarray(occ, float), (B, N)).copy()
    if uaniso is not None:
        uaniso = np.broadcast_to(np.asarray(uaniso, float), (B, N, 6))
    if riding is not None:
        riding = np.broadcast_to(np.asarray(riding, int), (B, N))
    per = max(1, int(MAX_BATCH_ELEMENTS // max(1, N * len(data))))
    if B > per:  # split the batch (memory: ~7 copies of (B,N,M) complex F per cycle)
        out = []
        for s in range(0, B, per):
            sl = slice(s, s + per)
            out += refine_batch(data, els[sl], frac[sl], uiso[sl], occ[sl],
                                None if uaniso is None else uaniso[sl],
                                None if riding is None else riding[sl], cycles, esd, opts)
        return out
    aniso = None
    if uaniso is not None:
        aniso = np.all(np.isfinite(uaniso), axis=-1)  # (B,N)
        uaniso = np.where(aniso[..., None], uaniso, 0.0)
        if not aniso.any():
            aniso = uaniso = None
    types = sorted({e for row in els for e in row})
    refl = _Reflections(data, types, device, dtype)  # the data set as tensors
    M = len(refl.fo)

    # constraints per site
    hydro = np.array([[is_hydrogen(e) for e in row] for row in els]).reshape(B, N)
    fixed = hydro if not opts.refine_hydrogens else np.zeros_like(hydro)
    fixed = fixed | (occ <= 0)  # an empty site (e.g. a missing peak) does not move
    src = np.tile(np.arange(N), (B, 1))  # whose parameters move each atom: its own or its parent's
    u_ratio = np.ones((B, N))
    if riding is not None:
        rides = riding >= 0
        src = np.where(rides, riding, src)
        fixed = fixed | rides
        parent_u = np.take_along_axis(uiso, src, 1)
        u_ratio = np.where(rides, uiso / np.maximum(parent_u, 1e-6), 1.0)
    x0 = np.zeros((B, N, 3))
    basis = np.zeros((B, N, 3, 3))
    order = np.ones((B, N))
    for b in range(B):
        x0[b], basis[b], order[b] = _site_constraints(frac[b], ops, cell, ~fixed[b] & (occ[b] > 0.99))
        basis[b] = basis[b][src[b]]  # a rider shifts along its parent's free directions
    pos_free = (np.abs(basis).sum(axis=2) > 0) & ~fixed[..., None] & opts.refine_positions  # (B,N,3)
    u_free = np.full((B, N), opts.refine_uiso) & ~fixed
    if aniso is not None:
        u_free &= ~aniso
    usrc = np.tile(np.arange(N), (B, 1))  # whose U parameter each atom has: its own or its element's
    if opts.u_per_element:
        for b in range(B):
            first: dict[str, int] = {}
            for n in np.nonzero(u_free[b])[0]:
                usrc[b, n] = first.setdefault(els[b][n], int(n))
        u_free &= usrc == np.arange(N)
    n_params = pos_free.reshape(B, -1).sum(1) + u_free.sum(1) + 1  # + scale

    t = lambda a, **k: torch.tensor(np.asarray(a), device=device, **k)
    x0_t = t(x0, dtype=dtype)
    basis_t = t(basis, dtype=dtype)
    weight_t = t(occ / order, dtype=dtype)  # (B,N)
    tidx = torch.tensor([[types.index(e) for e in row] for row in els], device=device)  # (B,N)
    free = torch.cat([t(pos_free.reshape(B, -1)), t(u_free),
                      torch.ones(B, 1, dtype=torch.bool, device=device)], 1)  # (B,P)
    P = 4 * N + 1
    s2 = refl.sf.s2  # (M,) Å⁻²

    p = torch.zeros(B, N, 3, device=device, dtype=dtype)
    u = t(np.clip(uiso, UISO_MIN, UISO_MAX), dtype=dtype)
    src_t = t(src)  # (B,N)
    src3 = src_t[..., None].expand(B, N, 3)
    ratio_t = t(u_ratio, dtype=dtype)
    rides_t = src_t != torch.arange(N, device=device)

    def frac_of(p_):
        """Fractional positions (B,N,3): riders take their parent's shift."""
        return x0_t + torch.einsum("bnij,bnj->bni", basis_t, p_.gather(1, src3))

    usrc_t = t(usrc)  # (B,N)

    def u_of(u_):
        """Uiso (B,N): an atom's own, or its element's (u_per_element); a rider's is its
        ratio times its parent's."""
        own = u_.gather(1, usrc_t)
        return torch.where(rides_t, ratio_t * own.gather(1, src_t), own)

    ua_t = None if aniso is None else t(uaniso, dtype=dtype).reshape(B * N, 1, 6)
    mask_t = None if aniso is None else t(aniso).reshape(B * N, 1)

    def atom_f(p_, u_):
        """Contribution of each atom to F, (B,N,M) complex."""
        fr = frac_of(p_).reshape(B * N, 1, 3)
        Fa = refl.sf.calc(fr, tidx.reshape(B * N, 1), u_of(u_).reshape(B * N, 1), weight_t.reshape(B * N, 1),
                          uaniso=ua_t, aniso_mask=mask_t)
        return Fa.reshape(B, N, M)

    # central differences, all 6 displaced copies in one call: in float64 the error is
    # ~1e-10 relative (forward-mode AD would give the same numbers but costs seconds of
    # one-time set-up per process)
    eps = 1e-5 if dtype == torch.float64 else 1e-3  # fractional step

    def atom_f_and_derivatives(p_, u_):
        """F of each atom (B,N,M) and dF/dp along each basis column: 3 x (B,N,M)."""
        steps = torch.eye(3, device=device, dtype=dtype) * eps  # (3,3)
        shifted = torch.cat([p_[None] + steps[:, None, None, :], p_[None] - steps[:, None, None, :]])
        Fs = torch.stack([atom_f(q, u_) for q in torch.cat([p_[None], shifted])])  # (7,B,N,M)
        return Fs[0], [(Fs[1 + c] - Fs[4 + c]) / (2 * eps) for c in range(3)]

    with torch.no_grad():
        fc = atom_f(p, u).sum(1).abs()
        k = scale_factor(refl.fo, fc).clamp_min(1e-8)  # (B,)

    def cost(p_, u_, k_, w, bumps):
        fc2 = atom_f(p_, u_).sum(1).abs() ** 2
        r = w * (refl.fo2 - k_[:, None] ** 2 * fc2) ** 2
        return r.sum(-1) + bumps.residuals(frac_of(p_), B)

    lam = torch.full((B,), LAMBDA_START, device=device, dtype=dtype)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    n_cycles = 0
    A = None
    for cycle in range(cycles):
        n_cycles = cycle + 1
        with torch.no_grad():
            bumps = _Bumps(refl, els, frac_of(p).cpu().numpy(), occ, opts.restraints, opts.bonds,
                           opts.distances)
        # per-atom contributions and their derivatives along each basis direction
        with torch.no_grad():
            Fa, dF = atom_f_and_derivatives(p, u)
        with torch.no_grad():
            Fc = Fa.sum(1)  # (B,M)
            fc2 = Fc.abs() ** 2
            w = refl.weights(k[:, None] ** 2 * fc2, weight_a, weight_b)  # (B,M)
            sw = w.sqrt()
            resid = sw * (refl.fo2 - k[:, None] ** 2 * fc2)  # (B,M)
            # dr/dtheta = -sqrt(w) k² d|Fc|²/dtheta,  d|Fc|² = 2 Re(conj(Fc) dFc)
            dpos = torch.stack([2 * (Fc.conj()[:, None] * d).real for d in dF], -1)  # (B,N,M,3)
            du = 2 * (Fc.conj()[:, None] * (-2 * math.pi ** 2 * s2) * Fa).real  # (B,N,M)
            if riding is not None:  # a rider's derivatives belong to its parent's parameters
                dpos = torch.zeros_like(dpos).scatter_add_(1, src_t[:, :, None, None].expand_as(dpos), dpos)
                du = torch.zeros_like(du).scatter_add_(1, src_t[:, :, None].expand_as(du),
                                                       du * ratio_t[..., None])
            if opts.u_per_element:  # an element's atoms share one U: their derivatives add up
                du = torch.zeros_like(du).scatter_add_(1, usrc_t[:, :, None].expand_as(du), du)
            k2 = k[:, None, None] ** 2
            J = torch.cat([k2 * dpos.permute(0, 2, 1, 3).reshape(B, M, 3 * N),
                           k2 * du.permute(0, 2, 1),
                           (2 * k[:, None] * fc2)[..., None]], -1)  # d(k²|Fc|²)/dθ (B,M,P)
            J = -sw[..., None] * J
            J = J * free[:, None, :]
            A = J.transpose(1, 2) @ J  # (B,P,P)
            g = (J.transpose(1, 2) @ resid[..., None])[..., 0]  # (B,P)
            S = (resid ** 2).sum(-1)
            if bumps.n:
                rb, Jb = bumps.jacobian(frac_of(p), basis_t, B, N)
                Jb = Jb.reshape(bumps.n, 3 * N) * free[bumps.b, :3 * N]
                Jfull = torch.zeros(bumps.n, P, device=device, dtype=dtype)
                Jfull[:, :3 * N] = Jb
                A = A.index_add(0, bumps.b, Jfull[:, :, None] * Jfull[:, None, :])
                g = g.index_add(0, bumps.b, Jfull * rb[:, None])
                S = S.index_add(0, bumps.b, rb ** 2)
            eye = torch.eye(P, device=device, dtype=dtype)
            A = A + eye * (~free)[:, None, :].to(dtype)  # unit diagonal for fixed parameters
            diag = torch.diagonal(A, dim1=1, dim2=2)
            accepted = done.clone()
            for _ in range(4):  # Marquardt: shrink the step until S goes down
                damp = lam[:, None] * (diag + 1e-9 * diag.max(-1, keepdim=True).values)
                delta = torch.linalg.solve(A + torch.diag_embed(damp), -g[..., None])[..., 0]
                delta = delta * free
                p_new = p + delta[:, :3 * N].reshape(B, N, 3)
                u_new = (u + delta[:, 3 * N:4 * N]).clamp(UISO_MIN, UISO_MAX)
                k_new = (k + delta[:, -1]).clamp_min(1e-8)
                S_new = cost(p_new, u_new, k_new, w, bumps)
                ok = (S_new < S) & ~accepted
                p = torch.where(ok[:, None, None], p_new, p)
                u = torch.where(ok[:, None], u_new, u)
                k = torch.where(ok, k_new, k)
                small = ok & ((S - S_new) < STOP_DECREASE * S)
                done = done | small
                lam = torch.where(ok, (lam * 0.3).clamp_min(1e-7), lam)
                lam = torch.where(~ok & ~accepted, lam * 8.0, lam)
                accepted = accepted | ok
                if bool(accepted.all()):
                    break
            # a candidate that cannot go down even with heavy damping has converged
            done = done | (lam > 1e4)
        if bool(done.all()):
            break

    # final statistics
    with torch.no_grad():
        Fa = atom_f(p, u)
        fc_final = Fa.sum(1).abs()  # (B,M)
        frac_p = frac_of(p)
        frac_final = np.mod(frac_p.cpu().numpy(), 1.0)
        bumps = _Bumps(refl, els, frac_p.cpu().numpy(), occ, opts.restraints)
        violated = bumps.violated(frac_p)
    F_np = refl.fo.cpu().numpy()
    sig_np = refl.sigma.cpu().numpy()
    results = []
    for b in range(B):
        ag = agreement(F_np, sig_np, fc_final[b].cpu().numpy(), int(n_params[b]), weight_a, weight_b)
        res = RefinementResult(
            elements=els[b], frac=frac_final[b], uiso=u_of(u)[b].cpu().numpy().copy(), occ=occ[b].copy(),
            scale=float(ag.scale), agreement=ag, n_params=int(n_params[b]), n_reflections=M,
            cycles=n_cycles, converged=bool(done[b]), bumps=int(np.sum(violated == b)),
            fc=float(ag.scale) * fc_final[b].cpu().numpy(),
            uaniso=None if aniso is None else np.where(aniso[b][:, None], uaniso[b], np.nan))
        if esd and A is not None:
            res.frac_esd, res.uiso_esd = _esds(A[b], free[b], basis[b], N, ag.goof)
        results.append(res)
    return results


def _esds(A: torch.Tensor, free: torch.Tensor, basis: np.ndarray, N: int, goof: float):
    """Esds from the inverse normal matrix scaled by GooF²: fractional (N,3), Uiso (N,)."""
    idx = torch.nonzero(free).flatten()
    try:
        cov_free = torch.linalg.inv(A[idx][:, idx]) * goof ** 2
    except RuntimeError:  # singular: no esds
        return None, None
    P = A.shape[0]
    cov = torch.zeros(P, P, dtype=A.dtype, device=A.device)
    cov[idx[:, None], idx[None, :]] = cov_free
    cov = cov.cpu().numpy()
    frac_esd = np.zeros((N, 3))
    for n in range(N):
        c = cov[3 * n:3 * n + 3, 3 * n:3 * n + 3]
        frac_esd[n] = np.sqrt(np.clip(np.diag(basis[n] @ c @ basis[n].T), 0, None))
    uiso_esd = np.sqrt(np.clip(np.diag(cov)[3 * N:4 * N], 0, None))
    return frac_esd, uiso_esd


def refine_structure(data: DataSet, elements: list[str], frac: np.ndarray,
                     uiso: np.ndarray | None = None, occ: np.ndarray | None = None,
                     uaniso: np.ndarray | None = None, riding: np.ndarray | None = None,
                     cycles: int = 20, esd: bool = True,
                     opts: LsqOptions = LsqOptions()) -> RefinementResult:
    """Refine one structure: positions, Uiso and scale against |Fo|; see the module doc.

    frac (N,3) fractional, uiso (N,) Å², occ (N,) chemical occupancy, uaniso (N,6) fixed
    anisotropic ADPs (NaN rows: isotropic atoms), riding (N,) as in `refine_batch`. The
    result carries esds of the coordinates (fractional) and Uiso (Å²) unless esd=False.
    """
    batch = lambda a, dtype=float: None if a is None else np.asarray(a, dtype)[None]
    frac = np.asarray(frac, dtype=float).reshape(1, -1, 3)
    return refine_batch(data, list(elements), frac, batch(uiso), batch(occ), batch(uaniso),
                        batch(riding, int), cycles, esd, opts)[0]
