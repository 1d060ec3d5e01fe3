"""Reading exposures: FITS or tile-compressed ``.fits.fz``, their pointing and epoch.

:func:`read_exposure` finds the 2-D image in any HDU, applies BZERO/BSCALE and
returns native-endian pixels (FITS data is big-endian, and SEP refuses it): integers
of up to 16 bits as they are, anything else float32 (:func:`native_pixels`), with the
header facts the pipeline uses.  :func:`get_pointing` resolves the
approximate pointing, in order: command-line overrides, an approximate WCS in the
header, a TAN WCS fitted to a DSS plate solution (:mod:`astrodask.io.dss`), RA/DEC
keywords or the DSS plate centre with the header's plate scale (PLTSCALE x
XPIXELSZ) or the configured one.  Each result says where its values came from
(:attr:`Pointing.source`, :attr:`Pointing.scale_source`, :attr:`ExposureInfo.provenance`).
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.coordinates import Angle
from astropy.io import fits
from astropy.io.fits.verify import VerifyError
from astropy.time import Time
from astropy.wcs import WCS, FITSFixedWarning
from erfa import ErfaWarning

from astrodask.io import dss
from astrodask.config import DetectConfig, PointingConfig
from astrodask.errors import HeaderError, ImageError, InputFileError, PointingError
from astrodask.types import Exposure, ExposureInfo, Pointing
from astrodask.wcsutil import cd_to_scale_rotation_parity, tan_wcs

log = logging.getLogger(__name__)

try:  # astropy's tile decompression raises its own class, derived from Exception only
    from astropy.io.fits.hdu.compressed._compression import CfitsioException as _CompressionError
except ImportError:  # pragma: no cover - another astropy layout: such errors stay internal errors
    class _CompressionError(Exception):  # type: ignore[no-redef]
        """Stands for astropy's decompression error where astropy does not have it."""

#: Keyword pairs searched for the pointing, in order.
POINTING_KEYWORDS: tuple[tuple[str, str], ...] = (
    ("RA", "DEC"),
    ("OBJCTRA", "OBJCTDEC"),
    ("RA_OBJ", "DEC_OBJ"),
    ("TELRA", "TELDEC"),
    ("CRVAL1", "CRVAL2"),
)
#: Source of a pointing read from a DSS plate solution (a TAN WCS fitted to it).
DSS_SOURCE = "header-dss (AMDX/AMDY plate solution)"
#: The old FITS date form 'dd/mm/yy' (years 1900-1999), still written by photographic plate scans.
OLD_FITS_DATE = re.compile(r"^\s*(\d{1,2})/(\d{1,2})/(\d{2})\s*$")
#: Century of the two-digit years of the old FITS date form.
OLD_FITS_CENTURY = 1900
#: A CD matrix whose determinant is at most this fraction of the sum of its squared elements is
#: singular (its two columns parallel to 1e-9 rad): no image maps through it.
SINGULAR_CD_RELATIVE_DET = 1e-9
#: A header whose CD matrix has an element larger than this (deg/px) describes no telescope's pixels.
MAX_PIXEL_SCALE_DEG = 10.0
#: Numeric WCS keywords that wcslib would silently read as 0 when they are not numbers.
WCS_NUMBER_KEYS = ("CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2", "CD1_1", "CD1_2", "CD2_1", "CD2_2", "CDELT1", "CDELT2")
#: Seconds per minute, for EXPOSURE keywords whose comment says minutes.
SECONDS_PER_MINUTE = 60.0
#: Keywords that inherit from the primary header when the image is in an extension.
_IMAGE_ONLY = {"SIMPLE", "XTENSION", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "EXTEND",
               "PCOUNT", "GCOUNT", "BZERO", "BSCALE", "BLANK", "CHECKSUM", "DATASUM", "EXTNAME",
               "COMMENT", "HISTORY", ""}


