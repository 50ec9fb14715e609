"""Which examples each rank sees at each step: a pure function of (seed, step).

The whole run is one stream of example indices (epoch after epoch, each a seeded shuffle, or
a weighted draw for mixtures). Step ``s`` takes the next ``global_batch`` indices; rank ``r``
takes its micro-batches from that slice. Because nothing else is state, resuming needs only
the step number, and the set of examples per optimizer step is the same for every world size
and accumulation split (so backends and layouts are comparable step by step).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class StepSampler:
    def __init__(self, source_sizes: Sequence[int], weights: Sequence[float], seed: int):
        if not source_sizes or min(source_sizes) <= 0:
            raise ValueError("every training source needs at least one example")
        self.sizes = list(source_sizes)
        self.offsets = np.cumsum([0] + self.sizes[:-1])
        self.total = int(sum(self.sizes))
        w = np.asarray(weights, dtype=np.float64)
        self.probs = w / w.sum()
        self.seed = seed
        self._cache: dict[int, np.ndarray] = {}

    @property
    def is_mixture(self) -> bool:
        return len(self.sizes) > 1

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Global indices of one epoch (``total`` long)."""
        if epoch not in self._cache:
            rng = np.random.default_rng([self.seed, epoch])
            if not self.is_mixture:
                order = rng.permutation(self.total)
            else:
                # Each draw picks a source by weight, then that source's next example
                # (sources cycle through their own shuffles).
                picks = rng.choice(len(self.sizes), size=self.total, p=self.probs)
                order = np.empty(self.total, dtype=np.int64)
                for src, size in enumerate(self.sizes):
                    where = np.nonzero(picks == src)[0]
                    reps = -(-len(where) // size) if len(where) else 0
                    local = np.concatenate([rng.permutation(size) for _ in range(reps)] or [[]])
                    order[where] = self.offsets[src] + local[: len(where)].astype(np.int64)
            self._cache = {epoch: order}
        return self._cache[epoch]

    def take(self, start: int, count: int) -> list[int]:
        """``count`` indices from stream position ``start``."""
        out: list[int] = []
        pos = start
        while len(out) < count:
            epoch, offset = divmod(pos, self.total)
            chunk = self.epoch_order(epoch)[offset: offset + count - len(out)]
            out.extend(int(i) for i in chunk)
            pos += len(chunk)
        return out

    def micro_batches(self, step: int, rank: int, world: int, micro: int, accum: int
                      ) -> list[list[int]]:
        """Rank ``rank``'s ``accum`` micro-batches for optimizer step ``step`` (0-based)."""
        global_batch = world * micro * accum
        base = step * global_batch
        return [self.take(base + (m * world + rank) * micro, micro) for m in range(accum)]

    def source_of(self, index: int) -> int:
        return int(np.searchsorted(self.offsets, index, side="right") - 1)
