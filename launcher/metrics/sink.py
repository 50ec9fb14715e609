"""The metric-sink contract: where ``MetricSinks`` sends each step's metrics.

Required: ``log`` every step and ``close`` at the end. Optional, declared as a capability:
``summary``, the run's final figures (W&B's run summary; ``metrics.jsonl`` has no such place).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from launcher.core.capabilities import Capability, Capable


class SinkCapability(Capability):
    SUMMARY = "summary"  #: ``summary(values)``: the run's final figures, once before ``close``


class MetricSink(Capable, ABC):
    @abstractmethod
    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Record ``metrics`` (plain numbers and strings) at ``step``."""

    @abstractmethod
    def close(self) -> None:
        """Flush and release; nothing is logged after this."""
