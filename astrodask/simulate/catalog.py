"""Synthetic Gaia DR3-like reference catalogs: :func:`synthetic_gaia_catalog` and its models.

Stars uniform on the sphere over a footprint, power-law magnitudes, proper motions and
parallaxes of a high-latitude field with a few fast stars, Gaia DR3-like errors and
2-parameter solutions at the faint end, real ``source_id`` HEALPix encoding; archive column
names and units.  Gaia's zero point, epoch and source_id layout come from
:mod:`astrodask.constants`.
"""

from __future__ import annotations

import math

import numpy as np
from astropy import units as u
from astropy.table import Table

from astrodask.constants import GAIA_DR3_EPOCH, GAIA_G_ZERO_POINT, GAIA_HEALPIX_LEVEL, GAIA_SOURCE_ID_SHIFT
from astrodask.errors import ConfigError
from astrodask.reference.healpix import healpix_nested_index
from astrodask.simulate._checks import check_positive
from astrodask.sphere import cap_area_deg2, offset_positions
from astrodask.simulate.constants import DEFAULT_MAG_LIMIT, DEFAULT_STAR_DENSITY_PER_DEG2
from astrodask.solve.tpv import tangent_plane

__all__ = ["power_law_magnitudes", "synthetic_gaia_catalog"]

#: Default bright limit of a synthetic catalog, G mag.
DEFAULT_BRIGHT_LIMIT: float = 6.0
#: Slope of the cumulative star counts, d log10 N / dG, dex per mag (high galactic latitude).
DEFAULT_COUNT_SLOPE_DEX_PER_MAG: float = 0.32
#: Mean proper motion of the field population (pmra, pmdec), mas/yr.
PM_MEAN_MASYR: tuple[float, float] = (-2.5, -3.5)
#: Proper-motion dispersion per axis at G = PM_SIGMA_REF_MAG, mas/yr.
PM_SIGMA_MASYR: float = 5.0
#: Magnitude at which the proper-motion dispersion is PM_SIGMA_MASYR, G mag.
PM_SIGMA_REF_MAG: float = 18.0
#: Growth of the proper-motion dispersion towards bright (nearby) stars, dex per mag.
PM_SIGMA_SLOPE_DEX_PER_MAG: float = 0.1
#: Fraction of fast (nearby or halo) stars.
FAST_STAR_FRACTION: float = 0.005
#: Range of total proper motion of the fast stars (log-uniform), mas/yr.
FAST_STAR_PM_MASYR: tuple[float, float] = (50.0, 1000.0)
#: Typical tangential velocity converting proper motion to parallax, km/s.
TANGENTIAL_VELOCITY_KMS: float = 50.0
#: Parallax of a field star at G = PM_SIGMA_REF_MAG, mas (grows like the pm dispersion).
PARALLAX_REF_MAS: float = 0.3
#: Log-normal scatter of the parallaxes about that trend (natural log).
PARALLAX_SCATTER_LN: float = 0.5
#: Astronomical unit per year in km/s (converts mas/yr and mas to km/s).
AU_PER_YR_KMS: float = 4.740470446
#: Largest fraction of stars with a 2-parameter solution (no pm, no parallax) at the faint end.
TWO_PARAMETER_MAX_FRACTION: float = 0.5
#: Magnitude where the 2-parameter fraction reaches half its maximum, G mag.
TWO_PARAMETER_MID_MAG: float = 20.3
#: Width of the logistic 2-parameter fraction, mag.
TWO_PARAMETER_WIDTH_MAG: float = 0.35
#: Position errors of 2-parameter solutions are this many times larger.
TWO_PARAMETER_ERROR_FACTOR: float = 4.0
#: Gaia DR3 parallax error model sigma^2 = c0 + c1 z + c2 z^2 (uas^2), z = 10**(0.4 (max(G, g0) - 15)).
GAIA_PLX_ERROR_COEFFS_UAS2: tuple[float, float, float] = (40.0, 800.0, 30.0)
#: Bright-end floor of the magnitude used by the error model, G mag.
GAIA_ERROR_BRIGHT_MAG: float = 13.0
#: Position errors relative to the parallax error, (ra_error, dec_error).
GAIA_POSITION_ERROR_RATIO: tuple[float, float] = (0.8, 0.7)
#: Log-normal scatter of the individual errors, dex.
GAIA_ERROR_SCATTER_DEX: float = 0.1


def power_law_magnitudes(n: int, bright: float, faint: float, slope: float,
                         rng: np.random.Generator) -> np.ndarray:
    """``n`` magnitudes between ``bright`` and ``faint`` with counts ``N(<m) ~ 10**(slope m)``.

    Parameters
    ----------
    n
        How many.
    bright, faint
        Limits, mag.
    slope
        d log10 N / dm, dex per mag (the differential counts rise the same way).
    rng
        Random generator (one uniform draw per magnitude).
    """
    lo, hi = 10.0 ** (slope * bright), 10.0 ** (slope * faint)
    return np.log10(lo + rng.uniform(0.0, 1.0, n) * (hi - lo)) / slope


