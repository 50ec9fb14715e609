"""A real single-node Slurm cluster on loopback: munged, slurmctld and slurmd from Debian's
packages, with a private slurm.conf, non-default ports and every state file in a temp dir.
Clients find it through ``SLURM_CONF``; teardown kills what was started, by PID."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.helpers.ray_head import free_port

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")


def available() -> bool:
    return all(shutil.which(b) for b in ("slurmctld", "slurmd", "sbatch", "munged"))


class SlurmCluster:
    def __init__(self, cpus: int = 2):
        self.dir = Path(tempfile.mkdtemp(prefix="ftl-slurm-"))
        self.host = socket.gethostname()
        d = self.dir
        for sub in ("state", "spool", "log", "munge-run", "munge-key"):
            (d / sub).mkdir()
        os.chmod(d / "munge-run", 0o755)
        os.chmod(d / "munge-key", 0o700)
        key = d / "munge-key" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        self.socket = d / "munge-run" / "munge.socket"
        self.conf = d / "slurm.conf"
        self.conf.write_text(f"""ClusterName=ftltest
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.socket}
CredType=cred/munge
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobCompType=jobcomp/filetxt
JobCompLoc={d}/log/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.procs: list[subprocess.Popen] = []
        self._start(["munged", "--foreground", "--force", f"--socket={self.socket}",
                     f"--key-file={key}", f"--pid-file={d}/munged.pid", f"--log-file={d}/log/munged.log",
                     f"--seed-file={d}/munged.seed"])
        self._wait(lambda: self.socket.exists(), "munged socket")
        self._start(["slurmctld", "-D", "-f", str(self.conf)])
        self._start(["slurmd", "-D", "-f", str(self.conf)])
        self._wait(self._node_idle, "slurm node idle")

    def _start(self, cmd: list[str]) -> None:
        log = open(self.dir / "log" / f"{Path(cmd[0]).name}.out", "w")  # noqa: SIM115
        self.procs.append(subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True))

    def _node_idle(self) -> bool:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], env=self.env, capture_output=True, text=True)
        return out.returncode == 0 and "idle" in out.stdout

    def _wait(self, check, what: str, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if check():
                return
            time.sleep(0.3)
        logs = {p.name: p.read_text()[-1500:] for p in (self.dir / "log").glob("*")}
        raise TimeoutError(f"{what} not ready: {logs}")

    def close(self) -> None:
        for proc in reversed(self.procs):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)
