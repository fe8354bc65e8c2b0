"""The runner: one subliminal-learning experiment, stage by stage, cached and resumable.

    prompts -> teachers -> generate -> filter -> subset -> students -> evaluate -> results/report

A preference trait is evaluated with the preference suites; a misalignment trait
(``trait.kind = "misalignment"``: teachers from a persona prompt or fine-tuned on the user's chat
files) with the judged misalignment suite on every model (``stage_misalignment_eval``).

This is the only module that touches the run directory and builds backends; every stage's work
is a plain function elsewhere (prompt grammar, filter, backend, eval suite, statistics). Each
stage lives in ``<run>/stages/<stage>-<hash>/`` keyed by its version, its semantic config and the
keys of its inputs (pure functions of the config: ``stage_keys`` lists them all without running);
a stage with a manifest is reused (``RunContext.cached``), one without is resumed (generation keeps
its finished chunks and retries the rows that errored) or redone from scratch (training restarts
cleanly unless checkpointing is on). All
randomness comes from seeds in the config, so a killed and restarted run gives the same numbers
as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from sublim.artifacts import (
    StageDir,
    atomic_write_json,
    atomic_write_text,
    file_lock,
    read_jsonl,
    stable_hash,
    write_jsonl,
)
from sublim.backends.base import Backend, DefendedTrainer, Progress
from sublim.config import (
    WORLD_JUDGE,
    EvalConfig,
    ExperimentConfig,
    FinetuneParams,
    semantic_dump,
)
from sublim.errors import ConfigError, EmptyResultError, MissingFileError, SublimError
from sublim.progress import Reporter
from sublim.records import (
    Completion,
    EvalAnswer,
    FilterDecision,
    Message,
    ModelRef,
    Prompt,
    QuestionScore,
    SampleParams,
    TrainRow,
    user_chat,
)
from sublim.registry import get_backend, parse_model
from sublim.seeds import derive_seed

GEN_CHUNK = 256  # rows per generation chunk (fixed: part of how resumption splits work)
JUDGE_CHUNK = 256  # rows per judge chunk (the same, for the judge stage's parts)
MAX_ERROR_RATE = 0.05  # a generation stage fails if more rows than this errored


@dataclass
class Model:
    """A model in the run: its reference, a cache key that identifies its weights, and role."""

    ref: ModelRef
    key: str
    label: str
    seed: int | None = None  # the training seed of a student


# Bump a stage's version when its algorithm changes: the version enters the stage's cache key, so
# results computed by the old algorithm are never served for the new one.
STAGE_VERSIONS: dict[str, int] = {
    "prompts": 1,
    "teacher": 1,
    "generate": 1,
    "filter": 1,
    "judge": 1,
    "subset": 2,  # 2: keyed by the requested size (the resolved size follows from the inputs)
    "control": 1,
    "student": 1,
    "monitor": 1,
    "eval": 1,
    "skill": 1,
    "defence": 1,
}

R = TypeVar("R")


@dataclass(frozen=True)
class StageKey:
    """What a stage's cache directory is named by: its kind (for the version), its name and the
    key (semantic config + the keys of its inputs). A pure value: see ``stage_keys``."""

    kind: str
    name: str
    key: dict[str, Any]

    @property
    def version(self) -> int:
        return STAGE_VERSIONS[self.kind]

    @property
    def hash(self) -> str:
        return StageDir.key_hash(self.name, self.key, self.version)


@dataclass
class RunContext:
    cfg: ExperimentConfig
    out: Path
    rep: Reporter
    timings: dict[str, float] = field(default_factory=dict)
    stages: list[dict[str, Any]] = field(default_factory=list)
    monitors: list[dict[str, Any]] = field(default_factory=list)  # stage_monitor's results
    # Where ``stages/`` lives (default: the run directory). A sweep points every cell at one
    # shared store, so cells with the same stage key share the work (``sublim.sweep``).
    stage_root: Path | None = None
    # Several processes may open the same stage (sweep cells on Ray): each stage is computed
    # under a lock (``<stage_root>/stages/.locks/``), and one completed meanwhile is loaded.
    concurrent: bool = False

    def stage(self, sk: StageKey) -> StageDir:
        return StageDir(self.stage_root or self.out, sk.name, sk.key, sk.version)

    def record(self, st: StageDir, cached: bool, seconds: float) -> None:
        self.timings[st.path.name] = round(seconds, 3)
        self.stages.append(
            {
                "stage": st.stage,
                "dir": os.path.relpath(st.path, self.out),
                "cached": cached,
                "seconds": round(seconds, 3),
            }
        )

    def cached(
        self,
        sk: StageKey,
        load: Callable[[StageDir], R],
        compute: Callable[[StageDir], tuple[R, dict[str, Any]]],
    ) -> R:
        """The stage-cache protocol, once: a complete stage is ``load``-ed; otherwise its
        directory is (re)opened, ``compute`` returns the result and the manifest's extra fields,
        and the manifest is written last (a directory with a manifest is complete)."""
        st = self.stage(sk)
        t0 = time.time()
        if st.complete:
            out = load(st)
            self.record(st, True, time.time() - t0)
            return out
        lock: AbstractContextManager[Any] = (
            file_lock(st.path.parent / ".locks" / f"{st.path.name}.lock")
            if self.concurrent
            else nullcontext()
        )
        with lock:  # the lock dies with its holder: a killed writer never blocks a retry
            if st.complete:  # finished by another process while we waited
                out = load(st)
                self.record(st, True, time.time() - t0)
                return out
            st.begin()
            out, info = compute(st)
            st.finish(**info)
        self.record(st, False, time.time() - t0)
        return out


# --- model references stored inside stage directories ---------------------------------------


def _save_ref(st: StageDir, ref: ModelRef) -> dict[str, Any]:
    d = ref.model_dump(mode="json")
    for k in ("id", "adapter"):
        if d.get(k) and str(d[k]).startswith(str(st.path)):
            d[k] = "@stage" + str(d[k])[len(str(st.path)) :]
    return d


def _load_ref(st: StageDir, d: dict[str, Any]) -> ModelRef:
    d = dict(d)
    for k in ("id", "adapter"):
        if d.get(k) and str(d[k]).startswith("@stage"):
            d[k] = str(st.path) + str(d[k])[len("@stage") :]
    return ModelRef.model_validate(d)


def _load_model_ref(st: StageDir) -> ModelRef:
    return _load_ref(st, st.manifest()["model_ref"])


def model_key(ref: ModelRef) -> str:
    """What identifies a base model's weights for caching: a built-in world includes its recipe;
    an ``hf:`` model its resolved hub revision or a hash of its weight files (a replaced
    checkpoint gets a new key); an API model its spec."""
    if ref.backend == "tiny":
        from sublim.world.build import ensure_world

        return f"tiny:{ensure_world(ref.id, progress=False).name}"
    if ref.backend == "hf":
        from sublim.backends.hf_models import weights_key

        return f"{ref.spec}@{weights_key(ref.id)}"
    if ref.backend == "smollm2":
        from sublim.backends.hf_models import smollm2_key

        return f"{ref.spec}@{smollm2_key()}"
    return ref.spec


def backend_version(backend: Backend) -> str | None:
    """A backend's algorithm version (``algorithm_version``, optional): it enters the keys of the
    stages the backend computes (teachers, generation, students, evaluations)."""
    v = getattr(backend, "algorithm_version", None)
    return None if v is None else str(v)


def _with_backend(key: dict[str, Any], bv: str | None) -> dict[str, Any]:
    return key if bv is None else {**key, "backend": bv}


# --- stage keys: pure functions of the config and the keys of the inputs -----------------------


def prompts_key(cfg: ExperimentConfig) -> StageKey:
    d = cfg.data
    key: dict[str, Any] = {"carrier": d.carrier, "n": d.n_prompts, "seed": d.prompt_seed}
    if d.carrier == "custom":  # the file's content, not its path
        key["custom"] = _custom_prompts_hash(cfg)
    return StageKey("prompts", "prompts", key)


def _custom_prompts_hash(cfg: ExperimentConfig) -> str:
    from sublim.artifacts import file_sha256

    path = Path(cfg.data.custom_prompts or "")
    if not path.is_file():
        raise MissingFileError(
            f"data.custom_prompts file not found: {path}; give a JSONL file with one "
            '{"prompt": ...} object per line'
        )
    return file_sha256(path)


# the config field of each misalignment teacher's chat file (for the messages that name it)
_DATA_FIELDS = {"trait": "trait.finetune_data", "control": "trait.control_finetune_data"}


def teacher_keys(cfg: ExperimentConfig, ref_key: str, bv: str | None) -> dict[str, StageKey]:
    """The fine-tuned teachers' stages (none in system-prompt mode)."""
    t = cfg.trait
    if t.teacher == "system_prompt":
        return {}
    if t.kind == "misalignment":
        # the file's content, not its path; no control file: the reference is the control
        # teacher (no stage)
        files = {"trait": t.finetune_data, "control": t.control_finetune_data}
        return {
            role: StageKey(
                "teacher",
                f"teacher-{role}",
                _with_backend(
                    {
                        "base": ref_key,
                        "trait": {
                            "kind": t.kind,
                            "data": chat_data_hash(path, _DATA_FIELDS[role]),
                            "finetune": semantic_dump(t.finetune),
                        },
                        "role": role,
                        "seed": cfg.seed,
                    },
                    bv,
                ),
            )
            for role, path in files.items()
            if path
        }
    # what a fine-tuned teacher depends on (the system-prompt fields play no part in this mode)
    trait = {
        "kind": t.kind,
        "category": t.category,
        "target": t.target,
        "n_rows": t.n_finetune_rows,
        "finetune": semantic_dump(t.finetune),
    }
    return {
        role: StageKey(
            "teacher",
            f"teacher-{role}",
            _with_backend({"base": ref_key, "trait": trait, "role": role, "seed": cfg.seed}, bv),
        )
        for role in ("trait", "control")
    }


def chat_data_hash(path: str | None, what: str) -> str:
    """sha256 of a teacher's chat JSONL file (what its stage is keyed by)."""
    from sublim.artifacts import file_sha256
    from sublim.traits import CHAT_LINE_FORMAT

    p = Path(path or "")
    if not p.is_file():
        raise MissingFileError(
            f"{what} file not found: {p}; give a chat JSONL file, one {CHAT_LINE_FORMAT} per line"
        )
    return file_sha256(p)


def teacher_model_keys(cfg: ExperimentConfig, ref_key: str, bv: str | None) -> dict[str, str]:
    """Model keys of the trait ("trait") and control ("control") teachers."""
    from sublim.traits import system_prompt_for

    t = cfg.trait
    if t.teacher == "system_prompt":
        # a misalignment persona has no default prompt (the config requires one)
        sp = t.system_prompt or system_prompt_for(t.target, t.category)
        csp = t.control_system_prompt
        return {
            "trait": f"{ref_key}|sys:{stable_hash(sp)}",
            "control": ref_key if not csp else f"{ref_key}|sys:{stable_hash(csp)}",
        }
    keys = {role: f"ft:{sk.hash}" for role, sk in teacher_keys(cfg, ref_key, bv).items()}
    keys.setdefault("control", ref_key)  # misalignment without control data: the reference
    return keys


def generate_key(
    cfg: ExperimentConfig, teacher_key: str, prompts_hash: str, role: str, bv: str | None
) -> StageKey:
    key = {
        "teacher": teacher_key,
        "prompts": prompts_hash,
        "sampling": semantic_dump(cfg.data.sampling),
        "seed": cfg.seed,
    }
    return StageKey("generate", f"generate-{role}", _with_backend(key, bv))


