"""One exposure, serially, stage by stage: the Condor solve (docs/algorithm.md, steps 1 to 6).

Each stage is a function of arrays and tables with no Dask in it, so the Dask graph
(``astrodask.run.graph``) calls the same functions as tasks. All are pure but one:
:func:`stage_references` reads the tile cache or, with neither a catalog nor a cache, queries
the Gaia archive. What they hand on is named (:class:`~astrodask.types.Detections`,
:class:`~astrodask.types.References`, :class:`~astrodask.types.Reduced`), and
:class:`StageClock` times them by :class:`~astrodask.types.Stage`:

1. :func:`stage_sources` and :func:`stage_references`: ``get_image_ij`` and ``get_gaia_xy``.
2. :func:`stage_regions`: a coarse alignment, astroalign in each of the 24 regions,
   and the reducer :func:`astrodask.solve.match.mean_affine`.
3. :func:`stage_initial_tpv`: pairs clipped at ``CLIPPING_THRESHOLD``, the TPV fit.
4. :func:`stage_depth`: the relaxed detection pass, ``depth_match``, rounds of RMS clipping and refits.
5. :func:`stage_error_model`: ``like_fit`` with ``ERROR_THRESHOLD`` clipping and refits;
   :func:`stage_turbulence`: the residuals' correlation, a GP correction when cross-validation
   shows it helps, and the solution's predicted error (:mod:`astrodask.solve.turbulence`).
6. :func:`stage_chi_square`: chi-square over the entire matched list and over the kept pairs, and the
   quality gates (``fit.chi2_gate`` says which chi-square ``fit.max_chi2_dof`` limits).

:func:`solve_exposure` runs them in order; :func:`solve_file` reads the file and
turns any failure into a reported status (the one place that catches everything,
so that a backlog goes on).
"""

from __future__ import annotations

import functools
import logging
import math
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table
from scipy.spatial import cKDTree

from astrodask import __version__
from astrodask.config import FitConfig, PipelineConfig
from astrodask.solve.depth import depth_match
from astrodask.solve.detect import (Background, WorkMap, check_pixels, detect_pass, detect_passes,
                                    subtract_background)
from astrodask.solve.errmodel import MAS_PER_DEG, ErrorModel, chi_square, error_clip, like_fit, sky_covariance
from astrodask.solve.turbulence import TurbulenceResult, correct_turbulence
from astrodask.errors import AstrodaskError, MatchError, NoSourcesError, SolveError
from astrodask.io.exposure import approximate_wcs, get_pointing, header_notes, read_exposure
from astrodask.reference.footprint import get_gaia_xy
from astrodask.solve.match import (Affine, CandidateList, CoarseAttempt, RegionMatch, adapted_grid, coarse_align,
                             match_region, matching_depth, mean_affine, region_grid)
from astrodask.solve.tpv import (TPVSolution, fit_residuals_arcsec, fit_tpv, local_jacobian, min_points_for_degree,
                           pixel_to_world, world_to_pixel)
from astrodask.types import (ARTEFACT_FLAGS, FAILED, SOLVED, Detections, Exposure, ExposureInfo, ExposureResult,
                             FailureDiagnostics, FailureKind, Reduced, References, SourceFlag, Stage, exposure_name)

log = logging.getLogger(__name__)

#: Source flags that keep a source out of the fits (its centroid is not trustworthy, or it is not a star).
UNFIT_FLAGS = int(SourceFlag.SATURATED | SourceFlag.EDGE | SourceFlag.WINPOS_FAILED | SourceFlag.BLENDED
                  | ARTEFACT_FLAGS)
#: Source flags that keep a source out of region matching by astroalign and of the coarse vote.
MATCH_FLAGS = UNFIT_FLAGS
#: Source flags that keep a source out of the regions' proximity match: saturated and blended stars
#: take part (their centroids are good enough to pair, and the brightest references often are
#: saturated in the image); their pairs only seed the first TPV fit, never the final ones.
WIDE_MATCH_FLAGS = int(SourceFlag.EDGE | SourceFlag.WINPOS_FAILED | ARTEFACT_FLAGS)
#: Systematic floor (mas) assumed for the weights before like_fit has measured one.
INITIAL_FLOOR_MAS = 20.0
#: Pairs needed per fitted parameter (per axis) before the full degree is fitted.
PAIRS_PER_TERM = 3


@dataclass(frozen=True)
class Pairs:
    """Matched pairs: indices into a source table and into the reference table."""

    src: np.ndarray
    ref: np.ndarray

    def __len__(self) -> int:
        return int(len(self.src))

    def subset(self, keep: np.ndarray) -> Pairs:
        """The pairs where ``keep`` is True."""
        return Pairs(self.src[keep], self.ref[keep])


# ---------------------------------------------------------------- step 1


