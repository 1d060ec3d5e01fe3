"""Reading exposures: any HDU, compressed or not, scaling, pointing, epoch, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from astropy.wcs import WCS

from astrodask.config import PointingConfig
from astrodask.errors import ImageError, InputFileError, PointingError
from astrodask.io.exposure import (
    DSS_SOURCE,
    approximate_wcs,
    epoch_with_source,
    exposure_time,
    get_pointing,
    header_epoch,
    parse_dec,
    parse_ra,
    read_exposure,
    read_exposure_info,
)
from astrodask.sphere import angular_separation_deg
from astrodask.types import exposure_name
from astrodask.wcsutil import cd_matrix, cd_to_scale_rotation_parity, tan_wcs, wcs_error_mas

SHAPE = (60, 90)
#: Shape (ny, nx) of the horsehead DSS scan.
DSS_SHAPE = (893, 891)
#: The TAN WCS keywords of the horsehead DSS header (a TAN fitted to the same plate).
TAN_PREFIXES = ("CTYPE", "CRVAL", "CRPIX", "CD1_", "CD2_", "CDELT", "CROTA")
#: The DSS plate solution's polynomial and scan keywords (the plate centre PLTRA*/PLTDEC* aside).
AMD_PREFIXES = ("AMDX", "AMDY", "PPO")
#: The plate centre keywords.
PLATE_CENTRE_PREFIXES = ("PLTRA", "PLTDEC")


@pytest.fixture()
def image() -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.integers(0, 60000, size=SHAPE).astype(np.uint16)


def test_uint16_with_bzero_in_compressed_extension(tmp_path: Path, image: np.ndarray) -> None:
    path = tmp_path / "exp.fits.fz"
    primary = fits.PrimaryHDU()
    primary.header["EXPTIME"] = 60.0
    primary.header["DATE-OBS"] = "2024-07-02T03:04:05"
    comp = fits.CompImageHDU(image, compression_type="RICE_1")
    comp.header["GAIN"] = 1.5
    fits.HDUList([primary, comp]).writeto(path)
    exposure = read_exposure(path)
    assert exposure.hdu_index == 1
    # kept as the camera's uint16 (float32 holds it exactly; the detection converts it once)
    assert exposure.data.dtype == np.uint16 and exposure.data.dtype.isnative and exposure.data.flags.c_contiguous
    np.testing.assert_array_equal(exposure.data, image)
    assert exposure.gain == 1.5 and exposure.exptime_s == 60.0  # EXPTIME inherited from the primary
    assert exposure.epoch_yr == pytest.approx(2024.5, abs=0.01)
    assert exposure.saturate_adu is None
    assert exposure.name == "exp"


def test_bscale_float_and_big_endian(tmp_path: Path) -> None:
    raw = np.arange(SHAPE[0] * SHAPE[1], dtype=">i2").reshape(SHAPE)
    hdu = fits.PrimaryHDU(raw)
    hdu.header["BSCALE"] = 0.5
    hdu.header["BZERO"] = 100.0
    path = tmp_path / "scaled.fits"
    hdu.writeto(path)
    exposure = read_exposure(path)
    assert exposure.data.dtype == np.float32  # scaled by BSCALE: float
    np.testing.assert_allclose(exposure.data, raw.astype(np.float64) * 0.5 + 100.0)
    plain = tmp_path / "plain.fits"
    fits.PrimaryHDU(raw).writeto(plain)  # big-endian int16 on disk: native int16 in memory, a copy of its own
    data = read_exposure(plain).data
    assert data.dtype == np.int16 and data.dtype.isnative and data.flags.owndata
    np.testing.assert_array_equal(data, raw)
    floats = tmp_path / "float.fits"
    fits.PrimaryHDU(np.full(SHAPE, 2.5, dtype=">f8")).writeto(floats)
    data = read_exposure(floats).data
    assert data.dtype == np.float32 and data.dtype.isnative and float(data[0, 0]) == 2.5


def test_image_found_in_later_hdu_and_hdu_option(tmp_path: Path, image: np.ndarray) -> None:
    table = fits.BinTableHDU.from_columns([fits.Column(name="a", format="E", array=np.zeros(3))])
    path = tmp_path / "later.fits"
    fits.HDUList([fits.PrimaryHDU(), table, fits.ImageHDU(image)]).writeto(path)
    assert read_exposure(path).hdu_index == 2
    with pytest.raises(ImageError, match="HDU 1 is a BinTableHDU, not an image"):
        read_exposure(path, hdu=1)
    with pytest.raises(ImageError, match=r"HDU 7 does not exist \(the file has 3 HDUs\)"):
        read_exposure(path, hdu=7)


def test_bad_input_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.fits"
    with pytest.raises(InputFileError, match=f"{missing}: no such file"):
        read_exposure(missing)
    text = tmp_path / "notes.fits"
    text.write_text("this is not FITS\n" * 10)
    with pytest.raises(InputFileError, match=f"{text}: not a readable FITS file"):
        read_exposure(text)
    cube = tmp_path / "cube.fits"
    fits.PrimaryHDU(np.zeros((3, 4, 5), dtype=np.float32)).writeto(cube)
    with pytest.raises(ImageError, match=f"{cube}: no 2-D image \\(HDU 0: 3-D\\)"):
        read_exposure(cube)
    empty = tmp_path / "empty.fits"
    fits.PrimaryHDU().writeto(empty)
    with pytest.raises(ImageError, match=f"{empty}: no image HDU"):
        read_exposure(empty)


@pytest.mark.parametrize("rotation", [0.0, 33.0, -120.0, 179.0])
@pytest.mark.parametrize("parity", [1, -1])
def test_cd_matrix_round_trip(rotation: float, parity: int) -> None:
    scale, rot, par = cd_to_scale_rotation_parity(cd_matrix(0.85, rotation, parity))
    assert scale == pytest.approx(0.85) and par == parity
    assert rot == pytest.approx(rotation)


def test_cd_matrix_orientation_on_the_sky() -> None:
    # rotation 0, parity +1: +j is north, +i is west (RA decreases to the right)
    wcs = tan_wcs(150.0, 2.0, shape=(101, 101), scale_arcsec=3.6, rotation_deg=0.0, parity=1)
    (ra0, dec0), (ra_i, dec_i), (ra_j, dec_j) = wcs.all_pix2world([[50, 50], [51, 50], [50, 51]], 0)
    assert ra_i < ra0 and dec_i == pytest.approx(dec0)
    assert dec_j > dec0 and ra_j == pytest.approx(ra0)
    # the 0-based centre pixel is the pointing: CRPIX is 1-based
    assert (ra0, dec0) == pytest.approx((150.0, 2.0))
    flipped = tan_wcs(150.0, 2.0, shape=(101, 101), scale_arcsec=3.6, rotation_deg=0.0, parity=-1)
    assert flipped.all_pix2world([[51, 50]], 0)[0][0] > ra0
    turned = tan_wcs(150.0, 2.0, shape=(101, 101), scale_arcsec=3.6, rotation_deg=90.0, parity=1)
    assert turned.all_pix2world([[50, 51]], 0)[0][0] > ra0  # +j points east


def test_pointing_from_header_wcs_and_overrides() -> None:
    truth = tan_wcs(10.0, -30.0, shape=SHAPE, scale_arcsec=0.85, rotation_deg=20.0, parity=-1)
    header = truth.to_header()
    header["NAXIS1"], header["NAXIS2"] = SHAPE[1], SHAPE[0]
    header["CRPIX1"] = 1.0  # the reference pixel is not the centre: the pointing still is
    header["CRPIX2"] = 1.0
    pointing = get_pointing(header)
    assert pointing.source == "header-wcs" and pointing.parity == -1
    assert pointing.scale_arcsec == pytest.approx(0.85) and pointing.rotation_deg == pytest.approx(20.0)
    centre = approximate_wcs(pointing, SHAPE).all_pix2world([[(SHAPE[1] - 1) / 2, (SHAPE[0] - 1) / 2]], 0)[0]
    assert centre == pytest.approx([pointing.ra_deg, pointing.dec_deg])
    overridden = get_pointing(header, scale_arcsec=1.0, rotation_deg=5.0)
    assert overridden.scale_arcsec == 1.0 and overridden.rotation_deg == 5.0 and overridden.wcs_header is None
    cli = get_pointing(header, ra_deg=370.0, dec_deg=10.0)
    assert (cli.ra_deg, cli.dec_deg, cli.source) == (10.0, 10.0, "cli")


@pytest.mark.parametrize(
    ("cards", "expected"),
    [
        ({"RA": 150.25, "DEC": -2.5}, (150.25, -2.5)),
        ({"RA": "10:01:00.0", "DEC": "-02:30:00"}, (150.25, -2.5)),
        ({"OBJCTRA": "10 01 00.0", "OBJCTDEC": "-02 30 00"}, (150.25, -2.5)),
        ({"RA": "150.25", "DEC": "-2.5"}, (150.25, -2.5)),
        ({"TELRA": "00:00:00", "TELDEC": "+89:30:00"}, (0.0, 89.5)),
    ],
)
def test_pointing_from_keywords(cards: dict, expected: tuple[float, float]) -> None:
    header = fits.Header(cards)
    pointing = get_pointing(header, config=PointingConfig(plate_scale_arcsec=1.2, rotation_deg=3.0))
    assert (pointing.ra_deg, pointing.dec_deg) == pytest.approx(expected)
    assert pointing.scale_arcsec == 1.2 and pointing.rotation_deg == 3.0
    assert pointing.source.startswith("header-keywords")


def test_pointing_errors() -> None:
    with pytest.raises(PointingError, match="x.fits: cannot find the pointing"):
        get_pointing(fits.Header({"EXPTIME": 60}), path="x.fits")
    with pytest.raises(PointingError, match="DEC = 95.0 is not a declination"):
        get_pointing(fits.Header({"RA": 1.0, "DEC": 95.0}))
    with pytest.raises(PointingError, match="is not a right ascension"):
        parse_ra("ten o'clock")
    with pytest.raises(PointingError, match="give both --ra and --dec"):
        get_pointing(fits.Header(), ra_deg=1.0)
    assert parse_dec("-00:30:00") == pytest.approx(-0.5)


def test_epoch_from_date_or_mjd() -> None:
    assert header_epoch(fits.Header({"DATE-OBS": "2016-01-01T12:00:00"})) == pytest.approx(2016.0, abs=1e-4)
    assert header_epoch(fits.Header({"DATE-OBS": "2016-01-01", "TIME-OBS": "12:00:00"})) == \
        pytest.approx(2016.0, abs=1e-4)
    assert header_epoch(fits.Header({"MJD-OBS": 57388.5})) == pytest.approx(2016.0, abs=1e-4)
    assert header_epoch(fits.Header({"EXPTIME": 1})) is None


@pytest.mark.parametrize(("name", "stem"), [("a.fits.fz", "a"), ("b.v2.fits", "b.v2"), ("c.FITS", "c"), ("d", "d")])
def test_exposure_name(name: str, stem: str) -> None:
    assert exposure_name(Path("/x") / name) == stem


# --- real-world headers: a DSS photographic plate scan (horsehead_dss.hdr) ---------------------------


def without(header: fits.Header, prefixes: tuple[str, ...]) -> fits.Header:
    """A copy of the header without the keywords that start with any of the prefixes."""
    stripped = header.copy()
    for key in list(stripped.keys()):
        if key.startswith(prefixes):
            stripped.remove(key, remove_all=True)
    return stripped


def header_tan(header: fits.Header) -> WCS:
    """The horsehead header's own TAN WCS, read without its DSS keywords."""
    return WCS(fits.Header([card for card in header.cards if card.keyword.startswith((*TAN_PREFIXES, "CUNIT"))]))


