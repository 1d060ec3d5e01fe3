"""A whole simulated field in one call (:func:`simulate_field`) and the deterministic demo (:func:`make_demo`).

:func:`simulate_field` chains the other modules: the truth WCS (:mod:`~astrodask.simulate.truth`),
a synthetic catalog (:mod:`~astrodask.simulate.catalog`), the render
(:mod:`~astrodask.simulate.render`), the approximate header (:mod:`~astrodask.simulate.header`)
and the files (:mod:`~astrodask.simulate.files`), plus the reference catalog beside them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from astrodask.config import GaiaConfig
from astrodask.simulate._checks import check_shape
from astrodask.simulate.artefacts import COSMIC_RAY_RATE_PER_CM2_S
from astrodask.simulate.atmosphere import DisplacementField, TruthMapping, TurbulenceSpec, field_for_wcs
from astrodask.simulate.catalog import DEFAULT_COUNT_SLOPE_DEX_PER_MAG, synthetic_gaia_catalog
from astrodask.simulate.constants import (
    CONDOR_PIXEL_SIZE_UM,
    CONDOR_SCALE_ARCSEC,
    CONDOR_SHAPE,
    DEFAULT_DISTORTION_PX,
    DEFAULT_EPOCH_YR,
    DEFAULT_EXPTIME_S,
    DEFAULT_FIELD_DEC_DEG,
    DEFAULT_FIELD_RA_DEG,
    DEFAULT_MAG_LIMIT,
    DEFAULT_POINTING_ERROR_ARCMIN,
    DEFAULT_ROTATION_ERROR_DEG,
    DEFAULT_SCALE_ERROR_FRAC,
    DEFAULT_STAR_DENSITY_PER_DEG2,
)
from astrodask.simulate.files import ExposurePaths, write_exposure
from astrodask.simulate.header import HeaderStyle, approximate_header
from astrodask.simulate.render import render_exposure
from astrodask.simulate.truth import condor_wcs
from astrodask.solve.tpv import tangent_plane

log = logging.getLogger(__name__)

__all__ = ["SimulatedField", "make_demo", "simulate_field"]

#: Margin of the written reference catalog around the footprint, degrees.
DEFAULT_CATALOG_MARGIN_DEG: float = GaiaConfig().margin_deg
#: Stars this much fainter than the catalog limit are rendered too (the sky is deeper than Gaia), mag.
DEFAULT_EXTRA_RENDER_DEPTH_MAG: float = 0.5
#: Default galaxy density for :func:`simulate_field`, per square degree (to GALAXY_MAG_RANGE[1]).
DEFAULT_GALAXY_DENSITY_PER_DEG2: float = 1000.0
#: Hot columns per full Condor frame in :func:`simulate_field` (scaled with the width).
HOT_COLUMNS_PER_CONDOR_FRAME: float = 4.0
#: The demo: a Condor quarter frame (a quarter of each axis) on a high-latitude field.
DEMO_SHAPE: tuple[int, int] = (1597, 2394)
DEMO_RA_DEG: float = DEFAULT_FIELD_RA_DEG
DEMO_DEC_DEG: float = DEFAULT_FIELD_DEC_DEG
DEMO_ROTATION_DEG: float = 0.35
DEMO_DISTORTION_PX: float = 2.0
DEMO_EPOCH_YR: float = 2024.3
DEMO_SEED: int = 20240417


@dataclass(frozen=True)
class SimulatedField:
    """Everything :func:`simulate_field` made.

    Attributes
    ----------
    paths
        The exposure and truth files.
    catalog_path
        The reference catalog (Gaia archive columns, ECSV).
    truth_wcs
        The exact WCS.
    header
        The image header (approximate pointing).
    truth
        The truth table (also in ``paths.truth_table``).
    turbulence
        The atmospheric displacement the stars were rendered with (also in
        ``paths.truth_wcs``), or None.
    """

    paths: ExposurePaths
    catalog_path: Path
    truth_wcs: WCS
    header: fits.Header
    truth: Table
    turbulence: DisplacementField | None = None

    @property
    def truth_mapping(self) -> TruthMapping:
        """The true sky <-> pixel mapping: the truth WCS seen through the atmosphere."""
        return TruthMapping(wcs=self.truth_wcs, field=self.turbulence)

    @property
    def image_path(self) -> Path:
        """The exposure file."""
        return self.paths.image


def simulate_field(out_dir: str | Path, name: str, *, ra_deg: float, dec_deg: float,
                   rng: np.random.Generator, shape: tuple[int, int] = CONDOR_SHAPE,
                   scale_arcsec: float = CONDOR_SCALE_ARCSEC, rotation_deg: float = 0.0,
                   parity: int = 1, distortion_px: float = DEFAULT_DISTORTION_PX,
                   epoch_yr: float = DEFAULT_EPOCH_YR, catalog: Table | None = None,
                   density_per_deg2: float = DEFAULT_STAR_DENSITY_PER_DEG2,
                   mag_limit: float = DEFAULT_MAG_LIMIT,
                   render_depth_mag: float = DEFAULT_EXTRA_RENDER_DEPTH_MAG,
                   catalog_margin_deg: float = DEFAULT_CATALOG_MARGIN_DEG,
                   galaxy_density_per_deg2: float = DEFAULT_GALAXY_DENSITY_PER_DEG2,
                   cosmic_ray_rate_per_cm2_s: float = COSMIC_RAY_RATE_PER_CM2_S,
                   n_hot_columns: int | None = None, header_style: HeaderStyle = "wcs",
                   pointing_error_arcmin: float = DEFAULT_POINTING_ERROR_ARCMIN,
                   rotation_error_deg: float = DEFAULT_ROTATION_ERROR_DEG,
                   scale_error_frac: float = DEFAULT_SCALE_ERROR_FRAC, compress: bool = True,
                   render_options: Mapping[str, Any] | None = None,
                   turbulence: TurbulenceSpec | None = None) -> SimulatedField:
    """Simulate one complete exposure of a field and write it with its catalog and truth.

    Writes ``<name>.fits.fz`` (or ``.fits``), ``<name>_gaia.ecsv`` (the reference
    catalog: stars to ``mag_limit`` over the footprint plus ``catalog_margin_deg``),
    ``<name>.truth.wcs.fits`` and ``<name>.truth.ecsv`` into ``out_dir``.

    Parameters
    ----------
    out_dir, name
        Output folder and exposure name.
    ra_deg, dec_deg
        Centre of the frame, degrees.
    rng
        Random generator.
    shape, scale_arcsec, rotation_deg, parity, distortion_px
        The truth WCS, see :func:`~astrodask.simulate.truth.condor_wcs`.
    epoch_yr
        Julian epoch of the exposure.
    catalog
        Render this catalog (Gaia archive column names) instead of a synthetic one; it
        is written as the reference catalog unchanged.
    density_per_deg2, mag_limit
        Synthetic catalog: stars brighter than ``mag_limit`` per square degree.
    render_depth_mag
        Synthetic stars down to ``mag_limit + render_depth_mag`` are rendered (the image
        is deeper than the catalog); only those to ``mag_limit`` are written.
    catalog_margin_deg
        Margin of the catalog around the footprint, degrees.
    galaxy_density_per_deg2
        Galaxies per square degree.
    cosmic_ray_rate_per_cm2_s
        Cosmic rays per cm^2 of sensor (CONDOR_PIXEL_SIZE_UM pixels) per second.
    n_hot_columns
        Hot columns; default scaled from HOT_COLUMNS_PER_CONDOR_FRAME by the width.
    header_style, pointing_error_arcmin, rotation_error_deg, scale_error_frac
        The approximate header, see :func:`~astrodask.simulate.header.approximate_header`
        (error direction from ``rng``).
    compress
        Write ``.fits.fz`` (RICE_1) rather than ``.fits``.
    render_options
        Extra keyword arguments of :func:`~astrodask.simulate.render.render_exposure` (PSF, noise, zero point...).
    turbulence
        Atmospheric displacement of the stars (:func:`~astrodask.simulate.atmosphere.field_for_wcs`
        over this frame, seeded by the spec: ``rng`` is not drawn from, so the rest of the
        exposure is the same as without it); written beside the truth WCS. None: none.

    Returns
    -------
    SimulatedField
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    options = dict(render_options or {})
    ny, nx = check_shape(shape)
    wcs = condor_wcs(ra_deg, dec_deg, shape=shape, scale_arcsec=scale_arcsec,
                     rotation_deg=rotation_deg, parity=parity, distortion_px=distortion_px)
    ra_c, dec_c = (float(v) for v in wcs.pixel_to_world_values((nx - 1) / 2.0, (ny - 1) / 2.0))
    if catalog is None:
        # the footprint in the tangent plane at the centre, north-aligned, plus the margin
        corners_i = np.array([-0.5, nx - 0.5, -0.5, nx - 0.5])
        corners_j = np.array([-0.5, -0.5, ny - 0.5, ny - 0.5])
        c_ra, c_dec = wcs.pixel_to_world_values(corners_i, corners_j)
        xi, eta = tangent_plane(c_ra, c_dec, (ra_c, dec_c))
        width = 2.0 * (float(np.abs(xi).max()) + catalog_margin_deg)
        height = 2.0 * (float(np.abs(eta).max()) + catalog_margin_deg)
        slope = DEFAULT_COUNT_SLOPE_DEX_PER_MAG
        render_limit = mag_limit + render_depth_mag
        stars = synthetic_gaia_catalog(ra_c, dec_c, rng=rng, width_deg=width, height_deg=height,
                                       density_per_deg2=density_per_deg2 * 10.0 ** (slope * render_depth_mag),
                                       mag_limit=render_limit, count_slope_dex_per_mag=slope)
        reference = stars[np.asarray(stars["phot_g_mean_mag"]) <= mag_limit]
        reference.meta["mag_limit"] = float(mag_limit)
        reference.meta["density_per_deg2"] = float(density_per_deg2)
    else:
        stars = reference = catalog

    area_deg2 = nx * ny * (scale_arcsec / 3600.0) ** 2
    area_cm2 = nx * ny * (CONDOR_PIXEL_SIZE_UM * 1e-4) ** 2
    exptime_s = float(options.get("exptime_s", DEFAULT_EXPTIME_S))
    n_galaxies = int(rng.poisson(galaxy_density_per_deg2 * area_deg2))
    n_cosmic_rays = int(rng.poisson(cosmic_ray_rate_per_cm2_s * area_cm2 * exptime_s))
    if n_hot_columns is None:
        n_hot_columns = int(round(HOT_COLUMNS_PER_CONDOR_FRAME * nx / CONDOR_SHAPE[1]))
    field = field_for_wcs(turbulence, wcs, shape=shape) if turbulence is not None else None
    image, truth = render_exposure(stars, wcs, rng=rng, shape=shape, epoch_yr=epoch_yr,
                                   n_galaxies=n_galaxies, n_cosmic_rays=n_cosmic_rays,
                                   n_hot_columns=n_hot_columns, turbulence=field, **options)
    header_keys = ("gain_e_per_adu", "read_noise_e", "saturation_adu")
    header = approximate_header(wcs, style=header_style, pointing_error_arcmin=pointing_error_arcmin,
                                rotation_error_deg=rotation_error_deg, scale_error_frac=scale_error_frac,
                                rng=rng, epoch_yr=epoch_yr, exptime_s=exptime_s, object_name=name,
                                **{k: options[k] for k in header_keys if k in options})
    paths = write_exposure(out_dir / name, image, header, truth_wcs=wcs, truth_table=truth,
                           compress=compress, turbulence=field)
    catalog_path = out_dir / f"{name}_gaia.ecsv"
    reference.write(catalog_path, format="ascii.ecsv", overwrite=True)
    log.info("simulated %s: %d stars rendered, %d in the catalog, %d galaxies, %d cosmic rays",
             paths.image, len(truth), len(reference), n_galaxies, n_cosmic_rays)
    return SimulatedField(paths=paths, catalog_path=catalog_path, truth_wcs=wcs, header=header,
                          truth=truth, turbulence=field)


