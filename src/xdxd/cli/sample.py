"""xdxd-sample: candidate structures for each problem record.

    xdxd-prep x.cif --dmin 2.0 | xdxd-sample --time-budget 60 | xdxd-refine      (diffusion)
    xdxd-prep x.hkl --ins x.ins --molecule 'OC(=O)c1ccccc1' | xdxd-sample | xdxd-refine  (molecule)
    xdxd-prep x.cif --dmin 1.0 | xdxd-sample --method dualspace --samples 8 | xdxd-refine
"""
from __future__ import annotations

from typing import Optional

import typer

from xdxd.cli import common
from xdxd.solve import DEFAULT_SAMPLES, METHODS, resolve_method, sample_record

app = typer.Typer(add_completion=False, help=__doc__)

Method = common.choices("Method", "auto", *METHODS)
# the options each method takes (an option of another method is an error for it)
METHOD_OPTIONS = {"dualspace": ("trials", "cycles"), "molecule": ("rounds", "steps"),
                  "diffusion": ("steps", "rounds", "guidance", "weights", "prior")}


@app.command()
def sample(
    ctx: typer.Context,
    inputs: list[str] = typer.Argument(None, help="Problem records (JSON lines); - or none is stdin."),
    method: Method = typer.Option("auto", "--method", "-m",
                                  help="Sampler: molecule (the record names its molecules: xdxd-prep --molecule), "
                                       "diffusion (composition only, the trained model), dualspace (atomic "
                                       "resolution), or auto: molecule when the record names molecules, else diffusion."),
    samples: Optional[int] = typer.Option(None, "--samples", "-n", min=1,
                                          help="Candidates per record (dualspace, molecule: distinct candidates to emit, default 8; diffusion: structures per batch, default 64)."),
    trials: Optional[int] = typer.Option(None, "--trials", min=1, help="Random starts at most (dualspace; default 1024)."),
    cycles: Optional[int] = typer.Option(None, "--cycles", min=1, help="Recycling cycles per trial (dualspace; default 40)."),
    time_budget: Optional[float] = typer.Option(None, "--time-budget", min=0.0,
                                                help="Seconds per record after which no new batch starts."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1,
                                        help="Denoising steps from noise (diffusion; default 60); optimisation steps per round (molecule)."),
    rounds: Optional[int] = typer.Option(None, "--rounds", min=0,
                                         help="Search rounds around the best after sampling (diffusion; default 8); rounds of the population (molecule). "
                                              "Given, the clock is never read: --time-budget is ignored, and a seed and N give the same candidates on every run."),
    guidance: Optional[float] = typer.Option(None, "--guidance", min=0.0,
                                             help="Weight of the |F| misfit gradient (diffusion; default 1)."),
    prior: bool = typer.Option(True, "--prior/--no-prior",
                               help="Use the network (diffusion); --no-prior: data guidance and the same search alone."),
    weights: Optional[str] = typer.Option(None, "--weights",
                                          help="Diffusion weights: a .safetensors file or a folder holding xdxd-diffusion.safetensors (default: $XDXD_WEIGHTS, else the installed package's, else the checkout's weights/)."),
    output: str = common.OutputOpt,
    seed: int = common.SeedOpt,
    device: str = common.DeviceOpt,
    threads: int = common.ThreadsOpt,
    quiet: bool = common.QuietOpt,
    version: bool = common.VersionOpt,
    time_budget_s: Optional[float] = common.OldTimeBudgetOpt,
) -> None:
    """Sample candidate structures for each problem record (adds `candidates`)."""
    time_budget = common.renamed(ctx, "time_budget", time_budget, "--time-budget-s", time_budget_s)
    log = common.Log(quiet)
    common.set_threads(threads)
    dev = common.resolve_device(device)
    given = {k: v for k, v in (("trials", trials), ("cycles", cycles), ("steps", steps),
                               ("rounds", rounds), ("guidance", guidance), ("weights", weights),
                               ("prior", None if prior else False)) if v is not None}
    if rounds is not None and time_budget is not None:
        log.info(f"warning: --rounds {rounds} fixes the work done: --time-budget {time_budget:g} is ignored")
        time_budget = None
    if method.value != "auto":
        wrong = sorted(set(given) - set(METHOD_OPTIONS[method.value]))
        if wrong:
            log.error(f"--method {method.value} takes no {', '.join('--' + w for w in wrong)}")
            raise typer.Exit(2)

    def work(rec: dict) -> dict:
        name = resolve_method(rec, method.value)
        opts = {k: v for k, v in given.items() if k in METHOD_OPTIONS[name]}
        if name == "molecule" and not quiet:  # a line per round of the search
            opts["progress"] = log.info
        out = sample_record(rec, method=name, samples=samples or DEFAULT_SAMPLES[name], seed=seed,
                            device=dev, time_budget_s=time_budget, **opts)
        best = out["candidates"][0] if out["candidates"] else None
        if best:
            log.info(f"{out.get('id', '?')}: {name}, best R1 {best['r1']:.3f}")
        return out

    recs = common.read_input_records(inputs or [], log)
    raise typer.Exit(common.process_stream(recs, work, output, log, "sample"))


def main() -> None:
    app()
