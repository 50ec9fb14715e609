"""``data.packing`` for every method that trains on sequences: the same losses and metrics as
unpacked (fp32, to 1e-5), and no token of a packed row sees another example.

Strategy level, one process: a few rows of each method's builtin synthetic task are tokenized
by the method, collated unpacked and packed (``strategy.pack_dataset``: whole pairs, KTO examples
with their KL partner, contrastive triplets, classified texts), and ``strategy.loss`` runs on the
same tiny model. Sums over items do not depend on their order, so the packer may reorder them.
The isolation checks change one example's tokens inside a packed row and compare every other
example's per-token outputs.
"""

from __future__ import annotations

import copy

import pytest
import torch

from launcher.config.load import validate_config
from launcher.core.errors import HintedValueError
from launcher.data.synthetic import generate
from launcher.models.tiny import resolve_model_path
from tests.helpers.ftl import tiny_config
from tests.helpers.models import perturbed

ROWS, MAX_LENGTH = 8, 64
TASKS = {"preference": "prefs-reverse", "feedback": "feedback-reverse", "classification": "topics",
         "pairs": "pairs-reverse"}


@pytest.fixture(scope="module")
def tiny():
    from transformers import AutoTokenizer

    path = resolve_model_path("builtin:tiny-llama")
    return path, AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def tiny_bert(tiny, tmp_path_factory):
    """A random 2-layer BERT (the architecture of all-MiniLM-L6-v2) on the tiny tokenizer."""
    from transformers import BertConfig, BertModel

    _, tok = tiny
    folder = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=128, pad_token_id=tok.pad_token_id)
    BertModel(config).save_pretrained(folder)
    return str(folder)


def strategy_for(method: str, tok, section: dict | None = None, packing: bool = True):
    from strategies import build_strategy

    extra = {method: section} if section else {}
    raw = tiny_config(method=method, train={"micro_batch_size": ROWS}, **extra)
    raw["data"] = {"train": {"path": "builtin:prefs-reverse"}, "max_length": MAX_LENGTH, "packing": packing}
    return build_strategy(validate_config(raw), tok)


def features(strategy, fmt: str, seed: int = 3) -> list[dict]:
    rows = generate(TASKS[fmt], ROWS, seed=seed)
    return strategy.prepare_features([strategy.tokenize(r, fmt) for r in rows])


def causal_lm(path: str, reference_for=None) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    if reference_for is not None:
        reference_for.use_reference_model(copy.deepcopy(model))
        perturbed(model)
    return model


CASES = [  # method, section, data format, model kind
    ("dpo", {"reference": "model"}, "preference", "lm+ref"),
    ("dpo", {"reference": "model", "loss_type": "ipo"}, "preference", "lm+ref"),
    ("cpo", None, "preference", "lm"),
    ("simpo", None, "preference", "lm"),
    ("orpo", None, "preference", "lm"),
    ("orpo", {"nll_on": "completion"}, "preference", "lm"),
    ("kto", {"reference": "model", "beta": 0.3}, "feedback", "lm+ref"),
    ("kto", {"reference": "model", "loss_type": "apo_zero_unpaired"}, "feedback", "lm+ref"),
    ("reward", {"center_rewards_coefficient": 0.01}, "preference", "head"),
    ("classify", {"labels": ["low", "mid", "high"]}, "classification", "head"),
    ("contrastive", {"pooling": "last"}, "pairs", "decoder"),
    ("contrastive", {"pooling": "mean"}, "pairs", "bert"),
]


def build(method, section, fmt, kind, tiny, tiny_bert):
    path, tok = tiny
    strategy = strategy_for(method, tok, section)
    if kind == "head":
        model = strategy.load_model(path, dtype=torch.float32).eval()
    elif kind in ("decoder", "bert"):
        model = strategy.load_model(tiny_bert if kind == "bert" else path, dtype=torch.float32).eval()
    else:
        model = causal_lm(path, strategy if kind == "lm+ref" else None)
    return strategy, model


