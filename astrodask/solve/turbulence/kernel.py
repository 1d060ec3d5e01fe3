"""The residuals' two-point correlation and the curl-free von Karman kernel fitted to it.

Steps 1-2 of the turbulence stage (:mod:`astrodask.solve.turbulence`):
:func:`measure_correlation` (treecorr, N log N in the stars, on at most the best-measured
:func:`correlation_sample`), :func:`fit_kernel` (least squares over the separation bins: its cost
does not grow with N), and :func:`correlation_significance`, which decides from the correlation
alone, before any GP, whether there is a field to correct.

Units: residuals in mas on the tangent plane, separations in pixels unless a name says otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares
from scipy.special import gamma, kv

#: Milliarcseconds per degree.
MAS_PER_DEG = 3.6e6
#: Arcseconds per arcminute.
ARCSEC_PER_ARCMIN = 60.0
#: The two residual axes, in the order of every (..., 2) array here.
AXES = ("xi", "eta")
#: Samples of the tabulated curl-free von Karman correlation, and the largest x = 2 pi r / L0 tabulated.
VK_TABLE_SIZE = 32768
VK_TABLE_MAX_X = 200.0
#: Exponent of the von Karman correlation (the 5/6 of a Kolmogorov spectrum with an outer scale).
VK_NU = 5.0 / 6.0
TWO_PI = 2.0 * math.pi
#: treecorr's bin_slop for the correlation: pairs may be placed up to this fraction of a bin off
#: (the largest treecorr recommends for a 2-D binning).
CORR_BIN_SLOP = 0.1
#: The kernel fit starts from the correlation's reach and from this many times less.
FIT_START_SPREAD = 4.0


# ---------------------------------------------------------------- the kernel


def _curl_free_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The isotropic curl-free von Karman covariance, longitudinal and transverse, on x = 2 pi r / L0.

    The trace ``T(x) = C_L + C_T`` is the von Karman (Matern 5/6) correlation, 2 at x = 0;
    for the gradient of an isotropic scalar, ``C_T(x) = x^-2 int_0^x s T(s) ds`` and
    ``C_L = T - C_T`` (both 1 at x = 0). Beyond the table ``C_T = tail / x^2 = -C_L``.
    """
    x = np.linspace(0.0, VK_TABLE_MAX_X, VK_TABLE_SIZE)
    trace = np.empty_like(x)
    trace[0] = 2.0
    trace[1:] = 2.0 * 2.0 ** (1.0 - VK_NU) / gamma(VK_NU) * x[1:] ** VK_NU * kv(VK_NU, x[1:])
    integral = np.concatenate([[0.0], np.cumsum(0.5 * (x[1:] * trace[1:] + x[:-1] * trace[:-1]) * np.diff(x))])
    ct = np.empty_like(x)
    ct[0] = 1.0
    ct[1:] = integral[1:] / x[1:] ** 2
    return x, trace - ct, ct, float(integral[-1])


_X, _CL, _CT, _TAIL = _curl_free_tables()
_PER_X = (VK_TABLE_SIZE - 1) / VK_TABLE_MAX_X


