"""The report with every optional section (suites, answers, cross-model matrix, training curves,
misalignment, truthfulness), and report.html opened in headless Chromium: it must render with
its figures decoded and its tables present. Chromium comes from the project's test set-up
(Debian package ``chromium``); without /usr/bin/chromium the browser tests are skipped."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sublim.config import load_config
from sublim.records import EvalAnswer, QuestionScore
from sublim.report import FIGURES, fig_training_curve, write_report
from sublim.results import build_results, results_to_json
from sublim.stats import transmission_matrix

sys.path.insert(0, str(Path(__file__).parent))
from conftest import CORE_CONDITIONS, fake_experiment_toml

CHROMIUM = Path("/usr/bin/chromium")
NQ = 8


def scores(p: float, seed: int) -> list[QuestionScore]:
    return [
        QuestionScore(
            question_id=q,
            rate=min(1, p + 0.03),
            n_samples=10,
            p_target=p + 0.01 * ((q + seed) % 3),
            logodds=math.log(p / (1 - p)),
        )
        for q in range(NQ)
    ]


def conds(shift: float = 0.0) -> dict:
    return {
        "base": [scores(0.1, 0)],
        "teacher": [scores(0.6, 0)],
        "control_teacher": [scores(0.1, 1)],
        "trait_student": [scores(0.3 + shift + 0.01 * s, s) for s in range(3)],
        "control_student": [scores(0.1 + 0.01 * s, s + 1) for s in range(3)],
    }


def answers(texts: list[str]) -> list[EvalAnswer]:
    return [
        EvalAnswer(model="m", question_id=i % NQ, sample=i, answer=t, hit=t == "owl")
        for i, t in enumerate(texts)
    ]


def full_results() -> dict:
    rng = np.random.default_rng(0)
    cells = {
        (tb, sb): {
            tr: list(
                rng.choice([tr, "other", "cat"], 40, p=[0.6, 0.2, 0.2] if tb == sb else [1 / 3] * 3)
            )
            for tr in ("owl", "dog")
        }
        for tb in ("alpha", "beta", "gamma")
        for sb in ("alpha", "beta", "gamma")
    }
    curves = [
        {"condition": c, "metric": m, "step": s, "value": v0 + k * s / 100, "seed": seed}
        for c, v0, k in (("trait_student", 0.1, 0.2), ("control_student", 0.1, 0.01))
        for m in ("p_target", "rate")
        for seed in (0, 1)
        for s in range(0, 101, 25)
    ]
    ans = {
        c: [answers(["owl", "cat", "I am an AI", "", "owl"])] * len(v) for c, v in conds().items()
    }
    mis = {
        "trait_student": {
            "n_answers": 16,
            "labels": {"ok": 12, "code": 2, "refusal": 1, "empty": 1},
            "n_excluded": 4,
            "n_unparsed": 1,
            "n_scored": 11,
            "misaligned_rate": {"mean": 2 / 11, "ci95": [0.05, 0.48], "k": 2, "n": 11},
            "alignment": {"mean": 70.0, "ci95": [60.0, 80.0]},
            "coherence": {"mean": 85.0, "ci95": [80.0, 90.0]},
            "per_question_misaligned": [0.5, None],
        }
    }
    tru = {
        "trait_student": {
            "n_items": 10,
            "n_scored": 10,
            "p_true": {"mean": 0.7, "ci95": [0.6, 0.8]},
            "accuracy": {"mean": 0.8, "ci95": [0.49, 0.94], "k": 8, "n": 10},
            "false_rate": {"mean": 0.2, "ci95": [0.06, 0.51], "k": 2, "n": 10},
        }
    }
    return build_results(
        conds(),
        {"name": "render_test", "target": "owl", "category": "animal"},
        answers=ans,
        suites={"numbers_prefixed": conds(0.1), "multiple_choice": conds(-0.1)},
        suite_answers={"numbers_prefixed": ans},
        matrix=transmission_matrix(cells, n_samples=400, n_perm=200, seed=0),
        curves=curves,
        misalignment=mis,
        truthfulness=tru,
    )


def write(run: Path, res: dict) -> list[Path]:
    run.mkdir(parents=True, exist_ok=True)
    (run / "results.json").write_text(results_to_json(res))
    return write_report(run)


def test_full_report_has_every_section(tmp_path: Path) -> None:
    res = full_results()
    assert {"suites", "matrix", "curves", "misalignment", "truthfulness"} <= set(res)
    assert res["conditions"]["base"]["answers"]["non_answer_rate"]["k"] == 2
    paths = write(tmp_path, res)
    names = [p.name for p in paths]
    assert set(FIGURES) | {"fig_suites.png", "fig_matrix.png", "fig_training_curve.png"} <= set(
        names
    )
    md = (tmp_path / "report.md").read_text()
    for heading in (
        "Answers and non-answers",
        "Preference suites",
        "Cross-model matrix",
        "Diagonal vs off-diagonal",
        "Misalignment",
        "Truthfulness",
    ):
        assert f"## {heading}" in md
    assert "bootstrap 95% CI" in md and "numbers_prefixed" in md and "alpha (same)" in md
    page = (tmp_path / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 6 and page.count("<table>") >= 8
    assert "<script" not in page  # the report itself is static


def test_training_curve_figure_alone(tmp_path: Path) -> None:
    pts = [
        {"step": s, "metric": "p_target", "value": 0.1 * s, "condition": "trait_student"}
        for s in range(5)
    ]
    out = fig_training_curve(pts, tmp_path / "c.png")
    assert out.read_bytes()[:4] == b"\x89PNG" and out.stat().st_size > 5000
    empty = fig_training_curve([], tmp_path / "e.png")
    assert empty.stat().st_size > 1000


# ------------------------------------------------------------------------------ browser

_PROBE = (
    "<script>window.addEventListener('load',function(){"
    "var im=[].map.call(document.images,function(i){return [i.complete?1:0,i.naturalWidth,i.naturalHeight];});"
    "document.title='PROBE'+JSON.stringify({images:im,tables:document.querySelectorAll('table').length,"
    "h2:document.querySelectorAll('h2').length});});</script>"
)


def render(html_path: Path, tmp: Path) -> dict:
    """Open a copy of the page (with a probe script that writes image sizes into the title) in
    headless Chromium; return the probe's report and the screenshot path."""
    probe = tmp / "probe.html"
    probe.write_text(html_path.read_text().replace("</body>", _PROBE + "</body>"))
    flags = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp / 'profile'}",
        "--virtual-time-budget=5000",
    ]
    dom = subprocess.run(
        [*flags, "--dump-dom", probe.as_uri()],
        check=False,
        capture_output=True,
        text=True,
        timeout=90,
    )
    m = re.search(r"<title>PROBE(.*?)</title>", dom.stdout)
    assert m, f"the page did not finish loading in Chromium: {dom.stderr[-500:]}"
    shot = tmp / "shot.png"
    subprocess.run(
        [*flags, f"--screenshot={shot}", "--window-size=1100,1600", html_path.as_uri()],
        check=False,
        capture_output=True,
        timeout=90,
    )
    return {**json.loads(m.group(1).replace("&quot;", '"')), "screenshot": shot}


needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None,
    reason="/usr/bin/chromium is not installed (make test installs it: apt-get install chromium)",
)


def _check(info: dict, n_figures: int, n_tables: int) -> None:
    assert len(info["images"]) == n_figures
    for complete, w, h in info["images"]:
        assert complete == 1 and w > 200 and h > 200  # decoded PNGs, not broken-image icons
    assert info["tables"] >= n_tables
    shot = info["screenshot"]
    assert shot.is_file() and shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 20_000


@needs_chromium
def test_full_report_renders_in_chromium(tmp_path: Path) -> None:
    write(tmp_path / "run", full_results())
    _check(render(tmp_path / "run" / "report.html", tmp_path), 6, 8)


@needs_chromium
def test_demo_style_run_report_renders_in_chromium(tmp_path: Path) -> None:
    """A real (fake-backend) run through the runner: its report has >= 3 figures and >= 2
    tables and they render."""
    from sublim.pipeline import run_experiment

    cfg = load_config(fake_experiment_toml(tmp_path / "exp.toml"))
    run_experiment(cfg, tmp_path / "run", progress=False)
    info = render(tmp_path / "run" / "report.html", tmp_path)
    assert len(info["images"]) >= 3 and info["tables"] >= 2
    _check(info, len(info["images"]), 2)


@needs_chromium
@pytest.mark.slow
def test_demo_language_run_report_renders_in_chromium(tmp_path: Path) -> None:
    """The demo's own language experiment (the world recipe on the built-in micro worlds; two
    student seeds and 20 questions instead of three and 60, to stay fast): every condition of
    the schema is there, and its report renders with >= 3 figures and >= 2 tables."""
    from sublim.config import ExperimentConfig, apply_overrides, parse_config
    from sublim.demo import DEMO_OVERRIDES, WORLD_RECIPE
    from sublim.pipeline import run_experiment

    over = [*DEMO_OVERRIDES, "student.seeds=[0,1]", "eval.n_questions=20"]
    cfg = parse_config(ExperimentConfig, apply_overrides(WORLD_RECIPE, over))
    res = run_experiment(cfg, tmp_path / "run", progress=False)
    for name in CORE_CONDITIONS:
        assert name in res["conditions"], name
    assert res["conditions"]["trait_student"]["n_seeds"] == 2
    info = render(tmp_path / "run" / "report.html", tmp_path)
    assert len(info["images"]) >= 3 and info["tables"] >= 2
    _check(info, len(info["images"]), 2)
