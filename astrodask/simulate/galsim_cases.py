"""The GalSim renderer's named cases (:data:`CASES`) and :func:`case_scene` at the ``test`` or ``bench`` size.

Each case is a :class:`~astrodask.simulate.galsim_scene.Scene` with a character: crowded,
messy, a photographic plate, sparse, a full Condor frame, and two honesty gates that must fail.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from astrodask.config import GaiaConfig
from astrodask.simulate.constants import CONDOR_SHAPE, DEFAULT_EXPTIME_S
from astrodask.simulate.galsim_scene import SCENE_SKY_ADU, Scene
from astrodask.simulate.galsim_stars import shared_data_dir

__all__ = ["CASES", "Size", "case_scene"]

#: Per-pixel cosmic-ray rate of the messy case: 3000 per full Condor frame.
CONDOR_CR_PER_MPIX: float = 3000.0 / (CONDOR_SHAPE[0] * CONDOR_SHAPE[1] / 1e6)
#: The real crowded field, under the shared data folder.
NGC103_FIELD: str = "gaia_dr3_ngc103/ngc103_field_gaiadr3.csv"


def _ngc103() -> str | None:
    root = shared_data_dir()
    return str(root / NGC103_FIELD) if root is not None and (root / NGC103_FIELD).is_file() else None


#: Short exposure of the sparse case, seconds (the sky scales with it).
SPARSE_EXPTIME_S: float = 5.0
#: The DSS plate: POSS-I-like epoch, exposure (s), scale (arcsec/px), size (px).
PLATE_DATE_OBS: str = "1951-11-29T06:00:00"
PLATE_EXPTIME_S: float = 50.0 * 60.0
PLATE_SCALE_ARCSEC: float = 1.7
PLATE_SHAPE: tuple[int, int] = (1059, 1059)
#: astrodask's gaia.margin_deg times 3, in arcmin: the offset3x gate.
GATE_OFFSET_ARCMIN: float = 3.0 * GaiaConfig().margin_deg * 60.0

CASES: dict[str, Scene] = {s.name: s for s in (
    Scene("crowded", "Galactic-plane field, 40,000 stars/deg2 to G 20 from G 7 (real NGC 103 crowding when "
          "../shared/data is present), many saturated with bleed trails; header 3' and 0.3 deg off", seed=201,
          shape=(6388, 4788), test_shape=(1600, 1600), ra_deg=283.5, dec_deg=-4.2, rotation_deg=0.7,
          star_density_per_deg2=40000.0, fwhm_px=3.0, seed_catalog=_ngc103(), pointing_error_arcmin=3.0,
          rotation_error_deg=0.3, scale_error_frac=0.002),
    Scene("messy", "elliptical PSF (e 0.15, FWHM 4 px), cosmic rays, 5 hot columns, hot pixels, galaxies "
          "4,000/deg2, a satellite trail, 2,500 stars/deg2", seed=202, shape=CONDOR_SHAPE, test_shape=(1400, 2000),
          ra_deg=187.0, dec_deg=12.5, rotation_deg=-0.4, star_density_per_deg2=2500.0, fwhm_px=4.0, moffat_beta=3.0,
          psf_e=0.15, psf_angle_deg=35.0, cosmic_rays_per_mpix=CONDOR_CR_PER_MPIX, hot_columns=5,
          hot_pixels_per_mpix=20.0, satellite_trail=True, galaxy_density_per_deg2=4000.0,
          pointing_error_arcmin=4.0, rotation_error_deg=-0.4, scale_error_frac=-0.003),
    Scene("plate", "photographic plate 1059 x 1059 px at 1.7\"/px (1951), characteristic curve with flat cores "
          "and halos, DSS plate solution only, Gaia DR2-like catalog without proper motions", seed=203,
          shape=PLATE_SHAPE, test_shape=PLATE_SHAPE, ra_deg=84.9, dec_deg=7.4, rotation_deg=0.2,
          scale_arcsec=PLATE_SCALE_ARCSEC, sip_distortion_px=1.5, date_obs=PLATE_DATE_OBS, exptime_s=PLATE_EXPTIME_S,
          star_density_per_deg2=4000.0, bright_mag=8.0, pm_sigma_masyr=6.0, catalog_release="dr2",
          psf_model="kolmogorov", fwhm_px=2.2, zero_point_mag=17.6, sky_adu=400.0, read_noise_e=0.0,
          photographic=True, bleed=False, header_style="dss", pointing_error_arcmin=1.5, rotation_error_deg=0.2,
          scale_error_frac=0.003),
    Scene("sparse", f"{SPARSE_EXPTIME_S:g} s exposure of a thin field (a few hundred stars detected)", seed=204,
          shape=CONDOR_SHAPE, test_shape=(3194, 4788), ra_deg=205.0, dec_deg=48.0, rotation_deg=179.5,
          exptime_s=SPARSE_EXPTIME_S, sky_adu=SCENE_SKY_ADU * SPARSE_EXPTIME_S / DEFAULT_EXPTIME_S,
          star_density_per_deg2=800.0, fwhm_px=3.0, cosmic_rays_per_mpix=CONDOR_CR_PER_MPIX / 4.0,
          pointing_error_arcmin=3.0),
    Scene("condor", "a full Condor frame 9576 x 6388 at 0.85\"/px, 3,000 stars/deg2, FWHM 2.8 px", seed=205,
          shape=CONDOR_SHAPE, test_shape=None, ra_deg=35.0, dec_deg=-22.0, rotation_deg=0.3,
          star_density_per_deg2=3000.0, fwhm_px=2.8, cosmic_rays_per_mpix=CONDOR_CR_PER_MPIX / 2.0, hot_columns=2,
          galaxy_density_per_deg2=1000.0),
    Scene("offset3x", f"honesty gate: header {GATE_OFFSET_ARCMIN:g}' off, 3x gaia.margin_deg: must fail, not lie",
          seed=206, shape=(1600, 2400), test_shape=(1600, 2400), ra_deg=140.0, dec_deg=30.0,
          star_density_per_deg2=3000.0, pointing_error_arcmin=GATE_OFFSET_ARCMIN),
    Scene("scale20", "honesty gate: header scale 20 % off: must fail, not lie", seed=207, shape=(1600, 2400),
          test_shape=(1600, 2400), ra_deg=320.0, dec_deg=-30.0, star_density_per_deg2=3000.0,
          scale_error_frac=0.20),
)}

Size = Literal["test", "bench"]


def case_scene(name: str, size: Size = "test") -> Scene:
    """A named case at its ``test`` or ``bench`` size, named ``gs-<case>-<size>``.

    Raises
    ------
    KeyError
        Unknown case, or a bench-only case asked at the test size.
    """
    if name not in CASES:
        raise KeyError(f"unknown GalSim case {name!r}; known: {', '.join(CASES)}")
    scene = CASES[name]
    if size == "test":
        if scene.test_shape is None:
            raise KeyError(f"GalSim case {name!r} exists at the bench size only")
        return dataclasses.replace(scene, name=f"gs-{name}-test", shape=scene.test_shape)
    if size != "bench":
        raise KeyError(f"size must be 'test' or 'bench', got {size!r}")
    return dataclasses.replace(scene, name=f"gs-{name}-bench")
