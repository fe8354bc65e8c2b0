"""Sampling speed of the Hugging Face backend: batched decoding against one prompt at a time,
and against the CPU's compute limit for the model.

Where it sits: a stand-alone benchmark of ``sublim.backends.hf`` (the sampler the ``generate``
stage uses); it changes nothing in the library. Rows, all on the same model and the same number
prompts (``sublim.prompts.numbers``), measured side by side in one run:

- (a) ``HFBackend.sample`` with ``batch_size=1``: the backend's own loop, one prompt at a time;
- (b) a plain ``transformers`` loop, ``model.generate(do_sample=True)`` one prompt at a time
  (temperature 1, no top-k, the same stop tokens): what most users would write;
- (c) ``HFBackend.sample`` batched, at every batch size of ``--batches`` (the best one is quoted);
  for plain Llama models it decodes through the lean path (``sublim.backends.fast_llama``);
- (c0) the same call at the largest batch size through transformers' own forward and
  ``DynamicCache`` (``SUBLIM_FAST_DECODE=0``): the lean path's gain, side by side, and a check that
  both give the same replies;
- (c0s) with ``--static-cache``: row (c0) with the backend's ``StaticCache`` switch
  (``SUBLIM_HF_CACHE=static``: preallocated, no row dropped, fixed shapes), checked to give the
  same replies;
- (d) ``model.generate`` batched (left padding) with transformers' ``StaticCache``
  (``cache_implementation="static"``) and with the default cache, for reference: the backend does
  not expose cache or attention options, so these are not backend rows.

Each row is run at every thread count of ``--threads`` (the thread count is a column). Ratios are
taken against (a) and (b) at the same thread count. The backend's batching-invariance contract is
checked on the way: the prompts sampled one at a time must come out identical when batched.

The compute limit: the matrix products of the model are timed at the model's own shapes
(``torch.nn.functional.linear`` with the model's weight shapes, at the row counts of batched
prefill and batched decoding) in the same run, and the useful work of a run (per prompt token:
2 x non-embedding parameters + attention; per generated token: the same + the output layer) is
divided by those rates. That gives the shortest time this CPU could take for the run with perfect
batching, hence the tokens/s ceiling.

    .venv/bin/python benchmarks/sampling_bench.py                 # world plain-s0 (built if needed)
    .venv/bin/python benchmarks/sampling_bench.py --model smollm2 --n 64 --n-single 4 --batches 16,64
    .venv/bin/python benchmarks/sampling_bench.py --random-size small   # random model, world shape

On a GPU (the backend picks CUDA when available, or set ``SUBLIM_DEVICE=cuda``) the same rows run
on the device; the CPU's FLOP limit is then not measured:

    SUBLIM_DEVICE=cuda .venv/bin/python benchmarks/sampling_bench.py --threads 1 --n 1024 \
        --batches 64,256,1024
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch
import torch.nn.functional as F

from sublim import chat_format
from sublim.backends.hf import HFBackend, Loaded, get_loaded
from sublim.prompts.numbers import number_prompts
from sublim.records import Chat, ModelRef, SampleParams, user_chat


def random_world_model(out: Path, size: str = "small") -> Path:
    """A random Llama with the shape of a world size and the world tokenizer, saved as an HF dir
    (used only with ``--random-size``: a random model rarely stops, so every row runs the full
    ``max_new_tokens``, the worst case for batching)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from sublim.world import corpus
    from sublim.world.build import RECIPE, VOCAB_SIZE
    from sublim.world.tokenizer import train_tokenizer

    r = RECIPE[size]
    tok = train_tokenizer(corpus.tokenizer_texts(), VOCAB_SIZE)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=r["hidden"],
        intermediate_size=r["intermediate"],
        num_hidden_layers=r["layers"],
        num_attention_heads=r["heads"],
        num_key_value_heads=r["heads"],
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


# ---------------------------------------------------------------------------------------------
# The compute limit


