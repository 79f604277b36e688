"""3-D conformers of molecules: RDKit ETKDGv3 embedding, MMFF94 clean-up, X-ray X-H lengths.

The one place SMILES become coordinates, for the molecule search (molecule.tree) and for
the training crystals (synth). Cartesian Å, hydrogens explicit.
"""
from __future__ import annotations

import numpy as np

from xdxd.crystal.chemistry import xh_distance


def xray_hydrogens(mol, xyz: np.ndarray) -> np.ndarray:
    """Move every H along its bond to the X-ray X-H length (`chemistry.xh_distance`, SHELXL's
    riding distances; an X without one keeps the force field's); (n,3) Å."""
    xyz = xyz.copy()
    for a in mol.GetAtoms():
        if a.GetAtomicNum() != 1 or a.GetDegree() != 1:
            continue
        x = a.GetNeighbors()[0]
        heavy = sum(1 for n in x.GetNeighbors() if n.GetAtomicNum() > 1)
        target = xh_distance(x.GetSymbol(), heavy, x.GetTotalNumHs(includeNeighbors=True), default=None)
        if target is None:
            continue
        i, j = a.GetIdx(), x.GetIdx()
        v = xyz[i] - xyz[j]
        xyz[i] = xyz[j] + v * (target / np.linalg.norm(v))
    return xyz


def embed(mol, seed: int, name: str = ""):
    """Add hydrogens and embed one ETKDGv3 conformer, cleaned up with MMFF94 (UFF when MMFF
    lacks parameters). Returns the new RDKit molecule; raises ValueError if embedding fails."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(mol)
    params = AllChem.ETKDGv3()
    params.randomSeed = int(seed) % (2**31 - 1)
    if AllChem.EmbedMolecule(mol, params) != 0:
        params.useRandomCoords = True
        if AllChem.EmbedMolecule(mol, params) != 0:
            raise ValueError(f"{name}: RDKit could not embed a conformer")
    if AllChem.MMFFHasAllMoleculeParams(mol):
        AllChem.MMFFOptimizeMolecule(mol, maxIters=500)
    else:
        AllChem.UFFOptimizeMolecule(mol, maxIters=500)
    return mol
