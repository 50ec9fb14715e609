"""Sampler, packing, SFT masks and builtin tasks, on real tokenizers and a real tiny model."""

from __future__ import annotations

import collections

import pytest
import torch

from launcher.data.batching import collate, group_texts, pack_examples
from launcher.data.sampler import StepSampler
from launcher.data.synthetic import generate, in_split


def test_sampler_partitions_global_batch_across_ranks_and_layouts():
    s = StepSampler([100], [1.0], seed=3)
    for step in range(5):
        two_ranks = [i for r in range(2) for mb in s.micro_batches(step, r, 2, 4, 2) for i in mb]
        one_rank = [i for mb in s.micro_batches(step, 0, 1, 8, 2) for i in mb]
        assert len(two_ranks) == 16
        assert sorted(two_ranks) == sorted(one_rank)  # same examples whatever the layout
    assert s.micro_batches(7, 1, 2, 4, 2) == StepSampler([100], [1.0], 3).micro_batches(7, 1, 2, 4, 2)


def test_sampler_covers_each_epoch_once():
    s = StepSampler([50], [1.0], seed=0)
    assert sorted(s.take(0, 50)) == list(range(50))
    assert sorted(s.take(50, 50)) == list(range(50))
    assert s.take(0, 50) != s.take(50, 50)  # reshuffled per epoch


def test_mixture_proportions_follow_weights():
    s = StepSampler([1000, 300, 5000], [0.5, 0.3, 0.2], seed=1)
    counts = collections.Counter(s.source_of(i) for i in s.take(0, 10_000))
    for src, weight in enumerate([0.5, 0.3, 0.2]):
        assert abs(counts[src] / 10_000 - weight) < 0.02, counts


def test_synthetic_eval_split_is_held_out():
    train = generate("reverse", 2000, seed=0, split="train")
    held = generate("reverse", 200, seed=5, split="eval")
    train_q = {r["messages"][0]["content"] for r in train}
    eval_q = {r["messages"][0]["content"] for r in held}
    assert not train_q & eval_q
    assert all(in_split(q, "eval") for q in eval_q)
    row = held[0]["messages"]
    assert row[1]["content"] == " ".join(reversed(row[0]["content"].split(": ")[1].split()))


def test_group_texts_cuts_fixed_blocks():
    blocks = group_texts([[1, 2, 3], [4, 5], [6, 7, 8, 9]], 4)
    assert blocks == [[1, 2, 3, 4], [5, 6, 7, 8]]


@pytest.fixture(scope="module")
def tiny():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from launcher.models.tiny import resolve_model_path

    path = resolve_model_path("builtin:tiny-llama")
    return AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path).eval()


def _segments(row: dict) -> list[tuple[int, int]]:
    """(start, length) of each example in a packed row, read from its restarting position ids."""
    starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["position_ids"])]
    return [(a, b - a) for a, b in zip(starts, starts[1:])]


def test_packed_rows_do_not_attend_across_examples(tiny):
    tok, model = tiny
    examples = [tok(t)["input_ids"] for t in ["reverse: a b c", "copy: d e", "add: 1 + 2 = 3 and more"]]
    features = [{"input_ids": ids, "labels": ids} for ids in examples]
    rows = pack_examples(features, max_length=64)
    assert len(rows) == 1 and len(_segments(rows[0])) == 3
    packed = collate(rows, pad_id=tok.pad_token_id)
    assert "attention_mask" not in packed
    with torch.no_grad():
        packed_logits = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"],
                              use_cache=False).logits[0]
        for start, n in _segments(rows[0]):
            ids = rows[0]["input_ids"][start:start + n]
            assert ids in examples
            alone = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0]
            torch.testing.assert_close(packed_logits[start:start + n], alone, atol=1e-5, rtol=1e-5)


def test_packing_is_best_fit_and_keeps_every_example_once():
    """Lengths 3,6,2,5,4,11 into rows of 8: best fit decreasing fills 8, 6+2, 5+3, 4 (4 rows);
    next-fit in this order needs 5 (3 | 6,2 | 5 | 4 | 8). Too-long examples are truncated, none is lost."""
    lengths = [3, 6, 2, 5, 4, 11]
    features = [{"input_ids": [100 * k + i for i in range(n)], "labels": [100 * k + i for i in range(n)]}
                for k, n in enumerate(lengths)]
    rows = pack_examples(features, max_length=8)
    assert sorted(len(r["input_ids"]) for r in rows) == [4, 8, 8, 8]  # 11 truncated to a full row
    pieces = sorted(r["input_ids"][a:a + n] for r in rows for a, n in _segments(r))
    assert pieces == sorted(f["input_ids"][:8] for f in features)
    for r in rows:
        for a, _ in _segments(r):
            assert r["labels"][a] == -100  # no prediction across a boundary
        assert len(r["labels"]) == len(r["position_ids"]) == len(r["input_ids"]) <= 8


def test_packed_loss_equals_the_examples_losses_summed(tiny):
    """Every token labelled: packing trains no prediction across a boundary, so the packed
    row's summed loss and item count are those of the examples run one by one."""
    from strategies.base import causal_lm_loss

    tok, model = tiny
    examples = [tok(t)["input_ids"] for t in ["reverse: a b c", "copy: d e", "add: 1 + 2 = 3 and more"]]
    features = [{"input_ids": ids, "labels": ids} for ids in examples]
    packed = collate(pack_examples(features, max_length=64), pad_id=tok.pad_token_id)
    alone = [causal_lm_loss(model, collate([f], pad_id=tok.pad_token_id)) for f in features]
    with torch.no_grad():
        out = causal_lm_loss(model, packed)
    assert int(out.count) == sum(int(a.count) for a in alone) == sum(len(e) - 1 for e in examples)
    assert float(out.loss_sum) == pytest.approx(sum(float(a.loss_sum) for a in alone), rel=1e-5)


def test_sft_masks_assistant_tokens_with_and_without_generation_markers(tiny):
    from launcher.config.load import validate_config
    from strategies.sft import SFTStrategy
    from tests.helpers.ftl import tiny_config

    tok, _ = tiny
    cfg = validate_config(tiny_config())
    messages = [{"role": "user", "content": "reverse: a b"}, {"role": "assistant", "content": "b a"},
                {"role": "user", "content": "copy: c"}, {"role": "assistant", "content": "c"}]
    with_markers = SFTStrategy(cfg, tok).tokenize({"messages": messages}, "messages")
    plain = tok.__class__.from_pretrained(tok.name_or_path)
    plain.chat_template = tok.chat_template.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    without = SFTStrategy(cfg, plain).tokenize({"messages": messages}, "messages")
    assert with_markers["input_ids"] == without["input_ids"]
    trained = [tok.decode([t]) for t in with_markers["labels"] if t != -100]
    assert "".join(trained) == "b a<|im_end|>c<|im_end|>"
    # The fallback marks the same answer tokens (it may also include the turn's trailing newline).
    fallback = "".join(tok.decode([t]) for t in without["labels"] if t != -100)
    assert fallback.replace("\n", "") == "b a<|im_end|>c<|im_end|>"


def test_prompt_completion_trains_completion_and_eos(tiny):
    from launcher.config.load import validate_config
    from strategies.sft import SFTStrategy
    from tests.helpers.ftl import tiny_config

    tok, _ = tiny
    ex = SFTStrategy(validate_config(tiny_config()), tok).tokenize(
        {"prompt": "add: 1 + 2 =", "completion": " 3"}, "prompt_completion")
    trained = [t for t in ex["labels"] if t != -100]
    assert tok.decode(trained) == " 3<|im_end|>"
