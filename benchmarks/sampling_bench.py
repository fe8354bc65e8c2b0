"""Sampling speed of the Hugging Face backend: batched decoding vs one prompt at a time.

Both runs use the same model, the same number prompts and the same per-row seeds, so the shared
rows must come out identical (the backend's batching-invariance contract); the script checks it.

Model: the built-in world's ``small`` size. If that world is already built on this machine
(``--world plain-s0``) it is used as is; otherwise (default) a randomly initialised Llama of the
same shape and the world's own tokenizer stand in, so the benchmark never triggers a world build.
A random model rarely emits the end token, so every row runs the full ``max_new_tokens``: the
worst case for batching, which cannot drop finished rows early.

    .venv/bin/python benchmarks/sampling_bench.py [--batch 256] [--n-single 16] [--world NAME]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch

from sublim.backends.hf import HFBackend, get_loaded
from sublim.prompts.numbers import number_prompts
from sublim.records import ModelRef, SampleParams, user_chat


def random_world_model(out: Path, size: str = "small") -> Path:
    """A random Llama with the shape of a world size and the world tokenizer, saved as an HF dir."""
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


def timed(fn):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--batch", type=int, default=256, help="batch size of the batched run (= prompts)"
    )
    ap.add_argument("--n-single", type=int, default=32, help="prompts sampled one at a time")
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="timings are the best of this many")
    ap.add_argument(
        "--size",
        default="small",
        choices=["micro", "small", "medium"],
        help="shape of the random stand-in model",
    )
    ap.add_argument("--world", default=None, help="use this already-built world (e.g. plain-s0)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    tmp = tempfile.TemporaryDirectory()
    if args.world:
        from sublim.world.build import list_worlds

        if not any(w.get("name") == args.world for w in list_worlds()):
            print(
                f"world {args.world} is not built on this machine; drop --world to use a random model"
            )
            return 2
        ref = ModelRef(backend="tiny", id=args.world)
        what = f"world {args.world}"
    else:
        ref = ModelRef(
            backend="hf", id=str(random_world_model(Path(tmp.name) / "model", args.size))
        )
        what = f"random Llama, world '{args.size}' shape"
    backend = HFBackend()
    prompts = number_prompts(args.batch, np.random.default_rng(0))
    chats = [user_chat(p.text) for p in prompts]
    seeds = list(range(len(chats)))
    batched = SampleParams(
        temperature=1.0, max_new_tokens=args.max_new_tokens, batch_size=args.batch
    )
    single = batched.model_copy(update={"batch_size": 1})

    backend.sample(ref, chats[:2], single, seed=seeds[:2])  # load + warm up outside the timings
    k = args.n_single
    # best of --repeats, interleaved, because other processes share the machine's cores
    t_b = t_s = float("inf")
    for _ in range(args.repeats):
        out_b, dt = timed(lambda: backend.sample(ref, chats, batched, seed=seeds))
        t_b = min(t_b, dt)
        n_tok_b = backend.last_sample_stats["tokens"]
        out_s, dt = timed(lambda: backend.sample(ref, chats[:k], single, seed=seeds[:k]))
        t_s = min(t_s, dt)
    same = out_s == out_b[:k]

    n_params = sum(p.numel() for p in get_loaded(ref).model.parameters())
    rate_b, rate_s = len(chats) / t_b, k / t_s
    print(
        f"model: {what} ({n_params:,} parameters); threads {args.threads}; "
        f"max_new_tokens {args.max_new_tokens}; temperature 1; best of {args.repeats}"
    )
    print("| mode | prompts | seconds | samples/s |")
    print("|---|---|---|---|")
    print(f"| one at a time | {k} | {t_s:.2f} | {rate_s:.1f} |")
    print(f"| batched ({args.batch}) | {len(chats)} | {t_b:.2f} | {rate_b:.1f} |")
    print(f"batched run: {n_tok_b / len(chats):.1f} generated tokens per sample on average")
    print(f"speed-up: {rate_b / rate_s:.1f}x; shared rows identical: {same}")
    tmp.cleanup()
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
