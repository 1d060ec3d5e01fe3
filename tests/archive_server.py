"""A loopback Gaia archive for the tests: TAP's asynchronous (UWS) protocol replaying recordings.

:class:`RecordedTapServer` speaks enough of TAP/UWS for astroquery's real ``TapPlus``
client. It serves recorded documents (``tests/data/gaia_archive``, synthetic stars in
the archive's format, see its README): the recorded cone ``result.vot`` for any query,
or, once :attr:`RecordedTapServer.recordings` is given, the recorded result of each
exact ADQL query (a query without a recording ends in phase ERROR, naming it, as a
replay must never invent an answer). It also records what the clients did: every
request, every query, and the most jobs that were executing at once.
"""

from __future__ import annotations

import gzip
import json
import re
import string
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from astrodask.config import GaiaConfig

RECORDING = Path(__file__).parent / "data" / "gaia_archive"
TAP_PATH = "/tap-server/tap"


def load_recordings(folder: Path) -> dict[str, str]:
    """Recorded results by ADQL query, from ``index.json`` ({file: query}) and gzipped VOTables."""
    index = json.loads((folder / "index.json").read_text(encoding="utf-8"))
    return {query: gzip.decompress((folder / name).read_bytes()).decode("utf-8") for name, query in index.items()}


# ==========================================================================
# The recorded archive: a loopback TAP (UWS) server
# ==========================================================================


