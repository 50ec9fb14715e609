"""The roles as Ray actors, and actor groups that fan a call out to all of a role's actors.

Each actor is a thin host around a plain object (``Learner``, ``RolloutEngine``, the scorers):
it sets its thread count, logs to ``<run>/logs/<role>-<index>.log`` and can say who it is (actor
id, PID, node), which the controller records in ``summary.json`` and ``logs/roles.json``.
Following OpenRLHF's convention, group methods named ``async_*`` return object refs, the others
block until every actor has answered.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from launcher.run.rundir import RunFolder


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


class RoleActor:
    """Common part of every role: config, threads, log file, identity."""

    def __init__(self, run_dir: str, role: str, index: int, threads: int):
        import torch

        self.folder = RunFolder(Path(run_dir))
        self.role, self.index = role, index
        torch.set_num_threads(threads)
        _quiet_transformers()
        self.folder.logs.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.folder.logs / f"{role}-{index}.log")
        handler.setFormatter(logging.Formatter(f"%(asctime)s {role}-{index} %(levelname)s %(message)s"))
        root = logging.getLogger("ftl")
        root.handlers = [handler]
        root.setLevel(logging.INFO)
        root.propagate = False
        self.log = logging.getLogger(f"ftl.ppo.{role}")
        self.cfg = self.folder.load_config()
        self.log.info("started: pid %d, %d threads", os.getpid(), threads)

    def identity(self) -> dict[str, Any]:
        import ray

        ctx = ray.get_runtime_context()
        return {"role": self.role, "index": self.index, "actor_id": ctx.get_actor_id(), "pid": os.getpid(),
                "node_id": ctx.get_node_id(), "host": socket.gethostname()}


class LearnerActor(RoleActor):
    """A rank of the policy trainer group or of the critic group (``Learner`` on a backend)."""

    def address(self) -> tuple[str, int]:
        """This node's IP and a free port: rank 0's become the group's rendezvous."""
        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def setup(self, master: tuple[str, int], world_size: int, model_path: str | None) -> dict[str, Any]:
        """Join the group's torch.distributed process group, then build the model on the backend."""
        from launcher.models.load import count_parameters
        from launcher.train.dist import init_distributed
        from strategies.ppo.learner import Learner
        from strategies.ppo.schedule import learner_config

        os.environ.update({"MASTER_ADDR": master[0], "MASTER_PORT": str(master[1]), "RANK": str(self.index),
                           "WORLD_SIZE": str(world_size), "LOCAL_RANK": "0"})
        cfg = learner_config(self.cfg, self.role, world_size, model_path)
        gpus = cfg.resources.gpus_per_worker
        ctx = init_distributed(use_gpu=gpus > 0)
        self.learner = Learner(cfg, self.role, ctx, run_dir=self.folder.path)
        total, trainable = count_parameters(self.learner.backend.module, self.learner.backend)
        self.log.info("rank %d/%d ready: %s, %d parameters (%d trainable), device %s", ctx.rank, world_size,
                      cfg.sharding.backend, total, trainable, ctx.device)
        return {"parameters": total, "trainable": trainable, "world_size": ctx.world_size}

    def forward(self, batch: Any) -> Any:
        return self.learner.forward(batch)

    def probe(self, prompt: list[int], response: list[int]) -> list[float]:
        return self.learner.probe(prompt, response)

    def update(self, exp: Any, step: int) -> dict[str, float]:
        metrics = self.learner.update(exp, step)
        self.log.info("step %d %s", step + 1, {k: round(v, 5) for k, v in metrics.items()})
        return metrics

    def publish_weights(self, mode: str, bucket_mb: float) -> tuple[list[Any], dict[str, float]] | None:
        """Put the weights rollout workers need into the object store once (rank 0), in buckets of
        at most ``bucket_mb``, and hand back their refs (in a list, so Ray passes the refs rather
        than their values) with the size of what travels. ``mode``: ``models.sync_state``."""
        import ray

        from strategies.ppo.models import buckets, pack, sync_state

        state = self.learner.full_weights()  # a collective: every rank calls it
        if state is None:
            return None
        peft = self.cfg.peft
        state = sync_state(state, mode, peft.alpha / peft.r if peft is not None else 1.0)
        size = {"sync/tensors": len(state), "sync/mb": sum(t.numel() * t.element_size()
                                                           for t in state.values()) / 2**20}
        return [ray.put(pack(b)) for b in buckets(state, bucket_mb)], size

    def save(self, folder: str) -> None:
        self.learner.save(Path(folder))

    def load(self, folder: str) -> None:
        self.learner.load(Path(folder))
        self.log.info("restored from %s", folder)

    def export(self, folder: str) -> None:
        self.learner.export(Path(folder))

    def close(self) -> None:
        import torch.distributed as dist

        self.learner.close()
        if dist.is_initialized():
            dist.destroy_process_group()


