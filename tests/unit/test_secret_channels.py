"""Secrets set in the submitting shell never enter what ftl hands Ray: the workers'
runtime_env (``launcher.run.driver.worker_env``) and the Ray job's spec. Workers inherit them from
the node environment instead (tests/integration/test_secrets.py checks that end to end)."""

from __future__ import annotations

import json

import pytest

from cluster.ray_jobs import RayJobsTarget
from launcher.config.load import validate_config
from launcher.run.driver import worker_env
from launcher.run.rundir import RunFolder
from tests.helpers.ftl import tiny_config

SECRETS = {"WANDB_API_KEY": "wandb-unit-7f3a9c1e", "HF_TOKEN": "hf_unit-2b8d4e6f"}


@pytest.fixture
def secrets_in_env(monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("WANDB_MODE", "offline")


def test_worker_runtime_env_carries_settings_not_secrets(secrets_in_env):
    env = worker_env(validate_config(tiny_config()))
    assert env["WANDB_MODE"] == "offline"  # plain settings still pass through
    assert not set(SECRETS) & set(env) and not set(SECRETS.values()) & set(env.values())


def test_ray_job_spec_carries_no_secret(secrets_in_env, tmp_path):
    cfg = validate_config(tiny_config(cluster={"target": "ray", "ray": {"address": "http://head:8265"}}))
    spec = RayJobsTarget().job_spec(RunFolder(tmp_path / "run"), cfg, "/staged")
    text = json.dumps(spec)
    assert spec["runtime_env"]["env_vars"]["WANDB_MODE"] == "offline"
    assert not any(name in text or value in text for name, value in SECRETS.items())


def test_sbatch_script_and_kubernetes_manifests_carry_no_secret(secrets_in_env):
    """What the other targets write or submit: the sbatch script (the job gets the secrets from
    the exported environment) and the ConfigMap + RayJob (secretKeyRef names, never values)."""
    import yaml

    from cluster.k8s_manifest import render_manifests
    from cluster.slurm_script import render_sbatch

    slurm = validate_config(tiny_config(cluster={"target": "slurm"}))
    script = render_sbatch(slurm, "/shared/runs/t", "/shared/runs/t/job")
    refs = {"wandb_secret": {"name": "wandb", "key": "api-key"}, "hf_secret": {"name": "hf", "key": "token"},
            "runs_pvc": "runs"}
    k8s = validate_config(tiny_config(checkpoint={"dir": "/runs"},
                                      cluster={"target": "kubernetes", "kubernetes": refs}))
    manifests = yaml.safe_dump_all(render_manifests(k8s, "/runs/t", {"config.yaml": "name: t\n"}))
    assert manifests.count("secretKeyRef") == 4  # both secrets, head and worker pods
    for text in (script, manifests):
        assert not any(value in text for value in SECRETS.values())
