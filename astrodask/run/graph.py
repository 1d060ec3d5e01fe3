"""The solve as a Dask graph: per exposure, read + detect, references, 24 region tasks, a reducer,
the refinement, and a writer.

Per exposure ``<name>`` (file name without the FITS suffixes), with deterministic keys so that
submitting the same exposure twice computes it once:

- ``detect-<name>``: reads the file, subtracts the background and runs both detection passes
  (one SEP extraction, ``detect.first_from_depth``); the image goes no further;
- ``sources-<name>``, ``depth-<name>``: the first pass's and the depth pass's source tables,
  the first for the matching tasks, the second for the solve;
- ``references-<name>``: ``get_gaia_xy`` (from the catalog task, or the archive);
- ``prepare-<name>``: usable sources, references to the same depth, the coarse alignment, the grid;
- ``region-<name>-<k>``, k = 0..23: region k's match (astroalign, proximity);
- ``reduce-<name>``: the mean affine;
- ``solve-<name>``: TPV, depth match, ``like_fit``, the final chi-square and the quality gates;
- ``write-<name>``: the solution file and the exposure's status record, written atomically.

Gaia tiles of the shared cache are filled by ``gaia-tile-<level>-<pixel>-<store>`` tasks
(:func:`task_fill_tile`), submitted by ``astrodask cache prefetch`` before the solves, or on
demand by a ``references-<name>`` task that finds tiles missing: the fixed key makes every
tile one task on the whole cluster, hence one writer, however many exposures need it. Archive
queries hold a lease of a cluster-wide :class:`distributed.Semaphore` (``gaia.max_queries``).

A reference catalog file is read once per backlog by ``catalog-<hash>``. Expected failures
(:class:`~astrodask.errors.AstrodaskError`) travel down the graph as a :class:`Failed` value, so
a bad exposure ends in its own status record with its reason; anything else raises, so that
Dask retries it (transient errors) and the client reports it after the allowed retries.

Building the graph computes nothing: it only makes ``dask.delayed`` objects.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dask import delayed
from dask.delayed import Delayed

from astrodask.config import PipelineConfig
from astrodask.errors import AstrodaskError
from astrodask.run import monitor
if TYPE_CHECKING:
    from astrodask.solve.detect import WorkMap
from astrodask.types import (FAILED, DepthPass, Detections, ExposureResult, FailureDiagnostics, FailureKind, FirstPass,
                             Prepared, Reduced, References,
                             RegionOutcome, Stage, TileFill, TileState, exposure_name)

log = logging.getLogger(__name__)

#: Name (before the lease count) of the cluster-wide semaphore limiting Gaia archive queries.
ARCHIVE_SEMAPHORE = "astrodask-gaia-archive"


class Task(StrEnum):
    """The tasks of one exposure, in order: each is the prefix of its task keys (``<task>-<name>``).

    Tasks group the solve's :class:`~astrodask.types.Stage` values as the graph needs them
    (:attr:`stages`): the image is read and detected where it lies, the regions fan out.
    """

    DETECT = "detect"
    SOURCES = "sources"
    DEPTH = "depth"
    REFERENCES = "references"
    PREPARE = "prepare"
    REGION = "region"
    REDUCE = "reduce"
    SOLVE = "solve"
    WRITE = "write"

    @property
    def stages(self) -> tuple[Stage, ...]:
        """The solve's stages this task runs (their seconds are in the exposure's timings)."""
        return _TASK_STAGES[self]

    def key(self, name: str, *index: int) -> str:
        """The task's key for exposure ``name`` (and region ``index``)."""
        return "-".join([self.value, name, *map(str, index)])


_TASK_STAGES: dict[Task, tuple[Stage, ...]] = {
    Task.DETECT: (Stage.READ, Stage.DETECT, Stage.DETECT_DEPTH),
    Task.SOURCES: (),
    Task.DEPTH: (),
    Task.REFERENCES: (Stage.REFERENCES,),
    Task.PREPARE: (Stage.REGIONS,),
    Task.REGION: (Stage.REGIONS,),
    Task.REDUCE: (Stage.REGIONS,),
    Task.SOLVE: (Stage.TPV, Stage.DEPTH_MATCH, Stage.LIKE_FIT, Stage.TURBULENCE, Stage.CHI_SQUARE),
    Task.WRITE: (),
}
#: The task key prefixes of one exposure, in order.
TASK_STAGES = tuple(task.value for task in Task)


