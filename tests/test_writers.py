"""CIF and SHELX .res writers: round trips through gemmi, pymatgen and a small .res reader."""
from __future__ import annotations

import warnings
from pathlib import Path

import gemmi
import numpy as np
import pytest

from xdxd.crystal.symmetry import find_spacegroup, spacegroup_to_record
from xdxd.formats.write_cif import cif_text, format_esd
from xdxd.formats.write_res import latt_and_symm, res_text

COD = Path(__file__).parent / "data" / "cod"


def record_of(cod_id: str) -> dict:
    """A record whose solution is the COD model itself (with made-up statistics)."""
    st = gemmi.read_small_structure(str(COD / f"{cod_id}.cif"))
    sg = st.spacegroup or gemmi.find_spacegroup_by_name(st.spacegroup_hm)
    atoms = []
    for n, s in enumerate(st.sites):
        a = {"element": s.element.name, "label": s.label, "xyz": [v % 1.0 for v in s.fract.tolist()],
             "uiso": round(s.u_iso or 0.03, 5), "occ": s.occ}
        if n == 0 and s.aniso.nonzero():
            a["uaniso"] = [s.aniso.u11, s.aniso.u22, s.aniso.u33, s.aniso.u12, s.aniso.u13, s.aniso.u23]
        if n == 1:
            a["xyz_esd"] = [0.0002, 0.00013, 0.0]
        atoms.append(a)
    c = st.cell
    sol = {"atoms": atoms, "r1": 0.0412, "r1_obs": 0.0398, "wr2": 0.1103, "goof": 1.021,
           "n_params": 4 * len(atoms) + 1, "n_reflections": 1234, "n_obs": 1100, "scale": 0.98,
           "source": "reference"}
    return {"schema": "xdxd/1", "id": cod_id, "cell": [c.a, c.b, c.c, c.alpha, c.beta, c.gamma],
            "spacegroup": spacegroup_to_record(sg), "composition": {"C": 1}, "hydrogens": 3,
            "wavelength_A": 0.71073, "d_min_A": 1.0, "solution": sol}


CASES = ["2205750", "2203315", "1515019", "2016470", "2202108", "1010575"]  # Pna21 P21/m I-4c2 P41 P21/c P3_212


def same_site(a, b, cell) -> float:
    d = np.array(a) - np.array(b)
    d -= np.round(d)
    return float(np.linalg.norm(np.array(cell.orth.mat) @ d))


@pytest.mark.parametrize("cod_id", CASES)
def test_cif_round_trip_gemmi(cod_id):
    rec = record_of(cod_id)
    text = cif_text(rec)
    block = gemmi.cif.read_string(text).sole_block()
    assert block.name == cod_id
    st = gemmi.make_small_structure_from_block(block)
    assert st.spacegroup.hall == find_spacegroup(hall=rec["spacegroup"]["hall"]).hall
    assert np.allclose([st.cell.a, st.cell.b, st.cell.c, st.cell.alpha, st.cell.beta, st.cell.gamma],
                       rec["cell"], atol=1e-3)
    atoms = rec["solution"]["atoms"]
    assert [s.element.name for s in st.sites] == [a["element"] for a in atoms]
    for s, a in zip(st.sites, atoms):
        assert same_site(s.fract.tolist(), a["xyz"], st.cell) < 2e-3
        assert abs(s.occ - a["occ"]) < 1e-3
    assert st.sites[0].aniso.nonzero() == bool(atoms[0].get("uaniso"))
    ops = [op.triplet() for op in st.spacegroup.operations()]
    assert block.find_values("_space_group_symop_operation_xyz").str(0) == "x,y,z"
    assert len(block.find_values("_space_group_symop_operation_xyz")) == len(ops)
    for tag in ("_refine_ls_R_factor_all", "_refine_ls_R_factor_gt", "_refine_ls_wR_factor_ref",
                "_refine_ls_goodness_of_fit_ref", "_refine_ls_number_reflns",
                "_refine_ls_number_parameters", "_diffrn_radiation_wavelength",
                "_chemical_formula_sum", "_computing_structure_solution", "_space_group_IT_number"):
        assert block.find_value(tag) is not None, tag
    assert block.find_value("_refine_ls_R_factor_all") == "0.0412"


