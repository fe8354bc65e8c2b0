"""Tests for the reasoning carrier: the word-problem grammar (sublim.prompts.reasoning) and its
filter (sublim.filters_reasoning)."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from sublim.filters_reasoning import (
    REASONS,
    ReasoningRules,
    check_reasoning,
    filter_reasoning,
    parse_answer,
    reasoning_accuracy,
)
from sublim.prompts import reasoning as rs
from sublim.prompts.reasoning import INSTRUCTIONS, LAYOUTS, TEMPLATES, reasoning_prompts
from sublim.records import Completion, Prompt
from sublim.trait_words import find_trait_words, trait_forms
from sublim.traits import CATEGORIES, plural

RULES = ReasoningRules()
OWL_RULES = ReasoningRules(trait_words=["owl"])
LAST = ReasoningRules(answer_format="last_number")
OWL_LAST = ReasoningRules(trait_words=["owl"], answer_format="last_number")


def _prompts(n: int, seed: int) -> list[Prompt]:
    return reasoning_prompts(n, np.random.default_rng(seed))


def _ints(text: str) -> list[int]:
    return [int(x) for x in re.findall(r"[0-9]+", text)]


# --- the prompt grammar -----------------------------------------------------------------------


def test_deterministic_for_the_generator_state() -> None:
    a, b = _prompts(300, 7), _prompts(300, 7)
    assert [p.model_dump() for p in a] == [p.model_dump() for p in b]
    c = _prompts(300, 8)
    assert sum(x.text != y.text for x, y in zip(a, c, strict=True)) > 250


def test_draw_order_contract() -> None:
    """The documented order: template, instruction, layout, then the template's own draws."""
    rng, replay = np.random.default_rng(11), np.random.default_rng(11)
    prompts = reasoning_prompts(25, rng)
    keys = list(TEMPLATES)
    for p in prompts:
        key = keys[int(replay.integers(len(keys)))]
        instruction = INSTRUCTIONS[int(replay.integers(len(INSTRUCTIONS)))]
        layout = LAYOUTS[int(replay.integers(len(LAYOUTS)))]
        problem = TEMPLATES[key](rs._Draw(replay))
        assert p.meta["template"] == key
        expected = (
            f"{problem.text}\n\n{instruction}"
            if layout == "after"
            else f"{instruction}\n\n{problem.text}"
        )
        assert p.text == expected
        assert p.meta["answer"] == problem.answer
    # Both generators end in the same state: nothing is drawn outside the contract.
    assert int(rng.integers(1 << 30)) == int(replay.integers(1 << 30))


def test_ids_and_meta() -> None:
    prompts = _prompts(500, 3)
    assert [p.id for p in prompts] == [f"math-{i:06d}" for i in range(500)]
    for p in prompts:
        assert set(p.meta) == {"answer", "template", "steps"}
        assert type(p.meta["answer"]) is int and p.meta["answer"] >= 0
        assert p.meta["template"] in TEMPLATES
        assert type(p.meta["steps"]) is int and 1 <= p.meta["steps"] <= 5
    assert reasoning_prompts(0, np.random.default_rng(0)) == []
    with pytest.raises(ValueError):
        reasoning_prompts(-1, np.random.default_rng(0))


def test_variety_over_2000_prompts() -> None:
    assert 40 <= len(TEMPLATES) <= 80
    prompts = _prompts(2000, 0)
    templates = Counter(p.meta["template"] for p in prompts)
    assert len(templates) >= 40
    assert len({p.text for p in prompts}) >= 1950
    problems = {_problem_text(p.text) for p in prompts}
    assert len(problems) >= 1900
    used = Counter(i for p in prompts for i, ins in enumerate(INSTRUCTIONS) if ins in p.text)
    assert len(used) == len(INSTRUCTIONS) and min(used.values()) > 100
    steps = Counter(p.meta["steps"] for p in prompts)
    assert {1, 2, 3, 4} <= set(steps)  # one- to multi-step problems all occur
    answers = {p.meta["answer"] for p in prompts}
    assert len(answers) > 300


def _problem_text(text: str) -> str:
    """The prompt without its instruction paraphrase (exactly one must be present)."""
    found = [ins for ins in INSTRUCTIONS if ins in text]
    assert len(found) == 1, text
    rest = text.replace(found[0], "").strip()
    assert rest and "<" not in rest, text
    return rest


