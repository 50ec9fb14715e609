"""Prompt datasets (format ``prompt``) as token ids, and which prompts each RL step takes.

A prompt is a chat (a list of messages: rendered with the chat template and the assistant
generation prompt) or a plain string (tokenized as is). Overlong prompts keep their END, where
the generation prompt is. The order is a seeded shuffle per pass over the data, a pure function
of the step: a resumed run, and a replaced rollout worker, see exactly the same prompts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any

from launcher.core.errors import HintedValueError
from launcher.data.sources import eval_split, load_source, resolve_format, row_location


@dataclass(frozen=True)
class Prompt:
    ids: list[int]
    text: str      # what a reward function sees: the last user message, or the prompt string
    raw: Any       # the row's prompt (messages or string), re-rendered by a reward model
    columns: dict[str, Any] = field(default_factory=dict)  # the row's other columns (answer, tests)
    where: str = ""  # file:row, for errors that name the row


def encode_prompt(tokenizer: Any, prompt: Any, room: int) -> Prompt:
    """Token ids of a prompt, at most ``room`` of them (the end is kept)."""
    if isinstance(prompt, list):
        if not all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt):
            raise HintedValueError("a chat prompt must be a list of {role, content} messages",
                                   "or give the prompt as a plain string")
        ids = tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True,
                                            return_dict=True)["input_ids"]
        users = [m["content"] for m in prompt if m["role"] == "user"]
        text = str(users[-1]) if users else str(prompt[-1]["content"])
    elif isinstance(prompt, str):
        ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        text = prompt
    else:
        raise HintedValueError(f"prompt must be a string or a list of messages, not {type(prompt).__name__}")
    if not ids:
        raise HintedValueError("the prompt has no tokens")
    return Prompt(list(ids)[-room:], text, prompt)


def load_prompts(cfg: Any, tokenizer: Any, which: str) -> list[Prompt]:
    """Every prompt of ``data.train`` (mixture weights are not used: sources are concatenated)
    or of ``data.eval`` (held-out split of builtin tasks)."""
    sources = cfg.data.train if which == "train" else cfg.data.eval
    room = cfg.data.max_length - cfg.method_options().rollout.max_new_tokens
    prompts: list[Prompt] = []
    for i, source in enumerate(sources):
        where = f"data.{which}.{i}"
        ds = load_source(source, where, split=eval_split(source) if which == "eval" else None)
        resolve_format(ds, source, ("prompt",), where, cfg.method)
        for index, row in enumerate(ds):
            columns = {k: v for k, v in row.items() if k != "prompt"}
            prompt = encode_prompt(tokenizer, row["prompt"], room)
            prompts.append(replace(prompt, columns=columns, where=row_location(source, index)))
    return prompts


def step_prompts(step: int, batch_size: int, count: int, seed: int) -> list[int]:
    """Indices of the prompts of ``step``: consecutive slices of a per-pass seeded permutation."""
    out: list[int] = []
    start = step * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), count)
        order = list(range(count))
        random.Random(f"prompts:{seed}:{epoch}").shuffle(order)
        out.extend(order[offset: offset + batch_size - len(out)])
    return out
