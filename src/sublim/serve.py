"""``sublim serve``: any model the lab can load, over OpenAI-compatible HTTP on localhost.

Pipeline position: beside the pipeline, not in it. It lets any OpenAI client (the ``openai``
package, inspect_ai, sublim's own ``openai-compat:`` backend) sample and score sublim models:
the built-in world (``tiny``), Hugging Face directories (``hf:/dir``), trained students, and the
fake backend (``fake:alpha``, for fast tests).

Endpoints (standard library only: ``http.server.ThreadingHTTPServer``; model calls are
serialised with a lock because one model instance serves every connection):

- ``GET /v1/models``: the served model, with a non-standard ``sublim`` field that tells sublim's
  client this server can score exactly;
- ``POST /v1/chat/completions``: ``messages``, ``n``, ``temperature``, ``top_p``, ``max_tokens``
  (or ``max_completion_tokens``), ``seed``, ``logprobs``, ``top_logprobs``. Choice ``j`` of a
  request with seed ``s`` is sampled with seed ``s`` (j = 0) or ``derive_seed("choice", s, j)``,
  exactly as the Hugging Face backend samples a row with that seed. Log-probabilities are the
  model's untempered next-token log-softmax at each generated token (Hugging Face models); for
  other backends a choice has one pseudo-token, the whole reply, with its exact log-probability;
- ``POST /v1/sublim/score`` (non-standard): ``{"model", "chats", "continuations",
  "include_end"}`` -> ``{"logprobs": [...]}``, the backend's exact ``score``.

Fault mode (opt-in, for testing clients): a seeded fraction of requests is answered 429 or 500,
or delayed before being answered normally. The server binds to loopback unless told otherwise;
it has no authentication.
"""

from __future__ import annotations

import ipaddress
import json
import random
import secrets
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import click

from sublim.artifacts import derive_seed, stable_hash
from sublim.errors import SublimError
from sublim.records import Chat, Message, ModelRef, SampleParams
from sublim.registry import get_backend, parse_model

HF_BACKENDS = frozenset({"hf", "tiny", "smollm2"})
DEFAULT_MAX_TOKENS = 256
MAX_N = 128
MAX_TOP_LOGPROBS = 20
FAULT_KINDS = ("429", "500", "delay")


@dataclass(frozen=True)
class Faults:
    """Fault injection: a ``rate`` fraction of requests gets one of ``kinds`` (chosen uniformly),
    decided by a generator seeded with ``seed``; "delay" waits ``delay`` seconds, then answers."""

    rate: float = 0.0
    kinds: tuple[str, ...] = FAULT_KINDS
    seed: int = 0
    delay: float = 2.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise SublimError(f"fault rate {self.rate} is not in [0, 1]; pass e.g. --fault-rate 0.3")
        bad = [k for k in self.kinds if k not in FAULT_KINDS]
        if bad or not self.kinds:
            raise SublimError(f"unknown fault kinds {bad}; choose from {','.join(FAULT_KINDS)}")


class _ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.type, self.code = status, type_, code


