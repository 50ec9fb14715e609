"""``ftl run --smoke``: the 70B examples run end to end on this machine.

The model becomes a 2-layer random model of the same architecture (Llama with 8:1 grouped
query attention here), cluster data becomes the builtin task of the same format, and the run
keeps the method, PEFT, the sharding backend (ZeRO-3), checkpoints and the final export. The
PPO example runs every role (policy, critic, reference, 2 rollout workers) with the cluster's
reward model replaced by a rule reward.
"""

from __future__ import annotations

import json

import pytest

from tests.helpers.ftl import ROOT, run_dirs, run_ftl

EXAMPLES = ROOT / "configs" / "examples" / "llama-3.1-70b"


@pytest.mark.parametrize("example,final_file", [
    ("full_sft_zero3_64gpu.yaml", "model.safetensors"),
    ("dpo_lora.yaml", "adapter_model.safetensors"),
    ("ppo.yaml", "adapter_model.safetensors"),
])
def test_smoke_run_of_a_70b_example(workdir, example, final_file):
    proc = run_ftl(["run", EXAMPLES / example, "--smoke", "--no-progress"], workdir, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "smoke: model.path: meta-llama/Llama-3.1-70B-Instruct ->" in proc.stderr
    (run,) = run_dirs(workdir)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3
    if "roles" in summary:  # PPO: every role ran as its own Ray actor(s)
        assert {"policy", "critic", "reference", "rollout"} <= set(summary["roles"])
    else:
        assert summary["world_size"] == 2
    plan = json.loads((run / "plan.json").read_text())
    assert plan["sharding"]["resolved"]["kind"] == "deepspeed"
    assert plan["sharding"]["resolved"]["zero_stage"] == 3
    model_config = json.loads((run / "final" / "config.json").read_text()) \
        if (run / "final" / "config.json").exists() else None
    assert (run / "final" / final_file).is_file()
    assert len([c for c in (run / "checkpoints").iterdir() if c.name.startswith("step-")]) >= 1
    changes = json.loads((run / "smoke.json").read_text())["changes"]
    assert any("data.train.0.path: /" in c for c in changes)  # cluster data replaced, and said so
    if model_config:  # full model: the same family with the 70B's grouped-query ratio
        assert model_config["model_type"] == "llama" and model_config["num_hidden_layers"] == 2
        assert model_config["num_attention_heads"] // model_config["num_key_value_heads"] == 8
