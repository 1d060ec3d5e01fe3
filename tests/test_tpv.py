"""Tests of the TAN + TPV solution: evaluation against wcslib, headers, the fit.

The decisive tests: :func:`test_pixel_to_world_agrees_with_wcslib` (our numpy TPV and
wcslib evaluating the same header agree to 1e-8 px over a Condor frame, every one of the
40 terms in use), :func:`test_fit_reproduces_condor_truth` (the fit recovers the
simulator's truth WCS to 1e-6 px from noiseless points) and
:func:`test_decam_header_round_trip` (a real DECam TPV solution survives read, write and
read again).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from astrodask import simulate as sim
from astrodask.solve import tpv
from astrodask.errors import AstrodaskWarning
from astrodask.wcsutil import cd_matrix

NY, NX = sim.CONDOR_SHAPE
CENTRE = ((NX - 1) / 2.0, (NY - 1) / 2.0)
SCALE_ARCSEC = sim.CONDOR_SCALE_ARCSEC
DECAM_FILE = "decam_tpv_cutout/c4d_170316_062107_ooi_z_ls9.N2.fits"


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def _grid(nx: int = NX, ny: int = NY, *, n: int = 41, margin: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A regular grid of 0-based pixel positions covering the frame (corners included)."""
    gi, gj = np.meshgrid(np.linspace(-margin, nx - 1 + margin, n), np.linspace(-margin, ny - 1 + margin, n))
    return gi.ravel(), gj.ravel()


def _sky_distance_px(ra1: np.ndarray, dec1: np.ndarray, ra2: np.ndarray, dec2: np.ndarray,
                     crval: tuple[float, float], scale_arcsec: float) -> np.ndarray:
    """Distance between sky positions in pixels, measured in the tangent plane about crval."""
    xi1, eta1 = tpv.tangent_plane(ra1, dec1, crval)
    xi2, eta2 = tpv.tangent_plane(ra2, dec2, crval)
    return np.hypot(xi1 - xi2, eta1 - eta2) * 3600.0 / scale_arcsec


def _random_solution(rng: np.random.Generator, *, crval: tuple[float, float], degree: int,
                     rotation_deg: float = 0.0, parity: int = 1, distortion_px: float = 15.0,
                     canonical: bool = False) -> tuple[tpv.TPVSolution, float]:
    """A Condor-sized TPV solution with random terms up to ``degree``; returns it and its
    corner radius in degrees.

    Each degree above 1 contributes up to ``distortion_px`` pixels at the corners.
    ``canonical``: the form :func:`tpv.fit_tpv` returns (no constant, identity linear
    part, no radial terms); otherwise every term up to the degree is used, radial ones too.
    """
    cd = cd_matrix(SCALE_ARCSEC, rotation_deg, parity)
    radius = float(np.hypot(*(np.array(CENTRE) * SCALE_ARCSEC / 3600.0)))
    amplitude = distortion_px * SCALE_ARCSEC / 3600.0
    pvs = []
    for _ in range(2):
        pv = np.zeros(tpv.N_TPV_TERMS)
        for k, (a, b, c) in enumerate(tpv.TPV_TERMS):
            d = a + b + c
            if d > degree or (canonical and (d <= 1 or c)):
                continue
            n_of_degree = d + 1 + (d % 2)
            pv[k] = amplitude / radius**d * rng.uniform(-1.0, 1.0) / n_of_degree
        pv[1] += 1.0
        pvs.append(pv)
    sol = tpv.TPVSolution(crpix=CENTRE, crval=crval, cd=cd, pv1=pvs[0], pv2=pvs[1], degree=degree)
    return sol, radius


# --------------------------------------------------------------------------
# The term table
# --------------------------------------------------------------------------


def test_term_table_follows_the_tpv_convention() -> None:
    radial = [k for k, (a, b, c) in enumerate(tpv.TPV_TERMS) if c]
    assert radial == [3, 11, 23, 39]
    assert len(tpv.TPV_TERMS) == tpv.N_TPV_TERMS == 40
    # first term of each degree, and a few spot checks (x^a y^b r^c)
    first = {d: min(k for k, t in enumerate(tpv.TPV_TERMS) if sum(t) == d) for d in range(8)}
    assert first == {0: 0, 1: 1, 2: 4, 3: 7, 4: 12, 5: 17, 6: 24, 7: 31}
    assert tpv.TPV_TERMS[5] == (1, 1, 0) and tpv.TPV_TERMS[10] == (0, 3, 0) and tpv.TPV_TERMS[38] == (0, 7, 0)
    assert [tpv.min_points_for_degree(d) for d in range(1, 8)] == [3, 6, 10, 15, 21, 28, 36]
    with pytest.raises(ValueError, match="degree = 8"):
        tpv.min_points_for_degree(8)