class ModelServer(ThreadingHTTPServer):
    """The HTTP server plus the one model it serves (see the module docstring)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, model_spec: str, host: str, port: int, faults: Faults | None = None) -> None:
        self.ref: ModelRef = parse_model(model_spec)
        self.model_name = model_spec.strip()
        self.names = {self.model_name, self.ref.spec}
        self.backend = get_backend(self.ref.backend)
        self.faults = faults or Faults()
        self.counts: Counter[str] = Counter()
        self.verbose = False
        self._fault_rng = random.Random(self.faults.seed)
        self._lock = threading.Lock()  # model calls
        self._count_lock = threading.Lock()
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port!s}/v1"

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
        """Load the model now (a Hugging Face model loads, a world builds), not on first request."""
        if self.ref.backend in HF_BACKENDS:
            from sublim.backends import hf

            hf.get_loaded(self.ref)

    # --- the model calls ---------------------------------------------------------------------
    def model_entry(self) -> dict[str, Any]:
        return {
            "id": self.model_name,
            "object": "model",
            "created": 0,
            "owned_by": "sublim",
            "sublim": {"spec": self.ref.spec, "score": "/v1/sublim/score"},
        }

    def complete(
        self, chat: Chat, params: SampleParams, seeds: Sequence[int], logprobs: bool, top: int
    ) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """Choices and usage of one chat-completion request."""
        with self._lock:
            if self.ref.backend in HF_BACKENDS:
                return self._complete_hf(chat, params, seeds, logprobs, top)
            texts = self.backend.sample(self.ref, [chat] * len(seeds), params, list(seeds))
            lps = self.backend.score(self.ref, [chat] * len(seeds), texts, True) if logprobs else None
        choices = []
        for j, text in enumerate(texts):
            lp = None
            if lps is not None:
                lp = {"content": [{"token": text, "logprob": lps[j], "bytes": list(text.encode()), "top_logprobs": []}]}
            choices.append({"index": j, "message": {"role": "assistant", "content": text}, "finish_reason": "stop", "logprobs": lp})
        prompt_words = sum(len(m.content.split()) for m in chat)
        done_words = sum(len(t.split()) for t in texts)
        return choices, {"prompt_tokens": prompt_words, "completion_tokens": done_words, "total_tokens": prompt_words + done_words}

    def _complete_hf(
        self, chat: Chat, params: SampleParams, seeds: Sequence[int], logprobs: bool, top: int
    ) -> tuple[list[dict[str, Any]], dict[str, int]]:
        import torch

        from sublim import chat_format
        from sublim.backends import hf

        lm = hf.get_loaded(self.ref)
        tok = lm.tokenizer
        prompt = chat_format.encode_prompt(tok, chat)
        # the same generators as HFBackend.sample for these seeds, so a choice equals the row
        # the backend would sample directly (decoding is batch-invariant on CPU)
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        outs = hf.decode_batch(lm, [prompt] * len(seeds), gens, params)
        choices = []
        for j, ids in enumerate(outs):
            text = tok.decode(ids, skip_special_tokens=True).strip()
            lp = {"content": self._token_logprobs(lm, prompt, ids, top)} if logprobs else None
            finish = "length" if len(ids) >= params.max_new_tokens else "stop"
            choices.append({"index": j, "message": {"role": "assistant", "content": text}, "finish_reason": finish, "logprobs": lp})
        n_out = sum(len(o) for o in outs)
        return choices, {"prompt_tokens": len(prompt), "completion_tokens": n_out, "total_tokens": len(prompt) * len(outs) + n_out}

    @staticmethod
    def _token_logprobs(lm: Any, prompt: list[int], ids: list[int], top: int) -> list[dict[str, Any]]:
        """Per generated token: its log-probability under the model (untempered) and the top
        alternatives, from one teacher-forced forward pass."""
        import torch

        if not ids:
            return []
        with torch.inference_mode():
            x = torch.tensor([prompt + ids], device=lm.device)
            logits = lm.model(input_ids=x, logits_to_keep=len(ids) + 1).logits[0, :-1]
            logp = torch.log_softmax(logits.double(), dim=-1)
        tok = lm.tokenizer
        out = []
        for k, t in enumerate(ids):
            entry: dict[str, Any] = {"token": tok.decode([t]), "logprob": float(logp[k, t]), "bytes": list(tok.decode([t]).encode())}
            alts = []
            if top:
                vals, idx = logp[k].topk(top)
                for v, i in zip(vals.tolist(), idx.tolist()):
                    s = tok.decode([i])
                    alts.append({"token": s, "logprob": float(v), "bytes": list(s.encode())})
            entry["top_logprobs"] = alts
            out.append(entry)
        return out

    def score(self, chats: list[Chat], conts: list[str], include_end: bool) -> list[float]:
        with self._lock:
            return [float(v) for v in self.backend.score(self.ref, chats, conts, include_end)]


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
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        if role not in ("system", "user", "assistant") or not isinstance(content, str):
            raise _ApiError(400, f"unsupported message (role {m.get('role')!r}); use system, user and assistant text messages")
        chat.append(Message.model_validate({"role": role, "content": content}))
    return chat


class _Handler(BaseHTTPRequestHandler):
    server: ModelServer
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse connections
    # headers and body go out in two writes: without TCP_NODELAY, Nagle's algorithm and the
    # client's delayed ACK add ~40 ms to every response
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def _send(self, status: int, obj: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(obj).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout): fine
            pass

    def _error(self, e: _ApiError) -> None:
        self._send(e.status, {"error": {"message": str(e), "type": e.type, "param": None, "code": e.code}})

    def _body(self) -> dict[str, Any]:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            raise _ApiError(400, "the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise _ApiError(400, "the request body must be a JSON object")
        return body

    def _dispatch(self, method: str) -> None:
        srv = self.server
        srv.count("requests")
        try:
            body = self._body() if method == "POST" else {}
            path = self.path.split("?")[0].rstrip("/")
            fault = srv.draw_fault() if path.startswith("/v1") else None
            if fault == "429":
                raise _ApiError(429, "rate limit reached (sublim serve fault mode)", "requests", "rate_limit_exceeded")
            if fault == "500":
                raise _ApiError(500, "internal error (sublim serve fault mode)", "server_error")
            if fault == "delay":
                time.sleep(srv.faults.delay)
            if method == "GET" and path == "/v1/models":
                self._send(200, {"object": "list", "data": [srv.model_entry()]})
            elif method == "GET" and path.startswith("/v1/models/"):
                if path[len("/v1/models/"):] not in srv.names:
                    raise _ApiError(404, f"model {path[len('/v1/models/'):]!r} not served here", code="model_not_found")
                self._send(200, srv.model_entry())
            elif method == "POST" and path == "/v1/chat/completions":
                self._send(200, self._chat_completion(body))
            elif method == "POST" and path == "/v1/sublim/score":
                self._send(200, self._score(body))
            else:
                raise _ApiError(404, f"no route {method} {path}; this server has /v1/models, /v1/chat/completions and /v1/sublim/score", code="not_found")
        except _ApiError as e:
            self._error(e)
        except SublimError as e:
            self._error(_ApiError(400, str(e)))
        except Exception as e:  # noqa: BLE001 (keep serving; tell the client what broke)
            self._error(_ApiError(500, f"{type(e).__name__}: {e}", "server_error"))

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _check_model(self, body: dict[str, Any]) -> str:
        name = body.get("model")
        if name not in self.server.names:
            raise _ApiError(404, f"model {name!r} is not served here; use {self.server.model_name!r}", code="model_not_found")
        return str(name)

    def _chat_completion(self, body: dict[str, Any]) -> dict[str, Any]:
        srv = self.server
        name = self._check_model(body)
        if body.get("stream"):
            raise _ApiError(400, "stream is not supported by sublim serve; request without stream", code="unsupported")
        chat = _chat(body.get("messages"))
        n = 1 if body.get("n") is None else body["n"]
        if not isinstance(n, int) or not 1 <= n <= MAX_N:
            raise _ApiError(400, f"n must be an integer in 1..{MAX_N}")
        top = body.get("top_logprobs") or 0
        logprobs = bool(body.get("logprobs"))
        if top and not logprobs:
            raise _ApiError(400, "top_logprobs needs logprobs=true")
        if not isinstance(top, int) or not 0 <= top <= MAX_TOP_LOGPROBS:
            raise _ApiError(400, f"top_logprobs must be an integer in 0..{MAX_TOP_LOGPROBS}")
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS
        try:
            params = SampleParams(
                temperature=1.0 if body.get("temperature") is None else body["temperature"],
                top_p=1.0 if body.get("top_p") is None else body["top_p"],
                max_new_tokens=max_tokens,
                batch_size=n,
            )
        except ValueError as e:  # pydantic's ValidationError
            raise _ApiError(400, f"bad sampling parameters: {' '.join(str(e).split())[:200]}") from None
        seed = body.get("seed")
        if seed is None:
            seed = secrets.randbits(31)  # unseeded requests are random, as with any provider
        if not isinstance(seed, int):
            raise _ApiError(400, "seed must be an integer")
        seeds = [seed if j == 0 else derive_seed("choice", seed, j) for j in range(n)]
        choices, usage = srv.complete(chat, params, seeds, logprobs, top)
        srv.count("completions", len(choices))
        return {
            "id": "chatcmpl-" + secrets.token_hex(12),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": name,
            "system_fingerprint": "sublim-" + stable_hash(srv.ref.spec, 10),
            "choices": choices,
            "usage": usage,
        }

    def _score(self, body: dict[str, Any]) -> dict[str, Any]:
        name = self._check_model(body)
        chats, conts = body.get("chats"), body.get("continuations")
        if not isinstance(chats, list) or not isinstance(conts, list) or len(chats) != len(conts):
            raise _ApiError(400, "'chats' and 'continuations' must be lists of equal length")
        if not all(isinstance(c, str) for c in conts):
            raise _ApiError(400, "'continuations' must be strings")
        vals = self.server.score([_chat(c) for c in chats], conts, bool(body.get("include_end", True)))
        self.server.count("scored", len(vals))
        return {"object": "sublim.score", "model": name, "logprobs": vals}


def make_server(model_spec: str, host: str = "127.0.0.1", port: int = 8000, faults: Faults | None = None) -> ModelServer:
    """A bound (not yet serving) server for ``model_spec``; port 0 picks a free port."""
    try:
        return ModelServer(model_spec, host, port, faults)
    except OSError as e:
        raise SublimError(f"cannot listen on {host}:{port} ({e.strerror}); pass another --port") from None


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
@click.argument("model")
@click.option("--port", default=8000, show_default=True, help="TCP port (0: any free port)")
@click.option("--host", default="127.0.0.1", show_default=True, help="interface; the server has no authentication")
@click.option("--fault-rate", default=0.0, show_default=True, help="fraction of requests answered with a fault")
@click.option("--fault-kinds", default="429,500,delay", show_default=True, help="comma-separated: 429, 500, delay")
@click.option("--fault-seed", default=0, show_default=True)
@click.option("--fault-delay", default=2.0, show_default=True, help="seconds a 'delay' fault waits")
@click.option("--verbose", is_flag=True, help="log every request")
def serve(model: str, port: int, host: str, fault_rate: float, fault_kinds: str, fault_seed: int, fault_delay: float, verbose: bool) -> None:
    """Serve MODEL (tiny, hf:/dir, a student directory, fake:alpha, ...) over OpenAI-compatible
    HTTP: /v1/models, /v1/chat/completions, and /v1/sublim/score for exact scores."""
    kinds = tuple(k.strip() for k in fault_kinds.split(",") if k.strip())
    server = make_server(model, host, port, Faults(fault_rate, kinds, fault_seed, fault_delay))
    server.verbose = verbose
    if not _is_loopback(host):
        click.echo(f"warning: listening on {host}, reachable from other machines, without authentication", err=True)
    click.echo(f"loading {server.ref.spec} ...")
    server.preload()
    click.echo(f"serving {server.ref.spec} at {server.url}  (sublim spec: openai-compat:{server.url}#{server.model_name})")
    if fault_rate:
        click.echo(f"fault mode: {fault_rate:.0%} of requests get one of {','.join(kinds)} (seed {fault_seed})")
    serve_forever(server)
