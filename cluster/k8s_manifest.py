"""Render the KubeRay ``RayJob`` (and the ConfigMap that seeds the run folder).

Layout: one head pod (no training work: ``num-cpus: 0``) and a worker group whose replicas
hold the training ranks (``gpus_per_pod`` GPUs each, or one rank per pod on CPU). Every pod
mounts ``/dev/shm`` as a memory emptyDir and the runs PVC at ``runs_mount`` (default
``checkpoint.dir``); secrets come from ``secretKeyRef`` and never appear in the manifest's
values. The code comes from the image (ftl installed); the run's config comes from a ConfigMap
mounted at ``/ftl-run``, owned by the RayJob (``owner_reference``) so Kubernetes deletes it
with the job.

Preemption (``launcher.core.preemption``): every container has a ``preStop`` hook that writes
``<run>/logs/stop-request`` and waits for the ranks to save, inside
``terminationGracePeriodSeconds``; the driver then exits 75 and the RayJob's ``backoffLimit``
makes KubeRay resubmit it on a new RayCluster, which resumes from the run folder on the PVC.

KubeRay facts relied on (ray-operator, commit feeaf72): ``utils/constant.go``
``MaxRayJobNameLength = 53 - 6``; ``utils/validation.go`` ``ValidateRayJobSpec`` refuses
``backoffLimit > 0`` with ``clusterSelector``, ``ttlSecondsAfterFinished > 0`` without
``shutdownAfterJobFinishes``, and ``suspend`` in either of those two modes.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import shlex
from typing import Any

from launcher.core.errors import Problem, UserError
from launcher.core.preemption import PREEMPTED, STOP_REQUEST

GROUP, VERSION, PLURAL = "ray.io", "v1", "rayjobs"
SEED_MOUNT = "/ftl-run"
#: KubeRay refuses longer RayJob names: it appends "-xxxxx" for the RayCluster, whose names
#: must leave room for "-serve-svc" within 63 characters (utils/constant.go).
MAX_RAYJOB_NAME = 47
#: hex digits of the launch hash that makes every RayJob name unique
HASH_LEN = 8
#: the preStop hook stops waiting this long before the grace period ends, so that Ray's
#: processes still get SIGTERM and a few seconds to exit before the kubelet's SIGKILL
PRESTOP_MARGIN_S = 10
#: retries when ftl creates the RayCluster (a preempted run costs one)
DEFAULT_BACKOFF_LIMIT = 2


def rayjob_name(run_dir: str, launch_id: str | None) -> str:
    """A DNS-1035 name, at most ``MAX_RAYJOB_NAME`` long, unique per run folder and launch.

    The readable part is the run folder's name cut to fit; the suffix is a hash of the full
    folder path and the launch id, so two long run names that share a prefix, and two
    launches (``--resume``) of one folder, never get the same RayJob, and ``ftl stop`` on one
    folder never acts on another folder's job."""
    digest = hashlib.sha256(f"{run_dir.rstrip('/')}\n{launch_id or ''}".encode()).hexdigest()[:HASH_LEN]
    slug = re.sub(r"[^a-z0-9-]+", "-", run_dir.rstrip("/").rsplit("/", 1)[-1].lower()).strip("-")
    if not slug[:1].isalpha():  # DNS-1035: starts with a letter
        slug = f"ftl-{slug}".rstrip("-")
    slug = slug[: MAX_RAYJOB_NAME - HASH_LEN - 1].rstrip("-")
    return f"{slug}-{digest}"


def owner_reference(rayjob: dict[str, Any]) -> dict[str, Any]:
    """What makes Kubernetes' garbage collector delete a ConfigMap with its RayJob (the RayJob
    as created by the API server: ``uid`` is only known then)."""
    meta = rayjob["metadata"]
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "RayJob", "name": meta["name"], "uid": meta["uid"]}


def backoff_limit(k: Any) -> int:
    """The RayJob's ``backoffLimit``: the configured value, else 2 on a cluster ftl creates and
    0 on an existing one (KubeRay refuses retries with ``clusterSelector``)."""
    if k.backoff_limit is not None:
        return k.backoff_limit
    return 0 if k.cluster_selector else DEFAULT_BACKOFF_LIMIT


def runs_mount(cfg: Any) -> str:
    """Where the runs PVC is mounted in every pod."""
    return posixpath.normpath(cfg.cluster.kubernetes.runs_mount or cfg.checkpoint.dir)


