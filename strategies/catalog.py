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


@strategy("reward", impl="strategies.reward:RewardStrategy", formats=("preference",), generative=False)
class RewardOptions(Section):
    """Reward model: a scalar head on a causal LM trained with the Bradley-Terry loss."""

    margin: float = Field(0.0, description="Subtracted from chosen - rejected (TRL's margin column "
                          "overrides it per row).")
    center_rewards_coefficient: float | None = Field(
        None, ge=0, description="Adds coef * mean((r_chosen + r_rejected)^2) to keep rewards centred.")


@strategy("dpo", impl="strategies.dpo:DPOStrategy", formats=("preference",), generative=False)
class DPOOptions(Section):
    """Direct preference optimisation and its variants, with TRL's loss definitions."""

    loss_type: Literal["sigmoid", "ipo", "hinge", "robust"] = Field(
        "sigmoid", description="sigmoid = DPO; ipo; hinge (SLiC); robust (label-noise robust DPO).")
    beta: float = Field(0.1, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="robust: assumed label-flip rate.")
    reference: Literal["auto", "adapters", "precomputed", "model"] = Field(
        "auto", description="auto: adapters under LoRA (the base model with adapters disabled), else "
        "precomputed (log-probs of the starting model, computed once before step 1). model: a frozen "
        "copy of ref_model, replicated on every rank.")
    ref_model: str | None = Field(None, description="reference: model — its path (default: model.path).")


@strategy("classify", impl="strategies.classify:ClassifyStrategy", formats=("classification",),
          generative=False)
class ClassifyOptions(Section):
    """Sequence classification with a task-specific head (num_labels outputs)."""

    labels: list[str] = Field(min_length=2, description="Label names; data labels are names or indices.")


@strategy("contrastive", impl="strategies.contrastive:ContrastiveStrategy", formats=("pairs",),
          generative=False)
class ContrastiveOptions(Section):
    """Embedding training: InfoNCE over in-batch negatives gathered across ranks."""

    temperature: float = Field(0.05, gt=0)
    pooling: Literal["mean", "last"] = Field("mean", description="mean over tokens, or the last token "
                                             "(decoder LMs).")
    gather_across_ranks: bool = Field(True, description="Use every rank's batch as negatives.")


# -- online RL: a controller drives Ray actor groups instead of a TorchTrainer (strategies/ppo)
from strategies.ppo.options import CriticRole, OnlineRLOptions  # noqa: E402  (light: pydantic only)

_RL_CONTROLLER = "strategies.ppo.controller:run_controller"


@strategy("ppo", impl="strategies.ppo.models:PolicyModel", formats=("prompt",),
          controller=_RL_CONTROLLER)
class PPOOptions(OnlineRLOptions):
    """PPO actor-critic with separate rollout workers: KL-shaped rewards, GAE, clipped losses."""

    critic: CriticRole = Field(default_factory=CriticRole, description="Value model (trained).")
    kl_coef: float = Field(0.05, ge=0, description="Per-token KL penalty vs the reference, in the reward.")
    kl_estimator: Literal["k1", "k2", "k3"] = Field("k1", description="KL estimator of the penalty.")
    gamma: float = Field(1.0, gt=0, le=1, description="Discount over response tokens.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    value_clip: float = Field(0.2, gt=0, description="Clip range of the value update.")
    whiten_advantages: bool = Field(True, description="Normalise advantages over the batch's tokens.")


@strategy("grpo", impl="strategies.ppo.models:PolicyModel", formats=("prompt",),
          controller=_RL_CONTROLLER)
class GRPOOptions(OnlineRLOptions):
    """GRPO and its family: several responses per prompt, advantages relative to their group (or
    the batch), no critic. ``loss_type`` and ``advantage`` choose the variant:

    - grpo (Shao et al. 2024, DeepSeekMath): per-sequence token mean, then mean over sequences.
    - bnpo: token-level mean over the batch.
    - dr_grpo (Liu et al. 2025, "Understanding R1-Zero-like training"): no std scaling of
      advantages (set scale_rewards: false) and a constant normaliser (sequences x max_new_tokens),
      which removes the length bias.
    - dapo (Yu et al. 2025): token-level mean over the global batch; pair it with clip_eps_high
      (clip-higher), dynamic_sampling and overlong_buffer as in the paper.
    - gspo (Zheng et al. 2025, Qwen): one importance ratio per sequence (the geometric mean of the
      token ratios), clipped at sequence level.
    - advantage rloo (Ahmadian et al. 2024): leave-one-out baseline within the group;
      reinforce++ (Hu 2025): normalised over the whole batch; reinforce++_baseline: group mean
      subtracted, then normalised over the batch.
    """

    num_generations: int = Field(4, ge=2, description="Responses sampled per prompt (the group).")
    beta: float = Field(0.04, ge=0, description="Weight of the k3 KL term vs the reference in the loss "
                        "(0: no reference actor is started).")
    kl_ratio: bool = Field(False, description="Multiply the KL term by the policy ratio (DeepSeek-V3.2's "
                           "unbiased KL gradient; TRL's use_bias_correction_kl).")
    scale_rewards: bool = Field(True, description="Divide group advantages by the group's std (false: "
                                "Dr. GRPO).")
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo", "gspo"] = Field(
        "grpo", description="How per-token losses are normalised and where the ratio is taken (see "
        "the method's description).")
    advantage: Literal["group", "rloo", "reinforce++", "reinforce++_baseline"] = Field(
        "group", description="group: (r - group mean) [/ group std]; rloo: leave-one-out baseline; "
        "reinforce++: batch-normalised; reinforce++_baseline: group mean removed, batch std.")
    clip_eps_high: float | None = Field(None, gt=0, description="Upper clip (DAPO clip-higher, e.g. "
                                        "0.28); default: clip_eps.")
    dynamic_sampling: bool = Field(False, description="DAPO: drop groups whose rewards are all equal "
                                   "(no signal) and sample more prompts until the batch is full.")
    max_sampling_rounds: int = Field(4, gt=0, description="dynamic_sampling: generation rounds per step "
                                     "before training on a smaller batch.")
    overlong_buffer: int | None = Field(None, gt=0, description="DAPO soft overlong punishment: over "
                                        "the last N tokens before rollout.max_new_tokens the reward "
                                        "falls linearly by up to overlong_penalty.")
    overlong_penalty: float = Field(1.0, ge=0, description="Largest overlong punishment.")

    def samples_per_prompt(self) -> int:
        return self.num_generations
