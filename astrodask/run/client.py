"""Running a backlog on a Dask cluster: connect (or start the embedded LocalCluster), submit,
follow progress, and report every exposure, failed ones included.

Cluster code: with :mod:`astrodask.run.graph`, the only place that knows about Dask.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from astrodask.config import PipelineConfig
from astrodask.run.graph import Detected, backlog_graph, failed_result
from astrodask.types import FailureKind, TileFill, TileState

log = logging.getLogger(__name__)

#: Retries of a task that raised an unexpected (possibly transient) error.
DEFAULT_RETRIES = 2


@dataclass(frozen=True)
class Connection:
    """A Dask client and, for the embedded default, the LocalCluster it started."""

    client: Any
    cluster: Any
    address: str
    dashboard: str | None

    @property
    def embedded(self) -> bool:
        """True when astrodask started its own LocalCluster."""
        return self.cluster is not None

    @property
    def where(self) -> str:
        """What runs the work, for messages: the scheduler, or the embedded LocalCluster and its workers."""
        from distributed import LocalCluster

        if self.cluster is None:
            return "scheduler"
        threads = self.client.nthreads()  # worker address -> threads
        if not isinstance(self.cluster, LocalCluster):  # e.g. the Kubernetes DaskCluster it created
            return f"{type(self.cluster).__name__} started by astrodask, {len(threads)} workers"
        if self.cluster.processes:
            return f"embedded LocalCluster of {len(threads)} worker processes"
        return f"embedded LocalCluster of {sum(threads.values())} threads in this process"


@contextmanager
def connect(*, scheduler: str | None = None, scheduler_file: str | None = None, n_workers: int | None = None,
            threads_per_worker: int = 1, memory_limit: str | None = "auto",
            kubernetes: bool = False, while_starting: Callable[[], Any] | None = None,
            before_starting: Callable[[], Any] | None = None, processes: bool = True) -> Iterator[Connection]:
    """Connect to a running scheduler, or start the embedded LocalCluster.

    The scheduler is, in order: ``scheduler`` (``--scheduler``), the
    ``DASK_SCHEDULER_ADDRESS`` environment variable (dask config
    ``scheduler-address``), ``scheduler_file`` (``--scheduler-file``); with none, a
    LocalCluster of worker processes (one per core, one thread each) starts on
    loopback and closes on exit; with ``processes=False``, one worker in this process instead, with
    ``n_workers x threads_per_worker`` threads (no process to start: for small jobs; the workers' logs are then
    this process's own, not forwarded). With ``kubernetes`` (``--cluster kubernetes``), the
    operator's DaskCluster instead (:func:`astrodask.run.kube.connect_kubernetes`; ``n_workers``
    sizes a cluster it creates).

    ``while_starting`` (embedded cluster only) is called in this thread while the LocalCluster
    starts in another: work for the seconds its worker processes take to start and import
    (:func:`detect_ahead`). Elsewhere it is not called. ``before_starting`` (with
    ``while_starting``) is called just before, while this process has no other thread: the moment
    to fork (:class:`astrodask.run.forked.Forked`).
    """
    import dask.config
    from distributed import Client

    if kubernetes:
        from astrodask.run.kube import KubeSettings, connect_kubernetes

        with connect_kubernetes(KubeSettings.from_dask_config(n_workers=n_workers)) as connection:
            yield connection
        return

    address = scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS") or dask.config.get("scheduler-address", None)
    cluster = None
    if address:
        client = Client(address)
    elif scheduler_file:
        client = Client(scheduler_file=scheduler_file)
    else:
        start = functools.partial(_start_local_cluster, n_workers=n_workers or os.cpu_count() or 1,
                                  threads_per_worker=threads_per_worker, memory_limit=memory_limit,
                                  processes=processes)
        if while_starting is None:
            cluster, client = start()
        else:
            if before_starting is not None:
                before_starting()
            with ThreadPoolExecutor(1, thread_name_prefix="astrodask-cluster-start") as pool:
                starting = pool.submit(start)
                try:
                    while_starting()
                finally:
                    cluster, client = starting.result()
    from astrodask.run.plugins import setup_client

    # the astrodask worker plugin everywhere, worker logs forwarded here (in-process workers log here already)
    setup_client(client, forward_logs=cluster is None or processes)
    connection = Connection(client, cluster, client.scheduler.address, getattr(client, "dashboard_link", None))
    try:
        yield connection
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


#: Imported by each embedded worker as it starts (a ``preload``), before it joins: the solve's stack
#: (astropy, SEP, scipy, astroalign) is loaded while the cluster starts (and the command's own process
#: reads and detects), not when the first task arrives.
WORKER_IMPORTS = "astrodask.solve.pipeline"


#: Environment of the embedded LocalCluster's worker processes, over distributed's
#: ``distributed.nanny.pre-spawn-environ`` (None unsets a variable): glibc's trim threshold left
#: unset, as in ``cluster/astrodask.yaml`` (which says why: 9-11 % of every solve).
WORKER_ENVIRON: dict[str, str | None] = {"MALLOC_TRIM_THRESHOLD_": None}


def _start_local_cluster(*, n_workers: int, threads_per_worker: int, memory_limit: str | None,
                         processes: bool = True) -> tuple[Any, Any]:
    """The embedded LocalCluster (worker processes on loopback, or one worker of threads in this process) and
    its client."""
    from distributed import Client, LocalCluster

    if not processes:
        cluster = LocalCluster(n_workers=1, threads_per_worker=n_workers * threads_per_worker, processes=False,
                               protocol="tcp://", host="127.0.0.1", dashboard_address="127.0.0.1:0",
                               memory_limit=memory_limit)  # loopback TCP: inproc's address looks up a public IP
        return cluster, Client(cluster)
    import dask.config

    with dask.config.set({f"distributed.nanny.pre-spawn-environ.{key}": value
                          for key, value in WORKER_ENVIRON.items()}):
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, processes=True,
                               host="127.0.0.1", dashboard_address="127.0.0.1:0", memory_limit=memory_limit,
                               preload=[WORKER_IMPORTS])
    return cluster, Client(cluster)


def detect_ahead(paths: Sequence[str | Path], *, config: PipelineConfig) -> dict[str, Detected]:
    """Read and detect exposures in this process (:func:`astrodask.run.graph.task_detect`), e.g. while the
    embedded cluster starts; keyed by resolved path, for :func:`submit_backlog`'s ``detected``.

    The extraction's strips are shared with forked copies of this process, one per idle core
    (:class:`astrodask.run.forked.ForkedMap`, ``detect.extract_processes``): SEP holds the GIL, and
    the cluster's workers have no exposure yet.

    An exposure whose detection fails unexpectedly is left out (logged): the cluster then
    detects it, with its retries and report. An expected failure is kept: it is the exposure's result.
    """
    from astrodask.run.forked import ForkedMap
    from astrodask.run.graph import task_detect

    done: dict[str, Detected] = {}
    work_map = ForkedMap(config.detect.extract_processes)
    for path in paths:
        resolved = str(Path(path).resolve())
        try:
            done[resolved] = task_detect(resolved, config, work_map)
        except Exception as err:  # noqa: BLE001 - the cluster tries again and reports it
            log.warning("%s: detection ahead of the cluster failed (%s: %s); the cluster detects it",
                        resolved, type(err).__name__, err)
    return done


class HeadStart:
    """The first exposures read and detected while the embedded cluster starts (:func:`connect`'s
    ``before_starting`` and ``while_starting``); their tables are then in :attr:`detected`.

    With a second core (``detect.extract_processes`` allowing forks), a forked copy of this process
    reads and detects (:class:`astrodask.run.forked.Forked`, forked before the cluster's thread
    exists) while this process starts the cluster and imports the solve's stack: two processes, not
    two threads taking turns at the GIL. A child that fails leaves the exposures to the cluster.
    Otherwise this thread reads and detects them while the cluster starts in another.

    Parameters
    ----------
    paths
        The exposures to read and detect ahead.
    config
        The pipeline config.
    echo
        Says what happens, e.g. ``click.echo``.
    import_stack
        Import the solve's stack in this process while the copy detects: for a cluster whose
        workers are threads of this process (worker processes import it themselves).
    """

    def __init__(self, paths: Sequence[str | Path], *, config: PipelineConfig,
                 echo: Callable[[str], Any] = log.info, import_stack: bool = True) -> None:
        self.paths, self.config, self.echo, self.import_stack = list(paths), config, echo, import_stack
        self.detected: dict[str, Detected] = {}
        self._forked: Any = None

    def _detect(self) -> dict[str, Detected]:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):  # as Dask's workers run it
            return detect_ahead(self.paths, config=self.config)

    def fork(self) -> None:
        """Fork the copy that reads and detects, if a second core and forks are allowed (call with no other thread)."""
        from astrodask.run.forked import Forked, ForkedMap

        if not self.paths or ForkedMap(self.config.detect.extract_processes).processes < 2:
            return
        self.echo(f"starting the embedded LocalCluster; meanwhile a forked process reads and detects "
                  f"{', '.join(map(str, self.paths))}")
        sys.stdout.flush()
        sys.stderr.flush()
        self._forked = Forked(self._detect)

    def run(self) -> None:
        """Collect the forked copy's tables, or read and detect here (while the cluster starts in another thread)."""
        if not self.paths:
            return
        if self._forked is None:
            self.echo(f"starting the embedded LocalCluster; meanwhile reading and detecting "
                      f"{', '.join(map(str, self.paths))}")
            self.detected.update(self._detect())
            return
        if self.import_stack:
            import astrodask.solve.pipeline  # noqa: F401 - this process's own tasks need the solve's stack: now
        self.detected.update(self._forked.result(default={}))  # a failed child: the cluster detects them


