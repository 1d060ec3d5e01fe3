"""get_image_ij on images with exactly known truth: pixel-integrated Gaussian stars."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import erf
from scipy.spatial import cKDTree

from astrodask.config import DetectConfig, DetectPassConfig
from astrodask.solve.detect import get_image_ij, get_image_ij_passes
from astrodask.errors import AstrodaskWarning, ImageError, NoSourcesError
from astrodask.types import SOURCE_COLUMNS, SourceFlag

SIGMA_PX = 1.1
SKY = 500.0
RMS = 8.0


def render(shape: tuple[int, int], x: np.ndarray, y: np.ndarray, flux: np.ndarray, *, rng: np.random.Generator,
           noise: bool = True, saturation: float | None = None) -> np.ndarray:
    """Sky + Gaussian stars integrated exactly over each pixel (0-based centres), + Gaussian noise."""
    ny, nx = shape
    image = np.full(shape, SKY, dtype=np.float64)
    half = int(np.ceil(6 * SIGMA_PX))
    scale = np.sqrt(2.0) * SIGMA_PX
    for xi, yi, fi in zip(x, y, flux):
        i0, j0 = int(round(xi)), int(round(yi))
        cols = np.arange(max(i0 - half, 0), min(i0 + half + 1, nx))
        rows = np.arange(max(j0 - half, 0), min(j0 + half + 1, ny))
        px = 0.5 * (erf((cols + 0.5 - xi) / scale) - erf((cols - 0.5 - xi) / scale))
        py = 0.5 * (erf((rows + 0.5 - yi) / scale) - erf((rows - 0.5 - yi) / scale))
        image[np.ix_(rows, cols)] += fi * np.outer(py, px)
    if noise:
        image += rng.normal(0.0, RMS, shape)
    if saturation is not None:
        image = np.minimum(image, saturation)
    return image


@pytest.fixture(scope="module")
def field() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(42)
    shape = (400, 600)
    # isolated stars on a jittered grid: at least 30 px apart
    gx, gy = np.meshgrid(np.arange(30, 580, 40.0), np.arange(30, 380, 40.0))
    x = gx.ravel() + rng.uniform(-5, 5, gx.size)
    y = gy.ravel() + rng.uniform(-5, 5, gy.size)
    flux = 10 ** rng.uniform(3.3, 5.0, x.size)
    return render(shape, x, y, flux, rng=rng), x, y, flux


def test_windowed_centroids_land_on_the_truth(field) -> None:
    image, x, y, flux = field
    table = get_image_ij(image)
    assert set(SOURCE_COLUMNS) <= set(table.colnames)
    dist, idx = cKDTree(np.c_[x, y]).query(np.c_[table["i"], table["j"]])
    assert np.all(dist < 0.5)  # every detection is a real star
    assert len(table) == len(x)  # every star is found
    di, dj = table["i"] - x[idx], table["j"] - y[idx]
    assert abs(np.mean(di)) < 0.01 and abs(np.mean(dj)) < 0.01
    bright = flux[idx] > 3e4
    assert np.sqrt(np.mean(di[bright] ** 2 + dj[bright] ** 2)) < 0.02
    # the centroid covariance is positive definite and shrinks with flux
    assert np.all(table["var_i"] > 0) and np.all(table["var_j"] > 0)
    assert np.all(table["var_i"] * table["var_j"] > table["var_ij"] ** 2)
    assert np.median(table["var_i"][bright]) < np.median(table["var_i"][~bright])
    # brightest first, FWHM measured close to the truth (2.355 sigma)
    assert np.all(np.diff(table["flux_adu"]) <= 0)
    assert table.meta["winpos_fwhm_px"] == pytest.approx(2.3548 * SIGMA_PX, rel=0.1)
    assert table.meta["background_adu"] == pytest.approx(SKY, abs=2)
    assert table.meta["background_rms_adu"] == pytest.approx(RMS, rel=0.1)


def test_flux_is_measured(field) -> None:
    image, x, y, flux = field
    table = get_image_ij(image)
    _, idx = cKDTree(np.c_[x, y]).query(np.c_[table["i"], table["j"]])
    ratio = table["flux_adu"] / flux[idx]
    bright = flux[idx] > 3e4
    # isophotal flux misses the wings, by a few per cent for bright stars
    assert 0.85 < np.median(ratio[bright]) <= 1.01


def test_pixel_convention_is_zero_based_i_along_columns() -> None:
    rng = np.random.default_rng(1)
    image = render((50, 80), np.array([10.0]), np.array([30.0]), np.array([2e5]), rng=rng, noise=False)
    image += rng.normal(0, 1.0, image.shape)
    table = get_image_ij(image)
    assert len(table) == 1
    assert table["i"][0] == pytest.approx(10.0, abs=0.01) and table["j"][0] == pytest.approx(30.0, abs=0.01)


def test_big_endian_input_is_accepted_and_left_untouched(field) -> None:
    image, *_ = field
    big = image.astype(">f4")
    before = big.copy()
    table = get_image_ij(big)
    np.testing.assert_array_equal(big, before)
    native = get_image_ij(image.astype(np.float32))
    np.testing.assert_allclose(table["i"], native["i"])


def test_flags_saturated_edge_blended() -> None:
    rng = np.random.default_rng(7)
    x = np.array([100.0, 2.0, 200.0, 206.0, 300.0])
    y = np.array([50.0, 60.0, 60.0, 60.0, 30.0])
    flux = np.array([3e6, 5e4, 8e4, 6e4, 4e4])
    image = render((120, 400), x, y, flux, rng=rng, saturation=60000.0)
    table = get_image_ij(image, saturation_adu=60000.0)
    tree = cKDTree(np.c_[table["i"], table["j"]])

    def flag_at(xi: float, yi: float) -> int:
        dist, k = tree.query([xi, yi])
        assert dist < 1.5, f"no source near ({xi}, {yi})"
        return int(table["flag"][k])

    assert flag_at(100, 50) & SourceFlag.SATURATED
    assert flag_at(2, 60) & SourceFlag.EDGE
    assert flag_at(200, 60) & SourceFlag.BLENDED and flag_at(206.0, 60) & SourceFlag.BLENDED
    assert flag_at(300, 30) == SourceFlag.NONE
    assert table.meta["n_saturated"] >= 1 and table.meta["n_edge"] >= 1


def test_depth_pass_reaches_fainter_sources() -> None:
    rng = np.random.default_rng(11)
    gx, gy = np.meshgrid(np.arange(20, 480, 25.0), np.arange(20, 280, 25.0))
    x, y = gx.ravel(), gy.ravel()
    flux = np.geomspace(150, 3e4, x.size)
    image = render((300, 500), x, y, flux, rng=rng)
    first = get_image_ij(image)
    deeper = get_image_ij(image, depth=True)
    assert len(deeper) > len(first) + 10
    assert deeper.meta["pass"] == "depth" and first.meta["pass"] == "first"
    strict = get_image_ij(image, config=DetectConfig(first=DetectPassConfig(thresh_sigma=50.0)))
    assert len(strict) < len(first)


def _grid_image(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    gx, gy = np.meshgrid(np.arange(20, 480, 25.0), np.arange(20, 280, 25.0))
    flux = np.geomspace(150, 3e4, gx.size)
    image = render((300, 500), gx.ravel(), gy.ravel(), flux, rng=rng)
    image[5:9, 40:44] = np.nan
    return image, gx.ravel(), gy.ravel(), flux


def test_two_extractions_on_one_background_equal_two_separate_passes() -> None:
    """Detecting once (one copy, one background) changes nothing: the tables are the same to the bit."""
    image, *_ = _grid_image(12)
    config = DetectConfig(first_from_depth=False)
    first, deep = get_image_ij_passes(image, gain=1.3, config=config)
    for shared, alone in ((first, get_image_ij(image, gain=1.3, config=config)),
                          (deep, get_image_ij(image, gain=1.3, depth=True, config=config))):
        assert shared.colnames == alone.colnames and len(shared) == len(alone) > 0
        for name in shared.colnames:
            np.testing.assert_array_equal(np.asarray(shared[name]), np.asarray(alone[name]), err_msg=name)
        assert shared.meta == alone.meta


def test_first_pass_from_the_depth_extraction() -> None:
    """One extraction (detect.first_from_depth, the default): the depth pass is the depth pass of its own, to the
    bit; the first pass is a part of its rows, unchanged, holding the sources the first pass's own extraction finds."""
    image, x, y, flux = _grid_image(13)
    one = DetectConfig(first_from_depth=True)
    assert DetectConfig().first_from_depth  # the default
    first, deep = get_image_ij_passes(image, gain=1.3, config=one)
    alone = get_image_ij(image, gain=1.3, depth=True, config=one)
    assert len(deep) == len(alone) > len(first) > 0
    for name in deep.colnames:
        np.testing.assert_array_equal(np.asarray(deep[name]), np.asarray(alone[name]), err_msg=name)
    rows = {(a, b): k for k, (a, b) in enumerate(zip(deep["i"], deep["j"], strict=True))}
    picked = [rows[(a, b)] for a, b in zip(first["i"], first["j"], strict=True)]
    assert picked == sorted(picked)  # brightest first, as in the depth pass
    for name in first.colnames:
        np.testing.assert_array_equal(np.asarray(first[name]), np.asarray(deep[name])[picked], err_msg=name)
    assert first.meta["pass"] == "first" and first.meta["first_from_depth"]
    assert first.meta["n_sources"] == len(first) and deep.meta["n_sources"] == len(deep)
    # the first pass's own extraction finds the same sources, no more, no fewer
    own = get_image_ij(image, gain=1.3, config=DetectConfig(first_from_depth=False))
    assert len(own) == len(first)
    d = np.hypot(own["i"][:, None] - first["i"][None, :], own["j"][:, None] - first["j"][None, :]).min(axis=1)
    assert np.all(d < 0.5), d.max()
    # and the truth: every rendered star bright enough for the first pass is there, none spurious
    d_true = np.hypot(first["i"][:, None] - x[None, :], first["j"][:, None] - y[None, :]).min(axis=1)
    assert np.all(d_true < 1.0)
    # a stricter first pass keeps fewer
    strict, _ = get_image_ij_passes(image, gain=1.3, config=DetectConfig(first_from_depth=True,
                                                                        first=DetectPassConfig(thresh_sigma=20.0)))
    assert 0 < len(strict) < len(first)


