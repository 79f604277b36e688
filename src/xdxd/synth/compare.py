"""Realism check: a shard folder beside real crystal structures.

Per structure: packing coefficient (share of the cell inside Bondi vdW spheres, Monte Carlo),
density (g/cm³), cell volume over the Hofmann (2002) estimate, atoms per asymmetric unit,
space group, covalent bond lengths by element pair (bonds: `chemistry.is_bond`), and the
shortest intermolecular contact by element pair (atoms in different molecules; molecules =
covalent fragments, periodic).
`compare` gives table rows (median and 10-90 % range of each set) and, optionally, a PNG.
"""
from __future__ import annotations

import os
from collections import Counter, defaultdict

import gemmi
import numpy as np

from xdxd.crystal.chemistry import covalent_radius, is_bond, vdw_radius
from xdxd.crystal.symmetry import find_spacegroup, make_cell, symops, unique_images

CONTACT_PAIRS = ["C..C", "C..H", "H..H", "H..O", "H..N", "C..O", "O..O", "N..O"]
BOND_PAIRS = ["C-C", "C-N", "C-O", "C-H", "H-N", "H-O", "C-S", "C-Cl"]


def sg_name(number: int) -> str:
    """Short H-M name of a standard setting, e.g. P21/c, R-3 (gemmi writes H for hexagonal
    axes of R groups)."""
    name = gemmi.find_spacegroup_by_number(number).short_name()
    return "R" + name[1:] if name.startswith("H") else name


def _pair(a: str, b: str, sep: str) -> str:
    return sep.join(sorted((a, b)))


def structure_metrics(s: dict, rng: np.random.Generator, cutoff: float = 4.0,
                      mc_points: int = 3000) -> dict:
    """Metrics of one shard structure (see module docstring). Distances in Å."""
    from scipy.spatial import cKDTree

    cell = make_cell(s["cell"])
    ops = symops(find_spacegroup(hall=s["hall"]))
    pos, owner = unique_images(np.asarray(s["frac"], float), ops, cell, tol=0.3)
    z = np.asarray(s["atomic_number"])[owner]
    el = [gemmi.Element(int(k)) for k in z]
    names = [e.name for e in el]
    orth = np.array(cell.orth.mat)
    spacing = 1.0 / np.linalg.norm(np.array(cell.frac.mat), axis=1)
    n = np.ceil(cutoff / spacing).astype(int)
    shifts = np.stack(np.meshgrid(*[np.arange(-k, k + 1) for k in n], indexing="ij"), -1).reshape(-1, 3)
    big = (pos[None] + shifts[:, None]).reshape(-1, 3) @ orth.T        # (T*N,3) Å
    big_atom = np.tile(np.arange(len(pos)), len(shifts))
    big_shift = np.repeat(shifts, len(pos), axis=0)
    tree = cKDTree(big)
    central = pos @ orth.T
    cov = np.array([covalent_radius(e) for e in names])
    bonds, contacts = [], []
    for i, nb in enumerate(tree.query_ball_point(central, cutoff)):
        for k in nb:
            j = big_atom[k]
            if j == i and not big_shift[k].any():
                continue
            d = float(np.linalg.norm(big[k] - central[i]))
            bonded = is_bond(d, cov[i] + cov[j]) and not (z[i] == 1 and z[j] == 1)
            (bonds if bonded else contacts).append((i, j, tuple(big_shift[k]), d))
    # molecules: covalent fragments with a lattice offset per atom (periodic BFS)
    adj = defaultdict(list)
    for i, j, sh, _ in bonds:
        adj[i].append((j, np.array(sh)))
    comp = -np.ones(len(pos), int)
    off = np.zeros((len(pos), 3), int)
    for start in range(len(pos)):
        if comp[start] >= 0:
            continue
        comp[start] = start
        stack = [start]
        while stack:
            i = stack.pop()
            for j, sh in adj[i]:
                if comp[j] < 0:
                    comp[j] = start
                    off[j] = off[i] + sh
                    stack.append(j)
    shortest: dict[str, float] = {}
    for i, j, sh, d in contacts:
        if comp[i] == comp[j] and np.array_equal(np.array(sh), off[j] - off[i]):
            continue  # same molecule, not bonded (1-3, 1-4 pairs)
        key = _pair(names[i], names[j], "..")
        if d < shortest.get(key, np.inf):
            shortest[key] = d
    bond_len = defaultdict(list)
    for i, j, _, d in bonds:
        if i < j or (i == j):
            bond_len[_pair(names[i], names[j], "-")].append(d)
    # packing coefficient: random points of the cell inside any vdW sphere
    pts = rng.random((mc_points, 3)) @ orth.T
    vdw = np.array([vdw_radius(e) for e in names])[big_atom]
    inside = np.zeros(mc_points, bool)
    for r in np.unique(vdw):
        sel = vdw == r
        dist, _ = cKDTree(big[sel]).query(pts, distance_upper_bound=r)
        inside |= dist < r
    mass = sum(e.weight for e in el)
    from xdxd.synth.packing import hofmann_volume
    return {
        "packing_coefficient": float(inside.mean()),
        "density": mass * 1.66054 / cell.volume,
        "volume_ratio": cell.volume / hofmann_volume(z),
        "asu_atoms": int(len(s["atomic_number"])),
        "asu_nonH": int((np.asarray(s["atomic_number"]) > 1).sum()),
        "sg_number": int(s["sg_number"]),
        "shortest": shortest,
        "bonds": dict(bond_len),
    }