def stage_sources(exposure: Exposure, *, config: PipelineConfig, clock: StageClock | None = None,
                  trace: dict[str, Any] | None = None, work_map: WorkMap | None = None) -> tuple[Table, Table]:
    """``get_image_ij`` on the exposure: the first pass and the relaxed depth pass, on one background.

    The image is copied and its background subtracted once
    (:func:`astrodask.solve.detect.subtract_background`), and with ``detect.first_from_depth``
    (the default) SEP extracts once (:func:`astrodask.solve.detect.measure_passes`): ``clock``
    (if given) then times all of it as :attr:`Stage.DETECT`; with two extractions, the depth
    pass as :attr:`Stage.DETECT_DEPTH`. ``trace`` (if given) gets the first pass as ``"sources"``.
    ``work_map`` maps the extraction over its strips (:data:`astrodask.solve.detect.WorkMap`;
    None: in this process).

    Raises
    ------
    ImageError
        No pixel is finite (:func:`astrodask.solve.detect.check_pixels`).
    NoSourcesError
        The image is overexposed (:func:`astrodask.solve.detect.check_pixels`), or the first
        pass found no source at all: blank sky, a closed shutter, not a sky image.
    """
    check_pixels(exposure.data, saturation_adu=exposure.saturate_adu, config=config.detect,
                 where=str(exposure.path))
    background = subtract_background(exposure.data, config=config.detect)
    if config.detect.first_from_depth:
        sources, deep = detect_passes(exposure, background, config=config.detect, work_map=work_map)
        _check_sources(exposure.info, sources, background, config=config)
        if clock is not None:
            clock.lap(Stage.DETECT_DEPTH)
    else:
        sources = detect_pass(exposure, background, config=config.detect, work_map=work_map)
        _check_sources(exposure.info, sources, background, config=config)
        if clock is not None:
            clock.lap(Stage.DETECT_DEPTH)
        deep = detect_pass(exposure.info, background, config=config.detect, depth=True, work_map=work_map)
    if trace is not None:
        trace["sources"] = sources
    return sources, deep


def _check_sources(info: ExposureInfo, sources: Table, background: Background, *, config: PipelineConfig) -> None:
    if len(sources) == 0:
        raise NoSourcesError(f"{info.path}: no sources above {config.detect.first.thresh_sigma:g} sigma "
                             f"(background rms {background.rms_adu:.3g} ADU): "
                             "blank sky, a closed shutter or not a sky image")


def stage_references(exposure: Exposure | ExposureInfo, *, catalog: Table | None, config: PipelineConfig,
                     pointing: dict[str, Any] | None = None, cache_url: str | None = None,
                     fill: Callable[[list[int]], object] | None = None) -> References:
    """The approximate WCS and ``get_gaia_xy``'s reference stars at the exposure's epoch.

    The stars come from ``catalog``, else from the Gaia tile cache at ``cache_url`` (the tiles
    over the footprint plus the margin; tiles it lacks are given to ``fill``, and with no
    ``fill`` a missing tile is an error naming it), else from the Gaia archive.
    """
    found = get_pointing(exposure.header, path=exposure.path, config=config.pointing, **(pointing or {}))
    wcs0 = approximate_wcs(found, exposure.shape)
    if catalog is None and cache_url is not None:
        from astrodask.reference.store import TileCache, read_field
        from astrodask.reference.footprint import footprint_corners

        catalog = read_field(TileCache(cache_url), footprint_corners(wcs0, exposure.shape),
                             margin_deg=config.gaia.margin_deg, mag_limit=config.gaia.mag_limit, fill=fill)
    refs = get_gaia_xy(wcs0, exposure.shape, epoch_yr=exposure.epoch_yr, catalog=catalog, config=config.gaia)
    refs.meta["pointing_source"] = found.source
    return References(wcs0, refs)


def footprint_tiles(info: ExposureInfo, *, config: PipelineConfig, pointing: dict[str, Any] | None = None,
                    level: int | None = None) -> np.ndarray:
    """The Gaia cache tiles a solve of this exposure reads (footprint plus ``gaia.margin_deg``).

    The same approximate WCS and margin as :func:`stage_references`, from the header only.
    """
    from astrodask.reference.healpix import TILE_LEVEL, tiles_for_footprint
    from astrodask.reference.footprint import footprint_corners

    found = get_pointing(info.header, path=info.path, config=config.pointing, **(pointing or {}))
    wcs0 = approximate_wcs(found, info.shape)
    return tiles_for_footprint(footprint_corners(wcs0, info.shape), margin_deg=config.gaia.margin_deg,
                               level=TILE_LEVEL if level is None else level)


# ---------------------------------------------------------------- step 2


@dataclass(frozen=True)
class RegionInputs:
    """What every region-matching task needs: the points, the coarse transform, the grid.

    Attributes
    ----------
    src
        Usable image sources (N, 2), 0-based pixels, brightest first.
    src_index
        Their rows in the source table.
    tgt
        The brightest references (M, 2) in approximate-WCS pixels.
    guess
        The coarse transform, image pixels -> approximate-WCS pixels.
    regions
        The region grid.
    min_good
        Regions that must agree.
    coarse
        The coarse alignment's attempts (for the diagnostics of a failed solve).
    wide, wide_index
        Sources for the regions' proximity match (saturated and blended ones included,
        artefacts not), brightest first, and their rows in the source table.
    """

    src: np.ndarray
    src_index: np.ndarray
    tgt: np.ndarray
    guess: Affine
    regions: tuple
    min_good: int
    coarse: tuple[CoarseAttempt, ...] = ()
    wide: np.ndarray | None = None
    wide_index: np.ndarray | None = None


#: Stars per list in the coarse alignment's offset vote (brightest first).
VOTE_STARS = 300
#: Stars that verify each coarse-alignment attempt (brightest usable sources; references to the same depth).
VERIFY_STARS = 1000


