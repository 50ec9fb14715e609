"""One rank of a trained role (the policy or the critic), built on ftl's sharding backends.

The learner is what the loop's ``_train`` is for supervised methods, cut to what RL needs: load
the model through ``Backend.load_model`` (so ZeRO-3 and FSDP2 build it sharded), wrap it with
``Backend.setup``, and then answer the controller: forward passes over this rank's shard of a
rollout batch, PPO/GRPO updates (epochs x minibatches x micro-batches, normalised over the whole
minibatch across ranks), the weights rollout workers need, checkpoints and ``final/``.
It has no Ray code: ``roles.py`` hosts it in an actor, a test can drive it in-process.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

from launcher.core.lazy import load_object
from launcher.models.offload import activation_offload
from launcher.train.dist import RankContext, all_reduce_sum, barrier
from strategies.ppo.batch import RolloutBatch, policy_forward, value_forward
from strategies.ppo.objectives import Experience, MicroLoss, critic_loss, items, loss_type, policy_loss_of
from strategies.ppo.schedule import update_schedule

log = logging.getLogger("ftl.ppo.learner")


class Learner:
    def __init__(self, cfg: Any, role: str, ctx: RankContext):
        """``cfg`` is the learner config (``schedule.learner_config``); ``role``: policy | critic."""
        from launcher.backends.registry import resolve_sharding
        from launcher.models.load import load_tokenizer
        from launcher.train.optim import make_optimizer, make_scheduler
        from strategies.ppo.models import CriticModel, PolicyModel

        self.cfg, self.role, self.ctx = cfg, role, ctx
        self.opts = cfg.method_options()
        self.temperature = self.opts.rollout.temperature
        self.schedule = update_schedule(cfg, ctx.world_size)
        self.tokenizer = load_tokenizer(cfg)
        self.model_spec = (CriticModel if role == "critic" else PolicyModel)(cfg, self.tokenizer)
        self.backend = load_object(resolve_sharding(cfg.sharding).impl)(cfg, ctx)
        model = self.backend.load_model(self.model_spec)
        self.backend.setup(model, lambda m: make_optimizer(m, cfg.train),
                           lambda o: make_scheduler(o, cfg.train))
        self.loss_kind = "bnpo" if role == "critic" else loss_type(cfg.method, self.opts)
        if role == "critic":
            self.objective = partial(critic_loss, opts=self.opts)
        else:
            self.objective = partial(policy_loss_of, opts=self.opts, temperature=self.temperature,
                                     kind=self.loss_kind, ce=self.model_spec.ce)

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
        """``ppo_epochs`` passes over this rank's shard, ``minibatches`` optimizer steps each."""
        model = self.backend.model
        model.train()
        sched, ctx = self.schedule, self.ctx
        t0 = time.perf_counter()
        totals: dict[str, float] = {}
        items_total, tokens, grad_norms = 0.0, 0.0, []
        exp = dataclasses.replace(exp, batch=self._layout(exp.batch))
        for epoch in range(self.opts.ppo_epochs):
            gen = torch.Generator().manual_seed(self.cfg.train.seed * 1_000_003 + step * 1_009 + epoch)
            order = torch.randperm(len(exp), generator=gen)
            for m in range(self.opts.minibatches):
                idx = order[m * sched.per_rank:(m + 1) * sched.per_rank]
                micro = [exp.rows(idx[i:i + sched.micro]) for i in range(0, len(idx), sched.micro)]
                local = sum(self._items(mb) for mb in micro)
                (global_items,) = all_reduce_sum([local], ctx.device)
                scale = ctx.world_size / max(global_items, 1.0)
                sums: dict[str, torch.Tensor] = {}
                for j, mb in enumerate(micro):
                    mb = self._to_device(mb)
                    with self.backend.accumulate(sync=j == len(micro) - 1):
                        with self.backend.autocast(), activation_offload(self.cfg):
                            out: MicroLoss = self.objective(model, mb)
                        self.backend.backward(out.loss_sum * scale)
                    for k, v in out.metric_sums.items():
                        sums[k] = sums.get(k, 0.0) + v
                    tokens += float(mb.batch.attention_mask.sum())
                grad_norms.append(self.backend.step())
                names = sorted(sums)
                reduced = all_reduce_sum([float(sums[k]) for k in names], ctx.device)
                for k, v in zip(names, reduced):
                    totals[k] = totals.get(k, 0.0) + v
                items_total += global_items
        (all_tokens,) = all_reduce_sum([tokens], ctx.device)
        prefix = "critic" if self.role == "critic" else "policy"
        metrics = {k: v / max(items_total, 1.0) for k, v in totals.items()}
        metrics[f"{prefix}/grad_norm"] = sum(grad_norms) / max(len(grad_norms), 1)
        metrics[f"{prefix}/lr"] = self.backend.current_lr()
        metrics[f"{prefix}/train_tokens"] = all_tokens
        metrics[f"{prefix}/update_s"] = time.perf_counter() - t0
        return metrics

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
        state_dict = self.backend.full_state_dict()
        if self.ctx.is_main:
            self.backend.module.save_pretrained(out, state_dict=state_dict, safe_serialization=True)
            self.tokenizer.save_pretrained(out)
        barrier()

    def close(self) -> None:
        self.backend.close()
