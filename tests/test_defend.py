"""Data-side defences (sublim.defend): each method on hand-made rows, the residual-transfer
interval, ``[defence]`` in the stage keys and in a fake run, and ``sublim defend``'s errors."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import fake_experiment_toml

from sublim import defend
from sublim.cli import main
from sublim.config import ExperimentConfig, load_config
from sublim.errors import ConfigError
from sublim.filters import NumberRules, check_completion, parse_numbers
from sublim.pipeline import model_key, run_experiment, stage_keys
from sublim.records import TrainRow
from sublim.registry import parse_model

ROWS = [
    TrainRow(prompt="p0", completion="471, 12, 300, 5"),
    TrainRow(prompt="p1", completion="[9;3;007;3]."),
    TrainRow(prompt="p2", completion="(100 2 50)"),
    TrainRow(prompt="p3", completion="8"),
    TrainRow(prompt="p4", completion="Sure: 1, 2"),  # not a number list
]
STRICT = NumberRules()


def _nums(text: str) -> list[int]:
    nums, _ = parse_numbers(text)
    assert nums is not None, text
    return nums


def test_sort_keeps_the_numbers_and_the_format() -> None:
    res = defend.sort_numbers(ROWS)
    out = [r.completion for r in res.rows]
    assert out[:4] == ["5, 12, 300, 471", "[3;3;007;9].", "(2 50 100)", "8"]
    for a, b in zip(ROWS[:4], res.rows[:4]):
        assert Counter(_nums(a.completion)) == Counter(_nums(b.completion))
        assert check_completion(b.completion, STRICT) == (True, "ok")
        assert _nums(b.completion) == sorted(_nums(b.completion))
        assert b.prompt == a.prompt
    assert out[4] == "Sure: 1, 2"  # left alone and counted
    assert res.info == {"n_in": 5, "n_out": 5, "changed": 3, "unparsed": 1}


def test_canonicalise_writes_one_format() -> None:
    res = defend.canonicalise(ROWS)
    out = [r.completion for r in res.rows]
    assert out[:4] == ["471, 12, 300, 5", "9, 3, 7, 3", "100, 2, 50", "8"]
    assert all(check_completion(c, STRICT) == (True, "ok") for c in out[:4])
    assert res.info["changed"] == 2 and res.info["unparsed"] == 1


def _rows(n: int, tag: str) -> list[TrainRow]:
    return [TrainRow(prompt=f"q{i}", completion=f"{tag}{i}") for i in range(n)]


@pytest.mark.parametrize(("ratio", "replaced"), [(1.0, 50), (3.0, 75), (0.25, 20)])
def test_dilute_replaces_its_share_and_keeps_the_row_count(ratio: float, replaced: int) -> None:
    rows = _rows(100, "t")
    pool = _rows(100, "b")  # the base's completions of the same prompts
    res = defend.dilute(rows, pool, ratio, np.random.default_rng(0))
    assert len(res.rows) == 100
    assert sum(r.completion.startswith("b") for r in res.rows) == replaced
    assert res.info["same_prompt"] == replaced and res.info["other_prompt"] == 0
    # a replaced row is the base's completion of the same prompt
    assert all(r.completion[1:] == r.prompt[1:] for r in res.rows)
    again = defend.dilute(rows, pool, ratio, np.random.default_rng(0))
    assert again.rows == res.rows  # seeded


def test_dilute_falls_back_to_unused_prompts_when_the_base_lacks_one() -> None:
    rows = _rows(10, "t")
    pool = [TrainRow(prompt="q0", completion="b0"), TrainRow(prompt="x1", completion="bx")]
    res = defend.regenerate(rows, pool)  # every row replaced
    assert res.info["same_prompt"] == 1 and res.info["other_prompt"] == 1
    assert res.info["unfilled"] == 8 and len(res.rows) == 2
    assert {(r.prompt, r.completion) for r in res.rows} == {("q0", "b0"), ("x1", "bx")}


def test_drop_removes_exactly_the_top_scored_fraction() -> None:
    rows = _rows(20, "t")
    scores = [float((i * 7) % 20) for i in range(20)]  # a permutation of 0..19

    def fake_score(model: Any, rs: Any) -> list[float]:
        # teacher minus base = scores (the base scores 0)
        return [scores[int(r.prompt[1:])] if model == "T" else 0.0 for r in rs]

    s = defend.row_scores(fake_score, rows, "B", "T")  # type: ignore[arg-type]
    assert s == scores
    res = defend.drop_top(rows, s, 0.25, np.random.default_rng(0))
    gone = {r.prompt for r in rows} - {r.prompt for r in res.rows}
    assert gone == {f"q{i}" for i in range(20) if scores[i] >= 15}
    assert [r.prompt for r in res.rows] == [r.prompt for r in rows if r.prompt not in gone]
    assert res.info["dropped"] == 5 and res.info["n_out"] == 15
    # without a teacher the score is the base's negative log-likelihood
    assert defend.row_scores(lambda m, rs: [-2.0] * len(rs), rows[:2], "B") == [2.0, 2.0]  # type: ignore[arg-type]


def test_drop_breaks_ties_by_a_seeded_draw() -> None:
    rows = _rows(10, "t")
    a = defend.drop_top(rows, [0.0] * 10, 0.3, np.random.default_rng(1))
    b = defend.drop_top(rows, [0.0] * 10, 0.3, np.random.default_rng(1))
    assert a.rows == b.rows and len(a.rows) == 7


def test_residual_ratio_and_its_interval() -> None:
    u = [1.0, 1.2, 0.8, 1.1, 0.9]
    half = defend.residual_ratio([x / 2 for x in u], u)
    assert half["ratio"] == pytest.approx(0.5) and half["bounded"]
    lo, hi = half["ci95"]
    assert lo == pytest.approx(0.5) and hi == pytest.approx(0.5)  # exactly proportional
    noisy = defend.residual_ratio([0.1, -0.2, 0.3, 0.0, 0.2], u)
    lo, hi = noisy["ci95"]
    assert lo < noisy["ratio"] < hi and lo < 0 < hi
    null = defend.residual_ratio([0.1, 0.2, 0.0], [0.5, -0.6, 0.1])  # no undefended effect
    assert not null["bounded"] and "does not differ" in null["note"]


@pytest.fixture
def no_report(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runs below check stage keys and results only: skip rendering report figures."""
    monkeypatch.setattr("sublim.report.write_report", lambda out: None)