@pytest.mark.parametrize("method,section,fmt,kind", CASES, ids=lambda v: v if isinstance(v, str) else None)
def test_packed_loss_metrics_and_gradients_equal_unpacked(method, section, fmt, kind, tiny, tiny_bert):
    strategy, model = build(method, section, fmt, kind, tiny, tiny_bert)
    feats = features(strategy, fmt)
    rows = strategy.pack_dataset(copy.deepcopy(feats))
    assert sum(len(r["units"]) for r in rows) == ROWS  # whole units, each once
    assert len(rows) < ROWS  # rows really hold several examples
    unpacked, packed = strategy.collate(feats), strategy.collate(rows)
    assert "attention_mask" not in packed
    assert strategy.count_items(packed) == strategy.count_items(unpacked) == ROWS
    a, b = strategy.loss(model, unpacked), strategy.loss(model, packed)
    loss_a, loss_b = a.loss_sum.detach() / a.count, b.loss_sum.detach() / b.count
    print(method, section, f"unpacked {float(loss_a):.8f} packed {float(loss_b):.8f} rows {len(rows)}",
          f"tokens {packed['input_ids'].numel()} vs {unpacked['input_ids'].numel()}")
    assert float(a.count) == float(b.count) == ROWS
    torch.testing.assert_close(loss_b, loss_a, atol=1e-5, rtol=1e-5)
    assert set(a.metric_sums) == set(b.metric_sums)
    for name, value in a.metric_sums.items():
        torch.testing.assert_close(b.metric_sums[name].double(), value.double(), atol=1e-5, rtol=1e-5,
                                   msg=lambda m, name=name: f"{name}: {m}")
    grads = []
    for out in (a, b):  # and the same update
        model.zero_grad()
        (out.loss_sum / out.count).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)


def _changed(batch: dict, seq: int, vocab: int) -> dict:
    """The batch with every token of output sequence ``seq`` replaced (other tokens unchanged)."""
    out = dict(batch)
    ids = batch["input_ids"].clone()
    where = batch["seq_index"] == seq
    ids[where] = (ids[where] + 7) % vocab
    out["input_ids"] = ids
    return out


@pytest.mark.parametrize("method,kind", [("dpo", "lm"), ("reward", "head"), ("contrastive", "bert"),
                                         ("contrastive", "decoder")])
def test_examples_in_one_packed_row_do_not_see_each_other(method, kind, tiny, tiny_bert):
    from strategies.preference import next_token_logps

    section = {"pooling": "mean"} if method == "contrastive" else None
    fmt = "pairs" if method == "contrastive" else "preference"
    strategy, model = build(method, section, fmt, kind, tiny, tiny_bert)
    rows = strategy.pack_dataset(features(strategy, fmt))
    batch = strategy.collate(rows[:1])  # one row, several examples
    index = batch["seq_index"]
    assert index.unique().numel() >= 4
    victim = int(index[0, 0])  # the row's first sequence
    vocab = model.config.vocab_size
    with torch.no_grad():
        if method == "dpo":  # per token: positions predicting a token of their own sequence
            same = (index[:, 1:] == index[:, :-1]) & (index[:, 1:] >= 0)
            before, after = (next_token_logps(model, b) for b in (batch, _changed(batch, victim, vocab)))
            others, mine = same & (index[:, 1:] != victim), same & (index[:, 1:] == victim)
        else:  # per sequence: its score / pooled embedding (every one of its tokens feeds it)
            fn = strategy.sequence_logits if method == "reward" else strategy.embed
            before, after = fn(model, batch), fn(model, _changed(batch, victim, vocab))
            keep = torch.arange(len(before)) != victim
            others, mine = keep, ~keep
    torch.testing.assert_close(after[others], before[others], atol=1e-5, rtol=1e-5)
    assert (after[mine] - before[mine]).abs().max() > 1e-3  # the change did reach its own sequence


