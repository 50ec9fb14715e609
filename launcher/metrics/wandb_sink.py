"""Weights & Biases: online with ``WANDB_API_KEY``, offline files without, or disabled.

The key is only ever read from the environment by wandb itself; ftl never prints or stores it.
The W&B run id is kept in the run folder so a resumed run continues the same W&B run.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from launcher.metrics.sink import MetricSink, SinkCapability


def resolve_mode(mode: str) -> str:
    if mode != "auto":
        return mode
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


class WandbSink(MetricSink):
    capabilities = frozenset({SinkCapability.SUMMARY})

    def __init__(self, run_dir: Path, run_name: str, section: Any, config: dict[str, Any]):
        import wandb

        self.mode = resolve_mode(section.mode)
        self._wandb = wandb
        self.run = None
        if self.mode == "disabled":
            return
        id_file = run_dir / "wandb-run-id"
        if id_file.exists():
            run_id = id_file.read_text().strip()
        else:
            run_id = uuid.uuid4().hex[:12]
            id_file.write_text(run_id)
        self.run = wandb.init(
            project=section.project,
            entity=section.entity,
            name=run_name,
            id=run_id,
            resume="allow",
            dir=str(run_dir),
            mode=self.mode,
            config=config,
            tags=list(section.tags),
            settings=wandb.Settings(console="off", x_disable_stats=True, silent=True),
        )

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        if self.run is not None:
            for k, v in values.items():
                self.run.summary[k] = v

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
