"""One exposure of the GalSim renderer: the frozen :class:`Scene`, its files and its TAN-SIP truth.

:mod:`astrodask.simulate.render` is our own renderer; tuning the solver against it alone would
tune it to its own assumptions. The GalSim renderer (the ``galsim_*`` modules of this package)
renders exposures with other models, drawn by GalSim (the field's standard image simulator): a
TAN + **SIP** truth (not TPV), Moffat or Kolmogorov PSFs with ellipticity, CCD noise, bleed
trails, a photographic characteristic curve, GalSim galaxies, cosmic rays, hot columns and
pixels, a satellite trail, real Gaia crowding, Gaia DR2-like catalogs without proper motions
and DSS plate-solution headers. GalSim is a test extra (``pip install 'astrodask[galsim]'``),
imported only inside the functions that draw (:func:`import_galsim`).

This module holds a :class:`Scene` (every field with a named ``SCENE_*`` default), the
:class:`SceneFiles` that :func:`astrodask.simulate.galsim_render.render_scene` writes, the exact
truth (:func:`truth_wcs`) and the header's approximate plate model (:func:`approximate_model`).

Conventions: pixels 0-based, ``i`` the column, ``j`` the row, pixel ``(i, j)`` centred on
integer coordinates (GalSim images are made with ``xmin = ymin = 0``); only FITS CRPIX is
1-based. ``rotation_deg``/``parity`` as in :mod:`astrodask.wcsutil`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from astropy.time import Time
from astropy.wcs import WCS, Sip

from astrodask.constants import GAIA_DR3_EPOCH
from astrodask.errors import ConfigError
from astrodask.sphere import offset_position
from astrodask.simulate.atmosphere import TurbulenceSpec
from astrodask.simulate.constants import (
    ARCSEC_PER_DEG,
    CONDOR_SCALE_ARCSEC,
    CONDOR_SHAPE,
    DAYS_PER_JULIAN_YEAR,
    DEFAULT_BIAS_ADU,
    DEFAULT_EXPTIME_S,
    DEFAULT_MAG_LIMIT,
    DEFAULT_POINTING_ERROR_ARCMIN,
    SECONDS_PER_DAY,
)
from astrodask.wcsutil import cd_matrix

__all__ = ["Scene", "SceneFiles", "approximate_model", "import_galsim", "truth_wcs"]

# --------------------------------------------------------------------------
# A scene's defaults (the GalSim renderer's own models; shared ones from astrodask.simulate.constants)
# --------------------------------------------------------------------------

#: Default largest SIP displacement at the frame corners, pixels.
SCENE_SIP_DISTORTION_PX: float = 3.0
#: SIP pattern in units of the half-diagonal R: {(p, q): coefficient of u^p v^q}, u = x/R, v = y/R.
#: A radial cubic plus an asymmetric quadratic; scaled together to ``sip_distortion_px``.
SIP_PATTERN_A: dict[tuple[int, int], float] = {(2, 0): 0.25, (1, 1): -0.15, (0, 2): 0.10, (3, 0): 1.0, (1, 2): 1.0}
SIP_PATTERN_B: dict[tuple[int, int], float] = {(0, 2): 0.20, (1, 1): 0.12, (2, 0): -0.08, (0, 3): 1.0, (2, 1): 1.0}
#: Default exposure start (ISO, UTC) of a CCD scene.
SCENE_DATE_OBS: str = "2024-10-15T04:30:00"
#: Default star density brighter than ``faint_mag``, per square degree.
SCENE_STAR_DENSITY_PER_DEG2: float = 3000.0
#: Default bright and faint limits of the catalog, G mag.
SCENE_BRIGHT_MAG: float = 7.0
#: Stars this much fainter than the catalog limit are rendered too (the sky is deeper), mag.
SCENE_EXTRA_DEPTH_MAG: float = 1.0
#: Slope of the luminosity function dN/dm ~ 10**(slope m), dex per mag.
SCENE_LF_SLOPE: float = 0.3
#: Proper-motion dispersion per axis of the field stars, mas/yr.
SCENE_PM_SIGMA_MASYR: float = 4.0
#: Catalog margin around the frame's enclosing circle, degrees (gaia.margin_deg is 0.2).
SCENE_CATALOG_MARGIN_DEG: float = 0.3
#: Catalog releases: reference epoch (Julian yr) and scaling of the position errors.
RELEASE_EPOCH_YR: dict[str, float] = {"dr3": GAIA_DR3_EPOCH, "dr2": 2015.5}
RELEASE_ERROR_FACTOR: dict[str, float] = {"dr3": 1.0, "dr2": 2.5}
#: Default PSF: Moffat beta, FWHM (pixels), distortion ellipticity and its angle (deg).
SCENE_MOFFAT_BETA: float = 2.5
SCENE_FWHM_PX: float = 3.0
#: Default photometric zero point: the G magnitude giving 1 ADU per second.
SCENE_ZERO_POINT_MAG: float = 22.0
#: Default sky (ADU per pixel per exposure of DEFAULT_EXPTIME_S), read noise (e-), gain (e-/ADU).
SCENE_SKY_ADU: float = 300.0
SCENE_READ_NOISE_E: float = 3.0
SCENE_GAIN_E_PER_ADU: float = 1.0
#: Default saturation (the 16-bit ADC's usable top), ADU.
SCENE_SATURATE_ADU: float = 60000.0
#: Photographic defaults: fog and maximum density, gamma, the exposure giving log10(2)*gamma
#: above fog (in sky units), the scan value at the maximum density, grain noise (density).
PLATE_FOG_DENSITY: float = 0.15
PLATE_GAMMA: float = 1.6
PLATE_MAX_DENSITY: float = 2.6
#: Photographic halo: flux fraction and FWHM relative to the core (a broad Moffat of HALO_BETA).
PLATE_HALO_FRACTION: float = 0.06
#: Approximate-header defaults: the position angle of the pointing error (deg), rotation
#: error (deg), fractional scale error.
SCENE_POINTING_ERROR_PA_DEG: float = 40.0
SCENE_ROTATION_ERROR_DEG: float = 0.3
SCENE_SCALE_ERROR_FRAC: float = 0.002


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
    sip_distortion_px: float = SCENE_SIP_DISTORTION_PX
    #: atmospheric displacement of the stars (astrodask.simulate.atmosphere); None: none
    turbulence: TurbulenceSpec | None = None
    # time
    date_obs: str = SCENE_DATE_OBS  #: exposure start, ISO UTC (the truth epoch is mid-exposure)
    exptime_s: float = DEFAULT_EXPTIME_S
    # stars and catalog
    star_density_per_deg2: float = SCENE_STAR_DENSITY_PER_DEG2
    bright_mag: float = SCENE_BRIGHT_MAG
    faint_mag: float = DEFAULT_MAG_LIMIT
    extra_depth_mag: float = SCENE_EXTRA_DEPTH_MAG
    lf_slope: float = SCENE_LF_SLOPE
    seed_catalog: str | None = None  #: a real catalog (read_catalog) whose pattern seeds the stars
    pm_sigma_masyr: float = SCENE_PM_SIGMA_MASYR
    catalog_release: Literal["dr3", "dr2"] = "dr3"
    catalog_margin_deg: float = SCENE_CATALOG_MARGIN_DEG
    # PSF
    psf_model: Literal["moffat", "kolmogorov"] = "moffat"
    fwhm_px: float = SCENE_FWHM_PX
    moffat_beta: float = SCENE_MOFFAT_BETA
    psf_e: float = 0.0  #: distortion ellipticity (a^2 - b^2) / (a^2 + b^2)
    psf_angle_deg: float = 0.0  #: major axis, counter-clockwise from +i
    # photometry and detector
    zero_point_mag: float = SCENE_ZERO_POINT_MAG
    sky_adu: float = SCENE_SKY_ADU
    read_noise_e: float = SCENE_READ_NOISE_E
    gain_e_per_adu: float = SCENE_GAIN_E_PER_ADU
    bias_adu: float = DEFAULT_BIAS_ADU
    saturate_adu: float = SCENE_SATURATE_ADU
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
    pointing_error_pa_deg: float = SCENE_POINTING_ERROR_PA_DEG
    rotation_error_deg: float = SCENE_ROTATION_ERROR_DEG
    scale_error_frac: float = SCENE_SCALE_ERROR_FRAC

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
        return float(Time(self.date_obs, scale="tt").jyear + self.exptime_s / 2.0 / SECONDS_PER_DAY
                     / DAYS_PER_JULIAN_YEAR)

    @property
    def area_deg2(self) -> float:
        """Sky area of the frame, square degrees."""
        ny, nx = self.shape
        return nx * ny * (self.scale_arcsec / ARCSEC_PER_DEG) ** 2


@dataclass(frozen=True)
class SceneFiles:
    """The files :func:`~astrodask.simulate.galsim_render.render_scene` writes."""

    image: Path  #: ``<name>.fits.fz``: RICE tile-compressed, image in HDU 1
    catalog: Path  #: ``<name>_gaia.ecsv``: Gaia archive columns, read by astrodask.reference.catalog.read_catalog
    truth_wcs: Path  #: ``<name>.truth.wcs.fits``: the exact TAN-SIP truth (astrodask.simulate.read_truth_wcs)
    truth_table: Path  #: ``<name>.truth.ecsv``: per-star truth
    render_s: float = 0.0  #: wall time of the render, seconds


def import_galsim() -> Any:
    """Import GalSim, or say how to install it (the package imports without it: only drawing needs it)."""
    try:
        import galsim
    except ImportError as err:
        raise ImportError("the GalSim renderer (astrodask.simulate.galsim_*) needs GalSim: "
                          "pip install 'astrodask[galsim]'") from err
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


def approximate_model(scene: Scene, *, distortion: bool) -> WCS:
    """The approximate plate model of the header: the truth off by the scene's errors.

    The tangent point moves ``pointing_error_arcmin`` towards ``pointing_error_pa_deg``,
    the rotation by ``rotation_error_deg`` and the scale by ``1 + scale_error_frac``;
    with ``distortion`` the truth's SIP terms are kept (a plate solution carries its
    distortion), otherwise the model is a plain TAN.
    """
    ra, dec = offset_position(scene.ra_deg, scene.dec_deg, scene.pointing_error_arcmin / 60.0,
                              scene.pointing_error_pa_deg)
    return _tan_sip(scene, ra_deg=ra, dec_deg=dec, scale_arcsec=scene.scale_arcsec * (1.0 + scene.scale_error_frac),
                    rotation_deg=scene.rotation_deg + scene.rotation_error_deg, sip=distortion)


def half_diagonal_deg(scene: Scene) -> float:
    """Half the frame's diagonal on the sky, degrees."""
    ny, nx = scene.shape
    return 0.5 * math.hypot(nx, ny) * scene.scale_arcsec / ARCSEC_PER_DEG
