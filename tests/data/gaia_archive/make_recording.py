"""Write the recorded Gaia archive responses used by tests/test_gaia.py.

SYNTHETIC DATA IN THE ARCHIVE'S FORMAT. The archive cannot be reached from the
test machines, so these files were not captured from it: the stars are random
(seeded, reproducible), while the documents follow what the Gaia archive's TAP
service (https://gea.esac.esa.int/tap-server/tap) returns for an asynchronous
job. Run from the repository root to regenerate them byte for byte:

    python tests/data/gaia_archive/make_recording.py

Files written beside this script:

``result.vot``
    The job's result, a VOTable 1.4 with TABLEDATA, laid out like a real
    archive result: ``INFO QUERY_STATUS/QUERY/JOBID...``, ``PARAM RELEASE``,
    ``COOSYS`` at J2016.0, and for each column the FIELD element (datatype,
    ucd, unit, utype, description) the archive gives ``gaiadr3.gaia_source``.
    Those FIELD elements were copied from a genuine archive response stored in
    astroquery's test data (``astroquery/gaia/tests/data/
    1710099405832VAL-result.vot``, a ``SELECT TOP 20 * FROM gaiadr3.gaia_source``).
    Like the archive, null floating-point values are written ``NaN``.
``uws_job.xml``
    A UWS 1.0 job document (``GET .../async/<jobid>``) in the layout of the
    archive's job documents (as in astroquery's
    ``utils/tap/xmlparser/tests/data/test_jobs_async.xml``), with
    ``string.Template`` placeholders ($jobid, $phase, $query, $maxrec, $base,
    $error_summary) the loopback server fills in.
``error.vot``
    The TAP error document (``GET .../async/<jobid>/error``) of a job in phase
    ERROR, with a ``$message`` placeholder.

The stars: ``N_ROWS`` stars uniformly inside the cone of ``RADIUS_DEG`` around
(``RA_DEG``, ``DEC_DEG``), a field that straddles RA = 0/360; G magnitudes
drawn from counts rising as 10^(0.35 G) between ``G_BRIGHT`` and
``MAG_LIMIT``; fluxes from G with the Gaia DR3 zero point 25.6874; position
errors growing with G roughly as in DR3; proper motions and parallaxes
Gaussian, with about 40% of the stars fainter than G = 19 given a
two-parameter solution (pmra, pmdec, parallax NaN), as the archive has them;
``ref_epoch`` 2016.0. ``source_id`` values are synthetic 19-digit integers
shaped like Gaia's (HEALPix-like high bits plus a running number), not real
Gaia sources. Rows are sorted by ``source_id``, like the archive's storage order.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

#: The recorded cone: centre and radius, degrees (straddles RA = 0/360).
RA_DEG = 359.97
DEC_DEG = 30.0
RADIUS_DEG = 0.1
#: Faintest and brightest G of the recorded stars, mag.
MAG_LIMIT = 20.0
G_BRIGHT = 11.0
#: Number of stars (more than astroquery.gaia's silent 50-row default).
N_ROWS = 80
#: Seed of the random stars.
SEED = 20160101
#: The archive's job identifier written into the recording.
JOB_ID = "1732406400000O"
#: Gaia DR3 G zero point, mag.
ZERO_POINT = 25.6874
#: The ADQL the recorded job answers (as astrodask.reference.archive.build_gaia_query writes it).
QUERY = (
    "SELECT source_id, ra, dec, ra_error, dec_error, pmra, pmdec, parallax, ref_epoch, "
    "phot_g_mean_mag, phot_g_mean_flux\n"
    "FROM gaiadr3.gaia_source\n"
    f"WHERE 1=CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', {RA_DEG!r}, {DEC_DEG!r}, {RADIUS_DEG!r}))\n"
    f"AND phot_g_mean_mag <= {MAG_LIMIT!r}"
)

#: FIELD elements as the archive writes them for gaiadr3.gaia_source (see the docstring).
FIELDS = """\
<FIELD ID="SOURCE_ID" datatype="long" name="source_id" ucd="meta.id">
<DESCRIPTION>Unique source identifier (unique within a particular Data Release)</DESCRIPTION>
</FIELD>
<FIELD datatype="double" name="ra" ref="GAIADR3" ucd="pos.eq.ra;meta.main" unit="deg" utype="stc:AstroCoords.Position3D.Value3.C1">
<DESCRIPTION>Right ascension</DESCRIPTION>
</FIELD>
<FIELD datatype="double" name="dec" ref="GAIADR3" ucd="pos.eq.dec;meta.main" unit="deg" utype="stc:AstroCoords.Position3D.Value3.C2">
<DESCRIPTION>Declination</DESCRIPTION>
</FIELD>
<FIELD datatype="float" name="ra_error" ucd="stat.error;pos.eq.ra" unit="mas" utype="stc:AstroCoords.Position3D.Error3.C1">
<DESCRIPTION>Standard error of right ascension</DESCRIPTION>
</FIELD>
<FIELD datatype="float" name="dec_error" ucd="stat.error;pos.eq.dec" unit="mas" utype="stc:AstroCoords.Position3D.Error3.C2">
<DESCRIPTION>Standard error of declination</DESCRIPTION>
</FIELD>
<FIELD datatype="double" name="pmra" ucd="pos.pm;pos.eq.ra" unit="mas.yr**-1" utype="stc:AstroCoords.Velocity3D.Value3.C1">
<DESCRIPTION>Proper motion in right ascension direction</DESCRIPTION>
</FIELD>
<FIELD datatype="double" name="pmdec" ucd="pos.pm;pos.eq.dec" unit="mas.yr**-1" utype="stc:AstroCoords.Velocity3D.Value3.C2">
<DESCRIPTION>Proper motion in declination direction</DESCRIPTION>
</FIELD>
<FIELD datatype="double" name="parallax" ucd="pos.parallax.trig" unit="mas">
<DESCRIPTION>Parallax</DESCRIPTION>
</FIELD>
<FIELD datatype="double" name="ref_epoch" ucd="meta.ref;time.epoch" unit="yr" utype="stc:AstroCoords.Time.TimeInstant">
<DESCRIPTION>Reference epoch</DESCRIPTION>
</FIELD>
<FIELD datatype="float" name="phot_g_mean_mag" ucd="phot.mag;em.opt" unit="mag">
<DESCRIPTION>G-band mean magnitude</DESCRIPTION>
</FIELD>
<FIELD datatype="double" name="phot_g_mean_flux" ucd="phot.flux;em.opt" unit="'electron'.s**-1">
<DESCRIPTION>G-band mean flux</DESCRIPTION>
</FIELD>
"""

UWS_JOB = """\
<?xml version="1.0" encoding="UTF-8"?>
<uws:job xmlns:uws="http://www.ivoa.net/xml/UWS/v1.0" xmlns:xlink="http://www.w3.org/1999/xlink" xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation="http://www.ivoa.net/xml/UWS/v1.0 http://www.ivoa.net/xml/UWS/v1.0">
	<uws:jobId><![CDATA[$jobid]]></uws:jobId>
	<uws:runId xsi:nil="true"/>
	<uws:ownerId><![CDATA[anonymous]]></uws:ownerId>
	<uws:phase>$phase</uws:phase>
	<uws:quote>-1</uws:quote>
	<uws:startTime>2024-11-24T00:00:00.012+0100</uws:startTime>
	<uws:endTime>2024-11-24T00:00:00.734+0100</uws:endTime>
	<uws:executionDuration>7200</uws:executionDuration>
	<uws:destruction>2024-11-27T00:00:00.000+0100</uws:destruction>
	<uws:creationTime>2024-11-24T00:00:00.000+0100</uws:creationTime>
	<uws:locationId>anonymous/2024/11/24/$jobid</uws:locationId>
	<uws:name><![CDATA[]]></uws:name>
	<uws:parameters>
		<uws:parameter id="request"><![CDATA[doQuery]]></uws:parameter>
		<uws:parameter id="lang"><![CDATA[ADQL]]></uws:parameter>
		<uws:parameter id="format"><![CDATA[votable]]></uws:parameter>
		<uws:parameter id="maxrec"><![CDATA[$maxrec]]></uws:parameter>
		<uws:parameter id="query"><![CDATA[$query]]></uws:parameter>
	</uws:parameters>
	<uws:results>
		<uws:result id="result" xlink:type="simple" xlink:href="$base/async/$jobid/results/result" mime-type="application/x-votable+xml"/>
	</uws:results>
	$error_summary
