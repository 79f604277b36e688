"""Write a refined solution as a CIF 1.1 data block (coreCIF names).

    text = cif_text(rec, rec["solution"])

The block holds the cell, the space group (H-M, Hall, IT number and every symmetry
operation, centring included), the atom_site loop (coordinates with esds where the
refinement gave them; an aniso loop for atoms that carry fixed U_ij), the refinement statistics (R1, wR2, GooF, numbers of reflections
and parameters), the formula and provenance. gemmi (`read_small_structure`), pymatgen
(`CifParser`), Mercury and Olex2 read it.
"""
from __future__ import annotations

import math
import re

import gemmi

from xdxd import __version__
from xdxd.crystal.symmetry import make_cell, spacegroup_from_record


def format_esd(value: float, esd: float | None, decimals: int = 6) -> str:
    """0.123456 with esd 0.000034 -> '0.12346(3)' (SHELXL style: esd digits 2..19)."""
    if esd is None or not math.isfinite(esd) or esd <= 0:
        return f"{value:.{decimals}f}"
    digits = max(0, -math.floor(math.log10(esd)))
    if round(esd * 10 ** digits) < 2:  # an esd of 1.x in the last digit keeps two: (14)
        digits += 1
    digits = min(digits, 8)
    e = round(esd * 10 ** digits)
    if e == 0:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f}({e})"


def quote(text: str) -> str:
    """A CIF value: bare if safe, else in single quotes (or a text field)."""
    s = str(text)
    if s and re.fullmatch(r"[^\s'\"_#$;\[\]][^\s]*", s) and s[0] not in "_#$'\";[]":
        return s
    if "'" not in s and "\n" not in s:
        return f"'{s}'"
    return f"\n;\n{s}\n;\n"


def block_name(rid: str) -> str:
    """A data block name from a record id (no whitespace)."""
    return re.sub(r"\s+", "_", str(rid)) or "xdxd"


def formula_sum(atoms: list[dict], hydrogens: int | None) -> str:
    """Hill-order formula of the asymmetric unit, '_chemical_formula_sum' style."""
    counts: dict[str, float] = {}
    for a in atoms:
        counts[a["element"]] = counts.get(a["element"], 0.0) + float(a.get("occ", 1.0))
    if hydrogens and "H" not in counts:  # H atoms not in the model: the composition's count
        counts["H"] = float(hydrogens)
    # Hill order: C, H, then alphabetical; without carbon, all alphabetical
    head = ["C", "H"] if "C" in counts else []
    order = head + sorted(e for e in counts if e not in head)
    parts = []
    for e in order:
        if e not in counts:
            continue
        n = counts[e]
        parts.append(e if abs(n - 1) < 1e-6 else f"{e}{n:g}")
    return " ".join(parts)


def _formula(rec: dict, atoms: list[dict]) -> str:
    """The record's composition (asymmetric unit, + hydrogens) if it has one, else the atoms'."""
    comp = rec.get("composition")
    if comp:
        fake = [{"element": e, "occ": float(n)} for e, n in comp.items()]
        return formula_sum(fake, rec.get("hydrogens"))
    return formula_sum(atoms, rec.get("hydrogens"))


def solution_to_write(rec: dict, solution: dict | None = None) -> dict:
    """The solution a writer writes (default rec['solution']); ValueError if it has no atoms."""
    sol = solution if solution is not None else rec.get("solution")
    if not sol or not sol.get("atoms"):
        raise ValueError(f"{rec.get('id', '?')}: no solution to write")
    return sol


