"""The speed benchmark (issue 14): every speed target, ours and SourceExtractor + SCAMP side by side in one run.

Our solver is timed as a user runs it: the ``astrodask solve FILE --catalog CAT --out DIR``
command in a fresh process (interpreter start, imports, the embedded LocalCluster's start and
close, writing the solution and the summary all included), and again with ``--serial`` (no
Dask). The command is the ``astrodask`` console script beside this Python (``--astrodask``
to choose another); its child gets no PYTHONPATH, so it runs the tree it was installed from
(printed with its git commit). The peer is :func:`peers.solve_with_scamp` on the same file
and stars (decompression + SExtractor + reference catalog + SCAMP, its ``total``).

Cases (``--cases``; the exposures are bench_solve's, simulated or rendered once and cached in
--work):

- ``dense``, ``gs-condor``: full Condor frames (9576 x 6388). Target: the default command at
  most 0.5x the peer's wall time (aim 0.25x), accuracy held (our written solution
  ``DIR/<name>.wcs.fits`` scored against the truth with :func:`bench_solve.score_wcs`: rms
  and p95 at most the peer's + ACCURACY_SLACK_MAS), peak memory per worker under 2.5 GB.
- ``gs-crowded``: a crowded half frame at ~40,000 stars/deg2. Target: no slower than the peer.
- ``--scaling``: full frames of ~5,000 to ~200,000 detected stars (SCALING_DENSITIES), each
  solved with ``--serial`` (a frame predicted to take longer than ``--scaling-budget`` is left
  out, and the run says so); each stage's time (``DIR/summary.ecsv``, ``t_<stage>_s``) against
  N, the detected sources (the summary's ``sources``), with the log-log slope of each stage;
  a stage steeper than SLOPE_LIMIT (N log N reads as ~1.1 over this range) is flagged. The
  plot ``stage_scaling.png`` goes to --out.

Memory: every process of the command is polled (``VmHWM`` from ``/proc``, every POLL_S, with
psutil for the process tree): the command's own process, and each of its descendants, which
with the embedded cluster are the LocalCluster's worker processes (the nannies run in the
command's process). "Per worker" is the largest descendant's peak. A peak reached in the last
POLL_S of a process's life can be missed.

Backlog throughput (2 workers against 1, the distributed path's overhead) is
``benchmarks/bench_backlog.py``'s; it is not repeated here.

Each figure is printed with the machine's core count and load average (other jobs on the
machine slow both solvers). The end table gives each target, the measured figure, MET / NOT
MET and, for a target not met, where the time goes (the stages' shares of the serial solve,
and the time outside the stages: interpreter start, imports, cluster start, writing).

Usage: python benchmarks/bench_speed.py [--cases dense,gs-condor,gs-crowded] [--scaling] [--densities D1,D2,...]
                                        [--scaling-budget 900] [--work DIR] [--out DIR] [--repeat 1]
                                        [--wait-quiet 30] [--astrodask CMD]
(``--cases ''`` with ``--scaling`` runs the sweep alone.)
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_solve
import peers

#: The full-frame cases: the default command against the peer.
FULL_FRAME_CASES = ("dense", "gs-condor")
#: The crowded half frame (~40,000 stars/deg2).
CROWDED_CASES = ("gs-crowded",)
#: Ratio of wall times, ours (default command) / SourceExtractor + SCAMP, on a full frame: the target and the aim.
FULL_FRAME_RATIO_TARGET = 0.5
FULL_FRAME_RATIO_AIM = 0.25
#: Crowded half frame: ours / peer at most this.
CROWDED_RATIO_TARGET = 1.0
#: Peak resident memory per worker on a full frame, MB.
WORKER_PEAK_TARGET_MB = 2500.0
#: Accuracy held: our rms and p95 against the truth at most the peer's plus this, mas.
ACCURACY_SLACK_MAS = 0.5
#: A stage whose log-log slope of time against N exceeds this grows faster than N log N.
SLOPE_LIMIT = 1.15
#: A stage is fitted only where it takes at least this long at the largest N, seconds (timer noise below).
SLOPE_MIN_TIME_S = 0.05
#: Scaling sweep: star densities to G = 20 (stars/deg2) of full Condor frames simulated with
#: simulate_field's defaults; they give about 5k, 20k, 50k, 100k and 200k detected sources
#: (measured: 1500 -> 4.3k, 6000 -> 16k, 15000 -> 38k, 32000 -> 73k, 70000 -> 135k; crowding loses more and more).
SCALING_DENSITIES = (1750.0, 7500.0, 21000.0, 48000.0, 115000.0)
#: The sweep's field centre and first seed (one seed per density, in order).
SCALING_RA_DEG, SCALING_DEC_DEG, SCALING_SEED = 150.0, 20.0, 201
#: Default of --scaling-budget: a frame whose --serial solve is predicted to take longer is left out, seconds.
DEFAULT_SCALING_BUDGET_S = 900.0
#: The file name of the scaling plot in --out.
SCALING_PLOT = "stage_scaling.png"
#: Interval of the memory polling of the command's processes, seconds.
POLL_S = 0.02
#: Time limit of one command, seconds.
COMMAND_TIMEOUT_S = 1800.0
#: Stage shares listed for a target not met.
TOP_STAGES = 3
#: Before each timed run, wait (up to --wait-quiet seconds) for the machine's CPUs to be at most this busy, %.
QUIET_CPU_PERCENT = 25.0
#: Default of --wait-quiet, seconds.
DEFAULT_WAIT_QUIET_S = 30.0
#: Python packages whose versions are printed.
VERSIONED = ("numpy", "astropy", "sep", "dask", "distributed", "scipy")


# --------------------------------------------------------------------------
# Running the command
# --------------------------------------------------------------------------


@dataclass
class Run:
    """One ``astrodask solve`` command on one exposure."""

    label: str  #: "default" or "serial"
    wall_s: float
    returncode: int
    root_peak_mb: float | None  #: the command's own process
    worker_peaks_mb: list[float]  #: each descendant process (the cluster's workers), largest first
    load_1min: float  #: load average when it started
    quiet: str = ""  #: how busy the CPUs were when it started
    summary: dict[str, Any] = field(default_factory=dict)  #: its summary.ecsv row
    score: bench_solve.Score | None = None
    log_tail: str = ""

    @property
    def status(self) -> str:
        return str(self.summary.get("status", f"no summary (exit {self.returncode})"))

    def stage_times(self) -> dict[str, float]:
        """Seconds per stage, in the algorithm's order (Stage), from the summary."""
        from astrodask.types import Stage

        return {s.value: float(self.summary.get(f"t_{s.value}_s", 0.0) or 0.0) for s in Stage}

    @property
    def worker_peak_mb(self) -> float | None:
        return self.worker_peaks_mb[0] if self.worker_peaks_mb else None


