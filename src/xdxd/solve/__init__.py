"""Structure solution: samplers that turn a problem record into candidate structures.

    from xdxd.solve import sample_record
    rec = sample_record(rec, method="dualspace", samples=8, seed=0)   # rec["candidates"]

A method is a function (rec, samples, seed, device, time_budget_s, **opts) ->
(candidates, info); register it in METHODS. Candidates are best first, each
{"atoms": [...], "r1": float, "method": str, ...} with the method's own figures of merit.
`auto` is `molecule` for a record that names its molecules and `diffusion` otherwise.
"""
from __future__ import annotations

from typing import Callable

from xdxd import records
from xdxd.solve import dualspace


def _diffusion(rec: dict, **kw) -> tuple[list[dict], dict]:
    """The diffusion model (xdxd.solve.diffusion), imported only when asked for."""
    from xdxd.solve import diffusion
    return diffusion.sample(rec, **kw)


def _molecule(rec: dict, **kw) -> tuple[list[dict], dict]:
    """The known-molecule search (xdxd.solve.molecule), imported only when asked for."""
    from xdxd.solve import molecule
    return molecule.sample(rec, **kw)


# name -> sampler
METHODS: dict[str, Callable[..., tuple[list[dict], dict]]] = {
    "dualspace": dualspace.sample,
    "diffusion": _diffusion,
    "molecule": _molecule,
}

# candidates per record when none is asked for: dualspace emits distinct ones; diffusion
# draws a population in one batch and searches around its best
DEFAULT_SAMPLES = {"dualspace": 8, "diffusion": 64, "molecule": 8}


def resolve_method(rec: dict, method: str) -> str:
    """The method that runs for a record: `auto` is molecule when the record names its
    molecules, diffusion otherwise; any other name is itself."""
    if method == "auto":
        return "molecule" if rec.get("molecules") else "diffusion"
    return method


def sample_record(rec: dict, method: str = "dualspace", samples: int = 8, seed: int = 0,
                  device: str = "cpu", time_budget_s: float | None = None, **opts) -> dict:
    """Return a copy of the problem record with `candidates` (best first) added.

    method: a key of METHODS, or "auto"; samples: how many distinct candidates to return;
    time_budget_s: stop starting new batches of trials after this many seconds;
    opts: method settings (for dualspace: trials, batch, cycles, omit, ...).
    Raises ValueError for an unknown method, records.RecordError for a bad record.
    """
    method = resolve_method(rec, method)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: auto, {', '.join(sorted(METHODS))}")
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    cands, info = METHODS[method](rec, samples=samples, seed=seed, device=device,
                                  time_budget_s=time_budget_s, **opts)
    out = dict(rec)
    out["candidates"] = cands
    # what ended the search: a fixed amount of work (a seed gives the same candidates on
    # every run) or the clock (a faster machine does more)
    limit = "rounds" if time_budget_s is None else f"time budget {time_budget_s:g} s"
    records.add_history(out, "sample", seed=seed, method=method, limit=limit, **info)
    return out
