"""``kubernetes``: a KubeRay ``RayJob`` submitted with the ``kubernetes`` Python client.

The manifests come from ``cluster.k8s_manifest``; submit/status/logs/stop talk to the API
server named by the current kubeconfig (``KUBECONFIG`` or ``~/.kube/config``).

A RayJob's state is two fields (``status.jobDeploymentStatus``, KubeRay's view of cluster and
submitter; ``status.jobStatus``, Ray's view of the driver) and neither alone says whether the
job is over: ``job_state`` reads both the way KubeRay's controller writes them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from cluster import k8s_manifest
from cluster.base import SubmittingTarget
from cluster.k8s_manifest import GROUP, PLURAL, VERSION, owner_reference, render_manifests
from cluster.staging import flat_seed_files
from launcher.core.errors import Problem, UserError
from launcher.core.registry import BUILTIN_PREFIX
from launcher.run.rundir import RunFolder

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
#: seconds between two reads of the RayJob while following or stopping
POLL_S = 1.0
#: how long ``ftl stop`` waits for KubeRay to delete the cluster (Suspending -> Suspended)
STOP_WAIT_S = 180.0


def job_state(status: dict[str, Any]) -> str:
    """One word for a RayJob's ``status``, terminal only when KubeRay will change nothing more.

    From ``ray-operator/controllers/ray/rayjob_controller.go`` (``Reconcile``, KubeRay commit
    feeaf72); ``jobStatus`` is empty (omitted) until the submitter reports and is cleared again
    by a suspend or a retry:

    - ``""``/New, Initializing (cluster starting), Waiting (InteractiveMode): PENDING.
    - Running: Ray's ``jobStatus`` (PENDING/RUNNING). A terminal ``jobStatus`` under Running is
      not final yet: KubeRay waits for the submitter, and a FAILED job may still be retried.
    - Complete: ``jobStatus`` SUCCEEDED or STOPPED (set only for those).
    - Failed: FAILED whatever ``jobStatus`` says: past ``activeDeadlineSeconds`` it stays
      RUNNING (``checkActiveDeadlineAndUpdateStatusIfNeeded``). Failed is only persisted once
      no retry is left (``checkBackoffLimitAndUpdateStatusIfNeeded`` turns it into Retrying in
      the same reconcile), and never retried after DeadlineExceeded.
    - ValidationFailed: FAILED (the spec is refused; nothing runs).
    - Retrying: RETRYING (cluster being deleted; next: New, a new cluster, a new submission).
    - Suspending: STOPPING (cluster being deleted); Suspended: STOPPED (``jobStatus`` cleared).
    """
    deployment = status.get("jobDeploymentStatus") or ""
    job = status.get("jobStatus") or ""
    if deployment in ("Failed", "ValidationFailed"):
        return "FAILED"
    if deployment == "Complete":
        return job if job in TERMINAL else "SUCCEEDED"
    if deployment == "Suspended":
        return "STOPPED"
    if deployment == "Suspending":
        return "STOPPING"
    if deployment == "Retrying":
        return "RETRYING"
    if deployment == "Running":
        return job if job in ("PENDING", "RUNNING") else ("RUNNING" if job else "PENDING")
    if deployment in ("", "New", "Initializing", "Waiting"):
        return "PENDING"
    return deployment.upper()  # a state this ftl does not know: shown, never taken as final


def detail(status: dict[str, Any]) -> str:
    """KubeRay's reason and message, and the failed attempts when there were any."""
    parts = []
    failed = status.get("failed") or 0
    if failed:
        parts.append(f"after {failed} failed attempt{'s' if failed > 1 else ''}")
    reason, message = status.get("reason"), status.get("message")
    if reason or message:
        parts.append(f"({': '.join(x for x in (reason, message) if x)})")
    return " ".join(parts)


def describe(status: dict[str, Any]) -> str:
    """The state and its detail, e.g. ``FAILED (DeadlineExceeded: ...)``."""
    return " ".join(x for x in (job_state(status), detail(status)) if x)


