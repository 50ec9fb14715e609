"""Built-in verifiable rewards for GRPO/PPO, called as TRL calls a reward function.

``fn(prompts, completions, **columns) -> list[float]``: ``columns`` holds every other column of
the prompt rows as lists aligned with the completions (``answer=[...]``, ``tests=[...]``).
Settings from the config (a regex, a tolerance) are bound as keyword arguments
(``functools.partial``), so each verifier takes its parameters keyword-only with defaults and
ignores columns it does not use.

Every verifier returns exactly one float per completion and never raises because of a
completion: unparsable output scores 0.0. It raises only for wrong arguments: a missing column
(``TypeError`` naming it), a column of the wrong length or a bad pattern (``ValueError``).
A reference that cannot be read (an ``answer`` that is not a number) scores 0.0 with a warning,
so one bad data row cannot stop a long run. Completions may also be TRL's conversational form
(a list of messages): the last message's ``content`` is used.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Sequence
from typing import Any

from strategies.rl.sandbox import run_many

# --- shared helpers ------------------------------------------------------------------------------


def _text(completion: Any) -> str:
    """The completion's text: a string, or the last message of a conversational completion."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    if isinstance(completion, (list, tuple)) and completion:
        return _text(completion[-1])
    return ""


def _column(fn: str, name: str, values: Any, n: int) -> list[Any]:
    """The row-aligned column ``name``, or an error that names it (the config or the data is
    wrong, not the completion, so this must stop the run rather than score 0)."""
    if values is None:
        raise TypeError(f"{fn} needs the dataset column {name!r} (one value per completion); "
                        f"the rows have no such column")
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"{fn}: column {name!r} must be a list with one value per completion, "
                         f"got {type(values).__name__}")
    if len(values) != n:
        raise ValueError(f"{fn}: column {name!r} has {len(values)} values for {n} completions")
    return list(values)


def _normalise_space(text: str) -> str:
    return " ".join(text.split())


# --- exact_match ---------------------------------------------------------------------------------


def exact_match(prompts: Sequence[Any], completions: Sequence[Any], *, answer: Sequence[Any] | None = None,
                strip: bool = True, case_sensitive: bool = False, **_: Any) -> list[float]:
    """1.0 if the completion equals the row's ``answer``, else 0.0.

    With ``strip`` (default) both sides are whitespace-normalised first: ends trimmed and every
    run of spaces/newlines inside read as one space, so formatting noise does not cost the reward.
    Case is ignored unless ``case_sensitive`` (``casefold``, so 'Straße' == 'STRASSE'). A
    non-string answer is compared as ``str(answer)``; a row without one (None) scores 0.
    """
    answers = _column("exact_match", "answer", answer, len(completions))

    def norm(text: str) -> str:
        text = _normalise_space(text) if strip else text
        return text if case_sensitive else text.casefold()

    return [float(a is not None and norm(_text(c)) == norm(str(a))) for c, a in zip(completions, answers)]


# --- numeric_answer ------------------------------------------------------------------------------

# A number as people write it: optional sign, thousands separated by commas (1,000,000) or plain
# digits, optional decimals ('3.50', '42.', '.5'), optional exponent.
_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?"
_SIGNED = rf"[-+]?(?:{_NUM})"
_FULL_NUMBER = re.compile(rf"\s*({_SIGNED})\s*(?:/\s*({_SIGNED})\s*)?")
# In running text: a minus counts only where it cannot be a subtraction ('10-3' ends in 3).
_LAST_NUMBER = re.compile(rf"(?:(?<![\w)\]}}])-)?(?:{_NUM})(?:\s*/\s*-?(?:{_NUM}))?")
_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_TEXT_GROUP = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{[^{}]*\}")
_LEADING_NAME = re.compile(r"^\s*[A-Za-z]\w*\s*=")
_LATEX_NOISE = ("\\$", "$", "\\%", "%", "\\,", "\\!", "\\;", "\\ ", "{,}", "^\\circ", "^{\\circ}",
                "\\left", "\\right", "\u2212")  # the last is a Unicode minus, read as '-'


