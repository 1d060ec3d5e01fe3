"""The solve benchmark: astrodask's solver beside SourceExtractor + SCAMP on simulated exposures.

Each case is one :func:`astrodask.simulate.simulate_field` exposure with a known truth WCS
(seeded, cached in --work and made again only when absent): a full Condor frame (9576 x
6388 px at 0.85"/px) unless noted, with galaxies, cosmic rays and hot columns, and an
approximate TAN header a few arcmin, ~0.5 deg and ~0.3 % off.

Every solution is scored by :func:`score_wcs` on a pixel grid over the whole image (edges
and corners included): the angular distance between the sky positions of each grid pixel
through the solved WCS and through the truth WCS, as rms, 95th percentile and maximum in
mas. The approximate header is scored too, as a sanity check of the case.

Each solver runs in a fresh process per case (ours: a Python child; the peer: the
``source-extractor`` and ``scamp`` executables), so wall time and peak memory are its own.
Our wall time is around ``solve_file`` (reading the catalog and the image and detecting
included); SCAMP's is decompression + SExtractor + reference catalog + SCAMP.
See ``benchmarks/peers.py`` for the peer's settings.

Second renderer: cases named ``gs-<case>`` (``gs-crowded``, ``gs-messy``, ``gs-plate``,
``gs-sparse``, ``gs-condor``, ``gs-offset3x``, ``gs-scale20``) are rendered by
the GalSim renderer (:mod:`astrodask.simulate.galsim_render`; other PSF, noise, scene and
distortion models, TAN-SIP truth) at their bench size, cached in --work like the others. The DSS plate case has no FITS
WCS: SCAMP starts from a TAN fitted to its DSS plate solution (``peers.tan_guess_from_wcs``).

Real data: ``panoptes`` is the real PANOPTES frame ``../shared/data/panoptes_cygnus/unsolved.fits``
with its G < 10 Gaia DR3 stars. It has no exact truth: it is scored against astrometry.net's
solution (``solve-field_tycho2_unsolved.wcs``, itself about 0.14 px rms against Gaia). It has
no WCS: both solvers get the same pointing (centre, scale, rotation), ours through
``solve_file(pointing=...)`` and the config overrides of the README's PANOPTES paragraph.

``--set detect.first_from_depth=false`` (repeatable) adds a config override to every case of ours,
e.g. to compare one detection extraction with two.

Usage: python benchmarks/bench_solve.py [--cases dense,sparse,gs-crowded,panoptes,...] [--no-peer] [--no-ours]
                                        [--work DIR] [--step-px 100] [--set SECTION.KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import warnings

import numpy as np
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS, FITSFixedWarning

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers

#: Grid step of the scorer, pixels (the last row and column are always included).
DEFAULT_STEP_PX = 100
#: Milliarcseconds per degree.
MAS_PER_DEG = 3.6e6
#: The scorer's self-test: a 1 px shift must read as one pixel scale within this fraction.
SELF_TEST_TOLERANCE = 0.01
#: Time limit of one solve, seconds.
SOLVE_TIMEOUT_S = 900.0


# --------------------------------------------------------------------------
# The cases
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One simulated exposure: ``simulate_field`` keyword arguments and a seed."""

    name: str
    about: str
    seed: int
    ra_deg: float
    dec_deg: float
    density_per_deg2: float = 2500.0
    distortion_px: float = 6.0
    rotation_deg: float = 0.4
    parity: int = 1
    pointing_error_arcmin: float = 3.0
    rotation_error_deg: float = 0.5
    scale_error_frac: float = 0.003
    render_options: dict[str, Any] = field(default_factory=dict)


#: Short exposure: the sky scales with the exposure time (50 ADU in 60 s).
SPARSE_EXPTIME_S = 5.0

