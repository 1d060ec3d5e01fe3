"""The block-local Gaussian process of the residual field, and its k-fold cross-validation.

Steps 3-4 of the turbulence stage (:mod:`astrodask.solve.turbulence`). The field is cut into
square blocks of ``block_arcmin``; each is conditioned on the stars within it and a halo of
``halo_arcmin`` around it, at most ``max_block_stars`` of them. A block costs O(n^3) in its own
stars n, and the blocks grow in number with the field's area, so at a given density the cost is
linear in the number of stars, and bounded by ``max_block_stars`` at any density.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.linalg import LinAlgError
from scipy.linalg.lapack import dpotrf, dpotri

from astrodask.solve.turbulence.kernel import CurlFreeKernel

#: Jitter added to a block's covariance diagonal, relative to its kernel variance (numerical safety).
JITTER_REL = 1e-9


@dataclass(frozen=True)
class CrossValidation:
    """The k-fold cross-validation that decides whether the correction is applied.

    Attributes
    ----------
    n_folds
        Folds; each star is held back once and predicted from the others.
    n_stars
        Stars with a held-back prediction.
    rms_before_mas, rms_after_mas
        Per axis (xi, eta): the held-back stars' residual rms (weighted by inverse variance)
        before, and after subtracting the GP's prediction made without them.
    gain_sigma
        The mean drop of their chi-square (inverse-variance weighted squared residuals), in
        standard errors of that mean.
    held_out_mas
        (N, 2) held-back residuals after the prediction, in the order of the stage's stars
        (NaN for a star without a prediction).
    n_blocks, total_blocks
        Blocks whose stars were held back (drawn at random), of the field's blocks with stars.
    """

    n_folds: int
    n_stars: int
    rms_before_mas: tuple[float, float]
    rms_after_mas: tuple[float, float]
    gain_sigma: float
    held_out_mas: np.ndarray
    n_blocks: int = 0
    total_blocks: int = 0



# ---------------------------------------------------------------- 3-4. the local GP


@dataclass(frozen=True)
class GPBlock:
    """One block of the field for the local GP.

    Attributes
    ----------
    own
        Indices of the stars inside the block (those it cross-validates).
    train
        Indices of the stars that condition it, sorted: its own and its halo's, at most ``max_stars``.
    query
        Indices of the query points inside the block.
    """

    own: np.ndarray
    train: np.ndarray
    query: np.ndarray


def gp_blocks(train_ij: np.ndarray, query_ij: np.ndarray, *, block_px: float, halo_px: float, max_stars: int,
              weight: np.ndarray | None = None) -> list[GPBlock]:
    """The blocks of the field: stars and query points by block, and each block's conditioning stars.

    A block with more than ``max_stars`` within its halo keeps the best measured (highest
    ``weight`` (N,), e.g. the sum of a star's inverse variances), so that the block's cost is
    bounded at any density while it still covers its halo; without weights, the nearest to its
    centre (Chebyshev distance: its own stars first).
    """
    from scipy.spatial import cKDTree

    lo = np.minimum(train_ij.min(axis=0), query_ij.min(axis=0)) if len(query_ij) else train_ij.min(axis=0)
    t_cell = np.floor((train_ij - lo) / block_px).astype(np.int64)
    q_cell = np.floor((query_ij - lo) / block_px).astype(np.int64).reshape(-1, 2)
    n_cols = int(max(t_cell[:, 0].max(initial=0), q_cell[:, 0].max(initial=0))) + 1
    t_key, q_key = t_cell[:, 1] * n_cols + t_cell[:, 0], q_cell[:, 1] * n_cols + q_cell[:, 0]
    tree = cKDTree(train_ij)
    blocks = []
    for key in np.union1d(t_key, q_key):
        cell = np.array([key % n_cols, key // n_cols])
        centre = lo + (cell + 0.5) * block_px
        near = np.asarray(tree.query_ball_point(centre, 0.5 * block_px + halo_px, p=np.inf), dtype=np.int64)
        if len(near) > max_stars:
            if weight is not None:
                rank = -weight[near]
            else:
                rank = np.max(np.abs(train_ij[near] - centre), axis=1)
            near = near[np.argsort(rank, kind="stable")[:max_stars]]
        blocks.append(GPBlock(np.flatnonzero(t_key == key), np.sort(near), np.flatnonzero(q_key == key)))
    return blocks


def _kernel_matrix(kernel: CurlFreeKernel, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The joint covariance of both axes between points a (n, 2) and b (m, 2): (2n, 2m), axes interleaved."""
    return kernel.matrix(a, b)


def _cholesky(kernel: CurlFreeKernel, xy: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The lower Cholesky factor of the block's covariance (kernel plus white noise (n, 2), interleaved), and the
    diagonal (2n,) added to the kernel (the noise and a jitter)."""
    jitter = JITTER_REL * max(kernel.variance_mas2, 1e-12)
    for extra in (1.0, 1e3):  # not positive definite to rounding: a little more jitter
        cov = _kernel_matrix(kernel, xy, xy)
        added = noise.ravel() + extra * jitter
        cov[np.diag_indices_from(cov)] += added
        lower, info = dpotrf(cov, lower=1, clean=1, overwrite_a=1)
        if info == 0:
            return lower, added
    raise LinAlgError(f"turbulence: a block's covariance is not positive definite (LAPACK info {info})")


def _inverse(lower: np.ndarray) -> np.ndarray:
    """The inverse of a covariance from its lower Cholesky factor (symmetric, full)."""
    inv, info = dpotri(lower, lower=1, overwrite_c=0)
    if info != 0:
        raise LinAlgError(f"turbulence: a block's covariance could not be inverted (LAPACK info {info})")
    return np.tril(inv) + np.tril(inv, -1).T


@dataclass(frozen=True)
class LocalGP:
    """The local GP of the residual field (:func:`local_gp`), both axes.

    Attributes
    ----------
    held_out_mas
        (N, 2) each star's residual minus the prediction made without its fold; NaN for a
        star no block cross-validated (its block was not among those solved, did not
        cross-validate, or could not condition on it: more than ``max_stars`` in the block itself).
    at_stars_mas
        (N, 2) the posterior mean at the stars (in sample; zero where no block was solved).
    mean_mas, var_mas2
        (M, 2) the posterior mean and variance per axis at the query points (zero and the
        prior's where no block was solved).
    """

    held_out_mas: np.ndarray
    at_stars_mas: np.ndarray
    mean_mas: np.ndarray
    var_mas2: np.ndarray


def local_gp(train_ij: np.ndarray, residual_mas: np.ndarray, noise_mas2: np.ndarray, kernel: CurlFreeKernel,
             folds: np.ndarray, query_ij: np.ndarray, *, block_px: float, halo_px: float, max_stars: int,
             blocks: list[GPBlock] | None = None, cross_validate: bool = True,
             into: LocalGP | None = None) -> LocalGP:
    """The GP, block by block: k-fold held-back residuals, and the posterior at query points.

    A block's covariance ``K`` (kernel plus noise over its conditioning stars, both axes) gives
    the posterior mean ``k_q K^-1 y`` and variance ``k(0) - k_q K^-1 k_q^T`` at its query points
    and its stars. With ``cross_validate`` its inverse ``A = K^-1`` also gives the held-back
    residuals in closed form: for the stars S of one fold, ``y_S - E[y_S | the others] =
    (A_SS)^-1 (A y)_S`` (Rasmussen & Williams 2006, eq. 5.12, for a set of points); without it,
    the Cholesky factor alone serves (a third of the inverse's cost).

    Parameters
    ----------
    train_ij
        Star pixels (N, 2).
    residual_mas
        Their residuals (N, 2), mas.
    noise_mas2
        Their white-noise variance per axis (N, 2), mas^2.
    kernel
        The kernel.
    folds
        (N,) each star's fold.
    query_ij
        Where to predict (M, 2), pixels.
    block_px, halo_px, max_stars
        The blocks (see the module's docstring), when ``blocks`` is None.
    blocks
        The blocks to solve (from :func:`gp_blocks` on the same stars and query points): e.g. a
        sample of them for the cross-validation alone. None: every block.
    cross_validate
        Compute the held-back residuals (False: the posterior only).
    into
        A result whose values stand where none of these blocks is (not changed; copied).
    """
    n = len(residual_mas)
    prior = kernel.axis_variance_mas2()
    if into is not None:
        held, at_stars = into.held_out_mas.copy(), into.at_stars_mas.copy()
        mean, var = into.mean_mas.copy(), into.var_mas2.copy()
    else:
        held, at_stars = np.full((n, 2), np.nan), np.zeros((n, 2))
        mean, var = np.zeros((len(query_ij), 2)), np.tile(prior, (len(query_ij), 1))
    if kernel.variance_mas2 <= 0 or n == 0:
        return LocalGP(np.asarray(residual_mas, dtype=np.float64).copy(), at_stars, mean, var)
    if blocks is None:
        blocks = gp_blocks(train_ij, query_ij, block_px=block_px, halo_px=halo_px, max_stars=max_stars)
    # BLAS threads are the caller's: one in the command, in Dask's workers and in the benchmarks (a block's
    # matrices are a few hundred rows, where a second thread only waits); not set here, as a process-wide
    # setting changed by a stage would race with the other threads of a process
    for block in blocks:
        _solve_block(block, train_ij, residual_mas, noise_mas2, kernel, folds, query_ij, prior, cross_validate,
                     held, at_stars, mean, var)
    return LocalGP(held, at_stars, mean, var)


def _solve_block(block: GPBlock, train_ij: np.ndarray, residual_mas: np.ndarray, noise_mas2: np.ndarray,
                 kernel: CurlFreeKernel, folds: np.ndarray, query_ij: np.ndarray, prior: np.ndarray,
                 cross_validate: bool, held: np.ndarray, at_stars: np.ndarray, mean: np.ndarray,
                 var: np.ndarray) -> None:
    """One block of :func:`local_gp`: writes its rows of ``held``, ``at_stars``, ``mean`` and ``var``."""
    from scipy.linalg import solve_triangular

    if len(block.train) == 0:
        return
    lower, added = _cholesky(kernel, train_ij[block.train], noise_mas2[block.train])
    y = residual_mas[block.train].ravel()
    alpha = solve_triangular(lower, solve_triangular(lower, y, lower=True, check_finite=False), lower=True,
                             trans=1, check_finite=False)
    # the block's own stars that condition it (all of them unless the block and its halo hold too many)
    row = np.searchsorted(block.train, block.own)
    found = (row < len(block.train)) & (block.train[np.minimum(row, len(block.train) - 1)] == block.own)
    own = block.own[found]
    if cross_validate:
        inv = _inverse(lower)
        for fold in np.unique(folds[own]):
            members = np.flatnonzero(folds[block.train] == fold)
            rows = np.column_stack([2 * members, 2 * members + 1]).ravel()
            r = np.linalg.solve(inv[np.ix_(rows, rows)], alpha[rows]).reshape(-1, 2)
            mine = own[folds[own] == fold]
            held[mine] = r[np.searchsorted(block.train[members], mine)]
    # the posterior mean at a conditioning star needs no kernel row: K alpha = y - (noise + jitter) alpha
    at_stars[own] = (y - added * alpha).reshape(-1, 2)[row[found]]
    others = block.own[~found]
    points = np.concatenate([query_ij[block.query], train_ij[others]])
    kq = _kernel_matrix(kernel, points, train_ij[block.train])
    mu = (kq @ alpha).reshape(-1, 2)
    nq = len(block.query)
    mean[block.query] = mu[:nq]
    at_stars[others] = mu[nq:]
    if nq:
        v = solve_triangular(lower, kq[: 2 * nq].T, lower=True, check_finite=False)
        reduction = np.einsum("nq,nq->q", v, v).reshape(-1, 2)
        var[block.query] = np.maximum(prior - reduction, 0.0)


def cv_sample(blocks: list[GPBlock], max_stars: int, rng: np.random.Generator) -> tuple[list[int], int]:
    """Indices of the blocks the cross-validation solves, and how many blocks have stars.

    Blocks with stars of their own, in a random order, until their own stars that condition
    them (those that get a held-back prediction) reach ``max_stars``; all of them when they hold
    fewer. The blocks are the field's own cells, so a random sample of them is a random sample
    of the field, its edges and its crowded parts alike.
    """
    with_stars = [k for k, b in enumerate(blocks) if len(b.own)]
    order = [with_stars[k] for k in rng.permutation(len(with_stars))]
    chosen, stars = [], 0
    for k in order:
        if stars >= max_stars:
            break
        chosen.append(k)
        stars += int(np.count_nonzero(np.isin(blocks[k].own, blocks[k].train, assume_unique=True)))
    return sorted(chosen), len(with_stars)


def cross_validation(residual_mas: np.ndarray, held_out_mas: np.ndarray, weight: np.ndarray,
                     n_folds: int, *, n_blocks: int = 0, total_blocks: int = 0) -> CrossValidation:
    """The cross-validation's figures from the held-back residuals before and after (N, 2) each.

    Stars count by their inverse variance ``weight`` (N, 2): the test is on the drop of each
    star's chi-square ``sum_axes w r^2``, and the rms are weighted, so that a few well-measured
    stars are not drowned by many faint ones.
    """
    ok = np.all(np.isfinite(held_out_mas), axis=1)
    before, after, w = residual_mas[ok], held_out_mas[ok], weight[ok]
    gain = np.sum(w * before ** 2, axis=1) - np.sum(w * after ** 2, axis=1)
    sem = float(np.std(gain, ddof=1) / math.sqrt(len(gain))) if len(gain) > 1 else math.inf
    gain_sigma = float(np.mean(gain) / sem) if 0 < sem < math.inf else 0.0

    def rms(x: np.ndarray) -> tuple[float, float]:
        v = np.sqrt(np.sum(w * x ** 2, axis=0) / np.sum(w, axis=0)) if len(x) else np.full(2, np.nan)
        return float(v[0]), float(v[1])

    return CrossValidation(n_folds, int(ok.sum()), rms(before), rms(after), gain_sigma, held_out_mas, n_blocks,
                           total_blocks)

