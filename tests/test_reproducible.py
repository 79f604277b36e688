"""A seed and --rounds give the same candidates in separate processes, whatever the clock
(issue 25): --rounds makes xdxd-sample ignore --time-budget, and the history says so."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from test_molecule import SMILES_1100656, _problem

ROOT = Path(__file__).parents[1]
SAMPLE = "from xdxd.cli.sample import main; main()"


def run_sample(src: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SAMPLE, str(src), "-o", str(out), "--threads", "1", *args],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("method,args", [
    ("molecule", ["--rounds", "2", "--steps", "10"]),
    pytest.param("diffusion", ["--rounds", "0", "--steps", "6", "--samples", "8"],
                 marks=pytest.mark.slow)])  # 2000 relocation moves when the clock is not read: minutes
def test_rounds_give_the_same_candidates_in_two_processes(tmp_path, method, args):
    rec = _problem(str(ROOT / "examples" / "1100656.cif"))
    if method == "diffusion":
        rec.pop("molecules", None)
    else:
        assert rec["molecules"][0]["smiles"] == SMILES_1100656
    src = tmp_path / "p.jsonl"
    src.write_text(json.dumps(rec) + "\n")
    runs = []
    for k in range(2):  # a tiny time budget, which --rounds overrides
        res = run_sample(src, tmp_path / f"c{k}.jsonl", "--method", method, "--seed", "5",
                         "--time-budget", "0.001", *args)
        assert res.returncode == 0, res.stderr
        assert "--time-budget 0.001 is ignored" in res.stderr
        runs.append(json.loads((tmp_path / f"c{k}.jsonl").read_text()))
    a, b = runs
    assert a["history"][-1]["limit"] == "rounds"
    assert len(a["candidates"]) >= 2
    assert a["candidates"] == b["candidates"]


def test_a_time_budget_is_named_in_the_history(tmp_path):
    rec = _problem(str(ROOT / "examples" / "1100656.cif"))
    src = tmp_path / "p.jsonl"
    src.write_text(json.dumps(rec) + "\n")
    res = run_sample(src, tmp_path / "c.jsonl", "--method", "molecule", "--time-budget", "3", "--steps", "5")
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "c.jsonl").read_text())["history"][-1]["limit"] == "time budget 3 s"
