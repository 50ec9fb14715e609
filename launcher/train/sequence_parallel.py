"""Ulysses sequence parallelism (``sharding.sp_size``): one sequence's tokens spread over ranks.

The world is ``dp x sp`` ranks; ranks ``g*sp .. g*sp+sp-1`` form sequence-parallel group ``g``
and see the same samples (data-parallel rank ``g``). Each holds ``seq/sp`` consecutive tokens of
every row. Everything per token (embeddings, norms, MLP, the loss) runs on the local shard
unchanged; only attention needs the whole sequence. Inside attention two all-to-alls (DeepSpeed-
Ulysses) turn q/k/v from sequence-sharded ``[b, heads, s/sp, d]`` into head-sharded
``[b, heads/sp, s, d]``, sdpa runs over the full sequence for this rank's heads, and the output
goes back to sequence-sharded. RoPE is applied before attention at the GLOBAL position ids the
loop gives each shard, so rotations are those of the unsharded sequence.

Masking: rows are right-padded (pad tokens after real ones, labels -100), so a causal mask over
the full sequence is exact for every real token; packed rows (``data.packing``) add the
block-diagonal mask of their examples, built from the global position ids. The loss labels are
shifted for next-token prediction BEFORE slicing, so the token whose target sits in the next
shard still counts, once.

Only torch (and transformers' attention registry) here: no DeepSpeed, no Click.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
import torch.distributed as dist

#: the name the model's ``attn_implementation`` is set to when ``sharding.sp_size > 1``
ATTENTION_NAME = "ftl_ulysses"
IGNORE_INDEX = -100


# ------------------------------------------------------------------ communication


class _AllToAll(torch.autograd.Function):
    """Equal-split all-to-all along dim 0 (chunk ``i`` goes to group rank ``i``), differentiable.

    Own Function rather than ``torch.distributed.nn.functional.all_to_all_single``: that one is
    deprecated in torch 2.13 (it warns on every call) and its replacement lives in a private
    module. With equal splits the all-to-all is its own adjoint, so backward is the same exchange.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        x = x.contiguous()
        out = torch.empty_like(x)
        dist.all_to_all_single(out, x, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous()
        out = torch.empty_like(grad)
        dist.all_to_all_single(out, grad, group=ctx.group)
        return out, None


def seq_to_heads(x: torch.Tensor, group: Any, sp: int) -> torch.Tensor:
    """``[b, h, s/sp, d]`` (this rank's tokens, all heads) -> ``[b, h/sp, s, d]`` (all tokens,
    this rank's heads). Group rank ``j`` holds token chunk ``j``, so chunks arrive in order."""
    b, h, s_loc, d = x.shape
    chunks = x.reshape(b, sp, h // sp, s_loc, d).permute(1, 0, 2, 3, 4)  # [sp, b, h/sp, s/sp, d]
    got = _AllToAll.apply(chunks, group)                                  # [src rank = seq chunk, ...]
    return got.permute(1, 2, 0, 3, 4).reshape(b, h // sp, sp * s_loc, d)


def heads_to_seq(x: torch.Tensor, group: Any, sp: int) -> torch.Tensor:
    """The inverse of :func:`seq_to_heads`: ``[b, h/sp, s, d]`` -> ``[b, h, s/sp, d]``."""
    b, h_loc, s, d = x.shape
    chunks = x.reshape(b, h_loc, sp, s // sp, d).permute(2, 0, 1, 3, 4)  # [sp = seq chunk, b, ...]
    got = _AllToAll.apply(chunks, group)                                  # [src rank = head group, ...]
    return got.permute(1, 0, 2, 3, 4).reshape(b, sp * h_loc, s // sp, d)


# ------------------------------------------------------------------ groups and the active step


@dataclass(frozen=True)
class SPGroup:
    """This rank's place in the ``dp x sp`` grid."""

    size: int          # sp: ranks sharing one sequence
    rank: int          # this rank's index in its group (which token chunk it holds)
    group: Any         # the torch process group of the sequence-parallel group
    dp_rank: int       # which samples the group takes (the sampler's rank)
    dp_world: int      # number of groups (the sampler's world)

    @property
    def counts_items(self) -> bool:
        """One rank per group adds the group's token counts to global sums (counted once)."""
        return self.rank == 0


def build_groups(rank: int, world: int, sp: int) -> SPGroup:
    """Create every sequence-parallel group (a collective: every rank creates all of them, in
    the same order, as ``new_group`` requires) and return this rank's."""
    if world % sp:
        raise ValueError(f"world size {world} is not a multiple of sp_size {sp}")
    mine = None
    for g in range(world // sp):
        ranks = list(range(g * sp, g * sp + sp))
        pg = dist.new_group(ranks)
        if rank in ranks:
            mine = pg
    return SPGroup(sp, rank % sp, mine, rank // sp, world // sp)


@dataclass
class _Step:
    group: SPGroup
    segments: torch.Tensor | None  # [b, s] example ids of packed rows (full sequence), or None
    _mask: torch.Tensor | None = None

    def mask(self, device: torch.device) -> torch.Tensor | None:
        """Packed rows: causal AND same example, ``[b, 1, s, s]`` bool, built once per micro-batch
        (every layer uses the same one). None otherwise: sdpa's own causal masking."""
        if self.segments is None:
            return None
        if self._mask is None:
            seg = self.segments.to(device)
            causal = torch.ones(seg.shape[1], seg.shape[1], dtype=torch.bool, device=device).tril()
            self._mask = (seg[:, None, :, None] == seg[:, None, None, :]) & causal
        return self._mask


_ACTIVE: _Step | None = None


@contextlib.contextmanager
def active(group: SPGroup | None, segments: torch.Tensor | None = None) -> Iterator[None]:
    """Attention runs sequence-parallel inside this block (a training micro-batch's forward AND
    backward: activation checkpointing re-runs forward during backward). Outside it (evaluation,
    generation: every rank with its own rows) the registered attention is plain sdpa."""
    global _ACTIVE
    if group is None:
        yield
        return
    previous, _ACTIVE = _ACTIVE, _Step(group, segments)
    try:
        yield
    finally:
        _ACTIVE = previous


# ------------------------------------------------------------------ attention


def ulysses_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """An ``AttentionInterface`` function: transformers' sdpa over the full sequence, between
    two all-to-alls. q ``[b, h, s/sp, d]``, k/v ``[b, kv, s/sp, d]`` -> ``[b, s/sp, h, d]``.

    The incoming ``attention_mask`` was built from the local shard and is ignored: the full-
    sequence mask is causal (right padding), plus the packed rows' example blocks."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    step = _ACTIVE
    if step is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if kwargs.get("sliding_window") is not None:
        raise ValueError("sharding.sp_size > 1 does not support sliding-window attention (this model's "
                         "layers use it): the full-sequence causal mask would attend too far back; "
                         "set sharding.sp_size: 1")
    kwargs.pop("is_causal", None)  # decided below from the mask
    sp, group = step.group.size, step.group.group
    groups = getattr(module, "num_key_value_groups", 1)
    if key.shape[1] % sp:
        # Fewer KV heads than ranks (or not a multiple): give every query head its own copy, so
        # each rank receives the KV heads of the query heads it holds.
        key, value, groups = repeat_kv(key, groups), repeat_kv(value, groups), 1
    q, k, v = (seq_to_heads(t, group, sp) for t in (query, key, value))
    mask = step.mask(q.device)
    shim = SimpleNamespace(num_key_value_groups=groups, is_causal=True,
                           layer_idx=getattr(module, "layer_idx", None))
    out, _ = sdpa_attention_forward(shim, q, k, v, mask, is_causal=mask is None, **kwargs)
    # sdpa_attention_forward returns [b, s, h/sp, d]; back to this rank's tokens, all heads.
    out = heads_to_seq(out.transpose(1, 2), group, sp)
    return out.transpose(1, 2).contiguous(), None


def register_attention() -> str:
    """Register :func:`ulysses_attention` (and sdpa's mask builder for the same name, so
    evaluation and generation get the usual padding masks) with transformers; idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION_NAME, ulysses_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
    return ATTENTION_NAME


# ------------------------------------------------------------------ batches


def shard_batch(batch: dict[str, torch.Tensor], group: SPGroup, pad_id: int = 0
                ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """This rank's slice of a collated causal-LM batch, plus the packed rows' example ids.

    Labels are shifted for next-token prediction first (``shift_labels[t] = labels[t + 1]``,
    read by ``strategies.base.causal_lm_loss``), then the sequence is right-padded to a multiple
    of ``sp`` (pad tokens, label -100) and cut into ``sp`` equal chunks. Position ids are the
    global ones (``0..s-1``, or the packed rows' per-example positions), so RoPE sees the true
    positions. No attention mask is passed: attention builds the full-sequence one."""
    sp, r = group.size, group.rank
    ids, labels = batch["input_ids"], batch["labels"]
    b, length = ids.shape
    padded = math.ceil(length / sp) * sp
    extra = padded - length
    shift = torch.full((b, padded), IGNORE_INDEX, dtype=labels.dtype)
    shift[:, : length - 1] = labels[:, 1:]
    ids = torch.nn.functional.pad(ids, (0, extra), value=pad_id)
    tail = torch.arange(extra, dtype=torch.long).expand(b, extra)
    segments = None
    if "position_ids" in batch:  # packed: positions restart at every example
        positions = torch.cat([batch["position_ids"], tail], dim=1)
        segments = (positions == 0).long().cumsum(dim=1)  # the padding tail is one more example
    else:
        positions = torch.arange(padded, dtype=torch.long).expand(b, padded)
    chunk = slice(r * padded // sp, (r + 1) * padded // sp)
    local = {"input_ids": ids[:, chunk].contiguous(), "position_ids": positions[:, chunk].contiguous(),
             "shift_labels": shift[:, chunk].contiguous()}
    return local, segments
