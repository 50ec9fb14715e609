"""A worker group Ray cannot place fails within ``resources.placement_timeout_s``, naming the
resources it waited for (``launcher.run.placement``), instead of Ray Train retrying for ever.

The trainer is built here the way ``launcher.run.driver.run_trainer`` builds it, on a real embedded
Ray with 2 CPUs, and asks for one worker with 64 CPUs: preflight is not involved."""

from __future__ import annotations

import os
import time

import pytest

from launcher.config.load import validate_config
from launcher.core.errors import JobFailed
from launcher.run.placement import START_TIMEOUT_ENV, bounded_placement, failure_limits
from tests.helpers.ftl import tiny_config


def _never_runs(config: dict) -> None:
    raise AssertionError("a worker that cannot be placed must not start")


@pytest.fixture
def private_ray():
    from cluster.local import start_private_ray, stop_private_ray

    temp_dir = start_private_ray(2)
    try:
        yield
    finally:
        stop_private_ray(temp_dir)


def test_unplaceable_worker_group_fails_within_the_timeout(private_ray, tmp_path):
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg = validate_config(tiny_config(resources={"num_workers": 1, "cpus_per_worker": 64,
                                                 "placement_timeout_s": 4}))
    trainer = TorchTrainer(
        _never_runs,
        scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 64}),
        run_config=RunConfig(name="unplaceable", storage_path=str(tmp_path),
                             failure_config=FailureConfig(max_failures=0, **failure_limits(cfg))),
    )
    start = time.monotonic()
    with pytest.raises(JobFailed) as failed, bounded_placement(cfg):
        trainer.fit()
    elapsed = time.monotonic() - start
    message = str(failed.value)
    print(f"\nfailed after {elapsed:.1f} s: {message}")
    assert "could not place the workers within 4 s (resources.placement_timeout_s)" in message
    assert "1 worker x (64 CPU) = {CPU: 64}" in message
    assert "the cluster has {CPU: 2, GPU: 0} in total" in message
    # Ray's own default would retry every 60 s for ever; 4 s plus controller start-up here.
    assert elapsed < 45
    assert START_TIMEOUT_ENV not in os.environ  # the driver's environment is restored


def test_run_trainer_fails_an_unplaceable_run_in_bounded_time(workdir, monkeypatch):
    """Through ftl's own driver: preflight saw 4 CPUs (cluster.local.num_cpus), the Ray it runs
    on has 2, and 2 workers x 2 CPUs cannot be placed there."""
    from cluster.local import start_private_ray, stop_private_ray
    from launcher.run.driver import run_trainer
    from launcher.run.submit import prepare_run
    from tests.helpers.ftl import write_config

    cfg = tiny_config(resources={"num_workers": 2, "cpus_per_worker": 2, "placement_timeout_s": 4},
                      cluster={"local": {"num_cpus": 4}})
    monkeypatch.chdir(workdir)
    folder, _ = prepare_run(str(write_config(workdir, cfg)), None, ())
    temp_dir = start_private_ray(2)
    start = time.monotonic()
    try:
        with pytest.raises(JobFailed) as failed:
            run_trainer(folder)
    finally:
        stop_private_ray(temp_dir)
    assert "2 workers x (2 CPU) = {CPU: 4}" in str(failed.value)
    assert time.monotonic() - start < 60
