"""The models of the RL roles, and the weights that travel from the trainer to rollout workers.

``PolicyModel`` and ``CriticModel`` are ``ModelSpec``s, not strategies: they say what the sharding
backends need (which Auto class, how to build it from a config, which peft task type) and no
loss (the learners own theirs): that is how the policy and the critic train under ddp, DeepSpeed
ZeRO or FSDP2 without a line of backend-specific code here. ``PolicyModel`` is also the method's
registered ``impl``, a ``DataSpec`` (preflight reads prompt rows through it), so ``ftl export``
rebuilds a PPO/GRPO run's policy from its checkpoints like any other run's.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from strategies.base import DataSpec, ModelSpec
from strategies.ppo.options import OnlineRLOptions


class PolicyModel(DataSpec[OnlineRLOptions]):
    """The policy (a causal LM): trained by the trainer group, copied by the rollout workers."""

    def tokenize(self, row: dict, fmt: str) -> dict:
        """A prompt row as the rollout workers will see it (preflight runs this on the first rows)."""
        from strategies.ppo.prompts import encode_prompt

        room = self.cfg.data.max_length - self.options.rollout.max_new_tokens
        return {"input_ids": encode_prompt(self.tokenizer, row["prompt"], room).ids}

    def token_counts(self, feature: dict) -> None:
        return None  # prompts: what is trained on is generated later

    def pack_dataset(self, features: list[dict]) -> list[dict]:
        """Prompts are not packed: ``data.packing`` makes the learners' forward passes over
        prompt + response padding-free (``strategies.ppo.batch.PackedRolloutBatch``)."""
        return features


class CriticModel(ModelSpec[OnlineRLOptions]):
    """The value model: a token classifier with one output (a value per position)."""

    peft_task_type = "TOKEN_CLS"  # peft trains the new value head in full, adapts the body

    def model_class(self) -> Any:
        from transformers import AutoModelForTokenClassification

        return AutoModelForTokenClassification

    def load_model(self, path: str, **kwargs: Any) -> nn.Module:
        from transformers import AutoConfig

        from launcher.models.load import init_new_weights

        config = AutoConfig.from_pretrained(path, num_labels=1,
                                            trust_remote_code=kwargs.get("trust_remote_code", False))
        config.classifier_dropout = 0.0  # dropout before the value head only adds noise to V
        model, info = self.model_class().from_pretrained(path, config=config, output_loading_info=True,
                                                         **kwargs)
        init_new_weights(model, self.cfg.train.seed, list(info["missing_keys"]))
        return model

    def model_from_config(self, config: Any, **kwargs: Any) -> nn.Module:
        config.num_labels = 1
        config.classifier_dropout = 0.0
        return self.model_class().from_config(config, **kwargs)


def is_adapter_folder(path: str | Path) -> bool:
    p = Path(path)
    return (p / "adapter_config.json").exists() and not (p / "config.json").exists()


def load_reward_model(path: str) -> tuple[nn.Module, Any]:
    """A ``method: reward`` run's final/ as a frozen sequence classifier and its tokenizer.
    Adapter-only folders (LoRA runs) are loaded on their base and merged."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if is_adapter_folder(path):
        from peft import AutoPeftModelForSequenceClassification

        model = AutoPeftModelForSequenceClassification.from_pretrained(path, num_labels=1,
                                                                       dtype=torch.float32)
        model = model.merge_and_unload()
    else:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    model.eval().requires_grad_(False)
    return model, tokenizer


def materialize_merged(path: str, out: Path) -> str:
    """A full HF folder for ``path``: itself, or (adapter-only) its base with the adapter merged,
    written once to ``out``. Sharded backends stream weights from a folder, hence a folder."""
    if not is_adapter_folder(path):
        return path
    if not (out / "config.json").exists():
        model, tokenizer = load_reward_model(path)
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
    return str(out)


