"""Tests of the simulator: truth WCS, synthetic Gaia catalog, rendering, headers, files.

The decisive test is :func:`test_detections_land_on_truth_positions`: SEP's windowed
centroids of isolated bright stars, measured on an exposure read back from its
``.fits.fz``, must agree with the truth table to better than 0.01 px on average.
"""

from __future__ import annotations

import glob

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import Table, vstack
from astropy.time import Time
from astropy.wcs import WCS
from scipy.spatial import cKDTree

from astrodask.reference import catalog as ref_catalog
from astrodask import simulate as sim
from astrodask.config import GaiaConfig
from astrodask.solve.detect import get_image_ij
from astrodask.errors import CatalogError, ConfigError, InputFileError
from astrodask.reference.healpix import healpix_nested_index
from astrodask.io.exposure import read_exposure
from astrodask.types import REFERENCE_COLUMNS
from astrodask.wcsutil import cd_to_scale_rotation_parity

NX, NY = sim.CONDOR_SHAPE[1], sim.CONDOR_SHAPE[0]
CORNERS = np.array([[0.0, 0.0], [NX - 1.0, 0.0], [0.0, NY - 1.0], [NX - 1.0, NY - 1.0]])


def _tan_without_pv(wcs: WCS) -> WCS:
    """The same WCS with its TPV terms removed (plain TAN), built from its header."""
    header = wcs.to_header(relax=True)
    for key in [k for k in header if k.startswith("PV")]:
        del header[key]
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN", "DEC--TAN"
    return WCS(header)


def _tangent_plane(ra, dec, ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray]:
    """Gnomonic coordinates (deg, xi east, eta north) through astropy's own TAN projection."""
    tan = WCS(naxis=2)
    tan.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    tan.wcs.crval = [ra0, dec0]
    tan.wcs.crpix = [1.0, 1.0]
    tan.wcs.cdelt = [1.0, 1.0]
    xi, eta = tan.world_to_pixel_values(np.asarray(ra), np.asarray(dec))
    return np.asarray(xi), np.asarray(eta)


def _chi2_uniform(counts: np.ndarray) -> float:
    """Chi-square per degree of freedom of counts against a uniform expectation."""
    counts = np.asarray(counts, dtype=float).ravel()
    expected = counts.mean()
    return float(((counts - expected) ** 2 / expected).sum() / (counts.size - 1))


