"""``sharding.backend: auto`` is chosen once, when ``ftl run`` prepares the run: the run folder's
config names the chosen backend, so every rank, a resume and ``ftl export`` build that backend
without choosing again; plan.json keeps what auto chose and what every candidate needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from launcher.backends.registry import resolve_sharding
from launcher.core.errors import UserError
from launcher.run.rundir import RunFolder
from launcher.run.submit import prepare_run

QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"


def test_prepare_run_writes_the_backend_auto_chose_into_the_run_config(tmp_path):
    folder, _ = prepare_run(str(QUICKSTART), None, ("sharding.backend=auto", "train.max_steps=2",
                             "data.train.0.num_rows=64", "data.eval.0.num_rows=8"),
                            runs_dir=str(tmp_path))
    written = yaml.safe_load((folder.path / "config.yaml").read_text())
    plan = RunFolder(folder.path).read_json("plan.json")
    assert plan["sharding"]["backend"] == "auto" and plan["sharding"]["chosen"] == "ddp"
    assert [t["label"] for t in plan["sharding"]["tried"]] == ["ddp"]
    assert written["sharding"]["backend"] == "ddp"  # what the ranks read
    cfg = RunFolder(folder.path).load_config()
    assert resolve_sharding(cfg.sharding).impl == "launcher.backends.ddp:DDPBackend"
    launch = folder.launch_writer()
    assert launch["backend"] == "ddp"  # the checkpoint writer record names the chosen backend


def test_a_wrong_model_path_under_auto_gets_preflights_full_report(tmp_path):
    """Choosing a backend reads the model's config; when it cannot, the user still gets every
    problem of the config located (here the model path and a data file), as `ftl validate` gives."""
    missing = tmp_path / "no-such-model"
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}] * 3
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [*rows[:2], {"prompt": "no messages"}]))
    runs = tmp_path / "runs"
    with pytest.raises(UserError) as refused:
        prepare_run(str(QUICKSTART), None, ("sharding.backend=auto", f"model.path={missing}",
                                            f"data.train.0.path={data}"), runs_dir=str(runs))
    message = str(refused.value)
    assert "model.path" in message and str(missing) in message
    assert f"{data}:3: missing column 'messages'" in message
    assert not runs.exists()
