"""The bench orchestration with stand-in stages: a prep that reads the CIF without
simulating data, a sampler that returns the reference as its candidate, a refine that
keeps the first candidate. Scoring is the real one. No real sampler runs here."""
from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest

from xdxd import records
from xdxd.bench import (BenchConfig, Entry, Pipeline, markdown_table, run_bench,
                        select_structures, summarize_bench)
from xdxd.crystal import symmetry
from xdxd.formats.cif_model import read_model_cif

COD = Path(__file__).parent / "data" / "cod"


def cif_prep(path: str, d_min: float, seed: int) -> dict:
    """Problem record with the CIF as reference (no reflections: the fakes need none)."""
    model = read_model_cif(path)[0]
    return {"schema": records.SCHEMA, "id": Path(path).stem, "cell": model.cell,
            "spacegroup": symmetry.spacegroup_to_record(model.spacegroup), "d_min_A": d_min,
            "reference": {"atoms": records.arrays_to_atoms(model.atoms)}}


def oracle_sample(rec: dict, method: str, samples: int, seed: int, time_budget_s,
                  device: str) -> dict:
    """A 'sampler' that knows the answer; crashes its process for id 2203315 under 'crash'."""
    if method == "crash" and rec["id"] == "2203315":
        os._exit(3)
    if method == "broken":
        raise RuntimeError("sampler exploded")
    out = dict(rec)
    out["candidates"] = [copy.deepcopy(rec["reference"])] * samples
    return out


def first_candidate(rec: dict, device: str) -> dict:
    out = dict(rec)
    out["solution"] = {**out["candidates"][0], "r1": 0.02}
    return out


def trusting_score(rec: dict) -> dict:
    """Scores without pymatgen (so spawned workers start fast): the solution is the answer."""
    return {**rec, "metrics": {"matched_loose": True, "matched_strict": True, "r1": 0.02}}


FAKES = Pipeline(prep=cif_prep, sample=oracle_sample, refine=first_candidate, preload=())


def test_select_structures_from_cod_dev_index():
    folder = Path(__file__).parents[2] / "shared" / "benchmarks" / "cod-dev"
    if not (folder / "index.tsv").exists():
        pytest.skip("cod-dev not present")
    organic = select_structures(str(folder), ["organic"], max_atoms=12)
    assert organic and all(e.cls == "organic" and e.n_atoms <= 12 for e in organic)
    assert [e.id for e in select_structures(str(folder), None, ids=["2205750"])] == ["2205750"]
    assert len(select_structures(str(folder), ["organic"], limit=3)) == 3
    with pytest.raises(FileNotFoundError, match="9999999"):
        select_structures(str(folder), ["organic"], ids=["9999999"])


def test_folder_without_index_takes_every_cif():
    ids = {e.id for e in select_structures(str(COD), ["organic"], max_atoms=1)}
    assert {"2202108", "2205750"} <= ids  # no index.tsv: class and size filters do not apply


def test_bench_with_an_oracle_sampler_solves_everything():
    cfg = BenchConfig(folder=str(COD), ids=["2205750"], dmins=[1.0, 2.0], methods=["oracle"],
                      samples=2, isolate=False)
    recs = list(run_bench(cfg, FAKES))
    assert len(recs) == 2
    row = recs[0]["bench"]
    assert row["id"] == "2205750" and row["n_atoms"] == 10 and row["sg"] == "P n a 21"
    assert row["matched_loose"] and row["matched_strict"] and row["error"] is None
    assert set(row["stage_s"]) == {"prep", "sample", "refine", "score"} and row["seconds"] > 0
    assert row["peak_rss_MB"] > 10 and recs[0]["metrics"]["best_candidate"] == 0
    summary = summarize_bench([r["bench"] for r in recs])
    assert [(s["dmin"], s["method"]) for s in summary] == [(1.0, "oracle"), (2.0, "oracle")]
    assert all(s["n"] == 1 and s["solved_loose"] == 1 and s["solved_strict"] == 1 for s in summary)
    assert summary[0]["found_loose"] == 1 and summary[0]["median_r1"] == 0.02
    table = markdown_table(summary)
    assert table.count("\n") == 4 and "| 1.00 | oracle | 1 | 100% | 100% |" in table