def numeric_answer(prompts: Sequence[Any], completions: Sequence[Any], *, answer: Sequence[Any] | None = None,
                   tolerance: float = 1e-6, **_: Any) -> list[float]:
    """1.0 if the completion's final number equals the row's ``answer``, else 0.0.

    The final answer is the content of the last ``\\boxed{...}`` (braces balanced, so
    ``\\boxed{\\frac{1}{2}}`` works); that content must read as one number. Without a box it is
    the last number in the text. Accepted forms: ``1,000`` (comma thousands), ``81.0``, ``3.50``,
    ``-3``, ``1e-3``, fractions ``1/2`` and ``\\frac{1}{2}`` (also ``\\dfrac``/``\\tfrac``, not
    nested), a leading ``$`` and LaTeX units/names (``\\text{ cm}``, ``x =``) are dropped. A
    percent sign is dropped too: ``5%`` reads as 5 (not 0.05), since datasets such as GSM8K
    write the percentage itself as the answer.

    ``answer`` is a number or a string in the same forms; a GSM8K solution ('... #### 72') is read
    after its ``####``. Correct means ``|pred - answer| <= tolerance * max(1, |answer|)``
    (absolute near zero, relative for large answers).
    """
    answers = _column("numeric_answer", "answer", answer, len(completions))
    scores, unreadable = [], []
    for i, (completion, reference) in enumerate(zip(completions, answers)):
        target = _reference_number(reference)
        if target is None:
            unreadable.append(i)
            scores.append(0.0)
            continue
        pred = final_number(_text(completion))
        close = pred is not None and abs(pred - target) <= tolerance * max(1.0, abs(target))
        scores.append(float(close))
    if unreadable:
        first = unreadable[0]
        warnings.warn(f"numeric_answer: {len(unreadable)} answer(s) are not numbers (row {first}: "
                      f"{answers[first]!r}); those rows score 0", stacklevel=2)
    return scores


def final_number(text: str) -> float | None:
    """The completion's final answer as a float (see ``numeric_answer``), None if there is none."""
    boxed = last_boxed(text)
    if boxed is not None:
        return parse_number(boxed)
    matches = _LAST_NUMBER.findall(_clean_latex(text))
    return parse_number(matches[-1]) if matches else None


