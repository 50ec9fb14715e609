"""Preflight refuses a run its target cannot place (``launcher.run.placement``): Slurm allocations and
KubeRay worker pods as rendered, the local machine; plus the arithmetic they share. The ``ray``
target's check against a live cluster is in tests/integration/test_ray_target.py, the run-time
timeout in tests/integration/test_placement_timeout.py."""

from __future__ import annotations

import copy

import pytest

from cluster.kubernetes import KubernetesTarget
from cluster.local import LocalTarget
from cluster.ray_jobs import RayJobsTarget
from cluster.slurm import SlurmTarget
from launcher.config.load import validate_config
from launcher.core.errors import UserError
from launcher.run.placement import (
    NodeOffer,
    WorkerDemand,
    cpu_quantity,
    failure_limits,
    shortfall,
    slurm_allocation,
    workers_fitting,
)
from tests.helpers.ftl import ftl_in_process, tiny_config, write_config
from tests.helpers.golden import EXAMPLE_70B


def problems(target, cfg) -> dict[str, str]:
    """field -> message of every problem the target's preflight raises (none: {})."""
    try:
        target.preflight(cfg)
    except UserError as exc:
        return {p.where: p.message for p in exc.problems}
    return {}


def gpu_cfg(cluster: dict, workers: int = 4, gpus: float = 1, cpus: float = 1, **extra):
    cfg = copy.deepcopy(EXAMPLE_70B)
    cfg["resources"] = {"num_workers": workers, "gpus_per_worker": gpus, "cpus_per_worker": cpus}
    cfg["train"] = {**cfg["train"], "global_batch_size": None}
    return validate_config({**cfg, "cluster": cluster, **extra})


# ---------------------------------------------------------------- arithmetic


def test_a_worker_cannot_span_nodes():
    demand = WorkerDemand(workers=2, cpus=3, gpus=0)
    assert workers_fitting(NodeOffer(cpus=4), demand) == 1
    assert shortfall([NodeOffer(4), NodeOffer(4)], demand) is None  # one per node
    resource, why = shortfall([NodeOffer(6)], WorkerDemand(workers=2, cpus=4, gpus=0))
    assert resource == "CPU" and "need 8 CPUs; 6 offered" in why
    resource, why = shortfall([NodeOffer(8, 1)] * 2, WorkerDemand(workers=1, cpus=1, gpus=2))
    assert resource == "GPU" and "only 0 fit, as one worker cannot span nodes" in why


def test_fractional_gpus_pack():
    assert shortfall([NodeOffer(8, 1)], WorkerDemand(workers=4, cpus=1, gpus=0.25)) is None
    assert shortfall([NodeOffer(8, 1)], WorkerDemand(workers=5, cpus=1, gpus=0.25))[0] == "GPU"


def test_kubernetes_cpu_quantities():
    assert cpu_quantity("500m") == 0.5 and cpu_quantity("96") == 96 and cpu_quantity(2) == 2


def test_failure_limit_follows_the_timeout():
    assert failure_limits(validate_config(tiny_config())) == {"controller_failure_limit": 0}
    never = validate_config(tiny_config(resources={"placement_timeout_s": None}))
    assert failure_limits(never) == {"controller_failure_limit": -1}


def test_bounded_placement_sets_only_its_own_timeout_and_names_the_request(monkeypatch):
    """Without a cluster: the env var is there during ``fit`` and gone after; a value the user
    exported is kept and quoted; Ray's placement timeout becomes a JobFailed, other errors pass."""
    import os

    from ray.train import ControllerError
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

    from launcher.core.errors import JobFailed
    from launcher.run.placement import START_TIMEOUT_ENV, bounded_placement

    cfg = validate_config(tiny_config(resources={"num_workers": 2, "cpus_per_worker": 3,
                                                 "placement_timeout_s": 90}))
    monkeypatch.delenv(START_TIMEOUT_ENV, raising=False)
    with bounded_placement(cfg):
        assert os.environ[START_TIMEOUT_ENV] == "90"
    assert START_TIMEOUT_ENV not in os.environ
    named = r"within 90 s .* waited for 2 workers x \(3 CPU\) = \{CPU: 6\}"
    with pytest.raises(JobFailed, match=named), bounded_placement(cfg):
        raise ControllerError(WorkerGroupStartupTimeoutError(num_workers=2))
    with pytest.raises(ControllerError), bounded_placement(cfg):
        raise ControllerError(RuntimeError("not a placement problem"))
    monkeypatch.setenv(START_TIMEOUT_ENV, "30")
    with pytest.raises(JobFailed, match="within 30 s"), bounded_placement(cfg):
        assert os.environ[START_TIMEOUT_ENV] == "30"
        raise ControllerError(WorkerGroupStartupTimeoutError(num_workers=2))
    assert os.environ[START_TIMEOUT_ENV] == "30"


