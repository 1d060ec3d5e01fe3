"""Property-based tests (issue 17, hypothesis): header values, catalog rows and config values.

Whatever the values, astrodask raises nothing but its own errors (:class:`AstrodaskError`) and
never reports a wrong success: a pointing it accepts is a place on the sky, a catalog it accepts
holds only stars that can exist, a config it accepts has every value of its type within its range,
and an exposure it solves under a mangled header is solved right (checked against the truth).

Examples are few and derandomized (the same ones on every run, for CI) so that the module runs in
seconds; ``HYPOTHESIS_PROFILE=thorough`` (see below) draws many more, locally.
"""

from __future__ import annotations

import dataclasses
import math
import os
import zlib

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from astrodask.config import PipelineConfig
from astrodask.constants import MAX_PARALLAX_MAS, MAX_PROPER_MOTION_MASYR
from astrodask.errors import AstrodaskError

settings.register_profile("ci", max_examples=40, derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

pytestmark = pytest.mark.filterwarnings("ignore::astrodask.errors.AstrodaskWarning")

#: Numbers a header or catalog can hold, the awkward ones included.
NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**12, 10**12),
                    st.sampled_from([0.0, -0.0, 1e-300, 1e300, 90.0, -90.0, 360.0, 1e38]))
#: Text a header keyword can hold (FITS cards are printable ASCII).
TEXT = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=30)
HEADER_VALUES = st.one_of(NUMBERS.filter(lambda v: not (isinstance(v, float) and not math.isfinite(v))), TEXT,
                          st.booleans())


# --------------------------------------------------------------------------
# Header values
# --------------------------------------------------------------------------

POINTING_KEYS = ["CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2", "CD1_1", "CD1_2", "CD2_1", "CD2_2", "CTYPE1", "CTYPE2",
                 "RA", "DEC", "OBJCTRA", "OBJCTDEC", "DATE-OBS", "MJD-OBS", "EXPTIME", "GAIN", "SATURATE",
                 "NAXIS1", "NAXIS2"]


def base_header() -> fits.Header:
    header = fits.Header()
    header.update({"NAXIS": 2, "NAXIS1": 1000, "NAXIS2": 700, "CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN",
                   "CRVAL1": 150.1, "CRVAL2": 25.0, "CRPIX1": 500.5, "CRPIX2": 350.5, "CD1_1": -2.36e-4,
                   "CD1_2": 0.0, "CD2_1": 0.0, "CD2_2": 2.36e-4, "DATE-OBS": "2024-07-02T02:59:30",
                   "EXPTIME": 60.0, "GAIN": 0.8, "SATURATE": 65535.0})
    return header


@given(st.dictionaries(st.sampled_from(POINTING_KEYS), st.one_of(st.none(), HEADER_VALUES), max_size=6))
@settings(max_examples=150)
def test_any_header_gives_a_real_pointing_and_epoch_or_a_clear_error(changes: dict) -> None:
    from astrodask.io.exposure import epoch_with_source, get_pointing, header_notes
    from astrodask.config import DetectConfig
    from astrodask.types import ExposureInfo

    header = base_header()
    for key, value in changes.items():
        if value is None:
            header.remove(key, ignore_missing=True)
        else:
            header[key] = value
    try:
        pointing = get_pointing(header, path="mangled.fits")
    except AstrodaskError as err:
        assert "mangled.fits" in str(err)  # every error names the file
    else:
        assert 0.0 <= pointing.ra_deg < 360.0 and -90.0 <= pointing.dec_deg <= 90.0
        assert math.isfinite(pointing.scale_arcsec) and pointing.scale_arcsec > 0.0
        assert math.isfinite(pointing.rotation_deg) and pointing.parity in (-1, 1)
    epoch, source = epoch_with_source(header, path="mangled.fits")
    assert epoch is None or math.isfinite(epoch)
    info = ExposureInfo(path="mangled.fits", hdu_index=0, header=header, shape=(700, 1000), epoch_yr=epoch,
                        gain=None, saturate_adu=None, exptime_s=None)
    notes = header_notes(info, config=DetectConfig())
    assert any(n.startswith("gain:") for n in notes) and (epoch is not None) != any(n.startswith("epoch:")
                                                                                     for n in notes)


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    from astrodask.reference.catalog import read_catalog
    from astrodask.simulate import simulate_field

    folder = tmp_path_factory.mktemp("prop")
    simulated = simulate_field(folder, "prop", ra_deg=150.1, dec_deg=25.0, shape=(700, 1000),
                               density_per_deg2=8000.0, distortion_px=1.0, compress=False,
                               rng=np.random.default_rng(zlib.crc32(b"prop")))
    with fits.open(simulated.image_path) as hdul:
        data, header = hdul[0].data.astype(np.float32), hdul[0].header.copy()
    return simulated, data, header, read_catalog(simulated.catalog_path)


