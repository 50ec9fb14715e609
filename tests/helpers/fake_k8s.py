"""A stand-in Kubernetes API server (no cluster can run here): the few REST endpoints the
kubernetes client calls for ConfigMaps, RayJobs and pod logs, on loopback, recording each
request. Tests validate bodies against the CRD themselves.

It also plays KubeRay's RayJob controller, so that ftl meets the states the real one writes:
every read of a RayJob first runs one pass of ``reconcile`` (one transition, as one pass of
``RayJobReconciler.Reconcile`` in ray-operator/controllers/ray/rayjob_controller.go, KubeRay
commit feeaf72, makes), and ``settle`` runs passes until nothing changes. What Ray's dashboard
would report for the driver of attempt N is ``outcomes[N]`` (the last one repeats); setting
``deadline_exceeded`` plays the clock passing ``activeDeadlineSeconds``.
"""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

#: Ray job states after which the Ray job cannot change (``IsJobTerminal`` in rayjob_types.go)
RAY_TERMINAL = {"STOPPED", "SUCCEEDED", "FAILED"}


def validation_error(spec: dict[str, Any]) -> str | None:
    """The checks of KubeRay's ``ValidateRayJobSpec`` (utils/validation.go) that ftl's
    manifests and its ``suspend`` patch can meet."""
    selector, shutdown = bool(spec.get("clusterSelector")), bool(spec.get("shutdownAfterJobFinishes"))
    if spec.get("suspend") and not shutdown:
        return "a RayJob with shutdownAfterJobFinishes set to false is not allowed to be suspended"
    if not shutdown and (spec.get("ttlSecondsAfterFinished") or 0) > 0:
        return "a RayJob with shutdownAfterJobFinishes set to false cannot have TTLSecondsAfterFinished"
    if spec.get("suspend") and selector:
        return "the ClusterSelector mode doesn't support the suspend operation"
    if selector and (spec.get("backoffLimit") or 0) > 0:
        return "BackoffLimit is incompatible with ClusterSelector mode"
    return None


