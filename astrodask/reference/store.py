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
from astrodask.errors import CacheError, CacheUnavailableError, CatalogError, ConfigError, InputFileError
from astrodask.reference.catalog import REFERENCE_UNITS, float_column, propagate_table
from astrodask.reference.footprint import enclosing_cone, limit_depth, select_cone, select_footprint
from astrodask.reference.healpix import (
    TILE_LEVEL,
    check_level,
    healpix_nested_index,
    n_tiles,
    tiles_for_field,
    tiles_for_footprint,
)
from astrodask.sphere import angular_separation_deg
from astrodask.types import REFERENCE_COLUMNS

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------
# Named constants
# --------------------------------------------------------------------------

#: Version of the store layout, written in the root group's attributes.
STORE_VERSION = 1
#: Folder of the default local cache, under the user cache directory.
CACHE_SUBDIR = ("astrodask", "gaia-tiles")
#: Default margin around a footprint read from the cache, deg (``GaiaConfig.margin_deg``).
DEFAULT_MARGIN_DEG = GaiaConfig().margin_deg
#: Default faintest G read from the cache, mag (``GaiaConfig.mag_limit``).
DEFAULT_MAG_LIMIT = GaiaConfig().mag_limit
#: Largest cone radius accepted by the tile lookups, deg.
MAX_RADIUS_DEG = 30.0
TILE_DTYPES: dict[str, str] = {name: ("int64" if name == "source_id" else "float64")
                               for name in REFERENCE_COLUMNS}
#: fsspec protocols whose filesystems cache directory listings (turned off for the cache).
LISTING_CACHE_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "http", "https"})
#: The attribute whose value True marks a tile complete (written last).
COMPLETE_KEY = "complete"

#: Level of the HEALPix pixels bordering a tile whose sources its archive query also takes

MissingPolicy = Literal["error", "skip"]
#: Fills tiles of a cache (e.g. from the Gaia archive); called with the tiles a read lacks.
TileFiller = Callable[[list[int]], object]

# HEALPix base-face geometry (HEALPix C++ ``jrll``/``jpll``).

#: Beginnings of the reasons a tile is unavailable that mean it is damaged, not just absent or shallow.
DAMAGED_PREFIXES = ("unreadable", "column data disagree", "column ", "marker has no valid")

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
        check_level(level)
        self.level = int(level)
        self._store, self.url = _open_store(url, storage_options=storage_options)
        try:
            root = _open_or_create_root(self._store, url=self.url,
                                        attributes={"astrodask_tile_cache": STORE_VERSION, "level": self.level})
        except Exception as err:
            if unreachable(err):
                raise cache_unavailable(self.url, err) from err
            raise
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
        CacheError
            If the cache cannot be written (read-only, full): transient for a resubmit.
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
        try:
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
        except OSError as err:  # PermissionError, a full disk, a read-only file system or bucket
            raise CacheError(f"{self._where(pixel)} cannot be written ({type(err).__name__}: "
                             f"{err.strerror or err}): is the cache read-only? Fill it where it can be written "
                             "(astrodask cache prefetch / import), or give a catalog with --catalog") from err
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
            raise CacheError(f"{self._where(pixel)} is not available: {problem}; fill it again "
                               "(astrodask cache import / prefetch)")
        group = self._group(pixel)
        assert group is not None
        try:
            columns = {name: group[name][:] for name in TILE_DTYPES}
        except (KeyError, ValueError, OSError, RuntimeError, zarr.errors.BaseZarrError) as err:
            raise CacheError(f"{self._where(pixel)} is unreadable ({type(err).__name__}: {err}); "
                               "fill it again") from err
        if check and _checksum(columns) != group.attrs.get("checksum"):
            raise CacheError(f"{self._where(pixel)}: column data disagree with the marker's checksum "
                               "(damaged or overwritten); fill it again")
        return columns

    def read_many(self, pixels: Iterable[int]) -> dict[int, tuple[dict[str, Any], dict[str, np.ndarray] | str]]:
        """Several tiles at once: all their arrays are fetched concurrently (zarr's async API).

        Each tile is checked as :meth:`verify` does (marker, row count, checksum,
        which also catches absent chunks read as fill values).

        Raises
        ------
        CacheUnavailableError
            When the store cannot be reached (:func:`unreachable`): the tiles are not called
            damaged, so nothing refills them.

        Returns
        -------
        dict
            By tile: (its marker, its columns), or (``{}``, why it is not available).
        """
        names = {int(p): self._name(p) for p in pixels}
        try:
            results = zarr_sync(_read_groups(self._store, list(names.values())))
        except Exception as err:
            if unreachable(err):
                raise cache_unavailable(self.url, err) from err
            raise
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


