"""The solve as a Dask graph on real LocalClusters of worker processes: no mocks."""

from __future__ import annotations

import os
import socket
import zlib
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from click.testing import CliRunner

from astrodask.run.backlog import read_statuses, status_path
from astrodask.cli import EXIT_PARTIAL, main
from astrodask.config import PipelineConfig
from astrodask.run.graph import TASK_STAGES, Task, backlog_graph, exposure_graph
from astrodask.run.client import connect, submit_backlog
from astrodask.simulate import read_truth_wcs, simulate_field
from astrodask.wcsutil import wcs_error_mas

SHAPE = (1000, 1500)


@pytest.fixture(scope="module")
def backlog(tmp_path_factory) -> tuple[list[Path], Path]:
    """Four simulated exposures of one field and the field's catalog."""
    from astrodask.reference.catalog import read_catalog

    folder = tmp_path_factory.mktemp("night")
    paths = []
    catalog_path, sky = None, None
    for k in range(4):  # four pointings on one sky: the first exposure's catalog serves them all
        field = simulate_field(folder, f"exp{k:02d}", ra_deg=150.1 + 0.01 * k, dec_deg=25.0, shape=SHAPE,
                               density_per_deg2=6000.0, distortion_px=1.5, catalog=sky,
                               rng=np.random.default_rng(zlib.crc32(f"exp{k}".encode())))
        paths.append(field.image_path)
        if catalog_path is None:
            catalog_path, sky = field.catalog_path, read_catalog(field.catalog_path)
    return paths, catalog_path


def test_building_the_graph_computes_nothing(tmp_path: Path) -> None:
    config = PipelineConfig()
    # files that do not exist: building must not touch them
    tasks = backlog_graph([tmp_path / "a.fits.fz", tmp_path / "b.fits"], out_dir=tmp_path / "out", config=config)
    assert [t.key for t in tasks] == ["write-a", "write-b"]
    graph = dict(tasks[0].__dask_graph__())
    keys = set(graph)
    assert {"detect-a", "references-a", "prepare-a", "reduce-a", "solve-a", "write-a"} <= keys
    assert {f"region-a-{k}" for k in range(24)} <= keys
    assert all(str(k).split("-")[0] in TASK_STAGES for k in keys)
    assert not (tmp_path / "out").exists()
    # the same exposure twice: the same keys
    again = exposure_graph(tmp_path / "a.fits.fz", out_dir=tmp_path / "out", config=config)
    assert set(dict(again.__dask_graph__())) == keys


def test_every_stage_is_timed_by_one_task() -> None:
    from astrodask.types import Stage

    timed = [stage for task in Task for stage in task.stages]
    assert set(timed) == set(Stage)
    assert [t.value for t in Task] == list(TASK_STAGES)


def test_backlog_on_a_local_cluster(backlog, tmp_path: Path) -> None:
    """The default command's path: the first exposure is read and detected by a forked copy of this
    process while the LocalCluster starts (its tables scattered in place of its detect task), the others
    on the cluster; the first's solution is the serial solve's."""
    from distributed import get_task_stream

    from astrodask.run.client import HeadStart
    from astrodask.solve.pipeline import solve_file

    paths, catalog = backlog
    out = tmp_path / "out"
    head = HeadStart(paths[:1], config=PipelineConfig())
    with connect(n_workers=2, before_starting=head.fork, while_starting=head.run) as connection:
        assert connection.embedded and connection.dashboard
        ahead = head.detected
        assert list(ahead) == [str(paths[0].resolve())]
        with get_task_stream(connection.client) as stream:
            rows = submit_backlog(connection, paths, out_dir=out, config=PipelineConfig(), catalog_path=catalog,
                                  detected=ahead)
    assert sorted(r["status"] for r in rows) == ["solved"] * 4
    keys = [str(t["key"]) for t in stream.data]
    writes = [k for k in keys if k.startswith("write-")]
    assert sorted(writes) == [f"write-exp{k:02d}" for k in range(4)]  # each solution written exactly once
    regions = {k for k in keys if k.startswith("region-exp00-")}
    assert len(regions) == 24
    detects = sorted(k for k in keys if k.startswith("detect-"))
    assert detects == [f"detect-exp{k:02d}" for k in range(1, 4)]  # exp00 was detected ahead
    assert all(r["t_detect_s"] > 0 and r["t_regions_s"] > 0 for r in rows)
    for path in paths:
        header = fits.getheader(out / f"{path.name.replace('.fits.fz', '')}.wcs.fits")
        error = wcs_error_mas(WCS(header), read_truth_wcs(path), SHAPE)
        assert np.sqrt(np.mean(error**2)) < 40.0
    assert len(read_statuses(out)) == 4
    from astrodask.reference.catalog import read_catalog

    serial = solve_file(paths[0], catalog=read_catalog(catalog), config=PipelineConfig())
    on_cluster = WCS(fits.getheader(out / "exp00.wcs.fits"))
    assert np.max(wcs_error_mas(on_cluster, serial.wcs, SHAPE)) < 1e-3


