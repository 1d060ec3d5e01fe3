"""astrodask: astrometric calibration of wide-field survey exposures, distributed with Dask.

Detect the stars of an exposure, fetch Gaia DR3 reference stars for its pointing,
match them and fit a TAN + TPV WCS with a maximum-likelihood error model, following
the Condor Array Telescope's pipeline (the README's "The solve" says how).

The Python API (:mod:`astrodask.api`)::

    import astrodask
    result = astrodask.solve_exposure("night1/frame.fits.fz", catalog="gaia.ecsv")
    result.ok, result.wcs, result.quality.chi2_dof
    header = astrodask.solution_header(result)
    futures = astrodask.solve_backlog(paths, client=client, out_dir="solved/", catalog="gaia.ecsv")

Its names are imported on first use, so ``import astrodask`` stays light.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("astrodask")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

#: The public names and the modules that define them.
_PUBLIC = {
    "solve_exposure": "astrodask.api",
    "solve_backlog": "astrodask.api",
    "solution_header": "astrodask.api",
    "read_catalog": "astrodask.reference.catalog",
    "PipelineConfig": "astrodask.config",
    "ExposureResult": "astrodask.types",
    "AstrodaskError": "astrodask.errors",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    """Import a public name on first use (PEP 562)."""
    if name in _PUBLIC:
        value = getattr(import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'astrodask' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
