"""The console's progress and eval lines show what each method logs: an RL run's reward, KL and
response length as well as a supervised run's loss, on one unwrapped line per eval."""

from __future__ import annotations

import io
import threading

from rich.console import Console

from launcher.metrics.console import follow
from launcher.metrics.jsonl import JsonlSink


def test_rl_rows_fill_progress_and_eval_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    sink = JsonlSink(path)
    sink.log(1, {"reward/mean": 0.25, "kl/ref_per_token": 0.0123, "response/length_mean": 17.5,
                 "train/tokens_per_s": 812.0, "policy/loss": 0.1})
    sink.log(2, {"eval/reward_mean": 0.5, "eval/response_length": 16.0, "eval/numeric_answer": 0.5})
    sink.log(3, {"eval/loss": 1.2345, "eval/reverse/exact_match": 0.75, "eval/reverse/loss": 1.2345})
    sink.close()
    buffer = io.StringIO()
    console = Console(file=buffer, width=40, force_terminal=False)  # narrow: lines must not wrap
    done = threading.Event()
    done.set()
    follow(path, total_steps=3, done=done, console=console, enabled=True, poll_s=0.01)
    lines = buffer.getvalue().splitlines()
    rl_eval = next(line for line in lines if line.startswith("step 2:"))
    assert "eval/reward_mean 0.5000" in rl_eval and "eval/response_length 16.0000" in rl_eval
    sft_eval = next(line for line in lines if line.startswith("step 3:"))
    assert sft_eval.endswith("eval/reverse/loss 1.2345")  # whole, on one line
    bar = [line for line in lines if "reward 0.250" in line]
    assert bar and "kl 0.0123" in bar[-1] and "len 17.5" in bar[-1], lines
