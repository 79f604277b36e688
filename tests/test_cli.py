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
