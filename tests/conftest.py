"""Shared test fixtures: the real sky data beside the repository, remote-data opt-in.

Network access is blocked for every test by pytest-socket (``--allow-hosts`` in
pyproject.toml allows loopback only); tests marked ``remote_data`` talk to the live
Gaia archive and run only with ``--remote-data``, which also lifts the socket
restriction for them (and only them).
"""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--remote-data", action="store_true", default=False,
                     help="run tests marked remote_data (they query the live Gaia archive)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--remote-data"):
        # pytest-socket's --allow-hosts (loopback only, from pyproject.toml) would block the
        # archive: its ``enable_socket`` marker lifts the restriction for these tests only
        enable = pytest.mark.enable_socket
        for item in items:
            if "remote_data" in item.keywords:
                item.add_marker(enable)
        return
    skip = pytest.mark.skip(reason="queries the live Gaia archive: run with --remote-data")
    for item in items:
        if "remote_data" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real sky data folder ``../shared/data``; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sky data not found at {SHARED_DATA} (it lives beside the repository, not in it)")
    return SHARED_DATA
