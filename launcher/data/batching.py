"""Turn tokenized examples into tensors: padding, and packing several examples per row.

Packed rows restart ``position_ids`` at every example and pass no attention mask, which makes
transformers build a block-diagonal causal mask (``masking_utils.find_packed_sequence_indices``):
examples in one row never attend to each other, with sdpa on CPU as with flash attention.
Methods whose items hold several sequences (preference pairs, contrastive triplets) or one
score per sequence pack whole *units* (``pack_unit_rows``) and read per-sequence results per
segment (``collate_units``: ``seq_index``, ``seq_last``, ``segment_ids``; ``segment_sums``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

IGNORE_INDEX = -100


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, *, left: bool = False,
             width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of token rows padded to the longest (or ``width``).

    Right padding for training and scoring; ``left=True`` for generation, where every row's
    last prompt token must sit in the last column so new tokens follow it directly."""
    longest = max(len(r) for r in rows) if width is None else width
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        where = slice(longest - len(row), longest) if left else slice(0, len(row))
        ids[i, where] = torch.tensor(list(row), dtype=torch.long)
        mask[i, where] = 1
    return ids, mask


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


# -- packing for methods whose items are several sequences (pairs, triplets) or one score each.
#
# A *unit* is what the method counts as one item (a DPO pair, a KTO example with its KL partner, a
# contrastive triplet, a classified text) and holds one or more named sequences (*slots*: chosen,
# rejected, ...). Whole units are packed into rows, so a pair never straddles two micro-batches;
# each sequence is one segment of its row with restarting position ids. The collated batch says,
# for every token, which output sequence it belongs to (``seq_index``), so per-sequence sums,
# last-token scores and pooled embeddings come out in the same order as the unpacked batch:
# slot after slot, each in unit order ([chosen of every pair; rejected of every pair]).

def pack_units(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices of the units in each row, best fit decreasing into rows of ``capacity`` tokens.

    The bin packing is TRL's (``pack_dataset(strategy="bfd")``, as ``pack_examples``): each unit
    is handed to it as a list of its own index repeated ``length`` times, and read back from the
    first element of each packed segment. A unit longer than ``capacity`` gets a row of its own.
    """
    import datasets
    from trl.data_utils import pack_dataset

    fitting = [i for i, n in enumerate(lengths) if 0 < n <= capacity]
    rows = [[i] for i, n in enumerate(lengths) if n > capacity]
    if fitting:
        table = datasets.Dataset.from_dict({"unit": [[i] * lengths[i] for i in fitting]})
        packed = pack_dataset(table, capacity, strategy="bfd")
        for flat, seg_lengths in zip(packed["unit"], packed["seq_lengths"]):
            starts = [sum(seg_lengths[:k]) for k in range(len(seg_lengths))]
            rows.append([flat[s] for s in starts])
    return rows


def packed_row(units: Sequence[dict[str, tuple[list[int], list[int]]]], metadata: Sequence[dict]) -> dict:
    """One packed row from units given as ``{slot: (input_ids, labels)}``: the token lists,
    restarting ``position_ids``, ``segments`` (unit in the row, slot) and the units' ``metadata``
    (their non-token fields, where a method keeps labels, margins and reference scores)."""
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    segments: list[list[Any]] = []
    for k, unit in enumerate(units):
        for slot, (seq_ids, seq_labels) in unit.items():
            if not seq_ids:
                continue
            ids += seq_ids
            # The first token's label would be predicted from the previous segment: never trained.
            labels += [IGNORE_INDEX] + list(seq_labels[1:])
            positions += range(len(seq_ids))
            segments.append([k, slot, len(seq_ids)])
    return {"input_ids": ids, "labels": labels, "position_ids": positions, "segments": segments,
            "units": [dict(m) for m in metadata]}


def pack_unit_rows(units: Sequence[dict[str, tuple[list[int], list[int]]]], metadata: Sequence[dict],
                   capacity: int) -> list[dict]:
    """``packed_row`` over the bins of ``pack_units`` (lengths: all of a unit's sequences)."""
    lengths = [sum(len(s[0]) for s in unit.values()) for unit in units]
    return [packed_row([units[i] for i in row], [metadata[i] for i in row])
            for row in pack_units(lengths, capacity)]


def units_of(feature: dict) -> list[dict]:
    """The items a feature stands for: a packed row's units, else the feature itself."""
    return feature.get("units", [feature])


def is_packed(features: Sequence[dict]) -> bool:
    return bool(features) and "segments" in features[0]


def collate_units(features: Sequence[dict], pad_id: int, slots: Sequence[str]) -> dict[str, torch.Tensor]:
    """Collate packed unit rows: ``collate``'s ``input_ids``/``labels``/``position_ids`` plus

    - ``seq_index`` [rows, T]: the output sequence of every token (``slot * units + unit``, slots
      in the order of ``slots``), -1 on padding and on slots not asked for;
    - ``segment_ids`` [rows, T]: a number per segment of its row (padding is one more segment),
      for models that need an explicit block-diagonal mask (encoders);
    - ``seq_last`` [slots * units]: flat index (``row * T + column``) of each sequence's last token.
    """
    batch = collate(features, pad_id)
    rows, width = batch["input_ids"].shape
    n_units = sum(len(f["units"]) for f in features)
    seq_index = torch.full((rows, width), -1, dtype=torch.long)
    segment_ids = torch.zeros((rows, width), dtype=torch.long)
    seq_last = torch.full((len(slots) * n_units,), -1, dtype=torch.long)
    base = 0
    for r, f in enumerate(features):
        col = 0
        for s, (k, slot, n) in enumerate(f["segments"]):
            segment_ids[r, col:col + n] = s
            if slot in slots:
                out = slots.index(slot) * n_units + base + k
                seq_index[r, col:col + n] = out
                seq_last[out] = r * width + col + n - 1
            col += n
        segment_ids[r, col:] = len(f["segments"])
        base += len(f["units"])
    if bool((seq_last < 0).any()):
        raise ValueError("a unit of the batch lacks one of the slots " + ", ".join(slots))
    batch.update(seq_index=seq_index, segment_ids=segment_ids, seq_last=seq_last)
    return batch


def segment_sums(values: torch.Tensor, seq_index: torch.Tensor, count: int) -> torch.Tensor:
    """Per output sequence: the sum of ``values`` over its tokens (``seq_index`` -1: skipped)."""
    keep = seq_index >= 0
    out = values.new_zeros((count,) + tuple(values.shape[seq_index.dim():]))
    return out.index_add(0, seq_index[keep], values[keep])


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What a decoder's forward takes from a batch: a padding mask, or (packed) restarting
    position ids and no mask, from which transformers builds the block-diagonal causal mask."""
    return {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}


def block_diagonal_mask(segment_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[rows, 1, T, T] mask: a token attends to every token of its segment and to no other
    (bidirectional: for encoders, where position ids alone do not isolate examples). Boolean
    (True: attend) for ``dtype=torch.bool``, else additive (0 or the dtype's minimum)."""
    same = segment_ids.unsqueeze(-1) == segment_ids.unsqueeze(-2)
    if dtype == torch.bool:
        return same.unsqueeze(1)
    mask = torch.zeros(same.shape, dtype=dtype, device=segment_ids.device)
    return mask.masked_fill(~same, torch.finfo(dtype).min).unsqueeze(1)
