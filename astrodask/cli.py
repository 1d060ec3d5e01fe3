"""The ``astrodask`` command (also ``dask astrodask``): the only place that configures
logging and reads YAML files and the environment.

Expected errors (:class:`~astrodask.errors.AstrodaskError`) become one line on
stderr naming the file and the problem, and a non-zero exit status; with several
files, a failed file is reported and the others go on.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click
import numpy as np

from astrodask import __version__
from astrodask.config import PipelineConfig, describe, merge_dicts, parse_assignment
from astrodask.errors import AstrodaskError, ConfigError

log = logging.getLogger("astrodask")

#: Exit status when some of several files failed.
EXIT_PARTIAL = 3
#: Default output folder of ``astrodask demo``.
DEMO_DIR = "astrodask-demo"
#: The demo's own tile cache, inside its output folder.
DEMO_CACHE = "gaia-tiles"


class _Group(click.Group):
    """A click group that turns expected errors into a one-line message."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AstrodaskError as err:
            raise click.ClickException(str(err)) from None


# ---------------------------------------------------------------- shared options


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr, force=True)
    logging.getLogger("astrodask").setLevel(level)
    # the embedded cluster's own chatter (workers starting, closing) only with -v: distributed
    # sets its loggers' levels from dask config (which load_config refreshes from the
    # environment) when it is imported; a level the user set in DASK_LOGGING__DISTRIBUTED wins
    import os

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


def _pointing_overrides(ra: float | None, dec: float | None, scale: float | None, rotation: float | None,
                        parity: int | None) -> dict[str, Any]:
    """The pointing options given on the command line, as keywords of ``get_pointing``."""
    given = {"ra_deg": ra, "dec_deg": dec, "scale_arcsec": scale, "rotation_deg": rotation, "parity": parity}
    return {key: value for key, value in given.items() if value is not None}


def _table_format(path: Path, fmt: str | None) -> str:
    if fmt:
        return fmt
    return "parquet" if path.suffix.lower() in {".parquet", ".pq"} else "ascii.ecsv"