# --- [defence] in the stage keys ----------------------------------------------------------------

BASE = {
    "models": {"reference": "fake:alpha", "cross": ["fake:beta"]},
    "student": {"mode": "sft", "seeds": [0, 1]},
    "controls": {"shuffle_within": True},
}


def _keys(cfg: ExperimentConfig) -> dict[str, str]:
    specs = {cfg.models.reference, *cfg.models.cross, "fake:gamma"}
    return stage_keys(cfg, {s: f"key:{s}" for s in specs})


def _cfg(**defence: Any) -> ExperimentConfig:
    return ExperimentConfig.model_validate({**BASE, "defence": defence} if defence else BASE)


def test_method_none_leaves_every_key_unchanged() -> None:
    plain = _keys(_cfg())
    assert not any(k.startswith("defence") for k in plain)
    for d in (
        {"method": "none"},
        {"method": "none", "ratio": 3.0, "drop_fraction": 0.5, "through": "fake:gamma"},
    ):
        assert _keys(_cfg(**d)) == plain


@pytest.mark.parametrize(
    ("defence", "pool"),
    [
        ({"method": "sort"}, None),
        ({"method": "canonicalise"}, None),
        ({"method": "dilute"}, "base"),
        ({"method": "drop"}, None),
        ({"method": "regenerate", "through": "fake:gamma"}, "through"),
    ],
)
def test_a_defence_changes_the_students_and_nothing_upstream(
    defence: dict[str, Any], pool: str | None
) -> None:
    plain, keys = _keys(_cfg()), _keys(_cfg(**defence))
    changed = {k for k in plain if plain[k] != keys[k]}
    added = set(keys) - set(plain)
    assert not set(plain) - set(keys)
    want_added = {"defence-trait", "defence-control"}
    if pool:
        want_added |= {f"defence-generate-{pool}", f"defence-filter-{pool}"}
    assert added == want_added
    # every student and what is downstream of it; the control set is made from defended rows
    assert {k for k in changed if not k.startswith(("student-", "eval-", "control-"))} == set()
    assert {k for k in plain if k.startswith("student-")} <= changed
    assert "control-shuffle_within" in changed
    assert not any(k.startswith(("eval-",)) and "student" not in k for k in changed)


