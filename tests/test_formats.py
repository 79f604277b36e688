"""Readers and merging on real files (tests/data) and on small constructed cases."""
import math

import gemmi
import numpy as np
import pytest

from xdxd.crystal.structure_factors import structure_factors_of_atoms
from xdxd.crystal.symmetry import symops
from xdxd.formats import hkl_cif
from xdxd.formats.adp import u_equiv
from xdxd.formats.cif_model import parse_formula, read_cif_document, read_model_cif
from xdxd.crystal.symmetry import systematically_absent
from xdxd.formats.merge import asu_indices, french_wilson, merge
from xdxd.formats.mtz import read_mtz
from xdxd.formats.reflections import AMPLITUDE, INTENSITY, Observations
from xdxd.formats.shelx import read_hkl, read_hkl_text, read_ins, read_ins_text, spacegroup_from_latt_symm
from xdxd.formats.structure import spacegroup_from_operators
from xdxd.formats.tonto import read_tonto
from xdxd.records import RecordError


# ---------------------------------------------------------------------------
# SHELX

def test_hklf4_fixed_format(data_dir):
    obs = read_hkl(str(data_dir / "measured/l-alanine/iam.hkl"))
    assert obs.kind == INTENSITY and len(obs) == 2519
    assert np.all(obs.sigma > 0)


def test_hklf4_wide_columns(data_dir):
    obs = read_hkl(str(data_dir / "measured/xylitol/iam.hkl"))
    assert len(obs) == 9942
    assert obs.hkl[0].tolist() == [0, 0, 2]
    assert obs.value[0] == pytest.approx(4713.47) and obs.sigma[0] == pytest.approx(80.22)


def test_hklf4_flagged_records_are_read_then_dropped_by_merge(data_dir):
    obs = read_hkl(str(data_dir / "measured/ethylene-oxide/epoxide.hkl"))
    assert len(obs) == 2143 and int((obs.sigma <= 0).sum()) == 62
    model = read_model_cif(str(data_dir / "measured/ethylene-oxide/epoxide.cif"))[0]
    m = merge(obs, model.spacegroup, gemmi.UnitCell(*model.cell))
    assert m.stats["n_flagged"] == 62 and m.stats["n_unique"] == 2081


def test_hklf4_fields_that_touch():
    # 3I4,2F8.2 with no blank between fields, and the 0 0 0 end; what follows is ignored
    text = "%4d%4d%4d%8.2f%8.2f\n" % (-12, -100, 3, 1234.56, 12345.67)
    text += "   1   2   3    5.00    1.00\n   0   0   0    0.00    0.00\ngarbage\n"
    obs = read_hkl_text(text, "t.hkl")
    assert obs.hkl.tolist() == [[-12, -100, 3], [1, 2, 3]]
    assert obs.value.tolist() == [1234.56, 5.0] and obs.sigma.tolist() == [12345.67, 1.0]


def test_hklf4_garbage_line_names_file_and_line():
    with pytest.raises(RecordError, match=r"t.hkl:2:"):
        read_hkl_text("   1   2   3    5.00    1.00\nhello world\n", "t.hkl")


def test_res_file(data_dir):
    m = read_ins(str(data_dir / "measured/ntd51a/p21c.res"))
    assert m.spacegroup.xhm() == "P 1 21/c 1"
    assert m.cell == pytest.approx([10.6456, 11.033, 19.9214, 90.0, 98.938, 90.0])
    assert m.wavelength_A == pytest.approx(0.71073)
    assert m.cell_contents == {"C": 104, "H": 132, "N": 4, "O": 12, "Si": 4}
    a = m.atoms
    assert len(a) == 64 and sum(e != "H" for e in a.elements) == 31  # Q peaks after HKLF ignored
    # N1: 11.0 -> occupancy 1; SHELX U order U11 U22 U33 U23 U13 U12 -> CIF U11 U22 U33 U12 U13 U23
    assert a.labels[0] == "N1" and a.occ[0] == 1.0
    assert a.uaniso[0].tolist() == pytest.approx([0.02829, 0.01825, 0.01656, 0.00192, 0.00966, 0.00107])
    # riding H: -1.2 x Ueq of the carbon before it
    c1, h1a = a.labels.index("C1"), a.labels.index("H1A")
    assert a.uiso[h1a] == pytest.approx(1.2 * a.uiso[c1])
    assert a.uiso[c1] == pytest.approx(u_equiv(gemmi.UnitCell(*m.cell), a.uaniso[c1]))


