"""What the GalSim renderer draws: PSFs and their tables, galaxies, a satellite, bleeding, the plate's response.

Faint stars are added from a table of pixel-integrated PSF stamps (:func:`psf_table`,
:func:`add_from_table`), bright ones drawn one by one (:func:`draw_object`); galaxies are
GalSim profiles convolved with the PSF; cosmic rays, a satellite trail and bleed trails are
added to the pixels; a photographic plate maps exposure to density (:func:`photographic_response`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from astrodask.simulate.catalog import power_law_magnitudes
from astrodask.simulate.constants import FWHM_PER_SIGMA
from astrodask.simulate.galsim_scene import Scene, import_galsim
from astrodask.simulate.profiles import moffat_alpha

if TYPE_CHECKING:  # pragma: no cover
    import galsim

__all__ = ["add_from_table", "add_galaxies", "add_satellite", "bleed", "draw_object", "make_psf",
           "photographic_response", "psf_table", "stamp_half_sizes"]

#: Moffat beta that mimics Kolmogorov wings when sizing stamps.
KOLMOGOROV_EQUIVALENT_BETA: float = 11.0 / 6.0
#: A stamp ends where the profile falls below this fraction of the sky noise per pixel.
STAMP_EDGE_NOISE_FRACTION: float = 0.2
#: Smallest and largest stamp half-sizes, pixels.
STAMP_HALF_RANGE_PX: tuple[int, int] = (5, 600)
#: Faint stars are added from a table of pixel-integrated PSF stamps at this many sub-pixel
#: phases per axis, blended bilinearly (their first moments are exact); brighter ones are
#: drawn one by one by GalSim.
PSF_TABLE_PHASES: int = 16
#: Rows of faint stars added at once (memory bound).
TABLE_CHUNK: int = 20000
#: Photographic response: the exposure giving log10(2)*gamma above fog (in sky units), the scan
#: value at the maximum density, grain noise (density).
PLATE_E0_SKY: float = 1.0
PLATE_SCAN_MAX_ADU: float = 32000.0
PLATE_GRAIN_SIGMA_DENSITY: float = 0.008
#: Photographic halo: FWHM relative to the core (a broad Moffat of PLATE_HALO_BETA).
PLATE_HALO_FWHM_FACTOR: float = 8.0
PLATE_HALO_BETA: float = 1.6
#: Cosmic rays: fraction of single-pixel (or 2-pixel) events, track length range (px),
#: charge per pixel (ADU, uniform range).
CR_POINT_FRACTION: float = 0.4
CR_TRACK_LENGTH_PX: tuple[int, int] = (3, 12)
CR_LEVEL_ADU: tuple[float, float] = (300.0, 4000.0)
#: Satellite trail: peak level, ADU, and profile width in units of the PSF FWHM.
SATELLITE_PEAK_ADU: float = 400.0
#: Galaxies: magnitude range (G-equivalent), count slope (dex/mag), half-light radius range
#: (arcsec, log-uniform), largest distortion ellipticity, and Sersic indices with weights.
GALAXY_MAG_RANGE: tuple[float, float] = (16.0, 22.5)
GALAXY_COUNT_SLOPE: float = 0.4
GALAXY_HLR_RANGE_ARCSEC: tuple[float, float] = (0.5, 4.0)
GALAXY_MAX_E: float = 0.6
GALAXY_SERSIC_N: tuple[float, ...] = (1.0, 1.0, 1.0, 2.0, 4.0)
#: Truncation of n = 4 profiles, half-light radii.
GALAXY_TRUNCATION_HLR: float = 8.0


def make_psf(scene: Scene) -> galsim.GSObject:
    """The scene's PSF (unit flux, pixel units; drawn pixel-integrated by ``method='auto'``)."""
    galsim = import_galsim()
    if scene.psf_model == "moffat":
        core = galsim.Moffat(beta=scene.moffat_beta, fwhm=scene.fwhm_px)
    else:
        core = galsim.Kolmogorov(fwhm=scene.fwhm_px)
    if scene.psf_e > 0.0:
        core = core.shear(e=scene.psf_e, beta=scene.psf_angle_deg * galsim.degrees)
    if scene.photographic and scene.plate_halo_fraction > 0.0:
        halo = galsim.Moffat(beta=PLATE_HALO_BETA, fwhm=PLATE_HALO_FWHM_FACTOR * scene.fwhm_px,
                             trunc=STAMP_HALF_RANGE_PX[1] / 2.0)
        return galsim.Add(core.withFlux(1.0 - scene.plate_halo_fraction), halo.withFlux(scene.plate_halo_fraction))
    return core


