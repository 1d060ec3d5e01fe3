"""Tests of the simulated atmospheric displacement (:mod:`astrodask.simulate.atmosphere`).

The field must be what the issue asks for, measured, not assumed: curl-free (its circulation
around closed loops vanishes while the same field turned by 90 degrees circulates), the rms
configured, and a two-point correlation that follows the von Karman (Matern 5/6) shape of its
outer scale, stretched by the anisotropy along its angle.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from astropy.io import fits
from scipy.spatial import cKDTree

from astrodask.errors import ConfigError
from astrodask.simulate.atmosphere import (
    DisplacementField,
    TurbulenceSpec,
    field_for_wcs,
    turbulence_field,
    von_karman_correlation,
)
from astrodask.simulate.truth import condor_wcs

#: Half-width of the test boxes, degrees: tens of outer scales, so sample variance is small.
HALF_WIDTH_DEG = 1.0


def _field(**kw) -> DisplacementField:
    spec = TurbulenceSpec(**{"rms_mas": 15.0, "seed": 7, **kw})
    return turbulence_field(spec, tangent_ra_deg=150.0, tangent_dec_deg=2.0,
                            half_widths_deg=(HALF_WIDTH_DEG, HALF_WIDTH_DEG))


def _grid_correlation(f: DisplacementField, lag: int, axis: int) -> float:
    """Normalised trace correlation of the field at ``lag`` grid steps along ``axis`` (1: xi, 0: eta)."""
    inx = np.abs(f.xi_nodes_deg) <= HALF_WIDTH_DEG
    ine = np.abs(f.eta_nodes_deg) <= HALF_WIDTH_DEG
    gx, gy = f.dxi_mas[np.ix_(ine, inx)], f.deta_mas[np.ix_(ine, inx)]
    c0 = np.mean(gx**2 + gy**2)
    a = [slice(None), slice(None)]
    b = [slice(None), slice(None)]
    a[axis], b[axis] = slice(None, -lag), slice(lag, None)
    return float(np.mean(gx[tuple(a)] * gx[tuple(b)] + gy[tuple(a)] * gy[tuple(b)]) / c0)


def test_rms_is_as_configured_at_star_positions():
    f = _field()
    rng = np.random.default_rng(1)
    xi, eta = rng.uniform(-HALF_WIDTH_DEG, HALF_WIDTH_DEG, (2, 100_000))
    dxi, deta = f.displacement_mas(xi, eta)
    rms = math.sqrt(np.mean(dxi**2 + deta**2) / 2.0)
    # exact on the grid by construction; the interpolated stars sample it: 2 %
    assert rms == pytest.approx(15.0, rel=0.02)
    # isotropic: both axes carry it (each within 10 % over ~100 independent patches)
    assert np.std(dxi) == pytest.approx(15.0, rel=0.1)
    assert np.std(deta) == pytest.approx(15.0, rel=0.1)
    zero = _field(rms_mas=0.0)
    assert not np.any(zero.displacement_mas(xi[:10], eta[:10])[0])


def test_field_is_curl_free():
    """Circulation around loops of one outer scale vanishes; the field turned by 90 deg circulates."""
    f = _field()
    rng = np.random.default_rng(2)
    theta = np.linspace(0.0, 2.0 * math.pi, 721)[:-1]
    radius = f.spec.outer_scale_deg
    dl = radius * 2.0 * math.pi / theta.size
    tx, ty = -np.sin(theta) * dl, np.cos(theta) * dl
    circ, turned = [], []
    for cx, cy in rng.uniform(-0.6, 0.6, (40, 2)):
        dxi, deta = f.displacement_mas(cx + radius * np.cos(theta), cy + radius * np.sin(theta))
        circ.append(np.sum(dxi * tx + deta * ty))
        turned.append(np.sum(-deta * tx + dxi * ty))  # (d_xi, d_eta) -> (-d_eta, d_xi): divergence-free
    circ_rms, turned_rms = np.sqrt(np.mean(np.square(circ))), np.sqrt(np.mean(np.square(turned)))
    assert turned_rms > 1.0  # the control circulates (mas deg)
    assert circ_rms < 0.02 * turned_rms


@pytest.mark.parametrize("outer_scale_arcmin", [5.0, 20.0])
def test_correlation_follows_von_karman_of_outer_scale(outer_scale_arcmin):
    f = _field(outer_scale_arcmin=outer_scale_arcmin)
    for lag in (2, 5, 10):
        r_deg = lag * f.step_deg
        expected = float(von_karman_correlation(np.array(r_deg), f.spec.outer_scale_deg))
        measured = 0.5 * (_grid_correlation(f, lag, 0) + _grid_correlation(f, lag, 1))
        assert measured == pytest.approx(expected, abs=0.05), (lag, r_deg * 60)
    # a longer outer scale correlates farther: 2.5' apart
    lag_short = round(2.5 / 60.0 / f.step_deg)
    assert _grid_correlation(f, lag_short, 1) == pytest.approx(
        float(von_karman_correlation(np.array(lag_short * f.step_deg), f.spec.outer_scale_deg)), abs=0.05)


def test_correlation_grows_with_outer_scale_at_fixed_separation():
    r_arcmin = 2.5
    values = []
    for scale in (5.0, 10.0, 20.0):
        f = _field(outer_scale_arcmin=scale)
        lag = round(r_arcmin / 60.0 / f.step_deg)
        values.append(0.5 * (_grid_correlation(f, lag, 0) + _grid_correlation(f, lag, 1)))
    assert values[0] < values[1] - 0.2 and values[1] < values[2] - 0.2


def test_anisotropy_stretches_along_its_angle():
    f = _field(anisotropy=4.0, angle_deg=90.0)  # long axis along +eta: twice the length, across half
    lag = round(2.0 / 60.0 / f.step_deg)
    along_eta, along_xi = _grid_correlation(f, lag, 0), _grid_correlation(f, lag, 1)
    expect_long = float(von_karman_correlation(np.array(lag * f.step_deg / 2.0), f.spec.outer_scale_deg))
    expect_short = float(von_karman_correlation(np.array(lag * f.step_deg * 2.0), f.spec.outer_scale_deg))
    assert along_eta == pytest.approx(expect_long, abs=0.07)
    assert along_xi == pytest.approx(expect_short, abs=0.07)
    assert along_eta > along_xi + 0.3


def test_seeded_and_displace_round_trips():
    a, b = _field(seed=11), _field(seed=11)
    np.testing.assert_array_equal(a.dxi_mas, b.dxi_mas)
    assert not np.allclose(a.dxi_mas, _field(seed=12).dxi_mas)
    rng = np.random.default_rng(3)
    ra = 150.0 + rng.uniform(-0.5, 0.5, 1000)
    dec = 2.0 + rng.uniform(-0.5, 0.5, 1000)
    ra_s, dec_s = a.displace(ra, dec)
    moved_mas = np.hypot((ra_s - ra) * np.cos(np.radians(dec)), dec_s - dec) * 3.6e6
    dxi, deta = a.displacement_at_sky_mas(ra, dec)
    np.testing.assert_allclose(moved_mas, np.hypot(dxi, deta), rtol=1e-3, atol=1e-3)
    ra_b, dec_b = a.undisplace(ra_s, dec_s)
    back_mas = np.hypot((ra_b - ra) * np.cos(np.radians(dec)), dec_b - dec) * 3.6e6
    assert back_mas.max() < 1e-4


def test_hdus_round_trip_and_grid_bounds(tmp_path):
    wcs = condor_wcs(150.0, 2.0, shape=(800, 1200), distortion_px=1.0)
    f = field_for_wcs(TurbulenceSpec(rms_mas=10.0, anisotropy=1.5, angle_deg=30.0, seed=5), wcs)
    path = tmp_path / "field.fits"
    fits.HDUList([fits.PrimaryHDU(), *f.to_hdus()]).writeto(path)
    with fits.open(path) as hdus:
        g = DisplacementField.from_hdus(hdus)
    assert g is not None and g.spec == f.spec
    rng = np.random.default_rng(4)
    xi, eta = rng.uniform(-0.1, 0.1, (2, 500))
    np.testing.assert_array_equal(np.array(g.displacement_mas(xi, eta)), np.array(f.displacement_mas(xi, eta)))
    with fits.open(path) as hdus:
        assert DisplacementField.from_hdus(fits.HDUList([hdus[0]])) is None
    with pytest.raises(ConfigError, match="outside the turbulence grid"):
        f.displacement_mas(np.array([5.0]), np.array([0.0]))
    with pytest.raises(ConfigError, match="rms_mas"):
        TurbulenceSpec(rms_mas=-1.0)
    with pytest.raises(ConfigError, match="more than"):
        turbulence_field(TurbulenceSpec(rms_mas=1.0, outer_scale_arcmin=0.1), tangent_ra_deg=0.0,
                         tangent_dec_deg=0.0, half_widths_deg=(2.0, 2.0))


# --------------------------------------------------------------------------
# Both renderers draw the displaced stars, and the truth says where they are
# --------------------------------------------------------------------------

#: A displacement large enough to measure on single stars: 0.3 px rms at 0.85"/px, mas.
RENDER_RMS_MAS = 250.0


def _winpos(image: np.ndarray, i: np.ndarray, j: np.ndarray, fwhm_px: float) -> tuple[np.ndarray, np.ndarray]:
    import sep

    data = np.ascontiguousarray(image, dtype=np.float64)
    data = data - sep.Background(data).back()
    xw, yw, flag = sep.winpos(data, i, j, np.full(i.size, 2.0 / 2.35 * fwhm_px))
    assert not np.any(flag)
    return xw, yw


def _check_centroids(image, truth, truth_path, wcs, fwhm_px, *, tolerance_px: float) -> None:
    """Centroids sit on the truth's (displaced) pixels, not on the plain WCS's; the file's mapping agrees."""
    from astrodask.simulate import read_truth

    mapping = read_truth(truth_path)
    assert mapping.field is not None and mapping.field.spec.rms_mas == RENDER_RMS_MAS
    ra, dec = np.asarray(truth["ra"], float), np.asarray(truth["dec"], float)
    i_t, j_t = np.asarray(truth["i"], float), np.asarray(truth["j"], float)
    i_m, j_m = mapping.world_to_pixel_values(ra, dec)
    assert np.max(np.hypot(i_m - i_t, j_m - j_t)) < 1e-6  # the file's mapping is the one rendered
    ra_b, dec_b = mapping.pixel_to_world_values(i_t, j_t)
    # wcslib inverts TPV iteratively to ~1e-4 px: 0.1 mas
    assert np.max(np.hypot((ra_b - ra) * np.cos(np.radians(dec)), dec_b - dec)) * 3.6e6 < 0.1
    i_0, j_0 = wcs.world_to_pixel_values(ra, dec)  # where they would be without the atmosphere
    moved = np.hypot(i_t - i_0, j_t - j_0)
    assert np.sqrt(np.mean(moved**2)) > 0.2
    xw, yw = _winpos(image, i_t, j_t, fwhm_px)
    on_truth = np.hypot(xw - i_t, yw - j_t)
    assert np.sqrt(np.mean(on_truth**2)) < tolerance_px < 0.2 * np.sqrt(np.mean(moved**2))