@dataclass(frozen=True)
class Failed:
    """An expected failure travelling down an exposure's graph instead of an exception."""

    file: str
    stage: str
    reason: str
    timings: dict[str, float] = field(default_factory=dict)
    diagnostics: FailureDiagnostics | None = None
    kind: FailureKind = FailureKind.DETERMINISTIC


def _failed_input(*values: Any) -> Failed | None:
    for value in values:
        if isinstance(value, Failed):
            return value
        if isinstance(value, (list, tuple)):
            inner = _failed_input(*value)
            if inner is not None:
                return inner
    return None


# ---------------------------------------------------------------- task functions (run on workers)


def task_catalog(path: str, default_ref_epoch: float) -> Any:
    """Read a reference catalog file once for the whole backlog."""
    from astrodask.reference.catalog import read_catalog

    return read_catalog(path, default_ref_epoch=default_ref_epoch)


@dataclass(frozen=True)
class Detected:
    """What the detect task hands on: the first pass, and the depth pass (the image is not kept)."""

    first: FirstPass | Failed
    deep: DepthPass | Failed | None = None


def task_detect(path: str, config: PipelineConfig, work_map: WorkMap | None = None) -> Detected:
    """Read the exposure, subtract its background and run both detection passes (one extraction
    with ``detect.first_from_depth``); only the source tables leave the task. ``work_map`` (not in
    the graph: for :func:`astrodask.run.client.detect_ahead`) shares the extraction's strips out."""

    from astrodask.io.exposure import read_exposure
    from astrodask.solve.pipeline import StageClock, stage_sources

    clock = StageClock()
    try:
        exposure = read_exposure(path)
        clock.lap(Stage.DETECT)
        sources, deep = stage_sources(exposure, config=config, clock=clock, work_map=work_map)
    except AstrodaskError as err:
        stage = clock.stage
        clock.lap(None)
        return Detected(Failed(path, stage, str(err), clock.timings, kind=FailureKind.of(err)))
    clock.lap(None)
    timings = dict(clock.timings)
    depth_s = timings.pop(Stage.DETECT_DEPTH, 0.0)
    return Detected(FirstPass(exposure.info, sources, timings), DepthPass(deep, depth_s))


def task_sources(detected: Detected) -> FirstPass | Failed:
    """The first pass alone, for the matching tasks."""
    return detected.first


def task_depth(detected: Detected) -> DepthPass | Failed:
    """The depth pass alone, for the solve task."""
    if detected.deep is None:
        assert isinstance(detected.first, Failed)
        return detected.first
    return detected.deep


def task_references(detected: FirstPass | Failed, catalog: Any, config: PipelineConfig, pointing: dict[str, Any],
                    cache_url: str | None = None) -> References | Failed:
    """``get_gaia_xy`` for the exposure.

    With a tile cache, tiles it lacks are filled by ``gaia-tile`` tasks (when
    ``gaia.fetch_missing_tiles``) that this task waits for, out of the worker's thread pool.
    """
    from astrodask.solve.pipeline import stage_references

    failed = _failed_input(detected, catalog)
    if failed:
        return failed
    info = detected.info
    started = time.perf_counter()
    fill = None
    if catalog is None and cache_url is not None and config.gaia.fetch_missing_tiles:
        fill = functools.partial(fill_tiles_on_cluster, cache_url, config=config)
    try:
        references = stage_references(info, catalog=catalog, config=config, pointing=pointing,
                                      cache_url=cache_url, fill=fill)
    except AstrodaskError as err:
        return Failed(str(info.path), Stage.REFERENCES, str(err), kind=FailureKind.of(err))
    monitor.report_references_of(info, catalog=catalog, cache_url=cache_url, config=config, pointing=pointing)
    return References(references.wcs0, references.stars, time.perf_counter() - started)