def _moffat_radius(flux: np.ndarray, fwhm: float, beta: float, level: float) -> np.ndarray:
    """Radius where a Moffat of ``flux`` falls to ``level`` per pixel, pixels."""
    alpha = moffat_alpha(fwhm, beta)
    peak = flux * (beta - 1.0) / (math.pi * alpha * alpha)
    ratio = np.maximum(peak / level, 1.0)
    return alpha * np.sqrt(ratio ** (1.0 / beta) - 1.0)


def stamp_half_sizes(scene: Scene, flux_adu: np.ndarray) -> np.ndarray:
    """Half-size of each star's stamp, pixels: where its profile drops below the noise fraction."""
    noise = math.sqrt(scene.sky_adu / scene.gain_e_per_adu + (scene.read_noise_e / scene.gain_e_per_adu) ** 2)
    level = STAMP_EDGE_NOISE_FRACTION * noise
    beta = scene.moffat_beta if scene.psf_model == "moffat" else KOLMOGOROV_EQUIVALENT_BETA
    r = _moffat_radius(flux_adu, scene.fwhm_px * (1.0 + scene.psf_e), beta, level)
    if scene.photographic:
        r = np.maximum(r, _moffat_radius(flux_adu * scene.plate_halo_fraction,
                                         PLATE_HALO_FWHM_FACTOR * scene.fwhm_px, PLATE_HALO_BETA, level))
    return np.clip(np.ceil(r), *STAMP_HALF_RANGE_PX).astype(int)


def psf_table(psf: galsim.GSObject, half: int, phases: int = PSF_TABLE_PHASES) -> np.ndarray:
    """Pixel-integrated unit-flux PSF stamps at sub-pixel offsets.

    Returns an array (phases + 1, phases + 1, 2 half + 1, 2 half + 1): entry [a, b] has
    the PSF centred at (b / phases - 0.5, a / phases - 0.5) px from the stamp's centre pixel.
    """
    size = 2 * half + 1
    table = np.empty((phases + 1, phases + 1, size, size), np.float32)
    for a in range(phases + 1):
        for b in range(phases + 1):
            table[a, b] = psf.drawImage(nx=size, ny=size, scale=1.0,
                                        offset=(b / phases - 0.5, a / phases - 0.5)).array
    return table


def add_from_table(canvas: np.ndarray, table: np.ndarray, x: np.ndarray, y: np.ndarray, flux: np.ndarray) -> None:
    """Add stars to ``canvas`` by bilinear blending of the table's four nearest phases.

    A blend of stamps has the blend of their first moments, so each star's centroid is
    exactly (x, y) (0-based pixel coordinates) up to the stamp's truncation.
    """
    ny, nx = canvas.shape
    phases = table.shape[0] - 1
    half = table.shape[2] // 2
    d = np.arange(-half, half + 1)
    for start in range(0, len(x), TABLE_CHUNK):
        sl = slice(start, start + TABLE_CHUNK)
        xs, ys, fs = x[sl], y[sl], flux[sl]
        ic, jc = np.rint(xs).astype(int), np.rint(ys).astype(int)
        tx, ty = (xs - ic + 0.5) * phases, (ys - jc + 0.5) * phases
        bx, by = np.minimum(tx.astype(int), phases - 1), np.minimum(ty.astype(int), phases - 1)
        wx, wy = (tx - bx)[:, None, None], (ty - by)[:, None, None]
        stamps = ((1 - wx) * (1 - wy) * table[by, bx] + wx * (1 - wy) * table[by, bx + 1]
                  + (1 - wx) * wy * table[by + 1, bx] + wx * wy * table[by + 1, bx + 1]) * fs[:, None, None]
        jj = jc[:, None, None] + d[None, :, None]
        ii = ic[:, None, None] + d[None, None, :]
        jj, ii = np.broadcast_to(jj, stamps.shape), np.broadcast_to(ii, stamps.shape)
        ok = (ii >= 0) & (ii < nx) & (jj >= 0) & (jj < ny)
        np.add.at(canvas, (jj[ok], ii[ok]), stamps[ok].astype(canvas.dtype))