def test_a_failing_stage_becomes_an_error_row():
    cfg = BenchConfig(folder=str(COD), ids=["2205750"], methods=["broken", "oracle"], isolate=False)
    recs = list(run_bench(cfg, FAKES))
    broken, ok = (r["bench"] for r in recs)
    assert broken["error"] == "2205750: sample: sampler exploded" and not broken["matched_loose"]
    assert "refine" not in broken["stage_s"] and ok["matched_strict"]
    s = {x["method"]: x for x in summarize_bench([broken, ok])}
    assert s["broken"]["n_error"] == 1 and s["broken"]["solved_loose"] == 0


def test_isolated_workers_and_a_crash():
    """Each structure in its own spawned process; one that dies is reported, the rest go on."""
    entries = [Entry("2205750", str(COD / "2205750.cif")), Entry("2203315", str(COD / "2203315.cif"))]
    cfg = BenchConfig(methods=["crash"], jobs=2, isolate=True, hard_timeout_s=120)
    fakes = Pipeline(prep=cif_prep, sample=oracle_sample, refine=first_candidate,
                     score=trusting_score, preload=())
    rows = {r["bench"]["id"]: r["bench"] for r in run_bench(cfg, fakes, entries=entries)}
    assert rows["2205750"]["matched_strict"] and rows["2205750"]["isolated"]
    assert rows["2205750"]["n_atoms"] == 10  # counted from the reference without an index
    assert "worker died (exit code 3" in rows["2203315"]["error"]


def test_real_prep_with_an_oracle_sampler():
    """The real xdxd-prep simulation feeding the bench (the sampler is still the oracle)."""
    pytest.importorskip("xdxd.prep")
    pipeline = Pipeline(sample=oracle_sample, refine=first_candidate, preload=())
    cfg = BenchConfig(folder=str(COD), ids=["2203315"], dmins=[1.5], methods=["oracle"],
                      samples=1, isolate=False)
    (rec,) = run_bench(cfg, pipeline)
    assert rec["bench"]["error"] is None and rec["bench"]["matched_strict"]
    assert rec["d_min_A"] == pytest.approx(1.5, abs=0.01) and len(rec["reflections"]["h"]) > 50


def test_measured_data_sets_with_an_oracle_sampler():
    """--data measured: each subfolder is a data set; its reflections are cut at d_min."""
    folder = Path(__file__).parent / "data" / "measured"
    entries = select_structures(str(folder), data="measured", ids=["l-alanine", "xylitol"])
    assert [e.id for e in entries] == ["xylitol", "l-alanine"]  # shorter ids first, as COD ids
    pipeline = Pipeline(sample=oracle_sample, refine=first_candidate, preload=())
    cfg = BenchConfig(folder=str(folder), ids=["l-alanine"], dmins=[2.0], methods=["oracle"],
                      samples=1, isolate=False, data="measured")
    (rec,) = run_bench(cfg, pipeline)
    row = rec["bench"]
    assert row["error"] is None and row["matched_strict"] and row["data"] == "measured"
    assert rec["metrics"]["data"] == "measured_intensities" and row["n_atoms"] == 6
    assert len(rec["reflections"]["h"]) == 39 and rec["d_min_A"] >= 2.0


def test_breakdown_by_size_band_and_kind():
    from xdxd.bench import breakdown_table
    rows = [{"dmin": 2.0, "method": "molecule", "n_atoms": n, "matched_strict": ok, "molecule_counts": c}
            for n, ok, c in [(8, True, [1.0]), (15, False, [0.5]), (25, True, [1.0, 0.5]), (40, True, [2.0]),
                             (12, False, None)]]
    table = breakdown_table(rows)
    assert table.splitlines()[2] == "| 2.00 | molecule | 1/1 | 0/2 | 1/1 | 1/1 | 1/1 | 1/2 | 2/2 |"
