"""The Gaia tile cache on real zarr stores (local folders and ``memory://``), no mocks."""

from __future__ import annotations

import multiprocessing
import uuid
from pathlib import Path

import numpy as np
import pytest
import zarr
from astropy.table import Table

from astrodask.reference import fill
from astrodask.reference import healpix
from astrodask.reference import store as tile_store
from astrodask.errors import CatalogError
from astrodask.reference.footprint import limit_depth, select_footprint
from astrodask.simulate import healpix_nested_index, synthetic_gaia_catalog
from astrodask.types import REFERENCE_COLUMNS

#: A Condor-size footprint (2.3 x 1.5 deg) centred on (10, 20) deg, as corners.
FIELD_CENTRE = (10.0, 20.0)


def _corners(ra: float, dec: float, width: float = 2.3, height: float = 1.5) -> np.ndarray:
    from astrodask.solve.tpv import tangent_plane_to_sky

    xi = np.array([-1, 1, 1, -1]) * width / 2
    eta = np.array([-1, -1, 1, 1]) * height / 2
    r, d = tangent_plane_to_sky(xi, eta, (ra, dec))
    return np.column_stack([np.asarray(r) % 360.0, d])


def _random_in_cone(rng: np.random.Generator, ra: float, dec: float, radius: float, n: int):
    rho = np.arccos(rng.uniform(np.cos(np.radians(radius)), 1.0, n))
    pa = rng.uniform(0, 2 * np.pi, n)
    a, d = np.radians(ra), np.radians(dec)
    c = np.array([np.cos(d) * np.cos(a), np.cos(d) * np.sin(a), np.sin(d)])
    e = np.array([-np.sin(a), np.cos(a), 0.0])
    nn = np.array([-np.sin(d) * np.cos(a), -np.sin(d) * np.sin(a), np.cos(d)])
    p = (np.cos(rho) * c[:, None] + np.sin(rho) * (np.sin(pa) * e[:, None] + np.cos(pa) * nn[:, None]))
    return np.degrees(np.arctan2(p[1], p[0])) % 360.0, np.degrees(np.arcsin(np.clip(p[2], -1, 1)))


@pytest.fixture()
def catalog() -> Table:
    return synthetic_gaia_catalog(*FIELD_CENTRE, rng=np.random.default_rng(7), width_deg=3.2,
                                  height_deg=2.4, density_per_deg2=1500.0)


@pytest.fixture(params=["local", "memory"])
def cache(request, tmp_path: Path) -> tile_store.TileCache:
    url = str(tmp_path / "tiles") if request.param == "local" else f"memory://astrodask-test-{uuid.uuid4().hex}"
    return tile_store.TileCache(url)


# -- geometry ----------------------------------------------------------------


@pytest.mark.parametrize("level", [0, 2, 6, 12])
def test_tile_boundary_inverts_the_nested_index(level):
    pixels = (np.arange(healpix.n_tiles(level)) if level <= 2
              else np.random.default_rng(level).integers(0, healpix.n_tiles(level), 3000))
    ra, dec, _ = healpix.tile_boundaries(pixels, level=level, per_edge=2)
    mids = np.radians(np.stack([ra[:, 1::2], dec[:, 1::2]]))  # the four edge midpoints
    v = np.stack([np.cos(mids[1]) * np.cos(mids[0]), np.cos(mids[1]) * np.sin(mids[0]), np.sin(mids[1])]).sum(axis=2)
    centre_ra = np.degrees(np.arctan2(v[1], v[0]))
    centre_dec = np.degrees(np.arcsin(v[2] / np.linalg.norm(v, axis=0)))
    np.testing.assert_array_equal(healpix_nested_index(centre_ra, centre_dec, level=level), pixels)


@pytest.mark.parametrize("ra, dec, radius", [(10.0, 20.0, 1.6), (0.3, -5.0, 1.4), (359.8, 41.8, 1.0),
                                             (123.0, 89.5, 1.6), (200.0, -88.9, 0.7), (45.0, 0.0, 0.05)])