def _crowd_image(seed: int, n: int = 1400, shape: tuple[int, int] = (700, 900)) -> np.ndarray:
    """A crowded field of stars down to the noise: blends at every separation, sources near both thresholds."""
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(3, shape[1] - 3, n), rng.uniform(3, shape[0] - 3, n)
    flux = 10.0 ** rng.uniform(1.9, 4.5, n)  # peak 2 .. 800 sigma
    return render(shape, x, y, flux, rng=rng)


@pytest.mark.parametrize("seed", [21, 22])
def test_first_pass_from_the_depth_extraction_is_the_first_pass_extraction(seed: int) -> None:
    """On a crowded field (isolated sources, blends, sources at the threshold), the first pass taken from the depth
    extraction is the first pass's own extraction: without SEP's cleaning, the same sources, blends included, to the
    source; with it (the default), every source of its own and under 2 % more (faint sources that the first pass's
    cleaning takes for the wings of a bright neighbour). The old selection by the filtered peak kept far more."""
    import dataclasses

    from astrodask.solve.detect import _extract, _extract_passes, subtract_background

    background = subtract_background(_crowd_image(seed), config=DetectConfig())
    kwargs = {"back_rms": background.rms_adu, "gain": 1.0, "mask": None}
    for clean in (False, True):
        config = DetectConfig(first=dataclasses.replace(DetectConfig().first, clean=clean))
        own = _extract(background.image, config.first, **kwargs)
        objects, in_first = _extract_passes(background.image, config, **kwargs)
        np.testing.assert_array_equal(objects, _extract(background.image, config.depth, **kwargs))
        taken = objects[in_first]
        assert len(own) > 500 and np.count_nonzero(own["flag"] & 1) > 50  # a real test of the blends
        # each source of the first pass's own extraction has its depth-pass source under its filtered peak ...
        d_own, _ = cKDTree(np.c_[taken["x"], taken["y"]]).query(np.c_[own["xcpeak"], own["ycpeak"]])
        d_taken, _ = cKDTree(np.c_[own["x"], own["y"]]).query(np.c_[taken["xcpeak"], taken["ycpeak"]])
        if not clean:  # ... and the lists are the same
            assert len(taken) == len(own) and np.all(d_own < 3.0) and np.all(d_taken < 3.0)
        else:
            assert np.mean(d_own < 3.0) > 0.995 and len(own) <= len(taken) < 1.02 * len(own)
            assert np.all(taken["flag"][d_taken >= 3.0] & 1 == 0)  # the extra sources are not blends
    # the old selection (filtered peak above the scaled threshold, npix at the depth threshold) kept more
    old = (objects["cpeak"] >= 2.0 * objects["thresh"]) & (objects["npix"] >= config.first.minarea)
    assert old.sum() > 1.05 * len(own) and old.sum() > len(taken) + 0.03 * len(own)


