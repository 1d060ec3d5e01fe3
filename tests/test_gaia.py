"""Tests of astrodask.reference: catalog files, selections, the archive client, proper motions.

The Gaia archive is played back by :class:`RecordedTapServer`, a loopback HTTP
server that speaks enough of TAP's asynchronous (UWS) protocol for astroquery's
real ``TapPlus`` client and serves the recorded documents of
``tests/data/gaia_archive`` (synthetic stars in the archive's format; see its README).
Tests marked ``remote_data`` query the live archive (``pytest --remote-data``).
"""

from __future__ import annotations

import ast
import gzip
import json
import re
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits, votable
from astropy.table import MaskedColumn, Table, vstack
from astropy.time import Time
from astropy.wcs import WCS

import astrodask
from astrodask.reference import catalog as ref_catalog
from astrodask.config import GaiaConfig
from astrodask.errors import ArchiveError, AstrodaskWarning, CatalogError, InputFileError
from astrodask.constants import GAIA_G_ZERO_POINT
from astrodask.reference.archive import GAIA_MAXREC, build_gaia_query, query_gaia_archive
from astrodask.reference.catalog import normalise_catalog, propagate_table, propagate_to_epoch, read_catalog
from astrodask.reference.footprint import (
    enclosing_cone,
    footprint_corners,
    limit_depth,
    select_cone,
    select_footprint,
)
from astrodask.sphere import angular_separation_deg
from astrodask.types import REFERENCE_COLUMNS, RefFlag

from archive_server import RECORDING, TAP_PATH, RecordedTapServer
#: The recorded cone (see tests/data/gaia_archive/make_recording.py).
REC_RA, REC_DEC, REC_RADIUS, REC_MAG = 359.97, 30.0, 0.1, 20.0
REC_ROWS = 80
REC_TWO_PARAMETER = 20
MAS = 1.0 / 3.6e6  # degrees


@pytest.fixture
def archive() -> RecordedTapServer:
    """A running loopback Gaia archive serving the recorded documents."""
    server = RecordedTapServer().start()
    try:
        yield server
    finally:
        server.stop()


def _recorded_table() -> Table:
    """The recorded result as astropy reads it directly (the expected values)."""
    document = votable.parse(str(RECORDING / "result.vot"))
    return document.get_first_table().to_table(use_names_over_ids=True)


def _query(archive: RecordedTapServer, **config) -> Table:
    return query_gaia_archive(ra_deg=REC_RA, dec_deg=REC_DEC, radius_deg=REC_RADIUS,
                              config=archive.config(mag_limit=REC_MAG, **config))


# ==========================================================================
# The archive client, end to end through astroquery and the loopback archive
# ==========================================================================


def test_query_returns_every_recorded_row_with_reference_columns(archive: RecordedTapServer) -> None:
    table = _query(archive)
    expected = _recorded_table()
    assert len(table) == REC_ROWS > 50  # astroquery.gaia would have stopped at 50
    assert table.colnames == list(REFERENCE_COLUMNS)
    assert table["source_id"].dtype == np.int64
    np.testing.assert_array_equal(table["source_id"], expected["source_id"])
    for name in ("ra", "dec", "pmra", "pmdec", "parallax", "phot_g_mean_flux"):
        assert table[name].dtype == np.float64
        np.testing.assert_array_equal(table[name], np.ma.filled(expected[name], np.nan))
    np.testing.assert_array_equal(table["phot_g_mean_mag"], expected["phot_g_mean_mag"].astype(np.float64))
    assert table["ra"].unit == u.deg and table["ra_error"].unit == u.mas
    assert table["pmra"].unit == u.mas / u.yr
    assert table["phot_g_mean_flux"].unit == u.electron / u.s  # the archive's "'electron'.s**-1"
    assert np.all(table["ref_epoch"] == 2016.0)
    assert np.isnan(table["pmra"]).sum() == REC_TWO_PARAMETER  # two-parameter solutions
    assert table.meta["catalog_format"] == "votable"
    assert table.meta["catalog_path"].startswith(f"{archive.base}/async/")
    assert table.meta["query"] == archive.queries[0]
    # the recorded cone straddles RA = 0: every star is within it, on both sides of 0
    sep = angular_separation_deg(table["ra"], table["dec"], REC_RA, REC_DEC)
    assert np.all(sep <= REC_RADIUS)
    assert np.any(table["ra"] < 1.0) and np.any(table["ra"] > 359.0)
    assert np.all(table["phot_g_mean_mag"] <= REC_MAG)


def test_query_sends_adql_cone_without_top_and_lifts_maxrec(archive: RecordedTapServer) -> None:
    _query(archive)
    assert len(archive.posts) == 1
    post = archive.posts[0]
    assert post["REQUEST"] == "doQuery" and post["LANG"] == "ADQL" and post["PHASE"] == "RUN"
    assert int(post["MAXREC"]) == GAIA_MAXREC
    adql = post["QUERY"]
    assert adql == build_gaia_query(ra_deg=REC_RA, dec_deg=REC_DEC, radius_deg=REC_RADIUS, mag_limit=REC_MAG)
    assert not re.search(r"\bTOP\b", adql, flags=re.I)
    assert "1=CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', 359.97, 30.0, 0.1))" in adql
    assert re.search(r"\bphot_g_mean_mag <= 20\.0\b", adql)
    assert re.search(r"\bFROM gaiadr3\.gaia_source\b", adql)
    selected = re.match(r"SELECT (.*?)\nFROM", adql, flags=re.S).group(1)
    assert [c.strip() for c in selected.split(",")] == list(REFERENCE_COLUMNS)
    # an asynchronous job: created, polled, its result fetched
    assert ("POST", f"{TAP_PATH}/async") in archive.requests
    assert any(path.endswith("/phase") for method, path in archive.requests if method == "GET")
    assert any(path.endswith("/results/result") for _, path in archive.requests)


def test_recording_answers_the_query_astrodask_sends() -> None:
    document = votable.parse(str(RECORDING / "result.vot"))
    recorded = {info.name: info for info in document.iter_info()}
    assert recorded["QUERY_STATUS"].value == "OK"
    assert recorded["QUERY"].content == build_gaia_query(ra_deg=REC_RA, dec_deg=REC_DEC,
                                                         radius_deg=REC_RADIUS, mag_limit=REC_MAG)


def test_query_polls_a_running_job_until_it_completes(archive: RecordedTapServer) -> None:
    archive.executing_polls = 2
    table = _query(archive)
    assert len(table) == REC_ROWS
    phase_gets = [p for m, p in archive.requests if m == "GET" and p.endswith("/phase")]
    assert len(phase_gets) >= 3


