"""A real Ray head on loopback for tests: free ports, private temp dir, own process group.

The head runs ``ray start --block`` in a new session and is torn down with ``os.killpg``: only
what the test started is stopped, never other Ray instances on the host.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayHead:
    def __init__(self, num_cpus: int = 3, env: dict | None = None):
        self.temp_dir = tempfile.mkdtemp(prefix="ftlr-", dir="/tmp")
        self.dashboard_port = free_port()
        self.env = {**os.environ, **(env or {})}
        self.env.pop("RAY_ADDRESS", None)
        # As on a real cluster, the job's `python` is the one Ray runs under.
        self.env["PATH"] = f"{Path(sys.executable).parent}:{self.env.get('PATH', '')}"
        ports = {"--port": free_port(), "--dashboard-port": self.dashboard_port,
                 "--dashboard-agent-listen-port": free_port(), "--dashboard-agent-grpc-port": free_port(),
                 "--runtime-env-agent-port": free_port(), "--metrics-export-port": free_port(),
                 "--ray-client-server-port": free_port(), "--node-manager-port": free_port(),
                 "--object-manager-port": free_port()}
        ray_cli = str(Path(sys.executable).parent / "ray")
        cmd = [ray_cli, "start", "--head", "--block", "--num-cpus", str(num_cpus),
               "--temp-dir", self.temp_dir, "--node-ip-address", "127.0.0.1",
               "--dashboard-host", "127.0.0.1", "--include-dashboard", "true", "--disable-usage-stats"]
        for flag, port in ports.items():
            cmd += [flag, str(port)]
        self.log = open(Path(self.temp_dir) / "head.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def wait_ready(self, timeout: float = 120) -> None:
        """Poll the Jobs API from a subprocess (the SDK caches the auth mode per process)."""
        probe = ("from ray.job_submission import JobSubmissionClient as C; "
                 f"C({self.address!r}).list_jobs()")
        deadline = time.time() + timeout
        last = ""
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray head exited: {Path(self.log.name).read_text()[-2000:]}")
            check = subprocess.run([sys.executable, "-c", probe], env=self.env, capture_output=True,
                                   text=True, timeout=60)
            if check.returncode == 0:
                return
            last = check.stderr.strip().splitlines()[-1:] or [""]
            time.sleep(1)
        raise TimeoutError(f"ray head not ready: {last}")

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.log.close()
