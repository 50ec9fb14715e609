"""Planner terms of the memory switches (``model.cross_entropy``, ``model.activation_offload``,
``sharding.sp_size``) and, on a large-vocabulary tiny Llama, the measured saving of chunked
cross-entropy against the planner's prediction."""

from __future__ import annotations

import threading
from io import StringIO

from rich.console import Console

from launcher.plan import memory_model as mm
from scripts.bench import memory as bench_memory  # the benchmark's one-configuration measurement

SHAPE = mm.ModelShape(params=8_030_261_248, trainable=8_030_261_248, layers=32, hidden=4096,
                      intermediate=14336, heads=32, kv_heads=8, head_dim=128, vocab=128256,
                      largest_module=525_336_576, largest_block=218_112_000, outside_blocks=1_050_677_248)
ZERO3 = mm.Layout(kind="deepspeed", world=8, ranks_per_node=8, zero_stage=3)


def _work(**kw) -> mm.Workload:
    return mm.Workload(**{"micro_batch": 2, "seq_len": 4096, "dtype": "bf16", **kw})


def test_logits_term_follows_cross_entropy():
    plain = mm.activation_memory(SHAPE, _work(), ZERO3)["logits"]
    assert plain == 3 * 4 * 8192 * 128256
    chunked = mm.activation_memory(SHAPE, _work(cross_entropy="chunked", ce_chunk_tokens=1024),
                                   ZERO3)["logits"]
    assert chunked == 2 * 4 * 1024 * 128256 and chunked < plain / 10
    # a chunk larger than the micro-batch holds only the micro-batch's tokens
    small = mm.activation_memory(SHAPE, _work(micro_batch=1, seq_len=512, cross_entropy="chunked",
                                              ce_chunk_tokens=4096), ZERO3)["logits"]
    assert small == 2 * 4 * 512 * 128256
    liger = mm.activation_memory(SHAPE, _work(cross_entropy="liger"), ZERO3)["logits"]
    assert chunked / 4 < liger < plain / 4


def test_offload_moves_saved_layers_to_host_ram():
    work = _work(gradient_checkpointing=True)
    on_gpu = mm.policy_memory(SHAPE, work, ZERO3)
    offloaded = mm.policy_memory(SHAPE, _work(gradient_checkpointing=True, activation_offload=True), ZERO3)
    saved, current = mm.saved_activations(SHAPE, work, ZERO3)
    assert saved == 32 * 2 * 4096 * 8192  # every layer's bf16 input
    assert on_gpu.gpu["activations"] - offloaded.gpu["activations"] == saved
    assert offloaded.cpu_steady["offloaded_activations"] == 8 * saved  # 8 ranks on the node
    assert "offloaded_activations" not in on_gpu.cpu_steady
    # without checkpointing every layer but the one being computed moves
    full = mm.policy_memory(SHAPE, _work(activation_offload=True), ZERO3)
    layer = mm.layer_bytes_per_token(SHAPE, _work(), "half") * 8192
    assert full.cpu_steady["offloaded_activations"] == 8 * 31 * layer
    assert full.gpu["activations"] < mm.policy_memory(SHAPE, _work(), ZERO3).gpu["activations"] / 20


def test_sequence_parallel_divides_activation_and_logits_terms():
    one = mm.activation_memory(SHAPE, _work(gradient_checkpointing=True), ZERO3)
    four = mm.activation_memory(SHAPE, _work(gradient_checkpointing=True, sp_size=4), ZERO3)
    assert four["logits"] * 4 == one["logits"]
    assert four["activations"] * 4 == one["activations"]


def test_planner_reads_the_switches_from_the_config():
    from launcher.config.load import validate_config
    from launcher.plan.sizing import workload
    from tests.helpers.ftl import tiny_config

    cfg = validate_config(tiny_config(model={"path": "builtin:tiny-llama", "cross_entropy": "chunked",
                                             "ce_chunk_tokens": 96, "activation_offload": True}))
    work = workload(cfg)
    assert (work.cross_entropy, work.ce_chunk_tokens, work.activation_offload, work.sp_size) == \
        ("chunked", 96, True, 1)


def test_measured_logits_saving_matches_the_planner():
    """Peak RSS of one training step (fresh process each), plain vs chunked, on a Llama with
    SmolLM2's 49,152-token vocabulary: the difference is the planner's logits(plain) -
    logits(chunked) within 15%, and chunked's whole step stays under a quarter of plain's."""
    opts = {"micro": 2, "seq": 256, "threads": 1}
    results: dict[str, dict] = {}

    def run(mode: str, extra: dict) -> None:
        results[mode] = bench_memory.run_one({**opts, "cross_entropy": mode, **extra})

    threads = [threading.Thread(target=run, args=("plain", {})),
               threading.Thread(target=run, args=("chunked", {"ce_chunk_tokens": 128}))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    plain, chunked = results["plain"], results["chunked"]
    measured = plain["peak_bytes"] - chunked["peak_bytes"]
    predicted = plain["planned_logits"] - chunked["planned_logits"]
    print(f"\nplain peak {plain['peak_bytes'] / 2**20:.1f} MiB, "
          f"chunked {chunked['peak_bytes'] / 2**20:.1f} MiB; "
          f"measured difference {measured / 2**20:.1f} MiB, planned {predicted / 2**20:.1f} MiB "
          f"({measured / predicted - 1:+.1%})")
    assert predicted == 3 * 4 * 512 * 49152 - 2 * 4 * 128 * 49152
    assert abs(measured - predicted) <= 0.15 * predicted
    assert chunked["peak_bytes"] < plain["peak_bytes"] / 4


def test_auto_turns_on_chunked_cross_entropy_only_when_nothing_fits_without(tmp_path):
    """8B LoRA at 32k tokens per micro-batch on 40 GB GPUs: the logits alone (50 GB) do not fit any
    sharding; with chunked cross-entropy ddp fits. The plan says so, ``ftl run`` writes it into the
    run's config.yaml, and that config chooses the same sharding on the ranks."""
    from launcher.plan.auto_sharding import apply_chosen_switches, chosen_section
    from launcher.plan.planner import make_plan
    from launcher.plan.view import render_plan
    from tests.helpers.hub import hub_config

    sections = {"sharding": {"backend": "auto"}, "data": {"max_length": 16384},
                "train": {"micro_batch_size": 2}, "resources": {"gpu_memory_gb": 40},
                "peft": {"r": 16, "alpha": 32}}
    cfg = hub_config("meta-llama/Llama-3.1-8B-Instruct", **sections)
    plan = make_plan(cfg)
    assert plan["sharding"]["memory_switches"] == {"model.cross_entropy": "chunked"}
    assert plan["memory"]["fits"]
    assert plan["memory"]["roles"]["policy"]["gpu"]["logits"] == 2 * 4 * 1024 * 128256
    assert not any(t["fits"] for t in plan["sharding"]["tried"] if "switches" not in t)
    assert "auto turned on model.cross_entropy: chunked" in plan["memory"]["warnings"][0]
    prepared = apply_chosen_switches(cfg, plan)
    assert prepared.model.cross_entropy == "chunked" and cfg.model.cross_entropy == "plain"
    assert chosen_section(prepared).backend == plan["sharding"]["settings"]["backend"]
    out = StringIO()
    render_plan(plan, Console(file=out, width=200))
    assert "+ model.cross_entropy: chunked" in out.getvalue()
