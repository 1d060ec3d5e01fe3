"""deploy/: the image recipe, the Kubernetes manifests rendered and validated, and ``--cluster kubernetes``.

Without a Kubernetes cluster: each overlay is rendered by ``kubectl kustomize`` (skipped, with the
reason, where kubectl is missing); the operator's resources are validated against the CRD schemas
shipped inside dask-kubernetes, the built-in kinds against the Kubernetes schemas of
kubernetes-validate, both refusing unknown fields. The Python side is run up to the first contact
with a Kubernetes API (a loopback port with nothing listening).
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from astrodask import __version__
from astrodask.run import kube as K
from astrodask.cli import main

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KUSTOMIZE = DEPLOY / "kubernetes"
OVERLAYS = ("dev", "prod")
#: Kubernetes release whose schemas the built-in kinds are validated against.
KUBERNETES_VERSION = "1.30"
#: Keys of an env entry or a manifest field whose literal value would be a credential.
SECRET_NAME = re.compile(r"(secret|password|token|access[_-]?key|credential)", re.IGNORECASE)


def _docs(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    """An overlay, rendered by ``kubectl kustomize``."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (Debian: apt-get install kubernetes-client; .ci/run does)")
    done = subprocess.run([kubectl, "kustomize", str(KUSTOMIZE / "overlays" / request.param)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return request.param, _docs(done.stdout)


def _by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every container of a resource, wherever its pod templates sit."""
    found: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("containers", "initContainers") and isinstance(value, list):
                    found.extend(value)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(doc)
    return found


# -- the manifests ----------------------------------------------------------------------------------


def test_every_resource_validates_against_its_schema(rendered) -> None:
    import kubernetes_validate

    overlay, docs = rendered
    kinds = {doc["kind"] for doc in docs}
    assert {"DaskCluster", "DaskAutoscaler", "DaskJob", "ConfigMap", "PersistentVolumeClaim"} <= kinds
    for doc in docs:
        assert doc["metadata"]["namespace"] == ("astrodask-dev" if overlay == "dev" else "astrodask")
        if doc["apiVersion"] == K.API_VERSION:
            K.validate_custom_resource(doc)
        else:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_a_wrong_field_is_caught_by_each_validator(rendered) -> None:
    import kubernetes_validate

    _, docs = rendered
    cluster = _by_kind(docs, "DaskCluster")["astrodask"]
    broken = yaml.safe_load(yaml.safe_dump(cluster))
    broken["spec"]["worker"]["spec"]["containers"][0]["resorces"] = {}
    with pytest.raises(K.KubernetesError, match="resorces"):
        K.validate_custom_resource(broken)
    broken = yaml.safe_load(yaml.safe_dump(cluster))
    broken["spec"]["worker"]["replicas"] = "two"
    with pytest.raises(K.KubernetesError, match="replicas"):
        K.validate_custom_resource(broken)
    claim = yaml.safe_load(yaml.safe_dump(_by_kind(docs, "PersistentVolumeClaim")["astrodask-data"]))
    claim["spec"]["accesModes"] = claim["spec"].pop("accessModes")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(claim, KUBERNETES_VERSION, strict=True)


def test_commands_preloads_probes_and_metrics(rendered) -> None:
    _, docs = rendered
    job = _by_kind(docs, "DaskJob")["astrodask-night"]
    for spec in (_by_kind(docs, "DaskCluster")["astrodask"]["spec"], job["spec"]["cluster"]["spec"]):
        (scheduler,) = spec["scheduler"]["spec"]["containers"]
        assert scheduler["args"][:2] == list(K.SCHEDULER_COMMAND)
        assert scheduler["args"][scheduler["args"].index("--preload") + 1] == K.SCHEDULER_PRELOAD
        assert scheduler["args"][scheduler["args"].index("--dashboard-address") + 1] == f":{K.DASHBOARD_PORT}"
        for probe in ("livenessProbe", "readinessProbe"):
            assert scheduler[probe]["httpGet"] == {"path": "/health", "port": "http-dashboard"}
        assert {p["name"]: p["containerPort"] for p in scheduler["ports"]} == {"tcp-comm": 8786,
                                                                              "http-dashboard": K.DASHBOARD_PORT}
        (worker,) = spec["worker"]["spec"]["containers"]
        assert worker["args"][:2] == list(K.WORKER_COMMAND)
        assert worker["args"][worker["args"].index("--preload") + 1] == K.WORKER_PRELOAD
        assert worker["args"][worker["args"].index("--nthreads") + 1] == str(K.WORKER_THREADS)
        for probe in ("livenessProbe", "readinessProbe"):
            assert worker[probe]["httpGet"]["path"] == "/health"
        for part, port in (("scheduler", K.DASHBOARD_PORT), ("worker", K.WORKER_DASHBOARD_PORT)):
            annotations = spec[part]["metadata"]["annotations"]
            assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": str(port),
                                   "prometheus.io/path": "/metrics"}
    (runner,) = job["spec"]["job"]["spec"]["containers"]
    assert runner["args"][:3] == ["astrodask", "submit", "@/etc/astrodask-backlog/backlog.txt"]
    mounts = {m["mountPath"]: m["name"] for m in runner["volumeMounts"]}
    volumes = {v["name"]: v for v in job["spec"]["job"]["spec"]["volumes"]}
    assert volumes[mounts["/etc/astrodask-backlog"]]["configMap"]["name"] == "astrodask-backlog"
    assert "backlog.txt" in _by_kind(docs, "ConfigMap")["astrodask-backlog"]["data"]
    # no container anywhere runs the removed dask-scheduler / dask-worker entry points
    text = yaml.safe_dump_all(docs)
    assert "dask-scheduler" not in text and "dask-worker" not in text


def test_the_job_cluster_is_the_long_lived_cluster_and_both_autoscale(rendered) -> None:
    _, docs = rendered
    cluster = _by_kind(docs, "DaskCluster")["astrodask"]
    job = _by_kind(docs, "DaskJob")["astrodask-night"]
    assert job["spec"]["cluster"]["spec"] == cluster["spec"]
    scalers = _by_kind(docs, "DaskAutoscaler")
    assert {s["spec"]["cluster"] for s in scalers.values()} == {"astrodask", "astrodask-night"}
    for scaler in scalers.values():  # the cluster starts within its autoscaler's bounds
        assert 1 <= scaler["spec"]["minimum"] <= cluster["spec"]["worker"]["replicas"] <= scaler["spec"]["maximum"]


def test_worker_memory_matches_the_dask_configuration(rendered) -> None:
    """Container limit = request = --memory-limit = the 2.5 GB cluster/astrodask.yaml is tuned for."""
    from dask.utils import parse_bytes

    _, docs = rendered
    (worker,) = _by_kind(docs, "DaskCluster")["astrodask"]["spec"]["worker"]["spec"]["containers"]
    memory_limit = parse_bytes(worker["args"][worker["args"].index("--memory-limit") + 1])
    assert memory_limit == parse_bytes(K.WORKER_MEMORY) == 2_500_000_000
    resources = worker["resources"]
    assert parse_bytes(resources["limits"]["memory"]) == parse_bytes(resources["requests"]["memory"]) == memory_limit
    assert resources["requests"]["cpu"] and resources["limits"]["cpu"]
    # the ConfigMap the pods read (DASK_CONFIG) carries cluster/astrodask.yaml, fractions and all
    config = _by_kind(docs, "ConfigMap")["astrodask-config"]["data"]
    assert config["dask.yaml"] == (ROOT / "cluster" / "astrodask.yaml").read_text()
    env = {e["name"]: e for e in worker["env"]}
    assert env["DASK_CONFIG"]["value"] == next(m["mountPath"] for m in worker["volumeMounts"] if m["name"] == "config")
    fractions = yaml.safe_load(config["dask.yaml"])["distributed"]["worker"]["memory"]
    assert fractions["terminate"] * memory_limit < parse_bytes(resources["limits"]["memory"])
    pipeline = yaml.safe_load(config["astrodask.yaml"])["astrodask"]
    assert pipeline["gaia"]["cache_url"].startswith("s3://")


def test_image_tag_is_the_package_version(rendered) -> None:
    overlay, docs = rendered
    images = {c["image"] for doc in docs for c in _containers(doc) if "astrodask" in c["image"].rsplit("/", 1)[-1]}
    assert images and all(image.endswith(f"/astrodask:{__version__}") for image in images), images
    assert K.default_image() == f"astrodask:{__version__}"
    others = {c["image"] for doc in docs for c in _containers(doc)} - images
    assert all(re.search(r":[\w.-]+$", image) and not image.endswith(":latest") for image in others), others


def test_no_secret_value_in_any_manifest(rendered) -> None:
    """Credentials come by secretKeyRef; no Secret, no literal credential anywhere."""
    _, docs = rendered
    assert not [doc for doc in docs if doc["kind"] == "Secret"]
    refs = 0
    for doc in docs:
        for container in _containers(doc):
            for entry in container.get("env", []):
                if SECRET_NAME.search(entry["name"]) or SECRET_NAME.search(entry["name"].replace("_", "-")):
                    assert "value" not in entry, (doc["metadata"]["name"], entry)
                    assert "secretKeyRef" in entry["valueFrom"], entry
                    refs += 1
        for key, value in (doc.get("data") or {}).items():  # ConfigMaps: nothing that looks like a credential
            assert not SECRET_NAME.search(key), key
            assert not re.search(r"(aws_secret_access_key|password|token)\s*[:=]", str(value), re.IGNORECASE)
    assert refs >= 2  # the workers' and the job's S3 credentials at least


def test_the_overlays_differ_as_documented(rendered) -> None:
    overlay, docs = rendered
    cluster = _by_kind(docs, "DaskCluster")["astrodask"]
    s3 = _by_kind(docs, "ConfigMap")["astrodask-s3"]["data"]
    if overlay == "dev":
        assert cluster["spec"]["worker"]["replicas"] == 1
        assert s3["AWS_ENDPOINT_URL"] == "http://minio:9000"
        assert "minio" in _by_kind(docs, "Deployment") and "minio" in _by_kind(docs, "Service")
    else:
        assert cluster["spec"]["worker"]["replicas"] == 16
        assert _by_kind(docs, "DaskAutoscaler")["astrodask"]["spec"]["maximum"] == 64
        assert not _by_kind(docs, "Deployment")


# -- the image ---------------------------------------------------------------------------------------


def test_dockerfile_base_user_healthcheck_and_copies() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert lines[0] == "FROM python:3.11-slim"
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert any(line.startswith("HEALTHCHECK") for line in lines) and "/opt/astrodask/healthcheck.py" in text
    assert "--constraint /opt/astrodask/constraints.txt" in text
    assert "ENV DASK_CONFIG=/opt/astrodask/cluster" in text
    assert f"{K.CLUSTER_DIR_IN_IMAGE}/" in text  # where kube.py's preload paths point
    for line in lines:  # every file the image copies exists
        if line.startswith("COPY"):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
    copied = " ".join(line for line in lines if line.startswith("COPY"))
    for preload in (K.SCHEDULER_PRELOAD, K.WORKER_PRELOAD):
        assert f"cluster/{Path(preload).name}" in copied


def test_constraints_pin_every_dependency_of_the_image() -> None:
    """deploy/constraints.txt pins astrodask[kubernetes]'s whole closure (as installed in this environment)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("astrodask_deploy_constraints", DEPLOY / "constraints.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pins = dict(line.split("==") for line in (DEPLOY / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    needed = module.closure(module.root_requirements())
    assert set(needed) <= set(pins), sorted(set(needed) - set(pins))
    for name in ("dask", "distributed", "dask-kubernetes", "prometheus-client", "numpy", "astropy", "zarr"):
        assert name in pins


def test_healthcheck_script(tmp_path: Path) -> None:
    """deploy/healthcheck.py: healthy against a live /health, unhealthy against a closed port."""
    from distributed import LocalCluster

    script = [sys.executable, str(DEPLOY / "healthcheck.py")]
    with LocalCluster(n_workers=0, host="127.0.0.1", dashboard_address="127.0.0.1:0") as cluster:
        url = cluster.dashboard_link.replace("/status", "/health")
        assert subprocess.run([*script, url], capture_output=True, timeout=30).returncode == 0
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}/health"
    done = subprocess.run([*script, dead], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and "unhealthy" in done.stderr and dead in done.stderr
    done = subprocess.run(script, capture_output=True, text=True, timeout=30,
                          env={"ASTRODASK_HEALTH_PORT": "none", "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr


# -- --cluster kubernetes ---------------------------------------------------------------------------


def test_cluster_spec_runs_dask_scheduler_and_dask_worker_with_the_preloads() -> None:
    settings = K.KubeSettings(n_workers=3, env=(("AWS_ENDPOINT_URL", "http://minio:9000"),))
    spec = K.cluster_spec(settings)
    K.validate_custom_resource(spec)  # the operator's own schema
    assert spec["metadata"]["name"] == K.DEFAULT_CLUSTER_NAME
    (scheduler,) = spec["spec"]["scheduler"]["spec"]["containers"]
    (worker,) = spec["spec"]["worker"]["spec"]["containers"]
    assert scheduler["args"] == [*K.SCHEDULER_COMMAND, "--host", "0.0.0.0", "--preload", K.SCHEDULER_PRELOAD]
    assert worker["args"][:9] == [*K.WORKER_COMMAND, "--nthreads", "1", "--memory-limit", "2.5GB",
                                  "--preload", K.WORKER_PRELOAD, "--name"]
    assert scheduler["image"] == worker["image"] == f"astrodask:{__version__}"
    assert spec["spec"]["worker"]["replicas"] == 3
    assert worker["resources"]["limits"]["memory"] == worker["resources"]["requests"]["memory"] == "2.5G"
    for container in (scheduler, worker):
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env == {"DASK_CONFIG": K.CLUSTER_DIR_IN_IMAGE, "AWS_ENDPOINT_URL": "http://minio:9000"}
    assert "dask-worker" not in yaml.safe_dump(spec) and "dask-scheduler" not in yaml.safe_dump(spec)


def test_settings_from_dask_config_keep_astrodask_defaults_over_dask_kubernetes_ones() -> None:
    import dask

    assert K.KubeSettings.from_dask_config() == K.KubeSettings()  # not dask-{user}-{uuid}, not ghcr.io/dask/dask
    with dask.config.set({"kubernetes.name": "night-42", "kubernetes.namespace": "survey",
                          "kubernetes.image": "registry.example.org/astrodask:0.1.0"}):
        settings = K.KubeSettings.from_dask_config(n_workers=5)
    assert (settings.name, settings.namespace, settings.image, settings.n_workers) == (
        "night-42", "survey", "registry.example.org/astrodask:0.1.0", 5)
    with pytest.raises(K.KubernetesError, match="0 or more workers"):
        K.KubeSettings(n_workers=-1)


@pytest.fixture()
def kube_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No kubeconfig and no in-cluster service account: a home of its own.

    kr8s keeps the API objects it made per thread (a failed one too): each test starts without them.
    """
    from kr8s._api import Api

    monkeypatch.setattr(Api, "_instances", {})
    for name in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def _submit_on_kubernetes(tmp_path: Path) -> Any:
    frame = tmp_path / "frame.fits"
    frame.write_bytes(b"")
    return CliRunner().invoke(main, ["submit", str(frame), "--out", str(tmp_path / "out"), "--cluster",
                                     "kubernetes", "--catalog", str(frame)])


def test_cluster_kubernetes_without_credentials_names_the_fix(kube_home: Path) -> None:
    result = _submit_on_kubernetes(kube_home)
    assert result.exit_code == 1, result.output
    assert "found no Kubernetes credentials" in result.output and "KUBECONFIG" in result.output


def test_cluster_kubernetes_contacts_the_api_server_of_the_kubeconfig(kube_home: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A kubeconfig whose server is a loopback port with nothing listening: the first contact fails, named."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = kube_home / "kubeconfig"
    config.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": f"https://127.0.0.1:{port}"}}],
        "users": [{"name": "test", "user": {"token": "placeholder"}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test", "namespace": "survey"}}]}))
    monkeypatch.setenv("KUBECONFIG", str(config))
    result = _submit_on_kubernetes(kube_home)
    assert result.exit_code == 1, result.output
    assert "cannot reach the Kubernetes API server" in result.output and "kubectl" in result.output


def test_cluster_kubernetes_without_dask_kubernetes_says_how_to_install(kube_home: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(sys.modules):
        if name == "dask_kubernetes" or name.startswith("dask_kubernetes."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "dask_kubernetes", None)  # what an environment without the extra sees
    result = _submit_on_kubernetes(kube_home)
    assert result.exit_code == 1, result.output
    assert "needs dask-kubernetes" in result.output and K.INSTALL_HINT in result.output


def test_cluster_kubernetes_refuses_a_scheduler_address(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["submit", str(tmp_path), "--out", str(tmp_path / "out"), "--cluster",
                                       "kubernetes", "--scheduler", "tcp://127.0.0.1:1"])
    assert result.exit_code != 0
