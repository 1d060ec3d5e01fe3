"""The reference stars of one exposure (``get_gaia_xy``): the footprint, its cone, the cut to it and
to the depth, the epoch, the predicted pixels.

Stars come from a catalog table when one is given, else from the Gaia archive
(:func:`astrodask.reference.archive.query_gaia_archive`); the tile cache's reads
(:func:`astrodask.reference.store.read_field`) use the same cuts.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
from astropy.table import Table

from astrodask.config import GaiaConfig
from astrodask.errors import AstrodaskWarning, CatalogError
from astrodask.sphere import angular_separation_deg, unit_vectors
from astrodask.reference.archive import query_gaia_archive
from astrodask.reference.catalog import float_column, propagate_table

logger = logging.getLogger(__name__)


def select_cone(table: Table, *, ra_deg: float, dec_deg: float, radius_deg: float) -> Table:
    """The rows of a reference table within ``radius_deg`` of (``ra_deg``, ``dec_deg``).

    Parameters
    ----------
    table
        Reference table with ``ra`` and ``dec`` in degrees.
    ra_deg, dec_deg
        Centre of the cone, degrees.
    radius_deg
        Radius of the cone, degrees (inclusive).

    Returns
    -------
    astropy.table.Table
        The selected rows, in their original order.
    """
    sep = angular_separation_deg(float_column(table["ra"]), float_column(table["dec"]), ra_deg, dec_deg)
    return table[sep <= radius_deg]


def footprint_corners(wcs: Any, shape: tuple[int, int]) -> np.ndarray:
    """Sky positions of the four outer corners of an image, degrees.

    Parameters
    ----------
    wcs
        An astropy ``WCS`` (or any object with ``pixel_to_world_values``, 0-based pixels).
    shape
        Image shape (ny, nx).

    Returns
    -------
    numpy.ndarray
        Shape (4, 2): (ra, dec) of the corners (-0.5, -0.5), (nx - 0.5, -0.5),
        (nx - 0.5, ny - 0.5), (-0.5, ny - 0.5) in 0-based pixels, in order
        around the image.
    """
    ny, nx = shape
    i = np.array([-0.5, nx - 0.5, nx - 0.5, -0.5])
    j = np.array([-0.5, -0.5, ny - 0.5, ny - 0.5])
    ra, dec = wcs.pixel_to_world_values(i, j)
    return np.column_stack([np.mod(ra, 360.0), dec])


def enclosing_cone(corners_deg: Any, *, margin_deg: float = 0.0) -> tuple[float, float, float]:
    """A cone that contains a footprint and a margin around it.

    Parameters
    ----------
    corners_deg
        (ra, dec) of the footprint's corners, degrees, shape (N, 2).
    margin_deg
        Margin added to the radius, degrees.

    Returns
    -------
    ra_deg, dec_deg, radius_deg
        Centre (the normalised mean of the corners' unit vectors) and radius.
    """
    corners = _corner_array(corners_deg)
    centre = unit_vectors(corners[:, 0], corners[:, 1]).sum(axis=1)
    norm = np.linalg.norm(centre)
    if norm == 0.0:
        raise ValueError("the footprint corners have no defined centre (they span the sphere)")
    centre /= norm
    ra = float(np.degrees(np.arctan2(centre[1], centre[0])) % 360.0)
    dec = float(np.degrees(np.arcsin(np.clip(centre[2], -1.0, 1.0))))
    radius = float(np.max(angular_separation_deg(corners[:, 0], corners[:, 1], ra, dec)))
    return ra, dec, radius + float(margin_deg)


def select_footprint(table: Table, corners_deg: Any, *, margin_deg: float = 0.0) -> Table:
    """The rows of a reference table inside a footprint or within a margin of it.

    The footprint is the spherical polygon whose edges are the great-circle
    arcs between consecutive corners (the gnomonic projection maps these to
    the straight edges of the image's tangent plane). The test is done with
    unit vectors, so it holds across RA = 0/360 and at the poles; the margin is
    the exact angular distance to the nearest edge.

    Parameters
    ----------
    table
        Reference table with ``ra`` and ``dec`` in degrees.
    corners_deg
        (ra, dec) of the footprint's corners in order around it (either
        direction), degrees, shape (N, 2), N >= 3; the polygon must be convex
        and smaller than a hemisphere (an image's footprint is).
    margin_deg
        Keep stars up to this angular distance outside the footprint, degrees.

    Returns
    -------
    astropy.table.Table
        The selected rows, in their original order.

    Raises
    ------
    ValueError
        If the corners are fewer than three, or not ordered around a convex polygon.
    """
    corners = _corner_array(corners_deg)
    if margin_deg < 0:
        raise ValueError(f"margin_deg = {margin_deg} must be >= 0")
    vertices = unit_vectors(corners[:, 0], corners[:, 1]).T  # (N, 3)
    normals = np.cross(vertices, np.roll(vertices, -1, axis=0))  # edge i: vertex i -> i+1
    lengths = np.linalg.norm(normals, axis=1)
    if np.any(lengths == 0.0):
        raise ValueError("footprint corners must be distinct")
    normals /= lengths[:, None]
    centre = vertices.sum(axis=0)
    side = np.sign(normals @ centre)
    if np.any(side == 0) or np.any(side != side[0]):
        raise ValueError("footprint corners must be ordered around a convex polygon")
    normals *= side[:, None]  # inward normals

    p = unit_vectors(float_column(table["ra"]), float_column(table["dec"])).T  # (M, 3)
    heights = p @ normals.T  # (M, N): sine of the distance to each edge's great circle
    inside = np.all(heights >= 0.0, axis=1) & (p @ centre > 0.0)
    if margin_deg > 0:
        dist = _distance_to_edges_deg(p, vertices, normals, heights)
        inside |= dist <= margin_deg
    return table[inside]


def _distance_to_edges_deg(p: np.ndarray, vertices: np.ndarray, normals: np.ndarray,
                           heights: np.ndarray) -> np.ndarray:
    """Angular distance (deg) from points (M, 3) to the nearest polygon edge (arc)."""
    best = np.full(len(p), np.inf)
    for k in range(len(vertices)):
        a, b, n = vertices[k], vertices[(k + 1) % len(vertices)], normals[k]
        # the foot of the perpendicular lies on the arc a->b when it is between a and b,
        # i.e. turning a -> foot and foot -> b goes the way a -> b does
        foot = p - heights[:, k:k + 1] * n
        ab = np.cross(a, b)
        on_arc = (np.cross(a, foot) @ ab >= 0.0) & (np.cross(foot, b) @ ab >= 0.0)
        to_circle = np.degrees(np.arcsin(np.clip(np.abs(heights[:, k]), 0.0, 1.0)))
        to_a = np.degrees(np.arctan2(np.linalg.norm(np.cross(p, a), axis=1), p @ a))
        to_b = np.degrees(np.arctan2(np.linalg.norm(np.cross(p, b), axis=1), p @ b))
        dist = np.where(on_arc & (p @ (a + b) > 0.0), to_circle, np.minimum(to_a, to_b))
        best = np.minimum(best, dist)
    return best


def _corner_array(corners_deg: Any) -> np.ndarray:
    corners = np.asarray(corners_deg, dtype=np.float64)
    if corners.ndim != 2 or corners.shape[1] != 2 or len(corners) < 3:
        raise ValueError(f"corners_deg must have shape (N >= 3, 2) as (ra, dec) pairs, got {corners.shape}")
    if not np.all(np.isfinite(corners)):
        raise ValueError("corners_deg must be finite")
    return corners


def limit_depth(table: Table, *, mag_limit: float | None = None, max_rows: int | None = None) -> Table:
    """The brightest rows of a reference table, down to a magnitude and a count.

    Parameters
    ----------
    table
        Reference table with ``phot_g_mean_mag``.
    mag_limit
        Keep stars with G <= ``mag_limit`` (mag); stars without G are then
        dropped. None: no magnitude cut.
    max_rows
        Keep at most this many rows, the brightest. None: no limit.

    Returns
    -------
    astropy.table.Table
        The kept rows, brightest first (ties keep their original order; stars
        without G come last).
    """
    if max_rows is not None and (int(max_rows) != max_rows or max_rows < 0):
        raise ValueError(f"max_rows = {max_rows!r} must be a non-negative integer or None")
    mag = float_column(table["phot_g_mean_mag"])
    keep = np.ones(len(table), dtype=bool) if mag_limit is None else mag <= mag_limit
    order = np.argsort(np.where(np.isfinite(mag), mag, np.inf), kind="stable")
    order = order[keep[order]]
    if max_rows is not None:
        order = order[: int(max_rows)]
    return table[order]




def _span(catalog: Table) -> str:
    """The RA and Dec ranges of a catalog's stars, for messages."""
    ra, dec = float_column(catalog["ra"]), float_column(catalog["dec"])
    return (f"RA {np.nanmin(ra):.4f}..{np.nanmax(ra):.4f} deg, Dec {np.nanmin(dec):+.4f}..{np.nanmax(dec):+.4f} "
            "deg")


def get_gaia_xy(
    wcs: Any,
    shape: tuple[int, int],
    *,
    epoch_yr: float | None,
    catalog: Table | None = None,
    config: GaiaConfig | None = None,
) -> Table:
    """Reference stars over an exposure's footprint, at its epoch, with predicted pixels.

    The Condor pipeline's ``get_gaia_xy``: the Gaia stars covering the whole
    field of view plus ``config.margin_deg``, from ``catalog`` when given, else
    from the Gaia archive (one asynchronous query over the enclosing cone);
    limited to ``config.mag_limit``; propagated from each star's ``ref_epoch``
    to ``epoch_yr``; projected through ``wcs`` (the approximate WCS).

    Parameters
    ----------
    wcs
        The exposure's approximate WCS (astropy ``WCS``, 0-based pixels).
    shape
        Image shape (ny, nx).
    epoch_yr
        Julian epoch of the exposure; None keeps the catalog epoch (with a warning).
    catalog
        A reference table as returned by :func:`read_catalog`; None queries the archive.
    config
        Margin, depth and archive settings.

    Returns
    -------
    astropy.table.Table
        Reference columns (positions at ``epoch_yr``), ``ref_flag``, ``x`` and
        ``y`` (0-based pixels through ``wcs``) and ``in_image``; brightest first.
        ``meta`` records the footprint cone, the epoch and where the stars came from.
    """
    config = config or GaiaConfig()
    corners = footprint_corners(wcs, shape)
    ra_c, dec_c, radius = enclosing_cone(corners, margin_deg=config.margin_deg)
    if catalog is None:
        catalog = query_gaia_archive(ra_deg=ra_c, dec_deg=dec_c, radius_deg=radius, config=config)
        origin = f"Gaia archive {config.tap_url} ({config.table})"
    else:
        origin = str(catalog.meta.get("catalog_path", "<table>"))
    from_file = "cache" not in catalog.meta  # a catalog the user gave, not the tile cache's cut
    if from_file and len(catalog) == 0:
        raise CatalogError(f"catalog {origin} holds no star: give a catalog of the field (Gaia export or "
                           "VizieR I/355)")
    inside = select_footprint(catalog, corners, margin_deg=config.margin_deg)
    if from_file and len(inside) == 0:
        raise CatalogError(f"catalog {origin}: none of its {len(catalog)} stars lies within the field "
                           f"(cone of radius {radius:.3f} deg around ({ra_c:.4f}, {dec_c:+.4f}) deg); its stars "
                           f"span {_span(catalog)}: a catalog of another field, coordinates in other units "
                           "than declared, or a wrong pointing in the header")
    stars = limit_depth(inside, mag_limit=config.mag_limit)
    if epoch_yr is None:
        warnings.warn("get_gaia_xy: the exposure has no epoch (DATE-OBS/MJD-OBS): reference stars are "
                      "left at their catalog epoch, off by their proper motions", AstrodaskWarning, stacklevel=2)
        stars = stars.copy()
    else:
        stars = propagate_table(stars, epoch_yr)
    x, y = wcs.world_to_pixel_values(float_column(stars["ra"]), float_column(stars["dec"]))
    ny, nx = shape
    stars["x"] = np.asarray(x, dtype=np.float64)
    stars["y"] = np.asarray(y, dtype=np.float64)
    stars["x"].unit = stars["y"].unit = "pix"
    stars["in_image"] = ((stars["x"] >= -0.5) & (stars["x"] <= nx - 0.5)
                         & (stars["y"] >= -0.5) & (stars["y"] <= ny - 0.5))
    stars.meta.update({"origin": origin, "footprint_ra_deg": ra_c, "footprint_dec_deg": dec_c,
                       "footprint_radius_deg": radius, "epoch": epoch_yr,
                       "scale_arcsec": float(np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix))) * 3600.0),
                       "n_in_image": int(np.count_nonzero(stars["in_image"]))})
    return stars
