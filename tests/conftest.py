"""Shared test fixtures: the real sky data beside the repository, remote-data opt-in.

Network access is blocked for every test by pytest-socket (``--allow-hosts`` in
pyproject.toml allows loopback only); tests marked ``remote_data`` talk to the live
Gaia archive and run only with ``--remote-data``, which also lifts the socket
restriction for them (and only them).

S3 tests run against moto's S3 server on loopback (:func:`s3_server`), reached by
s3fs/botocore through the environment only (:func:`s3_bucket`), so that worker
processes spawned by a test find it too. No test writes into the user's cache
folder: ``XDG_CACHE_HOME`` points to a temporary folder for the whole session.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

#: Dummy credentials and region of the loopback S3 server (moto accepts any credentials).
S3_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
#: Variables that could send botocore elsewhere than the loopback server or sign with other
#: credentials (a user's profile, session token, per-service endpoint): removed during S3
#: tests, as are ``FSSPEC_S3_*`` (fsspec's per-protocol defaults).
S3_FOREIGN_ENV = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_REGION",
    "AWS_ENDPOINT_URL_S3",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
)


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


@pytest.fixture()
def dss_header(shared_data: Path):
    """The real DSS plate header ``dss_plate_header/horsehead_dss.hdr`` (a fresh copy per test).

    It carries both the DSS plate solution and a TAN WCS fitted to the same plate.
    """
    from astropy.io import fits

    path = shared_data / "dss_plate_header" / "horsehead_dss.hdr"
    if not path.is_file():
        pytest.skip(f"real DSS plate header not found at {path} (it lives beside the repository, not in it)")
    return fits.Header.fromtextfile(path)


@pytest.fixture(scope="session", autouse=True)
def private_cache_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``XDG_CACHE_HOME`` set to a temporary folder for the whole session.

    :func:`astrodask.reference.store.default_cache_dir` reads it, so no test ever writes into
    the user's ``~/.cache``; processes spawned by tests inherit it.
    """
    home = tmp_path_factory.mktemp("xdg-cache-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(home))
        yield home


@dataclass(frozen=True)
class S3Server:
    """A running S3-compatible server on loopback.

    Attributes
    ----------
    host, port
        Where it listens.
    endpoint_url
        ``http://<host>:<port>``: what ``AWS_ENDPOINT_URL`` is set to by :func:`s3_bucket`.
    """

    host: str
    port: int

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's threaded S3 server on 127.0.0.1, on a port the OS picks; stopped after the session.

    It holds the buckets in memory and accepts any credentials. Its per-request log
    (werkzeug, INFO) is silenced for the session.
    """
    from moto.server import ThreadedMotoServer

    request_log = logging.getLogger("werkzeug")
    level = request_log.level
    request_log.setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield S3Server(host=host, port=int(port))
    finally:
        server.stop()
        request_log.setLevel(level)


@pytest.fixture()
def s3_bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[str]:
    """A fresh, uniquely named bucket on :func:`s3_server`, as ``s3://<bucket>``.

    The environment is set so that botocore (hence s3fs and zarr's ``FsspecStore``)
    reaches the loopback server with no ``storage_options``, in this process and in
    every process started during the test (spawned workers, Dask LocalCluster
    workers): the dummy credentials of :data:`S3_TEST_ENV` and ``AWS_ENDPOINT_URL``
    (honoured by botocore >= 1.31 for every client whose ``endpoint_url`` is not
    given). The user's AWS and fsspec configuration files are masked and the
    variables of :data:`S3_FOREIGN_ENV` removed. s3fs's instance cache is cleared
    (its clients closed: :func:`close_s3fs_instances`) before and after, so no test
    reuses another's clients. The bucket is emptied and removed afterwards.
    """
    import fsspec.config
    import s3fs

    for name in S3_FOREIGN_ENV:
        monkeypatch.delenv(name, raising=False)
    for name in [n for n in os.environ if n.startswith("FSSPEC_S3")]:
        monkeypatch.delenv(name)
    empty = tmp_path_factory.mktemp("no-user-config")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty / "aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("FSSPEC_CONFIG_DIR", str(empty))
    monkeypatch.delitem(fsspec.config.conf, "s3", raising=False)
    for name, value in S3_TEST_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)

    close_s3fs_instances()
    bucket = f"astrodask-test-{uuid.uuid4().hex[:20]}"
    fs = s3fs.S3FileSystem()
    fs.connect()
    if fs.s3.meta.endpoint_url != s3_server.endpoint_url:  # pragma: no cover - a botocore without the variable
        raise RuntimeError(f"s3fs ignores AWS_ENDPOINT_URL (its client talks to {fs.s3.meta.endpoint_url}); "
                           "botocore >= 1.31 is needed")
    fs.mkdir(bucket)
    try:
        yield f"s3://{bucket}"
    finally:
        close_s3fs_instances()
        fs = s3fs.S3FileSystem()
        fs.rm(bucket, recursive=True)  # the objects, then the bucket: the server's memory stays small
        close_s3fs_instances()


def close_s3fs_instances() -> None:
    """Close the S3 client of every cached s3fs instance, then clear s3fs's instance cache.

    zarr's ``FsspecStore`` makes its ``S3FileSystem`` with ``asynchronous=True``, and
    s3fs closes such an instance's aiohttp session only when told to (it registers
    no finaliser for it, unlike for synchronous instances): merely clearing the
    instance cache would leak the session, and the "Unclosed client session"
    ResourceWarning at garbage collection would fail whichever test runs then. The
    clients are closed on zarr's event loop, where zarr created them.
    """
    import s3fs
    from zarr.core.sync import sync

    async def close(fs: s3fs.S3FileSystem) -> None:
        client = await fs.set_session()  # the instance's client (s3fs's documented async pattern)
        await client.close()

    for fs in list(s3fs.S3FileSystem._cache.values()):
        if fs.asynchronous:
            sync(close(fs))
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="session")
def galsim_scene(tmp_path_factory: pytest.TempPathFactory):
    """A factory ``galsim_scene(name)`` of the small (test-size) GalSim cases' files.

    Each case of :data:`astrodask.simulate.CASES` is rendered once per session, seeded
    by its own seed, into a session folder, and its
    :class:`astrodask.simulate.SceneFiles` returned (image, catalog, truth_wcs,
    truth_table). Skips when GalSim is not installed.
    """
    pytest.importorskip("galsim")
    import numpy as np

    from astrodask.simulate import case_scene, render_scene

    folder = tmp_path_factory.mktemp("galsim-scenes")
    rendered: dict[str, object] = {}

    def get(name: str):
        if name not in rendered:
            scene = case_scene(name, "test")
            rendered[name] = render_scene(scene, folder / name, rng=np.random.default_rng(scene.seed))
        return rendered[name]

    return get
