"""The turbulence benchmark (issue 18): WCS error against the true, atmosphere-displaced sky.

A grid of simulated exposures with a curl-free von Karman atmospheric displacement
(:mod:`astrodask.simulate.atmosphere`, 10' outer scale) of 0, 5, 15 and 30 mas rms per axis, at
reference densities of about 0.3, 1 and 3 Gaia stars per arcmin^2, rendered by our renderer
(:func:`astrodask.simulate.simulate_field`) and, for two cells, by the GalSim renderer
(:func:`astrodask.simulate.render_scene`). Each exposure is solved by

- **ours, TPV only**: :func:`astrodask.solve.pipeline.solve_file` (serial, in this process), the
  solution written by :func:`astrodask.io.output.write_solution` and read back with its
  distortion-paper keywords (``CPDIS``/``DP``, if any) removed: the TPV polynomial alone;
- **ours, corrected**: the same file read as any FITS reader does,
  ``astropy.wcs.WCS(hdul[0].header, hdul)``, so lookup tables (``WCSDVARR``) apply. Present
  only when the solution file carries them (the turbulence-correction stage of issue 18);
  otherwise the column says ``-`` and the TPV-only figures are the whole story;
- **SourceExtractor + SCAMP** (TPV degree 3) on the same files (``benchmarks/peers.py``).

Each solution is scored by :func:`bench_solve.score_wcs` on a pixel grid against
:func:`astrodask.simulate.read_truth`: the truth WCS *seen through the atmosphere*, i.e. the true
sky position of what lands on each pixel of this exposure. ``rms`` and ``p95`` are of the angular
distance (both axes), mas. ``atm`` is the rms of the displacement itself over the frame (both
axes: sqrt(2) x the rms per axis): what a solution keeps when it follows none of it.
``pred`` is the predicted error of our solution from its header, ``sqrt(CRDER1^2 + CRDER2^2 +
CSYER1^2 + CSYER2^2)`` in mas (comparable with ``rms``), ``-`` when the header has none.
``stage`` is the time of solve stages other than today's nine (the correction stage), and
``(+N%)`` what it adds to the rest of the solve (the issue's target: under 20 % on a full frame).
``chi2 all/kept`` are our two chi-squares per degree of freedom.

``--seeds N`` solves every cell on N realisations (the cell's own seed and N - 1 more: another
atmosphere, other stars and noise); ``--turbulence`` and ``--densities`` keep part of the grid.
With turbulence, a second table splits our TPV-only error per axis against the truth on the scorer's
grid (tangent plane about our CRVAL): ``field left``, the atmosphere's displacement less its
least-squares polynomial of the TPV's degree over the grid (what a TPV fit cannot follow), and
``fit``, the rest (our solution less the undisplaced truth WCS and that polynomial: the fit's own
error); beside each, the predicted part (:class:`astrodask.solve.turbulence.PredictedError`'s
``field_mas`` and ``fit_mas`` of the TPV-only prediction), the significance of the residuals'
correlation, ``S/W``: the field's mean covariance within ``turbulence.corr_signal_arcmin`` and its
standard error (:func:`astrodask.solve.turbulence.short_range_covariance`: the significance's
weighted products with the TPV fit's own anticorrelation added back, unbiased), ``F``: the
residual-variance model's field and its standard error (:func:`astrodask.solve.turbulence.residual_variance`;
``-`` where it is not told from the white noise and the error model's floor stands), ``bound``: the
correlation's bound on the field's variance (:func:`astrodask.solve.turbulence.field_variance_bound`;
the predicted field part is the smaller), and the stage's decision; with ``--seeds``, the spread of
measured / predicted over each cell's realisations.

``--crowded`` runs two full Condor frames (9576 x 6388 px) at the speed sweep's 21,000 stars/deg^2
instead, without atmosphere and with 15 mas: the stage's share of a crowded full frame's solve.

The files are cached in --work and made again only when absent. Wall times are on a shared
machine (the core count and load are printed): read them as rough. Our solve runs with one BLAS
thread, as ``astrodask solve`` and Dask's workers run it.

Usage: python benchmarks/bench_turbulence.py [--quick | --crowded] [--work DIR] [--no-peer] [--no-galsim]
                                             [--shape NY NX] [--step-px 20] [--seeds N]
                                             [--turbulence MAS ...] [--densities PER_ARCMIN2 ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_solve
import peers

#: Turbulence amplitudes of the grid, mas rms per axis.
TURBULENCE_MAS: tuple[float, ...] = (0.0, 5.0, 15.0, 30.0)
#: Reference densities of the grid, Gaia stars (to the catalog limit) per arcmin^2.
DENSITIES_PER_ARCMIN2: tuple[float, ...] = (0.3, 1.0, 3.0)
#: Outer scale of the atmosphere, arcmin (the issue's figures).
OUTER_SCALE_ARCMIN: float = 10.0
#: Frame of the grid's exposures, (ny, nx) px at the Condor scale (0.85"/px): 42' x 28', four
#: by three outer scales; a quarter of a full frame's area, so the grid runs in minutes.
DEFAULT_SHAPE: tuple[int, int] = (2000, 3000)
#: --quick: a smaller frame, one density, two amplitudes, ours only.
QUICK_SHAPE: tuple[int, int] = (1200, 1800)
QUICK_TURBULENCE_MAS: tuple[float, ...] = (0.0, 15.0)
QUICK_DENSITIES_PER_ARCMIN2: tuple[float, ...] = (1.0,)
#: --crowded: full Condor frames at the speed sweep's 21,000 stars/deg^2 (bench_speed.py --scaling), without
#: atmosphere and with 15 mas: the stage's cost where it has the most stars (the issue's target: under 20 % of a
#: full frame's solve), and the gate's decision before any GP when there is no field.
CROWDED_DENSITY_PER_ARCMIN2: float = 21000.0 / 3600.0
CROWDED_TURBULENCE_MAS: tuple[float, ...] = (0.0, 15.0)
#: Cells of the grid also rendered by GalSim: (turbulence mas, density per arcmin^2).
GALSIM_CELLS: tuple[tuple[float, float], ...] = ((0.0, 1.0), (15.0, 1.0))
#: Field centre of our renderer's exposures, and the GalSim ones', degrees (high latitude).
FIELD_RA_DEG, FIELD_DEC_DEG = 150.1, 25.0
GALSIM_RA_DEG, GALSIM_DEC_DEG = 200.0, 35.0
#: Scorer grid step, pixels: the displacement's correlation length (L0 / 2 pi ~ 1.6') is ~110 px.
DEFAULT_STEP_PX: float = 20.0
#: Solve stages before the turbulence correction: timings of any other stage are the correction's.
BASE_STAGES = frozenset({"read", "detect", "references", "regions", "tpv", "detect_depth", "depth_match",
                         "like_fit", "chi_square"})
#: Header keywords of the distortion-paper lookup tables (removed for the TPV-only reading).
DISTORTION_PREFIXES = ("CPDIS", "CQDIS", "DP1", "DP2", "DQ1", "DQ2", "CPERR", "CQERR")
ARCMIN2_PER_DEG2 = 3600.0
MAS_PER_DEG = 3.6e6
#: --seeds: realisation k > 0 of a cell has the cell's seed plus k times this (names end in -s<k>).
SEED_STRIDE = 7919


@dataclass(frozen=True)
class Cell:
    """One exposure of the grid."""

    renderer: str  #: "ours" or "galsim"
    turbulence_mas: float
    density_per_arcmin2: float
    seed: int
    realisation: int = 0  #: 0: the cell's own seed; k > 0: --seeds' k-th other realisation

    @property
    def name(self) -> str:
        tail = f"-s{self.realisation}" if self.realisation else ""
        return f"turb-{self.renderer}-{self.turbulence_mas:g}mas-{self.density_per_arcmin2:g}pam2{tail}"

    def again(self, k: int) -> Cell:
        """The cell's k-th other realisation (k = 0: itself)."""
        return dataclasses.replace(self, seed=self.seed + SEED_STRIDE * k, realisation=k)


