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
from conftest import CORE_CONDITIONS, fake_experiment_toml

from sublim.config import load_config
from sublim.pipeline import run_experiment

# cross_control is on by default: a control student on the cross base too
CONDITIONS = (*CORE_CONDITIONS, "cross_control_student")


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
    # the fake's students do not vary by seed: the contrast has no spread (no test, not p = 0)
    assert con["mean"] > 0 and (con["no_spread"] or con["p_value"] < 0.01)
    assert (
        abs(c["cross_student"]["p_target"]["mean"] - c["control_student"]["p_target"]["mean"])
        < con["mean"] / 2
    )


def test_teacher_system_prompt_never_in_training_data(
    fake_run: tuple[Path, dict[str, Any]],
) -> None:
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


def test_rerun_uses_cache_and_gives_identical_results(
    fake_run: tuple[Path, dict[str, Any]],
) -> None:
    d, res = fake_run
    cfg = load_config(d / "exp.toml")
    res2 = run_experiment(cfg, d / "run", progress=False)
    assert all(s["cached"] for s in res2["meta"]["timings"]["stages"])
    assert _strip_timings(res2) == _strip_timings(res)


def test_sigkill_and_resume_gives_the_same_results(
    tmp_path: Path, fake_run: tuple[Path, dict[str, Any]]
) -> None:
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
    r = subprocess.run(
        cmd, env={**os.environ}, capture_output=True, text=True, timeout=120, check=False
    )
    assert r.returncode == 0, r.stderr
    resumed = json.loads((out / "results.json").read_text())
    assert _strip_timings(resumed) == _strip_timings(reference) | {
        "meta": _strip_timings(resumed)["meta"]
    }
    assert resumed["conditions"] == reference["conditions"]
    assert resumed["contrast"] == reference["contrast"]
    # no duplicated or lost rows
    for comp in out.glob("stages/generate-*/completions.jsonl"):
        ids = [json.loads(line)["prompt_id"] for line in comp.read_text().splitlines()]
        assert len(ids) == len(set(ids)) == 600


def _generated(run: Path) -> dict[str, list[tuple[str, str, str | None]]]:
    out = {}
    for comp in sorted(run.glob("stages/generate-*/completions.jsonl")):
        rows = [json.loads(line) for line in comp.read_text().splitlines()]
        out[comp.parent.name] = [(r["prompt_id"], r["completion"], r["error"]) for r in rows]
    return out


def test_a_rerun_retries_exactly_the_rows_that_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("openai")
    import threading

    from sublim.backends.openai_api import OpenAIBackend, RetryPolicy
    from sublim.errors import SublimError
    from sublim.registry import get_backend
    from sublim.serve import Faults, make_server

    b = get_backend("openai-compat")
    assert isinstance(b, OpenAIBackend)
    # one attempt per request: every injected 500 is a failed row
    monkeypatch.setattr(
        b,
        "retry",
        RetryPolicy(
            max_attempts=1, base_delay=0.001, max_delay=0.01, max_total_wait=1.0, timeout=20.0
        ),
    )
    monkeypatch.setattr(b, "poll_min", 0.01)
    monkeypatch.setattr(b, "poll_max", 0.05)
    monkeypatch.setattr("sublim.pipeline.GEN_CHUNK", 40)  # several chunks from few rows
    monkeypatch.setattr("sublim.report.write_report", lambda out: None)  # rows are the point here
    srv = make_server(
        ["fake:alpha", "fake:beta"],
        "127.0.0.1",
        0,
        Faults(rate=0.2, kinds=("500",), seed=3),
        state_dir=tmp_path / "state",
    )
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        cfg = load_config(
            fake_experiment_toml(tmp_path / "exp.toml"),
            [
                f'models.reference="openai-compat:{srv.url}#fake:alpha"',
                "models.cross=[]",
                "data.n_prompts=120",
                "data.subset=50",
                "student.seeds=[0]",
                "eval.n_questions=2",
                "eval.samples_per_question=1",
            ],
        )
        run = tmp_path / "run"
        with pytest.raises(SublimError, match="rows failed") as err:
            run_experiment(cfg, run, progress=False)
        assert "\n" not in str(err.value)
        (stage,) = run.glob("stages/generate-trait-*")
        before = [
            json.loads(line)
            for p in sorted(stage.glob("parts/*.jsonl"))
            for line in p.read_text().splitlines()
        ]
        failed = {r["prompt_id"] for r in before if r["error"] is not None}
        assert len(before) == 120 and len(failed) > 0.05 * 120
        srv.faults = Faults()  # the provider recovers
        rerun = run_experiment(cfg, run, progress=False)
        clean = run_experiment(cfg, tmp_path / "clean", progress=False)  # never failed
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(timeout=5)
    gen = _generated(run)
    assert gen == _generated(tmp_path / "clean")  # same stages, same rows, in order, none lost
    trait = next(v for k, v in gen.items() if k.startswith("generate-trait-"))
    assert len({pid for pid, _, _ in trait}) == 120 and all(e is None for _, _, e in trait)
    kept = {r["prompt_id"]: r["completion"] for r in before if r["error"] is None}
    assert {
        pid: c for pid, c, _ in trait if pid in kept
    } == kept  # successful rows kept as they were
    assert _strip_timings(rerun)["conditions"] == _strip_timings(clean)["conditions"]