def coarse_candidates(sources: Table, src: np.ndarray, tgt_inside: np.ndarray, *,
                      config: PipelineConfig) -> list[CandidateList]:
    """The lists the coarse alignment tries, in order.

    1. astroalign on the brightest ``coarse_control_points`` sources (saturated and
       blended ones included, artefacts not) and references: the usual case.
    2. The offset vote on :data:`VOTE_STARS` star-like sources and references to the
       same depth: it needs no agreement of flux ranks (plates, crowded fields), and
       costs less than a failing astroalign.
    3. astroalign on the brightest unsaturated star-like sources, and the references
       past as many as there are saturated sources (a magnitude window: the brightest
       references are the saturated, often unmeasurable, stars).
    """
    rc = config.regions
    n = rc.coarse_control_points
    flags = np.asarray(sources["flag"])
    not_artefact = (flags & int(ARTEFACT_FLAGS)) == 0
    everything = np.column_stack([np.asarray(sources["i"])[not_artefact], np.asarray(sources["j"])[not_artefact]])
    n_saturated = int(np.count_nonzero((flags & int(SourceFlag.SATURATED)) != 0))
    n_vote = min(VOTE_STARS, len(src))
    n_vote_ref = int(math.ceil(rc.reference_excess * n_vote))
    return [
        CandidateList(f"brightest {min(n, len(everything))} sources and references", "astroalign",
                      everything[:n], tgt_inside[:n]),
        CandidateList(f"{n_vote} star-like sources and {min(n_vote_ref, len(tgt_inside))} references",
                      "vote", src[:n_vote], tgt_inside[:n_vote_ref]),
        CandidateList(f"brightest {min(n, len(src))} star-like unsaturated sources; references past the "
                      f"{n_saturated} brightest", "astroalign", src[:n], tgt_inside[n_saturated: n_saturated + n]),
    ]


def prepare_regions(sources: Table, refs: Table, shape: tuple[int, int], *, config: PipelineConfig) -> RegionInputs:
    """Usable sources, references to the same depth, the coarse alignment and the region grid.

    Raises
    ------
    MatchError
        Too few stars, or no coarse alignment (``details`` lists the attempts).
    """
    rc = config.regions
    usable = np.nonzero((np.asarray(sources["flag"]) & MATCH_FLAGS) == 0)[0]
    n_ref = matching_depth(len(usable), np.asarray(refs["in_image"]), excess=rc.reference_excess)
    src = np.column_stack([np.asarray(sources["i"])[usable], np.asarray(sources["j"])[usable]])
    tgt = np.column_stack([np.asarray(refs["x"])[:n_ref], np.asarray(refs["y"])[:n_ref]])
    inside = np.asarray(refs["in_image"][:n_ref], dtype=bool)
    if len(src) < 3 or inside.sum() < 3:
        hint = ""
        if len(src) >= 3 and len(refs) > inside.sum():
            hint = (f"; {len(refs)} references lie around the image but not in it: is the header's pointing off by "
                    f"more than gaia.margin_deg = {config.gaia.margin_deg:g} deg? Give --ra and --dec, or raise "
                    "gaia.margin_deg")
        raise MatchError(f"{len(src)} usable sources and {int(inside.sum())} references in the image: too few to "
                         f"match{hint}")
    tgt_inside = tgt[inside]
    scale = float(refs.meta.get("scale_arcsec") or config.pointing.plate_scale_arcsec)
    n_verify_ref = int(math.ceil(rc.reference_excess * min(VERIFY_STARS, len(src))))
    coarse = coarse_align(coarse_candidates(sources, src, tgt_inside, config=config), src[:VERIFY_STARS],
                          tgt_inside[:n_verify_ref], shape=shape,
                          max_shift_px=config.gaia.margin_deg * 3600.0 / scale, config=rc)
    n_regions, min_good = adapted_grid(len(src), rc, shape)
    if n_regions != rc.n_regions:
        log.info("small or sparse frame (%d x %d px, %d usable sources): %d regions instead of %d, %d must agree",
                 shape[1], shape[0], len(src), n_regions, rc.n_regions, min_good)
    regions = region_grid(shape, n_regions=n_regions, nx=rc.nx, ny=rc.ny)
    wide_index = np.nonzero((np.asarray(sources["flag"]) & WIDE_MATCH_FLAGS) == 0)[0]
    wide = np.column_stack([np.asarray(sources["i"])[wide_index], np.asarray(sources["j"])[wide_index]])
    return RegionInputs(src, usable, tgt, coarse.affine, regions, min_good, coarse.attempts, wide, wide_index)


def stage_region(inputs: RegionInputs, index: int, *, config: PipelineConfig) -> RegionMatch:
    """astroalign in one region (one task of the graph); source indices refer to the source table."""
    m = match_region(inputs.regions[index], inputs.src, inputs.tgt, guess=inputs.guess, config=config.regions,
                     wide_ij=inputs.wide)
    rows = inputs.wide_index if m.method == "proximity" and inputs.wide_index is not None else inputs.src_index
    return RegionMatch(m.region, m.status, m.reason, m.affine, rows[m.src_index], m.tgt_index,
                       m.rms_px, m.n_sources, m.n_targets, m.method)


def reduce_regions(matches: tuple[RegionMatch, ...] | list[RegionMatch], sources: Table, inputs: RegionInputs, *,
                   config: PipelineConfig) -> Reduced:
    """The reducer: the mean affine of the regions that agree.

    Raises
    ------
    MatchError
        Too few regions agree.
    """
    src_all = np.column_stack([np.asarray(sources["i"]), np.asarray(sources["j"])])
    try:
        affine, verdicts = mean_affine(list(matches), src_all, inputs.tgt, config=config.regions,
                                       min_good=inputs.min_good)
    except MatchError as err:
        raise MatchError(str(err), details={**err.details, "coarse": [a.as_dict() for a in inputs.coarse]}) from err
    return Reduced(affine, tuple(verdicts))


