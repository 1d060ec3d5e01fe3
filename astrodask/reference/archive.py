"""The Gaia archive: ADQL queries, asynchronous TAP jobs, retries, the VOTable they return.

Every reference table astrodask uses has the columns and units of
:data:`astrodask.types.REFERENCE_COLUMNS` (the Gaia archive's names), whatever
it came from:

- :func:`read_catalog` imports a catalog file (FITS, VOTable, ECSV, CSV,
  Parquet) with Gaia archive or VizieR I/355 column names;
- :func:`query_gaia_archive` runs an asynchronous ADQL job on the Gaia archive
  (:func:`build_gaia_query`) and normalises its VOTable the same way;
- :func:`select_cone`, :func:`select_footprint` and :func:`limit_depth` cut a
  reference table to an exposure's field of view and depth;
- :func:`propagate_table` moves the stars to the exposure's epoch.

This module is the only one that talks to the Gaia archive, and it does so only
inside :func:`query_gaia_archive`. ``astroquery.gaia`` is never imported here:
its ``__init__`` creates ``Gaia = GaiaClass()``, which contacts the archive at
import time, and its helpers silently truncate results to ``Gaia.ROW_LIMIT``
(50) rows. The TAP client is ``astroquery.utils.tap.core.TapPlus``, imported
lazily, sent raw ADQL without ``TOP``.
"""

from __future__ import annotations

import gzip
import http
import http.client
import io
import logging
import errno
import math
import re
import socket
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from astropy import units as u
from astropy.table import Table

from astrodask.config import GaiaConfig
from astrodask.errors import ArchiveError, ArchiveUnreachableError, AstrodaskWarning
from astrodask.reference.catalog import normalise_catalog
from astrodask.types import REFERENCE_COLUMNS

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------
# Named constants
# --------------------------------------------------------------------------
#: Default archive table queried.
DEFAULT_GAIA_TABLE = "gaiadr3.gaia_source"
#: Rows requested through TAP ``MAXREC``: far above any field of view, so the
#: service's own (lower) cap applies and is reported as ``QUERY_STATUS=OVERFLOW``.
GAIA_MAXREC = 3_000_000
#: Row counts at which a Gaia result is most likely silently truncated:
#: astroquery.gaia's default ``ROW_LIMIT`` and the archive's synchronous limit.
KNOWN_ROW_LIMITS = (50, 2000)
#: First wait between two phase requests of a running archive job, seconds.
POLL_FIRST_S = 0.2
#: Longest wait between two phase requests, seconds (the wait doubles up to it).
POLL_MAX_S = 5.0
#: UWS phases of a job that is still to finish.
UWS_ACTIVE_PHASES = frozenset({"PENDING", "QUEUED", "EXECUTING", "HELD", "SUSPENDED"})
#: HTTP status codes worth retrying: rate limiting and server-side failures.
TRANSIENT_HTTP_STATUSES = frozenset({429} | set(range(500, 600)))
#: ``errno`` values of a connection that cannot be made at all (refused, no route, no network):
#: waiting does not help, so they are not retried.
UNREACHABLE_ERRNOS = frozenset({errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN,
                                errno.EHOSTDOWN})
#: What to do when the archive cannot be reached, said with every such error.
OFFLINE_FIX = ("give reference stars without the archive: --catalog FILE (a Gaia export or VizieR I/355), or "
               "'astrodask cache import FILE' into the tile cache, or fill the cache with 'astrodask cache "
               "prefetch' on a machine with a network")

# --------------------------------------------------------------------------
# The Gaia archive
# --------------------------------------------------------------------------

_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")


