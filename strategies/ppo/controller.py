"""The RL controller: the Ray driver process runs the loop and the roles do the work.

One step (sync)::

    rollout workers  generate batch k with weights v(k-1)          ─┐
    reward           scores (rule here, or the reward-model actors)  │ score: in parallel
    policy group     log-probs before the update (old_logprobs)      │
    reference        log-probs for the KL term                       │
    critic group     values                                         ─┘
    controller       advantages (strategies.rl.math)
    policy + critic  update (ppo_epochs x minibatches), in parallel
    policy rank 0    puts the new weights in the object store once -> every worker loads them

``async: true`` launches batch k+1 right after batch k is collected, so the workers generate it
(with the weights they hold: v(k-1)) while the trainer scores and trains on batch k; the new
weights v(k) queue behind that generation. Every batch is then exactly one update stale, which
``rollout/weights_lag`` records, and PPO's ratio is taken against the trainer's own log-probs
(recomputed before each update, as veRL's one-step-off-policy trainer does).

The controller writes the run folder as supervised runs do: metrics.jsonl, W&B, summary.json
(initial/final reward, every role's actor ids and PIDs, timings), checkpoints, final/, logs/.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from launcher.core import preemption
from launcher.core.env import FAILPOINT
from launcher.core.errors import JobFailed, Problem, UserError
from launcher.core.workers import thread_env, worker_threads
from launcher.metrics.sinks import MetricSinks
from launcher.report.build import write_run_report_safely
from launcher.run.rundir import RunFolder
from strategies.ppo.advantages import batch_stats, ppo_targets
from strategies.ppo.artifacts import Checkpoints, close_log, controller_log
from strategies.ppo.batch import collate_rollouts
from strategies.ppo.engine import resolve_engine
from strategies.ppo.objectives import Experience
from strategies.ppo.placement import Placement, role_demands
from strategies.ppo.prompts import Prompt, load_prompts, step_prompts
from strategies.ppo.rewards import RewardError, RewardFunctions
from strategies.ppo.roles import ActorGroup, LearnerGroup, split
from strategies.ppo.rollout import RolloutFailed, RolloutPool, SyncMismatch, SyncProbe
from strategies.ppo.schedule import check_lengths, update_schedule
from strategies.rl.math import kl_per_token, masked_mean
from strategies.rl.policy import (
    advantages_for,
    groups_with_signal,
    mismatch_metrics,
    overlong_penalty,
    truncated_is_weights,
)

log = logging.getLogger("ftl.ppo.controller")

EVAL_SEED = 12_345
SYNC_BUCKET_MB = 512  # weights travel in object-store buckets of at most this size


def run_controller(folder: RunFolder) -> None:
    """The method's ``controller`` entry point (``launcher.run.driver.run_trainer`` calls it)."""
    handler = controller_log(folder)
    try:
        OnlineRL(folder.load_config(), folder).run()
    finally:
        close_log(handler)


