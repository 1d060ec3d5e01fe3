"""Faults of a running backlog (issue 17, part B), on real clusters, real filesystems and a real S3 server.

- Output: a folder that cannot be written is refused before anything is submitted; a disk that
  fills up (a 2 MB tmpfs mounted for the test) fails the exposures that do not fit, one by one,
  with the reason and the fix, leaves no partial file, and a rerun once space is freed completes.
- Interrupted runs: Ctrl-C of an ``astrodask submit`` process (SIGINT to its process group, as a
  terminal sends it) after a worker process was SIGKILLed; a SIGKILLed ``dask scheduler``.
- Concurrency: two ``astrodask submit`` processes of one backlog at once, on one scheduler and on
  two.
- A tile cache on S3 (moto's server on loopback, behind a relay that the test stops and starts)
  that goes away mid-backlog.

One LocalCluster of worker processes serves the module; the scheduler-kill test launches its own
``dask scheduler`` and ``dask worker`` processes (cluster/launch.py). The CLI runs as a subprocess
where a signal or a second process is the point, in this process (click's runner) elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from click.testing import CliRunner

from astrodask.cli import EXIT_PARTIAL, main
from astrodask.cli.options import EXIT_INTERRUPTED
from astrodask.run.backlog import (backlog_status, is_solved_file, manifest_files, read_manifest, read_statuses,
                                   status_dir)
from astrodask.types import SOLVED, exposure_name
from tcp_proxy import TcpProxy

ROOT = Path(__file__).resolve().parents[1]
#: Exposures of the module's backlog, and their size (small: a solve takes well under a second).
N_EXPOSURES = 8
SHAPE = (700, 1000)
#: Stars per square degree of the simulated sky (dense enough for frames this small).
SKY_DENSITY_PER_DEG2 = 12000.0
#: Radius of the simulated sky, degrees: wide enough for complete level-6 tiles around the field.
SKY_RADIUS_DEG = 1.5
#: Radius of the catalog cut each exposure is rendered from, degrees.
CUT_RADIUS_DEG = 0.4
#: Radius of the stars put in the S3 tile cache, degrees (around the backlog's fields).
CACHE_RADIUS_DEG = 0.6
#: Seconds a subprocess or a wait may take before the test fails.
TIMEOUT_S = 120.0
#: Room left on the small disk for the disk-full test, bytes: a manifest and about two exposures.
ROOM_BYTES = 40 * 1024

pytestmark = pytest.mark.slow


# ---------------------------------------------------------------- fixtures


def cut(sky: Table, ra_deg: float, dec_deg: float, radius_deg: float) -> Table:
    from astrodask.reference.footprint import select_cone

    return select_cone(sky, ra_deg=ra_deg, dec_deg=dec_deg, radius_deg=radius_deg)


@pytest.fixture(scope="module")
def sky() -> Table:
    """A synthetic Gaia sky around (150.1, 25.0)."""
    from astrodask.simulate import synthetic_gaia_catalog

    return synthetic_gaia_catalog(150.1, 25.0, rng=np.random.default_rng(17), radius_deg=SKY_RADIUS_DEG,
                                  density_per_deg2=SKY_DENSITY_PER_DEG2)


@pytest.fixture(scope="module")
def backlog(sky: Table, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], Path]:
    """:data:`N_EXPOSURES` simulated exposures dithered over the sky, and one catalog file serving them all."""
    from astrodask.simulate import simulate_field

    folder = tmp_path_factory.mktemp("night")
    paths = []
    for k in range(N_EXPOSURES):
        ra, dec = 150.1 + 0.01 * k, 25.0 - 0.005 * k
        field = simulate_field(folder, f"f{k:02d}", ra_deg=ra, dec_deg=dec, shape=SHAPE,
                               catalog=cut(sky, ra, dec, CUT_RADIUS_DEG), distortion_px=1.5,
                               rng=np.random.default_rng(300 + k))
        Path(field.catalog_path).unlink()
        paths.append(Path(field.image_path))
    catalog = folder / "catalog.ecsv"
    cut(sky, 150.1, 25.0, CUT_RADIUS_DEG + 0.1).write(catalog)
    return paths, catalog


@pytest.fixture(scope="module")
def s3_relay(s3_server) -> Iterator[TcpProxy]:
    """A relay to the session's S3 server that a test can stop (the store gone) and start again."""
    proxy = TcpProxy((s3_server.host, s3_server.port)).start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def scheduler(s3_relay: TcpProxy, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A LocalCluster of two worker processes (one thread each, under nannies) on loopback; its address.

    Its workers reach S3 through :func:`s3_relay` (``AWS_ENDPOINT_URL``, dummy credentials, the
    user's AWS configuration masked: see tests/conftest.py), set before they are spawned.
    """
    from distributed import LocalCluster

    from conftest import S3_FOREIGN_ENV, S3_TEST_ENV

    empty = tmp_path_factory.mktemp("no-aws-config")
    env = {**S3_TEST_ENV, "AWS_ENDPOINT_URL": s3_relay.url, "AWS_EC2_METADATA_DISABLED": "true",
           "AWS_CONFIG_FILE": str(empty / "config"), "AWS_SHARED_CREDENTIALS_FILE": str(empty / "credentials"),
           "FSSPEC_CONFIG_DIR": str(empty),
           # botocore's retries of a refused connection, fewer than its default, so the test is quick
           "AWS_RETRY_MODE": "standard", "AWS_MAX_ATTEMPTS": "2"}
    with pytest.MonkeyPatch.context() as patch:  # for the module: a restarted worker inherits it too
        for name in S3_FOREIGN_ENV:
            patch.delenv(name, raising=False)
        # the nannies set ``env`` in every worker process they start, a restarted one included
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None, memory_limit=None, env=env)
        try:
            yield cluster.scheduler_address
        finally:
            cluster.close()


def cli_command(*args: str) -> list[str]:
    """``python -m astrodask.cli ARGS`` running this tree's astrodask."""
    return [sys.executable, "-m", "astrodask.cli", *args]


def interruptible(command: list[str]) -> list[str]:
    """``command`` with Ctrl-C's default action restored first, as in a terminal.

    A test run in the background of a shell without job control (``make test &``) inherits SIGINT
    ignored, and a Python started with SIGINT ignored never raises KeyboardInterrupt: the Ctrl-C
    tests would then see the command run to its end.
    """
    launcher = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                "os.execv(sys.argv[1], sys.argv[1:])")
    return [sys.executable, "-c", launcher, *command]


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def worker_pids(address: str) -> dict[str, int]:
    """The process id of every worker of the scheduler at ``address``."""
    from distributed import Client

    with Client(address, set_as_default=False) as client:
        return client.run(os.getpid)


def wait_for_workers(address: str, n: int) -> None:
    from distributed import Client

    with Client(address, set_as_default=False) as client:
        client.wait_for_workers(n, timeout=TIMEOUT_S)


def assert_whole(out: Path, paths: list[Path], *, solved: set[str] | None = None) -> None:
    """Every exposure has at most one solution, whole and SOLVED, matching its one status record; no temp file.

    ``solved``: the names that must be solved (default: every exposure).
    """
    names = [exposure_name(p) for p in paths]
    expected = set(names) if solved is None else solved
    records = {r["name"]: r for r in read_statuses(out)}
    for name in names:
        solution = out / f"{name}.wcs.fits"
        if name in expected:
            assert is_solved_file(solution), f"{solution}: not a whole solved solution"
            assert fits.getheader(solution)["ASTFILE"] == f"{name}.fits.fz"
            assert records[name]["status"] == SOLVED
        elif solution.exists():
            assert is_solved_file(solution) and records[name]["status"] == SOLVED
    record_files = sorted(p.name for p in status_dir(out).glob("*.json"))
    assert record_files == sorted(f"{n}.json" for n in records)  # one record per exposure, no other
    leftovers = [p.name for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == [], f"temporary files left: {leftovers}"


def submit_args(paths: list[Path], catalog: Path, out: Path, *extra: str) -> list[str]:
    return ["submit", *map(str, paths), "--catalog", str(catalog), "--out", str(out), *extra]


# ---------------------------------------------------------------- output faults


@pytest.fixture()
def tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """``tmpfs(name, size="2m", ro=False)``: a tmpfs mounted at ``tmp_path/name``, unmounted afterwards.

    Skips the test when mounting is not permitted (not root, or a container that forbids it).
    """
    mounted: list[Path] = []

    def mount(name: str, *, size: str = "2m", ro: bool = False) -> Path:
        point = tmp_path / name
        point.mkdir()
        options = f"size={size}" + (",ro" if ro else "")
        if shutil.which("mount") is None:
            pytest.skip("no mount command: cannot make a small filesystem")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True,
                              text=True)
        if done.returncode != 0:
            pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=True)


