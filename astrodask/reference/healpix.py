"""HEALPix (nested scheme) in both directions, in numpy: the pixel of a sky position, and the
tiles (pixels) a cone or a footprint touches with their boundaries.

Gaia's ``source_id`` encodes the level-12 nested pixel of a source (``source_id // 2**35``); the
Gaia tile cache (:mod:`astrodask.reference.store`) uses the same scheme at a coarser level. ``healpy`` and
``astropy-healpix`` are not dependencies: this is the standard ang2pix_nest of Gorski et al.
(2005) for the few calls astrodask needs.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from astropy.table import Table

from astrodask.config import GaiaConfig
from astrodask.constants import GAIA_HEALPIX_LEVEL
from astrodask.errors import ConfigError
from astrodask.reference.catalog import float_column
from astrodask.reference.footprint import enclosing_cone, select_footprint
from astrodask.sphere import angular_separation_deg

logger = logging.getLogger(__name__)



def healpix_nested_index(ra_deg: np.ndarray | float, dec_deg: np.ndarray | float, *,
                         level: int = GAIA_HEALPIX_LEVEL) -> np.ndarray:
    """HEALPix NESTED pixel index of sky positions (Gorski et al. 2005).

    The algorithm of HEALPix C++ ``loc2pix`` (nested scheme), vectorised. Gaia's
    ``source_id // 2**35`` is this index at level 12.

    Parameters
    ----------
    ra_deg, dec_deg
        Sky positions, degrees.
    level
        HEALPix order; ``nside = 2**level`` (0 to 29).

    Returns
    -------
    numpy.ndarray
        int64 pixel indices; at level 0 these are the 12 base pixels (0-3 north,
        4-7 equatorial with 4 centred on RA 0, 8-11 south).
    """
    if not 0 <= level <= 29:
        raise ConfigError(f"level = {level!r} is out of range: allowed 0 to 29")
    nside = 1 << level
    phi = np.radians(np.asarray(ra_deg, dtype=np.float64)) % (2.0 * np.pi)
    dec = np.radians(np.asarray(dec_deg, dtype=np.float64))
    z = np.sin(dec)
    za = np.abs(z)
    sth = np.cos(dec)
    tt = (phi / (0.5 * np.pi)) % 4.0
    phi, z = np.broadcast_arrays(phi, z)
    za, sth, tt = np.broadcast_to(za, z.shape), np.broadcast_to(sth, z.shape), np.broadcast_to(tt, z.shape)

    face = np.empty(z.shape, dtype=np.int64)
    ix = np.empty(z.shape, dtype=np.int64)
    iy = np.empty(z.shape, dtype=np.int64)

    eq = za <= 2.0 / 3.0
    temp1 = nside * (0.5 + tt[eq])
    temp2 = nside * z[eq] * 0.75
    jp = np.floor(temp1 - temp2).astype(np.int64)  # ascending edge line
    jm = np.floor(temp1 + temp2).astype(np.int64)  # descending edge line
    ifp, ifm = jp >> level, jm >> level
    face[eq] = np.where(ifp == ifm, ifp | 4, np.where(ifp < ifm, ifp, ifm + 8))
    ix[eq] = jm & (nside - 1)
    iy[eq] = nside - (jp & (nside - 1)) - 1

    po = ~eq
    ntt = np.minimum(np.floor(tt[po]).astype(np.int64), 3)
    tp = tt[po] - ntt
    # nside * sqrt(3 (1 - |z|)), written with cos(dec) to stay accurate near the poles
    tmp = nside * sth[po] * np.sqrt(3.0 / (1.0 + za[po]))
    jp = np.minimum(np.floor(tp * tmp).astype(np.int64), nside - 1)
    jm = np.minimum(np.floor((1.0 - tp) * tmp).astype(np.int64), nside - 1)
    north = z[po] > 0
    face[po] = np.where(north, ntt, ntt + 8)
    ix[po] = np.where(north, nside - jm - 1, jp)
    iy[po] = np.where(north, nside - jp - 1, jm)

    return face * (nside * nside) + _spread_bits(ix, level) + 2 * _spread_bits(iy, level)


def _spread_bits(v: np.ndarray, nbits: int) -> np.ndarray:
    """Put bit b of ``v`` at bit 2b (the Morton/Z-order interleave of the nested scheme)."""
    out = np.zeros_like(v)
    for b in range(nbits):
        out |= ((v >> b) & 1) << (2 * b)
    return out


# --------------------------------------------------------------------------
# Tiles: pixels touching a cone or a footprint
# --------------------------------------------------------------------------

#: HEALPix (nested) level of the tiles: nside 64, 0.839 deg^2 per tile (see the module docstring).
TILE_LEVEL = 6
#: Largest cone radius accepted by the tile lookups, deg.
MAX_RADIUS_DEG = 30.0
#: Spacing of the points sampling a cone for candidate tiles, in units of the tile size.
CANDIDATE_SPACING = 0.125
#: Candidate tiles are looked for this many tile sizes beyond the cone (HEALPix pixels
#: reach at most ~1.03 tile sizes from their centre: healpy's ``max_pixrad``).
CANDIDATE_REACH = 2.5
#: Points per edge sampling a tile's boundary for the exact touch test.
BOUNDARY_POINTS_PER_EDGE = 32
_JRLL = np.array([2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4])
_JPLL = np.array([1, 3, 5, 7, 0, 2, 4, 6, 1, 3, 5, 7])


# --------------------------------------------------------------------------
# Tile geometry
# --------------------------------------------------------------------------


def n_tiles(level: int) -> int:
    """Number of HEALPix pixels at ``level`` (12 * 4**level)."""
    check_level(level)
    return 12 * (1 << (2 * level))


def tile_size_deg(level: int) -> float:
    """Square root of a tile's area, degrees (0.916 deg at level 6)."""
    return math.degrees(math.sqrt(4.0 * math.pi / n_tiles(level)))


