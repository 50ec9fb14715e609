"""The Ray-side driver: build a ``TorchTrainer`` whose workers run the per-rank loop.

It runs wherever a Ray cluster is reachable (embedded here, a Ray Jobs entrypoint, or inside
an sbatch script) and needs only the run folder: the resolved config lives there.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from launcher.core import env, preemption
from launcher.core.errors import JobFailed
from launcher.core.workers import WORKER_ENV, thread_env, worker_threads
from launcher.run.ray_patches import SETUP_HOOK
from launcher.run.rundir import RunFolder

# Environment passed through to workers when set on the driver. This becomes the workers'
# Ray runtime_env, which Ray shows in its dashboard, state API and logs: never a secret here.
# WANDB_API_KEY and HF_TOKEN reach workers from the node's own environment (README, Secrets).
PASS_THROUGH = ("WANDB_MODE", "HF_HOME", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", env.HOME,
                env.FAILPOINT, env.FAILPOINT_RANK, env.FAILPOINT_HOLD, "TORCH_EXTENSIONS_DIR",
                "PYTHONPATH")


def _worker_entry(config: dict[str, Any]) -> None:
    from launcher.train.loop import train_rank

    # Relative paths in the config (uploaded data under ftl-data/) are relative to the
    # driver's directory: the job's working_dir, unpacked at the same path on every node.
    if os.path.isdir(config.get("cwd", "")):
        os.chdir(config["cwd"])
    train_rank(config["run_dir"])


def worker_env(cfg: Any) -> dict[str, str]:
    """The workers' ``runtime_env`` variables: settings only. Secrets are inherited from the
    node environment (the raylet's), never passed here: a runtime_env is visible to anyone who
    can read the Ray dashboard."""
    cpu = not cfg.resources.gpus_per_worker  # from the config, not from the submitting host
    variables = {**WORKER_ENV, **thread_env(worker_threads(cfg.resources), cpu=cpu)}
    variables.update({k: os.environ[k] for k in PASS_THROUGH if k in os.environ})
    return variables


def run_trainer(folder: RunFolder) -> None:
    """Run the job to completion on the connected Ray cluster; raise JobFailed on failure."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchConfig, TorchTrainer

    from launcher.run.placement import bounded_placement, failure_limits

    cfg = folder.load_config()
    preemption.clear(folder.path)  # a new launch: an earlier launch's stop request is done
    controller = _controller(cfg.method)
    if controller is not None:  # online RL: a controller drives its own Ray actor groups
        controller(folder)
        return
    use_gpu = cfg.resources.gpus_per_worker > 0
    resources = {"CPU": cfg.resources.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = cfg.resources.gpus_per_worker
    launch_id = folder.launch_id() or "0"
    folder.clear_failures()
    trainer = TorchTrainer(
        _worker_entry,
        train_loop_config={"run_dir": str(folder.path.resolve()), "cwd": os.getcwd()},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo",
                                 timeout_s=cfg.train.collective_timeout_s),
        scaling_config=ScalingConfig(
            num_workers=_worker_count(cfg), use_gpu=use_gpu, resources_per_worker=resources,
            elastic_resize_monitor_interval_s=env.elastic_resize_check_s(),
        ),
        run_config=RunConfig(
            name=f"{folder.path.name}-{launch_id}",  # unique: Ray resumes same-named runs
            storage_path=str((folder.path / "ray").resolve()),
            failure_config=FailureConfig(max_failures=cfg.train.max_failures, **failure_limits(cfg)),
            worker_runtime_env={"env_vars": worker_env(cfg)},
        ),
    )
    try:
        with bounded_placement(cfg):  # fails naming the resources instead of waiting for ever
            trainer.fit()
    except TrainingFailedError as exc:
        raise job_failure(folder, exc) from None


def _worker_count(cfg: Any) -> int | tuple[int, int]:
    """Ray Train's ``num_workers``: fixed, or ``(min, max)`` for its elastic mode, which starts
    with what fits, restarts on fewer after a loss and grows back when resources return."""
    low = cfg.resources.min_workers
    return (low, cfg.resources.num_workers) if low is not None else cfg.resources.num_workers


def _controller(method: str) -> Any:
    """The method's own controller (``StrategySpec.controller``), or None for a TorchTrainer."""
    from launcher.core.lazy import load_object
    from strategies import STRATEGIES

    spec = STRATEGIES.get(method, "method")
    return load_object(spec.controller) if spec.controller else None


def job_failure(folder: RunFolder, exc: BaseException | None) -> JobFailed:
    """Name the failed rank(s), their error and their log file."""
    failures = folder.failures()
    ranks = dict(sorted(failures.items()))
    if not ranks and exc is not None:
        for rank, err in sorted(getattr(exc, "worker_failures", {}).items()):
            ranks[int(rank)] = {"error": str(err).strip().splitlines()[-1] if str(err).strip() else repr(err)}
    logs = {r: str(folder.logs / f"rank-{r}.log") for r in ranks}
    if ranks:
        lines = [f"rank {r} failed: {info['error']}\n    log: {logs[r]}" for r, info in ranks.items()]
        message = "\n".join(lines)
    else:
        message = f"the job failed: {str(exc).strip().splitlines()[0] if exc else 'unknown error'}"
    return JobFailed(message, {r: i["error"] for r, i in ranks.items()}, logs)


def main() -> None:
    """``python -m launcher.run.driver RUN_DIR [--seed DIR]``: the entrypoint on a cluster (Ray
    Jobs, Slurm). ``--seed`` (re)writes the run folder's config from a staged copy."""
    import argparse

    import ray

    parser = argparse.ArgumentParser(prog="python -m launcher.run.driver")
    parser.add_argument("run_dir")
    parser.add_argument("--seed", default=None)
    args = parser.parse_args()
    if args.seed:
        from cluster.staging import seed_run_folder

        folder = seed_run_folder(Path(args.run_dir), Path(args.seed))
    else:
        folder = RunFolder(Path(args.run_dir))
    # the job's own fix for Ray Train's placement-group cleaner (launcher.run.ray_patches); Ray merges
    # it with a Ray Jobs / KubeRay job's runtime_env (working_dir, env_vars: no shared field)
    ray.init(address=os.environ.get("RAY_ADDRESS", "auto"), runtime_env=SETUP_HOOK)
    cfg = folder.load_config()
    print(f"ftl driver: run folder {folder.path}; {cfg.resources.num_workers} workers, "
          f"{cfg.sharding.backend}, {cfg.method}", flush=True)
    try:
        run_trainer(folder)
    except JobFailed as exc:
        print(f"ftl: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    stopped = preemption.stopped_message(folder.path)
    if stopped:  # exit 75: Slurm's trap requeues, KubeRay's backoffLimit resubmits
        print(f"ftl driver: {stopped}", flush=True)
        raise SystemExit(preemption.PREEMPTED_EXIT)
    print(f"ftl driver: done; summary in {folder.summary_file}", flush=True)


if __name__ == "__main__":
    main()