</uws:job>
"""

ERROR_VOT = """\
<?xml version="1.0" encoding="UTF-8"?>
<VOTABLE version="1.4" xmlns="http://www.ivoa.net/xml/VOTable/v1.3" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation="http://www.ivoa.net/xml/VOTable/v1.3 http://www.ivoa.net/xml/VOTable/votable-1.4.xsd">
<RESOURCE type="results">
<INFO name="QUERY_STATUS" value="ERROR">$message</INFO>
</RESOURCE>
</VOTABLE>
"""


def _stars(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The random stars, as columns (NaN: null)."""
    # uniform in the cone: separation r with P(< r) = (1 - cos r) / (1 - cos R)
    cos_r = 1.0 - rng.uniform(0.0, 1.0, N_ROWS) * (1.0 - np.cos(np.radians(RADIUS_DEG)))
    sep = np.arccos(cos_r)
    pa = rng.uniform(0.0, 2.0 * np.pi, N_ROWS)
    ra0, dec0 = np.radians(RA_DEG), np.radians(DEC_DEG)
    dec = np.arcsin(np.sin(dec0) * np.cos(sep) + np.cos(dec0) * np.sin(sep) * np.cos(pa))
    ra = ra0 + np.arctan2(np.sin(pa) * np.sin(sep) * np.cos(dec0),
                          np.cos(sep) - np.sin(dec0) * np.sin(dec))
    # counts rising as 10^(0.35 G): inverse of the cumulative distribution
    k = 0.35 * np.log(10.0)
    x = rng.uniform(0.0, 1.0, N_ROWS)
    g = np.log(np.exp(k * G_BRIGHT) + x * (np.exp(k * MAG_LIMIT) - np.exp(k * G_BRIGHT))) / k
    g = g.astype(np.float32)
    two_parameter = (g > 19.0) & (rng.uniform(0.0, 1.0, N_ROWS) < 0.4)
    sigma = 0.012 + 0.35 * 10.0 ** (0.4 * (g.astype(np.float64) - 20.0))
    sigma = np.where(two_parameter, 4.0 * sigma, sigma)
    pmra = rng.normal(-2.5, 4.0, N_ROWS)
    pmdec = rng.normal(-3.0, 4.0, N_ROWS)
    parallax = np.abs(rng.normal(0.4, 0.3, N_ROWS)) + rng.normal(0.0, 1.0, N_ROWS) * sigma
    for values in (pmra, pmdec, parallax):
        values[two_parameter] = np.nan
    healpix12 = 80_000_000 + rng.integers(0, 2_000, N_ROWS)  # HEALPix-like high bits (synthetic)
    source_id = healpix12.astype(np.int64) * 2**35 + rng.integers(0, 2**25, N_ROWS)
    columns = {
        "source_id": source_id,
        "ra": np.degrees(ra) % 360.0,
        "dec": np.degrees(dec),
        "ra_error": (sigma * rng.uniform(0.8, 1.0, N_ROWS)).astype(np.float32),
        "dec_error": (sigma * rng.uniform(0.7, 0.9, N_ROWS)).astype(np.float32),
        "pmra": pmra,
        "pmdec": pmdec,
        "parallax": parallax,
        "ref_epoch": np.full(N_ROWS, 2016.0),
        "phot_g_mean_mag": g,
        "phot_g_mean_flux": 10.0 ** (-0.4 * (g.astype(np.float64) - ZERO_POINT)),
    }
    order = np.argsort(source_id, kind="stable")
    return {name: values[order] for name, values in columns.items()}