def vocab_size(path: str) -> int:
    folder = Path(path)
    if is_adapter_folder(folder):
        base = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
        folder = Path(base)
    return int(json.loads((folder / "config.json").read_text())["vocab_size"])


# ----------------------------------------------------------------------------- weight sync


SyncMode = str  # "full" | "adapters" | "merged"


def sync_state(state_dict: dict[str, torch.Tensor], mode: SyncMode, lora_scaling: float = 1.0
               ) -> dict[str, torch.Tensor]:
    """What a rollout worker needs after an update. ``full``: every tensor. ``adapters``: the
    LoRA tensors alone (an HF engine holds the same peft model; the frozen base never changes).
    ``merged``: the whole plain model, adapters merged in (a vLLM engine holds a plain model and
    reloads a complete set of weights: its in-place reload processes a layer once all of it came)."""
    if mode == "adapters":
        return {k: v for k, v in state_dict.items() if "lora_" in k}
    if mode == "merged":
        return merge_lora(state_dict, lora_scaling)
    return state_dict


PEFT_PREFIX = "base_model.model."


def merge_lora(state_dict: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """The plain model's state dict (``model.layers.0.self_attn.q_proj.weight``) from a peft
    model's: ``W + scaling * B @ A`` for every adapted linear, every other tensor as it is; peft's
    own merge, without a model instance."""
    out = {}
    for key, value in state_dict.items():
        if ".lora_" in key:
            continue
        name = key.removeprefix(PEFT_PREFIX)
        if ".base_layer." not in name:
            out[name] = value
            continue
        module, _, leaf = key.rpartition(".base_layer.")
        name = name.replace(".base_layer.", ".")
        a_key = next((k for k in state_dict if k.startswith(f"{module}.lora_A.")), None)
        if leaf != "weight" or a_key is None:
            out[name] = value
            continue
        b = state_dict[a_key.replace(".lora_A.", ".lora_B.")].float()
        out[name] = (value.float() + scaling * (b @ state_dict[a_key].float())).to(value.dtype)
    return out


def buckets(state_dict: dict[str, torch.Tensor], bucket_mb: float) -> list[dict[str, torch.Tensor]]:
    """Split tensors into groups of at most ``bucket_mb`` (a bigger tensor is a group alone), so
    neither the object store nor an engine holds more than one group of a large model at once."""
    out: list[dict[str, torch.Tensor]] = [{}]
    size = 0.0
    for name, t in state_dict.items():
        mb = t.numel() * t.element_size() / 2**20
        if out[-1] and size + mb > bucket_mb:
            out.append({})
            size = 0.0
        out[-1][name] = t
        size += mb
    return out


def pack(state_dict: dict[str, torch.Tensor]) -> dict[str, tuple[str, np.ndarray]]:
    """Tensors as numpy arrays, which Ray's object store hands to every reader without a copy
    (pickled torch tensors would be copied per worker). bf16 travels as its raw 16-bit pattern."""
    out = {}
    for name, t in state_dict.items():
        t = t.detach().cpu().contiguous()
        if t.dtype == torch.bfloat16:
            out[name] = ("bfloat16", t.view(torch.int16).numpy())
        else:
            out[name] = (str(t.dtype).removeprefix("torch."), t.numpy())
    return out


def unpack(packed: dict[str, tuple[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Read-only tensor views of packed arrays (no copy): copy them into place, never write."""
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "non-writable array": we only read it
        for name, (dtype, array) in packed.items():
            t = torch.from_numpy(array)
            out[name] = t.view(torch.bfloat16) if dtype == "bfloat16" else t
    return out


def load_synced(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy synced tensors into a worker's model; a name it does not have is a bug, not a skip."""
    own = model.state_dict()
    unknown = [k for k in state if k not in own]
    if unknown:
        raise KeyError(f"synced weights do not match the rollout model: {unknown[:3]}")
    with torch.no_grad():
        for name, tensor in state.items():
            own[name].copy_(tensor.to(own[name].dtype))
