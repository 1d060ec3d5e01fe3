"""A cluster of several hosts, for real: network namespaces on this machine (cluster/multihost.py).

The deployment's topology: moto's S3 server on one host, the scheduler on another, two workers on
two more, each in its own network namespace on a bridge. The backlog is submitted from the machine
itself (``astrodask submit`` in a subprocess, as the DaskJob's runner does) with the tile cache on
that store; midway, one worker host's link is cut. No mocks: every byte crosses the bridge.

Needs root and ``ip netns``; skips with the reason elsewhere.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import urllib.request
import zlib
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from astrodask.run.backlog import read_statuses
from astrodask.simulate import read_truth_wcs, simulate_field, synthetic_gaia_catalog
from astrodask.wcsutil import wcs_error_mas

ROOT = Path(__file__).resolve().parents[1]
#: The bridge's /24 in this test; the marker below allows the test process to reach its hosts.
SUBNET = "10.87.16"
#: Every address the test process talks to: the machine's side of the bridge and the four hosts.
HOSTS = ["127.0.0.1", "::1", "localhost", *(f"{SUBNET}.{last}" for last in (1, 9, 10, 11, 12))]
#: Exposures of the backlog, and their size (px): small, so that the backlog takes seconds per exposure.
N_EXPOSURES = 6
SHAPE = (1000, 1500)
#: The longest the backlog may take, with a worker lost midway (s).
BACKLOG_TIMEOUT_S = 300.0
#: How long a silent worker is kept (the scheduler's worker-ttl): a cut link is noticed after this.
WORKER_TTL = "10s"


def load_multihost() -> ModuleType:
    """cluster/multihost.py, imported by path (cluster/ is not a package)."""
    name = "astrodask_cluster_multihost"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "cluster" / "multihost.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read().decode()


def _astrodask(*args: str) -> list[str]:
    return [sys.executable, "-m", "astrodask.cli", *args]


@pytest.fixture()
def topology(tmp_path: Path):
    """The four hosts, started; removed afterwards."""
    multihost = load_multihost()
    reason = multihost.unavailable_reason()
    if reason:
        pytest.skip(f"several hosts need network namespaces: {reason}")
    with multihost.build(n_workers=2, subnet=SUBNET, log_dir=tmp_path / "logs") as topology:
        topology.start(worker_ttl=WORKER_TTL)
        yield topology


@pytest.mark.slow
@pytest.mark.allow_hosts(HOSTS)
def test_backlog_on_several_hosts_survives_a_cut_link(topology, tmp_path: Path) -> None:
    import s3fs

    assert topology.addresses() == [f"{SUBNET}.{last}" for last in (1, 9, 10, 11, 12)]
    # the sky and the night: six pointings on one simulated field, a catalog wide enough for them all
    sky = synthetic_gaia_catalog(150.1, 25.0, rng=np.random.default_rng(11), radius_deg=1.6,
                                 density_per_deg2=6000.0)
    sky.write(tmp_path / "wide.ecsv")
    night = tmp_path / "night"
    paths = [simulate_field(night, f"exp{k:02d}", ra_deg=150.1 + 0.02 * k, dec_deg=25.0, shape=SHAPE,
                            catalog=sky, distortion_px=1.5,
                            rng=np.random.default_rng(zlib.crc32(f"exp{k}".encode()))).image_path
             for k in range(N_EXPOSURES)]
    backlog = tmp_path / "backlog.txt"
    backlog.write_text("# the night\n" + "".join(f"{p}\n" for p in paths))

    # the client's environment: the store's endpoint and credentials only (no AWS config of this machine)
    empty = tmp_path / "aws"
    empty.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "DASK_"))}
    env.update(topology.client_env(), AWS_CONFIG_FILE=str(empty / "config"),
               AWS_SHARED_CREDENTIALS_FILE=str(empty / "credentials"), AWS_EC2_METADATA_DISABLED="true",
               PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
               DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT="5s")
    fs = s3fs.S3FileSystem(endpoint_url=topology.s3_endpoint, key=env["AWS_ACCESS_KEY_ID"],
                           secret=env["AWS_SECRET_ACCESS_KEY"], skip_instance_cache=True)
    fs.mkdir("astrodask")
    cache_url = "s3://astrodask/gaia-tiles"
    imported = subprocess.run(_astrodask("cache", "import", str(tmp_path / "wide.ecsv"), "--cache", cache_url),
                                env=env, capture_output=True, text=True, timeout=300)
    assert imported.returncode == 0, imported.stdout + imported.stderr
    before = {key: info["ETag"] for key, info in fs.find("astrodask/gaia-tiles", detail=True).items()}
    assert before

    # submit from the machine; cut worker-1's link as soon as the first exposure is reported
    out = tmp_path / "solved"
    submit = subprocess.Popen(_astrodask("submit", f"@{backlog}", "--cache", cache_url, "--out", str(out),
                                         "--scheduler", topology.scheduler_address,
                                         "--set", "gaia.fetch_missing_tiles=false"),
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    cut_at: int | None = None
    started = time.monotonic()
    try:
        assert submit.stdout is not None
        for line in submit.stdout:
            lines.append(line.rstrip())
            if cut_at is None and line.startswith("[1/"):
                topology.cut("worker-1")
                cut_at = len(lines)
            assert time.monotonic() - started < BACKLOG_TIMEOUT_S, "\n".join(lines)
        submit.wait(timeout=60)
    finally:
        if submit.poll() is None:
            submit.kill()
            submit.wait()
        submit.stdout.close()
    output = "\n".join(lines)
    assert submit.returncode == 0, output
    assert cut_at is not None, output

    # every exposure solved exactly once: one progress line, one status record, one summary row each
    progress = [line for line in lines if line.startswith("[")]
    assert len(progress) == N_EXPOSURES, output
    assert sorted(line.split("] ")[1].split(":")[0] for line in progress) == sorted(map(str, paths))
    assert all(": solved:" in line for line in progress), output
    records = read_statuses(out)
    assert sorted(r["file"] for r in records) == sorted(map(str, paths))
    assert {r["status"] for r in records} == {"solved"}
    for path in paths:  # and solved right
        name = path.name.replace(".fits.fz", "")
        error = wcs_error_mas(WCS(fits.getheader(out / f"{name}.wcs.fits")), read_truth_wcs(path), SHAPE)
        assert np.sqrt(np.mean(error**2)) < 40.0, name

    # the store holds each tile once, as imported: nothing was rewritten or added by the workers
    after = {key: info["ETag"] for key, info in fs.find("astrodask/gaia-tiles", detail=True).items()}
    assert after == before
    tiles = sorted({key.split("/")[3] for key in after if key.count("/") >= 4})
    assert tiles and len(tiles) == len(set(tiles))

    # the cut host is gone from the scheduler; the dashboard and /metrics answer across the bridge
    status, counts = _get(f"{topology.dashboard_url}/json/counts.json")
    assert status == 200 and json.loads(counts)["workers"] == 1
    status, page = _get(f"{topology.dashboard_url}/status")
    assert status == 200 and "Dask" in page
    status, metrics = _get(f"{topology.dashboard_url}/metrics")
    assert status == 200 and "dask_scheduler_workers" in metrics
    status, metrics = _get(f"http://{topology.hosts['worker-0'].address}:8788/metrics")
    assert status == 200 and "dask_worker_tasks" in metrics
    # the image's health check, against the scheduler across the bridge
    check = subprocess.run([sys.executable, str(ROOT / "deploy" / "healthcheck.py"),
                            f"{topology.dashboard_url}/health"], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    with pytest.raises(OSError):  # the cut host does not answer
        _get(f"http://{topology.hosts['worker-1'].address}:8788/health")
