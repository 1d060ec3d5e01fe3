"""The Python API: solve exposures from a notebook or a survey pipeline, without the command line.

Three calls cover it, in the style of astropy and distributed:

- :func:`solve_exposure` one exposure, from a FITS file or from an image array and its header
  (a pipeline that already holds the frame in memory); it returns an
  :class:`~astrodask.types.ExposureResult` whose ``.wcs`` is an ``astropy.wcs.WCS`` and
  which carries the quality figures, the error model and the matched list;
- :func:`solution_header` the FITS header to write: ``RA---TPV``/``DEC--TPV`` with the
  quality keywords, as ``astrodask solve`` writes it;
- :func:`solve_backlog` many exposures as a Dask graph on a ``distributed.Client`` you
  hold, returning its futures (each resolves to the exposure's summary row; solutions
  and status records are written into ``out_dir`` by the workers), printing nothing.

The command line is built on the same functions (``astrodask.solve.pipeline.solve_file``,
``astrodask.run.graph.backlog_graph``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.table import Table

from astrodask.config import PipelineConfig
from astrodask.errors import ConfigError
from astrodask.types import ExposureResult


def _catalog(catalog: Table | str | Path | None, config: PipelineConfig) -> Table | None:
    if catalog is None or isinstance(catalog, Table):
        return catalog
    from astrodask.reference.catalog import read_catalog

    return read_catalog(catalog, default_ref_epoch=config.gaia.default_ref_epoch)


def solve_exposure(exposure: str | Path | np.ndarray, *, header: fits.Header | None = None,
          catalog: Table | str | Path | None = None, config: PipelineConfig | None = None,
          pointing: dict[str, Any] | None = None, hdu: int | None = None, name: str = "image",
          cache_url: str | None = None) -> ExposureResult:
    """Solve one exposure: a FITS file, or an image array with its header.

    Parameters
    ----------
    exposure
        A FITS file (plain or ``.fits.fz``), or a 2-D image array (then ``header`` is required).
    header
        The image's FITS header (pointing, epoch, gain, saturation), for an array.
    catalog
        Reference stars: a table from :func:`astrodask.reference.catalog.read_catalog` or a catalog file;
        None: the Gaia tile cache at ``cache_url`` (filled from the archive when tiles are
        missing), else the Gaia archive.
    config
        The pipeline config (default :class:`~astrodask.config.PipelineConfig`).
    pointing
        Overrides of the header's pointing: ``ra_deg``, ``dec_deg``, ``scale_arcsec``,
        ``rotation_deg``, ``parity``.
    hdu
        Image HDU of a file (default: the first 2-D image).
    name
        The exposure's name for an array (results and diagnostics are named after it).
    cache_url
        The Gaia tile cache (a folder or fsspec URL) when no catalog is given.

    Returns
    -------
    ExposureResult
        ``.ok``, ``.wcs`` (``astropy.wcs.WCS``), ``.quality`` (chi-square), ``.error_model``,
        ``.matched`` (the matched list), ``.rms_arcsec``; or failed with ``.reason``. A failed
        exposure is a result, never an exception, as in a backlog.

    Raises
    ------
    ConfigError
        An array given without its header.

    Notes
    -----
    The fits are tall and thin (thousands of pairs, tens of terms) and the turbulence GP's blocks a
    few hundred rows, where BLAS threads only wait for each other: run with one, as ``astrodask
    solve`` and Dask's workers do (``threadpoolctl.threadpool_limits(1, "blas")``). The stages do
    not set it themselves: it is a setting of the whole process.
    """
    config = config or PipelineConfig()
    stars = _catalog(catalog, config)
    if isinstance(exposure, (str, Path)):
        from astrodask.solve.pipeline import solve_file

        return solve_file(exposure, catalog=stars, config=config, pointing=pointing, hdu=hdu, cache_url=cache_url)
    if header is None:
        raise ConfigError("astrodask.solve_exposure: an image array needs its FITS header (header=...): the pointing, "
                          "epoch and gain are read from it")
    from astrodask.solve.pipeline import solve_array

    return solve_array(np.asarray(exposure), header, name=name, catalog=stars, config=config, pointing=pointing,
                       cache_url=cache_url)


def solution_header(result: ExposureResult) -> fits.Header:
    """The solved WCS as a FITS header (``RA---TPV``/``DEC--TPV``, ``PV1_*``/``PV2_*``) with quality keywords.

    Raises
    ------
    ValueError
        The exposure has no solution.
    """
    from astrodask.io.output import solution_header as header_of

    return header_of(result)


def solve_backlog(exposures: Sequence[str | Path], *, client: Any, out_dir: str | Path,
                  catalog: str | Path | None = None, config: PipelineConfig | None = None,
                  pointing: dict[str, Any] | None = None, debug: bool = False,
                  cache_url: str | None = None) -> list[Any]:
    """Submit a backlog to a Dask cluster; returns one future per exposure.

    Each exposure is the graph ``astrodask submit`` runs (detection, references, the
    regions and their reducer, the solve, the writer). Each future resolves to the
    exposure's summary row (``status``, ``reason``, counts, rms, chi2/dof, seconds per
    stage); the workers write ``<name>.wcs.fits`` and the status records into ``out_dir``
    (a folder every worker reaches). Nothing is printed.

    Parameters
    ----------
    exposures
        FITS files.
    client
        A ``distributed.Client``.
    out_dir
        Output folder.
    catalog
        A catalog file read once for the backlog (a task); None: the tile cache or the archive.
    config, pointing, cache_url
        As for :func:`solve_exposure`.
    debug
        Also write the matched lists, plots and failure diagnostics.
    """
    from astrodask.run.graph import backlog_graph

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    graph = backlog_graph([str(p) for p in exposures], out_dir=out_dir, config=config or PipelineConfig(),
                          catalog_path=catalog, pointing=pointing, debug=debug, cache_url=cache_url)
    return list(client.compute(graph))
