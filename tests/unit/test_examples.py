"""Every config shipped in configs/ validates, and the 8B/70B examples plan without weights.

The big examples name hub models and cluster paths that do not exist here: preflight checks
what it can (schema, sharding, the architecture from ftl's bundled configs) and reports the
rest as notes, so they validate offline; ``ftl plan`` predicts their per-GPU memory.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.ftl import ROOT, ftl_in_process, run_ftl

CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
BIG = [p for p in CONFIGS if "llama-3.1-" in str(p.parent.name)]


def test_every_config_in_configs_validates():
    assert len(CONFIGS) >= 10 and len(BIG) >= 3
    proc = run_ftl(["validate", *CONFIGS], ROOT, timeout=900)
    print(proc.stdout, proc.stderr[-3000:])
    assert proc.returncode == 0, proc.stderr[-3000:]
    for path in CONFIGS:
        assert f"ok: {path}" in proc.stdout


@pytest.mark.parametrize("path", BIG, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_big_example_plans_and_fits(path: Path):
    proc = ftl_in_process(["plan", path, "--json"], ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = json.loads(proc.stdout)
    params = plan["parameters"]
    memory = plan["memory"]
    per_gpu = memory["per_gpu"]
    print(path.name, f"{params['total']:,} params", per_gpu)
    assert params["total"] > 7e9
    if "70b" in path.parent.name and plan["method"] == "sft" and "peft" not in path.name:
        assert params["total"] == 70_553_706_496 and params["trainable"] == params["total"]
    assert memory["fits"] is True
    assert "policy" in memory["roles"]
