"""One writer per run folder, with a real `ftl run` (issue #20, item 7). One short local run
(2 DDP workers, no eval) is started in the background and held at step 3 by a failpoint, after its
step-2 checkpoint: while it runs, a resume of its folder is refused naming it; once it is
stopped, its folder serves the changed-backend resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from launcher.run.rundir import RunFolder
from tests.helpers.ftl import FTL, run_dirs, run_ftl, tiny_config, write_config


@pytest.fixture(scope="module")
def live_run(tmp_path_factory):
    """(work dir, run folder, the running `ftl run` process), its step-2 checkpoint published."""
    work = tmp_path_factory.mktemp("writers")
    cfg = tiny_config(train={"max_steps": 4}, checkpoint={"dir": "runs", "every_steps": 2, "keep": 2})
    del cfg["data"]["eval"]  # no evaluation: the run reaches its checkpoint sooner
    env = {**os.environ, "FTL_FAILPOINT": "train.after_step:3:hang", "FTL_INTERRUPT_GRACE_S": "5"}
    proc = subprocess.Popen(FTL + ["run", str(write_config(work, cfg))], cwd=work, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        run = None
        while time.time() < deadline and proc.poll() is None:
            runs = run_dirs(work)
            if runs and (runs[0] / "checkpoints" / "step-00000002" / "state.json").exists():
                run = runs[0]
                break
            time.sleep(0.5)
        if run is None:
            err = proc.communicate(timeout=60)[1] if proc.poll() is not None else "running"
            pytest.fail(f"no step-2 checkpoint: {err[-3000:]}")
        yield work, run, proc
    finally:  # never leave a run training in the background
        stop(proc)


def stop(proc: subprocess.Popen) -> int:
    """Ctrl-C the run (it shuts its Ray down and exits 130); kill what is left if it does not."""
    if proc.poll() is None:
        children = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            for p in children:
                p.kill()
            proc.kill()
            proc.communicate()
    return proc.returncode


@pytest.fixture(scope="module")
def stopped_run(live_run) -> tuple[Path, Path]:
    work, run, proc = live_run
    stop(proc)
    return work, run


def snapshot(run: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(run)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(run.rglob("*")) if p.is_file()}


def test_a_running_ftl_run_holds_its_folder_until_it_ends(live_run):
    work, run, proc = live_run
    assert proc.poll() is None
    holder = json.loads((run / ".lock").read_text())
    assert holder["pid"] == proc.pid and holder["command"].startswith("ftl run ")
    second = run_ftl(["run", "--resume", run], work)
    assert second.returncode == 2, second.stderr
    assert f"this run folder is in use: held by pid {proc.pid} on host {holder['host']} since " \
           in second.stderr
    assert "hint: one process writes a run folder at a time" in second.stderr
    assert proc.poll() is None  # the first run was left alone
    assert stop(proc) == 130
    RunFolder(run).hold_writer_lock().release()  # the holder is gone: the folder is free


def test_a_resume_that_changes_the_backend_is_refused_and_changes_nothing(stopped_run):
    work, run = stopped_run
    ckpt = run / "checkpoints" / "step-00000002"
    assert json.loads((ckpt / "writer.json").read_text()) == {
        "backend": "ddp", "zero_stage": None, "model": "builtin:tiny-llama", "adapters": None}
    before = snapshot(run)
    proc = run_ftl(["run", "--resume", run, "--set", "sharding.backend=fsdp2"], work)
    assert proc.returncode == 2, proc.stderr
    assert f"{ckpt}: this checkpoint was written with other settings than this resume asks for " \
           "(sharding backend: ddp -> fsdp2)" in proc.stderr
    assert f"`ftl export {run} --to DIR`, then `ftl run CONFIG --set model.path=DIR`" in proc.stderr
    assert "Traceback" not in proc.stderr
    after = snapshot(run)
    assert after["config.yaml"] == before["config.yaml"]  # byte for byte, not even rewritten
    assert after == before  # nor anything else: checkpoints, records, lock, logs
