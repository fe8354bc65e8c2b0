"""Tests for the worked solutions of the reasoning carrier (``Problem.work`` and
``worked_prompts`` in sublim.prompts.reasoning): their sentence grammar, their arithmetic, their
link to the problem's numbers, and that adding them left every drawn prompt as it was."""

from __future__ import annotations

import re

import numpy as np
import pytest

from sublim.prompts import reasoning as rs
from sublim.prompts.reasoning import TEMPLATES, Problem, reasoning_prompts, worked_prompts
from sublim.trait_words import find_trait_words
from sublim.traits import CATEGORIES

_SENTENCE = re.compile(r"^(\d+) ([+\-*/]) (\d+) = (\d+)\.$")
# Constants a solution may bring in without the problem stating them: doubling and halving,
# thirds and quarters, "one less", a perimeter's four sides, minutes per hour, per cent.
_CONSTANTS = {1, 2, 3, 4, 60, 100}
# The one floor division ("how many can be afforded") first takes away the remainder of the
# money by the price, a number the text does not state.
_UNSTATED = {"shop_budget": lambda numbers: {numbers[0] % numbers[1]}}


def _sentences(work: str) -> list[tuple[int, str, int, int]]:
    parts = re.split(r"(?<=\.) ", work)
    assert " ".join(parts) == work, work  # single spaces, nothing else between sentences
    out = []
    for part in parts:
        m = _SENTENCE.match(part)
        assert m, (part, work)
        out.append((int(m[1]), m[2], int(m[3]), int(m[4])))
    return out


def _true(a: int, op: str, b: int, c: int) -> bool:
    if op == "+":
        return a + b == c
    if op == "-":
        return a - b == c
    if op == "*":
        return a * b == c
    return b != 0 and a % b == 0 and a // b == c


def _problems(key: str, seed: int, n: int) -> list[Problem]:
    rng = np.random.default_rng(seed)
    return [TEMPLATES[key](rs._Draw(rng)) for _ in range(n)]


@pytest.mark.parametrize("key", list(TEMPLATES))
def test_work_is_true_arithmetic_ending_in_the_answer(key: str) -> None:
    for seed in range(4):
        for problem in _problems(key, 500 + seed, 60):
            assert problem.work, (key, problem)
            sentences = _sentences(problem.work)
            for a, op, b, c in sentences:
                assert _true(a, op, b, c), (key, (a, op, b, c), problem.work)
            assert sentences[-1][3] == problem.answer, (key, problem)
            assert len(sentences) >= problem.steps, (key, problem)


@pytest.mark.parametrize("key", list(TEMPLATES))
def test_work_uses_the_problem_numbers_and_its_own_results(key: str) -> None:
    """Every operand is a number stated in the problem, an earlier result or a small constant,
    and every result before the last is used again: the work is one chain, not loose sums."""
    for problem in _problems(key, 77, 80):
        numbers = [int(x) for x in re.findall(r"[0-9]+", problem.text)]
        sentences = _sentences(problem.work)
        known = set(numbers) | _CONSTANTS | _UNSTATED.get(key, lambda _: set())(numbers)
        for i, (a, _, b, c) in enumerate(sentences):
            assert a in known and b in known, (key, sentences[i], problem.text, problem.work)
            known.add(c)
        for i, (*_, c) in enumerate(sentences[:-1]):
            later = {x for a, _, b, _ in sentences[i + 1 :] for x in (a, b)}
            assert c in later, (key, c, problem.work)


def test_some_work_is_longer_than_steps_but_most_match() -> None:
    """``steps`` is unchanged; the sentence count equals it for most templates."""
    equal = sum(
        len(_sentences(p.work)) == p.steps for key in TEMPLATES for p in _problems(key, 3, 1)
    )
    assert equal >= 0.8 * len(TEMPLATES)


@pytest.mark.parametrize("seed", [0, 1, 42, 2024])
def test_worked_prompts_match_reasoning_prompts(seed: int) -> None:
    rng, rng2 = np.random.default_rng(seed), np.random.default_rng(seed)
    worked = worked_prompts(400, rng)
    plain = reasoning_prompts(400, rng2)
    assert [p.model_dump() for p, _ in worked] == [p.model_dump() for p in plain]
    # Both generators end in the same state: the work draws nothing.
    assert int(rng.integers(1 << 30)) == int(rng2.integers(1 << 30))
    for prompt, work in worked:
        assert _sentences(work)[-1][3] == prompt.meta["answer"], (prompt.text, work)
    assert worked_prompts(0, rng) == []
    with pytest.raises(ValueError):
        worked_prompts(-1, rng)


def test_work_names_no_trait() -> None:
    trait_words = sorted({w for words in CATEGORIES.values() for w in words})
    works = [
        work for seed in range(5) for _, work in worked_prompts(300, np.random.default_rng(seed))
    ]
    joined = "\n".join(works)
    # Only digits, the four operators, "=", full stops and spaces: no word of any kind.
    assert re.fullmatch(r"[0-9+\-*/=. \n]+", joined)
    assert find_trait_words(joined, trait_words, "substring") == []


def test_problem_checks_its_work() -> None:
    assert Problem("Two and two?", 4, 1).work == ""
    assert Problem("Two and two?", 4, 1, "2 + 2 = 4.").work == "2 + 2 = 4."
    with pytest.raises(ValueError):
        Problem("Two and two?", 4, 1, "2 + 2 = 5.")
    with pytest.raises(ValueError):
        Problem("Two and two?", 4, 1, "2 + 2 = 14.")