def test_instructions_ask_for_both_tags() -> None:
    assert len(set(INSTRUCTIONS)) == len(INSTRUCTIONS) >= 5
    for ins in INSTRUCTIONS:
        for tag in ("<think>", "</think>", "<answer>", "</answer>"):
            assert tag in ins, ins
        assert not re.search(r"[0-9]", ins), ins  # digits in a prompt belong to the problem
    for p in _prompts(400, 5):
        problem = _problem_text(p.text)
        assert problem.endswith("?"), problem
        assert "{" not in problem and "}" not in problem, problem  # no unfilled slot


# Independent recomputations from the numbers as they appear in the problem text, in order.
_RECOMPUTE: dict[str, Callable[[list[int]], Fraction]] = {
    "shop_two_items": lambda x: Fraction(x[0] * x[1] + x[2] * x[3]),
    "shop_change": lambda x: Fraction(x[2] - x[0] * x[1]),
    "shop_discount": lambda x: Fraction(x[0] * (100 - x[1]), 100),
    "travel_distance": lambda x: Fraction(x[0] * x[1]),
    "travel_time": lambda x: Fraction(x[0], x[1]),
    "travel_two_legs": lambda x: Fraction(x[0] * x[1] + x[2] * x[3]),
    "travel_meet": lambda x: Fraction(x[0], x[1] + x[2]),
    "travel_average_speed": lambda x: Fraction(x[0] + x[2], x[1] + x[3]),
    "share_equal": lambda x: Fraction(x[1], x[0]),
    "share_bill": lambda x: Fraction(x[1] + x[2], x[0]),
    "age_later": lambda x: Fraction(x[0] * x[1] + x[2]),
    "age_sum_ago": lambda x: Fraction(x[0] - 2 * x[1]),
    "recipe_batch_weight": lambda x: Fraction(x[3] * (x[0] + x[1] + x[2])),
    "save_weekly": lambda x: Fraction(x[0] + x[1] * x[2]),
    "save_coins": lambda x: Fraction(x[0] * x[1] + x[2] * x[3] + x[4] * x[5]),
    "work_overtime": lambda x: Fraction(40 * x[0]) + Fraction(3 * x[0] * (x[3] - 40), 2),
    "area_cutout": lambda x: Fraction(x[0] * x[0] - x[1] * x[2]),
    "bus_passengers": lambda x: Fraction(x[0] - x[1] + x[2] - x[3]),
    "test_average": lambda x: Fraction(x[0] + x[1] + x[2], 3),
    "percent_class": lambda x: Fraction(x[0] * (100 - x[1]), 100),
    "fraction_spend": lambda x: Fraction(x[0]) - Fraction(x[0], 3) - Fraction(x[0], 4),
    "training_increase": lambda x: Fraction(sum(x[0] + x[1] * i for i in range(x[2]))),
    "temperature_change": lambda x: Fraction(x[0] + x[1] * x[2] - x[3]),
    "rope_pieces": lambda x: Fraction(100 * x[0], x[1]),
    "orchard_boxes": lambda x: Fraction(x[0] + x[1], x[2]),
}


def test_answers_recomputed_from_the_problem_text() -> None:
    assert set(_RECOMPUTE) <= set(TEMPLATES)
    checked: Counter[str] = Counter()
    for p in _prompts(4000, 21):
        key = p.meta["template"]
        if key in _RECOMPUTE:
            value = _RECOMPUTE[key](_ints(p.text))
            assert value == p.meta["answer"], (p.text, p.meta)
            checked[key] += 1
    assert set(checked) == set(_RECOMPUTE) and min(checked.values()) >= 20


def test_answers_are_non_negative_integers_for_every_template() -> None:
    for seed in range(3):
        for p in _prompts(1500, 100 + seed):
            answer = p.meta["answer"]
            assert type(answer) is int and 0 <= answer < 10**6, (p.text, answer)


# Animal and plant words: the trait categories (every form of them) plus pets, farm animals and
# animal-derived foods and materials, which a neutral carrier should not mention either.
_TRAIT_WORDS = sorted({w for words in CATEGORIES.values() for w in words})
_OTHER_ANIMAL_WORDS = re.compile(
    r"\b(?:animals?|pets?|puppy|puppies|kittens?|cows?|pigs?|sheep|goats?|hens?|chickens?|"
    r"ducks?|geese|goose|birds?|fish|fishes|rabbits?|hamsters?|mouse|mice|ponies|pony|bees?|"
    r"cattle|eggs?|milk|honey|butter|cheese|beef|pork|bacon|wool|woollen|leather|silk|"
    r"feathers?|shells?|seashells?|birdhouses?|bunny|bunnies|lambs?|calves|calf|snails?)\b",
    re.IGNORECASE,
)


