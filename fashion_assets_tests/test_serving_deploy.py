"""Online prediction's deployment, offline (no cluster, no Docker here): the manifests in
``helm/fashion-serving/`` (and their GPU overlay, merged as kustomize would) validated strictly
with kubernetes-validate and cross-checked; the image's gateway command and compose service; the
dependencies consistent by ``pip check``."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from fashion_assets import layout
from fashion_assets.serving import publish

from .test_deploy import ROOT, assert_valid_manifest, constraint, dockerfile, package_version

import kubernetes_validate  # noqa: E402,I001  (after test_deploy, which pins the versions)
from .test_deploy import K8S_VERSIONS  # noqa: E402

CHART = ROOT / "helm" / "fashion-serving"


def objects(path: Path) -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(path.read_text()) if d}


def all_objects() -> dict[tuple[str, str], dict]:
    kustomization = yaml.safe_load((CHART / "kustomization.yaml").read_text())
    found = {}
    for name in kustomization["resources"]:
        found.update(objects(CHART / name))
    return found


def merge_by_name(base: list, patch: list) -> list:
    merged = copy.deepcopy(base)
    for item in patch:
        same = [m for m in merged if isinstance(m, dict) and m.get("name") == item.get("name")]
        if same:
            same[0].update(strategic_merge(same[0], item))
        else:
            merged.append(item)
    return merged


def strategic_merge(base, patch):
    """kustomize's strategic merge for what our patch uses: maps merge, named lists merge by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = strategic_merge(base[key], value) if key in base else value
        return out
    if isinstance(base, list) and isinstance(patch, list) and all(isinstance(p, dict) and "name" in p for p in patch):
        return merge_by_name(base, patch)
    return patch


def gpu_objects() -> dict[tuple[str, str], dict]:
    overlay = yaml.safe_load((CHART / "gpu" / "kustomization.yaml").read_text())
    assert overlay["resources"] == [".."]
    found = all_objects()
    for patch in overlay["patches"]:
        doc = yaml.safe_load((CHART / "gpu" / patch["path"]).read_text())
        key = (doc["kind"], doc["metadata"]["name"])
        found[key] = strategic_merge(found[key], doc)
    return found


def container(deployment: dict, name: str) -> dict:
    pod = deployment["spec"]["template"]["spec"]
    [found] = [c for c in pod["containers"] + pod.get("initContainers", []) if c["name"] == name]
    return found


def test_every_manifest_is_valid_strictly():
    for found in (all_objects(), gpu_objects()):
        assert set(found) == {("ConfigMap", "fashion-tfserving-batching"), ("Deployment", "fashion-tfserving"),
                              ("Service", "fashion-tfserving"), ("Deployment", "fashion-gateway"),
                              ("Service", "fashion-gateway"), ("HorizontalPodAutoscaler", "fashion-gateway")}
        for (kind, _), manifest in found.items():
            if kind == "Deployment":
                assert_valid_manifest(manifest)  # strict schema, requests <= limits, non-root
                init = manifest["spec"]["template"]["spec"].get("initContainers", [])
                assert all(c["securityContext"]["allowPrivilegeEscalation"] is False for c in init)
            else:
                for version in K8S_VERSIONS:
                    kubernetes_validate.validate(manifest, version, strict=True)


