"""The dry run: what ``sublim run CONFIG`` would do, reuse and (for API models) cost, without
running a stage, building a model or touching the network (``sublim run --dry-run``).

Pipeline position: beside the runner. Stage directories come from ``pipeline.stage_keys``, the
functions the runner keys its stages with, so a plan names exactly the directories a run would
write under ``<run>/stages/``; a directory with a manifest is reused, one without is resumed. A
``[matrix]`` config is keyed cell by cell as ``sublim.matrix.run_matrix`` keys it, with the same
functions (``_matrix_dirs``). Model keys are computed offline: a built-in world by its recipe
(never built here), an ``hf:`` directory by its files, a hub id by the revision in the local
cache. What cannot be known here is keyed twice with two placeholders, and the stages whose
directory changes are "unknown": those of a hub model missing from the local cache, and those
keyed by the content of a data file that is not there (a user's prompts or teacher data).

What each stage asks of each model follows the config: a completion per carrier prompt and
teacher; the judge on the rows the rule filter keeps (at most every row until the filter has
run); questions x samples per evaluated model, plus the exact metrics (scored sequences on local
models, one first-token request per question on API models); the carrier-skill prompts; the
misalignment suite's answers and their judging; a fine-tuning job per fine-tuned teacher and
student. Prompt tokens are counted with the model's own tokenizer when the model is local and
its tokenizer is on disk, else estimated at ~4 characters per token (chat-template tokens are
not counted); completions count ``max_new_tokens`` each, an upper bound. Prices (USD per 1M
tokens) come from the shipped ``prices.toml`` or the user's ``--prices`` file; every figure is
an estimate.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from sublim import pipeline
from sublim.config import WORLD_JUDGE, ExperimentConfig, load_toml, parse_config
from sublim.errors import MissingFileError, SublimError
from sublim.records import ModelRef, Prompt
from sublim.registry import get_backend, parse_model
from sublim.seeds import derive_seed

CHARS_PER_TOKEN = 4
TOKEN_METHOD = (
    f"the model's own tokenizer where it is local and on disk, else ~{CHARS_PER_TOKEN} "
    "characters per token, of the text sent (chat-template tokens not counted); estimates"
)
API_BACKENDS = ("openai", "openai-compat")
MANIFEST = "manifest.json"  # what makes a stage directory complete (artifacts.StageDir)
UNKNOWN = "unknown (model not local)"
UNKNOWN_FILE = "unknown (data file missing)"
# config values with these endings name files whose content keys stages (custom prompts,
# teacher chat data)
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".txt")
FINE_TUNED = " (fine-tuned)"  # appended to the spec of a model the run fine-tunes


# --- prices ------------------------------------------------------------------------------------


class ModelPrice(BaseModel):
    """USD per 1M tokens for one API model (the fine-tuned rates apply to its fine-tunes)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    input: float = Field(ge=0)
    output: float = Field(ge=0)
    training: float | None = Field(None, ge=0)
    finetuned_input: float | None = Field(None, ge=0)
    finetuned_output: float | None = Field(None, ge=0)


class PriceTable(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    read_on: str | None = None
    source: str | None = None
    batch_discount: float = Field(1.0, gt=0, le=1, description="price factor of Batch API rows")
    models: dict[str, ModelPrice] = Field(default_factory=dict)

    def find(self, model_id: str) -> ModelPrice | None:
        """The entry of ``model_id``, or of its undated name (``gpt-4.1-2025-04-14``)."""
        if model_id in self.models:
            return self.models[model_id]
        return self.models.get(re.sub(r"-\d{4}-\d{2}-\d{2}$", "", model_id))


def load_prices(override: Path | None = None) -> PriceTable:
    """The shipped price table, with the models of ``override`` (same format) replacing or
    adding entries, and its other fields replacing the shipped ones."""
    text = resources.files("sublim").joinpath("prices.toml").read_text(encoding="utf-8")
    table = parse_config(PriceTable, tomllib.loads(text), source="sublim/prices.toml")
    if override is None:
        return table
    if not Path(override).is_file():
        raise MissingFileError(
            f'price table not found: {override}; pass a TOML file of [models."NAME"] tables '
            "with input, output (and training) USD per 1M tokens, as in src/sublim/prices.toml"
        )
    user = parse_config(PriceTable, load_toml(override), source=str(override))
    fields = user.model_dump(exclude_unset=True, exclude={"models"})
    return table.model_copy(update={**fields, "models": {**table.models, **user.models}})


# --- the plan ----------------------------------------------------------------------------------


@dataclass
class StagePlan:
    id: str
    dir: str
    status: str  # run | cached | resume | unknown (model not local)


@dataclass
class Work:
    """What one stage asks of one model (counts of the whole stage; ``runs``: whether the stage
    would run, so whether they are spent)."""

    stage: str
    model: str  # the model spec, + FINE_TUNED for a model this run fine-tunes
    kind: str  # generate | judge | eval | curve | skill | finetune | distill
    requests: int = 0  # completions asked for (incl. first-token requests of API metrics)
    judge_requests: int = 0
    scored: int = 0  # sequences scored exactly (local compute, or sublim serve)
    input_tokens: int = 0
    output_tokens: int = 0  # upper bound: max_new_tokens per completion
    jobs: int = 0
    train_tokens: int = 0  # rows x epochs x tokens per row
    bound: bool = False  # the counts are upper bounds (rows the filter keeps are not known yet)
    batch: bool = False  # sent through the Batch API (backend.batch)
    runs: bool = True


@dataclass
class Cost:
    model: str
    input_usd: float
    output_usd: float
    training_usd: float

    @property
    def total_usd(self) -> float:
        return self.input_usd + self.output_usd + self.training_usd


@dataclass
class Plan:
    name: str
    out: str
    stages: list[StagePlan] = field(default_factory=list)
    work: list[Work] = field(default_factory=list)
    costs: list[Cost] = field(default_factory=list)
    local_models: list[str] = field(default_factory=list)
    missing_prices: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    prices_read_on: str | None = None
    matrix: bool = False
    token_methods: dict[str, str] = field(default_factory=dict)  # model -> tokenizer | chars/4
    gpu: list[dict[str, Any]] = field(default_factory=list)  # gpu_estimates: per local model

    @property
    def total_usd(self) -> float:
        return sum(c.total_usd for c in self.costs)

    def totals(self) -> dict[str, dict[str, Any]]:
        """Per model, the counts of the stages that would run."""
        out: dict[str, dict[str, Any]] = {}
        for w in self.work:
            if not w.runs:
                continue
            t = out.setdefault(w.model, {k: 0 for k in _COUNTS} | {"bounds": []})
            for k in _COUNTS:
                t[k] += getattr(w, k)
                if w.bound and getattr(w, k) and k not in t["bounds"]:
                    t["bounds"].append(k)  # this count is an upper bound
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "out": self.out,
            "estimate": True,
            "tokens": TOKEN_METHOD,
            "token_methods": self.token_methods,
            "matrix": self.matrix,
            "stages": [asdict(s) for s in self.stages],
            "work": [asdict(w) for w in self.work],
            "models": self.totals(),
            "costs": [{**asdict(c), "total_usd": c.total_usd} for c in self.costs],
            "total_usd": self.total_usd,
            "local_models": self.local_models,
            "missing_prices": self.missing_prices,
            "prices_read_on": self.prices_read_on,
            "notes": self.notes,
            "gpu": {"assumptions": GPU_NAME, "models": self.gpu},
        }


