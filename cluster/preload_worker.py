"""Worker preload of an astrodask cluster: ``dask worker --preload cluster/preload_worker.py``.

distributed imports this file in each worker process and calls :func:`dask_setup` as the worker
starts, before it registers with the scheduler, so the worker is ready for astrodask tasks from
its first one.  The code lives in :mod:`astrodask.run.plugins`.
"""

from __future__ import annotations

from distributed import Worker

from astrodask.run.plugins import PLUGIN_NAME, AstrodaskWorkerPlugin


async def dask_setup(worker: Worker) -> None:
    """Register :class:`~astrodask.run.plugins.AstrodaskWorkerPlugin` on ``worker``."""
    await worker.plugin_add(plugin=AstrodaskWorkerPlugin(), name=PLUGIN_NAME)
