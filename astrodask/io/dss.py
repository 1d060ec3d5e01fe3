"""Digitized Sky Survey (DSS) plate solutions: photographic plate scans without a FITS WCS.

A DSS scan carries the plate's astrometric solution as keywords: the plate centre
(PLTRAH/PLTRAM/PLTRAS, PLTDECSN/PLTDECD/PLTDECM/PLTDECS), the scan geometry
(PPO1-6, XPIXELSZ, YPIXELSZ, CNPIX1/2 of a cutout) and the AMDX/AMDY polynomials
from plate millimetres to standard coordinates. wcslib already evaluates them
(``astropy.wcs.WCS(header)`` builds a TAN projection with a polynomial distortion
from them), so no polynomial is evaluated here: :func:`fit_plate_solution` samples
wcslib's transformation on a grid of pixels over the image and fits the plain TAN
WCS the rest of the pipeline works with.

Without AMDX/AMDY, PLTSCALE (arcsec/mm) times XPIXELSZ (microns) still gives the
pixel scale (:func:`plate_scale_arcsec`), and the plate centre with CNPIX1/2 and
PPO3/PPO6 an approximate position of a cutout's centre (:func:`cutout_centre_deg`).
Pixels are 0-based here as everywhere in astrodask; FITS pixels (CNPIX, CRPIX) are
1-based and converted where they are read.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
from astropy import units as u
from astropy.coordinates import Angle, SkyCoord
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning
from astropy.wcs.utils import fit_wcs_from_points

from astrodask.errors import HeaderError
from astrodask.wcsutil import wcs_error_mas

log = logging.getLogger(__name__)

#: The plate centre keywords of a DSS header.
PLATE_CENTRE_KEYWORDS: tuple[str, ...] = ("PLTRAH", "PLTRAM", "PLTRAS", "PLTDECSN", "PLTDECD", "PLTDECM",
                                          "PLTDECS")
#: Every keyword of the DSS plate solution (wcslib builds its transformation from these).
DSS_KEYWORDS: tuple[str, ...] = (
    *PLATE_CENTRE_KEYWORDS, "PLTSCALE", "XPIXELSZ", "YPIXELSZ", "CNPIX1", "CNPIX2",
    *(f"PPO{k}" for k in range(1, 7)), *(f"AMDX{k}" for k in range(1, 21)), *(f"AMDY{k}" for k in range(1, 21)),
)
#: The keywords without which there is no DSS plate solution to evaluate.
DSS_REQUIRED: tuple[str, ...] = (*PLATE_CENTRE_KEYWORDS, "XPIXELSZ", "YPIXELSZ", "PPO3", "PPO6", "AMDX1",
                                 "AMDX2", "AMDX3", "AMDY1", "AMDY2", "AMDY3")
#: FITS celestial WCS keywords (by prefix) removed before wcslib reads the DSS solution.
FITS_WCS_PREFIXES: tuple[str, ...] = ("CTYPE", "CRVAL", "CRPIX", "CDELT", "CROTA", "CD1_", "CD2_", "PC1_", "PC2_",
                                      "CUNIT", "PV1_", "PV2_", "A_", "B_", "AP_", "BP_", "LONPOLE", "LATPOLE",
                                      "WCSAXES")
#: Pixels per image axis of the grid on which the DSS solution is sampled for the TAN fit.
FIT_GRID_POINTS = 21
#: A TAN fit to the DSS solution that strays more than this anywhere on the image is logged as a warning
#: (the plate's distortion is then visible at the scale of the approximate WCS).
FIT_WARN_ARCSEC = 2.0
#: The fitted TAN WCS's pixel scale may differ from PLTSCALE x XPIXELSZ by at most this fraction;
#: beyond it the plate solution is taken as damaged (wcslib folds absurd coefficients onto
#: finite but meaningless sky positions rather than non-finite ones).
SCALE_TOLERANCE = 0.1
#: Microns per millimetre: PLTSCALE is arcsec/mm, XPIXELSZ microns.
MICRONS_PER_MM = 1000.0


@dataclass(frozen=True)
class PlateFit:
    """A plain TAN WCS fitted to a DSS plate solution over an image.

    Attributes
    ----------
    wcs
        The TAN WCS (CD matrix, 1-based CRPIX as FITS wants it), tangent at the image centre.
    max_residual_arcsec, rms_residual_arcsec
        Distance between the TAN WCS and the DSS solution on a grid over the whole
        image (edges and corners included), arcsec.
    n_points
        Grid points used in the fit.
    """

    wcs: WCS
    max_residual_arcsec: float
    rms_residual_arcsec: float
    n_points: int


def has_plate_solution(header: fits.Header) -> bool:
    """True when the header carries a DSS plate solution (plate centre, scan geometry, AMDX/AMDY)."""
    return all(key in header for key in DSS_REQUIRED)


def without_plate_solution(header: fits.Header) -> fits.Header:
    """A copy of the header without the DSS keywords, so that wcslib reads its FITS WCS keywords.

    wcslib prefers a DSS plate solution to CTYPE/CRVAL/CD when a header has both.
    """
    stripped = header.copy()
    for key in DSS_KEYWORDS:
        stripped.remove(key, ignore_missing=True, remove_all=True)
    return stripped


def _without_fits_wcs(header: fits.Header) -> fits.Header:
    stripped = header.copy()
    for key in list(stripped.keys()):
        if key.startswith(FITS_WCS_PREFIXES):
            stripped.remove(key, ignore_missing=True, remove_all=True)
    return stripped


def plate_wcs(header: fits.Header, *, path: object = "") -> WCS:
    """wcslib's transformation of the DSS plate solution (TAN with a polynomial distortion).

    Raises
    ------
    HeaderError
        The DSS keywords are absent, or wcslib cannot read them.
    """
    if not has_plate_solution(header):
        missing = [key for key in DSS_REQUIRED if key not in header]
        raise HeaderError(f"{path}: no DSS plate solution (missing {', '.join(missing)})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(_without_fits_wcs(header), naxis=2)
        except (ValueError, KeyError, MemoryError) as err:
            raise HeaderError(f"{path}: the DSS plate solution cannot be read by wcslib ({err})") from err
    if not wcs.has_celestial:
        raise HeaderError(f"{path}: wcslib built no celestial transformation from the DSS keywords")
    return wcs


def fit_plate_solution(header: fits.Header, shape: tuple[int, int], *, path: object = "",
                       grid_points: int = FIT_GRID_POINTS) -> PlateFit:
    """A plain TAN WCS fitted to the header's DSS plate solution over an image.

    wcslib evaluates the plate solution on a ``grid_points`` x ``grid_points`` grid of
    0-based pixel centres spanning the image; a TAN WCS (no SIP) tangent at the
    sky position of the image centre is fitted to it, and its residuals are measured
    on the same grid.

    Parameters
    ----------
    header
        A header with the DSS keywords (FITS WCS keywords, if any, are ignored).
    shape
        Image shape (ny, nx).
    path
        The file, for messages.
    grid_points
        Grid points per axis (at least 3).

    Returns
    -------
    PlateFit
        The TAN WCS and its residuals against the plate solution.

    Raises
    ------
    HeaderError
        No plate solution, an empty shape, wcslib gives non-finite sky positions, or
        the fitted pixel scale is not the plate's (PLTSCALE x XPIXELSZ, within
        :data:`SCALE_TOLERANCE`).
    """
    ny, nx = shape
    if nx < 2 or ny < 2:
        raise HeaderError(f"{path}: image shape {shape} is too small to fit a WCS to the DSS plate solution")
    dss = plate_wcs(header, path=path)
    ii, jj = np.meshgrid(np.linspace(0.0, nx - 1.0, max(grid_points, 3)),
                         np.linspace(0.0, ny - 1.0, max(grid_points, 3)))
    i, j = ii.ravel(), jj.ravel()
    ra, dec = dss.all_pix2world(i, j, 0)
    centre = dss.all_pix2world([[(nx - 1) / 2.0, (ny - 1) / 2.0]], 0)[0]
    if not (np.all(np.isfinite(ra)) and np.all(np.isfinite(dec)) and np.all(np.isfinite(centre))):
        bad = int(np.count_nonzero(~(np.isfinite(ra) & np.isfinite(dec))))
        raise HeaderError(f"{path}: the DSS plate solution gives non-finite sky positions at {bad} of "
                          f"{i.size} pixels of the {nx} x {ny} image")
    world = SkyCoord(ra * u.deg, dec * u.deg, frame="icrs")
    tangent = SkyCoord(centre[0] * u.deg, centre[1] * u.deg, frame="icrs")
    # fit_wcs_from_points evaluates its model with origin 0 (its docstring says 1-based):
    # 0-based pixels in, a FITS (1-based) CRPIX out; the residual check below pins it.
    tan = fit_wcs_from_points((i, j), world, proj_point=tangent, projection="TAN", sip_degree=None)
    tan.pixel_shape = (nx, ny)
    _check_scale(tan, header, path)
    step = max(nx - 1, ny - 1) / (max(grid_points, 3) - 1)
    error = wcs_error_mas(tan, dss, shape, step_px=step) / 1000.0
    fit = PlateFit(tan, float(error.max()), float(np.sqrt(np.mean(error**2))), int(i.size))
    level = logging.WARNING if fit.max_residual_arcsec > FIT_WARN_ARCSEC else logging.INFO
    log.log(level, "%s: TAN WCS fitted to the DSS plate solution on %d points: max residual %.3f\", rms %.3f\"",
            path, fit.n_points, fit.max_residual_arcsec, fit.rms_residual_arcsec)
    return fit


def _check_scale(tan: WCS, header: fits.Header, path: object) -> None:
    """Raise HeaderError when the fitted scale is not that of the plate (PLTSCALE x XPIXELSZ)."""
    fitted = float(np.sqrt(abs(np.linalg.det(tan.pixel_scale_matrix)))) * 3600.0
    nominal = plate_scale_arcsec(header)
    if not np.isfinite(fitted) or fitted <= 0.0 or (
            nominal is not None and abs(fitted / nominal - 1.0) > SCALE_TOLERANCE):
        raise HeaderError(f"{path}: the DSS plate solution gives a pixel scale of {fitted:.4g}\"/px, not the "
                          f"plate's {nominal}\"/px (PLTSCALE x XPIXELSZ): its AMDX/AMDY coefficients look damaged")


def plate_scale_arcsec(header: fits.Header) -> float | None:
    """Pixel scale (arcsec/px) from PLTSCALE (arcsec/mm) x XPIXELSZ (microns) / 1000, or None."""
    scale = _positive(header, "PLTSCALE")
    pixel = _positive(header, "XPIXELSZ")
    if scale is None or pixel is None:
        return None
    return scale * pixel / MICRONS_PER_MM


def plate_centre_deg(header: fits.Header, *, path: object = "") -> tuple[float, float] | None:
    """The plate centre (RA, Dec, degrees) from PLTRAH/PLTRAM/PLTRAS and PLTDECSN/PLTDECD/PLTDECM/PLTDECS.

    None when any of them is absent.

    Raises
    ------
    HeaderError
        A keyword is present but not a number, or the position is not on the sky.
    """
    if not all(key in header for key in PLATE_CENTRE_KEYWORDS):
        return None
    try:
        hours = float(header["PLTRAH"]) + float(header["PLTRAM"]) / 60.0 + float(header["PLTRAS"]) / 3600.0
        degrees = float(header["PLTDECD"]) + float(header["PLTDECM"]) / 60.0 + float(header["PLTDECS"]) / 3600.0
    except (TypeError, ValueError) as err:
        raise HeaderError(f"{path}: the DSS plate centre PLTRA*/PLTDEC* is not numeric ({err})") from err
    sign = -1.0 if str(header["PLTDECSN"]).strip().startswith("-") else 1.0
    ra = float(Angle(hours, unit=u.hourangle).degree) % 360.0
    dec = sign * degrees
    if not -90.0 <= dec <= 90.0:
        raise HeaderError(f"{path}: the DSS plate centre declination {dec} is not on the sky")
    return ra, dec


def cutout_centre_deg(header: fits.Header, shape: tuple[int, int], *, path: object = "") -> tuple[float, float] | None:
    """Approximate sky position of a DSS cutout's centre without the AMDX/AMDY polynomials.

    The cutout's centre in plate millimetres (CNPIX1/2: its 1-based corner on the
    scan; PPO3/PPO6: the plate centre in microns; XPIXELSZ/YPIXELSZ) times PLTSCALE
    gives its standard coordinates from the plate centre, plate x pointing west and
    y north as on DSS plates; the TAN projection at the plate centre gives the sky.
    This neglects the plate's distortion and the offset terms of the AMD polynomials
    (a few arcminutes); it is far better than the plate centre for a cutout degrees
    away from it. None when any keyword is missing.
    """
    needed = ("CNPIX1", "CNPIX2", "PPO3", "PPO6", "PLTSCALE", "XPIXELSZ", "YPIXELSZ")
    centre = plate_centre_deg(header, path=path)
    values = {key: _number(header, key) for key in needed}
    ny, nx = shape
    if centre is None or any(v is None for v in values.values()) or nx < 1 or ny < 1:
        return None
    # 0-based image centre -> 1-based scan pixel CNPIX + (n - 1) / 2 + 1 -> its centre is 0.5 before it
    x_scan = values["CNPIX1"] + (nx - 1) / 2.0 + 0.5
    y_scan = values["CNPIX2"] + (ny - 1) / 2.0 + 0.5
    x_mm = (values["PPO3"] - values["XPIXELSZ"] * x_scan) / MICRONS_PER_MM
    y_mm = (values["YPIXELSZ"] * y_scan - values["PPO6"]) / MICRONS_PER_MM
    xi_deg, eta_deg = values["PLTSCALE"] * x_mm / 3600.0, values["PLTSCALE"] * y_mm / 3600.0
    projection = WCS(naxis=2)
    projection.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    projection.wcs.crval = list(centre)
    projection.wcs.crpix = [1.0, 1.0]  # 0-based pixel (xi, eta) -> intermediate coordinates (xi, eta)
    projection.wcs.cd = np.eye(2)
    ra, dec = projection.wcs_pix2world([[xi_deg, eta_deg]], 0)[0]
    return float(ra) % 360.0, float(dec)


def _number(header: fits.Header, key: str) -> float | None:
    try:
        value = float(header[key])
    except (KeyError, TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


def _positive(header: fits.Header, key: str) -> float | None:
    value = _number(header, key)
    return value if value is not None and value > 0 else None
