"""Simulated Condor exposures with exact truth: the test bed of the solver.

Everything here is pure numpy/astropy and seeded through an explicit
``rng: np.random.Generator``; only :func:`write_exposure`, :func:`read_truth_wcs`,
:func:`simulate_field` and :func:`make_demo` touch the disk.

The pieces, in the order a simulated exposure is made:

1. :func:`condor_wcs` -- the *truth* WCS: TAN + TPV with a radial cubic and a small
   quadratic distortion that reaches ``distortion_px`` pixels at the corners.
2. :func:`synthetic_gaia_catalog` -- Gaia DR3-like reference stars (archive column
   names and units, real ``source_id`` HEALPix encoding), uniform on the sphere.
3. :func:`render_exposure` -- stars propagated to the exposure epoch with
   :func:`astrodask.reference.catalog.propagate_to_epoch`, projected through the truth WCS and
   rendered as pixel-integrated elliptical Moffat profiles whose flux-weighted centre
   is exactly the truth position; galaxies, cosmic rays, hot columns, sky, Poisson and
   read noise, gain, bias and saturation; returns a ``uint16`` image and a truth table.
4. :func:`approximate_header` -- what the telescope would write: an approximate plain
   TAN WCS or only RA/DEC keywords, with chosen pointing, rotation and scale errors.
5. :func:`write_exposure` -- ``X.fits.fz`` (RICE_1) or ``X.fits``, plus the exact truth
   ``X.truth.wcs.fits`` and ``X.truth.ecsv``; :func:`read_truth_wcs` reads it back.
6. :func:`simulate_field` and :func:`make_demo` -- all of the above for one field.

Conventions (see :mod:`astrodask.types`): pixels are 0-based, ``i`` is the column
(numpy's last axis), ``j`` the row; pixel ``(i, j)`` covers ``[i - 0.5, i + 0.5] x
[j - 0.5, j + 0.5]``; only FITS ``CRPIX`` is 1-based.

Orientation (the convention of :mod:`astrodask.wcsutil`): ``rotation_deg`` is the
position angle of the image +j axis, east of north; ``parity=+1`` is the usual sky view
(east left when north is up and +i points right), ``parity=-1`` is mirrored.  With
``s`` the scale in degrees and ``t`` the rotation, the CD matrix is::

    CD = s * [[-parity * cos t, sin t],
              [ parity * sin t, cos t]]

TPV terms used by :func:`condor_wcs` (``x, y`` are the intermediate world
coordinates in degrees, ``CD @ (pixel - CRPIX)``; ``r^2 = x^2 + y^2``)::

    xi  = PV1_1 x + PV1_4 x^2 + PV1_5 x y + PV1_6 y^2 + PV1_7 x^3 + PV1_9 x y^2
    eta = PV2_1 y + PV2_4 y^2 + PV2_5 y x + PV2_6 x^2 + PV2_7 y^3 + PV2_9 y x^2

with ``PV1_1 = PV2_1 = 1`` and ``PV1_7 = PV1_9 = PV2_7 = PV2_9 = k``, so the cubic part
is the radial ``k r^2 (x, y)``; the quadratic terms are a fixed, asymmetric pattern
(:data:`QUADRATIC_DISTORTION_PATTERN`).  All terms are scaled together so that the
largest displacement over the four corners, between the TPV WCS and the same WCS
without its PV terms, is ``|distortion_px|`` pixels.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from astropy import units as u
from astropy.coordinates import Angle
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time
from astropy.wcs import WCS
from scipy.spatial import cKDTree

from astrodask.config import CONDOR_PLATE_SCALE, GaiaConfig
from astrodask.errors import CatalogError, ConfigError, InputFileError
from astrodask.reference.catalog import propagate_to_epoch
from astrodask.sphere import angular_separation_deg
from astrodask.constants import GAIA_HEALPIX_LEVEL
from astrodask.reference.healpix import healpix_nested_index
from astrodask.solve.tpv import tangent_plane
from astrodask.types import exposure_name
from astrodask.wcsutil import cd_matrix, cd_to_scale_rotation_parity

log = logging.getLogger(__name__)

__all__ = [
    "ExposurePaths",
    "SimulatedField",
    "approximate_header",
    "condor_wcs",
    "healpix_nested_index",
    "make_demo",
    "read_truth_wcs",
    "render_exposure",
    "render_stars",
    "simulate_field",
    "synthetic_gaia_catalog",
    "write_exposure",
]

# --------------------------------------------------------------------------
# The camera
# --------------------------------------------------------------------------

#: Condor frame shape (rows, columns) = (ny, nx), pixels.
CONDOR_SHAPE: tuple[int, int] = (6388, 9576)
#: Condor plate scale, arcsec per pixel.
CONDOR_SCALE_ARCSEC: float = CONDOR_PLATE_SCALE
#: Physical pixel size of the Condor CMOS sensor (Sony IMX455), micrometres.
CONDOR_PIXEL_SIZE_UM: float = 3.76
#: Default largest distortion at the frame corners, pixels.
DEFAULT_DISTORTION_PX: float = 4.0
#: Quadratic TPV pattern, in units of the corner radius R: rows are (xi, eta), columns the
#: coefficients of (u^2, u v, v^2) with u = x / R, v = y / R, before the overall scaling.
QUADRATIC_DISTORTION_PATTERN: tuple[tuple[float, float, float], ...] = (
    (0.12, -0.07, 0.05),
    (-0.04, 0.09, 0.06),
)

# --------------------------------------------------------------------------
# The sky: Gaia-like stars
# --------------------------------------------------------------------------

#: Bits of Gaia source_id below the HEALPix index.
GAIA_SOURCE_ID_SHIFT: int = 35
#: Gaia G-band zero point: flux = 10**(-0.4 * (G - zp)) e-/s (Riello et al. 2021).
GAIA_G_ZERO_POINT: float = 25.6874
#: Reference epoch of Gaia DR3, Julian years.
GAIA_DR3_EPOCH: float = 2016.0
#: Default number of stars brighter than ``mag_limit`` per square degree (high latitude).
DEFAULT_STAR_DENSITY_PER_DEG2: float = 2500.0
#: Default faint limit of a synthetic catalog, G mag.
DEFAULT_MAG_LIMIT: float = 20.0
#: Default bright limit of a synthetic catalog, G mag.
DEFAULT_BRIGHT_LIMIT: float = 6.0
#: Slope of the cumulative star counts, d log10 N / dG, dex per mag (high galactic latitude).
DEFAULT_COUNT_SLOPE_DEX_PER_MAG: float = 0.32
#: Mean proper motion of the field population (pmra, pmdec), mas/yr.
PM_MEAN_MASYR: tuple[float, float] = (-2.5, -3.5)
#: Proper-motion dispersion per axis at G = PM_SIGMA_REF_MAG, mas/yr.
PM_SIGMA_MASYR: float = 5.0
#: Magnitude at which the proper-motion dispersion is PM_SIGMA_MASYR, G mag.
PM_SIGMA_REF_MAG: float = 18.0
#: Growth of the proper-motion dispersion towards bright (nearby) stars, dex per mag.
PM_SIGMA_SLOPE_DEX_PER_MAG: float = 0.1
#: Fraction of fast (nearby or halo) stars.
FAST_STAR_FRACTION: float = 0.005
#: Range of total proper motion of the fast stars (log-uniform), mas/yr.
FAST_STAR_PM_MASYR: tuple[float, float] = (50.0, 1000.0)
#: Typical tangential velocity converting proper motion to parallax, km/s.
TANGENTIAL_VELOCITY_KMS: float = 50.0
#: Parallax of a field star at G = PM_SIGMA_REF_MAG, mas (grows like the pm dispersion).
PARALLAX_REF_MAS: float = 0.3
#: Log-normal scatter of the parallaxes about that trend (natural log).
PARALLAX_SCATTER_LN: float = 0.5
#: Astronomical unit per year in km/s (converts mas/yr and mas to km/s).
AU_PER_YR_KMS: float = 4.740470446
#: Largest fraction of stars with a 2-parameter solution (no pm, no parallax) at the faint end.
TWO_PARAMETER_MAX_FRACTION: float = 0.5
#: Magnitude where the 2-parameter fraction reaches half its maximum, G mag.
TWO_PARAMETER_MID_MAG: float = 20.3
#: Width of the logistic 2-parameter fraction, mag.
TWO_PARAMETER_WIDTH_MAG: float = 0.35
#: Position errors of 2-parameter solutions are this many times larger.
TWO_PARAMETER_ERROR_FACTOR: float = 4.0
#: Gaia DR3 parallax error model sigma^2 = c0 + c1 z + c2 z^2 (uas^2), z = 10**(0.4 (max(G, g0) - 15)).
GAIA_PLX_ERROR_COEFFS_UAS2: tuple[float, float, float] = (40.0, 800.0, 30.0)
#: Bright-end floor of the magnitude used by the error model, G mag.
GAIA_ERROR_BRIGHT_MAG: float = 13.0
#: Position errors relative to the parallax error, (ra_error, dec_error).
GAIA_POSITION_ERROR_RATIO: tuple[float, float] = (0.8, 0.7)
#: Log-normal scatter of the individual errors, dex.
GAIA_ERROR_SCATTER_DEX: float = 0.1

# --------------------------------------------------------------------------
# The exposure
# --------------------------------------------------------------------------

#: Default PSF full width at half maximum (geometric mean of the axes), pixels.
DEFAULT_FWHM_PX: float = 2.5
#: Default PSF ellipticity 1 - b/a.
DEFAULT_ELLIPTICITY: float = 0.05
#: Default position angle of the PSF major axis, degrees counter-clockwise from +i.
DEFAULT_PSF_ANGLE_DEG: float = 30.0
#: Default Moffat beta.
DEFAULT_PSF_BETA: float = 3.0
#: Default exposure time, seconds.
DEFAULT_EXPTIME_S: float = 60.0
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
#: Default bias level, ADU.
DEFAULT_BIAS_ADU: float = 500.0
#: Default saturation level (16-bit ADC), ADU.
DEFAULT_SATURATION_ADU: float = 65535.0
#: Sub-samples per pixel along each axis when integrating profiles over pixels.
DEFAULT_SUPERSAMPLE: int = 5
#: Stamp half-sizes, pixels; each object gets the smallest whose edge level is below the threshold.
STAMP_HALF_SIZES_PX: tuple[int, ...] = (6, 8, 12, 16, 24, 32, 48, 64, 96, 128)
#: A stamp is large enough when the profile at its edge is below this, ADU per pixel.
STAMP_EDGE_THRESHOLD_ADU: float = 0.05
#: Stars farther from the frame centre than this many times the centre-corner distance
#: (plus the largest stamp) are not projected.
PREFILTER_REACH_FACTOR: float = 1.2
#: Largest number of sub-sampled profile values evaluated at once (memory bound).
MAX_BATCH_SAMPLES: int = 8_000_000
#: Rows processed at once when adding noise.
NOISE_ROW_BLOCK: int = 512
#: A star is isolated when no other star or galaxy brighter than this fraction of its flux...
ISOLATION_FLUX_RATIO: float = 0.01
#: ...lies within this distance, pixels.
ISOLATION_RADIUS_PX: float = 12.0
#: Radius searched for saturated pixels around a star's truth position, pixels.
SATURATION_SEARCH_PX: int = 1
#: Galaxy magnitudes (G-equivalent) are drawn between these limits, mag.
GALAXY_MAG_RANGE: tuple[float, float] = (16.0, 21.0)
#: Slope of cumulative galaxy counts, dex per mag.
GALAXY_COUNT_SLOPE_DEX_PER_MAG: float = 0.45
#: Median half-light radius of a G = 18 galaxy, pixels; scatter (dex); growth towards bright (dex/mag).
GALAXY_RE_PX: tuple[float, float, float] = (3.0, 0.2, 0.1)
#: Range of Sersic indices (uniform).
GALAXY_SERSIC_RANGE: tuple[float, float] = (0.7, 4.0)
#: Range of galaxy axis ratios b/a (uniform).
GALAXY_AXIS_RATIO_RANGE: tuple[float, float] = (0.3, 1.0)
#: Galaxy stamps extend to this many half-light radii along the major axis.
GALAXY_STAMP_RE: float = 6.0
#: Default galaxy density for :func:`simulate_field`, per square degree (to GALAXY_MAG_RANGE[1]).
DEFAULT_GALAXY_DENSITY_PER_DEG2: float = 1000.0
#: Cosmic-ray rate at the sensor, per cm^2 per second.
COSMIC_RAY_RATE_PER_CM2_S: float = 0.03
#: Fraction of cosmic rays that hit (nearly) perpendicular: 1-2 pixel events.
COSMIC_RAY_HIT_FRACTION: float = 0.4
#: Largest length of a cosmic-ray track, pixels.
COSMIC_RAY_MAX_LENGTH_PX: float = 30.0
#: Charge deposited per pixel by a cosmic ray (uniform range), electrons.
COSMIC_RAY_CHARGE_E: tuple[float, float] = (300.0, 3000.0)
#: Pixel-to-pixel variation of the charge along a track (uniform factor range).
COSMIC_RAY_CHARGE_JITTER: tuple[float, float] = (0.7, 1.3)
#: Step along a cosmic-ray track when rasterising it, pixels.
COSMIC_RAY_STEP_PX: float = 0.25
#: Excess level of a hot column (uniform range), ADU per exposure.
HOT_COLUMN_ADU: tuple[float, float] = (50.0, 500.0)
#: Fraction of hot columns that start part-way up the frame (the others span all rows).
HOT_COLUMN_PARTIAL_FRACTION: float = 0.5
#: Hot columns per full Condor frame in :func:`simulate_field` (scaled with the width).
HOT_COLUMNS_PER_CONDOR_FRAME: float = 4.0

# --------------------------------------------------------------------------
# The header, the files, the demo
# --------------------------------------------------------------------------

#: Default epoch of a simulated exposure, Julian years.
DEFAULT_EPOCH_YR: float = 2024.5
#: Default pointing error of an approximate header, arcmin.
DEFAULT_POINTING_ERROR_ARCMIN: float = 3.0
#: Default rotation error of an approximate header, degrees.
DEFAULT_ROTATION_ERROR_DEG: float = 0.5
#: Default fractional scale error of an approximate header.
DEFAULT_SCALE_ERROR_FRAC: float = 0.003
#: Margin of the written reference catalog around the footprint, degrees.
DEFAULT_CATALOG_MARGIN_DEG: float = GaiaConfig().margin_deg
#: Stars this much fainter than the catalog limit are rendered too (the sky is deeper than Gaia), mag.
DEFAULT_EXTRA_RENDER_DEPTH_MAG: float = 0.5
#: Header keywords of a simulated exposure.
TELESCOPE_NAME: str = "Condor Array Telescope"
INSTRUMENT_NAME: str = "QHY600M"
DEFAULT_FILTER: str = "luminance"
#: Largest difference allowed between a written and a re-read truth WCS, pixels.
TRUTH_WCS_TOLERANCE_PX: float = 1e-8
#: The demo: a Condor quarter frame (a quarter of each axis) on a high-latitude field.
DEMO_SHAPE: tuple[int, int] = (1597, 2394)
DEMO_RA_DEG: float = 150.1
DEMO_DEC_DEG: float = 2.2
DEMO_ROTATION_DEG: float = 0.35
DEMO_DISTORTION_PX: float = 2.0
DEMO_EPOCH_YR: float = 2024.3
DEMO_SEED: int = 20240417

J2000_MJD: float = 51544.5
DAYS_PER_JULIAN_YEAR: float = 365.25
SECONDS_PER_DAY: float = 86400.0
FWHM_PER_SIGMA: float = 2.0 * math.sqrt(2.0 * math.log(2.0))

HeaderStyle = Literal["wcs", "keywords"]
RaDecFormat = Literal["both", "sexagesimal", "degrees", "objctra"]


# ==========================================================================
# 1. The truth WCS
# ==========================================================================


def condor_wcs(ra_deg: float, dec_deg: float, *, shape: tuple[int, int] = CONDOR_SHAPE,
               scale_arcsec: float = CONDOR_SCALE_ARCSEC, rotation_deg: float = 0.0,
               parity: int = 1, distortion_px: float = DEFAULT_DISTORTION_PX) -> WCS:
    """A Condor-like truth WCS: TAN + TPV, CRPIX at the centre of the frame.

    Parameters
    ----------
    ra_deg, dec_deg
        Sky position of the centre of the frame (CRVAL), degrees.
    shape
        Image shape (ny, nx), pixels.
    scale_arcsec
        Plate scale at the centre, arcsec per pixel.
    rotation_deg
        Position angle of the image +j axis, degrees east of north.
    parity
        +1: usual sky view (east left when north is up); -1: mirrored.
    distortion_px
        Largest displacement at the four corners caused by the TPV terms, pixels.
        Positive: the sky seen at the corners lies farther out than the central scale
        implies (pincushion in the sky-to-image sense); negative: the opposite; 0: none.

    Returns
    -------
    astropy.wcs.WCS
        ``RA---TPV``/``DEC--TPV`` with the PV layout of this module's docstring and
        ``pixel_shape = (nx, ny)``.  Use origin 0 (``world_to_pixel_values``).

    Notes
    -----
    wcslib translates TPV when the WCS is first used (``wcs.wcs.set()``): afterwards
    ``wcs.wcs.ctype`` reads ``RA---TAN`` and ``wcs.wcs.get_pv()`` is empty, the terms
    living in wcslib's distortion structure; the transformations still apply them and
    ``wcs.to_header(relax=True)`` writes ``RA---TPV`` with every PV keyword.
    """
    ny, nx = _check_shape(shape)
    _check_positive("scale_arcsec", scale_arcsec)
    if parity not in (1, -1):
        raise ConfigError(f"parity = {parity!r} must be +1 (sky view) or -1 (mirrored)")
    if not -90.0 <= dec_deg <= 90.0:
        raise ConfigError(f"dec_deg = {dec_deg!r} is out of range: allowed -90 to 90 deg")
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TPV", "DEC--TPV"]
    wcs.wcs.cunit = ["deg", "deg"]
    wcs.wcs.crval = [float(ra_deg) % 360.0, float(dec_deg)]
    wcs.wcs.crpix = [(nx - 1) / 2.0 + 1.0, (ny - 1) / 2.0 + 1.0]  # 0-based centre -> 1-based CRPIX
    wcs.wcs.cd = cd_matrix(scale_arcsec, rotation_deg, parity)
    wcs.wcs.radesys = "ICRS"
    wcs.wcs.set_pv(_tpv_terms(shape, scale_arcsec, rotation_deg, parity, distortion_px))
    wcs.pixel_shape = (nx, ny)
    wcs.wcs.set()
    return wcs


def _tpv_terms(shape: tuple[int, int], scale_arcsec: float, rotation_deg: float, parity: int,
               distortion_px: float) -> list[tuple[int, int, float]]:
    """PV (axis, index, value) triples reaching ``distortion_px`` at the worst corner."""
    ny, nx = shape
    cd = cd_matrix(scale_arcsec, rotation_deg, parity)
    half = np.array([[-1, -1], [1, -1], [-1, 1], [1, 1]]) * np.array([(nx - 1) / 2.0, (ny - 1) / 2.0])
    corners = half @ cd.T  # intermediate world coordinates (deg) of the four corners
    radius = float(np.hypot(corners[:, 0], corners[:, 1]).max())
    (a1, a2, a3), (b1, b2, b3) = QUADRATIC_DISTORTION_PATTERN

    def displacement(k: float, q: float) -> np.ndarray:
        x, y = corners[:, 0], corners[:, 1]
        r2 = x * x + y * y
        dxi = k * r2 * x + q / radius * (a1 * x * x + a2 * x * y + a3 * y * y)
        deta = k * r2 * y + q / radius * (b1 * x * x + b2 * x * y + b3 * y * y)
        return np.hypot(dxi, deta)

    k0 = 1.0 / radius**2  # radial displacement of 1 (deg) at the corner radius, before scaling
    worst = float(displacement(k0, 1.0).max())
    amplitude = distortion_px * scale_arcsec / 3600.0 / worst  # deg per unit pattern
    k, q = k0 * amplitude, amplitude / radius
    return [
        (1, 0, 0.0), (1, 1, 1.0), (1, 2, 0.0),
        (1, 4, q * a1), (1, 5, q * a2), (1, 6, q * a3),
        (1, 7, k), (1, 8, 0.0), (1, 9, k), (1, 10, 0.0),
        (2, 0, 0.0), (2, 1, 1.0), (2, 2, 0.0),
        (2, 4, q * b3), (2, 5, q * b2), (2, 6, q * b1),
        (2, 7, k), (2, 8, 0.0), (2, 9, k), (2, 10, 0.0),
    ]


# ==========================================================================
# 2. Synthetic Gaia catalog
# ==========================================================================


def synthetic_gaia_catalog(ra_deg: float, dec_deg: float, *, rng: np.random.Generator,
                           radius_deg: float | None = None, width_deg: float | None = None,
                           height_deg: float | None = None,
                           density_per_deg2: float = DEFAULT_STAR_DENSITY_PER_DEG2,
                           mag_limit: float = DEFAULT_MAG_LIMIT,
                           bright_limit: float = DEFAULT_BRIGHT_LIMIT,
                           count_slope_dex_per_mag: float = DEFAULT_COUNT_SLOPE_DEX_PER_MAG,
                           ref_epoch: float = GAIA_DR3_EPOCH) -> Table:
    """A Gaia DR3-like catalog of stars uniform on the sphere over a footprint.

    Parameters
    ----------
    ra_deg, dec_deg
        Centre of the footprint, degrees.
    rng
        Random generator.
    radius_deg
        Footprint: a cone of this radius, degrees; or give ``width_deg`` and ``height_deg``.
    width_deg, height_deg
        Footprint: the rectangle ``|xi| <= width/2``, ``|eta| <= height/2`` in the gnomonic
        (TAN) tangent plane at the centre, xi towards east and eta towards north, degrees
        (the intermediate world coordinates of a TAN WCS with CRVAL at the centre).
    density_per_deg2
        Mean number of stars between ``bright_limit`` and ``mag_limit`` per square degree
        of sky; the count is Poisson.
    mag_limit, bright_limit
        Faint and bright limits, G mag.
    count_slope_dex_per_mag
        Cumulative counts rise as ``N(<G) ~ 10**(slope * G)`` (so do the differential counts).
    ref_epoch
        Epoch of the positions, Julian years.

    Returns
    -------
    astropy.table.Table
        Gaia archive columns and units: ``source_id`` (int64, level-12 nested HEALPix
        index of (ra, dec) times 2**35 plus a running number from 1), ``ra``, ``dec``
        (deg), ``ra_error``, ``dec_error`` (mas, Gaia DR3-like vs G), ``pmra``,
        ``pmdec`` (mas/yr, ``pmra`` includes cos(dec)), ``parallax`` (mas),
        ``ref_epoch`` (yr), ``phot_g_mean_mag`` (mag), ``phot_g_mean_flux`` (e-/s).
        Faint stars are partly 2-parameter solutions: NaN ``pmra``, ``pmdec``,
        ``parallax``.  Sorted by ``source_id``; parameters in ``meta``.
    """
    _check_positive("density_per_deg2", density_per_deg2, allow_zero=True)
    if not bright_limit < mag_limit:
        raise ConfigError(f"bright_limit = {bright_limit!r} must be brighter (smaller) than "
                          f"mag_limit = {mag_limit!r}")
    if not -90.0 <= dec_deg <= 90.0:
        raise ConfigError(f"dec_deg = {dec_deg!r} is out of range: allowed -90 to 90 deg")
    if radius_deg is not None:
        if width_deg is not None or height_deg is not None:
            raise ConfigError("give either radius_deg or width_deg and height_deg, not both")
        _check_positive("radius_deg", radius_deg)
        if radius_deg >= 90.0:
            raise ConfigError(f"radius_deg = {radius_deg!r} is out of range: allowed below 90 deg")
        cap_deg = float(radius_deg)
    else:
        if width_deg is None or height_deg is None:
            raise ConfigError("give the footprint: radius_deg, or both width_deg and height_deg")
        _check_positive("width_deg", width_deg)
        _check_positive("height_deg", height_deg)
        if max(width_deg, height_deg) >= 90.0:
            raise ConfigError(f"width_deg = {width_deg!r}, height_deg = {height_deg!r}: "
                              "allowed below 90 deg")
        cap_deg = math.degrees(math.atan(math.hypot(math.tan(math.radians(width_deg / 2.0)),
                                                    math.tan(math.radians(height_deg / 2.0)))))
    cap_cos = math.cos(math.radians(cap_deg))
    cap_area_deg2 = 2.0 * math.pi * (1.0 - cap_cos) * (180.0 / math.pi) ** 2
    n = int(rng.poisson(density_per_deg2 * cap_area_deg2))
    rho = np.arccos(rng.uniform(cap_cos, 1.0, n))
    pa = rng.uniform(0.0, 2.0 * np.pi, n)
    ra, dec = _offset_positions(ra_deg, dec_deg, rho, pa)
    if radius_deg is None:
        xi, eta = tangent_plane(ra, dec, (ra_deg, dec_deg))
        keep = (np.abs(xi) <= width_deg / 2.0) & (np.abs(eta) <= height_deg / 2.0)
        ra, dec = ra[keep], dec[keep]
    n = ra.size

    s = count_slope_dex_per_mag
    lo, hi = 10.0 ** (s * bright_limit), 10.0 ** (s * mag_limit)
    gmag = np.log10(lo + rng.uniform(0.0, 1.0, n) * (hi - lo)) / s

    two_param = rng.uniform(0.0, 1.0, n) < TWO_PARAMETER_MAX_FRACTION / (
        1.0 + np.exp(-(gmag - TWO_PARAMETER_MID_MAG) / TWO_PARAMETER_WIDTH_MAG))
    z = 10.0 ** (0.4 * (np.maximum(gmag, GAIA_ERROR_BRIGHT_MAG) - 15.0))
    c0, c1, c2 = GAIA_PLX_ERROR_COEFFS_UAS2
    plx_error_mas = np.sqrt(c0 + c1 * z + c2 * z * z) / 1000.0
    factor = np.where(two_param, TWO_PARAMETER_ERROR_FACTOR, 1.0)
    scatter = 10.0 ** (GAIA_ERROR_SCATTER_DEX * rng.standard_normal((2, n)))
    ra_error = GAIA_POSITION_ERROR_RATIO[0] * plx_error_mas * factor * scatter[0]
    dec_error = GAIA_POSITION_ERROR_RATIO[1] * plx_error_mas * factor * scatter[1]

    growth = 10.0 ** (PM_SIGMA_SLOPE_DEX_PER_MAG * (PM_SIGMA_REF_MAG - gmag))
    pmra = PM_MEAN_MASYR[0] + PM_SIGMA_MASYR * growth * rng.standard_normal(n)
    pmdec = PM_MEAN_MASYR[1] + PM_SIGMA_MASYR * growth * rng.standard_normal(n)
    parallax = PARALLAX_REF_MAS * growth * np.exp(PARALLAX_SCATTER_LN * rng.standard_normal(n))
    fast = rng.uniform(0.0, 1.0, n) < FAST_STAR_FRACTION
    lo_pm, hi_pm = np.log(FAST_STAR_PM_MASYR[0]), np.log(FAST_STAR_PM_MASYR[1])
    pm_total = np.exp(rng.uniform(lo_pm, hi_pm, n))
    pm_angle = rng.uniform(0.0, 2.0 * np.pi, n)
    pmra = np.where(fast, pm_total * np.sin(pm_angle), pmra)
    pmdec = np.where(fast, pm_total * np.cos(pm_angle), pmdec)
    parallax = np.where(fast, pm_total / (AU_PER_YR_KMS * TANGENTIAL_VELOCITY_KMS), parallax)
    parallax = parallax + plx_error_mas * rng.standard_normal(n)
    for values in (pmra, pmdec, parallax):
        values[two_param] = np.nan

    hp = healpix_nested_index(ra, dec, level=GAIA_HEALPIX_LEVEL)
    order = np.lexsort((gmag, hp))
    hp_sorted = hp[order]
    first = np.r_[0, np.flatnonzero(np.diff(hp_sorted)) + 1]
    counts = np.diff(np.r_[first, n])
    running = np.arange(n) - np.repeat(first, counts) + 1
    source_id = (hp_sorted << GAIA_SOURCE_ID_SHIFT) + running

    table = Table(meta={
        "generator": "astrodask.simulate.synthetic_gaia_catalog",
        "centre_deg": [float(ra_deg), float(dec_deg)],
        "footprint": ({"radius_deg": float(radius_deg)} if radius_deg is not None
                      else {"width_deg": float(width_deg), "height_deg": float(height_deg)}),
        "density_per_deg2": float(density_per_deg2),
        "mag_limit": float(mag_limit),
        "bright_limit": float(bright_limit),
        "count_slope_dex_per_mag": float(s),
    })
    table["source_id"] = source_id.astype(np.int64)
    table["ra"] = u.Quantity(ra[order], u.deg)
    table["dec"] = u.Quantity(dec[order], u.deg)
    table["ra_error"] = u.Quantity(ra_error[order], u.mas)
    table["dec_error"] = u.Quantity(dec_error[order], u.mas)
    table["pmra"] = u.Quantity(pmra[order], u.mas / u.yr)
    table["pmdec"] = u.Quantity(pmdec[order], u.mas / u.yr)
    table["parallax"] = u.Quantity(parallax[order], u.mas)
    table["ref_epoch"] = u.Quantity(np.full(n, float(ref_epoch)), u.yr)
    table["phot_g_mean_mag"] = u.Quantity(gmag[order], u.mag)
    table["phot_g_mean_flux"] = u.Quantity(10.0 ** (-0.4 * (gmag[order] - GAIA_G_ZERO_POINT)),
                                           u.electron / u.s)
    return table


def _unit_vectors(ra_deg: float, dec_deg: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit vectors of a position and of the local east and north directions."""
    a, d = math.radians(ra_deg), math.radians(dec_deg)
    centre = np.array([math.cos(d) * math.cos(a), math.cos(d) * math.sin(a), math.sin(d)])
    east = np.array([-math.sin(a), math.cos(a), 0.0])
    north = np.array([-math.sin(d) * math.cos(a), -math.sin(d) * math.sin(a), math.cos(d)])
    return centre, east, north


