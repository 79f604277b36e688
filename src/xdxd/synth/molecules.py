"""Molecules for synthetic crystals: SMILES sources, peptides, solvents, 3-D conformers.

Sources
- A SMILES file, one molecule per line, optional name after whitespace. The default is the
  MOSES benchmark training set (1.58 M drug-like molecules, MIT licence; Polykovskiy et al.,
  Front. Pharmacol. 11 (2020) 565644), which `make data` in a source checkout fetches into
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

from xdxd.molecule.conformer import embed, xray_hydrogens

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
    point_symmetry: str = ""   # "ci" or "c2" for an exactly symmetric molecule (dimers)

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


def _graph(mol) -> tuple[np.ndarray, np.ndarray]:
    """Atomic numbers (n,) and bonds (m,2) of an RDKit molecule."""
    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=np.int16)
    bonds = np.array([(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in mol.GetBonds()],
                     dtype=np.int64).reshape(-1, 2)
    return z, bonds


def conformer(smiles: str, name: str, seed: int, max_heavy: int = 60,
              xray_h: bool = True) -> Molecule3D:
    """ETKDGv3 + MMFF94 conformer with explicit hydrogens, X-H bonds shortened to X-ray
    values (xray_hydrogens) unless xray_h is False. Raises ValueError if RDKit cannot parse
    or embed it, or it has more than max_heavy non-H atoms."""
    from rdkit import Chem

    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"cannot parse SMILES {smiles!r}")
    if mol.GetNumHeavyAtoms() > max_heavy:
        raise ValueError(f"{name}: {mol.GetNumHeavyAtoms()} heavy atoms > {max_heavy}")
    mol = embed(mol, seed, name)
    xyz = mol.GetConformer().GetPositions()
    if xray_h:
        xyz = xray_hydrogens(mol, xyz)
    z, bonds = _graph(mol)
    return Molecule3D(name, smiles, z, xyz, bonds, has_fixed_stereo(mol))


# Centrosymmetric or C2-symmetric molecules made from real fragments. ETKDG/MMFF conformers
# never have exact point symmetry, so pyxtal cannot put them on a special position, while
# ~10-15 % of real organic crystals have a molecule on one (mostly on an inversion centre,
# then on a 2-fold axis). A dimer R-L-L-R of a fragment R of a drug-like molecule, made
# exactly symmetric about the midpoint of its central bond, can sit there.

# half-linkers from R (at [*:2]) to the central bond (at [*:1]): name, SMILES, the whole
# linker is two of them (R-R, R-CH=CH-R, R-N=N-R, R-C#C-C#C-R, R-CH2CH2-R, R-OCH2CH2O-R,
# diacylhydrazine R-C(=O)NH-NHC(=O)-R, oxamide R-NHC(=O)-C(=O)NH-R, glycol diester)
LINKERS = [
    ("bond", "[*:2][*:1]"), ("ethene", "[*:2]C=[*:1]"), ("azo", "[*:2]N=[*:1]"),
    ("diyne", "[*:2]C#C[*:1]"), ("ethane", "[*:2]C[*:1]"), ("glycol-ether", "[*:2]OC[*:1]"),
    ("hydrazide", "[*:2]C(=O)N[*:1]"), ("oxamide", "[*:2]NC(=O)[*:1]"),
    ("glycol-ester", "[*:2]C(=O)OC[*:1]"),
]
CLASH_H = 2.0      # Å, shortest allowed contact across the two halves with an H involved
CLASH_HEAVY = 2.6  # Å, between heavy atoms


def random_fragment(smiles: str, rng: np.random.Generator, max_heavy: int):
    """A fragment R of a molecule, cut at a random acyclic single bond between two heavy
    atoms, as an RDKit molecule with the dummy [*:2] on a carbon. Keeps the larger piece,
    or the smaller one when only it fits max_heavy; at least 3 heavy atoms."""
    from rdkit import Chem

    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"cannot parse SMILES {smiles!r}")
    cuts = [b.GetIdx() for b in mol.GetBonds()
            if b.GetBondType() == Chem.BondType.SINGLE and not b.IsInRing()]
    for k in rng.permutation(len(cuts)):
        pieces = Chem.GetMolFrags(Chem.FragmentOnBonds(mol, [cuts[k]]), asMols=True)
        pieces = sorted(pieces, key=lambda m: -m.GetNumHeavyAtoms())  # dummy counts as heavy
        for piece in pieces:
            n = piece.GetNumHeavyAtoms() - 1
            if n < 3 or 2 * n > max_heavy:
                continue
            dummy = next(a for a in piece.GetAtoms() if a.GetAtomicNum() == 0)
            if dummy.GetNeighbors()[0].GetAtomicNum() != 6:
                break  # attach through carbon only (no O-O, N-N, O-N=N ... links)
            dummy.SetIsotope(0)
            dummy.SetAtomMapNum(2)
            return piece
    raise ValueError(f"{smiles}: no fragment of >= 3 heavy atoms that fits")


def _halves(rmol, linker: str):
    """R-linker-R as one RDKit molecule (no H), its atoms tagged 'half' (0/1) and 'k' (index
    in the half); the central bond joins the two atoms that held [*:1]."""
    from rdkit import Chem, rdBase

    if linker == "[*:2][*:1]":  # a direct R-R bond
        half = Chem.Mol(rmol)
        next(a for a in half.GetAtoms() if a.GetAtomMapNum() == 2).SetAtomMapNum(1)
    else:
        block = rdBase.BlockLogs()  # noqa: F841  molzip warns about the open [*:1]
        half = Chem.molzip(Chem.CombineMols(rmol, Chem.MolFromSmiles(linker)))
        del block
    copies = []
    for h in (0, 1):
        c = Chem.Mol(half)
        for a in c.GetAtoms():
            a.SetIntProp("half", h)
            a.SetIntProp("k", a.GetIdx())
        copies.append(c)
    mol = Chem.molzip(Chem.CombineMols(*copies))
    Chem.SanitizeMol(mol)
    return mol


def _pairing(mol) -> tuple[np.ndarray, np.ndarray]:
    """Atom indices of half A and the matching atoms of half B, hydrogens included (H of the
    same parent matched in index order)."""
    key = {}
    for a in mol.GetAtoms():
        if a.HasProp("half"):
            key[a.GetIdx()] = (a.GetIntProp("half"), a.GetIntProp("k"), -1)
    rank: dict = {}
    for a in mol.GetAtoms():
        if not a.HasProp("half"):  # an H added after zipping
            h, k, _ = key[a.GetNeighbors()[0].GetIdx()]
            rank[(h, k)] = rank.get((h, k), -1) + 1
            key[a.GetIdx()] = (h, k, rank[(h, k)])
    where = {v: i for i, v in key.items()}
    a_idx = np.array(sorted(i for i, v in key.items() if v[0] == 0))
    b_idx = np.array([where[(1,) + key[i][1:]] for i in a_idx])
    if len(a_idx) + len(b_idx) != mol.GetNumAtoms():
        raise ValueError("halves do not match")
    return a_idx, b_idx


def _reference(xyz, u, v, nbr) -> tuple[np.ndarray, np.ndarray]:
    """Unit vector e along the central bond u->v and unit p perpendicular to it toward
    the neighbour nbr of u."""
    e = xyz[v] - xyz[u]
    e /= np.linalg.norm(e)
    p = xyz[nbr] - xyz[u]
    p -= e * (p @ e)
    return e, p / np.linalg.norm(p)


def _torsion(x0, x1, x2, x3) -> float:
    """Dihedral angle x0-x1-x2-x3 in degrees."""
    b0, b1, b2 = x0 - x1, x2 - x1, x3 - x2
    b1 = b1 / np.linalg.norm(b1)
    v, w = b0 - (b0 @ b1) * b1, b2 - (b2 @ b1) * b1
    return float(np.degrees(np.arctan2(np.cross(b1, v) @ w, v @ w)))


def _clash(xyz, z, a_idx, b_idx, topo) -> bool:
    """True if an atom of half A and one of half B, >= 3 bonds apart, are too close."""
    d = np.linalg.norm(xyz[a_idx, None] - xyz[None, b_idx], axis=-1)
    hh = (z[a_idx, None] == 1) | (z[None, b_idx] == 1)
    limit = np.where(hh, CLASH_H, CLASH_HEAVY)
    far = topo[np.ix_(a_idx, b_idx)] >= 3
    return bool(np.any(far & (d < limit)))


def symmetric_dimer(smiles: str, name: str, seed: int, rng: np.random.Generator,
                    max_heavy: int = 60, op: str | None = None,
                    linker: str | None = None) -> Molecule3D:
    """R-linker-R from a random fragment R of `smiles`, with exact inversion symmetry (op
    'ci') or a 2-fold axis ('c2'; drawn 60:40 unless given) about the midpoint of the central
    bond; the linker is a LINKERS name, drawn unless given. One ETKDG+MMFF conformer is embedded (seed); half B is then replaced by the image
    of half A, which keeps bond lengths and angles. Fragments with assigned stereocentres
    get the 2-fold axis and a chiral molecule. Coordinates in Å, X-ray H lengths. Raises
    ValueError when no fragment fits or the halves clash."""
    from rdkit import Chem

    rmol = random_fragment(smiles, rng, max_heavy)
    lname, half_smiles = LINKERS[int(rng.integers(len(LINKERS)))] if linker is None \
        else (linker, dict(LINKERS)[linker])
    mol = _halves(rmol, half_smiles)
    if mol.GetNumHeavyAtoms() > max_heavy:
        raise ValueError(f"{name}: dimer has {mol.GetNumHeavyAtoms()} heavy atoms > {max_heavy}")
    chiral = has_fixed_stereo(mol)
    op = op or ("c2" if chiral or rng.random() < 0.4 else "ci")
    if chiral and op == "ci":
        raise ValueError(f"{name}: a centrosymmetric dimer of a chiral fragment is meso")
    mol = embed(mol, seed, name)
    xyz = xray_hydrogens(mol, mol.GetConformer().GetPositions())
    a_idx, b_idx = _pairing(mol)
    z, bonds = _graph(mol)
    topo = Chem.GetDistanceMatrix(mol)
    u = next(i for i in a_idx if any(j in set(b_idx) for j in _neighbours(mol, i)))
    v = int(b_idx[list(a_idx).index(u)])
    nbr = next(j for j in _neighbours(mol, u) if j != v and z[j] > 1)
    c = 0.5 * (xyz[u] + xyz[v])
    if op == "ci":
        candidates = [None]
    else:  # 2-fold axis at angle alpha from nbr about the bond: torsion nbr-u-v-nbr' = 2 alpha
        e, p = _reference(xyz, u, v, nbr)
        tau = _torsion(xyz[nbr], xyz[u], xyz[v], xyz[b_idx[list(a_idx).index(nbr)]])
        double = mol.GetBondBetweenAtoms(int(u), v).GetBondType() == Chem.BondType.DOUBLE
        alphas = [90.0] if double else [tau / 2, 90.0, 30.0, 150.0, *rng.uniform(0, 180, 3)]
        candidates = [np.cos(np.radians(a)) * p + np.sin(np.radians(a)) * np.cross(e, p)
                      for a in alphas]
    for axis in candidates:
        d = xyz[a_idx] - c
        image = c - d if axis is None else c + 2 * np.outer(d @ axis, axis) - d
        new = xyz.copy()
        new[b_idx] = image
        if not _clash(new, z, a_idx, b_idx, topo):
            smi = _smiles_from_3d(mol, new, keep_chirality=chiral)
            return Molecule3D(f"{name}|{lname}-{op}", smi, z, new, bonds, chiral, op)
    raise ValueError(f"{name}: the two halves of the {lname} dimer clash ({op})")


def _neighbours(mol, i) -> list[int]:
    return [n.GetIdx() for n in mol.GetAtomWithIdx(int(i)).GetNeighbors()]


def _smiles_from_3d(mol, xyz: np.ndarray, keep_chirality: bool) -> str:
    """SMILES with the double-bond geometry of xyz (Å); tetrahedral stereo only if asked."""
    from rdkit import Chem
    from rdkit.Geometry import Point3D

    m = Chem.Mol(mol)
    conf = m.GetConformer()
    for i, x in enumerate(xyz):
        conf.SetAtomPosition(i, Point3D(*map(float, x)))
    Chem.AssignStereochemistryFrom3D(m)
    if not keep_chirality:
        for a in m.GetAtoms():
            a.SetChiralTag(Chem.ChiralType.CHI_UNSPECIFIED)
    return Chem.MolToSmiles(Chem.RemoveHs(m))


def formula_counts(smiles: str) -> dict[int, int]:
    """Atom count per atomic number, hydrogens included, of a SMILES (for checks)."""
    from rdkit import Chem
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    counts: dict[int, int] = {}
    for a in mol.GetAtoms():
        counts[a.GetAtomicNum()] = counts.get(a.GetAtomicNum(), 0) + 1
    return counts
