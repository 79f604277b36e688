"""The known-molecule search: specs into the record, the torsion tree, the objective, the
search end to end, molecules on special positions, and bad molecules as error records."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from test_refine import one_thread  # noqa: F401 (autouse fixture)
from xdxd.crystal.dataset import DataSet
from xdxd.crystal.symmetry import find_spacegroup, make_cell, spglib_number, symops, unique_images
from xdxd.molecule import TorsionTree, molecule_model, parse_spec, place
from xdxd.records import RecordError

ROOT = Path(__file__).parents[1]
DATA = Path(__file__).parent / "data" / "cod"
SMILES_1100656 = "C[C@@H]1NC(=S)O[C@@H]1c1ccccc1"


def dihedral(x: np.ndarray, a: int, b: int, c: int, d: int) -> float:
    """Dihedral angle a-b-c-d in radians."""
    b0, b1, b2 = x[a] - x[b], x[c] - x[b], x[d] - x[c]
    b1 = b1 / np.linalg.norm(b1)
    v = b0 - (b0 @ b1) * b1
    w = b2 - (b2 @ b1) * b1
    return float(np.arctan2(np.cross(b1, v) @ w, v @ w))


def test_specs_give_canonical_smiles_and_counts():
    assert parse_spec("c1ccccc1*0.5") == {"smiles": "c1ccccc1", "count": 0.5}
    assert parse_spec("O*2") == {"smiles": "O", "count": 2.0}
    assert parse_spec("OC(=O)c1ccccc1")["smiles"] == "O=C(O)c1ccccc1"
    for bad in ("C1CC", "not-a-molecule", "CC*0"):
        with pytest.raises(RecordError, match="--molecule"):
            parse_spec(bad)


def test_molecule_files_are_read_for_their_connectivity(tmp_path):
    from rdkit import Chem
    from rdkit.Chem import AllChem
    mol = Chem.AddHs(Chem.MolFromSmiles("OC(=O)c1ccccc1"))
    AllChem.EmbedMolecule(mol, randomSeed=1)
    Chem.MolToMolFile(mol, str(tmp_path / "benzoic.mol"))
    assert parse_spec(f"{tmp_path / 'benzoic.mol'}*2") == {"smiles": "O=C(O)c1ccccc1", "count": 2.0}
    (tmp_path / "junk.mol").write_text("this is not a molecule\n")
    with pytest.raises(RecordError, match="junk.mol: not a molecule file"):
        parse_spec(str(tmp_path / "junk.mol"))


def test_the_tree_builds_the_conformer_and_turns_each_torsion():
    """At zero torsion changes the tree is the RDKit conformer (<= 1e-4 Å); a change of
    0.7 rad on one bond turns that bond's dihedral by 0.7 rad and keeps every bond length."""
    m = molecule_model("CCOC(=O)CCc1ccc(O)cc1")
    assert len(m.torsions) >= 3
    tree = TorsionTree(m, dtype=torch.float64)
    x0 = tree.build(torch.zeros(1, tree.n_torsions, dtype=torch.float64))[0].numpy()
    assert np.abs(x0 - (m.xyz - m.xyz[m.heavy].mean(0))).max() < 1e-4
    bonds = lambda x: np.linalg.norm(x[m.bonds[:, 0]] - x[m.bonds[:, 1]], axis=1)  # noqa: E731
    for k, (i, j) in enumerate(m.torsions):
        a = next(n for n in _heavy_neighbours(m, i) if n != j)
        d = next(n for n in _heavy_neighbours(m, j) if n != i)
        angles = torch.zeros(1, tree.n_torsions, dtype=torch.float64)
        angles[0, k] = 0.7
        x = tree.build(angles)[0].numpy()
        turn = (dihedral(x, a, i, j, d) - dihedral(x0, a, i, j, d) + np.pi) % (2 * np.pi) - np.pi
        assert abs(abs(turn) - 0.7) < 1e-6, (k, turn)
        assert np.abs(bonds(x) - bonds(x0)).max() < 1e-9