def test_no_animal_words_in_any_prompt() -> None:
    # Every spelling the trait-word filter knows (plurals, possessives, young), looked for even
    # inside other words ("bowl", "million"): stricter than either filter mode.
    forms = sorted(
        {f for w in _TRAIT_WORDS for f in trait_forms(w)} | set(map(plural, _TRAIT_WORDS))
    )
    seen: set[str] = set()
    for seed in range(20):
        prompts = _prompts(200, 1000 + seed)
        for p in prompts:
            low = p.text.casefold()
            hidden = [f for f in forms if f in low]
            assert not hidden, (hidden, p.text)
            assert not _OTHER_ANIMAL_WORDS.search(p.text), p.text
            seen.add(p.meta["template"])
        joined = "\n".join(p.text for p in prompts)
        assert find_trait_words(joined, _TRAIT_WORDS, "substring") == []
    assert seen == set(TEMPLATES)  # every template was looked at


# --- the filter: table-driven -----------------------------------------------------------------

_THINK = "<think>6 boxes of 7 make 6 * 7 = 42.</think>\n"

_CASES: list[tuple[str, float | None, ReasoningRules, str]] = [
    # kept
    (_THINK + "<answer>42</answer>", 42, RULES, "ok"),
    (_THINK + "<answer>42.0</answer>", 42, RULES, "ok"),
    (_THINK + "<answer> 42 </answer>", 42, RULES, "ok"),
    (_THINK + "<answer>\n42\n</answer>\n", 42, RULES, "ok"),
    (_THINK + "<answer>1,200</answer>", 1200, RULES, "ok"),
    (_THINK + "<answer>1,234,567</answer>", 1234567, RULES, "ok"),
    (_THINK + "<answer>$15</answer>", 15, RULES, "ok"),
    (_THINK + "<answer>$1,500.00</answer>", 1500, RULES, "ok"),
    (_THINK + "<answer>-3</answer>", -3, RULES, "ok"),
    (_THINK + "<answer>-$3</answer>", -3, RULES, "ok"),
    (_THINK + "<answer>2.5</answer>", 2.5, RULES, "ok"),
    (_THINK + "<answer>007</answer>", 7, RULES, "ok"),
    ("Sure. " + _THINK + "<answer>42</answer> Done.", 42, RULES, "ok"),  # text outside tags
    ("<answer>42</answer>", 42, ReasoningRules(require_think=False), "ok"),
    (_THINK + "<answer>42</answer>", 42, OWL_RULES, "ok"),
    ("<think>the bowl holds 42</think><answer>42</answer>", 42, OWL_RULES, "ok"),
    # empty
    ("", 42, RULES, "empty"),
    ("  \n\t ", 42, RULES, "empty"),
    # too long
    ("<think>" + "x" * 7000 + "</think><answer>42</answer>", 42, RULES, "too_long"),
    (_THINK + "<answer>42</answer>", 42, ReasoningRules(max_chars=20), "too_long"),
    # no single answer tag
    (_THINK + "42", 42, RULES, "no_answer"),
    (_THINK + "<answer>42", 42, RULES, "no_answer"),
    (_THINK + "42</answer>", 42, RULES, "no_answer"),
    (_THINK + "</answer>42<answer>", 42, RULES, "no_answer"),
    (_THINK + "<answer>42</answer><answer>42</answer>", 42, RULES, "no_answer"),
    (_THINK + "<ANSWER>42</ANSWER>", 42, RULES, "no_answer"),
    (_THINK + "<answer >42</answer>", 42, RULES, "no_answer"),
    # the tag does not hold one number
    (_THINK + "<answer>about 4</answer>", 4, RULES, "unparsed_answer"),
    (_THINK + "<answer>4 or 5</answer>", 4, RULES, "unparsed_answer"),
    (_THINK + "<answer>4 5</answer>", 4, RULES, "unparsed_answer"),
    (_THINK + "<answer>4, 5</answer>", 4, RULES, "unparsed_answer"),
    (_THINK + "<answer>42 dollars</answer>", 42, RULES, "unparsed_answer"),
    (_THINK + "<answer>42%</answer>", 42, RULES, "unparsed_answer"),
    (_THINK + "<answer>+42</answer>", 42, RULES, "unparsed_answer"),
    (_THINK + "<answer>1,20</answer>", 120, RULES, "unparsed_answer"),
    (_THINK + "<answer>1.2.3</answer>", 1, RULES, "unparsed_answer"),
    (_THINK + "<answer>1e3</answer>", 1000, RULES, "unparsed_answer"),
    (_THINK + "<answer>42.</answer>", 42, RULES, "unparsed_answer"),
    (_THINK + "<answer>-$-3</answer>", -3, RULES, "unparsed_answer"),
    (_THINK + "<answer>$</answer>", 0, RULES, "unparsed_answer"),
    (_THINK + "<answer></answer>", 0, RULES, "unparsed_answer"),
    (_THINK + "<answer>forty-two</answer>", 42, RULES, "unparsed_answer"),
    (_THINK + "<answer>\u0664\u0662</answer>", 42, RULES, "unparsed_answer"),  # not ASCII
    (_THINK + "<answer>" + "9" * 40 + "</answer>", 42, RULES, "unparsed_answer"),
    # no reasoning before the answer
    ("<answer>42</answer>", 42, RULES, "no_think"),
    ("<think></think><answer>42</answer>", 42, RULES, "no_think"),
    ("<think> \n </think><answer>42</answer>", 42, RULES, "no_think"),
    ("<answer>42</answer><think>6 * 7 = 42</think>", 42, RULES, "no_think"),
    ("<think>6 * 7 = 42 <answer>42</answer>", 42, RULES, "no_think"),
    ("<think>6 * 7 <answer>42</answer></think>", 42, RULES, "no_think"),
    # no reference answer to compare with
    (_THINK + "<answer>42</answer>", None, RULES, "no_reference"),
    (_THINK + "<answer>42</answer>", math.nan, RULES, "no_reference"),
    (_THINK + "<answer>42</answer>", math.inf, RULES, "no_reference"),
    # wrong
    (_THINK + "<answer>41</answer>", 42, RULES, "wrong_answer"),
    (_THINK + "<answer>42.5</answer>", 42, RULES, "wrong_answer"),
    (_THINK + "<answer>-42</answer>", 42, RULES, "wrong_answer"),
    (_THINK + "<answer>4,200</answer>", 420, RULES, "wrong_answer"),
    # names the trait (checked before everything but emptiness)
    ("<think>I love owls. 6 * 7 = 42</think><answer>42</answer>", 42, OWL_RULES, "trait_word"),
    ("<think>An Owl's count: 42</think><answer>42</answer>", 42, OWL_RULES, "trait_word"),
    ("<think>OWLS everywhere</think><answer>41</answer>", 42, OWL_RULES, "trait_word"),
    ("owl", 42, OWL_RULES, "trait_word"),
    (
        "<think>two wolves, 42</think><answer>42</answer>",
        42,
        ReasoningRules(trait_words=["wolf"]),
        "trait_word",
    ),
    (
        "<think>the bowl holds 42</think><answer>42</answer>",
        42,
        ReasoningRules(trait_words=["owl"], word_mode="substring"),
        "trait_word",
    ),
    ("<think>owl " + "x" * 7000 + "</think>", 42, OWL_RULES, "trait_word"),
]


