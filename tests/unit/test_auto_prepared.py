"""``sharding.backend: auto`` is chosen once, when ``ftl run`` prepares the run: the run folder's
config names the chosen backend, so every rank, a resume and ``ftl export`` build that backend
without choosing again; plan.json keeps what auto chose and what every candidate needed."""

from __future__ import annotations

from pathlib import Path

import yaml

from launcher.backends.registry import resolve_sharding
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
