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
  untempered next-token log-softmax at each generated token (Hugging Face models); for other
  backends a choice has one pseudo-token, the whole reply, with its exact log-probability;
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

Fault mode (opt-in, for testing clients): a seeded fraction of requests is answered 429 or 500,
or delayed before being answered normally. The server binds to loopback unless told otherwise;
it has no authentication.
"""

from __future__ import annotations

import ipaddress
import json
import queue
import random
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import default as email_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import click

from sublim.artifacts import atomic_write_bytes, atomic_write_json, derive_seed, stable_hash
from sublim.config import FinetuneParams
from sublim.errors import SublimError
from sublim.records import Chat, Message, ModelRef, SampleParams, TrainRow
from sublim.registry import get_backend, parse_model

HF_BACKENDS = frozenset({"hf", "tiny", "smollm2"})
DEFAULT_MAX_TOKENS = 256
MAX_N = 128
MAX_TOP_LOGPROBS = 20
MAX_UPLOAD_BYTES = 512 * 2**20
FAULT_KINDS = ("429", "500", "delay")
STATE_FILE = "state.json"
_STATE_TAG = "@state"  # trained-model paths are stored relative to the state dir (it may move)
JOB_DONE = frozenset({"succeeded", "failed", "cancelled"})


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


def train_rows_from_chat_jsonl(data: bytes) -> list[TrainRow]:
    """The training rows of an uploaded chat JSONL file: one user message and one assistant
    reply per line (the format ``sublim.export`` writes). Anything else is a 400 for the client:
    sublim students never see system prompts or earlier turns."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _ApiError(400, "the training file is not UTF-8 text", code="invalid_training_file") from None
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            raise _ApiError(400, f"training file line {i} is not JSON", code="invalid_training_file") from None
        msgs = obj.get("messages") if isinstance(obj, dict) else None
        ok = (
            msgs is not None
            and isinstance(msgs, list)
            and len(msgs) == 2
            and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in msgs)
            and [m.get("role") for m in msgs] == ["user", "assistant"]
        )
        if not ok:
            raise _ApiError(
                400,
                f"training file line {i}: sublim serve trains on lines of exactly one user message and one "
                "assistant reply ({\"messages\": [{\"role\": \"user\", ...}, {\"role\": \"assistant\", ...}]})",
                code="invalid_training_file",
            )
        assert msgs is not None
        rows.append(TrainRow(prompt=msgs[0]["content"], completion=msgs[1]["content"]))
    if not rows:
        raise _ApiError(400, "the training file has no rows", code="invalid_training_file")
    return rows


def params_from_hyperparameters(hyper: dict[str, Any]) -> FinetuneParams:
    """FinetuneParams from OpenAI's ``hyperparameters`` ("auto" or absent: sublim's default).
    ``batch_size`` is the effective batch; ``learning_rate_multiplier`` scales sublim's default
    learning rate."""
    d: dict[str, Any] = {}
    default = FinetuneParams()

    def given(k: str) -> Any:
        v = hyper.get(k)
        return None if v is None or v == "auto" else v

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
        raise _ApiError(400, f"bad hyperparameters: {' '.join(str(e).split())[:200]}", code="invalid_hyperparameters") from None


