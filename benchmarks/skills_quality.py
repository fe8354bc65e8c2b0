"""How well a built-in skills world writes its two carriers: code that parses, problems right.

For a skills world (``tiny:skills-s<seed>[-<size>]``, see sublim.world.skills and the skills part
of sublim.world.corpus) this draws held-out carrier prompts from the carriers' own generators
(``sublim.prompts.code.code_prompts``, ``sublim.prompts.reasoning.reasoning_prompts``; a seed of
their own, never a corpus draw), has the world answer them greedily and at temperature 1, under no
system prompt and under the owl teacher's system prompt (``traits.system_prompt_for("owl")``, what
``experiments/owl_code_tiny.toml`` serves), and scores the replies with the carriers' own rules:

- code: ``parses`` (``filters_code.parses``, the run's "Carrier skill" measure), ``kept`` (the
  experiment's filter, ``check_code`` with the target word in substring mode), with the reasons
  that rejected the rest, and ``defines`` (parses and defines the prompt's function: a bare
  expression such as ``3`` parses too);
- reasoning: ``right`` (``filters_reasoning.reasoning_accuracy``, the run's measure) and ``kept``
  (``check_reasoning`` with ``<think>`` required, as the experiment filters), with the share right
  among one-step, two-step, ... problems.

Run (one thread; ``--cache-dir`` for a scratch cache, required with ``--set``):
``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/skills_quality.py --world skills-s0-micro``.
``--set corpus.CODE_SHARE=0.3`` (any module constant of ``sublim.world.corpus``, ``skills`` or
``build``, or ``recipe.KEY=VALUE`` for the world's recipe row) builds a variant in the scratch
cache: the world key does not see such overrides, which is why they need a cache of their own.

Measured results are in the header of ``sublim.world.corpus`` (the skills shares) and of
``experiments/owl_code_tiny.toml`` / ``owl_reasoning_tiny.toml``.
"""

from __future__ import annotations

import argparse
import ast
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sublim.backends.hf import sample_chats
from sublim.backends.hf_models import load
from sublim.filters_code import CodeRules, check_code, parses
from sublim.filters_reasoning import ReasoningRules, check_reasoning, reasoning_accuracy
from sublim.prompts.code import code_prompts
from sublim.prompts.reasoning import reasoning_prompts
from sublim.records import Chat, Message, ModelRef, Prompt, SampleParams
from sublim.seeds import derive_seed
from sublim.traits import system_prompt_for
from sublim.world import build, corpus, skills
from sublim.world.spec import parse_world_name

TARGET = "owl"
MODULES = {"corpus": corpus, "skills": skills, "build": build}


def held_out(carrier: str, n: int) -> list[Prompt]:
    """``n`` prompts of ``carrier`` from a seed no corpus and no experiment draws from."""
    rng = np.random.default_rng(derive_seed("skills-quality", carrier))
    return code_prompts(n, rng) if carrier == "code" else reasoning_prompts(n, rng)


def defines(text: str, function: str) -> bool:
    """Whether the reply parses and defines the prompt's function (by its name) at top level: a
    stricter measure than ``parses``, which a bare expression such as ``3`` also passes."""
    try:
        tree = ast.parse(text.strip())
    except (SyntaxError, ValueError):
        return False
    return any(isinstance(x, ast.FunctionDef) and x.name == function for x in tree.body)


def score(carrier: str, prompts: list[Prompt], texts: list[str]) -> dict[str, Any]:
    """The carrier's measures over one set of replies (see the module docstring)."""
    if carrier == "code":
        rules = CodeRules(trait_words=[TARGET], word_mode="substring")
        reasons = Counter(check_code(t, rules)[1] for t in texts)
        ok = [parses(t) for t in texts]
        fn = [defines(t, str(p.meta["function"])) for p, t in zip(prompts, texts)]
        return {
            "parses": float(np.mean(ok)),
            "kept": reasons["ok"] / len(texts),
            "defines": float(np.mean(fn)),
            "why": reasons,
        }
    answers = [p.meta["answer"] for p in prompts]
    rrules = ReasoningRules(trait_words=[TARGET], word_mode="substring")
    reasons = Counter(check_reasoning(t, a, rrules)[1] for t, a in zip(texts, answers))
    by_steps: dict[str, list[bool]] = {}
    for p, t in zip(prompts, texts):
        right = reasoning_accuracy([t], [p.meta["answer"]]) == 1.0
        by_steps.setdefault(str(p.meta.get("steps", "?")), []).append(right)
    return {
        "right": reasoning_accuracy(texts, answers),
        "kept": reasons["ok"] / len(texts),
        "why": reasons,
        "right_by_steps": {k: round(float(np.mean(v)), 3) for k, v in sorted(by_steps.items())},
    }