def write_table(table, path: Path, fmt: str | None = None) -> Path:
    """Write a table atomically (temporary file, then rename) as ECSV or Parquet."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = _table_format(path, fmt)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    table.write(tmp, format=fmt, overwrite=True)
    tmp.replace(path)
    return path


# ---------------------------------------------------------------- the group


@click.group(name="astrodask", cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="astrodask")
def main() -> None:
    """astrodask: astrometric calibration of wide-field survey exposures (TAN + TPV against Gaia DR3).

    \b
    Start with 'astrodask demo': it simulates a Condor-like exposure with known
    truth and runs the pipeline on it, with no network.
    """


@main.command("config")
@config_options
@click.option("--yaml", "as_yaml", is_flag=True, help="Print the effective config as YAML only.")
def config_cmd(config_file: str | None, assignments: tuple[str, ...], as_yaml: bool) -> None:
    """Print the effective config: every threshold with its value, unit and meaning.

    Overrides, in increasing precedence: dask config ('astrodask:' in a dask YAML
    file, or DASK_ASTRODASK__SECTION__FIELD=value environment variables), --config
    FILE, --set SECTION.FIELD=VALUE.
    """
    import yaml

    config = load_config(config_file, assignments)
    if as_yaml:
        click.echo(yaml.safe_dump({"astrodask": config.to_dict()}, sort_keys=False), nl=False)
        return
    rows = describe(config)
    width = max(len(key) for key, *_ in rows)
    for key, value, unit, doc in rows:
        click.echo(f"{key:<{width}}  {value!s:<12} {unit:<10} {doc}")


@main.command("info")
@click.argument("files", nargs=-1, required=True, type=click.Path())
@pointing_options
@config_options
@logging_options
def info_cmd(files: tuple[str, ...], ra: float | None, dec: float | None, scale: float | None,
             rotation: float | None, parity: int | None, config_file: str | None,
             assignments: tuple[str, ...], verbose: int, quiet: bool) -> None:
    """Show what astrodask reads from exposures, and where each value came from.

    Image HDU, shape, pointing (header WCS, DSS plate solution, RA/DEC keywords or
    --ra/--dec), plate scale, epoch, exposure time, gain and saturation level.
    The pixels are not decoded.
    """
    from astrodask.exposure import get_pointing, read_exposure_info

    _configure_logging(verbose, quiet)
    config = load_config(config_file, assignments)

    def one(path: str) -> None:
        info = read_exposure_info(path)
        pointing = get_pointing(info.header, path=path, config=config.pointing,
                                **_pointing_overrides(ra, dec, scale, rotation, parity))
        ny, nx = info.shape
        click.echo(f"{path}: HDU {info.hdu_index}, {nx} x {ny} px")
        click.echo(f"  pointing  RA {pointing.ra_deg:.6f}  Dec {pointing.dec_deg:+.6f} deg  "
                   f"scale {pointing.scale_arcsec:.4f}\"/px  rotation {pointing.rotation_deg:.3f} deg  "
                   f"parity {pointing.parity:+d}  (from {pointing.source})")
        click.echo(f"  epoch     {info.epoch_yr if info.epoch_yr is None else f'{info.epoch_yr:.5f}'}"
                   f"  exptime {info.exptime_s}  gain {info.gain}  saturate {info.saturate_adu}")
        detect = config.detect
        sources = {
            "pointing": pointing.source + (f"; {pointing.detail}" if pointing.detail else ""),
            "scale": pointing.scale_source,
            "epoch": info.provenance["epoch"],
            "exptime": info.provenance["exptime"],
            "gain": info.provenance["gain"] if info.gain is not None
            else f"{info.provenance['gain']}: config detect.default_gain = {detect.default_gain:g} e-/ADU",
            "saturate": info.provenance["saturate"] if info.saturate_adu is not None
            else f"{info.provenance['saturate']}: config detect.default_saturation_adu = "
                 f"{detect.default_saturation_adu:g} ADU",
        }
        click.echo("  from")
        for name, source in sources.items():
            click.echo(f"    {name + ':':<10}{source}")

    _for_each(files, one)


@main.command("detect")
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("--out", "out", type=click.Path(), default=None,
              help="Output table (one file), or folder (several files; default: beside each input).")
@click.option("--format", "fmt", type=click.Choice(["ecsv", "parquet"]), default="ecsv", show_default=True,
              help="Table format when --out is a folder or absent.")
@click.option("--depth", is_flag=True, help="Use the relaxed depth-match pass (detect.depth) instead of detect.first.")
@click.option("--hdu", type=int, default=None, help="Index of the image HDU (default: the first 2-D image).")
@config_options
@logging_options
def detect_cmd(files: tuple[str, ...], out: str | None, fmt: str, depth: bool, hdu: int | None,
               config_file: str | None, assignments: tuple[str, ...], verbose: int, quiet: bool) -> None:
    """Detect the sources of exposures (get_image_ij) and write their tables.

    Each table has windowed centroids i, j (0-based pixels), their covariance
    var_i, var_j, var_ij (px^2), flux_adu and flags (1 saturated, 2 blended,
    4 edge, 8 windowed centroid failed); its metadata records the effective config.
    """
    from astrodask.detect import detect_exposure
    from astrodask.exposure import read_exposure

    _configure_logging(verbose, quiet)
    config = load_config(config_file, assignments)
    suffix = ".sources.parquet" if fmt == "parquet" else ".sources.ecsv"
    single_out = out is not None and len(files) == 1 and Path(out).suffix.lower() in {".ecsv", ".parquet", ".pq"}

    def one(path: str) -> None:
        started = time.perf_counter()
        exposure = read_exposure(path, hdu=hdu)
        table = detect_exposure(exposure, config=config.detect, depth=depth)
        table.meta["config"] = config.to_dict()
        table.meta["astrodask_version"] = __version__
        if single_out:
            target = Path(out)
        else:
            folder = Path(out) if out else exposure.path.parent
            target = folder / f"{exposure.name}{suffix}"
        write_table(table, target)
        m = table.meta
        click.echo(f"{path}: {m['n_sources']} sources ({m['pass']} pass), background {m['background_adu']:.1f} "
                   f"+- {m['background_rms_adu']:.2f} ADU, FWHM {m.get('winpos_fwhm_px', float('nan')):.2f} px, "
                   f"{m.get('n_saturated', 0)} saturated, {m.get('n_blended', 0)} blended, "
                   f"{m.get('n_edge', 0)} at the edge; {time.perf_counter() - started:.2f} s -> {target}")

    _for_each(files, one)


@main.group("catalog", cls=_Group)
def catalog_group() -> None:
    """Reference catalogs: import and inspect Gaia exports and VizieR I/355 files."""


@catalog_group.command("import")
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("--out", type=click.Path(), default=None,
              help="Write the normalised catalog (archive column names and units) to this ECSV/Parquet file.")
@config_options
@logging_options
def catalog_import_cmd(files: tuple[str, ...], out: str | None, config_file: str | None,
                       assignments: tuple[str, ...], verbose: int, quiet: bool) -> None:
    """Read Gaia catalog files (FITS, VOTable, ECSV, CSV, Parquet; archive or VizieR names).

    Prints rows, sky extent, magnitude range and how many stars lack proper
    motions; with --out, writes the catalog in archive column names and units
    (several files are concatenated).
    """
    from astropy.table import vstack

    from astrodask.gaia import read_catalog

    _configure_logging(verbose, quiet)
    config = load_config(config_file, assignments)
    tables = []

    def one(path: str) -> None:
        table = read_catalog(path, default_ref_epoch=config.gaia.default_ref_epoch)
        tables.append(table)
        mag = np.asarray(table["phot_g_mean_mag"], dtype=float)
        no_pm = ~np.isfinite(np.asarray(table["pmra"], dtype=float))
        click.echo(f"{path}: {len(table)} stars ({table.meta.get('catalog_format')}), "
                   f"RA {np.min(table['ra']):.4f}..{np.max(table['ra']):.4f}, "
                   f"Dec {np.min(table['dec']):+.4f}..{np.max(table['dec']):+.4f} deg, "
                   f"G {np.nanmin(mag):.2f}..{np.nanmax(mag):.2f}, {int(no_pm.sum())} without proper motion")
        for note in table.meta.get("notes", []):
            click.echo(f"  note: {note}")

    _for_each(files, one)
    if out and tables:
        merged = vstack(tables, metadata_conflicts="silent") if len(tables) > 1 else tables[0]
        merged.meta["sources"] = [str(f) for f in files]
        target = write_table(merged, Path(out))
        click.echo(f"wrote {len(merged)} stars to {target}")


@main.command("gaia")
@click.argument("file", type=click.Path())
@click.option("--catalog", type=click.Path(), default=None,
              help="Reference catalog file (Gaia export or VizieR I/355); default: the Gaia tile cache.")
@click.option("--out", type=click.Path(), default=None,
              help="Output table (default: <name>.gaia.ecsv beside the exposure).")
@pointing_options
@config_options
@logging_options
def gaia_cmd(file: str, catalog: str | None, out: str | None, ra: float | None, dec: float | None,
             scale: float | None, rotation: float | None, parity: int | None, config_file: str | None,
             assignments: tuple[str, ...], verbose: int, quiet: bool) -> None:
    """Reference stars for an exposure (get_gaia_xy): footprint + margin, at its epoch.

    Writes the stars with their positions propagated to the exposure's epoch and
    their pixel positions x, y (0-based) through the approximate WCS.
    """
    from astrodask.exposure import approximate_wcs, get_pointing, read_exposure
    from astrodask.gaia import get_gaia_xy, read_catalog

    _configure_logging(verbose, quiet)
    config = load_config(config_file, assignments)
    exposure = read_exposure(file)
    pointing = get_pointing(exposure.header, path=file, config=config.pointing,
                            **_pointing_overrides(ra, dec, scale, rotation, parity))
    reference = read_catalog(catalog, default_ref_epoch=config.gaia.default_ref_epoch) if catalog else None
    stars = get_gaia_xy(approximate_wcs(pointing, exposure.shape), exposure.shape, epoch_yr=exposure.epoch_yr,
                        catalog=reference, config=config.gaia)
    stars.meta["config"] = config.to_dict()
    stars.meta["astrodask_version"] = __version__
    target = write_table(stars, Path(out) if out else exposure.path.parent / f"{exposure.name}.gaia.ecsv")
    click.echo(f"{file}: {len(stars)} reference stars within {stars.meta['footprint_radius_deg']:.3f} deg of "
               f"({stars.meta['footprint_ra_deg']:.4f}, {stars.meta['footprint_dec_deg']:+.4f}), "
               f"{stars.meta['n_in_image']} in the image, epoch {exposure.epoch_yr} -> {target}")


@main.command("simulate")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--name", default="sim", show_default=True, help="Exposure name (files <name>.fits.fz, ...).")
@click.option("--ra", "ra_deg", type=float, default=150.1, show_default=True, help="Field centre RA, degrees.")
@click.option("--dec", "dec_deg", type=float, default=2.2, show_default=True, help="Field centre Dec, degrees.")
@click.option("--width", type=int, default=9576, show_default=True, help="Image width, px.")
@click.option("--height", type=int, default=6388, show_default=True, help="Image height, px.")
@click.option("--scale", type=float, default=0.85, show_default=True, help="Plate scale, arcsec/px.")
@click.option("--rotation", type=float, default=0.0, show_default=True, help="Rotation, degrees east of north.")
@click.option("--flip", is_flag=True, help="Mirrored image (parity -1).")
@click.option("--distortion", type=float, default=4.0, show_default=True, help="TPV distortion at the corners, px.")
@click.option("--density", type=float, default=2500.0, show_default=True,
              help="Stars brighter than --mag-limit per square degree.")
@click.option("--mag-limit", type=float, default=20.0, show_default=True, help="Faintest G of the catalog.")
@click.option("--catalog", type=click.Path(), default=None,
              help="Render a real catalog (Gaia export or VizieR I/355) instead of a synthetic one.")
@click.option("--epoch", type=float, default=2024.5, show_default=True, help="Epoch of the exposure, Julian years.")
@click.option("--pointing-error", type=float, default=3.0, show_default=True,
              help="Error of the approximate header's pointing, arcmin.")
@click.option("--rotation-error", type=float, default=0.5, show_default=True, help="Its rotation error, degrees.")
@click.option("--scale-error", type=float, default=0.003, show_default=True, help="Its fractional scale error.")
@click.option("--header-style", type=click.Choice(["wcs", "keywords"]), default="wcs", show_default=True,
              help="Approximate TAN WCS in the header, or only RA/DEC keywords.")
@click.option("--seed", type=int, default=1, show_default=True, help="Random seed (same seed, same files).")
@logging_options
def simulate_cmd(out_dir: str, name: str, ra_deg: float, dec_deg: float, width: int, height: int, scale: float,
                 rotation: float, flip: bool, distortion: float, density: float, mag_limit: float,
                 catalog: str | None, epoch: float, pointing_error: float, rotation_error: float,
                 scale_error: float, header_style: str, seed: int, verbose: int, quiet: bool) -> None:
    """Render a Condor-like exposure with an exact TAN + TPV truth (default: a full 9576 x 6388 frame).

    Writes OUT_DIR/<name>.fits.fz (approximate header), <name>_gaia.ecsv (the
    reference catalog, Gaia archive columns), <name>.truth.wcs.fits (the exact
    WCS) and <name>.truth.ecsv (every rendered star's true pixel position).
    """
    from astrodask.gaia import read_catalog
    from astrodask.simulate import simulate_field

    _configure_logging(verbose, quiet)
    started = time.perf_counter()
    field = simulate_field(
        out_dir, name, ra_deg=ra_deg, dec_deg=dec_deg, rng=np.random.default_rng(seed), shape=(height, width),
        scale_arcsec=scale, rotation_deg=rotation, parity=-1 if flip else 1, distortion_px=distortion,
        epoch_yr=epoch, catalog=read_catalog(catalog) if catalog else None, density_per_deg2=density,
        mag_limit=mag_limit, header_style=header_style, pointing_error_arcmin=pointing_error,
        rotation_error_deg=rotation_error, scale_error_frac=scale_error)
    in_frame = int(np.count_nonzero(field.truth["in_frame"]))
    click.echo(f"simulated {width} x {height} px at ({ra_deg}, {dec_deg:+}) with {in_frame} stars in the frame "
               f"in {time.perf_counter() - started:.1f} s:")
    for path in (field.paths.image, field.catalog_path, field.paths.truth_wcs, field.paths.truth_table):
        click.echo(f"  {path}")


@main.command("demo")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=DEMO_DIR, show_default=True,
              help="Folder for the demo exposure, its Gaia tiles, truth and results.")
@click.option("--serial", is_flag=True, help="Solve in this process, without Dask.")
@click.option("--workers", type=int, default=None,
              help="Worker processes of the embedded LocalCluster (default: one per core).")
@config_options
@logging_options
def demo_cmd(out_dir: str, serial: bool, workers: int | None, config_file: str | None, assignments: tuple[str, ...],
             verbose: int, quiet: bool) -> None:
    """Solve the embedded demo exposure end to end, with no network.

    Simulates the demo exposure (a Condor-like 2394 x 1597 px quarter frame with a
    known TAN + TPV truth and a header 3 arcmin off) and its Gaia stars, imports the
    stars into the demo's own tile cache (OUT/gaia-tiles: the synthetic stars never
    enter your real cache), solves the exposure on an embedded LocalCluster reading
    that cache (as 'astrodask submit' does), writes the solution, the summary, the
    matched list and a residual plot, and scores the solved WCS against the truth.
    """
    import dataclasses
    import warnings

    from astropy.io import fits
    from astropy.wcs import WCS, FITSFixedWarning

    from astrodask.cache import TileCache, import_catalog
    from astrodask.exposure import read_exposure_info
    from astrodask.simulate import make_demo, read_truth_wcs
    from astrodask.types import exposure_name
    from astrodask.wcsutil import wcs_error_mas

    _configure_logging(verbose, quiet)
    config = load_config(config_file, assignments)
    # the demo's cache holds the simulated stars only: never ask the archive for more
    config = dataclasses.replace(config, gaia=dataclasses.replace(config.gaia, fetch_missing_tiles=False))
    out = Path(out_dir)
    stage = time.perf_counter()
    field = make_demo(out)
    click.echo(f"demo exposure simulated in {time.perf_counter() - stage:.1f} s: {field.image_path}")
    cache = TileCache(out / DEMO_CACHE)
    written = import_catalog(cache, field.catalog_path, overwrite=True)
    click.echo(f"demo Gaia stars imported into the demo tile cache {cache.url}: {len(written)} tiles, "
               f"{sum(written.values())} stars")
    if serial:
        ok = _solve_and_write([str(field.image_path)], catalog=None, config=config, out=out, pointing={},
                              write_header=False, debug=True, cache_url=cache.url)[0].ok
    else:
        rows = _run_on_cluster([field.image_path], catalog=None, out=out, config=config, pointing={}, debug=True,
                               write_header=False, scheduler=None, scheduler_file=None, workers=workers,
                               detach=False, retries=0, cache_url=cache.url)
        ok = bool(rows) and rows[0]["status"] == "solved"
    if ok:
        with warnings.catch_warnings():  # the solution header describes the image without holding it
            warnings.simplefilter("ignore", FITSFixedWarning)
            solved = WCS(fits.getheader(out / f"{exposure_name(field.image_path)}.wcs.fits"))
        err = wcs_error_mas(solved, read_truth_wcs(field.image_path), read_exposure_info(field.image_path).shape)
        click.echo(f"against the truth WCS (grid every 100 px over the image): rms {np.sqrt(np.mean(err**2)):.2f} mas, "
                   f"95th percentile {np.percentile(err, 95):.2f} mas, max {err.max():.2f} mas")
    click.echo(f"files: {out.resolve()}")
    if not ok:
        raise SystemExit(1)


def _solve_and_write(files: Sequence[str], *, catalog, config: PipelineConfig, out: Path,
                     pointing: dict[str, Any], write_header: bool, debug: bool, cache_url: str | None = None) -> list:
    """Solve files one after the other; write each solution, the summary and (debug) matched lists and plots."""
    from astrodask.backlog import assemble_summary, write_status
    from astrodask.output import summary_row, write_debug_products, write_header_copy, write_solution
    from astrodask.solve import solve_file

    results = []
    for index, path in enumerate(files, start=1):
        started = time.perf_counter()
        result = solve_file(path, catalog=catalog, config=config, pointing=pointing, cache_url=cache_url)
        results.append(result)
        written = []
        if result.solution is not None and result.ok:
            written.append(write_solution(result, out))
            if write_header:
                written.append(write_header_copy(result, out))
        if debug:
            written += write_debug_products(result, out)
        write_status(summary_row(result), out)
        assemble_summary(out)
        prefix = f"[{index}/{len(files)}] " if len(files) > 1 else ""
        if result.ok:
            q, m = result.quality, result.error_model
            click.echo(f"{prefix}{path}: solved in {time.perf_counter() - started:.1f} s: {result.n_matches} matches "
                       f"({result.counts.get('regions_ok', 0)}/{len(result.regions)} regions), rms "
                       f"({result.rms_arcsec[0] * 1000:.1f}, {result.rms_arcsec[1] * 1000:.1f}) mas, "
                       f"chi2/dof {q.chi2_dof:.3f} (dof {q.dof}), error model: scale {m.scale:.3f}, "
                       f"floor {m.floor_mas:.1f} mas")
        else:
            click.echo(f"{prefix}{path}: FAILED at {result.stage}: {result.reason}", err=True)
        for p in written:
            click.echo(f"  {p}")
    return results


def cache_option(func: Callable) -> Callable:
    """--cache URL and --no-cache: where reference stars come from when there is no --catalog."""
    func = click.option("--no-cache", "no_cache", is_flag=True,
                        help="Query the Gaia archive directly for each exposure instead of using the tile cache.")(func)
    return click.option("--cache", "cache_url", default=None, metavar="URL",
                        help="The Gaia tile cache: a folder, or an fsspec URL such as s3://bucket/tiles that every "
                             "worker reaches (default: gaia.cache_url, else the user cache folder). Tiles it lacks "
                             "are filled from the archive unless gaia.fetch_missing_tiles is false; fill them "
                             "beforehand with 'astrodask cache prefetch'.")(func)


def _cache_for_solve(catalog: str | None, cache_url: str | None, no_cache: bool, config: PipelineConfig) -> str | None:
    """The tile cache a solve reads (a canonical location), or None (a catalog file, or the archive directly)."""
    if catalog:
        if cache_url:
            raise click.UsageError("give --catalog or --cache, not both")
        return None
    if no_cache:
        if cache_url:
            raise click.UsageError("give --cache or --no-cache, not both")
        return None
    return _cache_location(cache_url, config)


def _cache_location(url: str | None, config: PipelineConfig | None) -> str:
    """--cache URL, else gaia.cache_url, else the user cache folder: canonical (see cache_location)."""
    from astrodask.cache import cache_location

    return cache_location(url or (config.gaia.cache_url if config else "") or None)


def _remember_cluster(ctx: click.Context, param: click.Parameter, value: str) -> str:
    ctx.meta["astrodask.cluster"] = value
    return value


def _on_kubernetes(scheduler: str | None, scheduler_file: str | None) -> bool:
    """True for --cluster kubernetes (astrodask/kube.py); refused beside --scheduler/--scheduler-file."""
    kubernetes = click.get_current_context().meta.get("astrodask.cluster") == "kubernetes"
    if kubernetes and (scheduler or scheduler_file):
        raise click.UsageError("--cluster kubernetes finds its scheduler itself: drop --scheduler/--scheduler-file")
    return kubernetes


def cluster_options(func: Callable) -> Callable:
    """--scheduler ADDRESS, --scheduler-file FILE, --workers N, --cluster local|kubernetes."""
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


def _print_row(done: int, total: int, row: dict[str, Any]) -> None:
    prefix = f"[{done}/{total}] "
    if row["status"] == "solved":
        click.echo(f"{prefix}{row['file']}: solved: {row['matches']} matches, rms ({row['rms_xi_arcsec'] * 1000:.1f}, "
                   f"{row['rms_eta_arcsec'] * 1000:.1f}) mas, chi2/dof {row['chi2_dof']:.3f}")
    else:
        click.echo(f"{prefix}{row['file']}: FAILED at {row['stage']}: {row['reason']}", err=True)


def _run_on_cluster(paths: Sequence[Path], *, catalog: str | None, out: Path, config: PipelineConfig,
                    pointing: dict[str, Any], debug: bool, write_header: bool, scheduler: str | None,
                    scheduler_file: str | None, workers: int | None, detach: bool, retries: int,
                    cache_url: str | None = None) -> list[dict]:
    from astrodask.backlog import assemble_summary
    from astrodask.runner import connect, submit_backlog

    out.mkdir(parents=True, exist_ok=True)
    with connect(scheduler=scheduler, scheduler_file=scheduler_file, n_workers=workers,
                 kubernetes=_on_kubernetes(scheduler, scheduler_file)) as connection:
        if detach and connection.embedded:
            raise click.ClickException("--detach needs a running scheduler (--scheduler, --scheduler-file or "
                                       "DASK_SCHEDULER_ADDRESS): the embedded cluster ends with the command")
        where = "embedded LocalCluster" if connection.embedded else "scheduler"
        click.echo(f"{where} {connection.address}; dashboard: {connection.dashboard}")
        rows = submit_backlog(connection, paths, out_dir=out, config=config, catalog_path=catalog, pointing=pointing,
                              debug=debug, write_header=write_header, retries=retries, detach=detach,
                              on_row=_print_row, cache_url=cache_url)
    if detach:
        click.echo(f"submitted {len(paths)} exposures; the work goes on after this command. "
                   f"Follow it with: astrodask status --out {out}")
        return []
    assemble_summary(out)
    return rows


@main.command("solve")
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("--catalog", type=click.Path(), default=None,
              help="Reference catalog file (Gaia export or VizieR I/355); default: the Gaia tile cache.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="astrodask-out", show_default=True,
              help="Output folder: <name>.wcs.fits per exposure and summary.ecsv.")
@click.option("--write-header", is_flag=True, help="Also write a copy of each exposure with the solved WCS.")
@click.option("--debug", is_flag=True, help="Keep the matched lists (<name>.matched.ecsv) and residual plots; a "
              "failed exposure leaves <name>.diagnostics.json and .png (detections, Gaia stars, regions, attempts).")
@click.option("--serial", is_flag=True, help="Solve in this process, one exposure after the other, without Dask.")
@cache_option
@cluster_options
@pointing_options
@config_options
@logging_options
def solve_cmd(files: tuple[str, ...], catalog: str | None, out_dir: str, write_header: bool, debug: bool,
              serial: bool, cache_url: str | None, no_cache: bool, scheduler: str | None, scheduler_file: str | None,
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
    is 3 when some failed.
    """
    from astrodask.gaia import read_catalog

    _configure_logging(verbose, quiet)
    config = load_config(config_file, assignments)
    pointing = _pointing_overrides(ra, dec, scale, rotation, parity)
    cache_url = _cache_for_solve(catalog, cache_url, no_cache, config)
    out = Path(out_dir)
    if serial:
        reference = read_catalog(catalog, default_ref_epoch=config.gaia.default_ref_epoch) if catalog else None
        results = _solve_and_write(files, catalog=reference, config=config, out=out, pointing=pointing,
                                   write_header=write_header, debug=debug, cache_url=cache_url)
        statuses = [r.status for r in results]
    else:
        from astrodask.backlog import expand_inputs

        paths = expand_inputs(files)
        rows = _run_on_cluster(paths, catalog=catalog, out=out, config=config, pointing=pointing, debug=debug,
                               write_header=write_header, scheduler=scheduler, scheduler_file=scheduler_file,
                               workers=workers, detach=False, retries=0, cache_url=cache_url)
        statuses = [row["status"] for row in rows]
    failed = sum(s != "solved" for s in statuses)
    click.echo(f"{len(statuses) - failed} of {len(statuses)} solved; summary: {out / 'summary.ecsv'}")
    if failed:
        raise SystemExit(EXIT_PARTIAL if failed < len(statuses) else 1)


