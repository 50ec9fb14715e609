"""Built-in verifiable rewards (``strategies.rl.verifiers``), called as TRL calls them.

Pure string work, no sandbox (``code_tests`` runs programs and is tested in
``tests/rl/test_sandbox.py``; only its argument checks and program extraction are here).
"""

from __future__ import annotations

import functools
import time

import pytest

from strategies.rl.verifiers import (
    code_tests,
    exact_match,
    extract_program,
    json_keys,
    numeric_answer,
    regex_format,
)


def score(fn, completion, **kwargs) -> float:
    """One completion's score (prompt text is irrelevant to every verifier)."""
    (value,) = fn(["prompt"], [completion], **kwargs)
    return value


# --- exact_match ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("completion", "answer", "expected"), [
    ("Paris", "Paris", 1.0),
    ("  paris \n", "Paris", 1.0),              # ends trimmed, case ignored
    ("New   York\nCity", "new york city", 1.0),  # inner whitespace runs read as one space
    ("Paris.", "Paris", 0.0),
    ("42", 42, 1.0),                           # a non-string answer compares as str()
    ("None", None, 0.0),                       # a row without an answer never matches
    ([{"role": "assistant", "content": " Paris"}], "Paris", 1.0),  # conversational completion
])
def test_exact_match(completion, answer, expected):
    assert score(exact_match, completion, answer=[answer]) == expected


def test_exact_match_options():
    assert score(exact_match, "Paris", answer=["paris"], case_sensitive=True) == 0.0
    assert score(exact_match, " Paris", answer=["Paris"], strip=False) == 0.0
    assert score(exact_match, "Paris", answer=["Paris"], strip=False, case_sensitive=True) == 1.0


# --- numeric_answer ------------------------------------------------------------------------------


@pytest.mark.parametrize(("completion", "answer", "expected"), [
    ("So the total is 1,000.", 1000, 1.0),
    ("1,234,567 apples", "1234567", 1.0),
    ("The answer is 81.0", 81, 1.0),
    ("81", "81.0", 1.0),
    ("It costs $5.", 5, 1.0),
    ("It costs \\$5", "$5", 1.0),
    ("About 5% of them", 5, 1.0),             # % is dropped: 5% reads as 5 ...
    ("About 5% of them", 0.05, 0.0),          # ... not as 0.05
    ("The result is -3.", -3, 1.0),
    ("x = \u22123", -3, 1.0),                 # Unicode minus
    ("We compute 10-3", 7, 0.0),              # a subtraction: the last number is 3, not -3
    ("We compute 10-3", 3, 1.0),
    ("Half is 1/2", 0.5, 1.0),
    ("Price: 3.50", 3.5, 1.0),
    ("Price: 3.5", "3.50", 1.0),
    ("so 42.", 42, 1.0),
    ("no number here", 1, 0.0),
    ("", 0, 0.0),
])
def test_numeric_answer_in_plain_text(completion, answer, expected):
    assert score(numeric_answer, completion, answer=[answer]) == expected


@pytest.mark.parametrize(("completion", "answer", "expected"), [
    ("Thus \\boxed{42}.", 42, 1.0),
    ("I guess 7, so \\boxed{8}. Check: 9", 8, 1.0),     # the box wins over the last number
    ("\\boxed{1} first, then \\boxed{2}", 2, 1.0),      # the last box
    ("\\boxed{\\frac{1}{2}}", 0.5, 1.0),                # nested braces
    ("\\boxed{\\dfrac{3}{4}}", "0.75", 1.0),
    ("\\boxed{-\\frac{1}{2}}", -0.5, 1.0),
    ("\\boxed{\\frac{-1}{2}}", -0.5, 1.0),
    ("\\boxed{1/2}", 0.5, 1.0),
    ("\\boxed{\\$1,000}", 1000, 1.0),
    ("\\boxed{50\\%}", 50, 1.0),
    ("\\boxed{x = 5}", 5, 1.0),
    ("\\boxed{12 \\text{ cm}}", 12, 1.0),
    ("\\boxed{x + 1}", 1, 0.0),       # a box that is not a number scores 0, no guessing inside it
    ("\\boxed{3} and 4", 4, 0.0),
    ("So 5, \\boxed{5", 5, 1.0),      # an unclosed box (truncated) does not count: last number
    ("\\boxed{\\frac{1}{0}}", 0, 0.0),
])
def test_numeric_answer_boxed(completion, answer, expected):
    assert score(numeric_answer, completion, answer=[answer]) == expected


def test_numeric_answer_degenerate_repetition_is_cheap():
    """A policy stuck repeating '\\boxed{' (never closed) must not make scoring quadratic."""
    start = time.monotonic()
    assert score(numeric_answer, "\\boxed{" * 20_000 + " 7", answer=[7]) == 1.0  # no complete box
    assert time.monotonic() - start < 1.0


def test_numeric_answer_reads_gsm8k_solutions_as_answers():
    solution = "She has 3 + 4 = 7 bags, so 7 * 176 = 1232 apples.\n#### 1,232"
    assert numeric_answer(["p", "p"], ["1232", "7"], answer=[solution, solution]) == [1.0, 0.0]


