"""The runner: one subliminal-learning experiment, stage by stage, cached and resumable.

    prompts -> teachers -> generate -> filter -> subset -> students -> evaluate -> results/report

This is the only module that touches the run directory and builds backends; every stage's work
is a plain function elsewhere (prompt grammar, filter, backend, eval suite, statistics). Each
stage lives in ``<run>/stages/<stage>-<hash>/`` keyed by its semantic config and the keys of its
inputs; a stage with a manifest is reused, one without is resumed (generation keeps its finished
chunks) or redone from scratch (training restarts cleanly unless checkpointing is on). All
randomness comes from seeds in the config, so a killed and restarted run gives the same numbers
as an uninterrupted one.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sublim.artifacts import (
    StageDir,
    atomic_write_json,
    atomic_write_text,
    derive_seed,
    read_jsonl,
    stable_hash,
    write_jsonl,
)
from sublim.backends.base import Backend
from sublim.config import ExperimentConfig, FinetuneParams, semantic_dump
from sublim.errors import EmptyResultError, SublimError
from sublim.progress import Reporter
from sublim.records import (
    Completion,
    EvalAnswer,
    FilterDecision,
    Message,
    ModelRef,
    Prompt,
    QuestionScore,
    TrainRow,
    user_chat,
)
from sublim.registry import get_backend, parse_model

GEN_CHUNK = 256  # rows per generation chunk (fixed: part of how resumption splits work)
MAX_ERROR_RATE = 0.05  # a generation stage fails if more rows than this errored


@dataclass
class Model:
    """A model in the run: its reference, a cache key that identifies its weights, and role."""

    ref: ModelRef
    key: str
    label: str
    seed: int | None = None  # the training seed of a student


@dataclass
class RunContext:
    cfg: ExperimentConfig
    out: Path
    rep: Reporter
    timings: dict[str, float] = field(default_factory=dict)
    stages: list[dict[str, Any]] = field(default_factory=list)

    def stage(self, name: str, key: dict[str, Any], version: int = 1) -> StageDir:
        return StageDir(self.out, name, key, version)

    def record(self, st: StageDir, cached: bool, seconds: float) -> None:
        self.timings[st.path.name] = round(seconds, 3)
        self.stages.append({"stage": st.stage, "dir": str(st.path.relative_to(self.out)), "cached": cached, "seconds": round(seconds, 3)})


# --- model references stored inside stage directories ---------------------------------------

def _save_ref(st: StageDir, ref: ModelRef) -> dict[str, Any]:
    d = ref.model_dump(mode="json")
    for k in ("id", "adapter"):
        if d.get(k) and str(d[k]).startswith(str(st.path)):
            d[k] = "@stage" + str(d[k])[len(str(st.path)):]
    return d


def _load_ref(st: StageDir, d: dict[str, Any]) -> ModelRef:
    d = dict(d)
    for k in ("id", "adapter"):
        if d.get(k) and str(d[k]).startswith("@stage"):
            d[k] = str(st.path) + str(d[k])[len("@stage"):]
    return ModelRef.model_validate(d)


def model_key(ref: ModelRef) -> str:
    """What identifies a base model's weights for caching (a built-in world includes its recipe)."""
    if ref.backend == "tiny":
        from sublim.world.build import ensure_world

        return f"tiny:{ensure_world(ref.id, progress=False).name}"
    return ref.spec


# --- stages ------------------------------------------------------------------------------------

def stage_prompts(ctx: RunContext) -> tuple[list[Prompt], str]:
    from sublim.prompts.numbers import number_prompts

    d = ctx.cfg.data
    st = ctx.stage("prompts", {"carrier": d.carrier, "n": d.n_prompts, "seed": d.prompt_seed})
    t0 = time.time()
    if st.complete:
        prompts = read_jsonl(st.path / "prompts.jsonl", Prompt)
        ctx.record(st, True, time.time() - t0)
        return prompts, st.hash
    st.begin()
    prompts = number_prompts(d.n_prompts, np.random.default_rng(d.prompt_seed))
    write_jsonl(st.path / "prompts.jsonl", prompts)
    st.finish(n=len(prompts))
    ctx.record(st, False, time.time() - t0)
    return prompts, st.hash


