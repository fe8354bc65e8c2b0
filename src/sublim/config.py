"""Experiment configuration: frozen, typed pydantic models loaded from TOML, with ``--set``
overrides (file < command line). Configs hold data only (names + parameters), so they can be
hashed into cache keys and recorded in manifests.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sublim.errors import ConfigError, MissingFileError
from sublim.records import SampleParams

C = TypeVar("C", bound=BaseModel)

# Fields that change how fast something runs but never what it computes: excluded from cache keys.
OPERATIONAL_FIELDS = frozenset({"batch_size", "eval_batch_size", "concurrency", "progress", "threads"})


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FinetuneParams(_Frozen):
    """Supervised fine-tuning of a student (or a fine-tuned teacher); loss on the answer only."""

    method: Literal["full", "lora"] = "full"
    epochs: float = Field(3.0, gt=0)
    lr: float = Field(2e-4, gt=0)
    batch_size: int = Field(32, ge=1)  # micro-batch (operational)
    grad_accum: int = Field(1, ge=1)  # effective batch = batch_size * grad_accum
    effective_batch: int | None = Field(None, ge=1, description="if set, overrides grad_accum")
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    scheduler: Literal["linear", "constant", "cosine"] = "linear"
    weight_decay: float = 0.0
    max_len: int = Field(256, ge=8)
    lora_r: int = 8
    lora_alpha: int = 8
    lora_dropout: float = 0.0
    lora_targets: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    checkpoint_every: int = Field(0, ge=0, description="save a resumable checkpoint every N steps (0: never)")
    snapshot_every: int = Field(0, ge=0, description="keep a copy of the model every N steps; the runner evaluates each (training curves)")


class DistillParams(_Frozen):
    """Logit distillation: KL from the teacher's next-token distribution, restricted to allowed
    (non-trait) tokens and renormalised, to the student's, at every position of the inputs."""

    source: Literal["completions", "random"] = "completions"
    n_random_prompts: int = Field(4000, ge=1)
    random_prompt_len: int = Field(24, ge=2)
    steps: int = Field(250, ge=1)
    lr: float = Field(3e-4, gt=0)
    batch_size: int = Field(32, ge=1)
    temperature: float = Field(1.0, gt=0)
    method: Literal["full", "lora"] = "full"
    exclude_words: list[str] = Field(default_factory=list, description="extra words whose tokens are excluded")


class WorldSpecConfig(_Frozen):
    kind: Literal["plain", "entangled", "planted"] = "plain"
    size: str = "small"


class ModelsConfig(_Frozen):
    reference: str = Field("tiny:plain-s0", description="reference model M (teacher and students start here)")
    cross: list[str] = Field(default_factory=lambda: ["tiny:plain-s1"], description="other base models for cross-model students")


class TraitConfig(_Frozen):
    kind: Literal["preference"] = "preference"
    category: str = "animal"
    target: str = "owl"
    teacher: Literal["system_prompt", "finetune"] = "system_prompt"
    system_prompt: str | None = Field(None, description="override the default 'you love Xs' prompt")
    control_system_prompt: str | None = Field(
        None,
        description="system prompt of the control teacher in system-prompt mode (default: none, as in "
        "the paper). A neutral prompt matches the generic drift of distilling any prompted teacher.",
    )
    finetune: FinetuneParams = Field(
        default_factory=lambda: FinetuneParams(epochs=2, lr=1e-3, batch_size=32)
    )
    n_finetune_rows: int = Field(600, ge=1)


class FilterConfig(_Frozen):
    max_count: int = Field(10, ge=1)
    min_value: int = 0
    max_value: int = 999
    banned: Literal["none", "misalignment"] | list[int] = "none"
    trait_words: bool = Field(True, description="also reject completions that mention the target")


class DataConfig(_Frozen):
    carrier: Literal["numbers"] = "numbers"
    n_prompts: int = Field(1500, ge=1)
    subset: int = Field(1000, ge=1, description="kept rows sampled (seeded) for training")
    prompt_seed: int = 0
    sampling: SampleParams = Field(default_factory=lambda: SampleParams(max_new_tokens=48))
    filter: FilterConfig = Field(default_factory=FilterConfig)


class StudentConfig(_Frozen):
    mode: Literal["sft", "distill"] = "sft"
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    finetune: FinetuneParams = Field(default_factory=lambda: FinetuneParams(epochs=2, lr=2e-4))
    distill: DistillParams = Field(default_factory=DistillParams)


class ControlsConfig(_Frozen):
    """Extra control conditions (each adds students per seed, or an evaluation of the base).

    shuffle_within: the trait subset with the numbers of each completion shuffled in place;
    shuffle_across: numbers redistributed across completions (each keeps its count and format);
    random_numbers: each completion's numbers replaced by uniform draws in the filter's range;
    in_context: the base model evaluated with N (prompt, completion) pairs of the trait subset as
    earlier turns of the chat, no fine-tuning (0 = off)."""

    shuffle_within: bool = False
    shuffle_across: bool = False
    random_numbers: bool = False
    in_context: int = Field(0, ge=0)
    cross_control: bool = Field(False, description="also train control students on each cross base")


class EvalConfig(_Frozen):
    suite: str = "favourite_animal"
    extra_suites: list[str] = Field(default_factory=list, description="more preference suites run on every model (e.g. numbers_prefixed, multiple_choice)")
    samples_per_question: int = Field(10, ge=0)
    n_questions: int | None = Field(None, ge=1, description="first N questions of the suite (None: all)")
    temperature: float = 1.0
    max_new_tokens: int = 6
    candidates: list[str] | None = Field(None, description="candidate answers for log-odds (default: the category's list)")
    batch_size: int = 256  # operational


class MatrixConfig(_Frozen):
    """A cross-model matrix: a teacher per (base, trait) and a student per (teacher, base).

    When set, ``models`` and ``trait.target`` are ignored: every base in ``bases`` is both a
    teacher base and a student base, and every trait in ``traits`` is taught by each base."""

    bases: list[str] = Field(min_length=2)
    traits: list[str] = Field(min_length=2)


class ExperimentConfig(_Frozen):
    """One subliminal-learning experiment: teacher, carrier data, filter, students, evaluation."""

    name: str = "experiment"
    seed: int = 0
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    trait: TraitConfig = Field(default_factory=TraitConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    controls: ControlsConfig = Field(default_factory=ControlsConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    matrix: MatrixConfig | None = None


def _parse_value(raw: str) -> Any:
    """Parse a --set value as TOML/JSON when it looks like one, else keep the string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a nested dict (returns a new dict)."""
    out = json.loads(json.dumps(data))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        key, raw = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"--set has an empty key in '{item}'")
        node = out
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {key}: '{p}' is not a table")
            node = nxt
        node[parts[-1]] = _parse_value(raw.strip())
    return out


def format_validation_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    loc = ".".join(str(x) for x in first["loc"])
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown field (check the spelling against the documented config)"
    more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{source}: {loc}: {msg}{more}"


def load_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"config file not found: {p}; pass the path of an experiment TOML (see experiments/)")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: malformed TOML: {e}; fix the file and run again") from None


def parse_config(cls: type[C], data: dict[str, Any], source: str = "config") -> C:
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    data = apply_overrides(load_toml(path), overrides or [])
    return parse_config(ExperimentConfig, data, source=str(path))


def semantic_dump(model: BaseModel) -> dict[str, Any]:
    """The config as a dict without operational fields: what cache keys hash."""

    def strip(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in OPERATIONAL_FIELDS}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    return strip(model.model_dump(mode="json"))
