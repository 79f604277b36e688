"""A molecule as a torsion tree: a rigid conformer whose rotatable bonds turn.

`molecule_model(smiles)` embeds one conformer (molecule.conformer: ETKDG + MMFF, X-ray X-H
lengths), or, for a molecule with flexible rings, up to `rings` conformers with distinct
ring conformations (chair, boat, envelope, ...), and finds the rotatable bonds: acyclic single bonds between atoms that each have
another heavy neighbour, not next to a triple bond, and not the planar C-N/C-O bond of
an amide or ester; rings stay rigid, and so do methyl and hydroxyl H. Each torsion turns the atoms on the far
side of its bond from the root (the heavy atom nearest the molecule's middle); torsions
are applied root outward, each about its bond as the turns before it left it, so one
pass over `TorsionTree.order` builds any conformation. Angles are changes from the
conformer's own torsions (0 builds the conformer), in radians.

`TorsionTree.build` works on a batch: angles (B,T) and which conformer (B,) -> Cartesian
Å (B,n,3) in the molecule's frame (its heavy-atom centroid at the origin); `place` turns and moves that
into the cell: orientation as a quaternion (B,4, normalised here), centre fractional (B,3).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from xdxd.crystal.chemistry import is_hydrogen

# a rotatable bond, on the molecule without H: single, not in a ring, between atoms that
# each have another heavy neighbour, not next to a triple bond (RDKit's Lipinski pattern
# without its secondary-amide clause) ...
ROTATABLE = "[!D1&!$(*#*)]-&!@[!D1&!$(*#*)]"
# ... and not the C-N or C-O bond of an amide, ester, thioamide or amidine: planar, trans
PLANAR = "[CX3](=[O,S,N])-!@[N,O]"


@dataclass
class MoleculeModel:
    """One molecule ready for the search, atoms in RDKit order (H after the heavy atoms).

    elements (n,); xyz (n,3) Å, the conformer; conformers (K,n,3) Å, the ring conformations
    (xyz first); bonds (m,2); parent (n,): the heavy atom
    an H is bonded to, -1 for a non-H atom; torsions (T,2): bond (i, j), turning the j
    side; moving (T,n) bool: the atoms on the j side; root: the atom that never moves;
    involutions (P,n_heavy): pairings of the heavy atoms by the molecule's own symmetry
    (molecule.symmetry), numbered among the heavy atoms, for a molecule on a special position;
    relabellings (R,n_heavy): permutations of the heavy atoms that keep the bonds but not
    the atoms' kinds (molecule.symmetry.relabellings), the moves that turn a molecule
    placed the wrong way round.
    """
    smiles: str
    elements: list[str]
    xyz: np.ndarray
    bonds: np.ndarray
    parent: np.ndarray
    torsions: np.ndarray
    moving: np.ndarray
    root: int
    conformers: np.ndarray | None = None
    involutions: np.ndarray | None = None
    relabellings: np.ndarray | None = None

    def __post_init__(self):
        if self.conformers is None:
            self.conformers = self.xyz[None]
        if self.involutions is None:
            self.involutions = np.zeros((0, int(self.heavy.sum())), dtype=np.int64)
        if self.relabellings is None:
            self.relabellings = np.zeros((0, int(self.heavy.sum())), dtype=np.int64)

    @property
    def n_atoms(self) -> int:
        return len(self.elements)

    @property
    def heavy(self) -> np.ndarray:
        return self.parent < 0

    def h_counts(self) -> np.ndarray:
        """H atoms on each atom (n,)."""
        return np.bincount(self.parent[self.parent >= 0], minlength=self.n_atoms)


def molecule_model(smiles: str, seed: int = 0, rings: int = 1) -> MoleculeModel:
    """The molecule of a SMILES with its conformer (up to `rings` with distinct ring
    conformations) and its torsion tree. Raises ValueError when RDKit cannot read or
    embed it."""
    from rdkit import Chem
    from xdxd.molecule.conformer import embed, ring_conformers, xray_hydrogens
    from xdxd.molecule.symmetry import involutions, relabellings
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"cannot read SMILES {smiles!r}")
    mol = embed(mol, seed, smiles)  # H appended after the heavy atoms
    xyz = xray_hydrogens(mol, mol.GetConformer().GetPositions())
    conformers = [xyz]
    if rings > 1:
        many = Chem.Mol(mol)
        conformers = [xray_hydrogens(many, many.GetConformer(k).GetPositions())
                      for k in ring_conformers(many, seed, rings)] or conformers
        xyz = conformers[0]
    elements = [a.GetSymbol() for a in mol.GetAtoms()]
    bonds = np.array([(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in mol.GetBonds()],
                     dtype=np.int64).reshape(-1, 2)
    parent = np.full(len(elements), -1)
    for i, j in bonds:
        if is_hydrogen(elements[i]):
            parent[i] = j
        elif is_hydrogen(elements[j]):
            parent[j] = i
    root = _middle_atom(elements, bonds)
    # on the molecule without H (same indices: embed appends the H), D1 is a terminal heavy atom
    bare = Chem.RemoveHs(mol)
    planar = {frozenset((m[0], m[2])) for m in bare.GetSubstructMatches(Chem.MolFromSmarts(PLANAR))}
    pairs = [p for p in bare.GetSubstructMatches(Chem.MolFromSmarts(ROTATABLE))
             if frozenset(p) not in planar]
    torsions, moving = [], []
    for a, b in pairs:
        side_b = _side(len(elements), bonds, a, b)
        i, j, side = (a, b, side_b) if not side_b[root] else (b, a, ~side_b)
        torsions.append((i, j))
        moving.append(side)
    depth = _depths(len(elements), bonds, root)
    order = np.argsort([depth[i] for i, _ in torsions], kind="stable")
    torsions = np.array(torsions, dtype=np.int64).reshape(-1, 2)[order]
    moving = np.array(moving, dtype=bool).reshape(-1, len(elements))[order]
    heavy = parent < 0
    bare = Chem.RemoveAllHs(mol)  # RemoveHs keeps a stereo H
    return MoleculeModel(Chem.MolToSmiles(Chem.RemoveHs(mol)), elements, xyz, bonds, parent,
                         torsions, moving, root, np.array(conformers),
                         involutions(bare, xyz[heavy]), relabellings(bare, xyz[heavy]))


def _neighbours(n: int, bonds: np.ndarray) -> list[list[int]]:
    nb: list[list[int]] = [[] for _ in range(n)]
    for i, j in bonds:
        nb[i].append(int(j))
        nb[j].append(int(i))
    return nb


def _depths(n: int, bonds: np.ndarray, start: int) -> np.ndarray:
    """Bonds from `start` to every atom (breadth first); unreachable atoms get n."""
    nb = _neighbours(n, bonds)
    depth = np.full(n, n)
    depth[start] = 0
    front = [start]
    while front:
        nxt = []
        for a in front:
            for b in nb[a]:
                if depth[b] == n:
                    depth[b] = depth[a] + 1
                    nxt.append(b)
        front = nxt
    return depth


def _middle_atom(elements: list[str], bonds: np.ndarray) -> int:
    """The non-H atom with the fewest bonds to the farthest atom (the graph's centre)."""
    heavy = [k for k, e in enumerate(elements) if not is_hydrogen(e)]
    return min(heavy, key=lambda k: (_depths(len(elements), bonds, k).max(), k))


def _side(n: int, bonds: np.ndarray, a: int, b: int) -> np.ndarray:
    """(n,) bool: the atoms reached from b without crossing the bond a-b."""
    keep = np.array([not ({int(i), int(j)} == {a, b}) for i, j in bonds])
    return _depths(n, bonds[keep], b) < n


class TorsionTree:
    """A MoleculeModel as tensors on one device: its conformers, each centred on its
    heavy-atom centroid, x0 (K,n,3) Å, and its torsions, applied in order by `build`."""

    def __init__(self, model: MoleculeModel, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32):
        kw = dict(device=device, dtype=dtype)
        xyz = model.conformers - model.conformers[:, model.heavy].mean(1, keepdims=True)
        self.x0 = torch.tensor(xyz, **kw)                                   # (K,n,3) Å
        self.n_conformers = len(xyz)
        self.axis = torch.tensor(model.torsions, device=device)             # (T,2)
        self.moving = torch.tensor(model.moving, device=device)             # (T,n) bool
        self.n_torsions = len(model.torsions)

    def build(self, angles: torch.Tensor, conformer: torch.Tensor | None = None) -> torch.Tensor:
        """Cartesian Å (B,n,3) in the molecule's frame for torsion changes angles (B,T) rad
        of conformers (B,) (the first by default)."""
        B = angles.shape[0]
        x = self.x0[0].expand(B, -1, -1) if conformer is None else self.x0[conformer]
        for k in range(self.n_torsions):  # root outward: each turn moves the axes after it
            i, j = self.axis[k]
            p = x[:, j]                                                      # (B,3)
            a = p - x[:, i]
            a = a / a.norm(dim=-1, keepdim=True)                             # (B,3) unit axis
            v = x - p[:, None]                                               # (B,n,3)
            c = torch.cos(angles[:, k])[:, None, None]
            s = torch.sin(angles[:, k])[:, None, None]
            a = a[:, None]
            turned = v * c + torch.cross(a.expand_as(v), v, dim=-1) * s + a * (v * a).sum(-1, keepdim=True) * (1 - c)
            x = torch.where(self.moving[k][None, :, None], p[:, None] + turned, x)
        return x


def matrix_quaternion(m: torch.Tensor) -> torch.Tensor:
    """Unit quaternions (B,4) (w, x, y, z) of rotation matrices m (B,3,3): the inverse of
    quaternion_matrix, from the largest of |w|, |x|, |y|, |z| (Shepperd's method)."""
    m00, m01, m02 = m[:, 0].unbind(-1)
    m10, m11, m12 = m[:, 1].unbind(-1)
    m20, m21, m22 = m[:, 2].unbind(-1)
    rows = torch.stack([   # 4 w q, 4 x q, 4 y q, 4 z q
        torch.stack([1 + m00 + m11 + m22, m21 - m12, m02 - m20, m10 - m01], -1),
        torch.stack([m21 - m12, 1 + m00 - m11 - m22, m01 + m10, m02 + m20], -1),
        torch.stack([m02 - m20, m01 + m10, 1 - m00 + m11 - m22, m12 + m21], -1),
        torch.stack([m10 - m01, m02 + m20, m12 + m21, 1 - m00 - m11 + m22], -1)], 1)  # (B,4,4)
    pick = torch.diagonal(rows, dim1=1, dim2=2).argmax(-1)
    q = rows[torch.arange(len(m)), pick]
    return q / q.norm(dim=-1, keepdim=True)


def quaternion_matrix(q: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (B,3,3) of quaternions q (B,4) (w, x, y, z), normalised here."""
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1)], -2)


def place(x: torch.Tensor, q: torch.Tensor, centre: torch.Tensor, orth: torch.Tensor,
          deorth: torch.Tensor) -> torch.Tensor:
    """Fractional coordinates (B,n,3) of a molecule x (B,n,3) Å in its own frame, turned by
    quaternions q (B,4) and centred at centre (B,3) fractional; orth (3,3) frac -> Å,
    deorth (3,3) Å -> frac."""
    cart = x @ quaternion_matrix(q).transpose(1, 2) + (centre @ orth.T)[:, None]
    return cart @ deorth.T