def test_tiles_for_field_covers_brute_force(ra, dec, radius):
    result = healpix.tiles_for_field(ra, dec, radius, level=healpix.TILE_LEVEL)
    r, d = _random_in_cone(np.random.default_rng(1), ra, dec, radius, 400_000)
    touched = np.unique(healpix_nested_index(r, d, level=healpix.TILE_LEVEL))
    assert set(touched) <= set(result.tolist())
    # not absurdly larger: only tiles within a boundary sampling step of the cone are added
    assert len(result) <= len(touched) + max(4, len(touched) // 3)


def test_tiles_for_footprint_covers_brute_force_across_ra0():
    corners = _corners(0.4, -30.0)
    result = healpix.tiles_for_footprint(corners, margin_deg=0.2)
    r, d = _random_in_cone(np.random.default_rng(2), 0.4, -30.0, 1.8, 400_000)
    inside = select_footprint(Table({"ra": r, "dec": d}), corners, margin_deg=0.2)
    touched = np.unique(healpix_nested_index(inside["ra"], inside["dec"], level=healpix.TILE_LEVEL))
    assert set(touched) <= set(result.tolist())
    assert len(result) <= len(touched) + 4
    assert 8 <= len(result) <= 20  # the level choice: a modest number of tiles per Condor field


def test_tile_of_matches_healpix(catalog):
    np.testing.assert_array_equal(healpix.tile_of(catalog),
                                  healpix_nested_index(catalog["ra"], catalog["dec"], level=6))
    np.testing.assert_array_equal(healpix.tile_of(catalog, level=12), np.asarray(catalog["source_id"]) >> 35)


def test_default_cache_dir_honours_xdg(tmp_path):
    assert tile_store.default_cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "astrodask" / "gaia-tiles"
    assert tile_store.default_cache_dir({}) == Path.home() / ".cache" / "astrodask" / "gaia-tiles"


# -- the store -----------------------------------------------------------------


def _one_tile(catalog: Table) -> tuple[int, Table]:
    tiles = healpix.tile_of(catalog)
    pixel = int(np.bincount(tiles).argmax())
    return pixel, catalog[tiles == pixel]


def test_round_trip_is_exact(cache, catalog):
    pixel, part = _one_tile(catalog)
    assert np.isnan(part["pmra"]).any()
    assert cache.write_tile(pixel, part, origin="test") == len(part)
    assert cache.has(pixel) and cache.verify(pixel)
    back = cache.read_tile(pixel)
    assert back.colnames == list(REFERENCE_COLUMNS)
    for name in REFERENCE_COLUMNS:
        np.testing.assert_array_equal(np.asarray(back[name]), np.asarray(part[name]), err_msg=name)
        assert back[name].dtype == (np.int64 if name == "source_id" else np.float64)
    assert str(back["ra"].unit) == "deg" and str(back["pmra"].unit) == "mas / yr"
    assert cache.tiles() == [pixel]
    (info,) = cache.info()
    assert info[:2] == (pixel, len(part)) and info[2] > 0
    reopened = tile_store.TileCache(cache.url)
    assert reopened.tiles() == [pixel]
    cache.delete_tile(pixel)
    assert not cache.has(pixel) and cache.tiles() == []


def test_write_tile_validates(cache, catalog):
    pixel, part = _one_tile(catalog)
    with pytest.raises(CatalogError, match="lacks column"):
        cache.write_tile(pixel, Table({"ra": part["ra"], "dec": part["dec"]}))
    with pytest.raises(CatalogError, match="other tiles"):
        cache.write_tile(pixel, catalog)
    with pytest.raises(ValueError, match="out of range"):
        cache.write_tile(-1, part)
    assert not cache.has(pixel)


def _damage_no_marker(cache: tile_store.TileCache, pixel: int) -> None:
    cache._root[f"{cache.level}/{pixel}"].attrs.put({"complete": False})


def _damage_row_count(cache: tile_store.TileCache, pixel: int) -> None:
    attrs = cache.attrs(pixel)
    cache._root[f"{cache.level}/{pixel}"].attrs.put({**attrs, "rows": attrs["rows"] + 1})


def _damage_truncated(cache: tile_store.TileCache, pixel: int) -> None:
    cache._root[f"{cache.level}/{pixel}/dec"].resize((cache.attrs(pixel)["rows"] - 3,))


def _damage_lost_chunk(cache: tile_store.TileCache, pixel: int) -> None:
    import asyncio

    asyncio.run(cache._store.delete(f"{cache.level}/{pixel}/pmra/c/0"))


def _damage_data(cache: tile_store.TileCache, pixel: int) -> None:
    array = cache._root[f"{cache.level}/{pixel}/phot_g_mean_mag"]
    array[0] = array[0] + 1.0


@pytest.mark.parametrize("damage", [_damage_no_marker, _damage_row_count, _damage_truncated, _damage_lost_chunk,
                                    _damage_data])
def test_damaged_tile_is_detected_and_rewritten(cache, catalog, damage):
    written = fill.import_catalog(cache, catalog, cover_deg=(*FIELD_CENTRE, 3.0))
    pixel = max(written, key=written.get)
    damage(cache, pixel)
    assert not cache.verify(pixel)
    if damage is not _damage_data:  # a changed value needs the checksum: only verify/read see it
        assert not cache.has(pixel)
        assert pixel not in cache.tiles() and pixel in cache.incomplete_tiles()
    with pytest.raises(CatalogError, match=f"tile {cache.level}/{pixel}"):
        cache.read_tile(pixel)
    again = fill.import_catalog(cache, catalog, cover_deg=(*FIELD_CENTRE, 3.0))
    assert again == {pixel: written[pixel]}
    assert cache.verify(pixel)


def test_partial_tiles_are_marked_and_replaced(cache, catalog):
    small = catalog[healpix.tile_of(catalog) >= 0]  # copy
    cover = fill.catalog_cover(small)
    written = fill.import_catalog(cache, small)
    partial = [p for p in written if cache.attrs(p)["partial"]]
    full = [p for p in written if not cache.attrs(p)["partial"]]
    assert partial and full
    assert cache.attrs(partial[0])["cover_deg"] == pytest.approx(list(cover))
    # a second partial import leaves them; a complete fill replaces them
    assert fill.import_catalog(cache, small) == {}
    again = fill.import_catalog(cache, small, cover_deg=(*FIELD_CENTRE, 5.0))
    assert set(again) & set(written) == set(partial)
    assert all(not cache.attrs(p)["partial"] for p in partial)
    # tiles within the claimed cover but without a star of the catalog are written empty and complete
    empty = set(again) - set(written)
    assert empty and all(again[p] == 0 and cache.has(p) for p in empty)
    inside = set(healpix.tiles_for_field(*FIELD_CENTRE, 3.5).tolist())  # tiles reach < 1.4 deg beyond
    assert all(not cache.attrs(p)["partial"] for p in empty if p in inside)
    assert any(cache.attrs(p)["partial"] for p in empty)  # those the 5 deg cone only reaches into


# -- reading a field ---------------------------------------------------------------


def test_read_field_returns_exactly_the_footprint(cache, catalog):
    corners = _corners(*FIELD_CENTRE)
    fill.import_catalog(cache, catalog, cover_deg=(*FIELD_CENTRE, 5.0))
    got = tile_store.read_field(cache, corners, margin_deg=0.2, mag_limit=19.0)
    expected = limit_depth(select_footprint(catalog, corners, margin_deg=0.2), mag_limit=19.0)
    assert len(got) == len(expected) > 1000
    got.sort("source_id")
    expected.sort("source_id")
    for name in REFERENCE_COLUMNS:
        np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(expected[name]), err_msg=name)
    moved = tile_store.read_field(cache, corners, margin_deg=0.2, mag_limit=19.0, epoch_yr=2025.0)
    assert moved.meta["epoch"] == 2025.0 and "ra_ref" in moved.colnames
    cone = tile_store.read_field(cache, (*FIELD_CENTRE, 1.0), margin_deg=0.0, mag_limit=None)
    assert len(cone) > 0


