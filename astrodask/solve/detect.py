"""Source detection (``get_image_ij``): SEP background, extraction and windowed centroids.

Each source gets a windowed centroid (``sep.winpos``, the SExtractor XWIN/YWIN
estimator), the covariance of its centroid (var_i, var_j, var_ij, from SEP's
per-pixel noise model: background rms plus Poisson noise through the gain), its
flux, and flags for saturated, blended and edge sources. Two passes use the same
code with different settings: the first pass for region matching, and the
relaxed depth pass for the depth match.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import sep
from astropy.table import Table

from astrodask.config import DetectConfig, DetectPassConfig
from astrodask.errors import AstrodaskWarning, ImageError, NoSourcesError
from astrodask.types import SOURCE_COLUMNS, Exposure, ExposureInfo, SourceFlag

log = logging.getLogger(__name__)

#: An extraction strip: (first row kept, row after the last kept, first row extracted, row after the
#: last extracted) (:func:`_strips`).
Strip = tuple[int, int, int, int]


class WorkMap(Protocol):
    """Maps a function over independent pieces of one image's detection (the extraction's strips,
    runs of sources to measure): ``work_map(fn, pieces)`` is ``[fn(p) for p in pieces]``, computed in
    this process or shared with others (:class:`astrodask.run.forked.ForkedMap`)."""

    processes: int  #: the processes that share the pieces

    def __call__(self, fn: Callable[[Any], Any], pieces: Sequence[Any], /) -> list[Any]: ...


#: SEP's pixel stack to start with; SEP allocates it on every call, so it is kept
#: small and grown (x4) only when an extraction overflows it.
SEP_PIXSTACK = 1_000_000
#: Pixels added to an image's size for its pixel stack when that is smaller than SEP_PIXSTACK.
SEP_PIXSTACK_SPARE = 16
#: Largest pixel stack tried before giving up.
SEP_PIXSTACK_MAX = 256_000_000
#: SEP's limit on sub-objects while deblending one object.
SEP_SUB_OBJECT_LIMIT = 4096
#: Gaussian sigma per FWHM.
FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
#: Half-size of the matched-filter kernel, in units of its FWHM.
KERNEL_HALF_WIDTH_FWHM = 1.5
#: Sources used to estimate the image FWHM for the windowed centroids.
FWHM_SAMPLE = 500
#: Sources of fewer pixels are left out of the FWHM sample, unless too few remain (then all are used).
FWHM_MIN_NPIX = 5
#: The brightest fraction skipped before the FWHM sample (often saturated).
FWHM_SKIP_FRACTION = 0.05
#: Aperture of the FWHM's half-flux radius: this many semi-major axes, at least FWHM_MIN_APERTURE_PX.
FWHM_APERTURE_A = 6.0
FWHM_MIN_APERTURE_PX = 3.0
#: The FWHM estimate is kept within this range, px.
FWHM_RANGE_PX = (1.0, 50.0)


def gaussian_kernel(fwhm_px: float) -> np.ndarray | None:
    """A normalised Gaussian matched-filter kernel of the given FWHM (None when 0)."""
    if fwhm_px <= 0:
        return None
    half = max(1, int(np.ceil(KERNEL_HALF_WIDTH_FWHM * fwhm_px)))
    y, x = np.mgrid[-half: half + 1, -half: half + 1]
    sigma = fwhm_px * FWHM_TO_SIGMA
    kernel = np.exp(-0.5 * (x * x + y * y) / sigma**2)
    return (kernel / kernel.sum()).astype(np.float32)


def check_pixels(data: np.ndarray, *, saturation_adu: float | None, config: DetectConfig, where: str) -> None:
    """Refuse an image with no finite pixel, or one overexposed: too many pixels at saturation.

    Parameters
    ----------
    data
        The image, ADU.
    saturation_adu
        The header's saturation level (SATURATE); None: ``config.default_saturation_adu``.
    config
        ``saturation_fraction`` (a pixel at or above this fraction of the level is saturated)
        and ``max_saturated_fraction`` (the largest fraction of such pixels).
    where
        The file, for the message.

    Raises
    ------
    ImageError
        No pixel is finite.
    NoSourcesError
        More than ``config.max_saturated_fraction`` of the finite pixels are saturated.
    """
    level = float(config.default_saturation_adu if saturation_adu is None else saturation_adu)
    # counted without indexing the image by a mask (a copy of every finite pixel): NaN compares
    # false, and +inf, at or above any level, is taken back out
    n_saturated = int(np.count_nonzero(data >= config.saturation_fraction * level))
    if np.issubdtype(data.dtype, np.floating):
        n_finite = int(np.count_nonzero(np.isfinite(data)))
        n_saturated -= int(np.count_nonzero(data == np.inf))
    else:
        n_finite = data.size
    if n_finite == 0:
        raise ImageError(f"{where}: every pixel is NaN or infinite: there is no image to solve")
    if n_saturated > config.max_saturated_fraction * n_finite:
        raise NoSourcesError(f"{where}: {n_saturated / n_finite:.0%} of the pixels are at saturation (>= "
                             f"{config.saturation_fraction:g} x {level:g} ADU, "
                             f"{'SATURATE' if saturation_adu is not None else 'detect.default_saturation_adu'}): "
                             f"an overexposed frame, no star can be measured (more than "
                             f"detect.max_saturated_fraction = {config.max_saturated_fraction:g})")


def get_image_ij(
    data: np.ndarray,
    *,
    config: DetectConfig | None = None,
    depth: bool = False,
    gain: float | None = None,
    saturation_adu: float | None = None,
    mask: np.ndarray | None = None,
) -> Table:
    """Detect the sources of an image and measure their windowed centroids.

    Parameters
    ----------
    data
        Image, shape (ny, nx); converted to native-endian float32 if needed
        (the input is not modified).
    config
        Detection settings; ``config.first`` or ``config.depth`` gives the pass.
    depth
        Use the relaxed depth-match pass instead of the first pass.
    gain
        e-/ADU for the Poisson part of the centroid errors; ``config.default_gain`` if None.
    saturation_adu
        Saturation level; ``config.default_saturation_adu`` if None.
    mask
        Pixels to ignore (True = bad), shape of ``data``; NaN pixels are always masked.

    Returns
    -------
    astropy.table.Table
        One row per source, brightest first, columns of
        :data:`astrodask.types.SOURCE_COLUMNS` (0-based pixels; ``i`` along
        numpy's last axis). ``meta`` records the background level and rms, the
        pass settings, the FWHM used for the windowed centroids and counts.
        An image with no source gives an empty table and an
        :class:`~astrodask.errors.AstrodaskWarning`.
    """
    config = config or DetectConfig()
    background = subtract_background(data, config=config, mask=mask)
    return measure_pass(background, config=config, depth=depth, gain=gain, saturation_adu=saturation_adu)


@dataclass(frozen=True)
class Background:
    """An image with its background subtracted, shared by the detection passes.

    Attributes
    ----------
    image
        The background-subtracted image (float32, C order; bad pixels set to 0).
    mask
        Bad pixels (True), or None when every pixel is good.
    level_adu, rms_adu
        SEP's global background level and rms.
    """

    image: np.ndarray
    mask: np.ndarray | None
    level_adu: float
    rms_adu: float


def subtract_background(data: np.ndarray, *, config: DetectConfig, mask: np.ndarray | None = None) -> Background:
    """SEP's background of an image (mesh ``back_size_px``, filter ``back_filter_size``), subtracted.

    The image is copied once (native float32: integer pixels, as an exposure keeps them, are
    converted here and only here); both detection passes then run on the copy
    (:func:`get_image_ij_passes`), as the background settings are shared by the passes.

    Raises
    ------
    ImageError
        Not a 2-D image, or no finite pixel.
    """
    if data.ndim != 2:
        raise ImageError(f"get_image_ij needs a 2-D image, got shape {data.shape}")
    image = np.array(data, dtype=np.float32, order="C", copy=True)  # native, writable copy
    if data.dtype.kind in "iu":  # integers are all finite
        bad = np.zeros(image.shape, dtype=bool) if mask is None else np.array(mask, dtype=bool)
    else:
        bad = ~np.isfinite(image)
        if mask is not None:
            bad |= np.asarray(mask, dtype=bool)
    if bad.all():
        raise ImageError("get_image_ij: every pixel is masked or not finite")
    has_bad = bool(bad.any())
    if has_bad:
        image[bad] = 0.0
    sep_mask = bad if has_bad else None
    bkg = sep.Background(image, mask=sep_mask, bw=config.back_size_px, bh=config.back_size_px,
                         fw=config.back_filter_size, fh=config.back_filter_size)
    bkg.subfrom(image)
    if has_bad:
        image[bad] = 0.0
    return Background(image, sep_mask, float(bkg.globalback), float(bkg.globalrms))


def get_image_ij_passes(data: np.ndarray, *, config: DetectConfig | None = None, gain: float | None = None,
                        saturation_adu: float | None = None, mask: np.ndarray | None = None) -> tuple[Table, Table]:
    """Both detection passes of an image on one background: (first pass, relaxed depth pass).

    The tables of :func:`get_image_ij` with ``depth=False`` and ``depth=True``, for one copy of
    the image and one background instead of two, and (``config.first_from_depth``) one
    extraction: see :func:`measure_passes`.
    """
    config = config or DetectConfig()
    background = subtract_background(data, config=config, mask=mask)
    return measure_passes(background, config=config, gain=gain, saturation_adu=saturation_adu)


def measure_pass(background: Background, *, config: DetectConfig, depth: bool = False, gain: float | None = None,
                 saturation_adu: float | None = None, work_map: WorkMap | None = None) -> Table:
    """One detection pass on a background-subtracted image: extraction, morphology, windowed centroids.

    See :func:`get_image_ij` for the table; the image is not modified. ``work_map`` shares the
    extraction's strips and the sources' windowed centroids out (:data:`WorkMap`; None: in this process).
    """
    pass_config: DetectPassConfig = config.depth if depth else config.first
    gain = config.default_gain if gain is None else float(gain)
    objects = _extract(background.image, pass_config, back_rms=background.rms_adu, gain=gain, mask=background.mask,
                       work_map=work_map)
    return _measure(background, _brightest(objects, pass_config.max_sources), config=config, depth=depth,
                    gain=gain, saturation_adu=saturation_adu, work_map=work_map)


def measure_passes(background: Background, *, config: DetectConfig, gain: float | None = None,
                   saturation_adu: float | None = None, work_map: WorkMap | None = None) -> tuple[Table, Table]:
    """Both detection passes on one background: (first pass, relaxed depth pass).

    With ``config.first_from_depth`` (the default) SEP extracts once, with the depth pass's
    settings, and the first pass is the part of that list that the first pass's own extraction
    finds (:func:`first_pass_rows`): every source is measured once, and the first pass's rows
    are the depth pass's rows, so both lists agree on every source they share. Otherwise each
    pass has its own extraction (:func:`measure_pass` twice). ``work_map`` shares the extraction's
    strips and the sources' windowed centroids out (:data:`WorkMap`; None: in this process).
    """
    if not config.first_from_depth:
        return (measure_pass(background, config=config, depth=False, gain=gain, saturation_adu=saturation_adu,
                             work_map=work_map),
                measure_pass(background, config=config, depth=True, gain=gain, saturation_adu=saturation_adu,
                             work_map=work_map))
    gain = config.default_gain if gain is None else float(gain)
    objects, in_first = _extract_passes(background.image, config, back_rms=background.rms_adu, gain=gain,
                                        mask=background.mask, work_map=work_map)
    order = np.argsort(-objects["flux"], kind="stable")[: config.depth.max_sources]
    objects, in_first = objects[order], in_first[order]
    deep = _measure(background, objects, config=config, depth=True, gain=gain, saturation_adu=saturation_adu,
                    work_map=work_map)
    rows = np.flatnonzero(in_first)[: config.first.max_sources]
    if len(deep) == 0 or len(rows) == 0:
        first = _empty_table({**deep.meta, "pass": "first"})
        warnings.warn(f"get_image_ij: no sources above {config.first.thresh_sigma} sigma "
                      f"(background rms {background.rms_adu:.3g} ADU)", AstrodaskWarning, stacklevel=2)
    else:
        first = deep[rows]
        first.meta = dict(deep.meta)
        first.meta.update(_count_meta(first))
    first.meta["pass"] = "first"
    first.meta["first_from_depth"] = True
    first.meta["detect_config"] = {**deep.meta["detect_config"], "pass": asdict(config.first)}
    return first, deep


def first_pass_rows(image: np.ndarray, objects: np.ndarray, segmap: np.ndarray, *, config: DetectConfig,
                    back_rms: float, gain: float, mask: np.ndarray | None = None) -> np.ndarray:
    """Which sources of a depth-pass extraction the first pass's own extraction finds (boolean, per row).

    The first pass finds the groups of at least ``first.minarea`` connected pixels whose filtered
    value (the image convolved with the first pass's kernel, as SEP filters it) is above
    ``first.thresh_sigma`` x ``back_rms``; each such group lies inside one group of the depth
    pass (its threshold is lower), which SEP deblended into one source or several:

    - a source the depth pass did not deblend is the whole group: it is kept when at least
      ``first.minarea`` pixels of its segment clear the first pass's threshold (the filtered
      values are computed on those pixels only, :func:`filtered_at`);
    - sources the depth pass deblended (``OBJ_MERGED``) may be deblended differently at the first
      pass's threshold and contrast: SEP extracts those groups again, with the first pass's
      settings, in a cutout around them, and each source it finds keeps the depth-pass source under
      its filtered peak (so two depth-pass sources that the first pass sees as one blend give one row).

    Without SEP's cleaning the list is the first pass's own, source for source (tested). With it, the
    faint sources that the first pass's cleaning takes for the wings of a bright neighbour are kept
    (the depth pass cleans at its own threshold): on the benchmark frames 0-4 % more sources than the
    first pass's own extraction, none of its sources missing. A source is also kept when its pixels
    above the threshold are ``first.minarea`` or more but not connected (rare).

    Parameters
    ----------
    image
        The background-subtracted image SEP extracted (bad pixels 0).
    objects
        SEP's depth-pass objects of ``image``.
    segmap
        SEP's segmentation map of that extraction (object k's pixels hold k + 1).
    config
        ``first`` (the pass to reproduce) and ``depth`` (the pass extracted).
    back_rms, gain, mask
        As given to the extraction.
    """
    n = len(objects)
    keep = np.zeros(n, dtype=bool)
    if n == 0:
        return keep
    first = config.first
    kernel = _sep_kernel(first.filter_fwhm_px)
    thresh = np.float32(np.float32(first.thresh_sigma) * np.float32(back_rms))  # SEP's threshold, in float32
    merged = (objects["flag"] & sep.OBJ_MERGED) != 0
    candidate = ~merged
    if first.filter_fwhm_px == config.depth.filter_fwhm_px:
        # cpeak is the segment's highest filtered value: a source below the threshold there has no pixel above it
        candidate &= objects["cpeak"] > thresh
    pixels = np.flatnonzero(segmap)
    labels = segmap.ravel()[pixels] - 1
    chosen = candidate[labels]
    above = filtered_at(image, pixels[chosen], kernel) > thresh
    keep[~merged] = (np.bincount(labels[chosen][above], minlength=n) >= first.minarea)[~merged]
    if merged.any():
        in_blend = merged[labels]
        keep |= _first_of_blends(image, objects, segmap, pixels[in_blend], labels[in_blend], config=config,
                                 back_rms=back_rms, gain=gain, mask=mask)
    return keep


def _first_of_blends(image: np.ndarray, objects: np.ndarray, segmap: np.ndarray, pixels: np.ndarray,
                     labels: np.ndarray, *, config: DetectConfig, back_rms: float, gain: float,
                     mask: np.ndarray | None) -> np.ndarray:
    """The deblended depth-pass sources that the first pass's extraction finds.

    ``pixels`` (flat indices, increasing) are the pixels of the deblended sources, ``labels`` their
    rows. The pixels fall into the depth pass's groups (8-connected, :func:`pixel_groups`); SEP extracts
    each group's box, with a margin for the filter, with the first pass's settings, and each source it
    finds there keeps the depth-pass source of the group under its filtered peak.
    """
    ny, nx = image.shape
    keep = np.zeros(len(objects), dtype=bool)
    group_of_pixel = pixel_groups(pixels, nx)
    group = np.full(len(objects), -1)
    group[labels] = group_of_pixel
    rows = np.flatnonzero(group >= 0)
    if config.first.filter_fwhm_px == config.depth.filter_fwhm_px:
        # a group whose highest filtered value is below the first pass's threshold has no source in it
        thresh = np.float32(np.float32(config.first.thresh_sigma) * np.float32(back_rms))
        live = np.zeros(int(group.max()) + 1, dtype=bool)
        live[group[rows[objects["cpeak"][rows] > thresh]]] = True
        rows = rows[live[group[rows]]]
    if len(rows) == 0:
        return keep
    margin = _sep_kernel(config.first.filter_fwhm_px).shape[0] // 2 + 1
    order = rows[np.argsort(group[rows], kind="stable")]
    bounds = np.flatnonzero(np.diff(group[order])) + 1
    for members in np.split(order, bounds):
        ylo = max(0, int(objects["ymin"][members].min()) - margin)
        yhi = min(ny, int(objects["ymax"][members].max()) + margin + 1)
        xlo = max(0, int(objects["xmin"][members].min()) - margin)
        xhi = min(nx, int(objects["xmax"][members].max()) + margin + 1)
        cutout = np.ascontiguousarray(image[ylo:yhi, xlo:xhi])
        found, _ = _extract_whole(cutout, config.first, back_rms=back_rms, gain=gain,
                                  mask=None if mask is None else np.ascontiguousarray(mask[ylo:yhi, xlo:xhi]))
        if len(found) == 0:
            continue
        label = segmap[found["ycpeak"] + ylo, found["xcpeak"] + xlo] - 1
        ours = (label >= 0) & (group[np.maximum(label, 0)] == group[members[0]])
        keep[label[ours]] = True
    return keep


def pixel_groups(pixels: np.ndarray, nx: int) -> np.ndarray:
    """The 8-connected groups of a set of pixels: a group number (0..k-1) per pixel.

    Parameters
    ----------
    pixels
        Flat (C-order) indices of the pixels, increasing, in an image ``nx`` pixels wide.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(pixels)
    cols = pixels % nx
    heads, tails = [], []
    # each pixel's neighbours to the right and on the next row; the others see it from their side
    for step, dcol in ((1, 1), (nx - 1, -1), (nx, 0), (nx + 1, 1)):
        target = pixels + step
        at = np.minimum(np.searchsorted(pixels, target), n - 1)
        hit = (pixels[at] == target) & (cols + dcol >= 0) & (cols + dcol < nx)
        heads.append(np.flatnonzero(hit))
        tails.append(at[hit])
    head, tail = np.concatenate(heads), np.concatenate(tails)
    graph = coo_matrix((np.ones(len(head), dtype=np.int8), (head, tail)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _sep_kernel(fwhm_px: float) -> np.ndarray:
    """The filter SEP applies for a pass: :func:`gaussian_kernel` normalised as SEP does (by the sum of its
    absolute values, in float32); a 1 x 1 kernel when the pass does not filter."""
    kernel = gaussian_kernel(fwhm_px)
    if kernel is None:
        return np.ones((1, 1), dtype=np.float32)
    total = np.cumsum(np.abs(kernel.ravel()), dtype=np.float32)[-1]  # summed in order, as SEP does
    return (kernel / total).astype(np.float32)


def filtered_at(image: np.ndarray, pixels: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """The image convolved with ``kernel`` (zero outside the image, as SEP filters), at ``pixels`` only.

    Parameters
    ----------
    image
        2-D float32 image.
    pixels
        Flat (C-order) indices of the pixels wanted.
    kernel
        Odd-sized 2-D kernel, float32.

    Returns
    -------
    np.ndarray
        float32, one value per pixel, summed in SEP's order (kernel rows, then columns).
    """
    ny, nx = image.shape
    kh, kw = kernel.shape
    hy, hx = kh // 2, kw // 2
    flat = image.ravel()
    rows, cols = np.divmod(pixels, nx)
    interior = (rows >= hy) & (rows < ny - hy) & (cols >= hx) & (cols < nx - hx)
    inner, edge = pixels[interior], np.flatnonzero(~interior)
    out = np.zeros(len(pixels), dtype=np.float32)
    acc = np.zeros(len(inner), dtype=np.float32)
    for dy in range(kh):
        for dx in range(kw):
            weight = kernel[dy, dx]
            acc += weight * flat[inner + ((dy - hy) * nx + (dx - hx))]
            if len(edge):
                r, c = rows[edge] + dy - hy, cols[edge] + dx - hx
                inside = (r >= 0) & (r < ny) & (c >= 0) & (c < nx)
                out[edge] += np.where(inside, weight * flat[np.clip(r, 0, ny - 1) * nx + np.clip(c, 0, nx - 1)],
                                      np.float32(0.0))
    out[interior] = acc
    return out


def _brightest(objects: np.ndarray, max_sources: int) -> np.ndarray:
    """An extraction's sources, brightest first, at most ``max_sources``."""
    return objects[np.argsort(-objects["flux"], kind="stable")[:max_sources]]


def _measure(background: Background, objects: np.ndarray, *, config: DetectConfig, depth: bool, gain: float,
             saturation_adu: float | None, work_map: WorkMap | None = None) -> Table:
    """Morphology, windowed centroids and their covariance for an extraction, brightest first.

    The windowed centroids and their covariances are each source's own: ``work_map`` may share
    runs of sources out (:func:`_windowed`).
    """
    pass_config: DetectPassConfig = config.depth if depth else config.first
    saturation = config.default_saturation_adu if saturation_adu is None else float(saturation_adu)
    image, sep_mask = background.image, background.mask
    back_level, back_rms = background.level_adu, background.rms_adu
    meta = {
        "pass": "depth" if depth else "first",
        "background_adu": back_level,
        "background_rms_adu": back_rms,
        "gain": gain,
        "saturation_adu": saturation,
        "detect_config": {**{k: v for k, v in asdict(config).items() if k not in {"first", "depth"}},
                          "pass": asdict(pass_config)},
    }
    if len(objects) == 0:
        warnings.warn("get_image_ij: no sources above "
                      f"{pass_config.thresh_sigma} sigma (background rms {back_rms:.3g} ADU)",
                      AstrodaskWarning, stacklevel=2)
        return _empty_table(meta)

    x, y = objects["x"].astype(np.float64), objects["y"].astype(np.float64)

    raw_peak = objects["peak"] + back_level
    saturation = effective_saturation(raw_peak, saturation, back_level=back_level, back_rms=back_rms)
    flux0 = np.asarray(objects["flux"], dtype=np.float64)
    snr = flux0 / np.sqrt(np.maximum(flux0, 0.0) / gain + objects["npix"] * back_rms**2)
    saturated = raw_peak >= config.saturation_fraction * saturation
    morphology = classify_sources(image, objects, snr=snr, saturated=saturated, config=config, mask=sep_mask)
    fwhm = config.winpos_fwhm_px or morphology.fwhm_px or estimate_fwhm(image, objects, mask=sep_mask)
    sig = np.full(len(objects), fwhm * FWHM_TO_SIGMA)

    def windowed(run: slice) -> np.ndarray:
        return _windowed(image, x[run], y[run], sig[run], fwhm=fwhm, back_rms=back_rms, gain=gain, mask=sep_mask)

    if work_map is None or work_map.processes < 2:
        win = windowed(slice(None))
    else:  # one run of sources per process
        bounds = np.linspace(0, len(objects), work_map.processes + 1).astype(int)
        win = np.concatenate(work_map(windowed, [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]), axis=1)
    ok = win[0].astype(bool)
    i, j, var_i, var_j, var_ij = win[1:]

    ny, nx = image.shape
    flags = np.zeros(len(objects), dtype=np.int32)
    flags[~ok] |= SourceFlag.WINPOS_FAILED
    flags[(objects["flag"] & sep.OBJ_MERGED) != 0] |= SourceFlag.BLENDED
    flags[(objects["flag"] & sep.OBJ_TRUNC) != 0] |= SourceFlag.SEP_TRUNCATED
    margin = config.edge_margin_px
    flags[(i < margin) | (j < margin) | (i > nx - 1 - margin) | (j > ny - 1 - margin)] |= SourceFlag.EDGE
    flags[raw_peak >= config.saturation_fraction * saturation] |= SourceFlag.SATURATED
    flags |= morphology.flags

    # where the window cannot be evaluated, SEP's isophotal centroid covariance
    iso = ~ok | ~np.isfinite(var_i) | ~np.isfinite(var_j) | (var_i <= 0) | (var_j <= 0) \
        | (var_i * var_j <= var_ij**2)
    var_i = np.where(iso, objects["errx2"], var_i)
    var_j = np.where(iso, objects["erry2"], var_j)
    var_ij = np.where(iso, objects["errxy"], var_ij)
    flux = np.asarray(objects["flux"], dtype=np.float64)
    flux_err = np.sqrt(np.maximum(flux, 0.0) / gain + objects["npix"] * back_rms**2)

    table = Table(
        {
            "i": i, "j": j, "var_i": var_i, "var_j": var_j, "var_ij": var_ij,
            "flux_adu": flux, "flux_err_adu": flux_err,
            "peak_adu": np.asarray(objects["peak"], dtype=np.float64),
            "a_px": np.asarray(objects["a"], dtype=np.float64),
            "b_px": np.asarray(objects["b"], dtype=np.float64),
            "theta_rad": np.asarray(objects["theta"], dtype=np.float64),
            "npix": np.asarray(objects["npix"], dtype=np.int32),
            "r50_px": morphology.r50_px,
            "flag": flags,
        },
        meta=meta,
    )
    for name, unit in SOURCE_COLUMNS.items():
        if unit:
            table[name].unit = unit
    table.meta.update({
        "winpos_fwhm_px": float(fwhm),
        "saturation_adu": float(saturation),
        "star_r50_px": morphology.star_r50_px,
        "n_stars_classified": morphology.n_classified,
        **_count_meta(table),
    })
    log.debug("get_image_ij: %d sources (%s pass), background %.1f +- %.2f ADU, FWHM %.2f px",
              len(table), meta["pass"], back_level, back_rms, fwhm)
    return table


def _windowed(image: np.ndarray, x: np.ndarray, y: np.ndarray, sig: np.ndarray, *, fwhm: float, back_rms: float,
              gain: float, mask: np.ndarray | None) -> np.ndarray:
    """Windowed centroids of sources and their covariance, shape (6, N): whether the window
    converged (1.0 or 0.0), i, j (the isophotal centroid where it did not), var_i, var_j, var_ij.

    ``sep.winpos`` (the SExtractor XWIN/YWIN estimator), kept when it converges within a FWHM of
    the isophotal centroid; the covariance from the pixel noise (sky rms and Poisson,
    :func:`winpos_covariance`). Each source's own: runs of sources can be measured apart.
    """
    xwin, ywin, winflag = sep.winpos(image, x, y, sig, mask=mask, subpix=WINPOS_SUBPIX)
    ok = (winflag == 0) & np.isfinite(xwin) & np.isfinite(ywin) & (np.hypot(xwin - x, ywin - y) < fwhm)
    i = np.where(ok, xwin, x)
    j = np.where(ok, ywin, y)
    var_i, var_j, var_ij = winpos_covariance(image, i, j, sig, back_rms=back_rms, gain=gain, mask=mask)
    return np.stack([ok.astype(np.float64), i, j, var_i, var_j, var_ij])


def _count_meta(table: Table) -> dict[str, int]:
    """A source table's counts for its ``meta``: sources, and sources of each flag."""
    flags = np.asarray(table["flag"])
    return {
        "n_sources": len(table),
        **{f"n_{str(flag.name).lower()}": int(np.count_nonzero(flags & flag))
           for flag in (SourceFlag.SATURATED, SourceFlag.BLENDED, SourceFlag.EDGE, SourceFlag.WINPOS_FAILED,
                        SourceFlag.SHARP, SourceFlag.EXTENDED, SourceFlag.ELONGATED)},
    }


#: Sub-pixel sampling of ``sep.winpos``'s window edge: 0 is SEP's exact overlap, a third of the time of its
#: default (11 x 11 samples per edge pixel) on a crowded frame; the centroids move by 4e-6 px (median).
WINPOS_SUBPIX = 0
#: Half-size of the stamp over which the windowed-centroid covariance is summed, in window sigmas.
WINPOS_STAMP_SIGMAS = 4.0


def winpos_covariance(image: np.ndarray, x: np.ndarray, y: np.ndarray, sig: np.ndarray, *, back_rms: float,
                      gain: float, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Covariance (px^2) of windowed centroids, as SExtractor's ERRX2WIN, ERRY2WIN, ERRXYWIN.

    With the Gaussian window w = exp(-r^2 / (2 sig^2)) centred on the windowed
    centroid and pixel variances v = back_rms^2 + max(I, 0) / gain (I the
    background-subtracted pixel value), the covariance is
    4 sum(w^2 v dx dx') / (sum w I)^2 (the factor 4 accounts for the iterated
    window). Sums run over a square stamp of half-size ``WINPOS_STAMP_SIGMAS * sig``.

    Parameters
    ----------
    image
        Background-subtracted image (ADU).
    x, y
        Windowed centroids, 0-based pixels.
    sig
        Window sigma per source, pixels.
    back_rms
        Background rms, ADU.
    gain
        e-/ADU.
    mask
        Masked pixels (True = bad) are left out of the sums.

    Returns
    -------
    var_x, var_y, cov_xy
        NaN where the window flux is not positive.
    """
    ny, nx = image.shape
    half = int(np.ceil(WINPOS_STAMP_SIGMAS * float(np.max(sig)))) if len(sig) else 1
    offsets = np.arange(-half, half + 1)
    n = len(x)
    out = np.full((3, n), np.nan)
    chunk = max(1, 4_000_000 // (len(offsets) ** 2))  # bounded memory
    for start in range(0, n, chunk):
        sl = slice(start, start + chunk)
        xc, yc, s = x[sl], y[sl], sig[sl]
        cols = np.rint(xc).astype(np.int64)[:, None] + offsets[None, :]
        rows = np.rint(yc).astype(np.int64)[:, None] + offsets[None, :]
        inside = (cols[:, None, :] >= 0) & (cols[:, None, :] < nx) & (rows[:, :, None] >= 0) & (rows[:, :, None] < ny)
        cc = np.clip(cols, 0, nx - 1)
        rr = np.clip(rows, 0, ny - 1)
        values = image[rr[:, :, None], cc[:, None, :]].astype(np.float64)
        if mask is not None:
            inside &= ~mask[rr[:, :, None], cc[:, None, :]]
        dx = cols[:, None, :] - xc[:, None, None]
        dy = rows[:, :, None] - yc[:, None, None]
        w = np.exp(-(dx * dx + dy * dy) / (2.0 * s[:, None, None] ** 2)) * inside
        var = back_rms**2 + np.maximum(values, 0.0) / gain
        norm = np.sum(w * values, axis=(1, 2))
        w2v = w * w * var
        with np.errstate(invalid="ignore", divide="ignore"):
            scale = np.where(norm > 0, 4.0 / norm**2, np.nan)
            out[0, sl] = scale * np.sum(w2v * dx * dx, axis=(1, 2))
            out[1, sl] = scale * np.sum(w2v * dy * dy, axis=(1, 2))
            out[2, sl] = scale * np.sum(w2v * dx * dy, axis=(1, 2))
    return out[0], out[1], out[2]


def _extract(image: np.ndarray, pass_config: DetectPassConfig, *, back_rms: float, gain: float,
             mask: np.ndarray | None, work_map: WorkMap | None = None) -> np.ndarray:
    """sep.extract with the pass settings, in strips of ``pass_config.strip_px`` rows.

    SEP's cleaning of spurious detections costs more than in proportion to the objects it
    sees at once (a crowded half frame: 4.2 s whole, 2.5 s in strips of 1,024 rows; without
    cleaning 1.8 s). Each strip is extracted with :data:`STRIP_OVERLAP_PX` rows more on either
    side, and keeps the objects whose centroid lies in its own rows: an object smaller than the
    overlap is seen whole by the strip that keeps it, so the list is the whole image's (99.97 %
    of the objects identical on a crowded frame; the others are the deblending of objects
    straddling a strip edge). The strips are independent: ``work_map`` may share them out.
    """
    def one(strip: Strip) -> np.ndarray:
        y0, y1, lo, hi = strip
        objects, _ = _extract_whole(image[lo:hi], pass_config, back_rms=back_rms, gain=gain,
                                    mask=None if mask is None else mask[lo:hi])
        return _own_rows(objects, y0, y1, lo)

    return np.concatenate(_map_strips(one, _strips(image.shape[0], pass_config.strip_px), work_map))


def _extract_passes(image: np.ndarray, config: DetectConfig, *, back_rms: float, gain: float,
                    mask: np.ndarray | None, work_map: WorkMap | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One extraction for both passes: the depth pass's objects (as :func:`_extract`) and, per object,
    whether the first pass's own extraction finds it (:func:`first_pass_rows`, strip by strip)."""
    def one(strip: Strip) -> tuple[np.ndarray, np.ndarray]:
        y0, y1, lo, hi = strip
        part, part_mask = image[lo:hi], None if mask is None else mask[lo:hi]
        objects, segmap = _extract_whole(part, config.depth, back_rms=back_rms, gain=gain, mask=part_mask,
                                         segmentation_map=True)
        assert segmap is not None
        in_first = first_pass_rows(part, objects, segmap, config=config, back_rms=back_rms, gain=gain,
                                   mask=part_mask)
        own = _own_rows(objects, y0, y1, lo, mask_only=True)
        return _own_rows(objects[own], y0, y1, lo), in_first[own]

    parts = _map_strips(one, _strips(image.shape[0], config.depth.strip_px), work_map)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _map_strips(fn: Callable[[Strip], Any], strips: list[Strip], work_map: WorkMap | None) -> list[Any]:
    """``fn`` over the strips, through ``work_map`` when there is more than one strip to share."""
    if work_map is None or len(strips) < 2:
        return [fn(s) for s in strips]
    return work_map(fn, strips)


def _strips(ny: int, strip_px: int) -> list[Strip]:
    """Extraction strips (:func:`_extract`): (first row kept, row after the last kept, first row
    extracted, row after the last extracted); one strip for the whole image when it is small.

    Otherwise an even number of strips of equal height (at most ``strip_px`` rows), whatever
    runs them: two processes (:data:`WorkMap`) share them equally, and the list is the same
    however many share it.
    """
    step = int(strip_px) or ny
    if step + 2 * STRIP_OVERLAP_PX >= ny:
        return [(0, ny, 0, ny)]
    count = -(-ny // step)
    count += count % 2
    height = -(-ny // count)
    return [(y0, min(ny, y0 + height), max(0, y0 - STRIP_OVERLAP_PX), min(ny, y0 + height + STRIP_OVERLAP_PX))
            for y0 in range(0, ny, height)]


def _own_rows(objects: np.ndarray, y0: int, y1: int, lo: int, *, mask_only: bool = False) -> np.ndarray:
    """A strip's objects (extracted from row ``lo`` on) whose centroid lies in rows y0..y1-1, in the
    image's rows (or, with ``mask_only``, which of them, without shifting anything)."""
    # a centroid within [y0 - 0.5, y1 - 0.5) lies in rows y0..y1-1 (pixel centres at integers)
    y = objects["y"] + lo
    own = (y >= y0 - 0.5) & (y < y1 - 0.5)
    if mask_only:
        return own
    kept = objects[own]
    for name in _ROW_FIELDS:
        kept[name] += lo
    return kept


#: Rows of overlap between the extraction strips (:func:`_extract`): more than the half-size of the
#: objects that matter (a saturated star with its bleed trail can be larger; it is flagged anyway).
STRIP_OVERLAP_PX = 128
#: SEP's object fields in image rows, shifted from a strip's rows to the image's.
_ROW_FIELDS = ("y", "ymin", "ymax", "ycpeak", "ypeak")


def _extract_whole(image: np.ndarray, pass_config: DetectPassConfig, *, back_rms: float, gain: float,
                   mask: np.ndarray | None, segmentation_map: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """sep.extract with the pass settings, growing SEP's pixel stack when it overflows: (objects,
    segmentation map or None). A small image starts with a stack of its size (no pass can hold more
    pixels): SEP allocates and links the whole stack on every call."""
    pixstack = min(SEP_PIXSTACK, image.size + SEP_PIXSTACK_SPARE)
    sep.set_sub_object_limit(SEP_SUB_OBJECT_LIMIT)
    while True:
        sep.set_extract_pixstack(pixstack)
        try:
            found = sep.extract(
                image,
                pass_config.thresh_sigma,
                err=back_rms,
                gain=gain,
                mask=mask,
                minarea=pass_config.minarea,
                filter_kernel=gaussian_kernel(pass_config.filter_fwhm_px),
                deblend_nthresh=pass_config.deblend_nthresh,
                deblend_cont=pass_config.deblend_cont,
                clean=pass_config.clean,
                segmentation_map=segmentation_map,
            )
        except Exception as err:  # SEP raises a bare Exception for a full pixel buffer
            if "pixel buffer full" not in str(err) or pixstack >= SEP_PIXSTACK_MAX:
                if "pixel buffer full" in str(err):
                    raise ImageError(f"get_image_ij: SEP's pixel buffer overflowed at {pixstack} pixels; "
                                     "raise the detection threshold or minarea") from err
                raise
            pixstack *= 4
            log.debug("get_image_ij: SEP pixel stack grown to %d", pixstack)
            continue
        return (found[0], found[1]) if segmentation_map else (found, None)


def detect_exposure(exposure: Exposure, *, config: DetectConfig | None = None, depth: bool = False) -> Table:
    """:func:`get_image_ij` on an exposure, with the gain and saturation level of its header.

    The table's ``meta`` also records the file and its HDU.
    """
    table = get_image_ij(exposure.data, config=config, depth=depth, gain=exposure.gain,
                         saturation_adu=exposure.saturate_adu)
    return _with_exposure(table, exposure)


def detect_pass(exposure: Exposure | ExposureInfo, background: Background, *, config: DetectConfig,
                depth: bool = False, work_map: WorkMap | None = None) -> Table:
    """One pass of :func:`detect_exposure` on the exposure's background (:func:`subtract_background`),
    which the two passes share."""
    table = measure_pass(background, config=config, depth=depth, gain=exposure.gain,
                         saturation_adu=exposure.saturate_adu, work_map=work_map)
    return _with_exposure(table, exposure)


def detect_passes(exposure: Exposure | ExposureInfo, background: Background, *, config: DetectConfig,
                  work_map: WorkMap | None = None) -> tuple[Table, Table]:
    """Both passes of the exposure on its background (:func:`measure_passes`): (first, depth)."""
    first, deep = measure_passes(background, config=config, gain=exposure.gain, saturation_adu=exposure.saturate_adu,
                                 work_map=work_map)
    return _with_exposure(first, exposure), _with_exposure(deep, exposure)


def _with_exposure(table: Table, exposure: Exposure | ExposureInfo) -> Table:
    table.meta["file"] = str(exposure.path)
    table.meta["hdu"] = exposure.hdu_index
    table.meta["shape"] = list(exposure.shape)
    return table


def estimate_fwhm(image: np.ndarray, objects: np.ndarray, *, mask: np.ndarray | None = None) -> float:
    """Robust image FWHM (px): twice the median half-flux radius of bright clean sources.

    Uses up to :data:`FWHM_SAMPLE` of the brightest unflagged sources past the
    first few percent (often saturated). For a Gaussian PSF the half-flux
    radius is FWHM / 2, so the windowed-centroid sigma FWHM / 2.355 is
    SExtractor's ``2 * FLUX_RADIUS / 2.35``.
    """
    clean = objects[(objects["flag"] == 0) & (objects["npix"] >= FWHM_MIN_NPIX)]
    if len(clean) < FWHM_MIN_NPIX:
        clean = objects
    start = int(len(clean) * FWHM_SKIP_FRACTION)
    sample = clean[start: start + FWHM_SAMPLE]
    radius, flag = sep.flux_radius(image, sample["x"].astype(np.float64), sample["y"].astype(np.float64),
                                   np.maximum(FWHM_APERTURE_A * sample["a"], FWHM_MIN_APERTURE_PX).astype(np.float64),
                                   0.5, subpix=5, mask=mask)
    good = (flag == 0) & np.isfinite(radius) & (radius > 0)
    if not np.any(good):
        sigma = np.sqrt(0.5 * (sample["a"] ** 2 + sample["b"] ** 2))
        return float(np.clip(np.median(sigma) / FWHM_TO_SIGMA, *FWHM_RANGE_PX))
    # a Gaussian's half-flux radius is half its FWHM
    return float(np.clip(2.0 * np.median(radius[good]), *FWHM_RANGE_PX))


def _empty_table(meta: dict) -> Table:
    dtypes = {"npix": np.int32, "flag": np.int32}
    table = Table({name: np.zeros(0, dtype=dtypes.get(name, np.float64)) for name in SOURCE_COLUMNS}, meta=meta)
    table.meta["n_sources"] = 0
    return table


# ---------------------------------------------------------------- stars and artefacts

#: Fewest sources above ``classify_snr_min`` for the stars' size to be measured.
MIN_LOCUS_SOURCES = 10
#: Histogram bin of log10(half-flux radius) when looking for the stars' locus, dex.
LOCUS_BIN_DEX = 0.02
#: Smoothing of that histogram (a running sum over this many bins).
LOCUS_SMOOTH_BINS = 5
#: Members of the locus lie within this of its peak, dex.
LOCUS_HALF_WIDTH_DEX = 0.2
#: The stars' peaks are measured on the core of the locus: within this many of its robust sigmas.
LOCUS_CORE_SIGMAS = 2.0
#: Cuts sit at least this many robust sigmas of the locus away from it.
LOCUS_CUT_SIGMAS = 4.0
#: Robust sigma per median absolute deviation.
MAD_TO_SIGMA = 1.4826
#: Half-flux radius aperture: this many times the source's semi-major axis (at least ``R50_MIN_APERTURE_PX``).
R50_APERTURE_A = 6.0
#: Sub-pixel sampling of the half-flux radius's aperture edge: 3 x 3 moves r50 by 0.35 % (median; 1.9 % at
#: the 99th percentile) from 5 x 5, far inside the cuts on it, in 60 % of the time.
R50_SUBPIX = 3
#: Smallest half-flux radius aperture, px.
R50_MIN_APERTURE_PX = 3.0
#: Largest half-flux radius aperture: this many times the median semi-major axis of the classified sources.
R50_MAX_APERTURE_A = 8.0
#: The peak's share of the flux is measured in an aperture of this many times the stars' half-flux radius.
PEAK_APERTURE_R50 = 2.0
#: Sources at the highest peak level that reveal a saturation level absent from the header.
SATURATION_PILEUP_MIN = 5
#: Peaks within this fraction of the highest count as piled up there.
SATURATION_PILEUP_TOLERANCE = 0.01
#: A pile-up is a saturation level only this many background sigmas above the background.
SATURATION_PILEUP_SIGMAS = 50.0


@dataclass(frozen=True)
class Morphology:
    """Stars told from artefacts by their size and shape (:func:`classify_sources`).

    Attributes
    ----------
    flags
        ``SHARP``, ``EXTENDED`` and ``ELONGATED`` bits per source (0 for stars and unclassified sources).
    r50_px
        Half-flux radius per source, px (NaN where not measured).
    star_r50_px
        The stars' half-flux radius (the locus), px; NaN when it could not be found.
    fwhm_px
        The image FWHM from star-like sources only (twice ``star_r50_px``); 0 when unknown.
    n_classified
        Sources bright enough to be classified.
    """

    flags: np.ndarray
    r50_px: np.ndarray
    star_r50_px: float
    fwhm_px: float
    n_classified: int


def effective_saturation(raw_peak: np.ndarray, level_adu: float, *, back_level: float, back_rms: float) -> float:
    """The saturation level: the header's (or default), or lower where the peaks pile up.

    Clipped or photographically saturated cores are flat: when at least
    :data:`SATURATION_PILEUP_MIN` sources peak within
    :data:`SATURATION_PILEUP_TOLERANCE` of the highest peak, far above the
    background, that highest peak is the real saturation level (a plate scan,
    or a camera whose header has no ``SATURATE``).
    """
    peaks = np.asarray(raw_peak, dtype=np.float64)
    if len(peaks) < SATURATION_PILEUP_MIN:
        return float(level_adu)
    top = float(np.max(peaks))
    piled = int(np.count_nonzero(peaks >= top * (1.0 - SATURATION_PILEUP_TOLERANCE)))
    if piled >= SATURATION_PILEUP_MIN and top > back_level + SATURATION_PILEUP_SIGMAS * back_rms and top < level_adu:
        log.debug("effective_saturation: %d peaks at %.0f ADU, below the header's %.0f", piled, top, level_adu)
        return top
    return float(level_adu)


def stellar_locus(r50_px: np.ndarray, *, min_r50_px: float) -> tuple[float, float]:
    """The stars' half-flux radius and its robust spread from bright sources' radii.

    Stars share one size (the PSF's); cosmic rays and hot pixels are smaller,
    galaxies larger and spread out. The locus is the densest narrow peak of
    log10(r50) above ``min_r50_px``.

    Returns
    -------
    (centre, sigma)
        log10 of the stars' r50 (px) and the robust sigma of the members (dex);
        (NaN, NaN) with fewer than :data:`MIN_LOCUS_SOURCES` usable radii.
    """
    r = np.asarray(r50_px, dtype=np.float64)
    logr = np.log10(r[np.isfinite(r) & (r >= min_r50_px)])
    if len(logr) < MIN_LOCUS_SOURCES:
        return float("nan"), float("nan")
    edges = np.arange(logr.min(), logr.max() + 2 * LOCUS_BIN_DEX, LOCUS_BIN_DEX)
    counts, edges = np.histogram(logr, bins=edges)
    smooth = np.convolve(counts, np.ones(LOCUS_SMOOTH_BINS), mode="same")
    peak = int(np.argmax(smooth))
    centre = 0.5 * (edges[peak] + edges[peak + 1])
    members = logr[np.abs(logr - centre) <= LOCUS_HALF_WIDTH_DEX]
    centre = float(np.median(members))
    sigma = float(MAD_TO_SIGMA * np.median(np.abs(members - centre)))
    return centre, sigma


def classify_sources(image: np.ndarray, objects: np.ndarray, *, snr: np.ndarray, saturated: np.ndarray,
                     config: DetectConfig, mask: np.ndarray | None = None) -> Morphology:
    """Tell stars from artefacts by size and shape, relative to the stars themselves.

    The half-flux radius (``sep.flux_radius``) of every source at
    ``classify_snr_min`` or above is compared with the stars' (:func:`stellar_locus`
    over the unsaturated ones): much smaller is ``SHARP`` (a cosmic ray or hot
    pixel, not blurred by the atmosphere), and so is a source whose peak pixel holds
    ``sharp_peak_ratio`` times the share of its flux that the stars' peaks hold (a
    cosmic-ray track as long as a star is wide); much larger is ``EXTENDED`` (a galaxy or
    a blend); an axis ratio a/b far above the stars' is ``ELONGATED`` (hot
    columns, satellite and bleed trails, cosmic-ray tracks). Each cut sits at
    the configured ratio or :data:`LOCUS_CUT_SIGMAS` robust sigmas of the
    locus, whichever is farther, so an undersampled camera whose stars' sizes
    scatter keeps its stars. Fainter sources are not classified (flag 0).

    Parameters
    ----------
    image
        Background-subtracted image.
    objects
        SEP's objects.
    snr
        Signal-to-noise ratio per source.
    saturated
        Sources at the saturation level (left out of the locus; still classified
        for elongation only: a saturated star is large by nature).
    config
        Detection settings (``classify_snr_min``, ``min_star_r50_px``, ``sharp_ratio``,
        ``extended_ratio``, ``max_elongation``).
    mask
        Bad pixels (True), or None.
    """
    n = len(objects)
    flags = np.zeros(n, dtype=np.int32)
    r50 = np.full(n, np.nan)
    bright = np.nonzero(np.asarray(snr) >= config.classify_snr_min)[0]
    if len(bright) == 0:
        return Morphology(flags, r50, float("nan"), 0.0, 0)
    obj = objects[bright]
    # the aperture grows with the source, up to a few times the typical size (a hot column or a
    # bleed trail thousands of pixels long would otherwise cost seconds, and is ELONGATED anyway)
    cap = max(R50_MIN_APERTURE_PX, R50_MAX_APERTURE_A * float(np.median(obj["a"])))
    aperture = np.clip(R50_APERTURE_A * np.asarray(obj["a"], dtype=np.float64), R50_MIN_APERTURE_PX, cap)
    radius, rflag = sep.flux_radius(image, obj["x"].astype(np.float64), obj["y"].astype(np.float64), aperture,
                                    0.5, subpix=R50_SUBPIX, mask=mask)
    good = (rflag == 0) & np.isfinite(radius) & (radius > 0)
    r50[bright[good]] = radius[good]
    unsat = good & ~np.asarray(saturated)[bright]
    centre, sigma = stellar_locus(radius[unsat], min_r50_px=config.min_star_r50_px)
    elongation = np.asarray(obj["a"], dtype=np.float64) / np.maximum(np.asarray(obj["b"], dtype=np.float64), 1e-6)
    if not np.isfinite(centre):
        too_long = elongation > config.max_elongation
        flags[bright[too_long]] |= SourceFlag.ELONGATED
        return Morphology(flags, r50, float("nan"), 0.0, int(len(bright)))
    logr = np.log10(np.where(good, radius, np.nan))
    spread = LOCUS_CUT_SIGMAS * sigma
    low = centre - max(-np.log10(config.sharp_ratio), spread)
    high = centre + max(np.log10(config.extended_ratio), spread)
    with np.errstate(invalid="ignore", divide="ignore"):
        stars = unsat & (np.abs(logr - centre) <= LOCUS_HALF_WIDTH_DEX)
        # the share of the flux (in an aperture of twice the stars' r50) in the peak pixel: a
        # cosmic-ray track as wide as a star is still far more peaked (the seeing never blurred it)
        aperture_flux, _, _ = sep.sum_circle(image, obj["x"].astype(np.float64), obj["y"].astype(np.float64),
                                             PEAK_APERTURE_R50 * 10.0**centre, mask=mask)
        peakiness = np.log10(np.asarray(obj["peak"], dtype=np.float64) / np.asarray(aperture_flux))
        peak_limit = np.inf
        core = unsat & (np.abs(logr - centre) <= max(LOCUS_CORE_SIGMAS * sigma, LOCUS_BIN_DEX))
        if np.count_nonzero(core) >= MIN_LOCUS_SOURCES:
            star_peak = peakiness[core]
            peak_centre = float(np.median(star_peak))
            peak_sigma = float(MAD_TO_SIGMA * np.median(np.abs(star_peak - peak_centre)))
            peak_limit = peak_centre + max(np.log10(config.sharp_peak_ratio), LOCUS_CUT_SIGMAS * peak_sigma)
        sharp = good & ((logr < low) | ((peakiness > peak_limit) & ~np.asarray(saturated)[bright]))
        extended = good & (logr > high) & ~np.asarray(saturated)[bright] & ~sharp
    star_elongation = float(np.median(elongation[stars])) if stars.any() else 1.0
    too_long = elongation > max(config.max_elongation, star_elongation * config.max_elongation)
    flags[bright[sharp]] |= SourceFlag.SHARP
    flags[bright[extended]] |= SourceFlag.EXTENDED
    flags[bright[too_long]] |= SourceFlag.ELONGATED
    star_r50 = float(10.0 ** centre)
    log.debug("classify_sources: stars' r50 %.2f px (sigma %.3f dex, a/b %.2f); %d sharp, %d extended, "
              "%d elongated of %d classified", star_r50, sigma, star_elongation, int(sharp.sum()),
              int(extended.sum()), int(too_long.sum()), len(bright))
    return Morphology(flags, r50, star_r50, float(np.clip(2.0 * star_r50, 1.0, 50.0)), int(len(bright)))