def test_manifests_name_the_source_tree_and_only_sublims(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_run: tuple[Path, dict[str, Any]]
) -> None:
    from sublim import artifacts

    d, _ = fake_run
    man = json.loads(next((d / "run" / "stages").glob("subset-*/manifest.json")).read_text())
    assert {"git_commit", "git_dirty"} <= man.keys()
    assert man["git_commit"] == artifacts.git_commit() and man["git_dirty"] == artifacts.git_dirty()
    # an installed copy inside some other repository reports no commit (not that repository's)
    other = tmp_path / "other"
    (other / "lib" / "sublim").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(other)], check=True)
    monkeypatch.setattr(artifacts, "__file__", str(other / "lib" / "sublim" / "artifacts.py"))
    artifacts.git_commit.cache_clear()  # read once per process: ask again for this layout
    artifacts.git_dirty.cache_clear()
    try:
        assert artifacts.git_commit() is None and artifacts.git_dirty() is None
    finally:
        artifacts.git_commit.cache_clear()
        artifacts.git_dirty.cache_clear()


def test_a_large_generation_interrupted_midway_resumes_to_identical_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """20,000 prompts (79 chunks) through the fake teacher: interrupted after 30 chunks, the rerun
    writes only the missing chunks and ends with exactly the rows of an uninterrupted run."""
    from sublim.artifacts import StageDir
    from sublim.pipeline import Model, RunContext, model_key, stage_generate, stage_prompts
    from sublim.progress import Reporter
    from sublim.registry import get_backend, parse_model

    cfg = load_config(fake_experiment_toml(tmp_path / "exp.toml"), ["data.n_prompts=20000"])
    backend = get_backend("fake")
    ref = parse_model("fake:alpha")
    teacher = Model(ref.with_system("You love owls."), model_key(ref) + "|owl", "teacher")

    def generate(out: Path) -> list[Any]:
        ctx = RunContext(cfg, out, Reporter(False))
        prompts, pkey = stage_prompts(ctx)
        return stage_generate(ctx, backend, teacher, prompts, pkey, "trait")[0]

    whole = generate(tmp_path / "whole")
    real_write = StageDir.write_part
    written: list[int] = []

    def write_then_die(self: StageDir, index: int, rows: Any) -> None:
        if len(written) == 30:
            raise KeyboardInterrupt  # as a kill between two chunks
        written.append(index)
        real_write(self, index, rows)

    monkeypatch.setattr(StageDir, "write_part", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path / "resumed")
    (parts,) = (tmp_path / "resumed" / "stages").glob("generate-trait-*/parts")
    assert len(list(parts.glob("part-*.jsonl"))) == 30
    rewritten: list[int] = []

    def count_write(self: StageDir, index: int, rows: Any) -> None:
        rewritten.append(index)
        real_write(self, index, rows)

    monkeypatch.setattr(StageDir, "write_part", count_write)
    resumed = generate(tmp_path / "resumed")
    assert sorted(rewritten) == list(range(30, 79))  # only the chunks the kill left unwritten
    assert len(whole) == 20000 and len({r.prompt_id for r in resumed}) == 20000
    assert [r.model_dump() for r in resumed] == [r.model_dump() for r in whole]