def cif_text(rec: dict, solution: dict | None = None) -> str:
    """One CIF data block for a record's refined solution (default rec['solution'])."""
    sol = solution_to_write(rec, solution)
    cell = make_cell(rec["cell"])
    sg = spacegroup_from_record(rec["spacegroup"])
    atoms = sol["atoms"]
    out: list[str] = []
    w = out.append
    w(f"data_{block_name(rec.get('id', 'xdxd'))}")
    w("")
    w(f"_audit_creation_method            {quote('xdxd-refine ' + __version__)}")
    method = _solution_method(rec)
    w(f"_computing_structure_solution     {quote(f'xdxd {__version__} ({method})')}")
    w(f"_computing_structure_refinement   {quote(f'xdxd {__version__} xdxd-refine (full-matrix least squares on F^2)')}")
    w(f"_chemical_formula_sum             {quote(_formula(rec, atoms))}")
    w("")
    for name, v in zip(("a", "b", "c"), rec["cell"][:3]):
        w(f"_cell_length_{name:<24s} {float(v):.4f}")
    for name, v in zip(("alpha", "beta", "gamma"), rec["cell"][3:]):
        w(f"_cell_angle_{name:<25s} {float(v):.3f}")
    w(f"_cell_volume                      {cell.volume:.2f}")
    w("")
    w(f"_space_group_crystal_system       {sg.crystal_system_str()}")
    w(f"_space_group_IT_number            {sg.number}")
    w(f"_space_group_name_H-M_alt         {quote(sg.xhm())}")
    w(f"_space_group_name_Hall            {quote(sg.hall)}")
    w("loop_")
    w("_space_group_symop_id")
    w("_space_group_symop_operation_xyz")
    for n, op in enumerate(sg.operations(), 1):
        w(f"{n} {quote(op.triplet())}")
    w("")
    if rec.get("wavelength_A"):
        lam = float(rec["wavelength_A"])
        w(f"_diffrn_radiation_wavelength      {lam:.5f}")
        if rec.get("d_min_A"):
            s = min(1.0, lam / (2 * float(rec["d_min_A"])))
            w(f"_diffrn_reflns_theta_max          {math.degrees(math.asin(s)):.3f}")
    n_ref = sol.get("n_reflections")
    if n_ref is not None:
        w(f"_reflns_number_total              {n_ref}")
    if sol.get("n_obs") is not None:
        w(f"_reflns_number_gt                 {sol['n_obs']}")
        w("_reflns_threshold_expression      'F > 4sigma(F)'")
    w("")
    w("_refine_ls_structure_factor_coef  Fsqd")
    w("_refine_ls_matrix_type            full")
    w("_refine_ls_weighting_scheme       calc")
    w(f"_refine_ls_weighting_details      "
      f"'w=1/[\\s^2^(Fo^2^)+({sol.get('weight_a', 0.1):.4f}P)^2^] where P=(Fo^2^+2Fc^2^)/3'")
    riding = any(a.get("riding") for a in atoms)
    w(f"_refine_ls_hydrogen_treatment     {'constr' if riding else 'undef'}")
    for tag, key, fmt in (("R_factor_all", "r1", ".4f"), ("R_factor_gt", "r1_obs", ".4f"),
                          ("wR_factor_ref", "wr2", ".4f"), ("goodness_of_fit_ref", "goof", ".3f"),
                          ("number_reflns", "n_reflections", "d"),
                          ("number_parameters", "n_params", "d")):
        v = sol.get(key)
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            w(f"_refine_ls_{tag:<23s} ?")
        else:
            w(f"_refine_ls_{tag:<23s} {v:{fmt}}")
    w("")
    w("loop_")
    for tag in ("label", "type_symbol", "fract_x", "fract_y", "fract_z", "U_iso_or_equiv",
                "adp_type", "occupancy", "calc_flag", "refinement_flags_posn"):
        w(f"_atom_site_{tag}")
    labels = _unique_labels(atoms)
    for a, label in zip(atoms, labels):
        esd = a.get("xyz_esd") or [None] * 3
        xyz = " ".join(f"{format_esd(float(v), e):>12s}" for v, e in zip(a["xyz"], esd))
        u = float(a.get("uiso") if a.get("uiso") is not None else 0.05)
        adp = "Uani" if a.get("uaniso") else "Uiso"
        flags = "calc R" if a.get("riding") else "d ."  # riding H: calculated, riding position
        w(f"{label:<6s} {a['element']:<3s} {xyz} {u:.4f} {adp} {float(a.get('occ', 1.0)):.4f} {flags}")
    aniso = [(a, label) for a, label in zip(atoms, labels) if a.get("uaniso")]
    if aniso:
        w("")
        w("loop_")
        w("_atom_site_aniso_label")
        for tag in ("U_11", "U_22", "U_33", "U_12", "U_13", "U_23"):
            w(f"_atom_site_aniso_{tag}")
        for a, label in aniso:
            w(f"{label:<6s} " + " ".join(f"{float(v):.5f}" for v in a["uaniso"]))
    w("")
    return "\n".join(out)


def _unique_labels(atoms: list[dict]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n, a in enumerate(atoms):
        lab = re.sub(r"\s+", "", str(a.get("label") or f"{a['element']}{n + 1}"))
        if lab in seen:
            seen[lab] += 1
            lab = f"{lab}_{seen[lab]}"
        seen.setdefault(lab, 0)
        out.append(lab)
    return out


def _solution_method(rec: dict) -> str:
    sol = rec.get("solution") or {}
    cands = rec.get("candidates") or []
    i = sol.get("candidate_index")
    if isinstance(i, int) and 0 <= i < len(cands):
        return f"xdxd-sample {cands[i].get('method', '?')}"
    return {"reference": "refined from the reference model"}.get(sol.get("source"), "xdxd")


def read_back(text: str) -> gemmi.SmallStructure:
    """Parse CIF text with gemmi (a check that the block is readable)."""
    return gemmi.make_small_structure_from_block(gemmi.cif.read_string(text).sole_block())
