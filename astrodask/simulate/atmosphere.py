"""Atmospheric displacement of the stars of one exposure: :class:`TurbulenceSpec` and :class:`DisplacementField`.

In a 30-90 s ground-based exposure the turbulent atmosphere moves every star by 10-30 mas,
coherently over several arcminutes (Bernstein et al. 2017, PASP 129, 074503). The field is
close to curl-free (E-mode): the gradient of a scalar. We simulate it as the gradient of a
Gaussian random potential ``phi`` on the tangent plane,

    d(xi, eta) = grad phi,      P_d(f) = |f|^2 P_phi(f) = (f^2 + f0^2)^(-11/6),   f0 = 1 / L0,

so that the displacement has a von Karman spectrum of outer scale ``L0`` (``f`` in cycles per
degree): the trace of its two-point correlation is the Matern function of order 5/6,
``C(r) / C(0) = 2^(1/6) / Gamma(5/6) x^(5/6) K_(5/6)(x)``, ``x = 2 pi r / L0``
(:func:`von_karman_correlation`). An anisotropic field stretches the spectrum: correlation
lengths ``L0 sqrt(q)`` along the position angle ``angle_deg`` and ``L0 / sqrt(q)`` across it,
``q = anisotropy``.

The potential is drawn on an FFT grid covering the frame with padding (the FFT is periodic),
its gradient taken in Fourier space (so the grid field is curl-free to rounding), and the
realisation scaled so that its rms per axis over the frame is exactly ``rms_mas``
(``sqrt(mean(d_xi^2 + d_eta^2) / 2)``, the mean displacement included: a real exposure's
displacement has one too, which the WCS fit absorbs). Positions in between are interpolated
by bicubic splines (:class:`scipy.interpolate.RectBivariateSpline`): 1e5 stars take a few ms.

The tangent plane is the gnomonic projection about the field's tangent point (the frame centre
for :func:`field_for_wcs`), ``xi`` towards east, ``eta`` towards north, in degrees. A star of
true position (ra, dec) is seen at :meth:`DisplacementField.displace` ``(ra, dec)``;
:meth:`DisplacementField.undisplace` inverts that. The field travels with the truth of a
simulated exposure as two image extensions (:meth:`DisplacementField.to_hdus`,
:meth:`DisplacementField.from_hdus`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from scipy import fft as sfft
from scipy.interpolate import RectBivariateSpline
from scipy.special import gamma, kv

from astrodask.errors import ConfigError, InputFileError
from astrodask.sphere import gnomonic, inverse_gnomonic
from astrodask.simulate._checks import check_positive, resolve_shape
from astrodask.simulate.constants import MAS_PER_DEG

__all__ = ["DEFAULT_OUTER_SCALE_ARCMIN", "DisplacementField", "TruthMapping", "TurbulenceSpec", "field_for_wcs",
           "turbulence_field", "von_karman_correlation"]

#: Default outer scale of the von Karman spectrum, arcmin (Bernstein et al. 2017: 5-10' on DECam).
DEFAULT_OUTER_SCALE_ARCMIN: float = 10.0
#: Grid steps per (shortest) outer scale: the power lost above the grid's Nyquist frequency
#: is about (STEPS * pi)^(-5/3) of the variance, 1e-3 at 20.
GRID_STEPS_PER_OUTER_SCALE: int = 20
#: Padding of the FFT grid beyond the region covered, in (longest) outer scales, on each side:
#: the correlation across the periodic wrap is then below 1e-5 of the variance.
GRID_PADDING_OUTER_SCALES: float = 2.0
#: The region covered around a frame: this many times its half-diagonal (the renderers project
#: stars to 1.2 half-diagonals) plus GRID_MARGIN_DEG.
GRID_REACH_FACTOR: float = 1.5
GRID_MARGIN_DEG: float = 0.05
#: Largest FFT grid per axis, points (a 4096^2 grid takes ~1 s and 0.3 GB).
MAX_GRID_POINTS: int = 4096
#: Fixed-point iterations of :meth:`DisplacementField.undisplace` (each gains a factor
#: |grad d| ~ 1e-7; two reach 1e-12 mas).
UNDISPLACE_ITERATIONS: int = 3
#: Exponent of the von Karman spectrum of the displacement, (f^2 + f0^2)^VON_KARMAN_EXPONENT.
VON_KARMAN_EXPONENT: float = -11.0 / 6.0
#: Order of the Matern function that is the displacement's correlation.
MATERN_ORDER: float = 5.0 / 6.0
#: Names of the extensions that carry the field beside a truth WCS.
HDU_DXI: str = "TURB_DXI"
HDU_DETA: str = "TURB_DETA"


@dataclass(frozen=True)
class TurbulenceSpec:
    """What atmospheric displacement to simulate; validated on construction.

    Attributes
    ----------
    rms_mas
        Rms displacement per axis over the frame, mas (``sqrt(mean(d_xi^2 + d_eta^2) / 2)``).
    outer_scale_arcmin
        Outer scale ``L0`` of the von Karman spectrum, arcmin.
    anisotropy
        Ratio of the correlation lengths along and across ``angle_deg`` (1: isotropic).
    angle_deg
        Position angle of the long correlation axis, degrees from +xi towards +eta.
    seed
        Seed of the realisation: the same spec over the same region gives the same field.
    """

    rms_mas: float
    outer_scale_arcmin: float = DEFAULT_OUTER_SCALE_ARCMIN
    anisotropy: float = 1.0
    angle_deg: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive("rms_mas", self.rms_mas, allow_zero=True)
        check_positive("outer_scale_arcmin", self.outer_scale_arcmin)
        check_positive("anisotropy", self.anisotropy)
        if not math.isfinite(self.angle_deg):
            raise ConfigError(f"angle_deg = {self.angle_deg!r} must be finite")
        if int(self.seed) != self.seed or self.seed < 0:
            raise ConfigError(f"seed = {self.seed!r} must be a non-negative integer")

    @property
    def outer_scale_deg(self) -> float:
        """The outer scale, degrees."""
        return self.outer_scale_arcmin / 60.0


def von_karman_correlation(r_deg: np.ndarray, outer_scale_deg: float) -> np.ndarray:
    """Normalised correlation of an isotropic field of this module at separations ``r_deg``.

    ``<d(x) . d(x + r)> / <|d|^2>``: the Matern function of order 5/6 and length
    ``outer_scale_deg / (2 pi)``, 1 at ``r = 0``.
    """
    x = 2.0 * math.pi * np.abs(np.asarray(r_deg, dtype=np.float64)) / outer_scale_deg
    nu = MATERN_ORDER
    with np.errstate(invalid="ignore"):
        c = 2.0 ** (1.0 - nu) / gamma(nu) * x**nu * kv(nu, x)
    return np.where(x > 0, c, 1.0)


@dataclass(frozen=True, eq=False)
class DisplacementField:
    """One realisation of the displacement on a regular tangent-plane grid.

    Attributes
    ----------
    spec
        What was simulated.
    tangent_ra_deg, tangent_dec_deg
        Tangent point of the plane, degrees.
    xi0_deg, eta0_deg, step_deg
        Grid: node ``(k, m)`` (row ``k``, column ``m``) is at ``xi = xi0 + m step``,
        ``eta = eta0 + k step``, degrees.
    dxi_mas, deta_mas
        The displacement at the nodes, (n_eta, n_xi) float64, mas.
    frame_half_widths_deg
        (xi, eta) half-widths of the box over which ``rms_mas`` holds, degrees.
    """

    spec: TurbulenceSpec
    tangent_ra_deg: float
    tangent_dec_deg: float
    xi0_deg: float
    eta0_deg: float
    step_deg: float
    dxi_mas: np.ndarray = field(repr=False)
    deta_mas: np.ndarray = field(repr=False)
    frame_half_widths_deg: tuple[float, float] = (0.0, 0.0)

    @property
    def xi_nodes_deg(self) -> np.ndarray:
        """Grid coordinates along xi, degrees."""
        return self.xi0_deg + self.step_deg * np.arange(self.dxi_mas.shape[1])

    @property
    def eta_nodes_deg(self) -> np.ndarray:
        """Grid coordinates along eta, degrees."""
        return self.eta0_deg + self.step_deg * np.arange(self.dxi_mas.shape[0])

    @cached_property
    def _splines(self) -> tuple[RectBivariateSpline, RectBivariateSpline]:
        eta, xi = self.eta_nodes_deg, self.xi_nodes_deg
        return (RectBivariateSpline(eta, xi, self.dxi_mas, kx=3, ky=3),
                RectBivariateSpline(eta, xi, self.deta_mas, kx=3, ky=3))

    def displacement_mas(self, xi_deg: np.ndarray, eta_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The displacement (d_xi, d_eta), mas, at tangent-plane positions (degrees).

        Raises
        ------
        ConfigError
            A finite position lies outside the grid (NaN positions give NaN).
        """
        xi = np.asarray(xi_deg, dtype=np.float64)
        eta = np.asarray(eta_deg, dtype=np.float64)
        xi, eta = np.broadcast_arrays(xi, eta)
        ok = np.isfinite(xi) & np.isfinite(eta)
        xs, es = self.xi_nodes_deg, self.eta_nodes_deg
        outside = ok & ((xi < xs[0]) | (xi > xs[-1]) | (eta < es[0]) | (eta > es[-1]))
        if outside.any():
            k = int(np.flatnonzero(outside.ravel())[0])
            raise ConfigError(
                f"position (xi, eta) = ({xi.ravel()[k]:.4f}, {eta.ravel()[k]:.4f}) deg is outside the turbulence "
                f"grid ({xs[0]:.4f}..{xs[-1]:.4f}, {es[0]:.4f}..{es[-1]:.4f}) deg; make the field over a larger "
                "region (turbulence_field(..., half_widths_deg=...))")
        dxi = np.full(xi.shape, np.nan)
        deta = np.full(xi.shape, np.nan)
        sx, se = self._splines
        dxi[ok] = sx.ev(eta[ok], xi[ok])
        deta[ok] = se.ev(eta[ok], xi[ok])
        return dxi, deta

    def displacement_at_sky_mas(self, ra_deg: np.ndarray, dec_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The displacement (d_xi, d_eta), mas, of stars at true sky positions (degrees)."""
        xi, eta = gnomonic(np.asarray(ra_deg, np.float64), np.asarray(dec_deg, np.float64),
                           self.tangent_ra_deg, self.tangent_dec_deg)
        return self.displacement_mas(np.degrees(xi), np.degrees(eta))

    def displace(self, ra_deg: np.ndarray, dec_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where stars of true position (ra, dec) are seen on this exposure, degrees."""
        xi, eta = gnomonic(np.asarray(ra_deg, np.float64), np.asarray(dec_deg, np.float64),
                           self.tangent_ra_deg, self.tangent_dec_deg)
        dxi, deta = self.displacement_mas(np.degrees(xi), np.degrees(eta))
        return inverse_gnomonic(xi + np.radians(dxi / MAS_PER_DEG), eta + np.radians(deta / MAS_PER_DEG),
                                self.tangent_ra_deg, self.tangent_dec_deg)

    def undisplace(self, ra_deg: np.ndarray, dec_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The true position of stars seen at (ra, dec): the inverse of :meth:`displace`, degrees."""
        xi_seen, eta_seen = gnomonic(np.asarray(ra_deg, np.float64), np.asarray(dec_deg, np.float64),
                                     self.tangent_ra_deg, self.tangent_dec_deg)
        xi, eta = xi_seen, eta_seen
        for _ in range(UNDISPLACE_ITERATIONS):
            dxi, deta = self.displacement_mas(np.degrees(xi), np.degrees(eta))
            xi = xi_seen - np.radians(dxi / MAS_PER_DEG)
            eta = eta_seen - np.radians(deta / MAS_PER_DEG)
        return inverse_gnomonic(xi, eta, self.tangent_ra_deg, self.tangent_dec_deg)

    def to_hdus(self) -> list[fits.ImageHDU]:
        """The field as two image extensions (``TURB_DXI``, ``TURB_DETA``, mas), the spec and grid in their headers."""
        header = fits.Header()
        header["TURBRMS"] = (float(self.spec.rms_mas), "[mas] rms displacement per axis over the frame")
        header["TURBL0"] = (float(self.spec.outer_scale_arcmin), "[arcmin] von Karman outer scale")
        header["TURBANIS"] = (float(self.spec.anisotropy), "correlation length ratio along/across TURBANG")
        header["TURBANG"] = (float(self.spec.angle_deg), "[deg] long axis, from +xi towards +eta")
        header["TURBSEED"] = (int(self.spec.seed), "seed of the realisation")
        header["TANRA"] = (float(self.tangent_ra_deg), "[deg] tangent point of the grid, RA")
        header["TANDEC"] = (float(self.tangent_dec_deg), "[deg] tangent point of the grid, Dec")
        header["XI0"] = (float(self.xi0_deg), "[deg] xi of column 0 (gnomonic, towards east)")
        header["ETA0"] = (float(self.eta0_deg), "[deg] eta of row 0 (gnomonic, towards north)")
        header["STEP"] = (float(self.step_deg), "[deg] grid step on both axes")
        header["FRAMEHXI"] = (float(self.frame_half_widths_deg[0]), "[deg] half-width in xi where TURBRMS holds")
        header["FRAMEHET"] = (float(self.frame_half_widths_deg[1]), "[deg] half-width in eta where TURBRMS holds")
        header["BUNIT"] = "mas"
        header["COMMENT"] = "Atmospheric displacement of the stars (astrodask.simulate.atmosphere): a star of true"
        header["COMMENT"] = "position (xi, eta) is seen at (xi + TURB_DXI, eta + TURB_DETA), bicubic between nodes."
        return [fits.ImageHDU(data=np.asarray(self.dxi_mas, np.float64), header=header.copy(), name=HDU_DXI),
                fits.ImageHDU(data=np.asarray(self.deta_mas, np.float64), header=header.copy(), name=HDU_DETA)]

    @classmethod
    def from_hdus(cls, hdus: fits.HDUList, *, source: str = "the HDU list") -> DisplacementField | None:
        """The field written by :meth:`to_hdus`, or None when ``hdus`` carries none."""
        names = [h.name for h in hdus]
        if HDU_DXI not in names and HDU_DETA not in names:
            return None
        if HDU_DXI not in names or HDU_DETA not in names:
            raise InputFileError(f"{source} has only one of the extensions {HDU_DXI}, {HDU_DETA}: "
                                 "rewrite it with astrodask.simulate")
        h = hdus[HDU_DXI].header
        try:
            spec = TurbulenceSpec(rms_mas=float(h["TURBRMS"]), outer_scale_arcmin=float(h["TURBL0"]),
                                  anisotropy=float(h["TURBANIS"]), angle_deg=float(h["TURBANG"]),
                                  seed=int(h["TURBSEED"]))
            return cls(spec=spec, tangent_ra_deg=float(h["TANRA"]), tangent_dec_deg=float(h["TANDEC"]),
                       xi0_deg=float(h["XI0"]), eta0_deg=float(h["ETA0"]), step_deg=float(h["STEP"]),
                       dxi_mas=np.array(hdus[HDU_DXI].data, dtype=np.float64),  # a copy: the file may close
                       deta_mas=np.array(hdus[HDU_DETA].data, dtype=np.float64),
                       frame_half_widths_deg=(float(h["FRAMEHXI"]), float(h["FRAMEHET"])))
        except KeyError as err:
            raise InputFileError(f"{source}: extension {HDU_DXI} lacks keyword {err}; rewrite it with "
                                 "astrodask.simulate") from err


def turbulence_field(spec: TurbulenceSpec, *, tangent_ra_deg: float, tangent_dec_deg: float,
                     half_widths_deg: tuple[float, float],
                     frame_half_widths_deg: tuple[float, float] | None = None) -> DisplacementField:
    """Draw a curl-free von Karman displacement field over a tangent-plane box.

    Parameters
    ----------
    spec
        Amplitude, outer scale, anisotropy and seed.
    tangent_ra_deg, tangent_dec_deg
        Tangent point, degrees.
    half_widths_deg
        (xi, eta) half-widths of the box where the field can be evaluated, degrees; the
        FFT grid adds GRID_PADDING_OUTER_SCALES outer scales on each side.
    frame_half_widths_deg
        (xi, eta) half-widths of the box over which the rms is ``spec.rms_mas``; default
        ``half_widths_deg``.

    Returns
    -------
    DisplacementField

    Raises
    ------
    ConfigError
        The grid would exceed MAX_GRID_POINTS per axis (an outer scale too small for the box).
    """
    hx, he = (float(v) for v in half_widths_deg)
    check_positive("half_widths_deg[0]", hx)
    check_positive("half_widths_deg[1]", he)
    fx, fe = (float(v) for v in (frame_half_widths_deg or (hx, he)))
    if not (0.0 < fx <= hx and 0.0 < fe <= he):
        raise ConfigError(f"frame_half_widths_deg = {frame_half_widths_deg!r} must be positive and within "
                          f"half_widths_deg = {half_widths_deg!r}")
    q = float(spec.anisotropy)
    stretch = math.sqrt(max(q, 1.0 / q))
    step = spec.outer_scale_deg / stretch / GRID_STEPS_PER_OUTER_SCALE
    pad = GRID_PADDING_OUTER_SCALES * spec.outer_scale_deg * stretch
    n_xi = sfft.next_fast_len(int(math.ceil(2.0 * (hx + pad) / step)) + 1, real=True)
    n_eta = sfft.next_fast_len(int(math.ceil(2.0 * (he + pad) / step)) + 1, real=True)
    if max(n_xi, n_eta) > MAX_GRID_POINTS:
        raise ConfigError(
            f"a turbulence grid over {2 * hx:.3f} x {2 * he:.3f} deg with outer scale {spec.outer_scale_arcmin} arcmin "
            f"(anisotropy {q}) needs {n_xi} x {n_eta} points, more than {MAX_GRID_POINTS} per axis: use a larger "
            "outer scale or a smaller field")
    xi0 = -0.5 * (n_xi - 1) * step
    eta0 = -0.5 * (n_eta - 1) * step

    rng = np.random.default_rng(int(spec.seed))
    white = sfft.rfft2(rng.standard_normal((n_eta, n_xi)))
    f_eta = sfft.fftfreq(n_eta, d=step)[:, None]  # cycles per degree
    f_xi = sfft.rfftfreq(n_xi, d=step)[None, :]
    t = math.radians(spec.angle_deg)
    f_along = f_xi * math.cos(t) + f_eta * math.sin(t)
    f_across = -f_xi * math.sin(t) + f_eta * math.cos(t)
    # correlation length sqrt(q) L0 along the axis: the spectrum is compressed by sqrt(q) there
    f_eff2 = f_along**2 * q + f_across**2 / q
    f2 = f_xi**2 + f_eta**2
    f0 = 1.0 / spec.outer_scale_deg
    with np.errstate(divide="ignore"):
        amplitude = np.sqrt((f_eff2 + f0**2) ** VON_KARMAN_EXPONENT / f2)
    amplitude[0, 0] = 0.0  # the potential's constant term moves nothing
    if n_eta % 2 == 0:
        amplitude[n_eta // 2, :] = 0.0  # Nyquist terms: their gradient is not real
    if n_xi % 2 == 0:
        amplitude[:, -1] = 0.0
    potential = white * amplitude
    dxi = sfft.irfft2(2j * math.pi * f_xi * potential, s=(n_eta, n_xi))
    deta = sfft.irfft2(2j * math.pi * f_eta * potential, s=(n_eta, n_xi))

    xs = xi0 + step * np.arange(n_xi)
    es = eta0 + step * np.arange(n_eta)
    inside = (np.abs(es)[:, None] <= fe) & (np.abs(xs)[None, :] <= fx)
    rms = math.sqrt(0.5 * float(np.mean(dxi[inside] ** 2 + deta[inside] ** 2)))
    scale = spec.rms_mas / rms if rms > 0 else 0.0
    return DisplacementField(spec=spec, tangent_ra_deg=float(tangent_ra_deg) % 360.0,
                             tangent_dec_deg=float(tangent_dec_deg), xi0_deg=xi0, eta0_deg=eta0, step_deg=step,
                             dxi_mas=dxi * scale, deta_mas=deta * scale, frame_half_widths_deg=(fx, fe))


def field_for_wcs(spec: TurbulenceSpec, wcs: WCS, *, shape: tuple[int, int] | None = None) -> DisplacementField:
    """A displacement field over the frame of a WCS, tangent at the frame centre.

    ``spec.rms_mas`` holds over the box enclosing the frame's corners; the field can be
    evaluated to GRID_REACH_FACTOR half-diagonals (plus GRID_MARGIN_DEG) from the centre.

    Parameters
    ----------
    spec
        The turbulence.
    wcs
        The frame's truth WCS (origin 0).
    shape
        (ny, nx), pixels; default from ``wcs.pixel_shape``.
    """
    ny, nx = resolve_shape(shape, wcs)
    ra_c, dec_c = (float(v) for v in wcs.pixel_to_world_values((nx - 1) / 2.0, (ny - 1) / 2.0))
    ci = np.array([-0.5, nx - 0.5, -0.5, nx - 0.5])
    cj = np.array([-0.5, -0.5, ny - 0.5, ny - 0.5])
    c_ra, c_dec = wcs.pixel_to_world_values(ci, cj)
    xi, eta = gnomonic(np.asarray(c_ra), np.asarray(c_dec), ra_c, dec_c)
    xi, eta = np.degrees(xi), np.degrees(eta)
    frame = (float(np.abs(xi).max()), float(np.abs(eta).max()))
    reach = GRID_REACH_FACTOR * float(np.hypot(xi, eta).max()) + GRID_MARGIN_DEG
    return turbulence_field(spec, tangent_ra_deg=ra_c, tangent_dec_deg=dec_c, half_widths_deg=(reach, reach),
                            frame_half_widths_deg=frame)


@dataclass(frozen=True, eq=False)
class TruthMapping:
    """The true sky <-> pixel mapping of a simulated exposure: its truth WCS, seen through the atmosphere.

    A star of true position (ra, dec) lands on pixel ``wcs.world_to_pixel(field.displace(ra, dec))``;
    without a field this is the truth WCS itself, to the bit. It has the two methods that
    scoring uses (``pixel_to_world_values``, ``world_to_pixel_values``, origin 0), so it stands
    where a truth WCS stood (e.g. ``benchmarks/bench_solve.score_wcs``).

    Attributes
    ----------
    wcs
        The truth WCS (no atmosphere).
    field
        The atmospheric displacement, or None.
    """

    wcs: WCS
    field: DisplacementField | None = None

    @property
    def pixel_shape(self) -> tuple[int, int] | None:
        """(nx, ny) of the truth WCS."""
        return self.wcs.pixel_shape

    def pixel_to_world_values(self, i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """True sky position (degrees) of what lands on 0-based pixel (i, j)."""
        ra, dec = self.wcs.pixel_to_world_values(i, j)
        if self.field is None:
            return ra, dec
        return self.field.undisplace(np.asarray(ra), np.asarray(dec))

    def world_to_pixel_values(self, ra_deg: np.ndarray, dec_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """0-based pixel where a star of true sky position (ra, dec), degrees, lands."""
        if self.field is None:
            return self.wcs.world_to_pixel_values(ra_deg, dec_deg)
        ra, dec = self.field.displace(np.asarray(ra_deg, np.float64), np.asarray(dec_deg, np.float64))
        return self.wcs.world_to_pixel_values(ra, dec)
