"""The GRPO family through a real run: DAPO's pieces (token-level loss, clip-higher, dynamic
sampling with refill rounds, overlong punishment) with RLOO advantages raise a sparse reward."""

from __future__ import annotations

import textwrap
import uuid

from launcher.metrics.jsonl import read_metrics
from tests.helpers.ftl import write_config
from tests.helpers.rl import letters_config, run_in_session


def test_dapo_with_rloo_and_dynamic_sampling_raises_a_sparse_reward(ray_session, tmp_path):
    """Reward 1 when at least a third of the response is the letter 'a', else 0: a random policy
    rarely gets there, so most groups start with equal rewards (no signal) and dynamic sampling
    must draw more prompts to fill the batch."""
    name = f"sparse_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent("""
        from strategies.ppo.rewards import letter_a_fraction

        def mostly_a(prompts, completions):
            return [float(s >= 0.34) for s in letter_a_fraction(prompts, completions)]
    """))
    cfg = letters_config("grpo", "dapo", loss_type="dapo", advantage="rloo", clip_eps_high=0.28,
                         dynamic_sampling=True, max_sampling_rounds=3, overlong_buffer=4,
                         overlong_penalty=0.1, reward={"function": f"{name}:mostly_a"},
                         rollout={"batch_size": 8, "max_new_tokens": 12})
    cfg["train"]["max_steps"] = 20
    run = run_in_session(tmp_path, write_config(tmp_path, cfg))
    rows = read_metrics(run / "metrics.jsonl")
    assert len(rows) == 20
    rounds = [r["rollout/sampling_rounds"] for r in rows]
    signal = [r["rollout/groups_with_signal"] for r in rows]
    assert max(rounds) > 1, rounds  # refills happened while groups lacked signal
    assert all(0 <= s <= 1 for s in signal)
    assert all("reward/overlong_penalty" in r and "policy/clip_high_fraction" in r for r in rows)
    hits = [r["reward/mostly_a"] for r in rows]
    assert sum(hits[-4:]) / 4 >= sum(hits[:4]) / 4 + 0.25, hits
