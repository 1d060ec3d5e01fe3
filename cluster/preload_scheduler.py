"""Scheduler preload of an astrodask cluster: ``dask scheduler --preload cluster/preload_scheduler.py``.

distributed imports this file in the scheduler process and calls :func:`dask_setup` as the
scheduler starts.  It logs the astrodask version, so a scheduler log says which astrodask the
cluster was started for (each worker logs its own as its plugin starts), and installs the live
view of a backlog (:func:`astrodask.run.monitor.install_monitor`): the scheduler plugin fed by the
tasks' events, the dashboard page ``/astrodask``, the JSON endpoint ``/astrodask/status.json`` and
the astrodask metrics on ``/metrics``.
"""

from __future__ import annotations

import logging

from distributed import Scheduler

from astrodask import __version__
from astrodask.run.monitor import install_monitor

log = logging.getLogger("astrodask.cluster")


def dask_setup(scheduler: Scheduler) -> None:
    """Log the astrodask version on the scheduler and install the backlog's live view."""
    log.info("astrodask %s scheduler at %s", __version__, scheduler.address)
    install_monitor(scheduler)
