"""``reward``: a reward model (one scalar per sequence) trained on preference pairs.

Bradley-Terry loss ``-log sigmoid(r_chosen - r_rejected - margin)`` as TRL's RewardTrainer
computes it (margin from the row's ``margin`` column, else ``reward.margin``), with TRL's
optional reward-centring term. Held-out metrics: pair accuracy and mean margin.
"""

from __future__ import annotations

import torch
from torch import nn

from strategies.base import LossOutput, Strategy
from strategies.catalog import RewardOptions
from strategies.heads import SequenceHeadMixin
from strategies.preference import PreferenceDataMixin


class RewardStrategy(PreferenceDataMixin, SequenceHeadMixin, Strategy[RewardOptions]):
    def num_labels(self) -> int:
        return 1

    def rewards(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """One scalar per row ([chosen; rejected])."""
        return self.sequence_logits(model, batch).squeeze(-1)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        chosen, rejected = self.rewards(model, batch).chunk(2)
        margin = batch["margin"].to(chosen) if "margin" in batch else self.options.margin
        loss = -nn.functional.logsigmoid(chosen - rejected - margin)
        if self.options.center_rewards_coefficient:
            loss = loss + self.options.center_rewards_coefficient * (chosen + rejected) ** 2
        with torch.no_grad():
            metrics = {"accuracy": (chosen > rejected).float().sum(),
                       "margin": (chosen - rejected).sum(),
                       "reward_chosen": chosen.sum(), "reward_rejected": rejected.sum()}
        return LossOutput(loss.sum(), torch.tensor(float(len(chosen))), metrics)
