"""The depth match (``depth_match``): flux-ranked, windowed nearest-neighbour matching.

After the TPV fit, sources detected with the relaxed depth-pass settings are matched
to the Gaia targets over the whole image. Both lists are ranked by flux, brightest
first. Working down from the brightest source to the faintest, each source is matched
to its nearest candidate target within ``radius_px``; the candidates are the first
``window`` entries of the *remaining* flux-ranked target list, and the matched target
is removed from that list. Successive rounds of clipping and fitting (in
:mod:`astrodask.solve.errmodel`) later weed out the wrong pairs.

The Condor pipeline implemented this literally: it sliced the remaining target list
and built a new KD-tree for every source. :func:`depth_match_literal` keeps that
implementation as the reference; :func:`depth_match` computes exactly the same pairs
with one KD-tree (see its Notes for why that is exact).

When there are more image sources than targets, the depth match cannot work
(the faint sources exhaust the target list); :func:`failsafe_match` then matches every
source to its nearest target at once and resolves the targets claimed by several
sources by keeping the closest source.

Conventions: positions are 0-based pixel coordinates of one common frame (sources
from SEP, targets from Gaia through the current WCS); ranks are 0 for the brightest.
Ties are broken deterministically everywhere: equal fluxes rank by lower input index;
equidistant candidates go to the brighter (lower-rank) target.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.spatial import cKDTree

log = logging.getLogger(__name__)

#: Default candidate window: the number of remaining flux-ranked targets a source may
#: match (0: all remaining targets). Proposed as ``fit.depth_window``. All by default:
#: targets without a detected counterpart are never removed, so a finite window fills
#: up with them and the match stalls (see :func:`depth_match`).
DEPTH_WINDOW = 0
#: Relative enlargement of the KD-tree search radius. The KD-tree only gathers
#: candidates; membership is then decided by one exact test (squared distance <=
#: radius^2, computed the same way by every matcher), so that the result does not
#: depend on how a particular tree rounds its distances.
SEARCH_RADIUS_PAD = 1e-6

METHOD_DEPTH = "depth"
METHOD_FAILSAFE = "failsafe"


@dataclass(frozen=True, eq=False)
class DepthMatch:
    """Matched pairs of image sources and Gaia targets.

    Attributes
    ----------
    src_index, tgt_index
        Indices of the matched source and target in the *original* input arrays
        (int64, same length), ordered by source flux rank, brightest first. Each
        source and each target appears at most once.
    distance_px
        Distance between the matched positions, pixels.
    method
        ``"depth"`` (the flux-ranked depth match) or ``"failsafe"`` (nearest
        neighbours with duplicate targets resolved).
    n_sources, n_targets
        Lengths of the input lists.
    radius_px
        Search radius used, pixels.
    window
        Candidate window used by the depth match (0: all remaining targets;
        0 for the failsafe, which has none).
    n_duplicates
        Failsafe only: sources that lost their nearest target to a closer source
        and were left unmatched (0 for the depth match).
    """

    src_index: np.ndarray
    tgt_index: np.ndarray
    distance_px: np.ndarray
    method: str
    n_sources: int
    n_targets: int
    radius_px: float
    window: int = 0
    n_duplicates: int = 0

    @property
    def n_matched(self) -> int:
        """Number of matched pairs."""
        return int(self.src_index.size)

    def pairs(self) -> np.ndarray:
        """The pairs as an (n_matched, 2) int64 array of (source index, target index)."""
        return np.column_stack([self.src_index, self.tgt_index])


# --------------------------------------------------------------------------
# Shared helpers: validation, ranking, the exact distance test
# --------------------------------------------------------------------------


def _as_xy(name: str, xy: np.ndarray) -> np.ndarray:
    arr = np.asarray(xy, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        if arr.size == 0:
            return np.empty((0, 2), dtype=np.float64)
        raise ValueError(f"{name} must have shape (N, 2) of pixel positions, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = int(np.count_nonzero(~np.isfinite(arr).all(axis=1)))
        raise ValueError(f"{name} has {bad} non-finite positions; drop them before matching")
    return arr


def _as_flux(name: str, flux: np.ndarray, n: int) -> np.ndarray:
    arr = np.asarray(flux, dtype=np.float64).reshape(-1)
    if arr.size != n:
        raise ValueError(f"{name} has {arr.size} values for {n} positions; they must match")
    return arr


def _check_radius(radius_px: float) -> float:
    radius = float(radius_px)
    if not np.isfinite(radius) or radius <= 0:
        raise ValueError(f"radius_px = {radius_px!r} must be a positive number of pixels")
    return radius


def flux_rank_order(flux: np.ndarray) -> np.ndarray:
    """Indices that sort ``flux`` brightest first.

    Equal fluxes keep their input order (a stable sort), and NaN fluxes go last.

    Parameters
    ----------
    flux
        Fluxes, shape (N,), any unit.

    Returns
    -------
    numpy.ndarray
        int64 permutation of ``range(N)``: ``order[0]`` is the brightest.
    """
    negated = -np.asarray(flux, dtype=np.float64)
    return np.argsort(negated, kind="stable").astype(np.int64)


def _squared_distance(src_xy: np.ndarray, tgt_xy: np.ndarray, si: np.ndarray, ti: np.ndarray) -> np.ndarray:
    """Squared distances (px^2) of the pairs (si, ti), computed one fixed way for every matcher."""
    dx = src_xy[si, 0] - tgt_xy[ti, 0]
    dy = src_xy[si, 1] - tgt_xy[ti, 1]
    return dx * dx + dy * dy


def _pairs_within(
    src_xy: np.ndarray, tgt_xy: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (source, target) index pairs within ``radius`` px, with squared distances."""
    empty = np.empty(0, dtype=np.int64)
    if len(src_xy) == 0 or len(tgt_xy) == 0:
        return empty, empty, np.empty(0)
    found = cKDTree(src_xy).sparse_distance_matrix(
        cKDTree(tgt_xy), radius * (1.0 + SEARCH_RADIUS_PAD), output_type="ndarray"
    )
    si = found["i"].astype(np.int64)
    ti = found["j"].astype(np.int64)
    d2 = _squared_distance(src_xy, tgt_xy, si, ti)
    inside = d2 <= radius * radius
    return si[inside], ti[inside], d2[inside]


