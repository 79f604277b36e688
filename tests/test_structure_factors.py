"""The torch structure-factor calculator against gemmi's own, in many space groups."""
import gemmi
import numpy as np
import pytest
import torch

from xdxd.crystal.structure_factors import StructureFactors, structure_factors_of_atoms
from xdxd.crystal.symmetry import apply_ops, find_spacegroup, frac_distance, symops

# (H-M, cell): triclinic to cubic, centred, non-centrosymmetric, non-standard settings
GROUPS = [
    ("P 1", (7.1, 8.3, 9.2, 81, 77, 69)),
    ("P -1", (7.1, 8.3, 9.2, 81, 77, 69)),
    ("P 1 21 1", (6.0, 7.5, 8.1, 90, 101, 90)),
    ("P 1 21/c 1", (6.0, 7.5, 8.1, 90, 101, 90)),
    ("P 1 21/n 1", (6.0, 7.5, 8.1, 90, 96, 90)),
    ("C 1 2/c 1", (12.0, 7.5, 9.1, 90, 110, 90)),
    ("C 1 c 1", (12.0, 7.5, 9.1, 90, 110, 90)),
    ("P 21 21 21", (5.9, 7.3, 10.2, 90, 90, 90)),
    ("P n a 21", (5.9, 7.3, 10.2, 90, 90, 90)),
    ("P b c a", (9.9, 7.3, 10.2, 90, 90, 90)),
    ("F d d 2", (11.0, 13.0, 9.0, 90, 90, 90)),
    ("I 41/a :1", (10.0, 10.0, 12.0, 90, 90, 90)),
    ("P 43 21 2", (8.0, 8.0, 11.0, 90, 90, 90)),
    ("R -3 :H", (12.0, 12.0, 9.0, 90, 90, 120)),
    ("R 3 c :H", (12.0, 12.0, 9.0, 90, 90, 120)),
    ("P 61 2 2", (8.0, 8.0, 14.0, 90, 90, 120)),
    ("P 21 3", (9.0, 9.0, 9.0, 90, 90, 90)),
    ("I a -3", (12.0, 12.0, 12.0, 90, 90, 90)),
    ("F m -3 m", (8.0, 8.0, 8.0, 90, 90, 90)),
]


def random_small_structure(hm, cell, n_atoms, rng, special=None):
    st = gemmi.SmallStructure()
    st.cell = gemmi.UnitCell(*cell)
    st.spacegroup_hm = hm
    st.determine_and_set_spacegroup("1")
    st.setup_cell_images()
    els = ["C", "N", "O", "S", "Cl"]
    for i in range(n_atoms):
        site = gemmi.SmallStructure.Site()
        site.label = f"A{i}"
        site.element = gemmi.Element(els[i % len(els)])
        site.fract = gemmi.Fractional(*general_position(st, rng))
        site.u_iso = 0.01 + 0.05 * rng.random()
        site.occ = 1.0
        st.add_site(site)
    if special is not None:  # a site on a special position
        site = gemmi.SmallStructure.Site()
        site.label = "SP"
        site.element = gemmi.Element("S")
        site.fract = gemmi.Fractional(*special)
        site.u_iso = 0.02
        site.occ = 1.0
        st.add_site(site)
    return st


def general_position(st, rng, min_dist=1.0):
    """A random point at least min_dist Å from its own symmetry images."""
    ops = symops(st.spacegroup)
    while True:
        x = rng.random(3)
        images = apply_ops(x[None], ops)[0][1:]
        if len(images) == 0 or frac_distance(images, x[None], st.cell).min() > min_dist:
            return x


def reflections(st, d_min):
    sg = find_spacegroup(st.spacegroup_hm)
    go = sg.operations()
    hmax = [int(v / d_min) + 1 for v in (st.cell.a, st.cell.b, st.cell.c)]
    out = []
    for h in range(-hmax[0], hmax[0] + 1):
        for k in range(-hmax[1], hmax[1] + 1):
            for l in range(0, hmax[2] + 1):
                if (h, k, l) != (0, 0, 0) and st.cell.calculate_d([h, k, l]) >= d_min \
                        and not go.is_systematically_absent([h, k, l]):
                    out.append((h, k, l))
    return np.array(out)


def gemmi_sf(st, hkl):
    """gemmi's F; changes st's occupancies to crystallographic ones, so call it last."""
    st.setup_cell_images()
    st.change_occupancies_to_crystallographic()
    calc = gemmi.StructureFactorCalculatorX(st.cell)
    return np.array([calc.calculate_sf_from_small_structure(st, [int(v) for v in h]) for h in hkl])