def test_our_renderer_draws_displaced_stars(tmp_path):
    from astrodask import simulate as sim

    shape = (500, 700)
    wcs = sim.condor_wcs(150.1, 2.2, shape=shape, distortion_px=2.0, rotation_deg=8.0)
    ii, jj = np.meshgrid(np.linspace(30, shape[1] - 31, 12), np.linspace(30, shape[0] - 31, 9))
    ra, dec = wcs.pixel_to_world_values(ii.ravel(), jj.ravel())
    from astropy.table import Table

    stars = Table({"ra": ra, "dec": dec, "phot_g_mean_mag": np.full(ra.size, 13.0)})
    spec = TurbulenceSpec(rms_mas=RENDER_RMS_MAS, outer_scale_arcmin=3.0, seed=9)
    field = field_for_wcs(spec, wcs)
    image, truth = sim.render_stars(stars, wcs, turbulence=field)
    assert truth.meta["turbulence"]["rms_mas"] == RENDER_RMS_MAS
    dxi, deta = field.displacement_at_sky_mas(np.asarray(truth["ra"]), np.asarray(truth["dec"]))
    np.testing.assert_array_equal(np.asarray(truth["dxi_mas"]), dxi)
    paths = sim.write_exposure(tmp_path / "t.fits", np.zeros(shape, np.uint16), fits.Header(), truth_wcs=wcs,
                               truth_table=truth, compress=False, turbulence=field)
    _check_centroids(image, truth, paths.truth_wcs, wcs, 2.5, tolerance_px=0.01)
    # without the field the truth is the WCS itself and the image has no atmosphere
    plain, plain_truth = sim.render_stars(stars, wcs)
    assert "dxi_mas" not in plain_truth.colnames and not np.array_equal(plain, image)


