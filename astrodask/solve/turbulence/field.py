"""The correction on a grid of nodes: the lookup tables' content, and positions through them.

The correction is the GP's mean residual field r(p) carried back to pixels,
``dp = -J(p)^-1 r(p)`` with J the TPV's local Jacobian: the FITS distortion-paper form
(``CPDIS``/``WCSDVARR``), which astropy applies to the pixel coordinates before the TPV,
bilinearly between the table's nodes (:meth:`TurbulenceField.pixel_offsets` does the same).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from astrodask.solve.tpv import TPVSolution

#: The solution's local Jacobian d(xi, eta)/d(i, j) at 0-based pixels (i, j): (M, 2, 2), mas/px.
Jacobian = Callable[[np.ndarray, np.ndarray], np.ndarray]


def pixel_frame(jacobian_mas_per_px: Jacobian, shape: tuple[int, int]) -> np.ndarray:
    """The 2 x 2 map ``A`` of residual vectors from the pixel frame to (xi, eta): ``r_sky = A r_pix``.

    The solution's Jacobian at the image's centre over the square root of its determinant's
    magnitude: a rotation, and a reflection when the image is East-left (the usual
    orientation, det < 0), times a shear of about unity. The curl-free kernel couples a
    residual's components with the direction of the separation (its cross term changes sign
    under a reflection, and turns with a rotation), so the GP must see residuals and
    separations in one frame: the pixels'.
    """
    ny, nx = shape
    jac = np.asarray(jacobian_mas_per_px(np.array([(nx - 1) / 2.0]), np.array([(ny - 1) / 2.0])))[0]
    return jac / math.sqrt(abs(float(np.linalg.det(jac))))


@dataclass(frozen=True)
class TurbulenceField:
    """The correction on a grid of nodes: what the lookup tables hold.

    Node (k, l) sits at 0-based pixel ``(l * step_px, k * step_px)``; the nodes cover the
    image (the last ones at or past its last pixel).

    Attributes
    ----------
    step_px
        Node spacing, pixels.
    offset_px
        Pixel offsets to add before the TPV, shape (nj, ni, 2): (di, dj).
    residual_mas
        The GP's mean residual field at the nodes, shape (nj, ni, 2): (xi, eta), mas.
    sd_mas
        The GP's posterior standard deviation at the nodes, shape (nj, ni, 2), mas.
    """

    step_px: float
    offset_px: np.ndarray
    residual_mas: np.ndarray
    sd_mas: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        """Nodes (nj, ni)."""
        return int(self.offset_px.shape[0]), int(self.offset_px.shape[1])

    def pixel_offsets(self, i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The pixel offsets (di, dj) at 0-based pixels: bilinear between nodes, clamped at the edges.

        This is the interpolation astropy's ``DistortionLookupTable`` does, so positions
        through :func:`corrected_pixel_to_world` are those of ``WCS(header, fobj)``.
        """
        nj, ni = self.shape
        u = np.clip(np.asarray(i, dtype=np.float64) / self.step_px, 0.0, ni - 1.0)
        v = np.clip(np.asarray(j, dtype=np.float64) / self.step_px, 0.0, nj - 1.0)
        l0 = np.minimum(np.floor(u).astype(int), max(ni - 2, 0))
        k0 = np.minimum(np.floor(v).astype(int), max(nj - 2, 0))
        l1, k1 = np.minimum(l0 + 1, ni - 1), np.minimum(k0 + 1, nj - 1)
        fu, fv = u - l0, v - k0
        out = []
        for axis in range(2):
            t = self.offset_px[..., axis]
            out.append((1 - fv) * ((1 - fu) * t[k0, l0] + fu * t[k0, l1])
                       + fv * ((1 - fu) * t[k1, l0] + fu * t[k1, l1]))
        return out[0], out[1]



def grid_nodes(shape: tuple[int, int], step_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Node pixels (nj, ni) covering an image of ``shape`` (ny, nx) at ``step_px``."""
    ny, nx = shape
    ni = int(math.ceil((nx - 1) / step_px)) + 1
    nj = int(math.ceil((ny - 1) / step_px)) + 1
    return np.meshgrid(np.arange(ni) * step_px, np.arange(nj) * step_px)


def correction_field(residual_mas: np.ndarray, var_mas2: np.ndarray, gi: np.ndarray, gj: np.ndarray,
                     step_px: float, jacobian_mas_per_px: Jacobian) -> TurbulenceField:
    """The residual field at the nodes (M, 2) as the pixel offsets that take it out, ``-J^-1 r``."""
    jac = np.asarray(jacobian_mas_per_px(gi.ravel(), gj.ravel()))
    offset = -np.linalg.solve(jac, residual_mas[:, :, None])[:, :, 0]
    grid = gi.shape
    return TurbulenceField(float(step_px), offset.reshape(*grid, 2), residual_mas.reshape(*grid, 2),
                           np.sqrt(var_mas2).reshape(*grid, 2))



def corrected_pixel_to_world(solution: TPVSolution, field: TurbulenceField | None, i: np.ndarray,
                             j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ra, dec) degrees of 0-based pixels through the lookup-table offsets, then the TPV.

    The order and interpolation astropy uses for ``CPDIS`` tables on a TPV header.
    """
    from astrodask.solve.tpv import pixel_to_world

    i, j = np.asarray(i, dtype=np.float64), np.asarray(j, dtype=np.float64)
    if field is not None:
        di, dj = field.pixel_offsets(i, j)
        i, j = i + di, j + dj
    return pixel_to_world(solution, i, j)
