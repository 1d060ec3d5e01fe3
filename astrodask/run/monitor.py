"""Watching a backlog live on the scheduler: task events, each exposure's state, Prometheus metrics, JSON.

The solve tasks send events (:func:`report_exposure`, :func:`report_references`, :func:`report_tile`,
through :meth:`distributed.Worker.log_event` under the topic :data:`TOPIC`); the scheduler plugin
:class:`BacklogMonitor` keeps, per exposure, its status, seconds per stage and quality figures
(matches, residual rms, chi2/dof), and per tile of the Gaia cache its last fill. A retried or
resubmitted task sends its event again: every record is keyed (by exposure, by exposure and stage,
by tile), so a second event replaces the first and nothing is counted twice. The plugin also follows
the graph itself: ``write-<name>`` keys entering the scheduler make exposures pending, a running
``detect-<name>`` makes one running, and a task of an exposure that errs beyond its retries (or kills
workers beyond the allowed failures) makes it failed with the error as its reason.

It is the live view only: the result of record stays the files the tasks write (``summary.ecsv``,
the status records). What it feeds:

- the dashboard page ``/astrodask`` (:mod:`astrodask.run.dashboard`), in the dashboard's menu;
- the JSON endpoint :data:`JSON_ROUTE` (:class:`StatusHandler`) with the same figures;
- Prometheus metrics on the scheduler's ``/metrics`` (:class:`MetricsCollector`, registered in
  ``prometheus_client``'s default registry, which distributed's ``/metrics`` serves).

:func:`install_monitor` sets all of it up on a scheduler, once; it is called alike by the scheduler
preload (``cluster/preload_scheduler.py``), by ``dask scheduler`` with ``DASK_CONFIG=cluster``
(``distributed.scheduler.preload`` names this module: :func:`dask_setup`), and from clients
(:func:`install_from_client`, run by :func:`astrodask.run.plugins.setup_client`), which covers the
embedded LocalCluster of ``astrodask solve``/``submit``/``demo``.
"""

from __future__ import annotations

import json
import logging
import math
import time
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from distributed.diagnostics.plugin import SchedulerPlugin
from tornado import web

from astrodask.types import FAILED, SOLVED, Stage, TileFill, TileState

if TYPE_CHECKING:
    from distributed import Client, Scheduler

log = logging.getLogger(__name__)

#: Event topic of the solve tasks' reports.
TOPIC = "astrodask"
#: Name of :class:`BacklogMonitor` in ``Scheduler.plugins``.
PLUGIN_NAME = "astrodask-monitor"
#: Route of the JSON endpoint on the scheduler's HTTP server (the dashboard's port).
JSON_ROUTE = "/astrodask/status.json"
#: Seconds over which the solve rate is measured (exposures finished in the last ten minutes).
RATE_WINDOW_S = 600.0
#: Bucket upper bounds of the per-stage solve-time histogram, seconds.
STAGE_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0, 300.0)
#: Quantiles of the residual-rms and chi2/dof summaries.
QUANTILES = (0.5, 0.9, 0.99)
#: Failures listed (most recent first) by the JSON endpoint and the page.
MAX_FAILURES_LISTED = 200
#: Milliarcseconds per arcsecond.
MAS_PER_ARCSEC = 1000.0


class ExposureStatus(StrEnum):
    """Where an exposure stands in the live view."""

    PENDING = "pending"
    RUNNING = "running"
    SOLVED = SOLVED
    FAILED = FAILED


class EventKind(StrEnum):
    """The kinds of events the tasks send under :data:`TOPIC`."""

    EXPOSURE = "exposure"
    REFERENCES = "references"
    TILE = "tile"


class ReferenceSource(StrEnum):
    """Where a ``references-<name>`` task took its Gaia stars from."""

    CATALOG = "catalog"
    CACHE = "cache"
    ARCHIVE = "archive"