def _result(
    src_index: ArrayLike, tgt_index: ArrayLike, d2: ArrayLike, *, method: str, n_sources: int,
    n_targets: int, radius: float, window: int = 0, n_duplicates: int = 0,
) -> DepthMatch:
    arrays = [np.asarray(src_index, dtype=np.int64), np.asarray(tgt_index, dtype=np.int64),
              np.sqrt(np.asarray(d2, dtype=np.float64))]
    for array in arrays:
        array.flags.writeable = False  # the result is frozen, its arrays too
    return DepthMatch(
        src_index=arrays[0],
        tgt_index=arrays[1],
        distance_px=arrays[2],
        method=method, n_sources=n_sources, n_targets=n_targets, radius_px=radius,
        window=window, n_duplicates=n_duplicates,
    )


# --------------------------------------------------------------------------
# The depth match
# --------------------------------------------------------------------------


def depth_match(
    src_xy: np.ndarray,
    src_flux: np.ndarray,
    tgt_xy: np.ndarray,
    tgt_flux: np.ndarray,
    *,
    radius_px: float,
    window: int = DEPTH_WINDOW,
    failsafe: bool = True,
) -> DepthMatch:
    """Match image sources to Gaia targets by flux rank (the Condor ``depth_match``).

    Both lists are ranked by flux, brightest first. For each source in rank order,
    the candidates are the first ``window`` targets of the remaining flux-ranked
    target list; the source is matched to its nearest candidate within
    ``radius_px`` (ties: the brighter target), and that target is removed from the
    list. A source without a candidate in range stays unmatched and removes nothing.

    Parameters
    ----------
    src_xy
        Image source positions, shape (N, 2), pixels (0-based).
    src_flux
        Source fluxes, shape (N,), any unit (only the order matters).
    tgt_xy
        Target positions in the same pixel frame, shape (M, 2), pixels.
    tgt_flux
        Target fluxes, shape (M,), any unit (e.g. Gaia ``phot_g_mean_flux``).
    radius_px
        Search radius, pixels (> 0); pairs at exactly this distance match.
    window
        Number of remaining targets, in flux order, that a source may match;
        ``window <= 0`` means all remaining targets.
    failsafe
        When True and there are more sources than targets (N > M), use
        :func:`failsafe_match` instead (logged at info level; ``method`` records it).

    Returns
    -------
    DepthMatch
        The pairs, indices into the input arrays, ordered by source flux rank.

    Notes
    -----
    The result is identical to :func:`depth_match_literal`, which rebuilds a KD-tree
    over the sliced remaining list for every source, but costs one KD-tree query
    in bulk plus one pass over the sources. It is exact because of an invariant of
    the algorithm: every removed target lies inside the current window, so the
    targets beyond the window's last rank are never removed, and after ``k``
    removals the window is exactly the set of *remaining* targets of rank
    ``< window + k``. A candidate of target rank ``r`` is therefore eligible when it
    is not yet removed and ``r < window + k``: an O(1) test, without a rank
    structure (a Fenwick tree would give the same answer in O(log M)).

    The same invariant shows the window's weakness: a target with no detected
    counterpart (saturated, masked, blended, or fainter in the image's band than in
    Gaia's) is never removed, so it stays in the window for good; once ``window`` such
    targets have accumulated, no further source can match. A finite window must
    therefore exceed the number of undetected targets brighter than the image's
    depth; ``window <= 0`` (the default) avoids the question.
    """
    src_xy = _as_xy("src_xy", src_xy)
    tgt_xy = _as_xy("tgt_xy", tgt_xy)
    src_flux = _as_flux("src_flux", src_flux, len(src_xy))
    tgt_flux = _as_flux("tgt_flux", tgt_flux, len(tgt_xy))
    radius = _check_radius(radius_px)
    window = int(window)
    n_src, n_tgt = len(src_xy), len(tgt_xy)
    if failsafe and n_src > n_tgt:
        log.info(
            "depth match: %d sources outnumber %d targets; using the failsafe nearest-neighbour match",
            n_src, n_tgt,
        )
        return failsafe_match(src_xy, tgt_xy, radius_px=radius, src_flux=src_flux)

    src_order = flux_rank_order(src_flux)
    tgt_order = flux_rank_order(tgt_flux)
    si, ti, d2 = _pairs_within(src_xy[src_order], tgt_xy[tgt_order], radius)  # rank space
    if window > 0:
        # after the s-th source at most s targets are removed: ranks >= window + s never qualify
        possible = ti < window + si
        si, ti, d2 = si[possible], ti[possible], d2[possible]
    # per source (in rank order), candidates nearest first, then brighter first
    order = np.lexsort((ti, d2, si))
    si, ti, d2 = si[order], ti[order], d2[order]
    starts = np.flatnonzero(np.r_[True, si[1:] != si[:-1]]) if si.size else np.empty(0, np.int64)
    bounds = np.r_[starts, si.size].tolist()
    ranks = ti.tolist()
    removed = bytearray(n_tgt)
    chosen: list[int] = []
    unlimited = window <= 0
    n_removed = 0
    for g in range(len(bounds) - 1):
        limit = n_tgt if unlimited else window + n_removed
        for p in range(bounds[g], bounds[g + 1]):
            r = ranks[p]
            if r < limit and not removed[r]:
                removed[r] = 1
                chosen.append(p)
                n_removed += 1
                break
    picked = np.asarray(chosen, dtype=np.int64)
    result = _result(
        src_order[si[picked]], tgt_order[ti[picked]], d2[picked], method=METHOD_DEPTH,
        n_sources=n_src, n_targets=n_tgt, radius=radius, window=max(window, 0),
    )
    log.debug("depth match: %d of %d sources matched to %d targets (radius %.3g px, window %d)",
              result.n_matched, n_src, n_tgt, radius, window)
    return result


