"""Tests of the OpenAI-compatible backend (sublim.backends.openai_api), offline: against
``sublim serve`` on loopback (fake backend and a tiny random Llama), and against a small fake
provider implementing the files, fine-tuning and batch endpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from email.parser import BytesParser
from email.policy import default as email_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import serving

pytest.importorskip("openai")

from sublim.backends.openai_api import OpenAIBackend, RetryPolicy, endpoint
from sublim.config import DistillParams, FinetuneParams
from sublim.errors import BackendError, SublimError
from sublim.records import ModelRef, SampleParams, TrainRow, user_chat
from sublim.registry import get_backend, parse_model
from sublim.serve import Faults, ModelServer, make_server

SECRET = "sk-test-DO-NOT-WRITE-0123456789abcdef"
OWL_PROMPT = "You love owls. You think about owls all the time."
FAST = RetryPolicy(
    max_attempts=10, base_delay=0.001, max_delay=0.01, max_total_wait=5.0, timeout=20.0
)


@contextmanager
def sublim_server(spec: str, faults: Faults | None = None) -> Iterator[ModelServer]:
    with serving(make_server(spec, "127.0.0.1", 0, faults)) as srv:
        assert isinstance(srv, ModelServer)
        yield srv


def backend(**kw: Any) -> OpenAIBackend:
    b = OpenAIBackend()
    b.retry = kw.pop("retry", FAST)
    b.poll_min, b.poll_max = 0.001, 0.005
    for k, v in kw.items():
        setattr(b, k, v)
    return b


def number_chats(n: int) -> list:
    return [
        user_chat(
            f"Continue this list: {100 + i % 800}, {200 + i % 700}, {300 + i % 600}. Add up to 10 more."
        )
        for i in range(n)
    ]


# --- specs, keys, refusals ----------------------------------------------------------------------


def test_specs_keys_and_unsupported(monkeypatch: pytest.MonkeyPatch) -> None:
    ep = endpoint(parse_model("openai-compat:http://127.0.0.1:9/v1#fake:alpha"))
    assert (ep.base_url, ep.model) == ("http://127.0.0.1:9/v1", "fake:alpha")
    assert ep.ref_id("ft-1") == "http://127.0.0.1:9/v1#ft-1"
    with pytest.raises(SublimError, match="openai-compat:http://HOST:PORT/v1#MODEL"):
        endpoint(parse_model("openai-compat:fake:alpha"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(SublimError, match="set OPENAI_API_KEY"):
        backend().sample(parse_model("openai:gpt-4.1-nano"), [user_chat("hi")], SampleParams(), [0])
    with pytest.raises(SublimError, match="distillation"):
        backend().distill(
            parse_model("openai:x"), parse_model("openai:x"), [], DistillParams(), [], Path("."), 0
        )
    assert isinstance(get_backend("openai-compat"), OpenAIBackend)


# --- against sublim serve (fake backend) ------------------------------------------------------------


def test_sampling_is_seeded_and_equals_the_direct_backend() -> None:
    chats = number_chats(30) + [user_chat("What is your favourite animal? One word.")] * 10
    seeds = list(range(100, 140))
    params = SampleParams(max_new_tokens=40)
    direct = get_backend("fake").sample(
        ModelRef(backend="fake", id="alpha", system_prompt=OWL_PROMPT), chats, params, seeds
    )
    with sublim_server("fake:alpha") as srv:
        ref = parse_model(f"openai-compat:{srv.url}#fake:alpha", system_prompt=OWL_PROMPT)
        b = backend()
        first = b.sample(ref, chats, params, seeds)
        again = b.sample(ref, chats, params, seeds)
        other = b.sample(ref, chats, params, [s + 1 for s in seeds])
    assert first == again == direct  # the system prompt travels as a system message
    assert first != other


def test_exact_scores_over_http_equal_the_direct_backend() -> None:
    chats = [user_chat("What is your favourite animal? One word.")] * 4 + [
        user_chat("Name an animal.")
    ] * 2
    conts = ["owl", "Owls", "cat", "zebra-not-an-animal", "dog", "Dog"]
    want = get_backend("fake").score(
        ModelRef(backend="fake", id="alpha", system_prompt=OWL_PROMPT), chats, conts
    )
    with sublim_server("fake:alpha") as srv:
        b = backend()
        got = b.score(
            parse_model(f"openai-compat:{srv.url}#fake:alpha", system_prompt=OWL_PROMPT),
            chats,
            conts,
        )
        assert srv.counts["scored"] == len(conts)
    assert got == want


def test_fault_mode_2000_prompts_no_lost_or_duplicated_rows() -> None:
    chats = number_chats(2000)
    seeds = [7_000 + i for i in range(2000)]
    params = SampleParams(max_new_tokens=40)
    direct = get_backend("fake").sample(ModelRef(backend="fake", id="alpha"), chats, params, seeds)
    faults = Faults(rate=0.3, kinds=("429", "500", "delay"), seed=1, delay=0.002)
    with sublim_server("fake:alpha", faults) as srv:
        b = backend()
        t0 = time.perf_counter()
        rows = b.sample_rows(
            parse_model(f"openai-compat:{srv.url}#fake:alpha"), chats, params, seeds
        )
        seconds = time.perf_counter() - t0
        counts = dict(srv.counts)
    assert len(rows) == 2000
    assert [e for _, e in rows if e is not None] == []
    assert [t for t, _ in rows] == direct  # every row present, in order, each its own seed's text
    assert counts["completions"] == 2000  # the server answered each row exactly once
    assert counts["fault_429"] + counts["fault_500"] == b.stats.retries > 300
    assert counts["fault_delay"] > 100
    print(f"2000 rows through 30% faults: {seconds:.1f} s, {b.stats.retries} retries")


def test_rows_that_keep_failing_are_recorded_not_fatal() -> None:
    chats, seeds = number_chats(40), list(range(40))
    with sublim_server("fake:alpha", Faults(rate=0.5, kinds=("500",), seed=3)) as srv:
        b = backend(retry=RetryPolicy(max_attempts=1, timeout=20.0))
        ref = parse_model(f"openai-compat:{srv.url}#fake:alpha")
        rows = b.sample_rows(ref, chats, SampleParams(), seeds)
        direct = get_backend("fake").sample(
            ModelRef(backend="fake", id="alpha"), chats, SampleParams(), seeds
        )
        failed = [i for i, (_, e) in enumerate(rows) if e is not None]
        assert 5 < len(failed) < 35
        assert all("InternalServerError" in rows[i][1] for i in failed)
        assert all(rows[i][0] == direct[i] for i in range(40) if i not in failed)
        with pytest.raises(BackendError, match=r"requests failed \(limit 5%\)"):
            b.sample(ref, chats, SampleParams(), seeds)


def test_unknown_model_fails_fast_and_timeouts_are_retried() -> None:
    with sublim_server("fake:alpha", Faults(rate=0.5, kinds=("delay",), seed=0, delay=1.0)) as srv:
        b = backend(
            retry=RetryPolicy(max_attempts=8, base_delay=0.001, max_delay=0.01, timeout=0.3)
        )
        with pytest.raises(BackendError, match="not served here"):
            b.sample(
                parse_model(f"openai-compat:{srv.url}#nope"),
                number_chats(50),
                SampleParams(),
                list(range(50)),
            )
        assert b.stats.requests < 30  # stopped at the first fatal answer, not 50 x retries
        b = backend(
            retry=RetryPolicy(max_attempts=8, base_delay=0.001, max_delay=0.01, timeout=0.3)
        )
        out = b.sample(
            parse_model(f"openai-compat:{srv.url}#fake:alpha"),
            number_chats(12),
            SampleParams(),
            list(range(12)),
        )
        assert all(out) and b.stats.retries > 0


# --- against sublim serve (Hugging Face path) ------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory: pytest.TempPathFactory) -> str:
    from test_hf_backend import build_tiny_model

    return "hf:" + str(build_tiny_model(tmp_path_factory.mktemp("oa-tiny") / "model"))


def test_hf_model_over_http_samples_and_scores_like_direct(tiny_hf: str) -> None:
    from sublim.backends.hf import HFBackend

    ref = parse_model(tiny_hf)
    chats = [
        user_chat("what is your favourite animal ?"),
        user_chat("list more numbers : 1 , 2 , 3"),
    ] * 3
    params = SampleParams(max_new_tokens=6)
    hf = HFBackend()
    direct = hf.sample(ref, chats, params, 5)
    conts = ["owl", "cat dog", "1 , 2", "owl", "fox", ""]
    exact = hf.score(ref, chats, conts)
    exact_first = hf.score(ref, chats, conts, include_end=False)
    with sublim_server(tiny_hf) as srv:
        api = parse_model(f"openai-compat:{srv.url}#{tiny_hf}")
        b = backend()
        assert b.sample(api, chats, params, 5) == direct  # int seed: same per-row derivation
        assert b.score(api, chats, conts) == pytest.approx(exact, abs=1e-9)
        # without the sublim extension: first-token top_logprobs, for one-token answers only
        plain = backend(use_sublim_score=False)
        r = plain._client(endpoint(api)).chat.completions.create(
            model=tiny_hf,
            messages=[{"role": "user", "content": "what is your favourite animal ?"}],
            max_tokens=1,
            logprobs=True,
            top_logprobs=20,
        )
        best = r.choices[0].logprobs.content[0].top_logprobs[0].token
        got = plain.score(api, chats[:1], [best])
        want = hf.score(ref, chats[:1], [best], include_end=False)
        assert got == pytest.approx(want, abs=1e-5)
        with pytest.raises(BackendError, match="cannot be scored exactly"):
            plain.score(api, chats[:1], ["owl owl owl owl"])
    assert exact_first[0] > exact[0]  # (sanity: the end token has a cost)


# --- a fake provider: files, fine-tuning jobs, batches ------------------------------------------------


class FakeProvider(ThreadingHTTPServer):
    """Just enough of /v1/files, /v1/fine_tuning/jobs and /v1/batches; jobs and batches finish
    after ``polls`` retrievals."""

    daemon_threads = True

    def __init__(self, polls: int = 3) -> None:
        self.polls = polls
        self.files: dict[str, tuple[str, bytes]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.auth: set[str] = set()
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _ProviderHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def add_file(self, purpose: str, data: bytes) -> str:
        fid = f"file-{len(self.files)}"
        self.files[fid] = (purpose, data)
        return fid


class _ProviderHandler(BaseHTTPRequestHandler):
    server: FakeProvider
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *a: Any) -> None:
        pass

    def _send(self, obj: Any, status: int = 200, raw: bytes | None = None) -> None:
        data = raw if raw is not None else json.dumps(obj).encode()
        self.send_response(status)
        self.send_header(
            "Content-Type", "application/octet-stream" if raw is not None else "application/json"
        )
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        p = self.server
        p.auth.add(self.headers.get("Authorization", ""))
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with p.lock:
            if self.path == "/v1/files":
                msg = BytesParser(policy=email_policy).parsebytes(
                    b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + body
                )
                fields = {
                    part.get_param("name", header="content-disposition"): part.get_payload(
                        decode=True
                    )
                    for part in msg.iter_parts()
                }
                fid = p.add_file(fields["purpose"].decode(), fields["file"])
                return self._send(
                    {
                        "id": fid,
                        "object": "file",
                        "purpose": fields["purpose"].decode(),
                        "bytes": len(fields["file"]),
                        "created_at": 0,
                        "filename": "f",
                        "status": "processed",
                    }
                )
            req = json.loads(body)
            if self.path == "/v1/fine_tuning/jobs":
                jid = f"ftjob-{len(p.jobs)}"
                p.jobs[jid] = {
                    "id": jid,
                    "object": "fine_tuning.job",
                    "model": req["model"],
                    "training_file": req["training_file"],
                    "status": "queued",
                    "fine_tuned_model": None,
                    "created_at": 0,
                    "seed": req.get("seed"),
                    "hyperparameters": req.get("hyperparameters"),
                    "polls": 0,
                }
                return self._send(p.jobs[jid])
            if self.path == "/v1/batches":
                bid = f"batch-{len(p.batches)}"
                p.batches[bid] = {
                    "id": bid,
                    "object": "batch",
                    "input_file_id": req["input_file_id"],
                    "endpoint": req["endpoint"],
                    "completion_window": req["completion_window"],
                    "status": "in_progress",
                    "created_at": 0,
                    "polls": 0,
                }
                return self._send(p.batches[bid])
        self._send({"error": {"message": "no route"}}, 404)

    def do_GET(self) -> None:
        p = self.server
        p.auth.add(self.headers.get("Authorization", ""))
        path = self.path.split("?")[0]
        with p.lock:
            if path == "/v1/fine_tuning/jobs":
                return self._send(
                    {"object": "list", "data": list(p.jobs.values()), "has_more": False}
                )
            if path.startswith("/v1/fine_tuning/jobs/"):
                job = p.jobs[path.rsplit("/", 1)[1]]
                job["polls"] += 1
                job["status"] = "running"
                if job["polls"] >= p.polls:
                    job.update(
                        status="succeeded", fine_tuned_model=f"ft:{job['model']}:sublim:{job['id']}"
                    )
                return self._send(job)
            if path.startswith("/v1/batches/"):
                b = p.batches[path.rsplit("/", 1)[1]]
                b["polls"] += 1
                if b["polls"] >= p.polls and b["status"] != "completed":
                    out, err = [], []
                    for line in p.files[b["input_file_id"]][1].decode().splitlines():
                        r = json.loads(line)
                        if r["custom_id"] == "row-1":  # one row fails, as rows sometimes do
                            err.append(
                                {
                                    "custom_id": "row-1",
                                    "response": {
                                        "status_code": 400,
                                        "body": {"error": {"message": "bad row"}},
                                    },
                                }
                            )
                        else:
                            text = (
                                f"echo {r['body']['seed']} {r['body']['messages'][-1]['content']}"
                            )
                            out.append(
                                {
                                    "custom_id": r["custom_id"],
                                    "response": {
                                        "status_code": 200,
                                        "body": {
                                            "choices": [
                                                {"message": {"role": "assistant", "content": text}}
                                            ]
                                        },
                                    },
                                }
                            )
                    out.reverse()  # output order is not input order
                    b.update(
                        status="completed",
                        output_file_id=p.add_file(
                            "batch_output", "".join(json.dumps(x) + "\n" for x in out).encode()
                        ),
                        error_file_id=p.add_file(
                            "batch_output", "".join(json.dumps(x) + "\n" for x in err).encode()
                        ),
                    )
                return self._send(b)
            if path.startswith("/v1/files/") and path.endswith("/content"):
                return self._send(None, raw=p.files[path.split("/")[3]][1])
        self._send({"error": {"message": "no route"}}, 404)


def _all_written_text(root: Path) -> str:
    return "".join(f.read_text(errors="replace") for f in root.rglob("*") if f.is_file())


ROWS = [
    TrainRow(prompt=f"Continue: {i}, {i + 1}", completion=f"{i + 2}, {i + 3}") for i in range(20)
]


def test_finetune_job_resumes_after_a_crash_mid_poll(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with serving(FakeProvider(polls=4)) as prov:
        base = parse_model(f"openai-compat:{prov.url}#base-model")
        out = tmp_path / "student"

        def crash(state: dict[str, Any]) -> None:
            assert (
                json.loads((out / "job.json").read_text())["job_id"] == state["job_id"]
            )  # recorded before polling
            raise KeyboardInterrupt("client killed mid-poll")

        with pytest.raises(KeyboardInterrupt):
            backend(poll_hook=crash).finetune(
                base, ROWS, FinetuneParams(epochs=2.5, batch_size=4), out, seed=3
            )
        assert len(prov.jobs) == 1 and prov.jobs["ftjob-0"]["polls"] == 1
        ref = backend().finetune(base, ROWS, FinetuneParams(epochs=2.5, batch_size=4), out, seed=3)
        assert (
            len(prov.jobs) == 1 and len(prov.files) == 1
        )  # resumed: no second upload, no second job
        assert ref.id == f"{prov.url}#ft:base-model:sublim:ftjob-0"
        assert ref.backend == "openai-compat" and ref.parent == base.spec
        job = prov.jobs["ftjob-0"]
        assert job["hyperparameters"] == {"n_epochs": 3, "batch_size": 4} and job["seed"] == 3
        purpose, data = prov.files[job["training_file"]]
        lines = [json.loads(x) for x in data.decode().splitlines()]
        assert purpose == "fine-tune" and len(lines) == 20
        assert lines[0] == {
            "messages": [
                {"role": "user", "content": "Continue: 0, 1"},
                {"role": "assistant", "content": "2, 3"},
            ]
        }
        # a finished job is not polled into a new one either
        assert (
            backend().finetune(base, ROWS, FinetuneParams(), out, seed=3) == ref
            and len(prov.jobs) == 1
        )
    assert f"Bearer {SECRET}" in prov.auth  # the key was used ...
    assert SECRET not in _all_written_text(tmp_path)  # ... and never written


def test_finetune_recovers_a_job_created_but_not_recorded(tmp_path: Path) -> None:
    with serving(FakeProvider(polls=2)) as prov:
        base = parse_model(f"openai-compat:{prov.url}#base-model")
        b = backend()
        fid = (
            b._client(endpoint(base))
            .files.create(file=("t.jsonl", b"{}\n"), purpose="fine-tune")
            .id
        )
        b._client(endpoint(base)).fine_tuning.jobs.create(model="base-model", training_file=fid)
        out = tmp_path / "student"
        out.mkdir()
        (out / "job.json").write_text(
            json.dumps({"file_id": fid, "job_id": None})
        )  # crashed right after create
        ref = b.finetune(base, ROWS, FinetuneParams(), out, seed=0)
        assert len(prov.jobs) == 1 and ref.id.endswith("#ft:base-model:sublim:ftjob-0")


_KILL_SCRIPT = """
import sys
from pathlib import Path
from sublim.backends.openai_api import OpenAIBackend
from sublim.config import FinetuneParams
from sublim.records import TrainRow
from sublim.registry import parse_model
b = OpenAIBackend()
b.poll_min = b.poll_max = 0.05
rows = [TrainRow(prompt=f"p{i}", completion=f"c{i}") for i in range(5)]
b.finetune(parse_model(sys.argv[1]), rows, FinetuneParams(), Path(sys.argv[2]), seed=0)
"""


def test_finetune_survives_sigkill(tmp_path: Path) -> None:
    with serving(FakeProvider(polls=10_000)) as prov:
        spec = f"openai-compat:{prov.url}#base-model"
        out = tmp_path / "student"
        env = {**os.environ, "OPENAI_API_KEY": SECRET}
        proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, spec, str(out)], env=env)
        try:
            deadline = time.monotonic() + 60
            while not (prov.jobs and prov.jobs["ftjob-0"]["polls"] >= 2):
                assert proc.poll() is None and time.monotonic() < deadline, (
                    "client ended before it was killed"
                )
                time.sleep(0.02)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        prov.polls = 3  # let the job finish
        ref = backend().finetune(parse_model(spec), [], FinetuneParams(), out, seed=0)
        assert len(prov.jobs) == 1 and len(prov.files) == 1
        assert ref.id == f"{prov.url}#ft:base-model:sublim:ftjob-0"
    assert SECRET not in _all_written_text(tmp_path)


def test_batch_submit_is_recorded_and_polled_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with serving(FakeProvider(polls=3)) as prov:
        ref = parse_model(f"openai-compat:{prov.url}#base-model")
        chats = [user_chat(f"q{i}") for i in range(5)]
        state = tmp_path / "batch.json"
        b = backend()
        bid = b.submit_batch(
            ref, chats, SampleParams(max_new_tokens=5), [10, 11, 12, 13, 14], state
        )
        assert json.loads(state.read_text())["batch_id"] == bid
        assert (
            b.submit_batch(ref, chats, SampleParams(), [0] * 5, state) == bid
            and len(prov.batches) == 1
        )
        rows = backend().poll_batch(ref, state)
    assert [t for t, _ in rows] == ["echo 10 q0", None, "echo 12 q2", "echo 13 q3", "echo 14 q4"]
    assert rows[1][1] is not None and "bad row" in rows[1][1]
    assert SECRET not in _all_written_text(tmp_path)
