"""The API metric of the favourite-animal suite (sublim.evals.preference, method
"first_token_top20"): first-token rules, bounds, the capability query, what results.json and the
report record, and the same metric against a real OpenAI-compatible server that cannot score
given replies (``sublim serve --strict``: a random tiny Llama, and SmolLM2)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from conftest import lab_server

from sublim.config import EvalConfig
from sublim.errors import ConfigError
from sublim.evals.preference import (
    classify_first_token,
    evaluate_preference,
    first_token_scores,
    p_target_method,
)
from sublim.records import Chat, ModelRef, SampleParams
from sublim.report import method_note
from sublim.results import build_results

CANDS = ["owl", "eagle", "elephant", "cat", "caterpillar"]


@pytest.mark.parametrize(
    "token, kind, idx",
    [
        ("owl", "complete", {0}),
        (" Owl", "complete", {0}),
        ("Owls", "complete", {0}),
        ("owlet", "complete", {0}),
        ('"Owl.', "complete", {0}),
        ("\u2581owl", "complete", {0}),  # a SentencePiece space marker
        ("Ow", "partial", {0}),  # the start of "owl" only: may still become something else
        (" E", "partial", {1, 2}),  # eagle or elephant
        ("cat", "partial", {3, 4}),  # a whole "cat" that also begins "caterpillar"
        (" ", "open", {0, 1, 2, 3, 4}),
        ("**", "open", {0, 1, 2, 3, 4}),
        ("owlish", "other", set()),
        ("I", "other", set()),
        ("42", "other", set()),
    ],
)
def test_first_token_rules(token: str, kind: str, idx: set[int]) -> None:
    assert classify_first_token(token, CANDS) == (kind, frozenset(idx))


def test_bounds_and_logodds_from_one_table() -> None:
    lp = math.log
    table = [
        ("Owl", lp(0.30)),
        (" owl", lp(0.10)),
        ("Ow", lp(0.05)),
        ("**", lp(0.05)),
        ("Eagle", lp(0.20)),
        ("Cat", lp(0.05)),
        ("Dog", lp(0.10)),
    ]  # listed: 0.85
    lo, hi, out, lo_odds = first_token_scores([table], CANDS)
    assert lo[0] == pytest.approx(0.40)
    assert out[0] == pytest.approx(0.15)
    assert hi[0] == pytest.approx(0.40 + 0.05 + 0.05 + 0.15)  # + partial "Ow", open "**", outside
    assert lo_odds[0] == pytest.approx(math.log(0.40 / 0.20))  # "Cat" is partial: no one's
    # target absent, or no other candidate listed: log-odds is undefined (null in results)
    lo2, hi2, _, odds2 = first_token_scores([[("Eagle", lp(0.5))], [("owl", lp(0.5))]], CANDS)
    assert lo2[0] == 0 and hi2[0] == pytest.approx(0.5) and math.isnan(odds2[0])
    assert lo2[1] == pytest.approx(0.5) and math.isnan(odds2[1])


class TableBackend:
    """A backend that cannot score given replies: it samples from a fixed reply distribution
    and lists first tokens from a fixed table (an API model in miniature)."""

    name = "table"

    def __init__(self, table: list[tuple[str, float]]) -> None:
        self.table = table
        self.calls: list[int] = []

    def can_score_exactly(self, model: ModelRef) -> bool:
        return False

    def sample(
        self, model: ModelRef, chats: Sequence[Chat], params: SampleParams, seed, progress=None
    ) -> list[str]:  # type: ignore[no-untyped-def]
        seeds = [seed] * len(chats) if isinstance(seed, int) else list(seed)
        return ["Owl" if np.random.default_rng(s).random() < 0.4 else "Cat" for s in seeds]

    def score(
        self, model: ModelRef, chats: Sequence[Chat], conts: Sequence[str], include_end: bool = True
    ) -> list[float]:
        raise AssertionError("an API model cannot score given replies")

    def first_token_logprobs(
        self, model: ModelRef, chats: Sequence[Chat]
    ) -> list[list[tuple[str, float]]]:
        self.calls.append(len(chats))
        return [list(self.table) for _ in chats]


TABLE = [("Owl", math.log(0.4)), ("Cat", math.log(0.3)), ("Ow", math.log(0.1))]
MODEL = ModelRef(backend="table", id="m")


def test_suite_uses_the_first_token_table_and_records_the_method() -> None:
    b = TableBackend(TABLE)
    assert p_target_method(b, MODEL) == "first_token_top20"
    with pytest.raises(ConfigError, match="cannot score given replies"):
        p_target_method(b, MODEL, "exact")
    cfg = EvalConfig(n_questions=4, samples_per_question=20)
    scores, answers = evaluate_preference(b, MODEL, "owl", "animal", cfg, seed=0)
    assert b.calls == [4] and len(answers) == 80  # one table per question; rates still sampled
    for q in scores:
        assert q.p_target_method == "first_token_top20"
        assert q.p_target == pytest.approx(0.4) and q.p_outside == pytest.approx(0.2)
        assert q.p_target_hi == pytest.approx(0.4 + 0.1 + 0.2)
        assert q.logodds == pytest.approx(math.log(0.4 / 0.3))
        assert 0 < q.rate < 1
    res = build_results({"base": [scores]}, {"name": "t", "p_target_method": "first_token_top20"})
    c = res["conditions"]["base"]
    assert c["p_target_method"] == "first_token_top20"
    assert c["p_target_bounds"]["lo"]["mean"] == pytest.approx(0.4)
    assert c["p_target_bounds"]["hi"]["mean"] == pytest.approx(0.7)
    assert c["p_target_bounds"]["outside"]["mean"] == pytest.approx(0.2)
    assert res["per_question"]["base"]["p_target_hi"] == [[pytest.approx(0.7)] * 4]
    assert "first_token_top20" in method_note(res) and "[0.400, 0.700]" in method_note(res)


def test_sampled_only_method_for_endpoints_without_logprobs() -> None:
    b = TableBackend(TABLE)
    cfg = EvalConfig(n_questions=3, samples_per_question=10, p_target_method="none")
    scores, answers = evaluate_preference(b, MODEL, "owl", "animal", cfg, seed=0)
    assert b.calls == [] and len(answers) == 30  # no log-probabilities asked for
    assert all(q.p_target_method == "none" and math.isnan(q.p_target) for q in scores)
    assert all(0 < q.rate < 1 for q in scores)
    with pytest.raises(ConfigError, match="samples_per_question"):
        p_target_method(b, MODEL, "none", cfg_samples=0)


def test_backends_without_the_query_score_exactly() -> None:
    from sublim.registry import get_backend

    fake = get_backend("fake")
    assert p_target_method(fake, ModelRef(backend="fake", id="alpha")) == "exact"
    with pytest.raises(ConfigError, match="no first-token table"):
        p_target_method(fake, ModelRef(backend="fake", id="alpha"), "first_token_top20")
    scores, _ = evaluate_preference(
        fake,
        ModelRef(backend="fake", id="alpha"),
        "owl",
        "animal",
        EvalConfig(n_questions=2, samples_per_question=0),
        seed=0,
    )
    assert {q.p_target_method for q in scores} == {"exact"} and scores[0].p_target_hi is None
    res = build_results({"base": [scores]}, {"name": "t"})
    assert res["conditions"]["base"]["p_target_method"] == "exact"
    assert "p_target_bounds" not in res["conditions"]["base"]


# --- over HTTP: a server that cannot score given replies -----------------------------------------

openai = pytest.importorskip("openai")

from sublim.backends.openai_api import OpenAIBackend, RetryPolicy
from sublim.registry import get_backend, parse_model
from sublim.serve import ModelServer


@contextmanager
def serving(spec: str) -> Iterator[ModelServer]:
    # the real API's limits, no score endpoint
    with lab_server(spec, strict=True) as srv:
        yield srv


def api_backend() -> OpenAIBackend:
    b = OpenAIBackend()
    b.retry = RetryPolicy(
        max_attempts=4, base_delay=0.001, max_delay=0.01, max_total_wait=5.0, timeout=60.0
    )
    return b


def _exact_and_api(spec: str, n_questions: int) -> tuple[list, list]:  # type: ignore[type-arg]
    """The suite on ``spec`` directly (exact) and over HTTP from a strict server."""
    cfg = EvalConfig(n_questions=n_questions, samples_per_question=1, max_new_tokens=3)
    direct = get_backend(parse_model(spec).backend)
    exact, _ = evaluate_preference(direct, parse_model(spec), "owl", "animal", cfg, seed=0)
    with serving(spec) as srv:
        b = api_backend()
        ref = parse_model(f"openai-compat:{srv.url}#{spec}")
        assert not b.can_score_exactly(ref)
        api, answers = evaluate_preference(b, ref, "owl", "animal", cfg, seed=0)
        assert srv.counts.get("scored", 0) == 0 and len(answers) == n_questions
    return exact, api


def _check_bounds(exact: list, api: list) -> None:  # type: ignore[type-arg]
    for e, a in zip(exact, api, strict=True):
        assert e.p_target_method == "exact" and a.p_target_method == "first_token_top20"
        assert 0 <= a.p_target <= a.p_target_hi <= 1 and 0 <= a.p_outside <= 1
        assert a.p_target_hi >= a.p_outside
        # every reply that is exactly a surface form of "owl" starts with a token that is the
        # whole target word or a prefix of it, listed or not: the exact P(reply is "owl", "Owl",
        # "owls", ...) can never exceed the upper bound
        assert e.p_target <= a.p_target_hi + 1e-6


def test_tiny_llama_over_http_first_token_bounds_contain_the_exact_value(tmp_path: Path) -> None:
    from test_hf_backend import build_tiny_model

    d = build_tiny_model(tmp_path / "m")
    exact, api = _exact_and_api(f"hf:{d}", n_questions=3)
    _check_bounds(exact, api)


def test_smollm2_api_metric_against_the_exact_metric(smollm2_ref: ModelRef) -> None:
    exact, api = _exact_and_api("smollm2", n_questions=2)
    _check_bounds(exact, api)
    # a real chat model answers one-word animal questions with animal words: the table lists
    # most of the first token's mass, and the target's upper bound is far from vacuous
    assert np.mean([a.p_outside for a in api]) < 0.5
    assert all(a.p_target_hi < 1 for a in api)


def test_an_unreachable_endpoint_is_an_error_not_a_remembered_capability() -> None:
    from sublim.backends.openai_api import endpoint
    from sublim.errors import BackendError

    b = api_backend()
    b.retry = RetryPolicy(
        max_attempts=2, base_delay=0.001, max_delay=0.01, max_total_wait=1.0, timeout=2.0
    )
    ep = endpoint(parse_model("openai-compat:http://127.0.0.1:9/v1#m"))  # nothing listens
    with pytest.raises(BackendError, match="could not list models"):
        b.is_sublim_server(ep)
    assert ep.base_url not in b._sublim_servers  # asked again next time, never switched silently