def test_an_unwritable_output_folder_is_refused_before_anything_is_submitted(backlog, tmp_path: Path,
                                                                              tmpfs) -> None:
    paths, catalog = backlog
    runner = CliRunner()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    # no scheduler option and no cluster: a submit that got past the check would start one and solve
    result = runner.invoke(main, submit_args(paths[:2], catalog, blocker / "out"))
    assert result.exit_code == 1
    assert f"output folder {blocker / 'out'} cannot be written" in result.output
    assert "Not a directory" in result.output and "choose another --out" in result.output
    assert "LocalCluster" not in result.output and "Traceback" not in result.output
    # a read-only filesystem (root writes through permissions, so a mode would not stop this test)
    readonly = tmpfs("ro", size="1m", ro=True)
    result = runner.invoke(main, submit_args(paths[:2], catalog, readonly / "out"))
    assert result.exit_code == 1
    assert f"output folder {readonly / 'out'} cannot be written" in result.output
    assert "Read-only file system" in result.output
    result = runner.invoke(main, ["solve", str(paths[0]), "--catalog", str(catalog), "--out", str(readonly),
                                  "--serial"])
    assert result.exit_code == 1 and f"output folder {readonly} cannot be written" in result.output


def test_a_full_disk_fails_the_exposures_that_do_not_fit_and_a_rerun_completes(backlog, scheduler, tmpfs) -> None:
    paths, catalog = backlog
    paths = paths[:5]
    disk = tmpfs("disk", size="2m")
    out = disk / "out"
    ballast = disk / "ballast"
    stat = os.statvfs(disk)
    ballast.write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - ROOM_BYTES))
    runner = CliRunner()
    first = runner.invoke(main, submit_args(paths, catalog, out, "--scheduler", scheduler))
    assert first.exit_code in (EXIT_PARTIAL, 1), first.output
    assert "Traceback" not in first.output
    failed_lines = [line for line in first.output.splitlines() if "FAILED at write" in line]
    assert failed_lines, first.output
    # each one names its file, the system's reason and the fix
    assert all("No space left on device" in line and "free space there and resubmit" in line
               for line in failed_lines)
    # every exposure reported (the others went on), none left half-written
    assert all(any(f"{p}:" in line for line in first.output.splitlines()) for p in paths)
    solved_now = {p.name.removesuffix(".wcs.fits") for p in out.glob("*.wcs.fits")}
    assert len(solved_now) < len(paths)
    assert_whole(out, paths, solved=solved_now)

    ballast.unlink()  # space freed
    second = runner.invoke(main, submit_args(paths, catalog, out, "--scheduler", scheduler))
    assert second.exit_code == 0, second.output
    assert f"{len(paths)} exposures: {len(solved_now)} already solved (skipped)" in second.output
    assert f"{len(paths)} solved, 0 failed, 0 pending" in second.output
    assert_whole(out, paths)
    summary = Table.read(out / "summary.ecsv")
    assert sorted(summary["name"]) == sorted(exposure_name(p) for p in paths)
    assert set(summary["status"]) == {SOLVED}


