"""Molecules the user names: specs into the record, conformers, torsion trees.

    from xdxd.molecule import parse_spec, molecule_model, TorsionTree
    parse_spec("c1ccccc1*0.5")       # {"smiles": "c1ccccc1", "count": 0.5}
    model = molecule_model("OC(=O)c1ccccc1")   # conformer, rotatable bonds
    x = TorsionTree(model).build(angles)       # (B,n,3) Å for torsion changes (B,T)

spec: `--molecule` and the record's `molecules`; conformer: SMILES -> 3-D (RDKit);
tree: the molecule as a rigid body with torsions, built in one batched pass.
"""
from xdxd.molecule.spec import check_contents, molecules_contents, parse_spec
from xdxd.molecule.tree import MoleculeModel, TorsionTree, molecule_model, place, quaternion_matrix

__all__ = ["parse_spec", "molecules_contents", "check_contents", "MoleculeModel", "TorsionTree",
           "molecule_model", "place", "quaternion_matrix"]