class OnlineRL:
    def __init__(self, cfg: Any, folder: RunFolder):
        self.cfg, self.folder = cfg, folder
        self.opts = cfg.method_options()
        self.is_ppo = cfg.method == "ppo"
        self.async_ = self.opts.async_
        self.engine = resolve_engine(self.opts.rollout.engine)
        self.dynamic_sampling = getattr(self.opts, "dynamic_sampling", False)
        check_lengths(cfg)
        self.schedule = update_schedule(cfg, cfg.resources.num_workers)
        if self.is_ppo:
            update_schedule(cfg, self.opts.critic.num_workers)  # the critic's split must work too
        self.uses_reference = (self.opts.kl_coef > 0) if self.is_ppo else (self.opts.beta > 0)
        self.groups: dict[str, ActorGroup] = {}
        self.placement: Placement | None = None
        self.sinks: MetricSinks | None = None
        self.timings = {"generate": 0.0, "score": 0.0, "train": 0.0, "sync": 0.0}
        self.tokens = {"rollout": 0, "train": 0}
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}

    # ------------------------------------------------------------------ start
    def roles(self) -> list[str]:
        roles = ["policy", "rollout"]
        if self.is_ppo:
            roles.append("critic")
        if self.uses_reference:
            roles.append("reference")
        if self.opts.reward.model:
            roles.append("reward")
        return roles

    def _check_reward_model(self) -> None:
        """The schema lets a reward-model path through unchecked (it may be a cluster path or a hub
        id); where the run starts it must exist, or be a hub id (``org/name``)."""
        path = self.opts.reward.model
        if path is None or Path(path).expanduser().exists():
            return
        if path.startswith((".", "/", "~")) or path.count("/") != 1:
            raise UserError(Problem(f"{self.cfg.method}.reward.model", f"folder not found: {path}",
                                    "train one first (configs/examples/rlhf/reward.yaml) and pass "
                                    f"--set {self.cfg.method}.reward.model=<its run folder>/final"))

    def _critic_init(self) -> str | None:
        """Folder the critic starts from: the reward model (its head becomes the value head) or the
        policy's model.path (a new head). Adapter-only reward folders are merged once."""
        from strategies.ppo.models import materialize_merged, vocab_size

        init = self.opts.critic.init
        if init == "auto":
            init = "reward" if self.opts.reward.model else "policy"
        if init == "policy":
            return None
        if not self.opts.reward.model:
            raise UserError(Problem("ppo.critic.init", "init: reward needs reward.model",
                                    "set reward.model, or critic.init: policy"))
        from launcher.models.tiny import resolve_model_path

        path = materialize_merged(self.opts.reward.model, self.folder.path / "roles" / "critic-init")
        if vocab_size(path) != vocab_size(resolve_model_path(self.cfg.model.path)):
            raise UserError(Problem("ppo.critic.init", "the reward model's vocabulary differs from the "
                                    "policy's, so it cannot read the policy's tokens", "use init: policy"))
        return path

    def _start_roles(self) -> None:
        """Place every role, start its actors (in parallel), set up the learners' process groups."""
        from launcher.run.driver import worker_env

        roles = self.roles()
        self.placement = Placement(self.cfg, role_demands(self.cfg, roles))
        base_env = worker_env(self.cfg)
        run_dir = str(self.folder.path.resolve())
        for role in roles:
            section = self.cfg.resources if role == "policy" else getattr(self.opts, role)
            threads = worker_threads(section)
            env = {**base_env, **thread_env(threads)}
            cls = LearnerGroup if role in ("policy", "critic") else ActorGroup
            self.groups[role] = cls(role, self.placement, run_dir, threads, env, section.num_workers)
        setups = {}
        for role in ("policy", "critic"):
            if role in self.groups:
                group = self.groups[role]
                master = self._get(group.actors[0].address.remote(), role)
                model_path = self.critic_init if role == "critic" else None
                setups[role] = group.async_call("setup", master, len(group), model_path)
        self.setup_info = {role: self._get(refs, role) for role, refs in setups.items()}
        # A replacement must not re-fire a failpoint that killed its predecessor: disarm it (set it
        # empty; workers may also inherit the variable from the raylet's own environment).
        self.pool = RolloutPool(self.groups["rollout"], {**self.groups["rollout"].env, FAILPOINT: ""})
        specials = self._get(self.groups["rollout"].actors[0].special_ids.remote(), "rollout")
        self.pad_id, self.eos_ids = specials["pad"], specials["eos"]
        self._record_identities()
        self._start_sync_check()

    def _write_roles(self) -> None:
        replaced = self.pool.replacements if hasattr(self, "pool") else []
        (self.folder.logs / "roles.json").write_text(json.dumps(
            {"placement": self.placement.describe(), "roles": self.identities,
             "rollout_replacements": replaced}, indent=1))

    def _record_identities(self) -> None:
        """Actor id, PID and node of every role (and of this controller): logs/roles.json + log."""
        import ray

        self.identities = {role: (self.pool.identities if role == "rollout" else self._get(
            g.async_call("identity"), role)) for role, g in self.groups.items()}
        self.identities["controller"] = [{"pid": os.getpid(), "host": socket.gethostname(),
                                          "node_id": ray.get_runtime_context().get_node_id()}]
        self._write_roles()
        for role, ids in self.identities.items():
            for ident in ids:
                log.info("role %s: %s", role, ident)

    # ------------------------------------------------------------------ run
    def run(self) -> None:
        from launcher.models.load import load_tokenizer

        wall0 = time.time()
        self.tokenizer = load_tokenizer(self.cfg)
        self.train_prompts = load_prompts(self.cfg, self.tokenizer, "train")
        self.eval_prompts = load_prompts(self.cfg, self.tokenizer, "eval") if self.cfg.data.eval else []
        functions = self.opts.reward.functions()
        self.reward_functions = RewardFunctions(functions) if functions else None
        self._check_reward_model()
        self.critic_init = self._critic_init() if self.is_ppo else None
        log.info("%s: %d train prompts, %d eval prompts; async=%s placement=%s; schedule %s",
                 self.cfg.method, len(self.train_prompts), len(self.eval_prompts), self.async_,
                 self.opts.placement, self.schedule)
        try:
            t0 = time.perf_counter()
            self._start_roles()
            startup = time.perf_counter() - t0
            start_step = self._resume()
            self.sinks = MetricSinks(self.cfg, self.folder, start_step, log)
            at_start = self.eval_prompts and self.cfg.eval.at_start and not start_step
            initial = self._evaluate() if at_start else {}
            if initial:
                self.sinks.emit(start_step, initial)
            t_loop = time.perf_counter()
            if self._loop(start_step):
                return  # saved and stopped on request: no final evaluation, export or summary
            loop_s = time.perf_counter() - t_loop
            final = self._evaluate() if self.eval_prompts else {}
            if final:
                self.sinks.emit(self.cfg.train.max_steps, final)
            if self.cfg.checkpoint.save_final:
                final_dir = str(self.folder.path / "final")
                self._get(self.groups["policy"].async_call("export", final_dir), "policy")
            self._write_summary(wall0, startup, loop_s, start_step, initial, final)
            if self.cfg.logging.report:  # <run>/report/; a warning if it cannot be drawn
                write_run_report_safely(self.folder.path)
        finally:
            if self.sinks is not None:
                self.sinks.close({**{f"final/{k}": v for k, v in self.last.items()}})
            self._teardown()

    def _loop(self, start: int) -> bool:
        """Train to max_steps; True when a stop request (``launcher.core.preemption``) ended it early,
        after a checkpoint of the step it stopped at."""
        steps = self.cfg.train.max_steps
        if start >= steps:
            return False
        pending = self.pool.launch(self._rows(start), start, self.cfg.train.seed)
        for step in range(start, steps):
            t_step = time.perf_counter()
            prompts = self._step_prompts(step)
            t0 = time.perf_counter()
            with self._failures("rollout"):
                gen = self.pool.collect(pending)
                self.pool.verify()  # async: the probes queued behind the last sync have run
            t_gen = time.perf_counter() - t0
            if self.async_ and step + 1 < steps:  # overlap: batch k+1 is sampled while k trains
                pending = self.pool.launch(self._rows(step + 1), step + 1, self.cfg.train.seed)
            t0 = time.perf_counter()
            scores, per_function = self._scores(prompts, gen)
            if self.dynamic_sampling:
                prompts, gen, scores, per_function = self._fill_with_signal(step, prompts, gen, scores,
                                                                           per_function)
            exp, stats = self._score(prompts, gen, scores, per_function)
            t_score = time.perf_counter() - t0
            t0 = time.perf_counter()
            train_metrics = self._train(exp, step)
            t_train = time.perf_counter() - t0
            t0 = time.perf_counter()
            sync_size = self._publish(step + 1, wait=not self.async_)
            t_sync = time.perf_counter() - t0
            if not self.async_ and step + 1 < steps:
                pending = self.pool.launch(self._rows(step + 1), step + 1, self.cfg.train.seed)
            self._account(step, gen, stats, {**train_metrics, **sync_size}, t_gen, t_score, t_train,
                          t_sync, time.perf_counter() - t_step)
            every = self.cfg.checkpoint.every_steps
            reason = preemption.stop_reason(self.folder.path) if step + 1 < steps else None
            if (every and (step + 1) % every == 0) or reason:
                self._checkpoint(step + 1)
            if reason:
                log.warning("stopping at step %d on request (%s)", step + 1, reason)
                preemption.record_preempted(self.folder.path, step + 1,
                                            str(self.folder.path / "checkpoints"), reason)
                return True
        return False

    # ------------------------------------------------------------------ one step's parts
    def _step_prompts(self, step: int) -> list[Prompt]:
        idx = step_prompts(step, self.opts.rollout.batch_size, len(self.train_prompts), self.cfg.train.seed)
        g = self.opts.samples_per_prompt()
        return [self.train_prompts[i] for i in idx for _ in range(g)]  # prompt-major groups

    def _rows(self, step: int) -> list[list[int]]:
        return [p.ids for p in self._step_prompts(step)]

    def _rewards(self, prompts: list[Prompt], texts: list[str]) -> tuple[list[float], dict[str, float]]:
        """Total reward per response, and each reward function's mean (none for a reward model)."""
        if self.reward_functions is not None:
            try:
                return self.reward_functions.score(prompts, texts)
            except RewardError as exc:
                raise JobFailed(f"{exc}\n    the run stopped; its last checkpoint is kept "
                                f"({self.folder.path / 'checkpoints'})") from exc
        group = self.groups["reward"]
        parts = list(zip(split([p.raw for p in prompts], len(group)), split(texts, len(group))))
        return [s for chunk in self._get(group.async_each("score", parts), "reward") for s in chunk], {}

    def _scores(self, prompts: list[Prompt], gen: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """Sequence scores: the reward (model or functions), plus DAPO's overlong punishment."""
        totals, per_function = self._rewards(prompts, gen["texts"])
        scores = torch.tensor(totals, dtype=torch.float32)
        buffer = getattr(self.opts, "overlong_buffer", None)
        if buffer:
            lengths = torch.tensor([len(r) for r in gen["responses"]])
            penalty = overlong_penalty(lengths, self.opts.rollout.max_new_tokens, buffer,
                                       self.opts.overlong_penalty)
            scores = scores + penalty
            per_function = {**per_function, "reward/overlong_penalty": float(penalty.mean())}
        return scores, per_function

    def _fill_with_signal(self, step: int, prompts: list[Prompt], gen: dict[str, Any], scores: torch.Tensor,
                          per_function: dict[str, float]) -> tuple[list[Prompt], dict[str, Any], torch.Tensor,
                                                                   dict[str, float]]:
        """DAPO's dynamic sampling: keep the prompt groups whose rewards differ (the others have zero
        advantage: no gradient, only dilution) and sample further prompts until the batch is full
        or ``max_sampling_rounds`` is reached; then groups without signal fill what is left, so the
        batch keeps its size (``rollout/groups_with_signal`` says how much of it carries signal)."""
        G, want = self.opts.num_generations, self.opts.rollout.batch_size
        rounds = [(prompts, gen, scores)]
        for extra in range(1, self.opts.max_sampling_rounds):
            kept = sum(int(groups_with_signal(s, G).sum()) for _, _, s in rounds)
            if kept >= want:
                break
            idx = step_prompts(step, want, len(self.train_prompts), self.cfg.train.seed * 7_919 + extra)
            more = [self.train_prompts[i] for i in idx for _ in range(G)]
            with self._failures("rollout"):
                more_gen = self.pool.collect(self.pool.launch([p.ids for p in more], step,
                                                              self.cfg.train.seed + 104_729 * extra))
            rounds.append((more, more_gen, self._scores(more, more_gen)[0]))
        signal, spare = [], []
        for r, (_, _, s) in enumerate(rounds):
            for g, has in enumerate(groups_with_signal(s, G).tolist()):
                (signal if has else spare).append((r, g))
        chosen = (signal + spare)[:want]
        rows = [(r, g * G + k) for r, g in chosen for k in range(G)]
        merged_gen = {key: [rounds[r][1][key][i] for r, i in rows]
                      for key in ("responses", "texts", "finished")}
        logprobs = [rnd[1]["logprobs"] for rnd in rounds]
        merged_gen["logprobs"] = None if any(lp is None for lp in logprobs) else [
            rounds[r][1]["logprobs"][i] for r, i in rows]
        merged_gen.update({k: gen[k] for k in ("versions", "busy_s", "wall_s")})
        merged_gen["tokens"] = sum(rnd[1]["tokens"] for rnd in rounds)
        stats = {**per_function, "rollout/groups_with_signal": min(len(signal), want) / want,
                 "rollout/sampling_rounds": float(len(rounds))}
        return ([rounds[r][0][i] for r, i in rows], merged_gen,
                torch.stack([rounds[r][2][i] for r, i in rows]), stats)

    def _score(self, prompts: list[Prompt], gen: dict[str, Any], scores: torch.Tensor,
               per_function: dict[str, float]) -> tuple[Experience, dict[str, float]]:
        """Every role's view of the batch, requested in parallel, then the advantages."""
        batch = collate_rollouts([p.ids for p in prompts], gen["responses"], self.pad_id, self.eos_ids)
        g = self.groups

        def fan(role: str, method: str) -> list[Any]:
            return g[role].async_each(method, [(s,) for s in split(batch, len(g[role]))])

        old_refs = fan("policy", "forward")
        ref_refs = fan("reference", "logprobs") if self.uses_reference else None
        value_refs = fan("critic", "forward") if self.is_ppo else None
        old = torch.cat(self._get(old_refs, "policy"))
        ref = torch.cat(self._get(ref_refs, "reference")) if ref_refs else None
        mask = batch.response_mask
        if self.is_ppo:
            values = torch.cat(self._get(value_refs, "critic"))
            t = ppo_targets(scores, old, ref if ref is not None else old, values, mask, self.opts)
            exp = Experience(batch, old, t["advantages"], returns=t["returns"], old_values=values)
            stats = batch_stats(scores, mask, t["kl"] if ref is not None else None)
        else:
            advantages = advantages_for(self.opts.advantage, scores, self.opts.num_generations,
                                        self.opts.scale_rewards)
            exp = Experience(batch, old, advantages, ref_logprobs=ref)
            kl = kl_per_token(old, ref, "k3") * mask if ref is not None else None
            stats = batch_stats(scores, mask, kl)
        stats["response/finished_fraction"] = sum(gen["finished"]) / len(gen["finished"])
        stats.update(per_function)
        stats.update(self._mismatch(exp, gen))
        return exp, stats

    def _mismatch(self, exp: Experience, gen: dict[str, Any]) -> dict[str, float]:
        """The engine's own sampling log-probs (vLLM) against the trainer's: metrics, and the
        truncated importance weights the loss applies (``rollout.is_correction``)."""
        if gen.get("logprobs") is None:
            return {}
        mask = exp.batch.response_mask
        engine = torch.zeros_like(exp.old_logprobs)
        for i, lp in enumerate(gen["logprobs"]):
            engine[i, : len(lp)] = torch.tensor(lp, dtype=engine.dtype)
        stats = mismatch_metrics(exp.old_logprobs, engine, mask)
        mode = self.opts.rollout.is_correction
        if mode != "none":
            exp.is_weights = truncated_is_weights(exp.old_logprobs, engine, mask, mode=mode,
                                                  cap=self.opts.rollout.is_cap)
            stats["rollout/is_weight_mean"] = float(masked_mean(exp.is_weights, mask))
        return stats

    def _train(self, exp: Experience, step: int) -> dict[str, float]:
        refs = {}
        for role in ("policy", "critic"):
            if role in self.groups:
                shards = split(exp, len(self.groups[role]))
                refs[role] = self.groups[role].async_each("update", [(s, step) for s in shards])
        out: dict[str, float] = {}
        for role, rs in refs.items():
            out.update(self._get(rs, role)[0])  # metrics are reduced over ranks: rank 0's suffice
        return out

    def _account(self, step: int, gen: dict[str, Any], stats: dict[str, float], train: dict[str, float],
                 t_gen: float, t_score: float, t_train: float, t_sync: float, t_step: float) -> None:
        for key, value in (("generate", t_gen), ("score", t_score), ("train", t_train), ("sync", t_sync)):
            self.timings[key] += value
        self.tokens["rollout"] += gen["tokens"]
        self.tokens["train"] += int(train.get("policy/train_tokens", 0))
        metrics = {**stats, **train,
                   "rollout/tokens_per_s": gen["tokens"] / max(gen["busy_s"], 1e-9),
                   "rollout/busy_s": gen["busy_s"],
                   "rollout/weights_lag": step - min(gen["versions"]),
                   "train/tokens_per_s": train.get("policy/train_tokens", 0)
                   / max(train.get("policy/update_s", 0), 1e-9),
                   "time/generate_s": t_gen, "time/score_s": t_score, "time/train_s": t_train,
                   "time/sync_s": t_sync, "time/step_s": t_step,
                   "rollout/replacements": len(self.pool.replacements)}
        if not self.first:
            self.first = {"reward/mean": stats["reward/mean"]}
        self.last = {"reward/mean": stats["reward/mean"]}
        n = step + 1
        if n == 1 or n % self.cfg.logging.every_steps == 0 or n == self.cfg.train.max_steps:
            self.sinks.emit(n, metrics)

    def _evaluate(self) -> dict[str, float]:
        """Mean reward on the held-out prompts (sampled as in training, fixed seed)."""
        prompts = self.eval_prompts[: self.cfg.eval.max_generate]
        with self._failures("rollout"):
            gen = self.pool.collect(self.pool.launch([p.ids for p in prompts], -1, EVAL_SEED,
                                                     greedy=self.opts.eval_greedy))
        totals, per_function = self._rewards(prompts, gen["texts"])
        scores = torch.tensor(totals)
        return {"eval/reward_mean": float(scores.mean()),
                **{f"eval/{k}": v for k, v in per_function.items()},
                "eval/response_length": sum(len(r) for r in gen["responses"]) / len(prompts)}

    # ------------------------------------------------------------------ checkpoints, summary
    def _resume(self) -> int:
        """Continue from the newest checkpoint: both learner groups reload their backend state, the
        workers get the checkpoint's weights, and the step-seeded prompts and sampling pick up
        where they were. (Under async the first resumed batch is sampled with the checkpoint's
        weights, one version newer than the uninterrupted run used.)"""
        ckpts = Checkpoints(self.folder, self.cfg.checkpoint.keep)
        ckpts.clean_partial()
        latest = ckpts.latest()
        if latest is None:
            return 0
        refs = self.groups["policy"].async_call("load", str(latest))
        if "critic" in self.groups:
            refs += self.groups["critic"].async_call("load", str(latest / "critic"))
        self._get(refs, "policy/critic")
        state = Checkpoints.state(latest)
        self.first = state.get("first", {})
        step = int(state["step"])
        self._publish(step, wait=True)
        log.info("resumed from %s at step %d", latest, step)
        return step

    def _publish(self, version: int, wait: bool) -> dict[str, float]:
        """Weights after ``version`` updates to every rollout worker: adapters only under LoRA,
        else every tensor; one object in the store, one ref for all workers."""
        mode = "full" if self.cfg.peft is None else ("merged" if self.engine == "vllm" else "adapters")
        out = self._get(self.groups["policy"].async_call("publish_weights", mode, SYNC_BUCKET_MB), "policy")
        refs, size = out[0]  # rank 0's; other ranks only took part in the gather
        expected = self._trainer_probe()
        with self._failures("rollout"):
            self.pool.publish(refs, version, wait=wait, expected=expected)
        return {**size, "sync/probe_max_diff": self.pool.probe_max_diff}

    def _trainer_probe(self) -> list[float] | None:
        """The policy's log-probs of the sync probe (every rank runs the forward; rank 0's)."""
        probe = self.pool.probe
        if probe is None:
            return None
        return self._get(self.groups["policy"].async_call("probe", probe.prompt, probe.response), "policy")[0]

    def _start_sync_check(self) -> None:
        """The probe: the first train prompt and a fixed text after it. Checked once before step 1
        (every engine built its own copy of model.path: same weights, same layout?)."""
        check = self.opts.rollout.sync_check
        if not check.enabled:
            return
        tolerance = check.tolerance or (1e-3 if self.cfg.model.dtype == "fp32" else 5e-2)
        text = " the quick brown fox jumps over the lazy dog 0123456789" * 4
        response = self.tokenizer(text, add_special_tokens=False)["input_ids"][: check.probe_tokens]
        self.pool.probe = SyncProbe(self.train_prompts[0].ids, response, tolerance)
        with self._failures("rollout"):
            self.pool.expect(0, self._trainer_probe())
            self.pool.verify()

    def _checkpoint(self, step: int) -> None:
        ckpts = Checkpoints(self.folder, self.cfg.checkpoint.keep)
        tmp = ckpts.begin(step)
        refs = self.groups["policy"].async_call("save", str(tmp))
        if "critic" in self.groups:
            refs += self.groups["critic"].async_call("save", str(tmp / "critic"))
        self._get(refs, "policy/critic")
        ckpts.commit(step, {"step": step, "first": self.first, "method": self.cfg.method})

    def _write_summary(self, wall0: float, startup: float, loop_s: float, start_step: int,
                       initial: dict[str, float], final: dict[str, float]) -> None:
        steps = self.cfg.train.max_steps - start_step
        summary = {
            "method": self.cfg.method,
            "steps": self.cfg.train.max_steps,
            "wall_time_s": round(time.time() - wall0, 3),
            "startup_s": round(startup, 3),
            "loop_time_s": round(loop_s, 3),
            "step_s": loop_s / max(steps, 1),
            "tokens_per_s": self.tokens["rollout"] / max(loop_s, 1e-9),
            "tokens": dict(self.tokens),
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "initial": {**self.first, **initial},
            "final": {**self.last, **final},
            "async": self.async_,
            "placement": self.placement.describe() if self.placement else None,
            "roles": self.identities,
            "rollout_replacements": self.pool.replacements,
            "learners": self.setup_info,
            "resumed_from_step": start_step or None,
        }
        self.folder.write_summary(summary)
        self._write_roles()  # now with the actors that replaced dead rollout workers

    # ------------------------------------------------------------------ failures, teardown
    def _get(self, refs: Any, role: str) -> Any:
        """``ray.get`` that turns a dead or failing role into a ``JobFailed`` naming it and its log."""
        import ray

        with self._failures(role):
            return ray.get(refs)

    @contextlib.contextmanager
    def _failures(self, role: str) -> Iterator[None]:
        import ray

        try:
            yield
        except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError, RolloutFailed,
                SyncMismatch) as exc:
            lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
            logs = ", ".join(str(self.folder.logs / f"{r}-*.log") for r in role.split("/"))
            log.error("role %s failed: %s", role, exc)
            raise JobFailed(f"role {role} failed: {lines[-1] if lines else type(exc).__name__}\n"
                            f"    logs: {logs}") from None

    def _teardown(self) -> None:
        import ray

        for group in self.groups.values():
            for actor in group.actors:
                with contextlib.suppress(Exception):  # already dead
                    ray.kill(actor, no_restart=True)
        if self.placement is not None:
            self.placement.remove()