def test_a_plot_that_does_not_fit_takes_its_solution_back(backlog, tmpfs) -> None:
    """All or nothing: the solution fits, its plot does not; neither stays, the failed record says why."""
    from astrodask.reference.catalog import read_catalog
    from astrodask.run.backlog import record_outcome
    from astrodask.solve.pipeline import solve_file

    paths, catalog = backlog
    result = solve_file(paths[0], catalog=read_catalog(catalog))
    assert result.ok, result.reason
    disk = tmpfs("small", size="64k")  # room for a header and a record, not for a PNG
    recorded = record_outcome(result, disk, plots_dir=disk / "plots")
    assert not recorded.result.ok and recorded.result.stage == "write"
    assert "residuals.png: cannot write: No space left on device" in recorded.result.reason
    assert recorded.written == ()
    assert not (disk / f"{result.name}.wcs.fits").exists()
    assert [p.name for p in disk.rglob("*") if p.is_file() and p.suffix != ".json"] == []
    record = json.loads((disk / ".astrodask" / f"{result.name}.json").read_text())
    assert record["status"] == "failed" and record["stage"] == "write"


# ---------------------------------------------------------------- interrupted runs


def test_ctrl_c_after_a_killed_worker_keeps_what_finished_and_the_next_run_goes_on(backlog, scheduler,
                                                                                    tmp_path: Path) -> None:
    paths, catalog = backlog
    out = tmp_path / "out"
    with subprocess.Popen(interruptible(cli_command(*submit_args(paths, catalog, out, "--scheduler", scheduler))),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
                          start_new_session=True) as proc:
        try:
            wait_for(lambda: len(read_statuses(out)) >= 1 or proc.poll() is not None, "a first exposure")
            victim = sorted(worker_pids(scheduler).values())[0]
            os.kill(victim, signal.SIGKILL)  # a worker process dies mid-backlog: its nanny starts another
            time.sleep(0.2)
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal
            _, err = proc.communicate(timeout=TIMEOUT_S)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert "Traceback" not in err
    assert "interrupted: " in err and "Run the same command again to go on" in err
    finished = int(err.split("interrupted: ", 1)[1].split(" of ")[0])
    assert finished < N_EXPOSURES
    wait_for_workers(scheduler, 2)
    # no partial file; what finished is whole (a task already running may still have finished since)
    solved_before = {p.name.removesuffix(".wcs.fits") for p in out.glob("*.wcs.fits")}
    assert len(solved_before) >= finished
    assert all(is_solved_file(out / f"{name}.wcs.fits") for name in solved_before)

    again = CliRunner().invoke(main, submit_args(paths, catalog, out, "--scheduler", scheduler))
    assert again.exit_code == 0, again.output
    skipped = int(again.output.split(f"{N_EXPOSURES} exposures: ", 1)[1].split(" already solved")[0])
    assert len(solved_before) <= skipped < N_EXPOSURES  # solved ones not redone, the rest solved now
    assert f"{N_EXPOSURES} solved, 0 failed, 0 pending" in again.output
    assert_whole(out, paths)


