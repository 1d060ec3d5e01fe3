"""Filling the tile cache: from a catalog file (:func:`import_catalog`) and from the Gaia archive
(:func:`fill_tile_from_archive`, one query of ``source_id`` ranges per tile).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from astropy.table import Table

from astrodask.config import GaiaConfig
from astrodask.constants import GAIA_HEALPIX_LEVEL, GAIA_SOURCE_ID_SHIFT
from astrodask.errors import ArchiveError, ArchiveUnreachableError, CatalogError, ConfigError
from astrodask.reference.archive import build_source_id_query, run_archive_query
from astrodask.reference.catalog import float_column, read_catalog
from astrodask.reference.healpix import (
    TILE_LEVEL,
    check_level,
    healpix_nested_index,
    n_tiles,
    tile_boundaries,
    tile_of,
    tile_size_deg,
    tiles_for_field,
)
from astrodask.reference.store import TileCache, _shortfall, _tile_columns
from astrodask.sphere import angular_separation_deg

logger = logging.getLogger(__name__)

#: Position-angle sectors used to infer the cone a catalog file covers.
COVER_SECTORS = 36
#: Columns stored in a tile, in order, with their dtypes.
#: (3.4 arcmin pixels: about 40 source_id ranges per tile, 25 % more area than the tile).
BORDER_LEVEL = 10
#: Bit shift from a level-12 HEALPix pixel to a Gaia source_id (source_id // 2**35).

# --------------------------------------------------------------------------
# Filling the cache from a catalog file
# --------------------------------------------------------------------------


def catalog_cover(table: Table) -> tuple[float, float, float]:
    """A cone a catalog is taken to be complete within, inferred from its stars.

    The centre is the normalised mean of the stars' unit vectors; the radius is
    the smallest, over :data:`COVER_SECTORS` position-angle sectors around it, of
    the farthest star in the sector. For a cone-search export this is close to the
    query cone; for a rectangle it is about its half-height (conservative: tiles
    beyond it are marked partial, never wrongly complete).

    Returns
    -------
    ra_deg, dec_deg, radius_deg
        Degrees.
    """
    ra = float_column(table["ra"])
    dec = float_column(table["dec"])
    if ra.size == 0:
        raise CatalogError("an empty catalog covers nothing")
    corners = np.column_stack([ra, dec])
    ra_c, dec_c, _ = _mean_position(corners)
    sep = angular_separation_deg(ra, dec, ra_c, dec_c)
    a, d, a0, d0 = (np.radians(v) for v in (ra, dec, ra_c, dec_c))
    pa = np.arctan2(np.sin(a - a0) * np.cos(d), np.cos(d0) * np.sin(d) - np.sin(d0) * np.cos(d) * np.cos(a - a0))
    sector = np.floor((pa % (2 * np.pi)) / (2 * np.pi) * COVER_SECTORS).astype(int) % COVER_SECTORS
    farthest = np.zeros(COVER_SECTORS)
    np.maximum.at(farthest, sector, sep)
    return ra_c, dec_c, float(farthest.min())


def _mean_position(radec: np.ndarray) -> tuple[float, float, float]:
    x = np.radians(radec)
    v = np.stack([np.cos(x[:, 1]) * np.cos(x[:, 0]), np.cos(x[:, 1]) * np.sin(x[:, 0]), np.sin(x[:, 1])]).sum(axis=1)
    norm = np.linalg.norm(v)
    if norm == 0.0:
        raise CatalogError("the catalog's stars have no defined centre (they span the sphere)")
    v /= norm
    return float(np.degrees(np.arctan2(v[1], v[0])) % 360.0), float(np.degrees(np.arcsin(np.clip(v[2], -1, 1)))), norm


def _tile_inside_cone(pixels: np.ndarray, cone: tuple[float, float, float], *, level: int) -> np.ndarray:
    """True for tiles lying entirely within a cone (their sampled boundary, less one step, inside)."""
    ra_b, dec_b, step = tile_boundaries(pixels, level=level)
    sep = angular_separation_deg(ra_b, dec_b, cone[0], cone[1])
    return np.max(sep, axis=1) <= cone[2] - step


def import_catalog(cache: TileCache, catalog: Table | str | Path, *,
                   cover_deg: tuple[float, float, float] | None = None,
                   overwrite: bool = False) -> dict[int, int]:
    """Split a reference catalog into tiles and write those the cache lacks.

    A tile is written when it is absent or not complete (:meth:`TileCache.verify`
    False), when the cache holds it only partially and this catalog covers it
    fully, or always with ``overwrite``. A tile that the catalog does not cover
    entirely (it reaches beyond ``cover_deg``) is written with ``partial=True`` and
    the cover cone in its marker, so that a later archive fill replaces it; a
    complete tile is never replaced by a partial one.

    Parameters
    ----------
    cache
        The tile cache.
    catalog
        A table of :data:`REFERENCE_COLUMNS` (:func:`astrodask.reference.catalog.read_catalog`
        output) or a catalog file to read with it.
    cover_deg
        (ra, dec, radius) of the cone the catalog is complete within, degrees
        (e.g. the archive query that made it); None: :func:`catalog_cover`.
    overwrite
        Rewrite every tile the catalog touches.

    Returns
    -------
    dict
        Rows written, by tile (tiles left as they were are absent).
    """
    if not isinstance(catalog, Table):
        catalog = read_catalog(catalog)
    origin = str(catalog.meta.get("catalog_path", "<table>"))
    if len(catalog) == 0:
        return {}
    cover = tuple(float(v) for v in (cover_deg if cover_deg is not None else catalog_cover(catalog)))
    columns = _tile_columns(catalog, where=f"catalog {origin}")
    pix = healpix_nested_index(columns["ra"], columns["dec"], level=cache.level)
    order = np.argsort(pix, kind="stable")
    pix_sorted = pix[order]
    # every tile the cover reaches, also those where the catalog has no star (written empty)
    tiles = np.union1d(pix_sorted, tiles_for_field(*cover, level=cache.level))
    first = np.searchsorted(pix_sorted, tiles, side="left")
    last = np.searchsorted(pix_sorted, tiles, side="right")
    full = _tile_inside_cone(tiles, cover, level=cache.level)
    written: dict[int, int] = {}
    for k, pixel in enumerate(tiles.tolist()):
        partial = not bool(full[k])
        if not overwrite and cache.verify(pixel):
            if partial or not cache.attrs(pixel).get("partial", False):
                continue
        rows = order[first[k]:last[k]]
        part = Table({name: values[rows] for name, values in columns.items()}, copy=False)
        written[pixel] = cache.write_tile(pixel, part, partial=partial,
                                          cover_deg=cover if partial else None, origin=origin)
    logger.info("imported %s into %s: %d of %d tile(s) written", origin, cache.url, len(written), len(tiles))
    return written


# --------------------------------------------------------------------------
# Filling from the Gaia archive
# --------------------------------------------------------------------------


def tile_source_id_ranges(pixel: int, *, level: int = TILE_LEVEL,
                          margin_arcsec: float = 60.0) -> list[tuple[int, int]]:
    """The Gaia ``source_id`` ranges holding every source of a tile, with a margin.

    ``source_id // 2**35`` is the level-12 pixel of the source's position when it was
    created, which differs from the pixel of its published (ra, dec) for a few sources
    near pixel edges. The ranges cover the tile's own level-12 pixels and those of the
    level-:data:`BORDER_LEVEL` pixels reaching within ``margin_arcsec`` outside it,
    so a source published in the tile is found as long as its source_id position lies
    within the margin (Gaia's are within a few arcsec); the caller keeps the rows whose
    (ra, dec) is in the tile (:func:`tile_of`).

    Parameters
    ----------
    pixel
        The tile (nested pixel at ``level``).
    level
        HEALPix level of the tile (at most :data:`BORDER_LEVEL`).
    margin_arcsec
        Width of the border band, arcsec (0: the tile's own range only).

    Returns
    -------
    list of (int, int)
        Inclusive (first, last) source_id ranges, sorted and disjoint.
    """
    check_level(level)
    if level > BORDER_LEVEL:
        raise ConfigError(f"level = {level} is out of range for archive fills: allowed 0 to {BORDER_LEVEL}")
    if not 0.0 <= margin_arcsec <= 3600.0:
        raise ValueError(f"margin_arcsec = {margin_arcsec!r} is out of range: allowed 0 to 3600")
    pixel = int(pixel)
    if not 0 <= pixel < n_tiles(level):
        raise ValueError(f"tile {pixel} is out of range at level {level}")
    step = GAIA_HEALPIX_LEVEL - BORDER_LEVEL
    border: np.ndarray = np.empty(0, dtype=np.int64)
    if margin_arcsec > 0:
        sub_size_deg = tile_size_deg(BORDER_LEVEL)
        margin_deg = margin_arcsec / 3600.0
        per_edge = int(math.ceil(tile_size_deg(level) / min(sub_size_deg, margin_deg) * 2))
        ra_b, dec_b, _ = tile_boundaries(np.array([pixel]), level=level, per_edge=per_edge)
        radii = np.linspace(margin_deg / 4.0, margin_deg, 4)
        ra_o, dec_o = _offset_points(ra_b.ravel(), dec_b.ravel(), radii, n_angles=8)
        near = np.unique(healpix_nested_index(ra_o, dec_o, level=BORDER_LEVEL))
        border = near[(near >> (2 * (BORDER_LEVEL - level))) != pixel]
    # level-12 pixel runs: the tile's own, then each border pixel's
    starts = np.r_[pixel << (2 * (GAIA_HEALPIX_LEVEL - level)), border << (2 * step)]
    ends = np.r_[(pixel + 1) << (2 * (GAIA_HEALPIX_LEVEL - level)), (border + 1) << (2 * step)]
    order = np.argsort(starts)
    ranges: list[list[int]] = []
    for lo, hi in zip(starts[order].tolist(), ends[order].tolist()):
        if ranges and lo <= ranges[-1][1]:
            ranges[-1][1] = max(ranges[-1][1], hi)
        else:
            ranges.append([lo, hi])
    return [(lo << GAIA_SOURCE_ID_SHIFT, (hi << GAIA_SOURCE_ID_SHIFT) - 1) for lo, hi in ranges]


def _offset_points(ra_deg: np.ndarray, dec_deg: np.ndarray, radii_deg: np.ndarray, *,
                   n_angles: int) -> tuple[np.ndarray, np.ndarray]:
    """Points at each radius and ``n_angles`` position angles around each input point."""
    a, d = np.radians(ra_deg)[:, None, None], np.radians(dec_deg)[:, None, None]
    r = np.radians(np.asarray(radii_deg, dtype=np.float64))[None, :, None]
    theta = np.linspace(0.0, 2.0 * np.pi, n_angles, endpoint=False)[None, None, :]
    sin_d = np.sin(d) * np.cos(r) + np.cos(d) * np.sin(r) * np.cos(theta)
    dec = np.arcsin(np.clip(sin_d, -1.0, 1.0))
    ra = a + np.arctan2(np.sin(theta) * np.sin(r) * np.cos(d), np.cos(r) - np.sin(d) * sin_d)
    return (np.degrees(ra) % 360.0).ravel(), np.degrees(dec).ravel()


def tile_query(pixel: int, *, config: GaiaConfig, level: int = TILE_LEVEL,
               mag_limit: float | None = None) -> str:
    """The ADQL filling one tile: its :func:`tile_source_id_ranges`, to ``mag_limit``."""
    limit = config.mag_limit if mag_limit is None else float(mag_limit)
    ranges = tile_source_id_ranges(pixel, level=level, margin_arcsec=config.tile_margin_arcsec)
    return build_source_id_query(ranges, mag_limit=limit, table=config.table)


def fill_tile_from_archive(cache: TileCache, pixel: int, *, config: GaiaConfig,
                           mag_limit: float | None = None) -> int:
    """Fill one tile with one asynchronous Gaia archive query.

    The query (:func:`tile_query`) selects the tile's source_id ranges with a margin
    and ``phot_g_mean_mag <= mag_limit``; the rows whose (ra, dec) lies in the tile
    are written, with the limit in the marker. The caller guarantees a single writer
    per tile (the Dask task key :func:`tile_task_key`) and, on a cluster, the limit
    on concurrent queries.

    Parameters
    ----------
    cache
        The tile cache.
    pixel
        The tile.
    config
        The archive settings (``tap_url``, ``table``, ``mag_limit``, retries...).
    mag_limit
        Faintest G, mag; None: ``config.mag_limit``.

    Returns
    -------
    int
        Rows written.

    Raises
    ------
    ArchiveError
        If the query fails after its retries, or its result is truncated (a tile is
        never written incomplete).
    """
    limit = config.mag_limit if mag_limit is None else float(mag_limit)
    adql = tile_query(pixel, config=config, level=cache.level, mag_limit=limit)
    where = f"tile {cache.level}/{int(pixel)} (to G = {limit:g}) at {config.tap_url}"
    table = run_archive_query(adql, where=where, config=config)
    if table.meta.get("truncated"):
        raise ArchiveError(f"Gaia archive result for {where} {table.meta['truncated']}; the tile is not written "
                           "(a cache tile is never stored incomplete)")
    inside = tile_of(table, level=cache.level) == int(pixel)
    rows = cache.write_tile(pixel, table[inside], mag_limit=limit,
                            origin=f"Gaia archive {config.tap_url} ({config.table})")
    logger.info("filled %s: %d of %d returned stars in the tile", where, rows, len(table))
    return rows


def fill_tiles(cache: TileCache | str | Path, pixels: Iterable[int], *, config: GaiaConfig,
               mag_limit: float | None = None) -> dict[int, int]:
    """Fill the tiles of one field from the Gaia archive one after the other, in this process (no Dask).

    For a single process (``astrodask solve --serial``); a cluster fills tiles as
    Dask tasks instead (:mod:`astrodask.run.graph`), one writer per tile. The field
    needs every tile, so the first tile that cannot be filled ends the fill: an archive
    that is down costs one query's retries, not one per tile, and says so once.

    Returns
    -------
    dict
        Rows written, by tile.

    Raises
    ------
    ArchiveUnreachableError
        At once when the archive cannot be reached: the tiles left, the URL and the fix, once.
    ArchiveError
        When a tile could not be filled otherwise: names it and its error, and counts the
        tiles not tried.
    """
    store = cache if isinstance(cache, TileCache) else TileCache(cache)
    pixels = [int(p) for p in pixels]
    written: dict[int, int] = {}
    for index, pixel in enumerate(pixels):
        try:
            written[pixel] = fill_tile_from_archive(store, pixel, config=config, mag_limit=mag_limit)
        except ArchiveUnreachableError as err:
            # every tile left would fail the same way: say it once, for all of them
            labels = [f"{store.level}/{p}" for p in pixels[index:]]
            raise ArchiveUnreachableError(summarise_tile_failures((label, str(err)) for label in labels)) from err
        except ArchiveError as err:
            left = len(pixels) - index - 1
            raise type(err)(f"{err}" + (f" ({left} more tile(s) of the field not tried)" if left else "")) from err
    return written


#: A tile named in a fill's error message, e.g. "tile 6/4566".
_TILE_IN_TEXT = re.compile(r"\btile \d+/\d+")


def summarise_tile_failures(failures: Iterable[tuple[str, str]]) -> str:
    """One line for the tiles of a field that could not be filled: each distinct reason once.

    Parameters
    ----------
    failures
        ``(label, reason)`` of each failed tile (label ``"6/4566"``).

    Returns
    -------
    str
        ``"N tile(s) of the field could not be filled: 6/1, 6/2: <reason>; 6/3: <reason>"``,
        where tiles whose reasons differ only by the tile they name share one reason.
    """
    groups: dict[str, list[str]] = {}
    for label, reason in failures:
        groups.setdefault(_TILE_IN_TEXT.sub("tile", reason), []).append(label)
    n = sum(len(labels) for labels in groups.values())
    parts = [f"{', '.join(labels)}: {reason}" for reason, labels in groups.items()]
    return f"{n} tile(s) of the field could not be filled: " + "; ".join(parts)


def tiles_to_fill(cache: TileCache, pixels: Iterable[int], *, mag_limit: float | None = None,
                  deep: bool = True) -> dict[int, str]:
    """The tiles that a fill must (re)write, with why.

    A tile needs filling when it is absent, half-written, damaged (``deep``: its data
    disagree with the marker's checksum), partial (imported from a file covering part
    of it), or filled to a brighter limit than ``mag_limit``.

    Returns
    -------
    dict
        By tile, the reason; tiles that are fine are absent.
    """
    out: dict[int, str] = {}
    pixels = [int(p) for p in pixels]
    if deep:
        for pixel, (attrs, got) in cache.read_many(pixels).items():
            why = got if isinstance(got, str) else _shortfall(attrs, None, mag_limit)
            if why:
                out[pixel] = why
        return out
    for pixel in pixels:
        why = cache._problem(pixel, deep=False) or _shortfall(cache.attrs(pixel), None, mag_limit)
        if why:
            out[pixel] = why
    return out