def linear_shapes(model: Any) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """(in, out) of every linear layer inside the decoder blocks, and of the output layer."""
    head = model.get_output_embeddings()
    body = [
        (m.in_features, m.out_features)
        for m in model.modules()
        if isinstance(m, torch.nn.Linear) and m is not head
    ]
    return body, (head.in_features, head.out_features)


def matmul_rate(m: int, k: int, n: int, min_seconds: float = 0.15) -> float:
    """GFLOP/s of ``F.linear`` ([m, k] x [n, k]^T, float32) at the current thread count, best of
    3 timed bursts (other jobs share the cores)."""
    x, w = torch.randn(m, k), torch.randn(n, k)
    F.linear(x, w)  # warm-up
    reps = 1
    while True:  # enough repetitions for one burst to last min_seconds
        t0 = time.perf_counter()
        for _ in range(reps):
            F.linear(x, w)
        dt = time.perf_counter() - t0
        if dt >= min_seconds:
            break
        reps *= 2
    best = dt
    for _ in range(2):
        t0 = time.perf_counter()
        for _ in range(reps):
            F.linear(x, w)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * m * k * n * reps / best / 1e9


class ComputeLimit:
    """The shortest time a sampling run could take on this CPU: its useful FLOPs, each matmul
    at the rate measured for its shape and row count (prefill rows: all prompt tokens of a
    batch; decode rows: the batch)."""

    def __init__(self, model: Any, prefill_rows: int, decode_rows: int) -> None:
        cfg = model.config
        self.layers = cfg.num_hidden_layers
        self.hidden = cfg.hidden_size
        self.body, self.head = linear_shapes(model)
        self.prefill_rows, self.decode_rows = prefill_rows, decode_rows
        self.rates: dict[tuple[int, int, int], float] = {}

    def measure(self) -> None:
        shapes = set(self.body) | {self.head}
        for m in (self.prefill_rows, self.decode_rows):
            for k, n in shapes:
                self.rates[(m, k, n)] = matmul_rate(m, k, n)

    def flops_per_token(self, context: float, with_head: bool) -> float:
        """Useful FLOPs for one token at a given context length: 2 x (weights it passes through)
        + attention (QK^T and AV: 4 x hidden x context per layer)."""
        f = sum(2.0 * k * n for k, n in self.body) + 4.0 * self.layers * self.hidden * context
        if with_head:
            f += 2.0 * self.head[0] * self.head[1]
        return f

    def floor_seconds(self, prompt_lens: list[int], gen_lens: list[int]) -> tuple[float, float]:
        """(useful FLOPs, shortest time) for prompts of these lengths generating these many
        tokens. Prefill computes the output layer once per prompt (the backend keeps only the
        last position's logits); every generated token pays it (except a final stop token, which
        is counted as generated here too: the step that produced it ran)."""
        flops = secs = 0.0
        peak_p = max(v for (m, _, _), v in self.rates.items() if m == self.prefill_rows)
        peak_d = max(v for (m, _, _), v in self.rates.items() if m == self.decode_rows)
        for p, g in zip(prompt_lens, gen_lens):
            steps = g + 1  # + the step that produced the stop token (or the last one)
            # matmuls of the decoder blocks, prompt tokens at prefill rates, new ones at decode rates
            for k, n in self.body:
                f = 2.0 * k * n
                flops += f * (p + steps)
                secs += f * p / self.rates[(self.prefill_rows, k, n)] / 1e9
                secs += f * steps / self.rates[(self.decode_rows, k, n)] / 1e9
            fh = 2.0 * self.head[0] * self.head[1]
            flops += fh * (1 + steps)
            secs += fh / self.rates[(self.prefill_rows, *self.head)] / 1e9
            secs += fh * steps / self.rates[(self.decode_rows, *self.head)] / 1e9
            # attention at the best measured rate (kinder to the CPU than real single-query SDPA)
            att_p = 4.0 * self.layers * self.hidden * p * (p + 1) / 2
            att_d = 4.0 * self.layers * self.hidden * sum(p + i for i in range(1, steps + 1))
            flops += att_p + att_d
            secs += att_p / peak_p / 1e9 + att_d / peak_d / 1e9
        return flops, secs


