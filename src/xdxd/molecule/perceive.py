"""The molecules of a known structure: what `xdxd-bench --molecules-from-reference` names.

The model's atoms (H included) are expanded into the unit cell, bonded by the one bond
criterion (chemistry.is_bond, periodic), and grown into molecules; RDKit assigns each
molecule's bond orders and charges on that connectivity (rdDetermineBonds.DetermineBondOrders,
total charge 0, then ±1, ±2 for ions; all bonds single with formal charges where no
bond orders fit, as for PF6-). H atoms of partial occupancy (a methyl disordered over
a mirror) are replaced by their total on each parent atom. A molecule's count per
asymmetric unit is the number of its symmetry-independent copies; one on a special
position is an entry of its own with count 1/k (0.5 on an inversion centre, so two
half-molecules on two centres are two entries of 0.5); in a space group with improper operations a molecule
and its mirror image are one molecule. Only the SMILES leave this module: a search
given them never sees the coordinates.
"""
from __future__ import annotations

import gemmi
import numpy as np

from xdxd.crystal.chemistry import NEIGHBOUR_CELLS, covalent_radius, is_bond, is_hydrogen
from xdxd.crystal.symmetry import SymOps, unique_images

CHARGES = (0, 1, -1, 2, -2)  # total charges tried for a molecule, in this order
FULL_OCCUPANCY = 0.99        # an H atom below this is one of a disordered set


def molecules_of(elements: list[str], frac: np.ndarray, cell: gemmi.UnitCell, ops: SymOps,
                 occ: np.ndarray | None = None) -> list[dict]:
    """[{"smiles", "count"}] of a model (asymmetric-unit atoms, H included, fractional;
    occupancies occ (n,), 1 by default), one entry per distinct molecule in general
    positions and one per molecule on a special position, most copies first. Raises ValueError when RDKit cannot make a molecule of a fragment."""
    frac = np.mod(np.asarray(frac, float), 1.0)
    occ = np.ones(len(elements)) if occ is None else np.asarray(occ, float)
    partial = np.array([is_hydrogen(e) for e in elements]) & (occ < FULL_OCCUPANCY)
    pos, owner = unique_images(frac[~partial], ops, cell, tol=0.3)
    owner = np.nonzero(~partial)[0][owner]
    els = [elements[k] for k in owner]
    # every image of a disordered H counts (only exact duplicates on a special position merge)
    h_pos, h_owner = unique_images(frac[partial], ops, cell, tol=0.05)
    extra_h = _partial_hydrogens(pos, els, h_pos, occ[partial][h_owner], cell)
    orbits: dict[frozenset, list] = {}  # molecules made of the same asymmetric-unit atoms: one orbit
    names: list[str] = []
    for atoms, cart, bonds in _molecules_unwrapped(pos, els, cell):
        smiles = _smiles([els[a] for a in atoms], cart, bonds, extra_h[atoms])
        if not ops.sohncke:  # a racemate's two hands are one molecule: the symmetry makes the other
            smiles = next((s for s in names if s == _mirror(smiles)), smiles)
        names.append(smiles)
        orbits.setdefault(frozenset(owner[atoms].tolist()), [smiles, 0])[1] += 1
    whole: dict[str, int] = {}
    out = []
    for smiles, n in orbits.values():
        if n == len(ops):
            whole[smiles] = whole.get(smiles, 0) + 1
        else:  # a molecule on a special position: its own entry, count 1/k
            out.append({"smiles": smiles, "count": round(n / len(ops), 4)})
    out += [{"smiles": s, "count": float(n)} for s, n in whole.items()]
    return sorted(out, key=lambda m: (-m["count"], m["smiles"]))


