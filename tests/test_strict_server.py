"""Tests of ``sublim serve``'s strict OpenAI mode and of the limits that make it safe on a shared
host (API key, request bounds, Content-Length, rate limits, error bodies). Each test asks for
something the real API refuses (or a limit forbids) and checks the refusal; the fake backend
keeps them fast."""

from __future__ import annotations

import io
import json
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from conftest import lab_server

openai = pytest.importorskip("openai")

from sublim.errors import SublimError
from sublim.registry import get_backend
from sublim.serve import Faults, Limits, ModelServer, RateLimiter

MSG = [{"role": "user", "content": "What is your favourite animal?"}]


@contextmanager
def running(spec: str = "fake:alpha", **kw: Any) -> Iterator[ModelServer]:
    """A server on a free loopback port (``kw`` go to make_server), serving in a thread."""
    with lab_server(spec, **kw) as srv:
        yield srv


def client(srv: ModelServer, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url, api_key=key, max_retries=0, timeout=30)


def raw_request(
    srv: ModelServer, head: str, body: bytes = b""
) -> tuple[int, dict[str, str], dict[str, Any]]:
    """Send ``head`` (request line and headers, CRLF-joined by the caller) and ``body`` on a
    fresh socket; return status, headers and the JSON body. A server that waits for more body
    than was sent fails the test by timing out."""
    host, port = srv.server_address[:2]
    with socket.create_connection((str(host), int(port)), timeout=10) as s:
        s.sendall(head.encode() + b"\r\n\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        top, rest = data.split(b"\r\n\r\n", 1)
        lines = top.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
        n = int(headers["content-length"])
        while len(rest) < n:
            rest += s.recv(65536)
    return int(lines[0].split()[1]), headers, json.loads(rest[:n])


def upload(c: openai.OpenAI, n_rows: int) -> str:
    lines = [
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"q{i}"},
                    {"role": "assistant", "content": "owl"},
                ]
            }
        )
        for i in range(n_rows)
    ]
    return c.files.create(
        file=("t.jsonl", io.BytesIO("\n".join(lines).encode())), purpose="fine-tune"
    ).id


# --- strict mode -------------------------------------------------------------------------------


def test_strict_hides_and_refuses_the_sublim_extension() -> None:
    with running(strict=True) as srv:
        c = client(srv)
        (m,) = c.models.list().data
        assert m.id == "fake:alpha" and "sublim" not in (m.model_extra or {})
        with pytest.raises(openai.NotFoundError) as e:
            c.post(
                "/sublim/score",
                body={"model": "fake:alpha", "chats": [MSG], "continuations": ["owl"]},
                cast_to=object,
            )
        assert e.value.body["code"] == "not_found"
    with running() as srv:  # lab mode keeps it
        got = client(srv).post(
            "/sublim/score",
            body={"model": "fake:alpha", "chats": [MSG], "continuations": ["owl"]},
            cast_to=object,
        )
        assert len(got["logprobs"]) == 1


def test_top_logprobs_at_most_20() -> None:
    with running(strict=True) as srv:
        c = client(srv)
        r = c.chat.completions.create(
            model="fake:alpha", messages=MSG, logprobs=True, top_logprobs=20, seed=0
        )
        assert r.choices[0].logprobs.content
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(
                model="fake:alpha", messages=MSG, logprobs=True, top_logprobs=21
            )
        assert (
            e.value.body["param"] == "top_logprobs"
            and e.value.body["code"] == "integer_above_max_value"
        )
        assert e.value.body["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "extra", [{"echo": True}, {"prompt_logprobs": 5}, {"sublim": {}}, {"top_k": 5}]
)
def test_strict_rejects_unknown_arguments_as_the_api_does(extra: dict[str, Any]) -> None:
    (key,) = extra
    with running(strict=True) as srv:
        with pytest.raises(
            openai.BadRequestError, match=f"Unrecognized request argument supplied: {key}"
        ) as e:
            client(srv).chat.completions.create(model="fake:alpha", messages=MSG, extra_body=extra)
        assert e.value.body["param"] == key
    with running() as srv:  # the lab server ignores them
        assert (
            client(srv)
            .chat.completions.create(model="fake:alpha", messages=MSG, extra_body=extra)
            .choices
        )