def write_plate(path: Path, header: fits.Header) -> Path:
    """An 891 x 893 int16 image of zeros with the given header."""
    fits.PrimaryHDU(np.zeros(DSS_SHAPE, dtype=np.int16), header=header).writeto(path)
    return path


def test_dss_plate_solution_gives_a_tan_wcs_agreeing_with_the_header_tan(dss_header: fits.Header,
                                                                          tmp_path: Path) -> None:
    truth = header_tan(dss_header)
    info = read_exposure_info(write_plate(tmp_path / "plate.fits", without(dss_header, TAN_PREFIXES)))
    pointing = get_pointing(info.header, path=info.path)
    assert pointing.source == DSS_SOURCE == "header-dss (AMDX/AMDY plate solution)"
    assert "max residual" in pointing.detail and pointing.scale_source.startswith("DSS plate solution")
    wcs = approximate_wcs(pointing, info.shape)
    assert list(wcs.wcs.ctype) == ["RA---TAN", "DEC--TAN"] and wcs.sip is None and not wcs.has_distortion
    error_arcsec = wcs_error_mas(wcs, truth, info.shape, step_px=10.0) / 1000.0
    assert error_arcsec.max() < 0.3  # README: the plate solution and the header TAN agree to 0.22" at most
    # 0-based pixels: the header's CRPIX (446, 447) is the 0-based pixel (445, 446) of its CRVAL
    ra0, dec0 = truth.wcs.crval
    i0, j0 = wcs.world_to_pixel_values(ra0, dec0)
    assert (float(i0), float(j0)) == pytest.approx((445.0, 446.0), abs=0.2)
    assert wcs.wcs.crpix == pytest.approx(truth.wcs.crpix, abs=0.2)
    # the pointing is the sky position of the image centre, scale and orientation those of the plate
    centre = truth.pixel_to_world_values((DSS_SHAPE[1] - 1) / 2.0, (DSS_SHAPE[0] - 1) / 2.0)
    assert angular_separation_deg(pointing.ra_deg, pointing.dec_deg, *centre) * 3600.0 < 0.3
    assert pointing.scale_arcsec == pytest.approx(1.0082, abs=0.001) and pointing.parity == 1
    assert abs(pointing.rotation_deg) < 0.2