def _detect(data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """astrodask's own detection (get_image_ij, first pass): windowed centroids (i, j) and flux."""
    table = get_image_ij(data)
    return np.asarray(table["i"]), np.asarray(table["j"]), np.asarray(table["flux_adu"])


def _match(truth: Table, x: np.ndarray, y: np.ndarray, radius_px: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest detection of each truth star: (matched mask, dx, dy)."""
    dist, k = cKDTree(np.column_stack([x, y])).query(
        np.column_stack([truth["i"], truth["j"]]), distance_upper_bound=radius_px)
    ok = np.isfinite(dist)
    return ok, x[k[ok]] - np.asarray(truth["i"])[ok], y[k[ok]] - np.asarray(truth["j"])[ok]


def _stars_at_pixels(wcs: WCS, i: np.ndarray, j: np.ndarray, gmag: np.ndarray) -> Table:
    """A minimal catalog whose stars sit at the given truth pixels (no proper motion)."""
    ra, dec = wcs.pixel_to_world_values(i, j)
    return Table({"ra": ra, "dec": dec, "phot_g_mean_mag": gmag})


# --------------------------------------------------------------------------
# The truth WCS
# --------------------------------------------------------------------------


@pytest.mark.parametrize("distortion_px", [sim.DEFAULT_DISTORTION_PX, 15.0])
def test_condor_wcs_round_trip_pixel_sky_pixel(distortion_px: float) -> None:
    wcs = sim.condor_wcs(150.1, 2.2, distortion_px=distortion_px, rotation_deg=17.0)
    gi, gj = np.meshgrid(np.linspace(0, NX - 1, 41), np.linspace(0, NY - 1, 31))
    i, j = np.r_[gi.ravel(), CORNERS[:, 0]], np.r_[gj.ravel(), CORNERS[:, 1]]
    ra, dec = wcs.pixel_to_world_values(i, j)
    i2, j2 = wcs.world_to_pixel_values(ra, dec)
    assert np.max(np.abs(i2 - i)) < 1e-6
    assert np.max(np.abs(j2 - j)) < 1e-6


def test_condor_wcs_crpix_is_the_frame_centre() -> None:
    wcs = sim.condor_wcs(10.0, -30.0)
    assert tuple(wcs.wcs.crpix) == ((NX + 1) / 2.0, (NY + 1) / 2.0)  # 1-based
    ra, dec = wcs.pixel_to_world_values((NX - 1) / 2.0, (NY - 1) / 2.0)  # 0-based
    assert float(ra) == pytest.approx(10.0, abs=1e-10)
    assert float(dec) == pytest.approx(-30.0, abs=1e-10)
    assert wcs.pixel_shape == (NX, NY)
    scale = np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix))) * 3600.0
    assert scale == pytest.approx(sim.CONDOR_SCALE_ARCSEC, rel=1e-12)


@pytest.mark.parametrize("distortion_px", [sim.DEFAULT_DISTORTION_PX, 15.0, -6.0])
def test_corner_distortion_matches_request(distortion_px: float) -> None:
    wcs = sim.condor_wcs(150.1, 2.2, distortion_px=distortion_px, rotation_deg=40.0)
    tan = _tan_without_pv(wcs)
    ra, dec = wcs.pixel_to_world_values(CORNERS[:, 0], CORNERS[:, 1])
    i_tan, j_tan = tan.world_to_pixel_values(ra, dec)
    shift = np.hypot(i_tan - CORNERS[:, 0], j_tan - CORNERS[:, 1])
    assert shift.max() == pytest.approx(abs(distortion_px), rel=0.1)
    # the radial term dominates: every corner moves by a comparable amount, outward for > 0
    assert shift.min() > 0.6 * shift.max()
    centre = np.array([(NX - 1) / 2.0, (NY - 1) / 2.0])
    outward = np.einsum("ij,ij->i", np.column_stack([i_tan, j_tan]) - CORNERS, CORNERS - centre)
    assert np.all(np.sign(outward) == np.sign(distortion_px))
    # no distortion at the centre
    ra_c, dec_c = wcs.pixel_to_world_values(*centre)
    assert np.allclose(tan.world_to_pixel_values(ra_c, dec_c), centre, atol=1e-9)


def test_condor_wcs_without_distortion_is_plain_tan() -> None:
    wcs = sim.condor_wcs(150.1, 2.2, distortion_px=0.0)
    tan = _tan_without_pv(wcs)
    ra, dec = wcs.pixel_to_world_values(CORNERS[:, 0], CORNERS[:, 1])
    assert np.allclose(np.column_stack(tan.world_to_pixel_values(ra, dec)), CORNERS, atol=1e-8)


def _step_direction(wcs: WCS, di: float, dj: float) -> tuple[float, float]:
    """(east, north) offsets in arcsec of a small pixel step from the frame centre."""
    c = np.array([(NX - 1) / 2.0, (NY - 1) / 2.0])
    ra, dec = wcs.pixel_to_world_values([c[0], c[0] + di], [c[1], c[1] + dj])
    east = (ra[1] - ra[0]) * np.cos(np.radians(dec[0])) * 3600.0
    return float(east), float((dec[1] - dec[0]) * 3600.0)


def test_parity_flips_east_and_west() -> None:
    normal = sim.condor_wcs(150.1, 2.2, parity=1)
    mirrored = sim.condor_wcs(150.1, 2.2, parity=-1)
    east, north = _step_direction(normal, 1.0, 0.0)
    assert east == pytest.approx(-sim.CONDOR_SCALE_ARCSEC, rel=1e-6)  # +i is west: east is left
    assert north == pytest.approx(0.0, abs=1e-6)
    assert _step_direction(mirrored, 1.0, 0.0)[0] == pytest.approx(sim.CONDOR_SCALE_ARCSEC, rel=1e-6)
    for wcs in (normal, mirrored):  # +j is north in both
        assert _step_direction(wcs, 0.0, 1.0)[1] == pytest.approx(sim.CONDOR_SCALE_ARCSEC, rel=1e-6)
    assert np.linalg.det(normal.pixel_scale_matrix) < 0 < np.linalg.det(mirrored.pixel_scale_matrix)


@pytest.mark.parametrize("rotation_deg", [0.0, 30.0, 90.0, 200.0, -45.0])
@pytest.mark.parametrize("parity", [1, -1])
def test_rotation_is_position_angle_of_plus_j(rotation_deg: float, parity: int) -> None:
    wcs = sim.condor_wcs(150.1, 2.2, rotation_deg=rotation_deg, parity=parity, distortion_px=15.0)
    east, north = _step_direction(wcs, 0.0, 1.0)
    pa = np.degrees(np.arctan2(east, north))
    assert (pa - rotation_deg + 180.0) % 360.0 - 180.0 == pytest.approx(0.0, abs=1e-3)
    scale, rotation, found_parity = cd_to_scale_rotation_parity(wcs.pixel_scale_matrix)
    assert scale == pytest.approx(sim.CONDOR_SCALE_ARCSEC, rel=1e-12) and found_parity == parity
    assert (rotation - rotation_deg + 180.0) % 360.0 - 180.0 == pytest.approx(0.0, abs=1e-9)


def test_written_truth_wcs_gives_identical_pixel_positions(tmp_path) -> None:
    shape = (600, 900)
    wcs = sim.condor_wcs(359.9, 61.0, shape=shape, distortion_px=15.0, rotation_deg=123.0, parity=-1)
    paths = sim.write_exposure(tmp_path / "x.fits.fz", np.zeros(shape, np.uint16), fits.Header(),
                               truth_wcs=wcs)
    header = fits.getheader(paths.truth_wcs)
    assert header["CTYPE1"] == "RA---TPV" and header["CTYPE2"] == "DEC--TPV"
    assert {"PV1_7", "PV1_9", "PV2_7", "PV2_9", "PV1_4", "PV2_6"} <= set(header)
    reread = sim.read_truth_wcs(paths.image)
    assert reread.pixel_shape == (shape[1], shape[0])
    rng = np.random.default_rng(1)
    i, j = rng.uniform(-50, shape[1] + 50, 500), rng.uniform(-50, shape[0] + 50, 500)
    ra, dec = wcs.pixel_to_world_values(i, j)
    i1, j1 = wcs.world_to_pixel_values(ra, dec)
    i2, j2 = reread.world_to_pixel_values(ra, dec)
    assert np.max(np.abs(i2 - i1)) < 1e-8
    assert np.max(np.abs(j2 - j1)) < 1e-8


def test_bad_wcs_arguments_are_refused() -> None:
    with pytest.raises(ConfigError, match="parity"):
        sim.condor_wcs(0.0, 0.0, parity=0)
    with pytest.raises(ConfigError, match="scale_arcsec"):
        sim.condor_wcs(0.0, 0.0, scale_arcsec=-1.0)
    with pytest.raises(ConfigError, match="dec_deg"):
        sim.condor_wcs(0.0, 95.0)


# --------------------------------------------------------------------------
# The synthetic Gaia catalog
# --------------------------------------------------------------------------


def test_catalog_has_gaia_archive_columns_and_units() -> None:
    cat = sim.synthetic_gaia_catalog(150.1, 2.2, rng=np.random.default_rng(2), radius_deg=0.5,
                                     density_per_deg2=4000.0)
    assert cat.colnames == list(REFERENCE_COLUMNS)
    for name, unit in REFERENCE_COLUMNS.items():
        if unit:  # types.py writes Gaia's electron flux as "e-/s"
            assert cat[name].unit == u.Unit(unit.replace("e-", "electron")), name
    assert cat["source_id"].dtype == np.int64
    assert np.all(cat["ref_epoch"] == 2016.0)
    g = np.asarray(cat["phot_g_mean_mag"])
    assert np.allclose(cat["phot_g_mean_flux"], 10 ** (-0.4 * (g - 25.6874)), rtol=1e-12)
    assert g.min() >= sim.DEFAULT_BRIGHT_LIMIT and g.max() <= 20.0
    no_pm = ~np.isfinite(cat["pmra"])
    assert np.array_equal(no_pm, ~np.isfinite(cat["pmdec"]))
    assert np.array_equal(no_pm, ~np.isfinite(cat["parallax"]))
    assert 0 < no_pm.sum() < 0.2 * len(cat) and g[no_pm].min() > 18.0  # 2-parameter solutions: faint
    pm = np.hypot(cat["pmra"], cat["pmdec"])[~no_pm]
    assert 2.0 < np.median(pm) < 15.0 and pm.max() > 50.0  # a few mas/yr, a few fast stars
    err = np.asarray(cat["ra_error"])
    assert np.median(err[g < 15]) < 0.05 < np.median(err[(g > 19.5) & ~no_pm]) < 1.0  # mas, grows with G


def test_magnitude_counts_rise_as_designed() -> None:
    density = 20000.0
    cat = sim.synthetic_gaia_catalog(30.0, -60.0, rng=np.random.default_rng(3), radius_deg=1.0,
                                     density_per_deg2=density, bright_limit=10.0, mag_limit=20.0)
    area = 2 * np.pi * (1 - np.cos(np.radians(1.0))) * (180 / np.pi) ** 2
    assert abs(len(cat) - density * area) < 5 * np.sqrt(density * area)
    counts, edges = np.histogram(cat["phot_g_mean_mag"], bins=np.arange(13.0, 20.01, 1.0))
    slope = np.polyfit(0.5 * (edges[1:] + edges[:-1]), np.log10(counts), 1)[0]
    assert slope == pytest.approx(sim.DEFAULT_COUNT_SLOPE_DEX_PER_MAG, abs=0.02)
    assert np.all(np.diff(counts) > 0)


def test_catalog_positions_fill_the_rectangular_footprint() -> None:
    cat = sim.synthetic_gaia_catalog(150.1, 2.2, rng=np.random.default_rng(4), width_deg=1.0,
                                     height_deg=0.5, density_per_deg2=20000.0)
    xi, eta = _tangent_plane(cat["ra"], cat["dec"], 150.1, 2.2)
    assert np.all(np.abs(xi) <= 0.5) and np.all(np.abs(eta) <= 0.25)
    assert xi.max() > 0.49 and xi.min() < -0.49 and eta.max() > 0.24 and eta.min() < -0.24
    counts, _, _ = np.histogram2d(xi, eta, bins=(8, 4), range=((-0.5, 0.5), (-0.25, 0.25)))
    assert _chi2_uniform(counts) < 2.0


def test_footprint_is_uniform_around_the_pole() -> None:
    radius = 1.0
    cat = sim.synthetic_gaia_catalog(10.0, 89.5, rng=np.random.default_rng(5), radius_deg=radius,
                                     density_per_deg2=10000.0)
    centre = SkyCoord(10.0 * u.deg, 89.5 * u.deg)
    stars = SkyCoord(cat["ra"], cat["dec"])
    sep_deg = centre.separation(stars).deg
    assert sep_deg.max() <= radius + 1e-9
    assert np.any(np.asarray(cat["dec"]) > 89.95)  # the pole itself is covered
    equal_area = (1 - np.cos(np.radians(sep_deg))) / (1 - np.cos(np.radians(radius)))
    assert _chi2_uniform(np.histogram(equal_area, bins=10, range=(0, 1))[0]) < 2.0
    pa = centre.position_angle(stars).deg
    assert _chi2_uniform(np.histogram(pa, bins=12, range=(0, 360))[0]) < 2.0
    xi, eta = _tangent_plane(cat["ra"], cat["dec"], 10.0, 89.5)
    inner = np.hypot(xi, eta) < 0.7  # a square grid inside the cap
    counts, _, _ = np.histogram2d(xi[inner], eta[inner], bins=4, range=((-0.49, 0.49), (-0.49, 0.49)))
    assert _chi2_uniform(counts) < 2.0


def test_footprint_is_uniform_across_ra_zero() -> None:
    cat = sim.synthetic_gaia_catalog(0.05, -20.0, rng=np.random.default_rng(6), width_deg=1.0,
                                     height_deg=1.0, density_per_deg2=10000.0)
    ra = np.asarray(cat["ra"])
    assert np.all((ra >= 0.0) & (ra < 360.0))
    west, east = ra > 180.0, ra < 180.0
    assert west.sum() > 0.3 * len(cat) and east.sum() > 0.3 * len(cat)
    xi, eta = _tangent_plane(ra, cat["dec"], 0.05, -20.0)
    assert np.all(np.abs(xi) <= 0.5) and np.all(np.abs(eta) <= 0.5)
    counts, _, _ = np.histogram2d(xi, eta, bins=5, range=((-0.5, 0.5), (-0.5, 0.5)))
    assert _chi2_uniform(counts) < 2.0


# hand-derived HEALPix base pixels: 0-3 north (centred at RA 45, 135, 225, 315), 4-7 equatorial
# (centred at RA 0, 90, 180, 270 on the equator), 8-11 south
BASE_PIXELS = [
    (45.0, 60.0, 0), (135.0, 60.0, 1), (225.0, 60.0, 2), (315.0, 60.0, 3),
    (0.0, 0.0, 4), (90.0, 0.0, 5), (180.0, 0.0, 6), (270.0, 0.0, 7),
    (45.0, -60.0, 8), (135.0, -60.0, 9), (225.0, -60.0, 10), (315.0, -60.0, 11),
    (359.9, 0.0, 4), (0.0, 30.0, 4), (45.0, 30.0, 0), (10.0, 89.9, 0), (100.0, 89.9, 1),
    (200.0, -89.9, 10),
]


@pytest.mark.parametrize(("ra", "dec", "face"), BASE_PIXELS)
def test_healpix_base_pixels_by_hand(ra: float, dec: float, face: int) -> None:
    assert int(healpix_nested_index(ra, dec, level=0)) == face
    assert int(healpix_nested_index(ra, dec, level=12)) >> 24 == face


# level 1: inside a base pixel the nested sub-pixels are 0 south, 1 east, 2 west, 3 north
SUB_PIXELS = [(45.0, 20.0, 0), (80.0, 38.0, 1), (10.0, 38.0, 2), (45.0, 60.0, 3),
              (45.0, -60.0, 32), (45.0, -20.0, 35), (0.0, -5.0, 16), (0.0, 5.0, 19)]


@pytest.mark.parametrize(("ra", "dec", "index"), SUB_PIXELS)
def test_healpix_level1_sub_pixels_by_hand(ra: float, dec: float, index: int) -> None:
    assert int(healpix_nested_index(ra, dec, level=1)) == index


def test_healpix_pixels_have_equal_areas_and_are_compact() -> None:
    rng = np.random.default_rng(70)
    n, level = 300_000, 4
    ra, dec = rng.uniform(0, 360, n), np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    pix = healpix_nested_index(ra, dec, level=level)
    counts = np.bincount(pix, minlength=12 * 4**level)
    assert counts.size == 12 * 4**level
    assert _chi2_uniform(counts) < 1.3
    # every pixel is one compact patch: points lie close to their pixel's mean direction
    xyz = np.column_stack([np.cos(np.radians(dec)) * np.cos(np.radians(ra)),
                           np.cos(np.radians(dec)) * np.sin(np.radians(ra)), np.sin(np.radians(dec))])
    mean = np.zeros((counts.size, 3))
    np.add.at(mean, pix, xyz)
    mean /= np.linalg.norm(mean, axis=1)[:, None]
    dist_deg = np.degrees(np.arccos(np.clip(np.einsum("ij,ij->i", xyz, mean[pix]), -1, 1)))
    pixel_size_deg = np.sqrt(41252.96 / counts.size)
    assert dist_deg.max() < 1.2 * pixel_size_deg


def test_healpix_nested_hierarchy_is_consistent() -> None:
    rng = np.random.default_rng(7)
    ra, dec = rng.uniform(0, 360, 5000), np.degrees(np.arcsin(rng.uniform(-1, 1, 5000)))
    fine = healpix_nested_index(ra, dec, level=12)
    assert fine.min() >= 0 and fine.max() < 12 * 4**12
    for level in range(12):
        assert np.array_equal(fine >> (2 * (12 - level)), healpix_nested_index(ra, dec, level=level))


def test_source_id_encodes_level12_healpix_of_position() -> None:
    cat = sim.synthetic_gaia_catalog(0.05, 75.0, rng=np.random.default_rng(8), radius_deg=0.5,
                                     density_per_deg2=30000.0)
    sid = np.asarray(cat["source_id"])
    assert np.array_equal(sid >> 35, healpix_nested_index(cat["ra"], cat["dec"], level=12))
    assert np.unique(sid).size == sid.size
    running = sid & (2**35 - 1)
    assert running.min() == 1 and running.max() > 1  # several stars share some level-12 pixels


def test_healpix_matches_real_gaia_source_ids(shared_data) -> None:
    files = sorted(glob.glob(str(shared_data / "decam_tpv_cutout" / "chunk-*.fits")))
    if not files:
        pytest.skip("no Gaia chunk files in decam_tpv_cutout")
    real = vstack([Table.read(f) for f in files])
    sid = np.asarray(real["source_id"]).astype(np.int64)
    assert np.array_equal(sid >> 35, healpix_nested_index(real["ra"], real["dec"], level=12))


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------


@pytest.mark.parametrize(("ellipticity", "angle"), [(0.05, 30.0), (0.3, 77.0), (0.0, 0.0)])
def test_noiseless_star_centroid_and_flux_equal_truth(ellipticity: float, angle: float) -> None:
    shape = (360, 600)
    wcs = sim.condor_wcs(150.1, 2.2, shape=shape, distortion_px=5.0)
    rng = np.random.default_rng(9)
    gi, gj = np.meshgrid(np.arange(40, 600, 60), np.arange(40, 360, 60))
    i = gi.ravel() + rng.uniform(-0.5, 0.5, gi.size)
    j = gj.ravel() + rng.uniform(-0.5, 0.5, gi.size)
    stars = _stars_at_pixels(wcs, i, j, rng.uniform(11.0, 19.0, i.size))
    image, truth = sim.render_stars(stars, wcs, epoch_yr=2016.0, ellipticity=ellipticity,
                                    psf_angle_deg=angle)
    assert image.dtype == np.float32 and image.shape == shape
    assert np.allclose(truth["i"], i, atol=1e-8) and np.allclose(truth["j"], j, atol=1e-8)
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    for star in truth:
        box = (slice(round(star["j"]) - 29, round(star["j"]) + 30),
               slice(round(star["i"]) - 29, round(star["i"]) + 30))
        flux = image[box].astype(np.float64)
        assert flux.sum() == pytest.approx(star["flux_adu"], rel=1e-4)
        assert abs((flux * cols[box]).sum() / flux.sum() - star["i"]) < 0.002
        assert abs((flux * rows[box]).sum() / flux.sum() - star["j"]) < 0.002
        assert flux.max() == pytest.approx(star["peak_adu"], rel=1e-6)
    assert image.sum() == pytest.approx(float(np.sum(truth["flux_adu"])), rel=1e-4)


def test_stars_are_moved_to_the_exposure_epoch() -> None:
    shape = (300, 300)
    wcs = sim.condor_wcs(150.1, 2.2, shape=shape)
    ra0, dec0 = wcs.pixel_to_world_values(150.0, 150.0)
    stars = Table({"source_id": [42], "ra": [float(ra0)], "dec": [float(dec0)], "pmra": [500.0],
                   "pmdec": [-300.0], "ref_epoch": [2016.0], "phot_g_mean_mag": [14.0]})
    _, truth = sim.render_stars(stars, wcs, epoch_yr=2026.0)
    ra, dec = ref_catalog.propagate_to_epoch(ra0, dec0, 500.0, -300.0, 10.0)
    assert truth["source_id"][0] == 42
    assert truth["ra"][0] == pytest.approx(float(ra), abs=1e-12)
    assert truth["dec"][0] == pytest.approx(float(dec), abs=1e-12)
    i, j = wcs.world_to_pixel_values(truth["ra"][0], truth["dec"][0])
    assert (truth["i"][0], truth["j"][0]) == pytest.approx((float(i), float(j)), abs=1e-9)
    moved_px = np.hypot(truth["i"][0] - 150.0, truth["j"][0] - 150.0)
    assert moved_px == pytest.approx(10.0 * np.hypot(500.0, 300.0) / 850.0, rel=1e-3)


def test_render_accepts_minimal_tables_with_masked_motions() -> None:
    shape = (200, 200)
    wcs = sim.condor_wcs(6.3, 61.3, shape=shape)
    ra, dec = wcs.pixel_to_world_values([50.0, 150.0], [60.0, 120.0])
    stars = Table({"ra": ra, "dec": dec, "pmra": np.ma.masked_array([3.0, 0.0], mask=[False, True]),
                   "pmdec": np.ma.masked_array([-2.0, 0.0], mask=[False, True]),
                   "phot_g_mean_flux": 10 ** (-0.4 * (np.array([15.0, 16.0]) - 25.6874))})
    _, truth = sim.render_stars(stars, wcs, epoch_yr=2016.0)
    assert list(truth["source_id"]) == [0, 1]
    assert np.allclose(truth["phot_g_mean_mag"], [15.0, 16.0])
    assert truth["i"][1] == pytest.approx(150.0, abs=1e-8)
    with pytest.raises(CatalogError, match="read_catalog"):
        sim.render_stars(Table({"RA_ICRS": ra, "DE_ICRS": dec, "Gmag": [15.0, 16.0]}), wcs)


def test_isolated_star_total_flux_matches_within_noise() -> None:
    shape = (201, 201)
    wcs = sim.condor_wcs(150.1, 2.2, shape=shape)
    stars = _stars_at_pixels(wcs, np.array([100.3]), np.array([99.8]), np.array([15.0]))
    kw = dict(sky_adu=50.0, bias_adu=500.0, gain_e_per_adu=0.8, read_noise_e=2.0)
    image, truth = sim.render_exposure(stars, wcs, rng=np.random.default_rng(10), epoch_yr=2016.0,
                                       sky_gradient_frac=0.0, **kw)
    assert image.dtype == np.uint16
    box = image[70:131, 70:131].astype(np.float64)
    measured = box.sum() - box.size * (kw["sky_adu"] + kw["bias_adu"])
    flux = truth["flux_adu"][0]
    gain = kw["gain_e_per_adu"]
    sigma = np.sqrt((flux + box.size * kw["sky_adu"]) / gain
                    + box.size * ((kw["read_noise_e"] / gain) ** 2 + 1.0 / 12.0))
    assert abs(measured - flux) < 4.0 * sigma
    assert truth["isolated"][0] and not truth["saturated"][0] and truth["in_frame"][0]


def test_saturated_star_is_flat_topped_and_flagged() -> None:
    shape = (200, 300)
    wcs = sim.condor_wcs(150.1, 2.2, shape=shape)
    stars = _stars_at_pixels(wcs, np.array([80.2, 220.0]), np.array([100.4, 100.0]), np.array([8.0, 15.0]))
    image, truth = sim.render_exposure(stars, wcs, rng=np.random.default_rng(11), epoch_yr=2016.0,
                                       saturation_adu=60000.0)
    assert image.max() == 60000
    core = image[99:103, 79:83]  # every pixel within ~1.5 px of the bright star's centre
    assert np.all(core == 60000)
    assert (image == 60000).sum() >= 20
    assert list(truth["saturated"]) == [True, False]
    assert list(truth["isolated"]) == [True, True]  # 140 px apart
    assert image[90:111, 210:231].max() < 60000


def test_neighbours_spoil_isolation() -> None:
    shape = (100, 100)
    wcs = sim.condor_wcs(150.1, 2.2, shape=shape)
    stars = _stars_at_pixels(wcs, np.array([40.0, 46.0, 80.0]), np.array([50.0, 50.0, 50.0]),
                             np.array([14.0, 16.0, 15.0]))
    _, truth = sim.render_stars(stars, wcs, epoch_yr=2016.0)
    assert list(truth["isolated"]) == [False, False, True]


def test_cosmic_rays_and_hot_columns_present_when_asked() -> None:
    shape = (300, 400)
    wcs = sim.condor_wcs(150.1, 2.2, shape=shape)
    empty = Table(names=("ra", "dec", "phot_g_mean_mag"), dtype=(float, float, float))
    common = dict(sky_adu=50.0, bias_adu=500.0, sky_gradient_frac=0.0, epoch_yr=2016.0)
    clean, truth = sim.render_exposure(empty, wcs, rng=np.random.default_rng(12), **common)
    assert len(truth) == 0
    noise = np.std(clean.astype(float))
    assert clean.max() < 550 + 8 * noise and clean.min() > 550 - 8 * noise

    image, truth = sim.render_exposure(empty, wcs, rng=np.random.default_rng(13), n_cosmic_rays=12,
                                       n_hot_columns=2, **common)
    hot = truth.meta["hot_columns"]
    assert len(hot) == 2
    columns = np.zeros(shape[1], bool)
    for col, first_row, level in hot:
        columns[col] = True
        excess = np.median(image[first_row:, col]) - 550.0
        assert excess == pytest.approx(level, abs=0.1 * level + 3.0)
    outliers = image[:, ~columns].astype(float) > 550 + 20 * noise
    assert truth.meta["cosmic_rays"] == 12
    assert 12 <= outliers.sum() <= truth.meta["cosmic_ray_pixels"]
    assert outliers.sum() >= 0.8 * truth.meta["cosmic_ray_pixels"]  # a few may fall on hot columns
    # sharp: no PSF, a hit is far brighter than the mean of its 8 neighbours
    rows, cols = np.nonzero(image.astype(float) > 550 + 20 * noise)
    inner = (rows > 0) & (rows < shape[0] - 1) & (cols > 0) & (cols < shape[1] - 1) & ~columns[cols]
    peak = np.argmax(image[rows[inner], cols[inner]])
    r, c = rows[inner][peak], cols[inner][peak]
    around = (image[r - 1:r + 2, c - 1:c + 2].astype(float).sum() - image[r, c]) / 8.0
    assert image[r, c] - 550 > 2.0 * (around - 550)


def test_galaxies_present_and_extended() -> None:
    shape = (300, 400)
    wcs = sim.condor_wcs(150.1, 2.2, shape=shape)
    star = _stars_at_pixels(wcs, np.array([200.0]), np.array([150.0]), np.array([19.0]))
    common = dict(sky_adu=50.0, bias_adu=500.0, sky_gradient_frac=0.0, epoch_yr=2016.0,
                  zero_point_mag=25.0)  # bright galaxies: each one measurable
    image, truth = sim.render_exposure(star, wcs, rng=np.random.default_rng(14), n_galaxies=8, **common)
    galaxies = np.array(truth.meta["galaxies"])
    assert galaxies.shape == (8, 4)
    data = image.astype(np.float64) - 550.0
    peak_fractions = []
    for gi, gj, _flux, _ in galaxies:
        ic, jc = round(gi), round(gj)
        if not (12 <= ic < shape[1] - 12 and 12 <= jc < shape[0] - 12):
            continue
        box = data[jc - 10:jc + 11, ic - 10:ic + 11]
        sigma_box = np.sqrt(box.size * common["sky_adu"] / sim.DEFAULT_GAIN_E_PER_ADU)  # ADU
        assert box.sum() > 10 * sigma_box  # clearly there
        peak_fractions.append(data[jc - 1:jc + 2, ic - 1:ic + 2].max() / box.sum())
    assert len(peak_fractions) >= 4
    ic, jc = round(truth["i"][0]), round(truth["j"][0])
    star_box = data[jc - 10:jc + 11, ic - 10:ic + 11]
    assert np.mean(peak_fractions) < 0.7 * star_box.max() / star_box.sum()  # extended, not stellar


def test_detections_land_on_truth_positions(tmp_path) -> None:
    """SEP windowed centroids of isolated bright stars agree with the truth to < 0.01 px."""
    rng = np.random.default_rng(15)
    shape = (1500, 2000)
    wcs = sim.condor_wcs(150.1, 2.2, shape=shape, distortion_px=3.0, rotation_deg=12.0)
    stars = sim.synthetic_gaia_catalog(150.1, 2.2, rng=rng, width_deg=0.6, height_deg=0.6,
                                       density_per_deg2=5000.0, bright_limit=11.5, mag_limit=19.0,
                                       count_slope_dex_per_mag=0.15)
    image, truth = sim.render_exposure(stars, wcs, rng=rng, epoch_yr=2024.5, n_galaxies=150,
                                       n_cosmic_rays=10, n_hot_columns=1)
    header = sim.approximate_header(wcs, rng=rng, epoch_yr=2024.5)
    paths = sim.write_exposure(tmp_path / "field.fits.fz", image, header, truth_wcs=wcs,
                               truth_table=truth)
    exposure = read_exposure(paths.image)  # the .fits.fz through the pipeline's own reader
    assert np.array_equal(exposure.data, image)
    x, y, _ = _detect(exposure.data)
    margin = 20.0
    good = (truth["isolated"] & ~truth["saturated"] & (truth["phot_g_mean_mag"] < 17.0)
            & (truth["i"] > margin) & (truth["i"] < shape[1] - margin)
            & (truth["j"] > margin) & (truth["j"] < shape[0] - margin))
    good &= ~np.isin(np.rint(truth["i"]).astype(int), [c for c, _, _ in truth.meta["hot_columns"]])
    selected = truth[good]
    matched, dx, dy = _match(selected, x, y, radius_px=1.0)
    assert len(selected) >= 200
    assert matched.mean() > 0.97
    assert abs(dx.mean()) < 0.01 and abs(dy.mean()) < 0.01
    assert np.sqrt(np.mean(dx**2 + dy**2)) < 0.06


def test_render_real_gaia_catalog(shared_data) -> None:
    read_catalog = getattr(ref_catalog, "read_catalog", None)
    if read_catalog is None:
        pytest.skip("astrodask.reference.catalog.read_catalog (VizieR to archive names) is not written yet")
    stars = read_catalog(shared_data / "gaia_dr3_ngc103" / "ngc103_field_gaiadr3.csv")
    assert {"ra", "dec", "phot_g_mean_mag", "pmra", "pmdec"} <= set(stars.colnames)
    shape = (1600, 1000)  # 0.24 x 0.38 deg inside the 0.33 x 0.53 deg field
    wcs = sim.condor_wcs(6.3, 61.32, shape=shape, distortion_px=4.0)
    rng = np.random.default_rng(16)
    image, truth = sim.render_exposure(stars, wcs, rng=rng, epoch_yr=2024.5)
    i, j = wcs.world_to_pixel_values(*ref_catalog.propagate_to_epoch(
        np.asarray(stars["ra"], float), np.asarray(stars["dec"], float),
        np.ma.filled(np.ma.asarray(stars["pmra"], float), np.nan),
        np.ma.filled(np.ma.asarray(stars["pmdec"], float), np.nan), 2024.5 - 2016.0))
    inside = (i >= -0.5) & (i < shape[1] - 0.5) & (j >= -0.5) & (j < shape[0] - 0.5)
    assert truth["in_frame"].sum() == inside.sum() > 2000
    x, y, _ = _detect(image)
    good = (truth["isolated"] & ~truth["saturated"] & (truth["phot_g_mean_mag"] < 17.0)
            & (truth["i"] > 20) & (truth["i"] < shape[1] - 20)
            & (truth["j"] > 20) & (truth["j"] < shape[0] - 20))
    matched, dx, dy = _match(truth[good], x, y, radius_px=1.0)
    assert good.sum() > 100 and matched.mean() > 0.95
    assert abs(dx.mean()) < 0.02 and abs(dy.mean()) < 0.02


# --------------------------------------------------------------------------
# Headers and files
# --------------------------------------------------------------------------


def test_approximate_wcs_header_has_the_requested_errors() -> None:
    truth = sim.condor_wcs(150.1, 2.2, rotation_deg=10.0, distortion_px=8.0)
    header = sim.approximate_header(truth, pointing_error_arcmin=3.0, pointing_pa_deg=60.0,
                                     rotation_error_deg=0.5, scale_error_frac=0.003, epoch_yr=2024.5)
    approx = WCS(header)
    assert header["CTYPE1"] == "RA---TAN" and "PV1_7" not in header
    assert (header["CRPIX1"], header["CRPIX2"]) == ((NX + 1) / 2.0, (NY + 1) / 2.0)
    true_centre = SkyCoord(*truth.pixel_to_world_values((NX - 1) / 2.0, (NY - 1) / 2.0), unit="deg")
    approx_centre = SkyCoord(header["CRVAL1"], header["CRVAL2"], unit="deg")
    assert true_centre.separation(approx_centre).arcmin == pytest.approx(3.0, abs=1e-6)
    assert true_centre.position_angle(approx_centre).deg == pytest.approx(60.0, abs=1e-3)
    scale, rotation, parity = cd_to_scale_rotation_parity(approx.pixel_scale_matrix)
    assert scale == pytest.approx(sim.CONDOR_SCALE_ARCSEC * 1.003, rel=1e-9)
    assert rotation == pytest.approx(10.5, abs=1e-9) and parity == 1
    assert header["EXPTIME"] == 60.0 and header["SATURATE"] == 65535.0 and header["GAIN"] == 0.8
    assert header["TELESCOP"] and header["INSTRUME"] and header["FILTER"]
    start = Time(header["DATE-OBS"], format="isot", scale="utc")
    assert start.mjd == pytest.approx(header["MJD-OBS"], abs=1e-8)
    mid_epoch = 2000.0 + (header["MJD-OBS"] + 30.0 / 86400.0 - 51544.5) / 365.25
    assert mid_epoch == pytest.approx(2024.5, abs=1e-9)


@pytest.mark.parametrize("radec_format", ["both", "sexagesimal", "degrees", "objctra"])
def test_approximate_keyword_header(radec_format: str) -> None:
    truth = sim.condor_wcs(15.5, -45.25)
    header = sim.approximate_header(truth, style="keywords", radec_format=radec_format,
                                    pointing_error_arcmin=2.0, rng=np.random.default_rng(17))
    assert "CTYPE1" not in header and "CD1_1" not in header
    assert header["PIXSCALE"] == pytest.approx(sim.CONDOR_SCALE_ARCSEC * (1 + sim.DEFAULT_SCALE_ERROR_FRAC),
                                               abs=1e-4)
    if radec_format in ("objctra", "both"):
        pos = SkyCoord(header["OBJCTRA"], header["OBJCTDEC"], unit=(u.hourangle, u.deg))
    elif radec_format == "sexagesimal":
        assert ":" in header["RA"] and ":" in header["DEC"]
        pos = SkyCoord(header["RA"], header["DEC"], unit=(u.hourangle, u.deg))
    else:
        assert isinstance(header["RA"], float) and "OBJCTRA" not in header
        pos = SkyCoord(header["RA"], header["DEC"], unit="deg")
    if radec_format == "both":
        assert isinstance(header["RA"], float)
    centre = SkyCoord(15.5, -45.25, unit="deg")
    assert centre.separation(pos).arcmin == pytest.approx(2.0, abs=0.01)  # rounding of the strings


def test_approximate_header_needs_a_direction_or_an_rng() -> None:
    with pytest.raises(ConfigError, match="pointing_pa_deg"):
        sim.approximate_header(sim.condor_wcs(0.0, 0.0))
    with pytest.raises(ConfigError, match="style"):
        sim.approximate_header(sim.condor_wcs(0.0, 0.0), pointing_pa_deg=0.0, style="xy")


@pytest.mark.parametrize("compress", [True, False])
def test_write_exposure_is_lossless(tmp_path, compress: bool) -> None:
    shape = (120, 160)
    wcs = sim.condor_wcs(150.1, 2.2, shape=shape)
    image = np.random.default_rng(18).integers(0, 65536, shape).astype(np.uint16)
    header = sim.approximate_header(wcs, pointing_pa_deg=0.0)
    truth = Table({"source_id": np.arange(3, dtype=np.int64), "i": [1.0, 2.0, 3.0]})
    paths = sim.write_exposure(tmp_path / "exp.fits.fz", image, header, truth_wcs=wcs,
                               truth_table=truth, compress=compress)
    assert paths.image.name == ("exp.fits.fz" if compress else "exp.fits")
    assert paths.truth_wcs.name == "exp.truth.wcs.fits" and paths.truth_table.name == "exp.truth.ecsv"
    with fits.open(paths.image) as hdus:
        hdu = hdus[1] if compress else hdus[0]
        assert hdu.data.dtype == np.uint16 and np.array_equal(hdu.data, image)
        assert hdu.header["EXPTIME"] == 60.0 and hdu.header["CTYPE1"] == "RA---TAN"
    if compress:
        with fits.open(paths.image, disable_image_compression=True) as raw:
            assert raw[1].header["ZCMPTYPE"] == "RICE_1" and raw[1].header["ZBITPIX"] == 16
    assert np.array_equal(Table.read(paths.truth_table)["source_id"], truth["source_id"])


def test_read_truth_wcs_reports_a_missing_file(tmp_path) -> None:
    with pytest.raises(InputFileError, match="write_exposure"):
        sim.read_truth_wcs(tmp_path / "nothing.fits.fz")


def test_make_demo_is_deterministic_and_complete(tmp_path) -> None:
    first = sim.make_demo(tmp_path / "a")
    second = sim.make_demo(tmp_path / "b")
    for path in (first.image_path, first.catalog_path, first.paths.truth_wcs, first.paths.truth_table):
        assert path.is_file()
    assert first.image_path.name == "demo.fits.fz" and first.catalog_path.name == "demo_gaia.ecsv"
    with fits.open(first.image_path) as a, fits.open(second.image_path) as b:
        assert a[1].data.shape == sim.DEMO_SHAPE
        assert np.array_equal(a[1].data, b[1].data)
        header = a[1].header
    catalog = Table.read(first.catalog_path)
    assert np.array_equal(catalog["source_id"], Table.read(second.catalog_path)["source_id"])
    assert catalog.colnames == list(REFERENCE_COLUMNS) and catalog["phot_g_mean_mag"].max() <= 20.0
    truth = first.truth
    assert 400 < truth["in_frame"].sum() < 3000  # realistic high-latitude density
    assert truth["phot_g_mean_mag"].max() > 20.0  # the image is deeper than the catalog
    # the catalog covers the footprint plus a margin wide enough that its cone holds the footprint's
    # enclosing cone plus the margin get_gaia_xy selects (the demo's tile cache is complete for it)
    wcs = sim.read_truth_wcs(first.image_path)
    ny, nx = sim.DEMO_SHAPE
    c_ra, c_dec = wcs.pixel_to_world_values((nx - 1) / 2.0, (ny - 1) / 2.0)
    corner_ra, corner_dec = wcs.pixel_to_world_values([-0.5, nx - 0.5], [-0.5, ny - 0.5])
    cxi, ceta = _tangent_plane(corner_ra, corner_dec, float(c_ra), float(c_dec))
    xi, eta = _tangent_plane(catalog["ra"], catalog["dec"], float(c_ra), float(c_dec))
    margin = sim.DEMO_CATALOG_MARGIN_DEG
    half_diagonal = float(np.hypot(np.abs(cxi).max(), np.abs(ceta).max()))
    assert min(np.abs(cxi).max(), np.abs(ceta).max()) + margin > half_diagonal + GaiaConfig().margin_deg + 0.05
    assert np.abs(xi).max() == pytest.approx(np.abs(cxi).max() + margin, abs=0.01)
    assert np.abs(eta).max() == pytest.approx(np.abs(ceta).max() + margin, abs=0.01)
    in_cat = np.isin(truth["source_id"], catalog["source_id"])
    assert np.all(in_cat[truth["in_frame"] & (truth["phot_g_mean_mag"] <= 20.0)])
    # the header is approximate: a few arcmin off
    off = SkyCoord(c_ra, c_dec, unit="deg").separation(SkyCoord(header["CRVAL1"], header["CRVAL2"], unit="deg"))
    assert off.arcmin == pytest.approx(sim.DEFAULT_POINTING_ERROR_ARCMIN, abs=1e-6)