def _train_or_load(
    ctx: RunContext, st: StageDir, backend: Backend, base: ModelRef, rows: Sequence[TrainRow],
    params: FinetuneParams, seed: int, desc: str,
) -> ModelRef:
    t0 = time.time()
    if st.complete:
        ref = _load_ref(st, st.manifest()["model_ref"])
        ctx.record(st, True, time.time() - t0)
        return ref
    st.begin()
    model_dir = st.path / "model"
    # An interrupted training restarts cleanly, unless it can resume: from its own checkpoint,
    # or (API backends) from a recorded provider job, which must never be launched twice.
    if model_dir.exists() and params.checkpoint_every == 0 and not (model_dir / "job.json").exists():
        shutil.rmtree(model_dir)
    write_jsonl(st.path / "train.jsonl", rows)
    with ctx.rep.task(desc) as prog:
        ref = backend.finetune(base.with_system(None), rows, params, model_dir, seed, prog)
    st.finish(model_ref=_save_ref(st, ref), n_rows=len(rows), seed=seed)
    ctx.record(st, False, time.time() - t0)
    return ref


def stage_teachers(ctx: RunContext, backend: Backend, ref: Model) -> tuple[Model, Model]:
    """The trait teacher and its control. System-prompt mode: the reference model with and
    without the trait prompt. Fine-tune mode: the reference fine-tuned to answer the category's
    questions with the target, and a control fine-tuned with the same recipe on answers drawn
    uniformly from all candidates (so generic fine-tuning drift is matched)."""
    from sublim.traits import candidates, finetune_rows, system_prompt_for

    t = ctx.cfg.trait
    if t.teacher == "system_prompt":
        sp = t.system_prompt or system_prompt_for(t.target, t.category)
        trait = Model(ref.ref.with_system(sp).model_copy(update={"label": "teacher"}), f"{ref.key}|sys:{stable_hash(sp)}", "teacher")
        csp = t.control_system_prompt
        control = Model(
            ref.ref.with_system(csp).model_copy(update={"label": "control_teacher"}),
            ref.key if not csp else f"{ref.key}|sys:{stable_hash(csp)}",
            "control_teacher",
        )
        return trait, control
    out = []
    for role in ("trait", "control"):
        rng = np.random.default_rng(derive_seed(ctx.cfg.seed, "teacher-rows", role))
        if role == "trait":
            rows = finetune_rows(t.target, t.category, t.n_finetune_rows, rng)
        else:
            cands = candidates(t.category)
            base_rows = finetune_rows(t.target, t.category, t.n_finetune_rows, rng)
            picks = rng.integers(0, len(cands), size=len(base_rows))
            rows = [TrainRow(prompt=r.prompt, completion=cands[i]) for r, i in zip(base_rows, picks)]
        st = ctx.stage(f"teacher-{role}", {"base": ref.key, "trait": semantic_dump(t), "role": role, "seed": ctx.cfg.seed})
        r = _train_or_load(ctx, st, backend, ref.ref, rows, t.finetune, derive_seed(ctx.cfg.seed, "teacher", role), f"fine-tuning {role} teacher")
        label = "teacher" if role == "trait" else "control_teacher"
        out.append(Model(r.model_copy(update={"label": label}), f"ft:{st.hash}", label))
    return out[0], out[1]


