"""What the sky and the sensor add to the stars: galaxies, cosmic rays and hot columns.

Each is drawn from an explicit ``rng``, in the order :func:`astrodask.simulate.render.render_exposure`
asks for them; galaxies are Sersic profiles rendered like the stars
(:func:`astrodask.simulate.profiles.add_profiles`), absent from the catalog.
"""

from __future__ import annotations

import math

import numpy as np
from astropy.table import Table

from astrodask.simulate.catalog import power_law_magnitudes
from astrodask.simulate.constants import FWHM_PER_SIGMA
from astrodask.simulate.profiles import STAMP_HALF_SIZES_PX, add_profiles, ellipse_coeffs

#: Galaxy magnitudes (G-equivalent) are drawn between these limits, mag.
GALAXY_MAG_RANGE: tuple[float, float] = (16.0, 21.0)
#: Slope of cumulative galaxy counts, dex per mag.
GALAXY_COUNT_SLOPE_DEX_PER_MAG: float = 0.45
#: Median half-light radius of a G = 18 galaxy, pixels; scatter (dex); growth towards bright (dex/mag).
GALAXY_RE_PX: tuple[float, float, float] = (3.0, 0.2, 0.1)
#: Range of Sersic indices (uniform).
GALAXY_SERSIC_RANGE: tuple[float, float] = (0.7, 4.0)
#: Range of galaxy axis ratios b/a (uniform).
GALAXY_AXIS_RATIO_RANGE: tuple[float, float] = (0.3, 1.0)
#: Galaxy stamps extend to this many half-light radii along the major axis.
GALAXY_STAMP_RE: float = 6.0
#: Cosmic-ray rate at the sensor, per cm^2 per second.
COSMIC_RAY_RATE_PER_CM2_S: float = 0.03
#: Fraction of cosmic rays that hit (nearly) perpendicular: 1-2 pixel events.
COSMIC_RAY_HIT_FRACTION: float = 0.4
#: Largest length of a cosmic-ray track, pixels.
COSMIC_RAY_MAX_LENGTH_PX: float = 30.0
#: Charge deposited per pixel by a cosmic ray (uniform range), electrons.
COSMIC_RAY_CHARGE_E: tuple[float, float] = (300.0, 3000.0)
#: Pixel-to-pixel variation of the charge along a track (uniform factor range).
COSMIC_RAY_CHARGE_JITTER: tuple[float, float] = (0.7, 1.3)
#: Step along a cosmic-ray track when rasterising it, pixels.
COSMIC_RAY_STEP_PX: float = 0.25
#: Excess level of a hot column (uniform range), ADU per exposure.
HOT_COLUMN_ADU: tuple[float, float] = (50.0, 500.0)
#: Fraction of hot columns that start part-way up the frame (the others span all rows).
HOT_COLUMN_PARTIAL_FRACTION: float = 0.5


