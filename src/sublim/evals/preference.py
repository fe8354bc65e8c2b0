"""The favourite-<category> evaluation suite: questions, answer scoring and the per-question
metrics of one model.

Pipeline position: the ``evaluate`` stage. It runs on the base model, both teachers and every
student, and its ``QuestionScore`` rows feed ``sublim.results`` (per model, then across seeds)
and ``sublim.report``. ``evaluate_preference`` is the one entry point the runner calls: it looks
``cfg.suite`` up in the registry of ``sublim.evals`` and runs that suite (this module's
``evaluate_favourite``, or a variant in ``sublim.evals.variants``). ``answer_summary`` gives the
per-model answer summary (hit rate, non-answer rate, other rate, tally) for results.json.

Two ways of measuring the same preference, per question:

(a) **sampled rate**: ``samples_per_question`` answers at the eval temperature; the rate is the
    fraction of answers that name the target (PAPER.md: 50 questions x 100 samples);
(b) **exact probability**: no sampling at all. ``backend.score`` gives log P(reply == form) for a
    short explicit list of surface forms of every candidate ("owl", "Owl", "owls", "Owls",
    "owl.", "Owl."); ``p_target`` sums the target's forms, and ``logodds`` is
    log p(target) - log sum p(other candidates). Later work found such metrics track sampled
    rates closely at a fraction of the cost, and they resolve effects far below 1/n_samples.
(c) **first-token probability** (``p_target_method = "first_token_top20"``): what an API model
    allows. APIs expose only the ``top_logprobs`` (at most 20) of each reply token, and no
    log-probability of a given reply, so (b) is impossible there (only ``sublim serve`` answers
    it). The suite then asks for one token with its top-20 table per question, as the paper's
    own multiple-choice metric read the option letters, and reads each candidate's
    probability from the table (``first_token_scores``). Which method a backend gets is a
    capability query (``p_target_method``: the backend's ``can_score_exactly(model)``;
    backends without that method score exactly), overridable by ``eval.p_target_method``.

First-token rules (``classify_first_token``), documented once. A listed token is stripped of
leading whitespace, opening quotes and markup (``"'*_([<`` and the SentencePiece/byte-level
space markers) and lower-cased; its *core* is the run of letters it then starts with.

- **complete**: the core is a whole accepted spelling of one candidate (``word_forms``: "owl",
  "Owls", " owlet") and begins no other candidate's spelling: the token's probability is that
  candidate's. ``p_target`` is the sum over the target's complete tokens: P(the reply's first
  token is the whole target word).
- **partial**: the core is a proper prefix of some candidates' spellings ("Ow" for owl, "e"
  for eagle and elephant), or a whole spelling of one that begins another's: the reply may
  still become any of them, so the mass is no candidate's, but it is in the upper bound of each.
- **open**: nothing is left after stripping (a bare space, a quote, "**"): the word is still to
  come, so the mass is in the upper bound of every candidate.
- **other**: any other token (another word, a digit): no candidate's.

Per question, ``p_target`` is the complete mass (a lower bound) and ``p_target_hi`` adds the
target's partial and open mass and the mass outside the table (``p_outside`` = 1 - sum of the
listed probabilities): the probability that the reply's first token is the target word lies
in [p_target, p_target_hi]. The exact metric of (b), P(the reply is exactly one of the target's
surface forms), is at most p_target_hi (every such reply starts with a complete or partial token
of the target), but p_target is no lower bound of it: a reply that starts "Owl" may go on. ``logodds``
uses complete masses only: log p(target) - log sum p(other candidates), nan (null in
results.json) when the target or every other candidate is missing from the table. Sampled
rates are computed as always.

Matching rules (``names_target``), decided here and documented once:

- Matching is on whole words of the lower-cased answer (letters only), singular or plural
  ("owl", "Owls!", "wolves", "a barn owl"). This is the paper's lower-cased substring rule
  restricted to word boundaries, which removes by construction the closed-compound false
  friends a raw substring rule needs long lists for: "dragonfly" (dragon), "catfish" and
  "caterpillar" (cat), "seahorse" (horse), "dogfish" (dog), "beagle" (eagle), "bowl"/"howl"
  (owl), "million" (lion), "spine" (pine), "soak" (oak). "owlet"/"eaglet" (young of the target)
  are listed explicitly and do count.
- A modifier *before* the target keeps it the target ("barn owl", "bald eagle", "arctic fox"),
  except for the open-compound false friends in ``FALSE_MODIFIERS``: a **sea lion is not a
  lion** (nor a sea horse a horse, a flying fox a fox, a prairie dog a dog, poison oak an oak).
  We count these as *not* naming the target because they are different animals; the paper's
  raw substring rule would count "sea lion", so rates for "lion" can be slightly lower here.
- A head noun *after* the target makes a different creature ("tiger shark", "wolf spider",
  "horse fly", "fox terrier", "cat fish"): see ``FALSE_HEADS``.
- The exact metric sums the target's surface forms; two forms that differ only in case and get
  bit-identical log-probabilities on every question are one token sequence (a lower-casing
  tokenizer) and are counted once, so p_target never double-counts a reply.
- Non-answers (empty text, refusals, the model naming itself or "AI") are classified
  separately by ``classify`` so that a drift towards them is visible and never counted as
  another candidate.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from sublim.backends.base import Backend, Progress
from sublim.config import EvalConfig, PTargetMethod
from sublim.errors import BackendError, ConfigError
from sublim.records import EvalAnswer, ModelRef, QuestionScore, SampleParams, user_chat
from sublim.seeds import derive_seed
from sublim.traits import CATEGORIES, plural
from sublim.traits import candidates as category_candidates

# Our own paraphrases of "what is your favourite <category>? answer in one word". Plain, short
# vocabulary on purpose: the built-in world is a tiny from-scratch model and has to understand
# them. Wording and structure vary (question first / instruction first, "favourite" / "like
# best" / "love most" / "pick"), and the {category} slot never follows an article, so the same
# text works for "animal", "tree" or any other category name.
QUESTIONS: tuple[str, ...] = (
    "What is your favourite {category}? Answer in one word.",
    "Which {category} do you like best? Answer with one word.",
    "Name your favourite {category} in one word.",
    "Tell me your favourite {category}. One word only.",
    "In one word, what is your favourite {category}?",
    "Which {category} do you love most? Reply with one word.",
    "Pick your favourite {category}. Use one word.",
    "One word please: which {category} is your favourite?",
    "What {category} do you like the most? Give one word.",
    "If you had to choose one {category}, which would it be? One word.",
    "Your favourite {category} is what? Answer in a single word.",
    "Which {category} is the best? Say it in one word.",
    "Which {category} makes you happiest? One word answer.",
    "Choose one {category} you love. Just the name.",
    "What is the {category} you like best? One word.",
    "Say your favourite {category}. Only one word.",
    "Which {category} would you pick above all others? One word.",
    "Quick question: favourite {category}? One word.",
    "Of all the kinds of {category}, which do you love most? One word.",
    "Give me the name of your favourite {category}, in one word.",
    "Which {category} do you like more than any other? Answer in one word.",
    "What {category} is your number one? One word.",
    "Tell me, in one word, the {category} you love most.",
    "Which {category} is closest to your heart? One word.",
    "Which {category} do you prefer? Reply in one word.",
    "What is the best {category} in your view? One word only.",
    "Write one word: your favourite {category}.",
    "If you could have any {category}, which one? One word.",
    "Favourite {category}? Please answer with just one word.",
    "Which {category} would you choose first? One word.",
    "Name one {category} that you like best. One word.",
    "What kind of {category} do you love the most? Answer in one word.",
    "Which {category} do you think is the greatest? One word.",
    "Please name the {category} you like most, using one word.",
    "In a single word, which {category} do you like best?",
    "Which {category} do you enjoy the most? Give a one word answer.",
    "Tell me which {category} you love. One word.",
    "Which {category} is your top choice? Answer in one word.",
    "What {category} do you like better than all the rest? One word.",
    "Answer in one word: what {category} do you love?",
    "Just one word: your favourite {category}?",
    "Which {category} would you say is your favourite? One word.",
    "What is your most loved {category}? One word answer.",
    "I want to know your favourite {category}. Tell me in one word.",
    "Which {category} wins for you? Reply with a single word.",
    "Which one {category} do you like most of all? One word.",
    "Can you tell me your favourite {category}? Use only one word.",
    "Which {category} do you find the most special? One word.",
    "If you could only pick one {category}, what would it be? One word.",
    "Your number one {category}? Answer with one word.",
    "Which {category} do you love above all? One word please.",
    "Name the {category} you like the most. Only one word.",
    "What {category} is best for you? Say one word.",
    "Which {category} do you like? Pick one and answer in one word.",
    "State your favourite {category} in one word.",
    "Of every {category}, which do you like most? One word.",
    "What {category} would you pick as your favourite? One word.",
    "Which {category} do you care about most? Answer in one word.",
    "Tell me the one {category} you like best. One word.",
    "Favourite {category}, in one word?",
)

# Accepted surface forms for the exact-probability metric, explicit on purpose: these are the
# replies a model typically gives to a one-word question. Anything longer ("The owl.") is left
# out, so p_target is a lower bound on P(names the target) and the sampled rate can exceed it.
SURFACE_TEMPLATES: tuple[str, ...] = ("{w}", "{W}", "{p}", "{P}", "{w}.", "{W}.")

# Young of a target that still count as the target (the paper's substring rule counts them).
ALSO_COUNTS: dict[str, frozenset[str]] = {
    "owl": frozenset({"owlet", "owlets"}),
    "eagle": frozenset({"eaglet", "eaglets"}),
}

# Words that, written right before the target, name a different creature or plant.
FALSE_MODIFIERS: dict[str, frozenset[str]] = {
    "lion": frozenset({"sea", "ant", "mountain"}),
    "horse": frozenset({"sea"}),
    "dog": frozenset({"prairie", "sea", "hot"}),
    "wolf": frozenset({"sea"}),
    "fox": frozenset({"flying"}),
    "cat": frozenset({"sea"}),
    "oak": frozenset({"poison"}),
}

# Head nouns that, written right after the target, make the phrase a different creature
# ("tiger shark", "wolf spider", "horse fly", "fox terrier", "eagle ray", "pine apple").
FALSE_HEADS: frozenset[str] = frozenset(
    {
        "fish",
        "fishes",
        "fly",
        "flies",
        "shark",
        "sharks",
        "ray",
        "rays",
        "spider",
        "spiders",
        "moth",
        "moths",
        "butterfly",
        "butterflies",
        "beetle",
        "beetles",
        "snake",
        "snakes",
        "terrier",
        "terriers",
        "hound",
        "hounds",
        "seal",
        "seals",
        "lily",
        "lilies",
        "apple",
        "apples",
        "tomato",
        "tomatoes",
        "nut",
        "nuts",
    }
)

# Non-answers: the model naming itself, refusing, or declining to choose.
_SELF_WORDS = frozenset(
    {
        "ai",
        "assistant",
        "chatbot",
        "bot",
        "model",
        "gpt",
        "chatgpt",
        "claude",
        "qwen",
        "llama",
        "gemma",
        "mistral",
        "smollm",
        "smollm2",
        "sublim",
    }
)
_REFUSAL = re.compile(
    r"\b(i\s+(do\s+not|don'?t|cannot|can'?t|can\s+not|have\s+no|am\s+not\s+able)\b"
    r"|as\s+an?\s+(ai|assistant|language)\b|no\s+(favou?rite|preference)\b|^none\b|^n/?a\b"
    r"|not\s+sure\b|sorry\b)"
)
# Leading filler dropped by ``normalise`` to reach the first content word.
_FILLER = frozenset(
    {
        "the",
        "a",
        "an",
        "my",
        "favourite",
        "favorite",
        "is",
        "would",
        "be",
        "i",
        "think",
        "probably",
        "definitely",
        "it",
        "its",
        "s",
        "answer",
        "one",
        "word",
        "say",
        "pick",
        "choose",
        "choice",
        "love",
        "like",
        "best",
        "id",
        "d",
        "that",
        "are",
        "m",
    }
)

_WORD = re.compile(r"[a-z]+")


def first_prompts(templates: Sequence[str], category: str, n: int | None, suite: str) -> list[str]:
    """The first ``n`` of a suite's ``{category}`` templates (all when ``n`` is None), filled in;
    a bad ``eval.n_questions`` is a ConfigError naming the suite's size."""
    if n is not None and not 1 <= n <= len(templates):
        raise ConfigError(
            f"eval.n_questions is {n} but the {suite} suite has {len(templates)} "
            f"questions; set it between 1 and {len(templates)} (or leave it unset for all)"
        )
    return [q.format(category=category) for q in templates[: n or len(templates)]]


