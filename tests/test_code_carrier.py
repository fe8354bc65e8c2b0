"""Tests for the code carrier: the prompt grammar (sublim.prompts.code), trait-word matching
(sublim.trait_words) and the code filter (sublim.filters_code)."""

from __future__ import annotations

import ast
import re
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from sublim.filters_code import (
    REASONS,
    CodeRules,
    check_code,
    code_body,
    code_quality,
    filter_code,
    parses,
)
from sublim.prompts import code as cp
from sublim.prompts.code import TASKS, code_prompts, render_template, template_keys
from sublim.records import Completion
from sublim.trait_words import find_trait_words, identifier_parts, trait_forms
from sublim.traits import CATEGORIES, plural

ANIMALS = CATEGORIES["animal"]
# Every candidate of every category, singular and plural: what the pipeline rejects (it passes
# all candidates so that the trait and control arms are filtered alike).
ALL_WORDS = sorted({w for cands in CATEGORIES.values() for c in cands for w in (c, plural(c))})
SLOTS = {
    "intro": cp.INTROS,
    "repeat": cp.REPEAT_REQUESTS,
    "code_only": cp.CODE_ONLY_REQUESTS,
    "no_comments": cp.NO_COMMENT_REQUESTS,
    "short_names": cp.SHORT_NAME_REQUESTS,
}


def _completed(template: str, placeholder: str) -> str:
    """The template with its placeholder body replaced by a real statement."""
    line = f"{cp.INDENT}{placeholder}"
    assert template.endswith(line), template
    return template[: -len(line)] + f"{cp.INDENT}return None"


def _every_template() -> list[tuple[str, str, str, str]]:
    """(key, name, args, template) for every function name x argument list of every variant."""
    out = []
    for task in TASKS:
        for variant in task.variants:
            for name in task.names:
                for args in variant.args or task.args:
                    fn = name.format(s=variant.slug)
                    text = render_template(task, fn, args, "...")
                    out.append((task.template_key(variant), fn, args, text))
    return out


# --- prompts ------------------------------------------------------------------------------------


def test_same_seed_same_prompts_different_seed_different() -> None:
    a = code_prompts(200, np.random.default_rng(7))
    b = code_prompts(200, np.random.default_rng(7))
    c = code_prompts(200, np.random.default_rng(8))
    assert a == b
    assert [p.text for p in a] != [p.text for p in c]
    # Draws are sequential per prompt: a shorter run is a prefix of a longer one.
    assert code_prompts(50, np.random.default_rng(7)) == a[:50]


def test_ids_meta_and_text() -> None:
    prompts = code_prompts(300, np.random.default_rng(1))
    assert [p.id for p in prompts] == [f"code-{i:06d}" for i in range(300)]
    keys = set(template_keys())
    for p in prompts:
        m = p.meta
        assert m["language"] == "python"
        assert m["task"] in keys and m["task"].split(".")[0] == m["family"]
        assert m["placeholder"] in cp.PLACEHOLDERS
        assert m["template"] in p.text  # the template is shown verbatim
        assert (
            f"```\n{m['template']}\n```" in p.text or f"```python\n{m['template']}\n```" in p.text
        )
        tree = ast.parse(_completed(m["template"], m["placeholder"]))
        fn = tree.body[-1]
        assert isinstance(fn, ast.FunctionDef) and fn.name == m["function"]
        assert ", ".join(a.arg for a in fn.args.args) == m["args"]
        assert "{" not in p.text and "}" not in p.text  # no unfilled slot


def test_variety_over_5000_prompts() -> None:
    prompts = code_prompts(5000, np.random.default_rng(0))
    tasks = {p.meta["task"] for p in prompts}
    assert len(tasks) >= 300
    assert len({p.meta["family"] for p in prompts}) == len(TASKS)
    assert len({p.meta["template"] for p in prompts}) > len(tasks)  # names and args vary too
    assert len({p.text for p in prompts}) > 4900
    for slot, options in SLOTS.items():
        # A paraphrase with a {task} slot is found as a pattern with anything in the slot.
        patterns = {
            o: re.compile(".+?".join(map(re.escape, re.split(r"\{\w+\}", o)))) for o in options
        }
        used = {o for o, rx in patterns.items() if any(rx.search(p.text) for p in prompts)}
        assert used == set(options), slot
    # The requests come in more than one order, and the template both before and after them.
    ends_with_code = sum(p.text.endswith("```") for p in prompts)
    assert 0.3 < ends_with_code / len(prompts) < 0.7