def _td(value: object) -> str:
    """A table cell as the archive writes it (shortest round-trip text, NaN for null)."""
    if isinstance(value, (np.floating, float)):
        if not np.isfinite(value):
            return "NaN"
        return repr(float(value)) if isinstance(value, (np.float64, float)) else str(value)
    return str(value)


def result_votable() -> str:
    """The text of ``result.vot``."""
    return votable_document(_stars(np.random.default_rng(SEED)), QUERY, JOB_ID)


def votable_document(columns: dict[str, np.ndarray], query: str, job_id: str) -> str:
    """A job's result document, as the archive writes it, for these stars and this query."""
    query_attr = query.replace("\n", " ").replace("'", "&apos;").replace("<", "&lt;")
    rows = []
    for i in range(len(columns["source_id"])):
        cells = "\n".join(f"    <TD>{_td(columns[name][i])}</TD>" for name in columns)
        rows.append(f"  <TR>\n{cells}\n  </TR>")
    return (
        '<?xml version="1.0"?>\n'
        '<VOTABLE version="1.4" xmlns="http://www.ivoa.net/xml/VOTable/v1.3" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xsi:schemaLocation="http://www.ivoa.net/xml/VOTable/v1.3 '
        'http://www.ivoa.net/xml/VOTable/votable-1.4.xsd">\n'
        '<RESOURCE type="results">\n'
        '<INFO name="QUERY_STATUS" value="OK"/>\n\n'
        f'<INFO name="QUERY" value="{query_attr}"><![CDATA[{query}]]></INFO>\n'
        '<INFO name="CAPTION" value=""/>\n'
        '<INFO name="CITATION" value="" ucd="meta.bib"/>\n'
        '<INFO name="PAGE" value=""/>\n'
        '<INFO name="PAGE_SIZE" value=""/>\n'
        f'<INFO name="JOBID" value="{job_id}"><![CDATA[{job_id}]]></INFO>\n'
        '<INFO name="JOBNAME" value=""/>\n\n'
        '<PARAM name="RELEASE" ID="GaiaRelease" datatype="char" arraysize="*" value="Gaia DR3"/>\n\n'
        '<COOSYS ID="GAIADR3" epoch="J2016.0" system="ICRS"/>\n\n'
        '<TABLE>\n'
        f'{FIELDS}'
        '<DATA>\n<TABLEDATA>\n'
        + "\n".join(rows)
        + ('\n' if rows else '')
        + '</TABLEDATA>\n</DATA>\n\n</TABLE>\n</RESOURCE>\n</VOTABLE>\n'
    )


