"""What every command shares: stream handling, options, logging, exit codes.

Exit codes: 0 all records fine, 1 some record failed, 2 usage error (typer's own).
Records go to stdout (or -o FILE, written atomically), logs and progress to stderr.
"""
from __future__ import annotations

import enum
import io
import os
import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from xdxd import __version__, records

stderr = Console(stderr=True)

# shared options, defined once (like samtools' sam_opts.h)
OutputOpt = typer.Option("-", "--output", "-o", help="Write records here (- is stdout).")
SeedOpt = typer.Option(0, "--seed", help="Random seed; the same seed gives the same result.")
DeviceOpt = typer.Option("auto", "--device", help="torch device: auto (CUDA if present), cpu, cuda.")
ThreadsOpt = typer.Option(0, "--threads", help="CPU threads for torch (0: torch's default).")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress or log lines on stderr.")


def _print_version(ctx: typer.Context, value: bool) -> None:
    if value:
        typer.echo(f"xdxd-{ctx.command.name} {__version__}")
        raise typer.Exit()


VersionOpt = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                          help="Print the version (xdxd-<command> VERSION) and exit.")


# old spellings, accepted but not shown in --help; `renamed` merges each into its new option
OldOutOpt = typer.Option(None, "--out", hidden=True, help="Old name of --output.")
OldTimeBudgetOpt = typer.Option(None, "--time-budget-s", min=0.0, hidden=True,
                                help="Old name of --time-budget (s).")


def renamed(ctx: typer.Context, name: str, value, old: str, old_value):
    """Option `name`'s value, or `old_value` when only its old spelling `old` was given."""
    if old_value is None:
        return value
    if ctx.get_parameter_source(name).name != "DEFAULT":
        new = "--" + name.replace("_", "-")
        raise typer.BadParameter(f"the old name of {new}; give one of the two", param_hint=old)
    return old_value


def choices(name: str, *values: str) -> type[enum.Enum]:
    """The values an option accepts, as the str Enum typer wants (each member named as its value)."""
    return enum.Enum(name, {v: v for v in values}, type=str)


def right_aligned_table(title: str, columns: Iterable[str], rows: Iterable[Iterable[str]]) -> Table:
    """A rich table of numbers: every column right-aligned."""
    t = Table(title=title)
    for col in columns:
        t.add_column(col, justify="right")
    for row in rows:
        t.add_row(*row)
    return t


def wide_stderr() -> Console:
    """stderr console; off a terminal, wide enough that tables do not fold (rich's default is 80)."""
    return stderr if stderr.is_terminal else Console(stderr=True, width=160)


