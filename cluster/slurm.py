"""``slurm``: an sbatch job that brings up Ray on its nodes and runs ftl's driver.

The staged working directory (code, config, data) is copied into ``<run>/job/``, so the
run folder must be on storage every node sees (``checkpoint.dir``). State comes from
``squeue``, then ``scontrol show job``, then ``sacct`` (``sacct -c`` where only job
completion logging is configured); logs are the job's ``slurm-<id>.out`` in the run folder.
"""

from __future__ import annotations

import codecs
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cluster.base import SubmittingTarget
from cluster.slurm_script import render_sbatch
from cluster.staging import stage
from launcher.core import preemption
from launcher.core.errors import Problem, UserError
from launcher.run.rundir import RunFolder

#: how long a job that saved and stopped on request may take to show up requeued
REQUEUE_WAIT_S = 30
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
            "BOOT_FAIL", "DEADLINE"}


def job_state(word: str) -> str:
    """A Slurm state as squeue/scontrol/sacct print it, whole: sacct cuts long names to its column
    width and marks the cut with '+' (``OUT_OF_ME+``), which must still read as terminal."""
    word = word.strip()
    if word.endswith("+"):
        prefix = word.rstrip("+")
        matches = [state for state in TERMINAL if state.startswith(prefix)]
        return matches[0] if len(matches) == 1 else prefix
    return word


class ByteFollower:
    """New text of a growing file, read as bytes: a poll that lands inside a multi-byte
    character keeps its first bytes for the next poll instead of failing to decode."""

    def __init__(self, path: Path):
        self.path, self.offset = path, 0
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def read_new(self) -> str:
        if not self.path.exists():
            return ""
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            raw = fh.read()
        self.offset += len(raw)
        return self._decoder.decode(raw)

    def behind(self) -> bool:
        return self.path.exists() and self.path.stat().st_size > self.offset