# --------------------------------------------------------------------------
# Per-tile recordings (the tile cache's archive fills)
# --------------------------------------------------------------------------

#: The sky of the tile recordings: a cone around a point where four level-6 tiles meet...
TILE_SKY_RA, TILE_SKY_DEC, TILE_SKY_RADIUS = 45.0, 9.594, 1.9
#: ... the field whose tiles are recorded (the tiles touching this cone), and their depth.
TILE_FIELD_RADIUS = 0.25
TILE_MAG_LIMIT = 17.0
#: Stars per square degree brighter than TILE_MAG_LIMIT, and the seed.
TILE_DENSITY = 300.0
TILE_SEED = 20161231
#: Scatter of the position a source_id was made from around the published one, arcsec:
#: exaggerated (Gaia's are a few arcsec at most) so that some sources near tile edges have
#: a source_id pixel outside their tile, which the per-tile query margin must catch.
SOURCE_ID_SCATTER_ARCSEC = 10.0


def tile_sky(ra_deg: float, dec_deg: float, radius_deg: float, *, density: float, mag_limit: float,
             seed: int, scatter_arcsec: float = SOURCE_ID_SCATTER_ARCSEC) -> dict[str, np.ndarray]:
    """Synthetic archive content: Gaia-like stars in a cone, with source_ids made as Gaia's.

    ``source_id = healpix12 * 2**35 + n`` where healpix12 is the level-12 nested pixel of
    the star's position moved by ``scatter_arcsec`` (the "position at creation").
    """
    from astrodask.reference.healpix import healpix_nested_index
    from astrodask.simulate import synthetic_gaia_catalog

    rng = np.random.default_rng(seed)
    side = 2.0 * radius_deg
    table = synthetic_gaia_catalog(ra_deg, dec_deg, rng=rng, width_deg=side, height_deg=side,
                                   density_per_deg2=density, mag_limit=mag_limit)
    cols = {name: np.asarray(table[name]) for name in table.colnames if name in _FIELD_NAMES}
    sep = _separation_deg(cols["ra"], cols["dec"], ra_deg, dec_deg)
    cols = {name: values[sep <= radius_deg] for name, values in cols.items()}
    n = len(cols["ra"])
    dra = rng.normal(0.0, scatter_arcsec / 3600.0, n) / np.cos(np.radians(cols["dec"]))
    ddec = rng.normal(0.0, scatter_arcsec / 3600.0, n)
    pix = healpix_nested_index(cols["ra"] + dra, cols["dec"] + ddec, level=12)
    cols["source_id"] = pix.astype(np.int64) * 2**35 + rng.permutation(n).astype(np.int64)
    cols["ra_error"] = cols["ra_error"].astype(np.float32)
    cols["dec_error"] = cols["dec_error"].astype(np.float32)
    cols["phot_g_mean_mag"] = cols["phot_g_mean_mag"].astype(np.float32)
    order = np.argsort(cols["source_id"], kind="stable")
    return {name: cols[name][order] for name in _FIELD_NAMES}


