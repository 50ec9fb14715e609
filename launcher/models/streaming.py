"""Stream a checkpoint's tensors one at a time, mapped to a (possibly PEFT-wrapped) model.

Sharded backends load through this so that a rank holds at most its shards plus the one
tensor being copied: neither ``from_pretrained`` nor accelerate's FSDP2 path guarantees that
(transformers' ZeRO-3 loading was measured here holding a whole 375 MB model on rank 0).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch


def checkpoint_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / n for n in names]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors files in {folder} (sharded loading reads safetensors)")
    return files


def target_name(key: str, names: set[str]) -> str | None:
    """Map a checkpoint key to the model's parameter name (PEFT adds prefixes/base_layer; a
    body-only model, e.g. ``AutoModel`` of a causal LM, drops the ``model.`` prefix)."""
    keys = [key]
    head, _, rest = key.partition(".")
    if rest and head in ("model", "bert", "transformer", "roberta"):
        keys.append(rest)
    candidates = []
    for k in keys:
        candidates += [k, f"base_model.model.{k}"]
        if k.endswith((".weight", ".bias")):
            stem, _, leaf = k.rpartition(".")
            candidates += [f"{stem}.base_layer.{leaf}", f"base_model.model.{stem}.base_layer.{leaf}"]
    return next((c for c in candidates if c in names), None)


def iter_tensors(folder: Path, names: set[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """(parameter name, full tensor) for every checkpoint tensor the model has, one by one."""
    from safetensors import safe_open

    for file in checkpoint_files(folder):
        with safe_open(str(file), framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118 (safe_open is not iterable)
                name = target_name(key, names)
                if name is not None:
                    yield name, fh.get_tensor(key)


def check_complete(params: dict[str, torch.nn.Parameter], loaded: set[str], folder: Path) -> None:
    missing = [n for n, p in params.items() if n not in loaded and not getattr(p, "_ftl_init", False)]
    if missing:
        raise RuntimeError(f"weights missing from {folder}: {missing[:5]}")