class KubernetesTarget(SubmittingTarget):
    name = "kubernetes"
    job_label = "RayJob"

    def preflight(self, cfg: Any) -> None:
        """Config the manifests need, data visible to pods, and worker pods (as rendered) that
        can hold the run's workers: a RayJob whose workers do not fit its own RayCluster would
        wait until its deadline."""
        problems = k8s_manifest.config_problems(cfg)
        for section in ("train", "eval"):
            for i, src in enumerate(getattr(cfg.data, section)):
                path = src.path or ""
                if not path.startswith((BUILTIN_PREFIX, "/")) and Path(path).exists():
                    problems.append(Problem(f"data.{section}.{i}.path", "a local file is not visible to pods",
                                            "copy it to the runs PVC and use its absolute path"))
        if not problems:
            from launcher.run.placement import kuberay_problem

            try:
                manifests = render_manifests(cfg, f"{cfg.checkpoint.dir}/ftl-preflight", {})
            except UserError as exc:  # the manifests cannot be rendered: say why now
                problems += exc.problems
            else:
                problem = kuberay_problem(cfg, manifests)
                problems += [problem] if problem is not None else []
        if problems:
            raise UserError(problems)

    def check_run_folder(self, folder: RunFolder, cfg: Any) -> None:
        k8s_manifest.check(cfg, str(folder.path))

    def check_reachable(self, cfg: Any) -> None:
        self._apis()

    def manifests(self, folder: RunFolder, cfg: Any, seed: dict[str, str]) -> list[dict[str, Any]]:
        return render_manifests(cfg, str(folder.path), seed, folder.launch_id())

    def render(self, folder: RunFolder, cfg: Any) -> str:
        seed = {"config.yaml": "<the resolved config.yaml>"}
        return yaml.safe_dump_all(self.manifests(folder, cfg, seed), sort_keys=False)

    # -- API
    def _apis(self) -> tuple[Any, Any]:
        try:
            from kubernetes import client, config
        except ImportError:
            raise UserError(Problem("cluster.target", "the kubernetes Python client is not installed",
                                    "pip install kubernetes")) from None
        try:  # KUBECONFIG read now: the client reads it once, at import
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
        except Exception as exc:  # ConfigException, FileNotFoundError
            raise UserError(Problem("cluster.kubernetes", f"no usable kubeconfig: {exc}",
                                    "set KUBECONFIG, or use --dry-run to print the manifests")) from None
        return client.CustomObjectsApi(), client.CoreV1Api()

    def submit(self, folder: RunFolder) -> str:
        """Create the RayJob, then its seed ConfigMap owned by it (the uid exists only once the
        RayJob does). The head pod waits for a ConfigMap volume that is not there yet, so the
        order costs nothing; a ConfigMap that cannot be created takes its RayJob back."""
        cfg = folder.load_config()
        configmap, rayjob = self.manifests(folder, cfg, flat_seed_files(folder))
        custom, core = self._apis()
        ns, name = rayjob["metadata"]["namespace"], rayjob["metadata"]["name"]
        created = _create(f"RayJob {ns}/{name}", custom.create_namespaced_custom_object,
                          GROUP, VERSION, ns, PLURAL, rayjob)
        configmap["metadata"]["ownerReferences"] = [owner_reference(created)]
        try:
            _create(f"ConfigMap {ns}/{configmap['metadata']['name']}", core.create_namespaced_config_map,
                    ns, configmap)
        except BaseException:
            custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
            raise
        # KubeRay refuses `suspend` on a cluster it does not own, or without the shutdown
        # (ValidateRayJobSpec): those RayJobs are stopped by deleting them
        k = cfg.cluster.kubernetes
        suspendable = "rayClusterSpec" in rayjob["spec"] and k.shutdown_after_job_finishes
        folder.write_json("submission.json", {
            "target": self.name, "namespace": ns, "name": name, "uid": created["metadata"]["uid"],
            "stop": "suspend" if suspendable else "delete"})
        return f"{ns}/{name}"

    def _ref(self, folder: RunFolder) -> tuple[str, str]:
        sub = folder.read_json("submission.json")
        if not sub:
            raise UserError(Problem(str(folder.path), "this run was not submitted to Kubernetes"))
        return sub["namespace"], sub["name"]

    def _status(self, folder: RunFolder) -> dict[str, Any]:
        """The RayJob's ``status``; a RayJob that ``ftl stop`` deleted reads as Suspended. A
        RayJob of the same name that is not the one submitted (another uid) is an error, so
        that ``ftl stop`` never acts on someone else's job."""
        from kubernetes.client.exceptions import ApiException

        ns, name = self._ref(folder)
        sub = folder.read_json("submission.json")
        custom, _ = self._apis()
        try:
            obj = custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
        except ApiException as exc:
            if exc.status != 404:
                raise
            if sub.get("stopped"):
                return {"jobDeploymentStatus": "Suspended", "message": "deleted by ftl stop"}
            raise UserError(Problem(str(folder.path), f"RayJob {ns}/{name} no longer exists",
                                    "it was deleted (by a person, or by KubeRay after it finished); "
                                    "the run folder on the PVC holds what the run wrote")) from None
        uid = (obj.get("metadata") or {}).get("uid")
        if sub.get("uid") and uid != sub["uid"]:
            raise UserError(Problem(str(folder.path), f"RayJob {ns}/{name} is not the one this run "
                                    f"submitted (uid {uid}, expected {sub['uid']})",
                                    "the submitted RayJob was deleted and its name reused; ftl leaves "
                                    "this one alone"))
        return obj.get("status") or {}

    def status(self, folder: RunFolder) -> str:
        return job_state(self._status(folder))

    def failure_hint(self, folder: RunFolder) -> str:
        why = detail(self._status(folder))
        return f"{why + '; ' if why else ''}see `ftl logs {folder.path}`"

    def logs(self, folder: RunFolder, *, follow: bool = False) -> Iterator[str]:
        """The submitter pod's log: it streams the driver's output (K8sJobMode). Each KubeRay
        retry runs a new submitter pod, whose log starts from its beginning. With ``follow``,
        ends when the RayJob is over, with a line naming its final state."""
        ns, name = self._ref(folder)
        _, core = self._apis()
        pod, seen = None, 0
        while True:
            status = self._status(folder) if follow else {}  # before the log: a final state's log is whole
            current = _submitter_pod(core, ns, name)
            if current is not None and current != pod:
                if pod is not None:  # a KubeRay retry (or the submitter Job's own)
                    yield f"ftl: {ns}/{name} was resubmitted; the log of submitter pod {current}:\n"
                pod, seen = current, 0
            text = _pod_log(core, ns, pod) if pod else ""
            if len(text) > seen:
                yield text[seen:]
                seen = len(text)
            if not follow:
                return
            if job_state(status) in TERMINAL:
                yield f"ftl: RayJob {ns}/{name} {describe(status)}\n"
                return
            time.sleep(POLL_S)

    def stop(self, folder: RunFolder) -> str:
        """Stop the job and return its final state. A RayJob on its own cluster is suspended:
        KubeRay deletes the cluster (each pod's preStop hook first asks the run to save a
        checkpoint) and reports Suspended. On an existing cluster (or without
        shutdownAfterJobFinishes) KubeRay refuses a suspend, so the RayJob is deleted: its
        finalizer stops the Ray job. A job that already ended is left alone."""
        ns, name = self._ref(folder)
        state = self.status(folder)
        if state in TERMINAL:
            return state
        custom, _ = self._apis()
        sub = folder.read_json("submission.json")
        if sub.get("stop") == "delete":
            custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
            folder.write_json("submission.json", {**sub, "stopped": True})
        else:
            custom.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name,
                                                  {"spec": {"suspend": True}})
        deadline = time.monotonic() + STOP_WAIT_S
        while state not in TERMINAL and time.monotonic() < deadline:
            time.sleep(POLL_S)
            state = self.status(folder)
        return state


