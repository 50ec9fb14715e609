"""A per-rank watchdog that turns a hung run into a failed one, with every thread's stack.

A rank stuck in a collective (a peer died without the group noticing, a deadlock in a data
loader, a wedged filesystem) otherwise waits for the collective timeout at best and forever at
worst. The watchdog thread expects a heartbeat from the training loop at every step; after
``train.hang_timeout_s`` without one it appends the stack of every thread to the rank's log,
records the failure like any other (``logs/failed-rank-N.json``, which ``ftl run`` and
``ftl status`` name) and ends the process, so Ray Train fails the run, or restarts it from the
last checkpoint when ``train.max_failures`` allows.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path


class StepWatchdog:
    """``with StepWatchdog(...) as watchdog``: watches while the block runs; ``timeout_s`` None
    turns it off (every method is then a no-op)."""

    def __init__(self, timeout_s: float | None, rank: int, logs: Path):
        self.timeout_s, self.rank, self.logs = timeout_s, rank, logs
        self._last = time.monotonic()
        self._step = 0
        self._paused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="ftl-step-watchdog", daemon=True)

    def __enter__(self) -> StepWatchdog:
        if self.timeout_s:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:  # a failing step must not be ended later by the watchdog
        self._stop.set()

    def beat(self, step: int) -> None:
        self._step, self._last = step, time.monotonic()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """For work that is not a step and may legitimately take long (evaluation, saving)."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1
            self._last = time.monotonic()

    def _watch(self) -> None:
        while not self._stop.wait(min(5.0, self.timeout_s / 4)):
            idle = time.monotonic() - self._last
            if self._paused or idle < self.timeout_s:
                continue
            self._fire(idle)
            return

    def _fire(self, idle: float) -> None:
        message = (f"HangError: no step progress for {idle:.0f} s after step {self._step} "
                   f"(train.hang_timeout_s {self.timeout_s:g}); the stack of every thread is in the log")
        log = self.logs / f"rank-{self.rank}.log"
        with log.open("a") as fh:
            fh.write(f"\n{message}\n")
            fh.flush()
            faulthandler.dump_traceback(file=fh, all_threads=True)
        (self.logs / f"failed-rank-{self.rank}.json").write_text(json.dumps(
            {"rank": self.rank, "error": message, "pid": os.getpid(), "traceback": ""}))
        os._exit(1)
