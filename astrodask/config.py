"""Every threshold and control point of astrodask, in one frozen, validated config.

The names of the Condor pipeline are kept: ``CLIPPING_THRESHOLD``,
``ERROR_THRESHOLD`` and the 24 regions are fields of :class:`FitConfig` and
:class:`RegionConfig`.  Each field carries its unit, its allowed range and a
one-line description (``astrodask config --show`` prints them all).

A :class:`PipelineConfig` is built from defaults, then overridden, in order of
increasing precedence, by dask's configuration (``astrodask:`` in a dask YAML
file, or ``DASK_ASTRODASK__SECTION__FIELD`` environment variables), by a YAML
file (``--config``), and by command-line flags (``--set section.field=value``).
The command line does the reading; this module only merges and validates
plain dictionaries, so it is pure and testable.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from astrodask.constants import GAIA_DR3_EPOCH, GAIA_MAG_LIMIT
from astrodask.errors import ConfigError

# --------------------------------------------------------------------------
# Named defaults (the Condor values where the reference names them)
# --------------------------------------------------------------------------

#: Pairs whose match distance exceeds this many arcseconds are clipped before the TPV fit.
CLIPPING_THRESHOLD = 2.0
#: Points whose residual exceeds this many modelled sigmas are clipped by ``like_fit``.
ERROR_THRESHOLD = 5.0
#: Number of matching regions the image is divided into.
N_REGIONS = 24
#: Condor plate scale, arcsec per pixel.
CONDOR_PLATE_SCALE = 0.85


def param(
    default: Any,
    doc: str,
    *,
    unit: str = "",
    lo: float | None = None,
    hi: float | None = None,
    choices: tuple[Any, ...] | None = None,
) -> Any:
    """Declare one config field with its documentation and allowed range.

    Parameters
    ----------
    default
        Default value; its type is the field's type.
    doc
        One-line description.
    unit
        Unit of the value ("" when dimensionless).
    lo, hi
        Inclusive bounds for numbers (None: unbounded).
    choices
        Allowed values for strings or other enumerations.
    """
    return field(
        default=default,
        metadata={"doc": doc, "unit": unit, "lo": lo, "hi": hi, "choices": choices},
    )


@dataclass(frozen=True)
class _Section:
    """Base of the config sections: validates every field after construction."""

    section: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            name = f"{self.section}.{f.name}"
            value = _coerce(name, value, f.default)
            object.__setattr__(self, f.name, value)
            meta = f.metadata
            if meta.get("choices") is not None and value not in meta["choices"]:
                raise ConfigError(
                    f"config {name} = {value!r} is not one of {list(meta['choices'])}"
                )
            lo, hi = meta.get("lo"), meta.get("hi")
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if not math.isfinite(value):
                    raise ConfigError(f"config {name} = {value!r} must be finite")
                if (lo is not None and value < lo) or (hi is not None and value > hi):
                    raise ConfigError(
                        f"config {name} = {value!r} is out of range: allowed "
                        f"{_range_text(lo, hi)} {meta.get('unit', '')}".rstrip()
                    )
        self._check()

    def _check(self) -> None:
        """Cross-field checks; sections override this."""


def _range_text(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f"{lo} to {hi}"
    if lo is not None:
        return f">= {lo}"
    return f"<= {hi}"


def _coerce(name: str, value: Any, default: Any) -> Any:
    """Coerce ``value`` to the type of ``default`` (int, float, bool, str, tuple, None)."""
    if default is None or isinstance(default, _Section):
        return value
    kind = type(default)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "yes", "1", "false", "no", "0"}:
            return value.lower() in {"true", "yes", "1"}
        raise ConfigError(f"config {name} = {value!r} must be true or false")
    if kind is int:
        if isinstance(value, bool) or not (
            isinstance(value, int) or (isinstance(value, float) and value.is_integer())
            or (isinstance(value, str) and value.strip().lstrip("+-").isdigit())
        ):
            raise ConfigError(f"config {name} = {value!r} must be an integer")
        return int(value)
    if kind is float:
        try:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"config {name} = {value!r} must be a number") from err
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"config {name} = {value!r} must be a string")
        return value
    if kind is tuple:
        if isinstance(value, (list, tuple)):
            return tuple(value)
        raise ConfigError(f"config {name} = {value!r} must be a list")
    return value


# --------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class DetectPassConfig(_Section):
    """SEP extraction settings for one detection pass."""

    section: ClassVar[str] = "detect.pass"

    thresh_sigma: float = param(3.0, "detection threshold above the background rms", unit="sigma", lo=0.3, hi=1000.0)
    minarea: int = param(5, "minimum number of connected pixels above threshold", unit="px", lo=1, hi=10000)
    deblend_nthresh: int = param(32, "number of deblending thresholds", lo=1, hi=256)
    deblend_cont: float = param(0.005, "minimum contrast ratio for deblending (1 disables it)", lo=0.0, hi=1.0)
    filter_fwhm_px: float = param(2.5, "FWHM of the Gaussian matched filter (0 disables filtering)", unit="px", lo=0.0, hi=20.0)
    clean: bool = param(True, "clean spurious detections near bright objects")
    max_sources: int = param(300_000, "keep at most this many sources, brightest first", lo=10, hi=10_000_000)
    strip_px: int = param(1024, "SEP extracts in strips of at most this many rows (an even number of equal strips, and an overlap), each object kept by the "
                          "strip holding its centroid: SEP's cleaning costs more than in proportion to the objects "
                          "it sees at once (0: the whole image at once)", unit="px", lo=0, hi=1_000_000)


def _first_pass() -> DetectPassConfig:
    return DetectPassConfig(thresh_sigma=3.0)


def _depth_pass() -> DetectPassConfig:
    return DetectPassConfig(thresh_sigma=1.5, minarea=3, deblend_cont=0.001)


@dataclass(frozen=True)
class DetectConfig(_Section):
    """Source detection (``get_image_ij``): background, extraction and centroids."""

    section: ClassVar[str] = "detect"

    first: DetectPassConfig = field(default_factory=_first_pass, metadata={"doc": "first (matching) pass"})
    depth: DetectPassConfig = field(default_factory=_depth_pass, metadata={"doc": "relaxed depth-match pass"})
    first_from_depth: bool = param(True, "one extraction: SEP extracts once, with the depth pass's settings, and the "
                                   "first pass is the part of that list that the first pass's own extraction finds "
                                   "(the sources with first.minarea pixels above first.thresh_sigma; blends extracted "
                                   "again in small cutouts with the first pass's settings); False: each pass extracts "
                                   "with its own settings")
    extract_processes: int = param(0, "processes that share the extraction's strips when the command solves an "
                                   "exposure in its own process (--serial, or the first exposure while the embedded "
                                   "cluster starts): forked copies of it, as SEP holds the GIL; 0: one per core, 1: "
                                   "this process alone. Dask's workers extract in their own process", lo=0, hi=256)
    back_size_px: int = param(128, "background mesh size", unit="px", lo=8, hi=4096)
    back_filter_size: int = param(3, "background median filter size", unit="meshes", lo=1, hi=15)
    winpos_fwhm_px: float = param(0.0, "FWHM for windowed centroids (0: from each source's half-flux radius)", unit="px", lo=0.0, hi=50.0)
    edge_margin_px: float = param(5.0, "sources this close to the image edge are flagged EDGE", unit="px", lo=0.0, hi=1000.0)
    saturation_fraction: float = param(0.95, "a peak above this fraction of SATURATE flags the source SATURATED", lo=0.1, hi=1.0)
    default_saturation_adu: float = param(65535.0, "saturation level when the header has no SATURATE", unit="ADU", lo=1.0, hi=1e12)
    max_saturated_fraction: float = param(0.5, "an exposure with a larger fraction of its pixels at saturation (saturation_fraction x SATURATE) is overexposed and not solved", lo=0.01, hi=1.0)
    default_gain: float = param(1.0, "gain when the header has no GAIN", unit="e-/ADU", lo=1e-4, hi=1e4)
    classify_snr_min: float = param(15.0, "sources at this signal-to-noise or above are told from artefacts "
                                    "(sharp, extended, elongated) and define the stars' size", lo=1.0, hi=1e6)
    min_star_r50_px: float = param(0.6, "the stars' half-flux radius is looked for above this; below lie "
                                   "cosmic rays and hot pixels", unit="px", lo=0.1, hi=50.0)
    sharp_ratio: float = param(0.65, "a source whose half-flux radius is below this fraction of the stars' "
                               "(and below their spread) is SHARP: a cosmic ray or hot pixel", lo=0.05, hi=1.0)
    sharp_peak_ratio: float = param(2.0, "a source whose peak holds this many times more of its flux than the "
                                    "stars' peaks do (and beyond their spread) is SHARP: a cosmic-ray track",
                                    lo=1.01, hi=100.0)
    extended_ratio: float = param(1.6, "a source whose half-flux radius is above this multiple of the stars' "
                                  "(and above their spread) is EXTENDED: a galaxy or a blend", lo=1.0, hi=100.0)
    max_elongation: float = param(2.0, "a source with a/b above this (and above the stars' by the same factor "
                                  "as theirs is above 1) is ELONGATED: a hot column or a trail", lo=1.01, hi=1000.0)


@dataclass(frozen=True)
class PointingConfig(_Section):
    """How the approximate pointing is built when the header has no WCS."""

    section: ClassVar[str] = "pointing"

    plate_scale_arcsec: float = param(CONDOR_PLATE_SCALE, "plate scale", unit="arcsec/px", lo=0.001, hi=3600.0)
    rotation_deg: float = param(0.0, "position angle of the image +y axis east of north", unit="deg", lo=-360.0, hi=360.0)
    parity: int = param(1, "+1: north up, east left (sky view); -1: flipped", choices=(1, -1))


@dataclass(frozen=True)
class RegionConfig(_Section):
    """The region grid of the first match (24 regions, 6 x 4 on a Condor frame)."""

    section: ClassVar[str] = "regions"

    n_regions: int = param(N_REGIONS, "number of regions; the grid follows the image's aspect ratio", lo=1, hi=400)
    nx: int = param(0, "regions along x (0: chosen from n_regions and the aspect ratio)", lo=0, hi=100)
    ny: int = param(0, "regions along y (0: chosen from n_regions and the aspect ratio)", lo=0, hi=100)
    min_stars: int = param(8, "a region needs at least this many sources and references to be matched", lo=3, hi=10000)
    min_good_regions: int = param(6, "the solve needs at least this many regions that agree", lo=1, hi=400)
    max_control_points: int = param(50, "brightest sources per region handed to astroalign", lo=5, hi=1000)
    reference_excess: float = param(1.3, "references used for matching: this many times the sources, brightest first "
                                    "(so that both lists reach a similar depth)", lo=1.0, hi=100.0)
    coarse_control_points: int = param(60, "brightest sources of the whole frame for the coarse alignment", lo=5, hi=1000)
    coarse_bin_factor: float = param(8.0, "coordinates are divided by this for the coarse alignment, so that "
                                     "astroalign's 2 px tolerance absorbs the distortion", lo=1.0, hi=100.0)
    target_margin_px: float = param(60.0, "references predicted this far outside a region still take part in its match", unit="px", lo=0.0, hi=5000.0)
    pair_radius_px: float = param(4.0, "after a region's affine, sources pair with references this close", unit="px", lo=0.1, hi=100.0)
    min_region_px: float = param(500.0, "a region is at least this many pixels on a side: smaller frames get "
                                 "fewer regions (a Condor frame keeps its 24)", unit="px", lo=10.0, hi=100_000.0)
    search_rotation_deg: float = param(2.0, "the offset vote of the coarse alignment searches the header's "
                                       "rotation error up to this", unit="deg", lo=0.0, hi=45.0)
    search_scale_frac: float = param(0.03, "the offset vote searches the header's scale error up to this fraction",
                                     lo=0.0, hi=0.5)
    verify_radius_px: float = param(10.0, "a coarse transform is verified by the stars it pairs within this "
                                    "distance (it absorbs the distortion)", unit="px", lo=0.5, hi=1000.0)
    first_method: str = param("proximity", "how a region is matched first: 'proximity' (the references the coarse "
                              "transform predicts, paired by their common shift; astroalign where that fails) or "
                              "'astroalign' (its triangles first, as the Condor pipeline; proximity where that fails)",
                              choices=("astroalign", "proximity"))
    proximity_shift_px: float = param(40.0, "where astroalign fails in a region, references predicted by the "
                                      "field's transform are paired with sources after a common shift up to this",
                                      unit="px", lo=1.0, hi=5000.0)
    tolerance_px: float = param(25.0, "a region whose affine moves its centre farther than this from the field's disagrees", unit="px", lo=0.1, hi=10000.0)
    max_rotation_deg: float = param(1.0, "a region whose affine rotates more than this against the field's disagrees", unit="deg", lo=0.001, hi=180.0)
    max_scale_diff: float = param(0.03, "a region whose affine scale differs by more than this fraction disagrees", lo=0.0001, hi=1.0)

    def _check(self) -> None:
        if (self.nx == 0) != (self.ny == 0):
            raise ConfigError(
                f"config regions.nx = {self.nx} and regions.ny = {self.ny}: set both or neither"
            )


@dataclass(frozen=True)
class GaiaConfig(_Section):
    """Reference stars (``get_gaia_xy``): the Gaia archive and catalog files."""

    section: ClassVar[str] = "gaia"

    tap_url: str = param("https://gea.esac.esa.int/tap-server/tap", "Gaia archive TAP service")
    table: str = param("gaiadr3.gaia_source", "archive table queried")
    margin_deg: float = param(0.2, "margin added around the footprint (covers pointing errors)", unit="deg", lo=0.0, hi=10.0)
    mag_limit: float = param(GAIA_MAG_LIMIT, "faintest G magnitude requested", unit="mag", lo=3.0, hi=23.0)
    timeout_s: float = param(600.0, "time allowed for one archive job", unit="s", lo=1.0, hi=86400.0)
    request_timeout_s: float = param(60.0, "time allowed for one HTTP request to the archive (connect or answer) before it counts as a failed attempt", unit="s", lo=0.1, hi=3600.0)
    retries: int = param(3, "retries of a failed archive query", lo=0, hi=20)
    retry_backoff_s: float = param(2.0, "first wait before a retry, doubled each time", unit="s", lo=0.0, hi=600.0)
    default_ref_epoch: float = param(GAIA_DR3_EPOCH, "epoch assumed for catalogs without ref_epoch", unit="yr", lo=1900.0, hi=2200.0)
    cache_url: str = param("", "Gaia tile cache: a folder or fsspec URL (s3://...); empty: the user cache folder")
    fetch_missing_tiles: bool = param(True, "fill tiles missing from the cache from the archive when a solve needs them")
    max_queries: int = param(4, "archive queries running at once across the whole cluster", lo=1, hi=64)
    tile_margin_arcsec: float = param(60.0, "a tile's archive query also takes sources whose source_id pixel lies this close outside it", unit="arcsec", lo=0.0, hi=600.0)


@dataclass(frozen=True)
class FitConfig(_Section):
    """Matching, TPV fit, depth match and the error model."""

    section: ClassVar[str] = "fit"

    CLIPPING_THRESHOLD: float = param(CLIPPING_THRESHOLD, "pairs farther apart are clipped before the TPV fit", unit="arcsec", lo=0.01, hi=3600.0)
    ERROR_THRESHOLD: float = param(ERROR_THRESHOLD, "points with a larger normalised residual are clipped by like_fit", unit="sigma", lo=1.0, hi=1000.0)
    tpv_degree: int = param(3, "degree of the TPV distortion polynomial", lo=1, hi=7)
    match_radius_arcsec: float = param(3.0, "depth-match search radius", unit="arcsec", lo=0.01, hi=3600.0)
    rms_clip_sigma: float = param(4.0, "RMS clipping threshold", unit="sigma", lo=1.0, hi=100.0)
    rms_clip_rounds: int = param(3, "rounds of RMS clipping and refitting", lo=0, hi=50)
    error_clip_rounds: int = param(5, "rounds of ERROR_THRESHOLD clipping and like_fit refits", lo=0, hi=50)
    error_clip_tolerance: float = param(1e-4, "ERROR_THRESHOLD clipping has converged when at most this fraction of the points would change side in another round (0: none)", lo=0.0, hi=0.1)
    depth_window: int = param(0, "depth_match slices the remaining references to this many, brightest first (0: all)", lo=0, hi=100_000_000)
    edge_margin_px: float = param(2.0, "references predicted this far outside the image still take part in the depth match", unit="px", lo=0.0, hi=1000.0)
    neighbour_radius_arcsec: float = param(3.0, "a reference with another Gaia star this close ...", unit="arcsec", lo=0.0, hi=60.0)
    neighbour_flux_ratio: float = param(0.02, "... brighter than this fraction of its own G flux is left out of the fits (an unresolved blend in the image)", lo=0.0, hi=100.0)
    min_matches: int = param(30, "quality gate: a solve needs at least this many matched stars in the final fit", lo=4, hi=1_000_000)
    max_rms_px: float = param(1.0, "quality gate: largest residual rms per axis of the final fit", unit="px", lo=0.001, hi=100.0)
    max_chi2_dof: float = param(5.0, "quality gate: largest chi-square per degree of freedom (over the pairs fit.chi2_gate names)", lo=1.0, hi=1e9)
    chi2_gate: str = param("all", "which chi-square/dof fit.max_chi2_dof limits: 'all' matched pairs, clipped ones included (the honest figure, CHI2DOF), or the 'kept' pairs of the final fit (CHI2DOFK)", choices=("all", "kept"))
    max_floor_px: float = param(0.5, "quality gate: largest systematic floor of the error model", unit="px", lo=0.0, hi=100.0)


@dataclass(frozen=True)
class TurbulenceConfig(_Section):
    """The turbulence stage: residual correlation, von Karman kernel, GP correction, cross-validation."""

    section: ClassVar[str] = "turbulence"

    enabled: bool = param(True, "measure the residuals' correlation and correct it by a GP when cross-validation shows it helps (false: TPV only, no stage)")
    min_stars: int = param(100, "fewer kept matches than this: no correlation is measured, the solution stays TPV only", lo=10, hi=1_000_000)
    corr_max_sep_arcmin: float = param(20.0, "the two-point correlation is measured (and the kernel fitted) out to this separation along each axis", unit="arcmin", lo=0.1, hi=600.0)
    corr_max_stars: int = param(4000, "the correlation is measured on at most this many of the kept matches, the "
                                "best measured (its pairs grow as N^2; the weighted correlation is theirs anyway)",
                                lo=100, hi=10_000_000)
    corr_bins: int = param(21, "bins of the 2-D correlation along each axis (odd: one centred on zero separation)", lo=3, hi=201)
    corr_signal_arcmin: float = param(3.0, "the correlation's significance is measured over the pairs closer than this (the bins whose centre is within it): the separations at which a GP predicts a star from its neighbours (an outer scale of 10 arcmin decorrelates over about 1.6)", unit="arcmin", lo=0.01, hi=600.0)
    corr_min_sigma: float = param(3.0, "the GP is solved only when the residuals' correlation within corr_signal_arcmin stands above its own noise by more than this; otherwise the solution stays TPV only, without the GP's cost", unit="sigma", lo=0.0, hi=1000.0)
    corr_min_pairs: int = param(10, "bins of the correlation with fewer pairs take no part in the kernel fit", lo=1, hi=1_000_000)
    min_length_arcmin: float = param(0.5, "shortest outer scale the kernel fit may reach", unit="arcmin", lo=0.01, hi=1000.0)
    max_length_arcmin: float = param(100.0, "longest outer scale the kernel fit may reach", unit="arcmin", lo=0.01, hi=10000.0)
    min_axis_ratio: float = param(0.2, "smallest minor/major axis ratio of the anisotropic kernel", lo=0.01, hi=1.0)
    block_arcmin: float = param(5.0, "the GP is solved block by block: side of a block of the field", unit="arcmin", lo=0.1, hi=1000.0)
    halo_arcmin: float = param(2.0, "stars this far beyond a block also condition its GP (beyond the residuals' decorrelation length, about 1.6 arcmin on simulated atmospheres; the cost grows as (block + 2 halo)^6 / block^2)", unit="arcmin", lo=0.0, hi=1000.0)
    max_block_stars: int = param(150, "stars at most per block's GP solve, the best measured of the block and its halo: bounds a block's cost at O(n^3) at any density (a full frame of 45,000 matches with 15 mas of atmosphere: 1000 -> 150 took the stage from 6.1 to 1.9 s of CPU, the corrected error 8.6 -> 8.7 mas: the faint stars a block drops carry little of the field)", lo=10, hi=20_000)
    grid_step_arcmin: float = param(1.0, "node spacing of the correction's lookup table", unit="arcmin", lo=0.01, hi=100.0)
    cv_folds: int = param(5, "folds of the cross-validation on held-back stars", lo=2, hi=100)
    cv_max_stars: int = param(5000, "the cross-validation holds back the stars of blocks drawn at random until it has at least this many (all blocks on a frame with fewer): the gate's standard error falls as 1/sqrt(stars), so 5,000 resolve a mean chi-square drop of 4 % of its scatter at 3 sigma, and a declined correction costs a bounded sample, not every block", lo=100, hi=10_000_000)
    cv_min_sigma: float = param(3.0, "the correction is applied when the held-back stars' squared residuals drop by at least this many standard errors", unit="sigma", lo=0.0, hi=100.0)
    seed: int = param(0, "seed of the fold assignment (results are reproducible)", lo=0, hi=2**31 - 1)
    noise_exponent_limit: float = param(0.5, "the predicted error's model of the kept residuals gives the better measured half of the stars its own scale and lets their white noise grow as the error model's centroid variances to the power 1 +- this (the error model's one scale is set by the faint stars; the bright ones, which make the fit, may be better measured than it says), beside the field the TPV leaves (turbulence.residual_variance)", lo=0.0, hi=2.0)
    noise_field_min_sigma: float = param(1.0, "that model's field F stands for the field the TPV leaves (the predicted error's field part where no GP corrects it) when it exceeds its own standard error this many times; otherwise the error model's floor does (few stars measured better than F: F is not told apart from the white noise)", unit="sigma", lo=0.0, hi=100.0)
    field_bound_outer_scale_arcmin: float = param(5.0, "F stands for a field only as far as the residuals' correlation allows: a field of variance F covaries within corr_signal_arcmin as F times its mean correlation there, which the shortest outer scale makes smallest; this is that outer scale (Bernstein et al. 2017: 5-10 arcmin on DECam), so the bound is loose, and tight only where many well-measured stars measure the correlation", unit="arcmin", lo=0.1, hi=1000.0)
    field_bound_sigma: float = param(2.0, "the bound on F takes the measured short-range covariance plus this many standard errors", unit="sigma", lo=0.0, hi=100.0)
    error_map_cells: int = param(8, "cells along x of the coarse predicted-error map (along y in proportion)", lo=1, hi=200)
    frame_mas: float = param(0.02, "systematic error of the reference frame at its epoch (Gaia DR3 to ICRF3), per axis: the CSYER keywords", unit="mas", lo=0.0, hi=1000.0)
    frame_spin_mas_per_yr: float = param(0.01, "residual spin of the reference frame, per axis, times the years from its epoch: added in quadrature to frame_mas", unit="mas/yr", lo=0.0, hi=100.0)

    def _check(self) -> None:
        if self.corr_bins % 2 == 0:
            raise ConfigError(f"config turbulence.corr_bins = {self.corr_bins} must be odd (one bin centred on zero separation)")
        if self.min_length_arcmin >= self.max_length_arcmin:
            raise ConfigError(f"config turbulence.min_length_arcmin = {self.min_length_arcmin} must be below "
                              f"turbulence.max_length_arcmin = {self.max_length_arcmin}")


@dataclass(frozen=True)
class PipelineConfig:
    """The whole configuration: one frozen section per stage."""

    detect: DetectConfig = field(default_factory=DetectConfig)
    pointing: PointingConfig = field(default_factory=PointingConfig)
    regions: RegionConfig = field(default_factory=RegionConfig)
    gaia: GaiaConfig = field(default_factory=GaiaConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    turbulence: TurbulenceConfig = field(default_factory=TurbulenceConfig)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None = None) -> PipelineConfig:
        """Build a config from a nested mapping; absent keys keep their defaults.

        Raises
        ------
        ConfigError
            For an unknown section or field, or a value of the wrong type or out of range.
        """
        return _build(cls, data or {}, "")

    def to_dict(self) -> dict[str, Any]:
        """The config as a nested dict of plain values (YAML- and JSON-friendly)."""
        return _to_plain(self)

    def replace(self, overrides: Mapping[str, Any]) -> PipelineConfig:
        """A copy with ``overrides`` (nested mapping) merged over this config."""
        return PipelineConfig.from_dict(merge_dicts(self.to_dict(), overrides))


def _build(cls: type, data: Mapping[str, Any], prefix: str, base: Any = None) -> Any:
    """``cls`` from a mapping; absent keys keep ``base``'s values (a section's own defaults, e.g. the
    depth pass's, not its class's), or the class defaults without ``base``."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"config section {prefix.rstrip('.') or '<root>'} must be a mapping, got {data!r}")
    known = {f.name: f for f in fields(cls)}
    normalised = {str(k).replace("-", "_"): v for k, v in data.items()}
    lowered = {name.lower(): name for name in known}
    kwargs: dict[str, Any] = {}
    for key, value in normalised.items():
        name = known.get(key) and key or lowered.get(key.lower())
        if name is None:
            raise ConfigError(
                f"unknown config key {prefix}{key!s}; known keys: {', '.join(sorted(known))}"
            )
        sub = _section_type(known[name])
        kwargs[name] = _build(sub, value, f"{prefix}{name}.", base=_field_default(known[name])) if sub else value
    try:
        return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)
    except ConfigError as err:
        section = getattr(cls, "section", "")
        if not section or not prefix or prefix == f"{section}.":
            raise
        # a section used in several places (detect.first, detect.depth): name the place
        raise ConfigError(str(err).replace(f"config {section}.", f"config {prefix}", 1)) from None