# --------------------------------------------------------------------------
# Evaluation: numpy against wcslib
# --------------------------------------------------------------------------

WCSLIB_CASES = [
    # crval, rotation_deg, parity, degree
    pytest.param((150.0, 30.0), 0.0, 1, 7, id="all-40-terms"),
    pytest.param((359.95, -10.0), 37.0, -1, 5, id="ra-wrap-mirrored"),
    pytest.param((0.0, 89.5), 120.0, 1, 3, id="pole-in-field"),
    pytest.param((200.0, 90.0), 15.0, 1, 3, id="north-pole-tangent"),
    pytest.param((10.0, -90.0), -60.0, -1, 4, id="south-pole-tangent"),
]


@pytest.mark.parametrize(("crval", "rotation_deg", "parity", "degree"), WCSLIB_CASES)
def test_pixel_to_world_agrees_with_wcslib(crval: tuple[float, float], rotation_deg: float, parity: int,
                                           degree: int) -> None:
    rng = np.random.default_rng(11)
    sol, _ = _random_solution(rng, crval=crval, degree=degree, rotation_deg=rotation_deg, parity=parity)
    wcs = tpv.to_astropy_wcs(sol, shape=(NY, NX))
    assert wcs.pixel_shape == (NX, NY)
    gi, gj = _grid(margin=200.0)
    ra, dec = tpv.pixel_to_world(sol, gi, gj)
    ra_w, dec_w = wcs.pixel_to_world_values(gi, gj)
    assert _sky_distance_px(ra, dec, ra_w, dec_w, sol.crval, SCALE_ARCSEC).max() < 1e-8
    assert np.all((ra >= 0.0) & (ra < 360.0))
    # the inverse: Newton's method to 1e-10 px, and wcslib's own inverse
    i2, j2 = tpv.world_to_pixel(sol, ra_w, dec_w)
    assert np.hypot(i2 - gi, j2 - gj).max() < 1e-9
    i3, j3 = wcs.world_to_pixel_values(ra_w, dec_w)
    assert np.hypot(i2 - i3, j2 - j3).max() < 1e-8


def test_numpy_evaluation_of_the_simulator_truth() -> None:
    truth = sim.condor_wcs(150.0, 30.0, rotation_deg=25.0, distortion_px=15.0)
    sol = tpv.read_tpv_header(truth.to_header(relax=True))
    assert sol.degree == 3 and sol.crpix == CENTRE
    gi, gj = _grid()
    ra, dec = tpv.pixel_to_world(sol, gi, gj)
    ra_w, dec_w = truth.pixel_to_world_values(gi, gj)
    assert _sky_distance_px(ra, dec, ra_w, dec_w, sol.crval, SCALE_ARCSEC).max() < 1e-8


def test_evaluation_keeps_shapes_and_scalars() -> None:
    sol, _ = _random_solution(np.random.default_rng(2), crval=(10.0, 20.0), degree=3)
    ra, dec = tpv.pixel_to_world(sol, np.zeros((3, 4)), 5.0)
    assert ra.shape == dec.shape == (3, 4)
    i, j = tpv.world_to_pixel(sol, *tpv.pixel_to_world(sol, 100.0, 200.0))
    assert i.shape == () and abs(float(i) - 100.0) < 1e-9 and abs(float(j) - 200.0) < 1e-9
    # in the canonical form (no constant term), the tangent pixel is the tangent point
    canonical, _ = _random_solution(np.random.default_rng(2), crval=(10.0, 20.0), degree=3, canonical=True)
    ra0, dec0 = tpv.pixel_to_world(canonical, *CENTRE)
    assert abs(float(ra0) - 10.0) < 1e-12 and abs(float(dec0) - 20.0) < 1e-12


def test_world_to_pixel_gives_nan_on_the_far_hemisphere() -> None:
    sol = tpv.TPVSolution.linear(crpix=CENTRE, crval=(10.0, 20.0), cd=cd_matrix(SCALE_ARCSEC, 0.0, 1))
    i, j = tpv.world_to_pixel(sol, np.array([190.0, 10.0]), np.array([-20.0, 20.0]))
    assert np.isnan(i[0]) and np.isnan(j[0]) and np.isfinite(i[1])


# --------------------------------------------------------------------------
# The tangent plane
# --------------------------------------------------------------------------