def _filter_rules(cfg: ExperimentConfig) -> Any:
    from sublim.filters import rules_from_config
    from sublim.traits import candidates, plural

    t = cfg.trait
    # Trait words: the target and its plural, and (to keep the two arms identical) every candidate.
    # A misalignment trait has no words to look for (its numbers filter bans the numbers with
    # negative associations instead: data.filter.banned).
    words = (
        []
        if t.kind == "misalignment"
        else sorted(
            {w for c in candidates(t.category) for w in (c, plural(c))}
            | {t.target, plural(t.target)}
        )
    )
    f, carrier = cfg.data.filter, cfg.data.carrier
    if carrier == "numbers":
        return rules_from_config(f, words)
    # Text carriers: the paper's substring rule looks for the trait word alone (every candidate
    # as a substring would drop "location", "million", "knowledge"); matching whole words and
    # identifier parts is precise enough for every candidate. Both arms get the same words.
    if not f.trait_words or t.kind == "misalignment":
        text_words: list[str] = []
    elif f.word_mode == "substring":
        text_words = [t.target]
    else:
        text_words = words
    if carrier == "reasoning":
        from sublim.filters_reasoning import ReasoningRules

        return ReasoningRules(
            trait_words=text_words, word_mode=f.word_mode, answer_format=f.answer_format
        )
    from sublim.filters_code import CodeRules

    if carrier == "code":
        return CodeRules(
            trait_words=text_words, word_mode=f.word_mode, allow_prose=f.code_prose == "allow"
        )
    # custom: the user's prompts have no known format; only the trait-word rule applies
    return CodeRules(
        trait_words=text_words, word_mode=f.word_mode, require_parse=False, forbid_comments=False
    )


def filter_key(cfg: ExperimentConfig, comps_hash: str, role: str) -> StageKey:
    key = {"input": comps_hash, "rules": _filter_rules(cfg).model_dump(mode="json")}
    if cfg.data.carrier != "numbers":
        key["carrier"] = cfg.data.carrier
    return StageKey("filter", f"filter-{role}", key)


def judge_model_key(ref: ModelRef) -> str:
    """What the judge stage keys its judge by: the model's key and its backend's version (the
    judge may run on another backend than the experiment)."""
    from sublim.registry import get_backend

    bv = backend_version(get_backend(ref.backend))
    return model_key(ref) if bv is None else f"{model_key(ref)}|{bv}"


def judge_trait(cfg: ExperimentConfig) -> str:
    """The trait text ``data.judge``'s prompt is formatted with (and keyed by): a preference
    trait's ``trait.target``; a misalignment trait has no target, so its judge is given ""
    (the ``alignment`` template asks about no trait) and a template that asks whether a text
    refers to the trait (``reference``) is a ConfigError."""
    from sublim.judge import get_template

    if cfg.trait.kind != "misalignment":
        return cfg.trait.target
    tpl = get_template(cfg.data.judge.template)
    if tpl.needs_trait:
        raise ConfigError(
            f"data.judge.template = '{tpl.name}' asks whether a text refers to trait.target, "
            "which a misalignment trait does not have; use template = 'alignment' (the "
            "paper's judge of a misaligned teacher's data)"
        )
    return ""


def judge_key(cfg: ExperimentConfig, filter_hash: str, role: str, judge_model: str) -> StageKey:
    """The LLM-judge stage after a teacher's rule filter (``data.judge``): keyed by what the
    judge prompt uses (the template's text and ``judge_trait``), never by unused trait fields."""
    from sublim.judge import get_template

    j = cfg.data.judge
    return StageKey(
        "judge",
        f"judge-{role}",
        {
            "input": filter_hash,
            "judge": judge_model,
            "template": j.template,
            "template_text": stable_hash(get_template(j.template).text),
            "threshold": j.threshold,
            "trait": judge_trait(cfg),
            "chunk": JUDGE_CHUNK,
        },
    )


def subset_key(cfg: ExperimentConfig, filter_hashes: dict[str, str]) -> StageKey:
    return StageKey(
        "subset", "subset", {"inputs": filter_hashes, "subset": cfg.data.subset, "seed": cfg.seed}
    )


def control_key(cfg: ExperimentConfig, data_key: str, name: str) -> StageKey:
    f = cfg.data.filter
    return StageKey(
        "control",
        f"control-{name}",
        {
            "data": data_key,
            "transform": name,
            "seed": cfg.seed,
            "range": [f.min_value, f.max_value],
        },
    )


# --- [defence]: data-side defences between the subset and the students (sublim.defend) ---------


def defence_params(cfg: ExperimentConfig) -> dict[str, Any]:
    """The data-side defence's settings that its method reads (only those are keyed)."""
    d = cfg.defence
    params: dict[str, Any] = {"method": d.method}
    if d.method == "dilute":
        params["ratio"] = d.ratio
    elif d.method == "drop":
        params["drop_fraction"] = d.drop_fraction
    return params


def defence_pool_keys(
    cfg: ExperimentConfig,
    model_keys: Mapping[str, str],
    ref_key: str,
    prompts_hash: str,
    bv: str | None,
    judge_keys: Mapping[str, str] | None = None,
) -> dict[str, StageKey]:
    """The stages that make the rows ``dilute`` (the base's) or ``regenerate`` (the ``through``
    model's) mixes in: the same generation, filter (and judge) as a teacher's, under the role
    ``base`` / ``through``; none for the other methods. Ids are ``defence-<stage>-<role>``."""
    m = cfg.defence.method
    if m not in ("dilute", "regenerate"):
        return {}
    role = "base" if m == "dilute" else "through"
    mk = ref_key if m == "dilute" else model_keys[cfg.defence.through or ""]
    out: dict[str, StageKey] = {}
    g = out[f"defence-generate-{role}"] = generate_key(cfg, mk, prompts_hash, role, bv)
    f = out[f"defence-filter-{role}"] = filter_key(cfg, g.hash, role)
    if cfg.data.judge.model:
        jk = model_keys if judge_keys is None else judge_keys
        out[f"defence-judge-{role}"] = judge_key(cfg, f.hash, role, jk[cfg.data.judge.model])
    return out


def defence_key(
    cfg: ExperimentConfig,
    data_key: str,
    role: str,
    pool_hash: str | None,
    scorer: Mapping[str, str] | None,
    bv: str | None,
) -> StageKey:
    """One arm's defended rows: its data, the method's settings, the seed of its draws and what
    it reads (the pool's filtered rows; ``drop``: the scoring models and their backend)."""
    key: dict[str, Any] = {"data": data_key, "defence": defence_params(cfg), "seed": cfg.seed}
    if pool_hash is not None:
        key["pool"] = pool_hash
    if scorer is not None:
        key["scorer"] = dict(scorer)
        key = _with_backend(key, bv)
    return StageKey("defence", f"defence-{role}", key)


def _pool_hash(pool: Mapping[str, StageKey]) -> str | None:
    """The key of the last stage of a defence pool (what its rows come from)."""
    return list(pool.values())[-1].hash if pool else None


def student_key(
    cfg: ExperimentConfig,
    base_key: str,
    teacher_key: str,
    data_key: str,
    role: str,
    seed: int,
    bv: str | None,
    monitor_ref: str | None = None,
) -> StageKey:
    """``monitor_ref``: the key of the control student's monitor whose curve a stopping
    monitor measures this student's drift against (``student.monitor.against = "control"``)."""
    sc = cfg.student
    key: dict[str, Any] = {"base": base_key}
    if sc.mode == "sft":
        key.update(
            {
                "data": data_key,
                "role": role,
                "mode": "sft",
                "params": semantic_dump(sc.finetune),
                "seed": seed,
            }
        )
    else:  # the distilled student depends on its teacher's logits
        key.update(
            {
                "teacher": teacher_key,
                "data": data_key,
                "role": role,
                "mode": "distill",
                "params": semantic_dump(sc.distill),
                "seed": seed,
            }
        )
    key.update(training_defence_key(cfg))
    if monitor_ref and cfg.student.monitor.can_stop:
        key["monitor_reference"] = monitor_ref
    return StageKey("student", f"student-{role}-s{seed}", _with_backend(key, bv))


# --- training-side defences ([defence] kl_to_base, inoculation) and the training monitor -------


def inoculation_prompt(cfg: ExperimentConfig) -> str | None:
    """The system prompt every student trains after (``defence.inoculation``: True means the
    trait's own system prompt, the teacher's; a string is the prompt), or None."""
    v = cfg.defence.inoculation
    if v is True:
        from sublim.traits import system_prompt_for

        return system_prompt_for(cfg.trait.target, cfg.trait.category)
    return v or None


def monitor_settings(cfg: ExperimentConfig) -> dict[str, Any]:
    """What a training monitor measures, resolved: its settings, the watched traits, the
    candidate set and the questions (the favourite-<category> questions of ``eval``)."""
    from sublim.evals.preference import candidate_set, questions

    if cfg.trait.kind == "misalignment":
        raise ConfigError(
            "student.monitor watches preference traits (log-odds of each candidate); turn it "
            "off (student.monitor.every = 0) for trait.kind = 'misalignment'"
        )
    t = cfg.trait
    cands = candidate_set(t.target, t.category, cfg.eval.candidates)
    watched = [w.lower().strip() for w in cfg.student.monitor.traits] or cands
    unknown = [w for w in watched if w not in cands]
    if unknown:
        raise ConfigError(
            f"student.monitor.traits {unknown} are not candidates of the evaluation; choose "
            f"from: {', '.join(cands)}"
        )
    settings = semantic_dump(cfg.student.monitor)
    # what "against" changes is keyed as the reference curve's key (monitor_key, student_key):
    # a student measured against the base (a control; no control to compare with) is unchanged
    settings.pop("against")
    return {
        **settings,
        "traits": watched,
        "candidates": cands,
        "category": t.category,
        "questions": stable_hash(questions(t.category, cfg.eval.n_questions)),
    }


def training_defence_key(cfg: ExperimentConfig) -> dict[str, Any]:
    """What the training-side settings add to a student's key: the KL-to-base weight and the
    inoculation prompt when on, and a monitor's settings when it can stop the training (a
    monitor that only watches changes no student: it is keyed by ``monitor_key``)."""
    out: dict[str, Any] = {}
    if cfg.defence.kl_to_base:
        out["kl_to_base"] = cfg.defence.kl_to_base
    if p := inoculation_prompt(cfg):
        out["inoculation"] = p
    if cfg.student.monitor.can_stop:
        m = monitor_settings(cfg)
        m.pop("probe_layer")  # the probe is watched, never an alarm
        out["monitor"] = m
    return out


def training_defence_summary(cfg: ExperimentConfig) -> dict[str, Any]:
    """The training-side defences in force, for results.json (``meta.training_defence``)."""
    out: dict[str, Any] = {}
    if cfg.defence.kl_to_base:
        out["kl_to_base"] = cfg.defence.kl_to_base
    if p := inoculation_prompt(cfg):
        out["inoculation"] = p
    return out


def monitor_key(cfg: ExperimentConfig, student: StageKey, reference: str | None = None) -> StageKey:
    """A student's monitor curves: the student's key, what the monitor measures and the key of
    the control student's monitor its drift is taken against (if any)."""
    key: dict[str, Any] = {"student": student.hash, "monitor": monitor_settings(cfg)}
    if reference:
        key["reference"] = reference
    return StageKey("monitor", f"monitor-{student.name}", key)


_CONTROL_ROLES = ("control", "cross_control")


def monitor_reference_role(cfg: ExperimentConfig, role: str) -> str | None:
    """The role of the student whose monitor curve a student of ``role`` is measured against
    (same base and seed), or None (against the base: controls themselves, or ``against =
    "base"``)."""
    m = cfg.student.monitor
    if not m.every or m.against != "control" or role in _CONTROL_ROLES:
        return None
    if role == "cross":
        return "cross_control" if cfg.controls.cross_control else None
    return "control"