def test_galsim_renderer_draws_displaced_stars(tmp_path):
    pytest.importorskip("galsim")
    from astropy.table import Table

    from astrodask import simulate as sim

    spec = TurbulenceSpec(rms_mas=RENDER_RMS_MAS, outer_scale_arcmin=3.0, seed=4)
    scene = sim.Scene("turb", seed=31, shape=(1000, 1400), star_density_per_deg2=15000.0, turbulence=spec)
    files = sim.render_scene(scene, tmp_path, rng=np.random.default_rng(scene.seed))
    truth = Table.read(files.truth_table)
    assert truth.meta["turbulence"]["seed"] == 4
    ny, nx = scene.shape
    i, j, f = (np.asarray(truth[k], float) for k in ("i", "j", "flux_adu"))
    tree = cKDTree(np.c_[i, j])
    crowded = np.array([any(f[m] > 0.01 * f[k] for m in tree.query_ball_point([i[k], j[k]], 12.0) if m != k)
                        for k in range(i.size)])
    keep = (np.asarray(truth["in_frame"]) & ~np.asarray(truth["saturated"]) & (f > 3e4) & ~crowded
            & (i > 20) & (i < nx - 21) & (j > 20) & (j < ny - 21))
    assert keep.sum() >= 10
    image = fits.getdata(files.image, 1).astype(np.float64)
    _check_centroids(image, truth[keep], files.truth_wcs, sim.read_truth_wcs(files.truth_wcs), scene.fwhm_px,
                     tolerance_px=0.05)


def test_truth_mapping_scores_the_atmosphere_a_wcs_cannot_follow():
    """Against the true mapping, the undisturbed truth WCS is off by the field itself; without a field, by nothing."""
    from astrodask.simulate import TruthMapping
    from astrodask.wcsutil import wcs_error_mas

    shape = (1500, 2200)  # 0.35 x 0.52 deg: a few outer scales of 5'
    wcs = condor_wcs(150.0, 2.0, shape=shape, distortion_px=2.0)
    field = field_for_wcs(TurbulenceSpec(rms_mas=15.0, outer_scale_arcmin=5.0, seed=2), wcs)
    error = wcs_error_mas(wcs, TruthMapping(wcs=wcs, field=field), shape, step_px=20.0)
    # total displacement rms = sqrt(2) x the rms per axis (the frame's grid is the box of the normalisation)
    assert np.sqrt(np.mean(error**2)) == pytest.approx(15.0 * math.sqrt(2.0), rel=0.05)
    assert wcs_error_mas(wcs, TruthMapping(wcs=wcs), shape).max() == 0.0