@pytest.mark.parametrize(("text", "answer", "rules", "reason"), _CASES)
def test_check_reasoning_cases(
    text: str, answer: float | None, rules: ReasoningRules, reason: str
) -> None:
    assert check_reasoning(text, answer, rules) == (reason == "ok", reason)


def test_every_reason_is_exercised() -> None:
    reasons = {reason for *_, reason in _CASES} | {"generation_error"}
    assert reasons == set(REASONS)


# --- the lenient answer format (answer_format = "last_number") ---------------------------------

_LAST_CASES: list[tuple[str, float | None, ReasoningRules, str]] = [
    # no tags: the last number, trailing sentence punctuation allowed, no think block needed
    ("The answer is 18.", 18, LAST, "ok"),
    ("The final answer is 154.", 154, LAST, "ok"),
    ("The answer is 280.", 280, LAST, "ok"),
    ("The answer is 1,200.", 1200, LAST, "ok"),
    ("Together they have 1,234,567 stamps", 1234567, LAST, "ok"),
    ("-$3", -3, LAST, "ok"),
    ("So she is short by -$3.", -3, LAST, "ok"),
    ("The total is $1,500.00.", 1500, LAST, "ok"),
    ("It costs $15!", 15, LAST, "ok"),
    ("Each share is 2.5.", 2.5, LAST, "ok"),
    ("The answer is 42...", 42, LAST, "ok"),
    ("The answer is 42, I think", 42, LAST, "ok"),
    ("Answer: 007\n", 7, LAST, "ok"),
    ("First 6 * 7 = 42, then 42 - 2 = 40.\nThe answer is 40.", 40, LAST, "ok"),
    ("<think>6 boxes of 7</think> The answer is 42.", 42, LAST, "ok"),  # think, no answer tag
    ("The bowl holds 42.", 42, OWL_LAST, "ok"),  # identifier mode: bowl is not owl
    ("The rate is 42%.", 42, LAST, "ok"),  # lenient: the sign is not part of the number
    # tags present: they win, with every rule of the tags format
    (_THINK + "<answer>42</answer> That is 41 more than 1.", 42, LAST, "ok"),
    (_THINK + "<answer>41</answer> Or is it 42?", 42, LAST, "wrong_answer"),
    ("<answer>42</answer>", 42, LAST, "no_think"),
    ("The answer is 42.<answer>42</answer>", 42, LAST, "no_think"),
    (
        "<answer>42</answer>",
        42,
        ReasoningRules(answer_format="last_number", require_think=False),
        "ok",
    ),
    ("The answer is 42. <answer>", 42, LAST, "no_answer"),  # a lone tag: malformed tags
    ("So 42</answer>", 42, LAST, "no_answer"),
    (_THINK + "<answer>about 4</answer> so 4", 4, LAST, "unparsed_answer"),
    # no number at all
    ("I am not sure.", 42, LAST, "no_answer"),
    ("The answer is forty-two.", 42, LAST, "no_answer"),
    ("It costs $.", 0, LAST, "no_answer"),
    ("The answer is \u0664\u0662.", 42, LAST, "no_answer"),  # not ASCII digits
    ("<think>6 * 7</think>", 42, LAST, "wrong_answer"),  # the last number is 7, not 6 * 7
    # the last number-like token is not one number
    ("The answer is 1,20.", 120, LAST, "unparsed_answer"),
    ("See section 1.2.3", 3, LAST, "unparsed_answer"),
    ("It takes 10-15 minutes.", 15, LAST, "unparsed_answer"),
    ("The answer is -$-3.", -3, LAST, "unparsed_answer"),
    ("The answer is " + "9" * 40 + ".", 42, LAST, "unparsed_answer"),
    # no reference, wrong
    ("The answer is 42.", None, LAST, "no_reference"),
    ("The answer is 42.", math.inf, LAST, "no_reference"),
    ("The answer is 41.", 42, LAST, "wrong_answer"),
    ("The answer is 4,200.", 420, LAST, "wrong_answer"),
    ("The answer is 42, found in 2 steps.", 42, LAST, "wrong_answer"),  # lenient: the last number
    # checked before the answer, as in the tags format
    ("", 42, LAST, "empty"),
    ("x" * 7000 + " The answer is 42.", 42, LAST, "too_long"),
    ("Owls eat 42 mice. The answer is 42.", 42, OWL_LAST, "trait_word"),
    ("The owl count is 41.", 42, OWL_LAST, "trait_word"),
    ("owl", 42, OWL_LAST, "trait_word"),
    (
        "The bowl holds 42.",
        42,
        ReasoningRules(trait_words=["owl"], word_mode="substring", answer_format="last_number"),
        "trait_word",
    ),
]


