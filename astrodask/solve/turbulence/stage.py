"""The turbulence stage itself: correlation, kernel, significance, GP and cross-validation, in order.

:func:`correct_turbulence` runs the steps of :mod:`astrodask.solve.turbulence` on the kept
matches and hands on a :class:`TurbulenceResult`: the correction when cross-validation shows it
helps, the reason either way, and the predicted error.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from scipy.linalg import LinAlgError

from astrodask.config import TurbulenceConfig
from astrodask.solve.turbulence.field import Jacobian, TurbulenceField, correction_field, grid_nodes, pixel_frame
from astrodask.solve.turbulence.gp import CrossValidation, cross_validation, cv_sample, gp_blocks, local_gp
from astrodask.solve.turbulence.kernel import (ARCSEC_PER_ARCMIN, Correlation2D, CorrelationSignificance,
                                               CurlFreeKernel, correlation_sample, correlation_significance, fit_kernel,
                                               measure_correlation)
from astrodask.solve.turbulence.predicted import (PredictedError, ResidualVariance, field_variance_bound,
                                                  fit_variance_mas2, leverage, predicted_error, residual_variance)

log = logging.getLogger(__name__)


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
    significance
        The correlation's significance at short separation (the GP runs only above
        ``turbulence.corr_min_sigma``), or None when no correlation was measured.
    noise
        The residuals' variance star by star (white noise and the field the TPV leaves),
        :func:`~astrodask.solve.turbulence.predicted.residual_variance`: the predicted error's
        field part when no GP corrects it, and its fit part's true variances; None with fewer
        stars than the TPV has terms, or where its field F is not above
        ``turbulence.noise_field_min_sigma`` standard errors (the error model's floor then
        stands for the field, and its variances for the stars').
    field_bound_mas2
        The largest variance per axis of a field that shows the correlation measured
        (:func:`~astrodask.solve.turbulence.predicted.field_variance_bound`), mas^2: the
        predicted error's field part is ``noise``'s F, or this when smaller; infinite when
        ``noise`` is None.
    centroid_mas2
        The stars' centroid variances per axis as the error model has them (N, 2), mas^2 (the
        stage's ``noise_mas2``), for the diagnostics' residual-variance panel.
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
    significance: CorrelationSignificance | None = None
    noise: ResidualVariance | None = None
    field_bound_mas2: float = math.inf
    centroid_mas2: np.ndarray | None = None

    @property
    def correction(self) -> str:
        """``"tpv+gp"`` when the correction is applied, else ``"tpv"``."""
        return "tpv+gp" if self.applied else "tpv"


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
        included: the fit's weights; for the GP, the white noise is what the kernel's variance
        leaves of it, but never less than ``noise_mas2``).
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
    # the error model's view until the correlation is measured: its floor stands for the field, its variances for
    # the stars' (the fit's own variance from its weights)
    noise_model: ResidualVariance | None = None
    bound = math.inf
    excess = np.median(np.maximum(total_mas2 - noise_mas2, 0.0), axis=0) if n else np.zeros(2)
    fit_var = fit_variance_mas2(ij[:, 0], ij[:, 1], total_mas2, degree=degree, shape=shape, gi=gi, gj=gj)
    # the correlation, the kernel and the GP see the residuals in the pixel frame (pixel_frame): back on the sky,
    # vectors by `frame`, per-axis variances by its squares (its cross terms left out: a rotation's are small)
    frame = pixel_frame(jacobian_mas_per_px, shape)
    to_pixels = np.linalg.inv(frame)
    res_px = residual_mas @ to_pixels.T
    noise_px, total_px = noise_mas2 @ (to_pixels ** 2).T, total_mas2 @ (to_pixels ** 2).T

    def sky_variance(var_px: np.ndarray) -> np.ndarray:
        return var_px @ (frame ** 2).T

    def field_variance(kernel: CurlFreeKernel) -> np.ndarray:
        """The field's variance per axis for the predicted error: the kernel's, or the floor's when larger.

        Where stars are few or noisy the correlation is measured from a few separations and the
        kernel's zero-lag variance falls short, or finds none; the floor, measured on every star,
        does not (an upper bound: it holds any white systematics too).
        """
        return np.maximum(sky_variance(kernel.axis_variance_mas2()), excess)

    def untouched(reason: str, kernel: CurlFreeKernel | None = None, corr: Correlation2D | None = None,
                  cv: CrossValidation | None = None, *,
                  sig: CorrelationSignificance | None = None) -> TurbulenceResult:
        # not corrected: the correlated field stays whole (the kernel's variance everywhere); with no
        # kernel, the error model's floor (the median excess over the centroid errors) stands for it
        var = excess if kernel is None else field_variance(kernel)  # the floor at least
        pred = predicted_error(fit_var_mas2=fit_var, field_var_mas2=np.broadcast_to(var, (*gi.shape, 2)), gi=gi,
                               gj=gj, shape=shape, epoch_yr=epoch_yr, config=config)
        log.info("turbulence: %s", reason)
        return TurbulenceResult(False, reason, n, kernel, corr, cv, None, pred, pred, ij[:, 0], ij[:, 1],
                                residual_mas, residual_mas, total_mas2, sig, noise_model, bound, noise_mas2)

    if not config.enabled:
        return untouched("not applied: turbulence.enabled = false (TPV only; the error model's floor stands for "
                         "the correlated field in the predicted error)")
    if n < config.min_stars:
        return untouched(f"not applied: {n} kept matches, fewer than turbulence.min_stars = {config.min_stars}")
    max_sep = config.corr_max_sep_arcmin * px_per_arcmin
    weight, weight_px = 1.0 / total_mas2, 1.0 / total_px
    best = correlation_sample(weight_px, config.corr_max_stars)
    corr = measure_correlation(ij[best, 0], ij[best, 1], res_px[best], weight_px[best], max_sep_px=max_sep,
                               bins=config.corr_bins)
    kernel = fit_kernel(corr, min_length_px=config.min_length_arcmin * px_per_arcmin,
                        max_length_px=config.max_length_arcmin * px_per_arcmin, min_axis_ratio=config.min_axis_ratio,
                        min_pairs=config.corr_min_pairs, start_length_px=max_sep)
    radius_px = config.corr_signal_arcmin * px_per_arcmin
    signif = correlation_significance(corr, radius_px=radius_px)
    # the residuals' own variance, star by star: white noise that may grow faster than the error model's centroid
    # variances, less each star's leverage on the TPV, and F: the field the TPV leaves, and any white excess, which
    # the correlation bounds (a white excess does not correlate)
    model = residual_variance(residual_mas, noise_mas2, leverage(ij[:, 0], ij[:, 1], total_mas2, degree=degree,
                                                                 shape=shape),
                              exponent_limit=config.noise_exponent_limit)
    enough = n > 3 + (degree + 1) * (degree + 2) // 2  # more stars than the fit has terms
    if enough and model.field_mas2 > config.noise_field_min_sigma * model.field_se_mas2:  # F told from white noise
        noise_model = model
        bound = field_variance_bound(ij[best, 0], ij[best, 1], total_px[best], corr, signif, degree=degree,
                                     shape=shape, outer_scale_px=config.field_bound_outer_scale_arcmin * px_per_arcmin,
                                     n_sigma=config.field_bound_sigma)
        excess = np.full(2, min(model.field_mas2, bound))
        fit_var = fit_variance_mas2(ij[:, 0], ij[:, 1], total_mas2, degree=degree, shape=shape, gi=gi, gj=gj,
                                    variance_mas2=model.variance_mas2(noise_mas2))
    if kernel.variance_mas2 <= 0:
        return untouched("not applied: the residuals show no positive correlation", kernel, corr, sig=signif)
    measured = (f"correlation within {config.corr_signal_arcmin:g}' {signif.sigma:.1f} sigma "
                f"({signif.pairs} pairs of {len(best)} stars)")
    if not signif.sigma > config.corr_min_sigma:
        return untouched(f"not applied: {measured}, not above turbulence.corr_min_sigma = {config.corr_min_sigma:g} "
                         "(no GP solved)", kernel, corr, sig=signif)
    white = np.maximum(noise_px, total_px - kernel.axis_variance_mas2()[None, :])
    folds = rng.permutation(n) % config.cv_folds
    nodes = np.column_stack([gi.ravel(), gj.ravel()])
    blocks = gp_blocks(ij, nodes, block_px=block_px, halo_px=halo_px, max_stars=config.max_block_stars,
                       weight=np.sum(weight_px, axis=1))
    sample, with_stars = cv_sample(blocks, config.cv_max_stars, rng)
    try:  # the cross-validation on the sampled blocks first: a declined correction costs no more
        gp = local_gp(ij, res_px, white, kernel, folds, nodes, block_px=block_px, halo_px=halo_px,
                      max_stars=config.max_block_stars, blocks=[blocks[k] for k in sample])
    except LinAlgError as err:  # a degenerate block (coincident stars, no noise): the TPV stands alone
        return untouched(f"not applied: the GP could not be solved ({err})", kernel, corr, sig=signif)
    cv = cross_validation(residual_mas, gp.held_out_mas @ frame.T, weight, config.cv_folds, n_blocks=len(sample),
                          total_blocks=with_stars)
    drawn = f" in {cv.n_blocks} of {cv.total_blocks} blocks drawn at random" if cv.n_blocks < cv.total_blocks else ""
    verdict = (f"{measured}; cross-validation ({cv.n_folds} folds, {cv.n_stars} stars{drawn}): held-back weighted "
               f"rms ({cv.rms_before_mas[0]:.2f}, {cv.rms_before_mas[1]:.2f}) -> "
               f"({cv.rms_after_mas[0]:.2f}, {cv.rms_after_mas[1]:.2f}) mas, gain {cv.gain_sigma:.1f} sigma")
    if not cv.gain_sigma > config.cv_min_sigma:
        return untouched(f"not applied: {verdict}, not above turbulence.cv_min_sigma = {config.cv_min_sigma:g}",
                         kernel, corr, cv, sig=signif)
    chosen = set(sample)
    rest = [b for k, b in enumerate(blocks) if k not in chosen]
    if rest:  # the posterior over the other blocks (no held-back stars there: the Cholesky factor alone)
        try:
            gp = local_gp(ij, res_px, white, kernel, folds, nodes, block_px=block_px, halo_px=halo_px,
                          max_stars=config.max_block_stars, blocks=rest, cross_validate=False, into=gp)
        except LinAlgError as err:
            return untouched(f"not applied: the GP could not be solved ({err})", kernel, corr, cv, sig=signif)
    field = correction_field(gp.mean_mas @ frame.T, sky_variance(gp.var_mas2), gi, gj, step_px, jacobian_mas_per_px)
    # in the data-poor limit the posterior variance is the prior's: scaled as field_variance scales the prior
    rescale = field_variance(kernel) / np.maximum(sky_variance(kernel.axis_variance_mas2()), 1e-300)
    pred = predicted_error(fit_var_mas2=fit_var, field_var_mas2=field.sd_mas ** 2 * rescale, gi=gi, gj=gj, shape=shape,
                           epoch_yr=epoch_yr, config=config)
    tpv_only = predicted_error(fit_var_mas2=fit_var,
                               field_var_mas2=np.broadcast_to(field_variance(kernel), (*gi.shape, 2)), gi=gi,
                               gj=gj, shape=shape, epoch_yr=epoch_yr, config=config)
    log.info("turbulence: applied: %s", verdict)
    return TurbulenceResult(True, f"applied: {verdict}", n, kernel, corr, cv, field, pred, tpv_only, ij[:, 0],
                            ij[:, 1], residual_mas, residual_mas - gp.at_stars_mas @ frame.T, total_mas2, signif,
                            noise_model, bound, noise_mas2)


