"""astrodask on Kubernetes: a DaskCluster of the dask-kubernetes operator, created or connected to.

``astrodask solve|submit|cache prefetch --cluster kubernetes`` come here (through
:func:`astrodask.run.client.connect`). The cluster is the operator's ``DaskCluster`` named by the
dask config ``kubernetes.name`` (default :data:`DEFAULT_CLUSTER_NAME`, the one the manifests of
``deploy/kubernetes`` create) in ``kubernetes.namespace``: when it exists the client connects to
it and leaves it running; otherwise a cluster is created from :func:`cluster_spec` and deleted
when the command ends.

The spec is built with the operator's own :func:`dask_kubernetes.operator.make_cluster_spec`, with
the commands passed explicitly (:data:`SCHEDULER_COMMAND`, :data:`WORKER_COMMAND`): its defaults
are still the long-removed ``dask-scheduler``/``dask-worker``. Every pod runs the astrodask image
(``deploy/Dockerfile``), whose ``/opt/astrodask/cluster`` holds the preloads and the dask
configuration of ``cluster/``. Before the Kubernetes API is contacted, the spec is checked
against the operator's CRD schema (:func:`validate_custom_resource`), and the credentials are
looked up, so a missing extra, a wrong spec or a missing kubeconfig is one line naming the fix.

Cluster code: with :mod:`astrodask.run.client` and :mod:`astrodask.run.graph`, the only place that knows
about Dask. dask-kubernetes is an optional extra (``pip install 'astrodask[kubernetes]'``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from importlib import resources
from types import ModuleType
from typing import TYPE_CHECKING, Any

from astrodask import __version__
from astrodask.errors import AstrodaskError

if TYPE_CHECKING:
    from astrodask.run.client import Connection

log = logging.getLogger(__name__)

#: Name of the DaskCluster that ``deploy/kubernetes`` creates and ``--cluster kubernetes`` looks for.
DEFAULT_CLUSTER_NAME = "astrodask"
#: Repository of the astrodask image; its tag is the package version (``deploy/README.md``).
IMAGE_REPOSITORY = "astrodask"
#: The scheduler command, as the operator must run it (``dask scheduler``, not ``dask-scheduler``).
SCHEDULER_COMMAND = ("dask", "scheduler")
#: The worker command (``dask worker``, not ``dask-worker``).
WORKER_COMMAND = ("dask", "worker")
#: Where the image holds ``cluster/`` (preloads and dask configuration); its ``DASK_CONFIG``.
CLUSTER_DIR_IN_IMAGE = "/opt/astrodask/cluster"
#: The scheduler preload in the image (logs the astrodask version).
SCHEDULER_PRELOAD = f"{CLUSTER_DIR_IN_IMAGE}/preload_scheduler.py"
#: The worker preload in the image (registers the astrodask worker plugin).
WORKER_PRELOAD = f"{CLUSTER_DIR_IN_IMAGE}/preload_worker.py"
#: Memory of a worker: ``cluster/astrodask.yaml``'s memory fractions are tuned for 2.5 GB workers.
WORKER_MEMORY = "2.5GB"
#: The same, as a Kubernetes quantity (2.5e9 bytes): the container limit equals ``--memory-limit``, so
#: the nanny restarts a worker at 95 % before the kernel's OOM killer strikes.
WORKER_MEMORY_QUANTITY = "2.5G"
#: Threads per worker: one solve at a time, one frame in memory.
WORKER_THREADS = 1
#: CPU request and limit of a worker (the limit leaves room for the event loop beside the solve thread).
WORKER_CPU = ("1", "1500m")
#: Workers of a cluster created by ``--cluster kubernetes`` when ``--workers`` is not given.
DEFAULT_WORKERS = 2
#: Port of the scheduler's dashboard, ``/health`` and ``/metrics``.
DASHBOARD_PORT = 8787
#: Port of a worker's ``/health`` and ``/metrics``.
WORKER_DASHBOARD_PORT = 8788
#: The operator's API group and version.
API_VERSION = "kubernetes.dask.org/v1"
#: Where dask-kubernetes ships its CRDs with their schemas resolved (the operator's Helm chart).
CRD_PACKAGE = "dask_kubernetes.operator.deployment.helm.dask-kubernetes-operator.crds"
#: The CRD file of each custom resource kind.
CRD_FILES = {"DaskCluster": "daskcluster.yaml", "DaskWorkerGroup": "daskworkergroup.yaml",
             "DaskJob": "daskjob.yaml", "DaskAutoscaler": "daskautoscaler.yaml"}
#: What to install when dask-kubernetes is missing.
INSTALL_HINT = "pip install 'astrodask[kubernetes]'"


class KubernetesError(AstrodaskError, RuntimeError):
    """A Kubernetes cluster cannot be used: the extra is missing, no credentials, an invalid spec."""


def default_image() -> str:
    """The astrodask image of this version: ``astrodask:<version>``."""
    return f"{IMAGE_REPOSITORY}:{__version__}"


@dataclass(frozen=True)
class KubeSettings:
    """Which DaskCluster ``--cluster kubernetes`` uses, and how it is made when it does not exist.

    Attributes
    ----------
    name
        Name of the DaskCluster.
    namespace
        Its namespace; None: the kubeconfig's current namespace.
    image
        Image of the scheduler and the workers of a created cluster.
    n_workers
        Workers of a created cluster.
    env
        Environment of every pod of a created cluster (e.g. ``AWS_ENDPOINT_URL`` of the tile cache).
    """

    name: str = DEFAULT_CLUSTER_NAME
    namespace: str | None = None
    image: str = ""
    n_workers: int = DEFAULT_WORKERS
    env: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not self.image:
            object.__setattr__(self, "image", default_image())
        if self.n_workers < 0:
            raise KubernetesError(f"a cluster needs 0 or more workers, not {self.n_workers}")

    @classmethod
    def from_dask_config(cls, *, n_workers: int | None = None) -> KubeSettings:
        """Settings from dask-kubernetes' own dask config keys, where they differ from its defaults.

        ``kubernetes.name``, ``kubernetes.namespace``, ``kubernetes.image`` (set, e.g., by
        ``DASK_KUBERNETES__NAME=...``). dask-kubernetes' generic defaults (a random name, the plain
        ``ghcr.io/dask/dask`` image, which has no astrodask) give way to astrodask's.

        Parameters
        ----------
        n_workers
            Workers of a created cluster (``--workers``); None: :data:`DEFAULT_WORKERS`.
        """
        import dask.config

        require_dask_kubernetes()  # its config defaults are loaded with it
        defaults = _dask_kubernetes_defaults()
        values: dict[str, Any] = {}
        for key in ("name", "namespace", "image"):
            value = dask.config.get(f"kubernetes.{key}", None)
            if value and value != defaults.get(key):
                values[key] = value
        if n_workers is not None:
            values["n_workers"] = n_workers
        return cls(**values)


def require_dask_kubernetes() -> ModuleType:
    """Import ``dask_kubernetes.operator``, or say how to install it.

    Raises
    ------
    KubernetesError
        dask-kubernetes is not installed.
    """
    try:
        import dask_kubernetes.operator as operator
    except ImportError as err:
        raise KubernetesError(f"--cluster kubernetes needs dask-kubernetes, which is not installed ({err}): "
                              f"{INSTALL_HINT}") from err
    return operator


@cache
def _dask_kubernetes_defaults() -> dict[str, Any]:
    """dask-kubernetes' shipped defaults of the ``kubernetes`` config section."""
    import yaml

    text = resources.files("dask_kubernetes").joinpath("kubernetes.yaml").read_text()
    return dict(yaml.safe_load(text)["kubernetes"])


