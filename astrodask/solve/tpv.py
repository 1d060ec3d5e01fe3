"""TAN + TPV world coordinates: evaluation, fitting and FITS header I/O, in numpy.

A :class:`TPVSolution` is the astrometric solution of one exposure in the FITS
``RA---TPV``/``DEC--TPV`` form (the SCAMP/DECam/Condor convention, evaluated the same
way by wcslib).  Pixel ``p = (i, j)`` (0-based) maps to the sky in three steps:

1. intermediate world coordinates, degrees: ``(x, y) = CD @ (p - crpix)``;
2. the TPV polynomial gives the standard coordinates (xi, eta) in degrees::

       xi  = sum_k PV1_k * T_k(x, y, r)
       eta = sum_k PV2_k * T_k(y, x, r)        # note: x and y swapped for eta

   with ``r = sqrt(x^2 + y^2)`` and the term table ``T_k`` of :data:`TPV_TERMS`
   (k = 0..39: every monomial up to degree 7, and the odd radial terms r, r^3, r^5,
   r^7 at k = 3, 11, 23, 39);
3. the gnomonic (TAN) deprojection of (xi, eta) about the tangent point ``crval``
   (:func:`tangent_plane_to_sky`), with the native pole at LONPOLE = 180 deg.

(xi, eta) point east and north.  Everything here works in that tangent plane: the fit
residuals (:func:`fit_residuals_arcsec`) and the Jacobian that carries SEP centroid
covariances to the sky (:func:`local_jacobian`) are both d(xi, eta), so the error
model compares like with like.

Conventions (see :mod:`astrodask.types`): pixels are 0-based, ``i`` the column and
``j`` the row; ``TPVSolution.crpix`` is 0-based too, and only the FITS keywords
``CRPIX1``/``CRPIX2`` are 1-based -- converted in :func:`tpv_header` and
:func:`read_tpv_header` and nowhere else.  Angles are degrees unless the name says
otherwise.

The fit (:func:`fit_tpv`) keeps the solution in a canonical form: the tangent point is
the sky position of ``crpix`` and the whole linear part lives in the CD matrix, so
``PV1_0 = PV2_0 = 0``, ``PV1_1 = PV2_1 = 1`` and ``PV1_2 = PV2_2 = 0``.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from numpy.typing import ArrayLike

from astrodask.config import FitConfig
from astrodask.errors import AstrodaskWarning, FitError, HeaderError

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_FIT_ITERATIONS",
    "DEFAULT_TPV_DEGREE",
    "N_TPV_TERMS",
    "TPVFitInfo",
    "TPVSolution",
    "TPV_MAX_DEGREE",
    "TPV_TERMS",
    "distortion_px",
    "fit_residuals_arcsec",
    "fit_tpv",
    "local_jacobian",
    "min_points_for_degree",
    "pixel_to_world",
    "read_tpv_header",
    "tangent_plane",
    "tangent_plane_to_sky",
    "to_astropy_wcs",
    "tpv_header",
    "world_to_pixel",
]

# --------------------------------------------------------------------------
# The TPV term table and the named constants
# --------------------------------------------------------------------------

#: Highest polynomial degree TPV defines.
TPV_MAX_DEGREE: int = 7
#: Number of TPV coefficients per axis: PVi_0 .. PVi_39.
N_TPV_TERMS: int = 40
#: Default degree of the fitted distortion polynomial: the config's (``fit.tpv_degree``).
DEFAULT_TPV_DEGREE: int = FitConfig().tpv_degree
#: Default (maximum) number of re-centring iterations of :func:`fit_tpv`; it stops earlier
#: once the tangent point and the linear part have converged (usually after 2 or 3).
DEFAULT_FIT_ITERATIONS: int = 5
#: :func:`fit_tpv` has converged when the fitted constant term moves the tangent point by
#: less than this many pixels ...
FIT_TANGENT_POINT_TOL_PX: float = 1e-9
#: ... and the fitted linear part differs from the identity by less than this (dimensionless).
FIT_LINEAR_TOL: float = 1e-12
#: :func:`world_to_pixel` stops Newton's iterations when the step is below this, pixels.
WORLD_TO_PIXEL_TOL_PX: float = 1e-10
#: :func:`world_to_pixel` gives up on a point (returns NaN) after this many Newton steps.
WORLD_TO_PIXEL_MAX_ITER: int = 30
#: The only native longitude of the celestial pole (LONPOLE, deg) a solution uses; wcslib's
#: default for TAN except at CRVAL2 = +90 exactly (where it defaults to 0).
LONPOLE_DEG: float = 180.0
#: Positions whose cosine of the distance to the tangent point is below this are not projected
#: (90 deg away, within rounding, or more: they would land at infinity).
_HORIZON_COS: float = 1e-12
#: Arcseconds per degree.
ARCSEC_PER_DEG: float = 3600.0


def _build_terms() -> tuple[tuple[int, int, int], ...]:
    """The TPV term table: (power of the first variable, of the second, of r) for k = 0..39."""
    terms: list[tuple[int, int, int]] = []
    for degree in range(TPV_MAX_DEGREE + 1):
        terms.extend((degree - m, m, 0) for m in range(degree + 1))
        if degree % 2 == 1:
            terms.append((0, 0, degree))  # the radial term r^degree closes each odd degree
    return tuple(terms)


#: TPV term k as ``(a, b, c)``: ``T_k(u, v, r) = u^a v^b r^c`` (``u, v = x, y`` for xi and
#: ``y, x`` for eta).  Radial terms (c > 0) are k = 3, 11, 23, 39.
TPV_TERMS: tuple[tuple[int, int, int], ...] = _build_terms()
_TERM_DEGREE = np.array([a + b + c for a, b, c in TPV_TERMS])
_TERM_INDEX: dict[tuple[int, int], int] = {(a, b): k for k, (a, b, c) in enumerate(TPV_TERMS) if c == 0}
_IDENTITY_PV = np.zeros(N_TPV_TERMS)
_IDENTITY_PV[1] = 1.0
assert len(TPV_TERMS) == N_TPV_TERMS


def min_points_for_degree(degree: int) -> int:
    """The fewest matched pairs :func:`fit_tpv` accepts for a polynomial degree.

    That is the number of free coefficients per axis: every monomial ``x^a y^b`` with
    ``a + b <= degree`` (the radial terms are not fitted), ``(degree + 1)(degree + 2) / 2``.
    """
    _check_degree(degree)
    return (degree + 1) * (degree + 2) // 2


def _check_degree(degree: int) -> int:
    if isinstance(degree, bool) or not isinstance(degree, (int, np.integer)) \
            or not 1 <= degree <= TPV_MAX_DEGREE:
        raise ValueError(f"TPV degree = {degree!r} must be an integer from 1 to {TPV_MAX_DEGREE}")
    return int(degree)


# --------------------------------------------------------------------------
# The solution
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class TPVFitInfo:
    """How :func:`fit_tpv` arrived at a solution.

    Attributes
    ----------
    n_points
        Matched pairs used (those with a positive weight).
    n_terms
        Free polynomial coefficients per axis (:func:`min_points_for_degree`).
    condition_number
        2-norm condition number of the weighted design matrix of the last full fit, in
        normalised variables (x, y divided by the largest |x|, |y| of the points).
    n_iter
        Re-centring iterations run.
    converged
        Whether the last full fit left the tangent point within
        :data:`FIT_TANGENT_POINT_TOL_PX` and the linear part within :data:`FIT_LINEAR_TOL`
        of the identity.
    rms_arcsec
        Unweighted rms of the residual lengths of the used points, arcsec.
    """

    n_points: int
    n_terms: int
    condition_number: float
    n_iter: int
    converged: bool
    rms_arcsec: float


@dataclass(frozen=True, eq=False)
class TPVSolution:
    """A TAN + TPV astrometric solution.

    Attributes
    ----------
    crpix
        0-based pixel (i, j) of the tangent point.  The FITS ``CRPIX`` is this plus 1.
    crval
        (ra, dec) of the tangent point, degrees; ra in [0, 360).
    cd
        2 x 2 CD matrix, degrees per pixel: ``(x, y) = cd @ (p - crpix)``.
    pv1, pv2
        The 40 TPV coefficients PV1_0..PV1_39 (xi) and PV2_0..PV2_39 (eta); the identity
        (no distortion) is ``PV1_1 = PV2_1 = 1``, every other term 0.
    degree
        Polynomial degree, 1 to 7; every term of a higher degree must be 0.
    info
        Fit diagnostics when the solution came from :func:`fit_tpv`, else None
        (ignored by comparisons).

    Notes
    -----
    The arrays are stored as read-only float64 copies.  Comparison is by identity
    (numpy arrays have no single truth value): compare fields with numpy instead.
    """

    crpix: tuple[float, float]
    crval: tuple[float, float]
    cd: np.ndarray
    pv1: np.ndarray
    pv2: np.ndarray
    degree: int
    info: TPVFitInfo | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        crpix = _pair("crpix", self.crpix)
        ra, dec = _pair("crval", self.crval)
        if not -90.0 <= dec <= 90.0:
            raise ValueError(f"TPVSolution crval dec = {dec!r} deg is out of range: allowed -90 to 90")
        cd = np.array(self.cd, dtype=np.float64)
        if cd.shape != (2, 2) or not np.all(np.isfinite(cd)) or np.linalg.det(cd) == 0.0:
            raise ValueError(f"TPVSolution cd = {self.cd!r} must be a finite, invertible 2 x 2 matrix "
                             "(deg/px)")
        degree = _check_degree(self.degree)
        pvs = []
        for name in ("pv1", "pv2"):
            pv = np.array(getattr(self, name), dtype=np.float64)
            if pv.shape != (N_TPV_TERMS,) or not np.all(np.isfinite(pv)):
                raise ValueError(f"TPVSolution {name} must be {N_TPV_TERMS} finite coefficients, "
                                 f"got shape {pv.shape}")
            beyond = np.flatnonzero((pv != 0.0) & (_TERM_DEGREE > degree))
            if beyond.size:
                raise ValueError(f"TPVSolution {name} has non-zero terms {beyond.tolist()} beyond "
                                 f"degree {degree}: raise the degree or zero them")
            pv.flags.writeable = False
            pvs.append(pv)
        cd.flags.writeable = False
        object.__setattr__(self, "crpix", crpix)
        object.__setattr__(self, "crval", (ra % 360.0, dec))
        object.__setattr__(self, "cd", cd)
        object.__setattr__(self, "pv1", pvs[0])
        object.__setattr__(self, "pv2", pvs[1])
        object.__setattr__(self, "degree", degree)

    @classmethod
    def linear(cls, *, crpix: tuple[float, float], crval: tuple[float, float], cd: ArrayLike,
            degree: int = 1) -> TPVSolution:
        """A solution without distortion (identity PV): plain TAN."""
        return cls(crpix=crpix, crval=crval, cd=np.asarray(cd), pv1=_IDENTITY_PV, pv2=_IDENTITY_PV,
                   degree=degree)

    def to_astropy_wcs(self, *, shape: tuple[int, int] | None = None) -> WCS:
        """This solution as an :class:`astropy.wcs.WCS` (see :func:`to_astropy_wcs`)."""
        return to_astropy_wcs(self, shape=shape)

    @property
    def scale_arcsec(self) -> float:
        """Plate scale at the tangent point, arcsec per pixel (geometric mean of the axes)."""
        return math.sqrt(abs(float(np.linalg.det(self.cd)))) * ARCSEC_PER_DEG


def _pair(name: str, value: Any) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"TPVSolution {name} = {value!r} must be two numbers") from err
    if not (math.isfinite(a) and math.isfinite(b)):
        raise ValueError(f"TPVSolution {name} = {value!r} must be finite")
    return a, b


# --------------------------------------------------------------------------
# The tangent plane (gnomonic projection)
# --------------------------------------------------------------------------


def tangent_plane(ra: ArrayLike, dec: ArrayLike,
                  crval: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Gnomonic standard coordinates (xi, eta) of sky positions about a tangent point.

    Parameters
    ----------
    ra, dec
        Sky positions, degrees (any broadcastable shapes; RA in any turn: 359.9 and -0.1
        are the same).
    crval
        (ra, dec) of the tangent point, degrees.  At a pole the axes follow the limit
        from nearby declinations: eta points from the pole towards RA = ``crval[0]`` + 180
        at the north pole (LONPOLE = 180, :data:`LONPOLE_DEG`).

    Returns
    -------
    xi, eta
        Standard coordinates, degrees, xi towards east and eta towards north; NaN for
        positions 90 deg or more away from the tangent point.
    """
    ra0, dec0 = np.radians(float(crval[0])), np.radians(float(crval[1]))
    a = np.radians(np.asarray(ra, dtype=np.float64))
    d = np.radians(np.asarray(dec, dtype=np.float64))
    dra = a - ra0
    cos_d, sin_d = np.cos(d), np.sin(d)
    cos_dra = np.cos(dra)
    cos_c = np.sin(dec0) * sin_d + np.cos(dec0) * cos_d * cos_dra  # cosine of the distance
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(cos_c > _HORIZON_COS, 1.0 / cos_c, np.nan)
    xi = np.degrees(cos_d * np.sin(dra) * inv)
    eta = np.degrees((np.cos(dec0) * sin_d - np.sin(dec0) * cos_d * cos_dra) * inv)
    return xi, eta


