"""The benchmark: prep -> sample -> refine -> score over a folder of CIFs, timed.

|F| are simulated from each CIF's model at each d_min (data="simulate"), or, for a
folder of measured data sets (benchmarks/measured, data="measured"), the measured
reflections are cut at d_min and the data set's model is the reference.

For every structure, resolution and method, the four stages run in-process on one
record, as the pipe `xdxd-prep | xdxd-sample | xdxd-refine | xdxd-score` would run
them (see bin/bench), and the result is the scored record with a `bench` row added:

    {"id", "class", "sg", "n_atoms", "dmin", "method", "samples", "seed", "time_budget_s",
     "device", "data", "seconds", "seconds_total", "stage_s": {...}, "peak_rss_MB", "base_rss_MB", "isolated",
     "matched_loose", "matched_strict", "matched_sites", "rms_loose", "rmsd_A", "r1", "best_candidate",
     "n_candidates_matched_loose", "error"}

seconds is the wall time a user pays to solve the structure, prep + sample + refine
(imports are done before the clock starts); seconds_total adds scoring; stage_s splits
it. Memory is `resource.getrusage(RUSAGE_SELF).ru_maxrss`, the peak resident set of the
process that ran the structure: with isolate=True each structure runs in a fresh
spawned process, so it is that structure's peak (interpreter, torch and pymatgen
included; base_rss_MB is the peak after those imports, before the structure). Without
isolation it is the running peak of the bench process. On CUDA, cuda_peak_MB is
torch.cuda.max_memory_allocated.

    from xdxd.bench import BenchConfig, run_bench, summarize_bench
    rows = [rec["bench"] for rec in run_bench(BenchConfig(dmins=[1.0, 2.0]))]
    print(markdown_table(summarize_bench(rows)))
"""
from __future__ import annotations

import csv
import importlib
import multiprocessing as mp
import multiprocessing.connection
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from xdxd import records

DEFAULT_FOLDER = "../shared/benchmarks/cod-dev"


# ---------------------------------------------------------------------------
# the structures

@dataclass
class Entry:
    """One structure of the benchmark set (a row of index.tsv, or a bare CIF)."""
    id: str
    path: str
    cls: str | None = None       # organic, metal-organic, inorganic (index.tsv)
    sg: str | None = None        # H-M symbol
    n_atoms: int | None = None   # non-H atoms in the asymmetric unit


