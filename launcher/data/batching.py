"""Turn tokenized examples into tensors: padding, and packing several examples per row.

Packed rows restart ``position_ids`` at every example and pass no attention mask, which makes
transformers build a block-diagonal causal mask (``masking_utils.find_packed_sequence_indices``):
examples in one row never attend to each other, with sdpa on CPU as with flash attention.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

IGNORE_INDEX = -100


def collate(features: Sequence[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row. Packed rows (with ``position_ids``) get no attention mask."""
    longest = max(len(f["input_ids"]) for f in features)
    packed = "position_ids" in features[0]
    ids = torch.full((len(features), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(features), longest), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(features), longest), dtype=torch.long)
    pos = torch.zeros((len(features), longest), dtype=torch.long)
    for row, f in enumerate(features):
        n = len(f["input_ids"])
        ids[row, :n] = torch.tensor(f["input_ids"])
        labels[row, :n] = torch.tensor(f["labels"])
        mask[row, :n] = 1
        if packed:
            pos[row, :n] = torch.tensor(f["position_ids"])
            # Padding is one more "document" so it never joins the last example's block.
            pos[row, n:] = torch.arange(longest - n)
    if packed:
        return {"input_ids": ids, "labels": labels, "position_ids": pos}
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def pack_examples(features: Sequence[dict], max_length: int) -> list[dict]:
    """Concatenate consecutive examples into rows of at most ``max_length`` tokens.

    Next-fit in dataset order: linear time on any dataset size, and the sampler's shuffle
    still decides which rows a step sees. Position ids restart at every example, and no token
    is trained to predict across an example boundary.
    """
    rows: list[dict] = []
    current: dict = {"input_ids": [], "labels": [], "position_ids": []}
    for f in features:
        n = min(len(f["input_ids"]), max_length)
        if current["input_ids"] and len(current["input_ids"]) + n > max_length:
            rows.append(current)
            current = {"input_ids": [], "labels": [], "position_ids": []}
        current["input_ids"] += list(f["input_ids"][:n])
        # The token before an example belongs to the previous one: it must not be trained to
        # predict this example's first token (that label is never used inside one example).
        current["labels"] += [IGNORE_INDEX] + list(f["labels"][1:n])
        current["position_ids"] += list(range(n))
    if current["input_ids"]:
        rows.append(current)
    return rows


def group_texts(token_lists: Sequence[Sequence[int]], block: int) -> list[list[int]]:
    """Concatenate documents and cut into ``block``-token chunks (continued pretraining)."""
    flat = [t for tokens in token_lists for t in tokens]
    usable = (len(flat) // block) * block
    return [flat[i:i + block] for i in range(0, usable, block)]
