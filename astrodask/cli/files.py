"""Commands that read exposures and catalogs and write tables: ``config``, ``info``, ``detect``,
``catalog import`` and ``gaia``."""

from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np

from astrodask import __version__
from astrodask.cli.options import (AstrodaskGroup, config_options, configure_logging, for_each, load_config,
                                   logging_options, pointing_options, pointing_overrides, write_table)
from astrodask.config import describe


@click.command("config")
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


@click.command("info")
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
    from astrodask.io.exposure import get_pointing, read_exposure_info

    configure_logging(verbose, quiet)
    config = load_config(config_file, assignments)

    def one(path: str) -> None:
        info = read_exposure_info(path)
        pointing = get_pointing(info.header, path=path, config=config.pointing,
                                **pointing_overrides(ra, dec, scale, rotation, parity))
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

    for_each(files, one)


@click.command("detect")
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
    from astrodask.solve.detect import detect_exposure
    from astrodask.io.exposure import read_exposure

    configure_logging(verbose, quiet)
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

    for_each(files, one)


@click.group("catalog", cls=AstrodaskGroup)
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

    from astrodask.reference.catalog import read_catalog

    configure_logging(verbose, quiet)
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

    for_each(files, one)
    if out and tables:
        merged = vstack(tables, metadata_conflicts="silent") if len(tables) > 1 else tables[0]
        merged.meta["sources"] = [str(f) for f in files]
        target = write_table(merged, Path(out))
        click.echo(f"wrote {len(merged)} stars to {target}")


@click.command("gaia")
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
    from astrodask.io.exposure import approximate_wcs, get_pointing, read_exposure
    from astrodask.reference.catalog import read_catalog
    from astrodask.reference.footprint import get_gaia_xy

    configure_logging(verbose, quiet)
    config = load_config(config_file, assignments)
    exposure = read_exposure(file)
    pointing = get_pointing(exposure.header, path=file, config=config.pointing,
                            **pointing_overrides(ra, dec, scale, rotation, parity))
    reference = read_catalog(catalog, default_ref_epoch=config.gaia.default_ref_epoch) if catalog else None
    stars = get_gaia_xy(approximate_wcs(pointing, exposure.shape), exposure.shape, epoch_yr=exposure.epoch_yr,
                        catalog=reference, config=config.gaia)
    stars.meta["config"] = config.to_dict()
    stars.meta["astrodask_version"] = __version__
    target = write_table(stars, Path(out) if out else exposure.path.parent / f"{exposure.name}.gaia.ecsv")
    click.echo(f"{file}: {len(stars)} reference stars within {stars.meta['footprint_radius_deg']:.3f} deg of "
               f"({stars.meta['footprint_ra_deg']:.4f}, {stars.meta['footprint_dec_deg']:+.4f}), "
               f"{stars.meta['n_in_image']} in the image, epoch {exposure.epoch_yr} -> {target}")



#: The commands of this module, registered on ``astrodask`` by :mod:`astrodask.cli`.
COMMANDS = (config_cmd, info_cmd, detect_cmd, catalog_group, gaia_cmd)
