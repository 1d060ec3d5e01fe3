"""What every Dask worker of an astrodask cluster sets up, and how clients see the workers' logs.

:class:`AstrodaskWorkerPlugin` is registered on each worker, either by the worker preload
(``cluster/preload_worker.py``, which ``dask worker --preload`` runs as the worker starts) or
from a client (:func:`setup_client`).  On setup it makes the ``astrodask`` logger handle INFO
records and records the astrodask version of the worker (and warns when it differs from the
client's).

Log records travel to clients through distributed's documented mechanism,
:meth:`distributed.Client.forward_logging`: the client subscribes to a topic and registers a
``ForwardLoggingPlugin`` on every worker, present and future, whose handler on the ``astrodask``
logger sends each record (with a ``worker`` attribute naming its worker) as an event, and the
client hands it to its own ``astrodask`` logger.  A worker cannot know which clients are
listening, so forwarding is the client's call (:func:`forward_worker_logs`); the worker's part
is a logger level that lets INFO records be handled at all.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from distributed import WorkerPlugin

from astrodask import __version__

if TYPE_CHECKING:
    from distributed import Client, Worker

log = logging.getLogger(__name__)

#: The logger configured on the workers and forwarded to clients (with its children).
ASTRODASK_LOGGER = "astrodask"
#: Level at which astrodask records are handled on workers and forwarded.
WORKER_LOG_LEVEL = logging.INFO
#: Name of :class:`AstrodaskWorkerPlugin` in ``Worker.plugins``.
PLUGIN_NAME = "astrodask"
#: The logger of distributed's worker, and its record of a failed heartbeat.
WORKER_LOGGER = "distributed.worker"
HEARTBEAT_FAILED = "Failed to communicate with scheduler during heartbeat."


class CancelledHeartbeatFilter(logging.Filter):
    """Drops distributed's "failed heartbeat" error when the heartbeat was cancelled, not failed.

    A worker that closes (the end of a backlog on the embedded cluster) cancels its own heartbeat
    in flight, and distributed logs that with a traceback as if the scheduler were out of reach:
    noise at the end of every run it lands in. A heartbeat that fails for a real reason (a
    connection refused or timed out) has no ``CancelledError`` in its exception's chain and is
    kept.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage() != HEARTBEAT_FAILED or not record.exc_info:
            return True
        err: BaseException | None = record.exc_info[1]
        seen = 0
        while err is not None and seen < 16:
            if isinstance(err, asyncio.CancelledError):
                return False
            err, seen = err.__cause__ or err.__context__, seen + 1
        return True


class AstrodaskWorkerPlugin(WorkerPlugin):
    """Sets up a Dask worker for astrodask tasks.

    On setup: the ``astrodask`` logger handles records from :data:`WORKER_LOG_LEVEL` up (a more
    verbose level set by the worker's logging config is kept), distributed's worker logger leaves
    out the heartbeats a closing worker cancels (:class:`CancelledHeartbeatFilter`), and the worker's astrodask version
    is recorded in :attr:`worker_version` and logged, with a warning when it differs from the
    version of the process that made the plugin.

    Parameters
    ----------
    level
        Level of the ``astrodask`` logger on the worker.

    Attributes
    ----------
    origin_version
        astrodask version of the process that made the plugin (a client, or the worker's preload).
    worker_version
        astrodask version installed on the worker (None before setup).
    """

    #: The scheduler ignores a second registration from clients (the preload's registration is
    #: local to its worker: a client's replaces it there, with the same effect).
    idempotent = True
    name = PLUGIN_NAME

    def __init__(self, *, level: int = WORKER_LOG_LEVEL) -> None:
        self.level = level
        self.origin_version = __version__
        self.worker_version: str | None = None

    def setup(self, worker: Worker) -> None:
        """Configure the astrodask logger and record the version (runs in the worker process)."""
        from astrodask import __version__ as installed

        logger = logging.getLogger(ASTRODASK_LOGGER)
        if logger.getEffectiveLevel() > self.level:
            logger.setLevel(self.level)
        worker_logger = logging.getLogger(WORKER_LOGGER)
        if not any(isinstance(f, CancelledHeartbeatFilter) for f in worker_logger.filters):
            worker_logger.addFilter(CancelledHeartbeatFilter())
        self.worker_version = installed
        log.info("astrodask %s ready on worker %s (%s)", installed, worker.name, worker.address)
        if installed != self.origin_version:
            log.warning("worker %s runs astrodask %s but the client runs %s: install the same version "
                        "everywhere", worker.address, installed, self.origin_version)


def setup_client(client: Client, *, level: int = WORKER_LOG_LEVEL, forward_logs: bool = True) -> None:
    """Prepare a client's cluster for astrodask: the worker plugin on every worker, logs forwarded,
    the scheduler's live view installed (:func:`astrodask.run.monitor.install_from_client`).

    Workers started by ``cluster/launch.py`` already carry the plugin (their preload registers
    it); registering it from the client covers workers started any other way (Kubernetes,
    ``LocalCluster``) and workers that join later.

    Parameters
    ----------
    client
        A connected client.
    level
        Lowest level of the astrodask records handled on the workers and forwarded.
    forward_logs
        Forward the workers' records (:func:`forward_worker_logs`). False for workers in the client's own
        process (``LocalCluster(processes=False)``): their records already reach the client's handlers, and
        forwarding would hand each one back to the logger it came from, again and again.
    """
    from astrodask.run.monitor import install_from_client

    client.register_plugin(AstrodaskWorkerPlugin(level=level), name=PLUGIN_NAME)
    if forward_logs:
        forward_worker_logs(client, level=level)
    install_from_client(client)  # the scheduler's live view: dashboard page, JSON, /metrics


def forward_worker_logs(client: Client, *, level: int = WORKER_LOG_LEVEL) -> None:
    """Forward the workers' ``astrodask`` log records to this client's ``astrodask`` logger.

    Uses :meth:`distributed.Client.forward_logging` (idempotent: calling it twice does not
    duplicate records).  A forwarded record is emitted by the client's handlers if the client's
    ``astrodask`` logger lets it through; it carries a ``worker`` attribute (the worker's address)
    for formatters.

    Parameters
    ----------
    client
        A connected client.
    level
        Lowest level forwarded.
    """
    client.forward_logging(ASTRODASK_LOGGER, level=level)