def task_fill_tile(cache_url: str, pixel: int, config: PipelineConfig) -> TileFill:
    """Fill one Gaia tile from the archive unless the cache already holds it, complete and deep enough.

    Run under the key :func:`astrodask.reference.store.tile_task_key`. An expected failure
    (the archive unreachable...) is a :attr:`TileState.FAILED` record, not an exception, so
    that a prefetch reports it and goes on.
    """
    from astrodask.reference.fill import fill_tile_from_archive, tiles_to_fill
    from astrodask.reference.store import TileCache

    started = time.perf_counter()
    name, reason = "", ""
    try:
        cache = TileCache(cache_url)
        name = f"{cache.level}/{int(pixel)}"
        todo = tiles_to_fill(cache, [pixel], mag_limit=config.gaia.mag_limit)
        if not todo:
            state, rows = TileState.PRESENT, int(cache.attrs(pixel).get("rows", 0))
        else:
            reason = todo[int(pixel)]
            with archive_slot(config.gaia.max_queries):
                state, rows = TileState.FILLED, fill_tile_from_archive(cache, pixel, config=config.gaia)
    except AstrodaskError as err:
        state, rows, reason = TileState.FAILED, 0, str(err)
    record = TileFill(int(pixel), state, rows, reason, time.perf_counter() - started, name)
    monitor.report_tile(record)
    return record


def archive_slot(max_queries: int) -> Any:
    """A context holding one of ``max_queries`` cluster-wide leases for a Gaia archive query.

    A :class:`distributed.Semaphore` named after the limit when running on a worker
    (every worker of the cluster shares it); nothing outside a cluster.
    """
    from contextlib import nullcontext

    from distributed import Semaphore, get_worker

    try:
        get_worker()
    except ValueError:
        return nullcontext()
    return Semaphore(max_leases=int(max_queries), name=f"{ARCHIVE_SEMAPHORE}-{int(max_queries)}")


def tile_tasks(client: Any, cache_url: str, pixels: Sequence[int], *, config: PipelineConfig,
               retries: int = 0) -> list[Any]:
    """Submit one :func:`task_fill_tile` per tile under its fixed key; returns the futures.

    A tile already being filled (by a prefetch, or for another exposure) is the same
    task: its key dedupes it.
    """
    from astrodask.reference.healpix import TILE_LEVEL
    from astrodask.reference.store import tile_task_key

    return [client.submit(task_fill_tile, cache_url, int(p), config, pure=False, retries=retries,
                          key=tile_task_key(int(p), level=TILE_LEVEL, store=cache_url)) for p in pixels]


def fill_tiles_on_cluster(cache_url: str, pixels: list[int], *, config: PipelineConfig) -> dict[int, int]:
    """Fill tiles from within a task: submit their ``gaia-tile`` tasks and wait, seceded.

    Raises
    ------
    ArchiveError
        When some tiles could not be filled: each distinct reason once, with its tiles.
    """
    from distributed import worker_client

    from astrodask.errors import ArchiveError
    from astrodask.reference.fill import summarise_tile_failures

    with worker_client() as client:
        records = client.gather(tile_tasks(client, cache_url, pixels, config=config))
    failed = [(r.label, r.reason) for r in records if r.state == TileState.FAILED]
    if failed:
        # the archive down fails every tile the same way: one reason, not one per tile
        raise ArchiveError(summarise_tile_failures(failed))
    return {r.tile: r.rows for r in records}


def task_prepare(detected: FirstPass | Failed, references: References | Failed,
                 config: PipelineConfig) -> Prepared | Failed:
    """The coarse alignment and the region grid."""
    from astrodask.solve.pipeline import failure_diagnostics, prepare_regions

    failed = _failed_input(detected, references)
    if failed:
        return failed
    info, sources = detected.info, detected.sources
    started = time.perf_counter()
    try:
        inputs = prepare_regions(sources, references.stars, info.shape, config=config)
    except AstrodaskError as err:
        return Failed(str(info.path), Stage.REGIONS, str(err),
                      kind=FailureKind.of(err),
                      diagnostics=failure_diagnostics(Stage.REGIONS, str(err), getattr(err, "details", {}), sources,
                                                      references.stars))
    return Prepared(inputs, time.perf_counter() - started)


def task_region(prepared: Prepared | Failed, index: int, config: PipelineConfig) -> RegionOutcome | Failed | None:
    """astroalign in one region; None when the (sparse-field) grid has fewer regions than tasks."""
    from astrodask.solve.pipeline import stage_region

    if isinstance(prepared, Failed):
        return prepared
    if index >= len(prepared.inputs.regions):
        return None
    started = time.perf_counter()
    match = stage_region(prepared.inputs, index, config=config)
    return RegionOutcome(match, time.perf_counter() - started)