def test_a_flexible_ring_gives_several_conformations_each_built_exactly():
    """Cyclohexyl-morpholine: distinct chair conformations (axial and equatorial), each
    reproduced by the tree at zero torsions; a flat molecule keeps one conformer."""
    m = molecule_model("C1CCCCC1N1CCOCC1", rings=4)
    assert len(m.conformers) >= 2
    tree = TorsionTree(m, dtype=torch.float64)
    zero = torch.zeros(len(m.conformers), tree.n_torsions, dtype=torch.float64)
    x = tree.build(zero, torch.arange(len(m.conformers))).numpy()
    ref = m.conformers - m.conformers[:, m.heavy].mean(1, keepdims=True)
    assert np.abs(x - ref).max() < 1e-4
    assert np.abs(ref[0] - ref[1]).max() > 0.3  # not one conformation twice
    assert len(molecule_model("c1ccccc1C(=O)O", rings=4).conformers) == 1


def test_a_cyclophosphazene_embeds():
    """MMFF's atom typing resets RDKit's aromatic flags of a P=N ring so that it no longer
    kekulises (2200981, 2204100); the conformer comes back on an untouched copy."""
    m = molecule_model("ClP1(Cl)=NP(Cl)(Cl)=NP2(=N1)N1CCN2Cc2ccccc2OCCOCCOc2ccccc2C1", rings=4)  # 2204100
    assert m.n_atoms == 59 and len(m.conformers) >= 1


def _heavy_neighbours(m, i):
    return [int(b) if a == i else int(a) for a, b in m.bonds if i in (a, b) and m.parent[a if b == i else b] < 0]


def test_a_placed_molecule_has_the_space_group_it_was_placed_in():
    cell = make_cell([11.0, 7.5, 13.0, 90, 104, 90])
    ops = symops(find_spacegroup("P 1 21/c 1"))
    m = molecule_model("OC(=O)c1ccccc1")
    tree = TorsionTree(m)
    orth = torch.tensor(np.array(cell.orth.mat), dtype=torch.float32)
    deorth = torch.tensor(np.array(cell.frac.mat), dtype=torch.float32)
    gen = torch.Generator().manual_seed(3)
    frac = place(tree.build(torch.randn(2, tree.n_torsions, generator=gen)), torch.randn(2, 4, generator=gen),
                 torch.rand(2, 3, generator=gen), orth, deorth).numpy()
    for f in frac:
        pos, owner = unique_images(np.mod(f, 1.0), ops, cell)
        z = np.array([{"C": 6, "O": 8, "H": 1}[m.elements[k]] for k in owner])
        assert spglib_number(cell, pos, z) == 14


def _problem(cif: str, d_min: float = 2.0):
    """A simulated record of a shipped CIF with its molecules named from its model."""
    from xdxd.bench import molecules_stage
    from xdxd.prep import prepare_from_model_cif
    return molecules_stage(prepare_from_model_cif(cif, d_min=d_min)[0])


def test_the_objective_gradient_matches_finite_differences():
    from xdxd.solve.molecule import MoleculeConfig, MoleculeSearch, Particles
    rec = _problem(str(ROOT / "examples" / "1100656.cif"))
    models = [(molecule_model(SMILES_1100656), 1.0)]
    s = MoleculeSearch(DataSet.from_record(rec).nonzero(), models, MoleculeConfig(clash_weight=0.01))
    p = s.random(1, torch.Generator().manual_seed(0))

    def loss(centre, q, t):
        frac = s.frac(Particles(centre, q, t, p.site, p.conformer, p.lineage))
        return s.objective.misfit(frac)[0] + 0.01 * s.objective.clash(frac)

    params = [p.centre.clone().requires_grad_(True), p.orientation.clone().requires_grad_(True),
              p.torsions.clone().requires_grad_(True)]
    loss(*params).sum().backward()
    for k, (x, eps) in enumerate(zip(params, (2e-3, 2e-3, 2e-3))):
        flat = x.detach().reshape(-1)
        for i in range(min(3, flat.numel())):
            up, dn = [q.detach().clone() for q in params], [q.detach().clone() for q in params]
            up[k].reshape(-1)[i] += eps
            dn[k].reshape(-1)[i] -= eps
            numeric = float(loss(*up) - loss(*dn)) / (2 * eps)
            analytic = float(x.grad.reshape(-1)[i])
            assert abs(numeric - analytic) <= 0.05 * abs(analytic) + 1e-3, (k, i, numeric, analytic)


