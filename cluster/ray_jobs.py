"""``ray``: an existing Ray cluster, through the Ray Jobs API.

The job's entrypoint is ftl's driver (``python -m launcher.run.driver RUN_DIR --seed ftl-run``)
in a staged working directory (code, config, small local data; see ``cluster.staging``).
Token auth: Ray's own client reads ``RAY_AUTH_TOKEN``/``RAY_AUTH_TOKEN_PATH`` from the
environment; ftl never reads, prints or stores the token.
Secrets (``WANDB_API_KEY``, ``HF_TOKEN``) are never sent with the job: its ``runtime_env`` is
shown by the dashboard, ``ray job list`` and the job info to anyone who can reach the cluster.
Workers get them from the cluster's own environment (set where ``ray start`` runs, or a
Kubernetes Secret for KubeRay pods): see README, Secrets. Before submitting, the run's worker
request is compared with the cluster's live nodes, so a run that can never be placed is
refused (exit 2) instead of waiting in Ray for ever.
State is read from the Jobs API (``ray job status`` exits 0 even for failed jobs).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import time
import uuid
from collections.abc import Iterator
from typing import Any

from cluster.base import SubmittingTarget
from cluster.staging import SEED_DIR, stage
from launcher.core.env import FAILPOINT, FAILPOINT_RANK
from launcher.core.errors import Problem, UserError
from launcher.core.workers import WORKER_ENV
from launcher.run.placement import NodeOffer, describe_nodes, offer_problem, worker_demand
from launcher.run.rundir import RunFolder

PLAIN_ENV = ("WANDB_MODE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", FAILPOINT, FAILPOINT_RANK)
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def _address(cfg: Any) -> str:
    address = cfg.cluster.ray.address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise UserError(Problem("cluster.ray.address", "no Ray cluster address",
                                "set cluster.ray.address: http://<head>:8265 (or RAY_ADDRESS)"))
    return address if "://" in address else f"http://{address}"


class RayJobsTarget(SubmittingTarget):
    name = "ray"
    job_label = "Ray job"

    def _client(self, address: str) -> Any:
        from ray.job_submission import JobSubmissionClient

        last: Exception | None = None
        for _ in range(10):  # a head warming up answers "No available agent" for a while
            try:
                return JobSubmissionClient(address)
            except Exception as exc:  # ConnectionError, RuntimeError from the SDK
                last = exc
                time.sleep(1)
        raise UserError(Problem("cluster.ray.address", f"cannot reach the Ray dashboard at {address}: "
                                f"{str(last).splitlines()[0] if last else ''}",
                                "is the cluster up, and is the dashboard port reachable from here?"))

    def preflight(self, cfg: Any) -> None:
        _address(cfg)
        if cfg.cluster.ray.forward_secrets:
            raise UserError(Problem(
                "cluster.ray.forward_secrets", "secrets are no longer sent in the job's runtime_env: "
                "Ray shows it in the dashboard and job info",
                "remove it, and set WANDB_API_KEY/HF_TOKEN in the cluster's environment (README: Secrets)"))

    def check_reachable(self, cfg: Any) -> None:
        """Reach the dashboard, then compare the run's workers with the cluster's live nodes."""
        address = _address(cfg)
        self._client(address)
        if cfg.cluster.ray.autoscaling:
            return
        problem = self.resource_problem(cfg, self.live_nodes(address))
        if problem is not None:
            raise UserError(problem)

    def live_nodes(self, address: str) -> list[NodeOffer]:
        """CPUs and GPUs of every alive node, from the dashboard's state API (one HTTP call)."""
        from ray.util.state import list_nodes

        try:
            nodes = list_nodes(address=address, detail=True, limit=10_000, timeout=30,
                               raise_on_missing_output=False)
        except Exception as exc:  # the SDK raises RayStateApiException, ConnectionError, ...
            first = (str(exc).strip().splitlines() or [repr(exc)])[0]
            raise UserError(Problem("cluster.ray.address", f"cannot list the Ray cluster's nodes at "
                                    f"{address}: {first}",
                                    "set cluster.ray.autoscaling: true to skip this check")) from None
        return [NodeOffer(float(n.resources_total.get("CPU", 0)), float(n.resources_total.get("GPU", 0)))
                for n in nodes if n.state == "ALIVE"]

    @staticmethod
    def resource_problem(cfg: Any, nodes: list[NodeOffer]) -> Problem | None:
        """The run's request against the cluster's nodes; online RL compares GPUs in total."""
        offered = f"the Ray cluster has {describe_nodes(nodes)}"
        hint = ("lower resources.num_workers / cpus_per_worker / gpus_per_worker, add nodes, or set "
                "cluster.ray.autoscaling: true if the cluster adds nodes on demand")
        from launcher.plan.roles import has_roles

        if has_roles(cfg):
            from launcher.plan.roles import rl_gpus

            need, have = rl_gpus(cfg), sum(n.gpus for n in nodes)
            if need > have + 1e-9:
                return Problem("resources", f"the roles need {need:g} GPUs; {offered}", hint)
            return None
        fields = {"CPU": "resources.cpus_per_worker", "GPU": "resources.gpus_per_worker"}
        return offer_problem(worker_demand(cfg), nodes, fields, offered, hint)

    # -- what is submitted
    def job_spec(self, folder: RunFolder, cfg: Any, working_dir: str) -> dict[str, Any]:
        env = {k: os.environ[k] for k in PLAIN_ENV if k in os.environ}
        env.update(WORKER_ENV)
        runtime_env: dict[str, Any] = {"working_dir": working_dir, "env_vars": env}
        if cfg.cluster.ray.pip:
            runtime_env["pip"] = list(cfg.cluster.ray.pip)
        run_dir = str(folder.path.resolve())
        return {
            "address": _address(cfg),
            "submission_id": f"ftl-{folder.path.name}-{uuid.uuid4().hex[:6]}",
            "entrypoint": f"python -m launcher.run.driver {shlex.quote(run_dir)} --seed {SEED_DIR}",
            "runtime_env": runtime_env,
        }

    def render(self, folder: RunFolder, cfg: Any) -> str:
        spec = self.job_spec(folder, cfg, "<staged: launcher/ strategies/ cluster/ ftl-run/ ftl-data/>")
        return json.dumps(spec, indent=2)

    # -- lifecycle
    def submit(self, folder: RunFolder) -> str:
        cfg = folder.load_config()
        staged = stage(folder)
        try:
            spec = self.job_spec(folder, cfg, str(staged))
            client = self._client(spec["address"])
            client.submit_job(entrypoint=spec["entrypoint"], runtime_env=spec["runtime_env"],
                              submission_id=spec["submission_id"])
        finally:
            shutil.rmtree(staged, ignore_errors=True)
        folder.write_json("submission.json", {"target": self.name, "address": spec["address"],
                                              "submission_id": spec["submission_id"]})
        return spec["submission_id"]

    def _job(self, folder: RunFolder) -> tuple[Any, str]:
        sub = folder.read_json("submission.json")
        if not sub:
            raise UserError(Problem(str(folder.path), "this run was not submitted to a cluster"))
        return self._client(sub["address"]), sub["submission_id"]

    def status(self, folder: RunFolder) -> str:
        client, sid = self._job(folder)
        return str(client.get_job_status(sid).value)

    def logs(self, folder: RunFolder, *, follow: bool = False) -> Iterator[str]:
        client, sid = self._job(folder)
        if not follow:
            yield client.get_job_logs(sid)
            return
        seen = 0
        while True:
            text = client.get_job_logs(sid)
            if len(text) > seen:
                yield text[seen:]
                seen = len(text)
            if str(client.get_job_status(sid).value) in TERMINAL:
                text = client.get_job_logs(sid)
                if len(text) > seen:
                    yield text[seen:]
                return
            time.sleep(1)

    def stop(self, folder: RunFolder) -> str:
        client, sid = self._job(folder)
        client.stop_job(sid)
        for _ in range(60):
            state = str(client.get_job_status(sid).value)
            if state in TERMINAL:
                return state
            time.sleep(1)
        return str(client.get_job_status(sid).value)


