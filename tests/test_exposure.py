"""Reading exposures: any HDU, compressed or not, scaling, pointing, epoch, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from astrodask.config import PointingConfig
from astrodask.errors import ImageError, InputFileError, PointingError
from astrodask.exposure import approximate_wcs, get_pointing, header_epoch, parse_dec, parse_ra, read_exposure
from astrodask.types import exposure_name
from astrodask.wcsutil import cd_matrix, cd_to_scale_rotation_parity, tan_wcs

SHAPE = (60, 90)


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
    assert exposure.data.dtype == np.float32 and exposure.data.dtype.isnative
    np.testing.assert_array_equal(exposure.data, image.astype(np.float32))
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
    np.testing.assert_allclose(exposure.data, raw.astype(np.float64) * 0.5 + 100.0)
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