CASES: dict[str, Case] = {c.name: c for c in (
    Case("dense", "high latitude, 6000 stars/deg2 to G=20, 6 px distortion", 101,
         ra_deg=185.0, dec_deg=31.0, density_per_deg2=6000.0),
    Case("crowded", "50,000 stars/deg2 to G=20 (Galactic plane), full frame", 102,
         ra_deg=280.0, dec_deg=-8.0, density_per_deg2=50000.0, rotation_deg=-0.3,
         pointing_error_arcmin=2.0, rotation_error_deg=-0.4, scale_error_frac=-0.002),
    Case("sparse", f"{SPARSE_EXPTIME_S:g} s exposure of a thin field (a few hundred stars detected)", 103,
         ra_deg=200.0, dec_deg=45.0, density_per_deg2=800.0, rotation_deg=179.6,
         pointing_error_arcmin=4.0, render_options={"exptime_s": SPARSE_EXPTIME_S,
                                                     "sky_adu": 50.0 * SPARSE_EXPTIME_S / 60.0}),
    Case("distorted", "strong distortion: 15 px at the corners", 104,
         ra_deg=120.0, dec_deg=-35.0, distortion_px=15.0, rotation_deg=-0.8, scale_error_frac=-0.003),
    Case("pole", "centre at dec +89.4: the pole is in the frame", 105,
         ra_deg=45.0, dec_deg=89.4, rotation_deg=12.0, pointing_error_arcmin=3.5),
    Case("ra0", "centre RA 0.2 deg: the frame spans RA 359.x .. 0.x", 106,
         ra_deg=0.2, dec_deg=-5.0, rotation_deg=0.2, rotation_error_deg=-0.5),
    Case("flipped", "parity -1 (mirrored); the approximate header carries the flip", 107,
         ra_deg=60.0, dec_deg=20.0, parity=-1, rotation_deg=0.5),
)}


@dataclass(frozen=True)
class CaseFiles:
    """The files of a simulated case."""

    image: Path
    catalog: Path
    truth_wcs: Path | None
    truth_table: Path | None


@dataclass(frozen=True)
class Prepared:
    """A case ready to solve: its files, the WCS it is scored against and what each solver is given."""

    name: str
    about: str
    files: CaseFiles
    truth: Any  #: a WCS, or an astrodask.simulate.TruthMapping (the truth WCS seen through the atmosphere)
    truth_note: str = ""  #: said in the output when the truth is not exact
    overrides: dict[str, Any] = field(default_factory=dict)  #: PipelineConfig.from_dict for our solve
    pointing: dict[str, Any] | None = None  #: get_pointing overrides for our solve
    scamp_guess: fits.Header | None = None  #: WCS keywords SCAMP starts from instead of the image's
    approx: WCS | None = None  #: the approximate WCS the solvers start from (scored as a sanity check)


#: Prefix of the GalSim cases (astrodask.simulate.CASES at their bench size).
GS_PREFIX = "gs-"
#: The real-data case.
PANOPTES = "panoptes"
#: Its pointing (both solvers): the field centre, scale and rotation of the neighbouring exposure's
#: astrometry.net solution (solved.fits.fz, two minutes later), rounded.
PANOPTES_POINTING = {"ra_deg": 303.21, "dec_deg": 46.02, "scale_arcsec": 10.32, "rotation_deg": 90.0, "parity": 1}
#: The config our solve of it needs today (README, PANOPTES paragraph).
PANOPTES_OVERRIDES = {"regions": {"n_regions": 4, "min_good_regions": 2, "min_stars": 5},
                      "fit": {"tpv_degree": 2, "min_matches": 20}}


def known_cases() -> list[str]:
    from astrodask.simulate import CASES as GS_CASES

    return [*CASES, *(GS_PREFIX + n for n in GS_CASES), PANOPTES]


def prepare_simulated(work: Path, name: str) -> Prepared:
    from astrodask.simulate import read_truth

    files = simulate_case(work, CASES[name])
    return Prepared(name=name, about=CASES[name].about, files=files, truth=read_truth(files.truth_wcs),
                    approx=header_wcs(files.image))


