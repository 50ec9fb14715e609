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
    """Pack examples into rows of at most ``max_length`` tokens, best fit decreasing.

    The bin packing is TRL's ``pack_dataset(strategy="bfd")`` (a segment tree over free space,
    O(n log L)): rows come out ~99% full where next-fit in dataset order left them ~79% full
    (measured in BENCHMARKS.md), i.e. about a quarter more real tokens per step. Examples longer
    than ``max_length`` are truncated, as without packing. The sampler's shuffle still decides
    which rows a step sees. Position ids restart at every example, and no token is trained to
    predict across an example boundary.
    """
    import datasets
    from trl.data_utils import pack_dataset

    kept = [f for f in features if len(f["input_ids"])]
    if not kept:
        return []
    table = datasets.Dataset.from_dict({"input_ids": [list(f["input_ids"]) for f in kept],
                                        "labels": [list(f["labels"]) for f in kept]})
    packed = pack_dataset(table, max_length, strategy="bfd")
    rows: list[dict] = []
    for ids, labels, lengths in zip(packed["input_ids"], packed["labels"], packed["seq_lengths"]):
        positions: list[int] = []
        labels = list(labels)
        for n in lengths:
            # The token before an example belongs to the previous one: it must not be trained to
            # predict this example's first token (that label is never used inside one example).
            labels[len(positions)] = IGNORE_INDEX
            positions += range(n)
        rows.append({"input_ids": list(ids), "labels": labels, "position_ids": positions})
    return rows


def group_texts(token_lists: Sequence[Sequence[int]], block: int) -> list[list[int]]:
    """Concatenate documents and cut into ``block``-token chunks (continued pretraining)."""
    flat = [t for tokens in token_lists for t in tokens]
    usable = (len(flat) // block) * block
    return [flat[i:i + block] for i in range(0, usable, block)]