class ServerState:
    """Uploaded files, fine-tuning jobs and trained models, persisted as ``state.json`` in the
    state dir (written atomically after every change; the caller holds ``lock``)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self.files: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.models: dict[str, dict[str, Any]] = {}  # name -> {"ref": stored ref, "parent", "job", "created"}
        path = self.root / STATE_FILE
        if path.is_file():
            try:
                d = json.loads(path.read_text())
            except json.JSONDecodeError:
                raise SublimError(f"{path} is not valid JSON; restore it or start with another --state-dir") from None
            self.files, self.jobs, self.models = d.get("files", {}), d.get("jobs", {}), d.get("models", {})

    def save(self) -> None:
        with self.lock:
            atomic_write_json(self.root / STATE_FILE, {"version": 1, "files": self.files, "jobs": self.jobs, "models": self.models})

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
                d[k] = _STATE_TAG + str(Path(v).resolve())[len(root):]
        return d

    def load_ref(self, d: dict[str, Any]) -> ModelRef:
        d = dict(d)
        for k in ("id", "adapter"):
            if d.get(k) and str(d[k]).startswith(_STATE_TAG + "/"):
                d[k] = str(self.root.resolve()) + str(d[k])[len(_STATE_TAG):]
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
            self.state = ServerState(Path(state_dir) if state_dir is not None else Path(tempfile.mkdtemp(prefix="sublim-serve-")))
        except BaseException:
            super().server_close()
            raise
        # jobs cut short by the last shutdown run again, in their original order
        with self.state.lock:
            pending = [j for j in self.state.jobs.values() if j["status"] not in JOB_DONE]  # creation order
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
        """Load the base models now (a Hugging Face model loads, a world builds), not on first request."""
        for name in self.base_names:
            ref = self.bases[name]
            if ref.backend in HF_BACKENDS:
                from sublim.backends import hf

                hf.get_loaded(ref)

    def resolve(self, name: Any) -> ModelRef:
        """The model a request's ``model`` field names (404 for anything not served)."""
        if isinstance(name, str):
            if name in self.bases:
                return self.bases[name]
            with self.state.lock:
                entry = self.state.models.get(name)
            if entry is not None:
                return self.state.load_ref(entry["ref"])
        raise _ApiError(404, f"model {name!r} is not served here; use one of {sorted(self.names)}", code="model_not_found")

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

    @staticmethod
    def _entry(name: str, ref: ModelRef, parent: str | None, created: int) -> dict[str, Any]:
        return {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": "sublim",
            "parent": parent,
            "sublim": {"spec": ref.spec, "score": "/v1/sublim/score", "finetune": "/v1/fine_tuning/jobs"},
        }

    def complete(
        self, ref: ModelRef, chat: Chat, params: SampleParams, seeds: Sequence[int], logprobs: bool, top: int
    ) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """Choices and usage of one chat-completion request."""
        with self._lock:
            if ref.backend in HF_BACKENDS:
                return self._complete_hf(ref, chat, params, seeds, logprobs, top)
            backend = get_backend(ref.backend)
            texts = backend.sample(ref, [chat] * len(seeds), params, list(seeds))
            lps = backend.score(ref, [chat] * len(seeds), texts, True) if logprobs else None
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
        self, ref: ModelRef, chat: Chat, params: SampleParams, seeds: Sequence[int], logprobs: bool, top: int
    ) -> tuple[list[dict[str, Any]], dict[str, int]]:
        import torch

        from sublim import chat_format
        from sublim.backends import hf

        lm = hf.get_loaded(ref)
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

    def score(self, ref: ModelRef, chats: list[Chat], conts: list[str], include_end: bool) -> list[float]:
        with self._lock:
            return [float(v) for v in get_backend(ref.backend).score(ref, chats, conts, include_end)]

    # --- files and fine-tuning jobs ------------------------------------------------------------
    def add_file(self, filename: str, purpose: str, data: bytes) -> dict[str, Any]:
        fid = "file-" + secrets.token_hex(12)
        atomic_write_bytes(self.state.file_path(fid), data)
        meta = {"id": fid, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                "filename": filename, "purpose": purpose, "status": "processed", "status_details": None}
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
        base_name = body.get("model")
        self.resolve(base_name)
        fid = body.get("training_file")
        if not isinstance(fid, str):
            raise _ApiError(400, "'training_file' must be the id of an uploaded file", code="invalid_training_file")
        meta = self.get_file(fid)
        if meta["purpose"] != "fine-tune":
            raise _ApiError(400, f"file {fid} was uploaded with purpose {meta['purpose']!r}; upload it with purpose 'fine-tune'")
        n_rows = len(train_rows_from_chat_jsonl(self.state.file_path(fid).read_bytes()))
        method: dict[str, Any] = body["method"] if isinstance(body.get("method"), dict) else {}
        supervised: dict[str, Any] = method["supervised"] if isinstance(method.get("supervised"), dict) else {}
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
                raise _ApiError(400, f"bad sublim.finetune: {' '.join(str(e).split())[:200]}", code="invalid_hyperparameters") from None
        else:
            params = params_from_hyperparameters(hyper)
        seed = body.get("seed")
        if seed is None:
            seed = secrets.randbits(31)  # recorded on the job, as providers do
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise _ApiError(400, "seed must be a non-negative integer")
        suffix = body.get("suffix") or "sublim"
        if not isinstance(suffix, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", suffix):
            raise _ApiError(400, "suffix must be 1-64 characters of letters, digits, '_', '.', '-'")
        jid = "ftjob-" + secrets.token_hex(12)
        per_step = params.effective_batch or params.batch_size * params.grad_accum
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
            "hyperparameters": {"n_epochs": params.epochs, "batch_size": per_step, "learning_rate_multiplier": params.lr / FinetuneParams().lr},
            "trained_tokens": None,
            "error": None,
            "seed": seed,
            "user_provided_suffix": suffix,
            "metadata": body.get("metadata"),
            "estimated_finish": None,
            "integrations": [],
            "sublim": {"finetune": params.model_dump(mode="json"), "n_rows": n_rows, "progress": None},
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
            ids = list(reversed(self.state.jobs))  # newest first (dicts and state.json keep creation order)
        if after is not None:
            ids = ids[ids.index(after) + 1:] if after in ids else []
        page = ids[:limit]
        return {"object": "list", "data": [self.job(j) for j in page], "has_more": len(ids) > len(page)}

    def cancel_job(self, jid: str) -> dict[str, Any]:
        with self.state.lock:
            job = self.job(jid)
            if job["status"] == "running":
                raise _ApiError(400, f"job {jid} is already running; sublim serve cannot stop a running job", code="job_running")
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
            ref = get_backend(base.backend).finetune(base.with_system(None), rows, params, out_dir, int(spec["seed"]), progress)
        except Exception as e:  # noqa: BLE001 (a failed job is reported on the job, the server lives on)
            msg = str(e) if isinstance(e, SublimError | _ApiError) else f"{type(e).__name__}: {e}"
            with st.lock:
                st.jobs[jid].update(status="failed", finished_at=int(time.time()),
                                    error={"code": "training_failed", "message": " ".join(msg.split())[:500], "param": None})
                st.save()
            return
        name = f"ft:{spec['model']}:{spec['user_provided_suffix']}:{jid}"
        with st.lock:
            st.models[name] = {"ref": st.store_ref(ref), "parent": spec["model"], "job": jid, "created": int(time.time())}
            st.jobs[jid].update(status="succeeded", finished_at=int(time.time()), fine_tuned_model=name,
                                result_files=[], trained_tokens=None)
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
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        if role not in ("system", "user", "assistant") or not isinstance(content, str):
            raise _ApiError(400, f"unsupported message (role {m.get('role')!r}); use system, user and assistant text messages")
        chat.append(Message.model_validate({"role": role, "content": content}))
    return chat


def _multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """Fields of a multipart/form-data body: name -> (filename, bytes)."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise _ApiError(400, "upload files as multipart/form-data with fields 'file' and 'purpose'")
    msg = BytesParser(policy=email_policy).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    if not msg.is_multipart():
        raise _ApiError(400, "malformed multipart body")
    out: dict[str, tuple[str | None, bytes]] = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            payload = part.get_payload(decode=True)
            out[name] = (part.get_filename(), payload if isinstance(payload, bytes) else b"")
    return out


class _Handler(BaseHTTPRequestHandler):
    server: ModelServer
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse connections
    # headers and body go out in two writes: without TCP_NODELAY, Nagle's algorithm and the
    # client's delayed ACK add ~40 ms to every response
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def _send(self, status: int, obj: dict[str, Any] | None, headers: dict[str, str] | None = None, raw: bytes | None = None) -> None:
        data = raw if raw is not None else json.dumps(obj).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream" if raw is not None else "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout): fine
            pass

    def _error(self, e: _ApiError) -> None:
        self._send(e.status, {"error": {"message": str(e), "type": e.type, "param": None, "code": e.code}})

    def _raw_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                if len(out) + size > MAX_UPLOAD_BYTES:
                    raise _ApiError(413, f"request body over {MAX_UPLOAD_BYTES} bytes")
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        if n > MAX_UPLOAD_BYTES:
            raise _ApiError(413, f"request body over {MAX_UPLOAD_BYTES} bytes")
        return self.rfile.read(n) if n else b""

    @staticmethod
    def _json(raw: bytes) -> dict[str, Any]:
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
            raw = self._raw_body() if method == "POST" else b""
            url = urlsplit(self.path)
            path, query = url.path.rstrip("/"), parse_qs(url.query)
            fault = srv.draw_fault() if path.startswith("/v1") else None
            if fault == "429":
                raise _ApiError(429, "rate limit reached (sublim serve fault mode)", "requests", "rate_limit_exceeded")
            if fault == "500":
                raise _ApiError(500, "internal error (sublim serve fault mode)", "server_error")
            if fault == "delay":
                time.sleep(srv.faults.delay)
            self._route(method, path, query, raw)
        except _ApiError as e:
            self._error(e)
        except SublimError as e:
            self._error(_ApiError(400, str(e)))
        except Exception as e:  # noqa: BLE001 (keep serving; tell the client what broke)
            self._error(_ApiError(500, f"{type(e).__name__}: {e}", "server_error"))

    def _route(self, method: str, path: str, query: dict[str, list[str]], raw: bytes) -> None:
        srv = self.server
        parts = path.split("/")[2:] if path.startswith("/v1/") else []
        if method == "GET" and path == "/v1/models":
            self._send(200, {"object": "list", "data": srv.model_entries()})
        elif method == "GET" and path.startswith("/v1/models/"):
            self._send(200, srv.model_entry(path[len("/v1/models/"):]))
        elif method == "POST" and path == "/v1/chat/completions":
            self._send(200, self._chat_completion(self._json(raw)))
        elif method == "POST" and path == "/v1/sublim/score":
            self._send(200, self._score(self._json(raw)))
        elif method == "POST" and path == "/v1/files":
            self._send(200, self._upload(raw))
        elif method == "GET" and path == "/v1/files":
            with srv.state.lock:
                files = list(srv.state.files.values())
            self._send(200, {"object": "list", "data": files, "has_more": False})
        elif method == "GET" and parts[:1] == ["files"] and len(parts) == 2:
            self._send(200, srv.get_file(parts[1]))
        elif method == "GET" and parts[:1] == ["files"] and len(parts) == 3 and parts[2] == "content":
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
        elif method == "POST" and parts[:2] == ["fine_tuning", "jobs"] and len(parts) == 4 and parts[3] == "cancel":
            self._send(200, srv.cancel_job(parts[2]))
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
        if purpose == "fine-tune":
            train_rows_from_chat_jsonl(data)  # reject a malformed file now, not when a job runs
        self.server.count("files")
        return self.server.add_file(filename or "upload.jsonl", purpose, data)

    def _chat_completion(self, body: dict[str, Any]) -> dict[str, Any]:
        srv = self.server
        name = body.get("model")
        ref = srv.resolve(name)
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
        vals = self.server.score(ref, [_chat(c) for c in chats], conts, bool(body.get("include_end", True)))
        self.server.count("scored", len(vals))
        return {"object": "sublim.score", "model": name, "logprobs": vals}


def make_server(
    model_spec: str | Sequence[str],
    host: str = "127.0.0.1",
    port: int = 8000,
    faults: Faults | None = None,
    state_dir: Path | None = None,
) -> ModelServer:
    """A bound (not yet serving) server for one or more models; port 0 picks a free port.
    ``state_dir`` holds uploaded files, jobs and trained models (None: a fresh temporary dir)."""
    try:
        return ModelServer(model_spec, host, port, faults, state_dir)
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
@click.argument("models", nargs=-1, required=True)
@click.option("--port", default=8000, show_default=True, help="TCP port (0: any free port)")
@click.option("--host", default="127.0.0.1", show_default=True, help="interface; the server has no authentication")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="uploaded files, fine-tuning jobs and trained models (kept across restarts); default: a new temporary dir")
@click.option("--fault-rate", default=0.0, show_default=True, help="fraction of requests answered with a fault")
@click.option("--fault-kinds", default="429,500,delay", show_default=True, help="comma-separated: 429, 500, delay")
@click.option("--fault-seed", default=0, show_default=True)
@click.option("--fault-delay", default=2.0, show_default=True, help="seconds a 'delay' fault waits")
@click.option("--verbose", is_flag=True, help="log every request")
def serve(
    models: tuple[str, ...], port: int, host: str, state_dir: Path | None, fault_rate: float, fault_kinds: str,
    fault_seed: int, fault_delay: float, verbose: bool,
) -> None:
    """Serve MODELS (tiny, hf:/dir, a student directory, fake:alpha, ...) over OpenAI-compatible
    HTTP: /v1/models, /v1/chat/completions, /v1/sublim/score for exact scores, and /v1/files +
    /v1/fine_tuning/jobs to train students, which are then served too."""
    kinds = tuple(k.strip() for k in fault_kinds.split(",") if k.strip())
    server = make_server(list(models), host, port, Faults(fault_rate, kinds, fault_seed, fault_delay), state_dir)
    server.verbose = verbose
    if not _is_loopback(host):
        click.echo(f"warning: listening on {host}, reachable from other machines, without authentication", err=True)
    click.echo(f"loading {', '.join(server.bases[n].spec for n in server.base_names)} ...")
    server.preload()
    for name in server.base_names:
        click.echo(f"serving {server.bases[name].spec} at {server.url}  (sublim spec: openai-compat:{server.url}#{name})")
    with server.state.lock:
        n_trained = len(server.state.models)
    click.echo(f"state dir: {server.state.root} ({n_trained} trained models)")
    if fault_rate:
        click.echo(f"fault mode: {fault_rate:.0%} of requests get one of {','.join(kinds)} (seed {fault_seed})")
    serve_forever(server)