def prepare_galsim(work: Path, name: str) -> Prepared:
    """A GalSim case at its bench size, rendered when any of its files is absent."""
    from astrodask.simulate import case_scene, read_truth, render_scene

    scene = case_scene(name[len(GS_PREFIX):], "bench")
    base = work / scene.name
    files = CaseFiles(image=base.with_name(base.name + ".fits.fz"), catalog=base.with_name(base.name + "_gaia.ecsv"),
                      truth_wcs=base.with_name(base.name + ".truth.wcs.fits"),
                      truth_table=base.with_name(base.name + ".truth.ecsv"))
    if not all(p.is_file() for p in (files.image, files.catalog, files.truth_wcs, files.truth_table)):
        rendered = render_scene(scene, work, rng=np.random.default_rng(scene.seed))
        print(f"  rendered {scene.name} with GalSim in {rendered.render_s:.1f} s", flush=True)
    approx = header_wcs(files.image)
    guess = None
    if scene.header_style == "dss":
        ny, nx = scene.shape
        guess = peers.tan_guess_from_wcs(approx, (ny, nx))
        guess["MJD-OBS"] = (float(Time(scene.date_obs, scale="tt").mjd), "exposure start (from the DSS DATE-OBS)")
        guess["EXPTIME"] = (scene.exptime_s, "[s] from EXPOSURE (minutes)")
    return Prepared(name=name, about=scene.about, files=files, truth=read_truth(files.truth_wcs),
                    scamp_guess=guess, approx=approx)


