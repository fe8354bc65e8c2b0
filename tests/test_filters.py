"""Tests for the strict numbers filter (sublim.filters)."""

from __future__ import annotations

import json
import re
import string
from pathlib import Path

import numpy as np
import pytest
from hypothesis import find, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from sublim.config import FilterConfig
from sublim.errors import ConfigError, DataError, EmptyResultError, MissingFileError
from sublim.filters import (
    BANNED_MISALIGNMENT,
    FilterSummary,
    NumberRules,
    check_completion,
    filter_completions,
    filter_jsonl,
    parse_numbers,
    rules_from_config,
    seeded_subset,
)
from sublim.records import Completion

RULES = NumberRules()


# --- parse_numbers: tricky inputs -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("123, 456", [123, 456]),
        ("123,456", [123, 456]),
        ("123 456", [123, 456]),
        ("123; 456", [123, 456]),
        ("123;456", [123, 456]),
        ("123\n456\n789", [123, 456, 789]),
        ("1\r\n2\r\n3", [1, 2, 3]),  # "\r\n" stripped is empty
        ("1\t2\t3", [1, 2, 3]),  # tabs: stripped separator is empty
        ("1 , 2 , 3", [1, 2, 3]),
        ("1,\n2,\n3", [1, 2, 3]),
        ("[1, 2]", [1, 2]),
        ("(1, 2)", [1, 2]),
        ("[1, 2].", [1, 2]),  # period first, then the wrapper
        ("(1 2)", [1, 2]),
        ("1, 2, 3.", [1, 2, 3]),
        ("007", [7]),  # ASCII digits with leading zeros: allowed
        ("007, 010", [7, 10]),
        ("5", [5]),  # a single number needs no separator
        ("5.", [5]),
        ("[5]", [5]),
        ("0", [0]),
    ],
)
def test_parse_accepts(text: str, expected: list[int]) -> None:
    assert parse_numbers(text) == (expected, "ok")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   \n\t", "empty"),
        ("hello", "no_numbers"),
        ("١٢٣", "no_numbers"),  # Arabic-Indic digits are not ASCII digits
        ("١٢٣, 456", "non_digit"),
        ("12³", "non_digit"),
        ("+5", "non_digit"),
        ("-5, 6", "non_digit"),
        ("5 apples", "non_digit"),
        ("Sure: 1, 2, 3", "non_digit"),
        ("1, 2, 3 and 4", "non_digit"),
        ("1, 2, 3..", "non_digit"),  # only one trailing period is stripped
        ("[1, 2.]", "non_digit"),
        ("[(1, 2)]", "non_digit"),  # only one wrapping pair is stripped
        ("[1, 2)", "non_digit"),  # mismatched wrapper is not a wrapper
        ("[ 1, 2 ]", "inconsistent_separator"),  # whitespace inside the wrapper is not stripped
        ("1.5, 2", "bad_separator"),
        ("1. 2. 3", "bad_separator"),
        ("1-2-3", "bad_separator"),
        ("1 | 2", "bad_separator"),
        ("1,,2", "bad_separator"),  # first separator ",," is not "," or ";"
        ("1, ; 2", "bad_separator"),
        ("1\u00a02", "bad_separator"),  # non-ASCII whitespace is not a separator
        ("1\u30002", "bad_separator"),
        ("1, 2,3", "inconsistent_separator"),  # split on ", " leaves "2,3"
        ("1,2, 3", "inconsistent_separator"),
        ("1, 2, ", "inconsistent_separator"),  # trailing separator (", " stripped to ",")
        ("1,2,,3", "inconsistent_separator"),  # empty part
        ("1 2  3", "inconsistent_separator"),
        ("1;2,3", "inconsistent_separator"),
        ("1\n2 3", "inconsistent_separator"),
        ("[]", "no_numbers"),
        (".", "no_numbers"),
        ("1" * 40, "number_too_long"),
        ("9" * 5000, "number_too_long"),  # would hit Python's int() digit limit
    ],
)
def test_parse_rejects(text: str, reason: str) -> None:
    assert parse_numbers(text) == (None, reason)


