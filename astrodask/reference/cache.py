"""The shared Gaia tile cache: HEALPix tiles of reference stars in a zarr v3 store.

The sky is cut into nested HEALPix pixels ("tiles") at level :data:`TILE_LEVEL`; a
tile holds every star of the pixel with all of :data:`astrodask.types.REFERENCE_COLUMNS`
at the catalog's own epoch (Gaia DR3: 2016.0; proper motions are applied by the
reader, never in the cache). A solve reads the few tiles under its footprint
instead of querying the Gaia archive; many exposures of one field share them.

Level choice
------------
Level 6 (nside 64, 49 152 tiles of 0.839 deg^2, about 0.92 deg across). A Condor
field (2.3 x 1.5 deg) plus the 0.2 deg margin touches 9-16 tiles (see
``benchmarks/bench_cache.py``), and at G <= 20 a tile holds about 2 000 stars at high
Galactic latitude and up to ~10^5 in the Galactic plane: a single chunk per column
of well under 1 MB. Level 5 (3.4 deg^2 tiles) would mean 4-9 tiles per field but
read about 3x more stars than the field needs and make each archive fill query
4x bigger; level 7 quadruples the number of tiles (and of small files) per field.

Store layout (zarr v3)
----------------------
::

    <root>/zarr.json             attrs {"astrodask_tile_cache": 1, "level": 6}
    <root>/<level>/<pixel>/      one group per tile, e.g. "6/24123"
        zarr.json                attrs: the completeness marker (below)
        source_id, ra, dec, ...  one 1-D array per reference column, one chunk

A tile is written by :meth:`TileCache.write_tile`: the group is (re)created with
``complete=False``, every column array is written, and only then are the group's
attributes replaced by the marker ``{"complete": True, "rows": N, "checksum":
<blake2b of the columns>, "level", "pixel", "partial", "cover_deg", "origin"}``.
A tile without the marker, or whose arrays disagree with it (row count, absent
chunks, checksum), is treated as missing (:meth:`TileCache.has` is False) and is
rewritten by the next fill.

Concurrency: zarr has no locks. Different tiles may be written at once by any
number of processes (each tile lives under its own prefix; the shared ``<level>``
group is only ever created with identical content, and the local store writes
each file atomically). The *same* tile must have exactly one writer at a time:
the Dask layer guarantees it by giving every fill task the key
``gaia-tile-<level>-<pixel>-<store hash>`` (:func:`tile_task_key`), so a tile needed by
many exposures, or by two prefetches at once, is one task on the cluster.

Filling from the Gaia archive (:func:`fill_tile_from_archive`): one asynchronous query
per tile selecting its ``source_id`` ranges (:func:`tile_source_id_ranges`: the tile's
level-12 pixels and those of the level-:data:`BORDER_LEVEL` pixels within
``gaia.tile_margin_arcsec`` outside it), then keeping the stars whose (ra, dec) lie in
the tile. The marker records the depth (``mag_limit``); a read deeper than a tile's
fill, like a read beyond a partial tile's cover, treats it as missing.

Stores: a local folder (default :func:`default_cache_dir`) or any fsspec URL
(``memory://``, ``file://``, ``s3://``...), opened with zarr's
:class:`zarr.storage.FsspecStore`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr
import zarr.errors
from astropy.table import Table
from zarr.core.sync import sync as zarr_sync
from zarr.storage import FsspecStore, LocalStore

from astrodask.config import GaiaConfig
from astrodask.errors import ArchiveError, CatalogError, ConfigError, InputFileError
from astrodask.reference.gaia import (
    REFERENCE_UNITS,
    angular_separation_deg,
    build_source_id_query,
    enclosing_cone,
    limit_depth,
    propagate_table,
    read_catalog,
    run_archive_query,
    select_cone,
    select_footprint,
)
from astrodask.reference.healpix import GAIA_HEALPIX_LEVEL, healpix_nested_index
from astrodask.types import REFERENCE_COLUMNS

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------
# Named constants
# --------------------------------------------------------------------------

#: HEALPix (nested) level of the tiles: nside 64, 0.839 deg^2 per tile (see the module docstring).
TILE_LEVEL = 6
#: Version of the store layout, written in the root group's attributes.
STORE_VERSION = 1
#: Folder of the default local cache, under the user cache directory.
CACHE_SUBDIR = ("astrodask", "gaia-tiles")
#: Default margin around a footprint read from the cache, deg (``GaiaConfig.margin_deg``).
DEFAULT_MARGIN_DEG = 0.2
#: Default faintest G read from the cache, mag (``GaiaConfig.mag_limit``).
DEFAULT_MAG_LIMIT = 20.0
#: Largest cone radius accepted by the tile lookups, deg.
MAX_RADIUS_DEG = 30.0
#: Spacing of the points sampling a cone for candidate tiles, in units of the tile size.
CANDIDATE_SPACING = 0.125
#: Candidate tiles are looked for this many tile sizes beyond the cone (HEALPix pixels
#: reach at most ~1.03 tile sizes from their centre: healpy's ``max_pixrad``).
CANDIDATE_REACH = 2.5
#: Points per edge sampling a tile's boundary for the exact touch test.
BOUNDARY_POINTS_PER_EDGE = 32
#: Position-angle sectors used to infer the cone a catalog file covers.
COVER_SECTORS = 36
#: Columns stored in a tile, in order, with their dtypes.
TILE_DTYPES: dict[str, str] = {name: ("int64" if name == "source_id" else "float64")
                               for name in REFERENCE_COLUMNS}
#: fsspec protocols whose filesystems cache directory listings (turned off for the cache).
LISTING_CACHE_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "http", "https"})
#: The attribute whose value True marks a tile complete (written last).
COMPLETE_KEY = "complete"

#: Level of the HEALPix pixels bordering a tile whose sources its archive query also takes
#: (3.4 arcmin pixels: about 40 source_id ranges per tile, 25 % more area than the tile).
BORDER_LEVEL = 10
#: Bit shift from a level-12 HEALPix pixel to a Gaia source_id (source_id // 2**35).
SOURCE_ID_SHIFT = 35

MissingPolicy = Literal["error", "skip"]
#: Fills tiles of a cache (e.g. from the Gaia archive); called with the tiles a read lacks.
TileFiller = Callable[[list[int]], object]

# HEALPix base-face geometry (HEALPix C++ ``jrll``/``jpll``).
_JRLL = np.array([2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4])
_JPLL = np.array([1, 3, 5, 7, 0, 2, 4, 6, 1, 3, 5, 7])


# --------------------------------------------------------------------------
# Tile geometry
# --------------------------------------------------------------------------


def n_tiles(level: int) -> int:
    """Number of HEALPix pixels at ``level`` (12 * 4**level)."""
    _check_level(level)
    return 12 * (1 << (2 * level))


def tile_size_deg(level: int) -> float:
    """Square root of a tile's area, degrees (0.916 deg at level 6)."""
    return math.degrees(math.sqrt(4.0 * math.pi / n_tiles(level)))


