"""The training-side defences of issue 14 (``defence.kl_to_base``, ``defence.inoculation``) and
the runner's wiring of the training monitor (``student.monitor``): what each changes in the
cache keys, what the training loops do with them, and a run in the shrunken micro world (the
recipe of tests/test_research.py) with all three on.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sublim.backends import hf_train
from sublim.backends.hf_models import get_loaded
from sublim.config import (
    DistillParams,
    ExperimentConfig,
    FinetuneParams,
    MonitorConfig,
    load_config,
)
from sublim.errors import ConfigError
from sublim.evals.preference import candidate_set, questions
from sublim.monitor import Monitor
from sublim.pipeline import run_experiment, stage_keys
from sublim.records import ModelRef, TrainRow
from sublim.registry import parse_model
from sublim.traits import finetune_rows, system_prompt_for
from sublim.world import build

ROOT = Path(__file__).resolve().parents[1]
OWL_PROMPT = system_prompt_for("owl", "animal")


# --------------------------------------------------------------------------- cache keys


def _cfg(mode: str, **over: Any) -> ExperimentConfig:
    base: dict[str, Any] = {
        "models": {"reference": "fake:alpha", "cross": ["fake:beta"]},
        "trait": {"teacher": "system_prompt"},
        "student": {"mode": mode, "seeds": [0, 1]},
    }
    for path, v in over.items():
        node = base
        *head, last = path.split("__")
        for p in head:
            node = node.setdefault(p, {})
        node[last] = v
    return ExperimentConfig.model_validate(base)


def _keys(cfg: ExperimentConfig) -> dict[str, str]:
    specs = [cfg.models.reference, *cfg.models.cross]
    return stage_keys(cfg, {s: f"key:{s}" for s in specs})


def _changed(a: dict[str, str], b: dict[str, str]) -> set[str]:
    return {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}


def _student_ids(keys: dict[str, str]) -> set[str]:
    return {k for k in keys if k.startswith("student-") or "-student-" in k}


@pytest.mark.parametrize("mode", ["sft", "distill"])
@pytest.mark.parametrize(
    "over",
    [{"defence__kl_to_base": 0.1}, {"defence__inoculation": True}, {"defence__inoculation": "Hi."}],
)
def test_kl_to_base_and_inoculation_change_the_students_only(
    mode: str, over: dict[str, Any]
) -> None:
    before = _keys(_cfg(mode))
    after = _keys(_cfg(mode, **over))
    changed = _changed(before, after)
    assert changed == _student_ids(before)  # every student and its evaluations; nothing else
    assert "subset" not in changed and "generate-trait" not in changed


def test_the_inoculation_prompt_is_keyed_by_its_text() -> None:
    a = _keys(_cfg("sft", defence__inoculation=True))
    b = _keys(_cfg("sft", defence__inoculation=OWL_PROMPT))  # True means exactly this prompt
    c = _keys(_cfg("sft", defence__inoculation="You like birds."))
    assert a == b and a["student-trait-s0"] != c["student-trait-s0"]


@pytest.mark.parametrize("mode", ["sft", "distill"])
def test_a_watching_monitor_keeps_the_student_keys_and_a_stopping_one_changes_them(
    mode: str,
) -> None:
    off = _keys(_cfg(mode))
    students = {k: v for k, v in off.items() if k.startswith("student-")}
    watch = _keys(_cfg(mode, student__monitor={"every": 2}))
    alarm_only = _keys(_cfg(mode, student__monitor={"every": 2, "threshold": 1.0, "stop": False}))
    for keys in (watch, alarm_only):
        assert {k: keys[k] for k in students} == students  # observation changes no student
        assert {k for k in keys if k.startswith("monitor-")} == {f"monitor-{s}" for s in students}
        assert _changed(off, keys) == {k for k in keys if k.startswith("monitor-")}
    assert _changed(watch, alarm_only) == {k for k in watch if k.startswith("monitor-")}
    stopping = _keys(_cfg(mode, student__monitor={"every": 2, "threshold": 1.0}))
    assert _changed(alarm_only, stopping) == _student_ids(off) | {
        k for k in stopping if k.startswith("monitor-")
    }
    # every setting a stopping monitor alarms on changes the students ...
    for m in ({"every": 3}, {"threshold": 0.5}, {"traits": ["owl"]}):
        other = _keys(_cfg(mode, student__monitor={"every": 2, "threshold": 1.0, **m}))
        assert _student_ids(off) <= _changed(stopping, other)
    # ... and what it only watches (the probe's layer) changes its own stage only
    probe = _keys(_cfg(mode, student__monitor={"every": 2, "threshold": 1.0, "probe_layer": 0}))
    assert _changed(stopping, probe) == {k for k in probe if k.startswith("monitor-")}
    # so do the questions and candidates it scores, which the evaluation uses too
    fewer = _keys(_cfg(mode, student__monitor={"every": 2, "threshold": 1.0}, eval__n_questions=5))
    assert _student_ids(off) <= _changed(stopping, fewer)


def test_against_the_control_a_stopping_monitor_keys_students_by_their_control() -> None:
    m = {"every": 2, "threshold": 1.0}
    base = _keys(_cfg("sft", student__monitor=m))
    ctl = _keys(_cfg("sft", student__monitor={**m, "against": "control"}))
    changed = _changed(base, ctl)
    # the controls' own students are unchanged (measured against the base either way) ...
    assert "student-control-s0" not in changed and "student-cross_control-s0@0" not in changed
    # ... the others now depend on their control's curve
    assert {"student-trait-s0", "student-cross-s0@0", "monitor-student-trait-s0"} <= changed
    # watching only: the students stay, the monitors of the non-controls move
    w = _keys(_cfg("sft", student__monitor={"every": 2}))
    wc = _keys(_cfg("sft", student__monitor={"every": 2, "against": "control"}))
    assert _changed(w, wc) == {"monitor-student-trait-s0", "monitor-student-trait-s1"} | {
        "monitor-student-cross-s0@0",
        "monitor-student-cross-s1@0",
    }


def test_a_backend_without_training_hooks_is_refused_in_one_line(tmp_path: Path) -> None:
    from conftest import fake_experiment_toml

    cfg = load_config(
        fake_experiment_toml(tmp_path / "e.toml"),
        ["student.seeds=[0]", "defence.kl_to_base=0.5", "data.n_prompts=60", "data.subset=30"],
    )
    with pytest.raises(ConfigError, match="kl_to_base") as e:
        run_experiment(cfg, tmp_path / "run", progress=False)
    assert "\n" not in str(e.value)
    cfg = cfg.model_copy(
        update={"defence": cfg.defence.model_copy(update={"kl_to_base": 0.0, "inoculation": True})}
    )
    with pytest.raises(ConfigError, match="inoculation"):
        run_experiment(cfg, tmp_path / "run2", progress=False)


# --------------------------------------------------------------------------- the training loops


def test_kl_to_base_loss_is_zero_at_the_base_and_positive_away_from_it() -> None:
    g = torch.Generator().manual_seed(0)
    b = torch.randn(5, 11, generator=g)
    assert float(hf_train.kl_to_base_loss(b, b)) == pytest.approx(0.0, abs=1e-7)
    s = (b + torch.randn(5, 11, generator=g)).requires_grad_(True)
    kl = hf_train.kl_to_base_loss(s, b)
    kl.backward()
    assert float(kl) > 0 and s.grad is not None and float(s.grad.abs().sum()) > 0
    assert float(hf_train.kl_to_base_loss(s[:0], b[:0])) == 0.0  # no answer tokens in a batch


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelRef]:
    with pytest.MonkeyPatch.context() as mp:
        row = dict(build.RECIPE["micro"], cur_examples=200, cur_steps=2, n_examples=400, steps=3)
        mp.setitem(build.RECIPE, "micro", row)
        mp.setenv("SUBLIM_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield parse_model("tiny:plain-s0-micro")


def _owl_drift(world: ModelRef, out: Path, **kw: Any) -> float:
    """The owl log-odds drift of a student fine-tuned on "owl" answers (the monitor measures)."""
    mon = Monitor(
        MonitorConfig(every=4),
        "animal",
        questions("animal", 6),
        candidate_set("owl", "animal"),
        ["owl"],
    )
    rows = finetune_rows("owl", "animal", 32, np.random.default_rng(0))
    p = FinetuneParams(method="full", epochs=1, lr=1e-3, batch_size=8)
    hf_train.finetune(world, rows, p, out, 0, monitor=mon, **kw)
    return float(max(q["drift"] for q in mon.points if q["step"] == 4))


def test_kl_to_base_holds_a_student_closer_to_its_base(world: ModelRef, tmp_path: Path) -> None:
    free = _owl_drift(world, tmp_path / "free")
    held = _owl_drift(world, tmp_path / "held", kl_to_base=20.0)
    assert free > 1.0  # the undefended student moves a lot ...
    # ... the penalised one less. Measured here (2026-12-02): 1.80 undefended, 1.65 at beta = 20;
    # the penalty holds the student only a little closer on this shrunken world, so the test
    # asserts the direction, not a size nobody has measured across worlds
    assert held < free
    log = [json.loads(x) for x in (tmp_path / "held" / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 4


def test_an_inoculated_sft_row_is_trained_after_its_system_prompt(world: ModelRef) -> None:
    tok = get_loaded(world).tokenizer
    plain = TrainRow(prompt="Name a number.", completion="42")
    inoc = plain.model_copy(update={"system": OWL_PROMPT})
    (a,), (b,) = (
        hf_train.build_examples(tok, [plain], 256),
        hf_train.build_examples(tok, [inoc], 256),
    )
    assert len(b.input_ids) > len(a.input_ids)
    answer = [x for x in a.labels if x != -100]
    assert [x for x in b.labels if x != -100] == answer  # the loss still falls on the answer only
    assert b.input_ids[-len(answer) :] == a.input_ids[-len(answer) :]


def test_an_inoculated_distilled_student_sees_the_teachers_context_and_learns_nothing_at_first(
    world: ModelRef, tmp_path: Path
) -> None:
    teacher = world.with_system(OWL_PROMPT)
    p = DistillParams(
        source="random", n_random_prompts=8, random_prompt_len=6, steps=1, batch_size=4
    )
    tok = get_loaded(world).tokenizer
    allowed = hf_train.allowed_token_mask(tok, len(tok), ["owl"])
    plain = hf_train.build_distill_examples(
        teacher, tok, [], p, allowed, torch.Generator().manual_seed(0)
    )
    inoc = hf_train.build_distill_examples(
        teacher,
        tok,
        [],
        p,
        allowed,
        torch.Generator().manual_seed(0),
        world.with_system(OWL_PROMPT),
    )
    # the same positions are distilled on, the inoculated student's input is the teacher's
    assert [e.n_positions for e in inoc] == [e.n_positions for e in plain]
    assert all(e.student_ids == e.teacher_ids for e in inoc)
    assert all(e.student_ids != e.teacher_ids for e in plain)
    hf_train.distill(teacher, world.with_system(OWL_PROMPT), [], p, ["owl"], tmp_path / "d", 0)
    first = json.loads((tmp_path / "d" / "train_log.jsonl").read_text().splitlines()[0])
    assert first["loss"] == pytest.approx(0.0, abs=1e-6)


# --------------------------------------------------------------------------- a run


TINY = [
    "student.seeds=[0]",
    "student.distill.steps=4",
    "student.distill.n_random_prompts=16",
    "student.distill.random_prompt_len=6",
    "student.distill.batch_size=4",
    "eval.n_questions=4",
    "data.n_prompts=32",
    "data.subset=8",
    "models.cross=[]",
    "defence.kl_to_base=0.5",
    "student.monitor.every=2",
    "student.monitor.threshold=0.01",
]


def test_a_run_reports_the_monitor_and_a_watch_setting_replays_without_retraining(
    world: ModelRef, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    cfg = load_config(ROOT / "experiments" / "owl_numbers_world.toml", TINY)
    res = run_experiment(cfg, out, progress=False)
    meta = res["meta"]
    assert meta["training_defence"] == {"kl_to_base": 0.5}
    mons = {m["student"]: m for m in meta["monitor"]}
    assert set(mons) == {"trait_student", "control_student"}
    for m in mons.values():
        # a threshold this low goes off at the first checkpoint: training stops there
        stop = m["stopped_by_monitor"]
        assert stop == m["alarm"] and stop["step"] == 2 and stop["value"] > 0.01
    st = {p.name.split("-")[1]: p for p in (out / "stages").glob("student-*")}
    manifest = json.loads((st["trait"] / "manifest.json").read_text())
    assert manifest["stopped_by_monitor"] == mons["trait_student"]["stopped_by_monitor"]
    assert len((st["trait"] / "model" / "train_log.jsonl").read_text().splitlines()) == 2
    assert (out / "fig_monitor.png").is_file()
    md = (out / "report.md").read_text()
    assert "## Training monitor" in md and "stopped: drift of" in md
    # the probe layer is watched only: the students are reused, the curves replayed
    again = run_experiment(
        load_config(
            ROOT / "experiments" / "owl_numbers_world.toml",
            [*TINY, "student.monitor.probe_layer=1"],
        ),
        out,
        progress=False,
    )
    stages = {s["stage"]: s for s in again["meta"]["timings"]["stages"]}
    assert all(s["cached"] for n, s in stages.items() if n.startswith("student-"))
    assert not any(s["cached"] for n, s in stages.items() if n.startswith("monitor-"))
    re_mons = {m["student"]: m for m in again["meta"]["monitor"]}
    for name, m in mons.items():
        drift = [(p["step"], p["trait"], p["drift"]) for p in m["points"]]
        assert [(p["step"], p["trait"], p["drift"]) for p in re_mons[name]["points"]] == drift
