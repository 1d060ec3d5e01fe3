"""What the commands share: their options, the config they load, logging, and per-file error reporting.

The only place in the package that configures logging and reads YAML files and the
environment (dask config, ``DASK_ASTRODASK__...``).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from astrodask.config import PipelineConfig, merge_dicts, parse_assignment
from astrodask.errors import AstrodaskError, ConfigError

log = logging.getLogger("astrodask")

#: Exit status when some of several files failed.
EXIT_PARTIAL = 3
#: Exit status after Ctrl-C (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130
#: Table file suffixes written as Parquet (any other as ECSV).
PARQUET_SUFFIXES = frozenset({".parquet", ".pq"})


class AstrodaskGroup(click.Group):
    """A click group that turns expected errors into a one-line message."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AstrodaskError as err:
            raise click.ClickException(str(err)) from None


class LazyDefault:
    """A default read from the code it configures when first needed, not when the CLI is imported.

    So that ``astrodask --help`` (and ``dask``, which loads every ``dask_cli`` entry point)
    does not import the simulator or Dask for the sake of one default.
    """

    def __init__(self, read: Callable[[], Any]) -> None:
        self.read = read


class LazyDefaultOption(click.Option):
    """A click option whose default may be a :class:`LazyDefault` (shown in ``--help`` as its value)."""

    def get_default(self, ctx: click.Context, call: bool = True) -> Any:
        if isinstance(self.default, LazyDefault):
            return self.default.read()
        return super().get_default(ctx, call=call)


# ---------------------------------------------------------------- logging and config


def configure_logging(verbose: int, quiet: bool) -> None:
    """Log to stderr at INFO (``-v``: DEBUG, ``-q``: WARNING); the cluster's own chatter only with ``-v``."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr, force=True)
    logging.getLogger("astrodask").setLevel(level)
    # the embedded cluster's own chatter (workers starting, closing) only with -v: distributed
    # sets its loggers' levels from dask config (which load_config refreshes from the
    # environment) when it is imported; a level the user set in DASK_LOGGING__DISTRIBUTED wins
    cluster_level = "debug" if verbose > 1 else "info" if verbose else "warning"
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", cluster_level)
    logging.getLogger("distributed").setLevel(os.environ["DASK_LOGGING__DISTRIBUTED"].upper())


def load_config(config_file: str | None, assignments: Sequence[str]) -> PipelineConfig:
    """Defaults < dask config (``astrodask:``, ``DASK_ASTRODASK__...``) < YAML file < ``--set``.

    Raises
    ------
    ConfigError
        For a YAML file that cannot be read or parsed, or any invalid value.
    """
    import dask.config
    import yaml

    dask.config.refresh()
    merged: dict[str, Any] = dict(dask.config.get("astrodask", default={}) or {})
    if config_file:
        path = Path(config_file)
        try:
            loaded = yaml.safe_load(path.read_text())
        except OSError as err:
            raise ConfigError(f"{path}: cannot read the config file ({err.strerror})") from err
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({err})") from err
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a config file must hold a mapping of sections, got {type(loaded).__name__}")
        merged = merge_dicts(merged, loaded.get("astrodask", loaded))
    for text in assignments:
        merged = merge_dicts(merged, parse_assignment(text))
    try:
        return PipelineConfig.from_dict(merged)
    except ConfigError as err:
        sources = ["dask config / DASK_ASTRODASK__ variables"] + ([str(config_file)] if config_file else []) \
            + (["--set"] if assignments else [])
        raise ConfigError(f"{err} (set in one of: {', '.join(sources)})") from None


# ---------------------------------------------------------------- shared options


def config_options(func: Callable) -> Callable:
    """--config FILE and --set KEY=VALUE."""
    func = click.option("--set", "assignments", multiple=True, metavar="SECTION.FIELD=VALUE",
                        help="Override one config value, e.g. --set fit.tpv_degree=4 (repeatable).")(func)
    func = click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
                        help="YAML file of config overrides (see 'astrodask config').")(func)
    return func


def logging_options(func: Callable) -> Callable:
    """-v/--verbose and -q/--quiet."""
    func = click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")(func)
    func = click.option("-v", "--verbose", count=True, help="More detail (debug logging).")(func)
    return func


def pointing_options(func: Callable) -> Callable:
    """--ra --dec --scale --rotation --flip: override the header's pointing."""
    func = click.option("--flip", "parity", flag_value=-1, default=None,
                        help="The image is mirrored (parity -1).")(func)
    func = click.option("--rotation", type=float, default=None,
                        help="Position angle of the image +y axis, degrees east of north.")(func)
    func = click.option("--scale", type=float, default=None, help="Plate scale, arcsec/px.")(func)
    func = click.option("--dec", type=float, default=None, help="Declination of the image centre, degrees.")(func)
    func = click.option("--ra", type=float, default=None, help="Right ascension of the image centre, degrees.")(func)
    return func


