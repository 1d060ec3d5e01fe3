"""Reference stars (``get_gaia_xy``): the Gaia archive, catalog files, proper motions.

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
import math
import re
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.table import Table

from astrodask.config import GaiaConfig
from astrodask.errors import ArchiveError, AstrodaskWarning, CatalogError, InputFileError
from astrodask.types import REFERENCE_COLUMNS, RefFlag

logger = logging.getLogger(__name__)

MAS_TO_RAD = np.pi / (180.0 * 3600.0 * 1000.0)

# --------------------------------------------------------------------------
# Named constants
# --------------------------------------------------------------------------

#: Gaia (E)DR3 G-band photometric zero point, mag (Riello et al. 2021, A&A 649, A3):
#: ``phot_g_mean_mag = GAIA_G_ZERO_POINT - 2.5 log10(phot_g_mean_flux / (e-/s))``.
GAIA_G_ZERO_POINT = 25.6874
#: Reference epoch of Gaia DR3 positions, Julian years (TCB).
DEFAULT_REF_EPOCH = 2016.0
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

#: The reference columns that must be present in a catalog.
REQUIRED_COLUMNS = ("ra", "dec", "phot_g_mean_mag")

#: Accepted column names (lower case) for each reference column, in order of
#: preference: Gaia archive names, then VizieR I/355 names, then simple ones.
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "source_id": ("source_id", "source", "dr3name", "dr2name", "designation"),
    "ra": ("ra", "ra_icrs"),
    "dec": ("dec", "de_icrs", "dec_icrs"),
    "ra_error": ("ra_error", "e_ra_icrs"),
    "dec_error": ("dec_error", "e_de_icrs", "e_dec_icrs"),
    "pmra": ("pmra",),
    "pmdec": ("pmdec", "pmde"),
    "parallax": ("parallax", "plx"),
    "ref_epoch": ("ref_epoch", "epoch"),
    "phot_g_mean_mag": ("phot_g_mean_mag", "gmag", "mag"),
    "phot_g_mean_flux": ("phot_g_mean_flux", "fg"),
}

#: Unit spellings of catalogs that astropy does not parse, and what they mean.
UNIT_ALIASES: dict[str, str] = {
    "e-/s": "electron/s",
    "e/s": "electron/s",
    "'electron'.s**-1": "electron/s",
    "electron.s**-1": "electron/s",
    "mas.yr**-1": "mas/yr",
    "julian years": "yr",
    "year": "yr",
}


def _parse_unit(text: str) -> u.UnitBase:
    """An astropy unit from a catalog's unit string (raises ValueError if unknown)."""
    text = text.strip()
    text = UNIT_ALIASES.get(text.lower(), text)
    try:
        return u.Unit(text, parse_strict="raise")
    except ValueError:
        return u.Unit(text, format="vounit", parse_strict="raise")


#: The units of :data:`REFERENCE_COLUMNS` as astropy units (None: dimensionless).
REFERENCE_UNITS: dict[str, u.UnitBase | None] = {
    name: (_parse_unit(text) if text else None) for name, text in REFERENCE_COLUMNS.items()
}

#: Errors the table readers raise on a file that is not in the format tried.
_READER_ERRORS = (OSError, ValueError, TypeError, KeyError, IndexError, EOFError)

#: File name suffixes and the astropy format they suggest.
_SUFFIX_FORMATS: dict[str, str] = {
    ".fits": "fits", ".fit": "fits", ".fts": "fits",
    ".vot": "votable", ".votable": "votable", ".xml": "votable",
    ".ecsv": "ascii.ecsv",
    ".csv": "ascii.csv",
    ".parquet": "parquet", ".pq": "parquet",
}

#: Short names of the astropy formats, for messages and ``meta['catalog_format']``.
_FORMAT_NAMES = {
    "fits": "fits", "votable": "votable", "ascii.ecsv": "ecsv", "ascii.csv": "csv",
    "parquet": "parquet", "ascii": "ascii",
}


# --------------------------------------------------------------------------
# Proper motions
# --------------------------------------------------------------------------