def test_a_molecule_on_an_inversion_centre_comes_out_centrosymmetric():
    """p-Dichlorobenzene placed on the inversion centre of P-1 with weight 1/2: the
    candidate lists one atom of each centrosymmetric pair (Cl, 3 C, occupancy 1), and
    those atoms expanded by symmetry give the whole molecule back."""
    from xdxd.solve.molecule import Copy, _atoms
    m = molecule_model("Clc1ccc(Cl)cc1")
    cell = make_cell([12.0, 10.0, 8.0, 95, 100, 90])
    sg = find_spacegroup("P -1")
    data = DataSet(cell, sg, np.zeros((1, 3), int), np.ones(1), np.ones(1))
    x = (m.xyz - m.xyz[m.heavy].mean(0)) @ np.array(cell.frac.mat).T + 0.5  # centred on (½, ½, ½)
    copy = Copy(m, TorsionTree(m), slice(0, m.n_atoms), 0.5)
    atoms, _ = _atoms([copy], x, 0.04, data)
    heavy = [a for a in atoms if not a.get("riding")]
    assert sorted(a["element"] for a in heavy) == ["C", "C", "C", "Cl"]
    assert all(a["occ"] == 1.0 for a in heavy)
    pos, _ = unique_images(np.array([a["xyz"] for a in heavy]), symops(sg), cell)
    assert len(pos) == 8
    whole = np.mod(x[m.heavy], 1.0)
    d = pos[:, None] - whole[None]
    d -= np.round(d)
    assert np.linalg.norm(d @ np.array(cell.orth.mat).T, axis=-1).min(1).max() < 0.15


def test_the_pairings_of_a_symmetric_molecule_fit_its_site():
    """p-Dichlorobenzene: its graph has three involutions; an inversion centre takes the
    two that fix no atom, the antipodal one (which the conformer has) first; a mirror
    also takes the planar molecule onto itself; a single ion takes every kind of site
    with itself as its partner."""
    from xdxd.molecule.symmetry import Symmetrised, _pairings
    m = molecule_model("Clc1ccc(Cl)cc1")
    heavy = m.xyz[m.heavy]
    assert len(m.involutions) == 3
    inversion = _pairings(m.involutions, heavy, "inversion")
    assert len(inversion) == 2 and not any((p == np.arange(8)).any() for p in inversion)
    assert np.abs(heavy[inversion[0]] + heavy - 2 * heavy.mean(0)).max() < 0.05  # antipodal
    assert np.abs(heavy[inversion[1]] + heavy - 2 * heavy.mean(0)).max() > 1.0
    mirror = _pairings(m.involutions, heavy, "mirror")
    assert len(mirror) == 4 and any((p == np.arange(8)).all() for p in mirror)
    diimine = molecule_model("[H]/N=C/C=N/[H]")  # RDKit keeps these H, before the heavy atoms
    assert diimine.involutions.shape == (1, 4)
    held = Symmetrised.of(diimine, np.array([[0.0, 0.0, 0.0]]), symops(find_spacegroup("P -1")))
    els = np.array(diimine.elements)
    assert (els[held.pairing[0].numpy()] == els).all() and (held.pairing[0].numpy() != np.arange(len(els)))[diimine.heavy].all()
    ion = molecule_model("[Br-]")
    for kind in ("inversion", "rotation", "mirror"):
        assert [p.tolist() for p in _pairings(ion.involutions, ion.xyz[ion.heavy], kind)] == [[0]]


