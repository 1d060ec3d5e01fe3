"""Region matching and the mean affine (ALGORITHM step 2).

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
from dataclasses import dataclass, field

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


def adapted_grid(n_sources: int, config: RegionConfig) -> tuple[int, int]:
    """Regions and required good regions for a field with ``n_sources`` usable sources.

    The configured grid (24 regions by default) is kept unless the field is too
    sparse for it: then the number of regions is halved (24, 12, 6, 4...) until
    each region expects ``SPARSE_FIELD_FACTOR * min_stars`` sources, and the
    required good regions shrink in proportion (at least 2). An explicit
    ``nx``/``ny`` grid is always kept.

    Returns
    -------
    (n_regions, min_good_regions)
    """
    n, need = config.n_regions, config.min_good_regions
    if config.nx and config.ny:
        return config.nx * config.ny, need
    target = n
    while target > MIN_SPARSE_REGIONS and n_sources < target * config.min_stars * SPARSE_FIELD_FACTOR:
        target = max(MIN_SPARSE_REGIONS, target // 2)
    if target == n:
        return n, need
    return target, max(2, math.ceil(need * target / n))


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


#: Multiples of ``coarse_control_points`` tried in turn when astroalign finds no transform.
COARSE_ATTEMPTS = (1.0, 0.5, 2.0)
#: Pairs the coarse alignment needs to be trusted.
MIN_COARSE_PAIRS = 6


def coarse_align(src_ij: np.ndarray, tgt_xy: np.ndarray, *, config: RegionConfig) -> Affine:
    """The whole frame's transform from image pixels to reference pixels, roughly.

    astroalign on the ``coarse_control_points`` brightest sources and references
    (both brightest first), with coordinates divided by ``coarse_bin_factor``;
    refitted as an affine from the control points it pairs. If astroalign finds
    no transform, or pairs fewer than ``MIN_COARSE_PAIRS`` stars, half and then
    twice as many control points are tried.

    Raises
    ------
    MatchError
        astroalign finds no transform with any of the attempts.
    """
    errors = []
    for factor in COARSE_ATTEMPTS:
        n = max(5, int(round(config.coarse_control_points * factor)))
        try:
            si, ti = _astroalign_pairs(src_ij, tgt_xy, max_control_points=n, bin_factor=config.coarse_bin_factor)
        except MatchError as err:
            errors.append(f"{n} stars: {err}")
            continue
        if len(si) >= MIN_COARSE_PAIRS:
            return fit_affine(src_ij[si], tgt_xy[ti])
        errors.append(f"{n} stars: only {len(si)} pairs")
    raise MatchError(f"the coarse alignment failed ({'; '.join(errors)})")


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

    @property
    def ok(self) -> bool:
        """True when the region takes part in the mean affine."""
        return self.status == "ok"


def match_region(region: Region, src_ij: np.ndarray, tgt_xy: np.ndarray, *, guess: Affine,
                 config: RegionConfig) -> RegionMatch:
    """Match one region's sources to their references with astroalign.

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

    Returns
    -------
    RegionMatch
        Status "ok" with the region's affine and pairs, or the reason it is left out.
    """
    in_src = np.nonzero(region.contains(src_ij))[0]
    predicted = guess.inverse().apply(tgt_xy)
    in_tgt = np.nonzero(region.contains(predicted, margin=config.target_margin_px))[0]
    counts = {"n_sources": int(len(in_src)), "n_targets": int(len(in_tgt))}
    if len(in_src) < config.min_stars or len(in_tgt) < config.min_stars:
        return RegionMatch(region, "few-stars", f"{len(in_src)} sources and {len(in_tgt)} references "
                           f"(at least {config.min_stars} of each needed)", **counts)
    src, tgt = src_ij[in_src], tgt_xy[in_tgt]
    try:
        si, ti = _astroalign_pairs(src, tgt, max_control_points=config.max_control_points)
        if len(si) < 3:
            raise MatchError(f"astroalign paired only {len(si)} stars")
        first = fit_affine(src[si], tgt[ti])
        affine, si, ti, rms = refine_affine(src, tgt, first, radius_px=config.pair_radius_px)
    except MatchError as err:
        return RegionMatch(region, "no-match", str(err), **counts)
    return RegionMatch(region, "ok", "", affine, in_src[si], in_tgt[ti], rms, **counts)


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
        raise MatchError(_regions_text(matches, f"only {len(good)} regions matched, {need} needed"))
    median = Affine(np.median([m.affine.matrix for m in good], axis=0),  # type: ignore[union-attr]
                    np.median([m.affine.offset for m in good], axis=0))  # type: ignore[union-attr]
    updated = []
    for m in matches:
        if m.ok:
            shift, rotation, scale = _disagreement(m, median)
            if shift > config.tolerance_px or rotation > config.max_rotation_deg or scale > config.max_scale_diff:
                m = RegionMatch(m.region, "disagrees", f"off the field's transform by {shift:.1f} px, "
                                f"{rotation:.3f} deg, scale {scale:.4f}", None, m.src_index, m.tgt_index,
                                m.rms_px, m.n_sources, m.n_targets)
        updated.append(m)
    agreeing = [m for m in updated if m.ok]
    if len(agreeing) < need:
        raise MatchError(_regions_text(updated, f"only {len(agreeing)} regions agree, {need} needed"))
    si = np.concatenate([m.src_index for m in agreeing])
    ti = np.concatenate([m.tgt_index for m in agreeing])
    return fit_affine(src_ij[si], tgt_xy[ti]), tuple(updated)


def _regions_text(matches, head: str) -> str:
    counts: dict[str, int] = {}
    for m in matches:
        counts[m.status] = counts.get(m.status, 0) + 1
    return f"{head} ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))})"


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
