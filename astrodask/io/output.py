"""Writing results where astronomy tools read them: WCS FITS files, the summary table, plots.

Every file is written atomically (a temporary file in the same folder, then a
rename), so a reader never sees half a file and a killed writer leaves nothing.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import socket
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from astrodask import __version__
from astrodask.config import config_digest
from astrodask.errors import InputFileError, OutputError
from astrodask.solve.tpv import tpv_header
from astrodask.types import SOLVED, ExposureResult, Stage

log = logging.getLogger(__name__)

#: Suffix of a solution file: ``<name>.wcs.fits``.
SOLUTION_SUFFIX = ".wcs.fits"
#: Header keyword of a solution file holding the solve status, and its value for a solved exposure.
STATUS_KEYWORD = "ASTSTAT"
SOLVED_VALUE = SOLVED.upper()
#: Suffix of the pure-TPV companion of a solution that carries the turbulence correction: ``<name>.tpv.fits``.
TPV_SUFFIX = ".tpv.fits"
#: EXTNAME of the distortion lookup tables (FITS "distortion paper", Calabretta et al. draft; astropy reads it).
LOOKUP_EXTNAME = "WCSDVARR"
#: Header keyword saying which correction a solution carries: ``TPV+GP`` or ``TPV``.
CORRECTION_KEYWORD = "ASTCORR"
#: The summary table of an output folder.
SUMMARY_NAME = "summary.ecsv"
#: Mode asked for every file written, before the umask: read-write for all, as ``open()`` does.
USER_FILE_MODE = 0o666
#: Random temporary names tried before giving up (each try fails only if the name exists).
TEMPORARY_NAME_ATTEMPTS = 100
#: Folder of an output directory holding the per-exposure status records and the manifest.
STATUS_DIRNAME = ".astrodask"
#: Start of the name of the file written then removed by :func:`check_writable` to prove a folder can
#: be written.
WRITE_PROBE_PREFIX = ".astrodask-write-probe."
#: End of the name of every temporary file (:func:`atomic_write`).
TEMPORARY_SUFFIX = ".tmp"
#: A temporary file's name: ``.<name>.<host>-<pid>.<random>.tmp``.
_TEMPORARY_NAME = re.compile(r"\.(?P<name>.+)\.(?P<host>[^.]+)-(?P<pid>\d+)\.[^.]+\.tmp")
#: WCS keywords removed from an exposure's header before the solution is written in.
_WCS_KEY_PREFIXES = ("CTYPE", "CRPIX", "CRVAL", "CDELT", "CUNIT", "CD1_", "CD2_", "PC1_", "PC2_", "PV1_", "PV2_",
                     "A_", "B_", "AP_", "BP_", "CROTA")
_WCS_KEYS = {"WCSAXES", "RADESYS", "EQUINOX", "LONPOLE", "LATPOLE", "MJDREF", "A_ORDER", "B_ORDER", "AP_ORDER",
             "BP_ORDER", "A_DMAX", "B_DMAX", "WCSNAME", "IMAGEW", "IMAGEH"}


def solution_path(out_dir: str | Path, name: str) -> Path:
    """Where the solution of exposure ``name`` goes."""
    return Path(out_dir) / f"{name}{SOLUTION_SUFFIX}"


def solution_header(result: ExposureResult) -> fits.Header:
    """The solved WCS (RA---TPV/DEC--TPV) with the solve's quality keywords."""
    if result.solution is None:
        raise ValueError(f"{result.file}: no solution to write ({result.reason})")
    ny, nx = result.shape
    header = tpv_header(result.solution, shape=(ny, nx))
    q, m = result.quality, result.error_model
    cards: list[tuple[str, Any, str]] = [
        (STATUS_KEYWORD, result.status.upper(), "astrodask solve status"),
        ("ASTVERS", __version__, "astrodask version"),
        ("ASTDATE", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"), "UTC time of the solve"),
        ("ASTFILE", Path(result.file).name, "exposure solved"),
        ("TPVDEG", int(result.solution.degree), "degree of the TPV polynomial"),
        ("NSOURCE", int(result.counts.get("depth_sources", 0)), "sources of the depth pass"),
        ("NREFS", int(result.counts.get("references", 0)), "Gaia reference stars over the footprint"),
        ("NREGOK", int(result.counts.get("regions_ok", 0)), "regions that matched and agree"),
        ("NMATCHED", int(result.counts.get("depth_matches", 0)), "depth-matched pairs"),
        ("NMATCH", int(result.counts.get("matches", 0)), "pairs kept in the final fit"),
        ("RMSXI", round(result.rms_arcsec[0], 5), "[arcsec] residual rms along xi (east)"),
        ("RMSETA", round(result.rms_arcsec[1], 5), "[arcsec] residual rms along eta (north)"),
    ]
    if q is not None:
        cards += [("CHI2", round(float(q.chi2), 3), "chi-square over the entire matched list"),
                  ("DOF", int(q.dof), "degrees of freedom of CHI2"),
                  ("CHI2DOF", round(float(q.chi2_dof), 5), "chi-square per degree of freedom"),
                  ("CHI2K", round(float(q.chi2_kept), 3), "chi-square over the kept pairs (NMATCH)"),
                  ("DOFK", int(q.dof_kept), "degrees of freedom of CHI2K"),
                  ("CHI2DOFK", round(float(q.chi2_dof_kept), 5), "CHI2K per degree of freedom"),
                  ("CHI2GATE", chi2_gate(result).upper(), "chi-square of the quality gate: ALL or KEPT")]
    if m is not None:
        cards += [("ERRSCALE", round(float(m.scale), 5), "like_fit: scale on the SEP centroid errors"),
                  ("ERRFLOOR", round(float(m.floor_mas), 3), "[mas] like_fit: systematic floor per axis")]
    for key, value, comment in cards:
        header[key] = (value, comment)
    for key, value, comment in uncertainty_cards(result):
        header[key] = (value, comment)
    if result.reason:
        header["ASTREASN"] = (result.reason[:68], "why the solve failed")
    return header


def uncertainty_cards(result: ExposureResult, *, tpv_only: bool = False) -> list[tuple[str, Any, str]]:
    """The correction the solution carries, its predicted error (CRDERi, CSYERi) and the turbulence figures.

    ``CRDER1``/``CRDER2`` (random) and ``CSYER1``/``CSYER2`` (systematic) are FITS WCS Paper I's
    keywords, in degrees, here on the sky along xi (east) and eta (north), not in degrees of RA.
    With ``tpv_only``, those of the TPV alone (the ``<name>.tpv.fits`` companion).
    """
    from astrodask.solve.turbulence import MAS_PER_DEG

    t = result.turbulence
    if t is None:
        return []
    applied = t.applied and not tpv_only
    pred = t.predicted if applied else t.predicted_tpv
    cards: list[tuple[str, Any, str]] = [
        (CORRECTION_KEYWORD, "TPV+GP" if applied else "TPV",
         "TPV+GP: GP lookup tables on the TPV; TPV: none"),
        ("CRDER1", float(pred.random_mas[0] / MAS_PER_DEG), "[deg] predicted random error, xi (on sky)"),
        ("CRDER2", float(pred.random_mas[1] / MAS_PER_DEG), "[deg] predicted random error, eta"),
        ("CSYER1", float(pred.systematic_mas / MAS_PER_DEG), "[deg] systematic error: reference frame"),
        ("CSYER2", float(pred.systematic_mas / MAS_PER_DEG), "[deg] systematic error: reference frame"),
    ]
    if t.kernel is not None:
        k = t.kernel
        sigma = np.sqrt(k.axis_variance_mas2())
        scale = result.solution.scale_arcsec if result.solution is not None else float("nan")
        cards += [("TURBSIG1", round(float(sigma[0]), 3), "[mas] correlated residual rms, xi"),
                  ("TURBSIG2", round(float(sigma[1]), 3), "[mas] correlated residual rms, eta"),
                  ("TURBL0", round(float(k.outer_scale_px * scale / 60.0), 3), "[arcmin] kernel outer scale"),
                  ("TURBQ", round(float(k.axis_ratio), 4), "kernel axis ratio, short/long"),
                  ("TURBANG", round(float(np.degrees(k.angle_rad)), 2), "[deg] kernel long axis, +i towards +j")]
    if t.significance is not None:
        cards.append(("TURBCSIG", round(float(t.significance.sigma), 2),
                      "[sigma] short-range residual correlation"))
    if t.noise is not None:  # where the predicted error's field part comes from (no GP): min(TURBF, TURBFB)
        cards += [("TURBF", round(float(t.noise.field_mas2), 3), "[mas2] residual variance beyond white noise"),
                  ("TURBFSE", round(float(t.noise.field_se_mas2), 3), "[mas2] its standard error"),
                  ("TURBFB", round(float(t.field_bound_mas2), 3), "[mas2] field variance bound: correlation")]
    if t.cv is not None:
        cv = t.cv
        cards += [("CVRMS1", round(cv.rms_before_mas[0], 3), "[mas] CV held-back rms, xi, TPV"),
                  ("CVRMS2", round(cv.rms_before_mas[1], 3), "[mas] CV held-back rms, eta, TPV"),
                  ("CVRMSC1", round(cv.rms_after_mas[0], 3), "[mas] CV held-back rms, xi, TPV+GP"),
                  ("CVRMSC2", round(cv.rms_after_mas[1], 3), "[mas] CV held-back rms, eta, TPV+GP"),
                  ("CVGAIN", round(cv.gain_sigma, 2), "[sigma] CV gain of the correction")]
    return cards


def lookup_tables(result: ExposureResult) -> tuple[list[fits.Card], list[fits.ImageHDU]]:
    """The turbulence correction as FITS distortion lookup tables: the header cards and the two extensions.

    ``CPDISj = 'LOOKUP'`` with ``DPj`` record-valued cards naming extension ``WCSDVARR`` version j,
    whose image holds the offset along pixel axis j at the grid's nodes (pixels, added to the
    pixel coordinates before the TPV; bilinear between nodes). The extension's ``CRPIXk = 1``,
    ``CRVALk = 1`` and ``CDELTk = step`` put its first node on the image's first pixel (FITS
    pixel 1, our 0-based 0). Empty when no correction is applied.
    """
    t = result.turbulence
    if t is None or not t.applied or t.field is None:
        return [], []
    field = t.field
    cards: list[fits.Card] = []
    hdus: list[fits.ImageHDU] = []
    for axis in (1, 2):
        cards += [fits.Card(f"CPDIS{axis}", "LOOKUP", "turbulence correction: lookup table"),
                  fits.Card(f"DP{axis}", f"EXTVER: {axis}", "extension WCSDVARR of this version"),
                  fits.Card(f"DP{axis}", "NAXES: 2", "the table depends on both pixel axes"),
                  fits.Card(f"DP{axis}", "AXIS.1: 1", "table axis 1 is pixel axis 1"),
                  fits.Card(f"DP{axis}", "AXIS.2: 2", "table axis 2 is pixel axis 2")]
        hdu = fits.ImageHDU(np.ascontiguousarray(field.offset_px[..., axis - 1], dtype=np.float32),
                            name=LOOKUP_EXTNAME)
        hdu.header["EXTVER"] = (axis, "pixel axis corrected")
        for k in (1, 2):
            hdu.header[f"CRPIX{k}"] = (1.0, "table pixel of the first node")
            hdu.header[f"CRVAL{k}"] = (1.0, "image pixel (FITS, 1-based) of the first node")
            hdu.header[f"CDELT{k}"] = (float(field.step_px), "image pixels per table pixel")
        hdu.header["BUNIT"] = ("pixel", "offset added to pixel axis EXTVER")
        hdus.append(hdu)
    return cards, hdus


def tpv_path(out_dir: str | Path, name: str) -> Path:
    """Where the pure-TPV companion of exposure ``name``'s corrected solution goes."""
    return Path(out_dir) / f"{name}{TPV_SUFFIX}"


def chi2_gate(result: ExposureResult) -> str:
    """Which chi-square/dof the quality gate limited in this solve: ``"all"`` or ``"kept"`` (``fit.chi2_gate``)."""
    return str(result.config.get("fit", {}).get("chi2_gate", "all"))


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Write through a temporary file in the same folder, then rename it over ``path``.

    The rename is atomic on a POSIX filesystem (local or shared): a reader, or a second
    writer of the same file, sees either the old file or the new one whole, never a mix.
    A failed write leaves neither the temporary file nor a partial ``path``. The file gets the
    permissions of any file the user writes, ``0o666`` less the process's umask
    (``tempfile.mkstemp`` would make it ``0o600``: on a shared cluster nobody but the worker's
    own user could read a solution).

    Raises
    ------
    OutputError
        When the folder cannot be made or the file cannot be written (no permission, a
        read-only filesystem, the disk full...), naming the file and the system's reason.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _create_temporary(path)
    except OSError as err:
        raise output_error(path, err) from err
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        cause = _output_cause(err)
        if cause is not None and not isinstance(err, OutputError):
            raise output_error(path, cause) from err
        raise
    return path


def _create_temporary(path: Path) -> str:
    """Create an empty, uniquely named temporary file beside ``path`` with mode ``0o666 & ~umask``,
    named ``.<name>.<host>-<pid>.<random>.tmp`` (who writes it: :func:`remove_stale_temporaries`).

    ``os.open`` with ``O_EXCL`` applies the umask itself (no process-wide ``os.umask`` call, which
    would race between the threads of a Dask worker).
    """
    for _ in range(TEMPORARY_NAME_ATTEMPTS):
        tmp = os.path.join(path.parent, f"{_temporary_prefix(path)}{secrets.token_hex(6)}{TEMPORARY_SUFFIX}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, USER_FILE_MODE)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"{path.parent}: no free temporary name for {path.name} "
                          f"after {TEMPORARY_NAME_ATTEMPTS} attempts")


#: What to do about a failed write, by errno.
_OUTPUT_FIXES = {
    errno.ENOSPC: "the disk is full: free space there and resubmit (solved exposures are skipped)",
    errno.EDQUOT: "the disk quota is exceeded: free space there and resubmit (solved exposures are skipped)",
    errno.EROFS: "the filesystem is read-only: choose another --out",
    errno.EACCES: "no permission to write there: choose another --out or change its permissions",
    errno.EPERM: "no permission to write there: choose another --out or change its permissions",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another --out",
    errno.EIO: "the storage reported an I/O error: check the disk or mount, then resubmit",
    errno.EFBIG: "the file is larger than the filesystem allows",
}
#: The errors of a write that are the output's fault (others, e.g. an input file that vanished, are not).
OUTPUT_ERRNOS = frozenset(_OUTPUT_FIXES)


def _output_cause(err: BaseException) -> OSError | None:
    """The OS error behind ``err`` that is the output's fault (:data:`OUTPUT_ERRNOS`), if any.

    Writers may wrap it (astropy raises a new ``OSError`` without errno from the one of a
    full disk): the chain of causes and contexts is followed.
    """
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError) and current.errno in OUTPUT_ERRNOS:
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def output_error(path: str | Path, err: OSError) -> OutputError:
    """An :class:`~astrodask.errors.OutputError` naming ``path``, the system's reason and the fix."""
    reason = err.strerror or str(err)
    fix = _OUTPUT_FIXES.get(err.errno or 0, "")
    return OutputError(f"{path}: cannot write: {reason}" + (f"; {fix}" if fix else ""))