def test_a_molecule_held_on_a_site_has_its_symmetry_exactly():
    """Any torsions and orientation of 1,2-diphenylethane held on the inversion centre
    (½, 0, ½) of P2₁/c: the centre maps the molecule onto itself (heavy atoms onto their
    partners within 1e-5), and the gradient reaches every parameter."""
    from xdxd.crystal.symmetry import site_symmetry
    from xdxd.molecule.symmetry import Symmetrised
    cell = make_cell([11.0, 7.5, 13.0, 90, 104, 90])
    ops = symops(find_spacegroup("P 1 21/c 1"))
    index, site = site_symmetry(np.array([0.5, 0.0, 0.5]), ops)
    assert index.tolist() == [0, 2] and len(site) == 2 and np.allclose(site.rot[1], -np.eye(3)) and np.allclose(site.tran[1], [1, 0, 1])
    m = molecule_model("c1ccc(CCc2ccccc2)cc1")
    held = Symmetrised.of(m, np.array([[0.5, 0.0, 0.5]]), ops)
    assert held is not None and len(held.points) >= 1
    tree = TorsionTree(m)
    orth = torch.tensor(np.array(cell.orth.mat), dtype=torch.float32)
    deorth = torch.tensor(np.array(cell.frac.mat), dtype=torch.float32)
    gen = torch.Generator().manual_seed(1)
    t = torch.randn(3, tree.n_torsions, generator=gen).requires_grad_(True)
    q = torch.randn(3, 4, generator=gen).requires_grad_(True)
    x = place(tree.build(t), q, torch.tensor([[0.5, 0.0, 0.5]]).expand(3, 3), orth, deorth)
    start = torch.zeros(3, dtype=torch.long)
    y, moved = held.apply(x, start, orth)
    n = int(m.heavy.sum())
    image = 2 * torch.tensor([0.5, 0.0, 0.5]) - y[:, :n]                 # the inversion at (½, 0, ½)
    assert (image - y[:, held.pairing[0, :n]]).abs().max() < 1e-5
    (y.sum() + moved.sum()).backward()
    assert t.grad.abs().sum() > 0 and q.grad.abs().sum() > 0


def test_a_rigid_molecule_is_held_only_by_a_symmetry_its_shape_has():
    """Without torsions nothing can change a molecule's shape: trans-1,2-dichloroethene is
    held on an inversion centre, cis (whose graph pairs its atoms the same way, but whose
    shape has no centre) is left free for the data to place."""
    from xdxd.molecule.symmetry import Symmetrised
    ops = symops(find_spacegroup("P -1"))
    origin = np.zeros((1, 3))
    assert Symmetrised.of(molecule_model("Cl/C=C/Cl"), origin, ops) is not None
    cis = molecule_model("Cl/C=C\\Cl")
    assert len(cis.involutions) and Symmetrised.of(cis, origin, ops) is None


def test_the_contact_penalty_is_the_same_block_by_block(monkeypatch):
    """The contact penalty and its gradient, computed a block of particles at a time, do
    not depend on the block size, and the gradient matches finite differences."""
    from xdxd.solve.molecule import MoleculeConfig, MoleculeSearch, _Clash
    rec = _problem(str(ROOT / "examples" / "1100656.cif"))
    s = MoleculeSearch(DataSet.from_record(rec).nonzero(), [(molecule_model(SMILES_1100656), 1.0)],
                       MoleculeConfig())
    frac = s.frac(s.random(24, torch.Generator().manual_seed(1))).double()
    frac.requires_grad_(True)
    results = []
    for block in (1, 2000, 1 << 22):  # one particle, a few, all in one block
        monkeypatch.setattr(_Clash, "BLOCK", block)
        obj = s.objective
        e = _Clash.apply(frac[:, obj.heavy], obj.rot.double(), obj.tran.double(), obj.orth.double(),
                         obj.lattice.double(), obj.limit.double(), obj.counted.double(), None, obj.zero)
        g, = torch.autograd.grad(e.sum(), frac)
        results.append((e.detach(), g))
    assert (results[0][0] > 0).sum() >= 3  # several particles do clash
    for e, g in results[1:]:
        assert torch.allclose(e, results[0][0]) and torch.allclose(g, results[0][1])
    assert torch.autograd.gradcheck(
        lambda x: _Clash.apply(x, obj.rot.double(), obj.tran.double(), obj.orth.double(), obj.lattice.double(),
                               obj.limit.double(), obj.counted.double(), None, obj.zero),
        (frac[results[0][0] > 0][:2][:, obj.heavy].detach().clone().requires_grad_(True),), atol=1e-4)