def tile_task_key(pixel: int, *, level: int = TILE_LEVEL, store: str | None = None) -> str:
    """The Dask key of the task filling a tile: ``gaia-tile-<level>-<pixel>[-<store hash>]``.

    Every graph that needs a tile uses this key, so Dask computes (writes) it once
    even when many exposures or clients ask for it at the same time: this is what
    guarantees one writer per tile, as zarr has no locks. ``store`` (the cache's URL)
    adds a short hash, so that two caches on one cluster never share a key.
    """
    key = f"gaia-tile-{level}-{int(pixel)}"
    if store:
        key += "-" + hashlib.sha1(str(store).encode()).hexdigest()[:8]
    return key


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
    _check_level(level)
    return healpix_nested_index(_float_column(table["ra"]), _float_column(table["dec"]), level=level)


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
    ra_b, dec_b, step = _tile_boundaries(candidates, level=level)
    sep = angular_separation_deg(ra_b, dec_b, ra_deg, dec_deg)
    touching = np.min(sep, axis=1) <= radius_deg + step
    touching |= candidates == healpix_nested_index(ra_deg, dec_deg, level=level)
    return np.unique(candidates[touching])


def tiles_for_footprint(corners_deg: Any, *, margin_deg: float = DEFAULT_MARGIN_DEG,
                        level: int = TILE_LEVEL) -> np.ndarray:
    """The tiles touching an image footprint widened by a margin, conservatively.

    A tile is kept when it contains a corner of the footprint or a point of its
    sampled boundary lies in the footprint or within ``margin_deg`` plus the
    sampling step of it (:func:`astrodask.reference.gaia.select_footprint`'s exact test).

    Parameters
    ----------
    corners_deg
        (ra, dec) of the footprint's corners in order around it, degrees, shape (N, 2)
        (:func:`astrodask.reference.gaia.footprint_corners`).
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
    ra_b, dec_b, step = _tile_boundaries(candidates, level=level)
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
    _check_level(level)
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


def _tile_boundaries(pixels: np.ndarray, *, level: int,
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


def _check_level(level: int) -> None:
    if not (isinstance(level, (int, np.integer)) and 0 <= level <= 29):
        raise ConfigError(f"level = {level!r} is out of range: allowed integers 0 to 29")


def _check_cone(ra_deg: float, dec_deg: float, radius_deg: float) -> None:
    if not (np.isfinite(ra_deg) and np.isfinite(dec_deg) and -90.0 <= dec_deg <= 90.0):
        raise ValueError(f"cone centre ({ra_deg!r}, {dec_deg!r}) deg is not a sky position")
    if not 0.0 <= radius_deg <= MAX_RADIUS_DEG:
        raise ValueError(f"radius_deg = {radius_deg!r} is out of range: allowed 0 to {MAX_RADIUS_DEG} deg")


# --------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------


def default_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The default local cache folder: ``$XDG_CACHE_HOME/astrodask/gaia-tiles``.

    ``XDG_CACHE_HOME`` defaults to ``~/.cache`` (the XDG base directory convention,
    as platformdirs uses on Linux).

    Parameters
    ----------
    environ
        The environment to read (default: ``os.environ``).
    """
    env = os.environ if environ is None else environ
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser().joinpath(*CACHE_SUBDIR)