@main.command("submit")
@click.argument("items", nargs=-1, required=True)
@click.option("--catalog", type=click.Path(), default=None,
              help="Reference catalog file, readable by every worker; default: the Gaia tile cache.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Output folder shared by the workers.")
@click.option("--detach", is_flag=True, help="Return once submitted; the work goes on on the cluster.")
@click.option("--redo", is_flag=True, help="Solve again exposures whose solution already exists.")
@click.option("--recursive", is_flag=True, help="Search directories and ** globs recursively.")
@click.option("--retries", type=int, default=2, show_default=True, help="Retries of a task after an unexpected error.")
@click.option("--write-header", is_flag=True, help="Also write a copy of each exposure with the solved WCS.")
@click.option("--debug", is_flag=True, help="Keep the matched lists and residual plots.")
@cache_option
@cluster_options
@pointing_options
@config_options
@logging_options
def submit_cmd(items: tuple[str, ...], catalog: str | None, out_dir: str, detach: bool, redo: bool, recursive: bool,
               retries: int, write_header: bool, debug: bool, cache_url: str | None, no_cache: bool,
               scheduler: str | None, scheduler_file: str | None,
               workers: int | None, ra: float | None, dec: float | None, scale: float | None,
               rotation: float | None, parity: int | None, config_file: str | None, assignments: tuple[str, ...],
               verbose: int, quiet: bool) -> None:
    """Submit a survey backlog to a Dask scheduler (replaces the old dask-submit).

    ITEMS are exposure files, glob patterns ('night1/*.fits.fz'), directories, or
    @LIST files holding one path or glob per line. Exposures whose solution exists
    in --out are skipped (--redo solves them again). Waits with progress and a
    final summary, or --detach. Follow a backlog with 'astrodask status --out DIR'.
    """
    from astrodask.backlog import (backlog_status, expand_inputs, format_status, plan_backlog, read_manifest,
                                   write_manifest)

    _configure_logging(verbose, quiet)
    config = load_config(config_file, assignments)
    pointing = _pointing_overrides(ra, dec, scale, rotation, parity)
    cache_url = _cache_for_solve(catalog, cache_url, no_cache, config)
    out = Path(out_dir)
    paths = expand_inputs(items, recursive=recursive)
    plan = plan_backlog(paths, out, redo=redo)
    write_manifest(paths, out)
    click.echo(f"{len(paths)} exposures: {len(plan.done)} already solved (skipped), {len(plan.todo)} to solve")
    rows = []
    if plan.todo:
        rows = _run_on_cluster(plan.todo, catalog=catalog, out=out, config=config, pointing=pointing, debug=debug,
                               write_header=write_header, scheduler=scheduler, scheduler_file=scheduler_file,
                               workers=workers, detach=detach, retries=retries, cache_url=cache_url)
    if detach:
        return
    click.echo(f"output folder {out}: " + format_status(backlog_status(out, inputs=read_manifest(out))))
    failed = sum(row["status"] != "solved" for row in rows)
    if failed:
        raise SystemExit(EXIT_PARTIAL if failed < len(rows) else 1)


