"""What every command shares: --version, one spelling per option, where the weights come from.

Only option parsing and file lookup run here (no sampling, no downloads): seconds in all.
"""
from __future__ import annotations

import importlib

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
