"""The OpenAI-compatible backend: API models (``openai:MODEL``) and any server that speaks the
OpenAI HTTP API (``openai-compat:http://host:port/v1#MODEL``: vLLM, llama.cpp, hosted providers,
and ``sublim serve``).

Pipeline position: the backend of the ``generate``, ``evaluate`` and ``student`` stages when the
experiment's models are API models. What it does, and its limits:

- **Sampling** (``sample_rows``, ``sample``): one chat-completion request per row, ``seed`` per
  row (providers treat it as best effort; ``sublim serve`` honours it exactly), at most
  ``SUBLIM_API_CONCURRENCY`` (default 8) requests in flight. 429, 5xx, connection errors and
  timeouts are retried with exponential backoff and jitter (the client's own retries are off, so
  every retry is ours and counted in ``stats``); a row that still fails is returned as an error
  instead of killing the call. ``sample`` raises only when more than ``max_error_rate`` of the
  rows failed.
- **Scoring** (``score``): exact log-probabilities of given answers need the model's
  distribution, which APIs do not expose. Against ``sublim serve`` the non-standard
  ``POST /v1/sublim/score`` gives exact values (discovered through ``/v1/models``). Elsewhere,
  a continuation that is one of the ``top_logprobs`` (at most 20) of the reply's first token
  gets that log-probability (log P(reply starts with that token): ``include_end`` cannot be
  honoured); any other continuation raises a SublimError pointing at sampled rates.
- **Batch API** (``submit_batch``/``poll_batch``): large generation at batch prices; the batch id
  is written to a state file before polling, so a restarted client polls the same batch.
- **Fine-tuning** (``finetune``): uploads the training rows as chat JSONL (``sublim.export``),
  creates a job and writes ``out_dir/job.json`` (file id, then job id) *before* polling; a
  restarted client resumes that job instead of creating a second one. Only the generic
  OpenAI-compatible endpoints are used (``/v1/files``, ``/v1/fine_tuning/jobs``), so any
  provider that implements them works. Epochs and batch size are mapped; the learning rate,
  LoRA settings and schedules are the provider's. Against ``sublim serve`` the job request
  also carries the full ``FinetuneParams`` (non-standard ``sublim.finetune`` field) and the
  seed, so the server trains exactly what the direct backend would; the student comes back as
  ``openai-compat:<URL>#ft:<base>:sublim:<job id>``, served by the same server.
- **Distillation** is impossible: APIs do not expose full next-token distributions.

The API key comes from ``OPENAI_API_KEY`` only; it is never written to artifacts and is
scrubbed from error messages.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from sublim.backends.base import Progress
from sublim.config import DistillParams, FinetuneParams
from sublim.errors import BackendError, MissingExtraError, SublimError
from sublim.records import Chat, ModelRef, SampleParams, TrainRow
from sublim.seeds import row_seeds  # the Hugging Face backend's rule: HTTP samples what direct does

DEFAULT_CONCURRENCY = 8
MAX_ERROR_RATE = 0.05  # ``sample`` raises when more than this fraction of rows failed
TOP_LOGPROBS = 20  # the most first-token alternatives OpenAI returns
SCORE_CHUNK = 256  # continuations per /v1/sublim/score request
_COMPAT_DUMMY_KEY = "sublim-no-key"  # local servers ignore keys, the client insists on one

RowResult = tuple[str | None, str | None]  # (text, error): exactly one is None


@dataclass(frozen=True)
class RetryPolicy:
    """How transient failures (429, 5xx, connection errors, timeouts) are retried."""

    max_attempts: int = 6
    base_delay: float = 0.5  # seconds before the first retry; doubles per attempt
    max_delay: float = 20.0  # cap of one wait
    max_total_wait: float = 120.0  # cap of all waits of one request
    timeout: float = 120.0  # seconds per HTTP request

    @staticmethod
    def from_env() -> RetryPolicy:
        """Defaults overridden by SUBLIM_API_MAX_ATTEMPTS, SUBLIM_API_BACKOFF (base delay),
        SUBLIM_API_MAX_DELAY, SUBLIM_API_MAX_WAIT and SUBLIM_API_TIMEOUT."""
        d = RetryPolicy()
        env = os.environ.get
        return RetryPolicy(
            max_attempts=int(env("SUBLIM_API_MAX_ATTEMPTS", d.max_attempts)),
            base_delay=float(env("SUBLIM_API_BACKOFF", d.base_delay)),
            max_delay=float(env("SUBLIM_API_MAX_DELAY", d.max_delay)),
            max_total_wait=float(env("SUBLIM_API_MAX_WAIT", d.max_total_wait)),
            timeout=float(env("SUBLIM_API_TIMEOUT", d.timeout)),
        )


@dataclass(frozen=True)
class Endpoint:
    """Where a model lives: base URL (None: the client's default) and the provider's model name."""

    backend: str
    base_url: str | None
    model: str

    def ref_id(self, model: str) -> str:
        """The ModelRef id of another model at this endpoint (e.g. a fine-tuned one)."""
        return model if self.backend == "openai" else f"{self.base_url}#{model}"


def endpoint(ref: ModelRef) -> Endpoint:
    """Parse an ``openai:`` / ``openai-compat:`` ModelRef into its endpoint."""
    if ref.backend == "openai":
        return Endpoint("openai", None, ref.id)
    if ref.backend != "openai-compat":
        raise ValueError(f"OpenAIBackend cannot serve backend {ref.backend!r}")
    url, sep, model = ref.id.partition("#")
    if not sep or not model or not re.match(r"^https?://", url):
        raise SublimError(
            f"bad model spec '{ref.spec}'; write openai-compat:http://HOST:PORT/v1#MODEL"
        )
    return Endpoint("openai-compat", url.rstrip("/"), model)


def _openai() -> Any:
    try:
        import openai
    except ImportError:
        raise MissingExtraError("openai", "openai", "API models") from None
    return openai


def _api_key(ep: Endpoint) -> str:
    key = os.environ.get("OPENAI_API_KEY", "").strip()
    if key:
        return key
    if ep.backend == "openai":
        raise SublimError(
            "set OPENAI_API_KEY in the environment to use openai: models (keys are never read from configs or files)"
        )
    return _COMPAT_DUMMY_KEY


def _scrub(text: str) -> str:
    """An error message safe to record: the API key (and anything key-shaped) removed."""
    key = os.environ.get("OPENAI_API_KEY", "").strip()
    if key:
        text = text.replace(key, "***")
    text = re.sub(r"\bsk-[A-Za-z0-9_\-*]{6,}", "sk-***", text)
    return " ".join(text.split())[:300]


def _describe(e: BaseException) -> str:
    return _scrub(f"{type(e).__name__}: {e}")


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    from sublim.artifacts import atomic_write_json

    atomic_write_json(path, obj)


class _Fatal(Exception):
    """A failure no retry or other row can fix (bad key, unknown model): stop the whole call."""


@dataclass
class _Stats:
    requests: int = 0
    retries: int = 0
    failed_rows: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **kw: int) -> None:
        with self.lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)

    def as_dict(self) -> dict[str, int]:
        return {"requests": self.requests, "retries": self.retries, "failed_rows": self.failed_rows}


class OpenAIBackend:
    """Backend for ``openai:`` and ``openai-compat:`` models (see the module docstring).

    Operational knobs are plain attributes, read from the environment at construction:
    ``concurrency`` (SUBLIM_API_CONCURRENCY), ``retry`` (RetryPolicy.from_env),
    ``poll_min``/``poll_max`` (SUBLIM_API_POLL_SECONDS, polling of jobs and batches),
    ``max_error_rate``. ``poll_hook(state)`` is called after every poll (tests use it to
    simulate a crash mid-poll)."""

    name = "openai"
    # fine-tuning jobs upload sublim.export's chat JSONL, which keeps a row's own system
    # message as the OpenAI format allows (a teacher's chat file, an inoculated student)
    trains_system_messages = True

    def __init__(self) -> None:
        self.concurrency = max(
            1, int(os.environ.get("SUBLIM_API_CONCURRENCY", DEFAULT_CONCURRENCY))
        )
        self.retry = RetryPolicy.from_env()
        self.poll_min = float(os.environ.get("SUBLIM_API_POLL_SECONDS", "5"))
        self.poll_max = 60.0
        self.max_error_rate = MAX_ERROR_RATE
        self.use_sublim_score = True  # use /v1/sublim/score when the server offers it
        self.poll_hook: Callable[[dict[str, Any]], None] | None = None
        self.stats = _Stats()
        self.last_errors: list[str] = []  # per-row errors of the last ``sample`` call
        self._clients: dict[tuple[str | None, str, float], Any] = {}
        self._sublim_servers: dict[str | None, bool] = {}
        self._lock = threading.Lock()
        self._jitter = random.Random()  # timing only: never affects results

    # --- plumbing ---------------------------------------------------------------------------
    def _client(self, ep: Endpoint) -> Any:
        openai = _openai()
        key = _api_key(ep)
        import hashlib

        ck = (ep.base_url, hashlib.sha256(key.encode()).hexdigest()[:16], self.retry.timeout)
        with self._lock:
            if ck not in self._clients:
                kw: dict[str, Any] = {
                    "api_key": key,
                    "max_retries": 0,
                    "timeout": self.retry.timeout,
                }
                if ep.base_url is not None:
                    kw["base_url"] = ep.base_url
                self._clients[ck] = openai.OpenAI(**kw)
            return self._clients[ck]

    def _call(self, fn: Callable[[], Any], cancel: threading.Event | None = None) -> Any:
        """``fn()`` with retries on transient failures; raises _Fatal on failures that every
        request would hit, and the last error when retries are exhausted."""
        openai = _openai()
        pol = self.retry
        waited = 0.0
        for attempt in range(pol.max_attempts):
            if cancel is not None and cancel.is_set():
                raise _Fatal("cancelled")
            self.stats.add(requests=1)
            try:
                return fn()
            except (
                openai.AuthenticationError,
                openai.PermissionDeniedError,
                openai.NotFoundError,
            ) as e:
                raise _Fatal(_describe(e)) from None
            except (openai.APIConnectionError, openai.APIStatusError) as e:  # timeouts included
                status = getattr(e, "status_code", None)
                transient = status is None or status in (408, 409, 429) or status >= 500
                if not transient or attempt == pol.max_attempts - 1:
                    raise
                delay = min(pol.max_delay, pol.base_delay * 2**attempt)
                # equal jitter: half fixed, half random, so retries of many rows spread out
                delay = delay / 2 + self._jitter.uniform(0, delay / 2)
                retry_after = _retry_after(e)
                if retry_after is not None:
                    delay = max(delay, min(retry_after, pol.max_delay))
                if waited + delay > pol.max_total_wait:
                    raise
                waited += delay
                self.stats.add(retries=1)
                time.sleep(delay)
        raise AssertionError("unreachable")

    # --- sampling ---------------------------------------------------------------------------
    def _request_kwargs(self, ep: Endpoint, params: SampleParams) -> dict[str, Any]:
        kw: dict[str, Any] = {"model": ep.model, "temperature": params.temperature, "n": 1}
        if params.top_p < 1.0:
            kw["top_p"] = params.top_p
        # OpenAI's own models take max_completion_tokens (max_tokens is deprecated there);
        # OpenAI-compatible servers widely understand only max_tokens.
        kw["max_completion_tokens" if ep.backend == "openai" else "max_tokens"] = (
            params.max_new_tokens
        )
        return kw

    def sample_rows(
        self,
        model: ModelRef,
        chats: Sequence[Chat],
        params: SampleParams,
        seed: int | Sequence[int],
        progress: Progress | None = None,
    ) -> list[RowResult]:
        """One (text, None) or (None, error) per chat, in order. Transient failures are retried;
        failures every row would hit (bad key, unknown model) raise BackendError at once."""
        if not chats:
            return []
        ep = endpoint(model)
        client = self._client(ep)
        seeds = row_seeds(seed, len(chats))
        base_kw = self._request_kwargs(ep, params)
        cancel = threading.Event()

        def one(i: int) -> RowResult:
            messages = [{"role": m.role, "content": m.content} for m in model.apply(chats[i])]
            try:
                resp = self._call(
                    lambda: client.chat.completions.create(
                        messages=messages, seed=seeds[i], **base_kw
                    ),
                    cancel,
                )
            except _Fatal:
                raise
            except Exception as e:  # noqa: BLE001 (retries exhausted or a per-row 4xx: recorded, not raised)
                return None, _describe(e)
            if not resp.choices:
                return None, "EmptyResponse: the server returned no choices"
            return (resp.choices[0].message.content or "").strip(), None

        out: list[RowResult] = [(None, "not run")] * len(chats)
        done = 0
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(chats))) as pool:
            futures = {pool.submit(one, i): i for i in range(len(chats))}
            try:
                for fut in as_completed(futures):
                    out[futures[fut]] = fut.result()
                    done += 1
                    if progress:
                        progress(done, len(chats))
            except _Fatal as e:
                cancel.set()
                for f in futures:
                    f.cancel()
                raise BackendError(
                    f"{model.spec}: {e}; check OPENAI_API_KEY, the base URL and the model name"
                ) from None
        self.stats.add(failed_rows=sum(err is not None for _, err in out))
        return out

    def sample(
        self,
        model: ModelRef,
        chats: Sequence[Chat],
        params: SampleParams,
        seed: int | Sequence[int],
        progress: Progress | None = None,
    ) -> list[str]:
        """Texts of ``sample_rows``; failed rows are "" (their errors in ``last_errors``). Raises
        BackendError when more than ``max_error_rate`` of the rows failed."""
        rows = self.sample_rows(model, chats, params, seed, progress)
        errors = [e for _, e in rows if e is not None]
        self.last_errors = errors
        if len(errors) > self.max_error_rate * len(rows):
            raise BackendError(
                f"{model.spec}: {len(errors)}/{len(rows)} requests failed (limit "
                f"{self.max_error_rate:.0%}), e.g. {errors[0]}; check the endpoint and rerun to retry"
            )
        return [t if t is not None else "" for t, _ in rows]

    # --- scoring ----------------------------------------------------------------------------
    def is_sublim_server(self, ep: Endpoint) -> bool:
        """Whether the endpoint is ``sublim serve`` (it lists models with a ``sublim`` field)."""
        if ep.base_url is None:
            return False
        if ep.base_url not in self._sublim_servers:
            client = self._client(ep)
            openai = _openai()

            def listing() -> Any:
                try:
                    return client.models.list()
                except openai.NotFoundError:  # a server without /v1/models: an answer, not sublim
                    return None

            try:
                models = self._call(listing)  # 429s and 5xx are retried like every request
                found = models is not None and any(
                    isinstance((m.model_extra or {}).get("sublim"), dict) for m in models.data
                )
            except Exception as e:  # noqa: BLE001 (unreachable, auth, retries exhausted)
                # never remembered: a transient failure must not switch the metric for the run
                raise BackendError(
                    f"{ep.base_url}: could not list models ({_describe(e)}); check the endpoint "
                    "and rerun"
                ) from None
            self._sublim_servers[ep.base_url] = found
        return self._sublim_servers[ep.base_url]

    def score(
        self,
        model: ModelRef,
        chats: Sequence[Chat],
        continuations: Sequence[str],
        include_end: bool = True,
    ) -> list[float]:
        if len(chats) != len(continuations):
            raise ValueError(f"{len(chats)} chats but {len(continuations)} continuations")
        if not chats:
            return []
        ep = endpoint(model)
        if self.use_sublim_score and self.is_sublim_server(ep):
            return self._score_sublim(ep, model, chats, continuations, include_end)
        return self._score_top_logprobs(ep, model, chats, continuations)

    def _score_sublim(
        self,
        ep: Endpoint,
        model: ModelRef,
        chats: Sequence[Chat],
        conts: Sequence[str],
        include_end: bool,
    ) -> list[float]:
        client = self._client(ep)
        out: list[float] = []
        for start in range(0, len(chats), SCORE_CHUNK):
            body = {
                "model": ep.model,
                "chats": [
                    [{"role": m.role, "content": m.content} for m in model.apply(c)]
                    for c in chats[start : start + SCORE_CHUNK]
                ],
                "continuations": list(conts[start : start + SCORE_CHUNK]),
                "include_end": include_end,
            }
            try:
                resp = self._call(partial(client.post, "/sublim/score", body=body, cast_to=object))
            except _Fatal as e:
                raise BackendError(
                    f"{model.spec}: {e}; check the base URL and the model name"
                ) from None
            except Exception as e:  # noqa: BLE001 (retries exhausted: one line for the user)
                raise BackendError(
                    f"{model.spec}: scoring failed ({_describe(e)}); rerun to retry"
                ) from None
            vals = resp.get("logprobs") if isinstance(resp, dict) else None
            if not isinstance(vals, list) or len(vals) != len(conts[start : start + SCORE_CHUNK]):
                raise BackendError(
                    f"{model.spec}: malformed /v1/sublim/score answer; is the server a current `sublim serve`?"
                )
            out.extend(float(v) for v in vals)
        return out

    def can_score_exactly(self, model: ModelRef) -> bool:
        """Whether ``score`` gives exact log-probabilities of arbitrary replies for this model:
        only through ``sublim serve``'s ``/v1/sublim/score``. Elsewhere (``openai:`` models, vLLM,
        hosted providers, a strict server) the evaluation falls back to ``first_token_logprobs``."""
        return self.use_sublim_score and self.is_sublim_server(endpoint(model))

    def first_token_logprobs(
        self, model: ModelRef, chats: Sequence[Chat], top: int = TOP_LOGPROBS
    ) -> list[list[tuple[str, float]]]:
        """Per chat, the ``top`` (at most 20) most likely first tokens of the reply with their
        log-probabilities, most likely first, each token string once: one request per distinct
        chat (1 new token, ``logprobs``, ``top_logprobs``). Requested at temperature 1, so the
        reported values are the model's own distribution on every server (the sampled token is
        not used, except that it is added when the table lacks it)."""
        if not 1 <= top <= TOP_LOGPROBS:
            raise ValueError(f"top must be in 1..{TOP_LOGPROBS}, got {top}")
        if not chats:
            return []
        ep = endpoint(model)
        client = self._client(ep)
        keys = [json.dumps([[m.role, m.content] for m in model.apply(c)]) for c in chats]
        unique = {k: c for k, c in zip(keys, chats)}
        kw = self._request_kwargs(
            ep, SampleParams(temperature=1.0, top_p=1.0, max_new_tokens=1, batch_size=1)
        )

        def fetch(key: str) -> tuple[str, list[tuple[str, float]]]:
            messages = [{"role": m.role, "content": m.content} for m in model.apply(unique[key])]
            try:
                resp = self._call(
                    lambda: client.chat.completions.create(
                        messages=messages, logprobs=True, top_logprobs=top, **kw
                    )
                )
            except _Fatal:
                raise
            except Exception as e:  # noqa: BLE001 (retries exhausted or a 4xx: one line for the user)
                raise BackendError(
                    f"{model.spec}: first-token log-probabilities failed ({_describe(e)}); rerun to retry"
                ) from None
            content = (
                (resp.choices[0].logprobs.content or [])
                if resp.choices and resp.choices[0].logprobs
                else []
            )
            if not content:
                raise BackendError(
                    f"{model.spec}: the endpoint returns no log-probabilities; measure sampled "
                    'rates only with --set eval.p_target_method="none" --set '
                    'eval.primary_metric="rate"'
                )
            first = content[0]
            table: dict[str, float] = {}
            for t in first.top_logprobs or []:
                table.setdefault(t.token, float(t.logprob))
            table.setdefault(first.token, float(first.logprob))
            return key, sorted(table.items(), key=lambda kv: -kv[1])

        tables: dict[str, list[tuple[str, float]]] = {}
        try:
            with ThreadPoolExecutor(max_workers=min(self.concurrency, len(unique))) as pool:
                for key, table in pool.map(fetch, list(unique)):
                    tables[key] = table
        except _Fatal as e:
            raise BackendError(
                f"{model.spec}: {e}; check OPENAI_API_KEY, the base URL and the model name"
            ) from None
        return [tables[k] for k in keys]

    def _score_top_logprobs(
        self, ep: Endpoint, model: ModelRef, chats: Sequence[Chat], conts: Sequence[str]
    ) -> list[float]:
        """First-token top_logprobs (see the module docstring): a continuation that is one of the
        listed first tokens gets its log-probability, any other raises."""
        del ep
        out = []
        for cont, table in zip(conts, self.first_token_logprobs(model, chats)):
            lp = dict(table).get(cont)
            if lp is not None:
                out.append(lp)
                continue
            raise BackendError(
                f"{model.spec}: {cont!r} is not among the top {TOP_LOGPROBS} first tokens this "
                "endpoint exposes, so it cannot be scored exactly; remove this suite from "
                "eval.extra_suites (the favourite-animal suite measures API models with bounds, "
                "eval.p_target_method), or serve an open model with `sublim serve` (not --strict)"
            )
        return out

    # --- Batch API ----------------------------------------------------------------------------
    def submit_batch(
        self,
        model: ModelRef,
        chats: Sequence[Chat],
        params: SampleParams,
        seed: int | Sequence[int],
        state_path: Path,
    ) -> str:
        """Submit one chat-completion batch (or return the one already recorded in ``state_path``);
        the batch id is written to ``state_path`` before anything polls it. The uploaded input
        file is recorded first, and a batch already created on it (a crash between creating the
        batch and recording it) is found and reused, so a rerun never submits twice."""
        state_path = Path(state_path)
        state: dict[str, Any] = json.loads(state_path.read_text()) if state_path.is_file() else {}
        if state.get("batch_id"):
            return str(state["batch_id"])
        ep = endpoint(model)
        client = self._client(ep)
        try:
            if not state.get("input_file_id"):
                seeds = row_seeds(seed, len(chats))
                base_kw = self._request_kwargs(ep, params)
                lines = []
                for i, (c, s) in enumerate(zip(chats, seeds, strict=True)):
                    messages = [{"role": m.role, "content": m.content} for m in model.apply(c)]
                    body = {**base_kw, "seed": s, "messages": messages}
                    req = {
                        "custom_id": f"row-{i}",
                        "method": "POST",
                        "url": "/v1/chat/completions",
                        "body": body,
                    }
                    lines.append(json.dumps(req))
                data = ("\n".join(lines) + "\n").encode()
                f = self._call(
                    lambda: client.files.create(file=("batch.jsonl", data), purpose="batch")
                )
                state = {
                    "batch_id": None,
                    "input_file_id": f.id,
                    "n": len(chats),
                    "model": model.spec,
                }
                _write_json(
                    state_path, state
                )  # before creating the batch: a restart reuses the file
            fid = state["input_file_id"]
            batch = self._find_batch(client, fid) or self._call(
                lambda: client.batches.create(
                    input_file_id=fid, endpoint="/v1/chat/completions", completion_window="24h"
                )
            )
        except _Fatal as e:
            raise BackendError(
                f"{model.spec}: {e}; check OPENAI_API_KEY and the base URL"
            ) from None
        _write_json(state_path, {**state, "batch_id": batch.id})
        return str(batch.id)

    def _find_batch(self, client: Any, file_id: str) -> Any:
        """A live batch created on ``file_id`` (None when there is none or listing fails)."""
        try:
            page = self._call(lambda: client.batches.list(limit=100))
        except Exception:  # noqa: BLE001 (providers without batch listing: nothing to recover)
            return None
        for b in getattr(page, "data", []) or []:
            if getattr(b, "input_file_id", None) == file_id and b.status not in (
                "failed",
                "expired",
                "cancelled",
            ):
                return b
        return None

    def poll_batch(
        self, model: ModelRef, state_path: Path, max_wait: float | None = None
    ) -> list[RowResult]:
        """Poll the batch recorded in ``state_path`` until it ends; one (text, error) per row."""
        state = json.loads(Path(state_path).read_text())
        ep = endpoint(model)
        client = self._client(ep)
        batch = self._poll(
            lambda: client.batches.retrieve(state["batch_id"]),
            lambda b: b.status in ("completed", "failed", "expired", "cancelled"),
            {"batch_id": state["batch_id"]},
            max_wait,
        )
        n = int(state["n"])
        out: list[RowResult] = [(None, f"missing from batch output (status {batch.status})")] * n
        for fid in (getattr(batch, "error_file_id", None), getattr(batch, "output_file_id", None)):
            if not fid:
                continue
            text = self._call(partial(client.files.content, fid)).text
            for line in text.splitlines():
                if not line.strip():
                    continue
                rec = json.loads(line)
                i = int(str(rec.get("custom_id", "")).removeprefix("row-"))
                resp = rec.get("response") or {}
                body = resp.get("body") or {}
                if rec.get("error") or resp.get("status_code", 200) >= 400:
                    out[i] = (
                        None,
                        _scrub(json.dumps(rec.get("error") or body.get("error") or body)),
                    )
                else:
                    out[i] = ((body["choices"][0]["message"]["content"] or "").strip(), None)
        return out

    def _poll(
        self,
        fetch: Callable[[], Any],
        done: Callable[[Any], bool],
        info: dict[str, Any],
        max_wait: float | None = None,
        intervals: tuple[float, float] | None = None,
    ) -> Any:
        """Fetch until ``done``, waiting poll_min seconds growing by 1.5x up to poll_max (or the
        given (first, longest) ``intervals``)."""
        first, longest = intervals or (self.poll_min, self.poll_max)
        interval, t0 = first, time.monotonic()
        while True:
            try:
                obj = self._call(fetch)
            except _Fatal as e:
                raise BackendError(f"polling {info}: {e}") from None
            if self.poll_hook is not None:
                self.poll_hook({**info, "status": getattr(obj, "status", None)})
            if done(obj):
                return obj
            if max_wait is not None and time.monotonic() - t0 > max_wait:
                raise BackendError(
                    f"still running after {max_wait:.0f} s: {info}; rerun to keep polling"
                )
            time.sleep(interval)
            interval = min(longest, interval * 1.5)

    # --- fine-tuning ------------------------------------------------------------------------------
    def finetune(
        self,
        base: ModelRef,
        rows: Sequence[TrainRow],
        params: FinetuneParams,
        out_dir: Path,
        seed: int,
        progress: Progress | None = None,
    ) -> ModelRef:
        """A provider fine-tuning job on ``rows``; ``out_dir/job.json`` records it before polling,
        and an existing job.json is resumed rather than creating a second job."""
        from sublim.export import to_chat_jsonl

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        ep = endpoint(base)
        client = self._client(ep)
        job_path = out_dir / "job.json"
        state: dict[str, Any] = json.loads(job_path.read_text()) if job_path.is_file() else {}
        hyper = {
            "n_epochs": max(1, math.ceil(params.epochs)),
            "batch_size": params.update_batch,
        }
        # ``sublim serve`` takes the whole recipe (fractional epochs, learning rate, LoRA,
        # schedule) in a non-standard field, so a run through it trains exactly like a direct
        # run; other providers would reject the unknown field.
        sublim_server = self.is_sublim_server(ep)
        extra = (
            {"extra_body": {"sublim": {"finetune": params.model_dump(mode="json")}}}
            if sublim_server
            else {}
        )
        try:
            if not state.get("file_id"):
                data_path = out_dir / "train_chat.jsonl"
                n = to_chat_jsonl(rows, data_path)
                if n == 0:
                    raise SublimError("no training rows to upload; check the filter's output")
                payload = data_path.read_bytes()
                f = self._call(
                    lambda: client.files.create(file=("train.jsonl", payload), purpose="fine-tune")
                )
                note = (
                    "the full FinetuneParams were sent to sublim serve"
                    if sublim_server
                    else "learning rate, schedule and LoRA settings are the provider's"
                )
                state = {
                    "base": base.spec,
                    "file_id": f.id,
                    "job_id": None,
                    "n_rows": n,
                    "hyperparameters": hyper,
                    "seed": seed,
                    "note": note,
                }
                _write_json(job_path, state)  # before creating the job: a restart reuses the file
            if not state.get("job_id"):
                # A crash between creating the job and recording it leaves a job we do not know
                # about: look for one on our file before creating another.
                job = self._find_job(client, state["file_id"])
                if job is None:
                    job = self._call(
                        lambda: client.fine_tuning.jobs.create(
                            model=ep.model,
                            training_file=state["file_id"],
                            seed=seed,
                            hyperparameters=hyper,
                            **extra,
                        )
                    )
                state = {**state, "job_id": job.id}
                _write_json(job_path, state)  # recorded BEFORE polling
        except _Fatal as e:
            raise BackendError(
                f"{base.spec}: {e}; check OPENAI_API_KEY, the base URL and the model name"
            ) from None
        job = self._poll(
            lambda: client.fine_tuning.jobs.retrieve(state["job_id"]),
            lambda j: j.status in ("succeeded", "failed", "cancelled"),
            {"job_id": state["job_id"]},
            # a local sublim server: polling is cheap and jobs are short, look often
            intervals=(min(self.poll_min, 1.0), min(self.poll_max, 5.0)) if sublim_server else None,
        )
        if job.status != "succeeded" or not job.fine_tuned_model:
            err = getattr(job, "error", None)
            msg = _scrub(str(getattr(err, "message", "") or err or "no details"))
            raise BackendError(
                f"fine-tuning job {state['job_id']} {job.status}: {msg}; delete {job_path} to start a new job"
            )
        _write_json(
            job_path, {**state, "status": job.status, "fine_tuned_model": job.fine_tuned_model}
        )
        if progress:
            progress(1, 1)
        return ModelRef(backend=base.backend, id=ep.ref_id(job.fine_tuned_model), parent=base.spec)

    def _find_job(self, client: Any, file_id: str) -> Any:
        try:
            page = self._call(lambda: client.fine_tuning.jobs.list(limit=100))
        except Exception:  # noqa: BLE001 (providers without job listing: nothing to recover)
            return None
        for job in getattr(page, "data", []) or []:
            if getattr(job, "training_file", None) == file_id and job.status != "cancelled":
                return job
        return None

    def distill(
        self,
        teacher: ModelRef,
        student_base: ModelRef,
        chats: Sequence[Chat],
        params: DistillParams,
        exclude: Sequence[str],
        out_dir: Path,
        seed: int,
        progress: Progress | None = None,
    ) -> ModelRef:
        raise SublimError(
            "logit distillation needs full next-token distributions, which APIs do not expose; "
            "use student.mode = 'sft' with API models, or a Hugging Face model"
        )


def _retry_after(e: BaseException) -> float | None:
    resp = getattr(e, "response", None)
    headers = getattr(resp, "headers", None)
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        v = headers.get(name)
        if v is not None:
            try:
                return float(v) * scale
            except ValueError:
                return None
    return None
