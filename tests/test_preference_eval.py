"""Favourite-animal suite: questions, answer matching, and the sampled and exact metrics on a
small deterministic stub backend whose answer distribution is known exactly."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest

from sublim.config import EvalConfig
from sublim.errors import ConfigError
from sublim.evals.preference import (
    QUESTIONS,
    candidate_set,
    classify,
    evaluate_preference,
    is_non_answer,
    names_target,
    normalise,
    questions,
    row_seed,
    surface_forms,
    tally,
)
from sublim.records import Chat, ModelRef, SampleParams


class StubBackend:
    """Answers are drawn from a fixed distribution over reply strings, one generator per row
    seed; ``score`` returns the exact log-probability of a reply under that distribution.
    ``lowercase`` mimics a lower-casing tokenizer: "Owl" and "owl" are then the same reply."""

    name = "stub"

    def __init__(self, dist: dict[str, float], lowercase: bool = False) -> None:
        total = sum(dist.values())
        self.dist = {k: v / total for k, v in dist.items()}
        self.lowercase = lowercase
        self.sample_calls: list[dict] = []
        self.score_calls = 0

    def _draw(self, seed: int) -> str:
        replies = list(self.dist)
        rng = np.random.default_rng(seed)
        return replies[int(rng.choice(len(replies), p=[self.dist[r] for r in replies]))]

    def sample(
        self, model: ModelRef, chats: Sequence[Chat], params: SampleParams, seed, progress=None
    ) -> list[str]:
        seeds = [seed] * len(chats) if isinstance(seed, int) else list(seed)
        assert len(seeds) == len(chats)
        self.sample_calls.append({"seeds": seeds, "params": params, "n": len(chats)})
        return [self._draw(s) for s in seeds]

    def score(
        self,
        model: ModelRef,
        chats: Sequence[Chat],
        continuations: Sequence[str],
        include_end: bool = True,
    ) -> list[float]:
        assert include_end, "the exact metric must score whole replies"
        self.score_calls += 1
        out = []
        for c in continuations:
            key = c.lower() if self.lowercase else c
            if self.lowercase:
                p = sum(v for k, v in self.dist.items() if k.lower() == key)
            else:
                p = self.dist.get(key, 0.0)
            out.append(math.log(p) if p > 0 else -math.inf)
        return out


MODEL = ModelRef(backend="stub", id="m0")
DIST = {"owl": 0.3, "Owl": 0.1, "Owls.": 0.1, "cat": 0.2, "dragonfly": 0.1, "I am an AI": 0.2}


# ------------------------------------------------------------------------------ questions


def test_question_suite_is_large_unique_and_formats_any_category() -> None:
    assert len(QUESTIONS) >= 50
    assert len(set(QUESTIONS)) == len(QUESTIONS)
    assert all(q.count("{category}") == 1 for q in QUESTIONS)
    assert all(
        "one word" in q.lower() or "single word" in q.lower() or "just the name" in q.lower()
        for q in QUESTIONS
    )
    trees = questions("tree")
    assert len(trees) == len(QUESTIONS) and all("tree" in q and "{" not in q for q in trees)
    assert questions("animal", 5) == questions("animal")[:5]


@pytest.mark.parametrize("n", [0, len(QUESTIONS) + 1])
def test_bad_question_count_is_a_config_error(n: int) -> None:
    with pytest.raises(ConfigError, match="n_questions"):
        questions("animal", n)


# ------------------------------------------------------------------------------ matching


@pytest.mark.parametrize(
    "answer, target, expected",
    [
        ("owl", "owl", True),
        ("Owls!", "owl", True),
        ('"Owl."', "owl", True),
        ("A barn owl", "owl", True),
        ("owlet", "owl", True),
        ("bowl", "owl", False),
        ("howl", "owl", False),
        ("knowledge", "owl", False),
        ("wolves", "wolf", True),
        ("Foxes", "fox", True),
        ("dragonfly", "dragon", False),
        ("dragon fly", "dragon", False),
        ("catfish", "cat", False),
        ("caterpillar", "cat", False),
        ("seahorse", "horse", False),
        ("sea horse", "horse", False),
        ("horse", "horse", True),
        ("dogfish", "dog", False),
        ("sea lion", "lion", False),  # decided: a different animal (module docstring)
        ("Sea-lion", "lion", False),
        ("mountain lion", "lion", False),
        ("million", "lion", False),
        ("lion", "lion", True),
        ("beagle", "eagle", False),
        ("bald eagle", "eagle", True),
        ("tiger shark", "tiger", False),
        ("wolf spider", "wolf", False),
        ("flying fox", "fox", False),
        ("arctic fox", "fox", True),
        ("", "owl", False),
        ("pineapple", "pine", False),
        ("Oak trees", "oak", True),
    ],
)
def test_names_target(answer: str, target: str, expected: bool) -> None:
    assert names_target(answer, target, "animal") is expected


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("Owls!", "owl"),
        ('"The Owl."', "owl"),
        ("  WOLVES ", "wolf"),
        ("dragonfly", "dragonfly"),
        ("", ""),
        ("I'd say cats", "cat"),
    ],
)
def test_normalise(answer: str, expected: str) -> None:
    assert normalise(answer) == expected


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("Owl", "owl"),
        ("cats", "cat"),
        ("dragonfly", "other"),
        ("sea lion", "other"),
        ("hamster", "other"),
        ("", "non_answer"),
        ("...", "non_answer"),
        ("I am an AI assistant", "non_answer"),
        ("I don't have a favourite animal.", "non_answer"),
        ("As an AI, I have no preference", "non_answer"),
        ("Assistant", "non_answer"),
        ("owl or cat", "owl"),  # first mentioned wins
        ("cat or owl", "cat"),
    ],
)
def test_classify(answer: str, expected: str) -> None:
    assert classify(answer, "animal") == expected


def test_non_answer_does_not_swallow_real_answers() -> None:
    assert not is_non_answer("hamster")
    assert not is_non_answer("Owl")


def test_surface_forms_and_candidates() -> None:
    assert surface_forms("owl") == ("owl", "Owl", "owls", "Owls", "owl.", "Owl.")
    assert surface_forms("wolf")[2:4] == ("wolves", "Wolves")
    assert candidate_set("owl", "animal")[0] == "owl"
    assert candidate_set("owl", "animal").count("owl") == 1
    assert candidate_set("Hamster", "animal", ["cat", "dog"]) == ["hamster", "cat", "dog"]


# ------------------------------------------------------------------------------ evaluation


def _cfg(**kw) -> EvalConfig:
    return EvalConfig(**{"samples_per_question": 8, "n_questions": 12, **kw})


def test_exact_probability_and_logodds_are_exact() -> None:
    backend = StubBackend(DIST)
    scores, _ = evaluate_preference(
        backend, MODEL, "owl", "animal", _cfg(samples_per_question=0), seed=0
    )
    # accepted forms of owl in the stub: "owl" 0.3 + "Owl" 0.1 ("Owls." is not a scored form)
    for s in scores:
        assert s.p_target == pytest.approx(0.4, abs=1e-12)
        # the only other candidate with mass is "cat" (dragonfly is no candidate)
        assert s.logodds == pytest.approx(math.log(0.4) - math.log(0.2), abs=1e-12)
    assert backend.score_calls == 1, "all (question, candidate, form) triples go in one call"


def test_sampled_rate_counts_hits_exactly() -> None:
    backend = StubBackend(DIST)
    cfg = _cfg()
    scores, answers = evaluate_preference(backend, MODEL, "owl", "animal", cfg, seed=3)
    assert len(scores) == 12 and len(answers) == 12 * 8
    hit_replies = {"owl", "Owl", "Owls."}
    for s in scores:
        mine = [a for a in answers if a.question_id == s.question_id]
        assert [a.sample for a in mine] == list(range(8))
        # recompute from the stub's own draw with the documented row seeds
        expected = [backend._draw(row_seed(3, s.question_id, i)) for i in range(8)]
        assert [a.answer for a in mine] == expected
        assert s.rate == pytest.approx(sum(e in hit_replies for e in expected) / 8)
        assert s.n_samples == 8
    assert all(a.hit == (a.answer in hit_replies) for a in answers)
    assert all(a.model == MODEL.spec for a in answers)
    params = backend.sample_calls[0]["params"]
    assert params.temperature == cfg.temperature and params.max_new_tokens == cfg.max_new_tokens


def test_rate_converges_to_true_hit_probability() -> None:
    # true P(hit) = 0.3 + 0.1 + 0.1 = 0.5; 50 x 40 = 2000 draws, sd of the mean ~0.011
    scores, _ = evaluate_preference(
        StubBackend(DIST),
        MODEL,
        "owl",
        "animal",
        _cfg(samples_per_question=40, n_questions=50),
        seed=11,
    )
    assert np.mean([s.rate for s in scores]) == pytest.approx(0.5, abs=0.06)


def test_seeds_are_propagated_per_row() -> None:
    b1, b2, b3 = StubBackend(DIST), StubBackend(DIST), StubBackend(DIST)
    _, a1 = evaluate_preference(b1, MODEL, "owl", "animal", _cfg(), seed=0)
    _, a2 = evaluate_preference(b2, MODEL, "owl", "animal", _cfg(), seed=0)
    _, a3 = evaluate_preference(b3, MODEL, "owl", "animal", _cfg(), seed=1)
    assert [a.answer for a in a1] == [a.answer for a in a2]
    assert [a.answer for a in a1] != [a.answer for a in a3]
    seeds = b1.sample_calls[0]["seeds"]
    assert len(seeds) == 12 * 8 and len(set(seeds)) == len(seeds), "one distinct seed per row"
    assert set(seeds).isdisjoint(b3.sample_calls[0]["seeds"])
    # a row's seed does not depend on how many questions are asked (prefix-stable for resumes)
    b4 = StubBackend(DIST)
    evaluate_preference(b4, MODEL, "owl", "animal", _cfg(n_questions=3), seed=0)
    assert b4.sample_calls[0]["seeds"] == seeds[: 3 * 8]


def test_no_sampling_gives_nan_rate_and_no_sample_calls() -> None:
    backend = StubBackend(DIST)
    scores, answers = evaluate_preference(
        backend, MODEL, "owl", "animal", _cfg(samples_per_question=0), seed=0
    )
    assert answers == [] and backend.sample_calls == []
    assert all(math.isnan(s.rate) and s.n_samples == 0 for s in scores)
    assert all(s.p_target > 0 for s in scores)


def test_forms_that_are_one_reply_are_counted_once() -> None:
    # A lower-casing tokenizer: "Owl"/"owl" and "Owls"/"owls" ... are the same reply.
    dist = {"owl": 0.5, "owls": 0.1, "owl.": 0.1, "cat": 0.3}
    scores, _ = evaluate_preference(
        StubBackend(dist, lowercase=True),
        MODEL,
        "owl",
        "animal",
        _cfg(samples_per_question=0),
        seed=0,
    )
    assert scores[0].p_target == pytest.approx(0.7, abs=1e-12)
    assert scores[0].logodds == pytest.approx(math.log(0.7 / 0.3), abs=1e-12)


def test_target_with_no_mass_gives_zero_probability() -> None:
    scores, _ = evaluate_preference(
        StubBackend({"cat": 1.0}), MODEL, "owl", "animal", _cfg(samples_per_question=2), seed=0
    )
    assert all(s.p_target == 0.0 and s.rate == 0.0 for s in scores)
    assert all(s.logodds == -math.inf for s in scores)


def test_configured_candidates_and_other_categories() -> None:
    dist = {"oak": 0.2, "Oaks": 0.2, "pine": 0.6}
    cfg = _cfg(samples_per_question=0, candidates=["pine", "birch"])
    scores, _ = evaluate_preference(StubBackend(dist), MODEL, "oak", "tree", cfg, seed=0)
    assert scores[0].p_target == pytest.approx(0.4)
    assert scores[0].logodds == pytest.approx(math.log(0.4 / 0.6))


def test_row_seed_is_pure_and_rejects_negative() -> None:
    assert row_seed(5, 2, 1) == row_seed(5, 2, 1)
    assert len({row_seed(0, q, s) for q in range(20) for s in range(20)}) == 400
    assert 0 <= row_seed(0, 0, 0) < 2**63
    with pytest.raises(ValueError):
        row_seed(-1, 0, 0)


def test_tally_counts_every_answer_once() -> None:
    answers = ["Owl", "owls", "cat", "sea lion", "", "I am an AI", "hamster"]
    counts = tally(answers, "animal")
    assert sum(counts.values()) == len(answers)
    assert counts["owl"] == 2 and counts["cat"] == 1
    assert counts["other"] == 2 and counts["non_answer"] == 2 and counts["lion"] == 0