def test_a_killed_scheduler_is_reported_and_a_resubmit_goes_on(backlog, scheduler, tmp_path: Path) -> None:
    """`dask scheduler` SIGKILLed mid-backlog: the submit says so and exits; nothing is marked failed."""
    from test_cluster_launch import load_launch

    paths, catalog = backlog
    out = tmp_path / "out"
    launch = load_launch()
    with launch.launch(scheduler_file=tmp_path / "scheduler.json", n_workers=1, threads=1, port=0,
                       dashboard=False, log_dir=tmp_path / "logs", memory_limit="2GB") as cluster:
        command = cli_command(*submit_args(paths, catalog, out, "--scheduler-file", str(cluster.scheduler_file)))
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=cli_env(DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT="3s"),
                              start_new_session=True) as proc:
            try:
                wait_for(lambda: len(read_statuses(out)) >= 1 or proc.poll() is not None, "a first exposure")
                cluster.processes["scheduler"].send_signal(signal.SIGKILL)
                _, err = proc.communicate(timeout=TIMEOUT_S)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1, err
    # distributed logs its failed reconnections (with their tracebacks); ours is the last word, one line
    assert err.strip().splitlines()[-1].startswith("Error: lost the scheduler"), err
    assert "submit the same backlog to solve the rest" in err
    assert not [line for line in err.splitlines() if "/astrodask/" in line and line.lstrip().startswith("File ")]
    # the unfinished ones are pending, not failed: the scheduler's death is not theirs
    status = backlog_status(out, inputs=read_manifest(out))
    assert status.n_failed == 0 and 0 < status.n_pending < N_EXPOSURES, status
    assert_whole(out, paths, solved=set(status.done))

    again = CliRunner().invoke(main, submit_args(paths, catalog, out, "--scheduler", scheduler))
    assert again.exit_code == 0, again.output
    assert f"{N_EXPOSURES} exposures: {status.n_done} already solved (skipped)" in again.output
    assert_whole(out, paths)


# ---------------------------------------------------------------- concurrency


