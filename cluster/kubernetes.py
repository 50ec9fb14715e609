"""``kubernetes``: a KubeRay ``RayJob`` submitted with the ``kubernetes`` Python client.

The manifests come from ``cluster.k8s_manifest``; submit/status/logs/stop talk to the API
server named by the current kubeconfig (``KUBECONFIG`` or ``~/.kube/config``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from cluster.base import SubmittingTarget
from cluster.k8s_manifest import GROUP, PLURAL, VERSION, render_manifests
from cluster.staging import flat_seed_files
from launcher.errors import Problem, UserError
from launcher.rundir import RunFolder

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


class KubernetesTarget(SubmittingTarget):
    name = "kubernetes"
    job_label = "RayJob"

    def preflight(self, cfg: Any) -> None:
        """Data visible to pods, and worker pods (as rendered) that can hold the run's workers:
        a RayJob whose workers do not fit its own RayCluster would wait until its deadline."""
        problems: list[Problem] = []
        for section in ("train", "eval"):
            for i, src in enumerate(getattr(cfg.data, section)):
                path = src.path or ""
                if not path.startswith(("builtin:", "/")) and Path(path).exists():
                    problems.append(Problem(f"data.{section}.{i}.path", "a local file is not visible to pods",
                                            "copy it to the runs PVC and use its absolute path"))
        from launcher.placement import kuberay_problem

        try:
            manifests = render_manifests(cfg, f"{cfg.checkpoint.dir}/ftl-preflight", {})
        except UserError as exc:  # the manifests cannot be rendered: say why now
            problems += exc.problems
        else:
            problem = kuberay_problem(cfg, manifests)
            problems += [problem] if problem is not None else []
        if problems:
            raise UserError(problems)

    def check_reachable(self, cfg: Any) -> None:
        self._apis()

    def manifests(self, folder: RunFolder, cfg: Any, seed: dict[str, str]) -> list[dict[str, Any]]:
        return render_manifests(cfg, str(folder.path), seed)

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
        try:
            config.load_kube_config()
        except Exception as exc:  # ConfigException, FileNotFoundError
            raise UserError(Problem("cluster.kubernetes", f"no usable kubeconfig: {exc}",
                                    "set KUBECONFIG, or use --dry-run to print the manifests")) from None
        return client.CustomObjectsApi(), client.CoreV1Api()

    def submit(self, folder: RunFolder) -> str:
        cfg = folder.load_config()
        configmap, rayjob = self.manifests(folder, cfg, flat_seed_files(folder))
        custom, core = self._apis()
        ns = rayjob["metadata"]["namespace"]
        core.create_namespaced_config_map(ns, configmap)
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, rayjob)
        folder.write_json("submission.json", {"target": self.name, "namespace": ns,
                                              "name": rayjob["metadata"]["name"]})
        return f"{ns}/{rayjob['metadata']['name']}"

    def _ref(self, folder: RunFolder) -> tuple[str, str]:
        sub = folder.read_json("submission.json")
        if not sub:
            raise UserError(Problem(str(folder.path), "this run was not submitted to Kubernetes"))
        return sub["namespace"], sub["name"]

    def status(self, folder: RunFolder) -> str:
        ns, name = self._ref(folder)
        custom, _ = self._apis()
        obj = custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
        status = obj.get("status") or {}
        return status.get("jobStatus") or status.get("jobDeploymentStatus") or "PENDING"

    def logs(self, folder: RunFolder, *, follow: bool = False) -> Iterator[str]:
        """The submitter pod's log: it streams the driver's output (K8sJobMode)."""
        ns, name = self._ref(folder)
        _, core = self._apis()
        seen = 0
        while True:
            pods = core.list_namespaced_pod(ns, label_selector=f"job-name={name}").items
            text = core.read_namespaced_pod_log(pods[0].metadata.name, ns) if pods else ""
            if len(text) > seen:
                yield text[seen:]
                seen = len(text)
            if not follow or self.status(folder) in TERMINAL:
                return
            time.sleep(2)

    def stop(self, folder: RunFolder) -> str:
        """Suspend the RayJob (KubeRay deletes its cluster and marks the job stopped)."""
        ns, name = self._ref(folder)
        custom, _ = self._apis()
        custom.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name, {"spec": {"suspend": True}})
        return self.status(folder)