def child_env() -> dict[str, str]:
    """The environment of the command as a user has it: no PYTHONPATH (the installed tree runs).

    The command runs in the output folder, so that no source tree in the current folder shadows the installed one.
    """
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


def _process_tree(root: Any) -> list[Any]:
    try:
        return root.children(recursive=True)
    except Exception:  # noqa: BLE001 -- psutil's NoSuchProcess/AccessDenied as the tree changes: try again next poll
        return []


def run_command(args: list[str], *, out: Path, label: str, wait_s: float,
                timeout_s: float = COMMAND_TIMEOUT_S) -> Run:
    """Run the command in a fresh process; its wall time, the peak memory of it and its descendants.

    ``VmHWM`` of every process of the tree is read every POLL_S (not ``ru_maxrss``, which
    survives ``execve`` and would carry this benchmark's own peak into its children).
    """
    try:
        import psutil
    except ImportError:  # psutil comes with distributed; without it only the command's own process is polled
        psutil = None
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    quiet = wait_quiet(wait_s)
    load = os.getloadavg()[0]
    log_path = out.parent / f"{out.name}.log"
    peaks: dict[int, float] = {}
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=child_env(), cwd=out.parent)
        root = psutil.Process(proc.pid) if psutil is not None else None
        while proc.poll() is None:
            pids = [proc.pid] + ([p.pid for p in _process_tree(root)] if root is not None else [])
            for pid in pids:
                hwm = peers._vm_hwm_mb(pid)
                if hwm is not None:
                    peaks[pid] = max(peaks.get(pid, 0.0), hwm)
            if time.perf_counter() - started > timeout_s:
                proc.kill()
                proc.wait()
                break
            time.sleep(POLL_S)
    wall = time.perf_counter() - started
    root_peak = peaks.pop(proc.pid, None)
    run = Run(label=label, wall_s=wall, returncode=proc.returncode, root_peak_mb=root_peak,
              worker_peaks_mb=sorted(peaks.values(), reverse=True), load_1min=load, quiet=quiet,
              log_tail="\n".join(log_path.read_text(errors="replace").strip().splitlines()[-3:]))
    summary = out / "summary.ecsv"
    if summary.is_file():
        from astropy.table import Table

        table = Table.read(summary, format="ascii.ecsv")
        if len(table):
            run.summary = {k: table[k][0] for k in table.colnames}
    return run