def _field_default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _section_type(f: dataclasses.Field) -> type | None:
    default = _field_default(f)
    return type(default) if dataclasses.is_dataclass(default) else None


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, tuple):
        return list(obj)
    return obj


#: Hexadecimal digits kept of a config's SHA-256 in :func:`config_digest`.
CONFIG_DIGEST_CHARS = 16


def config_digest(config: PipelineConfig | Mapping[str, Any]) -> str:
    """A short fingerprint of a configuration: equal configs give equal digests.

    Only the config's sections count (a result's ``config`` also holds the version and
    the depth-match method). A status record keeps it, so that a resubmit under another
    config retries a failure that the old config made (``fit.min_matches`` lowered, ``gaia.margin_deg`` raised...).
    """
    import hashlib
    import json

    plain = config.to_dict() if isinstance(config, PipelineConfig) else dict(config)
    sections = {f.name for f in fields(PipelineConfig)}
    plain = {key: value for key, value in plain.items() if key in sections}  # not a result's extra entries
    text = json.dumps(plain, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:CONFIG_DIGEST_CHARS]


def merge_dicts(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge ``over`` into a copy of ``base`` (keys normalised: '-' -> '_')."""
    out = {str(k).replace("-", "_"): v for k, v in base.items()}
    for key, value in over.items():
        key = str(key).replace("-", "_")
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_dicts(out[key], value)
        else:
            out[key] = value
    return out


def parse_assignment(text: str) -> dict[str, Any]:
    """Turn ``"fit.tpv_degree=4"`` into ``{"fit": {"tpv_degree": 4}}``.

    The value is parsed as YAML, so numbers, booleans and lists work.
    """
    import yaml

    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected SECTION.FIELD=VALUE, e.g. fit.tpv_degree=4")
    path, raw = text.split("=", 1)
    keys = [k.strip() for k in path.split(".") if k.strip()]
    if not keys:
        raise ConfigError(f"--set {text!r}: no key before '='")
    try:
        value: Any = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {text!r}: cannot parse value {raw!r}: {err}") from err
    for key in reversed(keys):
        value = {key: value}
    return value


def describe(config: PipelineConfig | None = None) -> list[tuple[str, Any, str, str]]:
    """Rows (key, value, unit, description) for every field of the config."""
    config = config or PipelineConfig()
    rows: list[tuple[str, Any, str, str]] = []

    def walk(obj: Any, prefix: str) -> None:
        for f in fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            else:
                rows.append((f"{prefix}{f.name}", value, f.metadata.get("unit", ""), f.metadata.get("doc", "")))

    walk(config, "")
    return rows