def check_writable(out_dir: str | Path) -> Path:
    """Make ``out_dir`` (and its status folder) if needed and prove a file can be written there.

    Called before a backlog is submitted, so that a folder that cannot be written is reported
    at once, before any solve is wasted. A probe file of a unique name is written and removed
    (two submits checking one folder at once do not disturb each other).

    Raises
    ------
    OutputError
        Naming the folder and why it cannot be written.
    """
    folder = Path(out_dir)
    for where in (folder, folder / STATUS_DIRNAME):
        try:
            where.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=WRITE_PROBE_PREFIX, dir=where)
            try:
                os.write(fd, b"astrodask write probe\n")
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(probe)
        except OSError as err:
            raise OutputError(f"output folder {folder} cannot be written ({output_error(where, err)})") from err
    return folder


def _temporary_prefix(path: Path) -> str:
    """Start of the temporary name of ``path``: ``.<name>.<host>-<pid>.`` (who writes it)."""
    return f".{path.name}.{_host()}-{os.getpid()}."


def _host() -> str:
    """This machine's name as it appears in temporary names (dots made underscores)."""
    return socket.gethostname().replace(".", "_")


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Remove the temporary files a killed writer left in ``folder`` and its status folder.

    A writer killed between creating its temporary file and renaming it (a SIGKILLed worker)
    leaves ``.<name>.<host>-<pid>.<random>.tmp`` behind. Only those written on this machine
    by a process that no longer runs are removed: a live writer's file, or one from another
    machine (whose processes cannot be seen from here), is left alone.

    Returns
    -------
    list of Path
        The files removed.
    """
    host = _host()
    removed: list[Path] = []
    for where in (Path(folder), Path(folder) / STATUS_DIRNAME):
        try:
            entries = list(os.scandir(where))
        except OSError:
            continue
        for entry in entries:
            match = _TEMPORARY_NAME.fullmatch(entry.name)
            if match is None or match["host"] != host or _process_runs(int(match["pid"])):
                continue
            Path(entry.path).unlink(missing_ok=True)
            removed.append(Path(entry.path))
    if removed:
        log.info("%s: removed %d temporary file(s) left by killed writers", folder, len(removed))
    return removed


def _process_runs(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it runs, as another user
    return True


def write_solution(result: ExposureResult, out_dir: str | Path) -> Path:
    """Write ``DIR/<name>.wcs.fits``: a primary header holding the solved WCS and quality keywords.

    When the turbulence correction is applied it rides in the same file as distortion lookup
    tables (:func:`lookup_tables`), which ``astropy.wcs.WCS(hdul[0].header, hdul)`` applies on top
    of the TPV; the TPV alone, for tools that read only TPV (or that apply lookup tables to every
    alternate WCS of a header, as astropy does), is written beside it as ``DIR/<name>.tpv.fits``
    (:func:`tpv_path`), with the TPV's own predicted error.
    """
    header = solution_header(result)
    cards, tables = lookup_tables(result)
    path = solution_path(out_dir, result.name)
    if not tables:
        tpv_path(out_dir, result.name).unlink(missing_ok=True)  # a stale companion of an earlier solve
        return atomic_write(path, lambda tmp: fits.PrimaryHDU(header=header).writeto(tmp, overwrite=True))
    tpv_header_only = header.copy()
    for key, value, comment in uncertainty_cards(result, tpv_only=True):
        tpv_header_only[key] = (value, comment)
    atomic_write(tpv_path(out_dir, result.name),
                 lambda tmp: fits.PrimaryHDU(header=tpv_header_only).writeto(tmp, overwrite=True))
    header["TPVFILE"] = (tpv_path(out_dir, result.name).name, "this solution without lookup tables")
    for card in cards:
        header.append(card)
    return atomic_write(path, lambda tmp: fits.HDUList([fits.PrimaryHDU(header=header), *tables]).writeto(
        tmp, overwrite=True))


def write_header_copy(result: ExposureResult, out_dir: str | Path) -> Path:
    """A copy of the exposure (compressed if it was) with the solved WCS in its image header.

    The TPV alone, with its own predicted error: the turbulence correction's lookup tables ride
    only in the solution file (:func:`write_solution`).
    """
    source = Path(result.file)
    header = solution_header(result)
    for key, value, comment in uncertainty_cards(result, tpv_only=True):
        header[key] = (value, comment)
    target = Path(out_dir) / source.name
    if target.resolve() == source.resolve():
        raise InputFileError(f"{source}: --write-header would overwrite the input; choose another --out")

    def write(tmp: Path) -> None:
        with fits.open(source) as hdul:
            index = next(k for k, h in enumerate(hdul) if h.is_image and h.header.get("NAXIS", 0) == 2
                         or isinstance(h, fits.CompImageHDU))
            image = hdul[index]
            for key in list(image.header.keys()):
                if key in _WCS_KEYS or key.startswith(_WCS_KEY_PREFIXES):
                    del image.header[key]
            image.header.update(header)
            hdul.writeto(tmp, overwrite=True)

    return atomic_write(target, write)


SUMMARY_COLUMNS = ("file", "name", "status", "failure_kind", "reason", "notes", "stage", "sources", "references",
                   "regions_ok", "depth_matches", "matches", "rms_xi_arcsec", "rms_eta_arcsec", "chi2", "dof",
                   "chi2_dof", "chi2_kept", "dof_kept", "chi2_dof_kept", "err_scale", "err_floor_mas", "correction",
                   "turbulence", "crder_xi_mas", "crder_eta_mas", "csyer_mas", "crder_tpv_xi_mas", "crder_tpv_eta_mas",
                   "turb_sigma_xi_mas", "turb_sigma_eta_mas", "turb_outer_arcmin", "turb_corr_sigma", "turb_field_mas2",
                   "turb_field_se_mas2", "turb_field_bound_mas2", "cv_rms_mas", "cv_rms_corrected_mas",
                   "cv_gain_sigma")
#: The solve's stages, in order: one ``t_<stage>_s`` column each.
STAGES = tuple(stage.value for stage in Stage)


def summary_row(result: ExposureResult) -> dict[str, Any]:
    """One row of the summary table: counts, figures and seconds per stage.

    Besides :data:`SUMMARY_COLUMNS` and the timings, ``config_digest``
    (:func:`astrodask.config.config_digest` of the config the solve ran with) goes into the
    exposure's status record, not the summary.
    """
    q, m = result.quality, result.error_model
    row: dict[str, Any] = {
        "file": result.file, "name": result.name, "status": result.status,
        "failure_kind": "" if result.ok else str(result.kind), "reason": result.reason,
        "notes": "; ".join(result.notes),
        "stage": result.stage,
        "sources": int(result.counts.get("depth_sources", result.counts.get("sources", 0))),
        "references": int(result.counts.get("references", 0)),
        "regions_ok": int(result.counts.get("regions_ok", 0)),
        "depth_matches": int(result.counts.get("depth_matches", 0)),
        "matches": int(result.counts.get("matches", 0)),
        "rms_xi_arcsec": float(result.rms_arcsec[0]), "rms_eta_arcsec": float(result.rms_arcsec[1]),
        "chi2": float(q.chi2) if q is not None else np.nan, "dof": int(q.dof) if q is not None else 0,
        "chi2_dof": float(q.chi2_dof) if q is not None else np.nan,
        "chi2_kept": float(q.chi2_kept) if q is not None else np.nan,
        "dof_kept": int(q.dof_kept) if q is not None else 0,
        "chi2_dof_kept": float(q.chi2_dof_kept) if q is not None else np.nan,
        "err_scale": float(m.scale) if m is not None else np.nan,
        "err_floor_mas": float(m.floor_mas) if m is not None else np.nan,
    }
    row.update(turbulence_columns(result))
    for stage in STAGES:
        row[f"t_{stage}_s"] = float(result.timings.get(stage, 0.0))
    row["config_digest"] = config_digest(result.config) if result.config else ""
    return row


def turbulence_columns(result: ExposureResult) -> dict[str, Any]:
    """The summary's turbulence columns: the correction carried, why, predicted errors, kernel, cross-validation."""
    t = result.turbulence
    nan = float("nan")
    row: dict[str, Any] = {"correction": "" if t is None else t.correction, "turbulence": "" if t is None else t.reason}
    pred, tpv = (t.predicted, t.predicted_tpv) if t is not None else (None, None)
    row.update({"crder_xi_mas": pred.random_mas[0] if pred else nan,
                "crder_eta_mas": pred.random_mas[1] if pred else nan,
                "csyer_mas": pred.systematic_mas if pred else nan,
                "crder_tpv_xi_mas": tpv.random_mas[0] if tpv else nan,
                "crder_tpv_eta_mas": tpv.random_mas[1] if tpv else nan})
    sigma = np.sqrt(t.kernel.axis_variance_mas2()) if t is not None and t.kernel is not None else (nan, nan)
    scale = result.solution.scale_arcsec if result.solution is not None else nan
    row.update({"turb_sigma_xi_mas": float(sigma[0]), "turb_sigma_eta_mas": float(sigma[1]),
                "turb_outer_arcmin": (float(t.kernel.outer_scale_px * scale / 60.0)
                                      if t is not None and t.kernel is not None else nan),
                "turb_corr_sigma": (float(t.significance.sigma)
                                    if t is not None and t.significance is not None else nan)})
    noise = t.noise if t is not None else None
    row.update({"turb_field_mas2": noise.field_mas2 if noise else nan,
                "turb_field_se_mas2": noise.field_se_mas2 if noise else nan,
                "turb_field_bound_mas2": float(t.field_bound_mas2) if t is not None and noise else nan})
    cv = t.cv if t is not None else None
    row.update({"cv_rms_mas": float(np.hypot(*cv.rms_before_mas)) if cv else nan,
                "cv_rms_corrected_mas": float(np.hypot(*cv.rms_after_mas)) if cv else nan,
                "cv_gain_sigma": cv.gain_sigma if cv else nan})
    return row


