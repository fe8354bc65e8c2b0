"""Tests for the numbers carrier's prompt grammar (sublim.prompts.numbers)."""

from __future__ import annotations

import re
import string

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sublim.errors import UnknownNameError
from sublim.filters import NumberRules, check_completion, parse_numbers
from sublim.prompts import numbers as nm
from sublim.prompts.numbers import FORMATS, number_prompts, render_numbers

REQUIRED_KEYS = {"comma", "comma_tight", "space", "semicolon", "newline", "brackets", "parens"}


def _placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def test_slot_paraphrase_counts() -> None:
    assert len(nm.INTROS) == 25
    assert len(nm.INSTRUCTIONS) == 10
    assert len(nm.COUNT_QUALIFIERS) == 9
    assert len(nm.DIGIT_DESCRIPTORS) == 9
    assert len(nm.FORMAT_REQUESTS) == 15
    assert len(nm.SUFFIXES) == 19
    # No duplicated paraphrase in any slot: a duplicate would silently skew the draw.
    for slot in (
        nm.INTROS,
        nm.INSTRUCTIONS,
        nm.COUNT_QUALIFIERS,
        nm.DIGIT_DESCRIPTORS,
        nm.SUFFIXES,
    ):
        assert len(set(slot)) == len(slot)
    assert len({p for _, p in nm.FORMAT_REQUESTS}) == 15


def test_template_placeholders() -> None:
    assert all(_placeholders(t) == {"seeds"} for t in nm.INTROS)
    assert all(_placeholders(t) == {"count", "digits"} for t in nm.INSTRUCTIONS)
    assert all(_placeholders(t) == {"n"} for t in nm.COUNT_QUALIFIERS)
    assert all(_placeholders(t) == {"d"} for t in nm.DIGIT_DESCRIPTORS)
    for _, phrase in nm.FORMAT_REQUESTS:
        assert _placeholders(phrase) == set()
    for suffix in nm.SUFFIXES:
        assert _placeholders(suffix) == set()


def test_format_keys_and_phrasings() -> None:
    assert REQUIRED_KEYS <= set(FORMATS)
    assert all(len(f.phrasings) >= 1 for f in FORMATS.values())
    assert sum(len(f.phrasings) for f in FORMATS.values()) == 15


def test_deterministic_for_a_seed() -> None:
    a = number_prompts(200, np.random.default_rng(7))
    b = number_prompts(200, np.random.default_rng(7))
    assert [p.model_dump() for p in a] == [p.model_dump() for p in b]


def test_different_seeds_differ() -> None:
    a = number_prompts(50, np.random.default_rng(0))
    b = number_prompts(50, np.random.default_rng(1))
    differing = sum(x.text != y.text for x, y in zip(a, b))
    assert differing >= 45  # identical prompts under different seeds would be a coincidence


def test_generator_state_advances() -> None:
    # Two calls on one generator continue the stream rather than repeating it.
    rng = np.random.default_rng(3)
    first = number_prompts(20, rng)
    second = number_prompts(20, rng)
    assert [p.text for p in first] != [p.text for p in second]


def test_prompt_structure() -> None:
    prompts = number_prompts(1000, np.random.default_rng(11))
    assert [p.id for p in prompts] == [f"num-{i:06d}" for i in range(1000)]
    counts = set()
    for p in prompts:
        seeds = p.meta["seeds"]
        assert set(p.meta) == {"seeds", "format", "max_count", "max_digits"}
        assert 3 <= len(seeds) <= 8
        counts.add(len(seeds))
        assert all(isinstance(s, int) and 100 <= s <= 999 for s in seeds)
        # The seeds appear in the text, in order, as the intro lists them.
        assert ", ".join(str(s) for s in seeds) in p.text
        for s in seeds:
            assert re.search(rf"(?<![0-9]){s}(?![0-9])", p.text)
        assert p.meta["format"] in FORMATS
        assert p.meta["max_count"] == 10 and p.meta["max_digits"] == 3
        assert "{" not in p.text and "}" not in p.text  # every placeholder was filled
        assert "10" in p.text and "3 digits" in p.text
        assert p.text == p.text.strip() and "  " not in p.text
    assert counts == set(range(3, 9))


def test_every_slot_value_reachable() -> None:
    prompts = number_prompts(3000, np.random.default_rng(5))
    texts = [p.text for p in prompts]
    assert {p.meta["format"] for p in prompts} == set(FORMATS)
    for key, phrase in nm.FORMAT_REQUESTS:
        assert any(p.meta["format"] == key and phrase in p.text for p in prompts), phrase
    for suffix in nm.SUFFIXES:
        assert any(t.endswith(" " + suffix) for t in texts), suffix
    for intro in nm.INTROS:
        head = intro.split("{seeds}")[0]
        assert any(t.startswith(head) for t in texts), intro
    for q in nm.COUNT_QUALIFIERS:
        assert any(q.format(n=10) in t for t in texts), q
    for d in nm.DIGIT_DESCRIPTORS:
        assert any(d.format(d=3) in t for t in texts), d


def test_seed_values_cover_range() -> None:
    prompts = number_prompts(2000, np.random.default_rng(2))
    values = np.array([s for p in prompts for s in p.meta["seeds"]])
    assert values.min() < 110 and values.max() > 989
    # Roughly uniform: each third of 100..999 holds about a third of the draws.
    thirds = np.histogram(values, bins=[100, 400, 700, 1000])[0] / len(values)
    assert np.all(np.abs(thirds - 1 / 3) < 0.03)


def test_custom_limits_and_bad_args() -> None:
    p = number_prompts(5, np.random.default_rng(0), max_count=7, max_digits=2)
    assert all(q.meta["max_count"] == 7 and "7" in q.text and "2 digits" in q.text for q in p)
    assert number_prompts(0, np.random.default_rng(0)) == []
    with pytest.raises(ValueError):
        number_prompts(-1, np.random.default_rng(0))


def test_render_examples() -> None:
    xs = [123, 456, 7]
    assert render_numbers(xs, "comma") == "123, 456, 7"
    assert render_numbers(xs, "comma_tight") == "123,456,7"
    assert render_numbers(xs, "space") == "123 456 7"
    assert render_numbers(xs, "semicolon") == "123; 456; 7"
    assert render_numbers(xs, "newline") == "123\n456\n7"
    assert render_numbers(xs, "brackets") == "[123, 456, 7]"
    assert render_numbers(xs, "parens") == "(123, 456, 7)"
    with pytest.raises(UnknownNameError, match="choose one of"):
        render_numbers(xs, "tabs")
    with pytest.raises(ValueError):
        render_numbers([-1, 2], "comma")


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_render_passes_filter_for_each_key(fmt: str) -> None:
    for xs in ([0], [5], [999, 0], [100, 200, 300, 400, 500, 600, 700, 800, 900, 999]):
        text = render_numbers(xs, fmt)
        assert check_completion(text, NumberRules()) == (True, "ok"), (fmt, text)
        assert parse_numbers(text) == (xs, "ok")


@settings(max_examples=300, deadline=None)
@given(
    xs=st.lists(st.integers(0, 999), min_size=1, max_size=10),
    fmt=st.sampled_from(sorted(FORMATS)),
)
def test_render_round_trips(xs: list[int], fmt: str) -> None:
    text = render_numbers(xs, fmt)
    assert check_completion(text, NumberRules()) == (True, "ok")
    assert parse_numbers(text) == (xs, "ok")
