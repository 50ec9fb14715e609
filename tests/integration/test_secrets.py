"""Secrets in the submitting shell reach the workers through the node environment and appear in
nothing ftl writes. The real runs that check it are the suite's existing ones, started with
fake, distinctive ``WANDB_API_KEY``/``HF_TOKEN`` values: the local reference run
(test_local_run.py), the Slurm run (test_slurm_target.py) and the ``ray`` target's run with
Ray's job info and the dashboard's jobs API (test_ray_target.py); every file of their run
folders is searched (config copies, plan, job folder and sbatch script, Slurm and rank logs,
W&B offline files, Ray Train's storage). The Slurm run also records the batch job's
environment, to show what ``ftl`` itself adds to what sbatch exports (``--export=ALL``,
Slurm's default, which is how the secrets and the user's PATH reach the nodes): nothing but
what Slurm and bash set. tests/helpers/secret_search.py holds the searches; this module holds the
local inheritance check."""

from __future__ import annotations

import os

from tests.helpers.ftl import tiny_config
from tests.helpers.secret_search import SECRETS


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
