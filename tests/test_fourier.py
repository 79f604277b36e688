"""Fourier maps and peak search (xdxd.crystal.fourier) on real structures."""
import math

import numpy as np
import pytest
import torch

from xdxd import records
from xdxd.crystal import fourier, symmetry
from xdxd.crystal.structure_factors import structure_factors_of_atoms
from xdxd.prep import prepare_from_model_cif


def _problem(path, d_min):
    """(record, cell, ops, hkl, complex Fc of the non-H reference atoms)."""
    rec = prepare_from_model_cif(str(path), d_min=d_min)[0]
    cell = symmetry.make_cell(rec["cell"])
    ops = symmetry.symops(symmetry.spacegroup_from_record(rec["spacegroup"]))
    hkl, _, _ = records.reflections_to_arrays(rec["reflections"])
    ref = records.atoms_to_arrays(rec["reference"]["atoms"]).without_hydrogens()
    Fc = structure_factors_of_atoms(cell, ops, hkl, ref.elements, ref.frac, ref.uiso, ref.occ)
    return rec, cell, ops, hkl, ref, Fc


def test_good_fft_size():
    for n in (1, 7, 31, 49, 97, 121):
        m = fourier.good_fft_size(n, 2)
        assert m >= n and m % 2 == 0
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        assert m == 1
    assert fourier.good_fft_size(31, 4) == 32


@pytest.mark.parametrize("cod_id", ["2203315", "1515019"])  # P 21/m; I -4 c 2 (centred, non-centrosymmetric)
def test_highest_peaks_are_the_atoms(data_dir, cod_id):
    rec, cell, ops, hkl, ref, Fc = _problem(data_dir / "cod" / f"{cod_id}.cif", 1.0)
    grid = fourier.FourierGrid(cell, ops, hkl)
    n = np.array(grid.shape)
    assert np.all(n > 2 * np.abs(hkl).max(0)), "grid must hold every index"
    assert np.all(np.array([cell.a, cell.b, cell.c]) / n < 0.4), "spacing about d_min/3"
    rho = grid.map(torch.tensor(Fc, dtype=torch.complex64)[None])          # (1,n1,n2,n3)
    N = len(ref)
    peaks = fourier.find_peaks(rho, 3 * N + 6, mask=grid.asu_mask)
    peaks = fourier.merge_images(peaks, ops, cell, tol_A=0.5)
    top = peaks.frac[0, :N].numpy()
    images = symmetry.apply_ops(top, ops).reshape(-1, 3)
    d = np.array([symmetry.frac_distance(images, x[None], cell).min() for x in ref.frac])
    assert d.max() < 0.3, f"atoms farther than 0.3 Å from the top {N} peaks: {d.round(2)}"


def test_map_is_real_symmetric_and_friedel(data_dir):
    rec, cell, ops, hkl, ref, Fc = _problem(data_dir / "cod" / "2203315.cif", 1.5)
    grid = fourier.FourierGrid(cell, ops, hkl, dtype=torch.float64)
    rho = grid.map(torch.tensor(Fc, dtype=torch.complex128)[None])[0].numpy()
    n = np.array(grid.shape)
    # rho(R x + t) = rho(x) on grid points (the grid is compatible with the translations)
    idx = np.stack(np.meshgrid(*[np.arange(k) for k in n], indexing="ij"), -1).reshape(-1, 3)
    for R, t in zip(ops.rot, ops.tran):
        img = np.rint(idx @ R.T + t * n).astype(int) % n
        np.testing.assert_allclose(rho[tuple(img.T)], rho[tuple(idx.T)], atol=1e-6 * np.abs(rho).max())
    assert rho.mean() == pytest.approx(0.0, abs=1e-6 * np.abs(rho).max())  # F(000) left out


def test_peak_interpolation_off_grid():
    """A Gaussian blob between grid points: the parabola finds it within 0.1 grid step."""
    shape = (20, 24, 30)
    true = np.array([0.3137, 0.7021, 0.0519])
    axes = [np.arange(k) / k for k in shape]
    x = np.stack(np.meshgrid(*axes, indexing="ij"), -1)
    d = x - true
    d -= np.round(d)
    rho = np.exp(-((d * np.array(shape) / 1.5) ** 2).sum(-1))
    peaks = fourier.find_peaks(torch.tensor(rho)[None], 2)
    err = (peaks.frac[0, 0].numpy() - true) * np.array(shape)
    assert np.all(np.abs(err) < 0.1)
    assert 0.9 < float(peaks.height[0, 0]) <= 1.0 + 1e-6  # a parabola, not a Gaussian
    assert math.isinf(float(peaks.height[0, 1])) or float(peaks.height[0, 1]) < 0.1


def test_merge_images_keeps_one_per_orbit(data_dir):
    rec, cell, ops, hkl, ref, Fc = _problem(data_dir / "cod" / "2203315.cif", 1.0)
    grid = fourier.FourierGrid(cell, ops, hkl)
    rho = grid.map(torch.tensor(Fc, dtype=torch.complex64)[None])
    N = len(ref)
    everywhere = fourier.find_peaks(rho, len(ops) * N * 2)   # whole cell: every image of every atom
    merged = fourier.merge_images(everywhere, ops, cell, tol_A=0.5)
    kept = merged.frac[0, :N].numpy()
    d = np.array([symmetry.frac_distance(symmetry.apply_ops(kept, ops).reshape(-1, 3), x[None], cell).min()
                  for x in ref.frac])
    assert d.max() < 0.3
    # no two kept peaks are images of each other
    orth = torch.tensor(np.array(cell.orth.mat), dtype=torch.float32)
    dd = fourier.image_distances(merged.frac[:, :N], ops, orth)[0].numpy()
    assert (dd[~np.eye(N, dtype=bool)] > 0.5).all()
