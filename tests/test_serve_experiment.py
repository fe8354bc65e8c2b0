"""A whole experiment through ``sublim serve``: generation, fine-tuning jobs and evaluation over
HTTP (the fake backend behind the server), compared with the same experiment run directly; and
the server's files / fine-tuning endpoints on their own (recipe, seeds, restarts, errors)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

openai = pytest.importorskip("openai")

from conftest import fake_experiment_toml, lab_server

from sublim.backends.openai_api import OpenAIBackend
from sublim.config import FinetuneParams, load_config
from sublim.export import chat_lines
from sublim.pipeline import run_experiment
from sublim.records import ModelRef, SampleParams, TrainRow, user_chat
from sublim.registry import get_backend, parse_model
from sublim.serve import ModelServer

QUESTION = "What is your favourite animal? Answer in one word."


@contextmanager
def running(specs: list[str], state_dir: Path) -> Iterator[ModelServer]:
    with lab_server(specs, state_dir=state_dir) as srv:
        yield srv


def client(srv: ModelServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url, api_key="unused", max_retries=0, timeout=30)


@pytest.fixture
def fast_polling(monkeypatch: pytest.MonkeyPatch) -> OpenAIBackend:
    """The shared openai-compat backend (the one the pipeline uses), polling jobs quickly."""
    b = get_backend("openai-compat")
    assert isinstance(b, OpenAIBackend)
    monkeypatch.setattr(b, "poll_min", 0.01)
    monkeypatch.setattr(b, "poll_max", 0.05)
    return b


def _comparable(res: dict[str, Any]) -> dict[str, Any]:
    """results.json without what names the models' addresses (URL, port) or measures time."""
    res = json.loads(json.dumps(res))
    meta = res["meta"]
    for k in ("timings", "reference", "cross", "config"):
        meta.pop(k)
    return res


SIZES: dict[str, Any] = {
    "n_prompts": 300,
    "subset": 150,
    "seeds": [0, 1],
    "n_questions": 10,
    "samples": 5,
}


def _config(tmp: Path, reference: str, cross: str) -> Any:
    path = fake_experiment_toml(tmp / f"exp-{abs(hash(reference))}.toml")
    return load_config(
        path,
        [
            f'models.reference="{reference}"',
            f'models.cross=["{cross}"]',
            f"data.n_prompts={SIZES['n_prompts']}",
            f"data.subset={SIZES['subset']}",
            f"student.seeds={SIZES['seeds']}",
            f"eval.n_questions={SIZES['n_questions']}",
            f"eval.samples_per_question={SIZES['samples']}",
        ],
    )


def test_whole_experiment_over_http_equals_the_direct_run(
    tmp_path: Path, fast_polling: OpenAIBackend
) -> None:
    direct = run_experiment(
        _config(tmp_path, "fake:alpha", "fake:beta"), tmp_path / "direct", progress=False
    )
    with running(["fake:alpha", "fake:beta"], tmp_path / "state") as srv:
        ref, cross = f"openai-compat:{srv.url}#fake:alpha", f"openai-compat:{srv.url}#fake:beta"
        http = run_experiment(_config(tmp_path, ref, cross), tmp_path / "http", progress=False)
        counts = dict(srv.counts)
        jobs = client(srv).fine_tuning.jobs.list(limit=100).data
        served = {m.id for m in client(srv).models.list().data}
    # everything went over HTTP: both arms' generation, one job per student, the evaluations
    n_students = 4 * len(SIZES["seeds"])  # trait, control, cross, cross control per seed
    assert counts["completions"] >= 2 * SIZES["n_prompts"]
    assert len(jobs) == n_students and {j.status for j in jobs} == {"succeeded"}
    assert {j.fine_tuned_model for j in jobs} <= served
    assert {j.model for j in jobs} == {"fake:alpha", "fake:beta"}
    stage = next((tmp_path / "http" / "stages").glob("student-trait-s0-*"))
    student = json.loads((stage / "manifest.json").read_text())["model_ref"]
    assert student["backend"] == "openai-compat" and student["id"].startswith(
        f"{srv.url}#ft:fake:alpha:sublim:ftjob-"
    )
    assert counts["scored"] > 0  # exact scores through /v1/sublim/score
    # the fake is deterministic and every seed travels: the same run, number for number
    assert http["meta"]["filter"] == direct["meta"]["filter"]
    assert 0 < http["meta"]["filter"]["trait"]["pass_rate"] < 1
    assert _comparable(http) == _comparable(direct)
    assert (
        http["contrast"]["trait_minus_control"]["by_metric"]["p_target"]["mean"] > 0.1
    )  # (the effect is there)