@pytest.mark.parametrize("latt,symm,hm", [
    (1, [], "P -1"), (-1, [], "P 1"), (1, ["-X, 0.5+Y, 0.5-Z"], "P 1 21/c 1"),
    (7, ["-X, Y, 0.5-Z"], "C 1 2/c 1"), (-2, ["-X,-Y,Z", "-Y,X,Z", "Y,-X,Z"], "I 4"),
    (-4, ["-X,-Y,Z", "-X,Y,-Z", "X,-Y,-Z", "Z,X,Y", "Z,-X,-Y", "-Z,-X,Y", "-Z,X,-Y",
          "Y,Z,X", "-Y,Z,-X", "Y,-Z,-X", "-Y,-Z,X"], "F 2 3"),
    (3, ["-Y,X-Y,Z", "-X+Y,-X,Z"], "R -3:H"),
])
def test_latt_symm(latt, symm, hm):
    assert spacegroup_from_latt_symm(latt, symm).xhm() == hm


def test_ins_minimal_with_free_variables():
    text = """TITL t
CELL 0.71073 5 6 7 90 90 90
LATT -1
SFAC C O
UNIT 2 2
FVAR 1.0 0.25
HFIX 43 C1 O1 C1 O1
C1 1 10.5 0.25 0.1 21.0 0.02
O1 2 0.1 0.2 0.3 -21.0 0.03
HFIX 43 C1 O1 C1 O1
CONN 4 C1 O1 C1
HKLF 4
"""
    m = read_ins_text(text, "t.ins")
    assert m.atoms.labels == ["C1", "O1"]
    assert m.spacegroup.xhm() == "P 1"
    assert m.atoms.frac[0].tolist() == pytest.approx([0.5, 0.25, 0.1])
    assert m.atoms.occ.tolist() == pytest.approx([0.25, 0.75])


def test_ins_without_cell_is_an_error():
    with pytest.raises(RecordError, match="no CELL"):
        read_ins_text("TITL x\nLATT 1\nSFAC C\n", "x.ins")


# ---------------------------------------------------------------------------
# model CIF

def test_model_cif(data_dir):
    (m,) = read_model_cif(str(data_dir / "cod/1000007.cif"))
    assert m.id == "1000007" and m.spacegroup.xhm() == "C 1 2/c 1"
    assert m.atoms.elements == ["Mg", "Ca", "Si", "O", "O", "O"]
    assert m.atoms.uiso[0] == pytest.approx(0.00393)
    assert m.cell_contents is None  # no _cell_formula_units_Z
    (e,) = read_model_cif(str(data_dir / "measured/ethylene-oxide/epoxide.cif"))
    assert e.cell_contents == {"C": 8, "H": 16, "O": 4}  # 'C2 H4 O' x Z = 4


def test_model_cif_rhombohedral_setting_from_the_cell(data_dir):
    (m,) = read_model_cif(str(data_dir / "cod/5910097.cif"))
    assert m.spacegroup.xhm() == "R -3:R"


def test_model_cif_aniso_and_wavelength(data_dir):
    (m,) = read_model_cif(str(data_dir / "cod/2242045.cif"))
    assert m.spacegroup.xhm() == "P -1" and m.wavelength_A == pytest.approx(0.71073)
    assert m.atoms.uaniso is not None and np.isfinite(m.atoms.uaniso).all()


def test_model_cif_many_blocks_and_b_values(tmp_path, data_dir):
    text = (data_dir / "cod/1000007.cif").read_text()
    biso = """
data_second
_cell_length_a 5
_cell_length_b 6
_cell_length_c 7
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P 21 21 21'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_B_iso_or_equiv
C1 C 0.1 0.2 0.3 3.0
"""
    p = tmp_path / "two.cif"
    p.write_text(text + biso)
    models = read_model_cif(str(p))
    assert [m.id for m in models] == ["1000007", "second"]
    assert models[1].spacegroup.xhm() == "P 21 21 21"
    assert models[1].atoms.uiso[0] == pytest.approx(3.0 / (8 * math.pi ** 2))