@pytest.mark.parametrize("fail_on", ["post", "phase", "result"])
def test_query_retries_transient_server_errors(archive: RecordedTapServer, fail_on: str) -> None:
    archive.fail_on, archive.fail_count = fail_on, 2
    table = _query(archive, retries=3)
    assert len(table) == REC_ROWS
    assert len(archive.posts) == 3  # two failed attempts, each a new job, then success


def test_query_gives_up_after_the_retries_with_a_clear_error(archive: RecordedTapServer) -> None:
    archive.fail_on, archive.fail_count = "post", -1
    with pytest.raises(ArchiveError) as info:
        _query(archive, retries=2)
    message = str(info.value)
    assert len(archive.posts) == 3
    assert "after 3 attempt(s)" in message
    assert "359.970000" in message and "+30.000000" in message and "0.1 deg" in message
    assert "Service Unavailable" in message  # the last error
    assert archive.base in message


def test_query_does_not_retry_a_client_error(archive: RecordedTapServer) -> None:
    archive.fail_on, archive.fail_count, archive.fail_status = "post", -1, 400
    with pytest.raises(ArchiveError, match="Bad Request"):
        _query(archive, retries=3)
    assert len(archive.posts) == 1


def test_query_reports_a_job_that_ends_in_error(archive: RecordedTapServer) -> None:
    archive.job_error = "Cannot parse query 'SELECT': Encountered end of file"
    with pytest.raises(ArchiveError, match="ended in error: .*Cannot parse query"):
        _query(archive, retries=3)
    assert len(archive.posts) == 1  # a rejected query is not retried


def test_query_times_out_on_a_job_that_never_finishes(archive: RecordedTapServer) -> None:
    archive.executing_polls = 10_000
    with pytest.raises(ArchiveError, match="did not finish within 1.0 s"):
        _query(archive, timeout_s=1.0)


def test_query_reports_connection_refused_at_once() -> None:
    """A refused connection is not retried (issue 17): waiting does not bring the archive back."""
    from astrodask.errors import ArchiveUnreachableError

    with socket.socket() as probe:  # a loopback port with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = GaiaConfig(tap_url=f"http://127.0.0.1:{port}{TAP_PATH}", retries=3, retry_backoff_s=30.0)
    with pytest.raises(ArchiveUnreachableError, match=r"127.0.0.1:\d+/tap-server/tap cannot be reached "
                                                      r"\(connection refused\): .*--catalog FILE"):
        query_gaia_archive(ra_deg=10.0, dec_deg=-5.0, radius_deg=0.2, config=config)  # 90 s if it retried


def test_query_warns_when_the_archive_truncates_at_maxrec(archive: RecordedTapServer) -> None:
    with pytest.warns(AstrodaskWarning, match="truncated at 30 rows by the archive"):
        table = query_gaia_archive(ra_deg=REC_RA, dec_deg=REC_DEC, radius_deg=REC_RADIUS,
                                   config=archive.config(), maxrec=30)
    assert len(table) == 30
    assert archive.posts[0]["MAXREC"] == "30"


def test_query_warns_at_a_known_silent_row_limit(archive: RecordedTapServer) -> None:
    archive.serve_rows = 50  # a server that silently stops at astroquery.gaia's 50 rows
    with pytest.warns(AstrodaskWarning, match="exactly 50 rows, a known server-side row limit"):
        table = _query(archive)
    assert len(table) == 50


def test_recorded_uws_job_document_is_read_by_astroquery(archive: RecordedTapServer) -> None:
    from astroquery.utils.tap.core import TapPlus

    table = _query(archive)
    jobid = table.meta["catalog_path"].split("/async/")[1].split("/")[0]
    job = TapPlus(url=archive.base).load_async_job(jobid=jobid, load_results=False)
    assert job.jobid == jobid
    assert job.get_phase() == "COMPLETED"
    assert job.parameters["query"] == archive.queries[0]


