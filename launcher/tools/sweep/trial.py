"""One trial: the Tune trial function (in a Ray worker) and the trial's own process.

The trial function starts ``python -m launcher.tools.sweep SPEC`` (``trial_main``), follows
the run's ``metrics.jsonl`` as it grows and reports every row holding the sweep metric to Tune,
keyed by training step, so ASHA compares trials at the same step.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from launcher.core.errors import JobFailed, UserError
from launcher.metrics.jsonl import JsonlTail
from launcher.tools.sweep.params import as_override


def _die_with_parent() -> None:
    """In the driver child: get SIGKILL when the trial's thread goes (Tune ended the trial)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def run_trial(params: dict[str, Any], setup: dict[str, Any]) -> None:
    """Tune's trial function (in a Ray worker): start the trial process, follow its run's
    metrics and report the sweep metric; raise when the run fails."""
    import ray
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    trials = Path(setup["sweep_dir"]) / "trials"
    trials.mkdir(exist_ok=True)
    spec = {"config": setup["config"], "sweep_dir": setup["sweep_dir"],
            "overrides": [*setup["overrides"], *(as_override(p, v) for p, v in params.items()),
                          f"name={setup['name'][:80]}-{trial_id}"],
            "handoff": str(trials / f"{trial_id}.run")}  # the run folder, written by the trial process
    spec_file, log_path, handoff = (trials / f"{trial_id}.{ext}" for ext in ("json", "log", "run"))
    spec_file.write_text(json.dumps(spec, indent=2))
    # The trial process is a new Ray driver: none of this worker's Ray settings, and the GPUs
    # ftl sweep saw (Ray hides them from this 0-GPU actor); Ray gives the run's workers theirs.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") or k in setup["ray_env"]}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    if setup["cuda_visible_devices"] is not None:
        env["CUDA_VISIBLE_DEVICES"] = setup["cuda_visible_devices"]
    env.update(RAY_ADDRESS=ray.get_runtime_context().gcs_address, RAY_AUTH_MODE="disabled",
               PYTHONUNBUFFERED="1")
    metric, reported, run_dir, tail = setup["metric"], 0, None, None
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "launcher.tools.sweep", str(spec_file)],
                                cwd=setup["cwd"],
                                env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        try:
            while True:
                code = proc.poll()
                if run_dir is None and handoff.exists():
                    run_dir = Path(handoff.read_text())
                    tail = JsonlTail(run_dir / "metrics.jsonl")
                for row in tail.read() if tail else []:
                    if isinstance(row.get(metric), (int, float)):
                        numbers = {k: float(v) for k, v in row.items()
                                   if k != "step" and isinstance(v, (int, float))}
                        tune.report({**numbers, "step": int(row["step"]), "run_dir": str(run_dir)})
                        reported += 1
                if code is not None:
                    break
                time.sleep(0.5)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if code != 0:
        tail = " | ".join(log_path.read_text().strip().splitlines()[-3:])
        raise RuntimeError(f"trial process exit {code}: {tail}; log: {log_path}")
    if not reported:
        raise RuntimeError(f"run {run_dir} never logged {metric!r}; see {run_dir}/metrics.jsonl")


def trial_main(spec_file: str) -> int:
    """``python -m launcher.tools.sweep SPEC``: one trial's process. It prepares the run folder as
    ``ftl run`` does (validate, preflight, plan) and drives it on the sweep's Ray as
    ``python -m launcher.run.driver`` does: one process, so torch and transformers load once."""
    import ray

    from launcher.run.driver import run_trainer
    from launcher.run.submit import prepare_run

    spec = json.loads(Path(spec_file).read_text())
    try:
        folder, _ = prepare_run(spec["config"], None, tuple(spec["overrides"]), runs_dir=spec["sweep_dir"])
    except UserError as exc:
        print(f"error: {exc.render()}", file=sys.stderr)
        return 2
    handoff = Path(spec["handoff"])
    handoff.with_suffix(".tmp").write_text(str(folder.path.resolve()))
    handoff.with_suffix(".tmp").replace(handoff)  # the trial reads a whole path or nothing
    print(f"ftl sweep trial: run folder {folder.path}", flush=True)
    ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
    try:
        run_trainer(folder)
    except JobFailed as exc:
        print(f"ftl: {exc}", file=sys.stderr)
        return 1
    print(f"ftl sweep trial: done; summary in {folder.summary_file}", flush=True)
    return 0