def stage_regions(sources: Table, refs: Table, shape: tuple[int, int], *, config: PipelineConfig) -> Reduced:
    """Coarse alignment, astroalign per region and the mean affine, serially."""
    inputs = prepare_regions(sources, refs, shape, config=config)
    matches = [stage_region(inputs, k, config=config) for k in range(len(inputs.regions))]
    return reduce_regions(matches, sources, inputs, config=config)


def initial_solution(wcs0: Any, affine: Affine) -> TPVSolution:
    """The approximate WCS corrected by the mean affine, as a linear (identity-PV) TPV solution.

    With (x, y) = A p + b the approximate-WCS pixels of image pixel p and
    (xi, eta) = CD0 ((x, y) - c0), the corrected WCS has CD = CD0 A and the
    tangent point at p0 = A^-1 (c0 - b). A distortion in the approximate header is ignored.
    """
    cd0 = np.asarray(wcs0.pixel_scale_matrix, dtype=np.float64)
    c0 = np.asarray(wcs0.wcs.crpix, dtype=np.float64) - 1.0  # FITS CRPIX is 1-based
    p0 = np.linalg.solve(affine.matrix, c0 - affine.offset)
    return TPVSolution.linear(crpix=(float(p0[0]), float(p0[1])),
                              crval=(float(wcs0.wcs.crval[0]), float(wcs0.wcs.crval[1])), cd=cd0 @ affine.matrix)


# ---------------------------------------------------------------- step 3


def region_pairs(matches: tuple[RegionMatch, ...], sources: Table, refs: Table, *, scale_arcsec: float,
                 config: FitConfig) -> Pairs:
    """The agreeing regions' pairs, clipped at ``CLIPPING_THRESHOLD`` around their own region's affine."""
    src_all, ref_all = [], []
    for m in matches:
        if not m.ok or m.affine is None:
            continue
        p = np.column_stack([sources["i"][m.src_index], sources["j"][m.src_index]])
        t = np.column_stack([refs["x"][m.tgt_index], refs["y"][m.tgt_index]])
        dist_arcsec = np.linalg.norm(m.affine.apply(p) - t, axis=1) * scale_arcsec
        keep = dist_arcsec <= config.CLIPPING_THRESHOLD
        src_all.append(m.src_index[keep])
        ref_all.append(m.tgt_index[keep])
    if not src_all:
        return Pairs(np.zeros(0, int), np.zeros(0, int))
    src, ref = np.concatenate(src_all), np.concatenate(ref_all)
    _, first = np.unique(ref, return_index=True)  # a reference in two regions' margins: once
    first = np.sort(first)
    return Pairs(src[first], ref[first])


def _degree_for(n_pairs: int, degree: int) -> int:
    """The highest degree up to ``degree`` that ``n_pairs`` pairs constrain well."""
    while degree > 1 and n_pairs < PAIRS_PER_TERM * min_points_for_degree(degree):
        degree -= 1
    return degree


def _weights(sources: Table, idx: np.ndarray, solution: TPVSolution, model: ErrorModel | None) -> np.ndarray:
    """Least-squares weights 1 / sigma^2 (1/mas^2) from the SEP covariances and the error model."""
    cov = _sky_cov(sources, idx, solution)
    if model is None:
        total = cov + (INITIAL_FLOOR_MAS**2) * np.eye(2)
    else:
        total = model.covariance(cov)
    return 1.0 / (0.5 * (total[:, 0, 0] + total[:, 1, 1]))


def _sky_cov(sources: Table, idx: np.ndarray, solution: TPVSolution) -> np.ndarray:
    i, j = np.asarray(sources["i"])[idx], np.asarray(sources["j"])[idx]
    return sky_covariance(np.asarray(sources["var_i"])[idx], np.asarray(sources["var_j"])[idx],
                          np.asarray(sources["var_ij"])[idx], local_jacobian(solution, i, j))


def fit_pairs(sources: Table, refs: Table, pairs: Pairs, *, guess: TPVSolution, shape: tuple[int, int],
              degree: int, model: ErrorModel | None = None) -> TPVSolution:
    """Weighted TPV fit of matched pairs, tangent point at the image centre."""
    ny, nx = shape
    centre = ((nx - 1) / 2.0, (ny - 1) / 2.0)
    ra0, dec0 = pixel_to_world(guess, np.array([centre[0]]), np.array([centre[1]]))
    fit_degree = _degree_for(len(pairs), degree)
    if fit_degree < degree:
        log.debug("fit_pairs: %d pairs fit degree %d instead of %d", len(pairs), fit_degree, degree)
    return fit_tpv(np.asarray(sources["i"])[pairs.src], np.asarray(sources["j"])[pairs.src],
                   np.asarray(refs["ra"])[pairs.ref], np.asarray(refs["dec"])[pairs.ref],
                   degree=fit_degree, weights=_weights(sources, pairs.src, guess, model),
                   crpix=centre, crval0=(float(ra0[0]), float(dec0[0])), cd0=guess.cd)


def stage_initial_tpv(sources: Table, refs: Table, matches: tuple[RegionMatch, ...], *, wcs0: Any, affine: Affine,
                      shape: tuple[int, int], config: PipelineConfig) -> tuple[TPVSolution, Pairs]:
    """Pairs of the agreeing regions clipped at ``CLIPPING_THRESHOLD``, then the TPV fit."""
    guess = initial_solution(wcs0, affine)
    pairs = region_pairs(matches, sources, refs, scale_arcsec=guess.scale_arcsec, config=config.fit)
    if len(pairs) < min_points_for_degree(1) + 1:
        raise MatchError(f"only {len(pairs)} region pairs within CLIPPING_THRESHOLD = "
                         f"{config.fit.CLIPPING_THRESHOLD} arcsec")
    solution = fit_pairs(sources, refs, pairs, guess=guess, shape=shape, degree=config.fit.tpv_degree)
    return solution, pairs


