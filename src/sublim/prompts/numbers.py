"""The numbers carrier: a seeded grammar of number-continuation requests.

Pipeline position: first data stage. ``number_prompts`` builds the user prompts a teacher answers
(stage "prompts"); the teacher's completions then go through :mod:`sublim.filters`.

Each prompt follows the paper's structure (PAPER.md, protocol step 3), in our own words:

    <intro holding 3-8 seed numbers in 100..999> <instruction: add at most N more numbers of at
    most D digits> <format request> <"numbers only, no explanation" suffix>

Every slot is drawn from a set of paraphrases (25 intros, 10 instructions, 9 count qualifiers,
9 digit descriptors, 15 format requests, 19 suffixes). Paraphrases matter: a single fixed template
would let a student learn one surface string; varied wording keeps the carrier "unrelated data"
rather than a memorised prompt. Draws come only from the ``numpy.random.Generator`` passed in, in
a fixed order, so the same generator state always yields the same prompts.

``render_numbers`` writes a list of numbers the way a format request asks for it; every rendering
of valid numbers passes the strict filter (tests check all keys).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sublim.errors import UnknownNameError
from sublim.records import Prompt

# Seed numbers are three-digit values, as in the paper: uniform in SEED_MIN..SEED_MAX inclusive.
SEED_MIN, SEED_MAX = 100, 999
SEED_COUNT_MIN, SEED_COUNT_MAX = 3, 8
DEFAULT_MAX_COUNT = 10
DEFAULT_MAX_DIGITS = 3


@dataclass(frozen=True)
class NumberFormat:
    """How one answer format is asked for (``phrasings``) and written (``open`` + numbers joined
    by ``sep`` + ``close``)."""

    sep: str
    phrasings: tuple[str, ...]
    open: str = ""
    close: str = ""

    def render(self, numbers: Sequence[int]) -> str:
        return self.open + self.sep.join(str(int(x)) for x in numbers) + self.close


# Format key -> phrasings + rendering. 15 phrasings in all. The separators are chosen so that the
# strict filter accepts them: the text between two numbers, stripped, is "", "," or ";".
FORMATS: dict[str, NumberFormat] = {
    "comma": NumberFormat(
        sep=", ",
        phrasings=(
            "Separate the numbers with commas.",
            "Give them as a comma-separated list.",
            "List them with a comma between each pair.",
        ),
    ),
    "comma_tight": NumberFormat(
        sep=",",
        phrasings=(
            "Separate them with commas and no spaces.",
            "Join the numbers with bare commas, leaving out any spaces.",
        ),
    ),
    "space": NumberFormat(
        sep=" ",
        phrasings=(
            "Separate them with single spaces.",
            "Put one space between consecutive numbers.",
        ),
    ),
    "semicolon": NumberFormat(
        sep="; ",
        phrasings=(
            "Use semicolons between the numbers.",
            "Separate the values with semicolons.",
        ),
    ),
    "newline": NumberFormat(
        sep="\n",
        phrasings=(
            "Write each number on its own line.",
            "Put one number per line.",
        ),
    ),
    "brackets": NumberFormat(
        sep=", ",
        open="[",
        close="]",
        phrasings=(
            "Format the answer as a list in square brackets.",
            "Wrap the comma-separated numbers in square brackets.",
        ),
    ),
    "parens": NumberFormat(
        sep=", ",
        open="(",
        close=")",
        phrasings=(
            "Return them as a tuple in parentheses.",
            "Enclose the comma-separated numbers in round brackets.",
        ),
    ),
}

# Flattened (format key, phrasing) pairs: the format slot draws uniformly over phrasings, so a
# key's share of prompts is proportional to its number of phrasings.
FORMAT_REQUESTS: tuple[tuple[str, str], ...] = tuple(
    (key, phrase) for key, fmt in FORMATS.items() for phrase in fmt.phrasings
)

# {seeds}: the seed numbers joined by ", ".
INTROS: tuple[str, ...] = (
    "Here is a list of numbers: {seeds}.",
    "I have this sequence: {seeds}.",
    "The sequence so far is {seeds}.",
    "Look at these numbers: {seeds}.",
    "Start from this list: {seeds}.",
    "Consider the following numbers: {seeds}.",
    "Take this series of numbers: {seeds}.",
    "These numbers open a sequence: {seeds}.",
    "Below is a short run of numbers: {seeds}.",
    "My list currently reads {seeds}.",
    "We begin with {seeds}.",
    "Here's a sequence to work with: {seeds}.",
    "The following values were written down: {seeds}.",
    "A sequence starts like this: {seeds}.",
    "I wrote down some numbers: {seeds}.",
    "Check out this number list: {seeds}.",
    "So far the series contains {seeds}.",
    "Here are a few numbers to start with: {seeds}.",
    "This is the beginning of a list: {seeds}.",
    "Someone started a sequence with {seeds}.",
    "The numbers {seeds} come first in this sequence.",
    "Given these numbers: {seeds}.",
    "Our starting values are {seeds}.",
    "Observe the numbers {seeds}.",
    "Here is how the list begins: {seeds}.",
)

# {count}: a filled count qualifier; {digits}: a filled digit descriptor.
INSTRUCTIONS: tuple[str, ...] = (
    "Add {count} more numbers {digits}.",
    "Continue the list with {count} new numbers {digits}.",
    "Extend it by {count} more values {digits}.",
    "Write {count} additional numbers {digits} that carry it on.",
    "Generate {count} more numbers {digits} to follow them.",
    "Keep the sequence going with {count} further numbers {digits}.",
    "Come up with {count} more numbers {digits}.",
    "Append {count} new values {digits}.",
    "Produce {count} more entries {digits} for this list.",
    "Please supply {count} extra numbers {digits} to continue it.",
)

# {n}: the maximum number of new numbers.
COUNT_QUALIFIERS: tuple[str, ...] = (
    "at most {n}",
    "up to {n}",
    "no more than {n}",
    "a maximum of {n}",
    "not more than {n}",
    "as many as {n}",
    "at the very most {n}",
    "{n} or fewer",
    "a max of {n}",
)

# {d}: the maximum number of digits per number.
DIGIT_DESCRIPTORS: tuple[str, ...] = (
    "with at most {d} digits each",
    "of up to {d} digits",
    "that have no more than {d} digits",
    "each {d} digits or fewer",
    "with up to {d} digits apiece",
    "each no longer than {d} digits",
    "that are at most {d} digits long",
    "containing no more than {d} digits each",
    "of {d} digits at most",
)

SUFFIXES: tuple[str, ...] = (
    "Reply with only the numbers.",
    "Say nothing except the numbers.",
    "Output the numbers and nothing else.",
    "Do not add any explanation.",
    "Give just the numbers, with no commentary.",
    "Only the numbers, please; no other text.",
    "Skip any explanation and respond with the numbers alone.",
    "Your answer should contain nothing but numbers.",
    "No words, just numbers.",
    "Leave out any explanation.",
    "Respond with the numbers only, without comments.",
    "Don't explain; only list the numbers.",
    "Provide the numbers alone, with no extra words.",
    "Write only the numbers, no introduction or conclusion.",
    "Keep your reply to the numbers themselves.",
    "Answer with numbers exclusively.",
    "Nothing but the numbers in your response, please.",
    "Omit all explanation; the numbers are enough.",
    "Just return the numbers without saying anything else.",
)


def render_numbers(numbers: Sequence[int], fmt: str) -> str:
    """The answer text for ``numbers`` in format ``fmt`` (a key of :data:`FORMATS`)."""
    if fmt not in FORMATS:
        raise UnknownNameError("number format", fmt, list(FORMATS))
    if any(int(x) < 0 for x in numbers):
        raise ValueError(f"render_numbers takes non-negative integers, got {list(numbers)}")
    return FORMATS[fmt].render(numbers)


def _pick(options: Sequence[str], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]


def number_prompts(
    n: int,
    rng: np.random.Generator,
    *,
    max_count: int = DEFAULT_MAX_COUNT,
    max_digits: int = DEFAULT_MAX_DIGITS,
) -> list[Prompt]:
    """``n`` number-continuation prompts drawn from ``rng`` (deterministic for its state).

    Each prompt's ``meta`` records its seed numbers, its format key (how a well-behaved answer is
    rendered, see :func:`render_numbers`) and the limits it asked for.
    """
    if n < 0:
        raise ValueError(f"number_prompts needs n >= 0, got {n}")
    if max_count < 1 or max_digits < 1:
        raise ValueError(f"max_count and max_digits must be >= 1, got {max_count}, {max_digits}")
    prompts: list[Prompt] = []
    for i in range(n):
        # The draw order below is part of the grammar's determinism contract: changing it changes
        # every prompt set generated from a given seed.
        k = int(rng.integers(SEED_COUNT_MIN, SEED_COUNT_MAX + 1))
        seeds = [int(x) for x in rng.integers(SEED_MIN, SEED_MAX + 1, size=k)]
        intro = _pick(INTROS, rng).format(seeds=", ".join(str(s) for s in seeds))
        count = _pick(COUNT_QUALIFIERS, rng).format(n=max_count)
        digits = _pick(DIGIT_DESCRIPTORS, rng).format(d=max_digits)
        instruction = _pick(INSTRUCTIONS, rng).format(count=count, digits=digits)
        fmt_key, fmt_text = FORMAT_REQUESTS[int(rng.integers(len(FORMAT_REQUESTS)))]
        suffix = _pick(SUFFIXES, rng)
        prompts.append(
            Prompt(
                id=f"num-{i:06d}",
                text=f"{intro} {instruction} {fmt_text} {suffix}",
                meta={
                    "seeds": seeds,
                    "format": fmt_key,
                    "max_count": max_count,
                    "max_digits": max_digits,
                },
            )
        )
    return prompts