@dataclass(frozen=True)
class Split:
    """Our TPV-only error against the truth split into its parts, and the predicted parts; per axis, mas."""

    field_left_mas: tuple[float, float]  #: the atmosphere less its polynomial of the TPV's degree over the grid
    fit_mas: tuple[float, float]  #: the rest: our TPV less the undisplaced truth and that polynomial
    pred_field_mas: tuple[float, float]  #: PredictedError.field_mas (TPV only)
    pred_fit_mas: tuple[float, float]  #: PredictedError.fit_mas
    sigma: float | None  #: the correlation's significance within turbulence.corr_signal_arcmin
    #: the field's short-range covariance (both axes pooled, the fit's part added back) and its standard error
    short_cov_mas2: tuple[float, float] | None
    decision: str  #: "tpv+gp", "tpv" (gate declined after a GP) or "tpv (no GP)"
    #: the residual-variance model's field F and its standard error (None: not told from the white noise)
    residual_field_mas2: tuple[float, float] | None = None
    field_bound_mas2: float | None = None  #: the correlation's bound on the field's variance (None: not computed)


@dataclass(frozen=True)
class Files:
    image: Path
    catalog: Path
    truth_wcs: Path


@dataclass
class Row:
    """One cell solved and scored."""

    cell: Cell
    n_refs_per_arcmin2: float = math.nan
    atm_mas: float = math.nan
    ours_status: str = "-"
    ours_reason: str = ""
    tpv: bench_solve.Score | None = None
    corrected: bench_solve.Score | None = None
    predicted_mas: float | None = None
    chi2: tuple[float, float] = (math.nan, math.nan)
    n_matches: int | None = None
    ours_s: float | None = None
    stage_s: float | None = None
    peer_status: str = "-"
    peer: bench_solve.Score | None = None
    peer_s: float | None = None
    split: Split | None = None