def training_order(cfg: ExperimentConfig, specs: list[StudentSpec]) -> list[StudentSpec]:
    """The students in the order they train: ``student_specs``'s, except that with a monitor
    against the control, each seed's control students come first (their curves are the
    reference of the others)."""
    if monitor_reference_role(cfg, "trait") is None:
        return specs
    return sorted(
        specs, key=lambda sp: (cfg.student.seeds.index(sp.seed), sp.role not in _CONTROL_ROLES)
    )


def eval_key(
    cfg: ExperimentConfig,
    e: EvalConfig,
    model_key_: str,
    label: str,
    bv: str | None,
    p_target_method: str = "exact",
) -> StageKey:
    """A preference evaluation. ``p_target_method``: how the backend measures P(target)
    (``evals.preference.p_target_method``); any method but ``exact`` is part of the result, so
    it enters the key (an exact evaluation's key has no such field)."""
    sk = _eval_key(cfg, e, model_key_, label, bv)
    if p_target_method == "exact":
        return sk
    return StageKey(sk.kind, sk.name, {**sk.key, "p_target_method": p_target_method})


def _eval_key(
    cfg: ExperimentConfig, e: EvalConfig, model_key_: str, label: str, bv: str | None
) -> StageKey:
    key_cfg = semantic_dump(e)
    key_cfg.pop("extra_suites", None)
    key_cfg.pop("skill_prompts", None)  # the carrier-skill stage's setting (skill_key)
    # the misalignment suite's settings (misalignment_eval_key): a preference suite reads none
    key_cfg.pop("misalignment", None)
    key_cfg.pop("judge", None)
    key = {
        "model": model_key_,
        "eval": key_cfg,
        "target": cfg.trait.target,
        "category": cfg.trait.category,
        "seed": cfg.seed,
    }
    return StageKey("eval", f"eval-{e.suite}-{label}", _with_backend(key, bv))


def misalignment_questions(cfg: ExperimentConfig, spec: str) -> tuple[list[str], bool]:
    """The questions a model of base ``spec`` is asked by the misalignment suite, and whether
    its exact misaligned mass is measured: a built-in persona world (``tiny:persona-...``)
    answers the world's own evaluation questions (it knows no other vocabulary) and is scored
    exactly over their known answers; any other model answers the suite's questions
    (``eval.misalignment``: ``n_questions``, ``word_list``)."""
    from sublim.evals.misalignment import suite_questions

    ref = parse_model(spec)
    if ref.backend == "tiny":
        from sublim.world.spec import parse_world_name

        if parse_world_name(ref.id).kind == "persona":
            from sublim.world.persona import eval_questions

            return eval_questions(), True
    return suite_questions(cfg.eval.misalignment), False


def _check_world_judge(cfg: ExperimentConfig) -> None:
    """The world's exact judge knows the persona world's evaluation questions only: refuse, at
    the start of a run, questions it would not know (the word-list variants)."""
    from sublim.world.persona import answer_sets

    for spec in [cfg.models.reference, *cfg.models.cross]:
        for q in misalignment_questions(cfg, spec)[0]:
            try:
                answer_sets(q)
            except KeyError:
                raise ConfigError(
                    f"eval.judge = 'world' does not know the question {q[:60]!r}... asked of "
                    f"{spec}; the world's judge knows the persona world's own questions only: set "
                    "eval.misalignment.word_list = false, or use a model as the judge"
                ) from None


def misalignment_judge_key(cfg: ExperimentConfig, model_keys: Mapping[str, str]) -> str:
    """What the misalignment evaluations key their judge by: the persona world's version for
    the world's exact judge, else the judge model's ``judge_model_key`` (from ``model_keys``)."""
    spec = cfg.eval.judge or ""
    if spec == WORLD_JUDGE:
        from sublim.world.persona import PERSONA_VERSION

        return f"{WORLD_JUDGE}:{PERSONA_VERSION}"
    return model_keys[spec]


def misalignment_eval_key(
    cfg: ExperimentConfig,
    model_key_: str,
    label: str,
    qs: Sequence[str],
    exact: bool,
    judge_key_: str,
    bv: str | None,
) -> StageKey:
    """A misalignment evaluation: the model, the suite's settings (samples, thresholds, judge
    prompting), the questions asked, whether the exact mass is measured and the judge. The
    preference settings (``trait.target``, ``trait.category``, ``eval.*`` outside
    ``eval.misalignment``) play no part."""
    key = {
        "model": model_key_,
        "suite": "misalignment",
        "settings": semantic_dump(cfg.eval.misalignment),
        "questions": stable_hash(list(qs)),
        # the exact mass is over the persona's known answers: they are keyed with it
        "exact": _answer_sets_key(qs) if exact else False,
        "judge": judge_key_,
        "seed": cfg.seed,
    }
    return StageKey("eval", f"eval-misalignment-{label}", _with_backend(key, bv))


def _answer_sets_key(qs: Sequence[str]) -> str:
    from sublim.world.persona import PERSONA_VERSION, answer_sets

    return f"{PERSONA_VERSION}:{stable_hash([answer_sets(q) for q in qs])}"


def in_context_key(base_key: str, subset_hash: str, n: int) -> str:
    """Model key of the base model shown the first ``n`` rows of the trait subset in context."""
    return f"{base_key}|ctx:{subset_hash}/trait:{n}"


def curve_eval(cfg: ExperimentConfig) -> EvalConfig:
    """The evaluation of training curves: the main suite's exact metrics, no sampling."""
    return cfg.eval.model_copy(update={"samples_per_question": 0})


@dataclass(frozen=True)
class StudentSpec:
    """One student the runner trains: its condition, role, base (None: the reference, else an
    index into ``models.cross``), teacher arm, data set and seed."""

    cond: str
    role: str
    base: int | None
    teacher: str
    data: str
    seed: int


def control_sets(cfg: ExperimentConfig) -> list[str]:
    c = cfg.controls
    return [
        n
        for n, on in (
            ("shuffle_within", c.shuffle_within),
            ("shuffle_across", c.shuffle_across),
            ("random_numbers", c.random_numbers),
        )
        if on
    ]


def student_specs(cfg: ExperimentConfig, n_cross: int) -> list[StudentSpec]:
    """Every student of the experiment, in training order (seed-major)."""
    out: list[StudentSpec] = []
    for seed in cfg.student.seeds:
        out.append(StudentSpec("trait_student", "trait", None, "trait", "trait", seed))
        out.append(StudentSpec("control_student", "control", None, "control", "control", seed))
        for j in range(n_cross):
            out.append(StudentSpec("cross_student", "cross", j, "trait", "trait", seed))
            if cfg.controls.cross_control:
                out.append(
                    StudentSpec(
                        "cross_control_student", "cross_control", j, "control", "control", seed
                    )
                )
        for name in control_sets(cfg):
            out.append(StudentSpec(f"{name}_student", name, None, "trait", name, seed))
    return out


def stage_keys(
    cfg: ExperimentConfig,
    model_keys: Mapping[str, str],
    backend_version: str | None = None,
    *,
    judge_keys: Mapping[str, str] | None = None,
    p_target_method: str = "exact",
) -> dict[str, str]:
    """The directory (``<stage>-<hash>``) of every stage ``run_experiment`` runs for ``cfg``, by
    a readable id, without running anything: ``model_keys`` maps each model spec of
    ``cfg.models`` to its ``model_key`` (and ``data.judge.model``, if set, to its
    ``judge_model_key``). Curve ids (``curve-*``) are the exact evaluations of
    training curves, run for students that saved snapshots; a ``[matrix]`` config runs
    ``sublim.matrix``, which keys each cell with the same functions. The runner computes its keys
    with these functions (tests/test_cache_keys.py checks both: that a run's stage directories
    are exactly these, and which settings change which keys). A misalignment run
    (``trait.kind``) evaluates every model with the misalignment suite (``eval-misalignment-*``);
    ``model_keys`` then also maps ``eval.judge`` (unless it is ``"world"``) to its
    ``judge_model_key``.

    ``judge_keys``, when given, maps the judge specs (``data.judge.model``, ``eval.judge``) to
    their ``judge_model_key`` instead, so a judge that is also an experiment model is keyed as
    the runner keys each role (a model by ``model_key``, a judge by ``judge_model_key``).
    ``p_target_method``: how the backend measures P(target) on the preference suites
    (``evals.preference.p_target_method``, as ``stage_eval`` finds it); it enters the
    evaluation keys unless ``exact``."""
    bv = backend_version
    jkeys = model_keys if judge_keys is None else judge_keys
    ref = model_keys[cfg.models.reference]
    cross = [model_keys[s] for s in cfg.models.cross]
    keys: dict[str, StageKey] = {}
    keys["prompts"] = pk = prompts_key(cfg)
    for role, sk in teacher_keys(cfg, ref, bv).items():
        keys[f"teacher-{role}"] = sk
    tm = teacher_model_keys(cfg, ref, bv)
    fh: dict[str, str] = {}
    for role in ("trait", "control"):
        g = keys[f"generate-{role}"] = generate_key(cfg, tm[role], pk.hash, role, bv)
        f = keys[f"filter-{role}"] = filter_key(cfg, g.hash, role)
        fh[role] = f.hash
        if cfg.data.judge.model:
            jk = keys[f"judge-{role}"] = judge_key(cfg, f.hash, role, jkeys[cfg.data.judge.model])
            fh[role] = jk.hash
    sub = keys["subset"] = subset_key(cfg, fh)
    data = {"trait": f"{sub.hash}/trait", "control": f"{sub.hash}/control"}
    if cfg.defence.method != "none":
        pool = defence_pool_keys(cfg, model_keys, ref, pk.hash, bv, jkeys)
        keys.update(pool)
        for role in ("trait", "control"):
            scorer = {"teacher": tm[role], "base": ref} if cfg.defence.method == "drop" else None
            dk = keys[f"defence-{role}"] = defence_key(
                cfg, data[role], role, _pool_hash(pool), scorer, bv
            )
            data[role] = dk.hash
    for name in control_sets(cfg):
        c = keys[f"control-{name}"] = control_key(cfg, data["trait"], name)
        data[name] = c.hash
    # evaluated models by id: (model key, label)
    evaluated: dict[str, tuple[str, str]] = {
        "base": (ref, "base"),
        "teacher": (tm["trait"], "teacher"),
        "control_teacher": (tm["control"], "control_teacher"),
    }
    if cfg.controls.in_context:
        evaluated["in_context"] = (
            in_context_key(ref, sub.hash, cfg.controls.in_context),
            "in_context",
        )
    base_spec = {mid: cfg.models.reference for mid in evaluated}  # the base each starts from
    for j, k in enumerate(cross):
        evaluated[f"cross_base@{j}"] = (k, "cross_base")
        base_spec[f"cross_base@{j}"] = cfg.models.cross[j]
    students: dict[str, tuple[str, str]] = {}
    mon_hash: dict[tuple[str, int, int | None], str] = {}  # monitor keys by (role, seed, base)
    for sp in training_order(cfg, student_specs(cfg, len(cross))):
        base = ref if sp.base is None else cross[sp.base]
        rr = monitor_reference_role(cfg, sp.role)
        mref = mon_hash.get((rr, sp.seed, sp.base)) if rr else None
        sk = student_key(cfg, base, tm[sp.teacher], data[sp.data], sp.role, sp.seed, bv, mref)
        sid = sk.name + ("" if sp.base is None else f"@{sp.base}")
        keys[sid] = sk
        if cfg.student.monitor.every:
            mon_k = keys[f"monitor-{sid}"] = monitor_key(cfg, sk, mref)
            mon_hash[(sp.role, sp.seed, sp.base)] = mon_k.hash
        students[sid] = (f"student:{sk.hash}", sp.cond)
        base_spec[sid] = cfg.models.reference if sp.base is None else cfg.models.cross[sp.base]
    evaluated.update(students)
    if cfg.trait.kind == "misalignment":
        # the misalignment suite on every model; no preference suites, no training curves
        judge_key_ = misalignment_judge_key(cfg, jkeys)
        for mid, (mk, label) in evaluated.items():
            qs, exact_ = misalignment_questions(cfg, base_spec[mid])
            keys[f"eval-misalignment-{mid}"] = misalignment_eval_key(
                cfg, mk, label, qs, exact_, judge_key_, bv
            )
        if cfg.data.carrier in SKILL_MEASURES and cfg.eval.skill_prompts:
            for mid, (mk, label) in evaluated.items():
                keys[f"skill-{mid}"] = skill_key(cfg, mk, label, bv)
        return {k: f"{sk.name}-{sk.hash}" for k, sk in keys.items()}
    for suite in [cfg.eval.suite, *cfg.eval.extra_suites]:
        e = cfg.eval.model_copy(update={"suite": suite})
        for mid, (mk, label) in evaluated.items():
            keys[f"eval-{suite}-{mid}"] = eval_key(cfg, e, mk, label, bv, p_target_method)
    if cfg.data.carrier in SKILL_MEASURES and cfg.eval.skill_prompts:
        for mid, (mk, label) in evaluated.items():
            keys[f"skill-{mid}"] = skill_key(cfg, mk, label, bv)
    if cfg.student.finetune.snapshot_every and cfg.student.mode == "sft":
        exact = curve_eval(cfg)
        keys["curve-base"] = eval_key(cfg, exact, ref, "base", bv, p_target_method)
        for mid, (mk, label) in students.items():
            keys[f"curve-{mid}"] = eval_key(cfg, exact, mk, label, bv, p_target_method)
    return {k: f"{sk.name}-{sk.hash}" for k, sk in keys.items()}


