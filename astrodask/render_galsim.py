"""A second, independent exposure renderer built on GalSim, for tests and benchmarks only.

:mod:`astrodask.simulate` is our own simulator; tuning the solver against it alone would
tune it to its own assumptions. This module renders exposures with other models, drawn by
GalSim (the field's standard image simulator): a TAN + **SIP** truth (not TPV), Moffat or
Kolmogorov PSFs with ellipticity, CCD noise (``galsim.CCDNoise``), bleed trails, a
photographic characteristic curve, GalSim galaxies, cosmic rays, hot columns and pixels,
a satellite trail, real Gaia crowding, Gaia DR2-like catalogs without proper motions and
DSS plate-solution headers. GalSim is a test extra (``pip install 'astrodask[galsim]'``),
imported only inside the functions that draw.

One exposure is a frozen :class:`Scene`; :func:`render_scene` writes its files
(:class:`SceneFiles`): the image (``.fits.fz``, RICE, image in HDU 1), a Gaia-like
catalog that :func:`astrodask.reference.catalog.read_catalog` reads, the exact truth WCS (the file
:func:`astrodask.simulate.read_truth_wcs` reads) and a per-star truth table. The named
cases are in :data:`CASES`; :func:`case_scene` gives one at its ``test`` or ``bench`` size.

Conventions: pixels 0-based, ``i`` the column, ``j`` the row, pixel ``(i, j)`` centred on
integer coordinates (GalSim images are made with ``xmin = ymin = 0``); only FITS CRPIX is
1-based. ``rotation_deg``/``parity`` as in :mod:`astrodask.wcsutil`. Proper motions move
stars along great circles (:func:`astrodask.reference.catalog.propagate_to_epoch`); parallax is not
applied to the truth (the solver neglects it too).

DSS plate solutions (``header_style="dss"``) follow wcslib's reading of the DSS keywords
(checked numerically against astropy on a real DSS header, see :func:`dss_sky`): plate
coordinates in mm ``X = (PPO3 - XPIXELSZ * (CNPIX1 + p1 - 0.5)) / 1000``,
``Y = (YPIXELSZ * (CNPIX2 + p2 - 0.5) - PPO6) / 1000`` with ``p1, p2`` 1-based pixels,
standard coordinates ``xi, eta`` (arcsec) from the AMDX/AMDY polynomials, gnomonic about
the plate centre PLTRA/PLTDEC. Every written DSS header is read back with
``astropy.wcs.WCS`` and checked against the model it encodes.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time
from astropy.wcs import WCS, FITSFixedWarning, Sip

from astrodask.errors import ConfigError
from astrodask.reference.catalog import propagate_to_epoch, read_catalog
from astrodask.reference.healpix import healpix_nested_index
from astrodask.wcsutil import cd_matrix

if TYPE_CHECKING:  # pragma: no cover
    import galsim

log = logging.getLogger(__name__)

__all__ = ["CASES", "Scene", "SceneFiles", "case_scene", "dss_header", "dss_sky", "render_scene",
           "truth_wcs"]

# --------------------------------------------------------------------------
# Named defaults
# --------------------------------------------------------------------------

#: Condor frame (ny, nx), pixels, and plate scale, arcsec per pixel.
CONDOR_SHAPE: tuple[int, int] = (6388, 9576)
CONDOR_SCALE_ARCSEC: float = 0.85
#: Default largest SIP displacement at the frame corners, pixels.
DEFAULT_SIP_DISTORTION_PX: float = 3.0
#: SIP pattern in units of the half-diagonal R: {(p, q): coefficient of u^p v^q}, u = x/R, v = y/R.
#: A radial cubic plus an asymmetric quadratic; scaled together to ``sip_distortion_px``.
SIP_PATTERN_A: dict[tuple[int, int], float] = {(2, 0): 0.25, (1, 1): -0.15, (0, 2): 0.10, (3, 0): 1.0, (1, 2): 1.0}
SIP_PATTERN_B: dict[tuple[int, int], float] = {(0, 2): 0.20, (1, 1): 0.12, (2, 0): -0.08, (0, 3): 1.0, (2, 1): 1.0}
#: Default exposure start (ISO, UTC) of a CCD scene.
DEFAULT_DATE_OBS: str = "2024-10-15T04:30:00"
#: Default exposure time, seconds.
DEFAULT_EXPTIME_S: float = 60.0
#: Default star density brighter than ``faint_mag``, per square degree.
DEFAULT_STAR_DENSITY_PER_DEG2: float = 3000.0
#: Default bright and faint limits of the catalog, G mag.
DEFAULT_BRIGHT_MAG: float = 7.0
DEFAULT_FAINT_MAG: float = 20.0
#: Stars this much fainter than the catalog limit are rendered too (the sky is deeper), mag.
DEFAULT_EXTRA_DEPTH_MAG: float = 1.0
#: Slope of the luminosity function dN/dm ~ 10**(slope m), dex per mag.
DEFAULT_LF_SLOPE: float = 0.3
#: Proper-motion dispersion per axis of the field stars, mas/yr.
DEFAULT_PM_SIGMA_MASYR: float = 4.0
#: Fraction of fast (nearby) stars and their proper-motion range (log-uniform), mas/yr.
FAST_STAR_FRACTION: float = 0.03
FAST_PM_RANGE_MASYR: tuple[float, float] = (20.0, 300.0)
#: Catalog margin around the frame's enclosing circle, degrees (gaia.margin_deg is 0.2).
DEFAULT_CATALOG_MARGIN_DEG: float = 0.3
#: Catalog releases: reference epoch (Julian yr) and scaling of the position errors.
RELEASE_EPOCH_YR: dict[str, float] = {"dr3": 2016.0, "dr2": 2015.5}
RELEASE_ERROR_FACTOR: dict[str, float] = {"dr3": 1.0, "dr2": 2.5}
#: Gaia DR3-like position error sigma(G) = floor + slope * 10**(0.4 (G - 20)), mas.
POSITION_ERROR_FLOOR_MAS: float = 0.02
POSITION_ERROR_AT_G20_MAS: float = 0.5
#: Proper-motion errors relative to the position errors, (mas/yr) / mas.
PM_ERROR_RATIO: float = 1.2
#: Default PSF: Moffat beta, FWHM (pixels), distortion ellipticity and its angle (deg).
DEFAULT_MOFFAT_BETA: float = 2.5
DEFAULT_FWHM_PX: float = 3.0
#: Moffat beta that mimics Kolmogorov wings when sizing stamps.
KOLMOGOROV_EQUIVALENT_BETA: float = 11.0 / 6.0
#: Default photometric zero point: the G magnitude giving 1 ADU per second.
DEFAULT_ZERO_POINT_MAG: float = 22.0
#: Default sky (ADU per pixel per exposure of DEFAULT_EXPTIME_S), read noise (e-), gain (e-/ADU).
DEFAULT_SKY_ADU: float = 300.0
DEFAULT_READ_NOISE_E: float = 3.0
DEFAULT_GAIN_E_PER_ADU: float = 1.0
#: Default bias level and saturation (the 16-bit ADC's usable top), ADU.
DEFAULT_BIAS_ADU: float = 500.0
DEFAULT_SATURATE_ADU: float = 60000.0
#: A stamp ends where the profile falls below this fraction of the sky noise per pixel.
STAMP_EDGE_NOISE_FRACTION: float = 0.2
#: Smallest and largest stamp half-sizes, pixels.
STAMP_HALF_RANGE_PX: tuple[int, int] = (5, 600)
#: Faint stars are added from a table of pixel-integrated PSF stamps at this many sub-pixel
#: phases per axis, blended bilinearly (their first moments are exact); brighter ones are
#: drawn one by one by GalSim.
PSF_TABLE_PHASES: int = 16
#: Rows of faint stars added at once (memory bound).
TABLE_CHUNK: int = 20000
#: Photographic defaults: fog and maximum density, gamma, the exposure giving log10(2)*gamma
#: above fog (in sky units), the scan value at the maximum density, grain noise (density).
PLATE_FOG_DENSITY: float = 0.15
PLATE_GAMMA: float = 1.6
PLATE_MAX_DENSITY: float = 2.6
PLATE_E0_SKY: float = 1.0
PLATE_SCAN_MAX_ADU: float = 32000.0
PLATE_GRAIN_SIGMA_DENSITY: float = 0.008
#: Photographic halo: flux fraction and FWHM relative to the core (a broad Moffat of HALO_BETA).
PLATE_HALO_FRACTION: float = 0.06
PLATE_HALO_FWHM_FACTOR: float = 8.0
PLATE_HALO_BETA: float = 1.6
#: Cosmic rays: fraction of single-pixel (or 2-pixel) events, track length range (px),
#: charge per pixel (ADU, uniform range).
CR_POINT_FRACTION: float = 0.4
CR_TRACK_LENGTH_PX: tuple[int, int] = (3, 12)
CR_LEVEL_ADU: tuple[float, float] = (300.0, 4000.0)
#: Hot columns: excess level range (ADU) and the fraction that start part-way up the frame.
HOT_COLUMN_LEVEL_ADU: tuple[float, float] = (150.0, 1500.0)
HOT_COLUMN_PARTIAL_FRACTION: float = 0.4
#: Hot pixels: level range, ADU.
HOT_PIXEL_LEVEL_ADU: tuple[float, float] = (1000.0, 30000.0)
#: Satellite trail: peak level, ADU, and profile width in units of the PSF FWHM.
SATELLITE_PEAK_ADU: float = 400.0
#: Galaxies: magnitude range (G-equivalent), count slope (dex/mag), half-light radius range
#: (arcsec, log-uniform), largest distortion ellipticity, and Sersic indices with weights.
GALAXY_MAG_RANGE: tuple[float, float] = (16.0, 22.5)
GALAXY_COUNT_SLOPE: float = 0.4
GALAXY_HLR_RANGE_ARCSEC: tuple[float, float] = (0.5, 4.0)
GALAXY_MAX_E: float = 0.6
GALAXY_SERSIC_N: tuple[float, ...] = (1.0, 1.0, 1.0, 2.0, 4.0)
#: Truncation of n = 4 profiles, half-light radii.
GALAXY_TRUNCATION_HLR: float = 8.0
#: Approximate-header defaults: pointing error (arcmin) and its position angle (deg),
#: rotation error (deg), fractional scale error.
DEFAULT_POINTING_ERROR_ARCMIN: float = 3.0
DEFAULT_POINTING_ERROR_PA_DEG: float = 40.0
DEFAULT_ROTATION_ERROR_DEG: float = 0.3
DEFAULT_SCALE_ERROR_FRAC: float = 0.002
#: DSS plate: scale (arcsec/mm, POSS-I), plate size (mm), offset of the cutout centre from the
#: plate centre (xi, eta, degrees), exposure for the EXPOSURE keyword (minutes).
DSS_PLATE_SCALE_ARCSEC_PER_MM: float = 67.2
DSS_PLATE_SIZE_MM: float = 355.0
DSS_CUTOUT_OFFSET_DEG: tuple[float, float] = (1.6, -1.1)
#: PPO1 = -PPO5: the scan orientation coefficient of real DSS headers (not used by wcslib).
DSS_PPO_ROTATION: float = 3069417.0
#: Grid points per axis of the AMDX/AMDY fit, and the largest fit or read-back error allowed, px.
DSS_FIT_GRID: int = 25
DSS_TOLERANCE_PX: float = 0.01
#: Truth WCS: tolerance of the iterative SIP inverse, pixels.
SIP_INVERSE_TOLERANCE_PX: float = 1e-9
#: Gaia source_id: bits below the level-12 HEALPix index.
GAIA_SOURCE_ID_SHIFT: int = 35
#: Per-pixel cosmic-ray rate of the messy case: 3000 per full Condor frame.
CONDOR_CR_PER_MPIX: float = 3000.0 / (CONDOR_SHAPE[0] * CONDOR_SHAPE[1] / 1e6)
#: Where the real sky data lives (``ASTRODASK_SHARED_DATA`` or ``../shared/data`` beside the repository).
SHARED_DATA_ENV: str = "ASTRODASK_SHARED_DATA"
NGC103_FIELD: str = "gaia_dr3_ngc103/ngc103_field_gaiadr3.csv"

ARCSEC_PER_DEG: float = 3600.0
MAS_PER_DEG: float = 3.6e6


# --------------------------------------------------------------------------
# The scene
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Scene:
    """One exposure to render; every field has a named default.

    Sizes are (ny, nx) pixels; densities are per square degree; magnitudes are Gaia G.
    Artefact rates are per megapixel so that a case keeps its character at any size.
    """

    name: str
    about: str = ""
    seed: int = 0
    shape: tuple[int, int] = CONDOR_SHAPE  #: (ny, nx) at the bench size
    test_shape: tuple[int, int] | None = None  #: (ny, nx) at the test size; None: bench only
    # truth WCS
    ra_deg: float = 150.0
    dec_deg: float = 20.0
    scale_arcsec: float = CONDOR_SCALE_ARCSEC
    rotation_deg: float = 0.0
    parity: int = 1
    sip_distortion_px: float = DEFAULT_SIP_DISTORTION_PX
    # time
    date_obs: str = DEFAULT_DATE_OBS  #: exposure start, ISO UTC (the truth epoch is mid-exposure)
    exptime_s: float = DEFAULT_EXPTIME_S
    # stars and catalog
    star_density_per_deg2: float = DEFAULT_STAR_DENSITY_PER_DEG2
    bright_mag: float = DEFAULT_BRIGHT_MAG
    faint_mag: float = DEFAULT_FAINT_MAG
    extra_depth_mag: float = DEFAULT_EXTRA_DEPTH_MAG
    lf_slope: float = DEFAULT_LF_SLOPE
    seed_catalog: str | None = None  #: a real catalog (read_catalog) whose pattern seeds the stars
    pm_sigma_masyr: float = DEFAULT_PM_SIGMA_MASYR
    catalog_release: Literal["dr3", "dr2"] = "dr3"
    catalog_margin_deg: float = DEFAULT_CATALOG_MARGIN_DEG
    # PSF
    psf_model: Literal["moffat", "kolmogorov"] = "moffat"
    fwhm_px: float = DEFAULT_FWHM_PX
    moffat_beta: float = DEFAULT_MOFFAT_BETA
    psf_e: float = 0.0  #: distortion ellipticity (a^2 - b^2) / (a^2 + b^2)
    psf_angle_deg: float = 0.0  #: major axis, counter-clockwise from +i
    # photometry and detector
    zero_point_mag: float = DEFAULT_ZERO_POINT_MAG
    sky_adu: float = DEFAULT_SKY_ADU
    read_noise_e: float = DEFAULT_READ_NOISE_E
    gain_e_per_adu: float = DEFAULT_GAIN_E_PER_ADU
    bias_adu: float = DEFAULT_BIAS_ADU
    saturate_adu: float = DEFAULT_SATURATE_ADU
    bleed: bool = True
    # photographic response
    photographic: bool = False
    plate_fog_density: float = PLATE_FOG_DENSITY
    plate_gamma: float = PLATE_GAMMA
    plate_max_density: float = PLATE_MAX_DENSITY
    plate_halo_fraction: float = PLATE_HALO_FRACTION
    # artefacts
    cosmic_rays_per_mpix: float = 0.0
    hot_columns: int = 0
    hot_pixels_per_mpix: float = 0.0
    satellite_trail: bool = False
    galaxy_density_per_deg2: float = 0.0
    # header
    header_style: Literal["tan", "dss"] = "tan"
    pointing_error_arcmin: float = DEFAULT_POINTING_ERROR_ARCMIN
    pointing_error_pa_deg: float = DEFAULT_POINTING_ERROR_PA_DEG
    rotation_error_deg: float = DEFAULT_ROTATION_ERROR_DEG
    scale_error_frac: float = DEFAULT_SCALE_ERROR_FRAC

    def __post_init__(self) -> None:
        ny, nx = self.shape
        if ny < 16 or nx < 16:
            raise ConfigError(f"scene {self.name}: shape {self.shape} is too small (at least 16 x 16 px)")
        if self.parity not in (1, -1):
            raise ConfigError(f"scene {self.name}: parity must be +1 or -1, got {self.parity}")
        for key in ("scale_arcsec", "fwhm_px", "exptime_s", "gain_e_per_adu", "saturate_adu"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"scene {self.name}: {key} must be positive, got {getattr(self, key)}")
        if self.catalog_release not in RELEASE_EPOCH_YR:
            raise ConfigError(f"scene {self.name}: catalog_release must be one of {list(RELEASE_EPOCH_YR)}")
        if self.header_style not in ("tan", "dss"):
            raise ConfigError(f"scene {self.name}: header_style must be 'tan' or 'dss'")
        if self.psf_model not in ("moffat", "kolmogorov"):
            raise ConfigError(f"scene {self.name}: psf_model must be 'moffat' or 'kolmogorov'")
        if not 0.0 <= self.psf_e < 1.0:
            raise ConfigError(f"scene {self.name}: psf_e must be in [0, 1), got {self.psf_e}")

    @property
    def epoch_yr(self) -> float:
        """Mid-exposure Julian epoch of the truth, years."""
        # TT, not UTC: no leap-second table before 1960 (a 1951 plate); 32 s make no difference here
        return float(Time(self.date_obs, scale="tt").jyear + self.exptime_s / 2.0 / 86400.0 / 365.25)

    @property
    def area_deg2(self) -> float:
        """Sky area of the frame, square degrees."""
        ny, nx = self.shape
        return nx * ny * (self.scale_arcsec / ARCSEC_PER_DEG) ** 2


@dataclass(frozen=True)
class SceneFiles:
    """The files :func:`render_scene` writes."""

    image: Path  #: ``<name>.fits.fz``: RICE tile-compressed, image in HDU 1
    catalog: Path  #: ``<name>_gaia.ecsv``: Gaia archive columns, read by astrodask.reference.catalog.read_catalog
    truth_wcs: Path  #: ``<name>.truth.wcs.fits``: the exact TAN-SIP truth (astrodask.simulate.read_truth_wcs)
    truth_table: Path  #: ``<name>.truth.ecsv``: per-star truth
    render_s: float = 0.0  #: wall time of the render, seconds


def _galsim() -> Any:
    """Import GalSim, or say how to install it."""
    try:
        import galsim
    except ImportError as err:
        raise ImportError("astrodask.render_galsim needs GalSim: pip install 'astrodask[galsim]'") from err
    return galsim


# --------------------------------------------------------------------------
# Truth WCS and the approximate model
# --------------------------------------------------------------------------


def _sip_arrays(shape: tuple[int, int], distortion_px: float) -> tuple[np.ndarray, np.ndarray]:
    """SIP A and B (order 3) scaled so the largest corner displacement is ``distortion_px``."""
    ny, nx = shape
    radius = 0.5 * math.hypot(nx - 1, ny - 1)
    a, b = np.zeros((4, 4)), np.zeros((4, 4))
    for (p, q), c in SIP_PATTERN_A.items():
        a[p, q] = c / radius ** (p + q)
    for (p, q), c in SIP_PATTERN_B.items():
        b[p, q] = c / radius ** (p + q)
    u = np.array([-1, 1, -1, 1]) * (nx - 1) / 2.0
    v = np.array([-1, -1, 1, 1]) * (ny - 1) / 2.0
    du = sum(a[p, q] * u ** p * v ** q for p in range(4) for q in range(4))
    dv = sum(b[p, q] * u ** p * v ** q for p in range(4) for q in range(4))
    largest = float(np.max(np.hypot(du, dv)))
    k = distortion_px / largest if largest > 0 else 0.0
    return a * k, b * k


def truth_wcs(scene: Scene) -> WCS:
    """The exact truth: TAN with an order-3 SIP distortion, tangent point at the frame centre."""
    return _tan_sip(scene, ra_deg=scene.ra_deg, dec_deg=scene.dec_deg, scale_arcsec=scene.scale_arcsec,
                    rotation_deg=scene.rotation_deg, sip=True)


def _tan_sip(scene: Scene, *, ra_deg: float, dec_deg: float, scale_arcsec: float, rotation_deg: float,
             sip: bool) -> WCS:
    ny, nx = scene.shape
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"] if sip else ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra_deg % 360.0, dec_deg]
    wcs.wcs.crpix = [(nx + 1) / 2.0, (ny + 1) / 2.0]  # 1-based centre
    wcs.wcs.cd = cd_matrix(scale_arcsec, rotation_deg, scene.parity)
    if sip and scene.sip_distortion_px != 0.0:
        a, b = _sip_arrays(scene.shape, scene.sip_distortion_px)
        wcs.sip = Sip(a, b, None, None, wcs.wcs.crpix)
    elif sip:
        wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.set()
    wcs.pixel_shape = (nx, ny)
    return wcs


def _offset(ra_deg: float, dec_deg: float, distance_deg: float, pa_deg: float) -> tuple[float, float]:
    """The point ``distance_deg`` from (ra, dec) towards position angle ``pa_deg`` (east of north)."""
    ra, dec = math.radians(ra_deg), math.radians(dec_deg)
    d, pa = math.radians(distance_deg), math.radians(pa_deg)
    dec2 = math.asin(math.sin(dec) * math.cos(d) + math.cos(dec) * math.sin(d) * math.cos(pa))
    ra2 = ra + math.atan2(math.sin(pa) * math.sin(d) * math.cos(dec), math.cos(d) - math.sin(dec) * math.sin(dec2))
    return math.degrees(ra2) % 360.0, math.degrees(dec2)


def approximate_model(scene: Scene, *, distortion: bool) -> WCS:
    """The approximate plate model of the header: the truth off by the scene's errors.

    The tangent point moves ``pointing_error_arcmin`` towards ``pointing_error_pa_deg``,
    the rotation by ``rotation_error_deg`` and the scale by ``1 + scale_error_frac``;
    with ``distortion`` the truth's SIP terms are kept (a plate solution carries its
    distortion), otherwise the model is a plain TAN.
    """
    ra, dec = _offset(scene.ra_deg, scene.dec_deg, scene.pointing_error_arcmin / 60.0, scene.pointing_error_pa_deg)
    return _tan_sip(scene, ra_deg=ra, dec_deg=dec, scale_arcsec=scene.scale_arcsec * (1.0 + scene.scale_error_frac),
                    rotation_deg=scene.rotation_deg + scene.rotation_error_deg, sip=distortion)


# --------------------------------------------------------------------------
# DSS plate solutions
# --------------------------------------------------------------------------


def _amd_terms(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The 13 AMD polynomial terms of the first axis (for AMDY swap x and y), shape (13, n)."""
    r2 = x * x + y * y
    one = np.ones_like(x)
    return np.array([x, y, one, x * x, x * y, y * y, r2, x ** 3, x * x * y, x * y * y, y ** 3, x * r2, x * r2 * r2])