def grid(quick: bool, galsim: bool, crowded: bool = False, *, seeds: int = 1,
         turbulence: tuple[float, ...] | None = None, densities: tuple[float, ...] | None = None) -> list[Cell]:
    """The grid's cells (each cell's realisations together); ``turbulence``, ``densities``: keep only these."""
    if crowded:
        cells = [Cell("ours", t, CROWDED_DENSITY_PER_ARCMIN2, 3000 + m) for m, t in enumerate(CROWDED_TURBULENCE_MAS)]
    else:
        amps = QUICK_TURBULENCE_MAS if quick else TURBULENCE_MAS
        dens = QUICK_DENSITIES_PER_ARCMIN2 if quick else DENSITIES_PER_ARCMIN2
        cells = [Cell("ours", t, d, 1000 + 10 * k + m) for k, d in enumerate(dens) for m, t in enumerate(amps)]
        if galsim and not quick:
            cells += [Cell("galsim", t, d, 2000 + k) for k, (t, d) in enumerate(GALSIM_CELLS)]
    cells = [c for c in cells if (turbulence is None or c.turbulence_mas in turbulence)
             and (densities is None or c.density_per_arcmin2 in densities)]
    return [c.again(k) for c in cells for k in range(seeds)]


def make_files(work: Path, cell: Cell, shape: tuple[int, int]) -> Files:
    """The cell's exposure, catalog and truth, made when any is absent."""
    from astrodask.simulate import Scene, TurbulenceSpec, render_scene, simulate_field

    base = work / cell.name
    files = Files(image=base.with_name(base.name + ".fits.fz"), catalog=base.with_name(base.name + "_gaia.ecsv"),
                  truth_wcs=base.with_name(base.name + ".truth.wcs.fits"))
    if all(p.is_file() for p in dataclasses.astuple(files)):
        return files
    spec = (TurbulenceSpec(rms_mas=cell.turbulence_mas, outer_scale_arcmin=OUTER_SCALE_ARCMIN, seed=cell.seed)
            if cell.turbulence_mas > 0 else None)
    density = cell.density_per_arcmin2 * ARCMIN2_PER_DEG2
    started = time.perf_counter()
    if cell.renderer == "ours":
        simulate_field(work, cell.name, ra_deg=FIELD_RA_DEG, dec_deg=FIELD_DEC_DEG, shape=shape,
                       rng=np.random.default_rng(cell.seed), density_per_deg2=density, turbulence=spec)
    else:
        scene = Scene(cell.name, seed=cell.seed, shape=shape, ra_deg=GALSIM_RA_DEG, dec_deg=GALSIM_DEC_DEG,
                      star_density_per_deg2=density, turbulence=spec)
        render_scene(scene, work, rng=np.random.default_rng(cell.seed))
    print(f"  made {cell.name} ({cell.renderer} renderer) in {time.perf_counter() - started:.1f} s", flush=True)
    return files


