"""One rank of a trained role (the policy or the critic), built on ftl's sharding backends.

The learner is what the loop's ``_train`` is for supervised methods, cut to what RL needs, and
built from the same parts: the backend, model, optimizer and ``final/`` of
``launcher.train.build`` (so ZeRO-3 and FSDP2 build the model sharded) and the optimizer step of
``launcher.train.step``. It answers the controller: forward passes over this rank's shard of a
rollout batch, PPO/GRPO updates (epochs x minibatches x micro-batches, normalised over the whole
minibatch across ranks), the weights rollout workers need, checkpoints and ``final/``.
It has no Ray code: ``roles.py`` hosts it in an actor, a test can drive it in-process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

from launcher.core.seeds import mix_seed
from launcher.train.build import build_backend, write_final
from launcher.train.checkpoint import latest_checkpoint
from launcher.train.dist import RankContext, all_reduce_sum, barrier
from launcher.train.guard import StepGuard
from launcher.train.step import optimizer_step
from strategies.ppo.batch import RolloutBatch, policy_forward, value_forward
from strategies.ppo.objectives import Experience, critic_loss, items, loss_type, policy_loss_of
from strategies.ppo.schedule import update_schedule

log = logging.getLogger("ftl.ppo.learner")


class Learner:
    def __init__(self, cfg: Any, role: str, ctx: RankContext, run_dir: Path | None = None):
        """``cfg`` is the learner config (``schedule.learner_config``); ``role``: policy | critic.
        ``run_dir``: the run folder; with it, the step guard (``launcher.train.guard``) checks every
        optimizer step, skipping up to ``train.skip_nonfinite`` non-finite ones and stopping the
        run on the next (without it, as in tests that drive a learner alone, nothing is checked)."""
        from launcher.models.load import load_tokenizer
        from strategies.ppo.models import CriticModel, PolicyModel

        self.cfg, self.role, self.ctx = cfg, role, ctx
        self.opts = cfg.method_options()
        self.temperature = self.opts.rollout.temperature
        self.schedule = update_schedule(cfg, ctx.world_size)
        self.tokenizer = load_tokenizer(cfg)
        self.model_spec = (CriticModel if role == "critic" else PolicyModel)(cfg, self.tokenizer)
        self.backend = build_backend(cfg, ctx, self.model_spec)
        self.loss_kind = "bnpo" if role == "critic" else loss_type(cfg.method, self.opts)
        if role == "critic":
            self.objective = partial(critic_loss, opts=self.opts)
        else:
            self.objective = partial(policy_loss_of, opts=self.opts, temperature=self.temperature,
                                     kind=self.loss_kind, ce=self.model_spec.ce)
        # The guard's stop-request answer is not used here: the controller reads stop requests
        # itself, at RL-step boundaries, and checkpoints every role together.
        self.guard = None if run_dir is None else StepGuard(
            ctx, run_dir, cfg.train.skip_nonfinite, 0, lambda: latest_checkpoint(run_dir / "checkpoints"))

    # -- inference over this rank's shard
    @torch.no_grad()
    def forward(self, batch: RolloutBatch) -> torch.Tensor:
        """Log-probs (policy) or values (critic) ``[B, R]``; micro-batched, same count on every rank."""
        model = self.backend.model
        model.eval()
        outs = []
        batch = self._layout(batch)
        for start in range(0, len(batch), self.schedule.micro):
            mb = self._to_device(batch.rows(range(start, min(start + self.schedule.micro, len(batch)))))
            with self.backend.autocast():
                if self.role == "critic":
                    outs.append(value_forward(model, mb).float().cpu())
                else:
                    logps = policy_forward(model, mb, self.temperature, ce=self.model_spec.ce)[0]
                    outs.append(logps.float().cpu())
        return torch.cat(outs)

    @torch.no_grad()
    def probe(self, prompt: list[int], response: list[int]) -> list[float]:
        """Log-probs (temperature 1) of ``response`` after ``prompt``: the fingerprint rollout
        engines must reproduce after a weight sync. Every rank runs it (sharded forward)."""
        batch = RolloutBatch.single(prompt, response)
        model = self.backend.model
        model.eval()
        with self.backend.autocast():
            return policy_forward(model, self._to_device(batch), 1.0)[0][0].float().cpu().tolist()

    # -- update
    def update(self, exp: Experience, step: int) -> dict[str, float]:
        """``ppo_epochs`` passes over this rank's shard, ``minibatches`` optimizer steps each
        (``launcher.train.step``: normalised over the whole minibatch across ranks)."""
        self.backend.model.train()
        sched, ctx = self.schedule, self.ctx
        t0 = time.perf_counter()
        totals: dict[str, float] = {}
        items_total, all_tokens, grad_norms = 0.0, 0.0, []
        exp = dataclasses.replace(exp, batch=self._layout(exp.batch))
        for epoch in range(self.opts.ppo_epochs):
            gen = torch.Generator().manual_seed(mix_seed(self.cfg.train.seed, step * 1_009 + epoch))
            order = torch.randperm(len(exp), generator=gen)
            for m in range(self.opts.minibatches):
                idx = order[m * sched.per_rank:(m + 1) * sched.per_rank]
                micro = [exp.rows(idx[i:i + sched.micro]) for i in range(0, len(idx), sched.micro)]
                result = optimizer_step(
                    self.backend, micro, self.objective, items=sum(self._items(mb) for mb in micro),
                    tokens=sum(float(mb.batch.attention_mask.sum()) for mb in micro), step=step + 1,
                    guard=self.guard, prepare=self._prepare)
                all_tokens += result.global_tokens
                if result.verdict.skipped:  # parameters untouched; its NaN stays out of the metrics
                    log.warning("step %d: a non-finite %s update skipped (train.skip_nonfinite: %d of %d)",
                                step + 1, self.role, self.guard.skipped, self.guard.skip_budget)
                    continue
                grad_norms.append(result.grad_norm)
                names = sorted(result.metric_sums)
                reduced = all_reduce_sum([float(result.metric_sums[k]) for k in names], ctx.device)
                for k, v in zip(names, reduced):
                    totals[k] = totals.get(k, 0.0) + v
                items_total += result.global_items
        prefix = "critic" if self.role == "critic" else "policy"
        metrics = {k: v / max(items_total, 1.0) for k, v in totals.items()}
        metrics[f"{prefix}/grad_norm"] = sum(grad_norms) / max(len(grad_norms), 1)
        metrics[f"{prefix}/lr"] = self.backend.current_lr()
        metrics[f"{prefix}/train_tokens"] = all_tokens
        metrics[f"{prefix}/update_s"] = time.perf_counter() - t0
        if self.guard is not None and self.cfg.train.skip_nonfinite:
            metrics[f"{prefix}/skipped_steps"] = self.guard.skipped
        return metrics

    def _prepare(self, mb: Experience) -> tuple[Experience, contextlib.AbstractContextManager]:
        return self._to_device(mb), contextlib.nullcontext()

    def _layout(self, batch: RolloutBatch) -> RolloutBatch:
        """Padding-free forward passes with ``data.packing`` (same per-token results)."""
        return batch.packed() if self.cfg.data.packing else batch

    def _items(self, exp: Experience) -> float:
        return items(exp, self.loss_kind, self.opts.rollout.max_new_tokens)

    def _to_device(self, value: Any) -> Any:
        if self.ctx.device.type == "cpu":
            return value
        if isinstance(value, RolloutBatch):
            return value.to(self.ctx.device)
        moved = {k: getattr(value, k) for k in ("old_logprobs", "advantages", "ref_logprobs", "returns",
                                                 "old_values", "is_weights")}
        return Experience(self._to_device(value.batch),
                          **{k: None if v is None else v.to(self.ctx.device) for k, v in moved.items()})

    # -- weights, checkpoints, export
    def full_weights(self) -> dict[str, torch.Tensor] | None:
        """Every tensor of the (unwrapped) model on rank 0, None elsewhere. A collective."""
        return self.backend.full_state_dict()

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        barrier()
        self.backend.save(folder)
        barrier()

    def load(self, folder: Path) -> None:
        self.backend.load(folder)

    def export(self, out: Path) -> None:
        """``final/``: HF folder of the policy (adapter only under LoRA), as supervised runs write."""
        write_final(self.backend, self.tokenizer, out, self.ctx)

    def close(self) -> None:
        self.backend.close()