def build_gaia_query(*, ra_deg: float, dec_deg: float, radius_deg: float, mag_limit: float,
                     table: str = DEFAULT_GAIA_TABLE) -> str:
    """The ADQL of a cone search for reference stars, without ``TOP``.

    Parameters
    ----------
    ra_deg, dec_deg
        Centre of the cone, ICRS degrees.
    radius_deg
        Radius of the cone, degrees.
    mag_limit
        Faintest G magnitude returned (inclusive), mag.
    table
        Archive table with Gaia ``gaia_source`` columns.

    Returns
    -------
    str
        ``SELECT`` of the :data:`REFERENCE_COLUMNS` with
        ``1=CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', ra0, dec0, r))``
        and ``phot_g_mean_mag <= mag_limit``.

    Raises
    ------
    ValueError
        For a non-finite position, a declination outside +-90, a radius not in
        (0, 180], a non-finite magnitude limit or an invalid table name.
    """
    values = {"ra_deg": ra_deg, "dec_deg": dec_deg, "radius_deg": radius_deg, "mag_limit": mag_limit}
    for key, value in values.items():
        if not math.isfinite(float(value)):
            raise ValueError(f"{key} = {value!r} must be finite")
    if abs(dec_deg) > 90.0:
        raise ValueError(f"dec_deg = {dec_deg!r} must be within -90..+90")
    if not 0.0 < radius_deg <= 180.0:
        raise ValueError(f"radius_deg = {radius_deg!r} must be in (0, 180]")
    if not _TABLE_NAME.match(table):
        raise ValueError(f"table = {table!r} is not a table name like 'gaiadr3.gaia_source'")
    columns = ", ".join(REFERENCE_COLUMNS)
    ra0 = float(ra_deg) % 360.0
    return (
        f"SELECT {columns}\n"
        f"FROM {table}\n"
        f"WHERE 1=CONTAINS(POINT('ICRS', ra, dec), "
        f"CIRCLE('ICRS', {ra0!r}, {float(dec_deg)!r}, {float(radius_deg)!r}))\n"
        f"AND phot_g_mean_mag <= {float(mag_limit)!r}"
    )


def build_source_id_query(ranges: list[tuple[int, int]], *, mag_limit: float,
                          table: str = DEFAULT_GAIA_TABLE) -> str:
    """The ADQL selecting reference stars by ``source_id`` ranges (HEALPix tiles), without ``TOP``.

    Gaia's ``source_id`` is indexed and ordered by HEALPix pixel, so a tile's ranges
    (:func:`astrodask.reference.fill.tile_source_id_ranges`) make a fast query.

    Parameters
    ----------
    ranges
        Inclusive (first, last) source_id ranges.
    mag_limit
        Faintest G magnitude returned (inclusive), mag.
    table
        Archive table with Gaia ``gaia_source`` columns.

    Returns
    -------
    str
        ``SELECT`` of the :data:`REFERENCE_COLUMNS` with ``source_id BETWEEN a AND b
        OR ...`` and ``phot_g_mean_mag <= mag_limit``.

    Raises
    ------
    ValueError
        For no range, a range with first > last or negative, a non-finite magnitude
        limit or an invalid table name.
    """
    if not ranges:
        raise ValueError("ranges is empty: give at least one (first, last) source_id range")
    for lo, hi in ranges:
        if not 0 <= int(lo) <= int(hi):
            raise ValueError(f"source_id range ({lo}, {hi}) must have 0 <= first <= last")
    if not math.isfinite(float(mag_limit)):
        raise ValueError(f"mag_limit = {mag_limit!r} must be finite")
    if not _TABLE_NAME.match(table):
        raise ValueError(f"table = {table!r} is not a table name like 'gaiadr3.gaia_source'")
    columns = ", ".join(REFERENCE_COLUMNS)
    between = "\n   OR ".join(f"source_id BETWEEN {int(lo)} AND {int(hi)}" for lo, hi in ranges)
    return (
        f"SELECT {columns}\n"
        f"FROM {table}\n"
        f"WHERE ({between})\n"
        f"AND phot_g_mean_mag <= {float(mag_limit)!r}"
    )


class _TransientArchiveError(Exception):
    """An archive failure worth retrying (connection trouble, HTTP 5xx or 429)."""


