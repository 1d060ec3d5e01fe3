"""Detection's CPU time and lists with one SEP extraction for both passes and with two (issue 14).

For each exposure (default: the dense full frame of ``bench_solve.py``, simulated into --work when
absent) this reads the file and runs what the solve's detect stage runs (``check_pixels``,
``subtract_background``, ``measure_passes``), with ``detect.first_from_depth`` on (one extraction)
and off (two extractions), --repeat times each, interleaved, and prints the median process CPU time
of the read and of the detection (the machine is shared: CPU time, not wall time), the sources of
each pass, and how the first passes compare: the fraction of each list's sources with one of the
other's within 1 px (windowed centroids), over all sources and over the clean ones (no saturated or
artefact flag, what the matching uses). The depth pass must be the same in both modes.

Run it with another checkout on PYTHONPATH to compare that code's detection (e.g. before a change).

Usage: python benchmarks/bench_detect_passes.py [FILE ...] [--repeat 3] [--work DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from astropy.table import Table
from scipy.spatial import cKDTree


def matched(a: Table, b: Table, radius_px: float = 1.0) -> float:
    """The fraction of table ``a``'s sources with one of ``b``'s within ``radius_px``."""
    if len(a) == 0:
        return float("nan")
    if len(b) == 0:
        return 0.0
    d, _ = cKDTree(np.c_[b["i"], b["j"]]).query(np.c_[a["i"], a["j"]])
    return float(np.mean(d < radius_px))


def clean(table: Table) -> Table:
    from astrodask.types import ARTEFACT_FLAGS, SourceFlag

    return table[(np.asarray(table["flag"]) & int(SourceFlag.SATURATED | ARTEFACT_FLAGS)) == 0]


def detect_once(path: Path, *, one: bool) -> tuple[float, float, Table, Table]:
    """Read and detect one exposure: (read CPU s, detect CPU s, first pass, depth pass)."""
    from astrodask.config import DetectConfig
    from astrodask.io.exposure import read_exposure
    from astrodask.solve.detect import check_pixels, measure_passes, subtract_background

    config = DetectConfig(first_from_depth=one)
    t0 = time.process_time()
    exposure = read_exposure(path)
    t1 = time.process_time()
    check_pixels(exposure.data, saturation_adu=exposure.saturate_adu, config=config, where=str(path))
    background = subtract_background(exposure.data, config=config)
    first, deep = measure_passes(background, config=config, gain=exposure.gain, saturation_adu=exposure.saturate_adu)
    t2 = time.process_time()
    return t1 - t0, t2 - t1, first, deep


def default_frame(work: Path) -> Path:
    """bench_solve.py's dense full frame, simulated into ``work`` when absent."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_solve import CASES, simulate_case

    return simulate_case(work, CASES["dense"]).image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="exposures (default: the dense full frame)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each mode per file")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "astrodask-bench-solve",
                        help="folder of the simulated default frame")
    args = parser.parse_args()
    import astrodask

    print(f"machine: {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}; python {sys.version.split()[0]}; "
          f"astrodask from {Path(astrodask.__file__).parent}")
    files = args.files or [default_frame(args.work)]
    warnings.simplefilter("ignore")  # "no sources" on a blank file is a result here
    for path in files:
        times: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        tables: dict[bool, tuple[Table, Table]] = {}
        for _ in range(args.repeat):
            for one in (True, False):
                read_s, detect_s, first, deep = detect_once(path, one=one)
                times[one].append((read_s, detect_s))
                tables[one] = (first, deep)
        (f1, d1), (f2, d2) = tables[True], tables[False]
        same_deep = len(d1) == len(d2) and all(
            np.array_equal(np.asarray(d1[c]), np.asarray(d2[c])) for c in ("i", "j", "flux_adu", "flag"))
        print(f"{path.name}: {len(f2)} first-pass sources with two extractions, {len(f1)} with one; "
              f"depth pass {len(d2)} sources, {'the same' if same_deep else 'DIFFERENT'} in both modes")
        print(f"  first pass matched within 1 px, two -> one / one -> two: all {matched(f2, f1):.4f} / "
              f"{matched(f1, f2):.4f}; clean ({len(clean(f2))} / {len(clean(f1))}) "
              f"{matched(clean(f2), clean(f1)):.4f} / {matched(clean(f1), clean(f2)):.4f}")
        for one in (False, True):
            read = statistics.median(r for r, _ in times[one])
            detect = [d for _, d in times[one]]
            print(f"  {'one extraction ' if one else 'two extractions'}: CPU read {read:.2f} s, detect "
                  f"{statistics.median(detect):.2f} s (runs {', '.join(f'{d:.2f}' for d in detect)}), "
                  f"read + detect {read + statistics.median(detect):.2f} s")


if __name__ == "__main__":
    main()
