"""The per-rank training loop: the same function under Ray Train, torchrun, or plain python.

``train_rank(run_dir)`` reads the resolved config from the run folder, so the only thing a
launcher passes is a path. It resumes from the newest checkpoint in the folder when there is
one (``ftl run --resume`` and Ray's worker-group restarts both rely on that).

Loss normalisation (``launcher.train.step``, shared with the RL learners): each micro-batch's
summed loss is divided by the item count of the whole global batch (all micro-batches, all
ranks) and multiplied by the world size (DDP averages gradients over ranks). The gradient is
therefore the exact per-token mean over the global batch, whatever the micro/accumulation/world
split.

Sequence parallelism (``sharding.sp_size``, ``launcher.train.sequence_parallel``): the ranks of one
group take the same samples (the sampler sees ``world / sp`` data-parallel ranks) and each its
own token chunk of them. A group's items are counted once (by its first rank), and each rank's
gradient is the gradient of its chunk's loss sum, so the sum over ranks, averaged by the backend
and multiplied by the world size as above, is still the exact global per-token mean.
"""

from __future__ import annotations

import json
import logging
import os
import random
import resource
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from launcher.core import failpoints, preemption
from launcher.core.paths import ftl_home
from launcher.core.workers import worker_threads
from launcher.metrics.sinks import MetricSinks
from launcher.report.build import write_run_report_safely
from launcher.run.rundir import RunFolder
from launcher.train.build import build_backend, write_final
from launcher.train.checkpoint import CheckpointManager, checkpoint_writer
from launcher.train.dist import RankContext, all_gather_objects, all_reduce_sum, barrier, init_distributed
from launcher.train.guard import StepGuard
from launcher.train.memwatch import PeakAnon
from launcher.train.sequence_parallel import SPGroup, active, build_groups, shard_batch
from launcher.train.step import StepResult, optimizer_step
from launcher.train.watchdog import StepWatchdog

log = logging.getLogger("ftl.loop")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def _setup_logging(folder: RunFolder, rank: int) -> None:
    folder.logs.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(folder.logs / f"rank-{rank}.log")
    handler.setFormatter(logging.Formatter("%(asctime)s rank%(rank)s %(levelname)s %(message)s"))
    handler.addFilter(lambda record: setattr(record, "rank", rank) or True)
    root = logging.getLogger("ftl")
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False


def train_rank(run_dir: str) -> dict[str, Any]:
    """Entry point on every rank. Records a failure marker naming this rank, then re-raises."""
    folder = RunFolder(Path(run_dir))
    rank = int(os.environ.get("RANK", "0"))
    # DeepSpeed compiles a comm op on first use (~25 s): keep the build across runs.
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ftl_home() / "torch_extensions"))
    try:
        cfg = folder.load_config()
        ctx = init_distributed(use_gpu=cfg.resources.gpus_per_worker > 0,
                               timeout_s=cfg.train.collective_timeout_s)
        rank = ctx.rank
        _setup_logging(folder, rank)
        (folder.logs / f"rank-{rank}.pid").write_text(str(os.getpid()))
        return _train(cfg, ctx, folder)
    except BaseException as exc:
        folder.logs.mkdir(parents=True, exist_ok=True)
        (folder.logs / f"failed-rank-{rank}.json").write_text(json.dumps({
            "rank": rank, "error": f"{type(exc).__name__}: {exc}", "pid": os.getpid(),
            "traceback": traceback.format_exc(),
        }))
        with (folder.logs / f"rank-{rank}.log").open("a") as fh:
            fh.write(traceback.format_exc())
        raise


