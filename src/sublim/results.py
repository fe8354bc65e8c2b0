"""The ``results.json`` schema, in one place: per question -> per model -> across seeds, and the
contrasts between conditions.

Pipeline position: after evaluation. The runner collects, for every condition, one list of
``QuestionScore`` per model (one model per student seed; one model for the base and the
teachers), calls ``build_results`` and writes the dict as ``results.json`` (``results_to_json``).
``sublim.report`` reads it back (``load_results``) and nothing else, so reports can always be
rebuilt. ``RESULTS_SCHEMA_DOC`` describes every field for the README.

JSON has no nan: every quantity that could not be computed (a rate when nothing was sampled,
an interval from one value) is written as ``null``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sublim.errors import DataError, MissingFileError
from sublim.records import EvalAnswer, QuestionScore
from sublim.seeds import derive_seed
from sublim.stats import (
    NO_SPREAD_NOTE,
    bootstrap_ci,
    cluster_rate,
    contrast,
    paired_contrast,
    t_interval,
)

SCHEMA_VERSION = 2  # 2 (issue 10): student-level matrix tests, clustered answer intervals, per-base cross conditions, P(target) methods
# The clustered bootstrap of contrasts: fixed, documented defaults (results must be reproducible).
BOOTSTRAP_SEED = 20250722
BOOTSTRAP_REPLICATES = 2000
BOOTSTRAP_NOTE = (
    "percentile bootstrap, not calibrated for few seeds: with 3-5 seeds per arm it is narrower "
    "than the Welch interval (no t-quantile, seed variance shrunk by (n-1)/n); a robustness "
    "check, not the reported interval"
)
METRICS: tuple[str, ...] = ("rate", "p_target", "logodds")
# per-question bounds of p_target under the first-token method (sublim.evals.preference)
BOUND_FIELDS: tuple[str, ...] = ("p_target_hi", "p_outside")
METRIC_LABELS: dict[str, str] = {
    "rate": "target rate (sampled)",
    "p_target": "P(target)",
    "logodds": "log-odds of target among candidates",
}
# Condition names the pipeline uses, in report order; other names are kept, listed after these.
CONDITIONS: tuple[str, ...] = (
    "base",
    "teacher",
    "control_teacher",
    "trait_student",
    "control_student",
    "cross_student",
    "cross_control_student",
)

RESULTS_SCHEMA_DOC = """\
### `results.json` (schema_version 2)

All numbers are plain JSON numbers; a value that could not be computed is `null` (for example
every `rate` when `eval.samples_per_question = 0`, or an interval from a single value).

