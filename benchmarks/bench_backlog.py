"""Backlog throughput on Dask: 1 and 2 workers, overhead against the serial solve, memory per worker.

Simulates (once, cached in --work) a backlog of Condor exposures (full 9576 x 6388 frames by
default), then:

1. solves them serially in this process (``solve_file``), one after the other;
2. submits them to an embedded LocalCluster of 1 worker process (1 thread), then of 2;
3. solves half of them in one process, then both halves in two processes at once (no Dask): the
   machine's own ceiling on the speed-up of two workers;

and prints, with the machine's core count: exposures per minute for each, the scaling
efficiency (throughput with 2 workers / twice the throughput with 1), the per-exposure overhead
of the distributed path against the serial solve, and each worker's peak resident memory.

Targets (issue 14, on a backlog of 10 full Condor frames): 2 workers at least 1.9x the
throughput of 1; the distributed path's overhead per exposure under 5 % of the serial solve;
peak memory per worker under 2.5 GB. The serial solve runs BLAS on one thread, as
``astrodask solve --serial`` and Dask's workers do.

Usage: python benchmarks/bench_backlog.py [--n 10] [--scale 1.0] [--work DIR]
"""

from __future__ import annotations

import argparse
import importlib
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

#: Issue 14's targets: throughput of 2 workers over 1, overhead of the distributed path per exposure
#: against the serial solve, peak memory per worker.
SPEEDUP_TARGET = 1.9
OVERHEAD_TARGET_PCT = 5.0
MEMORY_TARGET_MB = 2500.0


def simulate(work: Path, n: int, scale: float) -> tuple[list[Path], Path]:
    from astrodask.simulate import simulate_field

    shape = (int(6388 * scale), int(9576 * scale))
    from astrodask.reference.catalog import read_catalog

    paths, catalog, sky = [], None, None
    for k in range(n):  # dithered pointings on one sky, so the first catalog serves them all
        name = f"bk{int(scale * 100)}_{k:02d}"
        image = work / f"{name}.fits.fz"
        if not image.exists():
            started = time.perf_counter()
            field = simulate_field(work, name, ra_deg=150.1 + 0.02 * k, dec_deg=25.0, shape=shape,
                                   density_per_deg2=3000.0, rng=np.random.default_rng(100 + k), catalog=sky)
            print(f"simulated {image.name} in {time.perf_counter() - started:.1f} s", flush=True)
            image = field.image_path
        paths.append(image)
        if catalog is None:
            catalog = work / f"{name}_gaia.ecsv"
            sky = read_catalog(catalog)
    return paths, catalog


def worker_peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM, MB).

    Not ``getrusage``: on Linux its ``ru_maxrss`` survives exec, so a worker process spawned by a
    large parent would report the parent's peak.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_cluster(paths: list[Path], catalog: Path, workers: int,
                out: Path) -> tuple[float, dict[str, float], int, list[dict]]:
    from astrodask.config import PipelineConfig
    from astrodask.run.client import connect, submit_backlog

    with connect(n_workers=workers, memory_limit=None) as connection:
        # workers up, with the solve's modules imported, before the clock starts: a start-up cost paid once
        # per worker, not per exposure (the command's start-up is bench_speed.py's)
        connection.client.run(importlib.import_module, "astrodask.solve.pipeline")
        started = time.perf_counter()
        rows = submit_backlog(connection, paths, out_dir=out, config=PipelineConfig(), catalog_path=catalog,
                              retries=0)
        wall = time.perf_counter() - started
        rss = connection.client.run(worker_peak_rss_mb)
    solved = sum(r["status"] == "solved" for r in rows)
    return wall, rss, solved, rows


def stage_profile(per_run: dict[str, list[dict]]) -> None:
    """Mean seconds per exposure of each stage (the summary rows' ``t_<stage>_s``), run by run: which
    stages slow down when two workers share the machine."""
    stages = [k for k in per_run[next(iter(per_run))][0] if k.startswith("t_") and k.endswith("_s")]
    names = list(per_run)
    print(f"\n{'stage, s per exposure':24s} " + " ".join(f"{n:>10s}" for n in names) + f" {'ratio':>7s}")
    for stage in stages:
        means = [float(np.mean([r.get(stage, 0.0) or 0.0 for r in rows])) for rows in per_run.values()]
        if max(means) < 0.005:
            continue
        ratio = means[-1] / means[0] if means[0] > 0 else float("nan")
        print(f"{stage[2:-2]:24s} " + " ".join(f"{m:10.3f}" for m in means) + f" {ratio:6.2f}x")


def serial_share(paths: list[str], catalog: str) -> float:
    """Solve ``paths`` serially in a fresh process (one BLAS thread), catalog read included; the wall time."""
    from threadpoolctl import threadpool_limits

    from astrodask.config import PipelineConfig
    from astrodask.reference.catalog import read_catalog
    from astrodask.solve.pipeline import solve_file

    started = time.perf_counter()
    reference = read_catalog(catalog)
    with threadpool_limits(limits=1, user_api="blas"):
        for path in paths:
            solve_file(path, catalog=reference, config=PipelineConfig())
    return time.perf_counter() - started