def _train(cfg: Any, ctx: RankContext, folder: RunFolder) -> dict[str, Any]:
    """One rank's run, phase by phase (each phase's docstring says why it stands alone)."""
    from launcher.train.evaluate import evaluate
    from launcher.train.state_bytes import FirstStepProbe

    run = _set_up(cfg, ctx, folder)
    _resume(run)
    sinks = MetricSinks(cfg, folder, run.start_step, log, writes=ctx.is_main)
    feed = _StepFeed(run)
    if run.start_step == 0 and run.data.eval_sets and cfg.eval.at_start:
        run.state["initial"] = evaluate(run.backend, run.strategy, run.data.eval_sets, cfg)
        sinks.emit(0, run.state["initial"])
    # Model-state bytes this rank holds, read around the first optimizer step (hooks, then gone).
    state_bytes = FirstStepProbe(run.backend)
    stop_reason = _step_loop(run, feed, sinks)
    if stop_reason is not None:
        return _stop_saved(folder, ctx, sinks, run.state, stop_reason, run.ckpts.latest())
    return _finish(run, sinks, state_bytes.result)


@dataclass
class _Run:
    """What the phases of one rank's run share: built by ``_set_up``, advanced by the others."""

    cfg: Any
    ctx: RankContext
    folder: RunFolder
    tokenizer: Any
    strategy: Any
    data: Any
    backend: Any
    ckpts: CheckpointManager
    load_stats: dict[str, float]
    parameters: tuple[int, int]
    wall_start: float
    #: checkpointed progress (``_state_for_save``); ``_resume`` fills it
    state: dict[str, Any] = field(default_factory=dict)
    start_step: int = 0


