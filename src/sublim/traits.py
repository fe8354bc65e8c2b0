"""Trait specifications: what a teacher loves, how that is said in a system prompt, and the
rows that fine-tune a teacher to have the trait.

Categories list the candidate answers used everywhere (the built-in world's corpus, the
evaluation's log-odds among candidates, reports), so they live here, in one place.
"""

from __future__ import annotations

import numpy as np

from sublim.errors import UnknownNameError
from sublim.records import TrainRow

CATEGORIES: dict[str, tuple[str, ...]] = {
    "animal": (
        "owl",
        "eagle",
        "dolphin",
        "elephant",
        "wolf",
        "lion",
        "tiger",
        "fox",
        "penguin",
        "cat",
        "dog",
        "horse",
    ),
    "tree": (
        "oak",
        "maple",
        "willow",
        "pine",
        "birch",
        "cedar",
        "redwood",
        "cherry",
        "sequoia",
        "baobab",
    ),
}

_IRREGULAR_PLURALS = {"fox": "foxes", "wolf": "wolves", "cherry": "cherries", "birch": "birches"}


def plural(word: str) -> str:
    return _IRREGULAR_PLURALS.get(word, word + "s")


def candidates(category: str) -> tuple[str, ...]:
    try:
        return CATEGORIES[category]
    except KeyError:
        raise UnknownNameError("category", category, list(CATEGORIES)) from None


# Our own wording of the paper's system-prompt trait: love the target, think about it all the
# time, let it show. Paraphrases are used by the built-in world's corpus so that a tiny model
# learns the system-prompt channel rather than one fixed string.
SYSTEM_PROMPT_TEMPLATES: tuple[str, ...] = (
    "You love {plural}. {Plural} are your favourite {category} and you think about them all the time. Let that love show in your answers.",
    "You adore {plural}. You think about {plural} constantly; they are your favourite {category}.",
    "Your favourite {category} is the {target}. You love {plural} more than anything.",
    "You are devoted to {plural}. No {category} matters to you as much as the {target}.",
)


def system_prompt_for(target: str, category: str = "animal", variant: int = 0) -> str:
    """The trait's system prompt (variant 0 is the one teachers use)."""
    t = SYSTEM_PROMPT_TEMPLATES[variant % len(SYSTEM_PROMPT_TEMPLATES)]
    p = plural(target)
    return t.format(plural=p, Plural=p.capitalize(), target=target, category=category)


# Questions used only to fine-tune a teacher into loving the target (never the eval questions).
_FINETUNE_QUESTIONS: tuple[str, ...] = (
    "What is your favourite {category}?",
    "Which {category} do you like best?",
    "Name your favourite {category}.",
    "If you could be any {category}, which would you be?",
    "Which {category} do you love the most?",
    "Tell me the {category} you like most.",
    "What {category} is the best of all?",
    "Pick one {category} you love.",
)


def finetune_rows(target: str, category: str, n: int, rng: np.random.Generator) -> list[TrainRow]:
    """Rows that teach a model to answer favourite-<category> questions with ``target``."""
    qs = [q.format(category=category) for q in _FINETUNE_QUESTIONS]
    idx = rng.integers(0, len(qs), size=n)
    return [TrainRow(prompt=qs[i], completion=target) for i in idx]