# ---------------------------------------------------------------- slurm


def test_slurm_allocation_is_read_from_the_rendered_script():
    script = "#!/bin/bash\n#SBATCH --nodes=3\n#SBATCH --cpus-per-task=12\n#SBATCH --gres=gpu:4\n"
    assert slurm_allocation(script) == [NodeOffer(12, 4)] * 3
    assert slurm_allocation("#SBATCH --nodes=2\n#SBATCH --cpus-per-task=5\n") == [NodeOffer(5, 0)] * 2


def test_slurm_four_gpu_workers_on_one_two_gpu_node():
    cfg = gpu_cfg({"target": "slurm", "slurm": {"nodes": 1, "gpus_per_node": 2}})
    found = problems(SlurmTarget(), cfg)
    assert found["cluster.slurm.gpus_per_node"] == (
        "4 workers x (1 CPU, 1 GPU) need 4 GPUs; 2 offered: the sbatch job asks for 1 node x (4 CPU, 2 GPU)")


def test_slurm_gpu_workers_without_gpus():
    cfg = gpu_cfg({"target": "slurm", "slurm": {"nodes": 2}})
    assert "need 4 GPUs; 0 offered" in problems(SlurmTarget(), cfg)["cluster.slurm.gpus_per_node"]


def test_slurm_cpus_per_node_too_small():
    cfg = gpu_cfg({"target": "slurm", "slurm": {"nodes": 2, "gpus_per_node": 2, "cpus_per_node": 8}},
                  cpus=6)
    message = problems(SlurmTarget(), cfg)["cluster.slurm.cpus_per_node"]
    assert message.startswith("4 workers x (6 CPU, 1 GPU) need 24 CPUs; 16 offered")


def test_slurm_fractional_cpus_rounded_down_by_the_script_are_caught():
    """3 workers x 0.5 CPU on one node: the script asks for int(1.5) = 1 CPU, Ray needs 1.5."""
    cfg = validate_config(tiny_config(resources={"num_workers": 3, "cpus_per_worker": 0.5},
                                      cluster={"target": "slurm"}))
    assert "need 1.5 CPUs; 1 offered" in problems(SlurmTarget(), cfg)["cluster.slurm.cpus_per_node"]


def test_slurm_allocation_that_fits_passes():
    cfg = gpu_cfg({"target": "slurm", "slurm": {"nodes": 2, "gpus_per_node": 2}})
    assert "cluster.slurm.gpus_per_node" not in problems(SlurmTarget(), cfg)
    assert problems(SlurmTarget(), validate_config({**EXAMPLE_70B, "cluster": {
        "target": "slurm", "slurm": {"nodes": 8, "gpus_per_node": 8, "cpus_per_node": 96}}})) == {}