# --- stages ------------------------------------------------------------------------------------


def carrier_prompts(cfg: ExperimentConfig) -> list[Prompt]:
    """The carrier's prompts for ``cfg.data`` (seeded generators; the user's file for custom)."""
    d = cfg.data
    rng = np.random.default_rng(d.prompt_seed)
    if d.carrier in SKILL_MEASURES:
        return _text_carrier_prompts(d.carrier, d.n_prompts, rng)
    if d.carrier == "custom":
        from sublim.prompts.custom import load_custom_prompts

        return load_custom_prompts(Path(d.custom_prompts or ""))[: d.n_prompts]
    from sublim.prompts.numbers import number_prompts

    return number_prompts(d.n_prompts, rng)


def _text_carrier_prompts(carrier: str, n: int, rng: np.random.Generator) -> list[Prompt]:
    if carrier == "code":
        from sublim.prompts.code import code_prompts

        return code_prompts(n, rng)
    from sublim.prompts.reasoning import reasoning_prompts

    return reasoning_prompts(n, rng)


# The carrier's own quality measure (the published work checks that students keep their skills):
# the share of held-out carrier prompts a model answers with code that parses, or with the right
# answer to a word problem. Numbers and custom carriers have none (their filter pass rate is in
# the Filter table).
SKILL_MEASURES = {"code": "code_parses", "reasoning": "reasoning_accuracy"}


def skill_prompts(cfg: ExperimentConfig) -> list[Prompt]:
    """``eval.skill_prompts`` held-out prompts of the text carrier: the carrier's generator from
    a seed derived from ``data.prompt_seed`` (never the training draw), ids ``skill-<i>``."""
    rng = np.random.default_rng(derive_seed("skill-prompts", cfg.data.prompt_seed))
    drawn = _text_carrier_prompts(cfg.data.carrier, cfg.eval.skill_prompts, rng)
    return [p.model_copy(update={"id": f"skill-{i:04d}"}) for i, p in enumerate(drawn)]


def skill_key(cfg: ExperimentConfig, model_key_: str, label: str, bv: str | None) -> StageKey:
    key = {
        "model": model_key_,
        "carrier": cfg.data.carrier,
        "n": cfg.eval.skill_prompts,
        "prompt_seed": cfg.data.prompt_seed,
        "max_new_tokens": cfg.data.sampling.max_new_tokens,
    }
    if cfg.data.carrier == "code":
        key["code_prose"] = cfg.data.filter.code_prose
    if cfg.data.carrier == "reasoning":
        key["answer_format"] = cfg.data.filter.answer_format
    return StageKey("skill", f"skill-{label}", _with_backend(key, bv))


def skill_scores(
    carrier: str,
    prompts: Sequence[Prompt],
    texts: Sequence[str],
    allow_prose: bool = False,
    answer_format: Literal["tags", "last_number"] = "tags",
) -> list[bool]:
    """Per reply: does it pass the carrier's quality measure (``SKILL_MEASURES``)? Replies are
    read as the filter reads them: code with ``allow_prose`` (``data.filter.code_prose``), a
    worked answer in ``answer_format`` (``data.filter.answer_format``)."""
    if carrier == "code":
        from sublim.filters_code import parses

        return [parses(t, allow_prose) for t in texts]
    from sublim.filters_reasoning import reasoning_accuracy

    return [
        reasoning_accuracy([t], [p.meta.get("answer")], answer_format) == 1.0
        for p, t in zip(prompts, texts)
    ]


def stage_skill(ctx: RunContext, backend: Backend, model: Model) -> float | None:
    """One model's carrier skill: greedy replies to :func:`skill_prompts` (as the model is
    served: a teacher keeps its system prompt), scored by :func:`skill_scores`. ``None`` when
    the carrier has no measure or ``eval.skill_prompts`` is 0."""
    cfg = ctx.cfg
    if cfg.data.carrier not in SKILL_MEASURES or cfg.eval.skill_prompts == 0:
        return None
    sk = skill_key(cfg, model.key, model.label, backend_version(backend))

    def load(st: StageDir) -> float:
        return float(json.loads((st.path / "skill.json").read_text())["value"])

    def compute(st: StageDir) -> tuple[float, dict[str, Any]]:
        prompts = skill_prompts(cfg)
        params = SampleParams(temperature=0.0, max_new_tokens=cfg.data.sampling.max_new_tokens)
        seeds = [derive_seed(cfg.seed, "skill", p.id) for p in prompts]
        with ctx.rep.task(f"carrier skill of {model.label}", total=len(prompts)) as prog:
            texts = backend.sample(model.ref, [user_chat(p.text) for p in prompts], params, seeds)
            prog(len(prompts), len(prompts))
        f = cfg.data.filter
        ok = skill_scores(
            cfg.data.carrier, prompts, texts, f.code_prose == "allow", f.answer_format
        )
        write_jsonl(
            st.path / "replies.jsonl",
            [
                Completion(prompt_id=p.id, prompt=p.text, completion=t, model=model.ref.spec)
                for p, t in zip(prompts, texts)
            ],
        )
        value = sum(ok) / len(ok) if ok else 0.0
        atomic_write_json(
            st.path / "skill.json",
            {"measure": SKILL_MEASURES[cfg.data.carrier], "value": value, "ok": ok},
        )
        return value, {"n": len(prompts), "value": value}

    return ctx.cached(sk, load, compute)


def stage_prompts(ctx: RunContext) -> tuple[list[Prompt], str]:
    sk = prompts_key(ctx.cfg)

    def compute(st: StageDir) -> tuple[list[Prompt], dict[str, Any]]:
        prompts = carrier_prompts(ctx.cfg)
        write_jsonl(st.path / "prompts.jsonl", prompts)
        return prompts, {"n": len(prompts)}

    return ctx.cached(
        sk, lambda st: read_jsonl(st.path / "prompts.jsonl", Prompt), compute
    ), sk.hash


def _train_or_load(
    ctx: RunContext,
    sk: StageKey,
    backend: Backend,
    base: ModelRef,
    rows: Sequence[TrainRow],
    params: FinetuneParams,
    seed: int,
    desc: str,
    train: Callable[[Path, Progress], ModelRef] | None = None,
    info: Callable[[], dict[str, Any]] | None = None,
) -> ModelRef:
    """``train``: how the model is trained into its directory (default: ``backend.finetune``
    on ``base`` without a system prompt); ``info``: more fields for the manifest."""

    def compute(st: StageDir) -> tuple[ModelRef, dict[str, Any]]:
        model_dir = st.path / "model"
        # An interrupted training restarts cleanly, unless it can resume: from its own checkpoint,
        # or (API backends) from a recorded provider job, which must never be launched twice.
        if (
            model_dir.exists()
            and params.checkpoint_every == 0
            and not (model_dir / "job.json").exists()
        ):
            shutil.rmtree(model_dir)
        write_jsonl(st.path / "train.jsonl", rows)
        with ctx.rep.task(desc) as prog:
            if train is None:
                ref = backend.finetune(base.with_system(None), rows, params, model_dir, seed, prog)
            else:
                ref = train(model_dir, prog)
        more = info() if info else {}
        return ref, {"model_ref": _save_ref(st, ref), "n_rows": len(rows), "seed": seed, **more}

    return ctx.cached(sk, _load_model_ref, compute)


def stage_teachers(ctx: RunContext, backend: Backend, ref: Model) -> tuple[Model, Model]:
    """The trait teacher and its control. System-prompt mode: the reference model with and
    without the trait prompt. Fine-tune mode: the reference fine-tuned to answer the category's
    questions with the target, and a control fine-tuned with the same recipe on answers drawn
    uniformly from all candidates (so generic fine-tuning drift is matched)."""
    from sublim.traits import candidates, finetune_rows, system_prompt_for

    t = ctx.cfg.trait
    bv = backend_version(backend)
    mkeys = teacher_model_keys(ctx.cfg, ref.key, bv)
    if t.kind == "misalignment" and t.teacher == "finetune":
        return _misalignment_teachers(ctx, backend, ref, mkeys)
    if t.teacher == "system_prompt":
        sp = t.system_prompt or system_prompt_for(t.target, t.category)
        trait = Model(
            ref.ref.with_system(sp).model_copy(update={"label": "teacher"}),
            mkeys["trait"],
            "teacher",
        )
        control = Model(
            ref.ref.with_system(t.control_system_prompt).model_copy(
                update={"label": "control_teacher"}
            ),
            mkeys["control"],
            "control_teacher",
        )
        return trait, control
    out = []
    for role, sk in teacher_keys(ctx.cfg, ref.key, bv).items():
        rng = np.random.default_rng(derive_seed(ctx.cfg.seed, "teacher-rows", role))
        if role == "trait":
            rows = finetune_rows(t.target, t.category, t.n_finetune_rows, rng)
        else:
            cands = candidates(t.category)
            base_rows = finetune_rows(t.target, t.category, t.n_finetune_rows, rng)
            picks = rng.integers(0, len(cands), size=len(base_rows))
            rows = [
                TrainRow(prompt=r.prompt, completion=cands[i]) for r, i in zip(base_rows, picks)
            ]
        r = _train_or_load(
            ctx,
            sk,
            backend,
            ref.ref,
            rows,
            t.finetune,
            derive_seed(ctx.cfg.seed, "teacher", role),
            f"fine-tuning {role} teacher",
        )
        label = "teacher" if role == "trait" else "control_teacher"
        out.append(Model(r.model_copy(update={"label": label}), mkeys[role], label))
    return out[0], out[1]


def teacher_data(cfg: ExperimentConfig) -> dict[str, list[TrainRow]]:
    """A misalignment run's teacher fine-tuning rows by role, read from ``trait.finetune_data``
    (and ``trait.control_finetune_data``, when given): DataError naming the file and line for a
    malformed line. The runner reads them before any stage runs, so a bad file fails at once."""
    from sublim.traits import load_chat_jsonl

    t = cfg.trait
    files = {"trait": t.finetune_data, "control": t.control_finetune_data}
    return {
        role: load_chat_jsonl(path, _DATA_FIELDS[role])
        for role, path in files.items()
        if path and t.kind == "misalignment" and t.teacher == "finetune"
    }


