"""Preference pairs (TRL's format) as token ids, and their batches.

A row has ``chosen`` and ``rejected`` and usually a ``prompt``: plain strings, or chat
messages (conversational). Without a ``prompt`` column the prompt is the longest common
prefix of the two conversations (TRL's implicit-prompt format). Each pair becomes
``prompt_ids`` + ``chosen_ids`` / ``rejected_ids``; a batch stacks every chosen sequence,
then every rejected one, so one forward pass scores both halves (as TRL does).
"""

from __future__ import annotations

from typing import Any

import torch

from launcher.data.batching import (
    IGNORE_INDEX,
    collate_units,
    is_packed,
    model_inputs,
    pack_unit_rows,
    pad_rows,
    segment_sums,
    units_of,
)
from strategies.reference import stack_reference

PAIR_SLOTS = ("chosen", "rejected")


def _split_prompt(row: dict) -> tuple[Any, Any, Any]:
    prompt, chosen, rejected = row.get("prompt"), row["chosen"], row["rejected"]
    if prompt is None and isinstance(chosen, list):
        n = 0
        while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
            n += 1
        prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
    return prompt or ([] if isinstance(chosen, list) else ""), chosen, rejected


def _chat_ids(tok: Any, messages: list[dict], generation_prompt: bool) -> list[int]:
    return list(tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt,
                                        return_dict=True)["input_ids"])


def tokenize_answers(tok: Any, prompt: Any, answers: list[Any], max_length: int
                     ) -> tuple[list[int], list[list[int]]]:
    """``prompt_ids`` and each answer's completion ids, as TRL tokenizes them: chats through the
    template (the completion is what the answer adds after the generation prompt), plain text
    with EOS appended. Sequences longer than ``max_length`` keep their start (TRL's default)."""
    if answers and isinstance(answers[0], list):  # conversational
        prompt_ids = _chat_ids(tok, prompt, generation_prompt=True) if prompt else []
        completions = []
        for answer in answers:
            full = _chat_ids(tok, list(prompt) + list(answer), generation_prompt=False)
            completions.append(full[len(prompt_ids):])
    else:
        prompt_ids = tok(prompt, add_special_tokens=True)["input_ids"] if prompt else []
        eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
        completions = [tok(a, add_special_tokens=False)["input_ids"] + eos for a in answers]
    prompt_ids = prompt_ids[: max_length - 1]
    room = max_length - len(prompt_ids)
    return prompt_ids, [c[:room] for c in completions]


def tokenize_pair(tok: Any, row: dict, max_length: int) -> dict:
    """``prompt_ids``, ``chosen_ids``, ``rejected_ids`` (+ ``margin`` when the row has one)."""
    prompt, chosen, rejected = _split_prompt(row)
    prompt_ids, (chosen_ids, rejected_ids) = tokenize_answers(tok, prompt, [chosen, rejected], max_length)
    out = {"prompt_ids": prompt_ids, "chosen_ids": chosen_ids, "rejected_ids": rejected_ids}
    if row.get("margin") is not None:
        out["margin"] = float(row["margin"])
    return out


def pad_completions(prompts: list[list[int]], completions: list[list[int]], pad_id: int
                    ) -> dict[str, torch.Tensor]:
    """Right-padded ``prompt + completion`` rows with ``labels`` on the completion tokens only."""
    seqs = [p + c for p, c in zip(prompts, completions)]
    ids, mask = pad_rows(seqs, pad_id)
    labels = torch.full_like(ids, IGNORE_INDEX)
    for i, (seq, prompt) in enumerate(zip(seqs, prompts)):
        labels[i, len(prompt) : len(seq)] = ids[i, len(prompt) : len(seq)]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def completion_unit(prompt: list[int], completions: dict[str, list[int]]
                    ) -> dict[str, tuple[list[int], list[int]]]:
    """``{slot: (prompt + completion, labels on the completion only)}``: one packing unit."""
    masked = [IGNORE_INDEX] * len(prompt)
    return {slot: (prompt + c, masked + c) for slot, c in completions.items()}


def metadata(feature: dict) -> dict:
    """A feature's non-token fields (label, margin, reference scores): what a packed row keeps
    per unit besides its tokens."""
    return {k: v for k, v in feature.items() if not k.endswith("_ids")}