def _run(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    except FileNotFoundError:
        raise UserError(Problem("cluster.target", f"{cmd[0]} not found: Slurm's client tools are not "
                                "installed here", "run ftl on a Slurm login node")) from None


class SlurmTarget(SubmittingTarget):
    name = "slurm"
    success_state = "COMPLETED"
    job_label = "Slurm job"

    def failure_hint(self, folder: RunFolder) -> str:
        return f"see {self.log_file(folder)}"

    def preflight(self, cfg: Any) -> None:
        """sbatch is here, and the allocation the script asks for can hold the run's workers: Ray
        inside the job offers each node ``--cpus-per-task`` CPUs and ``gpus_per_node`` GPUs, and a
        request beyond that would wait in Ray until the time limit. Every problem at once."""
        problems: list[Problem] = []
        if shutil.which("sbatch") is None:
            problems.append(Problem("cluster.target", "sbatch not found: this machine is not a Slurm "
                                    "login node", "run ftl where sbatch works, or use --dry-run"))
        from launcher.plan.roles import has_roles, rl_gpus

        nodes = cfg.cluster.slurm.nodes
        if has_roles(cfg):  # roles are placed by Ray placement groups, not per node
            have = nodes * cfg.cluster.slurm.gpus_per_node
            need = rl_gpus(cfg)
            if need > have:
                problems.append(Problem("cluster.slurm.nodes", f"the roles need {need:g} GPUs; {nodes} "
                                        f"nodes x {cfg.cluster.slurm.gpus_per_node} GPUs have {have}",
                                        "add nodes, or fewer/smaller roles (ftl plan shows them)"))
        elif cfg.resources.num_workers % nodes:
            problems.append(Problem("resources.num_workers", f"{cfg.resources.num_workers} workers do "
                                    f"not spread evenly over {nodes} nodes",
                                    "use a multiple of cluster.slurm.nodes"))
        else:
            from launcher.run.placement import describe_nodes, offer_problem, slurm_allocation, worker_demand

            try:
                allocation = slurm_allocation(render_sbatch(cfg, "/ftl-preflight", "/ftl-preflight/job"))
            except UserError as exc:  # a value that cannot be put in the script: say so now
                problems += exc.problems
            else:
                problem = offer_problem(
                    worker_demand(cfg), allocation,
                    {"CPU": "cluster.slurm.cpus_per_node", "GPU": "cluster.slurm.gpus_per_node"},
                    f"the sbatch job asks for {describe_nodes(allocation)}",
                    "raise cluster.slurm.gpus_per_node / cpus_per_node or nodes to what the run needs, "
                    "or lower resources.num_workers / gpus_per_worker / cpus_per_worker")
                problems += [problem] if problem is not None else []
        if problems:
            raise UserError(problems)

    def script(self, folder: RunFolder, cfg: Any) -> str:
        run_dir = str(folder.path.resolve())
        return render_sbatch(cfg, run_dir, f"{run_dir}/job")

    def sbatch_command(self, folder: RunFolder) -> list[str]:
        out = f"{folder.path.resolve()}/slurm-%j.out"
        return ["sbatch", "--parsable", f"--output={out}", str(folder.path.resolve() / "job.sbatch")]

    def render(self, folder: RunFolder, cfg: Any) -> str:
        import shlex

        return f"# {shlex.join(self.sbatch_command(folder))}\n{self.script(folder, cfg)}"

    def submit(self, folder: RunFolder) -> str:
        cfg = folder.load_config()
        staged = stage(folder)
        job_dir = folder.path / "job"
        shutil.rmtree(job_dir, ignore_errors=True)
        shutil.copytree(staged, job_dir)
        shutil.rmtree(staged, ignore_errors=True)
        script = folder.path / "job.sbatch"
        script.write_text(self.script(folder, cfg))
        from launcher.run.submit_env import launch_environment

        proc = _run(self.sbatch_command(folder), env=launch_environment())  # the user's, not ours
        if proc.returncode != 0:
            raise UserError(Problem("cluster.slurm", f"sbatch refused the job: {proc.stderr.strip()}",
                                    f"the script is {script}"))
        job_id = proc.stdout.strip().split(";")[0]
        folder.write_json("submission.json", {"target": self.name, "job_id": job_id})
        return job_id

    def _job_id(self, folder: RunFolder) -> str:
        sub = folder.read_json("submission.json")
        if not sub:
            raise UserError(Problem(str(folder.path), "this run was not submitted to Slurm"))
        return sub["job_id"]

    def status(self, folder: RunFolder) -> str:
        job = self._job_id(folder)
        out = _run(["squeue", "-h", "-j", job, "-o", "%T"]).stdout.strip()
        if out:
            return out.splitlines()[0]
        out = _run(["scontrol", "show", "job", job]).stdout
        m = re.search(r"JobState=(\w+)", out)
        if m:
            return m.group(1)
        for cmd in (["sacct", "-n", "-X", "-j", job, "-o", "State%30"],
                    ["sacct", "-c", "-n", "-j", job, "-o", "State%30"]):
            out = _run(cmd).stdout.split()
            if out:
                return job_state(out[0])
        return "UNKNOWN"

    def log_file(self, folder: RunFolder) -> Path:
        return folder.path / f"slurm-{self._job_id(folder)}.out"

    def logs(self, folder: RunFolder, *, follow: bool = False) -> Iterator[str]:
        follower = ByteFollower(self.log_file(folder))
        while True:
            chunk = follower.read_new()
            if chunk:
                yield chunk
            if not follow:
                return
            if self.status(folder) in TERMINAL and not self._requeue_pending(folder):
                if follower.behind():
                    continue
                return
            time.sleep(1)

    def _requeue_pending(self, folder: RunFolder) -> bool:
        """A job that stopped on request with ``requeue`` on is requeued by its own script; while
        Slurm moves it back to PENDING, squeue/scontrol/sacct can show the first run's end
        (FAILED, exit 75) for a moment. Wait up to ``REQUEUE_WAIT_S`` for it to come back."""
        if not preemption.preempted(folder.path) or not folder.load_config().cluster.slurm.requeue:
            return False
        deadline = time.monotonic() + REQUEUE_WAIT_S
        while time.monotonic() < deadline:
            if self.status(folder) not in TERMINAL:
                return True
            time.sleep(1)
        return False

    def stop(self, folder: RunFolder) -> str:
        _run(["scancel", self._job_id(folder)])
        state = self.status(folder)
        for _ in range(60):
            if state in TERMINAL:
                break
            time.sleep(1)
            state = self.status(folder)
        return state
