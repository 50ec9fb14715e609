"""Rendered RayJobs validate against KubeRay's CRD (unknown fields rejected) and are pinned;
names are unique per run folder and launch; the preStop hook really asks the run to stop."""

from __future__ import annotations

import copy
import re
import subprocess
import threading
import time

import pytest
import yaml

from cluster.k8s_manifest import (
    MAX_RAYJOB_NAME,
    PRESTOP_MARGIN_S,
    prestop_script,
    rayjob_name,
    render_manifests,
)
from cluster.kubernetes import TERMINAL, job_state
from launcher.config.load import validate_config
from launcher.core.errors import UserError
from launcher.core.preemption import stop_reason
from tests.helpers.golden import EXAMPLE_70B, check_golden
from tests.helpers.kuberay_schema import crd_available, validate_rayjob

needs_crd = pytest.mark.skipif(not crd_available(), reason="../shared/kuberay CRDs are absent")
RUN_DIR = "/runs/llama3-70b-sft-20260101-000000"
SEED = {"config.yaml": "name: llama3-70b-sft\n"}
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def k8s_cfg(checkpoint_dir: str = "/runs", **k8s):
    cfg = copy.deepcopy(EXAMPLE_70B)
    cfg["checkpoint"]["dir"] = checkpoint_dir
    return validate_config({**cfg, "cluster": {"target": "kubernetes", "kubernetes": k8s}})


FULL = dict(namespace="ml", image="registry.example.com/ftl:0.1.0", gpus_per_pod=8, cpus_per_pod="96",
            memory_per_pod="1200Gi", shm_size="256Gi", runs_pvc="ftl-runs",
            node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
            tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            service_account="ftl", wandb_secret={"name": "wandb", "key": "api-key"},
            hf_secret={"name": "hf", "key": "token"}, active_deadline_seconds=172800, queue="gpu-queue")


def containers(rayjob):
    cluster = rayjob["spec"]["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"]["spec"], cluster["workerGroupSpecs"][0]["template"]["spec"]]
    return pods, [pod["containers"][0] for pod in pods]


def problems(err) -> str:
    return err.value.render()