# ---------------------------------------------------------------- step 4


def depth_pairs(sources: Table, refs: Table, solution: TPVSolution, *, shape: tuple[int, int],
                config: FitConfig) -> tuple[Pairs, str]:
    """``depth_match`` of the depth-pass sources to the references predicted by ``solution``."""
    usable = np.nonzero((np.asarray(sources["flag"]) & UNFIT_FLAGS) == 0)[0]
    x, y = world_to_pixel(solution, np.asarray(refs["ra"]), np.asarray(refs["dec"]))
    ny, nx = shape
    m = config.edge_margin_px
    inside = np.nonzero(np.isfinite(x) & np.isfinite(y) & (x > -0.5 - m) & (x < nx - 0.5 + m)
                        & (y > -0.5 - m) & (y < ny - 0.5 + m))[0]
    ref_flux = np.nan_to_num(np.asarray(refs["phot_g_mean_flux"], dtype=np.float64)[inside], nan=0.0)
    xy = np.column_stack([x[inside], y[inside]])
    result = depth_match(np.column_stack([sources["i"][usable], sources["j"][usable]]),
                         np.asarray(sources["flux_adu"])[usable], xy, ref_flux,
                         radius_px=config.match_radius_arcsec / solution.scale_arcsec, window=config.depth_window)
    # every reference takes part in the match, but one with a close Gaia neighbour is an
    # unresolved blend in the image: its centroid is not its position, so the pair is dropped
    blended = blended_references(xy, ref_flux, radius_px=config.neighbour_radius_arcsec / solution.scale_arcsec,
                                 flux_ratio=config.neighbour_flux_ratio)
    keep = ~blended[result.tgt_index]
    log.debug("depth_pairs: %d pairs, %d dropped for a close Gaia neighbour", len(keep), int((~keep).sum()))
    return Pairs(usable[result.src_index[keep]], inside[result.tgt_index[keep]]), result.method


def blended_references(xy: np.ndarray, flux: np.ndarray, *, radius_px: float, flux_ratio: float) -> np.ndarray:
    """Mask of references with another reference within ``radius_px`` brighter than ``flux_ratio`` of theirs."""
    blended = np.zeros(len(xy), dtype=bool)
    if radius_px <= 0 or len(xy) < 2:
        return blended
    pairs = cKDTree(xy).query_pairs(radius_px, output_type="ndarray")
    if len(pairs):
        a, b = pairs[:, 0], pairs[:, 1]
        blended[a[flux[b] > flux_ratio * flux[a]]] = True
        blended[b[flux[a] > flux_ratio * flux[b]]] = True
    return blended


def residuals_mas(sources: Table, refs: Table, pairs: Pairs, solution: TPVSolution) -> np.ndarray:
    """(N, 2) residuals (source - Gaia) in the tangent plane, mas (xi east, eta north)."""
    return 1000.0 * fit_residuals_arcsec(solution, np.asarray(sources["i"])[pairs.src],
                                         np.asarray(sources["j"])[pairs.src],
                                         np.asarray(refs["ra"])[pairs.ref], np.asarray(refs["dec"])[pairs.ref])


def stage_depth(sources: Table, refs: Table, solution: TPVSolution, *, shape: tuple[int, int],
                config: PipelineConfig) -> tuple[TPVSolution, Pairs, Pairs, str]:
    """The depth match, then rounds of RMS clipping, each followed by a TPV refit.

    Returns the refitted solution, all depth-matched pairs, the pairs kept, and
    the match method ("depth" or "failsafe").
    """
    fc = config.fit
    matched, method = depth_pairs(sources, refs, solution, shape=shape, config=fc)
    if len(matched) < fc.min_matches:
        raise SolveError(f"depth match: {len(matched)} matches, at least {fc.min_matches} needed")
    solution = fit_pairs(sources, refs, matched, guess=solution, shape=shape, degree=fc.tpv_degree)
    keep = np.ones(len(matched), dtype=bool)
    for _ in range(fc.rms_clip_rounds):
        dist = np.linalg.norm(residuals_mas(sources, refs, matched, solution), axis=1)
        rms = float(np.sqrt(np.mean(dist[keep] ** 2)))
        new_keep = dist <= fc.rms_clip_sigma * rms
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
        solution = fit_pairs(sources, refs, matched.subset(keep), guess=solution, shape=shape, degree=fc.tpv_degree)
    return solution, matched, matched.subset(keep), method


# ---------------------------------------------------------------- step 5