def add_galaxies(image: np.ndarray, n: int, *, rng: np.random.Generator, fwhm_px: float,
                  exptime_s: float, zero_point_mag: float, supersample: int) -> Table:
    """Add ``n`` Sersic galaxies (random magnitude, size, index, shape) to ``image`` (ADU)."""
    ny, nx = image.shape
    x = rng.uniform(-0.5, nx - 0.5, n)
    y = rng.uniform(-0.5, ny - 0.5, n)
    mag = power_law_magnitudes(n, *GALAXY_MAG_RANGE, GALAXY_COUNT_SLOPE_DEX_PER_MAG, rng)
    re_med, re_dex, re_slope = GALAXY_RE_PX
    r_e = re_med * 10.0 ** (re_dex * rng.standard_normal(n) + re_slope * (18.0 - mag))
    sersic = rng.uniform(*GALAXY_SERSIC_RANGE, n)
    q = rng.uniform(*GALAXY_AXIS_RATIO_RANGE, n)
    angle = rng.uniform(0.0, np.pi, n)
    flux = exptime_s * 10.0 ** (-0.4 * (mag - zero_point_mag))
    reach = GALAXY_STAMP_RE * r_e / np.sqrt(q) + fwhm_px
    sizes = np.asarray(STAMP_HALF_SIZES_PX)
    half = sizes[np.minimum(np.searchsorted(sizes, reach), sizes.size - 1)]
    rho2_max = (half.astype(np.float64) ** 2) * q
    b_n = 2.0 * sersic - 1.0 / 3.0 + 0.009876 / sersic  # Sersic b_n (Prugniel & Simien 1997)
    soft2 = (fwhm_px / FWHM_PER_SIGMA) ** 2  # crude PSF smoothing of the core

    def sersic_profile(rho2: np.ndarray, idx: np.ndarray, rmax2: np.ndarray) -> np.ndarray:
        inv_n = (0.5 / sersic[idx]).astype(np.float32)[:, None, None]
        k = b_n[idx].astype(np.float32)[:, None, None]
        scale = (1.0 / r_e[idx] ** (1.0 / sersic[idx])).astype(np.float32)[:, None, None]
        soft = np.float32(soft2)
        floor = np.exp(-k * scale * np.power(rmax2 + soft, inv_n))
        values = np.exp(-k * scale * np.power(rho2 + soft, inv_n))
        values -= floor
        return np.maximum(values, np.float32(0.0), out=values)

    coeffs = ellipse_coeffs(q, angle)
    add_profiles(image, x, y, flux, half, coeffs, rho2_max, sersic_profile, supersample)
    galaxies = Table()
    galaxies["i"], galaxies["j"], galaxies["flux_adu"] = x, y, flux
    galaxies["mag"], galaxies["r_e_px"], galaxies["sersic_n"], galaxies["axis_ratio"] = mag, r_e, sersic, q
    return galaxies


def cosmic_ray_pixels(shape: tuple[int, int], n: int, *,
                       rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels (rows, cols) and charges (e-) of ``n`` cosmic rays: short hits and sharp tracks."""
    ny, nx = shape
    hit = rng.uniform(0.0, 1.0, n) < COSMIC_RAY_HIT_FRACTION
    length = np.where(hit, rng.uniform(0.0, 1.0, n), rng.uniform(1.0, COSMIC_RAY_MAX_LENGTH_PX, n))
    x0, y0 = rng.uniform(0.0, nx - 1, n), rng.uniform(0.0, ny - 1, n)
    angle = rng.uniform(0.0, 2.0 * np.pi, n)
    charge = rng.uniform(*COSMIC_RAY_CHARGE_E, n)
    rows, cols, values = [], [], []
    for k in range(n):
        steps = np.arange(0.0, length[k] + COSMIC_RAY_STEP_PX, COSMIC_RAY_STEP_PX)
        ci = np.rint(x0[k] + steps * math.cos(angle[k])).astype(np.int64)
        cj = np.rint(y0[k] + steps * math.sin(angle[k])).astype(np.int64)
        ok = (ci >= 0) & (ci < nx) & (cj >= 0) & (cj < ny)
        flat = np.unique(cj[ok] * nx + ci[ok])
        rows.append(flat // nx)
        cols.append(flat % nx)
        values.append(charge[k] * rng.uniform(*COSMIC_RAY_CHARGE_JITTER, flat.size))
    if n == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0)
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(values)


def draw_hot_columns(shape: tuple[int, int], n: int, *,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Columns, first rows and excess levels (ADU) of ``n`` hot columns (at most one per column)."""
    ny, nx = shape
    hot_cols = rng.choice(nx, size=min(int(n), nx), replace=False)
    partial = rng.uniform(0.0, 1.0, hot_cols.size) < HOT_COLUMN_PARTIAL_FRACTION
    hot_start = rng.integers(0, max(ny // 2, 1), hot_cols.size) * partial
    hot_level = rng.uniform(*HOT_COLUMN_ADU, hot_cols.size)
    return hot_cols, hot_start, hot_level
