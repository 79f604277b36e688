"""Measured reflections inside a CIF data block.

Two ways a CIF carries them:
- `_shelx_hkl_file`: the SHELX HKLF 4 file as a text field (SHELXL 2014+ CIFs);
  `_shelx_res_file` holds the matching .res, read as a model fallback.
- a reflection loop (hkl-CIF / COD structure-factor CIF), `_refln_index_h/k/l` with,
  in order of preference, `_refln_F_squared_meas` (+ `_refln_F_squared_sigma`),
  `_refln_intensity_meas` (+ `_refln_intensity_sigma`), `_refln_F_meas` (+ `_refln_F_sigma`).
  mmCIF spellings (`_refln.index_h`, ...) are read too. Rows whose
  `_refln_observed_status` is 'x' (unreliable) or '-' (systematically absent) are dropped.
  When no sigma column exists a stand-in sigma is made (reflections.estimate_sigma) and
  the observations say so (`sigma_estimated`).
"""
from __future__ import annotations

import math

import gemmi

from xdxd.formats.reflections import AMPLITUDE, INTENSITY, Observations, estimate_sigma
from xdxd.formats.shelx import read_hkl_text, read_ins_text
from xdxd.formats.structure import CrystalModel
from xdxd.records import RecordError

# (value tag, sigma tag, kind), most preferred first
_MEAS = [("F_squared_meas", "F_squared_sigma", INTENSITY),
         ("intensity_meas", "intensity_sigma", INTENSITY),
         ("F_meas", "F_sigma", AMPLITUDE),
         ("F_meas_au", "F_meas_sigma_au", AMPLITUDE),
         ("intensity_meas_au", "intensity_sigma_au", INTENSITY)]


def _refln_prefix(block: gemmi.cif.Block) -> str | None:
    for prefix in ("_refln_", "_refln."):
        if block.find_values(prefix + "index_h"):
            return prefix
    return None


def has_reflections(block: gemmi.cif.Block) -> bool:
    """True when the block carries measured reflections (embedded hkl or a _refln loop)."""
    if block.find_value("_shelx_hkl_file"):
        return True
    prefix = _refln_prefix(block)
    return prefix is not None and any(block.find_values(prefix + v) for v, _, _ in _MEAS)


def observations_from_block(block: gemmi.cif.Block, source: str) -> Observations:
    """Measured reflections of one block; RecordError naming file and block if there are none."""
    where = f"{source} (data_{block.name})"
    hkl_text = block.find_value("_shelx_hkl_file")
    if hkl_text:
        obs = read_hkl_text(gemmi.cif.as_string(hkl_text), f"{where} _shelx_hkl_file", embedded=True)
        obs.source = where
        return obs
    prefix = _refln_prefix(block)
    if prefix is None:
        raise RecordError(f"{where}: no reflections (_shelx_hkl_file or _refln loop)")
    for vtag, stag, kind in _MEAS:
        if not block.find_values(prefix + vtag):
            continue
        tags = ["index_h", "index_k", "index_l", vtag]
        has_sigma = bool(block.find_values(prefix + stag))
        has_status = bool(block.find_values(prefix + "observed_status"))
        if has_sigma:
            tags.append(stag)
        if has_status:
            tags.append("observed_status")
        table = block.find(prefix, tags)
        rows = []
        for row in table:
            if has_status and row[len(tags) - 1] in ("x", "-"):
                continue
            try:
                h, k, l = int(row[0]), int(row[1]), int(row[2])
            except ValueError:
                raise RecordError(f"{where}: bad Miller index in row {row[0]} {row[1]} {row[2]}")
            rows.append((h, k, l, _number(row[3]), _number(row[4]) if has_sigma else math.nan))
        if not rows:
            raise RecordError(f"{where}: the {prefix}{vtag} loop is empty")
        obs = Observations.from_rows(rows, kind, where)
        if not has_sigma:
            obs.sigma = estimate_sigma(obs.value, kind)
            obs.sigma_estimated = True
            obs.notes.append(f"no {prefix}{stag}: sigma estimated as 3 % of the value + a floor")
        return obs
    raise RecordError(f"{where}: the _refln loop has calculated values only, no measured ones")


def res_model_from_block(block: gemmi.cif.Block, source: str) -> CrystalModel | None:
    """The model in an embedded `_shelx_res_file`, or None."""
    res = block.find_value("_shelx_res_file")
    if not res:
        return None
    return read_ins_text(gemmi.cif.as_string(res), f"{source} (data_{block.name}) _shelx_res_file",
                         name=block.name)


def _number(text: str) -> float:
    """CIF number with optional s.u. in brackets; '?' and '.' give NaN."""
    if text in ("?", "."):
        return math.nan
    try:
        return gemmi.cif.as_number(text)
    except (RuntimeError, ValueError):
        return math.nan
