"""Optional parts of a plugin contract (strategies, cluster targets, metric sinks), declared.

A plugin lists what it offers beyond its required methods in ``capabilities``; callers ask
``plugin.supports(X)`` instead of probing with ``hasattr``. Why: a probe turns a behaviour on
for any class that happens to have a method of that name (a helper, a mixin) and silently off
for a typo, whereas a declaration is what the plugin's author meant, checked both ways: a
declared capability whose method is missing fails when the class is defined, and the contract
test (``tests/unit/test_plugin_contracts.py``) fails for a method that is there but undeclared.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, ClassVar


class Capability(Enum):
    """One optional part of a plugin kind's contract; its value names the method providing it.
    Each plugin kind subclasses this with its own members."""


class Capable:
    """Base of plugins with optional parts: ``capabilities`` says which they provide."""

    capabilities: ClassVar[frozenset[Capability]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        missing = sorted(c.value for c in cls.capabilities if not callable(getattr(cls, c.value, None)))
        if missing:
            raise TypeError(f"{cls.__qualname__} declares {', '.join(missing)} but does not define it")

    @classmethod
    def supports(cls, capability: Capability) -> bool:
        return capability in cls.capabilities


def undeclared(cls: type, kind: type[Capability]) -> list[str]:
    """Methods of ``kind``'s capabilities that ``cls`` defines without declaring them (what a
    ``hasattr`` probe would have switched on): the contract test wants none."""
    declared = getattr(cls, "capabilities", frozenset())
    return sorted(c.value for c in kind if c not in declared and callable(getattr(cls, c.value, None)))