def reference_density(catalog: Path, truth: Any, shape: tuple[int, int]) -> float:
    """Gaia stars of the catalog that fall on the frame, per arcmin^2."""
    from astropy.table import Table

    cat = Table.read(catalog, format="ascii.ecsv")
    i, j = truth.world_to_pixel_values(np.asarray(cat["ra"], float), np.asarray(cat["dec"], float))
    ny, nx = shape
    inside = (i > -0.5) & (i < nx - 0.5) & (j > -0.5) & (j < ny - 0.5)
    scale_deg = math.sqrt(abs(np.linalg.det(truth.wcs.pixel_scale_matrix)))
    return float(np.count_nonzero(inside) / (nx * ny * scale_deg**2 * ARCMIN2_PER_DEG2))


def tpv_only(header: fits.Header) -> WCS:
    """The solution's TPV alone: its header without the distortion-paper lookup-table keywords."""
    header = header.copy()
    for key in [k for k in header if k.startswith(DISTORTION_PREFIXES)]:
        del header[key]
    return WCS(header)


def predicted_mas(header: fits.Header) -> float | None:
    """sqrt(CRDER1^2 + CRDER2^2 + CSYER1^2 + CSYER2^2) of the header, mas; None when it has none."""
    keys = [k for k in ("CRDER1", "CRDER2", "CSYER1", "CSYER2") if k in header]
    if not keys:
        return None
    return float(math.sqrt(sum(float(header[k]) ** 2 for k in keys)) * MAS_PER_DEG)


def solve_ours(row: Row, files: Files, truth: Any, shape: tuple[int, int], out: Path, step_px: float) -> None:
    from astrodask.errors import AstrodaskError
    from astrodask.io.output import write_solution
    from astrodask.reference.catalog import read_catalog
    from astrodask.solve.pipeline import solve_file

    import scipy.linalg  # noqa: F401  (loaded before the limit below, so that it applies to scipy's BLAS too)
    from threadpoolctl import threadpool_limits

    started = time.perf_counter()
    try:
        with threadpool_limits(limits=1, user_api="blas"):  # as `astrodask solve` and Dask's workers run a solve
            result = solve_file(files.image, catalog=read_catalog(files.catalog))
    except AstrodaskError as err:  # reported as the cell's failure; anything else is a bug and stops the run
        row.ours_status, row.ours_reason = "error", f"{type(err).__name__}: {err}"
        return
    row.ours_s = time.perf_counter() - started
    row.ours_status, row.ours_reason = str(result.status), result.reason
    extra = {k: v for k, v in result.timings.items() if k not in BASE_STAGES}
    row.stage_s = float(sum(extra.values())) if extra else None
    q = result.quality
    if q is not None:
        row.chi2 = (float(q.chi2_dof), float(getattr(q, "chi2_dof_kept", math.nan)))
    row.n_matches = result.n_matches
    if result.solution is None:
        return
    path = write_solution(result, out)
    with fits.open(path) as hdul, warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)  # a dataless primary HDU: NAXIS = 0 < WCSAXES
        header = hdul[0].header
        row.tpv = bench_solve.score_wcs(tpv_only(header), truth, shape, step_px=step_px)
        if "CPDIS1" in header or "CPDIS2" in header:
            row.corrected = bench_solve.score_wcs(WCS(header, hdul), truth, shape, step_px=step_px)
        row.predicted_mas = predicted_mas(header)
        if result.turbulence is not None:
            row.split = split_error(tpv_only(header), truth, shape, step_px, result)


