"""Per-exposure diagnostic plots of a solve (PNG, headless: matplotlib's Agg backend).

:func:`plot_solution` draws ``<name>.residuals.png``, written with ``--debug`` (beside the
solution) and with ``--plots DIR``: four panels,

1. the residual vectors over the field (mean per cell of a grid, the kept stars);
2. the residuals against the error model: the rms residual per axis in bins of the model's
   sigma per star, beside the line where they are equal, and the normalised residuals' histogram
   against the Rayleigh law they follow when the model is right (inset figures in the title);
3. the distortion map: the TPV's displacement minus its best linear (affine) part, over the field;
4. the matches per region: the kept stars counted on the solve's region grid.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from astrodask.types import ExposureResult

#: Cells along x of the residual-vector grid (along y in proportion to the image).
VECTOR_CELLS = 12
#: Stars a cell needs for its mean residual to be drawn.
MIN_STARS_PER_CELL = 3
#: Grid of the distortion map, points along x and y.
DISTORTION_GRID = (13, 9)
#: Bins of the model sigma in the residuals-against-model panel.
SIGMA_BINS = 8
#: Resolution of the PNG files, dots per inch.
PLOT_DPI = 80
#: Suffix of the plot of a solved exposure.
RESIDUALS_SUFFIX = ".residuals.png"


def plot_solution(result: ExposureResult, out_dir: str | Path) -> Path | None:
    """``DIR/<name>.residuals.png``: the four diagnostic panels of a solved exposure (None when not solved)."""
    if result.matched is None or result.solution is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from astrodask.io.output import atomic_write

    fig, axes = plt.subplots(2, 2, figsize=(14, 10), constrained_layout=True)
    _residual_vectors(axes[0, 0], result)
    _against_model(axes[0, 1], result)
    _distortion(axes[1, 0], result)
    _region_matches(axes[1, 1], result)
    fig.suptitle(f"{result.name}: {result.status}, {result.n_matches} matches, rms "
                 f"({result.rms_arcsec[0] * 1000:.1f}, {result.rms_arcsec[1] * 1000:.1f}) mas")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    path = Path(out_dir) / f"{result.name}{RESIDUALS_SUFFIX}"
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=PLOT_DPI, format="png"))
    plt.close(fig)
    return path


def _kept(result: ExposureResult) -> tuple[Any, np.ndarray]:
    t = result.matched
    return t, np.asarray(t["kept"], dtype=bool)


def _residual_vectors(ax: Any, result: ExposureResult) -> None:
    t, kept = _kept(result)
    ny, nx = result.shape
    gi, gj, gx, gy = binned_vectors(np.asarray(t["i"])[kept], np.asarray(t["j"])[kept],
                                    np.asarray(t["dxi_mas"])[kept], np.asarray(t["deta_mas"])[kept], (ny, nx))
    key = nice(float(np.percentile(np.hypot(gx, gy), 90))) if len(gx) else 10.0
    q = ax.quiver(gi, gj, gx, gy, angles="xy", scale_units="xy", scale=key / (0.5 * nx / VECTOR_CELLS), color="C0")
    ax.quiverkey(q, 0.85, 1.03, key, f"{key:g} mas", labelpos="E")
    ax.set(xlim=(0, nx), ylim=(0, ny), aspect="equal", xlabel="i (px)", ylabel="j (px)",
           title=f"residual vectors: mean per cell ({int(kept.sum())} stars)")


def _against_model(ax: Any, result: ExposureResult) -> None:
    """rms residual per axis against the model sigma (from |r| / chi per star), binned; the 1:1 line."""
    t, kept = _kept(result)
    r = np.hypot(np.asarray(t["dxi_mas"]), np.asarray(t["deta_mas"]))[kept]
    chi = np.asarray(t["chi"])[kept]
    ok = np.isfinite(chi) & (chi > 0) & np.isfinite(r)
    sigma = r[ok] / chi[ok]  # the model's sigma per axis of each star, mas
    r = r[ok]
    ax.scatter(sigma, r / np.sqrt(2.0), s=4, color="0.6", alpha=0.5, label="stars: |r| / sqrt(2)")
    if len(sigma) >= SIGMA_BINS:
        edges = np.quantile(sigma, np.linspace(0, 1, SIGMA_BINS + 1))
        which = np.clip(np.searchsorted(edges, sigma, side="right") - 1, 0, SIGMA_BINS - 1)
        centre = np.array([np.median(sigma[which == k]) for k in range(SIGMA_BINS) if np.any(which == k)])
        rms = np.array([np.sqrt(np.mean(r[which == k] ** 2) / 2.0) for k in range(SIGMA_BINS) if np.any(which == k)])
        ax.plot(centre, rms, "o-", color="C0", label="rms per axis, binned")
    if len(sigma):
        lo, hi = float(np.min(sigma)), float(np.max(sigma))
        ax.plot([lo, hi], [lo, hi], "k--", label="model: rms = sigma")
        ax.set(xscale="log", yscale="log")
    q, m = result.quality, result.error_model
    title = "residuals against the error model"
    if q is not None and m is not None:
        title += f"\nchi2/dof = {q.chi2_dof:.3f}, scale {m.scale:.2f}, floor {m.floor_mas:.1f} mas"
    ax.set(xlabel="model sigma per axis (mas)", ylabel="residual (mas)", title=title)
    ax.legend(fontsize=8, loc="upper left")


def _distortion(ax: Any, result: ExposureResult) -> None:
    """The TPV displacement minus its least-squares affine part, on a grid over the field."""
    from astrodask.solve.tpv import distortion_px

    ny, nx = result.shape
    ii, jj = np.meshgrid(np.linspace(0, nx - 1, DISTORTION_GRID[0]), np.linspace(0, ny - 1, DISTORTION_GRID[1]))
    i, j = ii.ravel(), jj.ravel()
    dx, dy = distortion_px(result.solution, i, j)
    design = np.column_stack([np.ones_like(i), i, j])
    dx = dx - design @ np.linalg.lstsq(design, dx, rcond=None)[0]
    dy = dy - design @ np.linalg.lstsq(design, dy, rcond=None)[0]
    amp = float(np.max(np.hypot(dx, dy))) or 1.0
    ax.quiver(i, j, dx, dy, angles="xy", scale_units="xy", scale=amp / (0.08 * max(nx, ny)), color="C3")
    ax.set(xlim=(-0.05 * nx, 1.05 * nx), ylim=(-0.05 * ny, 1.05 * ny), aspect="equal", xlabel="i (px)",
           ylabel="j (px)", title=f"distortion: TPV minus its linear part (max {amp:.3f} px)")


def _region_matches(ax: Any, result: ExposureResult) -> None:
    """Kept stars counted on the region grid of the solve (as many regions as it had)."""
    from astrodask.solve.match import region_grid

    t, kept = _kept(result)
    ny, nx = result.shape
    settings = result.config.get("regions", {}) if isinstance(result.config, dict) else {}
    n_regions = len(result.regions) or int(settings.get("n_regions", 24))
    grid = region_grid((ny, nx), n_regions=n_regions, nx=int(settings.get("nx", 0) or 0),
                       ny=int(settings.get("ny", 0) or 0))
    i, j = np.asarray(t["i"])[kept], np.asarray(t["j"])[kept]
    counts = np.array([np.sum((i >= g.i0) & (i < g.i1) & (j >= g.j0) & (j < g.j1)) for g in grid])
    cols = max(g.col for g in grid) + 1
    rows = max(g.row for g in grid) + 1
    image = np.zeros((rows, cols))
    for g, n in zip(grid, counts):
        image[g.row, g.col] = n
    shown = ax.imshow(image, origin="lower", cmap="viridis", extent=(0, nx, 0, ny), aspect="equal")
    status = {index: state for index, state, _reason, _pairs in result.regions}
    for g, n in zip(grid, counts):
        ax.text(0.5 * (g.i0 + g.i1), 0.5 * (g.j0 + g.j1), f"{int(n)}\n{status.get(g.index, '')}", ha="center",
                va="center", fontsize=8, color="white", bbox={"facecolor": "black", "alpha": 0.3, "pad": 1})
    ax.figure.colorbar(shown, ax=ax, shrink=0.8, label="kept matches")
    ax.set(xlabel="i (px)", ylabel="j (px)", title=f"matches per region ({len(grid)} regions)")


def nice(value: float) -> float:
    """A round number (1, 2 or 5 times a power of ten) near ``value``."""
    if not np.isfinite(value) or value <= 0:
        return 1.0
    power = 10.0 ** np.floor(np.log10(value))
    return float(min((1.0, 2.0, 5.0, 10.0), key=lambda m: abs(np.log(m * power / value))) * power)


def binned_vectors(i: np.ndarray, j: np.ndarray, vx: np.ndarray, vy: np.ndarray, shape: tuple[int, int],
                   cells: int = VECTOR_CELLS) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean vectors per cell of a grid over the image: cell centres (i, j) and mean (vx, vy)."""
    ny, nx = shape
    bins_i = np.linspace(0, nx, cells + 1)
    bins_j = np.linspace(0, ny, max(2, round(cells * ny / nx)) + 1)
    ci = np.clip(np.digitize(i, bins_i) - 1, 0, len(bins_i) - 2)
    cj = np.clip(np.digitize(j, bins_j) - 1, 0, len(bins_j) - 2)
    out = []
    for a in range(len(bins_i) - 1):
        for b in range(len(bins_j) - 1):
            sel = (ci == a) & (cj == b)
            if sel.sum() >= MIN_STARS_PER_CELL:
                out.append((0.5 * (bins_i[a] + bins_i[a + 1]), 0.5 * (bins_j[b] + bins_j[b + 1]),
                            np.mean(vx[sel]), np.mean(vy[sel])))
    if not out:
        return np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0)
    return tuple(np.array(col) for col in zip(*out))
