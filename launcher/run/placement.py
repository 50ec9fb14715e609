"""Will the run's workers fit where it is sent, and what happens if they do not.

Two halves, for one failure: a config that asks for more than the target offers (4 workers x
1 GPU on one 2-GPU Slurm node) is accepted by Ray, whose Train v2 controller then retries the
worker-group start every 60 s for ever (``FailureConfig.controller_failure_limit`` defaults to
-1) until the job's time limit.

- Before submitting, each target compares what the run needs (``WorkerDemand``) with what it
  offers (``NodeOffer`` per node: a Slurm allocation, a running Ray cluster's nodes, the
  rendered KubeRay worker pods) and raises an exit-2 ``UserError`` naming the fields.
- At run time, ``resources.placement_timeout_s`` bounds the wait (``bounded_placement``), for
  what no preflight can see: a busy cluster, a node that died, an autoscaler that never adds
  the nodes. Ray Train v2 (2.60) has exactly two knobs for it, both in its source:

  * ``RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S`` (``ray/train/v2/_internal/constants.py``,
    default 60): ``WorkerGroup._start_impl`` waits this long for the placement group
    (``pg_handle.wait(self._worker_group_start_timeout_s)``), then raises
    ``WorkerGroupStartupTimeoutError``. It is read from the controller actor's environment,
    which Train fills from the driver's ``os.environ`` (``get_env_vars_to_propagate`` in
    ``DataParallelTrainer._initialize_and_run_controller``): no argument can carry it.
  * ``FailureConfig.controller_failure_limit`` (``ray/train/v2/api/config.py``, default -1):
    ``DefaultFailurePolicy`` treats that timeout as a retryable controller error and retries
    while the count is within the limit; -1 is unlimited. With 0 the first timeout ends ``fit``
    with a ``ControllerError`` whose ``controller_failure`` is the timeout.

  So one attempt waits the whole ``placement_timeout_s`` and is not retried; the error that
  reaches the user names the resources it waited for and what the cluster has.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from launcher.core.errors import JobFailed, Problem

START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
_EPS = 1e-9


@dataclass(frozen=True)
class WorkerDemand:
    """What one Ray Train worker asks for, times how many."""

    workers: int
    cpus: float
    gpus: float

    def bundle(self) -> dict[str, float]:
        return {"CPU": self.cpus, **({"GPU": self.gpus} if self.gpus else {})}

    def describe(self) -> str:
        gpus = f", {self.gpus:g} GPU" if self.gpus else ""
        return f"{self.workers} worker{'s' if self.workers != 1 else ''} x ({self.cpus:g} CPU{gpus})"


@dataclass(frozen=True)
class NodeOffer:
    """The CPUs and GPUs one node (Slurm node, Ray node, worker pod) gives Ray."""

    cpus: float
    gpus: float = 0


def worker_demand(cfg: Any) -> WorkerDemand:
    r = cfg.resources
    return WorkerDemand(r.num_workers, r.cpus_per_worker, r.gpus_per_worker)


def workers_fitting(node: NodeOffer, demand: WorkerDemand) -> int:
    """Workers of ``demand`` one node holds: a worker's bundle cannot span nodes."""
    by_cpu = math.floor(node.cpus / demand.cpus + _EPS)
    by_gpu = math.floor(node.gpus / demand.gpus + _EPS) if demand.gpus else by_cpu
    return max(0, min(by_cpu, by_gpu))


def shortfall(nodes: list[NodeOffer], demand: WorkerDemand) -> tuple[str, str] | None:
    """(the resource that runs out, why) when ``demand`` cannot be placed on ``nodes``, else None.
    GPUs first, since a GPU shortfall is the usual mistake, then CPUs in total, then a worker
    bigger than any one node."""
    total_cpus = sum(n.cpus for n in nodes)
    total_gpus = sum(n.gpus for n in nodes)
    if demand.gpus and demand.workers * demand.gpus > total_gpus + _EPS:
        return "GPU", (f"{demand.describe()} need {demand.workers * demand.gpus:g} GPUs; "
                       f"{total_gpus:g} offered")
    if demand.workers * demand.cpus > total_cpus + _EPS:
        return "CPU", (f"{demand.describe()} need {demand.workers * demand.cpus:g} CPUs; "
                       f"{total_cpus:g} offered")
    fit = sum(workers_fitting(n, demand) for n in nodes)
    if fit < demand.workers:
        by_gpu = sum(math.floor(n.gpus / demand.gpus + _EPS) for n in nodes) if demand.gpus else fit + 1
        return "GPU" if by_gpu <= fit else "CPU", (
            f"{demand.describe()}: only {fit} fit, as one worker cannot span nodes")
    return None


