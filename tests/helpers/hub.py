"""A validated config for a Hugging Face Hub model (read from the bundled architectures, no
download): bf16, gradient checkpointing, 8 GPU workers, 4096 tokens; override any section."""

from __future__ import annotations

from launcher.config.load import validate_config
from tests.helpers.ftl import tiny_config


def hub_config(model: str, **sections) -> object:
    base = {"model": {"path": model, "dtype": "bf16", "gradient_checkpointing": True},
            "data": {"train": {"path": "builtin:reverse"}, "max_length": 4096},
            "train": {"max_steps": 10, "micro_batch_size": 1, "lr": 1e-5},
            "resources": {"num_workers": 8, "gpus_per_worker": 1}}
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return validate_config(tiny_config(**base))