def submit_backlog(connection: Connection, paths: Sequence[str | Path], *, out_dir: str | Path,
                   config: PipelineConfig, catalog_path: str | Path | None = None,
                   pointing: dict[str, Any] | None = None, debug: bool = False, write_header: bool = False,
                   retries: int = DEFAULT_RETRIES, cache_url: str | None = None,
                   detach: bool = False, on_row: Callable[[int, int, dict[str, Any]], None] | None = None,
                   plots_dir: str | Path | None = None,
                   detected: Mapping[str, Detected] | None = None) -> list[dict[str, Any]]:
    """Submit a backlog's graph and (unless ``detach``) wait for every exposure.

    Returns the summary rows in completion order (``plots_dir``: each exposure's diagnostic plots
    go there too). ``detected`` holds exposures already read and detected (:func:`detect_ahead`,
    by resolved path): their tables are scattered to the cluster in place of their ``detect`` task.
    An exposure whose tasks raise beyond their retries (or kill workers beyond the scheduler's allowed
    failures) is reported as failed with the error, and its status record is
    written by the client; the others go on.

    Raises
    ------
    ClusterLostError
        When the scheduler went away before every exposure finished (after the rows of those that
        did were passed to ``on_row``); the unfinished ones have no status record (pending).
    """
    from concurrent.futures import CancelledError

    from distributed import as_completed, fire_and_forget

    from astrodask.errors import ClusterLostError, OutputError
    from astrodask.io.output import summary_row
    from astrodask.run.backlog import write_status

    scattered = {path: connection.client.scatter(value, hash=False) for path, value in (detected or {}).items()}
    tasks = backlog_graph(paths, out_dir=out_dir, config=config, catalog_path=catalog_path, pointing=pointing,
                          debug=debug, write_header=write_header, cache_url=cache_url, plots_dir=plots_dir,
                          detected=scattered)
    futures = connection.client.compute(tasks, retries=retries, optimize_graph=False)
    by_key = {f.key: str(Path(p).resolve()) for f, p in zip(futures, paths)}
    if detach:
        fire_and_forget(futures)
        return []
    rows: list[dict[str, Any]] = []
    lost: list[str] = []
    started = time.perf_counter()
    for done, future in enumerate(as_completed(futures), start=1):
        try:
            row = future.result()
        except CancelledError:
            # the scheduler went away (its futures are cancelled): not the exposure's fault, so
            # no status record; it stays pending and a resubmit solves it
            lost.append(by_key[future.key])
            continue
        except Exception as err:  # noqa: BLE001 - a task that failed beyond its retries: report, go on
            if future.status != "error":
                # it finished (its worker wrote its record), but its result could not be fetched: the
                # connection to the scheduler broke; not a failure of the exposure
                lost.append(by_key[future.key])
                continue
            path = by_key[future.key]
            reason = f"{type(err).__name__}: {err}"
            row = summary_row(failed_result(path, "cluster", reason, config=config, kind=FailureKind.of(err)))
            try:
                write_status(row, out_dir)
            except OutputError as write_err:
                log.error("%s: %s", path, write_err)
        rows.append(row)
        if on_row is not None:
            on_row(done, len(futures), row)
    log.info("backlog of %d exposures in %.1f s", len(futures), time.perf_counter() - started)
    if lost:
        close_lost_client(connection.client)
        raise ClusterLostError(f"lost the scheduler {connection.address} after {len(rows)} of {len(futures)} "
                               f"exposures were reported: the other {len(lost)} (e.g. {lost[0]}) may not have "
                               "finished. What finished is kept whole; once a scheduler runs again, submit the "
                               "same backlog to solve the rest (solved exposures are skipped)")
    return rows