class _QuietServer(ThreadingHTTPServer):
    """The HTTP server, quiet when a client hangs up mid-answer (a client that timed out, as the
    stalled-archive tests make them): socketserver would print that traceback to the stderr of
    whatever test runs at the time."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


class RecordedTapServer:
    """The Gaia archive's asynchronous TAP protocol, on 127.0.0.1, with recorded documents.

    Endpoints (under ``/tap-server/tap``), as astroquery's ``TapPlus`` uses them:
    ``POST /async`` (create and run a job: 303 to the job), ``GET /async/<id>``
    (UWS job document), ``GET|POST /async/<id>/phase``, ``GET
    /async/<id>/results/result`` (the VOTable, gzip-compressed), ``GET
    /async/<id>/error``. It records every request and every ADQL query.

    Attributes set by a test before the query: ``fail_on`` ("post", "phase" or
    "result"), ``fail_count`` (how many of those requests fail; -1: all),
    ``fail_status``, ``job_error`` (a job error message: the job ends in ERROR),
    ``executing_polls`` (phase requests answered EXECUTING before the end),
    ``serve_rows`` (silently serve only this many rows), ``stall_s`` (every request waits this
    long before it is answered: an archive that accepts connections and does not answer in time).
    """

    def __init__(self) -> None:
        self.result_text = (RECORDING / "result.vot").read_text(encoding="utf-8")
        self.job_template = string.Template((RECORDING / "uws_job.xml").read_text(encoding="utf-8"))
        self.error_template = string.Template((RECORDING / "error.vot").read_text(encoding="utf-8"))
        self.fail_on: str | None = None
        self.fail_count = 0
        self.fail_status = 503
        self.job_error: str | None = None
        self.executing_polls = 0
        self.serve_rows: int | None = None
        self.stall_s = 0.0
        #: Recorded results by exact ADQL query (empty: ``result.vot`` answers any query).
        self.recordings: dict[str, str] = {}
        #: Most jobs in phase EXECUTING at the same time.
        self.max_executing = 0
        self.requests: list[tuple[str, str]] = []
        self.posts: list[dict[str, str]] = []
        self.jobs: dict[str, dict] = {}
        self._failed = 0
        self._lock = threading.Lock()
        self._httpd = _QuietServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}{TAP_PATH}"

    @property
    def queries(self) -> list[str]:
        return [post["QUERY"] for post in self.posts if "QUERY" in post]

    def start(self) -> RecordedTapServer:
        self._thread.start()
        return self

    def __enter__(self) -> RecordedTapServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def config(self, **overrides) -> GaiaConfig:
        """A GaiaConfig pointing at this server, without waits between retries."""
        return GaiaConfig(**{"tap_url": self.base, "retry_backoff_s": 0.0, **overrides})

    # -- the protocol ------------------------------------------------------

    def _should_fail(self, kind: str) -> bool:
        with self._lock:
            if self.fail_on != kind:
                return False
            if self.fail_count < 0 or self._failed < self.fail_count:
                self._failed += 1
                return True
            return False

    def _executing_now(self) -> None:
        with self._lock:
            now = sum(job["phase"] == "EXECUTING" for job in self.jobs.values())
            self.max_executing = max(self.max_executing, now)

    def _result_body(self, job: dict) -> str:
        text = self.recordings.get(job["params"]["QUERY"], self.result_text)
        head, _, rest = text.partition("<TABLEDATA>\n")
        rows_text, _, tail = rest.partition("</TABLEDATA>")
        rows = re.findall(r"  <TR>.*?</TR>\n?", rows_text, flags=re.S)
        overflow = False
        maxrec = job["params"].get("MAXREC")
        if maxrec is not None and int(maxrec) < len(rows):
            rows, overflow = rows[: int(maxrec)], True
        top = re.match(r"\s*SELECT\s+TOP\s+(\d+)\s", job["params"]["QUERY"], flags=re.I)
        if top:  # the archive honours ADQL's TOP silently
            rows = rows[: int(top.group(1))]
        if self.serve_rows is not None:
            rows = rows[: self.serve_rows]
        body = head + "<TABLEDATA>\n" + "".join(rows) + "</TABLEDATA>" + tail
        if overflow:  # TAP 1.1: an INFO after the TABLE flags the truncation
            body = body.replace("</TABLE>\n", '</TABLE>\n<INFO name="QUERY_STATUS" value="OVERFLOW"/>\n', 1)
        return body

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass  # keep the test output clean

            def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _fail(self) -> None:
                message = f"<html><body><h1>HTTP Status {server.fail_status}</h1></body></html>"
                self._send(server.fail_status, message.encode(), {"Content-Type": "text/html"})

            def _job(self, path: str) -> tuple[dict | None, str]:
                parts = path[len(TAP_PATH) + len("/async/"):].split("/", 1)
                return server.jobs.get(parts[0]), (parts[1] if len(parts) > 1 else "")

            def do_POST(self) -> None:
                path = urlsplit(self.path).path
                server.requests.append(("POST", path))
                if server.stall_s:
                    time.sleep(server.stall_s)
                length = int(self.headers.get("Content-Length", 0))
                params = {k: v[-1] for k, v in parse_qs(self.rfile.read(length).decode("latin-1")).items()}
                if path == f"{TAP_PATH}/async":
                    server.posts.append(params)
                    if server._should_fail("post"):
                        return self._fail()
                    if params.get("REQUEST") != "doQuery" or params.get("LANG") != "ADQL" or "QUERY" not in params:
                        return self._send(400, b"Bad request: REQUEST=doQuery, LANG=ADQL, QUERY needed")
                    with server._lock:
                        jobid = f"{1732406400000 + len(server.jobs)}O"
                        phase = "EXECUTING" if params.get("PHASE", "").upper() == "RUN" else "PENDING"
                        error = None
                        if server.recordings and params["QUERY"] not in server.recordings:
                            error = "no recording of this query: " + " ".join(params["QUERY"].split())[:300]
                        server.jobs[jobid] = {"params": params, "phase": phase, "polls": 0, "error": error}
                    server._executing_now()
                    return self._send(303, headers={"Location": f"{server.base}/async/{jobid}"})
                job, sub = self._job(path) if path.startswith(f"{TAP_PATH}/async/") else (None, "")
                if job is not None and sub == "phase":
                    if params.get("PHASE", "").upper() == "RUN":
                        job["phase"] = "EXECUTING"
                        server._executing_now()
                    elif params.get("PHASE", "").upper() == "ABORT":
                        job["phase"] = "ABORTED"
                    return self._send(303, headers={"Location": f"{server.base}/async/{path.rsplit('/', 2)[-2]}"})
                return self._send(404, b"not found")

            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                server.requests.append(("GET", path))
                if not path.startswith(f"{TAP_PATH}/async/"):
                    return self._send(404, b"not found")
                job, sub = self._job(path)
                if job is None:
                    return self._send(404, b"no such job")
                jobid = path[len(TAP_PATH) + len("/async/"):].split("/", 1)[0]
                if sub == "phase":
                    if server._should_fail("phase"):
                        return self._fail()
                    if job["phase"] == "EXECUTING":
                        job["polls"] += 1
                        if job["polls"] > server.executing_polls:
                            job["phase"] = "ERROR" if (server.job_error or job["error"]) else "COMPLETED"
                    return self._send(200, job["phase"].encode(), {"Content-Type": "text/plain"})
                if sub == "":
                    summary = (f"<uws:errorSummary type=\"fatal\" hasDetail=\"true\"><uws:message>"
                               f"<![CDATA[{job['error'] or server.job_error}]]></uws:message></uws:errorSummary>"
                               if job["phase"] == "ERROR" else '<uws:errorSummary xsi:nil="true"/>')
                    body = server.job_template.substitute(
                        jobid=jobid, phase=job["phase"], query=job["params"]["QUERY"],
                        maxrec=job["params"].get("MAXREC", ""), base=server.base, error_summary=summary)
                    return self._send(200, body.encode(), {"Content-Type": "text/xml;charset=UTF-8"})
                if sub == "results/result":
                    if server._should_fail("result"):
                        return self._fail()
                    if job["phase"] != "COMPLETED":
                        return self._send(404, b"no result: the job is " + job["phase"].encode())
                    body = server._result_body(job).encode("utf-8")
                    headers = {"Content-Type": "application/x-votable+xml",
                               "Content-Disposition": f'attachment;filename="{jobid}-result.vot.gz"'}
                    if job["params"].get("FORMAT", "votable") == "votable":
                        body = gzip.compress(body, mtime=0)
                        headers["Content-Encoding"] = "gzip"
                    return self._send(200, body, headers)
                if sub == "error":
                    body = server.error_template.substitute(message=job["error"] or server.job_error or "")
                    return self._send(200, body.encode(), {"Content-Type": "application/x-votable+xml"})
                return self._send(404, b"not found")

        return Handler


