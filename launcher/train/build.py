"""A trained model's backend from the config, and the ``final/`` folder it leaves.

The supervised loop and each RL learner rank (policy, critic) train one model the same way:
the sharding backend named by ``sharding`` (``launcher.backends.registry``), the model built
through it (so ZeRO-3 and FSDP2 construct it sharded), then the optimizer and LR schedule of the
``train`` section. Both end by writing ``final/`` the same way. One copy keeps a backend change
(a new hook, a new argument) from reaching one user and not the other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from launcher.core.lazy import load_object
from launcher.train.dist import RankContext, barrier


def build_backend(cfg: Any, ctx: RankContext, spec: Any, *,
                  around_load: contextlib.AbstractContextManager | None = None,
                  on_loaded: Callable[[Any, nn.Module], None] | None = None) -> Any:
    """The backend ``sharding`` names, holding ``spec``'s model (a strategy, or an RL role's model
    spec), with its optimizer and scheduler set up.

    ``around_load`` wraps the model load alone (the loop measures its peak memory there);
    ``on_loaded(backend, model)`` sees the model as loaded, before ``setup`` wraps it or casts
    frozen weights.
    """
    from launcher.backends.registry import resolve_sharding
    from launcher.train.optim import make_optimizer, make_scheduler

    backend = load_object(resolve_sharding(cfg.sharding).impl)(cfg, ctx)
    with around_load or contextlib.nullcontext():
        model = backend.load_model(spec)
    if on_loaded is not None:
        on_loaded(backend, model)
    backend.setup(model, lambda m: make_optimizer(m, cfg.train),
                  lambda o: make_scheduler(o, cfg.train))
    return backend


def write_final(backend: Any, tokenizer: Any, out: Path, ctx: RankContext) -> None:
    """``final/``: an HF folder (``from_pretrained``-ready; adapter only under LoRA). A collective:
    every rank takes part in gathering the weights, rank 0 writes."""
    state_dict = backend.full_state_dict()
    if ctx.is_main:
        backend.module.save_pretrained(out, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(out)
    barrier()