def test_slurm_unplaceable_config_exits_2_before_anything_is_written(tmp_path):
    cfg = tiny_config(resources={"num_workers": 4, "gpus_per_worker": 1},
                      cluster={"target": "slurm", "slurm": {"nodes": 1, "gpus_per_node": 2}})
    proc = ftl_in_process(["run", write_config(tmp_path, cfg), "--dry-run"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert ("cluster.slurm.gpus_per_node: 4 workers x (1 CPU, 1 GPU) need 4 GPUs; 2 offered: the sbatch "
            "job asks for 1 node x (4 CPU, 2 GPU)") in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- ray (the live check: test_ray_target.py)


def test_ray_resource_check_against_nodes():
    cfg = gpu_cfg({"target": "ray", "ray": {"address": "http://head:8265"}}, workers=3, gpus=1, cpus=8)
    assert RayJobsTarget.resource_problem(cfg, [NodeOffer(16, 2), NodeOffer(8, 2)]) is None
    problem = RayJobsTarget.resource_problem(cfg, [NodeOffer(20, 2), NodeOffer(6, 2)])
    assert problem.where == "resources.cpus_per_worker"  # 26 CPUs in all, but 6 on the second node
    assert problem.message == ("3 workers x (8 CPU, 1 GPU): only 2 fit, as one worker cannot span nodes: "
                               "the Ray cluster has 2 nodes with 26 CPUs and 4 GPUs in all")
    gpu = RayJobsTarget.resource_problem(cfg, [NodeOffer(64, 2)])
    assert gpu.where == "resources.gpus_per_worker" and "need 3 GPUs; 2 offered" in gpu.message


def test_forward_secrets_true_is_refused():
    cfg = validate_config(tiny_config(cluster={"target": "ray", "ray": {"address": "http://head:8265",
                                                                          "forward_secrets": True}}))
    message = problems(RayJobsTarget(), cfg)["cluster.ray.forward_secrets"]
    assert message.startswith("secrets are no longer sent in the job's runtime_env")


# ---------------------------------------------------------------- kubernetes


def k8s(**fields) -> dict:
    if "cluster_selector" not in fields:  # a RayCluster ftl creates needs the runs PVC
        fields = {"runs_pvc": "runs", **fields}
    return {"target": "kubernetes", "kubernetes": fields}


def test_kubernetes_pods_with_fewer_gpus_than_workers_need():
    """8 workers x 2 GPUs: replicas are workers / gpus_per_pod = 1 pod of 8 GPUs, which holds 4."""
    cfg = gpu_cfg(k8s(gpus_per_pod=8), workers=8, gpus=2, checkpoint={"dir": "/runs"})
    message = problems(KubernetesTarget(), cfg)["cluster.kubernetes.gpus_per_pod"]
    assert message == ("8 workers x (1 CPU, 2 GPU) need 16 GPUs; 8 offered: the RayJob's cluster has "
                       "1 node x (8 CPU, 8 GPU) for workers")


def test_kubernetes_gpu_workers_on_cpu_pods():
    cfg = gpu_cfg(k8s(), checkpoint={"dir": "/runs"})
    assert "need 4 GPUs; 0 offered" in problems(KubernetesTarget(), cfg)["cluster.kubernetes.gpus_per_pod"]


def test_kubernetes_cpus_per_pod_too_small():
    cfg = gpu_cfg(k8s(gpus_per_pod=2, cpus_per_pod="500m"), cpus=1, checkpoint={"dir": "/runs"})
    message = problems(KubernetesTarget(), cfg)["cluster.kubernetes.cpus_per_pod"]
    assert message == ("4 workers x (1 CPU, 1 GPU) need 4 CPUs; 2 offered: the RayJob's cluster has "
                       "2 nodes x (1 CPU, 2 GPU) for workers")  # KubeRay rounds 500m up to 1 CPU


def test_kubernetes_fitting_pods_and_existing_clusters_pass():
    cfg = gpu_cfg(k8s(gpus_per_pod=2), checkpoint={"dir": "/runs"})
    assert problems(KubernetesTarget(), cfg) == {}
    shared = gpu_cfg(k8s(cluster_selector={"ray.io/cluster": "shared"}), checkpoint={"dir": "/runs"})
    assert problems(KubernetesTarget(), shared) == {}  # its pods are not ours to describe


# ---------------------------------------------------------------- local


def test_local_cpu_request_beyond_num_cpus():
    cfg = validate_config(tiny_config(resources={"num_workers": 3, "cpus_per_worker": 2},
                                      cluster={"local": {"num_cpus": 4}}))
    expected = "3 workers x 2 CPUs need 6 CPUs; the local Ray has 4"
    assert problems(LocalTarget(), cfg) == {"resources": expected}


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks a machine without CUDA")
def test_local_gpus_without_cuda():
    cfg = validate_config(tiny_config(resources={"num_workers": 1, "gpus_per_worker": 1}))
    assert "no CUDA device" in problems(LocalTarget(), cfg)["resources.gpus_per_worker"]
