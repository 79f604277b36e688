"""What every command shares: --version, one spelling per option, where the weights come from.

Only option parsing and file lookup run here (no sampling, no downloads): seconds in all.
"""
from __future__ import annotations

import importlib
import json
import re

import pytest
from typer.testing import CliRunner

import xdxd

COMMANDS = ["prep", "sample", "refine", "score", "bench", "synth", "train"]


def app_of(cmd: str):
    return importlib.import_module(f"xdxd.cli.{cmd}").app


@pytest.mark.parametrize("cmd", COMMANDS)
def test_version(cmd):
    res = CliRunner().invoke(app_of(cmd), ["--version"])
    assert res.exit_code == 0, res.output
    assert res.output == f"xdxd-{cmd} {xdxd.__version__}\n"


# (command, old spelling): accepted, never shown in --help
OLD_NAMES = [("bench", "--out"), ("bench", "--time-budget-s"), ("sample", "--time-budget-s"),
             ("synth", "--out"), ("train", "--out"), ("train", "--time-limit")]


@pytest.mark.parametrize("cmd,old", OLD_NAMES)
def test_old_names_are_hidden(cmd, old):
    res = CliRunner().invoke(app_of(cmd), ["--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert not re.search(re.escape(old) + r"(?![\w-])", res.output)
    new = "--time-budget" if "time" in old else "--output"
    assert re.search(re.escape(new) + r"(?![\w-])", res.output)


def run_bench(tmp_path, *args):
    """xdxd-bench on an empty folder: no runs, but the output file and the config are written."""
    (tmp_path / "empty").mkdir(exist_ok=True)
    summary = tmp_path / "summary.json"
    res = CliRunner().invoke(app_of("bench"), [str(tmp_path / "empty"), "--summary-out", str(summary),
                                               "-q", *args])
    return res, (json.loads(summary.read_text())["config"] if res.exit_code == 0 else None)


@pytest.mark.parametrize("out,budget", [("-o", "--time-budget"), ("--out", "--time-budget-s")])
def test_bench_output_and_budget_in_either_spelling(tmp_path, out, budget):
    res, cfg = run_bench(tmp_path, out, str(tmp_path / "rows.jsonl"), budget, "7")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "rows.jsonl").exists()
    assert cfg["time_budget_s"] == 7 and cfg["hard_timeout_s"] == 3 * 7 + 300


def test_old_and_new_spelling_together_is_a_usage_error(tmp_path):
    res, _ = run_bench(tmp_path, "-o", str(tmp_path / "a"), "--out", str(tmp_path / "b"))
    assert res.exit_code == 2 and "--out" in res.output


@pytest.mark.parametrize("budget", ["--time-budget", "--time-budget-s"])
def test_sample_budget_in_either_spelling(tmp_path, monkeypatch, budget):
    from xdxd import records
    from xdxd.cli import sample
    seen = {}

    def fake(rec, **kw):
        seen.update(kw)
        return {**rec, "candidates": []}
    monkeypatch.setattr(sample, "sample_record", fake)
    src = tmp_path / "p.jsonl"
    src.write_text(json.dumps({"schema": records.SCHEMA, "id": "p"}) + "\n")
    res = CliRunner().invoke(sample.app, [str(src), budget, "3", "-o", str(tmp_path / "c.jsonl"), "-q"])
    assert res.exit_code == 0, res.output
    assert seen["time_budget_s"] == 3


@pytest.mark.parametrize("args,folder,limit_s", [
    (["-o", "W", "--time-budget", "90"], "W", 90.0),
    (["--out", "W", "--time-limit", "2"], "W", 120.0),   # the old option was in minutes
    ([], "weights", 0.0)])
def test_train_output_and_budget(monkeypatch, args, folder, limit_s):
    import xdxd.model.train
    seen = {}
    monkeypatch.setattr(xdxd.model.train, "train",
                        lambda data, out, cfg, **kw: seen.update(out=out, cfg=cfg))
    res = CliRunner().invoke(app_of("train"), ["--data", "D", *args, "--device", "cpu", "-q"])
    assert res.exit_code == 0, res.output
    assert seen["out"] == folder and seen["cfg"].time_limit_s == limit_s


@pytest.mark.parametrize("out", ["-o", "--output", "--out"])
def test_synth_output_in_any_spelling(tmp_path, monkeypatch, out):
    from xdxd.cli import synth
    seen = []
    monkeypatch.setattr(synth, "run_from_cif", lambda folder, output, *a: seen.append(output) or 0)
    res = CliRunner().invoke(synth.app, ["--from-cif", str(tmp_path), out, "shards"])
    assert res.exit_code == 0, res.output
    assert seen == ["shards"]


def test_weights_found_without_env(monkeypatch):
    from xdxd.model.weights import WEIGHTS_NAME, resolve_weights, weights_search_path
    monkeypatch.delenv("XDXD_WEIGHTS", raising=False)
    p = resolve_weights()
    assert p.name == WEIGHTS_NAME and p.is_file()
    assert p in [place for _, place in weights_search_path()]


def test_env_wins_and_a_folder_means_its_file(monkeypatch, tmp_path):
    from xdxd.model.weights import WEIGHTS_NAME, resolve_weights
    (tmp_path / WEIGHTS_NAME).write_bytes(b"")
    monkeypatch.setenv("XDXD_WEIGHTS", str(tmp_path))
    assert resolve_weights() == tmp_path / WEIGHTS_NAME
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"")
    assert resolve_weights(other) == other  # --weights before $XDXD_WEIGHTS


def test_missing_weights_say_where_they_were_looked_for(monkeypatch, tmp_path):
    from xdxd.model import weights
    monkeypatch.setenv("XDXD_WEIGHTS", str(tmp_path / "none.safetensors"))
    with pytest.raises(weights.WeightsError, match=r"none\.safetensors \(from \$XDXD_WEIGHTS\)"):
        weights.resolve_weights()
    with pytest.raises(weights.WeightsError, match=r"gone\.safetensors \(from --weights\)"):
        weights.resolve_weights(tmp_path / "gone.safetensors")
    monkeypatch.delenv("XDXD_WEIGHTS")
    places = [("package data", tmp_path / "a"), ("source checkout", tmp_path / "b")]
    monkeypatch.setattr(weights, "weights_search_path", lambda: places)
    with pytest.raises(weights.WeightsError) as err:
        weights.resolve_weights()
    assert f"package data: {tmp_path / 'a'}" in str(err.value)
    assert f"source checkout: {tmp_path / 'b'}" in str(err.value)


def test_pyproject_lists_every_package():
    """[tool.setuptools] packages is a list (weights/ is mapped in): a new subpackage must be in it."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(root / "src").parts)
             for p in (root / "src").rglob("__init__.py")}
    assert found | {"xdxd.weights"} == listed


def test_a_missing_optional_package_is_one_line_and_exit_2(tmp_path, monkeypatch):
    """xdxd-synth --smiles without pyxtal: one line naming the package and the extra that
    installs it, exit 2, before any work (it used to try 48 times and fail each)."""
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pyxtal" else real(name, *a))
    smi = tmp_path / "a.smi"
    smi.write_text("c1ccccc1\n")
    res = CliRunner().invoke(app_of("synth"), ["--smiles", str(smi), "--count", "2", "-o", str(tmp_path / "out")])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "pyxtal" in lines[0] and "pip install 'xdxd[synth]'" in lines[0]
    assert not (tmp_path / "out").exists()