@needs_crd
def test_70b_rayjob_validates_and_is_pinned():
    configmap, rayjob = render_manifests(k8s_cfg(**FULL), RUN_DIR, SEED)
    assert validate_rayjob(rayjob) == []
    workers = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert workers["replicas"] == 8  # 64 ranks / 8 GPUs per pod
    container = workers["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    for c in containers(rayjob)[1]:  # secrets travel as references only, on every container
        env = {e["name"]: e for e in c["env"]}
        assert env["WANDB_API_KEY"] == {"name": "WANDB_API_KEY",
                                        "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "api-key"}}}
        assert env["HF_TOKEN"] == {"name": "HF_TOKEN",
                                   "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}
    assert rayjob["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert rayjob["spec"]["rayClusterSpec"]["authOptions"] == {"mode": "token"}  # KubeRay makes the token
    assert configmap["data"] == SEED
    assert configmap["metadata"]["name"] == f"{rayjob['metadata']['name']}-seed"
    check_golden("rayjob_70b.yaml", yaml.safe_dump_all([configmap, rayjob], sort_keys=False))


@needs_crd
def test_preemption_fields_validate_on_head_and_workers():
    _, rayjob = render_manifests(k8s_cfg(**FULL, termination_grace_s=300, backoff_limit=5), RUN_DIR, SEED)
    assert validate_rayjob(rayjob) == []
    assert rayjob["spec"]["backoffLimit"] == 5
    pods, conts = containers(rayjob)
    assert [p["terminationGracePeriodSeconds"] for p in pods] == [300, 300]
    for c in conts:
        command = c["lifecycle"]["preStop"]["exec"]["command"]
        assert command[:2] == ["/bin/sh", "-c"]
        assert f"R={RUN_DIR};" in command[2] and '-lt 290 ]' in command[2]  # grace - 10 s


def test_backoff_limit_defaults_to_two_and_to_zero_on_an_existing_cluster():
    assert render_manifests(k8s_cfg(**FULL), RUN_DIR, SEED)[1]["spec"]["backoffLimit"] == 2
    selector = k8s_cfg(cluster_selector={"ray.io/cluster": "shared-h100"})
    assert render_manifests(selector, RUN_DIR, SEED)[1]["spec"]["backoffLimit"] == 0


@needs_crd
def test_rayjob_on_existing_cluster_validates_and_is_pinned():
    _, rayjob = render_manifests(k8s_cfg(cluster_selector={"ray.io/cluster": "shared-h100"}), RUN_DIR, SEED)
    assert validate_rayjob(rayjob) == []
    assert "rayClusterSpec" not in rayjob["spec"]
    # KubeRay's ValidateRayJobSpec refuses a TTL without shutdownAfterJobFinishes
    assert not {"ttlSecondsAfterFinished", "shutdownAfterJobFinishes"} & set(rayjob["spec"])
    check_golden("rayjob_cluster_selector.yaml", yaml.safe_dump(rayjob, sort_keys=False))


@needs_crd
def test_schema_check_is_strict():
    _, rayjob = render_manifests(k8s_cfg(**FULL), RUN_DIR, SEED)
    rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParam"] = {}  # a typo'd field
    errors = validate_rayjob(rayjob)
    assert any("rayStartParam" in e for e in errors)


def test_relative_checkpoint_dir_is_refused():
    with pytest.raises(UserError) as err:
        render_manifests(k8s_cfg("runs", runs_pvc="ftl-runs"), "runs/x", SEED)
    assert "checkpoint.dir: must be an absolute path" in problems(err)


def test_runs_pvc_is_required_unless_the_cluster_exists():
    with pytest.raises(UserError) as err:
        render_manifests(k8s_cfg(), RUN_DIR, SEED)
    assert "cluster.kubernetes.runs_pvc: required" in problems(err) and "hint:" in problems(err)
    with pytest.raises(UserError) as err:
        render_manifests(k8s_cfg(runs_pvc="ftl-runs", backoff_limit=1,
                                 cluster_selector={"ray.io/cluster": "c"}), RUN_DIR, SEED)
    assert "cluster.kubernetes.runs_pvc: cannot be mounted into an existing RayCluster" in problems(err)
    assert "cluster.kubernetes.backoff_limit: KubeRay cannot retry" in problems(err)


def test_run_folder_must_lie_under_the_pvc_mount():
    with pytest.raises(UserError) as err:
        render_manifests(k8s_cfg(runs_pvc="ftl-runs"), "/scratch/llama-20260101-000000", SEED)
    assert "--runs-dir: the run folder /scratch/llama-20260101-000000 is outside /runs" in problems(err)
    with pytest.raises(UserError) as err:  # checkpoint.dir itself outside an explicit mount
        render_manifests(k8s_cfg("/data/runs", runs_pvc="p", runs_mount="/runs"), "/data/runs/x", SEED)
    assert "checkpoint.dir: the run folder /data/runs/x is outside /runs" in problems(err)
    with pytest.raises(UserError):  # a sibling that shares the prefix is outside too
        render_manifests(k8s_cfg(runs_pvc="p"), "/runs-old/x", SEED)
    nested = k8s_cfg("/runs/team-a", runs_pvc="p", runs_mount="/runs")
    _, rayjob = render_manifests(nested, "/runs/team-a/x", SEED)
    mounts = containers(rayjob)[1][1]["volumeMounts"]
    assert {"name": "runs", "mountPath": "/runs"} in mounts


def test_rayjob_names_are_unique_valid_and_stable():
    stem = "/runs/" + "a-very-long-experiment-name-about-llama-70b-dpo-with-lora-and-packing"
    first, second = f"{stem}-v1-20260101-000000", f"{stem}-v2-20260101-000000"
    names = {rayjob_name(first, "l1"), rayjob_name(second, "l1"), rayjob_name(first, "l2"),
             rayjob_name("/runs/" + "x" * 200, None), rayjob_name("/runs/70b-sft-20260101-000000", None)}
    assert len(names) == 5
    for name in names:
        assert len(name) <= MAX_RAYJOB_NAME and DNS_1035.match(name), name
        assert len(f"{name}-seed") <= 253 and len(name) <= 63  # ConfigMap name, label value
    assert rayjob_name(first, "l1") == rayjob_name(first + "/", "l1")  # same folder, same launch
    assert rayjob_name(RUN_DIR, None).startswith("llama3-70b-sft-20260101-000000-")


@pytest.mark.parametrize("status, state", [
    ({}, "PENDING"),                                                           # New
    ({"jobDeploymentStatus": "Initializing"}, "PENDING"),                      # cluster starting
    ({"jobDeploymentStatus": "Waiting"}, "PENDING"),
    ({"jobDeploymentStatus": "Running"}, "PENDING"),                           # submitter not reported
    ({"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}, "RUNNING"),
    ({"jobDeploymentStatus": "Running", "jobStatus": "FAILED"}, "RUNNING"),    # may still be retried
    ({"jobDeploymentStatus": "Running", "jobStatus": "SUCCEEDED"}, "RUNNING"),  # submitter not done
    ({"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}, "SUCCEEDED"),
    ({"jobDeploymentStatus": "Complete", "jobStatus": "STOPPED"}, "STOPPED"),
    ({"jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "reason": "AppFailed"}, "FAILED"),
    ({"jobDeploymentStatus": "Failed", "jobStatus": "RUNNING", "reason": "DeadlineExceeded"}, "FAILED"),
    ({"jobDeploymentStatus": "Failed", "reason": "SubmissionFailed"}, "FAILED"),
    ({"jobDeploymentStatus": "ValidationFailed", "reason": "ValidationFailed"}, "FAILED"),
    ({"jobDeploymentStatus": "Retrying", "jobStatus": "FAILED"}, "RETRYING"),  # a retry, not the end
    ({"jobDeploymentStatus": "Suspending", "jobStatus": "RUNNING"}, "STOPPING"),
    ({"jobDeploymentStatus": "Suspended"}, "STOPPED"),                         # jobStatus cleared
    ({"jobDeploymentStatus": "SomethingNew"}, "SOMETHINGNEW"),                 # shown, never final
])
def test_job_state_reads_both_status_fields(status, state):
    assert job_state(status) == state
    final = status.get("jobDeploymentStatus") in ("Complete", "Failed", "ValidationFailed", "Suspended")
    assert (state in TERMINAL) == final


def _run_prestop(run_dir, wait_s: int = 30) -> tuple[subprocess.CompletedProcess, float]:
    """The worker's hook as rendered (or, for waits below the schema's minimum grace period,
    the same script with a shorter wait), run by a real shell."""
    if wait_s + PRESTOP_MARGIN_S >= 15:
        cfg = k8s_cfg(str(run_dir.parent), runs_pvc="p", termination_grace_s=wait_s + PRESTOP_MARGIN_S)
        _, rayjob = render_manifests(cfg, str(run_dir), SEED)
        command = containers(rayjob)[1][1]["lifecycle"]["preStop"]["exec"]["command"]
    else:
        command = ["/bin/sh", "-c", prestop_script(str(run_dir), wait_s)]
    start = time.monotonic()
    proc = subprocess.run(command, env={"HOSTNAME": "worker-7", "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=wait_s + 20)
    return proc, time.monotonic() - start


def test_prestop_hook_asks_the_run_to_stop_and_waits_for_the_save(tmp_path):
    run = tmp_path / "runs dir" / "it's-20260101-000000"  # quoting: a space and a quote
    run.mkdir(parents=True)
    (run / "launch.json").write_text("{}")
    saved = threading.Timer(1.0, lambda: (run / "logs" / "preempted.json").write_text("{}"))
    saved.start()
    proc, elapsed = _run_prestop(run)
    saved.join()
    assert proc.returncode == 0, proc.stderr
    assert stop_reason(run) == "pod preStop worker-7"
    assert 0.9 < elapsed < 10  # returned once the ranks saved, not after the 30 s limit
    assert sorted(p.name for p in (run / "logs").iterdir()) == ["preempted.json", "stop-request"]


def test_prestop_hook_gives_up_after_the_grace_period(tmp_path):
    run = tmp_path / "x-20260101-000000"
    run.mkdir()
    proc, elapsed = _run_prestop(run, wait_s=2)
    assert proc.returncode == 0 and 1.5 < elapsed < 8
    assert stop_reason(run) == "pod preStop worker-7"


def test_prestop_hook_leaves_a_finished_run_alone(tmp_path):
    run = tmp_path / "x-20260101-000000"
    run.mkdir()
    (run / "launch.json").write_text("{}")
    time.sleep(0.05)
    (run / "summary.json").write_text("{}")  # written after this launch started: it finished
    proc, elapsed = _run_prestop(run)
    assert proc.returncode == 0 and elapsed < 5
    assert stop_reason(run) is None
