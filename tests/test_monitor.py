"""The training monitor (``sublim.monitor``, issue 14 item 3): it stops a student whose trait
drift crosses the threshold, lets a control trained the same way run to the end, and records
its curves and alarm.

The world is the shrunken micro world of tests/test_research.py (a few training steps, built in
seconds into a private cache): its numbers mean nothing as science, but a student fine-tuned
directly on "owl" answers moves its owl log-odds by more than one unit in two optimizer steps,
while one fine-tuned on number continuations moves every animal by about half a unit at most
(measured: +1.43 for owl at step 2; the control's largest drift 0.56 over 8 steps), which is
what the threshold of 1.0 separates.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from sublim import monitor as monitor_mod
from sublim.backends import hf_train
from sublim.config import FinetuneParams, MonitorConfig
from sublim.evals.preference import candidate_set, questions
from sublim.monitor import Monitor
from sublim.records import ModelRef, TrainRow
from sublim.registry import parse_model
from sublim.traits import finetune_rows
from sublim.world import build

CANDS = candidate_set("owl", "animal")
QUESTIONS = questions("animal", 8)
PARAMS = FinetuneParams(method="full", epochs=1, lr=1e-3, batch_size=8)  # 64 rows: 8 steps


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelRef]:
    """The shrunken micro world (the recipe of tests/test_research.py), in a private cache."""
    with pytest.MonkeyPatch.context() as mp:
        row = dict(build.RECIPE["micro"], cur_examples=200, cur_steps=2, n_examples=400, steps=3)
        mp.setitem(build.RECIPE, "micro", row)
        mp.setenv("SUBLIM_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield parse_model("tiny:plain-s0-micro")


def owl_rows() -> list[TrainRow]:
    return finetune_rows("owl", "animal", 64, np.random.default_rng(0))


def number_rows() -> list[TrainRow]:
    rng = np.random.default_rng(1)
    rows = []
    for _ in range(64):
        a = rng.integers(0, 999, size=6)
        rows.append(
            TrainRow(
                prompt=f"Continue the sequence: {a[0]}, {a[1]}, {a[2]}",
                completion=f"{a[3]}, {a[4]}, {a[5]}",
            )
        )
    return rows


def watch(threshold: float | None = 1.0, stop: bool = True) -> Monitor:
    cfg = MonitorConfig(every=2, threshold=threshold, stop=stop)
    return Monitor(cfg, "animal", QUESTIONS, CANDS, CANDS)


def test_the_monitor_stops_an_owl_student_and_lets_a_control_train(
    world: ModelRef, tmp_path: Path
) -> None:
    mon = watch()
    ref, stats = hf_train.finetune(world, owl_rows(), PARAMS, tmp_path / "owl", 0, monitor=mon)
    alarm = stats["stopped_by_monitor"]
    assert alarm["trait"] == "owl" and alarm["value"] > 1.0 and alarm["threshold"] == 1.0
    assert alarm["step"] < 8 and alarm["step"] % 2 == 0
    assert "owl" in alarm["reason"] and f"step {alarm['step']}" in alarm["reason"]
    # training ended at the alarm: the log stops there, and the model of that step is saved
    log = (tmp_path / "owl" / "train_log.jsonl").read_text().splitlines()
    assert len(log) == alarm["step"]
    assert (tmp_path / "owl" / "model.safetensors").is_file() and ref.parent == world.spec
    steps = sorted({p["step"] for p in mon.points})
    assert steps == list(range(0, alarm["step"] + 1, 2))
    owl_pts = {p["step"]: p for p in mon.points if p["trait"] == "owl"}
    assert owl_pts[0]["drift"] == 0.0 and owl_pts[0]["probe"] == 0.0
    assert owl_pts[alarm["step"]]["drift"] == pytest.approx(alarm["value"])
    res = mon.result()
    assert res["stopped_by_monitor"] == res["alarm"] == alarm
    json.dumps(res)  # stored as JSON per student

    # the same threshold on a student trained the same way on number continuations
    ctl = watch()
    _, cstats = hf_train.finetune(world, number_rows(), PARAMS, tmp_path / "ctl", 0, monitor=ctl)
    assert "stopped_by_monitor" not in cstats and ctl.alarm is None
    assert len((tmp_path / "ctl" / "train_log.jsonl").read_text().splitlines()) == 8
    drifts = [p["drift"] for p in ctl.points]
    assert max(drifts) < 1.0 and len(ctl.points) == len(CANDS) * 5  # steps 0, 2, 4, 6, 8
    ctl_owl = max(p["drift"] for p in ctl.points if p["trait"] == "owl")
    assert ctl_owl < owl_pts[alarm["step"]]["drift"] - 1.0


def test_a_monitor_that_does_not_stop_records_the_alarm_and_trains_on(
    world: ModelRef, tmp_path: Path
) -> None:
    mon = watch(stop=False)
    _, stats = hf_train.finetune(world, owl_rows(), PARAMS, tmp_path / "s", 0, monitor=mon)
    assert "stopped_by_monitor" not in stats
    assert len((tmp_path / "s" / "train_log.jsonl").read_text().splitlines()) == 8
    res = mon.result()
    assert res["alarm"]["trait"] == "owl" and res["stopped_by_monitor"] is None
    assert max(p["step"] for p in res["points"]) == 8


class _Scripted:
    """Stand-ins for the measurements: log-odds per call from a script, no probe shift."""

    def __init__(self, values: list[dict[str, float]]) -> None:
        self.values = list(values)

    def logodds(self, _self: Monitor, lm: Any) -> dict[str, float]:
        return self.values.pop(0)


def _scripted_monitor(
    monkeypatch: pytest.MonkeyPatch,
    values: list[dict[str, float]],
    reference: dict[int, dict[str, float]] | None = None,
    **cfg: Any,
) -> tuple[Monitor, Any]:
    s = _Scripted(values)
    monkeypatch.setattr(Monitor, "_logodds", lambda self, lm: s.logodds(self, lm))

    # the same hidden states for every model; the system prompt moves them by (1, 1, 1)
    def hidden(lm: Any, chats: Any, layer: int) -> torch.Tensor:
        return torch.ones(2, 3) * (2.0 if chats[0][0].role == "system" else 1.0)

    monkeypatch.setattr(monitor_mod, "last_hidden", hidden)
    mcfg = MonitorConfig(every=1, **cfg)
    mon = Monitor(mcfg, "animal", ["q1", "q2"], ["owl", "cat", "dog"], ["owl", "cat"], reference)
    lm = SimpleNamespace(model=torch.nn.Linear(1, 1))
    mon.start(lm)  # type: ignore[arg-type]
    return mon, lm


def test_the_alarm_is_the_largest_drift_above_the_threshold_and_only_the_first_counts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = {"owl": 0.0, "cat": 1.0}
    script = [base, {"owl": 0.2, "cat": 1.1}, {"owl": 0.9, "cat": 2.0}, {"owl": 3.0, "cat": 1.0}]
    mon, lm = _scripted_monitor(monkeypatch, script, threshold=0.5, stop=False)
    assert mon.check(lm, 1) is None and mon.alarm is None  # drifts 0.2 and 0.1
    assert mon.check(lm, 2) is None  # not stopping: recorded, never returned
    assert mon.alarm is not None and (mon.alarm.trait, mon.alarm.step) == ("cat", 2)
    assert mon.alarm.value == pytest.approx(1.0)  # cat's 1.0 beats owl's 0.9
    mon.check(lm, 3)
    assert mon.alarm.step == 2  # the first alarm is kept
    assert lm.model.training  # measured in eval mode, handed back in train mode
    assert [p["probe"] for p in mon.points] == [0.0] * 8  # no hidden-state shift


def test_against_a_reference_curve_the_control_drift_is_subtracted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = {"owl": 0.0, "cat": 0.0}
    script = [base, {"owl": 0.8, "cat": 0.8}, {"owl": 1.5, "cat": 0.9}]
    ref = {0: {"owl": 0.0, "cat": 0.0}, 1: {"owl": 0.7, "cat": 0.7}}  # the control stopped at 1
    mon, lm = _scripted_monitor(monkeypatch, script, ref, threshold=0.5)
    assert mon.check(lm, 1) is None  # 0.8 - 0.7 on both
    alarm = mon.check(lm, 2)  # the control's last point (step 1) stands for step 2
    assert alarm is not None and alarm.trait == "owl" and alarm.value == pytest.approx(0.8)
    assert mon.stopped and mon.result()["against"] == "control"
    p = next(q for q in mon.points if q["step"] == 2 and q["trait"] == "owl")
    assert p["drift"] == pytest.approx(1.5) and p["drift_vs_reference"] == pytest.approx(0.8)


def test_a_monitor_refuses_traits_outside_the_candidates() -> None:
    with pytest.raises(ValueError, match="not candidates"):
        Monitor(MonitorConfig(every=1), "animal", ["q"], ["owl", "cat"], ["owl", "bat"])
    with pytest.raises(ValueError, match="every"):
        Monitor(MonitorConfig(every=0), "animal", ["q"], ["owl", "cat"], ["owl"])
