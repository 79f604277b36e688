"""Tonto keyword-format reflections.

    reflection_data= {
        keys= { h= k= l= F_exp= F_sigma= }
        data= {
           2   0   0      102.98   1.19
           ...
        }
    }

Columns are named by `keys=`; h, k, l are required, with F_exp (+ F_sigma) for
amplitudes or I_exp (+ I_sigma) for intensities. Other keys are read and ignored.
"""
from __future__ import annotations

import re

import numpy as np

from xdxd.formats.reflections import AMPLITUDE, INTENSITY, Observations, estimate_sigma
from xdxd.records import RecordError


def is_tonto(text: str) -> bool:
    return "reflection_data=" in text[:20000]


def read_tonto_text(text: str, source: str) -> Observations:
    """Parse Tonto reflection_data; RecordError naming the file (and line) when malformed."""
    m = re.search(r"keys=\s*\{([^}]*)\}", text)
    if not m:
        raise RecordError(f"{source}: Tonto file without keys= {{ ... }}")
    keys = [k.rstrip("=").lower() for k in m.group(1).split()]
    for need in ("h", "k", "l"):
        if need not in keys:
            raise RecordError(f"{source}: Tonto keys lack {need}=")
    if "f_exp" in keys:
        vkey, skey, kind = "f_exp", "f_sigma", AMPLITUDE
    elif "i_exp" in keys:
        vkey, skey, kind = "i_exp", "i_sigma", INTENSITY
    else:
        raise RecordError(f"{source}: Tonto keys name neither F_exp= nor I_exp=")
    d = re.search(r"data=\s*\{", text[m.end():])
    if not d:
        raise RecordError(f"{source}: Tonto file without data= {{ ... }}")
    start = m.end() + d.end()
    end = text.find("}", start)
    if end < 0:
        raise RecordError(f"{source}: Tonto data= block is not closed (truncated file?)")
    first_line = text.count("\n", 0, start) + 1
    nk = len(keys)
    rows = []
    for i, line in enumerate(text[start:end].splitlines()):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != nk:
            raise RecordError(f"{source}:{first_line + i}: expected {nk} columns, got {len(parts)}")
        try:
            rows.append([float(p) for p in parts])
        except ValueError:
            raise RecordError(f"{source}:{first_line + i}: not a number in {line.strip()[:60]!r}")
    if not rows:
        raise RecordError(f"{source}: no reflections")
    a = np.array(rows)
    col = {k: i for i, k in enumerate(keys)}
    hkl = a[:, [col["h"], col["k"], col["l"]]]
    if not np.all(hkl == np.round(hkl)):
        raise RecordError(f"{source}: non-integer Miller indices")
    value = a[:, col[vkey]]
    obs = Observations(hkl.astype(np.int64), value,
                       a[:, col[skey]] if skey in col else estimate_sigma(value, kind), kind, source)
    if skey not in col:
        obs.sigma_estimated = True
        obs.notes.append(f"no {skey}= column: sigma estimated")
    return obs


def read_tonto(path: str) -> Observations:
    with open(path, errors="replace") as f:
        return read_tonto_text(f.read(), path)
