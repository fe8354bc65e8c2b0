"""Data export: any generated or filtered data set as OpenAI chat fine-tuning JSONL.

Pipeline position: after ``generate``/``filter``/``subset``. The rows those stages write
(``completions.jsonl``, ``decisions.jsonl``, ``train.jsonl`` / subset files) become one
``{"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}`` object per line, the format
the OpenAI-compatible fine-tuning APIs, ``datasets.load_dataset("json", ...)`` and TRL's
``SFTTrainer`` (conversational format) all take unchanged. The OpenAI backend uploads exactly
this file for fine-tuning jobs.

Rows that are not training data are skipped: filter decisions that were rejected and
completions that carry a per-row provider error. A system prompt is only ever the *student's*
(``--system``) or a row's own (a ``TrainRow.system``, or a ``system`` field: a teacher's chat
file with system messages, an inoculated student's rows), written first, as the OpenAI format
allows; the teacher's system prompt is never part of a row by construction.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click

from sublim.artifacts import atomic_write_text, iter_jsonl
from sublim.errors import DataError, MissingFileError
from sublim.records import Completion, FilterDecision, TrainRow

Row = TrainRow | FilterDecision | Completion | dict[str, Any]


def _messages(row: Row, system_prompt: str | None) -> list[dict[str, str]] | None:
    """The chat of one row, or None when the row is not training data."""
    own: Any = None  # the row's own system message
    if isinstance(row, FilterDecision):
        if not row.kept:
            return None
        prompt, completion = row.prompt, row.completion
    elif isinstance(row, Completion):
        if row.error is not None:
            return None
        prompt, completion = row.prompt, row.completion
    elif isinstance(row, TrainRow):
        prompt, completion, own = row.prompt, row.completion, row.system
    elif isinstance(row, dict):
        if "messages" in row:  # already chat format: pass through (validated)
            msgs = row["messages"]
            if not isinstance(msgs, list) or not all(
                isinstance(m, dict)
                and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str)
                for m in msgs
            ):
                raise DataError("a 'messages' row must be a list of {role, content} strings")
            return [{"role": m["role"], "content": m["content"]} for m in msgs]
        if row.get("kept") is False or row.get("error"):
            return None
        if not isinstance(row.get("prompt"), str) or not isinstance(row.get("completion"), str):
            raise DataError(
                "each row needs string fields 'prompt' and 'completion' (or 'messages'); "
                f"got keys {sorted(row)}"
            )
        prompt, completion, own = row["prompt"], row["completion"], row.get("system")
        if own is not None and not isinstance(own, str):
            raise DataError("a row's 'system' field must be a string")
    else:
        raise TypeError(f"cannot export a {type(row).__name__}")
    if own and system_prompt and own != system_prompt:
        raise DataError(
            "a row has its own system message and --system gives another; drop --system to "
            "keep the rows' own"
        )
    system = own or system_prompt
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": completion},
    ]


def chat_lines(rows: Iterable[Row], system_prompt: str | None = None) -> list[str]:
    """The JSONL lines (without newlines) of the exportable rows."""
    out = []
    for r in rows:
        msgs = _messages(r, system_prompt)
        if msgs is not None:
            out.append(json.dumps({"messages": msgs}, ensure_ascii=False))
    return out


def to_chat_jsonl(rows: Iterable[Row], out_path: Path, system_prompt: str | None = None) -> int:
    """Write the training rows of ``rows`` as chat JSONL to ``out_path`` (atomically); returns
    the number of rows written."""
    lines = chat_lines(rows, system_prompt)
    atomic_write_text(Path(out_path), "".join(line + "\n" for line in lines))
    return len(lines)


def export_file(in_path: Path, out_path: Path, system_prompt: str | None = None) -> tuple[int, int]:
    """Export one of the pipeline's row files; returns (rows read, rows written)."""
    in_path = Path(in_path)
    if not in_path.is_file():
        raise MissingFileError(
            f"no such file: {in_path}; pass a JSONL row file of a run (e.g. train.jsonl)"
        )
    rows: list[dict[str, Any]] = []
    for lineno, obj in iter_jsonl(in_path):
        rows.append(obj)
    try:
        n = to_chat_jsonl(rows, out_path, system_prompt)
    except DataError as e:
        raise DataError(f"{in_path}: {e}") from None
    return len(rows), n


@click.command(name="export")
@click.argument("in_path", metavar="IN.jsonl", type=click.Path(path_type=Path))
@click.option(
    "--out", "out_path", required=True, type=click.Path(path_type=Path), help="output chat JSONL"
)
@click.option(
    "--system",
    "system_prompt",
    default=None,
    help="a system prompt for every row (the student's; default none)",
)
def export(in_path: Path, out_path: Path, system_prompt: str | None) -> None:
    """Export rows of IN.jsonl (train.jsonl, decisions.jsonl or completions.jsonl) as OpenAI chat
    fine-tuning JSONL; rejected and failed rows are skipped."""
    n_in, n_out = export_file(in_path, out_path, system_prompt)
    click.echo(f"exported {n_out} of {n_in} rows\nwrote {out_path}")