def _create(what: str, create: Any, *args: Any) -> dict[str, Any]:
    """``create(*args)``; a name already taken (409) is a clear error, not a traceback."""
    from kubernetes.client.exceptions import ApiException

    try:
        return create(*args)
    except ApiException as exc:
        if exc.status == 409:
            raise UserError(Problem(
                "cluster.kubernetes", f"{what} already exists",
                "this launch was already submitted: see `ftl status RUN_DIR`, or start a new "
                "launch with `ftl run`")) from None
        raise


def _submitter_pod(core: Any, ns: str, name: str) -> str | None:
    """The newest pod of the submitter Kubernetes Job (named like the RayJob), if any."""
    pods = core.list_namespaced_pod(ns, label_selector=f"job-name={name}").items
    if not pods:
        return None
    newest = max(pods, key=lambda p: (p.metadata.creation_timestamp is not None, p.metadata.creation_timestamp
                                      or 0, p.metadata.name))
    return newest.metadata.name


def _pod_log(core: Any, ns: str, pod: str) -> str:
    """A pod's log; empty while its container has not started or after the pod is gone."""
    from kubernetes.client.exceptions import ApiException

    try:
        return core.read_namespaced_pod_log(pod, ns)
    except ApiException as exc:
        if exc.status in (400, 404):  # 400: "container ... is waiting to start"
            return ""
        raise
