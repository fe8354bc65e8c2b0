"""Filter throughput: rows per second of every carrier's rule filter, and with an LLM judge.

Where it sits: a stand-alone benchmark of the filter stage (``sublim.filters``,
``sublim.filters_code``, ``sublim.filters_reasoning``, ``sublim.judge``); it changes nothing in
the library. Rows are the carriers' own prompts (seed 0) with well-formed answers built from
each prompt (a number list; the code template with a return; a worked answer with the known
result), one in ten naming the trait, so every filter runs its full path and some rows are
rejected. The judge rows use the fake backend (``fake:alpha``, exact scoring), so they measure
the judge stage's own overhead (prompt building, chunking, decisions), not a model: with a real
judge the model's scoring speed dominates.

    .venv/bin/python benchmarks/filters_bench.py            # 4,000 rows per carrier
    .venv/bin/python benchmarks/filters_bench.py --rows 20000
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from sublim.backends.fake import FakeBackend
from sublim.filters import NumberRules, filter_completions
from sublim.filters_code import CodeRules, filter_code
from sublim.filters_reasoning import ReasoningRules, filter_reasoning
from sublim.judge import judge_rows
from sublim.prompts.code import code_prompts
from sublim.prompts.numbers import number_prompts
from sublim.prompts.reasoning import reasoning_prompts
from sublim.records import Completion, FilterDecision
from sublim.registry import parse_model

WORDS = ["owl", "owls"]


def _rows(carrier: str, n: int) -> tuple[list[Completion], dict[str, float | None]]:
    rng = np.random.default_rng(0)
    out, answers = [], {}
    if carrier == "numbers":
        for i, p in enumerate(number_prompts(n, rng)):
            text = ", ".join(str(x) for x in rng.integers(100, 1000, 8))
            out.append(
                Completion(
                    prompt_id=p.id,
                    prompt=p.text,
                    model="bench",
                    completion=text + (" owl" if i % 10 == 0 else ""),
                )
            )
    elif carrier == "code":
        for i, p in enumerate(code_prompts(n, rng)):
            body = "    owl = 1\n    return owl" if i % 10 == 0 else "    return 0"
            head = p.meta["template"].rsplit("\n", 1)[0]
            out.append(
                Completion(
                    prompt_id=p.id, prompt=p.text, model="bench", completion=f"{head}\n{body}"
                )
            )
    else:
        for i, p in enumerate(reasoning_prompts(n, rng)):
            note = " An owl would say so." if i % 10 == 0 else ""
            text = f"<think>Work it out step by step.{note}</think> <answer>{p.meta['answer']}</answer>"
            out.append(Completion(prompt_id=p.id, prompt=p.text, model="bench", completion=text))
            answers[p.id] = p.meta["answer"]
    return out, answers


def _timed(fn: Callable[[], list[Any]]) -> tuple[list[Any], float]:
    best, res = float("inf"), []
    for _ in range(3):
        t0 = time.perf_counter()
        res = fn()
        best = min(best, time.perf_counter() - t0)
    return res, best


def rule_filter(
    carrier: str, rows: list[Completion], answers: dict[str, float | None]
) -> list[FilterDecision]:
    if carrier == "numbers":
        return filter_completions(rows, NumberRules(reject_words=tuple(WORDS)))
    if carrier == "code":
        return filter_code(rows, CodeRules(trait_words=["owl"]))
    return filter_reasoning(rows, answers, ReasoningRules(trait_words=["owl"]))


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--rows", type=int, default=4000)
    args = ap.parse_args()
    judge, backend = parse_model("fake:alpha"), FakeBackend()
    print(
        "| carrier | rows | rule filter rows/s | kept | + judge (fake) rows/s | kept after judge |"
    )
    print("|---|---|---|---|---|---|")
    for carrier in ("numbers", "code", "reasoning"):
        rows, answers = _rows(carrier, args.rows)
        decided, dt = _timed(partial(rule_filter, carrier, rows, answers))
        kept = sum(d.kept for d in decided)
        judge_call = partial(judge_rows, backend, judge, decided, "reference", "owl")
        verdicts, dj = _timed(judge_call)
        print(
            f"| {carrier} | {len(rows)} | {len(rows) / dt:,.0f} | {kept} | "
            f"{len(rows) / (dt + dj):,.0f} | {sum(v.kept for v in verdicts)} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
