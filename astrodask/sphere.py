"""Geometry on the sphere: unit vectors and exact angular separations, used by every module that needs them."""

from __future__ import annotations

from typing import Any

import numpy as np


def unit_vectors(ra_deg: Any, dec_deg: Any) -> np.ndarray:
    """Unit vectors of sky positions.

    Parameters
    ----------
    ra_deg, dec_deg
        Right ascension and declination, degrees (scalars or arrays of one shape).

    Returns
    -------
    numpy.ndarray
        Shape (3, ...): x, y, z along the first axis.
    """
    ra = np.radians(np.asarray(ra_deg, dtype=np.float64))
    dec = np.radians(np.asarray(dec_deg, dtype=np.float64))
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])


def angular_separation_deg(ra1_deg: Any, dec1_deg: Any, ra2_deg: Any, dec2_deg: Any) -> np.ndarray:
    """Angular separation between sky positions, degrees, exact at all scales.

    Uses ``atan2(|p1 x p2|, p1 . p2)`` on unit vectors, so it is accurate for
    tiny and large angles, across RA = 0/360 and at the poles.

    Parameters
    ----------
    ra1_deg, dec1_deg, ra2_deg, dec2_deg
        Positions in degrees; broadcast against each other.

    Returns
    -------
    numpy.ndarray
        Separations, degrees.
    """
    ra1, dec1, ra2, dec2 = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64)
                                                 for v in (ra1_deg, dec1_deg, ra2_deg, dec2_deg)))
    p1 = unit_vectors(ra1, dec1)
    p2 = unit_vectors(ra2, dec2)
    cross = np.linalg.norm(np.cross(p1, p2, axis=0), axis=0)
    return np.degrees(np.arctan2(cross, np.sum(p1 * p2, axis=0)))