def test_a_held_molecule_does_not_clash_with_its_own_image():
    """p-Dichlorobenzene held on the inversion centre of P-1 in a 13 Å cube: no contact
    penalty (its image by the centre is itself), where counting that image would cost
    a lot; the search's loss is finite."""
    from xdxd.solve.molecule import MoleculeConfig, MoleculeSearch
    cell = make_cell([13.0, 13.0, 13.0, 90, 90, 90])
    hkl = np.array([[h, k, l] for h in range(3) for k in range(-2, 3) for l in range(-2, 3)][1:])
    data = DataSet(cell, find_spacegroup("P -1"), hkl, np.ones(len(hkl)), np.ones(len(hkl)))
    s = MoleculeSearch(data, [(molecule_model("Clc1ccc(Cl)cc1"), 0.5)], MoleculeConfig())
    p = s.random(4, torch.Generator().manual_seed(0))
    frac, _ = s.build(p)
    ops = {0: s.held[0].op[p.site[:, 0]]}
    assert s.objective.clash(frac, ops).abs().max() == 0.0
    s.objective.counted[..., s.objective.zero] = 1.0  # every image counted: the molecule on itself
    assert s.objective.clash(frac, {}).min() > 100
    assert torch.isfinite(s.loss(p)).all()


def test_two_half_molecules_on_two_centres_are_two_entries():
    """Two Cl2 molecules, each across an inversion centre of P-1 ((0,0,0) and (0,½,½)):
    two entries of count 0.5, not one of count 1 (a general position)."""
    from xdxd.molecule.perceive import molecules_of
    cell = make_cell([12.0, 10.0, 9.0, 90, 90, 90])
    frac = np.array([[0.083, 0.0, 0.0], [0.083, 0.5, 0.5]])
    out = molecules_of(["Cl", "Cl"], frac, cell, symops(find_spacegroup("P -1")))
    assert out == [{"smiles": "ClCl", "count": 0.5}, {"smiles": "ClCl", "count": 0.5}]


def test_molecules_are_read_off_a_known_structure():
    assert _problem(str(ROOT / "examples" / "1100656.cif"))["molecules"] == \
        [{"smiles": SMILES_1100656, "count": 1.0}]
    assert _problem(str(DATA / "2000642.cif"))["molecules"] == \
        [{"smiles": "O=C(c1ccccc1)c1ccc(C(=O)c2ccccc2)cc1", "count": 0.5}]


def _perceived(smiles: str, hydrogens=None) -> list[dict]:
    """molecules_of on one RDKit conformer of smiles in a 30 Å P1 cell, its H replaced by
    hydrogens(xyz, mol) -> (positions Å, occupancies) when given."""
    from rdkit import Chem
    from xdxd.molecule.conformer import embed
    from xdxd.molecule.perceive import molecules_of
    mol = embed(Chem.MolFromSmiles(smiles), 1)
    xyz = mol.GetConformer().GetPositions()
    els = [a.GetSymbol() for a in mol.GetAtoms()]
    occ = np.ones(len(els))
    if hydrogens is not None:
        heavy = [k for k, e in enumerate(els) if e != "H"]
        h_xyz, h_occ = hydrogens(xyz, mol)
        xyz, occ = np.vstack([xyz[heavy], h_xyz]), np.concatenate([occ[heavy], h_occ])
        els = [els[k] for k in heavy] + ["H"] * len(h_xyz)
    cell = make_cell([30.0, 30.0, 30.0, 90, 90, 90])
    return molecules_of(els, xyz / 30.0 + 0.5, cell, symops(find_spacegroup("P 1")), occ)