def reference_structures(ref: str) -> list[dict]:
    """Real structures: a cod-dev folder (index.tsv picks class 'organic'; H sites with
    partial occupancy allowed), a folder of CIFs, or a shard folder."""
    from xdxd.synth.from_cif import Skip, read_cif_folder, structure_from_small
    from xdxd.synth.shards import iter_structures, shard_files

    if os.path.isdir(ref) and shard_files(ref):
        return list(iter_structures(ref))
    index = os.path.join(ref, "index.tsv")
    if os.path.exists(index):
        out = []
        with open(index) as f:
            header = f.readline().rstrip("\n").split("\t")
            for line in f:
                row = dict(zip(header, line.rstrip("\n").split("\t")))
                if row.get("class") != "organic":
                    continue
                small = gemmi.read_small_structure(os.path.join(ref, f"{row['cod_id']}.cif"))
                try:
                    out.append(structure_from_small(small, row["cod_id"], allow_partial_h=True))
                except Skip:
                    pass
        return out
    return [s for _, s, _ in read_cif_folder(ref) if s is not None]


def _evenly(items: list, n: int) -> list:
    if len(items) <= n:
        return items
    idx = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in idx]


def summarize(metrics: list[dict]) -> dict:
    """Per-set summary: value lists per scalar metric, contact and bond pair; sg counts."""
    out: dict = {"n": len(metrics), "sg": Counter(m["sg_number"] for m in metrics)}
    for key in ("packing_coefficient", "density", "volume_ratio", "asu_atoms", "asu_nonH"):
        out[key] = np.array([m[key] for m in metrics], float)
    out["shortest"] = {p: np.array([m["shortest"][p] for m in metrics if p in m["shortest"]])
                       for p in CONTACT_PAIRS}
    out["bonds"] = {p: np.concatenate([np.array(m["bonds"].get(p, [])) for m in metrics] or [np.zeros(0)])
                    for p in BOND_PAIRS}
    return out


def _stat(v: np.ndarray, fmt: str = "{:.3f}") -> str:
    if len(v) == 0:
        return "-"
    p10, med, p90 = np.percentile(v, [10, 50, 90])
    return f"{fmt.format(med)} [{fmt.format(p10)}-{fmt.format(p90)}]"


def table_rows(syn: dict, ref: dict) -> list[dict]:
    """Rows {metric, synthetic, reference}: median [10th-90th percentile]; contacts are the
    per-structure shortest contact; bond rows pool all bonds; sg rows are percentages."""
    rows = [{"metric": "structures", "synthetic": str(syn["n"]), "reference": str(ref["n"])}]
    for key, fmt in (("packing_coefficient", "{:.3f}"), ("density", "{:.3f}"),
                     ("volume_ratio", "{:.3f}"), ("asu_nonH", "{:.0f}"), ("asu_atoms", "{:.0f}")):
        rows.append({"metric": key, "synthetic": _stat(syn[key], fmt), "reference": _stat(ref[key], fmt)})
    for p in CONTACT_PAIRS:
        a, b = syn["shortest"][p], ref["shortest"][p]
        rows.append({"metric": f"shortest {p} (Å)", "synthetic": _stat(a, "{:.2f}") + f" n={len(a)}",
                     "reference": _stat(b, "{:.2f}") + f" n={len(b)}"})
    for p in BOND_PAIRS:
        a, b = syn["bonds"][p], ref["bonds"][p]
        rows.append({"metric": f"bond {p} (Å)", "synthetic": _stat(a), "reference": _stat(b)})
    top = [n for n, _ in (syn["sg"] + ref["sg"]).most_common(12)]
    for n in top:
        name = sg_name(n)
        rows.append({"metric": f"sg {n} {name} (%)",
                     "synthetic": f"{100 * syn['sg'][n] / max(syn['n'], 1):.1f}",
                     "reference": f"{100 * ref['sg'][n] / max(ref['n'], 1):.1f}"})
    return rows


