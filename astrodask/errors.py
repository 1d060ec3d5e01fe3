"""Exceptions and warnings of astrodask.

Every error astrodask raises on purpose derives from :class:`AstrodaskError`, and
also from the builtin exception that describes it best, so callers may catch either.
The command line turns an ``AstrodaskError`` into a one-line message and a
non-zero exit status; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from typing import ClassVar


class AstrodaskError(Exception):
    """Root of every error astrodask raises on purpose.

    ``transient`` says whether the same solve may succeed later without any change to
    its input, configuration or software (the archive was down, a cache could not be
    read): a resubmit retries an exposure that failed with a transient error and leaves
    one that failed for a deterministic reason (a broken file, a quality gate) alone.
    """

    transient: ClassVar[bool] = False


class ConfigError(AstrodaskError, ValueError):
    """A configuration value is unknown, of the wrong type or out of range."""


class InputFileError(AstrodaskError, OSError):
    """An input file is missing, unreadable, or not what it should be."""


class ImageError(AstrodaskError, ValueError):
    """An exposure's image data cannot be used (absent HDU, wrong dimensions...)."""


class PointingError(AstrodaskError, ValueError):
    """The approximate pointing of an exposure cannot be determined."""


class CatalogError(AstrodaskError, ValueError):
    """A reference catalog is malformed (missing columns, bad values...)."""


class ArchiveError(AstrodaskError, RuntimeError):
    """A query to the Gaia archive failed after its retries."""

    transient = True


class ArchiveUnreachableError(ArchiveError):
    """The Gaia archive cannot be reached at all: its name does not resolve or it refuses connections.

    Not retried within a solve (waiting does not help a machine without network), but
    transient for a resubmit (the network may be back).
    """


class CacheError(CatalogError):
    """The Gaia tile cache cannot be read or written (absent, damaged or read-only tiles, storage errors).

    Transient: a fill, a prefetch or a repaired storage changes the outcome.
    """

    transient = True


class MatchError(AstrodaskError, RuntimeError):
    """Image sources and reference stars cannot be matched (too few, or no consistent transform).

    ``details`` carries what the matcher tried (the coarse alignment's attempts,
    each region's outcome), so that a failed solve can explain itself.
    """

    def __init__(self, message: str, *, details: dict | None = None) -> None:
        super().__init__(message)
        self.details: dict = dict(details or {})

    def __reduce__(self):  # keep the details across processes (Dask workers pickle errors)
        return (_rebuild_match_error, (str(self), self.details))


def _rebuild_match_error(message: str, details: dict) -> MatchError:
    return MatchError(message, details=details)


class FitError(AstrodaskError, ValueError):
    """A fit cannot be made from the data given (too few points, degenerate geometry)."""


class HeaderError(AstrodaskError, ValueError):
    """A FITS header's WCS cannot be read (unsupported or inconsistent keywords)."""


class SolveError(AstrodaskError, RuntimeError):
    """A solve failed one of its quality gates; the message gives the stage and the reason."""


class LaunchError(AstrodaskError, RuntimeError):
    """A Dask scheduler or worker process of a launched cluster did not start."""

    transient = True


class NoSourcesError(AstrodaskError, ValueError):
    """Source detection found nothing usable."""


class OutputError(AstrodaskError, OSError):
    """An output file or folder cannot be written: no permission, a read-only filesystem, the disk full.

    The message names the file or folder and the system's reason. A full disk or a lost mount
    passes: free the space (or mount it again) and resubmit (``transient``).
    """

    transient = True


class ClusterLostError(AstrodaskError, RuntimeError):
    """The client lost its scheduler (killed, restarted, out of reach) before the backlog finished.

    What finished before is kept (solution files and status records are written whole); a
    resubmit solves the rest and skips the solved ones (``transient``).
    """

    transient = True


class CacheUnavailableError(AstrodaskError, OSError):
    """The Gaia tile cache cannot be reached (an object store gone away, a mount lost).

    Transient: the tiles are not damaged, only out of reach; a resubmit once the store is back
    solves the exposures that needed it.
    """

    transient = True


def is_transient(err: BaseException) -> bool:
    """Whether a solve that failed with ``err`` may succeed when simply run again.

    Decided by the error's class only: an :class:`AstrodaskError` says so itself
    (:attr:`AstrodaskError.transient`); any other exception (a killed worker, a lost
    connection, an interrupt, an internal error) is transient, since only the project's
    own errors are known to describe the input.
    """
    if isinstance(err, AstrodaskError):
        return type(err).transient
    return True


class AstrodaskWarning(UserWarning):
    """A data-quality notice: the work goes on, but the user should know."""
