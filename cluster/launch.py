"""Launch an astrodask Dask cluster on this machine: one scheduler and N worker processes.

Run it::

    python cluster/launch.py --workers 4 --threads 1 --memory-limit 2.5GB \\
        --scheduler-file /tmp/astrodask/scheduler.json

It starts ``dask scheduler`` and N ``dask worker`` processes (each with its nanny) with this
folder's dask configuration (``DASK_CONFIG`` points here, so ``astrodask.yaml`` applies) and
preloads (``preload_scheduler.py``, ``preload_worker.py``), waits until every worker has joined,
prints the scheduler's address and dashboard, and stops everything on Ctrl-C or SIGTERM.  Clients
connect with ``distributed.Client(scheduler_file=...)``.

From Python (tests import this file by path)::

    with launch(scheduler_file="/tmp/x/scheduler.json", n_workers=2) as cluster:
        client = Client(scheduler_file=cluster.scheduler_file)

The scheduler listens on 127.0.0.1 by default: nothing outside this machine can reach it, and
distributed's connections are neither authenticated nor encrypted.  ``--host 0.0.0.0`` opens it
to workers on other machines (on a trusted network only).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO

from astrodask.errors import LaunchError

log = logging.getLogger("astrodask.cluster.launch")

#: This folder: the dask configuration (astrodask.yaml) and the preloads.
CLUSTER_DIR = Path(__file__).resolve().parent
#: Preload run by the scheduler process.
SCHEDULER_PRELOAD = CLUSTER_DIR / "preload_scheduler.py"
#: Preload run by each worker process (registers the astrodask worker plugin).
WORKER_PRELOAD = CLUSTER_DIR / "preload_worker.py"
#: Worker processes started.
DEFAULT_WORKERS = 2
#: Threads per worker process: astrodask's stages hold the GIL much of the time, so processes scale.
DEFAULT_THREADS = 1
#: Memory per worker process: a full Condor frame solve peaks near 1.5 GB with the libraries.
DEFAULT_MEMORY_LIMIT = "2.5GB"
#: Interface the scheduler and workers listen on (loopback: this machine only).
DEFAULT_HOST = "127.0.0.1"
#: Scheduler port (distributed's usual one; 0 picks a free port).
DEFAULT_PORT = 8786
#: Dashboard port (served on the scheduler's host; needs bokeh).
DEFAULT_DASHBOARD_PORT = 8787
#: Seconds allowed for the scheduler to start and every worker to join.
START_TIMEOUT_S = 60.0
#: Seconds allowed to each group of processes (workers, then the scheduler) to stop after SIGTERM.
STOP_TIMEOUT_S = 20.0
#: Seconds between checks while waiting.
POLL_S = 0.25
#: Workers close when their scheduler has been unreachable this long (seconds).
DEATH_TIMEOUT_S = 60
#: Lines of a failed process's log quoted in the error.
LOG_TAIL_LINES = 15


@dataclass
class Launched:
    """A running cluster started by :func:`launch`; a context manager that stops it on exit.

    Attributes
    ----------
    scheduler_file
        The scheduler file clients connect with.
    address
        The scheduler's address (``tcp://host:port``).
    dashboard
        The dashboard's link, or None when it is off or bokeh is not installed.
    processes
        The processes started, by name: ``scheduler``, ``worker-0``, ``worker-1``...
        (each worker process is a nanny whose worker runs in a child process of its group).
    log_dir
        Where each process writes ``<name>.log``, or None when they share this process's output.
    """

    scheduler_file: Path
    address: str = ""
    dashboard: str | None = None
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    log_dir: Path | None = None

    def exited(self) -> dict[str, int]:
        """Processes that have exited, with their exit codes."""
        return {name: code for name, proc in self.processes.items() if (code := proc.poll()) is not None}

    def log_tail(self, name: str, *, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of process ``name``'s log ("" when there is no log file)."""
        if self.log_dir is None:
            return ""
        path = self.log_dir / f"{name}.log"
        try:
            text = path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, *, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop the workers, then the scheduler: SIGTERM (a clean close), SIGKILL after ``timeout_s``.

        Safe to call more than once.
        """
        workers = [proc for name, proc in self.processes.items() if name != "scheduler"]
        scheduler = [proc for name, proc in self.processes.items() if name == "scheduler"]
        for group in (workers, scheduler):
            _terminate(group, timeout_s=timeout_s)
        for proc in self.processes.values():
            _kill_group(proc.pid)  # anything left in a group we started (a nanny's orphaned worker)

    def __enter__(self) -> Launched:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()


def _terminate(processes: Sequence[subprocess.Popen[bytes]], *, timeout_s: float) -> None:
    running = [proc for proc in processes if proc.poll() is None]
    for proc in running:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for proc in running:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("process %d did not stop within %.0f s: killing it", proc.pid, timeout_s)
            _kill_group(proc.pid)
            proc.wait()


def _kill_group(pgid: int) -> None:
    """SIGKILL every process of group ``pgid`` (one started by :func:`_start`, in its own session)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # nothing left (PermissionError: only zombies, on macOS)
        pass


