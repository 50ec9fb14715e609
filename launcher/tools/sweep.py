"""Hyperparameter sweeps (``ftl sweep``) on Ray Tune: every trial is a whole ftl run.

A trial starts one process (``python -m launcher.tools.sweep SPEC``) that prepares its run folder
(``prepare_run`` with the trial's values as ``--set`` overrides: validated, preflighted and
planned like ``ftl run``) under ``<runs>/sweep-<name>-<time>/`` and drives it on the sweep's
embedded Ray with the driver's ``run_trainer``: the same TorchTrainer and per-rank loop as
``ftl run``, and a folder that can be listed, exported and evaluated like any other.

Why a process per trial rather than ``TorchTrainer.fit()`` inside the trial actor: when ASHA
stops a trial, Tune ends the trial's actor at once. A trainer owned by that actor would leave
its worker placement group reserved (Ray Train's cleaner needs the dashboard's state API) and
later trials would wait forever for CPUs. The trial process is its own Ray job: when it dies
(it is killed with its parent), Ray frees everything the job held.

The trial follows the run's ``metrics.jsonl`` as it grows and reports every row holding the
sweep metric to Tune, keyed by training step, so ASHA compares trials at the same step.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from launcher.core.errors import JobFailed, Problem, UserError

DISTRIBUTIONS = ("loguniform", "uniform", "randint", "choice")
ACCEPTED_FORMS = ("loguniform:LO:HI, uniform:LO:HI, randint:LO:HI (integers, both ends included), "
                  "choice:A,B,...  e.g. --param train.lr=loguniform:1e-5:1e-3")
SCHEDULERS = ("asha", "fifo")
ASHA_REDUCTION_FACTOR = 2  # keep the better half of the trials at each rung
SLOT = "ftl_sweep_slot"  # custom Ray resource: one per concurrent trial (trial actors take no CPU)


# ---------------------------------------------------------------- --param specs


@dataclass(frozen=True)
class ParamSpec:
    """One ``--param PATH=DIST:ARGS``; ``values`` are (lo, hi) or the choices."""

    raw: str
    path: str
    kind: str
    values: tuple[Any, ...]

    def candidates(self) -> list[Any]:
        """Values checked against the schema before anything starts: both ends, and a
        fractional value for continuous ranges (an int field must not get ``uniform``)."""
        if self.kind == "choice":
            return list(self.values)
        lo, hi = self.values
        if self.kind == "randint":
            return [lo, hi]
        inner = lo + (hi - lo) * 0.37 if self.kind == "uniform" else math.exp(
            math.log(lo) + (math.log(hi) - math.log(lo)) * 0.37)
        return [lo, hi, inner]

    def domain(self) -> Any:
        from ray import tune

        if self.kind == "choice":
            return tune.choice(list(self.values))
        lo, hi = self.values
        if self.kind == "randint":
            return tune.randint(lo, hi + 1)  # Tune's upper end is exclusive; ours is included
        return tune.loguniform(lo, hi) if self.kind == "loguniform" else tune.uniform(lo, hi)


def _bad(raw: str, message: str) -> UserError:
    return UserError(Problem(f"--param {raw}", message, f"accepted forms: {ACCEPTED_FORMS}"))


def parse_param(raw: str) -> ParamSpec:
    """``train.lr=loguniform:1e-5:1e-3`` -> ParamSpec (syntax only; paths are checked later)."""
    path, sep, dist = raw.partition("=")
    path = path.strip()
    if not sep or not path or not dist.strip():
        raise _bad(raw, "expected PATH=DISTRIBUTION:ARGS")
    kind, _, args = dist.strip().partition(":")
    if kind not in DISTRIBUTIONS:
        from launcher.core.registry import did_you_mean

        close = did_you_mean(kind, DISTRIBUTIONS)
        raise _bad(raw, f"unknown distribution {kind!r}" + (f" (did you mean {close!r}?)" if close else ""))
    if kind == "choice":
        items = [a.strip() for a in args.split(",")]
        if not args.strip() or any(not a for a in items):
            raise _bad(raw, "choice needs one or more comma-separated values")
        return ParamSpec(raw, path, kind, tuple(yaml.safe_load(a) for a in items))
    parts = args.split(":")
    if len(parts) != 2:
        raise _bad(raw, f"{kind} needs two bounds, LO:HI")
    try:
        if kind == "randint":
            lo, hi = (int(p) for p in parts)
        else:
            lo, hi = (float(p) for p in parts)
    except ValueError:
        raise _bad(raw, f"{kind} bounds must be {'integers' if kind == 'randint' else 'numbers'}, "
                        f"got {args!r}") from None
    if not lo < hi:
        raise _bad(raw, f"LO must be below HI, got {lo:g} and {hi:g}")
    if kind == "loguniform" and lo <= 0:
        raise _bad(raw, "loguniform bounds must be positive")
    return ParamSpec(raw, path, kind, (lo, hi))


def _yaml_value(value: Any) -> str:
    """A value as the text of a ``--set`` override (YAML, so types survive)."""
    text = yaml.safe_dump(value, default_flow_style=True)
    return text[: -len("\n...\n")] if text.endswith("\n...\n") else text.strip()


def _override(path: str, value: Any) -> str:
    return f"{path}={_yaml_value(value)}"


def check_sweep(config: str, overrides: tuple[str, ...], specs: list[ParamSpec], *, metric: str,
                scheduler: str) -> Any:
    """Check every ``--param`` against the schema (path and every candidate value) and the
    sweep settings against the config, before Ray starts. Returns the base config."""
    from launcher.config.load import load_config

    base = load_config(config, overrides)
    seen: dict[str, str] = {}
    set_paths = {o.partition("=")[0].strip() for o in overrides}
    for spec in specs:
        if spec.path in seen:
            raise UserError(Problem(f"--param {spec.raw}", f"{spec.path!r} is swept twice",
                                    f"also in --param {seen[spec.path]}"))
        if spec.path in set_paths:
            raise UserError(Problem(f"--param {spec.raw}", f"{spec.path!r} is also fixed by --set",
                                    "sweep it or set it, not both"))
        seen[spec.path] = spec.raw
        for value in spec.candidates():
            override = _override(spec.path, value)
            try:
                load_config(config, (*overrides, override))
            except UserError as exc:
                if any(p.where == f"--set {override}" for p in exc.problems):  # unknown path
                    raise UserError([Problem(f"--param {spec.raw}", p.message, p.hint)
                                     for p in exc.problems]) from None
                raise UserError(exc.problems, title=f"--param {spec.raw}: value {value!r} does not "
                                                    "fit the config") from None
    if base.cluster.target != "local":
        raise UserError(Problem("cluster.target", f"ftl sweep runs on an embedded local Ray, "
                                f"not {base.cluster.target!r}", "--set cluster.target=local"))
    if scheduler not in SCHEDULERS:
        raise UserError(Problem("--scheduler", f"unknown scheduler {scheduler!r}",
                                f"one of: {', '.join(SCHEDULERS)}"))
    if metric.startswith("eval/") and not base.data.eval:
        raise UserError(Problem("--metric", f"{metric!r} needs held-out data but data.eval is empty",
                                "add data.eval, or sweep on train/loss"))
    if scheduler == "asha" and metric.startswith("eval/") and not base.eval.every_steps:
        raise UserError(Problem("eval.every_steps", "asha compares trials at eval steps, but the "
                                "config evaluates only at the end",
                                "--set eval.every_steps=N, or --scheduler fifo"))
    return base


# ---------------------------------------------------------------- one trial (in a Ray worker)


def _die_with_parent() -> None:
    """In the driver child: get SIGKILL when the trial's thread goes (Tune ended the trial)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _new_rows(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """Complete JSON lines appended since ``offset`` (a line being written is left for later)."""
    if not path.exists():
        return [], offset
    with path.open("rb") as fh:
        fh.seek(offset)
        chunk = fh.read()
    end = chunk.rfind(b"\n") + 1
    rows = [json.loads(ln) for ln in chunk[:end].decode().splitlines() if ln.strip()]
    return rows, offset + end


