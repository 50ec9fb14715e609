"""What the training loop will see of each training source, measured before anything runs.

Every row (up to ``ROWS_MEASURED`` per source) goes through the method's own tokenizer step
twice: with ``data.max_length`` as configured and without a limit. Comparing the tokens each
version trains on shows rows whose answer the limit cuts short or removes entirely, which
would otherwise train silently on nothing (a loss of 0.0 and a gradient norm of 0.0 at every
step, exit 0). ``ftl validate`` prints the summary; preflight turns it into an error when no
row keeps a token to train on, and a warning when some rows lose theirs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

ROWS_MEASURED = 20_000
#: data.max_length suggestions are rounded up to a multiple of this
LENGTH_STEP = 64


@dataclass
class SourceReport:
    """Token statistics of one source as the loop will see it."""

    where: str
    name: str
    rows: int
    lengths: list[int] = field(default_factory=list)     # tokens per row, no limit
    trained: list[int] = field(default_factory=list)     # tokens trained on, at max_length
    untruncated: list[int] = field(default_factory=list)  # tokens trained on, no limit

    @property
    def measured(self) -> int:
        return len(self.lengths)

    def percentile(self, q: float) -> int:
        ordered = sorted(self.lengths)
        return ordered[min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1)] if ordered else 0

    def rows_cut(self) -> list[int]:
        """Rows that lose some of their trained tokens at max_length (but keep some)."""
        return [i for i, (t, u) in enumerate(zip(self.trained, self.untruncated)) if 0 < t < u]

    def rows_emptied(self) -> list[int]:
        """Rows with nothing left to train on at max_length."""
        return [i for i, t in enumerate(self.trained) if t == 0]

    def fitting_length(self, rows: list[int]) -> int:
        """The smallest max_length (rounded up) that keeps every trained token of ``rows``."""
        longest = max((self.lengths[i] for i in rows), default=0)
        return LENGTH_STEP * math.ceil(longest / LENGTH_STEP)

    def summary_line(self, max_length: int) -> str:
        line = (f"{self.where} {self.name}: {self.rows:,} rows, {sum(self.lengths):,} tokens"
                + ("" if self.measured == self.rows else f" (first {self.measured:,} measured)")
                + f"; length p50 {self.percentile(50)}, p95 {self.percentile(95)}, max {max(self.lengths)}")
        cut, emptied = self.rows_cut(), self.rows_emptied()
        if cut or emptied:
            line += (f"; at max_length {max_length}: {len(emptied):,} rows keep no trained token, "
                     f"{len(cut):,} lose part of it")
        return line


class RowError(Exception):
    """A row the method cannot read; ``index`` locates it for the message."""

    def __init__(self, index: int, cause: Exception):
        super().__init__(str(cause))
        self.index, self.cause = index, cause


def measure_source(strategy: Any, unbounded: Any, ds: Any, fmt: str, where: str, name: str
                   ) -> SourceReport | None:
    """None when the method has no notion of trained tokens (online RL prompts, embeddings).
    Only rows that reach ``data.max_length`` are tokenized a second time without it."""
    max_length = strategy.cfg.data.max_length
    report = SourceReport(where, name, len(ds))
    for i in range(min(len(ds), ROWS_MEASURED)):
        row = ds[i]
        try:
            counts = strategy.token_counts(strategy.tokenize(row, fmt))
            if counts is None:
                return None
            full_length, full_trained = counts if counts[0] < max_length else \
                unbounded.token_counts(unbounded.tokenize(row, fmt))
        except (KeyError, TypeError, ValueError) as exc:
            raise RowError(i, exc) from exc
        report.lengths.append(full_length)
        report.trained.append(counts[1])
        report.untruncated.append(full_trained)
    return report