def score_solution(run: Run, out: Path, truth: WCS, shape: tuple[int, int]) -> None:
    """Score ``DIR/<name>.wcs.fits`` (the solution as written) against the truth."""
    name = run.summary.get("name")
    path = out / f"{name}.wcs.fits"
    if name is None or not path.is_file():
        return
    with fits.open(path) as hdul, warnings.catch_warnings():  # with its lookup tables, if it carries any
        warnings.simplefilter("ignore", FITSFixedWarning)
        run.score = bench_solve.score_wcs(WCS(hdul[0].header, hdul), truth, shape)


def solve_command(astrodask: list[str], image: Path, catalog: Path, out: Path, *, serial: bool) -> list[str]:
    return [*astrodask, "solve", str(image), "--catalog", str(catalog), "--out", str(out),
            *(["--serial"] if serial else [])]


def wait_quiet(max_s: float) -> str:
    """Wait up to ``max_s`` for the CPUs to be at most QUIET_CPU_PERCENT busy (1 s samples); what was seen."""
    try:
        import psutil
    except ImportError:
        return "CPU use not known (no psutil)"
    started = time.perf_counter()
    busy = psutil.cpu_percent(interval=1.0)
    while busy > QUIET_CPU_PERCENT and time.perf_counter() - started < max_s:
        busy = psutil.cpu_percent(interval=1.0)
    waited = time.perf_counter() - started
    return f"CPUs {busy:.0f} % busy at start" + (f" after waiting {waited:.0f} s" if waited > 1.5 else "")


def warm(paths: list[Path]) -> None:
    """Read the files once, so that every solver starts from the page cache, not the first from the disk."""
    for path in paths:
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass


# --------------------------------------------------------------------------
# Printing
# --------------------------------------------------------------------------


def _s(value: float | None, digits: int = 1) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("MET" if ok else "NOT MET")


def profile_text(run: Run, *, top: int = TOP_STAGES) -> str:
    """Where the wall time of a run goes: the largest stages and the time outside the stages."""
    times = run.stage_times()
    inside = sum(times.values())
    biggest = sorted(times.items(), key=lambda kv: -kv[1])[:top]
    parts = [f"{name} {t:.1f} s ({100 * t / run.wall_s:.0f} %)" for name, t in biggest]
    outside = run.wall_s - inside
    parts.append(f"outside the stages {outside:.1f} s ({100 * outside / run.wall_s:.0f} %)")
    return f"{run.label} {run.wall_s:.1f} s: " + ", ".join(parts)