@pytest.mark.parametrize("crval", [(0.0, 0.0), (359.99, 45.0), (123.0, -89.0), (30.0, 90.0), (30.0, -90.0)])
def test_tangent_plane_agrees_with_wcslib_tan(crval: tuple[float, float]) -> None:
    # a TAN WCS whose CD is the identity (deg/px) has (x, y) = (xi, eta) at 0-based (x, y)
    h = fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRPIX1": 1.0, "CRPIX2": 1.0,
                     "CRVAL1": crval[0], "CRVAL2": crval[1], "CD1_1": 1.0, "CD2_2": 1.0, "LONPOLE": 180.0})
    wcs = WCS(h)
    rng = np.random.default_rng(3)
    xi, eta = rng.uniform(-3.0, 3.0, 200), rng.uniform(-3.0, 3.0, 200)
    ra, dec = tpv.tangent_plane_to_sky(xi, eta, crval)
    ra_w, dec_w = wcs.pixel_to_world_values(xi, eta)
    xi2, eta2 = tpv.tangent_plane(ra_w, dec_w, crval)
    assert np.abs(xi2 - xi).max() < 1e-12 and np.abs(eta2 - eta).max() < 1e-12
    xi3, eta3 = tpv.tangent_plane(ra, dec, crval)
    assert np.abs(xi3 - xi).max() < 1e-12 and np.abs(eta3 - eta).max() < 1e-12


def test_tangent_plane_across_ra_zero() -> None:
    xi, eta = tpv.tangent_plane(np.array([359.9, 0.1, -0.1, 360.1]), np.zeros(4), (0.0, 0.0))
    expected = np.degrees(np.tan(np.radians(0.1)))
    assert np.allclose(xi, [-expected, expected, -expected, expected], rtol=0, atol=1e-13)
    assert np.allclose(eta, 0.0, atol=1e-13)
    ra, dec = tpv.tangent_plane_to_sky(xi, eta, (0.0, 0.0))
    assert np.allclose(ra, [359.9, 0.1, 359.9, 0.1], rtol=0, atol=1e-11) and np.all(ra < 360.0)
    # east is +xi, north is +eta
    xi_e, eta_n = tpv.tangent_plane(np.array([40.01, 40.0]), np.array([10.0, 10.01]), (40.0, 10.0))
    assert xi_e[0] > 0 and abs(eta_n[0]) < 1e-5 and eta_n[1] > 0 and xi_e[1] == 0.0
    # 90 deg or more from the tangent point: no projection
    assert np.all(np.isnan(tpv.tangent_plane(np.array([180.0, 90.0]), np.array([0.0, 0.0]), (0.0, 0.0))))


# --------------------------------------------------------------------------
# Headers and astropy
# --------------------------------------------------------------------------


def test_crpix_is_one_based_only_in_fits() -> None:
    sol = tpv.TPVSolution.linear(crpix=(0.0, 0.0), crval=(45.0, -30.0), cd=cd_matrix(SCALE_ARCSEC, 10.0, 1))
    h = tpv.tpv_header(sol)
    assert h["CRPIX1"] == 1.0 and h["CRPIX2"] == 1.0
    wcs = tpv.to_astropy_wcs(sol)
    ra, dec = wcs.pixel_to_world_values(0.0, 0.0)  # origin 0
    assert abs(float(ra) - 45.0) < 1e-12 and abs(float(dec) + 30.0) < 1e-12
    ra1, dec1 = wcs.all_pix2world(1.0, 1.0, 1)  # the same pixel, 1-based
    assert abs(float(ra1) - 45.0) < 1e-12 and abs(float(dec1) + 30.0) < 1e-12
    ra, dec = tpv.pixel_to_world(sol, 0.0, 0.0)
    assert abs(float(ra) - 45.0) < 1e-12 and abs(float(dec) + 30.0) < 1e-12
    assert tpv.read_tpv_header(h).crpix == (0.0, 0.0)


