"""xdxd-score: pymatgen StructureMatcher on real COD structures, and the CLI's error handling.

Structures: 2202108 (P2₁/c, 13 non-H), 2203315 (P2₁/m, 12 non-H, atoms on mirrors),
2205750 (Pna2₁, 10 non-H, polar along c).
"""
from __future__ import annotations

import copy
import json

import gemmi
import numpy as np
import pytest
from typer.testing import CliRunner

from xdxd import records
from xdxd.crystal import symmetry
from xdxd.formats.cif_model import read_model_cif
from xdxd.score import LOOSE, STRICT, ScoreError, p1_cell, score_record, summarize


def cod_record(data_dir, cod_id: str) -> dict:
    """A record whose reference and solution are both the CIF's own structure."""
    model = read_model_cif(str(data_dir / "cod" / f"{cod_id}.cif"))[0]
    atoms = records.arrays_to_atoms(model.atoms)
    return {"schema": records.SCHEMA, "id": cod_id, "cell": model.cell,
            "spacegroup": symmetry.spacegroup_to_record(model.spacegroup),
            "reference": {"atoms": atoms},
            "solution": {"atoms": copy.deepcopy(atoms), "r1": 0.031}}


def heavy(atoms: list[dict]) -> list[dict]:
    return [a for a in atoms if a["element"] not in ("H", "D")]


@pytest.mark.parametrize("cod_id", ["2202108", "2203315", "2205750"])
def test_reference_matches_itself(data_dir, cod_id):
    m = score_record(cod_record(data_dir, cod_id))["metrics"]
    assert m["matched_loose"] and m["matched_strict"]
    assert m["rms_loose"] == pytest.approx(0, abs=1e-6) and m["rmsd_A"] == pytest.approx(0, abs=1e-4)
    assert m["r1"] == 0.031
    assert m["n_atoms"] == len(heavy(cod_record(data_dir, cod_id)["reference"]["atoms"]))


def test_special_positions_are_not_duplicated(data_dir):
    rec = cod_record(data_dir, "2203315")  # P2₁/m, Z=2: the molecule lies on the mirror
    p1 = p1_cell(rec["reference"]["atoms"], rec["cell"], rec["spacegroup"])
    assert len(p1.structure) == 2 * p1.n_asu  # 2 images per site, not 4


@pytest.mark.parametrize("cod_id", ["2202108", "2205750"])
def test_allowed_origin_shift_still_matches(data_dir, cod_id):
    rec = cod_record(data_dir, cod_id)
    ops = symmetry.symops(symmetry.spacegroup_from_record(rec["spacegroup"]))
    shifts, polar = symmetry.origin_shifts(ops)
    shift = np.array([0.0, 0.5, 0.0])  # allowed in P2₁/c and in Pna2₁
    assert np.any(np.all(np.isclose(shifts, shift), axis=1))
    if len(polar):  # Pna2₁: any shift along the polar axis c as well
        shift = shift + 0.37 * polar[0] / np.abs(polar[0]).max()
    for a in rec["solution"]["atoms"]:
        a["xyz"] = list(np.mod(np.array(a["xyz"]) + shift, 1.0))
    m = score_record(rec)["metrics"]
    assert m["matched_loose"] and m["matched_strict"]
    assert m["rmsd_A"] == pytest.approx(0, abs=1e-3)


def test_permuted_atom_order_matches(data_dir):
    rec = cod_record(data_dir, "2202108")
    np.random.default_rng(1).shuffle(rec["solution"]["atoms"])
    m = score_record(rec)["metrics"]
    assert m["matched_strict"] and m["rmsd_A"] == pytest.approx(0, abs=1e-4)


def test_small_noise_gives_rmsd_in_angstrom(data_dir):
    """Gaussian noise of 0.05 Å per Cartesian axis -> RMS displacement ≈ 0.05·√3 ≈ 0.087 Å."""
    rec = cod_record(data_dir, "2202108")
    cell = symmetry.make_cell(rec["cell"])
    rng = np.random.default_rng(0)
    for a in heavy(rec["solution"]["atoms"]):
        cart = np.array(cell.orthogonalize(gemmi.Fractional(*a["xyz"])).tolist())
        cart += rng.normal(0, 0.05, 3)
        a["xyz"] = cell.fractionalize(gemmi.Position(*cart)).tolist()
    m = score_record(rec)["metrics"]
    assert m["matched_strict"]
    assert 0.04 < m["rmsd_A"] < 0.14


def test_one_atom_moved_1p5_A_does_not_match(data_dir):
    rec = cod_record(data_dir, "2202108")
    a = heavy(rec["solution"]["atoms"])[3]
    a["xyz"][0] += 1.5 / rec["cell"][0]  # 1.5 Å along a
    m = score_record(rec)["metrics"]
    assert not m["matched_strict"] and not m["matched_loose"]
    assert m["max_dist_A"] == pytest.approx(1.5, abs=0.05)
    # DiffCSP's criterion (RMS below stol) lets this one pass: the reason we use fit()
    assert m["matched_loose_diffcsp"]


def test_two_atoms_with_swapped_elements_do_not_match_strict(data_dir):
    rec = cod_record(data_dir, "2202108")
    atoms = heavy(rec["solution"]["atoms"])
    i = next(k for k, a in enumerate(atoms) if a["element"] == "C")
    j = next(k for k, a in enumerate(atoms) if a["element"] != "C")
    atoms[i]["element"], atoms[j]["element"] = atoms[j]["element"], atoms[i]["element"]
    m = score_record(rec)["metrics"]
    assert not m["matched_strict"]
    assert m["matched_sites"]  # every site is found; only two labels are wrong


