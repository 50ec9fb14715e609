"""``deepspeed``: ZeRO stages 0-3 with optional CPU offload of optimizer and parameters.

The DeepSpeed config is generated from the ftl config (batch sizes, clipping, precision,
ZeRO settings); ``sharding.deepspeed_config`` is merged on top for expert settings. A torch
AdamW is used (``zero_allow_untested_optimizer``, ``zero_force_ds_cpu_optimizer: false``) so
that no fused kernel is compiled on CPU machines (DeepSpeed's CPU Adam build takes ~40 s and
~8 GB). With ZeRO-3 the HF model is constructed under ``zero.Init`` through
``HfDeepSpeedConfig``: parameters are partitioned as they are created, so no rank ever holds
the whole model.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from launcher.backends.base import Backend, OptimizerFactory, SchedulerFactory
from launcher.backends.registry import resolve_sharding
from launcher.core.errors import Problem, UserError

if TYPE_CHECKING:
    from strategies.base import ModelSpec

TAG = "ds"


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def build_ds_config(cfg: Any, world_size: int) -> dict[str, Any]:
    sharding = resolve_sharding(cfg.sharding)
    zero: dict[str, Any] = {"stage": sharding.zero_stage, "overlap_comm": False,
                            "contiguous_gradients": True}
    if sharding.offload_optimizer == "cpu":
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if sharding.offload_params == "cpu":
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if sharding.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    ds = {
        "train_micro_batch_size_per_gpu": cfg.train.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": cfg.train.micro_batch_size * cfg.grad_accum * world_size,
        "gradient_clipping": cfg.train.max_grad_norm or 0.0,
        "zero_optimization": zero,
        "bf16": {"enabled": cfg.model.dtype == "bf16"},
        "fp16": {"enabled": cfg.model.dtype == "fp16"},
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**12,
        "wall_clock_breakdown": False,
    }
    expert = sharding.deepspeed_config or {}
    problems = [
        Problem(f"sharding.deepspeed_config.{key}", f"{expert[key]!r} contradicts the value ftl "
                f"derives ({ds[key]!r})", f"set {OWNED[key]} instead")
        for key in OWNED if key in expert and expert[key] != ds[key]
    ]
    if problems:
        raise UserError(problems)
    return _merge(ds, expert)


# DeepSpeed keys ftl derives from its own config; an expert mapping may not contradict them.
OWNED = {
    "train_micro_batch_size_per_gpu": "train.micro_batch_size",
    "gradient_accumulation_steps": "train.global_batch_size",
    "train_batch_size": "train.global_batch_size",
    "gradient_clipping": "train.max_grad_norm",
}


def validate_ds_config(cfg: Any) -> list[Problem]:
    """Build the merged DeepSpeed config and let DeepSpeed's own schema check it."""
    from launcher.core.host import deepspeed_on_host

    with deepspeed_on_host():
        from deepspeed.runtime.config import DeepSpeedConfig

    try:
        ds = build_ds_config(cfg, cfg.resources.num_workers)
    except UserError as exc:
        return exc.problems
    probe = {k: v for k, v in ds.items() if k != "train_batch_size"}  # no process group here
    try:
        DeepSpeedConfig(probe)
    except Exception as exc:  # DeepSpeed raises pydantic and plain errors alike
        text = " ".join(str(exc).split())[:400]
        return [Problem("sharding.deepspeed_config", f"DeepSpeed rejects the config: {text}",
                        "see https://www.deepspeed.ai/docs/config-json/")]
    return []