def _partial_hydrogens(pos: np.ndarray, els: list[str], h_pos: np.ndarray, h_occ: np.ndarray,
                       cell: gemmi.UnitCell) -> np.ndarray:
    """(P,) int: H atoms each atom at pos (P,3) carries among the partial-occupancy H at
    h_pos (Q,3) (their occupancies h_occ summed onto the nearest bonded non-H atom, rounded)."""
    total = np.zeros(len(pos))
    heavy = np.nonzero([not is_hydrogen(e) for e in els])[0]
    if not len(heavy):
        return total.astype(int)
    orth = np.array(cell.orth.mat)
    for x, q in zip(h_pos, h_occ):
        d = pos[heavy] - x
        dist = np.linalg.norm((d - np.round(d)) @ orth.T, axis=1)
        k = int(np.argmin(dist))
        if is_bond(dist[k], covalent_radius("H") + covalent_radius(els[heavy[k]])):
            total[heavy[k]] += q
    return np.floor(total + 0.5).astype(int)


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
                         ) -> list[tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]]:
    """Connected fragments of the P1 atoms pos (P,3), each (atom indices (k,), Cartesian
    Å (k,3) with the fragment whole across cell edges, bonds as pairs of positions in the
    fragment)."""
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
        atoms = np.array(sorted(at))
        where = {int(a): k for k, a in enumerate(atoms)}
        bonds = sorted({(min(where[i], where[j]), max(where[i], where[j]))
                        for i in atoms for j in np.nonzero(bonded[i].any(-1))[0]})
        out.append((atoms, np.array([at[a] for a in atoms]) @ orth.T, bonds))
    return out


def _smiles(elements: list[str], cart: np.ndarray, bonds: list[tuple[int, int]],
            extra_h: np.ndarray | None = None) -> str:
    """Canonical SMILES of one molecule from its elements, Cartesian coordinates (Å), bonds
    (pairs of atom indices) and H atoms to add to each atom (placed opposite its bonds)."""
    from rdkit import Chem, RDLogger
    from rdkit.Chem import rdDetermineBonds
    from rdkit.Geometry import Point3D
    RDLogger.DisableLog("rdApp.*")
    rw = Chem.RWMol()
    xyz = [np.asarray(x, float) for x in cart]
    for e in elements:
        rw.AddAtom(Chem.Atom(e))
    for i, j in bonds:
        rw.AddBond(int(i), int(j), Chem.BondType.SINGLE)
    for a, n in enumerate(extra_h if extra_h is not None else []):
        for _ in range(int(n)):
            h = rw.AddAtom(Chem.Atom("H"))
            rw.AddBond(a, h, Chem.BondType.SINGLE)
            xyz.append(_away(xyz, a, [b.GetOtherAtomIdx(a) for b in rw.GetAtomWithIdx(a).GetBonds()
                                      if b.GetOtherAtomIdx(a) != h]))
    conf = Chem.Conformer(len(xyz))
    for k, x in enumerate(xyz):
        conf.SetAtomPosition(k, Point3D(*map(float, x)))
    rw.AddConformer(conf, assignId=True)
    nitro = _nitro_groups(rw)
    for charge in CHARGES:
        mol = Chem.RWMol(rw)
        for _, o1, o2 in nitro:  # perceived as NH2 (RDKit's bond orders fail on two nitro groups)
            mol.GetAtomWithIdx(o1).SetAtomicNum(1)
            mol.GetAtomWithIdx(o2).SetAtomicNum(1)
        try:
            rdDetermineBonds.DetermineBondOrders(mol, charge=charge)
            for n, o1, o2 in nitro:
                for o in (o1, o2):
                    mol.GetAtomWithIdx(o).SetAtomicNum(8)
                mol.GetBondBetweenAtoms(n, o1).SetBondType(Chem.BondType.DOUBLE)
                mol.GetAtomWithIdx(n).SetFormalCharge(1)
                mol.GetAtomWithIdx(o2).SetFormalCharge(-1)
            Chem.SanitizeMol(mol)
            return _written(mol)
        except Exception:  # RDKit raises ValueError or its own errors for a wrong charge
            continue
    extra = _surplus_hydrogens(rw)
    if extra:  # an H set disordered over more sites than the atom has H, occupancies not given
        keep = [a for a in range(len(elements)) if a not in extra]
        where = {a: k for k, a in enumerate(keep)}
        return _smiles([elements[a] for a in keep], np.asarray(cart)[keep],
                       [(where[i], where[j]) for i, j in bonds if i in where and j in where],
                       None if extra_h is None else np.asarray(extra_h)[keep])
    mol = _single_bonds(rw)
    if mol is not None:
        return _written(mol)
    formula = "".join(sorted(elements))
    raise ValueError(f"RDKit cannot assign bonds to a fragment {formula} at charges {CHARGES}")