_COUNTS = (
    "requests",
    "judge_requests",
    "scored",
    "input_tokens",
    "output_tokens",
    "jobs",
    "train_tokens",
)


_HEADS = dict(zip(_COUNTS, ("gen", "judge", "scored", "in tok", "out tok", "jobs", "train tok")))


def tokens(chars: int) -> int:
    """The token estimate of ``chars`` characters of text."""
    return math.ceil(chars / CHARS_PER_TOKEN)


# --- model keys, offline -----------------------------------------------------------------------


def offline_model_key(ref: ModelRef) -> str | None:
    """``pipeline.model_key`` without building, downloading or asking anything: None when the
    key cannot be known here (a hub model that is not in the local cache)."""
    if ref.backend == "tiny":  # the world's directory name, from its recipe: never built here
        from sublim.world.build import world_key

        return f"tiny:{world_key(ref.id)}"
    if ref.backend == "hf":
        from sublim.artifacts import dir_content_key
        from sublim.backends.hf_models import cached_snapshot

        local = Path(ref.id).expanduser()
        if local.is_dir():
            return f"{ref.spec}@{dir_content_key(local)}"
        snap = cached_snapshot(ref.id)
        return f"{ref.spec}@rev:{snap.name}" if snap is not None else None
    return pipeline.model_key(ref)  # smollm2, fake and API models: no I/O


def _stage_dirs(
    cfg: ExperimentConfig,
    keys: Mapping[str, str],
    jkeys: Mapping[str, str],
    bv: str | None,
    method: str,
) -> dict[str, str]:
    """``stage_keys`` as the runner keys its stages: models by ``keys``, judges by ``jkeys``
    and the evaluations with the P(target) method the backend has (``stage_eval``)."""
    return pipeline.stage_keys(cfg, keys, bv, judge_keys=jkeys, p_target_method=method)


def _status(out: Path, d: str) -> str:
    p = out / "stages" / d
    if (p / MANIFEST).is_file():
        return "cached"
    return "resume" if p.is_dir() else "run"


# --- what each stage asks ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Served:
    """An evaluated model as the plan bills it."""

    model: str  # billed as: the spec, + FINE_TUNED for a model the run fine-tunes
    system: str | None = None
    context_tokens: int = 0  # in-context turns placed before every chat

    @property
    def base(self) -> str:
        """The spec of the base model it starts from."""
        return self.model.removesuffix(FINE_TUNED)


@dataclass(frozen=True)
class _Suite:
    prompts: list[str]
    max_new_tokens: int
    scored: int  # exact: scored sequences over all prompts (0: the suite has no exact metric)


def _suite(cfg: ExperimentConfig, name: str) -> _Suite | None:
    """The prompts of a preference suite and what its exact metric scores (None: a suite the
    plan does not know)."""
    from sublim.evals import ALIASES
    from sublim.evals.preference import candidate_set, questions, surface_forms
    from sublim.evals.variants import (
        STORY_MIN_TOKENS,
        mc_items,
        numbers_prefixed_questions,
        story_prompts,
    )

    e, t = cfg.eval, cfg.trait
    name = ALIASES.get(name, name)
    cands = candidate_set(t.target, t.category, e.candidates)
    forms = sum(len(surface_forms(c)) for c in cands)
    if name == "favourite_animal":
        qs = questions(t.category, e.n_questions)
        return _Suite(qs, e.max_new_tokens, len(qs) * forms)
    if name == "numbers_prefixed":
        qs = numbers_prefixed_questions(t.category, cfg.seed, e.n_questions)
        return _Suite(qs, e.max_new_tokens, len(qs) * forms)
    if name == "storytelling":
        qs = story_prompts(t.category, e.n_questions)
        return _Suite(qs, max(e.max_new_tokens, STORY_MIN_TOKENS), 0)
    if name == "multiple_choice":
        items = mc_items(cands[0], t.category, cands, cfg.seed, e.n_questions)
        return _Suite([p for p, _ in items], e.max_new_tokens, sum(len(o) for _, o in items))
    return None


def _tokenizer_file(spec: str) -> Path | None:
    """The ``tokenizer.json`` of a local model already on disk (a built world, an ``hf:``
    directory or cached hub snapshot), else None; nothing is built or downloaded."""
    ref = parse_model(spec)
    d: Path | None = None
    if ref.backend == "tiny":
        from sublim.world.build import CARD, cache_root, world_key

        d = cache_root() / "worlds" / world_key(ref.id)
        d = d if (d / CARD).is_file() else None
    elif ref.backend == "hf":
        from sublim.backends.hf_models import cached_snapshot

        local = Path(ref.id).expanduser()
        d = local if local.is_dir() else cached_snapshot(ref.id)
    f = d / "tokenizer.json" if d is not None else None
    return f if f is not None and f.is_file() else None


