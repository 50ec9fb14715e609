"""The GRPO family's objective equals TRL 1.16's ``GRPOTrainer._compute_loss`` on the same batch
(loss and gradients), for every loss type, both importance-sampling levels, clip-higher, the KL
term and vLLM's truncated importance weights; RLOO and REINFORCE++ advantages equal an
independent NumPy reference; DAPO's shaping on hand-computed values.

TRL is the reference: a real ``GRPOTrainer`` (tiny random Llama, offline) computes the loss of a
hand-made batch; ftl computes the same per-token log-probs with its own forward
(``strategies.ppo.batch.policy_forward``) and its objective.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from launcher.models.tiny import resolve_model_path
from strategies.rl.math import group_advantages
from strategies.rl.policy import (
    groups_with_signal,
    overlong_penalty,
    policy_objective,
    reinforce_pp_advantages,
    rloo_advantages,
    truncated_is_weights,
)

B, P, T, MAX_LEN = 6, 5, 7, 9


@pytest.fixture(scope="module")
def batch():
    gen = torch.Generator().manual_seed(0)
    prompt_ids = torch.randint(5, 300, (B, P), generator=gen)
    prompt_mask = torch.ones(B, P, dtype=torch.long)  # unpadded: TRL's forward passes no position ids
    completion_ids = torch.randint(5, 300, (B, T), generator=gen)
    completion_mask = torch.ones(B, T, dtype=torch.long)
    for row, length in enumerate([7, 3, 5, 1, 6, 2]):
        completion_mask[row, length:] = 0
    return prompt_ids, prompt_mask, completion_ids, completion_mask


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    path = resolve_model_path("builtin:tiny-llama")
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    policy = copy.deepcopy(ref)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return path, policy, ref


@pytest.fixture(autouse=True)
def single_process(monkeypatch):
    """A torch.distributed rank's variables left by an earlier in-process test (launcher.train.dist sets
    RANK/WORLD_SIZE) would make accelerate try an env:// rendezvous inside TRL's trainer."""
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)


def _trainer(path, policy, tmp, **config):
    import datasets
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(output_dir=str(tmp), per_device_train_batch_size=B, num_generations=2,
                      max_completion_length=MAX_LEN, report_to=[], use_cpu=True, temperature=0.7,
                      logging_steps=1, bf16=False, **config)
    data = datasets.Dataset.from_list([{"prompt": "q"}] * B)
    return GRPOTrainer(model=policy, reward_funcs=lambda completions, **_: [0.0] * len(completions),
                       args=args, train_dataset=data)


def _logprobs(model, batch, temperature=0.7):
    from strategies.ppo.batch import RolloutBatch, policy_forward

    return policy_forward(model, RolloutBatch(*batch), temperature)[0]


CASES = [
    ("grpo", "token", {}, None),
    ("bnpo", "token", {}, None),
    ("dr_grpo", "token", {}, None),
    ("dapo", "token", {"epsilon_high": 0.28}, None),
    ("grpo", "sequence", {"beta": 0.0}, "gspo"),
    ("grpo", "token", {"beta": 0.04, "use_bias_correction_kl": False}, None),
    ("bnpo", "token", {"beta": 0.04, "use_bias_correction_kl": True}, None),
]


