"""Where a run goes: one target per place (local embedded Ray, ...)."""

from cluster.registry import TARGETS, TargetSpec

__all__ = ["TARGETS", "TargetSpec"]
