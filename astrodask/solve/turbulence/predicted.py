"""The solution's predicted astrometric error: the fit's own, the correlated field's, the frame's.

What ``CRDER1/2`` (random) and ``CSYER1/2`` (systematic) carry, from the TPV fit's covariance,
the error model and the residual field left (all of it when not corrected, the GP's posterior
variance when corrected).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from astrodask.config import TurbulenceConfig
from astrodask.constants import GAIA_DR3_EPOCH
from astrodask.solve.turbulence.kernel import Correlation2D, CorrelationSignificance, near_pairs

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
                           sig: CorrelationSignificance, *, degree: int, shape: tuple[int, int]) -> float:
    """The correlated field's mean covariance within the significance's radius, both axes pooled, mas^2.

    The significance's ``S / W`` (:meth:`CorrelationSignificance.pooled_covariance_mas2`) with the
    TPV fit's own anticorrelation over the same pairs added back (:func:`fit_pair_covariance_mas2`,
    pooled with the same weights): unbiased, whatever the white noise and however well the error
    model knows it. Without the fit's part ``S / W`` of residuals with no field averages minus the
    fit's variance between neighbours (-2 to -3 mas^2 at 3 stars/arcmin^2 on the benchmark's
    frames, -10 to -30 at 0.3): a weak field's whole size.

    A diagnostic (``bench_turbulence.py`` prints it beside the field a TPV leaves), not a part of
    the predicted error: it is the field's covariance at up to ``corr_signal_arcmin``, a third to
    a half of its variance for a 10' outer scale, and where the gate declines its standard error
    is as large; taken into the field's variance it moved the benchmark's failing realisations
    only part-way and put one without atmosphere outside 1.5 (README, issue 18).

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
    """
    pairs = near_pairs(i, j, corr, radius_px=sig.radius_px)
    fit_cov = fit_pair_covariance_mas2(i, j, total_mas2, pairs, degree=degree, shape=shape)
    cov, _ = sig.pooled_covariance_mas2()
    w = np.array([1.0 / se ** 2 if math.isfinite(se) and se > 0 else 0.0 for se in sig.covariance_se_mas2])
    return cov + (float(np.sum(w * fit_cov) / np.sum(w)) if np.sum(w) > 0 else 0.0)


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