def test_a_header_with_both_keeps_its_fits_wcs(dss_header: fits.Header) -> None:
    # wcslib prefers the DSS keywords to CTYPE/CRVAL/CD: the explicit FITS WCS must still win
    pointing = get_pointing(dss_header)
    assert pointing.source == "header-wcs" and pointing.scale_source == "header WCS (CD matrix)"
    wcs = approximate_wcs(pointing, DSS_SHAPE)
    assert list(wcs.wcs.crval) == pytest.approx([85.27497, -2.458265]) and list(wcs.wcs.crpix) == [446.0, 447.0]
    assert wcs_error_mas(wcs, header_tan(dss_header), DSS_SHAPE).max() < 1e-3


def test_command_line_wins_over_the_dss_plate_solution(dss_header: fits.Header) -> None:
    plate = without(dss_header, TAN_PREFIXES)
    cli = get_pointing(plate, ra_deg=85.0, dec_deg=-2.0)
    assert (cli.ra_deg, cli.dec_deg, cli.source) == (85.0, -2.0, "cli")
    assert cli.scale_arcsec == pytest.approx(1.0100, abs=1e-4) and cli.scale_source.startswith("PLTSCALE x XPIXELSZ")
    scaled = get_pointing(plate, scale_arcsec=1.5)
    assert scaled.source == DSS_SOURCE and scaled.scale_arcsec == 1.5 and scaled.wcs_header is None
    assert scaled.scale_source == "cli --scale"


