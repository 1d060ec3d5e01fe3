"""Pixel-integrated profiles with exact centres: the drawing engine of :mod:`astrodask.simulate.render`.

:func:`add_profiles` adds point-symmetric elliptical profiles (Moffat stars, Sersic
galaxies), sub-sampled and summed per pixel, batched by stamp size; the helpers size the
stamps and shape the ellipses.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

#: Sub-samples per pixel along each axis when integrating profiles over pixels.
DEFAULT_SUPERSAMPLE: int = 5
#: Stamp half-sizes, pixels; each object gets the smallest whose edge level is below the threshold.
STAMP_HALF_SIZES_PX: tuple[int, ...] = (6, 8, 12, 16, 24, 32, 48, 64, 96, 128)
#: A stamp is large enough when the profile at its edge is below this, ADU per pixel.
STAMP_EDGE_THRESHOLD_ADU: float = 0.05
#: Largest number of sub-sampled profile values evaluated at once (memory bound).
MAX_BATCH_SAMPLES: int = 8_000_000

Profile = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def add_profiles(image: np.ndarray, x: np.ndarray, y: np.ndarray, flux: np.ndarray,
                  half: np.ndarray, coeffs: np.ndarray, rho2_max: np.ndarray,
                  profile: Profile, supersample: int) -> np.ndarray:
    """Add pixel-integrated, point-symmetric profiles to ``image``; return their peaks.

    Each object ``k`` is a profile ``f(rho^2)`` of the elliptical radius
    ``rho^2 = A dx^2 + B dx dy + C dy^2`` (``coeffs[k] = (A, B, C)``) about its exact
    centre ``(x[k], y[k])``, cut at ``rho2_max[k]`` (where ``f`` reaches 0; it must lie
    within ``half[k]`` pixels of the centre). It is sampled on a ``supersample^2`` grid
    per pixel over a ``(2 half + 1)^2`` stamp around the nearest pixel, summed per pixel
    and scaled to ``flux[k]`` (before cropping at the image edges).  Being symmetric about
    its centre and not truncated by the stamp, each rendered object has its flux-weighted
    centre at ``(x, y)`` up to sampling terms far below 1e-4 px.

    Objects are grouped by stamp size and evaluated in batches (vectorised); stamps are
    scattered into the image with ``np.add.at``.
    """
    ny, nx = image.shape
    flat = image.reshape(-1)
    peaks = np.zeros(x.size, dtype=np.float32)
    for h in np.unique(half):
        group = np.flatnonzero(half == h)
        side = 2 * int(h) + 1
        length = side * supersample
        t = ((np.arange(length) + 0.5) / supersample - 0.5 - h).astype(np.float32)
        offsets = np.arange(-h, h + 1)
        batch = max(1, MAX_BATCH_SAMPLES // (length * length))
        for start in range(0, group.size, batch):
            idx = group[start:start + batch]
            ic, jc = np.rint(x[idx]).astype(np.int64), np.rint(y[idx]).astype(np.int64)
            fx = (ic - x[idx]).astype(np.float32)[:, None, None]
            fy = (jc - y[idx]).astype(np.float32)[:, None, None]
            dx = t[None, None, :] + fx  # (n, 1, L): columns
            dy = t[None, :, None] + fy  # (n, L, 1): rows
            a, b, c = (coeffs[idx, m].astype(np.float32)[:, None, None] for m in range(3))
            rho2 = b * dx + c * dy
            rho2 *= dy
            rho2 += a * dx * dx
            values = profile(rho2, idx, rho2_max[idx].astype(np.float32)[:, None, None])
            pix = values.reshape(idx.size, side, supersample, side, supersample).sum(axis=4).sum(axis=2)
            total = pix.sum(axis=(1, 2), dtype=np.float64)
            pix *= (flux[idx] / total).astype(np.float32)[:, None, None]
            peaks[idx] = pix.max(axis=(1, 2))
            jj = jc[:, None, None] + offsets[None, :, None]
            ii = ic[:, None, None] + offsets[None, None, :]
            inside = (jj >= 0) & (jj < ny) & (ii >= 0) & (ii < nx)
            np.add.at(flat, (jj * nx + ii)[inside], pix[inside])
    return peaks


def ellipse_coeffs(axis_ratio: np.ndarray, angle_rad: np.ndarray) -> np.ndarray:
    """(A, B, C) of ``rho^2 = q u^2 + v^2 / q``, (u, v) along the major/minor axes.

    ``rho`` is the geometric-mean radius: the physical major and minor radii are
    ``rho / sqrt(q)`` and ``rho * sqrt(q)``.
    """
    q = np.asarray(axis_ratio, dtype=np.float64)
    cs, sn = np.cos(angle_rad), np.sin(angle_rad)
    a = q * cs * cs + sn * sn / q
    b = 2.0 * cs * sn * (q - 1.0 / q)
    c = q * sn * sn + cs * cs / q
    return np.stack(np.broadcast_arrays(a, b, c), axis=-1)


def moffat_alpha(fwhm_px: float, beta: float) -> float:
    """Moffat core width alpha for a given FWHM, pixels."""
    return fwhm_px / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))


def stamp_half_size(flux_adu: np.ndarray, density_at: Callable[[float], float]) -> np.ndarray:
    """Smallest half-size in STAMP_HALF_SIZES_PX whose edge level is below the threshold.

    ``density_at(r)`` is the unit-flux profile (per pixel) at ``r`` pixels along the major axis.
    """
    half = np.full(flux_adu.shape, STAMP_HALF_SIZES_PX[-1], dtype=np.int64)
    for h in reversed(STAMP_HALF_SIZES_PX):
        ok = flux_adu * density_at(float(h)) <= STAMP_EDGE_THRESHOLD_ADU
        half = np.where(ok, h, half)
    return half
