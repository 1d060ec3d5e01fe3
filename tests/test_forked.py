"""One exposure's extraction shared with forked processes (astrodask.run.forked.ForkedMap).

Real forks of the test process: the results come back in order from other processes, a child
that fails, dies or hangs leaves its share to the parent, and an extraction shared over
processes is the one made in a single process, row for row.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from astrodask.config import DetectConfig, DetectPassConfig
from astrodask.run.forked import ForkedMap, split_evenly
from astrodask.solve.detect import Background, measure_passes, subtract_background

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forks on Linux only")


@given(st.lists(st.integers(), max_size=40), st.integers(min_value=1, max_value=8))
def test_split_evenly_keeps_every_item_in_order_in_balanced_runs(items: list[int], parts: int) -> None:
    runs = split_evenly(items, parts)
    assert [x for run in runs for x in run] == items
    assert len(runs) == min(parts, len(items))
    if runs:
        assert max(map(len, runs)) - min(map(len, runs)) <= 1


def test_items_are_shared_with_other_processes_and_come_back_in_order() -> None:
    parent = os.getpid()
    out = ForkedMap(3)(lambda x: (x * x, os.getpid()), list(range(10)))
    assert [v for v, _ in out] == [x * x for x in range(10)]
    pids = [pid for _, pid in out]
    assert pids[:4] == [parent] * 4  # the first share is this process's own
    assert len(set(pids[4:])) == 2 and parent not in pids[4:]  # two children, one share each


def test_one_process_per_core_this_process_may_use() -> None:
    """Pinned to one core (as a container's CPU limit or taskset does), nothing is forked."""
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from astrodask.run.forked import ForkedMap; print(ForkedMap().processes, ForkedMap(3).processes)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split() == ["1", "3"]


def test_one_process_maps_here() -> None:
    parent = os.getpid()
    assert {pid for pid in ForkedMap(1)(lambda _: os.getpid(), range(5))} == {parent}


def _child_only(parent: int, action: str):
    def fn(x: int) -> int:
        if os.getpid() != parent:
            if action == "raise":
                raise ValueError("only in the child")
            if action == "die":
                os._exit(3)
            if action == "hang":
                time.sleep(60)
        return 10 * x
    return fn


@pytest.mark.parametrize("action", ["raise", "die", "hang"])
def test_a_child_that_fails_dies_or_hangs_leaves_its_share_to_the_parent(action: str, caplog) -> None:
    fmap = ForkedMap(2, min_wait_s=1.0)
    started = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="astrodask.run.forked"):
        out = fmap(_child_only(os.getpid(), action), list(range(6)))
    assert out == [10 * x for x in range(6)]
    assert time.perf_counter() - started < 20  # a hung child is not waited for
    assert "this process does its share" in caplog.text
    if action == "raise":
        assert "ValueError: only in the child" in caplog.text
    if action == "hang":
        assert "no answer within 1 s" in caplog.text


def test_an_error_everywhere_is_raised_here() -> None:
    def fn(x: int) -> int:
        if x == 4:
            raise KeyError("bad item")
        return x

    with pytest.raises(KeyError, match="bad item"):
        ForkedMap(2)(fn, list(range(6)))


def test_no_child_is_left_behind() -> None:
    parent = os.getpid()
    children = {pid for pid in ForkedMap(3)(lambda _: os.getpid(), list(range(6))) if pid != parent}
    assert len(children) == 2
    for pid in children:  # reaped: not even a zombie is left
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def _crowded(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ny, nx, n = 1400, 500, 1500
    yy, xx = np.mgrid[0:ny, 0:nx]
    image = rng.normal(100.0, 5.0, (ny, nx))
    for x, y, f in zip(rng.uniform(0, nx, n), rng.uniform(0, ny, n), rng.lognormal(6.5, 1.0, n)):
        y0, y1, x0, x1 = max(0, int(y) - 8), min(ny, int(y) + 9), max(0, int(x) - 8), min(nx, int(x) + 9)
        r2 = (xx[y0:y1, x0:x1] - x) ** 2 + (yy[y0:y1, x0:x1] - y) ** 2
        image[y0:y1, x0:x1] += f / (2 * np.pi * 1.5**2) * np.exp(-r2 / (2 * 1.5**2))
    return image.astype(np.float32)


@pytest.mark.parametrize("first_from_depth", [True, False])
def test_an_extraction_shared_over_processes_is_the_single_process_one(first_from_depth: bool) -> None:
    depth = DetectPassConfig(thresh_sigma=1.5, minarea=3, deblend_cont=0.001, strip_px=300)
    config = DetectConfig(depth=depth, first_from_depth=first_from_depth)
    background: Background = subtract_background(_crowded(7), config=config)
    here = measure_passes(background, config=config)
    shared = measure_passes(background, config=config, work_map=ForkedMap(2))
    for a, b in zip(here, shared):
        assert len(a) > 300 and a.colnames == b.colnames
        for name in a.colnames:
            np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]), err_msg=name)