def config_problems(cfg: Any) -> list[Problem]:
    """What makes a config unusable on Kubernetes, whatever the run folder."""
    k = cfg.cluster.kubernetes
    problems = []
    if not cfg.checkpoint.dir.startswith("/"):
        problems.append(Problem("checkpoint.dir", "must be an absolute path on the runs PVC for kubernetes",
                                "e.g. checkpoint.dir: /runs with cluster.kubernetes.runs_pvc: my-runs"))
    if k.cluster_selector:
        if k.runs_pvc:
            problems.append(Problem("cluster.kubernetes.runs_pvc",
                                    "cannot be mounted into an existing RayCluster (cluster_selector)",
                                    "remove it; that cluster must already mount shared storage at "
                                    "checkpoint.dir on every pod"))
        if k.backoff_limit:
            problems.append(Problem("cluster.kubernetes.backoff_limit",
                                    "KubeRay cannot retry a RayJob on an existing RayCluster",
                                    "remove backoff_limit, or remove cluster_selector to let ftl "
                                    "create the cluster"))
    elif not k.runs_pvc:
        problems.append(Problem("cluster.kubernetes.runs_pvc",
                                "required: without it the run folder (checkpoints, metrics, logs) is "
                                "written to the head pod's own disk, which the workers cannot see and "
                                "which is lost with the pod",
                                "create a ReadWriteMany PersistentVolumeClaim and name it here; it is "
                                "mounted at checkpoint.dir (or cluster.kubernetes.runs_mount) in every pod"))
    return problems


def run_dir_problems(cfg: Any, run_dir: str) -> list[Problem]:
    """The run folder must lie on the PVC as the pods mount it, or only this machine sees it."""
    k = cfg.cluster.kubernetes
    if k.cluster_selector or not k.runs_pvc or not cfg.checkpoint.dir.startswith("/"):
        return []  # nothing ftl mounts, or already reported by config_problems
    mount, parent = runs_mount(cfg), posixpath.dirname(run_dir.rstrip("/"))
    same = posixpath.normpath(parent) == posixpath.normpath(cfg.checkpoint.dir)
    where = "checkpoint.dir" if same else "--runs-dir"
    if run_dir.startswith("/") and posixpath.commonpath([mount, posixpath.normpath(run_dir)]) == mount:
        return []
    return [Problem(where, f"the run folder {run_dir} is outside {mount}, where cluster.kubernetes."
                           f"runs_pvc ({k.runs_pvc}) is mounted: the pods cannot see it",
                    f"use a --runs-dir under {mount}, or set cluster.kubernetes.runs_mount")]


def check(cfg: Any, run_dir: str | None = None) -> None:
    """Raise one UserError with every problem of the config (and of the run folder, if given)."""
    problems = config_problems(cfg) + (run_dir_problems(cfg, run_dir) if run_dir else [])
    if problems:
        raise UserError(problems)


def prestop_script(run_dir: str, wait_s: int) -> str:
    """The preStop hook: ask the run to save and stop (``launcher.core.preemption``), then wait for
    the ranks' ``preempted.json`` (at most ``wait_s``) so the pod is not killed mid-save.

    Nothing is asked of a run that already finished (``summary.json`` newer than this launch's
    ``launch.json``): KubeRay deletes the cluster after every job, and a finished run's pods
    should neither wait out the grace period nor leave a stop request in its folder. The request
    is written to a temporary name and renamed, so a rank never reads half of it."""
    logs = f"{run_dir.rstrip('/')}/logs"
    return "\n".join([
        f"R={shlex.quote(run_dir.rstrip('/'))}; L={shlex.quote(logs)}",
        'finished() { [ -f "$R/summary.json" ] && [ "$R/summary.json" -nt "$R/launch.json" ]; }',
        "finished && exit 0",
        f'mkdir -p "$L" && echo "pod preStop $HOSTNAME" > "$L/.{STOP_REQUEST}.$$" '
        f'&& mv -f "$L/.{STOP_REQUEST}.$$" "$L/{STOP_REQUEST}"',
        "i=0",
        f'while [ "$i" -lt {int(wait_s)} ] && [ ! -f "$L/{PREEMPTED}" ] && ! finished; '
        'do sleep 1; i=$((i + 1)); done',
        "exit 0",
    ])