#: Statuses after which an exposure's work is over.
FINAL = (ExposureStatus.SOLVED, ExposureStatus.FAILED)


@dataclass
class ExposureRecord:
    """One exposure in the live view.

    Attributes
    ----------
    name
        The exposure's name (its task keys' suffix).
    status
        Pending, running, solved or failed.
    file, stage, reason
        From the ``write`` task's report (or the error of a task that failed beyond its retries).
    matches
        Pairs kept in the final fit.
    rms_xi_mas, rms_eta_mas
        Residual rms along xi and eta, milliarcseconds.
    chi2_dof
        Chi-square per degree of freedom (NaN when not solved).
    seconds
        Seconds per :class:`~astrodask.types.Stage` that ran.
    finished
        Scheduler time (``time.time()``) the exposure's status became final, or None.
    """

    name: str
    status: ExposureStatus = ExposureStatus.PENDING
    file: str = ""
    stage: str = ""
    reason: str = ""
    matches: int = 0
    rms_xi_mas: float = math.nan
    rms_eta_mas: float = math.nan
    chi2_dof: float = math.nan
    seconds: dict[str, float] = field(default_factory=dict)
    finished: float | None = None

    @property
    def rms_mas(self) -> float:
        """Residual rms per axis, both axes together: sqrt((rms_xi^2 + rms_eta^2) / 2), milliarcseconds."""
        return math.sqrt((self.rms_xi_mas**2 + self.rms_eta_mas**2) / 2.0)


# ---------------------------------------------------------------- the tasks' side (runs on workers)


def send_event(kind: EventKind, payload: Mapping[str, Any]) -> None:
    """Send one report to the scheduler's monitor; nothing when not running in a Dask task.

    Parameters
    ----------
    kind
        What the report is about.
    payload
        Plain (msgpack-serialisable) values.
    """
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:  # a serial solve: no cluster to tell
        return
    # the event's kind last: a payload key of that name (a summary row's) must not replace it
    worker.log_event(TOPIC, {**{k: _plain(v) for k, v in payload.items()}, "kind": str(kind)})


def report_exposure(row: Mapping[str, Any]) -> None:
    """Report an exposure's final status, stage seconds and quality figures (its summary row)."""
    send_event(EventKind.EXPOSURE, row)


def report_references(name: str, *, source: ReferenceSource, tiles: int = 0) -> None:
    """Report where an exposure's Gaia stars came from and how many cache tiles it read."""
    send_event(EventKind.REFERENCES, {"name": name, "source": str(source), "tiles": int(tiles)})


def report_references_of(info: Any, *, catalog: Any, cache_url: str | None, config: Any,
                         pointing: Mapping[str, Any] | None = None) -> None:
    """Report a ``references`` task: from the catalog file, the tile cache (with the tiles it read), or the archive.

    Parameters
    ----------
    info
        The exposure's :class:`~astrodask.types.ExposureInfo`.
    catalog, cache_url, config, pointing
        The task's arguments (see :func:`astrodask.run.graph.task_references`).
    """
    from astrodask.types import exposure_name

    name = exposure_name(info.path)
    if catalog is not None:
        report_references(name, source=ReferenceSource.CATALOG)
    elif cache_url is not None:
        from astrodask.solve.pipeline import footprint_tiles

        tiles = len(footprint_tiles(info, config=config, pointing=dict(pointing or {})))
        report_references(name, source=ReferenceSource.CACHE, tiles=tiles)
    else:
        report_references(name, source=ReferenceSource.ARCHIVE)


def report_tile(record: TileFill) -> None:
    """Report a ``gaia-tile`` task's outcome (present, filled from the archive, or failed)."""
    send_event(EventKind.TILE, {"tile": record.label, "state": str(record.state), "rows": record.rows,
                                "reason": record.reason})


def _plain(value: Any) -> Any:
    """Python scalars and strings from numpy scalars, enums and others (msgpack-friendly)."""
    if isinstance(value, StrEnum):
        return str(value)
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value


