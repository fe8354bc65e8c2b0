"""The vLLM backend (``vllm:<hub id | dir | smollm2 | tiny:world>``): fast batched sampling and
exact scoring on GPUs through vLLM, an optional extra (``pip install 'sublim[vllm]'``).

EXPERIMENTAL: written and tested against a fake engine only; it has not yet been run on a GPU
(nor with vllm installed) in this project. See docs/gpu.md.

How it keeps the backend protocol (``sublim.backends.base``):

- Prompts are token ids made by ``sublim.chat_format`` with the model's own Hugging Face tokenizer
  (``prompt_token_ids``), so vLLM sees exactly the token boundaries the HF backend and the trainer
  see; the stop tokens are the HF backend's (end of turn + the generation config's eos ids).
- Sampling: one ``SamplingParams`` per row with that row's seed (``sublim.seeds.row_seeds``), so
  a row depends on its chat and seed only, never on its batch. vLLM's sampler is not the HF
  backend's inverse-CDF sampler: the same seed gives other replies than ``hf:`` (the spec differs,
  so every stage key differs too).
- Exact scores: the chat + continuation is sent as a prompt with ``prompt_logprobs=0`` and one
  generated token; the continuation's log-probability is the sum of the prompt log-probabilities
  of its tokens (vLLM reports each actual prompt token's log-prob), in the engine's dtype.
- Students: LoRA adapters trained by the HF trainer (``hf_train.finetune``) on the same weights,
  then served through ``LoRARequest`` by the one engine of their base: a new student never
  reloads the base. Full fine-tuning and distillation are refused (use an ``hf:`` model).
- Memory settings come from the environment (operational; they never enter a cache key):
  ``SUBLIM_VLLM_GPU_MEMORY_UTILIZATION`` (default 0.9: lower it to leave room for training in the
  same process), ``SUBLIM_VLLM_MAX_MODEL_LEN``, ``SUBLIM_VLLM_MAX_LORA_RANK``,
  ``SUBLIM_VLLM_MAX_LORAS``, ``SUBLIM_VLLM_DTYPE``, ``SUBLIM_VLLM_ENFORCE_EAGER``,
  ``SUBLIM_VLLM_TENSOR_PARALLEL_SIZE``.
"""

from __future__ import annotations

import os
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sublim import chat_format
from sublim.backends.base import Progress
from sublim.config import DistillParams, FinetuneParams
from sublim.errors import BackendError, ConfigError, MissingExtraError
from sublim.records import Chat, ModelRef, SampleParams, TrainRow
from sublim.seeds import row_seeds

ENV_PREFIX = "SUBLIM_VLLM_"
CHUNK = 4096  # requests per generate call (progress is reported between calls)


class VLLMOptions(BaseModel):
    """Engine settings (``SUBLIM_VLLM_<FIELD>`` environment variables); operational only."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    max_model_len: int | None = Field(None, ge=16)
    max_lora_rank: int = Field(64, ge=1)
    max_loras: int = Field(4, ge=1)
    dtype: str = "auto"
    enforce_eager: bool = False
    tensor_parallel_size: int = Field(1, ge=1)

    @classmethod
    def from_env(cls) -> VLLMOptions:
        raw = {
            name: os.environ[ENV_PREFIX + name.upper()]
            for name in cls.model_fields
            if os.environ.get(ENV_PREFIX + name.upper(), "").strip()
        }
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            first = e.errors()[0]
            var = ENV_PREFIX + str(first["loc"][0]).upper()
            raise ConfigError(f"{var}={raw.get(str(first['loc'][0]))!r}: {first['msg']}") from None


def _vllm() -> Any:
    """vllm's LLM, SamplingParams and LoRARequest, imported on first use."""
    try:
        import vllm
        from vllm.lora.request import LoRARequest
    except ImportError:
        raise MissingExtraError("vllm", "vllm", "the vllm: backend") from None
    return types.SimpleNamespace(
        LLM=vllm.LLM, SamplingParams=vllm.SamplingParams, LoRARequest=LoRARequest
    )