def tile_of(table: Table, *, level: int = TILE_LEVEL) -> np.ndarray:
    """The tile (nested HEALPix pixel at ``level``) of each star, from its (ra, dec).

    Gaia's ``source_id // 2**35`` is the level-12 pixel of the source's *reference
    position* at the time of the source's creation, which may differ from the
    pixel of the published (ra, dec) near pixel edges; tiles partition the catalog
    by the published (ra, dec), which a footprint cut then uses, so no star can be
    both in a tile and outside it. (Per-tile archive queries may use
    ``source_id`` ranges, but with a margin, then cut by :func:`tile_of`.)

    Parameters
    ----------
    table
        Reference table with ``ra`` and ``dec`` in degrees.
    level
        HEALPix level of the tiles.

    Returns
    -------
    numpy.ndarray
        int64 pixel numbers, one per row.
    """
    check_level(level)
    return healpix_nested_index(float_column(table["ra"]), float_column(table["dec"]), level=level)


def tiles_for_field(ra_deg: float, dec_deg: float, radius_deg: float, *, level: int = TILE_LEVEL) -> np.ndarray:
    """The tiles touching a cone, conservatively.

    Candidate tiles are those of points sampling the cone widened by
    :data:`CANDIDATE_REACH` tile sizes, :data:`CANDIDATE_SPACING` tile sizes apart;
    a candidate is kept when it contains the centre or a point of its boundary
    (sampled with :data:`BOUNDARY_POINTS_PER_EDGE` points per edge) lies within the
    radius plus the boundary sampling step. No touching tile is missed; a tile up
    to one sampling step (~0.03 deg at level 6) away may be included.

    Parameters
    ----------
    ra_deg, dec_deg
        Centre of the cone, degrees.
    radius_deg
        Radius, degrees (0 to :data:`MAX_RADIUS_DEG`).
    level
        HEALPix level of the tiles.

    Returns
    -------
    numpy.ndarray
        Sorted unique int64 pixel numbers.
    """
    _check_cone(ra_deg, dec_deg, radius_deg)
    candidates = _candidate_tiles(ra_deg, dec_deg, radius_deg, level=level)
    ra_b, dec_b, step = tile_boundaries(candidates, level=level)
    sep = angular_separation_deg(ra_b, dec_b, ra_deg, dec_deg)
    touching = np.min(sep, axis=1) <= radius_deg + step
    touching |= candidates == healpix_nested_index(ra_deg, dec_deg, level=level)
    return np.unique(candidates[touching])


