"""Named registries (strategies, backends, targets, builtin data and models).

Each registry is an explicit dict filled by a ``register`` decorator, so what exists is
discoverable (``ftl schema``, CLI choices) and an unknown name fails with the sorted list of
known names and the closest match instead of a KeyError deep inside a worker.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from launcher.core.errors import Problem, UserError

T = TypeVar("T")

# ``builtin:<name>`` names an entry of a builtin registry (a tiny model, a synthetic task)
# wherever a model or data path is accepted; nothing else starts with it.
BUILTIN_PREFIX = "builtin:"


def did_you_mean(name: str, choices: list[str] | tuple[str, ...] | set[str]) -> str | None:
    """The closest known name to ``name``, or None when nothing is close."""
    matches = difflib.get_close_matches(name, sorted(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


class Registry(Generic[T]):
    """A name -> object mapping whose lookups fail with a helpful message."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorate(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return decorate

    def get(self, name: str, where: str = "") -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UserError(self.unknown(name, where)) from None

    def unknown(self, name: str, where: str = "") -> Problem:
        names = self.names()
        close = did_you_mean(name, names)
        hint = f"did you mean {close!r}?" if close else None
        return Problem(where, f"unknown {self.kind} {name!r}; known: {', '.join(names)}", hint)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())
