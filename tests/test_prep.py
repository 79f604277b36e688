"""xdxd-prep: simulation against gemmi, measured records, overrides, bad input, the CLI."""
import json
from pathlib import Path
import shutil

import gemmi
import numpy as np
import pytest
from typer.testing import CliRunner

from xdxd.cli.prep import app
from xdxd.crystal.symmetry import systematically_absent
from xdxd.formats.merge import asu_indices
from xdxd.prep import PrepOptions, prepare, prepare_from_model_cif
from xdxd.records import reflections_to_arrays

runner = CliRunner()


def run_cli(*args, input=None):
    """(exit code, records) of `xdxd-prep args`."""
    res = runner.invoke(app, [str(a) for a in args], input=input)
    recs = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    return res.exit_code, recs


# ---------------------------------------------------------------------------
# simulation

@pytest.mark.parametrize("cod_id", ["1000007", "2205750", "2016470", "2242045", "5910097"])
def test_simulated_amplitudes_equal_gemmi(data_dir, cod_id):
    """C 2/c, P n a 21 (aniso, H), P 41 (aniso), P -1 (aniso), R -3:R (special position)."""
    path = str(data_dir / "cod" / f"{cod_id}.cif")
    (rec,) = prepare_from_model_cif(path, d_min=1.2)
    hkl, F, _ = reflections_to_arrays(rec["reflections"])
    ss = gemmi.read_small_structure(path)
    for site in ss.sites:  # xdxd gives sites without any ADP Uiso = 0.025 Å² (noted in metrics)
        if site.u_iso == 0 and not site.aniso.nonzero():
            site.u_iso = 0.025
    ss.change_occupancies_to_crystallographic()
    ss.setup_cell_images()
    calc = gemmi.StructureFactorCalculatorX(ss.cell)
    Fg = np.array([abs(calc.calculate_sf_from_small_structure(ss, h)) for h in hkl.tolist()])
    assert np.all(np.abs(F - Fg) <= 1e-4 * Fg + 1e-4)  # 1e-4 relative, + rounding to 1e-4


def test_simulated_reflection_set(data_dir):
    (rec,) = prepare_from_model_cif(str(data_dir / "cod/2205750.cif"), d_min=2.0)
    cell = gemmi.UnitCell(*rec["cell"])
    sg = gemmi.find_spacegroup_by_ops(gemmi.symops_from_hall(rec["spacegroup"]["hall"]))
    hkl, F, sigma = reflections_to_arrays(rec["reflections"])
    assert len(np.unique(asu_indices(hkl, sg), axis=0)) == len(hkl)  # unique incl. Friedel
    assert not systematically_absent(hkl, sg).any()
    assert 2.0 <= rec["d_min_A"] < 2.1
    assert rec["metrics"]["n_reflections"] == len(hkl) and np.all(sigma > 0)
    assert rec["composition"] == {"C": 5, "N": 1, "O": 3, "S": 1} and rec["hydrogens"] == 3
    ref = rec["reference"]["atoms"]
    assert sum(a["element"] == "H" for a in ref) == 3 and len(ref) == 13
    assert rec["wavelength_A"] == pytest.approx(0.71073)
    assert rec["history"][-1]["stage"] == "prep"


def test_simulation_options(data_dir):
    path = str(data_dir / "cod/2205750.cif")
    base = prepare_from_model_cif(path, d_min=2.0)[0]["reflections"]["F"]
    no_h = prepare_from_model_cif(path, d_min=2.0, hydrogens_in_data=False)[0]
    assert no_h["reference"]["atoms"][-1]["element"] == "H"  # reference keeps H
    assert not np.allclose(base, no_h["reflections"]["F"])
    b = prepare_from_model_cif(path, d_min=2.0, biso=3.0)[0]["reflections"]["F"]
    assert not np.allclose(base, b)
    n1 = prepare_from_model_cif(path, d_min=2.0, noise=0.03, seed=1)[0]["reflections"]
    n1b = prepare_from_model_cif(path, d_min=2.0, noise=0.03, seed=1)[0]["reflections"]
    n2 = prepare_from_model_cif(path, d_min=2.0, noise=0.03, seed=2)[0]["reflections"]
    assert n1["F"] == n1b["F"] and n1["F"] != n2["F"]
    rel = np.abs(np.array(n1["F"]) - base) / np.array(base)
    assert 0.01 < np.median(rel) < 0.05  # ~0.67 x 3 %


# ---------------------------------------------------------------------------
# measured data

