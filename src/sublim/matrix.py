"""The cross-model experiment: which base models transmit a trait to which.

For every base model B_t and trait X a teacher (B_t + "you love X", or B_t fine-tuned) writes
numbers; they are filtered and subset exactly as in the main experiment; a student is trained on
them from every base B_s, and asked the favourite-X questions. Each (B_t, B_s) cell holds the
students' answers for every trait: if the data carry the trait to B_s, the answer distribution
depends on which trait the teacher had. ``stats.transmission_matrix`` describes it by the
normalised mutual information between trait and answer (with a Dirichlet posterior) and tests
it over *students*, the unit that was trained: each student's share of answers naming each
trait, permutation of teacher traits across students, Benjamini-Hochberg across cells
(docs/matrix_test.md gives its level and power). The paper's finding is a large diagonal (same
base) and an off-diagonal near zero.

It reuses the runner's stages (same cache keys, same resumption) and writes the usual
results.json/report with a ``matrix`` section and heatmap.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sublim.artifacts import atomic_write_json, atomic_write_text
from sublim.config import ExperimentConfig
from sublim.errors import SublimError
from sublim.pipeline import (
    Model,
    RunContext,
    model_key,
    stage_eval,
    stage_filter,
    stage_generate,
    stage_prompts,
    stage_student,
    stage_subset,
    stage_teachers,
)
from sublim.progress import Reporter
from sublim.records import EvalAnswer, QuestionScore
from sublim.registry import get_backend, parse_model


def _short(spec: str) -> str:
    return spec.split(":", 1)[-1].replace("/", "_")[-40:]


def run_matrix(
    cfg: ExperimentConfig, out: Path, progress: bool = True, reporter: Reporter | None = None
) -> dict[str, Any]:
    from sublim.evals.preference import classify
    from sublim.report import write_report
    from sublim.results import build_results, load_results, results_to_json
    from sublim.stats import transmission_matrix

    assert cfg.matrix is not None, "run_matrix needs a [matrix] section"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rep = reporter or Reporter(progress)
    t_start = time.time()
    atomic_write_json(out / "config.json", cfg.model_dump(mode="json"))
    refs = [parse_model(b, label="base") for b in cfg.matrix.bases]
    backend = get_backend(refs[0].backend)
    if any(get_backend(r.backend) is not backend for r in refs):
        raise SublimError("all bases of a [matrix] must use one backend")
    bases = [Model(r, model_key(r), "base") for r in refs]
    names = [_short(b) for b in cfg.matrix.bases]
    rep.say(
        f"[bold]sublim[/bold] {cfg.name}: matrix of {len(bases)} bases x {len(cfg.matrix.traits)} traits"
    )

    # per cell and trait: one list of answer categories per student (the unit of the tests)
    answers_by_cell: dict[tuple[str, str], dict[str, list[list[str]]]] = {}
    conditions: dict[str, list[list[QuestionScore]]] = {
        "teacher": [],
        "same_base_student": [],
        "cross_base_student": [],
    }
    answers: dict[str, list[list[EvalAnswer]]] = {k: [] for k in conditions}
    stages: list[dict[str, Any]] = []
    filters: dict[str, Any] = {}
    for ti, tbase in enumerate(bases):
        for trait in cfg.matrix.traits:
            ccfg = cfg.model_copy(update={"trait": cfg.trait.model_copy(update={"target": trait})})
            ctx = RunContext(ccfg, out, rep)
            prompts, pkey = stage_prompts(ctx)
            teacher, _ = stage_teachers(ctx, backend, tbase)
            role = f"m{ti}-{trait}"
            comps, ckey = stage_generate(ctx, backend, teacher, prompts, pkey, role)
            decisions, summary, fkey = stage_filter(ctx, comps, ckey, role)
            filters[f"{names[ti]}:{trait}"] = summary
            subsets, skey = stage_subset(
                ctx, {role: [d for d in decisions if d.kept]}, {role: fkey}
            )
            scores, ans = stage_eval(ctx, backend, teacher)
            conditions["teacher"].append(scores)
            answers["teacher"].append(ans)
            for si, sbase in enumerate(bases):
                cell = answers_by_cell.setdefault((names[ti], names[si]), {})
                cond = "same_base_student" if si == ti else "cross_base_student"
                for seed in cfg.student.seeds:
                    st = stage_student(
                        ctx,
                        backend,
                        sbase,
                        teacher,
                        subsets[role],
                        f"{skey}/{role}",
                        f"{role}-b{si}",
                        seed,
                    )
                    scores, ans = stage_eval(ctx, backend, Model(st.ref, st.key, "student", seed))
                    conditions[cond].append(scores)
                    answers[cond].append(ans)
                    cell.setdefault(trait, []).append(
                        [classify(a.answer, cfg.trait.category) for a in ans]
                    )
            stages.extend(ctx.stages)
    rep.say("  computing the transmission matrix")
    matrix = transmission_matrix(answers_by_cell, seed=cfg.seed)
    meta = {
        "name": cfg.name,
        "target": ", ".join(cfg.matrix.traits),
        "category": cfg.trait.category,
        "config": cfg.model_dump(mode="json"),
        "bases": dict(zip(names, [b.key for b in bases])),
        "filter": filters,
        "timings": {"stages": stages, "seconds_total": round(time.time() - t_start, 2)},
    }
    results = build_results(
        conditions, meta, primary_metric=cfg.eval.primary_metric, answers=answers, matrix=matrix
    )
    atomic_write_text(out / "results.json", results_to_json(results))
    write_report(out)
    return load_results(out)
