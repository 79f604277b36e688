"""The `molecule` method: direct-space search over the position, orientation and torsions of
the molecules a record names (`molecules`, from `xdxd-prep --molecule`).

Each molecule is a rigid conformer with torsions (molecule.tree), with up to
`ring_conformers` ring conformations where a ring is flexible; a particle is one guess of
every molecule's centre (Cartesian Å), orientation (quaternion), ring conformation and
torsion changes (rad). A population of particles is one torch batch, searched as powder
crystallography's direct-space methods do (DASH, FOX; GALLOP: local optimisation of a
population with Adam plus a global step):

- objective (`Objective`): the amplitude misfit Σ (|Fo| - k|Fc|)² / Σ |Fo|² over the
  reflections in use, k the least-squares scale and one overall Uiso per particle fitted
  on a grid (H atoms included in |Fc|: at 2 Å they carry a tenth of the scattering), plus
  CLASH_WEIGHT × Σ ((d0 - d)/0.1 Å)² over heavy-atom contacts shorter than
  d0 = chemistry.MIN_CONTACT_FACTOR (r_i + r_j) (van der Waals radii; symmetry images and
  other molecules, and atoms of one molecule more than three bonds apart);
- local optimisation (`optimise`): Adam on all particles at once for `steps` steps, the
  reflections in use growing from the low-resolution share `low_res_start` to all of them;
- selection (`search`): after each round the best `keep` particles stay, a share is put
  back near them (small random moves) and the rest start afresh at random; the best
  distinct structures (|Fc| patterns, so origin shifts and the enantiomorph count once)
  become the candidates. The search stops after `rounds` rounds, at the time budget, or
  when the best `agree` particles are one structure, its score below `agree_score`, and
  that structure was found from at least `agree_lineages` independent random starts (or
  its score is below `sure_score`)
  (copies of one particle moved a little agree with each other whether they are right
  or not; and a strongly constrained search can agree on a wrong minimum).

A molecule on a special position (count 1/2, 1/3, 1/4 or 1/6 of a molecule in the asymmetric
unit) is searched whole, with that weight in |Fc|, starting on a site of that order. On a
site of order 2 it is held in the site's symmetry (molecule.symmetry.Symmetrised: each heavy
atom moved halfway to the site operation's image of its partner in the molecule's own graph
symmetry; `symmetry_weight` per Å² of that move in the objective); elsewhere its images add
up to the full molecule only where the site's symmetry maps it onto itself, so the data
hold it there. Its candidates list one atom of each set the symmetry relates
(`_unique_part`), as the asymmetric unit has them. Every candidate also lists the
molecule's own bond lengths and 1,3 distances as DFIX/DANG restraints for xdxd-refine.
Every setting is in MoleculeConfig; random numbers come from torch.Generator(seed) on the
CPU, so a seed and a number of rounds give the same candidates on any machine.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from xdxd import records
from xdxd.crystal.chemistry import MIN_CONTACT_FACTOR, is_hydrogen, vdw_radius
from xdxd.crystal.dataset import DataSet
from xdxd.crystal import statistics
from xdxd.crystal.structure_factors import StructureFactors
from xdxd.molecule.symmetry import Symmetrised
from xdxd.molecule.tree import MoleculeModel, TorsionTree, molecule_model, place
from xdxd.crystal.symmetry import special_sites
from xdxd.solve.diffusion.bonding import _identity_op, lattice_cells
from xdxd.solve.options import config_from

CLASH_WIDTH_A = 0.1  # Å inside the contact limit that costs one unit


@dataclass(frozen=True)
class MoleculeConfig:
    particles: int = 256          # particles in the population (one batch)
    rounds: int = 30              # rounds of local optimisation and selection
    steps: int = 60               # Adam steps per round
    low_res_start: float = 0.3    # share of the reflections (lowest resolution first) at step 0;
                                  # all of them from two thirds of the steps on
    h_share: float = 0.34         # share of the steps (the last) that include the H atoms
    lr_centre: float = 0.15       # Å, Adam step of the molecule centres
    lr_orientation: float = 0.06  # quaternion units (about rad/2), Adam step of the orientations
    lr_torsion: float = 0.1       # rad, Adam step of the torsions
    clash_weight: float = 0.002   # misfit units per unit of clash
    keep: float = 0.25            # share of the population kept after a round
    near: float = 0.5             # share put back near the kept (the rest start afresh)
    move_centre: float = 0.5      # Å, spread of a move near a kept particle
    move_orientation: float = 0.15  # quaternion units
    move_torsion: float = 0.6     # rad
    agree: int = 8                # stop once this many best particles are one structure ...
    agree_cc: float = 0.995       # ... (their |Fc| correlate above this) ...
    agree_lineages: int = 2       # ... found from this many random starts (kept particles included) ...
    agree_score: float = 0.1      # ... and its score is below this
    sure_score: float = 0.03      # a best score below this needs no second random start to agree
    seed_conformer: int = 0       # RDKit embedding seed
    ring_conformers: int = 4      # distinct ring conformations tried per molecule (flexible rings)
    switch_conformer: float = 0.1  # chance that a move near a kept particle changes its ring conformation
    relabel_best: int = 4         # the best particles put back the other way round each round (a
                                  # molecule's graph relabellings: molecule.symmetry.relabellings)
    pairings: int = 4             # pairings of its atoms tried per kind of symmetry element for a molecule
                                  # on a site of order 2 (0: search it whole, not held in the site's symmetry)
    symmetry_weight: float = 0.05  # misfit units per Å² that such a molecule is moved to have its site's symmetry


# ---------------------------------------------------------------------------
# the problem

@dataclass
class Copy:
    """One molecule in the asymmetric unit: its model, tree, its atoms' rows in the
    asymmetric unit's atom list (a slice), and its weight: 1, or 1/k for a molecule on a
    special position whose site symmetry of order k maps it onto itself."""
    model: MoleculeModel
    tree: TorsionTree
    rows: slice
    weight: float = 1.0


class Objective:
    """Misfit and clash of a batch of asymmetric units (all molecules' atoms, H included)."""

    U_GRID_A2 = tuple(0.01 * i for i in range(1, 13))  # overall Uiso tried per particle, Å²

    def __init__(self, data: DataSet, copies: list[Copy], device: str, held: frozenset[int] = frozenset()):
        """held: the copies held in their site's symmetry (molecule.symmetry.Symmetrised)."""
        self.copies = copies
        self.elements = [e for c in copies for e in c.model.elements]
        kw = dict(device=device, dtype=torch.float32)
        order = np.argsort(1.0 / np.maximum(_s2(data), 1e-12), kind="stable")[::-1].copy()
        self.order = torch.tensor(order, device=device)  # reflections, lowest resolution first
        types = sorted(set(self.elements))
        self.sf = StructureFactors(data.cell, data.ops, data.hkl[order], types, device=device)
        self.type_idx = self.sf.type_index(self.elements)
        self.weight = torch.tensor([c.weight for c in copies for _ in c.model.elements], **kw)  # (N,)
        self.fo = torch.tensor(data.F[order], **kw)
        self.s2 = self.sf.s2
        self.orth = torch.tensor(np.array(data.cell.orth.mat), **kw)
        self.deorth = torch.tensor(np.array(data.cell.frac.mat), **kw)
        self.rot = torch.tensor(data.ops.rot, **kw)
        self.tran = torch.tensor(data.ops.tran, **kw)
        self.u_grid = torch.tensor(self.U_GRID_A2, **kw)
        heavy = [k for k, e in enumerate(self.elements) if not is_hydrogen(e)]
        self.heavy = torch.tensor(heavy, device=device)
        r = torch.tensor([vdw_radius(self.elements[k]) for k in heavy], **kw)
        self.limit = MIN_CONTACT_FACTOR * (r[:, None] + r[None, :])          # (H,H) Å
        # lattice translations that can bring an image within the longest contact limit
        cells, zero = lattice_cells(self.orth, float(self.limit.max()) + 0.5)
        self.lattice = cells.to(device) @ self.orth.T                          # (C,3) Å
        self.zero = zero
        O, C = len(self.rot), len(cells)
        # an atom and itself, or atoms of one molecule three bonds apart or fewer, under the
        # identity and no lattice translation, are not contacts; nor is anything between a
        # molecule on a special position and its own images (they are the molecule itself;
        # for a molecule held in its site's symmetry only its image by the site's operation,
        # which `clash` drops per particle)
        near = torch.tensor(_near_pairs(copies, heavy), device=device)        # (H,H) bool
        same = torch.zeros(O, C, dtype=torch.bool, device=device)
        same[_identity_op(self.rot, self.tran), zero] = True
        skip = near[:, :, None, None] & same[None, None]                        # (H,H,O,C)
        part = torch.tensor(_fractional_pairs(copies, heavy, held), device=device)  # (H,H) bool
        skip = skip | (part[:, :, None, None] & ~same[None, None])
        self.counted = (~skip).to(torch.float32)                               # (H,H,O,C)
        rows = np.zeros((len(copies), len(self.elements)), bool)
        for k, c in enumerate(copies):
            rows[k, c.rows] = True
        self.rows = torch.tensor(rows[:, heavy], dtype=torch.float32, device=device)  # (K,H)

    def misfit(self, frac: torch.Tensor, m: int | None = None, hydrogens: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(misfit (B,), overall Uiso (B,) Å²) of frac (B,N,3) on the m lowest-resolution
        reflections (all by default), with or without the H atoms; the U is fitted
        without a gradient."""
        m = len(self.fo) if m is None else m
        types, weight = self.type_idx, self.weight
        if not hydrogens:
            frac, types, weight = frac[:, self.heavy], types[self.heavy], weight[self.heavy]
        fc0 = self.sf.calc(frac, types, None, weight[None], first=m).abs()            # (B,m)
        fo = self.fo[:m]
        u = self._fit_u(fc0)
        fc = self._scaled(fc0, u)
        k = statistics.scale_factor(fo, fc)[:, None]
        return ((fo - k * fc) ** 2).sum(-1) / (fo * fo).sum(), u

    def _scaled(self, fc0: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """|Fc| (B,m) at U = 0 on the m lowest-resolution reflections, at Uiso u (B,) Å²."""
        return fc0 * torch.exp(-2 * math.pi ** 2 * u[:, None] * self.s2[:fc0.shape[-1]])

    def _fit_u(self, fc0: torch.Tensor) -> torch.Tensor:
        """The overall Uiso (B,) Å² of U_GRID_A2 with the lowest R1 for |Fc| (B,m) at U = 0
        (the m lowest-resolution reflections), scale fitted; no gradient."""
        with torch.no_grad():
            fo, s2 = self.fo[:fc0.shape[-1]], self.s2[:fc0.shape[-1]]
            dw = torch.exp(-2 * math.pi ** 2 * self.u_grid[:, None] * s2)              # (G,m)
            fc = fc0[:, None] * dw                                                      # (B,G,m)
            return self.u_grid[statistics.r1(fo, fc).argmin(-1)]                                   # (B,)

    def r1(self, fc0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(R1 (B,) on all reflections, overall Uiso (B,) Å²) of |Fc| (B,M) at U = 0 (`fc0`),
        at each particle's fitted Uiso."""
        with torch.no_grad():
            u = self._fit_u(fc0)
            return statistics.r1(self.fo, self._scaled(fc0, u)), u

    def fc0(self, frac: torch.Tensor) -> torch.Tensor:
        """|Fc| (B,M) of frac (B,N,3) at U = 0, all atoms, all reflections (no gradient)."""
        with torch.no_grad():
            return self.sf.calc(frac, self.type_idx, None, self.weight[None]).abs()

    def clash(self, frac: torch.Tensor, site_ops: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        """Σ ((d0 - d) / CLASH_WIDTH_A)² / 2 (B,) over heavy-atom contacts shorter than d0.
        site_ops: {copy: the operation (B,) of its site} for the copies held in a site's
        symmetry, whose images by that operation (within the cell) are themselves."""
        own = None
        if site_ops:
            B, O = frac.shape[0], len(self.rot)
            drop = torch.zeros(B, self.heavy.numel(), self.heavy.numel(), O, device=frac.device)
            for k, op in site_ops.items():
                r = self.rows[k]
                drop += (r[:, None] * r[None, :])[None, :, :, None] * \
                    torch.nn.functional.one_hot(op, O).to(frac.dtype)[:, None, None, :]
            own = 1.0 - drop.clamp(max=1.0)
        return _Clash.apply(frac[:, self.heavy], self.rot, self.tran, self.orth, self.lattice,
                            self.limit, self.counted, own, self.zero)


class _Clash(torch.autograd.Function):
    """The contact penalty of x (B,H,3) fractional against every image R x_j + t + L
    (operations O, lattice translations L (C,3) Å), with its gradient. Both are computed
    together, a block of particles at a time (`BLOCK` pair-images per block, so a block's
    arrays stay in cache), and only the gradient (B,H,3) is kept for the backward pass.
    The nearest-image differences are three coordinate planes (B,H,H,O) (much faster on a
    CPU than a trailing axis of 3). own (B,H,H,O) or None: a further per-particle mask of
    the nearest images (lattice translation `zero`)."""

    BLOCK = 1 << 16

    @staticmethod
    def forward(ctx, x, rot, tran, orth, lattice, limit, counted, own, zero):
        B, H, _ = x.shape
        n = max(1, _Clash.BLOCK // max(1, H * H * rot.shape[0]))
        want = ctx.needs_input_grad[0]
        energy, grad = [], []
        m, shifts = orth.tolist(), lattice.tolist()  # once, not per block
        for b in range(0, B, n):
            e, g = _clash_block(x[b:b + n], rot, tran, m, shifts, limit, counted,
                                None if own is None else own[b:b + n], zero, want)
            energy.append(e)
            grad.append(g)
        if want:
            ctx.save_for_backward(torch.cat(grad))
        return torch.cat(energy)

    @staticmethod
    def backward(ctx, g):
        (grad,) = ctx.saved_tensors
        return g[:, None, None] * grad, None, None, None, None, None, None, None, None


def _clash_block(x, rot, tran, m, lattice, limit, counted, own, zero, want_grad):
    """(energy (b,), dE/dx (b,H,3) or None) of a block of particles x (b,H,3) (_Clash);
    m: the orthogonalisation matrix, lattice: the translations (C,3) Å, as lists."""
    y = torch.einsum("oij,bhj->ibho", rot, x) + tran.T[:, None, None]         # (3,b,H,O)
    d = [y[k][:, None] - x[..., k][:, :, None, None] for k in range(3)]      # (b,H,H,O) each
    d = [dk - torch.round(dk) for dk in d]
    c = [sum(m[i][k] * d[k] for k in range(3) if m[i][k] != 0.0) for i in range(3)]  # Å
    energy = x.new_zeros(x.shape[0])
    a_sum = torch.zeros_like(c[0]) if want_grad else None
    a_lat = [torch.zeros_like(c[0]) for _ in range(3)] if want_grad else None
    w2 = CLASH_WIDTH_A ** 2
    lim = limit[:, :, None]
    for k, shift in enumerate(lattice):
        e = [c[i] + shift[i] if shift[i] != 0.0 else c[i] for i in range(3)]
        dist = (e[0].square() + e[1].square() + e[2].square()).clamp_min(1e-12).sqrt()
        over = (lim - dist).clamp_min(0.0) * counted[..., k]
        if own is not None and k == zero:
            over = over * own
        energy = energy + 0.5 / w2 * over.square().sum((1, 2, 3))
        if want_grad:
            a = over / (w2 * dist)                                                # -dE/de = a e
            a_sum += a
            for i in range(3):
                if shift[i] != 0.0:
                    a_lat[i] += shift[i] * a
    if not want_grad:
        return energy, None
    g_c = [-(a_sum * c[i] + a_lat[i]) for i in range(3)]                        # (b,H,H,O) each
    g_d = [sum(m[i][k] * g_c[i] for i in range(3) if m[i][k] != 0.0) for k in range(3)]
    g_d = [gd if torch.is_tensor(gd) else torch.zeros_like(a_sum) for gd in g_d]
    g_y = torch.stack([gd.sum(1) for gd in g_d])                                 # (3,b,H,O)
    g_x = -torch.stack([gd.sum((2, 3)) for gd in g_d], -1) + torch.einsum("oij,ibho->bhj", rot, g_y)
    return energy, g_x


def _s2(data: DataSet) -> np.ndarray:
    from xdxd.crystal.structure_factors import inverse_d2
    return inverse_d2(data.cell, data.hkl)


def _fractional_pairs(copies: list[Copy], heavy: list[int], held: frozenset[int]) -> np.ndarray:
    """(H,H) bool over the heavy atoms: both in one molecule on a special position that is
    not held in its site's symmetry (copies `held`)."""
    n = sum(c.model.n_atoms for c in copies)
    part = np.zeros((n, n), bool)
    for k, c in enumerate(copies):
        if c.weight < 1 and k not in held:
            part[c.rows, c.rows] = True
    return part[np.ix_(heavy, heavy)]


def _near_pairs(copies: list[Copy], heavy: list[int]) -> np.ndarray:
    """(H,H) bool over the heavy atoms: in one molecule and at most three bonds apart."""
    from xdxd.molecule.tree import _depths
    n = sum(c.model.n_atoms for c in copies)
    near = np.zeros((n, n), bool)
    for c in copies:
        m = c.model
        for a in range(m.n_atoms):
            d = _depths(m.n_atoms, m.bonds, a)
            near[c.rows.start + a, c.rows.start + np.nonzero(d <= 3)[0]] = True
    return near[np.ix_(heavy, heavy)]


# ---------------------------------------------------------------------------
# particles

@dataclass
class Particles:
    """Parameters of a population over all K molecule copies: centre (B,K,3) Å, a shift
    from the copy's starting site; orientation (B,K,4) quaternion; torsions (B,T) rad;
    site (B,K): which of the copy's sites (`MoleculeSearch.sites`) it started on;
    conformer (B,K): which of the copy's ring conformations it has; lineage (B,): the
    random start it descends from."""
    centre: torch.Tensor
    orientation: torch.Tensor
    torsions: torch.Tensor
    site: torch.Tensor
    conformer: torch.Tensor
    lineage: torch.Tensor

    FIELDS = ("centre", "orientation", "torsions", "site", "conformer", "lineage")

    def take(self, idx: torch.Tensor) -> "Particles":
        return Particles(*(getattr(self, f)[idx] for f in self.FIELDS))

    @staticmethod
    def cat(parts: list["Particles"]) -> "Particles":
        return Particles(*(torch.cat([getattr(p, f) for p in parts]) for f in Particles.FIELDS))


class MoleculeSearch:
    """The search for one record: copies of the molecules, the objective, the population."""

    def __init__(self, data: DataSet, models: list[tuple[MoleculeModel, float]],
                 cfg: MoleculeConfig, device: str = "cpu"):
        self.cfg, self.device = cfg, device
        self._lineages = 0  # random starts so far
        self.copies, start = [], 0
        for m, weight in models:
            self.copies.append(Copy(m, TorsionTree(m, device), slice(start, start + m.n_atoms), weight))
            start += m.n_atoms
        # where each copy starts: anywhere, or for a molecule on a special position on a site
        # of its order (its centre then moves freely: the conformer's centroid need not be
        # the molecule's centre of symmetry, and the data hold it on the site). A molecule
        # on a site of order 2 that its own symmetry can match is held in the site's
        # symmetry: `Symmetrised`, one start per (symmetry element, pairing of its atoms).
        self.sites, self.held = [], {}
        for k, c in enumerate(self.copies):
            x0 = np.zeros((1, 3))
            if c.weight < 1:
                x0 = special_sites(data.ops, round(1 / c.weight))
                if not len(x0):
                    raise records.RecordError(f"{data.spacegroup.xhm()} has no special position of "
                                              f"order {round(1 / c.weight)} for {c.model.smiles}")
                held = Symmetrised.of(c.model, x0, data.ops, cfg.pairings, device) \
                    if round(1 / c.weight) == 2 and cfg.pairings > 0 else None
                if held is not None:
                    self.held[k], x0 = held, held.points
            self.sites.append(torch.tensor(x0, dtype=torch.float32, device=device))
        self.objective = Objective(data, self.copies, device, frozenset(self.held))
        self.t_slices, t0 = [], 0
        for c in self.copies:
            self.t_slices.append(slice(t0, t0 + c.tree.n_torsions))
            t0 += c.tree.n_torsions
        self.n_torsions = t0

    def frac(self, p: Particles) -> torch.Tensor:
        """Fractional coordinates (B,N,3) of every atom of the asymmetric unit."""
        return self.build(p)[0]

    def build(self, p: Particles) -> tuple[torch.Tensor, torch.Tensor]:
        """(fractional coordinates (B,N,3) of every atom of the asymmetric unit, asymmetry
        (B,) Å²: how far the molecules held in a site's symmetry were moved to have it)."""
        o = self.objective
        parts = []
        asymmetry = torch.zeros(p.centre.shape[0], device=p.centre.device)
        for k, (c, ts, x0) in enumerate(zip(self.copies, self.t_slices, self.sites)):
            x = c.tree.build(p.torsions[:, ts], p.conformer[:, k])
            centre = x0[p.site[:, k]] + p.centre[:, k] @ o.deorth.T
            x = place(x, p.orientation[:, k], centre, o.orth, o.deorth)
            if k in self.held:
                x, moved = self.held[k].apply(x, p.site[:, k], o.orth)
                asymmetry = asymmetry + moved
            parts.append(x)
        return torch.cat(parts, dim=1), asymmetry

    def _new_lineages(self, n: int) -> torch.Tensor:
        """n lineage numbers not given before (one per random start)."""
        start, self._lineages = self._lineages, self._lineages + n
        return torch.arange(start, start + n, device=self.device)

    def random(self, n: int, gen: torch.Generator) -> Particles:
        """n particles anywhere: centres uniform in the cell, orientations uniform, torsions
        uniform in [-pi, pi]."""
        K = len(self.copies)
        frac = torch.rand(n, K, 3, generator=gen)
        q = torch.randn(n, K, 4, generator=gen)
        t = (torch.rand(n, self.n_torsions, generator=gen) * 2 - 1) * math.pi
        site = torch.stack([torch.randint(len(x0), (n,), generator=gen) for x0 in self.sites], 1)
        conformer = torch.stack([torch.randint(c.tree.n_conformers, (n,), generator=gen)
                                 for c in self.copies], 1)
        special = torch.tensor([c.weight < 1 for c in self.copies])
        frac = torch.where(special[None, :, None], 0.0, frac)  # on a special position: its site
        dev = self.device
        return Particles((frac @ self.objective.orth.cpu().T).to(dev),
                         (q / q.norm(dim=-1, keepdim=True)).to(dev), t.to(dev), site.to(dev),
                         conformer.to(dev), self._new_lineages(n))

    def near(self, p: Particles, gen: torch.Generator) -> Particles:
        """Copies of p moved a little (cfg.move_*), a share cfg.switch_conformer of them into
        another ring conformation."""
        cfg, dev = self.cfg, self.device
        q = p.orientation + cfg.move_orientation * torch.randn(p.orientation.shape, generator=gen).to(dev)
        n_conf = torch.tensor([c.tree.n_conformers for c in self.copies])
        switch = torch.rand(p.conformer.shape, generator=gen) < cfg.switch_conformer
        other = (torch.rand(p.conformer.shape, generator=gen) * n_conf).long()
        conformer = torch.where(switch.to(dev), other.to(dev), p.conformer)
        return Particles(p.centre + cfg.move_centre * torch.randn(p.centre.shape, generator=gen).to(dev),
                         q / q.norm(dim=-1, keepdim=True),
                         p.torsions + cfg.move_torsion * torch.randn(p.torsions.shape, generator=gen).to(dev),
                         p.site, conformer, p.lineage)

    def relabelled(self, p: Particles) -> Particles:
        """Every particle of p with each relabelling of each copy's molecule (not for a copy
        held in its site's symmetry): the molecule turned (Kabsch, heavy atoms) so that each
        atom a lands where atom perm[a] was, torsions kept; a molecule placed the wrong way
        round (its O where an N belongs) is put the right way. Empty when no molecule has
        one."""
        from xdxd.molecule.tree import matrix_quaternion, quaternion_matrix
        out = []
        for k, c in enumerate(self.copies):
            perms = c.model.relabellings
            if k in self.held or not len(perms) or not len(p.lineage):
                continue
            heavy = torch.tensor(np.nonzero(c.model.heavy)[0], device=self.device)
            local = c.tree.build(p.torsions[:, self.t_slices[k]], p.conformer[:, k])[:, heavy]  # (B,h,3) Å
            turned = local @ quaternion_matrix(p.orientation[:, k]).transpose(1, 2)          # about the centre
            y = local - local.mean(1, keepdim=True)
            for perm in torch.tensor(perms, device=self.device):
                target = turned[:, perm]
                t_mean = target.mean(1, keepdim=True)
                u, _, vt = torch.linalg.svd(y.transpose(1, 2) @ (target - t_mean))            # (B,3,3)
                d = torch.sign(torch.linalg.det(vt.transpose(1, 2) @ u.transpose(1, 2)))
                fix = torch.ones(len(d), 3, device=self.device)
                fix[:, 2] = d
                rot = vt.transpose(1, 2) @ (fix[:, :, None] * u.transpose(1, 2))                # y R^T ~ target
                shift = t_mean[:, 0] - torch.einsum("bij,bj->bi", rot, local.mean(1))
                q = p.orientation.clone()
                q[:, k] = matrix_quaternion(rot)
                centre = p.centre.clone()
                centre[:, k] = centre[:, k] + shift
                out.append(Particles(centre, q, p.torsions, p.site, p.conformer, p.lineage))
        return Particles.cat(out) if out else p.take(torch.arange(0, device=self.device))

    def loss(self, p: Particles, m: int | None = None, hydrogens: bool = True) -> torch.Tensor:
        """Objective (B,): misfit on the m lowest-resolution reflections (all by default),
        with or without H, + clash_weight × clash + symmetry_weight × asymmetry."""
        frac, asymmetry = self.build(p)
        site_ops = {k: h.op[p.site[:, k]] for k, h in self.held.items()}
        obj, cfg = self.objective, self.cfg
        return obj.misfit(frac, m, hydrogens)[0] + cfg.clash_weight * obj.clash(frac, site_ops) \
            + cfg.symmetry_weight * asymmetry

    def score(self, p: Particles) -> torch.Tensor:
        """Objective (B,) on all reflections, H included."""
        with torch.no_grad():
            return self.loss(p)

    def optimise(self, p: Particles, deadline: float | None = None) -> Particles:
        """cfg.steps Adam steps on every particle at once, low resolution first; fewer if
        time.perf_counter() passes deadline."""
        cfg, obj = self.cfg, self.objective
        params = [p.centre.clone().requires_grad_(True), p.orientation.clone().requires_grad_(True),
                  p.torsions.clone().requires_grad_(True)]
        opt = torch.optim.Adam([{"params": [params[0]], "lr": cfg.lr_centre},
                                {"params": [params[1]], "lr": cfg.lr_orientation},
                                {"params": [params[2]], "lr": cfg.lr_torsion}])
        M = len(obj.fo)
        for step in range(cfg.steps):
            if deadline is not None and time.perf_counter() > deadline:
                break
            done = step / max(1, cfg.steps)
            share = cfg.low_res_start + (1 - cfg.low_res_start) * min(1.0, 1.5 * done)
            loss = self.loss(Particles(*params, p.site, p.conformer, p.lineage), max(8, int(share * M)),
                             hydrogens=done >= 1 - cfg.h_share)
            opt.zero_grad()
            loss.sum().backward()
            opt.step()
        with torch.no_grad():
            q = params[1] / params[1].norm(dim=-1, keepdim=True)
            return Particles(params[0].detach(), q, params[2].detach(), p.site, p.conformer, p.lineage)


def search(data: DataSet, models: list[tuple[MoleculeModel, float]], cfg: MoleculeConfig, seed: int = 0,
           device: str = "cpu", time_budget_s: float | None = None, progress=None
           ) -> tuple[MoleculeSearch, Particles, torch.Tensor, dict]:
    """The search (module docstring): (the search, final population, its scores, info).
    progress: called with a line of text after each round (the CLI's stderr log)."""
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    s = MoleculeSearch(data, models, cfg, device)
    B = cfg.particles
    pop = s.random(B, gen)
    rounds, stopped, last = 0, "rounds", None
    for r in range(cfg.rounds):
        t_round = time.perf_counter()
        if time_budget_s is not None and last is not None and t_round - t0 + last > time_budget_s:
            stopped = "time budget"
            break
        deadline = None if time_budget_s is None else t0 + time_budget_s
        pop = s.optimise(pop, deadline)
        score = s.score(pop)
        rounds += 1
        order = torch.argsort(score)
        pop, score = pop.take(order), score[order]
        if progress is not None:
            progress(f"round {rounds}: best score {float(score[0]):.4f}, {time.perf_counter() - t0:.0f} s")
        if _agree(s, pop, score, cfg):
            stopped = "agreed"
            break
        if deadline is not None and time.perf_counter() > deadline:
            stopped = "time budget"
            break
        if r + 1 == cfg.rounds:
            break
        n_keep = max(1, int(cfg.keep * B))
        n_near = int(cfg.near * B)
        kept = pop.take(torch.arange(n_keep, device=score.device))
        turned = s.relabelled(kept.take(torch.arange(min(cfg.relabel_best, n_keep), device=score.device)))
        turned = turned.take(torch.arange(min(len(turned.lineage), n_near // 2), device=score.device))
        pick = torch.randint(n_keep, (n_near - len(turned.lineage),), generator=gen).to(score.device)
        pop = Particles.cat([kept, turned, s.near(kept.take(pick), gen), s.random(B - n_keep - n_near, gen)])
        last = time.perf_counter() - t_round
    score = s.score(pop)
    order = torch.argsort(score)
    info = {"rounds": rounds, "stopped": stopped, "best_score": round(float(score[order[0]]), 5),
            "seconds": round(time.perf_counter() - t0, 3)}
    return s, pop.take(order), score[order], info


def _agree(s: MoleculeSearch, pop: Particles, score: torch.Tensor, cfg: MoleculeConfig) -> bool:
    """True when the cfg.agree best particles (pop sorted best first, their scores `score`)
    give one |Fc|, the best scores below cfg.agree_score, and the particles with that |Fc|
    among the best quarter descend from at least cfg.agree_lineages random starts (not
    needed when the best score is below cfg.sure_score: a fit that close is found again
    by its own copies, and waiting for a second random start to find it cost up to the
    whole budget)."""
    if cfg.agree < 2 or float(score[0]) > cfg.agree_score:
        return False
    n = min(len(pop.lineage), max(cfg.agree, int(cfg.keep * len(pop.lineage))))
    with torch.no_grad():
        top = pop.take(torch.arange(n, device=pop.centre.device))
        fc = s.objective.fc0(s.frac(top))
        z = fc - fc.mean(-1, keepdim=True)
        z = z / z.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        same = (z @ z[0]) > cfg.agree_cc                                     # (n,) like the best
        if not bool(same[:cfg.agree].all()):
            return False
        if float(score[0]) < cfg.sure_score:
            return True
        return len(torch.unique(top.lineage[same])) >= cfg.agree_lineages


# ---------------------------------------------------------------------------
# the method

SITE_ORDERS = (2, 3, 4, 6)  # a molecule on a special position: count 1/k of these


def expand_molecules(rec: dict) -> list[tuple[str, float]]:
    """(SMILES, weight) of each molecule copy in the asymmetric unit: count 2 is two copies
    of weight 1, count 0.5 one of weight 1/2 (a molecule on a site of order 2), count 1.5
    one of each."""
    rid = rec.get("id", "?")
    mols = rec.get("molecules") or []
    if not mols:
        raise records.RecordError(f"{rid}: no molecules in the record (xdxd-prep --molecule)")
    out = []
    for m in mols:
        count = float(m.get("count", 1))
        whole = int(math.floor(count + 1e-6))
        part = count - whole
        out += [(m["smiles"], 1.0)] * whole
        if part > 1e-4:
            k = round(1 / part)
            if k not in SITE_ORDERS or abs(part - 1 / k) > 1e-3:
                raise records.RecordError(f"{rid}: molecule {m['smiles']!r} count {count:g}: a part "
                                          f"of a molecule must be 1/2, 1/3, 1/4 or 1/6 (a special position)")
            out.append((m["smiles"], 1.0 / k))
    return out


def sample(rec: dict, samples: int = 8, seed: int = 0, device: str = "cpu",
           time_budget_s: float | None = None, progress=None, **options) -> tuple[list[dict], dict]:
    """Record -> (up to `samples` distinct candidates, best first, info). options: fields of
    MoleculeConfig. Each candidate holds every atom of the asymmetric unit: the heavy
    atoms with labels, and the H atoms flagged as riding on their parents."""
    cfg = config_from(MoleculeConfig, "molecule", **options)
    data = DataSet.from_record(rec).nonzero()
    rid = str(rec.get("id", "?"))
    if len(data) < 8:
        raise records.RecordError(f"{rid}: too few reflections ({len(data)}) to solve")
    models = []
    for smiles, weight in expand_molecules(rec):
        try:
            models.append((molecule_model(smiles, cfg.seed_conformer, cfg.ring_conformers), weight))
        except ValueError as e:
            raise records.RecordError(f"{rid}: {e}") from None
    s, pop, score, info = search(data, models, cfg, seed, device, time_budget_s,
                                 None if progress is None else (lambda line: progress(f"{rid}: {line}")))
    with torch.no_grad():
        frac = s.frac(pop)
        fc = s.objective.fc0(frac)
        r1, u = s.objective.r1(fc)
    keep = statistics.distinct_patterns(fc.cpu().numpy(), np.arange(len(fc)), samples)
    frac = np.mod(frac.cpu().numpy(), 1.0)
    out = []
    for i in keep:
        atoms, restraints = _atoms(s.copies, frac[i], float(u[i]), data, pop.conformer[i].tolist())
        out.append({"atoms": atoms, "restraints": restraints, "r1": round(float(r1[i]), 5),
                    "score": round(float(score[i]), 5), "method": "molecule", "particle": int(i)})
    info.update({"particles": len(pop.lineage), "steps": cfg.steps,
                 "molecules": [[m.smiles, w] for m, w in models],
                 "torsions": [m.torsions.shape[0] for m, _ in models],
                 "ring_conformers": [len(m.conformers) for m, _ in models], "config": asdict(cfg)})
    return out, info


BOND_SIGMA_A = 0.02   # Å, sigma of a bond-length restraint from the molecule (SHELXL DFIX)
ANGLE_SIGMA_A = 0.04  # Å, sigma of a 1,3-distance restraint from the molecule (SHELXL DANG)


def _atoms(copies: list[Copy], frac: np.ndarray, uiso: float, data: DataSet,
           conformers: list[int] | None = None) -> tuple[list[dict], list[list]]:
    """Record atoms of one asymmetric unit and the molecules' own geometry as restraints.

    Atoms: heavy atoms labelled by element (C1, C2, N1, ...), each H after them labelled
    by its parent and flagged `riding`. A molecule on a special position gives one atom of
    each set of atoms its site symmetry maps onto each other (an atom left without its
    partners keeps the molecule's weight as occupancy). Restraints: [label, label, d0 Å,
    sigma Å, "DFIX" | "DANG"] for every bond between heavy atoms (DFIX, BOND_SIGMA_A) and
    every pair two bonds apart (DANG, ANGLE_SIGMA_A), d0 from the copy's conformer
    (conformers[k], the first by default), between atoms the asymmetric unit lists."""
    count: dict[str, int] = {}
    heavy, hydrogens, restraints = [], [], []
    for k, c in enumerate(copies):
        x = frac[c.rows]
        occ = np.ones(c.model.n_atoms)
        keep = np.ones(c.model.n_atoms, bool)
        if c.weight < 1:
            x, keep, occ = _unique_part(x, c, data)
        labels = {}
        for a, e in enumerate(c.model.elements):
            if c.model.parent[a] >= 0 or not keep[a]:
                continue
            count[e] = count.get(e, 0) + 1
            labels[a] = f"{e}{count[e]}"
            heavy.append({"element": e, "label": labels[a], "xyz": _xyz(x[a]), "uiso": round(uiso, 5),
                          "occ": round(float(occ[a]), 4)})
        per_parent: dict[int, int] = {}
        for a, e in enumerate(c.model.elements):
            p = int(c.model.parent[a])
            if p < 0 or p not in labels:
                continue
            per_parent[p] = per_parent.get(p, 0) + 1
            hydrogens.append({"element": "H", "label": f"H{labels[p]}{per_parent[p]}",
                              "xyz": _xyz(x[a]), "uiso": round(1.2 * uiso, 5),
                              "occ": round(float(occ[p]), 4), "riding": labels[p]})
        xyz = c.model.conformers[conformers[k] if conformers else 0]
        for i, j, sigma, kind in _restrained_pairs(c.model):
            if i in labels and j in labels:
                d0 = round(float(np.linalg.norm(xyz[i] - xyz[j])), 4)
                restraints.append([labels[i], labels[j], d0, sigma, kind])
    return heavy + hydrogens, restraints


def _restrained_pairs(m: MoleculeModel) -> list[tuple[int, int, float, str]]:
    """(i, j, sigma Å, SHELX name) of the heavy-atom pairs one bond (BOND_SIGMA_A, DFIX) or
    two bonds (ANGLE_SIGMA_A, DANG) apart."""
    from xdxd.molecule.tree import _depths
    kind = {1: (BOND_SIGMA_A, "DFIX"), 2: (ANGLE_SIGMA_A, "DANG")}
    heavy = np.nonzero(m.heavy)[0]
    out = []
    for a in heavy:
        d = _depths(m.n_atoms, m.bonds, a)
        out += [(int(a), int(b), *kind[d[b]]) for b in heavy[heavy > a] if d[b] in kind]
    return out


def _unique_part(x: np.ndarray, c: Copy, data: DataSet, tol_A: float = 1.1
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positions (n,3), keep (n,) bool, occupancy (n,)) of a molecule x (n,3) fractional of
    weight 1/k. Of each set of same-element atoms the symmetry maps onto each other (within
    tol_A Å) the first is kept, moved to the mean of the set mapped back onto it (so the
    molecule has its site's symmetry exactly). A kept atom whose set, times the operations
    that map it onto itself, makes k has occupancy 1 (the molecule sits on its site);
    otherwise the molecule's 1/k."""
    from xdxd.crystal.symmetry import apply_ops, frac_distance
    ops = data.ops
    images = apply_ops(x, ops, wrap=False)                                # (n,O,3)
    inverse = np.linalg.inv(ops.rot)                                       # (O,3,3)
    n, k, els = len(x), round(1 / c.weight), c.model.elements
    keep = np.ones(n, bool)
    occ = np.full(n, c.weight)
    out = x.copy()
    for a in range(n):
        if not keep[a]:
            continue
        d = frac_distance(images[a][:, None], x[None], data.cell)         # (O,n) Å
        mates = [b for b in range(n) if b != a and els[b] == els[a] and (d[:, b] < tol_A).any()]
        if (len(mates) + 1) * int((d[:, a] < tol_A).sum()) >= k:
            occ[a] = 1.0
        # every member of the set, mapped back onto a: R^-1 (x_b - t), the lattice copy nearest a
        o, b = np.nonzero(d < tol_A)
        ok = np.isin(b, [a] + mates)
        back = np.einsum("kij,kj->ki", inverse[o[ok]], x[b[ok]] - ops.tran[o[ok]])
        back -= np.round(back - x[a])
        out[a] = back.mean(0)
        keep[mates] = False
    return np.mod(out, 1.0), keep, occ


def _xyz(x: np.ndarray) -> list[float]:
    return [round(float(v), 6) for v in x]
