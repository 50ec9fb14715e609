"""The run folder ``runs/<name>-<timestamp>/``: everything one run writes.

    config.yaml        the resolved config (what ran, after --set overrides)
    plan.json          the planner's output
    launch.json        id of the current launch (a worker-group restart keeps it)
    metrics.jsonl      one JSON object per logged step
    summary.json       steps, timings, eval before/after, peak RSS per rank
    checkpoints/       step-XXXXXXXX folders (atomic, the last K kept)
    final/             the trained model in HF format
    logs/rank-N.log    per-rank logs; failed-rank-N.json when a rank fails
    wandb/             W&B files (offline runs can be synced later with `wandb sync`)
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import yaml


class RunFolder:
    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def planned(cls, parent: str | Path, name: str) -> RunFolder:
        """The folder a run started now would get (not created: ``--dry-run`` shows it)."""
        base = Path(parent) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        path, n = base, 1
        while path.exists():
            n += 1
            path = Path(f"{base}-{n}")
        return cls(path)

    @classmethod
    def create(cls, parent: str | Path, name: str) -> RunFolder:
        folder = cls.planned(parent, name)
        folder.path.mkdir(parents=True)
        return folder

    # -- files
    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary_file(self) -> Path:
        return self.path / "summary.json"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    def write_config(self, config: dict[str, Any]) -> None:
        self.config_file.write_text(yaml.safe_dump(config, sort_keys=False))

    def load_config(self) -> Any:
        from launcher.config.load import validate_config
        from launcher.user_code import add_run_code

        add_run_code(self.path)  # modules the config names, shipped with the run
        data = yaml.safe_load(self.config_file.read_text())
        return validate_config(data, str(self.config_file))

    def raw_config(self) -> dict[str, Any]:
        return yaml.safe_load(self.config_file.read_text())

    def write_json(self, name: str, data: Any) -> None:
        tmp = self.path / f".{name}.tmp"
        tmp.write_text(json.dumps(data, indent=2, default=str))
        tmp.replace(self.path / name)

    def read_json(self, name: str) -> Any:
        p = self.path / name
        return json.loads(p.read_text()) if p.exists() else None

    def write_summary(self, summary: dict[str, Any]) -> None:
        self.write_json("summary.json", summary)

    def summary(self) -> dict[str, Any] | None:
        return self.read_json("summary.json")

    # -- launches
    def new_launch(self) -> str:
        launch = uuid.uuid4().hex[:12]
        self.write_json("launch.json", {"launch_id": launch, "started": time.time()})
        return launch

    def launch_id(self) -> str | None:
        data = self.read_json("launch.json")
        return data["launch_id"] if data else None

    def failures(self) -> dict[int, dict[str, Any]]:
        out = {}
        for f in sorted(self.logs.glob("failed-rank-*.json")) if self.logs.exists() else []:
            data = json.loads(f.read_text())
            out[int(data["rank"])] = data
        return out

    def clear_failures(self) -> None:
        if self.logs.exists():
            for f in self.logs.glob("failed-rank-*.json"):
                f.unlink()


def list_runs(parent: str | Path) -> list[RunFolder]:
    root = Path(parent)
    if not root.exists():
        return []
    runs = [RunFolder(p) for p in root.iterdir() if (p / "config.yaml").exists()]
    return sorted(runs, key=lambda r: r.config_file.stat().st_mtime)