def test_packed_ppo_forward_passes_equal_padded(tiny):
    """PPO/GRPO learners run padding-free with data.packing: the same per-token log-probs,
    entropies and values at every response token, the same policy and critic losses; and a
    changed prompt moves no other row's log-probs."""
    from transformers import AutoModelForTokenClassification

    from strategies.ppo.batch import collate_rollouts, policy_forward, value_forward
    from strategies.ppo.objectives import Experience, critic_loss, policy_loss_of

    path, tok = tiny
    policy = causal_lm(path)
    critic = AutoModelForTokenClassification.from_pretrained(path, num_labels=1, dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(0)
    eos = tok.eos_token_id
    prompts = [torch.randint(5, 300, (n,), generator=gen).tolist() for n in (5, 2, 9, 3)]
    responses = [torch.randint(5, 300, (n,), generator=gen).tolist() for n in (7, 3, 1, 6)]
    responses[1][1] = eos  # finished early: tokens after the EOS are masked
    padded = collate_rollouts(prompts, responses, pad_id=tok.pad_token_id, eos_ids=[eos])
    packed = padded.packed()
    mask = padded.response_mask.bool()
    rows = packed.flat_inputs()[0]["input_ids"]
    assert rows.shape[1] == padded.input_ids.shape[1] and len(rows) < len(padded)  # fewer, no wider
    with torch.no_grad():
        (lp_a, ent_a), (lp_b, ent_b) = (policy_forward(policy, b, 0.7, with_entropy=True)
                                        for b in (padded, packed))
        v_a, v_b = value_forward(critic, padded), value_forward(critic, packed)
    for a, b in ((lp_a, lp_b), (ent_a, ent_b), (v_a, v_b)):
        torch.testing.assert_close(b[mask], a[mask], atol=1e-5, rtol=1e-5)

    rl = {"rollout": {"max_new_tokens": 8}, "reward": {"function": "strategies.rl.verifiers:numeric_answer"}}
    raw = tiny_config(method="grpo", grpo={"num_generations": 2, "beta": 0.04, **rl},
                      data={"train": {"path": "builtin:prompts-letters"}, "max_length": 64, "packing": True})
    opts = validate_config(raw).method_options()
    old = lp_a + 0.1 * torch.randn(lp_a.shape, generator=gen)
    for kind in ("grpo", "bnpo", "dr_grpo"):
        adv = torch.randn(len(padded) if kind == "grpo" else mask.shape, generator=gen)
        outs = [policy_loss_of(policy, Experience(b, old, adv, ref_logprobs=old - 0.05), opts, 0.7, kind)
                for b in (padded, packed)]
        torch.testing.assert_close(outs[1].loss_sum.detach(), outs[0].loss_sum.detach(), atol=1e-5, rtol=1e-5)
        assert outs[0].items == outs[1].items
    raw = {k: v for k, v in raw.items() if k != "grpo"}
    ppo = validate_config({**raw, "method": "ppo", "ppo": rl}).method_options()
    returns = torch.randn(mask.shape, generator=gen)
    outs = [critic_loss(critic, Experience(b, old, returns, returns=returns, old_values=v_a), ppo)
            for b in (padded, packed)]
    torch.testing.assert_close(outs[1].loss_sum.detach(), outs[0].loss_sum.detach(), atol=1e-5, rtol=1e-5)

    other = [list(p) for p in prompts]
    other[0] = [(t + 7) % 300 + 5 for t in other[0]]
    changed = collate_rollouts(other, responses, pad_id=tok.pad_token_id, eos_ids=[eos]).packed()
    with torch.no_grad():
        lp_c = policy_forward(policy, changed, 0.7)[0]
    torch.testing.assert_close(lp_c[1:][mask[1:]], lp_b[1:][mask[1:]], atol=1e-5, rtol=1e-5)
    assert (lp_c[0] - lp_b[0])[mask[0]].abs().max() > 1e-3


def test_models_that_cannot_pack_exactly_are_refused(tiny, tmp_path):
    """An encoder not known to take a 4D block-diagonal mask, and a classifier that pools inside
    the model, are refused with the field named, and work without packing."""
    from transformers import BertConfig, BertForSequenceClassification, RobertaConfig, RobertaModel

    path, tok = tiny
    small = {"vocab_size": len(tok), "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 64, "max_position_embeddings": 130, "pad_token_id": tok.pad_token_id}
    RobertaModel(RobertaConfig(**small)).save_pretrained(tmp_path / "roberta")
    BertForSequenceClassification(BertConfig(**small, num_labels=3)).save_pretrained(tmp_path / "bert-cls")
    labels = {"labels": ["low", "mid", "high"]}
    cases = [("contrastive", None, tmp_path / "roberta", "'roberta' encoders"),
             ("classify", labels, tmp_path / "bert-cls", "BertForSequenceClassification")]
    for method, section, folder, named in cases:
        with pytest.raises(HintedValueError) as err:
            strategy_for(method, tok, section).load_model(str(folder))
        assert "data.packing" in str(err.value) and named in str(err.value)
        assert "data.packing: false" in err.value.hint
        strategy_for(method, tok, section, packing=False).load_model(str(folder))  # fine unpacked


def test_packed_contrastive_gathers_unequal_batches_across_ranks(tmp_path):
    """Packed micro-batches hold as many examples as fit, so ranks gather different counts of
    candidates: two gloo ranks (5 and 3 examples) give one process's loss over all 8."""
    import json
    import os
    import subprocess
    import sys

    from tests.helpers.ftl import ROOT

    out = tmp_path / "losses.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(ROOT / "tests" / "helpers" / "packed_contrastive.py"), str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = json.loads(out.read_text())
    assert losses["packed_two_ranks"] == pytest.approx(losses["unpacked_one_process"], rel=1e-5, abs=1e-5)
