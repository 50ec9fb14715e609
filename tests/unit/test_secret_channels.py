"""Secrets set in the submitting shell never enter what ftl hands Ray: the workers'
runtime_env (``launcher.driver.worker_env``) and the Ray job's spec. Workers inherit them from
the node environment instead (tests/integration/test_secrets.py checks that end to end)."""

from __future__ import annotations

import json

import pytest

from cluster.ray_jobs import RayJobsTarget
from launcher.config.load import validate_config
from launcher.driver import worker_env
from launcher.rundir import RunFolder
from tests.conftest import tiny_config

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
