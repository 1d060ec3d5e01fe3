"""The live view of a backlog on a real LocalCluster of worker processes: the dashboard page (over
Bokeh's websocket and in a real headless Chromium), the JSON endpoint against summary.ecsv, the
Prometheus metrics, the diagnostic plots; and the terminal progress in a pseudo-terminal and a pipe."""

from __future__ import annotations

import asyncio
import json
import math
import os
import pty
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from astrodask.cli import EXIT_PARTIAL
from astrodask.config import PipelineConfig
from astrodask.io.output import SUMMARY_NAME
from astrodask.run.backlog import assemble_summary
from astrodask.run.client import connect, submit_backlog
from astrodask.run.monitor import JSON_ROUTE, fetch_snapshot
from astrodask.simulate import simulate_field

pytestmark = pytest.mark.slow

SHAPE = (800, 1200)
#: Seconds allowed to Chromium to start, load the page and render the backlog's figures.
BROWSER_TIMEOUT_S = 60.0
#: Where the browser test leaves its screenshot (kept for people to look at).
SCREENSHOT = Path(tempfile.gettempdir()) / "astrodask-dashboard.png"


@pytest.fixture(scope="module")
def watched(tmp_path_factory):
    """Two simulated exposures and a broken file solved on a LocalCluster (kept running), with --plots."""
    from astrodask.reference.catalog import read_catalog

    folder = tmp_path_factory.mktemp("night")
    paths, catalog_path, sky = [], None, None
    for k in range(2):
        field = simulate_field(folder, f"mon{k:02d}", ra_deg=80.1 + 0.01 * k, dec_deg=-10.0, shape=SHAPE,
                               density_per_deg2=6000.0, distortion_px=1.5, catalog=sky,
                               rng=np.random.default_rng(zlib.crc32(f"mon{k}".encode())))
        paths.append(field.image_path)
        if catalog_path is None:
            catalog_path, sky = field.catalog_path, read_catalog(field.catalog_path)
    broken = folder / "broken.fits"
    broken.write_text("not a FITS file")
    paths.append(broken)
    out, plots = folder / "out", folder / "plots"
    with connect(n_workers=2) as connection:
        rows = submit_backlog(connection, paths, out_dir=out, config=PipelineConfig(), catalog_path=catalog_path,
                              plots_dir=plots)
        # a resubmitted exposure (computed again once its keys are released) must not count twice
        rows += submit_backlog(connection, paths[:1], out_dir=out, config=PipelineConfig(), catalog_path=catalog_path)
        assemble_summary(out)
        base = connection.dashboard.rsplit("/", 1)[0]
        yield connection, base, out, plots, rows, paths, catalog_path


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as answer:
        assert answer.status == 200
        return answer.read().decode()


def test_json_endpoint_agrees_with_the_summary(watched) -> None:
    connection, base, out, _plots, rows, _paths, _catalog = watched
    snapshot = json.loads(get(base + JSON_ROUTE))
    summary = Table.read(out / SUMMARY_NAME, format="ascii.ecsv")
    assert snapshot["counts"] == {"pending": 0, "running": 0, "solved": 2, "failed": 1, "total": 3}
    assert snapshot["done"] == 3 and snapshot["eta_s"] == 0.0 and snapshot["rate_per_min"] > 0
    for row in summary:
        record = snapshot["exposures"][row["name"]]
        assert record["status"] == row["status"]
        assert record["matches"] == row["matches"]
        if row["status"] == "solved":
            assert math.isclose(record["rms_xi_mas"], row["rms_xi_arcsec"] * 1000, rel_tol=1e-9)
            assert math.isclose(record["chi2_dof"], row["chi2_dof"], rel_tol=1e-9)
            for stage in ("read", "detect", "regions", "like_fit"):
                assert math.isclose(record["seconds"][stage], row[f"t_{stage}_s"], rel_tol=1e-9)
    (failure,) = snapshot["failures"]
    assert failure["name"] == "broken" and "not a readable FITS file" in failure["reason"]
    assert snapshot["stages"]["detect"]["count"] == 2
    assert snapshot == {**fetch_snapshot(connection.client), "rate_per_min": snapshot["rate_per_min"],
                        "eta_s": snapshot["eta_s"]}