def propagate_to_epoch(ra_deg: np.ndarray, dec_deg: np.ndarray, pmra_masyr: np.ndarray,
                       pmdec_masyr: np.ndarray, dt_yr: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Move sky positions along their proper motions by ``dt_yr`` years.

    The motion is applied as a straight line in 3-D along the tangent-plane
    direction (``pmra`` includes cos(dec), as in Gaia), then renormalised to the
    unit sphere, so it is valid at the poles and across RA = 0/360. Radial
    velocity and parallax are neglected (sub-mas over decades for nearly all stars).

    Parameters
    ----------
    ra_deg, dec_deg
        Positions at the reference epoch, degrees.
    pmra_masyr, pmdec_masyr
        Proper motions, mas/yr; NaN is treated as zero.
    dt_yr
        Target epoch minus reference epoch, years (scalar or per star).

    Returns
    -------
    ra_deg, dec_deg
        Positions at the target epoch, degrees, RA in [0, 360).
    """
    ra = np.radians(np.asarray(ra_deg, dtype=np.float64))
    dec = np.radians(np.asarray(dec_deg, dtype=np.float64))
    pmra = np.nan_to_num(np.asarray(pmra_masyr, dtype=np.float64)) * MAS_TO_RAD
    pmdec = np.nan_to_num(np.asarray(pmdec_masyr, dtype=np.float64)) * MAS_TO_RAD
    dt = np.asarray(dt_yr, dtype=np.float64)
    cr, sr, cd, sd = np.cos(ra), np.sin(ra), np.cos(dec), np.sin(dec)
    p = np.stack([cd * cr, cd * sr, sd])
    e_ra = np.stack([-sr, cr, np.zeros_like(ra)])
    e_dec = np.stack([-sd * cr, -sd * sr, cd])
    q = p + (pmra * dt) * e_ra + (pmdec * dt) * e_dec
    q /= np.linalg.norm(q, axis=0)
    ra_new = np.degrees(np.arctan2(q[1], q[0])) % 360.0
    dec_new = np.degrees(np.arcsin(np.clip(q[2], -1.0, 1.0)))
    return ra_new, dec_new


def propagate_table(table: Table, epoch_yr: float) -> Table:
    """A copy of a reference table with positions moved to ``epoch_yr``.

    Stars with no proper motion (NaN or masked pmra/pmdec) keep their positions
    and get :attr:`RefFlag.NO_PROPER_MOTION` in ``ref_flag``. The original
    positions are kept as ``ra_ref``/``dec_ref``; ``meta['epoch']`` records the epoch.
    """
    out = table.copy()
    pmra = _filled(out["pmra"])
    pmdec = _filled(out["pmdec"])
    no_pm = ~np.isfinite(pmra) | ~np.isfinite(pmdec)
    dt = epoch_yr - _filled(out["ref_epoch"])
    out["ra_ref"] = _filled(out["ra"])
    out["dec_ref"] = _filled(out["dec"])
    ra, dec = propagate_to_epoch(out["ra_ref"], out["dec_ref"], np.where(no_pm, 0.0, pmra),
                                 np.where(no_pm, 0.0, pmdec), dt)
    out["ra"] = ra
    out["dec"] = dec
    flags = np.asarray(out["ref_flag"], dtype=np.int32) if "ref_flag" in out.colnames else np.zeros(len(out), np.int32)
    out["ref_flag"] = np.where(no_pm, flags | int(RefFlag.NO_PROPER_MOTION), flags).astype(np.int32)
    out.meta["epoch"] = float(epoch_yr)
    return out


def _filled(column) -> np.ndarray:
    """Column values as float64 with masked entries as NaN."""
    values = np.ma.asarray(column).astype(np.float64)
    return np.ma.filled(values, np.nan)


# --------------------------------------------------------------------------
# Catalog files
# --------------------------------------------------------------------------


def read_catalog(path: str | Path, *, default_ref_epoch: float = DEFAULT_REF_EPOCH) -> Table:
    """Read a reference catalog file into a table of :data:`REFERENCE_COLUMNS`.

    Accepts a Gaia archive export or any table with Gaia archive column names
    (case-insensitive), VizieR I/355 names (``RA_ICRS``, ``DE_ICRS``,
    ``e_RA_ICRS``, ``e_DE_ICRS``, ``pmRA``, ``pmDE``, ``Plx``, ``Gmag``, ``FG``,
    ``Source``/``DR3Name``, ``Epoch``) or a plain ``mag`` column taken as G, in
    FITS (the first binary or ASCII table HDU holding positions), VOTable, ECSV,
    CSV or Parquet, optionally gzip-compressed (except Parquet). The format is
    recognised from the file's first bytes, then from its name.

    Parameters
    ----------
    path
        The catalog file.
    default_ref_epoch
        Epoch of the positions when the catalog has no ``ref_epoch``/``Epoch``
        column, Julian years (Gaia DR3: 2016.0).

    Returns
    -------
    astropy.table.Table
        Columns ``source_id`` (int64), ``ra``, ``dec`` (deg), ``ra_error``,
        ``dec_error`` (mas), ``pmra`` (mas/yr, including cos(dec)), ``pmdec``
        (mas/yr), ``parallax`` (mas), ``ref_epoch`` (yr), ``phot_g_mean_mag``
        (mag) and ``phot_g_mean_flux`` (e-/s), all float64 but ``source_id``;
        absent or masked values are NaN; see :func:`normalise_catalog` for how
        absent columns are filled. ``meta['catalog_path']`` and
        ``meta['catalog_format']`` record the source.

    Raises
    ------
    InputFileError
        If the file does not exist or is a directory.
    CatalogError
        If the file cannot be read as a table in any of the formats tried, or
        lacks a required column (ra, dec, a G magnitude).
    """
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"catalog file {path} does not exist")
    if not path.is_file():
        raise InputFileError(f"catalog {path} is not a file")
    table, fmt = _read_table_file(path)
    return normalise_catalog(table, default_ref_epoch=default_ref_epoch,
                             catalog_path=str(path), catalog_format=fmt)


def normalise_catalog(table: Table, *, default_ref_epoch: float = DEFAULT_REF_EPOCH,
                      catalog_path: str = "<table>", catalog_format: str = "table") -> Table:
    """Map a catalog table onto :data:`REFERENCE_COLUMNS` with their units.

    Column names are matched case-insensitively through :data:`COLUMN_ALIASES`;
    values are converted to the reference units when the column has a unit and
    taken as already in them when it has none. Absent optional columns are
    filled: errors, proper motions and parallax with NaN, ``ref_epoch`` with
    ``default_ref_epoch``, ``phot_g_mean_flux`` from the G magnitude with
    :data:`GAIA_G_ZERO_POINT` (also row by row where the flux is missing), and
    ``source_id`` with 1..N (string identifiers such as ``"Gaia DR3 123"``
    keep their number). Masked values become NaN (-1 for ``source_id``).
    Rows without a finite position are dropped with an :class:`AstrodaskWarning`.
    Each filled column is noted in ``meta['notes']``.

    Parameters
    ----------
    table
        The catalog as read.
    default_ref_epoch
        Epoch used when there is no epoch column, Julian years.
    catalog_path, catalog_format
        Where the table came from, recorded in ``meta`` and named in errors.

    Returns
    -------
    astropy.table.Table
        A new table with exactly the reference columns, in their order.

    Raises
    ------
    CatalogError
        If ra, dec or a G magnitude is missing, a column is not numeric, a
        unit cannot be converted, or a declination is outside +-90 deg.
    """
    lookup: dict[str, str] = {}
    for name in table.colnames:
        lookup.setdefault(name.lower(), name)
    found: dict[str, str] = {}
    for target, aliases in COLUMN_ALIASES.items():
        for alias in aliases:
            if alias in lookup:
                found[target] = lookup[alias]
                break
    missing = [name for name in REQUIRED_COLUMNS if name not in found]
    if missing:
        accepted = "; ".join(f"{name}: {', '.join(COLUMN_ALIASES[name])}" for name in missing)
        raise CatalogError(
            f"catalog {catalog_path} lacks required column(s) {', '.join(missing)} "
            f"(accepted names, case-insensitive: {accepted}); columns found: "
            f"{', '.join(table.colnames) or 'none'}"
        )

    n = len(table)
    notes: list[str] = []
    values: dict[str, np.ndarray] = {}
    for name in REFERENCE_COLUMNS:
        if name == "source_id":
            continue
        if name in found:
            values[name] = _numeric_column(table[found[name]], name, catalog_path)
        else:
            values[name] = np.full(n, np.nan)

    if "ref_epoch" not in found:
        values["ref_epoch"] = np.full(n, float(default_ref_epoch))
        notes.append(f"ref_epoch: no epoch column, {default_ref_epoch} assumed")
    else:
        unknown = ~np.isfinite(values["ref_epoch"])
        if unknown.any():
            values["ref_epoch"][unknown] = float(default_ref_epoch)
            notes.append(f"ref_epoch: {int(unknown.sum())} missing value(s), {default_ref_epoch} assumed")
    for name in ("ra_error", "dec_error", "pmra", "pmdec", "parallax"):
        if name not in found:
            notes.append(f"{name}: no column, NaN")

    flux_from_mag = g_flux_from_mag(values["phot_g_mean_mag"])
    if "phot_g_mean_flux" not in found:
        values["phot_g_mean_flux"] = flux_from_mag
        notes.append(f"phot_g_mean_flux: computed from phot_g_mean_mag with zero point {GAIA_G_ZERO_POINT}")
    else:
        fill = ~np.isfinite(values["phot_g_mean_flux"]) & np.isfinite(flux_from_mag)
        if fill.any():
            values["phot_g_mean_flux"][fill] = flux_from_mag[fill]
            notes.append(f"phot_g_mean_flux: {int(fill.sum())} missing value(s) computed from "
                         f"phot_g_mean_mag with zero point {GAIA_G_ZERO_POINT}")

    if "source_id" in found:
        source_id = _source_ids(table[found["source_id"]], catalog_path)
    else:
        source_id = np.arange(1, n + 1, dtype=np.int64)
        notes.append("source_id: no identifier column, synthesised as 1..N")

    dec = values["dec"]
    bad_dec = np.isfinite(dec) & (np.abs(dec) > 90.0)
    if bad_dec.any():
        raise CatalogError(
            f"catalog {catalog_path}: column {found['dec']} has declinations outside -90..+90 deg "
            f"(e.g. {dec[bad_dec][0]!r}); check its unit"
        )
    ra = np.mod(values["ra"], 360.0)
    values["ra"] = np.where(ra >= 360.0, ra - 360.0, ra)  # np.mod(-1e-17, 360) is 360.0

    keep = np.isfinite(values["ra"]) & np.isfinite(values["dec"])
    n_dropped = int(n - keep.sum())
    if n_dropped:
        warnings.warn(f"catalog {catalog_path}: {n_dropped} row(s) without a finite position dropped",
                      AstrodaskWarning, stacklevel=2)
        notes.append(f"{n_dropped} row(s) without a finite position dropped")

    out = Table(meta={
        "catalog_path": catalog_path,
        "catalog_format": catalog_format,
        "column_map": {target: found[target] for target in REFERENCE_COLUMNS if target in found},
        "notes": notes,
    })
    out["source_id"] = source_id[keep]
    for name in REFERENCE_COLUMNS:
        if name != "source_id":
            out[name] = values[name][keep]
    for name, unit in REFERENCE_UNITS.items():
        out[name].unit = unit
    return out


def g_flux_from_mag(mag: np.ndarray | float) -> np.ndarray:
    """Gaia G-band flux (e-/s) of a G magnitude, with :data:`GAIA_G_ZERO_POINT`.

    Parameters
    ----------
    mag
        G magnitude(s), mag; NaN gives NaN.

    Returns
    -------
    numpy.ndarray
        ``10 ** (-0.4 * (mag - GAIA_G_ZERO_POINT))``, float64, e-/s.
    """
    return np.power(10.0, -0.4 * (np.asarray(mag, dtype=np.float64) - GAIA_G_ZERO_POINT))


def _read_table_file(path: Path) -> tuple[Table, str]:
    """Read the first usable table of a file, trying the plausible formats in turn."""
    formats = _candidate_formats(path)
    failures: list[str] = []
    for fmt in formats:
        try:
            with warnings.catch_warnings():
                # the units of the columns astrodask uses are checked by normalise_catalog;
                # catalogs often carry unit strings astropy does not know (VizieR's "e-/s")
                warnings.simplefilter("ignore", u.UnitsWarning)
                if fmt == "fits":
                    table = _read_fits_table(path)
                elif fmt == "votable":
                    table = Table.read(path, format="votable", use_names_over_ids=True)
                else:
                    table = Table.read(path, format=fmt)
        except _READER_ERRORS as err:
            failures.append(f"{_FORMAT_NAMES[fmt]}: {_first_line(err)}")
            continue
        return table, _FORMAT_NAMES[fmt]
    tried = ", ".join(_FORMAT_NAMES[f] for f in formats)
    raise CatalogError(
        f"cannot read catalog {path} as a table (formats tried: {tried}): " + "; ".join(failures)
        + ". Give a FITS, VOTable, ECSV, CSV or Parquet table"
    )


def _candidate_formats(path: Path) -> list[str]:
    """The astropy formats to try for a file, from its first bytes, then its name."""
    with open(path, "rb") as f:
        head = f.read(2880)
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as f:
                head = f.read(2880)
        except (OSError, EOFError):
            return ["ascii.csv"]
    if head.startswith(b"SIMPLE  ="):
        return ["fits"]
    if head.startswith(b"PAR1"):
        return ["parquet"]
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith(b"<?xml") or text.startswith(b"<VOTABLE") or b"<VOTABLE" in head:
        return ["votable"]
    if text.startswith(b"# %ECSV"):
        return ["ascii.ecsv"]
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    by_name = _SUFFIX_FORMATS.get(suffixes[-1]) if suffixes else None
    if by_name in ("fits", "parquet", "votable", "ascii.ecsv"):
        # the name promises a format the content does not have: try it for its message
        return [by_name, "ascii.csv", "ascii"]
    return ["ascii.csv", "ascii"]


def _read_fits_table(path: Path) -> Table:
    """The first table HDU of a FITS file that holds positions (else the first table HDU)."""
    with fits.open(path) as hdul:
        tables = [i for i, hdu in enumerate(hdul)
                  if isinstance(hdu, (fits.BinTableHDU, fits.TableHDU))
                  and not isinstance(hdu, fits.CompImageHDU)]
        if not tables:
            kinds = ", ".join(f"{i}:{type(hdu).__name__}" for i, hdu in enumerate(hdul))
            raise ValueError(f"no table HDU (HDUs {kinds})")
        chosen = tables[0]
        ra_names = set(COLUMN_ALIASES["ra"])
        for i in tables:
            if ra_names & {name.lower() for name in hdul[i].columns.names}:
                chosen = i
                break
    return Table.read(path, format="fits", hdu=chosen)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    line = text[0] if text else type(err).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def _numeric_column(column: Any, name: str, catalog_path: str) -> np.ndarray:
    """A column as float64 in the reference unit of ``name``, masked values as NaN."""
    data = np.ma.asarray(column)
    if data.dtype.kind not in "biuf":
        raise CatalogError(
            f"catalog {catalog_path}: column {column.name} ({name}) is not numeric "
            f"(dtype {data.dtype})"
        )
    values = np.ma.filled(data.astype(np.float64), np.nan)
    target = REFERENCE_UNITS[name]
    unit = getattr(column, "unit", None)
    if unit is None or target is None or name in ("ref_epoch", "phot_g_mean_mag"):
        # epochs and magnitudes are taken as they are: their unit strings vary
        # ("yr", "Julian years", "'year'", "mag") and no conversion applies
        return values
    if isinstance(unit, u.UnrecognizedUnit) or isinstance(unit, str):
        try:
            unit = _parse_unit(str(unit.name if isinstance(unit, u.UnrecognizedUnit) else unit))
        except ValueError as err:
            raise CatalogError(
                f"catalog {catalog_path}: column {column.name} ({name}) has unit {unit!s} "
                f"that astrodask cannot interpret; expected {target}"
            ) from err
    try:
        return (values * unit).to_value(target)
    except u.UnitConversionError:
        pass
    try:
        # VOUnit's quoted units ("'electron'.s**-1") are new units of the same name:
        # read the unit again by its name
        return (values * _parse_unit(unit.to_string())).to_value(target)
    except (ValueError, u.UnitConversionError) as err:
        raise CatalogError(
            f"catalog {catalog_path}: column {column.name} ({name}) has unit {unit!s}, "
            f"which cannot be converted to {target}"
        ) from err


_TRAILING_INTEGER = re.compile(r"(-?\d+)\s*$")


def _source_ids(column: Any, catalog_path: str) -> np.ndarray:
    """Source identifiers as int64 (masked: -1); strings keep their trailing number."""
    data = np.ma.asarray(column)
    mask = np.ma.getmaskarray(data)
    if data.dtype.kind in "biu":
        return np.where(mask, -1, np.ma.filled(data, -1)).astype(np.int64)
    if data.dtype.kind == "f":
        filled = np.ma.filled(data, np.nan)
        return np.where(np.isfinite(filled), np.nan_to_num(filled), -1).astype(np.int64)
    ids = np.full(len(data), -1, dtype=np.int64)
    for i, (value, masked) in enumerate(zip(data.data if np.ma.isMaskedArray(data) else data, mask)):
        if masked:
            continue
        text = value.decode() if isinstance(value, bytes) else str(value)
        match = _TRAILING_INTEGER.search(text)
        if match is None:
            raise CatalogError(
                f"catalog {catalog_path}: source identifier {text!r} in column {column.name} "
                f"does not end with a number"
            )
        ids[i] = int(match.group(1))
    return ids


# --------------------------------------------------------------------------
# Selection: cone, footprint, depth
# --------------------------------------------------------------------------


def _unit_vectors(ra_deg: Any, dec_deg: Any) -> np.ndarray:
    """Unit vectors (3, N) of sky positions in degrees."""
    ra = np.radians(np.asarray(ra_deg, dtype=np.float64))
    dec = np.radians(np.asarray(dec_deg, dtype=np.float64))
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])


def angular_separation_deg(ra1_deg: Any, dec1_deg: Any, ra2_deg: Any, dec2_deg: Any) -> np.ndarray:
    """Angular separation between sky positions, degrees, exact at all scales.

    Uses ``atan2(|p1 x p2|, p1 . p2)`` on unit vectors, so it is accurate for
    tiny and large angles, across RA = 0/360 and at the poles.
    """
    ra1, dec1, ra2, dec2 = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64)
                                                 for v in (ra1_deg, dec1_deg, ra2_deg, dec2_deg)))
    p1 = _unit_vectors(ra1, dec1)
    p2 = _unit_vectors(ra2, dec2)
    cross = np.linalg.norm(np.cross(p1, p2, axis=0), axis=0)
    return np.degrees(np.arctan2(cross, np.sum(p1 * p2, axis=0)))


def select_cone(table: Table, *, ra_deg: float, dec_deg: float, radius_deg: float) -> Table:
    """The rows of a reference table within ``radius_deg`` of (``ra_deg``, ``dec_deg``).

    Parameters
    ----------
    table
        Reference table with ``ra`` and ``dec`` in degrees.
    ra_deg, dec_deg
        Centre of the cone, degrees.
    radius_deg
        Radius of the cone, degrees (inclusive).

    Returns
    -------
    astropy.table.Table
        The selected rows, in their original order.
    """
    sep = angular_separation_deg(_filled(table["ra"]), _filled(table["dec"]), ra_deg, dec_deg)
    return table[sep <= radius_deg]


def footprint_corners(wcs: Any, shape: tuple[int, int]) -> np.ndarray:
    """Sky positions of the four outer corners of an image, degrees.

    Parameters
    ----------
    wcs
        An astropy ``WCS`` (or any object with ``pixel_to_world_values``, 0-based pixels).
    shape
        Image shape (ny, nx).

    Returns
    -------
    numpy.ndarray
        Shape (4, 2): (ra, dec) of the corners (-0.5, -0.5), (nx - 0.5, -0.5),
        (nx - 0.5, ny - 0.5), (-0.5, ny - 0.5) in 0-based pixels, in order
        around the image.
    """
    ny, nx = shape
    i = np.array([-0.5, nx - 0.5, nx - 0.5, -0.5])
    j = np.array([-0.5, -0.5, ny - 0.5, ny - 0.5])
    ra, dec = wcs.pixel_to_world_values(i, j)
    return np.column_stack([np.mod(ra, 360.0), dec])


def enclosing_cone(corners_deg: Any, *, margin_deg: float = 0.0) -> tuple[float, float, float]:
    """A cone that contains a footprint and a margin around it.

    Parameters
    ----------
    corners_deg
        (ra, dec) of the footprint's corners, degrees, shape (N, 2).
    margin_deg
        Margin added to the radius, degrees.

    Returns
    -------
    ra_deg, dec_deg, radius_deg
        Centre (the normalised mean of the corners' unit vectors) and radius.
    """
    corners = _corner_array(corners_deg)
    centre = _unit_vectors(corners[:, 0], corners[:, 1]).sum(axis=1)
    norm = np.linalg.norm(centre)
    if norm == 0.0:
        raise ValueError("the footprint corners have no defined centre (they span the sphere)")
    centre /= norm
    ra = float(np.degrees(np.arctan2(centre[1], centre[0])) % 360.0)
    dec = float(np.degrees(np.arcsin(np.clip(centre[2], -1.0, 1.0))))
    radius = float(np.max(angular_separation_deg(corners[:, 0], corners[:, 1], ra, dec)))
    return ra, dec, radius + float(margin_deg)


def select_footprint(table: Table, corners_deg: Any, *, margin_deg: float = 0.0) -> Table:
    """The rows of a reference table inside a footprint or within a margin of it.

    The footprint is the spherical polygon whose edges are the great-circle
    arcs between consecutive corners (the gnomonic projection maps these to
    the straight edges of the image's tangent plane). The test is done with
    unit vectors, so it holds across RA = 0/360 and at the poles; the margin is
    the exact angular distance to the nearest edge.

    Parameters
    ----------
    table
        Reference table with ``ra`` and ``dec`` in degrees.
    corners_deg
        (ra, dec) of the footprint's corners in order around it (either
        direction), degrees, shape (N, 2), N >= 3; the polygon must be convex
        and smaller than a hemisphere (an image's footprint is).
    margin_deg
        Keep stars up to this angular distance outside the footprint, degrees.

    Returns
    -------
    astropy.table.Table
        The selected rows, in their original order.

    Raises
    ------
    ValueError
        If the corners are fewer than three, or not ordered around a convex polygon.
    """
    corners = _corner_array(corners_deg)
    if margin_deg < 0:
        raise ValueError(f"margin_deg = {margin_deg} must be >= 0")
    vertices = _unit_vectors(corners[:, 0], corners[:, 1]).T  # (N, 3)
    normals = np.cross(vertices, np.roll(vertices, -1, axis=0))  # edge i: vertex i -> i+1
    lengths = np.linalg.norm(normals, axis=1)
    if np.any(lengths == 0.0):
        raise ValueError("footprint corners must be distinct")
    normals /= lengths[:, None]
    centre = vertices.sum(axis=0)
    side = np.sign(normals @ centre)
    if np.any(side == 0) or np.any(side != side[0]):
        raise ValueError("footprint corners must be ordered around a convex polygon")
    normals *= side[:, None]  # inward normals

    p = _unit_vectors(_filled(table["ra"]), _filled(table["dec"])).T  # (M, 3)
    heights = p @ normals.T  # (M, N): sine of the distance to each edge's great circle
    inside = np.all(heights >= 0.0, axis=1) & (p @ centre > 0.0)
    if margin_deg > 0:
        dist = _distance_to_edges_deg(p, vertices, normals, heights)
        inside |= dist <= margin_deg
    return table[inside]


def _distance_to_edges_deg(p: np.ndarray, vertices: np.ndarray, normals: np.ndarray,
                           heights: np.ndarray) -> np.ndarray:
    """Angular distance (deg) from points (M, 3) to the nearest polygon edge (arc)."""
    best = np.full(len(p), np.inf)
    for k in range(len(vertices)):
        a, b, n = vertices[k], vertices[(k + 1) % len(vertices)], normals[k]
        # the foot of the perpendicular lies on the arc a->b when it is between a and b,
        # i.e. turning a -> foot and foot -> b goes the way a -> b does
        foot = p - heights[:, k:k + 1] * n
        ab = np.cross(a, b)
        on_arc = (np.cross(a, foot) @ ab >= 0.0) & (np.cross(foot, b) @ ab >= 0.0)
        to_circle = np.degrees(np.arcsin(np.clip(np.abs(heights[:, k]), 0.0, 1.0)))
        to_a = np.degrees(np.arctan2(np.linalg.norm(np.cross(p, a), axis=1), p @ a))
        to_b = np.degrees(np.arctan2(np.linalg.norm(np.cross(p, b), axis=1), p @ b))
        dist = np.where(on_arc & (p @ (a + b) > 0.0), to_circle, np.minimum(to_a, to_b))
        best = np.minimum(best, dist)
    return best


def _corner_array(corners_deg: Any) -> np.ndarray:
    corners = np.asarray(corners_deg, dtype=np.float64)
    if corners.ndim != 2 or corners.shape[1] != 2 or len(corners) < 3:
        raise ValueError(f"corners_deg must have shape (N >= 3, 2) as (ra, dec) pairs, got {corners.shape}")
    if not np.all(np.isfinite(corners)):
        raise ValueError("corners_deg must be finite")
    return corners


def limit_depth(table: Table, *, mag_limit: float | None = None, max_rows: int | None = None) -> Table:
    """The brightest rows of a reference table, down to a magnitude and a count.

    Parameters
    ----------
    table
        Reference table with ``phot_g_mean_mag``.
    mag_limit
        Keep stars with G <= ``mag_limit`` (mag); stars without G are then
        dropped. None: no magnitude cut.
    max_rows
        Keep at most this many rows, the brightest. None: no limit.

    Returns
    -------
    astropy.table.Table
        The kept rows, brightest first (ties keep their original order; stars
        without G come last).
    """
    if max_rows is not None and (int(max_rows) != max_rows or max_rows < 0):
        raise ValueError(f"max_rows = {max_rows!r} must be a non-negative integer or None")
    mag = _filled(table["phot_g_mean_mag"])
    keep = np.ones(len(table), dtype=bool) if mag_limit is None else mag <= mag_limit
    order = np.argsort(np.where(np.isfinite(mag), mag, np.inf), kind="stable")
    order = order[keep[order]]
    if max_rows is not None:
        order = order[: int(max_rows)]
    return table[order]


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
    (:func:`astrodask.reference.cache.tile_source_id_ranges`) make a fast query.

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
    Transient failures (connection errors, HTTP 5xx and 429) are retried
    ``config.retries`` times, waiting ``config.retry_backoff_s`` seconds, then twice
    as long each time.

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
            f"{_error_text(last_error)}. Check the network and the archive's status, raise "
            f"gaia.retries, or give a catalog file instead"
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

    tap = TapPlus(url=config.tap_url)
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
            if _is_transient(err):
                raise _TransientArchiveError(str(err)) from err
            raise ArchiveError(
                f"Gaia archive query for {where} failed: {_error_text(err)}"
            ) from err
        data = output.read_bytes()
    return data, f"{config.tap_url.rstrip('/')}/async/{job.jobid}/results/result"


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



def get_gaia_xy(
    wcs: Any,
    shape: tuple[int, int],
    *,
    epoch_yr: float | None,
    catalog: Table | None = None,
    config: GaiaConfig | None = None,
) -> Table:
    """Reference stars over an exposure's footprint, at its epoch, with predicted pixels.

    The Condor pipeline's ``get_gaia_xy``: the Gaia stars covering the whole
    field of view plus ``config.margin_deg``, from ``catalog`` when given, else
    from the Gaia archive (one asynchronous query over the enclosing cone);
    limited to ``config.mag_limit``; propagated from each star's ``ref_epoch``
    to ``epoch_yr``; projected through ``wcs`` (the approximate WCS).

    Parameters
    ----------
    wcs
        The exposure's approximate WCS (astropy ``WCS``, 0-based pixels).
    shape
        Image shape (ny, nx).
    epoch_yr
        Julian epoch of the exposure; None keeps the catalog epoch (with a warning).
    catalog
        A reference table as returned by :func:`read_catalog`; None queries the archive.
    config
        Margin, depth and archive settings.

    Returns
    -------
    astropy.table.Table
        Reference columns (positions at ``epoch_yr``), ``ref_flag``, ``x`` and
        ``y`` (0-based pixels through ``wcs``) and ``in_image``; brightest first.
        ``meta`` records the footprint cone, the epoch and where the stars came from.
    """
    config = config or GaiaConfig()
    corners = footprint_corners(wcs, shape)
    ra_c, dec_c, radius = enclosing_cone(corners, margin_deg=config.margin_deg)
    if catalog is None:
        catalog = query_gaia_archive(ra_deg=ra_c, dec_deg=dec_c, radius_deg=radius, config=config)
        origin = f"Gaia archive {config.tap_url} ({config.table})"
    else:
        origin = str(catalog.meta.get("catalog_path", "<table>"))
    stars = limit_depth(select_footprint(catalog, corners, margin_deg=config.margin_deg),
                        mag_limit=config.mag_limit)
    if epoch_yr is None:
        warnings.warn("get_gaia_xy: the exposure has no epoch (DATE-OBS/MJD-OBS): reference stars are "
                      "left at their catalog epoch, off by their proper motions", AstrodaskWarning, stacklevel=2)
        stars = stars.copy()
    else:
        stars = propagate_table(stars, epoch_yr)
    x, y = wcs.world_to_pixel_values(_filled(stars["ra"]), _filled(stars["dec"]))
    ny, nx = shape
    stars["x"] = np.asarray(x, dtype=np.float64)
    stars["y"] = np.asarray(y, dtype=np.float64)
    stars["x"].unit = stars["y"].unit = "pix"
    stars["in_image"] = ((stars["x"] >= -0.5) & (stars["x"] <= nx - 0.5)
                         & (stars["y"] >= -0.5) & (stars["y"] <= ny - 0.5))
    stars.meta.update({"origin": origin, "footprint_ra_deg": ra_c, "footprint_dec_deg": dec_c,
                       "footprint_radius_deg": radius, "epoch": epoch_yr,
                       "scale_arcsec": float(np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix))) * 3600.0),
                       "n_in_image": int(np.count_nonzero(stars["in_image"]))})
    return stars