def write_matched(result: ExposureResult, out_dir: str | Path) -> Path | None:
    """The entire matched list as ``DIR/<name>.matched.ecsv`` (debugging product)."""
    if result.matched is None:
        return None
    path = Path(out_dir) / f"{result.name}.matched.ecsv"
    return atomic_write(path, lambda tmp: result.matched.write(tmp, format="ascii.ecsv", overwrite=True))


def plot_solution(result: ExposureResult, out_dir: str | Path) -> Path | None:
    """``DIR/<name>.residuals.png``: the diagnostic panels (:func:`astrodask.io.plots.plot_solution`)."""
    from astrodask.io.plots import plot_solution as plot

    return plot(result, out_dir)


def plot_turbulence(result: ExposureResult, out_dir: str | Path) -> Path | None:
    """``DIR/<name>.turbulence.png``: the turbulence stage's panels (:func:`astrodask.io.plots.plot_turbulence`)."""
    from astrodask.io.plots import plot_turbulence as plot

    return plot(result, out_dir) if result.ok else None


#: Longest side of the image thumbnail in a failure's diagnostics plot, pixels.
THUMBNAIL_PX = 1000
#: Sources and references drawn at most (brightest first).
DIAGNOSTICS_MAX_POINTS = 3000
#: Colours of the region outcomes.
REGION_COLOURS = {"ok": "limegreen", "no-match": "red", "few-stars": "grey", "disagrees": "orange"}


