"""``ftl run`` starts its private Ray runtime while preflight reads the model and data
(``LocalTarget.start_early``); a run that preflight refuses must stop that runtime again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster.local import LocalTarget
from launcher.core.errors import UserError
from launcher.run.submit import prepare_run
from tests.helpers.ftl import run_dirs, tiny_config, write_config


def test_a_refused_run_stops_the_runtime_started_during_preflight(workdir, monkeypatch):
    import ray

    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}] * 3
    rows.insert(1, {"prompt": "no messages here"})
    data = workdir / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tiny_config(data={"train": {"path": str(data)}, "eval": []})
    monkeypatch.chdir(workdir)  # checkpoint.dir "runs" is relative
    runtimes = []
    start_early = LocalTarget.start_early

    def recording(self, cfg):  # the real start, remembered so the test can look at it afterwards
        start_early(self, cfg)
        runtimes.append(self._early)

    monkeypatch.setattr(LocalTarget, "start_early", recording)
    with pytest.raises(UserError, match="missing column 'messages'"):
        prepare_run(str(write_config(workdir, cfg)), None, (), start_early=True)
    (runtime,) = runtimes
    temp_dir = Path(runtime.wait())  # it did come up: ray.init succeeded in its thread
    assert temp_dir.name.startswith("ftl-ray-")
    assert not ray.is_initialized()
    assert not temp_dir.exists()
    assert not runtime.running
    assert run_dirs(workdir) == []  # and, as before, no run folder
