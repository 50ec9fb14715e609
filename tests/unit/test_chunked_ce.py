"""Chunked cross-entropy (``model.cross_entropy: chunked``) equals the plain path: losses and
gradients within 1e-5 in fp32, on a real tiny Llama (untied and tied embeddings) and under LoRA;
activation offload changes nothing on CPU; liger is refused on a CPU-only run."""

from __future__ import annotations

import copy

import pytest
import torch

from launcher.models import chunked_ce
from launcher.models.offload import OffloadSavedTensors, activation_offload

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _model(tied: bool = False, vocab: int = 97):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=tied)
    return LlamaForCausalLM(config).float()


def _batch(vocab: int = 97, rows: int = 3, length: int = 13):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (rows, length), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 9:] = 0  # a right-padded row
    labels = ids.clone()
    labels[:, :4] = -100  # prompt tokens
    labels[2, 9:] = -100
    labels[1] = -100  # a row without a single labelled token
    return {"input_ids": ids, "attention_mask": mask}, labels


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _loss_and_grads(model, fn):
    model.zero_grad(set_to_none=True)
    loss = fn(model)
    loss.backward()
    return loss.detach(), _grads(model)


def _assert_same(a, b):
    (la, ga), (lb, gb) = a, b
    assert torch.allclose(la, lb, atol=1e-5, rtol=1e-5), (la, lb)
    assert ga.keys() == gb.keys() and ga
    for name in ga:
        assert torch.allclose(ga[name], gb[name], atol=1e-5, rtol=1e-4), name


@pytest.mark.parametrize("tied", [False, True])
def test_chunked_loss_and_grads_match_plain(tied):
    model = _model(tied)
    inputs, labels = _batch()
    names = [n for n, _ in model.named_parameters()]

    def loss(mode):
        # 7 does not divide the 24 labelled tokens
        return lambda m: chunked_ce.labelled_nll_sum(m, inputs, labels, mode=mode, chunk_tokens=7)

    plain = _loss_and_grads(model, loss("plain"))
    chunked = _loss_and_grads(model, loss("chunked"))
    _assert_same(plain, chunked)
    assert plain[0] > 0
    assert [n for n, _ in model.named_parameters()] == names  # checkpoints see the same names
    assert "lm_head.weight" in model.state_dict()
    # the patched head still returns logits outside a request (generation, evaluation)
    assert model(**inputs).logits.shape == (3, 13, 97)


def test_per_token_logps_match_plain_including_entropy_and_temperature():
    model = _model()
    inputs, labels = _batch()
    targets = inputs["input_ids"]

    def run(mode):
        model.zero_grad(set_to_none=True)
        logps, entropy = chunked_ce.token_stats(model, inputs, targets, mode=mode, chunk_tokens=5,
                                                temperature=0.7, with_entropy=True)
        # a weighted sum so every position's gradient matters
        w = torch.linspace(0.5, 1.5, logps.numel()).view_as(logps)
        ((logps * w).sum() + entropy.sum()).backward()
        return logps.detach(), entropy.detach(), _grads(model)

    lp, ep, gp = run("plain")
    lc, ec, gc = run("chunked")
    assert lp.shape == (3, 12)
    assert torch.allclose(lp, lc, atol=1e-5) and torch.allclose(ep, ec, atol=1e-5)
    for name in gp:
        assert torch.allclose(gp[name], gc[name], atol=1e-5, rtol=1e-4), name
    # per-token positions with -100 targets give 0 (the caller masks them)
    masked = chunked_ce.next_token_logps(model, inputs, labels, mode="chunked", chunk_tokens=5)
    assert (masked[labels[:, 1:] == -100] == 0).all()
    keep = labels[:, 1:] != -100
    assert torch.allclose(masked[keep], lp.new_tensor(
        chunked_ce.token_stats(model, inputs, labels, mode="plain")[0][keep]), atol=1e-5)


def test_lora_model_matches_plain():
    from launcher.models.load import apply_lora, init_adapters_deterministic

    class Peft:
        type, r, alpha, dropout, target_modules = "lora", 4, 8.0, 0.0, "all-linear"

    model = apply_lora(_model(), Peft())
    init_adapters_deterministic(model, 3)
    with torch.no_grad():  # B = 0 at init: make the adapters matter
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    inputs, labels = _batch()
    names = [n for n, _ in model.named_parameters()]
    plain = _loss_and_grads(model, lambda m: chunked_ce.labelled_nll_sum(m, inputs, labels))
    chunked = _loss_and_grads(model, lambda m: chunked_ce.labelled_nll_sum(
        m, inputs, labels, mode="chunked", chunk_tokens=4))
    _assert_same(plain, chunked)
    assert any("lora_A" in n for n in plain[1])
    assert [n for n, _ in model.named_parameters()] == names


def test_soft_capping_is_refused():
    model = _model()
    model.config.final_logit_softcapping = 30.0
    inputs, labels = _batch()
    with pytest.raises(ValueError, match="final_logit_softcapping.*model.cross_entropy: plain"):
        chunked_ce.labelled_nll_sum(model, inputs, labels, mode="chunked")