def stage_error_model(sources: Table, refs: Table, pairs: Pairs, solution: TPVSolution, *,
                      shape: tuple[int, int], config: PipelineConfig) -> tuple[TPVSolution, ErrorModel, np.ndarray]:
    """``like_fit`` with ``ERROR_THRESHOLD`` clipping; each round refits the TPV with the model's weights.

    Returns the solution, the error model and the keep mask over ``pairs``.
    """
    fc = config.fit
    state = {"solution": solution}

    def refit(keep: np.ndarray, model: ErrorModel | None) -> np.ndarray:
        state["solution"] = fit_pairs(sources, refs, pairs.subset(keep), guess=state["solution"], shape=shape,
                                      degree=fc.tpv_degree, model=model)
        return residuals_mas(sources, refs, pairs, state["solution"])

    cov = _sky_cov(sources, pairs.src, solution)
    result = error_clip(residuals_mas(sources, refs, pairs, solution), cov, threshold=fc.ERROR_THRESHOLD,
                        rounds=fc.error_clip_rounds, refit=refit, change_tolerance=fc.error_clip_tolerance)
    # a last refit weighted by the final model, and the model of its residuals
    keep = result.keep
    res = refit(keep, result.model)
    model = like_fit(res[keep], cov[keep], initial=result.model)
    return state["solution"], model, keep


def stage_turbulence(sources: Table, refs: Table, pairs: Pairs, solution: TPVSolution, model: ErrorModel, *,
                     shape: tuple[int, int], epoch_yr: float | None, config: PipelineConfig) -> TurbulenceResult:
    """The turbulence stage on the pairs kept by ``like_fit`` (:func:`astrodask.solve.turbulence.correct_turbulence`).

    The white noise of a star is its centroid covariance scaled by the error model; its whole
    variance adds the model's floor. Folds are drawn from ``turbulence.seed``.
    """
    res = residuals_mas(sources, refs, pairs, solution)
    cov = _sky_cov(sources, pairs.src, solution)
    noise = model.scale ** 2 * np.stack([cov[:, 0, 0], cov[:, 1, 1]], axis=1)
    total = noise + model.floor_mas ** 2

    def jacobian(i: np.ndarray, j: np.ndarray) -> np.ndarray:
        return local_jacobian(solution, i, j) * MAS_PER_DEG

    return correct_turbulence(np.asarray(sources["i"])[pairs.src], np.asarray(sources["j"])[pairs.src], res, noise,
                              total, shape=shape, scale_arcsec=solution.scale_arcsec,
                              degree=solution.degree, jacobian_mas_per_px=jacobian,
                              epoch_yr=epoch_yr, config=config.turbulence,
                              rng=np.random.default_rng(config.turbulence.seed))


# ---------------------------------------------------------------- step 6


def n_fit_parameters(degree: int) -> int:
    """Free parameters of a TPV solution of this degree: both axes' polynomial terms."""
    return 2 * min_points_for_degree(degree)


def stage_chi_square(sources: Table, refs: Table, pairs: Pairs, solution: TPVSolution, model: ErrorModel,
                     keep: np.ndarray | None = None):
    """Chi-square with the final error model over the entire matched list, and over the pairs ``keep`` flags."""
    res = residuals_mas(sources, refs, pairs, solution)
    cov = _sky_cov(sources, pairs.src, solution)
    return chi_square(res, cov, model, n_params=n_fit_parameters(solution.degree), keep=keep)


def matched_list(sources: Table, refs: Table, pairs: Pairs, keep: np.ndarray, solution: TPVSolution,
                 model: ErrorModel) -> Table:
    """The entire matched list with residuals (mas), normalised residuals and the final keep flag."""
    from astrodask.solve.errmodel import normalized_residuals

    res = residuals_mas(sources, refs, pairs, solution)
    chi = normalized_residuals(res, _sky_cov(sources, pairs.src, solution), model)
    table = Table({
        "i": np.asarray(sources["i"])[pairs.src], "j": np.asarray(sources["j"])[pairs.src],
        "flux_adu": np.asarray(sources["flux_adu"])[pairs.src],
        "source_id": np.asarray(refs["source_id"])[pairs.ref],
        "ra": np.asarray(refs["ra"])[pairs.ref], "dec": np.asarray(refs["dec"])[pairs.ref],
        "phot_g_mean_mag": np.asarray(refs["phot_g_mean_mag"])[pairs.ref],
        "dxi_mas": res[:, 0], "deta_mas": res[:, 1], "chi": chi, "kept": np.asarray(keep, dtype=bool),
    })
    for name, unit in {"i": "pix", "j": "pix", "ra": "deg", "dec": "deg", "dxi_mas": "mas", "deta_mas": "mas",
                       "phot_g_mean_mag": "mag", "flux_adu": "adu"}.items():
        table[name].unit = unit
    return table


def pointing_offset_deg(solution: TPVSolution, wcs0: Any, shape: tuple[int, int]) -> float:
    """Angular distance between the image centre through the solution and through the approximate WCS, degrees."""
    from astrodask.sphere import angular_separation_deg

    ny, nx = shape
    ci, cj = np.array([(nx - 1) / 2.0]), np.array([(ny - 1) / 2.0])
    ra, dec = pixel_to_world(solution, ci, cj)
    ra0, dec0 = wcs0.pixel_to_world_values(ci, cj)
    return float(angular_separation_deg(float(ra[0]), float(dec[0]), float(ra0[0]), float(dec0[0])))


