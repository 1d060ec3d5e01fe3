"""Simulated exposures with exact truth: the test bed of the solver.

Everything is seeded through an explicit ``rng: np.random.Generator``; only the functions of
:mod:`~astrodask.simulate.files`, :func:`simulate_field`, :func:`make_demo` and
:func:`render_scene` touch the disk.

Our renderer, in the order a simulated exposure is made (one module each):

1. :mod:`~astrodask.simulate.truth` -- :func:`condor_wcs`, the *truth* WCS: TAN + TPV with a
   radial cubic and a small quadratic distortion reaching ``distortion_px`` at the corners.
2. :mod:`~astrodask.simulate.catalog` -- :func:`synthetic_gaia_catalog`: Gaia DR3-like
   reference stars (archive column names and units, real ``source_id`` HEALPix encoding).
3. :mod:`~astrodask.simulate.render` -- :func:`render_stars` and :func:`render_exposure`:
   stars propagated to the epoch and drawn as pixel-integrated Moffat profiles with exact
   centres (:mod:`~astrodask.simulate.profiles`); galaxies, cosmic rays and hot columns
   (:mod:`~astrodask.simulate.artefacts`); sky, noise, gain, bias and saturation.
4. :mod:`~astrodask.simulate.header` -- :func:`approximate_header`: what the telescope would
   write, with chosen pointing, rotation and scale errors.
5. :mod:`~astrodask.simulate.files` -- :func:`write_exposure`, :func:`read_truth_wcs` and
   :func:`read_truth`: the image and its exact truth beside it (with the atmosphere, if any).
6. :mod:`~astrodask.simulate.atmosphere` -- :class:`TurbulenceSpec` and :func:`field_for_wcs`:
   an optional atmospheric displacement (curl-free, von Karman) that both renderers apply to
   the stars and write beside the truth WCS (:class:`TruthMapping`, the true mapping, is what
   scoring compares a solution with).
7. :mod:`~astrodask.simulate.demo` -- :func:`simulate_field` and :func:`make_demo`: all of the
   above for one field.

A second, independent renderer built on GalSim, for tests and benchmarks only (GalSim is
imported only when drawing): :mod:`~astrodask.simulate.galsim_scene` (:class:`Scene`, the
TAN-SIP truth), :mod:`~astrodask.simulate.galsim_plate` (DSS plate solutions),
:mod:`~astrodask.simulate.galsim_stars` (stars and their catalog),
:mod:`~astrodask.simulate.galsim_draw` (PSFs, galaxies, trails, bleeding, plate response),
:mod:`~astrodask.simulate.galsim_render` (:func:`render_scene`) and
:mod:`~astrodask.simulate.galsim_cases` (the named :data:`CASES`, :func:`case_scene`).

Shared constants (the Condor camera, the default field, units) are in
:mod:`~astrodask.simulate.constants`; Gaia's in :mod:`astrodask.constants`.

Conventions (see :mod:`astrodask.types`): pixels are 0-based, ``i`` is the column (numpy's
last axis), ``j`` the row; only FITS ``CRPIX`` is 1-based.
"""

from astrodask.reference.healpix import healpix_nested_index
from astrodask.simulate.atmosphere import (
    DEFAULT_OUTER_SCALE_ARCMIN,
    DisplacementField,
    TruthMapping,
    TurbulenceSpec,
    field_for_wcs,
    turbulence_field,
)
from astrodask.simulate.catalog import (
    DEFAULT_BRIGHT_LIMIT,
    DEFAULT_COUNT_SLOPE_DEX_PER_MAG,
    synthetic_gaia_catalog,
)
from astrodask.simulate.constants import (
    CONDOR_PIXEL_SIZE_UM,
    CONDOR_SCALE_ARCSEC,
    CONDOR_SHAPE,
    DEFAULT_BIAS_ADU,
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
from astrodask.simulate.demo import (
    DEMO_CATALOG_MARGIN_DEG,
    DEMO_DEC_DEG,
    DEMO_DISTORTION_PX,
    DEMO_EPOCH_YR,
    DEMO_RA_DEG,
    DEMO_ROTATION_DEG,
    DEMO_SEED,
    DEMO_SHAPE,
    SimulatedField,
    make_demo,
    simulate_field,
)
from astrodask.simulate.files import ExposurePaths, read_truth, read_truth_wcs, write_exposure
from astrodask.simulate.galsim_cases import CASES, case_scene
from astrodask.simulate.galsim_draw import bleed
from astrodask.simulate.galsim_plate import dss_header, dss_sky
from astrodask.simulate.galsim_render import cd_header, render_scene
from astrodask.simulate.galsim_scene import Scene, SceneFiles, approximate_model, truth_wcs
from astrodask.simulate.galsim_stars import shared_data_dir
from astrodask.simulate.header import approximate_header
from astrodask.simulate.render import DEFAULT_GAIN_E_PER_ADU, render_exposure, render_stars
from astrodask.simulate.truth import condor_wcs

__all__ = [
    # the atmosphere (both renderers)
    "DisplacementField",
    "TruthMapping",
    "TurbulenceSpec",
    "field_for_wcs",
    "turbulence_field",
    # our renderer
    "ExposurePaths",
    "SimulatedField",
    "approximate_header",
    "condor_wcs",
    "healpix_nested_index",
    "make_demo",
    "read_truth",
    "read_truth_wcs",
    "render_exposure",
    "render_stars",
    "simulate_field",
    "synthetic_gaia_catalog",
    "write_exposure",
    # the GalSim renderer
    "CASES",
    "Scene",
    "SceneFiles",
    "approximate_model",
    "bleed",
    "case_scene",
    "cd_header",
    "dss_header",
    "dss_sky",
    "render_scene",
    "shared_data_dir",
    "truth_wcs",
    # defaults of simulate_field and of the `astrodask simulate` command, and the demo's
    "CONDOR_PIXEL_SIZE_UM",
    "CONDOR_SCALE_ARCSEC",
    "CONDOR_SHAPE",
    "DEFAULT_BIAS_ADU",
    "DEFAULT_BRIGHT_LIMIT",
    "DEFAULT_COUNT_SLOPE_DEX_PER_MAG",
    "DEFAULT_DISTORTION_PX",
    "DEFAULT_EPOCH_YR",
    "DEFAULT_EXPTIME_S",
    "DEFAULT_FIELD_DEC_DEG",
    "DEFAULT_FIELD_RA_DEG",
    "DEFAULT_GAIN_E_PER_ADU",
    "DEFAULT_MAG_LIMIT",
    "DEFAULT_OUTER_SCALE_ARCMIN",
    "DEFAULT_POINTING_ERROR_ARCMIN",
    "DEFAULT_ROTATION_ERROR_DEG",
    "DEFAULT_SCALE_ERROR_FRAC",
    "DEFAULT_STAR_DENSITY_PER_DEG2",
    "DEMO_CATALOG_MARGIN_DEG",
    "DEMO_DEC_DEG",
    "DEMO_DISTORTION_PX",
    "DEMO_EPOCH_YR",
    "DEMO_RA_DEG",
    "DEMO_ROTATION_DEG",
    "DEMO_SEED",
    "DEMO_SHAPE",
]
