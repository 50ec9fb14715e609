"""Peak anonymous memory of this process during a block (sampled from /proc).

Anonymous memory is what tensors allocate; file-backed pages (mmap'ed safetensors) are not
counted, so the figure is what loading keeps resident of the model's parameters. Used to
check that sharded backends never hold the whole model on one rank while loading.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path


def anon_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class PeakAnon:
    """``with PeakAnon() as w: ...`` then ``w.peak_delta`` (bytes above the start)."""

    def __init__(self, interval_s: float = 0.002):
        self.interval_s = interval_s
        self.start = self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, anon_bytes())
            time.sleep(self.interval_s)

    def __enter__(self) -> PeakAnon:
        self.start = self.peak = anon_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, anon_bytes())

    @property
    def peak_delta(self) -> int:
        return self.peak - self.start