def _plate_mm(header: fits.Header | dict, i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Plate coordinates (mm) of 0-based pixels (wcslib's DSS convention, 1-based p = i + 1)."""
    px = header["CNPIX1"] + np.asarray(i, float) + 1.0 - 0.5
    py = header["CNPIX2"] + np.asarray(j, float) + 1.0 - 0.5
    return (header["PPO3"] - header["XPIXELSZ"] * px) / 1000.0, (header["YPIXELSZ"] * py - header["PPO6"]) / 1000.0


def _plate_centre_deg(header: fits.Header | dict) -> tuple[float, float]:
    ra = 15.0 * (header["PLTRAH"] + header["PLTRAM"] / 60.0 + header["PLTRAS"] / 3600.0)
    sign = -1.0 if str(header["PLTDECSN"]).strip() == "-" else 1.0
    return ra, sign * (header["PLTDECD"] + header["PLTDECM"] / 60.0 + header["PLTDECS"] / 3600.0)


def _gnomonic(ra: np.ndarray, dec: np.ndarray, ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray]:
    """Standard coordinates (radians) of (ra, dec) degrees about (ra0, dec0)."""
    ra, dec = np.radians(ra), np.radians(dec)
    a0, d0 = math.radians(ra0), math.radians(dec0)
    cosc = np.sin(d0) * np.sin(dec) + np.cos(d0) * np.cos(dec) * np.cos(ra - a0)
    xi = np.cos(dec) * np.sin(ra - a0) / cosc
    eta = (np.cos(d0) * np.sin(dec) - np.sin(d0) * np.cos(dec) * np.cos(ra - a0)) / cosc
    return xi, eta


def _inverse_gnomonic(xi: np.ndarray, eta: np.ndarray, ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray]:
    a0, d0 = math.radians(ra0), math.radians(dec0)
    d = np.cos(d0) - eta * np.sin(d0)
    ra = a0 + np.arctan2(xi, d)
    dec = np.arctan2(np.sin(d0) + eta * np.cos(d0), np.hypot(xi, d))
    return np.degrees(ra) % 360.0, np.degrees(dec)


def dss_sky(header: fits.Header | dict, i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Evaluate a DSS plate solution directly at 0-based pixels: (ra, dec) degrees.

    The same numbers as ``astropy.wcs.WCS(header)`` (wcslib) to 1e-6 mas on the real
    DSS header in ``../shared/data/dss_plate_header``; used to fit and check ours.
    """
    x, y = _plate_mm(header, i, j)
    ax = np.array([header.get(f"AMDX{k}", 0.0) for k in range(1, 14)])
    ay = np.array([header.get(f"AMDY{k}", 0.0) for k in range(1, 14)])
    xi = ax @ _amd_terms(x, y) / ARCSEC_PER_DEG
    eta = ay @ _amd_terms(y, x) / ARCSEC_PER_DEG
    return _inverse_gnomonic(np.radians(xi), np.radians(eta), *_plate_centre_deg(header))


def _sexagesimal(value_deg: float, *, hours: bool) -> tuple[int, int, float, str]:
    sign = "-" if value_deg < 0 else "+"
    v = abs(value_deg) / (15.0 if hours else 1.0)
    d = int(v)
    m = int((v - d) * 60.0)
    s = (v - d - m / 60.0) * 3600.0
    return d, m, s, sign


def dss_header(model: WCS, shape: tuple[int, int], *, scale_arcsec: float, date_obs: str, exposure_min: float,
               plate_offset_deg: tuple[float, float] = DSS_CUTOUT_OFFSET_DEG) -> tuple[fits.Header, float]:
    """A DSS plate-solution header (no FITS WCS keywords) that encodes ``model`` over the frame.

    The cutout sits ``plate_offset_deg`` (xi, eta) from the plate centre, on a plate of
    DSS_PLATE_SCALE_ARCSEC_PER_MM; AMDX1-11 and AMDY1-11 are least-squares fits of the
    model's standard coordinates about the (rounded) plate centre on a DSS_FIT_GRID grid.

    Returns
    -------
    header, worst_px
        The keywords and the largest fit error over the grid, pixels.
    """
    ny, nx = shape
    ci, cj = (nx - 1) / 2.0, (ny - 1) / 2.0
    ra_c, dec_c = (float(v) for v in model.pixel_to_world_values(ci, cj))
    # the plate centre: the cutout centre lies at plate_offset_deg (xi east, eta north) from it
    dxi, deta = (math.radians(v) for v in plate_offset_deg)
    ra_p, dec_p = _inverse_gnomonic(np.array(-dxi), np.array(-deta), ra_c, dec_c)
    rh, rm, rs, _ = _sexagesimal(float(ra_p), hours=True)
    dd, dm, ds, dsign = _sexagesimal(float(dec_p), hours=False)
    rs, ds = round(rs, 3), round(ds, 2)
    pixel_um = scale_arcsec / DSS_PLATE_SCALE_ARCSEC_PER_MM * 1000.0
    ppo3 = DSS_PLATE_SIZE_MM / 2.0 * 1000.0
    # cutout corner on the plate: the centre pixel where the plate model puts it (east left)
    x_c = math.degrees(dxi) * ARCSEC_PER_DEG / DSS_PLATE_SCALE_ARCSEC_PER_MM
    y_c = math.degrees(deta) * ARCSEC_PER_DEG / DSS_PLATE_SCALE_ARCSEC_PER_MM
    cnpix1 = int(round((ppo3 - x_c * 1000.0) / pixel_um - nx / 2.0))
    cnpix2 = int(round((y_c * 1000.0 + ppo3) / pixel_um - ny / 2.0))
    h = fits.Header()
    h["PLTSCALE"] = (DSS_PLATE_SCALE_ARCSEC_PER_MM, "Detector: Plate Scale arcsec per mm")
    h["PLTSIZEX"] = (DSS_PLATE_SIZE_MM, "Detector: Plate X Dimension mm")
    h["PLTSIZEY"] = (DSS_PLATE_SIZE_MM, "Detector: Plate Y Dimension mm")
    h["PLTLABEL"] = ("GS0001", "Observation: Plate Label")
    t = Time(date_obs, scale="tt")  # only the date is written; UTC has no leap seconds before 1960
    h["DATE-OBS"] = (t.strftime("%d/%m/%y"), "Observation: Date (dd/mm/yy)")
    h["EXPOSURE"] = (float(exposure_min), "Observation: Exposure Minutes")
    h["CNPIX1"] = (cnpix1, "Scan: X Corner")
    h["CNPIX2"] = (cnpix2, "Scan: Y Corner")
    h["XPIXELS"] = (int(round(2 * ppo3 / pixel_um)), "Scan: X Dimension")
    h["YPIXELS"] = (int(round(2 * ppo3 / pixel_um)), "Scan: Y Dimension")
    h["XPIXELSZ"] = (round(pixel_um, 6), "Scan: Pixel Size microns")
    h["YPIXELSZ"] = (round(pixel_um, 6), "Scan: Pixel Size microns")
    for k, v in enumerate((-DSS_PPO_ROTATION, 0.0, ppo3, 0.0, DSS_PPO_ROTATION, ppo3), start=1):
        h[f"PPO{k}"] = (v, "Scan: Orientation Coeff")
    h["PLTRAH"] = (rh, "Astrometry: Plate Centre H")
    h["PLTRAM"] = (rm, "Astrometry: Plate Centre M")
    h["PLTRAS"] = (rs, "Astrometry: Plate Centre S")
    h["PLTDECSN"] = (dsign, "Astrometry: Plate Centre +/-")
    h["PLTDECD"] = (dd, "Astrometry: Plate Centre D")
    h["PLTDECM"] = (dm, "Astrometry: Plate Centre M")
    h["PLTDECS"] = (ds, "Astrometry: Plate Centre S")
    h["EQUINOX"] = (2000.0, "Astrometry: Equinox")
    # the fit
    gi, gj = np.meshgrid(np.linspace(0, nx - 1, DSS_FIT_GRID), np.linspace(0, ny - 1, DSS_FIT_GRID))
    gi, gj = gi.ravel(), gj.ravel()
    ra, dec = model.pixel_to_world_values(gi, gj)
    xi, eta = (np.degrees(v) * ARCSEC_PER_DEG for v in _gnomonic(ra, dec, *_plate_centre_deg(h)))
    x, y = _plate_mm(h, gi, gj)
    used = list(range(11))  # the r^2 terms (7, 12, 13) duplicate the others: left at 0
    used.remove(6)
    coef_x = np.linalg.lstsq(_amd_terms(x, y)[used].T, xi, rcond=None)[0]
    coef_y = np.linalg.lstsq(_amd_terms(y, x)[used].T, eta, rcond=None)[0]
    for axis, coef in (("X", coef_x), ("Y", coef_y)):
        full = np.zeros(20)
        full[used] = coef
        for k in range(20):
            h[f"AMD{axis}{k + 1}"] = (float(full[k]), "Astrometry: GSC1 Coeff")
    oc = model.pixel_to_world_values(ci, cj)
    ch, cm, cs, _ = _sexagesimal(float(oc[0]), hours=True)
    od, om, os_, osign = _sexagesimal(float(oc[1]), hours=False)
    h["OBJCTRA"] = (f"{ch:02d} {cm:02d} {cs:05.2f}", "Observation: Object Right Ascension")
    h["OBJCTDEC"] = (f"{osign}{od:02d} {om:02d} {os_:04.1f}", "Observation: Object Declination")
    ra_b, dec_b = dss_sky(h, gi, gj)
    worst = _worst_px(ra_b, dec_b, ra, dec, scale_arcsec)
    return h, worst


def _worst_px(ra1: np.ndarray, dec1: np.ndarray, ra2: np.ndarray, dec2: np.ndarray, scale_arcsec: float) -> float:
    from astrodask.sphere import angular_separation_deg

    return float(np.max(angular_separation_deg(ra1, dec1, ra2, dec2)) * ARCSEC_PER_DEG / scale_arcsec)


def check_dss_header(header: fits.Header, model: WCS, shape: tuple[int, int], scale_arcsec: float) -> float:
    """Largest distance (px) over the frame between astropy's reading of ``header`` and ``model``."""
    ny, nx = shape
    gi, gj = np.meshgrid(np.linspace(0, nx - 1, 9), np.linspace(0, ny - 1, 9))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        read = WCS(header)
    ra1, dec1 = read.pixel_to_world_values(gi.ravel(), gj.ravel())
    ra2, dec2 = model.pixel_to_world_values(gi.ravel(), gj.ravel())
    return _worst_px(ra1, dec1, ra2, dec2, scale_arcsec)


# --------------------------------------------------------------------------
# Stars: positions, motions, magnitudes, and the catalog
# --------------------------------------------------------------------------


def _cap_area_deg2(radius_deg: float) -> float:
    return 2.0 * math.pi * (1.0 - math.cos(math.radians(radius_deg))) * (180.0 / math.pi) ** 2


def _half_diagonal_deg(scene: Scene) -> float:
    ny, nx = scene.shape
    return 0.5 * math.hypot(nx, ny) * scene.scale_arcsec / ARCSEC_PER_DEG


def _cone_positions(ra_deg: float, dec_deg: float, radius_deg: float, n: int,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` positions uniform on the sphere within ``radius_deg`` of (ra, dec)."""
    cos_r = math.cos(math.radians(radius_deg))
    rho = np.arccos(rng.uniform(cos_r, 1.0, n))
    pa = rng.uniform(0.0, 2.0 * math.pi, n)
    return _inverse_gnomonic(np.tan(rho) * np.sin(pa), np.tan(rho) * np.cos(pa), ra_deg, dec_deg)


def _power_law_mags(n: int, bright: float, faint: float, slope: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` magnitudes with dN/dm ~ 10**(slope m) between ``bright`` and ``faint``."""
    lo, hi = 10.0 ** (slope * bright), 10.0 ** (slope * faint)
    return np.log10(lo + rng.uniform(0.0, 1.0, n) * (hi - lo)) / slope


def _proper_motions(n: int, sigma_masyr: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Field proper motions: Gaussian per axis plus a few fast stars (log-uniform total, random direction)."""
    pmra, pmdec = rng.normal(0.0, sigma_masyr, n), rng.normal(0.0, sigma_masyr, n)
    fast = rng.uniform(0.0, 1.0, n) < FAST_STAR_FRACTION
    total = np.exp(rng.uniform(*np.log(FAST_PM_RANGE_MASYR), fast.sum()))
    angle = rng.uniform(0.0, 2.0 * math.pi, fast.sum())
    pmra[fast], pmdec[fast] = total * np.sin(angle), total * np.cos(angle)
    return pmra, pmdec


def shared_data_dir() -> Path | None:
    """The real sky data folder (``$ASTRODASK_SHARED_DATA`` or ``../shared/data`` beside the repository), if present."""
    env = os.environ.get(SHARED_DATA_ENV)
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    return path if path.is_dir() else None


def _real_field(path: str, scene: Scene) -> tuple[dict[str, np.ndarray], tuple[float, float]]:
    """A real catalog's stars recentred onto the scene (used once: never tiled).

    The real field's inner tangent-plane box (about its own centre) is moved to the scene's
    centre. Repeating it to cover a larger frame would repeat its asterisms, which a
    pattern matcher can lock onto (a wrong solution one copy away): outside the box the stars
    are synthetic (:func:`make_stars`).

    Returns
    -------
    columns, (half_width_deg, half_height_deg)
        ``ra``, ``dec``, ``mag``, ``pmra``, ``pmdec``, ``parallax``, and the box's half sizes.
    """
    real = read_catalog(path)
    ra, dec = np.asarray(real["ra"], float), np.asarray(real["dec"], float)
    ra0 = float(np.degrees(np.arctan2(np.mean(np.sin(np.radians(ra))), np.mean(np.cos(np.radians(ra)))))) % 360.0
    dec0 = float(np.median(dec))
    xi, eta = (np.degrees(v) for v in _gnomonic(ra, dec, ra0, dec0))
    # the inner box of the field (a RA/Dec box is a trapezoid in the tangent plane)
    x_lo, x_hi = np.quantile(xi, [0.01, 0.99])
    y_lo, y_hi = np.quantile(eta, [0.002, 0.998])
    inside = (xi >= x_lo) & (xi < x_hi) & (eta >= y_lo) & (eta < y_hi)
    xi, eta = xi[inside] - 0.5 * (x_lo + x_hi), eta[inside] - 0.5 * (y_lo + y_hi)
    out = {k: np.nan_to_num(np.asarray(real[k], float)[inside]) for k in ("pmra", "pmdec", "parallax")}
    out["mag"] = np.asarray(real["phot_g_mean_mag"], float)[inside]
    out["ra"], out["dec"] = _inverse_gnomonic(np.radians(xi), np.radians(eta), scene.ra_deg, scene.dec_deg)
    return out, (0.5 * (x_hi - x_lo), 0.5 * (y_hi - y_lo))


def make_stars(scene: Scene, *, rng: np.random.Generator) -> Table:
    """The true stars of a scene at the catalog's reference epoch, and their catalog values.

    Catalog stars (``bright_mag`` to ``faint_mag``) fill a cone of the frame's half
    diagonal plus ``catalog_margin_deg``; fainter stars (to ``faint_mag +
    extra_depth_mag``, not in the catalog) fill the frame's cone only.

    Returns
    -------
    astropy.table.Table
        ``ra_true``, ``dec_true`` (deg, at the catalog's ref_epoch), ``pmra_true``,
        ``pmdec_true`` (mas/yr), ``parallax_true`` (mas), ``phot_g_mean_mag``,
        ``in_catalog`` and the catalog's ``ra``, ``dec``, ``ra_error``, ``dec_error``,
        ``pmra``, ``pmdec``, ``parallax`` (noisy, Gaia-like), ``source_id``.
    """
    r_frame = _half_diagonal_deg(scene) + 0.01
    r_cat = _half_diagonal_deg(scene) + scene.catalog_margin_deg
    wanted = rng.poisson(scene.star_density_per_deg2 * _cap_area_deg2(r_cat))
    ra, dec = _cone_positions(scene.ra_deg, scene.dec_deg, r_cat, wanted, rng)
    mag = _power_law_mags(wanted, scene.bright_mag, scene.faint_mag, scene.lf_slope, rng)
    cols = {k: np.zeros(0) for k in ("ra", "dec", "mag", "pmra", "pmdec", "parallax")}
    seeded = False
    if scene.seed_catalog is not None and Path(scene.seed_catalog).is_file():
        # real stars in their box at the centre; there, synthetic stars only fainter than the real ones
        cols, (half_w, half_h) = _real_field(scene.seed_catalog, scene)
        cols = {k: v[cols["mag"] <= scene.faint_mag] for k, v in cols.items()}
        xi, eta = (np.degrees(v) for v in _gnomonic(ra, dec, scene.ra_deg, scene.dec_deg))
        in_box = (np.abs(xi) < half_w) & (np.abs(eta) < half_h)
        top_up = in_box & (mag > float(np.max(cols["mag"], initial=scene.bright_mag)))
        # top the box up to the wanted density (to faint_mag) only, not beyond
        wanted_box = scene.star_density_per_deg2 * 4.0 * half_w * half_h
        fraction = np.clip((wanted_box - len(cols["mag"])) / max(int(top_up.sum()), 1), 0.0, 1.0)
        keep = ~in_box | (top_up & (rng.uniform(0.0, 1.0, len(mag)) < fraction))
        ra, dec, mag = ra[keep], dec[keep], mag[keep]
        seeded = True
    elif scene.seed_catalog is not None:
        log.warning("scene %s: seed catalog %s not found; all stars synthetic", scene.name, scene.seed_catalog)
    n_top = len(mag)
    n_faint = rng.poisson(scene.star_density_per_deg2 * _cap_area_deg2(r_frame)
                          * (10.0 ** (scene.lf_slope * scene.extra_depth_mag) - 1.0))
    ra_f, dec_f = _cone_positions(scene.ra_deg, scene.dec_deg, r_frame, n_faint, rng)
    mag_f = _power_law_mags(n_faint, scene.faint_mag, scene.faint_mag + scene.extra_depth_mag, scene.lf_slope, rng)
    n_syn = n_top + n_faint
    pmra, pmdec = _proper_motions(n_syn, scene.pm_sigma_masyr, rng)
    plx = np.exp(rng.normal(np.log(0.5), 0.7, n_syn))
    t = Table()
    t["ra_true"] = np.concatenate([cols["ra"], ra, ra_f])
    t["dec_true"] = np.concatenate([cols["dec"], dec, dec_f])
    t["pmra_true"] = np.concatenate([cols["pmra"], pmra])
    t["pmdec_true"] = np.concatenate([cols["pmdec"], pmdec])
    t["parallax_true"] = np.concatenate([cols["parallax"], plx])
    t["phot_g_mean_mag"] = np.concatenate([cols["mag"], mag, mag_f])
    n = len(t)
    t["in_catalog"] = t["phot_g_mean_mag"] <= scene.faint_mag
    # Gaia-like catalog values
    factor = RELEASE_ERROR_FACTOR[scene.catalog_release]
    sigma = factor * (POSITION_ERROR_FLOOR_MAS + POSITION_ERROR_AT_G20_MAS
                      * 10.0 ** (0.4 * (np.asarray(t["phot_g_mean_mag"]) - DEFAULT_FAINT_MAG)))
    e_ra = sigma * np.exp(rng.normal(0.0, 0.1, n))
    e_dec = sigma * np.exp(rng.normal(0.0, 0.1, n))
    d_ra, d_dec = rng.normal(0.0, 1.0, n) * e_ra, rng.normal(0.0, 1.0, n) * e_dec
    cos_dec = np.cos(np.radians(np.asarray(t["dec_true"])))
    t["ra"] = (np.asarray(t["ra_true"]) + d_ra / MAS_PER_DEG / cos_dec) % 360.0
    t["dec"] = np.asarray(t["dec_true"]) + d_dec / MAS_PER_DEG
    t["ra_error"], t["dec_error"] = e_ra, e_dec
    t["pmra"] = np.asarray(t["pmra_true"]) + rng.normal(0.0, 1.0, n) * PM_ERROR_RATIO * e_ra
    t["pmdec"] = np.asarray(t["pmdec_true"]) + rng.normal(0.0, 1.0, n) * PM_ERROR_RATIO * e_dec
    t["parallax"] = np.asarray(t["parallax_true"]) + rng.normal(0.0, 1.0, n) * sigma
    hp = healpix_nested_index(np.asarray(t["ra"]), np.asarray(t["dec"]))
    t["source_id"] = (np.asarray(hp, np.int64) << GAIA_SOURCE_ID_SHIFT) + np.arange(1, n + 1, dtype=np.int64)
    t.meta["seeded_from"] = str(scene.seed_catalog) if seeded else "synthetic"
    return t


def catalog_table(stars: Table, scene: Scene) -> Table:
    """The Gaia-like catalog (archive column names and units) of the stars with ``in_catalog``.

    ``"dr3"``: positions at 2016.0 with proper motions and parallaxes; ``"dr2"``: at 2015.5,
    no pmra/pmdec/parallax columns (like a DR2 positions-only extract).
    """
    s = stars[np.asarray(stars["in_catalog"], bool)]
    cat = Table()
    cat["source_id"] = np.asarray(s["source_id"], np.int64)
    cat["ra"] = np.asarray(s["ra"], float)
    cat["dec"] = np.asarray(s["dec"], float)
    cat["ra_error"] = np.asarray(s["ra_error"], float)
    cat["dec_error"] = np.asarray(s["dec_error"], float)
    units = {"ra": "deg", "dec": "deg", "ra_error": "mas", "dec_error": "mas"}
    if scene.catalog_release == "dr3":
        for key, unit in (("pmra", "mas / yr"), ("pmdec", "mas / yr"), ("parallax", "mas")):
            cat[key] = np.asarray(s[key], float)
            units[key] = unit
    cat["ref_epoch"] = np.full(len(s), RELEASE_EPOCH_YR[scene.catalog_release])
    cat["phot_g_mean_mag"] = np.asarray(s["phot_g_mean_mag"], float)
    units.update(ref_epoch="yr", phot_g_mean_mag="mag")
    for key, unit in units.items():
        cat[key].unit = unit
    cat.meta.update(release=f"Gaia {scene.catalog_release.upper()}-like (synthetic, astrodask.render_galsim)",
                    mag_limit=scene.faint_mag, scene=scene.name, seeded_from=stars.meta.get("seeded_from", ""))
    return cat


# --------------------------------------------------------------------------
# Drawing with GalSim
# --------------------------------------------------------------------------


def make_psf(scene: Scene) -> galsim.GSObject:
    """The scene's PSF (unit flux, pixel units; drawn pixel-integrated by ``method='auto'``)."""
    galsim = _galsim()
    if scene.psf_model == "moffat":
        core = galsim.Moffat(beta=scene.moffat_beta, fwhm=scene.fwhm_px)
    else:
        core = galsim.Kolmogorov(fwhm=scene.fwhm_px)
    if scene.psf_e > 0.0:
        core = core.shear(e=scene.psf_e, beta=scene.psf_angle_deg * galsim.degrees)
    if scene.photographic and scene.plate_halo_fraction > 0.0:
        halo = galsim.Moffat(beta=PLATE_HALO_BETA, fwhm=PLATE_HALO_FWHM_FACTOR * scene.fwhm_px,
                             trunc=STAMP_HALF_RANGE_PX[1] / 2.0)
        return galsim.Add(core.withFlux(1.0 - scene.plate_halo_fraction), halo.withFlux(scene.plate_halo_fraction))
    return core


def _moffat_radius(flux: np.ndarray, fwhm: float, beta: float, level: float) -> np.ndarray:
    """Radius where a Moffat of ``flux`` falls to ``level`` per pixel, pixels."""
    alpha = fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
    peak = flux * (beta - 1.0) / (math.pi * alpha * alpha)
    ratio = np.maximum(peak / level, 1.0)
    return alpha * np.sqrt(ratio ** (1.0 / beta) - 1.0)


def stamp_half_sizes(scene: Scene, flux_adu: np.ndarray) -> np.ndarray:
    """Half-size of each star's stamp, pixels: where its profile drops below the noise fraction."""
    noise = math.sqrt(scene.sky_adu / scene.gain_e_per_adu + (scene.read_noise_e / scene.gain_e_per_adu) ** 2)
    level = STAMP_EDGE_NOISE_FRACTION * noise
    beta = scene.moffat_beta if scene.psf_model == "moffat" else KOLMOGOROV_EQUIVALENT_BETA
    r = _moffat_radius(flux_adu, scene.fwhm_px * (1.0 + scene.psf_e), beta, level)
    if scene.photographic:
        r = np.maximum(r, _moffat_radius(flux_adu * scene.plate_halo_fraction,
                                         PLATE_HALO_FWHM_FACTOR * scene.fwhm_px, PLATE_HALO_BETA, level))
    return np.clip(np.ceil(r), *STAMP_HALF_RANGE_PX).astype(int)


def psf_table(psf: galsim.GSObject, half: int, phases: int = PSF_TABLE_PHASES) -> np.ndarray:
    """Pixel-integrated unit-flux PSF stamps at sub-pixel offsets.

    Returns an array (phases + 1, phases + 1, 2 half + 1, 2 half + 1): entry [a, b] has
    the PSF centred at (b / phases - 0.5, a / phases - 0.5) px from the stamp's centre pixel.
    """
    size = 2 * half + 1
    table = np.empty((phases + 1, phases + 1, size, size), np.float32)
    for a in range(phases + 1):
        for b in range(phases + 1):
            table[a, b] = psf.drawImage(nx=size, ny=size, scale=1.0,
                                        offset=(b / phases - 0.5, a / phases - 0.5)).array
    return table


def add_from_table(canvas: np.ndarray, table: np.ndarray, x: np.ndarray, y: np.ndarray, flux: np.ndarray) -> None:
    """Add stars to ``canvas`` by bilinear blending of the table's four nearest phases.

    A blend of stamps has the blend of their first moments, so each star's centroid is
    exactly (x, y) (0-based pixel coordinates) up to the stamp's truncation.
    """
    ny, nx = canvas.shape
    phases = table.shape[0] - 1
    half = table.shape[2] // 2
    d = np.arange(-half, half + 1)
    for start in range(0, len(x), TABLE_CHUNK):
        sl = slice(start, start + TABLE_CHUNK)
        xs, ys, fs = x[sl], y[sl], flux[sl]
        ic, jc = np.rint(xs).astype(int), np.rint(ys).astype(int)
        tx, ty = (xs - ic + 0.5) * phases, (ys - jc + 0.5) * phases
        bx, by = np.minimum(tx.astype(int), phases - 1), np.minimum(ty.astype(int), phases - 1)
        wx, wy = (tx - bx)[:, None, None], (ty - by)[:, None, None]
        stamps = ((1 - wx) * (1 - wy) * table[by, bx] + wx * (1 - wy) * table[by, bx + 1]
                  + (1 - wx) * wy * table[by + 1, bx] + wx * wy * table[by + 1, bx + 1]) * fs[:, None, None]
        jj = jc[:, None, None] + d[None, :, None]
        ii = ic[:, None, None] + d[None, None, :]
        jj, ii = np.broadcast_to(jj, stamps.shape), np.broadcast_to(ii, stamps.shape)
        ok = (ii >= 0) & (ii < nx) & (jj >= 0) & (jj < ny)
        np.add.at(canvas, (jj[ok], ii[ok]), stamps[ok].astype(canvas.dtype))


def draw_object(full: galsim.Image, prof: galsim.GSObject, x: float, y: float, half: int) -> None:
    """Draw one profile centred at 0-based (x, y) onto the part of ``full`` within ``half`` px."""
    galsim = _galsim()
    ic, jc = int(round(x)), int(round(y))
    bounds = galsim.BoundsI(ic - half, ic + half, jc - half, jc + half) & full.bounds
    if not bounds.isDefined():
        return
    prof.drawImage(image=full[bounds], add_to_image=True, center=galsim.PositionD(x, y))


def add_galaxies(full: galsim.Image, scene: Scene, psf: galsim.GSObject, *, rng: np.random.Generator) -> int:
    """GalSim Sersic galaxies (not in the catalog) convolved with the PSF; returns how many."""
    galsim = _galsim()
    ny, nx = scene.shape
    n = int(rng.poisson(scene.galaxy_density_per_deg2 * scene.area_deg2))
    mags = _power_law_mags(n, *GALAXY_MAG_RANGE, GALAXY_COUNT_SLOPE, rng)
    flux = scene.exptime_s * 10.0 ** (-0.4 * (mags - scene.zero_point_mag))
    hlr = np.exp(rng.uniform(*np.log(GALAXY_HLR_RANGE_ARCSEC), n)) / scene.scale_arcsec
    e = rng.uniform(0.0, GALAXY_MAX_E, n)
    angle = rng.uniform(0.0, 180.0, n)
    index = rng.choice(GALAXY_SERSIC_N, n)
    x, y = rng.uniform(-0.5, nx - 0.5, n), rng.uniform(-0.5, ny - 0.5, n)
    for k in range(n):
        if index[k] == 1.0:
            gal = galsim.Exponential(half_light_radius=hlr[k])
        elif index[k] == 4.0:
            gal = galsim.DeVaucouleurs(half_light_radius=hlr[k], trunc=GALAXY_TRUNCATION_HLR * hlr[k])
        else:
            gal = galsim.Sersic(n=index[k], half_light_radius=hlr[k], trunc=GALAXY_TRUNCATION_HLR * hlr[k])
        gal = gal.shear(e=e[k], beta=angle[k] * galsim.degrees).withFlux(flux[k])
        half = int(np.clip(math.ceil(4.0 * hlr[k] * (1.0 + e[k]) + 2.0 * scene.fwhm_px), 8, 96))
        draw_object(full, galsim.Convolve(gal, psf), x[k], y[k], half)
    return n


def add_satellite(canvas: np.ndarray, scene: Scene, *, rng: np.random.Generator) -> dict[str, float]:
    """A satellite trail: a straight line across the frame with a Gaussian profile of the PSF's width."""
    ny, nx = canvas.shape
    i0, j0 = rng.uniform(0.3, 0.7) * nx, rng.uniform(0.3, 0.7) * ny
    theta = rng.uniform(0.0, math.pi)
    sigma = scene.fwhm_px / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    w = int(math.ceil(5.0 * sigma)) + 1
    c, s = math.cos(theta), math.sin(theta)
    if abs(c) >= abs(s):  # along columns: one centre row per column
        ii = np.arange(nx)
        jc = j0 + (ii - i0) * s / c
        k = np.arange(-int(math.ceil(w / abs(c))), int(math.ceil(w / abs(c))) + 1)
        jj = np.rint(jc)[:, None] + k[None, :]
        dist = (jj - jc[:, None]) * abs(c)
        ii = np.broadcast_to(ii[:, None], jj.shape)
    else:
        jj = np.arange(ny)
        ic = i0 + (jj - j0) * c / s
        k = np.arange(-int(math.ceil(w / abs(s))), int(math.ceil(w / abs(s))) + 1)
        ii = np.rint(ic)[:, None] + k[None, :]
        dist = (ii - ic[:, None]) * abs(s)
        jj = np.broadcast_to(jj[:, None], ii.shape)
    ok = (ii >= 0) & (ii < nx) & (jj >= 0) & (jj < ny)
    canvas[jj[ok].astype(int), ii[ok].astype(int)] += (SATELLITE_PEAK_ADU * np.exp(-0.5 * (dist[ok] / sigma) ** 2)
                                                        ).astype(canvas.dtype)
    return {"i0": i0, "j0": j0, "angle_deg": math.degrees(theta), "peak_adu": SATELLITE_PEAK_ADU}


def bleed(canvas: np.ndarray, full_well: float, centres: list[tuple[int, int, int]]) -> int:
    """Bleed trails: charge above ``full_well`` flows up and down its column (conserved).

    ``centres`` are (i, j, half) of saturated stars; in each column of each star's box the
    excess over the full well is taken out and spread half up, half down, filling pixels to
    the full well outwards from the saturated run. Returns the number of trail pixels.
    """
    ny, _ = canvas.shape
    filled = 0
    for ic, jc, half in centres:
        j_lo, j_hi = max(jc - half, 0), min(jc + half + 1, ny)
        for col in range(max(ic - half, 0), min(ic + half + 1, canvas.shape[1])):
            column = canvas[:, col]
            over = np.nonzero(column[j_lo:j_hi] > full_well)[0]
            if over.size == 0:
                continue
            top, bottom = j_lo + over[0], j_lo + over[-1]
            excess = float(np.sum(column[top:bottom + 1] - full_well, where=column[top:bottom + 1] > full_well))
            column[top:bottom + 1] = np.minimum(column[top:bottom + 1], full_well)
            for direction, share in ((-1, 0.5 * excess), (1, 0.5 * excess)):
                rows = np.arange(top - 1, -1, -1) if direction < 0 else np.arange(bottom + 1, ny)
                room = np.maximum(full_well - column[rows], 0.0)
                cum = np.cumsum(room)
                n_full = int(np.searchsorted(cum, share))
                column[rows[:n_full]] = full_well
                if n_full < rows.size:
                    column[rows[n_full]] += share - (cum[n_full - 1] if n_full else 0.0)
                filled += n_full
    return filled


def photographic_response(exposure: np.ndarray, scene: Scene, *, rng: np.random.Generator) -> np.ndarray:
    """Scan values of a plate: density = fog + gamma log10(1 + E / E0), clipped at the maximum density.

    E0 is PLATE_E0_SKY times the sky, so the sky sits on the toe of the curve; grain noise
    (PLATE_GRAIN_SIGMA_DENSITY) is added in density; the maximum density maps to
    PLATE_SCAN_MAX_ADU, so bright stars have flat cores whose size grows with brightness.
    """
    e0 = PLATE_E0_SKY * scene.sky_adu
    density = scene.plate_fog_density + scene.plate_gamma * np.log10(1.0 + np.maximum(exposure, 0.0) / e0)
    density += rng.normal(0.0, PLATE_GRAIN_SIGMA_DENSITY, density.shape).astype(density.dtype)
    return np.clip(density, 0.0, scene.plate_max_density) / scene.plate_max_density * PLATE_SCAN_MAX_ADU


def _cosmic_rays(shape: tuple[int, int], n: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cosmic-ray pixels (i, j, level ADU, event index): points and short worms, not PSF-convolved."""
    ny, nx = shape
    out_i, out_j, out_v, out_k = [], [], [], []
    for k in range(n):
        i0, j0 = rng.uniform(0, nx - 1), rng.uniform(0, ny - 1)
        if rng.uniform() < CR_POINT_FRACTION:
            length = rng.choice([0.0, 1.0])
        else:
            length = rng.uniform(*CR_TRACK_LENGTH_PX)
        angle = rng.uniform(0.0, 2.0 * math.pi)
        t = np.arange(0.0, length + 0.5, 0.5)
        wiggle = np.cumsum(rng.normal(0.0, 0.15, t.size))  # worms: the track bends a little
        ii = np.rint(i0 + t * math.cos(angle) - wiggle * math.sin(angle)).astype(int)
        jj = np.rint(j0 + t * math.sin(angle) + wiggle * math.cos(angle)).astype(int)
        pix = np.unique(np.stack([ii, jj]), axis=1)
        ok = (pix[0] >= 0) & (pix[0] < nx) & (pix[1] >= 0) & (pix[1] < ny)
        pix = pix[:, ok]
        out_i.append(pix[0])
        out_j.append(pix[1])
        out_v.append(rng.uniform(*CR_LEVEL_ADU, pix.shape[1]))
        out_k.append(np.full(pix.shape[1], k))
    cat = lambda parts, dt: np.concatenate(parts).astype(dt) if parts else np.zeros(0, dt)  # noqa: E731
    return cat(out_i, int), cat(out_j, int), cat(out_v, float), cat(out_k, int)


# --------------------------------------------------------------------------
# Headers and files
# --------------------------------------------------------------------------


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
    header["OBJECT"] = (scene.name, "astrodask.render_galsim scene")
    header["ORIGIN"] = (f"astrodask.render_galsim (GalSim {_galsim().__version__})", "")
    return header


def write_truth_wcs(path: Path, wcs: WCS, shape: tuple[int, int]) -> None:
    """The exact truth WCS as a primary header (SIP included) with IMAGEW/IMAGEH, checked on re-reading."""
    from astrodask.simulate import read_truth_wcs

    ny, nx = shape
    header = wcs.to_header(relax=True)
    header["IMAGEW"] = (nx, "[px] image width")
    header["IMAGEH"] = (ny, "[px] image height")
    header["COMMENT"] = "Exact truth WCS (TAN-SIP) of a GalSim-rendered exposure (astrodask.render_galsim)"
    fits.PrimaryHDU(header=header).writeto(path, overwrite=True)
    gi, gj = np.meshgrid(np.linspace(0, nx - 1, 7), np.linspace(0, ny - 1, 5))
    a = wcs.pixel_to_world_values(gi.ravel(), gj.ravel())
    b = read_truth_wcs(path).pixel_to_world_values(gi.ravel(), gj.ravel())
    worst = _worst_px(a[0], a[1], b[0], b[1], 1.0) * 1.0  # arcsec
    if not worst < 1e-6:
        raise RuntimeError(f"truth WCS written to {path} does not round-trip ({worst:.3g} arcsec)")


# --------------------------------------------------------------------------
# The whole exposure
# --------------------------------------------------------------------------


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
    galsim = _galsim()
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
    from astrodask.sphere import angular_separation_deg

    near = angular_separation_deg(ra_e, dec_e, scene.ra_deg, scene.dec_deg) <= _half_diagonal_deg(scene) + 0.02
    i, j = np.full(len(stars), np.nan), np.full(len(stars), np.nan)
    if near.any():
        i[near], j[near] = wcs.all_world2pix(ra_e[near], dec_e[near], 0, tolerance=SIP_INVERSE_TOLERANCE_PX,
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
        saturate_level, offset = min(scene.saturate_adu, 65535.0), scene.bias_adu
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
    ci, cj, cv, ck = _cosmic_rays(scene.shape, n_cr, rng)
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
    write_truth_wcs(files.truth_wcs, wcs, scene.shape)
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
    truth = truth[near]
    for key, unit in (("ra_cat", "deg"), ("dec_cat", "deg"), ("ra", "deg"), ("dec", "deg"), ("pmra_true", "mas / yr"),
                      ("pmdec_true", "mas / yr"), ("i", "pix"), ("j", "pix"), ("phot_g_mean_mag", "mag")):
        truth[key].unit = unit
    truth.meta.update(scene=scene.name, epoch_yr=scene.epoch_yr, catalog_ref_epoch=ref_epoch,
                      catalog_release=scene.catalog_release, mag_limit=scene.faint_mag,
                      seeded_from=stars.meta["seeded_from"], artefacts=artefacts,
                      note="ra/dec: true positions at epoch_yr; ra_cat/dec_cat: catalog positions at "
                           "catalog_ref_epoch; i/j: 0-based true pixel positions")
    truth.write(files.truth_table, format="ascii.ecsv", overwrite=True)
    art = Table(rows=rows or None, names=("kind", "event", "i", "j", "level_adu"),
                dtype=(str, int, int, int, float))
    art.meta.update(artefacts)
    art.write(base.with_name(base.name + ".artefacts.ecsv"), format="ascii.ecsv", overwrite=True)
    seconds = time.perf_counter() - started
    log.info("rendered %s (%d x %d px, %d stars drawn, %d one by one) in %.1f s (stars %.1f s)", scene.name, nx, ny,
             int(drawable.sum()), one_by_one.size, seconds, t_stars)
    return dataclasses.replace(files, render_s=seconds)


# --------------------------------------------------------------------------
# The named cases
# --------------------------------------------------------------------------


def _ngc103() -> str | None:
    root = shared_data_dir()
    return str(root / NGC103_FIELD) if root is not None and (root / NGC103_FIELD).is_file() else None


#: Short exposure of the sparse case, seconds (the sky scales with it).
SPARSE_EXPTIME_S: float = 5.0
#: The DSS plate: POSS-I-like epoch, exposure (s), scale (arcsec/px), size (px).
PLATE_DATE_OBS: str = "1951-11-29T06:00:00"
PLATE_EXPTIME_S: float = 50.0 * 60.0
PLATE_SCALE_ARCSEC: float = 1.7
PLATE_SHAPE: tuple[int, int] = (1059, 1059)
#: astrodask's gaia.margin_deg (0.2 deg) times 3, in arcmin: the offset3x gate.
GATE_OFFSET_ARCMIN: float = 3.0 * 0.2 * 60.0

CASES: dict[str, Scene] = {s.name: s for s in (
    Scene("crowded", "Galactic-plane field, 40,000 stars/deg2 to G 20 from G 7 (real NGC 103 crowding when "
          "../shared/data is present), many saturated with bleed trails; header 3' and 0.3 deg off", seed=201,
          shape=(6388, 4788), test_shape=(1600, 1600), ra_deg=283.5, dec_deg=-4.2, rotation_deg=0.7,
          star_density_per_deg2=40000.0, fwhm_px=3.0, seed_catalog=_ngc103(), pointing_error_arcmin=3.0,
          rotation_error_deg=0.3, scale_error_frac=0.002),
    Scene("messy", "elliptical PSF (e 0.15, FWHM 4 px), cosmic rays, 5 hot columns, hot pixels, galaxies "
          "4,000/deg2, a satellite trail, 2,500 stars/deg2", seed=202, shape=CONDOR_SHAPE, test_shape=(1400, 2000),
          ra_deg=187.0, dec_deg=12.5, rotation_deg=-0.4, star_density_per_deg2=2500.0, fwhm_px=4.0, moffat_beta=3.0,
          psf_e=0.15, psf_angle_deg=35.0, cosmic_rays_per_mpix=CONDOR_CR_PER_MPIX, hot_columns=5,
          hot_pixels_per_mpix=20.0, satellite_trail=True, galaxy_density_per_deg2=4000.0,
          pointing_error_arcmin=4.0, rotation_error_deg=-0.4, scale_error_frac=-0.003),
    Scene("plate", "photographic plate 1059 x 1059 px at 1.7\"/px (1951), characteristic curve with flat cores "
          "and halos, DSS plate solution only, Gaia DR2-like catalog without proper motions", seed=203,
          shape=PLATE_SHAPE, test_shape=PLATE_SHAPE, ra_deg=84.9, dec_deg=7.4, rotation_deg=0.2,
          scale_arcsec=PLATE_SCALE_ARCSEC, sip_distortion_px=1.5, date_obs=PLATE_DATE_OBS, exptime_s=PLATE_EXPTIME_S,
          star_density_per_deg2=4000.0, bright_mag=8.0, pm_sigma_masyr=6.0, catalog_release="dr2",
          psf_model="kolmogorov", fwhm_px=2.2, zero_point_mag=17.6, sky_adu=400.0, read_noise_e=0.0,
          photographic=True, bleed=False, header_style="dss", pointing_error_arcmin=1.5, rotation_error_deg=0.2,
          scale_error_frac=0.003),
    Scene("sparse", f"{SPARSE_EXPTIME_S:g} s exposure of a thin field (a few hundred stars detected)", seed=204,
          shape=CONDOR_SHAPE, test_shape=(3194, 4788), ra_deg=205.0, dec_deg=48.0, rotation_deg=179.5,
          exptime_s=SPARSE_EXPTIME_S, sky_adu=DEFAULT_SKY_ADU * SPARSE_EXPTIME_S / DEFAULT_EXPTIME_S,
          star_density_per_deg2=800.0, fwhm_px=3.0, cosmic_rays_per_mpix=CONDOR_CR_PER_MPIX / 4.0,
          pointing_error_arcmin=3.0),
    Scene("condor", "a full Condor frame 9576 x 6388 at 0.85\"/px, 3,000 stars/deg2, FWHM 2.8 px", seed=205,
          shape=CONDOR_SHAPE, test_shape=None, ra_deg=35.0, dec_deg=-22.0, rotation_deg=0.3,
          star_density_per_deg2=3000.0, fwhm_px=2.8, cosmic_rays_per_mpix=CONDOR_CR_PER_MPIX / 2.0, hot_columns=2,
          galaxy_density_per_deg2=1000.0),
    Scene("offset3x", f"honesty gate: header {GATE_OFFSET_ARCMIN:g}' off, 3x gaia.margin_deg: must fail, not lie",
          seed=206, shape=(1600, 2400), test_shape=(1600, 2400), ra_deg=140.0, dec_deg=30.0,
          star_density_per_deg2=3000.0, pointing_error_arcmin=GATE_OFFSET_ARCMIN),
    Scene("scale20", "honesty gate: header scale 20 % off: must fail, not lie", seed=207, shape=(1600, 2400),
          test_shape=(1600, 2400), ra_deg=320.0, dec_deg=-30.0, star_density_per_deg2=3000.0,
          scale_error_frac=0.20),
)}

Size = Literal["test", "bench"]


def case_scene(name: str, size: Size = "test") -> Scene:
    """A named case at its ``test`` or ``bench`` size, named ``gs-<case>-<size>``.

    Raises
    ------
    KeyError
        Unknown case, or a bench-only case asked at the test size.
    """
    if name not in CASES:
        raise KeyError(f"unknown GalSim case {name!r}; known: {', '.join(CASES)}")
    scene = CASES[name]
    if size == "test":
        if scene.test_shape is None:
            raise KeyError(f"GalSim case {name!r} exists at the bench size only")
        return dataclasses.replace(scene, name=f"gs-{name}-test", shape=scene.test_shape)
    if size != "bench":
        raise KeyError(f"size must be 'test' or 'bench', got {size!r}")
    return dataclasses.replace(scene, name=f"gs-{name}-bench")