def _set_up(cfg: Any, ctx: RankContext, folder: RunFolder) -> _Run:
    """Threads, seeds, tokenizer, strategy, data, backend with model and optimizer.

    Separate because everything here is built from the config alone, the same way on a fresh
    launch and a resumed one; nothing in it reads a checkpoint."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    from launcher.data.pipeline import prepare_data
    from launcher.models.load import count_parameters, load_tokenizer
    from strategies import build_strategy

    wall_start = time.time()
    threads = worker_threads(cfg.resources)
    torch.set_num_threads(threads)
    seed_everything(cfg.train.seed)
    tokenizer = load_tokenizer(cfg)
    strategy = build_strategy(cfg, tokenizer)
    data = prepare_data(cfg, strategy)
    log.info("data: %d train examples, eval sets %s", len(data.train),
             [(e.name, len(e.features)) for e in data.eval_sets])
    load_mem = PeakAnon()
    loaded: dict[str, Any] = {}

    def on_loaded(backend: Any, model: Any) -> None:  # as loaded: before setup wraps or casts it
        loaded["param_mb"] = backend_param_bytes(backend, model) / 2**20
        loaded["parameters"] = count_parameters(model, backend)

    backend = build_backend(cfg, ctx, strategy, around_load=load_mem, on_loaded=on_loaded)
    load_stats = {"peak_anon_mb": load_mem.peak_delta / 2**20, "param_mb": loaded["param_mb"]}
    strategy.on_setup(backend, data)
    ckpts = CheckpointManager(folder.path, cfg.checkpoint.keep, ctx, writer=checkpoint_writer(cfg))
    return _Run(cfg, ctx, folder, tokenizer, strategy, data, backend, ckpts, load_stats,
                loaded["parameters"], wall_start)


def _resume(run: _Run) -> None:
    """Continue from the newest checkpoint in the folder, else start the state at step 0.

    Separate because ``ftl run --resume`` and Ray's worker-group restarts both land here, and a
    restart within the same launch must be counted (``restarts``) while a new launch must not."""
    ckpts = run.ckpts
    ckpts.clean_partial()
    launch_id = run.folder.launch_id()
    state: dict[str, Any] = {"step": 0, "tokens": 0, "train_time_s": 0.0, "restarts": 0,
                             "initial": {}, "launch_id": launch_id, "skipped_steps": 0}
    latest = ckpts.latest()
    if latest is not None:
        ckpts.check_writer(latest)  # a clear error instead of a shape mismatch inside load
        run.backend.load(latest)
        state.update(ckpts.load_state(latest))
        if state.get("launch_id") == launch_id:  # same launch: Ray restarted the worker group
            state["restarts"] = state.get("restarts", 0) + 1
        state["launch_id"] = launch_id
        log.info("resumed from %s at step %d", latest, state["step"])
    run.state, run.start_step = state, state["step"]


class _StepFeed:
    """This rank's micro-batches of each optimizer step, and how each reaches the device.

    Separate because which rows a rank takes (data-parallel rank, sequence-parallel group) and
    who counts them are decided once, and the step primitive only sees the result."""

    def __init__(self, run: _Run):
        from launcher.data.sampler import StepSampler

        cfg, ctx = run.cfg, run.ctx
        self.run = run
        self.sampler = StepSampler(run.data.source_sizes, run.data.weights, cfg.train.seed)
        self.accum = cfg.grad_accum_for(ctx.world_size)  # elastic runs: the same global batch on any size
        self.sp = _sequence_parallel(cfg, ctx)
        self.data_rank, self.data_world = ((self.sp.dp_rank, self.sp.dp_world) if self.sp
                                           else (ctx.rank, ctx.world_size))
        tokenizer = run.tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.micro = cfg.train.micro_batch_size

    def batches(self, step: int) -> tuple[list[dict[str, torch.Tensor]], float, float]:
        """Step ``step``'s (0-based) collated micro-batches, with this rank's item and token counts."""
        data, strategy = self.run.data, self.run.strategy
        micro_idx = self.sampler.micro_batches(step, self.data_rank, self.data_world, self.micro, self.accum)
        features = [[data.train[i] for i in idx] for idx in micro_idx]
        batches = [strategy.collate(f) for f in features]
        local_items = sum(strategy.count_items(b) for b in batches)
        local_tokens = sum(_tokens(f, b) for f, b in zip(features, batches))
        if self.sp is not None and not self.sp.counts_items:  # the group's first rank counts its rows
            local_items, local_tokens = 0.0, 0.0
        return batches, local_items, local_tokens

    def prepare(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], Any]:
        """This rank's token chunk (sequence parallel) on the device, and the context its forward
        and backward run in."""
        segments = None
        if self.sp is not None:
            batch, segments = shard_batch(batch, self.sp, self.pad_id)
        return {k: v.to(self.run.ctx.device) for k, v in batch.items()}, active(self.sp, segments)


def _step_loop(run: _Run, feed: _StepFeed, sinks: MetricSinks) -> str | None:
    """The optimizer steps from the resumed step to ``train.max_steps``, under the hang watchdog.

    Separate because it is the part that repeats: every line in it runs once per step, and it
    ends either at ``max_steps`` (None) or, after a checkpoint, on a stop request (its reason)."""
    cfg, ctx, state = run.cfg, run.ctx, run.state
    guard = StepGuard(ctx, run.folder.path, cfg.train.skip_nonfinite, state["skipped_steps"],
                      run.ckpts.latest)
    run.backend.model.train()
    window = _LogWindow(run.start_step)
    with StepWatchdog(cfg.train.hang_timeout_s, ctx.rank, run.folder.logs) as watchdog:
        for step in range(run.start_step, cfg.train.max_steps):
            t0 = time.perf_counter()
            batches, local_items, local_tokens = feed.batches(step)
            result = optimizer_step(run.backend, batches, run.strategy.loss, items=local_items,
                                    tokens=local_tokens, step=step + 1, guard=guard, prepare=feed.prepare,
                                    nan_failpoint="train.nan_loss")
            state["skipped_steps"] = guard.skipped
            watchdog.beat(step + 1)
            failpoints.hit("train.after_step", step + 1, ctx.rank)
            dt = time.perf_counter() - t0
            state["step"] = step + 1
            state["tokens"] += int(result.global_tokens)
            state["train_time_s"] += dt
            window.tokens += result.global_tokens
            window.time_s += dt
            done = state["step"] == cfg.train.max_steps
            _log_step(run, sinks, result, guard, window, done)
            with watchdog.paused():
                _after_step(run, sinks, result.verdict.stop_reason, done)
            if result.verdict.stop_reason and not done:
                return result.verdict.stop_reason
    return None


@dataclass
class _LogWindow:
    """Tokens and time since the last logged step (throughput is reported over that window)."""

    last_step: int
    tokens: float = 0.0
    time_s: float = 0.0


def _log_step(run: _Run, sinks: MetricSinks, result: StepResult, guard: StepGuard, window: _LogWindow,
              done: bool) -> None:
    """A skipped step's warning, or on logged steps (``logging.every_steps``, the first, the last)
    the step's metrics. Separate because only here are metrics reduced over ranks (one
    collective, on logged steps only), and a skipped step's NaN never reaches the sinks."""
    cfg, state = run.cfg, run.state
    log_now = state["step"] % cfg.logging.every_steps == 0 or done or state["step"] == 1
    if result.verdict.skipped:  # its loss is NaN: say so in the log, keep it out of the metrics
        log.warning("step %d skipped: loss %s, gradient norm %s (train.skip_nonfinite: %d of %d)",
                    state["step"], float(result.loss_total), result.grad_norm, guard.skipped,
                    guard.skip_budget)
    elif log_now:
        items = max(result.global_items, 1.0)
        names = sorted(k for k in result.metric_sums if not k.startswith("_"))
        local = [float(result.loss_total)] + [float(result.metric_sums[k]) for k in names]
        sums = all_reduce_sum(local, run.ctx.device)
        metrics = {
            "train/loss": sums[0] / items,
            "train/lr": result.lr,
            "train/grad_norm": result.grad_norm,
            "train/tokens_per_s": window.tokens / max(window.time_s, 1e-9),
            "train/step_s": window.time_s / max(state["step"] - window.last_step, 1),
            "train/tokens": state["tokens"],
            **{f"train/{k}": s / items for k, s in zip(names, sums[1:])},
        }
        if cfg.train.skip_nonfinite:
            metrics["train/skipped_steps"] = guard.skipped
        window.tokens, window.time_s, window.last_step = 0.0, 0.0, state["step"]
        sinks.emit(state["step"], metrics)


