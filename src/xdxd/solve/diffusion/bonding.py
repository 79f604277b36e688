"""The bonding prior: a smooth energy of interatomic distances that any organic model obeys.

The sampler knows the elements but not the connectivity. What every molecular crystal
still obeys, whatever its bonds, is a short list of distance rules between non-H atoms
(symmetry images included), with r0 = r_i + r_j from gemmi's covalent radii and the
bond criterion of crystal.chemistry (a bond counts in full up to r0 + BOND_FULL_A, fading
to nothing at r0 + BOND_TOL, where `chemistry.is_bond` ends):

- no contact shorter than SHORT_FACTOR * r0 (a C≡N triple bond is 0.79 r0; the contact
  the refinement's anti-bump restraint and chemistry check call too short);
- no distance in the gap between bonds (≤ r0 + 0.15 Å) and the shortest 1-3 distances
  (O-N-O 2.16 Å, O-C-O 2.2 Å; longer around S, Cl, Br, I): GAP_LO + r0 to gap_hi(r0);
- every atom that forms bonds has at least one neighbour (soft for O and halogens,
  which may be water or anions) and no more than its element allows
  (crystal.chemistry.MAX_NEIGHBOURS).

Each violation costs about one unit, so `energy` reads as a count of clear faults (0 for
a sensible model); its gradient (Cartesian, Å⁻¹) steers the diffusion sampler and the
polish toward chemically possible structures, and candidates are ranked by R1 plus
this energy. Atoms on special positions (site weight < 1) do not see their own images
that coincide with them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from xdxd.crystal.chemistry import (BOND_FULL_A, BOND_TOL, MAX_NEIGHBOURS, MAY_BE_ISOLATED, SHORT_FACTOR,
                                    VALENCES, covalent_radius)
from xdxd.crystal.symmetry import NEIGHBOUR_CELLS, apply_ops_torch

CLOSE_WIDTH_A = 0.1   # Å inside the shortest allowed contact (SHORT_FACTOR r0) that costs one unit
GAP_LO_A = 0.25       # Å above r0 where the forbidden gap begins
GAP_HI_FACTOR = 0.76  # the gap ends at 0.76 (r0 + 2 r_O): the shortest 1-3 distance i-m-k
GAP_HI_MIDDLE_A = 1.32  # 2 r_O, the smallest middle atom (O-N-O 2.16 Å, P-N-P 2.7 Å)
ISOLATED_SOFT_WEIGHT = 0.2
SELF_IMAGE_A = 0.6    # images of an atom on a special position closer than this coincide
REACH_A = 3.5         # neighbours considered around each atom
CLAMP_A = REACH_A + 1.0  # distances are clamped here: no term sees beyond it
NEAREST_CAP_A = 2.0   # Å beyond a bond: the most an isolated atom's pull toward its nearest costs


@dataclass
class BondingTables:
    """Per-atom tables for one problem: radius (N,) Å, max_nbr (N,), isolated weight (N,)."""
    radius: torch.Tensor
    max_nbr: torch.Tensor
    isolated: torch.Tensor

    def to(self, device) -> "BondingTables":
        return BondingTables(self.radius.to(device), self.max_nbr.to(device), self.isolated.to(device))


def bonding_tables(elements: list[str], device="cpu") -> BondingTables:
    radius = [covalent_radius(e) for e in elements]
    max_nbr = [MAX_NEIGHBOURS.get(e, 12) for e in elements]
    isolated = [ISOLATED_SOFT_WEIGHT if e in MAY_BE_ISOLATED else (1.0 if e in VALENCES else 0.0)
                for e in elements]
    kw = dict(device=device, dtype=torch.float32)
    return BondingTables(torch.tensor(radius, **kw), torch.tensor(max_nbr, **kw),
                         torch.tensor(isolated, **kw))


def gap_hi(r0: torch.Tensor) -> torch.Tensor:
    """Upper end (Å) of the forbidden gap for a pair with radius sum r0 (Å): the shortest
    distance two atoms bonded to one small middle atom can have (angle about 100°)."""
    return GAP_HI_FACTOR * (r0 + GAP_HI_MIDDLE_A)


def _identity_op(ops_rot: torch.Tensor, ops_tran: torch.Tensor) -> int:
    eye = torch.eye(3, device=ops_rot.device, dtype=ops_rot.dtype)
    t = ops_tran - torch.round(ops_tran)
    hit = ((ops_rot - eye).abs().sum((1, 2)) + t.abs().sum(1)) < 1e-6
    return int(torch.nonzero(hit)[0, 0])


_CELLS = torch.tensor(NEIGHBOUR_CELLS, dtype=torch.float32)  # (27,3), (0,0,0) at 13


def lattice_cells(orth: torch.Tensor, reach_A: float = CLAMP_A) -> tuple[torch.Tensor, int]:
    """The lattice translations (C,3) that can bring an image within reach_A Å of an atom
    once their fractional difference is wrapped into [-0.5, 0.5], and the row of (0,0,0).

    A translation by ±1 along axis i puts every point at least half the spacing of the
    (100)-type planes of that axis away (d_i = 1/|a*_i|), so it is needed only where
    d_i / 2 < reach_A: of the 27 neighbouring cells a 7 × 12 × 15 Å cell needs 3.
    Distances beyond reach_A never count in the prior (`_terms` clamps them).
    """
    spacing = 1.0 / torch.linalg.inv(orth.double()).norm(dim=1)  # (3,) Å: d_100, d_010, d_001
    short = (0.5 * spacing < reach_A).to(_CELLS.device)
    keep = ((_CELLS != 0) <= short).all(dim=1)  # only shifts along short axes
    cells = _CELLS[keep]
    return cells, int(torch.nonzero((cells == 0).all(dim=1))[0, 0])


def neighbour_distances(frac: torch.Tensor, rot: torch.Tensor, tran: torch.Tensor,
                        orth: torch.Tensor, site_weight: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances (B,N,N*O*C) Å from each ASU atom i to every image of every atom j over
    the C nearest lattice translations that can matter (`lattice_cells`, at most 27), and
    the index j (N*O*C,) of each column.

    An atom's distance to itself is set to infinity, and so are its own images within
    SELF_IMAGE_A when its site weight is below 1 (a special position).
    """
    B, N, _ = frac.shape
    O = rot.shape[0]
    img = apply_ops_torch(frac, rot, tran)  # (B,N,O,3)
    d = img[:, None] - frac[:, :, None, None]  # (B,Ni,Nj,O,3)
    d = d - torch.round(d)
    cells, zero = lattice_cells(orth)
    C = len(cells)
    cells = cells.to(frac.device, frac.dtype)
    cart = (d[..., None, :] + cells) @ orth.T  # (B,Ni,Nj,O,C,3)
    dist = cart.norm(dim=-1).reshape(B, N, N * O * C)
    j_of = torch.arange(N, device=frac.device).repeat_interleave(O * C)  # (N*O*C,)
    own = j_of[None, :] == torch.arange(N, device=frac.device)[:, None]  # (N, N*O*C)
    ident = _identity_op(rot, tran)
    self_col = torch.arange(N, device=frac.device) * O * C + ident * C + zero
    mask = torch.zeros(N, N * O * C, dtype=torch.bool, device=frac.device)
    mask[torch.arange(N), self_col] = True
    mask = mask[None].expand(B, -1, -1)
    if site_weight is not None:
        special = (site_weight < 0.999)  # (N,) or (B,N)
        special = special.expand(B, N) if special.dim() == 2 else special[None].expand(B, N)
        mask = mask | (own[None] & special[..., None] & (dist < SELF_IMAGE_A))
    dist = dist.masked_fill(mask, float("inf"))
    return dist, j_of


