"""Geometry on the sphere, in one place: unit vectors and local east/north bases, exact angular separations,
offsets by distance and position angle, gnomonic (tangent-plane) projection, cap areas.

:func:`offset_positions` (vectorised) and :func:`offset_position` (scalar) compute the same point by
two formulas; each renderer of :mod:`astrodask.simulate` keeps the one it was written with, so that
its images stay bit-identical."""

from __future__ import annotations

import math
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


def unit_vectors_east_north(ra_deg: float, dec_deg: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit vectors of a position and of the local east and north directions."""
    a, d = math.radians(ra_deg), math.radians(dec_deg)
    centre = np.array([math.cos(d) * math.cos(a), math.cos(d) * math.sin(a), math.sin(d)])
    east = np.array([-math.sin(a), math.cos(a), 0.0])
    north = np.array([-math.sin(d) * math.cos(a), -math.sin(d) * math.sin(a), math.cos(d)])
    return centre, east, north


def offset_positions(ra_deg: float, dec_deg: float, rho_rad: np.ndarray,
                     pa_rad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions at angular distance ``rho`` and position angle ``pa`` (east of north), degrees."""
    centre, east, north = unit_vectors_east_north(ra_deg, dec_deg)
    rho = np.asarray(rho_rad, dtype=np.float64)[..., None]
    pa = np.asarray(pa_rad, dtype=np.float64)[..., None]
    p = np.cos(rho) * centre + np.sin(rho) * (np.cos(pa) * north + np.sin(pa) * east)
    ra = np.degrees(np.arctan2(p[..., 1], p[..., 0])) % 360.0
    dec = np.degrees(np.arcsin(np.clip(p[..., 2], -1.0, 1.0)))
    return ra, dec


def offset_position(ra_deg: float, dec_deg: float, distance_deg: float, pa_deg: float) -> tuple[float, float]:
    """The point ``distance_deg`` from (ra, dec) towards position angle ``pa_deg`` (east of north)."""
    ra, dec = math.radians(ra_deg), math.radians(dec_deg)
    d, pa = math.radians(distance_deg), math.radians(pa_deg)
    dec2 = math.asin(math.sin(dec) * math.cos(d) + math.cos(dec) * math.sin(d) * math.cos(pa))
    ra2 = ra + math.atan2(math.sin(pa) * math.sin(d) * math.cos(dec), math.cos(d) - math.sin(dec) * math.sin(dec2))
    return math.degrees(ra2) % 360.0, math.degrees(dec2)


def cap_area_deg2(radius_deg: float) -> float:
    """Area of a spherical cap of angular radius ``radius_deg``, square degrees."""
    return 2.0 * math.pi * (1.0 - math.cos(math.radians(radius_deg))) * (180.0 / math.pi) ** 2


def gnomonic(ra: np.ndarray, dec: np.ndarray, ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray]:
    """Standard coordinates (radians) of (ra, dec) degrees about (ra0, dec0)."""
    ra, dec = np.radians(ra), np.radians(dec)
    a0, d0 = math.radians(ra0), math.radians(dec0)
    cosc = np.sin(d0) * np.sin(dec) + np.cos(d0) * np.cos(dec) * np.cos(ra - a0)
    xi = np.cos(dec) * np.sin(ra - a0) / cosc
    eta = (np.cos(d0) * np.sin(dec) - np.sin(d0) * np.cos(dec) * np.cos(ra - a0)) / cosc
    return xi, eta


def inverse_gnomonic(xi: np.ndarray, eta: np.ndarray, ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray]:
    """Sky positions (degrees) of standard coordinates ``xi``, ``eta`` (radians) about (ra0, dec0)."""
    a0, d0 = math.radians(ra0), math.radians(dec0)
    d = np.cos(d0) - eta * np.sin(d0)
    ra = a0 + np.arctan2(xi, d)
    dec = np.arctan2(np.sin(d0) + eta * np.cos(d0), np.hypot(xi, d))
    return np.degrees(ra) % 360.0, np.degrees(dec)