def test_importing_astrodask_never_imports_astroquery_gaia() -> None:
    code = (
        "import json, sys\n"
        "import astrodask, astrodask.reference.archive, astrodask.reference.footprint\n"
        "after_import = {'astroquery': 'astroquery' in sys.modules,"
        " 'astroquery.gaia': 'astroquery.gaia' in sys.modules}\n"
        "import astroquery.utils.tap.core\n"  # what query_gaia_archive imports lazily
        "after_client = 'astroquery.gaia' in sys.modules\n"
        "print(json.dumps({'after_import': after_import, 'after_client': after_client}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    state = json.loads(done.stdout.strip().splitlines()[-1])
    assert state == {"after_import": {"astroquery": False, "astroquery.gaia": False}, "after_client": False}


def test_no_astrodask_module_imports_astroquery_gaia() -> None:
    package = Path(astrodask.__file__).parent
    offenders = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            offenders += [f"{path.name}: {name}" for name in names if name.startswith("astroquery.gaia")]
    assert offenders == []


# ==========================================================================
# The ADQL
# ==========================================================================


def test_build_gaia_query_text() -> None:
    adql = build_gaia_query(ra_deg=-0.03, dec_deg=-89.5, radius_deg=0.25, mag_limit=18.5,
                            table="gaiadr2.gaia_source")
    assert adql == (
        "SELECT source_id, ra, dec, ra_error, dec_error, pmra, pmdec, parallax, ref_epoch, "
        "phot_g_mean_mag, phot_g_mean_flux\n"
        "FROM gaiadr2.gaia_source\n"
        "WHERE 1=CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', 359.97, -89.5, 0.25))\n"
        "AND phot_g_mean_mag <= 18.5"
    )


@pytest.mark.parametrize("kwargs, match", [
    ({"dec_deg": 91.0}, "dec_deg"),
    ({"radius_deg": 0.0}, "radius_deg"),
    ({"radius_deg": 200.0}, "radius_deg"),
    ({"ra_deg": float("nan")}, "ra_deg"),
    ({"mag_limit": float("inf")}, "mag_limit"),
    ({"table": "gaiadr3.gaia_source; DROP TABLE x"}, "table"),
])
def test_build_gaia_query_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    args = {"ra_deg": 10.0, "dec_deg": 20.0, "radius_deg": 0.1, "mag_limit": 20.0, **kwargs}
    with pytest.raises(ValueError, match=match):
        build_gaia_query(**args)


# ==========================================================================
# Catalog files
# ==========================================================================


def _known_table() -> Table:
    """A reference table with known values, one star without proper motion."""
    table = Table()
    table["source_id"] = np.array([4008355572763257088, 1, 6917528997577384320], dtype=np.int64)
    table["ra"] = np.array([359.99999991234567, 0.00000012345678, 186.63146510466373]) * u.deg
    table["dec"] = np.array([-89.99987654321, 0.5, 25.571536164887117]) * u.deg
    table["ra_error"] = np.array([0.0123, 1.5, 0.46983784]) * u.mas
    table["dec_error"] = np.array([0.0234, 2.5, 0.3]) * u.mas
    table["pmra"] = MaskedColumn([12.5, 0.0, -9.251234], mask=[False, True, False], unit="mas/yr")
    table["pmdec"] = MaskedColumn([-3.25, 0.0, 4.0], mask=[False, True, False], unit="mas/yr")
    table["parallax"] = np.array([1.25, np.nan, 0.1]) * u.mas
    table["ref_epoch"] = np.array([2016.0, 2016.0, 2015.5]) * u.yr
    table["phot_g_mean_mag"] = np.array([12.25, 20.5, 19.624244689941406]) * u.mag
    table["phot_g_mean_flux"] = np.array([3.0e5, 40.0, 266.2]) * (u.electron / u.s)
    return table


def _assert_matches_known(table: Table) -> None:
    known = _known_table()
    assert table.colnames == list(REFERENCE_COLUMNS)
    np.testing.assert_array_equal(table["source_id"], known["source_id"])
    assert table["source_id"].dtype == np.int64
    for name in REFERENCE_COLUMNS:
        if name == "source_id":
            continue
        assert table[name].dtype == np.float64, name
        np.testing.assert_array_equal(table[name], np.ma.filled(known[name].astype(float), np.nan), err_msg=name)
    assert np.isnan(table["pmra"][1]) and np.isnan(table["pmdec"][1]) and np.isnan(table["parallax"][1])
    for name, unit in ref_catalog.REFERENCE_UNITS.items():
        assert table[name].unit == unit, name


FORMATS = {  # file name -> astropy writer format
    "cat.fits": "fits",
    "cat.vot": "votable",
    "cat.ecsv": "ascii.ecsv",
    "cat.csv": "ascii.csv",
    "cat.parquet": "parquet",
}


def _write_known(path: Path, fmt: str) -> None:
    table = _known_table()
    if fmt == "fits":
        # FITS has no standard unit for electrons (astropy warns): leave it out, as
        # a unit-less column is taken in the reference unit
        table["phot_g_mean_flux"].unit = None
    table.write(path, format=fmt)


@pytest.mark.parametrize("name", list(FORMATS))
def test_read_catalog_round_trips_every_format(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    _write_known(path, FORMATS[name])
    table = read_catalog(path)
    _assert_matches_known(table)
    assert table.meta["catalog_path"] == str(path)
    assert table.meta["catalog_format"] == {"fits": "fits", "votable": "votable", "ascii.ecsv": "ecsv",
                                            "ascii.csv": "csv", "parquet": "parquet"}[FORMATS[name]]


@pytest.mark.parametrize("name", ["cat.fits", "cat.csv"])
def test_read_catalog_gzip_compressed(tmp_path: Path, name: str) -> None:
    plain = tmp_path / name
    _write_known(plain, FORMATS[name])
    packed = tmp_path / f"{name}.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    _assert_matches_known(read_catalog(packed))


def test_read_catalog_format_from_content_not_name(tmp_path: Path) -> None:
    path = tmp_path / "catalog.dat"  # an ECSV under an uninformative name
    _known_table().write(path, format="ascii.ecsv")
    table = read_catalog(path)
    assert table.meta["catalog_format"] == "ecsv"
    _assert_matches_known(table)


def test_read_catalog_fits_table_in_a_later_hdu(tmp_path: Path) -> None:
    path = tmp_path / "multi.fits"
    other = fits.BinTableHDU(Table({"x": [1, 2]}), name="OTHER")
    known = _known_table()
    known["phot_g_mean_flux"].unit = None
    stars = fits.BinTableHDU(known, name="STARS")
    fits.HDUList([fits.PrimaryHDU(), other, stars]).writeto(path)
    _assert_matches_known(read_catalog(path))


def test_read_catalog_fits_with_the_archive_unit_strings(tmp_path: Path) -> None:
    known = _known_table()
    units = {"ra": "deg", "dec": "deg", "ra_error": "mas", "dec_error": "mas", "pmra": "mas.yr**-1",
             "pmdec": "mas.yr**-1", "parallax": "mas", "ref_epoch": "yr", "phot_g_mean_mag": "mag",
             "phot_g_mean_flux": "'electron'.s**-1"}
    columns = [fits.Column(name="source_id", format="K", array=known["source_id"])]
    columns += [fits.Column(name=name, format="D", unit=unit,
                            array=np.ma.filled(known[name].astype(float), np.nan))
                for name, unit in units.items()]
    path = tmp_path / "archive_units.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(columns)]).writeto(path)
    _assert_matches_known(read_catalog(path))


def test_read_catalog_column_names_are_case_insensitive(tmp_path: Path) -> None:
    table = _known_table()
    table.rename_columns(table.colnames, [name.upper() for name in table.colnames])
    path = tmp_path / "upper.ecsv"
    table.write(path)
    _assert_matches_known(read_catalog(path))


def test_read_catalog_converts_units(tmp_path: Path) -> None:
    known = _known_table()
    table = known.copy()
    table["ra"] = known["ra"].to(u.rad)
    table["ra_error"] = known["ra_error"].to(u.arcsec)
    table["pmdec"] = known["pmdec"].to(u.arcsec / u.yr)
    path = tmp_path / "units.ecsv"
    table.write(path)
    out = read_catalog(path)
    np.testing.assert_allclose(out["ra"], known["ra"], rtol=1e-14, atol=1e-12)
    np.testing.assert_allclose(out["ra_error"], known["ra_error"], rtol=1e-14)
    np.testing.assert_allclose(out["pmdec"][[0, 2]], known["pmdec"][[0, 2]], rtol=1e-14)


def test_read_catalog_rejects_an_unconvertible_unit(tmp_path: Path) -> None:
    table = _known_table()
    table["pmra"].unit = u.deg
    path = tmp_path / "bad_unit.ecsv"
    table.write(path)
    with pytest.raises(CatalogError, match=r"bad_unit\.ecsv.*pmra.*cannot be converted to mas / yr"):
        read_catalog(path)


VIZIER_VOTABLE = """<?xml version="1.0" encoding="UTF-8"?>
<VOTABLE version="1.4" xmlns="http://www.ivoa.net/xml/VOTable/v1.3">
<RESOURCE name="VizieR(I/355)">
<TABLE name="I/355/gaiadr3">
<FIELD name="RA_ICRS" ucd="pos.eq.ra;meta.main" datatype="double" unit="deg"/>
<FIELD name="DE_ICRS" ucd="pos.eq.dec;meta.main" datatype="double" unit="deg"/>
<FIELD name="Source" ucd="meta.id;meta.main" datatype="long"/>
<FIELD name="e_RA_ICRS" ucd="stat.error;pos.eq.ra" datatype="double" unit="mas"/>
<FIELD name="e_DE_ICRS" ucd="stat.error;pos.eq.dec" datatype="double" unit="mas"/>
<FIELD name="Plx" ucd="pos.parallax.trig" datatype="double" unit="mas"/>
<FIELD name="pmRA" ucd="pos.pm;pos.eq.ra" datatype="double" unit="mas/yr"/>
<FIELD name="pmDE" ucd="pos.pm;pos.eq.dec" datatype="double" unit="mas/yr"/>
<FIELD name="FG" ucd="phot.flux;em.opt" datatype="double" unit="e-/s"/>
<FIELD name="Gmag" ucd="phot.mag;em.opt.G" datatype="float" unit="mag"/>
<FIELD name="Epoch" ucd="time.epoch" datatype="double" unit="yr"/>
<FIELD name="DR3Name" ucd="meta.id" datatype="char" arraysize="26*"/>
<DATA><TABLEDATA>
<TR><TD>6.9702337</TD><TD>61.0644182</TD><TD>428928746417134720</TD><TD>0.0895</TD><TD>0.0812</TD><TD>0.4155</TD><TD>-4.596</TD><TD>-1.088</TD><TD>955.95</TD><TD>18.23631</TD><TD>2016.0</TD><TD>Gaia DR3 428928746417134720</TD></TR>
<TR><TD>359.9991</TD><TD>-0.25</TD><TD>2</TD><TD>0.5</TD><TD>0.4</TD><TD></TD><TD></TD><TD></TD><TD></TD><TD>20.1</TD><TD>2016.0</TD><TD>Gaia DR3 2</TD></TR>
</TABLEDATA></DATA>
</TABLE>
</RESOURCE>
</VOTABLE>
"""


def test_read_catalog_vizier_names_and_units(tmp_path: Path) -> None:
    path = tmp_path / "vizier.vot"
    path.write_text(VIZIER_VOTABLE, encoding="utf-8")
    table = read_catalog(path)
    assert table.colnames == list(REFERENCE_COLUMNS)
    np.testing.assert_array_equal(table["source_id"], [428928746417134720, 2])
    np.testing.assert_array_equal(table["ra"], [6.9702337, 359.9991])
    np.testing.assert_array_equal(table["dec"], [61.0644182, -0.25])
    np.testing.assert_array_equal(table["ra_error"], [0.0895, 0.5])
    np.testing.assert_array_equal(table["dec_error"], [0.0812, 0.4])
    assert table["pmra"][0] == -4.596 and table["pmdec"][0] == -1.088 and table["parallax"][0] == 0.4155
    assert np.isnan(table["pmra"][1]) and np.isnan(table["parallax"][1])
    assert table["phot_g_mean_mag"][0] == np.float32(18.23631)
    # FG ("e-/s") is read; the missing FG is computed from Gmag with the zero point
    assert table["phot_g_mean_flux"][0] == 955.95
    g = float(np.float32(20.1))  # a float32 column
    assert table["phot_g_mean_flux"][1] == pytest.approx(10 ** (-0.4 * (g - GAIA_G_ZERO_POINT)), rel=1e-15)
    np.testing.assert_array_equal(table["ref_epoch"], [2016.0, 2016.0])
    assert table.meta["column_map"]["source_id"] == "Source"


def test_read_catalog_vizier_csv_with_designations(tmp_path: Path) -> None:
    path = tmp_path / "vizier.csv"
    path.write_text("RA_ICRS,DE_ICRS,Gmag,DR3Name,pmRA,pmDE\n"
                    "10.5,-20.25,15.5,Gaia DR3 5937083312263887616,1.5,\n"
                    "10.75,-20.5,16.5,Gaia DR3 17,,\n", encoding="utf-8")
    table = read_catalog(path)
    np.testing.assert_array_equal(table["source_id"], [5937083312263887616, 17])
    np.testing.assert_array_equal(table["phot_g_mean_mag"], [15.5, 16.5])
    assert table["pmra"][0] == 1.5 and np.isnan(table["pmdec"][0]) and np.isnan(table["pmra"][1])
    np.testing.assert_allclose(table["phot_g_mean_flux"], 10 ** (-0.4 * (np.array([15.5, 16.5]) - 25.6874)))


def test_read_catalog_fills_missing_optional_columns(tmp_path: Path) -> None:
    path = tmp_path / "minimal.csv"
    path.write_text("ra,dec,mag\n1.5,2.5,12.0\n3.5,-4.5,13.0\n", encoding="utf-8")
    table = read_catalog(path, default_ref_epoch=2015.5)
    assert table.colnames == list(REFERENCE_COLUMNS)
    np.testing.assert_array_equal(table["source_id"], [1, 2])
    for name in ("ra_error", "dec_error", "pmra", "pmdec", "parallax"):
        assert np.all(np.isnan(table[name])), name
    np.testing.assert_array_equal(table["ref_epoch"], [2015.5, 2015.5])
    np.testing.assert_allclose(table["phot_g_mean_flux"], 10 ** (-0.4 * (np.array([12.0, 13.0]) - 25.6874)),
                               rtol=1e-15)
    notes = " | ".join(table.meta["notes"])
    assert "source_id: no identifier column, synthesised as 1..N" in notes
    assert "ref_epoch: no epoch column, 2015.5 assumed" in notes
    assert "zero point 25.6874" in notes


def test_read_catalog_wraps_ra_into_0_360(tmp_path: Path) -> None:
    path = tmp_path / "signed_ra.csv"
    path.write_text("ra,dec,mag\n-0.5,1.0,12.0\n360.25,2.0,13.0\n-1e-17,3.0,14.0\n", encoding="utf-8")
    np.testing.assert_allclose(read_catalog(path)["ra"], [359.5, 0.25, 0.0], rtol=0, atol=1e-12)


def test_read_catalog_drops_rows_without_position_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "holes.csv"
    path.write_text("ra,dec,phot_g_mean_mag\n1.0,2.0,12.0\n,3.0,13.0\n4.0,5.0,14.0\n", encoding="utf-8")
    with pytest.warns(AstrodaskWarning, match="1 row.*without a finite position dropped"):
        table = read_catalog(path)
    np.testing.assert_array_equal(table["ra"], [1.0, 4.0])


@pytest.mark.parametrize("name", ["again.ecsv", "again.parquet"])
def test_reference_tables_write_and_read_back(tmp_path: Path, name: str) -> None:
    first = read_catalog(_write_path(tmp_path))
    path = tmp_path / name
    first.write(path)
    again = read_catalog(path)
    _assert_matches_known(again)
    assert again.meta["notes"] == []  # nothing was filled the second time


def _write_path(tmp_path: Path) -> Path:
    path = tmp_path / "first.ecsv"
    _known_table().write(path)
    return path


def test_normalise_catalog_of_an_in_memory_table() -> None:
    table = normalise_catalog(_known_table(), catalog_path="memory", catalog_format="table")
    _assert_matches_known(table)
    assert table.meta["catalog_path"] == "memory"


# --- the real catalogs beside the repository ------------------------------------


def test_read_real_ngc103_vizier_csv(shared_data: Path) -> None:
    path = shared_data / "gaia_dr3_ngc103" / "ngc103_field_gaiadr3.csv"
    raw = Table.read(path, format="ascii.csv")
    table = read_catalog(path)
    assert len(table) == 8683
    assert table.meta["catalog_format"] == "csv"
    np.testing.assert_array_equal(table["source_id"], np.arange(1, 8684))  # DR3Name is 1..N there
    np.testing.assert_array_equal(table["ra"], raw["RA_ICRS"])
    np.testing.assert_array_equal(table["dec"], raw["DE_ICRS"])
    np.testing.assert_array_equal(table["pmra"], np.ma.filled(raw["pmRA"].astype(float), np.nan))
    np.testing.assert_array_equal(table["phot_g_mean_mag"], raw["Gmag"])
    assert 5.6 < table["ra"].min() and table["ra"].max() < 7.01
    assert 61.0 < table["dec"].min() and table["dec"].max() < 61.6
    assert 7.5 < np.nanmin(table["phot_g_mean_mag"]) and np.nanmax(table["phot_g_mean_mag"]) < 18.6
    assert np.all(table["ref_epoch"] == 2016.0)


def test_read_real_panoptes_g10_ecsv(shared_data: Path) -> None:
    path = shared_data / "panoptes_cygnus" / "gaia_dr3_G10_cygnus.ecsv"
    raw = Table.read(path)
    table = read_catalog(path)
    assert len(table) == 351
    np.testing.assert_array_equal(table["source_id"], raw["source_id"])
    np.testing.assert_array_equal(table["phot_g_mean_mag"], raw["mag"].astype(np.float64))
    np.testing.assert_array_equal(table["pmra"], raw["pmra"].astype(np.float64))
    np.testing.assert_allclose(table["phot_g_mean_flux"],
                               10 ** (-0.4 * (raw["mag"].astype(np.float64) - 25.6874)), rtol=1e-15)
    assert np.all(table["phot_g_mean_mag"] < 10.0)
    assert table.meta["column_map"]["phot_g_mean_mag"] == "mag"


def test_read_real_decam_gaia_dr2_chunks(shared_data: Path) -> None:
    paths = sorted((shared_data / "decam_tpv_cutout").glob("chunk-*.fits"))
    assert len(paths) == 3
    tables = [read_catalog(p) for p in paths]
    table = vstack(tables, metadata_conflicts="silent")
    raw = vstack([Table.read(p) for p in paths])
    assert len(table) == 149
    assert table.colnames == list(REFERENCE_COLUMNS)
    assert np.all(table["ref_epoch"] == 2015.5)  # Gaia DR2
    np.testing.assert_array_equal(table["source_id"], raw["source_id"])
    np.testing.assert_array_equal(table["ra"], raw["ra"])
    np.testing.assert_array_equal(table["ra_error"], np.ma.filled(raw["ra_error"].astype(float), np.nan))
    assert all(t.meta["catalog_format"] == "fits" for t in tables)


# --- bad inputs -------------------------------------------------------------------


def test_read_catalog_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.fits"
    with pytest.raises(InputFileError, match="nowhere.fits does not exist"):
        read_catalog(path)


def test_read_catalog_directory(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="is not a file"):
        read_catalog(tmp_path)


def test_read_catalog_fits_image_is_not_a_catalog(tmp_path: Path) -> None:
    path = tmp_path / "image.fits"
    fits.PrimaryHDU(np.zeros((4, 4), dtype=np.float32)).writeto(path)
    with pytest.raises(CatalogError, match=r"image\.fits.*formats tried: fits.*no table HDU"):
        read_catalog(path)


def test_read_catalog_binary_junk(tmp_path: Path) -> None:
    path = tmp_path / "junk.bin"
    path.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(CatalogError, match=r"junk\.bin as a table \(formats tried: csv, ascii\)"):
        read_catalog(path)


def test_read_catalog_misnamed_parquet(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"\x00\x01 not parquet \xff\xfe")
    with pytest.raises(CatalogError, match=r"broken\.parquet.*formats tried: parquet, csv, ascii"):
        read_catalog(path)


def test_read_catalog_missing_columns_names_them(tmp_path: Path) -> None:
    path = tmp_path / "nomag.csv"
    path.write_text("RA_ICRS,DE_ICRS,BP-RP\n1.0,2.0,0.5\n", encoding="utf-8")
    with pytest.raises(CatalogError) as info:
        read_catalog(path)
    message = str(info.value)
    assert "nomag.csv" in message
    assert "lacks required column(s) phot_g_mean_mag" in message
    assert "gmag, mag" in message  # the accepted names
    assert "columns found: RA_ICRS, DE_ICRS, BP-RP" in message


def test_read_catalog_missing_positions(tmp_path: Path) -> None:
    path = tmp_path / "table.csv"
    path.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(CatalogError, match=r"table\.csv lacks required column\(s\) ra, dec, phot_g_mean_mag.*"
                                           r"columns found: a, b"):
        read_catalog(path)


def test_read_catalog_declination_out_of_range(tmp_path: Path) -> None:
    path = tmp_path / "swapped.csv"
    path.write_text("ra,dec,mag\n10.0,120.0,12.0\n", encoding="utf-8")
    with pytest.raises(CatalogError, match=r"swapped\.csv.*outside -90\.\.\+90"):
        read_catalog(path)


# ==========================================================================
# Selections: cone, footprint, depth
# ==========================================================================


def _sky_table(ra: np.ndarray, dec: np.ndarray, mag: np.ndarray | None = None) -> Table:
    n = len(ra)
    return normalise_catalog(Table({"ra": ra, "dec": dec,
                                    "phot_g_mean_mag": np.full(n, 15.0) if mag is None else mag}))


def test_angular_separation_matches_astropy_near_ra0_and_poles() -> None:
    rng = np.random.default_rng(1)
    ra1, dec1 = rng.uniform(-1, 1, 500) % 360, rng.uniform(-90, 90, 500)
    ra2 = (ra1 + rng.normal(0, 0.3, 500)) % 360
    dec2 = np.clip(dec1 + rng.normal(0, 0.3, 500), -90, 90)
    expected = SkyCoord(ra1, dec1, unit="deg").separation(SkyCoord(ra2, dec2, unit="deg")).deg
    np.testing.assert_allclose(angular_separation_deg(ra1, dec1, ra2, dec2), expected, atol=1e-11)


@pytest.mark.parametrize("ra0, dec0", [(0.0, 0.0), (359.95, 40.0), (123.0, 89.9), (300.0, -89.95)])
def test_select_cone_agrees_with_astropy(ra0: float, dec0: float) -> None:
    rng = np.random.default_rng(2)
    centre = SkyCoord(ra0, dec0, unit="deg")
    points = centre.directional_offset_by(rng.uniform(0, 360, 2000) * u.deg, rng.uniform(0, 0.4, 2000) * u.deg)
    table = _sky_table(points.ra.deg, points.dec.deg)
    selected = select_cone(table, ra_deg=ra0, dec_deg=dec0, radius_deg=0.2)
    expected = SkyCoord(table["ra"], table["dec"], unit="deg").separation(centre).deg <= 0.2
    assert 100 < len(selected) < 2000
    np.testing.assert_array_equal(selected["source_id"], table["source_id"][expected])


def test_select_cone_across_ra_zero() -> None:
    table = _sky_table(np.array([359.95, 0.05, 0.2, 180.0]), np.zeros(4))
    np.testing.assert_array_equal(select_cone(table, ra_deg=0.0, dec_deg=0.0, radius_deg=0.1)["ra"],
                                  [359.95, 0.05])


def _tan_wcs(ra: float, dec: float, *, rotation_deg: float = 0.0, scale_deg: float = 0.002) -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra, dec]
    wcs.wcs.crpix = [300.5, 200.5]
    c, s = np.cos(np.radians(rotation_deg)), np.sin(np.radians(rotation_deg))
    wcs.wcs.cd = scale_deg * np.array([[-c, s], [s, c]])
    return wcs


FIELDS = [(0.05, 45.0, 30.0), (359.9, -10.0, 0.0), (30.0, 89.5, 75.0), (200.0, -89.9, -20.0)]


@pytest.mark.parametrize("ra, dec, rotation", FIELDS)
def test_select_footprint_is_exactly_the_image_for_a_tan_wcs(ra: float, dec: float, rotation: float) -> None:
    shape = (400, 600)
    wcs = _tan_wcs(ra, dec, rotation_deg=rotation)
    rng = np.random.default_rng(3)
    centre = SkyCoord(ra, dec, unit="deg")
    points = centre.directional_offset_by(rng.uniform(0, 360, 4000) * u.deg,
                                          np.sqrt(rng.uniform(0, 1, 4000)) * 1.0 * u.deg)
    table = _sky_table(points.ra.deg, points.dec.deg)
    x, y = wcs.world_to_pixel_values(table["ra"], table["dec"])
    inside = (x >= -0.5) & (x <= shape[1] - 0.5) & (y >= -0.5) & (y <= shape[0] - 0.5)
    # keep clear of the edges by 1e-6 px of rounding
    clear = (np.minimum.reduce([np.abs(x + 0.5), np.abs(x - shape[1] + 0.5),
                                np.abs(y + 0.5), np.abs(y - shape[0] + 0.5)]) > 1e-6)
    corners = footprint_corners(wcs, shape)
    selected = np.isin(table["source_id"], select_footprint(table, corners)["source_id"])
    assert inside.sum() > 300
    np.testing.assert_array_equal(selected[clear], inside[clear])


@pytest.mark.parametrize("ra, dec, rotation", FIELDS)
def test_select_footprint_margin_is_an_angular_distance(ra: float, dec: float, rotation: float) -> None:
    shape, margin = (400, 600), 0.1
    wcs = _tan_wcs(ra, dec, rotation_deg=rotation)
    rng = np.random.default_rng(4)
    centre = SkyCoord(ra, dec, unit="deg")
    points = centre.directional_offset_by(rng.uniform(0, 360, 3000) * u.deg,
                                          np.sqrt(rng.uniform(0, 1, 3000)) * 1.0 * u.deg)
    table = _sky_table(points.ra.deg, points.dec.deg)
    # the footprint's outline, densely sampled, and each star's distance to it
    t = np.linspace(0, 1, 2000)
    w, h = shape[1] - 0.5, shape[0] - 0.5
    ox = np.concatenate([-0.5 + t * (w + 0.5), np.full_like(t, w), w - t * (w + 0.5), np.full_like(t, -0.5)])
    oy = np.concatenate([np.full_like(t, -0.5), -0.5 + t * (h + 0.5), np.full_like(t, h), h - t * (h + 0.5)])
    outline = SkyCoord(*wcs.pixel_to_world_values(ox, oy), unit="deg")
    stars = SkyCoord(table["ra"], table["dec"], unit="deg")
    _, dist, _ = stars.match_to_catalog_sky(outline)
    x, y = wcs.world_to_pixel_values(table["ra"], table["dec"])
    inside = (x >= -0.5) & (x <= w) & (y >= -0.5) & (y <= h)
    expected = inside | (dist.deg <= margin)
    clear = np.abs(dist.deg - margin) > 2e-4  # the outline's sampling step is < 1e-4 deg
    selected = np.isin(table["source_id"], select_footprint(table, footprint_corners(wcs, shape),
                                                            margin_deg=margin)["source_id"])
    assert (selected & ~inside).sum() > 50
    np.testing.assert_array_equal(selected[clear], expected[clear])


def test_select_footprint_rejects_unordered_corners() -> None:
    table = _sky_table(np.array([10.0]), np.array([10.0]))
    bowtie = [(9.0, 9.0), (11.0, 11.0), (11.0, 9.0), (9.0, 11.0)]
    with pytest.raises(ValueError, match="ordered around a convex polygon"):
        select_footprint(table, bowtie)
    with pytest.raises(ValueError, match="shape"):
        select_footprint(table, [(1.0, 2.0), (3.0, 4.0)])


def test_enclosing_cone_across_ra_zero_contains_the_corners() -> None:
    corners = np.array([(359.5, -0.5), (0.5, -0.5), (0.5, 0.5), (359.5, 0.5)])
    ra, dec, radius = enclosing_cone(corners, margin_deg=0.1)
    assert ra == pytest.approx(0.0, abs=1e-9) or ra == pytest.approx(360.0, abs=1e-9)
    assert dec == pytest.approx(0.0, abs=1e-9)
    assert radius == pytest.approx(np.hypot(0.5, 0.5) + 0.1, abs=1e-4)
    assert np.all(angular_separation_deg(corners[:, 0], corners[:, 1], ra, dec) <= radius - 0.1 + 1e-12)


def test_limit_depth_brightest_first_with_limits() -> None:
    table = _sky_table(np.arange(5.0), np.zeros(5), np.array([15.0, np.nan, 12.0, 18.0, 12.0]))
    np.testing.assert_array_equal(limit_depth(table)["source_id"], [3, 5, 1, 4, 2])  # no G: last
    np.testing.assert_array_equal(limit_depth(table, mag_limit=16.0)["source_id"], [3, 5, 1])
    np.testing.assert_array_equal(limit_depth(table, mag_limit=16.0, max_rows=2)["source_id"], [3, 5])
    np.testing.assert_array_equal(limit_depth(table, max_rows=0)["source_id"], [])
    with pytest.raises(ValueError, match="max_rows"):
        limit_depth(table, max_rows=-1)


# ==========================================================================
# Proper motions
# ==========================================================================


def _astropy_positions(ra, dec, pmra, pmdec, years: float) -> SkyCoord:
    """Positions moved by astropy (ERFA) with no radial velocity, at 10 pc.

    (At 10 pc, 3000 mas/yr is 142 km/s: ERFA's pmsafe keeps the distance.)
    """
    start = SkyCoord(ra=ra * u.deg, dec=dec * u.deg, distance=10.0 * u.pc,
                     pm_ra_cosdec=pmra * u.mas / u.yr, pm_dec=pmdec * u.mas / u.yr,
                     radial_velocity=0.0 * u.km / u.s, obstime=Time(2016.0, format="jyear", scale="tcb"))
    return start.apply_space_motion(new_obstime=Time(2016.0 + years, format="jyear", scale="tcb"))


def test_propagation_agrees_with_astropy_apply_space_motion() -> None:
    ra = np.array([10.0, 359.99999, 0.00001, 45.0, 200.0, 123.0, 300.0])
    dec = np.array([20.0, 0.0, -30.0, 89.9999, -60.0, -89.99, 60.0])
    pmra = np.array([100.0, 3000.0, -2500.0, 500.0, 1000.0, -700.0, 1000.0])
    pmdec = np.array([-50.0, 1000.0, 0.0, 500.0, 0.0, 300.0, 0.0])
    table = normalise_catalog(Table({"ra": ra, "dec": dec, "pmra": pmra, "pmdec": pmdec,
                                     "phot_g_mean_mag": np.full(len(ra), 12.0)}))
    moved = propagate_table(table, 2026.0)
    expected = _astropy_positions(ra, dec, pmra, pmdec, 10.0)
    sep_mas = SkyCoord(moved["ra"], moved["dec"], unit="deg").separation(expected).to_value(u.mas)
    assert np.all(sep_mas < 0.1), sep_mas
    # and the stars did move: 10 yr at these proper motions is 1 to 32 arcsec
    shift = angular_separation_deg(moved["ra"], moved["dec"], ra, dec) * 3.6e6
    np.testing.assert_allclose(shift, 10.0 * np.hypot(pmra, pmdec), rtol=1e-6)
    assert np.all((moved["ra"] >= 0.0) & (moved["ra"] < 360.0))
    assert moved["ra"][1] < 1.0  # crossed RA = 0 going east
    assert moved["ra"][2] > 359.0  # crossed RA = 0 going west
    assert moved.meta["epoch"] == 2026.0
    np.testing.assert_array_equal(moved["ra_ref"], table["ra"])


def test_pmra_includes_cos_dec() -> None:
    """At dec 60, pmra = 1000 mas/yr moves 1000 mas on the sky: 2000 mas of RA coordinate."""
    ra, dec = propagate_to_epoch(np.array([100.0]), np.array([60.0]), np.array([1000.0]), np.array([0.0]), 1.0)
    assert (ra[0] - 100.0) / MAS == pytest.approx(2000.0, rel=1e-6)
    assert (dec[0] - 60.0) / MAS == pytest.approx(0.0, abs=0.01)  # the great circle's bend: ~4e-3 mas
    assert angular_separation_deg(ra, dec, 100.0, 60.0)[0] / MAS == pytest.approx(1000.0, rel=1e-9)


def test_stars_without_proper_motion_are_kept_and_flagged() -> None:
    table = normalise_catalog(Table({
        "ra": [10.0, 20.0, 30.0], "dec": [5.0, 6.0, 7.0],
        "pmra": MaskedColumn([50.0, 0.0, np.nan], mask=[False, True, False]),
        "pmdec": [10.0, 10.0, 10.0], "phot_g_mean_mag": [12.0, 13.0, 14.0]}))
    moved = propagate_table(table, 2030.0)
    assert len(moved) == 3
    flags = np.asarray(moved["ref_flag"])
    np.testing.assert_array_equal(flags & RefFlag.NO_PROPER_MOTION, [0, RefFlag.NO_PROPER_MOTION,
                                                                    RefFlag.NO_PROPER_MOTION])
    # kept in place, to the rounding of the unit-vector round trip (1e-15 deg)
    np.testing.assert_allclose(moved["ra"][1:], [20.0, 30.0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(moved["dec"][1:], [6.0, 7.0], rtol=0, atol=1e-12)
    assert moved["ra"][0] != 10.0


def test_propagation_uses_each_stars_reference_epoch(tmp_path: Path) -> None:
    path = tmp_path / "mixed.csv"
    path.write_text("ra,dec,pmra,pmdec,ref_epoch,mag\n10,0,1000,0,2015.5,12\n10,0,1000,0,2016.0,12\n",
                    encoding="utf-8")
    moved = propagate_table(read_catalog(path), 2016.0)
    assert (moved["ra"][0] - 10.0) / MAS == pytest.approx(500.0, rel=1e-6)
    assert moved["ra"][1] == pytest.approx(10.0, abs=1e-12)


# ==========================================================================
# The live archive (pytest --remote-data)
# ==========================================================================


@pytest.mark.remote_data
def test_live_archive_dense_field() -> None:
    """A small cone in the dense NGC 103 field (about 25 000 stars per square degree to G 18.5)."""
    config = GaiaConfig(retries=2, timeout_s=300.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AstrodaskWarning)  # a truncated result fails the test
        table = query_gaia_archive(ra_deg=6.3, dec_deg=61.3, radius_deg=0.05, config=config, mag_limit=20.0)
    assert table.colnames == list(REFERENCE_COLUMNS)
    assert len(table) > 50
    assert table["source_id"].dtype == np.int64
    assert table["phot_g_mean_flux"].unit == u.electron / u.s
    assert np.all(angular_separation_deg(table["ra"], table["dec"], 6.3, 61.3) <= 0.05 + 1e-9)
    assert np.all(table["phot_g_mean_mag"] <= 20.0)
    assert np.all(table["ref_epoch"] == 2016.0)
    finite = np.isfinite(table["phot_g_mean_flux"])
    np.testing.assert_allclose(table["phot_g_mean_mag"][finite],
                               GAIA_G_ZERO_POINT - 2.5 * np.log10(table["phot_g_mean_flux"][finite]), atol=0.01)


@pytest.mark.remote_data
def test_live_archive_across_ra_zero() -> None:
    config = GaiaConfig(retries=2, timeout_s=300.0)
    table = query_gaia_archive(ra_deg=0.0, dec_deg=0.0, radius_deg=0.05, config=config, mag_limit=19.0)
    assert len(table) > 0
    assert np.all(angular_separation_deg(table["ra"], table["dec"], 0.0, 0.0) <= 0.05 + 1e-9)
    assert np.any(table["ra"] > 359.9) and np.any(table["ra"] < 0.1)


# ----------------------------------------------------------------------------------------
# get_gaia_xy on a simulated exposure with exact truth
# ----------------------------------------------------------------------------------------


def test_get_gaia_xy_predicts_truth_pixels_at_the_exposure_epoch(tmp_path: Path) -> None:
    from astrodask.config import GaiaConfig
    from astrodask.io.exposure import approximate_wcs, get_pointing, read_exposure
    from astrodask.reference.catalog import read_catalog
    from astrodask.reference.footprint import get_gaia_xy
    from astrodask.simulate import make_demo, read_truth_wcs

    field = make_demo(tmp_path)
    exposure = read_exposure(field.image_path)
    catalog = read_catalog(field.catalog_path)
    truth = field.truth
    truth_wcs = read_truth_wcs(field.image_path)
    # through the exact WCS, catalog stars propagated to the epoch land on the truth pixels
    exact = get_gaia_xy(truth_wcs, exposure.shape, epoch_yr=exposure.epoch_yr, catalog=catalog,
                        config=GaiaConfig(margin_deg=0.0))
    assert np.all(exact["in_image"]) or np.mean(exact["in_image"]) > 0.98
    ids = {int(s): k for k, s in enumerate(truth["source_id"])}
    rows = [ids[int(s)] for s in exact["source_id"] if int(s) in ids]
    assert len(rows) > 400
    by_id = {int(s): k for k, s in enumerate(exact["source_id"])}
    k = [by_id[int(truth["source_id"][r])] for r in rows]
    np.testing.assert_allclose(np.asarray(exact["x"])[k], np.asarray(truth["i"])[rows], atol=1e-6)
    np.testing.assert_allclose(np.asarray(exact["y"])[k], np.asarray(truth["j"])[rows], atol=1e-6)
    # left at the catalog epoch, the moving stars would be off: the epoch matters
    assert exact.meta["epoch"] == pytest.approx(exposure.epoch_yr)
    stale = get_gaia_xy(truth_wcs, exposure.shape, epoch_yr=2016.0, catalog=catalog, config=GaiaConfig(margin_deg=0.0))
    assert np.array_equal(stale["source_id"], exact["source_id"])
    shift = np.hypot(stale["x"] - exact["x"], stale["y"] - exact["y"])
    assert np.max(shift) > 0.05 and np.all(shift[~np.isfinite(np.asarray(exact["pmra"], float))] < 1e-9)
    # through the approximate header, the footprint plus margin still holds every truth star
    pointing = get_pointing(exposure.header, path=exposure.path)
    approx = get_gaia_xy(approximate_wcs(pointing, exposure.shape), exposure.shape, epoch_yr=exposure.epoch_yr,
                         catalog=catalog)
    in_frame = truth[truth["in_frame"] & (truth["phot_g_mean_mag"] <= 20.0)]
    assert set(np.asarray(in_frame["source_id"])) <= set(np.asarray(approx["source_id"]))
    assert np.all(np.diff(np.asarray(approx["phot_g_mean_mag"])) >= 0)  # brightest first


def _assert_same_table(a: Table, b: Table) -> None:
    assert a.colnames == b.colnames and a.meta == b.meta
    for name in a.colnames:
        assert type(a[name]) is type(b[name]), name
        assert a[name].dtype == b[name].dtype, name
        assert a[name].unit == b[name].unit and a[name].description == b[name].description, name
        mask_a = np.asarray(getattr(a[name], "mask", np.zeros(len(a), bool)))
        mask_b = np.asarray(getattr(b[name], "mask", np.zeros(len(b), bool)))
        assert np.array_equal(mask_a, mask_b), name
        values_a, values_b = np.asarray(a[name])[~mask_a], np.asarray(b[name])[~mask_b]
        assert np.array_equal(values_a, values_b, equal_nan=values_a.dtype.kind == "f"), name


@pytest.mark.parametrize("delimiter", [" ", ","])
def test_ecsv_catalogs_read_as_astropy_reads_them(tmp_path: Path, delimiter: str) -> None:
    """read_ecsv (the C reader on the data lines) gives astropy's ECSV table: types, units, masks, every digit."""
    rng = np.random.default_rng(3)
    n = 2000
    table = Table({
        "source_id": rng.integers(2**60, 2**62, n, dtype=np.int64),
        "ra": MaskedColumn(rng.uniform(0, 360, n), unit="deg", description="right ascension"),
        "dec": rng.uniform(-90, 90, n) * u.deg,
        "pmra": MaskedColumn(rng.normal(0, 5, n), mask=rng.random(n) < 0.2, unit="mas / yr"),
        "phot_g_mean_mag": rng.uniform(10, 21, n).astype(np.float32),
        "flag": rng.random(n) < 0.5,
        "note": np.where(rng.random(n) < 0.5, "a b", "c"),
    })
    table["ra"][::97] = np.nan  # a NaN is a value, not a masked entry
    table.meta.update({"release": "Gaia DR3-like", "epoch": 2016.0})
    path = tmp_path / "stars.ecsv"
    table.write(path, format="ascii.ecsv", delimiter=delimiter)
    expected = Table.read(path, format="ascii.ecsv")
    _assert_same_table(expected, ref_catalog.read_ecsv(path))
    packed = tmp_path / "stars.ecsv.gz"
    packed.write_bytes(gzip.compress(path.read_bytes()))
    _assert_same_table(expected, ref_catalog.read_ecsv(packed))
    # and through the catalog reader: the same stars as from the same table in FITS
    fits_path = tmp_path / "stars.fits"
    table.write(fits_path)
    with pytest.warns(AstrodaskWarning, match="without a finite position dropped"):
        from_ecsv = read_catalog(path)
    with pytest.warns(AstrodaskWarning, match="without a finite position dropped"):
        from_fits = read_catalog(fits_path)
    assert len(from_ecsv) == len(from_fits) > 0.9 * n
    assert np.array_equal(from_ecsv["ra"], from_fits["ra"], equal_nan=True)
    assert np.array_equal(np.asarray(from_ecsv["pmra"]), np.asarray(from_fits["pmra"]), equal_nan=True)


def test_ecsv_columns_the_c_reader_cannot_type_go_to_astropy_whole(tmp_path: Path) -> None:
    table = Table({"ra": [1.0, 2.0], "dec": [3.0, 4.0], "phot_g_mean_mag": [15.0, 16.0],
                   "vector": np.arange(6.0).reshape(2, 3)})
    path = tmp_path / "multi.ecsv"
    table.write(path, format="ascii.ecsv")
    _assert_same_table(Table.read(path, format="ascii.ecsv"), ref_catalog.read_ecsv(path))
    broken = tmp_path / "broken.ecsv"
    broken.write_text(path.read_text().replace("1.0 3.0 15.0", "1.0 3.0"))
    with pytest.raises(CatalogError, match="broken.ecsv"):
        read_catalog(broken)