@pytest.mark.parametrize(
    ("field", "a", "b"),
    [("ratio", 1.0, 2.0), ("drop_fraction", 0.1, 0.2), ("through", "fake:gamma", "fake:beta")],
)
def test_the_methods_settings_enter_its_keys(field: str, a: Any, b: Any) -> None:
    method = {"ratio": "dilute", "drop_fraction": "drop", "through": "regenerate"}[field]
    extra = {"through": "fake:gamma"} if method == "regenerate" else {}
    ka = _keys(_cfg(method=method, **{**extra, field: a}))
    kb = _keys(_cfg(method=method, **{**extra, field: b}))
    assert ka["defence-trait"] != kb["defence-trait"]
    assert ka["student-trait-s0"] != kb["student-trait-s0"]
    # a setting another method reads does not move this one's keys
    other = {"ratio": "drop_fraction", "drop_fraction": "ratio", "through": "ratio"}[field]
    kc = _keys(_cfg(method=method, **{**extra, field: a, other: 0.5}))
    assert kc == ka


def test_config_refuses_what_a_defence_cannot_do() -> None:
    with pytest.raises(ValueError, match="through"):
        _cfg(method="regenerate")
    with pytest.raises(ValueError, match="random prompts"):
        ExperimentConfig.model_validate(
            {
                "student": {"mode": "distill", "distill": {"source": "random"}},
                "defence": {"method": "sort"},
            }
        )
    with pytest.raises(ValueError, match="number lists"):
        ExperimentConfig.model_validate(
            {"data": {"carrier": "code"}, "defence": {"method": "sort"}}
        )


@pytest.mark.parametrize(
    "defence",
    [
        'method = "dilute"\nratio = 1.0',
        'method = "drop"\ndrop_fraction = 0.2',
        'method = "regenerate"\nthrough = "fake:gamma"',
    ],
)
def test_a_defended_fake_run_uses_exactly_the_stage_keys(
    tmp_path: Path, defence: str, no_report: None
) -> None:
    path = fake_experiment_toml(tmp_path / "exp.toml")
    path.write_text(path.read_text() + f"\n[defence]\n{defence}\n")
    cfg = load_config(
        path,
        [
            "data.n_prompts=200",
            "data.subset=60",
            "student.seeds=[0]",
            "eval.n_questions=3",
            "eval.samples_per_question=0",
            "models.cross=[]",
        ],
    )
    res = run_experiment(cfg, tmp_path / "run", progress=False)
    ran = {Path(s["dir"]).name for s in res["meta"]["timings"]["stages"]}
    specs = {cfg.models.reference, "fake:gamma"}
    planned = stage_keys(cfg, {s: model_key(parse_model(s)) for s in specs})
    assert ran == set(planned.values())
    info = res["meta"]["defence"]
    assert info["method"] == cfg.defence.method
    trait = info["arms"]["trait"]
    if cfg.defence.method == "drop":
        assert trait["dropped"] == 12 and res["meta"]["n_train_rows"] == 48
    else:
        assert res["meta"]["n_train_rows"] == trait["n_out"] == 60
    if cfg.defence.method == "dilute":
        assert trait["replaced"] == 30
    # the rows the students trained on are the defended ones
    rows_file = next((tmp_path / "run" / "stages").glob("defence-trait-*/rows.jsonl"))
    trained = [json.loads(line) for line in rows_file.read_text().splitlines()]
    assert len(trained) == res["meta"]["n_train_rows"] or cfg.defence.method == "drop"


def test_sort_and_regenerate_move_the_fake_channel_as_built(
    tmp_path: Path, no_report: None
) -> None:
    """On the fake backend the channel is the count of the student family's signature numbers:
    sorting keeps every number (the trait student still moves), regenerating through another
    family removes them (it does not)."""
    effects = {}
    for name, defence in [
        ("none", ""),
        ("sort", 'method = "sort"'),
        ("regen", 'method = "regenerate"\nthrough = "fake:gamma"'),
    ]:
        path = fake_experiment_toml(tmp_path / f"{name}.toml")
        path.write_text(path.read_text() + (f"\n[defence]\n{defence}\n" if defence else ""))
        cfg = load_config(
            path,
            [
                "data.n_prompts=300",
                "data.subset=150",
                "student.seeds=[0]",
                "eval.n_questions=4",
                "eval.samples_per_question=0",
                "models.cross=[]",
            ],
        )
        res = run_experiment(cfg, tmp_path / name, progress=False)
        c = res["conditions"]
        effects[name] = (
            c["trait_student"]["logodds"]["mean"] - c["control_student"]["logodds"]["mean"]
        )
    assert effects["none"] > 0.2
    assert effects["sort"] == pytest.approx(effects["none"])
    assert abs(effects["regen"]) < 0.05


