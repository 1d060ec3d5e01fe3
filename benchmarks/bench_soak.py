"""Soak: a backlog of 200 small simulated exposures, 10 % of them broken, a worker killed midway.

Simulates (once, kept in --work) ``--n`` small exposures (``--shape``, default 700 x 1000 pixels)
dithered over one synthetic sky, and makes a tenth of them broken files of mixed kinds (zero
bytes, a truncated ``.fits.fz``, not FITS, all NaN, a constant image, a cube, no pointing, a
header-only file). Then, on a real multi-process cluster (an embedded LocalCluster of
``--workers`` worker processes under their nannies, one thread each):

1. submits the backlog and, when half of it is reported, SIGKILLs one worker process (its
   nanny starts a new one; the scheduler reruns what the dead worker held);
2. checks that every good exposure is solved (a solution file saying SOLVED, a status record)
   and every broken one reported failed with a reason; an exposure lost with the killed worker
   beyond its retries is allowed only if a resubmit then solves it (reported either way);
3. prints throughput (exposures per minute, wall clock of the submit), each worker's peak
   resident memory, and the machine's core count.

Exit status 1 when a check fails.

Usage: python benchmarks/bench_soak.py [--n 200] [--broken-fraction 0.1] [--workers 2] [--work DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

#: The kinds of broken file, made in turn.
BROKEN_KINDS = ("empty", "truncated", "not-fits", "all-nan", "constant", "cube", "no-pointing", "no-image")
#: Keywords removed to make an exposure without a pointing.
POINTING_KEYS = ("RA", "DEC", "OBJCTRA", "OBJCTDEC", "TELRA", "TELDEC", "CRVAL1", "CRVAL2", "CTYPE1", "CTYPE2",
                 "CD1_1", "CD1_2", "CD2_1", "CD2_2", "CRPIX1", "CRPIX2", "CDELT1", "CDELT2", "PC1_1", "PC1_2",
                 "PC2_1", "PC2_2", "RA_DEG", "DEC_DEG")
#: Star density of the synthetic sky, per square degree.
DENSITY_PER_DEG2 = 12000.0
#: Spacing of the dithered pointings, degrees.
STEP_DEG = 0.05


def worker_peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM, MB); a restarted worker counts from its restart."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def simulate(work: Path, n: int, shape: tuple[int, int]) -> tuple[list[Path], Path]:
    """``n`` good exposures over one sky (the sky's catalog path): simulated once, then reused."""
    from astrodask.simulate import simulate_field, synthetic_gaia_catalog

    side = int(np.ceil(np.sqrt(n)))
    sky_path = work / "sky.ecsv"
    if sky_path.exists():
        from astropy.table import Table

        sky = Table.read(sky_path)
    else:
        radius = STEP_DEG * side * 0.75 + 0.3
        sky = synthetic_gaia_catalog(150.1, 25.0, rng=np.random.default_rng(7), radius_deg=radius,
                                     density_per_deg2=DENSITY_PER_DEG2)
        sky.write(sky_path, overwrite=True)
    paths = []
    started = time.perf_counter()
    for k in range(n):
        image = work / f"soak{k:03d}.fits.fz"
        if not image.exists():
            dra, ddec = (k % side - side / 2) * STEP_DEG, (k // side - side / 2) * STEP_DEG
            field = simulate_field(work, f"soak{k:03d}", ra_deg=150.1 + dra, dec_deg=25.0 + ddec, shape=shape,
                                   catalog=sky, distortion_px=1.5, rng=np.random.default_rng(1000 + k))
            Path(field.catalog_path).unlink(missing_ok=True)  # the sky's catalog serves them all
        paths.append(image)
    print(f"{n} exposures of {shape[1]} x {shape[0]} px ready in {time.perf_counter() - started:.1f} s", flush=True)
    return paths, sky_path


def make_broken(kind: str, good: Path, target: Path) -> Path:
    """A broken file of ``kind`` made from the good exposure ``good``."""
    from astropy.io import fits

    if kind == "empty":
        target = target.with_name(target.name.replace(".fits.fz", ".fits"))
        target.write_bytes(b"")
    elif kind == "truncated":
        data = good.read_bytes()
        target.write_bytes(data[: len(data) // 2])
    elif kind == "not-fits":
        target = target.with_name(target.name.replace(".fits.fz", ".fits"))
        target.write_text("SIMPLE  = this is a text file, not FITS\n" * 40)
    else:
        with fits.open(good) as hdul:
            header = hdul[1].header.copy()
            data = hdul[1].data.astype(np.float32)
        for key in ("ZIMAGE", "ZBITPIX", "ZNAXIS", "ZNAXIS1", "ZNAXIS2", "ZTILE1", "ZTILE2", "ZCMPTYPE"):
            header.remove(key, ignore_missing=True)
        target = target.with_name(target.name.replace(".fits.fz", ".fits"))
        if kind == "all-nan":
            data[:] = np.nan
        elif kind == "constant":
            data[:] = 1000.0
        elif kind == "cube":
            data = np.stack([data, data])
        elif kind == "no-pointing":
            for key in POINTING_KEYS:
                header.remove(key, ignore_missing=True, remove_all=True)
        if kind == "no-image":
            fits.PrimaryHDU(header=fits.Header([(k, header[k]) for k in ("DATE-OBS", "EXPTIME") if k in header])
                            ).writeto(target, overwrite=True)
        else:
            for key in ("NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "BITPIX", "BZERO", "BSCALE"):
                header.remove(key, ignore_missing=True)
            fits.PrimaryHDU(data, header=header).writeto(target, overwrite=True)
    return target


def solved_on_disk(out: Path, path: Path) -> bool:
    from astrodask.run.backlog import is_solved_file, status_path
    from astrodask.types import exposure_name

    name = exposure_name(path)
    return is_solved_file(out / f"{name}.wcs.fits") and status_path(out, name).is_file()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="exposures in the backlog, broken ones included")
    parser.add_argument("--broken-fraction", type=float, default=0.1, help="fraction of broken files")
    parser.add_argument("--shape", type=int, nargs=2, default=(700, 1000), metavar=("NY", "NX"),
                        help="frame size, pixels")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "astrodask-bench-soak")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}; load average "
          + " ".join(f"{v:.1f}" for v in os.getloadavg()) + " (other work on the machine slows the figures)",
          flush=True)
    args.work.mkdir(parents=True, exist_ok=True)
    n_broken = int(round(args.n * args.broken_fraction))
    good, catalog = simulate(args.work, args.n - n_broken, tuple(args.shape))
    broken_dir = args.work / "broken"
    broken_dir.mkdir(exist_ok=True)
    broken = [make_broken(BROKEN_KINDS[k % len(BROKEN_KINDS)], good[k % len(good)],
                          broken_dir / f"broken{k:02d}-{BROKEN_KINDS[k % len(BROKEN_KINDS)]}.fits.fz")
              for k in range(n_broken)]
    # the broken files spread through the backlog, not bunched at its end
    backlog: list[Path] = []
    every = max(1, len(good) // max(1, n_broken))
    pending_broken = list(broken)
    for k, path in enumerate(good):
        backlog.append(path)
        if (k + 1) % every == 0 and pending_broken:
            backlog.append(pending_broken.pop(0))
    backlog += pending_broken
    out = args.work / "out"
    shutil.rmtree(out, ignore_errors=True)

    from astrodask.config import PipelineConfig
    from astrodask.run.client import connect, submit_backlog

    killed: list[str] = []
    with connect(n_workers=args.workers, memory_limit=None) as connection:
        client = connection.client
        pids = client.run(os.getpid)  # worker address -> its process (the nanny's child)
        victim = sorted(pids)[0]

        def kill_midway(done: int, total: int, row: dict) -> None:
            if not killed and done >= total // 2:
                killed.append(f"{victim} (pid {pids[victim]}) after {done} of {total}")
                os.kill(pids[victim], signal.SIGKILL)

        started = time.perf_counter()
        rows = submit_backlog(connection, backlog, out_dir=out, config=PipelineConfig(), catalog_path=catalog,
                              on_row=kill_midway)
        wall = time.perf_counter() - started
        deadline = time.monotonic() + 60
        while len(client.scheduler_info()["workers"]) < args.workers and time.monotonic() < deadline:
            time.sleep(0.5)  # the nanny's new worker
        rss = client.run(worker_peak_rss_mb)
    print(f"killed worker {killed[0] if killed else 'none (the backlog ended first)'}; load average now "
          + " ".join(f"{v:.1f}" for v in os.getloadavg()), flush=True)

    by_file = {str(Path(r["file"]).resolve()): r for r in rows}
    good_failed = [by_file.get(str(p.resolve())) for p in good if not solved_on_disk(out, p)]
    broken_rows = [by_file.get(str(p.resolve())) for p in broken]
    broken_ok = [r for r in broken_rows if r is not None and r["status"] == "failed" and r["reason"]]
    lost = [r for r in good_failed if r is not None and "KilledWorker" in str(r["reason"])]
    print(f"{len(rows)} of {len(backlog)} exposures reported in {wall:.1f} s = "
          f"{60.0 * len(backlog) / wall:.1f} exposures/min ({args.workers} worker processes, 1 thread each)",
          flush=True)
    print(f"good: {len(good) - len(good_failed)} of {len(good)} solved; broken: {len(broken_ok)} of {len(broken)} "
          "reported failed with a reason", flush=True)
    kinds: dict[str, str] = {}
    for path, row in zip(broken, broken_rows, strict=True):
        kind = path.name.split("-", 1)[1].split(".")[0]
        if row is not None and kind not in kinds:
            kinds[kind] = f"{row['stage']}: {str(row['reason'])[:110]}"
    for kind, reason in kinds.items():
        print(f"  {kind}: {reason}", flush=True)
    print("worker peak memory (a restarted worker from its restart): "
          + ", ".join(f"{v:.0f} MB" for v in rss.values()), flush=True)
    ok = len(broken_ok) == len(broken) and all(r is not None for r in good_failed) and len(lost) == len(good_failed)
    if good_failed:
        print(f"{len(good_failed)} good exposure(s) not solved: "
              + "; ".join(f"{r['name']}: {r['reason']}" for r in good_failed if r is not None), flush=True)
        with connect(n_workers=args.workers, memory_limit=None) as connection:
            again = submit_backlog(connection, [Path(r["file"]) for r in good_failed if r is not None],
                                   out_dir=out, config=PipelineConfig(), catalog_path=catalog)
        print(f"resubmitted: {sum(r['status'] == 'solved' for r in again)} of {len(again)} solved", flush=True)
        ok = ok and all(r["status"] == "solved" for r in again)
    print("soak: " + ("every good exposure solved, every broken one reported" if ok else "FAILED"), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