def query_gaia_archive(*, ra_deg: float, dec_deg: float, radius_deg: float, config: GaiaConfig,
                       mag_limit: float | None = None, maxrec: int = GAIA_MAXREC) -> Table:
    """Reference stars in a cone from the Gaia archive, through an asynchronous TAP job.

    The ADQL of :func:`build_gaia_query` (no ``TOP``) runs through
    :func:`run_archive_query` (an asynchronous UWS job with ``MAXREC = maxrec``,
    retries with backoff, a normalised table).

    Parameters
    ----------
    ra_deg, dec_deg
        Centre of the cone, ICRS degrees.
    radius_deg
        Radius of the cone, degrees.
    config
        The archive's URL (``tap_url``), ``table``, ``mag_limit``, ``timeout_s``,
        ``retries``, ``retry_backoff_s`` and ``default_ref_epoch``.
    mag_limit
        Faintest G magnitude, mag; None: ``config.mag_limit``.
    maxrec
        Rows requested through TAP ``MAXREC``.

    Returns
    -------
    astropy.table.Table
        The columns of :func:`read_catalog`; ``meta['catalog_path']`` is the
        job's result URL, ``meta['catalog_format']`` is ``"votable"`` and
        ``meta['query']`` the ADQL.

    Warns
    -----
    AstrodaskWarning
        If the result is truncated (``QUERY_STATUS=OVERFLOW``, or as many rows as
        ``maxrec``) or has exactly as many rows as a known silent row limit.

    Raises
    ------
    ValueError
        For invalid cone arguments (see :func:`build_gaia_query`) or ``maxrec``.
    ArchiveError
        See :func:`run_archive_query`.
    """
    limit = config.mag_limit if mag_limit is None else float(mag_limit)
    adql = build_gaia_query(ra_deg=ra_deg, dec_deg=dec_deg, radius_deg=radius_deg,
                            mag_limit=limit, table=config.table)
    where = (f"the cone of radius {radius_deg} deg around (ra, dec) = ({ra_deg:.6f}, {dec_deg:+.6f}) deg "
             f"at {config.tap_url}")
    table = run_archive_query(adql, where=where, config=config, maxrec=maxrec)
    truncated = table.meta.get("truncated")
    if truncated:
        warnings.warn(f"Gaia archive result for {where} {truncated}", AstrodaskWarning, stacklevel=2)
    logger.info("Gaia archive: %d stars with G <= %.2f in %s", len(table), limit, where)
    return table


def run_archive_query(adql: str, *, where: str, config: GaiaConfig, maxrec: int = GAIA_MAXREC) -> Table:
    """Run one ADQL query as an asynchronous TAP job of the Gaia archive and normalise its result.

    The query runs as a UWS job through astroquery's ``TapPlus`` with ``MAXREC =
    maxrec``; the job is polled until it finishes or ``config.timeout_s`` passes, and
    its VOTable result is normalised like a catalog file (:func:`normalise_catalog`).
    Transient failures (timeouts of ``config.request_timeout_s``, connections reset,
    HTTP 5xx and 429) are retried ``config.retries`` times, waiting
    ``config.retry_backoff_s`` seconds, then twice as long each time. An archive that
    cannot be reached at all (its name does not resolve, the connection is refused, no
    route to it) is not retried: :class:`ArchiveUnreachableError` at once.

    Parameters
    ----------
    adql
        The query; it must select the :data:`REFERENCE_COLUMNS`.
    where
        What the query covers, for messages (e.g. "tile 6/1234 at <url>").
    config
        The archive settings (see :func:`query_gaia_archive`).
    maxrec
        Rows requested through TAP ``MAXREC``.

    Returns
    -------
    astropy.table.Table
        The normalised stars. ``meta['truncated']`` is an empty string, or says why
        the result is (or may be) truncated: the archive's ``QUERY_STATUS=OVERFLOW``,
        as many rows as ``maxrec``, or exactly a known silent row limit.
        ``meta['query']`` holds the ADQL.

    Raises
    ------
    ValueError
        For an invalid ``maxrec``.
    ArchiveUnreachableError
        At the first attempt whose connection cannot be made (naming the archive's URL,
        the cause and the fix).
    ArchiveError
        If the query still fails after the retries (naming ``where``, the archive
        and the last error), the job ends in error or is aborted, or it does not
        finish within ``config.timeout_s``.
    """
    if int(maxrec) != maxrec or maxrec < 1:
        raise ValueError(f"maxrec = {maxrec!r} must be a positive integer")
    attempts = config.retries + 1
    last_error: BaseException | None = None
    for attempt in range(attempts):
        if attempt:
            wait_s = config.retry_backoff_s * 2 ** (attempt - 1)
            logger.warning("Gaia archive query for %s failed (%s); retry %d of %d in %.1f s",
                           where, _error_text(last_error), attempt, config.retries, wait_s)
            time.sleep(wait_s)
        try:
            data, result_url = _run_async_job(adql, config=config, maxrec=maxrec, where=where)
        except _TransientArchiveError as err:
            last_error = err.__cause__ or err
            continue
        break
    else:
        raise ArchiveError(
            f"Gaia archive query for {where} failed after {attempts} attempt(s); last error: "
            f"{_error_text(last_error)}. Check the archive's status and raise gaia.retries or "
            f"gaia.request_timeout_s, or {OFFLINE_FIX}"
        ) from last_error

    raw, statuses = _parse_votable(data, where=where)
    n = len(raw)
    truncated = ""
    if "OVERFLOW" in statuses:
        truncated = (f"is truncated at {n} rows by the archive (QUERY_STATUS=OVERFLOW): query a smaller "
                     "region or a brighter mag_limit")
    elif n >= maxrec:
        truncated = (f"has {n} rows, the MAXREC requested: it is probably truncated; query a smaller "
                     "region or a brighter mag_limit")
    elif n in KNOWN_ROW_LIMITS:
        truncated = f"has exactly {n} rows, a known server-side row limit: it may be truncated"
    table = normalise_catalog(raw, default_ref_epoch=config.default_ref_epoch,
                              catalog_path=result_url, catalog_format="votable")
    table.meta["query"] = adql
    table.meta["truncated"] = truncated
    return table


