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
from tests.helpers.ftl import tiny_config
from tests.helpers.models import perturbed

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
    strategy.use_reference_model(ref)
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


# -- the preference family beyond DPO: KTO (TRL's stable trainer), CPO/SimPO/ORPO (trl.experimental)


def trl_pairs_as_ftl_batch(trl_batch: dict) -> dict:
    """TRL's CPO/ORPO collated pairs as ftl's batch: [chosen rows; rejected rows], right-padded."""
    width = max(trl_batch["chosen_input_ids"].shape[1], trl_batch["rejected_input_ids"].shape[1])

    def padded(t: torch.Tensor, value: int) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

    def both(key: str, value: int) -> torch.Tensor:
        return torch.cat([padded(trl_batch[f"{side}_{key}"], value) for side in ("chosen", "rejected")])

    return {"input_ids": both("input_ids", 0), "attention_mask": both("attention_mask", 0),
            "labels": both("labels", -100)}


CPO_CASES = [  # (ftl method, its section, TRL CPOConfig/ORPOConfig arguments)
    ("cpo", {"loss_type": "sigmoid", "beta": 0.3, "cpo_alpha": 1.0}, {"loss_type": "sigmoid", "beta": 0.3}),
    ("cpo", {"loss_type": "sigmoid", "beta": 0.3, "label_smoothing": 0.1, "cpo_alpha": 0.0},
     {"loss_type": "sigmoid", "beta": 0.3, "label_smoothing": 0.1, "cpo_alpha": 0.0}),
    ("cpo", {"loss_type": "hinge", "beta": 0.3, "cpo_alpha": 0.5},
     {"loss_type": "hinge", "beta": 0.3, "cpo_alpha": 0.5}),
    ("cpo", {"loss_type": "ipo", "beta": 0.3}, {"loss_type": "ipo", "beta": 0.3}),
    ("simpo", {"beta": 2.0, "simpo_gamma": 0.7}, {"loss_type": "simpo", "beta": 2.0, "simpo_gamma": 0.7,
                                                  "cpo_alpha": 0.0}),
    ("cpo", {"loss_type": "simpo", "beta": 2.5, "cpo_alpha": 0.3},
     {"loss_type": "simpo", "beta": 2.5, "cpo_alpha": 0.3}),
    ("orpo", {"beta": 0.2}, {"beta": 0.2}),
]


@pytest.mark.parametrize("method,section,trl_args", CPO_CASES,
                         ids=[f"{m}-{s.get('loss_type', m)}" for m, s, _ in CPO_CASES])
def test_reference_free_losses_equal_trl(tiny, tmp_path, method, section, trl_args):
    import datasets
    from transformers import AutoModelForCausalLM
    from trl.experimental.cpo import CPOConfig, CPOTrainer
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    path, tok = tiny
    policy = perturbed(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), seed=5)
    rows = generate("prefs-reverse", ROWS, seed=6)
    config, trainer_class = (ORPOConfig, ORPOTrainer) if method == "orpo" else (CPOConfig, CPOTrainer)
    args = config(output_dir=str(tmp_path), report_to=[], use_cpu=True, per_device_train_batch_size=ROWS,
                  max_length=128, **trl_args)
    trainer = trainer_class(model=policy, args=args, train_dataset=datasets.Dataset.from_list(rows),
                            processing_class=tok)
    trl_batch = trainer.data_collator([trainer.train_dataset[i] for i in range(ROWS)])
    policy.train()
    trl_loss = float(trainer.compute_loss(policy, trl_batch))
    trl_metrics = {k: v[-1] for k, v in trainer._stored_metrics["train"].items()}

    strategy = ftl_strategy(method, section, tok)
    out = strategy.loss(policy, trl_pairs_as_ftl_batch(trl_batch))
    ftl_loss = float(out.loss_sum / out.count)
    print(f"{method} {section}: ftl {ftl_loss:.8f} trl {trl_loss:.8f}")
    assert abs(ftl_loss - 0.693) > 1e-3
    assert ftl_loss == pytest.approx(trl_loss, abs=1e-6, rel=1e-6)
    assert float(out.metric_sums["rewards/chosen"] / out.count) == pytest.approx(
        float(trl_metrics["rewards/chosen"]), rel=1e-6)  # metrics: fp32 values of magnitude ~10
    if float(trl_metrics["nll_loss"]):  # TRL reports 0 when cpo_alpha is 0; ftl reports it anyway
        assert float(out.metric_sums["nll_loss"] / out.count) == pytest.approx(float(trl_metrics["nll_loss"]),
                                                                               rel=1e-6)
    if method == "orpo":
        assert float(out.metric_sums["log_odds_ratio"] / out.count) == pytest.approx(
            float(trl_metrics["log_odds_ratio"]), rel=1e-6)


@pytest.mark.parametrize("loss_type,weights", [("kto", (1.0, 1.0)), ("kto", (1.0, 1.7)),
                                               ("apo_zero_unpaired", (1.3, 1.0))])
def test_kto_loss_equals_trl(tiny, tmp_path, loss_type, weights):
    import datasets
    from transformers import AutoModelForCausalLM
    from trl import KTOConfig, KTOTrainer

    path, tok = tiny
    # The reference is the perturbed copy: the policy then puts more mass on the mismatched
    # completions than the reference does, so the KL reference point is positive (not clamped).
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ref = perturbed(copy.deepcopy(policy), seed=7)
    rows = generate("feedback-reverse", ROWS, seed=8)
    assert 0 < sum(r["label"] for r in rows) < ROWS  # both kinds in the batch
    args = KTOConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, per_device_train_batch_size=ROWS,
                     max_length=128, loss_type=loss_type, beta=0.3, desirable_weight=weights[0],
                     undesirable_weight=weights[1])
    trainer = KTOTrainer(model=policy, ref_model=ref, args=args,
                         train_dataset=datasets.Dataset.from_list(rows), processing_class=tok)
    trl_rows = [trainer.train_dataset[i] for i in range(ROWS)]
    policy.train()
    trl_loss = float(trainer.compute_loss(policy, trainer.data_collator(trl_rows)))

    section = {"loss_type": loss_type, "beta": 0.3, "desirable_weight": weights[0],
               "undesirable_weight": weights[1], "reference": "model"}
    raw = tiny_config(method="kto", kto=section, train={"micro_batch_size": ROWS})
    raw["data"] = {"train": {"path": "builtin:feedback-reverse"}, "max_length": 128}
    from strategies import build_strategy

    strategy = build_strategy(validate_config(raw), tok)
    features = strategy.prepare_features([strategy.tokenize(r, "feedback") for r in rows])
    for f, t in zip(features, trl_rows):  # same tokens and the same mismatched KL partner as TRL
        assert (f["prompt_ids"], f["completion_ids"], f["label"]) == \
            (t["prompt_ids"], t["completion_ids"], t["label"])
        if loss_type == "kto":
            assert f["kl_completion_ids"] == t["KL_completion_ids"]
    strategy.use_reference_model(ref)
    out = strategy.loss(policy, strategy.collate(features))
    ftl_loss = float(out.loss_sum / out.count)
    kl = float(out.metric_sums["kl"] / out.count)
    print(f"kto {loss_type} {weights}: ftl {ftl_loss:.8f} trl {trl_loss:.8f} kl {kl:.6f}")
    assert abs(ftl_loss - 0.5) > 1e-3  # not the degenerate value of equal policy and reference
    assert ftl_loss == pytest.approx(trl_loss, abs=1e-6, rel=1e-6)
    if loss_type == "kto":
        assert kl > 0.01
