"""Constants shared across the simulator: the Condor camera, the default simulated field, units.

One home for what both renderers use (:mod:`astrodask.simulate.render`, ours, and
:mod:`astrodask.simulate.galsim_render`, the independent GalSim one) and for the defaults of
:func:`astrodask.simulate.simulate_field`, which the ``astrodask simulate`` command takes.
Gaia's zero point, epoch and source_id layout are in :mod:`astrodask.constants`; each model's
own parameters live beside the code they tune (e.g. the PSF defaults in
:mod:`astrodask.simulate.render`, a GalSim scene's in :mod:`astrodask.simulate.galsim_scene`).
"""

from __future__ import annotations

import math

from astrodask.config import CONDOR_PLATE_SCALE
from astrodask.constants import GAIA_MAG_LIMIT

# --------------------------------------------------------------------------
# The camera
# --------------------------------------------------------------------------

#: Condor frame shape (rows, columns) = (ny, nx), pixels.
CONDOR_SHAPE: tuple[int, int] = (6388, 9576)
#: Condor plate scale, arcsec per pixel.
CONDOR_SCALE_ARCSEC: float = CONDOR_PLATE_SCALE
#: Physical pixel size of the Condor CMOS sensor (Sony IMX455), micrometres.
CONDOR_PIXEL_SIZE_UM: float = 3.76
#: Largest value of a 16-bit ADC, ADU.
UINT16_MAX_ADU: float = 65535.0

# --------------------------------------------------------------------------
# The default simulated field (the defaults of simulate_field and `astrodask simulate`)
# --------------------------------------------------------------------------

#: Default field centre, degrees: a high-latitude field (the demo's too).
DEFAULT_FIELD_RA_DEG: float = 150.1
DEFAULT_FIELD_DEC_DEG: float = 2.2
#: Default largest distortion at the frame corners, pixels.
DEFAULT_DISTORTION_PX: float = 4.0
#: Default number of stars brighter than ``mag_limit`` per square degree (high latitude).
DEFAULT_STAR_DENSITY_PER_DEG2: float = 2500.0
#: Default faint limit of a synthetic catalog, G mag.
DEFAULT_MAG_LIMIT: float = GAIA_MAG_LIMIT
#: Default epoch of a simulated exposure, Julian years.
DEFAULT_EPOCH_YR: float = 2024.5
#: Default exposure time, seconds.
DEFAULT_EXPTIME_S: float = 60.0
#: Default bias level, ADU.
DEFAULT_BIAS_ADU: float = 500.0
#: Default pointing error of an approximate header, arcmin.
DEFAULT_POINTING_ERROR_ARCMIN: float = 3.0
#: Default rotation error of an approximate header, degrees.
DEFAULT_ROTATION_ERROR_DEG: float = 0.5
#: Default fractional scale error of an approximate header.
DEFAULT_SCALE_ERROR_FRAC: float = 0.003

# --------------------------------------------------------------------------
# Units
# --------------------------------------------------------------------------

ARCSEC_PER_DEG: float = 3600.0
MAS_PER_DEG: float = 3.6e6
#: MJD of J2000.0.
J2000_MJD: float = 51544.5
DAYS_PER_JULIAN_YEAR: float = 365.25
SECONDS_PER_DAY: float = 86400.0
#: FWHM of a Gaussian in units of its sigma.
FWHM_PER_SIGMA: float = 2.0 * math.sqrt(2.0 * math.log(2.0))