def write_debug_products(result: ExposureResult, out_dir: str | Path) -> list[Path]:
    """Everything ``--debug`` writes for one exposure: matched list and plots, or a failure's diagnostics."""
    written = [p for p in (write_matched(result, out_dir), plot_solution(result, out_dir),
                           plot_turbulence(result, out_dir)) if p]
    if not result.ok and result.diagnostics is not None:
        written += write_failure_diagnostics(result, out_dir)
    return written


def write_products(result: ExposureResult, out_dir: str | Path, *, debug: bool = False,
                   write_header: bool = False, plots_dir: str | Path | None = None) -> list[Path]:
    """Every file a solve leaves in ``out_dir`` for one exposure, besides its status record.

    The one writer of both paths: the graph's ``write`` task
    (:func:`astrodask.run.graph.task_write`) and ``astrodask solve --serial``.

    Parameters
    ----------
    result
        The exposure's result, solved or failed.
    out_dir
        The output folder.
    debug
        Also :func:`write_debug_products` (matched list and plots, or a failure's diagnostics).
    write_header
        Also :func:`write_header_copy` (a copy of the exposure with the solved WCS).
    plots_dir
        Also the diagnostic plots into this folder (``--plots DIR``): :func:`plot_solution`, or
        :func:`plot_failure` for a failed exposure that explains itself.

    Returns
    -------
    list of Path
        The files written: :func:`write_solution` when solved, then the copy, then the debug products,
        then the plots.

    Raises
    ------
    OutputError
        When a file cannot be written (the disk full...); the files this call wrote before are
        removed, so the exposure is left unsolved, whole, for a resubmit.
    """
    written: list[Path] = []
    try:
        if result.ok:
            written.append(write_solution(result, out_dir))
            if write_header:
                written.append(write_header_copy(result, out_dir))
        if debug:
            written += write_debug_products(result, out_dir)
        already = debug and plots_dir is not None and Path(plots_dir).resolve() == Path(out_dir).resolve()
        if plots_dir is not None and not already:
            try:
                Path(plots_dir).mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise output_error(plots_dir, err) from err
            plot = plot_solution(result, plots_dir) if result.ok else (
                plot_failure(result, plots_dir) if result.diagnostics is not None else None)
            written += [plot] if plot else []
            turbulence = plot_turbulence(result, plots_dir)
            written += [turbulence] if turbulence else []
    except OutputError:
        # all or nothing: a solution without its products would be skipped by every resubmit
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return written