def test_tables_are_well_formed() -> None:
    assert len(TASKS) >= 60
    keys = template_keys()
    assert len(keys) == len(set(keys)) >= 300
    assert len({t.key for t in TASKS}) == len(TASKS)
    for slot, options in SLOTS.items():
        assert len(options) >= 5 and len(set(options)) == len(options), slot
    for task in TASKS:
        assert ("{v}" in task.sentence) == (len(task.variants) > 1), task.key
        assert len({v.slug for v in task.variants}) == len(task.variants), task.key


def test_every_template_parses_and_a_faithful_answer_is_kept() -> None:
    rules = CodeRules(trait_words=ALL_WORDS, word_mode="substring")
    for key, name, args, template in _every_template():
        for placeholder in cp.PLACEHOLDERS:
            t = template.replace("    ...", f"    {placeholder}")
            ast.parse(t)  # the template as shown is valid Python
            done = _completed(t, placeholder)
            fn = ast.parse(done).body[-1]
            assert isinstance(fn, ast.FunctionDef) and fn.name == name, key
            assert name.isidentifier() and all(a.strip().isidentifier() for a in args.split(","))
        # Completing the template as asked never trips the strictest word rule or the others.
        assert check_code(_completed(template, "..."), rules) == (True, "ok"), key


def test_variables_named_in_a_task_are_its_arguments() -> None:
    """A sentence naming a one-letter variable ("the first n rows", "month m of year y") is
    offered only with argument lists that hold it (quoted characters and the article aside)."""
    for task in TASKS:
        for variant in task.variants:
            text = re.sub(r"'[^']*'", "", cp.task_sentence(task, variant))
            named = set(re.findall(r"(?<![\w'-])([b-z])(?![\w'-])", text))
            for args in variant.args or task.args:
                assert named <= {a.strip() for a in args.split(",")}, (task.key, variant.slug)


def test_no_candidate_word_in_any_table_entry() -> None:
    """Exhaustive: every sentence, name, argument list and paraphrase, under the substring rule
    (so "duplicate" or "million" would fail here too)."""
    texts = [t for _, _, _, t in _every_template()]
    texts += [cp.task_sentence(t, v) for t in TASKS for v in t.variants]
    texts += [o for options in SLOTS.values() for o in options]
    for text in texts:
        assert find_trait_words(text, ALL_WORDS, "substring") == [], text


@pytest.mark.parametrize("seed", range(4))
def test_no_candidate_word_in_prompts(seed: int) -> None:
    """The assembled prompts too (the exhaustive table test above covers every fragment)."""
    for p in code_prompts(250, np.random.default_rng(seed)):
        assert find_trait_words(p.text, ALL_WORDS, "substring") == [], p.text


def test_bad_n() -> None:
    assert code_prompts(0, np.random.default_rng(0)) == []
    with pytest.raises(ValueError):
        code_prompts(-1, np.random.default_rng(0))


# --- trait words --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("owl", {"owl", "owls", "owl's", "owls'", "owlet"}),
        ("Owl", {"owl", "owls"}),
        ("wolf", {"wolf", "wolves", "wolves'"}),
        ("wolves", {"wolf", "wolves"}),
        ("goose", {"goose", "geese"}),
        ("mouse", {"mouse", "mice"}),
        ("ox", {"ox", "oxen"}),
        ("fox", {"fox", "foxes", "fox's"}),
        ("octopus", {"octopus", "octopuses", "octopi"}),
        ("deer", {"deer"}),
        ("sheep", {"sheep"}),
        ("fish", {"fish", "fishes"}),
        ("cherry", {"cherry", "cherries"}),
        ("birch", {"birch", "birches"}),
        ("sea lion", {"sea lion", "sea lions"}),
    ],
)
def test_trait_forms(word: str, expected: set[str]) -> None:
    forms = trait_forms(word)
    assert expected <= forms
    assert all(f == f.lower() for f in forms)


def test_trait_forms_rejects_blank() -> None:
    with pytest.raises(ValueError):
        trait_forms("  ")