def test_operators_win_over_symbols(tmp_path):
    # operators of P 1 21/n 1 with a wrong H-M text: the operators decide
    p = tmp_path / "ops.cif"
    p.write_text("""data_ops
_cell_length_a 5
_cell_length_b 6
_cell_length_c 7
_cell_angle_alpha 90
_cell_angle_beta 100
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P 1 21/c 1'
loop_
_symmetry_equiv_pos_as_xyz
x,y,z
1/2-x,1/2+y,1/2-z
-x,-y,-z
1/2+x,1/2-y,1/2+z
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_U_iso_or_equiv
C1 C 0.1 0.2 0.3 0.02
""")
    assert read_model_cif(str(p))[0].spacegroup.xhm() == "P 1 21/n 1"


def test_incomplete_operator_list_is_not_a_group():
    assert spacegroup_from_operators(["x,y,z", "-x,y,1/2-z"]) is None


def test_unknown_element_is_an_error(tmp_path, data_dir):
    p = tmp_path / "xx.cif"
    p.write_text((data_dir / "cod/1000007.cif").read_text().replace("Ca Ca 0.0", "Ca Xx 0.0"))
    with pytest.raises(RecordError, match=r"xx.cif.*unknown element 'Xx'"):
        read_model_cif(str(p))


def test_parse_formula():
    assert parse_formula("C12 H22 O11") == {"C": 12, "H": 22, "O": 11}
    assert parse_formula("C12H22O11") == {"C": 12, "H": 22, "O": 11}
    assert parse_formula("ClC2H5") == {"Cl": 1, "C": 2, "H": 5}
    with pytest.raises(RecordError):
        parse_formula("C2Qq3")


def test_cif_syntax_error_names_file_and_line(tmp_path):
    p = tmp_path / "bad.cif"
    p.write_text("data_x\n_cell_length_a 5\n_text\n;\nnever closed\n")
    with pytest.raises(RecordError, match=r"bad.cif:\d+"):
        read_cif_document(str(p))


# ---------------------------------------------------------------------------
# reflections inside CIFs, Tonto, MTZ

def test_refln_loop_without_sigma(data_dir):
    block = read_cif_document(str(data_dir / "cod/2019572.cif")).sole_block()
    assert hkl_cif.has_reflections(block)
    obs = hkl_cif.observations_from_block(block, "2019572.cif")
    assert obs.kind == INTENSITY and len(obs) == 733 and obs.sigma_estimated
    assert obs.hkl[0].tolist() == [-1, 2, 0] and obs.value[0] == pytest.approx(42487.81)
    assert np.all(obs.sigma > 0)


def test_embedded_shelx_hkl_and_res(data_dir):
    block = read_cif_document(str(data_dir / "cod/2242045.cif")).sole_block()
    obs = hkl_cif.observations_from_block(block, "2242045.cif")
    assert len(obs) == 2936 and not obs.sigma_estimated
    res = hkl_cif.res_model_from_block(block, "2242045.cif")
    assert res.spacegroup.xhm() == "P -1"
    assert sorted(set(res.atoms.elements)) == ["B", "Ga", "Li", "O"]


def test_embedded_hkl_without_its_end_line_is_read_up_to_the_first_other_line(tmp_path, data_dir):
    """A _shelx_hkl_file field without the 0 0 0 line, the .ins and a stray CIF item after
    the reflections inside the field (such files are in COD): every reflection is read,
    a warning note names the line where the list ended, and xdxd-prep logs it and exits 0."""
    from typer.testing import CliRunner
    from xdxd.cli.prep import app
    text = (data_dir / "cod/2242045.cif").read_text()
    path = tmp_path / "no-end.cif"
    path.write_text(text.replace("   0   0   0    0.00    0.00\nTITL", "TITL", 1))
    block = read_cif_document(str(path)).sole_block()
    obs = hkl_cif.observations_from_block(block, str(path))
    assert len(obs) == 2936
    assert any(n.startswith("warning: 2936 reflections read, up to") and "TITL" in n for n in obs.notes)
    with pytest.raises(RecordError, match="not an HKLF 4 reflection line"):
        read_hkl_text(text.split("_shelx_hkl_file\n;\n")[1].replace("   0   0   0    0.00    0.00\n", ""), "a.hkl")
    res = CliRunner().invoke(app, [str(path), "--data", "measured", "-o", str(tmp_path / "out.jsonl")])
    assert res.exit_code == 0, res.output
    assert "warning: 2936 reflections read" in res.output