def draw_object(full: galsim.Image, prof: galsim.GSObject, x: float, y: float, half: int) -> None:
    """Draw one profile centred at 0-based (x, y) onto the part of ``full`` within ``half`` px."""
    galsim = import_galsim()
    ic, jc = int(round(x)), int(round(y))
    bounds = galsim.BoundsI(ic - half, ic + half, jc - half, jc + half) & full.bounds
    if not bounds.isDefined():
        return
    prof.drawImage(image=full[bounds], add_to_image=True, center=galsim.PositionD(x, y))


def add_galaxies(full: galsim.Image, scene: Scene, psf: galsim.GSObject, *, rng: np.random.Generator) -> int:
    """GalSim Sersic galaxies (not in the catalog) convolved with the PSF; returns how many."""
    galsim = import_galsim()
    ny, nx = scene.shape
    n = int(rng.poisson(scene.galaxy_density_per_deg2 * scene.area_deg2))
    mags = power_law_magnitudes(n, *GALAXY_MAG_RANGE, GALAXY_COUNT_SLOPE, rng)
    flux = scene.exptime_s * 10.0 ** (-0.4 * (mags - scene.zero_point_mag))
    hlr = np.exp(rng.uniform(*np.log(GALAXY_HLR_RANGE_ARCSEC), n)) / scene.scale_arcsec
    e = rng.uniform(0.0, GALAXY_MAX_E, n)
    angle = rng.uniform(0.0, 180.0, n)
    index = rng.choice(GALAXY_SERSIC_N, n)
    x, y = rng.uniform(-0.5, nx - 0.5, n), rng.uniform(-0.5, ny - 0.5, n)
    for k in range(n):
        if index[k] == 1.0:
            gal = galsim.Exponential(half_light_radius=hlr[k])
        elif index[k] == 4.0:
            gal = galsim.DeVaucouleurs(half_light_radius=hlr[k], trunc=GALAXY_TRUNCATION_HLR * hlr[k])
        else:
            gal = galsim.Sersic(n=index[k], half_light_radius=hlr[k], trunc=GALAXY_TRUNCATION_HLR * hlr[k])
        gal = gal.shear(e=e[k], beta=angle[k] * galsim.degrees).withFlux(flux[k])
        half = int(np.clip(math.ceil(4.0 * hlr[k] * (1.0 + e[k]) + 2.0 * scene.fwhm_px), 8, 96))
        draw_object(full, galsim.Convolve(gal, psf), x[k], y[k], half)
    return n


def add_satellite(canvas: np.ndarray, scene: Scene, *, rng: np.random.Generator) -> dict[str, float]:
    """A satellite trail: a straight line across the frame with a Gaussian profile of the PSF's width."""
    ny, nx = canvas.shape
    i0, j0 = rng.uniform(0.3, 0.7) * nx, rng.uniform(0.3, 0.7) * ny
    theta = rng.uniform(0.0, math.pi)
    sigma = scene.fwhm_px / FWHM_PER_SIGMA
    w = int(math.ceil(5.0 * sigma)) + 1
    c, s = math.cos(theta), math.sin(theta)
    if abs(c) >= abs(s):  # along columns: one centre row per column
        ii = np.arange(nx)
        jc = j0 + (ii - i0) * s / c
        k = np.arange(-int(math.ceil(w / abs(c))), int(math.ceil(w / abs(c))) + 1)
        jj = np.rint(jc)[:, None] + k[None, :]
        dist = (jj - jc[:, None]) * abs(c)
        ii = np.broadcast_to(ii[:, None], jj.shape)
    else:
        jj = np.arange(ny)
        ic = i0 + (jj - j0) * c / s
        k = np.arange(-int(math.ceil(w / abs(s))), int(math.ceil(w / abs(s))) + 1)
        ii = np.rint(ic)[:, None] + k[None, :]
        dist = (ii - ic[:, None]) * abs(s)
        jj = np.broadcast_to(jj[:, None], ii.shape)
    ok = (ii >= 0) & (ii < nx) & (jj >= 0) & (jj < ny)
    canvas[jj[ok].astype(int), ii[ok].astype(int)] += (SATELLITE_PEAK_ADU * np.exp(-0.5 * (dist[ok] / sigma) ** 2)
                                                        ).astype(canvas.dtype)
    return {"i0": i0, "j0": j0, "angle_deg": math.degrees(theta), "peak_adu": SATELLITE_PEAK_ADU}


