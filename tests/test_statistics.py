"""R factors as SHELXL defines them, scaling and E-values."""
import numpy as np

from xdxd.crystal.statistics import agreement, normalized_e, r1, scale_factor, wilson_scale
from xdxd.crystal.structure_factors import inverse_d2, structure_factors_of_atoms
from xdxd.crystal.symmetry import find_spacegroup, make_cell, symops


def test_r1_and_scale():
    fc = np.array([10.0, 20.0, 30.0, 5.0])
    assert abs(float(scale_factor(3 * fc, fc)) - 3.0) < 1e-12
    assert float(r1(3 * fc, fc)) < 1e-12
    fo = np.array([11.0, 19.0, 30.0, 5.0])
    # with k = 1: sum |fo - fc| / sum fo = 2/65
    assert abs(float(r1(fo, fc, scale=1.0)) - 2 / 65) < 1e-12


def test_agreement_perfect_and_goof():
    rng = np.random.default_rng(0)
    fc = rng.uniform(5, 50, 500)
    sigma = 0.02 * fc
    a = agreement(2 * fc, 2 * sigma, fc, n_params=10)
    assert a.r1 < 1e-9 and a.wr2 < 1e-9 and abs(a.scale - 2) < 1e-9
    # noise at the level of sigma with pure statistical weights gives GooF ≈ 1
    fo = fc + sigma * rng.standard_normal(500)
    a = agreement(fo, sigma, fc, n_params=10, weight_a=0.0)
    assert 0.85 < a.goof < 1.15
    assert a.n_reflections == 500 and a.n_params == 10


def _simulated(d_min=1.0):
    cell = make_cell([6.0, 7.5, 8.1, 90, 101, 90])
    sg = find_spacegroup("P 1 21/c 1")
    go = sg.operations()
    rng = np.random.default_rng(2)
    frac = rng.random((12, 3))
    hkl = np.array([[h, k, l] for h in range(-7, 8) for k in range(0, 9) for l in range(0, 9)
                    if (h, k, l) != (0, 0, 0) and not go.is_systematically_absent([h, k, l])])
    hkl = hkl[inverse_d2(cell, hkl) <= 1 / d_min ** 2]
    F = np.abs(structure_factors_of_atoms(cell, symops(sg), hkl, ["C"] * 12, frac,
                                          np.full(12, 0.04), np.ones(12)))
    return cell, sg, hkl, F


def test_wilson_recovers_b():
    cell, sg, hkl, F = _simulated()
    from xdxd.crystal.statistics import expected_intensity
    s2 = inverse_d2(cell, hkl)
    _, B = wilson_scale(F, s2, expected_intensity(cell, symops(sg), hkl, {"C": 12}))
    assert abs(B - 8 * np.pi ** 2 * 0.04) < 1.5  # B = 8π²U = 3.16 Å²


def test_e_values_normalised():
    cell, sg, hkl, F = _simulated()
    E = normalized_e(7.0 * F, hkl, cell, sg, {"C": 12})
    assert abs(np.mean(E ** 2) - 1) < 0.02
    assert np.all(np.isfinite(E))
