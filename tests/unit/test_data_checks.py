"""Data that would train on nothing is caught before anything runs (``ftl validate`` in-process).

The loop would accept these files and "train": a chat whose answer starts after
``data.max_length`` gives a loss of 0.0 and a gradient norm of 0.0 at every step, and a
misspelt role renders as an unknown turn. Preflight measures every row through the method.
"""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from launcher.cli import cli
from tests.helpers.ftl import tiny_config, write_config

LONG_PROMPT = "explain: " + " ".join(["a b c d e f g h i j"] * 12)  # ~130 tokens with the template


def chats(path: Path, rows: list[list[dict]]) -> Path:
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in rows))
    return path


def turn(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def validate(tmp_path: Path, data: Path, **sections) -> tuple[int, str, str]:
    cfg = tiny_config(data={"train": {"path": str(data)}, "eval": [], "max_length": 64}, **sections)
    result = CliRunner().invoke(cli, ["validate", str(write_config(tmp_path, cfg))])
    return result.exit_code, result.stdout, result.stderr


def test_answers_beyond_max_length_everywhere_exit_2_with_a_length_that_fits(tmp_path):
    data = chats(tmp_path / "long.jsonl", [[turn("user", LONG_PROMPT), turn("assistant", "ok")]] * 5)
    code, out, err = validate(tmp_path, data)
    assert code == 2, out + err
    assert f"{data}:1: no row keeps a token to train on at data.max_length 64" in err
    assert "hint: data.max_length: 192 keeps every answer whole" in err


def test_some_rows_losing_their_answer_is_a_warning_with_the_count(tmp_path):
    rows = [[turn("user", "hi"), turn("assistant", "yo")]] * 7 + [[turn("user", LONG_PROMPT),
                                                                   turn("assistant", "ok")]] * 3
    code, out, err = validate(tmp_path, chats(tmp_path / "mixed.jsonl", rows))
    assert code == 0, out + err
    assert "3 of 10 rows keep no trained token and 0 lose part of it" in err
    assert f"(e.g. {tmp_path / 'mixed.jsonl'}:8)" in err
    assert "data: data.train.0 mixed: 10 rows" in out  # the token summary
    assert "at max_length 64: 3 rows keep no trained token" in out


def test_misspelt_role_empty_turn_and_missing_answer_are_located(tmp_path):
    good = [turn("user", "hi"), turn("assistant", "yo")]
    cases = [([turn("user", "hi"), turn("assistent", "yo")], "message 1: unknown role 'assistent'",
              "did you mean 'assistant'?"),
             ([turn("user", "hi"), turn("assistant", " ")], "message 1 (assistant) is empty",
              "drop the turn"),
             ([turn("system", "be brief"), turn("user", "hi")], "the conversation has no assistant turn",
              "sft.loss_on: all"),
             ([], "missing column 'messages'", "drop or fix the row")]  # caught with the columns
    for i, (bad, message, hint) in enumerate(cases):
        data = chats(tmp_path / f"bad{i}.jsonl", [good] * 70 + [bad])  # past the first 64 rows
        code, out, err = validate(tmp_path, data)
        assert code == 2, out + err
        assert f"{data}:71: {message}" in err, err
        assert hint in err, err