def launch(*, scheduler_file: str | os.PathLike[str], n_workers: int = DEFAULT_WORKERS,
           threads: int = DEFAULT_THREADS, memory_limit: str = DEFAULT_MEMORY_LIMIT, host: str = DEFAULT_HOST,
           port: int = DEFAULT_PORT, dashboard: bool = True, dashboard_address: str | None = None,
           local_directory: str | os.PathLike[str] | None = None, log_dir: str | os.PathLike[str] | None = None,
           timeout_s: float = START_TIMEOUT_S) -> Launched:
    """Start a scheduler and ``n_workers`` worker processes; return once every worker has joined.

    Parameters
    ----------
    scheduler_file
        Where the scheduler writes its address (a stale file there is removed first).
    n_workers
        Worker processes (each under its own nanny).
    threads
        Threads per worker.
    memory_limit
        Memory per worker (``"2.5GB"``, bytes, or ``"auto"``); see cluster/astrodask.yaml for the
        spill, pause and terminate fractions.
    host
        Interface the scheduler and the workers listen on.
    port
        Scheduler port (0: any free port).
    dashboard
        Serve the scheduler's dashboard (needs bokeh; without it the scheduler just logs so).
    dashboard_address
        Where the dashboard listens (default ``host:8787``).
    local_directory
        Folder for the workers' scratch files and spilled data (default: dask's temporary folder).
    log_dir
        Write each process's output to ``log_dir/<name>.log`` (default: this process's output).
    timeout_s
        Time allowed for the scheduler to start and the workers to join.

    Returns
    -------
    Launched
        The running cluster; stop it with :meth:`Launched.stop` or a ``with`` block.

    Raises
    ------
    LaunchError
        When a process exits during start-up or the workers do not join in time (everything
        started is stopped first).
    """
    if n_workers < 1 or threads < 1:
        raise ValueError(f"launch needs at least 1 worker and 1 thread, got {n_workers} workers of {threads}")
    scheduler_file = Path(scheduler_file).resolve()
    scheduler_file.parent.mkdir(parents=True, exist_ok=True)
    scheduler_file.unlink(missing_ok=True)
    logs = Path(log_dir).resolve() if log_dir is not None else None
    if logs is not None:
        logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DASK_CONFIG": str(CLUSTER_DIR)}
    dask = [sys.executable, "-m", "dask"]
    launched = Launched(scheduler_file=scheduler_file, log_dir=logs)
    try:
        launched.processes["scheduler"] = _start(
            "scheduler", [*dask, "scheduler", "--scheduler-file", str(scheduler_file), "--host", host,
                          "--port", str(port), "--preload", str(SCHEDULER_PRELOAD),
                          *(["--dashboard-address", dashboard_address or f"{host}:{DEFAULT_DASHBOARD_PORT}"]
                            if dashboard else ["--no-dashboard"])],
            env=env, logs=logs)
        deadline = time.monotonic() + timeout_s
        launched.address = _wait_for_scheduler_file(launched, deadline=deadline)
        worker_options = ["--scheduler-file", str(scheduler_file), "--host", host, "--nthreads", str(threads),
                          "--memory-limit", str(memory_limit), "--preload", str(WORKER_PRELOAD),
                          "--death-timeout", str(DEATH_TIMEOUT_S),
                          *(["--dashboard-address", f"{host}:0"] if dashboard else ["--no-dashboard"]),
                          *(["--local-directory", str(Path(local_directory).resolve())] if local_directory else [])]
        for k in range(n_workers):
            name = f"worker-{k}"
            launched.processes[name] = _start(name, [*dask, "worker", *worker_options, "--name", f"astrodask-{k}"],
                                              env=env, logs=logs)
        launched.dashboard = _wait_for_workers(launched, n_workers, deadline=deadline, dashboard=dashboard)
    except BaseException:
        launched.stop()
        raise
    log.info("cluster up: scheduler %s, %d workers of %d thread(s) and %s", launched.address, n_workers, threads,
             memory_limit)
    return launched


def _start(name: str, command: list[str], *, env: dict[str, str], logs: Path | None) -> subprocess.Popen[bytes]:
    """Start one process in its own session (a terminal's Ctrl-C reaches the launcher only)."""
    output: IO[bytes] | None = open(logs / f"{name}.log", "ab") if logs is not None else None
    try:
        proc = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=output,
                                stderr=subprocess.STDOUT if output is not None else None, start_new_session=True)
    finally:
        if output is not None:
            output.close()  # the child has its own copy
    log.debug("started %s (pid %d): %s", name, proc.pid, " ".join(command))
    return proc