def cache_location(url: str | Path | None) -> str:
    """The canonical location of a cache: an absolute folder, or the fsspec URL as given.

    What the client hands to the workers (their working folder may differ) and what
    :func:`tile_task_key` hashes. None or "": :func:`default_cache_dir`.
    """
    text = str(url) if url else str(default_cache_dir())
    if text.startswith("file://"):
        text = text[len("file://"):]
    if "://" in text:
        return text
    return str(Path(text).expanduser().absolute())


def _open_store(url: str | Path | None, *, storage_options: Mapping[str, Any] | None) -> tuple[Any, str]:
    """A zarr store for a folder or fsspec URL, and its display name."""
    text = cache_location(url)
    if "://" not in text:
        path = Path(text)
        if path.exists() and not path.is_dir():
            raise InputFileError(f"tile cache {path} is a file, not a folder; give a folder or a URL")
        path.mkdir(parents=True, exist_ok=True)
        return LocalStore(path), str(path)
    options = dict(storage_options or {})
    if text.split("://", 1)[0] in LISTING_CACHE_PROTOCOLS:
        # other processes add tiles: a cached directory listing would hide them for ever
        options.setdefault("use_listings_cache", False)
    try:
        store = FsspecStore.from_url(text, storage_options=options, read_only=False)
    except (ImportError, ValueError) as err:
        raise InputFileError(f"tile cache {text}: cannot open this URL with fsspec ({err}); "
                             "check the scheme and that its fsspec backend is installed (e.g. s3fs)") from err
    return store, text


def _open_or_create_root(store: Any, *, url: str, attributes: Mapping[str, Any]) -> zarr.Group:
    """Open the cache's root group, or create it with its attributes in one metadata write.

    Many processes may open a new store at once (a cluster's workers filling one
    cache): the root metadata is written whole, attributes included, so a reader sees
    either no root or a complete one, and two creators write the same bytes.
    """
    for _ in range(3):
        try:
            return zarr.open_group(store=store, mode="r+", zarr_format=3)
        except zarr.errors.GroupNotFoundError:
            pass
        except (zarr.errors.ContainsArrayError, zarr.errors.NodeTypeValidationError, ValueError) as err:
            raise InputFileError(f"tile cache {url} is not a zarr v3 group: {err}") from err
        try:
            return zarr.create_group(store=store, attributes=dict(attributes), zarr_format=3, overwrite=False)
        except zarr.errors.ContainsGroupError:
            continue  # another process created it between our two calls: open theirs
    raise InputFileError(f"tile cache {url}: cannot open or create its root group")