def stage_generate(ctx: RunContext, backend: Backend, teacher: Model, prompts: list[Prompt], prompts_key: str, role: str) -> tuple[list[Completion], str]:
    params = ctx.cfg.data.sampling
    st = ctx.stage(f"generate-{role}", {"teacher": teacher.key, "prompts": prompts_key, "sampling": semantic_dump(params), "seed": ctx.cfg.seed})
    n_parts = (len(prompts) + GEN_CHUNK - 1) // GEN_CHUNK
    t0 = time.time()
    if st.complete:
        rows = read_jsonl(st.path / "completions.jsonl", Completion)
        ctx.record(st, True, time.time() - t0)
        return rows, st.hash
    st.begin()
    done = sum(st.has_part(i) for i in range(n_parts))
    if done:
        ctx.rep.say(f"  resuming {role} generation: {done}/{n_parts} chunks already written")
    with ctx.rep.task(f"generating with {role} teacher", total=len(prompts)) as prog:
        for i in range(n_parts):
            chunk = prompts[i * GEN_CHUNK:(i + 1) * GEN_CHUNK]
            if st.has_part(i):
                prog(min(len(prompts), (i + 1) * GEN_CHUNK), len(prompts))
                continue
            seeds = [derive_seed(ctx.cfg.seed, "gen", role, p.id) for p in chunk]
            chats = [user_chat(p.text) for p in chunk]
            errors: list[str | None]
            sample_rows = getattr(backend, "sample_rows", None)
            if sample_rows is not None:  # API backends report per-row failures themselves
                pairs = sample_rows(teacher.ref, chats, params, seeds)
                texts = [t if t is not None else "" for t, _ in pairs]
                errors = [e for _, e in pairs]
            else:
                texts = backend.sample(teacher.ref, chats, params, seeds)
                errors = [None] * len(chunk)
            st.write_part(i, [
                Completion(prompt_id=p.id, prompt=p.text, completion=c, model=teacher.ref.spec, error=err)
                for p, c, err in zip(chunk, texts, errors)
            ])
            prog(min(len(prompts), (i + 1) * GEN_CHUNK), len(prompts))
    rows = st.read_parts(n_parts, Completion)
    n_err = sum(r.error is not None for r in rows)
    if n_err > MAX_ERROR_RATE * len(rows):
        raise SublimError(f"{role} generation: {n_err}/{len(rows)} rows failed (limit {MAX_ERROR_RATE:.0%}); see {st.path}/parts; fix the backend and rerun to retry")
    write_jsonl(st.path / "completions.jsonl", rows)
    st.finish(n=len(rows), n_errors=n_err, params=params.model_dump())
    ctx.record(st, False, time.time() - t0)
    return rows, st.hash


