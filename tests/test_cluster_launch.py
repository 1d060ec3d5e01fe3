"""A real cluster on this machine: cluster/launch.py starts a scheduler and two worker processes on loopback."""

from __future__ import annotations

import importlib.util
import logging
import operator
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
from distributed import Client

import astrodask
from astrodask.run.plugins import PLUGIN_NAME, setup_client

CLUSTER_DIR = Path(__file__).resolve().parents[1] / "cluster"
#: Seconds a forwarded log record may take to reach the client.
FORWARD_TIMEOUT_S = 10.0

pytestmark = pytest.mark.slow


def load_launch() -> ModuleType:
    """cluster/launch.py, imported by path (cluster/ is not a package)."""
    name = "astrodask_cluster_launch"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, CLUSTER_DIR / "launch.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def live_members(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that are still running (zombies excluded), from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, _ppid, group = stat.rsplit(")", 1)[1].split()[:3]
        if int(group) == pgid and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to check the processes are gone")
def test_launch_two_workers_run_forward_logs_and_stop(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # a cluster started earlier in this process with distributed's defaults left glibc's trim threshold in
    # its environment (a nanny sets its pre-spawn variables in its own process too): a shell has none
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    launch = load_launch()
    scheduler_file = tmp_path / "scheduler.json"

    with launch.launch(scheduler_file=scheduler_file, n_workers=2, threads=1, memory_limit="1GB", port=0,
                       dashboard=False, local_directory=tmp_path / "scratch", log_dir=tmp_path / "logs",
                       timeout_s=60) as cluster:
        assert cluster.address.startswith("tcp://127.0.0.1:")
        assert cluster.dashboard is None
        assert sorted(cluster.processes) == ["scheduler", "worker-0", "worker-1"]
        with Client(scheduler_file=str(scheduler_file), set_as_default=False) as client:
            assert sorted(client.nthreads().values()) == [1, 1]
            # the preload registered the plugin; it set the astrodask logger to INFO and recorded the version
            plugins = client.run(lambda dask_worker: sorted(dask_worker.plugins))
            assert all(PLUGIN_NAME in names for names in plugins.values()), plugins
            versions = client.run(lambda dask_worker: dask_worker.plugins["astrodask"].worker_version)
            assert set(versions.values()) == {astrodask.__version__}
            levels = client.run(lambda: logging.getLogger("astrodask").getEffectiveLevel())
            assert set(levels.values()) == {logging.INFO}
            # and left out of distributed's worker log the heartbeats a closing worker cancels
            filters = client.run(lambda: [type(f).__name__ for f in logging.getLogger("distributed.worker").filters])
            assert list(filters.values()) == [["CancelledHeartbeatFilter"]] * 2
            # astrodask.yaml applies (DASK_CONFIG points at cluster/)
            assert client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.allowed_failures) == 2
            # its worker environment too: glibc's trim threshold unset, distributed's BLAS settings kept
            environ = client.run(lambda: {k: os.environ.get(k) for k in ("MALLOC_TRIM_THRESHOLD_",
                                                                           "OPENBLAS_NUM_THREADS")})
            assert list(environ.values()) == [{"MALLOC_TRIM_THRESHOLD_": None, "OPENBLAS_NUM_THREADS": "1"}] * 2

            assert client.submit(operator.add, 1, 2).result() == 3
            squares = client.gather(client.map(operator.mul, range(10), range(10)))
            assert sum(squares) == 285

            setup_client(client)  # registers the plugin again (idempotent) and forwards the logs
            caplog.set_level(logging.INFO, logger="astrodask")
            worker_logger = logging.getLogger("astrodask.cluster_test")
            client.submit(worker_logger.info, "hello from %s", "a worker", pure=False).result()
            deadline = time.monotonic() + FORWARD_TIMEOUT_S
            while not [r for r in caplog.records if r.name == "astrodask.cluster_test"]:
                assert time.monotonic() < deadline, "the worker's log record never reached the client"
                time.sleep(0.05)
            record = next(r for r in caplog.records if r.name == "astrodask.cluster_test")
            assert record.getMessage() == "hello from a worker"
            assert record.worker in client.nthreads()  # the worker's address
            assert all(PLUGIN_NAME in names for names in
                       client.run(lambda dask_worker: list(dask_worker.plugins)).values())

    assert all(proc.poll() is not None for proc in cluster.processes.values())
    assert {name: live_members(proc.pid) for name, proc in cluster.processes.items()} == \
        {name: [] for name in cluster.processes}
    assert f"astrodask {astrodask.__version__} scheduler at" in (tmp_path / "logs" / "scheduler.log").read_text()
    assert "ready on worker astrodask-0" in (tmp_path / "logs" / "worker-0.log").read_text()


def test_launch_reports_a_worker_that_cannot_start(tmp_path: Path) -> None:
    launch = load_launch()
    with pytest.raises(launch.LaunchError, match="worker-0 exited with status") as info:
        launch.launch(scheduler_file=tmp_path / "scheduler.json", n_workers=1, memory_limit="plenty", port=0,
                      dashboard=False, log_dir=tmp_path / "logs", timeout_s=60)
    assert "plenty" in str(info.value)  # the worker log's tail says what was wrong


def test_launch_script_runs_until_interrupted(tmp_path: Path) -> None:
    scheduler_file = tmp_path / "scheduler.json"
    command = [sys.executable, str(CLUSTER_DIR / "launch.py"), "--workers", "1", "--threads", "1",
               "--memory-limit", "1GB", "--port", "0", "--no-dashboard", "--scheduler-file", str(scheduler_file),
               "--log-dir", str(tmp_path / "logs")]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as proc:
        try:
            report = [proc.stdout.readline() for _ in range(4)]  # scheduler, dashboard, file, workers
            assert report[0].startswith("scheduler: tcp://127.0.0.1:"), "".join(report) + proc.stderr.read()
            assert report[1] == "dashboard: none (--no-dashboard, or bokeh is not installed)\n"
            assert report[2] == f"scheduler file: {scheduler_file}\n"
            with Client(scheduler_file=str(scheduler_file), set_as_default=False) as client:
                assert list(client.nthreads().values()) == [1]
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err
    assert "cluster stopped" in err


def test_a_cancelled_heartbeat_is_left_out_of_the_worker_log_and_a_failed_one_kept() -> None:
    """A closing worker cancels its heartbeat in flight, and distributed logs it as a failure with a
    traceback; a heartbeat that fails for a real reason is kept."""
    import asyncio

    from astrodask.run.plugins import HEARTBEAT_FAILED, CancelledHeartbeatFilter

    def record_of(make_error) -> logging.LogRecord:
        try:
            make_error()
        except OSError:
            return logging.getLogger("distributed.worker").makeRecord(
                "distributed.worker", logging.ERROR, __file__, 1, HEARTBEAT_FAILED, (), sys.exc_info())
        raise AssertionError("no error")

    def cancelled() -> None:
        try:
            raise asyncio.CancelledError()
        except asyncio.CancelledError as err:
            raise OSError("Timed out trying to connect") from err

    def refused() -> None:
        raise ConnectionRefusedError("Connection refused")

    keep = CancelledHeartbeatFilter()
    assert not keep.filter(record_of(cancelled))
    assert keep.filter(record_of(refused))
    other = logging.getLogger("distributed.worker").makeRecord("distributed.worker", logging.ERROR, __file__, 1,
                                                                "something else", (), None)
    assert keep.filter(other)
