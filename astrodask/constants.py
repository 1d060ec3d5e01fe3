"""Physical and survey constants with one home: Gaia DR3's photometric zero point, epoch and source_id layout."""

#: Gaia G-band zero point (Vega), mag: G = -2.5 log10(flux_e_per_s) + GAIA_G_ZERO_POINT (Riello et al. 2021).
GAIA_G_ZERO_POINT: float = 25.6874
#: Gaia DR3's reference epoch (Julian year, TCB).
GAIA_DR3_EPOCH: float = 2016.0
#: source_id // 2**GAIA_SOURCE_ID_SHIFT is the HEALPix index at GAIA_HEALPIX_LEVEL (nested).
GAIA_SOURCE_ID_SHIFT: int = 35
#: HEALPix level encoded in Gaia source_ids.
GAIA_HEALPIX_LEVEL: int = 12
#: Default faintest G magnitude of reference catalogs.
GAIA_MAG_LIMIT: float = 20.0

#: Largest proper motion of any known star is Barnard's star's, 10.39 arcsec/yr: a catalog with
#: larger values (mas/yr) has its proper motions in other units than declared.
MAX_PROPER_MOTION_MASYR: float = 20_000.0

#: Largest parallax of any star is Proxima Centauri's, 768 mas: a larger one (mas) is in other units.
MAX_PARALLAX_MAS: float = 1_000.0

#: G magnitudes a star can have: the brightest stars are near G = -1.5 and no survey reaches G = 30;
#: a catalog outside these (mag) holds something else in its magnitude column (fluxes, another unit).
STAR_G_MAG_RANGE: tuple[float, float] = (-5.0, 30.0)