@main.command("status")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="The backlog's output folder.")
@logging_options
def status_cmd(out_dir: str, verbose: int, quiet: bool) -> None:
    """Summarise a backlog from its output folder: done, failed (with reasons), pending."""
    from astrodask.backlog import assemble_summary, backlog_status, format_status, read_manifest

    _configure_logging(verbose, quiet)
    out = Path(out_dir)
    if not out.is_dir():
        raise click.ClickException(f"{out}: no such output folder")
    status = backlog_status(out, inputs=read_manifest(out))
    click.echo(format_status(status))
    assemble_summary(out)


@main.command("task")
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

    from astrodask.gaia import read_catalog

    _configure_logging(verbose, quiet)
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
    results = _solve_and_write([filename], catalog=reference, config=config, out=out, pointing={},
                               write_header=False, debug=False,
                               cache_url=_cache_for_solve(catalog, None, False, config))
    if not results[0].ok:
        raise SystemExit(1)


@main.group("cache", cls=_Group)
def cache_group() -> None:
    """The shared Gaia tile cache: HEALPix level-6 tiles in zarr, in a folder or any fsspec store."""


def _cache(url: str | None, config: PipelineConfig | None = None):
    from astrodask.cache import TileCache

    return TileCache(_cache_location(url, config))


def _cache_url_option(func: Callable) -> Callable:
    return click.option("--cache", "cache_url", default=None, metavar="URL",
                        help="The tile cache: a folder or an fsspec URL such as s3://bucket/tiles (default: "
                             "gaia.cache_url, else the user cache folder, $XDG_CACHE_HOME/astrodask/gaia-tiles).")(func)