def test_model_cif_has_no_reflections(data_dir):
    block = read_cif_document(str(data_dir / "cod/1000007.cif")).sole_block()
    assert not hkl_cif.has_reflections(block)
    with pytest.raises(RecordError, match="no reflections"):
        hkl_cif.observations_from_block(block, "1000007.cif")


def test_tonto(data_dir):
    obs = read_tonto(str(data_dir / "measured/triphenylsilane/Ph3SiH.hkl"))
    assert obs.kind == AMPLITUDE and len(obs) == 6982
    assert obs.hkl[0].tolist() == [2, 0, 0] and obs.value[0] == pytest.approx(102.98)
    assert obs.sigma[0] == pytest.approx(1.19)


def test_mtz_round_trip(tmp_path, data_dir):
    model = read_model_cif(str(data_dir / "measured/l-alanine/iam.cif"))[0]
    cell = gemmi.UnitCell(*model.cell)
    merged = merge(read_hkl(str(data_dir / "measured/l-alanine/iam.hkl")), model.spacegroup, cell, 1.0)
    mtz = gemmi.Mtz(with_base=True)
    mtz.spacegroup = model.spacegroup
    mtz.set_cell_for_all(cell)
    mtz.add_dataset("alanine").wavelength = 0.71073
    for label, typ in (("FP", "F"), ("SIGFP", "Q"), ("IMEAN", "J"), ("SIGIMEAN", "Q")):
        mtz.add_column(label, typ)
    mtz.set_data(np.column_stack([merged.hkl, merged.F, merged.sigma_F, merged.I, merged.sigma_I]))
    path = tmp_path / "ala.mtz"
    mtz.write_to_file(str(path))

    m, obs = read_mtz(str(path))
    assert m.spacegroup.xhm() == "P 21 21 21" and m.wavelength_A == pytest.approx(0.71073)
    assert obs.kind == INTENSITY and len(obs) == len(merged.hkl)
    assert obs.value == pytest.approx(merged.I, rel=1e-6)
    _, obs_f = read_mtz(str(path), columns="FP,SIGFP")
    assert obs_f.kind == AMPLITUDE and obs_f.value == pytest.approx(merged.F, rel=1e-6)
    with pytest.raises(RecordError, match="--columns"):
        read_mtz(str(path), columns="NOPE,SIGFP")


# ---------------------------------------------------------------------------
# merging

def _p2_equivalents():
    """Unique reflections of P 1 2/m 1-ish data in P 1 21 1 with every equivalent and Friedel mate."""
    sg = gemmi.find_spacegroup_by_name("P 1 21 1")
    cell = gemmi.UnitCell(5, 6, 7, 90, 100, 90)
    uniq = np.asarray(gemmi.make_miller_array(cell, sg, 1.5), dtype=np.int64)
    uniq = uniq[~systematically_absent(uniq, sg)]
    return sg, cell, uniq


def test_equivalents_and_friedel_mates_collapse():
    sg, cell, uniq = _p2_equivalents()
    rng = np.random.default_rng(0)
    true_i = rng.exponential(100.0, len(uniq))
    hkl, val, sig = [], [], []
    for h, i in zip(uniq, true_i):
        for op in sg.operations().sym_ops:  # h R for every rotation, then its Friedel mate
            hr = np.array(op.apply_to_hkl(h.tolist()))
            for hh in (hr, -hr):
                hkl.append(hh)
                val.append(i)
                sig.append(2.0)
    obs = Observations(np.array(hkl), np.array(val), np.array(sig), INTENSITY, "synthetic")
    m = merge(obs, sg, cell)
    assert m.stats["n_unique"] == len(uniq) and np.all(m.multiplicity == 4)
    order = np.lexsort(uniq.T[::-1])
    got = np.lexsort(m.hkl.T[::-1])
    assert np.array_equal(m.hkl[got], uniq[order])
    assert m.I[got] == pytest.approx(true_i[order])
    assert m.sigma_I == pytest.approx(np.full(len(uniq), 1.0))  # 2 / sqrt(4)
    assert m.stats["rint"] == pytest.approx(0.0)


