"""Detection on a simulated full Condor frame: wall time, peak memory, sources, centroid accuracy.

Simulates (once, cached in --work) a 9576 x 6388 px Condor exposure at 0.85"/px with a
known TAN + TPV truth, then, in a fresh child process per run so that peak memory is the
detection's own, reads the ``.fits.fz`` and runs ``get_image_ij`` (first pass, then the
relaxed depth pass). Prints the machine's core count, wall times (read included), peak
resident memory, source counts, and the centroid error against the truth by G magnitude.

Targets (issue "Foundation"): under 4 s on 2 cores with the read included; under 2 GB.

Usage: python benchmarks/bench_detect.py [--density 2500] [--repeat 3] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHILD = r"""
import json, resource, sys, time


def peak_mb():
    # VmHWM, not getrusage: on Linux ru_maxrss survives exec, so it would report the parent's peak
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


t0 = time.perf_counter()
from astrodask.solve.detect import detect_exposure
from astrodask.io.exposure import read_exposure
t_import = time.perf_counter() - t0
path, depth, out = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
t0 = time.perf_counter()
exposure = read_exposure(path)
t_read = time.perf_counter() - t0
table = detect_exposure(exposure, depth=depth)
t_total = time.perf_counter() - t0
table.write(out, overwrite=True)
print(json.dumps({"read_s": t_read, "total_s": t_total, "import_s": t_import, "n": len(table),
                  "fwhm": table.meta["winpos_fwhm_px"],
                  "maxrss_mb": peak_mb()}))
"""


def simulate(work: Path, density: float) -> Path:
    from astrodask.simulate import simulate_field

    name = f"condor_d{int(density)}"
    image = work / f"{name}.fits.fz"
    if image.exists() and (work / f"{name}.truth.ecsv").exists():
        return image
    started = time.perf_counter()
    field = simulate_field(work, name, ra_deg=150.1, dec_deg=2.2, rng=np.random.default_rng(7),
                           density_per_deg2=density, distortion_px=6.0, rotation_deg=0.4)
    print(f"simulated {field.image_path} ({int(np.count_nonzero(field.truth['in_frame']))} stars in frame) "
          f"in {time.perf_counter() - started:.1f} s")
    return field.image_path


def run_child(image: Path, depth: bool, out: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(image), "1" if depth else "0", str(out)],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def centroid_report(sources_path: Path, truth_path: Path) -> None:
    from astropy.table import Table
    from scipy.spatial import cKDTree

    from astrodask.types import SourceFlag

    sources, truth = Table.read(sources_path), Table.read(truth_path)
    truth = truth[truth["in_frame"]]
    dist, k = cKDTree(np.column_stack([sources["i"], sources["j"]])).query(
        np.column_stack([truth["i"], truth["j"]]), distance_upper_bound=1.0)
    found = np.isfinite(dist)
    kk = np.minimum(k, len(sources) - 1)
    clean = found & ((np.asarray(sources["flag"])[kk] & int(SourceFlag.SATURATED | SourceFlag.BLENDED
                                                           | SourceFlag.EDGE)) == 0)
    clean &= np.asarray(truth["isolated"]) & ~np.asarray(truth["saturated"])
    di = np.asarray(sources["i"])[kk] - np.asarray(truth["i"])
    dj = np.asarray(sources["j"])[kk] - np.asarray(truth["j"])
    sig = np.sqrt(0.5 * (np.asarray(sources["var_i"]) + np.asarray(sources["var_j"])))[kk]
    gmag = np.asarray(truth["phot_g_mean_mag"])
    print(f"{'G':>9} {'stars':>6} {'found':>6} {'clean':>6} {'mean di':>9} {'mean dj':>9} {'rms di':>8} "
          f"{'rms dj':>8} {'SEP sig':>8}  (px)")
    for lo in np.arange(np.floor(gmag.min()), 21.0, 1.0):
        sel = (gmag >= lo) & (gmag < lo + 1)
        c = sel & clean
        if not sel.any():
            continue
        if c.sum() >= 3:
            print(f"{lo:4.0f}-{lo + 1:<4.0f} {sel.sum():6d} {int((sel & found).sum()):6d} {int(c.sum()):6d} "
                  f"{di[c].mean():+9.4f} {dj[c].mean():+9.4f} {di[c].std():8.4f} {dj[c].std():8.4f} "
                  f"{np.median(sig[c]):8.4f}")
        else:
            print(f"{lo:4.0f}-{lo + 1:<4.0f} {sel.sum():6d} {int((sel & found).sum()):6d} {int(c.sum()):6d}")
    bright = clean & (gmag < 17)
    print(f"isolated clean stars G < 17: {int(bright.sum())}, mean offset ({di[bright].mean():+.4f}, "
          f"{dj[bright].mean():+.4f}) px, rms ({di[bright].std():.4f}, {dj[bright].std():.4f}) px")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--density", type=float, default=2500.0,
                        help="stars to G=20 per deg2 (2500: high latitude; 9000: dense)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per pass (the best is reported)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "astrodask-bench")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}")
    image = simulate(args.work, args.density)
    for depth in (False, True):
        out = args.work / f"{image.name}.{'depth' if depth else 'first'}.ecsv"
        runs = [run_child(image, depth, out) for _ in range(args.repeat)]
        best = min(runs, key=lambda r: r["total_s"])
        print(f"{'depth' if depth else 'first'} pass: {best['n']} sources, FWHM {best['fwhm']:.2f} px; "
              f"read + detect {best['total_s']:.2f} s (best of {args.repeat}; read {best['read_s']:.2f} s; "
              f"all runs {', '.join(format(r['total_s'], '.2f') for r in runs)} s); "
              f"peak memory {max(r['maxrss_mb'] for r in runs):.0f} MB")
        centroid_report(out, args.work / image.name.replace(".fits.fz", ".truth.ecsv"))



if __name__ == "__main__":
    main()
