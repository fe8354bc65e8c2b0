"""``sublim serve``: models the lab can load, over OpenAI-compatible HTTP on localhost, including
fine-tuning jobs whose students it then serves.

Pipeline position: beside the pipeline, not in it. It lets any OpenAI client (the ``openai``
package, inspect_ai, sublim's own ``openai-compat:`` backend) sample, score and fine-tune sublim
models: the built-in world (``tiny``), Hugging Face directories (``hf:/dir``), trained students,
and the fake backend (``fake:alpha``, for fast tests). A whole experiment can therefore run over
HTTP: ``models.reference = "openai-compat:http://127.0.0.1:PORT/v1#tiny"``.

Models. The server serves one or more base models (``sublim serve tiny fake:alpha``), each under
the name it was given and its ``backend:id`` spec, plus every model its fine-tuning jobs trained
(``ft:<base>:<suffix>:<job id>``). A request picks one with its ``model`` field.

Endpoints (standard library only: ``http.server.ThreadingHTTPServer``; model calls are
serialised with a lock because one model instance serves every connection):

- ``GET /v1/models``, ``GET /v1/models/{name}``: the served models, each with a non-standard
  ``sublim`` field that tells sublim's client this server scores exactly and takes full
  fine-tuning recipes;
- ``POST /v1/chat/completions``: ``messages``, ``n``, ``temperature``, ``top_p``, ``max_tokens``
  (or ``max_completion_tokens``), ``seed``, ``logprobs``, ``top_logprobs``. Choice ``j`` of a
  request with seed ``s`` is sampled with seed ``s`` (j = 0) or ``derive_seed("choice", s, j)``,
  exactly as the backend samples a row with that seed. Log-probabilities are the model's
  untempered next-token log-softmax at each generated token, read from the decoding loop
  (backends with ``sample_logprobs``: Hugging Face models); for other backends a choice has one
  pseudo-token, the whole reply, with its exact log-probability;
- ``POST /v1/sublim/score`` (non-standard): ``{"model", "chats", "continuations",
  "include_end"}`` -> ``{"logprobs": [...]}``, the backend's exact ``score``;
- ``POST /v1/files`` (multipart: ``file``, ``purpose``), ``GET /v1/files``,
  ``GET /v1/files/{id}``, ``GET /v1/files/{id}/content``: uploaded chat JSONL;
- ``POST /v1/fine_tuning/jobs``: ``model``, ``training_file``, ``hyperparameters``
  (``n_epochs``, ``batch_size``, ``learning_rate_multiplier``; also accepted under
  ``method.supervised``), ``seed``, ``suffix``, and the non-standard ``sublim.finetune``: a full
  ``FinetuneParams`` that replaces the hyperparameter mapping, so a run through the server trains
  with exactly the direct run's recipe. ``GET /v1/fine_tuning/jobs`` (newest first, ``limit``,
  ``after``), ``GET /v1/fine_tuning/jobs/{id}``, ``POST /v1/fine_tuning/jobs/{id}/cancel``.
  Jobs run one at a time in a background thread that calls the base model's backend
  ``finetune`` (Hugging Face for ``tiny``/``hf:``, the fake backend for ``fake:``) with the
  job's seed; training does not hold the inference lock, so the server keeps answering.

State. Uploaded files, jobs and trained models live under ``--state-dir`` (default: a fresh
temporary directory), recorded in ``state.json`` after every change. A server restarted on the
same directory serves the same trained models under the same names, and re-runs jobs that were
queued or running when it stopped.

Strict mode (``--strict``): the same models and jobs, but only what the real OpenAI API offers,
so a client tested against it cannot lean on lab-only features. The limits are OpenAI's, from the
API reference ("Create chat completion", platform.openai.com/docs/api-reference/chat/create):
``n`` 1..128, ``top_logprobs`` an integer 0..20 that needs ``logprobs: true``, ``temperature``
0..2, ``top_p`` 0..1; a body key outside the documented parameters is answered as the API
answers it, 400 "Unrecognized request argument supplied: <key>" (so ``echo`` and
``prompt_logprobs``, i.e. prompt log-probabilities, are refused); documented parameters this
server cannot honour (``stop``, ``tools``, ``logit_bias``, penalties, ...) are a 400, not
silently ignored. Models carry only ``id``, ``object``, ``created``, ``owned_by`` (no ``sublim``
field), ``/v1/sublim/score`` is a 404 like any unknown URL, fine-tuning jobs take only OpenAI's
fields (whole ``n_epochs``/``batch_size``, at least 10 training examples, as OpenAI's fine-tuning
guide requires) and uploads an OpenAI ``purpose``. Errors have OpenAI's shape
``{"error": {"message", "type", "param", "code"}}`` and wording for range errors.

Limits (every mode; ``Limits``): ``max_tokens``/``max_completion_tokens`` at most 4096 by default,
``n`` at most 128, ``n_epochs`` at most 50, JSON bodies 32 MiB and uploads
512 MiB (OpenAI's per-file limit; 413 beyond); a negative or malformed ``Content-Length`` is a
400 and closes the connection. With an API key (``--api-key`` or ``SUBLIM_SERVE_API_KEY``)
every route needs ``Authorization: Bearer <key>`` (401 ``invalid_api_key`` otherwise). Error
bodies never carry exception text or filesystem paths: unexpected errors are logged to stderr
and answered with a generic 500.

Rate limits and faults (opt-in, for testing clients): ``--rate-limit RPM`` is a token bucket
(``RateLimiter``) over every /v1 route; over it a request gets 429 ``rate_limit_exceeded`` with
``Retry-After`` (seconds), OpenAI's ``retry-after-ms`` and ``x-ratelimit-*`` headers. Fault mode
answers a seeded fraction of requests 429 (with the same retry headers) or 500, or delays them.
The server binds to loopback unless told otherwise.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import math
import queue
import random
import re
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import default as email_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import click

from sublim.artifacts import atomic_write_bytes, atomic_write_json, stable_hash
from sublim.backends.base import TokenLogprobSampler
from sublim.config import FinetuneParams
from sublim.errors import SublimError
from sublim.records import Chat, Message, ModelRef, SampleParams, TrainRow
from sublim.registry import get_backend, parse_model
from sublim.seeds import derive_seed

DEFAULT_MAX_TOKENS = 256
MAX_TOP_LOGPROBS = 20  # OpenAI: top_logprobs is an integer in 0..20
FAULT_KINDS = ("429", "500", "delay")
STATE_FILE = "state.json"
_STATE_TAG = "@state"  # trained-model paths are stored relative to the state dir (it may move)
JOB_DONE = frozenset({"succeeded", "failed", "cancelled"})
API_KEY_ENV = "SUBLIM_SERVE_API_KEY"

# The body parameters of OpenAI's POST /v1/chat/completions and POST /v1/fine_tuning/jobs (API
# reference, "Create chat completion" / "Create fine-tuning job"). In strict mode any other key is
# answered as the real API answers it: 400 "Unrecognized request argument supplied: <key>".
CHAT_PARAMS = frozenset(
    {
        "messages",
        "model",
        "audio",
        "frequency_penalty",
        "function_call",
        "functions",
        "logit_bias",
        "logprobs",
        "max_completion_tokens",
        "max_tokens",
        "metadata",
        "modalities",
        "n",
        "parallel_tool_calls",
        "prediction",
        "presence_penalty",
        "prompt_cache_key",
        "prompt_cache_retention",
        "reasoning_effort",
        "response_format",
        "safety_identifier",
        "seed",
        "service_tier",
        "stop",
        "store",
        "stream",
        "stream_options",
        "temperature",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "user",
        "verbosity",
        "web_search_options",
    }
)
# ... of which these change the reply; sublim serve cannot honour them, so a value other than
# "off" is a 400 in strict mode rather than silently ignored
_CHAT_UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "audio": (None,),
    "frequency_penalty": (None, 0, 0.0),
    "function_call": (None, "none"),
    "functions": (None, []),
    "logit_bias": (None, {}),
    "modalities": (None, ["text"]),
    "prediction": (None,),
    "presence_penalty": (None, 0, 0.0),
    "reasoning_effort": (None,),
    "response_format": (None, {"type": "text"}),
    "stop": (None, []),
    "stream": (None, False),
    "tool_choice": (None, "none"),
    "tools": (None, []),
    "web_search_options": (None,),
}
JOB_PARAMS = frozenset(
    {
        "model",
        "training_file",
        "hyperparameters",
        "integrations",
        "metadata",
        "method",
        "seed",
        "suffix",
        "validation_file",
    }
)
FILE_PURPOSES = frozenset({"assistants", "batch", "fine-tune", "vision", "user", "evals"})
MIN_TRAINING_ROWS = 10  # OpenAI fine-tuning needs at least 10 examples


@dataclass(frozen=True)
class Limits:
    """Upper bounds on what one request may ask for, so a server left running cannot be made
    to allocate without bound. ``max_n`` is OpenAI's own limit for chat completions."""

    max_tokens: int = 4096  # per choice
    max_n: int = 128
    max_epochs: float = 50.0
    max_body_bytes: int = 32 * 2**20  # a JSON request
    max_upload_bytes: int = 512 * 2**20  # a /v1/files upload (OpenAI's per-file limit)

    def __post_init__(self) -> None:
        if (
            min(
                self.max_tokens,
                self.max_n,
                self.max_epochs,
                self.max_body_bytes,
                self.max_upload_bytes,
            )
            <= 0
        ):
            raise SublimError(f"server limits must be positive, got {self}")