class _Tokens:
    """Token counts of texts sent to a model: with its own tokenizer when the model is local
    and its tokenizer is on disk, else ~4 characters per token."""

    def __init__(self) -> None:
        self._tok: dict[str, Any] = {}
        self._memo: dict[str, dict[str, int]] = {}

    def _load(self, model: str) -> Any:
        base = model.removesuffix(FINE_TUNED)  # a fine-tune keeps its base's tokenizer
        if base not in self._tok:
            f, tok = _tokenizer_file(base), None
            if f is not None:
                try:
                    from tokenizers import Tokenizer

                    tok = Tokenizer.from_file(str(f))
                except Exception:  # noqa: BLE001 (an unreadable file: count characters instead)
                    tok = None
            self._tok[base] = tok
        return self._tok[base]

    def method(self, model: str) -> str:
        return "tokenizer" if self._load(model) is not None else f"chars/{CHARS_PER_TOKEN}"

    def __call__(self, model: str, texts: Sequence[str]) -> int:
        texts = [t for t in texts if t]
        tok = self._load(model)
        if tok is None or not texts:
            return tokens(sum(len(t) for t in texts))
        # each distinct text is encoded once per tokenizer (prompts recur across stages)
        memo = self._memo.setdefault(model.removesuffix(FINE_TUNED), {})
        new = [t for t in dict.fromkeys(texts) if t not in memo]
        for t, e in zip(new, tok.encode_batch(new, add_special_tokens=False)):
            memo[t] = len(e.ids)
        return sum(memo[t] for t in texts)


class _Counter:
    """What stages ask of models, from the config and, where they are complete, the stages
    they read (the rows a filter kept, the rows of a subset)."""

    def __init__(self, cfg: ExperimentConfig, out: Path, method: str, api: bool) -> None:
        self.cfg, self.out, self.method, self.api = cfg, out, method, api
        self.notes: list[str] = []
        self.first_token = False  # whether an evaluation reads first-token tables
        self.tok = _Tokens()
        try:
            self.prompts: list[Prompt] = pipeline.carrier_prompts(cfg)
        except SublimError as e:  # the user's prompt file is missing: counted, not measured
            self.prompts = [Prompt(id=str(i), text="") for i in range(cfg.data.n_prompts)]
            self.notes.append(f"prompt tokens not counted: {e}")

    def _manifest(self, d: str) -> dict[str, Any] | None:
        import json

        p = self.out / "stages" / d / MANIFEST
        return json.loads(p.read_text()) if p.is_file() else None

    def prompt_tokens(self, model: str) -> float:
        """Mean tokens of a carrier prompt for ``model``."""
        return self.tok(model, [p.text for p in self.prompts]) / max(1, len(self.prompts))

    def epochs(self, e: float) -> float:
        # API providers take whole epochs (the OpenAI backend rounds up)
        return float(max(1, math.ceil(e))) if self.api else e

    def generate(self, sid: str, d: str, model: str, system: str | None) -> Work:
        """A completion per carrier prompt (less the chunks a resumed stage has written)."""
        parts = self.out / "stages" / d / "parts"
        n_parts = math.ceil(len(self.prompts) / pipeline.GEN_CHUNK)
        done = sum((parts / f"part-{i:05d}.jsonl").is_file() for i in range(n_parts))
        todo = self.prompts[min(len(self.prompts), done * pipeline.GEN_CHUNK) :]
        n = len(todo)
        return Work(
            sid,
            model,
            "generate",
            requests=n,
            input_tokens=self.tok(model, [p.text for p in todo])
            + n * self.tok(model, [system or ""]),
            output_tokens=n * self.cfg.data.sampling.max_new_tokens,
            batch=self.cfg.backend.batch,
        )

    def judge(self, sid: str, filter_dir: str) -> Work:
        """The judge on the rows the rule filter kept (every row, at most, before it ran)."""
        from sublim.judge import get_template

        d = self.cfg.data
        judge = str(d.judge.model)
        man = self._manifest(filter_dir)
        n = int(man["summary"]["n_kept"]) if man else len(self.prompts)
        per_row = self.tok(judge, [get_template(d.judge.template).text]) + self.prompt_tokens(judge)
        return Work(
            sid,
            judge,
            "judge",
            judge_requests=n,
            input_tokens=int(n * per_row) + n * d.sampling.max_new_tokens,
            output_tokens=n,  # one token: the verdict is read from its first-token table
            bound=man is None,
        )

    def teacher_job(self, sid: str, model: str, cfg: ExperimentConfig, role: str) -> Work | None:
        """A fine-tuned teacher: on the user's chat file (misalignment), else on the trait's
        answer rows (the control's are as long)."""
        from sublim.traits import finetune_rows

        t = cfg.trait
        if t.kind == "misalignment":
            try:
                rows = pipeline.teacher_data(cfg)[role]
            except SublimError as e:
                self.notes.append(f"{sid}: not counted ({e})")
                return None
        else:
            rng = np.random.default_rng(derive_seed(cfg.seed, "teacher-rows", role))
            rows = finetune_rows(t.target, t.category, t.n_finetune_rows, rng)
        texts = [x for r in rows for x in (r.system or "", r.prompt, r.completion)]
        train = int(self.tok(model, texts) * self.epochs(t.finetune.epochs))
        return Work(sid, model, "finetune", jobs=1, train_tokens=train)

    def train_rows(self, subset_dir: str, role: str, model: str) -> tuple[int, float, bool]:
        """Rows per student, tokens per row, and whether both are upper bounds: read from the
        subset stage when it is complete, else the configured size and max_new_tokens."""
        from sublim.artifacts import read_jsonl
        from sublim.records import TrainRow

        man = self._manifest(subset_dir)
        rows_file = self.out / "stages" / subset_dir / f"{role}.jsonl"
        if man is not None and rows_file.is_file():
            rows = read_jsonl(rows_file, TrainRow)
            n_tok = self.tok(model, [x for r in rows for x in (r.prompt, r.completion)])
            return len(rows), n_tok / max(1, len(rows)), False
        k = min(self.cfg.data.subset, len(self.prompts))
        return k, self.prompt_tokens(model) + self.cfg.data.sampling.max_new_tokens, True

    def student_job(self, sid: str, base: str, subset_dir: str, role: str) -> Work:
        k, per_row, bound = self.train_rows(subset_dir, role, base)
        sc = self.cfg.student
        if sc.mode == "sft":
            train = k * per_row * self.epochs(sc.finetune.epochs)
            return Work(sid, base, "finetune", jobs=1, train_tokens=int(train), bound=bound)
        ds = sc.distill
        seq = ds.random_prompt_len if ds.source == "random" else per_row
        train = ds.steps * ds.batch_size * seq
        return Work(sid, base, "distill", jobs=1, train_tokens=int(train), bound=bound)

    def curve_points(self, subset_dir: str) -> int:
        """Evaluations on a student's training curve: every snapshot and the final model."""
        ft = self.cfg.student.finetune
        k, _, _ = self.train_rows(subset_dir, "trait", self.cfg.models.reference)
        steps = math.ceil(ft.epochs * k / max(1, ft.update_batch))
        return steps // max(1, ft.snapshot_every) + 1

    def _chat_tokens(self, s: _Served, texts: Sequence[str]) -> int:
        """Tokens of the chats ``texts`` as sent to ``s``: its system prompt and in-context
        turns before each."""
        extra = self.tok(s.model, [s.system or ""]) + s.context_tokens
        return self.tok(s.model, texts) + len(texts) * extra

    def evaluate(
        self,
        sid: str,
        s: _Served,
        suite: str,
        k: int,
        points: int = 1,
        cfg: ExperimentConfig | None = None,
    ) -> Work | None:
        """``k`` samples per question, and the exact metric: scored sequences, or one
        first-token request per question where the backend cannot score exactly."""
        load = _suite(cfg or self.cfg, suite)
        if load is None:
            self.notes.append(f"{sid}: no estimate for suite {suite}")
            return None
        n = len(load.prompts)
        chat = self._chat_tokens(s, load.prompts)
        w = Work(sid, s.model, "curve" if k == 0 else "eval")
        if k:
            w.requests += n * k
            w.input_tokens += chat * k
            w.output_tokens += n * k * load.max_new_tokens
        if load.scored and self.method == "exact":
            w.scored += load.scored
        elif load.scored and self.method != "none":
            self.first_token = True
            w.requests += n
            w.input_tokens += chat
            w.output_tokens += n
        for f in _COUNTS:
            setattr(w, f, getattr(w, f) * points)
        return w

    def misalignment(self, sid: str, s: _Served, judge: str | None) -> list[Work]:
        """The misalignment suite (``stage_misalignment_eval``): ``samples_per_question``
        answers per question, each judged twice (alignment, coherence) by a judge model, and
        once more each from its log-probabilities where asked (``use_logprobs``). The built-in
        world's exact judge (``"world"``) is a rule: no requests."""
        from sublim.evals.misalignment import ALIGNMENT_PROMPT

        mc = self.cfg.eval.misalignment
        qs, _ = pipeline.misalignment_questions(self.cfg, s.base)
        k = mc.samples_per_question
        n = len(qs) * k
        out = [
            Work(
                sid,
                s.model,
                "eval",
                requests=n,
                input_tokens=self._chat_tokens(s, qs) * k,
                output_tokens=n * mc.max_new_tokens,
            )
        ]
        if judge and judge != "world":
            calls = 2 * (2 if mc.use_logprobs else 1)
            per = self.tok(judge, [ALIGNMENT_PROMPT]) + self.tok(judge, qs) / max(1, len(qs))
            out.append(
                Work(
                    sid,
                    judge,
                    "judge",
                    judge_requests=calls * n,
                    input_tokens=int(calls * n * (per + mc.max_new_tokens)),
                    output_tokens=2 * n * mc.judge_max_new_tokens + (calls - 2) * n,
                )
            )
        return out

    def skill(self, sid: str, s: _Served) -> Work:
        prompts = [p.text for p in pipeline.skill_prompts(self.cfg)]
        n = len(prompts)
        return Work(
            sid,
            s.model,
            "skill",
            requests=n,
            input_tokens=self._chat_tokens(s, prompts),
            output_tokens=n * self.cfg.data.sampling.max_new_tokens,
        )