def test_filtered_values_and_threshold_are_seps() -> None:
    """The first pass's pixels, computed on the depth extraction's pixels alone (filtered_at), are SEP's: SEP's own
    segmentation map of a first pass without deblending, cleaning or minimum area, to the pixel, edges included."""
    import sep

    from astrodask.solve.detect import SEP_PIXSTACK, _sep_kernel, filtered_at, gaussian_kernel, subtract_background

    config = DetectConfig()
    background = subtract_background(_crowd_image(23, n=500, shape=(300, 400)), config=config)
    image, rms = background.image, background.rms_adu
    sep.set_extract_pixstack(SEP_PIXSTACK)
    _, segmap = sep.extract(image, config.first.thresh_sigma, err=rms, minarea=1, deblend_cont=1.0, clean=False,
                            filter_kernel=gaussian_kernel(config.first.filter_fwhm_px), segmentation_map=True)
    everywhere = np.arange(image.size)
    above = filtered_at(image, everywhere, _sep_kernel(config.first.filter_fwhm_px)) \
        > np.float32(np.float32(config.first.thresh_sigma) * np.float32(rms))
    assert 1000 < above.sum() and np.array_equal(above, segmap.ravel() > 0)
    # and it is the convolution (zero outside the image) of the normalised kernel
    from scipy import ndimage

    kernel = _sep_kernel(2.5)
    expect = ndimage.correlate(image.astype(np.float64), kernel.astype(np.float64), mode="constant")
    np.testing.assert_allclose(filtered_at(image, everywhere, kernel), expect.ravel(), atol=1e-3 * rms)