def warm(_: object = None) -> None:
    """Import the solve's stack (in a pool's process, before the clock starts)."""
    importlib.import_module("astrodask.solve.pipeline")


def machine_ceiling(paths: list[Path], catalog: Path) -> float:
    """The throughput two serial solves in two processes reach together, over one alone: the machine's own
    limit on the 2-worker speed-up (shared memory bandwidth and caches, the hypervisor), with no Dask at all."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    half = len(paths) // 2
    with context.Pool(1) as pool:  # warm: imports paid before the clock, as for the workers
        pool.apply(warm)
        one = pool.apply(serial_share, ([str(p) for p in paths[:half]], str(catalog)))
    with context.Pool(2) as pool:
        pool.map(warm, range(2))
        started = time.perf_counter()
        pool.starmap(serial_share, [([str(p) for p in paths[:half]], str(catalog)),
                                    ([str(p) for p in paths[half:2 * half]], str(catalog))])
        both = time.perf_counter() - started
    return 2.0 * one / both


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10, help="exposures in the backlog")
    parser.add_argument("--scale", type=float, default=1.0, help="frame size relative to a full Condor frame")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "astrodask-bench-backlog")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}", flush=True)
    paths, catalog = simulate(args.work, args.n, args.scale)

    from astrodask.config import PipelineConfig
    from astrodask.reference.catalog import read_catalog
    from astrodask.solve.pipeline import solve_file

    # the serial backlog reads the catalog once, as the cluster's catalog task does
    started = time.perf_counter()
    reference = read_catalog(catalog)
    t_catalog = time.perf_counter() - started
    serial = []
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        for path in paths:
            started = time.perf_counter()
            result = solve_file(path, catalog=reference, config=PipelineConfig())
            serial.append(time.perf_counter() - started)
            print(f"serial {path.name}: {result.status} in {serial[-1]:.1f} s ({result.n_matches} matches)",
                  flush=True)
    per_serial = (t_catalog + float(np.sum(serial))) / len(serial)
    print(f"serial: {per_serial:.2f} s per exposure, catalog read ({t_catalog:.1f} s) included "
          f"({60.0 / per_serial:.2f} exposures/min), "
          f"peak memory of this process {worker_peak_rss_mb():.0f} MB", flush=True)

    results: dict[int, float] = {}
    peaks: list[float] = []
    rows_of: dict[str, list[dict]] = {}
    for workers in (1, 2):
        wall, rss, solved, rows = run_cluster(paths, catalog, workers, args.work / f"out{workers}")
        results[workers] = wall
        rows_of[f"{workers} worker{'s' if workers > 1 else ''}"] = rows
        peaks.extend(rss.values())
        print(f"{workers} worker(s): {solved}/{len(paths)} solved in {wall:.1f} s = "
              f"{60.0 * len(paths) / wall:.2f} exposures/min; worker peak memory "
              + ", ".join(f"{v:.0f} MB" for v in rss.values()), flush=True)
    ceiling = machine_ceiling(paths, catalog)
    print(f"the machine's ceiling: two serial solves in two processes at once give {ceiling:.2f}x the "
          "throughput of one (no Dask)", flush=True)
    thr1, thr2 = len(paths) / results[1], len(paths) / results[2]
    overhead = 100.0 * (results[1] / len(paths) - per_serial) / per_serial
    peak = max(peaks)
    print(f"\n{'target (issue 14)':48s} {'measured':>10s}  {os.cpu_count()} cores")
    for label, value, met in ((f"2 workers / 1 worker throughput >= {SPEEDUP_TARGET}x", f"{thr2 / thr1:.2f}x",
                               thr2 / thr1 >= SPEEDUP_TARGET),
                              (f"overhead per exposure (1 worker vs serial) < {OVERHEAD_TARGET_PCT:g} %",
                               f"{overhead:+.1f} %", overhead < OVERHEAD_TARGET_PCT),
                              (f"peak memory per worker < {MEMORY_TARGET_MB:.0f} MB", f"{peak:.0f} MB",
                               peak < MEMORY_TARGET_MB)):
        print(f"{label:48s} {value:>10s}  {'MET' if met else 'NOT MET'}")
    print(f"{'(the machine: 2 serial processes / 1)':48s} {ceiling:>9.2f}x")
    if thr2 / thr1 < SPEEDUP_TARGET:
        limit = (f"two serial solves without Dask, in two processes at once, reach only {ceiling:.2f}x on this "
                 f"machine, and two workers {100.0 * thr2 / thr1 / ceiling:.0f} % of that"
                 if ceiling < SPEEDUP_TARGET else "the workers fall short of what two plain processes reach: "
                 "Dask's overhead, see the per-stage times in the summaries")
        print(f"what limits the speed-up: {limit}")
    stage_profile(rows_of)


if __name__ == "__main__":
    main()