class RolloutActor(RoleActor):
    """A rollout worker: its own copy of the policy, sampling its share of each batch."""

    def __init__(self, run_dir: str, role: str, index: int, threads: int):
        super().__init__(run_dir, role, index, threads)
        from strategies.ppo.engine import make_engine, resolve_engine

        self.engine = make_engine(self.cfg)
        self.log.info("engine: %s", resolve_engine(self.cfg.method_options().rollout.engine))

    def special_ids(self) -> dict[str, Any]:
        """Pad and EOS ids the worker cuts responses with (the controller masks with the same)."""
        return {"pad": self.engine.pad_id, "eos": self.engine.eos_ids}

    def generate(self, prompts: list[list[int]], seed: int, step: int, greedy: bool = False
                 ) -> dict[str, Any]:
        from launcher.core import failpoints

        failpoints.hit("rollout.generate", step + 1, self.index)
        out = self.engine.generate(prompts, seed, greedy)
        self.log.info("step %d: %d responses, %d tokens in %.2f s (weights v%d)", step + 1, len(prompts),
                      out["tokens"], out["seconds"], out["version"])
        return out

    def load_weights(self, refs: list[Any], version: int) -> int:
        import ray

        from launcher.core import failpoints

        if failpoints.hit("rollout.load_weights", version, self.index):  # a sync that never lands
            self.log.warning("weights v%d NOT loaded (failpoint)", version)
            self.engine.version = version
            return version
        self.engine.load_weights((ray.get(ref) for ref in refs), version)
        self.log.info("weights v%d loaded (%d buckets)", version, len(refs))
        return version

    def probe(self, prompt: list[int], response: list[int]) -> list[float]:
        return self.engine.probe(prompt, response)


class ReferenceActor(RoleActor):
    def __init__(self, run_dir: str, role: str, index: int, threads: int):
        super().__init__(run_dir, role, index, threads)
        from strategies.ppo.scoring import ReferenceScorer

        self.scorer = ReferenceScorer(self.cfg)

    def logprobs(self, batch: Any) -> Any:
        return self.scorer.logprobs(batch)


class RewardActor(RoleActor):
    def __init__(self, run_dir: str, role: str, index: int, threads: int):
        super().__init__(run_dir, role, index, threads)
        from strategies.ppo.scoring import RewardModelScorer

        self.scorer = RewardModelScorer(self.cfg)

    def score(self, prompts: list[Any], completions: list[str]) -> list[float]:
        return self.scorer.score(prompts, completions)


ROLE_CLASSES: dict[str, type[RoleActor]] = {
    "policy": LearnerActor, "critic": LearnerActor, "reference": ReferenceActor, "reward": RewardActor,
    "rollout": RolloutActor}


def split(items: Sequence[Any] | Any, parts: int) -> list[Any]:
    """``parts`` contiguous, near-equal slices (rows of a tensor, batch or list), order kept."""
    n = len(items)
    bounds = [n * i // parts for i in range(parts + 1)]
    if hasattr(items, "rows"):
        return [items.rows(range(bounds[i], bounds[i + 1])) for i in range(parts)]
    return [items[bounds[i]:bounds[i + 1]] for i in range(parts)]


class ActorGroup:
    """The actors of one role, placed on their slots, created in parallel."""

    def __init__(self, role: str, placement: Any, run_dir: str, threads: int, env: dict[str, str],
                 num_workers: int):
        self.role, self.placement, self.run_dir = role, placement, run_dir
        self.threads, self.env = threads, env
        self.actors = [self.make(i) for i in range(num_workers)]

    def make(self, index: int, env: dict[str, str] | None = None) -> Any:
        import ray

        cls = ray.remote(ROLE_CLASSES[self.role])
        options = self.placement.slot(self.role, index).actor_options()
        return cls.options(**options, runtime_env={"env_vars": env or self.env}, max_restarts=0,
                           name=None).remote(self.run_dir, self.role, index, self.threads)

    def __len__(self) -> int:
        return len(self.actors)

    def async_call(self, method: str, *args: Any) -> list[Any]:
        """Same arguments to every actor; returns one ref per actor."""
        return [getattr(a, method).remote(*args) for a in self.actors]

    def async_each(self, method: str, per_actor: Sequence[tuple]) -> list[Any]:
        """One argument tuple per actor (e.g. each rank's shard)."""
        return [getattr(a, method).remote(*args) for a, args in zip(self.actors, per_actor)]

    def identities(self) -> list[dict[str, Any]]:
        import ray

        return ray.get(self.async_call("identity"))

    def kill(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)


class LearnerGroup(ActorGroup):
    """A trained role: its actors form one torch.distributed group (gloo on CPU, nccl on GPU)."""

    def setup(self, model_path: str | None = None) -> list[dict[str, Any]]:
        import ray

        master = ray.get(self.actors[0].address.remote())
        return ray.get(self.async_call("setup", master, len(self.actors), model_path))
