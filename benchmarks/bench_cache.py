"""Gaia tile cache: cold fill of a Condor field from a catalog file, warm field read, store size.

Run: ``python benchmarks/bench_cache.py [--density 2500]``. Prints the figures; no assertions.
Target: a warm read of a 2.3 x 1.5 deg field to G = 20 from local disk in < 0.2 s.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from astrodask.reference import fill
from astrodask.reference import healpix
from astrodask.reference import store as tile_store
from astrodask.reference.catalog import read_catalog
from astrodask.simulate import synthetic_gaia_catalog
from astrodask.solve.tpv import tangent_plane_to_sky

FIELD = (150.0, 2.0)
WIDTH_DEG, HEIGHT_DEG, MARGIN_DEG = 2.3, 1.5, 0.2


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--density", type=float, default=2500.0, help="stars per deg^2 to G = 20")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    level = healpix.TILE_LEVEL
    print(f"cores: {os.cpu_count()}  level: {level} ({healpix.tile_size_deg(level):.3f} deg tiles)")
    rng = np.random.default_rng(1)
    catalog = synthetic_gaia_catalog(*FIELD, rng=rng, width_deg=4.5, height_deg=3.5,
                                     density_per_deg2=args.density)
    xi = np.array([-1, 1, 1, -1]) * WIDTH_DEG / 2
    eta = np.array([-1, -1, 1, 1]) * HEIGHT_DEG / 2
    ra, dec = tangent_plane_to_sky(xi, eta, FIELD)
    corners = np.column_stack([np.asarray(ra) % 360.0, dec])
    tiles = healpix.tiles_for_footprint(corners, margin_deg=MARGIN_DEG)
    print(f"catalog: {len(catalog)} stars; field tiles: {len(tiles)}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "catalog.parquet"
        catalog.write(path)
        store = Path(tmp) / "tiles"
        t0 = time.perf_counter()
        table = read_catalog(path)
        t1 = time.perf_counter()
        cache = tile_store.TileCache(store)
        written = fill.import_catalog(cache, table, cover_deg=(*FIELD, 1.7))
        t2 = time.perf_counter()
        rows = sum(written.values())
        print(f"cold fill: read {t1 - t0:.2f} s + {len(written)} tiles written {t2 - t1:.2f} s "
              f"({(t2 - t1) / len(written) * 1e3:.0f} ms/tile, {rows / (t2 - t1):.0f} stars/s)")
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            got = tile_store.read_field(tile_store.TileCache(store), corners, margin_deg=MARGIN_DEG, mag_limit=20.0)
            times.append(time.perf_counter() - t)
        print(f"warm read of the field to G=20: {len(got)} stars, best {min(times):.3f} s, "
              f"median {np.median(times):.3f} s over {args.repeats} (target < 0.2 s)")
        t = time.perf_counter()
        cache.read_many(tiles.tolist())
        print(f"  of which the concurrent read of {len(tiles)} tiles with checksums: {time.perf_counter() - t:.3f} s")
        size = folder_bytes(store)
        print(f"store: {size / 1e6:.1f} MB for {rows} stars = {size / rows * 1e6 / 1e6:.1f} MB per million stars "
              f"(raw {8 * len(tile_store.TILE_DTYPES)} bytes/star = "
              f"{8 * len(tile_store.TILE_DTYPES):.0f} MB per million)")


if __name__ == "__main__":
    main()