@pytest.mark.parametrize(
    "kw", [{"stop": ["\n"]}, {"presence_penalty": 1.0}, {"logit_bias": {"1": 5}}]
)
def test_strict_refuses_parameters_it_cannot_honour(kw: dict[str, Any]) -> None:
    with running(strict=True) as srv:
        with pytest.raises(openai.BadRequestError) as e:
            client(srv).chat.completions.create(model="fake:alpha", messages=MSG, **kw)
        assert e.value.body["code"] == "unsupported_parameter" and e.value.body["param"] == next(
            iter(kw)
        )


def test_n_is_at_most_128() -> None:
    with running(strict=True) as srv:
        c = client(srv)
        assert (
            len(c.chat.completions.create(model="fake:alpha", messages=MSG, n=128, seed=1).choices)
            == 128
        )
        with pytest.raises(openai.BadRequestError, match="Expected a value <= 128"):
            c.chat.completions.create(model="fake:alpha", messages=MSG, n=129)


def test_max_tokens_bounds() -> None:
    with running(strict=True, limits=Limits(max_tokens=16)) as srv:
        c = client(srv)
        assert c.chat.completions.create(model="fake:alpha", messages=MSG, max_tokens=16).choices
        for key, v in (
            ("max_tokens", 17),
            ("max_completion_tokens", 17),
            ("max_completion_tokens", 0),
        ):
            with pytest.raises(openai.BadRequestError) as e:
                c.chat.completions.create(model="fake:alpha", messages=MSG, **{key: v})
            assert e.value.body["param"] == key


def test_strict_temperature_range() -> None:
    with (
        running(strict=True) as srv,
        pytest.raises(openai.BadRequestError, match="Expected a value <= 2"),
    ):
        client(srv).chat.completions.create(model="fake:alpha", messages=MSG, temperature=2.5)


def test_strict_fine_tuning_takes_only_openai_jobs() -> None:
    with running(strict=True) as srv:
        c = client(srv)
        with pytest.raises(openai.BadRequestError, match="at least 10 examples"):
            c.fine_tuning.jobs.create(model="fake:alpha", training_file=upload(c, 3))
        fid = upload(c, 10)
        with pytest.raises(
            openai.BadRequestError, match="Unrecognized request argument supplied: sublim"
        ):
            c.fine_tuning.jobs.create(
                model="fake:alpha", training_file=fid, extra_body={"sublim": {"finetune": {}}}
            )
        with pytest.raises(openai.BadRequestError, match="n_epochs"):
            c.fine_tuning.jobs.create(
                model="fake:alpha", training_file=fid, hyperparameters={"n_epochs": 1.5}
            )
        job = c.fine_tuning.jobs.create(
            model="fake:alpha", training_file=fid, hyperparameters={"n_epochs": 1}, seed=0
        )
        srv.wait_idle()
        job = c.fine_tuning.jobs.retrieve(job.id)
        assert job.status == "succeeded"
        assert c.chat.completions.create(model=job.fine_tuned_model, messages=MSG).choices


# --- limits in every mode ------------------------------------------------------------------------


def test_epochs_bound() -> None:
    with running(limits=Limits(max_epochs=3)) as srv:
        c = client(srv)
        with pytest.raises(openai.BadRequestError, match="over this server's limit"):
            c.fine_tuning.jobs.create(
                model="fake:alpha", training_file=upload(c, 2), hyperparameters={"n_epochs": 4}
            )


def test_rate_limit_answers_429_with_retry_after() -> None:
    now = [0.0]
    with running(rate_limit=RateLimiter(per_minute=6, burst=2, clock=lambda: now[0])) as srv:
        c = client(srv)
        c.models.list()
        c.models.list()
        with pytest.raises(openai.RateLimitError) as e:
            c.models.list()
        h = e.value.response.headers
        assert (
            h["retry-after"] == "10" and h["retry-after-ms"] == "10000"
        )  # 6 a minute: one per 10 s
        assert e.value.body["code"] == "rate_limit_exceeded" and srv.counts["rate_limited"] == 1
        now[0] += 10.0  # a token has come back
        c.models.list()


def test_fault_429_carries_retry_after() -> None:
    with running(faults=Faults(rate=1.0, kinds=("429",), retry_after=0.25)) as srv:
        with pytest.raises(openai.RateLimitError) as e:
            client(srv).models.list()
        assert e.value.response.headers["retry-after"] == "1"
        assert e.value.response.headers["retry-after-ms"] == "250"


