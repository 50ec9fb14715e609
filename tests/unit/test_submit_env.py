"""``launch_environment`` is the environment the process started with, whatever it did to its
own ``os.environ`` afterwards (what sbatch should export: launcher/run/submit_env.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.helpers.ftl import ROOT

PROBE = """
import json, os
os.environ["FTL_T_ADDED"] = "by-the-process"
os.environ["FTL_T_CHANGED"] = "changed"
os.environ.pop("FTL_T_REMOVED")
from launcher.run.submit_env import added_since_start, launch_environment
env = launch_environment()
print(json.dumps({"env": {k: v for k, v in env.items() if k.startswith("FTL_T_")},
                  "added": {k: v for k, v in added_since_start().items() if k.startswith("FTL_T_")}}))
"""


def test_launch_environment_is_the_initial_one():
    start = {"FTL_T_CHANGED": "at-start", "FTL_T_REMOVED": "at-start", "FTL_T_KEPT": "caf\u00e9 = x"}
    proc = subprocess.run([sys.executable, "-c", PROBE], env={**os.environ, "PYTHONPATH": str(ROOT), **start},
                          capture_output=True, text=True, timeout=60, check=True)
    seen = json.loads(proc.stdout)
    assert seen["env"] == start
    assert seen["added"] == {"FTL_T_ADDED": "by-the-process", "FTL_T_CHANGED": "changed"}