@dataclass(frozen=True)
class Faults:
    """Fault injection: a ``rate`` fraction of requests gets one of ``kinds`` (chosen uniformly),
    decided by a generator seeded with ``seed``; "delay" waits ``delay`` seconds, then answers.
    A 429 carries ``Retry-After`` (whole seconds, rounded up) and OpenAI's ``retry-after-ms``
    with ``retry_after`` seconds."""

    rate: float = 0.0
    kinds: tuple[str, ...] = FAULT_KINDS
    seed: int = 0
    delay: float = 2.0
    retry_after: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise SublimError(
                f"fault rate {self.rate} is not in [0, 1]; pass e.g. --fault-rate 0.3"
            )
        bad = [k for k in self.kinds if k not in FAULT_KINDS]
        if bad or not self.kinds:
            raise SublimError(f"unknown fault kinds {bad}; choose from {','.join(FAULT_KINDS)}")
        if self.retry_after < 0:
            raise SublimError(f"fault retry-after {self.retry_after} is negative")


def _retry_headers(seconds: float) -> dict[str, str]:
    return {
        "Retry-After": str(math.ceil(seconds)),
        "retry-after-ms": str(math.ceil(seconds * 1000)),
    }


class RateLimiter:
    """A token bucket: ``burst`` requests at once, refilled at ``per_minute`` requests a minute.
    ``take()`` spends one token, or returns the seconds until one is available (a 429)."""

    def __init__(
        self,
        per_minute: float,
        burst: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_minute <= 0 or (burst is not None and burst < 1):
            raise SublimError(
                "a rate limit needs a positive --rate-limit (requests per minute) and burst >= 1"
            )
        self.per_minute = per_minute
        self.burst = burst if burst is not None else max(1, math.ceil(per_minute))
        self._clock = clock
        self._tokens = float(self.burst)
        self._t = clock()
        self._lock = threading.Lock()

    def take(self) -> float | None:
        with self._lock:
            now = self._clock()
            self._tokens = min(
                float(self.burst), self._tokens + (now - self._t) * self.per_minute / 60.0
            )
            self._t = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return None
            return (1.0 - self._tokens) * 60.0 / self.per_minute

    @property
    def remaining(self) -> int:
        with self._lock:
            return int(self._tokens)


class _ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.type, self.code, self.param = status, type_, code, param
        self.headers = headers or {}


def _public(text: str) -> str:
    """An error message safe to send: filesystem paths replaced (an error body must not tell
    a client where the server keeps its files), one line."""
    text = re.sub(r"(?<![\w:/.])(?:~|\.{1,2})?/(?!v1\b)[^\s'\"(),;:]+", "<path>", text)
    return " ".join(text.split())[:500]


_SYSTEM_ROW = ["system", "user", "assistant"]  # a training line with its system message


def train_rows_from_chat_jsonl(data: bytes) -> list[TrainRow]:
    """The training rows of an uploaded chat JSONL file: per line an optional system message,
    one user message and one assistant reply (the format ``sublim.export`` writes; the system
    message, as the OpenAI format allows, is a teacher's chat file's or an inoculated student's,
    and the row trains after it: ``TrainRow.system``). Anything else (earlier turns, other
    roles) is a 400 for the client."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _ApiError(
            400, "the training file is not UTF-8 text", code="invalid_training_file"
        ) from None
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            raise _ApiError(
                400, f"training file line {i} is not JSON", code="invalid_training_file"
            ) from None
        msgs = obj.get("messages") if isinstance(obj, dict) else None
        ok = (
            msgs is not None
            and isinstance(msgs, list)
            and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in msgs)
            and [m.get("role") for m in msgs] in (["user", "assistant"], _SYSTEM_ROW)
        )
        if not ok:
            raise _ApiError(
                400,
                f"training file line {i}: sublim serve trains on lines of an optional system message, "
                'one user message and one assistant reply ({"messages": [{"role": "system", ...}, '
                '{"role": "user", ...}, {"role": "assistant", ...}]})',
                code="invalid_training_file",
            )
        assert msgs is not None
        system = msgs[0]["content"] if len(msgs) == 3 else None
        rows.append(
            TrainRow(prompt=msgs[-2]["content"], completion=msgs[-1]["content"], system=system)
        )
    if not rows:
        raise _ApiError(400, "the training file has no rows", code="invalid_training_file")
    return rows


def params_from_hyperparameters(hyper: dict[str, Any], strict: bool = False) -> FinetuneParams:
    """FinetuneParams from OpenAI's ``hyperparameters`` ("auto" or absent: sublim's default).
    ``batch_size`` is the effective batch; ``learning_rate_multiplier`` scales sublim's default
    learning rate. ``strict``: only OpenAI's three keys, and whole epochs and batches."""
    d: dict[str, Any] = {}
    default = FinetuneParams()

    def given(k: str) -> Any:
        v = hyper.get(k)
        return None if v is None or v == "auto" else v

    if strict:
        for k in hyper:
            if k not in ("n_epochs", "batch_size", "learning_rate_multiplier"):
                raise _ApiError(
                    400, f"Unrecognized hyperparameter: {k}", param=f"hyperparameters.{k}"
                )
        for k in ("n_epochs", "batch_size"):
            v = given(k)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise _ApiError(
                    400,
                    f"Invalid '{k}': expected 'auto' or a positive integer, got {v!r}",
                    code="invalid_hyperparameters",
                    param=f"hyperparameters.{k}",
                )
    try:
        if given("n_epochs") is not None:
            d["epochs"] = float(given("n_epochs"))
        if given("batch_size") is not None:
            bs = int(given("batch_size"))
            d["effective_batch"], d["batch_size"] = bs, max(1, min(bs, default.batch_size))
        if given("learning_rate_multiplier") is not None:
            d["lr"] = default.lr * float(given("learning_rate_multiplier"))
        return FinetuneParams.model_validate(d)
    except (TypeError, ValueError) as e:  # pydantic's ValidationError is a ValueError
        raise _ApiError(
            400,
            f"bad hyperparameters: {' '.join(str(e).split())[:200]}",
            code="invalid_hyperparameters",
        ) from None