def test_the_head_start_detects_the_same_in_a_forked_copy_and_in_this_process(backlog) -> None:
    """Forked (the default with two cores) or in this thread (``detect.extract_processes = 1``), the head
    start hands on the same tables; a child that cannot detect leaves the exposure to the cluster."""
    import os

    from astrodask.config import DetectConfig
    from astrodask.run.client import HeadStart

    paths, _ = backlog
    parent = os.getpid()
    forked = HeadStart(paths[:1], config=PipelineConfig())
    forked.fork()
    assert forked._forked is not None and forked._forked._child.pid != parent
    forked.run()
    here = HeadStart(paths[:1], config=PipelineConfig(detect=DetectConfig(extract_processes=1)))
    here.fork()
    assert here._forked is None
    here.run()
    key = str(paths[0].resolve())
    assert list(forked.detected) == list(here.detected) == [key]
    for a, b in ((forked.detected[key].first.sources, here.detected[key].first.sources),
                 (forked.detected[key].deep.deep, here.detected[key].deep.deep)):
        assert len(a) > 100 and a.colnames == b.colnames
        for name in a.colnames:
            np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]), err_msg=name)
    missing = HeadStart([paths[0].with_name("no-such-file.fits.fz")], config=PipelineConfig())
    missing.fork()
    missing.run()
    assert len(missing.detected) == 1  # an expected failure is the exposure's result, as in this process
    assert "no-such-file" in next(iter(missing.detected.values())).first.reason


def test_a_killed_worker_loses_nothing(backlog, tmp_path: Path) -> None:
    paths, catalog = backlog
    out = tmp_path / "out"
    killed = []
    with connect(n_workers=2) as connection:
        client = connection.client
        victim = sorted(client.scheduler_info()["workers"])[0]

        def kill_once(done: int, total: int, row: dict) -> None:
            if not killed:
                killed.append(victim)
                client.run(os._exit, 1, workers=[victim], on_error="ignore")

        rows = submit_backlog(connection, paths, out_dir=out, config=PipelineConfig(), catalog_path=catalog,
                              on_row=kill_once)
    assert killed
    assert sorted(r["status"] for r in rows) == ["solved"] * 4
    assert all((out / f"exp{k:02d}.wcs.fits").is_file() for k in range(4))


