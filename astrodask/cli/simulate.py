"""Simulated exposures: ``simulate`` (one field with an exact truth) and ``demo`` (simulate, solve, score).

The defaults of ``simulate`` are the simulator's own constants, read when first needed
(:class:`~astrodask.cli.options.LazyDefault`): ``astrodask --help`` does not import the simulator.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from astrodask.cli.options import (LazyDefault, LazyDefaultOption, config_options, configure_logging, load_config,
                                   logging_options)
from astrodask.cli.solve import run_on_cluster, solve_and_write

#: Default output folder of ``astrodask demo``.
DEMO_DIR = "astrodask-demo"
#: The demo's own tile cache, inside its output folder.
DEMO_CACHE = "gaia-tiles"


def simulator_default(name: str, index: int | None = None) -> LazyDefault:
    """The constant ``name`` of :mod:`astrodask.simulate` (its item ``index``), imported when first needed."""

    def read() -> Any:
        from astrodask import simulate as sim

        value = getattr(sim, name)
        return value if index is None else value[index]

    return LazyDefault(read)


def simulator_option(*decls: str, default: LazyDefault, **kwargs: Any) -> Any:
    """A ``simulate`` option whose default (shown in ``--help``) is the simulator's."""
    return click.option(*decls, cls=LazyDefaultOption, default=default, show_default=True, **kwargs)


@click.command("simulate")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--name", default="sim", show_default=True, help="Exposure name (files <name>.fits.fz, ...).")
@simulator_option("--ra", "ra_deg", type=float, default=simulator_default("DEMO_RA_DEG"),
                  help="Field centre RA, degrees.")
@simulator_option("--dec", "dec_deg", type=float, default=simulator_default("DEMO_DEC_DEG"),
                  help="Field centre Dec, degrees.")
@simulator_option("--width", type=int, default=simulator_default("CONDOR_SHAPE", 1), help="Image width, px.")
@simulator_option("--height", type=int, default=simulator_default("CONDOR_SHAPE", 0), help="Image height, px.")
@simulator_option("--scale", type=float, default=simulator_default("CONDOR_SCALE_ARCSEC"),
                  help="Plate scale, arcsec/px.")
@click.option("--rotation", type=float, default=0.0, show_default=True, help="Rotation, degrees east of north.")
@click.option("--flip", is_flag=True, help="Mirrored image (parity -1).")
@simulator_option("--distortion", type=float, default=simulator_default("DEFAULT_DISTORTION_PX"),
                  help="TPV distortion at the corners, px.")
@simulator_option("--density", type=float, default=simulator_default("DEFAULT_STAR_DENSITY_PER_DEG2"),
                  help="Stars brighter than --mag-limit per square degree.")
@simulator_option("--mag-limit", type=float, default=simulator_default("DEFAULT_MAG_LIMIT"),
                  help="Faintest G of the catalog.")
@click.option("--catalog", type=click.Path(), default=None,
              help="Render a real catalog (Gaia export or VizieR I/355) instead of a synthetic one.")
@simulator_option("--epoch", type=float, default=simulator_default("DEFAULT_EPOCH_YR"),
                  help="Epoch of the exposure, Julian years.")
@simulator_option("--pointing-error", type=float, default=simulator_default("DEFAULT_POINTING_ERROR_ARCMIN"),
                  help="Error of the approximate header's pointing, arcmin.")
@simulator_option("--rotation-error", type=float, default=simulator_default("DEFAULT_ROTATION_ERROR_DEG"),
                  help="Its rotation error, degrees.")
@simulator_option("--scale-error", type=float, default=simulator_default("DEFAULT_SCALE_ERROR_FRAC"),
                  help="Its fractional scale error.")
@click.option("--header-style", type=click.Choice(["wcs", "keywords"]), default="wcs", show_default=True,
              help="Approximate TAN WCS in the header, or only RA/DEC keywords.")
@click.option("--seed", type=int, default=1, show_default=True, help="Random seed (same seed, same files).")
@click.option("--turbulence-mas", type=float, default=0.0, show_default=True,
              help="Atmospheric displacement of the stars, mas rms per axis (curl-free, von Karman; 0: none).")
@simulator_option("--turbulence-scale-arcmin", type=float, default=simulator_default("DEFAULT_OUTER_SCALE_ARCMIN"),
                  help="Outer scale of the atmospheric displacement, arcmin.")
