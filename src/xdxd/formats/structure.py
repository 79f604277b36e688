"""What a model file (CIF, SHELX .ins/.res) tells us about a crystal, before it becomes a record."""
from __future__ import annotations

from dataclasses import dataclass, field

import gemmi

from xdxd.records import AtomArrays


@dataclass
class CrystalModel:
    """Cell, symmetry and (optionally) atoms read from one data block or .ins/.res file.

    cell: a, b, c (Å), alpha, beta, gamma (°) or None when the file has none.
    spacegroup: resolved gemmi.SpaceGroup, or None with `spacegroup_error` saying why.
    atoms: every site of the file (H included), or None when it lists none.
    cell_contents: element -> atoms per unit cell (SHELX UNIT, or CIF formula sum × Z), if known.
    """
    id: str
    source: str
    cell: list[float] | None = None
    spacegroup: gemmi.SpaceGroup | None = None
    spacegroup_error: str | None = None
    atoms: AtomArrays | None = None
    wavelength_A: float | None = None
    cell_contents: dict[str, float] | None = None
    notes: list[str] = field(default_factory=list)


def spacegroup_from_operators(ops: list[str]) -> gemmi.SpaceGroup | None:
    """The tabulated space group whose operations are exactly `ops` ("x,y,z" strings).

    The list may be given with every centring combination spelled out (as CIFs do)
    or as coset representatives only. Returns None when the operators are not a
    complete group in a setting gemmi knows. Raises ValueError for unreadable text.
    """
    parsed = [gemmi.Op(s.replace(" ", "")) for s in ops]
    return spacegroup_from_ops(parsed)


def spacegroup_from_ops(parsed: list[gemmi.Op]) -> gemmi.SpaceGroup | None:
    ident = gemmi.Op("x,y,z")
    cen = sorted({tuple(op.tran) for op in parsed if op.rot == ident.rot} | {(0, 0, 0)})
    sym, seen = [], set()
    for op in parsed:
        key = tuple(map(tuple, op.rot))
        if key not in seen:
            seen.add(key)
            # coset representative: take the translation modulo the centring vectors later
            sym.append(op)
    go = gemmi.GroupOps(sym)
    go.cen_ops = [list(t) for t in cen]
    sg = gemmi.find_spacegroup_by_ops(go)
    if sg is None:
        return None
    # the list must be the whole group: order equal to what was given (once each)
    distinct = {op.triplet() for op in (gemmi.Op(p.triplet()).wrap() for p in parsed)}
    if len(distinct) not in (len(sym), len(sym) * len(cen)):
        return None
    return sg


def match_cell_setting(sg: gemmi.SpaceGroup, cell: list[float] | None) -> gemmi.SpaceGroup:
    """Pick the rhombohedral (:R) setting of an R group named by symbol when the cell is
    rhombohedral (a = b = c, alpha = beta = gamma != 90°); other groups are returned as given."""
    if sg is None or cell is None or sg.ext not in ("H", "R"):
        return sg
    a, b, c, al, be, ga = cell
    rhombo = abs(a - b) < 1e-3 * a and abs(a - c) < 1e-3 * a and abs(al - be) < 0.01 \
        and abs(al - ga) < 0.01 and abs(al - 90.0) > 0.01
    want = "R" if rhombo else "H"
    if sg.ext == want:
        return sg
    return gemmi.find_spacegroup_by_name(sg.xhm()[:-1] + want) or sg