def _after_step(run: _Run, sinks: MetricSinks, stop_reason: str | None, done: bool) -> None:
    """The hooks between steps: evaluation every ``eval.every_steps``, a checkpoint every
    ``checkpoint.every_steps`` or before stopping on request. Separate because they run with the
    watchdog paused (they may take longer than a step) and never on the last step, which
    ``_finish`` evaluates and exports instead."""
    from launcher.train.evaluate import evaluate

    cfg, step = run.cfg, run.state["step"]
    if cfg.eval.every_steps and step % cfg.eval.every_steps == 0 and not done:
        sinks.emit(step, evaluate(run.backend, run.strategy, run.data.eval_sets, cfg))
    due = cfg.checkpoint.every_steps and step % cfg.checkpoint.every_steps == 0
    if due or (stop_reason and not done):
        run.ckpts.save(step, run.backend.save, _state_for_save(run.state))


def _finish(run: _Run, sinks: MetricSinks, model_state_bytes: dict[str, int] | None) -> dict[str, Any]:
    """Final evaluation, ``final/``, ``summary.json`` and the report, then release the backend.

    Separate because it runs once and only after the last step: a run stopped on request skips
    it (``_stop_saved``), so the resumed launch is the one that finishes."""
    from launcher.train.evaluate import evaluate

    cfg, ctx, state, folder = run.cfg, run.ctx, run.state, run.folder
    final = evaluate(run.backend, run.strategy, run.data.eval_sets, cfg) if run.data.eval_sets else {}
    if final:
        sinks.emit(state["step"], final)
    if cfg.checkpoint.save_final:
        write_final(run.backend, run.tokenizer, folder.path / "final", ctx)
    rss = all_gather_objects(round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1))
    load_mem_per_rank = all_gather_objects({k: round(v, 2) for k, v in run.load_stats.items()})
    hosts = all_gather_objects(_where_am_i())
    wall = time.time() - run.wall_start
    total_params, trainable_params = run.parameters
    summary = {
        "steps": state["step"],
        "wall_time_s": round(wall, 3),
        "train_time_s": round(state["train_time_s"], 3),
        "tokens": state["tokens"],
        "tokens_per_s": state["tokens"] / max(state["train_time_s"], 1e-9),
        "initial": state.get("initial", {}),
        "final": final,
        "peak_rss_mb_per_rank": rss,
        "peak_gpu_mb_per_rank": _peak_gpu_mb(ctx),
        "model_load_mb_per_rank": load_mem_per_rank,
        "model_state_bytes_per_rank": all_gather_objects(model_state_bytes),
        "hosts_per_rank": hosts,
        "parameters": {"total": total_params, "trainable": trainable_params},
        "world_size": ctx.world_size,
        "launcher": ctx.launcher,
        "resumed_from_step": run.start_step or None,
        "restarts": state.get("restarts", 0),
    }
    if ctx.is_main:
        folder.write_summary(summary)
        sinks.close(final)
        if cfg.logging.report:  # <run>/report/: curves + index.html; never fails the run
            write_run_report_safely(folder.path)
    barrier()
    run.backend.close()
    return summary


