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

import textwrap
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
#: Suffix of the turbulence stage's plot.
TURBULENCE_SUFFIX = ".turbulence.png"
#: Separation bins of the correlation panel.
CORRELATION_BINS = 12
#: Bins of centroid error (equal numbers of stars) in the residual-variance panel.
RESIDUAL_VARIANCE_BINS = 12
#: Characters per line of the text in a panel with nothing to draw.
PANEL_TEXT_WIDTH = 50


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


def plot_turbulence(result: ExposureResult, out_dir: str | Path) -> Path | None:
    """``DIR/<name>.turbulence.png``: the turbulence stage in six panels (None when it did not run).

    1. the residual field before: inverse-variance weighted mean residual per cell;
    2. after: the same of the held-back residuals of the cross-validation (each star predicted
       without its fold), so the panel shows what the correction does to stars it never saw;
    3. the correction: the GP's residual field at the lookup table's nodes;
    4. the measured correlation against separation (xi-xi + eta-eta, averaged over directions)
       beside the fitted kernel's;
    5. the cross-validation: each star's chi-square before against after, and the figures;
    6. the predicted error's coarse map (rms per axis, in quadrature), with CRDER and CSYER;
    7. the residuals' variance against the centroid errors, binned: measured, the error model's
       and the residual-variance model's (its white noise and its field F, and the
       correlation's bound on F), which the predicted error's field part comes from;
    8. the predicted error's parts per axis: the fit's, the field's, the frame's.
    """
    t = result.turbulence
    if t is None or result.solution is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from astrodask.io.output import atomic_write

    fig, axes = plt.subplots(2, 4, figsize=(25, 10), constrained_layout=True)
    weight = 1.0 / t.variance_mas2
    key = _weighted_vectors(axes[0, 0], result, t.residual_mas, weight, "residuals against the TPV", None)
    if t.cv is not None:
        _weighted_vectors(axes[0, 1], result, np.where(np.isfinite(t.cv.held_out_mas), t.cv.held_out_mas, 0.0),
                          weight * np.isfinite(t.cv.held_out_mas), "held-back residuals after the GP", key)
    else:
        _no_panel(axes[0, 1], "no cross-validation")
    _correction(axes[0, 2], result, key)
    _correlation(axes[1, 0], result)
    _cross_validation(axes[1, 1], result)
    _error_map(axes[1, 2], result)
    _residual_variance(axes[0, 3], result)
    _error_parts(axes[1, 3], result)
    fig.suptitle(textwrap.fill(f"{result.name}: turbulence {t.correction.upper()}: {t.reason}", 3 * PANEL_TEXT_WIDTH),
                 fontsize=10)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    path = Path(out_dir) / f"{result.name}{TURBULENCE_SUFFIX}"
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=PLOT_DPI, format="png"))
    plt.close(fig)
    return path


def _no_panel(ax: Any, text: str) -> None:
    wrapped = "\n".join(textwrap.fill(line, PANEL_TEXT_WIDTH) for line in text.splitlines())
    ax.text(0.5, 0.5, wrapped, ha="center", va="center", transform=ax.transAxes, wrap=True)
    ax.set_axis_off()


def _weighted_vectors(ax: Any, result: ExposureResult, vec: np.ndarray, weight: np.ndarray, title: str,
                      key: float | None) -> float:
    """Inverse-variance weighted mean vectors per cell of the grid; returns the arrow key (mas)."""
    t = result.turbulence
    assert t is not None
    ny, nx = result.shape
    cells_j = max(2, round(VECTOR_CELLS * ny / nx))
    ci = np.clip((t.i / nx * VECTOR_CELLS).astype(int), 0, VECTOR_CELLS - 1)
    cj = np.clip((t.j / ny * cells_j).astype(int), 0, cells_j - 1)
    sw = np.zeros((cells_j, VECTOR_CELLS, 2))
    swv = np.zeros((cells_j, VECTOR_CELLS, 2))
    np.add.at(sw, (cj, ci), weight)
    np.add.at(swv, (cj, ci), weight * vec)
    mean = swv / np.where(sw > 0, sw, 1.0)
    gi, gj = np.meshgrid((np.arange(VECTOR_CELLS) + 0.5) * nx / VECTOR_CELLS, (np.arange(cells_j) + 0.5) * ny / cells_j)
    ok = np.all(sw > 0, axis=2)
    rms = float(np.sqrt(np.mean(mean[ok] ** 2))) if ok.any() else 0.0
    key = key or nice(float(np.percentile(np.hypot(mean[ok, 0], mean[ok, 1]), 90)) if ok.any() else 10.0)
    q = ax.quiver(gi[ok], gj[ok], mean[ok, 0], mean[ok, 1], angles="xy", scale_units="xy",
                  scale=key / (0.5 * nx / VECTOR_CELLS), color="C0")
    ax.quiverkey(q, 0.85, 1.03, key, f"{key:g} mas", labelpos="E")
    ax.set(xlim=(0, nx), ylim=(0, ny), aspect="equal", xlabel="i (px)", ylabel="j (px)",
           title=f"{title}\nweighted mean per cell, rms {rms:.1f} mas per axis")
    return key


