"""Secrets in the submitting shell reach the workers through the node environment and appear in
nothing ftl writes. The real runs that check it are the suite's existing ones, started with
fake, distinctive ``WANDB_API_KEY``/``HF_TOKEN`` values: the local reference run
(test_local_run.py), the Slurm run (test_slurm_target.py) and the ``ray`` target's run with
Ray's job info and the dashboard's jobs API (test_ray_target.py); every file of their run
folders is searched (config copies, plan, job folder and sbatch script, Slurm and rank logs,
W&B offline files, Ray Train's storage). The Slurm run also records the batch job's
environment, to show what ``ftl`` itself adds to what sbatch exports (``--export=ALL``,
Slurm's default, which is how the secrets and the user's PATH reach the nodes): nothing but
what Slurm and bash set. This module holds the helpers and the local inheritance check."""

from __future__ import annotations

import os
from pathlib import Path

from tests.conftest import tiny_config

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


def test_local_workers_inherit_secrets_from_the_ftl_process(monkeypatch):
    """What the local target relies on instead of a runtime_env: the embedded Ray's raylet is
    started by the ftl process and its workers inherit that environment; ftl's own worker
    runtime_env (``worker_env``) is layered on top and does not remove it."""
    import ray

    from cluster.local import start_private_ray, stop_private_ray
    from launcher.config.load import validate_config
    from launcher.run.driver import worker_env

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


def read_env(path: Path) -> dict[str, str]:
    items = [item.split("=", 1) for item in path.read_bytes().decode().split("\0") if "=" in item]
    return dict(items)


def job_env_additions(exported: dict[str, str], in_job: dict[str, str]) -> dict[str, str]:
    """What the batch job's environment has that the environment ftl was started with has not
    (beyond what Slurm and bash set): what the ftl process's own imports put in its os.environ
    would show here (launcher/run/submit_env.py)."""
    return {k: v for k, v in in_job.items()
            if exported.get(k) != v and not k.startswith("SLURM") and k not in SLURM_AND_SHELL}
