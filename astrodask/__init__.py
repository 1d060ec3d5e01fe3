"""astrodask: astrometric calibration of wide-field survey exposures, distributed with Dask.

Detect the stars of an exposure, fetch Gaia DR3 reference stars for its pointing,
match them and fit a TAN + TPV WCS with a maximum-likelihood error model, following
the Condor Array Telescope's pipeline (see ALGORITHM.md).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("astrodask")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
