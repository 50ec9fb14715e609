"""Secrets in the submitting shell reach the workers through the node environment and appear in
nothing ftl writes: real runs on the ``local`` target and on real Slurm with fake, distinctive
``WANDB_API_KEY``/``HF_TOKEN`` values, then every file of the run folder is searched for them
(config copies, plan, job folder and sbatch script, Slurm and rank logs, W&B offline files,
Ray Train's storage). The ``ray`` target's run, Ray's job info and the dashboard's jobs API
are checked in test_ray_target.py.

The Slurm run also records the batch job's environment, to show what ``ftl`` itself adds to
what sbatch exports (``--export=ALL``, Slurm's default, which is how the secrets and the user's
PATH reach the nodes): nothing but what Slurm and bash set."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import pytest

from tests.conftest import run_dirs, run_ftl, tiny_config, write_config
from tests.helpers.slurm_cluster import SlurmCluster, available

SECRETS = {"WANDB_API_KEY": "wandb-fake-4c1d9e7b2a", "HF_TOKEN": "hf_fake-8e2f6a0c3d"}


def small_run(runs: str = "runs", **sections) -> dict:
    """Two steps, one checkpoint, W&B offline (its files are in the run folder to search)."""
    return tiny_config(train={"max_steps": 2}, checkpoint={"dir": runs, "every_steps": 2},
                       logging={"every_steps": 1, "wandb": {"mode": "offline", "project": "t"}},
                       eval={"at_start": False, "max_generate": 4, "max_new_tokens": 4}, **sections)


def files_holding_a_secret(folder: Path) -> list[str]:
    found = []
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            found += [f"{path.relative_to(folder)}: {name}" for name, value in SECRETS.items()
                      if value.encode() in data]
    return found


def assert_searched(run: Path) -> None:
    """The search covered a real run: the artifacts that could hold a secret exist."""
    names = {p.relative_to(run).parts[0] for p in run.rglob("*")}
    assert {"config.yaml", "plan.json", "logs", "wandb", "checkpoints", "summary.json"} <= names, names
    assert list(run.glob("wandb/offline-run-*/run-*.wandb")), "W&B wrote no offline run"


# ---------------------------------------------------------------- local


def test_local_run_writes_no_secret(workdir):
    proc = run_ftl(["run", write_config(workdir, small_run())], workdir, env=SECRETS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(workdir)
    assert_searched(run)
    assert files_holding_a_secret(run) == []
    assert not any(value in proc.stdout + proc.stderr for value in SECRETS.values())


def test_local_workers_inherit_secrets_from_the_ftl_process(monkeypatch):
    """What the local target relies on instead of a runtime_env: the embedded Ray's raylet is
    started by the ftl process and its workers inherit that environment; ftl's own worker
    runtime_env (``worker_env``) is layered on top and does not remove it."""
    import ray

    from cluster.local import start_private_ray, stop_private_ray
    from launcher.config.load import validate_config
    from launcher.driver import worker_env

    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    temp_dir = start_private_ray(1)
    try:
        @ray.remote(num_cpus=1, runtime_env={"env_vars": worker_env(validate_config(tiny_config()))})
        def seen() -> dict[str, str | None]:
            return {name: os.environ.get(name) for name in (*SECRETS, "TOKENIZERS_PARALLELISM")}

        got = ray.get(seen.remote(), timeout=120)
    finally:
        stop_private_ray(temp_dir)
    assert got == {**SECRETS, "TOKENIZERS_PARALLELISM": "false"}


# ---------------------------------------------------------------- slurm

# Set by Slurm or bash for every batch job, never by ftl (--export=ALL adds them to the exported
# environment); anything else new or changed in the job came from the ftl process.
SLURM_AND_SHELL = {"ENVIRONMENT", "HOSTNAME", "OLDPWD", "PWD", "SHLVL", "_", "TMPDIR"}


@pytest.fixture(scope="module")
def slurm():
    if not available():
        pytest.skip("Slurm packages not installed (scripts/test.sh installs them)")
    cluster = SlurmCluster(cpus=2)
    try:
        yield cluster
    finally:
        cluster.close()


def read_env(path: Path) -> dict[str, str]:
    items = [item.split("=", 1) for item in path.read_bytes().decode().split("\0") if "=" in item]
    return dict(items)


@pytest.fixture(scope="module")
def slurm_run(slurm, tmp_path_factory) -> dict:
    """One real Slurm run submitted with the secrets set; its batch script first saves the
    job's environment outside the run folder (that file holds the secrets)."""
    workdir = tmp_path_factory.mktemp("slurm-secrets")
    venv_bin = Path(sys.executable).parent
    job_env_file = workdir / "job-env.bin"
    setup = [f"env -0 > {shlex.quote(str(job_env_file))}",
             'echo "ftl-test: WANDB_API_KEY ${WANDB_API_KEY:+is set}, HF_TOKEN ${HF_TOKEN:+is set}"',
             f"export PATH={venv_bin}:$PATH"]
    slurm_section = {"nodes": 1, "time": "00:20:00", "python": str(venv_bin / "python"), "setup": setup}
    cfg = small_run(str(workdir / "runs"), cluster={"target": "slurm", "slurm": slurm_section})
    submitted = {**SECRETS, **slurm.env}
    proc = run_ftl(["run", write_config(workdir, cfg)], workdir, env=submitted)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(workdir)
    return {"run": run, "proc": proc, "job_env": read_env(job_env_file),
            "exported": {**os.environ, "PYTHONUNBUFFERED": "1", **submitted}}  # what run_ftl gave ftl


def test_slurm_run_writes_no_secret(slurm_run):
    run, proc = slurm_run["run"], slurm_run["proc"]
    job = json.loads((run / "submission.json").read_text())["job_id"]
    log = (run / f"slurm-{job}.out").read_text()
    assert "ftl-test: WANDB_API_KEY is set, HF_TOKEN is set" in log  # they reached the node
    assert_searched(run)
    assert (run / "job.sbatch").exists() and (run / "job").is_dir()
    assert files_holding_a_secret(run) == []
    assert not any(value in proc.stdout + proc.stderr for value in SECRETS.values())


@pytest.mark.xfail(strict=True, reason="until cluster.slurm runs sbatch with "
                   "env=launcher.submit_env.launch_environment() (lead-owned code)")
def test_ftl_adds_nothing_to_the_slurm_job_environment(slurm_run):
    """The job's environment is the one ftl was started with, plus what Slurm and bash set:
    nothing the ftl process's own imports put in its os.environ (launcher/submit_env.py)."""
    exported, in_job = slurm_run["exported"], slurm_run["job_env"]
    added = {k: v for k, v in in_job.items()
             if exported.get(k) != v and not k.startswith("SLURM") and k not in SLURM_AND_SHELL}
    assert added == {}, f"the ftl process changed the job's environment: {sorted(added)}"
    assert {k for k in exported if k not in in_job} == set()
