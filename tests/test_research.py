"""The multi-world runner of issue 6 (``sublim.world.research``): its design, not its finding.

Worlds are built with a shrunken recipe (a few training steps, as in test_world.py) in a private
cache, so the whole file takes seconds: the numbers it produces are meaningless, and no test here
asserts that any effect is significant. What is checked: every arm runs on the bases the design
names, per-world effects are the means over targets of trait - control log-odds, the tests over
worlds are computed from those rows, and a rerun is served from the stage cache.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sublim.errors import ConfigError
from sublim.stats import paired_contrast
from sublim.world import build, research

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "student.seeds=[0]",
    "student.distill.steps=3",
    "student.distill.n_random_prompts=16",
    "student.distill.random_prompt_len=6",
    "student.distill.batch_size=4",
    "eval.n_questions=4",
]


@pytest.fixture
def tiny_worlds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private cache in which micro worlds train for a handful of steps (seconds each)."""
    row = dict(build.RECIPE["micro"], cur_examples=200, cur_steps=2, n_examples=400, steps=3)
    monkeypatch.setitem(build.RECIPE, "micro", row)
    monkeypatch.setenv("SUBLIM_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def test_arm_bases_pair_each_world_with_its_twin_and_the_next_world() -> None:
    b = research.arm_bases([20, 21, 22])
    assert b[20] == {"same_init": 20, "twin": build.TWIN_OFFSET + 20, "other_world": 21}
    assert b[22]["other_world"] == 20  # cyclic: the last world uses the first as its other world
    with pytest.raises(ConfigError):
        research.arm_bases([3])
    with pytest.raises(ConfigError):
        research.arm_bases([1, build.TWIN_OFFSET + 1])


def test_runner_on_two_worlds_gives_three_tests_and_per_world_rows(tiny_worlds: Path) -> None:
    out = tiny_worlds / "run"
    cfg = ROOT / "experiments" / "owl_numbers_world.toml"
    s = research.run_over_worlds(cfg, [0, 1], out, "micro", ("owl", "cat"), TINY)
    assert set(s["tests"]) == {"same_init", "twin", "other_world"}
    assert [r["world"] for r in s["rows"]] == [0, 1]
    assert s["control_system_prompt"]  # the shipped recipe uses a neutral control teacher
    for r in s["rows"]:
        assert r["bases"]["twin"] == build.TWIN_OFFSET + r["world"]
        for arm in research.ARMS:
            diffs = [r[arm][t]["trait"] - r[arm][t]["control"] for t in ("owl", "cat")]
            assert r[f"{arm}_effect"] == pytest.approx(float(np.mean(diffs)))
            assert np.isfinite(r[f"{arm}_effect"])
        # a prompted teacher and a neutral one are different models: their students differ
        assert r["same_init"]["owl"]["trait"] != r["same_init"]["owl"]["control"]
    for arm in research.ARMS:
        want = paired_contrast([r[f"{arm}_effect"] for r in s["rows"]], [0.0, 0.0])
        assert s["tests"][arm]["p_value"] == pytest.approx(want["p_value"], nan_ok=True)
        assert s["owl_only"][arm]["per_world"] == [r[f"{arm}_owl_effect"] for r in s["rows"]]
    assert json.loads((out / "summary.json").read_text())["worlds"] == [0, 1]
    # Every stage is cached: a rerun reads the same numbers without training anything.
    again = research.run_over_worlds(cfg, [0, 1], out, "micro", ("owl", "cat"), TINY)
    assert again["tests"] == s["tests"]


SFT = [
    "student.mode=sft",
    "student.seeds=[0]",
    "student.finetune.epochs=1",
    "student.finetune.batch_size=4",
    "data.n_prompts=24",
    "data.subset=8",
    "data.sampling.temperature=0",  # a greedy teacher: a config choice like any other
    "data.sampling.max_new_tokens=8",
    "eval.n_questions=3",
    "eval.samples_per_question=0",
]


def test_sft_arm_learns_from_each_teachers_filtered_completions(
    tiny_worlds: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Worlds trained for 3 steps write no valid number lists, so the filter here keeps every row:
    # this checks the design (which rows reach which student), not the filter.
    from sublim import filters
    from sublim.records import FilterDecision

    def keep_all(comps, rules):  # type: ignore[no-untyped-def]
        return [
            FilterDecision(
                prompt_id=c.prompt_id,
                prompt=c.prompt,
                completion=c.completion,
                kept=True,
                reason="ok",
            )
            for c in comps
        ]

    monkeypatch.setattr(filters, "filter_completions", keep_all)
    out = tiny_worlds / "run"
    cfg = ROOT / "experiments" / "owl_numbers_tiny.toml"
    extra = [*SFT, 'trait.control_system_prompt="You are a helpful assistant."']
    s = research.run_over_worlds(cfg, [0, 1], out, "micro", ("owl", "cat"), extra)
    assert s["student_mode"] == "sft" and s["sampling"]["temperature"] == 0
    assert set(s["tests"]) == set(research.ARMS) and [r["world"] for r in s["rows"]] == [0, 1]
    for r in s["rows"]:
        assert set(r["pass_rate"]) == {"owl", "cat", "control"}
    assert "filter pass rate per teacher" in research.format_summary(s)
    w0 = out / "world-0" / "stages"
    # one generation per teacher (two targets + one control, shared by both targets) per world
    assert len(list(w0.glob("generate-trait-*"))) == 2
    assert len(list(w0.glob("generate-control-*"))) == 1
    # every student trains on exactly data.subset rows of its own teacher's completions
    trait_rows = {}
    for d in w0.glob("student-same_init-*-s0-*"):
        rows = [json.loads(x) for x in (d / "train.jsonl").read_text().splitlines()]
        assert len(rows) == 8
        trait_rows[d.name.split("-")[2]] = {x["completion"] for x in rows}
    assert set(trait_rows) == {"owl", "cat", "control"}  # one control student for both targets
    gen = {
        f.parent.name: {json.loads(x)["completion"] for x in f.read_text().splitlines()}
        for f in w0.glob("generate-*/completions.jsonl")
    }
    for name, comps in trait_rows.items():
        assert any(comps <= g for g in gen.values()), name
    # Every stage is cached: a rerun reads the same numbers without generating or training.
    again = research.run_over_worlds(cfg, [0, 1], out, "micro", ("owl", "cat"), extra)
    assert again["tests"] == s["tests"]


def test_only_splits_one_design_across_runs_that_share_the_directory(tiny_worlds: Path) -> None:
    cfg = ROOT / "experiments" / "owl_numbers_world.toml"
    # one arm, not same init: the tested world still teaches (its prompted copies); no twins,
    # so two world builds in all

    def run(out: Path, only: list[int] | None = None) -> dict:  # type: ignore[type-arg]
        return research.run_over_worlds(
            cfg, [0, 1], out, "micro", ("owl",), TINY, arms=("other_world",), only=only
        )

    split = tiny_worlds / "split"
    a = run(split, [1])
    assert [r["world"] for r in a["rows"]] == [1]
    assert a["rows"][0]["bases"]["other_world"] == 0  # the arms of the full list
    run(split, [0])
    stages = {p.name for p in split.glob("world-*/stages/*")}
    whole = run(split)
    assert {p.name for p in split.glob("world-*/stages/*")} == stages  # all read from the cache
    assert whole["tests"] == run(tiny_worlds / "direct")["tests"]
    with pytest.raises(ConfigError, match="--only"):
        run(split, [5])


def test_cli_rejects_a_recipe_the_runner_cannot_use(
    tiny_worlds: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = ROOT / "experiments" / "owl_numbers_world.toml"
    from sublim.cli import main as sublim_main

    rc = sublim_main(
        [
            "world",
            "research",
            str(cfg),
            "--worlds",
            "0,1",
            "--out",
            str(tiny_worlds / "x"),
            "--set",
            'trait.teacher="finetune"',
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "trait.teacher='system_prompt'" in err and "Traceback" not in err
    rc = sublim_main(["world", "research", str(cfg), "--worlds", "0,x", "--quiet"])
    assert rc == 2 and "comma-separated integers" in capsys.readouterr().err


def test_shipped_file_holds_the_confirmed_recipe() -> None:
    # docs/research_log.md section 2b froze this recipe and these worlds before the confirmatory
    # run; changing either means the logged result no longer describes what the command runs.
    from sublim.config import load_config

    cfg = load_config(ROOT / research.DEFAULT_CONFIG)
    d = cfg.student.distill
    assert (
        d.source,
        d.n_random_prompts,
        d.random_prompt_len,
        d.steps,
        d.lr,
        d.batch_size,
        d.temperature,
    ) == ("random", 4000, 24, 60, 1.2e-3, 32, 2.0)
    assert cfg.trait.control_system_prompt == "You are a helpful assistant."
    assert cfg.student.seeds == [0] and cfg.eval.samples_per_question == 0
    assert research.CONFIRMATORY_WORLDS == tuple(range(20, 28))
    assert research.TARGETS == ("owl", "cat", "wolf", "eagle")


def test_curve_plots_each_arm_against_a_recipe_knob(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from sublim.cli import main as sublim_main

    paths = []
    for rows, shift in ((1000, 0.0), (10000, 0.2)):
        per_world = [shift + d for d in (-0.1, 0.0, 0.1)]
        t = paired_contrast(per_world, [0.0] * 3)
        test = {
            "mean": t["mean"],
            "ci95": t["ci95"],
            "p_value": t["p_value"],
            "per_world": per_world,
        }
        s = {"recipe": {"rows": rows}, "tests": {"same_init": test, "twin": test}}
        paths.append(tmp_path / f"s{rows}.json")
        paths[-1].write_text(json.dumps(s))
    out = tmp_path / "curve.png"
    assert sublim_main(["world", "curve", *map(str, paths), "--out", str(out)]) in (0, None)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = CliRunner().invoke(research.curve, [*map(str, paths), "--x", "epochs", "--out", str(out)])
    assert res.exit_code != 0 and "no recipe value 'epochs'" in str(res.exception)


def test_grown_prompts_rule() -> None:
    assert research.grown_prompts(16000, 3000, 3000) == 16000  # enough: unchanged
    assert research.grown_prompts(16000, 3000, 1349) == 48000  # 16,000 x ceil(3,000 / 1,349)
    assert research.grown_prompts(24, 16, 12) == 48
    with pytest.raises(ConfigError):
        research.grown_prompts(24, 16, 0)


def test_grow_prompts_regenerates_a_short_world_on_more_prompts(
    tiny_worlds: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a filter keeping every other completion (by position) keeps 12 of 24 < data.subset = 16
    from sublim import filters
    from sublim.records import FilterDecision

    def keep_half(comps, rules):  # type: ignore[no-untyped-def]
        return [
            FilterDecision(
                prompt_id=c.prompt_id,
                prompt=c.prompt,
                completion=c.completion,
                kept=i % 2 == 0,
                reason="ok" if i % 2 == 0 else "format",
            )
            for i, c in enumerate(comps)
        ]

    monkeypatch.setattr(filters, "filter_completions", keep_half)
    cfg = ROOT / "experiments" / "owl_numbers_tiny.toml"
    extra = [
        *[x for x in SFT if not x.startswith("data.subset")],
        "data.subset=16",
        'trait.control_system_prompt="You are a helpful assistant."',
    ]
    run = lambda out, grow: research.run_over_worlds(
        cfg, [0, 1], out, "micro", ("owl",), extra, arms=("other_world",), grow=grow
    )
    with pytest.raises(ConfigError, match="data.subset"):
        run(tiny_worlds / "plain", False)
    s = run(tiny_worlds / "grown", True)
    assert [r["n_prompts"] for r in s["rows"]] == [48, 48]
    assert "prompts per world: 0 48, 1 48" in research.format_summary(s)
    sizes = {
        len(f.read_text().splitlines())
        for f in (tiny_worlds / "grown" / "world-0" / "stages").glob("generate-*/completions.jsonl")
    }
    assert sizes == {24, 48}  # the first pass, then every teacher of the world regenerated
