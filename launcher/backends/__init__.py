"""Sharding backends: how the model and optimizer are wrapped across ranks."""

from launcher.backends.registry import BACKENDS, BackendSpec

__all__ = ["BACKENDS", "BackendSpec"]
