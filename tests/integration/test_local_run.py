"""Real runs on an embedded Ray cluster with 2 DDP workers over gloo (CPU, fp32)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers.ftl import FTL, run_dirs, run_ftl, tiny_config, write_config
from tests.helpers.runs import losses
from tests.helpers.secret_search import SECRETS, assert_searched, files_holding_a_secret
from tests.helpers.wandb_file import find_wandb_file, history

STEPS = 8


def base_config(**overrides) -> dict:
    # Warm-up covers the resume point (step 4): a scheduler restored at the wrong step
    # changes the LR and the losses. Constant after warm-up, so a shorter run is a prefix.
    cfg = tiny_config(train={"max_steps": STEPS, "micro_batch_size": 4, "lr": 3e-3,
                             "schedule": "constant", "warmup_steps": 6},
                      checkpoint={"dir": "runs", "every_steps": 2, "keep": 3})
    for k, v in overrides.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    return cfg


REFERENCE_OUTPUT: list[str] = []


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    """One uninterrupted run, W&B offline, shared by the tests that compare against it. Started
    with (fake) secrets in its environment, as a user's shell would have them."""
    work = tmp_path_factory.mktemp("ref")
    cfg = base_config(logging={"every_steps": 1, "wandb": {"mode": "offline", "project": "t"}})
    proc = run_ftl(["run", write_config(work, cfg)], work, env=SECRETS)
    assert proc.returncode == 0, proc.stderr
    REFERENCE_OUTPUT[:] = [proc.stdout, proc.stderr]
    (run,) = run_dirs(work)
    return run


def test_no_secret_in_anything_the_run_wrote(reference_run):
    """The workers inherit WANDB_API_KEY/HF_TOKEN from the ftl process's environment (see
    test_secrets.py); no file of the run folder (config, plan, logs, W&B offline files, Ray
    Train's storage, checkpoints) and no output line holds their values."""
    assert_searched(reference_run)
    assert files_holding_a_secret(reference_run) == []
    assert not any(value in text for value in SECRETS.values() for text in REFERENCE_OUTPUT)


def test_run_folder_contents(reference_run):
    run = reference_run
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == STEPS and summary["world_size"] == 2 and summary["launcher"] == "ray"
    assert summary["tokens_per_s"] > 0 and len(summary["peak_rss_mb_per_rank"]) == 2
    assert set(summary["initial"]) >= {"eval/loss", "eval/exact_match", "eval/reverse/loss"}
    assert summary["final"]["eval/loss"] < summary["initial"]["eval/loss"]
    assert sorted(losses(run)) == list(range(1, STEPS + 1))
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["step-00000004", "step-00000006", "step-00000008"]  # keep: 3
    assert (run / "config.yaml").exists() and (run / "plan.json").exists()
    assert (run / "logs" / "rank-0.log").exists() and (run / "logs" / "rank-1.log").exists()


def test_wandb_offline_file_holds_the_logged_losses(reference_run):
    rows = history(find_wandb_file(reference_run))
    logged = {r["_step"]: r["train/loss"] for r in rows if "train/loss" in r}
    assert logged == pytest.approx(losses(reference_run), rel=0, abs=0)
    assert any("eval/exact_match" in r for r in rows)