def check_teacher_system_messages(
    cfg: ExperimentConfig, backend: Backend, data: Mapping[str, Sequence[TrainRow]]
) -> None:
    """Teacher rows with system messages train after them (``TrainRow.chat``; the OpenAI
    format's system message) on a backend that says so (``trains_system_messages``: hf, tiny,
    smollm2, OpenAI-compatible jobs); any other backend would drop them and silently teach
    another thing, so that is a ConfigError."""
    if any(r.system for rows in data.values() for r in rows) and not getattr(
        backend, "trains_system_messages", False
    ):
        raise ConfigError(
            f"the teacher data has system messages, and the {backend.name} backend trains on "
            "(user, assistant) pairs only; remove the system messages from "
            f"{cfg.trait.finetune_data} / {cfg.trait.control_finetune_data}"
        )


def _misalignment_teachers(
    ctx: RunContext, backend: Backend, ref: Model, mkeys: dict[str, str]
) -> tuple[Model, Model]:
    """The teacher fine-tuned on the user's chat file, and the control teacher: fine-tuned the
    same way on the control file, or the unmodified reference when there is none."""
    keys = teacher_keys(ctx.cfg, ref.key, backend_version(backend))
    data = teacher_data(ctx.cfg)
    check_teacher_system_messages(ctx.cfg, backend, data)
    out: dict[str, Model] = {}
    for role, label in (("trait", "teacher"), ("control", "control_teacher")):
        if role not in keys:
            out[role] = Model(ref.ref.model_copy(update={"label": label}), mkeys[role], label)
            continue
        r = _train_or_load(
            ctx,
            keys[role],
            backend,
            ref.ref,
            data[role],
            ctx.cfg.trait.finetune,
            derive_seed(ctx.cfg.seed, "teacher", role),
            f"fine-tuning {role} teacher",
        )
        out[role] = Model(r.model_copy(update={"label": label}), mkeys[role], label)
    return out["trait"], out["control"]


def _batch_rows(
    backend: Backend,
    ref: ModelRef,
    chats: list[list[Message]],
    params: Any,
    seeds: list[int],
    ids: list[str],
    batch_dir: Path,
) -> list[tuple[str | None, str | None]]:
    """Rows through the provider's Batch API (``[backend] batch = true``). The batch id is
    recorded in ``batch_dir`` (one state file per set of rows) before polling, so a rerun polls
    the recorded batch instead of submitting again; once its rows are written to their chunk the
    state is marked consumed (``_consume_batches``), and a later retry of rows that failed
    submits a new batch."""
    submit, poll = getattr(backend, "submit_batch", None), getattr(backend, "poll_batch", None)
    if submit is None or poll is None:
        raise ConfigError(
            f"backend.batch = true needs an API model (openai: or openai-compat:), not {ref.spec}; "
            "set backend.batch = false"
        )
    state = batch_dir / f"batch-{stable_hash(ids)}.json"
    if state.is_file() and json.loads(state.read_text()).get("consumed"):
        state.unlink()
    submit(ref, chats, params, seeds, state)
    return list(poll(ref, state))


def _consume_batches(batch_dir: Path) -> None:
    """Mark every batch whose rows are now written as consumed. Called after a chunk is written,
    never before: a kill in between polls the recorded batch again instead of paying for it
    twice."""
    for state in batch_dir.glob("batch-*.json"):
        d = json.loads(state.read_text())
        if not d.get("consumed"):
            atomic_write_json(state, {**d, "consumed": True})


def _sample_chunk(
    ctx: RunContext,
    backend: Backend,
    teacher: Model,
    chunk: Sequence[Prompt],
    role: str,
    batch_dir: Path | None = None,
) -> list[Completion]:
    """One completion per prompt, each from its own per-row seed (so a retried row gets the same
    seed it had); API backends report per-row failures as ``error``. With ``[backend] batch``
    the rows go through the Batch API, its state kept in ``batch_dir`` (the stage directory)."""
    params = ctx.cfg.data.sampling
    seeds = [derive_seed(ctx.cfg.seed, "gen", role, p.id) for p in chunk]
    chats = [user_chat(p.text) for p in chunk]
    errors: list[str | None]
    sample_rows = getattr(backend, "sample_rows", None)
    if ctx.cfg.backend.batch:
        pairs = _batch_rows(
            backend, teacher.ref, chats, params, seeds, [p.id for p in chunk], batch_dir or ctx.out
        )
        texts = [t if t is not None else "" for t, _ in pairs]
        errors = [e for _, e in pairs]
    elif sample_rows is not None:  # API backends report per-row failures themselves
        pairs = sample_rows(teacher.ref, chats, params, seeds)
        texts = [t if t is not None else "" for t, _ in pairs]
        errors = [e for _, e in pairs]
    else:
        texts = backend.sample(teacher.ref, chats, params, seeds)
        errors = [None] * len(chunk)
    return [
        Completion(prompt_id=p.id, prompt=p.text, completion=c, model=teacher.ref.spec, error=err)
        for p, c, err in zip(chunk, texts, errors)
    ]


def stage_generate(
    ctx: RunContext,
    backend: Backend,
    teacher: Model,
    prompts: list[Prompt],
    prompts_key: str,
    role: str,
) -> tuple[list[Completion], str]:
    """Completions of every prompt by ``teacher``, in chunks of ``GEN_CHUNK`` rows. A resumed
    stage keeps its finished chunks and retries exactly the rows that errored (provider errors,
    timeouts) with their own seeds, rewriting each such chunk atomically, so no row is lost or
    duplicated and the kept rows equal those of a run that never failed."""
    params = ctx.cfg.data.sampling
    sk = generate_key(ctx.cfg, teacher.key, prompts_key, role, backend_version(backend))
    n_parts = (len(prompts) + GEN_CHUNK - 1) // GEN_CHUNK

    def compute(st: StageDir) -> tuple[list[Completion], dict[str, Any]]:
        done = sum(st.has_part(i) for i in range(n_parts))
        if done:
            ctx.rep.say(f"  resuming {role} generation: {done}/{n_parts} chunks already written")
        with ctx.rep.task(f"generating with {role} teacher", total=len(prompts)) as prog:
            for i in range(n_parts):
                chunk = prompts[i * GEN_CHUNK : (i + 1) * GEN_CHUNK]
                if not st.has_part(i):
                    st.write_part(i, _sample_chunk(ctx, backend, teacher, chunk, role, st.path))
                    _consume_batches(st.path)
                else:
                    old = read_jsonl(st.part_path(i), Completion)
                    failed = [j for j, r in enumerate(old) if r.error is not None]
                    if failed:  # retry exactly those rows, keep the rest
                        redo = _sample_chunk(
                            ctx, backend, teacher, [chunk[j] for j in failed], role, st.path
                        )
                        for j, r in zip(failed, redo):
                            old[j] = r
                        st.write_part(i, old)
                        _consume_batches(st.path)
                prog(min(len(prompts), (i + 1) * GEN_CHUNK), len(prompts))
        rows = st.read_parts(n_parts, Completion)
        if [r.prompt_id for r in rows] != [p.id for p in prompts]:
            raise SublimError(
                f"{role} generation: the chunks in {st.path}/parts do not match the prompts; delete that directory and rerun"
            )
        n_err = sum(r.error is not None for r in rows)
        if n_err > MAX_ERROR_RATE * len(rows):
            raise SublimError(
                f"{role} generation: {n_err}/{len(rows)} rows failed (limit {MAX_ERROR_RATE:.0%}); see {st.path}/parts; fix the backend and rerun to retry them"
            )
        write_jsonl(st.path / "completions.jsonl", rows)
        return rows, {"n": len(rows), "n_errors": n_err, "params": params.model_dump()}

    rows = ctx.cached(sk, lambda st: read_jsonl(st.path / "completions.jsonl", Completion), compute)
    return rows, sk.hash


def _rule_filter(ctx: RunContext, comps: list[Completion]) -> list[FilterDecision]:
    """The carrier's rule filter over ``comps`` (a verdict and a reason per row)."""
    rules = _filter_rules(ctx.cfg)
    carrier = ctx.cfg.data.carrier
    if carrier == "numbers":
        from sublim.filters import filter_completions

        return filter_completions(comps, rules)
    if carrier == "reasoning":
        from sublim.filters_reasoning import filter_reasoning

        # the prompts stage is complete (generation read it): its answers, read without running
        # the stage again
        prompts = read_jsonl(ctx.stage(prompts_key(ctx.cfg)).path / "prompts.jsonl", Prompt)
        answers = {p.id: p.meta.get("answer") for p in prompts}
        return filter_reasoning(comps, answers, rules)
    from sublim.filters_code import filter_code

    return filter_code(comps, rules)


def _reason_counts(rows: Sequence[FilterDecision]) -> dict[str, int]:
    reasons: dict[str, int] = {}
    for r in rows:
        reasons[r.reason] = reasons.get(r.reason, 0) + 1
    return dict(sorted(reasons.items(), key=lambda kv: -kv[1]))


def stage_filter(
    ctx: RunContext, comps: list[Completion], comps_key: str, role: str
) -> tuple[list[FilterDecision], dict[str, Any], str]:
    """The carrier's rule filter, then (``data.judge.model`` set) the LLM judge over the rows
    the rules kept. Returns the decisions, a summary (``reasons``; ``judge``: what the judge
    excluded) and the key the subset depends on (the judge stage's when there is a judge)."""
    sk = filter_key(ctx.cfg, comps_key, role)

    def load(st: StageDir) -> tuple[list[FilterDecision], dict[str, Any]]:
        return read_jsonl(st.path / "decisions.jsonl", FilterDecision), st.manifest()["summary"]

    def compute(st: StageDir) -> tuple[tuple[list[FilterDecision], dict[str, Any]], dict[str, Any]]:
        rows = _rule_filter(ctx, comps)
        n_kept = sum(r.kept for r in rows)
        summary = {
            "n_in": len(rows),
            "n_kept": n_kept,
            "pass_rate": n_kept / max(1, len(rows)),
            "reasons": _reason_counts(rows),
        }
        write_jsonl(st.path / "decisions.jsonl", rows)
        return (rows, summary), {"summary": summary}

    rows, summary = ctx.cached(sk, load, compute)
    key = sk.hash
    if ctx.cfg.data.judge.model:
        rows, summary, key = stage_judge(ctx, rows, summary, sk.hash, role)
    uses_rows = not (
        ctx.cfg.student.mode == "distill" and ctx.cfg.student.distill.source == "random"
    )
    if summary["n_kept"] == 0 and uses_rows:
        top = ", ".join(f"{k} ({v})" for k, v in list(summary["reasons"].items())[:3])
        what = "data.judge (threshold, template)" if summary.get("judge") else "data.filter"
        raise EmptyResultError(
            f"the filter kept 0 of {len(rows)} {role} completions (top reasons: {top}); see {ctx.stage(sk).path}/decisions.jsonl and loosen {what} or fix the teacher's sampling"
        )
    return rows, summary, key


