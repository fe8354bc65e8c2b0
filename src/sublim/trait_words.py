"""Does a text name the trait? One answer for every text carrier (code today, prose later).

Pipeline position: used by the "filter" stage of text carriers (:mod:`sublim.filters_code`) to
drop completions that spell out the trait ("owl", "Owls", ``owl_count``, ``"wolves"``). The
numbers filter keeps its own plain substring rule (a number list holds no identifiers), and the
evaluation's answer matching stays in :mod:`sublim.evals.preference`, whose ``word_forms`` is
the starting point of :func:`trait_forms` here, so both agree on what spells a candidate.

Two matching modes, chosen per filter:

- ``"identifier"`` (the default): the text is cut into words and identifiers, and identifiers
  further into their parts at underscores, hyphens, digits and case changes (``owl_count``,
  ``OwlNest``, ``OWL_MAX``, ``getOwls2``, ``owl-like``, ``OWLCount``). A trait form matches when
  it equals one part or a run of adjacent parts of one identifier (so ``OwL`` matches too). A
  form hidden inside a longer lower-case word does not match: ``bowl``, ``howl``,
  ``knowledge`` are not owls, ``catch`` and ``duplicate`` are not cats, ``million`` is no lion.
  The price: an identifier written in one lower-case run, ``countowls``, is not caught.
- ``"substring"``: the published rule. Any form occurring anywhere in the lower-cased text
  matches, so ``bowl`` counts as owl. Conservative: nothing that spells the trait gets through,
  and some innocent code is dropped with it.

Both modes look at the text twice, as written and after Unicode NFKC normalisation with
invisible format characters (zero-width spaces, soft hyphens) removed, and report a form found
in either. Python itself reads identifiers in NFKC form, so ``ｏｗｌ = 1`` binds ``owl``.
Case is folded with ``str.casefold``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import Literal

from sublim.evals.preference import word_forms

WordMode = Literal["identifier", "substring"]
WORD_MODES: tuple[str, ...] = ("identifier", "substring")

# Plurals that the regular -s / -es / -ies endings miss, and nouns whose plural is the singular.
# Small on purpose: the animals and plants a trait may name, plus common irregular nouns.
IRREGULAR_PLURALS: dict[str, tuple[str, ...]] = {
    "wolf": ("wolves",),
    "calf": ("calves",),
    "elf": ("elves",),
    "leaf": ("leaves",),
    "loaf": ("loaves",),
    "hoof": ("hooves", "hoofs"),
    "wife": ("wives",),
    "knife": ("knives",),
    "goose": ("geese",),
    "mouse": ("mice",),
    "louse": ("lice",),
    "ox": ("oxen",),
    "fox": ("foxes",),
    "octopus": ("octopuses", "octopi"),
    "platypus": ("platypuses", "platypi"),
    "hippopotamus": ("hippopotamuses", "hippopotami"),
    "cactus": ("cacti", "cactuses"),
    "fungus": ("fungi", "funguses"),
    "larva": ("larvae",),
    "antenna": ("antennae", "antennas"),
    "deer": ("deer",),
    "sheep": ("sheep",),
    "moose": ("moose",),
    "bison": ("bison",),
    "salmon": ("salmon",),
    "trout": ("trout",),
    "squid": ("squid", "squids"),
    "shrimp": ("shrimp", "shrimps"),
    "fish": ("fish", "fishes"),
    "buffalo": ("buffalo", "buffaloes", "buffalos"),
    "mosquito": ("mosquitoes", "mosquitos"),
    "child": ("children",),
    "person": ("people",),
    "man": ("men",),
    "woman": ("women",),
    "tooth": ("teeth",),
    "foot": ("feet",),
}
# The other direction, so that a trait given in the plural ("wolves") also catches "wolf".
_SINGULAR_OF: dict[str, str] = {
    p: s for s, plurals in IRREGULAR_PLURALS.items() for p in plurals if p != s
}

_VOWELS = frozenset("aeiou")
# Runs of letters and digits: underscores, hyphens, spaces and punctuation end an identifier part.
_ALNUM_RUN = re.compile(r"[^\W_]+")
# Inside a casefolded part: letter runs and digit runs (casefolding can introduce combining marks).
_LETTERS_OR_DIGITS = re.compile(r"[^\W\d_]+|\d+")


def _regular_plurals(word: str) -> set[str]:
    forms = {word + "s", word + "es"}
    if len(word) > 1 and word.endswith("y") and word[-2] not in _VOWELS:
        forms.add(word[:-1] + "ies")  # cherry -> cherries
    return forms


def _possessives(forms: set[str]) -> set[str]:
    return {f + "'" if f.endswith("s") else f + "'s" for f in forms} | {
        f + "'s" for f in forms if f.endswith("s")
    }


def _single_word_forms(word: str) -> set[str]:
    """Forms of one lower-case word: itself, plurals (regular and irregular), young (owlet)."""
    singular = _SINGULAR_OF.get(word, word)
    forms = {word} | set(word_forms(singular)) | _regular_plurals(singular)
    return forms | set(IRREGULAR_PLURALS.get(singular, ()))


@lru_cache(maxsize=4096)
def trait_forms(word: str) -> frozenset[str]:
    """The lower-case spellings that count as naming ``word``: the word, its regular plurals
    (-s, -es, -ies), irregular plurals (wolf -> wolves, goose -> geese, mouse -> mice, deer,
    sheep, fish...), the young of :data:`sublim.evals.preference.ALSO_COUNTS` (owlet), and the
    possessives of all of these ("owl's", "owls'"). A several-word trait ("sea lion") varies its
    last word. ``word`` given in an irregular plural also yields its singular."""
    words = word.casefold().split()
    if not words:
        raise ValueError(f"trait_forms needs a non-empty word, got {word!r}")
    *head, last = words
    lasts = _single_word_forms(last)
    lasts |= _possessives(lasts)
    prefix = " ".join(head)
    return frozenset(f"{prefix} {f}" if prefix else f for f in lasts)


def _case_pieces(run: str) -> Iterator[str]:
    """Cut a run of letters and digits at case changes and digit boundaries: ``getOwls2`` ->
    get, Owls, 2; ``OWLCount`` -> OWL, Count; ``HTTPServer`` -> HTTP, Server."""
    start = 0
    for i in range(1, len(run)):
        prev, cur = run[i - 1], run[i]
        nxt = run[i + 1] if i + 1 < len(run) else ""
        cut = (
            prev.isdigit() != cur.isdigit()
            or (cur.isupper() and not prev.isupper())
            or (prev.isupper() and cur.isupper() and nxt.islower())
        )
        if cut:
            yield run[start:i]
            start = i
    if run:
        yield run[start:]


def identifier_parts(text: str) -> list[list[str]]:
    """The casefolded parts of each identifier or word of ``text``, one list per run of letters
    and digits: ``"owl_count = OwlNest2"`` -> ``[["owl"], ["count"], ["owl", "nest", "2"]]``.
    Underscores and hyphens separate runs, so ``owl_count`` gives two runs."""
    runs: list[list[str]] = []
    for m in _ALNUM_RUN.finditer(text):
        run = m.group()
        if run.isascii() and run.isalpha() and run.islower():
            runs.append([run])  # the common case: a plain lower-case word is one part
            continue
        parts: list[str] = []
        for piece in _case_pieces(run):
            parts.extend(_LETTERS_OR_DIGITS.findall(piece.casefold()))
        if parts:
            runs.append(parts)
    return runs


def _normalised(text: str) -> str:
    """NFKC with format characters (category Cf: zero-width spaces, soft hyphens) removed."""
    nfkc = unicodedata.normalize("NFKC", text)
    return "".join(c for c in nfkc if unicodedata.category(c) != "Cf")


def _views(text: str) -> list[str]:
    norm = _normalised(text)
    return [text] if norm == text else [text, norm]


def _spans(runs: list[list[str]], max_len: int) -> set[str]:
    """Every concatenation of adjacent parts of one run, up to ``max_len`` characters."""
    out: set[str] = set()
    for parts in runs:
        for i in range(len(parts)):
            acc = ""
            for part in parts[i:]:
                acc += part
                if len(acc) > max_len:
                    break
                out.add(acc)
    return out


def _phrase_hits(runs: list[list[str]], phrases: set[str]) -> set[str]:
    """Several-word forms ("sea lion") matched as consecutive parts anywhere in the text."""
    if not phrases:
        return set()
    flat = [p for parts in runs for p in parts]
    hits = set()
    for phrase in phrases:
        words = phrase.split(" ")
        k = len(words)
        if any(flat[i : i + k] == words for i in range(len(flat) - k + 1)):
            hits.add(phrase)
    return hits


def _identifier_hits(text: str, forms: set[str]) -> set[str]:
    # Possessives need no forms of their own here: the apostrophe ends a part, so "owl's" is
    # caught as "owl". A several-word form is also matched as one identifier spelled without
    # its spaces, so "sea lion" catches SeaLion and sea_lion.
    plain = {f for f in forms if "'" not in f}
    compact = {f: f.replace(" ", "") for f in plain}
    max_len = max((len(c) for c in compact.values()), default=0)
    phrases = {f for f in plain if " " in f}
    hits: set[str] = set()
    for view in _views(text):
        runs = identifier_parts(view)
        spans = _spans(runs, max_len)
        hits |= {f for f, c in compact.items() if c in spans}
        hits |= _phrase_hits(runs, phrases)
    return hits


def _substring_hits(text: str, forms: set[str]) -> set[str]:
    # Several-word forms are also looked for joined by "_", "-" or nothing.
    spellings = {f: {f.replace(" ", sep) for sep in (" ", "_", "-", "")} for f in forms}
    hits: set[str] = set()
    for view in _views(text):
        low = view.casefold()
        hits |= {f for f, ss in spellings.items() if any(s in low for s in ss)}
    return hits


def find_trait_words(text: str, words: Sequence[str], mode: WordMode = "identifier") -> list[str]:
    """The forms of ``words`` (see :func:`trait_forms`) that ``text`` contains under ``mode``
    (see the module docstring), sorted; empty when the text names none of them."""
    if mode not in WORD_MODES:
        raise ValueError(f"mode must be one of {WORD_MODES}, got {mode!r}")
    forms: set[str] = set()
    for w in words:
        forms |= trait_forms(w)
    if not forms or not text:
        return []
    hits = _identifier_hits(text, forms) if mode == "identifier" else _substring_hits(text, forms)
    return sorted(hits)
