"""Every method's config section, registered with the strategy that implements it.

Kept free of heavy imports: ``ftl validate`` and ``ftl schema`` load this module only.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from launcher.config.section import Section
from strategies.ppo.options import CriticRole, OnlineRLOptions  # light: pydantic only
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


class ReferenceOptions(Section):
    """The frozen reference of DPO and KTO (strategies/reference.py)."""

    reference: Literal["auto", "adapters", "precomputed", "model"] = Field(
        "auto", description="auto: adapters under LoRA (the base model with adapters disabled), else "
        "precomputed (log-probs of the starting model, computed once before step 1). model: a frozen "
        "fp32 copy of ref_model, whole on every rank.")
    ref_model: str | None = Field(None, description="reference: model — its path (default: model.path).")

    def keeps_reference_model(self) -> bool:
        """A second model resident on every rank (the planner counts its memory)."""
        return self.reference == "model"


@strategy("dpo", impl="strategies.dpo:DPOStrategy", formats=("preference",), generative=False)
class DPOOptions(ReferenceOptions):
    """Direct preference optimisation and its variants, with TRL's loss definitions."""

    loss_type: Literal["sigmoid", "ipo", "hinge", "robust"] = Field(
        "sigmoid", description="sigmoid = DPO; ipo; hinge (SLiC); robust (label-noise robust DPO).")
    beta: float = Field(0.1, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="robust: assumed label-flip rate.")


@strategy("kto", impl="strategies.kto:KTOStrategy", formats=("feedback",), generative=False)
class KTOOptions(ReferenceOptions):
    """Kahneman-Tversky optimisation on unpaired feedback (prompt, completion, label), with TRL's
    loss and KL reference point."""

    loss_type: Literal["kto", "apo_zero_unpaired"] = Field(
        "kto", description="kto (Ethayarajh et al. 2024); apo_zero_unpaired (APO-zero, no KL term).")
    beta: float = Field(0.1, gt=0)
    desirable_weight: float = Field(1.0, gt=0, description="Weight of label-true examples' losses.")
    undesirable_weight: float = Field(1.0, gt=0, description="Weight of label-false examples' losses "
                                      "(raise it when undesirable examples are rarer).")


@strategy("cpo", impl="strategies.cpo:CPOStrategy", formats=("preference",), generative=False)
class CPOOptions(Section):
    """Contrastive preference optimisation: a reference-free preference loss plus an NLL term on
    the chosen answers (TRL's CPOTrainer); loss_type simpo gives SimPO with cpo_alpha 0."""

    loss_type: Literal["sigmoid", "hinge", "ipo", "simpo"] = Field(
        "sigmoid", description="sigmoid (CPO), hinge, ipo, simpo (length-normalised, target margin).")
    beta: float = Field(0.1, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="sigmoid/simpo: conservative loss.")
    simpo_gamma: float = Field(0.5, ge=0, description="simpo: target reward margin gamma.")
    cpo_alpha: float = Field(1.0, ge=0, description="Weight of the NLL loss on chosen answers.")


@strategy("simpo", impl="strategies.cpo:CPOStrategy", formats=("preference",), generative=False)
class SimPOOptions(CPOOptions):
    """SimPO (Meng et al. 2024): length-normalised log-probs as the reward and a target margin, no
    reference model; TRL's CPOTrainer with loss_type simpo and cpo_alpha 0."""

    loss_type: Literal["simpo"] = Field("simpo", description="Always simpo (use method cpo for others).")
    beta: float = Field(2.0, gt=0, description="Reward scale (the paper uses 2.0-10).")
    cpo_alpha: float = Field(0.0, ge=0, description="Weight of an NLL term on chosen answers (CPO-SimPO).")


@strategy("orpo", impl="strategies.cpo:ORPOStrategy", formats=("preference",), generative=False)
class ORPOOptions(Section):
    """Odds-ratio preference optimisation (Hong et al. 2024): SFT and preference in one stage, no
    reference model (TRL's ORPOTrainer)."""

    beta: float = Field(0.1, gt=0, description="lambda of the paper: weight of the odds-ratio term.")
    nll_on: Literal["all", "completion"] = Field(
        "all", description="Tokens of the chosen rows in the SFT (NLL) term: all (prompt included, as "
        "TRL's ORPOTrainer) or the answer only.")


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

_RL_CONTROLLER = "strategies.ppo.controller:run_controller"
_RL_ROLE_PLAN = "strategies.ppo.planning"


@strategy("ppo", impl="strategies.ppo.models:PolicyModel", formats=("prompt",),
          controller=_RL_CONTROLLER, role_plan=_RL_ROLE_PLAN)
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
          controller=_RL_CONTROLLER, role_plan=_RL_ROLE_PLAN)
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