def _teacher_prompts(cfg: ExperimentConfig) -> dict[str, str | None]:
    """The system prompts of the trait and control teachers (none for fine-tuned teachers)."""
    from sublim.traits import system_prompt_for

    t = cfg.trait
    if t.teacher != "system_prompt":
        return {"trait": None, "control": None}
    return {
        "trait": t.system_prompt or system_prompt_for(t.target, t.category),
        "control": t.control_system_prompt,
    }


def _billed(spec: str, fine_tuned: bool) -> str:
    return spec + FINE_TUNED if fine_tuned else spec


_STUDENT = re.compile(r"student-(.+)-s(\d+)(?:@(\d+))?")


def _served(cfg: ExperimentConfig, c: _Counter, mid: str) -> _Served | None:
    """The model an id of ``stage_keys`` evaluates (``eval-<suite>-<mid>``, ``skill-<mid>``,
    ``curve-<mid>``); None for an id this plan does not know."""
    ref, ft_teacher = cfg.models.reference, cfg.trait.teacher == "finetune"
    if mid == "base":
        return _Served(ref)
    if mid in ("teacher", "control_teacher"):
        role = "trait" if mid == "teacher" else "control"
        return _Served(_billed(ref, ft_teacher), _teacher_prompts(cfg)[role])
    if mid == "in_context":  # n earlier turns of the trait subset before every chat
        row = c.prompt_tokens(ref) + cfg.data.sampling.max_new_tokens
        return _Served(ref, context_tokens=int(cfg.controls.in_context * row))
    if m := re.fullmatch(r"cross_base@(\d+)", mid):
        return _Served(cfg.models.cross[int(m.group(1))])
    if m := _STUDENT.fullmatch(mid):
        base = ref if m.group(3) is None else cfg.models.cross[int(m.group(3))]
        return _Served(_billed(base, True))
    return None


