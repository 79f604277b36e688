"""SHELX files: HKLF 4 reflections (.hkl) and instructions/results (.ins/.res).

HKLF 4 (SHELXL manual, "Reflection data"): one reflection a line, fixed format
3I4,2F8.2 (h, k, l, F², sigma(F²)), optionally followed by a batch number; the list
ends at a line with h = k = l = 0. Some programs write the same five numbers in wider
whitespace-separated columns (e.g. the xylitol data in benchmarks/measured); both are
read. Records with sigma <= 0 are kept here and dropped (counted) by the merge.

.ins/.res: TITL, CELL (lambda in Å, a b c in Å, angles in °), ZERR (Z ...), LATT
(n > 0 centrosymmetric; |n| = 1 P, 2 I, 3 R obverse, 4 F, 5 A, 6 B, 7 C), SYMM (operators
other than x,y,z; inversion and centring are implied by LATT), SFAC, UNIT, FVAR, atoms.
"""
from __future__ import annotations

import math
import os

import gemmi
import numpy as np

from xdxd.formats.adp import from_shelx_order, u_equiv
from xdxd.formats.reflections import INTENSITY, Observations
from xdxd.formats.structure import CrystalModel, spacegroup_from_ops
from xdxd.records import AtomArrays, RecordError

# centring vectors for |LATT| (in 24ths, gemmi's Op.DEN)
_CENTRING = {
    1: [[0, 0, 0]],
    2: [[0, 0, 0], [12, 12, 12]],
    3: [[0, 0, 0], [16, 8, 8], [8, 16, 16]],
    4: [[0, 0, 0], [0, 12, 12], [12, 0, 12], [12, 12, 0]],
    5: [[0, 0, 0], [0, 12, 12]],
    6: [[0, 0, 0], [12, 0, 12]],
    7: [[0, 0, 0], [12, 12, 0]],
}

# SHELXL instructions (first four letters); any other line with a numeric SFAC index is an atom
_INSTRUCTIONS = set("""
ABIN ACTA AFIX ANIS ANSC ANSR BASF BEDE BIND BLOC BOND BUMP CELL CGLS CHIV CONF CONN DAMP
DANG DEFS DELU DFIX DISP EADP END EQIV EXTI EXYZ FEND FLAT FMAP FRAG FREE FVAR GRID HFIX
HKLF HOPE HTAB INIT ISOR L.S. LATT LAUE LIST LONE MERG MOLE MORE MOVE MPLA NCSY NEUT NOTE
OMIT PART PLAN PRIG REM RESI RIGU RTAB SADI SAME SFAC SHEL SIMU SIZE SPEC STIR SUMP SWAT
SYMM TEMP TIME TITL TWIN TWST UNIT WGHT WIGL WPDB XNPD ZERR
""".split())


# ---------------------------------------------------------------------------
# HKLF 4

def read_hkl_text(text: str, source: str, embedded: bool = False) -> Observations:
    """Parse HKLF 4 text (F² and sigma(F²)); stops at the 0 0 0 line.

    Raises RecordError naming `source` and the line for a line that is not a reflection.
    embedded: the text is a CIF text field (`_shelx_hkl_file`), where files without the
    0 0 0 line and with other text after the reflections exist; there, as SHELX would,
    the list ends at the first line that is not a reflection, with a warning note that
    names the line (an error still if no reflection comes before it).
    """
    rows = []
    ended = False
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        row = _parse_hkl_line(line)
        if row is None:
            what = f"{source}:{lineno}: not an HKLF 4 reflection line: {line.strip()[:60]!r}"
            if embedded and rows:
                obs = Observations.from_rows(rows, INTENSITY, source)
                obs.notes.append(f"warning: {len(rows)} reflections read, up to {what}")
                return obs
            raise RecordError(what)
        if row[:3] == (0, 0, 0):
            ended = True
            break
        rows.append(row)
    if not rows:
        raise RecordError(f"{source}: no reflections")
    obs = Observations.from_rows(rows, INTENSITY, source)
    if not ended:
        obs.notes.append("no 0 0 0 line at the end (the file may be truncated)")
    return obs


