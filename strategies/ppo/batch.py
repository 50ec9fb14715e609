"""Token layout of a rollout batch and the forward passes every role runs on it.

Layout: ``input_ids = [prompt | response]`` with prompts LEFT-padded to one width ``P`` and
responses RIGHT-padded to ``R``, so every row's response occupies columns ``P .. P+R-1`` and the
per-token tensors of ``strategies.rl.math`` are plain ``[:, P-1 : P+R-1]`` slices of the logits.
Position ids are counted over real tokens only (``cumsum(attention_mask) - 1``), as HF ``generate``
does for left padding: the trainer, reference and critic then see the exact positions the rollout
worker saw. ``response_mask`` is 1 up to and including the first EOS and 0 after it, whatever
the sampler wrote there (HF pads finished rows, a row may also run on past an EOS when another
EOS id was configured).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from launcher.data.batching import pad_rows
from strategies.rl.math import entropy_from_logits, logprobs_from_logits


def truncate_at_eos(ids: Sequence[int], eos_ids: Iterable[int]) -> tuple[list[int], bool]:
    """The response up to and including its first EOS, and whether it had one (finished)."""
    stops = set(eos_ids)
    for i, tok in enumerate(ids):
        if tok in stops:
            return list(ids[: i + 1]), True
    return list(ids), False


def response_mask(response_ids: Tensor, eos_ids: Iterable[int], lengths: Tensor | None = None) -> Tensor:
    """``[B, R]`` mask: 1 through the first EOS of each row (or through ``lengths`` when given and
    no EOS comes first), 0 after it."""
    stops = torch.tensor(sorted(set(eos_ids)), dtype=response_ids.dtype)
    is_eos = torch.isin(response_ids, stops)
    # number of EOS tokens strictly before each position: > 0 means "after the first EOS"
    before = torch.cumsum(is_eos.long(), dim=-1) - is_eos.long()
    mask = before == 0
    if lengths is not None:
        cols = torch.arange(response_ids.shape[1]).expand_as(response_ids)
        mask &= cols < lengths.unsqueeze(-1)
    return mask.long()


@dataclass
class RolloutBatch:
    """A batch of sampled sequences in the layout above (all tensors on CPU, ``long``)."""

    prompt_ids: Tensor      # [B, P] left-padded
    prompt_mask: Tensor     # [B, P]
    response_ids: Tensor    # [B, R] right-padded
    response_mask: Tensor   # [B, R] 1 through the first EOS

    @property
    def input_ids(self) -> Tensor:
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> Tensor:
        return torch.cat([self.prompt_mask, self.response_mask], dim=1)

    @property
    def position_ids(self) -> Tensor:
        return (self.attention_mask.cumsum(-1) - 1).clamp(min=0)

    @property
    def prompt_width(self) -> int:
        return self.prompt_ids.shape[1]

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]

    def rows(self, index: Tensor | Sequence[int]) -> RolloutBatch:
        idx = torch.as_tensor(index, dtype=torch.long)
        return type(self)(*(getattr(self, f.name)[idx] for f in fields(self)))

    def tokens(self) -> int:
        return int(self.response_mask.sum())

    def to(self, device: torch.device) -> RolloutBatch:
        return type(self)(*(getattr(self, f.name).to(device) for f in fields(self)))

    def packed(self) -> PackedRolloutBatch:
        """The same batch, run padding-free by the forward passes (``data.packing``)."""
        return PackedRolloutBatch(*(getattr(self, f.name) for f in fields(self)))

    @classmethod
    def single(cls, prompt: Sequence[int], response: Sequence[int]) -> RolloutBatch:
        """One unpadded row: the weight-sync probe."""
        return cls(torch.tensor([list(prompt)]), torch.ones(1, len(prompt), dtype=torch.long),
                   torch.tensor([list(response)]), torch.ones(1, len(response), dtype=torch.long))


class PackedRolloutBatch(RolloutBatch):
    """A ``RolloutBatch`` whose forward passes drop the padding: the rows' real prompt and
    response tokens are laid end to end in rows no wider than the padded batch (first fit
    decreasing), with position ids that restart at each sequence and no attention mask, so
    transformers keeps them apart with a block-diagonal causal mask (as ``data.packing`` does for
    supervised methods; veRL's remove-padding and TRL's padding-free modes do the same). Rows stay
    at most the padded width so attention (dense under sdpa) never costs more than padded.
    Per-token outputs are scattered back into the ``[B, R]`` response layout, so every loss
    reads them exactly as unpacked; positions after a response's end (mask 0) hold zero logits,
    which no loss reads."""

    def flat_inputs(self) -> tuple[dict[str, Tensor], Tensor]:
        """Model inputs of the packed rows, and for every response slot ``[B, R]`` the flat index
        (``row * width + column``) of the token that predicts it (valid where the mask is 1)."""
        real = self.attention_mask.bool()
        lengths = real.sum(-1).tolist()
        width = self.input_ids.shape[1]  # no packed row is wider than the padded one
        bins = _first_fit_decreasing(lengths, width)
        ids = torch.zeros((len(bins), width), dtype=torch.long, device=self.input_ids.device)
        pos = torch.zeros_like(ids)
        start = torch.zeros(len(lengths), dtype=torch.long, device=ids.device)
        for r, members in enumerate(bins):
            col = 0
            for b in members:
                n = lengths[b]
                ids[r, col : col + n] = self.input_ids[b][real[b]]
                pos[r, col : col + n] = torch.arange(n)
                start[b] = r * width + col
                col += n
            pos[r, col:] = torch.arange(width - col)  # padding: one more sequence of its own
        # a real token's place in its sequence is its position id
        flat = start.unsqueeze(-1) + self.position_ids
        P, R = self.prompt_width, self.response_ids.shape[1]
        return {"input_ids": ids, "position_ids": pos}, flat[:, P - 1 : P + R - 1]


def _first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Rows of sequence indices, longest first, each into the first row with room. Written here
    rather than TRL's packer (``launcher.data.batching``): it runs on every micro-batch of every
    forward pass, for a few dozen sequences, where building a ``datasets`` table costs more than
    the packing, and learners need no ``datasets``/``trl`` install for it."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        fit = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
        if fit is None:
            rows.append([i])
            room.append(capacity - lengths[i])
        else:
            rows[fit].append(i)
            room[fit] -= lengths[i]
    return rows


def _packed_response_logits(model: nn.Module, batch: PackedRolloutBatch) -> Tensor:
    inputs, source = batch.flat_inputs()
    logits = model(**inputs, use_cache=False).logits
    logits = logits.reshape(-1, logits.shape[-1])
    keep = batch.response_mask.bool()
    out = logits.new_zeros(keep.shape + logits.shape[-1:])
    out[keep] = logits[source[keep]]
    return out


def collate_rollouts(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
                     pad_id: int, eos_ids: Iterable[int]) -> RolloutBatch:
    """Pad variable-length prompts (left) and responses (right) into one ``RolloutBatch``."""
    if len(prompts) != len(responses) or not prompts:
        raise ValueError(f"need as many prompts as responses (got {len(prompts)} and {len(responses)})")
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(f"prompt {i} has no tokens: the first response token needs a context")
    prompt_ids, prompt_mask = pad_rows(prompts, pad_id, left=True)
    response_ids, _ = pad_rows(responses, pad_id, width=max(1, max(len(r) for r in responses)))
    lengths = torch.tensor([len(r) for r in responses], dtype=torch.long)
    return RolloutBatch(prompt_ids, prompt_mask, response_ids, response_mask(response_ids, eos_ids, lengths))


def _response_logits(model: nn.Module, batch: RolloutBatch) -> Tensor:
    """Logits that predict each response token: positions ``P-1 .. P+R-2``."""
    if isinstance(batch, PackedRolloutBatch):
        return _packed_response_logits(model, batch)
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                position_ids=batch.position_ids, use_cache=False)
    P, R = batch.prompt_width, batch.response_ids.shape[1]
    return out.logits[:, P - 1 : P + R - 1, :]


def policy_forward(model: nn.Module, batch: RolloutBatch, temperature: float,
                   with_entropy: bool = False, ce: dict | None = None) -> tuple[Tensor, Tensor | None]:
    """Log-probs ``[B, R]`` of the sampled response tokens under ``softmax(logits / temperature)``
    (the distribution they were sampled from), and optionally its per-token entropy. ``ce``:
    ``model.cross_entropy`` options; chunked computes both without the full logits."""
    if ce and ce.get("mode", "plain") != "plain":
        return _chunked_policy_forward(model, batch, temperature, with_entropy, ce)
    logits = _response_logits(model, batch)
    if temperature != 1.0:
        logits = logits / temperature
    logprobs = logprobs_from_logits(logits, batch.response_ids)
    entropy = entropy_from_logits(logits) if with_entropy else None
    return logprobs, entropy


def _chunked_policy_forward(model: nn.Module, batch: RolloutBatch, temperature: float,
                            with_entropy: bool, ce: dict) -> tuple[Tensor, Tensor | None]:
    from launcher.models.chunked_ce import token_stats

    if isinstance(batch, PackedRolloutBatch):  # targets placed at the packed positions predicting them
        inputs, source = batch.flat_inputs()
        keep = batch.response_mask.bool()
        flat = torch.full((inputs["input_ids"].numel(),), -100, dtype=torch.long, device=source.device)
        flat[source[keep]] = batch.response_ids[keep]
        logps, entropy = token_stats(model, inputs, flat.view_as(inputs["input_ids"]), mode="chunked",
                                     chunk_tokens=ce["chunk_tokens"], temperature=temperature,
                                     with_entropy=with_entropy, aligned=True)

        def unpack(stat: Tensor) -> Tensor:
            out = stat.new_zeros(keep.shape)
            out[keep] = stat.reshape(-1)[source[keep]]
            return out

        return unpack(logps), (unpack(entropy) if entropy is not None else None)
    P, R = batch.prompt_width, batch.response_ids.shape[1]
    targets = torch.full_like(batch.input_ids, -100)
    targets[:, P:P + R] = batch.response_ids  # position P-1+t predicts response token t
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
              "position_ids": batch.position_ids}
    logps, entropy = token_stats(model, inputs, targets, mode="chunked", chunk_tokens=ce["chunk_tokens"],
                                 temperature=temperature, with_entropy=with_entropy)
    return logps[:, P - 1:P + R - 1], (entropy[:, P - 1:P + R - 1] if entropy is not None else None)


def value_forward(critic: nn.Module, batch: RolloutBatch) -> Tensor:
    """Per-token values ``[B, R]``: V of the state before each response token (the critic's output
    at the position that predicts it), matching the log-prob positions."""
    return _response_logits(critic, batch).squeeze(-1).float()
