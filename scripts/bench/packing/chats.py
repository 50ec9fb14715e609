"""The benchmark's fixed setup and its data: variable-length chats, log-uniform in length."""

from __future__ import annotations

import math
import random

MODEL = "builtin:tiny-llama-256"
CHATS_PER_STEP = 24
NUM_ROWS = 2000
SKIP = 5
SEED = 42
THREADS = 2
LETTERS = "abcdefghij"
# Chat template overhead of one user + one assistant turn (ChatML): 18 tokens with a one-letter
# copy; each further letter is one token in the prompt and (copy/reverse) one in the answer.
OVERHEAD = 18


def variable_chats(num: int, max_length: int, seed: int = 0) -> list[dict]:
    """Deterministic chats whose tokenized lengths are log-uniform in [~16, max_length].

    Half are copy/reverse tasks (answer as long as the prompt: long assistant turns), half
    'first'/'count' questions over long letter strings (long prompt, one-token answer), so both
    the prompt and the trained part vary. Letters are single tokens in the builtin tokenizer.
    """
    rng = random.Random(f"bench-packing:{seed}")
    rows = []
    for _ in range(num):
        target = math.exp(rng.uniform(math.log(OVERHEAD - 2), math.log(max_length)))
        letters = [rng.choice(LETTERS) for _ in range(max(1, int(target) - OVERHEAD - 1))]
        kind = rng.choice(("copy", "reverse", "first", "count"))
        if kind in ("copy", "reverse"):
            letters = letters[: max(1, len(letters) // 2 + 1)]
            answer = " ".join(letters if kind == "copy" else reversed(letters))
        elif kind == "first":
            answer = letters[0]
        else:
            answer = str(len(letters) % 10)
        rows.append({"messages": [{"role": "user", "content": f"{kind}: {' '.join(letters)}"},
                                  {"role": "assistant", "content": answer}]})
    return rows