def bleed(canvas: np.ndarray, full_well: float, centres: list[tuple[int, int, int]]) -> int:
    """Bleed trails: charge above ``full_well`` flows up and down its column (conserved).

    ``centres`` are (i, j, half) of saturated stars; in each column of each star's box the
    excess over the full well is taken out and spread half up, half down, filling pixels to
    the full well outwards from the saturated run. Returns the number of trail pixels.
    """
    ny, _ = canvas.shape
    filled = 0
    for ic, jc, half in centres:
        j_lo, j_hi = max(jc - half, 0), min(jc + half + 1, ny)
        for col in range(max(ic - half, 0), min(ic + half + 1, canvas.shape[1])):
            column = canvas[:, col]
            over = np.nonzero(column[j_lo:j_hi] > full_well)[0]
            if over.size == 0:
                continue
            top, bottom = j_lo + over[0], j_lo + over[-1]
            excess = float(np.sum(column[top:bottom + 1] - full_well, where=column[top:bottom + 1] > full_well))
            column[top:bottom + 1] = np.minimum(column[top:bottom + 1], full_well)
            for direction, share in ((-1, 0.5 * excess), (1, 0.5 * excess)):
                rows = np.arange(top - 1, -1, -1) if direction < 0 else np.arange(bottom + 1, ny)
                room = np.maximum(full_well - column[rows], 0.0)
                cum = np.cumsum(room)
                n_full = int(np.searchsorted(cum, share))
                column[rows[:n_full]] = full_well
                if n_full < rows.size:
                    column[rows[n_full]] += share - (cum[n_full - 1] if n_full else 0.0)
                filled += n_full
    return filled


def photographic_response(exposure: np.ndarray, scene: Scene, *, rng: np.random.Generator) -> np.ndarray:
    """Scan values of a plate: density = fog + gamma log10(1 + E / E0), clipped at the maximum density.

    E0 is PLATE_E0_SKY times the sky, so the sky sits on the toe of the curve; grain noise
    (PLATE_GRAIN_SIGMA_DENSITY) is added in density; the maximum density maps to
    PLATE_SCAN_MAX_ADU, so bright stars have flat cores whose size grows with brightness.
    """
    e0 = PLATE_E0_SKY * scene.sky_adu
    density = scene.plate_fog_density + scene.plate_gamma * np.log10(1.0 + np.maximum(exposure, 0.0) / e0)
    density += rng.normal(0.0, PLATE_GRAIN_SIGMA_DENSITY, density.shape).astype(density.dtype)
    return np.clip(density, 0.0, scene.plate_max_density) / scene.plate_max_density * PLATE_SCAN_MAX_ADU


def cosmic_rays(shape: tuple[int, int], n: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cosmic-ray pixels (i, j, level ADU, event index): points and short worms, not PSF-convolved."""
    ny, nx = shape
    out_i, out_j, out_v, out_k = [], [], [], []
    for k in range(n):
        i0, j0 = rng.uniform(0, nx - 1), rng.uniform(0, ny - 1)
        if rng.uniform() < CR_POINT_FRACTION:
            length = rng.choice([0.0, 1.0])
        else:
            length = rng.uniform(*CR_TRACK_LENGTH_PX)
        angle = rng.uniform(0.0, 2.0 * math.pi)
        t = np.arange(0.0, length + 0.5, 0.5)
        wiggle = np.cumsum(rng.normal(0.0, 0.15, t.size))  # worms: the track bends a little
        ii = np.rint(i0 + t * math.cos(angle) - wiggle * math.sin(angle)).astype(int)
        jj = np.rint(j0 + t * math.sin(angle) + wiggle * math.cos(angle)).astype(int)
        pix = np.unique(np.stack([ii, jj]), axis=1)
        ok = (pix[0] >= 0) & (pix[0] < nx) & (pix[1] >= 0) & (pix[1] < ny)
        pix = pix[:, ok]
        out_i.append(pix[0])
        out_j.append(pix[1])
        out_v.append(rng.uniform(*CR_LEVEL_ADU, pix.shape[1]))
        out_k.append(np.full(pix.shape[1], k))
    cat = lambda parts, dt: np.concatenate(parts).astype(dt) if parts else np.zeros(0, dt)  # noqa: E731
    return cat(out_i, int), cat(out_j, int), cat(out_v, float), cat(out_k, int)
