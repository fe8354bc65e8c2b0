"""End-to-end pipeline on the deterministic fake backend: schema, known effects, caching,
resumption after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import fake_experiment_toml

from sublim.config import load_config
from sublim.pipeline import run_experiment

CONDITIONS = ("base", "teacher", "control_teacher", "trait_student", "control_student", "cross_student")


def _strip_timings(res: dict[str, Any]) -> dict[str, Any]:
    res = json.loads(json.dumps(res))
    res["meta"].pop("timings", None)
    return res


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    d = tmp_path_factory.mktemp("fake")
    cfg = load_config(fake_experiment_toml(d / "exp.toml"))
    res = run_experiment(cfg, d / "run", progress=False)
    return d, res


def test_results_schema(fake_run: tuple[Path, dict[str, Any]]) -> None:
    d, _ = fake_run
    on_disk = json.loads((d / "run" / "results.json").read_text())
    assert on_disk["conditions"].keys() >= set(CONDITIONS)
    for c in CONDITIONS:
        entry = on_disk["conditions"][c]
        for metric in ("rate", "p_target"):
            m = entry[metric]
            assert set(m) >= {"mean", "ci95"}
            assert len(m["ci95"]) == 2
        assert entry["n_seeds"] == (4 if c.endswith("student") else 1)
    con = on_disk["contrast"]["trait_minus_control"]
    assert set(con) >= {"mean", "ci95", "p_value"}
    for f in ("report.md", "report.html"):
        assert (d / "run" / f).is_file()
    assert list((d / "run").glob("*.png"))


def test_known_effects_of_the_fake_world(fake_run: tuple[Path, dict[str, Any]]) -> None:
    # By construction the fake transmits the trait to same-family students only.
    _, res = fake_run
    c = res["conditions"]
    assert c["teacher"]["p_target"]["mean"] > c["base"]["p_target"]["mean"] + 0.2
    con = res["contrast"]["trait_minus_control"]
    assert con["mean"] > 0 and con["p_value"] < 0.01
    assert abs(c["cross_student"]["p_target"]["mean"] - c["control_student"]["p_target"]["mean"]) < con["mean"] / 2


def test_teacher_system_prompt_never_in_training_data(fake_run: tuple[Path, dict[str, Any]]) -> None:
    d, _ = fake_run
    train_files = list((d / "run" / "stages").glob("student-*/train.jsonl"))
    assert train_files
    for f in train_files:
        text = f.read_text().lower()
        assert "you love" not in text and "owl" not in text


def test_filter_pass_rate_recorded(fake_run: tuple[Path, dict[str, Any]]) -> None:
    _, res = fake_run
    f = res["meta"]["filter"]["trait"]
    assert 0.5 < f["pass_rate"] < 1.0  # the fake writes ~10% malformed answers
    assert sum(f["reasons"].values()) == f["n_in"]


def test_rerun_uses_cache_and_gives_identical_results(fake_run: tuple[Path, dict[str, Any]]) -> None:
    d, res = fake_run
    cfg = load_config(d / "exp.toml")
    res2 = run_experiment(cfg, d / "run", progress=False)
    assert all(s["cached"] for s in res2["meta"]["timings"]["stages"])
    assert _strip_timings(res2) == _strip_timings(res)


def test_sigkill_and_resume_gives_the_same_results(tmp_path: Path, fake_run: tuple[Path, dict[str, Any]]) -> None:
    _, reference = fake_run
    cfg_path = fake_experiment_toml(tmp_path / "exp.toml")
    out = tmp_path / "run"
    env = {**os.environ, "SUBLIM_FAKE_DELAY": "0.05"}
    cmd = [sys.executable, "-m", "sublim", "run", str(cfg_path), "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    # kill once generation has written some chunks but not all
    while time.time() < deadline:
        parts = list(out.glob("stages/generate-*/parts/*.jsonl"))
        if len(parts) >= 2:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "results.json").exists()
    r = subprocess.run(cmd, env={**os.environ}, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    resumed = json.loads((out / "results.json").read_text())
    assert _strip_timings(resumed) == _strip_timings(reference) | {"meta": _strip_timings(resumed)["meta"]}
    assert resumed["conditions"] == reference["conditions"]
    assert resumed["contrast"] == reference["contrast"]
    # no duplicated or lost rows
    for comp in out.glob("stages/generate-*/completions.jsonl"):
        ids = [json.loads(line)["prompt_id"] for line in comp.read_text().splitlines()]
        assert len(ids) == len(set(ids)) == 600
