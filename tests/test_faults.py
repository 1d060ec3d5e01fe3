"""Faults and bad input (issue 17): outputs that follow the umask, failures that say whether a
resubmit can change them, an unreachable archive that fails once and fast, broken files, headers
and catalogs beside good exposures, and wrong answers never reported as solved."""

from __future__ import annotations

import os
import re
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


def test_tile_failures_are_summarised_once_per_reason() -> None:
    from astrodask.reference.fill import summarise_tile_failures

    down = "the Gaia archive at http://x/tap cannot be reached (connection refused): give ..."
    text = summarise_tile_failures([("6/1", down), ("6/2", down),
                                    ("6/3", "Gaia archive query for tile 6/3 (to G = 20) at u failed after 4"),
                                    ("6/4", "Gaia archive query for tile 6/4 (to G = 20) at u failed after 4")])
    assert text == ("4 tile(s) of the field could not be filled: 6/1, 6/2: " + down + "; 6/3, 6/4: Gaia archive "
                    "query for tile (to G = 20) at u failed after 4")


def test_an_unreachable_archive_is_one_error_on_a_cluster_too(good: SimulatedField, tmp_path: Path) -> None:
    """The default path: tiles filled by cluster tasks, each failing fast, reported once."""
    import time

    url = refused_url()
    started = time.perf_counter()
    proc = subprocess.run([str(BIN / "astrodask"), "solve", str(good.image_path), "--workers", "1", "--cache",
                           str(tmp_path / "tiles"), "--out", str(tmp_path / "out"), "--set", f"gaia.tap_url={url}",
                           "--set", "gaia.retries=5", "--set", "gaia.retry_backoff_s=5"],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - started
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert seconds < 60.0  # a cluster starts and stops; no retry loop (5 retries would take 155 s per tile)
    lines = [line for line in proc.stderr.splitlines() if url in line]
    assert len(lines) == 1 and lines[0].count(url) == 1, proc.stderr
    assert "tile(s) of the field could not be filled: 6/" in lines[0] and "cannot be reached" in lines[0]


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


# --------------------------------------------------------------------------
# 4. Broken files, headers and wrong answers beside good exposures: one backlog on a real cluster
# --------------------------------------------------------------------------

#: A solved exposure is right when its WCS is within this of the truth over the image (rms, mas).
TRUTH_TOLERANCE_MAS = 60.0
#: Solved without an epoch, the reference stars stay at the catalog's (2016): the solution follows
#: their proper motions over 8 years (the note says so); still far from a wrong solution.
NO_EPOCH_TOLERANCE_MAS = 200.0


def copy_image(source: SimulatedField, path: Path) -> Path:
    """``path``: an uncompressed copy of a simulated exposure (one HDU holding image and header)."""
    from astropy.io import fits

    with fits.open(source.image_path) as hdul:
        image = hdul[-1]
        fits.PrimaryHDU(image.data, header=fits.Header([c for c in image.header.cards
                                                         if c.keyword not in ("XTENSION", "PCOUNT", "GCOUNT")])
                        ).writeto(path)
    return path


def edit_header(source: SimulatedField, path: Path, **cards) -> Path:
    """A copy of ``source`` with header cards set (None: removed)."""
    from astropy.io import fits

    copy_image(source, path)
    with fits.open(path, mode="update") as hdul:
        for key, value in cards.items():
            key = {"DATE_OBS": "DATE-OBS", "MJD_OBS": "MJD-OBS"}.get(key, key)
            if value is None:
                hdul[0].header.remove(key, ignore_missing=True)
            else:
                hdul[0].header[key] = value
    return path


def raw_card(path: Path, key: str, text: str) -> Path:
    """Overwrite the card ``key`` of a FITS file byte for byte (values astropy refuses to write)."""
    data = bytearray(path.read_bytes())
    start = data.index(f"{key:<8}=".encode())
    data[start:start + 80] = f"{key:<8}= {text:>20}".ljust(80).encode()
    path.write_bytes(bytes(data))
    return path


def scale_cd(factor: float, flip: bool = False):
    def edit(header) -> None:
        for key in ("CD1_1", "CD1_2", "CD2_1", "CD2_2"):
            header[key] *= factor
        if flip:  # the header's parity is the truth's mirror image
            header["CD1_1"], header["CD2_1"] = -header["CD1_1"], -header["CD2_1"]
    return edit


@pytest.fixture(scope="module")
def night(tmp_path_factory) -> dict:
    """A backlog of good exposures and broken ones, each with what it must end as, and one catalog."""
    from astropy.io import fits
    from astropy.table import Table, vstack

    from astrodask.simulate import synthetic_gaia_catalog

    folder = tmp_path_factory.mktemp("night")
    src = folder / "src"
    base = simulate(src, "base", catalog_margin_deg=0.45)
    sky = Table.read(base.catalog_path)
    good = [simulate(src, f"good{k}", ra_deg=FIELD[0] + 0.02 * k, catalog=sky) for k in range(2)]
    # high proper motions (300 mas/yr per axis) in a field of their own, rendered at 2024.5
    fast = synthetic_gaia_catalog(152.0, 10.0, rng=np.random.default_rng(7), radius_deg=0.6, density_per_deg2=8000.0)
    rng = np.random.default_rng(8)
    fast["pmra"], fast["pmdec"] = rng.normal(0.0, 300.0, len(fast)), rng.normal(0.0, 300.0, len(fast))
    moving = simulate(src, "moving", ra_deg=152.0, dec_deg=10.0, catalog=fast, epoch_yr=2024.5)
    far = simulate(src, "far", catalog=sky, pointing_error_arcmin=30.0)
    catalog = folder / "catalog.ecsv"
    vstack([sky, fast], metadata_conflicts="silent").write(catalog)

    data = folder / "data"
    data.mkdir()
    cases: dict[str, tuple[Path, SimulatedField, str]] = {}  # name: (file, truth, expected)

    def add(name: str, path: Path, truth: SimulatedField, expected: str) -> None:
        cases[name] = (path, truth, expected)

    for field in good:
        add(field.image_path.name.split(".")[0], field.image_path, field, "solved")
    (data / "zero.fits").write_bytes(b"")
    add("zero", data / "zero.fits", base, "failed: not a readable FITS file")
    # files
    size = copy_image(base, data / "size.fits")
    raw_card(size, "NAXIS2", "900")  # the header declares 900 rows, the file holds 700
    add("size", size, base, "failed: the image size differs from its header")
    header = fits.getheader(copy_image(base, data / "header.fits"))
    (data / "header.fits").unlink()
    fits.PrimaryHDU(np.full(SHAPE, 65535, np.uint16), header=header).writeto(data / "saturated.fits")
    add("saturated", data / "saturated.fits", base, "failed: of the pixels are at saturation")
    noise = np.random.default_rng(3).normal(1000.0, 10.0, SHAPE).astype(np.float32)
    fits.PrimaryHDU(noise, header=header).writeto(data / "blank.fits")
    add("blank", data / "blank.fits", base, "failed: no sources above")
    overflow = fits.PrimaryHDU(np.full(SHAPE, 1000, np.int16), header=header)
    overflow.header["BSCALE"], overflow.header["BZERO"] = 1e38, 1e38
    overflow.writeto(data / "overflow.fits")
    add("overflow", data / "overflow.fits", base, "failed: BSCALE = 1e+38 and BZERO = 1e+38")
    compressed = bytearray(good[0].image_path.read_bytes())
    middle = len(compressed) // 2
    compressed[middle:middle + 4000] = b"\xff" * 4000
    (data / "damaged.fits.fz").write_bytes(bytes(compressed))
    add("damaged", data / "damaged.fits.fz", good[0], "failed: a tile of the compressed image cannot be decompressed")
    # headers
    add("dateobs", edit_header(base, data / "dateobs.fits", DATE_OBS="2024-13-45T99:00:00", MJD_OBS=None), base,
        "solved; notes: DATE-OBS = '2024-13-45T99:00:00' is not a date and no MJD-OBS; assumed the reference")
    add("nogain", edit_header(base, data / "nogain.fits", GAIN=None), base,
        "solved; notes: gain: no GAIN keyword; assumed detect.default_gain = 1 e-/ADU")
    add("noexptime", edit_header(base, data / "noexptime.fits", EXPTIME=None), base,
        "solved; notes: no EXPTIME or EXPOSURE keyword")
    add("nanpointing", raw_card(copy_image(base, data / "nanpointing.fits"), "CRVAL1", "NaN"), base,
        "failed: CRVAL1 = NaN: not a finite number")
    add("singular", edit_header(base, data / "singular.fits", CD1_1=1e-4, CD1_2=1e-4, CD2_1=1e-4, CD2_2=1e-4),
        base, "failed: is singular")
    # a 20 % scale error is within what the coarse alignment recovers
    scaled = copy_image(base, data / "scale120.fits")
    with fits.open(scaled, mode="update") as hdul:
        scale_cd(1.2)(hdul[0].header)
    add("scale120", scaled, base, "solved")
    add("moving", moving.image_path, moving, "solved")
    # wrong answers beyond what the search covers: never solved wrongly (a correct recovery is fine)
    wrong: dict[str, tuple[Path, SimulatedField, str]] = {}
    wrong["far"] = (far.image_path, far, "right or failed")
    for name, edit in [("scale150", scale_cd(1.5)), ("scale050", scale_cd(0.5)), ("parity", scale_cd(1.0, flip=True))]:
        path = copy_image(base, data / f"{name}.fits")
        with fits.open(path, mode="update") as hdul:
            edit(hdul[0].header)
        wrong[name] = (path, base, "right or failed")
    epoch = edit_header(moving, data / "epoch1974.fits", DATE_OBS="1974-07-01T00:00:00", MJD_OBS=None)
    wrong["epoch1974"] = (epoch, moving, "right or failed")
    return {"cases": cases, "wrong": wrong, "catalog": catalog}


def submit_and_check(cases: dict, catalog: Path, out: Path) -> dict[str, str]:
    """``astrodask submit`` of ``cases`` on an embedded LocalCluster of 2 worker processes; checks each
    exposure's summary row and status record against what it must end as; returns the outcomes."""
    from astropy.io import fits
    from astropy.table import Table
    from astropy.wcs import WCS
    from click.testing import CliRunner

    from astrodask.cli import main
    from astrodask.run.backlog import read_statuses
    from astrodask.wcsutil import wcs_error_mas

    result = CliRunner().invoke(main, ["submit", *(str(path) for path, _, _ in cases.values()), "--catalog",
                                       str(catalog), "--out", str(out), "--workers", "2"])
    assert result.exit_code in (0, 1, 3), result.output
    assert "Traceback" not in result.output
    table = Table.read(out / "summary.ecsv")
    summary = {row["name"]: {key: "" if np.ma.is_masked(row[key]) else row[key] for key in table.colnames}
               for row in table}
    times = [c for c in table.colnames if c.startswith("t_")]
    records = {record["name"]: record for record in read_statuses(out)}
    assert set(summary) == set(records) == set(cases)
    outcomes = {}
    for name, (path, truth, expected) in cases.items():
        row, record = summary[name], records[name]
        assert (row["status"], row["reason"]) == (record["status"], record["reason"])
        solution = out / f"{name}.wcs.fits"
        if row["status"] == "solved":
            wcs = WCS(fits.getheader(solution))
            error = float(np.sqrt(np.mean(wcs_error_mas(wcs, truth.truth_wcs, SHAPE) ** 2)))
            tolerance = NO_EPOCH_TOLERANCE_MAS if name == "dateobs" else TRUTH_TOLERANCE_MAS
            assert error < tolerance, f"{name}: solved wrongly, {error:.0f} mas from the truth"
            outcomes[name] = f"solved ({error:.0f} mas)"
        else:
            assert not solution.exists(), name
            assert row["failure_kind"] == record["failure_kind"] == "deterministic", (name, row["reason"])
            assert row["stage"], name
            outcomes[name] = f"failed at {row['stage']}: {row['reason']}"
        if expected.startswith("solved"):
            assert row["status"] == "solved", (name, row["reason"])
            for note in expected.partition("; notes: ")[2].split("; "):
                assert note in row["notes"], (name, row["notes"])
        elif expected.startswith("failed"):
            assert row["status"] == "failed", name
            assert expected.partition(": ")[2] in row["reason"], (name, row["reason"])
            # the file is named, in the reason or in its row's file column (a reason from the matcher)
            assert str(path) in row["reason"] or row["file"].endswith(path.name), name
        outcomes[name] += f" [{sum(float(summary[name][c]) for c in times):.1f} s]"
    print("\n" + "\n".join(f"  {name}: {outcome}" for name, outcome in sorted(outcomes.items())))
    return outcomes


def test_a_backlog_of_broken_and_good_exposures_on_a_cluster(night: dict, tmp_path: Path) -> None:
    """Every broken file and header reported with its file and reason in the summary and its status
    record, as a deterministic failure; every good exposure solved and right, assumptions noted."""
    outcomes = submit_and_check(night["cases"], night["catalog"], tmp_path / "out")
    assert sum(o.startswith("solved") for o in outcomes.values()) == 7  # 2 good, 3 header notes, 20 %, moving


@pytest.mark.slow
def test_wrong_headers_are_never_solved_wrongly(night: dict, tmp_path: Path) -> None:
    """A pointing 30 arcmin off, a scale off by 50 %, the wrong parity, an epoch 50 years off with
    stars moving 300 mas/yr: failed or right, never wrong.

    Slow (about 40 s on 2 workers): each of these exhausts astroalign's triangle search in the
    coarse alignment (several seconds per attempt) before it can say no.
    """
    outcomes = submit_and_check(night["wrong"], night["catalog"], tmp_path / "out")
    for name, outcome in outcomes.items():
        if outcome.startswith("failed"):  # the hint that fits these failures
            assert "pointing off by more than gaia.margin_deg" in outcome, (name, outcome)


# --------------------------------------------------------------------------
# Reference stars: catalogs and the tile cache
# --------------------------------------------------------------------------


def catalog_variants(good: SimulatedField, folder: Path) -> dict[str, Path]:
    from astropy.table import Table

    table = Table.read(good.catalog_path)
    variants = {}

    def write(name: str, t: Table) -> None:
        variants[name] = folder / f"{name}.ecsv"
        t.write(variants[name])

    radians = table.copy()
    for key in ("ra", "dec"):
        radians[key] = np.radians(radians[key])
    write("radians_as_deg", radians)  # radians, but the columns still say deg
    for key in ("ra", "dec"):
        radians[key].unit = "rad"
    write("radians", radians)  # declared: converted like any catalog
    pm = table.copy()
    pm["pmra"].unit = "deg / yr"  # mas/yr values declared in deg/yr
    write("pm_deg", pm)
    write("empty", table[:0])
    return variants


def test_catalogs_with_wrong_units_empty_or_elsewhere_say_so(good: SimulatedField, tmp_path: Path) -> None:
    from astrodask.errors import CatalogError
    from astrodask.reference.catalog import read_catalog
    from astrodask.solve.pipeline import solve_file

    files = catalog_variants(good, tmp_path)
    solved = solve_file(good.image_path, catalog=read_catalog(files["radians"]))
    assert solved.ok  # units declared: converted
    with pytest.raises(CatalogError, match=r"pm_deg.ecsv: column pmra has \d+ value\(s\) beyond any star's .* check "
                                           "its unit"):
        read_catalog(files["pm_deg"])
    elsewhere = simulate(tmp_path, "elsewhere", ra_deg=200.0, dec_deg=-30.0)
    for name, catalog, message in [
            ("radians_as_deg", files["radians_as_deg"], "none of its .* stars lies within the field .* span RA 2.6"),
            ("empty", files["empty"], "empty.ecsv holds no star"),
            ("elsewhere", elsewhere.catalog_path, "elsewhere_gaia.ecsv: none of its .* span RA 199")]:
        result = solve_file(good.image_path, catalog=read_catalog(catalog))
        assert not result.ok and result.stage == "references", name
        assert result.kind == "deterministic"
        assert re.search(message, result.reason), (name, result.reason)


def test_a_damaged_cache_tile_is_named_and_refilled_or_reported(good: SimulatedField, tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from astrodask.config import PipelineConfig
    from astrodask.reference.fill import import_catalog
    from astrodask.reference.store import TileCache
    from astrodask.simulate import healpix_nested_index
    from astrodask.solve.pipeline import solve_file

    wide = simulate(tmp_path, "wide", catalog_margin_deg=0.45)
    cache = TileCache(tmp_path / "tiles")
    import_catalog(cache, wide.catalog_path)
    assert solve_file(wide.image_path, cache_url=cache.url).ok  # the cache as imported serves the field
    tile = int(healpix_nested_index(np.array([FIELD[0]]), np.array([FIELD[1]]), level=cache.level)[0])
    chunk = tmp_path / "tiles" / str(cache.level) / str(tile) / "ra" / "c" / "0"
    chunk.write_bytes(b"not zstd at all")  # the field centre's tile, damaged
    offline = PipelineConfig().replace({"gaia": {"fetch_missing_tiles": False}})
    result = solve_file(wide.image_path, cache_url=cache.url, config=offline)
    assert not result.ok and f"6/{tile} (unreadable" in result.reason and "fill them" in result.reason
    assert result.kind == "transient"  # a prefetch or an import repairs it
    with caplog.at_level(logging.WARNING, logger="astrodask.reference.store"):
        result = solve_file(wide.image_path, cache_url=cache.url,
                            config=PipelineConfig().replace({"gaia": {"tap_url": refused_url()}}))
    assert f"tile 6/{tile} is unreadable" in caplog.text and "filling it again" in caplog.text
    assert not result.ok and "cannot be reached (connection refused)" in result.reason
    import_catalog(cache, wide.catalog_path)  # the fix the message names
    assert solve_file(wide.image_path, cache_url=cache.url, config=offline).ok


def run_with_read_only(folder: Path, args: list[str]) -> subprocess.CompletedProcess:
    """Run ``astrodask ARGS`` in a subprocess that cannot write into ``folder``.

    Without root, the folder is made read-only (chmod); as root, whom permissions do not stop, the
    command runs in a private mount namespace where ``folder`` is bind-mounted read-only.
    """
    import shutil

    command = [str(BIN / "astrodask"), *args]
    if os.geteuid() != 0:
        modes = {p: stat.S_IMODE(p.stat().st_mode) for p in [folder, *folder.rglob("*")]}
        for path, bits in modes.items():
            path.chmod(bits & ~0o222)
        try:
            return subprocess.run(command, capture_output=True, text=True)
        finally:
            for path, bits in modes.items():
                path.chmod(bits)
    if shutil.which("unshare") is None:
        pytest.skip("running as root without unshare(1): no way to make a folder read-only")
    mount = 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" "$0" && exec "$@"'
    probe = subprocess.run(["unshare", "-m", "sh", "-c", mount, str(folder), "true"], capture_output=True, text=True)
    if probe.returncode:
        pytest.skip(f"cannot bind-mount read-only here: {probe.stderr.strip()}")
    return subprocess.run(["unshare", "-m", "sh", "-c", mount, str(folder), *command], capture_output=True,
                          text=True)


def test_a_read_only_cache_serves_what_it_holds_and_says_why_it_cannot_be_filled(tmp_path: Path) -> None:
    from archive_server import RecordedTapServer

    from astrodask.reference.fill import import_catalog
    from astrodask.reference.store import TileCache

    wide = simulate(tmp_path, "wide", catalog_margin_deg=0.45)
    full, empty = TileCache(tmp_path / "full"), TileCache(tmp_path / "empty")
    import_catalog(full, wide.catalog_path)
    solved = run_with_read_only(tmp_path / "full", ["solve", "--serial", str(wide.image_path), "--cache", full.url,
                                                    "--out", str(tmp_path / "out1")])
    assert solved.returncode == 0, solved.stderr  # reading needs no write
    with RecordedTapServer() as archive:
        failed = run_with_read_only(tmp_path / "empty", ["solve", "--serial", str(wide.image_path), "--cache",
                                                         empty.url, "--out", str(tmp_path / "out2"), "--set",
                                                         f"gaia.tap_url={archive.base}"])
        assert archive.posts  # the archive answered: the write is what failed
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert "cannot be written" in failed.stdout + failed.stderr and "read-only" in failed.stderr
    assert empty.tiles() == []