def ours(st, hkl, dtype=torch.float64):
    sites = list(st.sites)
    sg = find_spacegroup(st.spacegroup_hm)
    return structure_factors_of_atoms(
        st.cell, symops(sg), hkl, [s.element.name for s in sites],
        np.array([s.fract.tolist() for s in sites]), np.array([s.u_iso for s in sites]),
        np.array([s.occ for s in sites]), dtype=dtype)


@pytest.mark.parametrize("hm,cell", GROUPS, ids=[g[0] for g in GROUPS])
def test_matches_gemmi(hm, cell):
    rng = np.random.default_rng(len(hm))
    st = random_small_structure(hm, cell, 5, rng)
    hkl = reflections(st, 1.6)
    F = ours(st, hkl)
    F_ref = gemmi_sf(st, hkl)
    assert np.abs(F - F_ref).max() / np.abs(F_ref).max() < 1e-4
    # relative error per reflection for all but the weakest
    strong = np.abs(F_ref) > 0.05 * np.abs(F_ref).max()
    assert np.all(np.abs(F[strong] - F_ref[strong]) / np.abs(F_ref[strong]) < 1e-4)


@pytest.mark.parametrize("hm,cell,special", [
    ("P 1 21/c 1", (6.0, 7.5, 8.1, 90, 101, 90), (0.5, 0.0, 0.5)),     # inversion centre
    ("C 1 2/c 1", (12.0, 7.5, 9.1, 90, 110, 90), (0.0, 0.31, 0.25)),   # 2-fold axis
    ("P 61 2 2", (8.0, 8.0, 14.0, 90, 90, 120), (0.23, 0.46, 0.25)),   # 2-fold axis
    ("F m -3 m", (8.0, 8.0, 8.0, 90, 90, 90), (0.0, 0.0, 0.0)),        # m-3m site
])
def test_special_positions_count_once(hm, cell, special):
    rng = np.random.default_rng(7)
    st = random_small_structure(hm, cell, 3, rng, special=special)
    hkl = reflections(st, 1.6)
    F = ours(st, hkl)
    F_ref = gemmi_sf(st, hkl)
    assert np.abs(F - F_ref).max() / np.abs(F_ref).max() < 1e-4


def test_real_cif_with_anisotropic_adps(data_dir):
    st = gemmi.read_small_structure(str(data_dir / "cod" / "2205750.cif"))
    sites = list(st.sites)
    assert any(s.aniso.nonzero() for s in sites)
    hkl = reflections(st, 1.0)
    ua = np.array([[s.aniso.u11, s.aniso.u22, s.aniso.u33, s.aniso.u12, s.aniso.u13, s.aniso.u23]
                   if s.aniso.nonzero() else [np.nan] * 6 for s in sites])
    F = structure_factors_of_atoms(
        st.cell, symops(find_spacegroup(st.spacegroup_hm)), hkl, [s.element.name for s in sites],
        np.array([s.fract.tolist() for s in sites]), np.array([s.u_iso for s in sites]),
        np.array([s.occ for s in sites]), uaniso=ua)
    F_ref = gemmi_sf(st, hkl)
    assert np.abs(F - F_ref).max() / np.abs(F_ref).max() < 1e-4


def test_batched_and_differentiable():
    rng = np.random.default_rng(3)
    st = random_small_structure("P 1 21/c 1", (6.0, 7.5, 8.1, 90, 101, 90), 4, rng)
    hkl = reflections(st, 2.0)
    sites = list(st.sites)
    els = [s.element.name for s in sites]
    sf = StructureFactors(st.cell, symops(find_spacegroup(st.spacegroup_hm)), hkl, sorted(set(els)), dtype=torch.float64)
    frac0 = torch.tensor([[s.fract.tolist() for s in sites]], dtype=torch.float64)
    frac = torch.cat([frac0, frac0 + 0.01, frac0 - 0.02]).requires_grad_(True)  # (3,N,3)
    uiso = torch.full((3, len(els)), 0.03, dtype=torch.float64)
    F = sf.calc(frac, sf.type_index(els), uiso)
    assert F.shape == (3, len(hkl))
    # each batch member equals its own single calculation
    for b in range(3):
        Fb = sf.calc(frac[b:b + 1], sf.type_index(els), uiso[b:b + 1])
        assert torch.allclose(F[b], Fb[0])
    # gradient of sum |F|² agrees with a finite difference
    loss = (F.abs() ** 2).sum()
    (g,) = torch.autograd.grad(loss, frac)
    eps = 1e-6
    fp = frac.detach().clone()
    fp[1, 2, 0] += eps
    fm = frac.detach().clone()
    fm[1, 2, 0] -= eps
    num = ((sf.calc(fp, sf.type_index(els), uiso).abs() ** 2).sum()
           - (sf.calc(fm, sf.type_index(els), uiso).abs() ** 2).sum()) / (2 * eps)
    assert abs(float(num) - float(g[1, 2, 0])) < 1e-5 * max(1.0, abs(float(num)))


