"""Region matching and the mean affine (docs/algorithm.md, step 2).

The image is divided into 24 regions (6 x 4 on a Condor frame: the grid follows
the aspect ratio). In each region, image sources are matched to their Gaia
counterparts with astroalign, giving an affine transformation per region from
image pixels (i, j) to the reference stars' pixels (x, y) through the
approximate WCS. The reducer computes the field's mean affine from the regions
that agree.

Before the regions, one coarse astroalign match over the whole frame (on
coordinates divided by ``coarse_bin_factor``, so that astroalign's 2 px
tolerance absorbs the distortion) takes out pointing, rotation and scale errors
of the approximate header; each region then only has to look nearby.

astroalign's RANSAC is not seedable: every transform here is refitted
deterministically (least squares) from the pairs it found, then from all
nearest-neighbour pairs within ``pair_radius_px``, so results are stable.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import Any

import astroalign
import numpy as np
from scipy.spatial import cKDTree

from astrodask.config import RegionConfig
from astrodask.errors import MatchError

log = logging.getLogger(__name__)

#: Refits of a region's affine from its nearest-neighbour pairs.
AFFINE_REFITS = 3
#: Minimum pairs for an affine fit (6 parameters, with redundancy).
MIN_AFFINE_PAIRS = 4
#: Sigma-clipping of a region's pairs around its affine, in units of their rms.
PAIR_CLIP_SIGMA = 4.0
#: A sparse field gets fewer, larger regions until each region expects this many times ``min_stars`` sources.
SPARSE_FIELD_FACTOR = 2.0
#: The coarsest grid a sparse field falls back to.
MIN_SPARSE_REGIONS = 4


# ---------------------------------------------------------------- affine transforms


@dataclass(frozen=True)
class Affine:
    """An affine map p -> matrix @ p + offset of 2-D points (pixels)."""

    matrix: np.ndarray
    offset: np.ndarray

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Map (N, 2) points."""
        return np.asarray(points, dtype=np.float64) @ self.matrix.T + self.offset

    def inverse(self) -> Affine:
        """The inverse map."""
        inv = np.linalg.inv(self.matrix)
        return Affine(inv, -inv @ self.offset)

    @property
    def scale(self) -> float:
        """Geometric-mean scale factor sqrt(|det|)."""
        return float(math.sqrt(abs(np.linalg.det(self.matrix))))

    @property
    def rotation_deg(self) -> float:
        """Rotation angle of the map, degrees (of its closest similarity)."""
        m = self.matrix
        sign = 1.0 if np.linalg.det(m) >= 0 else -1.0
        return float(math.degrees(math.atan2(m[1, 0] - sign * m[0, 1], m[0, 0] + sign * m[1, 1])))

    @classmethod
    def identity(cls) -> Affine:
        """The identity map."""
        return cls(np.eye(2), np.zeros(2))