def tangent_plane_to_sky(xi: ArrayLike, eta: ArrayLike,
                         crval: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Sky positions of gnomonic standard coordinates: the inverse of :func:`tangent_plane`.

    Parameters
    ----------
    xi, eta
        Standard coordinates, degrees (east, north).
    crval
        (ra, dec) of the tangent point, degrees.

    Returns
    -------
    ra, dec
        Degrees, ra in [0, 360).
    """
    ra0, dec0 = np.radians(float(crval[0])), np.radians(float(crval[1]))
    x = np.radians(np.asarray(xi, dtype=np.float64))
    y = np.radians(np.asarray(eta, dtype=np.float64))
    # the direction p0 + x e + y n (unnormalised), with p0 the tangent point and e, n the
    # east and north unit vectors there, written relative to the tangent point's meridian
    along = np.cos(dec0) - y * np.sin(dec0)
    dra = np.arctan2(x, along)
    dec = np.arctan2(np.sin(dec0) + y * np.cos(dec0), np.hypot(x, along))
    return np.degrees(ra0 + dra) % 360.0, np.degrees(dec)


# --------------------------------------------------------------------------
# The TPV polynomial
# --------------------------------------------------------------------------


def _intermediate(sol: TPVSolution, i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Intermediate world coordinates (x, y), degrees: ``cd @ (p - crpix)``."""
    di, dj = i - sol.crpix[0], j - sol.crpix[1]
    cd = sol.cd
    return cd[0, 0] * di + cd[0, 1] * dj, cd[1, 0] * di + cd[1, 1] * dj


def _polynomial(pv: np.ndarray, u: np.ndarray, v: np.ndarray, r: np.ndarray, degree: int, *,
                derivatives: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """``sum_k pv_k T_k(u, v, r)`` and, if asked, its derivatives along u and v."""
    upow, vpow, rpow = [np.ones_like(u)], [np.ones_like(v)], [np.ones_like(r)]
    for _ in range(degree):
        upow.append(upow[-1] * u)
        vpow.append(vpow[-1] * v)
        rpow.append(rpow[-1] * r)
    value = np.zeros_like(u)
    du = np.zeros_like(u) if derivatives else None
    dv = np.zeros_like(u) if derivatives else None
    with np.errstate(divide="ignore", invalid="ignore"):
        r_inv = np.where(r > 0.0, 1.0 / r, 0.0)  # d r / d u = u / r: taken as 0 at r = 0
    for k in np.flatnonzero(pv[: _n_terms_to_degree(degree)]):
        a, b, c = TPV_TERMS[k]
        coef = pv[k]
        if c:
            value = value + coef * rpow[c]
            if derivatives:
                radial = coef * c * (rpow[c - 2] if c >= 2 else r_inv)  # d r^c / d u = c r^(c-2) u
                du = du + radial * u
                dv = dv + radial * v
            continue
        value = value + coef * upow[a] * vpow[b]
        if derivatives:
            if a:
                du = du + coef * a * upow[a - 1] * vpow[b]
            if b:
                dv = dv + coef * b * upow[a] * vpow[b - 1]
    return value, du, dv


def _n_terms_to_degree(degree: int) -> int:
    """Number of leading TPV terms whose degree is at most ``degree``."""
    return int(np.count_nonzero(_TERM_DEGREE <= degree))


def _distort(sol: TPVSolution, x: np.ndarray, y: np.ndarray, *, derivatives: bool = False
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(xi, eta) of intermediate (x, y) and, if asked, the Jacobian d(xi, eta)/d(x, y) (..., 2, 2)."""
    r = np.hypot(x, y)
    xi, dxi_dx, dxi_dy = _polynomial(sol.pv1, x, y, r, sol.degree, derivatives=derivatives)
    eta, deta_dy, deta_dx = _polynomial(sol.pv2, y, x, r, sol.degree, derivatives=derivatives)
    if not derivatives:
        return xi, eta, None
    assert dxi_dx is not None and dxi_dy is not None and deta_dx is not None and deta_dy is not None
    jac = np.stack([np.stack([dxi_dx, dxi_dy], axis=-1), np.stack([deta_dx, deta_dy], axis=-1)], axis=-2)
    return xi, eta, jac


def pixel_to_world(sol: TPVSolution, i: ArrayLike, j: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Sky positions of 0-based pixel positions.

    Parameters
    ----------
    sol
        The solution.
    i, j
        0-based column and row, pixels (broadcastable shapes).

    Returns
    -------
    ra, dec
        Degrees, ra in [0, 360), of the broadcast shape.
    """
    i, j = np.broadcast_arrays(np.asarray(i, dtype=np.float64), np.asarray(j, dtype=np.float64))
    xi, eta, _ = _distort(sol, *_intermediate(sol, i, j))
    return tangent_plane_to_sky(xi, eta, sol.crval)


def world_to_pixel(sol: TPVSolution, ra: ArrayLike, dec: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """0-based pixel positions of sky positions: the inverse of :func:`pixel_to_world`.

    The TPV polynomial is inverted by Newton's method from its linear part, to
    :data:`WORLD_TO_PIXEL_TOL_PX`.

    Parameters
    ----------
    sol
        The solution.
    ra, dec
        Sky positions, degrees (broadcastable shapes).

    Returns
    -------
    i, j
        0-based column and row, pixels; NaN where the position is 90 deg or more from the
        tangent point or Newton's method does not converge within
        :data:`WORLD_TO_PIXEL_MAX_ITER` steps (far outside the field the polynomial need
        not be invertible).
    """
    ra, dec = np.broadcast_arrays(np.asarray(ra, dtype=np.float64), np.asarray(dec, dtype=np.float64))
    xi, eta = tangent_plane(ra, dec, sol.crval)
    xi, eta = xi.ravel(), eta.ravel()
    cd_inv = np.linalg.inv(sol.cd)
    p1, p2 = sol.pv1, sol.pv2
    lin = np.array([[p1[1], p1[2]], [p2[2], p2[1]]])  # xi ~ p1_0 + lin @ (x, y)
    if np.linalg.det(lin) == 0.0:
        lin = np.eye(2)
    x, y = np.linalg.solve(lin, np.stack([xi - p1[0], eta - p2[0]]))
    todo = np.flatnonzero(np.isfinite(xi) & np.isfinite(eta))
    failed = np.flatnonzero(~(np.isfinite(xi) & np.isfinite(eta)))
    for _ in range(WORLD_TO_PIXEL_MAX_ITER):
        if todo.size == 0:
            break
        fx, fy, jac = _distort(sol, x[todo], y[todo], derivatives=True)
        assert jac is not None  # asked for
        fx, fy = fx - xi[todo], fy - eta[todo]
        a, b, c, d = jac[:, 0, 0], jac[:, 0, 1], jac[:, 1, 0], jac[:, 1, 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            det = a * d - b * c
            sx, sy = (d * fx - b * fy) / det, (a * fy - c * fx) / det
        x[todo] -= sx
        y[todo] -= sy
        step_px = np.hypot(cd_inv[0, 0] * sx + cd_inv[0, 1] * sy, cd_inv[1, 0] * sx + cd_inv[1, 1] * sy)
        bad = ~np.isfinite(step_px)
        failed = np.concatenate([failed, todo[bad]])
        todo = todo[~bad & (step_px >= WORLD_TO_PIXEL_TOL_PX)]
    if todo.size:
        log.debug("world_to_pixel: Newton's method did not converge for %d of %d points",
                  todo.size, xi.size)
    failed = np.concatenate([failed, todo])
    x[failed] = np.nan
    y[failed] = np.nan
    i = sol.crpix[0] + cd_inv[0, 0] * x + cd_inv[0, 1] * y
    j = sol.crpix[1] + cd_inv[1, 0] * x + cd_inv[1, 1] * y
    return i.reshape(ra.shape), j.reshape(ra.shape)


def local_jacobian(sol: TPVSolution, i: ArrayLike, j: ArrayLike) -> np.ndarray:
    """The local Jacobian d(xi, eta)/d(i, j) at pixel positions, analytic.

    (xi, eta) are the standard coordinates about ``sol.crval`` (east, north), the frame
    of :func:`fit_residuals_arcsec`: ``J @ C @ J.T`` carries a centroid covariance C
    (px^2) to the residual frame (deg^2).

    Parameters
    ----------
    sol
        The solution.
    i, j
        0-based column and row, pixels; flattened.

    Returns
    -------
    numpy.ndarray
        Shape (N, 2, 2), degrees per pixel: ``[[dxi/di, dxi/dj], [deta/di, deta/dj]]``.

    Notes
    -----
    The radial term ``r`` (PVi_3) has no derivative at the tangent pixel itself; it
    contributes 0 there.
    """
    i, j = np.broadcast_arrays(np.asarray(i, dtype=np.float64), np.asarray(j, dtype=np.float64))
    x, y = _intermediate(sol, i.ravel(), j.ravel())
    _, _, jac = _distort(sol, x, y, derivatives=True)
    return jac @ sol.cd


def distortion_px(sol: TPVSolution, i: ArrayLike, j: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """The displacement the TPV terms add at pixel positions, in pixels.

    That is ``cd^-1 @ ((xi, eta) - (x, y))``: the pixel at which the same solution without
    its distortion (identity PV, plain TAN) sees the sky this one sees at (i, j), minus
    (i, j).  The simulator's ``distortion_px`` is the largest of these over the corners.

    Parameters
    ----------
    sol
        The solution.
    i, j
        0-based column and row, pixels (broadcastable shapes).

    Returns
    -------
    di, dj
        Pixels, of the broadcast shape.
    """
    i, j = np.broadcast_arrays(np.asarray(i, dtype=np.float64), np.asarray(j, dtype=np.float64))
    x, y = _intermediate(sol, i, j)
    xi, eta, _ = _distort(sol, x, y)
    cd_inv = np.linalg.inv(sol.cd)
    dxi, deta = xi - x, eta - y
    return cd_inv[0, 0] * dxi + cd_inv[0, 1] * deta, cd_inv[1, 0] * dxi + cd_inv[1, 1] * deta


def fit_residuals_arcsec(sol: TPVSolution, i: ArrayLike, j: ArrayLike, ra: ArrayLike,
                         dec: ArrayLike) -> np.ndarray:
    """Residuals of matched pairs, observed minus reference, in the tangent plane.

    Parameters
    ----------
    sol
        The solution.
    i, j
        0-based pixel positions of the image sources (flattened).
    ra, dec
        Sky positions of their reference stars, degrees (flattened).

    Returns
    -------
    numpy.ndarray
        Shape (N, 2), arcsec: column 0 along xi (east), column 1 along eta (north), in
        the standard coordinates about ``sol.crval``.
    """
    i, j, ra, dec = (np.asarray(a, dtype=np.float64).ravel() for a in (i, j, ra, dec))
    if not i.size == j.size == ra.size == dec.size:
        raise ValueError(f"fit_residuals_arcsec: i, j, ra and dec must have the same length, got "
                         f"{i.size}, {j.size}, {ra.size} and {dec.size}")
    xi, eta, _ = _distort(sol, *_intermediate(sol, i, j))
    xi_ref, eta_ref = tangent_plane(ra, dec, sol.crval)
    return np.stack([xi - xi_ref, eta - eta_ref], axis=-1) * ARCSEC_PER_DEG


# --------------------------------------------------------------------------
# The fit
# --------------------------------------------------------------------------


def fit_tpv(i: ArrayLike, j: ArrayLike, ra: ArrayLike, dec: ArrayLike, *,
            degree: int = DEFAULT_TPV_DEGREE, weights: ArrayLike | None = None,
            crpix: tuple[float, float], crval0: tuple[float, float], cd0: ArrayLike,
            n_iter: int = DEFAULT_FIT_ITERATIONS) -> TPVSolution:
    """Fit a TAN + TPV solution to matched pairs (pixel -> reference sky) by weighted least squares.

    With the tangent point fixed, the stars are projected to (xi, eta) and xi, eta are
    fitted as polynomials of the intermediate coordinates (x, y) = cd @ (p - crpix): every
    monomial ``x^a y^b`` with ``a + b <= degree`` (TPV terms 0-2, 4-10, 12-22, 24-38 up to
    the degree; the radial terms are not fitted), in variables normalised by the field's
    half size for conditioning.  The fit is then re-centred -- the tangent point moved to
    the fitted sky position of ``crpix``, the fitted linear part folded into the CD
    matrix -- and repeated until both are stable; a last fit of the terms of degree 2 and
    above gives the PV coefficients in the canonical form ``PV1_0 = PV2_0 = 0``,
    ``PV1_1 = PV2_1 = 1``, ``PV1_2 = PV2_2 = 0``.

    Parameters
    ----------
    i, j
        0-based pixel positions of the image sources, pixels (1-D, same length).
    ra, dec
        Sky positions of their reference stars, degrees.
    degree
        Polynomial degree, 1 (plain TAN) to 7.
    weights
        Non-negative weight of each pair (e.g. 1 / sigma^2); 0 excludes a pair.  None: all 1.
    crpix
        0-based pixel of the tangent point; kept fixed (usually the frame centre).
    crval0
        Starting sky position (ra, dec) of ``crpix``, degrees (e.g. from the mean affine);
        the result's ``crval`` is the fitted one.
    cd0
        Starting 2 x 2 CD matrix, degrees per pixel.
    n_iter
        Maximum number of re-centring iterations (each one a full fit); the loop stops
        earlier once converged (:data:`FIT_TANGENT_POINT_TOL_PX`, :data:`FIT_LINEAR_TOL`).

    Returns
    -------
    TPVSolution
        With ``info`` (:class:`TPVFitInfo`): points used, condition number, convergence, rms.

    Raises
    ------
    ValueError
        For mismatched or non-finite inputs, negative weights, fewer pairs with a positive
        weight than :func:`min_points_for_degree`, or points that do not constrain the
        polynomial (e.g. all on a line).
    """
    degree = _check_degree(degree)
    if isinstance(n_iter, bool) or not isinstance(n_iter, (int, np.integer)) or n_iter < 1:
        raise ValueError(f"fit_tpv n_iter = {n_iter!r} must be a positive integer")
    arrays = [np.asarray(a, dtype=np.float64) for a in (i, j, ra, dec)]
    n = arrays[0].size
    for name, a in zip(("i", "j", "ra", "dec"), arrays):
        if a.ndim != 1 or a.size != n:
            raise ValueError(f"fit_tpv: {name} must be 1-D with the length of i ({n}), got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"fit_tpv: {name} has {int(np.count_nonzero(~np.isfinite(a)))} non-finite "
                             "values; drop those pairs first")
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0.0):
        raise ValueError(f"fit_tpv: weights must be {n} finite, non-negative numbers "
                         f"(got shape {w.shape}, min {np.nanmin(w) if w.size else 'n/a'})")
    used = w > 0.0
    n_used, n_terms = int(np.count_nonzero(used)), min_points_for_degree(degree)
    if n_used < n_terms:
        raise FitError(f"fit_tpv: a degree-{degree} TPV fit needs at least {n_terms} matched pairs "
                         f"with a positive weight, got {n_used} (of {n}); lower the degree "
                         "(fit.tpv_degree) or match more stars")
    pi, pj, pra, pdec = (a[used] for a in arrays)
    sqrt_w = np.sqrt(w[used] / w[used].max())
    ra0, dec0 = _pair("crval0", crval0)
    sol = TPVSolution.linear(crpix=crpix, crval=(ra0, dec0), cd=np.asarray(cd0, dtype=np.float64),
                             degree=degree)

    converged, cond, it = False, math.nan, 0
    for it in range(1, n_iter + 1):
        x, y = _intermediate(sol, pi, pj)
        xi, eta = tangent_plane(pra, pdec, sol.crval)
        if not np.all(np.isfinite(xi)):
            raise FitError(f"fit_tpv: {int(np.count_nonzero(~np.isfinite(xi)))} reference stars are 90 deg "
                             f"or more from the tangent point {sol.crval}: is crval0 right?")
        pv1, pv2, cond = _lstsq_polynomial(x, y, xi, eta, sqrt_w, degree, lowest=0)
        offset = np.array([pv1[0], pv2[0]])
        linear = np.array([[pv1[1], pv1[2]], [pv2[2], pv2[1]]])
        shift_px = float(np.hypot(*offset)) * ARCSEC_PER_DEG / sol.scale_arcsec
        linear_dev = float(np.abs(linear - np.eye(2)).max())
        log.debug("fit_tpv iteration %d: tangent point moves %.3g px, linear part off identity by %.3g, "
                  "condition number %.3g", it, shift_px, linear_dev, cond)
        if shift_px < FIT_TANGENT_POINT_TOL_PX and linear_dev < FIT_LINEAR_TOL:
            converged = True
            break
        crval = tangent_plane_to_sky(offset[0], offset[1], sol.crval)
        sol = TPVSolution.linear(crpix=sol.crpix, crval=(float(crval[0]), float(crval[1])),
                                 cd=linear @ sol.cd, degree=degree)
    if not converged:
        log.info("fit_tpv: not converged after %d iterations (last tangent point move %.3g px, linear "
                 "part off identity by %.3g); the result is kept", n_iter, shift_px, linear_dev)

    pv1, pv2 = _IDENTITY_PV.copy(), _IDENTITY_PV.copy()
    if degree >= 2:
        x, y = _intermediate(sol, pi, pj)
        xi, eta = tangent_plane(pra, pdec, sol.crval)
        hi1, hi2, _ = _lstsq_polynomial(x, y, xi - x, eta - y, sqrt_w, degree, lowest=2)
        pv1 += hi1
        pv2 += hi2
    sol = TPVSolution(crpix=sol.crpix, crval=sol.crval, cd=sol.cd, pv1=pv1, pv2=pv2, degree=degree)
    res = fit_residuals_arcsec(sol, pi, pj, pra, pdec)
    info = TPVFitInfo(n_points=n_used, n_terms=n_terms, condition_number=float(cond), n_iter=it,
                      converged=converged, rms_arcsec=float(np.sqrt(np.mean(np.sum(res**2, axis=1)))))
    log.debug("fit_tpv: degree %d, %d points, condition number %.3g, rms %.4g arcsec",
              degree, n_used, cond, info.rms_arcsec)
    return TPVSolution(crpix=sol.crpix, crval=sol.crval, cd=sol.cd, pv1=pv1, pv2=pv2, degree=degree,
                       info=info)


def _lstsq_polynomial(x: np.ndarray, y: np.ndarray, xi: np.ndarray, eta: np.ndarray, sqrt_w: np.ndarray,
                      degree: int, *, lowest: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Weighted least squares of xi and eta on the monomials x^a y^b, lowest <= a + b <= degree.

    Returns the coefficients as TPV arrays (pv1 for xi; pv2 for eta, whose term k
    multiplies y^a x^b) and the condition number of the normalised, weighted design matrix.
    """
    powers = [(d - m, m) for d in range(lowest, degree + 1) for m in range(d + 1)]
    scale = float(max(np.abs(x).max(), np.abs(y).max()))  # the field's half size, degrees
    if not scale > 0.0:
        raise FitError("fit_tpv: every matched pair sits on the tangent point; the fit is undetermined")
    u, v = x / scale, y / scale
    design = np.stack([u**a * v**b for a, b in powers], axis=-1) * sqrt_w[:, None]
    target = np.stack([xi, eta], axis=-1) / scale * sqrt_w[:, None]
    coef, _, rank, sv = np.linalg.lstsq(design, target, rcond=None)
    if rank < len(powers):
        raise FitError(f"fit_tpv: the {x.size} matched pairs do not constrain a degree-{degree} "
                         f"polynomial (design matrix rank {rank} < {len(powers)} terms): are they on a "
                         "line or in a small patch? Lower the degree or spread the matches")
    pv1, pv2 = np.zeros(N_TPV_TERMS), np.zeros(N_TPV_TERMS)
    for col, (a, b) in enumerate(powers):
        factor = scale ** (1 - a - b)  # undo the normalisation: xi = scale * sum c (x/scale)^a (y/scale)^b
        pv1[_TERM_INDEX[(a, b)]] = coef[col, 0] * factor
        pv2[_TERM_INDEX[(b, a)]] = coef[col, 1] * factor
    return pv1, pv2, float(sv[0] / sv[-1])


# --------------------------------------------------------------------------
# FITS headers and astropy
# --------------------------------------------------------------------------

_CTYPES = {"TPV": ("RA---TPV", "DEC--TPV"), "TAN": ("RA---TAN", "DEC--TAN")}
_PV_KEY = re.compile(r"^PV([12])_(\d+)$")


def tpv_header(sol: TPVSolution, *, shape: tuple[int, int] | None = None) -> fits.Header:
    """The FITS WCS header of a solution (``RA---TPV``/``DEC--TPV``).

    Parameters
    ----------
    sol
        The solution.
    shape
        Image shape (ny, nx); written as IMAGEW/IMAGEH (not NAXISn, so the header can be
        merged into any HDU).

    Returns
    -------
    astropy.io.fits.Header
        CTYPE, CUNIT, CRPIX (1-based: ``sol.crpix + 1``), CRVAL, CD, LONPOLE = 180 (pins
        the orientation at the poles, where wcslib's default differs), RADESYS ICRS,
        EQUINOX 2000, and PV1_k/PV2_k: the linear terms 0-2 always, then the non-zero
        terms up to the degree.
    """
    h = fits.Header()
    h["WCSAXES"] = (2, "number of WCS axes")
    h["CTYPE1"] = (_CTYPES["TPV"][0], "TAN projection + TPV polynomial distortion")
    h["CTYPE2"] = (_CTYPES["TPV"][1], "TAN projection + TPV polynomial distortion")
    h["CUNIT1"] = ("deg", "unit of CRVAL1 and CD1_j")
    h["CUNIT2"] = ("deg", "unit of CRVAL2 and CD2_j")
    # FITS CRPIX is 1-based: the 0-based tangent pixel p is CRPIX = p + 1
    h["CRPIX1"] = (sol.crpix[0] + 1.0, "tangent point, column, 1-based (FITS)")
    h["CRPIX2"] = (sol.crpix[1] + 1.0, "tangent point, row, 1-based (FITS)")
    h["CRVAL1"] = (sol.crval[0], "[deg] RA of the tangent point")
    h["CRVAL2"] = (sol.crval[1], "[deg] Dec of the tangent point")
    for r in range(2):
        for c in range(2):
            h[f"CD{r + 1}_{c + 1}"] = (float(sol.cd[r, c]), "[deg/px] linear transformation")
    h["LONPOLE"] = (LONPOLE_DEG, "[deg] native longitude of the celestial pole")
    h["RADESYS"] = ("ICRS", "reference frame")
    h["EQUINOX"] = (2000.0, "[yr] equinox (unused by ICRS)")
    for axis, pv in ((1, sol.pv1), (2, sol.pv2)):
        for k in range(_n_terms_to_degree(sol.degree)):
            if k <= 2 or pv[k] != 0.0:
                h[f"PV{axis}_{k}"] = (float(pv[k]), "TPV distortion coefficient")
    if shape is not None:
        ny, nx = (int(s) for s in shape)
        h["IMAGEW"] = (nx, "image width, pixels")
        h["IMAGEH"] = (ny, "image height, pixels")
    return h


def read_tpv_header(header: fits.Header | Mapping[str, Any]) -> TPVSolution:
    """Read a TAN or TPV solution from a FITS header (primary WCS, axes 1 and 2).

    Parameters
    ----------
    header
        A header with CTYPE1/2 ``RA---TPV``/``DEC--TPV`` or ``RA---TAN``/``DEC--TAN``,
        CRPIX1/2, CRVAL1/2 and one of: CDi_j (missing elements 0); PCi_j (missing:
        identity) with CDELTi (missing: 1); CDELTi with CROTA2 (missing: 0).  As in
        wcslib, CDELT is ignored when CD is given and CROTA2 when PC is given.

    Returns
    -------
    TPVSolution
        ``crpix`` 0-based (``CRPIX - 1``); the degree is that of the highest non-zero term
        (at least 1); ``info`` None.

    Raises
    ------
    ValueError
        For another projection (SIP included), a missing keyword, CD and PC together, a
        TAN header carrying PV keywords (wcslib reads those as projection parameters, not
        as TPV), PV indices above 39, or a LONPOLE other than 180 (or 0 at a pole).

    Warns
    -----
    AstrodaskWarning
        For a TPV header without any PV keyword on an axis: that axis is read as the
        identity (plain TAN), whereas wcslib would take every coefficient as 0.

    Notes
    -----
    For TPV, missing individual PV keywords are 0, as in wcslib (an absent PV1_1 is 0,
    not 1).  RADESYS is not checked: the solution is taken to be in ICRS.
    """
    ctype = (str(header.get("CTYPE1", "")).strip().upper(), str(header.get("CTYPE2", "")).strip().upper())
    kind = next((name for name, pair in _CTYPES.items() if ctype == pair), None)
    if kind is None:
        raise HeaderError(f"WCS header CTYPE1/CTYPE2 = {ctype[0]!r}/{ctype[1]!r} is not supported: "
                         "expected 'RA---TPV'/'DEC--TPV' or 'RA---TAN'/'DEC--TAN' (SIP and other "
                         "projections are not read)")
    for axis in (1, 2):
        unit = str(header.get(f"CUNIT{axis}", "deg")).strip().lower()
        if unit not in ("deg", ""):
            raise HeaderError(f"WCS header CUNIT{axis} = {unit!r}: only degrees are supported")
    missing = [k for k in ("CRPIX1", "CRPIX2", "CRVAL1", "CRVAL2") if k not in header]
    if missing:
        raise HeaderError(f"WCS header lacks {', '.join(missing)}: not a celestial WCS")
    # FITS CRPIX is 1-based; a solution's crpix is 0-based
    crpix = (float(header["CRPIX1"]) - 1.0, float(header["CRPIX2"]) - 1.0)
    crval = (float(header["CRVAL1"]), float(header["CRVAL2"]))
    cd = _read_linear(header)

    pv = {1: np.zeros(N_TPV_TERMS), 2: np.zeros(N_TPV_TERMS)}
    present = {1: False, 2: False}
    for key in header:
        m = _PV_KEY.match(str(key).upper())
        if not m:
            continue
        axis, k = int(m.group(1)), int(m.group(2))
        if kind == "TAN":
            raise HeaderError(f"WCS header is RA---TAN/DEC--TAN but carries {key} = {header[key]!r}: for TAN, "
                             "wcslib reads PVi_m as projection parameters, not TPV distortion. If these are "
                             "TPV coefficients (old SCAMP 'TAN+PV'), set CTYPE1/2 to 'RA---TPV'/'DEC--TPV'")
        if k >= N_TPV_TERMS:
            raise HeaderError(f"WCS header {key}: TPV defines PVi_0 to PVi_{N_TPV_TERMS - 1} only")
        pv[axis][k] = float(header[key])
        present[axis] = True
    absent = [axis for axis in (1, 2) if not present[axis]]
    if absent and kind == "TPV":
        names = " and ".join(f"PV{axis}_*" for axis in absent)
        warnings.warn(f"TPV header without {names} keywords: read as the identity (plain TAN) there; "
                      "wcslib would take every coefficient as 0 and collapse the axis", AstrodaskWarning,
                      stacklevel=2)
    for axis in absent:
        pv[axis] = _IDENTITY_PV.copy()

    lonpole = float(header.get("LONPOLE", 0.0 if crval[1] == 90.0 else LONPOLE_DEG)) % 360.0
    if lonpole == 0.0:
        # LONPOLE 0 turns the tangent plane by 180 deg: (xi, eta) -> (-xi, -eta)
        pv[1], pv[2] = -pv[1], -pv[2]
    elif lonpole != LONPOLE_DEG:
        raise HeaderError(f"WCS header LONPOLE = {header.get('LONPOLE')!r} is not supported: a TAN/TPV "
                         f"solution here has the celestial pole at native longitude {LONPOLE_DEG:g} deg")
    nonzero = np.flatnonzero((pv[1] != 0.0) | (pv[2] != 0.0))
    degree = max(1, int(_TERM_DEGREE[nonzero].max())) if nonzero.size else 1
    return TPVSolution(crpix=crpix, crval=crval, cd=cd, pv1=pv[1], pv2=pv[2], degree=degree)


def _read_linear(header: fits.Header | Mapping[str, Any]) -> np.ndarray:
    """The CD matrix (deg/px) from CDi_j, PCi_j + CDELTi, or CDELTi + CROTA2."""
    cd_keys = [f"CD{r}_{c}" for r in (1, 2) for c in (1, 2)]
    pc_keys = [f"PC{r}_{c}" for r in (1, 2) for c in (1, 2)]
    has_cd = any(k in header for k in cd_keys)
    has_pc = any(k in header for k in pc_keys)
    if has_cd and has_pc:
        raise HeaderError("WCS header has both CDi_j and PCi_j keywords: ambiguous (the FITS standard "
                         "forbids it and wcslib silently uses PC); keep one form")
    if has_cd:
        return np.array([[float(header.get(f"CD{r}_{c}", 0.0)) for c in (1, 2)] for r in (1, 2)])
    cdelt = np.array([float(header.get("CDELT1", 1.0)), float(header.get("CDELT2", 1.0))])
    if has_pc:
        pc = np.array([[float(header.get(f"PC{r}_{c}", 1.0 if r == c else 0.0)) for c in (1, 2)]
                       for r in (1, 2)])
        return cdelt[:, None] * pc
    if "CDELT1" not in header or "CDELT2" not in header:
        raise HeaderError("WCS header has no CDi_j, no PCi_j and not both CDELT1 and CDELT2: "
                         "the pixel scale is unknown")
    rho = math.radians(float(header.get("CROTA2", 0.0)))
    c, s = math.cos(rho), math.sin(rho)
    return np.array([[cdelt[0] * c, -cdelt[1] * s], [cdelt[0] * s, cdelt[1] * c]])


def to_astropy_wcs(sol: TPVSolution, *, shape: tuple[int, int] | None = None) -> WCS:
    """The solution as an :class:`astropy.wcs.WCS`, built from :func:`tpv_header`.

    Parameters
    ----------
    sol
        The solution.
    shape
        Image shape (ny, nx): sets ``pixel_shape`` (nx, ny).

    Returns
    -------
    astropy.wcs.WCS
        Use origin 0 (``pixel_to_world_values``) for astrodask's 0-based pixels.

    Notes
    -----
    wcslib translates TPV into its own distortion structure when the WCS is set up:
    afterwards ``wcs.wcs.ctype`` reads ``RA---TAN`` and ``wcs.wcs.get_pv()`` is empty,
    but the transformations apply the terms and ``wcs.to_header(relax=True)`` still
    writes ``RA---TPV`` with every PV keyword.  Prefer :func:`tpv_header` for writing.
    """
    wcs = WCS(tpv_header(sol, shape=shape))
    if shape is not None:
        wcs.pixel_shape = (int(shape[1]), int(shape[0]))
    return wcs
