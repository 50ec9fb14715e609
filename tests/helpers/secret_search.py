"""Fake, distinctive secrets and the searches that show no file or output line holds them
(used by the local, Ray and Slurm runs that are started with them: tests/integration/
test_secrets.py says which)."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.ftl import tiny_config

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