def test_header_round_trip() -> None:
    sol, _ = _random_solution(np.random.default_rng(5), crval=(271.3, -47.2), degree=7, rotation_deg=-20.0)
    h = tpv.tpv_header(sol, shape=(NY, NX))
    assert (h["CTYPE1"], h["CTYPE2"]) == ("RA---TPV", "DEC--TPV")
    assert h["RADESYS"] == "ICRS" and h["EQUINOX"] == 2000.0 and h["LONPOLE"] == 180.0
    assert (h["IMAGEW"], h["IMAGEH"]) == (NX, NY)
    assert "PV1_39" in h and "PV2_3" in h
    back = tpv.read_tpv_header(h)
    assert back.degree == 7
    assert np.allclose(back.crpix, sol.crpix, rtol=0, atol=1e-12)
    assert np.allclose(back.crval, sol.crval, rtol=1e-15, atol=0)
    assert np.allclose(back.cd, sol.cd, rtol=1e-14, atol=0)
    assert np.allclose(back.pv1, sol.pv1, rtol=1e-14, atol=0)
    assert np.allclose(back.pv2, sol.pv2, rtol=1e-14, atol=0)
    gi, gj = _grid()
    d = _sky_distance_px(*tpv.pixel_to_world(sol, gi, gj), *tpv.pixel_to_world(back, gi, gj), sol.crval,
                         SCALE_ARCSEC)
    assert d.max() < 1e-9


def test_header_writes_linear_terms_and_nonzero_terms_only() -> None:
    sol = tpv.TPVSolution.linear(crpix=CENTRE, crval=(1.0, 2.0), cd=cd_matrix(SCALE_ARCSEC, 0.0, 1), degree=3)
    h = tpv.tpv_header(sol)
    pv_keys = sorted(k for k in h if k.startswith("PV"))
    assert pv_keys == ["PV1_0", "PV1_1", "PV1_2", "PV2_0", "PV2_1", "PV2_2"]
    assert h["PV1_1"] == 1.0 and h["PV2_1"] == 1.0 and "IMAGEW" not in h


def test_to_astropy_wcs_keeps_tpv_in_its_header() -> None:
    sol, _ = _random_solution(np.random.default_rng(6), crval=(80.0, 5.0), degree=3)
    wcs = tpv.to_astropy_wcs(sol, shape=(NY, NX))
    out = wcs.to_header(relax=True)
    assert (out["CTYPE1"], out["CTYPE2"]) == ("RA---TPV", "DEC--TPV")
    assert out["PV1_7"] == pytest.approx(sol.pv1[7], rel=1e-14)
    again = tpv.read_tpv_header(out)
    gi, gj = _grid(n=11)
    d = _sky_distance_px(*tpv.pixel_to_world(sol, gi, gj), *tpv.pixel_to_world(again, gi, gj), sol.crval,
                         SCALE_ARCSEC)
    assert d.max() < 1e-9


LINEAR_FORMS = {
    "cdelt-pc": {"CDELT1": -2.3e-4, "CDELT2": 2.4e-4,
                 "PC1_1": 0.9, "PC1_2": 0.3, "PC2_1": -0.2, "PC2_2": 1.1},
    "cdelt-pc-partial": {"CDELT1": -2.3e-4, "CDELT2": 2.4e-4, "PC1_2": 0.1},
    "cdelt-crota2": {"CDELT1": -2.3e-4, "CDELT2": 2.3e-4, "CROTA2": 33.0},
    "cdelt-crota1-ignored": {"CDELT1": -2.3e-4, "CDELT2": 2.3e-4, "CROTA1": 12.0},
    "cd-over-cdelt": {"CD1_1": -2.3e-4, "CD2_2": 2.3e-4, "CD1_2": 1e-6, "CDELT1": 5.0, "CDELT2": 5.0},
    "pc-over-crota2": {"CDELT1": -2.3e-4, "CDELT2": 2.3e-4, "PC1_2": 0.1, "CROTA2": 40.0},
}


@pytest.mark.parametrize("form", sorted(LINEAR_FORMS))
def test_read_header_linear_forms_like_wcslib(form: str) -> None:
    h = fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRPIX1": 2000.5, "CRPIX2": 1500.0,
                     "CRVAL1": 210.0, "CRVAL2": 54.0, **LINEAR_FORMS[form]})
    sol = tpv.read_tpv_header(h)
    assert sol.degree == 1
    assert np.array_equal(sol.pv1, sol.pv2) and sol.pv1[1] == 1.0 and np.count_nonzero(sol.pv1) == 1
    gi, gj = _grid(4000, 3000, n=9)
    d = _sky_distance_px(*tpv.pixel_to_world(sol, gi, gj), *WCS(h).pixel_to_world_values(gi, gj), sol.crval,
                         0.83)
    assert d.max() < 1e-8


