"""results.json schema (sublim.results) and the report built from it (sublim.report)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import CORE_CONDITIONS
from rich.console import Console

from sublim import report
from sublim.errors import DataError, MissingFileError
from sublim.records import EvalAnswer, QuestionScore
from sublim.report import FIGURES, summary_table, write_report
from sublim.results import (
    METRICS,
    RESULTS_SCHEMA_DOC,
    aggregate_condition,
    build_results,
    load_results,
    results_to_json,
    summarise_model,
)
from sublim.stats import contrast, paired_contrast, t_interval

NQ = 10


def model_scores(p: float, seed: int, sampled: bool = True) -> list[QuestionScore]:
    """A model whose per-question probability wobbles deterministically around ``p``."""
    out = []
    for q in range(NQ):
        pt = p + 0.01 * (((q * 7 + seed * 3) % 5) - 2)
        out.append(
            QuestionScore(
                question_id=q,
                rate=min(1.0, pt + 0.05) if sampled else math.nan,
                n_samples=20 if sampled else 0,
                p_target=pt,
                logodds=math.log(pt / (1 - pt)),
            )
        )
    return out


def conditions(trait_p: float = 0.3, sampled: bool = True, cross_control: bool = False) -> dict:
    c = {
        "base": [model_scores(0.10, 0, sampled)],
        "teacher": [model_scores(0.60, 0, sampled)],
        "control_teacher": [model_scores(0.10, 1, sampled)],
        "trait_student": [model_scores(trait_p + 0.01 * s, s, sampled) for s in range(3)],
        "control_student": [model_scores(0.10 + 0.01 * s, s + 1, sampled) for s in range(3)],
        "cross_student": [model_scores(0.11 + 0.01 * s, s + 2, sampled) for s in range(3)],
    }
    if cross_control:
        c["cross_control_student"] = [model_scores(0.2 + 0.01 * s, s, sampled) for s in range(2)]
    return c


META = {"name": "owl_numbers_test", "target": "owl", "category": "animal"}


def answer_sets() -> dict:
    """Sampled answers per condition and model: question 0 always names the owl, the others
    never, so the answers cluster strongly by question."""

    def model(s: int) -> list[EvalAnswer]:
        return [
            EvalAnswer(
                model=f"m{s}",
                question_id=q,
                sample=i,
                answer="owl" if q == 0 else "cat",
                hit=q == 0,
            )
            for q in range(4)
            for i in range(5)
        ]

    return {name: [model(s) for s in range(len(ms))] for name, ms in conditions().items()}


# ------------------------------------------------------------------------------ results


def test_summarise_model_is_mean_over_questions() -> None:
    s = model_scores(0.3, 0)
    summ = summarise_model(s)
    assert summ["p_target"] == pytest.approx(np.mean([x.p_target for x in s]))
    assert summ["rate"] == pytest.approx(np.mean([x.rate for x in s]))
    assert math.isnan(summarise_model(model_scores(0.3, 0, sampled=False))["rate"])


def test_aggregate_condition_over_seeds_and_over_questions() -> None:
    seeds = [summarise_model(model_scores(0.3 + 0.01 * i, i)) for i in range(3)]
    agg = aggregate_condition(seeds)
    m, lo, hi = t_interval([s["p_target"] for s in seeds])
    assert agg["n_seeds"] == 3 and agg["interval_over"] == "seeds"
    assert agg["p_target"]["mean"] == pytest.approx(m)
    assert agg["p_target"]["ci95"] == pytest.approx([lo, hi])
    assert len(agg["p_target"]["per_seed"]) == 3
    one = model_scores(0.3, 0)
    agg1 = aggregate_condition([summarise_model(one)], one)
    _, qlo, qhi = t_interval([x.p_target for x in one])
    assert agg1["interval_over"] == "questions" and agg1["n_seeds"] == 1
    assert agg1["p_target"]["ci95"] == pytest.approx([qlo, qhi])


def test_results_schema_fields_and_types() -> None:
    res = build_results(conditions(), META)
    assert (
        res["schema_version"] == 2
        and res["meta"] == {**META, "p_target_method": "exact"}  # added from the scores
        and res["primary_metric"] == "p_target"
    )
    for name in CORE_CONDITIONS:
        c = res["conditions"][name]
        assert isinstance(c["n_seeds"], int)
        assert c["interval_over"] in ("seeds", "questions")
        for m in METRICS:
            assert isinstance(c[m]["mean"], float)
            assert len(c[m]["ci95"]) == 2 and all(isinstance(x, float) for x in c[m]["ci95"])
            assert c[m]["ci95"][0] <= c[m]["mean"] <= c[m]["ci95"][1]
            assert len(c[m]["per_seed"]) == c["n_seeds"]
    assert res["conditions"]["base"]["n_seeds"] == 1
    assert res["conditions"]["base"]["interval_over"] == "questions"
    con = res["contrast"]["trait_minus_control"]
    for key in ("metric", "mean", "ci95", "p_value", "test", "by_metric"):
        assert key in con
    assert set(con["by_metric"]) == set(METRICS)
    assert con["metric"] == "p_target" and con["test"] == "welch_t" and con["over"] == "seeds"
    pq = res["per_question"]["trait_student"]
    assert (
        pq["question_ids"] == list(range(NQ))
        and len(pq["p_target"]) == 3
        and len(pq["p_target"][0]) == NQ
    )
    # strict JSON round trip
    assert json.loads(results_to_json(res)) == res


def test_headline_contrast_is_welch_over_seed_means() -> None:
    c = conditions()
    res = build_results(c, META)
    ref = contrast(
        [summarise_model(s)["p_target"] for s in c["trait_student"]],
        [summarise_model(s)["p_target"] for s in c["control_student"]],
    )
    con = res["contrast"]["trait_minus_control"]
    assert con["mean"] == pytest.approx(ref["mean"])
    assert con["ci95"] == pytest.approx(ref["ci95"])
    assert con["p_value"] == pytest.approx(ref["p_value"])
    assert con["mean"] == pytest.approx(0.2 - 0.01, abs=0.02)


def test_single_model_contrast_is_paired_over_questions() -> None:
    c = conditions()
    res = build_results(c, META)
    tc = res["contrast"]["teacher_minus_control_teacher"]
    ref = paired_contrast(
        [x.p_target for x in c["teacher"][0]], [x.p_target for x in c["control_teacher"][0]]
    )
    assert tc["test"] == "paired_t" and tc["over"] == "questions"
    assert tc["mean"] == pytest.approx(ref["mean"]) and tc["p_value"] == pytest.approx(
        ref["p_value"]
    )


def test_cross_contrast_is_against_a_control_of_the_same_cross_base() -> None:
    # no control student on the cross base: no cross contrast (no fallback to another base)
    res = build_results(conditions(), META)
    assert "cross_minus_control" not in res["contrast"]
    assert "cross_control" in report.meaning(res)
    res2 = build_results(conditions(cross_control=True), META)
    assert res2["contrast"]["cross_minus_control"]["b"] == "cross_control_student"
    assert res2["contrast"]["cross_minus_control"]["n_b"] == 2
    base = {**conditions(), "cross_base": [model_scores(0.1, 5)]}
    assert "cross_minus_control" not in build_results(base, META)["contrast"]


def test_several_cross_bases_are_separate_contrasts_not_pooled_seeds() -> None:
    c = conditions()
    del c["cross_student"]
    for tag, p in (("s1", 0.11), ("s2", 0.4)):
        c[f"cross_student@{tag}"] = [model_scores(p + 0.01 * s, s) for s in range(3)]
        c[f"cross_control_student@{tag}"] = [model_scores(0.1 + 0.01 * s, s + 1) for s in range(3)]
    res = build_results(c, META)
    cons = res["contrast"]
    assert {k for k in cons if k.startswith("cross")} == {
        "cross_minus_control@s1",
        "cross_minus_control@s2",
    }
    assert cons["cross_minus_control@s2"]["a"] == "cross_student@s2"
    assert cons["cross_minus_control@s2"]["b"] == "cross_control_student@s2"
    assert cons["cross_minus_control@s1"]["n_a"] == 3  # three seeds of one base, not six
    assert cons["cross_minus_control@s2"]["mean"] > cons["cross_minus_control@s1"]["mean"] + 0.2
    names = list(res["conditions"])
    assert report.ordered_conditions(names).index("cross_student@s1") < report.ordered_conditions(
        names
    ).index("cross_control_student@s1")
    text = report.meaning(res)
    assert "cross_student@s1 minus cross_control_student@s1" in text


def test_zero_spread_contrast_is_no_spread_not_p_zero(tmp_path: Path) -> None:
    c = {
        "trait_student": [model_scores(0.3, 0) for _ in range(3)],
        "control_student": [model_scores(0.1, 0) for _ in range(3)],
    }
    res = build_results(c, META)
    con = res["contrast"]["trait_minus_control"]
    assert con["no_spread"] and con["p_value"] is None and con["ci95"] == [None, None]
    assert con["mean"] == pytest.approx(0.2) and "no spread" in con["note"]
    assert not report.is_significant(con)
    assert "no spread" in report.meaning(res) and "significant at" not in report.meaning(res)
    rows = report.contrast_rows(res)
    assert any("no spread" in cell for row in rows for cell in row)


def test_answer_rates_are_clustered_not_wilson_over_answers() -> None:
    from sublim.stats import wilson_interval

    res = build_results(conditions(), META, answers=answer_sets())
    for name, c in res["conditions"].items():
        a = c.get("answers")
        if not a:
            continue
        n_models = len(res["per_question"][name]["rate"])
        assert a["interval_over"] == ("models" if n_models >= 2 else "questions")
        lo, hi = a["hit_rate"]["ci95"]
        _, wlo, whi = wilson_interval(a["hit_rate"]["k"], a["n"])
        assert lo is None or (lo, hi) != pytest.approx((wlo, whi))


def test_bootstrap_is_labelled_as_uncalibrated(tmp_path: Path) -> None:
    res = build_results(conditions(), META)
    assert "narrower than" in res["bootstrap"]["note"]
    assert "uncalibrated" in " ".join(report.CONTRAST_HEADER)
    assert "narrower than" in report.CONTRAST_NOTE


def test_unsampled_rates_are_null_and_primary_metric_is_selectable() -> None:
    res = build_results(conditions(sampled=False), META, primary_metric="logodds")
    assert res["conditions"]["trait_student"]["rate"]["mean"] is None
    assert res["contrast"]["trait_minus_control"]["by_metric"]["rate"]["mean"] is None
    assert res["contrast"]["trait_minus_control"]["metric"] == "logodds"
    json.loads(results_to_json(res))  # still strict JSON
    with pytest.raises(ValueError):
        build_results(conditions(), META, primary_metric="accuracy")


def test_schema_doc_names_every_top_level_field() -> None:
    for field in (
        "schema_version",
        "meta",
        "conditions",
        "contrast",
        "per_question",
        "n_seeds",
        "interval_over",
        "trait_minus_control",
        "cross_minus_control",
        "p_value",
        "ci95",
        "per_seed",
    ):
        assert f"`{field}" in RESULTS_SCHEMA_DOC or f".{field}`" in RESULTS_SCHEMA_DOC, field


def test_load_results_errors(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError):
        load_results(tmp_path)
    (tmp_path / "results.json").write_text('{"schema_version": 99}')
    with pytest.raises(DataError, match="schema_version"):
        load_results(tmp_path)
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(DataError):
        load_results(tmp_path)


# ------------------------------------------------------------------------------ report


def _write(run: Path, res: dict) -> list[Path]:
    run.mkdir(parents=True, exist_ok=True)
    (run / "results.json").write_text(results_to_json(res))
    return write_report(run)


def test_report_files_figures_and_html(tmp_path: Path) -> None:
    paths = _write(tmp_path / "run", build_results(conditions(), META))
    names = {p.name for p in paths}
    assert {"report.md", "report.html", *FIGURES} <= names
    pngs = [p for p in paths if p.suffix == ".png"]
    assert len(pngs) >= 3
    for p in pngs:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    page = (tmp_path / "run" / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') >= 3
    assert page.count("<table>") >= 2 and "trait_student" in page
    assert "significant" in page and "transfer" in page
    md = (tmp_path / "run" / "report.md").read_text()
    assert "| condition |" in md and "![" in md and "fig_contrast.png" in md


def test_report_is_deterministic(tmp_path: Path) -> None:
    res = build_results(conditions(), META)
    a = {p.name: p.read_bytes() for p in _write(tmp_path / "a", res)}
    b = {p.name: p.read_bytes() for p in _write(tmp_path / "b", res)}
    assert a == b


def test_report_states_null_results_honestly(tmp_path: Path) -> None:
    # trait students identical in distribution to control students: no transfer
    c = conditions(trait_p=0.10)
    c["trait_student"] = [model_scores(0.10 + 0.01 * ((s + 1) % 3), s + 1) for s in range(3)]
    _write(tmp_path, build_results(c, META))
    page = (tmp_path / "report.html").read_text()
    assert "not significant" in page and "no evidence" in page


def test_report_without_sampling_or_students(tmp_path: Path) -> None:
    c = {k: v for k, v in conditions(sampled=False).items() if k in ("base", "teacher")}
    paths = _write(tmp_path, build_results(c, META))
    assert sum(p.suffix == ".png" for p in paths) == 3
    page = (tmp_path / "report.html").read_text()
    assert "no trait-student vs control-student contrast" in page


def test_summary_table_rows_and_contrast() -> None:
    res = build_results(conditions(), META)
    table = summary_table(res)
    assert [c.header for c in table.columns] == [
        "condition",
        "n",
        "target rate [95% CI]",
        "P(target) [95% CI]",
    ]
    assert table.row_count == len(res["conditions"]) + 1
    console = Console(record=True, width=160)
    console.print(table)
    text = console.export_text()
    assert "trait - control" in text and "control_student" in text


def test_a_significant_but_negligible_difference_gets_a_practical_size_caveat() -> None:
    # students near-identical across seeds: a shift of 0.0004 in P(owl) is "significant"
    def near(p: float) -> list:
        return [model_scores(p + 1e-6 * s, 0) for s in range(3)]

    res = build_results({"trait_student": near(0.1), "control_student": near(0.1004)}, META)
    con = res["contrast"]["trait_minus_control"]
    assert report.is_significant(con) and abs(con["mean"]) < report.NEGLIGIBLE["p_target"]
    text = report.meaning(res)
    assert "significant" in text and "not a practically meaningful effect" in text
    # a large significant difference gets no caveat
    big = build_results(conditions(trait_p=0.3), META)
    assert report.is_significant(big["contrast"]["trait_minus_control"])
    assert "practically meaningful" not in report.meaning(big)
