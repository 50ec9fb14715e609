"""One optimizer step over the micro-batches of a global batch: the project's central rule, once.

Supervised runs (``launcher.train.loop``) and the RL learners (``strategies.ppo.learner``) both
train by gradient accumulation with the loss normalised over the GLOBAL batch: the items of
every micro-batch on every rank are counted first (one all-reduce), each micro-batch's summed
loss is multiplied by ``world_size / global_items`` before its backward (the backends average
gradients over ranks), then the backend clips and steps, and the step guard
(``launcher.train.guard``) decides on every rank together whether the step was usable. The
gradient is then the exact per-item mean over the global batch, whatever the micro /
accumulation / world split, and writing it once keeps the two users from drifting apart.

What differs between the users is a parameter: how a micro-batch reaches the device (and, under
sequence parallelism, which token chunk this rank takes: ``prepare``), the fault-injection point
tests arm (``nan_failpoint``), and whether a guard decides at all. Counting items is left to the
caller (``items``, ``tokens``), since what counts (tokens, sequences, pairs) and who counts it
(one rank of a sequence-parallel group) is theirs to know. Metrics come back as this rank's
sums: when to reduce them over ranks (every step, or only on logged steps) is the caller's choice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from launcher.core import failpoints
from launcher.models.offload import activation_offload
from launcher.train.dist import all_reduce_sum
from launcher.train.guard import StepGuard, Verdict


class SummedLoss(Protocol):
    """What a loss callable returns (``strategies.base.LossOutput``,
    ``strategies.ppo.objectives.MicroLoss``)."""

    loss_sum: torch.Tensor
    metric_sums: dict[str, torch.Tensor]


#: a micro-batch as the caller holds it -> (the batch the loss reads, a context around its forward
#: AND backward; sequence parallelism's ``active``)
Prepare = Callable[[Any], tuple[Any, contextlib.AbstractContextManager]]


def _unchanged(batch: Any) -> tuple[Any, contextlib.AbstractContextManager]:
    return batch, contextlib.nullcontext()


@dataclass
class StepResult:
    global_items: float          # items over every micro-batch and rank (the normaliser)
    global_tokens: float         # tokens likewise (throughput only)
    loss_total: torch.Tensor     # this rank's loss sum, float64 (divide the global sum by global_items)
    metric_sums: dict[str, torch.Tensor]  # this rank's metric sums, float64
    lr: float                    # the learning rate this step used
    grad_norm: float             # pre-clip global gradient norm (NaN where the backend did not compute it)
    verdict: Verdict             # the guard's decision (a plain Verdict without a guard)


def optimizer_step(backend: Any, micro_batches: Sequence[Any],
                   loss: Callable[[nn.Module, Any], SummedLoss], *, items: float, tokens: float = 0.0,
                   step: int, guard: StepGuard | None = None, prepare: Prepare = _unchanged,
                   nan_failpoint: str | None = None) -> StepResult:
    """Accumulate ``micro_batches`` into one optimizer step of ``backend``.

    ``items``/``tokens``: this rank's counts over ``micro_batches`` (0 on ranks whose items
    another rank counts). ``step``: the 1-based step number the guard's message and the
    failpoint name. ``guard``: decides, on every rank together, whether a non-finite loss or
    gradient norm skips the step or stops the run; without one nothing is checked.
    """
    ctx = backend.ctx
    global_items, global_tokens = all_reduce_sum([items, tokens], ctx.device)
    scale = ctx.world_size / max(global_items, 1.0)
    # Kept as tensors: the loss is read every step (the non-finite guard, next to the gradient
    # norm the step reads anyway); metrics are reduced over ranks only when the caller wants them.
    loss_total = torch.zeros((), dtype=torch.float64, device=ctx.device)
    metric_totals: dict[str, torch.Tensor] = {}
    last = len(micro_batches) - 1
    for m, micro in enumerate(micro_batches):
        batch, around = prepare(micro)
        with backend.accumulate(sync=m == last), around:
            with backend.autocast(), activation_offload(backend.cfg):
                out = loss(backend.model, batch)
            if nan_failpoint and failpoints.hit(nan_failpoint, step, ctx.rank):  # tests: a loss gone bad
                out.loss_sum = out.loss_sum * float("nan")
            backend.backward(out.loss_sum * scale)
        loss_total += out.loss_sum.detach().double()
        for k, v in out.metric_sums.items():
            metric_totals[k] = metric_totals.get(k, 0.0) + v.detach().double()
    lr = backend.current_lr()
    grad_norm = backend.step()
    verdict = guard.check(step, loss_total, grad_norm, backend.grad_norm_known) if guard else Verdict()
    return StepResult(global_items, global_tokens, loss_total, metric_totals, lr, grad_norm, verdict)
