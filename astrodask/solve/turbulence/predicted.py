"""The solution's predicted astrometric error: the fit's own, the correlated field's, the frame's.

What ``CRDER1/2`` (random) and ``CSYER1/2`` (systematic) carry, from the TPV fit's covariance,
the error model and the residual field left (all of it when not corrected, the GP's posterior
variance when corrected).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from astrodask.config import TurbulenceConfig
from astrodask.constants import GAIA_DR3_EPOCH
from astrodask.solve.turbulence.kernel import Correlation2D, CorrelationSignificance, CurlFreeKernel, near_pairs

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



# ---------------------------------------------------------------- 5. the predicted error


def _polynomial_design(i: np.ndarray, j: np.ndarray, shape: tuple[int, int], degree: int) -> np.ndarray:
    """Every monomial u^a v^b with a + b <= degree, u and v the pixels scaled to [-1, 1] over the image."""
    ny, nx = shape
    u = (np.asarray(i, dtype=np.float64) - (nx - 1) / 2) / max((nx - 1) / 2, 1.0)
    v = (np.asarray(j, dtype=np.float64) - (ny - 1) / 2) / max((ny - 1) / 2, 1.0)
    return np.column_stack([u ** a * v ** b for a in range(degree + 1) for b in range(degree + 1 - a)])


def fit_variance_mas2(i: np.ndarray, j: np.ndarray, total_mas2: np.ndarray, *, degree: int, shape: tuple[int, int],
                      gi: np.ndarray, gj: np.ndarray, variance_mas2: np.ndarray | None = None) -> np.ndarray:
    """The TPV fit's own variance per axis at the grid's nodes, mas^2, shape (nj, ni, 2).

    From the fit's covariance: ``a(x)^T (A^T W A)^-1 a(x)`` per axis, with A the polynomial design
    at the stars (every monomial to the TPV's degree: the span of the TPV's terms, less its
    radial ones), W their inverse variances ``1 / total_mas2`` (the fit's weights) and a(x) the
    design at a node. Where the well-measured stars are few, the edges and corners are worse
    than the stars' average.

    When the stars' true variance ``variance_mas2`` (N, 2) differs from the one the fit weighted
    them by, the fit's covariance is the sandwich ``B^-1 (A^T W V W A) B^-1`` with
    ``B = A^T W A`` and V the true variances (:class:`ResidualVariance`).
    """
    design = _polynomial_design(i, j, shape, degree)
    nodes = _polynomial_design(gi.ravel(), gj.ravel(), shape, degree)
    out = np.empty((gi.size, 2))
    for axis in range(2):
        w = 1.0 / total_mas2[:, axis]
        cov = np.linalg.pinv(design.T @ (design * w[:, None]), hermitian=True)
        if variance_mas2 is not None:
            cov = cov @ (design.T @ (design * (w ** 2 * variance_mas2[:, axis])[:, None])) @ cov
        out[:, axis] = np.einsum("qa,ab,qb->q", nodes, cov, nodes)
    return out.reshape(*gi.shape, 2)


def leverage(i: np.ndarray, j: np.ndarray, total_mas2: np.ndarray, *, degree: int,
             shape: tuple[int, int]) -> np.ndarray:
    """Each star's leverage on the TPV fit per axis, (N, 2): the hat matrix's diagonal ``w a^T (A^T W A)^-1 a``.

    A least-squares fit takes this share of a star's own white noise into the solution:
    its residual's variance is ``(1 - h)`` times the star's (A the polynomial design of every
    monomial to ``degree``, W the fit's weights ``1 / total_mas2``).
    """
    design = _polynomial_design(i, j, shape, degree)
    out = np.empty((len(design), 2))
    for axis in range(2):
        w = 1.0 / total_mas2[:, axis]
        cov = np.linalg.pinv(design.T @ (design * w[:, None]), hermitian=True)
        out[:, axis] = w * np.einsum("ka,ab,kb->k", design, cov, design)
    return out


@dataclass(frozen=True)
class ResidualVariance:
    """The kept residuals' variance, star by star: white noise growing with the centroid errors, plus a field.

    ``E r^2 = (1 - h) s_k^2 n (n / n_med)^gamma + F`` per axis, with n a star's centroid variance
    as the error model has it, h its leverage on the TPV (:func:`leverage`), ``s_k`` the scale of
    its half of the stars (the better measured half, k = 0, and the other) and F the variance of
    the field the TPV leaves (the atmosphere's, and any white excess the model does not follow):
    what the predicted error's field part stands for when no GP corrects it.

    Attributes
    ----------
    scales
        (s_0, s_1): the white noise's scale on the error model's centroid variances, for the
        stars measured better than the median and for the others.
    exponent
        gamma: how much faster than the centroid variances the white noise grows (0: in
        proportion, as the error model's one scale has it).
    field_mas2
        F per axis, mas^2.
    median_noise_mas2
        n_med, the centroid variances' median (both axes' mean), mas^2: the halves' boundary.
    field_se_mas2
        F's standard error, mas^2 (the likelihood's expected information): large where few
        stars are measured better than F, which alone tell the field from the white noise
        (infinite where nothing does: every star's centroid variance the same).
    """

    scales: tuple[float, float]
    exponent: float
    field_mas2: float
    median_noise_mas2: float
    field_se_mas2: float = math.inf

    def white_mas2(self, noise_mas2: np.ndarray) -> np.ndarray:
        """The white noise of stars of centroid variances ``noise_mas2`` (N, 2), mas^2 (same shape)."""
        n = np.asarray(noise_mas2, dtype=np.float64)
        scale = np.where(_half(n, self.median_noise_mas2) == 0, self.scales[0], self.scales[1])
        return scale[:, None] ** 2 * n * (n / self.median_noise_mas2) ** self.exponent

    def variance_mas2(self, noise_mas2: np.ndarray) -> np.ndarray:
        """Their whole variance, the white noise and the field's, mas^2 (same shape)."""
        return self.white_mas2(noise_mas2) + self.field_mas2


def _half(noise_mas2: np.ndarray, median_mas2: float) -> np.ndarray:
    """0 for the stars whose centroid variance (both axes' mean) is below the median, 1 for the others."""
    return (np.mean(noise_mas2, axis=1) >= median_mas2).astype(np.intp)


def residual_variance(residual_mas: np.ndarray, noise_mas2: np.ndarray, leverage_: np.ndarray, *,
                      exponent_limit: float) -> ResidualVariance:
    """Maximum likelihood of :class:`ResidualVariance` on the kept residuals, both axes together.

    The error model (``like_fit``) has one scale for every star's centroid errors and a floor
    added in quadrature. Its one scale is set by the many faint stars, so where the bright
    stars' centroid errors are overestimated the floor comes out smaller than the field it
    should hold; and it takes no account of the fit's own share of each residual. Here both
    are modelled: the better measured half of the stars has its own scale, the white noise may
    grow faster or slower than the centroid variances (``gamma`` within +-``exponent_limit``),
    and each residual keeps ``1 - h`` of it (the restricted likelihood's correction: the fit's
    degrees of freedom are not the noise's), so F measures the field the TPV leaves.

    Parameters
    ----------
    residual_mas
        The kept residuals (N, 2), mas.
    noise_mas2
        Their centroid variances per axis (N, 2) as the error model has them, mas^2 (> 0).
    leverage_
        Their leverage on the TPV per axis (N, 2), :func:`leverage`.
    exponent_limit
        The largest ``|gamma|``.

    Returns
    -------
    ResidualVariance
    """
    r2 = np.asarray(residual_mas, dtype=np.float64) ** 2
    n = np.maximum(np.asarray(noise_mas2, dtype=np.float64), np.finfo(float).tiny)
    med = float(np.median(np.mean(n, axis=1)))
    half = _half(n, med)
    keep = 1.0 - np.clip(leverage_, 0.0, 1.0 - 1e-3)
    log_q = np.log(n / med)
    base = keep * n / med  # the white noise at s = 1, gamma = 0, in units of the median centroid variance
    r2 = r2 / med
    masks = [(half == k)[:, None] for k in range(2)]

    def parts(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s2 = np.where(half == 0, x[0], x[1])[:, None]
        return s2, base * np.exp(x[2] * log_q)

    def nll(x: np.ndarray) -> tuple[float, np.ndarray]:
        s2, u = parts(x)
        v = s2 * u + x[3]
        d = 0.5 * (1.0 / v - r2 / v ** 2)
        grad = np.array([np.sum(d * u * masks[0]), np.sum(d * u * masks[1]), np.sum(d * s2 * u * log_q), np.sum(d)])
        return float(0.5 * np.sum(r2 / v + np.log(v))), grad

    s2_0 = max(float(np.median(r2 / base)) / 0.455, 1e-3)  # the median of chi2(1) is 0.455
    found = minimize(nll, np.array([s2_0, s2_0, 0.0, 0.01 * s2_0]), jac=True, method="L-BFGS-B",
                     bounds=[(1e-6, None), (1e-6, None), (-exponent_limit, exponent_limit), (0.0, None)])
    x = found.x
    # F's standard error from the expected information 0.5 sum (dv/da)(dv/db) / v^2 (gamma held where it is bound)
    s2, u = parts(x)
    v = (s2 * u + x[3]).ravel()
    jac = [(u * masks[0]).ravel(), (u * masks[1]).ravel(), (s2 * u * log_q).ravel(), np.ones_like(v)]
    if abs(x[2]) >= exponent_limit * (1 - 1e-6):
        jac.pop(2)
    design = np.column_stack(jac) / v[:, None]
    try:
        se = math.sqrt(max(float(np.linalg.inv(0.5 * design.T @ design)[-1, -1]), 0.0)) * med
    except np.linalg.LinAlgError:  # F and the scales not told apart: every star's variance the same
        se = math.inf
    return ResidualVariance((math.sqrt(x[0]), math.sqrt(x[1])), float(x[2]), float(x[3]) * med, med,
                            se if math.isfinite(se) else math.inf)


def fit_pair_covariance_mas2(i: np.ndarray, j: np.ndarray, total_mas2: np.ndarray, pairs: np.ndarray, *,
                             degree: int, shape: tuple[int, int]) -> np.ndarray:
    """The TPV fit's own covariance of two stars' residuals, averaged over ``pairs`` with weights ``w_p w_q``, mas^2.

    A least-squares fit takes part of the noise with it: the residuals ``r = (I - H) y`` of a fit
    of white noise of variances ``1/w`` covary as ``-a_p^T (A^T W A)^-1 a_q`` between distinct
    stars p and q (the fit's covariance between them, :func:`fit_variance_mas2`'s, negated; A
    the polynomial design of every monomial to ``degree``, the span of the TPV's terms).
    Nearby stars share the fit's error, so the residuals anti-correlate at short separation by
    about the fit's own variance there: ``S / W`` (:class:`CorrelationSignificance`) of residuals
    without any field has this, negated, as its mean. Per axis (2,).
    """
    out = np.zeros(2)
    if len(pairs) == 0:
        return out
    design = _polynomial_design(i, j, shape, degree)
    p, q = pairs[:, 0], pairs[:, 1]
    for axis in range(2):
        w = 1.0 / total_mas2[:, axis]
        cov = np.linalg.pinv(design.T @ (design * w[:, None]), hermitian=True)
        ww = w[p] * w[q]
        out[axis] = float(np.sum(ww * np.einsum("ka,ab,kb->k", design[p], cov, design[q])) / np.sum(ww))
    return out


def short_range_covariance(i: np.ndarray, j: np.ndarray, total_mas2: np.ndarray, corr: Correlation2D,
                           sig: CorrelationSignificance, *, degree: int, shape: tuple[int, int],
                           pairs: np.ndarray | None = None) -> float:
    """The correlated field's mean covariance within the significance's radius, both axes pooled, mas^2.

    The significance's ``S / W`` (:meth:`CorrelationSignificance.pooled_covariance_mas2`) with the
    TPV fit's own anticorrelation over the same pairs added back (:func:`fit_pair_covariance_mas2`,
    pooled with the same weights): unbiased, whatever the white noise and however well the error
    model knows it. Without the fit's part ``S / W`` of residuals with no field averages minus the
    fit's variance between neighbours (-2 to -3 mas^2 at 3 stars/arcmin^2 on the benchmark's
    frames, -10 to -30 at 0.3): a weak field's whole size. Its standard error is the
    significance's (``pooled_covariance_mas2()[1]``).

    Parameters
    ----------
    i, j
        The stars the correlation was measured on (N,), 0-based pixels.
    total_mas2
        Their modelled variance per axis (N, 2), mas^2 (the correlation's weights are its inverse).
    corr, sig
        Their correlation and its significance.
    degree, shape
        The TPV's degree and the image (ny, nx).
    pairs
        :func:`near_pairs` of these stars, when already found.
    """
    if pairs is None:
        pairs = near_pairs(i, j, corr, radius_px=sig.radius_px)
    fit_cov = fit_pair_covariance_mas2(i, j, total_mas2, pairs, degree=degree, shape=shape)
    cov, _ = sig.pooled_covariance_mas2()
    w = _axis_weights(sig)
    return cov + (float(np.sum(w * fit_cov) / np.sum(w)) if np.sum(w) > 0 else 0.0)


def _axis_weights(sig: CorrelationSignificance) -> np.ndarray:
    """The weights :meth:`CorrelationSignificance.pooled_covariance_mas2` pools the two axes with."""
    return np.array([1.0 / se ** 2 if math.isfinite(se) and se > 0 else 0.0 for se in sig.covariance_se_mas2])


def field_variance_bound(i: np.ndarray, j: np.ndarray, total_mas2: np.ndarray, corr: Correlation2D,
                         sig: CorrelationSignificance, *, degree: int, shape: tuple[int, int], outer_scale_px: float,
                         n_sigma: float) -> float:
    """The largest variance per axis a correlated field can have and still show the correlation measured, mas^2.

    A curl-free von Karman field of variance F per axis covaries, on average over the pairs the
    significance counts (weighted as it weights them), as ``F rho``, with ``rho`` its mean
    correlation over those pairs for outer scale ``outer_scale_px``; the shorter the outer scale,
    the smaller ``rho`` and the looser the bound. The field's short-range covariance is measured
    without bias by :func:`short_range_covariance`, so ``F <= (c + n_sigma se) / rho``.

    A white excess of the residuals over the centroid errors (a floor of the reference catalog's
    or the centroids' own, which averages out of a solution) has no correlation: this bound tells
    it from a field where the correlation is measured well (many well-measured stars), and is
    loose where it is not. Infinite when no pairs were counted.

    Parameters
    ----------
    i, j, total_mas2, corr, sig, degree, shape
        As :func:`short_range_covariance`.
    outer_scale_px
        The shortest outer scale the bound allows for, pixels.
    n_sigma
        Standard errors above the measured covariance.
    """
    pairs = near_pairs(i, j, corr, radius_px=sig.radius_px)
    _, se = sig.pooled_covariance_mas2()
    if len(pairs) == 0 or not math.isfinite(se):
        return math.inf
    cov = short_range_covariance(i, j, total_mas2, corr, sig, degree=degree, shape=shape, pairs=pairs)
    p, q = pairs[:, 0], pairs[:, 1]
    unit = CurlFreeKernel(1.0, outer_scale_px, 1.0, 0.0)(i[q] - i[p], j[q] - j[p])
    rho = np.empty(2)
    for axis in range(2):
        ww = 1.0 / (total_mas2[p, axis] * total_mas2[q, axis])
        rho[axis] = float(np.sum(ww * unit[:, axis, axis]) / np.sum(ww))
    w = _axis_weights(sig)
    mean_rho = float(np.sum(w * rho) / np.sum(w)) if np.sum(w) > 0 else 0.0
    if mean_rho <= 0:
        return math.inf
    return max(cov + n_sigma * se, 0.0) / mean_rho


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