def synthetic_gaia_catalog(ra_deg: float, dec_deg: float, *, rng: np.random.Generator,
                           radius_deg: float | None = None, width_deg: float | None = None,
                           height_deg: float | None = None,
                           density_per_deg2: float = DEFAULT_STAR_DENSITY_PER_DEG2,
                           mag_limit: float = DEFAULT_MAG_LIMIT,
                           bright_limit: float = DEFAULT_BRIGHT_LIMIT,
                           count_slope_dex_per_mag: float = DEFAULT_COUNT_SLOPE_DEX_PER_MAG,
                           ref_epoch: float = GAIA_DR3_EPOCH) -> Table:
    """A Gaia DR3-like catalog of stars uniform on the sphere over a footprint.

    Parameters
    ----------
    ra_deg, dec_deg
        Centre of the footprint, degrees.
    rng
        Random generator.
    radius_deg
        Footprint: a cone of this radius, degrees; or give ``width_deg`` and ``height_deg``.
    width_deg, height_deg
        Footprint: the rectangle ``|xi| <= width/2``, ``|eta| <= height/2`` in the gnomonic
        (TAN) tangent plane at the centre, xi towards east and eta towards north, degrees
        (the intermediate world coordinates of a TAN WCS with CRVAL at the centre).
    density_per_deg2
        Mean number of stars between ``bright_limit`` and ``mag_limit`` per square degree
        of sky; the count is Poisson.
    mag_limit, bright_limit
        Faint and bright limits, G mag.
    count_slope_dex_per_mag
        Cumulative counts rise as ``N(<G) ~ 10**(slope * G)`` (so do the differential counts).
    ref_epoch
        Epoch of the positions, Julian years.

    Returns
    -------
    astropy.table.Table
        Gaia archive columns and units: ``source_id`` (int64, level-12 nested HEALPix
        index of (ra, dec) times 2**35 plus a running number from 1), ``ra``, ``dec``
        (deg), ``ra_error``, ``dec_error`` (mas, Gaia DR3-like vs G), ``pmra``,
        ``pmdec`` (mas/yr, ``pmra`` includes cos(dec)), ``parallax`` (mas),
        ``ref_epoch`` (yr), ``phot_g_mean_mag`` (mag), ``phot_g_mean_flux`` (e-/s).
        Faint stars are partly 2-parameter solutions: NaN ``pmra``, ``pmdec``,
        ``parallax``.  Sorted by ``source_id``; parameters in ``meta``.
    """
    check_positive("density_per_deg2", density_per_deg2, allow_zero=True)
    if not bright_limit < mag_limit:
        raise ConfigError(f"bright_limit = {bright_limit!r} must be brighter (smaller) than "
                          f"mag_limit = {mag_limit!r}")
    if not -90.0 <= dec_deg <= 90.0:
        raise ConfigError(f"dec_deg = {dec_deg!r} is out of range: allowed -90 to 90 deg")
    if radius_deg is not None:
        if width_deg is not None or height_deg is not None:
            raise ConfigError("give either radius_deg or width_deg and height_deg, not both")
        check_positive("radius_deg", radius_deg)
        if radius_deg >= 90.0:
            raise ConfigError(f"radius_deg = {radius_deg!r} is out of range: allowed below 90 deg")
        cap_deg = float(radius_deg)
    else:
        if width_deg is None or height_deg is None:
            raise ConfigError("give the footprint: radius_deg, or both width_deg and height_deg")
        check_positive("width_deg", width_deg)
        check_positive("height_deg", height_deg)
        if max(width_deg, height_deg) >= 90.0:
            raise ConfigError(f"width_deg = {width_deg!r}, height_deg = {height_deg!r}: "
                              "allowed below 90 deg")
        cap_deg = math.degrees(math.atan(math.hypot(math.tan(math.radians(width_deg / 2.0)),
                                                    math.tan(math.radians(height_deg / 2.0)))))
    cap_cos = math.cos(math.radians(cap_deg))
    n = int(rng.poisson(density_per_deg2 * cap_area_deg2(cap_deg)))
    rho = np.arccos(rng.uniform(cap_cos, 1.0, n))
    pa = rng.uniform(0.0, 2.0 * np.pi, n)
    ra, dec = offset_positions(ra_deg, dec_deg, rho, pa)
    if radius_deg is None:
        xi, eta = tangent_plane(ra, dec, (ra_deg, dec_deg))
        keep = (np.abs(xi) <= width_deg / 2.0) & (np.abs(eta) <= height_deg / 2.0)
        ra, dec = ra[keep], dec[keep]
    n = ra.size

    s = count_slope_dex_per_mag
    gmag = power_law_magnitudes(n, bright_limit, mag_limit, s, rng)

    two_param = rng.uniform(0.0, 1.0, n) < TWO_PARAMETER_MAX_FRACTION / (
        1.0 + np.exp(-(gmag - TWO_PARAMETER_MID_MAG) / TWO_PARAMETER_WIDTH_MAG))
    z = 10.0 ** (0.4 * (np.maximum(gmag, GAIA_ERROR_BRIGHT_MAG) - 15.0))
    c0, c1, c2 = GAIA_PLX_ERROR_COEFFS_UAS2
    plx_error_mas = np.sqrt(c0 + c1 * z + c2 * z * z) / 1000.0
    factor = np.where(two_param, TWO_PARAMETER_ERROR_FACTOR, 1.0)
    scatter = 10.0 ** (GAIA_ERROR_SCATTER_DEX * rng.standard_normal((2, n)))
    ra_error = GAIA_POSITION_ERROR_RATIO[0] * plx_error_mas * factor * scatter[0]
    dec_error = GAIA_POSITION_ERROR_RATIO[1] * plx_error_mas * factor * scatter[1]

    growth = 10.0 ** (PM_SIGMA_SLOPE_DEX_PER_MAG * (PM_SIGMA_REF_MAG - gmag))
    pmra = PM_MEAN_MASYR[0] + PM_SIGMA_MASYR * growth * rng.standard_normal(n)
    pmdec = PM_MEAN_MASYR[1] + PM_SIGMA_MASYR * growth * rng.standard_normal(n)
    parallax = PARALLAX_REF_MAS * growth * np.exp(PARALLAX_SCATTER_LN * rng.standard_normal(n))
    fast = rng.uniform(0.0, 1.0, n) < FAST_STAR_FRACTION
    lo_pm, hi_pm = np.log(FAST_STAR_PM_MASYR[0]), np.log(FAST_STAR_PM_MASYR[1])
    pm_total = np.exp(rng.uniform(lo_pm, hi_pm, n))
    pm_angle = rng.uniform(0.0, 2.0 * np.pi, n)
    pmra = np.where(fast, pm_total * np.sin(pm_angle), pmra)
    pmdec = np.where(fast, pm_total * np.cos(pm_angle), pmdec)
    parallax = np.where(fast, pm_total / (AU_PER_YR_KMS * TANGENTIAL_VELOCITY_KMS), parallax)
    parallax = parallax + plx_error_mas * rng.standard_normal(n)
    for values in (pmra, pmdec, parallax):
        values[two_param] = np.nan

    hp = healpix_nested_index(ra, dec, level=GAIA_HEALPIX_LEVEL)
    order = np.lexsort((gmag, hp))
    hp_sorted = hp[order]
    first = np.r_[0, np.flatnonzero(np.diff(hp_sorted)) + 1]
    counts = np.diff(np.r_[first, n])
    running = np.arange(n) - np.repeat(first, counts) + 1
    source_id = (hp_sorted << GAIA_SOURCE_ID_SHIFT) + running

    table = Table(meta={
        "generator": "astrodask.simulate.synthetic_gaia_catalog",
        "centre_deg": [float(ra_deg), float(dec_deg)],
        "footprint": ({"radius_deg": float(radius_deg)} if radius_deg is not None
                      else {"width_deg": float(width_deg), "height_deg": float(height_deg)}),
        "density_per_deg2": float(density_per_deg2),
        "mag_limit": float(mag_limit),
        "bright_limit": float(bright_limit),
        "count_slope_dex_per_mag": float(s),
    })
    table["source_id"] = source_id.astype(np.int64)
    table["ra"] = u.Quantity(ra[order], u.deg)
    table["dec"] = u.Quantity(dec[order], u.deg)
    table["ra_error"] = u.Quantity(ra_error[order], u.mas)
    table["dec_error"] = u.Quantity(dec_error[order], u.mas)
    table["pmra"] = u.Quantity(pmra[order], u.mas / u.yr)
    table["pmdec"] = u.Quantity(pmdec[order], u.mas / u.yr)
    table["parallax"] = u.Quantity(parallax[order], u.mas)
    table["ref_epoch"] = u.Quantity(np.full(n, float(ref_epoch)), u.yr)
    table["phot_g_mean_mag"] = u.Quantity(gmag[order], u.mag)
    table["phot_g_mean_flux"] = u.Quantity(10.0 ** (-0.4 * (gmag[order] - GAIA_G_ZERO_POINT)),
                                           u.electron / u.s)
    return table