class TileCache:
    """A zarr v3 store of Gaia tiles (see the module docstring for the layout).

    Parameters
    ----------
    url
        A local folder, a ``file://`` URL or any fsspec URL (``memory://name``,
        ``s3://bucket/prefix``); None: :func:`default_cache_dir`.
    level
        HEALPix level of the tiles; an existing store keeps the level it was made with
        and a different one is an error.
    storage_options
        Passed to fsspec for URLs (credentials, ``endpoint_url``...).
    """

    def __init__(self, url: str | Path | None = None, *, level: int = TILE_LEVEL,
                 storage_options: Mapping[str, Any] | None = None) -> None:
        _check_level(level)
        self.level = int(level)
        self._store, self.url = _open_store(url, storage_options=storage_options)
        root = _open_or_create_root(self._store, url=self.url,
                                    attributes={"astrodask_tile_cache": STORE_VERSION, "level": self.level})
        attrs = root.attrs.asdict()
        if "astrodask_tile_cache" not in attrs:
            members = [name for name, _ in root.members()]
            if members:
                raise InputFileError(f"tile cache {self.url} is a zarr group not made by astrodask "
                                     f"(it holds {', '.join(sorted(members)[:3])}); "
                                     "give an empty folder or an astrodask tile cache")
            root.attrs.update({"astrodask_tile_cache": STORE_VERSION, "level": self.level})
        elif int(attrs.get("level", self.level)) != self.level:
            raise ConfigError(f"tile cache {self.url} holds level {attrs['level']} tiles, not level {self.level}")
        self._root = root

    def __repr__(self) -> str:
        return f"TileCache({self.url!r}, level={self.level})"

    # -- naming ----------------------------------------------------------

    def _name(self, pixel: int) -> str:
        pixel = int(pixel)
        if not 0 <= pixel < n_tiles(self.level):
            raise ValueError(f"tile {pixel} is out of range at level {self.level}: allowed 0 to "
                             f"{n_tiles(self.level) - 1}")
        return f"{self.level}/{pixel}"

    def _where(self, pixel: int) -> str:
        return f"tile {self._name(pixel)} of cache {self.url}"

    def _group(self, pixel: int) -> zarr.Group | None:
        try:
            node = self._root[self._name(pixel)]
        except KeyError:
            return None
        return node if isinstance(node, zarr.Group) else None

    # -- state -----------------------------------------------------------

    def _problem(self, pixel: int, *, deep: bool) -> str | None:
        """Why a tile cannot be read (None: it is complete)."""
        try:
            group = self._group(pixel)
            if group is None:
                return "absent"
            attrs = group.attrs.asdict()
            if attrs.get(COMPLETE_KEY) is not True:
                return "no completeness marker (written partly, or being written)"
            rows = attrs.get("rows")
            if not isinstance(rows, int) or rows < 0:
                return f"marker has no valid row count ({rows!r})"
            arrays = dict(group.arrays())
            missing = [name for name in TILE_DTYPES if name not in arrays]
            if missing:
                return f"column array(s) {', '.join(missing)} missing"
            for name, dtype in TILE_DTYPES.items():
                array = arrays[name]
                if array.shape != (rows,) or array.dtype != np.dtype(dtype):
                    return (f"column {name} has shape {array.shape} and dtype {array.dtype}, "
                            f"the marker says ({rows},) {dtype}")
                if array.nchunks_initialized != array.nchunks:
                    return f"column {name} has {array.nchunks_initialized} of {array.nchunks} chunk(s)"
            if deep:
                columns = {name: arrays[name][:] for name in TILE_DTYPES}
                if _checksum(columns) != attrs.get("checksum"):
                    return "column data disagree with the marker's checksum"
        except (KeyError, ValueError, OSError, RuntimeError, zarr.errors.BaseZarrError) as err:
            return f"unreadable ({type(err).__name__}: {err})"
        return None

    def has(self, pixel: int) -> bool:
        """True when the tile is complete: marker present, every column with the marker's row count.

        A cheap check of metadata only; :meth:`verify` also checks the data against
        the marker's checksum.
        """
        return self._problem(pixel, deep=False) is None

    def verify(self, pixel: int) -> bool:
        """True when the tile is complete and its data match the marker's checksum (reads the tile)."""
        problem = self._problem(pixel, deep=True)
        if problem is not None and problem != "absent":
            logger.info("%s: %s", self._where(pixel), problem)
        return problem is None

    def attrs(self, pixel: int) -> dict[str, Any]:
        """A tile's attributes (the marker), or an empty dict when absent."""
        group = self._group(pixel)
        return {} if group is None else group.attrs.asdict()

    def _all_pixels(self) -> list[int]:
        try:
            level_group = self._root[str(self.level)]
        except KeyError:
            return []
        return sorted(int(name) for name in level_group.group_keys() if name.isdigit())

    def tiles(self) -> list[int]:
        """The complete tiles (:meth:`has`), sorted."""
        return [pixel for pixel in self._all_pixels() if self.has(pixel)]

    def incomplete_tiles(self) -> list[int]:
        """Tiles present in the store but not complete (half-written or damaged), sorted."""
        return [pixel for pixel in self._all_pixels() if not self.has(pixel)]

    def info(self) -> list[tuple[int, int, int]]:
        """(pixel, rows, stored bytes) of every complete tile, sorted by pixel."""
        out = []
        for pixel in self.tiles():
            group = self._group(pixel)
            assert group is not None
            size = sum(int(array.nbytes_stored()) for _, array in group.arrays())
            out.append((pixel, int(group.attrs["rows"]), size))
        return out

    # -- writing -----------------------------------------------------------

    def write_tile(self, pixel: int, table: Table, *, partial: bool = False,
                   cover_deg: tuple[float, float, float] | None = None, origin: str = "",
                   mag_limit: float | None = None) -> int:
        """Write (or rewrite) one tile: the column arrays first, the completeness marker last.

        Only one process may write a given tile at a time (see :func:`tile_task_key`).

        Parameters
        ----------
        pixel
            The tile (nested HEALPix pixel at the cache's level).
        table
            The tile's stars: every column of :data:`REFERENCE_COLUMNS` (other columns are
            ignored), all of them in the tile by :func:`tile_of`.
        partial
            True when the table holds the tile's stars only within ``cover_deg`` (a
            catalog file that covers part of the tile).
        cover_deg
            (ra, dec, radius) of the cone within which a partial tile is complete, degrees.
        origin
            Where the stars came from (a file name, an archive query), kept in the marker.
        mag_limit
            The faintest G the tile was filled to (an archive fill), mag; None: unknown
            (a catalog file), taken as deep enough for any read.

        Returns
        -------
        int
            Rows written.

        Raises
        ------
        CatalogError
            If a column is missing or not numeric, or a star is not in the tile.
        """
        name = self._name(pixel)
        columns = _tile_columns(table, where=self._where(pixel))
        n = len(columns["ra"])
        if n:
            tiles = healpix_nested_index(columns["ra"], columns["dec"], level=self.level)
            wrong = tiles != int(pixel)
            if wrong.any():
                raise CatalogError(f"{self._where(pixel)}: {int(wrong.sum())} of {n} star(s) lie in other "
                                   f"tiles (e.g. tile {int(tiles[wrong][0])}); split the table with tile_of")
        if partial and cover_deg is None:
            raise ValueError("a partial tile needs cover_deg, the cone it is complete within")
        level_group = self._level_group()
        group = level_group.create_group(str(int(pixel)), overwrite=True, attributes={COMPLETE_KEY: False})
        for col, values in columns.items():
            array = group.create_array(col, shape=(n,), dtype=TILE_DTYPES[col], chunks=(max(n, 1),),
                                       attributes={"unit": REFERENCE_COLUMNS[col]})
            if n:
                array[:] = values
        marker = {
            COMPLETE_KEY: True,
            "rows": int(n),
            "checksum": _checksum(columns),
            "level": self.level,
            "pixel": int(pixel),
            "partial": bool(partial),
            "cover_deg": None if cover_deg is None else [float(v) for v in cover_deg],
            "origin": str(origin),
            "mag_limit": None if mag_limit is None else float(mag_limit),
        }
        group.attrs.put(marker)  # one write of the group metadata: the marker comes last
        logger.debug("wrote %s: %d rows%s", name, n, " (partial)" if partial else "")
        return int(n)

    def _level_group(self) -> zarr.Group:
        """The group holding the tiles, created if absent (safe when many processes race to)."""
        name = str(self.level)
        for _ in range(3):
            existing = self._group_or_none(name)
            if existing is not None:
                return existing
            try:
                return self._root.create_group(name, overwrite=False)
            except zarr.errors.ContainsGroupError:
                continue  # created by another writer meanwhile
        raise InputFileError(f"tile cache {self.url}: cannot create its level-{self.level} group")

    def delete_tile(self, pixel: int) -> None:
        """Remove a tile (nothing happens when it is absent)."""
        name = self._name(pixel)
        level_group = self._group_or_none(str(self.level))
        if level_group is not None and str(int(pixel)) in level_group:
            del level_group[str(int(pixel))]
            logger.debug("deleted %s", name)

    def _group_or_none(self, path: str) -> zarr.Group | None:
        try:
            node = self._root[path]
        except KeyError:
            return None
        return node if isinstance(node, zarr.Group) else None

    # -- reading -----------------------------------------------------------

    def read_columns(self, pixel: int, *, check: bool = True) -> dict[str, np.ndarray]:
        """A complete tile's columns as numpy arrays (see :meth:`read_tile`)."""
        problem = self._problem(pixel, deep=False)
        if problem is not None:
            raise CatalogError(f"{self._where(pixel)} is not available: {problem}; fill it again "
                               "(astrodask cache import / prefetch)")
        group = self._group(pixel)
        assert group is not None
        try:
            columns = {name: group[name][:] for name in TILE_DTYPES}
        except (KeyError, ValueError, OSError, RuntimeError, zarr.errors.BaseZarrError) as err:
            raise CatalogError(f"{self._where(pixel)} is unreadable ({type(err).__name__}: {err}); "
                               "fill it again") from err
        if check and _checksum(columns) != group.attrs.get("checksum"):
            raise CatalogError(f"{self._where(pixel)}: column data disagree with the marker's checksum "
                               "(damaged or overwritten); fill it again")
        return columns

    def read_many(self, pixels: Iterable[int]) -> dict[int, tuple[dict[str, Any], dict[str, np.ndarray] | str]]:
        """Several tiles at once: all their arrays are fetched concurrently (zarr's async API).

        Each tile is checked as :meth:`verify` does (marker, row count, checksum,
        which also catches absent chunks read as fill values).

        Returns
        -------
        dict
            By tile: (its marker, its columns), or (``{}``, why it is not available).
        """
        names = {int(p): self._name(p) for p in pixels}
        results = zarr_sync(_read_groups(self._store, list(names.values())))
        out: dict[int, tuple[dict[str, Any], dict[str, np.ndarray] | str]] = {}
        for pixel, (attrs, columns) in zip(names, results, strict=True):
            checked = _check_read(attrs, columns)
            out[pixel] = ({} if isinstance(checked, str) else attrs, checked)
        return out

    def read_tile(self, pixel: int, *, check: bool = True) -> Table:
        """One complete tile as a reference table.

        Parameters
        ----------
        pixel
            The tile.
        check
            Verify the data against the marker's checksum.

        Returns
        -------
        astropy.table.Table
            :data:`REFERENCE_COLUMNS` with their units, at the catalog epoch; ``meta`` holds
            the tile's marker.

        Raises
        ------
        CatalogError
            If the tile is absent, incomplete or damaged (the message names it and why).
        """
        table = _columns_to_table(self.read_columns(pixel, check=check))
        table.meta.update({"tile": self._name(pixel), "cache": self.url, **self.attrs(pixel)})
        return table