def _env_list(env: Mapping[str, str] | tuple[tuple[str, str], ...]) -> list[dict[str, str]]:
    pairs = env.items() if isinstance(env, Mapping) else env
    return [{"name": key, "value": value} for key, value in pairs]


def cluster_spec(settings: KubeSettings) -> dict[str, Any]:
    """The DaskCluster resource of a cluster that ``--cluster kubernetes`` creates.

    Built by :func:`dask_kubernetes.operator.make_cluster_spec`, then given astrodask's commands
    (``dask scheduler`` and ``dask worker`` with their preloads), one-thread 2.5 GB workers whose
    container limits match ``--memory-limit``, and the image's dask configuration. The result is
    checked against the operator's CRD schema.

    Parameters
    ----------
    settings
        Name, image, workers and environment.

    Returns
    -------
    dict
        A ``kubernetes.dask.org/v1`` DaskCluster.

    Raises
    ------
    KubernetesError
        dask-kubernetes is missing, or the spec does not validate.
    """
    operator = require_dask_kubernetes()
    worker_command = [*WORKER_COMMAND, "--nthreads", str(WORKER_THREADS), "--memory-limit", WORKER_MEMORY,
                      "--preload", WORKER_PRELOAD]
    env = [{"name": "DASK_CONFIG", "value": CLUSTER_DIR_IN_IMAGE}, *_env_list(settings.env)]
    spec = operator.make_cluster_spec(name=settings.name, image=settings.image, n_workers=settings.n_workers,
                                      env=env, worker_command=worker_command)
    scheduler = spec["spec"]["scheduler"]["spec"]["containers"][0]
    args = list(scheduler["args"])
    if args[0] != "dask-scheduler":  # pragma: no cover - a dask-kubernetes that changed its template
        raise KubernetesError(f"dask-kubernetes' scheduler template starts with {args[0]!r}, not 'dask-scheduler': "
                              "astrodask.run.kube.cluster_spec needs updating for this version")
    scheduler["args"] = [*SCHEDULER_COMMAND, *args[1:], "--preload", SCHEDULER_PRELOAD]
    scheduler["resources"] = {"requests": {"cpu": "1", "memory": "2G"}, "limits": {"cpu": "2", "memory": "2G"}}
    worker = spec["spec"]["worker"]["spec"]["containers"][0]
    worker["resources"] = {"requests": {"cpu": WORKER_CPU[0], "memory": WORKER_MEMORY_QUANTITY},
                           "limits": {"cpu": WORKER_CPU[1], "memory": WORKER_MEMORY_QUANTITY}}
    validate_custom_resource(spec)
    return spec


