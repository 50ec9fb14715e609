"""Every method's config section, registered with the strategy that implements it.

Kept free of heavy imports: ``ftl validate`` and ``ftl schema`` load this module only.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from launcher.config.schema import Section
from strategies.registry import strategy


@strategy("full", impl="strategies.full:FullStrategy", formats=("text",))
class FullOptions(Section):
    """Full-parameter causal LM on raw text (continued pretraining)."""

    add_eos: bool = Field(True, description="Append EOS to every document before packing.")


@strategy(
    "sft",
    impl="strategies.sft:SFTStrategy",
    formats=("messages", "prompt_completion"),
    needs_chat_template=True,
)
class SFTOptions(Section):
    """Supervised fine-tuning / instruction tuning on chats or prompt/completion pairs."""

    loss_on: Literal["assistant", "all"] = Field(
        "assistant", description="assistant: loss on assistant/completion tokens only."
    )