def test_perception_of_nitro_groups_ions_and_disordered_methyl_hydrogens():
    from rdkit import Chem
    two_nitro = _perceived("O=C1CSC(c2ccc([N+](=O)[O-])cc2)N1Cc1ccc([N+](=O)[O-])cc1")[0]["smiles"]
    assert Chem.MolToSmiles(Chem.MolFromSmiles(two_nitro), isomericSmiles=False) == \
        "O=C1CSC(c2ccc([N+](=O)[O-])cc2)N1Cc1ccc([N+](=O)[O-])cc1"  # its stereocentre read off the 3-D
    from xdxd.molecule.perceive import molecules_of
    octahedron = np.vstack([np.zeros(3), 1.6 * np.eye(3), -1.6 * np.eye(3)]) / 20.0 + 0.5
    assert molecules_of(["P"] + ["F"] * 6, octahedron, make_cell([20.0, 20.0, 20.0, 90, 90, 90]),
                        symops(find_spacegroup("P 1"))) == [{"smiles": "F[P-](F)(F)(F)(F)F", "count": 1.0}]

    def six_half_h(xyz, mol):
        """The methyl's three H turned 60° about the C-C bond as a second set, all at 0.5."""
        c, n = 0, 1  # C of the methyl, its neighbour
        hs = [a.GetIdx() for a in mol.GetAtomWithIdx(c).GetNeighbors() if a.GetSymbol() == "H"]
        k = (xyz[c] - xyz[n]) / np.linalg.norm(xyz[c] - xyz[n])
        v = xyz[hs] - xyz[c]  # Rodrigues: v cos + (k x v) sin + k (k.v)(1 - cos), 60°
        turned = xyz[c] + v * 0.5 + np.cross(k, v) * np.sqrt(0.75) + np.outer(v @ k, k) * 0.5
        rest = [k for k, a in enumerate(mol.GetAtoms()) if a.GetSymbol() == "H" and k not in hs]
        return np.vstack([xyz[hs], turned, xyz[rest]]), np.r_[np.full(6, 0.5), np.ones(len(rest))]
    assert _perceived("CC(=O)Nc1ccccc1", six_half_h) == [{"smiles": "CC(=O)Nc1ccccc1", "count": 1.0}]

    def three_full_oh(xyz, mol):
        """The hydroxyl H written at three sites 120° apart, each at occupancy 1 (2001826)."""
        o = next(a.GetIdx() for a in mol.GetAtoms() if a.GetSymbol() == "O")
        c = next(a.GetIdx() for a in mol.GetAtomWithIdx(o).GetNeighbors() if a.GetSymbol() == "C")
        h = next(a.GetIdx() for a in mol.GetAtomWithIdx(o).GetNeighbors() if a.GetSymbol() == "H")
        k = (xyz[o] - xyz[c]) / np.linalg.norm(xyz[o] - xyz[c])
        v = xyz[h] - xyz[o]
        turn = lambda t: xyz[o] + v * np.cos(t) + np.cross(k, v) * np.sin(t) + k * (v @ k) * (1 - np.cos(t))  # noqa: E731
        others = [a.GetIdx() for a in mol.GetAtoms() if a.GetSymbol() == "H" and a.GetIdx() != h]
        return np.vstack([xyz[others], turn(0.0), turn(2.1), turn(-2.1)]), np.ones(len(others) + 3)
    assert _perceived("OC(C)c1ccccc1", three_full_oh)[0]["smiles"] in ("CC(O)c1ccccc1", "C[C@H](O)c1ccccc1",
                                                                     "C[C@@H](O)c1ccccc1")


def test_the_molecule_search_solves_a_small_structure_at_2_angstrom():
    """1100656 (P1, 13 non-H atoms) from 2.0 Å data, the molecule named: sample (auto picks
    the molecule method) -> refine (no swaps: the molecule fixes the labels) -> solved."""
    from xdxd.refine import refine_record
    from xdxd.score import score_record
    from xdxd.solve import sample_record
    rec = _problem(str(ROOT / "examples" / "1100656.cif"))
    lines = []
    out = sample_record(rec, method="auto", samples=4, seed=0, rounds=4, progress=lines.append)
    assert out["history"][-1]["method"] == "molecule" and out["candidates"][0]["method"] == "molecule"
    assert len(lines) == out["history"][-1]["rounds"] and lines[0].startswith(f"{rec['id']}: round 1: best score")
    assert any(a.get("riding") for a in out["candidates"][0]["atoms"])
    solved = score_record(refine_record(out), candidates=False)
    assert solved["solution"]["swaps"] == [] and solved["solution"]["r1"] < 0.05
    assert solved["metrics"]["matched_strict"]
    # the molecule's own bonds and 1,3 distances restrained (d_min 2 Å), kept for the .res
    from xdxd.formats.write_res import res_text
    restraints = solved["solution"]["restraints"]
    assert sum(r[4] == "DFIX" for r in restraints) == 14  # 13 heavy atoms, 2 rings: 14 bonds
    assert all(0.9 < r[2] < 2.8 for r in restraints) and any(r[4] == "DANG" for r in restraints)
    res = res_text(solved)
    assert res.count("\nDFIX ") == 14 and "\nDANG " in res