async def _read_groups(store: Any, names: list[str]) -> list[tuple[Any, Any]]:
    """(attrs, columns) of tile groups, read concurrently; a string instead of attrs when unreadable."""
    from zarr.api.asynchronous import open_group

    async def one(name: str) -> tuple[Any, Any]:
        try:
            group = await open_group(store=store, path=name, mode="r", zarr_format=3)
            attrs = dict(group.attrs)
            if attrs.get(COMPLETE_KEY) is not True:
                return "no completeness marker (written partly, or being written)", None
            arrays = await asyncio.gather(*(group.getitem(col) for col in TILE_DTYPES))
            data = await asyncio.gather(*(array.getitem(slice(None)) for array in arrays))
        except (KeyError, ValueError, OSError, RuntimeError, zarr.errors.BaseZarrError) as err:
            if isinstance(err, (KeyError, FileNotFoundError, zarr.errors.GroupNotFoundError)):
                return "absent", None
            return f"unreadable ({type(err).__name__}: {err})", None
        return attrs, dict(zip(TILE_DTYPES, data, strict=True))

    return list(await asyncio.gather(*(one(name) for name in names)))


def _check_read(attrs: Any, columns: Any) -> dict[str, np.ndarray] | str:
    """A tile's columns when they agree with its marker, else why not."""
    if isinstance(attrs, str):
        return attrs
    rows = attrs.get("rows")
    for name, dtype in TILE_DTYPES.items():
        values = columns[name]
        if values.shape != (rows,) or values.dtype != np.dtype(dtype):
            return f"column {name} has shape {values.shape} and dtype {values.dtype}, the marker says ({rows},) {dtype}"
    if _checksum(columns) != attrs.get("checksum"):
        return "column data disagree with the marker's checksum"
    return columns