def format_table(rows: list[dict]) -> str:
    w = [max(len(r[k]) for r in rows + [{"metric": "metric", "synthetic": "synthetic", "reference": "reference"}])
         for k in ("metric", "synthetic", "reference")]
    lines = [f"{'metric':<{w[0]}}  {'synthetic':<{w[1]}}  {'reference':<{w[2]}}"]
    lines += [f"{r['metric']:<{w[0]}}  {r['synthetic']:<{w[1]}}  {r['reference']:<{w[2]}}" for r in rows]
    return "\n".join(lines)


def plot_comparison(syn: dict, ref: dict, path: str, labels=("synthetic", "cod-dev organic")) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 3, figsize=(15, 8.5))
    kw = dict(density=True, alpha=0.55)
    for a, key, rng_, title in ((ax[0, 0], "packing_coefficient", (0.4, 0.85), "packing coefficient"),
                                (ax[0, 1], "density", (0.8, 2.0), "density (g/cm³)"),
                                (ax[0, 2], "asu_nonH", (0, 80), "non-H atoms per asymmetric unit")):
        a.hist(syn[key], bins=30, range=rng_, label=labels[0], **kw)
        a.hist(ref[key], bins=30, range=rng_, label=labels[1], **kw)
        a.set_title(title)
        a.legend()
    a = ax[1, 0]
    for p, c in (("C-C", "C0"), ("C-N", "C1"), ("C-O", "C2")):
        a.hist(syn["bonds"][p], bins=60, range=(1.1, 1.65), histtype="step", color=c, density=True,
               label=f"{p} {labels[0]}")
        a.hist(ref["bonds"][p], bins=60, range=(1.1, 1.65), histtype="step", color=c, ls="--",
               density=True, label=f"{p} {labels[1]}")
    a.set_title("bond lengths (Å)")
    a.legend(fontsize=7)
    a = ax[1, 1]
    x = np.arange(len(CONTACT_PAIRS))
    for k, (dset, lab) in enumerate(((syn, labels[0]), (ref, labels[1]))):
        data = [dset["shortest"][p] if len(dset["shortest"][p]) else np.array([np.nan]) for p in CONTACT_PAIRS]
        bp = a.boxplot(data, positions=x + (k - 0.5) * 0.35, widths=0.3, showfliers=False,
                       patch_artist=True)
        for b in bp["boxes"]:
            b.set_facecolor(f"C{k}")
            b.set_alpha(0.55)
    a.set_xticks(x, CONTACT_PAIRS)
    a.set_title("shortest intermolecular contact per structure (Å)")
    a = ax[1, 2]
    top = [n for n, _ in (syn["sg"] + ref["sg"]).most_common(12)]
    x = np.arange(len(top))
    a.bar(x - 0.2, [100 * syn["sg"][n] / syn["n"] for n in top], 0.4, label=labels[0])
    a.bar(x + 0.2, [100 * ref["sg"][n] / ref["n"] for n in top], 0.4, label=labels[1])
    a.set_xticks(x, [sg_name(n) for n in top], rotation=60, fontsize=8)
    a.set_title("space groups (%)")
    a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def compare(folder: str, reference: str, max_structures: int = 2000, plot: str | None = None,
            seed: int = 0) -> list[dict]:
    """Table rows for a shard folder against a reference (see `reference_structures`);
    writes the plot when `plot` is a path."""
    from xdxd.synth.shards import iter_structures

    rng = np.random.default_rng(seed)
    syn = summarize([structure_metrics(s, rng) for s in _evenly(list(iter_structures(folder)), max_structures)])
    ref = summarize([structure_metrics(s, rng) for s in reference_structures(reference)])
    if plot:
        plot_comparison(syn, ref, plot)
    return table_rows(syn, ref)