def test_cli_submit_resubmit_and_broken_files(backlog, tmp_path: Path) -> None:
    paths, catalog = backlog
    out = tmp_path / "out"
    broken = tmp_path / "broken.fits"
    broken.write_text("not a FITS file")
    listing = tmp_path / "night.txt"
    listing.write_text("# the night's exposures\n" + "\n".join(str(p) for p in paths[:2]) + f"\n{broken}\n")
    runner = CliRunner()
    first = runner.invoke(main, ["submit", f"@{listing}", "--catalog", str(catalog), "--out", str(out),
                                 "--workers", "2"])
    assert first.exit_code == EXIT_PARTIAL, first.output
    assert "3 exposures: 0 already solved (skipped), 3 to solve" in first.output
    statuses = {Path(r["file"]).name: r for r in read_statuses(out)}
    assert statuses["broken.fits"]["status"] == "failed"
    assert "not a readable FITS file" in statuses["broken.fits"]["reason"]
    assert statuses[paths[0].name]["status"] == "solved"
    solution = out / "exp00.wcs.fits"
    before = solution.stat().st_mtime_ns
    # resubmit: the solved ones are skipped, nothing new is computed for them
    second = runner.invoke(main, ["submit", str(paths[0]), str(paths[1]), "--catalog", str(catalog),
                                  "--out", str(out)])
    assert second.exit_code == 0, second.output
    assert "2 exposures: 2 already solved (skipped), 0 to solve" in second.output
    assert solution.stat().st_mtime_ns == before
    status = runner.invoke(main, ["status", "--out", str(out)])
    assert status.exit_code == 0, status.output
    assert "broken (deterministic): " in status.output and "not a readable FITS file" in status.output
    # the whole night again: the broken file failed for a reason that will not change: left alone, said once
    third = runner.invoke(main, ["submit", f"@{listing}", "--catalog", str(catalog), "--out", str(out)])
    assert third.exit_code == 1, third.output  # nothing solved now, one exposure failed
    assert "3 exposures: 2 already solved (skipped), 0 to solve" in third.output
    assert third.output.count("1 exposure(s) failed earlier for a reason that will not change; --retry-failed") == 1
    record = status_path(out, "broken")
    stamp = record.stat().st_mtime_ns  # the third submit did not touch it (it ran nothing)
    retried = runner.invoke(main, ["submit", f"@{listing}", "--catalog", str(catalog), "--out", str(out),
                                   "--retry-failed", "--workers", "1"])
    assert "2 already solved (skipped), 1 to solve" in retried.output and "failed earlier" not in retried.output
    assert record.stat().st_mtime_ns > stamp


def test_submit_detached_to_a_launched_dask_scheduler(backlog, tmp_path: Path) -> None:
    """`dask scheduler` + 2 `dask worker` processes (cluster/launch.py); submit --detach; status."""
    import time

    from test_cluster_launch import load_launch

    paths, catalog = backlog
    out = tmp_path / "out"
    launch = load_launch()
    with launch.launch(scheduler_file=tmp_path / "scheduler.json", n_workers=2, threads=1,
                       dashboard=False, log_dir=tmp_path / "logs") as cluster:
        runner = CliRunner()
        submitted = runner.invoke(main, ["submit", *map(str, paths[:2]), "--catalog", str(catalog), "--out", str(out),
                                         "--scheduler-file", str(cluster.scheduler_file), "--detach"])
        assert submitted.exit_code == 0, submitted.output
        assert "the work goes on after this command" in submitted.output
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(read_statuses(out)) < 2:
            time.sleep(0.5)
        status = runner.invoke(main, ["status", "--out", str(out)])
    assert status.exit_code == 0, status.output
    assert "2 solved, 0 failed, 0 pending" in status.output
    assert (out / "exp00.wcs.fits").is_file() and (out / "exp01.wcs.fits").is_file()


