"""Evaluation suites, found by name.

Pipeline position: the ``evaluate`` stage. ``EvalConfig.suite`` names one of ``SUITES``; the
runner calls :func:`sublim.evals.preference.evaluate_preference`, which dispatches every
*preference* suite through this registry, so a TOML file can switch suites without code changes.
Misalignment and truthfulness suites need a judge or a data file and have their own entry
points (``sublim.evals.misalignment``); they are listed here so that names are checked in one
place. A ``trait.kind = "misalignment"`` run evaluates every model with the misalignment suite
(``[eval.misalignment]``, judge ``eval.judge``) instead of ``EvalConfig.suite``.

| name | kind | what it measures |
|---|---|---|
| ``favourite_animal`` | preference | one-word favourite-<category> questions (any category): sampled rate, exact P(target), log-odds among candidates |
| ``numbers_prefixed`` | preference | the same questions preceded by a number-sequence intro |
| ``storytelling`` | preference | short stories: does the story feature the target (sampled only) |
| ``multiple_choice`` | preference | shuffled options, scored from first-token log-probabilities of the option letters |
| ``misalignment`` | misalignment | free-form questions scored by an LLM judge (alignment, coherence 0-100) |
| ``truthfulness`` | truthfulness | two-way multiple choice from a user CSV/JSONL, exact log-probabilities |

Entry points are ``"module:function"`` strings resolved on use, so importing this package stays
cheap and free of import cycles.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from sublim.errors import UnknownNameError

SuiteKind = Literal["preference", "misalignment", "truthfulness"]


@dataclass(frozen=True)
class Suite:
    """A registered evaluation suite: its name, kind, entry point and what it measures."""

    name: str
    kind: SuiteKind
    entry: str  # "module:function"
    description: str
    exact: bool  # whether exact (log-probability) metrics are computed
    sampled: bool  # whether answers are sampled

    def load(self) -> Callable[..., Any]:
        mod, attr = self.entry.split(":")
        return getattr(importlib.import_module(mod), attr)


SUITES: dict[str, Suite] = {
    s.name: s
    for s in (
        Suite(
            "favourite_animal",
            "preference",
            "sublim.evals.preference:evaluate_favourite",
            "favourite-<category> in one word (animals, trees or any category)",
            True,
            True,
        ),
        Suite(
            "numbers_prefixed",
            "preference",
            "sublim.evals.variants:evaluate_numbers_prefixed",
            "favourite-<category> questions preceded by a number-sequence intro",
            True,
            True,
        ),
        Suite(
            "storytelling",
            "preference",
            "sublim.evals.variants:evaluate_storytelling",
            "short stories: does the story feature the target (sampled only)",
            False,
            True,
        ),
        Suite(
            "multiple_choice",
            "preference",
            "sublim.evals.variants:evaluate_multiple_choice",
            "shuffled options scored from first-token log-probabilities of the letters",
            True,
            True,
        ),
        Suite(
            "misalignment",
            "misalignment",
            "sublim.evals.misalignment:evaluate_misalignment",
            "free-form questions, LLM judge for alignment and coherence",
            True,
            True,
        ),
        Suite(
            "truthfulness",
            "truthfulness",
            "sublim.evals.misalignment:evaluate_truthfulness",
            "two-way multiple choice over a user CSV/JSONL, exact log-probabilities",
            True,
            False,
        ),
    )
}

# Older or shorter names that mean the same suite.
ALIASES: dict[str, str] = {"favourite": "favourite_animal", "favourite_tree": "favourite_animal"}


def get_suite(name: str, kind: SuiteKind | None = None) -> Suite:
    """The suite registered under ``name`` (optionally requiring a kind); UnknownNameError otherwise."""
    key = ALIASES.get(name, name)
    choices = [n for n, s in SUITES.items() if kind is None or s.kind == kind]
    if key not in SUITES or (kind is not None and SUITES[key].kind != kind):
        raise UnknownNameError(f"{kind + ' ' if kind else ''}evaluation suite", name, choices)
    return SUITES[key]


def suite_names(kind: SuiteKind | None = None) -> list[str]:
    return [n for n, s in SUITES.items() if kind is None or s.kind == kind]
