"""Models with a new head on a pretrained body (reward models, classifiers).

The head is not in the checkpoint. ``from_pretrained`` would initialise it from the global
RNG, a sharded backend builds it on the meta device: both re-initialise it from a generator
seeded by the run seed and the parameter name, so every backend starts from the same head.
Decoder LMs pool the last non-padding token, which needs ``pad_token_id`` in the config.

Packed rows (``data.packing``) hold several sequences, and the model pools one token per row:
the per-token output of the head (``score``, the decoders' per-position linear) is read with a
forward hook during the ordinary forward call (so DDP/FSDP/DeepSpeed wrappers still see it),
and each sequence's score taken at its own last token. Models that pool inside the model
before their head (BERT-style ``classifier`` on the [CLS] output) cannot be packed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from launcher.core.errors import HintedValueError
from launcher.data.batching import model_inputs


class SequenceHeadMixin:
    """For strategies whose model is ``AutoModelForSequenceClassification`` with N outputs."""

    peft_task_type = "SEQ_CLS"
    tokenizer: Any
    cfg: Any

    def num_labels(self) -> int:
        raise NotImplementedError

    def model_class(self) -> Any:
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    def load_model(self, path: str, **kwargs: Any) -> nn.Module:
        from launcher.models.load import init_new_weights

        model, info = self.model_class().from_pretrained(
            path, num_labels=self.num_labels(), pad_token_id=self.tokenizer.pad_token_id,
            output_loading_info=True, **kwargs)
        init_new_weights(model, self.cfg.train.seed, list(info["missing_keys"]))
        return self._check_packing(model)

    def model_from_config(self, config: Any, **kwargs: Any) -> nn.Module:
        config.num_labels = self.num_labels()
        config.pad_token_id = self.tokenizer.pad_token_id
        return self._check_packing(self.model_class().from_config(config, **kwargs))

    def _check_packing(self, model: nn.Module) -> nn.Module:
        if self.cfg.data.packing and token_head(model) is None:
            raise HintedValueError(
                f"data.packing: {type(model).__name__} pools its sequence inside the model (no per-token "
                "'score' head), so a packed row's sequences cannot be scored separately",
                "set data.packing: false for this model (decoder LMs such as Llama, Qwen2, Mistral pack)")
        return model

    def sequence_logits(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[sequences, num_labels]: the head's output at each sequence's last token (one per row
        unpacked; one per segment, in the collated order, packed)."""
        if "seq_last" not in batch:
            return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         use_cache=False).logits.float()
        head = token_head(model)
        if head is None:
            raise HintedValueError("data.packing: the model has no per-token 'score' head",
                                   "set data.packing: false")
        seen: list[torch.Tensor] = []
        handle = head.register_forward_hook(lambda _m, _i, out: seen.append(out))
        try:
            model(**model_inputs(batch), use_cache=False)
        finally:
            handle.remove()
        per_token = seen[-1]
        return per_token.reshape(-1, per_token.shape[-1])[batch["seq_last"]].float()


def token_head(model: nn.Module) -> nn.Module | None:
    """The decoders' per-token head (``score``; under peft its ModulesToSaveWrapper, which comes
    first in ``named_modules``), or None."""
    return next((m for name, m in model.named_modules() if name.rsplit(".", 1)[-1] == "score"), None)
