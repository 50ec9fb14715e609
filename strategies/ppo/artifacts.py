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
from pathlib import Path
from typing import Any

from launcher.run.rundir import RunFolder
from launcher.train.checkpoint import begin, latest_checkpoint, publish, remove_partial

log = logging.getLogger("ftl.ppo.controller")


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
    """The controller's checkpoints: the same layout and atomic publish as the per-rank loop's
    (launcher.train.checkpoint), written by this one process."""

    def __init__(self, folder: RunFolder, keep: int):
        self.root = folder.path / "checkpoints"
        self.keep = keep

    def clean_partial(self) -> None:
        remove_partial(self.root)

    def latest(self) -> Path | None:
        return latest_checkpoint(self.root)

    def begin(self, step: int) -> Path:
        return begin(self.root, step)

    def commit(self, step: int, state: dict[str, Any]) -> Path:
        final = publish(self.root, step, state, self.keep)
        log.info("checkpoint %s", final)
        return final

    @staticmethod
    def state(path: Path) -> dict[str, Any]:
        return json.loads((path / "state.json").read_text())