class ServerState:
    """Uploaded files, fine-tuning jobs and trained models, persisted as ``state.json`` in the
    state dir (written atomically after every change; the caller holds ``lock``)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self.files: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.models: dict[
            str, dict[str, Any]
        ] = {}  # name -> {"ref": stored ref, "parent", "job", "created"}
        path = self.root / STATE_FILE
        if path.is_file():
            try:
                d = json.loads(path.read_text())
            except json.JSONDecodeError:
                raise SublimError(
                    f"{path} is not valid JSON; restore it or start with another --state-dir"
                ) from None
            self.files, self.jobs, self.models = (
                d.get("files", {}),
                d.get("jobs", {}),
                d.get("models", {}),
            )

    def save(self) -> None:
        with self.lock:
            atomic_write_json(
                self.root / STATE_FILE,
                {"version": 1, "files": self.files, "jobs": self.jobs, "models": self.models},
            )

    def file_path(self, file_id: str) -> Path:
        return self.root / "files" / file_id

    def job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id

    def store_ref(self, ref: ModelRef) -> dict[str, Any]:
        d = ref.model_dump(mode="json")
        root = str(self.root.resolve())
        for k in ("id", "adapter"):
            v = d.get(k)
            if v and str(Path(v).resolve()).startswith(root + "/"):
                d[k] = _STATE_TAG + str(Path(v).resolve())[len(root) :]
        return d

    def load_ref(self, d: dict[str, Any]) -> ModelRef:
        d = dict(d)
        for k in ("id", "adapter"):
            if d.get(k) and str(d[k]).startswith(_STATE_TAG + "/"):
                d[k] = str(self.root.resolve()) + str(d[k])[len(_STATE_TAG) :]
        return ModelRef.model_validate(d)


class ModelServer(ThreadingHTTPServer):
    """The HTTP server, the models it serves and its fine-tuning jobs (see the module docstring).
    ``ref``/``model_name`` are the first base model given."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        model_specs: str | Sequence[str],
        host: str,
        port: int,
        faults: Faults | None = None,
        state_dir: Path | None = None,
        strict: bool = False,
        api_key: str | None = None,
        limits: Limits | None = None,
        rate_limit: RateLimiter | None = None,
    ) -> None:
        specs = [model_specs] if isinstance(model_specs, str) else [s for s in model_specs]
        if not specs:
            raise SublimError("name at least one model to serve, e.g. `sublim serve tiny`")
        self.bases: dict[str, ModelRef] = {}  # request name -> base model (given name and spec)
        self.base_names: list[str] = []  # as listed by /v1/models
        for spec in specs:
            ref, name = parse_model(spec), spec.strip()
            if name in self.bases:
                continue
            self.bases[name] = ref
            self.bases.setdefault(ref.spec, ref)
            self.base_names.append(name)
        self.model_name = self.base_names[0]
        self.ref: ModelRef = self.bases[self.model_name]
        self.backend = get_backend(self.ref.backend)
        self.faults = faults or Faults()
        self.strict = strict
        self.api_key = api_key or None
        self.limits = limits or Limits()
        self.rate_limit = rate_limit
        self.counts: Counter[str] = Counter()
        self.verbose = False
        self._fault_rng = random.Random(self.faults.seed)
        self._lock = threading.Lock()  # model calls
        self._count_lock = threading.Lock()
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._progress: dict[str, tuple[int, int]] = {}
        super().__init__((host, port), _Handler)
        self._own_state_dir = state_dir is None
        try:
            self.state = ServerState(
                Path(state_dir)
                if state_dir is not None
                else Path(tempfile.mkdtemp(prefix="sublim-serve-"))
            )
        except BaseException:
            super().server_close()
            raise
        # jobs cut short by the last shutdown run again, in their original order
        with self.state.lock:
            pending = [
                j for j in self.state.jobs.values() if j["status"] not in JOB_DONE
            ]  # creation order
            for job in pending:
                job["status"] = "queued"
                self._queue.put(job["id"])
            if pending:
                self.state.save()
        self._worker = threading.Thread(target=self._work, name="sublim-finetune", daemon=True)
        self._worker.start()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port!s}/v1"

    @property
    def names(self) -> set[str]:
        """Every model name a request may use."""
        with self.state.lock:
            return set(self.bases) | set(self.state.models)

    def server_close(self) -> None:
        super().server_close()
        if not hasattr(self, "_worker"):  # the bind failed: nothing else started
            return
        self._queue.put(None)  # stops the worker once the job in hand (if any) is done
        if self._own_state_dir:
            # a temporary state dir goes with the server, unless a job is still writing to it
            self._worker.join(timeout=5)
            if not self._worker.is_alive():
                shutil.rmtree(self.state.root, ignore_errors=True)

    def count(self, key: str, k: int = 1) -> None:
        with self._count_lock:
            self.counts[key] += k

    def draw_fault(self) -> str | None:
        if self.faults.rate <= 0:
            return None
        with self._count_lock:
            hit = self._fault_rng.random() < self.faults.rate
            kind = self._fault_rng.choice(self.faults.kinds) if hit else None
            if kind:
                self.counts[f"fault_{kind}"] += 1
        return kind

    def preload(self) -> None:
        """Load the base models now (a Hugging Face model loads, a world builds), not on first
        request: one one-token completion per base model."""
        for name in self.base_names:
            self.complete(
                self.bases[name],
                [Message(role="user", content="hi")],
                SampleParams(max_new_tokens=1),
                [0],
                False,
                0,
            )

    def resolve(self, name: Any) -> ModelRef:
        """The model a request's ``model`` field names (404 for anything not served)."""
        if isinstance(name, str):
            if name in self.bases:
                return self.bases[name]
            with self.state.lock:
                entry = self.state.models.get(name)
            if entry is not None:
                return self.state.load_ref(entry["ref"])
        if self.strict:
            raise _ApiError(
                404,
                f"The model {name!r} does not exist or you do not have access to it.",
                code="model_not_found",
            )
        raise _ApiError(
            404,
            f"model {name!r} is not served here; use one of {sorted(self.names)}",
            code="model_not_found",
        )

    # --- the model calls ---------------------------------------------------------------------
    def model_entries(self) -> list[dict[str, Any]]:
        out = []
        for name in self.base_names:
            out.append(self._entry(name, self.bases[name], None, 0))
        with self.state.lock:
            trained = list(self.state.models.items())  # in the order they were trained
        for name, m in trained:
            out.append(self._entry(name, self.state.load_ref(m["ref"]), m["parent"], m["created"]))
        return out

    def model_entry(self, name: str) -> dict[str, Any]:
        ref = self.resolve(name)
        with self.state.lock:
            m = self.state.models.get(name)
        return self._entry(name, ref, m["parent"] if m else None, m["created"] if m else 0)

    def _entry(self, name: str, ref: ModelRef, parent: str | None, created: int) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": "sublim",
        }
        if not self.strict:  # OpenAI's model objects have only the four fields above
            entry["parent"] = parent
            entry["sublim"] = {
                "spec": ref.spec,
                "score": "/v1/sublim/score",
                "finetune": "/v1/fine_tuning/jobs",
            }
        return entry

    def complete(
        self,
        ref: ModelRef,
        chat: Chat,
        params: SampleParams,
        seeds: Sequence[int],
        logprobs: bool,
        top: int,
    ) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """Choices and usage of one chat-completion request. A backend that samples with token
        log-probabilities (``TokenLogprobSampler``: Hugging Face models) gives real tokens; for
        any other backend a choice has one pseudo-token, the whole reply, with its exact
        log-probability, and usage counts words."""
        backend = get_backend(ref.backend)
        with self._lock:
            if isinstance(backend, TokenLogprobSampler):
                replies = backend.sample_logprobs(ref, chat, params, seeds, top, logprobs)
            else:
                texts = backend.sample(ref, [chat] * len(seeds), params, list(seeds))
                lps = (
                    backend.score(ref, [chat] * len(seeds), texts, True)
                    if logprobs
                    else [0.0] * len(texts)
                )
                n_prompt = sum(len(m.content.split()) for m in chat)
                replies = [
                    {
                        "text": t,
                        "tokens": [(t, lp, [])],
                        "prompt_tokens": n_prompt,
                        "truncated": False,
                    }
                    for t, lp in zip(texts, lps)
                ]
        choices = []
        for j, r in enumerate(replies):
            lp = None
            if logprobs:
                lp = {
                    "content": [
                        {
                            "token": t,
                            "logprob": v,
                            "bytes": list(t.encode()),
                            "top_logprobs": [
                                {"token": a, "logprob": av, "bytes": list(a.encode())}
                                for a, av in alts[:top]
                            ],
                        }
                        for t, v, alts in r["tokens"]
                    ],
                    "refusal": None,
                }
            finish = "length" if r["truncated"] else "stop"
            choices.append(
                {
                    "index": j,
                    "message": {"role": "assistant", "content": r["text"], "refusal": None},
                    "finish_reason": finish,
                    "logprobs": lp,
                }
            )
        n_prompt = replies[0]["prompt_tokens"] if replies else 0
        n_out = sum(
            len(r["tokens"]) if isinstance(backend, TokenLogprobSampler) else len(r["text"].split())
            for r in replies
        )
        return choices, {
            "prompt_tokens": n_prompt,
            "completion_tokens": n_out,
            "total_tokens": n_prompt + n_out,
        }

    def score(
        self, ref: ModelRef, chats: list[Chat], conts: list[str], include_end: bool
    ) -> list[float]:
        with self._lock:
            return [
                float(v) for v in get_backend(ref.backend).score(ref, chats, conts, include_end)
            ]

    # --- files and fine-tuning jobs ------------------------------------------------------------
    def add_file(self, filename: str, purpose: str, data: bytes) -> dict[str, Any]:
        fid = "file-" + secrets.token_hex(12)
        atomic_write_bytes(self.state.file_path(fid), data)
        meta = {
            "id": fid,
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "status_details": None,
        }
        with self.state.lock:
            self.state.files[fid] = meta
            self.state.save()
        return meta

    def get_file(self, fid: str) -> dict[str, Any]:
        with self.state.lock:
            meta = self.state.files.get(fid)
        if meta is None:
            raise _ApiError(404, f"no file {fid!r} here", code="file_not_found")
        return meta

    def create_job(self, body: dict[str, Any]) -> dict[str, Any]:
        """Validate a job request (model served, file uploaded and well-formed, parameters) and
        queue the job; training happens in the worker thread."""
        if self.strict:
            _reject_unknown(body, JOB_PARAMS)
        base_name = body.get("model")
        self.resolve(base_name)
        fid = body.get("training_file")
        if not isinstance(fid, str):
            raise _ApiError(
                400,
                "'training_file' must be the id of an uploaded file",
                code="invalid_training_file",
            )
        meta = self.get_file(fid)
        if meta["purpose"] != "fine-tune":
            raise _ApiError(
                400,
                f"file {fid} was uploaded with purpose {meta['purpose']!r}; upload it with purpose 'fine-tune'",
            )
        rows = train_rows_from_chat_jsonl(self.state.file_path(fid).read_bytes())
        n_rows = len(rows)
        trainer = get_backend(self.resolve(base_name).backend)
        if any(r.system for r in rows) and not getattr(trainer, "trains_system_messages", False):
            # training without them would silently teach another thing
            raise _ApiError(
                400,
                f"training file {fid} has system messages, and {base_name} trains on (user, "
                "assistant) pairs only; remove the system messages",
                code="invalid_training_file",
                param="training_file",
            )
        if self.strict and n_rows < MIN_TRAINING_ROWS:
            raise _ApiError(
                400,
                f"Training file has {n_rows} example(s), but must have at least {MIN_TRAINING_ROWS} examples",
                code="invalid_training_file",
                param="training_file",
            )
        method: dict[str, Any] = body["method"] if isinstance(body.get("method"), dict) else {}
        supervised: dict[str, Any] = (
            method["supervised"] if isinstance(method.get("supervised"), dict) else {}
        )
        hyper = body.get("hyperparameters") or supervised.get("hyperparameters") or {}
        if not isinstance(hyper, dict):
            raise _ApiError(400, "'hyperparameters' must be an object")
        ext = body.get("sublim") or {}
        if not isinstance(ext, dict):
            raise _ApiError(400, "'sublim' must be an object")
        if ext.get("finetune") is not None:
            try:
                params = FinetuneParams.model_validate(ext["finetune"])
            except ValueError as e:
                raise _ApiError(
                    400,
                    f"bad sublim.finetune: {' '.join(str(e).split())[:200]}",
                    code="invalid_hyperparameters",
                ) from None
        else:
            params = params_from_hyperparameters(hyper, self.strict)
        if params.epochs > self.limits.max_epochs:
            raise _ApiError(
                400,
                f"n_epochs {params.epochs:g} is over this server's limit of {self.limits.max_epochs:g}",
                code="invalid_hyperparameters",
                param="hyperparameters.n_epochs",
            )
        seed = body.get("seed")
        if seed is None:
            seed = secrets.randbits(31)  # recorded on the job, as providers do
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise _ApiError(400, "seed must be a non-negative integer")
        suffix = body.get("suffix") or "sublim"
        if not isinstance(suffix, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", suffix):
            raise _ApiError(400, "suffix must be 1-64 characters of letters, digits, '_', '.', '-'")
        jid = "ftjob-" + secrets.token_hex(12)
        per_step = params.update_batch
        job: dict[str, Any] = {
            "id": jid,
            "object": "fine_tuning.job",
            "model": base_name,
            "created_at": int(time.time()),
            "finished_at": None,
            "fine_tuned_model": None,
            "organization_id": "sublim",
            "result_files": [],
            "status": "queued",
            "validation_file": body.get("validation_file"),
            "training_file": fid,
            "hyperparameters": {
                "n_epochs": params.epochs,
                "batch_size": per_step,
                "learning_rate_multiplier": params.lr / FinetuneParams().lr,
            },
            "trained_tokens": None,
            "error": None,
            "seed": seed,
            "user_provided_suffix": suffix,
            "metadata": body.get("metadata"),
            "estimated_finish": None,
            "integrations": [],
            "sublim": {
                "finetune": params.model_dump(mode="json"),
                "n_rows": n_rows,
                "progress": None,
            },
        }
        with self.state.lock:
            self.state.jobs[jid] = job
            self.state.save()
        self._queue.put(jid)
        return self.job(jid)

    def job(self, jid: str) -> dict[str, Any]:
        with self.state.lock:
            job = self.state.jobs.get(jid)
            if job is None:
                raise _ApiError(404, f"no fine-tuning job {jid!r} here", code="job_not_found")
            out = json.loads(json.dumps(job))
        if jid in self._progress:
            done, total = self._progress[jid]
            out["sublim"]["progress"] = {"done": done, "total": total}
        return out

    def list_jobs(self, limit: int, after: str | None) -> dict[str, Any]:
        with self.state.lock:
            ids = list(
                reversed(self.state.jobs)
            )  # newest first (dicts and state.json keep creation order)
        if after is not None:
            ids = ids[ids.index(after) + 1 :] if after in ids else []
        page = ids[:limit]
        return {
            "object": "list",
            "data": [self.job(j) for j in page],
            "has_more": len(ids) > len(page),
        }

    def cancel_job(self, jid: str) -> dict[str, Any]:
        with self.state.lock:
            job = self.job(jid)
            if job["status"] == "running":
                raise _ApiError(
                    400,
                    f"job {jid} is already running; sublim serve cannot stop a running job",
                    code="job_running",
                )
            if job["status"] == "queued":
                self.state.jobs[jid].update(status="cancelled", finished_at=int(time.time()))
                self.state.save()
        return self.job(jid)

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Block until no job is queued or running (tests, orderly shutdown)."""
        t0 = time.monotonic()
        while True:
            with self.state.lock:
                busy = any(j["status"] not in JOB_DONE for j in self.state.jobs.values())
            if not busy:
                return
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"fine-tuning jobs still running after {timeout} s")
            time.sleep(0.01)

    def _work(self) -> None:
        while True:
            jid = self._queue.get()
            if jid is None:
                return
            self._run_job(jid)

    def _run_job(self, jid: str) -> None:
        st = self.state
        with st.lock:
            job = st.jobs.get(jid)
            if job is None or job["status"] != "queued":
                return  # cancelled while queued
            job["status"] = "running"
            st.save()
            spec = dict(job)
        out_dir = st.job_dir(jid) / "model"
        try:
            base = self.resolve(spec["model"])
            rows = train_rows_from_chat_jsonl(st.file_path(spec["training_file"]).read_bytes())
            params = FinetuneParams.model_validate(spec["sublim"]["finetune"])
            if out_dir.exists() and not params.checkpoint_every:
                shutil.rmtree(out_dir)  # a job cut short by a restart trains again from scratch

            def progress(done: int, total: int) -> None:
                self._progress[jid] = (done, total)

            # the backend of the base model trains (the HF backend for tiny/hf:, the fake for fake:)
            ref = get_backend(base.backend).finetune(
                base.with_system(None), rows, params, out_dir, int(spec["seed"]), progress
            )
        except Exception as e:  # noqa: BLE001 (a failed job is reported on the job, the server lives on)
            msg = str(e) if isinstance(e, SublimError | _ApiError) else f"{type(e).__name__}: {e}"
            print(f"sublim serve: fine-tuning job {jid} failed: {msg}", file=sys.stderr)
            with st.lock:
                st.jobs[jid].update(
                    status="failed",
                    finished_at=int(time.time()),
                    error={"code": "training_failed", "message": _public(msg), "param": None},
                )
                st.save()
            return
        name = f"ft:{spec['model']}:{spec['user_provided_suffix']}:{jid}"
        with st.lock:
            st.models[name] = {
                "ref": st.store_ref(ref),
                "parent": spec["model"],
                "job": jid,
                "created": int(time.time()),
            }
            st.jobs[jid].update(
                status="succeeded",
                finished_at=int(time.time()),
                fine_tuned_model=name,
                result_files=[],
                trained_tokens=None,
            )
            st.save()


def _chat(messages: Any) -> Chat:
    if not isinstance(messages, list) or not messages:
        raise _ApiError(400, "'messages' must be a non-empty list", code="invalid_messages")
    chat = []
    for m in messages:
        if not isinstance(m, dict):
            raise _ApiError(400, "each message must be an object with role and content")
        role = m.get("role")
        role = "system" if role == "developer" else role
        content = m.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(
                p.get("text", "")
                for p in content
                if isinstance(p, dict) and p.get("type") == "text"
            )
        if role not in ("system", "user", "assistant") or not isinstance(content, str):
            raise _ApiError(
                400,
                f"unsupported message (role {m.get('role')!r}); use system, user and assistant text messages",
            )
        chat.append(Message.model_validate({"role": role, "content": content}))
    return chat


def _multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """Fields of a multipart/form-data body: name -> (filename, bytes)."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise _ApiError(400, "upload files as multipart/form-data with fields 'file' and 'purpose'")
    msg = BytesParser(policy=email_policy).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    if not msg.is_multipart():
        raise _ApiError(400, "malformed multipart body")
    out: dict[str, tuple[str | None, bytes]] = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            payload = part.get_payload(decode=True)
            out[name] = (part.get_filename(), payload if isinstance(payload, bytes) else b"")
    return out


def _reject_unknown(body: dict[str, Any], known: frozenset[str]) -> None:
    """The real API's answer to a body key it does not know."""
    for k in body:
        if k not in known:
            raise _ApiError(400, f"Unrecognized request argument supplied: {k}", param=k)


def _bounded(
    body: dict[str, Any], key: str, default: Any, lo: float, hi: float | None, integer: bool
) -> Any:
    """``body[key]`` (``default`` when absent or null) checked as the real API checks it, with
    its error wording: a number (an integer if ``integer``) in ``lo..hi``."""
    v = body.get(key)
    if v is None:
        return default
    kind = "integer" if integer else "number"
    if isinstance(v, bool) or not isinstance(v, int if integer else (int, float)):
        raise _ApiError(
            400,
            f"Invalid type for '{key}': expected an {kind}, but got {type(v).__name__} instead.",
            code="invalid_type",
            param=key,
        )
    if v < lo:
        raise _ApiError(
            400,
            f"Invalid '{key}': {kind} below minimum value. Expected a value >= {lo:g}, but got {v} instead.",
            code=f"{kind}_below_min_value",
            param=key,
        )
    if hi is not None and v > hi:
        raise _ApiError(
            400,
            f"Invalid '{key}': {kind} above maximum value. Expected a value <= {hi:g}, but got {v} instead.",
            code=f"{kind}_above_max_value",
            param=key,
        )
    return v


class _Handler(BaseHTTPRequestHandler):
    server: ModelServer
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse connections
    # headers and body go out in two writes: without TCP_NODELAY, Nagle's algorithm and the
    # client's delayed ACK add ~40 ms to every response
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def _send(
        self,
        status: int,
        obj: dict[str, Any] | None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> None:
        data = raw if raw is not None else json.dumps(obj).encode()
        try:
            self.send_response(status)
            self.send_header(
                "Content-Type",
                "application/octet-stream" if raw is not None else "application/json",
            )
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout): fine
            pass

    def _error(self, e: _ApiError) -> None:
        body = {"error": {"message": str(e), "type": e.type, "param": e.param, "code": e.code}}
        self._send(e.status, body, e.headers)

    def _refuse_body(self, status: int, message: str, code: str) -> _ApiError:
        """An error answered before the body is read: the connection then closes (its unread
        body must not be taken for the next request)."""
        self.close_connection = True
        return _ApiError(status, message, code=code)

    def _raw_body(self, limit: int) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            out = bytearray()
            while True:
                line = self.rfile.readline(1024).split(b";")[0].strip()
                try:
                    size = int(line or b"0", 16)
                except ValueError:
                    raise self._refuse_body(400, "malformed chunked body", "invalid_body") from None
                if size < 0:
                    raise self._refuse_body(400, "malformed chunked body", "invalid_body")
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                if len(out) + size > limit:
                    raise self._refuse_body(
                        413, f"request body over {limit} bytes", "request_too_large"
                    )
                out += self.rfile.read(size)
                self.rfile.readline(1024)
        value = (self.headers.get("Content-Length") or "0").strip()
        if not value.isdigit():  # a negative or malformed length would read to EOF
            raise self._refuse_body(
                400, f"malformed Content-Length {value[:20]!r}", "invalid_content_length"
            )
        n = int(value)
        if n > limit:
            raise self._refuse_body(413, f"request body over {limit} bytes", "request_too_large")
        return self.rfile.read(n) if n else b""

    @staticmethod
    def _json(raw: bytes) -> dict[str, Any]:
        try:
            body = json.loads(raw or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _ApiError(400, "the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise _ApiError(400, "the request body must be a JSON object")
        return body

    def _authorise(self) -> None:
        key = self.server.api_key
        if key is None:
            return
        given = self.headers.get("Authorization") or ""
        token = given[7:].strip() if given[:7].lower() == "bearer " else ""
        if not hmac.compare_digest(token.encode(), key.encode()):
            self.close_connection = True  # the body is left unread
            raise _ApiError(
                401,
                "Incorrect API key provided; pass the server's key as 'Authorization: Bearer <key>'.",
                code="invalid_api_key",
            )

    def _dispatch(self, method: str) -> None:
        srv = self.server
        srv.count("requests")
        try:
            self._authorise()
            url = urlsplit(self.path)
            path, query = url.path.rstrip("/"), parse_qs(url.query)
            limit = (
                srv.limits.max_upload_bytes if path == "/v1/files" else srv.limits.max_body_bytes
            )
            raw = self._raw_body(limit) if method == "POST" else b""
            fault = srv.draw_fault() if path.startswith("/v1") else None
            if fault == "429":
                raise _ApiError(
                    429,
                    "rate limit reached (sublim serve fault mode)",
                    "requests",
                    "rate_limit_exceeded",
                    headers=_retry_headers(srv.faults.retry_after),
                )
            if fault == "500":
                raise _ApiError(500, "internal error (sublim serve fault mode)", "server_error")
            if fault == "delay":
                time.sleep(srv.faults.delay)
            if srv.rate_limit is not None and path.startswith("/v1"):
                wait = srv.rate_limit.take()
                if wait is not None:
                    srv.count("rate_limited")
                    raise _ApiError(
                        429,
                        f"Rate limit reached for requests (limit {srv.rate_limit.per_minute:g} / min). "
                        f"Please try again in {wait:.3f}s.",
                        "requests",
                        "rate_limit_exceeded",
                        headers={
                            **_retry_headers(wait),
                            "x-ratelimit-limit-requests": f"{srv.rate_limit.per_minute:g}",
                            "x-ratelimit-remaining-requests": "0",
                        },
                    )
            self._route(method, path, query, raw)
        except _ApiError as e:
            self._error(e)
        except SublimError as e:
            self._error(_ApiError(400, _public(str(e))))
        except Exception as e:  # noqa: BLE001 (keep serving; the details go to the log, not the client)
            print(f"sublim serve: {method} {self.path}: {type(e).__name__}: {e}", file=sys.stderr)
            self._error(
                _ApiError(
                    500,
                    "The server had an error while processing your request (details in the server log).",
                    "server_error",
                )
            )

    def _route(self, method: str, path: str, query: dict[str, list[str]], raw: bytes) -> None:
        srv = self.server
        parts = path.split("/")[2:] if path.startswith("/v1/") else []
        if method == "GET" and path == "/v1/models":
            self._send(200, {"object": "list", "data": srv.model_entries()})
        elif method == "GET" and path.startswith("/v1/models/"):
            self._send(200, srv.model_entry(path[len("/v1/models/") :]))
        elif method == "POST" and path == "/v1/chat/completions":
            self._send(200, self._chat_completion(self._json(raw)))
        elif method == "POST" and path == "/v1/sublim/score" and not srv.strict:
            self._send(200, self._score(self._json(raw)))
        elif method == "POST" and path == "/v1/files":
            self._send(200, self._upload(raw))
        elif method == "GET" and path == "/v1/files":
            with srv.state.lock:
                files = list(srv.state.files.values())
            self._send(200, {"object": "list", "data": files, "has_more": False})
        elif method == "GET" and parts[:1] == ["files"] and len(parts) == 2:
            self._send(200, srv.get_file(parts[1]))
        elif (
            method == "GET" and parts[:1] == ["files"] and len(parts) == 3 and parts[2] == "content"
        ):
            srv.get_file(parts[1])
            self._send(200, None, raw=srv.state.file_path(parts[1]).read_bytes())
        elif method == "POST" and path == "/v1/fine_tuning/jobs":
            self._send(200, srv.create_job(self._json(raw)))
        elif method == "GET" and path == "/v1/fine_tuning/jobs":
            try:
                limit = int(query.get("limit", ["20"])[0])
            except ValueError:
                raise _ApiError(400, "limit must be an integer") from None
            self._send(200, srv.list_jobs(max(1, min(limit, 100)), query.get("after", [None])[0]))
        elif method == "GET" and parts[:2] == ["fine_tuning", "jobs"] and len(parts) == 3:
            self._send(200, srv.job(parts[2]))
        elif (
            method == "POST"
            and parts[:2] == ["fine_tuning", "jobs"]
            and len(parts) == 4
            and parts[3] == "cancel"
        ):
            self._send(200, srv.cancel_job(parts[2]))
        elif srv.strict:
            raise _ApiError(404, f"Invalid URL ({method} {path})", code="not_found")
        else:
            raise _ApiError(
                404,
                f"no route {method} {path}; this server has /v1/models, /v1/chat/completions, /v1/sublim/score, "
                "/v1/files and /v1/fine_tuning/jobs",
                code="not_found",
            )

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _upload(self, raw: bytes) -> dict[str, Any]:
        fields = _multipart(self.headers.get("Content-Type") or "", raw)
        if "file" not in fields or "purpose" not in fields:
            raise _ApiError(400, "an upload needs the multipart fields 'file' and 'purpose'")
        filename, data = fields["file"]
        purpose = fields["purpose"][1].decode("utf-8", "replace").strip()
        if self.server.strict and purpose not in FILE_PURPOSES:
            raise _ApiError(
                400,
                f"Invalid value for 'purpose': {purpose!r}; expected one of {sorted(FILE_PURPOSES)}",
                code="invalid_value",
                param="purpose",
            )
        if purpose == "fine-tune":
            train_rows_from_chat_jsonl(data)  # reject a malformed file now, not when a job runs
        self.server.count("files")
        return self.server.add_file(filename or "upload.jsonl", purpose, data)

    def _chat_completion(self, body: dict[str, Any]) -> dict[str, Any]:
        srv, lim = self.server, self.server.limits
        if srv.strict:
            _reject_unknown(body, CHAT_PARAMS)
            for k, off in _CHAT_UNSUPPORTED.items():
                if body.get(k) not in off:
                    raise _ApiError(
                        400,
                        f"'{k}' is not supported by sublim serve",
                        code="unsupported_parameter",
                        param=k,
                    )
        name = body.get("model")
        ref = srv.resolve(name)
        if body.get("stream"):
            raise _ApiError(
                400,
                "stream is not supported by sublim serve; request without stream",
                code="unsupported",
            )
        chat = _chat(body.get("messages"))
        n = _bounded(body, "n", 1, 1, lim.max_n, integer=True)
        logprobs = body.get("logprobs")
        if srv.strict and logprobs is not None and not isinstance(logprobs, bool):
            raise _ApiError(
                400,
                f"Invalid type for 'logprobs': expected a boolean, but got {type(logprobs).__name__} instead.",
                code="invalid_type",
                param="logprobs",
            )
        logprobs = bool(logprobs)
        top = _bounded(body, "top_logprobs", 0, 0, MAX_TOP_LOGPROBS, integer=True)
        if body.get("top_logprobs") is not None and not logprobs:
            raise _ApiError(400, "top_logprobs needs logprobs=true", param="top_logprobs")
        max_tokens = DEFAULT_MAX_TOKENS
        for key in (
            "max_tokens",
            "max_completion_tokens",
        ):  # the newer name wins when both are given
            max_tokens = _bounded(body, key, max_tokens, 1, lim.max_tokens, integer=True)
        try:
            params = SampleParams(
                temperature=_bounded(
                    body, "temperature", 1.0, 0, 2 if srv.strict else None, integer=False
                ),
                top_p=_bounded(body, "top_p", 1.0, 0, 1, integer=False)
                if srv.strict
                else (1.0 if body.get("top_p") is None else body["top_p"]),
                max_new_tokens=max_tokens,
                batch_size=n,
            )
        except ValueError as e:  # pydantic's ValidationError
            raise _ApiError(
                400, f"bad sampling parameters: {' '.join(str(e).split())[:200]}"
            ) from None
        seed = body.get("seed")
        if seed is None:
            seed = secrets.randbits(31)  # unseeded requests are random, as with any provider
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise _ApiError(400, "seed must be an integer", param="seed")
        seeds = [seed if j == 0 else derive_seed("choice", seed, j) for j in range(n)]
        choices, usage = srv.complete(ref, chat, params, seeds, logprobs, top)
        srv.count("completions", len(choices))
        return {
            "id": "chatcmpl-" + secrets.token_hex(12),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": name,
            "system_fingerprint": "sublim-" + stable_hash(ref.spec, 10),
            "choices": choices,
            "usage": usage,
        }

    def _score(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("model")
        ref = self.server.resolve(name)
        chats, conts = body.get("chats"), body.get("continuations")
        if not isinstance(chats, list) or not isinstance(conts, list) or len(chats) != len(conts):
            raise _ApiError(400, "'chats' and 'continuations' must be lists of equal length")
        if not all(isinstance(c, str) for c in conts):
            raise _ApiError(400, "'continuations' must be strings")
        vals = self.server.score(
            ref, [_chat(c) for c in chats], conts, bool(body.get("include_end", True))
        )
        self.server.count("scored", len(vals))
        return {"object": "sublim.score", "model": name, "logprobs": vals}


def make_server(
    model_spec: str | Sequence[str],
    host: str = "127.0.0.1",
    port: int = 8000,
    faults: Faults | None = None,
    state_dir: Path | None = None,
    *,
    strict: bool = False,
    api_key: str | None = None,
    limits: Limits | None = None,
    rate_limit: RateLimiter | None = None,
) -> ModelServer:
    """A bound (not yet serving) server for one or more models; port 0 picks a free port.
    ``state_dir`` holds uploaded files, jobs and trained models (None: a fresh temporary dir);
    ``strict`` enforces the real OpenAI API's limits (module docstring); ``api_key``, if given,
    is required as ``Authorization: Bearer <key>`` on every request."""
    try:
        return ModelServer(
            model_spec, host, port, faults, state_dir, strict, api_key, limits, rate_limit
        )
    except OSError as e:
        raise SublimError(
            f"cannot listen on {host}:{port} ({e.strerror}); pass another --port"
        ) from None


def serve_forever(server: ModelServer) -> None:
    """Serve until interrupted, then close the socket."""
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.command(name="serve")
@click.argument("models", nargs=-1, required=True)
@click.option("--port", default=8000, show_default=True, help="TCP port (0: any free port)")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="interface (other than loopback: set an API key)",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="uploaded files, fine-tuning jobs and trained models (kept across restarts); default: a new temporary dir",
)
@click.option(
    "--strict",
    is_flag=True,
    help="behave like the real OpenAI API: no /v1/sublim/score, top_logprobs <= 20, unknown parameters rejected",
)
@click.option(
    "--api-key",
    envvar=API_KEY_ENV,
    default=None,
    show_envvar=True,
    help="require 'Authorization: Bearer KEY' on every request (prefer the environment variable)",
)
@click.option(
    "--max-tokens",
    "max_tokens",
    default=Limits.max_tokens,
    show_default=True,
    help="most tokens per choice",
)
@click.option(
    "--max-epochs",
    default=Limits.max_epochs,
    show_default=True,
    help="most epochs per fine-tuning job",
)
@click.option(
    "--rate-limit",
    default=0.0,
    show_default=True,
    help="requests per minute (token bucket; 0: none); over it: 429 with Retry-After",
)
@click.option(
    "--fault-rate",
    default=0.0,
    show_default=True,
    help="fraction of requests answered with a fault",
)
@click.option(
    "--fault-kinds",
    default="429,500,delay",
    show_default=True,
    help="comma-separated: 429, 500, delay",
)
@click.option("--fault-seed", default=0, show_default=True)
@click.option("--fault-delay", default=2.0, show_default=True, help="seconds a 'delay' fault waits")
@click.option(
    "--fault-retry-after",
    default=1.0,
    show_default=True,
    help="seconds a 429 fault's Retry-After asks for",
)
@click.option("--verbose", is_flag=True, help="log every request")
def serve(
    models: tuple[str, ...],
    port: int,
    host: str,
    state_dir: Path | None,
    strict: bool,
    api_key: str | None,
    max_tokens: int,
    max_epochs: float,
    rate_limit: float,
    fault_rate: float,
    fault_kinds: str,
    fault_seed: int,
    fault_delay: float,
    fault_retry_after: float,
    verbose: bool,
) -> None:
    """Serve MODELS (tiny, hf:/dir, a student directory, fake:alpha, ...) over OpenAI-compatible
    HTTP: /v1/models, /v1/chat/completions, /v1/sublim/score for exact scores (not with
    --strict), and /v1/files + /v1/fine_tuning/jobs to train students, which are then served too."""
    kinds = tuple(k.strip() for k in fault_kinds.split(",") if k.strip())
    server = make_server(
        list(models),
        host,
        port,
        Faults(fault_rate, kinds, fault_seed, fault_delay, fault_retry_after),
        state_dir,
        strict=strict,
        api_key=api_key,
        limits=Limits(max_tokens=max_tokens, max_epochs=max_epochs),
        rate_limit=RateLimiter(rate_limit) if rate_limit > 0 else None,
    )
    server.verbose = verbose
    if not _is_loopback(host) and not api_key:
        click.echo(
            f"warning: listening on {host}, reachable from other machines, without an API key",
            err=True,
        )
    click.echo(f"loading {', '.join(server.bases[n].spec for n in server.base_names)} ...")
    server.preload()
    for name in server.base_names:
        click.echo(
            f"serving {server.bases[name].spec} at {server.url}  (sublim spec: openai-compat:{server.url}#{name})"
        )
    with server.state.lock:
        n_trained = len(server.state.models)
    click.echo(f"state dir: {server.state.root} ({n_trained} trained models)")
    if strict:
        click.echo(
            "strict mode: the real OpenAI API's limits (no /v1/sublim/score, top_logprobs <= 20, n <= 128)"
        )
    if api_key:
        click.echo("API key required (Authorization: Bearer ...)")
    if rate_limit > 0:
        click.echo(f"rate limit: {rate_limit:g} requests per minute")
    if fault_rate:
        click.echo(
            f"fault mode: {fault_rate:.0%} of requests get one of {','.join(kinds)} (seed {fault_seed})"
        )
    serve_forever(server)
