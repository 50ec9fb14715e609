"""Per-token log-probabilities of the targets without ever holding ``[tokens, vocab]`` logits.

Why: the LM head of a 128k-vocabulary model turns 8k tokens into 4 GB of fp32 logits, and
cross-entropy keeps three buffers that size alive at the start of backward (``ftl plan``'s
``logits`` term). Every method here only needs ``log p(target)`` per token (and PPO/GRPO the
entropy), so the head can be evaluated a chunk of tokens at a time and reduced at once.

How (``model.cross_entropy``):
    * ``plain``: the model's logits, then ``log_softmax`` and a gather (what ftl always did).
    * ``chunked``: the LM head module's ``forward`` is replaced, on the instance, by one that,
      while a request is pending (``_request`` below), computes the targets' log-probabilities
      from its input hidden states ``model.ce_chunk_tokens`` tokens at a time, each chunk under
      non-reentrant ``torch.utils.checkpoint``: the chunk's logits are freed after forward and
      recomputed in backward, so one chunk's ``[chunk, vocab]`` buffers exist at a time.
    * ``liger``: the same hook point, but the summed cross-entropy comes from Liger-Kernel's fused
      linear cross-entropy (Triton, CUDA only), which computes the chunk gradients in forward.
      Liger's backward scales by a scalar only, so per-token log-probs (DPO, KTO, PPO...) use
      ``chunked`` under ``liger``; only the summed causal-LM loss goes through Liger.

Why patch the head's ``forward`` rather than call ``lm_head.weight`` from outside: the call
still goes through the head module inside the model's own forward, so every wrapper sees what it
expects: ZeRO-3's per-module hooks gather the head's weight around it (and again for backward,
when the recomputation reads it), FSDP2's root unit is unsharded for the whole root forward and
backward, DDP's reducer sees the parameters used, a LoRA-wrapped head (``peft``) still adds its
adapter (the original forward is called per chunk, adapter and all), tied embeddings share the
same weight object, and no parameter is renamed (checkpoints and exports are unchanged). The
head is found when first used (``model.get_output_embeddings()`` through DDP/DeepSpeed/peft
wrappers), so adapters added after the model was built are included. Architectures that post-
process logits outside the head (final soft-capping, logit scaling) are refused.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100
MODES = ("plain", "chunked", "liger")
#: config attributes of models whose forward changes logits after the LM head
_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


@dataclass
class _Request:
    """What the next call of the patched head computes instead of logits."""

    targets: torch.Tensor  # [rows, len] long; < 0: no target at this position
    chunk: int
    temperature: float = 1.0
    with_entropy: bool = False
    liger_sum: bool = False


def ce_options(cfg: Any) -> dict[str, Any]:
    """``model.cross_entropy`` and its chunk size as the keyword arguments of the entry points
    below (``mode``, ``chunk_tokens``; defaults for configs without them)."""
    model = getattr(cfg, "model", None)
    return {"mode": getattr(model, "cross_entropy", "plain"),
            "chunk_tokens": int(getattr(model, "ce_chunk_tokens", 1024))}


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP / DeepSpeed engine wrappers (peft and FSDP2 keep the HF API)."""
    while isinstance(getattr(model, "module", None), nn.Module):
        model = model.module
    return model


def check_supported(config: Any) -> None:
    """Refuse models whose logits are changed after the LM head: chunked log-probs would skip it."""
    for name in _POSTPROCESSING:
        value = getattr(config, name, None)
        if value not in (None, 1, 1.0):
            raise ValueError(
                f"model.cross_entropy: this architecture post-processes logits after the LM head "
                f"({name}={value}), which chunked/liger cross-entropy would skip; "
                "hint: set model.cross_entropy: plain")


def _head(model: nn.Module) -> nn.Module:
    """The LM head module, patched on first use."""
    inner = unwrap(model)
    head = inner.get_output_embeddings()
    if head is None:
        raise ValueError("model.cross_entropy: the model has no output embeddings (LM head); "
                         "hint: set model.cross_entropy: plain")
    if "_ftl_orig_forward" not in head.__dict__:
        check_supported(getattr(inner, "config", None))
        head._ftl_orig_forward = head.forward  # bound method, or an earlier instance patch
        head._ftl_request = None
        head.forward = types.MethodType(_patched_forward, head)
    return head


