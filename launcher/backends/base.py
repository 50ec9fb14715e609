"""The sharding-backend contract the per-rank loop talks to.

A backend owns the wrapped model, the optimizer and the LR scheduler, and knows how to run
backward, step, and save/load them. The loop never branches on the backend's type.

It also owns how its tensors are laid out across ranks (``TensorLayout``): a ZeRO-3 partition,
an FSDP2 ``DTensor`` shard or a whole tensor. Code outside the backends (the loop's memory
figures, ``launcher.train.state_bytes``, ``launcher.models.load``) asks the backend instead of
probing for ``ds_tensor`` or ``to_local``, so a new backend changes no call site.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from launcher.models.load import load_model
from launcher.models.tensor_layout import TensorLayout
from launcher.train.dist import RankContext

if TYPE_CHECKING:
    from strategies.base import ModelSpec

OptimizerFactory = Callable[[nn.Module], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


class Backend(TensorLayout, ABC):
    #: HF ``generate(synced_gpus=...)``: every rank must run the same number of forwards.
    needs_synced_generation = False
    #: whether the last ``step()`` computed the gradient norm (DeepSpeed may not, then it is NaN)
    grad_norm_known = True

    def __init__(self, cfg: Any, ctx: RankContext):
        self.cfg = cfg
        self.ctx = ctx
        self.model: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None

    def load_model(self, spec: ModelSpec) -> nn.Module:
        """Build the model ``spec`` describes (a strategy, or PPO's policy/critic): loaded
        whole here; sharded backends construct it so that no rank holds all of it."""
        return load_model(self.cfg, spec)

    @abstractmethod
    def setup(self, model: nn.Module, make_optimizer: OptimizerFactory,
              make_scheduler: SchedulerFactory) -> None:
        """Wrap ``model`` (sets ``model``, ``optimizer``, ``scheduler``)."""

    def current_lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The whole model's state dict on rank 0 (None elsewhere). A collective. This default
        holds where ``module`` has whole parameters on rank 0 (ddp, ZeRO-1/2)."""
        return self.module.state_dict() if self.ctx.is_main else None

    @property
    @abstractmethod
    def module(self) -> nn.Module:
        """The plain (unwrapped) model, for generation and export."""

    def accumulate(self, sync: bool) -> contextlib.AbstractContextManager:
        """Context for one micro-batch; ``sync`` is False on all but the last of a step."""
        return contextlib.nullcontext()

    def autocast(self) -> contextlib.AbstractContextManager:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.cfg.model.dtype)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.ctx.device.type, dtype=dtype)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    @abstractmethod
    def step(self) -> float:
        """Clip, step optimizer and scheduler, zero grads; return the pre-clip grad norm.
        A non-finite norm with ``train.skip_nonfinite`` set changes nothing but the gradients."""

    def _clip_and_step(self, model: nn.Module) -> float:
        """The plain torch optimizer step (DDP, FSDP2): clip, step, schedule, zero grads."""
        params = [p for p in model.parameters() if p.requires_grad]
        max_norm = self.cfg.train.max_grad_norm
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm else float("inf"))
        norm = self.full_tensor(norm)  # a DTensor under FSDP2
        if self.cfg.train.skip_nonfinite and not torch.isfinite(norm):
            # train.skip_nonfinite: parameters, optimizer moments and the LR schedule stay as
            # they were (DeepSpeed skips an overflowed step the same way); the guard counts it.
            self.optimizer.zero_grad(set_to_none=True)
            return float(norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    @abstractmethod
    def save(self, folder: Path) -> None:
        """Write model, optimizer and scheduler state into ``folder`` (a collective)."""

    @abstractmethod
    def load(self, folder: Path) -> None:
        """Restore what ``save`` wrote (a collective)."""

    def close(self) -> None:
        """Release global state (DeepSpeed's HF hook) so another run can follow in-process."""
