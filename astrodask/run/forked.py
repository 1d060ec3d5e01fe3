"""One exposure's work shared with forked copies of this process, while its other cores are idle.

The command solves a single exposure in its own process (the head start of the embedded cluster,
or ``--serial``), where SEP, which holds the GIL, would leave every core but one idle during the
extraction. :class:`ForkedMap` maps a function over items (the extraction's strips) in this process
and in forked children: a child inherits the image and the function as they are (no copy, no
pickling of either: only the results come back, through a pipe), and exits as soon as it has sent
them. Not for Dask's workers: each of them already has a core of its own to fill.

A child that fails, dies or does not answer within the time given leaves its share to this
process, which computes it again: its error, if any, is then raised here, with a traceback of
this process.

:class:`Forked` computes one function in a forked child while this process does something else
(the embedded cluster's start while the child reads and detects the first exposure: two
processes, not two threads that would take turns at the GIL). A child that fails gives a default.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import select
import signal
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: How long a child may take before its share is done here instead: this many times as long as this
#: process's own share took, and at least MIN_WAIT_S (:class:`ForkedMap`'s ``min_wait_s``).
WAIT_FACTOR: float = 4.0
MIN_WAIT_S: float = 30.0
#: How long :class:`Forked` waits for its child by default, s.
FORKED_WAIT_S: float = 900.0


def available_cores() -> int:
    """Cores this process may use: its CPU affinity and its cgroup's CPU quota (a container's limit)
    taken into account (``dask.system.CPU_COUNT``)."""
    from dask.system import CPU_COUNT

    return int(CPU_COUNT)


def split_evenly(items: Sequence[T], parts: int) -> list[list[T]]:
    """``items`` in at most ``parts`` contiguous, non-empty runs whose lengths differ by at most one."""
    parts = max(1, min(parts, len(items)))
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for k in range(parts):
        stop = start + size + (k < extra)
        out.append(list(items[start:stop]))
        start = stop
    return [run for run in out if run]


@dataclass(frozen=True)
class _Child:
    pid: int
    fd: int
    items: list[Any]


class ForkedMap:
    """``fmap(fn, items) == [fn(x) for x in items]``, with the items shared over forked processes.

    Parameters
    ----------
    processes
        Processes to share the items over, this one included (0: one per available core,
        :func:`available_cores`). One, or a system other than Linux, maps in this process alone
        (macOS's system libraries are not safe to use in a forked child).
    min_wait_s
        A child's share is done here when the child has not answered by then, or by
        :data:`WAIT_FACTOR` times as long as this process's own share took, whichever is later.

    Notes
    -----
    ``fn`` must only compute: a child runs it in a copy of this process at the moment of the fork
    (with none of this process's other threads), sends its results and ends with ``os._exit``.
    The results must pickle.
    """

    def __init__(self, processes: int = 0, *, min_wait_s: float = MIN_WAIT_S) -> None:
        self.processes = available_cores() if processes <= 0 else processes
        self.min_wait_s = min_wait_s
        if not sys.platform.startswith("linux"):
            self.processes = 1

    def __call__(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        runs = split_evenly(items, self.processes)
        if len(runs) <= 1:
            return [fn(x) for x in items]
        children: list[_Child] = []
        try:
            for run in runs[1:]:
                children.append(_fork(fn, run))
            started = time.perf_counter()
            results = [fn(x) for x in runs[0]]
            wait_s = max(self.min_wait_s, WAIT_FACTOR * (time.perf_counter() - started))
            for child in children:
                results.extend(_collect(child, fn, wait_s))
            return results
        finally:
            for child in children:
                _reap(child)


def _fork(fn: Callable[[T], R], items: list[T]) -> _Child:
    """Fork a child that maps ``fn`` over ``items`` and writes the pickled list (or its error) to a pipe."""
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():  # Python >= 3.12 warns of forking a process with threads: the child only computes
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: compute, send, leave without running this process's exit handlers
        status = 0
        try:
            os.close(read_fd)
            with contextlib.suppress(ValueError):  # Ctrl-C ends it at once; the parent cleans up
                signal.signal(signal.SIGINT, signal.SIG_DFL)
            try:
                payload = pickle.dumps(("ok", [fn(x) for x in items]), protocol=pickle.HIGHEST_PROTOCOL)
            except BaseException as err:  # noqa: BLE001 - reported to the parent, which computes the share again
                payload = pickle.dumps(("error", f"{type(err).__name__}: {err}"))
            with os.fdopen(write_fd, "wb") as pipe:
                pipe.write(payload)
        except BaseException:  # noqa: BLE001 - the pipe is gone: the parent sees no answer
            status = 1
        finally:
            os._exit(status)
    os.close(write_fd)
    return _Child(pid, read_fd, list(items))


def _collect(child: _Child, fn: Callable[[Any], R], wait_s: float) -> list[R]:
    """A child's results; its share computed here instead when it fails, dies or takes longer than ``wait_s``."""
    ok, value = _receive(child, wait_s)
    if ok:
        return list(value)
    log.warning("a forked process sharing the work failed (%s); this process does its share", value)
    return [fn(x) for x in child.items]


def _receive(child: _Child, wait_s: float) -> tuple[bool, Any]:
    """(True, the child's results), or (False, why there are none): it failed, died or did not
    answer within ``wait_s``."""
    chunks, deadline = [], time.monotonic() + wait_s
    while True:
        ready, _, _ = select.select([child.fd], [], [], max(deadline - time.monotonic(), 0.0))
        if not ready:
            return False, f"no answer within {wait_s:.0f} s"
        chunk = os.read(child.fd, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    try:
        status, value = pickle.loads(b"".join(chunks))
    except Exception as err:  # noqa: BLE001 - a child that died mid-way
        return False, f"no whole answer ({type(err).__name__}: {err})"
    return status == "ok", value


class Forked(Generic[R]):
    """``fn()`` computed in a forked child while this process goes on; :meth:`result` collects it.

    Fork before this process starts other threads: the child is then a whole copy of it.

    Parameters
    ----------
    fn
        What the child computes; its result must pickle.
    wait_s
        How long :meth:`result` waits for the child at most.
    """

    def __init__(self, fn: Callable[[], R], *, wait_s: float = FORKED_WAIT_S) -> None:
        self.wait_s = wait_s
        self._child = _fork(_call, [fn])

    def result(self, default: R) -> R:
        """The child's result; ``default`` (logged) when it failed, died or did not answer in time."""
        try:
            ok, value = _receive(self._child, self.wait_s)
        finally:
            _reap(self._child)
        if ok:
            return value[0]
        log.warning("the forked process failed (%s)", value)
        return default


def _call(fn: Callable[[], R]) -> R:
    return fn()


def _reap(child: _Child) -> None:
    """Close a child's pipe, and end it if it still runs (an error or Ctrl-C here)."""
    try:
        os.close(child.fd)
    except OSError:
        pass
    try:
        pid, _ = os.waitpid(child.pid, os.WNOHANG)
        if pid == 0:
            os.kill(child.pid, signal.SIGKILL)
            os.waitpid(child.pid, 0)
    except ChildProcessError:  # already reaped
        pass
