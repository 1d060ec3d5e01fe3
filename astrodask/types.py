"""The data that flows between the stages: table layouts and frozen results.

Conventions
-----------
- Pixel coordinates are 0-based everywhere: the centre of the first pixel is
  (0, 0).  Only FITS ``CRPIX`` is 1-based, converted once in the WCS I/O.
- ``i`` is the column index (FITS axis 1, numpy's last axis, "x"); ``j`` is
  the row index (FITS axis 2, numpy's first axis, "y"), as in the Condor
  pipeline's ``get_image_ij``.
- Sky positions are ICRS degrees; proper motions are mas/yr with ``pmra``
  already multiplied by cos(dec), as in Gaia.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntFlag
from pathlib import Path

import numpy as np
from astropy.io.fits import Header


class SourceFlag(IntFlag):
    """Bit flags of a detected source (column ``flag`` of a source table)."""

    NONE = 0
    SATURATED = 1  #: peak at or above the saturation level
    BLENDED = 2  #: deblended from a neighbour, or merged with one
    EDGE = 4  #: within ``detect.edge_margin_px`` of the image edge
    WINPOS_FAILED = 8  #: windowed centroid did not converge; isophotal barycentre kept
    SEP_TRUNCATED = 16  #: SEP's aperture or object truncated by the edge


class RefFlag(IntFlag):
    """Bit flags of a reference star (column ``ref_flag`` of a reference table)."""

    NONE = 0
    NO_PROPER_MOTION = 1  #: no pmra/pmdec in the catalog: kept at its reference position


#: Columns of a source table from ``get_image_ij``, with units.
SOURCE_COLUMNS: dict[str, str] = {
    "i": "pix",  # windowed centroid, column (x), 0-based
    "j": "pix",  # windowed centroid, row (y), 0-based
    "var_i": "pix2",  # centroid variance along i
    "var_j": "pix2",  # centroid variance along j
    "var_ij": "pix2",  # centroid covariance
    "flux_adu": "adu",  # background-subtracted isophotal flux
    "flux_err_adu": "adu",
    "peak_adu": "adu",  # peak value above background
    "a_px": "pix",  # semi-major axis (second moments)
    "b_px": "pix",
    "theta_rad": "rad",
    "npix": "",
    "flag": "",  # SourceFlag bits
}

#: Columns of a reference table (Gaia archive names), with units.
REFERENCE_COLUMNS: dict[str, str] = {
    "source_id": "",
    "ra": "deg",
    "dec": "deg",
    "ra_error": "mas",
    "dec_error": "mas",
    "pmra": "mas/yr",
    "pmdec": "mas/yr",
    "parallax": "mas",
    "ref_epoch": "yr",
    "phot_g_mean_mag": "mag",
    "phot_g_mean_flux": "electron/s",
}


@dataclass(frozen=True)
class Pointing:
    """The approximate pointing of an exposure.

    Attributes
    ----------
    ra_deg, dec_deg
        Sky position of the image centre, degrees.
    scale_arcsec
        Plate scale, arcsec per pixel.
    rotation_deg
        Position angle of the image +j axis, east of north, degrees.
    parity
        +1 for the usual sky view (east left when north is up), -1 for flipped.
    source
        Where it came from: "cli", "header-wcs", "header-keywords".
    wcs_header
        The approximate WCS header when it came from the file, else None.
    """

    ra_deg: float
    dec_deg: float
    scale_arcsec: float
    rotation_deg: float
    parity: int
    source: str
    wcs_header: Header | None = None


@dataclass(frozen=True)
class Exposure:
    """One exposure read from disk: native-endian float32 pixels and what the header says.

    Attributes
    ----------
    path
        The file read.
    hdu_index
        Index of the image HDU in the file.
    data
        Image pixels, float32, native byte order, shape (ny, nx), BZERO/BSCALE applied.
    header
        The image HDU's header (with the primary header's keywords merged in
        when the image is in an extension).
    epoch_yr
        Julian epoch of the observation (e.g. 2024.53), from DATE-OBS or MJD-OBS; None if absent.
    gain
        e-/ADU from GAIN, or None.
    saturate_adu
        Saturation level from SATURATE, or None.
    exptime_s
        Exposure time from EXPTIME, or None.
    """

    path: Path
    hdu_index: int
    data: np.ndarray
    header: Header
    epoch_yr: float | None
    gain: float | None
    saturate_adu: float | None
    exptime_s: float | None

    @property
    def shape(self) -> tuple[int, int]:
        """Image shape (ny, nx)."""
        return (int(self.data.shape[0]), int(self.data.shape[1]))

    @property
    def name(self) -> str:
        """File name without ``.fits``, ``.fits.fz``, ``.fit`` or ``.fz``."""
        return exposure_name(self.path)


def exposure_name(path: str | Path) -> str:
    """The name of an exposure: its file name without the FITS suffixes."""
    name = Path(path).name
    for suffix in (".fits.fz", ".fit.fz", ".fts.fz", ".fits.gz", ".fz", ".fits", ".fit", ".fts"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name