def test_prep_molecule_errors_are_records_and_the_stream_goes_on(tmp_path):
    """A molecule that does not fit one input's composition fails that record only; a bad
    SMILES fails every record with a one-line error naming it; exit code 1."""
    from xdxd.cli.prep import app
    runner = CliRunner()
    good, other = str(ROOT / "examples" / "1100656.cif"), str(DATA / "2205750.cif")
    res = runner.invoke(app, [good, other, "--dmin", "2.0", "--molecule", SMILES_1100656, "-q"])
    assert res.exit_code == 1
    recs = [json.loads(line) for line in res.stdout.splitlines()]
    assert [bool(r.get("error")) for r in recs] == [False, True]
    assert recs[0]["molecules"] == [{"smiles": SMILES_1100656, "count": 1.0}]
    assert "the molecules put C40 N4 O4 S4 in the cell" in recs[1]["error"] and other in recs[1]["error"]
    res = runner.invoke(app, [good, "--dmin", "2.0", "--molecule", "C1CC(", "-q"])
    assert res.exit_code == 1
    rec = json.loads(res.stdout.splitlines()[0])
    assert "--molecule 'C1CC(': not a SMILES" in rec["error"] and "\n" not in rec["error"]


def test_molecules_alone_give_the_composition(tmp_path):
    """With no formula, model or cell contents, --molecule is the composition."""
    import shutil
    from xdxd.prep import PrepOptions, prepare
    src = tmp_path / "alanine.hkl"  # alone: no companion model beside it
    shutil.copy(ROOT / "tests" / "data" / "measured" / "l-alanine" / "iam.hkl", src)
    recs = list(prepare([str(src)], PrepOptions(d_min_A=2.0, data="measured",
                                                cell=[6.03, 12.34, 5.79, 90, 90, 90],
                                                spacegroup="P 21 21 21",
                                                molecules=("C[C@H]([NH3+])C(=O)[O-]",))))
    assert not recs[0].get("error"), recs[0].get("error")
    assert recs[0]["composition"] == {"C": 3, "N": 1, "O": 2} and recs[0]["hydrogens"] == 7


def test_a_molecule_the_wrong_way_round_is_turned_by_a_relabelling():
    """Morpholinium's O and N swapped by a graph relabelling: the particle turned by it
    puts each atom where its partner was (the chair maps onto itself within 0.1 Å);
    benzene has no relabelling; quaternions and rotation matrices convert both ways."""
    from xdxd.molecule.tree import matrix_quaternion, quaternion_matrix
    from xdxd.solve.molecule import MoleculeConfig, MoleculeSearch
    q = torch.nn.functional.normalize(torch.randn(50, 4, generator=torch.Generator().manual_seed(0)), dim=-1)
    assert torch.allclose(quaternion_matrix(matrix_quaternion(quaternion_matrix(q))), quaternion_matrix(q),
                          atol=1e-5)
    assert molecule_model("c1ccccc1").relabellings.shape == (0, 6)
    m = molecule_model("C1COCC[NH2+]1")
    assert len(m.relabellings) >= 2
    o, n = m.elements.index("O"), m.elements.index("N")
    which = [k for k, r in enumerate(m.relabellings) if r[o] == n and r[n] == o]
    assert which and which[0] < 2  # one of the two closest puts O where N was and N where O was
    swap = m.relabellings[which[0]]
    cell = make_cell([13.0, 14.0, 15.0, 90, 100, 90])
    hkl = np.array([[h, k, l] for h in range(3) for k in range(-2, 3) for l in range(-2, 3)][1:])
    data = DataSet(cell, find_spacegroup("P 1 21/c 1"), hkl, np.ones(len(hkl)), np.ones(len(hkl)))
    s = MoleculeSearch(data, [(m, 1.0)], MoleculeConfig())
    p = s.random(5, torch.Generator().manual_seed(0))
    turned = s.relabelled(p)
    assert len(turned.lineage) == 5 * len(m.relabellings)
    heavy = np.nonzero(m.heavy)[0]
    before = (s.frac(p) @ s.objective.orth.T)[:, heavy]
    mine = torch.arange(5 * which[0], 5 * which[0] + 5)
    after = (s.frac(turned.take(mine)) @ s.objective.orth.T)[:, heavy]
    assert (after - before[:, swap]).norm(dim=-1).max() < 0.1
    assert (turned.lineage[mine] == p.lineage).all()
