"""Depth match speed: the one-tree ``depth_match`` against the literal tree-per-source reference.

Simulates a Condor-like field (9576 x 6388 px at 0.85"/px): Gaia targets uniform over the
frame with power-law fluxes (N(>F) ~ F^-0.6, i.e. star counts rising 0.4 dex per magnitude),
image sources drawn from them (brighter stars detected more often, measured fluxes
scattered by 0.3 mag, centroids by 0.3 px) plus 5 % spurious detections. Prints the
machine's core count, the best of ``--repeat`` wall times of ``depth_match`` for each
window, the fraction of correct pairs, and the literal implementation's time on a
smaller case next to the fast one's, with a check that both give identical pairs.

Target (brief "depth match"): 100,000 sources x 150,000 targets within 1.5 s.

Usage: python benchmarks/bench_depth_match.py [--sources 100000] [--targets 150000]
       [--radius-arcsec 3] [--repeat 3] [--small 2000]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from astrodask.solve.depth import depth_match, depth_match_literal

FRAME_PX = (9576.0, 6388.0)
SCALE_ARCSEC = 0.85


def simulate(n_src: int, n_tgt: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Targets, and sources with their true target index (-1 for spurious detections)."""
    frame = np.asarray(FRAME_PX) * np.sqrt(n_tgt / 150_000)
    tgt_xy = rng.uniform(0.0, 1.0, (n_tgt, 2)) * frame
    tgt_flux = rng.pareto(0.6, n_tgt) + 1.0
    n_real = int(round(0.95 * n_src))
    # brighter stars are more likely to be detected
    weight = tgt_flux ** 0.5
    truth = rng.choice(n_tgt, n_real, replace=False, p=weight / weight.sum())
    src_xy = tgt_xy[truth] + rng.normal(0.0, 0.3, (n_real, 2))
    src_flux = tgt_flux[truth] * 10 ** (-0.4 * rng.normal(0.0, 0.3, n_real))
    n_fake = n_src - n_real
    src_xy = np.vstack([src_xy, rng.uniform(0.0, 1.0, (n_fake, 2)) * frame])
    src_flux = np.concatenate([src_flux, rng.uniform(1.0, 2.0, n_fake)])
    truth = np.concatenate([truth, np.full(n_fake, -1)])
    return src_xy, src_flux, tgt_xy, tgt_flux, truth


def best_time(func, repeat: int) -> tuple[float, object]:
    best, out = np.inf, None
    for _ in range(repeat):
        start = time.perf_counter()
        out = func()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=100_000)
    parser.add_argument("--targets", type=int, default=150_000)
    parser.add_argument("--radius-arcsec", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--small", type=int, default=2000, help="sources in the literal comparison")
    args = parser.parse_args()

    print(f"cores: {os.cpu_count()} (affinity: {len(os.sched_getaffinity(0))})")
    rng = np.random.default_rng(20240601)
    radius = args.radius_arcsec / SCALE_ARCSEC
    src_xy, src_flux, tgt_xy, tgt_flux, truth = simulate(args.sources, args.targets, rng)
    print(f"{args.sources} sources x {args.targets} targets, radius {radius:.2f} px")
    for window in (0, 100, 1000, 10_000):
        seconds, match = best_time(
            lambda window=window: depth_match(src_xy, src_flux, tgt_xy, tgt_flux, radius_px=radius, window=window),
            args.repeat,
        )
        right = np.count_nonzero(truth[match.src_index] == match.tgt_index)
        print(f"  window {window:>6}: {seconds:6.3f} s  matched {match.n_matched:>6}  "
              f"correct {right / max(match.n_matched, 1):.4f}  (target <= 1.5 s: "
              f"{'ok' if seconds <= 1.5 else 'MISSED'})")

    n_small = args.small
    n_tgt_small = int(n_small * args.targets / args.sources)
    src_xy, src_flux, tgt_xy, tgt_flux, _ = simulate(n_small, n_tgt_small, rng)
    for window in (0, 100):
        fast_s, fast = best_time(
            lambda window=window: depth_match(src_xy, src_flux, tgt_xy, tgt_flux, radius_px=radius, window=window),
            args.repeat,
        )
        slow_s, slow = best_time(
            lambda window=window: depth_match_literal(src_xy, src_flux, tgt_xy, tgt_flux, radius_px=radius,
                                                      window=window),
            1,
        )
        same = np.array_equal(fast.pairs(), slow.pairs())
        print(f"{n_small} x {n_tgt_small}, window {window}: literal {slow_s:.3f} s, fast {fast_s:.4f} s "
              f"(x{slow_s / fast_s:.0f}); identical pairs: {same}")


if __name__ == "__main__":
    main()
