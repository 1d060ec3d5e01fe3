"""The true stars of a GalSim scene and their Gaia-like catalog: :func:`make_stars`, :func:`catalog_table`.

Synthetic stars (uniform in a cone, power-law magnitudes, Gaussian proper motions plus a few
fast stars), optionally seeded at the centre by a real catalog's crowding; catalog values with
Gaia DR3- or DR2-like errors and real ``source_id`` HEALPix encoding.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
from astropy.table import Table

from astrodask.constants import GAIA_HEALPIX_LEVEL, GAIA_SOURCE_ID_SHIFT
from astrodask.reference.catalog import read_catalog
from astrodask.reference.healpix import healpix_nested_index
from astrodask.sphere import cap_area_deg2, gnomonic, inverse_gnomonic
from astrodask.simulate.catalog import power_law_magnitudes
from astrodask.simulate.constants import MAS_PER_DEG
from astrodask.simulate.galsim_scene import RELEASE_EPOCH_YR, RELEASE_ERROR_FACTOR, Scene, half_diagonal_deg

log = logging.getLogger(__name__)

__all__ = ["catalog_table", "make_stars", "shared_data_dir"]

#: Fraction of fast (nearby) stars and their proper-motion range (log-uniform), mas/yr.
FAST_STAR_FRACTION: float = 0.03
FAST_PM_RANGE_MASYR: tuple[float, float] = (20.0, 300.0)
#: Gaia DR3-like position error sigma(G) = floor + slope * 10**(0.4 (G - 20)), mas.
POSITION_ERROR_FLOOR_MAS: float = 0.02
POSITION_ERROR_AT_G20_MAS: float = 0.5
#: Magnitude at which the position error is POSITION_ERROR_AT_G20_MAS above the floor, G mag.
POSITION_ERROR_REF_MAG: float = 20.0
#: Proper-motion errors relative to the position errors, (mas/yr) / mas.
PM_ERROR_RATIO: float = 1.2
#: Where the real sky data lives (``ASTRODASK_SHARED_DATA`` or ``../shared/data`` beside the repository).
SHARED_DATA_ENV: str = "ASTRODASK_SHARED_DATA"


def _cone_positions(ra_deg: float, dec_deg: float, radius_deg: float, n: int,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` positions uniform on the sphere within ``radius_deg`` of (ra, dec)."""
    cos_r = math.cos(math.radians(radius_deg))
    rho = np.arccos(rng.uniform(cos_r, 1.0, n))
    pa = rng.uniform(0.0, 2.0 * math.pi, n)
    return inverse_gnomonic(np.tan(rho) * np.sin(pa), np.tan(rho) * np.cos(pa), ra_deg, dec_deg)