@cache_group.command("import")
@click.argument("files", nargs=-1, required=True, type=click.Path())
@_cache_url_option
@click.option("--overwrite", is_flag=True, help="Rewrite tiles that are already complete.")
@config_options
@logging_options
def cache_import_cmd(files: tuple[str, ...], cache_url: str | None, overwrite: bool, config_file: str | None,
                     assignments: tuple[str, ...], verbose: int, quiet: bool) -> None:
    """Fill the tile cache from Gaia catalog files (Gaia exports or VizieR I/355).

    Tiles the files cover only in part are marked partial; a later complete fill replaces them.
    """
    from astrodask.cache import import_catalog
    from astrodask.gaia import read_catalog

    _configure_logging(verbose, quiet)
    config = load_config(config_file, assignments)
    cache = _cache(cache_url, config)

    def one(path: str) -> None:
        started = time.perf_counter()
        written = import_catalog(cache, read_catalog(path, default_ref_epoch=config.gaia.default_ref_epoch),
                                 overwrite=overwrite)
        click.echo(f"{path}: {len(written)} tiles written ({sum(written.values())} stars) into {cache.url} "
                   f"in {time.perf_counter() - started:.1f} s")

    _for_each(files, one)


@cache_group.command("info")
@_cache_url_option
@config_options
@logging_options
def cache_info_cmd(cache_url: str | None, config_file: str | None, assignments: tuple[str, ...], verbose: int,
                   quiet: bool) -> None:
    """List the complete tiles of the cache with their rows and bytes, and any incomplete ones."""
    _configure_logging(verbose, quiet)
    cache = _cache(cache_url, load_config(config_file, assignments))
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
@click.option("--retries", type=int, default=2, show_default=True,
              help="Retries of a tile task after an unexpected error.")
