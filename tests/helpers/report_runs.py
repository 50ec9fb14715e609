"""Run folders for report tests, written by ftl's own writers: ``RunFolder`` for the config,
plan and summary, ``MetricSinks`` (the sink the loop and the RL controller use) for
``metrics.jsonl``, and a real ``make_plan`` of the tiny model. Only the metric values are made
up (a loss that falls, an eval that improves), so a test knows what the curves must show."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from launcher.config.load import config_to_dict, validate_config
from launcher.metrics.sinks import MetricSinks
from launcher.plan.planner import make_plan
from launcher.run.rundir import RunFolder
from tests.helpers.ftl import tiny_config

STEPS = 20


def losses(start: float, end: float, steps: int = STEPS) -> list[float]:
    """A loss falling geometrically from ``start`` to ``end`` over ``steps`` steps."""
    return [start * (end / start) ** (i / (steps - 1)) for i in range(steps)]


def make_run(parent: Path, name: str, *, start: float = 4.0, end: float = 0.5, rl: bool = False,
             gpus: int = 1) -> Path:
    """A finished run folder under ``parent``: config, plan (GPU plan when ``gpus``), metrics of
    ``STEPS`` steps with eval at 0, 10 and the end, and summary.json."""
    resources = {"num_workers": 1, "cpus_per_worker": 1, "gpus_per_worker": gpus}
    raw = tiny_config(name=name, resources=resources, train={"max_steps": STEPS})
    cfg = validate_config(raw, f"{name}.yaml")
    folder = RunFolder.create(parent, name)
    try:
        folder.write_config(config_to_dict(cfg))
        folder.write_json("plan.json", make_plan(cfg))
        sinks = MetricSinks(cfg, folder, 0, logging.getLogger("ftl.test"))
        initial = {"eval/loss": start + 0.5, "eval/exact_match": 0.0}
        sinks.emit(0, initial)
        for step, loss in enumerate(losses(start, end), start=1):
            metrics = {"train/loss": loss, "train/lr": 1e-3 * min(1.0, step / 5),
                       "train/tokens_per_s": 20000 + 100 * math.sin(step), "train/grad_norm": 1 / step,
                       "train/tokens": 512 * step}
            if rl:
                metrics.update({"reward/mean": 1 - loss / start, "kl/ref_per_token": 0.01 * step,
                                "response/length_mean": 30 + step})
            sinks.emit(step, metrics)
            if step == 10:
                sinks.emit(step, {"eval/loss": (start + end) / 2, "eval/exact_match": 0.4})
        final = {"eval/loss": end + 0.0123456, "eval/exact_match": 0.9}
        sinks.emit(STEPS, final)
        summary = {"steps": STEPS, "wall_time_s": 12.5, "tokens_per_s": 20000.0, "tokens": 512 * STEPS,
                   "initial": initial, "final": final}
        folder.write_summary(summary)
        sinks.close(final)
    finally:
        folder.release_writer_lock()
    return folder.path
