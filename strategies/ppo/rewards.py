"""Reward functions named by ``reward.function``, called as TRL calls them.

``function(prompts, completions, **columns) -> list[float]``: ``prompts`` are the texts the
policy was given (the last user message, or the prompt string), ``completions`` the decoded
responses, and ``columns`` every other column of the prompt rows as lists aligned with them
(``answer``, ``tests``, ...), so a checker can compare with the row's reference. A function gets
the columns its signature names, or all of them when it takes ``**kwargs``. Several functions
add up with their weights; each one's mean is logged as ``reward/<function>``. ``None`` for a
row means "does not apply": it adds 0 and is left out of that function's mean (TRL's rule).

A function that raises, returns the wrong count, a non-number or NaN stops the run with a
``RewardError`` naming the function and the data row (found by calling it row by row).

Kept free of torch so a config naming one validates in a second.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

RewardFn = Callable[..., Sequence[float | None]]


def letter_a_fraction(prompts: Sequence[str], completions: Sequence[str], **_: Any) -> list[float]:
    """Share of the completion's non-space characters that are the letter 'a', in [0, 1].

    A randomly initialised model writes byte soup in which a few percent of characters are 'a', so
    the reward starts near 0 and every response carries some signal (a dense reward, unlike exact
    match): the test task on which PPO and GRPO must show a large rise within a few minutes.
    An empty completion (EOS first) scores 0, so stopping at once is never a way out.
    """
    scores = []
    for text in completions:
        chars = [c for c in text if not c.isspace()]
        scores.append(chars.count("a") / len(chars) if chars else 0.0)
    return scores


class RewardError(RuntimeError):
    """A reward function broke its contract; the message names the function and the row."""


@dataclass
class _Bound:
    spec: str                 # module:function, for messages
    label: str                # metric name
    weight: float
    call: RewardFn
    columns: set[str] | None  # column names it accepts; None = all (**kwargs)


def _accepted_columns(fn: RewardFn) -> set[str] | None:
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


class RewardFunctions:
    """The run's reward functions, loaded once in the controller."""

    def __init__(self, specs: Sequence[Any]):
        """``specs``: ``RewardFunction`` entries (name, weight, kwargs) from the config."""
        from launcher.core.lazy import load_object

        self.functions: list[_Bound] = []
        labels: list[str] = []
        for spec in specs:
            fn = load_object(spec.name)
            call = functools.partial(fn, **spec.kwargs) if spec.kwargs else fn
            label = spec.label()
            if label in labels:
                label = f"{label}_{len(labels)}"
            labels.append(label)
            self.functions.append(_Bound(spec.name, label, spec.weight, call, _accepted_columns(call)))

    def score(self, prompts: Sequence[Any], completions: Sequence[str]
              ) -> tuple[list[float], dict[str, float]]:
        """Weighted total per completion, and each function's mean (``reward/<label>``).
        ``prompts`` are ``strategies.ppo.prompts.Prompt`` (text, columns, where)."""
        names = sorted({k for p in prompts for k in p.columns})
        columns = {k: [p.columns.get(k) for p in prompts] for k in names}
        texts = [p.text for p in prompts]
        total = [0.0] * len(completions)
        metrics: dict[str, float] = {}
        for f in self.functions:
            scores = self._call(f, texts, list(completions), columns, prompts)
            applied = [s for s in scores if s is not None]
            metrics[f"reward/{f.label}"] = sum(applied) / len(applied) if applied else float("nan")
            for i, s in enumerate(scores):
                if s is not None:
                    total[i] += f.weight * s
        return total, metrics

    # -- one function, checked
    def _call(self, f: _Bound, texts: list[str], completions: list[str], columns: dict[str, list],
              prompts: Sequence[Any]) -> list[float | None]:
        kwargs = {k: v for k, v in columns.items() if f.columns is None or k in f.columns}
        try:
            out = list(f.call(texts, completions, **kwargs))
        except Exception as exc:
            raise RewardError(self._locate_raise(f, texts, completions, kwargs, prompts, exc)) from exc
        if len(out) != len(completions):
            raise RewardError(f"reward function {f.spec} returned {len(out)} scores for "
                              f"{len(completions)} completions")
        for i, s in enumerate(out):
            if s is None:
                continue
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
                where = prompts[i].where or f"row {i}"
                raise RewardError(f"reward function {f.spec} returned {s!r} for {where} (prompt "
                                  f"{texts[i][:60]!r}); it must return finite numbers (or None)")
        return [None if s is None else float(s) for s in out]

    @staticmethod
    def _locate_raise(f: _Bound, texts: list[str], completions: list[str], kwargs: dict[str, list],
                      prompts: Sequence[Any], exc: Exception) -> str:
        """Name the first row on which the function raises alone (the batch call raised)."""
        what = f"{type(exc).__name__}: {exc}"
        for i in range(len(completions)):
            try:
                f.call(texts[i:i + 1], completions[i:i + 1], **{k: v[i:i + 1] for k, v in kwargs.items()})
            except Exception as row_exc:
                where = prompts[i].where or f"row {i}"
                return (f"reward function {f.spec} raised {type(row_exc).__name__}: {row_exc} on {where} "
                        f"(prompt {texts[i][:60]!r}, completion {completions[i][:60]!r})")
        return f"reward function {f.spec} raised {what} on the batch (no single row reproduces it)"