def _correction(ax: Any, result: ExposureResult, key: float) -> None:
    t = result.turbulence
    assert t is not None
    if t.field is None:
        _no_panel(ax, f"no correction applied:\n{t.reason}")
        return
    f = t.field
    nj, ni = f.shape
    stride = max(1, int(np.ceil(max(ni, nj) / 30)))
    gi, gj = np.meshgrid(np.arange(ni) * f.step_px, np.arange(nj) * f.step_px)
    r = f.residual_mas[::stride, ::stride]
    ny, nx = result.shape
    ax.quiver(gi[::stride, ::stride], gj[::stride, ::stride], r[..., 0], r[..., 1], angles="xy", scale_units="xy",
              scale=key / (0.5 * nx / VECTOR_CELLS), color="C3")
    ax.set(xlim=(0, nx), ylim=(0, ny), aspect="equal", xlabel="i (px)", ylabel="j (px)",
           title=f"the correction: GP residual field at the lookup nodes\n({ni} x {nj} nodes, "
                 f"step {f.step_px:.0f} px; rms {np.sqrt(np.mean(f.residual_mas ** 2)):.1f} mas per axis)")


def _correlation(ax: Any, result: ExposureResult) -> None:
    t = result.turbulence
    assert t is not None
    c, k = t.correlation, t.kernel
    if c is None or k is None or result.solution is None:
        _no_panel(ax, "no correlation measured")
        return
    arcmin_per_px = result.solution.scale_arcsec / 60.0
    di, dj = np.meshgrid(c.di_px, c.dj_px)
    r = np.hypot(di, dj) * arcmin_per_px
    trace = c.xi_mas2[0] + c.xi_mas2[1]
    model = k(di, dj)
    model_trace = model[..., 0, 0] + model[..., 1, 1]
    edges = np.linspace(0, float(r.max()), CORRELATION_BINS + 1)
    which = np.clip(np.digitize(r, edges) - 1, 0, CORRELATION_BINS - 1)
    centres, meas, fit = [], [], []
    for b in range(CORRELATION_BINS):
        sel = (which == b) & np.isfinite(trace) & (c.npairs > 0)
        if sel.any():
            w = c.npairs[sel]
            centres.append(float(np.average(r[sel], weights=w)))
            meas.append(float(np.average(trace[sel], weights=w)))
            fit.append(float(np.average(model_trace[sel], weights=w)))
    ax.plot(centres, meas, "o", color="C0", label="measured (treecorr, weighted)")
    ax.plot(centres, fit, "-", color="C3", label="fitted curl-free von Karman kernel")
    ax.axhline(0.0, color="0.5", lw=0.8)
    sigma = np.sqrt(k.axis_variance_mas2())
    ax.set(xlabel="separation (arcmin)", ylabel="<r_xi r_xi> + <r_eta r_eta> (mas^2)",
           title=f"residual correlation: kernel sigma ({sigma[0]:.1f}, {sigma[1]:.1f}) mas, L0 "
                 f"{k.outer_scale_px * arcmin_per_px:.1f}', axis ratio {k.axis_ratio:.2f}")
    ax.legend(fontsize=8)


def _cross_validation(ax: Any, result: ExposureResult) -> None:
    t = result.turbulence
    assert t is not None
    cv = t.cv
    if cv is None:
        _no_panel(ax, f"no cross-validation:\n{t.reason}")
        return
    w = 1.0 / t.variance_mas2
    ok = np.all(np.isfinite(cv.held_out_mas), axis=1)
    before = np.sum(w * t.residual_mas ** 2, axis=1)[ok]
    after = np.sum(w * cv.held_out_mas ** 2, axis=1)[ok]
    bins = np.linspace(0.0, float(np.percentile(before, 99)) or 1.0, 40)
    ax.hist(before, bins=bins, histtype="step", color="C0", label=f"TPV: mean {before.mean():.2f}")
    ax.hist(after, bins=bins, histtype="step", color="C3", label=f"TPV + GP (held back): mean {after.mean():.2f}")
    ax.set(xlabel="chi-square per star (both axes)", ylabel="stars",
           title=f"{cv.n_folds}-fold cross-validation, {cv.n_stars} stars: gain {cv.gain_sigma:.1f} sigma\n"
                 f"weighted rms ({cv.rms_before_mas[0]:.1f}, {cv.rms_before_mas[1]:.1f}) -> "
                 f"({cv.rms_after_mas[0]:.1f}, {cv.rms_after_mas[1]:.1f}) mas")
    ax.legend(fontsize=8)


