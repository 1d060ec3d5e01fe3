"""Solving: ``solve`` (files, here or on Dask), ``submit`` (a backlog to a scheduler), ``status`` and ``task``."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import click

from astrodask.cli.options import (EXIT_INTERRUPTED, EXIT_PARTIAL, cache_for_solve, cache_option, cluster_options,
                                   config_options, configure_logging, load_config, logging_options, pointing_options,
                                   local_cluster_processes, on_kubernetes, pointing_overrides, retries_option)
from astrodask.config import PipelineConfig


def solve_and_write(files: Sequence[str], *, catalog, config: PipelineConfig, out: Path,
                    pointing: dict[str, Any], write_header: bool, debug: bool, cache_url: str | None = None,
                    plots_dir: str | Path | None = None) -> list:
    """Solve files one after the other in this process, writing what the graph's ``write`` task writes.

    For each file: its products (:func:`astrodask.io.output.write_products`: the solution,
    and with ``write_header``/``debug`` the header copy, matched list and plots) and its
    status record, all or nothing (:func:`astrodask.run.backlog.record_outcome`); then the
    summary. Returns the :class:`~astrodask.types.ExposureResult` list.
    """
    from astrodask.cli.progress import BacklogProgress
    from astrodask.run.backlog import record_outcome
    from astrodask.run.forked import ForkedMap
    from astrodask.solve.pipeline import solve_file

    results = []
    # one exposure at a time: its extraction's strips shared with forked copies of this process, one per core
    work_map = ForkedMap(config.detect.extract_processes)
    # several files on a terminal: a live bar (failures printed above it); else one line per file
    progress = BacklogProgress(len(files), unit="exposures")
    progress.live = progress.live and len(files) > 1
    with progress:
        for index, path in enumerate(files, start=1):
            started = time.perf_counter()
            result = solve_file(path, catalog=catalog, config=config, pointing=pointing, cache_url=cache_url,
                                work_map=work_map)
            recorded = record_outcome(result, out, debug=debug, write_header=write_header, plots_dir=plots_dir)
            result, written = recorded.result, list(recorded.written)  # failed if its outputs were not written
            results.append(result)
            summarise_quietly(out)
            seconds = time.perf_counter() - started
            progress.advance(failed=not result.ok,
                             echo=lambda i=index, p=path, r=result, w=written, s=seconds: _echo_result(
                                 i, len(files), p, r, w, s))
    return results


def _echo_result(index: int, total: int, path: str, result: Any, written: Sequence[Path], seconds: float) -> None:
    """The line (and the files written) of one exposure solved in this process."""
    from astrodask.io.output import chi2_gate

    prefix = f"[{index}/{total}] " if total > 1 else ""
    if result.ok:
        q, m = result.quality, result.error_model
        click.echo(f"{prefix}{path}: solved in {seconds:.1f} s: {result.n_matches} matches "
                   f"({result.counts.get('regions_ok', 0)}/{len(result.regions)} regions), rms "
                   f"({result.rms_arcsec[0] * 1000:.1f}, {result.rms_arcsec[1] * 1000:.1f}) mas, "
                   f"chi2/dof {q.chi2_dof:.3f} over all {q.n_points} pairs (dof {q.dof}), "
                   f"{q.chi2_dof_kept:.3f} over the {q.n_kept} kept (dof {q.dof_kept}; the gate uses "
                   f"{chi2_gate(result)}), error model: scale {m.scale:.3f}, "
                   f"floor {m.floor_mas:.1f} mas")
    else:
        click.echo(f"{prefix}{path}: FAILED at {result.stage}: {result.reason}", err=True)
    for p in written:
        click.echo(f"  {p}")


#: What a resubmit says, once, about the exposures it leaves alone.
FAILED_BEFORE_NOTE = ("{n} exposure(s) failed earlier for a reason that will not change; --retry-failed to try "
                      "again (astrodask status --out {out} lists them)")


def retry_failed_option(func: Any) -> Any:
    """--retry-failed: solve again the exposures whose earlier failure was deterministic."""
    return click.option("--retry-failed", is_flag=True,
                        help="Solve again exposures that failed earlier for a reason that will not change by itself "
                             "(a quality gate, a broken file, a bad header). Without it they are left alone unless "
                             "the file, the config or astrodask changed; transient failures (the archive or a worker "
                             "lost) are always retried.")(func)


def plots_option(func: Any) -> Any:
    """--plots DIR: each exposure's diagnostic plots (PNG) into DIR."""
    return click.option("--plots", "plots_dir", type=click.Path(file_okay=False), default=None, metavar="DIR",
                        help="Write each exposure's diagnostic plots into DIR: residual vectors over the field, "
                             "residuals against the error model, the distortion map (TPV minus its linear part), "
                             "matches per region (<name>.residuals.png; a failure's <name>.diagnostics.png).")(func)


