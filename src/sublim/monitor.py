"""The training monitor: watch a student's trait drift while it trains, and stop it on an alarm.

Student training (``sublim.backends.hf_train``) calls :meth:`Monitor.check` every
``student.monitor.every`` optimizer steps with the model being trained. At each checkpoint it
measures, for every watched candidate trait of the category:

- the **exact drift**: the mean log-odds of the trait against the other candidates on the
  favourite-<category> questions (the evaluation's own scorer,
  ``sublim.evals.preference.candidate_log_mass``: every surface form of every candidate scored
  exactly, no sampling), minus the same at step 0 (the base: the student's initial weights). With
  a reference curve (the control student's, trained first on the same base and seed) the drift is
  taken against that curve's drift at the same step instead;
- a **probe**: the trait direction is the base's mean last-token hidden state (of
  ``probe_layer``) on the questions with the trait's system prompt minus without it; the
  student's value is the mean shift of its hidden state (questions without a system prompt)
  projected on that direction, in units of the direction's length: 0 at the base, 1 as far
  along as the system prompt moves the base.

An alarm is the largest drift above ``threshold``; with ``stop`` it ends the training (the model
at that step is the student). :meth:`Monitor.result` is what the runner stores per student
(``monitor-*/monitor.json``) and the report draws. Hugging Face models only (the backend that
trains in-process); evaluation never sees a system prompt, whatever the training did.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sublim import chat_format
from sublim.backends.hf import HFBackend, score_chats
from sublim.backends.hf_models import Loaded
from sublim.config import MonitorConfig
from sublim.evals.preference import candidate_log_mass, candidate_logodds
from sublim.records import Chat, Message, ModelRef, user_chat
from sublim.traits import system_prompt_for

_LIVE = ModelRef(backend="hf", id="<model in training>")  # no system prompt: evaluation's view


@dataclass(frozen=True)
class Alarm:
    """Why the monitor stopped (or would have stopped) a training."""

    trait: str
    step: int
    value: float  # the drift in log-odds
    threshold: float

    @property
    def reason(self) -> str:
        return (
            f"drift of '{self.trait}' reached {self.value:+.3f} log-odds at step {self.step} "
            f"(threshold {self.threshold:g})"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "trait": self.trait,
            "step": self.step,
            "value": self.value,
            "threshold": self.threshold,
            "reason": self.reason,
        }


class _LiveBackend(HFBackend):
    """The Hugging Face backend's exact scorer, pointed at a model held in memory (the one being
    trained) instead of one loaded from its reference."""

    def __init__(self, lm: Loaded) -> None:
        super().__init__()
        self.lm = lm

    def score(
        self,
        model: ModelRef,
        chats: Sequence[Chat],
        continuations: Sequence[str],
        include_end: bool = True,
    ) -> list[float]:
        return score_chats(self.lm, [model.apply(c) for c in chats], continuations, include_end)


@torch.inference_mode()
def last_hidden(lm: Loaded, chats: Sequence[Chat], layer: int, batch: int = 64) -> torch.Tensor:
    """Hidden state [n_chats, d] of ``layer`` at each prompt's last token (the position that
    predicts the reply's first token), float32 on the CPU."""
    tok, dev = lm.tokenizer, lm.device
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    out = []
    for i in range(0, len(chats), batch):
        seqs = [chat_format.encode_prompt(tok, c) for c in chats[i : i + batch]]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for j, s in enumerate(seqs):  # right padding: causal attention never sees it
            ids[j, : len(s)] = torch.tensor(s)
            mask[j, : len(s)] = 1
        hs = lm.model(
            input_ids=ids.to(dev), attention_mask=mask.to(dev), output_hidden_states=True
        ).hidden_states[layer]
        last = torch.tensor([len(s) - 1 for s in seqs], device=hs.device)
        out.append(hs[torch.arange(len(seqs), device=hs.device), last].float().cpu())
    return torch.cat(out)