def test_tpv_header_without_pv_reads_as_tan_with_a_warning() -> None:
    h = fits.Header({"CTYPE1": "RA---TPV", "CTYPE2": "DEC--TPV", "CRPIX1": 10.0, "CRPIX2": 20.0,
                     "CRVAL1": 1.0, "CRVAL2": 2.0, "CD1_1": -2e-4, "CD2_2": 2e-4})
    with pytest.warns(AstrodaskWarning, match=r"without PV1_\* and PV2_\* keywords"):
        sol = tpv.read_tpv_header(h)
    assert sol.pv1[1] == sol.pv2[1] == 1.0 and np.count_nonzero(sol.pv1) == np.count_nonzero(sol.pv2) == 1
    assert sol.crpix == (9.0, 19.0)


@pytest.mark.parametrize("crval2", [90.0, 60.0])
def test_lonpole_zero_is_read_like_wcslib(crval2: float) -> None:
    # at CRVAL2 = +90 wcslib's default LONPOLE is 0; elsewhere it must be given
    h = fits.Header({"CTYPE1": "RA---TPV", "CTYPE2": "DEC--TPV", "CRPIX1": 100.0, "CRPIX2": 50.0,
                     "CRVAL1": 75.0, "CRVAL2": crval2, "CD1_1": -2e-4, "CD1_2": 1e-5, "CD2_2": 2e-4,
                     "PV1_1": 1.0, "PV2_1": 1.0, "PV1_4": 3e-3, "PV2_5": -2e-3, "PV1_3": 1e-4})
    if crval2 != 90.0:
        h["LONPOLE"] = 0.0
    sol = tpv.read_tpv_header(h)
    gi, gj = _grid(1000, 800, n=9)
    d = _sky_distance_px(*tpv.pixel_to_world(sol, gi, gj), *WCS(h).pixel_to_world_values(gi, gj), sol.crval,
                         0.72)
    assert d.max() < 1e-8


@pytest.mark.parametrize(("extra", "match"), [
    ({"CTYPE1": "RA---TAN-SIP", "CTYPE2": "DEC--TAN-SIP"}, "not supported"),
    ({"CTYPE1": "DEC--TPV", "CTYPE2": "RA---TPV"}, "not supported"),
    ({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN"}, "projection parameters"),
    ({"PC1_1": 1.0}, "both CDi_j and PCi_j"),
    ({"PV1_40": 1e-3}, "PVi_39"),
    ({"LONPOLE": 90.0}, "LONPOLE"),
    ({"CUNIT1": "arcsec"}, "CUNIT1"),
    ({"CRVAL2": None}, "CRVAL2"),
    ({"CD1_1": None, "CD2_2": None}, "pixel scale is unknown"),
])
def test_read_header_rejects(extra: dict, match: str) -> None:
    h = fits.Header({"CTYPE1": "RA---TPV", "CTYPE2": "DEC--TPV", "CRPIX1": 10.0, "CRPIX2": 20.0,
                     "CRVAL1": 1.0, "CRVAL2": 2.0, "CD1_1": -2e-4, "CD2_2": 2e-4, "PV1_1": 1.0, "PV2_1": 1.0})
    for key, value in extra.items():
        if value is None:
            del h[key]
        else:
            h[key] = value
    with pytest.raises(ValueError, match=match):
        tpv.read_tpv_header(h)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"pv1": np.ones(39)}, "40 finite"),
    ({"pv1": np.r_[0.0, 1.0, np.zeros(10), 1e-3, np.zeros(27)]}, r"non-zero terms \[12\] beyond degree 3"),
    ({"cd": np.zeros((2, 2))}, "invertible"),
    ({"crval": (10.0, 91.0)}, "out of range"),
    ({"crpix": (np.nan, 1.0)}, "finite"),
    ({"degree": 0}, "from 1 to 7"),
])
def test_solution_validates_itself(kwargs: dict, match: str) -> None:
    base = {"crpix": CENTRE, "crval": (10.0, 20.0), "cd": cd_matrix(SCALE_ARCSEC, 0.0, 1),
            "pv1": np.r_[0.0, 1.0, np.zeros(38)], "pv2": np.r_[0.0, 1.0, np.zeros(38)], "degree": 3}
    with pytest.raises(ValueError, match=match):
        tpv.TPVSolution(**{**base, **kwargs})


def test_solution_is_read_only() -> None:
    sol = tpv.TPVSolution.linear(crpix=CENTRE, crval=(370.0, 20.0), cd=cd_matrix(SCALE_ARCSEC, 0.0, 1))
    assert sol.crval == (10.0, 20.0)
    with pytest.raises(ValueError):
        sol.pv1[4] = 1.0
    assert sol.scale_arcsec == pytest.approx(SCALE_ARCSEC, rel=1e-12)