def read_exposure(path: str | Path, *, hdu: int | None = None) -> Exposure:
    """Read an exposure's image and the header facts the pipeline needs.

    Parameters
    ----------
    path
        A FITS file, plain or tile-compressed (``.fits.fz``).
    hdu
        Index of the image HDU; by default the first HDU holding a 2-D image.

    Returns
    -------
    Exposure
        Native-endian pixels (BZERO/BSCALE applied; :func:`native_pixels`), merged header,
        epoch, gain, saturation level and exposure time.

    Raises
    ------
    InputFileError
        The file is missing or is not a FITS file.
    ImageError
        No 2-D image in the file, the requested HDU is absent or not 2-D, the file holds
        less data than its header declares, a compressed tile is damaged, or BZERO/BSCALE
        scale integer pixels beyond the float32 range.
    """
    path = _check_file(path)
    with _open_fits(path) as hdul:
        index = _find_image_hdu(path, hdul, hdu)
        image_hdu = hdul[index]
        _check_data_size(path, image_hdu, index)
        scaling = _scaling(image_hdu)  # before .data: astropy drops BSCALE/BZERO once it applied them
        try:
            raw = image_hdu.data
        except (OSError, ValueError, TypeError) as err:
            raise ImageError(f"{path}: HDU {index} image data cannot be decoded ({err})") from err
        except _CompressionError as err:
            raise ImageError(f"{path}: HDU {index}: a tile of the compressed image cannot be decompressed "
                             f"({err}): the file is damaged or truncated; copy it again from its source") from err
        data = native_pixels(raw)
        _check_scaling(path, scaling, index, data)
        header = _merged_header(hdul, index)
    return Exposure(
        path=path,
        hdu_index=index,
        data=data,
        header=header,
        epoch_yr=header_epoch(header, path=path),
        gain=_positive_float(header, "GAIN"),
        saturate_adu=_positive_float(header, "SATURATE"),
        exptime_s=exposure_time(header)[0],
    )


def exposure_from_array(data: np.ndarray, header: fits.Header, *, name: str = "image") -> Exposure:
    """An exposure already in memory: a 2-D image and its FITS header (a pipeline's own frame).

    Parameters
    ----------
    data
        Image pixels, shape (ny, nx); kept as :func:`native_pixels` keeps them (the input is not modified).
    header
        Its FITS header: the pointing, epoch, gain and saturation are read from it as from a file's.
    name
        The exposure's name in results and output files (there is no file).

    Raises
    ------
    ImageError
        ``data`` is not a non-empty 2-D array.
    """
    array = np.asarray(data)
    if array.ndim != 2 or min(array.shape) < 1:
        raise ImageError(f"{name}: an exposure needs a non-empty 2-D image, got shape {array.shape}")
    header = fits.Header(header)
    return Exposure(
        path=Path(name),
        hdu_index=0,
        data=native_pixels(array, copy=True),
        header=header,
        epoch_yr=header_epoch(header, path=name),
        gain=_positive_float(header, "GAIN"),
        saturate_adu=_positive_float(header, "SATURATE"),
        exptime_s=exposure_time(header)[0],
    )


def read_exposure_info(path: str | Path, *, hdu: int | None = None) -> ExposureInfo:
    """An exposure's header facts without decoding its pixels (cheap, for planning).

    The same file checks, HDU choice and header merge as :func:`read_exposure`; the
    shape comes from the header (``ZNAXISn`` for tile-compressed images).

    Raises
    ------
    InputFileError, ImageError
        As :func:`read_exposure`.
    """
    path = _check_file(path)
    with _open_fits(path) as hdul:
        index = _find_image_hdu(path, hdul, hdu)
        raw = hdul[index].header
        shape = (int(raw.get("ZNAXIS2", raw.get("NAXIS2", 0))), int(raw.get("ZNAXIS1", raw.get("NAXIS1", 0))))
        header = _merged_header(hdul, index)
    if min(shape) < 1:
        raise ImageError(f"{path}: HDU {index} has an empty image (shape {shape})")
    epoch, epoch_source = epoch_with_source(header, path=path)
    exptime, exptime_source = exposure_time(header)
    provenance = {"epoch": epoch_source, "exptime": exptime_source,
                  "gain": _keyword_source(header, "GAIN"), "saturate": _keyword_source(header, "SATURATE")}
    return ExposureInfo(path, index, header, shape, epoch, _positive_float(header, "GAIN"),
                        _positive_float(header, "SATURATE"), exptime, provenance)


