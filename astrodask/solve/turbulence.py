"""The turbulence stage: the residual field of the matched stars, its correlation, a GP correction.

In a 30-90 s exposure the atmosphere moves stars by 10-30 mas coherently over 5-10 arcmin
(Bernstein et al. 2017); a TPV polynomial over the whole field cannot follow that, so its
residuals keep it. After the error model this stage, per axis (xi east, eta north):

1. :func:`measure_correlation`: the two-point correlation function of the kept stars'
   residuals on a 2-D grid of separations (treecorr's ``KKCorrelation``, ``bin_type='TwoD'``:
   a ball tree, N log N in the number of stars);
2. :func:`fit_kernel`: an anisotropic von Karman kernel fitted to that correlation
   (Leget et al. 2021, A&A 650, A81): variance, outer scale, axis ratio and angle by
   least squares over the separation bins, so the cost of the fit does not grow with N;
3. :func:`cross_validate`: k-fold cross-validation on held-back stars, exactly (the
   held-back stars of a fold are left out of each block's solve in closed form,
   Rasmussen & Williams 2006, eq. 5.12 for a set of points instead of one);
4. :func:`interpolate_grid`: the GP's posterior mean and variance on a grid of nodes.

The GP is solved block by block (:func:`local_gp`): the field is cut into square blocks of
``block_arcmin``; each is conditioned on the stars within it and a halo of ``halo_arcmin``
around it, at most ``max_block_stars`` of them. A block costs O(n^3) in its own stars n, and
the blocks grow in number with the field's area, so at a given density the cost is linear
in the number of stars, and bounded by ``max_block_stars`` at any density.

The correction is the GP's mean residual field r(p) carried back to pixels,
``dp = -J(p)^-1 r(p)`` with J the TPV's local Jacobian: the FITS distortion-paper form
(``CPDIS``/``WCSDVARR``), which astropy applies to the pixel coordinates before the TPV,
bilinearly between the table's nodes (:meth:`TurbulenceField.pixel_offsets` does the
same). :func:`predicted_error` gives the solution's honest error, corrected or not.

Units: residuals in mas on the tangent plane, positions in 0-based pixels, separations in
pixels unless a name says otherwise.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.linalg import LinAlgError
from scipy.linalg.lapack import dpotrf, dpotri
from scipy.optimize import least_squares
from scipy.special import gamma, kv

from astrodask.config import TurbulenceConfig
from astrodask.constants import GAIA_DR3_EPOCH

if TYPE_CHECKING:
    from astrodask.solve.tpv import TPVSolution

log = logging.getLogger(__name__)

#: The solution's local Jacobian d(xi, eta)/d(i, j) at 0-based pixels (i, j): (M, 2, 2), mas/px.
Jacobian = Callable[[np.ndarray, np.ndarray], np.ndarray]

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
#: Jitter added to a block's covariance diagonal, relative to its kernel variance (numerical safety).
JITTER_REL = 1e-9


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


# ---------------------------------------------------------------- results


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
    """

    di_px: np.ndarray
    dj_px: np.ndarray
    xi_mas2: np.ndarray
    npairs: np.ndarray


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
    """

    n_folds: int
    n_stars: int
    rms_before_mas: tuple[float, float]
    rms_after_mas: tuple[float, float]
    gain_sigma: float
    held_out_mas: np.ndarray


@dataclass(frozen=True)
class TurbulenceField:
    """The correction on a grid of nodes: what the lookup tables hold.

    Node (k, l) sits at 0-based pixel ``(l * step_px, k * step_px)``; the nodes cover the
    image (the last ones at or past its last pixel).

    Attributes
    ----------
    step_px
        Node spacing, pixels.
    offset_px
        Pixel offsets to add before the TPV, shape (nj, ni, 2): (di, dj).
    residual_mas
        The GP's mean residual field at the nodes, shape (nj, ni, 2): (xi, eta), mas.
    sd_mas
        The GP's posterior standard deviation at the nodes, shape (nj, ni, 2), mas.
    """

    step_px: float
    offset_px: np.ndarray
    residual_mas: np.ndarray
    sd_mas: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        """Nodes (nj, ni)."""
        return int(self.offset_px.shape[0]), int(self.offset_px.shape[1])

    def pixel_offsets(self, i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The pixel offsets (di, dj) at 0-based pixels: bilinear between nodes, clamped at the edges.

        This is the interpolation astropy's ``DistortionLookupTable`` does, so positions
        through :func:`corrected_pixel_to_world` are those of ``WCS(header, fobj)``.
        """
        nj, ni = self.shape
        u = np.clip(np.asarray(i, dtype=np.float64) / self.step_px, 0.0, ni - 1.0)
        v = np.clip(np.asarray(j, dtype=np.float64) / self.step_px, 0.0, nj - 1.0)
        l0 = np.minimum(np.floor(u).astype(int), max(ni - 2, 0))
        k0 = np.minimum(np.floor(v).astype(int), max(nj - 2, 0))
        l1, k1 = np.minimum(l0 + 1, ni - 1), np.minimum(k0 + 1, nj - 1)
        fu, fv = u - l0, v - k0
        out = []
        for axis in range(2):
            t = self.offset_px[..., axis]
            out.append((1 - fv) * ((1 - fu) * t[k0, l0] + fu * t[k0, l1])
                       + fv * ((1 - fu) * t[k1, l0] + fu * t[k1, l1]))
        return out[0], out[1]


