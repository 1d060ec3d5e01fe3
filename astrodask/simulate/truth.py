"""The truth WCS of a simulated Condor exposure: TAN + TPV with a known distortion.

:func:`condor_wcs` makes it. Orientation (the convention of :mod:`astrodask.wcsutil`):
``rotation_deg`` is the position angle of the image +j axis, east of north; ``parity=+1`` is
the usual sky view (east left when north is up and +i points right), ``parity=-1`` is
mirrored.  With ``s`` the scale in degrees and ``t`` the rotation, the CD matrix is::

    CD = s * [[-parity * cos t, sin t],
              [ parity * sin t, cos t]]

TPV terms (``x, y`` are the intermediate world coordinates in degrees,
``CD @ (pixel - CRPIX)``; ``r^2 = x^2 + y^2``)::

    xi  = PV1_1 x + PV1_4 x^2 + PV1_5 x y + PV1_6 y^2 + PV1_7 x^3 + PV1_9 x y^2
    eta = PV2_1 y + PV2_4 y^2 + PV2_5 y x + PV2_6 x^2 + PV2_7 y^3 + PV2_9 y x^2

with ``PV1_1 = PV2_1 = 1`` and ``PV1_7 = PV1_9 = PV2_7 = PV2_9 = k``, so the cubic part
is the radial ``k r^2 (x, y)``; the quadratic terms are a fixed, asymmetric pattern
(:data:`QUADRATIC_DISTORTION_PATTERN`).  All terms are scaled together so that the
largest displacement over the four corners, between the TPV WCS and the same WCS
without its PV terms, is ``|distortion_px|`` pixels.
"""

from __future__ import annotations

import numpy as np
from astropy.wcs import WCS

from astrodask.errors import ConfigError
from astrodask.simulate._checks import check_positive, check_shape
from astrodask.simulate.constants import CONDOR_SCALE_ARCSEC, CONDOR_SHAPE, DEFAULT_DISTORTION_PX
from astrodask.wcsutil import cd_matrix

__all__ = ["condor_wcs"]

#: Quadratic TPV pattern, in units of the corner radius R: rows are (xi, eta), columns the
#: coefficients of (u^2, u v, v^2) with u = x / R, v = y / R, before the overall scaling.
QUADRATIC_DISTORTION_PATTERN: tuple[tuple[float, float, float], ...] = (
    (0.12, -0.07, 0.05),
    (-0.04, 0.09, 0.06),
)



def condor_wcs(ra_deg: float, dec_deg: float, *, shape: tuple[int, int] = CONDOR_SHAPE,
               scale_arcsec: float = CONDOR_SCALE_ARCSEC, rotation_deg: float = 0.0,
               parity: int = 1, distortion_px: float = DEFAULT_DISTORTION_PX) -> WCS:
    """A Condor-like truth WCS: TAN + TPV, CRPIX at the centre of the frame.

    Parameters
    ----------
    ra_deg, dec_deg
        Sky position of the centre of the frame (CRVAL), degrees.
    shape
        Image shape (ny, nx), pixels.
    scale_arcsec
        Plate scale at the centre, arcsec per pixel.
    rotation_deg
        Position angle of the image +j axis, degrees east of north.
    parity
        +1: usual sky view (east left when north is up); -1: mirrored.
    distortion_px
        Largest displacement at the four corners caused by the TPV terms, pixels.
        Positive: the sky seen at the corners lies farther out than the central scale
        implies (pincushion in the sky-to-image sense); negative: the opposite; 0: none.

    Returns
    -------
    astropy.wcs.WCS
        ``RA---TPV``/``DEC--TPV`` with the PV layout of this module's docstring and
        ``pixel_shape = (nx, ny)``.  Use origin 0 (``world_to_pixel_values``).

    Notes
    -----
    wcslib translates TPV when the WCS is first used (``wcs.wcs.set()``): afterwards
    ``wcs.wcs.ctype`` reads ``RA---TAN`` and ``wcs.wcs.get_pv()`` is empty, the terms
    living in wcslib's distortion structure; the transformations still apply them and
    ``wcs.to_header(relax=True)`` writes ``RA---TPV`` with every PV keyword.
    """
    ny, nx = check_shape(shape)
    check_positive("scale_arcsec", scale_arcsec)
    if parity not in (1, -1):
        raise ConfigError(f"parity = {parity!r} must be +1 (sky view) or -1 (mirrored)")
    if not -90.0 <= dec_deg <= 90.0:
        raise ConfigError(f"dec_deg = {dec_deg!r} is out of range: allowed -90 to 90 deg")
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TPV", "DEC--TPV"]
    wcs.wcs.cunit = ["deg", "deg"]
    wcs.wcs.crval = [float(ra_deg) % 360.0, float(dec_deg)]
    wcs.wcs.crpix = [(nx - 1) / 2.0 + 1.0, (ny - 1) / 2.0 + 1.0]  # 0-based centre -> 1-based CRPIX
    wcs.wcs.cd = cd_matrix(scale_arcsec, rotation_deg, parity)
    wcs.wcs.radesys = "ICRS"
    wcs.wcs.set_pv(_tpv_terms(shape, scale_arcsec, rotation_deg, parity, distortion_px))
    wcs.pixel_shape = (nx, ny)
    wcs.wcs.set()
    return wcs


def _tpv_terms(shape: tuple[int, int], scale_arcsec: float, rotation_deg: float, parity: int,
               distortion_px: float) -> list[tuple[int, int, float]]:
    """PV (axis, index, value) triples reaching ``distortion_px`` at the worst corner."""
    ny, nx = shape
    cd = cd_matrix(scale_arcsec, rotation_deg, parity)
    half = np.array([[-1, -1], [1, -1], [-1, 1], [1, 1]]) * np.array([(nx - 1) / 2.0, (ny - 1) / 2.0])
    corners = half @ cd.T  # intermediate world coordinates (deg) of the four corners
    radius = float(np.hypot(corners[:, 0], corners[:, 1]).max())
    (a1, a2, a3), (b1, b2, b3) = QUADRATIC_DISTORTION_PATTERN

    def displacement(k: float, q: float) -> np.ndarray:
        x, y = corners[:, 0], corners[:, 1]
        r2 = x * x + y * y
        dxi = k * r2 * x + q / radius * (a1 * x * x + a2 * x * y + a3 * y * y)
        deta = k * r2 * y + q / radius * (b1 * x * x + b2 * x * y + b3 * y * y)
        return np.hypot(dxi, deta)

    k0 = 1.0 / radius**2  # radial displacement of 1 (deg) at the corner radius, before scaling
    worst = float(displacement(k0, 1.0).max())
    amplitude = distortion_px * scale_arcsec / 3600.0 / worst  # deg per unit pattern
    k, q = k0 * amplitude, amplitude / radius
    return [
        (1, 0, 0.0), (1, 1, 1.0), (1, 2, 0.0),
        (1, 4, q * a1), (1, 5, q * a2), (1, 6, q * a3),
        (1, 7, k), (1, 8, 0.0), (1, 9, k), (1, 10, 0.0),
        (2, 0, 0.0), (2, 1, 1.0), (2, 2, 0.0),
        (2, 4, q * b3), (2, 5, q * b2), (2, 6, q * b1),
        (2, 7, k), (2, 8, 0.0), (2, 9, k), (2, 10, 0.0),
    ]
