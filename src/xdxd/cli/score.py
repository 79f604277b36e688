"""xdxd-score: compare each record's solution with its reference (pymatgen StructureMatcher).

    xdxd-prep x.cif | xdxd-sample | xdxd-refine | xdxd-score > scored.jsonl
    xdxd-score results.jsonl --summary json --summary-out summary.json > /dev/null
"""
from __future__ import annotations

import json
from typing import List, Optional

import typer
from rich.table import Table

from xdxd import records
from xdxd.cli.common import (Log, OutputOpt, QuietOpt, VersionOpt, choices, process_stream,
                             read_input_records, right_aligned_table, stderr, wide_stderr)

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

SummaryKind = choices("SummaryKind", "table", "json", "none")


@app.command()
def score(
    inputs: Optional[List[str]] = typer.Argument(None, help="JSON-lines files of records (- or none: stdin)."),
    output: str = OutputOpt,
    summary: SummaryKind = typer.Option(SummaryKind.table, "--summary",
                                        help="Summary on stderr: a rich table, one JSON object, or none."),
    summary_out: Optional[str] = typer.Option(None, "--summary-out",
                                              help="Also write the summary as JSON to this file (then --summary json prints nothing)."),
    candidates: bool = typer.Option(True, "--candidates/--no-candidates",
                                    help="Also find the best-matching sampler candidate."),
    quiet: bool = QuietOpt,
    version: bool = VersionOpt,
) -> None:
    """Score solutions against reference structures: matched (loose, strict), RMS, RMSD in Å, R1.

    Loose is stol 0.5, ltol 0.3, angle_tol 10° (XDXD/DiffCSP); strict is pymatgen's defaults
    (stol 0.3, ltol 0.2, angle_tol 5°). Non-H atoms of the symmetry-expanded P1 cells.
    Exit code 1 if any record could not be scored.
    """
    from xdxd.score import pipeline_seconds, score_record, summarize

    log = Log(quiet)
    metrics: list = []    # one entry per output record: its metrics, or None if it failed
    seconds: list = []

    def counted(recs):
        for rec in recs:
            metrics.append(None)
            seconds.append(pipeline_seconds(rec))
            yield rec

    def work(rec: dict) -> dict:
        out = score_record(rec, candidates=candidates)
        metrics[-1] = out["metrics"]
        return out

    code = process_stream(counted(read_input_records(inputs or [], log)), work, output, log, "score")
    result = summarize(metrics, seconds)
    if summary_out:
        records.atomic_write_text(summary_out, json.dumps(result, indent=1) + "\n")
    if summary == SummaryKind.json and not summary_out:
        stderr.print(json.dumps(result), highlight=False, soft_wrap=True)
    elif summary == SummaryKind.table and not quiet:
        wide_stderr().print(summary_table(result))
    raise typer.Exit(code)


def summary_table(s: dict, title: str = "xdxd-score") -> Table:
    """The summary dict of xdxd.score.summarize as a rich table."""
    from xdxd.score import num, pct
    columns = ("n", "failed", "solved loose", "solved strict", "mean RMS (loose)", "mean RMSD Å",
               "median R1", "median s")
    row = (str(s["n"]), str(s["n_error"]), pct(s["solved_loose"]), pct(s["solved_strict"]),
           num(s["mean_rms_loose"], 3), num(s["mean_rmsd_A"], 3), num(s["median_r1"], 3),
           num(s["median_seconds"], 1))
    return right_aligned_table(title, columns, [row])


def main() -> None:
    app()


if __name__ == "__main__":
    main()