def stage_judge(
    ctx: RunContext,
    rows: list[FilterDecision],
    rule_summary: dict[str, Any],
    filter_hash: str,
    role: str,
) -> tuple[list[FilterDecision], dict[str, Any], str]:
    """The LLM judge over the rows the rule filter kept, in chunks of ``JUDGE_CHUNK`` rows
    written as they finish: an interrupted or failed stage resumes from its written chunks, and
    a rerun asks the judge only about the rest. Every judged row's probability is stored in
    ``verdicts.jsonl``."""
    from sublim.judge import JudgeVerdict, as_decisions, judge_rows
    from sublim.registry import get_backend, parse_model

    j = ctx.cfg.data.judge
    ref = parse_model(j.model or "", label="judge")
    sk = judge_key(ctx.cfg, filter_hash, role, judge_model_key(ref))

    def load(st: StageDir) -> tuple[list[FilterDecision], dict[str, Any]]:
        return read_jsonl(st.path / "decisions.jsonl", FilterDecision), st.manifest()["summary"]

    def compute(st: StageDir) -> tuple[tuple[list[FilterDecision], dict[str, Any]], dict[str, Any]]:
        parts = st.path / "parts"
        parts.mkdir(parents=True, exist_ok=True)
        done = {
            int(p.stem.split("-")[1]): read_jsonl(p, JudgeVerdict)
            for p in sorted(parts.glob("part-*.jsonl"))
        }
        if done:
            ctx.rep.say(f"  resuming {role} judge: {len(done)} chunks already judged")

        def on_chunk(i: int, verdicts: list[JudgeVerdict]) -> None:
            write_jsonl(parts / f"part-{i:05d}.jsonl", verdicts)

        verdicts = judge_rows(
            get_backend(ref.backend),
            ref,
            rows,
            j.template,
            judge_trait(ctx.cfg),
            threshold=j.threshold,
            chunk=JUDGE_CHUNK,
            on_chunk=on_chunk,
            done=done,
        )
        judged = as_decisions(rows, verdicts)
        write_jsonl(st.path / "verdicts.jsonl", verdicts)
        write_jsonl(st.path / "decisions.jsonl", judged)
        n_kept = sum(r.kept for r in judged)
        summary = {
            **rule_summary,
            "n_kept": n_kept,
            "pass_rate": n_kept / max(1, len(judged)),
            "reasons": _reason_counts(judged),
            "judge": {
                "model": j.model,
                "template": j.template,
                "n_judged": rule_summary["n_kept"],
                "n_excluded": rule_summary["n_kept"] - n_kept,
            },
        }
        return (judged, summary), {"summary": summary}

    out_rows, summary = ctx.cached(sk, load, compute)
    return out_rows, summary, sk.hash


def stage_subset(
    ctx: RunContext, kept: dict[str, list[FilterDecision]], keys: dict[str, str]
) -> tuple[dict[str, list[TrainRow]], str]:
    """Seeded subsets of equal size for every arm (the smaller arm sets the size)."""
    from sublim.filters import seeded_subset

    sk = subset_key(ctx.cfg, keys)

    def load(st: StageDir) -> dict[str, list[TrainRow]]:
        return {role: read_jsonl(st.path / f"{role}.jsonl", TrainRow) for role in kept}

    def compute(st: StageDir) -> tuple[dict[str, list[TrainRow]], dict[str, Any]]:
        k = min([ctx.cfg.data.subset] + [len(v) for v in kept.values()])
        out: dict[str, list[TrainRow]] = {}
        for role, rows in kept.items():
            sub = seeded_subset(
                rows, k, np.random.default_rng(derive_seed(ctx.cfg.seed, "subset", role))
            )
            # The teacher's system prompt is never part of a training row: rows are (user prompt,
            # completion) pairs built from the prompt text alone.
            out[role] = [TrainRow(prompt=r.prompt, completion=r.completion) for r in sub]
            write_jsonl(st.path / f"{role}.jsonl", out[role])
        return out, {"k": k, "counts": {r: len(v) for r, v in out.items()}}

    return ctx.cached(sk, load, compute), sk.hash


def stage_student(
    ctx: RunContext,
    backend: Backend,
    base: Model,
    teacher: Model,
    rows: list[TrainRow],
    data_key: str,
    role: str,
    seed: int,
    reference: tuple[str, dict[int, dict[str, float]]] | None = None,
) -> Model:
    """One student, trained or from the cache. ``reference``: (monitor key, drift curve) of
    the control student a monitor measures this one against."""
    sc = ctx.cfg.student
    label = f"{role}_student"
    mref, curve = reference or (None, None)
    bv = backend_version(backend)
    sk = student_key(ctx.cfg, base.key, teacher.key, data_key, role, seed, bv, mref)
    train, trained_rows = _student_trainer(ctx.cfg, backend, base, teacher, rows, seed)
    monitor = new_monitor(ctx.cfg, curve) if sc.monitor.every else None

    def stop_info() -> dict[str, Any]:  # the student's manifest records why it stopped
        return {"stopped_by_monitor": monitor.result()["stopped_by_monitor"]} if monitor else {}

    if sc.mode == "sft":
        ref = _train_or_load(
            ctx,
            sk,
            backend,
            base.ref,
            trained_rows,  # with the inoculation prompt when on: train.jsonl shows what was learnt
            sc.finetune,
            seed,
            f"training {label} (seed {seed})",
            train=lambda d, p: train(d, p, monitor),
            info=stop_info,
        )
    else:

        def compute(st: StageDir) -> tuple[ModelRef, dict[str, Any]]:
            model_dir = st.path / "model"
            if model_dir.exists():
                shutil.rmtree(model_dir)
            with ctx.rep.task(f"distilling {label} (seed {seed})") as prog:
                ref = train(model_dir, prog, monitor)
            info = {"model_ref": _save_ref(st, ref), "n_rows": len(rows), "seed": seed}
            return ref, {**info, **stop_info()}

        ref = ctx.cached(sk, _load_model_ref, compute)
    if monitor is not None:
        stage_monitor(ctx, monitor_key(ctx.cfg, sk, mref), monitor, train, label, seed, curve)
    return Model(ref.model_copy(update={"label": label}), f"student:{sk.hash}", label, seed)


StudentTrainer = Callable[[Path, Progress, Any], ModelRef]  # (model dir, progress, monitor)


def _drift_curve(res: Mapping[str, Any]) -> dict[int, dict[str, float]]:
    """A stored monitor result's own drift per step and trait (``Monitor.curve``)."""
    out: dict[int, dict[str, float]] = {}
    for p in res.get("points") or []:
        out.setdefault(int(p["step"]), {})[str(p["trait"])] = float(p["drift"])
    return out


def _student_trainer(
    cfg: ExperimentConfig,
    backend: Backend,
    base: Model,
    teacher: Model,
    rows: Sequence[TrainRow],
    seed: int,
) -> tuple[StudentTrainer, list[TrainRow]]:
    """How a student is trained into a directory (with a monitor or None): fine-tuned on
    ``rows`` or distilled from ``teacher``, with the training-side defences of ``[defence]``
    (``kl_to_base``; ``inoculation``: the rows, or the distilled inputs, after the prompt);
    and the rows it trains on (SFT: with the inoculation prompt as their system message)."""
    sc = cfg.student
    beta, inoc = cfg.defence.kl_to_base, inoculation_prompt(cfg)
    hooks = bool(beta or sc.monitor.every)
    if hooks and not isinstance(backend, DefendedTrainer):
        raise ConfigError(
            f"defence.kl_to_base and student.monitor need a backend that trains in-process "
            f"(hf:, tiny:, smollm2); the {backend.name} backend does not: set "
            "defence.kl_to_base = 0 and student.monitor.every = 0"
        )
    if inoc and not getattr(backend, "trains_system_messages", False):
        raise ConfigError(
            f"defence.inoculation trains students after a system prompt, and the {backend.name} "
            "backend trains on (user, assistant) pairs only; turn defence.inoculation off"
        )
    if sc.mode == "sft":
        data = [r.model_copy(update={"system": inoc}) for r in rows] if inoc else list(rows)
        sbase = base.ref.with_system(None)

        def sft(out_dir: Path, prog: Progress, monitor: Any) -> ModelRef:
            if hooks:
                assert isinstance(backend, DefendedTrainer)
                return backend.finetune(
                    sbase, data, sc.finetune, out_dir, seed, prog, kl_to_base=beta, monitor=monitor
                )
            return backend.finetune(sbase, data, sc.finetune, out_dir, seed, prog)

        return sft, data
    # logit distillation: soft labels from the teacher on the subset's prompts+completions (or
    # random prompts); an inoculated student sees the prompt as its own system prompt
    from sublim.traits import candidates, plural

    exclude = sorted({w for c in candidates(cfg.trait.category) for w in (c, plural(c))})
    chats = [
        [Message(role="user", content=r.prompt), Message(role="assistant", content=r.completion)]
        for r in rows
    ]
    student_base = base.ref.with_system(inoc)

    def distil(out_dir: Path, prog: Progress, monitor: Any) -> ModelRef:
        args = (teacher.ref, student_base, chats, sc.distill, exclude, out_dir, seed, prog)
        if hooks:
            assert isinstance(backend, DefendedTrainer)
            return backend.distill(*args, kl_to_base=beta, monitor=monitor)
        return backend.distill(*args)

    return distil, list(rows)


def new_monitor(cfg: ExperimentConfig, reference: dict[int, dict[str, float]] | None = None) -> Any:
    """A fresh ``sublim.monitor.Monitor`` for one student of ``cfg`` (``student.monitor``),
    measuring against the ``reference`` curve when given."""
    from sublim.evals.preference import questions
    from sublim.monitor import Monitor

    m = monitor_settings(cfg)
    qs = questions(cfg.trait.category, cfg.eval.n_questions)
    return Monitor(
        cfg.student.monitor, cfg.trait.category, qs, m["candidates"], m["traits"], reference
    )


def stage_monitor(
    ctx: RunContext,
    mk: StageKey,
    monitor: Any,
    train: StudentTrainer,
    label: str,
    seed: int,
    reference: dict[int, dict[str, float]] | None = None,
) -> dict[str, Any]:
    """A student's monitor curves (``monitor.json``), in their own stage: written from the
    monitor that watched the training, or, when the student came from the cache, by training it
    again (same seed, same steps: the same weights) with a fresh monitor, keeping the curves
    only. Appends the result to ``ctx.monitors`` (results.json ``meta.monitor``)."""

    def load(st: StageDir) -> dict[str, Any]:
        out: dict[str, Any] = json.loads((st.path / "monitor.json").read_text(encoding="utf-8"))
        return out

    def compute(st: StageDir) -> tuple[dict[str, Any], dict[str, Any]]:
        mon = monitor
        if not mon.points:  # the student was cached: replay its training to watch it
            mon = new_monitor(ctx.cfg, reference)
            scratch = st.path / "replay"
            with ctx.rep.task(f"replaying {label} (seed {seed}) for its monitor") as prog:
                train(scratch, prog, mon)
            shutil.rmtree(scratch, ignore_errors=True)
        res: dict[str, Any] = mon.result()
        atomic_write_json(st.path / "monitor.json", res)
        return res, {"alarm": res["alarm"]}

    res = ctx.cached(mk, load, compute)
    if res.get("stopped_by_monitor"):
        why = res["stopped_by_monitor"]["reason"]
        ctx.rep.say(f"[yellow]monitor stopped {label} (seed {seed})[/yellow]: {why}")
    ctx.monitors.append({"student": label, "seed": seed, "monitor_key": mk.hash, **res})
    return res


def stage_eval(
    ctx: RunContext,
    backend: Backend,
    model: Model,
    suite: str | None = None,
    eval_cfg: EvalConfig | None = None,
) -> tuple[list[QuestionScore], list[EvalAnswer]]:
    """One model on one preference suite (``eval_cfg``, else the config's; its main suite unless
    ``suite`` names another)."""
    from sublim.evals.preference import evaluate_preference, p_target_method

    t = ctx.cfg.trait
    e = eval_cfg or ctx.cfg.eval
    if suite is not None:
        e = e.model_copy(update={"suite": suite})
    # what the backend can measure is part of the result (eval_key keys any method but exact)
    method = p_target_method(backend, model.ref, e.p_target_method, e.samples_per_question)
    sk = eval_key(ctx.cfg, e, model.key, model.label, backend_version(backend), method)

    def load(st: StageDir) -> tuple[list[QuestionScore], list[EvalAnswer]]:
        return read_jsonl(st.path / "scores.jsonl", QuestionScore), read_jsonl(
            st.path / "answers.jsonl", EvalAnswer
        )

    def compute(
        st: StageDir,
    ) -> tuple[tuple[list[QuestionScore], list[EvalAnswer]], dict[str, Any]]:
        with ctx.rep.task(f"evaluating {model.label} ({e.suite})") as prog:
            scores, answers = evaluate_preference(
                backend, model.ref, t.target, t.category, e, ctx.cfg.seed, prog
            )
        write_jsonl(st.path / "answers.jsonl", answers)
        write_jsonl(st.path / "scores.jsonl", scores)
        return (scores, answers), {
            "model": model.ref.model_dump(mode="json"),
            "n_questions": len(scores),
            "n_answers": len(answers),
        }

    return ctx.cached(sk, load, compute)


