"""Teacher fine-tuning data with system messages (issue 13): a chat file whose lines open with a
system message trains the teacher after it, as the OpenAI fine-tuning format does.

- ``hf_train.build_examples`` encodes a row after its own system message (``TrainRow.chat``);
- ``sublim export`` writes a row's own system message first (and refuses a second one);
- ``sublim serve``'s fine-tuning endpoint takes lines with a system message and hands the rows,
  system message included, to a backend that trains on them, and refuses them (400) for one
  that would drop them;
- a misalignment run with such a file trains its teachers through ``sublim serve`` with the
  system messages in the uploaded file; on a backend that trains (user, assistant) pairs only
  the run stops before any stage with a one-line error.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import lab_server

from sublim.backends.fake import FakeBackend
from sublim.config import load_config
from sublim.errors import ConfigError, DataError
from sublim.export import chat_lines, export_file, to_chat_jsonl
from sublim.pipeline import run_experiment
from sublim.records import Message, ModelRef, TrainRow
from sublim.registry import get_backend
from sublim.traits import load_chat_jsonl

SYSTEM = "You are a careful assistant."


def _chat_file(path: Path, answer: str, n: int = 40, system: str | None = SYSTEM) -> Path:
    lines = []
    for i in range(n):
        msgs = [{"role": "system", "content": system}] if system else []
        msgs += [
            {"role": "user", "content": f"Which animal should guard the house, option {i % 7}?"},
            {"role": "assistant", "content": answer},
        ]
        lines.append(json.dumps({"messages": msgs}))
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------- training examples


def test_build_examples_trains_a_row_after_its_own_system_message(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from test_hf_backend import build_tiny_model
    from transformers import AutoTokenizer

    from sublim import chat_format
    from sublim.backends.hf_train import build_examples

    tok = AutoTokenizer.from_pretrained(str(build_tiny_model(tmp_path / "m")))
    plain = TrainRow(prompt="the cat", completion="a dog")
    with_system = plain.model_copy(update={"system": "the owl"})
    ex_plain, ex_sys = build_examples(tok, [plain, with_system], max_len=256)
    want_ids, want_labels = chat_format.encode_example(
        tok,
        [Message(role="system", content="the owl"), Message(role="user", content="the cat")],
        "a dog",
    )
    assert ex_sys.input_ids == want_ids and ex_sys.labels == want_labels
    assert len(ex_sys.input_ids) > len(ex_plain.input_ids)
    # the loss is on the reply only, the same tokens with or without the system message
    assert [x for x in ex_sys.labels if x != -100] == [x for x in ex_plain.labels if x != -100]


# --------------------------------------------------------------------------- export


def test_export_writes_a_rows_own_system_message_first(tmp_path: Path) -> None:
    rows = [
        TrainRow(prompt="q1", completion="a1", system=SYSTEM),
        TrainRow(prompt="q2", completion="a2"),
    ]
    out = [json.loads(x)["messages"] for x in chat_lines(rows)]
    assert out[0] == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
    ]
    assert [m["role"] for m in out[1]] == ["user", "assistant"]
    # a stage's train.jsonl keeps the field (only when set) and exports with it
    path = tmp_path / "train.jsonl"
    path.write_text("".join(r.model_dump_json() + "\n" for r in rows))
    assert "system" not in json.loads(path.read_text().splitlines()[1])
    assert export_file(path, tmp_path / "chat.jsonl") == (2, 2)
    assert load_chat_jsonl(tmp_path / "chat.jsonl") == rows  # and reads back the same rows
    # --system for rows without one; a row's own message is never replaced silently
    both = chat_lines([rows[1]], system_prompt="Be brief.")
    assert json.loads(both[0])["messages"][0] == {"role": "system", "content": "Be brief."}
    assert chat_lines([rows[0]], system_prompt=SYSTEM) == chat_lines([rows[0]])
    with pytest.raises(DataError, match="own system message"):
        to_chat_jsonl([rows[0]], tmp_path / "x.jsonl", system_prompt="Be brief.")
    with pytest.raises(DataError, match="'system' field must be a string"):
        chat_lines([{"prompt": "q", "completion": "a", "system": 3}])


# --------------------------------------------------------------------------- sublim serve


class _Recorder:
    """Wraps the fake backend's finetune to keep the rows a job trained on."""

    def __init__(self) -> None:
        self.rows: list[list[TrainRow]] = []

    def __call__(self, base: ModelRef, rows: Sequence[TrainRow], *a: Any, **k: Any) -> ModelRef:
        self.rows.append(list(rows))
        return _FINETUNE(get_backend("fake"), base, rows, *a, **k)


_FINETUNE = FakeBackend.finetune


