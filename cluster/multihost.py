"""Several hosts on one machine: the deployment's topology built from Linux network namespaces.

Each "host" is a network namespace with its own address on a private bridge, as the pods of
``deploy/kubernetes`` are on a cluster network: an S3-compatible store (moto's server) on one, the
Dask scheduler on another, and one worker per further host. The machine itself is the client
(the job runner): it reaches every host through the bridge, and the hosts reach nothing else
(no default route). The file system is shared, as the data volume is on Kubernetes.

Run as root (``ip netns``, ``ip link``)::

    sudo python cluster/multihost.py --workers 2 --log-dir /tmp/multihost
    # then, in another shell, with the printed environment exported:
    astrodask cache import catalog.ecsv --cache s3://astrodask/gaia-tiles
    astrodask submit 'night1/*.fits.fz' --cache s3://astrodask/gaia-tiles --out solved/ --scheduler tcp://...
    ip link set <veth of a worker> down      # cut a worker host's link: its tasks are recomputed elsewhere

Ctrl-C stops the processes and removes the namespaces and the bridge. From Python:
:func:`build` returns a :class:`Topology` (a context manager) and :meth:`Topology.start` the
processes; ``tests/test_multihost.py`` uses both.

This is not a security boundary: distributed's connections are not authenticated, and the bridge
is reachable from the machine's root namespace only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

log = logging.getLogger("astrodask.cluster.multihost")

#: This folder: the dask configuration and the preloads.
CLUSTER_DIR = Path(__file__).resolve().parent
#: The /24 network of the bridge (private addresses, on this machine only).
DEFAULT_SUBNET = "10.77.16"
#: Last byte of each host's address; workers take ``WORKER_FIRST``, ``WORKER_FIRST + 1``...
BRIDGE_HOST, S3_HOST, SCHEDULER_HOST, WORKER_FIRST = 1, 9, 10, 11
#: Ports, as in deploy/kubernetes: the scheduler, its dashboard and /metrics, a worker's.
SCHEDULER_PORT, DASHBOARD_PORT, WORKER_DASHBOARD_PORT = 8786, 8787, 8788
#: Port of the S3-compatible store (moto's server).
S3_PORT = 5000
#: Dummy credentials of the store (moto accepts any), given to the workers' environment.
S3_ENV = {"AWS_ACCESS_KEY_ID": "multihost", "AWS_SECRET_ACCESS_KEY": "multihost", "AWS_DEFAULT_REGION": "us-east-1"}
#: How long the scheduler waits for a silent worker before it gives the worker's tasks to others. distributed's
#: default (5 minutes) suits a cluster whose workers are paused by long GIL-holding tasks; a cut link is found
#: faster with a shorter one (a solve never holds the GIL that long on the small test frames).
DEFAULT_WORKER_TTL = "15s"
#: Time allowed for the store, the scheduler and the workers to answer.
START_TIMEOUT_S = 60.0
#: Poll interval while waiting, s.
POLL_S = 0.25
#: Memory per worker: cluster/astrodask.yaml's fractions are tuned for it.
WORKER_MEMORY = "2.5GB"


class MultihostError(RuntimeError):
    """The namespaces, links or processes of the topology cannot be made."""


def _ip(*args: str, netns: str | None = None) -> None:
    command = ["ip", *(["netns", "exec", netns, "ip"] if netns else []), *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise MultihostError(f"{' '.join(command)}: {done.stderr.strip() or done.returncode}")


def unavailable_reason() -> str | None:
    """Why the topology cannot be built here (not root, no ``ip``, namespaces refused), or None."""
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    name = f"adprobe{secrets.token_hex(3)}"
    try:
        _ip("netns", "add", name)
    except MultihostError as err:
        return f"cannot create a network namespace: {err}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    return None


@dataclass
class Host:
    """One network namespace on the bridge."""

    role: str
    netns: str
    veth: str
    address: str


@dataclass
class Topology:
    """The bridge, the hosts, and the processes running on them."""

    tag: str
    subnet: str
    bridge: str
    hosts: dict[str, Host] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    log_dir: Path | None = None

    @property
    def scheduler_address(self) -> str:
        """``tcp://<scheduler host>:8786``."""
        return f"tcp://{self.hosts['scheduler'].address}:{SCHEDULER_PORT}"

    @property
    def dashboard_url(self) -> str:
        """The scheduler's dashboard (``/status``; ``/metrics`` beside it)."""
        return f"http://{self.hosts['scheduler'].address}:{DASHBOARD_PORT}"

    @property
    def s3_endpoint(self) -> str:
        """``AWS_ENDPOINT_URL`` of the store."""
        return f"http://{self.hosts['s3'].address}:{S3_PORT}"

    @property
    def workers(self) -> list[Host]:
        """The worker hosts, in order."""
        return [host for role, host in self.hosts.items() if role.startswith("worker")]

    def addresses(self) -> list[str]:
        """Every address on the bridge, the machine's own first."""
        return [f"{self.subnet}.{BRIDGE_HOST}", *(host.address for host in self.hosts.values())]

    def client_env(self) -> dict[str, str]:
        """What a client on the machine needs to reach the store: endpoint and credentials."""
        return {"AWS_ENDPOINT_URL": self.s3_endpoint, **S3_ENV}

    def cut(self, role: str) -> None:
        """Take a host's link down (its side of the bridge): the host is cut off, its processes live on."""
        _ip("link", "set", self.hosts[role].veth, "down")

    def restore(self, role: str) -> None:
        """Bring a host's link back up."""
        _ip("link", "set", self.hosts[role].veth, "up")

    def run(self, role: str, name: str, command: Sequence[str], *, env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Start ``command`` on a host (``ip netns exec``), in its own session, output to the log folder."""
        output = open(self.log_dir / f"{name}.log", "ab") if self.log_dir is not None else subprocess.DEVNULL
        try:
            proc = subprocess.Popen(["ip", "netns", "exec", self.hosts[role].netns, *command], env=env,
                                    stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        finally:
            if output is not subprocess.DEVNULL:
                output.close()
        self.processes[name] = proc
        return proc

    def start(self, *, worker_ttl: str = DEFAULT_WORKER_TTL, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start the store, the scheduler and one worker per worker host; return when all answer.

        Raises
        ------
        MultihostError
            A process exited, or did not answer within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        python = sys.executable
        base = {key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "DASK_"))}
        self.run("s3", "s3", [python, "-m", "moto.server", "-H", self.hosts["s3"].address, "-p", str(S3_PORT)],
                 env=base)
        dask_env = {**base, "DASK_CONFIG": str(CLUSTER_DIR), "DASK_DISTRIBUTED__SCHEDULER__WORKER_TTL": worker_ttl}
        scheduler = self.hosts["scheduler"].address
        self.run("scheduler", "scheduler",
                 [python, "-m", "dask", "scheduler", "--host", scheduler, "--port", str(SCHEDULER_PORT),
                  "--dashboard-address", f"{scheduler}:{DASHBOARD_PORT}",
                  "--preload", str(CLUSTER_DIR / "preload_scheduler.py")], env=dask_env)
        self._wait_http(f"{self.s3_endpoint}/", deadline)
        self._wait_http(f"{self.dashboard_url}/health", deadline)
        for host in self.workers:
            self.run(host.role, host.role,
                     [python, "-m", "dask", "worker", self.scheduler_address, "--host", host.address,
                      "--name", host.role, "--nthreads", "1", "--memory-limit", WORKER_MEMORY,
                      "--dashboard-address", f"{host.address}:{WORKER_DASHBOARD_PORT}",
                      "--preload", str(CLUSTER_DIR / "preload_worker.py")],
                     env={**dask_env, **self.client_env()})
        while self._workers_joined() < len(self.workers):
            self._check(deadline, "the workers to join")
        log.info("multihost: store %s, scheduler %s, %d workers", self.s3_endpoint, self.scheduler_address,
                 len(self.workers))

    def _workers_joined(self) -> int:
        try:
            with urllib.request.urlopen(f"{self.dashboard_url}/json/counts.json", timeout=2) as response:
                return int(json.load(response)["workers"])
        except OSError:
            return 0

    def _wait_http(self, url: str, deadline: float) -> None:
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2):
                    return
            except OSError:
                self._check(deadline, url)

    def _check(self, deadline: float, what: str) -> None:
        exited = {name: proc.returncode for name, proc in self.processes.items() if proc.poll() is not None}
        if exited:
            raise MultihostError(f"exited during start-up: {exited}"
                                 + (f" (logs in {self.log_dir})" if self.log_dir else ""))
        if time.monotonic() > deadline:
            raise MultihostError(f"timed out waiting for {what}")
        time.sleep(POLL_S)

    def stop(self) -> None:
        """Stop the processes (SIGTERM, then SIGKILL), remove the namespaces and the bridge."""
        for proc in self.processes.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.processes.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for host in self.hosts.values():
            subprocess.run(["ip", "netns", "del", host.netns], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def build(*, n_workers: int = 2, subnet: str = DEFAULT_SUBNET, log_dir: str | os.PathLike[str] | None = None
          ) -> Topology:
    """Create the bridge and the hosts: ``s3``, ``scheduler``, ``worker-0``...; nothing runs yet.

    Parameters
    ----------
    n_workers
        Worker hosts.
    subnet
        The bridge's /24 (first three bytes); it must not be in use on this machine.
    log_dir
        Folder of each process's log (default: discarded).

    Raises
    ------
    MultihostError
        The subnet is in use, or a namespace or link cannot be made (what was made is removed).
    """
    tag = secrets.token_hex(2)
    in_use = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    if f" {subnet}." in in_use:
        raise MultihostError(f"subnet {subnet}.0/24 is already in use on this machine: pick another")
    topology = Topology(tag=tag, subnet=subnet, bridge=f"adbr{tag}",
                        log_dir=Path(log_dir).resolve() if log_dir is not None else None)
    if topology.log_dir is not None:
        topology.log_dir.mkdir(parents=True, exist_ok=True)
    roles = [("s3", S3_HOST), ("scheduler", SCHEDULER_HOST),
             *((f"worker-{k}", WORKER_FIRST + k) for k in range(n_workers))]
    try:
        _ip("link", "add", topology.bridge, "type", "bridge")
        _ip("addr", "add", f"{subnet}.{BRIDGE_HOST}/24", "dev", topology.bridge)
        _ip("link", "set", topology.bridge, "up")
        for index, (role, last) in enumerate(roles):
            host = Host(role=role, netns=f"ad{tag}-{role}", veth=f"ad{tag}v{index}", address=f"{subnet}.{last}")
            _ip("netns", "add", host.netns)
            topology.hosts[role] = host
            _ip("link", "add", host.veth, "type", "veth", "peer", "name", f"{host.veth}p", "netns", host.netns)
            _ip("link", "set", host.veth, "master", topology.bridge)
            _ip("link", "set", host.veth, "up")
            _ip("link", "set", f"{host.veth}p", "name", "eth0", netns=host.netns)
            _ip("addr", "add", f"{host.address}/24", "dev", "eth0", netns=host.netns)
            _ip("link", "set", "eth0", "up", netns=host.netns)
            _ip("link", "set", "lo", "up", netns=host.netns)
    except BaseException:
        topology.stop()
        raise
    return topology


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="worker hosts (default 2)")
    parser.add_argument("--subnet", default=DEFAULT_SUBNET, help=f"the bridge's /24 (default {DEFAULT_SUBNET})")
    parser.add_argument("--worker-ttl", default=DEFAULT_WORKER_TTL,
                        help=f"silence after which a worker is dropped (default {DEFAULT_WORKER_TTL})")
    parser.add_argument("--log-dir", default=None, help="folder of the processes' logs")
    return parser


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Build the topology, start it, print how to use it, and wait for Ctrl-C or SIGTERM."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    reason = unavailable_reason()
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with build(n_workers=args.workers, subnet=args.subnet, log_dir=args.log_dir) as topology:
            topology.start(worker_ttl=args.worker_ttl)
            print(f"scheduler  {topology.scheduler_address}\ndashboard  {topology.dashboard_url}/status "
                  f"(metrics: {topology.dashboard_url}/metrics)\nstore      {topology.s3_endpoint}")
            print("for clients on this machine:")
            for key, value in topology.client_env().items():
                print(f"  export {key}={value}")
            for host in topology.workers:
                print(f"cut {host.role} ({host.address}): ip link set {host.veth} down")
            print("Ctrl-C stops everything")
            while all(proc.poll() is None for proc in topology.processes.values()):
                time.sleep(1)
            print(f"a process exited: {[n for n, p in topology.processes.items() if p.poll() is not None]}",
                  file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        return 0
    except MultihostError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
