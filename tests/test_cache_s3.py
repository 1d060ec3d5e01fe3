"""The Gaia tile cache on S3: zarr's FsspecStore over s3fs, against moto's S3 server on loopback.

No mocks of the cache or of s3fs: every byte goes over HTTP to the server started by
the ``s3_server`` fixture (tests/conftest.py). The server is found through the
environment only (``AWS_ENDPOINT_URL`` and dummy credentials, set by ``s3_bucket``),
as a deployment would configure its workers; spawned processes and Dask workers
inherit it.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from astropy.table import Table

from astrodask.reference import fill
from astrodask.reference import healpix
from astrodask.reference import store as tile_store
from astrodask.errors import CatalogError
from astrodask.reference.footprint import limit_depth, select_cone
from astrodask.simulate import synthetic_gaia_catalog
from astrodask.types import REFERENCE_COLUMNS

if TYPE_CHECKING:
    from s3fs import S3FileSystem

#: Centre of the simulated catalog, deg (as in test_cache.py).
FIELD_CENTRE = (10.0, 20.0)
#: Worker processes racing to create one new store.
RACE_WORKERS = 4
#: Fresh stores (prefixes) the race is repeated on.
RACE_ROUNDS = 3
#: Longest wait for the racing workers, s (a hang fails the test instead of blocking CI).
RACE_TIMEOUT_S = 120.0


@pytest.fixture()
def catalog() -> Table:
    """Gaia DR3-like stars over 1.6 x 1.2 deg around :data:`FIELD_CENTRE`: 2 883 stars in 7 tiles.

    Smaller than test_cache.py's: writing a tile costs ~160 requests to the server
    (~1 s), so the S3 tests keep to a handful of tiles.
    """
    return synthetic_gaia_catalog(*FIELD_CENTRE, rng=np.random.default_rng(7), width_deg=1.6,
                                  height_deg=1.2, density_per_deg2=1500.0)


@pytest.fixture()
def s3_url(s3_bucket: str) -> str:
    """Where the tile cache lives: a prefix of the fresh bucket."""
    return f"{s3_bucket}/tiles"


@pytest.fixture()
def s3(s3_bucket: str) -> S3FileSystem:
    """A synchronous s3fs filesystem on the test server (configured by the environment only)."""
    import s3fs

    return s3fs.S3FileSystem()


def _one_tile(catalog: Table) -> tuple[int, Table]:
    """The most populated tile of the catalog and its stars."""
    tiles = healpix.tile_of(catalog)
    pixel = int(np.bincount(tiles).argmax())
    return pixel, catalog[tiles == pixel]


def _assert_same_columns(got: Table | dict[str, np.ndarray], expected: Table) -> None:
    for name in REFERENCE_COLUMNS:
        np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(expected[name]), err_msg=name)


def _key(url: str, *parts: object) -> str:
    """The object key (``bucket/prefix/...``) of a path inside the store at ``url``."""
    return "/".join([url.removeprefix("s3://"), *map(str, parts)])


# -- round trip ----------------------------------------------------------------------


def test_round_trip_on_s3(s3_url, s3, catalog):
    pixel, part = _one_tile(catalog)
    assert np.isnan(part["pmra"]).any()  # NaNs survive the trip
    cache = tile_store.TileCache(s3_url)
    assert cache.url == s3_url and cache.tiles() == []
    assert cache.write_tile(pixel, part, origin="test") == len(part)
    assert cache.has(pixel) and cache.verify(pixel)
    back = cache.read_tile(pixel)
    assert back.colnames == list(REFERENCE_COLUMNS)
    _assert_same_columns(back, part)
    for name in REFERENCE_COLUMNS:
        assert back[name].dtype == (np.int64 if name == "source_id" else np.float64)
    assert back.meta["rows"] == len(part) and back.meta["origin"] == "test"
    (info,) = cache.info()
    assert info[:2] == (pixel, len(part)) and info[2] > 0

    # the documented layout, as objects in the bucket
    objects = set(s3.find(_key(s3_url)))
    tile = [_key(s3_url, 6, pixel, name, part_) for name in REFERENCE_COLUMNS for part_ in ("zarr.json", "c/0")]
    assert objects == {_key(s3_url, "zarr.json"), _key(s3_url, 6, "zarr.json"), _key(s3_url, 6, pixel, "zarr.json"),
                       *tile}
    root = json.loads(s3.cat(_key(s3_url, "zarr.json")))
    assert root["attributes"] == {"astrodask_tile_cache": tile_store.STORE_VERSION, "level": healpix.TILE_LEVEL}

    reopened = tile_store.TileCache(s3_url)
    assert reopened.tiles() == [pixel] and reopened.verify(pixel)
    cache.delete_tile(pixel)
    assert not cache.has(pixel) and cache.tiles() == [] and reopened.tiles() == []
    assert s3.find(_key(s3_url, 6)) == [_key(s3_url, 6, "zarr.json")]


def test_import_and_read_field_on_s3(s3_url, catalog):
    """``import_catalog`` (the ``astrodask cache import`` path) then field reads, on S3.

    The catalog file is a cone search (0.45 deg) of the simulated sky: its tiles are
    partial, complete within the cone it covers.
    """
    catalog = select_cone(catalog, ra_deg=FIELD_CENTRE[0], dec_deg=FIELD_CENTRE[1], radius_deg=0.45)
    cache = tile_store.TileCache(s3_url)
    written = fill.import_catalog(cache, catalog)
    assert sum(written.values()) == len(catalog)
    info = cache.info()
    assert [(pixel, rows) for pixel, rows, _ in info] == sorted(written.items())
    assert set(healpix.tile_of(catalog).tolist()) <= {pixel for pixel, _, _ in info}
    assert fill.import_catalog(cache, catalog) == {}  # all there: nothing rewritten

    # read_field (zarr's async API underneath: every array fetched concurrently): a field
    # inside the cone the catalog covers is read...
    cover = fill.catalog_cover(catalog)
    field = (cover[0], cover[1], cover[2] - 0.05)
    got = tile_store.read_field(cache, field, margin_deg=0.0, mag_limit=19.0)
    expected = limit_depth(select_cone(catalog, ra_deg=field[0], dec_deg=field[1], radius_deg=field[2]),
                           mag_limit=19.0)
    assert len(got) == len(expected) > 200
    got.sort("source_id")
    expected.sort("source_id")
    _assert_same_columns(got, expected)
    assert got.meta["cache"] == s3_url and got.meta["missing_tiles"] == []
    # ... and one reaching beyond it is refused, naming the partial tiles
    with pytest.raises(CatalogError, match="partial"):
        tile_store.read_field(cache, (*cover[:2], cover[2] + 0.2), margin_deg=0.0, mag_limit=19.0)


# -- damage: detected, then repaired by a new write ------------------------------------


def _swap_chunk(s3: S3FileSystem, url: str, pixel: int) -> str:
    """Overwrite the ``pmra`` chunk with the (valid, decodable) bytes of the ``pmdec`` chunk."""
    s3.pipe(_key(url, 6, pixel, "pmra/c/0"), s3.cat(_key(url, 6, pixel, "pmdec/c/0")))
    return "checksum"


def _garbage_chunk(s3: S3FileSystem, url: str, pixel: int) -> str:
    """Overwrite the ``pmra`` chunk with bytes that are not a zstd frame at all (numcodecs raises RuntimeError)."""
    s3.pipe(_key(url, 6, pixel, "pmra/c/0"), b"not a zstd frame " * 16)
    return "unreadable"


def _lose_chunk(s3: S3FileSystem, url: str, pixel: int) -> str:
    """Delete the ``dec`` chunk object."""
    s3.rm(_key(url, 6, pixel, "dec/c/0"))
    return "dec has 0 of 1 chunk"


def _drop_marker(s3: S3FileSystem, url: str, pixel: int) -> str:
    """Rewrite the tile group's zarr.json without the completeness key (the rest of the marker kept)."""
    key = _key(url, 6, pixel, "zarr.json")
    meta = json.loads(s3.cat(key))
    assert meta["attributes"].pop(tile_store.COMPLETE_KEY) is True
    s3.pipe(key, json.dumps(meta).encode())
    return "no completeness marker"