@dataclass(frozen=True)
class PredictedError:
    """The solution's predicted astrometric error (what CRDERi and CSYERi carry).

    Attributes
    ----------
    random_mas
        Rms over the field per axis (xi, eta), mas: the TPV fit's own error plus the
        correlated residual field left (all of it when not corrected, the GP's posterior
        variance when corrected).
    systematic_mas
        Per axis, mas: the reference frame's (``turbulence.frame_mas`` and its spin over the
        years since the catalog's epoch).
    fit_mas
        Per axis, mas: the TPV fit's part of ``random_mas``.
    field_mas
        Per axis, mas: the correlated field's part of ``random_mas``.
    map_mas
        A coarse map over the field of the random part's rms per axis, shape (ny, nx, 2), mas.
    """

    random_mas: tuple[float, float]
    systematic_mas: float
    fit_mas: tuple[float, float]
    field_mas: tuple[float, float]
    map_mas: np.ndarray


@dataclass(frozen=True)
class TurbulenceResult:
    """What the turbulence stage hands on.

    Attributes
    ----------
    applied
        True when the correction rides with the solution (cross-validation showed it helps).
    reason
        Why it is or is not applied, in words (for the summary and the header).
    n_stars
        Kept matches the stage used.
    kernel
        The fitted kernel, or None when no correlation was measured.
    correlation
        The measured correlations, or None.
    cv
        The cross-validation, or None when it did not run.
    field
        The correction on its grid when applied, else None.
    predicted
        The solution's predicted error (with the correction when applied).
    predicted_tpv
        The predicted error of the TPV alone (the same as ``predicted`` when not applied).
    i, j
        The stars' pixels; ``residual_mas`` their residuals (N, 2) before the correction;
        ``corrected_mas`` after it (the in-sample GP mean; equal to ``residual_mas`` when not
        applied).
    variance_mas2
        The stars' modelled variance per axis (N, 2), mas^2 (their inverse is their weight).
    """

    applied: bool
    reason: str
    n_stars: int
    kernel: CurlFreeKernel | None
    correlation: Correlation2D | None
    cv: CrossValidation | None
    field: TurbulenceField | None
    predicted: PredictedError
    predicted_tpv: PredictedError
    i: np.ndarray
    j: np.ndarray
    residual_mas: np.ndarray
    corrected_mas: np.ndarray
    variance_mas2: np.ndarray

    @property
    def correction(self) -> str:
        """``"tpv+gp"`` when the correction is applied, else ``"tpv"``."""
        return "tpv+gp" if self.applied else "tpv"


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
    out, npairs = [], None
    for c1, c2 in ((0, None), (1, None), (0, 1)):
        kk = treecorr.KKCorrelation(min_sep=0.0, max_sep=max_sep_px, nbins=bins, bin_type="TwoD",
                                    bin_slop=CORR_BIN_SLOP)
        kk.process(cats[c1], None if c2 is None else cats[c2])
        xi = np.where(kk.npairs > 0, kk.xi, np.nan)
        if c2 is not None:  # <r_xi(p) r_eta(p + d)> and at -d: the model's cross term is even in d
            xi = 0.5 * (xi + xi[::-1, ::-1])
        else:
            npairs = np.asarray(kk.npairs, dtype=np.float64)
        out.append(xi)
    centres = (np.arange(bins) + 0.5) * (2.0 * max_sep_px / bins) - max_sep_px
    assert npairs is not None
    return Correlation2D(centres, centres.copy(), np.stack(out), npairs)


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


