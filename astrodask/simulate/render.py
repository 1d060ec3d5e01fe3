"""Rendering a star catalog through a truth WCS: :func:`render_stars` and :func:`render_exposure`.

Stars are propagated to the exposure epoch with
:func:`astrodask.reference.catalog.propagate_to_epoch`, moved by the atmosphere when a
displacement field is given (:mod:`astrodask.simulate.atmosphere`), projected through the truth WCS and
rendered as pixel-integrated elliptical Moffat profiles whose flux-weighted centre is
exactly the truth position (:mod:`astrodask.simulate.profiles`); :func:`render_exposure`
adds galaxies, cosmic rays and hot columns (:mod:`astrodask.simulate.artefacts`), sky, Poisson
and read noise, gain, bias and saturation, and returns a ``uint16`` image and a truth table.

Conventions (see :mod:`astrodask.types`): pixels are 0-based, ``i`` is the column (numpy's
last axis), ``j`` the row; pixel ``(i, j)`` covers ``[i - 0.5, i + 0.5] x [j - 0.5, j + 0.5]``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from astropy import units as u
from astropy.table import Table
from astropy.wcs import WCS
from scipy.spatial import cKDTree

from astrodask.constants import GAIA_DR3_EPOCH, GAIA_G_ZERO_POINT
from astrodask.errors import CatalogError, ConfigError
from astrodask.reference.catalog import propagate_to_epoch
from astrodask.sphere import angular_separation_deg
from astrodask.simulate._checks import check_positive, resolve_shape
from astrodask.simulate.atmosphere import DisplacementField
from astrodask.simulate.artefacts import add_galaxies, cosmic_ray_pixels, draw_hot_columns
from astrodask.simulate.constants import (
    DEFAULT_BIAS_ADU,
    DEFAULT_EPOCH_YR,
    DEFAULT_EXPTIME_S,
    UINT16_MAX_ADU,
)
from astrodask.simulate.profiles import (
    DEFAULT_SUPERSAMPLE,
    STAMP_HALF_SIZES_PX,
    add_profiles,
    ellipse_coeffs,
    moffat_alpha,
    stamp_half_size,
)

__all__ = ["render_exposure", "render_stars"]

#: Default PSF full width at half maximum (geometric mean of the axes), pixels.
DEFAULT_FWHM_PX: float = 2.5
#: Default PSF ellipticity 1 - b/a.
DEFAULT_ELLIPTICITY: float = 0.05
#: Default position angle of the PSF major axis, degrees counter-clockwise from +i.
DEFAULT_PSF_ANGLE_DEG: float = 30.0
#: Default Moffat beta.
DEFAULT_PSF_BETA: float = 3.0
#: Default photometric zero point: the G magnitude that gives 1 ADU/s. With the default
#: noise, G = 20 is detected at S/N ~ 5 in 60 s and stars brighter than G ~ 11 saturate.
DEFAULT_ZERO_POINT_MAG: float = 21.2
#: Default sky level, ADU per pixel per exposure (above bias).
DEFAULT_SKY_ADU: float = 50.0
#: Default fractional linear sky gradient across the frame (peak to peak).
DEFAULT_SKY_GRADIENT_FRAC: float = 0.02
#: Default read noise, electrons.
DEFAULT_READ_NOISE_E: float = 2.0
#: Default gain, electrons per ADU.
DEFAULT_GAIN_E_PER_ADU: float = 0.8
#: Default saturation level (16-bit ADC), ADU.
DEFAULT_SATURATION_ADU: float = UINT16_MAX_ADU
#: Stars farther from the frame centre than this many times the centre-corner distance
#: (plus the largest stamp) are not projected.
PREFILTER_REACH_FACTOR: float = 1.2
#: Rows processed at once when adding noise.
NOISE_ROW_BLOCK: int = 512
#: A star is isolated when no other star or galaxy brighter than this fraction of its flux...
ISOLATION_FLUX_RATIO: float = 0.01
#: ...lies within this distance, pixels.
ISOLATION_RADIUS_PX: float = 12.0
#: Radius searched for saturated pixels around a star's truth position, pixels.
SATURATION_SEARCH_PX: int = 1


def _column(table: Table, name: str, default: float | None = None) -> np.ndarray:
    """A column as float64 with masked values as NaN (``default`` when absent)."""
    if name not in table.colnames:
        if default is None:
            raise CatalogError(f"the star table has no column {name!r}")
        return np.full(len(table), float(default))
    column = table[name]
    unit = getattr(column, "unit", None)
    values = np.ma.asarray(column).astype(np.float64)
    if name in ("ra", "dec") and unit is not None and unit != u.deg:
        values = np.ma.asarray(u.Quantity(values, unit).to_value(u.deg))
    return np.ma.filled(values, np.nan)


def render_stars(stars: Table, wcs: WCS, *, shape: tuple[int, int] | None = None,
                 epoch_yr: float = DEFAULT_EPOCH_YR, fwhm_px: float = DEFAULT_FWHM_PX,
                 ellipticity: float = DEFAULT_ELLIPTICITY,
                 psf_angle_deg: float = DEFAULT_PSF_ANGLE_DEG,
                 psf_beta: float = DEFAULT_PSF_BETA, exptime_s: float = DEFAULT_EXPTIME_S,
                 zero_point_mag: float = DEFAULT_ZERO_POINT_MAG,
                 supersample: int = DEFAULT_SUPERSAMPLE,
                 turbulence: DisplacementField | None = None) -> tuple[np.ndarray, Table]:
    """Noiseless image of the stars of a catalog, in ADU above the sky, and its truth.

    Parameters
    ----------
    stars
        Any table with Gaia archive column names: ``ra``, ``dec`` (deg) and
        ``phot_g_mean_mag`` (or ``phot_g_mean_flux``, e-/s) are required; ``pmra``,
        ``pmdec`` (mas/yr; NaN or masked: no motion), ``ref_epoch`` (yr; default 2016.0)
        and ``source_id`` (default: row number) are used when present.
    wcs
        Truth WCS (any celestial WCS; origin 0 is used).
    shape
        Image shape (ny, nx), pixels; default from ``wcs.pixel_shape``.
    epoch_yr
        Epoch of the exposure, Julian years; stars are moved there with
        :func:`astrodask.reference.catalog.propagate_to_epoch`.
    fwhm_px
        PSF FWHM (geometric mean of the axes), pixels.
    ellipticity
        PSF ellipticity 1 - b/a.
    psf_angle_deg
        Position angle of the PSF major axis, degrees counter-clockwise from +i.
    psf_beta
        Moffat beta (> 1).
    exptime_s
        Exposure time, seconds.
    zero_point_mag
        G magnitude giving 1 ADU/s.
    supersample
        Sub-samples per pixel and axis of the pixel integration.
    turbulence
        Atmospheric displacement (e.g. from :func:`~astrodask.simulate.atmosphere.field_for_wcs`):
        each star is drawn where the field moves it; None: no atmosphere (the image is then
        bit-identical to one rendered without this option).

    Returns
    -------
    image : numpy.ndarray
        float32 (ny, nx), ADU.
    truth : astropy.table.Table
        One row per rendered star (every star whose stamp touches the frame):
        ``source_id``, ``i``, ``j`` (pix, 0-based truth position), ``ra``, ``dec`` (deg,
        at ``epoch_yr``), ``flux_adu`` (total expected flux), ``phot_g_mean_mag``,
        ``peak_adu`` (the star's brightest pixel), ``in_frame`` (centre on a pixel of
        the frame), ``isolated`` (no other star brighter than ISOLATION_FLUX_RATIO of its
        flux within ISOLATION_RADIUS_PX) and ``saturated`` (False here;
        :func:`render_exposure` sets it). With ``turbulence``: ``i``, ``j`` are where the
        displaced star lands, ``ra``, ``dec`` stay its true position, and ``dxi_mas``,
        ``deta_mas`` are its displacement (tangent plane, mas); ``meta["turbulence"]``
        records the field's spec.
    """
    ny, nx = resolve_shape(shape, wcs)
    check_positive("fwhm_px", fwhm_px)
    check_positive("exptime_s", exptime_s)
    if not 0.0 <= ellipticity < 1.0:
        raise ConfigError(f"ellipticity = {ellipticity!r} is out of range: allowed 0 to <1")
    if not psf_beta > 1.0:
        raise ConfigError(f"psf_beta = {psf_beta!r} is out of range: allowed > 1 (finite flux)")
    if int(supersample) < 1:
        raise ConfigError(f"supersample = {supersample!r} is out of range: allowed >= 1")
    missing = [c for c in ("ra", "dec") if c not in stars.colnames]
    if missing or not {"phot_g_mean_mag", "phot_g_mean_flux"} & set(stars.colnames):
        raise CatalogError(
            f"the star table lacks column(s) {missing or ['phot_g_mean_mag']}; it needs Gaia archive "
            f"names (ra, dec, phot_g_mean_mag, optionally pmra, pmdec, ref_epoch, source_id), "
            f"has {stars.colnames}; read VizieR files with astrodask.reference.catalog.read_catalog")

    ra0 = _column(stars, "ra")
    dec0 = _column(stars, "dec")
    if "phot_g_mean_mag" in stars.colnames:
        gmag = _column(stars, "phot_g_mean_mag")
    else:
        gmag = GAIA_G_ZERO_POINT - 2.5 * np.log10(_column(stars, "phot_g_mean_flux"))
    ref_epoch = _column(stars, "ref_epoch", GAIA_DR3_EPOCH)
    ref_epoch = np.where(np.isfinite(ref_epoch), ref_epoch, GAIA_DR3_EPOCH)
    source_id = (np.asarray(stars["source_id"], dtype=np.int64) if "source_id" in stars.colnames
                 else np.arange(len(stars), dtype=np.int64))
    ra, dec = propagate_to_epoch(ra0, dec0, _column(stars, "pmra", 0.0),
                                 _column(stars, "pmdec", 0.0), epoch_yr - ref_epoch)

    # keep stars near the frame before projecting (TPV inversion far outside is meaningless)
    corners = np.array([[0, 0], [nx - 1, 0], [0, ny - 1], [nx - 1, ny - 1], [(nx - 1) / 2, (ny - 1) / 2]],
                       dtype=np.float64)
    c_ra, c_dec = wcs.pixel_to_world_values(corners[:, 0], corners[:, 1])
    reach_deg = float(angular_separation_deg(c_ra[4], c_dec[4], c_ra[:4], c_dec[:4]).max())
    scale_deg = float(np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix))))
    reach_deg = PREFILTER_REACH_FACTOR * reach_deg + STAMP_HALF_SIZES_PX[-1] * scale_deg
    good = np.isfinite(ra) & np.isfinite(dec) & np.isfinite(gmag)
    good &= angular_separation_deg(c_ra[4], c_dec[4], ra, dec) <= reach_deg
    sel = np.flatnonzero(good)
    if turbulence is None:
        i, j = wcs.world_to_pixel_values(ra[sel], dec[sel])
    else:
        dxi_mas, deta_mas = turbulence.displacement_at_sky_mas(ra[sel], dec[sel])
        i, j = wcs.world_to_pixel_values(*turbulence.displace(ra[sel], dec[sel]))
    i, j = np.asarray(i, dtype=np.float64), np.asarray(j, dtype=np.float64)

    beta = float(psf_beta)
    alpha = moffat_alpha(fwhm_px, beta)
    q = 1.0 - ellipticity
    flux = exptime_s * 10.0 ** (-0.4 * (gmag[sel] - zero_point_mag))

    def moffat_density(r_px: float) -> float:
        return (beta - 1.0) / (math.pi * alpha**2) * (1.0 + (r_px * math.sqrt(q)) ** 2 / alpha**2) ** (-beta)

    half = stamp_half_size(flux, moffat_density)
    touches = ((i + half >= -0.5) & (i - half <= nx - 0.5) & (j + half >= -0.5) & (j - half <= ny - 0.5)
               & np.isfinite(i) & np.isfinite(j))
    if turbulence is not None:
        dxi_mas, deta_mas = dxi_mas[touches], deta_mas[touches]
    sel, i, j, flux, half = sel[touches], i[touches], j[touches], flux[touches], half[touches]

    inv_alpha2 = np.float32(1.0 / alpha**2)
    neg_beta = np.float32(-beta)

    def moffat(rho2: np.ndarray, idx: np.ndarray, rho2_max: np.ndarray) -> np.ndarray:
        floor = np.power(np.float32(1.0) + rho2_max * inv_alpha2, neg_beta)
        rho2 *= inv_alpha2
        rho2 += np.float32(1.0)
        np.power(rho2, neg_beta, out=rho2)
        rho2 -= floor
        return np.maximum(rho2, np.float32(0.0), out=rho2)

    image = np.zeros((ny, nx), dtype=np.float32)
    coeffs = np.broadcast_to(ellipse_coeffs(q, math.radians(psf_angle_deg)), (sel.size, 3))
    rho2_max = (half.astype(np.float64) ** 2) * q  # the ellipse rho = rho_max touches the stamp edge
    peaks = add_profiles(image, i, j, flux, half, coeffs, rho2_max, moffat, int(supersample))

    truth = Table(meta={
        "epoch_yr": float(epoch_yr), "exptime_s": float(exptime_s),
        "zero_point_mag": float(zero_point_mag), "fwhm_px": float(fwhm_px),
        "ellipticity": float(ellipticity), "psf_angle_deg": float(psf_angle_deg),
        "psf_beta": beta, "shape": [int(ny), int(nx)],
        "isolation_radius_px": ISOLATION_RADIUS_PX, "isolation_flux_ratio": ISOLATION_FLUX_RATIO,
    })
    truth["source_id"] = source_id[sel]
    truth["i"] = u.Quantity(i, u.pix)
    truth["j"] = u.Quantity(j, u.pix)
    truth["ra"] = u.Quantity(ra[sel], u.deg)
    truth["dec"] = u.Quantity(dec[sel], u.deg)
    truth["flux_adu"] = u.Quantity(flux, u.adu)
    truth["phot_g_mean_mag"] = u.Quantity(gmag[sel], u.mag)
    truth["peak_adu"] = u.Quantity(peaks.astype(np.float64), u.adu)
    truth["in_frame"] = (i >= -0.5) & (i < nx - 0.5) & (j >= -0.5) & (j < ny - 0.5)
    truth["isolated"] = _isolated(i, j, flux, np.empty(0), np.empty(0), np.empty(0))
    truth["saturated"] = np.zeros(len(truth), dtype=bool)
    if turbulence is not None:
        truth["dxi_mas"] = u.Quantity(dxi_mas, u.mas)
        truth["deta_mas"] = u.Quantity(deta_mas, u.mas)
        truth.meta["turbulence"] = dataclasses.asdict(turbulence.spec)
    return image, truth


def _isolated(i: np.ndarray, j: np.ndarray, flux: np.ndarray, oi: np.ndarray, oj: np.ndarray,
              oflux: np.ndarray) -> np.ndarray:
    """True for stars with no neighbour (star or other object) brighter than the isolation limit."""
    n = i.size
    xy = np.column_stack([np.r_[i, oi], np.r_[j, oj]])
    allflux = np.r_[flux, oflux]
    isolated = np.ones(n, dtype=bool)
    if xy.shape[0] < 2:
        return isolated
    pairs = cKDTree(xy).query_pairs(ISOLATION_RADIUS_PX, output_type="ndarray")
    if pairs.size == 0:
        return isolated
    a, b = pairs[:, 0], pairs[:, 1]
    spoil_a = (a < n) & (allflux[b] > ISOLATION_FLUX_RATIO * allflux[a])
    spoil_b = (b < n) & (allflux[a] > ISOLATION_FLUX_RATIO * allflux[b])
    isolated[a[spoil_a]] = False
    isolated[b[spoil_b]] = False
    return isolated



def render_exposure(stars: Table, wcs: WCS, *, rng: np.random.Generator,
                    shape: tuple[int, int] | None = None, epoch_yr: float = DEFAULT_EPOCH_YR,
                    fwhm_px: float = DEFAULT_FWHM_PX, ellipticity: float = DEFAULT_ELLIPTICITY,
                    psf_angle_deg: float = DEFAULT_PSF_ANGLE_DEG,
                    psf_beta: float = DEFAULT_PSF_BETA, sky_adu: float = DEFAULT_SKY_ADU,
                    sky_gradient_frac: float = DEFAULT_SKY_GRADIENT_FRAC,
                    read_noise_e: float = DEFAULT_READ_NOISE_E,
                    gain_e_per_adu: float = DEFAULT_GAIN_E_PER_ADU,
                    saturation_adu: float = DEFAULT_SATURATION_ADU,
                    bias_adu: float = DEFAULT_BIAS_ADU, exptime_s: float = DEFAULT_EXPTIME_S,
                    zero_point_mag: float = DEFAULT_ZERO_POINT_MAG, n_galaxies: int = 0,
                    n_cosmic_rays: int = 0, n_hot_columns: int = 0,
                    supersample: int = DEFAULT_SUPERSAMPLE,
                    turbulence: DisplacementField | None = None) -> tuple[np.ndarray, Table]:
    """A realistic raw exposure of a star catalog seen through a truth WCS.

    Stars are rendered by :func:`render_stars` (exact centres); galaxies (Sersic,
    random shapes, absent from the catalog), a sky with a linear gradient, cosmic rays
    (sharp hits and tracks) and hot columns are added; then Poisson noise on everything,
    Gaussian read noise, the gain, the bias, rounding and clipping at ``saturation_adu``
    (saturated stars are flat-topped).

    Parameters
    ----------
    stars, wcs, shape, epoch_yr, fwhm_px, ellipticity, psf_angle_deg, psf_beta, exptime_s,
    zero_point_mag, supersample, turbulence
        As in :func:`render_stars`.
    rng
        Random generator (galaxies, cosmic rays, hot columns, noise).
    sky_adu
        Mean sky level, ADU per pixel per exposure.
    sky_gradient_frac
        Peak-to-peak fraction of a linear sky gradient across the frame.
    read_noise_e
        Read noise, electrons rms.
    gain_e_per_adu
        Gain, electrons per ADU.
    saturation_adu
        Saturation level, ADU (at most 65535).
    bias_adu
        Bias level, ADU.
    n_galaxies, n_cosmic_rays, n_hot_columns
        Numbers of galaxies, cosmic rays and hot (bad) columns.

    Returns
    -------
    image : numpy.ndarray
        uint16 (ny, nx), ADU.
    truth : astropy.table.Table
        As from :func:`render_stars`, with ``saturated`` set (the star's expected peak
        plus sky and bias reaches ``saturation_adu``, or a pixel within
        SATURATION_SEARCH_PX of its centre is at saturation) and ``isolated`` also
        considering galaxies.  ``meta`` records the parameters, ``hot_columns`` (list of
        [column, first row, level ADU]), ``cosmic_ray_pixels`` (count) and ``galaxies``
        (list of [i, j, flux_adu, r_e_px]).
    """
    check_positive("gain_e_per_adu", gain_e_per_adu)
    check_positive("read_noise_e", read_noise_e, allow_zero=True)
    check_positive("sky_adu", sky_adu, allow_zero=True)
    if not 0.0 < saturation_adu <= np.iinfo(np.uint16).max:
        raise ConfigError(f"saturation_adu = {saturation_adu!r} is out of range: allowed 0 to 65535")
    for name, value in (("n_galaxies", n_galaxies), ("n_cosmic_rays", n_cosmic_rays),
                        ("n_hot_columns", n_hot_columns)):
        if int(value) < 0:
            raise ConfigError(f"{name} = {value!r} is out of range: allowed >= 0")
    model, truth = render_stars(stars, wcs, shape=shape, epoch_yr=epoch_yr, fwhm_px=fwhm_px,
                                ellipticity=ellipticity, psf_angle_deg=psf_angle_deg,
                                psf_beta=psf_beta, exptime_s=exptime_s,
                                zero_point_mag=zero_point_mag, supersample=supersample,
                                turbulence=turbulence)
    ny, nx = model.shape
    galaxies = add_galaxies(model, int(n_galaxies), rng=rng, fwhm_px=fwhm_px, exptime_s=exptime_s,
                             zero_point_mag=zero_point_mag, supersample=int(supersample))
    if len(galaxies):
        truth["isolated"] = _isolated(np.asarray(truth["i"]), np.asarray(truth["j"]),
                                      np.asarray(truth["flux_adu"]), np.asarray(galaxies["i"]),
                                      np.asarray(galaxies["j"]), np.asarray(galaxies["flux_adu"]))

    # expected electrons: sources + sky (+ gradient) + hot columns + cosmic rays
    model += np.float32(sky_adu)
    if sky_gradient_frac:
        gx = ((np.arange(nx) - (nx - 1) / 2.0) / max(nx - 1, 1)).astype(np.float32)
        gy = ((np.arange(ny) - (ny - 1) / 2.0) / max(ny - 1, 1)).astype(np.float32)
        # (gx + gy) spans [-1, 1] corner to corner: peak to peak = sky_gradient_frac * sky_adu
        model += np.float32(sky_adu * sky_gradient_frac / 2.0) * (gx[None, :] + gy[:, None])
    hot_cols, hot_start, hot_level = draw_hot_columns((ny, nx), int(n_hot_columns), rng=rng)
    for col, start, level in zip(hot_cols, hot_start, hot_level, strict=True):
        model[start:, col] += np.float32(level)
    model *= np.float32(gain_e_per_adu)
    cr_rows, cr_cols, cr_e = cosmic_ray_pixels((ny, nx), int(n_cosmic_rays), rng=rng)
    np.add.at(model, (cr_rows, cr_cols), cr_e.astype(np.float32))

    image = np.empty((ny, nx), dtype=np.uint16)
    inv_gain = np.float32(1.0 / gain_e_per_adu)
    for r0 in range(0, ny, NOISE_ROW_BLOCK):
        block = model[r0:r0 + NOISE_ROW_BLOCK]
        counts = rng.poisson(np.maximum(block, 0.0)).astype(np.float32)
        counts += rng.standard_normal(block.shape, dtype=np.float32) * np.float32(read_noise_e)
        counts *= inv_gain
        counts += np.float32(bias_adu)
        np.rint(counts, out=counts)
        np.clip(counts, 0.0, np.float32(saturation_adu), out=counts)
        image[r0:r0 + NOISE_ROW_BLOCK] = counts.astype(np.uint16)

    i = np.asarray(truth["i"])
    j = np.asarray(truth["j"])
    saturated = np.asarray(truth["peak_adu"]) + sky_adu + bias_adu >= saturation_adu
    ic, jc = np.rint(i).astype(np.int64), np.rint(j).astype(np.int64)
    level = np.float32(saturation_adu)
    for dj in range(-SATURATION_SEARCH_PX, SATURATION_SEARCH_PX + 1):
        for di in range(-SATURATION_SEARCH_PX, SATURATION_SEARCH_PX + 1):
            ii, jj = ic + di, jc + dj
            ok = (ii >= 0) & (ii < nx) & (jj >= 0) & (jj < ny)
            saturated[ok] |= image[jj[ok], ii[ok]] >= level
    truth["saturated"] = saturated
    truth.meta.update({
        "sky_adu": float(sky_adu), "sky_gradient_frac": float(sky_gradient_frac),
        "read_noise_e": float(read_noise_e), "gain_e_per_adu": float(gain_e_per_adu),
        "saturation_adu": float(saturation_adu), "bias_adu": float(bias_adu),
        "hot_columns": [[int(c), int(s), float(v)] for c, s, v in zip(hot_cols, hot_start, hot_level, strict=True)],
        "cosmic_rays": int(n_cosmic_rays), "cosmic_ray_pixels": int(cr_rows.size),
        "galaxies": [[float(a), float(b), float(f), float(r)] for a, b, f, r in
                     zip(galaxies["i"], galaxies["j"], galaxies["flux_adu"], galaxies["r_e_px"], strict=True)],
    })
    return image, truth
