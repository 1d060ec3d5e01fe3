"""The astrodask command: subcommands, config overrides, clear errors without tracebacks."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from click.testing import CliRunner

from astrodask.cli import EXIT_PARTIAL, main
from test_detect import render

BIN = Path(sys.executable).parent


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture()
def exposure_file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(8)
    gx, gy = np.meshgrid(np.arange(20, 300, 30.0), np.arange(20, 200, 30.0))
    image = render((220, 320), gx.ravel() + 0.3, gy.ravel() - 0.2, np.full(gx.size, 5e4), rng=rng)
    header = fits.Header({"RA": "10:00:00", "DEC": "+02:00:00", "DATE-OBS": "2025-03-01T01:02:03",
                          "EXPTIME": 60.0, "GAIN": 1.2, "SATURATE": 60000.0})
    path = tmp_path / "frame.fits.fz"
    fits.HDUList([fits.PrimaryHDU(header=header),
                  fits.CompImageHDU(np.round(image).astype(np.uint16), compression_type="RICE_1")]).writeto(path)
    return path


def test_every_subcommand_has_help(runner: CliRunner) -> None:
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0
    commands = [line.split()[0] for line in result.output.split("Commands:")[1].strip().splitlines()]
    assert {"config", "detect", "info"} <= set(commands)
    for command in commands:
        sub = runner.invoke(main, [command, "--help"])
        assert sub.exit_code == 0, sub.output
        assert "Usage: astrodask " + command in sub.output


def test_simulate_and_retries_defaults_come_from_the_code_they_configure() -> None:
    import click

    from astrodask import simulate as sim
    from astrodask.run.client import DEFAULT_RETRIES

    command = main.commands["simulate"]
    defaults = {p.name: p.get_default(click.Context(command)) for p in command.params}
    keywords = inspect.signature(sim.simulate_field).parameters
    for option, keyword in [("scale", "scale_arcsec"), ("rotation", "rotation_deg"), ("distortion", "distortion_px"),
                            ("density", "density_per_deg2"), ("mag_limit", "mag_limit"), ("epoch", "epoch_yr"),
                            ("pointing_error", "pointing_error_arcmin"), ("rotation_error", "rotation_error_deg"),
                            ("scale_error", "scale_error_frac"), ("header_style", "header_style")]:
        assert defaults[option] == keywords[keyword].default, option
    assert (defaults["height"], defaults["width"]) == keywords["shape"].default == sim.CONDOR_SHAPE
    assert (defaults["ra_deg"], defaults["dec_deg"]) == (sim.DEMO_RA_DEG, sim.DEMO_DEC_DEG)
    assert defaults["turbulence_scale_arcmin"] == inspect.signature(sim.TurbulenceSpec).parameters[
        "outer_scale_arcmin"].default
    for name in ("submit", "cache"):
        command = main.commands[name]
        command = command.commands["prefetch"] if name == "cache" else command
        retries = next(p for p in command.params if p.name == "retries")
        assert retries.get_default(click.Context(command)) == DEFAULT_RETRIES


def test_simulate_with_turbulence_writes_the_field_beside_the_truth(runner: CliRunner, tmp_path: Path) -> None:
    from astrodask.simulate import read_truth

    args = ["simulate", str(tmp_path), "--width", "500", "--height", "400", "--seed", "3"]
    result = runner.invoke(main, [*args, "--turbulence-mas", "20", "--turbulence-scale-arcmin", "5"])
    assert result.exit_code == 0, result.output
    assert "turbulence 20 mas rms per axis, outer scale 5'" in result.output
    truth = read_truth(tmp_path / "sim.fits.fz")
    assert truth.field is not None and (truth.field.spec.rms_mas, truth.field.spec.outer_scale_arcmin) == (20.0, 5.0)
    moved = Table.read(tmp_path / "sim.truth.ecsv")
    assert np.sqrt(np.mean(np.square(moved["dxi_mas"]))) > 5.0
    assert runner.invoke(main, [*args, "--name", "calm"]).exit_code == 0
    assert read_truth(tmp_path / "calm.fits.fz").field is None
    assert "dxi_mas" not in Table.read(tmp_path / "calm.truth.ecsv").colnames


def test_console_scripts_astrodask_and_dask_astrodask() -> None:
    own = subprocess.run([str(BIN / "astrodask"), "--version"], capture_output=True, text=True, check=True)
    assert own.stdout.startswith("astrodask, version")
    dask = subprocess.run([str(BIN / "dask"), "astrodask", "detect", "--help"], capture_output=True, text=True)
    assert dask.returncode == 0, dask.stderr
    assert "Usage: dask astrodask detect" in dask.stdout


def test_detect_writes_table_with_config_and_summary(runner: CliRunner, exposure_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "sources.ecsv"
    result = runner.invoke(main, ["detect", str(exposure_file), "--out", str(out), "--set", "detect.first.minarea=4"])
    assert result.exit_code == 0, result.output
    assert f"{exposure_file}: 60 sources (first pass)" in result.output
    table = Table.read(out)
    assert len(table) == 60
    assert table.meta["config"]["detect"]["first"]["minarea"] == 4
    assert table.meta["file"] == str(exposure_file)
    assert str(table["i"].unit) == "pix"
    parquet = runner.invoke(main, ["detect", str(exposure_file), "--format", "parquet", "--out", str(tmp_path)])
    assert parquet.exit_code == 0, parquet.output
    assert len(Table.read(tmp_path / "frame.sources.parquet")) == 60


def test_config_precedence_env_file_set(runner: CliRunner, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DASK_ASTRODASK__FIT__TPV_DEGREE", "5")
    monkeypatch.setenv("DASK_ASTRODASK__FIT__RMS_CLIP_ROUNDS", "7")
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("astrodask:\n  fit:\n    rms_clip_rounds: 2\n    CLIPPING_THRESHOLD: 1.0\n")
    result = runner.invoke(main, ["config", "--yaml", "--config", str(yaml_file),
                                  "--set", "fit.CLIPPING_THRESHOLD=0.5"])
    assert result.exit_code == 0, result.output
    assert "tpv_degree: 5" in result.output  # environment
    assert "rms_clip_rounds: 2" in result.output  # file beats environment
    assert "CLIPPING_THRESHOLD: 0.5" in result.output  # --set beats file


def test_expected_errors_are_one_line_without_traceback(exposure_file: Path, tmp_path: Path) -> None:
    notfits = tmp_path / "junk.fits"
    notfits.write_text("junk")
    nopointing = tmp_path / "nopointing.fits"
    fits.PrimaryHDU(np.zeros((10, 10), np.float32)).writeto(nopointing)
    cube = tmp_path / "cube.fits"
    fits.PrimaryHDU(np.zeros((2, 10, 10), np.float32)).writeto(cube)
    badcat = tmp_path / "stars.csv"
    badcat.write_text("ra,dec\n1.0,2.0\n")
    cases = [
        (["detect", str(tmp_path / "absent.fits")], "absent.fits: no such file"),
        (["detect", str(cube)], "cube.fits: no 2-D image (HDU 0: 3-D)"),
        (["detect", str(exposure_file), "--hdu", "4"], "frame.fits.fz: HDU 4 does not exist"),
        (["catalog", "import", str(badcat)], "stars.csv"),
        (["gaia", str(exposure_file), "--catalog", str(badcat)], "stars.csv"),
        (["detect", str(notfits)], "junk.fits: not a readable FITS file"),
        (["info", str(nopointing)], "nopointing.fits: cannot find the pointing"),
        (["config", "--set", "fit.tpv_degree=99"], "fit.tpv_degree = 99 is out of range"),
    ]
    for args, message in cases:
        proc = subprocess.run([str(BIN / "astrodask"), *args], capture_output=True, text=True)
        assert proc.returncode != 0
        assert message in proc.stderr
        assert "Traceback" not in proc.stderr


def test_a_bad_file_fails_alone(runner: CliRunner, exposure_file: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.fits"
    bad.write_text("nope")
    result = runner.invoke(main, ["detect", str(bad), str(exposure_file), "--out", str(tmp_path / "o")])
    assert result.exit_code == EXIT_PARTIAL
    assert "1 of 2 files failed" in result.output
    assert (tmp_path / "o" / "frame.sources.ecsv").exists()


def test_info_reads_pointing_and_epoch(runner: CliRunner, exposure_file: Path) -> None:
    result = runner.invoke(main, ["info", str(exposure_file)])
    assert result.exit_code == 0, result.output
    assert "RA 150.000000  Dec +2.000000" in result.output and "HDU 1, 320 x 220 px" in result.output
    assert "epoch     2025.16" in result.output
    flipped = runner.invoke(main, ["info", str(exposure_file), "--ra", "12.5", "--dec", "-3", "--flip"])
    assert "RA 12.500000  Dec -3.000000" in flipped.output and "parity -1" in flipped.output
    # where each value came from
    assert "    pointing: header-keywords (RA/DEC)" in result.output
    assert "    scale:    config pointing.plate_scale_arcsec" in result.output
    assert "    epoch:    DATE-OBS '2025-03-01T01:02:03' (ISO)" in result.output
    assert "    exptime:  EXPTIME 60 s" in result.output
    assert "    gain:     GAIN 1.2" in result.output and "    saturate: SATURATE 60000" in result.output
    assert "    pointing: cli" in flipped.output


def test_info_on_a_dss_plate_says_where_each_value_came_from(runner: CliRunner, dss_header: fits.Header,
                                                              tmp_path: Path) -> None:
    from test_exposure import TAN_PREFIXES, without, write_plate

    plate = without(dss_header, TAN_PREFIXES)
    plate["DATE-OBS"] = "29/11/51"
    path = write_plate(tmp_path / "plate1951.fits", plate)
    result = runner.invoke(main, ["info", str(path)])
    assert result.exit_code == 0, result.output
    assert "HDU 0, 891 x 893 px" in result.output
    assert "RA 85.274994  Dec -2.458295 deg  scale 1.0081\"/px" in result.output
    assert "(from header-dss (AMDX/AMDY plate solution))" in result.output
    assert "    pointing: header-dss (AMDX/AMDY plate solution); TAN WCS fitted to the DSS plate solution" \
        in result.output
    assert "    scale:    DSS plate solution (CD matrix of the fitted TAN WCS)" in result.output
    assert "epoch     1951.90828  exptime 3900.0" in result.output
    assert "    epoch:    DATE-OBS '29/11/51' (old FITS dd/mm/yy, 19yy)" in result.output
    assert "    exptime:  EXPOSURE 65 minutes (its comment)" in result.output
    assert "    gain:     no GAIN keyword: config detect.default_gain = 1 e-/ADU" in result.output
    assert "    saturate: no SATURATE keyword: config detect.default_saturation_adu = 65535 ADU" in result.output
    # without the plate solution and the date: OBJCTRA/OBJCTDEC, PLTSCALE x XPIXELSZ, no epoch
    keywords = without(dss_header, (*TAN_PREFIXES, "AMDX", "AMDY", "PPO", "DATE-OBS"))
    bare = runner.invoke(main, ["info", str(write_plate(tmp_path / "bare.fits", keywords))])
    assert bare.exit_code == 0, bare.output
    assert "scale 1.0100\"/px" in bare.output and "(from header-keywords (OBJCTRA/OBJCTDEC))" in bare.output
    assert "    scale:    PLTSCALE x XPIXELSZ (67.2 arcsec/mm x 15.0295 um / 1000)" in bare.output
    assert "epoch     None" in bare.output and "    epoch:    none: catalog epoch assumed" in bare.output


def test_demo_runs_end_to_end_offline(runner: CliRunner, tmp_path: Path) -> None:
    from astropy.wcs import WCS

    from astrodask.simulate import read_truth_wcs
    from astrodask.wcsutil import wcs_error_mas

    out = tmp_path / "demo"
    result = runner.invoke(main, ["demo", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for name in ("demo.fits.fz", "demo_gaia.ecsv", "demo.truth.wcs.fits", "demo.truth.ecsv",
                 "demo.wcs.fits", "summary.ecsv", "demo.matched.ecsv", "demo.residuals.png"):
        assert (out / name).is_file(), name
    header = fits.getheader(out / "demo.wcs.fits")
    assert header["CTYPE1"] == "RA---TPV" and header["ASTSTAT"] == "SOLVED"
    error = wcs_error_mas(WCS(header), read_truth_wcs(out / "demo.fits.fz"), (1597, 2394))
    assert np.sqrt(np.mean(error**2)) < 30.0  # a quarter frame with a few hundred stars
    summary = Table.read(out / "summary.ecsv")
    assert list(summary["status"]) == ["solved"] and summary["matches"][0] > 200
    assert "embedded LocalCluster" in result.output and "solved:" in result.output
    assert "against the truth WCS" in result.output
    # the stars came from the demo's own tile cache, complete over the field, not from a file
    from astrodask.reference.healpix import tiles_for_footprint
    from astrodask.reference.store import TileCache, read_field
    from astrodask.reference.footprint import footprint_corners
    from astrodask.io.exposure import approximate_wcs, get_pointing, read_exposure_info

    cache = TileCache(out / "gaia-tiles")
    info = read_exposure_info(out / "demo.fits.fz")
    corners = footprint_corners(approximate_wcs(get_pointing(info.header, path=info.path), info.shape), info.shape)
    assert set(tiles_for_footprint(corners, margin_deg=0.2).tolist()) <= set(cache.tiles())
    assert len(read_field(cache, corners, margin_deg=0.2)) > 1000
    assert str(out.resolve()) in result.output


def test_gaia_command_with_catalog(runner: CliRunner, tmp_path: Path) -> None:
    from astrodask.simulate import make_demo

    field = make_demo(tmp_path)
    out = tmp_path / "refs.ecsv"
    result = runner.invoke(main, ["gaia", str(field.image_path), "--catalog", str(field.catalog_path),
                                  "--out", str(out), "--set", "gaia.mag_limit=18"])
    assert result.exit_code == 0, result.output
    stars = Table.read(out)
    assert len(stars) > 100 and stars["phot_g_mean_mag"].max() <= 18.0
    assert {"x", "y", "in_image", "ref_flag"} <= set(stars.colnames)
    missing = runner.invoke(main, ["gaia", str(field.image_path), "--catalog", str(tmp_path / "none.ecsv")])
    assert missing.exit_code != 0 and "none.ecsv" in missing.output
