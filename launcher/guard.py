"""Stop a run at the first step whose loss or gradient norm is not a finite number.

A NaN or Inf loss poisons every parameter at the next optimizer step, and a run that goes on
after it trains on nothing for hours while the metrics look like numbers again after a
restart. Every step, each rank checks its summed loss and the (global) gradient norm; one
all-reduce of a flag makes every rank stop at the same step, naming the ranks whose loss went
bad and the last checkpoint written before it. Nothing from the bad step is saved, so that
checkpoint is intact and ``ftl run --resume`` continues from it (with ``train.max_failures``,
Ray Train restarts from it by itself).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch

from launcher.dist import RankContext, all_gather_objects, all_reduce_sum


class NonFiniteError(RuntimeError):
    """The loss or gradient norm of a step is NaN or infinite."""


def check_step(step: int, loss_total: torch.Tensor, grad_norm: float, norm_known: bool, ctx: RankContext,
               last_checkpoint: Callable[[], Path | None]) -> None:
    """Raise NonFiniteError on every rank if any rank's loss, or the gradient norm, is not finite.
    ``norm_known``: the backend computed the norm this step (DeepSpeed may not)."""
    loss = float(loss_total)
    (bad,) = all_reduce_sum([0.0 if math.isfinite(loss) else 1.0], ctx.device)
    bad_norm = norm_known and not math.isfinite(grad_norm)
    if not bad and not bad_norm:
        return
    losses = all_gather_objects(loss)
    ranks = [r for r, value in enumerate(losses) if not math.isfinite(value)]
    what = (f"the loss is {losses[ranks[0]]} on rank(s) {', '.join(map(str, ranks))}" if ranks
            else f"the gradient norm is {grad_norm}")
    good = last_checkpoint()
    where = (f"the last good checkpoint is {good} (nothing from step {step} was saved)" if good
             else "no checkpoint was written before it")
    raise NonFiniteError(f"step {step}: {what}; the run stopped; {where}. Lower train.lr or "
                         "train.max_grad_norm, or look at this step's data, then `ftl run --resume RUN_DIR`")