def _run_async_job(adql: str, *, config: GaiaConfig, maxrec: int, where: str) -> tuple[bytes, str]:
    """Run one asynchronous job; return its raw result and the result's URL."""
    from astroquery.utils.tap.core import TapPlus  # lazily: never astroquery.gaia

    tap = TapPlus(url=config.tap_url, connhandler=_timed_connections(config.tap_url, config.request_timeout_s))
    with tempfile.TemporaryDirectory(prefix="astrodask-gaia-") as tmp:
        # the name ends in .gz as astroquery expects for VOTable results (else it warns)
        output = Path(tmp) / "result.vot.gz"
        try:
            job = tap.launch_job_async(adql, background=True, dump_to_file=True,
                                       output_file=str(output), maxrec=maxrec)
            _wait_for_job(job, timeout_s=config.timeout_s, where=where)
            job.save_results()
        except (OSError, http.client.HTTPException) as err:
            # requests' HTTPError, which astroquery raises for HTTP errors, is an OSError
            cause = _unreachable_cause(err)
            if cause:
                raise ArchiveUnreachableError(
                    f"the Gaia archive at {config.tap_url} cannot be reached ({cause}): {OFFLINE_FIX}"
                ) from err
            if _is_transient(err):
                raise _TransientArchiveError(str(err)) from err
            raise ArchiveError(
                f"Gaia archive query for {where} failed: {_error_text(err)}"
            ) from err
        data = output.read_bytes()
    return data, f"{config.tap_url.rstrip('/')}/async/{job.jobid}/results/result"


def _timed_connections(url: str, timeout_s: float) -> Any:
    """astroquery's TAP connection to ``url``, whose HTTP connections give up after ``timeout_s``.

    astroquery's own ``ConnectionHandler`` opens ``http.client`` connections without a
    timeout: an archive that accepts a connection and never answers would hold a worker
    forever. The URL is split as ``TapPlus`` splits it: the last path segment is the TAP
    context, the ones before it the server context.
    """
    import http.client as httplib
    from urllib.parse import urlsplit

    from astroquery.utils.tap.conn.tapconn import ConnectionHandler, TapConn

    parts = urlsplit(url)
    https = parts.scheme == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if https else 80)
    segments = [f"/{segment}" for segment in parts.path.split("/")[1:]]
    server_context = "".join(segments[:-1]) if len(segments) > 1 else "".join(segments)
    tap_context = segments[-1] if len(segments) > 1 else ""

    class TimedConnectionHandler(ConnectionHandler):
        def get_connection(self, *, ishttps: bool = False, cookie: Any = None, verbose: bool = False) -> Any:
            if ishttps or cookie is not None:
                return self.get_connection_secure(verbose)
            return httplib.HTTPConnection(host, port, timeout=timeout_s)

        def get_connection_secure(self, verbose: bool) -> Any:
            return httplib.HTTPSConnection(host, port, timeout=timeout_s)

    return TapConn(ishttps=https, host=host, server_context=server_context, tap_context=tap_context, port=port,
                   sslport=port, connhandler=TimedConnectionHandler(host, port, port))