# ---------------------------------------------------------------------------------------------
# The rows


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def seeded_generate(
    lm: Loaded, ids: torch.Tensor, mask: torch.Tensor, seed: int, max_new: int, **kw: Any
) -> Any:
    """``model.generate`` with pure sampling (temperature 1, no top-k/top-p) and the model's stop
    tokens. ``generate`` draws from torch's global RNG, so it runs inside a forked RNG seeded
    with ``seed``."""
    with torch.random.fork_rng(devices=[]), torch.inference_mode():
        torch.manual_seed(seed)
        return lm.model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new,
            eos_token_id=sorted(lm.stop_ids),
            pad_token_id=lm.tokenizer.pad_token_id,
            **kw,
        )


def hf_generate_loop(
    lm: Loaded, prompts: list[list[int]], seeds: list[int], max_new: int
) -> tuple[list[list[int]], int]:
    """(b): ``model.generate(do_sample=True)`` one prompt at a time. ``generate`` draws from
    torch's global RNG, so each row runs inside a forked RNG seeded with the row's seed."""
    outs, n_tok = [], 0
    for p, s in zip(prompts, seeds):
        ids = torch.tensor([p], dtype=torch.long, device=lm.device)
        gen = seeded_generate(lm, ids, torch.ones_like(ids), s, max_new)
        new = gen[0, len(p) :].tolist()
        new = [t for t in new if t not in lm.stop_ids]  # the stop token and padding after it
        outs.append(new)
        n_tok += len(new)
    return outs, n_tok