def _float_column(column: Any) -> np.ndarray:
    values = np.ma.asarray(column).astype(np.float64)
    return np.ma.filled(values, np.nan)


def _tile_columns(table: Table, *, where: str) -> dict[str, np.ndarray]:
    """The reference columns of a table as contiguous native arrays of the tile dtypes."""
    missing = [name for name in TILE_DTYPES if name not in table.colnames]
    if missing:
        raise CatalogError(f"{where}: the table lacks column(s) {', '.join(missing)}; a tile holds "
                           f"{', '.join(TILE_DTYPES)} (normalise it with astrodask.reference.gaia.normalise_catalog)")
    out: dict[str, np.ndarray] = {}
    for name, dtype in TILE_DTYPES.items():
        column = table[name]
        kind = np.asarray(column).dtype.kind
        if kind not in "iuf" or np.asarray(column).ndim != 1:
            raise CatalogError(f"{where}: column {name} must be 1-D numeric, got dtype {np.asarray(column).dtype}")
        if name == "source_id":
            values = np.ma.filled(np.ma.asarray(column), -1).astype(np.int64)
        else:
            values = _float_column(column)
        out[name] = np.ascontiguousarray(values, dtype=np.dtype(dtype).newbyteorder("="))
    return out


def _checksum(columns: Mapping[str, np.ndarray]) -> str:
    """blake2b (128 bit) of the columns' names, dtypes and little-endian bytes, in tile order."""
    digest = hashlib.blake2b(digest_size=16)
    for name, dtype in TILE_DTYPES.items():
        values = np.ascontiguousarray(columns[name], dtype=np.dtype(dtype).newbyteorder("<"))
        digest.update(f"{name}:{values.dtype.str}:{values.size};".encode())
        digest.update(values.tobytes())
    return digest.hexdigest()