class FakeKube:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict | None]] = []
        self.objects: dict[str, dict] = {}
        self.outcomes: list[str] = ["RUNNING"]
        self.deadline_exceeded = False
        self.pod_log = "ftl driver: run folder /runs/x\n"
        #: submitter pods by RayJob path: (pod name, log)
        self.pods: dict[str, tuple[str, str]] = {}
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _body(self) -> dict | None:
                n = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(n)) if n else None

            def _send(self, code: int, payload: object, text: bool = False) -> None:
                data = payload.encode() if text else json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain" if text else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _status(self, code: int, reason: str) -> None:
                self._send(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                  "reason": reason, "code": code})

            def do_POST(self) -> None:
                body = self._body()
                with fake.lock:
                    fake.requests.append(("POST", self.path, body))
                    key = f"{self.path}/{body['metadata']['name']}"
                    if key in fake.objects:
                        return self._status(409, "AlreadyExists")
                    body["metadata"]["uid"] = str(uuid.uuid4())
                    fake.objects[key] = body
                self._send(201, body)

            def do_PATCH(self) -> None:
                body = self._body()
                with fake.lock:
                    fake.requests.append(("PATCH", self.path, body))
                    obj = fake.objects.get(self.path)
                    if obj is None:
                        return self._status(404, "NotFound")
                    obj["spec"].update((body or {}).get("spec", {}))
                self._send(200, obj)

            def do_DELETE(self) -> None:
                with fake.lock:
                    fake.requests.append(("DELETE", self.path, None))
                    obj = fake.objects.pop(self.path, None)
                    fake.pods.pop(self.path, None)
                if obj is None:
                    return self._status(404, "NotFound")
                self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})

            def do_GET(self) -> None:
                url = urlparse(self.path)
                with fake.lock:
                    fake.requests.append(("GET", self.path, None))
                    if "/rayjobs/" in url.path:
                        obj = fake.objects.get(url.path)
                        if obj is None:
                            return self._status(404, "NotFound")
                        fake.reconcile(url.path)
                        return self._send(200, obj)
                    if url.path.endswith("/log"):
                        pod = url.path.rsplit("/", 2)[-2]
                        logs = [log for name, log in fake.pods.values() if name == pod]
                        if not logs:
                            return self._status(404, "NotFound")
                        return self._send(200, logs[0], text=True)
                    if url.path.endswith("/pods"):
                        selector = parse_qs(url.query).get("labelSelector", [""])[0]
                        job = selector.removeprefix("job-name=")
                        items = [{"metadata": {"name": name, "labels": {"job-name": job}}}
                                 for path, (name, _) in fake.pods.items() if path.endswith(f"/rayjobs/{job}")]
                        return self._send(200, {"kind": "PodList", "apiVersion": "v1", "items": items,
                                                "metadata": {}})
                self._status(404, "NotFound")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    # -- the RayJob controller
    def reconcile(self, path: str) -> bool:
        """One pass of KubeRay's RayJob reconciler over the RayJob at ``path``: at most one
        ``jobDeploymentStatus`` transition, then ``checkBackoffLimitAndUpdateStatusIfNeeded``.
        Returns whether the status changed."""
        job = self.objects[path]
        spec, st = job["spec"], job.setdefault("status", {})
        before = json.dumps(st, sort_keys=True)
        deployment = st.get("jobDeploymentStatus", "")
        error = validation_error(spec)
        if error:  # validateRayJob runs first, in every state
            st.update(jobDeploymentStatus="ValidationFailed", reason="ValidationFailed", message=error)
            return json.dumps(st, sort_keys=True) != before
        if deployment in ("Complete", "Failed", "ValidationFailed"):
            return False  # terminal: the reconciler returns before any status update
        if deployment == "":  # New: initRayJobStatusIfNeed
            st.update(jobDeploymentStatus="Initializing", failed=st.get("failed", 0),
                      succeeded=st.get("succeeded", 0))
        elif deployment == "Initializing":
            if not self._suspending(spec, st) and not self._deadline(spec, st):
                # cluster ready, submitter K8s Job created (createK8sJobIfNeed): a new pod
                attempt = st.get("failed", 0)
                self.pods[path] = (f"{job['metadata']['name']}-{attempt}x{uuid.uuid4().hex[:4]}",
                                   f"{self.pod_log}ftl driver: attempt {attempt}\n")
                st["jobDeploymentStatus"] = "Running"
        elif deployment == "Running":
            if not self._suspending(spec, st) and not self._deadline(spec, st):
                ray = self.outcomes[min(st.get("failed", 0), len(self.outcomes) - 1)]
                st["jobStatus"] = ray
                if ray in RAY_TERMINAL:  # the submitter has finished too, in this stand-in
                    st["jobDeploymentStatus"] = "Failed" if ray == "FAILED" else "Complete"
                    if ray == "FAILED":
                        st.update(reason="AppFailed",
                                  message="Job entrypoint command failed with exit code 75")
        elif deployment in ("Suspending", "Retrying"):
            # cluster and submitter Job deleted; Ray job status reset to New ("")
            self.pods.pop(path, None)
            for key in ("jobStatus", "reason", "message"):
                st.pop(key, None)
            st["jobDeploymentStatus"] = "Suspended" if deployment == "Suspending" else ""
        elif deployment == "Suspended" and not spec.get("suspend"):
            st["jobDeploymentStatus"] = ""
        self._check_backoff_limit(spec, st)
        if st.get("jobDeploymentStatus") == "":  # New, as Go's omitempty writes it
            del st["jobDeploymentStatus"]
        return json.dumps(st, sort_keys=True) != before

    @staticmethod
    def _suspending(spec: dict[str, Any], st: dict[str, Any]) -> bool:
        """updateStatusToSuspendingIfNeeded: only Running and Initializing may suspend."""
        if spec.get("suspend"):
            st["jobDeploymentStatus"] = "Suspending"
            return True
        return False

    def _deadline(self, spec: dict[str, Any], st: dict[str, Any]) -> bool:
        """checkActiveDeadlineAndUpdateStatusIfNeeded: Failed, jobStatus left as it was."""
        if spec.get("activeDeadlineSeconds") and self.deadline_exceeded:
            st.update(jobDeploymentStatus="Failed", reason="DeadlineExceeded",
                      message=f"The RayJob has passed the activeDeadlineSeconds. "
                              f"ActiveDeadlineSeconds: {spec['activeDeadlineSeconds']}")
            return True
        return False

    @staticmethod
    def _check_backoff_limit(spec: dict[str, Any], st: dict[str, Any]) -> None:
        """checkBackoffLimitAndUpdateStatusIfNeeded: count the attempt; a Failed one with
        retries left becomes Retrying (never after DeadlineExceeded) in the same pass."""
        if st.get("jobDeploymentStatus") == "Failed":
            st["failed"] = st.get("failed", 0) + 1
            if st["failed"] < spec.get("backoffLimit", 0) + 1 and st.get("reason") != "DeadlineExceeded":
                st["jobDeploymentStatus"] = "Retrying"
        if st.get("jobDeploymentStatus") == "Complete" and st.get("jobStatus") == "SUCCEEDED":
            st["succeeded"] = st.get("succeeded", 0) + 1

    def settle(self, limit: int = 50) -> None:
        """Reconcile every RayJob until none changes (a controller left alone for a while)."""
        with self.lock:
            for path in [p for p in self.objects if "/rayjobs/" in p]:
                for _ in range(limit):
                    if not self.reconcile(path):
                        break

    def rayjob(self, name: str) -> dict[str, Any]:
        return next(obj for path, obj in self.objects.items() if path.endswith(f"/rayjobs/{name}"))

    # -- wiring
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def kubeconfig(self, folder: Path) -> Path:
        path = folder / "kubeconfig"
        path.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: fake, cluster: {{server: "{self.url}"}}}}]
users: [{{name: me, user: {{token: fake-token}}}}]
contexts: [{{name: fake, context: {{cluster: fake, user: me}}}}]
current-context: fake
""")
        return path

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