def test_weighted_mean_and_sigma_propagation():
    sg = gemmi.find_spacegroup_by_name("P 1")
    cell = gemmi.UnitCell(5, 6, 7, 90, 90, 90)
    obs = Observations([[1, 2, 3], [-1, -2, -3], [1, 2, 3]], [10.0, 20.0, 40.0], [1.0, 2.0, 0.0],
                       INTENSITY, "t")
    m = merge(obs, sg, cell)
    w = np.array([1.0, 0.25])
    assert m.I[0] == pytest.approx((10 * w[0] + 20 * w[1]) / w.sum())
    assert m.sigma_I[0] == pytest.approx(1 / math.sqrt(w.sum()))
    assert m.stats["n_flagged"] == 1 and m.multiplicity[0] == 2


def test_absences_dropped_and_asu():
    sg = gemmi.find_spacegroup_by_name("P 21 21 21")
    cell = gemmi.UnitCell(5, 6, 7, 90, 90, 90)
    obs = Observations([[1, 0, 0], [2, 0, 0], [0, 3, 0], [0, 0, 4], [1, 2, 3], [-1, 2, -3]],
                       [5.0, 100, 3, 50, 60, 62], [1.0] * 6, INTENSITY, "t")
    m = merge(obs, sg, cell)
    assert m.stats["n_absent"] == 2
    assert sorted(map(tuple, m.hkl.tolist())) == [(0, 0, 4), (1, 2, 3), (2, 0, 0)]
    assert asu_indices(np.array([[-1, 2, -3]]), sg).tolist() == [[1, 2, 3]]


def test_dmin_truncation():
    sg = gemmi.find_spacegroup_by_name("P 1")
    cell = gemmi.UnitCell(10, 10, 10, 90, 90, 90)
    obs = Observations([[1, 0, 0], [4, 0, 0], [6, 0, 0]], [1.0, 1, 1], [0.1] * 3, INTENSITY, "t")
    m = merge(obs, sg, cell, d_min=2.0)
    assert m.hkl.tolist() == [[1, 0, 0], [4, 0, 0]]


def test_weak_and_negative_intensities_give_finite_amplitudes():
    sg = gemmi.find_spacegroup_by_name("P 1 21/c 1")
    cell = gemmi.UnitCell(8, 9, 10, 90, 95, 90)
    hkl = np.asarray(gemmi.make_miller_array(cell, sg, 1.2), dtype=np.int64)
    hkl = hkl[~systematically_absent(hkl, sg)]
    rng = np.random.default_rng(1)
    true_f2 = rng.exponential(50.0, len(hkl))
    sigma = np.full(len(hkl), 5.0)
    I = true_f2 + rng.normal(size=len(hkl)) * sigma
    I[:20] = -15.0  # clearly negative measurements
    F, sF = french_wilson(I, sigma, hkl, sg, cell)
    assert np.all(np.isfinite(F)) and np.all(F > 0) and np.all(np.isfinite(sF)) and np.all(sF > 0)
    strong = I >= 5 * sigma
    assert F[strong] == pytest.approx(np.sqrt(I[strong]))
    # the posterior mean rises with the measured intensity
    order = np.argsort(I[~strong])
    w = F[~strong][order]
    assert np.all(np.diff(w) > -0.05 * w.max())
    # and is closer to the truth than sqrt(max(I, 0)) on average for the weak ones
    weak = ~strong
    naive = np.sqrt(np.maximum(I[weak], 0))
    truth = np.sqrt(true_f2[weak])
    assert np.mean((F[weak] - truth) ** 2) < np.mean((naive - truth) ** 2)