def describe_nodes(nodes: list[NodeOffer]) -> str:
    """'2 nodes x (8 CPU, 4 GPU)' for uniform nodes, else the totals."""
    if not nodes:
        return "no nodes"
    if len(set(nodes)) == 1:
        n = nodes[0]
        return f"{len(nodes)} node{'s' if len(nodes) > 1 else ''} x ({n.cpus:g} CPU, {n.gpus:g} GPU)"
    return (f"{len(nodes)} nodes with {sum(n.cpus for n in nodes):g} CPUs and "
            f"{sum(n.gpus for n in nodes):g} GPUs in all")


def offer_problem(demand: WorkerDemand, nodes: list[NodeOffer], fields: dict[str, str], offered: str,
                  hint: str) -> Problem | None:
    """A Problem when ``demand`` does not fit ``nodes``, at ``fields[resource]`` for the resource
    that runs out ('CPU' or 'GPU'); ``offered`` names what the nodes are."""
    found = shortfall(nodes, demand)
    if found is None:
        return None
    resource, why = found
    return Problem(fields[resource], f"{why}: {offered}", hint)


def slurm_allocation(script: str) -> list[NodeOffer]:
    """The nodes an sbatch script asks for, read from its ``#SBATCH`` lines as rendered: the
    script starts Ray with ``--num-cpus=$SLURM_CPUS_PER_TASK`` (one task per node) and
    ``--num-gpus`` equal to the ``gres`` count, so these are what Ray offers the workers."""
    def directive(flag: str, default: str) -> str:
        found = re.search(rf"^#SBATCH --{flag}=(\S+)$", script, re.MULTILINE)
        return found.group(1) if found else default

    nodes = int(directive("nodes", "1"))
    cpus = float(directive("cpus-per-task", "1"))
    gres = re.fullmatch(r"gpu(?::[^:]+)?:(\d+)", directive("gres", "gpu:0"))
    return [NodeOffer(cpus, float(gres.group(1)) if gres else 0.0)] * nodes


def kuberay_workers(manifests: list[dict[str, Any]]) -> list[NodeOffer] | None:
    """The worker pods a rendered RayJob brings up (None when it runs on an existing cluster,
    ``clusterSelector``: nothing to compare). KubeRay starts Ray in a pod with the container's
    CPU limit rounded up and its ``nvidia.com/gpu`` limit, unless ``rayStartParams`` say
    otherwise; the head pod is given ``num-cpus: 0`` and holds no worker."""
    rayjob = next(m for m in manifests if m.get("kind") == "RayJob")
    spec = rayjob["spec"].get("rayClusterSpec")
    if spec is None:
        return None
    pods: list[NodeOffer] = []
    for group in spec.get("workerGroupSpecs", []):
        params = group.get("rayStartParams", {})
        limits = group["template"]["spec"]["containers"][0].get("resources", {}).get("limits", {})
        cpus = float(params.get("num-cpus", math.ceil(cpu_quantity(limits.get("cpu", "0")))))
        gpus = float(params.get("num-gpus", limits.get("nvidia.com/gpu", 0)))
        pods += [NodeOffer(cpus, gpus)] * int(group.get("replicas", 0))
    head = spec["headGroupSpec"]
    head_cpus = head.get("rayStartParams", {}).get("num-cpus")
    if head_cpus not in (None, "0", 0):
        pods.append(NodeOffer(float(head_cpus), 0.0))
    return pods


def kuberay_problem(cfg: Any, manifests: list[dict[str, Any]]) -> Problem | None:
    """The run's workers against the worker pods of its rendered RayJob (online RL: GPUs in all)."""
    pods = kuberay_workers(manifests)
    if pods is None:  # cluster_selector: an existing RayCluster, not described here
        return None
    offered = f"the RayJob's cluster has {describe_nodes(pods)} for workers"
    hint = ("set cluster.kubernetes.gpus_per_pod / cpus_per_pod to what each pod's workers need, "
            "or change resources.num_workers / gpus_per_worker / cpus_per_worker")
    from launcher.plan.roles import has_roles, rl_gpus

    if has_roles(cfg):
        need, have = rl_gpus(cfg), sum(p.gpus for p in pods)
        if need > have + _EPS:
            return Problem("cluster.kubernetes.gpus_per_pod", f"the roles need {need:g} GPUs; {offered}",
                           hint)
        return None
    return offer_problem(worker_demand(cfg), pods, {"CPU": "cluster.kubernetes.cpus_per_pod",
                                                    "GPU": "cluster.kubernetes.gpus_per_pod"}, offered, hint)