def _surplus_hydrogens(mol) -> set[int]:
    """H atoms beyond what their parent's lowest neutral valence leaves room for (an OH
    with three H sites), the last ones of each parent; empty if none."""
    from rdkit import Chem
    table = Chem.GetPeriodicTable()
    out = set()
    for atom in mol.GetAtoms():
        if atom.GetAtomicNum() == 1:
            continue
        hs = [n.GetIdx() for n in atom.GetNeighbors() if n.GetAtomicNum() == 1]
        room = table.GetDefaultValence(atom.GetAtomicNum()) - (atom.GetDegree() - len(hs))
        if room >= 0 and len(hs) > max(room, 1):
            out.update(hs[max(room, 1):])
    return out


def _nitro_groups(mol) -> list[tuple[int, int, int]]:
    """(N, O, O) of each nitro group: an N with three neighbours, two of them O bonded to
    nothing else."""
    out = []
    for atom in mol.GetAtoms():
        if atom.GetSymbol() != "N" or atom.GetDegree() != 3:
            continue
        o = [b.GetIdx() for b in atom.GetNeighbors() if b.GetSymbol() == "O" and b.GetDegree() == 1]
        if len(o) == 2:
            out.append((atom.GetIdx(), o[0], o[1]))
    return out


def _away(xyz: list[np.ndarray], a: int, neighbours: list[int]) -> np.ndarray:
    """A point 1 Å from atom a opposite its neighbours (Å), for an added H."""
    v = sum((xyz[a] - xyz[b] for b in neighbours), np.zeros(3))
    if np.linalg.norm(v) < 1e-3:
        v = np.array([0.0, 0.0, 1.0])
    return xyz[a] + v / np.linalg.norm(v)


def _single_bonds(rw):
    """The molecule with every bond single, a formal charge of ±1 on each atom whose bond
    count its neutral valences do not allow (PF6-: P-) and implicit H where the model has
    none (a water O), or None if that fails."""
    from rdkit import Chem
    mol = Chem.RWMol(rw)
    table = Chem.GetPeriodicTable()
    for atom in mol.GetAtoms():
        n = atom.GetDegree()
        allowed = list(table.GetValenceList(atom.GetAtomicNum()))
        if -1 in allowed or n in allowed:
            continue
        for charge in (-1, 1):
            iso = table.GetValenceList(atom.GetAtomicNum() - charge)  # isoelectronic element
            if n in iso or -1 in iso:
                atom.SetFormalCharge(charge)
                break
    try:
        Chem.SanitizeMol(mol)
        Chem.AssignStereochemistryFrom3D(mol)
    except Exception:
        return None
    return mol.GetMol()


def _written(mol) -> str:
    """Canonical SMILES without H that RDKit reads back (Kekulé form where the aromatic one
    would not be: a phosphazene ring)."""
    from rdkit import Chem
    bare = Chem.RemoveHs(mol)
    for atom in bare.GetAtoms():  # octahedral and other non-tetrahedral tags (PF6-) say nothing here
        if atom.GetChiralTag() not in (Chem.ChiralType.CHI_TETRAHEDRAL_CW, Chem.ChiralType.CHI_TETRAHEDRAL_CCW):
            atom.SetChiralTag(Chem.ChiralType.CHI_UNSPECIFIED)
    smiles = Chem.MolToSmiles(bare)
    if Chem.MolFromSmiles(smiles) is not None:
        return smiles
    Chem.Kekulize(bare, clearAromaticFlags=True)
    return Chem.MolToSmiles(bare, kekuleSmiles=True)