def _error_map(ax: Any, result: ExposureResult) -> None:
    t = result.turbulence
    assert t is not None
    p = t.predicted
    ny, nx = result.shape
    shown = ax.imshow(np.hypot(p.map_mas[..., 0], p.map_mas[..., 1]), origin="lower", extent=(0, nx, 0, ny),
                      cmap="magma", aspect="equal")
    ax.figure.colorbar(shown, ax=ax, shrink=0.8, label="predicted random error, both axes (mas)")
    ax.set(xlabel="i (px)", ylabel="j (px)",
           title=f"predicted error: CRDER ({p.random_mas[0]:.1f}, {p.random_mas[1]:.1f}) mas, "
                 f"CSYER {p.systematic_mas:.2f} mas\n(TPV alone: ({t.predicted_tpv.random_mas[0]:.1f}, "
                 f"{t.predicted_tpv.random_mas[1]:.1f}) mas)")


def _residual_variance(ax: Any, result: ExposureResult) -> None:
    """Mean squared residual per bin of centroid error, beside what the error model and the residual model expect."""
    from astrodask.solve.turbulence import leverage

    t = result.turbulence
    assert t is not None and result.solution is not None
    if t.centroid_mas2 is None or len(t.i) < 2 * RESIDUAL_VARIANCE_BINS:
        _no_panel(ax, "too few stars for the residuals' variance")
        return
    n = t.centroid_mas2
    keep = 1.0 - np.clip(leverage(t.i, t.j, t.variance_mas2, degree=result.solution.degree, shape=result.shape),
                         0.0, 1.0)
    sigma = np.sqrt(np.mean(n, axis=1))
    edges = np.quantile(sigma, np.linspace(0.0, 1.0, RESIDUAL_VARIANCE_BINS + 1))
    which = np.clip(np.searchsorted(edges, sigma, side="right") - 1, 0, RESIDUAL_VARIANCE_BINS - 1)
    r2 = np.mean(t.residual_mas ** 2, axis=1)
    rows = []
    for b in range(RESIDUAL_VARIANCE_BINS):
        sel = which == b
        if sel.sum() < 2:
            continue
        model = np.mean(keep[sel] * t.variance_mas2[sel])
        white = np.mean(keep[sel] * t.noise.white_mas2(n[sel])) + t.noise.field_mas2 if t.noise else np.nan
        rows.append((float(np.median(sigma[sel])), float(np.mean(r2[sel])),
                     float(np.std(r2[sel]) / np.sqrt(sel.sum())), float(model), float(white)))
    x, y, err, model, white = (np.array(c) for c in zip(*rows))
    ax.errorbar(x, y / model, yerr=err / model, fmt="o", color="C0", label="measured mean squared residual")
    ax.axhline(1.0, color="0.4", label="the error model's scale^2 C + floor^2 (less each star's leverage)")
    title = "the residuals' variance over the error model's, by centroid error"
    if t.noise is not None:
        field = min(t.noise.field_mas2, t.field_bound_mas2)
        ax.plot(x, white / model, "-", color="C3",
                label=f"the residual model's: white + F, F = {t.noise.field_mas2:.1f} +- {t.noise.field_se_mas2:.1f} "
                      f"mas^2\n(the correlation's bound {t.field_bound_mas2:.1f}; field part {field:.1f} mas^2)")
        title += (f"\nthe residual model: scales ({t.noise.scales[0]:.2f}, {t.noise.scales[1]:.2f}), exponent "
                  f"{t.noise.exponent:+.3f}")
    else:
        title += "\nF not told from the white noise: the error model's floor stands for the field"
    ax.set(xscale="log", xlabel="centroid error, the error model's (mas)", ylabel="mean squared residual, ratio",
           title=title)
    ax.legend(fontsize=7)


def _error_parts(ax: Any, result: ExposureResult) -> None:
    """The predicted error's parts per axis as bars: the fit's, the field's (left, or the GP's), the frame's."""
    t = result.turbulence
    assert t is not None
    p = t.predicted
    parts = {"fit": p.fit_mas, "field": p.field_mas, "frame": (p.systematic_mas, p.systematic_mas),
             "CRDER": p.random_mas}
    x = np.arange(len(parts))
    for k, axis in enumerate(("xi", "eta")):
        ax.bar(x + (k - 0.5) * 0.38, [v[k] for v in parts.values()], width=0.38, color=f"C{k}", label=axis)
    ax.set_xticks(x, list(parts))
    ax.set(ylabel="mas", title=f"the predicted error's parts per axis ({t.correction.upper()})\n"
                               "CRDER: fit and field in quadrature; CSYER: the frame's")
    ax.legend(fontsize=8)
