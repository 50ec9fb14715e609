"""``--target slurm`` against real munged/slurmctld/slurmd on loopback, and golden scripts."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import run_ftl, tiny_config, write_config
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


def test_slurm_job_completes_with_run_folder(slurm, workdir):
    proc = run_ftl(["run", slurm_config(workdir)], workdir, env=slurm.env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = the_run(workdir)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["world_size"] == 2 and summary["launcher"] == "ray"
    assert "submitted Slurm job" in proc.stderr and "ftl: 1/1 nodes joined" in proc.stderr
    status = run_ftl(["status", run], workdir, env=slurm.env)
    assert status.stdout.strip() == "COMPLETED"
    job = json.loads((run / "submission.json").read_text())["job_id"]
    assert (run / f"slurm-{job}.out").exists()


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
    proc = run_ftl(["run", write_config(workdir, cfg), "--dry-run"], workdir)
    assert proc.returncode == 2
    assert "cluster.slurm.partition" in proc.stderr and "cannot be put in an #SBATCH line" in proc.stderr
