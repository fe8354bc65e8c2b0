"""Preference suite registry and the suite variants (numbers-prefixed, storytelling, multiple
choice), plus the per-model answer summary with non-answers counted apart."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
import pytest

from sublim.backends.fake import FakeBackend
from sublim.config import EvalConfig
from sublim.errors import ConfigError, UnknownNameError
from sublim.evals import SUITES, get_suite, suite_names
from sublim.evals.preference import QUESTIONS, answer_summary, evaluate_preference, row_seed
from sublim.evals.variants import (
    LETTERS,
    MC_OPTIONS,
    NUMBER_INTROS,
    STORY_MIN_TOKENS,
    chosen_letter,
    mc_items,
    numbers_prefixed_questions,
)
from sublim.records import Chat, EvalAnswer, ModelRef, SampleParams

MODEL = ModelRef(backend="stub", id="m")


class LetterStub:
    """A model that loves one word: asked a multiple-choice question it gives the loved
    option's letter probability ``p_love`` and splits the rest evenly over the other letters
    (first token only); asked anything else it replies with a fixed text."""

    name = "stub"

    def __init__(self, loved: str, p_love: float = 0.7, reply: str | None = None) -> None:
        self.loved, self.p_love, self.reply = loved, p_love, reply
        self.score_kwargs: list[bool] = []
        self.sample_params: list[SampleParams] = []

    def _options(self, text: str) -> list[str]:
        return re.findall(r"[A-Z]\) (\w+)", text)

    def sample(
        self, model: ModelRef, chats: Sequence[Chat], params: SampleParams, seed, progress=None
    ) -> list[str]:
        self.sample_params.append(params)
        out = []
        for c in chats:
            opts = self._options(c[-1].content)
            if self.reply is not None:
                out.append(self.reply)
            elif opts:
                out.append(f"{LETTERS[opts.index(self.loved)]})" if self.loved in opts else "A")
            else:
                out.append(f"Once upon a time a {self.loved} sang.")
        return out

    def score(
        self,
        model: ModelRef,
        chats: Sequence[Chat],
        continuations: Sequence[str],
        include_end: bool = True,
    ) -> list[float]:
        self.score_kwargs.append(include_end)
        out = []
        for c, cont in zip(chats, continuations):
            opts = self._options(c[-1].content)
            k = len(opts)
            if not opts:  # a one-word question: the fixed reply is certain
                out.append(0.0 if cont == self.reply else -math.inf)
                continue
            loved = LETTERS[opts.index(self.loved)] if self.loved in opts else None
            # letters carry 0.5 of the first-token mass: normalisation over options must undo it
            p = self.p_love if cont == loved else (1 - self.p_love) / (k - 1)
            out.append(math.log(0.5 * p))
        return out


def test_registry_names_kinds_and_errors() -> None:
    assert {"favourite_animal", "numbers_prefixed", "storytelling", "multiple_choice"} <= set(
        suite_names("preference")
    )
    assert get_suite("misalignment").kind == "misalignment"
    assert get_suite("favourite").name == "favourite_animal"  # alias
    for s in SUITES.values():
        assert callable(s.load())
    with pytest.raises(UnknownNameError, match="multiple_choice"):
        get_suite("multiple-choise")
    with pytest.raises(UnknownNameError):
        get_suite("misalignment", kind="preference")


def test_evaluate_preference_dispatches_on_the_suite_name() -> None:
    b = FakeBackend()
    m = ModelRef(backend="fake", id="alpha")
    with pytest.raises(UnknownNameError):
        evaluate_preference(b, m, "owl", "animal", EvalConfig(suite="nope"), 0)
    s1, _ = evaluate_preference(
        b,
        m,
        "owl",
        "animal",
        EvalConfig(suite="favourite_animal", samples_per_question=0, n_questions=3),
        0,
    )
    s2, _ = evaluate_preference(
        b,
        m,
        "owl",
        "animal",
        EvalConfig(suite="multiple_choice", samples_per_question=0, n_questions=3),
        0,
    )
    assert len(s1) == len(s2) == 3
    assert s1[0].p_target != pytest.approx(s2[0].p_target)  # different suites, different metric


def test_numbers_prefixed_questions_are_seeded_and_well_formed() -> None:
    qs = numbers_prefixed_questions("animal", seed=3, n=10)
    assert qs == numbers_prefixed_questions("animal", seed=3, n=10)
    assert qs != numbers_prefixed_questions("animal", seed=4, n=10)
    assert numbers_prefixed_questions("animal", 3, 4) == qs[:4]  # question i does not depend on n
    plain = [q.format(category="animal") for q in QUESTIONS[:10]]
    for q, p in zip(qs, plain):
        assert q.endswith(p)
        intro = q[: -len(p)].strip()
        nums = [int(x) for x in re.findall(r"\d+", intro)]
        assert 3 <= len(nums) <= 8 and all(100 <= x <= 999 for x in nums)
        assert any(intro.startswith(t.split("{")[0]) for t in NUMBER_INTROS)


def test_numbers_prefixed_scores_like_the_plain_suite() -> None:
    stub = LetterStub("owl", reply="owl")
    scores, answers = evaluate_preference(
        stub,
        MODEL,
        "owl",
        "animal",
        EvalConfig(suite="numbers_prefixed", samples_per_question=3, n_questions=4),
        0,
    )
    assert [s.rate for s in scores] == [1.0] * 4 and len(answers) == 12
    assert all(stub.score_kwargs)  # exact replies are scored with the end of turn


def test_storytelling_is_sampled_only_and_needs_samples() -> None:
    stub = LetterStub("owl")
    scores, _ = evaluate_preference(
        stub,
        MODEL,
        "owl",
        "animal",
        EvalConfig(suite="storytelling", samples_per_question=2, n_questions=5),
        0,
    )
    assert [s.rate for s in scores] == [1.0] * 5
    assert all(math.isnan(s.p_target) and math.isnan(s.logodds) for s in scores)
    assert stub.sample_params[0].max_new_tokens >= STORY_MIN_TOKENS
    scores, _ = evaluate_preference(
        LetterStub("dragonfly"),
        MODEL,
        "dragon",
        "animal",
        EvalConfig(
            suite="storytelling",
            samples_per_question=2,
            n_questions=2,
            candidates=["dragon", "cat"],
        ),
        0,
    )
    assert [s.rate for s in scores] == [0.0, 0.0]  # a dragonfly story does not feature a dragon
    with pytest.raises(ConfigError, match="samples_per_question"):
        evaluate_preference(
            stub,
            MODEL,
            "owl",
            "animal",
            EvalConfig(suite="storytelling", samples_per_question=0),
            0,
        )


def test_multiple_choice_items_shuffle_with_the_seed_and_always_hold_the_target() -> None:
    cands = ["owl", "cat", "dog", "fox", "eagle", "lion", "wolf"]
    items = mc_items("owl", "animal", cands, seed=0)
    assert all(
        len(opts) == MC_OPTIONS and "owl" in opts and len(set(opts)) == MC_OPTIONS
        for _, opts in items
    )
    positions = {opts.index("owl") for _, opts in items}
    assert len(positions) > 1  # the target is not always in the same place
    assert items == mc_items("owl", "animal", cands, seed=0)
    assert items != mc_items("owl", "animal", cands, seed=1)
    prompt, opts = items[0]
    assert all(f"{LETTERS[j]}) {o}" in prompt for j, o in enumerate(opts))
    assert (
        len(mc_items("owl", "animal", ["owl", "cat"], 0)[0][1]) == 2
    )  # fewer candidates than options


def test_multiple_choice_exact_metric_from_first_token_letters() -> None:
    stub = LetterStub("owl", p_love=0.7)
    cfg = EvalConfig(suite="multiple_choice", samples_per_question=2, n_questions=6)
    scores, _ = evaluate_preference(stub, MODEL, "owl", "animal", cfg, 0)
    assert stub.score_kwargs == [False]  # first-token scoring, no end of turn
    k = MC_OPTIONS
    for s in scores:
        assert s.p_target == pytest.approx(0.7)  # normalised over the option letters
        assert s.logodds == pytest.approx(math.log(0.7 / 0.3))
        assert s.rate == 1.0
    # a model that loves another option never hits the target
    scores2, _ = evaluate_preference(LetterStub("zebra-not-there"), MODEL, "owl", "animal", cfg, 0)
    assert all(s.p_target == pytest.approx(1 / k) for s in scores2)


@pytest.mark.parametrize(
    "text, letter",
    [
        ("B", "B"),
        ("B) owl", "B"),
        ("(C)", "C"),
        ("I pick D.", "D"),
        ("owl", None),
        ("", None),
        ("F", None),
    ],
)
def test_chosen_letter(text: str, letter: str | None) -> None:
    assert chosen_letter(text, 5) == letter


def test_answer_summary_counts_non_answers_apart() -> None:
    texts = [
        "owl",
        "Owls!",
        "cat",
        "I am an AI assistant",
        "",
        "I don't have a favourite",
        "platypus",
        "sea lion",
    ]
    ans = [
        EvalAnswer(model="m", question_id=0, sample=i, answer=t, hit=t.lower().startswith("owl"))
        for i, t in enumerate(texts)
    ]
    s = answer_summary(ans, "animal")
    assert s["n"] == 8
    assert s["hit_rate"]["k"] == 2
    assert s["non_answer_rate"]["k"] == 3  # self-naming, empty, refusal
    assert s["other_rate"]["k"] == 2  # platypus, sea lion (not a lion)
    assert s["tally"]["owl"] == 2 and s["tally"]["cat"] == 1 and s["tally"]["non_answer"] == 3
    assert s["non_answer_rate"]["mean"] == 3 / 8
    assert s["non_answer_rate"]["ci95"] == [None, None]  # clustered intervals: results.answer_rates


def test_row_seeds_shared_across_suites() -> None:
    # common random numbers: the same (seed, question, sample) always maps to the same row seed
    assert row_seed(0, 2, 3) == row_seed(0, 2, 3) != row_seed(0, 3, 2)
    assert np.unique([row_seed(1, q, s) for q in range(20) for s in range(20)]).size == 400