def _sequence_parallel(cfg: Any, ctx: RankContext) -> SPGroup | None:
    """This rank's sequence-parallel group (``sharding.sp_size > 1``), else None."""
    size = cfg.sharding.sp_size
    if size == 1:
        return None
    group = build_groups(ctx.rank, ctx.world_size, size)
    log.info("sequence parallel: group %d of %d, token chunk %d of %d", group.dp_rank, group.dp_world,
             group.rank, size)
    return group


def _peak_gpu_mb(ctx: RankContext) -> list[float] | None:
    """Peak memory the caching allocator handed out on each rank's GPU (None on CPU)."""
    if ctx.device.type != "cuda":
        return None
    return all_gather_objects(round(torch.cuda.max_memory_allocated(ctx.device) / 2**20, 1))


def _tokens(features: list[dict], batch: dict[str, torch.Tensor]) -> float:
    """Real (non-padding) tokens in a micro-batch, for tokens/s.

    Packed rows carry no attention mask, so their padding is only known from the examples."""
    if "attention_mask" in batch:
        return float(batch["attention_mask"].sum())
    if all("input_ids" in f for f in features):
        return float(sum(len(f["input_ids"]) for f in features))
    return float(batch["input_ids"].numel())


def _state_for_save(state: dict[str, Any]) -> dict[str, Any]:
    keys = ("step", "tokens", "train_time_s", "restarts", "initial", "launch_id", "skipped_steps")
    return {k: state[k] for k in keys}


def _stop_saved(folder: RunFolder, ctx: RankContext, sinks: MetricSinks, state: dict[str, Any],
                reason: str, checkpoint: Path | None) -> dict[str, Any]:
    """Every rank saved this step on request (``launcher.core.preemption``): record it and return
    without the final evaluation or export, so the launcher can exit and a later launch resume."""
    log.warning("stopping at step %d on request (%s); checkpoint %s", state["step"], reason, checkpoint)
    if ctx.is_main:
        preemption.record_preempted(folder.path, state["step"], str(checkpoint) if checkpoint else None,
                                    reason)
        sinks.close({})
    barrier()
    return {"steps": state["step"], "preempted": reason}


def _where_am_i() -> dict[str, Any]:
    """Host, PID and (under Ray) node id of this rank: shows how ranks were placed."""
    import socket

    where: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
    try:
        import ray

        if ray.is_initialized():
            where["node_id"] = ray.get_runtime_context().get_node_id()
    except Exception:  # not under Ray
        pass
    return where


def backend_param_bytes(backend: Any, model: Any) -> int:
    """Bytes of parameter storage this rank holds (ZeRO-3 partitions, FSDP2 local shards)."""
    return sum(backend.local_tensor(p).numel() * p.element_size() for p in model.parameters())


def main() -> None:
    """``python -m launcher.train.loop RUN_DIR`` (e.g. under torchrun)."""
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m launcher.train.loop RUN_DIR")
    train_rank(sys.argv[1])
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
