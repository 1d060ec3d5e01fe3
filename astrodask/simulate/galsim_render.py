"""The GalSim renderer's whole exposure: :func:`render_scene`, its headers and its files.

One :class:`~astrodask.simulate.galsim_scene.Scene` in, its files out
(:class:`~astrodask.simulate.galsim_scene.SceneFiles`): the image (``.fits.fz``, RICE, image in
HDU 1), a Gaia-like catalog that :func:`astrodask.reference.catalog.read_catalog` reads, the exact
truth WCS (the file :func:`astrodask.simulate.read_truth_wcs` reads), a per-star truth table and
the artefacts. Proper motions move stars along great circles
(:func:`astrodask.reference.catalog.propagate_to_epoch`); parallax is not applied to the truth (the
solver neglects it too). A scene with ``turbulence`` moves every star by its atmospheric
displacement (:mod:`astrodask.simulate.atmosphere`) before it is drawn, and writes the field
beside the truth WCS (:func:`astrodask.simulate.read_truth` reads both).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time
from astropy.wcs import WCS

from astrodask.reference.catalog import propagate_to_epoch
from astrodask.sphere import angular_separation_deg
from astrodask.simulate.atmosphere import DisplacementField, field_for_wcs
from astrodask.simulate.constants import UINT16_MAX_ADU
from astrodask.simulate.files import read_truth_wcs
from astrodask.simulate.galsim_draw import (
    PLATE_E0_SKY,
    PLATE_SCAN_MAX_ADU,
    PSF_TABLE_PHASES,
    STAMP_HALF_RANGE_PX,
    add_from_table,
    add_galaxies,
    add_satellite,
    bleed,
    cosmic_rays,
    draw_object,
    make_psf,
    photographic_response,
    psf_table,
    stamp_half_sizes,
)
from astrodask.simulate.galsim_plate import DSS_TOLERANCE_PX, check_dss_header, dss_header, worst_px
from astrodask.simulate.galsim_scene import (
    RELEASE_EPOCH_YR,
    Scene,
    SceneFiles,
    approximate_model,
    half_diagonal_deg,
    import_galsim,
    truth_wcs,
)
from astrodask.simulate.galsim_stars import catalog_table, make_stars

log = logging.getLogger(__name__)

__all__ = ["cd_header", "image_header", "render_scene", "write_truth_wcs"]

#: Hot columns: excess level range (ADU) and the fraction that start part-way up the frame.
HOT_COLUMN_LEVEL_ADU: tuple[float, float] = (150.0, 1500.0)
HOT_COLUMN_PARTIAL_FRACTION: float = 0.4
#: Hot pixels: level range, ADU.
HOT_PIXEL_LEVEL_ADU: tuple[float, float] = (1000.0, 30000.0)
#: Truth WCS: tolerance of the iterative SIP inverse, pixels.
SIP_INVERSE_TOLERANCE_PX: float = 1e-9


def cd_header(wcs: WCS) -> fits.Header:
    """A TAN WCS as header keywords with a CD matrix (CDi_j), as telescopes write them, not PCi_j/CDELTi."""
    header = wcs.to_header()
    cd = wcs.wcs.get_pc() * wcs.wcs.get_cdelt()[:, None]
    for key in [k for k in header if k.startswith(("PC1_", "PC2_", "CDELT"))]:
        del header[key]
    for a in range(2):
        for b in range(2):
            header[f"CD{a + 1}_{b + 1}"] = (float(cd[a, b]), "[deg/px] linear transformation")
    return header


def image_header(scene: Scene, *, saturate_adu: float) -> fits.Header:
    """The exposure's header: the approximate pointing in the scene's style, exposure and detector keywords."""
    ny, nx = scene.shape
    if scene.header_style == "tan":
        header = cd_header(approximate_model(scene, distortion=False))
        t = Time(scene.date_obs, scale="utc")
        header["DATE-OBS"] = (t.isot, "exposure start (UTC)")
        header["MJD-OBS"] = (float(t.mjd), "exposure start, MJD (UTC)")
        header["EXPTIME"] = (scene.exptime_s, "[s] exposure time")
        header["GAIN"] = (scene.gain_e_per_adu, "[e-/ADU] gain")
        header["RDNOISE"] = (scene.read_noise_e, "[e-] read noise")
    else:
        model = approximate_model(scene, distortion=True)
        header, worst = dss_header(model, scene.shape, scale_arcsec=scene.scale_arcsec, date_obs=scene.date_obs,
                                   exposure_min=scene.exptime_s / 60.0)
        if worst > DSS_TOLERANCE_PX:
            raise RuntimeError(f"scene {scene.name}: the DSS polynomials fit the plate model only to {worst:.3g} px "
                               f"(tolerance {DSS_TOLERANCE_PX} px)")
        read_back = check_dss_header(header, model, scene.shape, scene.scale_arcsec)
        if read_back > DSS_TOLERANCE_PX:
            raise RuntimeError(f"scene {scene.name}: astropy reads the DSS header {read_back:.3g} px away from the "
                               f"plate model it encodes (tolerance {DSS_TOLERANCE_PX} px)")
    header["SATURATE"] = (saturate_adu, "[ADU] saturation level")
    header["OBJECT"] = (scene.name, "astrodask.simulate.galsim_render scene")
    header["ORIGIN"] = (f"astrodask.simulate.galsim_render (GalSim {import_galsim().__version__})", "")
    return header


def write_truth_wcs(path: Path, wcs: WCS, shape: tuple[int, int], *,
                    turbulence: DisplacementField | None = None) -> None:
    """The exact truth WCS as a primary header (SIP included) with IMAGEW/IMAGEH, checked on re-reading.

    With ``turbulence``, the displacement field follows as two image extensions
    (:meth:`~astrodask.simulate.atmosphere.DisplacementField.to_hdus`).
    """
    ny, nx = shape
    header = wcs.to_header(relax=True)
    header["IMAGEW"] = (nx, "[px] image width")
    header["IMAGEH"] = (ny, "[px] image height")
    header["COMMENT"] = "Exact truth WCS (TAN-SIP) of a GalSim-rendered exposure (astrodask.simulate.galsim_render)"
    extensions = turbulence.to_hdus() if turbulence is not None else []
    fits.HDUList([fits.PrimaryHDU(header=header), *extensions]).writeto(path, overwrite=True)
    gi, gj = np.meshgrid(np.linspace(0, nx - 1, 7), np.linspace(0, ny - 1, 5))
    a = wcs.pixel_to_world_values(gi.ravel(), gj.ravel())
    b = read_truth_wcs(path).pixel_to_world_values(gi.ravel(), gj.ravel())
    worst = worst_px(a[0], a[1], b[0], b[1], 1.0) * 1.0  # arcsec
    if not worst < 1e-6:
        raise RuntimeError(f"truth WCS written to {path} does not round-trip ({worst:.3g} arcsec)")


def render_scene(scene: Scene, out_dir: str | Path, *, rng: np.random.Generator) -> SceneFiles:
    """Render one exposure with GalSim and write its files into ``out_dir``.

    Parameters
    ----------
    scene
        What to render (its ``shape`` is the size rendered).
    out_dir
        Folder of the files, named after ``scene.name``.
    rng
        The only source of randomness (GalSim's deviates are seeded from it).

    Returns
    -------
    SceneFiles
        ``<name>.fits.fz``, ``<name>_gaia.ecsv``, ``<name>.truth.wcs.fits``, ``<name>.truth.ecsv``
        (and ``<name>.artefacts.ecsv`` beside them: cosmic-ray and hot pixels, hot columns).
    """
    galsim = import_galsim()
    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ny, nx = scene.shape
    wcs = truth_wcs(scene)
    stars = make_stars(scene, rng=rng)
    ref_epoch = RELEASE_EPOCH_YR[scene.catalog_release]
    ra_e, dec_e = propagate_to_epoch(np.asarray(stars["ra_true"]), np.asarray(stars["dec_true"]),
                                     np.asarray(stars["pmra_true"]), np.asarray(stars["pmdec_true"]),
                                     scene.epoch_yr - ref_epoch)
    near = angular_separation_deg(ra_e, dec_e, scene.ra_deg, scene.dec_deg) <= half_diagonal_deg(scene) + 0.02
    i, j = np.full(len(stars), np.nan), np.full(len(stars), np.nan)
    field = field_for_wcs(scene.turbulence, wcs, shape=scene.shape) if scene.turbulence is not None else None
    ra_seen, dec_seen = (ra_e, dec_e) if field is None else field.displace(
        np.where(near, ra_e, scene.ra_deg), np.where(near, dec_e, scene.dec_deg))  # far stars are not drawn
    if near.any():
        i[near], j[near] = wcs.all_world2pix(ra_seen[near], dec_seen[near], 0, tolerance=SIP_INVERSE_TOLERANCE_PX,
                                             maxiter=100, quiet=True)
    mag = np.asarray(stars["phot_g_mean_mag"], float)
    flux = scene.exptime_s * 10.0 ** (-0.4 * (mag - scene.zero_point_mag))

    # stars: faint ones from the phase table, bright ones one by one
    psf = make_psf(scene)
    canvas = np.zeros((ny, nx), np.float32)
    full = galsim.ImageF(canvas, xmin=0, ymin=0)
    halves = stamp_half_sizes(scene, flux)
    table_half = max(STAMP_HALF_RANGE_PX[0], int(math.ceil(2.5 * scene.fwhm_px * (1.0 + scene.psf_e))))
    table = psf_table(psf, table_half)
    drawable = near & (i + halves >= 0) & (i - halves <= nx - 1) & (j + halves >= 0) & (j - halves <= ny - 1)
    by_table = drawable & (halves <= table_half)
    add_from_table(canvas, table, i[by_table], j[by_table], flux[by_table].astype(np.float32))
    one_by_one = np.nonzero(drawable & ~by_table)[0]
    for k in one_by_one:
        draw_object(full, psf.withFlux(float(flux[k])), float(i[k]), float(j[k]), int(halves[k]))
    t_stars = time.perf_counter() - started
    in_frame = near & (i >= -0.5) & (i < nx - 0.5) & (j >= -0.5) & (j < ny - 0.5)
    peak = flux * float(table[PSF_TABLE_PHASES // 2, PSF_TABLE_PHASES // 2].max()) + scene.sky_adu
    if scene.photographic:
        level = scene.plate_fog_density + scene.plate_gamma * np.log10(1.0 + peak / (PLATE_E0_SKY * scene.sky_adu))
        saturated = level >= scene.plate_max_density
    else:
        saturated = peak >= scene.saturate_adu - scene.bias_adu
    saturated &= drawable

    # galaxies, satellite, sky and noise
    artefacts: dict[str, Any] = {}
    artefacts["galaxies"] = add_galaxies(full, scene, psf, rng=rng) if scene.galaxy_density_per_deg2 > 0 else 0
    if scene.satellite_trail:
        artefacts["satellite"] = add_satellite(canvas, scene, rng=rng)
    canvas += np.float32(scene.sky_adu)
    full.addNoise(galsim.CCDNoise(galsim.BaseDeviate(int(rng.integers(1, 2**31 - 1))), gain=scene.gain_e_per_adu,
                                  read_noise=scene.read_noise_e))
    if scene.photographic:
        canvas[:] = photographic_response(canvas, scene, rng=rng)
        saturate_level, offset = PLATE_SCAN_MAX_ADU, 0.0
    else:
        saturate_level, offset = min(scene.saturate_adu, UINT16_MAX_ADU), scene.bias_adu
        if scene.bleed:
            centres = [(int(round(i[k])), int(round(j[k])), int(halves[k])) for k in np.nonzero(saturated)[0]]
            artefacts["bleed_pixels"] = bleed(canvas, saturate_level - offset, centres)

    # detector artefacts (not PSF-convolved)
    mpix = nx * ny / 1e6
    rows: list[tuple[str, int, int, int, float]] = []
    for col in rng.choice(nx, size=min(scene.hot_columns, nx), replace=False):
        start = int(rng.integers(0, ny // 2)) if rng.uniform() < HOT_COLUMN_PARTIAL_FRACTION else 0
        level = float(rng.uniform(*HOT_COLUMN_LEVEL_ADU))
        canvas[start:, col] += np.float32(level)
        rows.append(("hot_column", -1, int(col), start, level))
    n_hot = int(round(scene.hot_pixels_per_mpix * mpix))
    hi, hj = rng.integers(0, nx, n_hot), rng.integers(0, ny, n_hot)
    hv = rng.uniform(*HOT_PIXEL_LEVEL_ADU, n_hot)
    canvas[hj, hi] += hv.astype(np.float32)
    rows += [("hot_pixel", -1, int(a), int(b), float(v)) for a, b, v in zip(hi, hj, hv)]
    n_cr = int(round(scene.cosmic_rays_per_mpix * mpix))
    ci, cj, cv, ck = cosmic_rays(scene.shape, n_cr, rng)
    np.add.at(canvas, (cj, ci), cv.astype(np.float32))
    rows += [("cosmic_ray", int(k), int(a), int(b), float(v)) for a, b, v, k in zip(ci, cj, cv, ck)]
    artefacts.update(cosmic_rays=n_cr, hot_columns=int(min(scene.hot_columns, nx)), hot_pixels=n_hot)
    image = np.rint(np.clip(canvas + np.float32(offset), 0.0, saturate_level)).astype(np.uint16)
    del canvas, full

    # files
    header = image_header(scene, saturate_adu=saturate_level)
    base = out / scene.name
    files = SceneFiles(image=base.with_name(base.name + ".fits.fz"), catalog=base.with_name(base.name + "_gaia.ecsv"),
                       truth_wcs=base.with_name(base.name + ".truth.wcs.fits"),
                       truth_table=base.with_name(base.name + ".truth.ecsv"))
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data=image, header=header, compression_type="RICE_1")]
                 ).writeto(files.image, overwrite=True)
    write_truth_wcs(files.truth_wcs, wcs, scene.shape, turbulence=field)
    catalog_table(stars, scene).write(files.catalog, format="ascii.ecsv", overwrite=True)
    truth = Table()
    truth["source_id"] = np.asarray(stars["source_id"], np.int64)
    truth["in_catalog"] = np.asarray(stars["in_catalog"], bool)
    truth["ra_cat"], truth["dec_cat"] = np.asarray(stars["ra"]), np.asarray(stars["dec"])
    truth["ra"], truth["dec"] = ra_e, dec_e
    truth["pmra_true"], truth["pmdec_true"] = np.asarray(stars["pmra_true"]), np.asarray(stars["pmdec_true"])
    truth["i"], truth["j"] = i, j
    truth["phot_g_mean_mag"] = mag
    truth["flux_adu"] = flux
    truth["in_frame"] = in_frame
    truth["saturated"] = saturated
    if field is not None:
        dxi, deta = field.displacement_at_sky_mas(np.where(near, ra_e, scene.ra_deg),
                                                  np.where(near, dec_e, scene.dec_deg))
        truth["dxi_mas"], truth["deta_mas"] = dxi, deta
    truth = truth[near]
    for key, unit in (("ra_cat", "deg"), ("dec_cat", "deg"), ("ra", "deg"), ("dec", "deg"), ("pmra_true", "mas / yr"),
                      ("pmdec_true", "mas / yr"), ("i", "pix"), ("j", "pix"), ("phot_g_mean_mag", "mag"),
                      ("dxi_mas", "mas"), ("deta_mas", "mas")):
        if key in truth.colnames:
            truth[key].unit = unit
    truth.meta.update(scene=scene.name, epoch_yr=scene.epoch_yr, catalog_ref_epoch=ref_epoch,
                      catalog_release=scene.catalog_release, mag_limit=scene.faint_mag,
                      seeded_from=stars.meta["seeded_from"], artefacts=artefacts,
                      note="ra/dec: true positions at epoch_yr; ra_cat/dec_cat: catalog positions at "
                           "catalog_ref_epoch; i/j: 0-based true pixel positions")
    if field is not None:
        truth.meta["turbulence"] = dataclasses.asdict(field.spec)
        truth.meta["note"] += " (after the atmospheric displacement dxi_mas, deta_mas)"
    truth.write(files.truth_table, format="ascii.ecsv", overwrite=True)
    art = Table(rows=rows or None, names=("kind", "event", "i", "j", "level_adu"),
                dtype=(str, int, int, int, float))
    art.meta.update(artefacts)
    art.write(base.with_name(base.name + ".artefacts.ecsv"), format="ascii.ecsv", overwrite=True)
    seconds = time.perf_counter() - started
    log.info("rendered %s (%d x %d px, %d stars drawn, %d one by one) in %.1f s (stars %.1f s)", scene.name, nx, ny,
             int(drawable.sum()), one_by_one.size, seconds, t_stars)
    return dataclasses.replace(files, render_s=seconds)