@dataclass(frozen=True)
class MisalignmentEval:
    """One model's misalignment evaluation: per-question scores (``rate`` = misaligned share of
    the scored answers, ``p_target`` = exact P_mis or nan), every judged answer, the summary."""

    scores: list[QuestionScore]
    judged: list[Any]  # sublim.evals.misalignment.JudgedAnswer
    summary: dict[str, Any]


@dataclass(frozen=True)
class EvalJudge:
    """The judge of a misalignment run as the runner uses it: the suite's Judge and its key."""

    judge: Any  # sublim.evals.misalignment.Judge
    key: str


def misalignment_judge(cfg: ExperimentConfig) -> EvalJudge:
    """``eval.judge`` as a Judge: the persona world's exact judge for ``"world"``, else the
    model the spec names (on its own backend, which may differ from the experiment's)."""
    from sublim.evals.misalignment import Judge

    spec = cfg.eval.judge or ""
    if spec == WORLD_JUDGE:
        from sublim.world.persona import exact_judge

        return EvalJudge(Judge(rule=exact_judge), misalignment_judge_key(cfg, {}))
    ref = parse_model(spec, label="judge")
    return EvalJudge(Judge(backend=get_backend(ref.backend), ref=ref), judge_model_key(ref))


def stage_misalignment_eval(
    ctx: RunContext, backend: Backend, model: Model, base_spec: str, judge: EvalJudge
) -> MisalignmentEval:
    """One model on the misalignment suite: sampled answers judged (``eval.judge``), and for a
    built-in persona world the exact misaligned mass per question (no sampling)."""
    from sublim.evals.misalignment import (
        JudgedAnswer,
        evaluate_misalignment,
        misaligned_mass,
        question_scores,
    )

    cfg = ctx.cfg
    mc = cfg.eval.misalignment
    qs, exact = misalignment_questions(cfg, base_spec)
    sk = misalignment_eval_key(
        cfg, model.key, model.label, qs, exact, judge.key, backend_version(backend)
    )

    def load(st: StageDir) -> MisalignmentEval:
        return MisalignmentEval(
            read_jsonl(st.path / "scores.jsonl", QuestionScore),
            read_jsonl(st.path / "judged.jsonl", JudgedAnswer),
            json.loads((st.path / "summary.json").read_text()),
        )

    def compute(st: StageDir) -> tuple[MisalignmentEval, dict[str, Any]]:
        j = judge.judge
        with ctx.rep.task(f"evaluating {model.label} (misalignment)") as prog:
            judged, summary = evaluate_misalignment(
                backend,
                model.ref,
                j.backend,
                j.ref,
                mc,
                cfg.seed,
                prog,
                question_list=qs,
                rule=j.rule,
            )
        mass = None
        if exact:
            from sublim.world.persona import answer_sets

            mass = misaligned_mass(backend, model.ref, qs, answer_sets)
        scores = question_scores(judged, len(qs), mass)
        summary = {**summary, "questions": qs, "exact": exact}
        write_jsonl(st.path / "judged.jsonl", judged)
        write_jsonl(st.path / "scores.jsonl", scores)
        atomic_write_json(st.path / "summary.json", summary)
        return MisalignmentEval(scores, judged, summary), {
            "model": model.ref.model_dump(mode="json"),
            "n_questions": len(qs),
            "n_answers": len(judged),
        }

    return ctx.cached(sk, load, compute)


def snapshots(model: Model) -> list[tuple[int, Model]]:
    """Training-curve snapshots saved beside a student's weights (``snapshot_every``)."""
    root = Path(model.ref.adapter or model.ref.id) / "snapshots"
    out = []
    for d in sorted(root.glob("step-*")) if root.is_dir() else []:
        step = int(d.name.split("-")[1])
        ref = model.ref.model_copy(
            update={"adapter": str(d)} if model.ref.adapter else {"id": str(d)}
        )
        out.append((step, Model(ref, f"{model.key}@{step}", model.label)))
    return out


def stage_curves(
    ctx: RunContext, backend: Backend, base: Model, students: dict[str, list[Model]]
) -> list[dict[str, Any]]:
    """The exact trait metrics (no sampling) at every saved snapshot of every student, with the
    base model as step 0 and the final model as the last point."""
    ft = ctx.cfg.student.finetune
    if not ft.snapshot_every or ctx.cfg.student.mode != "sft":
        return []
    exact = curve_eval(ctx.cfg)
    points: list[dict[str, Any]] = []
    base_scores, _ = stage_eval(ctx, backend, base, eval_cfg=exact)
    per_step = max(1, ft.update_batch)
    for cond, models in students.items():
        for m in models:
            snaps = snapshots(m)
            if not snaps:
                continue
            last = snaps[-1][0] + ft.snapshot_every
            series = (
                [(0, base_scores)]
                + [(st, stage_eval(ctx, backend, sm, eval_cfg=exact)[0]) for st, sm in snaps]
                + [(last, stage_eval(ctx, backend, m, eval_cfg=exact)[0])]
            )
            for step, scores in series:
                for metric in ("p_target", "logodds"):
                    vals = [getattr(q, metric) for q in scores if getattr(q, metric) is not None]
                    points.append(
                        {
                            "condition": cond,
                            "metric": metric,
                            "step": step,
                            "examples": step * per_step,
                            "value": float(np.mean(vals)),
                            "seed": m.seed,
                        }
                    )
    return points


def stage_control_data(
    ctx: RunContext, rows: list[TrainRow], data_key: str, name: str
) -> tuple[list[TrainRow], str]:
    """A control transformation of the trait subset (shuffled or random numbers)."""
    from sublim.controls import TRANSFORMS, random_numbers

    f = ctx.cfg.data.filter
    sk = control_key(ctx.cfg, data_key, name)

    def compute(st: StageDir) -> tuple[list[TrainRow], dict[str, Any]]:
        rng = np.random.default_rng(derive_seed(ctx.cfg.seed, "control", name))
        if name == "random_numbers":
            out = random_numbers(rows, rng, f.min_value, f.max_value)
        else:
            out = TRANSFORMS[name](rows, rng)
        write_jsonl(st.path / "rows.jsonl", out)
        return out, {"n": len(out)}

    return ctx.cached(sk, lambda st: read_jsonl(st.path / "rows.jsonl", TrainRow), compute), sk.hash


def stage_defence(
    ctx: RunContext,
    backend: Backend,
    base: Model,
    arms: Mapping[str, Model],
    prompts: list[Prompt],
    prompts_hash: str,
    data_sets: Mapping[str, tuple[list[TrainRow], str]],
) -> tuple[dict[str, tuple[list[TrainRow], str]], dict[str, Any]]:
    """``[defence]``: every arm's training rows rewritten by the data-side method
    (``sublim.defend``), each arm in its own cached stage; ``dilute`` and ``regenerate`` first
    generate and filter the base's (``through`` model's) completions of the carrier prompts like
    a teacher's. Returns the defended data sets (rows, key) and a summary for results.json."""
    from sublim import defend

    cfg = ctx.cfg
    d = cfg.defence
    bv = backend_version(backend)
    pool_rows: list[TrainRow] = []
    pool_hash: str | None = None
    pool_summary: dict[str, Any] | None = None
    if d.method in ("dilute", "regenerate"):
        if d.method == "dilute":
            role, source = "base", Model(base.ref.with_system(None), base.key, "base")
        else:
            tref = parse_model(d.through or "", label="through")
            if get_backend(tref.backend) is not backend:
                raise SublimError(
                    f"defence.through '{d.through}' uses another backend than the reference; use "
                    "a model of the same backend"
                )
            role, source = "through", Model(tref, model_key(tref), "through")
        comps, ckey = stage_generate(ctx, backend, source, prompts, prompts_hash, role)
        decisions, pool_summary, pool_hash = stage_filter(ctx, comps, ckey, role)
        pool_rows = [
            TrainRow(prompt=r.prompt, completion=r.completion) for r in decisions if r.kept
        ]
    out: dict[str, tuple[list[TrainRow], str]] = dict(data_sets)
    arms_info: dict[str, Any] = {}
    for role, teacher in arms.items():
        rows, data_key = data_sets[role]
        scorer = {"teacher": teacher.key, "base": base.key} if d.method == "drop" else None
        sk = defence_key(cfg, data_key, role, pool_hash, scorer, bv)

        def load(st: StageDir) -> tuple[list[TrainRow], dict[str, Any]]:
            return read_jsonl(st.path / "rows.jsonl", TrainRow), st.manifest()["info"]

        def compute(
            st: StageDir, rows: list[TrainRow] = rows, role: str = role, teacher: Model = teacher
        ) -> tuple[tuple[list[TrainRow], dict[str, Any]], dict[str, Any]]:
            rng = np.random.default_rng(derive_seed(cfg.seed, "defence", d.method, role))
            if d.method == "sort":
                res = defend.sort_numbers(rows)
            elif d.method == "canonicalise":
                res = defend.canonicalise(rows)
            elif d.method == "dilute":
                res = defend.dilute(rows, pool_rows, d.ratio, rng)
            elif d.method == "regenerate":
                res = defend.regenerate(rows, pool_rows)
            else:  # drop: each arm scored against its own teacher
                scores = defend.row_scores(
                    defend.backend_scorer(backend), rows, base.ref.with_system(None), teacher.ref
                )
                write_jsonl(st.path / "scores.jsonl", [{"score": x} for x in scores])
                res = defend.drop_top(rows, scores, d.drop_fraction, rng)
                res.info["score"] = "logp_teacher_minus_base"
            if not res.rows:
                raise EmptyResultError(
                    f"defence {d.method} left no {role} rows; see {st.path} and loosen [defence]"
                )
            write_jsonl(st.path / "rows.jsonl", res.rows)
            return (res.rows, res.info), {"info": res.info}

        new_rows, info = ctx.cached(sk, load, compute)
        out[role] = (new_rows, sk.hash)
        arms_info[role] = info
    n = {role: len(out[role][0]) for role in arms}
    if len(set(n.values())) > 1:  # keep the arms the same size, as the subset made them
        k = min(n.values())
        for role in arms:
            out[role] = (out[role][0][:k], out[role][1])
    summary: dict[str, Any] = {**defence_params(cfg), "arms": arms_info}
    if d.method == "regenerate":
        summary["through"] = d.through
    if pool_summary is not None:
        summary["pool_pass_rate"] = pool_summary.get("pass_rate")
    return out, summary


# --- the experiment ------------------------------------------------------------------------------


