"""PPO/GRPO math in ``strategies.rl.math`` against an independent NumPy reference.

The reference below is deliberately naive: plain Python loops over rows and time steps, reading
only the real tokens of each row (its length), so it shares no vectorised trick or masking code
with the torch implementation. Inputs are fixed random tensors of several shapes, with response
lengths that differ per row (one full-length row, one single-token row) and NaN in the padding,
which checks that nothing after EOS ever leaks into a result.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from strategies.rl.math import (
    entropy_from_logits,
    gae,
    group_advantages,
    grpo_loss,
    kl_per_token,
    logprobs_from_logits,
    masked_mean,
    masked_whiten,
    policy_loss,
    shaped_rewards,
    value_loss,
)

SHAPES = [(1, 1), (3, 7), (5, 16), (8, 33)]
DTYPES = [(torch.float64, 1e-6), (torch.float32, 1e-5)]
CASES = [(shape, dtype, tol) for shape in SHAPES for dtype, tol in DTYPES]
CASE_IDS = [f"{b}x{t}-{str(d).split('.')[-1]}" for (b, t), d, _ in CASES]


# ----------------------------------------------------------------------------- fixtures


class Batch:
    """Fixed random rollout tensors as float64 NumPy arrays, rounded to ``dtype`` first.

    Rounding to the tested dtype before the reference sees the numbers means the reference and
    the implementation read identical inputs; only their arithmetic differs.
    """

    def __init__(self, shape: tuple[int, int], dtype: torch.dtype, seed: int = 0, nan_padding: bool = True):
        B, T = shape
        rng = np.random.default_rng(seed + 1000 * B + T)
        lengths = rng.integers(1, T + 1, size=B)
        lengths[0] = T  # truncated at the length limit: no padding at all
        if B > 1:
            lengths[-1] = 1  # EOS right away
        self.B, self.T, self.dtype = B, T, dtype
        self.lengths = [int(n) for n in lengths]
        self.mask = np.array([[1.0 if t < n else 0.0 for t in range(T)] for n in self.lengths])

        def draw(scale: float, loc: float = 0.0) -> np.ndarray:
            x = rng.normal(loc, scale, size=(B, T))
            x = torch.tensor(x, dtype=dtype).double().numpy()  # round to the tested dtype
            if nan_padding:
                x = np.where(self.mask > 0, x, np.nan)
            return x

        self.logp = -np.abs(draw(1.5))
        self.old_logp = self.logp + draw(0.25)  # ratios spread around 1, many beyond 1 +- 0.2
        self.ref_logp = self.logp + draw(0.5)
        self.advantages = draw(1.0)
        self.values = draw(1.0)
        self.old_values = self.values + draw(0.3)
        self.returns = draw(1.5)
        self.rewards = draw(0.5)
        seq = rng.normal(0.0, 1.0, size=B)
        self.seq_advantages = torch.tensor(seq, dtype=dtype).double().numpy()
        self.scores = torch.tensor(rng.normal(0.0, 2.0, size=B), dtype=dtype).double().numpy()

    def t(self, x: np.ndarray) -> torch.Tensor:
        return torch.tensor(x, dtype=self.dtype)

    @property
    def mask_t(self) -> torch.Tensor:
        return torch.tensor(self.mask > 0)


def close(actual: torch.Tensor, expected, tol: float) -> bool:
    """Element-wise within ``tol`` (relative and absolute); prints the worst miss when not."""
    got = actual.detach().double().numpy()
    want = np.asarray(expected, dtype=np.float64)
    ok = got.shape == np.broadcast(got, want).shape and np.allclose(got, want, rtol=tol, atol=tol)
    if not ok:
        print("mismatch:\n got", got, "\n want", want)
    return bool(ok)


# ----------------------------------------------------------------------------- NumPy reference


def ref_kl(lp: float, rp: float, kind: str) -> float:
    if kind == "k1":
        return lp - rp
    if kind == "k2":
        return 0.5 * (lp - rp) ** 2
    return math.exp(rp - lp) - (rp - lp) - 1.0


def ref_masked_mean(x: np.ndarray, lengths: list[int], dim: int | None) -> np.ndarray:
    B, T = x.shape
    if dim is None:
        total, count = 0.0, 0
        for b in range(B):
            for t in range(lengths[b]):
                total += x[b, t]
                count += 1
        return np.array(total / max(count, 1))
    if dim in (-1, 1):
        out = np.zeros(B)
        for b in range(B):
            total = 0.0
            for t in range(lengths[b]):
                total += x[b, t]
            out[b] = total / max(lengths[b], 1)
        return out
    out = np.zeros(T)
    for t in range(T):
        total, count = 0.0, 0
        for b in range(B):
            if t < lengths[b]:
                total += x[b, t]
                count += 1
        out[t] = total / max(count, 1)
    return out


def ref_whiten(x: np.ndarray, lengths: list[int], shift_mean: bool, eps: float) -> np.ndarray:
    real = [x[b, t] for b in range(x.shape[0]) for t in range(lengths[b])]
    n = len(real)
    mean = sum(real) / n
    var = sum((v - mean) ** 2 for v in real) / (n - 1)
    out = np.zeros_like(x)
    for b in range(x.shape[0]):
        for t in range(lengths[b]):
            out[b, t] = (x[b, t] - mean) / math.sqrt(var + eps) + (0.0 if shift_mean else mean)
    return out


def ref_shaped_rewards(batch: Batch, kl_coef: float, kind: str) -> tuple[np.ndarray, np.ndarray]:
    rewards = np.zeros((batch.B, batch.T))
    kl = np.zeros((batch.B, batch.T))
    for b in range(batch.B):
        for t in range(batch.lengths[b]):
            kl[b, t] = ref_kl(batch.logp[b, t], batch.ref_logp[b, t], kind)
            rewards[b, t] = -kl_coef * kl[b, t]
            if t == batch.lengths[b] - 1:
                rewards[b, t] += batch.scores[b]
    return rewards, kl


def ref_gae(rewards, values, lengths, gamma, lam) -> tuple[np.ndarray, np.ndarray]:
    B, T = rewards.shape
    adv = np.zeros((B, T))
    ret = np.zeros((B, T))
    for b in range(B):
        running = 0.0
        for t in reversed(range(lengths[b])):
            next_value = values[b, t + 1] if t + 1 < lengths[b] else 0.0  # terminal after the last token
            delta = rewards[b, t] + gamma * next_value - values[b, t]
            running = delta + gamma * lam * running
            adv[b, t] = running
            ret[b, t] = running + values[b, t]
    return adv, ret


def ref_policy_loss(batch: Batch, clip_eps: float) -> dict[str, float]:
    total = clipped_count = sq = 0.0
    n = 0
    for b in range(batch.B):
        for t in range(batch.lengths[b]):
            d = batch.logp[b, t] - batch.old_logp[b, t]
            ratio = math.exp(d)
            a = batch.advantages[b, t]
            plain = -a * ratio
            clipped = -a * min(max(ratio, 1 - clip_eps), 1 + clip_eps)
            total += max(plain, clipped)
            clipped_count += 1.0 if clipped > plain else 0.0
            sq += d * d
            n += 1
    return {"loss": total / n, "clip_fraction": clipped_count / n, "approx_kl": 0.5 * sq / n}


def ref_value_loss(batch: Batch, clip_value: float) -> dict[str, float]:
    total = clipped_count = 0.0
    n = 0
    for b in range(batch.B):
        for t in range(batch.lengths[b]):
            v, old, r = batch.values[b, t], batch.old_values[b, t], batch.returns[b, t]
            v_clipped = min(max(v, old - clip_value), old + clip_value)
            e1, e2 = (v - r) ** 2, (v_clipped - r) ** 2
            total += max(e1, e2)
            clipped_count += 1.0 if e2 > e1 else 0.0
            n += 1
    return {"loss": 0.5 * total / n, "clip_fraction": clipped_count / n}


def ref_log_softmax_row(z: np.ndarray) -> np.ndarray:
    top = max(z)
    lse = top + math.log(sum(math.exp(v - top) for v in z))
    return np.array([v - lse for v in z])


def ref_group_advantages(scores, group_size: int, scale: bool, eps: float) -> np.ndarray:
    out = np.zeros(len(scores))
    for start in range(0, len(scores), group_size):
        group = [float(s) for s in scores[start : start + group_size]]
        mean = sum(group) / group_size
        std = math.sqrt(sum((s - mean) ** 2 for s in group) / (group_size - 1)) if group_size > 1 else 0.0
        for i, s in enumerate(group):
            out[start + i] = (s - mean) / (std + eps) if scale else s - mean
    return out


def ref_grpo_loss(batch: Batch, clip_eps: float, beta: float) -> dict[str, float]:
    loss = kl_total = clipped_count = 0.0
    n_tokens = 0
    for b in range(batch.B):
        a = batch.seq_advantages[b]
        seq_total = 0.0
        for t in range(batch.lengths[b]):
            lp, old, ref = batch.logp[b, t], batch.old_logp[b, t], batch.ref_logp[b, t]
            ratio = math.exp(lp - old)
            surrogate = min(ratio * a, min(max(ratio, 1 - clip_eps), 1 + clip_eps) * a)
            k3 = math.exp(ref - lp) - (ref - lp) - 1.0
            seq_total += -surrogate + beta * k3
            kl_total += k3
            # clipping removes the gradient when the ratio left the trust region in A's direction
            if (ratio > 1 + clip_eps and a > 0) or (ratio < 1 - clip_eps and a < 0):
                clipped_count += 1.0
            n_tokens += 1
        loss += seq_total / batch.lengths[b]
    return {"loss": loss / batch.B, "kl": kl_total / n_tokens, "clip_fraction": clipped_count / n_tokens}


# ----------------------------------------------------------------------------- masked statistics


@pytest.mark.parametrize("shape,dtype,tol", CASES, ids=CASE_IDS)
def test_masked_mean_matches_reference(shape, dtype, tol):
    batch = Batch(shape, dtype)
    x = batch.t(batch.values)
    for dim in (None, -1, 0):
        want = ref_masked_mean(batch.values, batch.lengths, dim)
        assert close(masked_mean(x, batch.mask_t, dim=dim), want, tol)
    # an int 0/1 mask means the same as a bool one
    int_mask = torch.tensor(batch.mask, dtype=torch.long)
    assert close(masked_mean(x, int_mask), ref_masked_mean(batch.values, batch.lengths, None), tol)


def test_masked_mean_of_empty_row_is_zero_not_nan():
    x = torch.tensor([[1.0, 2.0, 3.0], [float("nan"), 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    assert close(masked_mean(x, mask, dim=-1), [1.5, 0.0], 1e-7)
    assert close(masked_mean(x, mask), 1.5, 1e-7)
    assert close(masked_mean(x, torch.zeros_like(mask)), 0.0, 1e-7)


WHITEN_CASES = [(c, i) for c, i in zip(CASES, CASE_IDS) if c[0] != (1, 1)]  # needs >= 2 real tokens


@pytest.mark.parametrize("shape,dtype,tol", [c for c, _ in WHITEN_CASES], ids=[i for _, i in WHITEN_CASES])
@pytest.mark.parametrize("shift_mean", [True, False])
def test_masked_whiten_matches_reference(shape, dtype, tol, shift_mean):
    batch = Batch(shape, dtype)
    out = masked_whiten(batch.t(batch.advantages), batch.mask_t, shift_mean=shift_mean)
    assert close(out, ref_whiten(batch.advantages, batch.lengths, shift_mean, 1e-8), tol)
    assert (out[~batch.mask_t] == 0).all()
    if shift_mean:
        real = out[batch.mask_t].double()
        assert close(real.mean(), 0.0, tol)
        assert close(real.var(unbiased=True), 1.0, tol * 10)


def test_masked_whiten_needs_two_tokens():
    with pytest.raises(ValueError, match="at least 2"):
        masked_whiten(torch.tensor([[1.0, 2.0]]), torch.tensor([[1, 0]]))


# ----------------------------------------------------------------------------- KL and rewards


@pytest.mark.parametrize("shape,dtype,tol", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_kl_per_token_matches_reference(shape, dtype, tol, kind):
    batch = Batch(shape, dtype, nan_padding=False)
    out = kl_per_token(batch.t(batch.logp), batch.t(batch.ref_logp), kind)
    expected = np.array(
        [
            [ref_kl(batch.logp[b, t], batch.ref_logp[b, t], kind) for t in range(batch.T)]
            for b in range(batch.B)
        ]
    )
    assert close(out, expected, tol)
    if kind != "k1":
        assert (out >= 0).all()


def test_kl_per_token_rejects_unknown_kind():
    with pytest.raises(ValueError, match="k4"):
        kl_per_token(torch.zeros(1, 1), torch.zeros(1, 1), "k4")  # type: ignore[arg-type]


@pytest.mark.parametrize("shape,dtype,tol", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("kind", ["k1", "k3"])
def test_shaped_rewards_match_reference(shape, dtype, tol, kind):
    batch = Batch(shape, dtype)
    rewards, kl = shaped_rewards(
        batch.t(batch.scores),
        batch.t(batch.logp),
        batch.t(batch.ref_logp),
        batch.mask_t,
        kl_coef=0.05,
        kind=kind,
    )
    exp_rewards, exp_kl = ref_shaped_rewards(batch, 0.05, kind)
    assert close(rewards, exp_rewards, tol)
    assert close(kl, exp_kl, tol)
    assert not rewards.requires_grad


def test_shaped_rewards_skip_score_for_empty_row():
    zeros = torch.zeros(2, 3)
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    rewards, _ = shaped_rewards(torch.tensor([2.0, 7.0]), zeros, zeros, mask, kl_coef=0.1)
    assert close(rewards, [[0.0, 2.0, 0.0], [0.0, 0.0, 0.0]], 1e-7)


# ----------------------------------------------------------------------------- GAE


@pytest.mark.parametrize("shape,dtype,tol", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.99, 0.95), (0.9, 0.0), (0.5, 1.0)])
def test_gae_matches_reference(shape, dtype, tol, gamma, lam):
    batch = Batch(shape, dtype)
    adv, ret = gae(batch.t(batch.rewards), batch.t(batch.values), batch.mask_t, gamma, lam)
    exp_adv, exp_ret = ref_gae(batch.rewards, batch.values, batch.lengths, gamma, lam)
    assert close(adv, exp_adv, tol)
    assert close(ret, exp_ret, tol)


@pytest.mark.parametrize("shape", SHAPES)
def test_gae_with_unit_discount_and_zero_values_is_reward_to_go(shape):
    batch = Batch(shape, torch.float64)
    values = np.zeros((batch.B, batch.T))
    adv, ret = gae(batch.t(batch.rewards), batch.t(values), batch.mask_t, gamma=1.0, lam=1.0)
    expected = np.zeros((batch.B, batch.T))
    for b in range(batch.B):
        real = batch.rewards[b, : batch.lengths[b]]
        expected[b, : batch.lengths[b]] = np.cumsum(real[::-1])[::-1]  # sum of rewards from t to the end
    assert close(adv, expected, 1e-6)
    assert close(ret, expected, 1e-6)


# ----------------------------------------------------------------------------- PPO losses


@pytest.mark.parametrize("shape,dtype,tol", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("clip_eps", [0.1, 0.2])
def test_policy_loss_matches_reference(shape, dtype, tol, clip_eps):
    batch = Batch(shape, dtype)
    out = policy_loss(
        batch.t(batch.logp), batch.t(batch.old_logp), batch.t(batch.advantages), batch.mask_t, clip_eps
    )
    expected = ref_policy_loss(batch, clip_eps)
    for key in ("loss", "clip_fraction", "approx_kl"):
        assert close(out[key], expected[key], tol)


def test_policy_loss_gradient_vanishes_only_where_clipped():
    batch = Batch((5, 16), torch.float64, nan_padding=False)
    logp = batch.t(batch.logp).requires_grad_(True)
    out = policy_loss(logp, batch.t(batch.old_logp), batch.t(batch.advantages), batch.mask_t, 0.2)
    out["loss"].backward()
    n = sum(batch.lengths)
    expected = np.zeros((batch.B, batch.T))
    n_clipped = 0
    for b in range(batch.B):
        for t in range(batch.lengths[b]):
            ratio = math.exp(batch.logp[b, t] - batch.old_logp[b, t])
            a = batch.advantages[b, t]
            if (ratio > 1.2 and a > 0) or (ratio < 0.8 and a < 0):
                n_clipped += 1  # gradient 0
            else:
                expected[b, t] = -a * ratio / n  # d/dlogp of -A * exp(logp - old), token mean
    assert 0 < n_clipped < n
    assert close(logp.grad, expected, 1e-9)
    assert close(out["clip_fraction"], n_clipped / n, 1e-9)
    assert not out["clip_fraction"].requires_grad and not out["approx_kl"].requires_grad


@pytest.mark.parametrize("shape,dtype,tol", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("clip_value", [0.1, 0.5])
def test_value_loss_matches_reference(shape, dtype, tol, clip_value):
    batch = Batch(shape, dtype)
    out = value_loss(
        batch.t(batch.values), batch.t(batch.old_values), batch.t(batch.returns), batch.mask_t, clip_value
    )
    expected = ref_value_loss(batch, clip_value)
    assert close(out["loss"], expected["loss"], tol)
    assert close(out["clip_fraction"], expected["clip_fraction"], tol)


# ----------------------------------------------------------------------------- logits


def _logits(B: int, T: int, V: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = torch.tensor(rng.normal(0.0, 3.0, size=(B, T, V)), dtype=dtype)
    return z, z.double().numpy()


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-6), (torch.float32, 1e-5), (torch.bfloat16, 1e-5)])
def test_entropy_and_logprobs_match_reference(dtype, tol):
    B, T, V = 3, 5, 11
    logits, z = _logits(B, T, V, dtype, seed=7)
    labels = torch.tensor(np.random.default_rng(8).integers(0, V, size=(B, T)))
    ent = entropy_from_logits(logits)
    logp = logprobs_from_logits(logits, labels)
    # bf16 logits are reduced in float32 (the reference reads the same bf16-rounded numbers)
    assert ent.dtype == logp.dtype == (torch.float32 if dtype == torch.bfloat16 else dtype)
    exp_ent = np.zeros((B, T))
    exp_logp = np.zeros((B, T))
    for b in range(B):
        for t in range(T):
            log_p = ref_log_softmax_row(z[b, t])
            exp_ent[b, t] = -sum(math.exp(lp) * lp for lp in log_p)
            exp_logp[b, t] = log_p[int(labels[b, t])]
    assert close(ent, exp_ent, tol)
    assert close(logp, exp_logp, tol)
    assert (ent >= 0).all() and (ent <= math.log(V) + tol).all()


def test_logprobs_read_ignore_index_at_id_zero():
    logits, z = _logits(1, 3, 4, torch.float64, seed=9)
    out = logprobs_from_logits(logits, torch.tensor([[2, -100, -100]]))
    expected = [
        ref_log_softmax_row(z[0, 0])[2],
        ref_log_softmax_row(z[0, 1])[0],
        ref_log_softmax_row(z[0, 2])[0],
    ]
    assert close(out, [expected], 1e-9)


# ----------------------------------------------------------------------------- GRPO


@pytest.mark.parametrize("group_size", [1, 2, 4, 8])
@pytest.mark.parametrize("scale", [True, False])
@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_group_advantages_match_reference(group_size, scale, dtype, tol):
    scores_np = (
        torch.tensor(np.random.default_rng(group_size).normal(0.0, 2.0, size=3 * group_size), dtype=dtype)
        .double()
        .numpy()
    )
    out = group_advantages(torch.tensor(scores_np, dtype=dtype), group_size, scale=scale)
    assert close(out, ref_group_advantages(scores_np, group_size, scale, 1e-4), tol)
    if group_size == 1:
        assert (out == 0).all()


def test_group_advantages_edge_cases():
    # a group whose completions all scored the same teaches nothing, scaled or not
    out = group_advantages(torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 2.0]), 3)
    assert close(out, [0.0, 0.0, 0.0, -1 / (1 + 1e-4), 0.0, 1 / (1 + 1e-4)], 1e-6)
    assert close(group_advantages(torch.tensor([0, 1, 1, 1]), 2, scale=False), [-0.5, 0.5, 0.0, 0.0], 1e-7)
    with pytest.raises(ValueError, match="divisible"):
        group_advantages(torch.zeros(5), 2)


@pytest.mark.parametrize("shape,dtype,tol", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_grpo_loss_matches_reference(shape, dtype, tol, beta):
    batch = Batch(shape, dtype)
    out = grpo_loss(
        batch.t(batch.logp),
        batch.t(batch.old_logp),
        batch.t(batch.ref_logp),
        batch.t(batch.seq_advantages),
        batch.mask_t,
        clip_eps=0.2,
        beta=beta,
    )
    expected = ref_grpo_loss(batch, 0.2, beta)
    for key in ("loss", "kl", "clip_fraction"):
        assert close(out[key], expected[key], tol)


def test_grpo_loss_normalises_per_sequence_not_per_token():
    # two sequences, lengths 1 and 3, ratio 1, A = 1 and -1: per sequence (-1 + 1) / 2 = 0,
    # while a token-level mean would give (-1 + 3) / 4 = 0.5
    zeros = torch.zeros(2, 3)
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]])
    out = grpo_loss(zeros, zeros, None, torch.tensor([1.0, -1.0]), mask, clip_eps=0.2, beta=0.0)
    assert close(out["loss"], 0.0, 1e-7)
    assert close(out["kl"], 0.0, 1e-7)
    with pytest.raises(ValueError, match="ref_logprobs"):
        grpo_loss(zeros, zeros, None, torch.tensor([1.0, -1.0]), mask, clip_eps=0.2, beta=0.1)


def test_grpo_loss_without_kl_follows_trl_conventions():
    """beta = 0: the same loss, gradient and clip metric as TRL's GRPOTrainer (loss_type="grpo").

    Written out here the way TRL 1.x computes it: group-normalised rewards in repeat_interleave order,
    ``coef_1 = exp(logp - old)``, ``-min(coef_1 * A, clamp(coef_1) * A)`` multiplied by the mask,
    summed per row over ``mask.sum(-1).clamp(min=1)``, then averaged; clip ratio is the "region" one.
    """
    G, n_prompts, T = 4, 3, 9
    batch = Batch((G * n_prompts, T), torch.float64, seed=3, nan_padding=False)
    rewards = torch.tensor(np.random.default_rng(5).normal(size=G * n_prompts))
    mask = torch.tensor(batch.mask)
    old = batch.t(batch.old_logp)
    eps_low = eps_high = 0.2

    mean = rewards.view(-1, G).mean(dim=1).repeat_interleave(G)
    std = rewards.view(-1, G).std(dim=1).repeat_interleave(G)
    trl_adv = (rewards - mean) / (std + 1e-4)
    trl_logp = batch.t(batch.logp).requires_grad_(True)
    coef_1 = torch.exp(trl_logp - old)
    coef_2 = torch.clamp(coef_1, 1 - eps_low, 1 + eps_high)
    per_token_loss = -torch.min(coef_1 * trl_adv.unsqueeze(1), coef_2 * trl_adv.unsqueeze(1))
    trl_loss = ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    trl_loss.backward()
    a = trl_adv.unsqueeze(1)
    region = ((coef_1 < 1 - eps_low) & (a < 0)) | ((coef_1 > 1 + eps_high) & (a > 0))
    trl_clip = (region.double() * mask).sum() / mask.sum()

    adv = group_advantages(rewards, G)
    assert close(adv, trl_adv.numpy(), 1e-9)
    logp = batch.t(batch.logp).requires_grad_(True)
    out = grpo_loss(logp, old, None, adv, batch.mask_t, clip_eps=0.2, beta=0.0)
    out["loss"].backward()
    assert close(out["loss"], trl_loss.item(), 1e-9)
    assert close(logp.grad, trl_logp.grad.numpy(), 1e-9)
    assert close(out["clip_fraction"], trl_clip.item(), 1e-9)
    assert 0 < out["clip_fraction"].item() < 1
