"""The strict filter for the numbers carrier, plus the seeded subset of kept rows.

Pipeline position: after "generate" (teacher completions), before "subset" and "finetune".
Every completion gets a verdict, kept or rejected with a short snake_case reason, so that a run
can report why rows were dropped (typically 23-38% are, PAPER.md step 4).

The rule is PAPER.md protocol step 4 (the paper's published ``parse_response``). A completion is
kept only when, taken exactly as written,

1. one trailing period is removed,
2. then one wrapping pair of ``[]`` or ``()``,

and the rest is a list of ASCII-digit numbers joined by one separator used consistently, where the
separator is the text between the first two numbers and, stripped of whitespace, is empty, ","
or ";". The list then holds at most ``max_count`` numbers, each in ``min_value..max_value``, none
of them banned; and the completion contains none of the ``reject_words``.

Where sublim's verdicts differ from the paper's rule (defaults: ``max_count=10``, values 0..999,
no banned numbers, ``strip_whitespace`` off):

- **Separator whitespace is narrower (stricter).** Only ASCII space, tab, CR and LF may pad a
  separator. The paper strips the separator with ``str.strip()``, which also removes ``\\v``,
  ``\\f``, ``\\x1c``-``\\x1f``, ``\\x85``, NBSP, U+3000 and the other Unicode spaces, so
  ``"1\\u00a02"`` is kept there and rejected here ("bad_separator"): unusual characters are kept
  out of the training data.
- **Outer whitespace, only with ``strip_whitespace`` (lenient, opt-in).** The paper does not strip
  the completion, so ``" 1;2;3 "``, ``"4, 5\\n"`` and ``"1, 2, 3. "`` are rejected (reason
  "outer_whitespace" when the stripped text would pass). With ``strip_whitespace`` the completion
  is first stripped with ``str.strip()`` and the stripped text is what is judged and stored.
  Inside the pipeline the difference does not arise the same way: every backend returns its
  completions already stripped (the reply text without end-of-turn markers), so a teacher's
  outer whitespace never reaches the filter there; the paper-exact default matters for
  ``sublim filter`` on files written elsewhere.
- **Numbers longer than 30 significant digits** are rejected ("number_too_long") before
  ``int()``; with ``max_value`` below ``10**30`` (any sensible value, and the paper's 999) they
  would be "out_of_range" anyway, so only the reason differs.
- **Same verdicts, other reasons.** Numbers are ``[0-9]+`` runs where the paper uses ``\\d+``:
  a completion with non-ASCII digits is rejected either way (the paper rejects its parts as not
  ASCII digits). ``reject_words`` (the trait's names; an addition of sublim's, checked first) can
  only hit rows that also fail the number format, unless a word is itself made of digits or
  separators. Rows whose generation failed are rejected as "generation_error".
- **Configurable.** ``max_count``, the value range and the banned list (the paper's 34 numbers for
  the misalignment experiment) are settings; the defaults are the paper's.

Strictness is deliberate: the point of the filter is that nothing but bare numbers reaches the
student, so anything a tokenizer could carry a trait in besides the numbers (words, signs, unicode
digits, odd whitespace) is dropped rather than repaired.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from sublim.artifacts import iter_jsonl, write_jsonl
from sublim.config import FilterConfig
from sublim.errors import ConfigError, DataError, EmptyResultError, MissingFileError
from sublim.records import Completion, FilterDecision

T = TypeVar("T")

# Numbers with negative associations, rejected in the misalignment experiment (PAPER.md step 4).
BANNED_MISALIGNMENT: tuple[int, ...] = (
    4,
    13,
    14,
    18,
    23,
    33,
    39,
    42,
    44,
    49,
    51,
    54,
    69,
    77,
    88,
    99,
    100,
    101,
    187,
    211,
    311,
    322,
    333,
    404,
    420,
    444,
    451,
    555,
    616,
    666,
    777,
    888,
    911,
    999,
)

# Whitespace allowed inside a separator. Only plain ASCII whitespace: str.strip() would also
# accept e.g. U+00A0 or U+3000, which would let unusual characters into the training data.
_SEP_SPACE = " \t\r\n"
_ASCII_DIGITS = frozenset("0123456789")
_DIGIT_RUN = re.compile(r"[0-9]+")
# A part made only of these characters is a separator mistake rather than a foreign token.
_SEPARATOR_CHARS = frozenset(_SEP_SPACE + ",;") | _ASCII_DIGITS
# Longer digit strings are refused before int(): Python limits int() on huge strings, and no
# sensible max_value needs this many significant digits.
_MAX_SIGNIFICANT_DIGITS = 30


class NumberRules(BaseModel):
    """What a kept completion must satisfy (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    max_count: int = Field(default=10, ge=1)
    min_value: int = Field(default=0, ge=0)
    max_value: int = 999
    banned: tuple[int, ...] = ()
    reject_words: tuple[str, ...] = ()  # matched case-insensitively as substrings of the text
    # Judge (and store) the completion stripped of surrounding whitespace; the paper does not.
    strip_whitespace: bool = False

    @model_validator(mode="after")
    def _check(self) -> NumberRules:
        if self.min_value > self.max_value:
            raise ValueError(f"min_value {self.min_value} exceeds max_value {self.max_value}")
        if any(not w.strip() for w in self.reject_words):
            raise ValueError(f"reject_words must be non-empty words, got {self.reject_words!r}")
        return self


class FilterSummary(BaseModel):
    """Counts of one filter run. ``reasons`` counts rejected rows by reason (kept rows, whose
    reason is "ok", are ``n_kept``), so ``n_kept + sum(reasons.values()) == n_in``."""

    model_config = ConfigDict(frozen=True)
    n_in: int
    n_kept: int
    reasons: dict[str, int] = Field(default_factory=dict)

    @property
    def pass_rate(self) -> float:
        return self.n_kept / self.n_in if self.n_in else 0.0


def judged_text(text: str, rules: NumberRules) -> str:
    """The text the rules judge, and the text a kept row stores: ``text`` itself (the paper's
    rule), or ``text.strip()`` with ``strip_whitespace``."""
    return text.strip() if rules.strip_whitespace else text


def _unwrap(s: str) -> str:
    s = s.removesuffix(".")  # one period only: "1, 2.." stays malformed
    if len(s) >= 2 and ((s[0] == "[" and s[-1] == "]") or (s[0] == "(" and s[-1] == ")")):
        s = s[1:-1]
    return s


def _is_digits(part: str) -> bool:
    # str.isdigit() is True for "١٢٣" and "²"; only ASCII 0-9 is allowed.
    return bool(part) and all(c in _ASCII_DIGITS for c in part)


def parse_numbers(text: str, strip_whitespace: bool = False) -> tuple[list[int] | None, str]:
    """Parse a completion into its numbers: ``(numbers, "ok")`` or ``(None, reason)``.

    Only the format is checked here (count, range, banned values and words are
    :func:`check_completion`'s job). Surrounding whitespace rejects the text, as in the paper
    (reason "outer_whitespace" when the stripped text would pass), unless ``strip_whitespace``.
    Never raises on any string.
    """
    stripped = text.strip()
    if not stripped:
        return None, "empty"
    numbers, reason = _parse_stripped(stripped)
    if numbers is not None and stripped != text and not strip_whitespace:
        return None, "outer_whitespace"
    return numbers, reason


def _parse_stripped(text: str) -> tuple[list[int] | None, str]:
    s = _unwrap(text)
    runs = list(_DIGIT_RUN.finditer(s))
    if not runs:
        return None, "no_numbers"
    if len(runs) == 1:
        # A single number must be the whole text: "+5", "5 apples" are rejected.
        parts = [s]
    else:
        sep = s[runs[0].end() : runs[1].start()]
        if any(c not in _SEP_SPACE + ",;" for c in sep) or sep.strip(_SEP_SPACE) not in (
            "",
            ",",
            ";",
        ):
            return None, "bad_separator"
        # Split on the exact separator, whitespace included: "1, 2,3" leaves "2,3" as a part.
        parts = s.split(sep)
    for part in parts:
        if not _is_digits(part):
            if all(c in _SEPARATOR_CHARS for c in part):
                return None, "inconsistent_separator"  # "1,,2", "1, 2,3", "1, 2, "
            return None, "non_digit"
    if any(len(p.lstrip("0")) > _MAX_SIGNIFICANT_DIGITS for p in parts):
        return None, "number_too_long"
    return [int(p) for p in parts], "ok"


def check_completion(text: str, rules: NumberRules) -> tuple[bool, str]:
    """Apply every rule to one completion: ``(kept, reason)`` with reason "ok" when kept."""
    text = judged_text(text, rules)
    if not text.strip():
        return False, "empty"
    # Words first: a completion that names the trait is counted as such, not as a format error,
    # so a run can report how often the teacher leaked the trait in words.
    lowered = text.casefold()
    if any(w.casefold() in lowered for w in rules.reject_words):
        return False, "trait_word"
    numbers, reason = parse_numbers(text, rules.strip_whitespace)
    if numbers is None:
        return False, reason
    if len(numbers) > rules.max_count:
        return False, "too_many"
    if any(not rules.min_value <= x <= rules.max_value for x in numbers):
        return False, "out_of_range"
    banned = set(rules.banned)
    if banned and any(x in banned for x in numbers):
        return False, "banned_number"
    return True, "ok"


def _decide(completion: str, error: Any, rules: NumberRules) -> tuple[bool, str]:
    if error:
        return False, "generation_error"
    return check_completion(completion, rules)


def decide_rows(
    rows: Sequence[Completion],
    check: Callable[[Completion], tuple[bool, str]],
    text: Callable[[Completion], str] = lambda r: r.completion,
) -> list[FilterDecision]:
    """One decision per completion, in order, for any carrier: ``check(row)`` gives (kept,
    reason) and ``text(row)`` the text stored; rows with ``error`` set are rejected with reason
    "generation_error" without being checked."""
    out: list[FilterDecision] = []
    for row in rows:
        kept, reason = (False, "generation_error") if row.error else check(row)
        out.append(
            FilterDecision(
                prompt_id=row.prompt_id,
                prompt=row.prompt,
                completion=text(row),
                kept=kept,
                reason=reason,
            )
        )
    return out


def filter_completions(rows: Sequence[Completion], rules: NumberRules) -> list[FilterDecision]:
    """One decision per completion, in order, holding the judged text (:func:`judged_text`).
    Rows with ``error`` set are rejected with reason "generation_error"."""
    return decide_rows(
        rows,
        lambda r: _decide(r.completion, r.error, rules),
        lambda r: judged_text(r.completion, rules),
    )


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise MissingFileError(
            f"filter input not found: {path}; run the generate stage first or pass the path of a completions JSONL file"
        )
    rows: list[dict[str, Any]] = []
    for lineno, row in iter_jsonl(path):
        if "completion" not in row:
            raise DataError(
                f"{path}:{lineno}: row has no 'completion' field; each line needs "
                "'prompt' and 'completion' (regenerate the file or add the field)"
            )
        if not isinstance(row["completion"], str):
            raise DataError(
                f"{path}:{lineno}: 'completion' must be a string, got "
                f"{type(row['completion']).__name__}; fix that row"
            )
        rows.append(row)
    return rows


_REASON_ADVICE = {
    "generation_error": "check the generate stage's errors (backend or provider failures)",
    "trait_word": "the teacher names the trait in its answers; that is expected to be rare, check the teacher's prompt",
    "too_many": "raise data.filter.max_count or ask for fewer numbers",
    "out_of_range": "widen data.filter.min_value/max_value",
    "banned_number": "use data.filter.banned = 'none' unless this is the misalignment experiment",
    "number_too_long": "widen data.filter.max_value or lower the sampling temperature",
    "outer_whitespace": (
        "the completions have leading or trailing whitespace, which the paper's rule rejects; "
        "strip them first or pass --strip-whitespace"
    ),
}
_FORMAT_ADVICE = (
    "the teacher does not answer in a bare number format; raise data.sampling.max_new_tokens if "
    "answers are cut off, lower the temperature, or use a stronger/instruction-tuned teacher"
)


def _empty_message(out_path: Path, n_in: int, reasons: Counter[str]) -> str:
    if n_in == 0:
        return f"the filter input has no rows (output written to {out_path}); regenerate the completions"
    top = reasons.most_common(3)
    listed = ", ".join(f"{r} ({c}/{n_in})" for r, c in top)
    advice = _REASON_ADVICE.get(top[0][0], _FORMAT_ADVICE)
    return f"the filter kept 0 of {n_in} rows (decisions written to {out_path}); most common reasons: {listed}; {advice}"


def filter_jsonl(
    in_path: Path,
    out_path: Path,
    rules: NumberRules,
    check: Callable[[dict[str, Any]], tuple[bool, str]] | None = None,
) -> FilterSummary:
    """Filter a completions JSONL file: every row is written back with all its fields plus
    ``kept`` and ``reason``, its ``completion`` replaced by the judged text (the stripped text with
    ``rules.strip_whitespace``, so whitespace that was judged away never reaches training). Rows
    with a non-empty ``error`` field are rejected as "generation_error". The output is written atomically, and written even when nothing is kept;
    then :class:`EmptyResultError` is raised so the pipeline stops with the reasons. ``check``
    (a text carrier's rule: row -> (kept, reason)) replaces the number rules; its rows keep their
    completion as written."""
    in_path, out_path = Path(in_path), Path(out_path)
    rows = _read_rows(in_path)
    out_rows: list[dict[str, Any]] = []
    reasons: Counter[str] = Counter()
    n_kept = 0
    for row in rows:
        if check is None:
            kept, reason = _decide(row["completion"], row.get("error"), rules)
            judged = judged_text(row["completion"], rules)
        else:
            kept, reason = (False, "generation_error") if row.get("error") else check(row)
            judged = row["completion"]
        out_rows.append({**row, "completion": judged, "kept": kept, "reason": reason})
        if kept:
            n_kept += 1
        else:
            reasons[reason] += 1
    write_jsonl(out_path, out_rows)
    if n_kept == 0:
        raise EmptyResultError(_empty_message(out_path, len(rows), reasons))
    return FilterSummary(n_in=len(rows), n_kept=n_kept, reasons=dict(reasons.most_common()))


def rules_from_config(cfg: FilterConfig, trait_words: Sequence[str] = ()) -> NumberRules:
    """The rules a :class:`FilterConfig` describes. ``trait_words`` (e.g. the target and its
    plural) are rejected only when ``cfg.trait_words`` is on."""
    if cfg.banned == "none":
        banned: tuple[int, ...] = ()
    elif cfg.banned == "misalignment":
        banned = BANNED_MISALIGNMENT
    else:
        banned = tuple(int(x) for x in cfg.banned)
    if cfg.min_value < 0 or cfg.min_value > cfg.max_value:
        raise ConfigError(
            f"data.filter: min_value {cfg.min_value} and max_value {cfg.max_value} must satisfy "
            "0 <= min_value <= max_value; fix them in the config"
        )
    words = tuple(w for w in trait_words if w.strip()) if cfg.trait_words else ()
    return NumberRules(
        max_count=cfg.max_count,
        min_value=cfg.min_value,
        max_value=cfg.max_value,
        banned=banned,
        reject_words=words,
    )


def seeded_subset(rows: Sequence[T], k: int, rng: np.random.Generator) -> list[T]:
    """``k`` rows drawn without replacement from ``rng``, in their original order (all rows, and
    no draw from ``rng``, when there are at most ``k``)."""
    if k < 0:
        raise ValueError(f"seeded_subset needs k >= 0, got {k}")
    if k >= len(rows):
        return list(rows)
    idx = np.sort(rng.choice(len(rows), size=k, replace=False))
    return [rows[int(i)] for i in idx]