def test_metrics_hold_the_backlog(watched) -> None:
    _connection, base, out, _plots, _rows, _paths, _catalog = watched
    lines = get(base + "/metrics").splitlines()
    summary = Table.read(out / SUMMARY_NAME, format="ascii.ecsv")
    solved = summary[summary["status"] == "solved"]
    rms_mas = 1000 * np.sqrt((solved["rms_xi_arcsec"] ** 2 + solved["rms_eta_arcsec"] ** 2) / 2)

    def value(sample: str) -> float:
        (line,) = [x for x in lines if x.startswith(sample + " ")]
        return float(line.split()[-1])

    assert value('astrodask_exposures{status="solved"}') == 2
    assert value('astrodask_exposures{status="failed"}') == 1
    assert value('astrodask_exposures{status="pending"}') == 0
    assert value('astrodask_stage_seconds_count{stage="detect"}') == 2
    assert value('astrodask_stage_seconds_bucket{le="+Inf",stage="like_fit"}') == 2
    assert value("astrodask_residual_rms_mas_count") == 2
    assert math.isclose(value('astrodask_residual_rms_mas{quantile="0.5"}'), np.median(rms_mas), rel_tol=1e-6)
    assert math.isclose(value("astrodask_chi2_dof_sum"), float(np.sum(solved["chi2_dof"])), rel_tol=1e-6)
    assert value("astrodask_chi2_dof_count") == 2
    assert value("astrodask_archive_queries_total") == 0  # a catalog file: no archive
    assert value("astrodask_cache_tiles_read_total") == 0
    assert value("astrodask_cache_tiles_filled_total") == 0
    assert value("astrodask_cache_tiles_failed_total") == 0


def test_page_is_in_the_menu_and_answers_with_data(watched) -> None:
    from bokeh.client import pull_session
    from bokeh.models import Div

    _connection, base, _out, _plots, _rows, _paths, _catalog = watched
    status_page = get(base + "/status")
    assert 'href="astrodask"' in status_page  # the menu bar of every dashboard page
    assert "bokeh" in get(base + "/astrodask").lower()  # the Bokeh application answers at its route
    with pull_session(url=base + "/astrodask") as session:
        texts = " ".join(m.text for m in session.document.select({"type": Div}))
    assert "3 of 3 exposures done" in texts and "2 solved" in texts and "1 failed" in texts
    assert "not a readable FITS file" in texts


def test_plots_are_written(watched) -> None:
    _connection, _base, _out, plots, _rows, _paths, _catalog = watched
    for name in ("mon00", "mon01"):
        png = plots / f"{name}.residuals.png"
        assert png.stat().st_size > 20_000
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


