"""The container's health check: ``/health`` of the scheduler's or the worker's HTTP server answers ``ok``.

The image's ``HEALTHCHECK`` runs ``python /opt/astrodask/healthcheck.py``. Without an argument it
asks ``http://127.0.0.1:$ASTRODASK_HEALTH_PORT/health`` (8787, the scheduler's dashboard port, when
the variable is unset; a worker's is 8788); with ``none`` as the port (the job runner, which serves
nothing), it checks that astrodask imports. Kubernetes ignores ``HEALTHCHECK`` and uses the probes
of the manifests, which ask the same ``/health``. Standard library only. Exit status 0: healthy.
"""

from __future__ import annotations

import os
import sys
import urllib.request

#: The scheduler's dashboard port (a worker's is 8788).
DEFAULT_PORT = "8787"
#: Seconds to wait for an answer.
TIMEOUT_S = 5.0


def check(url: str | None) -> str | None:
    """None when healthy, else what is wrong.

    Parameters
    ----------
    url
        The ``/health`` URL to ask; None: astrodask must import.
    """
    if url is None:
        try:
            import astrodask
        except ImportError as err:
            return f"astrodask does not import: {err}"
        return None if astrodask.__version__ else "astrodask has no version"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            body = response.read().decode(errors="replace").strip()
    except OSError as err:
        return f"{url}: {err}"
    return None if body == "ok" else f"{url} answered {body[:80]!r}, not 'ok'"


def main(argv: list[str]) -> int:
    """Check the URL given, or the local port of ``ASTRODASK_HEALTH_PORT``; print the problem, if any."""
    port = os.environ.get("ASTRODASK_HEALTH_PORT", DEFAULT_PORT)
    url = argv[0] if argv else (None if port == "none" else f"http://127.0.0.1:{port}/health")
    problem = check(url)
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
