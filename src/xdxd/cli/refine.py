"""xdxd-refine: least-squares refinement of sampled candidates; writes the solution.

    xdxd-prep x.cif --dmin 1.0 | xdxd-sample | xdxd-refine > solved.jsonl
    xdxd-refine solved.jsonl --format cif -o solved.cif
    xdxd-refine solved.jsonl --format res -o resfiles/      # one DIR/<id>.res per record
    xdxd-prep model.cif | xdxd-refine --from reference       # validate on the known model
"""
from __future__ import annotations

import os
import sys
import time
from typing import List, Optional

import typer

from xdxd import records
from xdxd.cli import common

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, help=__doc__)

Format = common.choices("Format", "jsonl", "cif", "res")
Source = common.choices("Source", "auto", "candidates", "solution", "reference")


@app.command()
def refine(
    inputs: Optional[List[str]] = typer.Argument(None, help="Records (JSON lines); - or none is stdin."),
    fmt: Format = typer.Option(Format.jsonl, "--format", "-f",
                               help="jsonl: records; cif: one CIF 1.1 block per record; "
                                    "res: SHELX .res (one file per record when -o is a folder)."),
    source: Source = typer.Option(Source.auto, "--from",
                                  help="What to refine: candidates (auto: if present, else solution), "
                                       "the solution, or the reference model (validation)."),
    cycles: int = typer.Option(20, "--cycles", min=0, help="Least-squares cycles for the final model."),
    top: int = typer.Option(5, "--top", min=1, help="Candidates (best sampler R1 first) refined and ranked."),
    swap: Optional[bool] = typer.Option(None, "--swap/--no-swap",
                                        help="Greedy element swaps (C/N/O, S/Cl, ...) with re-refinement "
                                             "(default: on; off with --from reference)."),
    restraints: bool = typer.Option(True, "--restraints/--no-restraints",
                                    help="Anti-bump restraints between non-H atoms."),
    bonds: Optional[bool] = typer.Option(None, "--bonds/--no-bonds",
                                         help="Restrain every bond to the nearest tabulated length (sigma 0.03 Å), "
                                              "as DFIX does (default: on for data with d_min ≥ 1.5 Å)."),
    riding_h: Optional[bool] = typer.Option(None, "--riding-h/--no-riding-h",
                                            help="Add riding H to a model without H, counts from the "
                                                 "composition, and judge swaps with them (default: on, "
                                                 "unless metrics.hydrogens_in_data is false)."),
    refine_uiso: bool = typer.Option(True, "--uiso/--no-uiso", help="Refine Uiso (Å²) per atom."),
    refine_hydrogens: bool = typer.Option(False, "--refine-hydrogens",
                                          help="Refine H positions and Uiso too (default: fixed)."),
    weight_a: float = typer.Option(0.1, "--weight-a", min=0.0, help="SHELXL WGHT a."),
    output: str = common.OutputOpt,
    device: str = common.DeviceOpt,
    threads: int = common.ThreadsOpt,
    quiet: bool = common.QuietOpt,
    version: bool = common.VersionOpt,
) -> None:
    """Refine each record's candidates against its data and write `solution` (R1, wR2, GooF).

    Exit code 1 if any record failed (no candidates, bad data, ...); it is passed on with `error`.
    """
    from xdxd.refine import refine_record

    log = common.Log(quiet)
    common.set_threads(threads)
    dev = common.resolve_device(device)
    opts = dict(source=source.value, swap=swap, restraints=restraints, bonds=bonds, riding_h=riding_h,
                refine_uiso=refine_uiso, refine_hydrogens=refine_hydrogens, weight_a=weight_a)

    def work(rec: dict) -> dict:
        out = refine_record(rec, cycles=cycles, device=dev, top=top, **opts)
        s = out["solution"]
        swaps = f", {len(s['swaps'])} swaps" if s.get("swaps") else ""
        if s.get("riding_h"):
            swaps += f", {s['riding_h']['placed']} riding H"
        log.info(f"{out.get('id', '?')}: R1 {s['r1']:.4f}, wR2 {s['wr2']:.4f}, GooF {s['goof']:.3f}, "
                 f"{s['n_params']} parameters, {s['n_reflections']} reflections "
                 f"({s['n_reflections'] / max(1, s['n_params']):.1f} per parameter), "
                 f"chemistry {s['chemistry']['score']:.2f}{swaps}")
        if s.get("warning"):
            log.info(f"{out.get('id', '?')}: {s['warning']}")
        return out

    recs = common.read_input_records(inputs or [], log)
    if fmt == Format.jsonl:
        raise typer.Exit(common.process_stream(recs, work, output, log, "refine"))
    raise typer.Exit(write_text_format(recs, work, fmt, output, log))


def write_text_format(recs, work, fmt: Format, output: str, log: common.Log) -> int:
    """Refine and write CIF or .res text; failed records are reported on stderr only.

    cif: all blocks in one stream (stdout or -o FILE, written atomically at the end).
    res: -o DIR/ (an existing folder, or a path ending in /) gets DIR/<id>.res and the
    reflections as DIR/<id>.hkl (HKLF 4) per record;
    otherwise the .res texts follow each other (each ends with END) on stdout or in FILE.
    """
    from xdxd.formats.write_cif import cif_text
    from xdxd.formats.write_res import hkl_text, res_text

    to_text = cif_text if fmt == Format.cif else res_text
    folder = fmt == Format.res and output != "-" and (output.endswith("/") or os.path.isdir(output))
    if folder:
        os.makedirs(output, exist_ok=True)
    texts: list[str] = []
    failed = 0
    for rec in recs:
        rid = str(rec.get("id", "?"))
        try:
            if rec.get("error"):
                raise records.RecordError(rec["error"])
            t0 = time.perf_counter()
            text = to_text(work(rec))
            log.info(f"{rid}: refined in {time.perf_counter() - t0:.1f} s")
        except KeyboardInterrupt:
            raise SystemExit(130)
        except Exception as e:  # one bad record must not stop the others
            failed += 1
            log.error(str(e) if str(e).startswith(rid) else f"{rid}: {e}")
            continue
        if folder:
            name = "".join(c if c.isalnum() or c in "-_." else "_" for c in rid) or "xdxd"
            records.atomic_write_text(os.path.join(output, f"{name}.res"), text)
            if fmt == Format.res:  # the data beside it: `shelxl name` goes on from the pair
                records.atomic_write_text(os.path.join(output, f"{name}.hkl"), hkl_text(rec))
        elif output == "-":
            sys.stdout.write(text + ("\n" if fmt == Format.cif else ""))
            sys.stdout.flush()
        else:
            texts.append(text)
    if not folder and output != "-":
        records.atomic_write_text(output, ("\n" if fmt == Format.cif else "").join(texts))
    return 1 if failed else 0


def main() -> None:
    app()


if __name__ == "__main__":
    main()
