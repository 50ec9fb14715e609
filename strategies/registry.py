"""The strategy registry: which methods exist, their config sections and data formats.

An entry is a light ``StrategySpec`` (options model + the dotted name of the implementation),
so the config schema can list every method section without importing torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from launcher.core.lazy import load_object
from launcher.core.registry import Registry

if TYPE_CHECKING:
    from strategies.base import DataSpec


@dataclass(frozen=True)
class StrategySpec:
    name: str
    #: the method's options section (``cfg.method_options()``; the impl's ``options_type()``)
    options: type
    #: "module:Class": a ``strategies.base.Strategy``, or with ``controller`` a ``DataSpec``
    impl: str
    formats: tuple[str, ...]
    needs_chat_template: bool = False
    generative: bool = True
    description: str = ""
    #: "module:function" run by the driver instead of a TorchTrainer (online RL: actor groups)
    controller: str | None = None
    #: "module" sizing the roles beside the policy for the planner (``launcher.plan.roles``)
    role_plan: str | None = None


STRATEGIES: Registry[StrategySpec] = Registry("method")


def strategy(
    name: str,
    *,
    impl: str,
    formats: tuple[str, ...],
    needs_chat_template: bool = False,
    generative: bool = True,
    controller: str | None = None,
    role_plan: str | None = None,
) -> Callable[[type], type]:
    """Register the decorated options model as method ``name`` implemented by ``impl``.

    ``controller`` ("module:function" taking the run folder) replaces the TorchTrainer for
    methods whose roles are not one SPMD worker group (PPO/GRPO drive several actor groups);
    ``role_plan`` (a module, see ``launcher.plan.roles``) sizes those roles for the planner."""

    def decorate(options: type) -> type:
        doc = (options.__doc__ or "").strip().splitlines()
        STRATEGIES.register(name)(
            StrategySpec(
                name=name,
                options=options,
                impl=impl,
                formats=formats,
                needs_chat_template=needs_chat_template,
                generative=generative,
                description=doc[0] if doc else "",
                controller=controller,
                role_plan=role_plan,
            )
        )
        return options

    return decorate


def build_strategy(cfg: Any, tokenizer: Any) -> DataSpec:
    """The strategy object of ``cfg.method``, with its spec attached: the one way the loop,
    export, preflight, benchmarks and tests get one (importing the implementation lazily).
    A ``Strategy`` for methods the per-rank loop trains; for controller-driven ones (ppo, grpo)
    the ``DataSpec`` of the trained policy."""
    spec = STRATEGIES.get(cfg.method)
    built = load_object(spec.impl)(cfg, tokenizer)
    built.spec = spec
    return built