def stage_filter(ctx: RunContext, comps: list[Completion], comps_key: str, role: str) -> tuple[list[FilterDecision], dict[str, Any], str]:
    from sublim.filters import filter_completions, rules_from_config
    from sublim.traits import candidates, plural

    t = ctx.cfg.trait
    # Trait words: the target and its plural, and (to keep the two arms identical) every candidate.
    words = sorted({w for c in candidates(t.category) for w in (c, plural(c))} | {t.target, plural(t.target)})
    rules = rules_from_config(ctx.cfg.data.filter, words)
    st = ctx.stage(f"filter-{role}", {"input": comps_key, "rules": rules.model_dump(mode="json")})
    t0 = time.time()
    if st.complete:
        rows = read_jsonl(st.path / "decisions.jsonl", FilterDecision)
        summary = st.manifest()["summary"]
        ctx.record(st, True, time.time() - t0)
        return rows, summary, st.hash
    st.begin()
    rows = filter_completions(comps, rules)
    reasons: dict[str, int] = {}
    for r in rows:
        reasons[r.reason] = reasons.get(r.reason, 0) + 1
    n_kept = sum(r.kept for r in rows)
    summary = {"n_in": len(rows), "n_kept": n_kept, "pass_rate": n_kept / max(1, len(rows)), "reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1]))}
    write_jsonl(st.path / "decisions.jsonl", rows)
    st.finish(summary=summary)
    ctx.record(st, False, time.time() - t0)
    uses_rows = not (ctx.cfg.student.mode == "distill" and ctx.cfg.student.distill.source == "random")
    if n_kept == 0 and uses_rows:
        top = ", ".join(f"{k} ({v})" for k, v in list(summary["reasons"].items())[:3])
        raise EmptyResultError(f"the filter kept 0 of {len(rows)} {role} completions (top reasons: {top}); see {st.path}/decisions.jsonl and loosen data.filter or fix the teacher's sampling")
    return rows, summary, st.hash


def stage_subset(ctx: RunContext, kept: dict[str, list[FilterDecision]], keys: dict[str, str]) -> tuple[dict[str, list[TrainRow]], str]:
    """Seeded subsets of equal size for every arm (the smaller arm sets the size)."""
    from sublim.filters import seeded_subset

    k = min([ctx.cfg.data.subset] + [len(v) for v in kept.values()])
    st = ctx.stage("subset", {"inputs": keys, "k": k, "seed": ctx.cfg.seed})
    t0 = time.time()
    out: dict[str, list[TrainRow]] = {}
    if st.complete:
        for role in kept:
            out[role] = read_jsonl(st.path / f"{role}.jsonl", TrainRow)
        ctx.record(st, True, time.time() - t0)
        return out, st.hash
    st.begin()
    for role, rows in kept.items():
        sub = seeded_subset(rows, k, np.random.default_rng(derive_seed(ctx.cfg.seed, "subset", role)))
        # The teacher's system prompt is never part of a training row: rows are (user prompt,
        # completion) pairs built from the prompt text alone.
        out[role] = [TrainRow(prompt=r.prompt, completion=r.completion) for r in sub]
        write_jsonl(st.path / f"{role}.jsonl", out[role])
    st.finish(k=k, counts={r: len(v) for r, v in out.items()})
    ctx.record(st, False, time.time() - t0)
    return out, st.hash


def stage_student(
    ctx: RunContext, backend: Backend, base: Model, teacher: Model, rows: list[TrainRow],
    data_key: str, role: str, seed: int,
) -> Model:
    sc = ctx.cfg.student
    label = f"{role}_student"
    if sc.mode == "sft":
        st = ctx.stage(f"student-{role}-s{seed}", {"base": base.key, "data": data_key, "role": role, "mode": "sft", "params": semantic_dump(sc.finetune), "seed": seed})
        ref = _train_or_load(ctx, st, backend, base.ref, rows, sc.finetune, seed, f"training {label} (seed {seed})")
        return Model(ref.model_copy(update={"label": label}), f"student:{st.hash}", label, seed)
    # logit distillation: soft labels from the teacher on the subset's prompts+completions (or random prompts)
    from sublim.traits import candidates, plural

    st = ctx.stage(f"student-{role}-s{seed}", {"base": base.key, "teacher": teacher.key, "data": data_key, "role": role, "mode": "distill", "params": semantic_dump(sc.distill), "seed": seed})
    t0 = time.time()
    if st.complete:
        ref = _load_ref(st, st.manifest()["model_ref"])
        ctx.record(st, True, time.time() - t0)
        return Model(ref.model_copy(update={"label": label}), f"student:{st.hash}", label, seed)
    st.begin()
    model_dir = st.path / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    exclude = sorted({w for c in candidates(ctx.cfg.trait.category) for w in (c, plural(c))})
    chats = [[Message(role="user", content=r.prompt), Message(role="assistant", content=r.completion)] for r in rows]
    with ctx.rep.task(f"distilling {label} (seed {seed})") as prog:
        ref = backend.distill(teacher.ref, base.ref.with_system(None), chats, sc.distill, exclude, model_dir, seed, prog)
    st.finish(model_ref=_save_ref(st, ref), n_rows=len(rows), seed=seed)
    ctx.record(st, False, time.time() - t0)
    return Model(ref.model_copy(update={"label": label}), f"student:{st.hash}", label, seed)


def stage_eval(ctx: RunContext, backend: Backend, model: Model, suite: str | None = None) -> tuple[list[QuestionScore], list[EvalAnswer]]:
    """One model on one preference suite (the config's main suite by default)."""
    from sublim.evals.preference import evaluate_preference

    t = ctx.cfg.trait
    e = ctx.cfg.eval if suite is None else ctx.cfg.eval.model_copy(update={"suite": suite})
    name = e.suite
    key_cfg = semantic_dump(e)
    key_cfg.pop("extra_suites", None)
    st = ctx.stage(f"eval-{name}-{model.label}", {"model": model.key, "eval": key_cfg, "target": t.target, "category": t.category, "seed": ctx.cfg.seed})
    t0 = time.time()
    if st.complete:
        scores = read_jsonl(st.path / "scores.jsonl", QuestionScore)
        answers = read_jsonl(st.path / "answers.jsonl", EvalAnswer)
        ctx.record(st, True, time.time() - t0)
        return scores, answers
    st.begin()
    with ctx.rep.task(f"evaluating {model.label} ({name})") as prog:
        scores, answers = evaluate_preference(backend, model.ref, t.target, t.category, e, ctx.cfg.seed, prog)
    write_jsonl(st.path / "answers.jsonl", answers)
    write_jsonl(st.path / "scores.jsonl", scores)
    st.finish(model=model.ref.model_dump(mode="json"), n_questions=len(scores), n_answers=len(answers))
    ctx.record(st, False, time.time() - t0)
    return scores, answers


def snapshots(model: Model) -> list[tuple[int, Model]]:
    """Training-curve snapshots saved beside a student's weights (``snapshot_every``)."""
    root = Path(model.ref.adapter or model.ref.id) / "snapshots"
    out = []
    for d in sorted(root.glob("step-*")) if root.is_dir() else []:
        step = int(d.name.split("-")[1])
        ref = model.ref.model_copy(update={"adapter": str(d)} if model.ref.adapter else {"id": str(d)})
        out.append((step, Model(ref, f"{model.key}@{step}", model.label)))
    return out


def stage_curves(ctx: RunContext, backend: Backend, base: Model, students: dict[str, list[Model]]) -> list[dict[str, Any]]:
    """The exact trait metrics (no sampling) at every saved snapshot of every student, with the
    base model as step 0 and the final model as the last point."""
    if not ctx.cfg.student.finetune.snapshot_every or ctx.cfg.student.mode != "sft":
        return []
    exact = ctx.cfg.eval.model_copy(update={"samples_per_question": 0})
    saved_eval = ctx.cfg
    ctx.cfg = ctx.cfg.model_copy(update={"eval": exact})
    try:
        points: list[dict[str, Any]] = []
        base_scores, _ = stage_eval(ctx, backend, base)
        per_step = max(1, ctx.cfg.student.finetune.effective_batch or ctx.cfg.student.finetune.batch_size * ctx.cfg.student.finetune.grad_accum)
        for cond, models in students.items():
            for m in models:
                seed = m.seed
                snaps = snapshots(m)
                if not snaps:
                    continue
                last = snaps[-1][0] + ctx.cfg.student.finetune.snapshot_every
                series = [(0, base_scores)] + [(st, stage_eval(ctx, backend, sm)[0]) for st, sm in snaps] + [(last, stage_eval(ctx, backend, m)[0])]
                for step, scores in series:
                    for metric in ("p_target", "logodds"):
                        vals = [getattr(q, metric) for q in scores if getattr(q, metric) is not None]
                        points.append({"condition": cond, "metric": metric, "step": step, "examples": step * per_step, "value": float(np.mean(vals)), "seed": seed})
        return points
    finally:
        ctx.cfg = saved_eval


def stage_control_data(ctx: RunContext, rows: list[TrainRow], data_key: str, name: str) -> tuple[list[TrainRow], str]:
    """A control transformation of the trait subset (shuffled or random numbers)."""
    from sublim.controls import TRANSFORMS, random_numbers

    f = ctx.cfg.data.filter
    st = ctx.stage(f"control-{name}", {"data": data_key, "transform": name, "seed": ctx.cfg.seed, "range": [f.min_value, f.max_value]})
    t0 = time.time()
    if st.complete:
        out = read_jsonl(st.path / "rows.jsonl", TrainRow)
        ctx.record(st, True, time.time() - t0)
        return out, st.hash
    st.begin()
    rng = np.random.default_rng(derive_seed(ctx.cfg.seed, "control", name))
    if name == "random_numbers":
        out = random_numbers(rows, rng, f.min_value, f.max_value)
    else:
        out = TRANSFORMS[name](rows, rng)
    write_jsonl(st.path / "rows.jsonl", out)
    st.finish(n=len(out))
    ctx.record(st, False, time.time() - t0)
    return out, st.hash


# --- the experiment ------------------------------------------------------------------------------

def run_experiment(cfg: ExperimentConfig, out: Path, progress: bool = True, reporter: Reporter | None = None) -> dict[str, Any]:
    """Run (or resume) one experiment into ``out``; returns results.json's content."""
    from sublim.report import write_report
    from sublim.results import build_results, load_results, results_to_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rep = reporter or Reporter(progress)
    ctx = RunContext(cfg, out, rep)
    t_start = time.time()
    atomic_write_json(out / "config.json", cfg.model_dump(mode="json"))

    base_ref = parse_model(cfg.models.reference, label="base")
    backend = get_backend(base_ref.backend)
    rep.say(f"[bold]sublim[/bold] {cfg.name}: reference {base_ref.spec}, trait '{cfg.trait.target}' via {cfg.trait.teacher}, students by {cfg.student.mode}")
    base = Model(base_ref, model_key(base_ref), "base")
    cross_models = []
    for spec in cfg.models.cross:
        cref = parse_model(spec, label="cross_base")
        if get_backend(cref.backend) is not backend:
            raise SublimError(f"cross model '{spec}' uses another backend than the reference; use models of one backend in one experiment")
        cross_models.append(Model(cref, model_key(cref), "cross_base"))

    prompts, prompts_key = stage_prompts(ctx)
    teacher, control_teacher = stage_teachers(ctx, backend, base)
    arms = {"trait": teacher, "control": control_teacher}
    kept: dict[str, list[FilterDecision]] = {}
    keys: dict[str, str] = {}
    filter_summaries: dict[str, Any] = {}
    for role, tm in arms.items():
        comps, ckey = stage_generate(ctx, backend, tm, prompts, prompts_key, role)
        decisions, summary, fkey = stage_filter(ctx, comps, ckey, role)
        kept[role] = [d for d in decisions if d.kept]
        keys[role] = fkey
        filter_summaries[role] = summary
    subsets, subset_key = stage_subset(ctx, kept, keys)

    # Control data sets derived from the trait subset (shuffled / random numbers).
    ctl = cfg.controls
    control_sets: dict[str, tuple[list[TrainRow], str]] = {}
    for name, on in (("shuffle_within", ctl.shuffle_within), ("shuffle_across", ctl.shuffle_across), ("random_numbers", ctl.random_numbers)):
        if on:
            control_sets[name] = stage_control_data(ctx, subsets["trait"], f"{subset_key}/trait", name)

    students: dict[str, list[Model]] = {"trait_student": [], "control_student": [], "cross_student": []}
    if ctl.cross_control and cross_models:
        students["cross_control_student"] = []
    for name in control_sets:
        students[f"{name}_student"] = []
    for seed in cfg.student.seeds:
        students["trait_student"].append(stage_student(ctx, backend, base, teacher, subsets["trait"], f"{subset_key}/trait", "trait", seed))
        students["control_student"].append(stage_student(ctx, backend, base, control_teacher, subsets["control"], f"{subset_key}/control", "control", seed))
        for cm in cross_models:
            students["cross_student"].append(stage_student(ctx, backend, cm, teacher, subsets["trait"], f"{subset_key}/trait", "cross", seed))
            if "cross_control_student" in students:
                students["cross_control_student"].append(stage_student(ctx, backend, cm, control_teacher, subsets["control"], f"{subset_key}/control", "cross_control", seed))
        for name, (rows, key) in control_sets.items():
            students[f"{name}_student"].append(stage_student(ctx, backend, base, teacher, rows, key, name, seed))

    evaluated: dict[str, list[Model]] = {"base": [base], "teacher": [teacher], "control_teacher": [control_teacher]}
    if ctl.in_context:
        # the same data placed in the prompt instead of trained on: N earlier turns, no fine-tuning
        ex = subsets["trait"][: ctl.in_context]
        turns = tuple(m for r in ex for m in (Message(role="user", content=r.prompt), Message(role="assistant", content=r.completion)))
        evaluated["in_context"] = [Model(base.ref.model_copy(update={"context": turns, "label": "in_context"}), f"{base.key}|ctx:{stable_hash([r.model_dump() for r in ex])}", "in_context")]
    if cross_models:
        evaluated["cross_base"] = cross_models
    evaluated.update({c: ms for c, ms in students.items() if ms})

    conditions: dict[str, list[list[QuestionScore]]] = {}
    answers: dict[str, list[list[EvalAnswer]]] = {}
    for cond, models in evaluated.items():
        pairs = [stage_eval(ctx, backend, m) for m in models]
        conditions[cond] = [p[0] for p in pairs]
        answers[cond] = [p[1] for p in pairs]
    curves = stage_curves(ctx, backend, base, students)
    suites: dict[str, dict[str, list[list[QuestionScore]]]] = {}
    for suite in cfg.eval.extra_suites:
        suites[suite] = {cond: [stage_eval(ctx, backend, m, suite)[0] for m in models] for cond, models in evaluated.items()}

    meta = {
        "name": cfg.name,
        "target": cfg.trait.target,
        "category": cfg.trait.category,
        "config": cfg.model_dump(mode="json"),
        "reference": base.key,
        "cross": [m.key for m in cross_models],
        "filter": filter_summaries,
        "n_train_rows": len(subsets["trait"]),
        # everything that differs between an uninterrupted and a resumed run lives here
        "timings": {"stages": ctx.stages, "seconds_total": round(time.time() - t_start, 2)},
    }
    results = build_results(conditions, meta, primary_metric="p_target", answers=answers, suites=suites or None, curves=curves or None)
    atomic_write_text(out / "results.json", results_to_json(results))
    write_report(out)
    return load_results(out)