#: Header changes a solve must survive or refuse, never turn into a wrong solution.
SOLVE_CHANGES = st.dictionaries(
    st.sampled_from(["CRVAL1", "CRVAL2", "CD1_1", "CD2_2", "CD1_2", "DATE-OBS", "GAIN", "SATURATE", "EXPTIME",
                     "CRPIX1"]),
    st.one_of(st.none(), st.floats(-1e6, 1e6), st.sampled_from([0.0, 1e-12, "junk", "2024-13-45"])),
    max_size=3)


@given(SOLVE_CHANGES)
@example({})  # the header as written: solved
@example({"GAIN": None, "DATE-OBS": "2024-13-45"})  # solved, with what was assumed
@example({"CD1_1": 1e-12})  # singular
@settings(max_examples=12)
def test_a_solve_under_a_mangled_header_is_right_or_refused(field, changes: dict) -> None:
    from astrodask.solve.pipeline import solve_array
    from astrodask.wcsutil import wcs_error_mas

    simulated, data, header, catalog = field
    header = header.copy()
    for key, value in changes.items():
        if value is None:
            header.remove(key, ignore_missing=True)
        else:
            header[key] = value
    result = solve_array(data, header, name="mangled", catalog=catalog)
    assert not result.reason.startswith("internal error"), result.reason  # only our own errors
    event("solved" if result.ok else f"refused at {result.stage}")
    if not changes:
        assert result.ok, result.reason
    if result.ok:
        error = wcs_error_mas(result.wcs, simulated.truth_wcs, data.shape)
        assert float(np.sqrt(np.mean(error**2))) < 200.0, (changes, result.reason)


# --------------------------------------------------------------------------
# Catalog rows
# --------------------------------------------------------------------------

CATALOG_ROWS = st.lists(st.tuples(*(NUMBERS,) * 7), min_size=0, max_size=12)


@given(CATALOG_ROWS, st.sampled_from(["deg", "rad", "arcsec", "hourangle", "m", ""]))
def test_any_catalog_rows_give_real_stars_or_a_clear_error(rows: list, unit: str) -> None:
    from astrodask.reference.catalog import normalise_catalog, propagate_table

    names = ["ra", "dec", "phot_g_mean_mag", "pmra", "pmdec", "parallax", "ref_epoch"]
    columns = [np.array([float(r[k]) for r in rows], dtype=float) for k in range(len(names))]
    table = Table(columns, names=names)
    if unit:
        table["ra"].unit = table["dec"].unit = unit
    try:
        stars = normalise_catalog(table, catalog_path="rows.ecsv")
    except AstrodaskError as err:
        assert "rows.ecsv" in str(err)
        return
    ra, dec = np.asarray(stars["ra"], float), np.asarray(stars["dec"], float)
    assert np.all((ra >= 0.0) & (ra < 360.0)) and np.all(np.abs(dec) <= 90.0)
    for name, limit in (("pmra", MAX_PROPER_MOTION_MASYR), ("pmdec", MAX_PROPER_MOTION_MASYR),
                        ("parallax", MAX_PARALLAX_MAS)):
        values = np.asarray(stars[name], float)
        assert np.all(~np.isfinite(values) | (np.abs(values) <= limit))
    try:
        moved = propagate_table(stars, 2024.5)
    except AstrodaskError:
        return
    assert len(moved) == len(stars)


# --------------------------------------------------------------------------
# Config values
# --------------------------------------------------------------------------

SECTIONS = {f.name: f.type for f in dataclasses.fields(PipelineConfig)}
FIELDS = [(section, f.name) for section, value in dataclasses.asdict(PipelineConfig()).items()
          for f in dataclasses.fields(getattr(PipelineConfig(), section)) if isinstance(value, dict)]
CONFIG_VALUES = st.one_of(NUMBERS, TEXT, st.booleans(), st.none(), st.lists(st.integers(), max_size=2))


@given(st.lists(st.tuples(st.sampled_from(FIELDS), CONFIG_VALUES), min_size=1, max_size=4))
@settings(max_examples=200)
def test_any_config_values_are_valid_or_refused(assignments: list) -> None:
    overrides: dict = {}
    for (section, name), value in assignments:
        overrides.setdefault(section, {})[name] = value
    try:
        config = PipelineConfig.from_dict(overrides)
    except AstrodaskError as err:
        assert "config" in str(err)
        return
    default = PipelineConfig()
    for section in overrides:
        part, base = getattr(config, section), getattr(default, section)
        for f in dataclasses.fields(part):
            value = getattr(part, f.name)
            assert type(value) is type(getattr(base, f.name)), (section, f.name, value)
            lo, hi = f.metadata.get("lo"), f.metadata.get("hi")
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                assert math.isfinite(value)
                assert (lo is None or value >= lo) and (hi is None or value <= hi), (section, f.name, value)
            choices = f.metadata.get("choices")
            assert choices is None or value in choices