def test_measured_folder_pairs_hkl_with_its_model(data_dir):
    code, recs = run_cli(data_dir / "measured/l-alanine", "--dmin", "0", "-q")
    assert code == 0 and len(recs) == 1
    rec = recs[0]
    assert rec["id"] == "iam" and rec["source"][1].endswith("iam.cif")
    assert rec["spacegroup"]["hm"] == "P 21 21 21" and rec["composition"] == {"C": 3, "N": 1, "O": 2}
    assert rec["hydrogens"] == 7 and len(rec["reference"]["atoms"]) == 13
    assert rec["metrics"]["n_reflections"] == 2519 and rec["metrics"]["data"] == "measured_intensities"
    assert rec["d_min_A"] == pytest.approx(0.463, abs=1e-3)
    assert len(rec["reflections"]["I"]) == 2519


def test_simulate_from_the_model_of_an_hkl(data_dir, tmp_path):
    # --data simulate with an .hkl: simulated from its companion model, not its reflections
    code, recs = run_cli(data_dir / "measured/l-alanine", "--dmin", "2.0", "--data", "simulate", "-q")
    assert code == 0 and recs[0]["metrics"]["data"] == "simulated"
    assert recs[0]["source"][1].endswith("iam.cif") and recs[0]["composition"] == {"C": 3, "N": 1, "O": 2}
    shutil.copy(data_dir / "measured/l-alanine/iam.hkl", tmp_path / "lone.hkl")  # no model beside it
    code, recs = run_cli(tmp_path / "lone.hkl", "--data", "simulate", "-q")
    assert code != 0 and "needs a model" in recs[0]["error"]


def test_measured_default_dmin_and_res_companion(data_dir):
    code, recs = run_cli(data_dir / "measured/ntd51a/P21c.hkl", "-q")
    assert code == 0
    (rec,) = recs
    assert rec["source"][1].endswith("p21c.res")
    assert rec["d_min_A"] >= 2.0 and rec["metrics"]["n_absent"] > 0
    assert rec["metrics"]["completeness"] > 0.95
    assert rec["composition"] == {"C": 26, "N": 1, "O": 3, "Si": 1} and rec["hydrogens"] == 33


def test_embedded_and_loop_cifs(data_dir):
    recs = list(prepare([str(data_dir / "cod/2242045.cif"), str(data_dir / "cod/2019572.cif")],
                        PrepOptions(d_min_A=1.0)))
    assert [r.get("error") for r in recs] == [None, None]
    emb, loop = recs
    assert emb["metrics"]["data"] == "measured_intensities" and emb["metrics"]["rint"] < 0.05
    assert emb["spacegroup"]["hm"] == "P -1" and emb["reference"]["atoms"]
    assert loop["spacegroup"]["hm"] == "R -3:H" and loop["metrics"]["sigma_estimated"]
    # the same file, simulated on request
    (sim,) = prepare([str(data_dir / "cod/2242045.cif")], PrepOptions(d_min_A=1.0, data="simulate"))
    assert sim["metrics"]["data"] == "simulated"


def test_tonto_with_its_cif(data_dir):
    code, recs = run_cli(data_dir / "measured/triphenylsilane", "--dmin", "1.0", "-q")
    assert code == 0
    (rec,) = recs
    assert rec["metrics"]["data"] == "measured_amplitudes" and "I" not in rec["reflections"]
    assert rec["composition"] == {"C": 18, "Si": 1}


def test_folders_give_unique_ids(data_dir):
    code, recs = run_cli(data_dir / "measured/l-alanine", data_dir / "measured/xylitol", "-q")
    assert code == 0
    assert [r["id"] for r in recs] == ["l-alanine/iam", "xylitol/iam"]


def test_bare_hkl_needs_and_takes_overrides(tmp_path, data_dir):
    hkl = tmp_path / "alone.hkl"
    shutil.copy(data_dir / "measured/ntd51a/P21c.hkl", hkl)
    code, recs = run_cli(hkl, "-q")
    assert code == 1 and "no unit cell" in recs[0]["error"] and str(hkl) in recs[0]["error"]
    code, recs = run_cli(hkl, "--cell", "10.6456 11.0330 19.9214 90 98.938 90",
                         "--spacegroup", "P 21/c", "--formula", "C26H33NO3Si", "-q")
    assert code == 0
    (rec,) = recs
    assert rec["spacegroup"]["number"] == 14 and rec["composition"] == {"C": 26, "N": 1, "O": 3, "Si": 1}
    assert rec["hydrogens"] == 33 and "reference" not in rec
    # --model (alias --ins) gives the reference
    code, recs = run_cli(hkl, "--ins", data_dir / "measured/ntd51a/p21c.res", "-q")
    assert code == 0 and len(recs[0]["reference"]["atoms"]) == 64