def _check_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{path}: no such file")
    if not path.is_file():
        raise InputFileError(f"{path}: not a regular file")
    return path


def _open_fits(path: Path) -> fits.HDUList:
    try:
        return fits.open(path, memmap=False)
    except (OSError, ValueError, TypeError) as err:
        raise InputFileError(f"{path}: not a readable FITS file ({err})") from err


def _check_data_size(path: Path, hdu: fits.hdu.base.ExtensionHDU, index: int) -> None:
    """Raise when an uncompressed image HDU declares more pixels than the file holds after its header."""
    if isinstance(hdu, fits.CompImageHDU):
        return  # its pixels are in a binary table: a damaged one fails to decompress
    header = hdu.header
    nx, ny, bitpix = int(header.get("NAXIS1", 0)), int(header.get("NAXIS2", 0)), int(header.get("BITPIX", 8))
    need = nx * ny * abs(bitpix) // 8
    info = hdu.fileinfo()
    if info is None or need == 0:
        return
    have = path.stat().st_size - int(info["datLoc"])
    if have < need:
        raise ImageError(f"{path}: HDU {index} header declares a {nx} x {ny} px image of BITPIX {bitpix} "
                         f"({need} bytes) but the file holds {max(have, 0)} bytes after the header: the image "
                         "size differs from its header (a truncated or mis-written file)")


#: Integer pixels of at most this many bytes are kept as integers: float32 holds each of their values
#: exactly, and the detection converts them to float32 once, as it subtracts the background (a float32
#: copy here was a second copy of the image: 245 MB and 0.3 s of CPU on a 61-megapixel frame).
MAX_INTEGER_PIXEL_BYTES = 2


def native_pixels(raw: np.ndarray, *, copy: bool = False) -> np.ndarray:
    """An image's pixels as an exposure keeps them: native byte order, C order, in memory of their own.

    Integers of up to :data:`MAX_INTEGER_PIXEL_BYTES` bytes (a camera's uint16 with BZERO 32768, int16,
    uint8) keep their type; anything else becomes float32, as before.

    Parameters
    ----------
    raw
        The pixels (from astropy, or a caller's array).
    copy
        Copy even when ``raw`` is already in that form (a caller's array, which may change later).
    """
    if raw.dtype.kind in "iu" and raw.dtype.itemsize <= MAX_INTEGER_PIXEL_BYTES:
        dtype = raw.dtype.newbyteorder("=")
    else:
        dtype = np.dtype(np.float32)
    owned = raw.flags.owndata and type(raw) is np.ndarray
    with np.errstate(over="ignore", invalid="ignore"):
        return np.array(raw, dtype=dtype, order="C", copy=True if copy or not owned else None)


def _scaling(hdu: fits.hdu.base.ExtensionHDU) -> tuple[int, object, object]:
    """BITPIX (of the pixels as stored), BSCALE and BZERO of an image HDU, as its header says."""
    header = hdu.header
    bitpix = int(header.get("ZBITPIX", header.get("BITPIX", -32)))
    return bitpix, header.get("BSCALE", 1), header.get("BZERO", 0)


def _check_scaling(path: Path, scaling: tuple[int, object, object], index: int, data: np.ndarray) -> None:
    """Raise when BZERO/BSCALE turn finite integer pixels into infinities (an overflow of float32)."""
    bitpix, bscale, bzero = scaling
    if bitpix < 0 or data.dtype.kind in "iu":
        return  # float pixels may hold infinities of their own; integers hold none
    n_inf = int(np.count_nonzero(np.isinf(data)))
    if n_inf:
        raise ImageError(f"{path}: HDU {index}: BSCALE = {bscale!r} and BZERO = {bzero!r} scale the integer "
                         f"pixels (BITPIX {bitpix}) beyond the float32 range: {n_inf} of {data.size} pixels "
                         "overflow; the header's scaling keywords are wrong")


def _merged_header(hdul: fits.HDUList, index: int) -> fits.Header:
    """The image HDU's header with the primary header's cards it lacks."""
    header = hdul[index].header.copy()
    if index > 0:
        for card in hdul[0].header.cards:
            if card.keyword not in _IMAGE_ONLY and card.keyword not in header:
                header.append(card)
    header.remove("NAXIS3", ignore_missing=True)
    return header


