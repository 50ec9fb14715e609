"""What every rank decides together at a step boundary: is this step's result usable, and
has someone asked the run to stop?

A NaN or Inf loss poisons every parameter at the next optimizer step, and a run that goes on
after it trains on nothing for hours while the metrics look like numbers again after a
restart. Every step, each rank checks its summed loss and the (global) gradient norm; one
all-reduce carries the flags (bad loss, stop requested), so every rank takes the same decision
at the same step without a second collective.

A bad step stops the run, naming the step, the ranks whose loss went bad and the last
checkpoint written before it (nothing from the bad step is saved, so ``ftl run --resume``
continues from a good state). With ``train.skip_nonfinite: N`` up to N such steps are skipped
instead: the backends leave the parameters and optimizer state untouched when the gradient
norm is not finite (``Backend.skip_nonfinite``; DeepSpeed does the same by itself), the count
is checkpointed and logged as ``train/skipped_steps``, and step N+1 stops the run. PPO/GRPO
learners use the same guard per role (policy, critic), each with its own budget of N for the
launch: their count is logged (``policy/skipped_steps``) but not checkpointed yet.

A stop request (``launcher.core.preemption``) is read on rank 0 only: the file lives in the run
folder, which every launcher shares, and one reader keeps shared storage quiet at scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from launcher.core import preemption
from launcher.train.dist import RankContext, all_gather_objects, all_reduce_sum


class NonFiniteError(RuntimeError):
    """The loss or gradient norm of a step is NaN or infinite (and no skip is left)."""


@dataclass
class Verdict:
    #: the step's loss or gradient norm was not finite and the step was skipped
    skipped: bool = False
    #: why the run must save and stop after this step (None: go on)
    stop_reason: str | None = None


class StepGuard:
    def __init__(self, ctx: RankContext, run_dir: Path, skip_budget: int, skipped: int,
                 last_checkpoint: Callable[[], Path | None]):
        self.ctx, self.run_dir = ctx, run_dir
        self.skip_budget, self.skipped = skip_budget, skipped
        self.last_checkpoint = last_checkpoint

    def check(self, step: int, loss_total: torch.Tensor, grad_norm: float, norm_known: bool) -> Verdict:
        """Decide on every rank; raise NonFiniteError on every rank when the run must stop."""
        loss = float(loss_total)
        reason = preemption.stop_reason(self.run_dir) if self.ctx.is_main else None
        bad, stop = all_reduce_sum([0.0 if math.isfinite(loss) else 1.0, 1.0 if reason else 0.0],
                                   self.ctx.device)
        bad_norm = norm_known and not math.isfinite(grad_norm)
        verdict = Verdict(stop_reason=(reason or "stop requested") if stop else None)
        if not bad and not bad_norm:
            return verdict
        if self.skipped < self.skip_budget:
            self.skipped += 1
            verdict.skipped = True
            return verdict
        raise NonFiniteError(self._message(step, loss, grad_norm))

    def _message(self, step: int, loss: float, grad_norm: float) -> str:
        losses = all_gather_objects(loss)
        ranks = [r for r, value in enumerate(losses) if not math.isfinite(value)]
        what = (f"the loss is {losses[ranks[0]]} on rank(s) {', '.join(map(str, ranks))}" if ranks
                else f"the gradient norm is {grad_norm}")
        if self.skip_budget:
            what += f" (train.skip_nonfinite: {self.skip_budget} steps were skipped already)"
        good = self.last_checkpoint()
        where = (f"the last good checkpoint is {good} (nothing from step {step} was saved)" if good
                 else "no checkpoint was written before it")
        return (f"step {step}: {what}; the run stopped; {where}. Lower train.lr or "
                "train.max_grad_norm, or look at this step's data, then `ftl run --resume RUN_DIR`")