def run_two_at_once(first: list[str], second: list[str], n: int) -> None:
    """Two ``astrodask submit`` processes started together; both must succeed."""
    procs = [subprocess.Popen(cli_command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=cli_env()) for args in (first, second)]
    try:
        outputs = [proc.communicate(timeout=TIMEOUT_S) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, (stdout, stderr) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, stdout + stderr
        assert f"{n} solved, 0 failed, 0 pending" in stdout


def assert_one_of_each(out: Path, paths: list[Path]) -> None:
    """One whole solution and one record per exposure; the manifest and the summary list each once."""
    assert_whole(out, paths)
    assert sorted(p.name for p in out.glob("*.wcs.fits")) == sorted(f"{exposure_name(p)}.wcs.fits" for p in paths)
    assert sorted(map(str, read_manifest(out))) == sorted(str(p.resolve()) for p in paths)
    assert 1 <= len(manifest_files(out)) <= 2
    summary = Table.read(out / "summary.ecsv")
    assert sorted(summary["name"]) == sorted(exposure_name(p) for p in paths)


def test_two_submits_of_one_backlog_at_once_on_one_scheduler(backlog, scheduler, tmp_path: Path) -> None:
    paths, catalog = backlog
    out = tmp_path / "out"
    args = submit_args(paths, catalog, out, "--scheduler", scheduler)
    run_two_at_once(args, args, len(paths))
    assert_one_of_each(out, paths)


def test_two_submits_of_one_backlog_at_once_on_two_schedulers(backlog, scheduler, tmp_path: Path) -> None:
    from distributed import LocalCluster

    paths, catalog = backlog
    paths = paths[:4]
    out = tmp_path / "out"
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, memory_limit=None) as other:
        # both solve every exposure: each file is renamed into place whole, the last one stays
        run_two_at_once(submit_args(paths, catalog, out, "--scheduler", scheduler),
                        submit_args(paths, catalog, out, "--scheduler", other.scheduler_address), len(paths))
    assert_one_of_each(out, paths)


# ---------------------------------------------------------------- an object store that goes away


def test_a_tile_cache_on_s3_that_goes_away_mid_backlog(backlog, sky, scheduler, s3_relay, s3_bucket,
                                                       tmp_path: Path) -> None:
    """The relay stops once the first exposure is reported: those that had read their tiles go on."""
    from astrodask.config import PipelineConfig
    from astrodask.reference.fill import import_catalog
    from astrodask.reference.store import TileCache
    from astrodask.run.client import connect, submit_backlog

    paths = backlog[0][:6]
    url = f"{s3_bucket}/tiles"
    # the stars around the backlog (partial tiles, their cover in the marker), straight to the
    # server (this process's AWS_ENDPOINT_URL); the workers read them through the relay
    import_catalog(TileCache(url), cut(sky, 150.1, 25.0, CACHE_RADIUS_DEG), cover_deg=(150.1, 25.0, CACHE_RADIUS_DEG))
    out = tmp_path / "out"
    config = PipelineConfig().replace({"gaia": {"fetch_missing_tiles": False}})
    stopped: list[int] = []

    def store_goes_away(done: int, total: int, row: dict) -> None:
        if not stopped:
            stopped.append(done)
            s3_relay.stop()

    try:
        with connect(scheduler=scheduler) as connection:
            rows = submit_backlog(connection, paths, out_dir=out, config=config, cache_url=url,
                                  on_row=store_goes_away)
    finally:
        if not s3_relay.running:
            s3_relay.start()  # the store is back
    assert stopped and len(rows) == len(paths)
    solved = {r["name"] for r in rows if r["status"] == SOLVED}
    failed = [r for r in rows if r["status"] != SOLVED]
    # Dask's order: some exposures had read their tiles when the store went (they are solved),
    # the others had not (observed: about half of each)
    assert solved and failed, rows
    for row in failed:  # each with the transient reason, not a damaged tile nor an internal error
        assert row["stage"] == "references"
        assert row["reason"].startswith(f"tile cache {url} cannot be reached (EndpointConnectionError"), row["reason"]
        assert "its tiles are not damaged, only out of reach: resubmit once the store is back" in row["reason"]
    assert_whole(out, paths, solved=solved)
    # the resubmit solves them, the solved ones are skipped
    again = CliRunner().invoke(main, ["submit", *map(str, paths), "--out", str(out), "--scheduler", scheduler,
                                      "--cache", url, "--set", "gaia.fetch_missing_tiles=false"])
    assert again.exit_code == 0, again.output
    assert f"{len(paths)} exposures: {len(solved)} already solved (skipped), {len(failed)} to solve" in again.output
    assert_whole(out, paths)


# ---------------------------------------------------------------- the pieces, without a cluster


