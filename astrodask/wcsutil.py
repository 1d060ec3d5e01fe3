"""Small WCS helpers shared by the pointing, the simulator and the solver.

The CD matrix convention used everywhere in astrodask: ``rotation_deg`` is the
position angle of the image's +j axis, measured from north through east, and
``parity`` is +1 for the usual sky view (north up, east left at rotation 0) and
-1 for a mirrored image. Intermediate world coordinates (xi, eta) point east and
north, in degrees.
"""

from __future__ import annotations

import numpy as np
from astropy.wcs import WCS


def cd_matrix(scale_arcsec: float, rotation_deg: float, parity: int) -> np.ndarray:
    """The 2 x 2 CD matrix (deg/px) for a plate scale, a rotation and a parity.

    Parameters
    ----------
    scale_arcsec
        Plate scale, arcsec per pixel.
    rotation_deg
        Position angle of the +j axis, east of north, degrees.
    parity
        +1 (sky view) or -1 (mirrored).

    Returns
    -------
    numpy.ndarray
        ``[[CD1_1, CD1_2], [CD2_1, CD2_2]]`` in degrees per pixel.
    """
    s = scale_arcsec / 3600.0
    c, n = np.cos(np.radians(rotation_deg)), np.sin(np.radians(rotation_deg))
    return np.array([[-parity * s * c, s * n], [parity * s * n, s * c]])


def cd_to_scale_rotation_parity(cd: np.ndarray) -> tuple[float, float, int]:
    """Invert :func:`cd_matrix`: (scale arcsec/px, rotation deg, parity) of a CD matrix.

    For a CD matrix with shear or unequal axis scales, the scale is the
    geometric mean and the rotation is that of the +j axis.
    """
    cd = np.asarray(cd, dtype=np.float64)
    det = float(np.linalg.det(cd))
    parity = -1 if det > 0 else 1
    scale = float(np.sqrt(abs(det))) * 3600.0
    rotation = float(np.degrees(np.arctan2(cd[0, 1], cd[1, 1])))
    return scale, rotation, parity


def tan_wcs(ra_deg: float, dec_deg: float, *, shape: tuple[int, int], scale_arcsec: float,
            rotation_deg: float, parity: int) -> WCS:
    """A plain TAN WCS centred on (ra, dec) at the image centre.

    Parameters
    ----------
    ra_deg, dec_deg
        Sky position of the image centre, degrees.
    shape
        Image shape (ny, nx).
    scale_arcsec, rotation_deg, parity
        See :func:`cd_matrix`.
    """
    ny, nx = shape
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [float(ra_deg) % 360.0, float(dec_deg)]
    # FITS CRPIX is 1-based: the 0-based centre (nx-1)/2 is CRPIX (nx+1)/2.
    wcs.wcs.crpix = [(nx + 1) / 2.0, (ny + 1) / 2.0]
    wcs.wcs.cd = cd_matrix(scale_arcsec, rotation_deg, parity)
    wcs.pixel_shape = (nx, ny)
    return wcs


def wcs_error_mas(wcs: WCS, truth: WCS, shape: tuple[int, int], *, step_px: float = 100.0) -> np.ndarray:
    """Angular distance (mas) between two WCSs' sky positions on a pixel grid over the whole image.

    The grid runs every ``step_px`` pixels and includes the image's edges and
    corners (0-based pixel centres).
    """
    ny, nx = shape
    i = np.unique(np.append(np.arange(0.0, nx - 1, step_px), nx - 1.0))
    j = np.unique(np.append(np.arange(0.0, ny - 1, step_px), ny - 1.0))
    ii, jj = np.meshgrid(i, j)
    ra1, dec1 = wcs.pixel_to_world_values(ii.ravel(), jj.ravel())
    ra2, dec2 = truth.pixel_to_world_values(ii.ravel(), jj.ravel())
    from astrodask.sphere import angular_separation_deg

    return angular_separation_deg(ra1, dec1, ra2, dec2) * 3.6e6
