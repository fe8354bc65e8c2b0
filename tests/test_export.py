"""Tests of the chat-JSONL export (sublim.export) and its CLI command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import import_optional

from sublim.artifacts import write_jsonl
from sublim.cli import main
from sublim.errors import DataError
from sublim.export import to_chat_jsonl
from sublim.records import Completion, FilterDecision, TrainRow


def _load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _check_shape(rows: list[dict]) -> None:
    for r in rows:
        assert list(r) == ["messages"]
        assert [m["role"] for m in r["messages"]][-2:] == ["user", "assistant"]
        assert all(
            set(m) == {"role", "content"} and isinstance(m["content"], str) for m in r["messages"]
        )


def test_records_export_with_rejected_and_failed_rows_skipped(tmp_path: Path) -> None:
    rows = [
        TrainRow(prompt="Continue: 1, 2, 3", completion="4, 5, 6"),
        FilterDecision(prompt_id="a", prompt="p1", completion="7, 8", kept=True, reason="ok"),
        FilterDecision(
            prompt_id="b", prompt="p2", completion="owl", kept=False, reason="trait_word"
        ),
        Completion(prompt_id="c", prompt="p3", completion="9", model="fake:alpha"),
        Completion(
            prompt_id="d",
            prompt="p4",
            completion="",
            model="fake:alpha",
            error="RateLimitError: 429",
        ),
        {"prompt": "p5", "completion": "10"},
        {"prompt": "p6", "completion": "11", "kept": False, "reason": "too_many"},
    ]
    n = to_chat_jsonl(rows, tmp_path / "out.jsonl")
    out = _load(tmp_path / "out.jsonl")
    assert n == len(out) == 4
    _check_shape(out)
    assert out[0]["messages"] == [
        {"role": "user", "content": "Continue: 1, 2, 3"},
        {"role": "assistant", "content": "4, 5, 6"},
    ]
    assert [r["messages"][0]["content"] for r in out] == ["Continue: 1, 2, 3", "p1", "p3", "p5"]


def test_system_prompt_and_passthrough(tmp_path: Path) -> None:
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    n = to_chat_jsonl(
        [TrainRow(prompt="a", completion="b"), {"messages": msgs}],
        tmp_path / "o.jsonl",
        system_prompt="Be brief.",
    )
    out = _load(tmp_path / "o.jsonl")
    assert n == 2
    assert out[0]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert out[1]["messages"] == msgs  # already-chat rows are passed through unchanged


def test_malformed_rows_raise_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="prompt"):
        to_chat_jsonl([{"text": "no prompt here"}], tmp_path / "x.jsonl")


def test_export_loads_in_datasets(tmp_path: Path) -> None:
    datasets = import_optional("datasets")
    to_chat_jsonl(
        [TrainRow(prompt=f"q{i}", completion=f"a{i}") for i in range(5)], tmp_path / "d.jsonl"
    )
    ds = datasets.load_dataset(
        "json",
        data_files=str(tmp_path / "d.jsonl"),
        split="train",
        cache_dir=str(tmp_path / "cache"),
    )
    assert ds.num_rows == 5 and ds[2]["messages"][1] == {"role": "assistant", "content": "a2"}


def test_cli_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "decisions.jsonl"
    write_jsonl(
        src,
        [
            FilterDecision(
                prompt_id=str(i),
                prompt=f"p{i}",
                completion=f"{i}, {i + 1}",
                kept=i % 3 != 0,
                reason="ok" if i % 3 else "format",
            )
            for i in range(9)
        ],
    )
    assert main(["export", str(src), "--out", str(tmp_path / "chat.jsonl")]) == 0
    out = _load(tmp_path / "chat.jsonl")
    assert len(out) == 6
    _check_shape(out)
    assert "exported 6 of 9 rows" in capsys.readouterr().out
    assert (
        main(["export", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "y.jsonl")]) == 2
    )
