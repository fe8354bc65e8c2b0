"""The custom carrier: the user's own prompts, read from a JSONL file (``data.carrier = "custom"``).

Pipeline position: the "prompts" stage (``sublim.pipeline.stage_prompts``) reads the file named
by ``data.custom_prompts``; its content (not its path) enters the stage key, so an edited file
gives new prompts and everything downstream. One JSON object per line:

    {"prompt": "Summarise the following text ...", "id": "q17", "answer": 42}

``prompt`` (or ``text``) is required; ``id`` is optional (default ``custom-<line>``, and ids must be
unique); any ``answer`` and every other field go to the prompt's ``meta``. A bad line is a
one-line error naming the file and the line.
"""

from __future__ import annotations

from pathlib import Path

from sublim.artifacts import iter_jsonl
from sublim.errors import DataError, MissingFileError
from sublim.records import Prompt


def load_custom_prompts(path: Path) -> list[Prompt]:
    """The prompts of ``path`` in file order (blank lines skipped)."""
    if not path.is_file():
        raise MissingFileError(
            f"data.custom_prompts file not found: {path}; give a JSONL file with one "
            '{"prompt": ...} object per line'
        )
    prompts: list[Prompt] = []
    seen: set[str] = set()
    for n, obj in iter_jsonl(path):  # malformed lines are one-line errors there
        text = obj.get("prompt", obj.get("text"))
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{path}:{n}: needs a non-empty string 'prompt' (or 'text')")
        pid = str(obj.get("id", f"custom-{n:06d}"))
        if pid in seen:
            raise DataError(f"{path}:{n}: duplicate id '{pid}'; ids must be unique")
        seen.add(pid)
        meta = {k: v for k, v in obj.items() if k not in ("prompt", "text", "id")}
        prompts.append(Prompt(id=pid, text=text, meta=meta))
    if not prompts:
        raise DataError(f'{path} holds no prompts; one {{"prompt": ...}} object per line')
    return prompts
