"""``sft``: supervised fine-tuning on chats or prompt/completion pairs.

Loss is on assistant (or completion) tokens only by default, as in TRL's
``assistant_only_loss`` / ``completion_only_loss``. The assistant mask comes from the chat
template's ``{% generation %}`` markers when it has them; otherwise from rendering the chat
prefix by prefix and marking what each assistant turn adds, which works with any template.
"""

from __future__ import annotations

import difflib

import torch
from torch import nn

from launcher.core.errors import HintedValueError
from strategies.base import GenerationExample, LossOutput, Strategy, causal_lm_loss
from strategies.catalog import SFTOptions

CHAT_ROLES = ("system", "user", "assistant", "tool")


def check_messages(messages: list, needs_assistant: bool) -> None:
    """A conversation a chat template can render and the loss can train on: known roles, no
    empty turns, and an assistant turn when the loss is on the assistant's tokens."""
    if not messages:
        raise HintedValueError("the conversation has no messages", "drop the row or fill it")
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in CHAT_ROLES:
            close = difflib.get_close_matches(str(role), CHAT_ROLES, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"roles: {', '.join(CHAT_ROLES)}"
            raise HintedValueError(f"message {i}: unknown role {role!r}", hint)
        if not str(message.get("content") or "").strip() and not message.get("tool_calls"):
            raise HintedValueError(f"message {i} ({role}) is empty", "drop the turn or the row")
    if needs_assistant and not any(m["role"] == "assistant" for m in messages):
        raise HintedValueError("the conversation has no assistant turn: nothing to train on",
                               "add the assistant's answer, or set sft.loss_on: all")


class SFTStrategy(Strategy[SFTOptions]):
    def tokenize(self, row: dict, fmt: str) -> dict:
        if fmt == "messages":
            check_messages(row["messages"], needs_assistant=self.options.loss_on == "assistant")
            ids, mask = self._chat_ids_and_mask(row["messages"])
        else:
            ids, mask = self._prompt_completion(row["prompt"], row["completion"])
        max_len = self.cfg.data.max_length
        ids, mask = ids[:max_len], mask[:max_len]
        all_tokens = self.options.loss_on == "all"
        labels = [t if (m or all_tokens) else -100 for t, m in zip(ids, mask)]
        return {"input_ids": ids, "labels": labels}

    # -- chats
    def _chat_ids_and_mask(self, messages: list[dict]) -> tuple[list[int], list[int]]:
        tok = self.tokenizer
        enc = tok.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        ids = list(enc["input_ids"])
        mask = list(enc.get("assistant_masks") or [])
        if any(mask):
            return ids, mask
        return ids, self._mask_by_prefixes(messages, ids)

    def _mask_by_prefixes(self, messages: list[dict], ids: list[int]) -> list[int]:
        """Mark tokens added by each assistant turn, for templates without generation markers."""
        tok = self.tokenizer
        mask = [0] * len(ids)
        for i, msg in enumerate(messages):
            if msg.get("role") != "assistant":
                continue
            before = tok.apply_chat_template(messages[:i], tokenize=True, add_generation_prompt=True,
                                             return_dict=True)["input_ids"]
            upto = tok.apply_chat_template(messages[: i + 1], tokenize=True,
                                           return_dict=True)["input_ids"]
            for j in range(len(before), min(len(upto), len(ids))):
                mask[j] = 1
        return mask

    # -- prompt / completion
    def _prompt_completion(self, prompt, completion) -> tuple[list[int], list[int]]:
        tok = self.tokenizer
        if isinstance(prompt, list):  # conversational prompt/completion
            messages = list(prompt) + (completion if isinstance(completion, list)
                                       else [{"role": "assistant", "content": completion}])
            return self._chat_ids_and_mask(messages)
        p = tok(prompt, add_special_tokens=True)["input_ids"]
        c = tok(completion, add_special_tokens=False)["input_ids"]
        if tok.eos_token_id is not None:
            c = c + [tok.eos_token_id]
        return p + c, [0] * len(p) + [1] * len(c)

    # -- eval
    def generation_example(self, row: dict, fmt: str) -> GenerationExample | None:
        tok = self.tokenizer
        if fmt == "messages":
            messages = row["messages"]
            if not messages or messages[-1].get("role") != "assistant":
                return None
            prompt = tok.apply_chat_template(messages[:-1], tokenize=True, add_generation_prompt=True,
                                             return_dict=True)["input_ids"]
            return GenerationExample(list(prompt), messages[-1]["content"])
        prompt, completion = row["prompt"], row["completion"]
        if isinstance(prompt, list):
            ids = tok.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True,
                                          return_dict=True)["input_ids"]
            ref = completion[-1]["content"] if isinstance(completion, list) else completion
            return GenerationExample(list(ids), ref)
        return GenerationExample(tok(prompt, add_special_tokens=True)["input_ids"], completion)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        return causal_lm_loss(model, batch, **self.ce)