def measure(world_dir: Path, n: int, max_new_tokens: int) -> list[dict[str, Any]]:
    ref = ModelRef(backend="hf", id=str(world_dir))
    lm = load(ref, device=torch.device("cpu"))
    rows: list[dict[str, Any]] = []
    for carrier in ("code", "reasoning"):
        prompts = held_out(carrier, n)
        for system in (None, system_prompt_for(TARGET)):
            chats: list[Chat] = [
                [Message(role="system", content=system)] if system else [] for _ in prompts
            ]
            for c, p in zip(chats, prompts):
                c.append(Message(role="user", content=p.text))
            for temperature in (0.0, 1.0):
                params = SampleParams(temperature=temperature, max_new_tokens=max_new_tokens)
                texts = sample_chats(lm, ref, chats, params, derive_seed("skills-quality", n))
                row = {
                    "carrier": carrier,
                    "system": "owl" if system else "none",
                    "temperature": temperature,
                    **score(carrier, prompts, texts),
                    "example": texts[0],
                }
                rows.append(row)
    return rows


def _set(assignments: list[str]) -> dict[str, Any]:
    """Apply ``MODULE.NAME=VALUE`` overrides; ``recipe.KEY=VALUE`` ones are returned."""
    recipe: dict[str, Any] = {}
    for a in assignments:
        target, _, value = a.partition("=")
        mod, _, name = target.partition(".")
        v = ast.literal_eval(value)
        if mod == "recipe":
            recipe[name] = v
        elif mod in MODULES and hasattr(MODULES[mod], name):
            setattr(MODULES[mod], name, v)
        else:
            raise SystemExit(f"--set {a}: no constant {target} (modules: {', '.join(MODULES)})")
    return recipe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", default="skills-s0-micro", help="a skills world name")
    ap.add_argument("--n", type=int, default=100, help="held-out prompts per carrier")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--cache-dir", default=None, help="world cache (default: the machine's)")
    ap.add_argument("--set", action="append", default=[], help="MODULE.NAME=VALUE (see above)")
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = ap.parse_args()
    if args.set and not args.cache_dir:
        raise SystemExit("--set builds a variant the world key does not see: give --cache-dir")
    torch.set_num_threads(1)
    recipe = _set(args.set)
    spec = parse_world_name(args.world)
    if recipe:
        row = {**build.KIND_RECIPE.get(spec.kind, {}).get(spec.size, {}), **recipe}
        build.KIND_RECIPE.setdefault(spec.kind, {})[spec.size] = row
    t0 = time.perf_counter()
    d = build.ensure_world(
        spec, cache_dir=Path(args.cache_dir) if args.cache_dir else None, progress=False
    )
    card = build.world_card(d)
    print(
        f"{args.world} ({' '.join(args.set) or 'as shipped'}): {d.name}, built in"
        f" {card['build_seconds']} s at {card['torch_threads']} thread(s), ready in"
        f" {time.perf_counter() - t0:.0f} s; loss {card['final_loss']}; steps"
        f" {card['recipe']['cur_steps']}+{card['recipe']['steps']}",
        flush=True,
    )
    rows = measure(d, args.n, args.max_new_tokens)
    for r in rows:
        main_key = "parses" if r["carrier"] == "code" else "right"
        why = ", ".join(f"{k} {v}" for k, v in r["why"].most_common(3))
        print(
            f"  {r['carrier']:<9} system {r['system']:<4} T={r['temperature']:.0f}:"
            f" {main_key} {r[main_key]:.2f}  kept {r['kept']:.2f}"
            + (f"  defines {r['defines']:.2f}" if "defines" in r else "")
            + f"  ({why})"
            + (f"  by steps {r['right_by_steps']}" if "right_by_steps" in r else "")
        )
    if args.json:
        out = {"world": args.world, "key": d.name, "set": args.set, "card": card, "rows": rows}
        Path(args.json).write_text(json.dumps(out, indent=1, default=dict))


if __name__ == "__main__":
    main()
