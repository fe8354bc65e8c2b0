"""Control transformations and control conditions in the runner."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from conftest import fake_experiment_toml

from sublim.config import load_config
from sublim.controls import random_numbers, shuffle_across, shuffle_within
from sublim.filters import NumberRules, check_completion
from sublim.pipeline import run_experiment
from sublim.records import TrainRow

ROWS = [
    TrainRow(prompt="a", completion="[101, 202, 303]."),
    TrainRow(prompt="b", completion="4;5;6;7"),
    TrainRow(prompt="c", completion="8\n9"),
]


def _nums(t: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", t)]


def test_shuffle_within_keeps_each_multiset_and_format() -> None:
    out = shuffle_within(ROWS, np.random.default_rng(0))
    for a, b in zip(ROWS, out):
        assert sorted(_nums(a.completion)) == sorted(_nums(b.completion))
        assert re.sub(r"\d+", "#", a.completion) == re.sub(r"\d+", "#", b.completion)
        assert a.prompt == b.prompt


def test_shuffle_across_keeps_the_pool_and_counts() -> None:
    out = shuffle_across(ROWS, np.random.default_rng(1))
    assert sorted(n for r in ROWS for n in _nums(r.completion)) == sorted(
        n for r in out for n in _nums(r.completion)
    )
    assert [len(_nums(r.completion)) for r in ROWS] == [len(_nums(r.completion)) for r in out]


def test_random_numbers_are_in_range_and_pass_the_filter() -> None:
    out = random_numbers(ROWS * 50, np.random.default_rng(2), 0, 999)
    assert all(check_completion(r.completion, NumberRules())[0] for r in out)
    allnums = [n for r in out for n in _nums(r.completion)]
    assert min(allnums) >= 0 and max(allnums) <= 999 and len(set(allnums)) > 100


def test_control_conditions_run_end_to_end(tmp_path: Path) -> None:
    cfg = load_config(
        fake_experiment_toml(tmp_path / "e.toml"),
        [
            "student.seeds=[0,1]",
            "controls.shuffle_within=true",
            "controls.random_numbers=true",
            "controls.in_context=3",
            "controls.cross_control=true",
            "eval.extra_suites=['numbers_prefixed']",
        ],
    )
    res = run_experiment(cfg, tmp_path / "run", progress=False)
    conds = res["conditions"]
    for c in (
        "shuffle_within_student",
        "random_numbers_student",
        "in_context",
        "cross_control_student",
    ):
        assert c in conds, c
    assert conds["random_numbers_student"]["n_seeds"] == 2
    assert res["contrast"]["cross_minus_control"]["b"] == "cross_control_student"
    assert "numbers_prefixed" in res.get("suites", {})
    # the fake's channel lives in last digits: random numbers carry no trait, in-context neither
    rn = conds["random_numbers_student"]["p_target"]["mean"]
    tr = conds["trait_student"]["p_target"]["mean"]
    assert tr > rn


def test_training_curves_from_snapshots(tmp_path: Path) -> None:
    """Snapshots are evaluated with the exact metric; the fake backend keeps none, so the HF path
    is exercised by building snapshots by hand through the real backend in test_hf_backend."""
    from sublim.pipeline import Model, snapshots
    from sublim.records import ModelRef

    d = tmp_path / "student"
    for step in (4, 2):
        (d / "snapshots" / f"step-{step:06d}").mkdir(parents=True)
    m = Model(ModelRef(backend="hf", id=str(d)), "k", "trait_student", 0)
    snaps = snapshots(m)
    assert [s for s, _ in snaps] == [2, 4]
    assert snaps[0][1].ref.id.endswith("step-000002") and snaps[0][1].key == "k@2"
    lora = Model(ModelRef(backend="tiny", id="plain-s0", adapter=str(d)), "k", "trait_student", 0)
    assert snapshots(lora)[1][1].ref.adapter.endswith("step-000004")


def test_neutral_control_teacher_prompt(tmp_path: Path) -> None:
    from sublim.backends.fake import FakeBackend
    from sublim.pipeline import Model, RunContext, stage_teachers
    from sublim.progress import Reporter
    from sublim.registry import parse_model

    cfg = load_config(
        fake_experiment_toml(tmp_path / "e.toml"),
        ["trait.control_system_prompt='You are a helpful assistant.'"],
    )
    base = Model(parse_model("fake:alpha"), "fake:alpha", "base")
    trait, control = stage_teachers(RunContext(cfg, tmp_path, Reporter(False)), FakeBackend(), base)
    assert control.ref.system_prompt == "You are a helpful assistant."
    assert control.key != base.key and trait.key != control.key
    plain = load_config(fake_experiment_toml(tmp_path / "f.toml"))
    _, control0 = stage_teachers(RunContext(plain, tmp_path, Reporter(False)), FakeBackend(), base)
    assert control0.ref.system_prompt is None and control0.key == base.key