#: Margin of the demo's Gaia stars around its footprint, deg: wide enough that the cone they
#: cover holds the footprint's enclosing cone plus gaia.margin_deg, so that the demo's tile
#: cache (imported from them) is complete for the solve.
DEMO_CATALOG_MARGIN_DEG: float = 0.45


def make_demo(out_dir: str | Path, *, seed: int = DEMO_SEED) -> SimulatedField:
    """The deterministic demo: a Condor quarter frame of a high-latitude field.

    2394 x 1597 px at 0.85"/px centred on (150.1, +2.2) deg, epoch 2024.3, realistic
    density, galaxies, cosmic rays and a hot column, an approximate TAN header 3 arcmin
    off. Writes ``demo.fits.fz``, ``demo_gaia.ecsv`` (footprint + :data:`DEMO_CATALOG_MARGIN_DEG`),
    ``demo.truth.wcs.fits`` and ``demo.truth.ecsv`` into ``out_dir``; takes a few seconds.

    Parameters
    ----------
    out_dir
        Output folder.
    seed
        Seed of the random generator; the same seed gives the same files.
    """
    return simulate_field(out_dir, "demo", ra_deg=DEMO_RA_DEG, dec_deg=DEMO_DEC_DEG,
                          rng=np.random.default_rng(seed), shape=DEMO_SHAPE,
                          catalog_margin_deg=DEMO_CATALOG_MARGIN_DEG,
                          rotation_deg=DEMO_ROTATION_DEG, distortion_px=DEMO_DISTORTION_PX,
                          epoch_yr=DEMO_EPOCH_YR)
