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

#: Broken input makes data-quality notices (no sources, defaults assumed): expected here, not errors.
pytestmark = pytest.mark.filterwarnings("ignore::astrodask.errors.AstrodaskWarning")

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


# --------------------------------------------------------------------------
# 2. Deterministic failures are not solved again
# --------------------------------------------------------------------------


def test_failure_kind_comes_from_the_error_class() -> None:
    from astrodask import errors
    from astrodask.types import FailureKind

    deterministic = [errors.InputFileError("x"), errors.ImageError("x"), errors.PointingError("x"),
                     errors.HeaderError("x"), errors.NoSourcesError("x"), errors.MatchError("x"),
                     errors.SolveError("x"), errors.CatalogError("x"), errors.FitError("x")]
    transient = [errors.ArchiveError("x"), errors.ArchiveUnreachableError("x"), errors.CacheError("x"),
                 errors.LaunchError("x"), ConnectionResetError("x"), KeyboardInterrupt(), RuntimeError("x")]
    assert {FailureKind.of(e) for e in deterministic} == {FailureKind.DETERMINISTIC}
    assert {FailureKind.of(e) for e in transient} == {FailureKind.TRANSIENT}
    # the same message under another class: the class decides, not the text
    text = "tile unreadable"
    assert FailureKind.of(errors.CatalogError(text)) != FailureKind.of(errors.CacheError(text))


def test_a_resubmit_skips_unchanged_deterministic_failures_only(tmp_path: Path) -> None:
    from astrodask.config import PipelineConfig
    from astrodask.io.output import summary_row
    from astrodask.run.backlog import plan_backlog, unchanged_failures, write_status
    from astrodask.types import FAILED, ExposureResult, FailureKind

    config = PipelineConfig()
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    paths = {name: data / f"{name}.fits" for name in ("gate", "archive", "edited", "fresh")}
    for path in paths.values():
        path.write_bytes(b"\0" * 2880)
    for name, kind in [("gate", FailureKind.DETERMINISTIC), ("archive", FailureKind.TRANSIENT),
                       ("edited", FailureKind.DETERMINISTIC)]:
        write_status(summary_row(ExposureResult(file=str(paths[name]), name=name, status=FAILED, reason="r",
                                                config=config.to_dict(), kind=kind)), out)
    paths["edited"].write_bytes(b"\0" * 5760)  # the user fixed the file since

    assert unchanged_failures(paths.values(), out, config=config) == {"gate"}
    plan = plan_backlog(paths.values(), out, config=config)
    assert plan.failed_before == (paths["gate"],) and len(plan.todo) == 3 and plan.n_total == 4
    assert plan_backlog(paths.values(), out, config=config, retry_failed=True).n_todo == 4
    assert plan_backlog(paths.values(), out, config=config, redo=True).n_todo == 4
    # another config, or another astrodask: retried
    assert unchanged_failures(paths.values(), out, config=config.replace({"fit": {"min_matches": 10}})) == set()
    record = out / ".astrodask" / "gate.json"
    record.write_text(record.read_text().replace('"astrodask_version": "', '"astrodask_version": "0.0.0+old'))
    assert unchanged_failures(paths.values(), out, config=config) == set()