def task_reduce(detected: FirstPass | Failed, prepared: Prepared | Failed,
                regions: list[RegionOutcome | Failed | None], config: PipelineConfig,
                references: References | Failed | None = None) -> Reduced | Failed:
    """The reducer: the mean affine of the agreeing regions."""
    from astrodask.solve.pipeline import failure_diagnostics, reduce_regions

    failed = _failed_input(detected, prepared, regions)
    if failed:
        return failed
    info, sources = detected.info, detected.sources
    done = [r for r in regions if r is not None]
    started = time.perf_counter()
    try:
        reduced = reduce_regions([r.match for r in done], sources, prepared.inputs, config=config)
    except AstrodaskError as err:
        refs = None if references is None or isinstance(references, Failed) else references.stars
        return Failed(str(info.path), Stage.REGIONS, str(err),
                      kind=FailureKind.of(err),
                      diagnostics=failure_diagnostics(Stage.REGIONS, str(err), getattr(err, "details", {}), sources,
                                                      refs))
    seconds = prepared.seconds + sum(r.seconds for r in done) + time.perf_counter() - started
    return Reduced(reduced.affine, reduced.matches, seconds)


def task_solve(first: FirstPass | Failed, depth: DepthPass | Failed, references: References | Failed,
               reduced: Reduced | Failed, config: PipelineConfig) -> ExposureResult | Failed:
    """TPV, depth match, ``like_fit`` and the chi-square: the exposure's result."""
    from astrodask.solve.pipeline import StageClock, failure_diagnostics, finish_solve

    failed = _failed_input(first, references, reduced, depth)
    if failed:
        return failed
    detected = Detections(first.info, first.sources, depth.deep,
                          {**first.timings, Stage.DETECT_DEPTH: depth.seconds})
    clock = StageClock({**detected.timings, Stage.REFERENCES: references.seconds, Stage.REGIONS: reduced.seconds})
    try:
        return finish_solve(detected, references, reduced, config=config, clock=clock)
    except AstrodaskError as err:
        return Failed(str(detected.info.path), clock.stage, str(err), clock.timings,
                      kind=FailureKind.of(err),
                      diagnostics=failure_diagnostics(clock.stage, str(err), getattr(err, "details", {}),
                                                      detected.sources, references.stars))


def task_write(result: Any, path: str, out_dir: str, config: PipelineConfig, debug: bool,
               write_header: bool = False, plots_dir: str | None = None) -> dict[str, Any]:
    """Write the solution (when solved) and the exposure's status record; returns the summary row.

    All or nothing (:func:`astrodask.run.backlog.record_outcome`): a file that cannot be written
    (the disk full, no permission) fails this exposure at stage ``write`` with the file and the
    reason, and whatever it had written is removed, so that a resubmit solves it.

    With ``plots_dir``, the exposure's diagnostic plots go there too. The row is also reported to
    the scheduler's live view (:func:`astrodask.run.monitor.report_exposure`).
    """
    from astrodask.run.backlog import record_outcome

    if isinstance(result, Failed):
        result = failed_result(result.file, result.stage, result.reason, config=config, timings=result.timings,
                               diagnostics=result.diagnostics, kind=result.kind)
    row = record_outcome(result, out_dir, debug=debug, write_header=write_header, plots_dir=plots_dir).row
    monitor.report_exposure(row)
    return row


def failed_result(path: str, stage: str, reason: str, *, config: PipelineConfig,
                  timings: dict[str, float] | None = None,
                  diagnostics: FailureDiagnostics | None = None,
                  kind: FailureKind = FailureKind.DETERMINISTIC) -> ExposureResult:
    """A failed :class:`ExposureResult` for an exposure that stopped at ``stage``."""
    from astrodask.solve.pipeline import failure_diagnostics

    return ExposureResult(file=str(path), name=exposure_name(path), status=FAILED, reason=reason, stage=stage,
                          timings=dict(timings or {}), config=config.to_dict(), kind=kind,
                          diagnostics=diagnostics or failure_diagnostics(stage, reason, {}, None, None))


# ---------------------------------------------------------------- graph building (computes nothing)


