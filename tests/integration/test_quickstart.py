"""The quickstart config, briefly, as a new user runs it: ftl's own lines on the console, library
output (tqdm bars, warnings, DeepSpeed's accelerator probe) in the run's logs/launcher.log."""

from __future__ import annotations

import re

from tests.helpers.ftl import ROOT, run_dirs, run_ftl

# What library output looks like: tqdm bars ("45%|####5 | 9/20 [00:01<00:02, 8.1it/s]"), Python
# warnings ("FutureWarning: ...", "warnings.warn("), logging records ("[WARNING]", "WARNING:").
NOISE = re.compile(r"\d+%\|| \d+/\d+ \[\d|it/s\]|s/it\]|Warning:|warnings\.warn|\[WARNING\]|WARNING[: ]",
                   re.IGNORECASE)


def test_quickstart_console_shows_only_ftl_lines(workdir):
    proc = run_ftl(["run", ROOT / "configs" / "quickstart.yaml", "--runs-dir", workdir / "runs",
                    "--set", "train.max_steps=12", "--set", "eval.every_steps=6", "--set",
                    "train.warmup_steps=2", "--set", "logging.wandb.mode=disabled",
                    "--set", "checkpoint.every_steps=6"], workdir, timeout=600,
                   env={"FTL_HOME": str(workdir / "ftl-home")})  # a new user's: the tiny model is built
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name, text in (("stdout", proc.stdout), ("stderr", proc.stderr)):
        noisy = [line for line in text.splitlines() if NOISE.search(line)]
        assert not noisy, f"library output on {name}: {noisy[:5]}"
    assert "done: 12 steps" in proc.stdout
    evals = [line for line in proc.stderr.splitlines() if line.startswith("step ")]
    assert len(evals) == 3 and all("eval/loss" in line for line in evals), proc.stderr  # one line each
    (run,) = run_dirs(workdir)
    log = (run / "logs" / "launcher.log").read_text()
    assert "Writing model shards" in log  # transformers' bar while ftl builds builtin:tiny-llama