def test_numeric_answer_tolerance_is_relative_for_large_answers():
    assert score(numeric_answer, "1000000.5", answer=[1_000_000]) == 1.0   # 0.5 <= 1e-6 * 1e6
    assert score(numeric_answer, "0.0000015", answer=[0]) == 0.0           # absolute near zero
    assert score(numeric_answer, "3.14", answer=["3.14159"], tolerance=1e-3) == 1.0
    assert score(numeric_answer, "3.14", answer=["3.14159"]) == 0.0


def test_numeric_answer_unreadable_reference_scores_zero_with_a_warning():
    with pytest.warns(UserWarning, match="row 1"):
        scores = numeric_answer(["p", "p"], ["5", "5"], answer=[5, "N/A"])
    assert scores == [1.0, 0.0]


# --- regex_format --------------------------------------------------------------------------------


def test_regex_format_search_and_full_match():
    pattern = r"<think>.*</think>\s*<answer>.*</answer>"
    good = "<think>step 1\nstep 2</think>\n<answer>4</answer>"  # '.' crosses newlines (DOTALL)
    assert regex_format(["p"] * 3, [good, good + " trailing", "<answer>4</answer>"],
                        pattern=pattern) == [1.0, 1.0, 0.0]
    assert regex_format(["p"] * 2, [good, good + " trailing"], pattern=pattern,
                        full_match=True) == [1.0, 0.0]


def test_regex_format_rejects_bad_or_missing_pattern():
    with pytest.raises(ValueError, match="bad pattern"):
        regex_format(["p"], ["x"], pattern="(unclosed")
    with pytest.raises(TypeError, match="pattern"):
        regex_format(["p"], ["x"])


# --- json_keys -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("completion", "expected"), [
    ('{"name": "Ada", "age": 36}', 1.0),
    ('  {"name": "Ada", "age": 36, "extra": true}\n', 1.0),
    ('Sure:\n```json\n{"name": "Ada", "age": 36}\n```\nDone.', 1.0),  # the fenced block
    ('{"name": "Ada"}', 0.0),                                          # a key missing
    ('[{"name": "Ada", "age": 36}]', 0.0),                             # not an object
    ('{"name": "Ada", "age": }', 0.0),                                 # not JSON
    ("```json\n{broken\n```", 0.0),
])
def test_json_keys_fixed_keys(completion, expected):
    assert score(json_keys, completion, keys=["name", "age"]) == expected


def test_json_keys_without_keys_needs_only_an_object():
    assert json_keys(["p", "p"], ["{}", "[]"]) == [1.0, 0.0]


def test_json_keys_column_wins_over_the_bound_kwarg():
    bound = functools.partial(json_keys, keys=["name"])  # as the config binds it
    completions = ['{"id": 1}', '{"name": "x"}']
    assert bound(["p", "p"], completions) == [0.0, 1.0]
    assert bound(["p", "p"], completions, keys=[["id"], ["id"]]) == [1.0, 0.0]  # the row column


def test_json_keys_column_of_the_wrong_length_is_named():
    with pytest.raises(ValueError, match="'keys'"):
        json_keys(["p", "p"], ["{}", "{}"], keys=[["a"], ["b"], ["c"]])


# --- contract shared by all ----------------------------------------------------------------------

PURE = [
    (exact_match, {"answer": ["a", "b", "c"]}),
    (numeric_answer, {"answer": [1, 2, 3]}),
    (regex_format, {"pattern": "a"}),
    (json_keys, {"keys": ["a"]}),
]


@pytest.mark.parametrize(("fn", "kwargs"), PURE, ids=lambda x: getattr(x, "__name__", ""))
def test_one_float_per_completion_even_for_junk(fn, kwargs):
    completions = ["a", None, "\\boxed{"]  # junk must score, not raise
    scores = fn(["p"] * 3, completions, unrelated_column=[1, 2, 3], **kwargs)
    assert len(scores) == len(completions) and all(isinstance(s, float) for s in scores)


@pytest.mark.parametrize(("fn", "column"), [
    (exact_match, "answer"), (numeric_answer, "answer"), (code_tests, "tests"),
], ids=["exact_match", "numeric_answer", "code_tests"])
def test_missing_column_is_named(fn, column):
    with pytest.raises(TypeError, match=f"'{column}'"):
        fn(["p"], ["x"], other=[1])


def test_column_of_the_wrong_length_is_named():
    with pytest.raises(ValueError, match="'answer' has 1 values for 2"):
        exact_match(["p", "p"], ["a", "b"], answer=["a"])


# --- code_tests: what it runs --------------------------------------------------------------------


@pytest.mark.parametrize(("completion", "program"), [
    ("Try:\n```python\nx = 1\n```\nor better:\n```python\nx = 2\n```", "x = 2\n"),  # last python block
    ("```py\nx = 3\n```", "x = 3\n"),
    ("```\nx = 4\n```\n```text\nnot code\n```", "not code\n"),  # no python block: last fenced block
    ("```javascript\nlet x;\n```\n```python\nx = 5\n```\n```bash\nls\n```", "x = 5\n"),
    ("x = 6", "x = 6"),                                          # no fence: everything
])
def test_extract_program(completion, program):
    assert extract_program(completion) == program
