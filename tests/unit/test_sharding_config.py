"""Sharding presets, contradictions and DeepSpeed config generation (no process group)."""

from __future__ import annotations

import pytest

from launcher.backends.registry import resolve_sharding
from launcher.config.load import validate_config
from launcher.core.errors import UserError
from tests.helpers.ftl import tiny_config


def cfg_with(**sharding):
    return validate_config(tiny_config(sharding=sharding))


@pytest.mark.parametrize("backend,kind,stage,opt,params", [
    ("ddp", "ddp", 2, "none", "none"),
    ("zero1", "deepspeed", 1, "none", "none"),
    ("zero3_offload", "deepspeed", 3, "cpu", "cpu"),
    ("fsdp2", "fsdp2", 2, "none", "none"),
    ("fsdp2_offload", "fsdp2", 2, "none", "cpu"),
])
def test_presets_resolve(backend, kind, stage, opt, params):
    r = resolve_sharding(cfg_with(backend=backend).sharding)
    assert (r.kind, r.offload_optimizer, r.offload_params) == (kind, opt, params)
    if kind == "deepspeed":
        assert r.zero_stage == stage


def test_explicit_settings_may_extend_but_not_contradict_a_preset():
    r = resolve_sharding(cfg_with(backend="zero3", offload_optimizer="cpu").sharding)
    assert r.offload_optimizer == "cpu" and r.zero_stage == 3
    with pytest.raises(UserError) as err:
        cfg_with(backend="zero3", zero_stage=2)
    assert "sharding.zero_stage: 2 contradicts preset 'zero3'" in err.value.render()


@pytest.mark.parametrize("sharding,needle", [
    ({"backend": "fsdp2", "zero_stage": 3}, "sharding.zero_stage: only applies to deepspeed"),
    ({"backend": "deepspeed", "zero_stage": 2, "offload_params": "cpu"}, "needs ZeRO stage 3"),
    ({"backend": "ddp", "offload_params": "cpu"}, "ddp cannot offload parameters"),
])
def test_impossible_combinations_are_config_errors(sharding, needle):
    with pytest.raises(UserError) as err:
        cfg_with(**sharding)
    assert needle in err.value.render()


def test_deepspeed_config_follows_ftl_config_and_merges_expert_keys():
    from launcher.backends.deepspeed import build_ds_config

    expert = {"zero_optimization": {"reduce_bucket_size": 1000}}
    cfg = validate_config(tiny_config(
        sharding={"backend": "zero3_offload", "deepspeed_config": expert},
        train={"micro_batch_size": 2, "global_batch_size": 16, "max_grad_norm": 0.5}))
    ds = build_ds_config(cfg, world_size=2)
    assert ds["train_micro_batch_size_per_gpu"] == 2 and ds["gradient_accumulation_steps"] == 4
    assert ds["train_batch_size"] == 16 and ds["gradient_clipping"] == 0.5
    zero = ds["zero_optimization"]
    assert zero["stage"] == 3 and zero["offload_optimizer"]["device"] == "cpu"
    assert zero["offload_param"]["device"] == "cpu" and zero["reduce_bucket_size"] == 1000


def test_expert_config_may_not_contradict_derived_values():
    from launcher.backends.deepspeed import validate_ds_config

    cfg = validate_config(tiny_config(sharding={"backend": "zero2",
                                                "deepspeed_config": {"gradient_clipping": 5.0}}))
    (problem,) = validate_ds_config(cfg)
    assert problem.where == "sharding.deepspeed_config.gradient_clipping"
    assert "train.max_grad_norm" in problem.hint


def test_deepspeed_schema_errors_surface():
    from launcher.backends.deepspeed import validate_ds_config

    cfg = validate_config(tiny_config(sharding={"backend": "zero2",
                                                "deepspeed_config": {"zero_optimization": {"bogus": 1}}}))
    (problem,) = validate_ds_config(cfg)
    assert problem.where == "sharding.deepspeed_config" and "bogus" in problem.message