@cache
def crd_schema(kind: str) -> dict[str, Any]:
    """The OpenAPI v3 schema of an operator resource, from the CRD shipped inside dask-kubernetes.

    Parameters
    ----------
    kind
        ``DaskCluster``, ``DaskWorkerGroup``, ``DaskJob`` or ``DaskAutoscaler``.
    """
    import yaml

    require_dask_kubernetes()
    if kind not in CRD_FILES:
        raise KubernetesError(f"{kind!r} is not a resource of the dask-kubernetes operator "
                              f"(one of {', '.join(CRD_FILES)})")
    text = resources.files(CRD_PACKAGE).joinpath(CRD_FILES[kind]).read_text()
    crd = yaml.safe_load(text)
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == API_VERSION.split("/")[1]]
    return _strict(version["schema"]["openAPIV3Schema"])


def _strict(schema: Any) -> Any:
    """The schema with unknown fields refused, as the API server's strict field validation does.

    An object schema that lists its properties, allows no ``additionalProperties`` and does not
    preserve unknown fields gets ``additionalProperties: false``; the rest is left as it is.
    """
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _strict(value) for key, value in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def validate_custom_resource(resource: Mapping[str, Any]) -> None:
    """Check an operator resource against its CRD schema (unknown fields are errors).

    Parameters
    ----------
    resource
        A ``kubernetes.dask.org/v1`` resource (DaskCluster, DaskJob, DaskAutoscaler...).

    Raises
    ------
    KubernetesError
        The resource is not of the operator's API, or breaks its schema; the message gives the
        path of the offending field.
    """
    import jsonschema

    if resource.get("apiVersion") != API_VERSION:
        raise KubernetesError(f"apiVersion {resource.get('apiVersion')!r} is not the operator's {API_VERSION}")
    name = resource.get("metadata", {}).get("name", "?")
    if "name" not in resource.get("metadata", {}):
        raise KubernetesError(f"{resource.get('kind')} has no metadata.name")
    body = {key: value for key, value in resource.items() if key not in ("apiVersion", "kind", "metadata")}
    validator = jsonschema.Draft4Validator(crd_schema(str(resource.get("kind"))))
    errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors[:5]]
        raise KubernetesError(f"{resource.get('kind')} {name} does not match the operator's schema: "
                              + "; ".join(lines))