@pytest.mark.parametrize("checkpointing", [False, True])
def test_activation_offload_changes_nothing(checkpointing):
    class Cfg:
        class model:  # noqa: N801
            activation_offload = True

    base = _model()
    if checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    inputs, labels = _batch()
    other = copy.deepcopy(base)

    def fn(model):
        return chunked_ce.labelled_nll_sum(model, inputs, labels, mode="chunked", chunk_tokens=8)

    off = _loss_and_grads(base, fn)
    assert isinstance(activation_offload(Cfg), OffloadSavedTensors)

    hooks = OffloadSavedTensors(from_cpu=True)  # CPU tensors take the copy path a GPU's take

    def offloaded(model):
        with hooks:
            return fn(model)

    on = _loss_and_grads(other, offloaded)
    assert hooks.offloaded_bytes > 0 and hooks.kept_parameters > 0  # activations moved, weights stayed
    assert torch.equal(off[0], on[0])
    for name in off[1]:
        assert torch.equal(off[1][name], on[1][name]), name


def test_liger_refused_on_cpu_only_run():
    from launcher.config.load import validate_config
    from launcher.core.errors import UserError
    from tests.helpers.ftl import tiny_config

    with pytest.raises(UserError) as info:
        validate_config(tiny_config(model={"path": "builtin:tiny-llama", "cross_entropy": "liger"}))
    text = str(info.value)
    assert "model.cross_entropy" in text and "chunked" in text
    cfg = validate_config(tiny_config(model={"path": "builtin:tiny-llama", "cross_entropy": "chunked",
                                             "ce_chunk_tokens": 256, "activation_offload": True}))
    assert (cfg.model.cross_entropy, cfg.model.ce_chunk_tokens, cfg.model.activation_offload) == \
        ("chunked", 256, True)
    with pytest.raises(UserError, match="ce_chunk_tokens"):
        validate_config(tiny_config(model={"path": "builtin:tiny-llama", "ce_chunk_tokens": 0}))
    # on GPUs it passes the config check; preflight then wants the package (not installed here)
    import importlib.util

    from launcher.run.preflight import Notes, check_cross_entropy

    gpu = validate_config(tiny_config(model={"path": "builtin:tiny-llama", "cross_entropy": "liger"},
                                      resources={"num_workers": 1, "gpus_per_worker": 1}))
    if importlib.util.find_spec("liger_kernel") is None:
        (problem,) = check_cross_entropy(gpu, Notes())
        assert problem.where == "model.cross_entropy" and "pip install liger-kernel" in problem.hint
        notes = Notes()
        assert check_cross_entropy(gpu, notes, remote=True) == [] and "liger-kernel" in notes[0]


def test_call_sites_route_through_the_mode():
    """DPO/KTO/CPO's ``next_token_logps`` and PPO/GRPO's ``policy_forward`` give the plain values
    with ``model.cross_entropy: chunked``."""
    from strategies.ppo.batch import collate_rollouts, policy_forward
    from strategies.preference import next_token_logps

    model = _model()
    inputs, labels = _batch()
    batch = {**inputs, "labels": labels}
    ce = {"mode": "chunked", "chunk_tokens": 5}
    assert torch.allclose(next_token_logps(model, batch), next_token_logps(model, batch, **ce), atol=1e-5)

    rollouts = collate_rollouts([[5, 6, 7], [8, 9]], [[10, 11, 12, 2], [13]], pad_id=0, eos_ids=[2])
    plain_lp, plain_ent = policy_forward(model, rollouts, 0.8, with_entropy=True)
    lp, ent = policy_forward(model, rollouts, 0.8, with_entropy=True, ce=ce)
    assert lp.shape == plain_lp.shape == (2, 4)
    assert torch.allclose(lp, plain_lp, atol=1e-5) and torch.allclose(ent, plain_ent, atol=1e-5)
    # packed rollouts (data.packing) with chunked: the same values at every response token
    mask = rollouts.response_mask.bool()
    packed_lp, packed_ent = policy_forward(model, rollouts.packed(), 0.8, with_entropy=True, ce=ce)
    assert torch.allclose(packed_lp[mask], plain_lp[mask], atol=1e-5)
    assert torch.allclose(packed_ent[mask], plain_ent[mask], atol=1e-5)


@pytest.mark.parametrize("mode", ["plain", "chunked"])
def test_labels_shifted_beforehand_give_the_same_loss(mode):
    """A sequence-parallel shard's labels arrive shifted (``shift_labels``): the causal LM loss
    from them equals the unshifted computation, in both modes."""
    from strategies.base import causal_lm_loss

    model = _model()
    inputs, labels = _batch()
    reference = causal_lm_loss(model, {**inputs, "labels": labels})
    shifted = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], dim=1)
    out = causal_lm_loss(model, {**inputs, "shift_labels": shifted}, mode=mode, chunk_tokens=5)
    assert torch.allclose(out.loss_sum, reference.loss_sum, atol=1e-5) and out.count == reference.count


def test_a_deep_copy_of_a_patched_model_is_patched_on_its_own():
    model = _model()
    inputs, labels = _batch()
    chunked_ce.labelled_nll_sum(model, inputs, labels, mode="chunked")  # patches the head
    twin = copy.deepcopy(model)
    assert twin.lm_head.forward.__self__ is twin.lm_head
    with torch.no_grad():
        twin.lm_head.weight.mul_(2)
    a = chunked_ce.labelled_nll_sum(model, inputs, labels, mode="chunked")
    b = chunked_ce.labelled_nll_sum(twin, inputs, labels, mode="chunked")
    assert torch.allclose(b, chunked_ce.labelled_nll_sum(twin, inputs, labels), atol=1e-4)
    assert not torch.allclose(a, b)