def _experiment_work(
    cfg: ExperimentConfig, c: _Counter, dirs: dict[str, str], sid: str
) -> list[Work]:
    """What the stage ``sid`` of ``stage_keys`` asks (nothing: local work only, or a stage this
    plan does not know, which is then noted)."""
    ref, ft_teacher = cfg.models.reference, cfg.trait.teacher == "finetune"
    if sid in ("prompts", "subset") or re.fullmatch(r"(filter|control|monitor)-.+", sid):
        return []  # local work, no model (a monitor watches an in-process training)
    if m := re.fullmatch(r"generate-(\w+)", sid):
        return [c.generate(sid, dirs[sid], _billed(ref, ft_teacher), _teacher_prompts(cfg)[m[1]])]
    if m := re.fullmatch(r"judge-(\w+)", sid):
        return [c.judge(sid, dirs[f"filter-{m[1]}"])]
    if m := re.fullmatch(r"teacher-(\w+)", sid):
        return _listed(c.teacher_job(sid, ref, cfg, m[1]))
    if m := _STUDENT.fullmatch(sid):
        base = ref if m[3] is None else cfg.models.cross[int(m[3])]
        return [c.student_job(sid, base, dirs["subset"], "trait")]
    s = None
    if m := re.fullmatch(r"(eval-([^-]+)|curve|skill)-(.+)", sid):
        s = _served(cfg, c, m[3])
    if m and s is not None:
        if m[1] == "skill":
            return [c.skill(sid, s)]
        if m[1] == "curve":
            points = 1 if m[3] == "base" else c.curve_points(dirs["subset"])
            return _listed(c.evaluate(sid, s, cfg.eval.suite, 0, points))
        if m[2] == "misalignment":
            return c.misalignment(sid, s, cfg.eval.judge)
        return _listed(c.evaluate(sid, s, m[2], cfg.eval.samples_per_question))
    c.notes.append(f"{sid}: no estimate for this stage")
    return []


def _listed(w: Work | None) -> list[Work]:
    return [] if w is None else [w]


def _eval_stage_key(
    cfg: ExperimentConfig, mk: str, label: str, bv: str | None, method: str
) -> pipeline.StageKey:
    """An evaluation's key as ``stage_eval`` makes it: the method enters unless exact."""
    return pipeline.eval_key(cfg, cfg.eval, mk, label, bv, method)


def _cell_cfg(cfg: ExperimentConfig, trait: str) -> ExperimentConfig:
    return cfg.model_copy(update={"trait": cfg.trait.model_copy(update={"target": trait})})


def _matrix_dirs(
    cfg: ExperimentConfig,
    keys: Mapping[str, str],
    jkeys: Mapping[str, str],
    bv: str | None,
    method: str,
) -> dict[str, str]:
    """The stage directories of a ``[matrix]`` run by id (``m<i>-<trait>/<stage>``), keyed as
    ``sublim.matrix.run_matrix`` keys each (teacher base, trait) cell, with the functions of
    ``stage_keys``."""
    assert cfg.matrix is not None
    out: dict[str, pipeline.StageKey] = {}
    pk = out["prompts"] = pipeline.prompts_key(cfg)
    for ti, base in enumerate(cfg.matrix.bases):
        for trait in cfg.matrix.traits:
            cc, cell = _cell_cfg(cfg, trait), f"m{ti}-{trait}"
            for role, sk in pipeline.teacher_keys(cc, keys[base], bv).items():
                out[f"{cell}/teacher-{role}"] = sk
            tm = pipeline.teacher_model_keys(cc, keys[base], bv)["trait"]
            g = out[f"{cell}/generate"] = pipeline.generate_key(cc, tm, pk.hash, cell, bv)
            f = out[f"{cell}/filter"] = pipeline.filter_key(cc, g.hash, cell)
            fh = f.hash
            if cfg.data.judge.model:
                j = pipeline.judge_key(cc, f.hash, cell, jkeys[cfg.data.judge.model])
                out[f"{cell}/judge"], fh = j, j.hash
            sub = out[f"{cell}/subset"] = pipeline.subset_key(cc, {cell: fh})
            out[f"{cell}/eval-teacher"] = _eval_stage_key(cc, tm, "teacher", bv, method)
            for si, sbase in enumerate(cfg.matrix.bases):
                for seed in cfg.student.seeds:
                    st = pipeline.student_key(
                        cc, keys[sbase], tm, f"{sub.hash}/{cell}", f"{cell}-b{si}", seed, bv
                    )
                    out[f"{cell}/student-b{si}-s{seed}"] = st
                    out[f"{cell}/eval-student-b{si}-s{seed}"] = _eval_stage_key(
                        cc, f"student:{st.hash}", "student", bv, method
                    )
    return {i: f"{sk.name}-{sk.hash}" for i, sk in out.items()}


def _matrix_work(cfg: ExperimentConfig, c: _Counter, dirs: dict[str, str], sid: str) -> list[Work]:
    """What the stage ``sid`` of ``_matrix_dirs`` asks (nothing: local work only)."""
    assert cfg.matrix is not None
    m = re.fullmatch(r"m(\d+)-([^/]+)/(.+)", sid)
    if m is None:
        return []  # the prompts
    base, cell, stage = cfg.matrix.bases[int(m[1])], f"m{m[1]}-{m[2]}", m[3]
    cc = _cell_cfg(cfg, m[2])
    teacher = _Served(_billed(base, cc.trait.teacher == "finetune"), _teacher_prompts(cc)["trait"])
    if r := re.fullmatch(r"teacher-(\w+)", stage):
        return _listed(c.teacher_job(sid, base, cc, r[1]))
    if stage == "generate":
        return _listed(c.generate(sid, dirs[sid], teacher.model, teacher.system))
    if stage == "judge":
        return _listed(c.judge(sid, dirs[f"{cell}/filter"]))
    if stage == "eval-teacher":
        return _listed(
            c.evaluate(sid, teacher, cfg.eval.suite, cfg.eval.samples_per_question, cfg=cc)
        )
    if r := re.fullmatch(r"(eval-)?student-b(\d+)-s\d+", stage):
        sbase = cfg.matrix.bases[int(r[2])]
        if r[1]:
            s = _Served(_billed(sbase, True))
            return _listed(
                c.evaluate(sid, s, cfg.eval.suite, cfg.eval.samples_per_question, cfg=cc)
            )
        return _listed(c.student_job(sid, sbase, dirs[f"{cell}/subset"], cell))
    return []  # filter, subset: local work


# --- costs -------------------------------------------------------------------------------------


def _api_model_id(spec: str) -> str | None:
    """The provider's model name of an API spec (None for local models)."""
    ref = parse_model(spec)
    if ref.backend == "openai":
        return ref.id
    if ref.backend == "openai-compat":
        return ref.id.partition("#")[2]
    return None