def write_failure_diagnostics(result: ExposureResult, out_dir: str | Path) -> list[Path]:
    """``DIR/<name>.diagnostics.json`` and ``DIR/<name>.diagnostics.png`` of a failed solve.

    The JSON holds the stage and reason, the detection's figures (FWHM, artefacts
    flagged), the coarse alignment's attempts and each region's outcome. The PNG
    shows detections (by flag) and reference stars (through the approximate WCS)
    over a thumbnail of the image, the region grid coloured by outcome, and the
    attempts as text.
    """
    import json

    diag = result.diagnostics
    if diag is None:
        return []
    summary = {"file": result.file, "name": result.name, **_plain(diag.details)}
    if diag.sources is not None:
        summary["detection"] = {k: _plain(v) for k, v in diag.sources.meta.items()
                                if k.startswith("n_") or k in ("winpos_fwhm_px", "star_r50_px", "saturation_adu",
                                                               "background_adu", "background_rms_adu")}
    if diag.references is not None:
        summary["references"] = {"n": len(diag.references), **{k: _plain(v) for k, v in diag.references.meta.items()
                                                               if k in ("n_in_image", "origin", "epoch", "scale_arcsec",
                                                                        "pointing_source")}}
    out = Path(out_dir)
    json_path = atomic_write(out / f"{result.name}.diagnostics.json",
                             lambda tmp: tmp.write_text(json.dumps(summary, indent=2) + "\n"))
    return [json_path, plot_failure(result, out)]