def test_a_damaged_plate_solution_falls_back_to_keywords(dss_header: fits.Header, caplog) -> None:
    damaged = without(dss_header, TAN_PREFIXES)
    damaged["AMDY4"] = 1e308  # wcslib folds the absurd eta onto one point of the sky
    pointing = get_pointing(damaged, path="damaged.fits")
    assert pointing.source == "header-keywords (OBJCTRA/OBJCTDEC)"
    assert pointing.scale_arcsec == pytest.approx(1.0100, abs=1e-4)
    assert "damaged.fits: the DSS plate solution gives a pixel scale" in caplog.text
    assert "trying RA/DEC keywords" in caplog.text


def test_plate_scale_from_pltscale_and_xpixelsz(dss_header: fits.Header) -> None:
    keywords = without(dss_header, (*TAN_PREFIXES, *AMD_PREFIXES, *PLATE_CENTRE_PREFIXES))
    pointing = get_pointing(keywords, config=PointingConfig(plate_scale_arcsec=0.5))
    assert pointing.source == "header-keywords (OBJCTRA/OBJCTDEC)"
    assert pointing.scale_arcsec == pytest.approx(67.20 * 15.0295 / 1000.0) == pytest.approx(1.010, abs=5e-4)
    assert pointing.scale_source == "PLTSCALE x XPIXELSZ (67.2 arcsec/mm x 15.0295 um / 1000)"
    assert (pointing.ra_deg, pointing.dec_deg) == pytest.approx((85.275, -2.458333))
    del keywords["XPIXELSZ"]
    fallback = get_pointing(keywords, config=PointingConfig(plate_scale_arcsec=0.5))
    assert fallback.scale_arcsec == 0.5 and fallback.scale_source == "config pointing.plate_scale_arcsec"