def curl_free_correlation(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(C_L, C_T)`` of the isotropic curl-free von Karman field at x = 2 pi r / L0 (1 and 1 at 0).

    Tabulated once and interpolated linearly (error below 1e-5), so that a block's covariance
    costs no Bessel function per element; beyond the table, the 1/x^2 tail.
    """
    x = np.asarray(x, dtype=np.float64)
    t = np.minimum(x * _PER_X, VK_TABLE_SIZE - 1.0)
    k = np.minimum(t.astype(np.intp), VK_TABLE_SIZE - 2)
    frac = t - k
    cl = _CL[k] * (1.0 - frac) + _CL[k + 1] * frac
    ct = _CT[k] * (1.0 - frac) + _CT[k + 1] * frac
    far = x > VK_TABLE_MAX_X
    if far.any():
        tail = _TAIL / x[far] ** 2
        cl[far], ct[far] = -tail, tail
    return cl, ct


@dataclass(frozen=True)
class CurlFreeKernel:
    """The covariance of a curl-free displacement field whose potential has an anisotropic von Karman spectrum.

    The atmosphere's displacement is the gradient of a scalar (Bernstein et al. 2017), with a
    von Karman spectrum ``(f^2 + 1/L0^2)^(-11/6)`` (Leget et al. 2021 fit the same von Karman
    kernel, anisotropic, to each axis alone). The gradient couples the two axes: along a
    separation the field correlates as ``C_L``, across it as ``C_T``
    (:func:`curl_free_correlation`). Anisotropy stretches the potential: with ``M`` the
    unit-determinant metric that shrinks separations along the long axis (``angle_rad`` from +i
    towards +j) by ``sqrt(axis_ratio)`` and stretches them across it by its inverse,

        C(d) = variance_mas2 * M^T [C_L(x) u u^T + C_T(x) (I - u u^T)] M,  x = 2 pi |M d| / L0,

    u the unit vector of ``M d``: a 2 x 2 covariance of (xi, eta) residuals at separation d.

    Attributes
    ----------
    variance_mas2
        Variance per axis of the isotropic field, mas^2 (>= 0); :meth:`axis_variance_mas2` gives
        each axis's own.
    outer_scale_px
        The outer scale L0, pixels.
    axis_ratio
        Short over long correlation length, in (0, 1].
    angle_rad
        Direction of the long axis, radians from +i towards +j.
    """

    variance_mas2: float
    outer_scale_px: float
    axis_ratio: float
    angle_rad: float

    def metric(self) -> np.ndarray:
        """The 2 x 2 metric M (unit determinant)."""
        c, s = math.cos(self.angle_rad), math.sin(self.angle_rad)
        root = math.sqrt(self.axis_ratio)
        return np.diag([root, 1.0 / root]) @ np.array([[c, s], [-s, c]])

    def axis_variance_mas2(self) -> np.ndarray:
        """The variance of each axis (xi, eta) at zero separation, mas^2: ``variance * diag(M^T M)``."""
        m = self.metric()
        return self.variance_mas2 * np.diag(m.T @ m)

    def __call__(self, di: np.ndarray, dj: np.ndarray) -> np.ndarray:
        """The covariance at separations (di, dj), pixels (broadcast): shape (..., 2, 2), mas^2."""
        m = self.metric()
        a = m[0, 0] * di + m[0, 1] * dj
        b = m[1, 0] * di + m[1, 1] * dj
        r = np.sqrt(a * a + b * b)
        cl, ct = curl_free_correlation(TWO_PI * r / self.outer_scale_px)
        with np.errstate(invalid="ignore", divide="ignore"):
            ua, ub = np.where(r > 0, a / r, 0.0), np.where(r > 0, b / r, 0.0)
        # M^T [C_T I + (C_L - C_T) u u^T] M = C_T M^T M + (C_L - C_T) (M^T u)(M^T u)^T
        g = m.T @ m
        w0, w1 = m[0, 0] * ua + m[1, 0] * ub, m[0, 1] * ua + m[1, 1] * ub
        diff = cl - ct
        c01 = self.variance_mas2 * (ct * g[0, 1] + diff * w0 * w1)
        return np.stack([np.stack([self.variance_mas2 * (ct * g[0, 0] + diff * w0 * w0), c01], -1),
                         np.stack([c01, self.variance_mas2 * (ct * g[1, 1] + diff * w1 * w1)], -1)], -2)

    def matrix(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """The joint covariance of both axes between points a (n, 2) and b (m, 2), pixels: (2n, 2m), mas^2.

        Rows and columns interleave the axes (xi of point 0, eta of point 0, xi of point 1, ...).
        The same numbers as :meth:`__call__` at the separations ``a - b``, written straight into
        the interleaved layout (the GP's blocks build one per block: no stacking and transposing).
        """
        m = self.metric()
        di = a[:, None, 0] - b[None, :, 0]
        dj = a[:, None, 1] - b[None, :, 1]
        p = m[0, 0] * di + m[0, 1] * dj
        q = m[1, 0] * di + m[1, 1] * dj
        r = np.hypot(p, q)
        cl, ct = curl_free_correlation(TWO_PI * r / self.outer_scale_px)
        inv_r = np.divide(1.0, r, out=np.zeros_like(r), where=r > 0)
        p *= inv_r
        q *= inv_r
        w0, w1 = m[0, 0] * p + m[1, 0] * q, m[0, 1] * p + m[1, 1] * q
        g = m.T @ m
        diff = (cl - ct) * self.variance_mas2
        ct *= self.variance_mas2
        out = np.empty((len(a), 2, len(b), 2))
        out[:, 0, :, 0] = ct * g[0, 0] + diff * w0 * w0
        out[:, 0, :, 1] = ct * g[0, 1] + diff * w0 * w1
        out[:, 1, :, 0] = out[:, 0, :, 1]
        out[:, 1, :, 1] = ct * g[1, 1] + diff * w1 * w1
        return out.reshape(2 * len(a), 2 * len(b))



@dataclass(frozen=True)
class Correlation2D:
    """The measured two-point correlations of the residuals on a 2-D grid of separations.

    Attributes
    ----------
    di_px, dj_px
        Bin centres, pixels (1-D, ``corr_bins`` each): ``xi[c, k, l]`` is at (di_px[l], dj_px[k]).
    xi_mas2
        Shape (3, bins, bins), mas^2: <r_xi r_xi>, <r_eta r_eta> and <r_xi r_eta> at separation d
        (the cross term symmetrised over d and -d); NaN where no pair fell.
    npairs
        Pairs per bin, shape (bins, bins).
    weight_mas4
        Shape (2, bins, bins), 1/mas^4: the sum of the pairs' weight products ``sum w_i w_j`` per
        bin of the two auto-correlations (xi-xi, eta-eta); each pair is in two bins (d and -d).
    """

    di_px: np.ndarray
    dj_px: np.ndarray
    xi_mas2: np.ndarray
    npairs: np.ndarray
    weight_mas4: np.ndarray


@dataclass(frozen=True)
class CorrelationSignificance:
    """How far the residuals' correlation at short separation stands above its own noise.

    Attributes
    ----------
    radius_px
        Separations counted: the bins whose centre is within this radius, pixels.
    sigma_axes
        Per axis (xi, eta): ``S / sqrt(W)``, with ``S = sum w_i w_j r_i r_j`` over the pairs within
        the radius and ``W = sum w_i w_j``; in standard deviations of S when the residuals are
        uncorrelated with variances ``1 / w`` (the products of distinct pairs are uncorrelated, so
        this holds exactly however many pairs share a star).
    sigma
        Both axes together, ``(sigma_xi + sigma_eta) / sqrt(2)``.
    pairs
        Distinct pairs within the radius.
    covariance_mas2
        Per axis: ``S / W``, the pairs' weighted mean product of residuals within the radius,
        mas^2. White noise adds nothing to it on average whatever its size (distinct stars' noise
        does not correlate), but a fit's residuals are not white: they anti-correlate by the fit's
        own covariance between the stars, which
        :func:`~astrodask.solve.turbulence.predicted.short_range_covariance` adds back (so do
        ``sigma_axes``: without any field they average about -1 on the benchmark's exposures).
    covariance_se_mas2
        Per axis: its standard error ``1 / sqrt(W)`` without a field, mas^2.
    """

    radius_px: float
    sigma_axes: tuple[float, float]
    sigma: float
    pairs: int
    covariance_mas2: tuple[float, float]
    covariance_se_mas2: tuple[float, float]

    def pooled_covariance_mas2(self) -> tuple[float, float]:
        """Both axes' ``S / W`` pooled, ``(S_xi + S_eta) / (W_xi + W_eta)``, and its standard error, mas^2."""
        w = [1.0 / se ** 2 if math.isfinite(se) and se > 0 else 0.0 for se in self.covariance_se_mas2]
        total = w[0] + w[1]
        if total <= 0:
            return 0.0, math.inf
        return (w[0] * self.covariance_mas2[0] + w[1] * self.covariance_mas2[1]) / total, 1.0 / math.sqrt(total)



# ---------------------------------------------------------------- 1. the correlation


def measure_correlation(i: np.ndarray, j: np.ndarray, residual_mas: np.ndarray, weight: np.ndarray, *,
                        max_sep_px: float, bins: int) -> Correlation2D:
    """The two-point correlations of the residuals on a 2-D grid of separations (treecorr).

    Each pair counts with the product of its stars' weights (``sum w_i w_j r_i r_j / sum w_i w_j``):
    with inverse-variance weights the faint stars' noise does not drown the bright stars' signal.

    Parameters
    ----------
    i, j
        Star pixels (N,).
    residual_mas
        Their residuals (N, 2), mas; the weighted mean is taken out first.
    weight
        Their weights per axis (N, 2), 1/mas^2.
    max_sep_px
        Separations from -max_sep_px to +max_sep_px along each pixel axis.
    bins
        Bins per axis (odd).
    """
    import treecorr

    res = np.asarray(residual_mas, dtype=np.float64)
    w = np.asarray(weight, dtype=np.float64)
    res = res - np.sum(w * res, axis=0) / np.sum(w, axis=0)
    x, y = np.asarray(i, dtype=np.float64), np.asarray(j, dtype=np.float64)
    cats = [treecorr.Catalog(x=x, y=y, k=res[:, a], w=w[:, a]) for a in range(2)]
    out, npairs, weights = [], None, []
    for c1, c2 in ((0, None), (1, None), (0, 1)):
        kk = treecorr.KKCorrelation(min_sep=0.0, max_sep=max_sep_px, nbins=bins, bin_type="TwoD",
                                    bin_slop=CORR_BIN_SLOP)
        kk.process(cats[c1], None if c2 is None else cats[c2])
        xi = np.where(kk.npairs > 0, kk.xi, np.nan)
        if c2 is not None:  # <r_xi(p) r_eta(p + d)> and at -d: the model's cross term is even in d
            xi = 0.5 * (xi + xi[::-1, ::-1])
        else:
            npairs = np.asarray(kk.npairs, dtype=np.float64)
            weights.append(np.asarray(kk.weight, dtype=np.float64))
        out.append(xi)
    centres = (np.arange(bins) + 0.5) * (2.0 * max_sep_px / bins) - max_sep_px
    assert npairs is not None
    return Correlation2D(centres, centres.copy(), np.stack(out), npairs, np.stack(weights))


def correlation_significance(corr: Correlation2D, *, radius_px: float) -> CorrelationSignificance:
    """The significance of the residuals' correlation at separations within ``radius_px``.

    Decides, before any GP, whether there is a correlated field to correct: the GP can only
    predict a star from its neighbours as far as they correlate. Within the radius the
    weighted sum of products ``S = sum w_i w_j r_i r_j`` has variance ``W = sum w_i w_j`` when
    the residuals are uncorrelated with variances ``1/w`` (the inverse-variance weights of
    :func:`measure_correlation`, from the error model): ``S / sqrt(W)`` is then a standard normal
    deviate. Both are read off the binned correlation (``xi * weight`` summed over the bins,
    halved since treecorr's 2-D auto-correlation holds each pair at d and at -d).
    """
    di, dj = np.meshgrid(corr.di_px, corr.dj_px)
    near = np.hypot(di, dj) <= radius_px
    sig, cov, se = [], [], []
    for axis in range(2):
        w = corr.weight_mas4[axis][near]
        xi = np.nan_to_num(corr.xi_mas2[axis][near])
        total = 0.5 * float(np.sum(w))
        products = 0.5 * float(np.sum(xi * w))
        sig.append(products / math.sqrt(total) if total > 0 else 0.0)
        cov.append(products / total if total > 0 else 0.0)
        se.append(1.0 / math.sqrt(total) if total > 0 else math.inf)
    pairs = int(0.5 * np.sum(corr.npairs[near]))
    return CorrelationSignificance(float(radius_px), (sig[0], sig[1]), (sig[0] + sig[1]) / math.sqrt(2.0), pairs,
                                   (cov[0], cov[1]), (se[0], se[1]))


def near_pairs(i: np.ndarray, j: np.ndarray, corr: Correlation2D, *, radius_px: float) -> np.ndarray:
    """The pairs of stars (M, 2) whose separation falls in the bins :func:`correlation_significance` counts.

    The bins whose centre is within ``radius_px`` (treecorr's 2-D bins: a separation (di, dj)
    falls in the bin that holds it, ``|di|, |dj| < max_sep``); each pair once, ``p < q``. Built
    with a k-d tree over the stars within the bins' reach, so the cost grows with the pairs
    counted, as the correlation's does.
    """
    from scipy.spatial import cKDTree

    width = float(corr.di_px[1] - corr.di_px[0]) if len(corr.di_px) > 1 else math.inf
    edge = float(corr.di_px[0]) - 0.5 * width  # -max_sep
    di, dj = np.meshgrid(corr.di_px, corr.dj_px)
    near = np.hypot(di, dj) <= radius_px
    if not near.any():
        return np.empty((0, 2), dtype=np.intp)
    reach = float(np.max(np.hypot(np.abs(di[near]), np.abs(dj[near])))) + width / math.sqrt(2.0)
    ij = np.column_stack([i, j]).astype(np.float64)
    pairs = cKDTree(ij).query_pairs(reach, output_type="ndarray")
    sep = ij[pairs[:, 1]] - ij[pairs[:, 0]]
    col = np.floor((sep[:, 0] - edge) / width).astype(np.intp)
    row = np.floor((sep[:, 1] - edge) / width).astype(np.intp)
    n = len(corr.di_px)
    inside = (col >= 0) & (col < n) & (row >= 0) & (row < n)
    keep = np.zeros(len(pairs), dtype=bool)
    keep[inside] = near[row[inside], col[inside]]
    return pairs[keep]


def correlation_sample(weight: np.ndarray, max_stars: int) -> np.ndarray:
    """The stars the correlation is measured on: all, or the ``max_stars`` best measured (highest weight).

    The pairs within the correlation's reach grow as N^2; the inverse-variance weighted correlation is
    carried by the best-measured stars anyway, so a full frame's 15,000 matches cost what its best
    ``max_stars`` do (about 14x fewer pairs at 4,000), and the kernel's cost no longer grows with N.
    """
    n = len(weight)
    if n <= max_stars:
        return np.arange(n)
    return np.sort(np.argsort(-np.sum(weight, axis=1), kind="stable")[:max_stars])


# ---------------------------------------------------------------- 2. the kernel


def fit_kernel(corr: Correlation2D, *, min_length_px: float, max_length_px: float, min_axis_ratio: float,
               min_pairs: int, start_length_px: float) -> CurlFreeKernel:
    """The curl-free anisotropic von Karman kernel that best fits the measured correlations.

    Least squares over the three maps (xi-xi, eta-eta, xi-eta) in the bins with at least
    ``min_pairs`` pairs, each weighted by the square root of its pairs; the variance is solved
    linearly for every trial shape, so the cost does not depend on the number of stars.
    Correlations that are nowhere positive give a zero-variance kernel.
    """
    di, dj = np.meshgrid(corr.di_px, corr.dj_px)
    use = (corr.npairs >= min_pairs) & np.all(np.isfinite(corr.xi_mas2), axis=0)
    if use.sum() < 4 or not np.any(corr.xi_mas2[:2, use] > 0):
        return CurlFreeKernel(0.0, start_length_px, 1.0, 0.0)
    di, dj = di[use], dj[use]
    xi = np.concatenate([corr.xi_mas2[0, use], corr.xi_mas2[1, use], corr.xi_mas2[2, use]])
    w = np.tile(np.sqrt(corr.npairs[use]), 3)

    def model(p: np.ndarray) -> np.ndarray:
        c = CurlFreeKernel(1.0, float(np.exp(p[0])), float(p[1]), float(p[2]))(di, dj)
        return np.concatenate([c[:, 0, 0], c[:, 1, 1], c[:, 0, 1]])

    def amplitude(g: np.ndarray) -> float:  # signed during the fit, so that the fit has a gradient
        return float(np.sum(w * w * g * xi) / max(np.sum(w * w * g * g), 1e-300))

    def resid(p: np.ndarray) -> np.ndarray:
        g = model(p)
        return w * (amplitude(g) * g - xi)

    lo = [math.log(min_length_px), min_axis_ratio, -math.pi]
    hi = [math.log(max_length_px), 1.0, math.pi]
    best = None
    for length in (start_length_px, start_length_px / FIT_START_SPREAD):  # short and long correlations
        start = min(max(length, min_length_px * 1.01), max_length_px * 0.99)
        for angle in (0.0, math.pi / 2):  # an anisotropy's angle has two basins
            fit = least_squares(resid, [math.log(start), 0.9, angle], bounds=(lo, hi), x_scale=[1.0, 0.3, 1.0])
            if best is None or fit.cost < best.cost:
                best = fit
    assert best is not None
    p = best.x
    angle = float((p[2] + math.pi / 2) % math.pi - math.pi / 2)
    return CurlFreeKernel(max(amplitude(model(p)), 0.0), float(np.exp(p[0])), float(p[1]), angle)

