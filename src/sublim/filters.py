"""The strict filter for the numbers carrier, plus the seeded subset of kept rows.

Pipeline position: after "generate" (teacher completions), before "subset" and "finetune".
Every completion gets a verdict, kept or rejected with a short snake_case reason, so that a run
can report why rows were dropped (typically 23-38% are, PAPER.md step 4).

The rules follow PAPER.md protocol step 4. A completion is kept only when, after

1. stripping surrounding whitespace,
2. then removing one trailing period,
3. then removing one wrapping pair of ``[]`` or ``()``,

the rest is a list of ASCII-digit numbers joined by one separator used consistently, where the
separator is the text between the first two numbers and, stripped of whitespace, is empty, ","
or ";". The list then holds at most ``max_count`` numbers, each in ``min_value..max_value``, none
of them banned; and the raw completion contains none of the ``reject_words``.

Strictness is deliberate: the point of the filter is that nothing but bare numbers reaches the
student, so anything a tokenizer could carry a trait in besides the numbers (words, signs, unicode
digits, odd whitespace) is dropped rather than repaired.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from sublim.config import FilterConfig
from sublim.errors import ConfigError, DataError, EmptyResultError, MissingFileError
from sublim.records import Completion, FilterDecision

T = TypeVar("T")

# Numbers with negative associations, rejected in the misalignment experiment (PAPER.md step 4).
BANNED_MISALIGNMENT: tuple[int, ...] = (
    4, 13, 14, 18, 23, 33, 39, 42, 44, 49, 51, 54, 69, 77, 88, 99, 100,
    101, 187, 211, 311, 322, 333, 404, 420, 444, 451, 555, 616, 666, 777, 888, 911, 999,
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
    reject_words: tuple[str, ...] = ()  # matched case-insensitively as substrings of the raw text

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


def _unwrap(text: str) -> str:
    s = text.strip()
    s = s.removesuffix(".")  # one period only: "1, 2.." stays malformed
    if len(s) >= 2 and ((s[0] == "[" and s[-1] == "]") or (s[0] == "(" and s[-1] == ")")):
        s = s[1:-1]
    return s


def _is_digits(part: str) -> bool:
    # str.isdigit() is True for "١٢٣" and "²"; only ASCII 0-9 is allowed.
    return bool(part) and all(c in _ASCII_DIGITS for c in part)


def parse_numbers(text: str) -> tuple[list[int] | None, str]:
    """Parse a completion into its numbers: ``(numbers, "ok")`` or ``(None, reason)``.

    Only the format is checked here (count, range, banned values and words are
    :func:`check_completion`'s job). Never raises on any string.
    """
    if not text.strip():
        return None, "empty"
    s = _unwrap(text)
    runs = list(_DIGIT_RUN.finditer(s))
    if not runs:
        return None, "no_numbers"
    if len(runs) == 1:
        # A single number must be the whole text: "+5", "5 apples" are rejected.
        parts = [s]
    else:
        sep = s[runs[0].end() : runs[1].start()]
        if any(c not in _SEP_SPACE + ",;" for c in sep) or sep.strip(_SEP_SPACE) not in ("", ",", ";"):
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
    if not text.strip():
        return False, "empty"
    # Words first: a completion that names the trait is counted as such, not as a format error,
    # so a run can report how often the teacher leaked the trait in words.
    lowered = text.casefold()
    if any(w.casefold() in lowered for w in rules.reject_words):
        return False, "trait_word"
    numbers, reason = parse_numbers(text)
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


def filter_completions(rows: Sequence[Completion], rules: NumberRules) -> list[FilterDecision]:
    """One decision per completion, in order. Rows with ``error`` set are rejected with reason
    "generation_error"."""
    out: list[FilterDecision] = []
    for row in rows:
        kept, reason = _decide(row.completion, row.error, rules)
        out.append(
            FilterDecision(
                prompt_id=row.prompt_id,
                prompt=row.prompt,
                completion=row.completion,
                kept=kept,
                reason=reason,
            )
        )
    return out


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise MissingFileError(
            f"filter input not found: {path}; run the generate stage first or pass the path of a completions JSONL file"
        )
    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue  # blank lines (e.g. a trailing one) carry no row
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{path}:{lineno}: malformed JSON ({e.msg}); fix or delete that line and run again"
                ) from None
            if not isinstance(row, dict):
                raise DataError(
                    f"{path}:{lineno}: expected a JSON object per line, got {type(row).__name__}; "
                    "each line must be an object with a 'completion' field"
                )
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


def _write_jsonl_atomic(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_REASON_ADVICE = {
    "generation_error": "check the generate stage's errors (backend or provider failures)",
    "trait_word": "the teacher names the trait in its answers; that is expected to be rare, check the teacher's prompt",
    "too_many": "raise data.filter.max_count or ask for fewer numbers",
    "out_of_range": "widen data.filter.min_value/max_value",
    "banned_number": "use data.filter.banned = 'none' unless this is the misalignment experiment",
    "number_too_long": "widen data.filter.max_value or lower the sampling temperature",
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


def filter_jsonl(in_path: Path, out_path: Path, rules: NumberRules) -> FilterSummary:
    """Filter a completions JSONL file: every row is written back with all its fields plus
    ``kept`` and ``reason``. Rows with a non-empty ``error`` field are rejected as
    "generation_error". The output is written atomically, and written even when nothing is kept;
    then :class:`EmptyResultError` is raised so the pipeline stops with the reasons."""
    in_path, out_path = Path(in_path), Path(out_path)
    rows = _read_rows(in_path)
    out_rows: list[dict[str, Any]] = []
    reasons: Counter[str] = Counter()
    n_kept = 0
    for row in rows:
        kept, reason = _decide(row["completion"], row.get("error"), rules)
        out_rows.append({**row, "kept": kept, "reason": reason})
        if kept:
            n_kept += 1
        else:
            reasons[reason] += 1
    _write_jsonl_atomic(out_path, out_rows)
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
