"""The sweep, on the ``ftl sweep`` side: checks, an embedded Ray running Tune, the results.

``run_sweep`` writes ``results.json`` and ``best.yaml`` in the sweep folder; every trial is a
whole run folder below it.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from launcher.core.errors import JobFailed, Problem, UserError
from launcher.tools.sweep.params import ACCEPTED_FORMS, ParamSpec, as_override, check_sweep, parse_param
from launcher.tools.sweep.report import fmt
from launcher.tools.sweep.trial import run_trial

ASHA_REDUCTION_FACTOR = 2  # keep the better half of the trials at each rung
SLOT = "ftl_sweep_slot"  # custom Ray resource: one per concurrent trial (trial actors take no CPU)


def _progress_callback(say: Callable[[str], None], metric: str) -> Any:
    from ray import tune

    class Progress(tune.Callback):
        """One line per trial event on stderr, instead of Tune's own tables; counts the trials
        that ended (fewer than asked after ``fit()`` means the sweep was interrupted)."""

        ended = 0

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            shown = ", ".join(f"{k}={fmt(v)}" for k, v in trial.config.items())
            say(f"trial {trial.trial_id} started: {shown}")

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                            **info: Any) -> None:
            say(f"trial {trial.trial_id} step {result.get('step')}: {metric} {fmt(result.get(metric))}")

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.ended += 1
            say(f"trial {trial.trial_id} ended")

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.ended += 1
            say(f"trial {trial.trial_id} failed")

    return Progress()


def _scheduler(name: str, cfg: Any, metric: str) -> Any:
    if name == "fifo":
        return None
    from ray.tune.schedulers import ASHAScheduler

    every = cfg.eval.every_steps if metric.startswith("eval/") else cfg.logging.every_steps
    # max_t one past the last step: a trial that reaches max_t is *stopped* by ASHA, which would
    # end its run before the final eval and final/ export. Trials finish on their own instead.
    return ASHAScheduler(time_attr="step", max_t=cfg.train.max_steps + 1,
                         grace_period=min(every, cfg.train.max_steps),
                         reduction_factor=ASHA_REDUCTION_FACTOR)


def default_concurrency(cfg: Any, num_cpus: int) -> int:
    """As many trials as the local CPUs (and GPUs) hold at once."""
    res = cfg.resources
    fits = int(num_cpus // (res.num_workers * res.cpus_per_worker))
    if res.gpus_per_worker > 0:
        import torch

        fits = min(fits, int(torch.cuda.device_count() // (res.num_workers * res.gpus_per_worker)))
    return max(1, fits)


def run_sweep(config: str, params: list[str], overrides: tuple[str, ...] = (), *, samples: int,
              metric: str = "eval/loss", mode: str = "min", scheduler: str = "asha",
              max_concurrent: int | None = None, runs_dir: str | None = None,
              say: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> dict[str, Any]:
    """Run the sweep; write ``results.json`` and ``best.yaml`` in the sweep folder; return the
    results. Raises UserError before anything starts when an input is wrong, JobFailed when no
    trial produced the metric."""
    from cluster.local import LocalTarget
    from launcher.run.rundir import RunFolder
    from launcher.run.submit import prepare_run

    if not params:
        raise UserError(Problem("--param", "nothing to sweep", f"accepted forms: {ACCEPTED_FORMS}"))
    if mode not in ("min", "max"):
        raise UserError(Problem("--mode", f"expected min or max, got {mode!r}"))
    specs = [parse_param(p) for p in params]
    cfg = check_sweep(config, overrides, specs, metric=metric, scheduler=scheduler)
    first = tuple(as_override(s.path, s.candidates()[0]) for s in specs)
    prepare_run(config, None, (*overrides, *first), runs_dir=runs_dir, dry_run=True)  # preflight once
    num_cpus = LocalTarget().num_cpus(cfg)
    concurrent = max_concurrent or default_concurrency(cfg, num_cpus)
    sweep = RunFolder.create(runs_dir or cfg.checkpoint.dir, f"sweep-{cfg.name}")
    sweep_dir = sweep.path.resolve()
    say(f"sweep folder: {sweep_dir}")
    setup = {"config": str(Path(config).resolve()), "overrides": tuple(overrides), "cwd": os.getcwd(),
             "sweep_dir": str(sweep_dir), "name": cfg.name, "metric": metric,
             "ray_env": ("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "RAY_TRAIN_ENABLE_PRINT_PATCH"),
             "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    grid = _run_tuner(specs, setup, cfg, samples=samples, metric=metric, mode=mode, scheduler=scheduler,
                      concurrent=concurrent, num_cpus=num_cpus, say=say)
    results = _collect(grid, specs, metric, mode, sweep_dir)
    results.update(config=setup["config"], overrides=list(overrides), params=[s.raw for s in specs],
                   metric=metric, mode=mode, scheduler=scheduler, samples=samples,
                   max_concurrent=concurrent, sweep_dir=str(sweep_dir))
    best = results["best"]
    if best is not None:
        data = yaml.safe_load((Path(best["run_dir"]) / "config.yaml").read_text())
        data["name"] = cfg.name  # the trial's folder name carried its id; a rerun is a new run
        (sweep_dir / "best.yaml").write_text(
            f"# best of {len(results['trials'])} trials ({metric} {fmt(best['metric'])}, {mode}), "
            f"from {best['run_dir']}\n" + yaml.safe_dump(data, sort_keys=False))
        results["best_config"] = str(sweep_dir / "best.yaml")
    sweep.write_json("results.json", results)
    if best is None:
        errors = [t["error"] for t in results["trials"] if t.get("error")]
        raise JobFailed(f"no trial reported {metric!r}" + (f"; first error: {errors[0]}" if errors else "")
                        + f"\n    results: {sweep_dir / 'results.json'}")
    return results


def _run_tuner(specs: list[ParamSpec], setup: dict[str, Any], cfg: Any, *, samples: int, metric: str,
               mode: str, scheduler: str, concurrent: int, num_cpus: int,
               say: Callable[[str], None]) -> Any:
    """An embedded Ray (private temp dir, no dashboard, auth off, as ``cluster/local.py``),
    shut down when the sweep ends, also on Ctrl-C."""
    from ray import tune

    from cluster.local import start_private_ray, stop_private_ray

    def trial(params: dict[str, Any]) -> None:
        run_trial(params, setup)

    temp_dir = start_private_ray(num_cpus, resources={SLOT: concurrent})
    progress = _progress_callback(say, metric)
    try:
        tuner = tune.Tuner(
            tune.with_resources(trial, {SLOT: 1}),
            param_space={s.path: s.domain() for s in specs},
            tune_config=tune.TuneConfig(metric=metric, mode=mode, num_samples=samples,
                                        max_concurrent_trials=concurrent,
                                        scheduler=_scheduler(scheduler, cfg, metric)),
            run_config=tune.RunConfig(name="tune", storage_path=setup["sweep_dir"], verbose=0,
                                      callbacks=[progress]),
        )
        with contextlib.redirect_stdout(sys.stderr):  # Tune prints a banner even when silent
            grid = tuner.fit()
    finally:
        stop_private_ray(temp_dir)
    if progress.ended < samples:  # Tune caught Ctrl-C and stopped the trials: so do we
        raise KeyboardInterrupt
    return grid


def _max_steps(run_dir: Path) -> int | None:
    data = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").exists() else {}
    return (data.get("train") or {}).get("max_steps")


def _collect(grid: Any, specs: list[ParamSpec], metric: str, mode: str, sweep_dir: Path) -> dict[str, Any]:
    trials = []
    for result in grid:
        m = result.metrics or {}
        trial_id = m.get("trial_id") or "_".join(Path(result.path).name.split("_")[1:3])
        handoff = sweep_dir / "trials" / f"{trial_id}.run"
        run_dir = handoff.read_text() if handoff.exists() else None
        value = m.get(metric)
        # Completed: Tune saw the metric at the run's last step. Stopped: the scheduler ended the
        # trial at the step shown (its run may have got a little further before it was killed).
        if result.error is not None:
            status = "error"
        elif run_dir and m.get("step") == _max_steps(Path(run_dir)):
            status = "completed"
        else:
            status = "stopped"
        trials.append({
            "trial_id": trial_id,
            "params": {s.path: result.config.get(s.path) for s in specs},
            "metric": value if isinstance(value, (int, float)) and not math.isnan(value) else None,
            "step": m.get("step"),
            "status": status,
            "run_dir": run_dir,
            "log": str(sweep_dir / "trials" / f"{trial_id}.log"),
            "error": str(result.error).strip().splitlines()[-1] if result.error is not None else None,
        })
    trials.sort(key=lambda t: t["trial_id"])
    scored = [t for t in trials if t["metric"] is not None]
    pick = min if mode == "min" else max
    best = pick(scored, key=lambda t: t["metric"]) if scored else None
    return {"trials": trials, "best": best}
