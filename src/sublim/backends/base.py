"""The narrow protocol every model backend implements.

A backend samples completions for chats, scores given continuations exactly, and fine-tunes or
distils students. Every chat passed in is the *user-visible* chat: the backend applies the
model's own system prompt (``ModelRef.apply``) itself, so a system-prompt teacher is just a
ModelRef with ``system_prompt`` set and the teacher's prompt can never leak into training data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from sublim.config import DistillParams, FinetuneParams
from sublim.records import Chat, ModelRef, SampleParams, TrainRow

# progress(done, total) callback; backends call it as work completes.
Progress = Callable[[int, int], None]


@runtime_checkable
class Backend(Protocol):
    name: str

    def sample(
        self,
        model: ModelRef,
        chats: Sequence[Chat],
        params: SampleParams,
        seed: int | Sequence[int],
        progress: Progress | None = None,
    ) -> list[str]:
        """One completion per chat (the assistant's reply text, without end-of-turn markers).

        ``seed`` is one int for the call or one int per chat. Each row draws its randomness from
        its own generator, so a row's completion depends only on its chat and its seed, never on
        batch size or on the other rows: resumed and chunked runs reproduce uninterrupted ones.
        """
        ...

    def score(
        self,
        model: ModelRef,
        chats: Sequence[Chat],
        continuations: Sequence[str],
        include_end: bool = True,
    ) -> list[float]:
        """Exact log-probability of each continuation as the assistant's reply to its chat.

        With ``include_end`` the end-of-turn token is part of the continuation, so the value is
        log P(reply == continuation) rather than log P(reply starts with continuation).
        """
        ...

    def finetune(
        self,
        base: ModelRef,
        rows: Sequence[TrainRow],
        params: FinetuneParams,
        out_dir: Path,
        seed: int,
        progress: Progress | None = None,
    ) -> ModelRef:
        """Supervised fine-tuning with the loss on the completion only; returns the student.

        ``base.system_prompt`` is ignored for training (students never see it); the returned
        ModelRef has no system prompt and ``parent=base.spec``.
        """
        ...

    def distill(
        self,
        teacher: ModelRef,
        student_base: ModelRef,
        chats: Sequence[Chat],
        params: DistillParams,
        exclude: Sequence[str],
        out_dir: Path,
        seed: int,
        progress: Progress | None = None,
    ) -> ModelRef:
        """Logit distillation: the student matches the teacher's next-token distribution over
        all tokens except those of ``exclude`` (renormalised), at every position of ``chats``
        (the teacher additionally sees its own system prompt; the student sees
        ``student_base.system_prompt`` only when the runner sets it: an inoculated student).
        ``chats`` may end with an assistant message (distil on the completion) or be raw
        random text (params.source)."""
        ...


@runtime_checkable
class DefendedTrainer(Protocol):
    """An optional backend capability (``HFBackend``): training with the training-side defence
    ``kl_to_base`` (beta of a KL(student || base) penalty) and a training ``monitor``
    (``sublim.monitor.Monitor``) that may stop it early. Marked by ``training_defences``."""

    training_defences: bool

    def finetune(
        self,
        base: ModelRef,
        rows: Sequence[TrainRow],
        params: FinetuneParams,
        out_dir: Path,
        seed: int,
        progress: Progress | None = None,
        *,
        kl_to_base: float = 0.0,
        monitor: Any = None,
    ) -> ModelRef: ...

    def distill(
        self,
        teacher: ModelRef,
        student_base: ModelRef,
        chats: Sequence[Chat],
        params: DistillParams,
        exclude: Sequence[str],
        out_dir: Path,
        seed: int,
        progress: Progress | None = None,
        *,
        kl_to_base: float = 0.0,
        monitor: Any = None,
    ) -> ModelRef: ...


@runtime_checkable
class TokenLogprobSampler(Protocol):
    """An optional backend capability: sampling with per-token log-probabilities (``HFBackend.sample_logprobs``):
    one reply per seed, ``{"text", "tokens": [(token, logprob, [(alt, logprob), ...])],
    "prompt_tokens", "truncated"}``, reply ``j`` equal to what ``sample`` gives for ``seeds[j]``."""

    def sample_logprobs(
        self,
        model: ModelRef,
        chat: Chat,
        params: SampleParams,
        seeds: Sequence[int],
        top: int = 0,
        logprobs: bool = True,
    ) -> list[dict[str, Any]]: ...
