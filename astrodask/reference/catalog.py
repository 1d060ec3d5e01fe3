"""Catalog files and proper motions: every reference table in the columns and units of
:data:`astrodask.types.REFERENCE_COLUMNS`, whatever it came from.

- :func:`read_catalog` imports a catalog file (FITS, VOTable, ECSV, CSV, Parquet) with Gaia
  archive or VizieR I/355 column names; :func:`normalise_catalog` does the same for a table;
- :func:`propagate_table` moves the stars to an exposure's epoch.
"""

from __future__ import annotations

import gzip
import logging
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.table import Table

from astrodask.constants import (GAIA_DR3_EPOCH, GAIA_G_ZERO_POINT, MAX_PARALLAX_MAS, MAX_PROPER_MOTION_MASYR,
                                 STAR_G_MAG_RANGE)
from astrodask.errors import AstrodaskWarning, CatalogError, InputFileError
from astrodask.types import REFERENCE_COLUMNS, RefFlag

logger = logging.getLogger(__name__)


MAS_TO_RAD = np.pi / (180.0 * 3600.0 * 1000.0)

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
    pmra = float_column(out["pmra"])
    pmdec = float_column(out["pmdec"])
    no_pm = ~np.isfinite(pmra) | ~np.isfinite(pmdec)
    dt = epoch_yr - float_column(out["ref_epoch"])
    out["ra_ref"] = float_column(out["ra"])
    out["dec_ref"] = float_column(out["dec"])
    ra, dec = propagate_to_epoch(out["ra_ref"], out["dec_ref"], np.where(no_pm, 0.0, pmra),
                                 np.where(no_pm, 0.0, pmdec), dt)
    out["ra"] = ra
    out["dec"] = dec
    flags = np.asarray(out["ref_flag"], dtype=np.int32) if "ref_flag" in out.colnames else np.zeros(len(out), np.int32)
    out["ref_flag"] = np.where(no_pm, flags | int(RefFlag.NO_PROPER_MOTION), flags).astype(np.int32)
    out.meta["epoch"] = float(epoch_yr)
    return out


def float_column(column: Any) -> np.ndarray:
    """Column values as float64 with masked entries as NaN."""
    values = np.ma.asarray(column).astype(np.float64)
    return np.ma.filled(values, np.nan)


# --------------------------------------------------------------------------
# Catalog files
# --------------------------------------------------------------------------


def read_catalog(path: str | Path, *, default_ref_epoch: float = GAIA_DR3_EPOCH) -> Table:
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


def normalise_catalog(table: Table, *, default_ref_epoch: float = GAIA_DR3_EPOCH,
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
        unit cannot be converted, a declination is outside +-90 deg, or a proper
        motion or parallax is beyond any star's (:data:`MAX_PROPER_MOTION_MASYR`,
        :data:`MAX_PARALLAX_MAS`: a column in other units than it says).
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

    mag = values["phot_g_mean_mag"]
    wrong_mag = np.isfinite(mag) & ((mag < STAR_G_MAG_RANGE[0]) | (mag > STAR_G_MAG_RANGE[1]))
    if wrong_mag.any():
        raise CatalogError(
            f"catalog {catalog_path}: column {found['phot_g_mean_mag']} has {int(wrong_mag.sum())} value(s) that "
            f"are no star's G magnitude (e.g. {float(mag[wrong_mag][0]):.6g}; allowed {STAR_G_MAG_RANGE[0]:g} to "
            f"{STAR_G_MAG_RANGE[1]:g}): is it a flux, or another quantity?"
        )
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
    for name, limit in (("pmra", MAX_PROPER_MOTION_MASYR), ("pmdec", MAX_PROPER_MOTION_MASYR),
                        ("parallax", MAX_PARALLAX_MAS)):
        column = values[name]
        wrong = np.isfinite(column) & (np.abs(column) > limit)
        if wrong.any():
            raise CatalogError(
                f"catalog {catalog_path}: column {found[name]} has {int(wrong.sum())} value(s) beyond any star's "
                f"(e.g. {float(column[wrong][0]):.6g} {REFERENCE_UNITS[name]}, more than {limit:g}); check its "
                "unit"
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
                elif fmt == "ascii.ecsv":
                    table = read_ecsv(path)
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


#: ECSV column types whose text :func:`read_ecsv` hands to astropy's C reader (others: astropy's ECSV reader).
_FAST_ECSV_KINDS = frozenset("iufbU")
#: An ECSV header's delimiter line (the default is a space).
_ECSV_DELIMITER = re.compile(r"^#\s*delimiter:\s*'?(.)'?\s*$", re.MULTILINE)


def read_ecsv(path: Path) -> Table:
    """An ECSV table, its data lines parsed by astropy's C reader: what ``Table.read(format="ascii.ecsv")``
    gives, several times faster.

    astropy reads ECSV data with its pure-Python reader: 3.2 s for a catalog of 194,000 stars, a
    quarter of a crowded frame's solve. Here astropy's ECSV reader reads only the header (the
    column types, units, descriptions and the table's meta, on no rows), and the C reader of
    ``format="basic"`` the data; each column is then cast to its declared type. Empty fields are
    masked, as astropy's ECSV reader masks them. Tables with columns of other types
    (multidimensional, JSON, objects) or unusual delimiters go to astropy's ECSV reader whole.
    """
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as file:
        text = file.read()
    names_at = re.search(r"^[^#\n]", text, re.MULTILINE)
    header = text[: text.find("\n", names_at.start()) + 1] if names_at else text  # with the column names
    match = _ECSV_DELIMITER.search(header)
    delimiter = match.group(1) if match else " "
    if "subtype:" in header or delimiter not in (" ", ","):  # multidimensional or JSON columns
        return Table.read(text, format="ascii.ecsv")
    schema = Table.read(header, format="ascii.ecsv")  # no rows: the types, units and meta
    if any(col.dtype.kind not in _FAST_ECSV_KINDS for col in schema.itercols()):
        return Table.read(text, format="ascii.ecsv")
    data = Table.read(text, format="ascii.basic", delimiter=delimiter, comment="#", guess=False,
                      fast_reader={"use_fast_converter": False})  # strtod: every digit as written
    if data.colnames != schema.colnames:
        raise ValueError(f"the data's columns {data.colnames} are not the header's {schema.colnames}")
    for name in schema.colnames:
        declared = schema[name]
        column = data[name]
        if declared.dtype.kind == "b" and column.dtype.kind != "b":
            values = np.char.equal(np.asarray(column, dtype=str), "True")
            column = type(column)(values, mask=getattr(column, "mask", None)) if hasattr(column, "mask") else values
        elif declared.dtype.kind != "U":
            column = column.astype(declared.dtype)
        data[name] = column
        data[name].unit = declared.unit
        data[name].description = declared.description
        data[name].format = declared.format
    data.meta = schema.meta
    return data


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


