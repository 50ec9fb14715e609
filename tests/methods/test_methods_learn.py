"""Every method learns on held-out synthetic data, and runs on every sharding backend.

One ``torchrun --nproc-per-node 2`` launch (2 CPU ranks over gloo) runs all the run folders
in turn (tests/helpers/run_many.py), so the whole file costs one process start.

- Learning (DDP, 2 ranks): reward pair accuracy >= 0.9; DPO, ORPO, CPO and SimPO raise the
  policy's own pair preference from about 0.5 to >= 0.9; KTO on unpaired feedback raises its
  label accuracy by >= 0.15 with a reward margin > 1; classification accuracy >= 0.9; contrastive recall@1
  of the real all-MiniLM-L6-v2 beats the base model's.
- Backends: for each method, a few steps on ZeRO-3 and FSDP2, with and without LoRA, give
  the same per-step losses as DDP (same starting weights, new heads included).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.ftl import tiny_config
from tests.helpers.runs import losses, prepare, torchrun_many

LORA = {"r": 8, "alpha": 16, "target_modules": "all-linear"}
DATA = {
    "reward": "prefs-reverse", "dpo": "prefs-reverse", "classify": "topics", "contrastive": "pairs-reverse",
    "kto": "feedback-reverse", "orpo": "prefs-reverse", "cpo": "prefs-reverse", "simpo": "prefs-reverse",
}
SECTIONS = {"classify": {"labels": ["low", "mid", "high"]}, "contrastive": {"pooling": "last"},
            "kto": {"beta": 0.5}, "orpo": {"beta": 1.0}}


def method_config(name: str, method: str, *, steps: int, lr: float, backend: str = "ddp",
                  lora: bool = False, eval_rows: int = 128, **extra) -> dict:
    task = DATA[method]
    cfg = tiny_config(
        name=name, method=method, sharding={"backend": backend},
        train={"max_steps": steps, "micro_batch_size": 8, "lr": lr, "schedule": "constant"},
        eval={"batch_size": 32}, logging={"every_steps": 1, "wandb": {"mode": "disabled"}, "report": False},
        checkpoint={"dir": "runs", "save_final": False})
    cfg["data"] = {"train": {"path": f"builtin:{task}", "num_rows": 2000},
                   "eval": {"path": f"builtin:{task}", "num_rows": eval_rows}, "max_length": 48}
    if method in SECTIONS:
        cfg[method] = SECTIONS[method]
    if lora:
        cfg["peft"] = LORA
    cfg.update(extra)
    return cfg


LEARN = {
    "reward": method_config("learn-reward", "reward", steps=300, lr=3e-4),
    "dpo": method_config("learn-dpo", "dpo", steps=150, lr=1e-3),
    "classify": method_config("learn-classify", "classify", steps=40, lr=3e-3),
    "kto": method_config("learn-kto", "kto", steps=200, lr=1e-3),
    "orpo": method_config("learn-orpo", "orpo", steps=150, lr=1e-3),
    "cpo": method_config("learn-cpo", "cpo", steps=100, lr=1e-3),
    "simpo": method_config("learn-simpo", "simpo", steps=100, lr=1e-3),
    "minilm": method_config("learn-minilm", "contrastive", steps=25, lr=5e-5,
                            model={"path": "builtin:all-minilm-l6-v2"}, contrastive={"pooling": "mean"}),
}
MATRIX = [  # (method, backend, lora): DDP without LoRA is each method's reference
    ("reward", "ddp", False), ("reward", "zero3", True), ("reward", "fsdp2", False),
    ("dpo", "ddp", False), ("dpo", "zero3", False), ("dpo", "ddp", True), ("dpo", "fsdp2", True),
    ("classify", "ddp", False), ("classify", "fsdp2", True),
    ("contrastive", "ddp", False), ("contrastive", "zero3", False), ("contrastive", "fsdp2", True),
    ("kto", "ddp", False), ("kto", "zero3", False), ("kto", "fsdp2", True),
    ("orpo", "ddp", False), ("orpo", "fsdp2", False), ("orpo", "zero3", True),
    ("simpo", "ddp", False), ("simpo", "zero3", False), ("simpo", "ddp", True),
    ("cpo", "ddp", False), ("cpo", "fsdp2", True),
]
MATRIX_STEPS = 3


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("methods")
    runs: dict[str, Path] = {}
    for key, cfg in LEARN.items():
        if key == "minilm":
            cfg["data"] = {**cfg["data"], "max_length": 24}
        runs[key] = prepare(work, key, cfg)
    for method, backend, lora in MATRIX:
        name = f"{method}-{backend}{'-lora' if lora else ''}"
        runs[name] = prepare(work, name, method_config(
            name, method, steps=MATRIX_STEPS, lr=1e-3, backend=backend, lora=lora, eval_rows=32))
    mixture = tiny_config(name="mixture", train={"max_steps": 4, "micro_batch_size": 8, "lr": 3e-3},
                          checkpoint={"dir": "runs", "save_final": False})
    mixture["data"] = {"train": [{"path": "builtin:reverse", "num_rows": 600, "weight": 3},
                                 {"path": "builtin:add", "num_rows": 600, "weight": 1}],
                       "eval": [{"path": "builtin:reverse", "num_rows": 24},
                                {"path": "builtin:add", "num_rows": 40}], "max_length": 48}
    runs["mixture"] = prepare(work, "mixture", mixture)
    torchrun_many(list(runs.values()), timeout=1200)
    return runs


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def test_reward_model_learns_pair_preferences(finished):
    s = summary(finished["reward"])
    print("reward accuracy", s["initial"]["eval/accuracy"], "->", s["final"]["eval/accuracy"],
          "margin", s["final"]["eval/margin"])
    assert s["final"]["eval/accuracy"] >= 0.9
    assert s["final"]["eval/margin"] > s["initial"]["eval/margin"] + 1.0


def test_dpo_raises_pair_accuracy(finished):
    s = summary(finished["dpo"])
    before, after = s["initial"]["eval/pair_accuracy"], s["final"]["eval/pair_accuracy"]
    print("dpo pair accuracy", before, "->", after, "reward accuracy", s["final"]["eval/rewards/accuracy"])
    assert 0.3 <= before <= 0.7
    assert after >= 0.9
    assert s["final"]["eval/rewards/margin"] > 0
    assert s["final"]["eval/loss"] < s["initial"]["eval/loss"] - 0.2


def test_kto_learns_from_unpaired_feedback(finished):
    s = summary(finished["kto"])
    before, after = s["initial"]["eval/label_accuracy"], s["final"]["eval/label_accuracy"]
    margin = s["final"]["eval/rewards/margin"]
    print("kto label accuracy", before, "->", after, "reward margin", margin, "kl", s["final"]["eval/kl"])
    assert after >= before + 0.15
    assert margin > 1.0  # desirable answers' implied reward above undesirable ones'
    assert s["final"]["eval/loss"] < s["initial"]["eval/loss"] - 0.1


@pytest.mark.parametrize("method", ["orpo", "cpo", "simpo"])
def test_reference_free_methods_raise_pair_accuracy(finished, method):
    s = summary(finished[method])
    before, after = s["initial"]["eval/pair_accuracy"], s["final"]["eval/pair_accuracy"]
    print(method, "pair accuracy", before, "->", after, "margin", s["final"]["eval/rewards/margin"])
    assert 0.3 <= before <= 0.7
    assert after >= 0.9
    assert s["final"]["eval/rewards/margin"] > 0


def test_classifier_learns(finished):
    s = summary(finished["classify"])
    print("classify", s["initial"]["eval/accuracy"], "->", s["final"]["eval/accuracy"],
          "macro-F1", s["final"]["eval/macro_f1"])
    assert s["initial"]["eval/accuracy"] < 0.6
    assert s["final"]["eval/accuracy"] >= 0.9
    assert s["final"]["eval/macro_f1"] >= 0.9


def test_contrastive_beats_base_minilm(finished):
    s = summary(finished["minilm"])
    before, after = s["initial"]["eval/recall@1"], s["final"]["eval/recall@1"]
    print("MiniLM recall@1", before, "->", after)
    assert after > before + 0.1


def test_mixture_logs_each_task_separately(finished):
    final = summary(finished["mixture"])["final"]
    for task in ("reverse", "add"):
        assert {f"eval/{task}/loss", f"eval/{task}/exact_match"} <= set(final)
    assert final["eval/reverse/loss"] != final["eval/add/loss"]
    low, high = sorted([final["eval/reverse/loss"], final["eval/add/loss"]])
    assert low < final["eval/loss"] < high  # the aggregate is token-weighted over both sets
    metrics = [json.loads(line) for line in (finished["mixture"] / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/add/exact_match" in m for m in metrics)


@pytest.mark.parametrize("method", sorted(DATA))
def test_every_backend_matches_ddp(finished, method):
    reference = list(losses(finished[f"{method}-ddp"]).values())
    rows = [(m, b, lora) for m, b, lora in MATRIX if m == method and (b, lora) != ("ddp", False)]
    lora_reference = None
    for _, backend, lora in rows:
        got = list(losses(finished[f"{method}-{backend}{'-lora' if lora else ''}"]).values())
        print(method, backend, "lora" if lora else "full", got, "ddp", reference)
        assert len(got) == MATRIX_STEPS
        if lora:  # adapters start at B = 0: step 1 equals the full model's, later steps follow LoRA's
            assert got[0] == pytest.approx(reference[0], rel=1e-4)
            lora_reference = lora_reference or got
            assert got == pytest.approx(lora_reference, rel=1e-4)
        else:
            assert got == pytest.approx(reference, rel=1e-4)