@pytest.mark.parametrize("centric", [False, True])
def test_french_wilson_posterior_matches_quadrature(centric):
    """Posterior mean of |F| against scipy's adaptive quadrature, one reflection at a time."""
    from scipy.integrate import quad
    from xdxd.formats import merge as merge_module

    sg = gemmi.find_spacegroup_by_name("P 1 21/c 1" if centric else "P 1 21 1")
    cell = gemmi.UnitCell(8, 9, 10, 90, 95, 90)
    hkl = np.array([[1, 0, 2]] * 3 + [[2, 0, 1]] * 3) if centric else np.array([[1, 2, 3]] * 6)
    assert bool(sg.operations().is_reflection_centric(hkl[0].tolist())) == centric
    I = np.array([-20.0, -3.0, 0.0, 4.0, 8.0, 14.9])  # all below 3 sigma: pure posterior
    sig = np.full(6, 5.0)
    S = 40.0
    original = merge_module.wilson_mean_intensity
    merge_module.wilson_mean_intensity = lambda I, s2, eps, n_shells=20: np.full(len(I), S)
    try:
        F, sF = french_wilson(I, sig, hkl, sg, cell)
    finally:
        merge_module.wilson_mean_intensity = original
    eps = float(sg.operations().epsilon_factor(hkl[0].tolist()))
    for i, s, f, sf in zip(I, sig, F, sF):
        prior = (lambda x: np.exp(-x * x / (2 * S * eps))) if centric else \
            (lambda x: x * np.exp(-x * x / (S * eps)))
        post = lambda x, n: x ** n * prior(x) * np.exp(-0.5 * ((i - x * x) / s) ** 2)
        top = math.sqrt(max(i, 0) + 8 * s)
        z = quad(post, 0, top, args=(0,))[0]
        m1 = quad(post, 0, top, args=(1,))[0] / z
        m2 = quad(post, 0, top, args=(2,))[0] / z
        assert f == pytest.approx(m1, rel=2e-3)
        assert sf == pytest.approx(math.sqrt(m2 - m1 * m1), rel=1e-2)


def test_nan_is_an_error():
    sg = gemmi.find_spacegroup_by_name("P 1")
    cell = gemmi.UnitCell(5, 5, 5, 90, 90, 90)
    obs = Observations([[1, 0, 0]], [math.nan], [1.0], INTENSITY, "nan.hkl")
    with pytest.raises(RecordError, match="nan.hkl.*NaN"):
        merge(obs, sg, cell)
    obs = Observations([[1, 0, 0], [0, 2, 0]], [3.0, 4.0], [1.0, math.inf], INTENSITY, "inf.hkl")
    with pytest.raises(RecordError, match=r"inf.hkl: 1 reflection.*first: 0 2 0"):
        merge(obs, sg, cell)


def test_hklf4_without_end_line_is_noted():
    obs = read_hkl_text("   1   2   3    5.00    1.00\n", "t.hkl")
    assert len(obs) == 1 and "truncated" in obs.notes[0]


# ---------------------------------------------------------------------------
# reader + merge are right: the published model explains the merged data

MEASURED = [
    ("l-alanine/iam.cif", "l-alanine/iam.hkl", read_hkl, 0.04),
    ("xylitol/iam.cif", "xylitol/iam.hkl", read_hkl, 0.05),
    ("triphenylsilane/merge_xprep.cif", "triphenylsilane/Ph3SiH.hkl", read_tonto, 0.06),
    ("ntd51a/p21c.res", "ntd51a/P21c.hkl", read_hkl, 0.045),
]


@pytest.mark.parametrize("model_file,data_file,reader,limit", MEASURED, ids=[m[0].split("/")[0] for m in MEASURED])
def test_model_explains_measured_data(data_dir, model_file, data_file, reader, limit):
    path = str(data_dir / "measured" / model_file)
    model = read_ins(path) if path.endswith(".res") else read_model_cif(path)[0]
    cell = gemmi.UnitCell(*model.cell)
    m = merge(reader(str(data_dir / "measured" / data_file)), model.spacegroup, cell)
    a = model.atoms
    Fc = np.abs(structure_factors_of_atoms(cell, symops(model.spacegroup), m.hkl, a.elements,
                                           a.frac, a.uiso, a.occ, a.uaniso))
    obs = m.I > 2 * m.sigma_I if m.I is not None else m.F > 4 * m.sigma_F  # SHELX "gt" reflections
    k = (m.F[obs] * Fc[obs]).sum() / (Fc[obs] ** 2).sum()
    r1 = np.abs(m.F[obs] - k * Fc[obs]).sum() / m.F[obs].sum()
    assert r1 < limit, f"R1 {r1:.4f}"
    r1_all = np.abs(m.F - k * Fc).sum() / m.F.sum()
    assert r1_all < 0.10, f"R1(all) {r1_all:.4f}"