def _proper_motions(n: int, sigma_masyr: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Field proper motions: Gaussian per axis plus a few fast stars (log-uniform total, random direction)."""
    pmra, pmdec = rng.normal(0.0, sigma_masyr, n), rng.normal(0.0, sigma_masyr, n)
    fast = rng.uniform(0.0, 1.0, n) < FAST_STAR_FRACTION
    total = np.exp(rng.uniform(*np.log(FAST_PM_RANGE_MASYR), fast.sum()))
    angle = rng.uniform(0.0, 2.0 * math.pi, fast.sum())
    pmra[fast], pmdec[fast] = total * np.sin(angle), total * np.cos(angle)
    return pmra, pmdec


def shared_data_dir() -> Path | None:
    """The real sky data folder (``$ASTRODASK_SHARED_DATA`` or ``../shared/data`` beside the repository), if present."""
    env = os.environ.get(SHARED_DATA_ENV)
    path = Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data"
    return path if path.is_dir() else None


def _real_field(path: str, scene: Scene) -> tuple[dict[str, np.ndarray], tuple[float, float]]:
    """A real catalog's stars recentred onto the scene (used once: never tiled).

    The real field's inner tangent-plane box (about its own centre) is moved to the scene's
    centre. Repeating it to cover a larger frame would repeat its asterisms, which a
    pattern matcher can lock onto (a wrong solution one copy away): outside the box the stars
    are synthetic (:func:`make_stars`).

    Returns
    -------
    columns, (half_width_deg, half_height_deg)
        ``ra``, ``dec``, ``mag``, ``pmra``, ``pmdec``, ``parallax``, and the box's half sizes.
    """
    real = read_catalog(path)
    ra, dec = np.asarray(real["ra"], float), np.asarray(real["dec"], float)
    ra0 = float(np.degrees(np.arctan2(np.mean(np.sin(np.radians(ra))), np.mean(np.cos(np.radians(ra)))))) % 360.0
    dec0 = float(np.median(dec))
    xi, eta = (np.degrees(v) for v in gnomonic(ra, dec, ra0, dec0))
    # the inner box of the field (a RA/Dec box is a trapezoid in the tangent plane)
    x_lo, x_hi = np.quantile(xi, [0.01, 0.99])
    y_lo, y_hi = np.quantile(eta, [0.002, 0.998])
    inside = (xi >= x_lo) & (xi < x_hi) & (eta >= y_lo) & (eta < y_hi)
    xi, eta = xi[inside] - 0.5 * (x_lo + x_hi), eta[inside] - 0.5 * (y_lo + y_hi)
    out = {k: np.nan_to_num(np.asarray(real[k], float)[inside]) for k in ("pmra", "pmdec", "parallax")}
    out["mag"] = np.asarray(real["phot_g_mean_mag"], float)[inside]
    out["ra"], out["dec"] = inverse_gnomonic(np.radians(xi), np.radians(eta), scene.ra_deg, scene.dec_deg)
    return out, (0.5 * (x_hi - x_lo), 0.5 * (y_hi - y_lo))


def make_stars(scene: Scene, *, rng: np.random.Generator) -> Table:
    """The true stars of a scene at the catalog's reference epoch, and their catalog values.

    Catalog stars (``bright_mag`` to ``faint_mag``) fill a cone of the frame's half
    diagonal plus ``catalog_margin_deg``; fainter stars (to ``faint_mag +
    extra_depth_mag``, not in the catalog) fill the frame's cone only.

    Returns
    -------
    astropy.table.Table
        ``ra_true``, ``dec_true`` (deg, at the catalog's ref_epoch), ``pmra_true``,
        ``pmdec_true`` (mas/yr), ``parallax_true`` (mas), ``phot_g_mean_mag``,
        ``in_catalog`` and the catalog's ``ra``, ``dec``, ``ra_error``, ``dec_error``,
        ``pmra``, ``pmdec``, ``parallax`` (noisy, Gaia-like), ``source_id``.
    """
    r_frame = half_diagonal_deg(scene) + 0.01
    r_cat = half_diagonal_deg(scene) + scene.catalog_margin_deg
    wanted = rng.poisson(scene.star_density_per_deg2 * cap_area_deg2(r_cat))
    ra, dec = _cone_positions(scene.ra_deg, scene.dec_deg, r_cat, wanted, rng)
    mag = power_law_magnitudes(wanted, scene.bright_mag, scene.faint_mag, scene.lf_slope, rng)
    cols = {k: np.zeros(0) for k in ("ra", "dec", "mag", "pmra", "pmdec", "parallax")}
    seeded = False
    if scene.seed_catalog is not None and Path(scene.seed_catalog).is_file():
        # real stars in their box at the centre; there, synthetic stars only fainter than the real ones
        cols, (half_w, half_h) = _real_field(scene.seed_catalog, scene)
        cols = {k: v[cols["mag"] <= scene.faint_mag] for k, v in cols.items()}
        xi, eta = (np.degrees(v) for v in gnomonic(ra, dec, scene.ra_deg, scene.dec_deg))
        in_box = (np.abs(xi) < half_w) & (np.abs(eta) < half_h)
        top_up = in_box & (mag > float(np.max(cols["mag"], initial=scene.bright_mag)))
        # top the box up to the wanted density (to faint_mag) only, not beyond
        wanted_box = scene.star_density_per_deg2 * 4.0 * half_w * half_h
        fraction = np.clip((wanted_box - len(cols["mag"])) / max(int(top_up.sum()), 1), 0.0, 1.0)
        keep = ~in_box | (top_up & (rng.uniform(0.0, 1.0, len(mag)) < fraction))
        ra, dec, mag = ra[keep], dec[keep], mag[keep]
        seeded = True
    elif scene.seed_catalog is not None:
        log.warning("scene %s: seed catalog %s not found; all stars synthetic", scene.name, scene.seed_catalog)
    n_top = len(mag)
    n_faint = rng.poisson(scene.star_density_per_deg2 * cap_area_deg2(r_frame)
                          * (10.0 ** (scene.lf_slope * scene.extra_depth_mag) - 1.0))
    ra_f, dec_f = _cone_positions(scene.ra_deg, scene.dec_deg, r_frame, n_faint, rng)
    mag_f = power_law_magnitudes(n_faint, scene.faint_mag, scene.faint_mag + scene.extra_depth_mag, scene.lf_slope, rng)
    n_syn = n_top + n_faint
    pmra, pmdec = _proper_motions(n_syn, scene.pm_sigma_masyr, rng)
    plx = np.exp(rng.normal(np.log(0.5), 0.7, n_syn))
    t = Table()
    t["ra_true"] = np.concatenate([cols["ra"], ra, ra_f])
    t["dec_true"] = np.concatenate([cols["dec"], dec, dec_f])
    t["pmra_true"] = np.concatenate([cols["pmra"], pmra])
    t["pmdec_true"] = np.concatenate([cols["pmdec"], pmdec])
    t["parallax_true"] = np.concatenate([cols["parallax"], plx])
    t["phot_g_mean_mag"] = np.concatenate([cols["mag"], mag, mag_f])
    n = len(t)
    t["in_catalog"] = t["phot_g_mean_mag"] <= scene.faint_mag
    # Gaia-like catalog values
    factor = RELEASE_ERROR_FACTOR[scene.catalog_release]
    sigma = factor * (POSITION_ERROR_FLOOR_MAS + POSITION_ERROR_AT_G20_MAS
                      * 10.0 ** (0.4 * (np.asarray(t["phot_g_mean_mag"]) - POSITION_ERROR_REF_MAG)))
    e_ra = sigma * np.exp(rng.normal(0.0, 0.1, n))
    e_dec = sigma * np.exp(rng.normal(0.0, 0.1, n))
    d_ra, d_dec = rng.normal(0.0, 1.0, n) * e_ra, rng.normal(0.0, 1.0, n) * e_dec
    cos_dec = np.cos(np.radians(np.asarray(t["dec_true"])))
    t["ra"] = (np.asarray(t["ra_true"]) + d_ra / MAS_PER_DEG / cos_dec) % 360.0
    t["dec"] = np.asarray(t["dec_true"]) + d_dec / MAS_PER_DEG
    t["ra_error"], t["dec_error"] = e_ra, e_dec
    t["pmra"] = np.asarray(t["pmra_true"]) + rng.normal(0.0, 1.0, n) * PM_ERROR_RATIO * e_ra
    t["pmdec"] = np.asarray(t["pmdec_true"]) + rng.normal(0.0, 1.0, n) * PM_ERROR_RATIO * e_dec
    t["parallax"] = np.asarray(t["parallax_true"]) + rng.normal(0.0, 1.0, n) * sigma
    hp = healpix_nested_index(np.asarray(t["ra"]), np.asarray(t["dec"]), level=GAIA_HEALPIX_LEVEL)
    t["source_id"] = (np.asarray(hp, np.int64) << GAIA_SOURCE_ID_SHIFT) + np.arange(1, n + 1, dtype=np.int64)
    t.meta["seeded_from"] = str(scene.seed_catalog) if seeded else "synthetic"
    return t


def catalog_table(stars: Table, scene: Scene) -> Table:
    """The Gaia-like catalog (archive column names and units) of the stars with ``in_catalog``.

    ``"dr3"``: positions at 2016.0 with proper motions and parallaxes; ``"dr2"``: at 2015.5,
    no pmra/pmdec/parallax columns (like a DR2 positions-only extract).
    """
    s = stars[np.asarray(stars["in_catalog"], bool)]
    cat = Table()
    cat["source_id"] = np.asarray(s["source_id"], np.int64)
    cat["ra"] = np.asarray(s["ra"], float)
    cat["dec"] = np.asarray(s["dec"], float)
    cat["ra_error"] = np.asarray(s["ra_error"], float)
    cat["dec_error"] = np.asarray(s["dec_error"], float)
    units = {"ra": "deg", "dec": "deg", "ra_error": "mas", "dec_error": "mas"}
    if scene.catalog_release == "dr3":
        for key, unit in (("pmra", "mas / yr"), ("pmdec", "mas / yr"), ("parallax", "mas")):
            cat[key] = np.asarray(s[key], float)
            units[key] = unit
    cat["ref_epoch"] = np.full(len(s), RELEASE_EPOCH_YR[scene.catalog_release])
    cat["phot_g_mean_mag"] = np.asarray(s["phot_g_mean_mag"], float)
    units.update(ref_epoch="yr", phot_g_mean_mag="mag")
    for key, unit in units.items():
        cat[key].unit = unit
    cat.meta.update(release=f"Gaia {scene.catalog_release.upper()}-like (synthetic, astrodask.simulate.galsim_stars)",
                    mag_limit=scene.faint_mag, scene=scene.name, seeded_from=stars.meta.get("seeded_from", ""))
    return cat
