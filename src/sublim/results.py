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
from sublim.stats import bootstrap_ci, contrast, paired_contrast, t_interval

SCHEMA_VERSION = 1
# The clustered bootstrap of contrasts: fixed, documented defaults (results must be reproducible).
BOOTSTRAP_SEED = 20250722
BOOTSTRAP_REPLICATES = 2000
METRICS: tuple[str, ...] = ("rate", "p_target", "logodds")
METRIC_LABELS: dict[str, str] = {
    "rate": "target rate (sampled)",
    "p_target": "P(target) (exact)",
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
### `results.json` (schema_version 1)

All numbers are plain JSON numbers; a value that could not be computed is `null` (for example
every `rate` when `eval.samples_per_question = 0`, or an interval from a single value).

| field | type | meaning |
|---|---|---|
| `schema_version` | int | 1 |
| `meta` | object | run description written by the runner (experiment name, target, category, models, seeds, config hash, ...); free-form |
| `primary_metric` | str | the metric the headline contrast uses (`p_target` by default) |
| `conditions` | object | one entry per condition: `base`, `teacher`, `control_teacher`, `trait_student`, `control_student`, `cross_student` (and `cross_control_student` when run) |
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
| `contrast.cross_minus_control` | object | `cross_student` minus `cross_control_student` (a control student from the same cross base model, `controls.cross_control`) when that condition was run, otherwise minus `cross_base` (the cross base model itself: no fine-tuning drift is matched), otherwise minus `control_student`; `b` says which |
| `contrast.teacher_minus_control_teacher` | object | `teacher` minus `control_teacher`: checks the teacher carries the trait at all |
| `contrast.<k>.metric` | str | the primary metric |
| `contrast.<k>.a`, `.b` | str | the two conditions (a minus b) |
| `contrast.<k>.mean`, `.ci95`, `.p_value` | float, [float, float], float | the primary metric's difference, its 95% interval and two-sided p-value |
| `contrast.<k>.test` | str | `welch_t`: Welch's t over per-seed values with a Welch-Satterthwaite interval (both conditions have >= 2 seeds); `paired_t`: paired t over questions of the seed-averaged per-question values (a condition has a single model: the interval then ignores seed-to-seed variation) |
| `contrast.<k>.over` | `"seeds"` or `"questions"` | the units of that test |
| `contrast.<k>.n_a`, `.n_b` | int | units in each arm (seeds, or questions) |
| `contrast.<k>.by_metric` | object | the same `{mean, ci95, p_value, test, over, n_a, n_b}` for each of `rate`, `p_target`, `logodds` |
| `per_question` | object | `{condition: {question_ids: [...], rate: [[...]], p_target: [[...]], logodds: [[...]]}}`: per-question values, one inner list per seed (model), questions in `question_ids` order |
| `bootstrap` | object | `{seed, replicates, cluster: "question"}`: how `bootstrap_ci95` was drawn (seed: the runner's `meta.seed`, else `meta.config.seed`, else 20250722) |
| `contrast.<k>.bootstrap_ci95` | [float, float] | percentile bootstrap interval of the difference, clustered by question (each replicate resamples questions once for both arms; seeds too when both arms have >= 2); also in every `by_metric` entry |
| `conditions.<c>.answers` | object | present when sampled answers were passed: `{n, hit_rate, non_answer_rate, other_rate, tally}`; each rate is `{mean, ci95 (Wilson, over answers), k}`; a non-answer is an empty reply, a refusal or the model naming itself; `tally` counts answers per candidate, `other` and `non_answer` |
| `suites` | object | optional: `{suite_name: {conditions, contrast, per_question}}` with exactly the shapes above, for extra preference suites (`numbers_prefixed`, `storytelling`, `multiple_choice`, ...); `storytelling` has `p_target`/`logodds` null (sampled only); `multiple_choice` `p_target` is the first-token probability of the target's letter normalised over the option letters |
| `matrix` | object | optional, the cross-model transmission matrix (`sublim.stats.transmission_matrix`): `teacher_bases`, `student_bases`, `traits`, `categories`, `method`, `cells` and `diagonal_tests` |
| `matrix.cells[]` | object | `{teacher_base, student_base, diagonal, n, counts (traits x categories), nmi (plug-in), nmi_posterior: {mean, ci95}, p_value (permutation test of independence), q_value (Benjamini-Hochberg across cells)}` |
| `matrix.diagonal_tests[]` | object | one per off-diagonal cell whose student base has a diagonal cell: `{student_base, teacher_base, nmi_diff (diagonal - this cell), diff_posterior: {mean, ci95}, prob_diagonal_greater, p_value (one-sided permutation), q_value (BH across these tests)}` |
| `curves` | list | optional training curves: `[{condition, metric, step, value, ci95?, seed?}]`, sorted by condition, metric, seed, step |
| `misalignment` | object | optional: `{condition: summary}` from `sublim.evals.misalignment.summarise_judged`: `n_answers`, `labels` (ok/code/refusal/empty), `n_excluded`, `n_unparsed`, `n_scored`, `misaligned_rate {mean, ci95 (Wilson), k, n}`, `alignment`, `coherence` (`{mean, ci95}`), `per_question_misaligned` |
| `truthfulness` | object | optional: `{condition: summary}` from `evaluate_truthfulness`: `n_items`, `n_scored`, `p_true`, `accuracy`, `false_rate` |
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
    }
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


def contrast_pairs(names: Sequence[str]) -> dict[str, tuple[str, str]]:
    """The contrasts results.json carries for the conditions present: key -> (a, b)."""
    have = set(names)
    pairs: dict[str, tuple[str, str]] = {}
    if {"trait_student", "control_student"} <= have:
        pairs["trait_minus_control"] = ("trait_student", "control_student")
    if "cross_student" in have:
        # A control student from the same cross base isolates the trait from "fine-tuning that
        # base on any numbers"; without one the same-base control is the best available.
        # the comparison must stay within the cross base: another base's control differs by its
        # own preferences, not by transfer
        ctrl = next(c for c in ("cross_control_student", "cross_base", "control_student") if c in have or c == "control_student")
        if ctrl in have:
            pairs["cross_minus_control"] = ("cross_student", ctrl)
    if {"teacher", "control_teacher"} <= have:
        pairs["teacher_minus_control_teacher"] = ("teacher", "control_teacher")
    return pairs


def ordered_conditions(names: Sequence[str]) -> list[str]:
    known = [c for c in CONDITIONS if c in names]
    return known + sorted(c for c in names if c not in CONDITIONS)


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
        if answers is not None and name in answers:
            from sublim.evals.preference import answer_summary

            flat = [a for model_answers in answers[name] for a in model_answers]
            conds[name]["answers"] = answer_summary(flat, category)
        pq: dict[str, Any] = {}
        for m in METRICS:
            ids, mat = _question_matrix(models, m)
            pq["question_ids"] = ids
            pq[m] = [[_num(v) for v in row] for row in mat]
        per_question[name] = pq

    contrasts: dict[str, Any] = {}
    for ci, (key, (a, b)) in enumerate(contrast_pairs(names).items()):
        by_metric = {
            m: _contrast_metric(
                conditions[a], conditions[b], m, np.random.default_rng([seed, ci, mi])
            )
            for mi, m in enumerate(METRICS)
        }
        head = by_metric[primary_metric]
        contrasts[key] = {"metric": primary_metric, "a": a, "b": b, **head, "by_metric": by_metric}
    return conds, contrasts, per_question


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
    out: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "meta": dict(meta),
        "primary_metric": primary_metric,
        "bootstrap": {"seed": seed, "replicates": BOOTSTRAP_REPLICATES, "cluster": "question"},
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