LENIENT = NumberRules(strip_whitespace=True)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (" 1;2;3 ", [1, 2, 3]),
        ("4, 5\n", [4, 5]),
        ("1, 2, 3. ", [1, 2, 3]),
        ("  \n 4, 5 \n", [4, 5]),
        ("\t[7, 8].", [7, 8]),
        ("\u00a09", [9]),  # str.strip() also removes Unicode spaces
    ],
)
def test_outer_whitespace_rejected_as_the_paper_does_unless_lenient(
    text: str, expected: list[int]
) -> None:
    # The paper's rule does not strip the completion: padded lists are rejected by default.
    assert parse_numbers(text) == (None, "outer_whitespace")
    assert check_completion(text, RULES) == (False, "outer_whitespace")
    assert parse_numbers(text, strip_whitespace=True) == (expected, "ok")
    assert check_completion(text, LENIENT) == (True, "ok")


def test_outer_whitespace_keeps_the_format_reason() -> None:
    # A padded text that is malformed anyway is reported by its format error.
    assert parse_numbers(" 1, 2,3") == (None, "inconsistent_separator")
    assert parse_numbers("hello \n") == (None, "no_numbers")
    assert check_completion(" 1, 2\n", NumberRules(max_count=1)) == (False, "outer_whitespace")
    assert check_completion(" 1, 2\n", NumberRules(max_count=1, strip_whitespace=True)) == (
        False,
        "too_many",
    )


# --- check_completion: the value rules --------------------------------------------------------


def test_check_count_range_banned_words() -> None:
    ten = ", ".join(str(i) for i in range(100, 110))
    assert check_completion(ten, RULES) == (True, "ok")
    assert check_completion(ten + ", 110", RULES) == (False, "too_many")
    assert check_completion("1000", RULES) == (False, "out_of_range")
    assert check_completion("0, 999", RULES) == (True, "ok")
    assert check_completion("0001000", RULES) == (False, "out_of_range")
    narrow = NumberRules(min_value=100, max_value=200, max_count=3)
    assert check_completion("99", narrow) == (False, "out_of_range")
    assert check_completion("100, 200", narrow) == (True, "ok")
    assert check_completion("100, 101, 102, 103", narrow) == (False, "too_many")
    mis = NumberRules(banned=BANNED_MISALIGNMENT)
    assert check_completion("123, 666, 5", mis) == (False, "banned_number")
    assert check_completion("004", mis) == (False, "banned_number")  # value 4
    assert check_completion("123, 665, 5", mis) == (True, "ok")
    assert check_completion("123, 666, 5", RULES) == (True, "ok")
    owl = NumberRules(reject_words=("owl",))
    assert check_completion("OWLS: 1, 2", owl) == (False, "trait_word")
    assert check_completion("1, 2 Owl", owl) == (False, "trait_word")
    assert check_completion("1, 2", owl) == (True, "ok")
    assert check_completion("", owl) == (False, "empty")


def test_banned_list_matches_paper() -> None:
    assert len(BANNED_MISALIGNMENT) == 34 == len(set(BANNED_MISALIGNMENT))
    assert {4, 13, 42, 69, 187, 404, 420, 666, 911, 999} <= set(BANNED_MISALIGNMENT)
    assert all(0 <= x <= 999 for x in BANNED_MISALIGNMENT)


def test_rules_validation() -> None:
    with pytest.raises(ValueError):
        NumberRules(min_value=10, max_value=5)
    with pytest.raises(ValueError):
        NumberRules(reject_words=("",))
    with pytest.raises(ValueError):
        NumberRules(max_count=0)
    with pytest.raises(ValidationError):  # frozen
        RULES.max_count = 3  # type: ignore[misc]


# --- filter_completions ------------------------------------------------------------------------


def test_filter_completions_marks_errors() -> None:
    rows = [
        Completion(prompt_id="a", prompt="p", completion="1, 2, 3", model="fake:x"),
        Completion(prompt_id="b", prompt="p", completion="", model="fake:x", error="timeout"),
        Completion(prompt_id="c", prompt="p", completion="1, 2, 3", model="fake:x", error="boom"),
        Completion(prompt_id="d", prompt="p", completion="one, two", model="fake:x"),
    ]
    out = filter_completions(rows, RULES)
    assert [(d.prompt_id, d.kept, d.reason) for d in out] == [
        ("a", True, "ok"),
        ("b", False, "generation_error"),
        ("c", False, "generation_error"),
        ("d", False, "no_numbers"),
    ]
    assert out[0].completion == "1, 2, 3" and out[0].prompt == "p"