def _unreachable_cause(err: BaseException) -> str:
    """Why a connection could not be made at all ("name ... does not resolve"...); "" for other errors."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, socket.gaierror):
            return f"its name does not resolve: {current.strerror or current}"
        if isinstance(current, ConnectionRefusedError):
            return "connection refused"
        if isinstance(current, OSError) and current.errno in UNREACHABLE_ERRNOS:
            return current.strerror or errno.errorcode.get(current.errno or 0, "unreachable")
        current = current.__cause__ or current.__context__
    return ""


def _wait_for_job(job: Any, *, timeout_s: float, where: str) -> None:
    """Poll a job's phase until it leaves the active phases; raise if it failed or timed out."""
    deadline = time.monotonic() + timeout_s
    delay = POLL_FIRST_S
    while True:
        phase = str(job.get_phase(update=True)).strip().upper()
        if phase not in UWS_ACTIVE_PHASES:
            break
        if time.monotonic() + delay > deadline:
            raise ArchiveError(
                f"Gaia archive job {job.jobid} for {where} did not finish within {timeout_s} s "
                f"(phase {phase}); raise gaia.timeout_s or query a smaller cone"
            )
        time.sleep(delay)
        delay = min(2.0 * delay, POLL_MAX_S)
    if phase == "COMPLETED":
        return
    if phase == "ERROR":
        message = job.get_error()
        raise ArchiveError(f"Gaia archive job {job.jobid} for {where} ended in error: "
                           f"{_error_text(message)}")
    raise ArchiveError(f"Gaia archive job {job.jobid} for {where} ended in phase {phase}")


_HTTP_STATUS_IN_TEXT = re.compile(r"\b(?:Error|HTTP)\s*(\d{3})\b")
#: Reason phrases of the transient statuses ("service unavailable"...), lower case.
_TRANSIENT_REASONS = {status.phrase.lower() for status in http.HTTPStatus
                      if status.value in TRANSIENT_HTTP_STATUSES}


def _is_transient(err: BaseException) -> bool:
    """Whether an error of the TAP client is worth a retry.

    astroquery reports HTTP failures as ``requests.exceptions.HTTPError`` whose
    text is either the reason phrase (``"Service Unavailable"``) or
    ``"Error 503: ..."``; connection failures are ``OSError``/``HTTPException``.
    """
    import requests

    if isinstance(err, requests.exceptions.HTTPError):
        text = str(err).strip()
        match = _HTTP_STATUS_IN_TEXT.search(text)
        if match:
            return int(match.group(1)) in TRANSIENT_HTTP_STATUSES
        return text.lower() in _TRANSIENT_REASONS
    return isinstance(err, (OSError, http.client.HTTPException))


def _error_text(err: BaseException | str | None) -> str:
    """A one-line description of an error (its type when it has no message)."""
    if err is None:
        return "unknown error"
    if isinstance(err, str):
        text = " ".join(err.split())
        return text or "no message"
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _parse_votable(data: bytes, *, where: str) -> tuple[Table, list[str]]:
    """The first table of a (possibly gzip-compressed) VOTable and its QUERY_STATUS values."""
    from astropy.io import votable

    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    try:
        with warnings.catch_warnings():
            # the archive's unit strings ("'electron'.s**-1") are interpreted by normalise_catalog
            warnings.simplefilter("ignore", u.UnitsWarning)
            document = votable.parse(io.BytesIO(data))
            statuses = [str(info.value).upper() for info in document.iter_info()
                        if info.name == "QUERY_STATUS"]
            if "ERROR" in statuses:
                messages = [str(info.content or "") for info in document.iter_info()
                            if info.name == "QUERY_STATUS"]
                raise ArchiveError(f"Gaia archive query for {where} returned an error: "
                                   f"{_error_text(' '.join(messages))}")
            table = document.get_first_table().to_table(use_names_over_ids=True)
    except (ValueError, IndexError) as err:
        raise ArchiveError(
            f"Gaia archive result for {where} is not a readable VOTable: {_error_text(err)}"
        ) from err
    return table, statuses