def catalog_key(path: str | Path) -> str:
    """Deterministic key of a catalog file's task (its absolute path and modification time)."""
    p = Path(path).resolve()
    stamp = f"{p}:{p.stat().st_mtime_ns if p.exists() else 0}"
    return f"catalog-{hashlib.sha1(stamp.encode()).hexdigest()[:12]}"


def catalog_task(path: str | Path, *, config: PipelineConfig) -> Delayed:
    """The task that reads a reference catalog file once for a backlog."""
    return delayed(task_catalog, pure=False)(str(Path(path).resolve()), config.gaia.default_ref_epoch,
                                             dask_key_name=catalog_key(path))


def exposure_graph(path: str | Path, *, out_dir: str | Path, config: PipelineConfig, catalog: Delayed | None = None,
                   pointing: dict[str, Any] | None = None, debug: bool = False, write_header: bool = False,
                   cache_url: str | None = None, plots_dir: str | Path | None = None,
                   detected: Any = None) -> Delayed:
    """The tasks of one exposure; the returned ``write-<name>`` task yields its summary row.

    Parameters
    ----------
    path
        The exposure file.
    out_dir
        Output folder (shared by the workers).
    config
        The pipeline config.
    catalog
        The backlog's catalog task (:func:`catalog_task`); None: the tile cache, else the Gaia archive.
    pointing
        Pointing overrides (see :func:`astrodask.io.exposure.get_pointing`).
    debug
        Also write matched lists and plots.
    write_header
        Also write a copy of the exposure with the solved WCS.
    cache_url
        The Gaia tile cache every worker reads (a folder or an fsspec URL shared by them).
    plots_dir
        Also write the exposure's diagnostic plots into this folder (shared by the workers).
    detected
        The exposure's :class:`Detected` computed already (or a future of it): no ``detect`` task.
    """
    path = str(Path(path).resolve())
    name = exposure_name(path)
    image = detected if detected is not None else \
        delayed(task_detect, pure=False)(path, config, dask_key_name=Task.DETECT.key(name))
    detected = delayed(task_sources, pure=False)(image, dask_key_name=Task.SOURCES.key(name))
    depth = delayed(task_depth, pure=False)(image, dask_key_name=Task.DEPTH.key(name))
    refs = delayed(task_references, pure=False)(detected, catalog, config, dict(pointing or {}), cache_url,
                                                dask_key_name=Task.REFERENCES.key(name))
    prepared = delayed(task_prepare, pure=False)(detected, refs, config, dask_key_name=Task.PREPARE.key(name))
    regions = [delayed(task_region, pure=False)(prepared, k, config, dask_key_name=Task.REGION.key(name, k))
               for k in range(config.regions.nx * config.regions.ny or config.regions.n_regions)]
    reduced = delayed(task_reduce, pure=False)(detected, prepared, regions, config, refs,
                                               dask_key_name=Task.REDUCE.key(name))
    result = delayed(task_solve, pure=False)(detected, depth, refs, reduced, config,
                                             dask_key_name=Task.SOLVE.key(name))
    return delayed(task_write, pure=False)(result, path, str(Path(out_dir).resolve()), config, debug, write_header,
                                           str(Path(plots_dir).resolve()) if plots_dir else None,
                                           dask_key_name=Task.WRITE.key(name))


def backlog_graph(paths: Sequence[str | Path], *, out_dir: str | Path, config: PipelineConfig,
                  catalog_path: str | Path | None = None, pointing: dict[str, Any] | None = None,
                  debug: bool = False, write_header: bool = False, cache_url: str | None = None,
                  plots_dir: str | Path | None = None, detected: Mapping[str, Any] | None = None) -> list[Delayed]:
    """One ``write-<name>`` task per exposure of a backlog, sharing one catalog task.

    ``detected``: by resolved path, an exposure's :class:`Detected` (or a future of it) computed
    already, which takes the place of its ``detect`` task.
    """
    catalog = catalog_task(catalog_path, config=config) if catalog_path else None
    detected = detected or {}
    return [exposure_graph(p, out_dir=out_dir, config=config, catalog=catalog, pointing=pointing, debug=debug,
                           write_header=write_header, cache_url=cache_url, plots_dir=plots_dir,
                           detected=detected.get(str(Path(p).resolve()))) for p in paths]
