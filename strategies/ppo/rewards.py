"""Rule rewards: ``function(prompts, completions) -> list[float]`` named by ``reward.function``.

Kept free of torch so a config naming one validates in a second. A rule sees the prompt as the
text the policy was given (chat template applied) and the completion decoded without special
tokens, and must return one float per completion.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

RuleReward = Callable[[list[str], list[str]], list[float]]


def letter_a_fraction(prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
    """Share of the completion's non-space characters that are the letter 'a', in [0, 1].

    A randomly initialised model writes byte soup in which a few percent of characters are 'a', so
    the reward starts near 0 and every response carries some signal (a dense reward, unlike exact
    match): the test task on which PPO and GRPO must show a large rise within a few minutes.
    An empty completion (EOS first) scores 0, so stopping at once is never a way out.
    """
    scores = []
    for text in completions:
        chars = [c for c in text if not c.isspace()]
        scores.append(chars.count("a") / len(chars) if chars else 0.0)
    return scores


def load_rule(spec: str) -> RuleReward:
    from launcher.lazy import load_object

    return load_object(spec)


def score_with_rule(rule: RuleReward, prompts: list[str], completions: list[str]) -> list[float]:
    """Call a rule and check its answer, naming the rule when it breaks the contract."""
    scores = list(rule(prompts, completions))
    if len(scores) != len(completions):
        raise ValueError(f"reward.function returned {len(scores)} scores for {len(completions)} completions")
    bad = [s for s in scores if not isinstance(s, (int, float)) or s != s]
    if bad:
        raise ValueError(f"reward.function returned non-numeric or NaN scores, e.g. {bad[0]!r}")
    return [float(s) for s in scores]