def cpu_quantity(text: str | int | float) -> float:
    """A Kubernetes CPU quantity ('8', '500m', 2) in CPUs."""
    text = str(text).strip()
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


# ---------------------------------------------------------------- at run time


#: one start attempt of an elastic run's worker group: longer than the 20 s between two looks
#: of Ray's autoscaling coordinator at the cluster, so that the next attempt sizes the group by
#: the cluster as it is now (right after a node is lost, the coordinator still counts it)
ELASTIC_START_ATTEMPT_S = 30.0


def start_timeout(cfg: Any) -> float | None:
    """How long one worker-group start waits for placement (None: Ray's default)."""
    timeout = cfg.resources.placement_timeout_s
    if not timeout:
        return None
    return min(timeout, ELASTIC_START_ATTEMPT_S) if cfg.resources.min_workers else timeout


def failure_limits(cfg: Any) -> dict[str, int]:
    """Keyword arguments for ``ray.train.FailureConfig``: with a placement timeout, a worker
    group that cannot start is not retried (Ray's default -1 retries it for ever); an elastic
    run retries short attempts until the whole timeout is spent."""
    timeout = cfg.resources.placement_timeout_s
    if not timeout:
        return {"controller_failure_limit": -1}
    if cfg.resources.min_workers:
        return {"controller_failure_limit": max(1, math.ceil(timeout / ELASTIC_START_ATTEMPT_S) - 1)}
    return {"controller_failure_limit": 0}


@contextlib.contextmanager
def bounded_placement(cfg: Any) -> Iterator[None]:
    """Around ``trainer.fit()``: the worker-group start waits at most
    ``resources.placement_timeout_s``, and its timeout becomes a ``JobFailed`` naming what was
    asked for and what the cluster has.

    Ray reads the timeout only from the driver's ``os.environ`` (module docstring), so it is set
    for the duration of ``fit`` and removed after. The driver process runs one trainer at a time
    (``python -m launcher.run.driver``, a sweep trial, ``ftl run`` on the local target) and submits
    nothing else meanwhile. A value the user exported is left as it is, and used."""
    from ray.train import ControllerError

    timeout = cfg.resources.placement_timeout_s
    exported = os.environ.get(START_TIMEOUT_ENV)
    ours = bool(timeout) and exported is None
    if ours:
        os.environ[START_TIMEOUT_ENV] = f"{start_timeout(cfg):g}"
    try:
        yield
    except ControllerError as exc:
        if not is_placement_timeout(exc):
            raise
        raise JobFailed(placement_message(cfg, float(exported or timeout or 0))) from None
    finally:
        if ours:
            os.environ.pop(START_TIMEOUT_ENV, None)


def is_placement_timeout(exc: BaseException) -> bool:
    """A ``ControllerError`` caused by the worker group not being placed in time."""
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

    return isinstance(getattr(exc, "controller_failure", None), WorkerGroupStartupTimeoutError)


def placement_message(cfg: Any, timeout: float) -> str:
    demand = worker_demand(cfg)
    return (f"Ray could not place the workers within {timeout:g} s (resources.placement_timeout_s): "
            f"waited for {demand.describe()} = {_fmt(_times(demand.bundle(), demand.workers))}; "
            f"{cluster_now()}. Lower resources.num_workers / cpus_per_worker / gpus_per_worker, "
            "add nodes, or raise resources.placement_timeout_s if the cluster is only busy")


def cluster_now() -> str:
    """What the connected Ray cluster has, in total and free (for the timeout message)."""
    try:
        import ray

        total, free = ray.cluster_resources(), ray.available_resources()
    except Exception as exc:  # the message must not fail for want of a cluster
        return f"the cluster's resources could not be read ({type(exc).__name__})"
    keys = ("CPU", "GPU")
    return (f"the cluster has {_fmt({k: total.get(k, 0) for k in keys})} in total, "
            f"{_fmt({k: free.get(k, 0) for k in keys})} free")


def _times(bundle: dict[str, float], n: int) -> dict[str, float]:
    return {k: v * n for k, v in bundle.items()}


def _fmt(resources: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in resources.items()) + "}"
