"""The molecules of a known structure: what `xdxd-bench --molecules-from-reference` names.

The model's atoms (H included) are expanded into the unit cell, bonded by the one bond
criterion (chemistry.is_bond, periodic), and grown into molecules; RDKit perceives each
molecule's bond orders and charges from its coordinates (rdDetermineBonds, total charge
0, then ±1, ±2 for ions). A molecule's count per asymmetric unit is its copies in the
cell over the number of symmetry operations (0.5 for one on an inversion centre); in a
space group with improper operations a molecule and its mirror image are one molecule.
Only the SMILES leave this module: a search given them never sees the coordinates.
"""
from __future__ import annotations

import gemmi
import numpy as np

from xdxd.crystal.chemistry import NEIGHBOUR_CELLS, covalent_radius, is_bond
from xdxd.crystal.symmetry import SymOps, unique_images

CHARGES = (0, 1, -1, 2, -2)  # total charges tried for a molecule, in this order


def molecules_of(elements: list[str], frac: np.ndarray, cell: gemmi.UnitCell, ops: SymOps
                 ) -> list[dict]:
    """[{"smiles", "count"}] of a model (asymmetric-unit atoms, H included, fractional),
    one entry per distinct molecule, most copies first. Raises ValueError when RDKit cannot
    make a molecule of a fragment."""
    pos, owner = unique_images(np.mod(np.asarray(frac, float), 1.0), ops, cell, tol=0.3)
    els = [elements[k] for k in owner]
    xyz = _molecules_unwrapped(pos, els, cell)
    counts: dict[str, int] = {}
    for atoms, cart in xyz:
        smiles = _smiles([els[a] for a in atoms], cart)
        if not ops.sohncke:  # a racemate's two hands are one molecule: the symmetry makes the other
            smiles = next((s for s in counts if s == _mirror(smiles)), smiles)
        counts[smiles] = counts.get(smiles, 0) + 1
    return [{"smiles": s, "count": round(n / len(ops), 4)}
            for s, n in sorted(counts.items(), key=lambda t: (-t[1], t[0]))]


def _mirror(smiles: str) -> str:
    """Canonical SMILES of the mirror image (every tetrahedral centre inverted)."""
    from rdkit import Chem
    mol = Chem.MolFromSmiles(smiles)
    for a in mol.GetAtoms():
        tag = a.GetChiralTag()
        if tag == Chem.ChiralType.CHI_TETRAHEDRAL_CW:
            a.SetChiralTag(Chem.ChiralType.CHI_TETRAHEDRAL_CCW)
        elif tag == Chem.ChiralType.CHI_TETRAHEDRAL_CCW:
            a.SetChiralTag(Chem.ChiralType.CHI_TETRAHEDRAL_CW)
    return Chem.MolToSmiles(mol)


def _molecules_unwrapped(pos: np.ndarray, els: list[str], cell: gemmi.UnitCell
                         ) -> list[tuple[list[int], np.ndarray]]:
    """Connected fragments of the P1 atoms pos (P,3), each (atom indices, Cartesian Å (k,3)
    with the fragment whole across cell edges)."""
    orth = np.array(cell.orth.mat)
    r = np.array([covalent_radius(e) for e in els])
    d = pos[None, :, None, :] - pos[:, None, None, :] + NEIGHBOUR_CELLS[None, None]   # (P,P,27,3)
    d = d - np.round(d - NEIGHBOUR_CELLS[None, None])  # nearest image, then the 27 around it
    dist = np.linalg.norm(d @ orth.T, axis=-1)                                         # (P,P,27)
    bonded = is_bond(dist, (r[:, None] + r[None, :])[..., None]) & (dist > 0.1)
    seen = np.zeros(len(pos), bool)
    out = []
    for start in range(len(pos)):
        if seen[start]:
            continue
        seen[start] = True
        at = {start: pos[start]}
        stack = [start]
        while stack:
            i = stack.pop()
            for j, c in zip(*np.nonzero(bonded[i])):
                if not seen[j]:
                    seen[j] = True
                    at[int(j)] = at[i] + d[i, j, c]
                    stack.append(int(j))
        atoms = sorted(at)
        out.append((atoms, np.array([at[a] for a in atoms]) @ orth.T))
    return out


def _smiles(elements: list[str], cart: np.ndarray) -> str:
    """Canonical SMILES of one molecule from its elements and Cartesian coordinates (Å)."""
    from rdkit import Chem, RDLogger
    from rdkit.Chem import rdDetermineBonds
    from rdkit.Geometry import Point3D
    RDLogger.DisableLog("rdApp.*")
    rw = Chem.RWMol()
    for e in elements:
        rw.AddAtom(Chem.Atom(e))
    conf = Chem.Conformer(len(elements))
    for k, x in enumerate(cart):
        conf.SetAtomPosition(k, Point3D(*map(float, x)))
    rw.AddConformer(conf, assignId=True)
    for charge in CHARGES:
        mol = Chem.Mol(rw)
        try:
            rdDetermineBonds.DetermineBonds(mol, charge=charge)
            return Chem.MolToSmiles(Chem.RemoveHs(mol))
        except Exception:  # RDKit raises ValueError or its own errors for a wrong charge
            continue
    formula = "".join(sorted(elements))
    raise ValueError(f"RDKit cannot assign bonds to a fragment {formula} at charges {CHARGES}")