# ---------------------------------------------------------------- the scheduler's side


def exposure_of_key(key: Any) -> tuple[str, str] | None:
    """``(task, exposure name)`` of a task key of an exposure's graph, else None."""
    from astrodask.run.graph import Task

    if not isinstance(key, str):
        return None
    task, _, rest = key.partition("-")
    if task not in Task.__members__.values() or not rest:  # type: ignore[operator]
        return None
    if task == Task.REGION:
        rest = rest.rpartition("-")[0]
    return task, rest


class BacklogMonitor(SchedulerPlugin):
    """The scheduler's live view of a backlog, fed by the tasks' events and the graph's transitions.

    Attributes
    ----------
    exposures
        Records by exposure name.
    references
        By exposure name: ``(source, tiles read)``.
    tiles
        By tile label: its last fill's state.
    started
        Scheduler time of the first exposure seen, or None.
    """

    name = PLUGIN_NAME
    idempotent = True

    def __init__(self) -> None:
        self.exposures: dict[str, ExposureRecord] = {}
        self.references: dict[str, tuple[str, int]] = {}
        self.tiles: dict[str, str] = {}
        self.started: float | None = None
        self.scheduler: Scheduler | None = None

    async def start(self, scheduler: Scheduler) -> None:
        """Remember the scheduler; the monitor joins the ones :class:`MetricsCollector` reads."""
        self.scheduler = scheduler
        _LIVE.add(self)

    async def close(self) -> None:
        """Leave the metrics as the scheduler closes."""
        _LIVE.discard(self)

    def _record(self, name: str) -> ExposureRecord:
        if self.started is None:
            self.started = time.time()
        return self.exposures.setdefault(name, ExposureRecord(name))

    def update_graph(self, scheduler: Scheduler, *, tasks: list[Any] | None = None, keys: Any = None,
                     **kwargs: Any) -> None:
        """Exposures whose ``write-<name>`` task enters the scheduler are pending (unless known)."""
        from astrodask.run.graph import Task

        for key in list(tasks or []) + list(keys or []):
            found = exposure_of_key(key)
            if found and found[0] == Task.WRITE and found[1] not in self.exposures:
                self._record(found[1])

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        """A running ``detect`` task: the exposure runs; an erred task: the exposure failed with the error."""
        from astrodask.run.graph import Task

        found = exposure_of_key(key)
        if not found:
            return
        task, name = found
        if finish == "processing" and task == Task.DETECT:
            record = self._record(name)  # a resubmitted exposure runs again: its new report replaces the old
            record.status, record.finished = ExposureStatus.RUNNING, None
        elif finish == "processing" and task == Task.SOURCES and self._record(name).status == ExposureStatus.PENDING:
            self._record(name).status = ExposureStatus.RUNNING  # detected by the client, ahead of the cluster
        elif finish == "erred":
            record = self._record(name)
            if record.status == ExposureStatus.FAILED and record.reason:
                return
            text = kwargs.get("exception_text") or ""
            if not text and self.scheduler is not None and key in self.scheduler.tasks:
                text = getattr(self.scheduler.tasks[key], "exception_text", "") or ""
            record.status, record.stage, record.finished = ExposureStatus.FAILED, "cluster", time.time()
            record.reason = f"task {key} failed: {text}".strip()

    def log_event(self, topic: str, msg: Any) -> None:
        """A task's report under :data:`TOPIC`: replace what is known of its exposure, stage or tile."""
        if topic != TOPIC or not isinstance(msg, dict):
            return
        kind = msg.get("kind")
        if kind == EventKind.EXPOSURE:
            self._exposure_event(msg)
        elif kind == EventKind.REFERENCES:
            self.references[str(msg["name"])] = (str(msg["source"]), int(msg.get("tiles", 0)))
        elif kind == EventKind.TILE:
            self.tiles[str(msg["tile"])] = str(msg["state"])

    def _exposure_event(self, msg: dict[str, Any]) -> None:
        record = self._record(str(msg["name"]))
        record.status = ExposureStatus.SOLVED if msg.get("status") == SOLVED else ExposureStatus.FAILED
        record.file, record.stage, record.reason = str(msg.get("file", "")), str(msg.get("stage", "")), \
            str(msg.get("reason", ""))
        record.matches = int(msg.get("matches", 0))
        record.rms_xi_mas = float(msg.get("rms_xi_arcsec", math.nan)) * MAS_PER_ARCSEC
        record.rms_eta_mas = float(msg.get("rms_eta_arcsec", math.nan)) * MAS_PER_ARCSEC
        record.chi2_dof = float(msg.get("chi2_dof", math.nan))
        record.seconds = {stage.value: float(msg[f"t_{stage.value}_s"]) for stage in Stage
                          if float(msg.get(f"t_{stage.value}_s", 0.0)) > 0.0}
        record.finished = time.time()

    # ------------------------------------------------------------ the figures

    def counts(self) -> dict[str, int]:
        """Exposures by status (every status present, zeros included) and in total."""
        counts = {status.value: 0 for status in ExposureStatus}
        for record in self.exposures.values():
            counts[record.status.value] += 1
        counts["total"] = len(self.exposures)
        return counts

    def snapshot(self, *, now: float | None = None) -> dict[str, Any]:
        """Every figure of the live view as plain values: what the JSON endpoint serves and the page shows.

        Keys: ``counts`` (by status, total), ``done``, ``rate_per_min`` (exposures finished per
        minute over :data:`RATE_WINDOW_S`), ``eta_s`` (seconds left at that rate, None when
        unknown), ``stages`` (per stage: count, mean and total seconds), ``quality`` (per solved
        exposure: name, matches, rms_mas, chi2_dof), ``failures`` (name, file, stage, reason),
        ``exposures`` (every record), ``archive_queries``, ``tiles`` (read, filled, present, failed).
        """
        now = time.time() if now is None else now
        counts = self.counts()
        done = counts[ExposureStatus.SOLVED] + counts[ExposureStatus.FAILED]
        recent = [r.finished for r in self.exposures.values() if r.finished is not None
                  and now - r.finished <= RATE_WINDOW_S]
        span = min(RATE_WINDOW_S, now - self.started) if self.started is not None else 0.0
        rate = 60.0 * len(recent) / span if span > 0 and recent else 0.0
        left = counts["total"] - done
        eta = 60.0 * left / rate if rate > 0 else (0.0 if counts["total"] and not left else None)
        stages: dict[str, dict[str, float]] = {}
        for stage in Stage:
            values = [r.seconds[stage] for r in self.exposures.values() if stage in r.seconds]
            stages[stage.value] = {"count": len(values), "total_s": sum(values),
                                   "mean_s": sum(values) / len(values) if values else 0.0}
        solved = [r for r in self.exposures.values() if r.status == ExposureStatus.SOLVED]
        failed = sorted((r for r in self.exposures.values() if r.status == ExposureStatus.FAILED),
                        key=lambda r: -(r.finished or 0.0))[:MAX_FAILURES_LISTED]
        return {
            "counts": counts, "done": done, "rate_per_min": rate, "eta_s": eta,
            "stages": stages,
            "quality": [{"name": r.name, "matches": r.matches, "rms_mas": _finite(r.rms_mas),
                         "rms_xi_mas": _finite(r.rms_xi_mas), "rms_eta_mas": _finite(r.rms_eta_mas),
                         "chi2_dof": _finite(r.chi2_dof)} for r in sorted(solved, key=lambda r: r.name)],
            "failures": [{"name": r.name, "file": r.file, "stage": r.stage, "reason": r.reason} for r in failed],
            "exposures": {name: {**asdict(r), "status": r.status.value, "rms_xi_mas": _finite(r.rms_xi_mas),
                                 "rms_eta_mas": _finite(r.rms_eta_mas), "chi2_dof": _finite(r.chi2_dof)}
                          for name, r in sorted(self.exposures.items())},
            "archive_queries": self.archive_queries(),
            "tiles": self.tile_counts(),
        }

    def archive_queries(self) -> int:
        """Gaia archive queries: a tile filled or failed (one query each), an exposure read from the archive."""
        fills = sum(state in (TileState.FILLED, TileState.FAILED) for state in self.tiles.values())
        return fills + sum(source == ReferenceSource.ARCHIVE for source, _ in self.references.values())

    def tile_counts(self) -> dict[str, int]:
        """Cache tiles read by the solves, and tile fills by outcome."""
        counts = {"read": sum(tiles for source, tiles in self.references.values() if source == ReferenceSource.CACHE)}
        for state in TileState:
            counts[state.value] = sum(s == state for s in self.tiles.values())
        return counts