# ---------------------------------------------------------------- 3-4. the local GP


@dataclass(frozen=True)
class _Block:
    own: np.ndarray  # stars inside the block (cross-validated by it)
    train: np.ndarray  # stars conditioning it: its own and its halo's, at most max_stars
    query: np.ndarray  # query points inside it


def _blocks(train_ij: np.ndarray, query_ij: np.ndarray, *, block_px: float, halo_px: float,
            max_stars: int) -> list[_Block]:
    """The blocks of the field: stars and query points by block, and each block's conditioning stars.

    A block with more than ``max_stars`` within its halo keeps the nearest to its centre
    (Chebyshev distance: its own stars first).
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
            cheb = np.max(np.abs(train_ij[near] - centre), axis=1)
            near = near[np.argsort(cheb, kind="stable")[:max_stars]]
        blocks.append(_Block(np.flatnonzero(t_key == key), np.sort(near), np.flatnonzero(q_key == key)))
    return blocks


def _kernel_matrix(kernel: CurlFreeKernel, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The joint covariance of both axes between points a (n, 2) and b (m, 2): (2n, 2m), axes interleaved."""
    c = kernel(a[:, None, 0] - b[None, :, 0], a[:, None, 1] - b[None, :, 1])  # (n, m, 2, 2)
    return c.transpose(0, 2, 1, 3).reshape(2 * len(a), 2 * len(b))


