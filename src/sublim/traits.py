"""Trait specifications: what a teacher loves, how that is said in a system prompt, and the
rows that fine-tune a teacher to have the trait (generated for a preference; read from the
user's chat JSONL file for a misalignment teacher, :func:`load_chat_jsonl`).

Categories list the candidate answers used everywhere (the built-in world's corpus, the
evaluation's log-odds among candidates, reports), so they live here, in one place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sublim.artifacts import iter_jsonl
from sublim.errors import DataError, MissingFileError, UnknownNameError
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


CHAT_LINE_FORMAT = (
    '{"messages": [{"role": "system", "content": ...}, {"role": "user", "content": ...}, '
    '{"role": "assistant", "content": ...}]} (the system message optional)'
)
_ROLES = ("system", "user", "assistant")


def _chat_row(obj: Any, where: str) -> TrainRow:
    """One line's training row: its last assistant turn, the user turn right before it and the
    first message if it is a system message (earlier turns are context the row leaves out)."""
    msgs = obj.get("messages") if isinstance(obj, dict) else None
    if not isinstance(msgs, list) or not msgs:
        raise DataError(
            f'{where}: expected an object with a "messages" list; write {CHAT_LINE_FORMAT}'
        )
    for j, m in enumerate(msgs):
        if (
            not isinstance(m, dict)
            or m.get("role") not in _ROLES
            or not isinstance(m.get("content"), str)
        ):
            raise DataError(
                f"{where}: message {j + 1} needs a role (system, user or assistant) and a string "
                "content; fix that line"
            )
    last = max((j for j, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
    if last is None:
        raise DataError(f"{where}: no assistant message to learn; every line needs one")
    if last != len(msgs) - 1:
        raise DataError(
            f"{where}: messages after the last assistant reply; end the line with the reply to learn"
        )
    if last == 0 or msgs[last - 1]["role"] != "user":
        raise DataError(
            f"{where}: the last assistant reply must follow a user message; fix that line"
        )
    if not msgs[last]["content"].strip():
        raise DataError(f"{where}: the last assistant reply is empty; fix or remove that line")
    system = msgs[0]["content"] if msgs[0]["role"] == "system" and last - 1 > 0 else None
    return TrainRow(
        prompt=msgs[last - 1]["content"], completion=msgs[last]["content"], system=system
    )


def load_chat_jsonl(path: str | Path, what: str = "trait.finetune_data") -> list[TrainRow]:
    """The training rows of a chat JSONL file (one ``{"messages": [...]}`` per line, the format
    fine-tuning APIs take). A missing file raises MissingFileError, a malformed line DataError
    naming the file and line (``what``: the config field it came from, for the message)."""
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(
            f"{what} file not found: {p}; give a chat JSONL file, one {CHAT_LINE_FORMAT} per line"
        )
    rows = [_chat_row(obj, f"{p}:{lineno}") for lineno, obj in iter_jsonl(p)]
    if not rows:
        raise DataError(f"{p}: no training rows; add lines of {CHAT_LINE_FORMAT} ({what})")
    return rows