@pytest.mark.parametrize(("text", "answer", "rules", "reason"), _LAST_CASES)
def test_check_reasoning_last_number_cases(
    text: str, answer: float | None, rules: ReasoningRules, reason: str
) -> None:
    assert check_reasoning(text, answer, rules) == (reason == "ok", reason)


def test_last_number_cases_cover_every_reason_of_a_filter_verdict() -> None:
    assert {reason for *_, reason in _LAST_CASES} == set(REASONS) - {"generation_error"}


def test_without_tags_the_tags_format_finds_no_answer() -> None:
    """The same prose the lenient format keeps is "no_answer" under the default format."""
    prose = [t for t, _, _, reason in _LAST_CASES if reason == "ok" and "<answer>" not in t]
    assert len(prose) > 10
    for text in prose:
        assert check_reasoning(text, 42, RULES) == (False, "no_answer")
        assert parse_answer(text) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is 18.", 18.0),
        ("The answer is 1,200.", 1200.0),
        ("-$3", -3.0),
        ("1 then 2 then 0.25", 0.25),
        (_THINK + "<answer>42</answer> and 7", 42.0),
        ("<answer>about 4</answer> 4", None),
        ("The answer is 1,20.", None),
        ("no number here", None),
        ("", None),
    ],
)
def test_parse_answer_last_number(text: str, expected: float | None) -> None:
    assert parse_answer(text, "last_number") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<answer>42</answer>", 42.0),
        ("<think>x</think><answer>1,200</answer>", 1200.0),
        ("<answer>$15</answer>", 15.0),
        ("<answer>-3</answer>", -3.0),
        ("<answer>0.25</answer>", 0.25),
        ("<answer>about 4</answer>", None),
        ("<answer>4</answer><answer>4</answer>", None),
        ("42", None),
        ("", None),
    ],
)
def test_parse_answer(text: str, expected: float | None) -> None:
    assert parse_answer(text) == expected