@pytest.mark.parametrize("damage", [_swap_chunk, _garbage_chunk, _lose_chunk, _drop_marker])
def test_damaged_tile_on_s3_is_detected_and_rewritten(s3_url, s3, catalog, damage):
    cache = tile_store.TileCache(s3_url)
    pixel, part = _one_tile(catalog)
    cache.write_tile(pixel, part)

    why = damage(s3, s3_url, pixel)
    assert not cache.verify(pixel)
    if damage in (_swap_chunk, _garbage_chunk):  # has() reads metadata only: the chunk is there
        assert cache.has(pixel)
    else:
        assert not cache.has(pixel)
        assert cache.tiles() == [] and cache.incomplete_tiles() == [pixel]
    with pytest.raises(CatalogError, match=f"tile {healpix.TILE_LEVEL}/{pixel} of cache {s3_url}") as raised:
        cache.read_tile(pixel)
    assert raised.match(why)
    (attrs, problem), = cache.read_many([pixel]).values()
    assert attrs == {} and isinstance(problem, str)

    assert cache.write_tile(pixel, part) == len(part)
    assert cache.has(pixel) and cache.verify(pixel)
    _assert_same_columns(cache.read_tile(pixel), part)
    assert cache.tiles() == [pixel]


def test_listing_follows_tiles_added_and_removed_by_another_client(s3_url, s3, catalog):
    """A long-lived TileCache (a Dask worker's) sees tiles that other processes add or delete.

    s3fs caches directory listings for ever by default; a cached listing of the level
    group would hide new tiles from :meth:`TileCache.tiles` and list deleted ones
    (zarr then warns "Object at ... is not recognized", an error under this suite's
    filterwarnings). The cache turns the listing cache off for object stores.
    """
    tiles = healpix.tile_of(catalog)
    first, second = (int(p) for p in np.unique(tiles)[:2])
    cache = tile_store.TileCache(s3_url)
    cache.write_tile(first, catalog[tiles == first])
    assert cache.tiles() == [first]
    # another client adds a tile: written under another prefix, copied in by a separate s3fs client
    staging = f"{s3_url}-staging"
    tile_store.TileCache(staging).write_tile(second, catalog[tiles == second])
    sources = s3.find(_key(staging, 6, second))
    s3.copy(sources, [key.replace(_key(staging), _key(s3_url), 1) for key in sources])
    assert cache.has(second) and cache.verify(second)
    assert cache.tiles() == [first, second]
    # ... and removes one
    s3.rm(_key(s3_url, 6, first), recursive=True)
    assert cache.tiles() == [second] and cache.incomplete_tiles() == []
    assert not cache.has(first)


