"""A stand-in Kubernetes API server (no cluster can run here): the few REST endpoints the
kubernetes client calls for ConfigMaps, RayJobs and pod logs, on loopback, recording each
request. It checks nothing KubeRay would; tests validate bodies against the CRD themselves."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse


class FakeKube:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict | None]] = []
        self.objects: dict[str, dict] = {}
        self.job_status = "RUNNING"
        self.pod_log = "ftl driver: run folder /runs/x\n"
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

            def do_POST(self) -> None:
                body = self._body()
                fake.requests.append(("POST", self.path, body))
                fake.objects[f"{self.path}/{body['metadata']['name']}"] = body
                self._send(201, body)

            def do_PATCH(self) -> None:
                body = self._body()
                fake.requests.append(("PATCH", self.path, body))
                if body and body.get("spec", {}).get("suspend"):
                    fake.job_status = "STOPPED"
                self._send(200, fake.objects.get(self.path, {}))

            def do_GET(self) -> None:
                url = urlparse(self.path)
                fake.requests.append(("GET", self.path, None))
                if "/rayjobs/" in url.path:
                    obj = dict(fake.objects.get(url.path, {}))
                    if not obj:
                        return self._send(404, {"kind": "Status", "code": 404})
                    obj["status"] = {"jobStatus": fake.job_status, "jobDeploymentStatus": "Running"}
                    return self._send(200, obj)
                if url.path.endswith("/log"):
                    return self._send(200, fake.pod_log, text=True)
                if url.path.endswith("/pods"):
                    selector = parse_qs(url.query).get("labelSelector", [""])[0]
                    pod = {"metadata": {"name": "submitter-abc", "labels": {"selector": selector}}}
                    return self._send(200, {"kind": "PodList", "apiVersion": "v1", "items": [pod],
                                            "metadata": {}})
                self._send(404, {"kind": "Status", "code": 404})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

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
