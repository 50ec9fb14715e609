"""``metrics.jsonl``: one JSON object per logged step, the run's durable metric record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class JsonlSink:
    def __init__(self, path: Path, resume_step: int = 0):
        self.path = path
        if resume_step and path.exists():
            # Drop what was logged after the checkpoint we resume from: it will be redone.
            kept = [ln for ln in path.read_text().splitlines()
                    if ln.strip() and json.loads(ln).get("step", 0) <= resume_step]
            tmp = path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(ln + "\n" for ln in kept))
            tmp.replace(path)  # atomic: a reader sees the old file or the new one
        self._fh = path.open("a", buffering=1)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        self._fh.write(json.dumps({"step": step, **metrics}) + "\n")

    def close(self) -> None:
        self._fh.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