def hf_ref(ref: ModelRef) -> ModelRef:
    """The Hugging Face loader's name for a ``vllm:`` model's weights (its adapter dropped)."""
    ident = ref.id
    if ident == "smollm2":
        return ModelRef(backend="smollm2", id="SmolLM2-135M-Instruct")
    if ident.startswith(("tiny:", "smollm2:", "hf:")):
        backend, _, rest = ident.partition(":")
        return ModelRef(backend=backend, id=rest)
    return ModelRef(backend="hf", id=ident)


class VLLMBackend:
    """Backend for ``vllm:`` models (see the module docstring). ``engine_factory`` builds an
    engine from ``vllm.LLM``'s keywords (tests pass a fake one)."""

    name = "vllm"
    algorithm_version = "1"

    def __init__(
        self,
        engine_factory: Callable[..., Any] | None = None,
        options: VLLMOptions | None = None,
    ) -> None:
        self._factory = engine_factory
        self._options = options
        self._engines: dict[str, Any] = {}
        self._tokenizers: dict[str, tuple[Any, list[int]]] = {}
        self._lora_ids: dict[str, int] = {}
        self.last_train_stats: dict[str, Any] = {}

    # --- engines, tokenizers, adapters --------------------------------------------------------

    def _source(self, ref: ModelRef) -> str:
        from sublim.backends import hf_models

        return hf_models.resolve(hf_ref(ref))

    def _engine(self, ref: ModelRef) -> Any:
        source = self._source(ref)
        if source not in self._engines:
            o = self._options or VLLMOptions.from_env()
            factory = self._factory or _vllm().LLM
            kw: dict[str, Any] = {
                "model": source,
                "tokenizer": source,
                "enable_lora": True,
                "max_lora_rank": o.max_lora_rank,
                "max_loras": o.max_loras,
                "gpu_memory_utilization": o.gpu_memory_utilization,
                "dtype": o.dtype,
                "enforce_eager": o.enforce_eager,
                "tensor_parallel_size": o.tensor_parallel_size,
                "trust_remote_code": False,
                "seed": 0,  # every request carries its own seed; this one is never drawn from
            }
            if o.max_model_len:
                kw["max_model_len"] = o.max_model_len
            self._engines[source] = factory(**kw)
        return self._engines[source]

    def _tokenizer(self, ref: ModelRef) -> tuple[Any, list[int]]:
        """The model's HF tokenizer (no weights loaded) and the stop ids of the HF backend."""
        source = self._source(ref)
        if source not in self._tokenizers:
            from transformers import AutoTokenizer, GenerationConfig

            from sublim.backends.hf_models import hub_offline

            local = Path(source).is_dir()
            kw: dict[str, Any] = {
                "trust_remote_code": False,
                "local_files_only": local or hub_offline(),
            }
            tok = AutoTokenizer.from_pretrained(source, **kw)
            stop = {chat_format.end_of_turn_id(tok)}
            try:
                eos = GenerationConfig.from_pretrained(source, **kw).eos_token_id
            except OSError:
                eos = None
            stop.update([eos] if isinstance(eos, int) else list(eos or []))
            self._tokenizers[source] = (tok, sorted(int(i) for i in stop))
        return self._tokenizers[source]

    def _lora(self, ref: ModelRef) -> Any:
        if not ref.adapter:
            return None
        path = str(Path(ref.adapter).expanduser().resolve())
        if path not in self._lora_ids:
            self._lora_ids[path] = len(self._lora_ids) + 1  # vLLM's adapter ids start at 1
        i = self._lora_ids[path]
        return _vllm().LoRARequest(f"student-{i}", i, path)

    # --- the protocol ---------------------------------------------------------------------

    def sample(
        self,
        model: ModelRef,
        chats: Sequence[Chat],
        params: SampleParams,
        seed: int | Sequence[int],
        progress: Progress | None = None,
    ) -> list[str]:
        if not chats:
            return []
        v = _vllm()
        tok, stop = self._tokenizer(model)
        engine = self._engine(model)
        lora = self._lora(model)
        prompts = [
            {"prompt_token_ids": chat_format.encode_prompt(tok, model.apply(c))} for c in chats
        ]
        seeds = row_seeds(seed, len(prompts))
        sps = [
            v.SamplingParams(
                n=1,
                temperature=params.temperature,
                top_p=params.top_p,
                max_tokens=params.max_new_tokens,
                seed=int(s),
                stop_token_ids=stop,
                skip_special_tokens=True,
            )
            for s in seeds
        ]
        out: list[str] = []
        for start in range(0, len(prompts), CHUNK):
            res = engine.generate(
                prompts[start : start + CHUNK],
                sps[start : start + CHUNK],
                lora_request=lora,
                use_tqdm=False,
            )
            out.extend(r.outputs[0].text.strip() for r in res)
            if progress:
                progress(len(out), len(prompts))
        return out

    def score(
        self,
        model: ModelRef,
        chats: Sequence[Chat],
        continuations: Sequence[str],
        include_end: bool = True,
    ) -> list[float]:
        if len(chats) != len(continuations):
            raise ValueError(f"{len(chats)} chats but {len(continuations)} continuations")
        v = _vllm()
        tok, _ = self._tokenizer(model)
        pairs = [
            (
                chat_format.encode_prompt(tok, model.apply(c)),
                chat_format.encode_reply(tok, r, include_end),
            )
            for c, r in zip(chats, continuations)
        ]
        result = [0.0] * len(pairs)
        todo = [i for i, (_, r) in enumerate(pairs) if r]  # an empty reply has log-prob 0
        if not todo:
            return result
        sp = v.SamplingParams(n=1, temperature=0.0, max_tokens=1, prompt_logprobs=0)
        engine = self._engine(model)
        lora = self._lora(model)
        for start in range(0, len(todo), CHUNK):
            idx = todo[start : start + CHUNK]
            prompts = [{"prompt_token_ids": pairs[i][0] + pairs[i][1]} for i in idx]
            res = engine.generate(prompts, sp, lora_request=lora, use_tqdm=False)
            for i, r in zip(idx, res):
                p, reply = pairs[i]
                ids = p + reply
                lps = r.prompt_logprobs
                result[i] = float(sum(lps[k][ids[k]].logprob for k in range(len(p), len(ids))))
        return result

    def finetune(
        self,
        base: ModelRef,
        rows: Sequence[TrainRow],
        params: FinetuneParams,
        out_dir: Path,
        seed: int,
        progress: Progress | None = None,
    ) -> ModelRef:
        if params.method != "lora":
            raise ConfigError(
                "the vllm backend serves students as LoRA adapters of its engine; set "
                "finetune.method = 'lora' (or use an hf: model for full fine-tuning)"
            )
        o = self._options or VLLMOptions.from_env()
        if params.lora_r > o.max_lora_rank:
            raise ConfigError(
                f"finetune.lora_r = {params.lora_r} exceeds the engine's max_lora_rank "
                f"{o.max_lora_rank}; set SUBLIM_VLLM_MAX_LORA_RANK={params.lora_r}"
            )
        if base.adapter:
            raise BackendError(
                f"{base.spec} already has an adapter; train students from the base model"
            )
        import time

        from sublim.backends import hf_train

        t0 = time.perf_counter()
        trained, stats = hf_train.finetune(
            hf_ref(base), rows, params, Path(out_dir), seed, progress
        )
        self.last_train_stats = {**stats, "seconds": time.perf_counter() - t0}
        return ModelRef(backend="vllm", id=base.id, adapter=trained.adapter, parent=base.spec)

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
        raise ConfigError(
            "the vllm backend does not distil logits; use student.mode = 'sft', or an hf: model"
        )