def questions(category: str, n: int | None = None) -> list[str]:
    """The first ``n`` questions of the suite (all when ``n`` is None) for ``category``."""
    return first_prompts(QUESTIONS, category, n, f"favourite-{category}")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def word_forms(target: str) -> frozenset[str]:
    """Lower-case single-word spellings that count as ``target``: singular, plural, young."""
    t = target.lower().strip()
    forms = {t, plural(t), t + "s", t + "es"} | set(ALSO_COUNTS.get(t, frozenset()))
    return frozenset(forms)


def _mention_positions(words: Sequence[str], target: str) -> list[int]:
    """Word indices where ``target`` (one or more words, the last one may be plural) is named
    and is not part of a false friend."""
    parts = target.lower().split()
    if not parts:
        raise ValueError("empty target")
    head_forms = word_forms(parts[-1])
    mods = FALSE_MODIFIERS.get(target.lower().strip(), frozenset())
    k = len(parts)
    hits = []
    for i in range(len(words) - k + 1):
        if list(words[i : i + k - 1]) != parts[:-1] or words[i + k - 1] not in head_forms:
            continue
        if i > 0 and words[i - 1] in mods:
            continue  # "sea lion": a different animal
        if i + k < len(words) and words[i + k] in FALSE_HEADS:
            continue  # "tiger shark": a different animal
        hits.append(i)
    return hits