@pytest.mark.parametrize(("rotation_deg", "parity"), [(0.0, 1), (-40.0, -1)])
def test_distortion_px_is_the_simulators_distortion(rotation_deg: float, parity: int) -> None:
    truth = sim.condor_wcs(20.0, -5.0, rotation_deg=rotation_deg, parity=parity, distortion_px=15.0)
    sol = tpv.read_tpv_header(truth.to_header(relax=True))
    corners_i, corners_j = np.array([0.0, NX - 1, 0.0, NX - 1]), np.array([0.0, 0.0, NY - 1, NY - 1])
    di, dj = tpv.distortion_px(sol, corners_i, corners_j)
    assert np.hypot(di, dj).max() == pytest.approx(15.0, rel=1e-9)
    # it is where a plain TAN with the same crpix, crval and cd sees the same sky
    tan = tpv.TPVSolution.linear(crpix=sol.crpix, crval=sol.crval, cd=sol.cd)
    i2, j2 = tpv.world_to_pixel(tan, *tpv.pixel_to_world(sol, corners_i, corners_j))
    assert np.allclose(i2 - corners_i, di, rtol=0, atol=1e-8)
    assert np.allclose(j2 - corners_j, dj, rtol=0, atol=1e-8)
    zero = tpv.distortion_px(tan, corners_i, corners_j)
    assert np.abs(zero).max() < 1e-9


# --------------------------------------------------------------------------
# The local Jacobian
# --------------------------------------------------------------------------


def test_local_jacobian_matches_finite_differences() -> None:
    rng = np.random.default_rng(7)
    sol, _ = _random_solution(rng, crval=(300.0, -60.0), degree=7, rotation_deg=70.0, parity=-1,
                              distortion_px=40.0)
    i, j = rng.uniform(0, NX - 1, 50), rng.uniform(0, NY - 1, 50)
    jac = tpv.local_jacobian(sol, i, j)
    assert jac.shape == (50, 2, 2)
    step = 0.5  # px; the sky chain pixel -> (ra, dec) -> tangent plane is differentiated numerically

    def xi_eta(ii: np.ndarray, jj: np.ndarray) -> np.ndarray:
        return np.stack(tpv.tangent_plane(*tpv.pixel_to_world(sol, ii, jj), sol.crval), axis=-1)

    d_di = (xi_eta(i + step, j) - xi_eta(i - step, j)) / (2 * step)
    d_dj = (xi_eta(i, j + step) - xi_eta(i, j - step)) / (2 * step)
    numeric = np.stack([d_di, d_dj], axis=-1)
    scale = SCALE_ARCSEC / 3600.0
    assert np.abs(jac - numeric).max() < 1e-9 * scale
    # distortion matters: the Jacobian is not the CD matrix
    assert np.abs(jac - sol.cd).max() > 1e-4 * scale


# --------------------------------------------------------------------------
# The fit
# --------------------------------------------------------------------------

CONDOR_CASES = [
    pytest.param(150.0, 30.0, 0.0, 1, id="plain"),
    pytest.param(359.9, -45.0, 63.0, -1, id="ra-wrap-mirrored"),
    pytest.param(30.0, 89.3, 10.0, 1, id="pole-in-field"),
]


@pytest.mark.parametrize(("ra0", "dec0", "rotation_deg", "parity"), CONDOR_CASES)
def test_fit_reproduces_condor_truth(ra0: float, dec0: float, rotation_deg: float, parity: int) -> None:
    truth = sim.condor_wcs(ra0, dec0, rotation_deg=rotation_deg, parity=parity, distortion_px=15.0)
    rng = np.random.default_rng(8)
    i, j = rng.uniform(0, NX - 1, 2000), rng.uniform(0, NY - 1, 2000)
    ra, dec = truth.pixel_to_world_values(i, j)
    # start from a pointing 40" off and a CD matrix 0.5 % and 0.2 deg off
    fit = tpv.fit_tpv(i, j, ra, dec, degree=3, crpix=CENTRE, crval0=(ra0 + 0.01, dec0 - 0.005),
                      cd0=cd_matrix(SCALE_ARCSEC * 1.005, rotation_deg + 0.2, parity))
    assert fit.info is not None and fit.info.converged and fit.info.n_points == 2000
    assert fit.info.condition_number < 100.0
    assert fit.crpix == CENTRE and fit.degree == 3
    for pv in (fit.pv1, fit.pv2):
        assert (pv[0], pv[1], pv[2]) == (0.0, 1.0, 0.0) and np.all(pv[11:] == 0.0) and pv[3] == 0.0
    gi, gj = _grid(margin=50.0)
    d = _sky_distance_px(*tpv.pixel_to_world(fit, gi, gj), *truth.pixel_to_world_values(gi, gj), fit.crval,
                         SCALE_ARCSEC)
    assert d.max() < 1e-6
    assert fit.info.rms_arcsec < 1e-6


