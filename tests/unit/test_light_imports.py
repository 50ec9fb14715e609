"""``ftl validate --schema-only`` and ``ftl plan``'s planning code import neither torch nor Ray.

Validating a config answers in about a second because the schema, the strategy and backend
registries and the planner import only pydantic and arithmetic; the heavy packages load when a
model is built (or counted on the meta device). import-linter checks the import graph
(``lint-imports``); this checks what a fresh process really loads, imports run inside
functions included.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "ray", "deepspeed", "vllm", "transformers")
CONFIGS = ("configs/quickstart.yaml",              # sft on a builtin tiny Llama
           "configs/examples/rlhf/ppo.yaml",       # ppo: reward model, critic, rollout workers
           "configs/examples/rl/grpo_code_tests.yaml")  # grpo with reward functions (verifiers)


def loaded_after(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; return what it printed as JSON."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_validating_sft_and_rl_configs_imports_neither_torch_nor_ray():
    code = f"""
import json, sys
import launcher.cli  # what `ftl validate` starts with
from launcher.config.load import load_config
methods = [load_config(path).method for path in {list(CONFIGS)!r}]
import launcher.plan.planner, launcher.plan.view, launcher.plan.roles
heavy = sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))
print(json.dumps({{"methods": methods, "heavy": heavy}}))
"""
    out = loaded_after(code)
    assert out["methods"] == ["sft", "ppo", "grpo"]  # each config was read and validated
    assert out["heavy"] == []


def test_the_check_sees_torch_when_it_is_loaded():
    """The same check, on code that does import torch, reports it (the test above can fail)."""
    code = f"""
import json, sys
from launcher.models.layers import decoder_layers
print(json.dumps({{"heavy": sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))}}))
"""
    assert "torch" in loaded_after(code)["heavy"]
