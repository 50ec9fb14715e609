"""``ftl sweep``: Ray Tune trials on an embedded local Ray, each trial a whole ftl run."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from launcher.metrics.jsonl import read_metrics
from tests.helpers.ftl import ftl_in_process, run_ftl, tiny_config, write_config

STEPS = 8
SAMPLES = 2  # one wave of trials on 2 CPUs: every trial starts its own worker group


def sweep_config() -> dict:
    """1 worker per trial so 2 trials run at once on 2 CPUs; eval loss every 2 steps for ASHA."""
    return tiny_config("sw", train={"max_steps": STEPS, "micro_batch_size": 4, "lr": 3e-3,
                                    "schedule": "constant"},
                       resources={"num_workers": 1, "cpus_per_worker": 1},
                       eval={"every_steps": 2, "at_start": False, "exact_match": False, "max_batches": 1,
                             "batch_size": 16},
                       logging={"every_steps": 4, "wandb": {"mode": "disabled"}})


def test_sweep_runs_trials_and_keeps_the_best(workdir):
    cfg = write_config(workdir, sweep_config())
    proc = run_ftl(["sweep", cfg, "--param", "train.lr=loguniform:1e-4:1e-2", "--samples", str(SAMPLES),
                    "--scheduler", "asha", "--metric", "eval/loss", "--max-concurrent", "2"], workdir)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"sweep: {SAMPLES} trials, eval/loss (min)" in proc.stdout
    (sweep,) = (workdir / "runs").glob("sweep-sw-*")
    results = json.loads((sweep / "results.json").read_text())
    trials = results["trials"]
    assert len(trials) == SAMPLES and len({t["run_dir"] for t in trials}) == SAMPLES
    for t in trials:
        assert 1e-4 <= t["params"]["train.lr"] <= 1e-2
        run = Path(t["run_dir"])
        assert run.parent == sweep
        # The run really used the trial's value, and Tune saw the run's own eval loss.
        assert yaml.safe_load((run / "config.yaml").read_text())["train"]["lr"] == t["params"]["train.lr"]
        logged = {m["step"]: m["eval/loss"] for m in read_metrics(run / "metrics.jsonl") if "eval/loss" in m}
        assert logged[t["step"]] == t["metric"]
        if t["status"] == "completed":
            assert t["step"] == STEPS and (run / "summary.json").exists() and (run / "final").is_dir()
        else:
            assert t["status"] == "stopped" and t["step"] < STEPS, t  # by ASHA
    best = results["best"]
    assert best["metric"] == min(t["metric"] for t in trials)
    assert len({t["params"]["train.lr"] for t in trials}) == SAMPLES  # really different trials

    best_yaml = sweep / "best.yaml"
    data = yaml.safe_load(best_yaml.read_text())
    assert data["train"]["lr"] == best["params"]["train.lr"] and data["name"] == "sw"
    check = run_ftl(["validate", best_yaml], workdir)
    assert check.returncode == 0 and "ok:" in check.stdout, check.stderr


def test_bad_param_exits_2_before_anything_runs(workdir):
    cfg = write_config(workdir, sweep_config())
    proc = ftl_in_process(["sweep", cfg, "--param", "train.lrr=loguniform:1e-4:1e-2"], workdir)
    assert proc.returncode == 2, proc.stderr
    assert "unknown config path 'train.lrr'" in proc.stderr and "did you mean 'train.lr'" in proc.stderr
    proc = ftl_in_process(["sweep", cfg, "--param", "train.lr=loguniform:1e-4"], workdir)
    assert proc.returncode == 2 and "accepted forms: loguniform:LO:HI" in proc.stderr, proc.stderr
    proc = ftl_in_process(["sweep", cfg, "--param", "train.warmup_steps=uniform:0:10"], workdir)
    assert proc.returncode == 2 and "valid integer" in proc.stderr, proc.stderr
    assert not (workdir / "runs").exists()