@pytest.mark.parametrize("degree", range(1, 8))
def test_fit_reproduces_every_degree(degree: int) -> None:
    rng = np.random.default_rng(100 + degree)
    truth, _ = _random_solution(rng, crval=(210.0, -20.0), degree=degree, rotation_deg=-35.0, canonical=True)
    i, j = rng.uniform(0, NX - 1, 3000), rng.uniform(0, NY - 1, 3000)
    ra, dec = tpv.pixel_to_world(truth, i, j)
    fit = tpv.fit_tpv(i, j, ra, dec, degree=degree, crpix=CENTRE, crval0=(210.003, -20.002),
                      cd0=cd_matrix(SCALE_ARCSEC, -35.1, 1))
    assert fit.info is not None and fit.info.converged
    assert fit.info.n_terms == tpv.min_points_for_degree(degree)
    assert fit.info.condition_number < 1e5  # monomials up to degree 7 on the frame: about 3e4
    gi, gj = _grid()
    d = _sky_distance_px(*tpv.pixel_to_world(fit, gi, gj), *tpv.pixel_to_world(truth, gi, gj), fit.crval,
                         SCALE_ARCSEC)
    assert d.max() < 1e-6
    assert np.allclose(fit.pv1, truth.pv1, rtol=1e-6, atol=1e-12)
    assert np.allclose(fit.pv2, truth.pv2, rtol=1e-6, atol=1e-12)


