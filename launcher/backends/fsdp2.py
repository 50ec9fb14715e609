"""``fsdp2``: torch ``fully_shard`` per decoder layer, then the root.

Big-model init: the model is built with parameters on the meta device, sharded, materialized
as local shards only (``to_empty``), then filled tensor by tensor from the safetensors files:
each rank reads one full tensor at a time and keeps its shard, so a rank holds at most its
shard plus one tensor. (accelerate's FSDP2 path broadcasts a full state dict that rank 0
loads whole, which a 70B model does not allow; hence this loader.)
Checkpoints use torch.distributed.checkpoint (each rank writes its shards).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from launcher.backends.base import Backend, OptimizerFactory, SchedulerFactory
from launcher.backends.registry import resolve_sharding
from launcher.models.layers import decoder_layers

if TYPE_CHECKING:
    from strategies.base import ModelSpec


class FSDP2Backend(Backend):
    needs_synced_generation = True

    def __init__(self, cfg: Any, ctx: Any):
        super().__init__(cfg, ctx)
        from torch.distributed.device_mesh import init_device_mesh

        self.sharding = resolve_sharding(cfg.sharding)
        self.mesh = init_device_mesh(ctx.device.type, (ctx.world_size,))

    # -- tensor layout: parameters (and their gradients and optimizer states) are DTensors
    offload_params_holds_states = True  # CPUOffloadPolicy moves all three

    def local_tensor(self, t: torch.Tensor) -> torch.Tensor:
        return t.to_local() if hasattr(t, "to_local") else t

    def full_tensor(self, t: torch.Tensor) -> torch.Tensor:
        return t.full_tensor() if hasattr(t, "full_tensor") else t

    @torch.no_grad()
    def write_full(self, param: nn.Parameter, full: torch.Tensor) -> None:
        if not hasattr(param, "placements"):
            super().write_full(param, full)
            return
        from torch.distributed.tensor import distribute_tensor

        local = distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None)
        param.to_local().copy_(local.to_local())

    # -- construction
    def load_model(self, spec: ModelSpec) -> nn.Module:
        from accelerate import init_empty_weights

        from launcher.models.load import build_model_skeleton, finish_model
        from launcher.models.tiny import resolve_model_path

        # Parameters on meta, buffers (rotary tables) real: they are not in the checkpoint.
        with init_empty_weights(include_buffers=False):
            model = build_model_skeleton(self.cfg, spec)
        if hasattr(model, "tie_weights"):
            model.tie_weights()  # init_empty_weights leaves tied embeddings untied
        model = finish_model(model, self.cfg, init_adapters=False,
                             task_type=spec.peft_task_type)
        buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
        self._root = self._shard(model)
        model.to_empty(device=self.ctx.device)
        with torch.no_grad():
            for name, buf in model.named_buffers():
                if name in buffers:
                    buf.copy_(buffers[name])
        self._load_weights(model, Path(resolve_model_path(self.cfg.model.path)))
        return model

    def _shard(self, model: nn.Module) -> nn.Module:
        """Shard decoder layers, then the root. Under PEFT the root is the inner HF model:
        peft calls it via ``.forward``/``.generate``, which would bypass hooks on the wrapper."""
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

        kwargs: dict[str, Any] = {"mesh": self.mesh,
                                  "reshard_after_forward": self.sharding.reshard_after_forward}
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.cfg.model.dtype)
        if dtype is not None:
            kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
        if self.sharding.offload_params == "cpu":
            kwargs["offload_policy"] = CPUOffloadPolicy(pin_memory=torch.cuda.is_available())
        for layer in decoder_layers(model):
            fully_shard(layer, **kwargs)
        root = model.get_base_model() if hasattr(model, "get_base_model") else model
        fully_shard(root, **kwargs)
        return root

    @torch.no_grad()
    def _load_weights(self, model: nn.Module, folder: Path) -> None:
        from torch.distributed.tensor import distribute_tensor

        from launcher.models.load import init_adapters_deterministic
        from launcher.models.streaming import check_complete, iter_tensors

        params = dict(model.named_parameters())
        loaded: set[str] = set()
        for name, full in iter_tensors(folder, set(params)):
            param = params[name]
            # Every rank reads the tensor and keeps only its shard (no communication).
            shard = distribute_tensor(full.to(param.dtype), self.mesh, param.placements, src_data_rank=None)
            param.to_local().copy_(shard.to_local())
            del full, shard
            loaded.add(name)
        init_adapters_deterministic(model, self.cfg.train.seed, loaded, layout=self)
        check_complete(params, loaded, folder)

    def setup(self, model: nn.Module, make_optimizer: OptimizerFactory,
              make_scheduler: SchedulerFactory) -> None:
        self._wrapper = model
        self.model = self._root  # what forward calls go through
        self.optimizer = make_optimizer(model)
        self.scheduler = make_scheduler(self.optimizer)

    @property
    def module(self) -> nn.Module:
        return self._wrapper

    def accumulate(self, sync: bool) -> contextlib.AbstractContextManager:
        self.model.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()

    def step(self) -> float:
        return self._clip_and_step(self._wrapper)

    # -- checkpoints
    def save(self, folder: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(self._wrapper, self.optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(folder / "dcp"))
        if self.ctx.is_main:
            torch.save(self.scheduler.state_dict(), folder / "scheduler.pt")

    def load(self, folder: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_sd, optim_sd = get_state_dict(self._wrapper, self.optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=str(folder / "dcp"))
        set_state_dict(self._wrapper, self.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optim"])
        self.scheduler.load_state_dict(torch.load(folder / "scheduler.pt"))

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(self._wrapper, options=StateDictOptions(full_state_dict=True,
                                                                      cpu_offload=True))
        return sd if self.ctx.is_main else None