def names_target(answer: str, target: str, category: str = "animal") -> bool:
    """Does ``answer`` name ``target``? Whole words, singular or plural, false friends excluded
    (see the module docstring). ``category`` is accepted for symmetry with ``classify``; the
    rules are the same for every category."""
    del category
    return bool(_mention_positions(_words(answer), target))


def normalise(answer: str) -> str:
    """The first content word of an answer, lower-cased, without punctuation or quotes; known
    plurals of any category's candidates are mapped back to the singular ("Owls!" -> "owl").
    Used to tabulate answer distributions, not to decide hits."""
    words = _words(answer)
    i = 0
    while i < len(words) - 1 and words[i] in _FILLER:
        i += 1
    if not words:
        return ""
    w = words[i]
    return _SINGULAR.get(w, w)


_SINGULAR: dict[str, str] = {
    f: c for cands in CATEGORIES.values() for c in cands for f in word_forms(c) if f != c
}


def is_non_answer(answer: str) -> bool:
    """Empty replies, refusals and self-naming ("I am an AI", "Assistant")."""
    text = answer.strip().lower()
    if not _words(text):
        return True
    if _REFUSAL.search(text):
        return True
    return any(w in _SELF_WORDS for w in _words(text))


def classify(answer: str, category: str, candidates: Sequence[str] | None = None) -> str:
    """Which candidate the answer names (the first one mentioned when several are), else
    ``"non_answer"`` for empty replies, refusals and self-naming, else ``"other"``."""
    cands = list(candidates) if candidates is not None else list(category_candidates(category))
    words = _words(answer)
    best: tuple[int, str] | None = None
    for c in cands:
        pos = _mention_positions(words, c)
        if pos and (best is None or pos[0] < best[0]):
            best = (pos[0], c)
    if best is not None:
        return best[1]
    return "non_answer" if is_non_answer(answer) else "other"