def test_dss_plate_centre_and_cutout_centre(dss_header: fits.Header) -> None:
    truth = header_tan(dss_header)
    centre = truth.pixel_to_world_values((DSS_SHAPE[1] - 1) / 2.0, (DSS_SHAPE[0] - 1) / 2.0)
    no_amd = without(dss_header, (*TAN_PREFIXES, "AMDX", "AMDY", "OBJCT"))
    cutout = get_pointing(no_amd)
    assert cutout.source.startswith("header-dss-centre") and "CNPIX" in cutout.source
    # the plate centre moved by CNPIX: a few arcmin off (the AMD offsets, 292" and 316", are neglected)
    assert angular_separation_deg(cutout.ra_deg, cutout.dec_deg, *centre) * 60.0 < 10.0
    assert cutout.scale_arcsec == pytest.approx(1.010, abs=5e-4)
    plate = get_pointing(without(no_amd, ("CNPIX",)))
    assert plate.source == "header-dss-centre (PLTRA*/PLTDEC* plate centre)"
    assert (plate.ra_deg, plate.dec_deg) == pytest.approx((85.5994167, -4.9466389))  # 5h42m23.86s -4d56m47.9s
    assert angular_separation_deg(plate.ra_deg, plate.dec_deg, *centre) > 2.0  # the cutout is far from it


@pytest.mark.parametrize(
    ("cards", "epoch", "source"),
    [
        ({"DATE-OBS": "29/11/51"}, 1951.9083, "DATE-OBS '29/11/51' (old FITS dd/mm/yy, 19yy)"),
        ({"DATE-OBS": "29/11/51", "UT": "12:00:00"}, 1951.9097, "DATE-OBS '29/11/51' (old FITS dd/mm/yy, 19yy) + UT"),
        ({"DATE-OBS": "1/2/99", "TIME-OBS": "00:00:00"}, 1999.0842, "+ TIME-OBS '00:00:00'"),
        ({"DATE-OBS": "1990-12-22T13:49:00", "UT": "01:00:00"}, 1990.9735, "DATE-OBS '1990-12-22T13:49:00' (ISO)"),
        ({"DATE-OBS": "1990-12-22", "UT": "13:49:00"}, 1990.9735, "(ISO) + UT '13:49:00'"),
        ({"MJD-OBS": 33979.0}, 1951.9083, "MJD-OBS 33979.0"),
        ({"EXPTIME": 1.0}, None, "none: catalog epoch assumed"),
    ],
)
def test_epoch_from_iso_and_old_fits_dates(cards: dict, epoch: float | None, source: str) -> None:
    value, described = epoch_with_source(fits.Header(cards))
    assert value == (None if epoch is None else pytest.approx(epoch, abs=1e-4))
    assert source in described
    assert header_epoch(fits.Header(cards)) == value


def test_a_bad_date_is_logged_and_ignored(caplog) -> None:
    assert header_epoch(fits.Header({"DATE-OBS": "32/13/51"}), path="bad.fits") is None
    assert "bad.fits: DATE-OBS '32/13/51' is not a date" in caplog.text
    fallback = fits.Header({"DATE-OBS": "yesterday", "MJD-OBS": 33979.0})
    assert epoch_with_source(fallback) == (pytest.approx(1951.9083, abs=1e-4), "MJD-OBS 33979.0")


def test_exposure_time_from_exptime_or_exposure(dss_header: fits.Header) -> None:
    assert exposure_time(dss_header) == (3900.0, "EXPOSURE 65 minutes (its comment)")
    seconds = fits.Header([("EXPOSURE", 30.0, "[s] exposure")])
    assert exposure_time(seconds) == (30.0, "EXPOSURE 30 s")
    both = fits.Header([("EXPTIME", 12.5, "seconds"), ("EXPOSURE", 65.0, "Exposure Minutes")])
    assert exposure_time(both) == (12.5, "EXPTIME 12.5 s")
    assert exposure_time(fits.Header()) == (None, "no EXPTIME or EXPOSURE keyword")


def test_a_1951_plate_needs_no_options(dss_header: fits.Header, tmp_path: Path) -> None:
    plate = without(dss_header, TAN_PREFIXES)
    plate["DATE-OBS"] = ("29/11/51", "old FITS form dd/mm/yy")
    path = write_plate(tmp_path / "plate1951.fits", plate)
    exposure = read_exposure(path)
    assert exposure.epoch_yr == pytest.approx(1951.91, abs=0.005) and exposure.exptime_s == 3900.0
    info = read_exposure_info(path)
    assert info.epoch_yr == exposure.epoch_yr
    assert info.provenance == {"epoch": "DATE-OBS '29/11/51' (old FITS dd/mm/yy, 19yy)",
                               "exptime": "EXPOSURE 65 minutes (its comment)",
                               "gain": "no GAIN keyword", "saturate": "no SATURATE keyword"}
    pointing = get_pointing(info.header, path=path)
    assert pointing.source == DSS_SOURCE
    assert (pointing.ra_deg, pointing.dec_deg) == pytest.approx((85.27499, -2.45829), abs=1e-4)