def test_pixel_groups_are_the_8_connected_components() -> None:
    from scipy import ndimage

    from astrodask.solve.detect import pixel_groups

    mask = np.random.default_rng(24).random((60, 80)) < 0.3
    mask[:, 0] = mask[:, -1] = True  # a group must not wrap from one row's end to the next row's start
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    pixels = np.flatnonzero(mask)
    groups = pixel_groups(pixels, mask.shape[1])
    truth = labels.ravel()[pixels]
    assert groups.max() + 1 == n
    # the same partition: one group per label and one label per group
    assert len(set(zip(groups.tolist(), truth.tolist()))) == n


def test_extraction_in_strips_is_the_whole_images() -> None:
    """SEP in strips of rows (with their overlap) finds the objects of one whole-image extraction, once each,
    in the image's rows, and every measured column follows."""
    rng = np.random.default_rng(14)
    n = 900
    x, y = rng.uniform(5, 395, n), rng.uniform(5, 1495, n)
    image = render((1500, 400), x, y, rng.uniform(300, 3e4, n), rng=rng)
    image[700:705, 100:110] = np.nan  # a masked patch in a strip's overlap
    whole = DetectConfig(depth=DetectPassConfig(thresh_sigma=1.5, minarea=3, deblend_cont=0.001, strip_px=0))
    strips = DetectConfig(depth=DetectPassConfig(thresh_sigma=1.5, minarea=3, deblend_cont=0.001, strip_px=200))
    one = get_image_ij(image, config=whole, depth=True)
    cut = get_image_ij(image, config=strips, depth=True)
    assert len(one) > 500
    d = np.hypot(one["i"][:, None] - cut["i"][None, :], one["j"][:, None] - cut["j"][None, :])
    nearest = d.argmin(axis=1)
    same = d[np.arange(len(one)), nearest] < 1e-3  # SEP's centroids in a strip's rows differ by rounding
    assert same.mean() > 0.99 and abs(len(cut) - len(one)) <= 0.01 * len(one)
    assert len(set(nearest[same])) == same.sum()  # no object twice
    for name in ("var_i", "var_j", "peak_adu"):
        np.testing.assert_allclose(np.asarray(cut[name])[nearest[same]], np.asarray(one[name])[same], rtol=1e-3,
                                   err_msg=name)
    # SEP's cleaning (which merges a spurious detection into its neighbour's flux) buffers the objects it
    # has seen, so the isophotal fluxes of some objects differ, not their centroids
    flux_ratio = np.asarray(cut["flux_adu"])[nearest[same]] / np.asarray(one["flux_adu"])[same]
    assert np.median(np.abs(flux_ratio - 1)) < 1e-3 and np.percentile(np.abs(flux_ratio - 1), 95) < 0.1
    # the true stars are found in every strip
    found = np.hypot(cut["i"][:, None] - x[None, :], cut["j"][:, None] - y[None, :]).min(axis=0) < 1.0
    rows = np.digitize(y, np.arange(0, 1500, 200))
    assert all(found[rows == k].mean() > 0.9 for k in np.unique(rows))


