"""deploy/kubernetes/train (a Job), .../train/multinode (a Kubeflow PyTorchJob) and
deploy/kubernetes/trained (serving what they publish), checked without a cluster:

* `kubectl kustomize` builds each as `kubectl apply -k` would; every Kubernetes resource
  validates strictly against the schemas `kubernetes-validate` ships (unknown fields fail).
* The PyTorchJob validates against tests/schemas/kubeflow.org_v1_pytorchjob.schema.json (its
  provenance is in the file), each replica's pod template strictly as a Pod, and the rules the
  training operator itself enforces (replica types Master/Worker, one Master, a container named
  ``pytorch``).
* The wiring: the image, script, user, volume and paths agree between the manifests, the train
  Dockerfile and docker/train_job.sh; the serving overlay reads exactly the file the jobs publish.
* docker/train_job.sh itself runs here: the one-pod path (eirtrain) and the PyTorchJob path
  (torchrun in two "pods", given the PET_* variables the operator sets) both train the tutorial
  for one epoch into a folder standing for the volume, and rank 0 publishes a bundle eirserve loads.
"""

from __future__ import annotations

import copy
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from eir_core.bundle import has_graph, read_manifest
from eir_serve.settings import Settings
from tests.test_deploy import kustomize

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
K8S_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
SCHEMA = json.loads((ROOT / "tests" / "schemas" / "kubeflow.org_v1_pytorchjob.schema.json").read_text())
SCRIPT = ROOT / "docker" / "train_job.sh"


def validate(doc: dict[str, Any]) -> None:
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


def by_kind(folder: Path) -> dict[str, dict[str, Any]]:
    docs = kustomize(folder)
    kinds = {d["kind"]: d for d in docs}
    assert len(kinds) == len(docs), "one resource of each kind expected"
    return kinds


@pytest.fixture(scope="module")
def single() -> dict[str, dict[str, Any]]:
    return by_kind(K8S / "train")


@pytest.fixture(scope="module")
def multi() -> dict[str, dict[str, Any]]:
    return by_kind(K8S / "train" / "multinode")


@pytest.fixture(scope="module")
def trained() -> dict[str, dict[str, Any]]:
    return by_kind(K8S / "trained")


def as_pod(template: dict[str, Any], name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, **template.get("metadata", {})},
        "spec": template["spec"],
    }


def check_pytorchjob(job: dict[str, Any]) -> None:
    """The CRD's schema, the pod templates as Pods, and the operator's own admission rules."""
    jsonschema.validate(job, SCHEMA)
    specs = job["spec"]["pytorchReplicaSpecs"]
    if not set(specs) <= {"Master", "Worker"} or "Master" not in specs:
        raise jsonschema.ValidationError(f"replica types {sorted(specs)}: Master (and Worker) only")
    if specs["Master"].get("replicas", 1) != 1:
        raise jsonschema.ValidationError("a PyTorchJob has exactly one Master")
    for kind, spec in specs.items():
        validate(as_pod(spec["template"], kind.lower()))
        if "pytorch" not in [c["name"] for c in spec["template"]["spec"]["containers"]]:
            raise jsonschema.ValidationError(f"{kind}: no container named pytorch")


def test_every_resource_validates(single: Any, multi: Any, trained: Any) -> None:
    assert set(single) == {"PersistentVolumeClaim", "Job"}
    assert set(multi) == {"PersistentVolumeClaim", "PyTorchJob"}
    assert set(trained) == {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "PersistentVolumeClaim",
    }
    for doc in [*single.values(), multi["PersistentVolumeClaim"], *trained.values()]:
        validate(doc)
    check_pytorchjob(multi["PyTorchJob"])
    broken = copy.deepcopy(single["Job"])  # strict: a misspelt field fails
    broken["spec"]["backofLimit"] = broken["spec"].pop("backoffLimit")
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda j: j["spec"].update(pytorchReplicaSpec=j["spec"].pop("pytorchReplicaSpecs")),  # misspelt
        lambda j: j["spec"].pop("runPolicy"),
        lambda j: j["spec"]["pytorchReplicaSpecs"]["Worker"].update(restartPolicy="Sometimes"),
        lambda j: j["spec"]["pytorchReplicaSpecs"]["Worker"].update(replicas="2"),
        lambda j: j["spec"]["runPolicy"].update(cleanPodPolicy="Some"),
        lambda j: j["spec"].update(nprocPerNode=2),
        lambda j: j["spec"]["pytorchReplicaSpecs"].update(Chief=j["spec"]["pytorchReplicaSpecs"]["Worker"]),
        lambda j: j["spec"]["pytorchReplicaSpecs"]["Master"].update(replicas=2),
        lambda j: j["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0].update(name="main"),
    ],
)
def test_the_pytorchjob_check_can_fail(multi: Any, mutate: Any) -> None:
    job = copy.deepcopy(multi["PyTorchJob"])
    mutate(job)
    with pytest.raises(jsonschema.ValidationError):
        check_pytorchjob(job)