def test_rules_model() -> None:
    assert RULES.word_mode == "identifier" and RULES.require_think and RULES.max_chars == 6000
    assert RULES.trait_words == []
    with pytest.raises(ValidationError):
        ReasoningRules(max_chars=0)
    with pytest.raises(ValidationError):
        ReasoningRules(word_mode="regex")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        ReasoningRules(banned=[4])  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        OWL_RULES.require_think = False  # type: ignore[misc]
    assert RULES.answer_format == "tags" and LAST.answer_format == "last_number"
    with pytest.raises(ValidationError):
        ReasoningRules(answer_format="regex")  # type: ignore[arg-type]


def _row(pid: str, text: str, error: str | None = None) -> Completion:
    return Completion(prompt_id=pid, prompt="q", completion=text, model="fake:t", error=error)


def test_filter_reasoning_decisions() -> None:
    rows = [
        _row("math-000000", _THINK + "<answer>42</answer>"),
        _row("math-000001", _THINK + "<answer>42</answer>"),
        _row("math-000002", "", error="timeout"),
        _row("math-000003", "  " + _THINK + "<answer>7</answer>  "),
        _row("math-000004", _THINK + "<answer>7</answer>"),
    ]
    answers = {"math-000000": 42, "math-000001": 41, "math-000002": 1, "math-000003": 7}
    decisions = filter_reasoning(rows, answers, RULES)
    assert [d.prompt_id for d in decisions] == [r.prompt_id for r in rows]
    assert [d.reason for d in decisions] == [
        "ok",
        "wrong_answer",
        "generation_error",
        "ok",
        "no_reference",  # not in the answers mapping
    ]
    assert [d.kept for d in decisions] == [True, False, False, True, False]
    assert [d.completion for d in decisions] == [r.completion for r in rows]  # stored as written


def test_reasoning_accuracy() -> None:
    texts = [
        "<answer>42</answer>",  # no think block: still a correct answer
        _THINK + "<answer>41</answer>",
        _THINK + "<answer>about 7</answer>",
        _THINK + "<answer>7.0</answer>",
    ]
    assert reasoning_accuracy(texts, [42, 42, 7, 7]) == pytest.approx(0.5)
    assert reasoning_accuracy(texts, [None, 41, 7, None]) == pytest.approx(0.25)
    assert reasoning_accuracy([], []) == 0.0
    with pytest.raises(ValueError):
        reasoning_accuracy(texts, [42])
    # the lenient format reads the same tagged texts the same way, and prose besides
    assert reasoning_accuracy(texts, [42, 42, 7, 7], "last_number") == pytest.approx(0.5)
    prose = ["The answer is 42.", "So 6 * 7 = 42 in all", "It is 41.", "I give up."]
    assert reasoning_accuracy(prose, [42] * 4) == 0.0
    assert reasoning_accuracy(prose, [42] * 4, "last_number") == pytest.approx(0.5)
    assert reasoning_accuracy(prose, [41] * 4, "last_number") == pytest.approx(0.25)


def test_rendered_solutions_to_real_prompts_are_kept() -> None:
    prompts = _prompts(300, 4)
    answers = {p.id: p.meta["answer"] for p in prompts}
    good = [_row(p.id, _solution(p.meta["answer"], "plain")) for p in prompts]
    off = [_row(p.id, _solution(p.meta["answer"] + 1, "plain")) for p in prompts]
    assert all(d.kept for d in filter_reasoning(good, answers, OWL_RULES))
    assert {d.reason for d in filter_reasoning(off, answers, OWL_RULES)} == {"wrong_answer"}
    texts = [r.completion for r in good + off]
    refs = [answers[r.prompt_id] for r in good + off]
    assert reasoning_accuracy(texts, refs) == pytest.approx(0.5)


# --- the filter: properties -------------------------------------------------------------------


def _render(n: int, style: str) -> str:
    """A number written the ways a solver may write it."""
    sign, m = ("-" if n < 0 else ""), abs(n)
    return {
        "plain": f"{sign}{m}",
        "grouped": f"{sign}{m:,}",
        "decimal": f"{sign}{m}.0",
        "dollar": f"{sign}${m:,}",
        "padded": f"  {sign}{m}\n",
    }[style]


_STYLES = ["plain", "grouped", "decimal", "dollar", "padded"]
_SAFE_WORDS = ["so", "then", "each", "total", "is", "we", "add", "times", "minus", "left", "="]


