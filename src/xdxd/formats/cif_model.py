"""Model CIFs (small-molecule, coreCIF): cell, space group, atoms, wavelength per data block.

gemmi reads the block (gemmi.make_small_structure_from_block, B converted to U by
gemmi); this module resolves the space group in a fixed order, converts each site into
the record's atom fields, and refuses what would give wrong physics (no cell, unknown
element). One file may hold many data blocks; each block with atom sites (or with
reflections, see `hkl_cif`) becomes one model.

Space-group order: the symmetry operators (_space_group_symop_operation_xyz or
_symmetry_equiv_pos_as_xyz) first, then the Hall symbol, the H-M symbol, the IT number.
"""
from __future__ import annotations

import math
import os
import re

import gemmi
import numpy as np

from xdxd.crystal.symmetry import SpaceGroupError, find_spacegroup
from xdxd.formats.adp import u_equiv
from xdxd.formats.structure import CrystalModel, match_cell_setting, spacegroup_from_operators
from xdxd.records import AtomArrays, RecordError

DEFAULT_UISO = 0.025  # Å² (B ~ 2 Å²), for sites whose CIF gives no displacement parameter

_CELL_TAGS = ["_cell_length_a", "_cell_length_b", "_cell_length_c",
              "_cell_angle_alpha", "_cell_angle_beta", "_cell_angle_gamma"]


def read_cif_document(path: str) -> gemmi.cif.Document:
    """Parse a CIF file; a syntax error becomes a RecordError naming the file and line."""
    try:
        return gemmi.cif.read(path)
    except (RuntimeError, ValueError) as e:
        msg = str(e)
        raise RecordError(msg if path in msg else f"{path}: {msg}") from None
    except UnicodeDecodeError as e:
        raise RecordError(f"{path}: not a text CIF ({e.reason})") from None


def has_atoms(block: gemmi.cif.Block) -> bool:
    return bool(block.find_values("_atom_site_fract_x") or block.find_values("_atom_site.fract_x"))


def model_from_block(block: gemmi.cif.Block, source: str) -> CrystalModel:
    """One data block -> CrystalModel (atoms None when the block lists none).

    Raises RecordError for an unknown element or non-finite coordinates; a missing
    cell or unresolved space group is left as None (with `spacegroup_error`) so that
    command-line overrides can supply it.
    """
    name = block.name or os.path.splitext(os.path.basename(source))[0]
    where = f"{source} (data_{block.name})"
    model = CrystalModel(id=name, source=source)
    if all(block.find_value(t) not in (None, "?", ".") for t in _CELL_TAGS):
        try:
            model.cell = [gemmi.cif.as_number(block.find_value(t)) for t in _CELL_TAGS]
        except (RuntimeError, ValueError):
            model.cell = None
        if model.cell and not all(math.isfinite(v) and v > 0 for v in model.cell):
            model.cell = None
    ss = gemmi.make_small_structure_from_block(block)
    model.spacegroup, model.spacegroup_error = _resolve_spacegroup(ss, where)
    if model.spacegroup is not None and not ss.symops:  # a symbol alone: match R to the cell
        model.spacegroup = match_cell_setting(model.spacegroup, model.cell)
    if ss.wavelength and ss.wavelength > 0:
        model.wavelength_A = float(ss.wavelength)
    model.cell_contents = _cell_contents(block)
    if ss.sites:
        if model.cell is None:
            raise RecordError(f"{where}: atom sites but no cell (_cell_length_*, _cell_angle_*)")
        model.atoms = _atoms(ss, where, model.notes)
    return model


def read_model_cif(path: str) -> list[CrystalModel]:
    """Every data block of a CIF that lists atom sites, as CrystalModels."""
    doc = read_cif_document(path)
    return [model_from_block(b, path) for b in doc if has_atoms(b)]


def _resolve_spacegroup(ss: gemmi.SmallStructure, where: str):
    """(SpaceGroup, None) or (None, why) from operators, then Hall, H-M, number."""
    problems = []
    if ss.symops:
        try:
            sg = spacegroup_from_operators(list(ss.symops))
            if sg is not None:
                return sg, None
            problems.append(f"symmetry operators {len(ss.symops)} do not form a tabulated setting")
        except (RuntimeError, ValueError) as e:
            problems.append(f"unreadable symmetry operator ({e})")
    hall, hm, number = ss.spacegroup_hall.strip(), ss.spacegroup_hm.strip(), ss.spacegroup_number
    for kind, kw in (("Hall", dict(hall=hall)), ("H-M", dict(text=hm)), ("number", dict(number=number))):
        if not list(kw.values())[0]:
            continue
        try:
            return find_spacegroup(**kw), None
        except (SpaceGroupError, RuntimeError, ValueError):
            problems.append(f"unknown {kind} symbol {list(kw.values())[0]!r}")
    if not problems:
        problems.append("no space group given")
    return None, f"{where}: " + "; ".join(problems)


