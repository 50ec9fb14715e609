"""``metrics.jsonl``: one JSON object per logged step, the run's durable metric record."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from launcher.metrics.sink import MetricSink

log = logging.getLogger("ftl.metrics")


def parse_metrics(text: str, path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics file; a line that is not JSON (a write cut off by a kill or a full
    disk) is skipped with a warning naming it, so resume and ``ftl list`` still work."""
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s:%d: skipped a line that is not JSON (cut off mid-write?)", path, number)
    return rows


class JsonlSink(MetricSink):
    def __init__(self, path: Path, resume_step: int = 0):
        self.path = path
        if resume_step and path.exists():
            # Drop what was logged after the checkpoint we resume from: it will be redone.
            kept = [row for row in parse_metrics(path.read_text(), path) if row.get("step", 0) <= resume_step]
            tmp = path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(json.dumps(row) + "\n" for row in kept))
            tmp.replace(path)  # atomic: a reader sees the old file or the new one
        self._fh = path.open("a", buffering=1)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        self._fh.write(json.dumps({"step": step, **metrics}) + "\n")

    def close(self) -> None:
        self._fh.close()


class JsonlTail:
    """The rows appended to a growing JSONL file since the last ``read``.

    A line still being written (no newline yet) is left for the next read. A file replaced by a
    shorter one (``JsonlSink`` rewrites it on resume) is read again from its start."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self._inode: int | None = None

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        st = self.path.stat()
        if st.st_ino != self._inode or st.st_size < self.offset:  # replaced (resume): start over
            self.offset, self._inode = 0, st.st_ino
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            chunk = fh.read()
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        return [json.loads(line) for line in chunk[:end].decode().splitlines() if line.strip()]


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return parse_metrics(path.read_text(), path)