def _plain(value: Any) -> Any:
    """JSON-friendly copies of numpy scalars, arrays and nested containers."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _thumbnail(path: str) -> tuple[np.ndarray | None, int]:
    """A block-averaged thumbnail of the exposure and its binning factor (None when it cannot be read)."""
    from astrodask.errors import AstrodaskError
    from astrodask.io.exposure import read_exposure

    try:
        data = np.asarray(read_exposure(path).data, dtype=np.float32)
    except AstrodaskError:
        return None, 1
    ny, nx = data.shape
    factor = max(1, int(np.ceil(max(nx, ny) / THUMBNAIL_PX)))
    trimmed = data[: ny - ny % factor, : nx - nx % factor]
    thumb = np.nanmean(trimmed.reshape(ny // factor, factor, nx // factor, factor), axis=(1, 3))
    return thumb, factor


def plot_failure(result: ExposureResult, out_dir: str | Path) -> Path:
    """``DIR/<name>.diagnostics.png``: why a solve failed, over a thumbnail of the image."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from astrodask.types import ARTEFACT_FLAGS, SourceFlag

    diag = result.diagnostics
    assert diag is not None
    thumb, factor = _thumbnail(result.file)
    fig, (ax, text_ax) = plt.subplots(1, 2, figsize=(17, 8), width_ratios=(1.6, 1), constrained_layout=True)
    if thumb is not None:
        lo, hi = np.nanpercentile(thumb, [50, 99.7])  # the sky level white, the stars dark
        ny, nx = thumb.shape[0] * factor, thumb.shape[1] * factor
        ax.imshow(np.arcsinh(np.clip((thumb - lo) / max(hi - lo, 1e-9), 0, None) * 10), origin="lower", cmap="gray_r",
                  extent=(-0.5, nx - 0.5, -0.5, ny - 0.5), interpolation="nearest")
    elif result.shape != (0, 0):
        ny, nx = result.shape
    else:
        ny = nx = 0
    if diag.sources is not None and len(diag.sources):
        s = diag.sources[:DIAGNOSTICS_MAX_POINTS]
        flag = np.asarray(s["flag"])
        i, j = np.asarray(s["i"]), np.asarray(s["j"])
        clean = (flag & int(ARTEFACT_FLAGS | SourceFlag.SATURATED)) == 0
        ax.scatter(i[clean], j[clean], s=18, facecolors="none", edgecolors="limegreen", linewidths=0.6,
                   label=f"sources ({int(clean.sum())})")
        for bit, marker, colour in ((SourceFlag.SATURATED, "o", "gold"), (SourceFlag.SHARP, "x", "red"),
                                    (SourceFlag.EXTENDED, "s", "magenta"), (SourceFlag.ELONGATED, "d", "orange")):
            sel = (flag & int(bit)) != 0
            if sel.any():
                style = {"c": colour} if marker == "x" else {"facecolors": "none", "edgecolors": colour}
                ax.scatter(i[sel], j[sel], s=22, marker=marker, linewidths=0.8, **style,
                           label=f"{bit.name.lower()} ({int(sel.sum())})")
        if not nx:
            nx, ny = float(i.max()) + 1, float(j.max()) + 1
    if diag.references is not None and len(diag.references):
        r = diag.references
        inside = np.asarray(r["in_image"], dtype=bool)
        x, y = np.asarray(r["x"])[inside][:DIAGNOSTICS_MAX_POINTS], np.asarray(r["y"])[inside][:DIAGNOSTICS_MAX_POINTS]
        ax.scatter(x, y, s=14, marker="+", color="deepskyblue", linewidths=0.7,
                   label=f"Gaia through the approximate WCS ({len(x)})")
    for region in diag.details.get("regions", []):
        i0, i1, j0, j1 = region["box_px"]
        colour = REGION_COLOURS.get(region["status"], "white")
        ax.add_patch(Rectangle((i0, j0), i1 - i0, j1 - j0, fill=False, edgecolor=colour, linewidth=1.5))
        ax.text(i0 + 0.03 * (i1 - i0), j1 - 0.06 * (j1 - j0),
                f"{region['index']}: {region['status']}\n{region['n_pairs']} pairs {region['method']}",
                color=colour, fontsize=7, va="top", bbox={"facecolor": "black", "alpha": 0.4, "pad": 1})
    if nx:
        ax.set(xlim=(-0.5, nx - 0.5), ylim=(-0.5, ny - 0.5))
    ax.set(aspect="equal", xlabel="i (px)", ylabel="j (px)", title=f"{result.name}: detections and Gaia stars")
    ax.legend(loc="lower right", fontsize=7, framealpha=0.7)
    lines = [f"FAILED at {result.stage}", *textwrap.wrap(result.reason, 70), ""]
    if diag.sources is not None:
        m = diag.sources.meta
        lines += [f"detection: {m.get('n_sources', len(diag.sources))} sources, FWHM "
                  f"{m.get('winpos_fwhm_px', float('nan')):.2f} px, {m.get('n_saturated', 0)} saturated, "
                  f"{m.get('n_sharp', 0)} sharp, {m.get('n_extended', 0)} extended, "
                  f"{m.get('n_elongated', 0)} elongated", ""]
    coarse = diag.details.get("coarse", [])
    if coarse:
        lines.append("coarse alignment attempts:")
        for a in coarse:
            lines += textwrap.wrap(f"- {a['name']} ({a['method']}): {a['outcome']}; {a['n_pairs']} pairs, "
                                   f"{a['n_chance']} by chance", 70, subsequent_indent="    ")
        lines.append("")
    regions = diag.details.get("regions", [])
    if regions:
        lines.append("regions:")
        for region in regions:
            lines += textwrap.wrap(f"{region['index']:2d} {region['status']}: {region['n_pairs']} pairs "
                                   f"{region['method']} {region['reason']}", 70, subsequent_indent="    ")
    text_ax.axis("off")
    text_ax.text(0.0, 1.0, "\n".join(lines[:90]), va="top", ha="left", family="monospace", fontsize=7)
    path = Path(out_dir) / f"{result.name}.diagnostics.png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=80, format="png"))
    plt.close(fig)
    return path