def fit_affine(src: np.ndarray, dst: np.ndarray, *, weights: np.ndarray | None = None) -> Affine:
    """Least-squares affine map from ``src`` (N, 2) to ``dst`` (N, 2) points.

    Raises
    ------
    MatchError
        With fewer than three pairs or degenerate (collinear) points.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if len(src) < 3:
        raise MatchError(f"an affine fit needs 3 pairs or more, got {len(src)}")
    centre = src.mean(axis=0)
    design = np.column_stack([src - centre, np.ones(len(src))])
    w = np.ones(len(src)) if weights is None else np.sqrt(np.asarray(weights, dtype=np.float64))
    coeffs, _, rank, _ = np.linalg.lstsq(design * w[:, None], dst * w[:, None], rcond=None)
    if rank < 3:
        raise MatchError(f"an affine fit to {len(src)} collinear or coincident points is degenerate")
    matrix = coeffs[:2].T
    offset = coeffs[2] - matrix @ centre
    return Affine(matrix, offset)


# ---------------------------------------------------------------- regions


@dataclass(frozen=True)
class Region:
    """One rectangle of the region grid: pixels i0 <= i < i1, j0 <= j < j1 (0-based)."""

    index: int
    col: int
    row: int
    i0: float
    i1: float
    j0: float
    j1: float

    def contains(self, points: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """Mask of (N, 2) points inside the region grown by ``margin`` pixels."""
        p = np.asarray(points, dtype=np.float64)
        return ((p[:, 0] >= self.i0 - margin) & (p[:, 0] < self.i1 + margin)
                & (p[:, 1] >= self.j0 - margin) & (p[:, 1] < self.j1 + margin))

    @property
    def centre(self) -> np.ndarray:
        """Centre of the region, (i, j) pixels."""
        return np.array([(self.i0 + self.i1) / 2.0 - 0.5, (self.j0 + self.j1) / 2.0 - 0.5])


def grid_shape(shape: tuple[int, int], *, n_regions: int, nx: int = 0, ny: int = 0) -> tuple[int, int]:
    """Regions along x and y: given, or the factor pair of ``n_regions`` closest to the aspect ratio.

    A 9576 x 6388 Condor frame with 24 regions gives 6 x 4.
    """
    if nx and ny:
        return nx, ny
    height, width = shape
    aspect = width / height
    pairs = [(a, n_regions // a) for a in range(1, n_regions + 1) if n_regions % a == 0]
    return min(pairs, key=lambda p: (abs(math.log(p[0] / p[1]) - math.log(aspect)), -p[0]))


def adapted_grid(n_sources: int, config: RegionConfig, shape: tuple[int, int] | None = None) -> tuple[int, int]:
    """Regions and required good regions for a frame of ``shape`` with ``n_sources`` usable sources.

    The configured grid (24 regions by default) is kept unless the frame is too
    small or too sparse for it: the number of regions is halved (24, 12, 6, 4...)
    until each region is at least ``min_region_px`` on a side (by area) and
    expects ``SPARSE_FIELD_FACTOR * min_stars`` sources; the required good
    regions shrink in proportion (at least 2). An explicit ``nx``/``ny`` grid is
    always kept. A 9576 x 6388 Condor frame keeps its 24 regions; a 1059 px plate
    gets 4.

    Returns
    -------
    (n_regions, min_good_regions)
    """
    n, need = config.n_regions, config.min_good_regions
    if config.nx and config.ny:
        return config.nx * config.ny, need
    area = float(shape[0]) * float(shape[1]) if shape is not None else math.inf
    target = n
    while target > MIN_SPARSE_REGIONS and (n_sources < target * config.min_stars * SPARSE_FIELD_FACTOR
                                           or area / target < config.min_region_px**2):
        target = max(MIN_SPARSE_REGIONS, target // 2)
    if target == n:
        return n, need
    return target, min(target, max(2, math.ceil(need * target / n)))


def region_grid(shape: tuple[int, int], *, n_regions: int = 24, nx: int = 0, ny: int = 0) -> tuple[Region, ...]:
    """Divide an image (ny, nx pixels) into a grid of regions, row by row from (0, 0).

    Parameters
    ----------
    shape
        Image shape (ny, nx).
    n_regions
        Number of regions when ``nx``/``ny`` are not given; the grid follows the aspect ratio.
    nx, ny
        Explicit grid (both or neither).
    """
    cols, rows = grid_shape(shape, n_regions=n_regions, nx=nx, ny=ny)
    height, width = shape
    ie = np.linspace(0.0, width, cols + 1)
    je = np.linspace(0.0, height, rows + 1)
    return tuple(Region(index=r * cols + c, col=c, row=r, i0=float(ie[c]), i1=float(ie[c + 1]),
                        j0=float(je[r]), j1=float(je[r + 1]))
                 for r in range(rows) for c in range(cols))


# ---------------------------------------------------------------- astroalign, deterministically


def _astroalign_pairs(src: np.ndarray, tgt: np.ndarray, *, max_control_points: int,
                      bin_factor: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Indices (into src, tgt) of the control points astroalign pairs.

    The inputs are brightest first; coordinates are divided by ``bin_factor``.
    """
    s = np.asarray(src[:max_control_points], dtype=np.float64) / bin_factor
    t = np.asarray(tgt[:max_control_points], dtype=np.float64) / bin_factor
    try:
        _, (s_match, t_match) = astroalign.find_transform(s, t, max_control_points=max_control_points)
    except (astroalign.MaxIterError, ValueError, TypeError) as err:
        raise MatchError(f"astroalign found no transform ({err})") from err
    si = cKDTree(s).query(s_match)[1]
    ti = cKDTree(t).query(t_match)[1]
    return si, ti


