"""xdxd-prep: input files -> problem records (JSON lines), measured or simulated.

    xdxd-prep 1000007.cif --dmin 2.0 > problem.jsonl             # simulate from a model CIF
    xdxd-prep data.hkl --ins data.ins --dmin 2.0 -o problem.jsonl  # measured SHELX data
    xdxd-prep ../shared/benchmarks/measured/l-alanine --dmin 0     # a folder, all resolution
"""
from __future__ import annotations

import math
import sys
from typing import List, Optional

import typer

from xdxd.cli.common import Log, OutputOpt, QuietOpt, SeedOpt, VersionOpt, choices, process_stream

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

DataKind = choices("DataKind", "auto", "simulate", "measured")


def _cell(text: Optional[str]) -> Optional[list]:
    if text is None:
        return None
    try:
        cell = [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        cell = []
    if len(cell) != 6 or not all(math.isfinite(v) and v > 0 for v in cell):
        raise typer.BadParameter("six positive numbers: 'a b c alpha beta gamma' (Å, °)",
                                 param_hint="--cell")
    return cell


def _check_spacegroup(text: str) -> None:
    from xdxd.prep import normalize_spacegroup
    from xdxd.crystal.symmetry import SpaceGroupError, find_spacegroup
    try:
        find_spacegroup(normalize_spacegroup(text))
    except (SpaceGroupError, RuntimeError, ValueError):
        raise typer.BadParameter(f"unknown space group {text!r} (H-M such as 'P 21/c', Hall, "
                                 "or number)", param_hint="--spacegroup")


@app.command()
def prep(
    inputs: Optional[List[str]] = typer.Argument(
        None, help="Model CIFs, SHELX .hkl (HKLF 4) or Tonto .hkl, hkl-CIFs, .mtz, .res/.ins, "
                   "folders (their *.cif, *.hkl, *.mtz) or - for stdin."),
    output: str = OutputOpt,
    dmin: float = typer.Option(2.0, "--dmin", min=0.0,
                               help="Resolution limit d_min in Å: simulate to it, or drop measured "
                                    "reflections beyond it (0: keep all measured data)."),
    data: DataKind = typer.Option(DataKind.auto, "--data",
                                  help="auto: measured reflections when the input has them, else "
                                       "simulate from its atoms; simulate: always simulate; "
                                       "measured: never simulate."),
    biso: Optional[float] = typer.Option(None, "--biso", min=0.0,
                                         help="Simulate with this B in Å² for every atom "
                                              "(instead of the model's Uiso/Uaniso)."),
    noise: float = typer.Option(0.0, "--noise", min=0.0,
                                help="Relative Gaussian noise on simulated |F|: sigma = noise*|F| "
                                     "+ 0.5 % of mean |F| (e.g. 0.03)."),
    seed: int = SeedOpt,
    hydrogens_in_data: bool = typer.Option(True, "--hydrogens-in-data/--no-hydrogens-in-data",
                                           help="Let H atoms of the model contribute to simulated |F|."),
    wavelength: Optional[float] = typer.Option(
        None, "--wavelength", min=0.0, help="X-ray wavelength in Å (default: the file's, else 0.71073, Mo Kα)."),
    formula: Optional[str] = typer.Option(None, "--formula",
                                          help="Asymmetric-unit contents, e.g. C12H22O11 (Z'=1: the "
                                               "molecule). Non-H elements become the composition "
                                               "to solve, H the 'hydrogens' count."),
    molecule: Optional[List[str]] = typer.Option(
        None, "--molecule", help="A molecule in the crystal (repeatable): SMILES or .mol/.sdf/.mol2 file, "
                                 "optionally *COUNT per asymmetric unit ('c1ccccc1*0.5', 'O*2'). "
                                 "xdxd-sample then searches its position, orientation and torsions."),
    cell: Optional[str] = typer.Option(
        None, "--cell", help="Unit cell 'a b c alpha beta gamma' in Å and °; overrides the file's."),
    spacegroup: Optional[str] = typer.Option(
        None, "--spacegroup", help="Space group (H-M such as 'P 21 21 21', Hall, or number); overrides the file's."),
    model: Optional[str] = typer.Option(None, "--model", "--ins",
                                        help="Model file (.res, .ins or CIF) for measured "
                                             "reflections: cell, symmetry, composition, reference. "
                                             "Default: a .res/.ins/.cif next to the .hkl."),
    columns: Optional[str] = typer.Option(
        None, "--columns", help="MTZ columns 'VALUE,SIGMA', e.g. 'IMEAN,SIGIMEAN' or 'FP,SIGFP' "
                                "(default: first I, else F)."),
    quiet: bool = QuietOpt,
    version: bool = VersionOpt,
) -> None:
    """Turn structure models and measured reflections into xdxd problem records.

    Measured reflections are cut at --dmin and merged (equivalents and Friedel
    mates); absences and flagged records (sigma <= 0) are dropped; intensities
    become |F| by French-Wilson. A model without reflections gives |F|
    simulated to --dmin and stays in the record as `reference`.
    Exit code 1 if any input failed, 2 on a usage error. See man/xdxd-prep.1.md.
    """
    from xdxd.prep import PrepOptions, plan, run_task_or_error

    if not inputs and sys.stdin.isatty():
        raise typer.BadParameter("no input: give files, folders, or - to read stdin",
                                 param_hint="INPUTS")
    if spacegroup is not None:
        _check_spacegroup(spacegroup)

    opts = PrepOptions(d_min_A=dmin, data=data.value, biso=biso, noise=noise, seed=seed,
                       hydrogens_in_data=hydrogens_in_data, wavelength_A=wavelength,
                       formula=formula, cell=_cell(cell), spacegroup=spacegroup, model=model,
                       columns=columns, molecules=tuple(molecule or ()))
    log = Log(quiet)
    tasks = plan(inputs or [], opts)
    code = process_stream(tasks, lambda t: run_task_or_error(t, opts), output, log, "prep",
                          total=len(tasks))
    raise typer.Exit(code)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
