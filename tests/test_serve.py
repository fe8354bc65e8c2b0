"""Tests of ``sublim serve`` (sublim.serve) through the official ``openai`` client: the fake
backend for the protocol, a tiny random Llama for the Hugging Face path."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from conftest import lab_server

openai = pytest.importorskip("openai")

from sublim.errors import SublimError
from sublim.records import ModelRef, SampleParams, user_chat
from sublim.registry import get_backend
from sublim.serve import Faults, ModelServer, make_server

QUESTION = "What is your favourite animal? Answer in one word."


@contextmanager
def running(spec: str, faults: Faults | None = None) -> Iterator[ModelServer]:
    """A server on a free loopback port, serving in a thread; always shut down."""
    with lab_server(spec, faults=faults) as srv:
        yield srv


def client(srv: ModelServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url, api_key="unused", max_retries=0, timeout=30)


def test_models_and_chat_completions_with_n() -> None:
    with running("fake:alpha") as srv:
        c = client(srv)
        models = c.models.list().data
        assert [m.id for m in models] == ["fake:alpha"]
        assert models[0].model_extra["sublim"]["score"] == "/v1/sublim/score"
        msgs = [{"role": "user", "content": QUESTION}]
        r = c.chat.completions.create(
            model="fake:alpha", messages=msgs, n=5, seed=3, temperature=1.0
        )
        assert r.object == "chat.completion" and len(r.choices) == 5
        assert [ch.index for ch in r.choices] == list(range(5))
        # choice 0 of seed s is the row the backend samples with seed s, as is n=1 with seed s
        direct = get_backend("fake").sample(
            ModelRef(backend="fake", id="alpha"), [user_chat(QUESTION)], SampleParams(), [3]
        )
        one = c.chat.completions.create(model="fake:alpha", messages=msgs, seed=3)
        assert r.choices[0].message.content == one.choices[0].message.content == direct[0]
        assert (
            len({ch.message.content for ch in r.choices}) > 1
        )  # the other choices get other seeds


def test_logprobs_for_the_fake_backend_are_exact_reply_scores() -> None:
    with running("fake:alpha") as srv:
        r = client(srv).chat.completions.create(
            model="fake:alpha",
            messages=[{"role": "user", "content": QUESTION}],
            seed=1,
            logprobs=True,
        )
        ch = r.choices[0]
        exact = get_backend("fake").score(
            ModelRef(backend="fake", id="alpha"), [user_chat(QUESTION)], [ch.message.content]
        )
        assert ch.logprobs.content[0].token == ch.message.content
        assert ch.logprobs.content[0].logprob == pytest.approx(exact[0])


def test_openai_shaped_errors() -> None:
    with running("fake:alpha") as srv:
        c = client(srv)
        with pytest.raises(openai.NotFoundError, match="not served here"):
            c.chat.completions.create(
                model="fake:beta", messages=[{"role": "user", "content": "x"}]
            )
        with pytest.raises(openai.BadRequestError, match="Invalid .n.: integer below minimum"):
            c.chat.completions.create(
                model="fake:alpha", messages=[{"role": "user", "content": "x"}], n=0
            )
        with pytest.raises(openai.BadRequestError, match="top_logprobs"):
            c.chat.completions.create(
                model="fake:alpha", messages=[{"role": "user", "content": "x"}], top_logprobs=3
            )
        with pytest.raises(openai.BadRequestError, match="temperature|sampling"):
            c.chat.completions.create(
                model="fake:alpha", messages=[{"role": "user", "content": "x"}], temperature=-1
            )


def test_fault_mode_is_seeded_and_shaped() -> None:
    statuses = []
    for _ in range(2):
        with running("fake:alpha", Faults(rate=0.5, kinds=("429", "500"), seed=7)) as srv:
            c = client(srv)
            got = []
            for _ in range(40):
                try:
                    c.models.list()
                    got.append(200)
                except openai.RateLimitError:
                    got.append(429)
                except openai.InternalServerError:
                    got.append(500)
            statuses.append(got)
            assert srv.counts["fault_429"] + srv.counts["fault_500"] == got.count(429) + got.count(
                500
            )
    assert statuses[0] == statuses[1]  # same seed, same faults
    assert 8 <= statuses[0].count(200) <= 32 and {429, 500} <= set(statuses[0])


def test_bad_fault_settings_and_busy_port() -> None:
    with pytest.raises(SublimError, match="fault"):
        Faults(rate=1.5)
    with pytest.raises(SublimError, match="fault kinds"):
        Faults(rate=0.1, kinds=("503",))
    with running("fake:alpha") as srv, pytest.raises(SublimError, match="another --port"):
        make_server("fake:alpha", "127.0.0.1", srv.server_address[1])


# --- the Hugging Face path --------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory: pytest.TempPathFactory) -> str:
    from test_hf_backend import build_tiny_model

    return "hf:" + str(build_tiny_model(tmp_path_factory.mktemp("serve-tiny") / "model"))


def test_hf_model_served_with_token_logprobs(tiny_hf: str) -> None:
    from sublim.backends import hf

    ref = ModelRef(backend="hf", id=tiny_hf[3:])
    chat = [{"role": "user", "content": "what is your favourite animal ?"}]
    params = SampleParams(max_new_tokens=8)
    with running(tiny_hf) as srv:
        r = client(srv).chat.completions.create(
            model=tiny_hf, messages=chat, n=3, seed=11, max_tokens=8, logprobs=True, top_logprobs=5
        )
    direct = hf.HFBackend().sample(ref, [user_chat(chat[0]["content"])] * 1, params, [11])
    assert r.choices[0].message.content == direct[0]
    for ch in r.choices:
        toks = ch.logprobs.content
        assert len(toks) >= 1 and r.usage.completion_tokens >= len(toks)
        for t in toks:
            tops = [a.logprob for a in t.top_logprobs]
            assert len(tops) == 5 and tops == sorted(tops, reverse=True)
            assert t.logprob <= tops[0] + 1e-9 and t.logprob < 0
            assert math.fsum(math.exp(v) for v in tops) <= 1 + 1e-9
        assert ch.finish_reason in ("stop", "length")
