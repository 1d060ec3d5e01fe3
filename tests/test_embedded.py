"""The embedded LocalCluster as a user meets it: ``astrodask solve FILE`` with no scheduler.

One exposure runs on a LocalCluster of threads in the command's own process (``--local-cluster
auto``: the head start has already read and detected it, and worker processes would cost more to
start than the rest of the solve takes); a backlog runs on worker processes. Both are real
clusters run by the real command in a subprocess; the solutions must be the same, each log
record must be printed once, and the choice can be forced either way.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from astrodask.types import SOLVED

ROOT = Path(__file__).resolve().parents[1]
#: Seconds a solve subprocess may take before the test fails.
TIMEOUT_S = 180.0
SHAPE = (700, 1000)
#: The embedded cluster runs a worker process, or a thread, per core.
CORES = os.cpu_count() or 1
THREADS = f"embedded LocalCluster of {CORES} threads in this process tcp://127.0.0.1:"
PROCESSES = f"embedded LocalCluster of {CORES} worker processes tcp://127.0.0.1:"


@pytest.fixture(scope="module")
def field(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], Path]:
    """Two simulated exposures of one sky, and their catalog file."""
    from astrodask.simulate import simulate_field, synthetic_gaia_catalog

    folder = tmp_path_factory.mktemp("embedded")
    sky = synthetic_gaia_catalog(150.1, 25.0, rng=np.random.default_rng(5), radius_deg=0.5,
                                 density_per_deg2=12000.0)
    paths = []
    for k in range(2):
        made = simulate_field(folder, f"e{k}", ra_deg=150.1 + 0.01 * k, dec_deg=25.0, shape=SHAPE, catalog=sky,
                              distortion_px=1.5, rng=np.random.default_rng(40 + k))
        Path(made.catalog_path).unlink()
        paths.append(Path(made.image_path))
    catalog = folder / "catalog.ecsv"
    sky.write(catalog)
    return paths, catalog


def solve(paths: list[Path], catalog: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "astrodask.cli", "solve", *map(str, paths), "--catalog",
                           str(catalog), "--out", str(out), *extra], capture_output=True, text=True, env=env,
                          timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def solution(out: Path, path: Path) -> WCS:
    name = path.name.split(".")[0]
    assert Table.read(out / "summary.ecsv")["status"].tolist().count(SOLVED) >= 1
    return WCS(fits.getheader(out / f"{name}.wcs.fits"))


def test_one_exposure_runs_on_threads_and_matches_worker_processes(field: tuple[list[Path], Path],
                                                                   tmp_path: Path) -> None:
    paths, catalog = field
    threads = solve(paths[:1], catalog, tmp_path / "threads")
    processes = solve(paths[:1], catalog, tmp_path / "processes", "--local-cluster", "processes")
    assert THREADS in threads.stdout, threads.stdout
    assert PROCESSES in processes.stdout, processes.stdout
    for proc in (threads, processes):
        # every record once: in-process workers must not forward their records back to their own logger
        assert proc.stderr.count("error clip: kept") == 1, proc.stderr
        assert proc.stderr.count("ready on worker") <= os.cpu_count(), proc.stderr
    pixels = np.array([[1.0, 1.0], [SHAPE[1], SHAPE[0]], [SHAPE[1] / 2, SHAPE[0] / 3]])
    a = solution(tmp_path / "threads", paths[0]).all_pix2world(pixels, 1)
    b = solution(tmp_path / "processes", paths[0]).all_pix2world(pixels, 1)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-9)  # the same solve, wherever it ran (< 4 microarcsec)


def test_a_backlog_runs_on_worker_processes_and_threads_can_be_forced(field: tuple[list[Path], Path],
                                                                      tmp_path: Path) -> None:
    paths, catalog = field
    backlog = solve(paths, catalog, tmp_path / "backlog")
    assert f"embedded LocalCluster of {CORES} worker processes tcp://127.0.0.1:" in backlog.stdout, backlog.stdout
    forced = solve(paths, catalog, tmp_path / "forced", "--local-cluster", "threads")
    assert f"embedded LocalCluster of {CORES} threads in this process tcp://127.0.0.1:" in forced.stdout, forced.stdout
    for out in (tmp_path / "backlog", tmp_path / "forced"):
        assert Table.read(out / "summary.ecsv")["status"].tolist() == [SOLVED, SOLVED]
        assert "2 of 2 solved" in (backlog.stdout if out.name == "backlog" else forced.stdout)


def test_embedded_worker_processes_run_without_a_trim_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    """glibc's trim threshold unset in the embedded workers (a set one costs 9-11 % of a solve), as in
    cluster/astrodask.yaml, whose worker environment must say the same; distributed's other settings kept.

    A nanny sets its pre-spawn variables in its own process's environment too, so a cluster started
    earlier in this test process with distributed's defaults leaves the variable behind: a fresh
    command starts without it, and so does this test."""
    import yaml

    from astrodask.run.client import WORKER_ENVIRON, connect

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)

    config = yaml.safe_load((ROOT / "cluster" / "astrodask.yaml").read_text())
    assert config["distributed"]["nanny"]["pre-spawn-environ"] == WORKER_ENVIRON
    with connect(n_workers=1, memory_limit=None) as connection:
        environ = connection.client.run(lambda: {k: os.environ.get(k) for k in ("MALLOC_TRIM_THRESHOLD_",
                                                                                 "OPENBLAS_NUM_THREADS")})
    assert list(environ.values()) == [{"MALLOC_TRIM_THRESHOLD_": None, "OPENBLAS_NUM_THREADS": "1"}]


def test_the_program_leaves_its_objects_to_the_system_at_exit(field: tuple[list[Path], Path],
                                                                tmp_path: Path) -> None:
    """``astrodask`` as a program (``astrodask.cli.run``) solves and writes as ever, and freezes the
    garbage collector after every other exit handler: the interpreter's last full collection over the
    scientific stack then has nothing to walk."""
    paths, catalog = field
    out = tmp_path / "out"
    code = ("import atexit, gc, sys\n"
            "atexit.register(lambda: print('frozen at exit:', gc.get_freeze_count() > 0))\n"  # runs last
            "from astrodask.cli import run\n"
            f"sys.argv = ['astrodask', 'solve', {str(paths[0])!r}, '--catalog', {str(catalog)!r}, "
            f"'--out', {str(out)!r}]\n"
            "run()\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr
    assert "frozen at exit: True" in proc.stdout
    assert Table.read(out / "summary.ecsv")["status"][0] == SOLVED
    with fits.open(out / f"{paths[0].name.removesuffix('.fits.fz').removesuffix('.fits')}.wcs.fits") as hdul:
        assert hdul[0].header["CTYPE1"] == "RA---TPV"