def select_structures(folder: str = DEFAULT_FOLDER, classes: list[str] | None = ("organic",),
                      max_atoms: int | None = None, ids: list[str] | None = None,
                      limit: int | None = None, data: str = "simulate") -> list[Entry]:
    """The CIFs of a benchmark folder, filtered, in COD-id order.

    With an index.tsv (cod-dev's columns: cod_id, class, spacegroup_hm, n_asu_nonH)
    the class and max_atoms (non-H atoms in the asymmetric unit) filters apply; a
    folder without one yields all its *.cif and ignores those two filters.
    data="measured" (a folder like benchmarks/measured): each subfolder is one data
    set (reflections with their model, as xdxd-prep reads a folder), id = its name.
    classes=None keeps every class. ids keeps only those ids; limit keeps the first N.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{folder}: no such benchmark folder")
    index = root / "index.tsv"
    if data == "measured":
        entries = [Entry(p.name, str(p)) for p in sorted(root.iterdir()) if p.is_dir()]
    elif index.exists():
        with open(index, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        entries = [Entry(r["cod_id"], str(root / f"{r['cod_id']}.cif"), r.get("class"),
                         r.get("spacegroup_hm"), _int_or_none(r.get("n_asu_nonH"))) for r in rows]
        if classes:
            entries = [e for e in entries if e.cls in set(classes)]
        if max_atoms is not None:
            entries = [e for e in entries if e.n_atoms is not None and e.n_atoms <= max_atoms]
    else:
        entries = [Entry(p.stem, str(p)) for p in root.glob("*.cif")]
    if ids:
        wanted = set(ids)
        entries = [e for e in entries if e.id in wanted]
        missing = wanted - {e.id for e in entries}
        if missing:
            raise FileNotFoundError(f"{folder}: ids not found (or filtered out): {', '.join(sorted(missing))}")
    entries = [e for e in entries if Path(e.path).exists()]
    entries.sort(key=lambda e: (len(e.id), e.id))
    return entries[:limit] if limit else entries


def _int_or_none(text) -> int | None:
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------------------
# the stages (the real ones are imported when first called)

def prep_stage(path: str, d_min: float, seed: int, data: str = "simulate") -> dict:
    """Simulate a problem record from a model CIF at d_min Å (the CIF stays as reference);
    data="measured": read the measured reflections of a data set (a folder, an .hkl or a
    CIF with reflections) cut at d_min Å, its model as reference (xdxd-prep --data measured)."""
    if data != "simulate":
        from xdxd.prep import PrepOptions, prepare
        recs = list(prepare([path], PrepOptions(d_min_A=d_min, data=data, seed=seed)))
        if not recs:
            raise ValueError(f"{path}: no data set found")
        if recs[0].get("error"):
            raise ValueError(recs[0]["error"])
        return recs[0]
    from xdxd.prep import prepare_from_model_cif
    out = prepare_from_model_cif(path, d_min=d_min)
    if isinstance(out, dict):
        return out
    recs = list(out)  # a CIF with several data blocks: the benchmark takes the first
    if not recs:
        raise ValueError(f"{path}: no structure in the file")
    return recs[0]


UNCAPPED_TRIALS = 10**6  # dual-space trials when a time budget bounds the search instead


def sample_stage(rec: dict, method: str, samples: int, seed: int,
                 time_budget_s: float | None, device: str) -> dict:
    """Candidates from the sampler `method`, within time_budget_s seconds when given.
    With a budget the dual-space sampler runs new trials until the budget is spent (its
    cap of 1024 trials takes ~10 s at 2 Å), so that methods compare at equal wall time."""
    from xdxd.solve import sample_record
    opts = {"trials": UNCAPPED_TRIALS} if method == "dualspace" and time_budget_s else {}
    return sample_record(rec, method=method, samples=samples, seed=seed, device=device,
                         time_budget_s=time_budget_s, **opts)


def refine_stage(rec: dict, device: str) -> dict:
    """Refine the candidates against the data and keep the best as `solution`."""
    from xdxd.refine import refine_record
    return refine_record(rec, device=device)


def molecules_stage(rec: dict) -> dict:
    """The record with `molecules` perceived from its reference (molecule.perceive: SMILES
    and counts only; the search never sees the reference's coordinates)."""
    from xdxd.crystal.symmetry import make_cell, spacegroup_from_record, symops
    from xdxd.molecule.perceive import molecules_of
    atoms = records.atoms_to_arrays((rec.get("reference") or {}).get("atoms") or [])
    if not len(atoms):
        raise ValueError("no reference atoms to read the molecules from")
    ops = symops(spacegroup_from_record(rec["spacegroup"]))
    out = dict(rec)
    out["molecules"] = molecules_of(atoms.elements, atoms.frac, make_cell(rec["cell"]), ops, atoms.occ)
    return out


def score_stage(rec: dict) -> dict:
    from xdxd.score import score_record
    return score_record(rec)


@dataclass
class Pipeline:
    """The four stages as plain functions, replaceable (tests inject a fake sampler).

    prep(path, d_min, seed[, data]) -> record (data only when not "simulate"); sample(record, method, samples, seed, time_budget_s,
    device) -> record; refine(record, device) -> record; score(record) -> record. preload: modules imported
    before the clock starts, so timings do not include import time. With isolation the
    functions must be importable module-level functions (they are pickled by name).
    """
    prep: Callable = prep_stage
    sample: Callable = sample_stage
    refine: Callable = refine_stage
    score: Callable = score_stage
    preload: tuple[str, ...] = ("torch", "pymatgen.core", "xdxd.prep", "xdxd.solve",
                                "xdxd.refine", "xdxd.score")


# ---------------------------------------------------------------------------
# one structure

@dataclass
class Task:
    """One run: a structure at one resolution with one method."""
    entry: Entry
    dmin: float                        # Å
    method: str
    samples: int = 8
    seed: int = 0
    time_budget_s: float | None = None  # per structure, given to the sampler
    threads: int = 0                    # torch CPU threads (0: leave torch's default)
    device: str = "cpu"                 # torch device for sample and refine
    data: str = "simulate"              # simulate from the model, or "measured" reflections
    molecules: bool = False             # name the reference's molecules in the record


def run_one(task: Task, pipeline: Pipeline | None = None, isolated: bool = False) -> dict:
    """Run prep -> sample -> refine -> score on one structure; never raises.

    Returns the last record (scored, or with `error` naming the stage that failed)
    with rec["bench"], the row described in the module docstring.
    """
    pipeline = pipeline or Pipeline()
    if task.threads > 0:
        _set_torch_threads(task.threads)
    for name in pipeline.preload:  # a missing module fails later, in its stage, with its message
        try:
            importlib.import_module(name)
        except Exception:
            pass
    cuda = task.device.startswith("cuda") and _cuda_reset()
    base_rss = _maxrss_MB()
    e = task.entry
    stage_s: dict[str, float] = {}
    rec: dict = {"schema": records.SCHEMA, "id": e.id}
    def prep(_):
        out = (pipeline.prep(e.path, task.dmin, task.seed) if task.data == "simulate"
               else pipeline.prep(e.path, task.dmin, task.seed, data=task.data))
        return molecules_stage(out) if task.molecules else out

    steps = [
        ("prep", prep),
        ("sample", lambda r: pipeline.sample(r, task.method, task.samples, task.seed,
                                             task.time_budget_s, task.device)),
        ("refine", lambda r: pipeline.refine(r, task.device)),
        ("score", pipeline.score),
    ]
    t_start = time.perf_counter()
    for stage, fn in steps:
        t0 = time.perf_counter()
        try:
            out = fn(rec)
            if not isinstance(out, dict):
                raise TypeError(f"{stage} returned {type(out).__name__}, not a record")
            rec = out
        except Exception as exc:
            msg = str(exc) or type(exc).__name__
            rec = records.error_record(e.id, f"{e.id}: {stage}: {msg}", rec)
        stage_s[stage] = round(time.perf_counter() - t0, 3)
        if rec.get("error"):
            break
    seconds_total = time.perf_counter() - t_start
    seconds = sum(v for k, v in stage_s.items() if k != "score")
    rec.setdefault("timing_s", {}).update(stage_s)
    m = rec.get("metrics") or {}
    ref_atoms = (rec.get("reference") or {}).get("atoms") or []
    sg = (rec.get("spacegroup") or {}).get("hm") if isinstance(rec.get("spacegroup"), dict) else None
    rec["bench"] = {
        "id": e.id, "class": e.cls, "sg": e.sg or sg,
        "n_atoms": e.n_atoms if e.n_atoms is not None
        else sum(a.get("element") not in ("H", "D") for a in ref_atoms) or None,
        "dmin": task.dmin, "method": task.method, "samples": task.samples, "seed": task.seed,
        "time_budget_s": task.time_budget_s, "device": task.device, "data": task.data,
        "seconds": round(seconds, 3), "seconds_total": round(seconds_total, 3),
        "stage_s": stage_s,
        "peak_rss_MB": round(_maxrss_MB(), 1), "base_rss_MB": round(base_rss, 1),
        "isolated": isolated,
        "matched_loose": bool(m.get("matched_loose")), "matched_strict": bool(m.get("matched_strict")),
        "matched_sites": bool(m.get("matched_sites")),
        "rms_loose": m.get("rms_loose"), "rmsd_A": m.get("rmsd_A"), "r1": m.get("r1"),
        "reflections_per_parameter": m.get("reflections_per_parameter"), "parameters": m.get("parameters"),
        "best_candidate": m.get("best_candidate"),
        "n_candidates_matched_loose": m.get("n_candidates_matched_loose"),
        "molecule_counts": [mol.get("count") for mol in rec.get("molecules") or []] or None,
        "error": rec.get("error"),
    }
    if cuda:
        import torch
        rec["bench"]["cuda_peak_MB"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return rec


def _maxrss_MB() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB, macOS bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def _set_torch_threads(n: int) -> None:
    import torch
    torch.set_num_threads(n)


def _cuda_reset() -> bool:
    """Reset torch's CUDA peak counter if torch is loaded and CUDA is up; True if so."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return False
    torch.cuda.reset_peak_memory_stats()
    return True


# ---------------------------------------------------------------------------
# the whole benchmark

@dataclass
class BenchConfig:
    """What to run. dmins in Å; time_budget_s per structure and method (sampler's budget)."""
    folder: str = DEFAULT_FOLDER
    classes: list[str] | None = field(default_factory=lambda: ["organic"])
    max_atoms: int | None = None        # non-H atoms in the asymmetric unit
    ids: list[str] | None = None
    limit: int | None = None
    dmins: list[float] = field(default_factory=lambda: [2.0])
    methods: list[str] = field(default_factory=lambda: ["dualspace"])
    samples: int | None = None           # per structure; None: the method's default
    seed: int = 0
    time_budget_s: float | None = None
    jobs: int = 1                        # structures run at the same time
    threads: int = 0                     # torch threads per job (0: cores / jobs)
    device: str = "cpu"                  # torch device for sample and refine
    isolate: bool = True                 # each structure in a fresh process (memory, crashes)
    hard_timeout_s: float | None = None  # kill a structure after this long (isolate only)
    data: str = "simulate"               # simulate |F| from each model, or "measured" data sets
    molecules_from_reference: bool = False  # name each reference's molecules (SMILES only)


def make_tasks(cfg: BenchConfig, entries: list[Entry]) -> list[Task]:
    """Tasks in run order: per resolution, per structure, every method back to back
    (so load from other work on the machine hits the methods alike)."""
    threads = cfg.threads or max(1, (os.cpu_count() or 1) // max(1, cfg.jobs))
    from xdxd.solve import DEFAULT_SAMPLES
    return [Task(e, float(d), m, cfg.samples or DEFAULT_SAMPLES.get(m, 8), cfg.seed,
                 cfg.time_budget_s, threads, cfg.device, cfg.data, cfg.molecules_from_reference)
            for d in cfg.dmins for e in entries for m in cfg.methods]


def run_bench(cfg: BenchConfig, pipeline: Pipeline | None = None,
              entries: list[Entry] | None = None) -> Iterator[dict]:
    """Yield each task's scored record (with its `bench` row) as it finishes.

    cfg.jobs runs that many structures at once, each in its own process; without
    isolation everything runs here, one at a time.
    """
    if entries is None:
        entries = select_structures(cfg.folder, cfg.classes, cfg.max_atoms, cfg.ids, cfg.limit,
                                    cfg.data)
    tasks = make_tasks(cfg, entries)
    if cfg.isolate:
        yield from _run_isolated(tasks, pipeline or Pipeline(), max(1, cfg.jobs), cfg.hard_timeout_s)
    else:
        for task in tasks:
            yield run_one(task, pipeline)


def _child(task: Task, pipeline: Pipeline, conn) -> None:
    rec = run_one(task, pipeline, isolated=True)
    conn.send(rec)
    conn.close()


def _failed(task: Task, message: str) -> dict:
    e = task.entry
    rec = records.error_record(e.id, f"{e.id}: {message}")
    rec["bench"] = {"id": e.id, "class": e.cls, "sg": e.sg, "n_atoms": e.n_atoms,
                    "dmin": task.dmin, "method": task.method, "samples": task.samples,
                    "seed": task.seed, "time_budget_s": task.time_budget_s, "device": task.device,
                    "data": task.data, "seconds": None, "seconds_total": None, "stage_s": {}, "peak_rss_MB": None, "base_rss_MB": None,
                    "isolated": True, "matched_loose": False, "matched_strict": False,
                    "matched_sites": False,
                    "rms_loose": None, "rmsd_A": None, "r1": None, "best_candidate": None,
                    "n_candidates_matched_loose": None, "error": rec["error"]}
    return rec


def _run_isolated(tasks: list[Task], pipeline: Pipeline, jobs: int,
                  hard_timeout_s: float | None) -> Iterator[dict]:
    """Each task in its own spawned process, `jobs` at a time; a crash or a kill
    (out of memory, hard timeout) becomes that task's error record."""
    ctx = mp.get_context("spawn")
    pending = list(tasks)
    running: dict = {}  # receiving end -> (process, task, start time)
    try:
        while pending or running:
            while pending and len(running) < jobs:
                task = pending.pop(0)
                recv, send = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_child, args=(task, pipeline, send))
                proc.start()
                send.close()
                running[recv] = (proc, task, time.monotonic())
            for conn in mp.connection.wait(list(running), timeout=1.0):
                proc, task, _ = running.pop(conn)
                try:
                    rec = conn.recv()
                except EOFError:  # died without an answer
                    proc.join()
                    rec = _failed(task, f"worker died (exit code {proc.exitcode}; "
                                        "-9 is usually out of memory)")
                conn.close()
                proc.join()
                yield rec
            if hard_timeout_s:
                now = time.monotonic()
                for conn, (proc, task, t0) in list(running.items()):
                    if now - t0 > hard_timeout_s:
                        proc.kill()
                        proc.join()
                        conn.close()
                        del running[conn]
                        yield _failed(task, f"killed after the hard timeout of {hard_timeout_s:.0f} s")
    finally:
        for conn, (proc, _, _) in running.items():
            proc.kill()
            proc.join()
            conn.close()


# ---------------------------------------------------------------------------
# summaries

def summarize_bench(rows: list[dict]) -> list[dict]:
    """One summary per (dmin, method), in first-seen order.

    Each: dmin, method, n, n_error, solved_loose, solved_strict (fractions of n),
    found_loose (some candidate matched loose), mean_rms_loose and mean_rmsd_A (Å) over
    loose-matched structures, median_r1, median_seconds (prep + sample + refine per structure),
    median_sample_s, max_peak_rss_MB, median_peak_rss_MB.
    """
    import statistics

    from xdxd.score import summarize

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dmin"], r["method"]), []).append(r)
    out = []
    for (dmin, method), rs in groups.items():
        metrics = [None if r.get("error") else _row_metrics(r) for r in rs]
        s = summarize(metrics, [r.get("seconds") for r in rs])
        rss = [r["peak_rss_MB"] for r in rs if r.get("peak_rss_MB") is not None]
        sample_s = [r["stage_s"]["sample"] for r in rs if "sample" in (r.get("stage_s") or {})]
        out.append({"dmin": dmin, "method": method, **s,
                    "median_sample_s": round(statistics.median(sample_s), 3) if sample_s else None,
                    "max_peak_rss_MB": max(rss) if rss else None,
                    "median_peak_rss_MB": round(statistics.median(rss), 1) if rss else None})
    return out


def _row_metrics(r: dict) -> dict:
    m = {k: r.get(k) for k in ("matched_loose", "matched_strict", "matched_sites", "rms_loose",
                               "rmsd_A", "r1")}
    if r.get("n_candidates_matched_loose") is not None:
        m["n_candidates_matched_loose"] = r["n_candidates_matched_loose"]
    return m


SIZE_BANDS = ((0, 10), (11, 20), (21, 30), (31, 10**6))  # non-H atoms in the asymmetric unit


def _kinds(counts: list[float] | None) -> list[str]:
    """What a structure's named molecules make it: 'general' (one molecule at a general
    position), 'special' (a molecule on a special position), 'several' (more than one
    molecule in the asymmetric unit); none without named molecules."""
    if not counts:
        return []
    out = []
    if len(counts) == 1 and abs(counts[0] - 1) < 1e-6:
        out.append("general")
    if any(abs(c - round(c)) > 1e-6 for c in counts):
        out.append("special")
    if len(counts) > 1 or sum(counts) > 1 + 1e-6:
        out.append("several")
    return out


def breakdown_table(rows: list[dict]) -> str:
    """Solved strict / n per (dmin, method) by size band and, where the rows name their
    molecules, by kind (`_kinds`; a structure can be of two kinds), as Markdown; the ids
    of the failures are in the rows."""
    bands = [f"{lo}–{hi}" if hi < 10**6 else f"> {lo - 1}" for lo, hi in SIZE_BANDS]
    bands[0] = "≤ 10"
    kinds = ("general", "special", "several")
    head = "| d_min (Å) | method | " + " | ".join(bands) + " | " + " | ".join(kinds) + " |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dmin"], r["method"]), []).append(r)

    def cell(rs: list[dict]) -> str:
        return f"{sum(bool(r.get('matched_strict')) for r in rs)}/{len(rs)}" if rs else "–"
    for (dmin, method), rs in groups.items():
        by_band = [cell([r for r in rs if r.get("n_atoms") is not None and lo <= r["n_atoms"] <= hi])
                   for lo, hi in SIZE_BANDS]
        by_kind = [cell([r for r in rs if k in _kinds(r.get("molecule_counts"))]) for k in kinds]
        lines.append(f"| {dmin:.2f} | {method} | " + " | ".join(by_band + by_kind) + " |")
    return "\n".join(lines) + "\n"


def markdown_table(summaries: list[dict]) -> str:
    """The per-(dmin, method) summaries as a Markdown table (for the README)."""
    from xdxd.score import num, pct
    head = ("| d_min (Å) | method | n | solved loose | solved strict | sites found | found loose | mean RMS | "
            "mean RMSD (Å) | median R1 | median s/structure | median sample s | peak RSS (MB) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for s in summaries:
        lines.append(f"| {s['dmin']:.2f} | {s['method']} | {s['n']} | {pct(s['solved_loose'])} | "
                     f"{pct(s['solved_strict'])} | {pct(s.get('sites_found'))} | {pct(s['found_loose'])} | "
                     f"{num(s['mean_rms_loose'], 3)} | {num(s['mean_rmsd_A'], 3)} | "
                     f"{num(s['median_r1'], 3)} | {num(s['median_seconds'], 1)} | "
                     f"{num(s['median_sample_s'], 1)} | {num(s['max_peak_rss_MB'], 0)} |")
    return "\n".join(lines) + "\n"

