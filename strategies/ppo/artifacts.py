"""Run-folder artefacts of an RL run, written the way supervised runs write theirs.

``metrics.jsonl`` (``JsonlSink``) and W&B (``WandbSink``, offline without a key), the
controller's log, ``logs/roles.json`` (every role's actor ids and PIDs), and checkpoints that
hold several actor groups at once: each group writes into one temp folder (the policy trainer
group at its root, in its backend's own format, so ``ftl export`` reads it like any run's; the
critic group under ``critic/``), then the controller adds ``state.json`` and renames the folder.
A rename is atomic: a kill leaves the previous checkpoint, never half of a new one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from launcher.checkpoint import PREFIX, complete_checkpoints
from launcher.config.load import config_to_dict
from launcher.rundir import RunFolder

log = logging.getLogger("ftl.ppo.controller")


class MetricSinks:
    def __init__(self, cfg: Any, folder: RunFolder, resume_step: int):
        from launcher.metrics.jsonl import JsonlSink

        self.sinks: list[Any] = [JsonlSink(folder.metrics, resume_step=resume_step)]
        if cfg.logging.wandb.mode != "disabled":
            from launcher.metrics.wandb_sink import WandbSink

            self.sinks.append(WandbSink(folder.path, folder.path.name, cfg.logging.wandb,
                                        config_to_dict(cfg)))

    def emit(self, step: int, metrics: dict[str, Any]) -> None:
        clean = {k: float(v) if isinstance(v, (int, float)) else v for k, v in metrics.items()}
        log.info("step %d %s", step, {k: round(v, 5) if isinstance(v, float) else v
                                      for k, v in clean.items()})
        for sink in self.sinks:
            sink.log(step, clean)

    def close(self, final: dict[str, Any]) -> None:
        for sink in self.sinks:
            if hasattr(sink, "summary"):
                sink.summary(final)
            sink.close()


def controller_log(folder: RunFolder) -> logging.Handler:
    """``logs/controller.log`` for the ``ftl.ppo`` loggers of this (driver) process."""
    folder.logs.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(folder.logs / "controller.log")
    handler.setFormatter(logging.Formatter("%(asctime)s controller %(levelname)s %(message)s"))
    logger = logging.getLogger("ftl.ppo")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return handler


def close_log(handler: logging.Handler) -> None:
    logging.getLogger("ftl.ppo").removeHandler(handler)
    handler.close()


class Checkpoints:
    def __init__(self, folder: RunFolder, keep: int):
        self.root = folder.path / "checkpoints"
        self.keep = keep

    def clean_partial(self) -> None:
        for tmp in self.root.glob(".tmp-*") if self.root.exists() else []:
            shutil.rmtree(tmp, ignore_errors=True)

    def latest(self) -> Path | None:
        found = complete_checkpoints(self.root)
        return found[-1] if found else None

    def begin(self, step: int) -> Path:
        tmp = self.root / f".tmp-{PREFIX}{step:08d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        return tmp

    def commit(self, tmp: Path, step: int, state: dict[str, Any]) -> Path:
        (tmp / "state.json").write_text(json.dumps(state, indent=1, default=str))
        for path in tmp.rglob("*"):
            if path.is_file():
                with path.open("rb") as fh:
                    os.fsync(fh.fileno())
        final = self.root / f"{PREFIX}{step:08d}"
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        for old in complete_checkpoints(self.root)[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        log.info("checkpoint %s", final)
        return final

    @staticmethod
    def state(path: Path) -> dict[str, Any]:
        return json.loads((path / "state.json").read_text())