def test_tf_serving_gets_the_published_model_from_an_init_container_and_batches():
    found = all_objects()
    deployment = found[("Deployment", "fashion-tfserving")]
    init, server = container(deployment, "fetch-model"), container(deployment, "tfserving")
    # The init container is our image running our command; it writes what TF Serving reads.
    assert init["image"] == f"registry.example.com/fashion-assets:{package_version()}"
    assert init["command"] == ["fashion-assets", "fetch-served-model", "/models"]
    assert init["envFrom"] == [{"secretRef": {"name": "fashion-assets-env"}}]
    mounts = {m["name"]: m["mountPath"] for m in server["volumeMounts"]}
    assert {m["name"]: m["mountPath"] for m in init["volumeMounts"]}["models"] == mounts["models"] == "/models"
    assert publish.MODEL_BASE_PATH == f"/models/{layout.SERVED_MODEL_NAME}"
    args = dict(a.removeprefix("--").split("=", 1) for a in server["args"])
    assert server["command"] == ["tensorflow_model_server"]
    assert args["model_config_file"] == "/models/models.config"
    assert args["enable_batching"] == "true"
    # The batching parameters file is the ConfigMap's key, mounted where the flag says.
    config_map = found[("ConfigMap", "fashion-tfserving-batching")]
    batching_dir, batching_file = args["batching_parameters_file"].rsplit("/", 1)
    assert mounts["batching"] == batching_dir and batching_file in config_map["data"]
    params = dict(re.findall(r"(\w+) \{ value: (\d+) \}", config_map["data"][batching_file]))
    assert params == {"max_batch_size": "64", "batch_timeout_micros": "2000", "max_enqueued_batches": "256",
                      "num_batch_threads": "4"}
    # No GPU in the base; the overlay asks for one, tolerates the taint, uses the GPU image.
    assert "nvidia.com/gpu" not in json.dumps(deployment)
    gpu = gpu_objects()[("Deployment", "fashion-tfserving")]
    gpu_server = container(gpu, "tfserving")
    assert gpu_server["resources"]["limits"]["nvidia.com/gpu"] == gpu_server["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert gpu_server["image"].endswith("-gpu") and gpu_server["args"] == server["args"]
    assert gpu["spec"]["template"]["spec"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert container(gpu, "fetch-model") == init
    assert gpu_objects()[("Deployment", "fashion-gateway")] == found[("Deployment", "fashion-gateway")]


def test_the_gateway_deployment_service_and_autoscaler_fit_together():
    found = all_objects()
    deployment, service = found[("Deployment", "fashion-gateway")], found[("Service", "fashion-gateway")]
    gateway = container(deployment, "gateway")
    assert gateway["image"] == f"registry.example.com/fashion-assets:{package_version()}"
    assert gateway["command"] == ["fashion-assets", "serve", "--host", "0.0.0.0", "--port", "8080"]
    env = {e["name"]: e["value"] for e in gateway["env"]}
    tf_service = found[("Service", "fashion-tfserving")]
    grpc_port = [p["port"] for p in tf_service["spec"]["ports"] if p["name"] == "grpc"][0]
    assert env["FASHION_SERVE_BACKEND"] == "tfserving"
    assert env["FASHION_TFSERVING_ADDRESS"] == f"{tf_service['metadata']['name']}:{grpc_port}"
    # A gateway process per CPU of the pod's limit, no more (each gets its share of the quota).
    assert int(env["FASHION_SERVE_WORKERS"]) == int(gateway["resources"]["limits"]["cpu"]) == 2
    for probe in ("startupProbe", "readinessProbe"):
        assert gateway[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert [p["containerPort"] for p in gateway["ports"]] == [8080]
    # Services select their Deployment's pods; the autoscaler scales the gateway by CPU.
    for name in ("fashion-gateway", "fashion-tfserving"):
        labels = found[("Deployment", name)]["spec"]["template"]["metadata"]["labels"]
        selector = found[("Service", name)]["spec"]["selector"]
        assert selector.items() <= labels.items() and selector == found[("Deployment", name)]["spec"]["selector"]["matchLabels"]
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    hpa = found[("HorizontalPodAutoscaler", "fashion-gateway")]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "fashion-gateway"}
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu" and "cpu" in gateway["resources"]["requests"]
    assert hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]
    # No secret in the manifests: the store's credentials come from the Secret.
    text = "\n".join(p.read_text() for p in CHART.rglob("*.yaml"))
    assert not re.search(r"(?i)(password|secret_access_key|token)\s*[:=]\s*\S", text)


def test_the_cpu_image_runs_the_gateway_with_another_command():
    instructions = dockerfile(ROOT / "docker" / "Dockerfile")
    runs = " ".join(args for kind, args in instructions if kind == "RUN")
    assert "pip install --no-deps -c constraints.txt tensorflow-serving-api" in runs
    expose = [args for kind, args in instructions if kind == "EXPOSE"]
    assert expose == ["4000 8080"]
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    service = compose["services"]["gateway"]
    assert service["image"] == compose["services"]["user-code"]["image"]
    assert service["command"] == ["fashion-assets", "serve", "--host", "0.0.0.0", "--port", "8080"]
    assert service["ports"] == ["127.0.0.1:8080:8080"]


def test_dependencies_are_pinned_and_pip_finds_one_known_gap():
    """tensorflow-serving-api is installed without its dependency on the full ``tensorflow``
    distribution (tensorflow-cpu provides the same modules): ``pip check`` names that, and only
    that."""
    for name in ("starlette", "uvicorn", "python-multipart", "httpx", "grpcio", "tensorflow-serving-api"):
        assert re.fullmatch(r"[\w.]+", constraint(name)), name
    assert constraint("tensorflow-serving-api") == constraint("tensorflow-cpu")
    result = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert result.stdout.splitlines() == [
        f"tensorflow-serving-api {constraint('tensorflow-serving-api')} requires tensorflow, which is not installed."]
    from importlib import metadata

    assert metadata.version("tensorflow-cpu") == constraint("tensorflow-cpu")
    assert not [d for d in metadata.distributions() if (d.metadata["Name"] or "").lower() == "tensorflow"]