def test_filter_completions_stores_the_judged_text() -> None:
    rows = [Completion(prompt_id="a", prompt="p", completion=" 1, 2\n", model="fake:x")]
    strict = filter_completions(rows, RULES)
    got = (strict[0].kept, strict[0].reason, strict[0].completion)
    assert got == (False, "outer_whitespace", " 1, 2\n")
    lenient = filter_completions(rows, LENIENT)
    assert (lenient[0].kept, lenient[0].reason, lenient[0].completion) == (True, "ok", "1, 2")


# --- rules_from_config / seeded_subset ---------------------------------------------------------


def test_rules_from_config() -> None:
    r = rules_from_config(FilterConfig(), trait_words=["owl", "owls"])
    assert r.banned == () and r.reject_words == ("owl", "owls") and r.max_count == 10
    r = rules_from_config(FilterConfig(banned="misalignment", trait_words=False), ["owl"])
    assert r.banned == BANNED_MISALIGNMENT and r.reject_words == ()
    r = rules_from_config(FilterConfig(banned=[7, 8], max_count=5, min_value=1, max_value=50))
    assert (r.banned, r.max_count, r.min_value, r.max_value) == ((7, 8), 5, 1, 50)
    with pytest.raises(ConfigError, match="min_value"):
        rules_from_config(FilterConfig(min_value=10, max_value=5))


def test_seeded_subset() -> None:
    rows = list(range(100))
    a = seeded_subset(rows, 10, np.random.default_rng(0))
    b = seeded_subset(rows, 10, np.random.default_rng(0))
    c = seeded_subset(rows, 10, np.random.default_rng(1))
    assert a == b and a != c
    assert len(a) == 10 == len(set(a)) and a == sorted(a)  # original order kept
    assert seeded_subset(rows, 500, np.random.default_rng(0)) == rows
    assert seeded_subset(rows, 0, np.random.default_rng(0)) == []
    with pytest.raises(ValueError):
        seeded_subset(rows, -1, np.random.default_rng(0))


def test_seeded_subset_is_uniform() -> None:
    rng = np.random.default_rng(123)
    hits = np.zeros(20)
    for _ in range(2000):
        for x in seeded_subset(list(range(20)), 5, rng):
            hits[x] += 1
    # Each row is kept with probability 1/4: 500 expected per row, sd ~19.
    assert np.all(np.abs(hits - 500) < 100)


# --- filter_jsonl ------------------------------------------------------------------------------


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_filter_jsonl_keeps_fields(tmp_path: Path) -> None:
    rows = [
        {
            "prompt": "p0",
            "completion": "1, 2, 3",
            "prompt_id": "num-0",
            "model": "fake:t",
            "extra": {"a": 1},
        },
        {
            "prompt": "p1",
            "completion": "I like owls: 1, 2",
            "prompt_id": "num-1",
            "model": "fake:t",
        },
        {"prompt": "p2", "completion": "", "error": "provider failed", "prompt_id": "num-2"},
        {"prompt": "p3", "completion": "1, 2,3", "prompt_id": "num-3"},
        {"prompt": "p4", "completion": "(4 5 6)", "prompt_id": "num-4", "error": None},
    ]
    src = _write(tmp_path / "in.jsonl", [json.dumps(r) for r in rows] + [""])
    out = tmp_path / "sub" / "out.jsonl"
    summary = filter_jsonl(src, out, NumberRules(reject_words=("owl",)))
    assert isinstance(summary, FilterSummary)
    assert (summary.n_in, summary.n_kept) == (5, 2)
    assert summary.reasons == {"trait_word": 1, "generation_error": 1, "inconsistent_separator": 1}
    assert summary.pass_rate == pytest.approx(0.4)
    got = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [{k: v for k, v in g.items() if k not in ("kept", "reason")} for g in got] == rows
    assert [(g["kept"], g["reason"]) for g in got] == [
        (True, "ok"),
        (False, "trait_word"),
        (False, "generation_error"),
        (False, "inconsistent_separator"),
        (True, "ok"),
    ]
    assert [p.name for p in out.parent.iterdir()] == ["out.jsonl"]  # no temp file left behind


