"""The strategy registry: which methods exist, their config sections and data formats.

An entry is a light ``StrategySpec`` (options model + the dotted name of the implementation),
so the config schema can list every method section without importing torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from launcher.registry import Registry


@dataclass(frozen=True)
class StrategySpec:
    name: str
    options: type
    impl: str
    formats: tuple[str, ...]
    needs_chat_template: bool = False
    generative: bool = True
    description: str = ""


STRATEGIES: Registry[StrategySpec] = Registry("method")


def strategy(
    name: str,
    *,
    impl: str,
    formats: tuple[str, ...],
    needs_chat_template: bool = False,
    generative: bool = True,
) -> Callable[[type], type]:
    """Register the decorated options model as method ``name`` implemented by ``impl``."""

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
            )
        )
        return options

    return decorate
