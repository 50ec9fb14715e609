"""Registry of sharding backends, light enough for config validation."""

from __future__ import annotations

from dataclasses import dataclass

from launcher.registry import Registry


@dataclass(frozen=True)
class BackendSpec:
    name: str
    impl: str
    description: str


BACKENDS: Registry[BackendSpec] = Registry("sharding backend")

BACKENDS.register("ddp")(
    BackendSpec("ddp", "launcher.backends.ddp:DDPBackend", "replicated model, all-reduced grads")
)