def _connection_errors() -> tuple[type[BaseException], ...]:
    """The exception classes that mean "the store cannot be reached", of the libraries installed."""
    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError

        found += [BotoConnectionError, HTTPClientError]
    except ImportError:
        pass
    try:
        from aiohttp import ClientConnectionError, ServerTimeoutError

        found += [ClientConnectionError, ServerTimeoutError]
    except ImportError:
        pass
    return tuple(found)


def unreachable(err: BaseException) -> bool:
    """Whether ``err`` (or an error it was raised from) says the store could not be reached.

    Connection refused or reset, a name that does not resolve, a timeout: from the OS, botocore
    (s3fs) or aiohttp. Such an error passes, unlike a damaged tile.
    """
    kinds = _connection_errors()
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, kinds):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def cache_unavailable(url: str, err: BaseException) -> CacheUnavailableError:
    """The error for a tile cache ``url`` that cannot be reached, with the fix."""
    return CacheUnavailableError(f"tile cache {url} cannot be reached ({type(err).__name__}: {err}); its tiles "
                                 "are not damaged, only out of reach: resubmit once the store is back "
                                 "(solved exposures are skipped)")


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
            if unreachable(err):
                raise  # the store is out of reach, not the tile damaged
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


def _tile_columns(table: Table, *, where: str) -> dict[str, np.ndarray]:
    """The reference columns of a table as contiguous native arrays of the tile dtypes."""
    missing = [name for name in TILE_DTYPES if name not in table.colnames]
    if missing:
        raise CatalogError(f"{where}: the table lacks column(s) {', '.join(missing)}; a tile holds "
                           f"{', '.join(TILE_DTYPES)} "
                           "(normalise it with astrodask.reference.catalog.normalise_catalog)")
    out: dict[str, np.ndarray] = {}
    for name, dtype in TILE_DTYPES.items():
        column = table[name]
        kind = np.asarray(column).dtype.kind
        if kind not in "iuf" or np.asarray(column).ndim != 1:
            raise CatalogError(f"{where}: column {name} must be 1-D numeric, got dtype {np.asarray(column).dtype}")
        if name == "source_id":
            values = np.ma.filled(np.ma.asarray(column), -1).astype(np.int64)
        else:
            values = float_column(column)
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
        (:func:`astrodask.reference.footprint.footprint_corners`), or a cone (ra, dec, radius) in degrees.
    margin_deg
        Stars up to this far outside the footprint are kept, degrees.
    mag_limit
        Faintest G kept, mag (None: all).
    epoch_yr
        Propagate the stars to this Julian epoch (:func:`astrodask.reference.catalog.propagate_table`);
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
        for pixel, why in unavailable.items():
            if why.startswith(DAMAGED_PREFIXES):  # not merely absent: say so, whatever the fill's outcome
                logger.warning("tile cache %s: tile %d/%d is %s; filling it again", cache.url, cache.level, pixel, why)
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
        raise CacheError(f"tile cache {cache.url}: {len(absent)} of {len(pixels)} tile(s) of the field are "
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


def _shortfall(attrs: Mapping[str, Any], need_cone: Iterable[float] | None, mag_limit: float | None) -> str:
    """Why a complete tile is not enough for a read (empty: it is)."""
    if attrs.get("partial") and (need_cone is None or not _cone_within(need_cone, attrs.get("cover_deg"))):
        return f"partial: complete only within the cone {attrs.get('cover_deg')} deg"
    filled_to = attrs.get("mag_limit")
    if mag_limit is not None and filled_to is not None and float(filled_to) < float(mag_limit) - 1e-9:
        return f"filled to G = {float(filled_to):g} only, G = {float(mag_limit):g} needed"
    return ""
