"""Elastic workers (``resources.min_workers``) on a real two-raylet Ray cluster: Ray Train's
elastic mode shrinks the run when a node is lost and grows it back when the node returns."""

from __future__ import annotations

import json
import time

import pytest

from tests.helpers.ftl import tiny_config, write_config


def test_elastic_run_shrinks_on_a_lost_node_and_grows_back(workdir, monkeypatch):
    """`resources.min_workers: 1` of 2 on two raylets (1 CPU each). At step 3 one node goes
    away: Ray Train restarts the run on the one worker that fits, from the step-2 checkpoint,
    the global batch kept by accumulation. At step 6 the node is back: Ray Train resizes to two
    workers from the step-4 checkpoint and the run ends on both. Every loss equals a fixed
    2-rank run's (torchrun) within float summation order. The ranks hold at steps 3 and 6
    (failpoints) until the test has changed the cluster."""
    import threading

    import ray
    from ray.cluster_utils import Cluster

    from launcher.run.driver import run_trainer
    from launcher.run.submit import prepare_run
    from tests.helpers.runs import losses, prepare, torchrun

    cfg = tiny_config(train={"max_steps": 8, "max_failures": 2, "schedule": "constant"},
                      checkpoint={"dir": "runs", "every_steps": 2, "keep": 5},
                      logging={"every_steps": 1, "wandb": {"mode": "disabled"}}, data={"eval": []})
    (workdir / "ref").mkdir()
    reference = prepare(workdir / "ref", "ref", cfg)
    assert torchrun(reference).returncode == 0
    cfg["resources"] = {**cfg["resources"], "min_workers": 1}
    monkeypatch.chdir(workdir)
    folder, _ = prepare_run(str(write_config(workdir, cfg)), None, ())
    release = workdir / "release"
    monkeypatch.setenv("FTL_FAILPOINT", "train.after_step:3:hold,train.after_step:6:hold")
    monkeypatch.setenv("FTL_FAILPOINT_HOLD", f"{release}-{{step}}")
    monkeypatch.setenv("FTL_ELASTIC_RESIZE_CHECK_S", "1")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    node = cluster.add_node(num_cpus=1)
    outcome: dict = {}

    def drive() -> None:
        try:
            run_trainer(folder)
        except BaseException as exc:
            outcome["error"] = exc

    def wait_for(condition, what: str, timeout: float = 180) -> None:
        deadline = time.time() + timeout
        while not condition():
            assert time.time() < deadline and thread.is_alive(), f"{what}: {outcome}"
            time.sleep(0.3)

    pid_file = folder.path / "logs" / "rank-1.pid"
    try:
        ray.init(address=cluster.address)
        thread = threading.Thread(target=drive, daemon=True)
        thread.start()
        wait_for(lambda: max(losses(folder.path), default=0) >= 2 and pid_file.exists(), "2 ranks at step 3")
        cluster.remove_node(node)  # rank 1's node is lost
        (workdir / "release-3").touch()
        wait_for(lambda: max(losses(folder.path), default=0) >= 5, "one rank at step 6")
        first_rank1 = pid_file.stat().st_mtime
        cluster.add_node(num_cpus=1)  # the node is back
        wait_for(lambda: pid_file.stat().st_mtime > first_rank1, "a second rank again")
        (workdir / "release-6").touch()
        thread.join(timeout=300)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert "error" not in outcome, outcome
    summary = json.loads((folder.path / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["restarts"] == 2 and summary["resumed_from_step"] == 4
    log = (folder.path / "logs" / "rank-0.log").read_text()
    assert "resumed from" in log and "step-00000002" in log  # the 1-worker restart
    assert sorted(losses(folder.path)) == list(range(1, 9))
    assert losses(folder.path) == pytest.approx(losses(reference), rel=1e-5)
