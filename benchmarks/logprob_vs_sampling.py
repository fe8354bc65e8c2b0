"""Exact log-probability metric vs sampled rate: agreement across models and cost.

Run: ``.venv/bin/python benchmarks/logprob_vs_sampling.py [--model tiny:plain-s0] [--samples 100]``
(results in ``benchmarks/logprob_vs_sampling.md``; ``--json PATH`` writes the raw numbers).

Models: the reference model, the same model with a "you love X" system prompt for several X
(``--variants`` wordings each) and one with an indirect nudge ("Today you saw an owl"). For each model and each candidate of the
category: the sampled rate (``--samples`` answers per question at temperature 1, the paper's 100
by default) and the exact probability P(reply is one of the candidate's surface forms), both
averaged over the suite's favourite-animal questions. Reported:

- Pearson r between the two across (model, candidate) pairs and across models for each model's
  loved target;
- the contrast "model loving X minus the reference model" on P(X) / rate(X), paired over
  questions, with its 95% interval for each metric;
- the cost of each metric in model forward calls and token positions processed (counted by a
  forward pre-hook on the model from the ``input_ids`` it is given: padding included, a cached
  decoding step counts one position per row; positions read back from a KV cache are not
  processed again and are not counted), for the exact metric of the target alone (what the
  contrast needs) and for all candidates (what the log-odds needs). The HF backend's scorer
  encodes each distinct prompt once and then only the reply tokens, so its count is the prompt
  positions once plus the reply positions; ``per_pair_positions`` also gives, from the same
  token ids, what a scorer encoding every (prompt, reply) pair as its own sequence would process
  (unpadded, so a lower bound on such a scorer's count).

One thread (``torch.set_num_threads(1)``), offline. The world must be in the cache (it is built
on first use, which takes a few minutes once per machine).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch
from scipy import stats as sps

from sublim import chat_format
from sublim.config import EvalConfig
from sublim.evals.preference import (
    _distinct_columns,
    _logsumexp,
    classify,
    questions,
    sample_answers,
    surface_forms,
)
from sublim.records import ModelRef, user_chat
from sublim.registry import get_backend, parse_model
from sublim.stats import paired_contrast
from sublim.traits import candidates, system_prompt_for


class Counter:
    """Counts forward calls and token positions of every model it is attached to."""

    def __init__(self) -> None:
        self.calls = 0
        self.positions = 0
        self._hooked: set[int] = set()

    def attach(self, module: torch.nn.Module) -> None:
        if id(module) in self._hooked:
            return
        self._hooked.add(id(module))

        def pre(mod: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is None:
                ids = kwargs.get("inputs_embeds")
            self.calls += 1
            self.positions += int(ids.shape[0] * ids.shape[1])

        module.register_forward_pre_hook(pre, with_kwargs=True)

    def snapshot(self) -> tuple[int, int]:
        return self.calls, self.positions


def attach(counter: Counter, ref: ModelRef) -> None:
    if ref.backend in ("tiny", "hf", "smollm2"):
        from sublim.backends.hf import get_loaded

        counter.attach(get_loaded(ref).model)


def exact_masses(backend, ref: ModelRef, chats, cands) -> np.ndarray:
    """(n_questions, n_candidates) log P(reply is one of the candidate's surface forms)."""
    forms = [surface_forms(c) for c in cands]
    flat_c, flat_t = [], []
    for ch in chats:
        for fs in forms:
            flat_c += [ch] * len(fs)
            flat_t += list(fs)
    lps = np.asarray(backend.score(ref, flat_c, flat_t, include_end=True)).reshape(len(chats), -1)
    out, s = np.empty((len(chats), len(cands))), 0
    for j, fs in enumerate(forms):
        block = lps[:, s : s + len(fs)]
        s += len(fs)
        out[:, j] = _logsumexp(block[:, _distinct_columns(block, fs)], axis=1)
    return out


def per_pair_positions(ref: ModelRef, chats, cands) -> int | None:
    """Token positions of scoring each (question, surface form) as its own sequence, unpadded:
    what exact_masses would cost if the scorer did not share the prompt's encoding."""
    if ref.backend not in ("tiny", "hf", "smollm2"):
        return None
    from sublim.backends.hf import get_loaded

    tok = get_loaded(ref).tokenizer
    replies = [chat_format.encode_reply(tok, f, True) for c in cands for f in surface_forms(c)]
    prompts = [chat_format.encode_prompt(tok, ref.apply(ch)) for ch in chats]
    return sum(len(p) + len(r) for p in prompts for r in replies if r)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny:plain-s0")
    ap.add_argument(
        "--samples", type=int, default=100, help="sampled answers per question (paper: 100)"
    )
    ap.add_argument(
        "--loved", default="owl,cat,wolf,eagle", help="targets of the system-prompt models"
    )
    ap.add_argument(
        "--variants", default="0", help="system-prompt wordings (sublim.traits) per target"
    )
    ap.add_argument("--json", default=None, help="also write the raw numbers here")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t_start = time.time()

    base = parse_model(args.model, label="base")
    backend = get_backend(base.backend)
    cands = list(candidates("animal"))
    qs = questions("animal")
    chats = [user_chat(q) for q in qs]
    models: list[tuple[str, str | None, ModelRef]] = [("base", None, base)]
    for x in args.loved.split(","):
        for v in (int(s) for s in args.variants.split(",")):
            models.append(
                (f"loves {x} (v{v})", x, base.with_system(system_prompt_for(x, "animal", v)))
            )
    # a weak, indirect nudge: a small effect, where the two metrics' intervals matter most
    models.append(("saw an owl", "owl", base.with_system("Today you saw an owl in the park.")))

    counter = Counter()
    cfg = EvalConfig(
        samples_per_question=args.samples, temperature=1.0, max_new_tokens=6, batch_size=256
    )
    rows = []
    cost = {"sample": [0, 0, 0.0], "exact_all": [0, 0, 0.0], "exact_target": [0, 0, 0.0]}
    per_pair: dict[str, int | None] = {"exact_all": 0, "exact_target": 0}
    for label, loved, ref in models:
        attach(counter, ref)
        c0, t0 = counter.snapshot(), time.perf_counter()
        texts = sample_answers(backend, ref, qs, args.samples, cfg, args.seed)
        c1, t1 = counter.snapshot(), time.perf_counter()
        mass = exact_masses(backend, ref, chats, cands)
        c2, t2 = counter.snapshot(), time.perf_counter()
        # the exact metric for one target only (what a trait contrast needs): its surface forms
        exact_masses(backend, ref, chats, [loved or "owl"])
        c3, t3 = counter.snapshot(), time.perf_counter()
        for key, cs in (("exact_all", cands), ("exact_target", [loved or "owl"])):
            n_pp, acc = per_pair_positions(ref, chats, cs), per_pair[key]
            per_pair[key] = None if n_pp is None or acc is None else acc + n_pp
        for key, a, b, ta, tb in (
            ("sample", c0, c1, t0, t1),
            ("exact_all", c1, c2, t1, t2),
            ("exact_target", c2, c3, t2, t3),
        ):
            cost[key][0] += b[0] - a[0]
            cost[key][1] += b[1] - a[1]
            cost[key][2] += tb - ta
        rate = np.zeros((len(qs), len(cands)))
        for qi, _, text in texts:
            c = classify(text, "animal", cands)
            if c in cands:
                rate[qi, cands.index(c)] += 1
        rate /= args.samples
        rows.append({"label": label, "loved": loved, "p": np.exp(mass), "rate": rate})
        print(
            f"{label:18s} P(owl)={np.exp(mass[:, 0]).mean():.3f} rate(owl)={rate[:, 0].mean():.3f} "
            f"[{time.time() - t_start:.0f}s]",
            file=sys.stderr,
        )

    # agreement across (model, candidate) pairs and across models for the loved target
    P = np.array([r["p"].mean(axis=0) for r in rows]).ravel()
    R = np.array([r["rate"].mean(axis=0) for r in rows]).ravel()
    r_pairs = float(np.corrcoef(P, R)[0, 1])
    lp = [r["p"][:, cands.index(r["loved"])].mean() for r in rows[1:]]
    lr = [r["rate"][:, cands.index(r["loved"])].mean() for r in rows[1:]]
    r_loved = float(np.corrcoef(lp, lr)[0, 1])
    per_q = float(
        np.corrcoef(
            np.concatenate([r["p"].ravel() for r in rows]),
            np.concatenate([r["rate"].ravel() for r in rows]),
        )[0, 1]
    )

    contrasts = []
    b0 = rows[0]
    for r in rows[1:]:
        j = cands.index(r["loved"])
        ce = paired_contrast(r["p"][:, j], b0["p"][:, j])
        cs = paired_contrast(r["rate"][:, j], b0["rate"][:, j])
        # Samples per question at which the sampled interval would be within 10% of the exact
        # one: the sampled per-question difference = exact difference + binomial noise of
        # variance ~ [r1(1 - r1) + r0(1 - r0)] / k (both models sampled independently), so
        # hw_s(k')^2 = hw_e^2 + t^2 * B * k / (k' * n_q), solved for hw_s = 1.1 hw_e.
        k = args.samples
        binom = (
            float(
                np.mean(
                    r["rate"][:, j] * (1 - r["rate"][:, j])
                    + b0["rate"][:, j] * (1 - b0["rate"][:, j])
                )
            )
            / k
        )
        hw_e = (ce["ci95"][1] - ce["ci95"][0]) / 2
        tq = float(sps.t.ppf(0.975, len(qs) - 1))
        k_eq = math.ceil(tq**2 * binom * k / (len(qs) * 0.21 * hw_e**2)) if hw_e > 0 else None
        contrasts.append(
            {
                "model": r["label"],
                "samples_per_question_for_equal_interval": k_eq,
                "exact": {"mean": ce["mean"], "ci95": ce["ci95"], "p": ce["p_value"]},
                "sampled": {"mean": cs["mean"], "ci95": cs["ci95"], "p": cs["p_value"]},
            }
        )
    n_models = len(rows)

    def ratio(a: float, b: float) -> float | None:
        return a / b if b else None  # the fake backend has no forward passes to count

    per_model = {
        k: {
            "forward_calls": v[0] / n_models,
            "token_positions": v[1] / n_models,
            "seconds": v[2] / n_models,
        }
        for k, v in cost.items()
    }
    for k, v in per_pair.items():
        per_model[k]["token_positions_if_per_pair"] = None if v is None else v / n_models
    out = {
        "model": args.model,
        "samples_per_question": args.samples,
        "n_questions": len(qs),
        "n_models": n_models,
        "pearson_r": {
            "model_x_candidate": r_pairs,
            "loved_target_across_models": r_loved,
            "per_question": per_q,
        },
        "cost_per_model": per_model,
        "cost_ratio_sampling_over_exact_target": {
            "token_positions": ratio(
                per_model["sample"]["token_positions"], per_model["exact_target"]["token_positions"]
            ),
            "forward_calls": ratio(
                per_model["sample"]["forward_calls"], per_model["exact_target"]["forward_calls"]
            ),
            "seconds": ratio(per_model["sample"]["seconds"], per_model["exact_target"]["seconds"]),
        },
        "cost_ratio_sampling_over_exact_all": {
            "token_positions": ratio(
                per_model["sample"]["token_positions"], per_model["exact_all"]["token_positions"]
            ),
            "forward_calls": ratio(
                per_model["sample"]["forward_calls"], per_model["exact_all"]["forward_calls"]
            ),
            "seconds": ratio(per_model["sample"]["seconds"], per_model["exact_all"]["seconds"]),
        },
        "contrasts": contrasts,
        "cost_ratio_at_equal_interval": {
            c["model"]: ratio(
                per_model["sample"]["token_positions"]
                * c["samples_per_question_for_equal_interval"]
                / args.samples,
                per_model["exact_target"]["token_positions"],
            )
            for c in contrasts
            if c["samples_per_question_for_equal_interval"]
        },
        # the same, had the exact metric encoded every (prompt, reply) pair as its own sequence
        "cost_ratio_at_equal_interval_if_per_pair": {
            c["model"]: ratio(
                per_model["sample"]["token_positions"]
                * c["samples_per_question_for_equal_interval"]
                / args.samples,
                per_model["exact_target"]["token_positions_if_per_pair"] or 0.0,
            )
            for c in contrasts
            if c["samples_per_question_for_equal_interval"]
        },
        "seconds_total": time.time() - t_start,
    }
    text = json.dumps(out, indent=2, default=float)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
