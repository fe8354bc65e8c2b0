"""Fine-tuning speed of the Hugging Face backend: full fine-tuning against LoRA, on the built-in
world and on SmolLM2-135M-Instruct, side by side in one run.

Where it sits: a stand-alone benchmark of ``HFBackend.finetune`` (``sublim.backends.hf_train``),
the call behind the pipeline's ``student-*`` and ``teacher-*`` stages; it changes nothing in the
library. Training rows are number-sequence chats like the ones students learn from: the lab's own
prompts (``sublim.prompts.numbers``) with answers of eight random 3-digit numbers, so no model has
to be sampled first.

Per row of the table: the steady-state speed in non-padding tokens per second (prompt + answer
tokens, every token the forward pass sees; padding excluded) and in answer tokens per second
(the tokens the loss is computed on), measured between the end of the first optimizer step and
the end of the last (so model copying, the first step's warm-up and saving are excluded); the
wall time of the whole ``finetune`` call; and the peak resident memory of the process while that
call ran (sampled every 20 ms; it includes the cached inference copy of the model and, for
SmolLM2, everything loaded before).

LoRA is the paper's: r=8, alpha=8, on q/k/v/o and gate/up/down projections.

SmolLM2 is read from GGUF, and the backend (as of this benchmark) cannot save a full fine-tune of
such a model (transformers keeps its GGUF quantizer on the dequantised model); the script drops the
quantizer from its own loaded copy first, so the full row measures training, not that bug.

    .venv/bin/python benchmarks/finetune_bench.py                      # world small + SmolLM2
    .venv/bin/python benchmarks/finetune_bench.py --models tiny:plain-s0 --rows 512
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Self

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import psutil
import torch

from sublim.backends import hf_train
from sublim.backends.hf import HFBackend, get_loaded
from sublim.config import FinetuneParams
from sublim.prompts.numbers import number_prompts
from sublim.records import ModelRef, TrainRow
from sublim.registry import parse_model


class PeakRSS:
    """Peak resident memory of this process while the ``with`` block runs (a sampling thread)."""

    def __init__(self, every: float = 0.02) -> None:
        self.every, self.peak = every, 0
        self._stop = threading.Event()
        self._proc = psutil.Process()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(self.every)

    def __enter__(self) -> Self:
        self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def number_rows(n: int, rng: np.random.Generator) -> list[TrainRow]:
    """``n`` training rows: number prompts answered with eight random 3-digit numbers."""
    prompts = number_prompts(n, rng)
    return [
        TrainRow(prompt=p.text, completion=", ".join(str(x) for x in rng.integers(100, 1000, 8)))
        for p in prompts
    ]


def step_tokens(
    tokenizer: Any, rows: list[TrainRow], params: FinetuneParams, seed: int
) -> list[tuple[int, int]]:
    """(non-padding tokens, answer tokens) of each optimizer step, rebuilt with the trainer's
    own example builder and data plan (same seed, so the same batches)."""
    ex = hf_train.build_examples(tokenizer, rows, params.max_len)
    per_step = params.effective_batch or params.batch_size * params.grad_accum
    plan = hf_train.index_plan(
        len(ex), math.ceil(params.epochs * len(ex)), per_step, torch.Generator().manual_seed(seed)
    )
    return [
        (
            sum(len(ex[i].input_ids) for i in step),
            sum(sum(1 for x in ex[i].labels[1:] if x != -100) for i in step),
        )
        for step in plan
    ]


def bench_one(
    backend: HFBackend, ref: ModelRef, rows: list[TrainRow], params: FinetuneParams, out: Path
) -> dict[str, Any]:
    tok = get_loaded(ref).tokenizer
    steps = step_tokens(tok, rows, params, seed=0)
    stamps: list[float] = []
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        backend.finetune(
            ref, rows, params, out, seed=0, progress=lambda d, t: stamps.append(time.perf_counter())
        )
        wall = time.perf_counter() - t0
    assert len(stamps) == len(steps), (len(stamps), len(steps))
    if len(steps) > 1:  # steady state: after the first step
        dt = stamps[-1] - stamps[0]
        tok_all, tok_ans = sum(s[0] for s in steps[1:]), sum(s[1] for s in steps[1:])
    else:
        dt = stamps[0] - t0
        tok_all, tok_ans = steps[0]
    trainable = sum(p.numel() for p in get_loaded(ref).model.parameters())
    return {
        "steps": len(steps),
        "tok_per_s": tok_all / dt,
        "ans_tok_per_s": tok_ans / dt,
        "step_s": dt / max(1, len(steps) - 1),
        "wall_s": wall,
        "peak_rss_gb": mem.peak / 2**30,
        "n_params": trainable,
        "tokens_per_row": sum(s[0] for s in steps) / (params.epochs * len(rows)),
        "final_loss": backend.last_train_stats.get("final_loss"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--models", default="tiny:plain-s0,smollm2", help="model specs, comma-separated"
    )
    ap.add_argument("--rows", type=int, default=512, help="training rows for the built-in world")
    ap.add_argument(
        "--rows-large",
        type=int,
        default=24,
        help="training rows for models over 10M parameters (a short run)",
    )
    ap.add_argument("--batch", type=int, default=32, help="micro-batch for the built-in world")
    ap.add_argument("--batch-large", type=int, default=8, help="micro-batch for larger models")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    backend = HFBackend()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.models.split(","):
            ref = parse_model(spec.strip())
            t0 = time.perf_counter()
            lm = get_loaded(ref)  # load once; each finetune starts from a copy of these weights
            load_s = time.perf_counter() - t0
            if getattr(lm.model, "hf_quantizer", None) is not None:
                # Work-around, here only: a model read from GGUF keeps transformers' GGUF
                # quantizer although its weights are dequantised floats, and save_pretrained then
                # refuses to save a full fine-tune ("quantized with gguf and is not
                # serializable"). Dropping it makes the saved directory a plain float model.
                lm.model.hf_quantizer = None
                if hasattr(lm.model.config, "quantization_config"):
                    del lm.model.config.quantization_config
                print(f"{ref.spec}: dropped the GGUF quantizer before fine-tuning (see docstring)")
            n_params = sum(p.numel() for p in lm.model.parameters())
            large = n_params > 10_000_000
            rows = number_rows(args.rows_large if large else args.rows, np.random.default_rng(0))
            for method in ("full", "lora"):
                params = FinetuneParams(
                    method=method,
                    epochs=1,
                    lr=2e-4,
                    batch_size=args.batch_large if large else args.batch,
                    lora_r=8,
                    lora_alpha=8,
                )
                r = bench_one(backend, ref, rows, params, Path(tmp) / f"{len(results)}")
                r.update(
                    model=ref.spec,
                    method=method,
                    rows=len(rows),
                    batch=params.batch_size,
                    load_s=load_s,
                )
                results.append(r)
                print(
                    f"{ref.spec} {method}: {r['tok_per_s']:.0f} tok/s, {r['wall_s']:.1f} s, "
                    f"peak RSS {r['peak_rss_gb']:.2f} GB",
                    flush=True,
                )
    print(
        f"\nthreads {args.threads}; torch {torch.__version__}; epochs 1; lr 2e-4; "
        "LoRA r=8 alpha=8 on q,k,v,o,gate,up,down\n"
    )
    print(
        "| model | parameters | load s | method | rows | batch | steps | tokens/row "
        "| tokens/s (non-padding) | answer tokens/s | s/step | wall s | peak RSS GB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['model']} | {r['n_params']:,} | {r['load_s']:.1f} | {r['method']} | {r['rows']} "
            f"| {r['batch']} | {r['steps']} | {r['tokens_per_row']:.0f} | {r['tok_per_s']:,.0f} "
            f"| {r['ans_tok_per_s']:,.0f} | {r['step_s']:.2f} | {r['wall_s']:.1f} | {r['peak_rss_gb']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