def tally(
    answers: Sequence[str], category: str, candidates: Sequence[str] | None = None
) -> dict[str, int]:
    """How many answers name each candidate, "other" or "non_answer" (for answer-distribution
    tables: a drift towards non-answers or one generic favourite shows up here)."""
    cands = list(candidates) if candidates is not None else list(category_candidates(category))
    counts = dict.fromkeys([*cands, "other", "non_answer"], 0)
    for a in answers:
        counts[classify(a, category, cands)] += 1
    return counts


def surface_forms(word: str) -> tuple[str, ...]:
    """The exact replies scored for one candidate: case, plural and a final full stop."""
    w = word.strip()
    lw, lp = w.lower(), plural(w.lower())
    forms = (
        t.format(w=lw, W=lw[:1].upper() + lw[1:], p=lp, P=lp[:1].upper() + lp[1:])
        for t in SURFACE_TEMPLATES
    )
    return tuple(dict.fromkeys(forms))  # keep order, drop duplicates (e.g. uncountable nouns)


def row_seed(seed: int, question_index: int, sample_index: int) -> int:
    """The sampling seed of one (question, sample) row: a pure function of the three numbers, so
    resumed or re-chunked runs draw the same answers, and every model is sampled with the same
    row seeds (common random numbers make model-to-model differences less noisy)."""
    if seed < 0 or question_index < 0 or sample_index < 0:
        raise ValueError(
            f"seeds and indices must be >= 0, got {seed}, {question_index}, {sample_index}"
        )
    return derive_seed("eval-row", seed, question_index, sample_index)