def test_ins_without_atoms_gives_composition_from_unit(tmp_path, data_dir):
    res = (data_dir / "measured/ntd51a/p21c.res").read_text().splitlines()
    head = [line for line in res[:res.index("FVAR       0.14585")]] + ["HKLF 4", "END"]
    (tmp_path / "x.ins").write_text("\n".join(head) + "\n")
    shutil.copy(data_dir / "measured/ntd51a/P21c.hkl", tmp_path / "x.hkl")
    code, recs = run_cli(tmp_path / "x.hkl", "-q")
    assert code == 0
    (rec,) = recs
    assert rec["composition"] == {"C": 26, "N": 1, "O": 3, "Si": 1} and rec["hydrogens"] == 33
    assert "reference" not in rec and rec["source"][1].endswith("x.ins")


def test_many_blocks_many_records(tmp_path, data_dir):
    text = (data_dir / "cod/1000007.cif").read_text()
    (tmp_path / "two.cif").write_text(text + "\n" + text.replace("data_1000007", "data_copy"))
    code, recs = run_cli(tmp_path / "two.cif", "-q")
    assert code == 0 and [r["id"] for r in recs] == ["1000007", "copy"]


def test_formula_override(tmp_path, data_dir):
    code, recs = run_cli(data_dir / "cod/1000007.cif", "--formula", "CaMgSi2O6", "-q")
    assert code == 0 and recs[0]["composition"] == {"Ca": 1, "Mg": 1, "O": 6, "Si": 2}


def test_mtz_input(tmp_path, data_dir):
    (src,) = list(prepare([str(data_dir / "measured/l-alanine/iam.hkl")], PrepOptions(d_min_A=1.0)))
    hkl, F, sigma = reflections_to_arrays(src["reflections"])
    mtz = gemmi.Mtz(with_base=True)
    mtz.spacegroup = gemmi.find_spacegroup_by_name(src["spacegroup"]["hm"])
    mtz.set_cell_for_all(gemmi.UnitCell(*src["cell"]))
    mtz.add_dataset("ala").wavelength = 0.71073
    mtz.add_column("FP", "F")
    mtz.add_column("SIGFP", "Q")
    mtz.set_data(np.column_stack([hkl, F, sigma]))
    path = tmp_path / "ala.mtz"
    mtz.write_to_file(str(path))
    code, recs = run_cli(path, "--dmin", "1.0", "--model", data_dir / "measured/l-alanine/iam.cif", "-q")
    assert code == 0
    (rec,) = recs
    assert rec["metrics"]["data"] == "measured_amplitudes" and rec["composition"] == src["composition"]
    assert np.allclose(rec["reflections"]["F"], src["reflections"]["F"], atol=2e-4)
    assert len(rec["reference"]["atoms"]) == 13