def _smooth_step_down(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """1 below lo, 0 above hi, a half cosine between."""
    t = ((x - lo) / (hi - lo)).clamp(0.0, 1.0)
    return 0.5 * (1.0 + torch.cos(torch.pi * t))


def _terms(dist: torch.Tensor, r0: torch.Tensor, w_col: torch.Tensor, isolated_w: torch.Tensor,
           max_nbr: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per-atom terms from its distances dist (…,C) Å to neighbour images with radius sums
    r0 (…,C) and weights w_col (…,C): (close (…), gap (…), isolated (…), crowded (…)),
    the pair terms summed over the neighbours and counted in full."""
    dist = dist.clamp(max=CLAMP_A)
    close = (w_col * ((SHORT_FACTOR * r0 - dist).clamp_min(0.0) / CLOSE_WIDTH_A) ** 2).sum(-1)
    lo, hi = r0 + GAP_LO_A, gap_hi(r0)
    t = ((dist - lo) / (hi - lo).clamp_min(1e-3)).clamp(0.0, 1.0)
    gap = (w_col * (4.0 * t * (1.0 - t)) ** 2 * (hi > lo)).sum(-1)
    bonds = (w_col * _smooth_step_down(dist, r0 + BOND_FULL_A, r0 + BOND_TOL)).sum(-1)
    # an under-bonded atom is pulled toward its nearest neighbour (a gradient where the
    # bond count is flat): softmin (0.1 Å) of the distance beyond a bond over the images
    # within reach, and NEAREST_CAP_A beside them (what an atom with none pays), Å
    excess = (dist - r0 - BOND_FULL_A).clamp_min(0.0)
    logits = (-excess / 0.1).masked_fill(dist >= CLAMP_A, float("-inf"))
    cap = logits.new_full(logits.shape[:-1] + (1,), -NEAREST_CAP_A / 0.1)
    nearest = -0.1 * torch.logsumexp(torch.cat([logits, cap], dim=-1), dim=-1)
    lonely = (1.0 - bonds).clamp_min(0.0)
    isolated = isolated_w * (lonely ** 2 + lonely.detach().gt(0.5) * nearest)
    crowded = (bonds - max_nbr).clamp_min(0.0) ** 2
    return close, gap, isolated, crowded


def energy_terms(frac: torch.Tensor, tables: BondingTables, rot: torch.Tensor, tran: torch.Tensor,
                 orth: torch.Tensor, site_weight: torch.Tensor | None = None) -> dict:
    """The prior's terms (each (B,)) for fractional coordinates frac (B,N,3).

    close: contacts inside SHORT_FACTOR r0; gap: distances in the forbidden gap;
    isolated: atoms with less than one bond; crowded: bonds beyond the element's maximum.
    site_weight (N,) or (B,N): 1/(stabilizer order); an image of an atom on a special
    position counts with that weight (its images coincide in groups of the order), and
    so do the atom's own terms.
    """
    B, N, _ = frac.shape
    dist, j_of = neighbour_distances(frac, rot, tran, orth, site_weight)  # (B,N,C)
    w = torch.ones(B, N, device=frac.device) if site_weight is None else \
        site_weight.to(frac.device).float().expand(B, N)
    r = tables.radius
    r0 = (r[:, None] + r[j_of][None, :])[None]  # (1,N,C)
    close, gap, isolated, crowded = _terms(dist, r0, w[:, j_of][:, None, :], tables.isolated,
                                           tables.max_nbr)
    # pair terms are seen from both ends: halve them
    return {"close": 0.5 * (w * close).sum(-1), "gap": 0.5 * (w * gap).sum(-1),
            "isolated": (w * isolated).sum(-1), "crowded": (w * crowded).sum(-1)}


def atom_energy(points: torch.Tensor, atom: torch.Tensor, frac: torch.Tensor,
                tables: BondingTables, rot: torch.Tensor, tran: torch.Tensor,
                orth: torch.Tensor, site_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Energy (B,K) of atom[b] (a general position) put at each of points (B,K,3), the
    other atoms of frac (B,N,3) staying (site_weight (N,)): its pair terms in full, its own bond terms.
    The difference between two places is the change of `energy`, except for the bond
    counts of its neighbours (what a relocation move screens its proposals by)."""
    B, K, _ = points.shape
    N = frac.shape[1]
    O = rot.shape[0]
    dev = frac.device
    cells, zero = lattice_cells(orth)
    S = len(cells)
    cells = cells.to(dev, frac.dtype)
    ar = torch.arange(B, device=dev)
    img = apply_ops_torch(frac, rot, tran)  # (B,N,O,3)
    d = img[:, None] - points[:, :, None, None]  # (B,K,N,O,3)
    own = apply_ops_torch(points, rot, tran) - points[:, :, None]  # (B,K,O,3)
    d = torch.cat([d, own[:, :, None]], dim=2)  # (B,K,N+1,O,3): last row = own images
    d = d - torch.round(d)
    dist = ((d[..., None, :] + cells) @ orth.T).norm(dim=-1)  # (B,K,N+1,O,S)
    ident = _identity_op(rot, tran)
    dist[:, :, N, ident, zero] = float("inf")  # itself
    dist[ar, :, atom] = float("inf")  # its old place and old images
    r = tables.radius
    w = torch.ones(N, device=dev) if site_weight is None else site_weight.to(dev).float()
    r_col = torch.cat([r, r.new_zeros(1)])[None].repeat(B, 1)
    r_col[:, N] = r[atom]
    w_col = torch.cat([w, w.new_ones(1)])
    C = (N + 1) * O * S
    r0 = (r[atom][:, None] + r_col)[:, None, :, None].expand(B, K, N + 1, O * S).reshape(B, K, C)
    w_full = w_col[None, None, :, None].expand(B, K, N + 1, O * S).reshape(B, K, C)
    close, gap, isolated, crowded = _terms(dist.reshape(B, K, C), r0, w_full,
                                           tables.isolated[atom][:, None],
                                           tables.max_nbr[atom][:, None])
    return close + gap + isolated + crowded


def energy(frac: torch.Tensor, tables: BondingTables, rot: torch.Tensor, tran: torch.Tensor,
           orth: torch.Tensor, site_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Bonding energy (B,) of frac (B,N,3): about one unit per clear fault, 0 when sensible."""
    return sum(energy_terms(frac, tables, rot, tran, orth, site_weight).values())


def energy_gradient(frac: torch.Tensor, tables: BondingTables, rot: torch.Tensor,
                    tran: torch.Tensor, orth: torch.Tensor, deorth: torch.Tensor,
                    site_weight: torch.Tensor | None = None, chunk: int = 32
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(energy (B,), its Cartesian gradient (B,N,3) in units per Å), in batch chunks."""
    es, gs = [], []
    for b0 in range(0, frac.shape[0], chunk):
        with torch.enable_grad(), torch.autocast(device_type=frac.device.type, enabled=False):
            x = frac[b0:b0 + chunk].detach().float().requires_grad_(True)
            sw = site_weight
            if sw is not None and sw.dim() == 2:
                sw = sw[b0:b0 + chunk]
            e = energy(x, tables, rot, tran, orth, sw)
            (g,) = torch.autograd.grad(e.sum(), x)
        es.append(e.detach())
        gs.append(g @ deorth)  # dE/dcart = dE/dfrac . dfrac/dcart
    return torch.cat(es), torch.cat(gs)