def _inverse(kernel: CurlFreeKernel, xy: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """The inverse of the block's covariance (kernel plus white noise (n, 2), interleaved), by Cholesky."""
    cov = _kernel_matrix(kernel, xy, xy)
    jitter = JITTER_REL * max(kernel.variance_mas2, 1e-12)
    cov[np.diag_indices_from(cov)] += noise.ravel() + jitter
    lower, info = dpotrf(cov, lower=1, clean=0, overwrite_a=1)
    if info != 0:  # not positive definite to rounding: a little more jitter
        cov = _kernel_matrix(kernel, xy, xy)
        cov[np.diag_indices_from(cov)] += noise.ravel() + 1e3 * jitter
        lower, info = dpotrf(cov, lower=1, clean=0, overwrite_a=1)
        if info != 0:
            raise LinAlgError(f"turbulence: a block's covariance is not positive definite (LAPACK info {info})")
    inv, info = dpotri(lower, lower=1, overwrite_c=1)
    inv = np.tril(inv) + np.tril(inv, -1).T
    return inv


@dataclass(frozen=True)
class LocalGP:
    """The local GP of the residual field (:func:`local_gp`), both axes.

    Attributes
    ----------
    held_out_mas
        (N, 2) each star's residual minus the prediction made without its fold; NaN for a
        star its block could not condition on (more than ``max_stars`` in the block itself).
    at_stars_mas
        (N, 2) the posterior mean at the stars (in sample).
    mean_mas, var_mas2
        (M, 2) the posterior mean and variance per axis at the query points.
    """

    held_out_mas: np.ndarray
    at_stars_mas: np.ndarray
    mean_mas: np.ndarray
    var_mas2: np.ndarray


def local_gp(train_ij: np.ndarray, residual_mas: np.ndarray, noise_mas2: np.ndarray, kernel: CurlFreeKernel,
             folds: np.ndarray, query_ij: np.ndarray, *, block_px: float, halo_px: float,
             max_stars: int) -> LocalGP:
    """The GP, block by block: k-fold held-back residuals, and the posterior at query points.

    One inverse ``A`` of a block's covariance (kernel plus noise over its conditioning stars,
    both axes) serves everything: the posterior mean ``k_q A y`` and variance
    ``k(0) - k_q A k_q^T`` at its query points and its stars, and the cross-validation in
    closed form: for the stars S of one fold, ``y_S - E[y_S | the others] = (A_SS)^-1 (A y)_S``
    (Rasmussen & Williams 2006, eq. 5.12, for a set of points).

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
        The blocks (see the module's docstring).
    """
    n = len(residual_mas)
    held = np.full((n, 2), np.nan)
    at_stars = np.zeros((n, 2))
    mean = np.zeros((len(query_ij), 2))
    prior = kernel.axis_variance_mas2()
    var = np.tile(prior, (len(query_ij), 1))
    if kernel.variance_mas2 <= 0 or n == 0:
        return LocalGP(np.asarray(residual_mas, dtype=np.float64).copy(), at_stars, mean, var)
    for block in _blocks(train_ij, query_ij, block_px=block_px, halo_px=halo_px, max_stars=max_stars):
        if len(block.train) == 0:
            continue
        inv = _inverse(kernel, train_ij[block.train], noise_mas2[block.train])
        alpha = inv @ residual_mas[block.train].ravel()
        # the block's own stars that condition it (all of them unless the block itself is too full)
        row = np.searchsorted(block.train, block.own)
        found = (row < len(block.train)) & (block.train[np.minimum(row, len(block.train) - 1)] == block.own)
        own = block.own[found]
        for fold in np.unique(folds[own]):
            members = np.flatnonzero(folds[block.train] == fold)
            rows = np.column_stack([2 * members, 2 * members + 1]).ravel()
            r = np.linalg.solve(inv[np.ix_(rows, rows)], alpha[rows]).reshape(-1, 2)
            mine = own[folds[own] == fold]
            held[mine] = r[np.searchsorted(block.train[members], mine)]
        points = np.concatenate([query_ij[block.query], train_ij[block.own]])
        kq = _kernel_matrix(kernel, points, train_ij[block.train])
        mu = (kq @ alpha).reshape(-1, 2)
        nq = len(block.query)
        mean[block.query] = mu[:nq]
        at_stars[block.own] = mu[nq:]
        kq_q = kq[: 2 * nq]
        reduction = np.einsum("qn,qn->q", kq_q @ inv, kq_q).reshape(-1, 2)
        var[block.query] = np.maximum(prior - reduction, 0.0)
    return LocalGP(held, at_stars, mean, var)


def cross_validation(residual_mas: np.ndarray, held_out_mas: np.ndarray, weight: np.ndarray,
                     n_folds: int) -> CrossValidation:
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

    return CrossValidation(n_folds, int(ok.sum()), rms(before), rms(after), gain_sigma, held_out_mas)


def grid_nodes(shape: tuple[int, int], step_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Node pixels (nj, ni) covering an image of ``shape`` (ny, nx) at ``step_px``."""
    ny, nx = shape
    ni = int(math.ceil((nx - 1) / step_px)) + 1
    nj = int(math.ceil((ny - 1) / step_px)) + 1
    return np.meshgrid(np.arange(ni) * step_px, np.arange(nj) * step_px)


def correction_field(residual_mas: np.ndarray, var_mas2: np.ndarray, gi: np.ndarray, gj: np.ndarray,
                     step_px: float, jacobian_mas_per_px: Jacobian) -> TurbulenceField:
    """The residual field at the nodes (M, 2) as the pixel offsets that take it out, ``-J^-1 r``."""
    jac = np.asarray(jacobian_mas_per_px(gi.ravel(), gj.ravel()))
    offset = -np.linalg.solve(jac, residual_mas[:, :, None])[:, :, 0]
    grid = gi.shape
    return TurbulenceField(float(step_px), offset.reshape(*grid, 2), residual_mas.reshape(*grid, 2),
                           np.sqrt(var_mas2).reshape(*grid, 2))


# ---------------------------------------------------------------- 5. the predicted error


def _polynomial_design(i: np.ndarray, j: np.ndarray, shape: tuple[int, int], degree: int) -> np.ndarray:
    """Every monomial u^a v^b with a + b <= degree, u and v the pixels scaled to [-1, 1] over the image."""
    ny, nx = shape
    u = (np.asarray(i, dtype=np.float64) - (nx - 1) / 2) / max((nx - 1) / 2, 1.0)
    v = (np.asarray(j, dtype=np.float64) - (ny - 1) / 2) / max((ny - 1) / 2, 1.0)
    return np.column_stack([u ** a * v ** b for a in range(degree + 1) for b in range(degree + 1 - a)])


def fit_variance_mas2(i: np.ndarray, j: np.ndarray, total_mas2: np.ndarray, *, degree: int, shape: tuple[int, int],
                      gi: np.ndarray, gj: np.ndarray) -> np.ndarray:
    """The TPV fit's own variance per axis at the grid's nodes, mas^2, shape (nj, ni, 2).

    From the fit's covariance: ``a(x)^T (A^T W A)^-1 a(x)`` per axis, with A the polynomial design
    at the stars (every monomial to the TPV's degree: the span of the TPV's terms, less its
    radial ones), W their inverse variances and a(x) the design at a node. Where the
    well-measured stars are few, the edges and corners are worse than the stars' average.
    """
    design = _polynomial_design(i, j, shape, degree)
    nodes = _polynomial_design(gi.ravel(), gj.ravel(), shape, degree)
    out = np.empty((gi.size, 2))
    for axis in range(2):
        normal = design.T @ (design / total_mas2[:, axis, None])
        cov = np.linalg.pinv(normal, hermitian=True)
        out[:, axis] = np.einsum("qa,ab,qb->q", nodes, cov, nodes)
    return out.reshape(*gi.shape, 2)


def frame_systematic_mas(*, epoch_yr: float | None, config: TurbulenceConfig) -> float:
    """The reference frame's systematic error per axis at the exposure's epoch, mas."""
    years = 0.0 if epoch_yr is None else abs(epoch_yr - GAIA_DR3_EPOCH)
    return math.hypot(config.frame_mas, config.frame_spin_mas_per_yr * years)


def coarse_map(field_var: np.ndarray, gi: np.ndarray, gj: np.ndarray, shape: tuple[int, int],
               cells: int) -> np.ndarray:
    """Mean of a per-node variance (nj, ni, 2) in a coarse grid of cells, as an rms map (ny, nx, 2)."""
    ny, nx = shape
    cx = cells
    cy = max(1, int(round(cells * ny / nx)))
    ci = np.minimum((gi / nx * cx).astype(int), cx - 1)
    cj = np.minimum((gj / ny * cy).astype(int), cy - 1)
    out = np.zeros((cy, cx, 2))
    for a in range(2):
        total = np.zeros((cy, cx))
        count = np.zeros((cy, cx))
        np.add.at(total, (cj, ci), field_var[..., a])
        np.add.at(count, (cj, ci), 1)
        out[..., a] = np.sqrt(total / np.maximum(count, 1))
    return out


def predicted_error(*, fit_var_mas2: np.ndarray, field_var_mas2: np.ndarray, gi: np.ndarray, gj: np.ndarray,
                    shape: tuple[int, int], epoch_yr: float | None, config: TurbulenceConfig) -> PredictedError:
    """The predicted error: the fit's variance plus the correlated field's, over the field; the frame's.

    Both are per node (nj, ni, 2): ``fit_var_mas2`` from :func:`fit_variance_mas2`;
    ``field_var_mas2`` the field's variance everywhere when not corrected, the GP's posterior
    variance when corrected.
    """
    total = field_var_mas2 + fit_var_mas2
    rnd = np.sqrt(np.mean(total, axis=(0, 1)))
    fld = np.sqrt(np.mean(field_var_mas2, axis=(0, 1)))
    return PredictedError((float(rnd[0]), float(rnd[1])), frame_systematic_mas(epoch_yr=epoch_yr, config=config),
                          tuple(float(v) for v in np.sqrt(np.mean(fit_var_mas2, axis=(0, 1)))),  # type: ignore[arg-type]
                          (float(fld[0]), float(fld[1])),
                          coarse_map(total, gi, gj, shape, config.error_map_cells))


# ---------------------------------------------------------------- the stage


def correct_turbulence(i: np.ndarray, j: np.ndarray, residual_mas: np.ndarray, noise_mas2: np.ndarray,
                       total_mas2: np.ndarray, *, shape: tuple[int, int], scale_arcsec: float, degree: int,
                       jacobian_mas_per_px: Jacobian, epoch_yr: float | None, config: TurbulenceConfig,
                       rng: np.random.Generator) -> TurbulenceResult:
    """The turbulence stage on the kept matches: correlation, kernel, cross-validation, correction.

    Parameters
    ----------
    i, j
        The kept stars' pixels (N,), 0-based.
    residual_mas
        Their residuals (N, 2) against the TPV, mas (xi, eta): source minus reference.
    noise_mas2
        Their centroid variance per axis (N, 2), mas^2 (the error model's scale times SEP's):
        the least white noise a star has.
    total_mas2
        Their whole modelled variance per axis (N, 2), mas^2 (the error model's, its floor
        included: the floor holds the correlated field too, and the white noise is what the
        kernel's variance leaves of it, but never less than ``noise_mas2``).
    shape
        Image (ny, nx).
    scale_arcsec
        Plate scale, arcsec per pixel (converts the config's arcminutes).
    degree
        The TPV's degree (for the fit's own variance, :func:`fit_variance_mas2`).
    jacobian_mas_per_px
        The solution's local Jacobian (:data:`Jacobian`).
    epoch_yr
        The exposure's epoch (the frame's spin), or None.
    config
        The ``turbulence`` section.
    rng
        Draws the folds.

    Returns
    -------
    TurbulenceResult
        Applied with its grid, or not with the reason; the predicted error either way.
    """
    px_per_arcmin = ARCSEC_PER_ARCMIN / scale_arcsec
    block_px, halo_px = config.block_arcmin * px_per_arcmin, config.halo_arcmin * px_per_arcmin
    step_px = max(config.grid_step_arcmin * px_per_arcmin, 1.0)
    residual_mas = np.asarray(residual_mas, dtype=np.float64)
    ij = np.column_stack([i, j]).astype(np.float64)
    n = len(ij)
    gi, gj = grid_nodes(shape, step_px)
    fit_var = fit_variance_mas2(ij[:, 0], ij[:, 1], total_mas2, degree=degree, shape=shape, gi=gi, gj=gj)
    # the residuals' variance beyond the centroid errors (the error model's floor): the correlated field and
    # any white systematics together, so an upper bound on the field's variance
    excess = np.median(np.maximum(total_mas2 - noise_mas2, 0.0), axis=0) if n else np.zeros(2)

    def field_variance(kernel: CurlFreeKernel) -> np.ndarray:
        """The field's variance per axis for the predicted error: the kernel's, or the floor's when larger.

        Where stars are few or noisy the correlation is measured from a few separations and the
        kernel's zero-lag variance falls short, or finds none; the floor, measured on every star,
        does not (an upper bound: it holds any white systematics too).
        """
        return np.maximum(kernel.axis_variance_mas2(), excess)

    def untouched(reason: str, kernel: CurlFreeKernel | None = None, corr: Correlation2D | None = None,
                  cv: CrossValidation | None = None) -> TurbulenceResult:
        # not corrected: the correlated field stays whole (the kernel's variance everywhere); with no
        # kernel, the error model's floor (the median excess over the centroid errors) stands for it
        var = excess if kernel is None else field_variance(kernel)  # the floor at least
        pred = predicted_error(fit_var_mas2=fit_var, field_var_mas2=np.broadcast_to(var, (*gi.shape, 2)), gi=gi,
                               gj=gj, shape=shape, epoch_yr=epoch_yr, config=config)
        log.info("turbulence: %s", reason)
        return TurbulenceResult(False, reason, n, kernel, corr, cv, None, pred, pred, ij[:, 0], ij[:, 1],
                                residual_mas, residual_mas, total_mas2)

    if not config.enabled:
        return untouched("not applied: turbulence.enabled = false (TPV only; the error model's floor stands for "
                         "the correlated field in the predicted error)")
    if n < config.min_stars:
        return untouched(f"not applied: {n} kept matches, fewer than turbulence.min_stars = {config.min_stars}")
    max_sep = config.corr_max_sep_arcmin * px_per_arcmin
    weight = 1.0 / total_mas2
    best = correlation_sample(weight, config.corr_max_stars)
    corr = measure_correlation(ij[best, 0], ij[best, 1], residual_mas[best], weight[best], max_sep_px=max_sep,
                               bins=config.corr_bins)
    kernel = fit_kernel(corr, min_length_px=config.min_length_arcmin * px_per_arcmin,
                        max_length_px=config.max_length_arcmin * px_per_arcmin, min_axis_ratio=config.min_axis_ratio,
                        min_pairs=config.corr_min_pairs, start_length_px=max_sep)
    if kernel.variance_mas2 <= 0:
        return untouched("not applied: the residuals show no positive correlation", kernel, corr)
    white = np.maximum(noise_mas2, total_mas2 - kernel.axis_variance_mas2()[None, :])
    folds = rng.permutation(n) % config.cv_folds
    nodes = np.column_stack([gi.ravel(), gj.ravel()])
    try:
        gp = local_gp(ij, residual_mas, white, kernel, folds, nodes, block_px=block_px, halo_px=halo_px,
                      max_stars=config.max_block_stars)
    except LinAlgError as err:  # a degenerate block (coincident stars, no noise): the TPV stands alone
        return untouched(f"not applied: the GP could not be solved ({err})", kernel, corr)
    cv = cross_validation(residual_mas, gp.held_out_mas, 1.0 / total_mas2, config.cv_folds)
    verdict = (f"cross-validation ({cv.n_folds} folds, {cv.n_stars} stars): held-back weighted rms "
               f"({cv.rms_before_mas[0]:.2f}, {cv.rms_before_mas[1]:.2f}) -> "
               f"({cv.rms_after_mas[0]:.2f}, {cv.rms_after_mas[1]:.2f}) mas, gain {cv.gain_sigma:.1f} sigma")
    if not cv.gain_sigma > config.cv_min_sigma:
        return untouched(f"not applied: {verdict}, not above turbulence.cv_min_sigma = {config.cv_min_sigma:g}",
                         kernel, corr, cv)
    field = correction_field(gp.mean_mas, gp.var_mas2, gi, gj, step_px, jacobian_mas_per_px)
    # in the data-poor limit the posterior variance is the prior's: scaled as field_variance scales the prior
    rescale = field_variance(kernel) / np.maximum(kernel.axis_variance_mas2(), 1e-300)
    pred = predicted_error(fit_var_mas2=fit_var, field_var_mas2=field.sd_mas ** 2 * rescale, gi=gi, gj=gj, shape=shape,
                           epoch_yr=epoch_yr, config=config)
    tpv_only = predicted_error(fit_var_mas2=fit_var,
                               field_var_mas2=np.broadcast_to(field_variance(kernel), (*gi.shape, 2)), gi=gi,
                               gj=gj, shape=shape, epoch_yr=epoch_yr, config=config)
    log.info("turbulence: applied: %s", verdict)
    return TurbulenceResult(True, f"applied: {verdict}", n, kernel, corr, cv, field, pred, tpv_only, ij[:, 0],
                            ij[:, 1], residual_mas, residual_mas - gp.at_stars_mas, total_mas2)


def corrected_pixel_to_world(solution: TPVSolution, field: TurbulenceField | None, i: np.ndarray,
                             j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ra, dec) degrees of 0-based pixels through the lookup-table offsets, then the TPV.

    The order and interpolation astropy uses for ``CPDIS`` tables on a TPV header.
    """
    from astrodask.solve.tpv import pixel_to_world

    i, j = np.asarray(i, dtype=np.float64), np.asarray(j, dtype=np.float64)
    if field is not None:
        di, dj = field.pixel_offsets(i, j)
        i, j = i + di, j + dj
    return pixel_to_world(solution, i, j)
