"""ftl's DPO (every loss type) and reward losses equal TRL's trainers on the same batch.

TRL is imported as the reference: its ``DPOTrainer``/``RewardTrainer`` tokenize the same
preference rows and compute the loss of one batch with a tiny Llama whose policy weights
were perturbed away from the reference (otherwise every log-ratio is 0 and any formula
gives log 2). ftl computes the same batch through its strategy; losses must agree to 1e-5.
"""

from __future__ import annotations

import copy

import pytest
import torch

from launcher.config.load import validate_config
from launcher.data.synthetic import generate
from launcher.models.tiny import resolve_model_path
from tests.conftest import tiny_config

ROWS = 8


def ftl_strategy(method: str, section: dict, tok):
    from strategies import build_strategy

    raw = tiny_config(method=method, **{method: section})
    raw["data"] = {"train": {"path": "builtin:prefs-reverse"}, "max_length": 128}
    cfg = validate_config(raw)
    return build_strategy(cfg, tok)


@pytest.fixture(scope="module")
def tiny():
    from transformers import AutoTokenizer

    path = resolve_model_path("builtin:tiny-llama")
    return path, AutoTokenizer.from_pretrained(path)


def perturbed(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


@pytest.mark.parametrize("loss_type,label_smoothing", [("sigmoid", 0.0), ("ipo", 0.0), ("hinge", 0.0),
                                                       ("robust", 0.2)])
def test_dpo_loss_equals_trl(tiny, tmp_path, loss_type, label_smoothing):
    import datasets
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    path, tok = tiny
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    policy = perturbed(copy.deepcopy(ref))
    rows = generate("prefs-reverse", ROWS, seed=3)
    args = DPOConfig(output_dir=str(tmp_path), loss_type=[loss_type], beta=0.3,
                     label_smoothing=label_smoothing, report_to=[], use_cpu=True,
                     per_device_train_batch_size=ROWS, max_length=128)
    trainer = DPOTrainer(model=policy, ref_model=ref, args=args,
                         train_dataset=datasets.Dataset.from_list(rows), processing_class=tok)
    trl_rows = [trainer.train_dataset[i] for i in range(ROWS)]
    policy.train()
    trl_loss = float(trainer.compute_loss(policy, trainer.data_collator(trl_rows)))
    trl_chosen_reward = trainer._metrics["train"]["rewards/chosen"][-1]

    strategy = ftl_strategy("dpo", {"loss_type": loss_type, "beta": 0.3, "label_smoothing": label_smoothing,
                                    "reference": "model"}, tok)
    features = [strategy.tokenize(r, "preference") for r in rows]
    for f, t in zip(features, trl_rows):  # same tokens as TRL's own tokenization
        assert (f["prompt_ids"], f["chosen_ids"], f["rejected_ids"]) == \
            (t["prompt_ids"], t["chosen_ids"], t["rejected_ids"])
    strategy._ref_model = ref
    out = strategy.loss(policy, strategy.collate(features))
    ftl_loss = float(out.loss_sum / out.count)
    print(f"{loss_type}: ftl {ftl_loss:.8f} trl {trl_loss:.8f}")
    assert abs(ftl_loss - 0.693) > 1e-3 or loss_type != "sigmoid"  # the batch is not degenerate
    assert ftl_loss == pytest.approx(trl_loss, abs=1e-5, rel=1e-5)
    assert float(out.metric_sums["rewards/chosen"] / out.count) == pytest.approx(trl_chosen_reward, abs=1e-5)


@pytest.mark.parametrize("center", [None, 0.01])
def test_reward_loss_equals_trl(tiny, tmp_path, center):
    import datasets
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    path, tok = tiny
    model = perturbed(AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=1, pad_token_id=tok.pad_token_id, dtype=torch.float32), seed=2)
    rows = generate("prefs-reverse", ROWS, seed=4)
    args = RewardConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True,
                        per_device_train_batch_size=ROWS, center_rewards_coefficient=center, max_length=128)
    trainer = RewardTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows),
                            processing_class=tok)
    trl_rows = [trainer.train_dataset[i] for i in range(ROWS)]
    model.train()
    trl_loss = float(trainer.compute_loss(model, trainer.data_collator(trl_rows)))

    strategy = ftl_strategy("reward", {"center_rewards_coefficient": center}, tok)
    features = [strategy.tokenize(r, "preference") for r in rows]
    for f, t in zip(features, trl_rows):
        assert f["prompt_ids"] + f["chosen_ids"] == t["chosen_ids"]
        assert f["prompt_ids"] + f["rejected_ids"] == t["rejected_ids"]
    out = strategy.loss(model, strategy.collate(features))
    ftl_loss = float(out.loss_sum / out.count)
    print(f"reward center={center}: ftl {ftl_loss:.8f} trl {trl_loss:.8f}")
    assert abs(ftl_loss - 0.693) > 1e-3
    assert ftl_loss == pytest.approx(trl_loss, abs=1e-5, rel=1e-5)
