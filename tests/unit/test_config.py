"""Config schema, overrides and error messages (pure logic, no model)."""

from __future__ import annotations

import json

import pytest

from launcher.config.load import apply_overrides, load_config, run_config_model
from launcher.core.errors import UserError
from tests.helpers.ftl import tiny_config, write_config


def problems(exc: UserError) -> list[str]:
    return [p.render() for p in exc.problems]


def test_valid_config_gets_defaults(tmp_path):
    cfg = load_config(write_config(tmp_path, tiny_config()))
    assert cfg.method == "sft"
    assert cfg.sharding.backend == "ddp"
    assert cfg.sft.loss_on == "assistant"
    assert cfg.global_batch == 8 and cfg.grad_accum == 1


def test_unknown_key_suggests_closest_with_line(tmp_path):
    cfg = tiny_config()
    cfg["train"]["warmup_step"] = 10
    path = write_config(tmp_path, cfg)
    with pytest.raises(UserError) as err:
        load_config(path)
    (text,) = problems(err.value)
    assert "train.warmup_step: unknown key" in text
    assert "did you mean 'warmup_steps'?" in text
    line = next(i for i, ln in enumerate(path.read_text().splitlines(), 1) if "warmup_step" in ln)
    assert f"{path}:{line} " in text


def test_every_error_reported_at_once(tmp_path):
    cfg = tiny_config(sharding={"backend": "dpp"})
    cfg["train"]["max_steps"] = "many"
    cfg["model"]["dtpye"] = "bf16"
    cfg["method"] = "sfft"
    with pytest.raises(UserError) as err:
        load_config(write_config(tmp_path, cfg))
    text = "\n".join(problems(err.value))
    assert len(err.value.problems) == 4
    assert "train.max_steps: Input should be a valid integer" in text
    assert "model.dtpye: unknown key" in text and "'dtype'" in text
    assert "sharding.backend: unknown sharding backend 'dpp'" in text and "did you mean 'ddp'" in text
    assert "method: unknown method 'sfft'" in text and "did you mean 'sft'" in text


def test_section_of_another_method_is_rejected(tmp_path):
    cfg = tiny_config(full={"add_eos": False})
    with pytest.raises(UserError) as err:
        load_config(write_config(tmp_path, cfg))
    assert "section for method 'full' but method is 'sft'" in problems(err.value)[0]


def test_global_batch_must_divide(tmp_path):
    cfg = tiny_config()
    cfg["train"]["global_batch_size"] = 10
    with pytest.raises(UserError) as err:
        load_config(write_config(tmp_path, cfg))
    assert "must be a multiple of" in problems(err.value)[0]


@pytest.mark.parametrize("change, needle", [
    ({"resources": {"num_workers": 2, "min_workers": 3}}, "resources.min_workers (3) is more than"),
    ({"sharding": {"backend": "zero2"}}, "an elastic run needs sharding.backend ddp, fsdp2 or fsdp2_offload"),
    ({"resources": {"num_workers": 3, "min_workers": 2}, "train": {"global_batch_size": 12}},
     "the global batch (12) does not split over 2 workers x train.micro_batch_size 4"),
])
def test_elastic_workers_need_a_resharding_backend_and_an_even_batch(tmp_path, change, needle):
    cfg = tiny_config(resources={"num_workers": 2, "min_workers": 1})
    for section, values in change.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    with pytest.raises(UserError) as err:
        load_config(write_config(tmp_path, cfg))
    assert needle in problems(err.value)[0], problems(err.value)
    cfg = tiny_config(resources={"num_workers": 4, "min_workers": 2}, train={"global_batch_size": 48})
    assert load_config(write_config(tmp_path, cfg)).grad_accum_for(3) == 4  # 48 = 4 x 3 workers x 4


def test_overrides_are_typed_by_schema(tmp_path):
    path = write_config(tmp_path, tiny_config())
    cfg = load_config(path, ["train.lr=1e-5", "data.train.0.num_rows=64", "train.max_grad_norm=null",
                             "train.global_batch_size=16", "logging.wandb.tags=[a, b]"])
    assert cfg.train.lr == 1e-5
    assert cfg.data.train[0].num_rows == 64
    assert cfg.train.max_grad_norm is None
    assert cfg.grad_accum == 2
    assert cfg.logging.wandb.tags == ["a", "b"]


@pytest.mark.parametrize("override,needle", [
    ("train.lrr=1", "did you mean 'train.lr'?"),
    ("trian.lr=1", "did you mean 'train'?"),
    ("train.lr", "expected KEY=VALUE"),
    ("data.train.5.path=x", "index 5 is out of range"),
])
def test_bad_override_paths(override, needle):
    with pytest.raises(UserError) as err:
        apply_overrides(tiny_config(), [override])
    assert needle in problems(err.value)[0]


def test_override_value_is_validated(tmp_path):
    with pytest.raises(UserError) as err:
        load_config(write_config(tmp_path, tiny_config()), ["train.max_steps=-3"])
    assert "train.max_steps: Input should be greater than 0" in problems(err.value)[0]


def test_json_schema_lists_every_method_section():
    schema = run_config_model().model_json_schema()
    assert {"sft", "full", "model", "train", "data"} <= set(schema["properties"])
    assert schema["additionalProperties"] is False
    json.dumps(schema)  # serialisable


def test_yaml_syntax_error_names_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nmethod: sft\ntrain: {max_steps: 3\n")
    with pytest.raises(UserError) as err:
        load_config(path)
    assert f"{path}:" in problems(err.value)[0] and "invalid YAML" in problems(err.value)[0]


def test_data_packing_is_accepted_for_every_method_and_a_refusal_names_the_field(tmp_path, monkeypatch):
    """Every method packs (#18): sft/full since the start, the pair, feedback, classification,
    embedding and online-RL methods now; a method listed in ``UNPACKABLE`` is refused with its
    reason and the field named."""
    from launcher.config import load
    from strategies import STRATEGIES

    reward = {"reward": {"function": "strategies.rl.verifiers:numeric_answer"}}
    sections = {"classify": {"labels": ["a", "b"]}, "ppo": reward, "grpo": reward}
    for method in STRATEGIES:
        cfg = tiny_config(method=method, data={"packing": True}, **{method: sections.get(method, {})})
        assert load_config(write_config(tmp_path, cfg)).data.packing, method
    monkeypatch.setitem(load.UNPACKABLE, "dpo", "pairs are not packed here")
    with pytest.raises(UserError) as err:
        load_config(write_config(tmp_path, tiny_config(method="dpo", data={"packing": True})))
    (text,) = problems(err.value)
    assert "data.packing" in text and "method 'dpo' does not pack examples: pairs are not packed here" in text
    assert "set data.packing: false" in text