def _find_image_hdu(path: Path, hdul: fits.HDUList, hdu: int | None) -> int:
    def ndim(h: fits.hdu.base.ExtensionHDU) -> int:
        return int(h.header.get("ZNAXIS", h.header.get("NAXIS", 0))) if _is_image(h) else 0

    if hdu is not None:
        if not 0 <= hdu < len(hdul):
            raise ImageError(f"{path}: HDU {hdu} does not exist (the file has {len(hdul)} HDUs)")
        if not _is_image(hdul[hdu]):
            raise ImageError(f"{path}: HDU {hdu} is a {type(hdul[hdu]).__name__}, not an image")
        if ndim(hdul[hdu]) != 2:
            raise ImageError(f"{path}: HDU {hdu} holds {ndim(hdul[hdu])}-D data; a 2-D image is needed")
        return hdu
    dims = [ndim(h) for h in hdul]
    for index, n in enumerate(dims):
        if n == 2:
            return index
    found = [f"HDU {i}: {n}-D" for i, n in enumerate(dims) if n > 0]
    if found:
        raise ImageError(f"{path}: no 2-D image ({', '.join(found)}); a single 2-D image is needed")
    raise ImageError(f"{path}: no image HDU in the file (it has {len(hdul)} HDUs, none with image data)")


def _is_image(h: object) -> bool:
    return isinstance(h, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU))


def _positive_float(header: fits.Header, key: str) -> float | None:
    value = header.get(key)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def header_epoch(header: fits.Header, *, path: str | Path = "") -> float | None:
    """Julian epoch of the observation from DATE-OBS (with TIME-OBS/UT) or MJD-OBS.

    Returns None when the header has neither; a malformed value is logged and ignored.
    See :func:`epoch_with_source`.
    """
    return epoch_with_source(header, path=path)[0]


def epoch_with_source(header: fits.Header, *, path: str | Path = "") -> tuple[float | None, str]:
    """Julian epoch of the observation and where it came from.

    DATE-OBS in ISO form (``'1990-12-22T13:49:00'``, or a date with the clock in
    TIME-OBS or UT) or in the old FITS form ``'dd/mm/yy'`` (year 19yy, e.g.
    ``'29/11/51'``, with TIME-OBS/UT when given); else MJD-OBS.

    Returns
    -------
    epoch_yr, source
        The Julian epoch (None when the header gives none) and a description of
        the keywords read, e.g. ``"DATE-OBS '29/11/51' (old FITS dd/mm/yy, 19yy)"``
        or ``"none: catalog epoch assumed"``.
    """
    date = header.get("DATE-OBS")
    if isinstance(date, str) and date.strip():
        text, form = date.strip(), "ISO"
        old = OLD_FITS_DATE.match(text)
        if old:
            day, month, year = (int(g) for g in old.groups())
            text, form = f"{OLD_FITS_CENTURY + year:04d}-{month:02d}-{day:02d}", "old FITS dd/mm/yy, 19yy"
        clock_key = "TIME-OBS" if _is_text(header.get("TIME-OBS")) else "UT" if _is_text(header.get("UT")) else ""
        clock = str(header[clock_key]).strip() if clock_key else ""
        if "T" not in text and clock:
            text = f"{text}T{clock}"
        else:
            clock_key = ""
        source = f"DATE-OBS {date!r} ({form})" + (f" + {clock_key} {clock!r}" if clock_key else "")
        epoch = _julian_epoch(text)
        if epoch is not None:
            return epoch, source
        log.warning("%s: DATE-OBS %r is not a date; trying MJD-OBS", path, date)
    mjd = header.get("MJD-OBS")
    if mjd is not None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ErfaWarning)  # as in _julian_epoch
                return float(Time(float(mjd), format="mjd", scale="utc").jyear), f"MJD-OBS {mjd}"
        except (TypeError, ValueError):
            log.warning("%s: MJD-OBS %r is not a number", path, mjd)
    return None, "none: catalog epoch assumed"


