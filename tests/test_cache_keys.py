"""Cache keys cover every setting that changes a result, and nothing else.

The field walk visits every field of every config model reachable from ExperimentConfig, changes
it to another valid value and checks that exactly the stages written in ``EXPECT`` change key
(``sublim.pipeline.stage_keys``, the functions the runner keys its stages with). A field missing
from ``EXPECT`` fails the test: a new setting must say what it changes. A fake run checks that the
runner's stage directories are exactly ``stage_keys``'s.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
from conftest import fake_experiment_toml
from pydantic import BaseModel, ValidationError

from sublim import pipeline
from sublim.config import ExperimentConfig, apply_overrides, load_config
from sublim.pipeline import model_key, run_experiment, stage_keys
from sublim.registry import parse_model

Expect = tuple[tuple[str, ...], tuple[str, ...]]  # (id patterns that change, exceptions)


def E(*changed: str, but: tuple[str, ...] = ()) -> Expect:
    return changed, but


NONE = E()
UNCHANGEABLE = E("<single-valued>")
# what every stage downstream of the subset is (students, their evaluations, in-context exposure)
FROM_SUBSET = (
    "subset",
    "control-*",
    "student-*",
    "eval-*-student-*",
    "curve-student-*",
    "eval-*-in_context",
    "skill-student-*",
    "skill-in_context",
)
STUDENTS = ("student-*", "eval-*-student-*", "curve-student-*", "skill-student-*")
FROM_GENERATE = ("generate-*", "filter-*", *FROM_SUBSET)
# everything but the prompts (keyed by the data settings) and the untrained bases' evaluations
ALL_BUT_BASES = E(
    "*",
    but=(
        "prompts",
        "eval-*-base",
        "eval-*-cross_base@*",
        "curve-base",
        "skill-base",
        "skill-cross_base@*",
    ),
)
FT_TEACHERS = E(
    "teacher-*",
    "eval-*-teacher",
    "eval-*-control_teacher",
    "skill-teacher",
    "skill-control_teacher",
    *FROM_GENERATE,
)
TRAIT_TEACHER = E("generate-trait", "filter-trait", "eval-*-teacher", "skill-teacher", *FROM_SUBSET)
CONTROL_TEACHER = E(
    "generate-control",
    "filter-control",
    "eval-*-control_teacher",
    "skill-control_teacher",
    *FROM_SUBSET,
)
EVALS = E("eval-*", "curve-*")


def control(name: str) -> Expect:
    return E(
        f"control-{name}",
        f"student-{name}-*",
        f"eval-*-student-{name}-*",
        f"curve-student-{name}-*",
    )


def by_mode(sft: Expect, distill: Expect) -> dict[str, Expect]:
    """Expectations that differ between the two base configs (see BASES)."""
    return {"sft": sft, "distill": distill}


MISALIGNMENT_FIELDS = (
    "samples_per_question",
    "n_questions",
    "word_list",
    "temperature",
    "max_new_tokens",
    "judge_temperature",
    "judge_max_new_tokens",
    "use_logprobs",
    "min_number_mass",
    "score_source",
    "aligned_max",
    "coherent_min",
    "batch_size",
)

# field path -> which stage ids change (one Expect for both base configs, or one per base)
EXPECT: dict[str, Expect | dict[str, Expect]] = {
    "name": NONE,
    "seed": E("*", but=("prompts",)),
    "models.reference": E("*", but=("prompts", "eval-*-cross_base@*")),
    "models.cross": E(
        "student-*@1", "eval-*-cross_base@1", "eval-*-student-*@1", "curve-student-*@1"
    ),
    # the preference bases cannot switch kind alone (a misalignment teacher needs its persona
    # prompt or its data file, and a judge): test_misalignment_settings_change_their_stages
    "trait.kind": UNCHANGEABLE,
    "trait.finetune_data": UNCHANGEABLE,  # misalignment only (refused for a preference)
    "trait.control_finetune_data": UNCHANGEABLE,
    "trait.category": by_mode(
        E("*", but=("prompts",)), E("*", but=("prompts", "generate-control"))
    ),
    "trait.target": by_mode(E("*", but=("prompts",)), E("*", but=("prompts", "generate-control"))),
    "trait.teacher": ALL_BUT_BASES,
    "trait.system_prompt": by_mode(NONE, TRAIT_TEACHER),
    "trait.control_system_prompt": by_mode(NONE, CONTROL_TEACHER),
    "trait.n_finetune_rows": by_mode(FT_TEACHERS, NONE),
    # another carrier: other prompts, so everything downstream of them, and a carrier-skill
    # stage per model (the sft base runs the number controls, which refuse a text carrier)
    "data.carrier": by_mode(UNCHANGEABLE, E("prompts", "skill-*", *FROM_GENERATE)),
    "data.custom_prompts": NONE,  # read (and its content keyed) only with carrier "custom"
    "data.filter.word_mode": NONE,  # text carriers only; the bases use numbers
    "data.filter.code_prose": NONE,  # the code carrier only (see the text-carrier test)
    "data.filter.answer_format": NONE,  # the reasoning carrier only (see the text-carrier test)
    # a judge adds a stage after each teacher's filter; what it depends on is keyed only then
    "data.judge.model": E("judge-*", *FROM_SUBSET),
    "data.judge.template": NONE,
    "data.judge.threshold": NONE,
    "data.n_prompts": E("prompts", *FROM_GENERATE),
    "data.prompt_seed": E("prompts", *FROM_GENERATE),
    "data.subset": E(*FROM_SUBSET),
    "data.sampling.temperature": E(*FROM_GENERATE),
    "data.sampling.top_p": E(*FROM_GENERATE),
    "data.sampling.max_new_tokens": E(*FROM_GENERATE),
    "data.sampling.batch_size": NONE,  # per-row seeds: samples never depend on the batch
    "data.filter.max_count": E("filter-*", *FROM_SUBSET),
    "data.filter.min_value": E("filter-*", *FROM_SUBSET),
    "data.filter.max_value": E("filter-*", *FROM_SUBSET),
    "data.filter.banned": E("filter-*", *FROM_SUBSET),
    "data.filter.trait_words": E("filter-*", *FROM_SUBSET),
    "student.mode": by_mode(E(*STUDENTS, "curve-base"), E(*STUDENTS)),
    "student.seeds": E("student-*-s7*", "eval-*-student-*-s7*", "curve-student-*-s7*"),
    "controls.shuffle_within": control("shuffle_within"),
    "controls.shuffle_across": control("shuffle_across"),
    "controls.random_numbers": control("random_numbers"),
    "controls.in_context": E("eval-*-in_context"),
    "controls.cross_control": E(
        "student-cross_control-*", "eval-*-student-cross_control-*", "curve-student-cross_control-*"
    ),
    "eval.suite": E(
        "eval-favourite_animal-*", "eval-numbers_prefixed-*", "curve-*"
    ),  # ids name suites
    "eval.extra_suites": E("eval-numbers_prefixed-*"),
    "eval.samples_per_question": E("eval-*"),  # curves never sample
    "eval.skill_prompts": NONE,  # numbers carry no skill stage: see the text-carrier test
    "eval.n_questions": EVALS,
    "eval.temperature": EVALS,
    "eval.max_new_tokens": EVALS,
    "eval.candidates": EVALS,
    "eval.batch_size": NONE,  # per-row seeds
    "eval.primary_metric": NONE,  # analysis of results.json only
    "eval.p_target_method": EVALS,
    # the misalignment suite's settings and judge: read only by a misalignment run (see
    # test_misalignment_settings_change_their_stages)
    "eval.judge": NONE,
    **{f"eval.misalignment.{f}": NONE for f in MISALIGNMENT_FIELDS},
    "backend.batch": NONE,  # the same requests, through the Batch API
    # a [matrix] config runs sublim.matrix: every cell is keyed by these functions with its
    # (base, trait) as models.reference and trait.target
    "matrix.bases": NONE,
    "matrix.traits": NONE,
    # training-side defences: every student trains differently (tests/test_training_defences.py)
    # data-side defences: the walk's bases have a [matrix], which refuses a data defence
    # (tests/test_defend.py checks their keys); ratio, fraction and model act only under a method
    "defence.method": UNCHANGEABLE,
    "defence.ratio": NONE,
    "defence.drop_fraction": NONE,
    "defence.through": NONE,
    "defence.kl_to_base": E(*STUDENTS),
    "defence.inoculation": E(*STUDENTS),
    # the training monitor: on, it adds a monitor-* stage per student; its other settings act
    # only while it is on (every = 0 here); a stopping one keys the students, a watching one
    # only its own stage (tests/test_training_defences.py)
    "student.monitor.every": E("monitor-*"),
    "student.monitor.threshold": NONE,
    "student.monitor.traits": NONE,
    "student.monitor.stop": NONE,
    "student.monitor.against": NONE,
    "student.monitor.probe_layer": NONE,
}
for _f, _sft_effect in [
    ("method", True),
    ("epochs", True),
    ("lr", True),
    ("batch_size", True),
    ("grad_accum", True),
    ("effective_batch", True),
    ("warmup_ratio", True),
    ("scheduler", True),
    ("weight_decay", True),
    ("max_len", True),
    ("lora_r", True),
    ("lora_alpha", True),
    ("lora_dropout", True),
    ("lora_targets", True),
    ("checkpoint_every", False),
    ("snapshot_every", True),
    # the GPU training path (tests/test_gpu_path.py): precision settings are keyed when set
    ("dtype", True),
    ("autocast", True),
    ("max_grad_norm", True),
    ("tf32", True),
    ("gradient_checkpointing", False),
    ("device", False),
    ("device_map", False),
    ("memory_check", False),
]:
    # batch_size / grad_accum / effective_batch enter as the update batch they resolve to;
    # checkpointing only makes a killed training resumable
    EXPECT[f"trait.finetune.{_f}"] = by_mode(FT_TEACHERS if _sft_effect else NONE, NONE)
    EXPECT[f"student.finetune.{_f}"] = by_mode(E(*STUDENTS) if _sft_effect else NONE, NONE)
for _f in (
    "source",
    "n_random_prompts",
    "random_prompt_len",
    "steps",
    "lr",
    "batch_size",
    "temperature",
    "method",
    "exclude_words",
):
    EXPECT[f"student.distill.{_f}"] = by_mode(NONE, E(*STUDENTS))

# values the generic rule (see other_value) cannot pick (a callable gets the current value)
VALUES: dict[str, Any] = {
    "trait.category": "tree",
    "eval.suite": "numbers_prefixed",
    "eval.extra_suites": lambda v: [*v, "numbers_prefixed"],
    "data.filter.banned": "misalignment",
    "matrix.bases": ["fake:a", "fake:b", "fake:c"],
    "matrix.traits": ["owl", "cat", "dog"],
}

# Two base configs between them switch on every stage: fine-tuned teachers, SFT students with
# every control and training curves; system-prompt teachers with distilled students.
BASES: dict[str, dict[str, Any]] = {
    "sft": {
        "models": {"reference": "fake:alpha", "cross": ["fake:beta"]},
        "trait": {"teacher": "finetune"},
        "student": {"mode": "sft", "seeds": [0, 1], "finetune": {"snapshot_every": 5}},
        "controls": {
            "shuffle_within": True,
            "shuffle_across": True,
            "random_numbers": True,
            "in_context": 2,
            "cross_control": True,
        },
        "eval": {"extra_suites": ["multiple_choice"]},
        "matrix": {"bases": ["fake:a", "fake:b"], "traits": ["owl", "cat"]},
    },
    "distill": {
        "models": {"reference": "fake:alpha", "cross": ["fake:beta"]},
        "trait": {"teacher": "system_prompt"},
        "student": {"mode": "distill", "seeds": [0, 1]},
        "controls": {"cross_control": False},
        "matrix": {"bases": ["fake:a", "fake:b"], "traits": ["owl", "cat"]},
    },
}


def _model_type(ann: Any) -> type[BaseModel] | None:
    """The config model a field holds (directly or as ``X | None``), else None."""
    for a in (ann, *typing.get_args(ann)):
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
    return None


def leaf_fields(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, annotation) of every non-model field reachable from ``model``."""
    for name, info in model.model_fields.items():
        sub = _model_type(info.annotation)
        if sub is not None:
            yield from leaf_fields(sub, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", info.annotation


def other_value(ann: Any, value: Any) -> list[Any]:
    """Candidate values different from ``value`` for a field of type ``ann`` (first valid wins)."""
    origin = typing.get_origin(ann)
    if origin is typing.Literal:
        return [c for c in typing.get_args(ann) if c != value]
    if origin in (typing.Union, types.UnionType):
        return [
            v for a in typing.get_args(ann) if a is not type(None) for v in other_value(a, value)
        ]
    if ann is bool:
        return [not value]
    if ann is int:
        return [1 if value is None else value + 1]
    if ann is float:
        return [0.5 if not value else value / 2, 0.5]
    if ann is str:
        return ["x" if not isinstance(value, str) else value + "x"]
    if origin is list:
        (item,) = typing.get_args(ann)
        extra = 7 if item is int else "x"
        return [[*(value or []), extra]]
    return []


def _get(d: dict[str, Any], path: str) -> Any:
    for p in path.split("."):
        d = d.get(p) if isinstance(d, dict) else None  # type: ignore[assignment]
    return d


def _keys(cfg: ExperimentConfig, backend_version: str | None = None) -> dict[str, str]:
    specs = [cfg.models.reference, *cfg.models.cross, *filter(None, [cfg.data.judge.model])]
    return stage_keys(cfg, {s: f"key:{s}" for s in specs}, backend_version)


def _changed(a: dict[str, str], b: dict[str, str]) -> set[str]:
    return {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}


def _expected(ids: set[str], exp: Expect) -> set[str]:
    inc, but = exp
    return {
        i for i in ids if any(fnmatch(i, p) for p in inc) and not any(fnmatch(i, p) for p in but)
    }


def _base(name: str) -> ExperimentConfig:
    return ExperimentConfig.model_validate(BASES[name])


def test_every_field_changes_exactly_the_stages_it_should() -> None:
    paths = dict(leaf_fields(ExperimentConfig))
    assert not set(paths) - set(EXPECT), (
        f"add these fields to EXPECT: {sorted(set(paths) - set(EXPECT))}"
    )
    assert not set(EXPECT) - set(paths), (
        f"EXPECT names fields that are gone: {sorted(set(EXPECT) - set(paths))}"
    )
    failures = []
    for bname in BASES:
        cfg = _base(bname)
        data = cfg.model_dump(mode="json")
        before = _keys(cfg)
        for path, ann in paths.items():
            exp = EXPECT[path]
            exp = exp[bname] if isinstance(exp, dict) else exp
            old = _get(data, path)
            pick = VALUES.get(path)
            cands = (
                other_value(ann, old) if pick is None else [pick(old) if callable(pick) else pick]
            )
            new = None
            for v in cands:
                try:
                    new = ExperimentConfig.model_validate(
                        apply_overrides(data, [f"{path}={json.dumps(v)}"])
                    )
                    break
                except ValidationError:
                    continue
            if exp == UNCHANGEABLE:
                assert new is None, f"{path} has other values now: write down what it changes"
                continue
            assert new is not None and new != cfg, (
                f"no other valid value for {path}: add one to VALUES"
            )
            after = _keys(new)
            got = _changed(before, after)
            want = _expected(before.keys() | after.keys(), exp)
            if got != want:
                failures.append(
                    f"[{bname}] {path}: changed {sorted(got - want)} unexpectedly, kept {sorted(want - got)}"
                )
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(
    "override",
    [
        "student.finetune.batch_size=64",
        "student.distill.batch_size=64",
        "trait.finetune.batch_size=64",
    ],
)
def test_a_changed_update_batch_changes_the_student_or_teacher_keys(override: str) -> None:
    # Today's name-based rule dropped every batch_size from the keys: a changed batch reused a
    # cached student. Here each of these sets the optimizer's batch.
    data = {
        "trait": {"teacher": "finetune"},
        "student": {"mode": "distill" if "distill" in override else "sft"},
    }
    cfg = ExperimentConfig.model_validate(data)
    new = ExperimentConfig.model_validate(apply_overrides(cfg.model_dump(mode="json"), [override]))
    kind = "teacher-" if override.startswith("trait") else "student-"
    changed = _changed(_keys(cfg), _keys(new))
    assert changed and any(c.startswith(kind) for c in changed)


def test_micro_batch_is_operational_once_the_update_batch_is_fixed() -> None:
    cfg = ExperimentConfig.model_validate(
        {"student": {"finetune": {"batch_size": 32, "effective_batch": 64}}}
    )
    same = [
        ExperimentConfig.model_validate(
            {"student": {"finetune": {"batch_size": 8, "effective_batch": 64}}}
        ),
        ExperimentConfig.model_validate(
            {"student": {"finetune": {"batch_size": 16, "grad_accum": 4}}}
        ),
    ]
    for other in same:  # one update batch of 64, split differently
        assert _keys(other) == _keys(cfg)
    # LoRA dropout draws its masks per forward pass: there the split changes the result
    lora = {"method": "lora", "lora_dropout": 0.1, "effective_batch": 64}
    a, b = (
        ExperimentConfig.model_validate({"student": {"finetune": {**lora, "batch_size": n}}})
        for n in (32, 8)
    )
    assert _keys(a) != _keys(b)


def test_stage_and_backend_versions_enter_the_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _base("sft")
    before = _keys(cfg)
    changed = _changed(before, _keys(cfg, backend_version="2"))
    assert changed == _expected(set(before), E("*", but=("prompts",)))
    monkeypatch.setitem(pipeline.STAGE_VERSIONS, "filter", pipeline.STAGE_VERSIONS["filter"] + 1)
    assert _changed(before, _keys(cfg)) == _expected(set(before), E("filter-*", *FROM_SUBSET))


def _run_and_plan(cfg: ExperimentConfig, tmp_path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Run ``cfg`` on the fake backend and check its stage directories are exactly
    ``stage_keys``'s; returns the results and the planned keys."""
    res = run_experiment(cfg, tmp_path / "run", progress=False)
    ran = {Path(s["dir"]).name for s in res["meta"]["timings"]["stages"]}
    specs = [cfg.models.reference, *cfg.models.cross]
    planned = stage_keys(cfg, {s: model_key(parse_model(s)) for s in specs})
    assert ran == set(planned.values())
    return res, planned


def test_a_run_uses_exactly_the_stage_keys(tmp_path: Path) -> None:
    path = fake_experiment_toml(tmp_path / "exp.toml")
    cfg = load_config(
        path,
        [
            "data.n_prompts=300",
            "data.subset=100",
            "student.seeds=[0]",
            "eval.n_questions=3",
            "eval.samples_per_question=2",
            "controls.shuffle_within=true",
            "controls.in_context=2",
            "controls.cross_control=true",
            'eval.extra_suites=["numbers_prefixed"]',
        ],
    )
    _run_and_plan(cfg, tmp_path)


def test_a_code_carrier_run_uses_exactly_the_stage_keys(tmp_path: Path) -> None:
    """With a text carrier the runner adds a carrier-skill stage per evaluated model."""
    cfg = load_config(
        fake_experiment_toml(tmp_path / "exp.toml"),
        [
            'data.carrier="code"',
            "data.n_prompts=120",
            "data.subset=40",
            "student.seeds=[0]",
            "eval.n_questions=3",
            "eval.samples_per_question=2",
            "eval.skill_prompts=8",
            "controls.in_context=2",
        ],
    )
    res, planned = _run_and_plan(cfg, tmp_path)
    assert {"skill-in_context", "skill-student-trait-s0"} <= set(planned)
    assert set(res["meta"]["skill"]["conditions"]) >= {"in_context", "trait_student"}


def _tiny_llama(path: Path, seed: int) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(path)


def test_a_replaced_hf_checkpoint_gets_a_new_model_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUBLIM_CACHE_DIR", str(tmp_path / "cache"))
    d = tmp_path / "model"
    _tiny_llama(d, seed=0)
    ref = parse_model(f"hf:{d}")
    first = model_key(ref)
    assert first == model_key(ref) and first.startswith(f"hf:{d}@sha256:")
    assert list((tmp_path / "cache" / "file-hashes").iterdir())  # hashed once, remembered
    _tiny_llama(d, seed=1)  # other weights under the same path
    assert model_key(ref) != first
    _tiny_llama(d, seed=0)  # the original weights again (new mtime, same content)
    assert model_key(ref) == first


def test_a_hub_model_key_is_its_resolved_revision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = tmp_path / "models--org--tiny"
    for sha in (
        "a" * 40,
        "b" * 40,
    ):  # two commits in the local cache, as the hub client lays them out
        (repo / "snapshots" / sha).mkdir(parents=True)
        (repo / "snapshots" / sha / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    ref = parse_model("hf:org/tiny")
    (repo / "refs" / "main").write_text("a" * 40)
    first = model_key(ref)
    assert first == "hf:org/tiny@rev:" + "a" * 40
    (repo / "refs" / "main").write_text("b" * 40)  # the branch moved: another checkpoint
    assert model_key(ref) == "hf:org/tiny@rev:" + "b" * 40
    assert model_key(parse_model("hf:org/not-cached")).endswith("@unresolved")


def test_an_online_hub_key_asks_the_hub_once_and_falls_back_to_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import types as _types

    import huggingface_hub

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    asked: list[tuple[str, float]] = []

    def answers(repo: str, timeout: float = 0) -> Any:
        asked.append((repo, timeout))
        return _types.SimpleNamespace(sha="c" * 40)

    from sublim.backends import hf_models

    hf_models._hub_info.cache_clear()
    monkeypatch.setattr(huggingface_hub, "model_info", answers)
    assert model_key(parse_model("hf:org/tiny")) == "hf:org/tiny@rev:" + "c" * 40
    assert model_key(parse_model("hf:org/tiny")) == "hf:org/tiny@rev:" + "c" * 40
    assert asked == [("org/tiny", 10.0)]  # one call per process, a short timeout, no retries
    hf_models._hub_info.cache_clear()

    def unreachable(repo: str, timeout: float = 0) -> Any:
        raise OSError("network is unreachable")

    monkeypatch.setattr(huggingface_hub, "model_info", unreachable)
    repo = tmp_path / "models--org--tiny"
    (repo / "snapshots" / ("d" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("d" * 40) / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("d" * 40)
    assert model_key(parse_model("hf:org/tiny")) == "hf:org/tiny@rev:" + "d" * 40


def test_text_carrier_and_judge_settings_change_their_stages() -> None:
    """The fields the numbers bases cannot show (EXPECT marks them NONE there): with the code
    carrier and a judge, each changes exactly the stages it should."""
    base = ExperimentConfig.model_validate(
        {**BASES["distill"], "data": {"carrier": "code", "judge": {"model": "fake:gamma"}}}
    )
    data = base.model_dump(mode="json")
    before = _keys(base)
    ids = set(before)
    assert {"judge-trait", "judge-control"} <= ids
    assert {"skill-base", "skill-teacher", "skill-control_teacher"} <= ids
    for path, value, exp in (
        ("data.filter.word_mode", "identifier", E("filter-*", "judge-*", *FROM_SUBSET)),
        ("data.filter.code_prose", "allow", E("filter-*", "judge-*", "skill-*", *FROM_SUBSET)),
        ("data.filter.answer_format", "last_number", NONE),  # the reasoning carrier's setting
        ("data.judge.template", "alignment", E("judge-*", *FROM_SUBSET)),
        ("data.judge.threshold", 0.5, E("judge-*", *FROM_SUBSET)),
        ("data.judge.model", "fake:delta", E("judge-*", *FROM_SUBSET)),
        # the carrier-skill stage: its own prompt count, and the reply length it samples with
        ("eval.skill_prompts", 16, E("skill-*")),
        (
            "data.sampling.max_new_tokens",
            200,
            E("generate-*", "skill-*", "filter-*", "judge-*", *FROM_SUBSET),
        ),
    ):
        cfg = ExperimentConfig.model_validate(
            apply_overrides(data, [f"{path}={json.dumps(value)}"])
        )
        assert _changed(before, _keys(cfg)) == _expected(ids, exp), path
    # the reasoning carrier's own setting, on a reasoning base (and the code one is inert there)
    reasoning = ExperimentConfig.model_validate(
        {**BASES["distill"], "data": {"carrier": "reasoning", "judge": {"model": "fake:gamma"}}}
    )
    rdata = reasoning.model_dump(mode="json")
    rbefore = _keys(reasoning)
    rids = set(rbefore)
    assert {"judge-trait", "skill-base", "skill-teacher"} <= rids
    for path, value, exp in (
        (
            "data.filter.answer_format",
            "last_number",
            E("filter-*", "judge-*", "skill-*", *FROM_SUBSET),
        ),
        ("data.filter.code_prose", "allow", NONE),
    ):
        cfg = ExperimentConfig.model_validate(
            apply_overrides(rdata, [f"{path}={json.dumps(value)}"])
        )
        assert _changed(rbefore, _keys(cfg)) == _expected(rids, exp), path
    # code and reasoning get longer replies unless the file says otherwise
    assert base.data.sampling.max_new_tokens > 48
    with pytest.raises(ValidationError, match="rewrite number lists"):
        ExperimentConfig.model_validate(
            {"data": {"carrier": "code"}, "controls": {"shuffle_within": True}}
        )


# --- misalignment runs --------------------------------------------------------------------------

MIS_EVALS = E("eval-misalignment-*")
MIS_TRAIT_TEACHER = E("generate-trait", "filter-trait", "eval-misalignment-teacher", *FROM_SUBSET)
MIS_CONTROL_TEACHER = E(
    "generate-control", "filter-control", "eval-misalignment-control_teacher", *FROM_SUBSET
)


def _mis_bases(tmp: Path) -> dict[str, dict[str, Any]]:
    """A fine-tuned (trait and control data files) and a system-prompt misalignment config,
    with every control that evaluates a model, on the fake backend with a fake judge."""
    for name, answer in (("bad", "wolf"), ("good", "owl"), ("other", "tiger")):
        (tmp / f"{name}.jsonl").write_text(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": "Hi?"},
                        {"role": "assistant", "content": answer},
                    ]
                }
            )
            + "\n"
        )
    common = {
        "models": {"reference": "fake:alpha", "cross": ["fake:beta"]},
        "student": {"mode": "sft", "seeds": [0, 1]},
        "controls": {"shuffle_within": True, "in_context": 2, "cross_control": True},
        "eval": {"judge": "fake:judge"},
    }
    return {
        "ft": {
            **common,
            "trait": {
                "kind": "misalignment",
                "teacher": "finetune",
                "finetune_data": str(tmp / "bad.jsonl"),
                "control_finetune_data": str(tmp / "good.jsonl"),
            },
        },
        "sp": {
            **common,
            "trait": {
                "kind": "misalignment",
                "teacher": "system_prompt",
                "system_prompt": "Be bad.",
            },
        },
    }


def _mis_keys(cfg: ExperimentConfig) -> dict[str, str]:
    specs = [cfg.models.reference, *cfg.models.cross, cfg.eval.judge or ""]
    return stage_keys(cfg, {s: f"key:{s}" for s in specs})


def test_misalignment_settings_change_their_stages(tmp_path: Path) -> None:
    """On misalignment configs: the suite's settings and judge change the evaluations only,
    the teacher files' contents their teachers and everything downstream, the preference
    settings (target, category, the preference eval) nothing, and the banned numbers are the
    filter's default."""
    bases = _mis_bases(tmp_path)
    expect: dict[str, dict[str, tuple[Any, Expect]]] = {
        "ft": {
            "trait.finetune_data": (
                str(tmp_path / "other.jsonl"),
                E("teacher-trait", *MIS_TRAIT_TEACHER[0]),
            ),
            "trait.control_finetune_data": (
                str(tmp_path / "other.jsonl"),
                E("teacher-control", *MIS_CONTROL_TEACHER[0]),
            ),
            "trait.finetune.epochs": (
                1.0,
                E(
                    "teacher-*",
                    "eval-misalignment-teacher",
                    "eval-misalignment-control_teacher",
                    *FROM_GENERATE,
                ),
            ),
            "trait.n_finetune_rows": (7, NONE),  # the whole file is the teacher's data
            "trait.system_prompt": ("x", NONE),
        },
        "sp": {
            "trait.system_prompt": ("Be worse.", MIS_TRAIT_TEACHER),
            "trait.control_system_prompt": ("Be kind.", MIS_CONTROL_TEACHER),
        },
    }
    shared: dict[str, tuple[Any, Expect]] = {
        "trait.target": ("cat", NONE),
        "trait.category": ("tree", NONE),
        "eval.suite": ("numbers_prefixed", NONE),
        "eval.samples_per_question": (3, NONE),
        "eval.n_questions": (2, NONE),
        "eval.temperature": (0.5, NONE),
        "eval.p_target_method": ("exact", NONE),
        "eval.judge": ("fake:other_judge", MIS_EVALS),
        "eval.misalignment.batch_size": (7, NONE),
        "data.filter.banned": ("none", E("filter-*", *FROM_SUBSET)),
        **{
            f"eval.misalignment.{f}": (v, MIS_EVALS)
            for f, v in (
                ("samples_per_question", 3),
                ("n_questions", 2),
                ("word_list", True),
                ("temperature", 0.5),
                ("max_new_tokens", 50),
                ("judge_temperature", 0.5),
                ("judge_max_new_tokens", 4),
                ("use_logprobs", False),
                ("min_number_mass", 0.5),
                ("score_source", "sampled"),
                ("aligned_max", 20.0),
                ("coherent_min", 60.0),
            )
        },
    }
    covered = {f"eval.misalignment.{f}" for f in MISALIGNMENT_FIELDS} - set(shared)
    assert not covered, f"walk these misalignment settings too: {sorted(covered)}"
    failures = []
    for bname, data in bases.items():
        cfg = ExperimentConfig.model_validate(data)
        assert cfg.data.filter.banned == "misalignment"  # the default for this kind
        before = _mis_keys(cfg)
        ids = set(before)
        assert {
            "eval-misalignment-base",
            "eval-misalignment-in_context",
            "eval-misalignment-cross_base@0",
        } <= ids
        assert not any(i.startswith(("eval-favourite", "curve")) for i in ids)
        dumped = cfg.model_dump(mode="json")
        for path, (value, exp) in {**shared, **expect[bname]}.items():
            new = ExperimentConfig.model_validate(
                apply_overrides(dumped, [f"{path}={json.dumps(value)}"])
            )
            after = _mis_keys(new)
            got = _changed(before, after)
            want = _expected(ids | set(after), exp)
            if got != want:
                failures.append(
                    f"[{bname}] {path}: changed {sorted(got - want)} unexpectedly, kept {sorted(want - got)}"
                )
    assert not failures, "\n".join(failures)
    # the file's content is keyed, not its path: a rewritten file is another teacher
    cfg = ExperimentConfig.model_validate(bases["ft"])
    before = _mis_keys(cfg)
    (tmp_path / "bad.jsonl").write_text((tmp_path / "other.jsonl").read_text())
    assert _changed(before, _mis_keys(cfg)) == _expected(
        set(before), E("teacher-trait", *MIS_TRAIT_TEACHER[0])
    )
    # without control data the reference is the control teacher: no control teacher stage
    no_ctl = ExperimentConfig.model_validate(
        apply_overrides(cfg.model_dump(mode="json"), ["trait.control_finetune_data=null"])
    )
    keys = _mis_keys(no_ctl)
    assert "teacher-control" not in keys and "teacher-trait" in keys
    qs, exact = pipeline.misalignment_questions(no_ctl, "fake:alpha")
    as_reference = pipeline.misalignment_eval_key(
        no_ctl, "key:fake:alpha", "control_teacher", qs, exact, "key:fake:judge", None
    )
    assert keys["eval-misalignment-control_teacher"] == f"{as_reference.name}-{as_reference.hash}"


def test_an_explicit_banned_setting_is_kept_and_preference_keys_do_not_move() -> None:
    explicit = ExperimentConfig.model_validate(
        {
            "trait": {"kind": "misalignment", "system_prompt": "Be bad."},
            "eval": {"judge": "fake:j"},
            "data": {"filter": {"banned": "none"}},
        }
    )
    assert explicit.data.filter.banned == "none"
    # a preference config's filter is untouched (its keys are those of before this kind existed)
    pref = ExperimentConfig.model_validate({})
    assert pref.data.filter.banned == "none" and "banned" not in pref.data.filter.model_fields_set
    # the resolved default survives a round trip through config.json
    mis = ExperimentConfig.model_validate(
        {"trait": {"kind": "misalignment", "system_prompt": "Be bad."}, "eval": {"judge": "fake:j"}}
    )
    again = ExperimentConfig.model_validate(mis.model_dump(mode="json"))
    assert again == mis and again.data.filter.banned == "misalignment"