def _columns_to_table(columns: Mapping[str, np.ndarray]) -> Table:
    table = Table({name: columns[name] for name in TILE_DTYPES}, copy=False)
    for name, unit in REFERENCE_UNITS.items():
        table[name].unit = unit
    return table


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
    ra = _float_column(table["ra"])
    dec = _float_column(table["dec"])
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
    ra_b, dec_b, step = _tile_boundaries(pixels, level=level)
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
        A table of :data:`REFERENCE_COLUMNS` (:func:`astrodask.reference.gaia.read_catalog`
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
    _check_level(level)
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
        ra_b, dec_b, _ = _tile_boundaries(np.array([pixel]), level=level, per_edge=per_edge)
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
    return [(lo << SOURCE_ID_SHIFT, (hi << SOURCE_ID_SHIFT) - 1) for lo, hi in ranges]


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
    """Fill tiles from the Gaia archive one after the other, in this process (no Dask).

    For a single process (``astrodask solve --serial``); a cluster fills tiles as
    Dask tasks instead (:mod:`astrodask.run.graph`), one writer per tile.

    Returns
    -------
    dict
        Rows written, by tile.

    Raises
    ------
    ArchiveError
        After trying every tile, if some failed: names each with its error.
    """
    store = cache if isinstance(cache, TileCache) else TileCache(cache)
    written: dict[int, int] = {}
    failed: list[str] = []
    for pixel in pixels:
        try:
            written[int(pixel)] = fill_tile_from_archive(store, int(pixel), config=config, mag_limit=mag_limit)
        except ArchiveError as err:
            failed.append(str(err))
    if failed:
        raise ArchiveError(f"{len(failed)} tile(s) could not be filled: " + "; ".join(failed))
    return written


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


def _shortfall(attrs: Mapping[str, Any], need_cone: Iterable[float] | None, mag_limit: float | None) -> str:
    """Why a complete tile is not enough for a read (empty: it is)."""
    if attrs.get("partial") and (need_cone is None or not _cone_within(need_cone, attrs.get("cover_deg"))):
        return f"partial: complete only within the cone {attrs.get('cover_deg')} deg"
    filled_to = attrs.get("mag_limit")
    if mag_limit is not None and filled_to is not None and float(filled_to) < float(mag_limit) - 1e-9:
        return f"filled to G = {float(filled_to):g} only, G = {float(mag_limit):g} needed"
    return ""


# --------------------------------------------------------------------------
# Reading a field
# --------------------------------------------------------------------------


def read_field(cache: TileCache, field: Any, *, margin_deg: float = DEFAULT_MARGIN_DEG,
               mag_limit: float | None = DEFAULT_MAG_LIMIT, epoch_yr: float | None = None,
               missing: MissingPolicy = "error", fill: TileFiller | None = None) -> Table:
    """The reference stars of a field from the cache, cut to it, limited in depth.

    Parameters
    ----------
    cache
        The tile cache.
    field
        The footprint's corners (N, 2) as (ra, dec) degrees, in order around it
        (:func:`astrodask.reference.gaia.footprint_corners`), or a cone (ra, dec, radius) in degrees.
    margin_deg
        Stars up to this far outside the footprint are kept, degrees.
    mag_limit
        Faintest G kept, mag (None: all).
    epoch_yr
        Propagate the stars to this Julian epoch (:func:`astrodask.reference.gaia.propagate_table`);
        None: keep the catalog epoch.
    missing
        ``"error"``: a tile that is absent, incomplete, partial without covering the
        field, or filled to a brighter limit than ``mag_limit`` raises; ``"skip"``: such
        tiles are left out (partial and shallow ones are used as they are).
    fill
        Called once with the tiles that are not available, to fill them (e.g. from
        the Gaia archive, as one Dask task per tile); they are then read again. None:
        no fill (the tiles are missing).

    Returns
    -------
    astropy.table.Table
        :data:`REFERENCE_COLUMNS` (plus ``ref_flag``, ``ra_ref``, ``dec_ref`` when
        propagated), brightest first; ``meta`` names the cache, the tiles read and
        those missing.

    Raises
    ------
    CatalogError
        If a tile is missing and ``missing="error"``; the message names the tiles.
    """
    if missing not in ("error", "skip"):
        raise ValueError(f"missing = {missing!r}: allowed 'error' or 'skip'")
    spec = np.asarray(field, dtype=np.float64)
    if spec.shape == (3,):
        ra_c, dec_c, radius = (float(v) for v in spec)
        pixels = tiles_for_field(ra_c, dec_c, radius + margin_deg, level=cache.level)
        need = (ra_c, dec_c, radius + margin_deg)
    else:
        pixels = tiles_for_footprint(spec, margin_deg=margin_deg, level=cache.level)
        need = enclosing_cone(spec, margin_deg=margin_deg)
    got_tiles = cache.read_many(pixels.tolist())
    unavailable = {pixel: (got if isinstance(got, str) else _shortfall(attrs, need, mag_limit))
                   for pixel, (attrs, got) in got_tiles.items()}
    unavailable = {pixel: why for pixel, why in unavailable.items() if why}
    if unavailable and fill is not None:
        logger.info("tile cache %s: filling %d tile(s) of the field: %s", cache.url, len(unavailable),
                    ", ".join(f"{cache.level}/{p}" for p in unavailable))
        fill(sorted(unavailable))
        got_tiles.update(cache.read_many(sorted(unavailable)))
    parts: list[dict[str, np.ndarray]] = []
    absent: list[str] = []
    for pixel, (attrs, got) in got_tiles.items():
        if isinstance(got, str):
            absent.append(f"{cache.level}/{pixel} ({got})")
            continue
        why = _shortfall(attrs, need, mag_limit)
        if why:
            absent.append(f"{cache.level}/{pixel} ({why})")
            if missing == "error":
                continue
        parts.append(got)
    if absent and missing == "error":
        raise CatalogError(f"tile cache {cache.url}: {len(absent)} of {len(pixels)} tile(s) of the field are "
                           f"not available: {'; '.join(absent)}; fill them (astrodask cache prefetch, or "
                           "cache import) or read with missing='skip'")
    merged = {name: (np.concatenate([p[name] for p in parts]) if parts else np.empty(0, dtype))
              for name, dtype in TILE_DTYPES.items()}
    table = _columns_to_table(merged)
    if spec.shape == (3,):
        table = select_cone(table, ra_deg=need[0], dec_deg=need[1], radius_deg=need[2])
    else:
        table = select_footprint(table, spec, margin_deg=margin_deg)
    table = limit_depth(table, mag_limit=mag_limit)
    if epoch_yr is not None:
        table = propagate_table(table, epoch_yr)
    table.meta.update({"origin": f"tile cache {cache.url}", "cache": cache.url, "level": cache.level,
                       "tiles": [int(p) for p in pixels], "missing_tiles": absent})
    return table


def _cone_within(inner: Iterable[float], outer: Iterable[float] | None) -> bool:
    """True when the cone ``inner`` lies inside the cone ``outer`` (both (ra, dec, radius) deg)."""
    if outer is None:
        return False
    ra1, dec1, r1 = (float(v) for v in inner)
    ra2, dec2, r2 = (float(v) for v in outer)
    return float(angular_separation_deg(ra1, dec1, ra2, dec2)) + r1 <= r2