def _finite(value: float) -> float | None:
    """JSON has no NaN: None instead."""
    return value if math.isfinite(value) else None


#: The monitors of the schedulers running in this process (the metrics read them all).
_LIVE: weakref.WeakSet[BacklogMonitor] = weakref.WeakSet()


# ---------------------------------------------------------------- Prometheus


class MetricsCollector:
    """``prometheus_client`` collector of the live monitors' figures, served by distributed's ``/metrics``.

    Metrics (prefix ``astrodask_``): ``exposures{status}`` (gauge), ``stage_seconds{stage}`` (histogram
    of each exposure's seconds per stage, buckets :data:`STAGE_BUCKETS_S`), ``residual_rms_mas`` and
    ``chi2_dof`` (summaries over the solved exposures, with :data:`QUANTILES`),
    ``archive_queries_total``, ``cache_tiles_read_total``, ``cache_tiles_filled_total``,
    ``cache_tiles_failed_total`` (counters; deduplicated, so a retried task counts once).
    """

    def collect(self) -> Iterator[Any]:
        """The metric families, built from the records at scrape time."""
        import numpy as np
        from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                            SummaryMetricFamily)

        monitors = list(_LIVE)
        records = [r for m in monitors for r in m.exposures.values()]
        exposures = GaugeMetricFamily("astrodask_exposures", "Exposures of the backlog by status", labels=["status"])
        for status in ExposureStatus:
            exposures.add_metric([status.value], sum(r.status == status for r in records))
        yield exposures
        stages = HistogramMetricFamily("astrodask_stage_seconds", "Seconds per solve stage and exposure",
                                       labels=["stage"])
        for stage in Stage:
            values = np.array([r.seconds[stage] for r in records if stage in r.seconds])
            buckets = [(f"{b:g}", int(np.sum(values <= b))) for b in STAGE_BUCKETS_S] + [("+Inf", len(values))]
            stages.add_metric([stage.value], buckets, float(values.sum()))
        yield stages
        solved = [r for r in records if r.status == ExposureStatus.SOLVED]
        for name, doc, values in (
                ("astrodask_residual_rms_mas", "Residual rms per axis of the solved exposures, milliarcseconds",
                 [r.rms_mas for r in solved]),
                ("astrodask_chi2_dof", "Chi-square per degree of freedom of the solved exposures",
                 [r.chi2_dof for r in solved])):
            finite = np.array([v for v in values if math.isfinite(v)])
            summary = SummaryMetricFamily(name, doc, count_value=len(finite), sum_value=float(finite.sum()))
            for q in QUANTILES:
                summary.add_sample(name, {"quantile": f"{q:g}"},
                                   float(np.quantile(finite, q)) if len(finite) else math.nan)
            yield summary
        tiles = {"read": 0, **{s.value: 0 for s in TileState}}
        queries = 0
        for monitor in monitors:
            for key, value in monitor.tile_counts().items():
                tiles[key] += value
            queries += monitor.archive_queries()
        yield CounterMetricFamily("astrodask_archive_queries", "Gaia archive queries", value=queries)
        for key, doc in (("read", "Gaia cache tiles read by the solves"),
                         (TileState.FILLED.value, "Gaia cache tiles filled from the archive"),
                         (TileState.FAILED.value, "Gaia cache tile fills that failed")):
            yield CounterMetricFamily(f"astrodask_cache_tiles_{key}", doc, value=tiles[key])


