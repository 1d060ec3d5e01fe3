"""The header a telescope would write for a simulated exposure: :func:`approximate_header`.

An approximate plain TAN WCS, or only RA/DEC keywords in one of the formats telescopes
use, off the truth by chosen pointing, rotation and scale errors; plus the exposure and
detector keywords.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from astropy import units as u
from astropy.coordinates import Angle
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS

from astrodask.errors import ConfigError
from astrodask.simulate._checks import resolve_shape
from astrodask.sphere import offset_positions
from astrodask.simulate.constants import (
    CONDOR_PIXEL_SIZE_UM,
    DAYS_PER_JULIAN_YEAR,
    DEFAULT_EPOCH_YR,
    DEFAULT_EXPTIME_S,
    DEFAULT_POINTING_ERROR_ARCMIN,
    DEFAULT_ROTATION_ERROR_DEG,
    DEFAULT_SCALE_ERROR_FRAC,
    J2000_MJD,
    SECONDS_PER_DAY,
)
from astrodask.simulate.render import DEFAULT_GAIN_E_PER_ADU, DEFAULT_READ_NOISE_E, DEFAULT_SATURATION_ADU
from astrodask.wcsutil import cd_matrix, cd_to_scale_rotation_parity

__all__ = ["HeaderStyle", "RaDecFormat", "approximate_header"]

#: Header keywords of a simulated exposure.
TELESCOPE_NAME: str = "Condor Array Telescope"
INSTRUMENT_NAME: str = "QHY600M"
DEFAULT_FILTER: str = "luminance"

HeaderStyle = Literal["wcs", "keywords"]
RaDecFormat = Literal["both", "sexagesimal", "degrees", "objctra"]


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
    ny, nx = resolve_shape(shape, truth_wcs)
    ra_c, dec_c = truth_wcs.pixel_to_world_values((nx - 1) / 2.0, (ny - 1) / 2.0)
    ra_a, dec_a = offset_positions(float(ra_c), float(dec_c),
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
