"""xdxd-synth: training shards from SMILES (generated crystals) or from real CIFs, and a
realism check of a shard folder against real structures.

    xdxd-synth --smiles data/moses.smi --count 100000 -o data/synth --seed 1 --jobs 16
    xdxd-synth --from-cif ~/cod/cif -o data/cod-shards
    xdxd-synth --compare data/synth --reference ../shared/benchmarks/cod-dev --plot synth.png
"""
from __future__ import annotations

import json
import os
import sys
from collections import Counter
from typing import Optional

import typer
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.table import Table

from xdxd.cli.common import Log, OldOutOpt, QuietOpt, SeedOpt, VersionOpt, renamed, require, stderr

app = typer.Typer(add_completion=False, help=__doc__)

MOSES = ("All 1.58 M MOSES SMILES: `make data` in a source checkout, or the first column of "
         "moses/dataset/data/train.csv.gz in the molsets 0.3.1 wheel, https://pypi.org/project/molsets/")


def _progress(label: str, quiet: bool) -> Progress:
    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
                    TimeRemainingColumn(), console=stderr, disable=quiet)


def run_generate(smiles: str, count: int, out: str, seed: int, jobs: int, shard_size: int,
                 peptide_fraction: float, cif_dir: Optional[str], cif_count: int, log: Log) -> int:
    import time
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from xdxd.synth import generate, shards
    from xdxd.synth.from_cif import structure_to_cif

    settings = generate.Settings(smiles=smiles, count=count, shard_size=shard_size,
                                 peptide_fraction=peptide_fraction)
    os.makedirs(out, exist_ok=True)
    n_sh = generate.n_shards(settings)
    todo = [k for k in range(n_sh) if not os.path.exists(os.path.join(out, shards.shard_name(k)))]
    if len(todo) < n_sh:
        log.info(f"{n_sh - len(todo)} of {n_sh} shards already there: skipped")
    chunk = 25  # structures per task: small enough for a smooth progress bar
    tasks = [(k, a, min(a + chunk, generate.shard_count(settings, k)))
             for k in todo for a in range(0, generate.shard_count(settings, k), chunk)]
    pending = {k: generate.shard_count(settings, k) for k in todo}
    results: dict[int, list] = {k: [] for k in todo}
    failures: Counter = Counter()
    total = sum(pending.values())
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    done = 0
    n_cif = len([n for n in os.listdir(cif_dir) if n.endswith(".cif")]) if cif_dir and os.path.isdir(cif_dir) else 0

    def finish(k: int, start: int, stop: int, items: list, fails: list) -> None:
        nonlocal n_cif
        results[k].append((start, items))
        failures.update(fails)
        pending[k] -= stop - start
        if pending[k] == 0:
            structs = [s for _, part in sorted(results.pop(k), key=lambda p: p[0]) for s in part]
            shards.write_shard(os.path.join(out, shards.shard_name(k)), structs)
            if cif_dir and n_cif < cif_count:
                os.makedirs(cif_dir, exist_ok=True)
                for s in structs[: cif_count - n_cif]:
                    with open(os.path.join(cif_dir, f"synth-{k:05d}-{n_cif:04d}.cif"), "w") as f:
                        f.write(structure_to_cif(s))
                    n_cif += 1

    with _progress("synth", log.quiet) as bar:
        task = bar.add_task("synth", total=total, rate="")
        def advance(n):
            nonlocal done
            done += n
            el = time.perf_counter() - t0
            bar.update(task, advance=n, rate=f"{done / el:.2f}/s" if el > 0 else "")
            if not stderr.is_terminal and done % 100 < n:  # no animation off a TTY: a line now and then
                eta = (total - done) * el / done
                log.info(f"synth: {done}/{total} structures, {done / el:.3f}/s, ETA {eta / 60:.0f} min")
        if jobs <= 1:
            for k, a, b in tasks:
                _, _, items, fails = generate.make_chunk(settings, seed, k, a, b)
                finish(k, a, b, items, fails)
                advance(b - a)
        else:
            with ProcessPoolExecutor(jobs) as pool:
                futs = {pool.submit(generate.make_chunk, settings, seed, k, a, b): (k, a, b)
                        for k, a, b in tasks}
                for fut in as_completed(futs):
                    k, a, b = futs[fut]
                    _, _, items, fails = fut.result()
                    finish(k, a, b, items, fails)
                    advance(b - a)
    elapsed = time.perf_counter() - t0
    import resource
    child = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = time.process_time() - cpu0 + child.ru_utime + child.ru_stime
    index = []
    for k in range(n_sh):
        path = os.path.join(out, shards.shard_name(k))
        t, _ = shards.read_shard(path)
        index.append({"file": shards.shard_name(k), "count": int(len(t["cell"])),
                      "atoms": int(len(t["atomic_number"]))})
    shards.write_index(out, index, generate.settings_dict(settings), seed)
    if total:
        log.info(f"{total} structures in {elapsed:.0f} s: {total / elapsed:.3f} structures/s "
                 f"with {jobs} job(s); {cpu / total:.2f} CPU-s per structure "
                 f"({total / cpu:.3f} structures/s per fully used core)")
    if failures:
        log.info("failed tries (a new molecule was drawn each time): "
                 + ", ".join(f"{k} {v}" for k, v in failures.most_common()))
    got = sum(s["count"] for s in index)
    if got < count:
        log.error(f"{count - got} structures could not be made")
        return 1
    return 0


