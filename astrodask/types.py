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

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntFlag, StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from astropy.io.fits import Header

from astrodask.errors import is_transient

if TYPE_CHECKING:  # annotations only: the data layer imports nothing from the stages
    from astropy.table import Table
    from astropy.wcs import WCS

    from astrodask.solve.errmodel import ErrorModel, FitQuality
    from astrodask.solve.match import Affine, RegionMatch
    from astrodask.solve.pipeline import RegionInputs
    from astrodask.solve.tpv import TPVSolution
    from astrodask.solve.turbulence import TurbulenceResult


class SourceFlag(IntFlag):
    """Bit flags of a detected source (column ``flag`` of a source table)."""

    NONE = 0
    SATURATED = 1  #: peak at or above the saturation level
    BLENDED = 2  #: deblended from a neighbour, or merged with one
    EDGE = 4  #: within ``detect.edge_margin_px`` of the image edge
    WINPOS_FAILED = 8  #: windowed centroid did not converge; isophotal barycentre kept
    SEP_TRUNCATED = 16  #: SEP's aperture or object truncated by the edge
    SHARP = 32  #: sharper than the PSF (half-flux radius well below the stars'): a cosmic ray or hot pixel
    EXTENDED = 64  #: larger than the PSF (half-flux radius well above the stars'): a galaxy or an unresolved blend
    ELONGATED = 128  #: far more elongated than the PSF: a hot column, a trail (satellite, bleed) or a track


#: Flags of sources that are not stars: kept in the source table, never matched or fitted.
ARTEFACT_FLAGS = SourceFlag.SHARP | SourceFlag.EXTENDED | SourceFlag.ELONGATED


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
    "r50_px": "pix",  # half-flux radius (NaN below detect.classify_snr_min)
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
        Where it came from: "cli", "header-wcs", "header-dss (AMDX/AMDY plate solution)",
        "header-keywords (OBJCTRA/OBJCTDEC)", "header-dss-centre (...)".
    wcs_header
        The approximate WCS header when it came from the file, else None.
    scale_source
        Where the plate scale came from, e.g. "header WCS (CD matrix)",
        "PLTSCALE x XPIXELSZ", "config pointing.plate_scale_arcsec", "cli --scale".
    detail
        How the pointing was derived, when there is more to say (e.g. the residual
        of the TAN WCS fitted to a DSS plate solution); "" otherwise.
    """

    ra_deg: float
    dec_deg: float
    scale_arcsec: float
    rotation_deg: float
    parity: int
    source: str
    wcs_header: Header | None = None
    scale_source: str = ""
    detail: str = ""


@dataclass(frozen=True)
class Exposure:
    """One exposure read from disk: its native-endian pixels and what the header says.

    Attributes
    ----------
    path
        The file read.
    hdu_index
        Index of the image HDU in the file.
    data
        Image pixels, native byte order, C order, shape (ny, nx), BZERO/BSCALE applied: integers
        of up to 16 bits as read (float32 holds them exactly; the detection converts them once),
        anything else float32 (:func:`astrodask.io.exposure.native_pixels`).
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

    @property
    def info(self) -> ExposureInfo:
        """Everything but the pixels: small enough to travel between Dask workers."""
        return ExposureInfo(self.path, self.hdu_index, self.header, self.shape, self.epoch_yr, self.gain,
                            self.saturate_adu, self.exptime_s)


@dataclass(frozen=True)
class ExposureInfo:
    """An exposure without its pixels (see :class:`Exposure` for the attributes).

    Attributes
    ----------
    provenance
        Where each header fact came from, by name ("epoch", "exptime", "gain",
        "saturate"): the keyword and its value, or why it is absent. Filled by
        :func:`astrodask.io.exposure.read_exposure_info`; empty when not recorded
        (e.g. from :attr:`Exposure.info`).
    """

    path: Path
    hdu_index: int
    header: Header
    shape: tuple[int, int]
    epoch_yr: float | None
    gain: float | None
    saturate_adu: float | None
    exptime_s: float | None
    provenance: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """File name without the FITS suffixes."""
        return exposure_name(self.path)


#: File name endings (lower case) of an exposure: what a folder scan finds and :func:`exposure_name`
#: strips. Longer before shorter, so that ``x.fits.fz`` is named ``x``, not ``x.fits``.
FITS_SUFFIXES = (".fits.fz", ".fit.fz", ".fts.fz", ".fits.gz", ".fz", ".fits", ".fit", ".fts")


