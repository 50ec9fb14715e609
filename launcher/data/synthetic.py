"""Builtin synthetic tasks whose held-out exact match shows whether training worked.

Rows are chat conversations (the ``messages`` format), generated from a seed. The split is
decided by a hash of the question, so ``split: eval`` never contains a question seen in
``split: train`` whatever the seeds and row counts: the eval score is truly held out.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable

from launcher.registry import Registry

TaskFn = Callable[[random.Random], tuple[str, str]]
SYNTHETIC_TASKS: Registry[TaskFn] = Registry("builtin dataset")

_LETTERS = "abcdefghij"


@SYNTHETIC_TASKS.register("reverse")
def reverse_letters(rng: random.Random) -> tuple[str, str]:
    """Reverse 3-6 letters: 'reverse: a c b' -> 'b c a'."""
    letters = [rng.choice(_LETTERS) for _ in range(rng.randint(3, 6))]
    return "reverse: " + " ".join(letters), " ".join(reversed(letters))


@SYNTHETIC_TASKS.register("add")
def add_numbers(rng: random.Random) -> tuple[str, str]:
    """Add two numbers below 100: 'add: 23 + 58' -> '81'."""
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    return f"add: {a} + {b}", str(a + b)


@SYNTHETIC_TASKS.register("copy")
def copy_letters(rng: random.Random) -> tuple[str, str]:
    """Copy 3-6 letters: 'copy: a c b' -> 'a c b'. The easiest task; a smoke check."""
    letters = [rng.choice(_LETTERS) for _ in range(rng.randint(3, 6))]
    return "copy: " + " ".join(letters), " ".join(letters)


EVAL_BUCKETS = 10  # one question in ten belongs to the eval split


def in_split(question: str, split: str) -> bool:
    bucket = int(hashlib.sha256(question.encode()).hexdigest(), 16) % EVAL_BUCKETS
    return (bucket == 0) == (split != "train")


def generate(task: str, num_rows: int, seed: int = 0, split: str = "train") -> list[dict]:
    """``num_rows`` distinct-split rows of ``task`` as ``{"messages": [...]}`` dicts."""
    make = SYNTHETIC_TASKS.get(task, "data.path")
    rng = random.Random(f"{task}:{seed}:{split}")
    rows: list[dict] = []
    attempts = 0
    while len(rows) < num_rows:
        attempts += 1
        if attempts > num_rows * 200:
            raise ValueError(f"builtin task {task!r} cannot produce {num_rows} {split} rows")
        question, answer = make(rng)
        if not in_split(question, split):
            continue
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
    return rows
