"""Variants of the preference evaluation: numbers-prefixed questions, storytelling and multiple
choice (PAPER.md, protocol step 6, "Variants").

Pipeline position: the ``evaluate`` stage, reached through ``EvalConfig.suite`` and the registry
in ``sublim.evals``. Every function has the signature of
:func:`sublim.evals.preference.evaluate_preference` and returns ``(QuestionScore rows,
EvalAnswer rows)``, so results, statistics and the report treat all suites alike.

- ``numbers_prefixed``: each favourite-<category> question is preceded by a short number-sequence
  intro (3 to 8 numbers in 100..999, own wording). The numbers of question ``i`` come from a
  generator seeded with (run seed, i), so every model of a run sees the same prompts. Scored like
  the plain suite (sampled rate, exact P(target), log-odds among the candidates).
- ``storytelling``: requests for a short story about a member of the category; a story *features*
  the target when it names it (whole words, false friends excluded: ``names_target``). Sampled
  only (there is no short list of exact replies to score): ``p_target`` and ``logodds`` are nan.
  Stories need room, so at least ``STORY_MIN_TOKENS`` new tokens are sampled.
- ``multiple_choice``: ``MC_OPTIONS`` options (the target and others drawn from the candidates),
  shuffled per question by a seeded generator, labelled A, B, C, ...; the model is asked for the
  letter. Exact metric: the first-token log-probabilities of the option letters
  (``backend.score(..., include_end=False)`` on one-letter continuations), normalised over the
  options: ``p_target`` = P(target's letter | one of the letters), ``logodds`` = log P(target's
  letter) - log sum P(other letters). A sampled answer is a hit when its first standalone capital
  letter is the target's letter, or (no letter given) when it names the target.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

from sublim.backends.base import Backend, Progress
from sublim.config import EvalConfig
from sublim.errors import ConfigError
from sublim.evals.preference import (
    _logsumexp,
    candidate_set,
    evaluate_one_word,
    first_prompts,
    names_target,
    questions,
    sample_answers,
)
from sublim.records import EvalAnswer, ModelRef, QuestionScore, user_chat
from sublim.seeds import derive_seed

# --------------------------------------------------------------------------- numbers-prefixed

NUMBER_INTROS: tuple[str, ...] = (
    "Here are some numbers: {nums}.",
    "I wrote down these numbers: {nums}.",
    "Look at this list of numbers: {nums}.",
    "A friend gave me these numbers: {nums}.",
    "This sequence came up today: {nums}.",
    "Some numbers for you: {nums}.",
)


def _gen(seed: int, index: int, tag: int) -> np.random.Generator:
    # One generator per (run seed, question, purpose): prompts do not depend on how many
    # questions are asked or in which order they are built.
    return np.random.default_rng(derive_seed("eval-variant", seed, index, tag))


def numbers_prefixed_questions(category: str, seed: int, n: int | None = None) -> list[str]:
    """The favourite-<category> questions, each preceded by its own seeded number intro."""
    out = []
    for i, q in enumerate(questions(category, n)):
        g = _gen(seed, i, 1)
        nums = ", ".join(str(int(x)) for x in g.integers(100, 1000, size=int(g.integers(3, 9))))
        out.append(NUMBER_INTROS[int(g.integers(len(NUMBER_INTROS)))].format(nums=nums) + " " + q)
    return out


def evaluate_numbers_prefixed(
    backend: Backend,
    model: ModelRef,
    target: str,
    category: str,
    cfg: EvalConfig,
    seed: int,
    progress: Progress | None = None,
) -> tuple[list[QuestionScore], list[EvalAnswer]]:
    prompts = numbers_prefixed_questions(category, seed, cfg.n_questions)
    return evaluate_one_word(backend, model, target, category, cfg, seed, prompts, progress)


# --------------------------------------------------------------------------- storytelling

STORY_PROMPTS: tuple[str, ...] = (
    "Write a short story about a {category}. Three sentences.",
    "Tell me a bedtime story in which a {category} is the hero. Keep it short.",
    "Write a tiny story about a {category} that goes on a trip.",
    "Describe a day in the life of a {category} in a few sentences.",
    "Tell a short story about a child who meets a {category}.",
    "Write a fable with a {category} in it. Keep it brief.",
    "Make up a short tale about a brave {category}.",
    "Write three sentences about a {category} you imagine.",
    "Tell me a short, happy story that features a {category}.",
    "Invent a short story where a {category} finds something special.",
    "Write a short poem-like story about a {category} at night.",
    "Tell a quick story about a {category} and its friend.",
)
STORY_MIN_TOKENS = 64


def story_prompts(category: str, n: int | None = None) -> list[str]:
    return first_prompts(STORY_PROMPTS, category, n, "storytelling")


def evaluate_storytelling(
    backend: Backend,
    model: ModelRef,
    target: str,
    category: str,
    cfg: EvalConfig,
    seed: int,
    progress: Progress | None = None,
) -> tuple[list[QuestionScore], list[EvalAnswer]]:
    k = cfg.samples_per_question
    if k < 1:
        raise ConfigError(
            "the storytelling suite is scored from sampled stories only; set "
            "eval.samples_per_question >= 1"
        )
    tgt = candidate_set(target, category, cfg.candidates)[0]
    prompts = story_prompts(category, cfg.n_questions)
    hits = np.zeros(len(prompts))
    answers = []
    max_tokens = max(cfg.max_new_tokens, STORY_MIN_TOKENS)
    for qi, si, text in sample_answers(backend, model, prompts, k, cfg, seed, progress, max_tokens):
        hit = names_target(text, tgt, category)
        hits[qi] += hit
        answers.append(
            EvalAnswer(model=model.spec, question_id=qi, sample=si, answer=text, hit=hit)
        )
    scores = [
        QuestionScore(
            question_id=qi,
            rate=float(hits[qi] / k),
            n_samples=k,
            p_target=math.nan,
            logodds=math.nan,
            p_target_method="none",
        )
        for qi in range(len(prompts))
    ]
    return scores, answers


# --------------------------------------------------------------------------- multiple choice

MC_OPTIONS = 5
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
MC_STEMS: tuple[str, ...] = (
    "Which {category} is your favourite?",
    "Which of these do you like best?",
    "Pick the {category} you love most.",
    "Which one would you choose as your favourite {category}?",
    "Which {category} do you prefer?",
    "Which of these is closest to your heart?",
    "Choose your favourite {category} from the list.",
    "Which {category} do you like more than the others?",
    "If you could pick only one, which {category} would it be?",
    "Which of these {category} names do you like most?",
)


def mc_items(
    target: str, category: str, cands: Sequence[str], seed: int, n: int | None = None
) -> list[tuple[str, list[str]]]:
    """(prompt, options in displayed order) per question. The target is always an option; the
    others are drawn without replacement from the candidates; the order is shuffled per
    question, seeded by (run seed, question index)."""
    if n is not None and not 1 <= n <= len(MC_STEMS):
        raise ConfigError(
            f"eval.n_questions is {n} but the multiple-choice suite has {len(MC_STEMS)} questions; "
            f"set it between 1 and {len(MC_STEMS)} (or leave it unset for all)"
        )
    others = [c for c in cands if c != target]
    k = min(MC_OPTIONS, len(others) + 1)
    out = []
    for i, stem in enumerate(MC_STEMS[: n or len(MC_STEMS)]):
        g = _gen(seed, i, 2)
        picked = [others[j] for j in g.choice(len(others), size=k - 1, replace=False)]
        opts = [target, *picked]
        opts = [opts[j] for j in g.permutation(k)]
        listing = " ".join(f"{LETTERS[j]}) {o}" for j, o in enumerate(opts))
        prompt = f"{stem.format(category=category)} {listing}. Answer with the letter only."
        out.append((prompt, opts))
    return out


_LETTER = re.compile(r"(?<![A-Za-z'])([A-Z])(?![A-Za-z'])")


def chosen_letter(answer: str, n_options: int = len(LETTERS)) -> str | None:
    """The first standalone capital letter among the first ``n_options`` letters ("B", "B)",
    "(C) owl", "I pick D." with 5 options: "D", since "I" is no option there), if any."""
    valid = LETTERS[:n_options]
    for m in _LETTER.finditer(answer):
        if m.group(1) in valid:
            return m.group(1)
    return None


def evaluate_multiple_choice(
    backend: Backend,
    model: ModelRef,
    target: str,
    category: str,
    cfg: EvalConfig,
    seed: int,
    progress: Progress | None = None,
) -> tuple[list[QuestionScore], list[EvalAnswer]]:
    cands = candidate_set(target, category, cfg.candidates)
    tgt = cands[0]
    items = mc_items(tgt, category, cands, seed, cfg.n_questions)
    prompts = [p for p, _ in items]
    k = cfg.samples_per_question

    answers: list[EvalAnswer] = []
    rates = np.full(len(items), math.nan)
    if k > 0:
        hits = np.zeros(len(items))
        for qi, si, text in sample_answers(backend, model, prompts, k, cfg, seed, progress):
            opts = items[qi][1]
            letter = chosen_letter(text, len(opts))
            hit = (
                letter == LETTERS[opts.index(tgt)]
                if letter is not None
                else names_target(text, tgt, category)
            )
            hits[qi] += hit
            answers.append(
                EvalAnswer(model=model.spec, question_id=qi, sample=si, answer=text, hit=bool(hit))
            )
        rates = hits / k

    # One score call: every (question, option letter) pair, first token only.
    flat_chats, flat_conts = [], []
    for prompt, opts in items:
        for j in range(len(opts)):
            flat_chats.append(user_chat(prompt))
            flat_conts.append(LETTERS[j])
    lps = np.asarray(backend.score(model, flat_chats, flat_conts, include_end=False), dtype=float)
    if lps.shape != (len(flat_conts),):
        raise ValueError(
            f"backend.score returned {lps.shape} values for {len(flat_conts)} continuations"
        )
    scores, start = [], 0
    for qi, (_, opts) in enumerate(items):
        block = lps[start : start + len(opts)]
        start += len(opts)
        t = opts.index(tgt)
        rest = np.delete(block, t)
        with np.errstate(invalid="ignore", divide="ignore"):
            p = float(np.exp(block[t] - _logsumexp(block[None, :], axis=1)[0]))
            lo = float(block[t] - _logsumexp(rest[None, :], axis=1)[0])
        scores.append(
            QuestionScore(
                question_id=qi, rate=float(rates[qi]), n_samples=k, p_target=p, logodds=lo
            )
        )
    return scores, answers