def test_sites_found_needs_every_site(data_dir):
    rec = cod_record(data_dir, "2202108")
    assert score_record(copy.deepcopy(rec))["metrics"]["matched_sites"]
    heavy(rec["solution"]["atoms"])[3]["xyz"][0] += 1.5 / rec["cell"][0]
    assert not score_record(rec)["metrics"]["matched_sites"]


def test_different_elements_do_not_match(data_dir):
    rec = cod_record(data_dir, "2205750")
    for a in heavy(rec["solution"]["atoms"]):
        a["element"] = "C"
    m = score_record(rec)["metrics"]
    assert m["same_composition"] is False
    assert not m["matched_loose"] and m["rms_loose"] is None and m["rmsd_A"] is None


def test_hydrogens_are_ignored(data_dir):
    rec = cod_record(data_dir, "2202108")
    rec["solution"]["atoms"] = heavy(rec["solution"]["atoms"])
    assert score_record(rec)["metrics"]["matched_strict"]


def test_best_candidate(data_dir):
    rec = cod_record(data_dir, "2202108")
    wrong = copy.deepcopy(rec["reference"])
    for a in heavy(wrong["atoms"])[:4]:
        a["xyz"] = [0.1, 0.2, 0.3 + 0.1 * len(a["label"])]
    rec["candidates"] = [wrong, copy.deepcopy(rec["reference"]), {"atoms": []}]
    m = score_record(rec)["metrics"]
    assert m["best_candidate"] == 1 and m["n_candidates_matched_loose"] == 1
    assert m["n_candidates"] == 3 and m["n_candidates_unscored"] == 1
    assert "candidate 2: " in m["candidates_unscored_reason"]


@pytest.mark.parametrize("change, message", [
    (lambda r: r.pop("solution"), "no solution"),
    (lambda r: r.pop("reference"), "no reference"),
    (lambda r: r["solution"].update(atoms=[]), "solution: no non-H atoms"),
    (lambda r: r["reference"].update(atoms=[]), "reference: no non-H atoms"),
    (lambda r: r["solution"]["atoms"][0].update(xyz=[float("nan"), 0, 0]), "non-finite"),
    (lambda r: r.update(spacegroup={"hm": "P 7"}), "space group"),
    (lambda r: r.update(cell=[0, 1, 1, 90, 90, 90]), "cell"),
])
def test_bad_records_raise(data_dir, change, message):
    rec = cod_record(data_dir, "2205750")
    change(rec)
    with pytest.raises(ScoreError, match=message) as err:
        score_record(rec)
    assert str(err.value).startswith("2205750: ")


def test_tolerances_are_the_documented_ones():
    assert LOOSE == {"stol": 0.5, "ltol": 0.3, "angle_tol": 10.0}
    from pymatgen.analysis.structure_matcher import StructureMatcher
    sm = StructureMatcher()
    assert (sm.stol, sm.ltol, sm.angle_tol) == (STRICT["stol"], STRICT["ltol"], STRICT["angle_tol"])


def test_summarize_counts_failures_as_unsolved():
    s = summarize([{"matched_loose": True, "matched_strict": False, "rms_loose": 0.2,
                    "rmsd_A": 0.4, "r1": 0.1}, None], [2.0, 4.0])
    assert s["n"] == 2 and s["n_error"] == 1
    assert s["solved_loose"] == 0.5 and s["solved_strict"] == 0.0
    assert s["mean_rms_loose"] == 0.2 and s["median_seconds"] == 3.0


def test_cli_good_and_bad_records(data_dir, tmp_path):
    from xdxd.cli.score import app
    good = cod_record(data_dir, "2203315")
    good["timing_s"] = {"sample": 2.0, "refine": 1.0}
    no_solution = cod_record(data_dir, "2202108")
    del no_solution["solution"]
    lines = [json.dumps(good), json.dumps(no_solution), "not json at all"]
    summary = tmp_path / "summary.json"
    res = CliRunner().invoke(app, ["-", "--summary", "json", "--summary-out", str(summary)],
                             input="\n".join(lines) + "\n")
    assert res.exit_code == 1, res.output
    out = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert [r.get("id") for r in out][:2] == ["2203315", "2202108"] and len(out) == 3
    assert out[0]["metrics"]["matched_strict"] and not out[0].get("error")
    assert "no solution" in out[1]["error"] and "not a JSON record" in out[2]["error"]
    s = json.loads(summary.read_text())
    assert s["n"] == 3 and s["n_error"] == 2 and s["solved_strict"] == pytest.approx(1 / 3, abs=1e-3)
    assert s["median_seconds"] == 3.0


def test_cli_all_good_exits_0(data_dir):
    from xdxd.cli.score import app
    res = CliRunner().invoke(app, ["--quiet"], input=json.dumps(cod_record(data_dir, "2205750")) + "\n")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.splitlines()[0])["metrics"]["matched_loose"]


def test_error_log_names_the_file_and_line(data_dir, tmp_path):
    """The output record says `<id>: <message>`; the log line on stderr adds where the
    record was read, so a failure in a long concatenated stream can be found."""
    import subprocess
    import sys
    no_solution = cod_record(data_dir, "2202108")
    del no_solution["solution"]
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(cod_record(data_dir, "2203315")) + "\n" + json.dumps(no_solution) + "\n")
    res = subprocess.run([sys.executable, "-m", "xdxd.cli.score", str(src)], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 1
    out = [json.loads(line) for line in res.stdout.splitlines()]
    assert out[1]["error"].startswith("2202108: ")
    assert f"{src}:2: 2202108: " in res.stderr