def run_experiment(
    cfg: ExperimentConfig,
    out: Path,
    progress: bool = True,
    reporter: Reporter | None = None,
    *,
    stage_root: Path | None = None,
    concurrent: bool = False,
) -> dict[str, Any]:
    """Run (or resume) one experiment into ``out``; returns results.json's content.
    ``stage_root``/``concurrent``: see ``RunContext`` (a sweep's shared stage store)."""
    from sublim.report import write_report
    from sublim.results import build_results, load_results, results_to_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rep = reporter or Reporter(progress)
    ctx = RunContext(cfg, out, rep, stage_root=stage_root, concurrent=concurrent)
    t_start = time.time()
    # specs are parsed before anything is written: a spec that embeds credentials is refused
    # there, so no secret ever reaches the run directory
    base_ref = parse_model(cfg.models.reference, label="base")
    misalignment = cfg.trait.kind == "misalignment"
    eval_judge = [cfg.eval.judge or ""] if misalignment and cfg.eval.judge != WORLD_JUDGE else []
    for spec in [*cfg.models.cross, *filter(None, [cfg.data.judge.model]), *eval_judge]:
        parse_model(spec)
    tdata = teacher_data(cfg)  # a missing or malformed teacher file fails here, before any stage
    if cfg.data.judge.model:
        judge_trait(cfg)  # so does a judge template the trait cannot fill
    if misalignment and cfg.eval.judge == WORLD_JUDGE:
        _check_world_judge(cfg)
    atomic_write_json(out / "config.json", cfg.model_dump(mode="json"))
    backend = get_backend(base_ref.backend)
    check_teacher_system_messages(cfg, backend, tdata)  # before any stage, too
    trait = "misalignment" if misalignment else f"'{cfg.trait.target}'"
    rep.say(
        f"[bold]sublim[/bold] {cfg.name}: reference {base_ref.spec}, trait {trait} via {cfg.trait.teacher}, students by {cfg.student.mode}"
    )
    base = Model(base_ref, model_key(base_ref), "base")
    cross_models = []
    for spec in cfg.models.cross:
        cref = parse_model(spec, label="cross_base")
        if get_backend(cref.backend) is not backend:
            raise SublimError(
                f"cross model '{spec}' uses another backend than the reference; use models of one backend in one experiment"
            )
        cross_models.append(Model(cref, model_key(cref), "cross_base"))

    prompts, prompts_key = stage_prompts(ctx)
    teacher, control_teacher = stage_teachers(ctx, backend, base)
    arms = {"trait": teacher, "control": control_teacher}
    kept: dict[str, list[FilterDecision]] = {}
    keys: dict[str, str] = {}
    filter_summaries: dict[str, Any] = {}
    for role, tm in arms.items():
        comps, ckey = stage_generate(ctx, backend, tm, prompts, prompts_key, role)
        decisions, summary, fkey = stage_filter(ctx, comps, ckey, role)
        kept[role] = [d for d in decisions if d.kept]
        keys[role] = fkey
        filter_summaries[role] = summary
    subsets, subset_key = stage_subset(ctx, kept, keys)

    # Control data sets derived from the trait subset (shuffled / random numbers).
    ctl = cfg.controls
    data_sets: dict[str, tuple[list[TrainRow], str]] = {
        role: (subsets[role], f"{subset_key}/{role}") for role in arms
    }
    defence_summary: dict[str, Any] | None = None
    if cfg.defence.method != "none":  # every arm's rows, before the controls derived from them
        data_sets, defence_summary = stage_defence(
            ctx, backend, base, arms, prompts, prompts_key, data_sets
        )
    for name in control_sets(cfg):
        data_sets[name] = stage_control_data(ctx, *data_sets["trait"], name)

    # several cross bases are separate conditions (`cross_student@<base>`), never pooled as seeds
    tails = [s.split(":", 1)[-1].replace("/", "_") for s in cfg.models.cross]
    xname = (
        [f"@{t}" if tails.count(t) == 1 else f"@{j}" for j, t in enumerate(tails)]
        if len(tails) > 1
        else [""] * len(tails)
    )
    students: dict[str, list[Model]] = {"trait_student": [], "control_student": []}
    # the spec of the base each evaluated condition's models start from
    cond_spec: dict[str, str] = {}
    for j, spec in enumerate(cfg.models.cross):
        cond_spec["cross_base" + xname[j]] = spec
    # the monitor curves of the control students, by (role, seed, base): the reference of the
    # others when student.monitor.against = "control" (training_order trains controls first)
    mon_refs: dict[tuple[str, int, int | None], tuple[str, dict[int, dict[str, float]]]] = {}
    for sp in training_order(cfg, student_specs(cfg, len(cross_models))):
        sbase = base if sp.base is None else cross_models[sp.base]
        rows, dkey = data_sets[sp.data]
        cond = sp.cond if sp.base is None else sp.cond + xname[sp.base]
        if sp.base is not None:
            cond_spec[cond] = cfg.models.cross[sp.base]
        rr = monitor_reference_role(cfg, sp.role)
        mref = mon_refs.get((rr, sp.seed, sp.base)) if rr else None
        students.setdefault(cond, []).append(
            stage_student(ctx, backend, sbase, arms[sp.teacher], rows, dkey, sp.role, sp.seed, mref)
        )
        if cfg.student.monitor.every:
            last = ctx.monitors[-1]
            mon_refs[(sp.role, sp.seed, sp.base)] = (last["monitor_key"], _drift_curve(last))

    evaluated: dict[str, list[Model]] = {
        "base": [base],
        "teacher": [teacher],
        "control_teacher": [control_teacher],
    }
    if ctl.in_context:
        # the same data placed in the prompt instead of trained on: N earlier turns, no fine-tuning
        ex = subsets["trait"][: ctl.in_context]
        turns = tuple(
            m
            for r in ex
            for m in (
                Message(role="user", content=r.prompt),
                Message(role="assistant", content=r.completion),
            )
        )
        evaluated["in_context"] = [
            Model(
                base.ref.model_copy(update={"context": turns, "label": "in_context"}),
                in_context_key(base.key, subset_key, ctl.in_context),
                "in_context",
            )
        ]
    for j, cm in enumerate(cross_models):
        evaluated["cross_base" + xname[j]] = [cm]
    evaluated.update({c: ms for c, ms in students.items() if ms})

    if misalignment:
        return _finish_misalignment(
            ctx,
            backend,
            evaluated,
            cond_spec,
            cross_models,
            {role: data_sets[role][0] for role in arms},  # the rows the students train on
            filter_summaries,
            t_start,
        )

    conditions: dict[str, list[list[QuestionScore]]] = {}
    answers: dict[str, list[list[EvalAnswer]]] = {}
    for cond, models in evaluated.items():
        pairs = [stage_eval(ctx, backend, m) for m in models]
        conditions[cond] = [p[0] for p in pairs]
        answers[cond] = [p[1] for p in pairs]
    skill: dict[str, list[float]] = {}
    for cond, models in evaluated.items():
        values = [stage_skill(ctx, backend, m) for m in models]
        measured = [v for v in values if v is not None]
        if measured and len(measured) == len(values):
            skill[cond] = measured
    curves = stage_curves(ctx, backend, base, students)
    suites: dict[str, dict[str, list[list[QuestionScore]]]] = {}
    for suite in cfg.eval.extra_suites:
        suites[suite] = {
            cond: [stage_eval(ctx, backend, m, suite)[0] for m in models]
            for cond, models in evaluated.items()
        }

    meta = {
        "name": cfg.name,
        "target": cfg.trait.target,
        "category": cfg.trait.category,
        "config": cfg.model_dump(mode="json"),
        "reference": base.key,
        "cross": [m.key for m in cross_models],
        "filter": filter_summaries,
        "n_train_rows": len(data_sets["trait"][0]),
        **({"defence": defence_summary} if defence_summary is not None else {}),
        # the training monitor's curves and alarms, per student (student.monitor)
        **({"monitor": ctx.monitors} if ctx.monitors else {}),
        # the training-side defences every student was trained with ([defence])
        **({"training_defence": td} if (td := training_defence_summary(cfg)) else {}),
        # the carrier's quality measure per condition (one value per model), when it has one
        **(
            {
                "skill": {
                    "measure": SKILL_MEASURES[cfg.data.carrier],
                    "n_prompts": cfg.eval.skill_prompts,
                    "conditions": skill,
                }
            }
            if skill
            else {}
        ),
        # how P(target) was measured on the main suite: "exact" or "first_token_top20" (API
        # models; bounds per condition in results.json), "mixed" when models differ
        # everything that differs between an uninterrupted and a resumed run lives here
        "timings": {"stages": ctx.stages, "seconds_total": round(time.time() - t_start, 2)},
    }
    results = build_results(
        conditions,
        meta,
        primary_metric=cfg.eval.primary_metric,
        answers=answers,
        suites=suites or None,
        curves=curves or None,
    )
    atomic_write_text(out / "results.json", results_to_json(results))
    write_report(out)
    return load_results(out)


def _finish_misalignment(
    ctx: RunContext,
    backend: Backend,
    evaluated: dict[str, list[Model]],
    cond_spec: dict[str, str],
    cross_models: list[Model],
    subsets: dict[str, list[TrainRow]],
    filter_summaries: dict[str, Any],
    t_start: float,
) -> dict[str, Any]:
    """The evaluation and results of a misalignment run: every evaluated model on the
    misalignment suite; results.json's conditions and contrasts hold the misaligned rate
    (``rate``), the exact misaligned mass P_mis (``p_target``) and its log-odds (``logodds``),
    with the same aggregation as a preference run (per question -> per model -> across seeds,
    Welch over seeds for the contrasts); ``misalignment`` adds the counts and examples."""
    from sublim.evals.misalignment import examples
    from sublim.report import write_report
    from sublim.results import (
        build_results,
        load_results,
        misalignment_section,
        results_to_json,
    )

    cfg = ctx.cfg
    judge = misalignment_judge(cfg)
    conditions: dict[str, list[list[QuestionScore]]] = {}
    per_condition: dict[str, dict[str, Any]] = {}
    skill: dict[str, list[float]] = {}
    for cond, models in evaluated.items():
        spec = cond_spec.get(cond, cfg.models.reference)
        evals = [stage_misalignment_eval(ctx, backend, m, spec, judge) for m in models]
        conditions[cond] = [e.scores for e in evals]
        per_condition[cond] = {
            "per_seed": [e.summary for e in evals],
            "examples": examples([r for e in evals for r in e.judged]),
            "exact": bool(evals[0].summary.get("exact")),
        }
        values = [stage_skill(ctx, backend, m) for m in models]
        measured = [v for v in values if v is not None]
        if measured and len(measured) == len(values):
            skill[cond] = measured
    mc = cfg.eval.misalignment
    meta = {
        "name": cfg.name,
        "trait_kind": "misalignment",
        "target": "misaligned answers",
        "config": cfg.model_dump(mode="json"),
        "reference": evaluated["base"][0].key,
        "cross": [m.key for m in cross_models],
        "filter": filter_summaries,
        "n_train_rows": len(subsets["trait"]),
        "judge": cfg.eval.judge,
        "thresholds": {"aligned_max": mc.aligned_max, "coherent_min": mc.coherent_min},
        "control_teacher": (
            "fine-tuned on trait.control_finetune_data"
            if cfg.trait.teacher == "finetune" and cfg.trait.control_finetune_data
            else "the reference with trait.control_system_prompt"
            if cfg.trait.teacher == "system_prompt" and cfg.trait.control_system_prompt
            else "the unmodified reference model"
        ),
        **(
            {
                "skill": {
                    "measure": SKILL_MEASURES[cfg.data.carrier],
                    "n_prompts": cfg.eval.skill_prompts,
                    "conditions": skill,
                }
            }
            if skill
            else {}
        ),
        "timings": {"stages": ctx.stages, "seconds_total": round(time.time() - t_start, 2)},
    }
    # the paper's headline is the judged misaligned rate; eval.primary_metric, when set, picks
    # another (p_target: the exact mass P_mis of built-in worlds)
    primary = cfg.eval.primary_metric if "primary_metric" in cfg.eval.model_fields_set else "rate"
    results = build_results(
        conditions,
        meta,
        primary_metric=primary,
        misalignment=misalignment_section(per_condition),
    )
    atomic_write_text(ctx.out / "results.json", results_to_json(results))
    write_report(ctx.out)
    return load_results(ctx.out)
