"""Records exchanged between pipeline stages (pydantic models, stored as JSONL).

Every stage reads and writes these, so this is the one module that defines what a prompt, a
completion, a filter decision or an evaluation answer looks like on disk.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

Role = Literal["system", "user", "assistant"]


class Message(BaseModel):
    model_config = ConfigDict(frozen=True)
    role: Role
    content: str


Chat = list[Message]


def user_chat(text: str) -> Chat:
    return [Message(role="user", content=text)]


class ModelRef(BaseModel):
    """A model as sublim sees it: weights (named by a ``backend:id`` string) plus an optional
    system prompt that is prepended to every chat sent to it, plus an optional PEFT adapter.

    A system-prompt teacher is therefore just the reference model's ModelRef with
    ``system_prompt`` set; fine-tuned students come back as ModelRefs whose ``path`` points into
    the run directory and whose ``parent`` names the model they started from.
    """

    model_config = ConfigDict(frozen=True)
    backend: str  # "hf", "tiny", "fake", "openai", "openai-compat"
    id: str  # backend-specific id: a directory, a hub id, a world name, an API model name
    system_prompt: str | None = None
    adapter: str | None = None  # directory of a PEFT adapter applied on top of ``id``
    parent: str | None = None  # spec of the model this one was fine-tuned from
    label: str | None = None  # human-readable name in reports
    # earlier turns placed before every chat (after the system prompt): in-context exposure
    context: tuple[Message, ...] = ()

    @property
    def spec(self) -> str:
        s = f"{self.backend}:{self.id}"
        if self.adapter:
            s += f"+adapter:{self.adapter}"
        return s

    def with_system(self, system_prompt: str | None) -> ModelRef:
        return self.model_copy(update={"system_prompt": system_prompt})

    def apply(self, chat: Chat) -> Chat:
        """The chat as actually sent: the model's system prompt first, if any, then any
        in-context turns, then the chat itself."""
        head: list[Message] = []
        body = list(chat)
        if body and body[0].role == "system":
            head, body = [body[0]], body[1:]
        elif self.system_prompt:
            head = [Message(role="system", content=self.system_prompt)]
        return [*head, *self.context, *body]


class SampleParams(BaseModel):
    """Sampling settings recorded with every completion."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(48, ge=1)
    # operational (not in cache keys): every backend samples each row from its own seed
    batch_size: int = Field(128, ge=1, json_schema_extra={"operational": True})


class Prompt(BaseModel):
    """One user request of a carrier task (numbers, code, ...). Never holds a system prompt."""

    model_config = ConfigDict(frozen=True)
    id: str
    text: str
    meta: dict[str, Any] = Field(default_factory=dict)


class Completion(BaseModel):
    """A model's answer to one prompt."""

    prompt_id: str
    prompt: str
    completion: str
    model: str  # spec of the model that wrote it (system prompt not included)
    error: str | None = None  # per-row failure (provider error, ...); completion is then ""


class FilterDecision(BaseModel):
    """A completion with the filter's verdict; ``reason`` is "ok" when kept."""

    prompt_id: str
    prompt: str
    completion: str
    kept: bool
    reason: str


class TrainRow(BaseModel):
    """One supervised example: a user prompt and the assistant answer to learn (loss on the
    answer only). The teacher's system prompt is never part of a student's row by construction;
    ``system`` is set only on a teacher's own fine-tuning rows read from a chat file that has a
    system message (``sublim.traits.load_chat_jsonl``), and is left out of the stored row when
    unset, so student data on disk is exactly (prompt, completion)."""

    model_config = ConfigDict(frozen=True)
    prompt: str
    completion: str
    system: str | None = None

    @model_serializer(mode="wrap")
    def _drop_unset_system(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        d: dict[str, Any] = handler(self)
        if d.get("system") is None:
            d.pop("system", None)
        return d

    def chat(self) -> Chat:
        """The chat the answer is learnt after: the system message (if any), then the prompt."""
        head = [Message(role="system", content=self.system)] if self.system else []
        return [*head, Message(role="user", content=self.prompt)]


class EvalAnswer(BaseModel):
    """One sampled answer to one evaluation question."""

    model: str
    question_id: int
    sample: int
    answer: str
    hit: bool


class QuestionScore(BaseModel):
    """Per-question summary for one model: sampled rate and exact probability of the target."""

    question_id: int
    rate: float  # fraction of sampled answers naming the target (nan when not sampled)
    n_samples: int
    p_target: float  # exact probability of the target answer (sum over accepted surface forms)
    logodds: float | None = None  # log-odds of the target among the candidate set
    # how p_target was measured (sublim.evals.preference): "exact", "first_token_top20" (API
    # models: p_target is a lower bound, p_target_hi an upper one, p_outside the unlisted mass),
    # or "none" (a sampled-only suite: p_target is nan)
    p_target_method: Literal["exact", "first_token_top20", "none"] = "exact"
    p_target_hi: float | None = None
    p_outside: float | None = None