def exposure_name(path: str | Path) -> str:
    """The name of an exposure: its file name without the FITS suffixes (:data:`FITS_SUFFIXES`)."""
    name = Path(path).name
    for suffix in FITS_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


#: Status of an exposure whose solve passed every quality gate.
class Stage(StrEnum):
    """The stages of one solve, in the algorithm's order (docs/algorithm.md).

    A failure names the stage it stopped at; timings are kept per stage; the summary has one
    ``t_<stage>_s`` column per stage, in this order. (The Dask graph's tasks group them
    differently: :class:`astrodask.run.graph.Task` says which stages each task runs.)
    """

    READ = "read"
    DETECT = "detect"
    REFERENCES = "references"
    REGIONS = "regions"
    TPV = "tpv"
    DETECT_DEPTH = "detect_depth"
    DEPTH_MATCH = "depth_match"
    LIKE_FIT = "like_fit"
    TURBULENCE = "turbulence"
    CHI_SQUARE = "chi_square"


SOLVED = "solved"
#: Status of an exposure whose solve failed (the reason says where and why).
FAILED = "failed"


class FailureKind(StrEnum):
    """Whether a failed solve can end otherwise when run again unchanged.

    A resubmit retries :attr:`TRANSIENT` failures (a killed worker, the archive
    unreachable, a cache I/O error, an interrupted run) and leaves
    :attr:`DETERMINISTIC` ones alone (a quality gate, a broken file, a bad header, no
    stars, no references) unless asked (``--retry-failed``), or unless the file, the
    config or astrodask changed since.
    """

    DETERMINISTIC = "deterministic"
    TRANSIENT = "transient"

    @classmethod
    def of(cls, err: BaseException) -> FailureKind:
        """The kind of a failure raised as ``err``, by its class (:func:`astrodask.errors.is_transient`)."""
        return cls.TRANSIENT if is_transient(err) else cls.DETERMINISTIC


@dataclass(frozen=True)
class FailureDiagnostics:
    """What a failed solve leaves to explain itself (written with ``--debug``).

    Attributes
    ----------
    details
        Plain values: the coarse alignment's attempts (``"coarse"``), each region's
        outcome (``"regions"``), and whatever the failing stage recorded.
    sources
        The first-pass source table (with its flags), or None if detection did not run.
    references
        The reference stars with their approximate-WCS pixels ``x``/``y``, or None.
    """

    details: dict[str, Any] = field(default_factory=dict)
    sources: Any = None
    references: Any = None


@dataclass(frozen=True)
class ExposureResult:
    """The outcome of one exposure's solve: solved with its WCS and figures, or failed with a reason.

    Attributes
    ----------
    file
        The exposure file.
    name
        Its name (file name without the FITS suffixes).
    status
        :data:`SOLVED` or :data:`FAILED`.
    reason
        Why it failed ("" when solved), naming the stage.
    stage
        The last stage reached.
    solution
        The TAN + TPV solution (:class:`astrodask.solve.tpv.TPVSolution`), None when failed early.
    error_model
        The ``like_fit`` error model (:class:`astrodask.solve.errmodel.ErrorModel`), or None.
    quality
        Chi-square over the entire matched list (:class:`astrodask.solve.errmodel.FitQuality`), or None.
    counts
        Sources, references, regions, matches and clipped points by stage.
    rms_arcsec
        Residual rms of the final fit along xi (east) and eta (north), arcsec.
    timings
        Seconds per stage.
    regions
        Per region: (index, status, reason, pairs).
    shape
        Image shape (ny, nx).
    config
        The effective config (plain dict).
    matched
        The entire matched list (astropy Table: pixel, sky, residuals in mas,
        normalised residual, kept in the final fit), or None.
    diagnostics
        Why a failed solve failed (:class:`FailureDiagnostics`), or None.
    kind
        Whether a failure can change when run again (:class:`FailureKind`); a failed result
        without one (a quality gate) is deterministic. Unused when solved.
    notes
        What the solve assumed for facts its header lacks (the epoch, the gain...), one
        sentence each (:func:`astrodask.io.exposure.header_notes`).
    turbulence
        The turbulence stage (:class:`astrodask.solve.turbulence.TurbulenceResult`): the correction
        when applied, why not otherwise, and the solution's predicted error; None when failed early.
    """

    file: str
    name: str
    status: str
    reason: str = ""
    stage: str = ""
    solution: TPVSolution | None = None
    error_model: ErrorModel | None = None
    quality: FitQuality | None = None
    counts: dict[str, int] = field(default_factory=dict)
    rms_arcsec: tuple[float, float] = (float("nan"), float("nan"))
    timings: dict[str, float] = field(default_factory=dict)
    regions: tuple[tuple[int, str, str, int], ...] = ()
    shape: tuple[int, int] = (0, 0)
    config: dict[str, Any] = field(default_factory=dict)
    matched: Table | None = None
    diagnostics: FailureDiagnostics | None = None
    kind: FailureKind = FailureKind.DETERMINISTIC
    notes: tuple[str, ...] = ()
    turbulence: TurbulenceResult | None = None

    @property
    def ok(self) -> bool:
        """True when solved."""
        return self.status == SOLVED

    @property
    def n_matches(self) -> int:
        """Matched stars kept in the final fit."""
        return int(self.counts.get("matches", 0))

    @property
    def wcs(self) -> WCS | None:
        """The solution as an astropy WCS (None when there is no solution)."""
        return None if self.solution is None else self.solution.to_astropy_wcs()


