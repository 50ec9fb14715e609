"""``--target slurm`` against real munged/slurmctld/slurmd on loopback, and golden scripts."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests.helpers.ftl import FTL, ftl_in_process, run_ftl, tiny_config, write_config
from tests.helpers.slurm_cluster import SlurmCluster, available

pytestmark = pytest.mark.skipif(not available(),
                                reason="Slurm packages not installed (scripts/test.sh installs them)")
HOSTILE = "runs dir/it's \"quoted\" $HOME `x`"


@pytest.fixture(scope="module")
def slurm():
    cluster = SlurmCluster(cpus=2)
    try:
        yield cluster
    finally:
        cluster.close()


def slurm_config(workdir: Path, **train) -> Path:
    venv_bin = Path(sys.executable).parent
    cfg = tiny_config(train={"max_steps": 6, **train},
                      checkpoint={"dir": str(workdir / HOSTILE)},
                      cluster={"target": "slurm",
                               "slurm": {"nodes": 1, "time": "00:20:00", "python": str(venv_bin / "python"),
                                         "setup": [f"export PATH={venv_bin}:$PATH"]}})
    return write_config(workdir, cfg)


def the_run(workdir: Path) -> Path:
    (run,) = [p for p in (workdir / HOSTILE).iterdir() if p.is_dir()]
    return run


def _job_processes(job_id: str) -> list[psutil.Process]:
    marker = f"ftl-ray-{job_id}"
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(marker in part for part in (p.info["cmdline"] or [])):
                found.append(p)
        except psutil.Error:
            continue
    return found


def test_stop_cancels_a_running_job(slurm, workdir):
    proc = run_ftl(["run", slurm_config(workdir, max_steps=100_000), "--detach"], workdir, env=slurm.env)
    assert proc.returncode == 0, proc.stderr
    run = the_run(workdir)
    deadline = time.time() + 240
    # Stop once the job's Ray runs ftl's workers: everything a cancel must clean up is running.
    while time.time() < deadline and not (run / "logs" / "rank-0.pid").exists():
        time.sleep(1)
    assert run_ftl(["status", run], workdir, env=slurm.env).stdout.strip() == "RUNNING"
    logs = run_ftl(["logs", run], workdir, env=slurm.env)
    assert "ftl driver: run folder" in logs.stdout
    stopped = run_ftl(["stop", run], workdir, env=slurm.env)
    assert stopped.stdout.strip() == "CANCELLED", stopped.stderr
    job = json.loads((run / "submission.json").read_text())["job_id"]
    deadline = time.time() + 60
    while time.time() < deadline and _job_processes(job):
        time.sleep(1)
    leftovers = _job_processes(job)
    for p in leftovers:  # never leave a test's processes behind, even when failing
        p.kill()
    assert not leftovers, [p.info["cmdline"][:3] for p in leftovers]


def test_hostile_directive_value_is_refused(workdir):
    cfg = tiny_config(cluster={"target": "slurm", "slurm": {"partition": "gpu\n#SBATCH --uid=0"}})
    proc = ftl_in_process(["run", write_config(workdir, cfg), "--dry-run"], workdir)
    assert proc.returncode == 2
    assert "cluster.slurm.partition" in proc.stderr and "cannot be put in an #SBATCH line" in proc.stderr


def test_job_saves_on_the_time_limit_warning_requeues_and_resumes_exactly(slurm, workdir):
    """An attached `ftl run` on Slurm. Mid-run the batch shell gets Slurm's warning before the
    time limit (what `--signal=B:USR1@warning_s` sends; here `scancel --signal=USR1 --batch`):
    every rank saves at the next step, the script requeues its job, the requeued job resumes
    from that step, and `ftl run` follows it to COMPLETED with an uninterrupted run's losses
    (the same 2 ranks under torchrun), step for step. Its Ray head refuses a client without the
    job's token. Submitted with (fake) secrets in the environment: they reach the node, no
    file ftl writes holds them, and the job's environment is the submitting one (test_secrets.py)."""
    from tests.helpers.runs import losses, prepare, torchrun
    from tests.helpers.secret_search import SECRETS, files_holding_a_secret, job_env_additions, read_env

    cfg = yaml.safe_load(slurm_config(workdir, max_steps=8).read_text())
    cfg["checkpoint"]["every_steps"] = 100  # only the stop request saves
    job_env_file = workdir / "job-env.bin"  # outside the run folder: it holds the secrets
    cfg["cluster"]["slurm"]["setup"][:0] = [  # first: before the setup's own PATH change
        f"env -0 > {shlex.quote(str(job_env_file))}",
        'echo "ftl-test: WANDB_API_KEY ${WANDB_API_KEY:+is set}, HF_TOKEN ${HF_TOKEN:+is set}"']
    (workdir / "ref").mkdir()
    reference = prepare(workdir / "ref", "ref", {**cfg, "cluster": {"target": "local"}})
    assert torchrun(reference).returncode == 0
    hold = {"FTL_FAILPOINT": "train.after_step:4:hold",  # ranks wait there for the stop request
            # a glob around HOSTILE, not through it: Ray expands "$HOME" in a worker's env_vars
            "FTL_FAILPOINT_HOLD": str(workdir / "*" / "*" / "logs" / "stop-request")}
    submitted = {**os.environ, **slurm.env, **hold, **SECRETS}
    proc = subprocess.Popen(FTL + ["run", str(write_config(workdir, cfg))], cwd=workdir, text=True,
                            env=submitted, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    job = None
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not ((workdir / HOSTILE).exists() and any(
                max(losses(run), default=0) >= 3 for run in (workdir / HOSTILE).iterdir())):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            time.sleep(0.5)
        run = the_run(workdir)
        job = json.loads((run / "submission.json").read_text())["job_id"]
        head = re.search(r"Ray head at (\S+) \(token auth\)", (run / f"slurm-{job}.out").read_text())
        assert head, "the job's log does not name its Ray head"
        refused = subprocess.run(  # a client without the job's token
            [sys.executable, "-c", f"import ray; ray.init(address={head.group(1)!r})"],
            env={**os.environ, "RAY_AUTH_MODE": "disabled"}, capture_output=True, text=True, timeout=120)
        assert refused.returncode != 0 and "auth" in refused.stderr.lower(), refused.stderr[-2000:]
        warn = subprocess.run(["scancel", "--signal=USR1", "--batch", job], env={**os.environ, **slurm.env},
                              capture_output=True, text=True)
        assert warn.returncode == 0, warn.stderr
        # Slurm holds a requeued job for a while (its begin time moves ~2 minutes on): start it
        # now, as an admin may, to keep the test short. What runs then is the requeued job.
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            shown = subprocess.run(["scontrol", "show", "job", job], env={**os.environ, **slurm.env},
                                   capture_output=True, text=True).stdout
            if "JobState=PENDING" in shown:
                subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"],
                               env={**os.environ, **slurm.env}, capture_output=True, text=True)
                break
            time.sleep(1)
        _, err = proc.communicate(timeout=420)
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in _job_processes(job) if job else []:
            p.kill()
    assert proc.returncode == 0, err[-3000:]
    assert f"submitted Slurm job {job}" in err and "ftl: 1/1 nodes joined" in err
    assert "Slurm time-limit warning (USR1)" in err and f"requeueing job {job}" in err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 8 and summary["world_size"] == 2 and summary["launcher"] == "ray"
    assert summary["resumed_from_step"] == 5
    assert losses(run) == losses(reference)  # exact, every step
    assert run_ftl(["status", run], workdir, env=slurm.env).stdout.strip() == "COMPLETED"
    log = (run / f"slurm-{job}.out").read_text()
    assert "ftl-test: WANDB_API_KEY is set, HF_TOKEN is set" in log  # they reached the node
    assert (run / "job.sbatch").exists() and (run / "job").is_dir()
    assert files_holding_a_secret(run) == [] and not any(v in err for v in SECRETS.values())
    in_job = read_env(job_env_file)
    assert job_env_additions(submitted, in_job) == {}, "ftl changed the job's environment"
    assert {k for k in submitted if k not in in_job} == set()
