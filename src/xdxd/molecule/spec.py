"""The molecules a user names: `--molecule SPEC`, read into the record's `molecules` field.

SPEC is a SMILES or a molecule file (.mol, .sdf, .mol2: its connectivity and charges are
read, its coordinates never used), optionally followed by `*COUNT`, the number of such
molecules per asymmetric unit (default 1; 0.5 for a molecule on an inversion centre,
2-fold axis or mirror; 2 for Z' = 2):

    'OC(=O)c1ccccc1'    'c1ccccc1*0.5'    'O*2'    ligand.mol    salt.sdf*0.5

A salt, co-crystal or solvate is several molecules, one SPEC each. In the record:

    "molecules": [{"smiles": "O=C(O)c1ccccc1", "count": 1.0}, {"smiles": "O", "count": 2.0}]

with canonical SMILES (RDKit), so that a record says which molecule was searched.
"""
from __future__ import annotations

import math
import os
import re

from xdxd.crystal.chemistry import is_hydrogen
from xdxd.records import RecordError

MOLECULE_FILES = (".mol", ".sdf", ".mol2")
_COUNT = re.compile(r"^(.+)\*\s*([0-9]*\.?[0-9]+)$")


def parse_spec(spec: str) -> dict:
    """SPEC (see the module docstring) -> {"smiles": canonical SMILES, "count": float}.
    Raises RecordError naming the SPEC when it is not a molecule RDKit can read."""
    text = spec.strip()
    count = 1.0
    m = _COUNT.match(text)
    if m:
        text, count = m.group(1).strip(), float(m.group(2))
    if not math.isfinite(count) or count <= 0:
        raise RecordError(f"--molecule {spec!r}: the count must be a positive number")
    mol = _read_file(text) if text.lower().endswith(MOLECULE_FILES) else _read_smiles(text)
    from rdkit import Chem
    if mol.GetNumHeavyAtoms() == 0:
        raise RecordError(f"--molecule {spec!r}: no non-H atoms")
    return {"smiles": Chem.MolToSmiles(Chem.RemoveHs(mol)), "count": count}


def _read_smiles(text: str):
    from rdkit import Chem, RDLogger
    RDLogger.DisableLog("rdApp.*")  # its parse errors go to stderr unasked; ours says why
    mol = Chem.MolFromSmiles(text) if text else None
    if mol is None:
        raise RecordError(f"--molecule {text!r}: not a SMILES RDKit can read "
                          f"(nor a {'/'.join(MOLECULE_FILES)} file)")
    return mol


def _read_file(path: str):
    from rdkit import Chem, RDLogger
    RDLogger.DisableLog("rdApp.*")
    if not os.path.exists(path):
        raise RecordError(f"--molecule {path}: no such file")
    low = path.lower()
    if low.endswith(".mol2"):
        mol = Chem.MolFromMol2File(path, removeHs=False)
    elif low.endswith(".sdf"):
        mols = [m for m in Chem.SDMolSupplier(path, removeHs=False)]
        mol = mols[0] if mols else None
        if len(mols) > 1:
            raise RecordError(f"--molecule {path}: {len(mols)} molecules in the file; name each "
                              f"with its own --molecule")
    else:
        mol = Chem.MolFromMolFile(path, removeHs=False)
    if mol is None:
        raise RecordError(f"--molecule {path}: not a molecule file RDKit can read")
    return mol


def atom_counts(smiles: str) -> tuple[dict[str, int], int]:
    """(non-H atoms by element, H atoms) of one molecule given as SMILES."""
    from rdkit import Chem
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    heavy: dict[str, int] = {}
    n_h = 0
    for a in mol.GetAtoms():
        e = a.GetSymbol()
        if is_hydrogen(e):
            n_h += 1
        else:
            heavy[e] = heavy.get(e, 0) + 1
    return heavy, n_h


def molecules_contents(molecules: list[dict]) -> tuple[dict[str, float], float]:
    """(non-H atoms by element, H atoms) per asymmetric unit that the molecules, each
    {"smiles", "count"}, bring: Σ count × atoms of the molecule."""
    heavy: dict[str, float] = {}
    hydrogens = 0.0
    for m in molecules:
        counts, n_h = atom_counts(m["smiles"])
        for e, n in counts.items():
            heavy[e] = heavy.get(e, 0.0) + m["count"] * n
        hydrogens += m["count"] * n_h
    return heavy, hydrogens


def check_contents(molecules: list[dict], cell_contents: dict[str, float], n_ops: int,
                   where: str) -> None:
    """Raise RecordError unless the molecules fill the cell with the non-H atoms it holds
    (cell_contents: atoms per unit cell by element; n_ops: symmetry operations)."""
    heavy, _ = molecules_contents(molecules)
    want = {e: n for e, n in cell_contents.items() if not is_hydrogen(e) and n > 0}
    have = {e: n * n_ops for e, n in heavy.items()}
    if set(want) != set(have) or any(abs(want[e] - have[e]) > 1e-6 for e in want):
        def text(d):
            return " ".join(f"{e}{v:g}" for e, v in sorted(d.items()))
        raise RecordError(f"{where}: the molecules put {text(have)} in the cell, the data "
                          f"say {text(want)} (check --molecule and its *COUNT)")