_FIELD_NAMES = ("source_id", "ra", "dec", "ra_error", "dec_error", "pmra", "pmdec", "parallax", "ref_epoch",
                "phot_g_mean_mag", "phot_g_mean_flux")
_BETWEEN = re.compile(r"source_id BETWEEN (\d+) AND (\d+)")
_MAG = re.compile(r"phot_g_mean_mag <= ([0-9.eE+-]+)")


def _separation_deg(ra1, dec1, ra2, dec2) -> np.ndarray:
    r1, d1, r2, d2 = (np.radians(np.asarray(v, dtype=np.float64)) for v in (ra1, dec1, ra2, dec2))
    c = np.sin(d1) * np.sin(d2) + np.cos(d1) * np.cos(d2) * np.cos(r1 - r2)
    return np.degrees(np.arccos(np.clip(c, -1.0, 1.0)))


def answer(sky: dict[str, np.ndarray], query: str) -> dict[str, np.ndarray]:
    """What the archive returns for a source_id-range query (:func:`astrodask.reference.archive.build_source_id_query`)."""
    ranges = [(int(a), int(b)) for a, b in _BETWEEN.findall(query)]
    limit = float(_MAG.search(query).group(1))
    sid = sky["source_id"]
    keep = np.zeros(len(sid), dtype=bool)
    for lo, hi in ranges:
        keep |= (sid >= lo) & (sid <= hi)
    keep &= sky["phot_g_mean_mag"] <= limit
    return {name: values[keep] for name, values in sky.items()}


def record_queries(sky: dict[str, np.ndarray], queries: list[str], folder: Path) -> dict[str, str]:
    """Write the archive's answers to ``queries`` (gzipped VOTables and ``index.json``) into ``folder``."""
    import gzip
    import json

    folder.mkdir(parents=True, exist_ok=True)
    index: dict[str, str] = {}
    for k, query in enumerate(queries):
        name = f"result-{k:03d}.vot.gz"
        text = votable_document(answer(sky, query), query, f"{1732406500000 + k}O")
        (folder / name).write_bytes(gzip.compress(text.encode("utf-8"), mtime=0))
        index[name] = query
    (folder / "index.json").write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
    return index


def tile_recordings(folder: Path) -> None:
    """Record the fills of the tiles touching the recorded field (``tiles/``)."""
    from astrodask.reference.fill import tile_query
    from astrodask.reference.healpix import tiles_for_field
    from astrodask.config import GaiaConfig

    sky = tile_sky(TILE_SKY_RA, TILE_SKY_DEC, TILE_SKY_RADIUS, density=TILE_DENSITY,
                   mag_limit=TILE_MAG_LIMIT, seed=TILE_SEED)
    config = GaiaConfig(mag_limit=TILE_MAG_LIMIT)
    pixels = tiles_for_field(TILE_SKY_RA, TILE_SKY_DEC, TILE_FIELD_RADIUS).tolist()
    record_queries(sky, [tile_query(p, config=config) for p in pixels], folder)


def main() -> None:
    """Write the recorded documents beside this script (the tile fills in ``tiles/``)."""
    (HERE / "result.vot").write_text(result_votable(), encoding="utf-8")
    tile_recordings(HERE / "tiles")
    (HERE / "uws_job.xml").write_text(UWS_JOB, encoding="utf-8")
    (HERE / "error.vot").write_text(ERROR_VOT, encoding="utf-8")


if __name__ == "__main__":
    main()