#: distributed's loggers that report a lost scheduler's reconnection attempts, and their cancellation
#: by ``Client.close``, with tracebacks.
RECONNECT_LOGGERS = ("distributed.client", "distributed.utils", "distributed.comm.core")


def close_lost_client(client: Any) -> None:
    """Close a client whose scheduler went away, without distributed's reconnection tracebacks.

    The client would keep trying to reconnect, and its close cancels that attempt, which
    distributed logs as an error with a traceback: noise after astrodask has said what happened
    (:class:`~astrodask.errors.ClusterLostError`). Those loggers are silenced during the close only.
    """
    previous = {name: logging.getLogger(name).level for name in RECONNECT_LOGGERS}
    try:
        for name in RECONNECT_LOGGERS:
            logging.getLogger(name).setLevel(logging.CRITICAL)
        client.close()
    finally:
        for name, level in previous.items():
            logging.getLogger(name).setLevel(level)


def prefetch_tiles(connection: Connection, pixels: Sequence[int], *, cache_url: str, config: PipelineConfig,
                   retries: int = DEFAULT_RETRIES,
                   on_tile: Callable[[int, int, TileFill], None] | None = None) -> list[TileFill]:
    """Fill the tiles a backlog needs, as ``gaia-tile`` tasks spread over the workers, and wait.

    Tiles already complete (and deep enough) are left as they are; each task checks
    its own tile, so the client never reads the store. Returns one record per tile
    (:func:`astrodask.run.graph.task_fill_tile`) in completion order; a task that raised
    beyond its retries is a failed record: the other tiles go on.
    """
    from distributed import as_completed

    from astrodask.run.graph import tile_tasks

    futures = tile_tasks(connection.client, cache_url, sorted({int(p) for p in pixels}), config=config,
                         retries=retries)
    pixel_of = {f.key: int(p) for f, p in zip(futures, sorted({int(p) for p in pixels}))}
    records: list[TileFill] = []
    started = time.perf_counter()
    for done, future in enumerate(as_completed(futures), start=1):
        try:
            record = future.result()
        except Exception as err:  # noqa: BLE001 - report the tile, go on with the others
            record = TileFill(pixel_of[future.key], TileState.FAILED, reason=f"{type(err).__name__}: {err}")
        records.append(record)
        if on_tile is not None:
            on_tile(done, len(futures), record)
    log.info("prefetch of %d tiles in %.1f s", len(futures), time.perf_counter() - started)
    return records