def pack_pairs(features: list[dict], max_length: int) -> list[dict]:
    """Whole pairs into rows of ``2 x max_length`` tokens (a row holds at least the longest pair,
    as two unpacked rows would), chosen and rejected as two segments of the same row."""
    units = [completion_unit(f["prompt_ids"], {"chosen": f["chosen_ids"], "rejected": f["rejected_ids"]})
             for f in features]
    return pack_unit_rows(units, [metadata(f) for f in features], 2 * max_length)


def collate_pairs(features: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """[chosen rows; rejected rows], right-padded, with ``labels`` = completion tokens only.
    Packed rows (``pack_pairs``) collate to segments whose sequences come out in that order."""
    if is_packed(features):
        batch = collate_units(features, pad_id, PAIR_SLOTS)
        units = [u for f in features for u in units_of(f)]
        if "margin" in units[0]:
            batch["margin"] = torch.tensor([u.get("margin", 0.0) for u in units])
        batch.update(stack_reference(units))
        return batch
    prompts = [f["prompt_ids"] for f in features] * 2
    completions = [f["chosen_ids"] for f in features] + [f["rejected_ids"] for f in features]
    batch = pad_completions(prompts, completions, pad_id)
    if "margin" in features[0]:
        batch["margin"] = torch.tensor([f.get("margin", 0.0) for f in features])
    batch.update(stack_reference(features))
    return batch


def next_token_logps(model: Any, batch: dict[str, torch.Tensor], **ce: Any) -> torch.Tensor:
    """``log p(x_t | x_<t)`` at every position t >= 1 of every row (fp32), shape [rows, len - 1];
    ``ce``: ``model.cross_entropy`` options (``Strategy.ce``). Packed rows pass position ids."""
    if ce.get("mode", "plain") != "plain":
        from launcher.models import chunked_ce

        return chunked_ce.next_token_logps(model, model_inputs(batch), batch["input_ids"], **ce)
    logits = model(**model_inputs(batch), use_cache=False).logits[:, :-1, :].float()
    targets = batch["input_ids"][:, 1:]
    return torch.gather(logits.log_softmax(-1), 2, targets.unsqueeze(-1)).squeeze(-1)


def labelled_sums(token_logps: torch.Tensor, batch: dict[str, torch.Tensor]
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row (per sequence when packed): summed log-probability of the labelled (completion)
    tokens, and their count."""
    mask = batch["labels"][:, 1:] != IGNORE_INDEX
    if "seq_index" in batch:
        index, n = batch["seq_index"][:, 1:], len(batch["seq_last"])
        return segment_sums(token_logps * mask, index, n), segment_sums(mask.long(), index, n)
    return (token_logps * mask).sum(-1), mask.sum(-1)


def sequence_logps(model: Any, batch: dict[str, torch.Tensor], **ce: Any
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: summed log-probability of the labelled (completion) tokens, and their count."""
    return labelled_sums(next_token_logps(model, batch, **ce), batch)


class PreferenceDataMixin:
    """Data side of methods trained on preference pairs (reward, dpo): items are pairs."""

    tokenizer: Any
    cfg: Any

    def tokenize(self, row: dict, fmt: str) -> dict:
        return tokenize_pair(self.tokenizer, row, self.cfg.data.max_length)

    def pack_dataset(self, features: list[dict]) -> list[dict]:
        return pack_pairs(features, self.cfg.data.max_length)

    def collate(self, features: list[dict]) -> dict[str, torch.Tensor]:
        return collate_pairs(features, self.tokenizer.pad_token_id)

    def count_items(self, batch: dict[str, torch.Tensor]) -> float:
        if "seq_last" in batch:  # packed: one sequence per slot and pair
            return float(len(batch["seq_last"]) // 2)
        return float(batch["input_ids"].shape[0] // 2)  # rows are [chosen; rejected]

    def token_counts(self, feature: dict) -> tuple[int, int]:
        """A pair trains on nothing once either answer is cut away entirely."""
        chosen, rejected = len(feature["chosen_ids"]), len(feature["rejected_ids"])
        return len(feature["prompt_ids"]) + max(chosen, rejected), (chosen + rejected if chosen and rejected
                                                                    else 0)