async def browse(url: str, screenshot: Path, expect: list[str]) -> str:
    """Load ``url`` in headless Chromium over the DevTools protocol until ``expect`` are all in its text
    (shadow roots included: Bokeh draws its widgets there); save a screenshot; return the text."""
    from tornado.websocket import websocket_connect

    profile = Path(tempfile.mkdtemp(prefix="astrodask-chromium-"))
    proc = subprocess.Popen([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             "--disable-background-networking", "--disable-extensions", "--hide-scrollbars",
                             "--window-size=1400,1100", f"--user-data-dir={profile}", "--remote-debugging-port=0",
                             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + BROWSER_TIMEOUT_S
        port_file = profile / "DevToolsActivePort"
        while not port_file.exists() or len(port_file.read_text().split()) < 2:
            assert time.monotonic() < deadline and proc.poll() is None, "chromium did not start"
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as answer:
            target = next(t for t in json.loads(answer.read()) if t["type"] == "page")
        ws = await websocket_connect(target["webSocketDebuggerUrl"], max_message_size=64 * 2**20)
        ids = iter(range(1, 10**6))

        async def call(method: str, **params):
            ident = next(ids)
            ws.write_message(json.dumps({"id": ident, "method": method, "params": params}))
            while True:
                message = json.loads(await ws.read_message())
                if message.get("id") == ident:
                    return message.get("result", {})

        await call("Page.enable")
        await call("Page.navigate", url=url)
        walk = ("(() => { const out = []; const walk = n => { if (n.shadowRoot) walk(n.shadowRoot);"
                " for (const c of n.childNodes) { if (c.nodeType === 3) out.push(c.textContent); else walk(c); } };"
                " walk(document); return out.join(' '); })()")
        text = ""
        while not all(e in text for e in expect):
            assert time.monotonic() < deadline, f"the page never showed {expect}: {text[:2000]}"
            await asyncio.sleep(0.5)
            text = (await call("Runtime.evaluate", expression=walk))["result"].get("value", "")
        await asyncio.sleep(1.5)  # let the canvases draw
        shot = await call("Page.captureScreenshot", format="png")
        import base64

        screenshot.write_bytes(base64.b64decode(shot["data"]))
        ws.close()
        return text
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.skipif(chromium() is None, reason="needs Debian's chromium (apt-get install chromium; .ci/run does)")
def test_a_headless_browser_shows_the_backlog(watched) -> None:
    _connection, base, _out, _plots, _rows, _paths, _catalog = watched
    text = asyncio.run(browse(base + "/astrodask", SCREENSHOT,
                              ["3 of 3 exposures done", "2 solved", "1 failed", "not a readable FITS file"]))
    assert "Astrodask" in text  # the menu
    assert SCREENSHOT.stat().st_size > 10_000


# ---------------------------------------------------------------- terminal progress


def progress_script(n: int) -> str:
    return ("import time\n"
            "from astrodask.cli.progress import BacklogProgress\n"
            f"with BacklogProgress({n}, unit='exposures') as p:\n"
            f"    for k in range({n}):\n"
            "        time.sleep(0.3)\n"
            "        p.advance(failed=k == 1, echo=lambda k=k: print(f'[{k + 1}/" + str(n) + "] exp{k}: line'))\n")


def run_in_pty(args: list[str], returncode: int = 0) -> str:
    """Run ``args`` with a pseudo-terminal as stdout and stderr; what it drew."""
    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": "120", "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(args, stdout=follower, stderr=follower, stdin=subprocess.DEVNULL, env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    os.close(leader)
    assert proc.returncode == returncode, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


def test_progress_bar_in_a_terminal_and_lines_in_a_pipe() -> None:
    args = [sys.executable, "-c", progress_script(4)]
    drawn = run_in_pty(args)
    assert "━" in drawn and "4/4" in drawn and "1 failed" in drawn and "/min" in drawn
    assert "[2/4] exp1: line" in drawn and "[1/4] exp0: line" not in drawn  # only the failure above the bar
    piped = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    assert piped.splitlines() == [f"[{k + 1}/4] exp{k}: line" for k in range(4)]
    assert "━" not in piped and "\x1b[" not in piped


def test_serial_solve_of_several_files_draws_the_bar_in_a_terminal(watched, tmp_path: Path) -> None:
    *_, paths, catalog = watched
    args = [sys.executable, "-m", "astrodask.cli", "solve", *map(str, paths), "--catalog", str(catalog), "--serial",
            "--out", str(tmp_path / "out")]
    drawn = run_in_pty(args, returncode=EXIT_PARTIAL)  # one of three failed
    assert "━" in drawn and "3/3" in drawn and "1 failed" in drawn
    assert "broken.fits: FAILED" in drawn and "mon00.fits.fz: solved" not in drawn  # only the failure above the bar
