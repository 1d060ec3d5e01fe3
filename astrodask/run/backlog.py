"""A survey backlog: which exposures to solve, which are done, and what happened to each.

A backlog is named on the command line by files, glob patterns, folders and list
files (``@list.txt``); :func:`expand_inputs` turns them into one ordered list of
exposures whose names are unique (their solutions are ``DIR/<name>.wcs.fits``).
:func:`plan_backlog` splits it into what is still to do and what an earlier run
already solved.

While a backlog runs on a cluster, every worker records the outcome of each
exposure in a small JSON file, ``DIR/.astrodask/<name>.json`` (the summary row
plus ``finished_utc``), written atomically so that a reader never sees half of
one.  :func:`backlog_status` and :func:`format_status` turn those records, the
solution files and the submit manifest (``DIR/.astrodask/manifest-*.txt``, one per submit) into
done / failed / pending; :func:`assemble_summary` rebuilds ``DIR/summary.ecsv``
from the records.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import secrets
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.table import Table

from astrodask import __version__
from astrodask.config import PipelineConfig, config_digest
from astrodask.errors import InputFileError, OutputError
from astrodask.io.output import (SOLUTION_SUFFIX, SOLVED_VALUE, STAGES, STATUS_DIRNAME, STATUS_KEYWORD,
                                 SUMMARY_COLUMNS, SUMMARY_NAME, TPV_SUFFIX, atomic_write, solution_path, summary_row,
                                 write_products)
from astrodask.types import FAILED, FITS_SUFFIXES, SOLVED, ExposureResult, FailureKind, exposure_name

log = logging.getLogger(__name__)

#: An item starting with this names a list file: one path or glob per line.
LIST_PREFIX = "@"
#: Lines of a list file starting with this (after leading blanks) are comments.
COMMENT_PREFIX = "#"
#: Characters that make an item a glob pattern.
GLOB_CHARACTERS = frozenset("*?[")
#: Suffix of a per-exposure status record: ``DIR/.astrodask/<name>.json``.
STATUS_SUFFIX = ".json"
#: The list of every exposure submitted to an output directory, one absolute path per line (earlier
#: versions: one file rewritten by every submit; now one ``manifest-*.txt`` file per submit beside it).
MANIFEST_NAME = "manifest.txt"
#: Start and end of the name of every manifest file.
MANIFEST_PREFIX, MANIFEST_SUFFIX = "manifest", ".txt"
#: FITS files are made of blocks of this many bytes; a shorter last block means a truncated file.
FITS_BLOCK_BYTES = 2880
#: Name clashes, failed and pending exposures listed at most in messages and summaries.
MAX_LISTED = 20
#: Pending exposures named by :func:`format_status`.
MAX_PENDING_SHOWN = 5
#: Nesting depth allowed for list files naming list files.
MAX_LIST_DEPTH = 8


# --------------------------------------------------------------------------
# Expanding the inputs
# --------------------------------------------------------------------------


def expand_inputs(items: Sequence[str | os.PathLike[str]], *, recursive: bool = False) -> list[Path]:
    """The exposures named by files, glob patterns, folders and list files.

    Parameters
    ----------
    items
        Each one is
        - a file;
        - a glob pattern (``night1/*.fits.fz``; ``**`` spans folders when ``recursive``);
        - a folder: every exposure in it, a file ending in one of :data:`astrodask.types.FITS_SUFFIXES`
          (``*.fits``, ``*.fits.fz``, ``*.fits.gz``, ...), and in its subfolders when ``recursive``;
          hidden files and folders excepted;
        - ``@LIST``: a text file with one path, glob or folder per line; blank lines and lines
          starting with ``#`` are ignored; relative entries are relative to the list file's folder.
        Globs and folders never yield solution files (``*.wcs.fits``).
    recursive
        Descend into subfolders of folders, and let ``**`` in globs span folders.

    Returns
    -------
    list of Path
        Absolute paths without duplicates, in the order given (sorted within each glob or folder).

    Raises
    ------
    InputFileError
        For a file that does not exist, a glob or folder that matches no exposure, a list file that
        cannot be read, or two exposures with the same name (from different folders).
    """
    seen: dict[str, None] = {}
    for item in items:
        for path in _expand_item(os.fspath(item), base=os.getcwd(), recursive=recursive, where="", depth=0):
            seen.setdefault(path, None)
    paths = [Path(p) for p in seen]
    _check_unique_names(paths)
    return paths


def _expand_item(item: str, *, base: str, recursive: bool, where: str, depth: int) -> list[str]:
    """Absolute paths named by one item; ``where`` prefixes error messages (``list.txt:12: ``)."""
    if item.startswith(LIST_PREFIX):
        return _expand_list(_absolute(item[len(LIST_PREFIX):], base), recursive=recursive, where=where,
                            depth=depth + 1)
    path = _absolute(item, base)
    if os.path.isfile(path):
        return [path]
    if os.path.isdir(path):
        found = _scan_folder(path, recursive=recursive)
        if not found:
            raise InputFileError(f"{where}{item}: folder holds no exposure ({', '.join(FITS_SUFFIXES)})"
                                 + ("" if recursive else "; use --recursive to search its subfolders"))
        return found
    if GLOB_CHARACTERS.intersection(item):
        return _expand_glob(item, base=base, recursive=recursive, where=where)
    raise InputFileError(f"{where}{item}: no such file or folder")


def _absolute(path: str, base: str) -> str:
    """``path`` made absolute against ``base`` (no symlink resolution: a string operation, fast)."""
    return os.path.normpath(os.path.join(base, os.path.expanduser(path)))


def _expand_glob(pattern: str, *, base: str, recursive: bool, where: str) -> list[str]:
    matches = glob.glob(os.path.expanduser(pattern), root_dir=base, recursive=recursive)
    found = sorted(path for path in (_absolute(m, base) for m in matches)
                   if os.path.isfile(path) and not path.endswith((SOLUTION_SUFFIX, TPV_SUFFIX)))
    if not found:
        raise InputFileError(f"{where}{pattern}: glob pattern matches no file (relative to {base})")
    return found


def _is_exposure_name(name: str) -> bool:
    lower = name.lower()
    return (not name.startswith(".") and lower.endswith(FITS_SUFFIXES)
            and not lower.endswith((SOLUTION_SUFFIX, TPV_SUFFIX)))


def _scan_folder(folder: str, *, recursive: bool) -> list[str]:
    """Exposure files in ``folder`` (and its non-hidden subfolders when ``recursive``), sorted."""
    found: list[str] = []
    pending = [folder]
    while pending:
        current = pending.pop()
        try:
            entries = list(os.scandir(current))
        except OSError as err:
            raise InputFileError(f"{current}: cannot list folder: {err.strerror or err}") from err
        for entry in entries:
            if entry.is_file() and _is_exposure_name(entry.name):
                found.append(entry.path)
            elif recursive and entry.is_dir() and not entry.name.startswith("."):
                pending.append(entry.path)
    return sorted(found)


def _expand_list(list_file: str, *, recursive: bool, where: str, depth: int) -> list[str]:
    if depth > MAX_LIST_DEPTH:
        raise InputFileError(f"{where}{list_file}: list files nested more than {MAX_LIST_DEPTH} deep "
                             "(does a list name itself?)")
    try:
        with open(list_file, encoding="utf-8") as stream:
            lines = stream.read().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise InputFileError(f"{where}{list_file}: cannot read list file: {reason}") from err
    base = os.path.dirname(list_file)
    found: list[str] = []
    for number, line in enumerate(lines, start=1):
        entry = line.strip()
        if not entry or entry.startswith(COMMENT_PREFIX):
            continue
        found += _expand_item(entry, base=base, recursive=recursive, where=f"{list_file}:{number}: ", depth=depth)
    log.debug("%s: %d entries", list_file, len(found))
    return found


def _check_unique_names(paths: Sequence[Path]) -> None:
    """Raise when two exposures share a name: their outputs would overwrite each other."""
    by_name: dict[str, list[Path]] = {}
    for path in paths:
        by_name.setdefault(exposure_name(path), []).append(path)
    clashes = {name: group for name, group in by_name.items() if len(group) > 1}
    if not clashes:
        return
    lines = [f"  {name}: " + ", ".join(str(p) for p in group) for name, group in list(clashes.items())[:MAX_LISTED]]
    if len(clashes) > MAX_LISTED:
        lines.append(f"  ... and {len(clashes) - MAX_LISTED} more")
    raise InputFileError(f"{len(clashes)} exposure name(s) occur more than once; outputs are DIR/<name>"
                         f"{SOLUTION_SUFFIX}, so names must be unique (solve each folder into its own --out):\n"
                         + "\n".join(lines))


# --------------------------------------------------------------------------
# What is still to do
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class BacklogPlan:
    """A backlog split into the exposures to solve and those an earlier run solved.

    Attributes
    ----------
    todo
        Exposures to solve, in the backlog's order.
    done
        Exposures skipped: their solution file exists and says ``ASTSTAT = 'SOLVED'``.
    failed_before
        Exposures skipped: their status record says they failed for a deterministic reason
        (:func:`unchanged_failures`), and nothing that could change that has changed.
    """

    todo: tuple[Path, ...]
    done: tuple[Path, ...]
    failed_before: tuple[Path, ...] = ()

    @property
    def n_failed_before(self) -> int:
        """Number of exposures left alone: they failed earlier for a reason that will not change."""
        return len(self.failed_before)

    @property
    def n_todo(self) -> int:
        """Number of exposures to solve."""
        return len(self.todo)

    @property
    def n_done(self) -> int:
        """Number of exposures skipped as already solved."""
        return len(self.done)

    @property
    def n_total(self) -> int:
        """Number of exposures in the backlog."""
        return len(self.todo) + len(self.done) + len(self.failed_before)


def is_solved_file(path: str | Path) -> bool:
    """True when ``path`` is a complete, readable FITS file whose primary header has ``ASTSTAT = 'SOLVED'``.

    A missing, truncated or corrupt file is not solved (no exception is raised).
    """
    path = Path(path)
    try:
        if path.stat().st_size % FITS_BLOCK_BYTES:
            return False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # astropy warns about damaged files; they just are not solved
            header = fits.getheader(path, 0)
    except (OSError, ValueError, EOFError, IndexError, KeyError) as err:
        log.debug("%s: not a readable solution: %s", path, err)
        return False
    return str(header.get(STATUS_KEYWORD, "")).strip().upper() == SOLVED_VALUE


def plan_backlog(paths: Iterable[str | Path], out_dir: str | Path, *, redo: bool = False,
                 retry_failed: bool = False, config: PipelineConfig | None = None) -> BacklogPlan:
    """Split a backlog into what to solve, what ``out_dir`` already solved and what failed for good.

    Parameters
    ----------
    paths
        The exposures (e.g. from :func:`expand_inputs`).
    out_dir
        The output folder; an exposure is done when ``out_dir/<name>.wcs.fits`` is solved
        (:func:`is_solved_file`).
    redo
        Solve everything again.
    retry_failed
        Solve again the exposures that failed for a deterministic reason; without it they are
        left alone (:func:`unchanged_failures`). Transient failures are always retried.
    config
        The config of this run: a failure recorded under another config is retried.
    """
    paths = [Path(p) for p in paths]
    if redo:
        return BacklogPlan(todo=tuple(paths), done=())
    existing = _solution_names(Path(out_dir))
    failed = set() if retry_failed else unchanged_failures(paths, out_dir, config=config)
    todo: list[Path] = []
    done: list[Path] = []
    failed_before: list[Path] = []
    for path in paths:
        name = exposure_name(path)
        if name in existing and is_solved_file(solution_path(out_dir, name)):
            done.append(path)
        elif name in failed:
            failed_before.append(path)
        else:
            todo.append(path)
    log.info("backlog of %d exposures: %d already solved in %s, %d failed for good, %d to do", len(paths),
             len(done), out_dir, len(failed_before), len(todo))
    return BacklogPlan(todo=tuple(todo), done=tuple(done), failed_before=tuple(failed_before))


def unchanged_failures(paths: Iterable[str | Path], out_dir: str | Path, *,
                       config: PipelineConfig | None = None) -> set[str]:
    """Names of the exposures whose latest solve failed for a reason that a rerun will not change.

    Such an exposure's status record says ``kind = deterministic`` (a quality gate, a broken
    file, a bad header: :class:`~astrodask.types.FailureKind`), and since it was written
    neither the exposure file (size and modification time), nor the config (when ``config``
    is given: :func:`~astrodask.config.config_digest`), nor astrodask's version changed.
    Pointing overrides (``--ra``, ``--dec``...) are not recorded: after changing them, ask
    for ``--retry-failed``.
    """
    wanted = {exposure_name(p): Path(p) for p in paths}
    digest = config_digest(config) if config is not None else None
    names: set[str] = set()
    for record in read_statuses(out_dir):
        name = str(record["name"])
        path = wanted.get(name)
        if (path is None or record["status"] == SOLVED or record.get("failure_kind") != FailureKind.DETERMINISTIC
                or record.get("astrodask_version") != __version__
                or record.get("input_stamp") != input_stamp(path)
                or (digest is not None and record.get("config_digest") != digest)):
            continue
        names.add(name)
    return names


def input_stamp(path: str | Path) -> str:
    """``"<size>:<mtime_ns>"`` of a file, to tell whether it changed; ``""`` when it cannot be read."""
    try:
        info = os.stat(path)
    except OSError:
        return ""
    return f"{info.st_size}:{info.st_mtime_ns}"


#: Summary columns restored from a solution's header keywords (:func:`restore_missing_records`).
_HEADER_COLUMNS = {"sources": "NSOURCE", "references": "NREFS", "regions_ok": "NREGOK", "depth_matches": "NMATCHED",
                   "matches": "NMATCH", "rms_xi_arcsec": "RMSXI", "rms_eta_arcsec": "RMSETA", "chi2": "CHI2",
                   "dof": "DOF", "chi2_dof": "CHI2DOF", "err_scale": "ERRSCALE", "err_floor_mas": "ERRFLOOR"}


def restore_missing_records(done: Iterable[str | Path], out_dir: str | Path) -> list[Path]:
    """Write the status record of each solved exposure that has none, from its solution's header.

    A writer killed between the solution's rename and its record's (a SIGKILLed worker) leaves
    a whole solution without a record; a resubmit skips the exposure as solved, so its record is
    restored here instead (the solve's figures are in the header), and the summary lists it.

    Parameters
    ----------
    done
        Exposures whose solution says SOLVED (:attr:`BacklogPlan.done`).
    out_dir
        The output folder.

    Returns
    -------
    list of Path
        The records written.
    """
    written: list[Path] = []
    for path in done:
        name = exposure_name(path)
        if status_path(out_dir, name).exists():
            continue
        header = fits.getheader(solution_path(out_dir, name), 0)
        row: dict[str, Any] = {"file": os.path.abspath(os.fspath(path)), "name": name, "status": SOLVED,
                               "reason": "", "stage": ""}
        row.update({column: header[key] for column, key in _HEADER_COLUMNS.items() if key in header})
        row["finished_utc"] = str(header.get("ASTDATE", ""))
        written.append(write_status(row, out_dir))
        log.info("%s: status record restored from its solution's header", name)
    return written


def _solution_names(out_dir: Path) -> set[str]:
    """Names of the exposures with a solution file in ``out_dir`` (one folder listing, no header read)."""
    try:
        return {entry.name[: -len(SOLUTION_SUFFIX)] for entry in os.scandir(out_dir)
                if entry.name.endswith(SOLUTION_SUFFIX) and not entry.name.startswith(".")}
    except FileNotFoundError:
        return set()
    except OSError as err:
        raise InputFileError(f"{out_dir}: cannot list output folder: {err.strerror or err}") from err


# --------------------------------------------------------------------------
# Status records and the manifest
# --------------------------------------------------------------------------


def status_dir(out_dir: str | Path) -> Path:
    """The folder of the status records and the manifest: ``DIR/.astrodask``."""
    return Path(out_dir) / STATUS_DIRNAME


def status_path(out_dir: str | Path, name: str) -> Path:
    """The status record of exposure ``name``: ``DIR/.astrodask/<name>.json``."""
    return status_dir(out_dir) / f"{name}{STATUS_SUFFIX}"


def write_status(row: dict[str, Any], out_dir: str | Path) -> Path:
    """Record the outcome of one exposure, atomically, in ``DIR/.astrodask/<name>.json``.

    Parameters
    ----------
    row
        The summary row (:func:`astrodask.io.output.summary_row`); it must have ``name`` and ``status``.
        ``finished_utc`` (ISO 8601, UTC), ``input_stamp`` (:func:`input_stamp` of ``file``) and
        ``astrodask_version`` are added when absent: with the row's ``failure_kind`` and ``config_digest``
        they let a resubmit leave a deterministic failure alone (:func:`unchanged_failures`).
    out_dir
        The output folder.

    Returns
    -------
    Path
        The record written.
    """
    name = str(row.get("name", ""))
    if not name or os.sep in name or "status" not in row:
        raise ValueError(f"a status record needs a file name in 'name' and a 'status', got {row!r}")
    record = {key: _plain(value) for key, value in row.items()}
    record.setdefault("finished_utc", datetime.now(UTC).isoformat(timespec="seconds"))
    record.setdefault("input_stamp", input_stamp(str(row.get("file", ""))))
    record.setdefault("astrodask_version", __version__)
    text = json.dumps(record, indent=1)
    return atomic_write(status_path(out_dir, name), lambda tmp: _write_text(tmp, text))


#: The stage a failure to write an exposure's outputs is reported at.
WRITE_STAGE = "write"


@dataclass(frozen=True)
class Recorded:
    """What :func:`record_outcome` left for one exposure.

    Attributes
    ----------
    result
        The exposure's result: as given, or failed at :data:`WRITE_STAGE` when its outputs could
        not be written.
    row
        Its summary row.
    written
        The files written (none when the write failed: what it had written is removed).
    recorded
        Whether its status record was written.
    """

    result: ExposureResult
    row: dict[str, Any]
    written: tuple[Path, ...]
    recorded: bool


def record_outcome(result: ExposureResult, out_dir: str | Path, *, debug: bool = False, write_header: bool = False,
                   plots_dir: str | Path | None = None) -> Recorded:
    """Write an exposure's products and its status record, all or nothing.

    The one writer of an exposure's outcome, for the graph's ``write`` task and ``solve --serial``.
    A file that cannot be written (:class:`~astrodask.errors.OutputError`: the disk full, no
    permission) fails the exposure at :data:`WRITE_STAGE` with the file and the reason, and
    removes what was written of it, so that no solution stands without its record and a resubmit
    solves it again; its failed record is then written if there is room for that.
    """
    try:
        written = write_products(result, out_dir, debug=debug, write_header=write_header, plots_dir=plots_dir)
    except OutputError as err:
        result = _write_failure(result, err)
        written = []
    row = summary_row(result)
    try:
        write_status(row, out_dir)
    except OutputError as err:
        for product in written:
            product.unlink(missing_ok=True)
        log.error("%s: %s", result.file, err)
        result = _write_failure(result, err)
        return Recorded(result, summary_row(result), (), False)
    return Recorded(result, row, tuple(written), True)


def _write_failure(result: ExposureResult, err: OutputError) -> ExposureResult:
    """``result`` failed at :data:`WRITE_STAGE` because of ``err``; its solution dropped. A transient failure
    (``OutputError.transient``: free the space and resubmit), so a resubmit solves it again."""
    return replace(result, status=FAILED, stage=WRITE_STAGE, reason=str(err), solution=None,
                   kind=FailureKind.of(err))


def _plain(value: Any) -> Any:
    """A JSON-friendly copy of a summary value (numpy scalars and paths become plain values)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def read_statuses(out_dir: str | Path) -> list[dict[str, Any]]:
    """Every status record of ``out_dir``, sorted by exposure name.

    Records that cannot be read or parsed (e.g. a partial file left by a filesystem that lost a
    write) are skipped with a logged warning.
    """
    folder = status_dir(out_dir)
    try:
        entries = sorted(entry.path for entry in os.scandir(folder)
                         if entry.name.endswith(STATUS_SUFFIX) and not entry.name.startswith("."))
    except FileNotFoundError:
        return []
    records: list[dict[str, Any]] = []
    for path in entries:
        try:
            with open(path, encoding="utf-8") as stream:
                record = json.load(stream)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            log.warning("%s: status record ignored, cannot be read: %s", path, err)
            continue
        if not isinstance(record, dict) or "name" not in record or "status" not in record:
            log.warning("%s: status record ignored, it has no 'name' and 'status'", path)
            continue
        records.append(record)
    return records


def manifest_path(out_dir: str | Path) -> Path:
    """The manifest of ``out_dir`` written by earlier versions: ``DIR/.astrodask/manifest.txt`` (still read)."""
    return status_dir(out_dir) / MANIFEST_NAME


def manifest_files(out_dir: str | Path) -> list[Path]:
    """The manifest files of ``out_dir``, oldest first: ``manifest.txt``, then one per submit."""
    folder = status_dir(out_dir)
    try:
        names = sorted(entry.name for entry in os.scandir(folder)
                       if entry.name.startswith(MANIFEST_PREFIX) and entry.name.endswith(MANIFEST_SUFFIX))
    except FileNotFoundError:
        return []
    except OSError as err:
        raise InputFileError(f"{folder}: cannot list the status folder: {err.strerror or err}") from err
    legacy = [folder / MANIFEST_NAME] if MANIFEST_NAME in names else []
    return legacy + [folder / name for name in names if name != MANIFEST_NAME]


def read_manifest(out_dir: str | Path) -> list[Path]:
    """Every exposure submitted to ``out_dir`` so far, in the order first submitted (empty when none was)."""
    merged: dict[str, None] = {}
    for path in manifest_files(out_dir):
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError) as err:
            raise InputFileError(f"{path}: cannot read the manifest: {err}") from err
        for raw in text.splitlines():
            line = raw.strip()
            if line and not line.startswith(COMMENT_PREFIX):
                merged.setdefault(line, None)
    return [Path(p) for p in merged]


def write_manifest(paths: Iterable[str | Path], out_dir: str | Path) -> Path | None:
    """Add ``paths`` (made absolute) to the manifest of ``out_dir``, keeping earlier submits.

    Each submit writes its own file, ``DIR/.astrodask/manifest-<time>-<pid>-<random>.txt``,
    holding the paths not listed before; :func:`read_manifest` reads them all. No file is ever
    rewritten, so two submits at the same moment, from one machine or two sharing the folder,
    both keep their additions without a lock (which a shared filesystem may not honour, and a
    killed client would leave behind).

    Returns
    -------
    Path or None
        The manifest file written; None when every path was already listed.
    """
    known = {os.fspath(p) for p in read_manifest(out_dir)}
    new: dict[str, None] = {}
    for path in paths:
        absolute = os.path.abspath(os.fspath(path))
        if absolute not in known:
            new.setdefault(absolute, None)
    if not new:
        return None
    text = "".join(f"{p}\n" for p in new)
    name = f"{MANIFEST_PREFIX}{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}{MANIFEST_SUFFIX}"
    return atomic_write(status_dir(out_dir) / name, lambda tmp: _write_text(tmp, text))


# --------------------------------------------------------------------------
# Where a backlog stands
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class FailedExposure:
    """An exposure whose latest solve failed: its name, why, and whether a resubmit retries it."""

    name: str
    reason: str
    kind: str = ""

    def __str__(self) -> str:
        kind = f" ({self.kind})" if self.kind else ""
        return f"{self.name}{kind}: {self.reason}"


@dataclass(frozen=True)
class BacklogStatus:
    """Where a backlog stands.

    Attributes
    ----------
    done
        Names of the solved exposures.
    failed
        The exposures whose latest solve failed, with the reason and its kind.
    pending
        Inputs with neither a status record nor a solved solution file (empty when the inputs
        were not given).
    """

    done: tuple[str, ...]
    failed: tuple[FailedExposure, ...]
    pending: tuple[Path, ...] = ()

    @property
    def n_done(self) -> int:
        """Number of solved exposures."""
        return len(self.done)

    @property
    def n_failed(self) -> int:
        """Number of failed exposures."""
        return len(self.failed)

    @property
    def n_pending(self) -> int:
        """Number of exposures not finished yet."""
        return len(self.pending)

    @property
    def n_total(self) -> int:
        """Done, failed and pending together."""
        return self.n_done + self.n_failed + self.n_pending


def backlog_status(out_dir: str | Path, *, inputs: Sequence[str | Path] | None = None) -> BacklogStatus:
    """Done, failed and pending exposures of an output folder.

    A status record is the latest word on its exposure; a solution file saying ``SOLVED`` counts
    for an exposure without a record (e.g. one solved by ``astrodask solve``).

    Parameters
    ----------
    out_dir
        The output folder.
    inputs
        The exposures of the backlog (e.g. :func:`read_manifest`); those neither solved nor failed
        are pending.  Without them nothing is pending.
    """
    latest: dict[str, tuple[str, str, str]] = {}
    for record in read_statuses(out_dir):
        latest[str(record["name"])] = (str(record["status"]), str(record.get("reason", "") or ""),
                                       str(record.get("failure_kind", "") or ""))
    for name in sorted(_solution_names(Path(out_dir)) - latest.keys()):
        if is_solved_file(solution_path(out_dir, name)):
            latest[name] = (SOLVED, "", "")
    done = tuple(name for name, (status, _, _) in sorted(latest.items()) if status == SOLVED)
    failed = tuple(FailedExposure(name, reason or f"status {status!r}", kind)
                   for name, (status, reason, kind) in sorted(latest.items()) if status != SOLVED)
    pending = tuple(Path(p) for p in (inputs or ()) if exposure_name(p) not in latest)
    return BacklogStatus(done=done, failed=failed, pending=pending)


def format_status(status: BacklogStatus, *, max_listed: int = MAX_LISTED,
                  max_pending_shown: int = MAX_PENDING_SHOWN) -> str:
    """A human summary: the counts, the failed exposures with their kind and reason, then what is pending.

    Parameters
    ----------
    status
        From :func:`backlog_status`.
    max_listed
        Failed exposures listed at most (the rest are counted).
    max_pending_shown
        Pending exposures named at most.
    """
    lines = [f"{status.n_done} solved, {status.n_failed} failed, {status.n_pending} pending "
             f"({status.n_total} exposures)"]
    if status.failed:
        lines.append("failed:")
        lines += [f"  {failure}" for failure in status.failed[:max_listed]]
        if status.n_failed > max_listed:
            lines.append(f"  ... and {status.n_failed - max_listed} more (see {SUMMARY_NAME})")
    if status.pending:
        shown = ", ".join(exposure_name(p) for p in status.pending[:max_pending_shown])
        more = ", ..." if status.n_pending > max_pending_shown else ""
        lines.append(f"pending: {status.n_pending} ({shown}{more})")
    return "\n".join(lines)


def assemble_summary(out_dir: str | Path) -> Path:
    """Rebuild ``DIR/summary.ecsv`` from every status record, one row per exposure sorted by name.

    The columns are :data:`astrodask.io.output.SUMMARY_COLUMNS` and the ``t_<stage>_s`` timings; values missing
    from a record are empty (``""``, 0 or NaN).  The file is replaced atomically.
    """
    names = list(SUMMARY_COLUMNS) + [f"t_{stage}_s" for stage in STAGES]
    template = summary_row(ExposureResult(file="", name="", status=FAILED))
    kinds = {name: type(template.get(name, np.nan)) for name in names}
    records = read_statuses(out_dir)
    columns = [[_coerce(record.get(name), kinds[name], template.get(name, np.nan)) for record in records]
               for name in names]
    table = Table(columns, names=names, dtype=[kinds[name] for name in names])
    table.meta["astrodask_version"] = __version__
    path = Path(out_dir) / SUMMARY_NAME
    atomic_write(path, lambda tmp: table.write(tmp, format="ascii.ecsv", overwrite=True))
    log.info("%s: %d exposures", path, len(table))
    return path


def _coerce(value: Any, kind: type, default: Any) -> Any:
    """``value`` as ``kind`` (str, int or float), or ``default`` when absent or not convertible."""
    if value is None:
        return default
    try:
        if kind is int and isinstance(value, float) and not value.is_integer():
            return default
        return kind(value)
    except (TypeError, ValueError, OverflowError):
        return default


# --------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as stream:
        stream.write(text)
        stream.flush()
        os.fsync(stream.fileno())
