"""Derived random seeds: one run seed, many independent streams.

Per-step, per-worker and per-parameter generators are seeded from the run's ``train.seed`` and a
salt (a step and worker index, a parameter name's CRC). The run seed is scaled by a prime
stride, so neighbouring run seeds with small salts never land on each other's streams (a plain
``seed + salt`` would make seed 1 step 0 the same stream as seed 0 step 1).
"""

from __future__ import annotations

SEED_STRIDE = 1_000_003  # prime


def mix_seed(seed: int, salt: int) -> int:
    """The seed of stream ``salt`` under run seed ``seed``."""
    return seed * SEED_STRIDE + salt