def run_trial(params: dict[str, Any], setup: dict[str, Any]) -> None:
    """Tune's trial function (in a Ray worker): start the trial process, follow its run's
    metrics and report the sweep metric; raise when the run fails."""
    import ray
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    trials = Path(setup["sweep_dir"]) / "trials"
    trials.mkdir(exist_ok=True)
    spec = {"config": setup["config"], "sweep_dir": setup["sweep_dir"],
            "overrides": [*setup["overrides"], *(_override(p, v) for p, v in params.items()),
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
    metric, offset, reported, run_dir = setup["metric"], 0, 0, None
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "launcher.tools.sweep", str(spec_file)],
                                cwd=setup["cwd"],
                                env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        try:
            while True:
                code = proc.poll()
                if run_dir is None and handoff.exists():
                    run_dir = Path(handoff.read_text())
                rows, offset = _new_rows(run_dir / "metrics.jsonl", offset) if run_dir else ([], 0)
                for row in rows:
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


# ---------------------------------------------------------------- the sweep (driver side)


def _progress_callback(say: Callable[[str], None], metric: str) -> Any:
    from ray import tune

    class Progress(tune.Callback):
        """One line per trial event on stderr, instead of Tune's own tables; counts the trials
        that ended (fewer than asked after ``fit()`` means the sweep was interrupted)."""

        ended = 0

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            shown = ", ".join(f"{k}={_fmt(v)}" for k, v in trial.config.items())
            say(f"trial {trial.trial_id} started: {shown}")

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                            **info: Any) -> None:
            say(f"trial {trial.trial_id} step {result.get('step')}: {metric} {_fmt(result.get(metric))}")

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.ended += 1
            say(f"trial {trial.trial_id} ended")

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.ended += 1
            say(f"trial {trial.trial_id} failed")

    return Progress()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


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
    first = tuple(_override(s.path, s.candidates()[0]) for s in specs)
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
            f"# best of {len(results['trials'])} trials ({metric} {_fmt(best['metric'])}, {mode}), "
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