def test_integer_pixels_detect_as_their_float32_values() -> None:
    """An exposure's integer pixels (kept as read) give the tables of the same pixels in float32, to the bit,
    and the overexposure check counts them alike."""
    from astrodask.solve.detect import check_pixels

    image, *_ = _grid_image(15)
    counts = np.clip(np.rint(np.nan_to_num(image, nan=SKY)), 0, 65535).astype(np.uint16)
    for a, b in zip(get_image_ij_passes(counts, gain=1.3), get_image_ij_passes(counts.astype(np.float32), gain=1.3),
                    strict=True):
        assert len(a) == len(b) > 0
        for name in a.colnames:
            np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]), err_msg=name)
    config = DetectConfig()
    counts[:200] = 65535  # two thirds of the rows at saturation
    for data in (counts, counts.astype(np.float32)):
        with pytest.raises(NoSourcesError, match="67% of the pixels are at saturation"):
            check_pixels(data, saturation_adu=None, config=config, where="x.fits")


def test_nan_pixels_are_masked() -> None:
    rng = np.random.default_rng(5)
    image = render((100, 100), np.array([50.0]), np.array([50.0]), np.array([1e5]), rng=rng)
    image[:, :10] = np.nan
    table = get_image_ij(image)
    assert len(table) == 1 and table["i"][0] == pytest.approx(50.0, abs=0.05)


def test_empty_image_warns_and_bad_input_raises() -> None:
    rng = np.random.default_rng(2)
    with pytest.warns(AstrodaskWarning, match="no sources"):
        table = get_image_ij(rng.normal(100, 5, (100, 100)))
    assert len(table) == 0 and set(SOURCE_COLUMNS) <= set(table.colnames)
    with pytest.raises(ImageError, match="2-D image"):
        get_image_ij(np.zeros((3, 10, 10)))
    with pytest.raises(ImageError, match="every pixel"):
        get_image_ij(np.full((10, 10), np.nan))