def _patched_forward(head: nn.Module, hidden: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """The head's forward while patched (bound to the head, so a deep copy binds to the copy)."""
    request = head.__dict__.get("_ftl_request")
    if request is None:
        return head._ftl_orig_forward(hidden, *args, **kwargs)
    head._ftl_request = None  # one request, one call
    if request.liger_sum:
        return _liger_sum(head, hidden, request)
    return _chunked(head._ftl_orig_forward, hidden, request)


@contextlib.contextmanager
def _request(head: nn.Module, request: _Request) -> Iterator[None]:
    head._ftl_request = request
    try:
        yield
    finally:
        head._ftl_request = None


def _kept(hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flattened hidden states and targets of the positions that have a target."""
    if targets.shape != hidden.shape[:-1]:
        raise RuntimeError(f"targets {tuple(targets.shape)} do not match the LM head input "
                           f"{tuple(hidden.shape[:-1])} (a model that slices positions before its head?)")
    flat_t = targets.reshape(-1)
    keep = (flat_t >= 0).nonzero().squeeze(1)
    return hidden.reshape(-1, hidden.shape[-1]).index_select(0, keep), flat_t.index_select(0, keep), keep


class _TargetStats(torch.autograd.Function):
    """logits [n, vocab] -> [n, 1 or 2]: log p(target) (and the entropy) of softmax(logits / T).

    Why a Function instead of ``logsumexp``/``gather`` autograd: their backward allocates a
    softmax, a scattered one-hot gradient and their sum (4-5 fp32 ``[chunk, vocab]`` buffers);
    this one writes the whole gradient into one buffer in place (``p * (-g) + onehot * g``), so a
    chunk costs its logits and one buffer (the planner's ``_CHUNK_COPIES``; entropy adds one)."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, targets: torch.Tensor, temperature: float,
                with_entropy: bool) -> torch.Tensor:
        z = logits.float()
        if temperature != 1.0:
            z = z / temperature
        lse = torch.logsumexp(z, dim=-1)
        logp = torch.gather(z, -1, targets.unsqueeze(-1)).squeeze(-1) - lse
        ctx.save_for_backward(logits, targets, lse)
        ctx.temperature, ctx.with_entropy = temperature, with_entropy
        if not with_entropy:
            return logp.unsqueeze(-1)
        entropy = lse - (torch.softmax(z, dim=-1) * z).sum(-1)
        return torch.stack([logp, entropy], dim=-1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        logits, targets, lse = ctx.saved_tensors
        t = ctx.temperature
        z = logits.float()
        if t != 1.0:
            z = z / t
        p = (z - lse.unsqueeze(-1)).exp_()  # softmax, the one fp32 buffer the gradient is built in
        g_logp = grad[:, 0]
        if ctx.with_entropy:  # dH/dz = -p * (z - E_p[z])
            g_ent = grad[:, 1]
            if z.data_ptr() == logits.data_ptr():
                z = z.clone()
            mean_z = (p * z).sum(-1, keepdim=True)
            z.sub_(mean_z).mul_(p).mul_(g_ent.unsqueeze(-1))
        p.mul_(-g_logp.unsqueeze(-1))
        p.scatter_add_(-1, targets.unsqueeze(-1), g_logp.unsqueeze(-1))
        if ctx.with_entropy:
            p.sub_(z)
        if t != 1.0:
            p.div_(t)
        return p.to(logits.dtype), None, None, None


def _chunk_stats(head_forward: Callable[..., torch.Tensor], hidden: torch.Tensor, targets: torch.Tensor,
                 temperature: float, with_entropy: bool) -> torch.Tensor:
    """[n, 1 or 2]: log p(target) (and the entropy) of one chunk, in fp32."""
    return _TargetStats.apply(head_forward(hidden), targets, temperature, with_entropy)


def _chunked(head_forward: Callable[..., torch.Tensor], hidden: torch.Tensor,
             request: _Request) -> torch.Tensor:
    """[rows, len, 1 or 2] stats; positions without a target hold 0."""
    h, t, keep = _kept(hidden, request.targets)
    width = 2 if request.with_entropy else 1
    parts = []
    for hc, tc in zip(h.split(request.chunk), t.split(request.chunk)):
        if torch.is_grad_enabled():
            parts.append(checkpoint(_chunk_stats, head_forward, hc, tc, request.temperature,
                                    request.with_entropy, use_reentrant=False, preserve_rng_state=False))
        else:
            parts.append(_chunk_stats(head_forward, hc, tc, request.temperature, request.with_entropy))
    stats = torch.cat(parts) if parts else h.new_zeros((0, width), dtype=torch.float32)
    out = torch.zeros(request.targets.numel(), width, dtype=torch.float32, device=hidden.device)
    out = out.index_copy(0, keep, stats)
    return out.view(*request.targets.shape, width)


def _liger_sum(head: nn.Module, hidden: torch.Tensor, request: _Request) -> torch.Tensor:
    """Summed cross-entropy of the targets from Liger-Kernel's fused linear cross-entropy."""
    if not isinstance(head, nn.Linear):
        raise ValueError(f"model.cross_entropy: liger needs a plain linear LM head, found "
                         f"{type(head).__name__} (a LoRA-adapted head?); "
                         "hint: use model.cross_entropy: chunked")
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    h, t, _ = _kept(hidden, request.targets)
    out = liger_fused_linear_cross_entropy(h, head.weight.to(h.dtype), t,
                                           head.bias.to(h.dtype) if head.bias is not None else None,
                                           ignore_index=IGNORE_INDEX, reduction="sum")
    return (out[0] if isinstance(out, tuple) else out).float()


# ---------------------------------------------------------------------------- entry points


def _forward(model: nn.Module, model_inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**model_inputs, use_cache=False).logits


def _shift(targets: torch.Tensor) -> torch.Tensor:
    """Targets aligned with the positions that predict them: position t predicts x_{t+1}."""
    pad = torch.full_like(targets[:, :1], IGNORE_INDEX)
    return torch.cat([targets[:, 1:], pad], dim=1)


def token_stats(model: nn.Module, model_inputs: dict[str, torch.Tensor], targets: torch.Tensor, *,
                mode: str = "plain", chunk_tokens: int = 1024, temperature: float = 1.0,
                with_entropy: bool = False, aligned: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``log p(targets[:, t] | x_<t)`` for t >= 1 ([rows, len - 1], fp32), and the entropy of the
    (temperature-scaled) distribution at those positions when asked. ``targets`` has the input's
    shape; negative targets (-100) give 0 there (the caller masks them). ``aligned``: targets[:, t]
    is what position t predicts (packed rows place them themselves); then [rows, len]."""
    if mode not in MODES:
        raise ValueError(f"model.cross_entropy must be one of {MODES}, got {mode!r}")
    if chunk_tokens <= 0:
        raise ValueError(f"model.ce_chunk_tokens must be > 0, got {chunk_tokens}")
    if mode == "plain":
        logits = _forward(model, model_inputs)
        logits = (logits if aligned else logits[:, :-1, :]).float()
        if temperature != 1.0:
            logits = logits / temperature
        predicted = targets if aligned else targets[:, 1:]
        logps = torch.gather(logits.log_softmax(-1), 2, predicted.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        entropy = None
        if with_entropy:
            entropy = torch.logsumexp(logits, -1) - (torch.softmax(logits, -1) * logits).sum(-1)
        return logps, entropy
    head = _head(model)
    with _request(head, _Request(targets if aligned else _shift(targets), chunk_tokens, temperature,
                                 with_entropy)):
        stats = _forward(model, model_inputs)
    if stats.dim() != 3 or stats.shape[-1] != (2 if with_entropy else 1):
        raise RuntimeError("the LM head's output was changed by the model after the head; "
                           "model.cross_entropy: chunked cannot be used with this architecture")
    stats = stats if aligned else stats[:, :-1]
    return stats[..., 0], (stats[..., 1] if with_entropy else None)


def next_token_logps(model: nn.Module, model_inputs: dict[str, torch.Tensor], targets: torch.Tensor, *,
                     mode: str = "plain", chunk_tokens: int = 1024) -> torch.Tensor:
    """The one call strategies make: ``log p(targets[:, t] | x_<t)`` at t >= 1, [rows, len - 1],
    fp32. ``mode`` is ``model.cross_entropy`` (``liger`` computes per-token values as ``chunked``)."""
    mode = "chunked" if mode == "liger" else mode
    return token_stats(model, model_inputs, targets, mode=mode, chunk_tokens=chunk_tokens)[0]


def aligned_nll_sum(model: nn.Module, model_inputs: dict[str, torch.Tensor], aligned: torch.Tensor, *,
                    mode: str = "plain", chunk_tokens: int = 1024) -> torch.Tensor:
    """Summed cross-entropy where ``aligned[:, t]`` is the token position t predicts (-100: none):
    labels shifted before the call, as a sequence-parallel shard has them (its last position
    predicts the first token of the next shard, which only the unshifted sequence knows)."""
    if mode == "plain":
        logits = _forward(model, model_inputs).float()
        return nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), aligned.reshape(-1),
                                           ignore_index=IGNORE_INDEX, reduction="sum")
    head = _head(model)
    liger = mode == "liger"
    with _request(head, _Request(aligned, chunk_tokens, liger_sum=liger)):
        out = _forward(model, model_inputs)
    if out.dim() != (0 if liger else 3):
        raise RuntimeError("the LM head's output was changed by the model after the head; "
                           f"model.cross_entropy: {mode} cannot be used with this architecture")
    return out if liger else -out[..., 0].sum()  # positions without a target hold 0


def labelled_nll_sum(model: nn.Module, model_inputs: dict[str, torch.Tensor], labels: torch.Tensor, *,
                     mode: str = "plain", chunk_tokens: int = 1024) -> torch.Tensor:
    """Summed next-token cross-entropy over labelled tokens (labels == -100 skipped): the causal
    LM loss. ``liger`` computes it with Liger's fused kernel; the others from ``next_token_logps``
    (``plain`` keeps torch's ``cross_entropy`` on full logits, as ftl always did)."""
    if mode == "plain":
        logits = _forward(model, model_inputs)[:, :-1, :].float()
        return nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
                                           ignore_index=IGNORE_INDEX, reduction="sum")
    if mode == "liger":
        head = _head(model)
        with _request(head, _Request(_shift(labels), chunk_tokens, liger_sum=True)):
            loss = _forward(model, model_inputs)
        if loss.dim() != 0:
            raise RuntimeError("the LM head's output was changed by the model after the head; "
                               "model.cross_entropy: liger cannot be used with this architecture")
        return loss
    logps = next_token_logps(model, model_inputs, labels, mode=mode, chunk_tokens=chunk_tokens)
    return -(logps * (labels[:, 1:] != IGNORE_INDEX)).sum()