# -- many processes create one new store at once --------------------------------------

_BARRIER: Any = None


def _init_racer(barrier: Any, warm_up_url: str) -> None:
    """Start a racing worker: keep the barrier, and open a store of its own once.

    The first store a process opens costs it far more (botocore's service model, the
    S3 client, zarr's codecs) than the next: warmed up, the workers leave the barrier
    together and every round is a real race (all of them find no store and create it).
    """
    global _BARRIER
    _BARRIER = barrier
    tile_store.TileCache(f"{warm_up_url}/warm-up-{os.getpid()}")


def _race_to_write(url: str, parts: list[tuple[int, dict[str, np.ndarray]]]) -> list[int]:
    """In a spawned worker: wait for the others, then open (create) the store and write tiles.

    Only the URL is given: the server is found through the environment inherited
    from the test (``AWS_ENDPOINT_URL``, credentials).
    """
    assert os.environ["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
    _BARRIER.wait(timeout=RACE_TIMEOUT_S)  # every worker opens the new store at the same moment
    cache = tile_store.TileCache(url)
    return [cache.write_tile(pixel, Table(columns), origin=f"pid {os.getpid()}") for pixel, columns in parts]


@pytest.mark.slow
def test_processes_create_one_s3_store_and_write_different_tiles(s3_bucket, s3, catalog):
    """Several processes create one new S3 store at once and fill different tiles of it.

    Repeated on fresh prefixes, since the race is in creating the store: every process
    opens it while others create its root and level groups (S3 has no exclusive
    create, so two creators may both write the same metadata). Afterwards every tile
    is complete and the union of the tiles is the catalog, no star lost or doubled.
    """
    tiles = healpix.tile_of(catalog)
    parts = [(int(p), {n: np.asarray(catalog[n])[tiles == p] for n in REFERENCE_COLUMNS}) for p in np.unique(tiles)]
    assert len(parts) > RACE_WORKERS
    expected_ids = np.sort(np.asarray(catalog["source_id"]))
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(RACE_WORKERS)
    with ctx.Pool(RACE_WORKERS, initializer=_init_racer, initargs=(barrier, s3_bucket)) as pool:
        for attempt in range(RACE_ROUNDS):
            url = f"{s3_bucket}/race{attempt}"
            jobs = [(url, parts[k::RACE_WORKERS]) for k in range(RACE_WORKERS)]
            results = pool.starmap_async(_race_to_write, jobs, chunksize=1).get(timeout=RACE_TIMEOUT_S)
            assert sum(map(sum, results)) == len(catalog)

            cache = tile_store.TileCache(url)
            root = json.loads(s3.cat(_key(url, "zarr.json")))
            assert root["attributes"] == {"astrodask_tile_cache": tile_store.STORE_VERSION, "level": healpix.TILE_LEVEL}
            listed = sorted(s3.ls(_key(url, 6)))
            assert listed == sorted([_key(url, 6, "zarr.json"), *(_key(url, 6, p) for p, _ in parts)])
            read = cache.read_many([p for p, _ in parts])  # marker, shapes and checksum of every tile
            origins = set()
            for pixel, columns in parts:
                attrs, got = read[pixel]
                assert not isinstance(got, str), f"tile {pixel}: {got}"
                assert attrs["rows"] == len(columns["source_id"])
                np.testing.assert_array_equal(got["source_id"], columns["source_id"])
                origins.add(attrs["origin"])
            assert len(origins) == RACE_WORKERS  # the tiles really came from different processes
            ids = np.sort(np.concatenate([got["source_id"] for _, got in read.values()]))
            np.testing.assert_array_equal(ids, expected_ids)
    assert cache.tiles() == sorted(p for p, _ in parts)  # and nothing else is listed (above)


def _read_in_worker(url: str, pixel: int) -> tuple[str, bool, list[int]]:
    """On a Dask worker: the endpoint it sees, and a tile read from the cache with no options."""
    cache = tile_store.TileCache(url)
    return (os.environ.get("AWS_ENDPOINT_URL", ""), cache.verify(pixel),
            np.asarray(cache.read_tile(pixel)["source_id"]).tolist())


@pytest.mark.slow
def test_dask_worker_process_reads_the_s3_cache(s3_url, s3_server, catalog):
    """A LocalCluster started after the fixture: its worker process finds the server via the environment."""
    from distributed import Client, LocalCluster

    pixel, part = _one_tile(catalog)
    tile_store.TileCache(s3_url).write_tile(pixel, part)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1") as cluster, Client(cluster) as client:
        endpoint, complete, ids = client.submit(_read_in_worker, s3_url, pixel, pure=False).result(timeout=60)
    assert endpoint == s3_server.endpoint_url
    assert complete and ids == np.asarray(part["source_id"]).tolist()
