"""Inputs -> problem records: measured reflections merged to amplitudes, or amplitudes
simulated from a model.

    from xdxd.prep import PrepOptions, prepare
    for rec in prepare(["iam.hkl"], PrepOptions(d_min_A=2.0)):   # error records included
        ...
    recs = prepare_from_model_cif("1000007.cif", d_min=2.0)        # always simulates

What each input gives (see man/xdxd-prep.1.md):

| input | data | cell, space group, composition, reference from |
|---|---|---|
| model CIF (atoms, no reflections) | simulated to d_min | the CIF |
| CIF with `_shelx_hkl_file` or a `_refln` loop | measured, merged | the block (its atoms, or `_shelx_res_file`) |
| SHELX `.hkl` (HKLF 4) or Tonto `.hkl` | measured, merged | `--model`, else a companion `.res`/`.ins`/`.cif` next to it |
| `.mtz` | measured, merged | the MTZ (cell, symmetry), `--model` for atoms |
| `.res`/`.ins` | simulated | the file |

`data="simulate"` forces simulation from a CIF that also carries reflections, and from
the model of an .hkl or .mtz (companion or `model`) instead of its reflections;
`data="measured"` refuses to simulate. Overrides (`cell`, `spacegroup`, `formula`,
`wavelength_A`) win over what files say and supply what they lack.

Simulation: every unique reflection to d_min (gemmi's reciprocal ASU of the Laue class,
Friedel mates merged, systematic absences left out), |F| from the crystal core with the
model's Uiso/Uaniso (or one B for all atoms), H atoms included unless asked otherwise;
optional Gaussian noise on |F| with sigma = noise x |F| + a floor of 0.5 % of mean |F|.
Noise-free data carry sigma = 1 % of |F| + the same floor, so that weights stay finite.
"""
from __future__ import annotations

import math
import os
import re
import sys
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable, Iterator

import gemmi
import numpy as np

from xdxd import records
from xdxd.crystal.dataset import simulate as simulate_data
from xdxd.crystal.structure_factors import inverse_d2
from xdxd.crystal.symmetry import (SpaceGroupError, find_spacegroup, stabilizer_order,
                                   spacegroup_to_record, symops)
from xdxd.formats import hkl_cif
from xdxd.formats.adp import b_to_u
from xdxd.formats.cif_model import has_atoms, model_from_block, parse_formula, read_cif_document
from xdxd.formats.merge import completeness, merge
from xdxd.formats.mtz import read_mtz
from xdxd.formats.reflections import Observations
from xdxd.formats.shelx import read_hkl_text, read_ins_text
from xdxd.formats.structure import CrystalModel, match_cell_setting
from xdxd.formats.tonto import is_tonto, read_tonto_text
from xdxd.molecule.spec import check_contents, molecules_contents, parse_spec
from xdxd.records import RecordError

MO_KALPHA_A = 0.71073
DATA_CHOICES = ("auto", "simulate", "measured")
_HYDROGEN = ("H", "D")


@dataclass
class PrepOptions:
    """Settings of one prep run (the command-line options, one for one)."""
    d_min_A: float = 2.0              # keep/simulate reflections with d >= d_min (Å); 0 keeps all measured
    data: str = "auto"                # auto | simulate | measured
    biso: float | None = None         # simulate with this B (Å²) for every atom
    noise: float = 0.0                # relative Gaussian noise on simulated |F|
    seed: int = 0                     # noise seed (mixed with the record id)
    hydrogens_in_data: bool = True    # H atoms contribute to simulated |F|
    wavelength_A: float | None = None  # override; default from the file, else Mo Ka
    formula: str | None = None        # asymmetric-unit contents, e.g. "C12H22O11"
    molecules: tuple = ()             # --molecule specs: SMILES or .mol/.sdf/.mol2, optional *COUNT
    cell: list[float] | None = None   # a b c (Å) alpha beta gamma (°)
    spacegroup: str | None = None     # H-M, Hall or number
    model: str | None = None          # model file (.res/.ins/.cif) for measured reflections
    columns: str | None = None        # MTZ "VALUE,SIGMA"


# ---------------------------------------------------------------------------
# public entry points

def prepare(paths: Iterable[str], opts: PrepOptions) -> Iterator[dict]:
    """Records for every input (files, folders, '-'); bad inputs give error records."""
    for task in plan(paths, opts):
        yield task if task.get("error") else run_task_or_error(task, opts)


