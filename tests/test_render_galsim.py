"""Tests of the GalSim renderer: the truth is self-consistent and every artefact is there.

The decisive test is :func:`test_centroids_land_on_truth`: SEP's windowed centroids of
isolated, unsaturated bright stars sit on the truth pixel positions, which are the truth
WCS (TAN-SIP) of the catalog positions propagated to the exposure's epoch.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS, FITSFixedWarning
from scipy.spatial import cKDTree

pytest.importorskip("galsim")

from astrodask import simulate as rg
from astrodask.io.exposure import read_exposure
from astrodask.reference.catalog import propagate_table, read_catalog
from astrodask.sphere import angular_separation_deg
from astrodask.simulate import read_truth_wcs

#: Windowed-centroid agreement with the truth, px rms (per axis).
CENTROID_TOLERANCE_PX = 0.05
#: An isolated star has no other star brighter than this flux fraction within this radius (px).
ISOLATION_FLUX_FRACTION = 0.01
ISOLATION_RADIUS_PX = 12.0
#: Stars farther than this from the truth are taken as hit by an artefact (px), and at least this
#: fraction of the isolated stars must be clean.
OUTLIER_PX = 0.3
MIN_CLEAN_FRACTION = 0.85
#: Bright enough that photon noise moves a centroid by well under 0.05 px (S/N > 150), ADU.
BRIGHT_FLUX_ADU = 3e4
#: A plate's saturated core: pixels above this fraction of the scan's top value.
PLATE_CORE_FRACTION = 0.97


def _isolated_bright(truth: Table, shape: tuple[int, int], *, n_min: int) -> Table:
    ny, nx = shape
    i, j, f = (np.asarray(truth[k], float) for k in ("i", "j", "flux_adu"))
    ok = np.asarray(truth["in_frame"]) & ~np.asarray(truth["saturated"]) & (f >= BRIGHT_FLUX_ADU)
    tree = cKDTree(np.c_[i, j])
    chosen = []
    for k in np.argsort(-np.where(ok, f, -np.inf)):
        if not ok[k] or len(chosen) >= 60:
            break
        if not (20 < i[k] < nx - 21 and 20 < j[k] < ny - 21):
            continue
        near = [m for m in tree.query_ball_point([i[k], j[k]], ISOLATION_RADIUS_PX) if m != k]
        if all(f[m] < ISOLATION_FLUX_FRACTION * f[k] for m in near):
            chosen.append(k)
    assert len(chosen) >= n_min, f"only {len(chosen)} isolated bright stars"
    return truth[chosen]


def _sep_positions(image: np.ndarray, x: np.ndarray, y: np.ndarray, fwhm_px: float) -> tuple[np.ndarray, np.ndarray]:
    import sep

    data = np.ascontiguousarray(image, dtype=np.float64)
    bkg = sep.Background(data)
    sig = 2.0 / 2.35 * fwhm_px
    xw, yw, flag = sep.winpos(data - bkg.back(), x, y, np.full(len(x), sig))
    assert not np.any(flag), flag
    return xw, yw


@pytest.mark.parametrize("name", ["crowded", "messy"])
def test_centroids_land_on_truth(galsim_scene, name: str) -> None:
    files = galsim_scene(name)
    scene = rg.case_scene(name, "test")
    exposure = read_exposure(files.image)
    truth = Table.read(files.truth_table)
    stars = _isolated_bright(truth, exposure.data.shape, n_min=5)
    xw, yw = _sep_positions(exposure.data, np.asarray(stars["i"]), np.asarray(stars["j"]), scene.fwhm_px)
    # the truth pixels are the truth WCS of the catalog positions propagated to the epoch
    cat = read_catalog(files.catalog)
    by_id = {int(s): k for k, s in enumerate(cat["source_id"])}
    rows = [by_id[int(s)] for s in stars["source_id"]]
    moved = propagate_table(cat[rows], truth.meta["epoch_yr"])
    wcs = read_truth_wcs(files.truth_wcs)
    ic, jc = wcs.all_world2pix(np.asarray(moved["ra"]), np.asarray(moved["dec"]), 0, tolerance=1e-9)
    assert np.max(np.hypot(ic - stars["i"], jc - stars["j"])) < 0.01  # catalog noise and pm errors: sub-mas
    di, dj = xw - ic, yw - jc
    # a star may sit on a galaxy, a cosmic ray, a hot column or the trail (messy): those few go
    clean = np.hypot(di, dj) < OUTLIER_PX
    assert clean.mean() >= MIN_CLEAN_FRACTION, np.c_[di, dj][~clean]
    rms = math.sqrt(np.mean(di[clean] ** 2 + dj[clean] ** 2) / 2.0)
    assert rms < CENTROID_TOLERANCE_PX, (rms, np.abs(di).max(), np.abs(dj).max())
    assert abs(np.mean(di[clean])) < 0.02 and abs(np.mean(dj[clean])) < 0.02


def test_catalog_reads_with_read_catalog(galsim_scene) -> None:
    files = galsim_scene("crowded")
    cat = read_catalog(files.catalog)
    assert np.all(cat["ref_epoch"] == 2016.0)
    assert np.isfinite(cat["pmra"]).all() and np.isfinite(cat["parallax"]).all()
    assert cat["phot_g_mean_mag"].max() <= 20.0 and cat["phot_g_mean_mag"].min() < 9.0
    truth = Table.read(files.truth_table)
    area = rg.case_scene("crowded", "test").area_deg2
    in_frame = np.asarray(truth["in_frame"]) & np.asarray(truth["in_catalog"])
    assert 0.7 * 40000 * area < in_frame.sum() < 1.3 * 40000 * area
    assert np.count_nonzero(truth["saturated"] & truth["in_frame"]) > 20


def test_dr2_catalog_has_no_proper_motions(galsim_scene) -> None:
    files = galsim_scene("plate")
    raw = Table.read(files.catalog, format="ascii.ecsv")
    assert not {"pmra", "pmdec", "parallax"} & set(raw.colnames)
    cat = read_catalog(files.catalog)
    assert np.all(cat["ref_epoch"] == 2015.5) and np.isnan(cat["pmra"]).all()
    truth = Table.read(files.truth_table)
    # the stars did move between 1951 and 2015.5: the truth carries their real motions
    moved = angular_separation_deg(truth["ra"], truth["dec"], truth["ra_cat"], truth["dec_cat"]) * 3.6e6
    assert np.median(moved) > 100.0  # mas


def test_tan_header_is_off_by_the_requested_amounts(galsim_scene) -> None:
    from astrodask.wcsutil import cd_to_scale_rotation_parity

    files = galsim_scene("messy")
    scene = rg.case_scene("messy", "test")
    ny, nx = scene.shape
    header = fits.getheader(files.image, 1)
    approx = WCS(header)
    truth = read_truth_wcs(files.truth_wcs)
    centre = ((nx - 1) / 2.0, (ny - 1) / 2.0)
    sep_arcmin = angular_separation_deg(*approx.pixel_to_world_values(*centre),
                                        *truth.pixel_to_world_values(*centre)) * 60.0
    assert sep_arcmin == pytest.approx(scene.pointing_error_arcmin, rel=1e-3)
    s0, r0, p0 = cd_to_scale_rotation_parity(truth.pixel_scale_matrix)
    s1, r1, p1 = cd_to_scale_rotation_parity(approx.pixel_scale_matrix)
    assert p0 == p1 == scene.parity
    assert s1 / s0 - 1.0 == pytest.approx(scene.scale_error_frac, abs=1e-6)
    assert r1 - r0 == pytest.approx(scene.rotation_error_deg, abs=1e-6)
    assert "A_ORDER" not in header and header["CTYPE1"] == "RA---TAN"


def test_dss_header_read_by_astropy_is_the_intended_model(galsim_scene) -> None:
    files = galsim_scene("plate")
    scene = rg.case_scene("plate", "test")
    header = fits.getheader(files.image, 1)
    assert not [k for k in header if k.startswith(("CTYPE", "CRVAL", "CRPIX", "CD1_", "CD2_", "PC1_", "CDELT"))]
    for key in ("PPO3", "PPO6", "AMDX1", "AMDY20", "PLTRAH", "PLTDECSN", "PLTSCALE", "XPIXELSZ", "CNPIX1",
                "OBJCTRA", "OBJCTDEC"):
        assert key in header
    assert header["DATE-OBS"] == "29/11/51"
    assert header["EXPOSURE"] == pytest.approx(50.0) and "Minutes" in header.comments["EXPOSURE"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        read = WCS(header)
    model = rg.approximate_model(scene, distortion=True)
    ny, nx = scene.shape
    gi, gj = np.meshgrid(np.linspace(0, nx - 1, 11), np.linspace(0, ny - 1, 11))
    d = angular_separation_deg(*read.pixel_to_world_values(gi.ravel(), gj.ravel()),
                               *model.pixel_to_world_values(gi.ravel(), gj.ravel())) * 3600.0 / scene.scale_arcsec
    assert d.max() < 0.01  # px
    # and that model is the truth off by the scene's pointing error at the centre
    truth = read_truth_wcs(files.truth_wcs)
    c = ((nx - 1) / 2.0, (ny - 1) / 2.0)
    off = angular_separation_deg(*read.pixel_to_world_values(*c), *truth.pixel_to_world_values(*c)) * 60.0
    assert off == pytest.approx(scene.pointing_error_arcmin, rel=1e-3)


def test_dss_evaluation_matches_astropy_on_the_real_header(shared_data) -> None:
    header = fits.Header.fromtextfile(shared_data / "dss_plate_header" / "horsehead_dss.hdr")
    for key in [k for k in header if k.startswith(("CTYPE", "CRPIX", "CRVAL", "CDELT", "CD1_", "CD2_", "CROTA"))]:
        del header[key]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        read = WCS(header)
    i, j = np.meshgrid(np.linspace(0, 890, 7), np.linspace(0, 892, 7))
    d = angular_separation_deg(*read.pixel_to_world_values(i.ravel(), j.ravel()),
                               *rg.dss_sky(header, i.ravel(), j.ravel())) * 3.6e6
    assert d.max() < 0.01  # mas


def test_plate_has_flat_cores_growing_with_brightness(galsim_scene) -> None:
    files = galsim_scene("plate")
    image = read_exposure(files.image).data
    truth = Table.read(files.truth_table)
    top = float(fits.getheader(files.image, 1)["SATURATE"])
    sat = truth[np.asarray(truth["saturated"]) & np.asarray(truth["in_frame"])]
    assert len(sat) >= 10
    cores = []
    for row in sat:
        i, j = int(round(row["i"])), int(round(row["j"]))
        box = image[max(j - 15, 0):j + 16, max(i - 15, 0):i + 16]
        cores.append(np.count_nonzero(box >= PLATE_CORE_FRACTION * top))  # grain noise dents the plateau
    cores = np.asarray(cores)[np.argsort(sat["phot_g_mean_mag"])]
    quarter = len(cores) // 4
    assert cores[0] >= 5 and cores[:quarter].mean() > 2.0 * max(cores[-quarter:].mean(), 0.5)


def test_artefacts_are_present(galsim_scene) -> None:
    files = galsim_scene("messy")
    scene = rg.case_scene("messy", "test")
    image = read_exposure(files.image).data
    art = Table.read(str(files.image).replace(".fits.fz", ".artefacts.ecsv"))
    ny, nx = scene.shape
    expected_cr = round(scene.cosmic_rays_per_mpix * nx * ny / 1e6)
    assert art.meta["cosmic_rays"] == expected_cr == len(set(art["event"][art["kind"] == "cosmic_ray"]))
    sky = float(np.median(image))
    cr = art[art["kind"] == "cosmic_ray"]
    assert np.mean(image[cr["j"], cr["i"]] - sky > 200.0) > 0.9
    hot = art[art["kind"] == "hot_column"]
    assert len(hot) == 5
    for row in hot:
        column = image[row["j"]:, row["i"]]
        neighbours = np.median(image[row["j"]:, [row["i"] - 2, row["i"] + 2]] if 2 <= row["i"] < nx - 2 else sky)
        assert np.median(column) - neighbours == pytest.approx(row["level_adu"], abs=15.0)
    assert art.meta["galaxies"] > 0.5 * 4000 * scene.area_deg2
    sat = art.meta["satellite"]
    i = int(nx / 2)
    j = sat["j0"] + (i - sat["i0"]) * math.tan(math.radians(sat["angle_deg"]))
    if 5 < j < ny - 5:
        assert image[int(round(j)), i] - sky > 0.5 * sat["peak_adu"]


def test_cosmic_rays_found_by_astroscrappy(galsim_scene) -> None:
    astroscrappy = pytest.importorskip("astroscrappy")
    files = galsim_scene("messy")
    exposure = read_exposure(files.image)
    art = Table.read(str(files.image).replace(".fits.fz", ".artefacts.ecsv"))
    cr = art[art["kind"] == "cosmic_ray"]
    sub = (slice(0, 700), slice(0, 1000))
    mask, _ = astroscrappy.detect_cosmics(exposure.data[sub], gain=exposure.gain, readnoise=3.0,
                                          satlevel=exposure.saturate_adu, sigclip=5.0)
    inside = (cr["j"] < 700) & (cr["i"] < 1000)
    found = mask[cr["j"][inside], cr["i"][inside]]
    assert found.mean() > 0.6


def test_bleed_trails_conserve_charge() -> None:
    canvas = np.zeros((200, 20), np.float32)
    canvas[100, 10] = 10000.0
    canvas[99:102, 9:12] += 3000.0
    before = float(canvas.sum())
    filled = rg.bleed(canvas, 2000.0, [(10, 100, 5)])
    assert canvas.max() <= 2000.0 and filled > 0
    assert float(canvas.sum()) == pytest.approx(before, rel=1e-6)
    assert np.count_nonzero(canvas[:, 10] == 2000.0) > np.count_nonzero(canvas[:, 9] == 2000.0)


def test_fits_fz_opens_with_read_exposure(galsim_scene) -> None:
    files = galsim_scene("crowded")
    exposure = read_exposure(files.image)
    scene = rg.case_scene("crowded", "test")
    assert exposure.hdu_index == 1 and exposure.data.shape == scene.shape
    assert exposure.gain == scene.gain_e_per_adu and exposure.exptime_s == scene.exptime_s
    assert exposure.saturate_adu == scene.saturate_adu
    assert exposure.epoch_yr == pytest.approx(scene.epoch_yr, abs=1e-5)
    with fits.open(files.image) as hdus:
        assert isinstance(hdus[1], fits.CompImageHDU) and hdus[1].compression_type == "RICE_1"
    truth = read_truth_wcs(files.truth_wcs)
    assert truth.sip is not None and truth.pixel_shape == (scene.shape[1], scene.shape[0])


def test_sip_distortion_reaches_the_requested_size() -> None:
    scene = rg.case_scene("messy", "test")
    wcs = rg.truth_wcs(scene)
    ny, nx = scene.shape
    corners = np.array([[0, 0], [nx - 1, 0], [0, ny - 1], [nx - 1, ny - 1]], float)
    moved = wcs.sip_pix2foc(corners + 1.0, 1) - (corners + 1.0 - wcs.wcs.crpix)  # FITS 1-based pixels
    assert np.hypot(*moved.T).max() == pytest.approx(scene.sip_distortion_px, rel=1e-6)


def test_scene_validates_itself() -> None:
    from astrodask.errors import ConfigError

    with pytest.raises(ConfigError, match="parity"):
        dataclasses.replace(rg.CASES["messy"], parity=0)
    with pytest.raises(KeyError, match="bench size only"):
        rg.case_scene("condor", "test")


@pytest.mark.slow
def test_gates_are_rendered_off_by_their_amounts(galsim_scene) -> None:
    for name in ("offset3x", "scale20"):
        files = galsim_scene(name)
        scene = rg.case_scene(name, "test")
        approx, truth = WCS(fits.getheader(files.image, 1)), read_truth_wcs(files.truth_wcs)
        ny, nx = scene.shape
        c = ((nx - 1) / 2.0, (ny - 1) / 2.0)
        off = angular_separation_deg(*approx.pixel_to_world_values(*c), *truth.pixel_to_world_values(*c))
        assert off * 60.0 == pytest.approx(scene.pointing_error_arcmin, rel=1e-3)
    assert rg.case_scene("offset3x").pointing_error_arcmin / 60.0 == pytest.approx(0.6)