class DeepSpeedBackend(Backend):
    def __init__(self, cfg: Any, ctx: Any):
        super().__init__(cfg, ctx)
        import deepspeed

        deepspeed.init_distributed(dist_backend="nccl" if ctx.device.type == "cuda" else "gloo",
                                   auto_mpi_discovery=False)
        self.ds_config = build_ds_config(cfg, ctx.world_size)
        self.stage = self.ds_config["zero_optimization"]["stage"]
        self.needs_synced_generation = self.stage == 3
        self._hf_ds_config = None

    # -- tensor layout: under ZeRO-3 a parameter holds its partition in ``ds_tensor``
    def local_tensor(self, t: torch.Tensor) -> torch.Tensor:
        part = getattr(t, "ds_tensor", None)
        return part if part is not None else t

    def param_shape(self, param: torch.Tensor) -> tuple[int, ...]:
        return tuple(getattr(param, "ds_shape", param.shape))

    def param_numel(self, param: torch.Tensor) -> int:
        return param.ds_numel if hasattr(param, "ds_numel") else param.numel()

    @torch.no_grad()
    def write_full(self, param: nn.Parameter, full: torch.Tensor) -> None:
        if not hasattr(param, "ds_shape"):
            super().write_full(param, full)
            return
        import deepspeed

        with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
            param.data.copy_(full.to(param.dtype))

    # -- construction
    def load_model(self, spec: ModelSpec) -> nn.Module:
        if self.stage != 3:
            return super().load_model(spec)
        return self._load_partitioned(spec)

    @torch.no_grad()
    def _load_partitioned(self, spec: ModelSpec) -> nn.Module:
        """Build under ``zero.Init`` (each parameter partitioned as it is created), then copy
        the checkpoint in one tensor at a time: gathered on all ranks, filled from rank 0's
        read, re-partitioned. A rank never holds more than its partitions plus one tensor."""
        import deepspeed
        import torch._dynamo  # noqa: F401  (its first import fails inside zero.Init's patched constructors)
        from transformers.integrations import HfDeepSpeedConfig

        from launcher.models.load import build_model_skeleton, finish_model, init_adapters_deterministic
        from launcher.models.streaming import check_complete, iter_tensors
        from launcher.models.tiny import resolve_model_path

        # Kept alive for the engine: transformers checks it for ZeRO-3 (e.g. in generate).
        self._hf_ds_config = HfDeepSpeedConfig(self.ds_config)
        # No dtype=: DeepSpeed 0.19 ignores it on CPU (operator precedence in _set_dtype) and
        # picks bf16; without it the dtype follows the config's bf16/fp16 sections.
        with deepspeed.zero.Init(config_dict_or_path=self.ds_config):
            model = build_model_skeleton(self.cfg, spec)
        model = finish_model(model, self.cfg, init_adapters=False,
                             task_type=spec.peft_task_type)
        params = dict(model.named_parameters())
        folder = Path(resolve_model_path(self.cfg.model.path))
        loaded: set[str] = set()
        for name, full in iter_tensors(folder, set(params)):
            param = params[name]
            with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
                if self.ctx.is_main:
                    param.data.copy_(full.to(param.dtype))
            del full
            loaded.add(name)
        init_adapters_deterministic(model, self.cfg.train.seed, loaded, layout=self)
        check_complete(params, loaded, folder)
        return model

    def setup(self, model: nn.Module, make_optimizer: OptimizerFactory,
              make_scheduler: SchedulerFactory) -> None:
        import deepspeed

        optimizer = make_optimizer(model)
        scheduler = make_scheduler(optimizer)
        engine, optimizer, _, scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=self.ds_config,
            dist_init_required=False,
        )
        self.model = engine
        self.optimizer = optimizer
        self.scheduler = scheduler

    @property
    def module(self) -> nn.Module:
        return self.model.module

    def backward(self, loss: torch.Tensor) -> None:
        # The loop already divides by the global item count: no extra 1/accumulation.
        self.model.backward(loss, scale_wrt_gas=False)
        self.model.step()  # steps optimizer and scheduler only at the accumulation boundary

    def step(self) -> float:
        norm = self.model.get_global_grad_norm()
        self.grad_norm_known = norm is not None
        return float(norm) if norm is not None else float("nan")

    def current_lr(self) -> float:
        return self.model.get_lr()[0]

    def save(self, folder: Path) -> None:
        self.model.save_checkpoint(str(folder), tag=TAG, save_latest=False)

    def load(self, folder: Path) -> None:
        path, _ = self.model.load_checkpoint(str(folder), tag=TAG, load_optimizer_states=True,
                                             load_lr_scheduler_states=True)
        if path is None:
            raise RuntimeError(f"DeepSpeed found no checkpoint in {folder}")

    def close(self) -> None:
        if self._hf_ds_config is not None:
            from transformers.integrations.deepspeed import unset_hf_deepspeed_config

            unset_hf_deepspeed_config()
            self._hf_ds_config = None

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        if self.stage == 3:
            sd = self.model._zero3_consolidated_16bit_state_dict()
            return sd if self.ctx.is_main else None
        return self.module.state_dict() if self.ctx.is_main else None
