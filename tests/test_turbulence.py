"""The turbulence stage (issue 18): kernel, correlation, GP correction, cross-validation gate, lookup tables,
predicted error; on fields of simulate.atmosphere (an independent FFT realisation) and on simulated exposures."""

from __future__ import annotations

import math
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from astrodask.config import PipelineConfig, TurbulenceConfig
from astrodask.io.output import summary_row, tpv_path, write_products, write_solution
from astrodask.reference.catalog import read_catalog
from astrodask.simulate import read_truth, simulate_field
from astrodask.simulate.atmosphere import TurbulenceSpec, turbulence_field
from astrodask.solve.pipeline import solve_file
from astrodask.solve.tpv import TPVSolution, local_jacobian, pixel_to_world
from astrodask.solve.turbulence import (MAS_PER_DEG, CurlFreeKernel, correct_turbulence, corrected_pixel_to_world,
                                        correlation_significance, gp_blocks, local_gp, measure_correlation,
                                        short_range_covariance)
from astrodask.sphere import gnomonic
from astrodask.types import SOLVED, ExposureResult

SCALE = 0.85  # arcsec/px, Condor's
SHAPE = (1800, 2700)  # 25' x 38'
PX_PER_ARCMIN = 60.0 / SCALE


def _field(rms_mas: float, shape: tuple[int, int], seed: int = 3):
    ny, nx = shape
    half = (nx * SCALE / 3600 / 2, ny * SCALE / 3600 / 2)
    spec = TurbulenceSpec(rms_mas=rms_mas, seed=seed)
    field = turbulence_field(spec, tangent_ra_deg=0.0, tangent_dec_deg=0.0,
                             half_widths_deg=(half[0] + 0.05, half[1] + 0.05), frame_half_widths_deg=half)

    def at(i: np.ndarray, j: np.ndarray) -> np.ndarray:
        xi = (i - (nx - 1) / 2) * SCALE / 3600
        eta = (j - (ny - 1) / 2) * SCALE / 3600
        return np.column_stack(field.displacement_mas(xi, eta))

    return at