def test_read_field_names_missing_tiles(cache, catalog):
    corners = _corners(*FIELD_CENTRE)
    written = fill.import_catalog(cache, catalog, cover_deg=(*FIELD_CENTRE, 5.0))
    needed = [p for p in healpix.tiles_for_footprint(corners, margin_deg=0.2).tolist() if p in written]
    lost = needed[len(needed) // 2]
    cache.delete_tile(lost)
    with pytest.raises(CatalogError, match=f"{healpix.TILE_LEVEL}/{lost} \\(absent\\)"):
        tile_store.read_field(cache, corners, margin_deg=0.2, mag_limit=20.0)
    some = tile_store.read_field(cache, corners, margin_deg=0.2, mag_limit=20.0, missing="skip")
    assert not np.any(healpix.tile_of(some) == lost) and len(some) > 0
    assert any(str(lost) in m for m in some.meta["missing_tiles"])


# -- concurrency ------------------------------------------------------------------


def _write_tiles(url: str, parts: list[tuple[int, dict]]) -> list[int]:
    cache = tile_store.TileCache(url)
    return [cache.write_tile(pixel, Table(columns)) for pixel, columns in parts]


@pytest.mark.slow
def test_processes_write_different_tiles_at_once(tmp_path, catalog):
    """Several processes create one new local store and fill different tiles of it at once.

    Repeated on fresh stores, since the race is in creating the store: every process
    opens it while others create its root and level groups. Two writers of the *same*
    tile would race on its arrays (zarr has no locks); that is prevented upstream by
    the Dask key ``gaia-tile-<level>-<pixel>`` (:func:`astrodask.reference.store.tile_task_key`).
    """
    tiles = healpix.tile_of(catalog)
    parts = [(int(p), {n: np.asarray(catalog[n])[tiles == p] for n in REFERENCE_COLUMNS}) for p in np.unique(tiles)]
    workers = 6
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers) as pool:
        for attempt in range(6):
            url = str(tmp_path / f"shared{attempt}")
            results = pool.starmap(_write_tiles, [(url, parts[k::workers]) for k in range(workers)])
            cache = tile_store.TileCache(url)
            assert sum(map(sum, results)) == len(catalog)
            assert cache.tiles() == sorted(p for p, _ in parts)
            assert cache.incomplete_tiles() == []
    for pixel, columns in parts:
        assert cache.verify(pixel)
        np.testing.assert_array_equal(np.asarray(cache.read_tile(pixel)["source_id"]), columns["source_id"])


def test_task_key_and_level_mismatch(tmp_path):
    assert tile_store.tile_task_key(123) == "gaia-tile-6-123"
    tile_store.TileCache(tmp_path / "c")
    with pytest.raises(Exception, match="level 6 tiles"):
        tile_store.TileCache(tmp_path / "c", level=5)
    assert zarr.open_group(str(tmp_path / "c"), mode="r").attrs["level"] == 6