def prepare_from_model_cif(path: str, d_min: float = 2.0, **options) -> list[dict]:
    """Simulated problem records, one per data block with atoms (raises RecordError)."""
    opts = PrepOptions(d_min_A=d_min, data="simulate", **options)
    doc = read_cif_document(path)
    out = [simulate(_resolved(model_from_block(b, path), opts), opts)
           for b in doc if has_atoms(b)]
    if not out:
        raise RecordError(f"{path}: no data block with atom sites")
    for rec in out:
        records.add_history(rec, "prep", opts.seed)
    return out


def plan(paths: Iterable[str], opts: PrepOptions) -> list[dict]:
    """One small task record per problem ({id, source, block?}); unreadable inputs as errors.

    Folders contribute their *.cif, *.hkl and *.mtz files; in a folder with SHELX or Tonto
    .hkl files, the CIF that is an .hkl's companion model, and any CIF without reflections
    of its own, are taken as models, not as problems of their own. Ids repeated
    in one run (two folders with an iam.hkl) are prefixed with the folder name.
    """
    if opts.data not in DATA_CHOICES:
        raise ValueError(f"data must be one of {DATA_CHOICES}, not {opts.data!r}")
    tasks = []
    for path in _expand(list(paths) or ["-"]):
        try:
            tasks.extend(_tasks_of(path, opts))
        except (RecordError, OSError, ValueError) as e:
            rid = _stem(path)
            tasks.append(records.error_record(rid, _message({"source": path}, e),
                                              {"schema": records.SCHEMA, "id": rid, "source": path}))
    seen: dict[str, int] = {}
    for t in tasks:
        seen[t["id"]] = seen.get(t["id"], 0) + 1
    for t in tasks:
        if seen[t["id"]] > 1 and t.get("source", "-") != "-":
            folder = os.path.basename(os.path.dirname(os.path.abspath(t["source"])))
            t["id"] = f"{folder}/{t['id']}"
    return tasks


def run_task_or_error(task: dict, opts: PrepOptions) -> dict:
    """`run_task`, with bad input turned into an error record naming the file."""
    try:
        return run_task(task, opts)
    except Exception as e:  # whatever a bad file makes a reader raise, the record names the file
        return records.error_record(task["id"], _message(task, e),
                                    {"schema": records.SCHEMA, "id": task["id"], "source": task["source"]})


def run_task(task: dict, opts: PrepOptions) -> dict:
    """Build the record of one task from `plan` (raises RecordError on bad input)."""
    path, kind = task["source"], task["kind"]
    if kind == "cif":
        block = _block(path, task["block"])
        model = model_from_block(block, path)
        if opts.data != "simulate" and hkl_cif.has_reflections(block):
            obs = hkl_cif.observations_from_block(block, path)
            if model.atoms is None:  # the embedded .res may hold what the block lacks
                res = hkl_cif.res_model_from_block(block, path)
                if res is not None:
                    model = _fill(model, res)
            reference = model
            if opts.model:
                reference = _read_model_file(opts.model)
                model = _fill(model, reference)
            rec = measured(_resolved(model, opts), obs, opts, reference.atoms)
        elif opts.data == "measured":
            raise RecordError(f"{path} (data_{block.name}): no measured reflections in the block")
        else:
            rec = simulate(_resolved(model, opts), opts)
    elif kind in ("res", "ins"):
        if opts.data == "measured":
            raise RecordError(f"{path}: a model file without reflections (use it with --model)")
        rec = simulate(_resolved(read_ins_text(_text(path), path, _stem(path)), opts), opts)
    elif kind in ("hkl", "tonto", "mtz") and opts.data == "simulate":
        companion = opts.model or task.get("companion")  # simulate from the reflections' model
        if not companion:
            raise RecordError(f"{path}: --data simulate needs a model (a companion CIF or --model)")
        rec = simulate(_resolved(_read_model_file(companion), opts), opts)
        rec["source"] = [path, companion]
    elif kind in ("hkl", "tonto"):
        text = _text(path)
        obs = read_tonto_text(text, path) if kind == "tonto" else read_hkl_text(text, path)
        companion = opts.model or task.get("companion")
        model = _read_model_file(companion) if companion else CrystalModel(id=_stem(path), source=path)
        rec = measured(_resolved(model, opts), obs, opts, model.atoms)
        if companion:
            rec["source"] = [path, companion]
    elif kind == "mtz":
        model, obs = read_mtz(path, opts.columns)
        reference = None
        if opts.model:
            ref = _read_model_file(opts.model)
            reference = ref.atoms
            model = _fill(model, ref)
        rec = measured(_resolved(model, opts), obs, opts, reference)
        if opts.model:
            rec["source"] = [path, opts.model]
    else:
        raise RecordError(f"{path}: unknown input kind {kind!r}")
    rec["id"] = task["id"]
    records.add_history(rec, "prep", opts.seed)
    return rec