def split_error(tpv: WCS, truth: Any, shape: tuple[int, int], step_px: float, result: Any) -> Split:
    """Our TPV-only error per axis split into the field a TPV cannot follow and the fit's own, beside the predicted.

    On the scorer's grid, in the tangent plane about our CRVAL (mas): the atmosphere ``a`` (the undisplaced
    truth WCS less the displaced truth), its least-squares polynomial ``P a`` of the TPV's degree in the pixels
    (what a TPV fit takes of it), ``field left = a - P a`` and ``fit = error - field left``.
    """
    from astrodask.config import TurbulenceConfig
    from astrodask.solve.turbulence import short_range_covariance
    from astrodask.sphere import gnomonic

    config = TurbulenceConfig()  # solve_file's default
    i, j = bench_solve.pixel_grid(shape, step_px)
    ra0, dec0 = (float(v) for v in tpv.wcs.crval)

    def plane(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
        x, y = gnomonic(ra, dec, ra0, dec0)
        return np.degrees(np.column_stack([x, y])) * MAS_PER_DEG

    displaced = plane(*truth.pixel_to_world_values(i, j))
    atmosphere = plane(*truth.wcs.pixel_to_world_values(i, j)) - displaced
    error = plane(*tpv.pixel_to_world_values(i, j)) - displaced
    ny, nx = shape
    u, v = 2 * i / (nx - 1) - 1, 2 * j / (ny - 1) - 1
    degree = result.solution.degree
    design = np.column_stack([u ** a * v ** b for a in range(degree + 1) for b in range(degree + 1 - a)])
    coef, *_ = np.linalg.lstsq(design, atmosphere, rcond=None)
    left = atmosphere - design @ coef
    turb = result.turbulence
    pred = turb.predicted_tpv
    decision = turb.correction if turb.cv is not None or turb.applied else "tpv (no GP)"

    def rms(x: np.ndarray) -> tuple[float, float]:
        r = np.sqrt(np.mean(x ** 2, axis=0))
        return float(r[0]), float(r[1])

    short = None
    if turb.significance is not None and turb.correlation is not None and turb.n_stars <= config.corr_max_stars:
        # the correlation's stars are all the kept ones (below corr_max_stars): the statistic over the same pairs
        cov = short_range_covariance(turb.i, turb.j, turb.variance_mas2, turb.correlation, turb.significance,
                                     degree=result.solution.degree, shape=shape)
        short = (cov, turb.significance.pooled_covariance_mas2()[1])
    noise = turb.noise
    return Split(rms(left), rms(error - left), pred.field_mas, pred.fit_mas,
                 turb.significance.sigma if turb.significance is not None else None, short, decision,
                 (noise.field_mas2, noise.field_se_mas2) if noise is not None else None,
                 turb.field_bound_mas2 if math.isfinite(turb.field_bound_mas2) else None)


def solve_peer(row: Row, files: Files, truth: Any, shape: tuple[int, int], scratch: Path, step_px: float) -> None:
    res = peers.solve_with_scamp(files.image, files.catalog, scratch)
    row.peer_status, row.peer_s = res.status, res.times_s.get("total")
    if res.wcs is not None:
        row.peer = bench_solve.score_wcs(res.wcs, truth, shape, step_px=step_px)


def _f(value: float | None, digits: int = 1) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.{digits}f}"


def _score(score: bench_solve.Score | None) -> str:
    return f"{_f(score.rms_mas):>6} {_f(score.p95_mas):>6}" if score is not None else f"{'-':>6} {'-':>6}"


def _ratio(a: float | None, b: float | None) -> str:
    return _f(a / b, 2) if a is not None and b is not None and b > 0 else "-"