def run_from_cif(folder: str, out: str, shard_size: int, log: Log) -> int:
    from xdxd.synth import shards
    from xdxd.synth.from_cif import cif_files, read_cif_folder

    os.makedirs(out, exist_ok=True)
    reasons: Counter = Counter()
    buf, index = [], []

    def flush():
        name = shards.shard_name(len(index))
        shards.write_shard(os.path.join(out, name), buf)
        index.append({"file": name, "count": len(buf), "atoms": sum(len(s["frac"]) for s in buf)})
        buf.clear()

    with _progress("from-cif", log.quiet) as bar:
        task = bar.add_task("cif", total=len(cif_files(folder)), rate="")
        last = None
        for name, s, reason in read_cif_folder(folder):
            stem = name.split(":")[0]
            if stem != last:
                bar.update(task, advance=1)
                last = stem
            reasons[reason or "used"] += 1
            if s is not None:
                buf.append(s)
                if len(buf) >= shard_size:
                    flush()
    if buf or not index:
        flush()
    shards.write_index(out, index, {"from_cif": os.path.abspath(folder), "shard_size": shard_size}, 0)
    table = Table(title=f"xdxd-synth --from-cif {folder}")
    table.add_column("outcome")
    table.add_column("blocks", justify="right")
    for k, v in reasons.most_common():
        table.add_row(k, str(v))
    if not log.quiet:
        stderr.print(table)
    return 0 if reasons["used"] else 1


@app.command()
def synth(
    ctx: typer.Context,
    smiles: Optional[str] = typer.Option(None, "--smiles", help="SMILES file, one per line with optional name (default: a shipped sample of 300). " + MOSES),
    count: int = typer.Option(1000, "--count", "-n", help="Structures to generate."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Output folder of shards + index.json."),
    seed: int = SeedOpt,
    jobs: int = typer.Option(1, "--jobs", "-j", help="Worker processes."),
    shard_size: int = typer.Option(1000, "--shard-size", help="Structures per shard."),
    peptide_fraction: float = typer.Option(0.1, "--peptide-fraction", help="Share of zwitterionic di-/tri-/tetrapeptides (0-1)."),
    cif: Optional[str] = typer.Option(None, "--cif", help="Also write some generated crystals as CIF files into this folder."),
    cif_count: int = typer.Option(20, "--cif-count", help="How many CIF files --cif writes."),
    from_cif: Optional[str] = typer.Option(None, "--from-cif", help="Read real CIFs (recursively) from this folder into shards."),
    compare: Optional[str] = typer.Option(None, "--compare", help="Realism check of this shard folder against --reference."),
    reference: str = typer.Option("../shared/benchmarks/cod-dev", "--reference", help="Real CIFs (a cod-dev folder: its index.tsv picks class organic) or a shard folder."),
    plot: Optional[str] = typer.Option(None, "--plot", help="PNG for the --compare plots."),
    max_compare: int = typer.Option(2000, "--max-compare", help="Structures of --compare used (evenly spaced)."),
    as_json: bool = typer.Option(False, "--json", help="--compare: print the table as JSON on stdout."),
    quiet: bool = QuietOpt,
    version: bool = VersionOpt,
    out: Optional[str] = OldOutOpt,
) -> None:
    """Make training shards from SMILES (--smiles/--count) or real CIFs (--from-cif), or
    compare a shard folder with real structures (--compare)."""
    output = renamed(ctx, "output", output, "--out", out)
    log = Log(quiet)
    modes = sum(x is not None for x in (from_cif, compare))
    if modes > 1:
        raise typer.BadParameter("give at most one of --from-cif and --compare")
    if compare is not None:
        if plot:
            require("xdxd-synth --plot", {"matplotlib": "synth"})
        from xdxd.synth import compare as cmp
        rows = cmp.compare(compare, reference, max_structures=max_compare, plot=plot)
        text = cmp.format_table(rows)
        if as_json:
            sys.stdout.write(json.dumps(rows) + "\n")
        else:
            sys.stdout.write(text + "\n")
        if plot:
            log.info(f"plot: {plot}")
        raise typer.Exit(0)
    if output is None:
        raise typer.BadParameter("an output folder is required", param_hint="-o/--output")
    if from_cif is not None:
        if not os.path.isdir(from_cif):
            raise typer.BadParameter(f"{from_cif} is not a folder", param_hint="--from-cif")
        raise typer.Exit(run_from_cif(from_cif, output, shard_size, log))
    if smiles is not None and not os.path.exists(smiles):
        raise typer.BadParameter(f"{smiles} not found. {MOSES}", param_hint="--smiles")
    if count < 1 or shard_size < 1:
        raise typer.BadParameter("--count and --shard-size must be positive")
    require("xdxd-synth --smiles", {"pyxtal": "synth"})
    raise typer.Exit(run_generate(smiles or "", count, output, seed, jobs, shard_size,
                                  peptide_fraction, cif, cif_count, log))


def main() -> None:
    """Console entry point (xdxd-synth)."""
    app()


if __name__ == "__main__":
    main()