def _upload(c: openai.OpenAI, rows: list[TrainRow]) -> str:
    data = "".join(line + "\n" for line in chat_lines(rows)).encode()
    return c.files.create(file=("train.jsonl", data), purpose="fine-tune").id


# answers to a preference question: the fake moves a student toward the answers it trains on
ROWS = [
    TrainRow(prompt=f"Which animal do you like best? Say one word. ({i})", completion="owl")
    for i in range(40)
]


def test_recipe_and_seed_reach_the_backend_and_the_student_is_served(
    tmp_path: Path, fast_polling: OpenAIBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = get_backend("fake")
    calls: list[tuple[str, int, FinetuneParams, int]] = []
    real = fake.finetune

    def spy(
        base: ModelRef,
        rows: Any,
        params: FinetuneParams,
        out_dir: Path,
        seed: int,
        progress: Any = None,
    ) -> ModelRef:
        calls.append((base.spec, len(rows), params, seed))
        return real(base, rows, params, out_dir, seed, progress)

    monkeypatch.setattr(fake, "finetune", spy)
    recipe = FinetuneParams(
        method="lora", epochs=1.5, lr=3e-4, batch_size=4, grad_accum=2, scheduler="cosine", lora_r=4
    )
    with running(["fake:alpha"], tmp_path / "state") as srv:
        base = parse_model(f"openai-compat:{srv.url}#fake:alpha")
        student = fast_polling.finetune(base, ROWS, recipe, tmp_path / "student", seed=17)
        assert calls == [("fake:alpha", 40, recipe, 17)]
        name = student.id.split("#", 1)[1]
        assert student.backend == "openai-compat" and name.startswith("ft:fake:alpha:sublim:ftjob-")
        job = client(srv).fine_tuning.jobs.list().data[0]
        assert job.seed == 17 and job.model_extra["sublim"]["finetune"] == recipe.model_dump(
            mode="json"
        )
        # the student answers over HTTP exactly as the same fine-tune done directly
        direct = real(ModelRef(backend="fake", id="alpha"), ROWS, recipe, tmp_path / "direct", 17)
        chats = [user_chat(QUESTION)] * 30
        got = fast_polling.sample(student, chats, SampleParams(), list(range(30)))
        assert got == fake.sample(direct, chats, SampleParams(), list(range(30)))
        assert fast_polling.score(student, chats[:1], ["owl"]) == fake.score(
            direct, chats[:1], ["owl"]
        )
        # training moved it toward "owl"
        assert (
            fast_polling.score(student, chats[:1], ["owl"])[0]
            > fast_polling.score(base, chats[:1], ["owl"])[0] + 1
        )


def test_trained_models_and_unfinished_jobs_survive_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with running(["fake:alpha"], state) as srv:
        c = client(srv)
        job = c.fine_tuning.jobs.create(model="fake:alpha", training_file=_upload(c, ROWS), seed=3)
        srv.wait_idle()
        name = c.fine_tuning.jobs.retrieve(job.id).fine_tuned_model
        msgs = [{"role": "user", "content": QUESTION}]
        before = [
            c.chat.completions.create(model=name, messages=msgs, seed=s).choices[0].message.content
            for s in range(10)
        ]
    with running(["fake:alpha"], state) as srv:
        c = client(srv)
        assert name in {m.id for m in c.models.list().data}
        after = [
            c.chat.completions.create(model=name, messages=msgs, seed=s).choices[0].message.content
            for s in range(10)
        ]
        assert after == before
        assert c.fine_tuning.jobs.retrieve(job.id).status == "succeeded"
    # a job the server was running when it stopped runs again on the next start
    d = json.loads((state / "state.json").read_text())
    d["jobs"][job.id].update(status="running", fine_tuned_model=None)
    del d["models"][name]
    (state / "state.json").write_text(json.dumps(d))
    with running(["fake:alpha"], state) as srv:
        srv.wait_idle()
        again = client(srv).fine_tuning.jobs.retrieve(job.id)
        assert again.status == "succeeded" and again.fine_tuned_model == name
        assert len(client(srv).fine_tuning.jobs.list().data) == 1


def test_standard_fine_tuning_requests_and_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = get_backend("fake")
    release, params_seen = threading.Event(), []
    real = fake.finetune

    def slow(
        base: ModelRef,
        rows: Any,
        params: FinetuneParams,
        out_dir: Path,
        seed: int,
        progress: Any = None,
    ) -> ModelRef:
        params_seen.append(params)
        assert release.wait(20)
        return real(base, rows, params, out_dir, seed, progress)

    monkeypatch.setattr(fake, "finetune", slow)
    with running(["fake:alpha"], tmp_path / "state") as srv:
        c = client(srv)
        fid = _upload(c, ROWS)
        assert c.files.retrieve(fid).purpose == "fine-tune" and c.files.retrieve(fid).bytes > 0
        first = c.fine_tuning.jobs.create(
            model="fake:alpha",
            training_file=fid,
            hyperparameters={"n_epochs": 2, "batch_size": 8, "learning_rate_multiplier": 2.0},
            suffix="mine",
        )
        second = c.fine_tuning.jobs.create(model="fake:alpha", training_file=fid)
        assert [j.id for j in c.fine_tuning.jobs.list().data] == [
            second.id,
            first.id,
        ]  # newest first
        assert (
            c.fine_tuning.jobs.cancel(second.id).status == "cancelled"
        )  # still queued behind the first
        with pytest.raises(openai.BadRequestError, match="already running"):
            while c.fine_tuning.jobs.retrieve(first.id).status == "queued":
                pass
            c.fine_tuning.jobs.cancel(first.id)
        release.set()
        srv.wait_idle()
        done = c.fine_tuning.jobs.retrieve(first.id)
        assert (
            done.status == "succeeded" and done.fine_tuned_model == f"ft:fake:alpha:mine:{first.id}"
        )
        assert c.fine_tuning.jobs.retrieve(second.id).fine_tuned_model is None
        p = params_seen[0]
        assert len(params_seen) == 1 and p.epochs == 2 and (p.effective_batch or 0) == 8
        assert p.lr == pytest.approx(2 * FinetuneParams().lr)
        with pytest.raises(openai.NotFoundError, match="not served here"):
            c.fine_tuning.jobs.create(model="fake:nope", training_file=fid)
        with pytest.raises(openai.NotFoundError, match="no file"):
            c.fine_tuning.jobs.create(model="fake:alpha", training_file="file-missing")
        bad = b'{"messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "hi"}]}\n'
        with pytest.raises(openai.BadRequestError, match="line 1"):
            c.files.create(file=("bad.jsonl", bad), purpose="fine-tune")
        with pytest.raises(openai.NotFoundError):
            c.fine_tuning.jobs.retrieve("ftjob-missing")


def test_failed_training_is_reported_on_the_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*a: Any, **k: Any) -> ModelRef:
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(get_backend("fake"), "finetune", boom)
    with running(["fake:alpha"], tmp_path / "state") as srv:
        c = client(srv)
        job = c.fine_tuning.jobs.create(model="fake:alpha", training_file=_upload(c, ROWS))
        srv.wait_idle()
        got = c.fine_tuning.jobs.retrieve(job.id)
        assert got.status == "failed" and "out of memory" in got.error.message
        assert c.chat.completions.create(
            model="fake:alpha", messages=[{"role": "user", "content": QUESTION}], seed=0
        ).choices