def print_table(rows: list[Row]) -> None:
    print()
    print(f"{'':>7} {'turb':>5} {'refs':>5} {'atm':>5} | {'ours TPV only':^13} | {'ours corrected':^13} | "
          f"{'SExtractor+SCAMP':^13} | {'corr/':>5} | {'pred':>5} {'meas/':>5} | {'ours':^11} | {'time s':^17}")
    print(f"{'render':>7} {'mas':>5} {'/am2':>5} {'rms':>5} | {'rms':>6} {'p95':>6} | {'rms':>6} {'p95':>6} | "
          f"{'rms':>6} {'p95':>6} | {'SCAMP':>5} | {'mas':>5} {'pred':>5} | {'chi2 a/k':^11} | "
          f"{'ours':>5} {'stage':>5} {'scamp':>5}")
    print("-" * 128)
    for r in rows:
        c = r.cell
        status = "" if r.ours_status == "solved" else f"  ours: {r.ours_status} {r.ours_reason}"
        if r.peer_status not in ("solved", "-"):
            status += f"  scamp: {r.peer_status}"
        ours = r.corrected or r.tpv
        base_s = (r.ours_s - r.stage_s) if r.stage_s is not None and r.ours_s else None
        share = f" (+{r.stage_s / base_s:.0%})" if base_s else ""
        print(f"{c.renderer:>7} {c.turbulence_mas:>5g} {_f(r.n_refs_per_arcmin2, 2):>5} {_f(r.atm_mas):>5} | "
              f"{_score(r.tpv)} | {_score(r.corrected)} | {_score(r.peer)} | "
              f"{_ratio(r.corrected.rms_mas if r.corrected else None, r.peer.rms_mas if r.peer else None):>5} | "
              f"{_f(r.predicted_mas):>5} {_ratio(ours.rms_mas if ours else None, r.predicted_mas):>5} | "
              f"{_f(r.chi2[0], 2):>5}/{_f(r.chi2[1], 2):<5} | {_f(r.ours_s):>5} {_f(r.stage_s):>5} "
              f"{_f(r.peer_s):>5}{share}{status}")
    print()
    print("turb: displacement rms per axis (10' outer scale); refs/am2: Gaia stars on the frame per arcmin^2; "
          "atm: rms of the displacement over the frame (both axes)")
    print("rms, p95: angular distance between a solution and the true displaced sky over a pixel grid, mas; "
          "corrected '-': no lookup tables in our solution")
    print("corr/SCAMP: our corrected rms over SCAMP's (target at 15 mas, ~1/am2: <= 0.4); pred: our header's "
          "CRDER/CSYER, mas; meas/pred: our rms (corrected, else TPV) over pred (target 1/1.5 to 1.5)")
    print("chi2 a/k: our chi2/dof over all matched pairs / over the kept ones; time s: our solve (serial, the "
          "stage included), the correction stage, SExtractor + SCAMP; (+N%): what the stage adds to the rest of "
          "our solve (target < 20 % on a full frame)")
    split = [r for r in rows if r.split is not None]
    if split:
        print()
        print("Our TPV-only error against the truth, per axis (xi, eta), mas: the field a TPV cannot follow and the "
              "fit's own, beside the predicted parts")
        print(f"{'render':>7} {'turb':>5} {'refs':>5} {'seed':>5} | {'field left':^11} {'pred field':^11} | "
              f"{'fit':^11} {'pred fit':^11} | {'sigma':>6} {'S/W mas2':^11} {'F mas2':^11} {'bound':>6} "
              f"{'stage':<11} | "
              f"{'meas':>5} {'pred':>5} {'meas/pred':>9}")
        for r in split:
            s, c = r.split, r.cell
            assert s is not None
            ours = r.corrected or r.tpv
            print(f"{c.renderer:>7} {c.turbulence_mas:>5g} {_f(r.n_refs_per_arcmin2, 2):>5} {c.seed:>5} | "
                  f"{_pair(s.field_left_mas)} {_pair(s.pred_field_mas)} | {_pair(s.fit_mas)} {_pair(s.pred_fit_mas)} | "
                  f"{_f(s.sigma):>6} {_pm(s.short_cov_mas2):>11} {_pm(s.residual_field_mas2):>11} "
                  f"{_f(s.field_bound_mas2):>6} {s.decision:<11} | "
                  f"{_f(ours.rms_mas if ours else None):>5} {_f(r.predicted_mas):>5} "
                  f"{_ratio(ours.rms_mas if ours else None, r.predicted_mas):>9}")
    by_cell: dict[tuple[str, float, float], list[float]] = {}
    for r in rows:
        ours = r.corrected or r.tpv
        if ours is not None and r.predicted_mas:
            key = (r.cell.renderer, r.cell.turbulence_mas, r.cell.density_per_arcmin2)
            by_cell.setdefault(key, []).append(ours.rms_mas / r.predicted_mas)
    if any(len(v) > 1 for v in by_cell.values()):
        print()
        print("measured / predicted over the realisations of each cell (target 1/1.5 to 1.5):")
        for (renderer, t, d), ratios in by_cell.items():
            inside = sum(1 / 1.5 <= x <= 1.5 for x in ratios)
            print(f"  {renderer:>7} {t:>4g} mas {d:>4g}/am2: min {min(ratios):.2f} median {np.median(ratios):.2f} "
                  f"max {max(ratios):.2f} ({inside} of {len(ratios)} within 1.5x)")