def test_artefacts_are_flagged_and_the_fwhm_comes_from_stars() -> None:
    """Cosmic rays, a hot column and a galaxy beside Gaussian stars of known FWHM."""
    rng = np.random.default_rng(11)
    shape = (500, 700)
    gx, gy = np.meshgrid(np.arange(35, 680, 45.0), np.arange(35, 480, 45.0))
    x = gx.ravel() + rng.uniform(-4, 4, gx.size)
    y = gy.ravel() + rng.uniform(-4, 4, gy.size)
    flux = 10 ** rng.uniform(3.5, 4.8, x.size)
    image = render(shape, x, y, flux, rng=rng)
    # cosmic rays: single pixels and 2-pixel hits, bright, never blurred by the seeing, between the stars
    hits = np.column_stack([rng.integers(10, shape[1] - 10, 120), rng.integers(10, shape[0] - 10, 120)])
    far = cKDTree(np.column_stack([x, y])).query(hits)[0] > 12
    hits = hits[far][:40]
    for k, (hi, hj) in enumerate(hits):
        image[hj, hi] += 3000.0
        if k % 2:
            image[hj, hi + 1] += 2000.0
    # a hot column between two star columns, and a galaxy (a wide Gaussian)
    column = int(round(gx[0, 3] + 22))
    image[60:440, column] += 400.0
    galaxy = render(shape, np.array([gx[0, 7] + 22.0]), np.array([gy[4, 0] + 22.0]), np.array([60000.0]),
                    rng=rng, noise=False) - SKY
    image += _blur(galaxy, 4.0)
    table = get_image_ij(image)
    flags = np.asarray(table["flag"])
    tree_stars = cKDTree(np.column_stack([x, y]))
    d_star, _ = tree_stars.query(np.column_stack([table["i"], table["j"]]))
    stars = d_star < 1.0
    # every star is found and none is called an artefact
    assert stars.sum() == len(x)
    assert not np.any(flags[stars] & (SourceFlag.SHARP | SourceFlag.ELONGATED | SourceFlag.EXTENDED))
    # the cosmic rays are SHARP, the column ELONGATED, the galaxy EXTENDED
    d_hit, _ = cKDTree(hits.astype(float)).query(np.column_stack([table["i"], table["j"]]))
    on_hits = (d_hit < 1.5) & ~stars
    assert on_hits.sum() >= 0.9 * len(hits)
    assert np.all(flags[on_hits] & SourceFlag.SHARP)
    on_column = (np.abs(np.asarray(table["i"]) - column) < 2) & ~stars
    assert on_column.any() and np.all(flags[on_column] & SourceFlag.ELONGATED)
    big = np.hypot(np.asarray(table["i"]) - gx[0, 7] - 22, np.asarray(table["j"]) - gy[4, 0] - 22) < 3
    assert big.sum() == 1 and flags[big][0] & SourceFlag.EXTENDED
    # the FWHM of the windowed centroids is the stars' (Gaussian: twice the half-flux radius, of the star
    # integrated over its pixels), not the hits'
    assert table.meta["winpos_fwhm_px"] == pytest.approx(2.3548 * np.sqrt(SIGMA_PX**2 + 1 / 12), rel=0.07)
    assert table.meta["n_sharp"] == int(np.count_nonzero(flags & SourceFlag.SHARP))
    assert np.all(np.isfinite(np.asarray(table["r50_px"])[stars]))


def _blur(image: np.ndarray, sigma_px: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(image, sigma_px)


def test_a_saturation_level_missing_from_the_header_is_found_where_peaks_pile_up() -> None:
    rng = np.random.default_rng(12)
    shape = (300, 400)
    gx, gy = np.meshgrid(np.arange(30, 380, 40.0), np.arange(30, 280, 40.0))
    x, y = gx.ravel() + 0.3, gy.ravel() - 0.2
    flux = np.where(np.arange(x.size) % 4 == 0, 4e6, 2e4)  # a quarter of the stars clip at the plate's 30000
    image = render(shape, x, y, flux, rng=rng, saturation=30000.0)
    table = get_image_ij(image)  # the header would say 65535 (the default)
    assert table.meta["saturation_adu"] == pytest.approx(30000.0, rel=0.01)
    d, k = cKDTree(np.column_stack([x, y])).query(np.column_stack([table["i"], table["j"]]))
    assert np.all(d < 1.0) and len(table) == len(x)
    bright = flux[k] > 1e6
    assert np.all(np.asarray(table["flag"])[bright] & SourceFlag.SATURATED)
    assert not np.any(np.asarray(table["flag"])[~bright] & SourceFlag.SATURATED)