@_cache_url_option
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
    from astrodask.backlog import expand_inputs
    from astrodask.cache import tiles_for_field
    from astrodask.exposure import read_exposure_info
    from astrodask.runner import connect, prefetch_tiles
    from astrodask.solve import footprint_tiles

    _configure_logging(verbose, quiet)
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
    location = _cache_location(cache_url, config)
    click.echo(f"{len(tiles)} tiles needed" + (f" by {len(paths) - len(bad)} exposures" if paths else "")
               + f"; cache {location}")
    records: list[dict[str, Any]] = []
    if tiles:
        def show(done: int, total: int, record: dict[str, Any]) -> None:
            name = record.get("tile_name", record["tile"])
            if record["state"] == "failed":
                click.echo(f"[{done}/{total}] tile {name}: FAILED: {record['reason']}", err=True)
            elif record["state"] == "filled":
                click.echo(f"[{done}/{total}] tile {name}: filled, {record['rows']} stars in {record['seconds']:.1f} s "
                           f"(was {record['reason']})")
            elif not quiet:
                click.echo(f"[{done}/{total}] tile {name}: present, {record['rows']} stars")

        started = time.perf_counter()
        with connect(scheduler=scheduler, scheduler_file=scheduler_file, n_workers=workers,
                     kubernetes=_on_kubernetes(scheduler, scheduler_file)) as connection:
            where = "embedded LocalCluster" if connection.embedded else "scheduler"
            click.echo(f"{where} {connection.address}; dashboard: {connection.dashboard}")
            records = prefetch_tiles(connection, sorted(tiles), cache_url=location, config=config, retries=retries,
                                     on_tile=show)
        counts = {state: sum(r["state"] == state for r in records) for state in ("present", "filled", "failed")}
        click.echo(f"{len(records)} tiles in {time.perf_counter() - started:.1f} s: {counts['present']} present, "
                   f"{counts['filled']} filled ({sum(r['rows'] for r in records if r['state'] == 'filled')} stars), "
                   f"{counts['failed']} failed")
    failures = bad + [f"tile {r.get('tile_name', r['tile'])}: {r['reason']}" for r in records if r["state"] == "failed"]
    if failures:
        raise SystemExit(EXIT_PARTIAL if len(failures) < len(records) + len(paths) else 1)


def _for_each(files: Sequence[str], one: Callable[[str], None]) -> None:
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


if __name__ == "__main__":  # pragma: no cover
    main()