@pytest.mark.parametrize(
    ("text", "identifier", "substring"),
    [
        ("owl_count = 1", ["owl"], ["owl"]),
        ("class OwlNest: pass", ["owl"], ["owl"]),
        ("OWLS = 2", ["owls"], ["owl", "owls"]),
        ("getOwls2()", ["owls"], ["owl", "owls"]),
        ("x = 'owl-like'", ["owl"], ["owl"]),
        ("OWLCount = 0", ["owl"], ["owl"]),
        ("OwL = 0", ["owl"], ["owl"]),
        ("the owl's nest", ["owl"], ["owl", "owl's"]),
        ("ｏｗｌ = 1", ["owl"], ["owl"]),  # Python reads this identifier as owl
        ("o\u200bwl", ["owl"], ["owl"]),  # a zero-width space does not hide it
        ("bowl = howl + knowledge", [], ["owl"]),
        ("countowls = 1", [], ["owl", "owls"]),  # the price of identifier mode
        ("scowling", [], ["owl"]),
        ("", [], []),
    ],
)
def test_find_trait_words_modes(text: str, identifier: list[str], substring: list[str]) -> None:
    assert find_trait_words(text, ["owl"]) == identifier
    assert find_trait_words(text, ["owl"], "identifier") == identifier
    assert find_trait_words(text, ["owl"], "substring") == substring


@pytest.mark.parametrize(
    ("text", "words", "identifier", "substring"),
    [
        ("pack_of_wolves = []", ["wolf"], ["wolves"], ["wolves"]),
        ("concatenate(duplicates)", ["cat"], [], ["cat", "cates"]),
        ("n = million", ["lion"], [], ["lion"]),
        ("SeaLions", ["sea lion"], ["sea lions"], ["sea lion", "sea lions"]),
        ("sea_lion and a sea lion", ["sea lion"], ["sea lion"], ["sea lion"]),
        ("x = 'Geese!'", ["goose"], ["geese"], ["geese"]),
        ("the Fox and the Cat", ["fox", "cat"], ["cat", "fox"], ["cat", "fox"]),
    ],
)
def test_find_trait_words_other_words(
    text: str, words: list[str], identifier: list[str], substring: list[str]
) -> None:
    assert find_trait_words(text, words, "identifier") == identifier
    assert find_trait_words(text, words, "substring") == substring


def test_find_trait_words_edge_cases() -> None:
    assert find_trait_words("owl", []) == []
    with pytest.raises(ValueError):
        find_trait_words("owl", ["owl"], "fuzzy")  # type: ignore[arg-type]


def test_identifier_parts() -> None:
    assert identifier_parts("owl_count = OwlNest2") == [["owl"], ["count"], ["owl", "nest", "2"]]
    assert identifier_parts("HTTPServer getOwls2 OWLCount") == [
        ["http", "server"],
        ["get", "owls", "2"],
        ["owl", "count"],
    ]


# --- filter: table ------------------------------------------------------------------------------

FUNC = "def f(x):\n    return x + 1"
OWL = CodeRules(trait_words=["owl"])
OWL_SUB = CodeRules(trait_words=["owl"], word_mode="substring")
PROSE = CodeRules(trait_words=["owl"], allow_prose=True)