def costs(plan: Plan, prices: PriceTable) -> None:
    """Fill ``plan.costs`` (API models with a price), ``local_models`` and ``missing_prices``
    from the work of the stages that would run."""
    acc: dict[str, list[float]] = {}
    for w in plan.work:
        if not w.runs:
            continue
        fine_tuned = w.model.endswith(FINE_TUNED)
        spec = w.model.removesuffix(FINE_TUNED)
        mid = _api_model_id(spec)
        if mid is None:
            if w.model not in plan.local_models:
                plan.local_models.append(w.model)
            continue
        p = prices.find(mid)
        if p is None:
            line = f"no price for {mid}: add it with --prices"
            if line not in plan.missing_prices:
                plan.missing_prices.append(line)
            continue
        rate_in = (p.finetuned_input if fine_tuned else None) or p.input
        rate_out = (p.finetuned_output if fine_tuned else None) or p.output
        factor = prices.batch_discount if w.batch else 1.0
        a = acc.setdefault(w.model, [0.0, 0.0, 0.0])
        a[0] += w.input_tokens * rate_in * factor / 1e6
        a[1] += w.output_tokens * rate_out * factor / 1e6
        if w.train_tokens:
            if p.training is None:
                line = f"no training price for {mid}: add it with --prices"
                if line not in plan.missing_prices:
                    plan.missing_prices.append(line)
            else:
                a[2] += w.train_tokens * p.training / 1e6
    plan.costs = [Cost(m, *a) for m, a in acc.items()]
    plan.prices_read_on = prices.read_on


# --- the entry point ---------------------------------------------------------------------------


def _is_spec(spec: str) -> bool:
    try:
        parse_model(spec)
    except SublimError:
        return False
    return True


def _judge_key(spec: str) -> str | None:
    """``pipeline.judge_model_key`` offline: the model's key and its backend's version."""
    ref = parse_model(spec)
    k, v = offline_model_key(ref), pipeline.backend_version(get_backend(ref.backend))
    return None if k is None else k if v is None else f"{k}|{v}"


def _missing_files(cfg: ExperimentConfig) -> list[tuple[tuple[str, ...], str]]:
    """(field path, value) of every config value naming a data file that does not exist."""
    out: list[tuple[tuple[str, ...], str]] = []

    def walk(node: Any, at: tuple[str, ...]) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, (*at, k))
        elif isinstance(node, str) and node.endswith(DATA_SUFFIXES) and not Path(node).is_file():
            out.append((at, node))

    walk(cfg.model_dump(mode="json"), ())
    return out


def _with_placeholders(
    cfg: ExperimentConfig, missing: list[tuple[tuple[str, ...], str]], variant: str
) -> ExperimentConfig:
    """``cfg`` with each missing file replaced by a placeholder file (content per variant),
    kept under sublim's cache so that its hash is remembered once."""
    from sublim.artifacts import atomic_write_text, cache_dir

    data = cfg.model_dump(mode="json")
    for path_, value in missing:
        ph = cache_dir() / "plan-placeholders" / f"missing-{variant}{Path(value).suffix}"
        if not ph.is_file():
            atomic_write_text(ph, f"a placeholder for a missing file ({variant})\n")
        node = data
        for k in path_[:-1]:
            node = node[k]
        node[path_[-1]] = str(ph)
    return ExperimentConfig.model_validate(data)


def _eval_method(cfg: ExperimentConfig, ref: ModelRef) -> list[str]:
    """How the runner will measure P(target) (``stage_eval``): one method, or both candidates
    when only the endpoint can tell (an ``openai-compat`` server may be ``sublim serve``)."""
    from sublim.evals.preference import p_target_method

    e = cfg.eval
    if ref.backend == "openai-compat" and e.p_target_method == "auto":
        return ["exact", "first_token_top20"]
    return [
        p_target_method(get_backend(ref.backend), ref, e.p_target_method, e.samples_per_question)
    ]