def _check_alive(launched: Launched) -> None:
    exited = launched.exited()
    if exited:
        name, code = next(iter(exited.items()))
        tail = launched.log_tail(name)
        where = f" (log: {launched.log_dir / f'{name}.log'})" if launched.log_dir else ""
        raise LaunchError(f"{name} exited with status {code} during start-up{where}"
                          + (f":\n{tail}" if tail else ""))


def _wait_for_scheduler_file(launched: Launched, *, deadline: float) -> str:
    """The scheduler's address, once it has written its scheduler file."""
    while True:
        _check_alive(launched)
        try:
            address = json.loads(launched.scheduler_file.read_text())["address"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):  # not there yet, or half written
            address = ""
        if address:
            return str(address)
        if time.monotonic() > deadline:
            raise LaunchError(f"the scheduler wrote no {launched.scheduler_file} in time")
        time.sleep(POLL_S)


def _wait_for_workers(launched: Launched, n_workers: int, *, deadline: float, dashboard: bool = True) -> str | None:
    """Wait until ``n_workers`` workers have joined; return the dashboard link (None without one)."""
    from distributed import Client

    remaining = max(1.0, deadline - time.monotonic())
    with Client(scheduler_file=str(launched.scheduler_file), timeout=f"{remaining}s",
                set_as_default=False) as client:
        while True:
            _check_alive(launched)
            try:
                client.wait_for_workers(n_workers, timeout=POLL_S)
                break
            except TimeoutError:
                if time.monotonic() > deadline:
                    joined = len(client.scheduler_info(n_workers=-1)["workers"])
                    raise LaunchError(f"only {joined} of {n_workers} workers joined within the time allowed; "
                                      "see their logs") from None
        # the scheduler's HTTP server (reported as "dashboard") runs even with --no-dashboard,
        # serving only health and metrics routes: trust the flag, not the services
        services = client.scheduler_info(n_workers=0).get("services", {})
        if not dashboard or "dashboard" not in services:
            return None
        if importlib.util.find_spec("bokeh") is None:  # the scheduler runs this same Python
            log.info("no dashboard: it needs bokeh (pip install bokeh)")
            return None
        return client.dashboard_link


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Launch an astrodask Dask cluster on this machine "
                                     "(a scheduler and N worker processes); Ctrl-C stops it.")
    parser.add_argument("--scheduler-file", required=True, type=Path,
                        help="where the scheduler writes its address; clients connect with it")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="worker processes (default %(default)s)")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                        help="threads per worker (default %(default)s)")
    parser.add_argument("--memory-limit", default=DEFAULT_MEMORY_LIMIT,
                        help="memory per worker, e.g. 2.5GB (default %(default)s)")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help="interface to listen on (default %(default)s: this machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help="scheduler port, 0 for any free one (default %(default)s)")
    parser.add_argument("--dashboard-address", default=None,
                        help=f"dashboard address (default HOST:{DEFAULT_DASHBOARD_PORT}; needs bokeh)")
    parser.add_argument("--no-dashboard", action="store_true", help="serve no dashboard")
    parser.add_argument("--local-directory", type=Path, default=None,
                        help="folder for the workers' scratch and spilled data")
    parser.add_argument("--log-dir", type=Path, default=None,
                        help="write each process's output to LOG_DIR/<name>.log instead of this terminal")
    parser.add_argument("--timeout", type=float, default=START_TIMEOUT_S,
                        help="seconds allowed for the workers to join (default %(default)s)")
    return parser


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None) -> int:
    """Launch the cluster, report it, and keep it running until interrupted."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _interrupt)
    launched: Launched | None = None
    try:
        launched = launch(scheduler_file=args.scheduler_file, n_workers=args.workers, threads=args.threads,
                          memory_limit=args.memory_limit, host=args.host, port=args.port,
                          dashboard=not args.no_dashboard, dashboard_address=args.dashboard_address,
                          local_directory=args.local_directory, log_dir=args.log_dir, timeout_s=args.timeout)
        print(f"scheduler: {launched.address}", flush=True)
        print(f"dashboard: {launched.dashboard or 'none (--no-dashboard, or bokeh is not installed)'}", flush=True)
        print(f"scheduler file: {launched.scheduler_file}", flush=True)
        print(f"workers: {args.workers} x {args.threads} thread(s), {args.memory_limit} each; Ctrl-C stops them",
              flush=True)
        while not (exited := launched.exited()):
            time.sleep(1.0)
        log.error("%s exited (status %s): stopping the cluster", *next(iter(exited.items())))
        return 1
    except KeyboardInterrupt:
        log.info("interrupted: stopping the cluster")
        return 0
    except LaunchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the shutdown short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if launched is not None:
            launched.stop()
            log.info("cluster stopped")


if __name__ == "__main__":
    sys.exit(main())
