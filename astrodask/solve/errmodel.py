"""The error model (``like_fit``), ``ERROR_THRESHOLD`` clipping and the final chi-square.

Each matched pair has a residual r (image source minus Gaia target, on the tangent
plane, mas) and the covariance C of the source's SEP centroid, mapped from pixels to
the tangent plane through the local Jacobian of the WCS (:func:`sky_covariance`).
Gaia's positional errors are taken as negligible. The error model says how far the
centroid errors are to be trusted: a dimensionless ``scale`` s on the SEP errors and a
systematic ``floor`` f (mas per axis, added in quadrature), so that

    r_k ~ N(0, M_k),   M_k = s^2 C_k + f^2 I.

:func:`like_fit` (``WCSFit.like_fit`` in the Condor pipeline) finds s and f by maximum
likelihood; :func:`error_clip` runs rounds of clipping points whose normalised residual
exceeds ``ERROR_THRESHOLD`` modelled sigmas, each followed by a refit (of the WCS, via a
callable, then of the error model); :func:`chi_square` evaluates the final fit over the
entire matched list.

Conventions: residuals are (N, 2) arrays of (xi, eta) tangent-plane offsets in mas
(xi along +RA, i.e. already multiplied by cos(dec)); covariances are (N, 2, 2) arrays in
mas^2 in the same axes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize, nnls

from astrodask.config import ERROR_THRESHOLD, FitConfig

log = logging.getLogger(__name__)

#: Milliarcseconds per degree.
MAS_PER_DEG = 3.6e6
#: Default rounds of ``ERROR_THRESHOLD`` clipping: the config's (``fit.error_clip_rounds``).
ERROR_CLIP_ROUNDS = FitConfig().error_clip_rounds
#: Fewest points ``like_fit`` accepts (two parameters, two coordinates per point).
MIN_FIT_POINTS = 2
#: Smallest squared scale s^2 the fit may reach (keeps M positive definite).
MIN_SCALE2 = 1e-12
#: Smallest squared floor f^2, relative to the typical centroid variance, when some
#: centroid covariance is singular (otherwise f = 0 is allowed exactly).
MIN_FLOOR2_REL = 1e-12
#: Convergence tolerances of the likelihood maximisation (L-BFGS-B on the mean
#: negative log-likelihood per point): relative change, and projected gradient.
FIT_FTOL = 1e-14
FIT_GTOL = 1e-10
#: Where a parameter starts when the method of moments puts it at zero: s^2 = this,
#: or f^2 = this times the typical centroid variance.
START_FROM_ZERO = 1e-2
#: Iteration limit of the likelihood maximisation.
FIT_MAXITER = 500
#: Relative tolerance on a covariance's eigenvalues below zero before it is refused.
PSD_TOLERANCE = 1e-9


# --------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorModel:
    """The error model: residuals ~ N(0, scale^2 C + floor_mas^2 I).

    Attributes
    ----------
    scale
        Dimensionless multiplier on the SEP centroid errors (> 0).
    floor_mas
        Systematic error floor added in quadrature, per axis, mas (>= 0).
    n_points
        Number of points the model was fitted to (0 when not fitted).
    converged
        Whether the likelihood maximisation converged.
    neg_log_likelihood
        Negative log-likelihood at the optimum, including the 2 pi terms
        (N log 2 pi + 0.5 sum(r^T M^-1 r + log det M), M in mas^2).
    scale_err
        1-sigma uncertainty of ``scale``, from the inverse Hessian (NaN if unknown).
    floor_err_mas
        1-sigma uncertainty of ``floor_mas``, mas: sqrt(f^2 + sigma(f^2)) - f, which
        is the usual sigma(f^2) / 2f when f is well away from 0 and the 1-sigma
        upper range sqrt(sigma(f^2)) at f = 0. 0 when the floor was not fitted
        (held at 0); NaN if unknown.
    """

    scale: float
    floor_mas: float
    n_points: int = 0
    converged: bool = True
    neg_log_likelihood: float = math.nan
    scale_err: float = math.nan
    floor_err_mas: float = math.nan

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"ErrorModel scale = {self.scale!r} must be a positive number")
        if not (math.isfinite(self.floor_mas) and self.floor_mas >= 0):
            raise ValueError(f"ErrorModel floor_mas = {self.floor_mas!r} must be a number >= 0")

    def covariance(self, cov_mas2: np.ndarray) -> np.ndarray:
        """The modelled covariance of each residual, scale^2 C + floor^2 I.

        Parameters
        ----------
        cov_mas2
            Centroid covariances, shape (N, 2, 2), mas^2.

        Returns
        -------
        numpy.ndarray
            Shape (N, 2, 2), mas^2.
        """
        cov = np.asarray(cov_mas2, dtype=np.float64)
        return self.scale**2 * cov + self.floor_mas**2 * np.eye(2)


@dataclass(frozen=True)
class ClipRound:
    """One round of ``ERROR_THRESHOLD`` clipping.

    Attributes
    ----------
    index
        Round number, from 1.
    n_kept, n_clipped
        Points kept and clipped after this round's clipping.
    n_changed
        Points whose status changed in this round (clipped, or readmitted).
    scale, floor_mas
        The error model refitted on the kept points at the end of the round.
    """

    index: int
    n_kept: int
    n_clipped: int
    n_changed: int
    scale: float
    floor_mas: float


@dataclass(frozen=True, eq=False)
class ErrorClipResult:
    """The outcome of :func:`error_clip`.

    Attributes
    ----------
    model
        The error model fitted on the kept points with the final residuals.
    keep
        Boolean mask of the points kept, shape (N,).
    residuals_mas
        The final residuals of all points, shape (N, 2), mas (from the last refit,
        or the input residuals when there is no refit).
    n_rounds
        Clipping rounds that changed the mask (each followed by refits).
    converged
        True when the mask is a fixed point: the model fitted on the kept points
        keeps exactly these points (or all but ``change_tolerance`` of them, see
        :func:`error_clip`).
    threshold
        Clipping threshold used, modelled sigmas.
    rounds
        Per-round counts and models.
    """

    model: ErrorModel
    keep: np.ndarray
    residuals_mas: np.ndarray
    n_rounds: int
    converged: bool
    threshold: float
    rounds: tuple[ClipRound, ...]

    @property
    def n_kept(self) -> int:
        """Number of points kept."""
        return int(np.count_nonzero(self.keep))


@dataclass(frozen=True)
class FitQuality:
    """The chi-square of a fit with its error model: over the entire matched list, and over the kept pairs.

    The first (``chi2``, ``dof``, ``chi2_dof``) is the honest figure of the algorithm's step 6:
    the points clipped at ``ERROR_THRESHOLD`` count too, so a few of them lift it above 1.
    The second (``chi2_kept``, ``dof_kept``, ``chi2_dof_kept``) is over the pairs of the final
    fit only: near 1 when the error model describes them.

    Attributes
    ----------
    chi2
        Sum over all N points of r^T M^-1 r with M = scale^2 C + floor^2 I.
    dof
        Degrees of freedom: 2 N (two coordinates per point) minus the WCS
        parameters fitted minus the 2 error-model parameters (scale, floor).
    chi2_dof
        chi2 / dof (NaN when dof <= 0).
    n_points
        Number of points N.
    n_params
        WCS parameters counted against the degrees of freedom.
    rms_mas
        Root mean square residual per axis (xi, eta), about zero, mas.
    chi2_kept, dof_kept, chi2_dof_kept, n_kept
        The same over the kept points only (all N when no keep mask was given).
    """

    chi2: float
    dof: int
    chi2_dof: float
    n_points: int
    n_params: int
    rms_mas: tuple[float, float]
    chi2_kept: float = math.nan
    dof_kept: int = 0
    chi2_dof_kept: float = math.nan
    n_kept: int = 0


# --------------------------------------------------------------------------
# Covariances
# --------------------------------------------------------------------------


def sky_covariance(
    var_i: np.ndarray, var_j: np.ndarray, var_ij: np.ndarray, jacobian: np.ndarray
) -> np.ndarray:
    """Map SEP centroid covariances from pixels to the tangent plane: C_sky = J C_pix J^T.

    Parameters
    ----------
    var_i, var_j, var_ij
        Centroid variances along i and j and their covariance, shape (N,), px^2.
    jacobian
        Local Jacobian of the WCS, d(xi, eta)/d(i, j), degrees per pixel: shape
        (N, 2, 2), or (2, 2) for one Jacobian for all points. ``jacobian[k, 0, 1]``
        is d xi / d j at point k.

    Returns
    -------
    numpy.ndarray
        Covariances on the tangent plane, shape (N, 2, 2), mas^2.
    """
    var_i = np.asarray(var_i, dtype=np.float64).reshape(-1)
    var_j = np.asarray(var_j, dtype=np.float64).reshape(-1)
    var_ij = np.asarray(var_ij, dtype=np.float64).reshape(-1)
    if not var_i.size == var_j.size == var_ij.size:
        raise ValueError(
            f"var_i, var_j and var_ij have {var_i.size}, {var_j.size} and {var_ij.size} values; they must match"
        )
    jac = np.asarray(jacobian, dtype=np.float64)
    if jac.shape == (2, 2):
        jac = np.broadcast_to(jac, (var_i.size, 2, 2))
    if jac.shape != (var_i.size, 2, 2):
        raise ValueError(f"jacobian must have shape (N, 2, 2) or (2, 2) with N = {var_i.size}, got {jac.shape}")
    j00, j01, j10, j11 = (jac[:, a, b] * MAS_PER_DEG for a, b in ((0, 0), (0, 1), (1, 0), (1, 1)))
    # J C: row r of J times C (C symmetric), then (J C) J^T, per component
    r00, r01 = j00 * var_i + j01 * var_ij, j00 * var_ij + j01 * var_j
    r10, r11 = j10 * var_i + j11 * var_ij, j10 * var_ij + j11 * var_j
    cov_sky = np.empty((var_i.size, 2, 2))
    cov_sky[:, 0, 0] = r00 * j00 + r01 * j01
    cov_sky[:, 1, 1] = r10 * j10 + r11 * j11
    cov_sky[:, 0, 1] = cov_sky[:, 1, 0] = 0.5 * ((r00 * j10 + r01 * j11) + (r10 * j00 + r11 * j01))  # exactly symmetric
    return cov_sky


def _check_inputs(residuals_mas: np.ndarray, cov_mas2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    res = np.asarray(residuals_mas, dtype=np.float64)
    cov = np.asarray(cov_mas2, dtype=np.float64)
    if res.ndim != 2 or res.shape[1] != 2:
        raise ValueError(f"residuals_mas must have shape (N, 2), got {res.shape}")
    if cov.shape != (len(res), 2, 2):
        raise ValueError(f"cov_mas2 must have shape (N, 2, 2) with N = {len(res)}, got {cov.shape}")
    bad = ~(np.isfinite(res).all(axis=1) & np.isfinite(cov).all(axis=(1, 2)))
    if bad.any():
        raise ValueError(f"{int(bad.sum())} of {len(res)} points have non-finite residuals or covariances; "
                         "drop them before fitting the error model")
    return res, cov


class _Parts:
    """Per-point components of residuals and covariances, for vectorised 2 x 2 algebra."""

    def __init__(self, res: np.ndarray, cov: np.ndarray) -> None:
        self.r1, self.r2 = res[:, 0], res[:, 1]
        self.c11, self.c22 = cov[:, 0, 0], cov[:, 1, 1]
        self.c12 = 0.5 * (cov[:, 0, 1] + cov[:, 1, 0])
        self.n = len(res)

    def model(self, a: float, b: float) -> tuple[np.ndarray, ...]:
        """M = a C + b I: its components, determinant and u = M^-1 r."""
        m11, m12, m22 = a * self.c11 + b, a * self.c12, a * self.c22 + b
        det = m11 * m22 - m12 * m12
        u1 = (m22 * self.r1 - m12 * self.r2) / det
        u2 = (m11 * self.r2 - m12 * self.r1) / det
        return m11, m12, m22, det, u1, u2

    def chi2_terms(self, a: float, b: float) -> np.ndarray:
        """r^T M^-1 r per point."""
        *_, u1, u2 = self.model(a, b)
        return u1 * self.r1 + u2 * self.r2

    def nll(self, a: float, b: float) -> tuple[float, np.ndarray]:
        """Negative log-likelihood and its gradient with respect to (a, b)."""
        m11, m12, m22, det, u1, u2 = self.model(a, b)
        if np.any(det <= 0):
            return math.inf, np.zeros(2)
        q = u1 * self.r1 + u2 * self.r2
        value = 0.5 * float(np.sum(q + np.log(det))) + self.n * math.log(2.0 * math.pi)
        # d/dtheta = 0.5 sum [tr(M^-1 A) - u^T A u] with A = C (for a) and A = I (for b)
        tr_c = (m22 * self.c11 - 2.0 * m12 * self.c12 + m11 * self.c22) / det
        tr_i = (m11 + m22) / det
        quad_c = self.c11 * u1 * u1 + 2.0 * self.c12 * u1 * u2 + self.c22 * u2 * u2
        quad_i = u1 * u1 + u2 * u2
        grad = 0.5 * np.array([np.sum(tr_c - quad_c), np.sum(tr_i - quad_i)])
        return value, grad

    def hessian(self, a: float, b: float) -> tuple[np.ndarray, np.ndarray]:
        """Observed Hessian and Fisher information of the NLL in (a, b).

        ``d2/dti dtj = 0.5 sum [2 u^T A_i M^-1 A_j u - tr(M^-1 A_i M^-1 A_j)]`` with A = C (for a)
        and A = I (for b), the 2 x 2 algebra written out per component (as :meth:`model`).
        """
        m11, m12, m22, det, u1, u2 = self.model(a, b)
        i11, i12, i22 = m22 / det, -m12 / det, m11 / det  # M^-1
        c11, c12, c22 = self.c11, self.c12, self.c22
        # P_c = M^-1 C (not symmetric) and P_i = M^-1
        p11, p12 = i11 * c11 + i12 * c12, i11 * c12 + i12 * c22
        p21, p22 = i12 * c11 + i22 * c12, i12 * c12 + i22 * c22
        traces = {  # tr(P_i P_j)
            (0, 0): p11 * p11 + 2.0 * p12 * p21 + p22 * p22,
            (0, 1): p11 * i11 + p12 * i12 + p21 * i12 + p22 * i22,
            (1, 1): i11 * i11 + 2.0 * i12 * i12 + i22 * i22,
        }
        cu1, cu2 = c11 * u1 + c12 * u2, c12 * u1 + c22 * u2  # C u
        quads = {  # u^T A_i M^-1 A_j u: (A_i u)^T M^-1 (A_j u)
            (0, 0): cu1 * (i11 * cu1 + i12 * cu2) + cu2 * (i12 * cu1 + i22 * cu2),
            (0, 1): cu1 * (i11 * u1 + i12 * u2) + cu2 * (i12 * u1 + i22 * u2),
            (1, 1): u1 * (i11 * u1 + i12 * u2) + u2 * (i12 * u1 + i22 * u2),
        }
        observed = np.empty((2, 2))
        fisher = np.empty((2, 2))
        for (i, j), trace in traces.items():
            observed[i, j] = observed[j, i] = 0.5 * float(np.sum(2.0 * quads[i, j] - trace))
            fisher[i, j] = fisher[j, i] = 0.5 * float(np.sum(trace))
        return observed, fisher


def _check_psd(cov: np.ndarray) -> np.ndarray:
    """Refuse covariances that are not positive semi-definite; return det(C)."""
    c11, c22 = cov[:, 0, 0], cov[:, 1, 1]
    c12 = 0.5 * (cov[:, 0, 1] + cov[:, 1, 0])
    det = c11 * c22 - c12 * c12
    scale = np.maximum(np.abs(c11) + np.abs(c22), np.finfo(float).tiny)
    bad = (c11 < -PSD_TOLERANCE * scale) | (c22 < -PSD_TOLERANCE * scale) | (det < -PSD_TOLERANCE * scale**2)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{int(bad.sum())} centroid covariances are not positive semi-definite "
            f"(first: point {k}, C = {cov[k].tolist()} mas^2); check var_i, var_j, var_ij"
        )
    return det


# --------------------------------------------------------------------------
# like_fit
# --------------------------------------------------------------------------


def _start(parts: _Parts, b_ref: float, fit_floor: bool) -> tuple[float, float]:
    """Method-of-moments start: r r^T ~ a C + b I, by weighted non-negative least squares."""
    weight = 1.0 / (0.5 * (parts.c11 + parts.c22) + b_ref)
    ones, zeros = np.ones(parts.n), np.zeros(parts.n)
    columns = [np.concatenate([parts.c11, parts.c22, parts.c12])]
    if fit_floor:
        columns.append(np.concatenate([ones, ones, zeros]))
    design = np.stack(columns, axis=1) * np.tile(weight, 3)[:, None]
    target = np.concatenate([parts.r1**2, parts.r2**2, parts.r1 * parts.r2]) * np.tile(weight, 3)
    coef, _ = nnls(design, target)
    a0 = float(coef[0])
    b0 = float(coef[1]) if fit_floor else 0.0
    # a parameter the moments put at zero starts slightly inside its bound
    if a0 <= 0.0:
        a0 = START_FROM_ZERO
    if fit_floor and b0 <= 0.0:
        b0 = START_FROM_ZERO * b_ref
    return a0, b0


def like_fit(
    residuals_mas: np.ndarray,
    cov_mas2: np.ndarray,
    *,
    fit_floor: bool = True,
    initial: ErrorModel | tuple[float, float] | None = None,
) -> ErrorModel:
    """Fit the error model by maximum likelihood (the Condor ``WCSFit.like_fit``).

    Minimises the negative log-likelihood of r_k ~ N(0, M_k), M_k = s^2 C_k + f^2 I,

        NLL(s, f) = sum_k [0.5 r_k^T M_k^-1 r_k + 0.5 log det M_k + log 2 pi],

    over s > 0 and f >= 0. The parameters are (s^2, f^2) with bounds (L-BFGS-B,
    analytic gradient): the likelihood is smooth there, and f = 0 is reached exactly
    when the data want no floor. The start comes from the method of moments
    (r r^T ~ s^2 C + f^2 I by non-negative least squares) unless ``initial`` is given.
    Uncertainties come from the inverse of the observed Hessian (the Fisher
    information if that is not positive definite).

    Parameters
    ----------
    residuals_mas
        Residuals (image minus Gaia) on the tangent plane, shape (N, 2), mas.
    cov_mas2
        Centroid covariances on the tangent plane, shape (N, 2, 2), mas^2
        (from :func:`sky_covariance`); positive semi-definite.
    fit_floor
        Fit the floor f; when False, f = 0 and only s is fitted (in closed form:
        s^2 = sum r^T C^-1 r / 2N).
    initial
        Starting point, an :class:`ErrorModel` or (scale, floor_mas); None: the
        method-of-moments start.

    Returns
    -------
    ErrorModel
        The fitted scale and floor with their uncertainties.

    Raises
    ------
    ValueError
        With fewer than ``MIN_FIT_POINTS`` points, non-finite values, covariances
        that are not positive semi-definite, or (``fit_floor=False``) singular ones.
    """
    res, cov = _check_inputs(residuals_mas, cov_mas2)
    if len(res) < MIN_FIT_POINTS:
        raise ValueError(f"like_fit needs at least {MIN_FIT_POINTS} points, got {len(res)}")
    det_c = _check_psd(cov)
    parts = _Parts(res, cov)
    n = parts.n

    if not fit_floor:
        if np.any(det_c <= 0):
            raise ValueError(
                f"{int(np.sum(det_c <= 0))} centroid covariances are singular: the model needs a floor "
                "(fit_floor=True)"
            )
        q0 = parts.chi2_terms(1.0, 0.0)
        a = max(float(np.sum(q0)) / (2.0 * n), MIN_SCALE2)
        value, _ = parts.nll(a, 0.0)
        scale = math.sqrt(a)
        # Fisher information N / a^2: sigma(a) = a / sqrt(N), sigma(s) = sigma(a) / 2s = s / 2 sqrt(N)
        model = ErrorModel(scale=scale, floor_mas=0.0, n_points=n, converged=True, neg_log_likelihood=value,
                           scale_err=scale / (2.0 * math.sqrt(n)), floor_err_mas=0.0)
        log.debug("like_fit: scale %.4g +- %.2g (no floor) from %d points", scale, model.scale_err, n)
        return model

    # variables: x = (s^2, f^2 / b_ref), b_ref the typical centroid variance (so both are O(1))
    b_ref = float(np.median(0.5 * (parts.c11 + parts.c22)))
    if not b_ref > 0:
        b_ref = max(float(np.mean(res**2)), 1.0)
    b_min = MIN_FLOOR2_REL if np.any(det_c <= 0) else 0.0
    if initial is None:
        a0, b0 = _start(parts, b_ref, fit_floor=True)
    else:
        s_init, f_init = (initial.scale, initial.floor_mas) if isinstance(initial, ErrorModel) else initial
        a0, b0 = float(s_init) ** 2, float(f_init) ** 2
    x0 = np.array([max(a0, MIN_SCALE2), max(b0 / b_ref, b_min)])

    def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
        value, grad = parts.nll(float(x[0]), float(x[1]) * b_ref)
        return value / n, grad * np.array([1.0, b_ref]) / n

    found = minimize(objective, x0, jac=True, method="L-BFGS-B",
                     bounds=[(MIN_SCALE2, None), (b_min, None)],
                     options={"ftol": FIT_FTOL, "gtol": FIT_GTOL, "maxiter": FIT_MAXITER})
    a, b = float(found.x[0]), float(found.x[1]) * b_ref
    value, _ = parts.nll(a, b)
    scale, floor = math.sqrt(a), math.sqrt(b)
    scale_err, floor_err = _uncertainties(parts, a, b)
    if not found.success:
        log.warning("like_fit did not converge after %d iterations: %s", found.nit, found.message)
    model = ErrorModel(scale=scale, floor_mas=floor, n_points=n, converged=bool(found.success),
                       neg_log_likelihood=value, scale_err=scale_err, floor_err_mas=floor_err)
    log.debug("like_fit: scale %.4g +- %.2g, floor %.4g +- %.2g mas from %d points (%d iterations)",
              scale, scale_err, floor, floor_err, n, found.nit)
    return model


def _uncertainties(parts: _Parts, a: float, b: float) -> tuple[float, float]:
    """1-sigma uncertainties of (s, f) from the inverse Hessian in (s^2, f^2)."""
    observed, fisher = parts.hessian(a, b)
    for matrix in (observed, fisher):
        if np.all(np.isfinite(matrix)) and np.all(np.linalg.eigvalsh(matrix) > 0):
            covariance = np.linalg.inv(matrix)
            break
    else:
        return math.nan, math.nan
    sigma_a, sigma_b = math.sqrt(covariance[0, 0]), math.sqrt(covariance[1, 1])
    floor = math.sqrt(b)
    return sigma_a / (2.0 * math.sqrt(a)), math.sqrt(b + sigma_b) - floor


# --------------------------------------------------------------------------
# Normalised residuals, clipping, chi-square
# --------------------------------------------------------------------------


def normalized_residuals(residuals_mas: np.ndarray, cov_mas2: np.ndarray, model: ErrorModel) -> np.ndarray:
    """Residuals in units of the modelled error: the Mahalanobis distances sqrt(r^T M^-1 r).

    Parameters
    ----------
    residuals_mas
        Residuals, shape (N, 2), mas.
    cov_mas2
        Centroid covariances, shape (N, 2, 2), mas^2.
    model
        The error model giving M = scale^2 C + floor^2 I.

    Returns
    -------
    numpy.ndarray
        Shape (N,), dimensionless (modelled sigmas); for a correct model their
        squares follow a chi-square distribution with 2 degrees of freedom.
    """
    res, cov = _check_inputs(residuals_mas, cov_mas2)
    q = _Parts(res, cov).chi2_terms(model.scale**2, model.floor_mas**2)
    return np.sqrt(np.maximum(q, 0.0))


def error_clip(
    residuals_mas: np.ndarray,
    cov_mas2: np.ndarray,
    *,
    threshold: float = ERROR_THRESHOLD,
    rounds: int = ERROR_CLIP_ROUNDS,
    refit: Callable[[np.ndarray, ErrorModel], np.ndarray] | None = None,
    keep: np.ndarray | None = None,
    fit_floor: bool = True,
    change_tolerance: float = 0.0,
) -> ErrorClipResult:
    """Rounds of ``ERROR_THRESHOLD`` clipping, each followed by refits.

    The error model is fitted (:func:`like_fit`) on the kept points; then every
    point, kept or not, is kept when its normalised residual is at most
    ``threshold``, so that a point clipped early by a poor fit can come back.
    When the mask changes, ``refit`` (if given) refits the WCS on the kept points and
    returns new residuals for all points, the error model is refitted, and the next
    round begins. It stops when the mask no longer changes (a fixed point:
    ``converged``), or would change for at most ``change_tolerance`` of the points
    (also ``converged``: the mask is then the one the model was fitted on), or after
    ``rounds`` rounds.

    Parameters
    ----------
    residuals_mas
        Residuals of all matched points, shape (N, 2), mas.
    cov_mas2
        Centroid covariances, shape (N, 2, 2), mas^2.
    threshold
        Clipping threshold, modelled sigmas (``fit.ERROR_THRESHOLD``).
    rounds
        Largest number of clipping rounds (``fit.error_clip_rounds``); 0 fits the
        model once on the initial ``keep`` and clips nothing.
    refit
        Optional callable ``refit(keep, model) -> residuals_mas``: given the boolean
        mask of kept points and the current error model (for the weights), refit
        (e.g. the TPV solution on those points) and return
        the residuals of ALL points, shape (N, 2), mas.
    keep
        Initial mask of the points to fit first (e.g. after RMS clipping); None: all.
    fit_floor
        Passed to :func:`like_fit`.
    change_tolerance
        Fraction of the points allowed to change side at convergence (``fit.error_clip_tolerance``;
        0: an exact fixed point). A round costs a refit and a fit over every point, and the
        rounds grow with the list; the last rounds of a large list move a handful of points
        near the threshold, which move the model by less than its uncertainty and the
        solution by far less than its own.

    Returns
    -------
    ErrorClipResult
        Final model, mask, residuals, number of rounds and per-round counts.
    """
    res, cov = _check_inputs(residuals_mas, cov_mas2)
    threshold = float(threshold)
    if not (math.isfinite(threshold) and threshold > 0):
        raise ValueError(f"threshold = {threshold!r} must be a positive number of sigmas")
    if int(rounds) < 0:
        raise ValueError(f"rounds = {rounds!r} must be >= 0")
    if not 0.0 <= change_tolerance < 1.0:
        raise ValueError(f"change_tolerance = {change_tolerance!r} must be in [0, 1)")
    n = len(res)
    mask = np.ones(n, dtype=bool) if keep is None else np.asarray(keep, dtype=bool).copy()
    if mask.shape != (n,):
        raise ValueError(f"keep must be a boolean mask of shape ({n},), got {mask.shape}")

    model = like_fit(res[mask], cov[mask], fit_floor=fit_floor)
    history: list[ClipRound] = []
    converged = False
    for index in range(1, int(rounds) + 1):
        new_mask = normalized_residuals(res, cov, model) <= threshold
        changed = int(np.count_nonzero(new_mask != mask))
        if changed <= change_tolerance * n:
            converged = True
            if changed:
                log.debug("error clip: %d of %d points would change side, within the tolerance %.3g: stopped",
                          changed, n, change_tolerance)
            break
        mask = new_mask
        if refit is not None:
            res = _refitted(refit, mask, model, n)
        model = like_fit(res[mask], cov[mask], fit_floor=fit_floor, initial=model)
        kept = int(np.count_nonzero(mask))
        history.append(ClipRound(index=index, n_kept=kept, n_clipped=n - kept, n_changed=changed,
                                 scale=model.scale, floor_mas=model.floor_mas))
        log.debug("error clip round %d: kept %d of %d (%d changed); scale %.4g, floor %.4g mas",
                  index, kept, n, changed, model.scale, model.floor_mas)
    else:
        converged = int(np.count_nonzero((normalized_residuals(res, cov, model) <= threshold) != mask)) \
            <= change_tolerance * n
    log.info("error clip: kept %d of %d points at %.3g sigma after %d rounds (%s); scale %.4g, floor %.4g mas",
             int(np.count_nonzero(mask)), n, threshold, len(history),
             "converged" if converged else "not converged", model.scale, model.floor_mas)
    return ErrorClipResult(model=model, keep=mask, residuals_mas=res, n_rounds=len(history),
                           converged=converged, threshold=threshold, rounds=tuple(history))


def _refitted(refit: Callable[[np.ndarray, ErrorModel], np.ndarray], mask: np.ndarray, model: ErrorModel,
              n: int) -> np.ndarray:
    new = np.asarray(refit(mask.copy(), model), dtype=np.float64)
    if new.shape != (n, 2):
        raise ValueError(f"refit must return residuals of all {n} points, shape ({n}, 2); got {new.shape}")
    if not np.all(np.isfinite(new)):
        raise ValueError(f"refit returned {int(np.sum(~np.isfinite(new).all(axis=1)))} non-finite residuals")
    return new


def chi_square(
    residuals_mas: np.ndarray, cov_mas2: np.ndarray, model: ErrorModel, *, n_params: int,
    keep: np.ndarray | None = None,
) -> FitQuality:
    """The chi-square of the residuals under the error model, over every point given and over the kept ones.

    The solver passes the entire matched list, clipped points included, so that the
    first figure is honest, and the final fit's keep mask for the second.

    Parameters
    ----------
    residuals_mas
        Residuals, shape (N, 2), mas.
    cov_mas2
        Centroid covariances, shape (N, 2, 2), mas^2.
    model
        The final error model.
    n_params
        Number of WCS parameters fitted (e.g. CRVAL, CD and the TPV terms).
    keep
        Boolean mask (N,) of the points kept by the final fit; None: all.

    Returns
    -------
    FitQuality
        chi2 = sum r^T M^-1 r, dof = 2 N - n_params - 2 (the two error-model
        parameters are fitted to the same residuals), chi2 / dof, and the RMS
        residual per axis; the ``*_kept`` figures the same over the kept points.
    """
    res, cov = _check_inputs(residuals_mas, cov_mas2)
    n_params = int(n_params)
    if n_params < 0:
        raise ValueError(f"n_params = {n_params} must be >= 0")
    n = len(res)
    kept = np.ones(n, dtype=bool) if keep is None else np.asarray(keep, dtype=bool)
    if kept.shape != (n,):
        raise ValueError(f"keep has shape {kept.shape}, expected ({n},): one flag per residual")
    terms = _Parts(res, cov).chi2_terms(model.scale**2, model.floor_mas**2)
    chi2, chi2_kept = float(np.sum(terms)), float(np.sum(terms[kept]))
    n_kept = int(np.count_nonzero(kept))
    dof, dof_kept = 2 * n - n_params - 2, 2 * n_kept - n_params - 2
    rms = np.sqrt(np.mean(res**2, axis=0)) if n else np.full(2, math.nan)
    return FitQuality(chi2=chi2, dof=dof, chi2_dof=chi2 / dof if dof > 0 else math.nan, n_points=n,
                      n_params=n_params, rms_mas=(float(rms[0]), float(rms[1])), chi2_kept=chi2_kept,
                      dof_kept=dof_kept, chi2_dof_kept=chi2_kept / dof_kept if dof_kept > 0 else math.nan,
                      n_kept=n_kept)
