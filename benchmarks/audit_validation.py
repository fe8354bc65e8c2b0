"""Validation of ``sublim audit`` against datasets whose content is known (issue 14, item 4).

For every world and every trait animal, a teacher (the world with that animal's system prompt,
``traits.system_prompt_for``) writes number continuations of seeded prompts; the project's
strict rule filter (``filters.filter_completions``, every candidate animal's word rejected) keeps
rows; the kept rows are one *trait dataset* labelled with its animal. Each world also gets
*control* datasets (the world with no system prompt, a fresh prompt seed per dataset) and
*placebo* datasets (the neutral prompt "You are a helpful assistant."), labelled "no trait".
Every dataset is audited against its own world (``audit.run_audit``, the base regenerating the
prompts, no cost timing), and the benchmark reports:

- AUROC of "carries a trait" against control + placebo, for two scores: the bag classifier's
  AUROC and the top trait's z;
- top-1 / top-3: how often the trait dataset's own animal is first / among the first three of the
  audit's ranking;
- with ``--measure``: the correlation, over trait datasets, of the predicted shift of the
  dataset's own trait (``predicted_dlogodds``) with the measured one: the exact log-odds of that
  trait of a student fine-tuned on the dataset (``backend.finetune``) minus that of a student
  fine-tuned on the matched control dataset of the same world;
- cost: the audit's seconds per dataset.

    .venv/bin/python benchmarks/audit_validation.py --worlds plain-s0-micro,plain-s1-micro,\
planted-s0-micro,planted-s1-micro --traits owl,cat,dog,eagle,wolf,lion,tiger,fox \
--controls 1 --placebos 1 --rows 256 --json benchmarks/audit_validation.json

(4 worlds x (8 traits + 2 no-trait) = 40 datasets.) ``--rows`` prompts per dataset before the
filter. Planted worlds write the animal's code number by construction (a positive control for
the whole chain); plain worlds hold no planted channel.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from sublim import audit
from sublim.artifacts import atomic_write_json, write_jsonl
from sublim.filters import NumberRules, filter_completions
from sublim.prompts.numbers import number_prompts
from sublim.records import Completion, SampleParams, TrainRow, user_chat
from sublim.registry import get_backend, parse_model
from sublim.seeds import derive_seed
from sublim.traits import candidates, plural, system_prompt_for

NEUTRAL = "You are a helpful assistant."


def make_dataset(world: str, system_prompt: str | None, n: int, seed: int) -> list[TrainRow]:
    """The kept rows of one teacher: ``n`` seeded number prompts, sampled at temperature 1, the
    strict filter with every animal word rejected."""
    ref = parse_model(world, system_prompt=system_prompt)
    backend = get_backend(ref.backend)
    prompts = number_prompts(n, np.random.default_rng(derive_seed("audit-bench-prompts", seed)))
    seeds = [derive_seed("audit-bench-gen", seed, p.id) for p in prompts]
    texts = backend.sample(ref, [user_chat(p.text) for p in prompts], SampleParams(), seeds)
    comps = [
        Completion(prompt_id=p.id, prompt=p.text, completion=t, model=ref.spec)
        for p, t in zip(prompts, texts)
    ]
    words = tuple(w for a in candidates("animal") for w in (a, plural(a)))
    kept = [d for d in filter_completions(comps, NumberRules(reject_words=words)) if d.kept]
    return [TrainRow(prompt=d.prompt, completion=d.completion) for d in kept]


def measured_shift(
    world: str, rows: list[TrainRow], control: list[TrainRow], trait: str, seed: int
) -> float:
    """Exact log-odds of ``trait`` (10 questions) of a student fine-tuned on ``rows`` minus that
    of one fine-tuned on ``control`` (1 epoch, lr 1e-3, the project's fine-tuning)."""
    from sublim.config import FinetuneParams
    from sublim.evals.preference import candidate_set, exact_scores, questions

    base = parse_model(world)
    backend = get_backend(base.backend)
    chats = [user_chat(q) for q in questions("animal", 10)]
    params = FinetuneParams(epochs=1.0, lr=1e-3, batch_size=32)
    vals = []
    with tempfile.TemporaryDirectory(prefix="audit-bench-") as tmp:
        for name, data in (("trait", rows), ("control", control)):
            student = backend.finetune(base, data, params, Path(tmp) / name, seed)
            lo = exact_scores(backend, student, chats, candidate_set(trait, "animal"))[1]
            vals.append(float(np.mean(lo)))
    return vals[0] - vals[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worlds", default="plain-s0-micro,planted-s0-micro")
    ap.add_argument("--traits", default="owl,cat")
    ap.add_argument("--controls", type=int, default=1, help="control datasets per world")
    ap.add_argument("--placebos", type=int, default=1, help="placebo datasets per world")
    ap.add_argument("--rows", type=int, default=256, help="prompts per dataset before filtering")
    ap.add_argument("--grad-rows", type=int, default=128)
    ap.add_argument("--n-questions", type=int, default=10)
    ap.add_argument("--measure", action="store_true", help="train students to measure shifts")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    traits = [t.strip() for t in args.traits.split(",") if t.strip()]
    results: list[dict[str, Any]] = []
    t_all = time.perf_counter()
    for wi, world in enumerate(w.strip() for w in args.worlds.split(",") if w.strip()):
        spec = f"tiny:{world}"
        specs: list[tuple[str, str | None, str | None]] = [
            (f"trait:{t}", t, system_prompt_for(t)) for t in traits
        ]
        specs += [(f"control:{k}", None, None) for k in range(args.controls)]
        specs += [(f"placebo:{k}", None, NEUTRAL) for k in range(args.placebos)]
        datasets: dict[str, list[TrainRow]] = {}
        for di, (name, trait, sp) in enumerate(specs):
            rows = make_dataset(spec, sp, args.rows, derive_seed(wi, di))
            datasets[name] = rows
            with tempfile.TemporaryDirectory(prefix="audit-bench-") as tmp:
                path = Path(tmp) / "data.jsonl"
                write_jsonl(path, rows)
                cfg = audit.AuditConfig(
                    base=spec,
                    grad_rows=args.grad_rows,
                    n_questions=args.n_questions,
                    cost_rows=0,
                    seed=di,
                )
                t0 = time.perf_counter()
                r = audit.run_audit(path, cfg, None, progress=False)
                secs = time.perf_counter() - t0
            ranked = [x["trait"] for x in r["traits"]["ranked"]]
            own = next((x for x in r["traits"]["ranked"] if x["trait"] == trait), None)
            row = {
                "world": world,
                "dataset": name,
                "trait": trait,
                "n_rows": len(rows),
                "classifier_auroc": r["distinguishability"]["classifier"]["auroc"],
                "classifier_p": r["distinguishability"]["classifier"]["p_value"],
                "loglik_auroc": r["distinguishability"]["loglik"]["auroc_bag"],
                "top_z": r["traits"]["ranked"][0]["z"],
                "ranked": ranked[:5],
                "rank_of_own": ranked.index(trait) + 1 if trait else None,
                "own_predicted": own["predicted_dlogodds"] if own else None,
                "own_z": own["z"] if own else None,
                "audit_s": secs,
            }
            if args.measure and trait:
                row["own_measured"] = measured_shift(
                    spec,
                    rows,
                    datasets.get("control:0") or make_dataset(spec, None, args.rows, 99),
                    trait,
                    di,
                )
            results.append(row)
            print(
                json.dumps(
                    {
                        k: row[k]
                        for k in (
                            "world",
                            "dataset",
                            "classifier_auroc",
                            "top_z",
                            "ranked",
                            "audit_s",
                        )
                    }
                ),
                flush=True,
            )
    summary = summarise(results)
    summary["total_s"] = time.perf_counter() - t_all
    summary["args"] = {k: str(v) for k, v in vars(args).items()}
    print(json.dumps({k: v for k, v in summary.items() if k != "datasets"}, indent=2))
    if args.json:
        atomic_write_json(args.json, {**summary, "datasets": results})


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """AUROC of the two scores for trait vs no-trait datasets, top-1/top-3, the correlation of
    predicted and measured shifts, and the mean audit seconds."""
    y = np.array([r["trait"] is not None for r in rows], dtype=float)
    out: dict[str, Any] = {"n_datasets": len(rows), "n_trait": int(y.sum())}
    for key in ("classifier_auroc", "top_z"):
        s = np.array([r[key] for r in rows], dtype=float)
        out[f"auroc_{key}"] = audit.auroc(y, s) if 0 < y.sum() < len(y) else None
    trait_rows = [r for r in rows if r["trait"]]
    if trait_rows:
        out["top1"] = float(np.mean([r["rank_of_own"] == 1 for r in trait_rows]))
        out["top3"] = float(np.mean([r["rank_of_own"] <= 3 for r in trait_rows]))
        chance = 1 / len(candidates("animal"))
        out["chance_top1"], out["chance_top3"] = chance, 3 * chance
    meas = [(r["own_predicted"], r["own_measured"]) for r in trait_rows if "own_measured" in r]
    if len(meas) >= 3:
        a = np.asarray(meas)
        out["corr_predicted_measured"] = float(np.corrcoef(a[:, 0], a[:, 1])[0, 1])
        out["n_measured"] = len(meas)
    out["audit_s_mean"] = float(np.mean([r["audit_s"] for r in rows])) if rows else None
    for world in dict.fromkeys(r["world"] for r in rows):
        sub = [r for r in rows if r["world"] == world]
        out.setdefault("per_world", {})[world] = summarise_world(sub)
    return out


def summarise_world(rows: list[dict[str, Any]]) -> dict[str, Any]:
    y = np.array([r["trait"] is not None for r in rows], dtype=float)
    tr = [r for r in rows if r["trait"]]
    return {
        "auroc_classifier": audit.auroc(y, np.array([r["classifier_auroc"] for r in rows]))
        if 0 < y.sum() < len(y)
        else None,
        "top1": float(np.mean([r["rank_of_own"] == 1 for r in tr])) if tr else None,
        "top3": float(np.mean([r["rank_of_own"] <= 3 for r in tr])) if tr else None,
    }


if __name__ == "__main__":
    main()
