"""DSS plate solutions for the GalSim renderer's ``header_style="dss"``: write them, read them, check them.

Following wcslib's reading of the DSS keywords (checked numerically against astropy on a
real DSS header, see :func:`dss_sky`): plate coordinates in mm
``X = (PPO3 - XPIXELSZ * (CNPIX1 + p1 - 0.5)) / 1000``,
``Y = (YPIXELSZ * (CNPIX2 + p2 - 0.5) - PPO6) / 1000`` with ``p1, p2`` 1-based pixels,
standard coordinates ``xi, eta`` (arcsec) from the AMDX/AMDY polynomials, gnomonic about
the plate centre PLTRA/PLTDEC. :func:`dss_header` fits the polynomials to a plate model;
every written DSS header is read back with ``astropy.wcs.WCS`` and checked against the
model it encodes (:func:`check_dss_header`).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS, FITSFixedWarning

from astrodask.sphere import angular_separation_deg
from astrodask.sphere import gnomonic, inverse_gnomonic
from astrodask.simulate.constants import ARCSEC_PER_DEG

__all__ = ["check_dss_header", "dss_header", "dss_sky"]

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
    return inverse_gnomonic(np.radians(xi), np.radians(eta), *_plate_centre_deg(header))


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
    ra_p, dec_p = inverse_gnomonic(np.array(-dxi), np.array(-deta), ra_c, dec_c)
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
    xi, eta = (np.degrees(v) * ARCSEC_PER_DEG for v in gnomonic(ra, dec, *_plate_centre_deg(h)))
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
    worst = worst_px(ra_b, dec_b, ra, dec, scale_arcsec)
    return h, worst




def worst_px(ra1: np.ndarray, dec1: np.ndarray, ra2: np.ndarray, dec2: np.ndarray, scale_arcsec: float) -> float:
    """Largest angular distance between two lists of positions, in pixels of ``scale_arcsec``."""
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
    return worst_px(ra1, dec1, ra2, dec2, scale_arcsec)