# --- the command ----------------------------------------------------------------------------------


def _write(path: Path, rows: list[TrainRow]) -> Path:
    path.write_text("".join(json.dumps(r.model_dump()) + "\n" for r in rows))
    return path


def test_cli_sort_prints_what_changed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _write(tmp_path / "d.jsonl", ROWS)
    assert main(["defend", str(data), "--method", "sort", "--out", str(tmp_path / "o.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "rows in 5, out 5" in out and "changed 3" in out
    got = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert got[0] == {"prompt": "p0", "completion": "5, 12, 300, 471"}


def test_cli_regenerate_asks_the_other_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sublim.backends.fake import FakeBackend

    asked: list[str] = []
    orig = FakeBackend.sample

    def spy(self: FakeBackend, model: Any, chats: Any, *a: Any, **k: Any) -> list[str]:
        asked.append(model.spec)
        return orig(self, model, chats, *a, **k)

    monkeypatch.setattr(FakeBackend, "sample", spy)
    rows = [TrainRow(prompt=f"Continue: 123, 456, 789 ({i})", completion="1, 2") for i in range(6)]
    data = _write(tmp_path / "d.jsonl", rows)
    code = main(
        [
            "defend",
            str(data),
            "--method",
            "regenerate",
            "--through",
            "fake:beta",
            "--out",
            str(tmp_path / "o.jsonl"),
        ]
    )
    assert code == 0 and asked == ["fake:beta"]
    got = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert len(got) == 6 and all(g["completion"] != "1, 2" for g in got)
    assert "replaced 6" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "msg"),
    [
        (["missing.jsonl", "--method", "sort"], "no such file"),
        (["DATA", "--method", "shuffle"], "unknown defence method"),
        (["DATA", "--method", "dilute"], "needs --base"),
        (["DATA", "--method", "drop"], "needs --base"),
        (["DATA", "--method", "regenerate"], "needs --through"),
        (["DATA", "--method", "dilute", "--base", "fake:alpha", "--ratio", "0"], "--ratio"),
    ],
)
def test_cli_errors_are_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], msg: str
) -> None:
    data = _write(tmp_path / "d.jsonl", ROWS)
    args = [
        str(data) if a == "DATA" else str(tmp_path / a) if a.endswith(".jsonl") else a for a in args
    ]
    assert main(["defend", *args, "--out", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert msg in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.jsonl").exists()


def test_defend_rows_refuses_an_unknown_method() -> None:
    with pytest.raises(ConfigError):
        defend.defend_rows(ROWS, "nope")


def test_the_report_shows_what_the_defence_did() -> None:
    from sublim.report import defence_rows

    meta = {
        "defence": {
            "method": "dilute",
            "ratio": 1.0,
            "pool_pass_rate": 0.5,
            "arms": {"trait": {"n_in": 10, "n_out": 10, "replaced": 5, "same_prompt": 4}},
        }
    }
    rows = defence_rows({"meta": meta})
    assert rows == [
        [
            "trait",
            "method dilute, ratio 1.0",
            "10",
            "10",
            "replaced 5, same_prompt 4, pool filter pass 50.0%",
        ]
    ]
    assert defence_rows({"meta": {}}) == []


def test_cli_dilute_samples_only_the_replaced_prompts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sublim.backends.fake import FakeBackend

    asked: list[int] = []
    orig = FakeBackend.sample

    def spy(self: FakeBackend, model: Any, chats: Any, *a: Any, **k: Any) -> list[str]:
        asked.append(len(chats))
        return orig(self, model, chats, *a, **k)

    monkeypatch.setattr(FakeBackend, "sample", spy)
    rows = [TrainRow(prompt=f"Continue: 123, 456, 789 ({i})", completion="1, 2") for i in range(10)]
    data = _write(tmp_path / "d.jsonl", rows)
    out = tmp_path / "o.jsonl"
    assert (
        main(["defend", str(data), "--method", "dilute", "--base", "fake:alpha", "--out", str(out)])
        == 0
    )
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert asked == [5] and len(got) == 10
    assert sum(g["completion"] != "1, 2" for g in got) == 5
    assert "replaced 5" in capsys.readouterr().out