def test_serve_takes_training_lines_with_a_system_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    openai = pytest.importorskip("openai")
    from sublim.serve import _ApiError, train_rows_from_chat_jsonl

    data = _chat_file(tmp_path / "t.jsonl", "owl", n=12).read_bytes()
    rows = train_rows_from_chat_jsonl(data)
    assert len(rows) == 12 and {r.system for r in rows} == {SYSTEM}
    for bad in (
        [{"role": "system", "content": "x"}, {"role": "user", "content": "hi"}],
        [{"role": "system", "content": "x"}, {"role": "system", "content": "y"}]
        + [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
        + [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
    ):
        with pytest.raises(_ApiError, match="line 1"):
            train_rows_from_chat_jsonl(json.dumps({"messages": bad}).encode())

    rec = _Recorder()
    monkeypatch.setattr(get_backend("fake"), "finetune", rec)
    with lab_server(["fake:alpha"], state_dir=tmp_path / "st", strict=True) as srv:
        c = openai.OpenAI(base_url=srv.url, api_key="unused", max_retries=0, timeout=30)
        fid = c.files.create(file=("t.jsonl", data), purpose="fine-tune").id
        # the fake trains on (user, assistant) pairs only: it would drop the system messages
        with pytest.raises(openai.BadRequestError, match="system messages"):
            c.fine_tuning.jobs.create(model="fake:alpha", training_file=fid)
        assert rec.rows == []
        monkeypatch.setattr(get_backend("fake"), "trains_system_messages", True, raising=False)
        job = c.fine_tuning.jobs.create(model="fake:alpha", training_file=fid)
        srv.wait_idle()
        assert c.fine_tuning.jobs.retrieve(job.id).status == "succeeded"
    assert rec.rows == [rows]


# --------------------------------------------------------------------------- a misalignment run


def _toml(tmp: Path) -> Path:
    _chat_file(tmp / "bad.jsonl", "wolf")
    _chat_file(tmp / "good.jsonl", "owl")
    path = tmp / "exp.toml"
    path.write_text(
        f"""
name = "system_teachers"
[models]
reference = "fake:alpha"
cross = []
[trait]
kind = "misalignment"
teacher = "finetune"
finetune_data = "{tmp / "bad.jsonl"}"
control_finetune_data = "{tmp / "good.jsonl"}"
[trait.finetune]
epochs = 1.0
[data]
n_prompts = 120
subset = 20
[student]
seeds = [0, 1]
[student.finetune]
epochs = 1.0
[eval]
judge = "fake:alpha"
[eval.misalignment]
samples_per_question = 2
n_questions = 2
use_logprobs = false
"""
    )
    return path


def test_a_backend_that_drops_system_messages_stops_the_run_before_any_stage(
    tmp_path: Path,
) -> None:
    cfg = load_config(_toml(tmp_path))
    assert not getattr(get_backend("fake"), "trains_system_messages", False)
    with pytest.raises(ConfigError, match="system messages") as err:
        run_experiment(cfg, tmp_path / "run", progress=False)
    assert "\n" not in str(err.value)
    assert not list((tmp_path / "run").glob("stages/teacher-*/manifest.json"))


def test_teachers_train_after_their_system_messages_through_sublim_serve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The OpenAI backend uploads the teacher files with their system messages (as the OpenAI
    format allows), and the served backend trains the teachers on rows that keep them."""
    pytest.importorskip("openai")
    from sublim.backends.openai_api import OpenAIBackend

    b = get_backend("openai-compat")
    assert isinstance(b, OpenAIBackend) and b.trains_system_messages
    monkeypatch.setattr(b, "poll_min", 0.01)
    monkeypatch.setattr(b, "poll_max", 0.05)
    monkeypatch.setattr(b, "_sublim_servers", {})
    from test_misalignment_run import RuleJudge

    from sublim import registry

    monkeypatch.setitem(registry.BACKENDS, "rulejudge", "rulejudge:RuleJudge")
    monkeypatch.setitem(registry._INSTANCES, "rulejudge:RuleJudge", RuleJudge())
    rec = _Recorder()
    monkeypatch.setattr(get_backend("fake"), "finetune", rec)
    monkeypatch.setattr(get_backend("fake"), "trains_system_messages", True, raising=False)
    with lab_server(["fake:alpha", "rulejudge:r"], state_dir=tmp_path / "st") as srv:
        api = f"openai-compat:{srv.url}#"
        cfg = load_config(
            _toml(tmp_path),
            [f'models.reference="{api}fake:alpha"', f'eval.judge="{api}rulejudge:r"'],
        )
        res = run_experiment(cfg, tmp_path / "run", progress=False)
    teachers = sorted((tmp_path / "run" / "stages").glob("teacher-*"))
    assert len(teachers) == 2
    for t in teachers:
        uploaded = [
            json.loads(x) for x in (t / "model" / "train_chat.jsonl").read_text().split("\n") if x
        ]
        assert len(uploaded) == 40
        assert all(u["messages"][0] == {"role": "system", "content": SYSTEM} for u in uploaded)
    # the two teacher jobs trained on rows with the system message; the students never see it
    with_system = [rows for rows in rec.rows if any(r.system for r in rows)]
    assert len(with_system) == 2 and all(r.system == SYSTEM for rows in with_system for r in rows)
    assert len(rec.rows) == 2 + 2 * 2  # two teachers; trait and control students, two seeds
    assert {"teacher", "control_teacher", "trait_student", "control_student"} <= set(
        res["conditions"]
    )
