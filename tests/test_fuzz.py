"""Fuzzed readers (issue 25): every shipped test file, cut, with bytes flipped, columns
shuffled or dropped, numbers made huge or negative, goes through xdxd-prep and comes out
as records or one-line error records that name the file, never a traceback; the exit
code is 0 when every record is good and 1 when one is an error.

The mutations are a seeded loop (no hypothesis needed); FUZZ_CASES per file and kind."""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xdxd.cli.prep import app

DATA = Path(__file__).parent / "data"
FUZZ_CASES = 2
NUMBER = re.compile(r"(?<![\w.])-?\d+\.?\d*(?:\(\d+\))?")
HUGE = ["1e30", "-1e30", "99999999", "-99999999", "-1", "0", "1e-30", "nan", "inf", "-0.0"]


def truncate(text: str, rng: random.Random) -> str:
    return text[:rng.randrange(len(text))]


def flip_bytes(text: str, rng: random.Random) -> str:
    b = bytearray(text.encode("latin-1", "replace"))
    for _ in range(rng.randint(1, 8)):
        b[rng.randrange(len(b))] = rng.randrange(256)
    return b.decode("latin-1")


def _lines_with_numbers(lines: list[str]) -> list[int]:
    return [i for i, line in enumerate(lines) if len(NUMBER.findall(line)) >= 3]


def shuffle_columns(text: str, rng: random.Random) -> str:
    lines = text.splitlines(keepends=True)
    rows = _lines_with_numbers(lines)
    for i in rng.sample(rows, min(len(rows), rng.randint(1, 5))):
        cols = lines[i].split()
        rng.shuffle(cols)
        lines[i] = " ".join(cols) + "\n"
    return "".join(lines)


def drop_column(text: str, rng: random.Random) -> str:
    lines = text.splitlines(keepends=True)
    rows = _lines_with_numbers(lines)
    k = rng.randrange(3)
    for i in rng.sample(rows, min(len(rows), rng.randint(1, 5))):
        cols = lines[i].split()
        del cols[min(k, len(cols) - 1)]
        lines[i] = " ".join(cols) + "\n"
    return "".join(lines)


def extreme_numbers(text: str, rng: random.Random) -> str:
    spans = [m.span() for m in NUMBER.finditer(text)]
    for a, b in sorted(rng.sample(spans, min(len(spans), rng.randint(1, 6))), reverse=True):
        text = text[:a] + rng.choice(HUGE) + text[b:]
    return text


def drop_lines(text: str, rng: random.Random) -> str:
    lines = text.splitlines(keepends=True)
    for _ in range(rng.randint(1, 5)):
        if lines:
            del lines[rng.randrange(len(lines))]
    return "".join(lines)


MUTATIONS = {f.__name__: f for f in (truncate, flip_bytes, shuffle_columns, drop_column, extreme_numbers,
                                     drop_lines)}

# (file to mutate, the files that go with it in its folder)
FILES = [(p, []) for p in sorted((DATA / "cod").glob("*.cif"))] + \
        [(p, [q for q in p.parent.iterdir() if q != p and q.suffix != ".md"])
         for p in sorted((DATA / "measured").glob("*/*")) if p.suffix in (".hkl", ".cif", ".res")]


def run_prep(folder: Path, target: Path):
    res = CliRunner().invoke(app, [str(folder), "--dmin", "2.0", "-q"], catch_exceptions=True)
    return res


@pytest.mark.parametrize("path,companions", FILES, ids=[f"{p.parent.name}/{p.name}" for p, _ in FILES])
def test_mutated_files_give_records_or_error_records(tmp_path, path, companions):
    text = path.read_text(encoding="latin-1")
    rng = random.Random(path.name)
    tried = 0
    for kind, mutate in MUTATIONS.items():
        for case in range(FUZZ_CASES):
            folder = tmp_path / f"{kind}{case}"
            folder.mkdir()
            for q in companions:
                (folder / q.name).write_bytes(q.read_bytes())
            target = folder / path.name
            target.write_text(mutate(text, rng), encoding="latin-1")
            res = run_prep(folder, target)
            what = f"{kind} case {case} of {path}"
            assert res.exception is None or isinstance(res.exception, SystemExit), \
                f"{what}: {type(res.exception).__name__}: {res.exception}"
            assert "Traceback" not in res.output, what
            recs = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
            assert recs, f"{what}: no record"
            errors = [r["error"] for r in recs if r.get("error")]
            assert res.exit_code == (1 if errors else 0), f"{what}: exit {res.exit_code}, errors {errors}"
            for e in errors:
                assert "\n" not in e and (target.name in e or folder.name in e), f"{what}: {e!r}"
            tried += 1
    assert tried == len(MUTATIONS) * FUZZ_CASES