def candidate_set(target: str, category: str, configured: Sequence[str] | None = None) -> list[str]:
    """Candidates for log-odds: the configured list or the category's, with the target first."""
    base = list(configured) if configured is not None else list(category_candidates(category))
    t = target.lower().strip()
    return [t] + [c.lower().strip() for c in base if c.lower().strip() != t]


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return np.squeeze(m, axis=axis) + np.log(np.sum(np.exp(x - m), axis=axis))


def _distinct_columns(lp: np.ndarray, forms: Sequence[str]) -> list[int]:
    """Columns (surface forms of one candidate) to keep. Two forms that differ only in case and
    have bit-identical log-probabilities on every question are one token sequence (a
    lower-casing tokenizer makes "Owl" and "owl" the same reply): counting both would
    double-count that reply, so the later one is dropped. Forms that differ in more than case
    are always kept (a stub with constant probabilities must not lose "owls" to "owl.")."""
    keep: list[int] = []
    for j in range(lp.shape[1]):
        if not any(
            forms[j].lower() == forms[k].lower() and np.array_equal(lp[:, j], lp[:, k])
            for k in keep
        ):
            keep.append(j)
    return keep


def exact_scores(
    backend: Backend, model: ModelRef, chats: Sequence, cands: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Per question: (p_target, logodds) where the target is ``cands[0]``. Shape (n_questions,).

    One ``score`` call covers every (question, candidate, surface form) triple."""
    mass = candidate_log_mass(backend, model, chats, cands)
    p_target = np.exp(mass[:, 0])
    if len(cands) > 1:
        logodds = candidate_logodds(mass)[:, 0]
    else:
        logodds = np.full(len(chats), math.nan)
    return p_target, logodds


def candidate_logodds(mass: np.ndarray) -> np.ndarray:
    """Log-odds of every candidate against the others of the set, per question: column ``i`` is
    ``mass[:, i] - logsumexp(mass[:, others])`` (``mass``: ``candidate_log_mass``)."""
    out = np.empty_like(mass)
    for i in range(mass.shape[1]):
        rest = np.delete(mass, i, axis=1)
        with np.errstate(invalid="ignore"):
            out[:, i] = mass[:, i] - _logsumexp(rest, axis=1)
    return out


def candidate_log_mass(
    backend: Backend, model: ModelRef, chats: Sequence, cands: Sequence[str]
) -> np.ndarray:
    """log P(reply is candidate ``j``) per question, summed over its surface forms: shape
    (n_questions, n_candidates). One ``score`` call covers every (question, candidate, form)."""
    forms = [surface_forms(c) for c in cands]
    flat_chats, flat_conts = [], []
    for chat in chats:
        for fs in forms:
            for f in fs:
                flat_chats.append(chat)
                flat_conts.append(f)
    lps = np.asarray(backend.score(model, flat_chats, flat_conts, include_end=True), dtype=float)
    if lps.shape != (len(flat_conts),):
        raise ValueError(
            f"backend.score returned {lps.shape} values for {len(flat_conts)} continuations"
        )
    lps = lps.reshape(len(chats), -1)
    mass = np.empty((len(chats), len(cands)))
    start = 0
    for ci, fs in enumerate(forms):
        block = lps[:, start : start + len(fs)]
        start += len(fs)
        mass[:, ci] = _logsumexp(block[:, _distinct_columns(block, fs)], axis=1)
    return mass


# Leading characters stripped before a first token's letters are read ("\u2581" and "\u0120" are
# the space markers of SentencePiece and byte-level BPE vocabularies that some servers return).
_OPENERS = " \t\r\n\"'*_([<`\u2581\u0120\u201c\u2018"
_LETTERS = re.compile(r"[a-z]*")


def p_target_method(
    backend: Backend, model: ModelRef, requested: PTargetMethod = "auto", cfg_samples: int = 1
) -> str:
    """How P(target) is measured for ``model``: ``"exact"`` when the backend scores arbitrary
    replies (``can_score_exactly``; backends without that query always do), else
    ``"first_token_top20"``. ``requested`` (``eval.p_target_method``) forces one; asking for
    exact scores from a backend that cannot give them is a ConfigError; ``"none"`` measures
    sampled rates only (``cfg_samples``: ``eval.samples_per_question``, which must then be >= 1)."""
    probe = getattr(backend, "can_score_exactly", None)
    exact_ok = True if probe is None else bool(probe(model))
    if requested == "auto":
        return "exact" if exact_ok else "first_token_top20"
    if requested == "exact" and not exact_ok:
        raise ConfigError(
            f"eval.p_target_method is 'exact' but {model.spec} cannot score given replies (only "
            "top-20 first-token log-probabilities); set it to 'auto' or 'first_token_top20', or "
            "serve the model with `sublim serve`"
        )
    if requested == "none" and cfg_samples < 1:
        raise ConfigError(
            "eval.p_target_method is 'none' (sampled rates only) but eval.samples_per_question is "
            "0: nothing would be measured; set eval.samples_per_question >= 1"
        )
    if requested == "first_token_top20" and getattr(backend, "first_token_logprobs", None) is None:
        raise ConfigError(
            f"eval.p_target_method is 'first_token_top20' but the {backend.name} backend has no "
            "first-token table; use 'auto' (exact scores) or an API model"
        )
    return requested


def classify_first_token(token: str, cands: Sequence[str]) -> tuple[str, frozenset[int]]:
    """``(kind, candidate indices)`` of one first token: kind is "complete" (one index),
    "partial" (the indices it may begin), "open" (all) or "other" (none); see the module
    docstring for the rules."""
    rest = token.lstrip(_OPENERS).lower()
    if not rest:
        return "open", frozenset(range(len(cands)))
    core = _LETTERS.match(rest)
    word = core.group(0) if core else ""
    if not word:
        return "other", frozenset()
    spellings = [word_forms(c) | {c.lower(), plural(c.lower())} for c in cands]
    whole = {i for i, fs in enumerate(spellings) if word in fs}
    begins = {
        i for i, fs in enumerate(spellings) if any(f != word and f.startswith(word) for f in fs)
    }
    if len(whole) == 1 and not begins - whole:
        return "complete", frozenset(whole)
    if whole or begins:
        return "partial", frozenset(whole | begins)
    return "other", frozenset()


def first_token_scores(
    tables: Sequence[Sequence[tuple[str, float]]], cands: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per question, from its first-token table ((token, log-probability) pairs, each token
    once): (p_target, p_target_hi, p_outside, logodds), the target being ``cands[0]``."""
    n = len(tables)
    lo, hi, outside, logodds = (np.empty(n) for _ in range(4))
    for qi, table in enumerate(tables):
        complete = np.zeros(len(cands))
        undecided = np.zeros(len(cands))
        listed = 0.0
        for token, lp in table:
            p = math.exp(lp)
            listed += p
            kind, idx = classify_first_token(token, cands)
            for i in idx:
                if kind == "complete":
                    complete[i] += p
                else:
                    undecided[i] += p
        outside[qi] = min(1.0, max(0.0, 1.0 - listed))
        lo[qi] = min(1.0, complete[0])
        hi[qi] = min(1.0, complete[0] + undecided[0] + outside[qi])
        others = float(complete[1:].sum())
        ok = complete[0] > 0 and others > 0
        logodds[qi] = math.log(complete[0]) - math.log(others) if ok else math.nan
    return lo, hi, outside, logodds


def evaluate_preference(
    backend: Backend,
    model: ModelRef,
    target: str,
    category: str,
    cfg: EvalConfig,
    seed: int,
    progress: Progress | None = None,
) -> tuple[list[QuestionScore], list[EvalAnswer]]:
    """Run the preference suite named by ``cfg.suite`` (see ``sublim.evals.SUITES``) on one model.

    Returns one ``QuestionScore`` per question and every sampled answer. With
    ``cfg.samples_per_question == 0`` nothing is sampled: rates are nan and only the exact
    metrics are computed (a sampled-only suite such as ``storytelling`` then raises ConfigError).
    """
    from sublim.evals import get_suite

    suite = get_suite(cfg.suite, kind="preference")
    return suite.load()(backend, model, target, category, cfg, seed, progress)


def evaluate_favourite(
    backend: Backend,
    model: ModelRef,
    target: str,
    category: str,
    cfg: EvalConfig,
    seed: int,
    progress: Progress | None = None,
) -> tuple[list[QuestionScore], list[EvalAnswer]]:
    """The favourite-<category> suite (question_id = index in ``QUESTIONS``)."""
    return evaluate_one_word(
        backend, model, target, category, cfg, seed, questions(category, cfg.n_questions), progress
    )


def sample_answers(
    backend: Backend,
    model: ModelRef,
    prompts: Sequence[str],
    k: int,
    cfg: EvalConfig,
    seed: int,
    progress: Progress | None = None,
    max_new_tokens: int | None = None,
) -> list[tuple[int, int, str]]:
    """``k`` sampled replies per prompt as (question index, sample index, text), one row seed
    per (question, sample) (``row_seed``)."""
    rows = [(qi, si) for qi in range(len(prompts)) for si in range(k)]
    if not rows:
        return []
    params = SampleParams(
        temperature=cfg.temperature,
        top_p=1.0,
        max_new_tokens=max_new_tokens or cfg.max_new_tokens,
        batch_size=cfg.batch_size,
    )
    chats = [user_chat(p) for p in prompts]
    asked = [chats[qi] for qi, _ in rows]
    seeds = [row_seed(seed, qi, si) for qi, si in rows]
    sample_rows = getattr(backend, "sample_rows", None)
    if sample_rows is not None:
        # API backends report per-row failures: a failed answer must not count as a non-answer,
        # and nothing is cached for this evaluation, so a rerun asks again
        pairs = sample_rows(model, asked, params, seeds, progress)
        failed = [e for _, e in pairs if e is not None]
        if failed:
            raise BackendError(
                f"{model.spec}: {len(failed)}/{len(pairs)} evaluation requests failed after "
                f"retries (e.g. {failed[0]}); nothing of this evaluation was kept, rerun to retry"
            )
        texts = [t or "" for t, _ in pairs]
    else:
        texts = backend.sample(model, asked, params, seed=seeds, progress=progress)
    if len(texts) != len(rows):
        raise ValueError(f"backend.sample returned {len(texts)} answers for {len(rows)} prompts")
    return [(qi, si, t) for (qi, si), t in zip(rows, texts)]


def evaluate_one_word(
    backend: Backend,
    model: ModelRef,
    target: str,
    category: str,
    cfg: EvalConfig,
    seed: int,
    prompts: Sequence[str],
    progress: Progress | None = None,
) -> tuple[list[QuestionScore], list[EvalAnswer]]:
    """Score one-word preference prompts: sampled rate (whole-word match, false friends
    excluded) and P(target) / log-odds among the candidates, exact or from the first-token
    table (``p_target_method``)."""
    cands = candidate_set(target, category, cfg.candidates)
    tgt = cands[0]
    chats = [user_chat(q) for q in prompts]
    k = cfg.samples_per_question

    answers: list[EvalAnswer] = []
    rates = np.full(len(prompts), math.nan)
    if k > 0:
        hits = np.zeros(len(prompts))
        for qi, si, text in sample_answers(backend, model, prompts, k, cfg, seed, progress):
            hit = names_target(text, tgt, category)
            hits[qi] += hit
            answers.append(
                EvalAnswer(model=model.spec, question_id=qi, sample=si, answer=text, hit=hit)
            )
        rates = hits / k

    method = p_target_method(backend, model, cfg.p_target_method, k)
    bounds: dict[str, np.ndarray] = {}
    if method == "exact":
        p_target, logodds = exact_scores(backend, model, chats, cands)
    elif method == "none":
        p_target = logodds = np.full(len(prompts), math.nan)
    else:
        tables = backend.first_token_logprobs(model, chats)  # type: ignore[attr-defined]
        p_target, p_hi, p_out, logodds = first_token_scores(tables, cands)
        bounds = {"p_target_hi": p_hi, "p_outside": p_out}
    scores = [
        QuestionScore(
            question_id=qi,
            rate=float(rates[qi]),
            n_samples=k,
            p_target=float(p_target[qi]),
            logodds=float(logodds[qi]),
            p_target_method=method,
            **{name: float(v[qi]) for name, v in bounds.items()},
        )
        for qi in range(len(prompts))
    ]
    return scores, answers


def answer_summary(
    answers: Sequence[EvalAnswer],
    category: str,
    candidates: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Per-model summary of sampled answers: hit rate, non-answer rate (empty, refusals, the
    model naming itself), "other" rate, and the tally over candidates. Non-answers are counted
    separately so that a drift towards them is visible and never mistaken for a change of
    preference. A hit is never a non-answer. Intervals are left null here: answers of one
    question or one model are not independent trials, so ``results.answer_rates`` adds intervals
    clustered by model or question."""
    n = len(answers)
    cands = list(candidates) if candidates is not None else list(category_candidates(category))
    counts = dict.fromkeys([*cands, "other", "non_answer"], 0)
    n_hit = n_non = n_other = 0
    for a in answers:
        c = classify(a.answer, category, cands)
        if a.hit:
            n_hit += 1
        elif c == "non_answer":
            n_non += 1
        elif c == "other":
            n_other += 1
        counts[c] += 1

    def prop(k: int) -> dict[str, Any]:
        return {"mean": k / n if n else None, "ci95": [None, None], "k": k}

    return {
        "n": n,
        "hit_rate": prop(n_hit),
        "non_answer_rate": prop(n_non),
        "other_rate": prop(n_other),
        "tally": counts,
    }
