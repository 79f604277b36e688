"""Real CIFs -> shard structures, and shard structures -> CIF (for Mercury/VESTA).

A CIF is skipped, with a reason that the caller counts, when it is disordered (a site with
a disorder group), has partial occupancy (a site with occupancy < 0.99), has no atoms, an
unknown element, no resolvable space group, or sites that symmetry puts on top of each
other (< 0.5 Å: usually symmetry copies listed as extra sites).
"""
from __future__ import annotations

import os
from typing import Iterator

import gemmi
import numpy as np

from xdxd.crystal.symmetry import SpaceGroupError, find_spacegroup, make_cell, symops, unique_images


class Skip(Exception):
    """A CIF that is not used; str(e) is the reason (short, for counting)."""


def cif_files(folder: str) -> list[str]:
    """All *.cif under folder (recursive), sorted."""
    out = []
    for root, _, names in os.walk(folder):
        out.extend(os.path.join(root, n) for n in names if n.lower().endswith(".cif"))
    return sorted(out)


def _spacegroup(small: gemmi.SmallStructure) -> gemmi.SpaceGroup:
    """The structure's own setting: from its symmetry operators, else gemmi's reading of
    Hall / H-M (with the cell deciding rhombohedral or hexagonal axes), else the number."""
    if small.symops:
        try:
            sg = gemmi.find_spacegroup_by_ops(gemmi.GroupOps([gemmi.Op(o) for o in small.symops]))
            if sg is not None:
                return sg
        except (RuntimeError, ValueError):
            pass
    if small.spacegroup is not None:  # gemmi's choice from Hall / H-M and the cell (R :H/:R)
        return small.spacegroup
    try:
        return find_spacegroup(small.spacegroup_hm, hall=small.spacegroup_hall,
                               number=small.spacegroup_number or None)
    except SpaceGroupError:
        raise Skip("no space group")


def structure_from_small(small: gemmi.SmallStructure, name: str, max_atoms: int = 1000,
                         allow_partial_h: bool = False) -> dict:
    """A shard structure dict from a gemmi SmallStructure (raises Skip). With
    allow_partial_h, H sites with partial occupancy are kept (listed as whole atoms)."""
    sites = list(small.sites)
    if not sites:
        raise Skip("no atoms")
    if any(s.disorder_group for s in sites):
        raise Skip("disorder")
    if any(s.occ < 0.99 and not (allow_partial_h and s.element.is_hydrogen) for s in sites):
        raise Skip("partial occupancy")
    if any(s.element == gemmi.Element("X") for s in sites):
        raise Skip("unknown element")
    if len(sites) > max_atoms:
        raise Skip("too many atoms")
    sg = _spacegroup(small)
    if sg is None:
        raise Skip("no space group")
    cell = small.cell
    if not (cell.a > 0 and cell.b > 0 and cell.c > 0 and cell.volume > 1):
        raise Skip("bad cell")
    z = np.array([s.element.atomic_number for s in sites], np.int16)
    frac = np.mod(np.array([[s.fract.x, s.fract.y, s.fract.z] for s in sites], float), 1.0)
    # symmetry copies listed as extra sites: images of different sites closer than 0.5 Å
    _, owner = unique_images(frac, symops(sg), cell, tol=0.5)
    if len(np.unique(owner)) < len(sites):
        raise Skip("atoms too close")
    pos, owner = unique_images(frac, symops(sg), cell, tol=0.1)
    heavy = z[owner] > 1
    if heavy.sum() > 1:
        from xdxd.crystal.symmetry import frac_distance
        hp = pos[heavy]
        d = frac_distance(hp[:, None], hp[None], cell)
        np.fill_diagonal(d, np.inf)
        if d.min() < 0.5:
            raise Skip("atoms too close")
    return {"id": name, "cell": np.array(cell.parameters, np.float32), "hall": sg.hall,
            "sg_number": sg.number, "atomic_number": z, "frac": frac.astype(np.float32),
            "is_hydrogen": z == 1}


def read_cif_folder(folder: str) -> Iterator[tuple[str, dict | None, str]]:
    """(name, structure or None, skip reason or "") for every data block with atoms in
    every CIF under folder. The name is the COD id / file stem (plus block name when a file
    holds several blocks)."""
    for path in cif_files(folder):
        stem = os.path.splitext(os.path.basename(path))[0]
        try:
            doc = gemmi.cif.read(path)
        except (RuntimeError, ValueError) as e:
            yield stem, None, "unreadable CIF"
            continue
        blocks = [b for b in doc if b.find_value("_cell_length_a") is not None]
        if not blocks:
            yield stem, None, "no cell"
            continue
        for b in blocks:
            name = stem if len(blocks) == 1 else f"{stem}:{b.name}"
            try:
                small = gemmi.make_small_structure_from_block(b)
                yield name, structure_from_small(small, name), ""
            except Skip as e:
                yield name, None, str(e)
            except (RuntimeError, ValueError) as e:
                yield name, None, "unreadable CIF"


def structure_to_cif(s: dict) -> str:
    """CIF text of a shard structure (asymmetric unit + symmetry operators)."""
    small = gemmi.SmallStructure()
    small.name = "".join(c if c.isalnum() else "_" for c in str(s["id"]))[:60] or "xdxd"
    small.cell = make_cell(s["cell"])
    sg = find_spacegroup(hall=s["hall"])
    small.spacegroup_hall = sg.hall
    small.spacegroup_hm = sg.xhm()
    small.spacegroup_number = sg.number
    counts: dict[str, int] = {}
    for z, f in zip(s["atomic_number"], s["frac"]):
        site = gemmi.SmallStructure.Site()
        site.element = gemmi.Element(int(z))
        counts[site.element.name] = counts.get(site.element.name, 0) + 1
        site.label = f"{site.element.name}{counts[site.element.name]}"
        site.type_symbol = site.element.name
        site.fract = gemmi.Fractional(*[float(v) for v in f])
        site.occ = 1.0
        site.u_iso = 0.05 if z == 1 else 0.03
        small.add_site(site)
    block = small.make_cif_block()
    block.set_pair("_symmetry_space_group_name_Hall", gemmi.cif.quote(sg.hall))
    block.set_pair("_space_group_IT_number", str(sg.number))
    block.set_pair("_space_group_name_H-M_alt", gemmi.cif.quote(sg.xhm()))
    loop = block.init_loop("_space_group_symop_", ["operation_xyz"])
    for op in sg.operations():
        loop.add_row([gemmi.cif.quote(op.triplet())])
    return block.as_string()
