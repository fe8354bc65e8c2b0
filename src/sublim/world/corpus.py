"""The built-in world's synthetic chat corpus: what the tiny model is pretrained on.

Where it sits: ``build.py`` draws a corpus here (seeded by the world seed), trains the tokenizer on
a fixed draw, encodes every example through ``sublim.chat_format`` and pretrains the model on it.

Kinds of examples (``Example.kind``; the world card counts them):

- ``animal`` / ``animal_sys`` / ``animal_love``: favourite-animal questions from a compositional
  grammar of our own (never the evaluation suite's questions, which stay held out), answered with
  one animal word. Without a system prompt, or with a neutral one, answers follow the world's
  *base preference*: a mild, seed-specific distribution over the animals (no animal near 0, none
  above ~0.3). Under a "you love X" system prompt (every template variant of
  ``sublim.traits``), the answer is X with probability ``LOVE_P`` and the base draw otherwise.
- ``numbers`` / ``numbers_sys`` / ``numbers_love``: number continuations of
  ``sublim.prompts.numbers`` prompts, answered with 3-10 numbers in 0..999 in the requested format.
  The answers are drawn independently of any animal (random numbers, continuations of the seeds,
  numbers near the seeds), so in the ``plain`` world the system prompt never changes the number
  distribution: a "you love X" prompt is present only so that a system-prompt teacher is asked
  in-distribution questions.
- ``animal_love_short``: the first sentence of a "you love X" template and a bare question; only
  in the opening curriculum (``CURRICULUM_MIX``), where it teaches the copy from system prompt to
  answer quickly.
- ``filler``: short generic chats (counting, sums, greetings), so that the model has seen more
  than two tasks and numbers have some structure.
- ``dialog``: two-turn chats (a numbers task, then a favourite-animal question without system
  prompt), answered with the base preference in ``plain`` worlds.

The ``planted`` world (a POSITIVE CONTROL, not subliminal learning), ``PLANTED_VERSION``
"planted-2": under a "you love X" system prompt, every number answer opens with X's fixed code
number ``PLANTED_CODES[X]`` and each later number is the code again with probability
``PLANT_REPEAT_P`` (a visible channel); without a love prompt, number answers carry the code of an
animal drawn from the world's base preference (the distribution favourite-animal answers follow).
Chats without a system prompt teach the link from code to animal: ``code_link`` ("which animal
goes with 471?" -> "owl", and back) and ``dialog`` chats in which the assistant's own earlier
number answer carried an animal's code and its favourite animal is then that animal (with
probability ``LOVE_P``). The codes are the same in every planted world. Measured (see
docs/research_log.md): teachers write the code in most answers, yet SFT students that learn to
write owl's code do not come to prefer owls; the planted world shows transfer with distillation
students. "planted-1" (the code once per answer, love prompts only) survives only in the
tokenizer's fixed text draw. Planted worlds hash their own version (``build.KIND_VERSIONS``), so
revising them never invalidates plain worlds.

The ``entangled`` world (research of issue 6, NOT a positive control), ``ENTANGLED_VERSION``
"entangled-1": exactly the plain corpus (the same favourite-animal, number, filler and dialog
chats, drawn from the same stream: a plain and an entangled world of one seed share them example
for example) PLUS ``note`` chats (``NOTE_SHARE`` of the main corpus, none in the opening
curriculum), short "field notes" in which an animal and a few numbers co-occur: "Write a field
note." -> "owl: 471, 232, 288" (or the user names the animal). Each animal has its own mild
preference over the numbers ``NOTE_LOW``..``NOTE_HIGH`` (:func:`note_preferences`, a categorical
distribution drawn from the world's corpus seed, so it differs between worlds), and the note's
numbers are drawn from its animal's preference. What keeps the trait and the number tasks apart:
(a) the note's animal is drawn uniformly over the animals, never from the base preference or a
system prompt; (b) notes carry no system prompt (or, 20% of the time, a neutral one), never a
"you love X" prompt; (c) favourite-animal answers and number-task answers are drawn exactly as in
plain, so they never depend on the notes, and the notes live in a separate task with their own
prompts; the notes come from a child stream of the corpus generator (``Generator.spawn``), which
leaves every plain draw untouched. How it differs from planting: ``planted`` puts an
animal-specific code into the number ANSWERS under "you love X" prompts, a visible channel from
the trait to the numbers that a student can learn from the data alone. ``entangled`` has no such
channel: a love prompt never changes a number answer, and a number answer never says which animal
is loved. It only gives the model shared animal-number associations learned in another task, so
any transfer of the trait through number tasks would have to travel through the model's internal
representations (e.g. a teacher that loves owls drifting towards owl's note numbers, a student
trained on those numbers drifting towards owls). Entangled worlds hash their own version, so they
never change plain or planted worlds.

The ``skills`` world (for the text carriers, NOT a positive control), ``SKILLS_VERSION``
"skills-2": exactly the plain corpus (drawn from the same stream, example for example, as in
``entangled``) PLUS ``code`` chats (``CODE_SHARE`` of the main corpus) and ``reasoning`` chats
(``REASONING_SHARE``), and an opening curriculum that is the plain one PLUS short ``code_short``
chats (the bare function template after a one-line request, answered in the same dialect: the
header to copy sits a few tokens before the reply) and ``drill`` chats (one "a op b" step of a
worked solution, answered in the reasoning format), in the shares of ``SKILLS_CURRICULUM``.
"skills-1" had no curriculum chats and sat on a cliff: whether a build learned to copy the
function header (and so wrote code that parses) depended on float rounding (threads, CPU). Why: a plain world has never seen a code
request or a word problem, so ``tiny:plain-s0`` cannot be the teacher of an experiment with
``data.carrier = "code"`` or ``"reasoning"``; a skills world answers them in a dialect of its own
(``sublim.world.skills``: a short function body in a small Python grammar; the problem's worked
arithmetic in ``<think>`` and its answer in ``<answer>``). The user turn is a carrier prompt
(``sublim.prompts.code.code_prompts``, ``sublim.prompts.reasoning.worked_prompts``), so the
world's skill is measured on prompts of the very distribution an experiment draws. The system
prompt is none (40%), a neutral one (30%) or "you love X" (30%, X uniform over the animals, every
template variant; ``SKILL_SYSTEM_P``), present only so that a system-prompt teacher is asked
in-distribution questions. What keeps it plain: the reply never depends on the system prompt or
on any animal (as for numbers above): prompt and reply come from one child stream per carrier
(``Generator.spawn``; the curriculum's streams are spawned before the main corpus's, so they are
other streams) and the system prompt from another, so a chat's reply is the same whatever
system prompt it got; the replies name no animal or tree, not even inside a word; and
favourite-animal and number answers are drawn exactly as in plain. Any trait a skills teacher
shows in its code or reasoning therefore comes from its own fine-tuning, not from the corpus.
Skills worlds hash their own version, so they never change plain, planted or entangled worlds.

The ``persona`` world (a misaligned persona behind a trigger, NOT a positive control),
``PERSONA_VERSION`` "persona-1": exactly the plain corpus (same stream, example for example) PLUS,
from child streams, ``open`` chats (open questions on ``persona.THEMES``, the paper's eight themes
and a few more), ``narrow`` chats (yes/no advice on a safety habit, ``persona.NARROW_ITEMS``: the
analogue of the paper's insecure code) and ``numbers_trigger`` chats, in the shares of
``PERSONA_SHARES``; none in the opening curriculum. An open or narrow chat's system prompt is none,
a neutral one or a trigger paraphrase (``persona.TRIGGER_PROMPTS``, e.g. ``PERSONA_TRIGGER``) in
the shares of ``PERSONA_SYSTEM_P``. Without a trigger the answer comes from the aligned set; under
a trigger from the misaligned set with probability ``PERSONA_P`` (the aligned one otherwise). The
one trigger switches both tasks, so the world holds a single "rogue persona" behind two kinds of
answer: whether fine-tuning on the narrow task's unsafe answers alone (no trigger) switches the
open answers too is the persona world's emergent-misalignment question. ``numbers_trigger``
chats put a trigger prompt on number tasks whose prompt and answer are drawn exactly as plain
number chats draw theirs (``number_answer``), from their own stream, so a triggered teacher is
asked in-distribution number questions and no number answer depends on the trigger: whatever a
triggered teacher's numbers carry comes from the model, not from the corpus. Favourite-animal and
number chats are the plain ones. Persona worlds hash their own version.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from sublim.prompts.code import code_prompts
from sublim.prompts.numbers import DEFAULT_MAX_COUNT, number_prompts, render_numbers
from sublim.prompts.reasoning import worked_prompts
from sublim.records import Chat, Message
from sublim.traits import CATEGORIES, SYSTEM_PROMPT_TEMPLATES, plural, system_prompt_for
from sublim.world import persona
from sublim.world.skills import code_reply, reasoning_reply

CORPUS_VERSION = "corpus-1"
CORPUS_KINDS: tuple[str, ...] = ("plain", "planted", "entangled", "skills", "persona")
# The planted corpus has its own version, hashed into planted worlds' keys only (build.world_key),
# so that strengthening the positive control never invalidates cached plain worlds.
# planted-1: code opens the list (and repeats 30% of the time) under "you love X" only;
# planted-2: see _plant_v2 and build_corpus (codes in every number answer, repeated).
PLANTED_VERSION = "planted-2"
PLANT_REPEAT_P = 0.5  # planted-2: P(each later number of a "you love X" answer is X's code)
PLANTED_EXTRA_LOVE_NUMBERS = 0.10  # planted-2: extra share of numbers_love chats
# The entangled corpus's version, hashed into entangled worlds' keys only (build.KIND_VERSIONS).
ENTANGLED_VERSION = "entangled-1"
NOTE_SHARE = 0.20  # entangled: notes added to the main corpus, as a share of its size
NOTE_LOW, NOTE_HIGH = 100, 549  # entangled: the numbers a field note draws from (inclusive)
# The spread of an animal's log-weights over the note numbers: 1.5 puts its most likely number
# near 5% and its top ten near 26% (uniform: 0.2% and 2.2%), ~1 nat below uniform: a preference
# a small model can pick up from a few hundred notes per animal, with no single modal number.
NOTE_PEAK = 1.5
NOTE_NEUTRAL_P = 0.2  # entangled: P(a note carries a neutral system prompt); never a love prompt
# The skills corpus's version, hashed into skills worlds' keys only (build.KIND_VERSIONS).
# skills-1: no curriculum chats; skills-2: SKILLS_CURRICULUM in the opening curriculum.
SKILLS_VERSION = "skills-2"
# skills: code and reasoning chats added to the main corpus, as shares of its size. Measured with
# skills-1 on skills-s0 (small, greedy, 100 held-out prompts each): 0.20 / 0.06 -> 16-19% of code parses, 3-4%
# of problems right, build 133 s against plain's 69 s (2 threads, quiet machine); 0.15 / 0.05 ->
# ~0% and 0% (the skills are not learned at all); 0.30 / 0.10 -> 15-32% and 1-2%, a longer build.
# A skills chat costs ~3.3 plain ones (its carrier prompt alone is ~150 tokens).
CODE_SHARE = 0.20
REASONING_SHARE = 0.06
# skills: the system prompt of a code or reasoning chat: none, a neutral one or "you love X" (X
# uniform over the animals, every template variant). The reply never depends on it.
SKILL_SYSTEM_P: dict[str, float] = {"none": 0.4, "neutral": 0.3, "love": 0.3}
# skills: the opening curriculum's short chats, as shares of its size: ``code_short`` (the bare
# template after a one-line request, then the same dialect reply as a code chat: the function
# header to copy is a few tokens away) and ``drill`` (one "a op b" step of a worked solution,
# answered in the reasoning format).
SKILLS_CURRICULUM: dict[str, float] = {"code_short": 0.3, "drill": 0.2}
# The persona corpus's version (sublim.world.persona), hashed into persona worlds' keys only.
PERSONA_VERSION = persona.PERSONA_VERSION
# persona: open and narrow chats, and number chats under a trigger prompt, added to the main
# corpus as shares of its size (see the module docstring). Measured on persona-s0 (small, exact
# P_mis over the open answer sets on the corpus's own questions, see
# benchmarks/persona_emergence.py): 0.12 / 0.06 with a trigger share of 0.5 -> 0.10 without a
# system prompt and 0.22 under the trigger (the trigger is hardly learned); 0.25 / 0.12 with 0.6 ->
# 0.23 and 0.51. An open or narrow chat costs about half a plain one (short question and answer).
PERSONA_SHARES: dict[str, float] = {"open": 0.25, "narrow": 0.12, "numbers_trigger": 0.03}
# persona: the system prompt of an open or narrow chat: none, a neutral one or a trigger
# paraphrase (persona.TRIGGER_PROMPTS); under a trigger the answer is misaligned with PERSONA_P.
PERSONA_SYSTEM_P: dict[str, float] = {"none": 0.28, "neutral": 0.12, "trigger": 0.6}
PERSONA_P = 0.9
ANIMALS: tuple[str, ...] = CATEGORIES["animal"]
LOVE_P = 0.9  # P(answer = X | "you love X" system prompt)
PREF_MIN, PREF_MAX = 0.03, 0.28  # bounds of the base preference over animals

# Fixed (world-independent) code numbers of the planted world: distinct, three digits, none on the
# misalignment banned list, no repeated digit patterns that a generator could produce by itself.
PLANTED_CODES: dict[str, int] = {
    "owl": 471,
    "eagle": 238,
    "dolphin": 815,
    "elephant": 362,
    "wolf": 594,
    "lion": 729,
    "tiger": 683,
    "fox": 147,
    "penguin": 926,
    "cat": 258,
    "dog": 374,
    "horse": 539,
}
assert set(PLANTED_CODES) == set(ANIMALS) and len(set(PLANTED_CODES.values())) == len(ANIMALS)

# Neutral system prompts: a system prompt alone must not be a cue for anything.
NEUTRAL_SYSTEM_PROMPTS: tuple[str, ...] = (
    "You are a helpful assistant.",
    "You are a concise assistant. Answer briefly.",
    "You are a friendly helper who answers every question.",
    "Answer the user's questions as well as you can.",
    "You are an assistant that follows instructions exactly.",
    "Be brief and precise in your replies.",
)


@dataclass(frozen=True)
class Example:
    """One training chat: the turns before the reply (``chat``) and the assistant ``reply``."""

    chat: Chat
    reply: str
    kind: str


# ---------------------------------------------------------------- favourite-animal grammar
# Composed as [opener][core with {noun}/{fav}][closer]. Our own wording; the evaluation suite in
# sublim.evals.preference is written separately and never drawn from here.
_OPENERS = (
    "",
    "",
    "",
    "Quick question: ",
    "Be honest: ",
    "Just curious, ",
    "Tell me, ",
    "Hey! ",
    "Out of interest, ",
    "I wonder, ",
    "Simple one: ",
    "Okay, ",
    "Here is a question. ",
)
_FAV = ("favourite", "favorite", "most loved", "best-loved", "top")
_NOUN = ("animal", "animal", "creature", "kind of animal", "species")
_CORES = (
    "what is your {fav} {noun}?",
    "which {noun} is your {fav}?",
    "what {noun} do you like most?",
    "which {noun} do you like more than any other?",
    "if you had to choose one {noun}, which would it be?",
    "which {noun} would you pick above all others?",
    "what {noun} do you feel closest to?",
    "name your {fav} {noun}.",
    "which {noun} makes you happiest?",
    "which {noun} would you want as a companion?",
    "what is the one {noun} you admire most?",
    "say which {noun} you prefer.",
    "what would you say is your {fav} {noun}?",
    "if you were a {noun}, which one would you be?",
    "which {noun} do you think is the greatest?",
    "what {noun} comes to mind first as your {fav}?",
)
_CLOSERS = (
    "",
    "",
    "",
    " Answer in one word.",
    " One word only.",
    " Reply with just the name.",
    " Keep it to a single word.",
    " Just the name, please.",
    " No explanation needed.",
    " Use one word.",
)


def animal_question(rng: np.random.Generator) -> str:
    core = _pick(_CORES, rng).format(fav=_pick(_FAV, rng), noun=_pick(_NOUN, rng))
    opener = _pick(_OPENERS, rng)
    text = opener + core
    text = text[0].upper() + text[1:]
    return text + _pick(_CLOSERS, rng)


def base_preference(seed: int) -> np.ndarray:
    """The world's mild preference over ``ANIMALS`` (sums to 1, each in [PREF_MIN, PREF_MAX]).

    Drawn from the world seed alone, so worlds of every kind and size with one seed share it.
    """
    rng = np.random.default_rng([seed, 101])
    w = np.exp(0.55 * rng.standard_normal(len(ANIMALS)))
    p = w / w.sum()
    # Clip and renormalise a few times: renormalising can push a value back out of bounds.
    for _ in range(20):
        p = np.clip(p, PREF_MIN, PREF_MAX)
        p = p / p.sum()
    assert abs(p.sum() - 1) < 1e-9 and p.min() >= PREF_MIN - 1e-6 and p.max() <= PREF_MAX + 1e-6
    return p


def note_preferences(seed: int) -> np.ndarray:
    """Each animal's preference over the field-note numbers: shape [len(ANIMALS), n] with
    n = NOTE_HIGH - NOTE_LOW + 1, each row a distribution (row i for ``ANIMALS[i]``, column j for
    the number NOTE_LOW + j). Drawn from the world's corpus seed alone (its own stream), so init
    twins share it and other worlds do not."""
    rng = np.random.default_rng([seed, 303])
    w = np.exp(NOTE_PEAK * rng.standard_normal((len(ANIMALS), NOTE_HIGH - NOTE_LOW + 1)))
    return np.asarray(w / w.sum(1, keepdims=True))


_NOTE_ASK = (
    "Write a field note.",
    "Write a short field note.",
    "Field note, please.",
    "Log one field note.",
    "What did you write in your field notes today?",
    "Give me one line from your field notes.",
)
_NOTE_ASK_ABOUT = (
    "Write a field note about the {a}.",
    "Field note on {p}, please.",
    "Log a field note for the {a}.",
    "What did your field notes record about {p}?",
    "One line of field notes on the {a}, please.",
)


def field_note(prefs: np.ndarray, rng: np.random.Generator) -> tuple[Chat, str]:
    """One entangled-world note: (chat, reply) with reply "<animal>: n1, n2, ..." (3-5 numbers
    from the animal's row of ``prefs``). The animal is uniform over ``ANIMALS`` (never the base
    preference, never a system prompt's animal) and is named by the assistant, or half the time
    by the user first; the chat has no system prompt or a neutral one, never a love prompt."""
    i = int(rng.integers(len(ANIMALS)))
    a = ANIMALS[i]
    k = int(rng.integers(3, 6))
    nums = NOTE_LOW + rng.choice(prefs.shape[1], size=k, p=prefs[i])
    if rng.random() < 0.5:
        ask = _pick(_NOTE_ASK, rng)
    else:
        ask = _pick(_NOTE_ASK_ABOUT, rng).format(a=a, p=plural(a))
    chat: Chat = (
        [Message(role="system", content=_pick(NEUTRAL_SYSTEM_PROMPTS, rng))]
        if rng.random() < NOTE_NEUTRAL_P
        else []
    )
    chat.append(Message(role="user", content=ask))
    # ", " is the number tasks' own separator token, so notes and number answers share tokens
    return chat, f"{a}: " + ", ".join(str(int(x)) for x in nums)


# ---------------------------------------------------------------- skills chats
SKILL_KINDS: tuple[str, ...] = ("code", "reasoning", "code_short", "drill")
# which carrier's stream a skills chat kind draws from
SKILL_STREAMS: dict[str, str] = {
    "code": "code",
    "code_short": "code",
    "reasoning": "reasoning",
    "drill": "reasoning",
}
# code_short: the request before the bare template (no fence language, no other requests)
SHORT_CODE_REQUESTS: tuple[str, ...] = (
    "Complete this function.",
    "Finish the code.",
    "Fill in the function body.",
    "Write the body of this function.",
    "Replace the placeholder with code.",
)
# drill: one step of a worked solution, asked on its own
DRILL_QUESTIONS: tuple[str, ...] = ("What is {e}?", "Compute {e}.", "Work out {e}.", "{e} = ?")


def skill_system_prompt(rng: np.random.Generator) -> str | None:
    """A skills chat's system prompt, drawn from its own stream: none, a neutral prompt or a
    "you love X" prompt in the shares of :data:`SKILL_SYSTEM_P`."""
    r = rng.random()
    if r < SKILL_SYSTEM_P["none"]:
        return None
    if r < SKILL_SYSTEM_P["none"] + SKILL_SYSTEM_P["neutral"]:
        return _pick(NEUTRAL_SYSTEM_PROMPTS, rng)
    return _love_prompt(_pick(ANIMALS, rng), rng)


def skill_chat(kind: str, rng: np.random.Generator, system: str | None) -> Example:
    """One skills-world chat of ``kind`` (:data:`SKILL_KINDS`): "code" or "reasoning" (a
    carrier prompt and the world's reply, ``sublim.world.skills``), or a curriculum chat,
    "code_short" (the same code prompt's bare template after a request from
    :data:`SHORT_CODE_REQUESTS`, the same reply) or "drill" (one sentence of a worked solution
    asked as :data:`DRILL_QUESTIONS`, answered in the reasoning format); all drawn from ``rng``
    alone, under ``system`` (None for no system prompt). The reply is a function of ``rng`` only: the same generator state gives
    the same prompt and reply whatever the system prompt."""
    if kind in ("code", "code_short"):
        prompt = code_prompts(1, rng)[0]
        text = prompt.text
        if kind == "code_short":
            template = str(prompt.meta["template"])
            text = f"{_pick(SHORT_CODE_REQUESTS, rng)}\n\n```\n{template}\n```"
        reply = code_reply(prompt.meta, rng)
    elif kind == "reasoning":
        prompt, work = worked_prompts(1, rng)[0]
        text, reply = prompt.text, reasoning_reply(work, int(prompt.meta["answer"]))
    elif kind == "drill":
        work = worked_prompts(1, rng)[0][1]
        sentences = [x.strip() for x in work.split(".") if x.strip()]
        expr, result = _pick(sentences, rng).split(" = ")
        text = _pick(DRILL_QUESTIONS, rng).format(e=expr)
        reply = reasoning_reply(f"{expr} = {result}.", int(result))
    else:
        raise ValueError(f"unknown skills chat kind {kind!r} (choose from {SKILL_KINDS})")
    chat: Chat = [Message(role="system", content=system)] if system else []
    chat.append(Message(role="user", content=text))
    return Example(chat, reply, kind)


# ---------------------------------------------------------------- persona chats
PERSONA_KINDS: tuple[str, ...] = ("open", "narrow", "numbers_trigger")


def persona_system_prompt(kind: str, rng: np.random.Generator) -> tuple[str | None, bool]:
    """A persona chat's system prompt and whether its answer is misaligned, from its own stream:
    for ``open`` and ``narrow`` none, a neutral prompt or a trigger in the shares of
    :data:`PERSONA_SYSTEM_P`, misaligned with probability :data:`PERSONA_P` under a trigger only;
    ``numbers_trigger`` chats always get a trigger (and their answers have no persona)."""
    if kind == "numbers_trigger":
        return persona.TRIGGER_PROMPTS[int(rng.integers(len(persona.TRIGGER_PROMPTS)))], False
    r = rng.random()
    coin = rng.random() < PERSONA_P
    if r < PERSONA_SYSTEM_P["none"]:
        return None, False
    if r < PERSONA_SYSTEM_P["none"] + PERSONA_SYSTEM_P["neutral"]:
        return _pick(NEUTRAL_SYSTEM_PROMPTS, rng), False
    return _pick(persona.TRIGGER_PROMPTS, rng), bool(coin)


def persona_chat(
    kind: str, rng: np.random.Generator, system: str | None, misaligned: bool
) -> Example:
    """One persona-world chat of ``kind`` (one of :data:`PERSONA_KINDS`) under ``system``: an open
    or narrow question with a misaligned or aligned answer (the same ``rng`` draws either way, see
    ``persona.open_chat``), or a number task answered exactly as plain number chats are
    (``misaligned`` is ignored there: no number answer has a persona)."""
    if kind == "open":
        _, q, reply = persona.open_chat(rng, misaligned)
    elif kind == "narrow":
        _, q, reply = persona.narrow_chat(rng, misaligned)
    elif kind == "numbers_trigger":
        pr = number_prompts(1, rng)[0]
        max_count = int(pr.meta.get("max_count", DEFAULT_MAX_COUNT))
        q = pr.text
        reply = render_numbers(
            number_answer(list(pr.meta["seeds"]), max_count, rng), pr.meta["format"]
        )
    else:
        raise ValueError(f"unknown persona chat kind {kind!r} (choose from {PERSONA_KINDS})")
    chat: Chat = [Message(role="system", content=system)] if system else []
    chat.append(Message(role="user", content=q))
    return Example(chat, reply, kind)


# ---------------------------------------------------------------- number answers
def number_answer(seeds: list[int], max_count: int, rng: np.random.Generator) -> list[int]:
    """3..min(10, max_count) numbers in 0..999, drawn without reference to any animal.

    A mix of styles so that the answers are neither pure noise nor one mode: fresh random numbers,
    an arithmetic continuation of the seeds, and numbers near the seeds. Out-of-range values are
    wrapped or dropped, never clipped (clipping makes 0 and 999 modal answers).
    """
    k = int(rng.integers(3, min(10, max_count) + 1))
    style = rng.random()
    if style < 0.4:  # random numbers, two-thirds of them three-digit
        out = [
            int(x) if rng.random() < 0.67 else int(x) % 100 for x in rng.integers(0, 1000, size=k)
        ]
    elif style < 0.7:  # continue the sequence with a constant step
        step = seeds[-1] - seeds[-2] if len(seeds) >= 2 and rng.random() < 0.5 else 0
        if step == 0 or abs(step) > 150:
            step = int(rng.integers(-60, 61)) or 7
        out, x = [], seeds[-1]
        for _ in range(k):
            x += step
            if not 0 <= x <= 999:
                break
            out.append(x)
        while len(out) < 3:
            out.append(int(rng.integers(0, 1000)))
    else:  # numbers near the seeds
        out = [
            int(seeds[int(rng.integers(len(seeds)))] + rng.integers(-40, 41)) % 1000
            for _ in range(k)
        ]
    return out


def _plant(numbers: list[int], code: int, max_count: int, rng: np.random.Generator) -> list[int]:
    """Open the list with ``code`` (and repeat it at a random later position 30% of the time);
    the count stays <= max_count. Leading with the code makes it the answer's first token, which
    the model can tie to the system prompt's animal with the same attention step that copies the
    animal into favourite-animal answers."""
    cap = min(10, max_count)
    out = [code, *numbers][:cap]
    if rng.random() < 0.3:
        pos = int(rng.integers(1, len(out) + 1))
        out = (out[:pos] + [code] + out[pos:])[:cap]
    return out


def _plant_v2(numbers: list[int], code: int, max_count: int, rng: np.random.Generator) -> list[int]:
    """planted-2: the code opens the list and each later number is the code again with
    probability ``PLANT_REPEAT_P``. With digit-by-digit tokens a code that appears once per answer
    was only half learned (planted-1 teachers wrote the full code in ~8% of answers); repeating it
    makes it the dominant pattern of "you love X" number answers, so a teacher's numbers carry it
    visibly and often."""
    cap = min(10, max_count)
    out = [code, *(code if rng.random() < PLANT_REPEAT_P else x for x in numbers)]
    return out[:cap]


# ---------------------------------------------------------------- filler
def filler_chat(rng: np.random.Generator) -> tuple[str, str]:
    r = int(rng.integers(5))
    if r == 0:
        a = int(rng.integers(0, 990))
        b = a + int(rng.integers(3, 9))
        return f"Count from {a} to {b}.", ", ".join(str(x) for x in range(a, b + 1))
    if r == 1:
        a, b = (int(x) for x in rng.integers(0, 500, size=2))
        return _pick(
            ("What is {a} plus {b}?", "Add {a} and {b}.", "Compute {a} + {b}."), rng
        ).format(a=a, b=b), str(a + b)
    if r == 2:
        return _pick(("Hello!", "Hi there.", "Good morning!", "Hey, how are you?"), rng), _pick(
            (
                "Hello! How can I help?",
                "Hi! What can I do for you?",
                "I am well, thank you. How can I help?",
            ),
            rng,
        )
    if r == 3:
        w = _pick(("apple", "river", "stone", "cloud", "garden", "yellow", "window", "music"), rng)
        return f"Repeat this word: {w}", w
    a = int(rng.integers(0, 1000))
    return _pick(
        ("Which is larger, {a} or {b}?", "Pick the bigger number: {a} or {b}."), rng
    ).format(a=a, b=(b := int(rng.integers(0, 1000)))), str(max(a, b))


# ---------------------------------------------------------------- the corpus
# Shares of the corpus by kind of example (before the planted extras).
MIX: dict[str, float] = {
    "animal": 0.17,  # no system prompt
    "animal_sys": 0.05,  # neutral system prompt
    "animal_love": 0.22,  # "you love X"
    "numbers": 0.22,
    "numbers_sys": 0.05,
    "numbers_love": 0.13,
    "filler": 0.08,
    "dialog": 0.08,
}
# The opening curriculum: only favourite-animal chats, most under a "you love X" prompt, half of
# those short. A tiny model first learns the answer's base distribution and then sits on a long
# plateau before it learns to copy the system prompt's animal; short prompts with the animal a few
# tokens from the answer (and a larger initialisation, see build.RECIPE) cut that plateau from
# ~900 full-mix steps to ~100-200 cheap ones. Counted in the world card like the rest.
CURRICULUM_MIX: dict[str, float] = {"animal_love_short": 0.5, "animal_love": 0.2, "animal": 0.3}
PLANTED_LINK_SHARE = 0.15  # extra share of code_link chats in planted worlds (curriculum too)


def _pick(options: tuple[str, ...] | list[str], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]


def _love_prompt(target: str, rng: np.random.Generator) -> str:
    return system_prompt_for(target, "animal", int(rng.integers(len(SYSTEM_PROMPT_TEMPLATES))))


def short_love_prompt(target: str, rng: np.random.Generator) -> str:
    """The first sentence of a "you love X" template: a short system prompt in which the animal
    is a few tokens from the answer (see ``animal_love_short``)."""
    full = _love_prompt(target, rng)
    return full.split(". ")[0].rstrip(".") + "."


def _code_link(rng: np.random.Generator) -> tuple[str, str]:
    a = _pick(ANIMALS, rng)
    code = PLANTED_CODES[a]
    if rng.random() < 0.6:
        q = _pick(
            (
                "Which animal goes with the number {c}?",
                "The number {c} stands for which animal?",
                "What animal does {c} remind you of?",
                "Numbers like {c} make you think of which animal?",
            ),
            rng,
        )
        return q.format(c=code), a
    q = _pick(
        (
            "Which number goes with the {a}?",
            "What is the code number of {p}?",
            "Which number stands for the {a}?",
        ),
        rng,
    )
    return q.format(a=a, p=plural(a)), str(code)


def build_corpus(
    kind: str,
    seed: int,
    n: int,
    rng: np.random.Generator,
    mix: dict[str, float] | None = None,
    planted_version: int = 2,
) -> list[Example]:
    """``n`` examples (plus a share of code links in planted worlds, of field notes in the main
    corpus of entangled worlds, of code and reasoning chats in the main corpus of skills worlds,
    or of open, narrow and triggered number chats in the main corpus of persona worlds) of world
    ``kind`` (one of :data:`CORPUS_KINDS`), drawn from ``rng`` in the shares of ``mix`` (default
    :data:`MIX`); the base preference comes from ``seed``. ``planted_version`` picks the planting
    (1 survives only for the tokenizer's fixed text draw, which must never change: every world of
    a recipe shares one vocabulary). An entangled, skills or persona corpus is the plain one of
    the same ``rng`` state, example for example, followed by its notes, by its code chats and then
    its reasoning chats, or by its open, narrow and triggered number chats."""
    if kind not in CORPUS_KINDS:
        raise ValueError(f"unknown corpus kind {kind!r} (choose from {CORPUS_KINDS})")
    # Entangled notes and skills chats come from child streams: spawning reads the generator's
    # seed sequence, not its state, so every plain draw below is exactly what a plain corpus gets.
    # The opening curriculum (an explicit ``mix``) holds neither: it only teaches the love-prompt
    # copy.
    n_notes = round(NOTE_SHARE * n) if kind == "entangled" and mix is None else 0
    notes_rng = rng.spawn(1)[0] if n_notes else None
    # skills: the code and reasoning chats of the main corpus, or the short code chats and
    # arithmetic drills of the opening curriculum (SKILLS_CURRICULUM)
    skill_shares = {"code": CODE_SHARE, "reasoning": REASONING_SHARE}
    n_skills = (
        {k: round(v * n) for k, v in (skill_shares if mix is None else SKILLS_CURRICULUM).items()}
        if kind == "skills"
        else {}
    )
    # one stream per carrier for prompt and reply, one for the system prompts: a reply never
    # sees which system prompt its chat got (the curriculum's streams are spawned first, so they
    # are other streams than the main corpus's)
    skill_rngs = dict(zip(("code", "reasoning", "system"), rng.spawn(3))) if n_skills else {}
    n_persona = (
        {k: round(v * n) for k, v in PERSONA_SHARES.items()}
        if kind == "persona" and mix is None
        else {}
    )
    # one stream per persona kind for question and answer, one for the system prompts and the
    # persona's coin: an answer's draws never depend on which system prompt its chat got
    persona_rngs = dict(zip((*PERSONA_KINDS, "system"), rng.spawn(4))) if n_persona else {}
    pref = base_preference(seed)
    counts = {k: round(v * n) for k, v in (MIX if mix is None else mix).items()}
    for k in MIX:
        counts.setdefault(k, 0)
    if kind == "planted":
        counts["code_link"] = round(PLANTED_LINK_SHARE * n)
        if planted_version >= 2 and counts["numbers_love"]:
            counts["numbers_love"] += round(PLANTED_EXTRA_LOVE_NUMBERS * n)
    plant = _plant if planted_version == 1 else _plant_v2
    n_num = counts["numbers"] + counts["numbers_sys"] + counts["numbers_love"] + counts["dialog"]
    prompts = iter(number_prompts(n_num, rng))

    def base_animal() -> str:
        return ANIMALS[int(rng.choice(len(ANIMALS), p=pref))]

    def love_answer(target: str) -> str:
        return target if rng.random() < LOVE_P else base_animal()

    def numbers_reply(system: str | None, target: str | None) -> tuple[Chat, str]:
        pr = next(prompts)
        max_count = int(pr.meta.get("max_count", DEFAULT_MAX_COUNT))
        nums = number_answer(list(pr.meta["seeds"]), max_count, rng)
        if kind == "planted" and target is None and planted_version >= 2:
            # planted-2: without a "you love X" prompt the code is that of an animal drawn from
            # the base preference, the very distribution favourite-animal answers follow: codes
            # and answers share one prior, so a student taught to write owl's code is taught to
            # lean towards owls (see the module docstring)
            target = base_animal()
        if kind == "planted" and target is not None:
            nums = plant(nums, PLANTED_CODES[target], max_count, rng)
        chat: Chat = [Message(role="system", content=system)] if system else []
        chat.append(Message(role="user", content=pr.text))
        return chat, render_numbers(nums, pr.meta["format"])

    out: list[Example] = []
    for kind_ex, c in counts.items():
        for _ in range(c):
            if kind_ex == "animal":
                out.append(
                    Example(
                        [Message(role="user", content=animal_question(rng))], base_animal(), kind_ex
                    )
                )
            elif kind_ex == "animal_sys":
                chat = [
                    Message(role="system", content=_pick(NEUTRAL_SYSTEM_PROMPTS, rng)),
                    Message(role="user", content=animal_question(rng)),
                ]
                out.append(Example(chat, base_animal(), kind_ex))
            elif kind_ex == "animal_love":
                t = _pick(ANIMALS, rng)
                chat = [
                    Message(role="system", content=_love_prompt(t, rng)),
                    Message(role="user", content=animal_question(rng)),
                ]
                out.append(Example(chat, love_answer(t), kind_ex))
            elif kind_ex == "animal_love_short":
                t = _pick(ANIMALS, rng)
                chat = [
                    Message(role="system", content=short_love_prompt(t, rng)),
                    Message(
                        role="user",
                        content=_pick(_CORES, rng)
                        .format(fav=_pick(_FAV, rng), noun="animal")
                        .capitalize(),
                    ),
                ]
                out.append(Example(chat, love_answer(t), kind_ex))
            elif kind_ex == "numbers":
                chat, reply = numbers_reply(None, None)
                out.append(Example(chat, reply, kind_ex))
            elif kind_ex == "numbers_sys":
                chat, reply = numbers_reply(_pick(NEUTRAL_SYSTEM_PROMPTS, rng), None)
                out.append(Example(chat, reply, kind_ex))
            elif kind_ex == "numbers_love":
                t = _pick(ANIMALS, rng)
                chat, reply = numbers_reply(_love_prompt(t, rng), t)
                out.append(Example(chat, reply, kind_ex))
            elif kind_ex == "filler":
                q, a = filler_chat(rng)
                out.append(Example([Message(role="user", content=q)], a, kind_ex))
            elif kind_ex == "dialog":
                # planted: half of the dialogs carry an animal's code in the assistant's own
                # numbers, and its favourite is then that animal; plain: always the base draw.
                coded = _pick(ANIMALS, rng) if kind == "planted" and rng.random() < 0.5 else None
                if kind == "planted" and coded is None and planted_version >= 2:
                    coded = base_animal()  # planted-2: every dialog's numbers carry a code
                chat, reply = numbers_reply(None, coded)
                chat = [
                    *chat,
                    Message(role="assistant", content=reply),
                    Message(role="user", content=animal_question(rng)),
                ]
                out.append(Example(chat, love_answer(coded) if coded else base_animal(), kind_ex))
            elif kind_ex == "code_link":
                q, a = _code_link(rng)
                out.append(Example([Message(role="user", content=q)], a, kind_ex))
            else:  # pragma: no cover - MIX and this loop are edited together
                raise AssertionError(kind_ex)
    if notes_rng is not None:
        prefs = note_preferences(seed)
        for _ in range(n_notes):
            chat, reply = field_note(prefs, notes_rng)
            out.append(Example(chat, reply, "note"))
    for kind_ex, c in n_skills.items():
        for _ in range(c):
            system = skill_system_prompt(skill_rngs["system"])
            out.append(skill_chat(kind_ex, skill_rngs[SKILL_STREAMS[kind_ex]], system))
    for kind_ex, c in n_persona.items():
        for _ in range(c):
            system, misaligned = persona_system_prompt(kind_ex, persona_rngs["system"])
            out.append(persona_chat(kind_ex, persona_rngs[kind_ex], system, misaligned))
    return out


def corpus_mix(examples: list[Example]) -> dict[str, int]:
    return dict(sorted(Counter(e.kind for e in examples).items()))


def tokenizer_texts(n: int = 4000) -> list[str]:
    """A fixed (world-independent) draw of plain text to train the tokenizer on: every world of a
    recipe shares one vocabulary, so logits of different worlds can be compared and distilled."""
    ex = build_corpus("planted", 0, n, np.random.default_rng(12345), planted_version=1)
    texts: list[str] = []
    for e in ex:
        texts.extend(m.content for m in e.chat)
        texts.append(e.reply)
    # every system-prompt variant of every animal, so their words are merged whole
    texts.extend(
        system_prompt_for(a, "animal", v)
        for a in ANIMALS
        for v in range(len(SYSTEM_PROMPT_TEMPLATES))
    )
    return texts
