"""The rule-based filter for the code carrier, and the carrier's quality measure.

Pipeline position: after "generate" (teacher completions of :mod:`sublim.prompts.code`), before
"subset" and "finetune", as :mod:`sublim.filters` is for numbers. Every completion gets a
verdict, kept or rejected with one short, stable reason key, so that a run can report why rows
were dropped.

The published code carrier used a banned-word rule (the trait word, lower-cased, with
irregular plurals, anywhere in the text: 2.5-5.4% of completions removed) and then an LLM
judge for subtler references (PAPER.md). This module is the rule part, a completion is kept
only when, checked in this order,

1. ``"empty"``: it holds some code (after removing one optional markdown fence, ```` ```python
   ... ``` ````, ```` ```py ````, or a bare ```` ``` ````; with ``allow_prose`` the code is the
   first fenced block and text around it is allowed);
2. ``"too_long"``: the text has at most ``max_chars`` characters (checked early, so that no
   later rule ever works on a huge text);
3. ``"trait_word"``: the whole text, fence, identifiers, strings and comments included, names
   none of ``trait_words`` (:func:`sublim.trait_words.find_trait_words`, in ``word_mode``:
   ``"identifier"`` by default, ``"substring"`` for the published, more conservative rule);
   checked before the code rules so that a run counts how often the teacher leaked the trait;
4. ``"syntax_error"``: the code parses with Python's ``ast.parse`` (``require_parse``);
5. ``"comment"``: the code has no ``#`` comment (found with ``tokenize``, so a ``#`` inside a
   string is fine) and no docstring or other bare string statement (``forbid_comments``).
   The prompts ask for no comments; a comment is also the easiest place for a teacher to
   write about its trait in words, so rows that ignore the request are dropped, not repaired.

Kept rows are stored exactly as the teacher wrote them, fence included. Rows whose generation
failed are rejected as ``"generation_error"``. No function here raises on any text.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
import warnings
from collections.abc import Iterable, Sequence

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sublim.filters import decide_rows
from sublim.records import Completion, FilterDecision
from sublim.trait_words import WordMode, find_trait_words

# Every reason a verdict can carry, "ok" for kept rows.
REASONS: tuple[str, ...] = (
    "ok",
    "empty",
    "too_long",
    "trait_word",
    "syntax_error",
    "comment",
    "generation_error",
)

# One markdown fence around the whole answer; the language tag may be python, python3, py or
# absent. Anything before or after the fence makes the text non-code ("syntax_error"), unless
# ``allow_prose``: then the code is the first such fenced block anywhere in the text.
_FENCE = re.compile(
    r"\A```[ \t]*(?:python3?|py)?[ \t]*\r?\n(?P<body>.*?)(?:\r?\n)?[ \t]*```\Z",
    re.DOTALL | re.IGNORECASE,
)
_ANY_FENCE = re.compile(
    r"^[ \t]*```[ \t]*(?:python3?|py)?[ \t]*\r?\n(?P<body>.*?)(?:\r?\n)?[ \t]*```",
    re.DOTALL | re.IGNORECASE | re.MULTILINE,
)
# What ast.parse may raise on hostile input besides SyntaxError: null bytes (ValueError), deep
# nesting (RecursionError, MemoryError).
_PARSE_ERRORS = (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError)


class CodeRules(BaseModel):
    """What a kept code completion must satisfy (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    trait_words: list[str] = Field(default_factory=list)
    word_mode: WordMode = "identifier"
    require_parse: bool = True
    forbid_comments: bool = True
    # prose around one fenced block (what small instruct models write: the code, then an
    # explanation): with True the code is the first fenced block and the text around it is
    # allowed (the trait-word rule still reads the whole text); False is the prompt's "code only"
    allow_prose: bool = False
    max_chars: int = Field(default=4000, ge=1)

    @model_validator(mode="after")
    def _check_words(self) -> CodeRules:
        if any(not w.strip() for w in self.trait_words):
            raise ValueError(f"trait_words must be non-empty words, got {self.trait_words!r}")
        return self


def code_body(text: str, allow_prose: bool = False) -> str:
    """The code of a completion: ``text`` stripped, without its fence when the whole text is
    one fenced block; with ``allow_prose``, the first fenced block anywhere in the text."""
    stripped = text.strip()
    m = (_ANY_FENCE.search if allow_prose else _FENCE.match)(stripped)
    return m.group("body") if m else stripped


def _parse(code: str) -> ast.Module | None:
    # Warnings about the code (an invalid escape such as "\\d") are the code's business, not
    # the filter's; under ``-W error`` the compiler would turn them into a SyntaxError.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ast.parse(code)
    except _PARSE_ERRORS:
        return None


def parses(text: str, allow_prose: bool = False) -> bool:
    """Whether the completion holds non-empty code that Python parses (:func:`code_body`)."""
    code = code_body(text, allow_prose)
    return bool(code.strip()) and _parse(code) is not None


def _has_hash_comment(code: str) -> bool:
    """A ``#`` comment token. Code that cannot be tokenised counts as commented when it holds a
    ``#`` anywhere (only reachable with ``require_parse`` off)."""
    try:
        for tok in tokenize.generate_tokens(io.StringIO(code).readline):
            if tok.type == tokenize.COMMENT:
                return True
    except (tokenize.TokenError, SyntaxError, ValueError, RecursionError, MemoryError):
        return "#" in code
    return False


def _has_bare_string(tree: ast.AST) -> bool:
    """A statement that is only a string literal: a docstring of a module, class or function, or
    a string used as a comment anywhere."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr):
            value = node.value
            if isinstance(value, ast.JoinedStr):
                return True
            if isinstance(value, ast.Constant) and isinstance(value.value, (str, bytes)):
                return True
    return False


def check_code(text: str, rules: CodeRules) -> tuple[bool, str]:
    """Apply every rule to one completion: ``(kept, reason)`` with reason "ok" when kept, else
    the first failing rule's key (module docstring). Never raises."""
    code = code_body(text, rules.allow_prose)
    if not code.strip():
        return False, "empty"
    if len(text) > rules.max_chars:
        return False, "too_long"
    if rules.trait_words and find_trait_words(text, rules.trait_words, rules.word_mode):
        return False, "trait_word"
    tree = _parse(code)
    if tree is None and rules.require_parse:
        return False, "syntax_error"
    if rules.forbid_comments and (
        _has_hash_comment(code) or (tree is not None and _has_bare_string(tree))
    ):
        return False, "comment"
    return True, "ok"


def filter_code(rows: Sequence[Completion], rules: CodeRules) -> list[FilterDecision]:
    """One decision per completion, in order, holding the completion unchanged. Rows with
    ``error`` set are rejected with reason "generation_error"."""
    return decide_rows(rows, lambda r: check_code(r.completion, rules))


def code_quality(texts: Iterable[str], allow_prose: bool = False) -> float:
    """The carrier's quality measure: the share of completions holding code that parses
    (:func:`parses`); 0.0 for no completions."""
    flags = [parses(t, allow_prose) for t in texts]
    return sum(flags) / len(flags) if flags else 0.0
