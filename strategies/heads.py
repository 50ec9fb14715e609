"""Models with a new head on a pretrained body (reward models, classifiers).

The head is not in the checkpoint. ``from_pretrained`` would initialise it from the global
RNG, a sharded backend builds it on the meta device: both re-initialise it from a generator
seeded by the run seed and the parameter name, so every backend starts from the same head.
Decoder LMs pool the last non-padding token, which needs ``pad_token_id`` in the config.
"""

from __future__ import annotations

from typing import Any

from torch import nn


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
        return model

    def model_from_config(self, config: Any, **kwargs: Any) -> nn.Module:
        config.num_labels = self.num_labels()
        config.pad_token_id = self.tokenizer.pad_token_id
        return self.model_class().from_config(config, **kwargs)