class Log:
    """Log lines to stderr unless quiet."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet

    def info(self, msg: str) -> None:
        if not self.quiet:
            stderr.print(msg, highlight=False, soft_wrap=True)

    def error(self, msg: str) -> None:
        # one line, whatever the width; brackets in messages are text, not rich markup
        stderr.print(f"[red]error:[/red] {escape(msg)}", highlight=False, soft_wrap=True)


def require(command: str, packages: dict[str, str]) -> None:
    """Exit 2 with one line on stderr when an optional package a command needs is missing.
    packages: {import name: the extra that installs it}, e.g. {"pyxtal": "synth"}."""
    import importlib.util
    missing = [(name, extra) for name, extra in packages.items() if importlib.util.find_spec(name) is None]
    if missing:
        names = ", ".join(name for name, _ in missing)
        extras = ",".join(sorted({extra for _, extra in missing}))
        Log().error(f"{command} needs the Python package {names}, which is not installed: "
                    f"pip install 'xdxd[{extras}]'")
        raise typer.Exit(2)


def resolve_device(device: str) -> str:
    import torch
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise typer.BadParameter("CUDA requested but no CUDA device is available", param_hint="--device")
    return device


def set_threads(threads: int) -> None:
    if threads > 0:
        import torch
        torch.set_num_threads(threads)


def open_inputs(paths: list[str]) -> Iterator[tuple[str, io.TextIOBase]]:
    """Yield (name, text stream) for each path; '-' (or no path) is stdin."""
    for p in paths or ["-"]:
        if p == "-":
            yield "-", sys.stdin
        else:
            with open(p) as f:
                yield p, f


def read_input_records(paths: list[str], log: Log) -> Iterator[dict]:
    """Records from JSON-lines files or stdin; an unreadable file yields one error record."""
    for p in paths or ["-"]:
        try:
            stream = sys.stdin if p == "-" else open(p)
        except OSError as e:
            yield records.error_record(p, f"{p}: cannot open ({e.strerror})")
            continue
        with (stream if p != "-" else _nullcontext(stream)) as f:
            yield from records.read_records(f, p)


@contextmanager
def _nullcontext(x):
    yield x


class RecordWriter:
    """Write records to stdout or to a file that appears atomically when all is done."""

    def __init__(self, output: str):
        self.output = output
        self.n_ok = 0
        self.n_failed = 0
        if output == "-":
            self.stream = sys.stdout
            self.tmp = None
        else:
            folder = os.path.dirname(os.path.abspath(output))
            self.tmp = os.path.join(folder, f".{os.path.basename(output)}.tmp{os.getpid()}")
            self.stream = open(self.tmp, "w")

    def write(self, rec: dict) -> None:
        try:
            failed = records.write_record(rec, self.stream)
        except BrokenPipeError:  # `xdxd-sample | head` ends quietly
            _silence_stdout()
            raise SystemExit(self.exit_code())
        if failed:
            self.n_failed += 1
        else:
            self.n_ok += 1

    def close(self) -> None:
        if self.tmp is not None:
            self.stream.close()
            os.replace(self.tmp, self.output)
        else:
            try:
                self.stream.flush()
            except BrokenPipeError:
                _silence_stdout()

    def abort(self) -> None:
        if self.tmp is not None:
            self.stream.close()
            if os.path.exists(self.tmp):
                os.unlink(self.tmp)

    def exit_code(self) -> int:
        return 1 if self.n_failed else 0


def _silence_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def process_stream(recs: Iterable[dict], work: Callable[[dict], dict], output: str, log: Log,
                   stage: str, total: int | None = None) -> int:
    """Apply `work` to each record, writing results as they come; return the exit code.

    A record that arrives with `error` set passes through untouched (it stays failed).
    A note in the record's metrics that starts with "warning: " is also logged on stderr.
    An exception in `work` becomes an error record: "<id>: <message>"; the log line on
    stderr also names where the record was read ("file:line: <id>: <message>").
    """
    writer = RecordWriter(output)
    progress = Progress(TextColumn(f"{stage}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[last]}"), TimeElapsedColumn(),
                        console=stderr, disable=log.quiet, transient=True)
    try:
        with progress:
            task = progress.add_task(stage, total=total, last="")
            for rec in recs:
                rid = str(rec.get("id", "?"))
                if rec.get("error"):
                    out = rec
                else:
                    t0 = time.perf_counter()
                    try:
                        out = work(rec)
                    except KeyboardInterrupt:
                        raise
                    except Exception as e:  # one bad record must not stop the stream
                        msg = str(e) if str(e).startswith(rid) else f"{rid}: {e}"
                        out = records.error_record(rid, msg, rec)
                    out.setdefault("timing_s", {})[stage] = round(time.perf_counter() - t0, 3)
                for note in (out.get("metrics") or {}).get("notes") or []:
                    if str(note).startswith("warning: "):
                        log.info(f"{rid}: {note}")
                if out.get("error"):
                    where = getattr(rec, "where", "")
                    log.error(f"{where}: {out['error']}" if where and not out["error"].startswith(where)
                              else out["error"])
                writer.write(out)
                progress.update(task, advance=1, last=rid)
    except KeyboardInterrupt:
        writer.abort()
        raise SystemExit(130)
    writer.close()
    if writer.n_failed:
        log.info(f"{stage}: {writer.n_ok} ok, {writer.n_failed} failed")
    return writer.exit_code()