def _cubic(i: np.ndarray, j: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    u, v = (i - shape[1] / 2) / shape[1], (j - shape[0] / 2) / shape[0]
    return np.column_stack([u**a * v**b for a in range(4) for b in range(4) if a + b <= 3])


def _residual_case(rms_mas: float, *, density: float = 1.5, noise_mas: float = 10.0, seed: int = 1):
    """Stars over a field displaced by the atmosphere, a cubic (the TPV's part) fitted out: residuals and truth."""
    rng = np.random.default_rng(seed)
    ny, nx = SHAPE
    n = int(density * ny * nx / PX_PER_ARCMIN**2)
    i, j = rng.uniform(0, nx - 1, n), rng.uniform(0, ny - 1, n)
    turb = _field(rms_mas, SHAPE) if rms_mas > 0 else (lambda a, b: np.zeros((len(a), 2)))
    observed = turb(i, j) + rng.normal(0.0, noise_mas, (n, 2))
    design = _cubic(i, j, SHAPE)
    coef, *_ = np.linalg.lstsq(design, observed, rcond=None)
    gi, gj = np.meshgrid(np.linspace(0, nx - 1, 90), np.linspace(0, ny - 1, 60))
    gi, gj = gi.ravel(), gj.ravel()
    truth_error = turb(gi, gj) - _cubic(gi, gj, SHAPE) @ coef  # the TPV-only solution's error against the truth
    var = np.full((n, 2), noise_mas**2)
    return i, j, observed - design @ coef, var, gi, gj, truth_error


def _flat_jacobian(i: np.ndarray, j: np.ndarray) -> np.ndarray:
    return np.broadcast_to(np.diag([SCALE * 1000.0, SCALE * 1000.0]), (len(i), 2, 2))


def _east_left_jacobian(i: np.ndarray, j: np.ndarray) -> np.ndarray:
    return np.broadcast_to(np.diag([-SCALE * 1000.0, SCALE * 1000.0]), (len(i), 2, 2))


def _run(i, j, res, var, config=None, jacobian=_flat_jacobian):
    total = var + np.var(res, axis=0) - np.mean(var, axis=0)  # what like_fit's floor would add
    return correct_turbulence(i, j, res, var, np.maximum(total, var), shape=SHAPE, scale_arcsec=SCALE, degree=3,
                              jacobian_mas_per_px=jacobian, epoch_yr=2026.0,
                              config=config or TurbulenceConfig(), rng=np.random.default_rng(0))


def _corrected_rms(result, gi, gj, truth_error, sign=(1.0, 1.0)) -> np.ndarray:
    """The error per axis left after the correction, mas; ``sign`` maps pixel offsets onto the residual axes."""
    di, dj = result.field.pixel_offsets(gi, gj)
    offsets = SCALE * 1000.0 * np.column_stack([di, dj]) * np.asarray(sign)
    return np.sqrt(np.mean((truth_error + offsets) ** 2, axis=0))


def test_curl_free_kernel_is_the_covariance_of_the_simulated_field() -> None:
    """Along a separation the field correlates as C_L, across it as C_T: the kernel against the empirical
    covariance of simulate.atmosphere's FFT realisation (an independent construction), isotropic, 10' outer scale."""
    shape = (4000, 6000)
    turb = _field(10.0, shape, seed=11)
    rng = np.random.default_rng(2)
    p = np.column_stack([rng.uniform(300, shape[1] - 300, 40000), rng.uniform(300, shape[0] - 300, 40000)])
    kernel = CurlFreeKernel(100.0, 10.0 * PX_PER_ARCMIN, 1.0, 0.0)
    d0 = turb(p[:, 0], p[:, 1])
    var = np.mean(d0**2)
    for sep_arcmin in (1.0, 3.0):
        s = sep_arcmin * PX_PER_ARCMIN
        dx = turb(p[:, 0] + s, p[:, 1])  # separation along i: xi is longitudinal, eta transverse
        measured = np.mean(d0 * dx, axis=0) / var
        model = np.diag(kernel(np.array(s), np.array(0.0))) / 100.0
        np.testing.assert_allclose(measured, model, atol=0.12)
    assert model[0] < model[1]  # at 3': the longitudinal correlation falls faster than the transverse


def test_local_gp_equals_the_global_gp() -> None:
    """Blocks and halo as configured (5' and 2'): the posterior mean within a few mas of one GP over all the stars,
    and as close to the truth (the blocks' error in quadrature adds under 5 %)."""
    from astrodask.config import PipelineConfig

    settings = PipelineConfig().turbulence
    i, j, res, var, gi, gj, truth = _residual_case(15.0, density=0.6)
    kernel = CurlFreeKernel(200.0, 10.0 * PX_PER_ARCMIN, 1.0, 0.0)
    folds = np.zeros(len(i), dtype=int)
    ij, q = np.column_stack([i, j]), np.column_stack([gi, gj])[::7]
    local = local_gp(ij, res, var, kernel, folds, q, block_px=settings.block_arcmin * PX_PER_ARCMIN,
                     halo_px=settings.halo_arcmin * PX_PER_ARCMIN, max_stars=settings.max_block_stars)
    whole = local_gp(ij, res, var, kernel, folds, q, block_px=1e9, halo_px=0.0, max_stars=100_000)
    assert np.sqrt(np.mean((local.mean_mas - whole.mean_mas) ** 2)) < 0.15 * np.sqrt(np.mean(whole.mean_mas**2))
    truth = truth[::7]
    assert np.sqrt(np.mean((truth - local.mean_mas) ** 2)) < 1.05 * np.sqrt(np.mean((truth - whole.mean_mas) ** 2))
    # in sample, the posterior mean K (K + N)^-1 y (the GP reads it off its weights: y - N (K + N)^-1 y)
    cov = kernel.matrix(ij, ij)
    noisy = cov + np.diag(var.ravel())
    np.testing.assert_allclose(whole.at_stars_mas, (cov @ np.linalg.solve(noisy, res.ravel())).reshape(-1, 2),
                               atol=1e-6)


def test_turbulence_corrected_and_its_error_predicted() -> None:
    """15 mas of atmosphere, 1.5 stars/arcmin^2 at 10 mas: the correction keeps less than 0.55 of the TPV-only error
    (0.45 measured), the kernel finds the outer scale, and the predicted error is within 1.5 of the truth's."""
    i, j, res, var, gi, gj, truth_error = _residual_case(15.0)
    result = _run(i, j, res, var)
    assert result.applied, result.reason
    assert result.correction == "tpv+gp" and result.cv is not None and result.cv.gain_sigma > 10
    assert all(a < b for a, b in zip(result.cv.rms_after_mas, result.cv.rms_before_mas))
    assert 5.0 < result.kernel.outer_scale_px / PX_PER_ARCMIN < 20.0  # 10' simulated
    tpv_only = np.sqrt(np.mean(truth_error**2, axis=0))
    di, dj = result.field.pixel_offsets(gi, gj)
    corrected = np.sqrt(np.mean((truth_error + SCALE * 1000.0 * np.column_stack([di, dj])) ** 2, axis=0))
    assert np.all(corrected < 0.55 * tpv_only), (corrected, tpv_only)
    for predicted, measured in ((result.predicted.random_mas, corrected), (result.predicted_tpv.random_mas, tpv_only)):
        ratio = np.asarray(predicted) / measured
        assert np.all((ratio > 1 / 1.5) & (ratio < 1.5)), (predicted, measured)
    assert result.predicted.map_mas.shape[2] == 2 and np.all(result.predicted.map_mas > 0)


def test_no_turbulence_stays_tpv_only_and_says_so() -> None:
    """Without a field the correlation is not significant: no GP is solved (no cross-validation), and the reason says
    so with the figure."""
    i, j, res, var, *_ = _residual_case(0.0)
    result = _run(i, j, res, var)
    assert not result.applied and result.field is None and result.correction == "tpv"
    assert result.reason.startswith("not applied")
    np.testing.assert_array_equal(result.corrected_mas, result.residual_mas)
    assert result.predicted is result.predicted_tpv
    if result.kernel is not None and result.kernel.variance_mas2 > 0:  # a chance positive correlation: the gate says
        assert result.cv is None and "corr_min_sigma" in result.reason and "no GP solved" in result.reason
        assert result.significance is not None and result.significance.sigma <= 3.0


def test_correlation_significance_is_a_standard_normal_without_a_field() -> None:
    """Uncorrelated residuals of unequal variances, weighted by their inverse: the short-range statistic has mean 0 and
    standard deviation 1 over realisations (each pair counted once: twice would give sqrt 2); a 15 mas field at
    1.5 stars/arcmin^2 measured to 10 mas stands far above it."""
    rng = np.random.default_rng(8)
    ny, nx = SHAPE
    n = 1500
    i, j = rng.uniform(0, nx - 1, n), rng.uniform(0, ny - 1, n)
    sigma = rng.uniform(5.0, 60.0, (n, 2))
    z = []
    for _ in range(40):  # out to 4.5' only (bins of 3'): the statistic needs no more, and it keeps the test fast
        res = rng.normal(0.0, sigma)
        corr = measure_correlation(i, j, res, 1.0 / sigma**2, max_sep_px=4.5 * PX_PER_ARCMIN, bins=3)
        z.append(correlation_significance(corr, radius_px=3 * PX_PER_ARCMIN).sigma)
    assert abs(np.mean(z)) < 0.5 and 0.75 < np.std(z) < 1.3, (np.mean(z), np.std(z))
    i, j, res, var, *_ = _residual_case(15.0)
    corr = measure_correlation(i, j, res, 1.0 / (var + 225.0), max_sep_px=20 * PX_PER_ARCMIN, bins=21)
    signif = correlation_significance(corr, radius_px=3 * PX_PER_ARCMIN)
    assert signif.sigma > 20 and signif.pairs > 1000


def test_east_left_image_is_corrected_as_well() -> None:
    """The usual sky orientation (East left: xi grows towards -i) reflects the residuals against the pixels; the
    curl-free kernel's cross term changes sign under a reflection, so the stage works in the pixel frame: the same
    field seen East-left is corrected as well as seen East-right (0.45 of the TPV-only error left; 0.69 when the GP
    took the sky's axes for the pixels')."""
    i, j, res, var, gi, gj, truth_error = _residual_case(15.0)
    flip = np.array([-1.0, 1.0])  # the same displacements, their xi component as an East-left image reports it
    right = _run(i, j, res, var)
    left = _run(i, j, res * flip, var, jacobian=_east_left_jacobian)
    assert right.applied and left.applied, left.reason
    tpv_only = np.sqrt(np.mean(truth_error**2, axis=0))
    err_right = _corrected_rms(right, gi, gj, truth_error)
    err_left = _corrected_rms(left, gi, gj, truth_error * flip, sign=(-1.0, 1.0))
    assert np.all(err_left < 0.55 * tpv_only), (err_left, tpv_only)
    np.testing.assert_allclose(err_left, err_right, rtol=0.02)


def test_cross_validation_on_a_sample_of_blocks() -> None:
    """turbulence.cv_max_stars: the gate holds back the stars of blocks drawn at random until it has enough, and says
    how many; the correction, once accepted, is the same GP over every block as with the whole field held back."""
    i, j, res, var, *_ = _residual_case(15.0)
    whole = _run(i, j, res, var)
    sampled = _run(i, j, res, var, TurbulenceConfig(cv_max_stars=300))
    assert whole.applied and sampled.applied, sampled.reason
    assert whole.cv.n_blocks == whole.cv.total_blocks and whole.cv.n_stars == len(i)
    assert sampled.cv.n_blocks < sampled.cv.total_blocks and 300 <= sampled.cv.n_stars < len(i) / 2
    assert f"{sampled.cv.n_blocks} of {sampled.cv.total_blocks} blocks drawn at random" in sampled.reason
    np.testing.assert_allclose(sampled.field.offset_px, whole.field.offset_px, atol=1e-9)
    np.testing.assert_allclose(sampled.field.sd_mas, whole.field.sd_mas, atol=1e-6)


def test_blocks_keep_their_best_measured_stars() -> None:
    """A block with more stars than turbulence.max_block_stars within its halo keeps the best measured of them."""
    rng = np.random.default_rng(4)
    ij = rng.uniform(0, 1000, (3000, 2))
    weight = rng.uniform(0.0, 1.0, 3000)
    blocks = gp_blocks(ij, np.zeros((0, 2)), block_px=300.0, halo_px=100.0, max_stars=100, weight=weight)
    assert sum(len(b.own) for b in blocks) == 3000
    lo = ij.min(axis=0)
    for b in blocks:
        assert len(b.train) == 100
        centre = lo + (np.floor((ij[b.own[0]] - lo) / 300.0) + 0.5) * 300.0
        near = np.flatnonzero(np.max(np.abs(ij - centre), axis=1) <= 250.0)  # the block and its halo
        assert set(b.train) <= set(near)
        assert weight[b.train].min() >= np.sort(weight[near])[-100]


def test_switched_off_or_too_few_stars() -> None:
    i, j, res, var, *_ = _residual_case(15.0, density=0.3)
    off = _run(i, j, res, var, TurbulenceConfig(enabled=False))
    assert not off.applied and "enabled = false" in off.reason and off.kernel is None
    few = _run(i[:50], j[:50], res[:50], var[:50])
    assert not few.applied and "min_stars" in few.reason


def _solved_result(tmp_path: Path) -> ExposureResult:
    """A solved result carrying a real TPV (with distortion) and the stage's correction of a turbulent field."""
    pv1, pv2 = np.zeros(40), np.zeros(40)
    pv1[1] = pv2[1] = 1.0
    pv1[4], pv2[5], pv1[7] = 0.02, -0.015, 0.5  # quadratic and cubic terms: a Jacobian that varies
    scale_deg = SCALE / 3600.0
    ny, nx = SHAPE
    solution = TPVSolution(crpix=((nx - 1) / 2, (ny - 1) / 2), crval=(150.1, 25.0),
                           cd=np.array([[-scale_deg * 0.98, scale_deg * 0.2], [scale_deg * 0.2, scale_deg * 0.98]]),
                           pv1=pv1, pv2=pv2, degree=3)
    i, j, res, var, *_ = _residual_case(15.0)

    def jacobian(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return local_jacobian(solution, a, b) * MAS_PER_DEG

    turb = correct_turbulence(i, j, res, var, var + 100.0, shape=SHAPE, scale_arcsec=solution.scale_arcsec,
                              degree=3, jacobian_mas_per_px=jacobian, epoch_yr=2026.0, config=TurbulenceConfig(),
                              rng=np.random.default_rng(0))
    assert turb.applied
    return ExposureResult(file=str(tmp_path / "x.fits"), name="x", status=SOLVED, solution=solution, shape=SHAPE,
                          counts={"matches": len(i)}, rms_arcsec=(0.02, 0.02), turbulence=turb)


def test_astropy_applies_the_lookup_tables_as_we_do(tmp_path: Path) -> None:
    """WCS(header, hdul) of the written solution gives our corrected positions to 0.1 mas, they take the GP's
    residual field out of the TPV's, and <name>.tpv.fits is the TPV alone."""
    result = _solved_result(tmp_path)
    path = write_solution(result, tmp_path)
    rng = np.random.default_rng(5)
    ny, nx = SHAPE
    i, j = rng.uniform(-0.5, nx - 0.5, 3000), rng.uniform(-0.5, ny - 0.5, 3000)
    with fits.open(path) as hdul, warnings.catch_warnings():
        warnings.simplefilter("ignore", category=fits.verify.VerifyWarning)
        warnings.filterwarnings("ignore", message=".*more axes.*")
        header = hdul[0].header
        assert header["ASTCORR"] == "TPV+GP" and header["CPDIS1"] == "LOOKUP"
        assert [h.name for h in hdul[1:]] == ["WCSDVARR", "WCSDVARR"]
        ra_a, dec_a = WCS(header, hdul).pixel_to_world_values(i, j)
        crder = np.array([header["CRDER1"], header["CRDER2"]]) * MAS_PER_DEG
        tpv_header = fits.getheader(tpv_path(tmp_path, "x"))
        assert header["TPVFILE"] == tpv_path(tmp_path, "x").name
    ra_o, dec_o = corrected_pixel_to_world(result.solution, result.turbulence.field, i, j)
    ra0, dec0 = result.solution.crval
    xa, ya = gnomonic(ra_a, dec_a, ra0, dec0)
    xo, yo = gnomonic(ra_o, dec_o, ra0, dec0)
    assert np.max(np.hypot(xa - xo, ya - yo)) * math.degrees(1) * MAS_PER_DEG < 0.1
    # the correction takes out the GP's residual field: TPV(p) - r(p), to the grid's bilinear interpolation
    ra_t, dec_t = pixel_to_world(result.solution, i, j)
    xt, yt = gnomonic(ra_t, dec_t, ra0, dec0)
    shift = np.degrees(np.column_stack([xo - xt, yo - yt])) * MAS_PER_DEG
    field = result.turbulence.field
    nodes = np.column_stack([np.arange(field.shape[1]) * field.step_px, np.zeros(field.shape[1])])
    di, dj = field.pixel_offsets(nodes[:, 0], nodes[:, 1])
    ra_n, dec_n = corrected_pixel_to_world(result.solution, field, nodes[:, 0], nodes[:, 1])
    ra_m, dec_m = pixel_to_world(result.solution, nodes[:, 0], nodes[:, 1])
    xn, yn = gnomonic(ra_n, dec_n, ra0, dec0)
    xm, ym = gnomonic(ra_m, dec_m, ra0, dec0)
    at_nodes = np.degrees(np.column_stack([xn - xm, yn - ym])) * MAS_PER_DEG
    np.testing.assert_allclose(at_nodes, -field.residual_mas[0], atol=0.01)  # at the nodes: exactly -r
    assert 3.0 < np.sqrt(np.mean(shift**2)) < 30.0
    np.testing.assert_allclose(crder, result.turbulence.predicted.random_mas, rtol=1e-6)
    assert "CPDIS1" not in tpv_header and tpv_header["ASTCORR"] == "TPV"
    assert tpv_header["CRDER1"] * MAS_PER_DEG == pytest.approx(result.turbulence.predicted_tpv.random_mas[0])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*more axes.*")
        ra_p, dec_p = WCS(tpv_header).pixel_to_world_values(i, j)
    assert np.max(np.hypot(ra_p - ra_t, dec_p - dec_t)) * MAS_PER_DEG < 0.01


def test_summary_row_says_what_the_solution_carries(tmp_path: Path) -> None:
    result = _solved_result(tmp_path)
    row = summary_row(result)
    assert row["correction"] == "tpv+gp" and row["turbulence"].startswith("applied")
    assert row["crder_xi_mas"] < row["crder_tpv_xi_mas"] and row["cv_rms_corrected_mas"] < row["cv_rms_mas"]
    assert 5.0 < row["turb_outer_arcmin"] < 20.0 and row["t_turbulence_s"] == 0.0
    Table([row]).write(tmp_path / "row.ecsv")  # every column is a plain value
    written = write_products(result, tmp_path / "out", plots_dir=tmp_path / "plots")
    png = tmp_path / "plots" / "x.turbulence.png"
    assert png in written and png.stat().st_size > 20_000


def _truth_and_predicted(image: Path, catalog: Path, out: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, object]:
    """Solve, write, read back as a FITS reader does: the error against the true displaced sky per axis (mas),
    the TPV alone's, the predicted error (CRDER and CSYER in quadrature, mas), and the result."""
    result = solve_file(image, catalog=read_catalog(catalog))
    assert result.ok, result.reason
    path = write_solution(result, out)
    truth = read_truth(image)
    ny, nx = result.shape
    i, j = (a.ravel() for a in np.meshgrid(np.linspace(0, nx - 1, 60), np.linspace(0, ny - 1, 40)))
    ra0, dec0 = result.solution.crval
    x0, y0 = gnomonic(*truth.pixel_to_world_values(i, j), ra0, dec0)

    def error(wcs: WCS) -> np.ndarray:
        x, y = gnomonic(*wcs.pixel_to_world_values(i, j), ra0, dec0)
        return np.sqrt(np.mean((np.degrees(np.column_stack([x - x0, y - y0])) * MAS_PER_DEG) ** 2, axis=0))

    with fits.open(path) as hdul, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*more axes.*")
        header = hdul[0].header
        measured = error(WCS(header, hdul))
        predicted = np.hypot(np.array([header["CRDER1"], header["CRDER2"]]), header["CSYER1"]) * MAS_PER_DEG
        tpv_only = error(WCS(fits.getheader(tpv_path(out, result.name)))) if "CPDIS1" in header else measured
    return measured, tpv_only, predicted, result


@pytest.mark.parametrize("turbulence_mas", [0.0, 15.0])
def test_simulated_exposure_predicted_error_within_1_5_of_the_truth(turbulence_mas: float, tmp_path: Path) -> None:
    """Our renderer, a quarter Condor frame, with and without 15 mas of atmosphere: the solution's predicted
    error (CRDER in its header) within a factor 1.5 of its error against the true, displaced sky, per axis;
    the correction, applied or not, never worse than the TPV alone."""
    name = f"turb{turbulence_mas:g}"
    spec = TurbulenceSpec(rms_mas=turbulence_mas, seed=4) if turbulence_mas else None
    field = simulate_field(tmp_path, name, ra_deg=150.1, dec_deg=25.0, shape=(1600, 2400), distortion_px=2.0,
                           density_per_deg2=3600.0 * 3, rng=np.random.default_rng(zlib.crc32(name.encode())),
                           turbulence=spec)
    measured, tpv_only, predicted, result = _truth_and_predicted(field.image_path, field.catalog_path,
                                                                 tmp_path / "out")
    assert np.all(measured <= tpv_only * 1.02), (measured, tpv_only)
    ratio = predicted / measured
    assert np.all((ratio > 1 / 1.5) & (ratio < 1.5)), (predicted, measured, result.turbulence.reason)
    assert result.timings["turbulence"] > 0 and result.turbulence.n_stars == result.n_matches


@pytest.mark.parametrize("turbulence_mas", [0.0, 15.0])
def test_galsim_exposure_predicted_error_within_1_5_of_the_truth(turbulence_mas: float, tmp_path: Path) -> None:
    """The same on the GalSim renderer (TAN-SIP truth, its own PSFs and noise): 3 stars/arcmin^2, 18' x 25'."""
    pytest.importorskip("galsim")
    from astrodask.simulate import Scene, render_scene

    spec = TurbulenceSpec(rms_mas=turbulence_mas, seed=7) if turbulence_mas else None
    scene = Scene(f"gs-turb{turbulence_mas:g}", seed=7, shape=(1200, 1800), ra_deg=200.0, dec_deg=35.0,
                  star_density_per_deg2=3 * 3600.0, turbulence=spec)
    files = render_scene(scene, tmp_path, rng=np.random.default_rng(7))
    measured, tpv_only, predicted, result = _truth_and_predicted(files.image, files.catalog, tmp_path / "out")
    assert np.all(measured <= tpv_only * 1.02), (measured, tpv_only)
    ratio = predicted / measured
    assert np.all((ratio > 1 / 1.5) & (ratio < 1.5)), (predicted, measured, result.turbulence.reason)


def test_pipeline_switch_off(tmp_path: Path) -> None:
    field = simulate_field(tmp_path, "off", ra_deg=150.1, dec_deg=25.0, shape=(800, 1200), distortion_px=1.0,
                           density_per_deg2=20000.0, rng=np.random.default_rng(3),
                           turbulence=TurbulenceSpec(rms_mas=15.0, seed=1))
    config = PipelineConfig.from_dict({"turbulence": {"enabled": False}})
    result = solve_file(field.image_path, catalog=read_catalog(field.catalog_path), config=config)
    assert result.ok and not result.turbulence.applied and "enabled = false" in result.turbulence.reason
    path = write_solution(result, tmp_path / "out")
    with fits.open(path) as hdul:
        assert len(hdul) == 1 and hdul[0].header["ASTCORR"] == "TPV" and "CPDIS1" not in hdul[0].header
    assert not tpv_path(tmp_path / "out", result.name).exists()


def _short_range(i, j, res, var):
    """The stage's short-range statistics on residuals: its 1.9' bins (21 to 20'; here 5 to 4.8', the same bins within
    3'), the raw pooled S / W, its error, and the short-range covariance with the fit's own part added back."""
    corr = measure_correlation(i, j, res, 1.0 / var, max_sep_px=2.5 * 40 / 21 * PX_PER_ARCMIN, bins=5)
    sig = correlation_significance(corr, radius_px=3 * PX_PER_ARCMIN)
    raw, se = sig.pooled_covariance_mas2()
    return raw, se, short_range_covariance(i, j, var, corr, sig, degree=3, shape=SHAPE)


def _weighted_cubic_residuals(i, j, observed, var):
    """``observed`` less its cubic fitted with weights 1 / var per axis (the TPV's fit)."""
    design = _cubic(i, j, SHAPE)
    out = np.empty_like(observed)
    for axis in range(2):
        w = 1.0 / np.sqrt(var[:, axis])
        coef, *_ = np.linalg.lstsq(design * w[:, None], observed[:, axis] * w, rcond=None)
        out[:, axis] = observed[:, axis] - design @ coef
    return out


def test_short_range_covariance_is_unbiased_where_raw_products_are_not() -> None:
    """The TPV fit takes part of the noise with it, so neighbours' residuals anti-correlate by about the fit's variance
    between them: without any field the significance's S / W averages below zero (0.5 stars/arcmin^2 of 10-100 mas:
    about -10 mas^2, the size of a 5 mas field's whole short-range covariance), and the short-range covariance, with the
    fit's part added back, averages zero within its error. Over 30 realisations of the noise."""
    rng = np.random.default_rng(12)
    ny, nx = SHAPE
    n = int(0.5 * ny * nx / PX_PER_ARCMIN**2)
    i, j = rng.uniform(0, nx - 1, n), rng.uniform(0, ny - 1, n)
    var = np.exp(rng.uniform(np.log(10.0), np.log(100.0), (n, 1))) ** 2 * np.ones(2)
    raw, short, se = [], [], []
    for _ in range(30):
        res = _weighted_cubic_residuals(i, j, rng.normal(0.0, np.sqrt(var)), var)
        r, s, c = _short_range(i, j, res, var)
        raw.append(r)
        se.append(s)
        short.append(c)
    error = float(np.std(short)) / math.sqrt(len(short))
    assert 0.5 < np.std(raw) / np.mean(se) < 1.5  # the standard error describes the scatter
    assert np.mean(raw) < -5 * error, (np.mean(raw), error)  # biased by the fit
    assert abs(np.mean(short)) < 3 * error, (np.mean(short), error)
    np.testing.assert_allclose(np.mean(np.array(short) - np.array(raw)), -np.mean(raw), rtol=0.35)


def test_short_range_covariance_holds_a_field_below_the_gate() -> None:
    """A 5 mas field seen through stars of 15-200 mas at 3 per arcmin^2 (the benchmark's failing cell: the gate cannot
    see it, sigma < 3): over 20 realisations of the noise the short-range covariance averages the field's own (what
    is left of it after the cubic, over the same pairs, without noise) within its error; that is a third of the
    field's variance (6 of 20 mas^2), and one realisation's error is 2-3 mas^2."""
    rng = np.random.default_rng(5)
    ny, nx = SHAPE
    n = int(3.0 * ny * nx / PX_PER_ARCMIN**2)
    i, j = rng.uniform(0, nx - 1, n), rng.uniform(0, ny - 1, n)
    var = np.exp(rng.uniform(np.log(15.0), np.log(200.0), (n, 1))) ** 2 * np.ones(2)
    field = _field(5.0, SHAPE, seed=6)(i, j)
    left = _weighted_cubic_residuals(i, j, field, var)  # the field a TPV leaves, at the stars
    truth_cov, _, _ = _short_range(i, j, left, var)  # raw S / W of the field alone: its mean covariance
    short = []
    for _ in range(20):
        res = _weighted_cubic_residuals(i, j, field + rng.normal(0.0, np.sqrt(var)), var)
        short.append(_short_range(i, j, res, var)[2])
    error = float(np.std(short)) / math.sqrt(len(short))
    assert truth_cov > 5 * error  # a field to find: 7.7 mas^2 here, 20 mas^2 of variance
    assert abs(np.mean(short) - truth_cov) < 3 * error, (np.mean(short), truth_cov, error)
    # the stage on the last realisation, weighted as here: below its gate, its significance over the same pairs
    result = correct_turbulence(i, j, res, var, var, shape=SHAPE, scale_arcsec=SCALE, degree=3,
                                jacobian_mas_per_px=_flat_jacobian, epoch_yr=2026.0, config=TurbulenceConfig(),
                                rng=np.random.default_rng(0))
    assert not result.applied and result.significance.sigma < 3.0, result.reason
    assert result.significance.pooled_covariance_mas2() == pytest.approx(_short_range(i, j, res, var)[:2], rel=1e-6)


def _bright_overestimated_case(rng, field_mas: float, n_per_arcmin2: float = 3.0):
    """Stars of 3-200 mas centroid errors whose white noise grows faster than the error model's variances (the
    bright ones, which make the fit, measured better than the one scale says: variance n^1.1 scaled to agree at the
    median), over a field of ``field_mas``; the weighted cubic (the TPV) fitted out. Residuals, the model's variances,
    and the field the cubic leaves at the stars."""
    ny, nx = SHAPE
    n = int(n_per_arcmin2 * ny * nx / PX_PER_ARCMIN**2)
    i, j = rng.uniform(0, nx - 1, n), rng.uniform(0, ny - 1, n)
    model = np.exp(rng.uniform(np.log(3.0), np.log(200.0), (n, 1))) ** 2 * np.ones(2)
    med = float(np.median(model))
    true_white = med * (model / med) ** 1.1
    field = _field(field_mas, SHAPE, seed=int(rng.integers(1 << 30)))(i, j) if field_mas else np.zeros((n, 2))
    res = _weighted_cubic_residuals(i, j, field + rng.normal(0.0, np.sqrt(true_white)), model)
    left = _weighted_cubic_residuals(i, j, field, model)
    return i, j, res, model, left


def test_residual_variance_measures_the_field_the_floor_misses() -> None:
    """Where the bright stars' variances are overestimated, the error model's floor (``like_fit`` on the same
    residuals) holds less than half of a 5 mas field; the residuals' variance model, with its exponent and each star's
    leverage, measures the field the TPV leaves within its scatter (over 12 realisations of field and noise), and
    about nothing without a field. (The floor holds about half of it here: 11 of 21 mas^2.)"""
    from astrodask.solve.errmodel import like_fit
    from astrodask.solve.turbulence import leverage, residual_variance

    rng = np.random.default_rng(21)
    found, truth, floors, empty = [], [], [], []
    for _ in range(12):
        for field_mas, into in ((5.0, found), (0.0, empty)):
            i, j, res, model, left = _bright_overestimated_case(rng, field_mas)
            lev = leverage(i, j, model, degree=3, shape=SHAPE)
            rv = residual_variance(res, model, lev, exponent_limit=TurbulenceConfig().noise_exponent_limit)
            into.append(rv.field_mas2)
            if field_mas:
                truth.append(float(np.mean(left**2)))
                cov = np.zeros((len(i), 2, 2))
                cov[:, 0, 0], cov[:, 1, 1] = model[:, 0], model[:, 1]
                floors.append(like_fit(res, cov).floor_mas ** 2)
                assert 0.05 < rv.exponent < 0.2, rv  # the exponent drawn: 0.1
    error = float(np.std(np.array(found) - truth)) / math.sqrt(len(found))
    assert abs(np.mean(found) - np.mean(truth)) < 3 * error, (np.mean(found), np.mean(truth), error)
    assert np.mean(floors) < 0.65 * np.mean(truth), (np.mean(floors), np.mean(truth))
    assert np.mean(empty) < 0.15 * np.mean(truth), np.mean(empty)


def test_fit_variance_sandwich_is_the_fit_s_scatter() -> None:
    """A fit weighted by variances that are not the stars' own: its scatter at the nodes over 400 realisations of the
    noise is the sandwich's (within 10 %), not the weights' own inverse (30 % away here)."""
    from astrodask.solve.turbulence import fit_variance_mas2

    rng = np.random.default_rng(8)
    ny, nx = SHAPE
    n = 600
    i, j = rng.uniform(0, nx - 1, n), rng.uniform(0, ny - 1, n)
    weights_var = np.exp(rng.uniform(np.log(10.0), np.log(100.0), (n, 1))) ** 2 * np.ones(2)
    true_var = 0.5 * weights_var + 400.0  # bright stars noisier, faint ones better than the weights say
    gi, gj = np.meshgrid(np.linspace(0, nx - 1, 7), np.linspace(0, ny - 1, 5))
    sandwich = fit_variance_mas2(i, j, weights_var, degree=3, shape=SHAPE, gi=gi, gj=gj, variance_mas2=true_var)
    naive = fit_variance_mas2(i, j, weights_var, degree=3, shape=SHAPE, gi=gi, gj=gj)
    design = _cubic(i, j, SHAPE)
    nodes = _cubic(gi.ravel(), gj.ravel(), SHAPE)
    w = 1.0 / np.sqrt(weights_var[:, 0])
    fits_at_nodes = []
    for _ in range(400):
        y = rng.normal(0.0, np.sqrt(true_var[:, 0]))
        coef, *_ = np.linalg.lstsq(design * w[:, None], y * w, rcond=None)
        fits_at_nodes.append(nodes @ coef)
    scatter = np.var(np.array(fits_at_nodes), axis=0)
    assert np.mean(sandwich[..., 0]) == pytest.approx(np.mean(scatter), rel=0.1)
    assert abs(np.mean(naive[..., 0]) / np.mean(scatter) - 1) > 0.3


def test_predicted_error_holds_a_field_below_the_gate() -> None:
    """A 5 mas field at 3 stars/arcmin^2 of 3-200 mas, bright stars overestimated, with no GP (the gate set out of
    reach: the benchmark's once-failing cell was below it): the predicted error's field part within 1.5 of the field
    the cubic leaves, in at least 5 of 6 realisations; without a field it stays small."""
    rng = np.random.default_rng(33)
    ny, nx = SHAPE
    gi, gj = np.meshgrid(np.linspace(0, nx - 1, 60), np.linspace(0, ny - 1, 40))
    within, empty = 0, []
    for _ in range(6):
        for field_mas in (5.0, 0.0):
            i, j, res, model, left = _bright_overestimated_case(rng, field_mas)
            result = correct_turbulence(i, j, res, model, model, shape=SHAPE, scale_arcsec=SCALE, degree=3,
                                        jacobian_mas_per_px=_flat_jacobian, epoch_yr=2026.0,
                                        config=TurbulenceConfig(corr_min_sigma=1000.0), rng=np.random.default_rng(0))
            assert not result.applied
            field = np.asarray(result.predicted_tpv.field_mas)
            if field_mas:
                assert result.noise is not None and result.noise.field_mas2 > result.noise.field_se_mas2
                truth = math.sqrt(float(np.mean(left**2)))  # the left field at the stars: its rms over the frame
                within += bool(np.all((field / truth > 1 / 1.5) & (field / truth < 1.5)))
            else:
                empty.append(float(np.mean(field**2)))
    assert within >= 5, within
    assert np.mean(empty) < 5.0, empty  # mas^2 per axis, against the 5 mas field's ~20


def test_a_white_excess_is_not_taken_for_a_field() -> None:
    """6 stars/arcmin^2 of 3-200 mas, no GP (the gate set out of reach): a white excess of 25 mas^2 on every star
    (a reference catalog's or the centroids' own floor) raises the residuals' F as a 5 mas field does, but does not
    correlate, so the correlation's bound keeps it out of the predicted error's field part (below 2 mas^2, where F
    is 20-30); a 5 mas field stays whole (its F within 1.5 of the field the cubic leaves, under the bound).
    Three realisations of each."""
    rng = np.random.default_rng(4)
    ny, nx = SHAPE
    for _ in range(3):
        for white, field_mas in ((25.0, 0.0), (0.0, 5.0)):
            n = int(6 * ny * nx / PX_PER_ARCMIN**2)
            i, j = rng.uniform(0, nx - 1, n), rng.uniform(0, ny - 1, n)
            model = np.exp(rng.uniform(np.log(3.0), np.log(200.0), (n, 1))) ** 2 * np.ones(2)
            field = _field(field_mas, SHAPE, seed=int(rng.integers(1 << 30)))(i, j) if field_mas else np.zeros((n, 2))
            res = _weighted_cubic_residuals(i, j, field + rng.normal(0.0, np.sqrt(model + white)), model)
            result = correct_turbulence(i, j, res, model, model, shape=SHAPE, scale_arcsec=SCALE, degree=3,
                                        jacobian_mas_per_px=_flat_jacobian, epoch_yr=2026.0,
                                        config=TurbulenceConfig(corr_min_sigma=1000.0), rng=np.random.default_rng(0))
            assert not result.applied and result.noise is not None
            predicted_field = np.square(result.predicted_tpv.field_mas)
            if white:
                assert 15.0 < result.noise.field_mas2 < 35.0, result.noise
                assert result.field_bound_mas2 < 2.0 and np.all(predicted_field < 2.0), (result.field_bound_mas2,
                                                                                         predicted_field)
            else:
                left = float(np.mean(_weighted_cubic_residuals(i, j, field, model) ** 2))
                assert result.field_bound_mas2 > result.noise.field_mas2
                assert np.all((predicted_field / left > 1 / 1.5**2) & (predicted_field / left < 1.5**2)), (
                    predicted_field, left)


def test_bright_half_scale_is_not_taken_for_a_field() -> None:
    """The white noise of the better measured half of the stars 0.6 of what the error model says in variance, the
    other half's as it says, no field (a shape one scale and one exponent do not follow: with them F stood above its
    standard error, as a field, in 5 of these 8 realisations): the model finds both halves' scales at their medians
    (within 10 %) and F above its standard error in at most 2 of 8; with a 5 mas field on top, F comes back (its
    mean within 3 standard errors of the left field's variance)."""
    from astrodask.solve.turbulence import leverage, residual_variance

    rng = np.random.default_rng(17)
    ny, nx = SHAPE
    n = int(3 * ny * nx / PX_PER_ARCMIN**2)
    taken, found, truth = 0, [], []
    for _ in range(8):
        for field_mas in (0.0, 5.0):
            i, j = rng.uniform(0, nx - 1, n), rng.uniform(0, ny - 1, n)
            model = np.exp(rng.uniform(np.log(3.0), np.log(200.0), (n, 1))) ** 2 * np.ones(2)
            bright = model[:, 0] < np.median(model[:, 0])
            white = model * np.where(bright, 0.6, 1.0)[:, None]
            field = _field(field_mas, SHAPE, seed=int(rng.integers(1 << 30)))(i, j) if field_mas else np.zeros((n, 2))
            res = _weighted_cubic_residuals(i, j, field + rng.normal(0.0, np.sqrt(white)), model)
            rv = residual_variance(res, model, leverage(i, j, model, degree=3, shape=SHAPE),
                                   exponent_limit=TurbulenceConfig().noise_exponent_limit)
            if field_mas:
                found.append(rv.field_mas2)
                truth.append(float(np.mean(_weighted_cubic_residuals(i, j, field, model) ** 2)))
            else:
                taken += rv.field_mas2 > rv.field_se_mas2
                at_medians = [rv.scales[k] ** 2 * (np.median(model[half, 0]) / rv.median_noise_mas2) ** rv.exponent
                              for k, half in enumerate((bright, ~bright))]  # each half's white over the model's
                assert at_medians == pytest.approx([0.6, 1.0], rel=0.1), at_medians
    assert taken <= 2, taken
    error = float(np.std(np.array(found) - truth)) / math.sqrt(len(found))
    assert abs(np.mean(found) - np.mean(truth)) < 3 * error, (np.mean(found), np.mean(truth), error)


def _declined_result(tmp_path: Path, name: str, jacobian=_flat_jacobian):
    """A solved result (an undistorted TPV) whose turbulence stage ran without a GP (the gate out of reach) on a
    5 mas field over stars of 3-200 mas, the bright ones overestimated; and the centroid variances it was given."""
    i, j, res, model, _ = _bright_overestimated_case(np.random.default_rng(9), 5.0)
    pv1, pv2 = np.zeros(40), np.zeros(40)
    pv1[1] = pv2[1] = 1.0
    scale_deg = SCALE / 3600.0
    solution = TPVSolution(crpix=((SHAPE[1] - 1) / 2, (SHAPE[0] - 1) / 2), crval=(150.1, 25.0),
                           cd=np.array([[-scale_deg, 0.0], [0.0, scale_deg]]), pv1=pv1, pv2=pv2, degree=3)
    turb = correct_turbulence(i, j, res, model, model, shape=SHAPE, scale_arcsec=SCALE, degree=3,
                              jacobian_mas_per_px=jacobian, epoch_yr=2026.0,
                              config=TurbulenceConfig(corr_min_sigma=1000.0), rng=np.random.default_rng(0))
    assert not turb.applied and turb.noise is not None
    return ExposureResult(file=str(tmp_path / f"{name}.fits"), name=name, status=SOLVED, solution=solution,
                          shape=SHAPE, counts={"matches": len(i)}, rms_arcsec=(0.1, 0.1), turbulence=turb), model


def test_plot_of_a_declined_stage_shows_the_residual_model(tmp_path: Path) -> None:
    """No GP (the gate out of reach), a 5 mas field: <name>.turbulence.png is drawn with its residual-variance and
    error-parts panels from the result's own figures (the centroid variances it carries, F and its bound)."""
    from astrodask.io.output import plot_turbulence

    result, model = _declined_result(tmp_path, "y", jacobian=_east_left_jacobian)
    np.testing.assert_array_equal(result.turbulence.centroid_mas2, model)
    png = plot_turbulence(result, tmp_path / "plots")
    assert png == tmp_path / "plots" / "y.turbulence.png" and png.stat().st_size > 20_000


def test_header_and_summary_carry_the_residual_model(tmp_path: Path) -> None:
    """Where the residual model's F stands for the field, the solution's header and the summary row carry F, its
    error and the correlation's bound, and the predicted field part in CRDER is the smaller of F and the bound (or
    the kernel's variance, where larger)."""
    from astrodask.io.output import solution_header

    result, _ = _declined_result(tmp_path, "z")
    turb = result.turbulence
    header = solution_header(result)
    assert header["TURBF"] == pytest.approx(turb.noise.field_mas2, abs=1e-3)
    assert header["TURBFSE"] == pytest.approx(turb.noise.field_se_mas2, abs=1e-3)
    assert header["TURBFB"] == pytest.approx(turb.field_bound_mas2, abs=1e-3)
    row = summary_row(result)
    assert row["turb_field_mas2"] == turb.noise.field_mas2 and row["turb_field_bound_mas2"] == turb.field_bound_mas2
    field = min(turb.noise.field_mas2, turb.field_bound_mas2)
    kernel = turb.kernel.axis_variance_mas2() if turb.kernel is not None else np.zeros(2)  # the pixel frame: the sky's
    np.testing.assert_allclose(np.square(turb.predicted_tpv.field_mas), np.maximum(kernel, field), rtol=1e-9)