def test_a_write_error_wrapped_by_the_writer_is_still_the_outputs_fault(tmp_path: Path) -> None:
    """astropy re-raises a full disk as a new OSError without errno: the cause is found in the chain."""
    import errno

    from astrodask.errors import OutputError
    from astrodask.io.output import atomic_write

    target = tmp_path / "x.wcs.fits"

    def full_disk(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as exc:
            raise OSError(f"Not enough space on disk: {exc}")  # noqa: B904 - as astropy does

    with pytest.raises(OutputError, match=r"x\.wcs\.fits: cannot write: No space left on device; the disk is full"):
        atomic_write(target, full_disk)
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary

    def missing_input(tmp: Path) -> None:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "input.fits")

    with pytest.raises(FileNotFoundError):  # not the output's fault: not an OutputError
        atomic_write(target, missing_input)
    assert list(tmp_path.iterdir()) == []


def test_unreachable_store_errors_are_told_from_damaged_tiles() -> None:
    from botocore.exceptions import EndpointConnectionError

    from astrodask.reference.store import unreachable

    assert unreachable(ConnectionRefusedError(111, "Connection refused"))
    assert unreachable(EndpointConnectionError(endpoint_url="http://127.0.0.1:9/x"))
    try:
        try:
            raise TimeoutError("read timed out")
        except TimeoutError as inner:
            raise RuntimeError("zarr could not read the chunk") from inner
    except RuntimeError as wrapped:
        assert unreachable(wrapped)
    assert not unreachable(ValueError("not a zstd frame"))
    assert not unreachable(FileNotFoundError(2, "No such file or directory"))


def test_only_the_temporary_files_of_dead_writers_on_this_machine_are_removed(tmp_path: Path) -> None:
    from astrodask.io.output import _temporary_prefix, atomic_write, remove_stale_temporaries

    solution = tmp_path / "e1.wcs.fits"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    dead_pid = int(dead.stdout)
    mine = _temporary_prefix(solution)  # .e1.wcs.fits.<host>-<pid>.
    host = mine.split(".wcs.fits.", 1)[1].rsplit("-", 1)[0]
    left = tmp_path / f".e1.wcs.fits.{host}-{dead_pid}.abc123xy.tmp"  # a killed worker's
    live = tmp_path / f"{mine}def456uv.tmp"  # this process is writing it
    remote = tmp_path / f".e1.wcs.fits.otherhost-{dead_pid}.ghi789zz.tmp"  # cannot tell: kept
    record = tmp_path / ".astrodask" / f".e1.json.{host}-{dead_pid}.jkl012ab.tmp"
    record.parent.mkdir()
    for path in (left, live, remote, record):
        path.write_bytes(b"half")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted([left, record])
    assert live.exists() and remote.exists() and not left.exists() and not record.exists()
    # atomic_write's own temporary names follow the pattern (so a killed one is found)
    seen = []
    atomic_write(solution, lambda tmp: seen.append(tmp.name) or tmp.write_bytes(b"whole"))
    assert seen[0].startswith(mine) and seen[0].endswith(".tmp")


def test_a_solution_whose_record_was_never_written_gets_it_back(tmp_path: Path) -> None:
    """A worker killed between the solution's rename and its record's: the resubmit restores the record."""
    from astrodask.run.backlog import assemble_summary, plan_backlog, restore_missing_records

    out = tmp_path / "out"
    out.mkdir()
    header = fits.Header([("ASTSTAT", "SOLVED"), ("NMATCH", 123), ("RMSXI", 0.0125), ("CHI2DOF", 1.04),
                          ("ASTDATE", "2026-11-29T10:00:00")])
    fits.PrimaryHDU(header=header).writeto(out / "e1.wcs.fits")
    exposure = tmp_path / "e1.fits.fz"
    exposure.write_bytes(b"")
    plan = plan_backlog([exposure], out)
    assert plan.done == (exposure,)
    [record] = restore_missing_records(plan.done, out)
    restored = json.loads(record.read_text())
    assert restored["status"] == SOLVED and restored["file"] == str(exposure)
    assert (restored["matches"], restored["rms_xi_arcsec"], restored["chi2_dof"]) == (123, 0.0125, 1.04)
    assert restored["finished_utc"] == "2026-11-29T10:00:00"
    assert restore_missing_records(plan.done, out) == []  # once: a record there is left as it is
    assert Table.read(assemble_summary(out))["matches"][0] == 123
