"""Where one run's metrics go: ``metrics.jsonl`` and W&B (unless disabled), plus a log line.

One process writes them: rank 0 of the per-rank loop, or the RL controller. Other ranks get a
sink set with nothing to write, so call sites need no rank checks (they still log the line).
"""

from __future__ import annotations

import logging
from typing import Any

from launcher.config.load import config_to_dict
from launcher.metrics.sink import MetricSink, SinkCapability
from launcher.run.rundir import RunFolder


class MetricSinks:
    def __init__(self, cfg: Any, folder: RunFolder, resume_step: int, log: logging.Logger,
                 writes: bool = True):
        self.log = log
        self.sinks: list[MetricSink] = []
        if not writes:
            return
        from launcher.metrics.jsonl import JsonlSink

        self.sinks.append(JsonlSink(folder.metrics, resume_step=resume_step))
        if cfg.logging.wandb.mode != "disabled":
            from launcher.metrics.wandb_sink import WandbSink

            self.sinks.append(WandbSink(folder.path, folder.path.name, cfg.logging.wandb,
                                        config_to_dict(cfg)))

    def emit(self, step: int, metrics: dict[str, Any]) -> None:
        """Log ``metrics`` at ``step``; names starting with '_' are internal and dropped."""
        clean = {k: (float(v) if isinstance(v, (int, float)) else v) for k, v in metrics.items()
                 if not k.startswith("_")}
        self.log.info("step %d %s", step, clean)
        for sink in self.sinks:
            sink.log(step, clean)

    def close(self, summary: dict[str, Any]) -> None:
        for sink in self.sinks:
            if sink.supports(SinkCapability.SUMMARY):
                sink.summary(summary)
            sink.close()
