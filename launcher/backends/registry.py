"""Registry of sharding backends and named presets, light enough for config validation.

A preset is a backend plus settings (``zero3_offload`` = deepspeed, stage 3, optimizer and
parameters offloaded to CPU). Explicit ``sharding.*`` keys may add to a preset but never
contradict it: a contradiction is a config error, not a silent override.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from launcher.core.errors import Problem, UserError
from launcher.core.registry import Registry


@dataclass(frozen=True)
class BackendSpec:
    name: str
    impl: str
    description: str
    settings: dict[str, Any] = field(default_factory=dict)


BACKENDS: Registry[BackendSpec] = Registry("sharding backend")

_DS = "launcher.backends.deepspeed:DeepSpeedBackend"
_FSDP = "launcher.backends.fsdp2:FSDP2Backend"
for spec in [
    BackendSpec("ddp", "launcher.backends.ddp:DDPBackend", "replicated model, all-reduced gradients"),
    BackendSpec("deepspeed", _DS, "DeepSpeed ZeRO (stage from sharding.zero_stage, default 2)"),
    BackendSpec("zero1", _DS, "ZeRO-1: optimizer states sharded", {"zero_stage": 1}),
    BackendSpec("zero2", _DS, "ZeRO-2: + gradients sharded", {"zero_stage": 2}),
    BackendSpec("zero3", _DS, "ZeRO-3: + parameters sharded", {"zero_stage": 3}),
    BackendSpec("zero2_offload", _DS, "ZeRO-2, optimizer on CPU",
                {"zero_stage": 2, "offload_optimizer": "cpu"}),
    BackendSpec("zero3_offload", _DS, "ZeRO-3, optimizer and parameters on CPU",
                {"zero_stage": 3, "offload_optimizer": "cpu", "offload_params": "cpu"}),
    BackendSpec("fsdp2", _FSDP, "torch FSDP2: fully_shard per decoder layer, then the root"),
    BackendSpec("fsdp2_offload", _FSDP, "FSDP2 with parameters offloaded to CPU",
                {"offload_params": "cpu"}),
    BackendSpec("auto", "launcher.plan.auto_sharding:auto_backend",
                "the first of ddp, zero1, zero2, zero3, zero3 + offload_optimizer, zero3_offload whose "
                "predicted memory fits resources.gpu_memory_gb (see `ftl plan`)"),
]:
    BACKENDS.register(spec.name)(spec)

DEFAULTS = {"zero_stage": 2, "offload_optimizer": "none", "offload_params": "none"}
AUTO = "auto"


@dataclass(frozen=True)
class ResolvedSharding:
    kind: str  # ddp | deepspeed | fsdp2 | auto (not chosen yet: a config ftl run did not prepare)
    impl: str
    zero_stage: int
    offload_optimizer: str
    offload_params: str
    reshard_after_forward: bool
    deepspeed_config: dict[str, Any] | None


def resolve_sharding(section: Any) -> ResolvedSharding:
    """The backend and settings a ``sharding:`` section means. ``backend: auto`` is chosen once,
    when ``ftl run`` prepares the run (``launcher.plan.auto_sharding.prepared_config``): the run's
    config names the chosen backend. A section that still says ``auto`` (a config not prepared:
    ``ftl validate``, tests) resolves to ``kind="auto"``, whose impl chooses when it is built."""
    if section.backend == AUTO:
        return _resolve_auto(section)
    spec = BACKENDS.get(section.backend, "sharding.backend")
    kind = {_DS: "deepspeed", _FSDP: "fsdp2"}.get(spec.impl, "ddp")
    values: dict[str, Any] = {}
    problems = []
    for key, default in DEFAULTS.items():
        given = getattr(section, key)
        preset = spec.settings.get(key)
        if given is not None and preset is not None and given != preset:
            problems.append(Problem(f"sharding.{key}", f"{given!r} contradicts preset "
                                    f"{spec.name!r} ({key}: {preset!r})",
                                    f"remove it, or use backend: {kind} with explicit settings"))
        values[key] = given if given is not None else preset if preset is not None else default
    if kind != "deepspeed":
        for key in ("zero_stage", "offload_optimizer"):
            if getattr(section, key) is not None:
                problems.append(Problem(f"sharding.{key}", f"only applies to deepspeed, not {kind}"))
        if section.deepspeed_config is not None:
            problems.append(Problem("sharding.deepspeed_config", f"only applies to deepspeed, not {kind}"))
    if kind == "ddp" and values["offload_params"] != "none":
        problems.append(Problem("sharding.offload_params", "ddp cannot offload parameters",
                                "use zero3_offload or fsdp2_offload"))
    if kind == "deepspeed" and values["offload_params"] != "none" and values["zero_stage"] != 3:
        problems.append(Problem("sharding.offload_params", "parameter offload needs ZeRO stage 3"))
    if problems:
        raise UserError(problems)
    return ResolvedSharding(kind, spec.impl, values["zero_stage"], values["offload_optimizer"],
                            values["offload_params"], section.reshard_after_forward,
                            section.deepspeed_config)


def _resolve_auto(section: Any) -> ResolvedSharding:
    problems = [Problem(f"sharding.{key}", "backend: auto chooses this itself",
                        "remove it, or name a backend, e.g. backend: zero3")
                for key in (*DEFAULTS, "deepspeed_config") if getattr(section, key) is not None]
    if problems:
        raise UserError(problems)
    spec = BACKENDS.get(AUTO)
    return ResolvedSharding(AUTO, spec.impl, DEFAULTS["zero_stage"], "none", "none",
                            section.reshard_after_forward, None)