def test_api_key_is_required_on_every_route() -> None:
    with running(api_key="s3cret") as srv:
        for key in ("unused", "s3cret-not"):
            c = client(srv, key)
            with pytest.raises(openai.AuthenticationError):
                c.models.list()
            with pytest.raises(openai.AuthenticationError):
                c.files.list()
            with pytest.raises(openai.AuthenticationError):
                c.chat.completions.create(model="fake:alpha", messages=MSG)
        status, _, body = raw_request(srv, "GET /v1/fine_tuning/jobs HTTP/1.1\r\nHost: x")
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
        ok = client(srv, "s3cret")
        assert [m.id for m in ok.models.list().data] == ["fake:alpha"]
        assert ok.chat.completions.create(model="fake:alpha", messages=MSG).choices


def test_serve_cli_reads_the_api_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from sublim import serve as serve_mod

    seen: dict[str, Any] = {}
    monkeypatch.setattr(
        serve_mod, "serve_forever", lambda srv: (seen.update(key=srv.api_key), srv.server_close())
    )
    monkeypatch.setenv("SUBLIM_SERVE_API_KEY", "from-env")
    r = CliRunner().invoke(serve_mod.serve, ["fake:alpha", "--port", "0", "--strict"])
    assert r.exit_code == 0, r.output
    assert seen["key"] == "from-env" and "strict mode" in r.output


@pytest.mark.parametrize("length", ["-5", "abc", "1e3"])
def test_bad_content_length_is_a_clean_400(length: str) -> None:
    with running() as srv:
        head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {length}"
        status, headers, body = raw_request(srv, head, b'{"model": "fake:alpha"}')
        assert status == 400 and body["error"]["code"] == "invalid_content_length"
        assert headers.get("connection") == "close"


def test_oversized_body_is_413() -> None:
    with running(limits=Limits(max_body_bytes=1000)) as srv:
        big = json.dumps(
            {"model": "fake:alpha", "messages": [{"role": "user", "content": "x" * 2000}]}
        ).encode()
        head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(big)}"
        status, _, body = raw_request(srv, head, big)
        assert status == 413 and body["error"]["code"] == "request_too_large"


def test_error_bodies_do_not_echo_paths_or_exceptions(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = get_backend("fake")

    def broken(*a: Any, **k: Any) -> list[str]:
        raise RuntimeError("failed to read /srv/secret/weights.bin")

    def missing(*a: Any, **k: Any) -> list[str]:
        raise SublimError("no model at /srv/secret/model; build it first")

    with running() as srv:
        c = client(srv)
        monkeypatch.setattr(fake, "sample", broken)
        with pytest.raises(openai.InternalServerError) as e:
            c.chat.completions.create(model="fake:alpha", messages=MSG)
        assert "/srv" not in json.dumps(e.value.body) and "RuntimeError" not in json.dumps(
            e.value.body
        )
        monkeypatch.setattr(fake, "sample", missing)
        with pytest.raises(openai.BadRequestError) as e2:
            c.chat.completions.create(model="fake:alpha", messages=MSG)
        assert (
            "/srv" not in json.dumps(e2.value.body)
            and "no model at <path>" in e2.value.body["message"]
        )


# --- credentials in openai-compat URLs ---------------------------------------------------------------


def test_credentials_in_an_openai_compat_url_are_refused_unrecorded() -> None:
    from sublim.registry import parse_model

    with pytest.raises(SublimError, match="embeds credentials") as e:
        parse_model("openai-compat:https://alice:tok-s3cret@host.example/v1#m")
    assert "tok-s3cret" not in str(e.value) and "alice" not in str(e.value)
    with pytest.raises(SublimError, match="query string") as e:
        parse_model("openai-compat:https://host.example/v1?api_key=tok-s3cret#m")
    assert "tok-s3cret" not in str(e.value)
    assert parse_model("openai-compat:https://host.example/v1#m").id == "https://host.example/v1#m"


def test_a_run_dir_never_holds_url_credentials(tmp_path: Any) -> None:
    from sublim.config import ExperimentConfig
    from sublim.pipeline import run_experiment

    cfg = ExperimentConfig.model_validate(
        {
            "models": {
                "reference": "openai-compat:https://alice:tok-s3cret@127.0.0.1:9/v1#m",
                "cross": [],
            }
        }
    )
    with pytest.raises(SublimError, match="embeds credentials"):
        run_experiment(cfg, tmp_path / "run", progress=False)
    written = [p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert not any(b"tok-s3cret" in b for b in written)