def _julian_epoch(text: str) -> float | None:
    """Julian epoch of a UTC date (ISO, or any form astropy's Time reads), None if it is not a date."""
    with warnings.catch_warnings():
        # UTC before 1960 has no leap-second table: ERFA calls the year "dubious"; the
        # second-level error that remains is irrelevant for proper motions
        warnings.simplefilter("ignore", ErfaWarning)
        try:
            return float(Time(text, format="isot" if "T" in text else "iso", scale="utc").jyear)
        except ValueError:
            try:
                return float(Time(text, scale="utc").jyear)
            except ValueError:
                return None


def _is_text(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def exposure_time(header: fits.Header) -> tuple[float | None, str]:
    """Exposure time in seconds and where it came from.

    EXPTIME (seconds); else EXPOSURE, in minutes when its comment says so (DSS
    plate scans write ``EXPOSURE = 65.0 /Observation: Exposure Minutes``), else
    seconds. ``(None, reason)`` when neither is a positive number.
    """
    exptime = _positive_float(header, "EXPTIME")
    if exptime is not None:
        return exptime, f"EXPTIME {exptime:g} s"
    exposure = _positive_float(header, "EXPOSURE")
    if exposure is None:
        return None, "no EXPTIME or EXPOSURE keyword"
    if "minute" in str(header.comments["EXPOSURE"]).lower():
        return exposure * SECONDS_PER_MINUTE, f"EXPOSURE {exposure:g} minutes (its comment)"
    return exposure, f"EXPOSURE {exposure:g} s"


def _keyword_source(header: fits.Header, key: str) -> str:
    value = _positive_float(header, key)
    if value is not None:
        return f"{key} {value:g}"
    return f"no {key} keyword" if key not in header else f"{key} = {header[key]!r} is not a positive number"


def header_notes(info: ExposureInfo, *, config: DetectConfig) -> tuple[str, ...]:
    """What the solve of an exposure assumes because its header lacks a fact, one sentence each.

    The epoch (no usable DATE-OBS or MJD-OBS: the reference stars stay at the catalog's
    epoch), the gain (no GAIN: ``detect.default_gain``) and the exposure time (no EXPTIME:
    unused by the solve). The pipeline logs them and writes them in the summary's ``notes``.
    """
    header = info.header
    notes: list[str] = []
    if info.epoch_yr is None:
        date = header.get("DATE-OBS")
        why = "no DATE-OBS" if date is None else f"DATE-OBS = {date!r} is not a date"
        mjd = header.get("MJD-OBS")
        why += " and no MJD-OBS" if mjd is None else f" and MJD-OBS = {mjd!r} is not a number"
        notes.append(f"epoch: {why}; assumed the reference catalog's epoch (proper motions not applied)")
    if info.gain is None:
        notes.append(f"gain: {_keyword_source(header, 'GAIN')}; assumed detect.default_gain = "
                     f"{config.default_gain:g} e-/ADU (centroid errors scale with it)")
    if info.exptime_s is None:
        notes.append("exposure time: no EXPTIME or EXPOSURE keyword; the solve does not use it, nothing assumed")
    return tuple(notes)


def get_pointing(
    header: fits.Header,
    *,
    path: str | Path = "",
    config: PointingConfig | None = None,
    ra_deg: float | None = None,
    dec_deg: float | None = None,
    scale_arcsec: float | None = None,
    rotation_deg: float | None = None,
    parity: int | None = None,
) -> Pointing:
    """The approximate pointing of an exposure.

    In order of precedence:

    1. ``ra_deg``/``dec_deg`` given by the caller (command-line overrides);
    2. an approximate celestial FITS WCS in the header (CTYPE/CRVAL/CD...; a DSS
       plate solution in the same header is ignored);
    3. a DSS plate solution (PPO, AMDX/AMDY, PLTRA*/PLTDEC*, XPIXELSZ, CNPIX...):
       a plain TAN WCS fitted to wcslib's evaluation of it over the image
       (:func:`astrodask.io.dss.fit_plate_solution`), when NAXIS1/NAXIS2 give the shape;
    4. RA/DEC keywords (degrees, or sexagesimal hours/degrees; also OBJCTRA/OBJCTDEC,
       RA_OBJ/DEC_OBJ, TELRA/TELDEC);
    5. the DSS plate centre PLTRA*/PLTDEC*, moved to a cutout's centre with
       CNPIX1/2 and PPO3/PPO6 when they are there.

    In cases 1, 4 and 5 the plate scale is the caller's, else PLTSCALE x XPIXELSZ
    when the header has them, else the configured one; rotation and parity are the
    caller's or the configured ones. Scale, rotation and parity given by the caller
    override those of a header WCS (which is then dropped).

    Raises
    ------
    PointingError
        Nothing in the header gives a pointing, or a value cannot be parsed.
    """
    config = config or PointingConfig()
    if (ra_deg is None) != (dec_deg is None):
        raise PointingError(f"{path}: give both --ra and --dec, or neither")
    if ra_deg is not None and dec_deg is not None:
        _check_dec(float(dec_deg), path, "--dec")
        scale, scale_source = _plain_scale(header, config, scale_arcsec)
        return Pointing(
            ra_deg=float(ra_deg) % 360.0,
            dec_deg=float(dec_deg),
            scale_arcsec=scale,
            rotation_deg=config.rotation_deg if rotation_deg is None else rotation_deg,
            parity=parity or config.parity,
            source="cli",
            scale_source=scale_source,
        )
    nx, ny = _header_int(header, "NAXIS1"), _header_int(header, "NAXIS2")
    overridden = scale_arcsec is not None or rotation_deg is not None or parity is not None
    wcs_header, unusable = _celestial_header(header, path)
    if unusable:
        log.warning("%s: the header's WCS is unusable (%s); looking for other pointing keywords", path, unusable)
    if wcs_header is not None:
        wcs = WCS(wcs_header)
        return _pointing_from_wcs(wcs, wcs_header, (ny, nx), source="header-wcs", scale_source="header WCS (CD matrix)",
                                  scale_arcsec=scale_arcsec, rotation_deg=rotation_deg, parity=parity,
                                  overridden=overridden)
    if dss.has_plate_solution(header):
        try:
            fit = dss.fit_plate_solution(header, (ny, nx), path=path)
        except HeaderError as err:
            log.warning("%s; trying RA/DEC keywords", err)
        else:
            detail = (f"TAN WCS fitted to the DSS plate solution on {fit.n_points} points over the image: "
                      f"max residual {fit.max_residual_arcsec:.3f}\", rms {fit.rms_residual_arcsec:.3f}\"")
            return _pointing_from_wcs(fit.wcs, fit.wcs.to_header(relax=True), (ny, nx), source=DSS_SOURCE,
                                      scale_source="DSS plate solution (CD matrix of the fitted TAN WCS)",
                                      scale_arcsec=scale_arcsec, rotation_deg=rotation_deg, parity=parity,
                                      overridden=overridden, detail=detail)
    position = _keyword_position(header, (ny, nx), path)
    if position is None and unusable:
        raise PointingError(f"{path}: cannot find the pointing: the header's WCS is unusable ({unusable}) and no "
                            "other keyword gives the pointing; correct the header or give --ra and --dec "
                            "(degrees), with --scale")
    if position is None:
        raise PointingError(
            f"{path}: cannot find the pointing: no celestial WCS, no DSS plate solution and none of the "
            f"keyword pairs {', '.join(f'{a}/{b}' for a, b in POINTING_KEYWORDS[:-1])} or the DSS plate "
            "centre PLTRAH../PLTDEC.. in the header; give it with --ra and --dec (degrees)"
        )
    ra, dec, source = position
    scale, scale_source = _plain_scale(header, config, scale_arcsec)
    return Pointing(
        ra_deg=ra,
        dec_deg=dec,
        scale_arcsec=scale,
        rotation_deg=config.rotation_deg if rotation_deg is None else rotation_deg,
        parity=parity or config.parity,
        source=source,
        scale_source=scale_source,
    )


def _pointing_from_wcs(wcs: WCS, wcs_header: fits.Header, shape: tuple[int, int], *, source: str,
                       scale_source: str, scale_arcsec: float | None, rotation_deg: float | None,
                       parity: int | None, overridden: bool, detail: str = "") -> Pointing:
    """The pointing of a header WCS: its sky position at the image centre (0-based), scale and orientation."""
    scale0, rotation0, parity0 = cd_to_scale_rotation_parity(wcs.pixel_scale_matrix)
    ny, nx = shape
    if nx > 0 and ny > 0:
        ra_c, dec_c = wcs.all_pix2world([[(nx - 1) / 2.0, (ny - 1) / 2.0]], 0)[0]
    else:
        ra_c, dec_c = wcs.wcs.crval
    return Pointing(
        ra_deg=float(ra_c) % 360.0,
        dec_deg=float(dec_c),
        scale_arcsec=scale_arcsec or scale0,
        rotation_deg=rotation0 if rotation_deg is None else rotation_deg,
        parity=parity or parity0,
        source=source,
        # the caller's scale/rotation/parity replace the header's CD
        wcs_header=None if overridden else wcs_header,
        scale_source="cli --scale" if scale_arcsec else scale_source,
        detail=detail,
    )


def _plain_scale(header: fits.Header, config: PointingConfig, scale_arcsec: float | None) -> tuple[float, str]:
    """Plate scale (arcsec/px) without a header WCS: the caller's, PLTSCALE x XPIXELSZ, or the configured one."""
    if scale_arcsec:
        return float(scale_arcsec), "cli --scale"
    plate = dss.plate_scale_arcsec(header)
    if plate is not None:
        return plate, (f"PLTSCALE x XPIXELSZ ({float(header['PLTSCALE']):g} arcsec/mm x "
                       f"{float(header['XPIXELSZ']):g} um / 1000)")
    return config.plate_scale_arcsec, "config pointing.plate_scale_arcsec"


def _keyword_position(header: fits.Header, shape: tuple[int, int],
                      path: str | Path) -> tuple[float, float, str] | None:
    """(RA, Dec, source) from RA/DEC-like keyword pairs, else from the DSS plate centre; None if neither."""
    for ra_key, dec_key in POINTING_KEYWORDS[:-1]:
        if ra_key in header and dec_key in header:
            ra = parse_ra(header[ra_key], path=path, key=ra_key)
            dec = parse_dec(header[dec_key], path=path, key=dec_key)
            return ra, dec, f"header-keywords ({ra_key}/{dec_key})"
    try:
        cutout = dss.cutout_centre_deg(header, shape, path=path)
        if cutout is not None:
            return (*cutout, "header-dss-centre (PLTRA*/PLTDEC* plate centre moved to the cutout centre "
                    "by CNPIX, PPO3/PPO6, PLTSCALE; no AMDX/AMDY)")
        centre = dss.plate_centre_deg(header, path=path)
    except HeaderError as err:
        raise PointingError(str(err)) from err
    if centre is not None:
        return (*centre, "header-dss-centre (PLTRA*/PLTDEC* plate centre)")
    return None


def _celestial_header(header: fits.Header, path: str | Path) -> tuple[fits.Header | None, str]:
    """The header's celestial FITS WCS keywords if it has a usable one, and why not otherwise.

    DSS plate solution keywords are left out: wcslib would prefer them to CTYPE/CRVAL/CD.

    Returns
    -------
    header, unusable
        The WCS keywords (None when there is no usable WCS) and, for a WCS that is there but
        cannot be used, why (a non-finite CRVAL, a singular CD matrix...); "" otherwise.
    """
    ctype1 = str(header.get("CTYPE1", ""))
    if not ctype1.upper().startswith("RA") or "CRVAL1" not in header:
        return None, ""
    not_text = [f"{key} = {header[key]!r}" for key in ("CTYPE1", "CTYPE2") if not isinstance(header.get(key, ""), str)]
    if not_text:
        return None, f"{', '.join(not_text)}: not a projection name"
    # wcslib silently reads a non-numeric CRVAL or CD ('NaN', an unparsable card) as 0: check them first
    bad = [f"{key} = {text}" for key in WCS_NUMBER_KEYS if key in header
           for number, text in [_card_number(header, key)] if not math.isfinite(number)]
    if bad:
        return None, f"{', '.join(bad)}: not a finite number"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(dss.without_plate_solution(header), naxis=2)
        except (ValueError, KeyError, MemoryError) as err:
            return None, f"wcslib cannot read it: {' '.join(str(err).split())}"
    if not wcs.has_celestial:
        return None, f"CTYPE1 = {ctype1!r} with no celestial pair"
    crval = np.asarray(wcs.wcs.crval, dtype=float)
    matrix = wcs.pixel_scale_matrix
    if not np.all(np.isfinite(crval)):
        return None, f"CRVAL1, CRVAL2 = {crval[0]}, {crval[1]} are not finite"
    if not np.all(np.isfinite(matrix)):
        return None, f"its CD matrix {matrix.tolist()} is not finite"
    if np.max(np.abs(matrix)) > MAX_PIXEL_SCALE_DEG:
        return None, (f"its CD matrix {matrix.tolist()} deg/px has an element beyond {MAX_PIXEL_SCALE_DEG:g} deg/px: "
                      "no plate scale")
    if abs(float(np.linalg.det(matrix))) <= SINGULAR_CD_RELATIVE_DET * float(np.sum(matrix**2)):
        return None, (f"its CD matrix {np.round(matrix, 10).tolist()} deg/px is singular (determinant "
                      f"{float(np.linalg.det(matrix)):.3g}): it maps the image onto a line")
    return wcs.to_header(relax=True), ""


def _header_int(header: fits.Header, key: str) -> int:
    """A non-negative integer keyword (an image axis length), 0 when absent or not such an integer."""
    value = header.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        return 0
    return int(value)


def _card_number(header: fits.Header, key: str) -> tuple[float, str]:
    """A header card's value as a float (NaN when it is not a finite number) and its text as written."""
    card = header.cards[key]
    try:
        value = card.value
    except VerifyError:  # an unparsable card: 'CRVAL1  =                  NaN'
        value = card.image[len(key):].partition("=")[2].partition("/")[0].strip()
    text = str(value).strip().strip("'").strip()
    try:
        return float(value), text
    except (TypeError, ValueError):
        return math.nan, text


def _check_dec(dec: float, path: str | Path, key: str) -> float:
    if not -90.0 <= dec <= 90.0:
        raise PointingError(f"{path}: {key} = {dec} is not a declination (-90 to 90 degrees)")
    return dec


def parse_ra(value: object, *, path: str | Path = "", key: str = "RA") -> float:
    """Right ascension in degrees from a number (degrees) or a sexagesimal string (hours)."""
    try:
        if isinstance(value, (int, float)) or _is_number(value):
            ra = float(value)
        else:
            ra = float(Angle(str(value).strip(), unit=u.hourangle).degree)
        if not math.isfinite(ra):
            raise ValueError("not finite")
        return ra % 360.0
    except (ValueError, TypeError) as err:
        raise PointingError(f"{path}: {key} = {value!r} is not a right ascension "
                            "(degrees, or hours as 'hh:mm:ss.s')") from err


def parse_dec(value: object, *, path: str | Path = "", key: str = "DEC") -> float:
    """Declination in degrees from a number or a sexagesimal string (degrees)."""
    try:
        if isinstance(value, (int, float)) or _is_number(value):
            dec = float(value)
        else:
            dec = float(Angle(str(value).strip(), unit=u.deg).degree)
        if not math.isfinite(dec):
            raise ValueError("not finite")
    except (ValueError, TypeError) as err:
        raise PointingError(f"{path}: {key} = {value!r} is not a declination "
                            "(degrees, or '+dd:mm:ss.s')") from err
    return _check_dec(dec, path, key)


def _is_number(value: object) -> bool:
    try:
        float(str(value))
    except ValueError:
        return False
    return True


def approximate_wcs(pointing: Pointing, shape: tuple[int, int]) -> WCS:
    """The approximate WCS of an exposure from its pointing.

    The header's own WCS when the pointing came from it (distortion terms
    included), or the plain TAN WCS fitted to its DSS plate solution, else a TAN
    projection centred on the image.
    """
    if pointing.wcs_header is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(pointing.wcs_header, naxis=2)
        wcs.pixel_shape = (shape[1], shape[0])
        return wcs
    return tan_wcs(pointing.ra_deg, pointing.dec_deg, shape=shape, scale_arcsec=pointing.scale_arcsec,
                   rotation_deg=pointing.rotation_deg, parity=pointing.parity)
