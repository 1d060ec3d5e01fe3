"""Argument checks shared by the simulator's modules: each error names the value and the allowed range."""

from __future__ import annotations

import math

from astropy.wcs import WCS

from astrodask.errors import ConfigError


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not (math.isfinite(value) and ok):
        raise ConfigError(f"{name} = {value!r} is out of range: allowed {'>= 0' if allow_zero else '> 0'}")


def check_shape(shape: tuple[int, int]) -> tuple[int, int]:
    if len(shape) != 2 or min(int(shape[0]), int(shape[1])) < 1:
        raise ConfigError(f"shape = {shape!r} must be (ny, nx) with positive sizes")
    return int(shape[0]), int(shape[1])


def resolve_shape(shape: tuple[int, int] | None, wcs: WCS) -> tuple[int, int]:
    if shape is not None:
        return check_shape(shape)
    if wcs.pixel_shape is None:
        raise ConfigError("shape is None and the WCS has no pixel_shape: give shape=(ny, nx)")
    nx, ny = wcs.pixel_shape
    return check_shape((ny, nx))