@pytest.mark.parametrize("cod_id", ["2205750", "1515019", "2203315"])
def test_cif_reads_in_pymatgen(cod_id):
    from pymatgen.io.cif import CifParser
    rec = record_of(cod_id)
    text = cif_text(rec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = CifParser.from_str(text).parse_structures(primitive=False)[0]
    st = gemmi.make_small_structure_from_block(gemmi.cif.read_string(text).sole_block())
    st.change_occupancies_to_crystallographic()
    # non-H atoms per cell (pymatgen merges the half-occupied H sites of 2203315 its own way)
    n_cell = sum(s_.occ * len(st.spacegroup.operations()) for s_ in st.sites if s_.element.name != "H")
    n_pmg = sum(n for el, n in s.composition.items() if el.symbol != "H")
    assert abs(n_pmg - n_cell) < 1e-3 * n_cell + 0.5


def test_format_esd():
    assert format_esd(0.123456, 0.000034) == "0.12346(3)"
    assert format_esd(0.123456, 0.000014) == "0.123456(14)"
    assert format_esd(0.25, 0.0) == "0.250000"
    assert format_esd(0.5, None) == "0.500000"


# ---------------------------------------------------------------------------
# .res

def read_res(text: str) -> dict:
    """A small SHELX .res reader (test only): cell, space group, atoms."""
    out = {"symm": [], "atoms": []}
    lines = text.replace("=\n", " ").splitlines()
    for line in lines:
        w = line.split()
        if not w or w[0] in ("REM", "TITL"):
            continue
        key = w[0].upper()
        if key == "CELL":
            out["cell"] = [float(v) for v in w[2:8]]
        elif key == "LATT":
            out["latt"] = int(w[1])
        elif key == "SYMM":
            out["symm"].append(line.split(None, 1)[1])
        elif key == "SFAC":
            out["sfac"] = w[1:]
        elif key in ("ZERR", "UNIT", "L.S.", "PLAN", "FMAP", "WGHT", "FVAR", "HKLF", "END", "AFIX"):
            continue
        elif len(w) >= 7:
            out["atoms"].append({"label": w[0], "element": out["sfac"][int(w[1]) - 1],
                                 "xyz": [float(v) for v in w[2:5]], "sof": float(w[5]),
                                 "u": [float(v) for v in w[6:]]})
    # space group from LATT and SYMM
    ops = [gemmi.Op("x,y,z")] + [gemmi.Op(s.replace(" ", "").lower()) for s in out["symm"]]
    if out["latt"] > 0:
        ops += [gemmi.Op("-x,-y,-z") * op for op in ops]
    cen = {1: [], 2: ["x+1/2,y+1/2,z+1/2"], 3: ["x+2/3,y+1/3,z+1/3", "x+1/3,y+2/3,z+2/3"],
           4: ["x,y+1/2,z+1/2", "x+1/2,y,z+1/2", "x+1/2,y+1/2,z"], 5: ["x,y+1/2,z+1/2"],
           6: ["x+1/2,y,z+1/2"], 7: ["x+1/2,y+1/2,z"]}[abs(out["latt"])]
    ops += [gemmi.Op(c) * op for c in cen for op in ops]
    out["sg"] = gemmi.find_spacegroup_by_ops(gemmi.GroupOps(ops))
    return out


@pytest.mark.parametrize("cod_id", CASES)
def test_res_round_trip(cod_id):
    rec = record_of(cod_id)
    text = res_text(rec)
    assert text.splitlines()[0].startswith(f"TITL {cod_id}")
    assert "HKLF 4" in text and text.rstrip().endswith("END")
    back = read_res(text)
    sg = find_spacegroup(hall=rec["spacegroup"]["hall"])
    assert back["sg"] is not None and back["sg"].hall == sg.hall, (back["symm"], back["latt"])
    assert np.allclose(back["cell"], rec["cell"], atol=1e-3)
    atoms = rec["solution"]["atoms"]
    assert [a["element"] for a in back["atoms"]] == [a["element"] for a in atoms]
    cell = gemmi.UnitCell(*rec["cell"])
    for b, a in zip(back["atoms"], atoms):
        assert same_site(b["xyz"], a["xyz"], cell) < 1e-4
        assert 10 < b["sof"] <= 11
    assert len(back["atoms"][0]["u"]) == (6 if atoms[0].get("uaniso") else 1)


def test_latt_and_symm():
    assert latt_and_symm(gemmi.find_spacegroup_by_name("P 21/c")) == (1, ["-X, 1/2+Y, 1/2-Z"])
    latt, symm = latt_and_symm(gemmi.find_spacegroup_by_name("C 2/c"))
    assert latt == 7 and len(symm) == 1
    latt, symm = latt_and_symm(gemmi.find_spacegroup_by_name("P 21 21 21"))
    assert latt == -1 and len(symm) == 3
    latt, symm = latt_and_symm(gemmi.find_spacegroup_by_name("I -4 c 2"))
    assert latt == -2 and len(symm) == 7


def test_res_and_cif_mark_riding_hydrogens():
    """Riding H (atoms with `riding`) follow their parent in an AFIX block (aromatic
    C-H here: AFIX 43) with Uiso -1.2/-1.5 in .res, and are flagged calc / R in the CIF."""
    rec = record_of("2205750")
    atoms = rec["solution"]["atoms"]
    cell = gemmi.UnitCell(*rec["cell"])
    heavy = [a for a in atoms if a["element"] != "H"]
    for a in atoms:
        if a["element"] == "H":
            a["riding"] = min(heavy, key=lambda b: same_site(a["xyz"], b["xyz"], cell))["label"]
    riding = [a for a in atoms if a.get("riding")]
    assert riding
    lines = res_text(rec).splitlines()
    assert lines.count("AFIX 43") == len({a["riding"] for a in riding}) == lines.count("AFIX 0")
    for a in riding:  # the H line sits in the AFIX block opened right after its parent
        k = next(n for n, x in enumerate(lines) if x.split()[:1] == [a["label"]])
        opened = max(n for n in range(k) if lines[n] == "AFIX 43")
        head = opened - 2 if lines[opened - 2].endswith("=") else opened - 1  # U_ij continue
        assert lines[head].split()[0] == a["riding"]
        assert float(lines[k].split()[-1]) in (-1.2, -1.5)
    back = read_res(res_text(rec))
    assert sorted(b["label"] for b in back["atoms"]) == sorted(a["label"] for a in atoms)
    text = cif_text(rec)
    assert "_refine_ls_hydrogen_treatment     constr" in text
    doc = gemmi.cif.read_string(text)
    table = doc.sole_block().find("_atom_site_", ["label", "calc_flag", "refinement_flags_posn"])
    flags = {row[0]: (row[1], row[2]) for row in table}
    assert all(flags[a["label"]] == ("calc", "R") for a in riding)
    assert all(flags[a["label"]] == ("d", ".") for a in heavy)


def test_riding_hydrogens_get_shelxl_codes_for_their_geometry_and_the_hkl_is_written(tmp_path):
    """1-phenyl-2-propanol from an RDKit conformer in a 20 Å P1 cell: CH3 AFIX 137, CH
    13, OH 147, CH2 23, aromatic CH 43; xdxd-refine's .hkl writer gives HKLF 4 lines
    that read back as |F|² and end with 0 0 0."""
    from rdkit import Chem
    from xdxd.formats.shelx import read_hkl_text
    from xdxd.formats.write_res import hkl_text
    from xdxd.molecule.conformer import embed
    mol = embed(Chem.MolFromSmiles("CC(O)Cc1ccccc1"), 1)
    xyz = mol.GetConformer().GetPositions() / 20.0 + 0.5
    els = [a.GetSymbol() for a in mol.GetAtoms()]
    labels = [f"{e}{k + 1}" for k, e in enumerate(els)]
    atoms = []
    for k, a in enumerate(mol.GetAtoms()):
        atom = {"element": els[k], "label": labels[k], "xyz": xyz[k].tolist(), "uiso": 0.05, "occ": 1.0}
        if els[k] == "H":
            atom["riding"] = labels[a.GetNeighbors()[0].GetIdx()]
        atoms.append(atom)
    hkl = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]]
    rec = {"id": "t", "cell": [20.0, 20.0, 20.0, 90, 90, 90],
           "spacegroup": {"hall": "P 1", "hm": "P 1", "number": 1},
           "reflections": {"h": [h[0] for h in hkl], "k": [h[1] for h in hkl], "l": [h[2] for h in hkl],
                           "F": [10.0, 20.0, 30.0, 400.0], "sigma": [1.0, 1.0, 1.0, 2.0]},
           "solution": {"atoms": atoms}}
    lines = res_text(rec).splitlines()
    code = {lines[n - 1].split()[0]: int(x.split()[1]) for n, x in enumerate(lines)
            if x.startswith("AFIX") and x != "AFIX 0"}
    assert code == {"C1": 137, "C2": 13, "O3": 147, "C4": 23, "C6": 43, "C7": 43, "C8": 43, "C9": 43, "C10": 43}
    obs = read_hkl_text(hkl_text(rec), "t.hkl")
    assert obs.hkl.tolist() == hkl and not obs.notes
    scale = 99999.0 / 160000.0  # the largest F² would not fit F8.2: all scaled down alike
    assert np.allclose(obs.value, np.array([100.0, 400.0, 900.0, 160000.0]) * scale, atol=0.01)
    assert np.allclose(obs.sigma, np.array([20.0, 40.0, 60.0, 1600.0]) * scale, atol=0.01)