def test_a_pod_template_is_checked_strictly(multi: Any) -> None:
    job = copy.deepcopy(multi["PyTorchJob"])
    job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["volumeMount"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        check_pytorchjob(job)


def pods(single: Any, multi: Any) -> list[tuple[str, dict[str, Any]]]:
    out = [("Job", single["Job"]["spec"]["template"]["spec"])]
    for kind, spec in multi["PyTorchJob"]["spec"]["pytorchReplicaSpecs"].items():
        out.append((kind, spec["template"]["spec"]))
    return out


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def test_the_jobs_agree_with_the_image_and_the_script(single: Any, multi: Any) -> None:
    dockerfile = (ROOT / "docker" / "train.Dockerfile").read_text()
    assert "COPY docker/train_job.sh /app/train_job.sh" in dockerfile
    uid = re.search(r"useradd [^\n]*--uid (\d+)", dockerfile).group(1)  # type: ignore[union-attr]
    claim = single["PersistentVolumeClaim"]["metadata"]["name"]
    assert multi["PersistentVolumeClaim"] == single["PersistentVolumeClaim"]  # one volume for both
    assert single["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]  # pods on several nodes
    run_names = set()
    for where, pod in pods(single, multi):
        assert str(pod["securityContext"]["runAsUser"]) == uid and pod["securityContext"]["runAsNonRoot"], where
        volumes = {v["name"]: v for v in pod["volumes"]}
        for c in [*pod.get("initContainers", []), *pod["containers"]]:
            assert c["image"] == "eir-train:local", where
            assert c["command"][:2] == ["bash", "/app/train_job.sh"], where
            env = env_of(c)
            mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
            assert volumes[mounts[env["WORK"]]["name"]]["persistentVolumeClaim"]["claimName"] == claim, where
            assert c["securityContext"]["readOnlyRootFilesystem"], where
            if c in pod["containers"]:
                assert "/tmp" in mounts and not mounts[env["WORK"]].get("readOnly"), where
            run_names.add(env["RUN_NAME"])
    assert len(run_names) == 1  # every pod trains and publishes the same run
    steps = {where: [c["command"][2:] for c in pod.get("initContainers", [])] for where, pod in pods(single, multi)}
    assert steps == {"Job": [["--data"]], "Master": [["--data"]], "Worker": [["--wait-for-data"]]}
    job = multi["PyTorchJob"]["spec"]
    master = job["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert {p["name"]: p["containerPort"] for p in master["ports"]} == {"pytorchjob-port": 23456}
    assert int(job["nprocPerNode"]) >= 1


def test_the_serving_overlay_reads_what_the_jobs_publish(single: Any, trained: Any) -> None:
    dep = trained["Deployment"]["spec"]["template"]["spec"]
    assert "initContainers" not in dep  # no tutorial training in the serving pods
    (c,) = [c for c in dep["containers"] if c["name"] == "eir-serve"]
    env = env_of(c)
    settings = Settings.model_validate({"model_path": env["EIR_SERVE_MODEL_PATH"]})
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    (vol,) = [v for v in dep["volumes"] if v["name"] == "models"]
    assert vol["persistentVolumeClaim"] == {
        "claimName": single["PersistentVolumeClaim"]["metadata"]["name"],
        "readOnly": True,
    }
    assert mounts["models"]["readOnly"]
    job_env = env_of(single["Job"]["spec"]["template"]["spec"]["containers"][0])
    published = Path(mounts["models"]["mountPath"]) / "published" / f"{job_env['RUN_NAME']}.safetensors"
    assert settings.model_path == published
    assert trained["PersistentVolumeClaim"] == single["PersistentVolumeClaim"]  # the serving-only volume is gone


# --- docker/train_job.sh, run here ----------------------------------------------------------


def _script_env(work: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "WORK": str(work),
        "RUN_NAME": "tutorial-test",
        "TUTORIAL_CONFIGS": str(ROOT / "examples" / "tutorial" / "digits8"),
        "N_EPOCHS": "1",
        "OMP_NUM_THREADS": "1",
        "MPLCONFIGDIR": str(work / "mpl"),
        **extra,
    }


def _published_bundle_loads(work: Path) -> None:
    bundle = work / "published" / "tutorial-test.safetensors"
    assert bundle.is_file() and has_graph(bundle)
    assert read_manifest(bundle).outputs[0].name == "mnist_output"
    assert not list((work / "published").glob(".*"))  # no partial copy left


@pytest.mark.long
def test_the_single_pod_job_trains_and_publishes(tmp_path: Path) -> None:
    env = _script_env(tmp_path)
    r = subprocess.run(
        ["bash", str(SCRIPT), "--wait-for-data"],
        env={**env, "DATA_WAIT_S": "1"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 1 and "no data in" in r.stderr, r.stderr  # a Worker whose Master never wrote the data
    r = subprocess.run(["bash", str(SCRIPT), "--data"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "published" in r.stdout
    _published_bundle_loads(tmp_path)
    bad = subprocess.run(["bash", str(SCRIPT)], env={**env, "RUN_NAME": "../x"}, capture_output=True, text=True)
    assert bad.returncode == 2 and "plain folder name" in bad.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(600)
@pytest.mark.long
def test_the_pytorchjob_pods_train_together_and_the_master_publishes(tmp_path: Path) -> None:
    """Two processes standing for the Master and Worker pods, each with the variables the
    operator sets (PET_NNODES, PET_NODE_RANK, PET_MASTER_ADDR, PET_MASTER_PORT,
    PET_NPROC_PER_NODE): torchrun in each, one process per "node"."""
    env = _script_env(tmp_path)
    r = subprocess.run(["bash", str(SCRIPT), "--data"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    pet = {
        "PET_NNODES": "2",
        "PET_NPROC_PER_NODE": "1",
        "PET_MASTER_ADDR": "127.0.0.1",
        "PET_MASTER_PORT": str(_free_port()),
    }
    procs = [
        subprocess.Popen(
            ["bash", str(SCRIPT)],
            env={**env, **pet, "PET_NODE_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outs = [p.communicate(timeout=540) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert "published" in outs[0][0] and "published" not in outs[1][0]
    _published_bundle_loads(tmp_path)
    assert "distributed: rank 0 of 2" in outs[0][1] and "distributed: 2 processes" in outs[0][1], outs[0][1][-2000:]