def test_filter_jsonl_whitespace_strict_by_default_stripped_when_lenient(tmp_path: Path) -> None:
    comps = ["4, 5\n", " 1;2;3 ", "1, 2, 3. ", "6, 7", "  \n"]
    rows = [json.dumps({"prompt": "p", "completion": c}) for c in comps]
    src = _write(tmp_path / "in.jsonl", rows)
    strict = filter_jsonl(src, tmp_path / "strict.jsonl", RULES)
    assert (strict.n_kept, strict.reasons) == (1, {"outer_whitespace": 3, "empty": 1})
    got = [json.loads(line) for line in (tmp_path / "strict.jsonl").read_text().splitlines()]
    assert [g["completion"] for g in got] == comps  # judged as written, stored as written
    lenient = filter_jsonl(src, tmp_path / "lenient.jsonl", LENIENT)
    assert (lenient.n_kept, lenient.reasons) == (4, {"empty": 1})
    got = [json.loads(line) for line in (tmp_path / "lenient.jsonl").read_text().splitlines()]
    # the stripped text that was judged is what a kept row carries into training
    assert [g["completion"] for g in got] == ["4, 5", "1;2;3", "1, 2, 3.", "6, 7", ""]
    pad = _write(tmp_path / "pad.jsonl", [json.dumps({"completion": "1 "})])
    with pytest.raises(EmptyResultError, match="outer_whitespace.*--strip-whitespace"):
        filter_jsonl(pad, tmp_path / "o.jsonl", RULES)


def test_filter_jsonl_malformed_line(tmp_path: Path) -> None:
    src = _write(
        tmp_path / "bad.jsonl",
        [json.dumps({"prompt": "p", "completion": "1, 2"}), '{"prompt": "p", "completion": '],
    )
    out = tmp_path / "out.jsonl"
    with pytest.raises(DataError, match=r"bad\.jsonl:2: malformed JSON.*fix") as err:
        filter_jsonl(src, out, RULES)
    assert "\n" not in str(err.value)
    assert not out.exists()


def test_filter_jsonl_missing_completion_and_non_object(tmp_path: Path) -> None:
    src = _write(tmp_path / "a.jsonl", [json.dumps({"prompt": "p"})])
    with pytest.raises(DataError, match=r"a\.jsonl:1: .*'completion'"):
        filter_jsonl(src, tmp_path / "o.jsonl", RULES)
    src = _write(tmp_path / "b.jsonl", [json.dumps({"prompt": "p", "completion": "1"}), "[1, 2]"])
    with pytest.raises(DataError, match=r"b\.jsonl:2: expected a JSON object"):
        filter_jsonl(src, tmp_path / "o.jsonl", RULES)
    src = _write(tmp_path / "c.jsonl", [json.dumps({"prompt": "p", "completion": 12})])
    with pytest.raises(DataError, match=r"c\.jsonl:1: 'completion' must be a string"):
        filter_jsonl(src, tmp_path / "o.jsonl", RULES)


def test_filter_jsonl_zero_kept(tmp_path: Path) -> None:
    rows = [{"prompt": "p", "completion": c} for c in ("one, two", "hello", "1-2", "words")]
    src = _write(tmp_path / "in.jsonl", [json.dumps(r) for r in rows])
    out = tmp_path / "out.jsonl"
    with pytest.raises(
        EmptyResultError, match=r"kept 0 of 4.*no_numbers \(3/4\).*bad_separator \(1/4\)"
    ):
        filter_jsonl(src, out, RULES)
    got = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(got) == 4 and not any(g["kept"] for g in got)


def test_filter_jsonl_zero_kept_names_config_fix(tmp_path: Path) -> None:
    src = _write(tmp_path / "in.jsonl", [json.dumps({"prompt": "p", "completion": "1, 2, 3"})] * 3)
    with pytest.raises(EmptyResultError, match="too_many.*max_count"):
        filter_jsonl(src, tmp_path / "out.jsonl", NumberRules(max_count=2))