def pointing_overrides(ra: float | None, dec: float | None, scale: float | None, rotation: float | None,
                       parity: int | None) -> dict[str, Any]:
    """The pointing options given on the command line, as keywords of ``get_pointing``."""
    given = {"ra_deg": ra, "dec_deg": dec, "scale_arcsec": scale, "rotation_deg": rotation, "parity": parity}
    return {key: value for key, value in given.items() if value is not None}


def cache_option(func: Callable) -> Callable:
    """--cache URL and --no-cache: where reference stars come from when there is no --catalog."""
    func = click.option("--no-cache", "no_cache", is_flag=True,
                        help="Query the Gaia archive directly for each exposure instead of using the tile cache.")(func)
    return click.option("--cache", "cache_url", default=None, metavar="URL",
                        help="The Gaia tile cache: a folder, or an fsspec URL such as s3://bucket/tiles that every "
                             "worker reaches (default: gaia.cache_url, else the user cache folder). Tiles it lacks "
                             "are filled from the archive unless gaia.fetch_missing_tiles is false; fill them "
                             "beforehand with 'astrodask cache prefetch'.")(func)


def _remember_cluster(ctx: click.Context, param: click.Parameter, value: str) -> str:
    ctx.meta["astrodask.cluster"] = value
    return value


def on_kubernetes(scheduler: str | None, scheduler_file: str | None) -> bool:
    """True for ``--cluster kubernetes`` (:mod:`astrodask.run.kube`); refused beside --scheduler/--scheduler-file."""
    kubernetes = click.get_current_context().meta.get("astrodask.cluster") == "kubernetes"
    if kubernetes and (scheduler or scheduler_file):
        raise click.UsageError("--cluster kubernetes finds its scheduler itself: drop --scheduler/--scheduler-file")
    return kubernetes


def _remember_local_cluster(ctx: click.Context, param: click.Parameter, value: str) -> str:
    ctx.meta["astrodask.local_cluster"] = value
    return value


#: ``--local-cluster auto`` runs a job of at most this many exposures on a LocalCluster of threads.
THREADS_UP_TO_EXPOSURES = 1


def local_cluster_processes(n_exposures: int) -> bool:
    """Whether the embedded LocalCluster (``--local-cluster``) runs worker processes (else threads in this process).

    ``auto`` (the default): threads for a single exposure, processes for a backlog. One exposure
    has already been read and detected in this process while the cluster started (the head
    start), so what is left (regions, fits, writing) is seconds of NumPy work: worker processes
    would cost more to start, import the stack and shut down (3-4 s on 2 cores) than they could
    save. A backlog needs processes: SEP holds the GIL, so threads cannot detect two frames at once.
    """
    choice = click.get_current_context().meta.get("astrodask.local_cluster", "auto")
    if choice == "auto":
        return n_exposures > THREADS_UP_TO_EXPOSURES
    return choice == "processes"