def _noiseless_pairs(n: int, seed: int
                     ) -> tuple[tpv.TPVSolution, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth, _ = _random_solution(rng, crval=(45.0, 10.0), degree=3, canonical=True)
    i, j = rng.uniform(0, NX - 1, n), rng.uniform(0, NY - 1, n)
    ra, dec = tpv.pixel_to_world(truth, i, j)
    return truth, i, j, ra, dec


def test_fit_honours_weights() -> None:
    truth, i, j, ra, dec = _noiseless_pairs(300, 9)
    dec = dec.copy()
    dec[0] += 60.0 / 3600.0  # a 60" outlier
    kw = {"degree": 3, "crpix": CENTRE, "crval0": truth.crval, "cd0": truth.cd}
    gi, gj = _grid(n=11)
    truth_sky = tpv.pixel_to_world(truth, gi, gj)

    def worst_px(sol: tpv.TPVSolution) -> float:
        return float(_sky_distance_px(*tpv.pixel_to_world(sol, gi, gj), *truth_sky, truth.crval,
                                      SCALE_ARCSEC).max())

    weights = np.ones(i.size)
    assert worst_px(tpv.fit_tpv(i, j, ra, dec, **kw)) > 0.05
    weights[0] = 1e-9
    assert worst_px(tpv.fit_tpv(i, j, ra, dec, weights=weights, **kw)) < 1e-6
    # weight 0 is exactly "leave it out"
    weights[0] = 0.0
    zero = tpv.fit_tpv(i, j, ra, dec, weights=weights, **kw)
    dropped = tpv.fit_tpv(i[1:], j[1:], ra[1:], dec[1:], **kw)
    assert zero.info is not None and zero.info.n_points == 299
    assert np.allclose(zero.pv1, dropped.pv1, rtol=1e-9, atol=1e-15)
    assert np.allclose(zero.cd, dropped.cd, rtol=1e-12, atol=0)


def test_fit_needs_enough_points() -> None:
    truth, i, j, ra, dec = _noiseless_pairs(12, 10)
    kw = {"crpix": CENTRE, "crval0": truth.crval, "cd0": truth.cd}
    with pytest.raises(ValueError, match="degree-3 TPV fit needs at least 10 matched pairs .* got 9"):
        tpv.fit_tpv(i[:9], j[:9], ra[:9], dec[:9], degree=3, **kw)
    weights = np.ones(12)
    weights[:3] = 0.0
    with pytest.raises(ValueError, match="at least 10 .* got 9 \\(of 12\\)"):
        tpv.fit_tpv(i, j, ra, dec, degree=3, weights=weights, **kw)
    assert tpv.fit_tpv(i[:10], j[:10], ra[:10], dec[:10], degree=3, **kw).info.n_points == 10
    with pytest.raises(ValueError, match="degree-4 TPV fit needs at least 15"):
        tpv.fit_tpv(i, j, ra, dec, degree=4, **kw)


def test_fit_rejects_degenerate_and_bad_inputs() -> None:
    truth, i, j, ra, dec = _noiseless_pairs(50, 12)
    kw = {"crpix": CENTRE, "crval0": truth.crval, "cd0": truth.cd}
    line_i = np.linspace(0, NX - 1, 50)
    line_ra, line_dec = tpv.pixel_to_world(truth, line_i, 0.5 * line_i)
    with pytest.raises(ValueError, match="do not constrain a degree-2"):
        tpv.fit_tpv(line_i, 0.5 * line_i, line_ra, line_dec, degree=2, **kw)
    with pytest.raises(ValueError, match="non-finite"):
        tpv.fit_tpv(np.r_[np.nan, i[1:]], j, ra, dec, **kw)
    with pytest.raises(ValueError, match="length of i"):
        tpv.fit_tpv(i, j[:-1], ra, dec, **kw)
    with pytest.raises(ValueError, match="non-negative"):
        tpv.fit_tpv(i, j, ra, dec, weights=-np.ones(50), **kw)
    with pytest.raises(ValueError, match="90 deg or more from the tangent point"):
        tpv.fit_tpv(i, j, ra, dec, crpix=CENTRE, crval0=(225.0, -10.0), cd0=truth.cd)
    with pytest.raises(ValueError, match="n_iter"):
        tpv.fit_tpv(i, j, ra, dec, n_iter=0, **kw)


def test_fit_logs_its_condition_number(caplog: pytest.LogCaptureFixture) -> None:
    truth, i, j, ra, dec = _noiseless_pairs(100, 13)
    with caplog.at_level(logging.DEBUG, logger="astrodask.solve.tpv"):
        fit = tpv.fit_tpv(i, j, ra, dec, crpix=CENTRE, crval0=truth.crval, cd0=truth.cd)
    assert fit.info is not None and np.isfinite(fit.info.condition_number)
    assert any("condition number" in r.getMessage() for r in caplog.records)


def test_fit_residuals_are_observed_minus_reference_east_north() -> None:
    truth, i, j, ra, dec = _noiseless_pairs(20, 14)
    assert np.abs(tpv.fit_residuals_arcsec(truth, i, j, ra, dec)).max() < 1e-9
    ra, dec = ra.copy(), dec.copy()
    ra[0] += 1.0 / 3600.0 / np.cos(np.radians(dec[0]))  # the reference star 1" further east
    dec[1] += 2.0 / 3600.0  # and another 2" further north
    res = tpv.fit_residuals_arcsec(truth, i, j, ra, dec)
    assert res.shape == (20, 2)
    with pytest.raises(ValueError, match="same length"):
        tpv.fit_residuals_arcsec(truth, i, j[:-1], ra, dec)
    assert np.allclose(res[0], [-1.0, 0.0], atol=2e-3)  # gnomonic scale: 1 + O(field radius^2)
    assert np.allclose(res[1], [0.0, -2.0], atol=2e-3)


# --------------------------------------------------------------------------
# A real TPV solution (DECam, from the Legacy Surveys)
# --------------------------------------------------------------------------


def test_decam_header_round_trip(shared_data) -> None:
    path = shared_data / DECAM_FILE
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with fits.open(path) as hdul:
        original = hdul[1].header.copy()
        ny, nx = hdul[1].data.shape
    sol = tpv.read_tpv_header(original)
    assert sol.degree == 3 and sol.crpix == (-119.2001, 7291.67)
    assert sol.pv1[0] != 0.0 and sol.pv1[1] != 1.0  # a non-canonical, real solution
    again = tpv.read_tpv_header(tpv.tpv_header(sol, shape=(ny, nx)))
    wcs = WCS(original)
    scale = sol.scale_arcsec
    cutout = _grid(nx, ny, n=25)
    wider = _grid(2048, 4096, n=25, margin=1000.0)  # the whole CCD and beyond
    for gi, gj in (cutout, wider):
        ra, dec = tpv.pixel_to_world(again, gi, gj)
        ra_w, dec_w = wcs.pixel_to_world_values(gi, gj)
        assert _sky_distance_px(ra, dec, ra_w, dec_w, sol.crval, scale).max() < 1e-6
        i2, j2 = tpv.world_to_pixel(again, ra_w, dec_w)
        assert np.hypot(i2 - gi, j2 - gj).max() < 1e-6
