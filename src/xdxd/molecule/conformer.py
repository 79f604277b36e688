"""3-D conformers of molecules: RDKit ETKDGv3 embedding, MMFF94 clean-up, X-ray X-H lengths;
the distinct ring conformations of a molecule with flexible rings (`ring_conformers`).

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
    work = Chem.Mol(mol)  # MMFF's typing resets aromatic flags (then a P=N ring no longer kekulises)
    params = AllChem.ETKDGv3()
    params.randomSeed = int(seed) % (2**31 - 1)
    if AllChem.EmbedMolecule(work, params) != 0:
        params.useRandomCoords = True
        if AllChem.EmbedMolecule(work, params) != 0:
            raise ValueError(f"{name}: RDKit could not embed a conformer")
    if AllChem.MMFFHasAllMoleculeParams(work):
        AllChem.MMFFOptimizeMolecule(work, maxIters=500)
    else:
        AllChem.UFFOptimizeMolecule(work, maxIters=500)
    mol.AddConformer(work.GetConformer(), assignId=True)
    return mol


RING_TRIES = 30         # conformers embedded to find the ring conformations
RING_DIFFERENT_DEG = 30  # two conformations differ where an endocyclic torsion differs by more
RING_WINDOW_KCAL = 4.0   # kcal/mol above the lowest that a ring conformation may lie (no twist-boats)


def flexible_ring_torsions(mol) -> list[tuple[int, int, int, int]]:
    """Endocyclic torsions (a, b, c, d) of the rings that are not flat: rings of 4 or more
    atoms with an sp3 atom (a cyclohexane, piperidine or furanose turns; a benzene does not)."""
    from rdkit import Chem
    out = []
    for ring in mol.GetRingInfo().AtomRings():
        if len(ring) < 4:
            continue
        if not any(mol.GetAtomWithIdx(a).GetHybridization() == Chem.HybridizationType.SP3 for a in ring):
            continue
        n = len(ring)
        out += [tuple(ring[(k + i) % n] for i in range(4)) for k in range(n)]
    return out


def ring_conformers(mol, seed: int, most: int) -> list[int]:
    """Conformer ids of mol (H added) with distinct ring conformations, lowest MMFF energy
    first, at most `most`: RING_TRIES ETKDGv3 conformers are embedded and MMFF-optimised in
    place; one differs from another where an endocyclic torsion of a flexible ring
    differs by more than RING_DIFFERENT_DEG, and none lies more than RING_WINDOW_KCAL above
    the lowest. [] when the molecule has no flexible ring."""
    from rdkit.Chem import AllChem, rdMolTransforms
    torsions = flexible_ring_torsions(mol)
    if not torsions or most < 2:
        return []
    params = AllChem.ETKDGv3()
    params.randomSeed = int(seed) % (2**31 - 2) + 1  # seed 0 gives RING_TRIES copies of one conformer
    try:
        ids = list(AllChem.EmbedMultipleConfs(mol, RING_TRIES, params))
    except Exception:  # RDKit cannot kekulise some P=N rings here though one conformer embeds
        return []
    if not ids:
        return []
    if AllChem.MMFFHasAllMoleculeParams(mol):
        energies = [e for _, e in AllChem.MMFFOptimizeMoleculeConfs(mol, maxIters=500)]
    else:
        energies = [e for _, e in AllChem.UFFOptimizeMoleculeConfs(mol, maxIters=500)]
    kept, signatures = [], []
    for k in sorted(range(len(ids)), key=lambda k: energies[k]):
        if energies[k] > min(energies) + RING_WINDOW_KCAL:
            break
        conf = mol.GetConformer(ids[k])
        sig = np.array([rdMolTransforms.GetDihedralDeg(conf, *t) for t in torsions])
        if all(np.abs((sig - o + 180) % 360 - 180).max() > RING_DIFFERENT_DEG for o in signatures):
            kept.append(ids[k])
            signatures.append(sig)
        if len(kept) == most:
            break
    return kept