# ---------------------------------------------------------------------------
# the two kinds of record

MAX_PLAUSIBLE_U = 1.0  # Å²; displacement parameters above this are a units or file error


def check_adps(source: str, uiso: np.ndarray, uaniso: np.ndarray | None) -> None:
    """Refuse displacement parameters no crystal has (e.g. U_ij written in units of 1e-4 Å²)."""
    values = [np.asarray(uiso, dtype=float)]
    if uaniso is not None:
        ua = np.asarray(uaniso, dtype=float)
        values.append(np.abs(ua[np.isfinite(ua)]))
    worst = max((float(np.max(v)) for v in values if v.size), default=0.0)
    if worst > MAX_PLAUSIBLE_U:
        raise RecordError(f"{source}: implausible displacement parameter U = {worst:g} Å² "
                          f"(> {MAX_PLAUSIBLE_U} Å²; wrong units in the file?)")


def simulate(model: CrystalModel, opts: PrepOptions) -> dict:
    """Problem record with |F| computed from the model's atoms to opts.d_min_A."""
    if model.atoms is None or len(model.atoms) == 0:
        raise RecordError(f"{model.source}: no atoms to simulate data from")
    if not opts.d_min_A or opts.d_min_A <= 0:
        raise RecordError(f"{model.source}: simulation needs --dmin > 0")
    atoms = model.atoms if opts.hydrogens_in_data else model.atoms.without_hydrogens()
    uiso, uaniso = atoms.uiso, atoms.uaniso
    if opts.biso is not None:
        uiso, uaniso = np.full(len(atoms), b_to_u(opts.biso)), None
    check_adps(model.source, uiso, uaniso)
    rng = np.random.default_rng([opts.seed, zlib.crc32(model.id.encode())])
    try:
        data = simulate_data(gemmi.UnitCell(*model.cell), model.spacegroup, atoms.elements,
                             atoms.frac, uiso, atoms.occ, opts.d_min_A, uaniso, opts.noise, rng)
    except ValueError as e:
        raise RecordError(f"{model.source}: {e}") from None
    hkl, F, sigma = data.hkl, data.F, data.sigma
    rec = _base(model, opts)
    rec["d_min_A"] = round(data.d_min_A, 4)
    rec["reflections"] = records.arrays_to_reflections(hkl, F, sigma)
    rec["reference"] = {"atoms": records.arrays_to_atoms(model.atoms)}
    rec["metrics"] = {"data": "simulated", "n_reflections": int(len(hkl)), "completeness": 1.0,
                      "noise": opts.noise, "biso": opts.biso,
                      "hydrogens_in_data": bool(opts.hydrogens_in_data)}
    _add_notes(rec["metrics"], model.notes)
    return rec


def measured(model: CrystalModel, obs: Observations, opts: PrepOptions,
             reference: records.AtomArrays | None) -> dict:
    """Problem record from measured reflections merged in the model's space group."""
    cell = gemmi.UnitCell(*model.cell)
    merged = merge(obs, model.spacegroup, cell, opts.d_min_A or None)
    d = 1.0 / np.sqrt(inverse_d2(cell, merged.hkl))
    d_min = float(d.min())
    rec = _base(model, opts)
    rec["d_min_A"] = round(d_min, 4)
    refl = records.arrays_to_reflections(merged.hkl, merged.F, merged.sigma_F)
    if merged.I is not None:  # keep the merged intensities for F²-based refinement statistics
        refl["I"] = [round(float(v), 4) for v in merged.I]
        refl["sigma_I"] = [round(float(v), 4) for v in merged.sigma_I]
    rec["reflections"] = refl
    if reference is not None and len(reference):
        rec["reference"] = {"atoms": records.arrays_to_atoms(reference)}
    metrics = {"data": "measured_intensities" if obs.kind == "I" else "measured_amplitudes",
               "n_reflections": int(len(merged.hkl)),
               "completeness": round(completeness(merged.hkl, model.spacegroup, cell, d_min), 4)}
    metrics.update(merged.stats)
    if obs.sigma_estimated:
        metrics["sigma_estimated"] = True
    _add_notes(metrics, model.notes + obs.notes)
    rec["metrics"] = metrics
    return rec


