"""``--target ray``: a real Ray head on loopback, the Jobs API, detach/status/logs/stop."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from launcher.data.synthetic import generate
from tests.helpers.ftl import ftl_in_process, run_dirs, run_ftl, tiny_config, write_config
from tests.helpers.ray_head import RayHead

TOKEN = "ftl-test-token-5b0c9f1e7d"


@pytest.fixture(scope="module")
def head():
    h = RayHead(num_cpus=3, env={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN})
    try:
        h.wait_ready()
        yield h
    finally:
        h.close()


SECRETS = {"WANDB_API_KEY": "wandb-secret-0123456789", "HF_TOKEN": "hf_secret-9876543210"}


def client_env(head) -> dict:
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN, **SECRETS}


def ray_config(workdir: Path, head, **train) -> Path:
    data = workdir / "reverse.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in generate("reverse", 256)))
    held_out = {"path": "builtin:reverse", "num_rows": 16}
    cfg = tiny_config(data={"train": {"path": str(data)}, "eval": held_out},
                      train={"max_steps": 6, **train},
                      cluster={"target": "ray", "ray": {"address": head.address}},
                      logging={"every_steps": 1, "wandb": {"mode": "disabled"}})
    return write_config(workdir, cfg)


def no_secret_anywhere(texts: list[str], run: Path) -> None:
    for text in texts:
        assert TOKEN not in text and not any(v in text for v in SECRETS.values())
    for f in run.rglob("*"):
        if f.is_file() and f.stat().st_size < 5_000_000:
            data = f.read_bytes()
            assert TOKEN.encode() not in data, f
            assert not any(v.encode() in data for v in SECRETS.values()), f


def what_ray_shows(head, submission_id: str) -> list[str]:
    """The job as Ray shows it to anyone who can reach the dashboard: the SDK's job info (with
    its runtime_env), the dashboard's jobs list, its task list (each task's and Train worker
    actor's runtime_env) and the runtime envs it has set up, and the job's own log."""
    import urllib.request

    from ray.job_submission import JobSubmissionClient

    auth = {"Authorization": f"Bearer {TOKEN}"}  # this process's Ray SDK runs with auth disabled
    client = JobSubmissionClient(head.address, headers=auth)
    info = client.get_job_info(submission_id)
    assert info.runtime_env and "env_vars" in info.runtime_env  # the runtime_env is really there

    def get(path: str) -> str:
        request = urllib.request.Request(f"{head.address}{path}", headers=auth)
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.read().decode()

    jobs, tasks = get("/api/jobs/"), get("/api/v0/tasks?detail=true&limit=1000")
    assert submission_id in jobs
    # The workers' runtime_env (launcher.run.driver.worker_env) is in the task list: searched for real.
    assert "RAY_TRAIN_ENABLE_PRINT_PATCH" in tasks and "OMP_NUM_THREADS" in tasks
    return [json.dumps(info.runtime_env), repr(info), jobs, tasks,
            get("/api/v0/runtime_envs?detail=true&limit=1000"), client.get_job_logs(submission_id)]


def test_attached_run_on_existing_cluster(head, workdir):
    proc = run_ftl(["run", ray_config(workdir, head)], workdir, env=client_env(head))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(workdir)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["world_size"] == 2 and summary["launcher"] == "ray"
    assert "submitted Ray job ftl-" in proc.stderr and "ftl driver: done" in proc.stderr
    staged = json.loads(json.dumps(__import__("yaml").safe_load((run / "config.yaml").read_text())))
    assert staged["data"]["train"][0]["path"].startswith("ftl-data/")  # the local file was uploaded
    submission_id = json.loads((run / "submission.json").read_text())["submission_id"]
    no_secret_anywhere([proc.stdout, proc.stderr, *what_ray_shows(head, submission_id)], run)


def test_dry_run_has_no_secrets_and_submits_nothing(head, workdir):
    proc = run_ftl(["run", ray_config(workdir, head), "--dry-run"], workdir, env=client_env(head))
    assert proc.returncode == 0, proc.stderr
    spec = json.loads(proc.stdout)
    assert spec["entrypoint"].startswith("python -m launcher.run.driver ")
    env_vars = spec["runtime_env"]["env_vars"]
    assert env_vars["TOKENIZERS_PARALLELISM"] == "false" and not set(SECRETS) & set(env_vars)
    assert run_dirs(workdir) == []
    no_secret_anywhere([proc.stdout, proc.stderr], workdir)


def test_detach_status_logs_stop(head, workdir):
    path = ray_config(workdir, head, max_steps=100_000)
    proc = run_ftl(["run", path, "--detach"], workdir, env=client_env(head))
    assert proc.returncode == 0, proc.stderr
    (run,) = run_dirs(workdir)
    assert "submitted ftl-" in proc.stdout
    state = ""
    deadline = time.time() + 180
    while time.time() < deadline:
        # Training has begun once a step is logged; ask `ftl status` (a process start each) only then.
        if (run / "metrics.jsonl").exists():
            state = run_ftl(["status", run], workdir, env=client_env(head)).stdout.strip()
            if state == "RUNNING":
                break
        time.sleep(0.5)
    assert state == "RUNNING"
    logs = run_ftl(["logs", run], workdir, env=client_env(head))
    assert logs.returncode == 0 and "ftl driver: run folder" in logs.stdout
    stopped = run_ftl(["stop", run], workdir, env=client_env(head))
    assert stopped.returncode == 0 and stopped.stdout.strip() == "STOPPED", stopped.stderr
    assert run_ftl(["status", run], workdir, env=client_env(head)).stdout.strip() == "STOPPED"
    follow = run_ftl(["logs", run, "--follow"], workdir, env=client_env(head), timeout=60)
    assert follow.returncode == 0


def test_failed_job_exits_1_naming_the_rank(head, workdir):
    env = {**client_env(head), "FTL_FAILPOINT": "train.after_step:2:raise", "FTL_FAILPOINT_RANK": "1"}
    proc = run_ftl(["run", ray_config(workdir, head)], workdir, env=env)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "rank 1 failed: FailpointError" in proc.stderr


def test_more_workers_than_the_cluster_has_is_refused_before_submitting(head, workdir):
    """The head has 3 CPUs; 4 workers x 1 CPU could never be placed: exit 2, nothing submitted."""
    path = ray_config(workdir, head)
    proc = run_ftl(["run", path, "--set", "resources.num_workers=4"], workdir, env=client_env(head))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert ("resources.cpus_per_worker: 4 workers x (1 CPU) need 4 CPUs; 3 offered: the Ray cluster has "
            "1 node x (3 CPU, 0 GPU)") in proc.stderr
    assert "cluster.ray.autoscaling: true" in proc.stderr  # the way out for clusters that grow
    assert run_dirs(workdir) == []


def test_unreachable_cluster_is_a_user_error(workdir):
    cfg = tiny_config(cluster={"target": "ray", "ray": {"address": "http://127.0.0.1:9"}})
    proc = ftl_in_process(["run", write_config(workdir, cfg)], workdir)
    assert proc.returncode == 2, proc.stderr
    assert "cannot reach the Ray dashboard at http://127.0.0.1:9" in proc.stderr
    assert run_dirs(workdir) == []


def test_two_node_cluster_places_workers_on_both_nodes(workdir, monkeypatch):
    """ray.cluster_utils.Cluster: two raylets on this machine, 1 CPU each, 2 workers."""
    import ray
    from ray.cluster_utils import Cluster

    from launcher.run.driver import run_trainer
    from launcher.run.submit import prepare_run

    cfg = tiny_config(train={"max_steps": 3}, logging={"every_steps": 1, "wandb": {"mode": "disabled"}})
    path = write_config(workdir, cfg)

    monkeypatch.chdir(workdir)
    folder, _ = prepare_run(str(path), None, ())
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address)
        run_trainer(folder)
    finally:
        ray.shutdown()
        cluster.shutdown()
    summary = json.loads((folder.path / "summary.json").read_text())
    nodes = [h["node_id"] for h in summary["hosts_per_rank"]]
    print("\nrank -> node:", nodes)
    assert len(set(nodes)) == 2