def _pod_template(cfg: Any, container: str, resources: dict[str, Any], run_dir: str,
                  seed_cm: str | None) -> dict[str, Any]:
    k = cfg.cluster.kubernetes
    env = [{"name": "RAY_TRAIN_ENABLE_PRINT_PATCH", "value": "0"},
           {"name": "TOKENIZERS_PARALLELISM", "value": "false"}]
    for var, ref in (("WANDB_API_KEY", k.wandb_secret), ("HF_TOKEN", k.hf_secret)):
        if ref is not None:
            env.append({"name": var, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    mounts = [{"name": "dshm", "mountPath": "/dev/shm"},
              {"name": "runs", "mountPath": runs_mount(cfg)}]
    shm = {"medium": "Memory", "sizeLimit": k.shm_size}
    volumes: list[dict[str, Any]] = [{"name": "dshm", "emptyDir": shm},
                                     {"name": "runs", "persistentVolumeClaim": {"claimName": k.runs_pvc}}]
    if seed_cm:
        mounts.append({"name": "ftl-run", "mountPath": SEED_MOUNT, "readOnly": True})
        volumes.append({"name": "ftl-run", "configMap": {"name": seed_cm}})
    wait_s = max(0, k.termination_grace_s - PRESTOP_MARGIN_S)
    prestop = {"exec": {"command": ["/bin/sh", "-c", prestop_script(run_dir, wait_s)]}}
    spec: dict[str, Any] = {
        "containers": [{"name": container, "image": k.image, "env": env, "resources": resources,
                        "volumeMounts": mounts, "lifecycle": {"preStop": prestop}}],
        "volumes": volumes,
        "terminationGracePeriodSeconds": k.termination_grace_s,
    }
    if k.node_selector:
        spec["nodeSelector"] = dict(k.node_selector)
    if k.tolerations:
        spec["tolerations"] = [dict(t) for t in k.tolerations]
    if k.service_account:
        spec["serviceAccountName"] = k.service_account
    return {"spec": spec}


def render_manifests(cfg: Any, run_dir: str, seed: dict[str, str],
                     launch_id: str | None = None) -> list[dict[str, Any]]:
    """[ConfigMap, RayJob] for this run. The ConfigMap has no owner yet: ``owner_reference``
    of the created RayJob is added when it is submitted."""
    check(cfg, run_dir)
    k = cfg.cluster.kubernetes
    name = rayjob_name(run_dir, launch_id)
    labels = {"app.kubernetes.io/managed-by": "ftl", "ftl/run": name}
    if k.queue:
        labels["kueue.x-k8s.io/queue-name"] = k.queue
    configmap = {"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {"name": f"{name}-seed", "namespace": k.namespace, "labels": labels},
                 "data": dict(seed)}
    spec: dict[str, Any] = {
        "entrypoint": f"python -m launcher.run.driver {shlex.quote(run_dir)} --seed {SEED_MOUNT}",
        "backoffLimit": backoff_limit(k),
        "submissionMode": "K8sJobMode",
    }
    if k.active_deadline_seconds:
        spec["activeDeadlineSeconds"] = k.active_deadline_seconds
    if k.cluster_selector:  # the cluster is not ours to delete: no shutdown, hence no TTL
        spec["clusterSelector"] = dict(k.cluster_selector)
    else:
        spec["shutdownAfterJobFinishes"] = k.shutdown_after_job_finishes
        if k.shutdown_after_job_finishes:  # KubeRay refuses a TTL without the shutdown
            spec["ttlSecondsAfterFinished"] = k.ttl_seconds_after_finished
        spec["rayClusterSpec"] = _cluster_spec(cfg, run_dir, f"{name}-seed")
    rayjob = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "RayJob",
              "metadata": {"name": name, "namespace": k.namespace, "labels": labels}, "spec": spec}
    return [configmap, rayjob]


def _cluster_spec(cfg: Any, run_dir: str, seed_cm: str) -> dict[str, Any]:
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
        # Ray's token auth: KubeRay makes a Secret with a token per RayCluster and puts it in
        # every Ray pod and the submitter (raycluster_types.go AuthOptions; rayjob_controller.go
        # SetContainerTokenAuthEnvVars). The dashboard listens on every interface because the
        # submitter pod reaches it through a Service; without the token it answers nothing.
        "authOptions": {"mode": "token"},
        "headGroupSpec": {
            "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
            "template": _pod_template(cfg, "ray-head", head_res, run_dir, seed_cm),
        },
        "workerGroupSpecs": [{
            "groupName": "gpu-workers" if k.gpus_per_pod else "cpu-workers",
            "replicas": replicas, "minReplicas": replicas, "maxReplicas": replicas,
            "rayStartParams": {},
            "template": _pod_template(cfg, "ray-worker", worker_res, run_dir, None),
        }],
    }