# ---------------------------------------------------------------------------
# helpers: the common part of a record, overrides, composition

def _base(model: CrystalModel, opts: PrepOptions) -> dict:
    composition, hydrogens = _composition(model, opts)
    wavelength = opts.wavelength_A or model.wavelength_A or MO_KALPHA_A
    rec = {"schema": records.SCHEMA, "id": model.id, "source": model.source,
           "cell": [round(float(v), 5) for v in model.cell],
           "spacegroup": spacegroup_to_record(model.spacegroup),
           "composition": composition, "hydrogens": hydrogens,
           "wavelength_A": round(float(wavelength), 5)}
    contents = _cell_contents(model, opts)
    if contents:
        rec["cell_contents"] = contents
    if opts.molecules:
        rec["molecules"] = _molecules(opts)
        n_ops = len(model.spacegroup.operations())
        in_cell = contents or {e: n * n_ops for e, n in composition.items()}
        check_contents(rec["molecules"], in_cell, n_ops, model.source)
    return rec


_PARSED: dict[str, dict] = {}


def _molecules(opts: PrepOptions) -> list[dict]:
    """The record's `molecules` from the --molecule specs (parsed once per run)."""
    for spec in opts.molecules:
        if spec not in _PARSED:
            _PARSED[spec] = parse_spec(spec)
    return [dict(_PARSED[spec]) for spec in opts.molecules]


def _cell_contents(model: CrystalModel, opts: PrepOptions) -> dict | None:
    """Non-H atoms per unit cell by element, from the same source as the composition:
    the model's sites expanded by symmetry (a site on a special position gives fewer
    images), else the file's cell contents (SHELX UNIT, CIF formula sum × Z); None with
    --formula alone. The sampler reads special positions from it (xdxd-sample(1))."""
    if opts.formula:
        return None
    if model.atoms is not None and len(model.atoms):
        heavy = [k for k, e in enumerate(model.atoms.elements) if e not in _HYDROGEN]
        if not heavy:
            return None
        cell = gemmi.UnitCell(*model.cell)
        ops = symops(model.spacegroup)
        frac = np.asarray(model.atoms.frac, dtype=float)[heavy]
        per_site = len(ops) / stabilizer_order(frac, ops, cell)
        counts: dict[str, float] = {}
        for k, n in zip(heavy, per_site):
            e = model.atoms.elements[k]
            counts[e] = counts.get(e, 0.0) + float(n)
    elif model.cell_contents:
        counts = {e: float(n) for e, n in model.cell_contents.items() if e not in _HYDROGEN}
    else:
        return None
    return {e: int(round(counts[e])) if abs(counts[e] - round(counts[e])) < 1e-6
            else round(counts[e], 3) for e in records.hill_order(counts)}


def normalize_spacegroup(text: str) -> str:
    """User spellings gemmi does not take: 'P2(1)/c' -> 'P21/c'."""
    return re.sub(r"(\d)\((\d)\)", r"\1\2", text.strip())


def _add_notes(metrics: dict, notes: list[str]) -> None:
    """What readers had to guess, for the record's metrics (SHELX titles left out)."""
    notes = [n for n in notes if not n.startswith("TITL")]
    if notes:
        metrics["notes"] = notes


def _resolved(model: CrystalModel, opts: PrepOptions) -> CrystalModel:
    """Apply --cell/--spacegroup/--wavelength; raise RecordError if cell or group is missing."""
    if opts.cell is not None:
        if len(opts.cell) != 6 or not all(math.isfinite(v) and v > 0 for v in opts.cell):
            raise RecordError(f"--cell needs six positive numbers, got {opts.cell}")
        model.cell = [float(v) for v in opts.cell]
    if model.cell is None:
        raise RecordError(f"{model.source}: no unit cell (give --cell 'a b c alpha beta gamma')")
    try:
        gemmi.UnitCell(*model.cell)
    except (RuntimeError, ValueError):
        raise RecordError(f"{model.source}: impossible unit cell {model.cell}")
    if opts.spacegroup:
        sg = find_spacegroup(normalize_spacegroup(opts.spacegroup))
        model.spacegroup = match_cell_setting(sg, model.cell)
        model.spacegroup_error = None
    if model.spacegroup is None:
        raise RecordError(model.spacegroup_error or f"{model.source}: no space group (give --spacegroup)")
    if opts.wavelength_A:
        model.wavelength_A = opts.wavelength_A
    return model


