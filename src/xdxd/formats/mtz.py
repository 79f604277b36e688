"""MTZ reflection files through gemmi (cell, space group, wavelength and columns).

Column choice, unless `columns="VALUE,SIGMA"` names them: the first intensity column
(MTZ type J) with its sigma (type Q), preferring IMEAN/I; else the first amplitude (type F,
e.g. F, FP, FOBS) with its sigma. Anomalous pairs (K/G types) are used when nothing else
is there: I(+) and I(-) go in as separate observations, which merging then averages.
"""
from __future__ import annotations

import os

import gemmi
import numpy as np

from xdxd.formats.reflections import AMPLITUDE, INTENSITY, Observations
from xdxd.formats.structure import CrystalModel
from xdxd.records import RecordError

_PREFER = ["IMEAN", "I", "IOBS", "I-obs", "F", "FP", "FOBS", "F-obs"]


def read_mtz(path: str, columns: str | None = None) -> tuple[CrystalModel, Observations]:
    """(model with cell/space group/wavelength, observations) from an MTZ file."""
    try:
        mtz = gemmi.read_mtz_file(path)
    except (RuntimeError, ValueError, OSError) as e:
        raise RecordError(f"{path}: not a readable MTZ file ({e})") from None
    name = os.path.splitext(os.path.basename(path))[0]
    model = CrystalModel(id=name, source=path)
    c = mtz.cell
    model.cell = [c.a, c.b, c.c, c.alpha, c.beta, c.gamma]
    model.spacegroup = mtz.spacegroup
    if mtz.spacegroup is None:
        model.spacegroup_error = f"{path}: MTZ file without a space group"
    for ds in mtz.datasets:
        if ds.wavelength and ds.wavelength > 0:
            model.wavelength_A = float(ds.wavelength)
    data = np.array(mtz, copy=False)
    labels = [col.label for col in mtz.columns]
    types = {col.label: col.type for col in mtz.columns}
    hkl = data[:, :3].astype(np.int64)
    if columns:
        names = [s.strip() for s in columns.split(",")]
        if len(names) != 2 or any(n not in labels for n in names):
            raise RecordError(f"{path}: --columns {columns!r}: need 'VALUE,SIGMA' from {labels}")
        kind = INTENSITY if types[names[0]] in ("J", "K") else AMPLITUDE
        pairs = [tuple(names)]
    else:
        pairs, kind = _pick(labels, types)
        if not pairs:
            raise RecordError(f"{path}: no intensity or amplitude column with a sigma in {labels}")
    hs, vs, ss = [], [], []
    for v, s in pairs:
        val = data[:, labels.index(v)]
        sig = data[:, labels.index(s)]
        ok = np.isfinite(val) & np.isfinite(sig)  # MTZ marks missing values as NaN
        hs.append(hkl[ok] if "(-)" not in v else -hkl[ok])
        vs.append(val[ok])
        ss.append(sig[ok])
    obs = Observations(np.concatenate(hs), np.concatenate(vs), np.concatenate(ss), kind, path)
    obs.notes.append("columns " + ", ".join(f"{v}/{s}" for v, s in pairs))
    if len(obs) == 0:
        raise RecordError(f"{path}: the chosen columns hold no values")
    return model, obs


def _pick(labels: list[str], types: dict[str, str]):
    """[(value, sigma)] and kind, by column type: J/Q then F/Q then K/M then G/L."""
    def sigma_after(lab):
        i = labels.index(lab)
        for nxt in labels[i + 1:i + 3]:
            if types[nxt] in ("Q", "M", "L"):
                return nxt
        return None

    for want, kind in (("J", INTENSITY), ("F", AMPLITUDE)):
        cands = [lab for lab in labels if types[lab] == want and sigma_after(lab)]
        cands.sort(key=lambda lab: _PREFER.index(lab) if lab in _PREFER else len(_PREFER))
        if cands:
            return [(cands[0], sigma_after(cands[0]))], kind
    for want, kind in (("K", INTENSITY), ("G", AMPLITUDE)):
        cands = [lab for lab in labels if types[lab] == want and sigma_after(lab)]
        if len(cands) >= 2:
            return [(cands[0], sigma_after(cands[0])), (cands[1], sigma_after(cands[1]))], kind
    return [], INTENSITY