def check_credentials() -> None:
    """Find Kubernetes credentials (a kubeconfig, or a pod's service account) and reach the API server.

    kr8s reads the credentials, then asks the server its version: the first contact with the
    Kubernetes API.

    Raises
    ------
    KubernetesError
        No credentials found, or the API server of the current context does not answer.
    """
    require_dask_kubernetes()
    import httpx
    import kr8s

    try:
        kr8s.api()
    except ValueError as err:  # kr8s: "Unable to find valid credentials"
        raise KubernetesError(f"--cluster kubernetes found no Kubernetes credentials ({err}): point KUBECONFIG at "
                              "a kubeconfig (or create ~/.kube/config, e.g. with your provider's "
                              "'get-credentials'), or run inside the cluster with a service account") from err
    except (OSError, httpx.HTTPError, kr8s.ServerError) as err:
        raise KubernetesError(f"--cluster kubernetes cannot reach the Kubernetes API server of the current context "
                              f"({type(err).__name__}: {err}): check it with 'kubectl config view --minify' and "
                              "'kubectl version'") from err


def make_kube_cluster(settings: KubeSettings) -> Any:
    """Connect to the DaskCluster ``settings.name``, or create it (deleted on close) from :func:`cluster_spec`.

    This is where the Kubernetes API is first contacted.

    Raises
    ------
    KubernetesError
        dask-kubernetes is missing, no credentials, or the operator does not answer.
    """
    operator = require_dask_kubernetes()
    import httpx
    import kr8s

    spec = cluster_spec(settings)
    check_credentials()
    try:
        return operator.KubeCluster(name=settings.name, namespace=settings.namespace, custom_cluster_spec=spec,
                                    create_mode=operator.CreateMode.CREATE_OR_CONNECT, quiet=True)
    except (ValueError, TimeoutError, OSError, httpx.HTTPError, kr8s.ServerError) as err:
        raise KubernetesError(f"DaskCluster {settings.name} (namespace {settings.namespace or 'current'}): "
                              f"{type(err).__name__}: {err}. Is the dask-kubernetes operator installed "
                              "(deploy/README.md, step 1)? 'kubectl get daskclusters' shows what it sees") from err


@contextmanager
def connect_kubernetes(settings: KubeSettings) -> Iterator[Connection]:
    """A client of the DaskCluster ``settings.name``: connected to, or created and deleted on exit.

    The connection's ``cluster`` is the KubeCluster when this call created it (then ``--detach``
    is refused: the cluster ends with the command), None when it connected to a running one.
    """
    from distributed import Client

    from astrodask.run.plugins import setup_client
    from astrodask.run.client import Connection

    kube = make_kube_cluster(settings)
    created = bool(kube.shutdown_on_close)
    client = Client(kube)
    try:
        setup_client(client)
        log.info("DaskCluster %s %s; dashboard %s", settings.name, "created" if created else "connected",
                 kube.dashboard_link)
        yield Connection(client, kube if created else None, client.scheduler.address, kube.dashboard_link)
    finally:
        client.close()
        kube.close()

