"""Molecules for synthetic crystals: SMILES sources, peptides, solvents, 3-D conformers.

Sources
- A SMILES file, one molecule per line, optional name after whitespace. The default is the
  MOSES benchmark training set (1.58 M drug-like molecules, MIT licence; Polykovskiy et al.,
  Front. Pharmacol. 11 (2020) 565644), fetched by `bin/fetch-moses-smiles` into
  data/moses.smi. A few hundred of those lines ship as `data/smiles_sample.smi`.
- Peptides made in code: di-, tri- and tetrapeptides of the 20 L-amino acids (plus Gly
  chains), zwitterionic (N-terminal NH3+, C-terminal COO-) as they crystallise from water.
- Co-crystallised solvents: the common ones of CSD solvates (water, methanol, ethanol,
  acetone, DMSO, DMF, acetonitrile, dichloromethane, chloroform, THF, benzene, toluene...).

Conformers: RDKit ETKDGv3 embedding then MMFF94 clean-up, hydrogens kept, Cartesian Å.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import numpy as np

# side chains of the 20 amino acids as they sit in a peptide: N[C@@H](R)C(=O)
AMINO_ACIDS = {
    "G": None, "A": "C", "V": "C(C)C", "L": "CC(C)C", "I": "[C@@H](C)CC", "F": "Cc1ccccc1",
    "Y": "Cc1ccc(O)cc1", "W": "Cc1c[nH]c2ccccc12", "S": "CO", "T": "[C@H](O)C", "C": "CS",
    "M": "CCSC", "N": "CC(N)=O", "Q": "CCC(N)=O", "D": "CC(=O)O", "E": "CCC(=O)O",
    "K": "CCCCN", "R": "CCCNC(N)=N", "H": "Cc1c[nH]cn1", "P": "proline",
}

# solvents with their rough share among CSD solvates (Görbitz & Hersleth, Acta Cryst. B56
# (2000) 526, "On the inclusion of solvent molecules in the crystal structures of organic
# compounds"; water ~ 1/3 of solvates, then methanol, dichloromethane, ethanol, ...)
SOLVENTS = {
    "O": 34, "CO": 10, "ClCCl": 8, "CCO": 6, "CC(C)=O": 5, "ClC(Cl)Cl": 5, "CC#N": 5,
    "CS(C)=O": 4, "CN(C)C=O": 4, "c1ccccc1": 4, "Cc1ccccc1": 4, "C1CCOC1": 4,
    "CCOC(C)=O": 3, "CC(C)O": 2, "C1COCCO1": 2,
}


# X-H lengths (Å) as X-ray refinements put them (riding H, SHELXL AFIX defaults at room
# temperature; Sheldrick, Acta Cryst. C71 (2015) 3): X-ray sees the electron, shifted toward
# X, so these are ~0.1 Å shorter than the nuclear distances a force field gives.
XRAY_XH = {6: 0.96, 7: 0.86, 8: 0.82, 16: 1.20, 5: 1.10}
XRAY_CH_AROMATIC = 0.93


def xray_hydrogens(mol, xyz: np.ndarray) -> np.ndarray:
    """Move every H along its bond to the X-ray X-H length (XRAY_XH); (n,3) Å."""
    xyz = xyz.copy()
    for a in mol.GetAtoms():
        if a.GetAtomicNum() != 1 or a.GetDegree() != 1:
            continue
        x = a.GetNeighbors()[0]
        target = XRAY_CH_AROMATIC if (x.GetAtomicNum() == 6 and x.GetIsAromatic()) \
            else XRAY_XH.get(x.GetAtomicNum())
        if target is None:
            continue
        i, j = a.GetIdx(), x.GetIdx()
        v = xyz[i] - xyz[j]
        xyz[i] = xyz[j] + v * (target / np.linalg.norm(v))
    return xyz


@dataclass
class Molecule3D:
    """One conformer: atomic numbers (n,), Cartesian coordinates (n,3) in Å, bonds (m,2).

    `chiral` is True when the SMILES fixes stereocentres, so the crystal must be in a
    Sohncke group (only proper rotations) to keep one enantiomer.
    """
    name: str
    smiles: str
    atomic_number: np.ndarray
    xyz: np.ndarray
    bonds: np.ndarray
    chiral: bool

    @property
    def symbols(self) -> list[str]:
        import gemmi
        return [gemmi.Element(int(z)).name for z in self.atomic_number]


def read_smiles_file(path: str) -> list[tuple[str, str]]:
    """(smiles, name) pairs from a file: one per line, optional name; '#' lines and a
    'SMILES' header are skipped. The name defaults to the SMILES itself."""
    out = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if not parts or parts[0].startswith("#") or parts[0].upper() == "SMILES":
                continue
            out.append((parts[0], parts[1] if len(parts) > 1 else parts[0]))
    return out


def sample_smiles_path() -> str:
    """Path of the shipped sample (a few hundred MOSES SMILES)."""
    return str(resources.files("xdxd.synth") / "data" / "smiles_sample.smi")


def peptide_smiles(sequence: str) -> str:
    """Zwitterionic linear L-peptide SMILES, N- to C-terminus, e.g. 'GAF' ->
    [NH3+]CC(=O)N[C@@H](C)C(=O)N[C@@H](Cc1ccccc1)C(=O)[O-]."""
    parts = []
    for i, aa in enumerate(sequence):
        n = "[NH3+]" if i == 0 else "N"
        last = i == len(sequence) - 1
        co = "C(=O)[O-]" if last else "C(=O)"
        side = AMINO_ACIDS[aa]
        if side is None:
            parts.append(f"{n}C{co}")
        elif side == "proline":  # ring closes on the backbone N
            n = "[NH2+]1" if i == 0 else "N1"
            parts.append(f"{n}CCC[C@H]1{co}")
        else:
            parts.append(f"{n}[C@@H]({side}){co}")
    return "".join(parts)


def random_peptide(rng: np.random.Generator) -> tuple[str, str]:
    """A random di-, tri- or tetrapeptide: (smiles, name like 'pep-GAF')."""
    length = int(rng.choice([2, 3, 4], p=[0.45, 0.35, 0.20]))
    letters = sorted(AMINO_ACIDS)
    seq = "".join(rng.choice(letters) for _ in range(length))
    return peptide_smiles(seq), f"pep-{seq}"


def random_solvent(rng: np.random.Generator) -> str:
    names = list(SOLVENTS)
    w = np.array([SOLVENTS[s] for s in names], dtype=float)
    return str(rng.choice(names, p=w / w.sum()))


def has_fixed_stereo(mol) -> bool:
    """True if the RDKit molecule has an assigned stereocentre (so it is enantiopure)."""
    from rdkit import Chem
    return any(True for _ in Chem.FindMolChiralCenters(mol, includeUnassigned=False,
                                                        useLegacyImplementation=False))


def conformer(smiles: str, name: str, seed: int, max_heavy: int = 60,
              xray_h: bool = True) -> Molecule3D:
    """ETKDGv3 + MMFF94 conformer with explicit hydrogens, X-H bonds shortened to X-ray
    values (xray_hydrogens) unless xray_h is False. Raises ValueError if RDKit cannot parse
    or embed it, or it has more than max_heavy non-H atoms."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"cannot parse SMILES {smiles!r}")
    if mol.GetNumHeavyAtoms() > max_heavy:
        raise ValueError(f"{name}: {mol.GetNumHeavyAtoms()} heavy atoms > {max_heavy}")
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
    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=np.int16)
    xyz = mol.GetConformer().GetPositions()
    if xray_h:
        xyz = xray_hydrogens(mol, xyz)
    bonds = np.array([(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in mol.GetBonds()],
                     dtype=np.int64).reshape(-1, 2)
    return Molecule3D(name, smiles, z, xyz, bonds, has_fixed_stereo(mol))


def formula_counts(smiles: str) -> dict[int, int]:
    """Atom count per atomic number, hydrogens included, of a SMILES (for checks)."""
    from rdkit import Chem
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    counts: dict[int, int] = {}
    for a in mol.GetAtoms():
        counts[a.GetAtomicNum()] = counts.get(a.GetAtomicNum(), 0) + 1
    return counts