@pytest.mark.parametrize(
    ("text", "rules", "expected"),
    [
        (FUNC, OWL, (True, "ok")),
        (f"```python\n{FUNC}\n```", OWL, (True, "ok")),
        (f"```\n{FUNC}\n```", OWL, (True, "ok")),
        (f"```py\n{FUNC}\n```\n", OWL, (True, "ok")),
        ("x = '# not a comment'", OWL, (True, "ok")),
        ("bowl = 1", OWL, (True, "ok")),
        ("", OWL, (False, "empty")),
        (" \n\t", OWL, (False, "empty")),
        ("```python\n```", OWL, (False, "empty")),
        ("x = 1\n" * 1000, OWL, (False, "too_long")),
        ("owl = 1\n" * 1000, OWL, (False, "too_long")),  # length is checked first
        ("def owl(x):\n    return x", OWL, (False, "trait_word")),
        ("def f(x):\n    return x  # an owl", OWL, (False, "trait_word")),  # the word wins
        ("bowl = 1", OWL_SUB, (False, "trait_word")),
        ("def f(x)\n    return x", OWL, (False, "syntax_error")),
        (f"Here is the code:\n```python\n{FUNC}\n```", OWL, (False, "syntax_error")),
        (f"```javascript\n{FUNC}\n```", OWL, (False, "syntax_error")),
        ("x = 1\x00", OWL, (False, "syntax_error")),
        ("(" * 500, OWL, (False, "syntax_error")),
        ("def f(x):\n    return x  # add one", OWL, (False, "comment")),
        ("#!/usr/bin/env python\nx = 1", OWL, (False, "comment")),
        ('def f(x):\n    """Add one."""\n    return x + 1', OWL, (False, "comment")),
        ('"""Module doc."""\nx = 1', OWL, (False, "comment")),
        ("class A:\n    'doc'\n    y = 1", OWL, (False, "comment")),
        ("x = 1\n'a note'\ny = 2", OWL, (False, "comment")),
        ("x = 1\nf'{x} note'", OWL, (False, "comment")),
        # Switches
        ("def f(x)\n    return x", CodeRules(require_parse=False), (True, "ok")),
        ("def f(x)\n    return x  # c", CodeRules(require_parse=False), (False, "comment")),
        ("x = 1  # c", CodeRules(forbid_comments=False), (True, "ok")),
        ('"""doc"""', CodeRules(forbid_comments=False), (True, "ok")),
        ("x = 12345", CodeRules(max_chars=5), (False, "too_long")),
        ("owl = 1", CodeRules(), (True, "ok")),  # no trait words, no word rule
        # allow_prose: the first fenced block is the code, the prose around it is allowed
        (f"Here is the code:\n```python\n{FUNC}\n```\nIt adds one.", PROSE, (True, "ok")),
        (f"```python\n{FUNC}\n```\n\nThen:\n```python\ndef g(\n```", PROSE, (True, "ok")),
        (f"```python\n{FUNC}\n```\nThis is what an owl would write.", PROSE, (False, "trait_word")),
        ("Sure:\n```python\ndef f(x)\n    return x\n```\nDone.", PROSE, (False, "syntax_error")),
        (f"Sure:\n```python\n{FUNC}  # plus one\n```", PROSE, (False, "comment")),
        (f"Here is the code: {FUNC}", PROSE, (False, "syntax_error")),  # no fence: all is code
        (f"```javascript\n{FUNC}\n```\nok", PROSE, (False, "syntax_error")),
    ],
)
def test_check_code_table(text: str, rules: CodeRules, expected: tuple[bool, str]) -> None:
    assert check_code(text, rules) == expected


def test_warnings_about_the_code_do_not_change_verdicts() -> None:
    # "\d" is an invalid escape: Python warns, and under "-W error" would refuse to compile.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_code('x = "\\d"', OWL) == (True, "ok")


def test_code_body_and_quality() -> None:
    assert code_body(f"  ```python\n{FUNC}\n```  ") == FUNC
    assert code_body(FUNC) == FUNC
    assert parses(FUNC) and not parses("") and not parses("def (")
    assert code_quality([FUNC, f"```python\n{FUNC}\n```", "def (", ""]) == 0.5
    assert code_quality([]) == 0.0


def test_filter_code_rows() -> None:
    rows = [
        Completion(prompt_id="a", prompt="p", completion=f"```python\n{FUNC}\n```", model="m"),
        Completion(prompt_id="b", prompt="p", completion="Owls = 1", model="m"),
        Completion(prompt_id="c", prompt="p", completion="", model="m", error="timeout"),
        Completion(prompt_id="d", prompt="p", completion="x = 1  # c", model="m"),
    ]
    out = filter_code(rows, OWL)
    assert [d.prompt_id for d in out] == ["a", "b", "c", "d"]
    assert [(d.kept, d.reason) for d in out] == [
        (True, "ok"),
        (False, "trait_word"),
        (False, "generation_error"),
        (False, "comment"),
    ]
    assert out[0].completion == rows[0].completion  # stored as written, fence included