def cluster_options(func: Callable) -> Callable:
    """--scheduler ADDRESS, --scheduler-file FILE, --workers N, --cluster local|kubernetes, --local-cluster."""
    func = click.option("--local-cluster", type=click.Choice(["auto", "processes", "threads"]), default="auto",
                        show_default=True, expose_value=False, callback=_remember_local_cluster,
                        help="The embedded LocalCluster's workers: processes (one per core), or threads in this "
                             "process (one worker, a thread per core: no processes to start for a small job); "
                             "auto: threads for a single exposure, processes for more.")(func)
    func = click.option("--cluster", type=click.Choice(["local", "kubernetes"]), default="local", show_default=True,
                        expose_value=False, callback=_remember_cluster,
                        help="local: --scheduler/--scheduler-file, else an embedded LocalCluster; kubernetes: the "
                             "dask-kubernetes DaskCluster 'astrodask' (dask config kubernetes.name/namespace), "
                             "created with --workers workers if absent (pip install 'astrodask[kubernetes]').")(func)
    func = click.option("--workers", type=int, default=None,
                        help="Worker processes of the embedded LocalCluster (default: one per core).")(func)
    func = click.option("--scheduler-file", type=click.Path(dir_okay=False), default=None,
                        help="Connect to the scheduler described in this file.")(func)
    func = click.option("--scheduler", default=None, metavar="ADDRESS",
                        help="Connect to a running scheduler (default: DASK_SCHEDULER_ADDRESS, else an embedded "
                             "LocalCluster).")(func)
    return func


def retries_option(help_text: str) -> Callable[[Callable], Callable]:
    """--retries N, by default :data:`astrodask.run.client.DEFAULT_RETRIES` (read when first needed)."""

    def default_retries() -> int:
        from astrodask.run.client import DEFAULT_RETRIES

        return DEFAULT_RETRIES

    return click.option("--retries", type=int, cls=LazyDefaultOption, default=LazyDefault(default_retries),
                        show_default=True, help=help_text)


# ---------------------------------------------------------------- the tile cache a command reads


def cache_for_solve(catalog: str | None, cache_url: str | None, no_cache: bool, config: PipelineConfig) -> str | None:
    """The tile cache a solve reads (a canonical location), or None (a catalog file, or the archive directly)."""
    if catalog:
        if cache_url:
            raise click.UsageError("give --catalog or --cache, not both")
        return None
    if no_cache:
        if cache_url:
            raise click.UsageError("give --cache or --no-cache, not both")
        return None
    return cache_location(cache_url, config)


def cache_location(url: str | None, config: PipelineConfig | None) -> str:
    """--cache URL, else gaia.cache_url, else the user cache folder: canonical (see store.cache_location)."""
    from astrodask.reference.store import cache_location as canonical

    return canonical(url or (config.gaia.cache_url if config else "") or None)


# ---------------------------------------------------------------- files in, tables out


def write_table(table, path: Path, fmt: str | None = None) -> Path:
    """Write a table atomically (temporary file, then rename) as ECSV or Parquet."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = fmt or ("parquet" if path.suffix.lower() in PARQUET_SUFFIXES else "ascii.ecsv")
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    table.write(tmp, format=fmt, overwrite=True)
    tmp.replace(path)
    return path


def for_each(files: Sequence[str], one: Callable[[str], None]) -> None:
    """Run ``one`` on each file; report failures and go on; exit non-zero if any failed."""
    failures: list[tuple[str, str]] = []
    for index, path in enumerate(files, start=1):
        if len(files) > 1:
            log.info("[%d/%d] %s", index, len(files), path)
        try:
            one(path)
        except AstrodaskError as err:
            if len(files) == 1:
                raise
            failures.append((path, str(err)))
            click.echo(f"error: {err}", err=True)
    if failures:
        click.echo(f"{len(failures)} of {len(files)} files failed:", err=True)
        for path, reason in failures:
            click.echo(f"  {reason}" if reason.startswith(str(path)) else f"  {path}: {reason}", err=True)
        raise SystemExit(EXIT_PARTIAL)