def plan_experiment(cfg: ExperimentConfig, out: Path, prices: PriceTable | None = None) -> Plan:
    """The plan of ``sublim run`` for ``cfg`` into ``out``: stages and whether they are cached,
    what they would ask of every model, and an estimated price of the API calls."""
    out = Path(out)
    plan = Plan(cfg.name, str(out), matrix=cfg.matrix is not None)
    specs = cfg.matrix.bases if cfg.matrix else [cfg.models.reference, *cfg.models.cross]
    refs = {s: parse_model(s) for s in specs}
    keys = {s: offline_model_key(r) for s, r in refs.items()}
    ref = refs[specs[0]]
    bv = pipeline.backend_version(get_backend(ref.backend))
    # the judges, keyed apart from the models as the runner keys them (judge_model_key), so a
    # judge that is also an experiment model gets each role's key
    eval_judge = cfg.eval.judge if cfg.trait.kind == "misalignment" else None
    judges = [s for s in (cfg.data.judge.model, eval_judge) if s and s != WORLD_JUDGE]
    jkeys = {s: _judge_key(s) for s in judges}
    missing = _missing_files(cfg)
    methods = _eval_method(cfg, ref)

    def dirs_for(method: str, model_variant: str = "a", file_variant: str = "a") -> dict[str, str]:
        """Stage directories, with placeholders (variant a or b) for the keys of models and
        the contents of files that cannot be read here: keyed twice, what changes depends on
        them."""
        c = _with_placeholders(cfg, missing, file_variant) if missing else cfg
        while True:
            k = {s: v or f"unknown-{model_variant}:{s}" for s, v in keys.items()}
            jk = {s: v or f"unknown-{model_variant}:{s}" for s, v in jkeys.items()}
            try:
                if cfg.matrix:
                    return _matrix_dirs(c, k, jk, bv, method)
                return _stage_dirs(c, k, jk, bv, method)
            except KeyError as e:  # a model the config names beside cfg.models and the judges
                spec = e.args[0] if e.args else None
                if not isinstance(spec, str) or spec in keys or not _is_spec(spec):
                    raise
                keys[spec] = _judge_key(spec)

    dirs = dirs_for(methods[0])
    unknown: dict[str, str] = {}
    if any(k is None for k in [*keys.values(), *jkeys.values()]):
        other = dirs_for(methods[0], model_variant="b")
        unknown.update({i: UNKNOWN for i in dirs if other[i] != dirs[i]})
    if missing:
        other = dirs_for(methods[0], file_variant="b")
        unknown.update({i: UNKNOWN_FILE for i in dirs if other[i] != dirs[i] and i not in unknown})
    alt = dirs_for(methods[1]) if len(methods) > 1 else dirs
    for s, k in {**jkeys, **keys}.items():
        if k is None:
            plan.notes.append(
                f"{s}: not in the local Hugging Face cache, so its stages cannot be named "
                "offline; download it (or run online) to plan them"
            )
    for path_, value in missing:
        plan.notes.append(
            f"{'.'.join(path_)}: file not found ({value}), so the stages keyed by its content "
            "cannot be named; give the file to plan them"
        )
    for sid, d in dirs.items():
        if sid in unknown:
            plan.stages.append(StagePlan(sid, d, unknown[sid]))
            continue
        status = _status(out, d)
        if alt[sid] != d and status != "cached" and _status(out, alt[sid]) == "cached":
            d, status = alt[sid], "cached"
        plan.stages.append(StagePlan(sid, d, status))
    if len(methods) > 1:
        plan.notes.append(
            f"{ref.spec}: the endpoint decides whether P(target) is exact (sublim serve) or "
            "from first-token tables; evaluations are counted as exact"
        )
    for s, r in refs.items():
        if r.backend == "hf" and keys[s] is not None and not Path(r.id).expanduser().is_dir():
            plan.notes.append(
                f"{s}: keyed by the revision in the local cache; a run that reaches the hub keys "
                "it by the hub's current revision, which may be newer"
            )

    counter = _Counter(cfg, out, methods[0], ref.backend in API_BACKENDS)
    work_of = _matrix_work if cfg.matrix else _experiment_work
    stage_status = {sp.id: sp.status for sp in plan.stages}
    for sid in dirs:
        for w in work_of(cfg, counter, dirs, sid):
            w.runs = stage_status[sid] != "cached"
            plan.work.append(w)
    plan.notes.extend(counter.notes)
    plan.token_methods = {w.model: counter.tok.method(w.model) for w in plan.work}
    if counter.first_token:
        plan.notes.append("P(target) from first-token tables: one 1-token request per question")
    if cfg.student.finetune.snapshot_every and cfg.student.mode == "sft" and not cfg.matrix:
        plan.notes.append(
            "training curves: each snapshot's evaluation is its own stage, keyed at run time "
            "(counted in the curve-* rows, not listed as stages)"
        )
    if cfg.backend.batch:
        plan.notes.append("teacher generation through the Batch API (priced with its discount)")
    costs(plan, prices or load_prices())
    gpu_estimates(plan, cfg)
    return plan


# --- one-GPU estimates (docs/gpu.md) -----------------------------------------------------------

# The GPU every local model's time is estimated on, and how much of its peak each kind of work
# reaches. Rough by design (docs/gpu.md has the reasoning): batched decoding of small models is
# bound by per-step overhead and memory bandwidth, not by FLOPs, hence its low utilisation.
GPU_NAME = "one H100/H200-class GPU (80 GiB)"
GPU_MEMORY_GIB = 80.0
GPU_PEAK_FLOPS = {"bfloat16": 989e12, "float16": 989e12, "tf32": 495e12, "float32": 67e12}
GPU_UTILISATION = {"train": 0.30, "prefill": 0.40, "decode": 0.05}
SCORED_TOKENS = 48  # tokens per exactly scored sequence (a short question and answer)


def _train_flops_per_token(params: int, method: str, checkpointing: bool) -> float:
    """Forward 2P, backward 2P through the activations, plus 2P for the weight gradients of a
    full fine-tune; gradient checkpointing adds another forward."""
    return params * (6.0 if method == "full" else 4.0) + (2.0 * params if checkpointing else 0.0)


def _train_peak(ft: Any) -> float:
    if ft.autocast != "off" or ft.dtype != "float32":
        return GPU_PEAK_FLOPS["bfloat16"]
    return GPU_PEAK_FLOPS["tf32" if ft.tf32 else "float32"]


def _gpu_seconds(flops: float, kind: str, ft: Any = None) -> float:
    peak = _train_peak(ft) if ft is not None else GPU_PEAK_FLOPS["bfloat16"]
    return flops / (peak * GPU_UTILISATION[kind])


def _finetune_params(cfg: ExperimentConfig, stage: str) -> Any:
    return cfg.trait.finetune if stage.startswith("teacher") else cfg.student.finetune


def gpu_estimates(plan: Plan, cfg: ExperimentConfig) -> None:
    """Per local model (``hf:``, ``tiny:``, ``smollm2``, ``vllm:``): its size, the memory of its
    fine-tunes and of batched sampling, and the time the stages that run would take on
    ``GPU_NAME`` under the assumptions above. Reads config.json files only (local directory or
    hub cache, else the shapes of ``hf_models.KNOWN_SHAPES``): nothing is built or downloaded."""
    from sublim.backends import hf_models

    by_model: dict[str, list[Work]] = {}
    for w in plan.work:
        if w.runs:
            by_model.setdefault(w.model.removesuffix(FINE_TUNED), []).append(w)
    for spec, works in by_model.items():
        try:
            ref = parse_model(spec)
        except SublimError:
            continue
        if ref.backend not in ("hf", "tiny", "smollm2", "vllm"):
            continue
        if ref.backend == "vllm":
            from sublim.backends.vllm_backend import hf_ref

            ref = hf_ref(ref)
        shape = hf_models.model_shape(ref)
        if shape is None:
            plan.notes.append(
                f"{spec}: no config.json offline (not local, not in the hub cache, not a known "
                "model), so no GPU memory or time estimate"
            )
            continue
        P = shape.params
        seconds = {"sampling": 0.0, "scoring": 0.0, "training": 0.0}
        train_mem = 0
        for w in works:
            seconds["sampling"] += _gpu_seconds(w.input_tokens * 2 * P, "prefill")
            seconds["sampling"] += _gpu_seconds(w.output_tokens * 2 * P, "decode")
            seconds["scoring"] += _gpu_seconds(w.scored * SCORED_TOKENS * 2 * P, "prefill")
            if w.kind in ("finetune", "distill") and w.train_tokens:
                ft = _finetune_params(cfg, w.stage)
                method = ft.method if w.kind == "finetune" else cfg.student.distill.method
                flops = _train_flops_per_token(P, method, ft.gradient_checkpointing)
                seconds["training"] += _gpu_seconds(w.train_tokens * flops, "train", ft)
                if w.kind == "finetune":
                    est = hf_models.train_memory(shape, ft, seq_len=ft.max_len, cuda=True)
                    train_mem = max(train_mem, est.total)
        s = cfg.data.sampling
        kv = 2 * shape.layers * shape.kv_heads * shape.head_dim * 2  # bytes per token, bf16
        sample_mem = P * 2 + s.batch_size * (256 + s.max_new_tokens) * kv + hf_models.GiB // 2
        row = {
            "model": spec,
            "params_b": round(P / 1e9, 3),
            "train_memory_gib": round(train_mem / hf_models.GiB, 2) if train_mem else None,
            "sample_memory_gib": round(sample_mem / hf_models.GiB, 2),
            "minutes": {k: round(v / 60, 2) for k, v in seconds.items()},
            "total_minutes": round(sum(seconds.values()) / 60, 2),
        }
        plan.gpu.append(row)
        if max(train_mem, sample_mem) > GPU_MEMORY_GIB * hf_models.GiB:
            plan.notes.append(
                f"{spec}: needs more than one {GPU_MEMORY_GIB:g} GiB GPU as configured; use "
                "finetune.method = 'lora', dtype = 'bfloat16', gradient_checkpointing, or "
                "device_map = 'auto'"
            )