def tiles_for_footprint(corners_deg: Any, *, margin_deg: float = GaiaConfig().margin_deg,
                        level: int = TILE_LEVEL) -> np.ndarray:
    """The tiles touching an image footprint widened by a margin, conservatively.

    A tile is kept when it contains a corner of the footprint or a point of its
    sampled boundary lies in the footprint or within ``margin_deg`` plus the
    sampling step of it (:func:`astrodask.reference.footprint.select_footprint`'s exact test).

    Parameters
    ----------
    corners_deg
        (ra, dec) of the footprint's corners in order around it, degrees, shape (N, 2)
        (:func:`astrodask.reference.footprint.footprint_corners`).
    margin_deg
        Margin around the footprint, degrees.
    level
        HEALPix level of the tiles.

    Returns
    -------
    numpy.ndarray
        Sorted unique int64 pixel numbers.
    """
    if margin_deg < 0:
        raise ValueError(f"margin_deg = {margin_deg} must be >= 0")
    ra_c, dec_c, radius = enclosing_cone(corners_deg, margin_deg=margin_deg)
    _check_cone(ra_c, dec_c, radius)
    candidates = _candidate_tiles(ra_c, dec_c, radius, level=level)
    ra_b, dec_b, step = tile_boundaries(candidates, level=level)
    points = Table({"ra": ra_b.ravel(), "dec": dec_b.ravel(),
                    "k": np.repeat(np.arange(len(candidates)), ra_b.shape[1])})
    near = select_footprint(points, corners_deg, margin_deg=margin_deg + step)
    touching = np.zeros(len(candidates), dtype=bool)
    touching[np.asarray(near["k"])] = True
    corners = np.asarray(corners_deg, dtype=np.float64)
    touching |= np.isin(candidates, healpix_nested_index(corners[:, 0], corners[:, 1], level=level))
    return np.unique(candidates[touching])


def _candidate_tiles(ra_deg: float, dec_deg: float, radius_deg: float, *, level: int) -> np.ndarray:
    """Tiles of a dense grid of points over the cone widened by :data:`CANDIDATE_REACH` tiles."""
    check_level(level)
    size = math.radians(tile_size_deg(level))
    reach = min(math.radians(radius_deg) + CANDIDATE_REACH * size, math.radians(89.0))
    half = math.tan(reach)
    # gnomonic grid around the centre: sky distances are never larger than plane distances
    n = int(math.ceil(half / (CANDIDATE_SPACING * size)))
    xi, eta = np.meshgrid(np.linspace(-half, half, 2 * n + 1), np.linspace(-half, half, 2 * n + 1))
    xi, eta = xi.ravel(), eta.ravel()
    keep = np.hypot(xi, eta) <= half
    xi, eta = xi[keep], eta[keep]
    a, d = math.radians(ra_deg), math.radians(dec_deg)
    centre = np.array([math.cos(d) * math.cos(a), math.cos(d) * math.sin(a), math.sin(d)])
    east = np.array([-math.sin(a), math.cos(a), 0.0])
    north = np.array([-math.sin(d) * math.cos(a), -math.sin(d) * math.sin(a), math.cos(d)])
    p = centre[:, None] + east[:, None] * xi + north[:, None] * eta
    p /= np.linalg.norm(p, axis=0)
    ra = np.degrees(np.arctan2(p[1], p[0])) % 360.0
    dec = np.degrees(np.arcsin(np.clip(p[2], -1.0, 1.0)))
    return np.unique(healpix_nested_index(ra, dec, level=level))