UIJ_UNIT_ERRORS = (1e4, 1e2)  # U_ij written in 1e-4 Å² (old CIFs, SHELX-76 listings) or 1e-2 Å²


def _rescaled_uij(ss: gemmi.SmallStructure, uani: np.ndarray, notes: list[str]) -> np.ndarray:
    """U_ij (N,6) Å², divided by 1e4 (or 1e2) when every site that also lists a
    U_iso_or_equiv has Ueq(U_ij) within 20 % of that factor times it: the file wrote
    U_ij in units of 1e-4 Å² (as 2000642.cif does, U11 = 457 for Ueq 0.0417). Anything
    less consistent is left for prep's plausibility check to refuse."""
    pairs = [(u_equiv(ss.cell, u6), site.u_iso) for site, u6 in zip(ss.sites, uani)
             if np.isfinite(u6).all() and site.u_iso and math.isfinite(site.u_iso) and site.u_iso > 0]
    if not pairs:
        return uani
    ratio = np.array([ueq / uiso for ueq, uiso in pairs])
    for factor in UIJ_UNIT_ERRORS:
        if np.all(np.abs(ratio / factor - 1.0) < 0.2):
            notes.append(f"U_ij of {len(pairs)} site(s) are {factor:g} times their U_iso_or_equiv: "
                         f"read as units of {1 / factor:g} Å² and divided by {factor:g}")
            return uani / factor
    return uani


def _atoms(ss: gemmi.SmallStructure, where: str, notes: list[str]) -> AtomArrays:
    els, labels, frac, uiso, occ, uani = [], [], [], [], [], []
    missing_u: list[str] = []
    for site in ss.sites:
        if site.element.atomic_number == 0:
            raise RecordError(f"{where}: unknown element {site.type_symbol or site.label!r} "
                              f"at site {site.label}")
        xyz = [site.fract.x, site.fract.y, site.fract.z]
        if not all(math.isfinite(v) for v in xyz):
            raise RecordError(f"{where}: site {site.label} has no finite coordinates")
        u6 = None
        if site.aniso.nonzero():
            a = site.aniso
            u6 = [a.u11, a.u22, a.u33, a.u12, a.u13, a.u23]
        u = site.u_iso
        if (not u or not math.isfinite(u)) and u6 is not None:
            u = u_equiv(ss.cell, u6)
        if not u or not math.isfinite(u) or u <= 0:
            u = DEFAULT_UISO
            missing_u.append(site.label)
        els.append(site.element.name)
        labels.append(site.label)
        frac.append(xyz)
        uiso.append(u)
        occ.append(site.occ if math.isfinite(site.occ) else 1.0)
        uani.append(u6 if u6 is not None else [math.nan] * 6)
    if missing_u:
        notes.append(f"no U or B for {len(missing_u)} site(s) ({', '.join(missing_u[:5])}"
                     f"{', ...' if len(missing_u) > 5 else ''}): Uiso = {DEFAULT_UISO} Å² used")
    ua = _rescaled_uij(ss, np.array(uani, dtype=float), notes)
    return AtomArrays(els, np.array(frac), np.array(uiso), np.array(occ), labels,
                      ua if np.isfinite(ua).all(axis=1).any() else None)


def _cell_contents(block: gemmi.cif.Block) -> dict[str, float] | None:
    """_chemical_formula_sum x _cell_formula_units_Z, element -> atoms per cell (or None)."""
    formula = block.find_value("_chemical_formula_sum")
    z = block.find_value("_cell_formula_units_Z")
    if not formula or formula in ("?", ".") or not z or z in ("?", "."):
        return None
    try:
        counts = parse_formula(gemmi.cif.as_string(formula))
        zf = gemmi.cif.as_number(z)
    except (RecordError, RuntimeError, ValueError):
        return None
    if not math.isfinite(zf) or zf <= 0:
        return None
    return {e: n * zf for e, n in counts.items()}


def parse_formula(text: str) -> dict[str, float]:
    """'C12 H22 O11' or 'C12H22O11' -> {'C': 12, 'H': 22, 'O': 11}; RecordError if unreadable."""
    s = text.replace(" ", "")
    tokens = re.findall(r"([A-Z][a-z]?)(\d*\.?\d*)", s)
    if not tokens or "".join(e + n for e, n in tokens) != s:
        raise RecordError(f"cannot read formula {text!r}")
    out: dict[str, float] = {}
    for e, n in tokens:
        el = gemmi.Element(e)
        if el.atomic_number == 0:
            raise RecordError(f"unknown element {e!r} in formula {text!r}")
        out[el.name] = out.get(el.name, 0.0) + (float(n) if n else 1.0)
    return out