def _parse_hkl_line(line: str):
    line = line.rstrip("\r\n")
    # fixed 3I4,2F8.2: the decimal points sit in columns 18 and 26
    if len(line) >= 28 and line[17] == "." and line[25] == ".":
        try:
            return (int(line[0:4]), int(line[4:8]), int(line[8:12]),
                    float(line[12:20]), float(line[20:28]))
        except ValueError:
            pass
    parts = line.split()
    if len(parts) >= 5:
        try:
            return int(parts[0]), int(parts[1]), int(parts[2]), float(parts[3]), float(parts[4])
        except ValueError:
            pass
    try:  # fixed format with some other number of decimals
        if len(line) >= 28:
            return (int(line[0:4]), int(line[4:8]), int(line[8:12]),
                    float(line[12:20]), float(line[20:28]))
        if len(parts) >= 3 and all(p.lstrip("-").isdigit() for p in parts[:3]) and \
                int(parts[0]) == int(parts[1]) == int(parts[2]) == 0:
            return 0, 0, 0, 0.0, 0.0  # a short "0 0 0" terminator
    except ValueError:
        pass
    return None


def read_hkl(path: str) -> Observations:
    with open(path, errors="replace") as f:
        return read_hkl_text(f.read(), path)


# ---------------------------------------------------------------------------
# .ins / .res

def read_ins_text(text: str, source: str, name: str | None = None) -> CrystalModel:
    """Parse a SHELX .ins/.res: cell, wavelength, space group from LATT+SYMM, UNIT, atoms.

    Atoms are read up to HKLF/END (Q peaks after it are ignored); free variables,
    fixed parameters (10 + x) and riding-H Uiso (-1.2 = 1.2 x Ueq of the previous
    non-H atom) are decoded. Raises RecordError for a file without CELL.
    """
    lines = _join_continuations(text)
    model = CrystalModel(id=name or source, source=source)
    latt, symm, sfac, unit, fvar = 1, [], [], [], [1.0]
    atom_lines = []
    for lineno, line in lines:
        parts = line.split()
        if not parts:
            continue
        key = parts[0].upper()
        try:
            if key == "TITL":
                model.notes.append("TITL " + " ".join(parts[1:]))
            elif key == "CELL":
                nums = [_float(v) for v in parts[1:8]]
                if len(nums) != 7:
                    raise ValueError("CELL needs lambda a b c alpha beta gamma")
                model.wavelength_A = nums[0] if nums[0] > 0 else None
                model.cell = nums[1:]
            elif key == "LATT":
                latt = int(parts[1])
            elif key == "SYMM":
                symm.append(line.split(None, 1)[1])
            elif key == "SFAC":
                if len(parts) > 2 and _is_number(parts[2]):
                    sfac.append(parts[1])  # long form: one element with its coefficients
                else:
                    sfac.extend(parts[1:])
            elif key == "UNIT":
                unit = [_float(v) for v in parts[1:]]
            elif key == "FVAR":
                fvar = [_float(v) for v in parts[1:]]
            elif key[:4] in ("HKLF", "END"):
                break
            elif key[:4] in _INSTRUCTIONS or key.startswith("REM"):
                continue
            elif len(parts) >= 5 and parts[1].isdigit():
                atom_lines.append((lineno, parts))
        except (ValueError, IndexError) as e:
            raise RecordError(f"{source}:{lineno}: cannot read {key} ({e})")
    if model.cell is None:
        raise RecordError(f"{source}: no CELL instruction")
    if abs(latt) not in _CENTRING:
        raise RecordError(f"{source}: LATT {latt} is not a SHELX lattice type")
    try:
        model.spacegroup = spacegroup_from_latt_symm(latt, symm)
    except ValueError as e:
        model.spacegroup_error = f"{source}: unreadable SYMM ({e})"
    if model.spacegroup is None and model.spacegroup_error is None:
        model.spacegroup_error = f"{source}: LATT {latt} + SYMM is not a known space-group setting"
    elements = [_element(s, source) for s in sfac]
    if unit and len(unit) == len(elements):
        contents: dict[str, float] = {}
        for e, n in zip(elements, unit):
            contents[e] = contents.get(e, 0.0) + n
        model.cell_contents = contents
    if atom_lines:
        cell = gemmi.UnitCell(*model.cell)
        model.atoms = _atoms(atom_lines, elements, fvar, cell, source)
        if model.spacegroup is not None:
            # SHELX occupancies are crystallographic (0.5 on a 2-fold axis); records hold
            # chemical ones, so multiply by the order of each site's stabilizer.
            from xdxd.crystal.symmetry import stabilizer_order, symops
            mult = stabilizer_order(model.atoms.frac, symops(model.spacegroup), cell)
            model.atoms.occ = np.minimum(model.atoms.occ * mult, 1.0)
    return model