def _status(trial: dict[str, Any], scheduler: str) -> str:
    if trial["error"]:
        return f"error: {trial['error']} (log: {trial['log']})"
    return f"stopped by {scheduler}" if trial["status"] == "stopped" else trial["status"]


def render_results(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    metric = results["metric"]
    best_id = (results.get("best") or {}).get("trial_id")
    table = Table(title=f"sweep: {len(results['trials'])} trials, {metric} ({results['mode']})")
    table.add_column("trial")
    paths = [p.partition("=")[0] for p in results["params"]]
    for p in paths:
        table.add_column(p, justify="right")
    for col in (metric, "step"):
        table.add_column(col, justify="right")
    table.add_column("status")
    table.add_column("run folder", overflow="fold")
    for t in results["trials"]:
        mark = " *" if t["trial_id"] == best_id else ""
        table.add_row(t["trial_id"] + mark, *(_fmt(t["params"].get(p)) for p in paths),
                      _fmt(t["metric"]) if t["metric"] is not None else "-", str(t["step"] or "-"),
                      _status(t, results["scheduler"]),
                      Path(t["run_dir"]).name if t["run_dir"] else "-")
    console = Console()
    console.print(table)
    if results.get("best_config"):
        console.print(f"best: trial {best_id} ({metric} {_fmt(results['best']['metric'])}); "
                      f"config: {results['best_config']}", soft_wrap=True, highlight=False)
    console.print(f"sweep folder: {results['sweep_dir']} (results.json)", soft_wrap=True, highlight=False)


if __name__ == "__main__":
    sys.exit(trial_main(sys.argv[1]))
