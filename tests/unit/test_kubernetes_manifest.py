"""Rendered RayJobs validate against KubeRay's CRD (unknown fields rejected) and are pinned."""

from __future__ import annotations

import copy

import pytest
import yaml

from cluster.k8s_manifest import render_manifests
from launcher.config.load import validate_config
from tests.helpers.kuberay_schema import crd_available, validate_rayjob
from tests.unit.test_golden_scripts import EXAMPLE_70B, check_golden

pytestmark = pytest.mark.skipif(not crd_available(), reason="../shared/kuberay CRDs are absent")
RUN_DIR = "/runs/llama3-70b-sft-20260101-000000"
SEED = {"config.yaml": "name: llama3-70b-sft\n"}


def k8s_cfg(**k8s):
    cfg = copy.deepcopy(EXAMPLE_70B)
    cfg["checkpoint"]["dir"] = "/runs"
    return validate_config({**cfg, "cluster": {"target": "kubernetes", "kubernetes": k8s}})


FULL = dict(namespace="ml", image="registry.example.com/ftl:0.1.0", gpus_per_pod=8, cpus_per_pod="96",
            memory_per_pod="1200Gi", shm_size="256Gi", runs_pvc="ftl-runs",
            node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
            tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            service_account="ftl", wandb_secret={"name": "wandb", "key": "api-key"},
            hf_secret={"name": "hf", "key": "token"}, active_deadline_seconds=172800, queue="gpu-queue")


def test_70b_rayjob_validates_and_is_pinned():
    configmap, rayjob = render_manifests(k8s_cfg(**FULL), RUN_DIR, SEED)
    assert validate_rayjob(rayjob) == []
    workers = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert workers["replicas"] == 8  # 64 ranks / 8 GPUs per pod
    container = workers["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    env = {e["name"]: e for e in container["env"]}
    assert env["WANDB_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "wandb", "key": "api-key"}
    assert rayjob["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert configmap["data"] == SEED
    check_golden("rayjob_70b.yaml", yaml.safe_dump_all([configmap, rayjob], sort_keys=False))


def test_rayjob_on_existing_cluster_validates_and_is_pinned():
    _, rayjob = render_manifests(k8s_cfg(cluster_selector={"ray.io/cluster": "shared-h100"}), RUN_DIR, SEED)
    assert validate_rayjob(rayjob) == []
    assert "rayClusterSpec" not in rayjob["spec"]
    check_golden("rayjob_cluster_selector.yaml", yaml.safe_dump(rayjob, sort_keys=False))


def test_schema_check_is_strict():
    _, rayjob = render_manifests(k8s_cfg(**FULL), RUN_DIR, SEED)
    rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParam"] = {}  # a typo'd field
    errors = validate_rayjob(rayjob)
    assert any("rayStartParam" in e for e in errors)


def test_relative_checkpoint_dir_is_refused():
    from launcher.errors import UserError

    cfg = copy.deepcopy(EXAMPLE_70B)
    cfg["cluster"] = {"target": "kubernetes"}
    with pytest.raises(UserError) as err:
        render_manifests(validate_config({**cfg, "checkpoint": {"dir": "runs"}}), "runs/x", SEED)
    assert "checkpoint.dir" in err.value.render()