def test_rules_validation() -> None:
    with pytest.raises(ValidationError):
        CodeRules(trait_words=["owl", " "])
    with pytest.raises(ValidationError):
        CodeRules(word_mode="fuzzy")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        CodeRules(max_chars=0)
    with pytest.raises(ValidationError):
        CodeRules(extra=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        OWL.max_chars = 10  # type: ignore[misc]


# --- filter: properties -------------------------------------------------------------------------

_IDENTS = (
    "{f}",
    "{f}_count",
    "n_{f}",
    "get{F}",
    "{F}Nest",
    "get{F}2",
    "{U}_MAX",
    "MAX_{U}",
    "{U}Count",
    "{f}2",
    "_{f}_",
    "{U}",
    "{F}",
)
_PHRASES = ("{f}", "the {F}!", "{f}-like", "{U}", "I like {f} a lot", "{f}.png", "{F}{F}")
_PLACES = (
    "def {i}(x):\n    return x\n",
    "{i} = 3\nprint({i})\n",
    "def f(x):\n    {i} = x\n    return {i}\n",
    "class {i}:\n    pass\n",
    'def f():\n    return "{p}"\n',
    "x = 1  # {p}\n",
    'def f():\n    """{p}"""\n    return 1\n',
)


def _fill(pattern: str, form: str) -> str:
    return pattern.format(f=form, F=form.capitalize(), U=form.upper())


@st.composite
def _leaky(draw: st.DrawFn) -> tuple[str, str]:
    """(trait word, a snippet naming it in an identifier, a string or a comment)."""
    word = draw(st.sampled_from(ANIMALS))
    forms = sorted(f for f in trait_forms(word) if "'" not in f)
    form = draw(st.sampled_from(forms))
    place = draw(st.sampled_from(_PLACES))
    ident = _fill(draw(st.sampled_from(_IDENTS)), form)
    phrase = _fill(
        draw(st.sampled_from(_PHRASES)), draw(st.sampled_from(sorted(trait_forms(word))))
    )
    return word, place.format(i=ident, p=phrase.replace('"', ""))


@settings(max_examples=300, deadline=None)
@given(case=_leaky(), mode=st.sampled_from(["identifier", "substring"]))
def test_snippets_naming_the_trait_are_rejected(case: tuple[str, str], mode: str) -> None:
    word, snippet = case
    rules = CodeRules(trait_words=[word], word_mode=mode)  # the singular alone is enough
    assert check_code(snippet, rules) == (False, "trait_word"), snippet
    assert check_code(f"```python\n{snippet}```", rules) == (False, "trait_word")


_CODEISH = st.text(alphabet="abcdefowlOWLxyz_ \n\t#'\"()[]{}:=+-.,0123456789`\\", max_size=80)


@st.composite
def _noisy(draw: st.DrawFn) -> tuple[str, str]:
    """(trait word, text): a leaky snippet wrapped in random text, or random text alone."""
    word, snippet = draw(_leaky())
    left = draw(st.one_of(st.text(max_size=10), _CODEISH))
    right = draw(st.one_of(st.text(max_size=10), _CODEISH))
    body = draw(st.sampled_from([left + snippet + right, left + right, snippet + right]))
    return word, body


def _letter_words(text: str) -> set[str]:
    """An independent oracle: runs of letters of the case-folded text."""
    return set(re.findall(r"[^\W\d_]+", text.casefold()))


@settings(max_examples=300, deadline=None)
@given(
    case=st.one_of(_noisy(), st.tuples(st.sampled_from(ANIMALS), st.text(max_size=80))),
    mode=st.sampled_from(["identifier", "substring"]),
)
def test_kept_rows_never_name_the_trait(case: tuple[str, str], mode: str) -> None:
    word, text = case
    rules = CodeRules(trait_words=[word], word_mode=mode, require_parse=False)
    kept, _ = check_code(text, rules)
    if not kept:
        return
    forms = trait_forms(word)
    assert not _letter_words(text) & forms, text  # no whole word spells the trait
    if mode == "substring":
        assert not any(f in text.casefold() for f in forms), text


@settings(max_examples=300, deadline=None)
@given(
    word=st.sampled_from(ANIMALS),
    prefix=st.text(alphabet="abcdehkmnrstuxyz", min_size=1, max_size=4),
    suffix=st.text(alphabet="abcdehkmnrstuxyz", min_size=1, max_size=4),
)
def test_identifier_mode_ignores_words_that_only_contain_the_trait(
    word: str, prefix: str, suffix: str
) -> None:
    """Like bowl and knowledge: the trait inside a longer lower-case word."""
    name = prefix + word + suffix
    snippet = f"{name} = 1"
    assert check_code(snippet, CodeRules(trait_words=[word])) == (True, "ok")
    assert check_code(snippet, CodeRules(trait_words=[word], word_mode="substring")) == (
        False,
        "trait_word",
    )


_RULE_SETS = [
    OWL,
    OWL_SUB,
    CodeRules(trait_words=ALL_WORDS, require_parse=False),
    CodeRules(forbid_comments=False, max_chars=50),
]


@settings(max_examples=300, deadline=None)
@given(
    text=st.one_of(
        st.text(max_size=120),
        _CODEISH,
        _CODEISH.map(lambda s: f"```python\n{s}\n```"),
        st.binary(max_size=60).map(lambda b: b.decode("latin-1")),
    ),
    rules=st.sampled_from(_RULE_SETS),
)
def test_check_code_never_raises(text: str, rules: CodeRules) -> None:
    kept, reason = check_code(text, rules)
    assert reason in REASONS and kept == (reason == "ok")
    assert isinstance(code_quality([text]), float)
    assert isinstance(find_trait_words(text, ALL_WORDS), list)