def tile_boundaries(pixels: np.ndarray, *, level: int,
                     per_edge: int = BOUNDARY_POINTS_PER_EDGE) -> tuple[np.ndarray, np.ndarray, float]:
    """Points along the boundaries of tiles, and the largest gap between neighbours.

    The inverse of the nested index on the tile's face coordinates (HEALPix C++
    ``xyf2loc``), walked around the four edges.

    Returns
    -------
    ra_deg, dec_deg
        Shape (len(pixels), 4 * per_edge), degrees.
    step_deg
        Largest angular distance between consecutive boundary points, degrees.
    """
    pixels = np.asarray(pixels, dtype=np.int64)
    nside = 1 << level
    face = pixels >> (2 * level)
    sub = pixels & (nside * nside - 1)
    ix = _compact_bits(sub, level)
    iy = _compact_bits(sub >> 1, level)
    t = np.arange(per_edge) / per_edge
    fx = np.concatenate([t, np.ones(per_edge), 1.0 - t, np.zeros(per_edge)])
    fy = np.concatenate([np.zeros(per_edge), t, np.ones(per_edge), 1.0 - t])
    x = (ix[:, None] + fx[None, :]) / nside
    y = (iy[:, None] + fy[None, :]) / nside
    jr = _JRLL[face][:, None] - x - y
    nr = np.where(jr < 1.0, jr, np.where(jr > 3.0, 4.0 - jr, 1.0))
    tmp = nr * nr / 3.0
    z = np.where(jr < 1.0, 1.0 - tmp, np.where(jr > 3.0, tmp - 1.0, (2.0 - jr) * 2.0 / 3.0))
    sth = np.where((jr < 1.0) | (jr > 3.0), np.sqrt(np.clip(tmp * (2.0 - tmp), 0.0, None)),
                   np.sqrt(np.clip(1.0 - z * z, 0.0, None)))
    phi_t = (_JPLL[face][:, None] * nr + x - y) % 8.0
    with np.errstate(divide="ignore", invalid="ignore"):
        phi = np.where(nr < 1e-15, 0.0, 0.25 * np.pi * phi_t / nr)
    ra = np.degrees(phi) % 360.0
    dec = np.degrees(np.arctan2(z, sth))
    gaps = angular_separation_deg(ra, dec, np.roll(ra, -1, axis=1), np.roll(dec, -1, axis=1))
    step = float(gaps.max()) if gaps.size else 0.0
    return ra, dec, step


def _compact_bits(v: np.ndarray, nbits: int) -> np.ndarray:
    """Bits 0, 2, 4... of ``v`` gathered into bits 0, 1, 2... (inverse of the Morton interleave)."""
    out = np.zeros_like(v)
    for b in range(nbits):
        out |= ((v >> (2 * b)) & 1) << b
    return out


def check_level(level: int) -> None:
    if not (isinstance(level, (int, np.integer)) and 0 <= level <= 29):
        raise ConfigError(f"level = {level!r} is out of range: allowed integers 0 to 29")


def _check_cone(ra_deg: float, dec_deg: float, radius_deg: float) -> None:
    if not (np.isfinite(ra_deg) and np.isfinite(dec_deg) and -90.0 <= dec_deg <= 90.0):
        raise ValueError(f"cone centre ({ra_deg!r}, {dec_deg!r}) deg is not a sky position")
    if not 0.0 <= radius_deg <= MAX_RADIUS_DEG:
        raise ValueError(f"radius_deg = {radius_deg!r} is out of range: allowed 0 to {MAX_RADIUS_DEG} deg")