def depth_match_literal(
    src_xy: np.ndarray,
    src_flux: np.ndarray,
    tgt_xy: np.ndarray,
    tgt_flux: np.ndarray,
    *,
    radius_px: float,
    window: int = DEPTH_WINDOW,
    failsafe: bool = True,
) -> DepthMatch:
    """The depth match exactly as described: slice the remaining list, build a KD-tree, per source.

    The reference implementation for :func:`depth_match` (same parameters, same
    result); O(N M log M), for tests and small lists only.
    """
    src_xy = _as_xy("src_xy", src_xy)
    tgt_xy = _as_xy("tgt_xy", tgt_xy)
    src_flux = _as_flux("src_flux", src_flux, len(src_xy))
    tgt_flux = _as_flux("tgt_flux", tgt_flux, len(tgt_xy))
    radius = _check_radius(radius_px)
    window = int(window)
    n_src, n_tgt = len(src_xy), len(tgt_xy)
    if failsafe and n_src > n_tgt:
        return failsafe_match(src_xy, tgt_xy, radius_px=radius, src_flux=src_flux)

    src_order = flux_rank_order(src_flux)
    tgt_order = flux_rank_order(tgt_flux)
    remaining = list(tgt_order)  # target indices, brightest first
    out_src: list[int] = []
    out_tgt: list[int] = []
    out_d2: list[float] = []
    for s in src_order:
        sliced = np.asarray(remaining[:window] if window > 0 else remaining, dtype=np.int64)
        if sliced.size == 0:
            continue
        tree = cKDTree(tgt_xy[sliced])
        found = np.asarray(tree.query_ball_point(src_xy[s], radius * (1.0 + SEARCH_RADIUS_PAD)), dtype=np.int64)
        if found.size == 0:
            continue
        candidates = sliced[found]
        d2 = _squared_distance(src_xy, tgt_xy, np.full(candidates.size, s), candidates)
        inside = d2 <= radius * radius
        if not inside.any():
            continue
        # nearest; among equidistant candidates the brighter one (its position in the list)
        best = min(zip(d2[inside].tolist(), found[inside].tolist()))
        target = int(sliced[best[1]])
        remaining.remove(target)
        out_src.append(int(s))
        out_tgt.append(target)
        out_d2.append(best[0])
    return _result(out_src, out_tgt, out_d2, method=METHOD_DEPTH, n_sources=n_src,
                   n_targets=n_tgt, radius=radius, window=max(window, 0))