@pytest.mark.parametrize("trl_loss,level,extra,ftl_loss", CASES)
@pytest.mark.parametrize("with_is", [False, True])
def test_objective_equals_trl_grpo_loss_and_gradients(models, batch, tmp_path, trl_loss, level, extra,
                                                      ftl_loss, with_is):
    path, policy, ref = models
    config = {"loss_type": trl_loss, "importance_sampling_level": level, "beta": 0.0, **extra}
    trainer = _trainer(path, copy.deepcopy(policy), tmp_path, **config)
    model = trainer.model
    prompt_ids, prompt_mask, completion_ids, completion_mask = batch
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        current = _logprobs(model, batch)
        old = current + 0.3 * torch.randn(current.shape, generator=gen)  # ratios away from 1: clips fire
        ref_lp = _logprobs(ref, batch)
        engine = old + 0.05 * torch.randn(current.shape, generator=gen)
    advantages = torch.tensor([1.0, -0.5, 0.3, -1.2, 0.8, -0.1])
    is_weights = truncated_is_weights(old, engine, completion_mask, cap=2.0) if with_is else None
    inputs = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
              "completion_mask": completion_mask, "advantages": advantages, "old_per_token_logps": old,
              "ref_per_token_logps": ref_lp, "num_items_in_batch": completion_mask.sum()}
    if with_is:
        trainer.use_vllm, trainer.vllm_importance_sampling_correction = True, True
        inputs["importance_sampling_ratio"] = is_weights
    trainer.current_gradient_accumulation_steps = 1  # set by TRL's training_step; one micro-batch here
    model.train()
    trainer.model.zero_grad()
    trl_value = trainer._compute_loss(model, inputs)
    trl_value.backward()
    trl_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]

    model.zero_grad()
    ours = policy_objective(_logprobs(model, batch), old, advantages, completion_mask,
                            loss_type=ftl_loss or trl_loss, clip_low=0.2,
                            clip_high=extra.get("epsilon_high", 0.2), ref_logprobs=ref_lp,
                            beta=extra.get("beta", 0.0), is_weights=is_weights, max_completion_length=MAX_LEN,
                            kl_ratio=extra.get("use_bias_correction_kl", False))
    loss = ours["loss_sum"] / ours["normalizer"]
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert abs(float(loss) - float(trl_value)) < 1e-6, (float(loss), float(trl_value))
    assert len(grads) == len(trl_grads)
    for g, t in zip(grads, trl_grads):
        torch.testing.assert_close(g, t, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("scale", [True, False])
def test_group_advantages_equal_trl_group_and_none_scaling(scale):
    scores = torch.tensor([1.0, 0.0, 0.5, 0.5, 2.0, -1.0, 3.0, 3.0])
    grouped = scores.view(-1, 2)
    expected = (grouped - grouped.mean(1, keepdim=True))
    if scale:  # TRL: / (nanstd + 1e-4), unbiased std
        expected = expected / (grouped.std(1, keepdim=True) + 1e-4)
    torch.testing.assert_close(group_advantages(scores, 2, scale=scale), expected.reshape(-1))


def _numpy_rloo(r: np.ndarray, g: int) -> np.ndarray:
    out = np.empty_like(r)
    for start in range(0, len(r), g):
        for i in range(start, start + g):
            others = [r[j] for j in range(start, start + g) if j != i]
            out[i] = r[i] - sum(others) / len(others)
    return out


def _numpy_reinforce_pp(r: np.ndarray, g: int | None) -> np.ndarray:
    r = r.astype(np.float64).copy()
    if g is not None:
        for start in range(0, len(r), g):
            r[start:start + g] -= r[start:start + g].mean()
    return (r - r.mean()) / (r.std(ddof=1) + 1e-8)


def test_rloo_and_reinforce_pp_equal_a_numpy_reference():
    rng = np.random.default_rng(0)
    r = rng.normal(size=12).astype(np.float32)
    t = torch.from_numpy(r)
    np.testing.assert_allclose(rloo_advantages(t, 4).numpy(), _numpy_rloo(r, 4), atol=1e-6)
    np.testing.assert_allclose(reinforce_pp_advantages(t).numpy(), _numpy_reinforce_pp(r, None), atol=1e-5)
    np.testing.assert_allclose(reinforce_pp_advantages(t, 3).numpy(), _numpy_reinforce_pp(r, 3), atol=1e-5)
    assert float(rloo_advantages(t, 4).view(-1, 4).sum(1).abs().max()) < 1e-5  # zero-sum per group


def test_dapo_shaping_and_importance_weights_on_hand_computed_values():
    lengths = torch.tensor([10, 12, 14, 16, 20])
    # max 16, buffer 4: free up to 12, then -0.25 per token, -1 at and past 16
    assert overlong_penalty(lengths, 16, 4).tolist() == [0.0, 0.0, -0.5, -1.0, -1.0]
    assert overlong_penalty(lengths, 16, 4, factor=0.5).tolist() == [0.0, 0.0, -0.25, -0.5, -0.5]
    signal = groups_with_signal(torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5]), 2)
    assert signal.tolist() == [False, True, False]
    old = torch.tensor([[0.0, -1.0, -2.0], [-1.0, -1.0, 0.0]])
    engine = torch.tensor([[-1.0, -1.0, -1.0], [-0.5, -1.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    e = float(np.e)
    token = truncated_is_weights(old, engine, mask, mode="token_truncate", cap=2.0)
    torch.testing.assert_close(token, torch.tensor([[2.0, 1.0, 1 / e], [e ** -0.5, 1.0, 0.0]]))
    masked = truncated_is_weights(old, engine, mask, mode="token_mask", cap=2.0)
    torch.testing.assert_close(masked, torch.tensor([[0.0, 1.0, 1 / e], [e ** -0.5, 1.0, 0.0]]))
    seq = truncated_is_weights(old, engine, mask, mode="sequence_truncate", cap=2.0)
    torch.testing.assert_close(seq, torch.tensor([[1.0, 1.0, 1.0], [e ** -0.5, e ** -0.5, 0.0]]))


def test_the_objective_reproduces_the_numpy_checked_ppo_and_grpo_losses():
    """``strategies.rl.math.policy_loss`` (PPO) and ``grpo_loss`` are checked against NumPy in
    test_rl_math.py; the objective the learners use gives the same values (bnpo = PPO's token mean)."""
    from strategies.rl.math import grpo_loss, policy_loss

    gen = torch.Generator().manual_seed(3)
    logp, old, ref = (torch.randn(4, 6, generator=gen) * 0.3 - 1 for _ in range(3))
    mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3, [1] * 5 + [0], [1] + [0] * 5])
    token_adv = torch.randn(4, 6, generator=gen)
    ppo = policy_objective(logp, old, token_adv, mask, loss_type="bnpo", clip_low=0.2, clip_high=0.2)
    expected = policy_loss(logp, old, token_adv, mask, 0.2)
    torch.testing.assert_close(ppo["loss_sum"] / ppo["normalizer"], expected["loss"])
    torch.testing.assert_close(ppo["clip_low"] + ppo["clip_high"], expected["clip_fraction"])
    seq_adv = torch.randn(4, generator=gen)
    grpo = policy_objective(logp, old, seq_adv, mask, loss_type="grpo", clip_low=0.2, clip_high=0.2,
                            ref_logprobs=ref, beta=0.1)
    torch.testing.assert_close(grpo["loss_sum"] / grpo["normalizer"],
                               grpo_loss(logp, old, ref, seq_adv, mask, 0.2, 0.1)["loss"])
