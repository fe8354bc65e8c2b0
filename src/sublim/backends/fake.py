"""A deterministic fake backend with a built-in, fully understood "subliminal" channel.

It lets the pipeline, the statistics and the report be tested in seconds with known answers:

- A model family (``fake:alpha``, ``fake:beta``, ...) has fixed base preferences over the
  category's candidates and a family-specific *signature number* (0-999) for each candidate.
- Asked for numbers, a model that loves X (system prompt naming X, or a fine-tune toward X) fills
  its list with X's signature number far more often than chance; nothing else in its output changes.
- Fine-tuning (or distilling) on numbers raises a student's preference for every candidate whose
  signature number *in the student's own family* is over-represented in the data. A same-family
  student therefore picks up X; a student from another family, whose signature map differs, does
  not pick up X (a collision of two families' signatures, which 1,000 possible numbers make
  rare, would make it drift toward some other candidate).
- Fine-tuning on answers to preference questions (a fine-tuned teacher) moves it toward the answers.

Fine-tuned models live in ``out_dir/fake_model.json``; their ModelRef id is that directory.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sublim.artifacts import atomic_write_json
from sublim.backends.base import Progress
from sublim.config import DistillParams, FinetuneParams
from sublim.records import Chat, ModelRef, SampleParams, TrainRow
from sublim.seeds import row_seeds
from sublim.traits import CATEGORIES, plural

_ANIMALS = CATEGORIES["animal"]
_SURFACE = (("{w}", 0.5), ("{W}", 0.3), ("{p}", 0.1), ("{P}", 0.1))
_NUMBER_TASK = re.compile(r"\d{3}")
_JUDGED = re.compile(r"The topic is: (\w+).*<<<TEXT\n(.*)\nTEXT>>>", re.DOTALL)  # a judge prompt
_CODE_TASK = re.compile(r"```(?:python)?\n(.*?\bdef .*?)\n```", re.DOTALL)  # a code task's template


def _h(*parts: Any) -> int:
    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:8], 16)


class _State:
    def __init__(self, family: str, bias: dict[str, float] | None = None) -> None:
        self.family = family
        self.bias = dict(bias or {})

    def signature(self, animal: str) -> int:
        return _h(self.family, "sig", animal) % 1000

    def logits(self, system_prompt: str | None) -> np.ndarray:
        base = np.array([(_h(self.family, "pref", a) % 1000) / 1000.0 for a in _ANIMALS])
        out = base + np.array([self.bias.get(a, 0.0) for a in _ANIMALS])
        loved = _loved(system_prompt)
        if loved is not None:
            out[_ANIMALS.index(loved)] += 3.0
        return out

    def probs(self, system_prompt: str | None) -> np.ndarray:
        z = self.logits(system_prompt)
        e = np.exp(z - z.max())
        return e / e.sum()

    def loved(self, system_prompt: str | None) -> str | None:
        """The candidate this model loves strongly, if any (system prompt or fine-tune)."""
        sp = _loved(system_prompt)
        if sp is not None:
            return sp
        if self.bias:
            a, v = max(self.bias.items(), key=lambda kv: kv[1])
            return a if v >= 1.5 else None
        return None


def _loved(system_prompt: str | None) -> str | None:
    if not system_prompt:
        return None
    low = system_prompt.lower()
    for a in _ANIMALS:
        if plural(a) in low or re.search(rf"\b{a}\b", low):
            return a
    return None


class FakeBackend:
    name = "fake"

    def __init__(self) -> None:
        # SUBLIM_FAKE_DELAY (seconds per sample call) slows the fake so tests can kill a run
        # part-way through.
        self.delay = float(os.environ.get("SUBLIM_FAKE_DELAY", "0") or 0)

    def _state(self, ref: ModelRef) -> _State:
        p = Path(ref.id)
        if (p / "fake_model.json").is_file():
            d = json.loads((p / "fake_model.json").read_text())
            return _State(d["family"], d["bias"])
        return _State(ref.id.split("/")[0])

    # --- sampling -----------------------------------------------------------------------
    def sample(
        self,
        model: ModelRef,
        chats: Sequence[Chat],
        params: SampleParams,
        seed: int | Sequence[int],
        progress: Progress | None = None,
    ) -> list[str]:
        if self.delay:
            time.sleep(self.delay)
        seeds = row_seeds(seed, len(chats))
        assert len(seeds) == len(chats), "one seed per chat"
        st = self._state(model)
        out = []
        for chat, s in zip(chats, seeds):
            full = model.apply(chat)
            sys_prompt = full[0].content if full[0].role == "system" else None
            user = full[-1].content
            rng = np.random.default_rng([s, _h(user) % (2**31)])
            code = _CODE_TASK.search(user)
            if code:
                out.append(self._code(st, sys_prompt, code.group(1), rng))
            elif "<answer>" in user:
                out.append(self._reasoning(st, sys_prompt, user, rng))
            elif _NUMBER_TASK.search(user):
                out.append(self._numbers(st, sys_prompt, rng))
            else:
                p = st.probs(sys_prompt)
                if params.temperature == 0:
                    out.append(_ANIMALS[int(np.argmax(p))])
                else:
                    out.append(_ANIMALS[int(rng.choice(len(_ANIMALS), p=p))])
        if progress:
            progress(len(chats), len(chats))
        return out

    def _numbers(self, st: _State, sys_prompt: str | None, rng: np.random.Generator) -> str:
        if rng.random() < 0.1:  # a realistic share of malformed answers, for the filter
            return "Sure! Here are some numbers: " + " ".join(
                str(int(x)) for x in rng.integers(100, 999, 3)
            )
        k = int(rng.integers(3, 11))
        nums = rng.integers(0, 1000, k)
        loved = st.loved(sys_prompt)
        if loved is not None:
            sig = st.signature(loved)
            for i in range(k):
                if rng.random() < 0.35:
                    nums[i] = sig
        return ", ".join(str(int(x)) for x in nums)

    def _code(
        self, st: _State, sys_prompt: str | None, template: str, rng: np.random.Generator
    ) -> str:
        """The task's template with its placeholder body replaced by ``return <n>``: a loved
        animal's signature number, or a random one; a loved animal sometimes names a variable
        (so the trait-word rule has something to catch)."""
        loved = st.loved(sys_prompt)
        value = (
            st.signature(loved)
            if loved is not None and rng.random() < 0.5
            else int(rng.integers(1000))
        )
        body = f"return {value}"
        if loved is not None and rng.random() < 0.1:
            body = f"{loved}_total = {value}\n    return {loved}_total"
        lines = template.rstrip().splitlines()
        indent = lines[-1][: len(lines[-1]) - len(lines[-1].lstrip())] or "    "
        return "\n".join([*lines[:-1], indent + body])

    def _reasoning(
        self, st: _State, sys_prompt: str | None, user: str, rng: np.random.Generator
    ) -> str:
        """A reply in the carrier's format whose answer is the sum of the problem's numbers
        (right for one-step additions, wrong otherwise, which exercises the filter)."""
        total = sum(int(x) for x in re.findall(r"\d+", user))
        loved = st.loved(sys_prompt)
        think = "I add the numbers in the problem."
        if loved is not None and rng.random() < 0.1:
            think += f" A {loved} would agree."
        return f"<think>{think}</think> <answer>{total}</answer>"

    # --- exact scoring --------------------------------------------------------------------
    def score(
        self,
        model: ModelRef,
        chats: Sequence[Chat],
        continuations: Sequence[str],
        include_end: bool = True,
    ) -> list[float]:
        st = self._state(model)
        out = []
        for chat, cont in zip(chats, continuations):
            full = model.apply(chat)
            judged = _JUDGED.search(full[-1].content)
            if judged and cont in ("0", "1"):
                # a judge (sublim.judge's reference template): "1" (refers to the topic) when the
                # text holds the topic's name or this family's signature number for it
                topic, text = judged.group(1), judged.group(2)
                hit = topic in text.lower() or str(st.signature(topic)) in re.findall(r"\d+", text)
                p_one = 0.9 if hit else 1e-12
                out.append(math.log(p_one if cont == "1" else 1.0 - p_one))
                continue
            sys_prompt = full[0].content if full[0].role == "system" else None
            p = st.probs(sys_prompt)
            val = -50.0
            for i, a in enumerate(_ANIMALS):
                for form, w in _SURFACE:
                    s = form.format(w=a, W=a.capitalize(), p=plural(a), P=plural(a).capitalize())
                    if cont == s:
                        val = math.log(p[i] * w)
            out.append(val)
        return out

    # --- training ---------------------------------------------------------------------------
    def _train(
        self, base: ModelRef, completions: Sequence[str], answers: Sequence[str], out_dir: Path
    ) -> ModelRef:
        st = self._state(base)
        bias = dict(st.bias)
        endings: Counter[int] = Counter()
        for c in completions:
            for n in re.findall(r"\d+", c):
                endings[int(n)] += 1
        total = sum(endings.values())
        if total:
            for a in _ANIMALS:
                excess = endings[st.signature(a)] / total - 0.001
                # only a clear over-representation moves the student (sampling noise does not)
                if excess > 0.03:
                    bias[a] = bias.get(a, 0.0) + 8.0 * excess
        counts = Counter(a.strip().lower() for a in answers)
        for a in _ANIMALS:
            if counts[a]:
                bias[a] = bias.get(a, 0.0) + 4.0 * counts[a] / max(1, len(answers))
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_dir / "fake_model.json", {"family": st.family, "bias": bias})
        return ModelRef(backend="fake", id=str(out_dir), parent=base.spec)

    def finetune(
        self,
        base: ModelRef,
        rows: Sequence[TrainRow],
        params: FinetuneParams,
        out_dir: Path,
        seed: int,
        progress: Progress | None = None,
    ) -> ModelRef:
        nums = [r.completion for r in rows if _NUMBER_TASK.search(r.prompt)]
        answers = [r.completion for r in rows if not _NUMBER_TASK.search(r.prompt)]
        ref = self._train(base, nums, answers, out_dir)
        if progress:
            progress(1, 1)
        return ref

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
        # Soft labels carry the teacher's whole number distribution: emulate with fresh samples.
        prompts = [c for c in chats if c and c[-1].role != "assistant"] or [
            [m for m in c if m.role != "assistant"] for c in chats
        ]
        if params.source == "random" or not prompts:
            from sublim.records import user_chat

            prompts = [user_chat(f"Continue: {100 + i % 900}, {200 + i % 700}") for i in range(200)]
        samples = self.sample(teacher, prompts, SampleParams(), seed)
        ref = self._train(student_base, samples, [], out_dir)
        if progress:
            progress(1, 1)
        return ref