_COLLECTOR: MetricsCollector | None = None


def register_metrics() -> None:
    """Register :class:`MetricsCollector` in ``prometheus_client``'s default registry, once per process."""
    global _COLLECTOR
    try:
        from prometheus_client import REGISTRY
    except ImportError:  # distributed serves no /metrics without it either
        log.warning("prometheus_client is not installed: no astrodask metrics on /metrics")
        return
    if _COLLECTOR is None:
        _COLLECTOR = MetricsCollector()
        REGISTRY.register(_COLLECTOR)


# ---------------------------------------------------------------- JSON endpoint


class StatusHandler(web.RequestHandler):
    """``GET`` :data:`JSON_ROUTE`: :meth:`BacklogMonitor.snapshot` as JSON."""

    def initialize(self, monitor: BacklogMonitor) -> None:  # tornado's hook for handler arguments
        self.monitor = monitor

    def get(self) -> None:
        """Serve the snapshot."""
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps(self.monitor.snapshot()))


# ---------------------------------------------------------------- installing


def install_monitor(scheduler: Scheduler) -> BacklogMonitor:
    """Set up the live view on a scheduler (in its event loop), once: plugin, metrics, JSON, page.

    A second call finds the plugin and returns it.

    Parameters
    ----------
    scheduler
        The scheduler (a preload's ``dask_setup`` argument, or ``dask_scheduler`` of
        :meth:`distributed.Client.run_on_scheduler`).

    Returns
    -------
    BacklogMonitor
        The scheduler's monitor.
    """
    present = scheduler.plugins.get(PLUGIN_NAME)
    if isinstance(present, BacklogMonitor):
        return present
    monitor = BacklogMonitor()
    scheduler.add_plugin(monitor, name=PLUGIN_NAME)
    monitor.scheduler = scheduler
    _LIVE.add(monitor)  # add_plugin does not start a plugin on a running scheduler
    register_metrics()
    application = getattr(scheduler, "http_application", None)
    if application is not None:
        application.add_handlers(r".*$", [(JSON_ROUTE, StatusHandler, {"monitor": monitor})])
    from astrodask.run.dashboard import add_page

    add_page(scheduler)
    log.info("astrodask monitor on scheduler %s: dashboard page, %s, /metrics", scheduler.address, JSON_ROUTE)
    return monitor


def dask_setup(scheduler: Scheduler) -> None:
    """Preload entry point (``distributed.scheduler.preload: [astrodask.run.monitor]``)."""
    install_monitor(scheduler)


def _install_remote(dask_scheduler: Scheduler) -> str:
    install_monitor(dask_scheduler)
    return PLUGIN_NAME


def install_from_client(client: Client) -> None:
    """Install the live view on the client's scheduler (idempotent; what ``connect`` does for every cluster).

    A scheduler that cannot import astrodask keeps running without it (logged).
    """
    try:
        client.run_on_scheduler(_install_remote)
    except ImportError as err:
        log.warning("no astrodask monitor on scheduler %s (astrodask not importable there: %s)",
                    client.scheduler.address, err)


def fetch_snapshot(client: Client) -> dict[str, Any]:
    """The scheduler monitor's :meth:`~BacklogMonitor.snapshot`, from a client."""
    return client.run_on_scheduler(_remote_snapshot)


def _remote_snapshot(dask_scheduler: Scheduler) -> dict[str, Any]:
    return install_monitor(dask_scheduler).snapshot()