def test_an_exposure_that_kills_workers_is_reported_and_the_backlog_goes_on(backlog, tmp_path: Path) -> None:
    """A frame too big for the workers' memory limit: the nanny kills the worker each time it is read."""
    import dask
    import distributed  # noqa: F401 - its config defaults must exist before dask.config.set overrides them

    paths, catalog = backlog
    poison = tmp_path / "huge.fits.fz"
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(np.zeros((16000, 16000), np.uint16),
                                                       compression_type="RICE_1")]).writeto(poison)
    out = tmp_path / "out"
    with dask.config.set({"distributed.scheduler.allowed-failures": 1,
                          "distributed.worker.memory.terminate": 0.95}):
        with connect(n_workers=2, memory_limit="600MB") as connection:
            rows = submit_backlog(connection, [poison, paths[0]], out_dir=out, config=PipelineConfig(),
                                  catalog_path=catalog, retries=0)
        # the run ends (no stall) with every exposure reported
        by_name = {Path(r["file"]).name: r for r in rows}
        assert by_name["huge.fits.fz"]["status"] == "failed"
        assert "KilledWorker" in by_name["huge.fits.fz"]["reason"]
        assert by_name["huge.fits.fz"]["failure_kind"] == "transient"  # a resubmit retries it
        assert {Path(r["file"]).name for r in read_statuses(out)} == {"huge.fits.fz", paths[0].name}
        # a good exposure that shared a dying worker may be failed with it (the scheduler cannot tell
        # which task killed the worker): it is reported as such, and a resubmit solves it
        good = by_name[paths[0].name]
        assert good["status"] == "solved" or "KilledWorker" in good["reason"]
    with connect(n_workers=1) as connection:
        again = submit_backlog(connection, [paths[0]], out_dir=out, config=PipelineConfig(), catalog_path=catalog)
    assert again[0]["status"] == "solved"


def test_backlog_reads_one_shared_tile_cache(tmp_path: Path) -> None:
    """`astrodask cache import` a wide catalog, then `submit --cache`: every worker reads the one store."""
    from astrodask.reference.store import TileCache
    from astrodask.simulate import synthetic_gaia_catalog

    rng = np.random.default_rng(11)
    sky = synthetic_gaia_catalog(150.1, 25.0, rng=rng, radius_deg=2.0, density_per_deg2=6000.0)
    sky.write(tmp_path / "wide.ecsv")
    paths = [simulate_field(tmp_path, f"c{k}", ra_deg=150.1 + 0.02 * k, dec_deg=25.0, shape=SHAPE, catalog=sky,
                            distortion_px=1.5, rng=np.random.default_rng(20 + k)).image_path for k in range(2)]
    runner = CliRunner()
    tiles = tmp_path / "tiles"
    imported = runner.invoke(main, ["cache", "import", str(tmp_path / "wide.ecsv"), "--cache", str(tiles)])
    assert imported.exit_code == 0, imported.output
    assert TileCache(str(tiles)).tiles()  # complete tiles inside the catalog's cover
    before = set(TileCache(str(tiles)).tiles())
    info = runner.invoke(main, ["cache", "info", "--cache", str(tiles)])
    assert info.exit_code == 0 and "complete tiles" in info.output
    out = tmp_path / "out"
    result = runner.invoke(main, ["submit", *map(str, paths), "--cache", str(tiles), "--out", str(out),
                                  "--workers", "2"])
    assert result.exit_code == 0, result.output
    for path in paths:
        name = path.name.replace(".fits.fz", "")
        error = wcs_error_mas(WCS(fits.getheader(out / f"{name}.wcs.fits")), read_truth_wcs(path), SHAPE)
        assert np.sqrt(np.mean(error**2)) < 40.0
    # a field beyond the cached sky fails with the missing tiles named, not a wrong solution
    far = simulate_field(tmp_path, "far", ra_deg=160.0, dec_deg=25.0, shape=SHAPE,
                         rng=np.random.default_rng(30)).image_path
    failed = runner.invoke(main, ["solve", str(far), "--cache", str(tiles), "--out", str(out), "--serial",
                                  "--set", "gaia.fetch_missing_tiles=false"])
    assert failed.exit_code != 0
    assert "not available" in failed.output and "absent" in failed.output
    # allowed to fetch them, but the archive does not answer: the tiles are named with the archive's error
    with socket.socket() as probe:  # a loopback port with nothing listening: connection refused
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}/tap"
    failed = runner.invoke(main, ["solve", str(far), "--cache", str(tiles), "--out", str(out), "--serial",
                                  "--set", f"gaia.tap_url={dead}", "--set", "gaia.retries=0"])
    assert failed.exit_code != 0
    assert "tile(s) of the field could not be filled: 6/" in failed.output and dead in failed.output
    assert failed.output.count("cannot be reached (connection refused)") == 2  # the log line and the result
    assert set(TileCache(str(tiles)).tiles()) == before  # nothing half-written, nothing lost