class Monitor:
    """One student's monitor (see the module docstring). ``candidates``: the evaluation's
    candidate set; ``traits``: the ones watched (a subset); ``reference``: the control
    student's drift per step and trait, when the drift is taken against it."""

    def __init__(
        self,
        cfg: MonitorConfig,
        category: str,
        questions: Sequence[str],
        candidates: Sequence[str],
        traits: Sequence[str],
        reference: Mapping[int, Mapping[str, float]] | None = None,
    ) -> None:
        if not cfg.every:
            raise ValueError("a Monitor needs cfg.every >= 1")
        unknown = [t for t in traits if t not in candidates]
        if unknown:
            raise ValueError(f"watched traits {unknown} are not candidates {list(candidates)}")
        self.cfg = cfg
        self.category = category
        self.chats = [user_chat(q) for q in questions]
        self.candidates = list(candidates)
        self.traits = list(traits)
        self.reference = {int(k): dict(v) for k, v in (reference or {}).items()}
        self.points: list[dict[str, Any]] = []
        self.alarm: Alarm | None = None
        self.stopped = False
        self._base_logodds: dict[str, float] = {}
        self._base_h: torch.Tensor | None = None
        self._dirs: dict[str, torch.Tensor] = {}

    # -- measurements ------------------------------------------------------------------------

    def _logodds(self, lm: Loaded) -> dict[str, float]:
        """Mean log-odds of every watched trait on the questions."""
        lo = candidate_logodds(
            candidate_log_mass(_LiveBackend(lm), _LIVE, self.chats, self.candidates)
        )
        return {t: float(np.nanmean(lo[:, self.candidates.index(t)])) for t in self.traits}

    def _probe(self, lm: Loaded) -> dict[str, float]:
        assert self._base_h is not None, "Monitor.start was not called"
        shift = last_hidden(lm, self.chats, self.cfg.probe_layer) - self._base_h  # [n, d]
        out = {}
        for t, d in self._dirs.items():
            n2 = float(d @ d)
            out[t] = float((shift @ d).mean()) / n2 if n2 > 0 else math.nan
        return out

    def _measure(
        self, lm: Loaded, step: int, lo: dict[str, float] | None = None
    ) -> dict[str, float]:
        lo = self._logodds(lm) if lo is None else lo
        pr = self._probe(lm)
        drifts = {}
        for t in self.traits:
            drift = lo[t] - self._base_logodds[t]
            ref = self._reference_at(step, t)
            against = drift if ref is None else drift - ref
            drifts[t] = against
            self.points.append(
                {
                    "step": step,
                    "trait": t,
                    "logodds": lo[t],
                    "drift": drift,
                    "drift_vs_reference": None if ref is None else against,
                    "probe": pr[t],
                }
            )
        return drifts

    def _reference_at(self, step: int, trait: str) -> float | None:
        """The reference curve's drift at ``step`` (its last point at or before it)."""
        steps = [s for s in self.reference if s <= step and trait in self.reference[s]]
        return self.reference[max(steps)][trait] if steps else None

    # -- the training loop's calls -----------------------------------------------------------

    def start(self, lm: Loaded) -> None:
        """Step 0: the base's log-odds and the probe directions, from ``lm`` (the model about
        to be trained, still at its initial weights)."""
        was_training = lm.model.training
        lm.model.eval()
        try:
            self._base_logodds = self._logodds(lm)
            self._base_h = last_hidden(lm, self.chats, self.cfg.probe_layer)
            for t in self.traits:
                sys = [Message(role="system", content=system_prompt_for(t, self.category))]
                h_sys = last_hidden(lm, [[*sys, *c] for c in self.chats], self.cfg.probe_layer)
                self._dirs[t] = (h_sys - self._base_h).mean(0)
            self._measure(lm, 0, self._base_logodds)
        finally:
            lm.model.train(was_training)

    def due(self, step: int) -> bool:
        return step > 0 and step % self.cfg.every == 0

    def check(self, lm: Loaded, step: int) -> Alarm | None:
        """Measure the model at optimizer step ``step``; the alarm, if one goes off now (only
        the first alarm is kept). Returns it only when it stops the training."""
        was_training = lm.model.training
        lm.model.eval()
        try:
            drifts = self._measure(lm, step)
        finally:
            lm.model.train(was_training)
        if self.alarm is not None or self.cfg.threshold is None:
            return None
        over = {t: v for t, v in drifts.items() if v > self.cfg.threshold}
        if not over:
            return None
        t = max(over, key=lambda k: over[k])
        self.alarm = Alarm(t, step, over[t], self.cfg.threshold)
        if self.cfg.stop:
            self.stopped = True
            return self.alarm
        return None

    # -- what is stored --------------------------------------------------------------------

    def curve(self) -> dict[int, dict[str, float]]:
        """This student's drift per step and trait (a later student's ``reference``)."""
        out: dict[int, dict[str, float]] = {}
        for p in self.points:
            out.setdefault(int(p["step"]), {})[p["trait"]] = float(p["drift"])
        return out

    def result(self) -> dict[str, Any]:
        return {
            "settings": self.cfg.model_dump(mode="json"),
            "traits": self.traits,
            "against": "control" if self.reference else "base",
            "points": self.points,
            "alarm": None if self.alarm is None else self.alarm.to_json(),
            "stopped_by_monitor": self.alarm.to_json() if self.stopped and self.alarm else None,
        }