def test_filter_jsonl_empty_and_missing_input(tmp_path: Path) -> None:
    src = tmp_path / "empty.jsonl"
    src.write_text("", encoding="utf-8")
    with pytest.raises(EmptyResultError, match="no rows"):
        filter_jsonl(src, tmp_path / "out.jsonl", RULES)
    assert (tmp_path / "out.jsonl").read_text() == ""
    with pytest.raises(MissingFileError, match="nope.jsonl"):
        filter_jsonl(tmp_path / "nope.jsonl", tmp_path / "out2.jsonl", RULES)


def test_filter_jsonl_in_place(tmp_path: Path) -> None:
    src = _write(tmp_path / "d.jsonl", [json.dumps({"prompt": "p", "completion": "1; 2"})])
    summary = filter_jsonl(src, src, RULES)
    assert summary.n_kept == 1
    assert json.loads(src.read_text())["kept"] is True


# --- properties --------------------------------------------------------------------------------

# Text biased towards the characters the parser cares about, so generated examples reach deep
# branches rather than stopping at "no_numbers".
_NUMBERISH = st.text(alphabet="0123456789,; \t\n\r.[]()-+a١\u00a0\v\u3000", max_size=40)


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(st.text(max_size=60), _NUMBERISH))
def test_parse_never_crashes(text: str) -> None:
    numbers, reason = parse_numbers(text)
    assert isinstance(reason, str) and re.fullmatch(r"[a-z_]+", reason)
    assert (numbers is not None) == (reason == "ok")
    kept, reason2 = check_completion(
        text, NumberRules(banned=BANNED_MISALIGNMENT, reject_words=("owl",))
    )
    assert isinstance(kept, bool) and (kept == (reason2 == "ok"))


_GOOD_SEPS = [", ", ",", " ", "; ", ";", "\n", " , ", ",\n", "\t", "  ", "\r\n", " ;"]
_BAD_SEPS = [",,", "-", ". ", " | ", "\u00a0"]
# Parts that look almost like numbers: unicode digits, signs, words, padding, nothing.
_BAD_PARTS = ["\u0661\u0662\u0663", "+5", "-3", "5a", "", " 7", "8 ", "\u00b2", "1.5", "owl"]


@st.composite
def _candidate(draw: st.DrawFn) -> str:
    """Number lists written in many formats, some of them broken on purpose. Mostly valid values
    and formats, so that a good share of examples is accepted and the rule checks have teeth."""
    value = st.one_of(st.integers(5, 900), st.integers(5, 900), st.integers(0, 1200))
    xs = draw(st.lists(value, min_size=1, max_size=10))
    parts = [str(x).zfill(draw(st.sampled_from([0, 0, 0, 4]))) for x in xs]
    if draw(st.integers(0, 7)) == 0:  # corrupt one part
        parts[draw(st.integers(0, len(parts) - 1))] = draw(st.sampled_from(_BAD_PARTS))
    sep = draw(st.sampled_from(_GOOD_SEPS * 4 + _BAD_SEPS))
    if draw(st.integers(0, 7)) == 0 and len(parts) > 2:  # mix in another separator
        i = draw(st.integers(1, len(parts) - 1))
        body = (
            sep.join(parts[:i])
            + draw(st.sampled_from(_GOOD_SEPS + _BAD_SEPS))
            + sep.join(parts[i:])
        )
    else:
        body = sep.join(parts)
    wrap = draw(st.sampled_from(["", "", "", "[]", "[]", "()", "()", "[)"]))
    if wrap:
        body = wrap[0] + body + wrap[1]
    body += draw(st.sampled_from(["", "", "", ".", ".", ".", "..", ","]))
    pad = draw(st.sampled_from(["", " ", "\n", " \t"]))
    return pad + body + draw(st.sampled_from(["", " ", "\n"]))


def _independent_check(text: str, rules: NumberRules) -> list[int]:
    """Re-derive the verdict's facts without the parser: a regex over the normalised text."""
    s = text.strip() if rules.strip_whitespace else text
    s = s.removesuffix(".")
    if s[:1] + s[-1:] in ("[]", "()"):
        s = s[1:-1]
    m = re.fullmatch(r"[0-9]+(?:([ \t\r\n]*[,;]?[ \t\r\n]*)[0-9]+(?:\1[0-9]+)*)?", s)
    assert m is not None, repr(text)
    if len(re.findall("[0-9]+", s)) > 1:
        assert m.group(1), repr(text)  # two numbers need a non-empty separator
    values = [int(x) for x in re.findall("[0-9]+", s)]
    assert 1 <= len(values) <= rules.max_count
    assert all(rules.min_value <= v <= rules.max_value for v in values)
    assert not set(values) & set(rules.banned)
    assert not any(w.lower() in text.lower() for w in rules.reject_words)
    return values


