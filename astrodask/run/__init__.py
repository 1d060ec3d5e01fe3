"""Running on Dask: the only place Dask appears.

- :mod:`~astrodask.run.graph`: the task graph of one exposure and of a backlog, and the tile-fill tasks;
- :mod:`~astrodask.run.client`: connecting to a scheduler or starting a LocalCluster, submitting a backlog;
- :mod:`~astrodask.run.backlog`: expanding a backlog's files and globs, its status record;
- :mod:`~astrodask.run.plugins`: the worker plugin and client setup loaded by the cluster preloads.
"""