def _offset_positions(ra_deg: float, dec_deg: float, rho_rad: np.ndarray,
                      pa_rad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions at angular distance ``rho`` and position angle ``pa`` (east of north)."""
    centre, east, north = _unit_vectors(ra_deg, dec_deg)
    rho = np.asarray(rho_rad, dtype=np.float64)[..., None]
    pa = np.asarray(pa_rad, dtype=np.float64)[..., None]
    p = np.cos(rho) * centre + np.sin(rho) * (np.cos(pa) * north + np.sin(pa) * east)
    ra = np.degrees(np.arctan2(p[..., 1], p[..., 0])) % 360.0
    dec = np.degrees(np.arcsin(np.clip(p[..., 2], -1.0, 1.0)))
    return ra, dec


# ==========================================================================
# 3. Rendering
# ==========================================================================

Profile = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def _add_profiles(image: np.ndarray, x: np.ndarray, y: np.ndarray, flux: np.ndarray,
                  half: np.ndarray, coeffs: np.ndarray, rho2_max: np.ndarray,
                  profile: Profile, supersample: int) -> np.ndarray:
    """Add pixel-integrated, point-symmetric profiles to ``image``; return their peaks.

    Each object ``k`` is a profile ``f(rho^2)`` of the elliptical radius
    ``rho^2 = A dx^2 + B dx dy + C dy^2`` (``coeffs[k] = (A, B, C)``) about its exact
    centre ``(x[k], y[k])``, cut at ``rho2_max[k]`` (where ``f`` reaches 0; it must lie
    within ``half[k]`` pixels of the centre). It is sampled on a ``supersample^2`` grid
    per pixel over a ``(2 half + 1)^2`` stamp around the nearest pixel, summed per pixel
    and scaled to ``flux[k]`` (before cropping at the image edges).  Being symmetric about
    its centre and not truncated by the stamp, each rendered object has its flux-weighted
    centre at ``(x, y)`` up to sampling terms far below 1e-4 px.

    Objects are grouped by stamp size and evaluated in batches (vectorised); stamps are
    scattered into the image with ``np.add.at``.
    """
    ny, nx = image.shape
    flat = image.reshape(-1)
    peaks = np.zeros(x.size, dtype=np.float32)
    for h in np.unique(half):
        group = np.flatnonzero(half == h)
        side = 2 * int(h) + 1
        length = side * supersample
        t = ((np.arange(length) + 0.5) / supersample - 0.5 - h).astype(np.float32)
        offsets = np.arange(-h, h + 1)
        batch = max(1, MAX_BATCH_SAMPLES // (length * length))
        for start in range(0, group.size, batch):
            idx = group[start:start + batch]
            ic, jc = np.rint(x[idx]).astype(np.int64), np.rint(y[idx]).astype(np.int64)
            fx = (ic - x[idx]).astype(np.float32)[:, None, None]
            fy = (jc - y[idx]).astype(np.float32)[:, None, None]
            dx = t[None, None, :] + fx  # (n, 1, L): columns
            dy = t[None, :, None] + fy  # (n, L, 1): rows
            a, b, c = (coeffs[idx, m].astype(np.float32)[:, None, None] for m in range(3))
            rho2 = b * dx + c * dy
            rho2 *= dy
            rho2 += a * dx * dx
            values = profile(rho2, idx, rho2_max[idx].astype(np.float32)[:, None, None])
            pix = values.reshape(idx.size, side, supersample, side, supersample).sum(axis=4).sum(axis=2)
            total = pix.sum(axis=(1, 2), dtype=np.float64)
            pix *= (flux[idx] / total).astype(np.float32)[:, None, None]
            peaks[idx] = pix.max(axis=(1, 2))
            jj = jc[:, None, None] + offsets[None, :, None]
            ii = ic[:, None, None] + offsets[None, None, :]
            inside = (jj >= 0) & (jj < ny) & (ii >= 0) & (ii < nx)
            np.add.at(flat, (jj * nx + ii)[inside], pix[inside])
    return peaks


def _ellipse_coeffs(axis_ratio: np.ndarray, angle_rad: np.ndarray) -> np.ndarray:
    """(A, B, C) of ``rho^2 = q u^2 + v^2 / q``, (u, v) along the major/minor axes.

    ``rho`` is the geometric-mean radius: the physical major and minor radii are
    ``rho / sqrt(q)`` and ``rho * sqrt(q)``.
    """
    q = np.asarray(axis_ratio, dtype=np.float64)
    cs, sn = np.cos(angle_rad), np.sin(angle_rad)
    a = q * cs * cs + sn * sn / q
    b = 2.0 * cs * sn * (q - 1.0 / q)
    c = q * sn * sn + cs * cs / q
    return np.stack(np.broadcast_arrays(a, b, c), axis=-1)


def _moffat_alpha(fwhm_px: float, beta: float) -> float:
    """Moffat core width alpha for a given FWHM, pixels."""
    return fwhm_px / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))


def _stamp_half_size(flux_adu: np.ndarray, density_at: Callable[[float], float]) -> np.ndarray:
    """Smallest half-size in STAMP_HALF_SIZES_PX whose edge level is below the threshold.

    ``density_at(r)`` is the unit-flux profile (per pixel) at ``r`` pixels along the major axis.
    """
    half = np.full(flux_adu.shape, STAMP_HALF_SIZES_PX[-1], dtype=np.int64)
    for h in reversed(STAMP_HALF_SIZES_PX):
        ok = flux_adu * density_at(float(h)) <= STAMP_EDGE_THRESHOLD_ADU
        half = np.where(ok, h, half)
    return half


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
                 supersample: int = DEFAULT_SUPERSAMPLE) -> tuple[np.ndarray, Table]:
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
        :func:`render_exposure` sets it).
    """
    ny, nx = _resolve_shape(shape, wcs)
    _check_positive("fwhm_px", fwhm_px)
    _check_positive("exptime_s", exptime_s)
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
    i, j = wcs.world_to_pixel_values(ra[sel], dec[sel])
    i, j = np.asarray(i, dtype=np.float64), np.asarray(j, dtype=np.float64)

    beta = float(psf_beta)
    alpha = _moffat_alpha(fwhm_px, beta)
    q = 1.0 - ellipticity
    flux = exptime_s * 10.0 ** (-0.4 * (gmag[sel] - zero_point_mag))

    def moffat_density(r_px: float) -> float:
        return (beta - 1.0) / (math.pi * alpha**2) * (1.0 + (r_px * math.sqrt(q)) ** 2 / alpha**2) ** (-beta)

    half = _stamp_half_size(flux, moffat_density)
    touches = ((i + half >= -0.5) & (i - half <= nx - 0.5) & (j + half >= -0.5) & (j - half <= ny - 0.5)
               & np.isfinite(i) & np.isfinite(j))
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
    coeffs = np.broadcast_to(_ellipse_coeffs(q, math.radians(psf_angle_deg)), (sel.size, 3))
    rho2_max = (half.astype(np.float64) ** 2) * q  # the ellipse rho = rho_max touches the stamp edge
    peaks = _add_profiles(image, i, j, flux, half, coeffs, rho2_max, moffat, int(supersample))

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


def _add_galaxies(image: np.ndarray, n: int, *, rng: np.random.Generator, fwhm_px: float,
                  exptime_s: float, zero_point_mag: float, supersample: int) -> Table:
    """Add ``n`` Sersic galaxies (random magnitude, size, index, shape) to ``image`` (ADU)."""
    ny, nx = image.shape
    x = rng.uniform(-0.5, nx - 0.5, n)
    y = rng.uniform(-0.5, ny - 0.5, n)
    s = GALAXY_COUNT_SLOPE_DEX_PER_MAG
    lo, hi = 10.0 ** (s * GALAXY_MAG_RANGE[0]), 10.0 ** (s * GALAXY_MAG_RANGE[1])
    mag = np.log10(lo + rng.uniform(0.0, 1.0, n) * (hi - lo)) / s
    re_med, re_dex, re_slope = GALAXY_RE_PX
    r_e = re_med * 10.0 ** (re_dex * rng.standard_normal(n) + re_slope * (18.0 - mag))
    sersic = rng.uniform(*GALAXY_SERSIC_RANGE, n)
    q = rng.uniform(*GALAXY_AXIS_RATIO_RANGE, n)
    angle = rng.uniform(0.0, np.pi, n)
    flux = exptime_s * 10.0 ** (-0.4 * (mag - zero_point_mag))
    reach = GALAXY_STAMP_RE * r_e / np.sqrt(q) + fwhm_px
    sizes = np.asarray(STAMP_HALF_SIZES_PX)
    half = sizes[np.minimum(np.searchsorted(sizes, reach), sizes.size - 1)]
    rho2_max = (half.astype(np.float64) ** 2) * q
    b_n = 2.0 * sersic - 1.0 / 3.0 + 0.009876 / sersic  # Sersic b_n (Prugniel & Simien 1997)
    soft2 = (fwhm_px / FWHM_PER_SIGMA) ** 2  # crude PSF smoothing of the core

    def sersic_profile(rho2: np.ndarray, idx: np.ndarray, rmax2: np.ndarray) -> np.ndarray:
        inv_n = (0.5 / sersic[idx]).astype(np.float32)[:, None, None]
        k = b_n[idx].astype(np.float32)[:, None, None]
        scale = (1.0 / r_e[idx] ** (1.0 / sersic[idx])).astype(np.float32)[:, None, None]
        soft = np.float32(soft2)
        floor = np.exp(-k * scale * np.power(rmax2 + soft, inv_n))
        values = np.exp(-k * scale * np.power(rho2 + soft, inv_n))
        values -= floor
        return np.maximum(values, np.float32(0.0), out=values)

    coeffs = _ellipse_coeffs(q, angle)
    _add_profiles(image, x, y, flux, half, coeffs, rho2_max, sersic_profile, supersample)
    galaxies = Table()
    galaxies["i"], galaxies["j"], galaxies["flux_adu"] = x, y, flux
    galaxies["mag"], galaxies["r_e_px"], galaxies["sersic_n"], galaxies["axis_ratio"] = mag, r_e, sersic, q
    return galaxies


def _cosmic_ray_pixels(shape: tuple[int, int], n: int, *,
                       rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels (rows, cols) and charges (e-) of ``n`` cosmic rays: short hits and sharp tracks."""
    ny, nx = shape
    hit = rng.uniform(0.0, 1.0, n) < COSMIC_RAY_HIT_FRACTION
    length = np.where(hit, rng.uniform(0.0, 1.0, n), rng.uniform(1.0, COSMIC_RAY_MAX_LENGTH_PX, n))
    x0, y0 = rng.uniform(0.0, nx - 1, n), rng.uniform(0.0, ny - 1, n)
    angle = rng.uniform(0.0, 2.0 * np.pi, n)
    charge = rng.uniform(*COSMIC_RAY_CHARGE_E, n)
    rows, cols, values = [], [], []
    for k in range(n):
        steps = np.arange(0.0, length[k] + COSMIC_RAY_STEP_PX, COSMIC_RAY_STEP_PX)
        ci = np.rint(x0[k] + steps * math.cos(angle[k])).astype(np.int64)
        cj = np.rint(y0[k] + steps * math.sin(angle[k])).astype(np.int64)
        ok = (ci >= 0) & (ci < nx) & (cj >= 0) & (cj < ny)
        flat = np.unique(cj[ok] * nx + ci[ok])
        rows.append(flat // nx)
        cols.append(flat % nx)
        values.append(charge[k] * rng.uniform(*COSMIC_RAY_CHARGE_JITTER, flat.size))
    if n == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0)
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(values)


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
                    supersample: int = DEFAULT_SUPERSAMPLE) -> tuple[np.ndarray, Table]:
    """A realistic raw exposure of a star catalog seen through a truth WCS.

    Stars are rendered by :func:`render_stars` (exact centres); galaxies (Sersic,
    random shapes, absent from the catalog), a sky with a linear gradient, cosmic rays
    (sharp hits and tracks) and hot columns are added; then Poisson noise on everything,
    Gaussian read noise, the gain, the bias, rounding and clipping at ``saturation_adu``
    (saturated stars are flat-topped).

    Parameters
    ----------
    stars, wcs, shape, epoch_yr, fwhm_px, ellipticity, psf_angle_deg, psf_beta, exptime_s,
    zero_point_mag, supersample
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
    _check_positive("gain_e_per_adu", gain_e_per_adu)
    _check_positive("read_noise_e", read_noise_e, allow_zero=True)
    _check_positive("sky_adu", sky_adu, allow_zero=True)
    if not 0.0 < saturation_adu <= np.iinfo(np.uint16).max:
        raise ConfigError(f"saturation_adu = {saturation_adu!r} is out of range: allowed 0 to 65535")
    for name, value in (("n_galaxies", n_galaxies), ("n_cosmic_rays", n_cosmic_rays),
                        ("n_hot_columns", n_hot_columns)):
        if int(value) < 0:
            raise ConfigError(f"{name} = {value!r} is out of range: allowed >= 0")
    model, truth = render_stars(stars, wcs, shape=shape, epoch_yr=epoch_yr, fwhm_px=fwhm_px,
                                ellipticity=ellipticity, psf_angle_deg=psf_angle_deg,
                                psf_beta=psf_beta, exptime_s=exptime_s,
                                zero_point_mag=zero_point_mag, supersample=supersample)
    ny, nx = model.shape
    galaxies = _add_galaxies(model, int(n_galaxies), rng=rng, fwhm_px=fwhm_px, exptime_s=exptime_s,
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
    hot_cols = rng.choice(nx, size=min(int(n_hot_columns), nx), replace=False)
    partial = rng.uniform(0.0, 1.0, hot_cols.size) < HOT_COLUMN_PARTIAL_FRACTION
    hot_start = rng.integers(0, max(ny // 2, 1), hot_cols.size) * partial
    hot_level = rng.uniform(*HOT_COLUMN_ADU, hot_cols.size)
    for col, start, level in zip(hot_cols, hot_start, hot_level, strict=True):
        model[start:, col] += np.float32(level)
    model *= np.float32(gain_e_per_adu)
    cr_rows, cr_cols, cr_e = _cosmic_ray_pixels((ny, nx), int(n_cosmic_rays), rng=rng)
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


# ==========================================================================
# 4. The approximate header
# ==========================================================================


def approximate_header(truth_wcs: WCS, *, style: HeaderStyle = "wcs",
                       pointing_error_arcmin: float = DEFAULT_POINTING_ERROR_ARCMIN,
                       pointing_pa_deg: float | None = None,
                       rotation_error_deg: float = DEFAULT_ROTATION_ERROR_DEG,
                       scale_error_frac: float = DEFAULT_SCALE_ERROR_FRAC,
                       rng: np.random.Generator | None = None,
                       radec_format: RaDecFormat = "both",
                       shape: tuple[int, int] | None = None, epoch_yr: float = DEFAULT_EPOCH_YR,
                       exptime_s: float = DEFAULT_EXPTIME_S,
                       gain_e_per_adu: float = DEFAULT_GAIN_E_PER_ADU,
                       read_noise_e: float = DEFAULT_READ_NOISE_E,
                       saturation_adu: float = DEFAULT_SATURATION_ADU,
                       filter_name: str = DEFAULT_FILTER, object_name: str = "") -> fits.Header:
    """The header a telescope would write: an approximate pointing and the exposure keywords.

    The approximate centre is the truth sky position of the frame centre moved by
    ``pointing_error_arcmin`` towards ``pointing_pa_deg``; the approximate rotation and
    scale are the truth values (from the CD matrix at CRPIX) plus ``rotation_error_deg``
    and times ``1 + scale_error_frac``.  The errors are applied exactly as given.

    Parameters
    ----------
    truth_wcs
        The truth WCS (with ``pixel_shape``, or give ``shape``).
    style
        ``"wcs"``: a plain TAN WCS (CTYPE, CRVAL, CRPIX at the frame centre, CD);
        ``"keywords"``: only the pointing keywords of ``radec_format``, plus PIXSCALE,
        XPIXSZ, YPIXSZ and FOCALLEN.
    pointing_error_arcmin
        Distance between the approximate and the true centre, arcmin.
    pointing_pa_deg
        Direction of the pointing error, degrees east of north; None: drawn from ``rng``.
    rotation_error_deg
        Added to the rotation (position angle of +j), degrees.
    scale_error_frac
        Fractional plate-scale error.
    rng
        Random generator; needed only when ``pointing_pa_deg`` is None.
    radec_format
        For ``style="keywords"``: ``"sexagesimal"`` (RA = 'HH:MM:SS.ss',
        DEC = '+DD:MM:SS.s'), ``"degrees"`` (RA, DEC as numbers), ``"objctra"``
        (OBJCTRA = 'HH MM SS.ss', OBJCTDEC = '+DD MM SS.s') or ``"both"`` (RA/DEC in
        degrees and OBJCTRA/OBJCTDEC).
    shape
        Image shape (ny, nx); default from ``truth_wcs.pixel_shape``.
    epoch_yr
        Mid-exposure Julian epoch; DATE-OBS and MJD-OBS are the start,
        ``epoch_yr - EXPTIME / 2`` (UTC taken as TT: 69 s, negligible here).
    exptime_s, gain_e_per_adu, read_noise_e, saturation_adu
        EXPTIME (s), GAIN (e-/ADU), RDNOISE (e-), SATURATE (ADU).
    filter_name, object_name
        FILTER and OBJECT.

    Returns
    -------
    astropy.io.fits.Header
    """
    if style not in ("wcs", "keywords"):
        raise ConfigError(f"style = {style!r} is not one of ['wcs', 'keywords']")
    if radec_format not in ("both", "sexagesimal", "degrees", "objctra"):
        raise ConfigError(f"radec_format = {radec_format!r} is not one of "
                          "['both', 'sexagesimal', 'degrees', 'objctra']")
    if pointing_pa_deg is None:
        if rng is None:
            raise ConfigError("pointing_pa_deg is None: give a direction or an rng to draw it")
        pointing_pa_deg = float(rng.uniform(0.0, 360.0))
    ny, nx = _resolve_shape(shape, truth_wcs)
    ra_c, dec_c = truth_wcs.pixel_to_world_values((nx - 1) / 2.0, (ny - 1) / 2.0)
    ra_a, dec_a = _offset_positions(float(ra_c), float(dec_c),
                                    np.radians(pointing_error_arcmin / 60.0),
                                    np.radians(pointing_pa_deg))
    ra_a, dec_a = float(ra_a), float(dec_a)
    scale, rotation, parity = cd_to_scale_rotation_parity(truth_wcs.pixel_scale_matrix)
    scale_a = scale * (1.0 + scale_error_frac)
    rotation_a = (rotation + rotation_error_deg) % 360.0

    header = fits.Header()
    if style == "wcs":
        cd = cd_matrix(scale_a, rotation_a, parity)
        header["WCSAXES"] = (2, "number of WCS axes")
        header["CTYPE1"] = ("RA---TAN", "approximate pointing: gnomonic")
        header["CTYPE2"] = ("DEC--TAN", "approximate pointing: gnomonic")
        header["CUNIT1"] = ("deg", "unit of CRVAL1 and CD1_*")
        header["CUNIT2"] = ("deg", "unit of CRVAL2 and CD2_*")
        header["CRVAL1"] = (ra_a, "[deg] RA at CRPIX")
        header["CRVAL2"] = (dec_a, "[deg] Dec at CRPIX")
        header["CRPIX1"] = ((nx - 1) / 2.0 + 1.0, "reference pixel, 1-based (frame centre)")
        header["CRPIX2"] = ((ny - 1) / 2.0 + 1.0, "reference pixel, 1-based (frame centre)")
        for (r, c), name in np.ndenumerate(np.array([["CD1_1", "CD1_2"], ["CD2_1", "CD2_2"]])):
            header[str(name)] = (float(cd[r, c]), "[deg/px] linear transformation matrix")
        header["RADESYS"] = ("ICRS", "reference frame")
        header["EQUINOX"] = (2000.0, "equinox of the coordinates")
    else:
        ra_angle, dec_angle = Angle(ra_a, u.deg), Angle(dec_a, u.deg)
        if radec_format in ("sexagesimal",):
            header["RA"] = (ra_angle.to_string(unit=u.hourangle, sep=":", precision=2, pad=True),
                            "telescope right ascension (J2000)")
            header["DEC"] = (dec_angle.to_string(unit=u.deg, sep=":", precision=1, pad=True,
                                                 alwayssign=True), "telescope declination (J2000)")
        if radec_format in ("degrees", "both"):
            header["RA"] = (ra_a, "[deg] telescope right ascension (J2000)")
            header["DEC"] = (dec_a, "[deg] telescope declination (J2000)")
        if radec_format in ("objctra", "both"):
            header["OBJCTRA"] = (ra_angle.to_string(unit=u.hourangle, sep=" ", precision=2, pad=True),
                                 "object right ascension (J2000)")
            header["OBJCTDEC"] = (dec_angle.to_string(unit=u.deg, sep=" ", precision=1, pad=True,
                                                      alwayssign=True), "object declination (J2000)")
        header["EQUINOX"] = (2000.0, "equinox of the coordinates")
        header["PIXSCALE"] = (round(scale_a, 4), "[arcsec/px] plate scale")
        header["XPIXSZ"] = (CONDOR_PIXEL_SIZE_UM, "[um] pixel width")
        header["YPIXSZ"] = (CONDOR_PIXEL_SIZE_UM, "[um] pixel height")
        focal_mm = CONDOR_PIXEL_SIZE_UM * 1e-3 / math.radians(scale_a / 3600.0)
        header["FOCALLEN"] = (round(focal_mm, 1), "[mm] focal length")

    mjd_start = J2000_MJD + (epoch_yr - 2000.0) * DAYS_PER_JULIAN_YEAR - exptime_s / 2.0 / SECONDS_PER_DAY
    header["DATE-OBS"] = (Time(mjd_start, format="mjd", scale="utc").isot, "UTC start of exposure")
    header["MJD-OBS"] = (mjd_start, "[d] MJD at start of exposure")
    header["EXPTIME"] = (float(exptime_s), "[s] exposure time")
    header["GAIN"] = (float(gain_e_per_adu), "[e-/ADU] detector gain")
    header["RDNOISE"] = (float(read_noise_e), "[e-] read noise")
    header["SATURATE"] = (float(saturation_adu), "[ADU] saturation level")
    header["BUNIT"] = ("adu", "pixel unit")
    header["TELESCOP"] = (TELESCOPE_NAME, "telescope")
    header["INSTRUME"] = (INSTRUMENT_NAME, "camera")
    header["FILTER"] = (filter_name, "filter")
    header["IMAGETYP"] = ("Light Frame", "type of image")
    if object_name:
        header["OBJECT"] = (object_name, "target")
    header["SIMULATE"] = (True, "synthetic exposure made by astrodask.simulate")
    return header


# ==========================================================================
# 5. Files
# ==========================================================================


@dataclass(frozen=True)
class ExposurePaths:
    """The files written by :func:`write_exposure`."""

    image: Path  #: ``X.fits.fz`` (image in HDU 1) or ``X.fits`` (image in the primary HDU)
    truth_wcs: Path  #: ``X.truth.wcs.fits``: the exact truth WCS in the primary header
    truth_table: Path | None  #: ``X.truth.ecsv`` when a truth table was given


def write_exposure(path: str | Path, image: np.ndarray, header: fits.Header, *, truth_wcs: WCS,
                   truth_table: Table | None = None, compress: bool = True,
                   overwrite: bool = True) -> ExposurePaths:
    """Write a simulated exposure and, beside it, its exact truth.

    Parameters
    ----------
    path
        Where to write; the exposure name is ``path``'s file name without its FITS
        suffixes, and the image goes to ``<name>.fits.fz`` (``compress=True``: RICE_1
        tile-compressed, image in HDU 1) or ``<name>.fits`` (image in the primary HDU).
    image
        uint16 (ny, nx) pixels.
    header
        Keywords for the image HDU (e.g. from :func:`approximate_header`).
    truth_wcs
        Written to ``<name>.truth.wcs.fits`` with ``to_header(relax=True)`` (TPV PV
        keywords included) plus IMAGEW/IMAGEH; re-read and checked to give the same
        pixel positions to TRUTH_WCS_TOLERANCE_PX.
    truth_table
        Written to ``<name>.truth.ecsv`` when given.
    compress
        Tile-compress the image.
    overwrite
        Replace existing files.

    Returns
    -------
    ExposurePaths
    """
    path = Path(path)
    image = np.asarray(image)
    if image.ndim != 2 or image.dtype != np.uint16:
        raise ConfigError(f"image must be a 2-D uint16 array, got {image.dtype} with shape {image.shape}")
    base = path.parent / exposure_name(path)
    base.parent.mkdir(parents=True, exist_ok=True)
    image_path = base.with_name(base.name + (".fits.fz" if compress else ".fits"))
    hdr = header.copy()
    for key in ("SIMPLE", "XTENSION", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND", "BZERO", "BSCALE"):
        hdr.remove(key, ignore_missing=True)
    if compress:
        hdus = fits.HDUList([fits.PrimaryHDU(),
                             fits.CompImageHDU(data=image, header=hdr, compression_type="RICE_1")])
    else:
        hdus = fits.HDUList([fits.PrimaryHDU(data=image, header=hdr)])
    hdus.writeto(image_path, overwrite=overwrite)

    wcs_path = base.with_name(base.name + ".truth.wcs.fits")
    ny, nx = image.shape
    wcs_header = truth_wcs.to_header(relax=True)
    wcs_header["IMAGEW"] = (nx, "[px] image width")
    wcs_header["IMAGEH"] = (ny, "[px] image height")
    wcs_header["COMMENT"] = "Exact truth WCS of a simulated exposure (astrodask.simulate)"
    fits.PrimaryHDU(header=wcs_header).writeto(wcs_path, overwrite=overwrite)
    _check_truth_wcs(truth_wcs, read_truth_wcs(wcs_path), (ny, nx), wcs_path)

    table_path = None
    if truth_table is not None:
        table_path = base.with_name(base.name + ".truth.ecsv")
        truth_table.write(table_path, format="ascii.ecsv", overwrite=overwrite)
    log.debug("wrote %s, %s, %s", image_path, wcs_path, table_path)
    return ExposurePaths(image=image_path, truth_wcs=wcs_path, truth_table=table_path)


def _check_truth_wcs(written: WCS, reread: WCS, shape: tuple[int, int], path: Path) -> None:
    """Raise if the re-read truth WCS does not give the same pixel positions."""
    ny, nx = shape
    gi, gj = np.meshgrid(np.linspace(0, nx - 1, 7), np.linspace(0, ny - 1, 5))
    ra, dec = written.pixel_to_world_values(gi.ravel(), gj.ravel())
    i2, j2 = reread.world_to_pixel_values(ra, dec)
    worst = float(np.nanmax(np.hypot(i2 - gi.ravel(), j2 - gj.ravel())))
    if not worst <= TRUTH_WCS_TOLERANCE_PX:
        raise RuntimeError(f"truth WCS written to {path} does not round-trip: pixel positions differ "
                           f"by up to {worst:.3g} px (tolerance {TRUTH_WCS_TOLERANCE_PX} px); "
                           "TPV PV keywords were probably lost")


def read_truth_wcs(path: str | Path) -> WCS:
    """Read the exact truth WCS of a simulated exposure.

    Parameters
    ----------
    path
        The ``X.truth.wcs.fits`` file, or the exposure ``X.fits.fz``/``X.fits`` beside it.

    Returns
    -------
    astropy.wcs.WCS
        With ``pixel_shape`` from IMAGEW/IMAGEH.
    """
    path = Path(path)
    if not path.name.endswith(".truth.wcs.fits"):
        path = path.parent / (exposure_name(path) + ".truth.wcs.fits")
    if not path.is_file():
        raise InputFileError(f"truth WCS file {path} not found; write it with "
                             "astrodask.simulate.write_exposure(..., truth_wcs=...)")
    header = fits.getheader(path, 0)
    wcs_header = header.copy()
    for key in ("NAXIS", "NAXIS1", "NAXIS2"):  # a dataless HDU says NAXIS = 0: not the image's
        wcs_header.remove(key, ignore_missing=True)
    wcs = WCS(wcs_header, relax=True)
    if "IMAGEW" in header and "IMAGEH" in header:
        wcs.pixel_shape = (int(header["IMAGEW"]), int(header["IMAGEH"]))
    return wcs


# ==========================================================================
# 6. A whole field, and the demo
# ==========================================================================


@dataclass(frozen=True)
class SimulatedField:
    """Everything :func:`simulate_field` made.

    Attributes
    ----------
    paths
        The exposure and truth files.
    catalog_path
        The reference catalog (Gaia archive columns, ECSV).
    truth_wcs
        The exact WCS.
    header
        The image header (approximate pointing).
    truth
        The truth table (also in ``paths.truth_table``).
    """

    paths: ExposurePaths
    catalog_path: Path
    truth_wcs: WCS
    header: fits.Header
    truth: Table

    @property
    def image_path(self) -> Path:
        """The exposure file."""
        return self.paths.image


def simulate_field(out_dir: str | Path, name: str, *, ra_deg: float, dec_deg: float,
                   rng: np.random.Generator, shape: tuple[int, int] = CONDOR_SHAPE,
                   scale_arcsec: float = CONDOR_SCALE_ARCSEC, rotation_deg: float = 0.0,
                   parity: int = 1, distortion_px: float = DEFAULT_DISTORTION_PX,
                   epoch_yr: float = DEFAULT_EPOCH_YR, catalog: Table | None = None,
                   density_per_deg2: float = DEFAULT_STAR_DENSITY_PER_DEG2,
                   mag_limit: float = DEFAULT_MAG_LIMIT,
                   render_depth_mag: float = DEFAULT_EXTRA_RENDER_DEPTH_MAG,
                   catalog_margin_deg: float = DEFAULT_CATALOG_MARGIN_DEG,
                   galaxy_density_per_deg2: float = DEFAULT_GALAXY_DENSITY_PER_DEG2,
                   cosmic_ray_rate_per_cm2_s: float = COSMIC_RAY_RATE_PER_CM2_S,
                   n_hot_columns: int | None = None, header_style: HeaderStyle = "wcs",
                   pointing_error_arcmin: float = DEFAULT_POINTING_ERROR_ARCMIN,
                   rotation_error_deg: float = DEFAULT_ROTATION_ERROR_DEG,
                   scale_error_frac: float = DEFAULT_SCALE_ERROR_FRAC, compress: bool = True,
                   render_options: Mapping[str, Any] | None = None) -> SimulatedField:
    """Simulate one complete exposure of a field and write it with its catalog and truth.

    Writes ``<name>.fits.fz`` (or ``.fits``), ``<name>_gaia.ecsv`` (the reference
    catalog: stars to ``mag_limit`` over the footprint plus ``catalog_margin_deg``),
    ``<name>.truth.wcs.fits`` and ``<name>.truth.ecsv`` into ``out_dir``.

    Parameters
    ----------
    out_dir, name
        Output folder and exposure name.
    ra_deg, dec_deg
        Centre of the frame, degrees.
    rng
        Random generator.
    shape, scale_arcsec, rotation_deg, parity, distortion_px
        The truth WCS, see :func:`condor_wcs`.
    epoch_yr
        Julian epoch of the exposure.
    catalog
        Render this catalog (Gaia archive column names) instead of a synthetic one; it
        is written as the reference catalog unchanged.
    density_per_deg2, mag_limit
        Synthetic catalog: stars brighter than ``mag_limit`` per square degree.
    render_depth_mag
        Synthetic stars down to ``mag_limit + render_depth_mag`` are rendered (the image
        is deeper than the catalog); only those to ``mag_limit`` are written.
    catalog_margin_deg
        Margin of the catalog around the footprint, degrees.
    galaxy_density_per_deg2
        Galaxies per square degree.
    cosmic_ray_rate_per_cm2_s
        Cosmic rays per cm^2 of sensor (CONDOR_PIXEL_SIZE_UM pixels) per second.
    n_hot_columns
        Hot columns; default scaled from HOT_COLUMNS_PER_CONDOR_FRAME by the width.
    header_style, pointing_error_arcmin, rotation_error_deg, scale_error_frac
        The approximate header, see :func:`approximate_header` (error direction from ``rng``).
    compress
        Write ``.fits.fz`` (RICE_1) rather than ``.fits``.
    render_options
        Extra keyword arguments of :func:`render_exposure` (PSF, noise, zero point...).

    Returns
    -------
    SimulatedField
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    options = dict(render_options or {})
    ny, nx = _check_shape(shape)
    wcs = condor_wcs(ra_deg, dec_deg, shape=shape, scale_arcsec=scale_arcsec,
                     rotation_deg=rotation_deg, parity=parity, distortion_px=distortion_px)
    ra_c, dec_c = (float(v) for v in wcs.pixel_to_world_values((nx - 1) / 2.0, (ny - 1) / 2.0))
    if catalog is None:
        # the footprint in the tangent plane at the centre, north-aligned, plus the margin
        corners_i = np.array([-0.5, nx - 0.5, -0.5, nx - 0.5])
        corners_j = np.array([-0.5, -0.5, ny - 0.5, ny - 0.5])
        c_ra, c_dec = wcs.pixel_to_world_values(corners_i, corners_j)
        xi, eta = tangent_plane(c_ra, c_dec, (ra_c, dec_c))
        width = 2.0 * (float(np.abs(xi).max()) + catalog_margin_deg)
        height = 2.0 * (float(np.abs(eta).max()) + catalog_margin_deg)
        slope = DEFAULT_COUNT_SLOPE_DEX_PER_MAG
        render_limit = mag_limit + render_depth_mag
        stars = synthetic_gaia_catalog(ra_c, dec_c, rng=rng, width_deg=width, height_deg=height,
                                       density_per_deg2=density_per_deg2 * 10.0 ** (slope * render_depth_mag),
                                       mag_limit=render_limit, count_slope_dex_per_mag=slope)
        reference = stars[np.asarray(stars["phot_g_mean_mag"]) <= mag_limit]
        reference.meta["mag_limit"] = float(mag_limit)
        reference.meta["density_per_deg2"] = float(density_per_deg2)
    else:
        stars = reference = catalog

    area_deg2 = nx * ny * (scale_arcsec / 3600.0) ** 2
    area_cm2 = nx * ny * (CONDOR_PIXEL_SIZE_UM * 1e-4) ** 2
    exptime_s = float(options.get("exptime_s", DEFAULT_EXPTIME_S))
    n_galaxies = int(rng.poisson(galaxy_density_per_deg2 * area_deg2))
    n_cosmic_rays = int(rng.poisson(cosmic_ray_rate_per_cm2_s * area_cm2 * exptime_s))
    if n_hot_columns is None:
        n_hot_columns = int(round(HOT_COLUMNS_PER_CONDOR_FRAME * nx / CONDOR_SHAPE[1]))
    image, truth = render_exposure(stars, wcs, rng=rng, shape=shape, epoch_yr=epoch_yr,
                                   n_galaxies=n_galaxies, n_cosmic_rays=n_cosmic_rays,
                                   n_hot_columns=n_hot_columns, **options)
    header_keys = ("gain_e_per_adu", "read_noise_e", "saturation_adu")
    header = approximate_header(wcs, style=header_style, pointing_error_arcmin=pointing_error_arcmin,
                                rotation_error_deg=rotation_error_deg, scale_error_frac=scale_error_frac,
                                rng=rng, epoch_yr=epoch_yr, exptime_s=exptime_s, object_name=name,
                                **{k: options[k] for k in header_keys if k in options})
    paths = write_exposure(out_dir / name, image, header, truth_wcs=wcs, truth_table=truth,
                           compress=compress)
    catalog_path = out_dir / f"{name}_gaia.ecsv"
    reference.write(catalog_path, format="ascii.ecsv", overwrite=True)
    log.info("simulated %s: %d stars rendered, %d in the catalog, %d galaxies, %d cosmic rays",
             paths.image, len(truth), len(reference), n_galaxies, n_cosmic_rays)
    return SimulatedField(paths=paths, catalog_path=catalog_path, truth_wcs=wcs, header=header,
                          truth=truth)


#: Margin of the demo's Gaia stars around its footprint, deg: wide enough that the cone they
#: cover holds the footprint's enclosing cone plus gaia.margin_deg, so that the demo's tile
#: cache (imported from them) is complete for the solve.
DEMO_CATALOG_MARGIN_DEG = 0.45


def make_demo(out_dir: str | Path, *, seed: int = DEMO_SEED) -> SimulatedField:
    """The deterministic demo: a Condor quarter frame of a high-latitude field.

    2394 x 1597 px at 0.85"/px centred on (150.1, +2.2) deg, epoch 2024.3, realistic
    density, galaxies, cosmic rays and a hot column, an approximate TAN header 3 arcmin
    off. Writes ``demo.fits.fz``, ``demo_gaia.ecsv`` (footprint + :data:`DEMO_CATALOG_MARGIN_DEG`),
    ``demo.truth.wcs.fits`` and ``demo.truth.ecsv`` into ``out_dir``; takes a few seconds.

    Parameters
    ----------
    out_dir
        Output folder.
    seed
        Seed of the random generator; the same seed gives the same files.
    """
    return simulate_field(out_dir, "demo", ra_deg=DEMO_RA_DEG, dec_deg=DEMO_DEC_DEG,
                          rng=np.random.default_rng(seed), shape=DEMO_SHAPE,
                          catalog_margin_deg=DEMO_CATALOG_MARGIN_DEG,
                          rotation_deg=DEMO_ROTATION_DEG, distortion_px=DEMO_DISTORTION_PX,
                          epoch_yr=DEMO_EPOCH_YR)


# ==========================================================================
# Validation helpers
# ==========================================================================


def _check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not (math.isfinite(value) and ok):
        raise ConfigError(f"{name} = {value!r} is out of range: allowed {'>= 0' if allow_zero else '> 0'}")


def _check_shape(shape: tuple[int, int]) -> tuple[int, int]:
    if len(shape) != 2 or min(int(shape[0]), int(shape[1])) < 1:
        raise ConfigError(f"shape = {shape!r} must be (ny, nx) with positive sizes")
    return int(shape[0]), int(shape[1])


def _resolve_shape(shape: tuple[int, int] | None, wcs: WCS) -> tuple[int, int]:
    if shape is not None:
        return _check_shape(shape)
    if wcs.pixel_shape is None:
        raise ConfigError("shape is None and the WCS has no pixel_shape: give shape=(ny, nx)")
    nx, ny = wcs.pixel_shape
    return _check_shape((ny, nx))
