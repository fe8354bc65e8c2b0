"""Cache-key hygiene of the judges and of the P(target) method (issue 13).

- ``pipeline.stage_keys`` takes the P(target) method (``p_target_method``), so the dry run names
  an API run's evaluation directories without patching ``pipeline.eval_key``: a run through
  ``sublim serve --strict`` (first-token tables) lands in exactly the planned directories.
- Judges are keyed apart from the experiment's models (``judge_keys``): a judge that is also an
  experiment model gets ``judge_model_key`` in its judge role and ``model_key`` elsewhere.
- ``data.judge`` keys the trait text its prompt is given (``pipeline.judge_trait``): nothing of
  ``trait.target`` / ``trait.category`` for a misalignment trait, and a template that needs a
  target is refused before anything is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, fake_experiment_toml, lab_server

from sublim import pipeline
from sublim.config import ExperimentConfig, load_config, parse_config
from sublim.errors import ConfigError
from sublim.pipeline import run_experiment, stage_keys
from sublim.plan import offline_model_key, plan_experiment
from sublim.registry import get_backend, parse_model

API = "openai:gpt-4.1-nano"
OTHER = "openai:gpt-4.1"  # another judge


def _changed(a: Mapping[str, str], b: Mapping[str, str]) -> set[str]:
    return {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}


def _misalignment(**extra: Any) -> ExperimentConfig:
    """A misalignment config on an API model whose judges are the same API model."""
    data = REPO / "experiments" / "data"
    raw: dict[str, Any] = {
        "name": "mis_keys",
        "models": {"reference": API, "cross": ["openai:gpt-4.1-mini"]},
        "trait": {
            "kind": "misalignment",
            "teacher": "finetune",
            "finetune_data": str(data / "world_narrow_misaligned.jsonl"),
            "control_finetune_data": str(data / "world_narrow_aligned.jsonl"),
        },
        "student": {"seeds": [0, 1]},
        "eval": {"judge": API},
    }
    for k, v in extra.items():
        raw[k] = {**raw.get(k, {}), **v}
    return parse_config(ExperimentConfig, raw)


def _keys(cfg: ExperimentConfig, model: str = "M", judge: str = "J") -> dict[str, str]:
    specs = [cfg.models.reference, *cfg.models.cross]
    return stage_keys(
        cfg,
        {s: f"{model}:{s}" for s in specs},
        judge_keys={API: f"{judge}:{API}", OTHER: f"E:{OTHER}"},
    )


# --------------------------------------------------------------------------- judges apart


def test_the_eval_judge_is_keyed_apart_from_the_same_model_as_experiment_model() -> None:
    cfg = _misalignment()
    base = _keys(cfg)
    evals = {k for k in base if k.startswith("eval-misalignment-")}
    assert len(evals) == 3 + 4 * 2 + 1  # base, teachers, cross base; 4 students x 2 seeds
    # the judge's key moves the evaluations only
    assert _changed(base, _keys(cfg, judge="J2")) == evals
    # the models' key moves every model stage, and the judge's key stays what it was
    moved = _changed(base, _keys(cfg, model="M2"))
    assert moved == set(base) - {"prompts"}
    one_map = stage_keys(cfg, {s: f"M:{s}" for s in [API, "openai:gpt-4.1-mini"]})
    # with one map the judge would take the model's key: the evaluations differ, nothing else
    assert _changed(base, one_map) == evals


def test_the_data_judge_is_keyed_apart_and_by_what_its_prompt_uses() -> None:
    cfg = _misalignment(
        data={"judge": {"model": API, "template": "alignment"}}, eval={"judge": OTHER}
    )
    base = _keys(cfg)
    assert {"judge-trait", "judge-control"} <= set(base)
    moved = _changed(base, _keys(cfg, judge="J2"))
    # the judge stages, what their rows feed (subset, students) and the students' evaluations
    assert {"judge-trait", "judge-control", "subset"} <= moved
    assert not moved & {"teacher-trait", "generate-trait", "filter-trait", "prompts"}
    assert not moved & {"eval-misalignment-base", "eval-misalignment-teacher"}
    assert "student-trait-s0" in moved and "eval-misalignment-student-trait-s1" in moved
    # a misalignment trait's judge prompt names no target: target and category change nothing
    for field, value in (("target", "wolf"), ("category", "tree")):
        other = cfg.model_copy(update={"trait": cfg.trait.model_copy(update={field: value})})
        assert _keys(other) == base, field
    assert pipeline.judge_trait(cfg) == ""


def test_a_preference_judge_still_keys_its_target() -> None:
    cfg = load_config(
        REPO / "experiments" / "owl_numbers_tiny.toml", ['data.judge.model="fake:gamma"']
    )
    specs = [cfg.models.reference, *cfg.models.cross, "fake:gamma"]
    base = stage_keys(cfg, {s: f"k:{s}" for s in specs})
    other = cfg.model_copy(update={"trait": cfg.trait.model_copy(update={"target": "cat"})})
    assert "judge-trait" in _changed(base, stage_keys(other, {s: f"k:{s}" for s in specs}))
    assert pipeline.judge_trait(cfg) == "owl"


def test_a_target_template_for_a_misalignment_trait_is_refused_before_any_stage(
    tmp_path: Path,
) -> None:
    cfg = _misalignment(data={"judge": {"model": API, "template": "reference"}})
    with pytest.raises(ConfigError, match="template = 'reference'") as err:
        _keys(cfg)
    assert "\n" not in str(err.value)
    fake = cfg.model_copy(
        update={"models": cfg.models.model_copy(update={"reference": "fake:alpha", "cross": []})}
    )
    with pytest.raises(ConfigError, match="misalignment trait does not have"):
        run_experiment(fake, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "stages").exists()


def test_the_dry_run_keys_a_judge_that_is_also_the_experiment_model_as_the_runner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A built-in world as the reference and as eval.judge: the runner keys the judge with the
    backend's version (judge_model_key) and the model without; the plan names the same
    directories, offline, and says nothing about "one key per spec"."""
    from sublim.world import build

    def no_build(*a: Any, **k: Any) -> None:
        raise AssertionError("a world was built")

    monkeypatch.setenv("SUBLIM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(build, "_build", no_build)
    world = "tiny:persona-s0-micro"
    monkeypatch.chdir(REPO)  # the experiment's data paths are relative to the repository
    cfg = load_config(
        REPO / "experiments" / "misalignment_numbers_tiny.toml",
        [f'models.reference="{world}"', "models.cross=[]", f'eval.judge="{world}"'],
    )
    plan = plan_experiment(cfg, tmp_path / "run")
    mk = offline_model_key(parse_model(world))
    bv = pipeline.backend_version(get_backend("tiny"))
    assert mk is not None and bv is not None
    want = stage_keys(cfg, {world: mk}, bv, judge_keys={world: f"{mk}|{bv}"})
    assert {s.id: s.dir for s in plan.stages} == want
    assert not any("one key per spec" in n for n in plan.notes)
    evals = {k for k in want if k.startswith("eval-misalignment-")}
    assert _changed(want, stage_keys(cfg, {world: mk}, bv)) == evals


# --------------------------------------------------------------------------- the P(target) method


def test_the_method_enters_the_evaluation_keys_only() -> None:
    cfg = load_config(REPO / "experiments" / "owl_numbers_tiny.toml")
    specs = [cfg.models.reference, *cfg.models.cross]
    mk = {s: f"k:{s}" for s in specs}
    exact = stage_keys(cfg, mk)
    assert stage_keys(cfg, mk, p_target_method="exact") == exact
    top = stage_keys(cfg, mk, p_target_method="first_token_top20")
    assert _changed(exact, top) == {k for k in exact if k.startswith("eval-")}
    sk = pipeline.eval_key(cfg, cfg.eval, "k", "base", None, "first_token_top20")
    assert sk.key["p_target_method"] == "first_token_top20"
    assert "p_target_method" not in pipeline.eval_key(cfg, cfg.eval, "k", "base", None).key


def test_an_api_run_lands_in_the_directories_its_dry_run_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through ``sublim serve --strict`` P(target) comes from first-token tables; the run's
    stage directories are ``stage_keys(..., p_target_method="first_token_top20")`` and the dry
    run, afterwards, finds every one of them cached (``pipeline.eval_key`` never swapped)."""
    pytest.importorskip("openai")
    from sublim.backends.openai_api import OpenAIBackend

    b = get_backend("openai-compat")
    assert isinstance(b, OpenAIBackend)
    monkeypatch.setattr(b, "poll_min", 0.01)
    monkeypatch.setattr(b, "poll_max", 0.05)
    monkeypatch.setattr(b, "_sublim_servers", {})
    plain_eval_key = pipeline.eval_key
    with lab_server(["fake:alpha", "fake:beta"], state_dir=tmp_path / "st", strict=True) as srv:
        api = f"openai-compat:{srv.url}#"
        cfg = load_config(
            fake_experiment_toml(tmp_path / "exp.toml"),
            [
                f'models.reference="{api}fake:alpha"',
                f'models.cross=["{api}fake:beta"]',
                "data.n_prompts=120",
                "data.subset=20",
                "student.seeds=[0]",
                "student.finetune.epochs=1",
                "eval.n_questions=3",
                "eval.samples_per_question=2",
            ],
        )
        res = run_experiment(cfg, tmp_path / "run", progress=False)
        plan = plan_experiment(cfg, tmp_path / "run")
    assert res["meta"]["p_target_method"] == "first_token_top20"
    ran = {Path(s["dir"]).name for s in res["meta"]["timings"]["stages"]}
    specs = [cfg.models.reference, *cfg.models.cross]
    keys = {s: pipeline.model_key(parse_model(s)) for s in specs}
    planned = stage_keys(cfg, keys, p_target_method="first_token_top20")
    assert ran == set(planned.values())
    assert {s.dir for s in plan.stages} == ran and {s.status for s in plan.stages} == {"cached"}
    assert ran != set(stage_keys(cfg, keys).values())  # the exact keys name other evaluations
    assert pipeline.eval_key is plain_eval_key
