"""The public Python API: one exposure from a file or from memory, and a backlog on a client you hold."""

from __future__ import annotations

import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

import astrodask
from astrodask.simulate import read_truth_wcs, simulate_field
from astrodask.wcsutil import wcs_error_mas

SHAPE = (1200, 1800)

#: The public names: adding one is a decision, removing one breaks users.
PUBLIC = {"__version__", "solve_exposure", "solve_backlog", "solution_header", "read_catalog", "PipelineConfig",
          "ExposureResult", "AstrodaskError"}


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    folder = tmp_path_factory.mktemp("api")
    return simulate_field(folder, "api", ra_deg=40.0, dec_deg=-12.0, shape=SHAPE, density_per_deg2=4000.0,
                          distortion_px=2.0, rng=np.random.default_rng(zlib.crc32(b"api")))


def test_the_public_names_are_pinned_and_import_lightly() -> None:
    assert set(astrodask.__all__) == PUBLIC
    for name in PUBLIC:
        assert getattr(astrodask, name) is not None
    # ``import astrodask`` alone loads none of the algorithm (the CLI and workers import what they use)
    code = "import sys, astrodask; print(any(m in sys.modules for m in ('astroalign', 'sep', 'astropy')))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() \
        == "False"
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        astrodask.nothing  # noqa: B018


def test_solve_a_file_and_write_its_header(field) -> None:
    result = astrodask.solve_exposure(field.image_path, catalog=field.catalog_path)
    assert isinstance(result, astrodask.ExposureResult) and result.ok, result.reason
    assert isinstance(result.wcs, WCS) and 0.8 < result.quality.chi2_dof < 1.3
    assert len(result.matched) >= result.n_matches > 100
    error = wcs_error_mas(result.wcs, read_truth_wcs(field.image_path), SHAPE)
    assert np.sqrt(np.mean(error**2)) < 25.0
    header = astrodask.solution_header(result)
    assert header["CTYPE1"] == "RA---TPV" and header["ASTSTAT"] == "SOLVED"
    np.testing.assert_allclose(WCS(header).pixel_to_world_values(10.0, 20.0),
                               result.wcs.pixel_to_world_values(10.0, 20.0))


def test_solve_an_image_in_memory_as_its_file(field) -> None:
    with fits.open(field.image_path) as hdul:
        data, header = hdul[1].data.copy(), hdul[1].header.copy()
    catalog = astrodask.read_catalog(field.catalog_path)
    in_memory = astrodask.solve_exposure(data, header=header, catalog=catalog, name="frame-42")
    from_file = astrodask.solve_exposure(field.image_path, catalog=catalog)
    assert in_memory.ok and in_memory.name == "frame-42"
    i, j = np.array([0.0, 900.0, 1799.0]), np.array([0.0, 600.0, 1199.0])
    np.testing.assert_allclose(in_memory.wcs.pixel_to_world_values(i, j), from_file.wcs.pixel_to_world_values(i, j),
                               atol=1e-9)
    with pytest.raises(astrodask.AstrodaskError, match="needs its FITS header"):
        astrodask.solve_exposure(data, catalog=catalog)
    failed = astrodask.solve_exposure(data[:, :, None], header=header, catalog=catalog)
    assert not failed.ok and "2-D image" in failed.reason


def test_a_backlog_on_a_client_you_hold(field, tmp_path: Path) -> None:
    from distributed import Client, LocalCluster

    broken = tmp_path / "broken.fits"
    broken.write_text("not fits")
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        futures = astrodask.solve_backlog([field.image_path, broken], client=client, out_dir=tmp_path / "out",
                                          catalog=field.catalog_path)
        rows = client.gather(futures)
    by_file = {Path(r["file"]).name: r for r in rows}
    assert by_file["api.fits.fz"]["status"] == "solved"
    assert by_file["broken.fits"]["status"] == "failed" and by_file["broken.fits"]["reason"]
    assert (tmp_path / "out" / "api.wcs.fits").is_file()
    assert (tmp_path / "out" / ".astrodask" / "api.json").is_file()  # the status record, as submit writes it