def test_solve_serial_leaves_a_deterministic_failure_alone(good: SimulatedField, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from astrodask.cli import main

    from astropy.io import fits

    blank = tmp_path / "blank.fits"
    header = fits.getheader(good.image_path, 1)
    fits.PrimaryHDU(np.full(SHAPE, 1000.0, np.float32), header=header).writeto(blank)
    out = tmp_path / "out"
    args = ["solve", "--serial", str(blank), str(good.image_path), "--catalog", str(good.catalog_path),
            "--out", str(out)]
    runner = CliRunner()
    first = runner.invoke(main, args)
    assert first.exit_code == 3 and "blank.fits: FAILED at detect" in first.output, first.output
    again = runner.invoke(main, args)
    assert again.exit_code == 3, again.output
    assert again.output.count("1 exposure(s) failed earlier for a reason that will not change") == 1
    assert "blank.fits: FAILED" not in again.output and "[1/1]" not in again.output
    retried = runner.invoke(main, [*args, "--retry-failed"])
    assert "blank.fits: FAILED at detect" in retried.output and "failed earlier" not in retried.output


# --------------------------------------------------------------------------
# 3. The archive unreachable: one clear error within seconds
# --------------------------------------------------------------------------

#: A failure without a retry loop takes seconds; the bound is loose (a loaded 2-core machine).
FAST_FAILURE_S = 20.0


def refused_url() -> str:
    """A loopback URL with nothing listening: connections are refused."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/tap-server/tap"


def solve_from_archive(field: SimulatedField, cache: Path, **gaia):
    """Solve ``field`` with an empty tile cache filled from the archive of ``gaia``; (result, seconds)."""
    import time

    from astrodask.config import PipelineConfig
    from astrodask.solve.pipeline import solve_file

    config = PipelineConfig().replace({"gaia": {"retry_backoff_s": 0.1, **gaia}})
    started = time.perf_counter()
    result = solve_file(field.image_path, config=config, cache_url=str(cache))
    return result, time.perf_counter() - started


@pytest.mark.parametrize("where", ["refused", "unresolvable"])
def test_an_unreachable_archive_fails_once_and_fast_with_the_fix(good: SimulatedField, tmp_path: Path,
                                                                   where: str) -> None:
    from astrodask.reference.store import TileCache

    url = refused_url() if where == "refused" else "http://gaia.invalid/tap-server/tap"
    result, seconds = solve_from_archive(good, tmp_path / "tiles", tap_url=url, retries=5, retry_backoff_s=5.0)
    assert not result.ok and result.stage == "references"
    assert seconds < FAST_FAILURE_S  # no retries: 5 of them with this backoff would take 155 s
    reason = result.reason
    assert reason.count(url) == 1 and reason.count("cannot be reached") == 1, reason
    assert ("connection refused" if where == "refused" else "does not resolve") in reason
    assert "--catalog FILE" in reason and "astrodask cache import" in reason and "cache prefetch" in reason
    assert "tile(s) of the field could not be filled: 6/" in reason  # the tiles named, the error once
    assert len(reason) < 600
    assert result.kind == "transient"  # a resubmit with a network back retries it
    assert TileCache(tmp_path / "tiles").tiles() == []


def test_an_archive_answering_503_is_retried_with_backoff_then_fails_clearly(good: SimulatedField,
                                                                              tmp_path: Path) -> None:
    from archive_server import RecordedTapServer

    with RecordedTapServer() as archive:
        archive.fail_on, archive.fail_count = "post", -1
        result, seconds = solve_from_archive(good, tmp_path / "tiles", tap_url=archive.base, retries=2)
        attempts = len(archive.posts)
    assert attempts == 3  # the first tile: 1 + 2 retries; the field's other tile is not tried
    assert not result.ok and "failed after 3 attempt(s)" in result.reason and "Service Unavailable" in result.reason
    assert "more tile(s) of the field not tried" in result.reason and "--catalog FILE" in result.reason
    assert 0.3 <= seconds < FAST_FAILURE_S  # backoff 0.1 s then 0.2 s
    assert result.kind == "transient"


def test_an_archive_that_does_not_answer_times_out_and_is_retried(good: SimulatedField, tmp_path: Path) -> None:
    from archive_server import RecordedTapServer

    with RecordedTapServer() as archive:
        archive.stall_s = 3.0
        result, seconds = solve_from_archive(good, tmp_path / "tiles", tap_url=archive.base, retries=1,
                                             request_timeout_s=0.5)
        attempts = len(archive.requests)  # each stalled past the timeout before it was read
    assert attempts == 2
    assert not result.ok and "failed after 2 attempt(s)" in result.reason and "timed out" in result.reason
    assert "gaia.request_timeout_s" in result.reason
    assert seconds < FAST_FAILURE_S