def _composition(model: CrystalModel, opts: PrepOptions) -> tuple[dict, int]:
    """(non-H counts in Hill order, H count) per asymmetric unit.

    From --formula, else the model's sites (a site counts once), else the cell contents
    (SHELX UNIT or formula x Z) divided by the number of symmetry operations.
    """
    if opts.formula:
        counts = parse_formula(opts.formula)
        return _split_h(counts, f"--formula {opts.formula!r}")
    if model.atoms is not None and len(model.atoms):
        heavy = [e for e in model.atoms.elements if e not in _HYDROGEN]
        return records.composition_of(heavy), len(model.atoms) - len(heavy)
    if model.cell_contents:
        order = len(model.spacegroup.operations())
        per_asu = {e: n / order for e, n in model.cell_contents.items()}
        return _split_h(per_asu, f"{model.source}: cell contents / {order} symmetry operations")
    if opts.molecules:
        heavy, hydrogens = molecules_contents(_molecules(opts))
        return _split_h({**heavy, "H": hydrogens}, "the --molecule counts")
    raise RecordError(f"{model.source}: no composition known (give --formula, the "
                      f"asymmetric-unit contents, e.g. C12H22O11, or --molecule)")


def _split_h(counts: dict[str, float], what: str) -> tuple[dict, int]:
    for e, n in counts.items():
        if abs(n - round(n)) > 0.01:
            raise RecordError(f"{what}: {e}{n:g} is not a whole number of atoms per asymmetric unit")
    heavy = {e: int(round(n)) for e, n in counts.items() if e not in _HYDROGEN and round(n) > 0}
    if not heavy:
        raise RecordError(f"{what}: no non-hydrogen atoms")
    h = int(round(sum(n for e, n in counts.items() if e in _HYDROGEN)))
    return {e: heavy[e] for e in records.hill_order(heavy)}, h


def _fill(model: CrystalModel, other: CrystalModel) -> CrystalModel:
    """`model` with what it lacks (cell, group, wavelength, contents, atoms) taken from `other`."""
    if model.cell is None:
        model.cell = other.cell
    if model.spacegroup is None and other.spacegroup is not None:
        model.spacegroup, model.spacegroup_error = other.spacegroup, None
    model.wavelength_A = model.wavelength_A or other.wavelength_A
    model.cell_contents = model.cell_contents or other.cell_contents
    if model.atoms is None:
        model.atoms = other.atoms
    return model


# ---------------------------------------------------------------------------
# helpers: inputs

_SUFFIXES = (".cif", ".hkl", ".mtz", ".fcf")
_MODEL_SUFFIXES = (".res", ".ins", ".cif")


def _expand(paths: list[str]) -> list[str]:
    out = []
    for p in paths:
        if p != "-" and os.path.isdir(p):
            files = sorted(os.path.join(p, f) for f in os.listdir(p)
                           if f.lower().endswith(_SUFFIXES) and not f.startswith("."))
            hkls = [f for f in files if f.lower().endswith(".hkl") and not _is_cif(f)]
            if hkls:
                # a folder of measured data: the .hkl's companion model and any CIF without
                # reflections of its own are models, not problems
                models = {os.path.abspath(c) for c in map(_companion, hkls) if c}
                files = [f for f in files if not f.lower().endswith(".cif")
                         or (os.path.abspath(f) not in models and _carries_reflections(f))]
            out.extend(files)
        else:
            out.append(p)
    return out


def _is_cif(path: str) -> bool:
    try:
        return _kind(path, _text(path)) == "cif"
    except (RecordError, OSError):
        return False


def _carries_reflections(path: str) -> bool:
    try:
        text = _text(path)
    except (RecordError, OSError):
        return True  # let the task report the problem
    return "_shelx_hkl_file" in text or "_refln_index_h" in text or "_refln.index_h" in text


def _companion(hkl_path: str) -> str | None:
    """The model file that belongs to an .hkl: same stem .res/.ins/.cif (any case), else the
    only .res/.ins, else the only .cif in the folder. None when there is no clear choice."""
    folder = os.path.dirname(os.path.abspath(hkl_path))
    stem = _stem(hkl_path).lower()
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return None
    for suffix in _MODEL_SUFFIXES:
        for n in names:
            if n.lower() == stem + suffix:
                return os.path.join(folder, n)
    for group in ((".res", ".ins"), (".cif",)):
        found = [n for n in names if n.lower().endswith(group)]
        if len(found) == 1:
            return os.path.join(folder, found[0])
    return None