def print_run(run: Run) -> None:
    s = run.summary
    times = run.stage_times()
    inside = sum(times.values())
    stages = ", ".join(f"{k} {v:.2f}" for k, v in times.items())
    peak = f"command process {_s(run.root_peak_mb, 0)} MB"
    if run.worker_peaks_mb:
        big = [p for p in run.worker_peaks_mb if p >= 100.0]
        peak += f"; child processes (workers) {', '.join(f'{p:.0f}' for p in big) or '-'} MB"
    print(f"  ours {run.label:7}: {run.wall_s:6.1f} s wall (load {run.load_1min:.2f}, {run.quiet}); {run.status}"
          + (f" ({s.get('reason')})" if s.get("reason") else "")
          + f"; {s.get('sources', '-')} sources, {s.get('matches', '-')} matches"
          + (f"; error rms/p95/max {run.score.text()} mas" if run.score else "; no solution scored"), flush=True)
    print(f"    stages (s): {stages}; sum {inside:.1f} s, outside the stages {run.wall_s - inside:.1f} s", flush=True)
    print(f"    peak memory: {peak}", flush=True)
    if run.returncode not in (0,) and not s:
        print(f"    exit {run.returncode}: {run.log_tail}", flush=True)


def versions(astrodask: list[str]) -> list[str]:
    """Lines saying what runs: the machine, Python, packages, the peer's tools and the astrodask tree."""
    pkgs = []
    for name in VERSIONED:
        try:
            pkgs.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pkgs.append(f"{name} absent")
    python = Path(astrodask[0]).parent / "python" if len(astrodask) == 1 else Path(sys.executable)
    python = python if python.exists() else Path(sys.executable)
    found = subprocess.run([str(python), "-c", "import astrodask; print(astrodask.__file__)"],
                           capture_output=True, text=True, env=child_env(), cwd=tempfile.gettempdir())
    tree = Path(found.stdout.strip()).parent.parent if found.returncode == 0 else None
    where = "its astrodask cannot be imported"
    if tree is not None:
        git = ["git", "-C", str(tree)]
        head = subprocess.run([*git, "log", "-1", "--format=%h %s"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run([*git, "status", "--short", "--untracked-files=no"], capture_output=True,
                               text=True).stdout.split("\n")
        dirty = [ln.strip() for ln in dirty if ln.strip()]
        where = (f"runs {tree} at {head[:70] or '(not a git tree)'}"
                 + (f"; uncommitted changes in {len(dirty)} file(s): {', '.join(d.split()[-1] for d in dirty)}"
                    if dirty else ""))
    load = os.getloadavg()
    return [f"machine: {os.cpu_count()} cores ({platform.machine()}); load average {load[0]:.2f} / {load[1]:.2f} / "
            f"{load[2]:.2f} (1/5/15 min); python {sys.version.split()[0]}; {', '.join(pkgs)}",
            f"peer: {bench_solve.tool_versions()}",
            f"ours: {' '.join(astrodask)} ({where})"]


# --------------------------------------------------------------------------
# The cases
# --------------------------------------------------------------------------


@dataclass
class CaseResult:
    """One exposure: our runs (by label), the peer's outcome, and the case's description."""

    name: str
    about: str
    shape: tuple[int, int]
    runs: dict[str, list[Run]] = field(default_factory=dict)
    peer: list[bench_solve.Outcome] = field(default_factory=list)

    def run(self, label: str) -> Run | None:
        """The run of median wall time among the repeats."""
        runs = sorted(self.runs.get(label, []), key=lambda r: r.wall_s)
        return runs[(len(runs) - 1) // 2] if runs else None

    def peer_s(self) -> float | None:
        times = sorted(o.time_s for o in self.peer if o.time_s is not None)
        return times[(len(times) - 1) // 2] if times else None


def bench_case(name: str, args: argparse.Namespace, astrodask: list[str]) -> CaseResult:
    """The default command, ``--serial`` and the peer on one case, ``--repeat`` times each."""
    case = bench_solve.prepare(args.work, name)
    nx, ny = case.truth.pixel_shape
    shape = (ny, nx)
    print(f"\n[{name}] {case.about}; {nx} x {ny} px", flush=True)
    warm([case.files.image, case.files.catalog])
    result = CaseResult(name=name, about=case.about, shape=shape)
    for k in range(args.repeat):
        for label, serial in (("default", False), ("serial", True)):
            out = args.out / f"{name}.{label}"
            run = run_command(solve_command(astrodask, case.files.image, case.files.catalog, out, serial=serial),
                              out=out, label=label, wait_s=args.wait_quiet)
            score_solution(run, out, case.truth, shape)
            result.runs.setdefault(label, []).append(run)
            print_run(run)
        quiet = wait_quiet(args.wait_quiet)
        load = os.getloadavg()[0]
        peer = bench_solve.run_peer(case, args.out / f"{name}.scamp", case.truth, shape, bench_solve.DEFAULT_STEP_PX)
        result.peer.append(peer)
        t = peer.extra.get("times", {})
        print(f"  SExtractor + SCAMP: {_s(peer.time_s)} s wall (load {load:.2f}, {quiet}); {peer.status}; "
              f"{peer.extra.get('n_sources', '-')} sources, {peer.n_matches} matches"
              + (f"; error rms/p95/max {peer.score.text()} mas" if peer.score else "")
              + f"; decompress {_s(t.get('prep'))} + SExtractor {_s(t.get('sextractor'))} + ref {_s(t.get('ref'))} "
              f"+ SCAMP {_s(t.get('scamp'))} s; peak MB {_s(peer.maxrss_mb, 0)}", flush=True)
        if args.repeat > 1:
            print(f"  (repeat {k + 1} of {args.repeat})", flush=True)
    return result


@dataclass
class Target:
    """One row of the end table."""

    target: str
    measured: str
    ok: bool | None
    limit: str = ""  #: for NOT MET: what limits it


def accuracy_held(run: Run | None, case: CaseResult) -> tuple[bool | None, str]:
    peer = min((o for o in case.peer if o.score is not None), key=lambda o: o.score.rms_mas, default=None)
    if run is None or run.score is None:
        return False, "no solution"
    if peer is None:
        return None, f"ours {run.score.text()} mas; the peer did not solve"
    ok = (run.score.rms_mas <= peer.score.rms_mas + ACCURACY_SLACK_MAS
          and run.score.p95_mas <= peer.score.p95_mas + ACCURACY_SLACK_MAS)
    return ok, f"ours {run.score.text()} vs peer {peer.score.text()} mas (rms/p95/max)"


def limit_text(case: CaseResult) -> str:
    """Where the time goes, from the serial run's stages and the default run's time outside them."""
    parts = []
    default, serial = case.run("default"), case.run("serial")
    if serial is not None:
        parts.append(profile_text(serial))
    if default is not None and serial is not None:
        parts.append(f"default - serial = {default.wall_s - serial.wall_s:+.1f} s (the cluster's start, scheduling "
                     "and transfers, less the regions run side by side on its workers; stages in the workers "
                     f"{sum(default.stage_times().values()):.1f} s)")
    return "; ".join(parts)


def case_targets(case: CaseResult, *, full_frame: bool) -> list[Target]:
    rows = []
    default, peer_s = case.run("default"), case.peer_s()
    serial = case.run("serial")
    solved = default is not None and default.status == "solved"
    limit = ratio_text = ""
    ok: bool | None = None
    if default is not None and peer_s:
        ratio = default.wall_s / peer_s
        ratio_text = (f"{default.wall_s:.1f} s / {peer_s:.1f} s = {ratio:.2f}"
                      + (f" (--serial {serial.wall_s / peer_s:.2f})" if serial is not None else "")
                      + ("" if solved else f"; ours {default.status if default else '-'}"))
        goal = FULL_FRAME_RATIO_TARGET if full_frame else CROWDED_RATIO_TARGET
        ok = ratio <= goal and solved
        limit = "" if ok else limit_text(case)
    if full_frame:
        rows.append(Target(f"{case.name}: default command <= {FULL_FRAME_RATIO_TARGET}x peer "
                           f"(aim {FULL_FRAME_RATIO_AIM}x)", ratio_text or "-", ok, limit))
        if ok is not None and default is not None and peer_s:
            aim = default.wall_s / peer_s <= FULL_FRAME_RATIO_AIM and solved
            rows.append(Target(f"{case.name}: aim <= {FULL_FRAME_RATIO_AIM}x peer", f"{default.wall_s / peer_s:.2f}",
                               aim, "" if aim else "see the row above"))
        held, text = accuracy_held(default, case)
        rows.append(Target(f"{case.name}: accuracy held (rms, p95 <= peer + {ACCURACY_SLACK_MAS} mas)", text, held))
        peak = default.worker_peak_mb if default is not None else None
        rows.append(Target(f"{case.name}: peak memory per worker < {WORKER_PEAK_TARGET_MB / 1000:.1f} GB",
                           f"{_s(peak, 0)} MB (largest worker; serial process "
                           f"{_s(serial.root_peak_mb if serial else None, 0)} MB)",
                           None if peak is None else peak < WORKER_PEAK_TARGET_MB))
    else:
        rows.append(Target(f"{case.name}: crowded half frame, no slower than the peer", ratio_text or "-", ok, limit))
        held, text = accuracy_held(default, case)
        rows.append(Target(f"{case.name}: accuracy (rms, p95 <= peer + {ACCURACY_SLACK_MAS} mas)", text, held))
    return rows


# --------------------------------------------------------------------------
# Scaling with the number of stars
# --------------------------------------------------------------------------


def scaling_case(density: float, index: int) -> bench_solve.Case:
    return bench_solve.Case(f"speed-d{density:g}", f"full frame, {density:g} stars/deg2 to G=20", SCALING_SEED + index,
                            ra_deg=SCALING_RA_DEG, dec_deg=SCALING_DEC_DEG, density_per_deg2=density)


def fit_slope(n: np.ndarray, t: np.ndarray) -> float | None:
    """Slope of log t against log N (least squares), None with fewer than 2 usable points."""
    good = (t > 0) & (n > 0)
    if good.sum() < 2:
        return None
    return float(np.polyfit(np.log(n[good]), np.log(t[good]), 1)[0])


def predict_next(rows: list, density: float) -> tuple[float, float]:
    """The N and the --serial wall time expected at ``density``, from the last two points (sorted by density).

    ``rows`` are (N, stage times, wall, density). N follows the power law of density through the
    last two points; each stage's time the power law of N through them (at least linear); the
    time outside the stages stays.
    """
    (n1, t1, _, d1), (n2, t2, w2, d2) = rows[-2], rows[-1]
    n_next = n2 * (density / d2) ** (math.log(n2 / n1) / math.log(d2 / d1))
    total = w2 - sum(t2.values())
    for stage, t in t2.items():
        slope = math.log(t / t1[stage]) / math.log(n2 / n1) if t > 0 and t1[stage] > 0 else 1.0
        total += t * (n_next / n2) ** max(slope, 1.0)
    return n_next, total


def bench_scaling(args: argparse.Namespace, astrodask: list[str]) -> tuple[list[Target], Path | None]:
    """Each density solved with --serial; per-stage time against N, slopes, the plot."""
    from astrodask.types import Stage

    print(f"\n[scaling] full Condor frames at {', '.join(f'{d:g}' for d in args.densities)} stars/deg2 "
          "(G <= 20), each solved with --serial; N = detected sources (summary 'sources'); a frame whose "
          f"solve is predicted to take over {args.scaling_budget:g} s (--scaling-budget) is left out", flush=True)
    rows: list = []  # (N, stage times, wall, density)
    skipped = ""
    for index, density in enumerate(sorted(args.densities)):
        if len(rows) >= 2:
            n_next, t_next = predict_next(rows, density)
            if t_next > args.scaling_budget:
                skipped = (f"{density:g} stars/deg2 (N ~ {n_next:.0f}) left out: its solve is predicted to take "
                           f"~{t_next:.0f} s (from the last two points), over the {args.scaling_budget:g} s budget")
                print(f"  {skipped}", flush=True)
                break
        case = scaling_case(density, SCALING_DENSITIES.index(density) if density in SCALING_DENSITIES else index)
        files = bench_solve.simulate_case(args.work, case)
        warm([files.image, files.catalog])
        out = args.out / f"{case.name}.serial"
        run = run_command(solve_command(astrodask, files.image, files.catalog, out, serial=True), out=out,
                          label="serial", wait_s=args.wait_quiet)
        times = run.stage_times()
        print(f"  {density:7g}/deg2: N = {run.summary.get('sources', '-')}, {run.summary.get('references', '-')} "
              f"references, {run.status}; {run.wall_s:.1f} s wall (load {run.load_1min:.2f}, {run.quiet}), stages "
              + ", ".join(f"{k} {v:.2f}" for k, v in times.items()), flush=True)
        if run.summary:
            rows.append((float(run.summary["sources"]), times, run.wall_s, density))
    if len(rows) < 2:
        print("  fewer than 2 solved points: no slopes")
        return [Target("every stage <= N log N", "fewer than 2 points", None)], None
    n = np.array([r[0] for r in rows])
    n_max = int(n.max())
    print(f"  log-log slopes of time against N, fitted over all points ({int(n.min())} .. {n_max}; N log N reads "
          f"{1 + 1 / math.log(math.sqrt(n.min() * n.max())):.2f} here, flagged above {SLOPE_LIMIT}), and between "
          "the two largest N:")
    steep, slopes = [], {}
    for stage in [s.value for s in Stage] + ["wall"]:
        t = np.array([r[2] if stage == "wall" else r[1][stage] for r in rows])
        if t.max() < SLOPE_MIN_TIME_S:
            print(f"    {stage:13} max {t.max():.3f} s: too short to fit")
            continue
        slope, top = fit_slope(n, t), fit_slope(n[-2:], t[-2:])
        slopes[stage] = slope
        flag = slope is not None and slope > SLOPE_LIMIT and stage != "wall"
        if flag:
            steep.append(f"{stage} {slope:.2f} ({t[-1]:.1f} s at N {n_max})")
        print(f"    {stage:13} slope {_s(slope, 2)} (top {_s(top, 2)}); {' '.join(f'{x:.2f}' for x in t)} s"
              + ("  <-- faster than N log N" if flag else ""))
    plot = plot_scaling(n, rows, args.out / SCALING_PLOT)
    print(f"  plot: {plot}")
    wanted = 200_000
    note = ""
    if n_max < 0.8 * wanted:
        note = f"; largest N {n_max}, not {wanted}: " + (skipped or f"densest frame run {rows[-1][3]:g} stars/deg2")
    measured = (", ".join(f"{k} {v:.2f}" for k, v in slopes.items() if v is not None)
                + f" (N {int(n.min())}..{n_max}){note}")
    limit = ""
    if steep:
        limit = "steeper than N log N: " + ", ".join(steep)
    return [Target(f"every stage <= N log N (log-log slope <= {SLOPE_LIMIT})", measured, not steep, limit)], plot


def plot_scaling(n: np.ndarray, rows: list, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from astrodask.types import Stage

    order = np.argsort(n)
    fig, ax = plt.subplots(figsize=(8, 6), constrained_layout=True)
    for stage in [s.value for s in Stage]:
        t = np.array([rows[i][1][stage] for i in order])
        if t.max() >= SLOPE_MIN_TIME_S:
            ax.plot(n[order], np.maximum(t, 1e-3), "o-", label=stage)
    wall = np.array([rows[i][2] for i in order])
    ax.plot(n[order], wall, "k^-", lw=2, label="wall (--serial command)")
    grid = np.geomspace(n.min(), n.max(), 50)
    t0 = float(np.median(wall)) / 4.0
    mid = float(np.sqrt(n.min() * n.max()))
    ax.plot(grid, t0 * grid / mid, "k:", label="∝ N")
    ax.plot(grid, t0 * grid * np.log(grid) / (mid * np.log(mid)), "k--", label="∝ N log N")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("detected sources per exposure, N")
    ax.set_ylabel("time, s")
    ax.set_title(f"astrodask solve --serial, full Condor frame, per stage ({os.cpu_count()} cores)")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(True, which="both", alpha=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def print_targets(targets: list[Target]) -> None:
    print("\ntargets (issue 14):")
    w1 = max(len(t.target) for t in targets)
    for t in targets:
        print(f"  {t.target:{w1}}  {met(t.ok):7}  {t.measured}")
        if t.ok is False and t.limit:
            print(f"  {'':{w1}}  {'':7}  what limits it: {t.limit}")


def default_astrodask() -> list[str]:
    beside = Path(sys.executable).with_name("astrodask")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("astrodask")
    return [found] if found else [sys.executable, "-m", "astrodask.cli"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(FULL_FRAME_CASES + CROWDED_CASES),
                        help=f"comma-separated cases: the full frames {','.join(FULL_FRAME_CASES)} (or other "
                             f"bench_solve cases), the crowded half frame {','.join(CROWDED_CASES)}; '' for none")
    parser.add_argument("--scaling", action="store_true", help="also the per-stage scaling sweep (slow)")
    parser.add_argument("--densities", default=",".join(f"{d:g}" for d in SCALING_DENSITIES),
                        help="stars/deg2 of the scaling sweep's frames")
    parser.add_argument("--scaling-budget", type=float, default=DEFAULT_SCALING_BUDGET_S,
                        help="leave out a scaling frame whose solve is predicted to take longer, seconds")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "astrodask-bench-solve",
                        help="folder of the cached simulations (bench_solve's, shared with it)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder of the solutions, logs and the scaling plot (default: a new temp folder)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each solver per case (the median is used)")
    parser.add_argument("--wait-quiet", type=float, default=DEFAULT_WAIT_QUIET_S,
                        help=f"before each timed run, wait up to this many seconds for the CPUs to be at most "
                             f"{QUIET_CPU_PERCENT:g} %% busy (0: do not wait)")
    parser.add_argument("--astrodask", default=None,
                        help="the command to time (default: the astrodask script beside this Python)")
    args = parser.parse_args()
    args.densities = [float(d) for d in args.densities.split(",") if d.strip()]
    names = [n.strip() for n in args.cases.split(",") if n.strip()]
    unknown = [n for n in names if n not in bench_solve.known_cases()]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(bench_solve.known_cases())}")
    args.work.mkdir(parents=True, exist_ok=True)
    args.out = args.out or Path(tempfile.mkdtemp(prefix="astrodask-bench-speed-"))
    args.out.mkdir(parents=True, exist_ok=True)
    astrodask = args.astrodask.split() if args.astrodask else default_astrodask()
    started = time.perf_counter()
    for line in versions(astrodask):
        print(line)
    print(f"work dir {args.work}; out dir {args.out}", flush=True)

    targets: list[Target] = []
    for name in names:
        case = bench_case(name, args, astrodask)
        targets += case_targets(case, full_frame=name not in CROWDED_CASES)
    if args.scaling:
        rows, _ = bench_scaling(args, astrodask)
        targets += rows
    targets.append(Target("backlog: 2 workers >= 1.9x 1; distributed overhead < 5 %",
                          "not measured here: python benchmarks/bench_backlog.py --n 10", None))
    print_targets(targets)
    load = os.getloadavg()
    print(f"\nload average at the end {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}; "
          f"total run time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