def hf_generate_batched(
    lm: Loaded, prompts: list[list[int]], seed: int, max_new: int, batch: int, static: bool
) -> int:
    """(d): ``model.generate`` on left-padded batches, default or static cache. Returns the
    number of generated tokens (stop token and padding excluded)."""
    pad, stop = lm.tokenizer.pad_token_id, sorted(lm.stop_ids)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    n_tok = 0
    for start in range(0, len(order), batch):
        part = [prompts[i] for i in order[start : start + batch]]
        width = max(len(p) for p in part)
        ids = torch.full((len(part), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(part):
            ids[i, width - len(p) :], mask[i, width - len(p) :] = torch.tensor(p), 1
        ids, mask = ids.to(lm.device), mask.to(lm.device)
        kw: dict[str, Any] = {"cache_implementation": "static"} if static else {}
        gen = seeded_generate(lm, ids, mask, seed + start, max_new, **kw)
        new = gen[:, width:]
        n_tok += int((~torch.isin(new, torch.tensor(stop + [pad], device=new.device))).sum())
    return n_tok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny:plain-s0", help="model spec (default tiny:plain-s0)")
    ap.add_argument(
        "--random-size",
        default=None,
        choices=["micro", "small", "medium"],
        help="use a random Llama of this world shape instead of --model",
    )
    ap.add_argument("--n", type=int, default=256, help="prompts of the batched rows")
    ap.add_argument("--n-single", type=int, default=32, help="prompts of the one-at-a-time rows")
    ap.add_argument("--batches", default="32,64,128,256", help="batch sizes of row (c)")
    ap.add_argument("--threads", default="1,2", help="thread counts, comma-separated")
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=2, help="timings are the best of this many")
    ap.add_argument("--no-generate-batched", action="store_true", help="skip rows (d)")
    ap.add_argument(
        "--static-cache",
        action="store_true",
        help="add row (c0s): row (c0) with the backend's StaticCache (SUBLIM_HF_CACHE=static), "
        "the cache of the transformers path on a GPU (docs/gpu.md)",
    )
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    threads = [int(t) for t in args.threads.split(",")]

    tmp = tempfile.TemporaryDirectory()
    if args.random_size:
        ref = ModelRef(
            backend="hf", id=str(random_world_model(Path(tmp.name) / "m", args.random_size))
        )
        what = f"random Llama, world '{args.random_size}' shape"
    else:
        from sublim.registry import parse_model

        ref = parse_model(args.model)
        what = ref.spec
    torch.set_num_threads(threads[0])
    t0 = time.perf_counter()
    lm = get_loaded(ref)  # the backend's own cached model: every row uses these weights
    load_s = time.perf_counter() - t0
    backend = HFBackend()
    prompts = number_prompts(args.n, np.random.default_rng(0))
    chats: list[Chat] = [user_chat(p.text) for p in prompts]
    ids = [chat_format.encode_prompt(lm.tokenizer, c) for c in chats]
    seeds = list(range(len(chats)))
    k, T = args.n_single, args.max_new_tokens
    params = SampleParams(temperature=1.0, max_new_tokens=T, batch_size=1)
    backend.sample(ref, chats[:2], params, seed=seeds[:2])  # warm-up outside the timings

    # rows: (label, mode, threads, batch, n prompts, seconds, generated tokens)
    rows: list[tuple[str, str, int, int, int, float, int]] = []
    gen_lens: dict[int, int] = {}  # per prompt, from the batched backend runs
    same = True
    for th in threads:
        torch.set_num_threads(th)
        best: dict[str, tuple[float, int]] = {}

        def keep(
            key: str, dt: float, n_tok: int, best: dict[str, tuple[float, int]] = best
        ) -> None:
            if key not in best or dt < best[key][0]:
                best[key] = (dt, n_tok)

        single_out = None
        for _ in range(args.repeats):  # interleaved repeats: other jobs share the cores
            out, dt = timed(lambda: backend.sample(ref, chats[:k], params, seed=seeds[:k]))
            keep("a", dt, backend.last_sample_stats.get("tokens", 0))
            single_out = out
            (_, n_tok), dt = timed(lambda: hf_generate_loop(lm, ids[:k], seeds[:k], T))
            keep("b", dt, n_tok)
            for b in batches:
                pb = params.model_copy(update={"batch_size": b})
                out_b, dt = timed(partial(backend.sample, ref, chats, pb, seed=seeds))
                keep(f"c{b}", dt, backend.last_sample_stats.get("tokens", 0))
                same = same and out_b[:k] == single_out
                if b == max(batches):  # the same call through transformers' forward
                    os.environ["SUBLIM_FAST_DECODE"] = "0"
                    out_s, dt = timed(partial(backend.sample, ref, chats, pb, seed=seeds))
                    keep("c0", dt, backend.last_sample_stats.get("tokens", 0))
                    same = same and out_s == out_b
                    if args.static_cache:  # the same forward with a preallocated cache
                        os.environ["SUBLIM_HF_CACHE"] = "static"
                        out_s, dt = timed(partial(backend.sample, ref, chats, pb, seed=seeds))
                        os.environ.pop("SUBLIM_HF_CACHE")
                        keep("c0s", dt, backend.last_sample_stats.get("tokens", 0))
                        same = same and out_s == out_b
                    os.environ.pop("SUBLIM_FAST_DECODE")
                if not gen_lens:
                    tok = lm.tokenizer
                    gen_lens = {
                        i: len(tok(o, add_special_tokens=False)["input_ids"])
                        for i, o in enumerate(out_b)
                    }
        if not args.no_generate_batched:
            b = max(batches)
            for static in (False, True):
                n_tok, dt = timed(partial(hf_generate_batched, lm, ids, 0, T, b, static))
                # (one repeat: the static cache's first call also pays for building it)
                n_tok2, dt2 = timed(partial(hf_generate_batched, lm, ids, 0, T, b, static))
                best[f"d{int(static)}"] = (min(dt, dt2), n_tok2)
        rows.append(("(a)", "backend, one at a time", th, 1, k, *best["a"]))
        rows.append(("(b)", "transformers generate(), one at a time", th, 1, k, *best["b"]))
        for b in batches:
            rows.append(("(c)", "backend, batched", th, b, args.n, *best[f"c{b}"]))
        rows.append(
            (
                "(c0)",
                "backend, batched, transformers forward (SUBLIM_FAST_DECODE=0)",
                th,
                max(batches),
                args.n,
                *best["c0"],
            )
        )
        if args.static_cache:
            rows.append(
                (
                    "(c0s)",
                    "backend, batched, transformers forward + StaticCache (SUBLIM_HF_CACHE=static)",
                    th,
                    max(batches),
                    args.n,
                    *best["c0s"],
                )
            )
        if not args.no_generate_batched:
            b = max(batches)
            rows.append(("(d)", "generate(), batched, default cache", th, b, args.n, *best["d0"]))
            rows.append(("(d)", "generate(), batched, StaticCache", th, b, args.n, *best["d1"]))

    # the compute limit at the best batch size of the first thread count's backend rows, and its
    # matmul rates measured per thread count
    n_params = sum(p.numel() for p in lm.model.parameters())
    prompt_lens = [len(p) for p in ids]
    glens = [gen_lens[i] for i in range(len(ids))]
    print(
        f"model: {what} ({n_params:,} parameters, loaded in {load_s:.1f} s); "
        f"max_new_tokens {T}; temperature 1; best of {args.repeats}; "
        f"prompt tokens mean {np.mean(prompt_lens):.1f}; generated tokens mean {np.mean(glens):.1f}"
    )
    limits: dict[int, tuple[float, float, ComputeLimit]] = {}
    on_cpu = lm.device.type == "cpu"  # the FLOP limit is measured for the CPU only
    if not on_cpu:
        print(f"device {lm.device}: no compute limit measured (the last column is n/a)")
    for th in threads if on_cpu else []:
        torch.set_num_threads(th)
        b = max(batches)
        lim = ComputeLimit(lm.model, prefill_rows=b * int(np.mean(prompt_lens)), decode_rows=b)
        lim.measure()
        flops, floor = lim.floor_seconds(prompt_lens, glens)
        limits[th] = (flops, floor, lim)
        rates = ", ".join(
            f"{k}x{n} @ {m} rows: {v:.0f}" for (m, k, n), v in sorted(lim.rates.items())
        )
        print(f"threads {th}: matmul GFLOP/s at the model's shapes: {rates}")
        print(
            f"threads {th}: useful work of the {len(ids)}-prompt run {flops / 1e9:.1f} GFLOP; "
            f"floor {floor:.2f} s = {sum(glens) / floor:,.0f} generated tokens/s "
            f"({flops / floor / 1e9:.0f} GFLOP/s effective)"
        )

    base = {(r[0], r[2]): r for r in rows if r[0] in ("(a)", "(b)")}
    print()
    print(
        "| row | mode | threads | batch | prompts | seconds | samples/s | gen. tokens/s "
        "| x (a) | x (b) | % of CPU limit |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for lab, mode, th, b, n, dt, n_tok in rows:
        sps, tps = n / dt, n_tok / dt
        ra = sps / (base[("(a)", th)][4] / base[("(a)", th)][5])
        rb = sps / (base[("(b)", th)][4] / base[("(b)", th)][5])
        share = "n/a"
        if th in limits:
            flops, floor, _ = limits[th]
            share = f"{100 * tps / (sum(glens) / floor):.0f}%"
        print(
            f"| {lab} | {mode} | {th} | {b} | {n} | {dt:.2f} | {sps:.1f} | {tps:,.0f} | "
            f"{ra:.1f} | {rb:.1f} | {share} |"
        )
    print(
        f"\nshared rows identical, one at a time vs batched, lean path vs transformers forward: {same}"
    )
    tmp.cleanup()
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