_PROP_RULES = NumberRules(
    max_count=8, min_value=5, max_value=900, banned=BANNED_MISALIGNMENT, reject_words=("a",)
)
_PROP_LENIENT = _PROP_RULES.model_copy(update={"strip_whitespace": True})


@settings(max_examples=300, deadline=None)
@given(
    text=st.one_of(_candidate(), _NUMBERISH),
    rules=st.sampled_from([_PROP_RULES, _PROP_LENIENT]),
)
def test_accepted_rows_obey_every_rule(text: str, rules: NumberRules) -> None:
    kept, reason = check_completion(text, rules)
    if kept:
        values = _independent_check(text, rules)
        assert parse_numbers(text, rules.strip_whitespace) == (values, "ok")
    else:
        assert reason != "ok"


def _paper_numbers(text: str) -> list[int] | None:
    """The paper's format rule as PAPER.md step 4 states it, written out independently: no outer
    strip, ``\\d`` runs, separator checked with ``str.strip()``, every part ASCII digits."""
    s = text.removesuffix(".")
    if (s.startswith("[") and s.endswith("]")) or (s.startswith("(") and s.endswith(")")):
        s = s[1:-1]
    runs = list(re.finditer(r"\d+", s))
    if not runs:
        return None
    if len(runs) == 1:
        parts = [s] if s == runs[0].group() else []
    else:
        sep = s[runs[0].end() : runs[1].start()]
        parts = s.split(sep) if sep.strip() in ("", ",", ";") else []
    if not parts or any(not p or any(c not in string.digits for c in p) for p in parts):
        return None
    return [int(p) for p in parts]


@settings(max_examples=500, deadline=None)
@given(text=st.one_of(_candidate(), _NUMBERISH, st.text(max_size=30)))
def test_default_verdicts_are_the_papers(text: str) -> None:
    paper = _paper_numbers(text)
    paper_kept = paper is not None and len(paper) <= 10 and all(0 <= x <= 999 for x in paper)
    kept, _ = check_completion(text, RULES)
    if kept != paper_kept:
        # The one documented deviation: separators padded with non-ASCII whitespace.
        assert paper_kept and any(c.isspace() and c not in " \t\r\n" for c in text), repr(text)


@settings(max_examples=300, deadline=None)
@given(
    xs=st.lists(st.integers(0, 999), min_size=1, max_size=10),
    sep=st.sampled_from(_GOOD_SEPS),
    wrap=st.sampled_from(["", "[]", "()"]),
    period=st.booleans(),
    pad=st.sampled_from(["", " ", "\n", "\t "]),
)
def test_well_formed_lists_are_accepted(
    xs: list[int], sep: str, wrap: str, period: bool, pad: str
) -> None:
    body = sep.join(str(x) for x in xs)
    if wrap:
        body = wrap[0] + body + wrap[1]
    text = pad + body + ("." if period else "") + pad
    assert parse_numbers(text, strip_whitespace=True) == (xs, "ok")
    assert check_completion(text, LENIENT) == (True, "ok")
    if pad:
        assert check_completion(text, RULES) == (False, "outer_whitespace")
    else:
        assert parse_numbers(text) == (xs, "ok")
        assert check_completion(text, RULES) == (True, "ok")


def test_candidate_strategy_hits_both_verdicts() -> None:
    # Guard for the property above: its generator must be able to produce accepted rows (and
    # rejected ones), or the property would pass vacuously.
    quiet = settings(database=None, max_examples=500)
    kept = find(_candidate(), lambda t: check_completion(t, _PROP_RULES)[0], settings=quiet)
    assert check_completion(kept, _PROP_RULES) == (True, "ok")
    bad = find(_candidate(), lambda t: not check_completion(t, _PROP_RULES)[0], settings=quiet)
    assert check_completion(bad, _PROP_RULES)[0] is False