def _pair_nearest(src: np.ndarray, tgt_pred: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Mutual nearest neighbours within ``radius``: (src index, tgt index)."""
    if len(src) == 0 or len(tgt_pred) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    dist, k = cKDTree(tgt_pred).query(src, distance_upper_bound=radius)
    ok = np.isfinite(dist)
    si, ti = np.nonzero(ok)[0], k[ok]
    back = cKDTree(src).query(tgt_pred[ti])[1]
    mutual = back == si
    return si[mutual], ti[mutual]


def refine_affine(src: np.ndarray, tgt: np.ndarray, initial: Affine, *, radius_px: float,
                  rounds: int = AFFINE_REFITS) -> tuple[Affine, np.ndarray, np.ndarray, float]:
    """Refit an affine (src -> tgt) from all mutual nearest-neighbour pairs, with clipping.

    Returns the affine, the pair indices (src, tgt) and the pairs' rms residual (px).
    """
    affine = initial
    inverse = affine.inverse()
    si = ti = np.zeros(0, int)
    rms = float("nan")
    for _ in range(rounds):
        si, ti = _pair_nearest(src, inverse.apply(tgt), radius_px)
        if len(si) < MIN_AFFINE_PAIRS:
            raise MatchError(f"only {len(si)} pairs within {radius_px} px after the alignment")
        resid = np.linalg.norm(affine.apply(src[si]) - tgt[ti], axis=1)
        rms = float(np.sqrt(np.mean(resid**2)))
        keep = resid <= max(PAIR_CLIP_SIGMA * rms, 1e-9)
        if keep.sum() >= MIN_AFFINE_PAIRS:
            si, ti = si[keep], ti[keep]
        affine = fit_affine(src[si], tgt[ti])
        inverse = affine.inverse()
    resid = np.linalg.norm(affine.apply(src[si]) - tgt[ti], axis=1)
    return affine, si, ti, float(np.sqrt(np.mean(resid**2)))


#: Pairs a transform needs beyond chance (and its sigmas) to be trusted. The chance count is
#: that of one fixed transform; a transform searched for and refitted pairs more by chance
#: (random skies: up to 5 times the fixed-transform count at 10-15 pairs),
#: hence the margins below.
MIN_COARSE_PAIRS = 8
#: Control points astroalign must pair for its transform to be verified.
MIN_ASTROALIGN_PAIRS = 6
#: A transform must pair this many Poisson sigmas more stars than chance would, plus ``MIN_COARSE_PAIRS``.
COARSE_SIGNIFICANCE_SIGMAS = 6.0
#: ... and at least this many times as many as chance would.
COARSE_CHANCE_FACTOR = 3.0
#: An attempt pairing this fraction of the verification stars is taken at once (the later ones are skipped).
COARSE_ACCEPT_FRACTION = 0.25
#: The verification radius is at most this fraction of the frame's diagonal (the distortion an affine
#: leaves grows with the frame; a small frame's chance pairs shrink with the radius).
VERIFY_RADIUS_DIAGONAL_FRACTION = 0.005
#: Bin of the offset vote, pixels.
VOTE_BIN_PX = 16.0
#: A vote peak must stand this many Poisson sigmas above the mean bin.
VOTE_SIGNIFICANCE_SIGMAS = 5.0


@dataclass(frozen=True)
class CandidateList:
    """Stars handed to one attempt of the coarse alignment.

    Attributes
    ----------
    name
        What the lists are, for the diagnostics (e.g. "brightest 60 of all sources").
    method
        "astroalign" (triangle invariants, on coordinates divided by ``coarse_bin_factor``)
        or "vote" (a histogram of offsets over a grid of rotations and scales).
    src
        Image sources (N, 2), pixels, brightest first.
    tgt
        References (M, 2) in approximate-WCS pixels, brightest first.
    """

    name: str
    method: str
    src: np.ndarray
    tgt: np.ndarray


@dataclass(frozen=True)
class CoarseAttempt:
    """The outcome of one coarse-alignment attempt, verified on a common set of stars.

    Attributes
    ----------
    name, method
        The candidate lists and the method.
    n_sources, n_targets
        Sizes of the lists.
    n_pairs
        Verification stars paired within ``verify_radius_px`` under the attempt's transform (refitted).
    n_chance
        Pairs expected by chance alone.
    rms_px
        Rms of the verified pairs around the refitted transform.
    outcome
        "ok", "accepted", "rejected: ..." or "failed: ...".
    affine
        The refitted transform, or None.
    """

    name: str
    method: str
    n_sources: int
    n_targets: int
    n_pairs: int = 0
    n_chance: float = 0.0
    rms_px: float = float("nan")
    outcome: str = ""
    affine: Affine | None = None

    def as_dict(self) -> dict:
        """Plain values, for the diagnostics files."""
        return {"name": self.name, "method": self.method, "n_sources": self.n_sources,
                "n_targets": self.n_targets, "n_pairs": self.n_pairs, "n_chance": round(self.n_chance, 2),
                "rms_px": None if not np.isfinite(self.rms_px) else round(self.rms_px, 3), "outcome": self.outcome}


@dataclass(frozen=True)
class CoarseResult:
    """The coarse alignment: the chosen transform and every attempt."""

    affine: Affine
    attempts: tuple[CoarseAttempt, ...]


def chance_pairs(n_src: int, n_tgt: int, area_px2: float, radius_px: float) -> float:
    """Pairs within ``radius_px`` expected by chance between unrelated uniform point sets."""
    if area_px2 <= 0:
        return float(n_src)
    density = n_tgt / area_px2
    return float(n_src * (1.0 - math.exp(-density * math.pi * radius_px**2)))


def verify_transform(affine: Affine, src: np.ndarray, tgt: np.ndarray, *, radius_px: float,
                     area_px2: float) -> tuple[Affine, int, float, float]:
    """Refit a candidate transform from the stars it pairs, and count them against chance.

    Returns
    -------
    (affine, n_pairs, n_chance, rms_px)
        The refitted transform (the candidate when too few pairs), the mutual
        nearest pairs within ``radius_px``, the pairs expected by chance, and their rms.
    """
    chance = chance_pairs(min(len(src), len(tgt)), max(len(src), len(tgt)), area_px2, radius_px)
    try:
        refined, si, _, rms = refine_affine(src, tgt, affine, radius_px=radius_px, rounds=2)
    except MatchError:
        si, _ = _pair_nearest(src, affine.inverse().apply(tgt), radius_px)
        return affine, int(len(si)), chance, float("nan")
    return refined, int(len(si)), chance, rms


def significant(n_pairs: int, n_chance: float) -> bool:
    """Whether ``n_pairs`` is far beyond what chance gives (``n_chance`` expected)."""
    return (n_pairs >= COARSE_CHANCE_FACTOR * n_chance
            and n_pairs >= n_chance + COARSE_SIGNIFICANCE_SIGMAS * math.sqrt(max(n_chance, 1.0)) + MIN_COARSE_PAIRS)


#: The offset vote first searches with bins this many times coarser (fewer rotations and scales), then
#: refines around the best with the fine bins.
VOTE_COARSE_FACTOR = 4.0


def vote_transform(src: np.ndarray, tgt: np.ndarray, *, centre: np.ndarray, max_shift_px: float,
                   max_rotation_deg: float, max_scale_frac: float, bin_px: float = VOTE_BIN_PX) -> Affine:
    """The rotation, scale and shift on which most source-reference offsets agree.

    For each rotation and scale on a grid (steps that move the farthest source
    by half a bin), every source is paired with every reference within
    ``max_shift_px`` and the offsets are histogrammed; the highest bin over the
    grid gives the transform. The grid is searched with bins
    :data:`VOTE_COARSE_FACTOR` times coarser first, then finely around the best.
    Flux ranks play no part, so saturated cores, photographic response and
    blends that scramble them do not matter.

    Raises
    ------
    MatchError
        No bin stands :data:`VOTE_SIGNIFICANCE_SIGMAS` above the mean.
    """
    src = np.asarray(src, dtype=np.float64)
    tgt = np.asarray(tgt, dtype=np.float64)
    if len(src) < MIN_COARSE_PAIRS or len(tgt) < MIN_COARSE_PAIRS:
        raise MatchError(f"the offset vote needs {MIN_COARSE_PAIRS} stars of each, got {len(src)} and {len(tgt)}")
    reach = float(np.max(np.linalg.norm(src - centre, axis=1))) or 1.0
    tree = cKDTree(tgt)
    coarse_bin = min(bin_px * VOTE_COARSE_FACTOR, max_shift_px)
    coarse_step = 0.5 * coarse_bin / reach
    count, angle, scale, _, mean_bin = _vote_grid(
        src, tgt, tree, centre=centre, max_shift_px=max_shift_px, bin_px=coarse_bin,
        rotations=_grid(math.radians(max_rotation_deg), coarse_step), scales=1.0 + _grid(max_scale_frac, coarse_step))
    step = 0.5 * bin_px / reach
    span = coarse_step if max_rotation_deg > 0 else 0.0
    rotations = angle + _grid(span, step)
    scales = scale + _grid(coarse_step if max_scale_frac > 0 else 0.0, step)
    count, angle, scale, shift, mean_bin = _vote_grid(src, tgt, tree, centre=centre, max_shift_px=max_shift_px,
                                                      bin_px=bin_px, rotations=rotations, scales=scales)
    if count < MIN_COARSE_PAIRS or count < mean_bin + VOTE_SIGNIFICANCE_SIGMAS * math.sqrt(max(mean_bin, 1.0)):
        raise MatchError(f"no offset stands out (best bin {count} votes, mean {mean_bin:.2f})")
    c, s_ = math.cos(angle), math.sin(angle)
    matrix = scale * np.array([[c, -s_], [s_, c]])
    return Affine(matrix, centre - matrix @ centre + shift)


def _vote_grid(src: np.ndarray, tgt: np.ndarray, tree: cKDTree, *, centre: np.ndarray, max_shift_px: float,
               bin_px: float, rotations: np.ndarray, scales: np.ndarray) -> tuple[int, float, float, np.ndarray, float]:
    """The best (votes, rotation rad, scale, shift, mean votes per bin) of offset histograms over a grid."""
    n_bins = max(1, int(math.ceil(2 * max_shift_px / bin_px)))
    best: tuple[int, float, float, np.ndarray] = (-1, 0.0, 1.0, np.zeros(2))
    total_votes = 0
    trials = 0
    for scale in scales:
        for angle in rotations:
            c, s_ = math.cos(angle), math.sin(angle)
            matrix = scale * np.array([[c, -s_], [s_, c]])
            moved = (src - centre) @ matrix.T + centre
            lists = tree.query_ball_point(moved, r=max_shift_px)
            counts = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
            trials += 1
            if counts.sum() == 0:
                continue
            ti = np.fromiter((k for x in lists for k in x), dtype=np.int64, count=int(counts.sum()))
            si = np.repeat(np.arange(len(src)), counts)
            offset = tgt[ti] - moved[si]
            cell = np.clip(np.floor((offset + max_shift_px) / bin_px).astype(np.int64), 0, n_bins - 1)
            flat = cell[:, 0] * n_bins + cell[:, 1]
            hist = np.bincount(flat, minlength=n_bins * n_bins)
            peak = int(np.argmax(hist))
            total_votes += len(ti)
            if hist[peak] > best[0]:
                best = (int(hist[peak]), float(angle), float(scale), np.median(offset[flat == peak], axis=0))
    # offsets fill a disc of radius max_shift_px inside the square of bins
    mean_bin = total_votes / max(trials, 1) / (n_bins * n_bins * math.pi / 4.0)
    return best[0], best[1], best[2], best[3], mean_bin


def _grid(half_range: float, step: float) -> np.ndarray:
    """0, then +-step, +-2 step... up to ``half_range`` (0 first, so that ties keep the header's value)."""
    n = int(math.floor(half_range / step)) if step > 0 else 0
    k = np.arange(1, n + 1) * step
    return np.concatenate([[0.0], np.ravel(np.column_stack([k, -k]))])


def coarse_align(candidates: list[CandidateList] | tuple[CandidateList, ...], verify_src: np.ndarray,
                 verify_tgt: np.ndarray, *, shape: tuple[int, int], max_shift_px: float,
                 config: RegionConfig) -> CoarseResult:
    """The whole frame's transform from image pixels to reference pixels, roughly.

    Each candidate (lists of stars and a method: astroalign on the lists, or the
    offset vote) proposes a transform; each proposal is refitted from, and
    scored by, the stars it pairs among ``verify_src`` and ``verify_tgt`` within
    ``verify_radius_px`` (at most :data:`VERIFY_RADIUS_DIAGONAL_FRACTION` of the frame's
    diagonal), against the pairs chance alone would give. The first
    proposal pairing :data:`COARSE_ACCEPT_FRACTION` of them is taken at once;
    otherwise the proposal pairing most stars, if that is significant. A proposal
    that moves the image centre farther than ``max_shift_px`` (the search radius) is
    refused: the references were not looked for that far, so it matched a repeated
    pattern, not this field.

    Raises
    ------
    MatchError
        No attempt gives a significant transform; ``details["coarse"]`` lists the attempts.
    """
    ny, nx = shape
    area = float(nx) * float(ny)
    radius = min(config.verify_radius_px, VERIFY_RADIUS_DIAGONAL_FRACTION * math.hypot(nx, ny))
    centre = np.array([[(nx - 1) / 2.0, (ny - 1) / 2.0]])
    need_accept = COARSE_ACCEPT_FRACTION * min(len(verify_src), len(verify_tgt))
    attempts: list[CoarseAttempt] = []
    best: CoarseAttempt | None = None
    for cand in candidates:
        head: dict[str, Any] = {"name": cand.name, "method": cand.method, "n_sources": len(cand.src),
                                "n_targets": len(cand.tgt)}
        try:
            if cand.method == "vote":
                proposal = vote_transform(cand.src, cand.tgt, centre=centre[0],
                                          max_shift_px=max_shift_px, max_rotation_deg=config.search_rotation_deg,
                                          max_scale_frac=config.search_scale_frac)
            else:
                si, ti = _astroalign_pairs(cand.src, cand.tgt, max_control_points=len(cand.src),
                                           bin_factor=config.coarse_bin_factor)
                if len(si) < MIN_ASTROALIGN_PAIRS:
                    raise MatchError(f"astroalign paired only {len(si)} stars")
                proposal = fit_affine(cand.src[si], cand.tgt[ti])
        except MatchError as err:
            attempts.append(CoarseAttempt(**head, outcome=f"failed: {err}"))
            continue
        affine, n_pairs, chance, rms = verify_transform(proposal, verify_src, verify_tgt, radius_px=radius,
                                                        area_px2=area)
        shift = float(np.linalg.norm(affine.apply(centre) - centre))
        ok = significant(n_pairs, chance) and shift <= max_shift_px
        outcome = "ok" if ok else (f"rejected: {n_pairs} pairs, {chance:.1f} by chance" if shift <= max_shift_px
                                   else f"rejected: moves the centre {shift:.0f} px, beyond the search radius "
                                        f"{max_shift_px:.0f} px (gaia.margin_deg)")
        attempt = CoarseAttempt(**head, n_pairs=n_pairs, n_chance=chance, rms_px=rms, outcome=outcome,
                                affine=affine)
        attempts.append(attempt)
        if ok and (best is None or n_pairs > best.n_pairs):
            best = attempt
        if ok and n_pairs >= need_accept:
            break
    if best is None:
        tried = "; ".join(f"{a.name} ({a.method}): {a.outcome}" for a in attempts)
        raise MatchError(f"the coarse alignment failed ({HEADER_HINT}): {tried}",
                         details={"coarse": [a.as_dict() for a in attempts]})
    attempts = [replace(a, outcome="accepted") if a is best else a for a in attempts]
    log.debug("coarse alignment: %s (%s) pairs %d stars (%.1f by chance)", best.name, best.method, best.n_pairs,
              best.n_chance)
    assert best.affine is not None
    return CoarseResult(best.affine, tuple(attempts))


# ---------------------------------------------------------------- per region


@dataclass(frozen=True)
class RegionMatch:
    """The outcome of matching one region.

    Attributes
    ----------
    region
        The region.
    status
        "ok", "few-stars", "no-match" or "disagrees".
    reason
        Why a region is left out ("" when ok).
    affine
        Image pixels (i, j) -> reference pixels (x, y) through the approximate WCS; None when not ok.
    src_index, tgt_index
        Matched pairs: indices into the source and reference tables given to :func:`match_region`.
    rms_px
        Rms distance of the pairs around the region's affine, pixels.
    n_sources, n_targets
        Sources and references that took part.
    method
        How the pairs were found: "astroalign" or "proximity" ("" when not ok).
    """

    region: Region
    status: str
    reason: str = ""
    affine: Affine | None = None
    src_index: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    tgt_index: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    rms_px: float = float("nan")
    n_sources: int = 0
    n_targets: int = 0
    method: str = ""

    @property
    def ok(self) -> bool:
        """True when the region takes part in the mean affine."""
        return self.status == "ok"


#: Sources per control point that take part in a region's proximity match (brightest first).
PROXIMITY_DEPTH = 4
#: Bin of a region's shift vote, pixels.
PROXIMITY_BIN_PX = 2.0


#: The ways a region is matched (``regions.first_method`` picks the first; the other is the fallback).
REGION_METHODS = ("proximity", "astroalign")


def match_region(region: Region, src_ij: np.ndarray, tgt_xy: np.ndarray, *, guess: Affine,
                 config: RegionConfig, wide_ij: np.ndarray | None = None) -> RegionMatch:
    """Match one region's sources to their references: astroalign and proximity, in the configured order.

    astroalign pairs the region's brightest sources and references by their
    triangles. Where it fails (in crowded fields and on plates the brightest of
    the image and of the catalog are not the same stars), or first when
    ``regions.first_method`` is "proximity" (no triangles to build: the coarse transform
    already says where each reference falls), the references
    predicted by the field's transform ``guess`` are paired with the sources by
    proximity after the common shift most pairs agree on, and the region's
    affine is refitted from those pairs; such a region must pair far more stars
    than chance would (:func:`significant`), and like every region it is still
    left out by the reducer if it disagrees with the others.

    Parameters
    ----------
    region
        The region.
    src_ij
        Image sources (N, 2), 0-based pixels, brightest first (the whole image).
    tgt_xy
        References (M, 2) in pixels of the approximate WCS, brightest first (all of them).
    guess
        The coarse transform (image -> reference pixels) that says which
        references fall in this region.
    config
        Region settings.
    wide_ij
        Sources (K, 2) for the proximity match, brightest first, when they differ from
        ``src_ij`` (saturated stars included: the brightest references often are saturated
        in the image, and their centroids are good enough to pair); None: ``src_ij``.

    Returns
    -------
    RegionMatch
        Status "ok" with the region's affine, pairs and method, or the reason it is left out.
        The source indices of a "proximity" match refer to ``wide_ij`` when given.
    """
    in_src = np.nonzero(region.contains(src_ij))[0]
    predicted = guess.inverse().apply(tgt_xy)
    in_tgt = np.nonzero(region.contains(predicted, margin=config.target_margin_px))[0]
    counts: dict[str, Any] = {"n_sources": int(len(in_src)), "n_targets": int(len(in_tgt))}
    if len(in_src) < config.min_stars or len(in_tgt) < config.min_stars:
        return RegionMatch(region, "few-stars", f"{len(in_src)} sources and {len(in_tgt)} references "
                           f"(at least {config.min_stars} of each needed)", **counts)
    tgt = tgt_xy[in_tgt]
    methods = REGION_METHODS if config.first_method == REGION_METHODS[0] else REGION_METHODS[::-1]
    errors = []
    for method in methods:
        src_all = wide_ij if (method == "proximity" and wide_ij is not None) else src_ij
        rows = in_src if src_all is src_ij else np.nonzero(region.contains(src_all))[0]
        src = src_all[rows]
        try:
            if method == "astroalign":
                si, ti = _astroalign_pairs(src, tgt, max_control_points=config.max_control_points)
                if len(si) < 3:
                    raise MatchError(f"astroalign paired only {len(si)} stars")
                first = fit_affine(src[si], tgt[ti])
                affine, si, ti, rms = refine_affine(src, tgt, first, radius_px=config.pair_radius_px)
            else:
                affine, si, ti, rms = proximity_affine(region, src, tgt, guess=guess, config=config)
        except MatchError as err:
            errors.append(f"{method}: {err}")
            continue
        return RegionMatch(region, "ok", "", affine, rows[si], in_tgt[ti], rms, method=method, **counts)
    return RegionMatch(region, "no-match", "; ".join(errors), **counts)


def proximity_affine(region: Region, src: np.ndarray, tgt: np.ndarray, *, guess: Affine,
                     config: RegionConfig) -> tuple[Affine, np.ndarray, np.ndarray, float]:
    """A region's affine from pairs found by proximity under the field's transform.

    The ``PROXIMITY_DEPTH * max_control_points`` brightest sources of the region
    and the references predicted there vote for their common shift (bins of
    :data:`PROXIMITY_BIN_PX`, up to ``proximity_shift_px``); the pairs within
    ``pair_radius_px`` after that shift are refitted as an affine
    (:func:`refine_affine`) and must be significant against chance.

    Returns
    -------
    (affine, src index, tgt index, rms px)
        Indices into ``src`` and ``tgt``.

    Raises
    ------
    MatchError
        No shift stands out, or the pairs are too few against chance.
    """
    depth = PROXIMITY_DEPTH * config.max_control_points
    s = src[:depth]
    predicted = guess.inverse().apply(tgt)
    inside = np.nonzero(region.contains(predicted))[0]
    t_idx = inside[: int(math.ceil(depth * max(1.0, len(inside) / max(len(src), 1))))] \
        if len(src) > depth else inside
    if len(s) < MIN_AFFINE_PAIRS or len(t_idx) < MIN_AFFINE_PAIRS:
        raise MatchError(f"{len(s)} sources and {len(t_idx)} references inside the region")
    p = predicted[t_idx]
    shift_guess = Affine(np.eye(2), np.zeros(2))
    try:
        shift_guess = vote_transform(s, p, centre=region.centre, max_shift_px=config.proximity_shift_px,
                                     max_rotation_deg=0.0, max_scale_frac=0.0, bin_px=PROXIMITY_BIN_PX)
    except MatchError as err:
        raise MatchError(f"no common shift ({err})") from err
    start = Affine(guess.matrix @ shift_guess.matrix, guess.matrix @ shift_guess.offset + guess.offset)
    affine, si, ti, rms = refine_affine(src, tgt, start, radius_px=config.pair_radius_px)
    area = (region.i1 - region.i0) * (region.j1 - region.j0)
    n_in = int(np.count_nonzero(region.contains(src)))
    chance = chance_pairs(n_in, len(inside), area, config.pair_radius_px)
    if not significant(len(si), chance):
        raise MatchError(f"{len(si)} pairs, {chance:.1f} expected by chance")
    return affine, si, ti, rms


# ---------------------------------------------------------------- the reducer


def _disagreement(match: RegionMatch, reference: Affine) -> tuple[float, float, float]:
    """(centre shift px, rotation difference deg, fractional scale difference) against ``reference``."""
    assert match.affine is not None
    centre = match.region.centre[None, :]
    shift = float(np.linalg.norm(match.affine.apply(centre) - reference.apply(centre)))
    relative = Affine(match.affine.matrix @ np.linalg.inv(reference.matrix), np.zeros(2))
    rotation = abs((relative.rotation_deg + 180.0) % 360.0 - 180.0)
    return shift, rotation, abs(relative.scale - 1.0)


def mean_affine(matches: tuple[RegionMatch, ...] | list[RegionMatch], src_ij: np.ndarray, tgt_xy: np.ndarray,
                *, config: RegionConfig, min_good: int | None = None) -> tuple[Affine, tuple[RegionMatch, ...]]:
    """The field's mean affine from the regions that agree (the per-exposure reducer).

    A robust first estimate is the element-wise median of the good regions'
    affines; regions whose transform moves their centre more than
    ``tolerance_px``, or rotates or scales beyond ``max_rotation_deg`` /
    ``max_scale_diff`` against it, are marked "disagrees". The mean affine is
    then the least-squares affine over all pairs of the agreeing regions.

    Returns
    -------
    (Affine, tuple of RegionMatch)
        The mean affine and the regions with updated statuses.

    Raises
    ------
    MatchError
        Fewer than ``min_good`` (default ``config.min_good_regions``) regions agree.
    """
    need = config.min_good_regions if min_good is None else min_good
    good = [m for m in matches if m.ok]
    if len(good) < need:
        raise MatchError(_regions_text(matches, f"only {len(good)} regions matched, {need} needed"),
                         details={"regions": region_outcomes(matches)})
    median = Affine(np.median([m.affine.matrix for m in good], axis=0),  # type: ignore[union-attr]
                    np.median([m.affine.offset for m in good], axis=0))  # type: ignore[union-attr]
    updated = []
    for m in matches:
        if m.ok:
            shift, rotation, scale = _disagreement(m, median)
            if shift > config.tolerance_px or rotation > config.max_rotation_deg or scale > config.max_scale_diff:
                m = RegionMatch(m.region, "disagrees", f"off the field's transform by {shift:.1f} px, "
                                f"{rotation:.3f} deg, scale {scale:.4f}", None, m.src_index, m.tgt_index,
                                m.rms_px, m.n_sources, m.n_targets, m.method)
        updated.append(m)
    agreeing = [m for m in updated if m.ok]
    if len(agreeing) < need:
        raise MatchError(_regions_text(updated, f"only {len(agreeing)} regions agree, {need} needed"),
                         details={"regions": region_outcomes(updated)})
    si = np.concatenate([m.src_index for m in agreeing])
    ti = np.concatenate([m.tgt_index for m in agreeing])
    return fit_affine(src_ij[si], tgt_xy[ti]), tuple(updated)


def region_outcomes(matches) -> list[dict]:
    """Each region's outcome as plain values (index, grid place, status, method, pairs, reason), for diagnostics."""
    return [{"index": m.region.index, "col": m.region.col, "row": m.region.row,
             "box_px": [m.region.i0, m.region.i1, m.region.j0, m.region.j1], "status": m.status,
             "method": m.method, "n_pairs": int(len(m.src_index)), "n_sources": m.n_sources,
             "n_targets": m.n_targets, "rms_px": None if not np.isfinite(m.rms_px) else round(float(m.rms_px), 3),
             "reason": m.reason} for m in matches]


#: What to check when the header's pointing leads nowhere: the coarse alignment found nothing, or too few
#: regions matched around what it found (a scale or rotation far off makes the regions' transforms fail).
HEADER_HINT = ("is the header's pointing off by more than gaia.margin_deg, or its scale, rotation or parity wrong? "
               "Give --ra and --dec, --scale, --rotation, --parity")


def _regions_text(matches, head: str) -> str:
    counts: dict[str, int] = {}
    for m in matches:
        counts[m.status] = counts.get(m.status, 0) + 1
    return f"{head} ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}; {HEADER_HINT})"


def matching_depth(n_sources: int, ref_in_image: np.ndarray, *, excess: float) -> int:
    """How many of the brightest references (sorted brightest first) to match against the sources.

    ``excess`` times the number of sources, counted among the references
    inside the image, so that both lists reach about the same depth; the
    returned count is an index into the full (brightest-first) reference list.
    """
    wanted = int(math.ceil(excess * n_sources))
    inside = np.cumsum(np.asarray(ref_in_image, dtype=bool))
    if len(inside) == 0 or inside[-1] <= wanted:
        return int(len(inside))
    return int(np.searchsorted(inside, wanted, side="left") + 1)