def quality_gates(*, n_kept: int, rms_arcsec: tuple[float, float], quality: Any, model: ErrorModel,
                  scale_arcsec: float, config: FitConfig, offset_deg: float = 0.0,
                  search_radius_deg: float = math.inf) -> str:
    """The reason a solve fails its quality gates, or "" when it passes (limits in pixels of this camera).

    Beyond the fit's figures, a solution whose centre lies farther from the header's pointing
    than the search radius (``gaia.margin_deg``) is refused: the reference stars were only looked
    for that far, so such a match can only be a repeated pattern of the sky, not this field.
    """
    if offset_deg > search_radius_deg:
        return (f"the solution's centre is {offset_deg:.3f} deg from the header's pointing, beyond the "
                f"search radius gaia.margin_deg = {search_radius_deg} deg (raise it, e.g. --set gaia.margin_deg=0.5, "
                f"if headers can be that far off)")
    if n_kept < config.min_matches:
        return f"{n_kept} matches kept, at least {config.min_matches} needed"
    rms_px = max(rms_arcsec) / scale_arcsec
    if rms_px > config.max_rms_px:
        return (f"residual rms ({rms_arcsec[0]:.3f}, {rms_arcsec[1]:.3f}) arcsec = {rms_px:.3f} px above "
                f"{config.max_rms_px} px")
    kept_only = config.chi2_gate == "kept"
    chi2_dof = quality.chi2_dof_kept if kept_only else quality.chi2_dof
    if not np.isfinite(chi2_dof) or chi2_dof > config.max_chi2_dof:
        over = "the kept pairs" if kept_only else "all matched pairs"
        return (f"chi-square/dof {chi2_dof:.3g} over {over} above {config.max_chi2_dof} "
                f"(fit.chi2_gate = {config.chi2_gate})")
    floor_px = model.floor_mas / 1000.0 / scale_arcsec
    if floor_px > config.max_floor_px:
        return f"error-model floor {model.floor_mas:.0f} mas = {floor_px:.3f} px above {config.max_floor_px} px"
    return ""


# ---------------------------------------------------------------- the whole solve


class StageClock:
    """Seconds per :class:`~astrodask.types.Stage`, and the stage currently running.

    Parameters
    ----------
    timings
        Seconds of stages run elsewhere (the Dask graph's earlier tasks), carried on.
    """

    def __init__(self, timings: Mapping[str, float] | None = None) -> None:
        self.timings: dict[str, float] = dict(timings or {})
        self.stage = Stage.READ
        self._start = time.perf_counter()

    def lap(self, next_stage: Stage | None) -> None:
        """Close the running stage's time and start ``next_stage`` (None: stop)."""
        now = time.perf_counter()
        self.timings[self.stage] = self.timings.get(self.stage, 0.0) + now - self._start
        self.stage, self._start = (next_stage or self.stage), now


def solve_exposure(exposure: Exposure, *, catalog: Table | None, config: PipelineConfig | None = None,
                   pointing: dict[str, Any] | None = None, clock: StageClock | None = None,
                   cache_url: str | None = None, trace: dict[str, Any] | None = None,
                   work_map: WorkMap | None = None) -> ExposureResult:
    """Solve one exposure, stage by stage (docs/algorithm.md, steps 1 to 6).

    Parameters
    ----------
    exposure
        The exposure (see :func:`astrodask.io.exposure.read_exposure`).
    catalog
        Reference stars (:func:`astrodask.reference.catalog.read_catalog`); None: the tile cache at
        ``cache_url`` if given (tiles it lacks are filled from the archive, one after the
        other, when ``gaia.fetch_missing_tiles``), else the Gaia archive.
    config
        The pipeline config.
    pointing
        Pointing overrides for :func:`astrodask.io.exposure.get_pointing`
        (``ra_deg``, ``dec_deg``, ``scale_arcsec``, ``rotation_deg``, ``parity``).
    trace
        If given, filled as the stages run (``"sources"``, ``"references"``), so that the
        caller can explain a failure (:class:`~astrodask.types.FailureDiagnostics`).
    work_map
        Maps the extraction over its strips (:data:`astrodask.solve.detect.WorkMap`); None: in
        this process.

    Returns
    -------
    ExposureResult
        Solved, or failed at a quality gate with the reason.

    Raises
    ------
    AstrodaskError
        When a stage cannot run (no pointing, no match...); :func:`solve_file` reports it.
    """
    config = config or PipelineConfig()
    clock = clock or StageClock()
    clock.lap(Stage.DETECT)
    trace = {} if trace is None else trace
    sources, deep = stage_sources(exposure, config=config, clock=clock, trace=trace, work_map=work_map)
    info = exposure.info
    clock.lap(Stage.REFERENCES)
    fill = None
    if catalog is None and cache_url is not None and config.gaia.fetch_missing_tiles:
        from astrodask.reference.fill import fill_tiles

        fill = functools.partial(fill_tiles, cache_url, config=config.gaia)
    references = stage_references(info, catalog=catalog, config=config, pointing=pointing, cache_url=cache_url,
                                  fill=fill)
    trace["references"] = references.stars
    clock.lap(Stage.REGIONS)
    reduced = stage_regions(sources, references.stars, info.shape, config=config)
    return finish_solve(Detections(info, sources, deep), references, reduced, config=config, clock=clock)