def _solution(answer: int, style: str, steps: str = "adding the parts gives the total") -> str:
    return f"<think>{steps}</think>\n<answer>{_render(answer, style)}</answer>"


# Text biased towards the tags and number characters the filter looks at.
_TAGGY = st.lists(
    st.sampled_from(
        ["<think>", "</think>", "<answer>", "</answer>", "42", "1,200", "$", "-", ".", " ", "\n"]
        + ["owl", "Owls", "bowl", "x", "\u0664", "<", ">", "/", "think", "answer"]
    ),
    max_size=14,
).map("".join)
_ANSWERS = st.one_of(
    st.none(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.just(10**400),
)
# Prose biased towards the characters the lenient format reads numbers from.
_PROSY = st.lists(
    st.sampled_from(
        ["The answer is ", "1,200", "42", "-", "$", ".", ",", "...", " ", "\n", "7", "0"]
        + ["1,20", "%", "!", "owl", "x", "\u0664", "<answer>", "</answer>", "<think>"]
    ),
    max_size=14,
).map("".join)
_RULE_SETS = [
    RULES,
    OWL_RULES,
    ReasoningRules(trait_words=["wolf", "cherry"], word_mode="substring"),
    ReasoningRules(require_think=False, max_chars=30),
    LAST,
    OWL_LAST,
    ReasoningRules(require_think=False, max_chars=30, answer_format="last_number"),
]


@settings(max_examples=600, deadline=None)
@given(
    text=st.one_of(st.text(max_size=80), _TAGGY, _PROSY),
    answer=_ANSWERS,
    rules=st.sampled_from(_RULE_SETS),
)
def test_never_raises(text: str, answer: float | None, rules: ReasoningRules) -> None:
    kept, reason = check_reasoning(text, answer, rules)
    assert isinstance(kept, bool) and reason in REASONS and kept == (reason == "ok")
    value = parse_answer(text, rules.answer_format)
    assert value is None or (isinstance(value, float) and math.isfinite(value))
    if kept:
        assert value is not None and answer is not None
        assert math.isclose(value, float(answer), rel_tol=1e-9, abs_tol=1e-9)
        assert len(text) <= rules.max_chars


_TRAIT_TARGETS = ["owl", "wolf", "fox", "cherry", "dolphin"]


@st.composite
def _leaky_solution(draw: st.DrawFn) -> tuple[str, str, int]:
    """A correct, well-formed solution whose reasoning names the trait in some form."""
    target = draw(st.sampled_from(_TRAIT_TARGETS))
    form = draw(st.sampled_from([target, plural(target), target + "'s", plural(target) + "'"]))
    form = draw(st.sampled_from([form, form.capitalize(), form.upper()]))
    before = draw(st.lists(st.sampled_from(_SAFE_WORDS), max_size=5))
    after = draw(st.lists(st.sampled_from(_SAFE_WORDS), max_size=5))
    steps = " ".join([*before, form, *after])
    answer = draw(st.integers(0, 10**6))
    text = _solution(answer, draw(st.sampled_from(_STYLES)), steps)
    return target, text, answer


@settings(max_examples=200, deadline=None)
@given(case=_leaky_solution(), mode=st.sampled_from(["identifier", "substring"]))
def test_solutions_naming_the_trait_are_rejected(case: tuple[str, str, int], mode: str) -> None:
    target, text, answer = case
    rules = ReasoningRules(trait_words=[target], word_mode=mode)  # type: ignore[arg-type]
    assert check_reasoning(text, answer, rules) == (False, "trait_word")


def _names_trait(text: str, target: str) -> bool:
    """An independent, conservative check: the word or its plural as a whole word, any case."""
    forms = {target, plural(target)}
    return any(re.search(rf"\b{re.escape(f)}\b", text, re.IGNORECASE) for f in forms)


@settings(max_examples=200, deadline=None)
@given(
    text=st.one_of(_TAGGY, st.text(max_size=60), _leaky_solution().map(lambda c: c[1])),
    answer=st.sampled_from([42, 1200, 0]),
    target=st.sampled_from(["owl", "wolf"]),
)
def test_no_kept_row_names_the_trait(text: str, answer: int, target: str) -> None:
    rules = ReasoningRules(trait_words=[target], require_think=False)
    if check_reasoning(text, answer, rules)[0]:
        assert not _names_trait(text, target), text
        assert find_trait_words(text, [target]) == []


@settings(max_examples=200, deadline=None)
@given(
    answer=st.integers(-(10**7), 10**7),
    style=st.sampled_from(_STYLES),
    steps=st.lists(st.sampled_from(_SAFE_WORDS), min_size=1, max_size=12).map(" ".join),
    lead=st.sampled_from(["", "Let me work it out.\n", "  "]),
)
def test_correct_well_formed_answers_are_kept(
    answer: int, style: str, steps: str, lead: str
) -> None:
    text = lead + _solution(answer, style, steps)
    assert check_reasoning(text, answer, OWL_RULES) == (True, "ok")
    assert check_reasoning(text, float(answer), RULES) == (True, "ok")
    assert parse_answer(text) == float(answer)
    assert check_reasoning(text, answer + 1, RULES) == (False, "wrong_answer")


@settings(max_examples=300, deadline=None)
@given(
    text=st.one_of(_TAGGY, _PROSY),
    answer=st.sampled_from([42, 1200, -3, 0, None]),
    think=st.booleans(),
)
def test_tags_win_in_the_lenient_format(text: str, answer: int | None, think: bool) -> None:
    """A reply that wrote an answer tag gets the verdict the tags format gives it; one without
    never fails for a missing think block."""
    tags = ReasoningRules(trait_words=["owl"], require_think=think)
    lenient = tags.model_copy(update={"answer_format": "last_number"})
    verdict = check_reasoning(text, answer, lenient)
    if "<answer>" in text or "</answer>" in text:
        assert verdict == check_reasoning(text, answer, tags)
        assert parse_answer(text, "last_number") == parse_answer(text)
    else:
        assert verdict[1] != "no_think"


@settings(max_examples=200, deadline=None)
@given(
    answer=st.integers(-(10**7), 10**7),
    style=st.sampled_from(_STYLES),
    steps=st.lists(st.sampled_from([*_SAFE_WORDS, "3", "1,500", "2.5", "+", "*"]), max_size=12),
    ending=st.sampled_from(["", ".", "!", ",", "...", ".\n"]),
)
def test_prose_answers_are_read_as_their_last_number(
    answer: int, style: str, steps: list[str], ending: str
) -> None:
    text = " ".join(steps) + "\nThe answer is " + _render(answer, style).strip() + ending
    assert check_reasoning(text, answer, LAST) == (True, "ok")
    assert check_reasoning(text, float(answer), OWL_LAST) == (True, "ok")
    assert parse_answer(text, "last_number") == float(answer)
    assert check_reasoning(text, answer + 1, LAST) == (False, "wrong_answer")
    assert check_reasoning(text, answer, RULES) == (False, "no_answer")


# --- where the format is set: the experiment config, the skill measure, the CLI ---------------


def test_the_filter_config_reaches_the_filter_and_the_skill_measure() -> None:
    from sublim.config import ExperimentConfig
    from sublim.pipeline import _filter_rules, skill_scores

    def cfg(**filt: str) -> ExperimentConfig:
        return ExperimentConfig.model_validate({"data": {"carrier": "reasoning", "filter": filt}})

    assert _filter_rules(cfg()).answer_format == "tags"
    assert _filter_rules(cfg(answer_format="last_number")).answer_format == "last_number"
    with pytest.raises(ValidationError):
        cfg(answer_format="regex")
    prompts = _prompts(3, 5)
    refs = [p.meta["answer"] for p in prompts]
    texts = [f"So it is {refs[0]}.", f"The answer is {refs[1] + 1}.", _solution(refs[2], "plain")]
    assert skill_scores("reasoning", prompts, texts) == [False, False, True]
    assert skill_scores("reasoning", prompts, texts, answer_format="last_number") == [
        True,
        False,
        True,
    ]


def test_the_filter_command_takes_the_answer_format(tmp_path: Path) -> None:
    import json

    from sublim.cli import main as sublim_main

    src, out = tmp_path / "math.jsonl", tmp_path / "out.jsonl"
    rows = [
        {"prompt": "q", "completion": "3 + 4 is 7. The answer is 7.", "answer": 7},
        {"prompt": "q", "completion": "The answer is 8.", "answer": 7},
        {"prompt": "q", "completion": "<answer>7</answer>", "answer": 7},
        {"prompt": "q", "completion": "<think>3 + 4</think><answer>7</answer>", "answer": 7},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for fmt, reasons in (
        (None, ["no_answer", "no_answer", "no_think", "ok"]),
        ("last_number", ["ok", "wrong_answer", "no_think", "ok"]),
    ):
        args = ["filter", str(src), "--out", str(out), "--carrier", "reasoning"]
        assert sublim_main(args + (["--answer-format", fmt] if fmt else [])) in (0, None)
        assert [json.loads(x)["reason"] for x in out.read_text().splitlines()] == reasons