def test_final_folder_loads_and_generates(reference_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(reference_run / "final")
    model = AutoModelForCausalLM.from_pretrained(reference_run / "final")
    ids = tok.apply_chat_template([{"role": "user", "content": "reverse: a b c"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
    # The weights are the trained ones: the checkpoint at the last step holds the same tensors.
    import torch

    ckpt = torch.load(reference_run / "checkpoints" / "step-00000008" / "model.pt")
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, ckpt[name], rtol=0, atol=0)


def test_sigterm_saves_then_resumes_extend_and_survive_a_kill_mid_checkpoint(reference_run, workdir):
    """A run of k=5 steps gets SIGTERM (a scheduler or a pod stopping `ftl run`): every rank
    saves at the next step boundary and the command exits 75 naming the step. Then `--resume
    --set train.max_steps=8` is killed while step 6's checkpoint is written, then `--resume`
    again: the cut-off save leaves the stop's checkpoint whole, and the run ends with exactly
    the uninterrupted 8-step run's losses at every step. The ranks hold after step 4 until the
    stop request exists (a failpoint), so the signal lands mid-run however fast the steps are."""
    cfg = base_config(logging={"every_steps": 1, "wandb": {"mode": "disabled"}})
    path = write_config(workdir, cfg)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "FTL_FAILPOINT": "train.after_step:4:hold",
           "FTL_FAILPOINT_HOLD": str(workdir / "runs" / "*" / "logs" / "stop-request")}
    proc = subprocess.Popen(FTL + ["run", str(path), "--set", "train.max_steps=6"], cwd=workdir,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            runs = run_dirs(workdir)
            if runs and max(losses(runs[0]), default=0) >= 3:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 75, err[-3000:]
    (run,) = run_dirs(workdir)
    record = json.loads((run / "logs" / "preempted.json").read_text())
    stopped = record["step"]
    assert stopped in (4, 5) and record["reason"] == "SIGTERM"  # 5 unless the signal beat step 4
    assert f"stopped at step {stopped} (SIGTERM)" in err and "continue with: ftl run --resume" in err
    ckpt_dir = run / "checkpoints"
    assert (ckpt_dir / f"step-{stopped:08d}" / "state.json").exists()
    assert sorted(losses(run)) == list(range(1, stopped + 1)) and not (run / "summary.json").exists()

    more = run_ftl(["run", "--resume", run, "--set", f"train.max_steps={STEPS}"], workdir,
                   env={"FTL_FAILPOINT": "checkpoint.before_rename:6"})
    assert more.returncode == 1, more.stderr
    assert max(losses(run)) == 6 and not (run / "logs" / "preempted.json").exists()
    assert (ckpt_dir / ".tmp-step-00000006").is_dir()  # the save was cut off mid-way...
    assert not (ckpt_dir / "step-00000006").exists()
    assert (ckpt_dir / f"step-{stopped:08d}" / "state.json").exists()  # ...the previous one is whole
    proc = run_ftl(["run", "--resume", run], workdir)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((run / "summary.json").read_text())["resumed_from_step"] == stopped
    assert sorted(losses(run)) == list(range(1, STEPS + 1))
    assert losses(run) == losses(reference_run)  # exact, every step
    assert not (ckpt_dir / ".tmp-step-00000006").exists()


def test_failed_rank_is_named_with_its_log(workdir):
    cfg = base_config(data={"eval": []})  # no evaluation: the failure comes sooner
    proc = run_ftl(["run", write_config(workdir, cfg)], workdir,
                   env={"FTL_FAILPOINT": "train.after_step:2:raise", "FTL_FAILPOINT_RANK": "1"})
    assert proc.returncode == 1, proc.stderr
    (run,) = run_dirs(workdir)
    log = run / "logs" / "rank-1.log"
    assert "rank 1 failed: FailpointError: failpoint train.after_step at step 2" in proc.stderr
    assert f"log: {log.relative_to(workdir)}" in proc.stderr
    assert "Traceback" in log.read_text()
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("shutdown", ["clean", "hangs"])
def test_ctrl_c_stops_everything_and_exits_130(workdir, shutdown):
    """Ctrl-C shuts the private Ray down; if that shutdown blocks (failpoint), a deadline kills
    every process the command started, so Ctrl-C always stops the run."""
    cfg = base_config(train={"max_steps": 100_000}, checkpoint={"every_steps": 100_000},
                      data={"eval": []})  # no evaluation: training starts sooner
    path = write_config(workdir, cfg)
    env = {**os.environ}
    if shutdown == "hangs":
        env.update(FTL_FAILPOINT="local.shutdown:0:hang", FTL_INTERRUPT_GRACE_S="3")
    proc = subprocess.Popen(FTL + ["run", str(path)], cwd=workdir, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 240
        metrics = None
        while time.time() < deadline and proc.poll() is None:
            runs = run_dirs(workdir)
            if runs and losses(runs[0]):
                metrics = losses(runs[0])
                break
            time.sleep(0.5)
        assert metrics, "training never started"
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 3  # raylet, gcs, workers...
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err
        assert "interrupted" in err
        assert ("killed the" in err) == (shutdown == "hangs"), err[-2000:]
        if shutdown == "hangs":  # the stacks say where it blocked, for a bug report
            stacks = (runs[0] / "logs" / "interrupt-stacks.txt").read_text()
            assert 'failpoints.py", line' in stacks and "in hit" in stacks, stacks
        gone, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, [p.info if hasattr(p, "info") else p for p in alive]
    finally:  # never leave a failed test's run training in the background
        for p in psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []:
            p.kill()
        if proc.poll() is None:
            proc.kill()


def test_same_loop_under_torchrun_and_single_process(reference_run, workdir, monkeypatch):
    """The per-rank loop gives Ray's exact losses under torchrun (2 ranks), and the same
    math in one process with 2 accumulation steps (same global batch)."""
    from launcher.run.submit import prepare_run

    cfg_path = write_config(workdir, base_config(logging={"every_steps": 1, "wandb": {"mode": "disabled"}}))
    monkeypatch.chdir(workdir)
    folder, _ = prepare_run(str(cfg_path), None, ())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
         "-m", "launcher.train.loop", str(folder.path)], env=env, capture_output=True, text=True, timeout=600)
    assert torchrun.returncode == 0, torchrun.stderr[-3000:]
    assert losses(folder.path) == losses(reference_run)

    single, _ = prepare_run(str(cfg_path), None, ("resources.num_workers=1", "train.global_batch_size=8"))
    proc = subprocess.run([sys.executable, "-m", "launcher.train.loop", str(single.path)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((single.path / "summary.json").read_text())["launcher"] == "single"
    assert losses(single.path) == pytest.approx(losses(reference_run), rel=1e-5)
