"""The shared Gaia tile cache: ``cache import`` (from catalog files), ``cache info``, ``cache prefetch``
(from the archive, as Dask tasks)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from astrodask.cli.options import (EXIT_PARTIAL, AstrodaskGroup, cache_location, cluster_options, config_options,
                                   configure_logging, for_each, load_config, local_cluster_processes, logging_options,
                                   on_kubernetes, retries_option)
from astrodask.config import PipelineConfig
from astrodask.errors import AstrodaskError

if TYPE_CHECKING:
    from astrodask.types import TileFill


@click.group("cache", cls=AstrodaskGroup)
def cache_group() -> None:
    """The shared Gaia tile cache: HEALPix level-6 tiles in zarr, in a folder or any fsspec store."""


def open_cache(url: str | None, config: PipelineConfig | None = None):
    """The tile cache at --cache URL, else gaia.cache_url, else the user cache folder."""
    from astrodask.reference.store import TileCache

    return TileCache(cache_location(url, config))


def cache_url_option(func: Callable) -> Callable:
    """--cache URL of the ``astrodask cache`` commands."""
    return click.option("--cache", "cache_url", default=None, metavar="URL",
                        help="The tile cache: a folder or an fsspec URL such as s3://bucket/tiles (default: "
                             "gaia.cache_url, else the user cache folder, $XDG_CACHE_HOME/astrodask/gaia-tiles).")(func)


@cache_group.command("import")
@click.argument("files", nargs=-1, required=True, type=click.Path())
@cache_url_option
@click.option("--overwrite", is_flag=True, help="Rewrite tiles that are already complete.")
@config_options
@logging_options
def cache_import_cmd(files: tuple[str, ...], cache_url: str | None, overwrite: bool, config_file: str | None,
                     assignments: tuple[str, ...], verbose: int, quiet: bool) -> None:
    """Fill the tile cache from Gaia catalog files (Gaia exports or VizieR I/355).

    Tiles the files cover only in part are marked partial; a later complete fill replaces them.
    """
    from astrodask.reference.fill import import_catalog
    from astrodask.reference.catalog import read_catalog

    configure_logging(verbose, quiet)
    config = load_config(config_file, assignments)
    cache = open_cache(cache_url, config)

    def one(path: str) -> None:
        started = time.perf_counter()
        written = import_catalog(cache, read_catalog(path, default_ref_epoch=config.gaia.default_ref_epoch),
                                 overwrite=overwrite)
        click.echo(f"{path}: {len(written)} tiles written ({sum(written.values())} stars) into {cache.url} "
                   f"in {time.perf_counter() - started:.1f} s")

    for_each(files, one)


@cache_group.command("info")
@cache_url_option
@config_options
@logging_options
def cache_info_cmd(cache_url: str | None, config_file: str | None, assignments: tuple[str, ...], verbose: int,
                   quiet: bool) -> None:
    """List the complete tiles of the cache with their rows and bytes, and any incomplete ones."""
    configure_logging(verbose, quiet)
    cache = open_cache(cache_url, load_config(config_file, assignments))
    rows = cache.info()
    click.echo(f"{cache.url}: level {cache.level}, {len(rows)} complete tiles, "
               f"{sum(r for _, r, _ in rows)} stars, {sum(b for _, _, b in rows) / 1e6:.1f} MB")
    for pixel, n, size in rows:
        click.echo(f"  tile {pixel}: {n} stars, {size / 1e3:.0f} kB")
    bad = cache.incomplete_tiles()
    if bad:
        click.echo(f"incomplete (rewritten at the next fill): {', '.join(str(p) for p in bad)}")


@cache_group.command("prefetch")
@click.argument("items", nargs=-1)
@click.option("--ra", "field_ra", type=float, default=None, help="Centre of a field to fill, RA in degrees.")
@click.option("--dec", "field_dec", type=float, default=None, help="Centre of a field to fill, Dec in degrees.")
@click.option("--radius", "field_radius", type=float, default=None, help="Radius of the field, degrees.")
@click.option("--recursive", is_flag=True, help="Search directories and ** globs recursively.")
@retries_option("Retries of a tile task after an unexpected error.")
@cache_url_option
@cluster_options
@config_options
@logging_options
def cache_prefetch_cmd(items: tuple[str, ...], field_ra: float | None, field_dec: float | None,
                       field_radius: float | None, recursive: bool, retries: int, cache_url: str | None,
                       scheduler: str | None, scheduler_file: str | None, workers: int | None,
                       config_file: str | None, assignments: tuple[str, ...], verbose: int, quiet: bool) -> None:
    """Fill the tile cache from the Gaia archive, as Dask tasks, before a backlog's solves.

    The tiles come from a field (--ra --dec --radius) and/or from ITEMS, exposures
    (files, globs, directories, @LIST files) whose footprints plus gaia.margin_deg
    come from their headers' pointing (as 'astrodask solve' finds it). Each missing,
    half-written, damaged, partial or too shallow tile is filled by one archive query in a task keyed
    gaia-tile-<level>-<pixel>, at most gaia.max_queries at once across the cluster;
    complete tiles are left alone. Then 'astrodask submit --cache URL' reads them.
    """
    from astrodask.cli.progress import BacklogProgress
    from astrodask.run.backlog import expand_inputs
    from astrodask.reference.healpix import tiles_for_field
    from astrodask.io.exposure import read_exposure_info
    from astrodask.run.client import connect, prefetch_tiles
    from astrodask.solve.pipeline import footprint_tiles
    from astrodask.types import TileState

    configure_logging(verbose, quiet)
    config = load_config(config_file, assignments)
    field = (field_ra, field_dec, field_radius)
    if any(v is not None for v in field) and any(v is None for v in field):
        raise click.UsageError("a field needs all of --ra, --dec and --radius")
    if field_ra is None and not items:
        raise click.UsageError("give exposures, or a field with --ra --dec --radius")
    tiles: set[int] = set()
    if field_ra is not None:
        try:
            tiles.update(tiles_for_field(field_ra, field_dec, field_radius).tolist())
        except ValueError as err:
            raise click.UsageError(str(err)) from None
    bad: list[str] = []
    paths = expand_inputs(items, recursive=recursive) if items else []
    for path in paths:
        try:
            tiles.update(footprint_tiles(read_exposure_info(path), config=config).tolist())
        except AstrodaskError as err:
            bad.append(str(err))
            click.echo(f"error: {err}", err=True)
    location = cache_location(cache_url, config)
    click.echo(f"{len(tiles)} tiles needed" + (f" by {len(paths) - len(bad)} exposures" if paths else "")
               + f"; cache {location}")
    records: list[TileFill] = []
    if tiles:
        def show(done: int, total: int, record: TileFill) -> None:
            if record.state == TileState.FAILED:
                click.echo(f"[{done}/{total}] tile {record.label}: FAILED: {record.reason}", err=True)
            elif record.state == TileState.FILLED:
                click.echo(f"[{done}/{total}] tile {record.label}: filled, {record.rows} stars in "
                           f"{record.seconds:.1f} s (was {record.reason})")
            elif not quiet:
                click.echo(f"[{done}/{total}] tile {record.label}: present, {record.rows} stars")

        started = time.perf_counter()
        with connect(scheduler=scheduler, scheduler_file=scheduler_file, n_workers=workers,
                     kubernetes=on_kubernetes(scheduler, scheduler_file),
                     processes=local_cluster_processes(len(tiles))) as connection:
            where = connection.where
            click.echo(f"{where} {connection.address}; dashboard: {connection.dashboard}")
            with BacklogProgress(len(tiles), unit="tiles") as progress:
                records = prefetch_tiles(connection, sorted(tiles), cache_url=location, config=config,
                                         retries=retries,
                                         on_tile=progress.callback(lambda r: r.state == TileState.FAILED, show))
        counts = {state: sum(r.state == state for r in records) for state in TileState}
        filled_rows = sum(r.rows for r in records if r.state == TileState.FILLED)
        click.echo(f"{len(records)} tiles in {time.perf_counter() - started:.1f} s: "
                   f"{counts[TileState.PRESENT]} present, {counts[TileState.FILLED]} filled ({filled_rows} stars), "
                   f"{counts[TileState.FAILED]} failed")
    failures = bad + [f"tile {r.label}: {r.reason}" for r in records if r.state == TileState.FAILED]
    if failures:
        raise SystemExit(EXIT_PARTIAL if len(failures) < len(records) + len(paths) else 1)


#: The commands of this module, registered on ``astrodask`` by :mod:`astrodask.cli`.
COMMANDS = (cache_group,)
