"""The MFU benchmark's FLOP accounting: its weight count is the model's, and packed rows are
split into their examples (attention FLOPs grow with each example's length, not the row's)."""

from __future__ import annotations

import sys

import pytest
import torch

from tests.helpers.ftl import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
bench_mfu = pytest.importorskip("bench_mfu")


@pytest.mark.parametrize("preset", sorted(bench_mfu.PRESETS))
def test_matmul_weights_are_the_models_linear_weights(preset):
    from transformers import AutoModelForCausalLM, LlamaConfig

    p = bench_mfu.PRESETS[preset]
    config = LlamaConfig(vocab_size=p.vocab, hidden_size=p.hidden, intermediate_size=p.intermediate,
                         num_hidden_layers=p.layers, num_attention_heads=p.heads,
                         num_key_value_heads=p.kv_heads, tie_word_embeddings=False)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert bench_mfu.matmul_weights(p) == linear
    if preset == "gpu-1b":  # TinyLlama-1.1B's shape
        assert sum(t.numel() for t in model.parameters()) == 1_100_048_384


def test_packed_rows_count_each_examples_attention():
    from launcher.data.batching import pack_examples

    p = bench_mfu.PRESETS["cpu"]
    features = [{"input_ids": list(range(n)), "labels": list(range(n))} for n in (100, 60, 40, 200)]
    rows = pack_examples(features, max_length=p.max_length)
    lengths = sorted(n for row in rows for n in bench_mfu.example_lengths(row))
    assert lengths == [40, 60, 100, 200]
    packed = sum(bench_mfu.example_flops(p, n) for row in rows for n in bench_mfu.example_lengths(row))
    assert packed == pytest.approx(sum(bench_mfu.example_flops(p, n) for n in (100, 60, 40, 200)))
    assert bench_mfu.example_flops(p, 2) - 2 * bench_mfu.example_flops(p, 1) == 24.0 * p.layers * p.hidden
