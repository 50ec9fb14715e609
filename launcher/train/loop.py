"""The per-rank training loop: the same function under Ray Train, torchrun, or plain python.

``train_rank(run_dir)`` reads the resolved config from the run folder, so the only thing a
launcher passes is a path. It resumes from the newest checkpoint in the folder when there is
one (``ftl run --resume`` and Ray's worker-group restarts both rely on that).

Loss normalisation: each micro-batch's summed loss is divided by the item count of the whole
global batch (all micro-batches, all ranks) and multiplied by the world size (DDP averages
gradients over ranks). The gradient is therefore the exact per-token mean over the global
batch, whatever the micro/accumulation/world split.

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
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from launcher.core import failpoints, preemption
from launcher.core.lazy import load_object
from launcher.core.paths import ftl_home
from launcher.metrics.sinks import MetricSinks
from launcher.models.offload import activation_offload
from launcher.report.build import write_run_report_safely
from launcher.run.rundir import RunFolder
from launcher.train.checkpoint import CheckpointManager, checkpoint_writer
from launcher.train.dist import RankContext, all_gather_objects, all_reduce_sum, barrier, init_distributed
from launcher.train.guard import StepGuard
from launcher.train.memwatch import PeakAnon
from launcher.train.sequence_parallel import SPGroup, active, build_groups, shard_batch
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
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    from launcher.backends.registry import resolve_sharding
    from launcher.data.pipeline import prepare_data
    from launcher.data.sampler import StepSampler
    from launcher.models.load import count_parameters, load_tokenizer
    from launcher.train.evaluate import evaluate
    from launcher.train.optim import make_optimizer, make_scheduler
    from strategies import build_strategy

    wall_start = time.time()
    threads = cfg.resources.threads_per_worker or max(1, int(cfg.resources.cpus_per_worker))
    torch.set_num_threads(threads)
    seed_everything(cfg.train.seed)
    tokenizer = load_tokenizer(cfg)
    strategy = build_strategy(cfg, tokenizer)
    data = prepare_data(cfg, strategy)
    log.info("data: %d train examples, eval sets %s", len(data.train),
             [(e.name, len(e.features)) for e in data.eval_sets])
    backend = load_object(resolve_sharding(cfg.sharding).impl)(cfg, ctx)
    with PeakAnon() as load_mem:
        model = backend.load_model(strategy)
    load_stats = {"peak_anon_mb": load_mem.peak_delta / 2**20,
                  "param_mb": backend_param_bytes(backend, model) / 2**20}
    total_params, trainable_params = count_parameters(model, backend)
    backend.setup(model, lambda m: make_optimizer(m, cfg.train),
                  lambda o: make_scheduler(o, cfg.train))
    strategy.on_setup(backend, data)

    ckpts = CheckpointManager(folder.path, cfg.checkpoint.keep, ctx, writer=checkpoint_writer(cfg))
    ckpts.clean_partial()
    launch_id = folder.launch_id()
    state: dict[str, Any] = {"step": 0, "tokens": 0, "train_time_s": 0.0, "restarts": 0,
                             "initial": {}, "launch_id": launch_id, "skipped_steps": 0}
    latest = ckpts.latest()
    if latest is not None:
        ckpts.check_writer(latest)  # a clear error instead of a shape mismatch inside load
        backend.load(latest)
        state.update(ckpts.load_state(latest))
        if state.get("launch_id") == launch_id:  # same launch: Ray restarted the worker group
            state["restarts"] = state.get("restarts", 0) + 1
        state["launch_id"] = launch_id
        log.info("resumed from %s at step %d", latest, state["step"])
    start_step = state["step"]

    sinks = MetricSinks(cfg, folder, start_step, log, writes=ctx.is_main)
    sampler = StepSampler(data.source_sizes, data.weights, cfg.train.seed)
    accum = cfg.grad_accum_for(ctx.world_size)  # elastic runs: the same global batch on any size
    sp = _sequence_parallel(cfg, ctx)
    data_rank, data_world = (sp.dp_rank, sp.dp_world) if sp else (ctx.rank, ctx.world_size)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    micro = cfg.train.micro_batch_size

    if start_step == 0 and data.eval_sets and cfg.eval.at_start:
        state["initial"] = evaluate(backend, strategy, data.eval_sets, cfg)
        sinks.emit(0, state["initial"])

    from launcher.train.state_bytes import FirstStepProbe

    # Model-state bytes this rank holds, read around the first optimizer step (hooks, then gone).
    state_bytes = FirstStepProbe(backend)
    guard = StepGuard(ctx, folder.path, cfg.train.skip_nonfinite, state["skipped_steps"], ckpts.latest)
    stop_reason: str | None = None
    backend.model.train()
    logged_tokens, logged_time = 0.0, 0.0
    last_logged_step = start_step
    with StepWatchdog(cfg.train.hang_timeout_s, ctx.rank, folder.logs) as watchdog:
        for step in range(start_step, cfg.train.max_steps):
            t0 = time.perf_counter()
            micro_idx = sampler.micro_batches(step, data_rank, data_world, micro, accum)
            features = [[data.train[i] for i in idx] for idx in micro_idx]
            batches = [strategy.collate(f) for f in features]
            local_items = sum(strategy.count_items(b) for b in batches)
            local_tokens = sum(_tokens(f, b) for f, b in zip(features, batches))
            if sp is not None and not sp.counts_items:  # the group's first rank counts its rows
                local_items, local_tokens = 0.0, 0.0
            global_items, global_tokens = all_reduce_sum([local_items, local_tokens], ctx.device)
            scale = ctx.world_size / max(global_items, 1.0)
            # Kept as tensors: the loss is read every step (the non-finite guard, next to the
            # gradient norm the step reads anyway); metrics are reduced only on logged steps.
            loss_total = torch.zeros((), dtype=torch.float64, device=ctx.device)
            metric_totals: dict[str, torch.Tensor] = {}
            for m, batch in enumerate(batches):
                segments = None
                if sp is not None:
                    batch, segments = shard_batch(batch, sp, pad_id)
                batch = {k: v.to(ctx.device) for k, v in batch.items()}
                with backend.accumulate(sync=m == accum - 1), active(sp, segments):
                    with backend.autocast(), activation_offload(cfg):
                        out = strategy.loss(backend.model, batch)
                    if failpoints.hit("train.nan_loss", step + 1, ctx.rank):  # tests: a loss gone bad
                        out.loss_sum = out.loss_sum * float("nan")
                    backend.backward(out.loss_sum * scale)
                loss_total += out.loss_sum.detach().double()
                for k, v in out.metric_sums.items():
                    metric_totals[k] = metric_totals.get(k, 0.0) + v.detach().double()
            lr = backend.current_lr()
            grad_norm = backend.step()
            verdict = guard.check(step + 1, loss_total, grad_norm, backend.grad_norm_known)
            state["skipped_steps"] = guard.skipped
            watchdog.beat(step + 1)
            failpoints.hit("train.after_step", step + 1, ctx.rank)
            dt = time.perf_counter() - t0
            state["step"] = step + 1
            state["tokens"] += int(global_tokens)
            state["train_time_s"] += dt
            logged_tokens += global_tokens
            logged_time += dt
            done = state["step"] == cfg.train.max_steps
            log_now = state["step"] % cfg.logging.every_steps == 0 or done or state["step"] == 1
            if verdict.skipped:  # its loss is NaN: say so in the log, keep it out of the metrics
                log.warning("step %d skipped: loss %s, gradient norm %s (train.skip_nonfinite: %d of %d)",
                            state["step"], float(loss_total), grad_norm, guard.skipped, guard.skip_budget)
            elif log_now:
                names = sorted(k for k in metric_totals if not k.startswith("_"))
                local = [float(loss_total)] + [float(metric_totals[k]) for k in names]
                sums = all_reduce_sum(local, ctx.device)
                metrics = {
                    "train/loss": sums[0] / max(global_items, 1.0),
                    "train/lr": lr,
                    "train/grad_norm": grad_norm,
                    "train/tokens_per_s": logged_tokens / max(logged_time, 1e-9),
                    "train/step_s": logged_time / max(state["step"] - last_logged_step, 1),
                    "train/tokens": state["tokens"],
                    **{f"train/{k}": s / max(global_items, 1.0) for k, s in zip(names, sums[1:])},
                }
                if cfg.train.skip_nonfinite:
                    metrics["train/skipped_steps"] = guard.skipped
                logged_tokens, logged_time = 0.0, 0.0
                last_logged_step = state["step"]
                sinks.emit(state["step"], metrics)
            with watchdog.paused():
                if cfg.eval.every_steps and state["step"] % cfg.eval.every_steps == 0 and not done:
                    sinks.emit(state["step"], evaluate(backend, strategy, data.eval_sets, cfg))
                due = cfg.checkpoint.every_steps and state["step"] % cfg.checkpoint.every_steps == 0
                if due or (verdict.stop_reason and not done):
                    ckpts.save(state["step"], backend.save, _state_for_save(state))
            if verdict.stop_reason and not done:
                stop_reason = verdict.stop_reason
                break

    if stop_reason is not None:
        return _stop_saved(folder, ctx, sinks, state, stop_reason, ckpts.latest())

    final = evaluate(backend, strategy, data.eval_sets, cfg) if data.eval_sets else {}
    if final:
        sinks.emit(state["step"], final)
    if cfg.checkpoint.save_final:
        _export_final(backend, tokenizer, folder, ctx)
    rss = all_gather_objects(round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1))
    load_mem_per_rank = all_gather_objects({k: round(v, 2) for k, v in load_stats.items()})
    hosts = all_gather_objects(_where_am_i())
    wall = time.time() - wall_start
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
        "model_state_bytes_per_rank": all_gather_objects(state_bytes.result),
        "hosts_per_rank": hosts,
        "parameters": {"total": total_params, "trainable": trainable_params},
        "world_size": ctx.world_size,
        "launcher": ctx.launcher,
        "resumed_from_step": start_step or None,
        "restarts": state.get("restarts", 0),
    }
    if ctx.is_main:
        folder.write_summary(summary)
        sinks.close(final)
        if cfg.logging.report:  # <run>/report/: curves + index.html; never fails the run
            write_run_report_safely(folder.path)
    barrier()
    backend.close()
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


def _export_final(backend: Any, tokenizer: Any, folder: RunFolder, ctx: RankContext) -> None:
    """``final/``: an HF folder (``from_pretrained``-ready; adapter only under LoRA)."""
    state_dict = backend.full_state_dict()  # collective: every rank takes part
    if ctx.is_main:
        out = folder.path / "final"
        backend.module.save_pretrained(out, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(out)
    barrier()


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