def print_row(done: int, total: int, row: dict[str, Any]) -> None:
    """One line per exposure as the cluster finishes it (stderr for a failed one)."""
    from astrodask.types import SOLVED

    prefix = f"[{done}/{total}] "
    if row["status"] == SOLVED:
        click.echo(f"{prefix}{row['file']}: solved: {row['matches']} matches, rms ({row['rms_xi_arcsec'] * 1000:.1f}, "
                   f"{row['rms_eta_arcsec'] * 1000:.1f}) mas, chi2/dof {row['chi2_dof']:.3f} all, "
                   f"{row.get('chi2_dof_kept', float('nan')):.3f} kept")
    else:
        click.echo(f"{prefix}{row['file']}: FAILED at {row['stage']}: {row['reason']}", err=True)


def row_failed(row: dict[str, Any]) -> bool:
    """Whether a summary row is a failure."""
    from astrodask.types import SOLVED

    return row["status"] != SOLVED


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """BLAS on one thread while this process solves, as Dask's workers run it (their nannies set
    ``OPENBLAS_NUM_THREADS=1``): the fits' least squares are tall and thin (thousands of pairs, tens
    of terms), where BLAS threads only wait for each other (the TPV fits of a full frame: 0.03 s on one
    thread, 0.95 s on two, on a busy 2-core machine)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


def run_on_cluster(paths: Sequence[Path], *, catalog: str | None, out: Path, config: PipelineConfig,
                   pointing: dict[str, Any], debug: bool, write_header: bool, scheduler: str | None,
                   scheduler_file: str | None, workers: int | None, detach: bool, retries: int,
                   cache_url: str | None = None, plots_dir: Path | None = None) -> list[dict]:
    """Solve on a Dask cluster (a scheduler, or an embedded LocalCluster); the summary rows, or [] when detached.

    On a terminal, a live progress bar (:class:`~astrodask.cli.progress.BacklogProgress`); else one line
    per exposure. ``out`` that cannot be written is an :class:`~astrodask.errors.OutputError` before
    anything is submitted. Ctrl-C cancels the backlog, says how far it got and exits with
    :data:`EXIT_INTERRUPTED`; a lost scheduler is a :class:`~astrodask.errors.ClusterLostError`.
    Either way what finished is kept, and the same command goes on from there.
    """
    from astrodask.cli.progress import BacklogProgress
    from astrodask.errors import ClusterLostError
    from astrodask.io.output import check_writable, remove_stale_temporaries
    from astrodask.run.backlog import backlog_status
    from astrodask.run.client import HeadStart, connect, submit_backlog

    check_writable(out)
    remove_stale_temporaries(out)
    processes = local_cluster_processes(len(paths))
    head = HeadStart(paths[:1] if not detach else [], config=config, echo=click.echo, import_stack=not processes)
    try:
        with ExitStack() as stack:
            if not processes:  # the workers are threads of this process: BLAS on one thread, as in worker processes
                stack.enter_context(one_blas_thread())
            connection = stack.enter_context(connect(
                scheduler=scheduler, scheduler_file=scheduler_file, n_workers=workers,
                kubernetes=on_kubernetes(scheduler, scheduler_file), processes=processes,
                while_starting=head.run, before_starting=head.fork))
            if detach and connection.embedded:
                raise click.ClickException("--detach needs a running scheduler (--scheduler, --scheduler-file or "
                                           "DASK_SCHEDULER_ADDRESS): the embedded cluster ends with the command")
            where = connection.where
            click.echo(f"{where} {connection.address}; dashboard: {connection.dashboard}")
            with BacklogProgress(0 if detach else len(paths), unit="exposures") as progress:
                rows = submit_backlog(connection, paths, out_dir=out, config=config, catalog_path=catalog,
                                      pointing=pointing, debug=debug, write_header=write_header, retries=retries,
                                      detach=detach, on_row=progress.callback(row_failed, print_row),
                                      cache_url=cache_url, plots_dir=plots_dir, detected=head.detected)
    except KeyboardInterrupt:
        summarise_quietly(out)
        status = backlog_status(out, inputs=paths)
        click.echo(f"interrupted: {len(paths) - status.n_pending} of {len(paths)} exposures finished (their "
                   f"solutions and status records are whole), {status.n_pending} cancelled. Run the same command "
                   "again to go on: solved exposures are skipped.", err=True)
        raise SystemExit(EXIT_INTERRUPTED) from None
    except ClusterLostError:
        summarise_quietly(out)
        raise
    if detach:
        click.echo(f"submitted {len(paths)} exposures; the work goes on after this command. "
                   f"Follow it with: astrodask status --out {out}")
        return []
    summarise_quietly(out)
    return rows


def summarise_quietly(out: Path) -> None:
    """Rebuild ``OUT/summary.ecsv``; when it cannot be written (the disk full), say so and go on.

    The status records are the backlog's state; the summary is rebuilt from them by the next
    run or by ``astrodask status``.
    """
    from astrodask.errors import OutputError
    from astrodask.run.backlog import assemble_summary

    try:
        assemble_summary(out)
    except OutputError as err:
        click.echo(f"summary not written: {err}", err=True)


@click.command("solve")
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("--catalog", type=click.Path(), default=None,
              help="Reference catalog file (Gaia export or VizieR I/355); default: the Gaia tile cache.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="astrodask-out", show_default=True,
              help="Output folder: <name>.wcs.fits per exposure and summary.ecsv.")
@click.option("--write-header", is_flag=True, help="Also write a copy of each exposure with the solved WCS.")
@click.option("--debug", is_flag=True, help="Keep the matched lists (<name>.matched.ecsv) and residual plots; a "
              "failed exposure leaves <name>.diagnostics.json and .png (detections, Gaia stars, regions, attempts).")
@click.option("--serial", is_flag=True, help="Solve in this process, one exposure after the other, without Dask.")
@retry_failed_option
@plots_option
@cache_option
@cluster_options
@pointing_options
@config_options
@logging_options
def solve_cmd(files: tuple[str, ...], catalog: str | None, out_dir: str, write_header: bool, debug: bool,
              serial: bool, retry_failed: bool, plots_dir: str | None, cache_url: str | None, no_cache: bool,
              scheduler: str | None,
              scheduler_file: str | None,
              workers: int | None,
              ra: float | None, dec: float | None, scale: float | None, rotation: float | None, parity: int | None,
              config_file: str | None, assignments: tuple[str, ...], verbose: int, quiet: bool) -> None:
    """Solve exposures: TAN + TPV WCS against Gaia DR3, with an error model and a chi-square.

    Runs on Dask: with no --scheduler (or DASK_SCHEDULER_ADDRESS / --scheduler-file), an
    embedded LocalCluster starts and its dashboard link is printed. Writes
    OUT/<name>.wcs.fits (a FITS header with RA---TPV/DEC--TPV, CRPIX, CRVAL, CD,
    PV1_*, PV2_* and quality keywords) for each solved exposure and OUT/summary.ecsv
    with one row per exposure (status, reason, counts, rms, chi-square/dof, seconds
    per stage). A failed exposure is reported and the others go on; the exit status
    is 3 when some failed. An exposure whose status record in OUT says it failed for a
    reason that will not change is left alone (and counted as failed) unless
    --retry-failed, or its file, the config or astrodask changed.
    """
    from astrodask.io.output import SUMMARY_NAME, check_writable
    from astrodask.reference.catalog import read_catalog
    from astrodask.run.backlog import expand_inputs, unchanged_failures
    from astrodask.types import FAILED, SOLVED, exposure_name

    configure_logging(verbose, quiet)
    config = load_config(config_file, assignments)
    pointing = pointing_overrides(ra, dec, scale, rotation, parity)
    cache_url = cache_for_solve(catalog, cache_url, no_cache, config)
    out = Path(out_dir)
    check_writable(out)  # before any solve is wasted
    if plots_dir:
        check_writable(plots_dir)
    inputs = list(files) if serial else [str(p) for p in expand_inputs(files)]
    skipped = set() if retry_failed else unchanged_failures(inputs, out, config=config)
    todo = [p for p in inputs if exposure_name(p) not in skipped]
    if skipped:
        click.echo(FAILED_BEFORE_NOTE.format(n=len(inputs) - len(todo), out=out), err=True)
    statuses = [FAILED] * (len(inputs) - len(todo))
    if serial and todo:
        reference = read_catalog(catalog, default_ref_epoch=config.gaia.default_ref_epoch) if catalog else None
        with one_blas_thread():
            results = solve_and_write(todo, catalog=reference, config=config, out=out, pointing=pointing,
                                      write_header=write_header, debug=debug, cache_url=cache_url,
                                      plots_dir=plots_dir)
        statuses += [r.status for r in results]
    elif todo:
        rows = run_on_cluster([Path(p) for p in todo], catalog=catalog, out=out, config=config, pointing=pointing,
                              debug=debug, write_header=write_header, scheduler=scheduler,
                              scheduler_file=scheduler_file, workers=workers, detach=False, retries=0,
                              cache_url=cache_url, plots_dir=Path(plots_dir) if plots_dir else None)
        statuses += [row["status"] for row in rows]
    failed = sum(s != SOLVED for s in statuses)
    click.echo(f"{len(statuses) - failed} of {len(statuses)} solved; summary: {out / SUMMARY_NAME}")
    if failed:
        raise SystemExit(EXIT_PARTIAL if failed < len(statuses) else 1)


@click.command("submit")
@click.argument("items", nargs=-1, required=True)
@click.option("--catalog", type=click.Path(), default=None,
              help="Reference catalog file, readable by every worker; default: the Gaia tile cache.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Output folder shared by the workers.")
@click.option("--detach", is_flag=True, help="Return once submitted; the work goes on on the cluster.")
@click.option("--redo", is_flag=True, help="Solve again exposures whose solution already exists.")
@retry_failed_option
@click.option("--recursive", is_flag=True, help="Search directories and ** globs recursively.")
@retries_option("Retries of a task after an unexpected error.")
@click.option("--write-header", is_flag=True, help="Also write a copy of each exposure with the solved WCS.")
@click.option("--debug", is_flag=True, help="Keep the matched lists and residual plots.")
@plots_option
@cache_option
@cluster_options
@pointing_options
@config_options
@logging_options
def submit_cmd(items: tuple[str, ...], catalog: str | None, out_dir: str, detach: bool, redo: bool,
               retry_failed: bool, recursive: bool,
               retries: int, write_header: bool, debug: bool, plots_dir: str | None, cache_url: str | None,
               no_cache: bool,
               scheduler: str | None, scheduler_file: str | None,
               workers: int | None, ra: float | None, dec: float | None, scale: float | None,
               rotation: float | None, parity: int | None, config_file: str | None, assignments: tuple[str, ...],
               verbose: int, quiet: bool) -> None:
    """Submit a survey backlog to a Dask scheduler (replaces the old dask-submit).

    ITEMS are exposure files, glob patterns ('night1/*.fits.fz'), directories, or
    @LIST files holding one path or glob per line. Exposures whose solution exists
    in --out are skipped (--redo solves them again), and so are those that failed
    for a reason that will not change (--retry-failed solves them again); a
    transient failure (the archive or a worker lost) is always retried. Waits with
    progress and a final summary, or --detach. Follow a backlog with 'astrodask
    status --out DIR'.
    """
    from astrodask.io.output import check_writable
    from astrodask.run.backlog import (backlog_status, expand_inputs, format_status, plan_backlog, read_manifest,
                                       restore_missing_records, write_manifest)
    from astrodask.types import SOLVED

    configure_logging(verbose, quiet)
    config = load_config(config_file, assignments)
    pointing = pointing_overrides(ra, dec, scale, rotation, parity)
    cache_url = cache_for_solve(catalog, cache_url, no_cache, config)
    out = Path(out_dir)
    paths = expand_inputs(items, recursive=recursive)
    check_writable(out)  # before any solve is wasted
    if plots_dir:
        check_writable(plots_dir)
    plan = plan_backlog(paths, out, redo=redo, retry_failed=retry_failed, config=config)
    restore_missing_records(plan.done, out)  # a solution whose writer was killed before its record
    write_manifest(paths, out)
    click.echo(f"{len(paths)} exposures: {len(plan.done)} already solved (skipped), {len(plan.todo)} to solve")
    if plan.failed_before:
        click.echo(FAILED_BEFORE_NOTE.format(n=plan.n_failed_before, out=out), err=True)
    rows = []
    if plan.todo:
        rows = run_on_cluster(plan.todo, catalog=catalog, out=out, config=config, pointing=pointing, debug=debug,
                              write_header=write_header, scheduler=scheduler, scheduler_file=scheduler_file,
                              workers=workers, detach=detach, retries=retries, cache_url=cache_url,
                              plots_dir=Path(plots_dir) if plots_dir else None)
    if detach:
        return
    click.echo(f"output folder {out}: " + format_status(backlog_status(out, inputs=read_manifest(out))))
    failed = sum(row["status"] != SOLVED for row in rows) + plan.n_failed_before
    if failed:
        raise SystemExit(EXIT_PARTIAL if failed < len(rows) + plan.n_failed_before else 1)


@click.command("status")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="The backlog's output folder.")
@logging_options
def status_cmd(out_dir: str, verbose: int, quiet: bool) -> None:
    """Summarise a backlog from its output folder: done, failed (with reasons), pending.

    Each failure is marked deterministic (a resubmit leaves it alone unless --retry-failed)
    or transient (a resubmit retries it).
    """
    from astrodask.run.backlog import assemble_summary, backlog_status, format_status, read_manifest

    configure_logging(verbose, quiet)
    out = Path(out_dir)
    if not out.is_dir():
        raise click.ClickException(f"{out}: no such output folder")
    status = backlog_status(out, inputs=read_manifest(out))
    click.echo(format_status(status))
    assemble_summary(out)


@click.command("task")
@click.argument("message")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Output folder (default: the message's 'out', else beside the exposure).")
@config_options
@logging_options
def task_cmd(message: str, out_dir: str | None, config_file: str | None, assignments: tuple[str, ...],
             verbose: int, quiet: bool) -> None:
    """Run a task message of the original service, e.g. '{"task": "astrometer", "filename": "X.fits.fz"}'.

    Optional keys: "catalog" (reference catalog file; default: the Gaia tile cache,
    gaia.cache_url or the user cache folder), "out" (output folder).
    """
    import json

    from astrodask.reference.catalog import read_catalog

    configure_logging(verbose, quiet)
    try:
        task = json.loads(message)
    except json.JSONDecodeError as err:
        raise click.ClickException(f"the task message is not JSON ({err.msg} at column {err.colno}): "
                                   f"{message!r}") from None
    if not isinstance(task, dict) or task.get("task") != "astrometer":
        raise click.ClickException(f"unknown task {task.get('task') if isinstance(task, dict) else task!r}: "
                                   "only 'astrometer' is supported")
    filename = task.get("filename")
    if not isinstance(filename, str) or not filename:
        raise click.ClickException("the astrometer task needs a 'filename'")
    config = load_config(config_file, assignments)
    catalog = task.get("catalog")
    reference = read_catalog(catalog, default_ref_epoch=config.gaia.default_ref_epoch) if catalog else None
    out = Path(out_dir or task.get("out") or Path(filename).parent)
    results = solve_and_write([filename], catalog=reference, config=config, out=out, pointing={},
                              write_header=False, debug=False,
                              cache_url=cache_for_solve(catalog, None, False, config))
    if not results[0].ok:
        raise SystemExit(1)


#: The commands of this module, registered on ``astrodask`` by :mod:`astrodask.cli`.
COMMANDS = (solve_cmd, submit_cmd, status_cmd, task_cmd)
