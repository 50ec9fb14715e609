"""Builtin synthetic tasks whose held-out scores show whether training worked.

Each task makes rows in one of the formats a method reads: chats (``messages``) for SFT,
preference pairs (``prompt``/``chosen``/``rejected``) for reward models and DPO, unpaired
feedback (``prompt``/``completion``/``label``) for KTO, labelled
text (``text``/``label``) for classification, and ``anchor``/``positive``/``negative`` for
contrastive embeddings. The split is decided by a hash of each row's key text, so
``split: eval`` never contains a question seen in ``split: train`` whatever the seeds and
row counts: the eval score is truly held out.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable

from launcher.core.registry import Registry

# A task returns (key text that decides the split, the row).
TaskFn = Callable[[random.Random], tuple[str, dict]]
SYNTHETIC_TASKS: Registry[TaskFn] = Registry("builtin dataset")

_LETTERS = "abcdefghij"
TOPIC_GROUPS = {"low": "abc", "mid": "def", "high": "ghij"}


def _chat(question: str, answer: str) -> tuple[str, dict]:
    return question, {"messages": [{"role": "user", "content": question},
                                   {"role": "assistant", "content": answer}]}


def _letters(rng: random.Random, lo: int = 3, hi: int = 6) -> list[str]:
    return [rng.choice(_LETTERS) for _ in range(rng.randint(lo, hi))]


@SYNTHETIC_TASKS.register("reverse")
def reverse_letters(rng: random.Random) -> tuple[str, dict]:
    """Reverse 3-6 letters: 'reverse: a c b' -> 'b c a'."""
    letters = _letters(rng)
    return _chat("reverse: " + " ".join(letters), " ".join(reversed(letters)))


@SYNTHETIC_TASKS.register("add")
def add_numbers(rng: random.Random) -> tuple[str, dict]:
    """Add two numbers below 100: 'add: 23 + 58' -> '81'."""
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    return _chat(f"add: {a} + {b}", str(a + b))


@SYNTHETIC_TASKS.register("copy")
def copy_letters(rng: random.Random) -> tuple[str, dict]:
    """Copy 3-6 letters: 'copy: a c b' -> 'a c b'. The easiest task; a smoke check."""
    letters = _letters(rng)
    return _chat("copy: " + " ".join(letters), " ".join(letters))


@SYNTHETIC_TASKS.register("letters-text")
def letters_text(rng: random.Random) -> tuple[str, dict]:
    """Raw text for continued pretraining (method ``full``): reversal facts as sentences."""
    letters = _letters(rng)
    text = " ".join(letters)
    return text, {"text": f"reversing {text} gives {' '.join(reversed(letters))}."}


@SYNTHETIC_TASKS.register("prefs-reverse")
def reverse_preferences(rng: random.Random) -> tuple[str, dict]:
    """Preference pairs (TRL's conversational prompt/chosen/rejected): the correct reversal
    is chosen; the rejected answer has the same length but letters not taken from the prompt."""
    letters = _letters(rng)
    question = "reverse: " + " ".join(letters)
    wrong = list(reversed(letters))
    while wrong == list(reversed(letters)):
        wrong = [rng.choice(_LETTERS) for _ in letters]
    return question, {
        "prompt": [{"role": "user", "content": question}],
        "chosen": [{"role": "assistant", "content": " ".join(reversed(letters))}],
        "rejected": [{"role": "assistant", "content": " ".join(wrong)}],
    }


@SYNTHETIC_TASKS.register("prefs-add")
def add_preferences(rng: random.Random) -> tuple[str, dict]:
    """Preference pairs on ``add`` questions (same split): the correct sum is chosen, a sum off by
    1-10 rejected. A pretrained model starts above chance here, which makes before/after
    comparisons on a real model meaningful."""
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    wrong = a + b
    while wrong == a + b:
        wrong = abs(a + b + rng.choice([-1, 1]) * rng.randint(1, 10))
    question = f"add: {a} + {b}"
    return question, {"prompt": [{"role": "user", "content": question}],
                      "chosen": [{"role": "assistant", "content": str(a + b)}],
                      "rejected": [{"role": "assistant", "content": str(wrong)}]}


@SYNTHETIC_TASKS.register("feedback-reverse")
def reverse_feedback(rng: random.Random) -> tuple[str, dict]:
    """Unpaired thumbs-up/down feedback (TRL's unpaired preference format, for KTO): a
    reversal question with one answer and ``label`` true when it is the correct reversal,
    false when it is a same-length answer of letters not taken from the prompt (half each)."""
    question, pair = reverse_preferences(rng)
    good = rng.random() < 0.5
    return question, {"prompt": pair["prompt"], "completion": pair["chosen" if good else "rejected"],
                      "label": good}


@SYNTHETIC_TASKS.register("topics")
def letter_topics(rng: random.Random) -> tuple[str, dict]:
    """Three-way classification: 8 letters, 6 of them from the label's group (a-c, d-f, g-j)."""
    label = rng.choice(sorted(TOPIC_GROUPS))
    letters = [rng.choice(TOPIC_GROUPS[label]) for _ in range(6)] + [rng.choice(_LETTERS) for _ in range(2)]
    rng.shuffle(letters)
    text = " ".join(letters)
    return text, {"text": text, "label": label}


@SYNTHETIC_TASKS.register("pairs-reverse")
def reverse_pairs(rng: random.Random) -> tuple[str, dict]:
    """Contrastive triples: anchor 'reverse: a c b', positive its reversal 'b c a', hard
    negative the letters unchanged 'a c b' (closer to the anchor for an untrained encoder)."""
    letters = _letters(rng, 4, 7)
    while letters == list(reversed(letters)):
        letters = _letters(rng, 4, 7)
    anchor = "reverse: " + " ".join(letters)
    return anchor, {"anchor": anchor, "positive": " ".join(reversed(letters)),
                    "negative": " ".join(letters)}


EVAL_BUCKETS = 10  # one question in ten belongs to the eval split


def in_split(question: str, split: str) -> bool:
    bucket = int(hashlib.sha256(question.encode()).hexdigest(), 16) % EVAL_BUCKETS
    return (bucket == 0) == (split != "train")


def generate(task: str, num_rows: int, seed: int = 0, split: str = "train") -> list[dict]:
    """``num_rows`` rows of ``task`` from the given split (train or held-out eval)."""
    make = SYNTHETIC_TASKS.get(task, "data.path")
    rng = random.Random(f"{task}:{seed}:{split}")
    rows: list[dict] = []
    attempts = 0
    while len(rows) < num_rows:
        attempts += 1
        if attempts > num_rows * 200:
            raise ValueError(f"builtin task {task!r} cannot produce {num_rows} {split} rows")
        key, row = make(rng)
        if in_split(key, split):
            rows.append(row)
    return rows


# -- prompt-only tasks (format ``prompt``) for online RL: the reward comes from a rule or a model


@SYNTHETIC_TASKS.register("prompts-letters")
def letter_prompts(rng: random.Random) -> tuple[str, dict]:
    """Chat prompts 'say letters: c a f' with no answer; a rule such as
    strategies.ppo.rewards:letter_a_fraction scores what the policy writes."""
    question = "say letters: " + " ".join(_letters(rng, 2, 4))
    return question, {"prompt": [{"role": "user", "content": question}]}


@SYNTHETIC_TASKS.register("prompts-reverse")
def reverse_prompts(rng: random.Random) -> tuple[str, dict]:
    """The questions of ``reverse`` (same train/eval split) as chat prompts, for PPO against a
    reward model trained on ``prefs-reverse``."""
    question = "reverse: " + " ".join(_letters(rng))
    return question, {"prompt": [{"role": "user", "content": question}]}


@SYNTHETIC_TASKS.register("prompts-add")
def add_prompts(rng: random.Random) -> tuple[str, dict]:
    """Addition questions with the reference in an ``answer`` column, for verifiable rewards
    (strategies.rl.verifiers:numeric_answer): 'What is 13 + 8? Answer with the number only.' ->
    '21'. Terms up to 30: sums a 135M instruct model gets right only some of the time."""
    a, b = rng.randint(0, 30), rng.randint(0, 30)
    question = f"What is {a} + {b}? Answer with the number only."
    return question, {"prompt": [{"role": "user", "content": question}], "answer": str(a + b)}


_CODE_TASKS = (
    ("plus_{k}(x)", "returns x plus {k}", "plus_{k}", lambda k, x: x + k),
    ("times_{k}(x)", "returns x times {k}", "times_{k}", lambda k, x: x * k),
    ("is_multiple_of_{k}(x)", "returns True when x is a multiple of {k}, else False", "is_multiple_of_{k}",
     lambda k, x: x % k == 0),
    ("last_digit_plus_{k}(x)", "returns the last digit of the non-negative integer x, plus {k}",
     "last_digit_plus_{k}", lambda k, x: x % 10 + k),
)


@SYNTHETIC_TASKS.register("prompts-code")
def code_prompts(rng: random.Random) -> tuple[str, dict]:
    """Small function-writing prompts with a ``tests`` column of asserts, for the sandboxed
    ``strategies.rl.verifiers:code_tests`` reward: 'Write a Python function plus_7(x) that
    returns x plus 7.' with tests 'assert plus_7(3) == 10' and two more."""
    signature, what, name, fn = rng.choice(_CODE_TASKS)
    k = rng.randint(2, 40)
    question = (f"Write a Python function {signature.format(k=k)} that {what.format(k=k)}. "
                "Reply with the code in a ```python block.")
    xs = [rng.randint(0, 200) for _ in range(3)]
    tests = "\n".join(f"assert {name.format(k=k)}({x}) == {fn(k, x)!r}" for x in xs)
    return question, {"prompt": [{"role": "user", "content": question}], "tests": tests}
