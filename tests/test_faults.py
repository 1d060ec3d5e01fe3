"""Faults and bad input (issue 17): outputs that follow the umask, failures that say whether a
resubmit can change them, an unreachable archive that fails once and fast, broken files, headers
and catalogs beside good exposures, and wrong answers never reported as solved."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from astrodask.simulate import SimulatedField, simulate_field

BIN = Path(sys.executable).parent
#: Small exposures: a solve takes well under a second.
SHAPE = (700, 1000)
FIELD = (150.1, 25.0)


def simulate(folder: Path, name: str, **kwargs) -> SimulatedField:
    """A small simulated exposure with its catalog, seeded by its name."""
    options = {"shape": SHAPE, "density_per_deg2": 8000.0, "distortion_px": 1.0, **kwargs}
    ra, dec = options.pop("ra_deg", FIELD[0]), options.pop("dec_deg", FIELD[1])
    return simulate_field(folder, name, ra_deg=ra, dec_deg=dec, rng=np.random.default_rng(zlib.crc32(name.encode())),
                          **options)


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> SimulatedField:
    return simulate(tmp_path_factory.mktemp("good"), "good")


# --------------------------------------------------------------------------
# 1. Outputs follow the umask
# --------------------------------------------------------------------------


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_every_output_of_a_solve_follows_the_umask(good: SimulatedField, tmp_path: Path, mask: int) -> None:
    from astrodask.io.output import write_products
    from astrodask.reference.catalog import read_catalog
    from astrodask.reference.fill import import_catalog
    from astrodask.reference.store import TileCache
    from astrodask.run.backlog import assemble_summary, write_manifest, write_status
    from astrodask.io.output import summary_row
    from astrodask.solve.pipeline import solve_file

    result = solve_file(good.image_path, catalog=read_catalog(good.catalog_path))
    assert result.ok, result.reason
    out = tmp_path / "out"
    with umask(mask):
        written = write_products(result, out, debug=True, write_header=True, plots_dir=tmp_path / "plots")
        written += [write_status(summary_row(result), out), write_manifest([good.image_path], out),
                    assemble_summary(out)]
        import_catalog(TileCache(tmp_path / "cache"), good.catalog_path)
    expected = 0o666 & ~mask
    kinds = {p.name.split(".", 1)[1] for p in written}
    assert {"wcs.fits", "fits.fz", "matched.ecsv", "residuals.png", "json", "txt", "ecsv"} <= kinds
    for path in written:
        assert mode(path) == expected, f"{path}: {oct(mode(path))}"
    cache_files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert cache_files and all(mode(p) == expected for p in cache_files)
    assert not list(out.glob(".*.tmp"))  # no temporary file left


def test_a_solve_subprocess_writes_under_its_umask(good: SimulatedField, tmp_path: Path) -> None:
    for mask in (0o022, 0o002):
        out = tmp_path / f"out{mask:o}"
        proc = subprocess.run([str(BIN / "astrodask"), "solve", "--serial", str(good.image_path),
                               "--catalog", str(good.catalog_path), "--out", str(out)],
                              capture_output=True, text=True, umask=mask)
        assert proc.returncode == 0, proc.stderr
        files = [p for p in out.rglob("*") if p.is_file()]
        assert {p.name for p in files} >= {"good.wcs.fits", "summary.ecsv", "good.json"}
        assert all(mode(p) == 0o666 & ~mask for p in files), [(p.name, oct(mode(p))) for p in files]
