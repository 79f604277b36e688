"""The dual-space sampler (xdxd.solve.dualspace) and xdxd-sample."""
import json

import pytest
from typer.testing import CliRunner

from xdxd import records
from xdxd.cli.sample import app
from xdxd.prep import prepare_from_model_cif
from xdxd.score import reference_cell, score_structure
from xdxd.solve import METHODS, sample_record

FAST = dict(trials=16, batch=16, cycles=10, final_cycles=2, refine_cycles=1, stop_r1=0)


def _problem(data_dir, cod_id, d_min=1.0):
    return prepare_from_model_cif(str(data_dir / "cod" / f"{cod_id}.cif"), d_min=d_min)[0]


def _blind(structure):
    """Every atom as C: positions only (C/N/O labels are xdxd-refine's job)."""
    return dict(structure, atoms=[dict(a, element="C") for a in structure["atoms"]
                                  if a["element"] not in ("H", "D")])


@pytest.mark.parametrize("cod_id", [
    "2000724",                                        # P 21/c, Z' = 1/2, one S
    pytest.param("4021477", marks=pytest.mark.slow),  # P 1, 12 atoms
])
def test_solves_small_structures_at_1A(data_dir, cod_id):
    rec = _problem(data_dir, cod_id)
    out = sample_record(rec, samples=3, seed=0, trials=32, batch=32)
    cands = out["candidates"]
    assert 1 <= len(cands) <= 3
    assert cands == sorted(cands, key=lambda c: c["r1"]), "best first"
    best = cands[0]
    assert best["method"] == "dualspace" and best["r1"] < 0.15
    assert records.composition_of(a["element"] for a in best["atoms"]) == records.composition_of(
        records.composition_elements(rec["composition"]))
    # StructureMatcher (loose) on positions, the reference's atoms all C as well
    blind = dict(rec, reference=_blind(rec["reference"]))
    m = score_structure(_blind(best), reference_cell(blind), blind, strict=False)
    assert m["matched_loose"] and m["rmsd_A"] < 0.1, f"best candidate does not match: {m}"


def test_deterministic_under_seed(data_dir):
    rec = _problem(data_dir, "2203315", 1.5)
    a = sample_record(rec, samples=2, seed=7, **FAST)["candidates"]
    b = sample_record(rec, samples=2, seed=7, **FAST)["candidates"]
    assert json.dumps(a) == json.dumps(b)
    c = sample_record(rec, samples=2, seed=8, **FAST)["candidates"]
    assert json.dumps(a) != json.dumps(c)


def test_time_budget_stops_after_one_batch(data_dir):
    rec = _problem(data_dir, "2203315", 1.5)
    out = sample_record(rec, samples=1, seed=0, time_budget_s=0.0, trials=64, batch=8, cycles=4,
                        final_cycles=1)
    info = out["history"][-1]
    assert info["stage"] == "sample" and info["trials"] == 8 and info["stopped"] == "time budget"


def test_bad_method_and_records(data_dir):
    rec = _problem(data_dir, "2203315", 1.5)
    with pytest.raises(ValueError, match="known: .*dualspace"):
        sample_record(rec, method="magic")
    assert "dualspace" in METHODS
    with pytest.raises(ValueError, match="unknown dualspace option"):
        sample_record(rec, cylces=3)
    empty = dict(rec, reflections={"h": [], "k": [], "l": [], "F": [], "sigma": []})
    with pytest.raises(records.RecordError, match="no reflections"):
        sample_record(empty)
    no_comp = {k: v for k, v in rec.items() if k != "composition"}
    with pytest.raises(records.RecordError, match="composition"):
        sample_record(no_comp)


def test_cli_error_records_and_exit_code(data_dir, tmp_path):
    rec = _problem(data_dir, "2203315", 1.5)
    bad = dict(rec, id="empty", reflections={"h": [], "k": [], "l": [], "F": [], "sigma": []})
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in (rec, bad, "not a record")).replace('"not a record"', "{oops") + "\n")
    out = tmp_path / "out.jsonl"
    res = CliRunner().invoke(app, [str(src), "-o", str(out), "-m", "dualspace", "-n", "1", "--trials", "8", "--cycles", "4",
                                   "--seed", "1", "--device", "cpu", "--quiet"])
    assert res.exit_code == 1, res.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 3
    assert not lines[0].get("error") and len(lines[0]["candidates"]) == 1
    assert "no reflections" in lines[1]["error"]
    assert lines[2]["error"]
    res = CliRunner().invoke(app, [str(src), "--method", "magic"])
    assert res.exit_code == 2
