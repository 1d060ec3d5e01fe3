"""HEALPix (nested scheme) pixel numbers of sky positions, in numpy.

Gaia's ``source_id`` encodes the level-12 nested pixel of a source (``source_id // 2**35``); the
Gaia tile cache (:mod:`astrodask.reference.cache`) uses the same scheme at a coarser level. ``healpy`` and
``astropy-healpix`` are not dependencies: this is the standard ang2pix_nest of Gorski et al.
(2005) for the few calls astrodask needs.
"""

from __future__ import annotations

import numpy as np

from astrodask.errors import ConfigError

#: HEALPix level encoded in Gaia source_id (source_id // 2**35 is the level-12 nested index).
GAIA_HEALPIX_LEVEL: int = 12


def healpix_nested_index(ra_deg: np.ndarray | float, dec_deg: np.ndarray | float, *,
                         level: int = GAIA_HEALPIX_LEVEL) -> np.ndarray:
    """HEALPix NESTED pixel index of sky positions (Gorski et al. 2005).

    The algorithm of HEALPix C++ ``loc2pix`` (nested scheme), vectorised. Gaia's
    ``source_id // 2**35`` is this index at level 12.

    Parameters
    ----------
    ra_deg, dec_deg
        Sky positions, degrees.
    level
        HEALPix order; ``nside = 2**level`` (0 to 29).

    Returns
    -------
    numpy.ndarray
        int64 pixel indices; at level 0 these are the 12 base pixels (0-3 north,
        4-7 equatorial with 4 centred on RA 0, 8-11 south).
    """
    if not 0 <= level <= 29:
        raise ConfigError(f"level = {level!r} is out of range: allowed 0 to 29")
    nside = 1 << level
    phi = np.radians(np.asarray(ra_deg, dtype=np.float64)) % (2.0 * np.pi)
    dec = np.radians(np.asarray(dec_deg, dtype=np.float64))
    z = np.sin(dec)
    za = np.abs(z)
    sth = np.cos(dec)
    tt = (phi / (0.5 * np.pi)) % 4.0
    phi, z = np.broadcast_arrays(phi, z)
    za, sth, tt = np.broadcast_to(za, z.shape), np.broadcast_to(sth, z.shape), np.broadcast_to(tt, z.shape)

    face = np.empty(z.shape, dtype=np.int64)
    ix = np.empty(z.shape, dtype=np.int64)
    iy = np.empty(z.shape, dtype=np.int64)

    eq = za <= 2.0 / 3.0
    temp1 = nside * (0.5 + tt[eq])
    temp2 = nside * z[eq] * 0.75
    jp = np.floor(temp1 - temp2).astype(np.int64)  # ascending edge line
    jm = np.floor(temp1 + temp2).astype(np.int64)  # descending edge line
    ifp, ifm = jp >> level, jm >> level
    face[eq] = np.where(ifp == ifm, ifp | 4, np.where(ifp < ifm, ifp, ifm + 8))
    ix[eq] = jm & (nside - 1)
    iy[eq] = nside - (jp & (nside - 1)) - 1

    po = ~eq
    ntt = np.minimum(np.floor(tt[po]).astype(np.int64), 3)
    tp = tt[po] - ntt
    # nside * sqrt(3 (1 - |z|)), written with cos(dec) to stay accurate near the poles
    tmp = nside * sth[po] * np.sqrt(3.0 / (1.0 + za[po]))
    jp = np.minimum(np.floor(tp * tmp).astype(np.int64), nside - 1)
    jm = np.minimum(np.floor((1.0 - tp) * tmp).astype(np.int64), nside - 1)
    north = z[po] > 0
    face[po] = np.where(north, ntt, ntt + 8)
    ix[po] = np.where(north, nside - jm - 1, jp)
    iy[po] = np.where(north, nside - jp - 1, jm)

    return face * (nside * nside) + _spread_bits(ix, level) + 2 * _spread_bits(iy, level)


def _spread_bits(v: np.ndarray, nbits: int) -> np.ndarray:
    """Put bit b of ``v`` at bit 2b (the Morton/Z-order interleave of the nested scheme)."""
    out = np.zeros_like(v)
    for b in range(nbits):
        out |= ((v >> b) & 1) << (2 * b)
    return out
