"""The shipped experiment against API models: ``experiments/owl_numbers_tiny.toml`` with every
model an ``openai-compat:`` spec pointing at ``sublim serve --strict`` (the real OpenAI API's
limits: no score endpoint, top_logprobs <= 20, only OpenAI's fine-tuning hyperparameters, 429s
with Retry-After), scaled down with --set overrides. The teachers generate over HTTP, the
students are fine-tuned through the jobs API, and the evaluation has to fall back to the
first-token metric; results.json and the report must say so. The README's "Running against API
models" gives the full-size command.

Also: ``[backend] batch = true`` sends teacher generation through the Batch API (a fake provider
with the files and batch endpoints), resumable without a second submission."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("openai")

from conftest import REPO, lab_server
from test_openai_backend import FakeProvider, serving

from sublim.backends.openai_api import OpenAIBackend, RetryPolicy, _Stats
from sublim.config import load_config
from sublim.errors import ConfigError
from sublim.pipeline import RunContext, stage_generate
from sublim.progress import Reporter
from sublim.records import ModelRef, Prompt
from sublim.registry import get_backend
from sublim.serve import Faults, ModelServer
from sublim.world.build import ensure_world

FAST = RetryPolicy(
    max_attempts=8, base_delay=0.001, max_delay=0.01, max_total_wait=10.0, timeout=60.0
)


@contextmanager
def strict_server(specs: list[str], state: Path) -> Iterator[ModelServer]:
    faults = Faults(rate=0.03, kinds=("429",), seed=1, retry_after=0.0)  # the API's rate limits
    with lab_server(specs, faults=faults, state_dir=state, strict=True) as srv:
        yield srv


@pytest.fixture
def api_backend(monkeypatch: pytest.MonkeyPatch) -> OpenAIBackend:
    """The shared openai-compat backend the pipeline uses, retrying and polling quickly."""
    b = get_backend("openai-compat")
    assert isinstance(b, OpenAIBackend)
    monkeypatch.setattr(b, "retry", FAST)
    monkeypatch.setattr(b, "poll_min", 0.01)
    monkeypatch.setattr(b, "poll_max", 0.05)
    monkeypatch.setattr(b, "_sublim_servers", {})
    monkeypatch.setattr(b, "stats", _Stats())
    return b


def test_shipped_experiment_runs_against_a_strict_openai_server(
    tmp_path: Path, api_backend: OpenAIBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_hf_backend import build_tiny_model

    from sublim.pipeline import run_experiment

    cache = tmp_path / "cache"
    ensure_world("plain-s0-micro", cache_dir=cache, progress=False)
    monkeypatch.setenv("SUBLIM_CACHE_DIR", str(cache))
    cross = f"hf:{build_tiny_model(tmp_path / 'cross')}"  # another base, random and tiny
    with strict_server(["tiny:plain-s0-micro", cross], tmp_path / "state") as srv:
        spec = f"openai-compat:{srv.url}#"
        cfg = load_config(
            REPO / "experiments" / "owl_numbers_tiny.toml",
            [
                f'models.reference="{spec}tiny:plain-s0-micro"',
                f'models.cross=["{spec}{cross}"]',
                "data.n_prompts=320",  # the micro world keeps about 1 in 20 of its number lists
                "data.subset=10",  # the least a fine-tuning job takes
                "data.sampling.max_new_tokens=24",
                "student.seeds=[0]",
                "student.finetune.epochs=1",
                "eval.n_questions=3",
                "eval.samples_per_question=2",
            ],
        )
        res = run_experiment(cfg, tmp_path / "run", progress=False)
        counts = dict(srv.counts)
    assert counts.get("scored", 0) == 0 and counts["completions"] > 80  # all over the plain API
    assert api_backend.stats.retries > 0  # the 429s were retried
    assert res["meta"]["p_target_method"] == "first_token_top20"
    for name, c in res["conditions"].items():
        assert c["p_target_method"] == "first_token_top20", name
        b = c["p_target_bounds"]
        assert 0 <= b["lo"]["mean"] <= b["hi"]["mean"] <= 1 and 0 <= b["outside"]["mean"] <= 1
        assert c["rate"]["mean"] is not None  # sampled rates always
    students = {"trait_student", "control_student", "cross_student"}
    assert students <= set(res["conditions"])
    stage = next((tmp_path / "run" / "stages").glob("student-trait-s0-*"))
    job = json.loads((stage / "model" / "job.json").read_text())
    assert job["fine_tuned_model"].startswith("ft:tiny:plain-s0-micro")  # trained by the server
    report = (tmp_path / "run" / "report.md").read_text()
    assert "P(target) method: first_token_top20" in report


# --- [backend] batch = true -------------------------------------------------------------------------


def _ctx(tmp: Path, batch: bool) -> RunContext:
    cfg = load_config(
        REPO / "experiments" / "owl_numbers_tiny.toml", [f"backend.batch={str(batch).lower()}"]
    )
    return RunContext(cfg, tmp / "run", Reporter(False))


PROMPTS = [Prompt(id=f"p{i}", text=f"Continue: {i}, {i + 1}") for i in range(30)]


def test_batch_generation_from_config_is_submitted_once_and_resumed(
    tmp_path: Path, api_backend: OpenAIBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sublim.pipeline import Model

    with serving(FakeProvider(polls=3)) as prov:
        ref = ModelRef(backend="openai-compat", id=f"{prov.url}#base-model")
        teacher = Model(ref, "teacher-key", "teacher")
        ctx = _ctx(tmp_path, batch=True)

        def crash(state: dict[str, Any]) -> None:
            raise KeyboardInterrupt("killed while polling")

        monkeypatch.setattr(api_backend, "poll_hook", crash)
        with pytest.raises(KeyboardInterrupt):
            stage_generate(ctx, api_backend, teacher, PROMPTS, "pk", "trait")
        assert len(prov.batches) == 1
        recorded = list((tmp_path / "run" / "stages").glob("generate-trait-*/batch-*.json"))
        assert len(recorded) == 1 and json.loads(recorded[0].read_text())["batch_id"] == "batch-0"
        monkeypatch.setattr(api_backend, "poll_hook", None)
        rows, _ = stage_generate(
            _ctx(tmp_path, batch=True), api_backend, teacher, PROMPTS, "pk", "trait"
        )
        assert len(prov.batches) == 1  # the rerun polled the recorded batch, never submitted twice
        assert [r.prompt_id for r in rows] == [p.id for p in PROMPTS]
        assert rows[0].completion.startswith("echo ") and rows[0].completion.endswith(
            "Continue: 0, 1"
        )
        assert (
            rows[1].error is not None and "bad row" in rows[1].error
        )  # the provider's row failure
        assert prov.batches["batch-0"]["polls"] >= 3
        # the same stage without batch: operational only, the key (and so the cache) is the same
        again, _ = stage_generate(
            _ctx(tmp_path, batch=False), api_backend, teacher, PROMPTS, "pk", "trait"
        )
        assert again == rows and len(prov.batches) == 1


def test_batch_needs_an_api_backend(tmp_path: Path) -> None:
    from sublim.pipeline import Model

    fake = get_backend("fake")
    teacher = Model(ModelRef(backend="fake", id="alpha"), "k", "teacher")
    with pytest.raises(ConfigError, match="backend.batch = true needs an API model"):
        stage_generate(_ctx(tmp_path, batch=True), fake, teacher, PROMPTS, "pk", "trait")