def _tasks_of(path: str, opts: PrepOptions) -> list[dict]:
    if path != "-" and not os.path.exists(path):
        raise RecordError(f"{path}: no such file")
    text = _text(path)
    if not text.strip():
        raise RecordError(f"{path}: empty file")
    kind = _kind(path, text)
    base = {"schema": records.SCHEMA, "source": path, "kind": kind}
    if kind == "cif":
        doc = _document(path)
        tasks = [dict(base, id=b.name, block=b.name) for b in doc
                 if has_atoms(b) or hkl_cif.has_reflections(b)]
        if not tasks:
            twinned = any(b.find_values("_twin_refln_index_h") for b in doc)
            raise RecordError(f"{path}: " + ("twinned reflection lists (_twin_refln_*) are not read"
                                             if twinned else "no data block with atom sites or reflections"))
        return tasks
    task = dict(base, id=_stem(path))
    if kind in ("hkl", "tonto") and not opts.model and path != "-":
        companion = _companion(path)
        if companion:
            task["companion"] = companion
    return [task]


def _kind(path: str, text: str) -> str:
    low = path.lower()
    if low.endswith(".mtz"):
        return "mtz"
    if low.endswith((".res", ".ins")):
        return low[-3:]
    head = text.lstrip()[:4000]
    if head.startswith("data_") or "\ndata_" in head or head.startswith("#\\#CIF"):
        return "cif"
    if is_tonto(text):
        return "tonto"
    if low.endswith((".cif", ".fcf")):
        return "cif"  # a CIF without data_ : gemmi will say what is wrong
    return "hkl"


# parsed inputs, kept for the few tasks that follow their planning (one file, many blocks)
_CACHE: "OrderedDict[str, object]" = OrderedDict()


def _cached(key: str, make):
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    value = make()
    _CACHE[key] = value
    while len(_CACHE) > 8:
        _CACHE.popitem(last=False)
    return value


def _text(path: str) -> str:
    if path == "-":
        return _cached("text:-", lambda: sys.stdin.read())
    if path.lower().endswith(".mtz"):
        return "MTZ"  # binary; gemmi reads it
    def read():
        with open(path, "rb") as f:
            raw = f.read()
        if b"\0" in raw[:4096]:
            raise RecordError(f"{path}: binary file, not a text reflection or model file")
        return raw.decode("utf-8", errors="replace")
    return _cached("text:" + os.path.abspath(path), read)


def _document(path: str) -> gemmi.cif.Document:
    def read():
        if path == "-":
            try:
                return gemmi.cif.read_string(_text("-"))
            except (RuntimeError, ValueError) as e:
                raise RecordError(f"-: {e}") from None
        return read_cif_document(path)
    return _cached("doc:" + (path if path == "-" else os.path.abspath(path)), read)


def _block(path: str, name: str) -> gemmi.cif.Block:
    block = _document(path).find_block(name)
    if block is None:
        raise RecordError(f"{path}: no data block {name!r}")
    return block


def _read_model_file(path: str) -> CrystalModel:
    """Model from a .res/.ins or a CIF (the first block with atoms, else with a cell)."""
    if not os.path.exists(path):
        raise RecordError(f"{path}: no such model file")
    if path.lower().endswith((".res", ".ins")):
        return read_ins_text(_text(path), path, _stem(path))
    doc = _document(path)
    blocks = [b for b in doc if has_atoms(b)] or list(doc)
    if not blocks:
        raise RecordError(f"{path}: no data block")
    model = model_from_block(blocks[0], path)
    if model.atoms is None:
        res = hkl_cif.res_model_from_block(blocks[0], path)
        if res is not None:
            model = _fill(model, res)
    return model


def _stem(path: str) -> str:
    return "-" if path == "-" else os.path.splitext(os.path.basename(path))[0]


def _message(task: dict, e: Exception) -> str:
    """One line naming the file: keep the reader's own 'file:line: why', else prefix the file."""
    msg = " ".join(str(e).split())
    if not isinstance(e, (RecordError, SpaceGroupError, ValueError, RuntimeError, OSError)):
        msg = f"{type(e).__name__}: {msg}"  # not a reader's own message: say what went wrong
    src = task.get("source", "")
    out = msg if src and src in msg else f"{src}: {msg}"
    companion = task.get("companion")
    if companion and os.path.basename(companion) not in out:
        out += f" (model: {companion})"
    return out