def read_ins(path: str) -> CrystalModel:
    with open(path, errors="replace") as f:
        return read_ins_text(f.read(), path, os.path.splitext(os.path.basename(path))[0])


def spacegroup_from_latt_symm(latt: int, symm: list[str]) -> gemmi.SpaceGroup | None:
    """Space group from SHELX LATT and SYMM cards (gemmi operations). ValueError if unreadable."""
    try:
        ops = [gemmi.Op("x,y,z")] + [gemmi.Op(s.replace(" ", "").lower()) for s in symm]
    except RuntimeError as e:
        raise ValueError(str(e))
    go = gemmi.GroupOps(ops)
    if latt > 0:
        go.add_inversion()
    go.cen_ops = _CENTRING[abs(latt)]
    all_ops = list(go)
    return spacegroup_from_ops(all_ops)


def _join_continuations(text: str) -> list[tuple[int, str]]:
    """Lines with '=' continuation joined; comments after '!' removed. (first line number, text)"""
    out, buf, start = [], "", 0
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("!", 1)[0].rstrip()
        if not buf:
            start = lineno
        if line.endswith(" =") or line.endswith("\t="):
            buf += line[:-1] + " "
            continue
        out.append((start, buf + line))
        buf = ""
    if buf:
        out.append((start, buf))
    return out


def _float(s: str) -> float:
    """float(s), but ValueError for nan and inf: no SHELX parameter is either."""
    v = float(s)
    if not math.isfinite(v):
        raise ValueError(f"{s!r} is not a finite number")
    return v


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _element(symbol: str, source: str) -> str:
    el = gemmi.Element(symbol)
    if el.atomic_number == 0:
        raise RecordError(f"{source}: unknown element {symbol!r} in SFAC")
    return el.name


def _decode(v: float, fvar: list[float]) -> float:
    """SHELX parameter code: x, 10+x (fixed), or 10m+k (k times free variable m)."""
    m = int(round(v / 10.0))
    if abs(v) < 5.0 or m == 0:
        return v
    k = v - 10.0 * m
    if abs(m) == 1:
        return k
    fv = fvar[abs(m) - 1] if abs(m) - 1 < len(fvar) else 1.0
    return k * fv if m > 0 else k * (fv - 1.0)


def _atoms(atom_lines, elements, fvar, cell: gemmi.UnitCell, source: str) -> AtomArrays:
    els, labels, frac, uiso, occ, uani = [], [], [], [], [], []
    last_ueq = 0.05
    for lineno, parts in atom_lines:
        try:
            idx = int(parts[1])
            nums = [_float(v) for v in parts[2:]]
        except ValueError:
            raise RecordError(f"{source}:{lineno}: cannot read atom line {' '.join(parts)[:60]!r}")
        if not 1 <= idx <= len(elements):
            raise RecordError(f"{source}:{lineno}: atom {parts[0]} has SFAC index {idx}, "
                              f"but SFAC lists {len(elements)} elements")
        if len(nums) < 3:
            raise RecordError(f"{source}:{lineno}: atom {parts[0]} has no coordinates")
        xyz = [_decode(v, fvar) for v in nums[:3]]
        sof = _decode(nums[3], fvar) if len(nums) > 3 else 1.0
        e = elements[idx - 1]
        if len(nums) >= 10:
            u6 = from_shelx_order([_decode(v, fvar) for v in nums[4:10]])
            u = u_equiv(cell, u6)
            uani.append(u6)
        else:
            u = _decode(nums[4], fvar) if len(nums) > 4 else 0.05
            if u < 0:  # riding: -1.2 means 1.2 x Ueq of the previous non-H atom
                u = -u * last_ueq
            uani.append([math.nan] * 6)
        if e not in ("H", "D"):
            last_ueq = u
        els.append(e)
        labels.append(parts[0])
        frac.append(xyz)
        uiso.append(u)
        occ.append(sof)
    ua = np.array(uani, dtype=float)
    return AtomArrays(els, np.array(frac, dtype=float), np.array(uiso, dtype=float),
                      np.array(occ, dtype=float), labels,
                      ua if np.isfinite(ua).all(axis=1).any() else None)
