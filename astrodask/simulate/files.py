"""Files of a simulated exposure: the image, its exact truth WCS and its truth table.

:func:`write_exposure` writes ``X.fits.fz`` (RICE_1) or ``X.fits``, the exact truth
``X.truth.wcs.fits`` (checked on re-reading) and ``X.truth.ecsv``; :func:`read_truth_wcs`
reads the truth WCS back (also of the GalSim renderer's exposures), :func:`read_truth` the
whole true mapping: the WCS and, when the exposure was simulated with turbulence, the
atmospheric displacement field written as two image extensions of ``X.truth.wcs.fits``
(:class:`~astrodask.simulate.atmosphere.TruthMapping`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from astrodask.errors import ConfigError, InputFileError
from astrodask.simulate.atmosphere import DisplacementField, TruthMapping
from astrodask.types import exposure_name

log = logging.getLogger(__name__)

__all__ = ["ExposurePaths", "read_truth", "read_truth_wcs", "truth_wcs_path", "write_exposure"]

#: Largest difference allowed between a written and a re-read truth WCS, pixels.
TRUTH_WCS_TOLERANCE_PX: float = 1e-8


@dataclass(frozen=True)
class ExposurePaths:
    """The files written by :func:`write_exposure`."""

    image: Path  #: ``X.fits.fz`` (image in HDU 1) or ``X.fits`` (image in the primary HDU)
    truth_wcs: Path  #: ``X.truth.wcs.fits``: the exact truth WCS in the primary header
    truth_table: Path | None  #: ``X.truth.ecsv`` when a truth table was given


def write_exposure(path: str | Path, image: np.ndarray, header: fits.Header, *, truth_wcs: WCS,
                   truth_table: Table | None = None, compress: bool = True,
                   overwrite: bool = True, turbulence: DisplacementField | None = None) -> ExposurePaths:
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
        Keywords for the image HDU (e.g. from :func:`~astrodask.simulate.header.approximate_header`).
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
    turbulence
        The atmospheric displacement the stars were rendered with: written as two image
        extensions of ``<name>.truth.wcs.fits`` (read back by :func:`read_truth`).

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
    extensions = turbulence.to_hdus() if turbulence is not None else []
    fits.HDUList([fits.PrimaryHDU(header=wcs_header), *extensions]).writeto(wcs_path, overwrite=overwrite)
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
    path = truth_wcs_path(path)
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


def truth_wcs_path(path: str | Path) -> Path:
    """The ``X.truth.wcs.fits`` of an exposure ``X.fits.fz``/``X.fits`` (or that file itself)."""
    path = Path(path)
    if not path.name.endswith(".truth.wcs.fits"):
        path = path.parent / (exposure_name(path) + ".truth.wcs.fits")
    return path


def read_truth(path: str | Path) -> TruthMapping:
    """Read the true sky <-> pixel mapping of a simulated exposure: truth WCS and atmosphere.

    Parameters
    ----------
    path
        The ``X.truth.wcs.fits`` file, or the exposure ``X.fits.fz``/``X.fits`` beside it.

    Returns
    -------
    TruthMapping
        Its ``field`` is None when the exposure was simulated without turbulence; then it
        maps exactly as :func:`read_truth_wcs`'s WCS.
    """
    wcs = read_truth_wcs(path)
    wcs_path = truth_wcs_path(path)
    with fits.open(wcs_path) as hdus:
        field = DisplacementField.from_hdus(hdus, source=str(wcs_path))
    return TruthMapping(wcs=wcs, field=field)