def prepare_panoptes() -> Prepared:
    """The real PANOPTES frame, scored against astrometry.net's solution (no exact truth)."""
    from astrodask.simulate import cd_header, shared_data_dir
    from astrodask.wcsutil import tan_wcs

    root = shared_data_dir()
    if root is None or not (root / "panoptes_cygnus").is_dir():
        raise SystemExit("the panoptes case needs ../shared/data/panoptes_cygnus (or $ASTRODASK_SHARED_DATA)")
    folder = root / "panoptes_cygnus"
    image = folder / "unsolved.fits"
    header = fits.getheader(image)
    shape = (int(header["NAXIS2"]), int(header["NAXIS1"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        truth = WCS(fits.getheader(folder / "solve-field_tycho2_unsolved.wcs"))
    truth.pixel_shape = (shape[1], shape[0])
    p = PANOPTES_POINTING
    approx = tan_wcs(p["ra_deg"], p["dec_deg"], shape=shape, scale_arcsec=p["scale_arcsec"],
                     rotation_deg=p["rotation_deg"], parity=p["parity"])
    guess = cd_header(approx)
    guess["MJD-OBS"] = (float(Time(header["DATE-OBS"], scale="utc").mjd), "exposure start")
    return Prepared(name=PANOPTES, about="real PANOPTES DSLR frame (700 x 700 px at 10.3\"/px, Cygnus), "
                    "131 Gaia G < 10 stars", files=CaseFiles(image=image, catalog=folder / "gaia_dr3_G10_cygnus.ecsv",
                                                             truth_wcs=None, truth_table=None),
                    truth=truth, truth_note="no exact truth: scored against astrometry.net's solution "
                    "(solve-field_tycho2_unsolved.wcs, ~0.14 px rms against Gaia itself)",
                    overrides=PANOPTES_OVERRIDES, pointing=dict(PANOPTES_POINTING), scamp_guess=guess, approx=approx)


def prepare(work: Path, name: str) -> Prepared:
    if name == PANOPTES:
        return prepare_panoptes()
    if name.startswith(GS_PREFIX):
        return prepare_galsim(work, name)
    return prepare_simulated(work, name)


def case_files(work: Path, case: Case) -> CaseFiles:
    return CaseFiles(image=work / f"{case.name}.fits.fz", catalog=work / f"{case.name}_gaia.ecsv",
                     truth_wcs=work / f"{case.name}.truth.wcs.fits", truth_table=work / f"{case.name}.truth.ecsv")


def simulate_case(work: Path, case: Case) -> CaseFiles:
    """The case's files, simulated when any is absent."""
    from astrodask.simulate import simulate_field

    files = case_files(work, case)
    if all(p.is_file() for p in (files.image, files.catalog, files.truth_wcs, files.truth_table)):
        return files
    started = time.perf_counter()
    simulate_field(work, case.name, ra_deg=case.ra_deg, dec_deg=case.dec_deg,
                   rng=np.random.default_rng(case.seed), density_per_deg2=case.density_per_deg2,
                   distortion_px=case.distortion_px, rotation_deg=case.rotation_deg, parity=case.parity,
                   pointing_error_arcmin=case.pointing_error_arcmin,
                   rotation_error_deg=case.rotation_error_deg, scale_error_frac=case.scale_error_frac,
                   render_options=case.render_options)
    print(f"  simulated {case.name} in {time.perf_counter() - started:.1f} s", flush=True)
    return files


# --------------------------------------------------------------------------
# The judge
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Score:
    """Distances between a WCS and the truth over a pixel grid, mas."""

    rms_mas: float
    p95_mas: float
    max_mas: float
    n_points: int

    def text(self) -> str:
        return f"{_err(self.rms_mas)}/{_err(self.p95_mas)}/{_err(self.max_mas)}"


def pixel_grid(shape: tuple[int, int], step_px: float) -> tuple[np.ndarray, np.ndarray]:
    """0-based (i, j) of a grid every ``step_px`` over an (ny, nx) image, last row and column included."""
    ny, nx = shape
    gi = np.unique(np.append(np.arange(0.0, nx - 1, step_px), nx - 1.0))
    gj = np.unique(np.append(np.arange(0.0, ny - 1, step_px), ny - 1.0))
    ii, jj = np.meshgrid(gi, gj)
    return ii.ravel(), jj.ravel()


def great_circle_mas(ra1: np.ndarray, dec1: np.ndarray, ra2: np.ndarray, dec2: np.ndarray) -> np.ndarray:
    """Angular separation, mas: ``atan2(|p1 x p2|, p1 . p2)`` on unit vectors.

    Exact at every scale (no cancellation for sub-mas separations, unlike the arccos of a
    dot product), across RA 0/360 and at the poles.
    """
    def unit(ra, dec):
        ra, dec = np.radians(ra), np.radians(dec)
        return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])

    p1 = unit(np.asarray(ra1, float), np.asarray(dec1, float))
    p2 = unit(np.asarray(ra2, float), np.asarray(dec2, float))
    cross = np.linalg.norm(np.cross(p1, p2, axis=0), axis=0)
    return np.degrees(np.arctan2(cross, np.sum(p1 * p2, axis=0))) * MAS_PER_DEG


def score_wcs(wcs: WCS, truth_wcs: Any, shape: tuple[int, int], *, step_px: float = DEFAULT_STEP_PX) -> Score:
    """Score a WCS against the truth on a pixel grid over the whole image.

    Parameters
    ----------
    wcs, truth_wcs
        Evaluated with 0-based pixels (``pixel_to_world_values``), both built from FITS
        keywords (1-based CRPIX), so the same pixel means the same place. ``truth_wcs``
        may be an :class:`astrodask.simulate.TruthMapping` (:func:`astrodask.simulate.read_truth`):
        with turbulence, the true sky position of what lands on each pixel, atmosphere
        included, is what a solution is measured against.
    shape
        (ny, nx) of the image.
    step_px
        Grid step, pixels; the first and last rows and columns are on the grid.

    Returns
    -------
    Score
        rms, 95th percentile and maximum of the angular distance, mas; a pixel the WCS
        cannot map (NaN) counts as an infinite error.
    """
    i, j = pixel_grid(shape, step_px)
    ra_t, dec_t = truth_wcs.pixel_to_world_values(i, j)
    ra_s, dec_s = wcs.pixel_to_world_values(i, j)
    d = great_circle_mas(ra_s, dec_s, ra_t, dec_t)
    d = np.where(np.isfinite(d), d, np.inf)
    return Score(rms_mas=float(np.sqrt(np.mean(d * d))), p95_mas=float(np.percentile(d, 95)),
                 max_mas=float(d.max()), n_points=int(d.size))


def self_test_scorer(truth_path: Path, shape: tuple[int, int]) -> None:
    """The judge on itself: truth vs truth is 0; a 1 px shift is one pixel scale everywhere."""
    from astrodask.simulate import read_truth_wcs

    truth = read_truth_wcs(truth_path)
    zero = score_wcs(read_truth_wcs(truth_path), truth, shape)
    shifted = read_truth_wcs(truth_path)
    shifted.wcs.crpix = shifted.wcs.crpix + np.array([1.0, 0.0])
    shifted.wcs.set()
    one = score_wcs(shifted, truth, shape)
    i, j = pixel_grid(shape, DEFAULT_STEP_PX)
    d = great_circle_mas(*shifted.pixel_to_world_values(i, j), *truth.pixel_to_world_values(i, j))
    scale_mas = np.sqrt(abs(np.linalg.det(truth.pixel_scale_matrix))) * MAS_PER_DEG
    ok = zero.max_mas < 1e-6 and np.all(np.abs(d / scale_mas - 1.0) < SELF_TEST_TOLERANCE)
    print(f"scorer self-test ({truth_path.name}, {zero.n_points} grid points): truth vs truth max "
          f"{zero.max_mas:.2g} mas; shifted 1 px: min/rms/max {d.min():.1f}/{one.rms_mas:.1f}/{one.max_mas:.1f} mas "
          f"(pixel scale {scale_mas:.1f} mas) -> {'ok' if ok else 'FAILED'}")
    if not ok:
        raise SystemExit("the scorer failed its self-test; the figures below would mean nothing")


def header_wcs(image_path: Path) -> WCS:
    """The approximate WCS of the image header (HDU 1 of a .fits.fz)."""
    with fits.open(image_path) as hdus:
        hdu = next(h for h in hdus if h.header.get("NAXIS", 0) == 2 or "ZNAXIS" in h.header)
        header = hdu.header.copy()
    for key in ("NAXIS", "NAXIS1", "NAXIS2"):
        header.remove(key, ignore_missing=True)
    with warnings.catch_warnings():  # a DSS header: astropy fixes its dd/mm/yy DATE-OBS, and says so
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(header)


# --------------------------------------------------------------------------
# The solvers
# --------------------------------------------------------------------------


OURS_CHILD = r"""
import json, pickle, sys, time
image, catalog_path, out, options = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
try:
    from astrodask.solve.pipeline import solve_file
except ImportError as err:
    print(json.dumps({"status": "n/a", "reason": f"astrodask solver not available yet ({err})"}))
    raise SystemExit(0)
from astrodask.config import PipelineConfig
from astrodask.reference.catalog import read_catalog
started = time.perf_counter()
try:
    result = solve_file(image, catalog=read_catalog(catalog_path),
                        config=PipelineConfig.from_dict(options["overrides"] or None), pointing=options["pointing"])
except Exception as err:  # the benchmark reports a crash as a failed case and goes on
    print(json.dumps({"status": "crashed", "reason": f"{type(err).__name__}: {err}",
                      "time_s": time.perf_counter() - started}))
    raise SystemExit(0)
wall = time.perf_counter() - started
quality = getattr(result, "quality", None)
chi2 = getattr(quality, "chi2_dof", None) if quality is not None else None
wcs = getattr(result, "wcs", None)
if wcs is not None:
    with open(out, "wb") as f:
        pickle.dump(wcs, f)
print(json.dumps({"status": str(getattr(result, "status", "?")), "reason": str(getattr(result, "reason", "") or ""),
                  "n_matches": getattr(result, "n_matches", None),
                  "chi2_dof": None if chi2 is None else float(chi2), "time_s": wall, "has_wcs": wcs is not None}))
"""


@dataclass
class Outcome:
    """One solver on one case, scored."""

    status: str
    reason: str = ""
    n_matches: int | None = None
    chi2_dof: float | None = None
    time_s: float | None = None
    maxrss_mb: float | None = None
    score: Score | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def with_settings(overrides: dict[str, Any], settings: list[str]) -> dict[str, Any]:
    """The case's config overrides with ``--set SECTION.KEY=VALUE`` settings added (VALUE read as JSON,
    else as text)."""
    merged = json.loads(json.dumps(overrides))
    for setting in settings:
        key, _, text = setting.partition("=")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        *sections, name = key.strip().split(".")
        node = merged
        for section in sections:
            node = node.setdefault(section, {})
        node[name] = value
    return merged


def run_ours(case: Prepared, scratch: Path, truth: WCS, shape: tuple[int, int], step_px: float,
             settings: list[str] | None = None) -> Outcome:
    """astrodask's solve_file in a fresh Python process, with the case's config overrides (and ``settings``,
    :func:`with_settings`) and pointing."""
    files = case.files
    scratch.mkdir(parents=True, exist_ok=True)
    wcs_out = scratch / "ours.wcs.pickle"
    wcs_out.unlink(missing_ok=True)
    options = json.dumps({"overrides": with_settings(case.overrides, settings or []), "pointing": case.pointing})
    run = peers.run_tool([sys.executable, "-c", OURS_CHILD, str(files.image), str(files.catalog), str(wcs_out),
                          options], cwd=scratch, timeout_s=SOLVE_TIMEOUT_S)
    stdout = (scratch / f"{Path(sys.executable).name}.stdout").read_text(errors="replace").strip()
    try:
        info = json.loads(stdout.splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return Outcome(status="crashed", reason=peers.last_error(run), time_s=run.wall_s, maxrss_mb=run.maxrss_mb)
    out = Outcome(status=info["status"], reason=info.get("reason", ""), n_matches=info.get("n_matches"),
                  chi2_dof=info.get("chi2_dof"), time_s=info.get("time_s"), maxrss_mb=run.maxrss_mb)
    if info.get("has_wcs") and wcs_out.is_file():
        with open(wcs_out, "rb") as f:
            out.score = score_wcs(pickle.load(f), truth, shape, step_px=step_px)
    return out


def run_peer(case: Prepared, scratch: Path, truth: WCS, shape: tuple[int, int], step_px: float) -> Outcome:
    """SourceExtractor + SCAMP (benchmarks/peers.py), from the case's WCS guess when it has one."""
    files = case.files
    res = peers.solve_with_scamp(files.image, files.catalog, scratch, wcs_guess=case.scamp_guess)
    out = Outcome(status=res.status, reason=res.reason, n_matches=res.n_matches, chi2_dof=res.chi2_dof,
                  time_s=res.times_s.get("total"), maxrss_mb=max(res.maxrss_mb.values(), default=None),
                  extra={"times": res.times_s, "rss": res.maxrss_mb, "n_sources": res.n_sources,
                         "sigma_ref": res.sigma_ref_arcsec})
    if res.wcs is not None:
        out.score = score_wcs(res.wcs, truth, shape, step_px=step_px)
    return out


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "inf"
    if abs(value) >= 1e5:
        return f"{value:.2g}"
    return f"{value:.{digits}f}"


def _err(value_mas: float | None) -> str:
    """A WCS error, mas: one decimal below 100 mas (the targets compare to SCAMP's + 0.5 mas)."""
    if value_mas is not None and math.isfinite(value_mas) and abs(value_mas) < 100:
        return _fmt(value_mas, 1)
    return _fmt(value_mas)


def _cells(o: Outcome | None) -> list[str]:
    if o is None:
        return ["skipped"] + [""] * 7
    s = o.score
    return [o.status, _fmt(o.n_matches), _err(s.rms_mas) if s else "-", _err(s.p95_mas) if s else "-",
            _err(s.max_mas) if s else "-", _fmt(o.chi2_dof, 2), _fmt(o.time_s, 1), _fmt(o.maxrss_mb)]


def print_table(rows: list[tuple[str, int, Outcome | None, Outcome | None]]) -> None:
    head = ["status", "match", "rms", "p95", "max", "chi2/dof", "time s", "peak MB"]
    widths = [8, 7, 6, 6, 7, 8, 7, 7]
    line = lambda cells: " ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    print()
    print(f"{'':10} {'':>7} | {'ours (astrodask)':^{sum(widths) + len(widths) - 1}} | "
          f"{'SExtractor + SCAMP':^{sum(widths) + len(widths) - 1}}")
    print(f"{'case':10} {'stars':>7} | {line(head)} | {line(head)}")
    print("-" * (20 + 2 * (sum(widths) + len(widths) + 2)))
    for name, stars, ours, peer in rows:
        print(f"{name:10} {stars:7d} | {line(_cells(ours))} | {line(_cells(peer))}")
    print("(rms, p95, max: WCS error against the truth over the whole image, mas; stars: reference "
          "stars in the frame; peak MB: the solver process(es), SCAMP's = max of SExtractor's and SCAMP's)")
    notes = [(name, who, o.reason) for name, _, ours, peer in rows
             for who, o in (("ours", ours), ("SCAMP", peer)) if o is not None and o.reason]
    for name, who, reason in notes:
        print(f"  {name} {who}: {reason}")


def sky_extent(truth: WCS, shape: tuple[int, int]) -> str:
    """RA and Dec ranges of the frame, RA measured across the 0/360 wrap from the centre."""
    ny, nx = shape
    ra, dec = truth.pixel_to_world_values(*pixel_grid(shape, DEFAULT_STEP_PX))
    ra_c, _ = truth.pixel_to_world_values((nx - 1) / 2.0, (ny - 1) / 2.0)
    offset = (ra - ra_c + 180.0) % 360.0 - 180.0
    if offset.max() - offset.min() > 180.0:
        ra_text = "all RA (a pole is in the frame)"
    else:
        ra_text = f"RA {(ra_c + offset.min()) % 360.0:.2f}..{(ra_c + offset.max()) % 360.0:.2f}"
    return f"{ra_text}, Dec {dec.min():.2f}..{dec.max():.2f}"


def tool_versions() -> str:
    out = []
    for tool, flag in ((peers.SEXTRACTOR, "-v"), (peers.SCAMP, "-v")):
        try:
            out.append(subprocess.run([tool, flag], capture_output=True, text=True, timeout=30).stdout.strip())
        except OSError:
            out.append(f"{tool} not found")
    return "; ".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES),
                        help=f"comma-separated cases (default the simulate cases: {','.join(CASES)}; also "
                             f"GalSim cases gs-<name> and the real-data case {PANOPTES}: {','.join(known_cases())})")
    parser.add_argument("--no-peer", action="store_true", help="skip SourceExtractor + SCAMP")
    parser.add_argument("--no-ours", action="store_true", help="skip astrodask's solver")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "astrodask-bench-solve",
                        help="folder of the cached simulations and the solvers' scratch files")
    parser.add_argument("--step-px", type=float, default=DEFAULT_STEP_PX, help="grid step of the scorer, px")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a config override for our solve of every case (repeatable), e.g. "
                             "detect.first_from_depth=false")
    args = parser.parse_args()
    names = [n.strip() for n in args.cases.split(",") if n.strip()]
    unknown = [n for n in names if n not in known_cases()]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(known_cases())}")
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}; {tool_versions()}")
    print(f"work dir {args.work}" + (f"; our config settings {args.settings}" if args.settings else ""))

    from astropy.table import Table

    from astrodask.reference.catalog import read_catalog

    rows = []
    self_tested = False
    for name in names:
        case = prepare(args.work, name)
        files, truth = case.files, case.truth
        print(f"[{name}] {case.about}", flush=True)
        nx, ny = truth.pixel_shape
        shape = (ny, nx)
        if not self_tested and files.truth_wcs is not None:
            self_test_scorer(files.truth_wcs, shape)
            self_tested = True
        if case.truth_note:
            print(f"  NOTE: {case.truth_note}", flush=True)
        if files.truth_table is not None:
            table = Table.read(files.truth_table, format="ascii.ecsv")
            in_frame = np.asarray(table["in_frame"], bool)
            mag_limit = Table.read(files.catalog, format="ascii.ecsv").meta.get("mag_limit", 20.0)
            stars = int(np.count_nonzero(in_frame & (np.asarray(table["phot_g_mean_mag"]) <= mag_limit)))
        else:  # real data: the catalog's stars that the reference WCS puts on the image
            cat = read_catalog(files.catalog)
            mag_limit = float(np.nanmax(cat["phot_g_mean_mag"]))
            ci, cj = truth.world_to_pixel_values(np.asarray(cat["ra"]), np.asarray(cat["dec"]))
            stars = int(np.count_nonzero((ci >= -0.5) & (ci < nx - 0.5) & (cj >= -0.5) & (cj < ny - 0.5)))
        approx = score_wcs(case.approx, truth, shape, step_px=args.step_px)
        print(f"  {nx} x {ny} px, {stars} reference stars in frame (G <= {mag_limit:.3g}), "
              f"{sky_extent(truth, shape)}; approximate header error rms/p95/max "
              f"{approx.rms_mas / 1e3:.0f}/{approx.p95_mas / 1e3:.0f}/{approx.max_mas / 1e3:.0f} arcsec"
              + (f"; our config overrides {case.overrides}" if case.overrides else "")
              + (f"; pointing given {case.pointing}" if case.pointing else ""), flush=True)
        ours = None if args.no_ours else run_ours(case, args.work / f"{name}.ours", truth, shape, args.step_px,
                                                     args.settings)
        if ours is not None:
            print(f"  ours: {ours.status}{' (' + ours.reason + ')' if ours.reason else ''}; "
                  f"{_fmt(ours.n_matches)} matched, chi2/dof {_fmt(ours.chi2_dof, 2)}; "
                  + (f"error {ours.score.text()} mas; " if ours.score else "")
                  + f"{_fmt(ours.time_s, 1)} s; peak MB {_fmt(ours.maxrss_mb)}", flush=True)
        peer = None if args.no_peer else run_peer(case, args.work / f"{name}.scamp", truth, shape, args.step_px)
        if peer is not None:
            t, r = peer.extra["times"], peer.extra["rss"]
            print(f"  SCAMP: {peer.status}; {_fmt(peer.extra['n_sources'])} SExtractor sources, "
                  f"{_fmt(peer.n_matches)} matched, chi2/dof {_fmt(peer.chi2_dof, 2)}, "
                  f"sigma_ref {peer.extra['sigma_ref']} arcsec; "
                  + (f"error {peer.score.text()} mas; " if peer.score else "")
                  + f"time: decompress {_fmt(t.get('prep'), 1)} + SExtractor {_fmt(t.get('sextractor'), 1)} + "
                  f"ref {_fmt(t.get('ref'), 1)} + SCAMP {_fmt(t.get('scamp'), 1)} = {_fmt(t.get('total'), 1)} s; "
                  f"peak MB SExtractor {_fmt(r.get('sextractor'))}, SCAMP {_fmt(r.get('scamp'))}", flush=True)
        rows.append((name, stars, ours, peer))
    print_table(rows)
    if PANOPTES in names:
        print(f"  {PANOPTES}: the errors are against astrometry.net's solution, not an exact truth")
    print(f"\ntotal run time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