def finish_solve(detections: Detections, references: References, reduced: Reduced, *, config: PipelineConfig,
                 clock: StageClock | None = None) -> ExposureResult:
    """Steps 3 to 6 after the reducer: TPV, depth match, ``like_fit``, chi-square and the quality gates."""
    clock = clock or StageClock()
    info, sources, deep = detections.info, detections.sources, detections.deep
    wcs0, refs = references.wcs0, references.stars
    affine, matches = reduced.affine, reduced.matches
    shape = info.shape
    counts = {"sources": len(sources), "depth_sources": len(deep), "references": len(refs),
              "references_in_image": int(refs.meta.get("n_in_image", 0)), "regions_ok": sum(m.ok for m in matches)}
    clock.lap(Stage.TPV)
    solution, pairs0 = stage_initial_tpv(sources, refs, matches, wcs0=wcs0, affine=affine, shape=shape,
                                         config=config)
    counts["region_pairs"] = len(pairs0)
    clock.lap(Stage.DEPTH_MATCH)
    solution, matched, kept, method = stage_depth(deep, refs, solution, shape=shape, config=config)
    counts["depth_matches"] = len(matched)
    counts["rms_clipped"] = len(matched) - len(kept)
    clock.lap(Stage.LIKE_FIT)
    solution, model, keep = stage_error_model(deep, refs, kept, solution, shape=shape, config=config)
    counts["error_clipped"] = int(len(keep) - keep.sum())
    counts["matches"] = int(keep.sum())
    clock.lap(Stage.TURBULENCE)
    turbulence = stage_turbulence(deep, refs, kept.subset(keep), solution, model, shape=shape, epoch_yr=info.epoch_yr,
                                  config=config)
    clock.lap(Stage.CHI_SQUARE)
    quality = stage_chi_square(deep, refs, kept, solution, model, keep)
    final = residuals_mas(deep, refs, kept.subset(keep), solution) / 1000.0
    rms = (float(np.sqrt(np.mean(final[:, 0] ** 2))), float(np.sqrt(np.mean(final[:, 1] ** 2))))
    reason = quality_gates(n_kept=counts["matches"], rms_arcsec=rms, quality=quality, model=model,
                           scale_arcsec=solution.scale_arcsec, config=config.fit,
                           offset_deg=pointing_offset_deg(solution, wcs0, shape),
                           search_radius_deg=config.gaia.margin_deg)
    matched_table = matched_list(deep, refs, kept, keep, solution, model)
    notes = header_notes(info, config=config.detect)
    for note in notes:
        log.warning("%s: %s", info.name, note)
    clock.lap(None)
    return ExposureResult(
        file=str(info.path), name=info.name, status=FAILED if reason else SOLVED,
        reason=f"quality gate: {reason}" if reason else "", stage=Stage.CHI_SQUARE, solution=solution,
        error_model=model, quality=quality, counts=counts, rms_arcsec=rms, timings=clock.timings,
        regions=tuple((m.region.index, m.status, m.reason, len(m.src_index)) for m in matches),
        shape=shape, config={**config.to_dict(), "depth_match_method": method, "version": __version__},
        matched=matched_table, notes=notes, turbulence=turbulence,
    )


def solve_file(path: str | Path, *, catalog: Table | None = None, config: PipelineConfig | None = None,
               pointing: dict[str, Any] | None = None, hdu: int | None = None,
               cache_url: str | None = None, work_map: WorkMap | None = None) -> ExposureResult:
    """Read and solve one exposure file; any failure becomes a failed result with its reason.

    This is the one place that catches every exception, so that one bad
    exposure is reported and a backlog goes on; unexpected errors are logged
    with their traceback. ``work_map``: see :func:`solve_exposure`.
    """
    return _solve_guarded(path, lambda: read_exposure(path, hdu=hdu), catalog=catalog, config=config,
                          pointing=pointing, cache_url=cache_url, work_map=work_map)


def solve_array(data: np.ndarray, header: Any, *, name: str = "image", catalog: Table | None = None,
                config: PipelineConfig | None = None, pointing: dict[str, Any] | None = None,
                cache_url: str | None = None) -> ExposureResult:
    """Solve an exposure already in memory (image and FITS header), as :func:`solve_file` does a file."""
    from astrodask.io.exposure import exposure_from_array

    return _solve_guarded(name, lambda: exposure_from_array(data, header, name=name), catalog=catalog,
                          config=config, pointing=pointing, cache_url=cache_url)


def _solve_guarded(path: str | Path, load: Callable[[], Exposure], *, catalog: Table | None,
                   config: PipelineConfig | None, pointing: dict[str, Any] | None,
                   cache_url: str | None, work_map: WorkMap | None = None) -> ExposureResult:
    """Load and solve one exposure, turning any failure into a failed result (see :func:`solve_file`)."""
    config = config or PipelineConfig()
    clock = StageClock()
    name = Path(path).name
    trace: dict[str, Any] = {}
    details: dict[str, Any] = {}
    try:
        exposure = load()
        return solve_exposure(exposure, catalog=catalog, config=config, pointing=pointing, clock=clock,
                              cache_url=cache_url, trace=trace, work_map=work_map)
    except AstrodaskError as err:
        reason = str(err)
        details = dict(getattr(err, "details", {}))
        kind = FailureKind.of(err)
    except Exception as err:  # noqa: BLE001 - the one place: a failed exposure must not stop a backlog
        log.error("%s: unexpected error in stage %s:\n%s", path, clock.stage, traceback.format_exc())
        reason = f"internal error ({type(err).__name__}: {err})"
        kind = FailureKind.of(err)
    stage = clock.stage
    clock.lap(None)
    log.warning("%s: failed at %s: %s", name, stage, reason)
    return ExposureResult(file=str(path), name=exposure_name(path), status=FAILED, reason=reason,
                          stage=stage, timings=clock.timings, config=config.to_dict(), kind=kind,
                          diagnostics=failure_diagnostics(stage, reason, details, trace.get("sources"),
                                                          trace.get("references")))


def failure_diagnostics(stage: str, reason: str, details: dict[str, Any] | None, sources: Table | None,
                        references: Table | None) -> FailureDiagnostics:
    """The diagnostics of a failed solve: the stage, the reason, what the matcher tried, the tables."""
    return FailureDiagnostics({"stage": stage, "reason": reason, **(details or {})}, sources, references)

