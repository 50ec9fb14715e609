"""``ftl eval``: few-shot exact match of base models and fine-tuned runs, side by side."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.core.errors import UserError
from launcher.tools.fewshot import build_messages, build_text, draw_supports, load_examples
from tests.helpers.ftl import ftl_in_process, run_ftl, write_config


def test_eval_gives_one_json_row_per_k(workdir):
    proc = run_ftl(["eval", "builtin:tiny-llama", "--data", "builtin:reverse", "--shots", "0,2",
                    "--num", "16", "--json"], workdir)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [(r["model"], r["shots"], r["n"]) for r in rows] == [("builtin:tiny-llama", 0, 16),
                                                                ("builtin:tiny-llama", 2, 16)]
    for r in rows:
        assert 0.0 <= r["exact_match"] <= 1.0
        assert r["exact_match"] == r["correct"] / 16 and r["prompt"] == "chat"


def test_prompt_has_k_support_turns_none_equal_to_the_query(tmp_path):
    queries = load_examples("builtin:reverse", "--data", split="eval", num=8)
    pool = load_examples("builtin:reverse", "--data", split="train", num=64)
    two, eight = draw_supports(queries, pool, 2, seed=0), draw_supports(queries, pool, 8, seed=0)
    for query, s2, s8 in zip(queries, two, eight):
        messages = build_messages(query, s2)
        assert [m["role"] for m in messages] == ["user", "assistant"] * 2 + ["user"]
        assert messages[-1]["content"] == query.question_text()
        assert [m["content"] for m in messages[:-1]] == [s2[0].question_text(), s2[0].answer,
                                                         s2[1].question_text(), s2[1].answer]
        assert query.question_text() not in [m["content"] for m in messages[:-1]]
        assert s8[:2] == s2 and len(s8) == 8  # K=2 is a prefix of K=8
        assert query.key not in {e.key for e in s8}
    assert len({tuple(s) for s in two}) > 1  # supports vary between queries

    # A support set full of the query's own question: those rows are never drawn.
    query, others = queries[0], pool[:3]
    drawn = draw_supports([query], [query] * 5 + others, 3, seed=1)[0]
    assert sorted(e.key for e in drawn) == sorted(e.key for e in others)
    with pytest.raises(UserError, match="4 shots need 4 support examples"):
        draw_supports([query], [query] * 5 + others, 4, seed=1)

    # Without a chat template: Q/A text, the query last.
    assert build_text(query, others[:1]) == (f"Q: {others[0].question_text()}\nA: {others[0].answer}\n\n"
                                             f"Q: {query.question_text()}\nA:")

    # prompt/completion files load as the same examples.
    path = tmp_path / "pc.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"copy: {c}", "completion": c}) + "\n" for c in "abc"))
    rows = load_examples(str(path), "--data", split="eval", num=2)
    assert [(r.question_text(), r.answer) for r in rows] == [("copy: a", "a"), ("copy: b", "b")]


def test_bad_inputs_exit_2_naming_them(workdir):
    proc = ftl_in_process(["eval", "builtin:tiny-llama", "--data", "data/missing.jsonl"], workdir)
    assert proc.returncode == 2, proc.stderr
    assert "data/missing.jsonl" in proc.stderr and "file not found" in proc.stderr
    (workdir / "run").mkdir()
    (workdir / "run" / "config.yaml").write_text("model: {path: 'builtin:tiny-llama'}\n")
    proc = ftl_in_process(["eval", "run", "--data", "builtin:reverse", "--num", "2"], workdir)
    assert proc.returncode == 2 and "run: this run has no final/ model" in proc.stderr, proc.stderr


def test_run_with_lora_adapter_loads_base_plus_adapter(tmp_path):
    """A run's final/ that holds only a LoRA adapter is scored as base + adapter."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from launcher.models.tiny import resolve_model_path
    from launcher.tools.fewshot import load_model

    base_dir = resolve_model_path("builtin:tiny-llama")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a trained adapter changes the outputs
    run = tmp_path / "run"
    model.save_pretrained(run / "final")
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(run / "final")
    (run / "config.yaml").write_text("model: {path: 'builtin:tiny-llama'}\n")

    loaded = load_model(str(run))
    assert isinstance(loaded.model, PeftModel)
    ids = torch.tensor([loaded.tokenizer("reverse: a b c")["input_ids"]])
    model.eval()
    with torch.no_grad():
        want = model(input_ids=ids).logits
        got = loaded.model(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(base_dir)(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, base, atol=1e-3)


def test_finetuned_run_beats_the_base_model(workdir):
    """A short quickstart-like SFT run (the per-rank loop in one process, ~10 s) answers
    held-out reverse questions the base model never gets right."""
    from launcher.run.submit import prepare_run

    cfg = {
        "name": "ft", "method": "sft", "model": {"path": "builtin:tiny-llama"},
        "data": {"train": {"path": "builtin:reverse", "num_rows": 8000}, "max_length": 64},
        "train": {"max_steps": 120, "micro_batch_size": 32, "lr": 3e-3, "schedule": "constant",
                  "warmup_steps": 30, "seed": 42},
        "resources": {"num_workers": 1, "cpus_per_worker": 1, "threads_per_worker": 2},
        "logging": {"every_steps": 40, "wandb": {"mode": "disabled"}},
    }
    folder, _ = prepare_run(str(write_config(workdir, cfg)), None, (), runs_dir=str(workdir / "runs"))
    train = subprocess.run([sys.executable, "-m", "launcher.train.loop", str(folder.path)], cwd=workdir,
                           env=os.environ.copy(), capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr[-3000:]
    assert Path(folder.path / "final" / "config.json").exists()

    proc = run_ftl(["eval", "builtin:tiny-llama", folder.path, "--data", "builtin:reverse", "--shots", "0",
                    "--num", "32", "--json"], workdir)
    assert proc.returncode == 0, proc.stderr
    base, tuned = json.loads(proc.stdout)
    assert (base["model"], tuned["model"]) == ("builtin:tiny-llama", str(folder.path))
    assert base["n"] == tuned["n"] == 32
    assert tuned["exact_match"] >= base["exact_match"] + 0.25, (base, tuned)
