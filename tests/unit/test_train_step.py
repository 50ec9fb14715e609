"""The one optimizer step both trainers use (``launcher.train.step``), on one process.

- Accumulating uneven micro-batches gives the loss and gradients of one batch of all the items:
  the loss is normalised over the global item count, not per micro-batch.
- A non-finite loss, with ``train.skip_nonfinite`` budget left, skips the step: parameters,
  optimizer moments and the LR schedule stay as they were; with none left the run stops. The
  supervised loop and the RL learner share this (the learner through its guard).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from launcher.backends.ddp import DDPBackend
from launcher.config.load import validate_config
from launcher.train.dist import RankContext
from launcher.train.guard import NonFiniteError, StepGuard
from launcher.train.optim import make_optimizer, make_scheduler
from launcher.train.step import optimizer_step
from strategies.base import LossOutput
from tests.helpers.ftl import tiny_config

CPU = RankContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), launcher="single")


def squared_error(model: nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
    """Summed over rows (the items), with a metric summed the same way."""
    per_row = ((model(batch["x"]) - batch["y"]) ** 2).sum(dim=-1)
    return LossOutput(per_row.sum(), torch.tensor(float(len(per_row))),
                      {"abs_error": (model(batch["x"]) - batch["y"]).abs().sum().detach()})


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))


def rows(n: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return {"x": torch.randn(n, 5, generator=gen), "y": torch.randn(n, 3, generator=gen)}


def sgd_backend(model: nn.Module, **train) -> DDPBackend:
    """Plain SGD at lr 1, no clipping: the step moves each parameter by exactly its gradient."""
    cfg = validate_config(tiny_config(train={"max_grad_norm": None, **train}))
    backend = DDPBackend(cfg, CPU)
    backend.setup(model, lambda m: torch.optim.SGD(m.parameters(), lr=1.0),
                  lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda _: 1.0))
    return backend


def step_gradients(sizes: list[int]) -> tuple[dict[str, torch.Tensor], float, float, float]:
    """(gradients, mean loss, mean metric, gradient norm) of one step over ``sizes`` micro-batches."""
    model = tiny_model()
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    backend = sgd_backend(model)
    data, start, micro = rows(sum(sizes)), 0, []
    for n in sizes:
        micro.append({k: v[start:start + n] for k, v in data.items()})
        start += n
    result = optimizer_step(backend, micro, squared_error, items=float(sum(sizes)), step=1)
    assert result.global_items == sum(sizes) and not result.verdict.skipped
    grads = {k: before[k] - v.detach() for k, v in model.named_parameters()}
    items = result.global_items
    return grads, float(result.loss_total) / items, float(result.metric_sums["abs_error"]) / items, \
        result.grad_norm


def test_uneven_micro_batches_give_the_loss_and_gradients_of_one_batch():
    one = step_gradients([8])
    split = step_gradients([3, 1, 4])
    assert split[1] == pytest.approx(one[1], abs=1e-6)
    assert split[2] == pytest.approx(one[2], abs=1e-6)
    assert split[3] == pytest.approx(one[3], abs=1e-6)
    for name, grad in one[0].items():
        torch.testing.assert_close(split[0][name], grad, atol=1e-6, rtol=0)
    # ... and both are the per-item mean's gradient, computed without the primitive
    reference = tiny_model()
    data = rows(8)
    (squared_error(reference, data).loss_sum / 8).backward()
    for name, param in reference.named_parameters():
        torch.testing.assert_close(one[0][name], param.grad, atol=1e-6, rtol=0)
    assert one[1] == pytest.approx(float(squared_error(reference, data).loss_sum.detach()) / 8, abs=1e-6)


def test_a_non_finite_loss_skips_the_step_and_a_second_one_stops(tmp_path):
    """AdamW and the configured schedule, as the trainers build them: a skipped step leaves
    parameters, optimizer state and the schedule as they were, then a good step moves them."""
    model = tiny_model()
    cfg = validate_config(tiny_config(train={"skip_nonfinite": 1, "warmup_steps": 2, "schedule": "linear"}))
    backend = DDPBackend(cfg, CPU)
    backend.setup(model, lambda m: make_optimizer(m, cfg.train), lambda o: make_scheduler(o, cfg.train))
    guard = StepGuard(CPU, tmp_path, cfg.train.skip_nonfinite, 0, lambda: None)
    data = rows(6)
    micro = [{k: v[:2] for k, v in data.items()}, {k: v[2:] for k, v in data.items()}]

    def poisoned(m: nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        out = squared_error(m, batch)
        out.loss_sum = out.loss_sum * float("nan")
        return out

    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    lr_before = backend.current_lr()
    result = optimizer_step(backend, micro, poisoned, items=6.0, step=1, guard=guard)
    assert result.verdict.skipped and guard.skipped == 1
    for name, param in model.named_parameters():
        assert torch.equal(param.detach(), before[name]), name
    assert backend.optimizer.state == {} and backend.current_lr() == lr_before
    assert all(p.grad is None for p in model.parameters())

    # a good step runs: moments appear and the warm-up moves on (its first LR is 0, so the
    # parameters move from the next step on)
    good = optimizer_step(backend, micro, squared_error, items=6.0, step=2, guard=guard)
    assert not good.verdict.skipped and guard.skipped == 1
    assert backend.optimizer.state != {} and backend.current_lr() > lr_before

    with pytest.raises(NonFiniteError, match=r"step 3: the loss is nan on rank\(s\) 0"):
        optimizer_step(backend, micro, poisoned, items=6.0, step=3, guard=guard)


def test_the_rl_learner_skips_a_non_finite_update_through_the_same_step(tmp_path):
    """A policy learner with its guard (as its actor builds it): NaN advantages make the loss
    NaN; the update leaves every parameter as it was and says so; the next one stops the run."""
    from strategies.ppo.batch import collate_rollouts
    from strategies.ppo.learner import Learner
    from strategies.ppo.objectives import Experience
    from strategies.ppo.schedule import learner_config
    from tests.helpers.rl import letters_config

    data = letters_config("grpo", "nan", ppo_epochs=1, minibatches=1)
    data["train"]["skip_nonfinite"] = 1
    cfg = validate_config(data)
    learner = Learner(learner_config(cfg, "policy", 1), "policy", CPU, run_dir=tmp_path)
    try:
        prompts = [[5, 6, 7]] * 32
        responses = [[8 + i % 5, 9, 10 + i % 3] for i in range(32)]
        batch = collate_rollouts(prompts, responses, learner.tokenizer.pad_token_id or 0, [2])
        old = learner.forward(batch)
        nan = torch.full((len(batch),), float("nan"))
        before = {k: v.detach().clone() for k, v in learner.backend.module.named_parameters()}
        metrics = learner.update(Experience(batch, old, nan), step=0)
        assert metrics["policy/skipped_steps"] == 1
        for name, param in learner.backend.module.named_parameters():
            assert torch.equal(param.detach(), before[name]), name
        with pytest.raises(NonFiniteError, match=r"step 2: the loss is nan on rank\(s\) 0"):
            learner.update(Experience(batch, old, nan), step=1)
    finally:
        learner.close()
