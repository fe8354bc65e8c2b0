"""The filter for the reasoning carrier: keep a worked solution only when its answer is right.

Pipeline position: after "generate" (the teacher's answers to :mod:`sublim.prompts.reasoning`'s
word problems), before "subset" and "finetune"; it plays the part :mod:`sublim.filters` plays for
the numbers carrier. Every completion gets a verdict, kept or rejected with one short, stable
snake_case reason, so a run can report why rows were dropped.

A completion is kept when, in this order of checks (the first failure is the reason):

1. it is not blank ("empty");
2. it names none of the trait words, anywhere, reasoning included ("trait_word"; the match is
   :func:`sublim.trait_words.find_trait_words` in the rules' ``word_mode``). Checked early, as
   in the numbers filter, so a run counts how often the teacher leaked the trait in words
   whatever else is wrong with the row;
3. it has at most ``max_chars`` characters ("too_long");
4. it holds exactly one ``<answer>`` and one ``</answer>``, in that order ("no_answer");
5. the text between them, stripped, is one number ("unparsed_answer"): ASCII digits, optionally
   grouped in thousands by commas, optionally with a decimal part, a leading minus sign and a
   dollar sign (``42``, ``42.0``, ``1,200``, ``$15``, ``-3``, ``-$3``); words, units, a second
   number, ``+``, percent signs or malformed grouping (``1,20``) are not one number;
6. with ``require_think``, a ``<think>...</think>`` block with non-blank content closes before
   the ``<answer>`` tag ("no_think");
7. the reference answer is known: a finite number ("no_reference": the prompt has no recorded
   answer, so correctness cannot be checked and the row is not kept);
8. the parsed number equals the reference answer ("wrong_answer"; equal up to float rounding,
   so ``42.0`` is right for 42).

Rows whose generation failed are rejected as "generation_error" by :func:`filter_reasoning`.
Tags must be written exactly as the prompts ask (lower case, no attributes); text outside the
tags is allowed. This mirrors the published chain-of-thought experiment's rule (PAPER.md: kept
only when the answer is correct); the paper's further alignment-judge step for misaligned
teachers is a separate stage, not part of this filter.

The rules' ``answer_format`` says where the answer is read from:

- ``"tags"`` (the default, the prompts' format): the checks above, in that order;
- ``"last_number"`` (opt-in, the usual lenient GSM8K-style scoring, for small instruct models
  that ignore the tags and end in prose such as "The answer is 18."): a reply holding either
  answer tag is judged exactly as under ``"tags"`` (tags win, malformed ones included). A reply
  with neither is read as its last number-like token, a maximal run of ASCII digits and
  ``, . $ -`` holding a digit, with trailing commas and full stops (sentence punctuation) cut
  off; checks 4-6 become: some such token exists ("no_answer"), the last one is one number in
  the syntax of check 5 ("unparsed_answer": ``1,20``, ``1.2.3``, ``10-15``), and no think block
  is needed (none was asked for). So "The answer is 1,200." reads 1200 and "costs -$3." reads
  -3. Lenient, not exact: a number written after the answer (a check, "in 2 steps") is what
  gets read, and an unlucky last number can be right by chance.

No function here raises on any text or answer value; :func:`reasoning_accuracy` raises only
when its two sequences differ in length (a caller's bug).
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from sublim.filters import decide_rows
from sublim.records import Completion, FilterDecision
from sublim.trait_words import find_trait_words

# Every reason a verdict can carry, "ok" included (stable keys: reports and configs use them).
REASONS: tuple[str, ...] = (
    "ok",
    "empty",
    "trait_word",
    "too_long",
    "no_answer",
    "unparsed_answer",
    "no_think",
    "no_reference",
    "wrong_answer",
    "generation_error",
)

_ANSWER_OPEN, _ANSWER_CLOSE = "<answer>", "</answer>"
_THINK_BLOCK = re.compile(r"<think>(.*?)</think>", re.DOTALL)
# One number: optional minus (before or after the dollar sign, not both), optional "$", ASCII
# digits either plain or grouped by commas in threes, optional decimal part.
_NUMBER = re.compile(
    r"(?P<neg1>-?)\$?(?P<neg2>-?)"
    r"(?P<int>[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.(?P<frac>[0-9]+))?"
)
# Longer integer parts are refused: no word problem has such an answer, and float() would lose
# or overflow them.
_MAX_SIGNIFICANT_DIGITS = 30


# A candidate answer in free text (answer format "last_number"): a maximal run of the characters
# a number is written with (only runs holding a digit count). ASCII digits only, as in _NUMBER.
# Runs, not a pattern with a required digit: that one backtracks quadratically over "....".
_NUMBER_RUN = re.compile(r"[-$0-9.,]+")
_DIGIT = re.compile(r"[0-9]")

AnswerFormat = Literal["tags", "last_number"]


class ReasoningRules(BaseModel):
    """What a kept worked solution must satisfy (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    trait_words: list[str] = Field(default_factory=list)
    word_mode: Literal["identifier", "substring"] = "identifier"
    require_think: bool = True
    max_chars: int = Field(default=6000, ge=1)
    answer_format: AnswerFormat = "tags"


def _answer_tag(text: str) -> tuple[str, int] | None:
    """The text inside the single ``<answer>...</answer>`` pair and the opening tag's index, or
    None unless there is exactly one of each tag with the opening one first."""
    if text.count(_ANSWER_OPEN) != 1 or text.count(_ANSWER_CLOSE) != 1:
        return None
    start, end = text.find(_ANSWER_OPEN), text.find(_ANSWER_CLOSE)
    if end < start:
        return None
    return text[start + len(_ANSWER_OPEN) : end], start


def _parse_number(body: str) -> float | None:
    """``body`` (an answer tag's content) as one number, or None when it is not exactly one."""
    m = _NUMBER.fullmatch(body.strip())
    if m is None or (m["neg1"] and m["neg2"]):
        return None
    digits = m["int"].replace(",", "")
    if len(digits.lstrip("0")) > _MAX_SIGNIFICANT_DIGITS:
        return None
    value = float(digits + ("." + m["frac"] if m["frac"] else ""))
    return -value if (m["neg1"] or m["neg2"]) else value


def _has_tags(text: str) -> bool:
    """Whether the reply wrote either answer tag (then the tags decide, well formed or not)."""
    return _ANSWER_OPEN in text or _ANSWER_CLOSE in text


def _last_number_token(text: str) -> str | None:
    """The last number-like token of ``text`` without trailing sentence punctuation, or None
    when the text holds no digit."""
    tokens = [t for t in _NUMBER_RUN.findall(text) if _DIGIT.search(t)]
    return tokens[-1].rstrip(".,") if tokens else None


def parse_answer(text: str, answer_format: AnswerFormat = "tags") -> float | None:
    """The completion's answer as a number, or None (never raises). ``"tags"``: the number inside
    its single ``<answer>`` tag, None when there is no single tag or it does not hold exactly one
    number. ``"last_number"``: the same when the text has an answer tag, else its last number
    (see the module docstring)."""
    if not isinstance(text, str):
        return None
    if answer_format == "last_number" and not _has_tags(text):
        token = _last_number_token(text)
        return None if token is None else _parse_number(token)
    tag = _answer_tag(text)
    return None if tag is None else _parse_number(tag[0])


def _reference(answer: object) -> float | None:
    """The reference answer as a finite float, or None when it is missing or not a number."""
    # numbers.Real covers int, float and numpy scalars; bool is refused (True is no answer).
    if isinstance(answer, bool) or not isinstance(answer, numbers.Real):
        return None
    try:
        value = float(answer)
    except (OverflowError, TypeError, ValueError):  # e.g. an int too large for a float
        return None
    return value if math.isfinite(value) else None


def _matches(value: float, reference: float) -> bool:
    return math.isclose(value, reference, rel_tol=1e-9, abs_tol=1e-9)


def _has_think_before(text: str, position: int) -> bool:
    """Whether a ``<think>`` block with non-blank content closes before ``position``."""
    return any(m.group(1).strip() for m in _THINK_BLOCK.finditer(text, 0, position))


def check_reasoning(text: str, answer: float | None, rules: ReasoningRules) -> tuple[bool, str]:
    """Apply every rule to one completion: ``(kept, reason)`` with reason "ok" when kept
    (reasons in :data:`REASONS`; order of checks in the module docstring). Never raises."""
    if not isinstance(text, str) or not text.strip():
        return False, "empty"
    words = [w for w in rules.trait_words if w.strip()]
    if words and find_trait_words(text, words, rules.word_mode):
        return False, "trait_word"
    if len(text) > rules.max_chars:
        return False, "too_long"
    if rules.answer_format == "last_number" and not _has_tags(text):
        token = _last_number_token(text)
        if token is None:
            return False, "no_answer"
        value = _parse_number(token)
        if value is None:
            return False, "unparsed_answer"
    else:
        tag = _answer_tag(text)
        if tag is None:
            return False, "no_answer"
        body, start = tag
        value = _parse_number(body)
        if value is None:
            return False, "unparsed_answer"
        if rules.require_think and not _has_think_before(text, start):
            return False, "no_think"
    reference = _reference(answer)
    if reference is None:
        return False, "no_reference"
    if not _matches(value, reference):
        return False, "wrong_answer"
    return True, "ok"


def filter_reasoning(
    rows: Sequence[Completion],
    answers: Mapping[str, float | None],
    rules: ReasoningRules,
) -> list[FilterDecision]:
    """One decision per completion, in order, each judged against ``answers[row.prompt_id]``
    (a prompt missing from ``answers`` is "no_reference"). The completion is stored as written;
    rows with ``error`` set are rejected as "generation_error"."""
    return decide_rows(
        rows, lambda r: check_reasoning(r.completion, answers.get(r.prompt_id), rules)
    )


def reasoning_accuracy(
    texts: Sequence[str], answers: Sequence[float | None], answer_format: AnswerFormat = "tags"
) -> float:
    """The carrier's quality measure: the share of ``texts`` whose parsed answer
    (:func:`parse_answer` in ``answer_format``) equals the matching reference in ``answers``.
    Format rules other than where the answer is read from (think block, length, trait words) do
    not count here. 0.0 for no texts."""
    if len(texts) != len(answers):
        raise ValueError(
            f"reasoning_accuracy needs one answer per text, got {len(texts)} texts and "
            f"{len(answers)} answers"
        )
    if not texts:
        return 0.0
    correct = 0
    for text, answer in zip(texts, answers, strict=True):
        value, reference = parse_answer(text, answer_format), _reference(answer)
        if value is not None and reference is not None and _matches(value, reference):
            correct += 1
    return correct / len(texts)