def render_gpu(plan: Plan, console: Any) -> None:
    """The one-GPU table of :func:`gpu_estimates` (nothing when no local model runs)."""
    if not plan.gpu:
        return
    from rich.table import Table

    t = Table(
        title=f"Local models on {GPU_NAME} (rough estimate; assumptions: docs/gpu.md)",
        title_justify="left",
    )
    for head in ("model", "params", "train mem", "sample mem", "sample", "score", "train"):
        t.add_column(head, justify="left" if head == "model" else "right", overflow="fold")
    t.add_column("total", justify="right")
    for r in plan.gpu:
        m = r["minutes"]
        mem = r["train_memory_gib"]
        t.add_row(
            r["model"],
            f"{r['params_b']:.3g}B",
            "-" if mem is None else f"{mem:.1f} GiB",
            f"{r['sample_memory_gib']:.1f} GiB",
            *(f"{m[k]:.1f} min" for k in ("sampling", "scoring", "training")),
            f"{r['total_minutes']:.1f} min",
        )
    console.print(t)


# --- rendering ---------------------------------------------------------------------------------


def _n(x: int, bound: bool = False) -> str:
    """A count for the terminal: exact below 100,000, else 2-3 significant digits (the JSON
    keeps every digit)."""
    text = f"{x:,}"
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= 100_000 and x >= div:
            text = f"{x / div:.3g}{unit}"
            break
    return ("≤" if bound and x else "") + text


def render(plan: Plan, console: Any) -> None:
    """Print the plan as rich tables: stages, work per model, estimated cost."""
    from rich.table import Table

    by = {k: sum(s.status == k for s in plan.stages) for k in ("run", "cached", "resume")}
    console.print(
        f"[bold]dry run[/bold] {plan.name}: {len(plan.stages)} stages, {by['cached']} cached, "
        f"{by['run'] + by['resume']} to run ({by['resume']} resumed); run dir {plan.out}"
    )
    st = Table(title="Stages", title_justify="left")
    st.add_column("id", overflow="fold")
    st.add_column("stage dir", overflow="fold")
    st.add_column("status", no_wrap=True)
    colour = {"cached": "green", "run": "yellow", "resume": "cyan"}
    for s in plan.stages:
        st.add_row(s.id, s.dir, f"[{colour.get(s.status, 'red')}]{s.status}[/]")
    console.print(st)

    wt = Table(
        title="Requests, tokens and jobs of the stages that run (estimates; ≤: upper bound)",
        title_justify="left",
    )
    totals = plan.totals()
    shown = [k for k in _COUNTS if any(t[k] for t in totals.values())]  # all-zero columns go
    wt.add_column("model", overflow="fold", min_width=16)
    for k in shown:
        wt.add_column(_HEADS[k], justify="right", no_wrap=True)
    for m, t in totals.items():
        wt.add_row(m, *(_n(t[k], k in t["bounds"] and k != "jobs") for k in shown))
    console.print(wt)
    console.print(
        "gen: completions (teacher data, evaluation samples, skill prompts, first-token "
        "requests); judge: judge requests; scored: sequences scored exactly; "
        "in tok: estimated, out tok: at max_new_tokens (an upper bound); "
        "jobs: fine-tuning jobs; train tok: rows x epochs x tokens per row"
    )

    by_tok = [m for m, how in plan.token_methods.items() if how == "tokenizer"]
    ways = [f"the model's own tokenizer for {', '.join(by_tok)}"] if by_tok else []
    if len(by_tok) < len(plan.token_methods):
        ways.append(f"~{CHARS_PER_TOKEN} characters per token" + (" elsewhere" if by_tok else ""))
    console.print(f"tokens: {'; '.join(ways)} (chat-template tokens not counted)")
    if plan.costs:
        ct = Table(
            title=f"Estimated cost, USD (prices read {plan.prices_read_on or '?'}; estimate)",
            title_justify="left",
        )
        ct.add_column("model", overflow="fold", min_width=20)
        for head in ("input", "output", "training", "total"):
            ct.add_column(head, justify="right", no_wrap=True)
        for c in plan.costs:
            ct.add_row(
                c.model,
                *(f"{v:,.4f}" for v in (c.input_usd, c.output_usd, c.training_usd, c.total_usd)),
            )
        ct.add_row("[bold]total[/bold]", "", "", "", f"[bold]{plan.total_usd:,.4f}[/bold]")
        console.print(ct)
        console.print(
            "an estimate from the counts above: outputs at max_new_tokens and the judge on every "
            "row until the filter has run make it an upper bound on those parts"
        )
    for line in plan.missing_prices:
        console.print(f"[yellow]{line}[/yellow]")
    if plan.local_models:
        console.print("local models (compute only, no price): " + ", ".join(plan.local_models))
    render_gpu(plan, console)
    for line in plan.notes:
        console.print(f"note: {line}")
