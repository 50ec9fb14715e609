"""Reward functions see the data: columns reach them (also through a real Ray run, with the
module living next to the config file), weights add up, and a broken function is named with the
row it broke on."""

from __future__ import annotations

import json
import textwrap
import uuid
from pathlib import Path

import pytest

from launcher.config.load import validate_config
from launcher.core.errors import UserError
from strategies.ppo.options import RewardFunction
from strategies.ppo.prompts import Prompt
from strategies.ppo.rewards import RewardError, RewardFunctions
from tests.helpers.ftl import ftl_in_process, write_config
from tests.helpers.rl import letters_config, run_in_session


def _module(folder: Path, body: str) -> str:
    """A uniquely named module in ``folder`` (modules are cached per process by name)."""
    name = f"user_rewards_{uuid.uuid4().hex[:8]}"
    (folder / f"{name}.py").write_text(textwrap.dedent(body))
    return name


def _prompts(answers: list[str]) -> list[Prompt]:
    return [Prompt([1], f"q{i}", f"q{i}", {"answer": a, "level": i}, f"data.jsonl:{i + 1}")
            for i, a in enumerate(answers)]


@pytest.fixture
def functions(tmp_path, monkeypatch):
    """Reward functions from a module written in ``tmp_path``, importable for this test only."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def load(body: str, *entries: dict) -> RewardFunctions:
        name = _module(tmp_path, body)
        return RewardFunctions([RewardFunction(**{**e, "name": f"{name}:{e['name']}"}) for e in entries])

    return load


BODY = """
    def match(prompts, completions, answer):
        return [float(c.strip() == a) for c, a in zip(completions, answer)]

    def length(prompts, completions, *, scale=1.0, **columns):
        assert set(columns) == {"answer", "level"}
        return [scale * len(c) for c in completions]

    def only_even(prompts, completions, level):
        return [1.0 if lv % 2 == 0 else None for lv in level]

    def bad_row(prompts, completions, answer):
        return [1 / (a != "boom") for a in answer]

    def short(prompts, completions):
        return [1.0]

    def nan_row(prompts, completions, level):
        return [float("nan") if lv == 1 else 0.0 for lv in level]
"""


def test_columns_reach_each_function_as_its_signature_asks_and_weights_add_up(functions):
    fns = functions(BODY, {"name": "match", "weight": 2.0},
                     {"name": "length", "kwargs": {"scale": 0.5}}, {"name": "only_even"})
    totals, metrics = fns.score(_prompts(["4", "7", "x"]), ["4", " 8", "x "])
    assert totals == [2 * 1 + 0.5 * 1 + 1, 2 * 0 + 0.5 * 2 + 0, 2 * 1 + 0.5 * 2 + 1]
    assert metrics == {"reward/match": pytest.approx(2 / 3), "reward/length": pytest.approx(5 / 6),
                       "reward/only_even": 1.0}  # None rows are left out of the mean


def test_a_broken_function_is_named_with_its_row(functions):
    prompts = _prompts(["1", "boom", "3"])
    with pytest.raises(RewardError) as info:
        functions(BODY, {"name": "bad_row"}).score(prompts, ["a", "b", "c"])
    text = str(info.value)
    assert ":bad_row raised ZeroDivisionError" in text and "on data.jsonl:2" in text and "'q1'" in text
    with pytest.raises(RewardError, match=r":short returned 1 scores for 3 completions"):
        functions(BODY, {"name": "short"}).score(prompts, ["a", "b", "c"])
    with pytest.raises(RewardError, match=r":nan_row returned nan for data.jsonl:2"):
        functions(BODY, {"name": "nan_row"}).score(prompts, ["a", "b", "c"])


def test_an_unimportable_function_fails_validation_with_exit_2_naming_it(tmp_path):
    names = ["strategies.ppo.rewards:letter_a_fraction", "no_such_rewards:score"]
    cfg = letters_config("grpo", "missing-fn", reward={"function": names})
    proc = ftl_in_process(["validate", write_config(tmp_path, cfg)], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "grpo.reward.function.1.name: cannot import 'no_such_rewards:score'" in proc.stderr
    with pytest.raises(UserError, match="reward.weights must hold one weight per function"):
        validate_config(letters_config("grpo", "w", reward={"function": "strategies.ppo.rewards:"
                                                            "letter_a_fraction", "weights": [1, 2]}))


def test_a_dataset_column_reaches_a_function_next_to_the_config_through_ray(ray_session, tmp_path):
    """GRPO on builtin:prompts-add; the reward module lives only in the config's folder (not on any
    process's path): the run ships it, the actors validate the config with it, and the function
    records the (prompt, answer) pairs it was given."""
    from launcher.data.synthetic import generate

    record = tmp_path / "received.jsonl"
    name = _module(tmp_path, f"""
        import json

        def check_answer(prompts, completions, answer):
            with open({str(record)!r}, "a") as fh:
                for p, a in zip(prompts, answer):
                    fh.write(json.dumps([p, a]) + "\\n")
            return [float(a in c) for c, a in zip(completions, answer)]
    """)
    cfg = letters_config("grpo", "columns", reward={"function": f"{name}:check_answer"},
                         rollout={"num_workers": 2, "batch_size": 4, "max_new_tokens": 4})
    cfg["data"]["train"] = {"path": "builtin:prompts-add", "num_rows": 64}
    cfg["train"]["max_steps"] = 2
    run = run_in_session(tmp_path, write_config(tmp_path, cfg))
    assert (run / "code" / f"{name}.py").exists()
    received = [json.loads(line) for line in record.read_text().splitlines()]
    assert len(received) == 2 * 4 * 4  # steps x prompts x generations
    truth = {r["prompt"][0]["content"]: r["answer"] for r in generate("prompts-add", 64)}
    assert all(truth[prompt] == answer for prompt, answer in received)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all("reward/check_answer" in r for r in rows if "reward/mean" in r)


def test_builtin_code_prompts_are_scored_by_the_sandboxed_code_verifier():
    import re

    from launcher.data.synthetic import generate
    from strategies.rl.verifiers import code_tests

    rows = [r for r in generate("prompts-code", 200) if r["tests"].startswith("assert plus_")][:3]
    ks = [int(re.search(r"plus_(\d+)\(", r["tests"]).group(1)) for r in rows]
    right = [f"```python\ndef plus_{k}(x):\n    return x + {k}\n```" for k in ks]
    wrong = [f"```python\ndef plus_{k}(x):\n    return x - {k}\n```" for k in ks]
    tests = [r["tests"] for r in rows] * 2
    assert code_tests(["q"] * 6, right + wrong, tests=tests) == [1.0] * 3 + [0.0] * 3