def _pair(x: tuple[float, float]) -> str:
    return f"{x[0]:>5.1f},{x[1]:>5.1f}"


def _pm(x: tuple[float, float] | None) -> str:
    return "-" if x is None else f"{x[0]:.1f}+-{x[1]:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: smaller frame, one density, 0 and 15 mas")
    parser.add_argument("--crowded", action="store_true",
                        help="two full Condor frames at 21,000 stars/deg^2, 0 and 15 mas (the stage's cost)")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "astrodask-bench-turb",
                        help="where the exposures are cached and solved")
    parser.add_argument("--no-peer", action="store_true", help="skip SExtractor + SCAMP")
    parser.add_argument("--no-galsim", action="store_true", help="skip the GalSim-rendered cells")
    parser.add_argument("--shape", type=int, nargs=2, metavar=("NY", "NX"), default=None, help="frame size, px")
    parser.add_argument("--step-px", type=float, default=DEFAULT_STEP_PX, help="scorer grid step, px")
    parser.add_argument("--seeds", type=int, default=1, help="realisations of each cell (1: the cell's own seed)")
    parser.add_argument("--turbulence", type=float, nargs="+", default=None, metavar="MAS",
                        help="keep only the cells of these amplitudes")
    parser.add_argument("--densities", type=float, nargs="+", default=None, metavar="PER_ARCMIN2",
                        help="keep only the cells of these reference densities")
    args = parser.parse_args()
    from astrodask.simulate import read_truth

    from astrodask.simulate import CONDOR_SHAPE

    default_shape = CONDOR_SHAPE if args.crowded else (QUICK_SHAPE if args.quick else DEFAULT_SHAPE)
    shape = tuple(args.shape) if args.shape else default_shape
    work = args.work / f"{shape[0]}x{shape[1]}"
    work.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores, load average {load[0]:.2f}; python {sys.version.split()[0]}; "
          f"{bench_solve.tool_versions()}")
    print(f"frames {shape[1]} x {shape[0]} px at 0.85\"/px; outer scale {OUTER_SCALE_ARCMIN:g}'; work {work}")
    peer_ok = not args.no_peer
    rows = []
    galsim = not args.no_galsim
    if galsim:
        try:
            import galsim as _  # noqa: F401
        except ImportError:
            print("GalSim not installed: its cells are skipped")
            galsim = False
    for cell in grid(args.quick, galsim, args.crowded, seeds=args.seeds,
                     turbulence=tuple(args.turbulence) if args.turbulence else None,
                     densities=tuple(args.densities) if args.densities else None):
        print(f"{cell.name}:", flush=True)
        files = make_files(work, cell, shape)
        truth = read_truth(files.truth_wcs)
        row = Row(cell=cell, n_refs_per_arcmin2=reference_density(files.catalog, truth, shape))
        row.atm_mas = bench_solve.score_wcs(truth.wcs, truth, shape, step_px=args.step_px).rms_mas
        solve_ours(row, files, truth, shape, work / f"{cell.name}.ours", args.step_px)
        if peer_ok:
            solve_peer(row, files, truth, shape, work / f"{cell.name}.scamp", args.step_px)
        print(f"  ours {row.ours_status} ({_f(row.ours_s)} s), TPV-only rms {_f(row.tpv.rms_mas if row.tpv else None)}"
              f" mas; scamp {row.peer_status} rms {_f(row.peer.rms_mas if row.peer else None)} mas", flush=True)
        rows.append(row)
    print_table(rows)


if __name__ == "__main__":
    main()