def test_stdin_and_atomic_output(tmp_path, data_dir):
    out = tmp_path / "p.jsonl"
    text = (data_dir / "cod/1000007.cif").read_text()
    code, _ = run_cli("-", "-o", out, "-q", input=text)
    assert code == 0
    (rec,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert rec["id"] == "1000007" and rec["source"] == "-"
    assert [p.name for p in tmp_path.iterdir()] == ["p.jsonl"]  # no temporary file left


# ---------------------------------------------------------------------------
# bad input: one error record naming the file, the others go on, exit code 1

def _cif_with(data_dir, old, new):
    text = (data_dir / "cod/1000007.cif").read_text()
    assert old in text
    return text.replace(old, new)


BAD = {
    "garbage.cif": lambda d: "\x89PNG this is not a CIF at all ;;; {",
    "truncated.cif": lambda d: (d / "cod/1000007.cif").read_text()[:1200] + "\n;\nunterminated",
    "truncated.hkl": lambda d: (d / "measured/l-alanine/iam.hkl").read_text()[:5009],
    "unknown_sg.cif": lambda d: _cif_with(d, "_space_group_IT_number           15\n"
                                             "_symmetry_space_group_name_Hall  '-C 2yc'\n"
                                             "_symmetry_space_group_name_H-M   'C 1 2/c 1'",
                                          "_symmetry_space_group_name_H-M   'P 7 7 7'"),
    "no_cell.cif": lambda d: _cif_with(d, "_cell_length_a                   9.73970\n", ""),
    "nan.hkl": lambda d: "   1   0   0     nan    1.00\n   0   1   0     nan    1.00\n   0   0   0    0.00    0.00\n",
    "partly_nan.hkl": lambda d: "   1   0   0    4.00    1.00\n   0   1   0    5.00     nan\n",
    "empty.hkl": lambda d: "",
    "only_end.hkl": lambda d: "   0   0   0    0.00    0.00\n",
    "unknown_element.cif": lambda d: _cif_with(d, "Ca Ca 0.0", "Ca Qz 0.0"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_gives_error_record_and_exit_1(tmp_path, data_dir, name):
    bad = tmp_path / name
    bad.write_text(BAD[name](data_dir))
    args = [data_dir / "cod/1000007.cif", bad, data_dir / "cod/5910097.cif"]
    if name.endswith(".hkl"):  # reflections need a model; give cell, group and formula
        args += ["--cell", "5.0 6.0 7.0 90 90 90", "--spacegroup", "P 21 21 21", "--formula", "C3NO2"]
    code, recs = run_cli(*args, "-q")
    assert code == 1
    assert len(recs) == 3
    good = [r for r in recs if not r.get("error")]
    errors = [r for r in recs if r.get("error")]
    assert len(errors) == 1 and len(good) == 2
    msg = errors[0]["error"]
    assert str(bad) in msg and "\n" not in msg
    if name.startswith("truncated"):
        assert f"{bad}:" in msg  # with a line number


def test_bad_input_messages(tmp_path, data_dir):
    expect = {"unknown_sg.cif": "unknown H-M symbol 'P 7 7 7'", "no_cell.cif": "no cell",
              "nan.hkl": "NaN", "partly_nan.hkl": "1 reflection(s) with a NaN", "empty.hkl": "empty file", "only_end.hkl": "no reflections",
              "unknown_element.cif": "unknown element 'Qz'"}
    for name, words in expect.items():
        p = tmp_path / name
        p.write_text(BAD[name](data_dir))
        opts = PrepOptions(cell=[5, 6, 7, 90, 90, 90], spacegroup="P 21 21 21", formula="C3NO2") \
            if name.endswith(".hkl") else PrepOptions()
        (rec,) = list(prepare([str(p)], opts))
        assert words.lower() in rec["error"].lower(), rec["error"]


def test_missing_file_and_usage_error(tmp_path):
    code, recs = run_cli(tmp_path / "nope.cif", "-q")
    assert code == 1 and "no such file" in recs[0]["error"]
    res = runner.invoke(app, ["--cell", "1 2 3", "x.cif"])
    assert res.exit_code == 2
    res = runner.invoke(app, ["--spacegroup", "P 7 7", "x.cif"])
    assert res.exit_code == 2
    code, recs = run_cli(tmp_path / "nope.cif", "--spacegroup", "P2(1)/c", "-q")
    assert code == 1  # P2(1)/c is understood; the file is what is missing


def test_uij_in_units_of_1e4_are_rescaled(tmp_path):
    """2000642.cif writes U_ij in units of 1e-4 Å² (U11 = 457) beside U_iso_or_equiv in Å²
    (0.0417): read as such, with a note; without the Ueq column to vouch for the units the
    same numbers are refused, never simulated (|F| ~ 1e179)."""
    from xdxd.prep import PrepOptions, prepare
    cif = Path(__file__).parent / "data" / "cod" / "2000642.cif"
    rec = next(iter(prepare([str(cif)], PrepOptions(d_min_A=1.0, data="simulate"))))
    assert "error" not in rec, rec.get("error")
    assert any("divided by 10000" in n for n in rec["metrics"]["notes"])
    c1 = next(a for a in rec["reference"]["atoms"] if a["label"] == "C(1)")
    assert c1["uiso"] == pytest.approx(0.0417, abs=2e-3)
    bad = tmp_path / "no-ueq.cif"
    bad.write_text("\n".join(_without_ueq(cif.read_text().splitlines())) + "\n")
    recs = list(prepare([str(bad)], PrepOptions(d_min_A=1.0, data="simulate")))
    assert recs and "implausible displacement" in recs[0]["error"]


def _without_ueq(lines: list[str]) -> list[str]:
    """The atom_site loop's U_iso_or_equiv column (5th) of every Uani site set to '?'."""
    out = []
    for ln in lines:
        f = ln.split()
        if len(f) == 8 and f[5] == "Uani":
            f[4] = "?"
            ln = " ".join(f)
        out.append(ln)
    return out
