"""The error model: like_fit against simulations with known truth, clipping, chi-square."""

from __future__ import annotations

import numpy as np
import pytest

from astrodask.solve.errmodel import (MAS_PER_DEG, ErrorModel, chi_square, error_clip, like_fit, normalized_residuals,
                                sky_covariance)

SCALE = 1.3
FLOOR_MAS = 5.0
PLATE_SCALE_DEG = 0.85 / 3600.0


def rotation(angle_deg: float) -> np.ndarray:
    angle = np.radians(angle_deg)
    return np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])


def pixel_covariances(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SEP-like centroid covariances: elliptical, sizes from 0.002 to 0.05 px (1.7 to 43 mas)."""
    sigma = np.exp(rng.uniform(np.log(0.002), np.log(0.05), n))
    minor = sigma * rng.uniform(0.4, 1.0, n)
    theta = rng.uniform(0.0, np.pi, n)
    c, s = np.cos(theta), np.sin(theta)
    var_i = sigma**2 * c**2 + minor**2 * s**2
    var_j = sigma**2 * s**2 + minor**2 * c**2
    var_ij = (sigma**2 - minor**2) * c * s
    return var_i, var_j, var_ij


def simulate(rng: np.random.Generator, n: int, scale: float = SCALE, floor_mas: float = FLOOR_MAS,
             ) -> tuple[np.ndarray, np.ndarray]:
    """Residuals (mas) drawn from N(0, scale^2 C + floor^2 I), and the covariances C (mas^2)."""
    # a Condor-like local Jacobian: 0.85"/px, rotated 30 deg, varying a little over the field
    jacobian = PLATE_SCALE_DEG * np.einsum("n,ab->nab", rng.uniform(0.98, 1.02, n), rotation(30.0))
    cov = sky_covariance(*pixel_covariances(rng, n), jacobian)
    model_cov = ErrorModel(scale=scale, floor_mas=floor_mas).covariance(cov)
    residuals = np.einsum("nab,nb->na", np.linalg.cholesky(model_cov), rng.normal(size=(n, 2)))
    return residuals, cov


# --------------------------------------------------------------------------
# sky_covariance
# --------------------------------------------------------------------------


def test_sky_covariance_of_a_rotated_plate_scale_scales_the_eigenvalues() -> None:
    rng = np.random.default_rng(1)
    var_i, var_j, var_ij = pixel_covariances(rng, 50)
    jacobian = PLATE_SCALE_DEG * rotation(30.0)
    sky = sky_covariance(var_i, var_j, var_ij, jacobian)
    assert sky.shape == (50, 2, 2)
    pix = np.stack([np.stack([var_i, var_ij], -1), np.stack([var_ij, var_j], -1)], -2)
    np.testing.assert_allclose(np.linalg.eigvalsh(sky), 850.0**2 * np.linalg.eigvalsh(pix), rtol=1e-12)
    # the rotation turns the principal axes by 30 deg
    major_pix = np.linalg.eigh(pix)[1][:, :, 1]
    major_sky = np.linalg.eigh(sky)[1][:, :, 1]
    np.testing.assert_allclose(np.abs(np.einsum("na,na->n", major_sky, major_pix @ rotation(30.0).T)), 1.0,
                               atol=1e-9)


def test_sky_covariance_is_j_c_jt_for_per_point_jacobians() -> None:
    rng = np.random.default_rng(2)
    var_i, var_j, var_ij = pixel_covariances(rng, 20)
    jacobian = rng.normal(0.0, 1e-4, (20, 2, 2))  # skewed, anisotropic, even flipped
    sky = sky_covariance(var_i, var_j, var_ij, jacobian)
    for k in range(20):
        pix = np.array([[var_i[k], var_ij[k]], [var_ij[k], var_j[k]]])
        np.testing.assert_allclose(sky[k], MAS_PER_DEG**2 * jacobian[k] @ pix @ jacobian[k].T, rtol=1e-12)
    np.testing.assert_array_equal(sky, np.swapaxes(sky, 1, 2))


def test_sky_covariance_checks_shapes() -> None:
    with pytest.raises(ValueError, match="jacobian must have shape"):
        sky_covariance(np.ones(3), np.ones(3), np.zeros(3), np.ones((2, 2, 2)))
    with pytest.raises(ValueError, match="have 3, 2 and 3 values"):
        sky_covariance(np.ones(3), np.ones(2), np.zeros(3), np.eye(2))


# --------------------------------------------------------------------------
# like_fit
# --------------------------------------------------------------------------


def test_like_fit_recovers_scale_and_floor() -> None:
    residuals, cov = simulate(np.random.default_rng(3), 5000)
    model = like_fit(residuals, cov)
    assert model.converged and model.n_points == 5000
    assert abs(model.scale - SCALE) < 4 * model.scale_err and abs(model.scale / SCALE - 1) < 0.03
    assert abs(model.floor_mas - FLOOR_MAS) < 4 * model.floor_err_mas
    assert abs(model.floor_mas / FLOOR_MAS - 1) < 0.05
    assert 0 < model.scale_err < 0.02 * SCALE and 0 < model.floor_err_mas < 0.05 * FLOOR_MAS


def test_like_fit_returns_no_floor_when_there_is_none() -> None:
    residuals, cov = simulate(np.random.default_rng(4), 5000, floor_mas=0.0)
    model = like_fit(residuals, cov)
    assert model.converged
    assert model.floor_mas < 1.0  # mas, against errors of 2 to 55 mas
    # near 0 the Gaussian figure is that of f^2: sigma(f^2) = (f + floor_err)^2 - f^2
    assert model.floor_mas**2 < 3 * ((model.floor_mas + model.floor_err_mas) ** 2 - model.floor_mas**2)
    assert abs(model.scale / SCALE - 1) < 0.03


def test_like_fit_uncertainties_match_the_scatter_of_repeated_fits() -> None:
    rng = np.random.default_rng(5)
    pulls = []
    for _ in range(40):
        model = like_fit(*simulate(rng, 1000))
        pulls.append([(model.scale - SCALE) / model.scale_err, (model.floor_mas - FLOOR_MAS) / model.floor_err_mas])
    pulls = np.asarray(pulls)
    assert np.all(np.abs(pulls.mean(axis=0)) < 0.5)
    assert np.all((pulls.std(axis=0) > 0.7) & (pulls.std(axis=0) < 1.4))


def test_like_fit_finds_the_same_optimum_from_any_start() -> None:
    residuals, cov = simulate(np.random.default_rng(6), 2000)
    best = like_fit(residuals, cov)
    for initial in [(0.1, 100.0), (10.0, 0.0), (3.0, 0.01), best]:
        model = like_fit(residuals, cov, initial=initial)
        assert model.neg_log_likelihood == pytest.approx(best.neg_log_likelihood, abs=1e-6)
        assert model.scale == pytest.approx(best.scale, abs=1e-3 * best.scale_err)
        assert model.floor_mas == pytest.approx(best.floor_mas, abs=1e-3 * best.floor_err_mas)


def test_like_fit_is_the_likelihood_maximum() -> None:
    residuals, cov = simulate(np.random.default_rng(7), 500)
    model = like_fit(residuals, cov)

    def nll(scale: float, floor: float) -> float:
        m = ErrorModel(scale=scale, floor_mas=floor).covariance(cov)
        q = np.einsum("na,na->n", residuals, np.linalg.solve(m, residuals[..., None])[..., 0])
        return float(0.5 * np.sum(q + np.log(np.linalg.det(m))) + len(residuals) * np.log(2 * np.pi))

    assert nll(model.scale, model.floor_mas) == pytest.approx(model.neg_log_likelihood, rel=1e-12)
    for ds, df in [(1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (1, -1)]:
        assert nll(model.scale + 0.3 * ds * model.scale_err, model.floor_mas + 0.3 * df * model.floor_err_mas) \
            > model.neg_log_likelihood


def test_like_fit_without_floor_is_closed_form() -> None:
    residuals, cov = simulate(np.random.default_rng(8), 3000, floor_mas=0.0)
    model = like_fit(residuals, cov, fit_floor=False)
    q = np.einsum("na,na->n", residuals, np.linalg.solve(cov, residuals[..., None])[..., 0])
    assert model.floor_mas == 0.0 and model.scale == pytest.approx(np.sqrt(q.sum() / 6000), rel=1e-12)
    assert abs(model.scale - SCALE) < 4 * model.scale_err


def test_like_fit_refuses_bad_input() -> None:
    residuals, cov = simulate(np.random.default_rng(9), 10)
    with pytest.raises(ValueError, match="at least 2 points, got 1"):
        like_fit(residuals[:1], cov[:1])
    with pytest.raises(ValueError, match="must have shape \\(N, 2, 2\\) with N = 10"):
        like_fit(residuals, cov[:5])
    bad = cov.copy()
    bad[3] = [[1.0, 2.0], [2.0, 1.0]]
    with pytest.raises(ValueError, match="not positive semi-definite \\(first: point 3"):
        like_fit(residuals, bad)
    nan = residuals.copy()
    nan[0, 0] = np.nan
    with pytest.raises(ValueError, match="1 of 10 points have non-finite"):
        like_fit(nan, cov)
    singular = cov.copy()
    singular[0] = [[4.0, 0.0], [0.0, 0.0]]
    with pytest.raises(ValueError, match="singular: the model needs a floor"):
        like_fit(residuals, singular, fit_floor=False)
    assert like_fit(residuals, singular).floor_mas >= 0  # a floor keeps M positive definite


def test_error_model_covariance_and_validation() -> None:
    cov = np.array([[[4.0, 1.0], [1.0, 9.0]]])
    np.testing.assert_allclose(ErrorModel(scale=2.0, floor_mas=3.0).covariance(cov),
                               [[[25.0, 4.0], [4.0, 45.0]]])
    with pytest.raises(ValueError, match="scale = 0.0 must be a positive"):
        ErrorModel(scale=0.0, floor_mas=1.0)
    with pytest.raises(ValueError, match="floor_mas = -1.0 must be a number >= 0"):
        ErrorModel(scale=1.0, floor_mas=-1.0)


# --------------------------------------------------------------------------
# normalized residuals and chi-square
# --------------------------------------------------------------------------


def test_normalized_residuals_are_mahalanobis_distances() -> None:
    residuals, cov = simulate(np.random.default_rng(10), 4000)
    model = ErrorModel(scale=SCALE, floor_mas=FLOOR_MAS)
    distance = normalized_residuals(residuals, cov, model)
    m = model.covariance(cov)
    expected = np.sqrt(np.einsum("na,na->n", residuals, np.linalg.solve(m, residuals[..., None])[..., 0]))
    np.testing.assert_allclose(distance, expected, rtol=1e-10)
    # chi-square with 2 degrees of freedom: P(d > x) = exp(-x^2 / 2)
    assert np.mean(distance**2) == pytest.approx(2.0, rel=0.06)
    assert np.mean(distance > 2.0) == pytest.approx(np.exp(-2.0), abs=0.02)


def test_chi_square_of_the_true_model_is_one_per_degree_of_freedom() -> None:
    residuals, cov = simulate(np.random.default_rng(11), 5000)
    quality = chi_square(residuals, cov, ErrorModel(scale=SCALE, floor_mas=FLOOR_MAS), n_params=20)
    assert quality.n_points == 5000 and quality.n_params == 20
    assert quality.dof == 2 * 5000 - 20 - 2
    assert quality.chi2_dof == pytest.approx(quality.chi2 / quality.dof)
    assert abs(quality.chi2_dof - 1.0) < 4 * np.sqrt(2.0 / quality.dof)
    np.testing.assert_allclose(quality.rms_mas, np.sqrt(np.mean(residuals**2, axis=0)))
    # the fitted model does at least as well as the truth
    fitted = chi_square(residuals, cov, like_fit(residuals, cov), n_params=20)
    assert abs(fitted.chi2_dof - 1.0) < 4 * np.sqrt(2.0 / fitted.dof)


def test_chi_square_over_all_and_over_the_kept_points() -> None:
    """A few gross outliers lift the chi-square over all points; over the kept ones it stays 1 per dof."""
    residuals, cov = simulate(np.random.default_rng(13), 3000)
    residuals[:30] *= 8.0  # 1 % of points at 8 times their error: clipped by error_clip
    model = ErrorModel(scale=SCALE, floor_mas=FLOOR_MAS)
    keep = np.ones(len(residuals), dtype=bool)
    keep[:30] = False
    quality = chi_square(residuals, cov, model, n_params=20, keep=keep)
    terms = normalized_residuals(residuals, cov, model) ** 2
    assert quality.n_points == 3000 and quality.n_kept == 2970
    assert quality.chi2 == pytest.approx(terms.sum()) and quality.chi2_kept == pytest.approx(terms[keep].sum())
    assert quality.dof_kept == 2 * 2970 - 20 - 2
    assert abs(quality.chi2_dof_kept - 1.0) < 4 * np.sqrt(2.0 / quality.dof_kept)
    assert quality.chi2_dof > 1.5  # 30 points of ~ 64 x 2 each over ~ 6000 dof
    # without a mask both figures are the same
    whole = chi_square(residuals, cov, model, n_params=20)
    assert (whole.chi2_kept, whole.dof_kept, whole.n_kept) == (whole.chi2, whole.dof, whole.n_points)
    with pytest.raises(ValueError, match="one flag per residual"):
        chi_square(residuals, cov, model, n_params=20, keep=keep[:10])


def test_chi_square_without_degrees_of_freedom_is_nan() -> None:
    residuals, cov = simulate(np.random.default_rng(12), 3)
    quality = chi_square(residuals, cov, ErrorModel(scale=1.0, floor_mas=0.0), n_params=4)
    assert quality.dof == 0 and np.isnan(quality.chi2_dof)


# --------------------------------------------------------------------------
# error_clip
# --------------------------------------------------------------------------


def add_outliers(rng: np.random.Generator, residuals: np.ndarray, cov: np.ndarray, fraction: float,
                 sigmas: float) -> tuple[np.ndarray, np.ndarray]:
    """Replace a fraction of the residuals by ones at exactly ``sigmas`` modelled sigmas."""
    n = len(residuals)
    bad = np.zeros(n, dtype=bool)
    bad[rng.choice(n, int(round(fraction * n)), replace=False)] = True
    direction = rng.normal(size=(int(bad.sum()), 2))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    chol = np.linalg.cholesky(ErrorModel(scale=SCALE, floor_mas=FLOOR_MAS).covariance(cov[bad]))
    out = residuals.copy()
    out[bad] = sigmas * np.einsum("nab,nb->na", chol, direction)
    return out, bad


def test_error_clip_removes_outliers_and_recovers_the_model() -> None:
    rng = np.random.default_rng(13)
    residuals, cov = simulate(rng, 5000)
    residuals, bad = add_outliers(rng, residuals, cov, 0.02, 20.0)
    contaminated = like_fit(residuals, cov)
    assert contaminated.floor_mas > 2 * FLOOR_MAS or contaminated.scale > 2 * SCALE  # the outliers matter
    result = error_clip(residuals, cov, threshold=5.0, rounds=5)
    assert not np.any(result.keep & bad)  # every outlier clipped
    assert np.count_nonzero(result.keep[~bad]) > 0.99 * np.count_nonzero(~bad)
    assert result.converged and 1 <= result.n_rounds <= 5 and len(result.rounds) == result.n_rounds
    model = result.model
    assert abs(model.scale - SCALE) < 4 * model.scale_err and abs(model.scale / SCALE - 1) < 0.04
    assert abs(model.floor_mas - FLOOR_MAS) < 4 * model.floor_err_mas
    assert model.n_points == result.n_kept == result.rounds[-1].n_kept
    assert result.rounds[-1].n_clipped == 5000 - result.n_kept
    np.testing.assert_array_equal(result.residuals_mas, residuals)
    # a fixed point: the final model keeps exactly the kept points
    np.testing.assert_array_equal(normalized_residuals(residuals, cov, model) <= 5.0, result.keep)


def test_error_clip_tolerance_skips_rounds_that_move_a_handful_of_points() -> None:
    """Rounds that would move a handful of points at the threshold are not run: in fewer refits, the
    model stays within its uncertainty of the exact fixed point's, and the fit (here a zero point) within
    a small fraction of its own."""
    rng = np.random.default_rng(1)
    residuals, cov = simulate(rng, 40000)
    raw, bad = add_outliers(rng, residuals, cov, 0.05, 8.0)  # 8 sigma: a few are near the threshold after a refit
    offset = np.array([30.0, -20.0])
    raw = raw + offset
    calls = {"exact": 0, "tolerant": 0}

    def refit_for(name: str):
        def refit(keep: np.ndarray, model: ErrorModel) -> np.ndarray:
            calls[name] += 1
            return raw - raw[keep].mean(axis=0)
        return refit

    start = raw - raw.mean(axis=0)
    exact = error_clip(start, cov, threshold=5.0, rounds=20, refit=refit_for("exact"))
    tolerant = error_clip(start, cov, threshold=5.0, rounds=20, refit=refit_for("tolerant"), change_tolerance=1e-4)
    assert exact.converged and tolerant.converged
    assert calls["tolerant"] < calls["exact"]
    # within the tolerance of a fixed point: at most 4 of the 40000 points would change side
    moved = np.count_nonzero((normalized_residuals(tolerant.residuals_mas, cov, tolerant.model) <= 5.0)
                             != tolerant.keep)
    assert 0 < moved <= 4
    assert abs(tolerant.model.scale - exact.model.scale) < exact.model.scale_err
    assert abs(tolerant.model.floor_mas - exact.model.floor_mas) < exact.model.floor_err_mas
    zero_point = raw[exact.keep].mean(axis=0)
    zero_point_err = np.sqrt(np.mean(exact.model.covariance(cov[exact.keep]), axis=0).diagonal() / exact.n_kept)
    assert np.all(np.abs(raw[tolerant.keep].mean(axis=0) - zero_point) < 0.1 * zero_point_err)
    assert np.count_nonzero(tolerant.keep != exact.keep) <= 4 and np.count_nonzero(tolerant.keep & bad) <= 4
    with pytest.raises(ValueError, match="change_tolerance"):
        error_clip(start, cov, change_tolerance=1.0)


def test_error_clip_refits_after_each_round() -> None:
    rng = np.random.default_rng(14)
    residuals, cov = simulate(rng, 3000)
    raw, bad = add_outliers(rng, residuals, cov, 0.03, 20.0)
    offset = np.array([40.0, -25.0])  # a zero-point error that the "WCS refit" removes
    raw = raw + offset
    masks: list[np.ndarray] = []

    def refit(keep: np.ndarray, model: ErrorModel) -> np.ndarray:
        assert model.scale > 0  # the current error model comes with each refit
        masks.append(keep)
        return raw - raw[keep].mean(axis=0)

    start = raw - raw.mean(axis=0)  # fitted on everything, outliers included
    result = error_clip(start, cov, threshold=5.0, rounds=10, refit=refit)
    assert len(masks) == result.n_rounds >= 1
    np.testing.assert_array_equal(masks[-1], result.keep)
    np.testing.assert_allclose(result.residuals_mas, raw - raw[result.keep].mean(axis=0))
    assert not np.any(result.keep & bad) and np.mean(result.keep[~bad]) > 0.99
    np.testing.assert_allclose(raw[result.keep].mean(axis=0), offset, atol=4 * SCALE * 55 / np.sqrt(3000))
    assert result.converged


def test_error_clip_readmits_points_clipped_beforehand_and_rounds_zero_clips_nothing() -> None:
    rng = np.random.default_rng(15)
    residuals, cov = simulate(rng, 2000)
    initial = rng.random(2000) > 0.2
    result = error_clip(residuals, cov, threshold=5.0, keep=initial)
    assert result.n_kept > 1990 and np.count_nonzero(result.keep & ~initial) > 350
    none = error_clip(residuals, cov, rounds=0, keep=initial)
    assert none.n_rounds == 0 and none.rounds == ()
    np.testing.assert_array_equal(none.keep, initial)
    assert none.model.n_points == np.count_nonzero(initial)


def test_error_clip_refuses_bad_refits_and_options() -> None:
    rng = np.random.default_rng(16)
    residuals, cov = simulate(rng, 200)
    residuals, _ = add_outliers(rng, residuals, cov, 0.05, 20.0)
    with pytest.raises(ValueError, match="refit must return residuals of all 200 points"):
        error_clip(residuals, cov, refit=lambda keep, model: residuals[keep])
    with pytest.raises(ValueError, match="threshold = 0.0 must be a positive"):
        error_clip(residuals, cov, threshold=0.0)
    with pytest.raises(ValueError, match="keep must be a boolean mask of shape \\(200,\\)"):
        error_clip(residuals, cov, keep=np.ones(3, bool))
