"""xdxd-bench: prep -> sample -> refine -> score over a folder of CIFs, with timings.

    xdxd-bench --dmin 1.0 --dmin 1.5 --dmin 2.0 --method dualspace -o bench.jsonl --markdown
    xdxd-bench --ids 2202108,2203315 --dmin 1.0 --samples 4 --no-isolate
    xdxd-bench ../shared/benchmarks/measured --data measured --dmin 2.0 --method diffusion
"""
from __future__ import annotations

import json
from typing import List, Optional

import typer
from rich.table import Table

from xdxd import records
from xdxd.cli.common import (DeviceOpt, Log, OldOutOpt, OldTimeBudgetOpt, QuietOpt, RecordWriter,
                             SeedOpt, ThreadsOpt, VersionOpt, renamed, resolve_device,
                             right_aligned_table, stderr, wide_stderr)

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

ROW = "{id:>9} {n_atoms:>5} {sg:<14} {dmin:>5} {method:<10} {loose:>5} {strict:>6} {rms:>6} {r1:>6} {rpp:>5} {seconds:>8} {mem:>7}  {error}"


@app.command()
def bench(
    ctx: typer.Context,
    folder: str = typer.Argument("../shared/benchmarks/cod-dev",
                                 help="Folder of CIFs (with cod-dev's index.tsv for --class/--max-atoms)."),
    classes: List[str] = typer.Option(["organic"], "--class",
                                      help="Structure class from index.tsv (repeatable); 'all' for every class."),
    max_atoms: Optional[int] = typer.Option(None, "--max-atoms", help="Only structures with at most this many non-H atoms in the asymmetric unit."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N structures (COD-id order)."),
    ids: Optional[List[str]] = typer.Option(None, "--ids", help="Only these ids (repeatable or comma-separated)."),
    dmins: List[float] = typer.Option([2.0], "--dmin", help="Resolution d_min in Å (repeatable)."),
    methods: List[str] = typer.Option(["dualspace"], "--method", help="Sampler method (repeatable)."),
    samples: Optional[int] = typer.Option(None, "--samples", help="Candidates the sampler emits per structure (default: dualspace 8, diffusion 64)."),
    seed: int = SeedOpt,
    time_budget: Optional[float] = typer.Option(None, "--time-budget", min=0.0,
                                                help="Sampler wall-time budget per structure and method in seconds (equal for all methods)."),
    data: str = typer.Option("simulate", "--data",
                             help="simulate: |F| from each CIF's model; measured: each subfolder is a "
                                  "measured data set (reflections + model), cut at --dmin."),
    molecules_from_reference: bool = typer.Option(
        False, "--molecules-from-reference",
        help="Name each structure's molecules (SMILES and counts perceived from its model) in the "
             "record, as a user would with xdxd-prep --molecule; --method molecule or auto then uses them."),
    jobs: int = typer.Option(1, "--jobs", "-j", help="Structures run at the same time."),
    threads: int = ThreadsOpt,
    device: str = DeviceOpt,
    isolate: bool = typer.Option(True, "--isolate/--no-isolate",
                                 help="Each structure in a fresh process: its own peak memory, crashes contained."),
    hard_timeout_s: Optional[float] = typer.Option(None, "--hard-timeout-s",
                                                   help="Kill a structure after this many seconds (default: 3 x budget + 300 when a budget is set)."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Write every scored record here (JSON lines, atomic)."),
    summary_out: Optional[str] = typer.Option(None, "--summary-out", help="Write the summaries here as JSON."),
    markdown: bool = typer.Option(False, "--markdown", help="Print the summary as a Markdown table on stdout."),
    quiet: bool = QuietOpt,
    version: bool = VersionOpt,
    out: Optional[str] = OldOutOpt,
    time_budget_s: Optional[float] = OldTimeBudgetOpt,
) -> None:
    """Run the whole pipeline on each structure and report solved fractions, RMS, time and memory."""
    from xdxd.bench import (BenchConfig, breakdown_table, markdown_table, run_bench, select_structures,
                            summarize_bench)

    output = renamed(ctx, "output", output, "--out", out)
    time_budget = renamed(ctx, "time_budget", time_budget, "--time-budget-s", time_budget_s)
    log = Log(quiet)
    if data not in ("simulate", "measured"):
        log.error(f"--data must be simulate or measured, not {data!r}")
        raise typer.Exit(2)
    if hard_timeout_s is None and time_budget is not None:
        hard_timeout_s = 3 * time_budget + 300
    cfg = BenchConfig(
        folder=folder, classes=None if "all" in classes else list(classes), max_atoms=max_atoms,
        ids=[i for s in ids or [] for i in s.split(",") if i] or None, limit=limit,
        dmins=list(dmins), methods=list(methods), samples=samples, seed=seed,
        time_budget_s=time_budget, jobs=jobs, threads=threads, device=resolve_device(device),
        isolate=isolate, hard_timeout_s=hard_timeout_s, data=data,
        molecules_from_reference=molecules_from_reference)
    try:
        entries = select_structures(cfg.folder, cfg.classes, cfg.max_atoms, cfg.ids, cfg.limit,
                                    cfg.data)
    except FileNotFoundError as e:
        log.error(str(e))
        raise typer.Exit(2)
    if jobs > 1 and not isolate:
        log.info("--no-isolate runs one structure at a time; --jobs is ignored")
    n_tasks = len(entries) * len(cfg.dmins) * len(cfg.methods)
    log.info(f"xdxd-bench: {len(entries)} structures x {len(cfg.dmins)} d_min x "
             f"{len(cfg.methods)} methods = {n_tasks} runs, {cfg.jobs} at a time")
    if not quiet:
        stderr.print(ROW.format(id="id", n_atoms="atoms", sg="sg", dmin="dmin", method="method",
                                loose="loose", strict="strict", rms="rms", r1="R1", rpp="n/p",
                                seconds="seconds", mem="RSS MB", error=""),
                     highlight=False, soft_wrap=True)
    writer = RecordWriter(output) if output else None
    rows = []
    try:
        for rec in run_bench(cfg, entries=entries):
            row = rec["bench"]
            rows.append(row)
            if writer:
                writer.write(rec)
            if not quiet:
                stderr.print(_row_line(row), highlight=False, soft_wrap=True, markup=False)
    except KeyboardInterrupt:  # keep the runs that finished: hours of work
        if writer:
            writer.close()
            log.info(f"interrupted: {len(rows)} finished runs are in {output}")
        raise typer.Exit(130)
    if writer:
        writer.close()
    summaries = summarize_bench(rows)
    if summary_out:
        records.atomic_write_text(summary_out, json.dumps(
            {"config": cfg.__dict__, "summaries": summaries}, indent=1, default=str) + "\n")
    if not quiet:
        wide_stderr().print(summary_table(summaries))
    if markdown:
        typer.echo(markdown_table(summaries), nl=False)
        typer.echo("\nSolved strict by size (non-H atoms) and kind:\n")
        typer.echo(breakdown_table(rows), nl=False)
    raise typer.Exit(1 if any(r.get("error") for r in rows) else 0)


def _row_line(r: dict) -> str:
    from xdxd.score import num

    def yes(b) -> str:
        return "yes" if b else "no"
    err = r.get("error") or ""
    return ROW.format(id=r["id"], n_atoms=r.get("n_atoms") if r.get("n_atoms") is not None else "?",
                      sg=(r.get("sg") or "?").replace(" ", "")[:14], dmin=f"{r['dmin']:.2f}",
                      method=r["method"][:10], loose=yes(r["matched_loose"]),
                      strict=yes(r["matched_strict"]), rms=num(r.get("rms_loose"), 3),
                      r1=num(r.get("r1"), 3), rpp=num(r.get("reflections_per_parameter"), 1),
                      seconds=num(r.get("seconds"), 1),
                      mem=num(r.get("peak_rss_MB"), 0), error=err[:120])


def summary_table(summaries: list[dict]) -> Table:
    """One row per (d_min, method)."""
    from xdxd.score import num, pct
    columns = ("d_min Å", "method", "n", "failed", "solved loose", "solved strict", "found loose",
               "mean RMS", "mean RMSD Å", "median R1", "median s", "sample s", "peak RSS MB")
    rows = [(f"{s['dmin']:.2f}", s["method"], str(s["n"]), str(s["n_error"]),
             pct(s["solved_loose"]), pct(s["solved_strict"]), pct(s["found_loose"]),
             num(s["mean_rms_loose"], 3), num(s["mean_rmsd_A"], 3), num(s["median_r1"], 3),
             num(s["median_seconds"], 1), num(s["median_sample_s"], 1), num(s["max_peak_rss_MB"], 0))
            for s in summaries]
    return right_aligned_table("xdxd-bench", columns, rows)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