# ---------------------------------------------------------------- what the stages hand on


@dataclass(frozen=True)
class Detections:
    """What detection hands on: the exposure's facts and both source lists.

    Attributes
    ----------
    info
        The exposure's header facts (the image stays with the task that read it).
    sources
        The first pass (``detect.first``): the source list of the matching stages.
    deep
        The relaxed depth pass (``detect.depth``): the source list of ``depth_match`` and the fits.
    timings
        Seconds of :attr:`Stage.READ`, :attr:`Stage.DETECT` and :attr:`Stage.DETECT_DEPTH`.
    """

    info: ExposureInfo
    sources: Table
    deep: Table
    timings: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class FirstPass:
    """The first detection pass, handed to the matching while the depth pass runs beside it (Dask graph).

    Attributes
    ----------
    info
        The exposure's header facts.
    sources
        The first pass (``detect.first``).
    timings
        Seconds of :attr:`Stage.READ` and :attr:`Stage.DETECT`.
    """

    info: ExposureInfo
    sources: Table
    timings: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class DepthPass:
    """The relaxed depth pass (``detect.depth``) and the seconds it took."""

    deep: Table
    seconds: float = 0.0


@dataclass(frozen=True)
class References:
    """What ``get_gaia_xy`` hands on: the approximate WCS and the reference stars through it.

    Attributes
    ----------
    wcs0
        The approximate (header) WCS the stars were projected through.
    stars
        The reference table of :func:`astrodask.reference.footprint.get_gaia_xy`.
    seconds
        Time taken.
    """

    wcs0: WCS
    stars: Table
    seconds: float = 0.0


@dataclass(frozen=True)
class Prepared:
    """What the coarse alignment hands the region tasks: their inputs and the time it took."""

    inputs: RegionInputs
    seconds: float = 0.0


@dataclass(frozen=True)
class RegionOutcome:
    """One region task's match and the time it took."""

    match: RegionMatch
    seconds: float = 0.0


@dataclass(frozen=True)
class Reduced:
    """What the reducer hands on: the field's mean affine and every region's match (with its verdict).

    Attributes
    ----------
    affine
        The mean affine (pixels to the references' predicted pixels).
    matches
        Every region's match, its status set by the reducer.
    seconds
        Time of the coarse alignment, the regions and the reducer together.
    """

    affine: Affine
    matches: tuple[RegionMatch, ...]
    seconds: float = 0.0


# ---------------------------------------------------------------- the tile cache's fills


class TileState(StrEnum):
    """What a tile-fill task found or did."""

    PRESENT = "present"  #: complete and deep enough already: left alone
    FILLED = "filled"  #: filled from the Gaia archive
    FAILED = "failed"  #: could not be filled (the reason says why)


@dataclass(frozen=True)
class TileFill:
    """The record of one tile-fill task (``gaia-tile-<level>-<pixel>-<store>``).

    Attributes
    ----------
    tile
        The tile (nested HEALPix pixel at the cache's level).
    state
        Present, filled or failed.
    rows
        Stars the tile holds.
    reason
        Why it was filled (what it lacked), or why it failed; "" when present.
    seconds
        Time the task took.
    name
        ``<level>/<pixel>``, as the store names the tile ("" when the store could not be opened).
    """

    tile: int
    state: TileState
    rows: int = 0
    reason: str = ""
    seconds: float = 0.0
    name: str = ""

    @property
    def label(self) -> str:
        """How messages name the tile."""
        return self.name or str(self.tile)