def test_chunking_does_not_change_result():
    rng = np.random.default_rng(5)
    st = random_small_structure("P 21 21 21", (5.9, 7.3, 10.2, 90, 90, 90), 6, rng)
    hkl = reflections(st, 1.2)
    sites = list(st.sites)
    els = [s.element.name for s in sites]
    args = (st.cell, symops(find_spacegroup(st.spacegroup_hm)), hkl, sorted(set(els)))
    big = StructureFactors(*args, dtype=torch.float64)
    small = StructureFactors(*args, dtype=torch.float64, chunk_elements=500)
    frac = torch.tensor([[s.fract.tolist() for s in sites]], dtype=torch.float64)
    uiso = torch.full((1, len(els)), 0.03, dtype=torch.float64)
    assert torch.allclose(big.calc(frac, big.type_index(els), uiso),
                          small.calc(frac, small.type_index(els), uiso))


@pytest.mark.parametrize("hm", ["P -1", "P 1 21/c 1", "C 1 2/c 1", "P b c a", "I 41/a", "R -3:H", "F d d 2"])
def test_fewer_operations_give_the_same_structure_factors_and_gradient(hm):
    """The shortened sum (centring translations as a factor, cos over half the operations
    about an inversion centre at the origin) equals the sum over every operation, value
    and gradient, and the gradient matches finite differences."""
    from xdxd.crystal.structure_factors import reduced_ops
    sg = gemmi.SpaceGroup(hm)
    ops = symops(sg)
    cell = gemmi.UnitCell(9.0, 10.0, 11.0, 90.0, 90.0, 120.0 if "R" in hm else 90.0)
    if "I 41" in hm:
        cell = gemmi.UnitCell(9.0, 9.0, 11.0, 90.0, 90.0, 90.0)
    hkl = np.array([h for h in np.ndindex(7, 7, 7)]) - 3
    hkl = np.array([h for h in hkl if any(h) and not sg.operations().is_systematically_absent(list(map(int, h)))])
    rot, _, factor, centric = reduced_ops(ops, hkl)
    assert len(rot) * factor == len(ops.rot)
    assert centric == (hm not in ("I 41/a", "F d d 2"))  # I 41/a (origin choice 1): inversion off the origin
    sf = StructureFactors(cell, ops, hkl, ["C", "O"], dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    frac = torch.rand(2, 4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    types = torch.tensor([0, 1, 0, 1])
    u = torch.full((2, 4), 0.03, dtype=torch.float64, requires_grad=True)
    full = lambda x, uu: _every_operation(sf, x, types, uu)
    F, F_full = sf.calc(frac, types, u), full(frac, u)
    assert torch.allclose(F, F_full, atol=1e-9 * float(F_full.abs().max().detach()))
    g = torch.autograd.grad(F.abs().sum(), [frac, u])
    g_full = torch.autograd.grad(F_full.abs().sum(), [frac, u])
    for a, b in zip(g, g_full):
        assert torch.allclose(a, b, atol=1e-8 * float(b.abs().max().detach()))
    assert torch.autograd.gradcheck(lambda x: sf.calc(x, types, u.detach()[:1]).abs()[:, :20],
                                    (frac.detach()[:1].clone().requires_grad_(True),))


def test_reflections_breaking_the_centring_keep_every_operation():
    from xdxd.crystal.structure_factors import reduced_ops
    ops = symops(gemmi.SpaceGroup("C 1 2/c 1"))
    hkl = np.array([[1, 0, 0], [1, 1, 0], [2, 1, 3]])  # h + k odd: the centring does not hold
    rot, _, factor, centric = reduced_ops(ops, hkl)
    assert len(rot) == 4 and factor == 2 and centric  # the inversion still halves
    sf = StructureFactors(gemmi.UnitCell(9.0, 10.0, 11.0, 90.0, 100.0, 90.0), ops, hkl, ["C"],
                          dtype=torch.float64)
    frac = torch.rand(1, 3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    types, u = torch.zeros(3, dtype=torch.long), torch.full((1, 3), 0.02, dtype=torch.float64)
    assert torch.allclose(sf.calc(frac, types, u), _every_operation(sf, frac, types, u), atol=1e-9)


def _every_operation(sf, frac, types, uiso):
    """F (B,M) summed over every operation by autograd: the reference."""
    from xdxd.crystal.structure_factors import TWO_PI
    phase = TWO_PI * (torch.einsum("bnc,omc->bnom", frac, sf.hR) + sf.ht)
    amp = sf.f0[types][None] * torch.exp(-2 * np.pi ** 2 * uiso[..., None] * sf.s2)
    return torch.complex(torch.einsum("bnm,bnom->bm", amp, torch.cos(phase)),
                         torch.einsum("bnm,bnom->bm", amp, torch.sin(phase)))
