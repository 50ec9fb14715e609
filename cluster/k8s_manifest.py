"""Render the KubeRay ``RayJob`` (and the ConfigMap that seeds the run folder).

Layout: one head pod (no training work: ``num-cpus: 0``) and a worker group whose replicas
hold the training ranks (``gpus_per_pod`` GPUs each, or one rank per pod on CPU). Every pod
mounts ``/dev/shm`` as a memory emptyDir and the runs PVC at ``checkpoint.dir``; secrets
come from ``secretKeyRef`` and never appear in the manifest's values. The code comes from the
image (ftl installed); the run's config comes from a ConfigMap mounted at ``/ftl-run``.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from launcher.errors import Problem, UserError

GROUP, VERSION, PLURAL = "ray.io", "v1", "rayjobs"
SEED_MOUNT = "/ftl-run"


def k8s_name(name: str) -> str:
    """A DNS-1123 name for the RayJob (KubeRay derives longer names from it: keep it short)."""
    text = re.sub(r"[^a-z0-9-]", "-", name.lower()).strip("-")
    return (text[:40].rstrip("-") or "ftl")


def _pod_template(cfg: Any, container: str, resources: dict[str, Any], run_dir_parent: str,
                  seed_cm: str | None) -> dict[str, Any]:
    k = cfg.cluster.kubernetes
    env = [{"name": "RAY_TRAIN_ENABLE_PRINT_PATCH", "value": "0"},
           {"name": "TOKENIZERS_PARALLELISM", "value": "false"}]
    for var, ref in (("WANDB_API_KEY", k.wandb_secret), ("HF_TOKEN", k.hf_secret)):
        if ref is not None:
            env.append({"name": var, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    mounts = [{"name": "dshm", "mountPath": "/dev/shm"}]
    shm = {"medium": "Memory", "sizeLimit": k.shm_size}
    volumes: list[dict[str, Any]] = [{"name": "dshm", "emptyDir": shm}]
    if k.runs_pvc:
        mounts.append({"name": "runs", "mountPath": run_dir_parent})
        volumes.append({"name": "runs", "persistentVolumeClaim": {"claimName": k.runs_pvc}})
    if seed_cm:
        mounts.append({"name": "ftl-run", "mountPath": SEED_MOUNT, "readOnly": True})
        volumes.append({"name": "ftl-run", "configMap": {"name": seed_cm}})
    spec: dict[str, Any] = {
        "containers": [{"name": container, "image": k.image, "env": env, "resources": resources,
                        "volumeMounts": mounts}],
        "volumes": volumes,
    }
    if k.node_selector:
        spec["nodeSelector"] = dict(k.node_selector)
    if k.tolerations:
        spec["tolerations"] = [dict(t) for t in k.tolerations]
    if k.service_account:
        spec["serviceAccountName"] = k.service_account
    return {"spec": spec}


def render_manifests(cfg: Any, run_dir: str, seed: dict[str, str]) -> list[dict[str, Any]]:
    """[ConfigMap, RayJob] for this run."""
    k = cfg.cluster.kubernetes
    name = k8s_name(run_dir.rstrip("/").rsplit("/", 1)[-1])
    parent = cfg.checkpoint.dir
    if not parent.startswith("/"):
        raise UserError(Problem("checkpoint.dir", "must be an absolute path on the runs PVC for kubernetes",
                                "e.g. checkpoint.dir: /runs with cluster.kubernetes.runs_pvc: my-runs"))
    labels = {"app.kubernetes.io/managed-by": "ftl", "ftl/run": name}
    if k.queue:
        labels["kueue.x-k8s.io/queue-name"] = k.queue
    configmap = {"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {"name": f"{name}-seed", "namespace": k.namespace, "labels": labels},
                 "data": dict(seed)}
    spec: dict[str, Any] = {
        "entrypoint": f"python -m launcher.driver {shlex.quote(run_dir)} --seed {SEED_MOUNT}",
        "shutdownAfterJobFinishes": k.shutdown_after_job_finishes,
        "ttlSecondsAfterFinished": k.ttl_seconds_after_finished,
        "backoffLimit": k.backoff_limit,
        "submissionMode": "K8sJobMode",
    }
    if k.active_deadline_seconds:
        spec["activeDeadlineSeconds"] = k.active_deadline_seconds
    if k.cluster_selector:
        spec["clusterSelector"] = dict(k.cluster_selector)
        spec.pop("shutdownAfterJobFinishes")  # the cluster is not ours to delete
    else:
        spec["rayClusterSpec"] = _cluster_spec(cfg, parent, f"{name}-seed")
    rayjob = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "RayJob",
              "metadata": {"name": name, "namespace": k.namespace, "labels": labels}, "spec": spec}
    return [configmap, rayjob]


def _cluster_spec(cfg: Any, parent: str, seed_cm: str) -> dict[str, Any]:
    k = cfg.cluster.kubernetes
    res = cfg.resources
    if k.gpus_per_pod:
        if res.num_workers % k.gpus_per_pod:
            raise UserError(Problem("resources.num_workers",
                                    f"{res.num_workers} workers do not fill pods of {k.gpus_per_pod} GPUs",
                                    "use a multiple of cluster.kubernetes.gpus_per_pod"))
        replicas, per_pod = res.num_workers // k.gpus_per_pod, k.gpus_per_pod
    else:
        replicas, per_pod = res.num_workers, 1
    cpus = k.cpus_per_pod or str(max(1, int(per_pod * res.cpus_per_worker)))
    worker_res: dict[str, Any] = {"requests": {"cpu": cpus, "memory": k.memory_per_pod},
                                  "limits": {"cpu": cpus, "memory": k.memory_per_pod}}
    if k.gpus_per_pod:
        worker_res["requests"]["nvidia.com/gpu"] = str(k.gpus_per_pod)
        worker_res["limits"]["nvidia.com/gpu"] = str(k.gpus_per_pod)
    head_res = {"requests": {"cpu": k.head_cpus, "memory": k.head_memory},
                "limits": {"cpu": k.head_cpus, "memory": k.head_memory}}
    return {
        "rayVersion": k.ray_version,
        "headGroupSpec": {
            "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
            "template": _pod_template(cfg, "ray-head", head_res, parent, seed_cm),
        },
        "workerGroupSpecs": [{
            "groupName": "gpu-workers" if k.gpus_per_pod else "cpu-workers",
            "replicas": replicas, "minReplicas": replicas, "maxReplicas": replicas,
            "rayStartParams": {},
            "template": _pod_template(cfg, "ray-worker", worker_res, parent, None),
        }],
    }