@logging_options
def simulate_cmd(out_dir: str, name: str, ra_deg: float, dec_deg: float, width: int, height: int, scale: float,
                 rotation: float, flip: bool, distortion: float, density: float, mag_limit: float,
                 catalog: str | None, epoch: float, pointing_error: float, rotation_error: float,
                 scale_error: float, header_style: str, seed: int, turbulence_mas: float,
                 turbulence_scale_arcmin: float, verbose: int, quiet: bool) -> None:
    """Render a Condor-like exposure with an exact TAN + TPV truth (default: a full 9576 x 6388 frame).

    Writes OUT_DIR/<name>.fits.fz (approximate header), <name>_gaia.ecsv (the
    reference catalog, Gaia archive columns), <name>.truth.wcs.fits (the exact
    WCS) and <name>.truth.ecsv (every rendered star's true pixel position).
    With --turbulence-mas, the stars are displaced by a seeded atmospheric field
    written beside the truth WCS (astrodask.simulate.read_truth reads both).
    """
    from astrodask.reference.catalog import read_catalog
    from astrodask.simulate import TurbulenceSpec, simulate_field

    configure_logging(verbose, quiet)
    started = time.perf_counter()
    turbulence = (TurbulenceSpec(rms_mas=turbulence_mas, outer_scale_arcmin=turbulence_scale_arcmin, seed=seed)
                  if turbulence_mas > 0 else None)
    field = simulate_field(
        out_dir, name, ra_deg=ra_deg, dec_deg=dec_deg, rng=np.random.default_rng(seed), shape=(height, width),
        scale_arcsec=scale, rotation_deg=rotation, parity=-1 if flip else 1, distortion_px=distortion,
        epoch_yr=epoch, catalog=read_catalog(catalog) if catalog else None, density_per_deg2=density,
        mag_limit=mag_limit, header_style=header_style, pointing_error_arcmin=pointing_error,
        rotation_error_deg=rotation_error, scale_error_frac=scale_error, turbulence=turbulence)
    in_frame = int(np.count_nonzero(field.truth["in_frame"]))
    click.echo(f"simulated {width} x {height} px at ({ra_deg}, {dec_deg:+}) with {in_frame} stars in the frame "
               f"in {time.perf_counter() - started:.1f} s"
               + (f", turbulence {turbulence_mas:g} mas rms per axis, outer scale {turbulence_scale_arcmin:g}'"
                  if turbulence else "") + ":")
    for path in (field.paths.image, field.catalog_path, field.paths.truth_wcs, field.paths.truth_table):
        click.echo(f"  {path}")


@click.command("demo")
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

    from astrodask.reference.fill import import_catalog
    from astrodask.reference.store import TileCache
    from astrodask.io.exposure import read_exposure_info
    from astrodask.io.output import solution_path
    from astrodask.simulate import make_demo, read_truth_wcs
    from astrodask.types import SOLVED, exposure_name
    from astrodask.wcsutil import wcs_error_mas

    configure_logging(verbose, quiet)
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
        ok = solve_and_write([str(field.image_path)], catalog=None, config=config, out=out, pointing={},
                             write_header=False, debug=True, cache_url=cache.url)[0].ok
    else:
        rows = run_on_cluster([field.image_path], catalog=None, out=out, config=config, pointing={}, debug=True,
                              write_header=False, scheduler=None, scheduler_file=None, workers=workers,
                              detach=False, retries=0, cache_url=cache.url)
        ok = bool(rows) and rows[0]["status"] == SOLVED
    if ok:
        with warnings.catch_warnings():  # the solution header describes the image without holding it
            warnings.simplefilter("ignore", FITSFixedWarning)
            with fits.open(solution_path(out, exposure_name(field.image_path))) as hdul:  # lookup tables, if any
                solved = WCS(hdul[0].header, hdul)
        err = wcs_error_mas(solved, read_truth_wcs(field.image_path), read_exposure_info(field.image_path).shape)
        click.echo(f"against the truth WCS (grid every 100 px over the image): rms {np.sqrt(np.mean(err**2)):.2f} mas, "
                   f"95th percentile {np.percentile(err, 95):.2f} mas, max {err.max():.2f} mas")
    click.echo(f"files: {out.resolve()}")
    if not ok:
        raise SystemExit(1)


#: The commands of this module, registered on ``astrodask`` by :mod:`astrodask.cli`.
COMMANDS = (simulate_cmd, demo_cmd)
