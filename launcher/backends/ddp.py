"""``ddp``: every rank holds the whole model; gradients are all-reduced (gloo or nccl)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from launcher.backends.base import Backend, OptimizerFactory, SchedulerFactory


class DDPBackend(Backend):
    def setup(self, model: nn.Module, make_optimizer: OptimizerFactory,
              make_scheduler: SchedulerFactory) -> None:
        model.to(self.ctx.device)
        self._frozen_to_compute_dtype(model)
        self._module = model
        if self.ctx.world_size > 1:
            ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
            self.model = DistributedDataParallel(model, device_ids=ids)
        else:
            self.model = model
        self.optimizer = make_optimizer(model)
        self.scheduler = make_scheduler(self.optimizer)

    def _frozen_to_compute_dtype(self, model: nn.Module) -> None:
        """With ``model.dtype`` bf16/fp16, frozen weights (a LoRA base, ``train.freeze``) are held
        in that dtype: autocast computes in it anyway, and no optimizer needs their fp32 copy,
        so an 8B LoRA base takes 16 GB instead of 32. Trained weights stay fp32 masters."""
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.cfg.model.dtype)
        if dtype is None:
            return
        with torch.no_grad():
            for param in model.parameters():
                if not param.requires_grad and param.is_floating_point():
                    param.data = param.data.to(dtype)

    @property
    def module(self) -> nn.Module:
        return self._module

    def accumulate(self, sync: bool) -> contextlib.AbstractContextManager:
        if sync or not isinstance(self.model, DistributedDataParallel):
            return contextlib.nullcontext()
        return self.model.no_sync()

    def step(self) -> float:
        return self._clip_and_step(self._module)

    def save(self, folder: Path) -> None:
        if self.ctx.is_main:
            torch.save(self._module.state_dict(), folder / "model.pt")
            torch.save(self.optimizer.state_dict(), folder / "optimizer.pt")
            torch.save(self.scheduler.state_dict(), folder / "scheduler.pt")

    def load(self, folder: Path) -> None:
        device = self.ctx.device
        self._module.load_state_dict(torch.load(folder / "model.pt", map_location=device))
        self.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=device))
        self.scheduler.load_state_dict(torch.load(folder / "scheduler.pt"))