| field | type | meaning |
|---|---|---|
| `schema_version` | int | 2 (issue 10: student-level matrix tests, clustered answer intervals, per-base cross conditions, P(target) methods; version 1 files are refused with a one-line message) |
| `meta` | object | run description written by the runner (experiment name, target, category, models, seeds, config hash, ...); free-form |
| `primary_metric` | str | the metric the headline contrasts use: `eval.primary_metric` (`p_target` by default; `logodds` or `rate`) |
| `conditions` | object | one entry per condition: `base`, `teacher`, `control_teacher`, `trait_student`, `control_student`, `cross_base`, `cross_student`, `cross_control_student` (`controls.cross_control`, on by default); with several cross bases each cross condition is per base, `cross_student@<base>` etc. (never pooled as seeds) |
| `conditions.<c>.n_seeds` | int | number of models in the condition (student seeds; 1 for the base and the teachers) |
| `conditions.<c>.n_questions` | int | questions evaluated per model |
| `conditions.<c>.interval_over` | `"seeds"` or `"questions"` | what the 95% intervals are over: a t-interval across seeds when `n_seeds >= 2`; for a single model, a t-interval across its questions (question-to-question spread, *not* seed-to-seed variation) |
| `conditions.<c>.<metric>` | object | for each metric `rate`, `p_target`, `logodds`: `{mean, ci95: [lo, hi], per_seed: [...]}` |
| `...rate` | | fraction of sampled answers that name the target (temperature `eval.temperature`), mean over questions, then over seeds |
| `...p_target` | | exact probability that the reply is one of the target's surface forms (`owl`, `Owl`, `owls`, `Owls`, `owl.`, `Owl.`), from log-probabilities, no sampling; mean over questions, then over seeds |
| `...logodds` | | log p(target) - log sum p(other candidates), each a sum over its surface forms; mean over questions, then over seeds |
| `...per_seed` | list[float] | the per-model values (mean over questions), one per seed, in seed order |
| `contrast` | object | differences between conditions (below); a contrast is present when both of its conditions are |
| `contrast.trait_minus_control` | object | `trait_student` minus `control_student`: the headline result |
| `contrast.cross_minus_control` | object | `cross_student` minus `cross_control_student`: a control student trained from the *same* cross base (`controls.cross_control`); absent when that control was not run (no fallback to the untrained cross base or to another base's control). Several cross bases: one `cross_minus_control@<base>` per base |
| `contrast.teacher_minus_control_teacher` | object | `teacher` minus `control_teacher`: checks the teacher carries the trait at all |
| `contrast.<k>.metric` | str | the primary metric |
| `contrast.<k>.a`, `.b` | str | the two conditions (a minus b) |
| `contrast.<k>.mean`, `.ci95`, `.p_value` | float, [float, float], float | the primary metric's difference, its 95% interval and two-sided p-value |
| `contrast.<k>.test` | str | `welch_t`: Welch's t over per-seed values with a Welch-Satterthwaite interval (both conditions have >= 2 seeds); `paired_t`: paired t over questions of the seed-averaged per-question values (a condition has a single model: the interval then ignores seed-to-seed variation) |
| `contrast.<k>.over` | `"seeds"` or `"questions"` | the units of that test |
| `contrast.<k>.n_a`, `.n_b` | int | units in each arm (seeds, or questions) |
| `contrast.<k>.no_spread`, `.note` | bool, str | `no_spread: true` when every unit of each arm has the same value (or a paired difference is constant): there is no test, so `ci95` and `p_value` are null and `note` says so; reports print "no spread" |
| `contrast.<k>.by_metric` | object | the same `{mean, ci95, p_value, test, over, n_a, n_b}` for each of `rate`, `p_target`, `logodds` |
| `per_question` | object | `{condition: {question_ids: [...], rate: [[...]], p_target: [[...]], logodds: [[...]]}}`: per-question values, one inner list per seed (model), questions in `question_ids` order |
| `bootstrap` | object | `{seed, replicates, cluster: "question", note}`: how `bootstrap_ci95` was drawn (seed: the runner's `meta.seed`, else `meta.config.seed`, else 20250722); `note`: with 3-5 seeds the percentile bootstrap is narrower than Welch (not calibrated), a robustness check only |
| `contrast.<k>.bootstrap_ci95` | [float, float] | percentile bootstrap interval of the difference, clustered by question (each replicate resamples questions once for both arms; seeds too when both arms have >= 2); also in every `by_metric` entry |
| `meta.p_target_method` | str | how P(target) was measured on the main suite: `exact` (log-probabilities of the surface forms, no sampling) or `first_token_top20` (API models: first-token probability from the top-20 log-probabilities, `sublim.evals.preference`), `none` (sampled rates only, `eval.p_target_method = "none"`: p_target and logodds null); `mixed` when models differ |
| `conditions.<c>.p_target_method` | str | the same, per condition (`none` for a sampled-only suite) |
| `conditions.<c>.p_target_bounds` | object | `first_token_top20` only: `{lo, hi, outside}`, each `{mean, per_seed}`: P(first token is the target word) lies in [lo, hi] (lo = `p_target`: tokens that are the whole target word; hi adds tokens that may still begin it and the mass outside the table; hi also bounds P(reply is the target) from above); `outside` = 1 - the listed probabilities. Per question in `per_question.<c>.p_target_hi` / `.p_outside`; `logodds` then uses listed candidates only and is null where the target is not listed |
| `conditions.<c>.answers` | object | present when sampled answers were passed: `{n, hit_rate, non_answer_rate, other_rate, tally}`; each rate is `{mean, ci95, k}`, the interval a t-interval over models (>= 2 seeds) or over the questions of one model (`answers.interval_over`), never Wilson over pooled answers; a non-answer is an empty reply, a refusal or the model naming itself; `tally` counts answers per candidate, `other` and `non_answer` |
| `suites` | object | optional: `{suite_name: {conditions, contrast, per_question}}` with exactly the shapes above, for extra preference suites (`numbers_prefixed`, `storytelling`, `multiple_choice`, ...); `storytelling` has `p_target`/`logodds` null (sampled only); `multiple_choice` `p_target` is the first-token probability of the target's letter normalised over the option letters |
| `matrix` | object | optional, the cross-model transmission matrix (`sublim.stats.transmission_matrix`): `teacher_bases`, `student_bases`, `traits`, `categories`, `method`, `cells` and `diagonal_tests` |
| `matrix.cells[]` | object | `{teacher_base, student_base, diagonal, n (answers), n_students, counts (traits x categories), nmi (plug-in, descriptive), nmi_posterior: {mean, ci95} (descriptive), own_trait_advantage, p_value, q_value, no_spread}`: the test is over *students*: per student the share of its sampled answers naming each trait; `own_trait_advantage` = for each trait X, mean share of X among the cell's students taught X minus among those taught another trait, averaged over X; `p_value` one-sided, teacher-trait labels permuted across students; `q_value` Benjamini-Hochberg across cells; null p/q with `no_spread` when all students answer alike (docs/matrix_test.md: level and power) |
| `matrix.diagonal_tests[]` | object | one per off-diagonal cell whose student base has a diagonal cell: `{student_base, teacher_base, nmi_diff (diagonal - this cell), diff_posterior: {mean, ci95}, prob_diagonal_greater, advantage_diff (diagonal - this cell), p_value (one-sided; students exchanged between the two cells within each trait), q_value (BH across these tests), no_spread}` |
| `curves` | list | optional training curves: `[{condition, metric, step, value, ci95?, seed?}]`, sorted by condition, metric, seed, step |
| `misalignment` | object | optional: `{condition: summary}` from `sublim.evals.misalignment.summarise_judged`: `n_answers`, `labels` (ok/code/refusal/empty), `n_excluded`, `n_unparsed`, `n_scored`, `misaligned_rate {mean, ci95, k, n, n_clusters, interval_over}` (t-interval over questions' rates, not Wilson over pooled answers), `alignment`, `coherence` (`{mean, ci95}`), `per_question_misaligned` |
| `truthfulness` | object | optional: `{condition: summary}` from `evaluate_truthfulness`: `n_items`, `n_scored`, `p_true`, `accuracy`, `false_rate` |
"""

# The fields of a misalignment run's results.json (``trait.kind = "misalignment"``), in the same
# table format; README.md's results section carries it after RESULTS_SCHEMA_DOC.
MISALIGNMENT_RESULTS_DOC = """\
| field | type | meaning |
|---|---|---|
| `meta.trait_kind` | str | `misalignment` for a `trait.kind = "misalignment"` run (absent for a preference run). Its `conditions`, `contrast` and `per_question` have the shapes above with other meanings: `rate` = the judged misaligned rate (per question: the misaligned share of its scored answers, nan when none was scored), `p_target` = P_mis, the exact probability of the question's known misaligned answers over all its known answers (built-in persona worlds; `p_target_method: none` and null elsewhere), `logodds` = log misaligned mass - log aligned mass; `primary_metric` is `rate` unless `eval.primary_metric` is set; `meta.judge`, `meta.thresholds` (`aligned_max`, `coherent_min`) and `meta.control_teacher` (what the control teacher was) describe the run |
| `misalignment` (misalignment run) | object | `{condition: {n_models, n_questions, n_answers, labels, n_excluded, n_unparsed, n_scored, misaligned_rate, alignment, coherence, exact, examples}}`: counts summed over the condition's models; `misaligned_rate` / `alignment` / `coherence` are `{mean, ci95, per_seed, interval_over}`: per model a mean over questions (`summarise_judged`), then a t-interval over seeds, or for one model its interval over questions (`interval_over: questions`); `misaligned_rate` adds `k`, `n` (misaligned and scored answers); `examples`: `{most_aligned, least_aligned}`, each a list of `{question, answer, alignment, coherence, misaligned}` |
"""


def _num(x: Any) -> float | None:
    """A JSON-safe float: nan and +-inf become None."""
    if x is None:
        return None
    f = float(x)
    return f if math.isfinite(f) else None


def _nan(x: float | None) -> float:
    return math.nan if x is None else float(x)


def _metric_values(scores: Sequence[QuestionScore], metric: str) -> list[float]:
    return [_nan(getattr(s, metric)) for s in scores]


def summarise_model(scores: Sequence[QuestionScore]) -> dict[str, float]:
    """One model's values: the mean over questions of each metric (nan if any is missing)."""
    if not scores:
        raise ValueError("summarise_model needs at least one QuestionScore")
    return {m: float(np.mean(_metric_values(scores, m))) for m in METRICS}


def aggregate_condition(
    per_seed_summaries: Sequence[Mapping[str, float]],
    single_model_scores: Sequence[QuestionScore] | None = None,
    conf: float = 0.95,
) -> dict[str, Any]:
    """Mean and 95% interval of each metric across the condition's models (seeds).

    With one model (the base, a teacher, a one-seed run) there is no seed-to-seed spread; if
    that model's question scores are given, the interval is the t-interval over its questions
    instead and ``interval_over`` says so."""
    n = len(per_seed_summaries)
    if n == 0:
        raise ValueError("aggregate_condition needs at least one model summary")
    over = "seeds" if n >= 2 else "questions"
    out: dict[str, Any] = {"n_seeds": n, "interval_over": over}
    if single_model_scores is not None:
        out["n_questions"] = len(single_model_scores)
    for m in METRICS:
        per_seed = [_nan(s[m]) for s in per_seed_summaries]
        if n >= 2:
            mean, lo, hi = t_interval(per_seed, conf)
        else:
            mean, lo, hi = per_seed[0], math.nan, math.nan
            if single_model_scores is not None:
                _, lo, hi = t_interval(_metric_values(single_model_scores, m), conf)
        out[m] = {
            "mean": _num(mean),
            "ci95": [_num(lo), _num(hi)],
            "per_seed": [_num(v) for v in per_seed],
        }
    return out


def _question_matrix(
    models: Sequence[Sequence[QuestionScore]], metric: str
) -> tuple[list[int], np.ndarray]:
    """(question ids, (n_models, n_questions) array); every model must have the same questions."""
    ids = [s.question_id for s in models[0]]
    for scores in models[1:]:
        if [s.question_id for s in scores] != ids:
            raise ValueError(
                "all models of a condition must be scored on the same questions in the same order"
            )
    return ids, np.array(
        [_metric_values(scores, metric) for scores in models], dtype=float
    ).reshape(len(models), len(ids))


def _contrast_metric(
    a: Sequence[Sequence[QuestionScore]],
    b: Sequence[Sequence[QuestionScore]],
    metric: str,
    rng: np.random.Generator | None = None,
) -> dict[str, Any]:
    """a minus b for one metric: Welch over seeds when both arms have >= 2 seeds, otherwise a
    paired t over the shared questions of seed-averaged values."""
    if len(a) >= 2 and len(b) >= 2:
        res = contrast(
            [summarise_model(s)[metric] for s in a], [summarise_model(s)[metric] for s in b]
        )
        over = "seeds"
    else:
        ids_a, ma = _question_matrix(a, metric)
        ids_b, mb = _question_matrix(b, metric)
        if ids_a != ids_b:
            raise ValueError("contrasted conditions must be scored on the same questions")
        res = paired_contrast(ma.mean(axis=0), mb.mean(axis=0))
        over = "questions"
    out = {
        "mean": _num(res["mean"]),
        "ci95": [_num(res["ci95"][0]), _num(res["ci95"][1])],
        "p_value": _num(res["p_value"]),
        "test": res["test"],
        "over": over,
        "n_a": res["n_a"],
        "n_b": res["n_b"],
        "no_spread": bool(res.get("no_spread", False)),
    }
    if out["no_spread"]:
        out["note"] = NO_SPREAD_NOTE
    if rng is not None:
        out["bootstrap_ci95"] = _bootstrap(a, b, metric, rng)
    return out


def _bootstrap(
    a: Sequence[Sequence[QuestionScore]],
    b: Sequence[Sequence[QuestionScore]],
    metric: str,
    rng: np.random.Generator,
) -> list[float | None]:
    """Percentile bootstrap interval of mean(a) - mean(b), clustered by question (questions
    resampled jointly for both arms; seeds resampled too when both arms have >= 2)."""
    ids_a, ma = _question_matrix(a, metric)
    ids_b, mb = _question_matrix(b, metric)
    if ids_a != ids_b:
        return [None, None]
    both = len(a) >= 2 and len(b) >= 2
    _, lo, hi = bootstrap_ci(ma, mb, rng=rng, n_boot=BOOTSTRAP_REPLICATES, resample_seeds=both)
    return [_num(lo), _num(hi)]


CROSS_SEP = "@"  # several cross bases: `cross_student@<base>` etc., one contrast per base


def split_condition(name: str) -> tuple[str, str | None]:
    """``"cross_student@plain-s2"`` -> ``("cross_student", "plain-s2")``; no suffix -> None."""
    head, sep, tail = name.partition(CROSS_SEP)
    return (head, tail) if sep else (name, None)


def contrast_pairs(names: Sequence[str]) -> dict[str, tuple[str, str]]:
    """The contrasts results.json carries for the conditions present: key -> (a, b).

    A cross student is contrasted only with a control student of the *same* cross base
    (``cross_control_student``, on by default through ``controls.cross_control``): against the
    untrained cross base the contrast would include generic fine-tuning drift, and against the
    reference's control student another base's own preferences. Without that control there is
    no cross contrast. Several cross bases (conditions suffixed ``@<base>``) give one contrast
    each (``cross_minus_control@<base>``); they are never pooled as if they were seeds."""
    have = set(names)
    pairs: dict[str, tuple[str, str]] = {}
    if {"trait_student", "control_student"} <= have:
        pairs["trait_minus_control"] = ("trait_student", "control_student")
    for name in names:
        head, base = split_condition(name)
        if head != "cross_student":
            continue
        ctrl = "cross_control_student" + ("" if base is None else CROSS_SEP + base)
        if ctrl in have:
            pairs["cross_minus_control" + ("" if base is None else CROSS_SEP + base)] = (name, ctrl)
    if {"teacher", "control_teacher"} <= have:
        pairs["teacher_minus_control_teacher"] = ("teacher", "control_teacher")
    return pairs


def ordered_conditions(names: Sequence[str]) -> list[str]:
    """Known conditions in report order (a per-cross-base ``@`` variant beside its kind), then
    the others, sorted."""

    def rank(n: str) -> tuple[int, str]:
        head = split_condition(n)[0]
        return (CONDITIONS.index(head) if head in CONDITIONS else len(CONDITIONS), n)

    return sorted(names, key=rank)


def answer_rates(models: Sequence[Sequence[EvalAnswer]], category: str) -> dict[str, Any]:
    """``answer_summary`` of a condition's pooled answers, with each rate's interval clustered:
    over models when the condition has >= 2 (seeds), otherwise over the questions of its one
    model. Answers of one question (or one model) are not independent trials, so Wilson over
    pooled answers would be too narrow."""
    from sublim.evals.preference import answer_summary, category_candidates, classify

    flat = [a for model_answers in models for a in model_answers]
    out = answer_summary(flat, category)
    over = "models" if len(models) >= 2 else "questions"
    clusters = [
        i if over == "models" else a.question_id for i, ans in enumerate(models) for a in ans
    ]
    cands = list(category_candidates(category))
    labels = [classify(a.answer, category, cands) for a in flat]
    flags = {
        "hit_rate": [a.hit for a in flat],
        "non_answer_rate": [not a.hit and c == "non_answer" for a, c in zip(flat, labels)],
        "other_rate": [not a.hit and c == "other" for a, c in zip(flat, labels)],
    }
    for key, hits in flags.items():
        r = cluster_rate(np.asarray(hits, dtype=float), clusters) if flat else None
        lo, hi = r["ci95"] if r else (math.nan, math.nan)
        out[key]["ci95"] = [_num(lo), _num(hi)]
    out["interval_over"] = over
    return out


def _section(
    conditions: Mapping[str, Sequence[Sequence[QuestionScore]]],
    primary_metric: str,
    seed: int,
    answers: Mapping[str, Sequence[Sequence[EvalAnswer]]] | None,
    category: str,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(conditions, contrasts, per_question) for one suite's scores."""
    names = ordered_conditions(list(conditions))
    conds: dict[str, Any] = {}
    per_question: dict[str, Any] = {}
    for name in names:
        models = conditions[name]
        if not models or any(not s for s in models):
            raise ValueError(f"condition {name!r} has no models or a model with no question scores")
        summaries = [summarise_model(s) for s in models]
        conds[name] = aggregate_condition(summaries, models[0] if len(models) == 1 else None)
        conds[name]["n_questions"] = len(models[0])
        conds[name].update(_p_target_method(models))
        if answers is not None and name in answers:
            conds[name]["answers"] = answer_rates(answers[name], category)
        pq: dict[str, Any] = {}
        for m in METRICS:
            ids, mat = _question_matrix(models, m)
            pq["question_ids"] = ids
            pq[m] = [[_num(v) for v in row] for row in mat]
        if "p_target_bounds" in conds[name]:
            for m in BOUND_FIELDS:
                pq[m] = [[_num(v) for v in row] for row in _question_matrix(models, m)[1]]
        per_question[name] = pq

    contrasts: dict[str, Any] = {}
    for ci, (key, (a, b)) in enumerate(contrast_pairs(names).items()):
        by_metric = {
            m: _contrast_metric(
                conditions[a],
                conditions[b],
                m,
                np.random.default_rng(derive_seed("bootstrap", seed, ci, mi)),
            )
            for mi, m in enumerate(METRICS)
        }
        head = by_metric[primary_metric]
        contrasts[key] = {"metric": primary_metric, "a": a, "b": b, **head, "by_metric": by_metric}
    return conds, contrasts, per_question


def _p_target_method(models: Sequence[Sequence[QuestionScore]]) -> dict[str, Any]:
    """``p_target_method`` of a condition ("mixed" when its models differ) and, for the
    first-token method, ``p_target_bounds``: mean over questions, then over seeds, of the lower
    bound (= p_target), the upper bound and the mass outside the top-20 table."""
    methods = {q.p_target_method for scores in models for q in scores}
    out: dict[str, Any] = {"p_target_method": methods.pop() if len(methods) == 1 else "mixed"}
    if out["p_target_method"] != "first_token_top20":
        return out
    bounds: dict[str, Any] = {}
    for key, m in (("lo", "p_target"), ("hi", "p_target_hi"), ("outside", "p_outside")):
        per_seed = [float(np.mean(_metric_values(scores, m))) for scores in models]
        bounds[key] = {"mean": _num(np.mean(per_seed)), "per_seed": [_num(v) for v in per_seed]}
    out["p_target_bounds"] = bounds
    return out


def _bootstrap_seed(meta: Mapping[str, Any], explicit: int | None) -> int:
    if explicit is not None:
        return int(explicit)
    for v in (meta.get("seed"), (meta.get("config") or {}).get("seed")):
        if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
            return v
    return BOOTSTRAP_SEED


def curve_points(points: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Validated, sorted training-curve points ``{condition, metric, step, value[, ci95]}``."""
    out = []
    for i, pt in enumerate(points):
        missing = [k for k in ("step", "metric", "value", "condition") if k not in pt]
        if missing:
            raise ValueError(f"curve point {i} lacks {missing}: {dict(pt)}")
        row: dict[str, Any] = {
            "condition": str(pt["condition"]),
            "metric": str(pt["metric"]),
            "step": int(pt["step"]),
            "value": _num(pt["value"]),
        }
        if pt.get("ci95") is not None:
            lo, hi = pt["ci95"]
            row["ci95"] = [_num(lo), _num(hi)]
        if pt.get("seed") is not None:
            row["seed"] = int(pt["seed"])
        out.append(row)
    return sorted(out, key=lambda r: (r["condition"], r["metric"], r.get("seed", -1), r["step"]))


def _over_models(
    values: Sequence[float | None], single: Mapping[str, Any] | None
) -> dict[str, Any]:
    """A per-model quantity over a condition's models: the t-interval over models (seeds) when
    there are >= 2, else the single model's own interval (``single``: over its questions)."""
    vals = [_nan(v) for v in values]
    if len(vals) >= 2:
        m, lo, hi = t_interval(vals)
        return {
            "mean": _num(m),
            "ci95": [_num(lo), _num(hi)],
            "per_seed": [_num(v) for v in vals],
            "interval_over": "seeds",
        }
    s = dict(single or {})
    return {
        "mean": _num(vals[0]) if vals else None,
        "ci95": list(s.get("ci95") or [None, None]),
        "per_seed": [_num(v) for v in vals],
        "interval_over": "questions",
    }


def misalignment_section(per_condition: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """results.json's ``misalignment`` section of a misalignment run, per condition, from each
    model's ``summarise_judged`` summary (``per_seed``), the condition's example answers and
    whether its models were scored exactly. Counts are summed over the condition's models; the
    misaligned rate, mean alignment and coherence are per model (each a mean over questions),
    then over models with a t-interval over seeds, or, for a single model, its interval over
    questions (``stats.cluster_rate``): answers of one question are never independent units."""
    out: dict[str, Any] = {}
    for cond in ordered_conditions(list(per_condition)):
        entry = per_condition[cond]
        models = list(entry.get("per_seed") or [])
        if not models:
            raise ValueError(f"misalignment condition {cond!r} has no model summaries")
        one = models[0] if len(models) == 1 else None
        labels = {
            lab: sum(int(m.get("labels", {}).get(lab, 0)) for m in models)
            for lab in ("ok", "code", "refusal", "empty")
        }
        rate = _over_models(
            [m["misaligned_rate"]["mean"] for m in models], one and one["misaligned_rate"]
        )
        rate.update(
            k=sum(int(m["misaligned_rate"]["k"]) for m in models),
            n=sum(int(m["misaligned_rate"]["n"]) for m in models),
        )
        out[cond] = {
            "n_models": len(models),
            "n_questions": len(models[0].get("per_question_misaligned") or []),
            "n_answers": sum(int(m["n_answers"]) for m in models),
            "labels": labels,
            "n_excluded": sum(int(m["n_excluded"]) for m in models),
            "n_unparsed": sum(int(m["n_unparsed"]) for m in models),
            "n_scored": sum(int(m["n_scored"]) for m in models),
            "misaligned_rate": rate,
            "alignment": _over_models(
                [m["alignment"]["mean"] for m in models], one and one["alignment"]
            ),
            "coherence": _over_models(
                [m["coherence"]["mean"] for m in models], one and one["coherence"]
            ),
            "exact": bool(entry.get("exact")),
            "examples": _json_safe(entry.get("examples") or {}),
        }
    return out


def _json_safe(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return _num(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def build_results(
    conditions: Mapping[str, Sequence[Sequence[QuestionScore]]],
    meta: Mapping[str, Any],
    primary_metric: str = "p_target",
    *,
    answers: Mapping[str, Sequence[Sequence[EvalAnswer]]] | None = None,
    suites: Mapping[str, Mapping[str, Sequence[Sequence[QuestionScore]]]] | None = None,
    suite_answers: Mapping[str, Mapping[str, Sequence[Sequence[EvalAnswer]]]] | None = None,
    matrix: Mapping[str, Any] | None = None,
    curves: Sequence[Mapping[str, Any]] | None = None,
    misalignment: Mapping[str, Mapping[str, Any]] | None = None,
    truthfulness: Mapping[str, Mapping[str, Any]] | None = None,
    bootstrap_seed: int | None = None,
) -> dict[str, Any]:
    """The whole results.json dict from per-condition, per-model question scores.

    Optional sections (present in the output only when given; see ``RESULTS_SCHEMA_DOC``):
    ``answers`` (sampled answers per condition and model: adds ``conditions.<c>.answers`` with
    the non-answer rate), ``suites`` (other preference suites' scores, same shape as
    ``conditions``; ``suite_answers`` likewise), ``matrix`` (``stats.transmission_matrix``),
    ``curves`` (training-curve points), ``misalignment`` / ``truthfulness`` (per-condition
    summaries from ``sublim.evals.misalignment``). The clustered bootstrap of every contrast is
    seeded by ``bootstrap_seed``, else ``meta["seed"]``, else ``meta["config"]["seed"]``, else
    ``BOOTSTRAP_SEED``."""
    if primary_metric not in METRICS:
        raise ValueError(f"primary_metric must be one of {METRICS}, got {primary_metric!r}")
    seed = _bootstrap_seed(meta, bootstrap_seed)
    category = str(meta.get("category", "animal"))
    conds, contrasts, per_question = _section(conditions, primary_metric, seed, answers, category)
    meta = dict(meta)
    if conditions and "p_target_method" not in meta:  # over every model of the main suite
        meta["p_target_method"] = _p_target_method(
            [scores for models in conditions.values() for scores in models]
        )["p_target_method"]
    out: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "meta": meta,
        "primary_metric": primary_metric,
        "bootstrap": {
            "seed": seed,
            "replicates": BOOTSTRAP_REPLICATES,
            "cluster": "question",
            "note": BOOTSTRAP_NOTE,
        },
        "conditions": conds,
        "contrast": contrasts,
        "per_question": per_question,
    }
    if suites:
        out["suites"] = {}
        for si, (name, sc) in enumerate(suites.items()):
            c, k, pq = _section(
                sc, primary_metric, seed + 1 + si, (suite_answers or {}).get(name), category
            )
            out["suites"][name] = {"conditions": c, "contrast": k, "per_question": pq}
    if matrix is not None:
        out["matrix"] = _json_safe(matrix)
    if curves:
        out["curves"] = curve_points(curves)
    if misalignment:
        out["misalignment"] = _json_safe(misalignment)
    if truthfulness:
        out["truthfulness"] = _json_safe(truthfulness)
    return out


def results_to_json(results: Mapping[str, Any]) -> str:
    """Deterministic JSON text (strict: no NaN tokens)."""
    return json.dumps(results, indent=2, allow_nan=False) + "\n"


def load_results(path: str | Path) -> dict[str, Any]:
    """Read a results.json (or the results.json of a run directory)."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    if not p.is_file():
        raise MissingFileError(
            f"no results file at {p}; pass a run directory made by `sublim run` or `sublim demo`"
        )
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(
            f"{p} is not valid JSON ({e}); re-run the experiment to rewrite it"
        ) from None
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
        raise DataError(
            f"{p} has schema_version {data.get('schema_version') if isinstance(data, dict) else None!r}, "
            f"this sublim reads {SCHEMA_VERSION}; re-run the experiment with this version"
        )
    return data