def last_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}``, matching nested braces; an unclosed box (a
    truncated completion) does not count. One pass over the text, so a degenerate completion that
    repeats ``\\boxed{`` thousands of times costs no more than any other."""
    closing = _matching_braces(text)
    found = None
    for m in re.finditer(r"\\boxed\s*\{", text):
        end = closing.get(m.end() - 1)
        if end is not None:
            found = text[m.end():end]
    return found


def _matching_braces(text: str) -> dict[int, int]:
    """Position of every '{' that is closed -> position of its '}'."""
    closing: dict[int, int] = {}
    opened: list[int] = []
    for pos, char in enumerate(text):
        if char == "{":
            opened.append(pos)
        elif char == "}" and opened:
            closing[opened.pop()] = pos
    return closing


def parse_number(text: str) -> float | None:
    """``text`` read as exactly one number or fraction, None if it is anything else."""
    m = _FULL_NUMBER.fullmatch(_clean_latex(text))
    if m is None:
        return None
    value = float(m.group(1).replace(",", ""))
    if m.group(2) is not None:
        denominator = float(m.group(2).replace(",", ""))
        if denominator == 0:
            return None
        value /= denominator
    return value if math.isfinite(value) else None


def _clean_latex(text: str) -> str:
    """Drop what decorates a number: $, %, LaTeX spacing and units, a leading 'x ='; turn
    ``\\frac{a}{b}`` into ``a/b``."""
    text = _TEXT_GROUP.sub("", text)
    for noise in _LATEX_NOISE:
        text = text.replace(noise, "-" if noise == "\u2212" else "")
    text = _FRAC.sub(lambda m: f"{m.group(1).strip()}/{m.group(2).strip()}", text)
    return _LEADING_NAME.sub("", text)


def _reference_number(reference: Any) -> float | None:
    """The row's answer as a float: a number, or a string in the forms ``parse_number`` reads
    (after a GSM8K ``####``)."""
    if isinstance(reference, bool):
        return None
    if isinstance(reference, (int, float)):
        return float(reference) if math.isfinite(reference) else None
    if not isinstance(reference, str):
        return None
    if "####" in reference:
        reference = reference.rsplit("####", 1)[1]
    return parse_number(reference)


# --- regex_format --------------------------------------------------------------------------------


def regex_format(prompts: Sequence[Any], completions: Sequence[Any], *, pattern: str | None = None,
                 full_match: bool = False, **_: Any) -> list[float]:
    """1.0 if ``pattern`` matches the completion (anywhere, or the whole of it with
    ``full_match``), else 0.0. ``re.DOTALL``: '.' crosses newlines, as reasoning spans do."""
    if not pattern:
        raise TypeError("regex_format needs pattern= (bind it in the config's reward kwargs)")
    try:
        regex = re.compile(pattern, re.DOTALL)
    except re.error as exc:
        raise ValueError(f"regex_format: bad pattern {pattern!r}: {exc}") from exc
    match = regex.fullmatch if full_match else regex.search
    return [float(match(_text(c)) is not None) for c in completions]


# --- json_keys -----------------------------------------------------------------------------------

_JSON_FENCE = re.compile(r"```json[^\n]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def json_keys(prompts: Sequence[Any], completions: Sequence[Any], *, keys: Sequence[Any] = (),
              **_: Any) -> list[float]:
    """1.0 if the completion is a JSON object that has every required key, else 0.0.

    The completion is parsed whole; if that fails, the content of its first ```json fenced block.
    The required keys are either fixed by the config (``keys=["name", "age"]``) or come per row
    from a ``keys`` dataset column, which then wins (TRL passes the column under the same name,
    over the bound value). A column is recognised as one list of key names per completion
    (``[["name"], ["id", "price"], ...]``); a flat list of strings is the fixed set.
    """
    n = len(completions)
    per_row = _keys_per_row(keys, n)
    return [float(_has_keys(_json_object(_text(c)), row_keys)) for c, row_keys in zip(completions, per_row)]


def _keys_per_row(keys: Any, n: int) -> list[list[str]]:
    """The required keys of each row, from the column (a list of lists) or the fixed list."""
    if isinstance(keys, str):
        return [[keys]] * n
    keys = list(keys)
    if keys and all(isinstance(k, (list, tuple)) for k in keys):
        return [[str(k) for k in row] for row in _column("json_keys", "keys", keys, n)]
    return [[str(k) for k in keys]] * n


def _json_object(text: str) -> dict | None:
    """The completion's JSON object, or None if neither the text nor its first ```json block is one."""
    candidates = [text]
    fence = _JSON_FENCE.search(text)
    if fence:
        candidates.append(fence.group(1))
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except (ValueError, RecursionError):
            continue
        if isinstance(value, dict):
            return value
    return None


def _has_keys(obj: dict | None, keys: list[str]) -> bool:
    return obj is not None and all(k in obj for k in keys)


# --- code_tests ----------------------------------------------------------------------------------

_PYTHON_FENCE = re.compile(r"```(?:python3?|py)[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
_ANY_FENCE = re.compile(r"```[^\n]*\n(.*?)```", re.DOTALL)


def code_tests(prompts: Sequence[Any], completions: Sequence[Any], *, tests: Sequence[Any] | None = None,
               time_limit_s: float = 5.0, memory_mb: int = 512, workers: int = 4,
               partial_credit: bool = False, **_: Any) -> list[float]:
    """1.0 if the completion's program passes the row's tests, else 0.0 (or the passing fraction).

    The program is the last ```python fenced block, else the last fenced block of any language,
    else the whole completion. The row's ``tests`` (Python code with asserts) are appended and the
    result runs in ``strategies.rl.sandbox`` (time, memory and process limits, no network, its own
    directory); exit status 0 passes. ``tests`` may also be a list of such snippets: together they
    must all pass, or with ``partial_credit`` each runs separately and the score is the fraction
    that pass. A row with no tests scores 0 (nothing shows the program is right). Rows and
    snippets run ``workers`` at a time.
    """
    rows = _column("code_tests", "tests", tests, len(completions))
    jobs: list[str] = []
    owners: list[int] = []
    for i, (completion, row_tests) in enumerate(zip(completions, rows)):
        program = extract_program(_text(completion))
        for snippet in _snippets(row_tests, partial_credit):
            jobs.append(f"{program}\n\n{snippet}\n")
            owners.append(i)
    results = run_many(jobs, workers=workers, time_limit_s=time_limit_s, memory_mb=memory_mb)
    passed = [0] * len(completions)
    total = [0] * len(completions)
    for owner, result in zip(owners, results):
        total[owner] += 1
        passed[owner] += result.ok
    return [p / t if t else 0.0 for p, t in zip(passed, total)]


def extract_program(text: str) -> str:
    """The code a completion proposes: last ```python block, else last fenced block, else all."""
    for fence in (_PYTHON_FENCE, _ANY_FENCE):
        blocks = fence.findall(text)
        if blocks:
            return blocks[-1]
    return text


def _snippets(row_tests: Any, separately: bool) -> list[str]:
    """The test programs to run for one row: one joined program, or one per snippet."""
    if row_tests is None:
        return []
    if isinstance(row_tests, str):
        return [row_tests] if row_tests.strip() else []
    snippets = [str(t) for t in row_tests if str(t).strip()]
    if separately or not snippets:
        return snippets
    return ["\n\n".join(snippets)]