# --------------------------------------------------------------------------
# The failsafe
# --------------------------------------------------------------------------


def failsafe_match(
    src_xy: np.ndarray,
    tgt_xy: np.ndarray,
    *,
    radius_px: float,
    src_flux: np.ndarray | None = None,
) -> DepthMatch:
    """Nearest-neighbour matching of every source at once, one target per source at most.

    Each source is matched to its nearest target within ``radius_px`` (ties: the
    lower target index), through one KD-tree over the whole target list. A target
    claimed by several sources keeps only the closest one (ties: the brighter source
    when ``src_flux`` is given, then the lower index); the others stay unmatched.

    Parameters
    ----------
    src_xy
        Image source positions, shape (N, 2), pixels (0-based).
    tgt_xy
        Target positions in the same pixel frame, shape (M, 2), pixels.
    radius_px
        Search radius, pixels (> 0).
    src_flux
        Source fluxes, shape (N,), to order the pairs and break ties by brightness;
        None: by index.

    Returns
    -------
    DepthMatch
        ``method = "failsafe"``; ``n_duplicates`` counts the sources dropped
        because a closer source took their nearest target.
    """
    src_xy = _as_xy("src_xy", src_xy)
    tgt_xy = _as_xy("tgt_xy", tgt_xy)
    radius = _check_radius(radius_px)
    n_src, n_tgt = len(src_xy), len(tgt_xy)
    if src_flux is None:
        src_rank = np.arange(n_src, dtype=np.int64)
    else:
        src_rank = np.empty(n_src, dtype=np.int64)
        src_rank[flux_rank_order(_as_flux("src_flux", src_flux, n_src))] = np.arange(n_src)

    si, ti, d2 = _pairs_within(src_xy, tgt_xy, radius)
    # nearest target of each source (ties: lower target index)
    order = np.lexsort((ti, d2, si))
    si, ti, d2 = si[order], ti[order], d2[order]
    first = np.r_[True, si[1:] != si[:-1]] if si.size else np.zeros(0, bool)
    si, ti, d2 = si[first], ti[first], d2[first]
    # one source per target: the closest, then the brightest, then the lowest index
    order = np.lexsort((si, src_rank[si], d2, ti))
    si, ti, d2 = si[order], ti[order], d2[order]
    keep = np.r_[True, ti[1:] != ti[:-1]] if ti.size else np.zeros(0, bool)
    n_duplicates = int(np.count_nonzero(~keep))
    si, ti, d2 = si[keep], ti[keep], d2[keep]
    order = np.argsort(src_rank[si], kind="stable")
    result = _result(si[order], ti[order], d2[order], method=METHOD_FAILSAFE, n_sources=n_src,
                     n_targets=n_tgt, radius=radius, n_duplicates=n_duplicates)
    log.debug("failsafe match: %d of %d sources matched to %d targets; %d duplicate claims dropped",
              result.n_matched, n_src, n_tgt, n_duplicates)
    return result
