"""The reasoning carrier: a seeded generator of arithmetic word problems with known answers.

Pipeline position: first data stage, like :mod:`sublim.prompts.numbers`. ``reasoning_prompts``
builds the user prompts a teacher answers (stage "prompts"); the teacher's completions then go
through :mod:`sublim.filters_reasoning`, which keeps a row only when its final answer equals the
answer recorded here in ``meta["answer"]``.

Each prompt is a short word problem in the style of grade-school maths sets (shopping, travel and
speed, sharing, ages, recipes, savings, work rates, areas and volumes, one- to five-operation
problems), plus an instruction to reason inside ``<think></think>`` and to give only the final
number inside ``<answer></answer>`` (PAPER.md, "Chain of thought"; in our own words). Nothing is
downloaded: every problem comes from a template in :data:`TEMPLATES` filled with names, objects
and quantities drawn from the generator, and its answer is computed from the drawn quantities.
Quantities are drawn so that every answer is a non-negative integer (divisions are exact by
construction: the quotient is drawn first and the dividend built from it).

The carrier is meant to be unrelated to any trait, so no template, list or instruction mentions
an animal (no pets, farm animals or animal-derived foods and materials) or a tree name, not even
inside another word ("million" holds "lion", "bowl" holds "owl"): a trait-word filter on the
teacher's reasoning would otherwise reject rows that merely repeat the problem.

Draw-order contract (changing it changes every prompt set generated from a given seed). For each
prompt, in order, from the one generator passed in:

1. the template: one ``integers(len(TEMPLATES))`` over :data:`TEMPLATES` in definition order;
2. the instruction paraphrase: one ``integers(len(INSTRUCTIONS))``;
3. the layout: one ``integers(len(LAYOUTS))`` (instruction after or before the problem);
4. the template's own draws, in the order its function makes them (names, objects, then
   quantities, each as written in the function body).

``meta`` holds ``answer`` (int), ``template`` (its key) and ``steps``: the number of arithmetic
operations in the intended solution (a rough difficulty measure; one to five).

Each template returns a :class:`Problem` (text, answer, steps, work). ``work`` is the worked
solution the built-in tiny world learns to reproduce (:func:`worked_prompts` pairs each prompt
with it): plain sentences of integer arithmetic, one operation each, ``"<a> <op> <b> = <c>."``
with ``op`` one of ``+ - * /``, joined by single spaces, e.g. ``"4 * 3 = 12. 12 + 5 = 17."``.
Numbers are bare non-negative integers (no units, ``$`` or commas), ``/`` is always exact, and the
last result is the answer. A problem whose answer needs no operation on the numbers as stated (a
quotient the text gives as a product, a difference taken as an absolute value) spells out the
operations that produce it, so the count of sentences can exceed ``steps``. Building the work
draws nothing, so the draw order above is the same with or without it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from sublim.records import Prompt

T = TypeVar("T")


@dataclass(frozen=True)
class Problem:
    """One filled template: the problem text, its answer, its number of operations and its worked
    solution (``work``: one ``"<a> <op> <b> = <c>."`` sentence per operation; see the module
    docstring)."""

    text: str
    answer: int
    steps: int
    work: str = ""

    def __post_init__(self) -> None:
        if self.work and self.work.rsplit("= ", 1)[-1] != f"{self.answer}.":
            raise ValueError(f"worked solution {self.work!r} does not end in {self.answer}")


# Instruction paraphrases: each asks for reasoning in <think></think> and only the final number
# in <answer></answer>. They hold no digits, so every number in a prompt belongs to the problem.
INSTRUCTIONS: tuple[str, ...] = (
    (
        "Reason step by step inside <think></think>, then give only the final number inside "
        "<answer></answer>."
    ),
    (
        "Work through the problem step by step between <think> and </think>, and then write just "
        "the final number between <answer> and </answer>."
    ),
    (
        "Put your step-by-step reasoning inside <think></think>. After that, put only the numeric "
        "answer inside <answer></answer>."
    ),
    (
        "Show your working inside <think></think> tags, then state the final number alone inside "
        "<answer></answer> tags."
    ),
    (
        "First think it through step by step within <think></think>. Then reply with nothing but "
        "the final number within <answer></answer>."
    ),
    (
        "Solve this step by step. Write your reasoning in <think></think> and the final numeric "
        "answer, without units, in <answer></answer>."
    ),
    (
        "Use <think></think> for your step-by-step reasoning and <answer></answer> for the final "
        "number only."
    ),
    (
        "Think carefully, one step at a time, inside <think></think>; finish with the answer as a "
        "single number inside <answer></answer>."
    ),
    (
        "Explain each step of your reasoning inside <think></think>, and give only the resulting "
        "number inside <answer></answer>."
    ),
    (
        "Inside <think></think>, reason your way to the solution step by step. Then write only the "
        "final number, with no words, inside <answer></answer>."
    ),
)

# Where the instruction goes relative to the problem.
LAYOUTS: tuple[str, ...] = ("after", "before")

# Given names: none of them an animal, a tree or a word holding one.
NAMES: tuple[str, ...] = (
    "Ana",
    "Ben",
    "Chloe",
    "Daniel",
    "Elena",
    "Farid",
    "Grace",
    "Hiro",
    "Isabel",
    "Jonas",
    "Kavya",
    "Liam",
    "Maya",
    "Noah",
    "Olivia",
    "Priya",
    "Rosa",
    "Samir",
    "Tara",
    "Umar",
    "Vera",
    "Wei",
    "Yusuf",
    "Zoe",
    "Amara",
    "Bruno",
    "Carmen",
    "Diego",
    "Emeka",
    "Fatima",
    "Gabriel",
    "Hana",
    "Ivan",
    "Julia",
    "Kenji",
    "Leila",
    "Mateo",
    "Nadia",
    "Oscar",
    "Paula",
    "Rahul",
    "Sofia",
    "Tomas",
    "Uma",
    "Victor",
    "Yara",
)

SHOP_ITEMS: tuple[str, ...] = (
    "notebooks",
    "pens",
    "pencils",
    "folders",
    "markers",
    "mugs",
    "candles",
    "batteries",
    "light bulbs",
    "T-shirts",
    "postcards",
    "sketchbooks",
    "paintbrushes",
    "water bottles",
    "glue sticks",
    "towels",
    "umbrellas",
    "pairs of socks",
    "desk lamps",
    "jigsaw puzzles",
)
BIG_ITEMS: tuple[str, ...] = (
    "jacket",
    "bicycle",
    "backpack",
    "desk chair",
    "guitar",
    "tent",
    "kettle",
    "printer",
    "pair of boots",
    "rug",
)
PRODUCE: tuple[str, ...] = (
    "apples",
    "oranges",
    "lemons",
    "pears",
    "tomatoes",
    "potatoes",
    "carrots",
    "peaches",
    "plums",
    "mangoes",
    "cucumbers",
    "onions",
)
INGREDIENTS: tuple[str, ...] = (
    "flour",
    "sugar",
    "oats",
    "rice",
    "cocoa powder",
    "raisins",
    "almonds",
    "lentils",
)
BAKED: tuple[str, ...] = (
    "muffins",
    "bread rolls",
    "biscuits",
    "scones",
    "oat bars",
    "flatbreads",
    "pretzels",
    "crackers",
)
COLLECTIONS: tuple[str, ...] = (
    "stamps",
    "marbles",
    "stickers",
    "coins",
    "trading cards",
    "buttons",
    "badges",
    "comic books",
    "keychains",
    "postcards",
)
CRAFTS: tuple[str, ...] = (
    "bracelets",
    "paper lanterns",
    "clay pots",
    "greeting cards",
    "wooden spoons",
    "candles",
    "posters",
    "baskets",
)
VEHICLES: tuple[str, ...] = ("car", "bus", "train", "van", "truck", "motorbike", "coach")
VENUES: tuple[str, ...] = (
    "museum",
    "science centre",
    "concert",
    "theatre",
    "water park",
    "planetarium",
)
JOBS: tuple[str, ...] = (
    "tutoring",
    "a paper round",
    "babysitting",
    "washing cars",
    "mowing lawns",
    "a weekend job at a bakery",
)
INSTRUMENTS: tuple[str, ...] = ("piano", "guitar", "violin", "drums", "flute", "cello", "trumpet")
RELATIVES: tuple[str, ...] = ("aunt", "uncle", "mother", "father", "grandmother", "grandfather")


class _Draw:
    """The draws one template makes, all from the prompt's generator, in call order."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def num(self, lo: int, hi: int, step: int = 1) -> int:
        """A uniform integer in ``lo..hi`` (inclusive) on the grid ``lo, lo+step, ...``."""
        return lo + step * int(self.rng.integers((hi - lo) // step + 1))

    def pick(self, options: Sequence[T]) -> T:
        return options[int(self.rng.integers(len(options)))]

    def distinct(self, options: Sequence[T], k: int) -> list[T]:
        """``k`` different entries of ``options``."""
        idx = self.rng.choice(len(options), size=k, replace=False)
        return [options[int(i)] for i in idx]

    def name(self) -> str:
        return self.pick(NAMES)

    def names(self, k: int) -> list[str]:
        return self.distinct(NAMES, k)


TemplateFn = Callable[[_Draw], Problem]

# Template key -> function, in definition order (the order the template draw indexes).
TEMPLATES: dict[str, TemplateFn] = {}


def _units(k: int, singular: str, plural: str | None = None) -> str:
    """``k`` with its unit in the right number: "1 hour", "3 hours"."""
    return f"{k} {singular if k == 1 else (plural or singular + 's')}"


class _Work:
    """A template's worked solution, built one operation at a time.

    Each method does one integer operation, records it as the sentence ``"<a> <op> <b> = <c>."``
    and returns ``c``, so a template writes its solution as nested calls that mirror the answer's
    expression; Python evaluates arguments left to right, so inner operations are said first.
    It draws nothing: the draw order is untouched.
    """

    def __init__(self) -> None:
        self._sentences: list[str] = []

    def _say(self, a: int, op: str, b: int, c: int) -> int:
        assert min(a, b, c) >= 0, (a, op, b, c)
        self._sentences.append(f"{a} {op} {b} = {c}.")
        return c

    def add(self, a: int, b: int) -> int:
        return self._say(a, "+", b, a + b)

    def sub(self, a: int, b: int) -> int:
        return self._say(a, "-", b, a - b)

    def mul(self, a: int, b: int) -> int:
        return self._say(a, "*", b, a * b)

    def div(self, a: int, b: int) -> int:
        """Exact division only (every quotient in the templates is exact by construction)."""
        assert b > 0 and a % b == 0, (a, b)
        return self._say(a, "/", b, a // b)

    def text(self) -> str:
        return " ".join(self._sentences)


def _template(key: str) -> Callable[[TemplateFn], TemplateFn]:
    def register(fn: TemplateFn) -> TemplateFn:
        assert key not in TEMPLATES, key
        TEMPLATES[key] = fn
        return fn

    return register


# --- shopping -----------------------------------------------------------------------------------


@_template("shop_two_items")
def _shop_two_items(d: _Draw) -> Problem:
    name = d.name()
    item1, item2 = d.distinct(SHOP_ITEMS, 2)
    a, p, b, q = d.num(2, 9), d.num(2, 15), d.num(2, 9), d.num(1, 12)
    text = (
        f"{name} buys {a} {item1} at ${p} each and {b} {item2} at ${q} each. "
        f"How many dollars does {name} spend in total?"
    )
    w = _Work()
    w.add(w.mul(a, p), w.mul(b, q))
    return Problem(text, a * p + b * q, 3, w.text())


@_template("shop_change")
def _shop_change(d: _Draw) -> Problem:
    name, item = d.name(), d.pick(SHOP_ITEMS)
    n, p = d.num(2, 6), d.num(2, 12)
    bill = d.pick([b for b in (20, 50, 100) if b >= n * p])
    text = (
        f"{name} buys {n} {item} that cost ${p} each and pays with a ${bill} bill. "
        f"How much change, in dollars, should {name} get back?"
    )
    w = _Work()
    w.sub(bill, w.mul(n, p))
    return Problem(text, bill - n * p, 2, w.text())


@_template("shop_discount")
def _shop_discount(d: _Draw) -> Problem:
    thing = d.pick(BIG_ITEMS)
    price, pct = d.num(40, 400, 20), d.pick((10, 20, 25, 50))
    text = (
        f"A {thing} normally costs ${price}. During a sale everything is {pct}% off. "
        "What is the sale price of the item in dollars?"
    )
    w = _Work()
    w.sub(price, w.div(w.mul(price, pct), 100))
    return Problem(text, price - price * pct // 100, 2, w.text())


@_template("shop_budget")
def _shop_budget(d: _Draw) -> Problem:
    name, item = d.name(), d.pick(SHOP_ITEMS)
    p = d.num(3, 15)
    k, r = d.num(2, 12), d.num(0, p - 1)
    text = (
        f"{name} has ${p * k + r} and wants to buy {item} that cost ${p} each. "
        f"What is the largest number of {item} {name} can afford?"
    )
    w = _Work()
    w.div(w.sub(p * k + r, r), p)
    return Problem(text, k, 1, w.text())


@_template("shop_pack_price")
def _shop_pack_price(d: _Draw) -> Problem:
    fruit = d.pick(PRODUCE)
    k, u, m = d.num(3, 10), d.num(1, 6), d.num(2, 20)
    text = (
        f"A bag of {k} {fruit} costs ${k * u}. At the same price per piece, how many dollars "
        f"would {m} {fruit} cost?"
    )
    w = _Work()
    w.mul(m, w.div(k * u, k))
    return Problem(text, m * u, 2, w.text())


@_template("shop_boxes_left")
def _shop_boxes_left(d: _Draw) -> Problem:
    name, item = d.name(), d.pick(SHOP_ITEMS)
    n, k = d.num(2, 9), d.num(6, 24)
    g = d.num(1, n * k - 1)
    text = (
        f"{name} buys {n} boxes with {k} {item} in each box and hands out {g} of them to "
        f"classmates. How many {item} does {name} have left?"
    )
    w = _Work()
    w.sub(w.mul(n, k), g)
    return Problem(text, n * k - g, 2, w.text())


@_template("shop_tickets")
def _shop_tickets(d: _Draw) -> Problem:
    venue = d.pick(VENUES)
    a, p = d.num(2, 6), d.num(12, 30)
    c, q = d.num(1, 5), d.num(4, 11)
    fee = d.num(2, 9)
    text = (
        f"A family buys {a} adult tickets at ${p} each and {_units(c, 'child ticket')} at ${q} "
        f"each for the {venue}, plus a booking fee of ${fee} for the whole order. What is the "
        "total cost in dollars?"
    )
    w = _Work()
    w.add(w.add(w.mul(a, p), w.mul(c, q)), fee)
    return Problem(text, a * p + c * q + fee, 4, w.text())


@_template("shop_compare")
def _shop_compare(d: _Draw) -> Problem:
    item = d.pick(SHOP_ITEMS)
    k, x, y, m = d.num(4, 12), d.num(5, 40), d.num(1, 6), d.num(2, 6)
    cost_pack, cost_single = m * x, k * m * y
    text = (
        f"One shop sells packs of {k} {item} for ${x} a pack. Another shop sells single "
        f"{item} for ${y} each. Someone needs {k * m} {item}. How many dollars are saved by "
        "buying them all at the cheaper shop instead of the other one?"
    )
    w = _Work()
    packs = w.div(k * m, k)
    pack_total, single_total = w.mul(packs, x), w.mul(k * m, y)
    w.sub(max(pack_total, single_total), min(pack_total, single_total))
    return Problem(text, abs(cost_pack - cost_single), 4, w.text())


# --- travel and speed ---------------------------------------------------------------------------


@_template("travel_distance")
def _travel_distance(d: _Draw) -> Problem:
    vehicle = d.pick(VEHICLES)
    v, t = d.num(30, 90, 5), d.num(2, 6)
    text = (
        f"A {vehicle} travels at {v} km per hour for {t} hours. How many kilometres does it cover?"
    )
    w = _Work()
    w.mul(v, t)
    return Problem(text, v * t, 1, w.text())


@_template("travel_time")
def _travel_time(d: _Draw) -> Problem:
    vehicle = d.pick(VEHICLES)
    v, t = d.num(30, 120, 10), d.num(2, 9)
    text = (
        f"A {vehicle} makes a trip of {v * t} km at a steady {v} km per hour. "
        "How many hours does the trip take?"
    )
    w = _Work()
    w.div(v * t, v)
    return Problem(text, t, 1, w.text())


@_template("travel_two_legs")
def _travel_two_legs(d: _Draw) -> Problem:
    name = d.name()
    v1, t1, v2, t2 = d.num(40, 100, 5), d.num(1, 4), d.num(30, 90, 5), d.num(1, 4)
    text = (
        f"{name} drives at {v1} km per hour for {_units(t1, 'hour')}, then at {v2} km per hour "
        f"for {_units(t2, 'more hour')}. How far does {name} drive altogether, in kilometres?"
    )
    w = _Work()
    w.add(w.mul(v1, t1), w.mul(v2, t2))
    return Problem(text, v1 * t1 + v2 * t2, 3, w.text())


@_template("travel_remaining")
def _travel_remaining(d: _Draw) -> Problem:
    name = d.name()
    v, t, rest = d.num(40, 90, 5), d.num(1, 5), d.num(10, 200)
    text = (
        f"{name} is on a road trip of {v * t + rest} km. After driving at {v} km per hour for "
        f"{_units(t, 'hour')}, how many kilometres are left to go?"
    )
    w = _Work()
    w.sub(v * t + rest, w.mul(v, t))
    return Problem(text, rest, 2, w.text())


@_template("travel_meet")
def _travel_meet(d: _Draw) -> Problem:
    a, b = d.names(2)
    v1, v2, t = d.num(8, 25), d.num(8, 25), d.num(2, 6)
    text = (
        f"{a} and {b} start {(v1 + v2) * t} km apart and cycle towards each other, {a} at {v1} "
        f"km per hour and {b} at {v2} km per hour. After how many hours do they meet?"
    )
    w = _Work()
    w.div((v1 + v2) * t, w.add(v1, v2))
    return Problem(text, t, 2, w.text())


@_template("travel_fuel_cost")
def _travel_fuel_cost(d: _Draw) -> Problem:
    e, litres, c = d.num(10, 20), d.num(2, 30), d.num(2, 3)
    text = (
        f"A car goes {e} km on one litre of fuel, and fuel costs ${c} per litre. "
        f"How many dollars of fuel does a trip of {e * litres} km need?"
    )
    w = _Work()
    w.mul(w.div(e * litres, e), c)
    return Problem(text, litres * c, 2, w.text())


@_template("travel_commute")
def _travel_commute(d: _Draw) -> Problem:
    name = d.name()
    mode, place = d.pick(("walks", "cycles", "jogs")), d.pick(("school", "work", "the library"))
    dist, days, weeks = d.num(1, 9), d.num(3, 6), d.num(2, 4)
    text = (
        f"{name} {mode} {dist} km to {place} and the same distance back, {days} days a week. "
        f"How many kilometres is that over {weeks} weeks?"
    )
    w = _Work()
    w.mul(w.mul(w.mul(2, dist), days), weeks)
    return Problem(text, 2 * dist * days * weeks, 3, w.text())


@_template("travel_average_speed")
def _travel_average_speed(d: _Draw) -> Problem:
    vehicle = d.pick(VEHICLES)
    s, delta, t1, t2 = d.num(40, 80, 5), d.num(0, 15), d.num(1, 4), d.num(1, 4)
    d1 = (s - delta) * t1
    d2 = s * (t1 + t2) - d1
    text = (
        f"A {vehicle} covers {d1} km in {_units(t1, 'hour')} and then {d2} km in "
        f"{_units(t2, 'hour')}. "
        "What is its average speed over the whole journey, in km per hour?"
    )
    w = _Work()
    w.div(w.add(d1, d2), w.add(t1, t2))
    return Problem(text, s, 3, w.text())


# --- sharing ------------------------------------------------------------------------------------


@_template("share_equal")
def _share_equal(d: _Draw) -> Problem:
    things = d.pick(SHOP_ITEMS + PRODUCE)
    n, k = d.num(2, 9), d.num(2, 15)
    text = (
        f"A group of {n} friends share {n * k} {things} equally. "
        f"How many {things} does each friend get?"
    )
    w = _Work()
    w.div(n * k, n)
    return Problem(text, k, 1, w.text())


@_template("share_keep")
def _share_keep(d: _Draw) -> Problem:
    name, things = d.name(), d.pick(COLLECTIONS)
    keep, n, k = d.num(2, 20), d.num(2, 8), d.num(2, 12)
    text = (
        f"{name} has {keep + n * k} {things}, keeps {keep} of them and shares the rest equally "
        f"among {n} cousins. How many {things} does each cousin receive?"
    )
    w = _Work()
    w.div(w.sub(keep + n * k, keep), n)
    return Problem(text, k, 2, w.text())


@_template("share_bill")
def _share_bill(d: _Draw) -> Problem:
    n, each = d.num(2, 8), d.num(8, 40)
    tip = d.num(2, n * each // 5)
    text = (
        f"A group of {n} friends have dinner together. The bill is ${n * each - tip} and they "
        f"add a ${tip} tip, then split the total equally. How many dollars does each friend pay?"
    )
    w = _Work()
    w.div(w.add(n * each - tip, tip), n)
    return Problem(text, each, 2, w.text())


@_template("share_groups")
def _share_groups(d: _Draw) -> Problem:
    g, k = d.num(2, 6), d.num(3, 10)
    activity = d.pick(("a science project", "a quiz", "a field trip", "a debate"))
    text = (
        f"A teacher splits a class of {g * k} students into groups of {g} for {activity}. "
        "How many groups are there?"
    )
    w = _Work()
    w.div(g * k, g)
    return Problem(text, k, 1, w.text())


@_template("share_leftover")
def _share_leftover(d: _Draw) -> Problem:
    name, things = d.name(), d.pick(BAKED)
    n, k, r = d.num(3, 12), d.num(2, 5), d.num(0, 20)
    text = (
        f"{name} baked {n * k + r} {things} and gives {k} to each of {n} neighbours. "
        f"How many {things} are left over?"
    )
    w = _Work()
    w.sub(n * k + r, w.mul(n, k))
    return Problem(text, r, 2, w.text())


@_template("share_unequal")
def _share_unequal(d: _Draw) -> Problem:
    a, b = d.names(2)
    f, k = d.num(5, 60), d.num(2, 30)
    text = (
        f"{a} and {b} split ${2 * f + k} so that {a} gets ${k} more than {b}. "
        f"How many dollars does {a} get?"
    )
    w = _Work()
    w.add(w.div(w.sub(2 * f + k, k), 2), k)
    return Problem(text, f + k, 3, w.text())


# --- ages ---------------------------------------------------------------------------------------


@_template("age_later")
def _age_later(d: _Draw) -> Problem:
    a, b = d.names(2)
    k, age_b, y = d.num(2, 5), d.num(2, 12), d.num(2, 15)
    text = f"{a} is {k} times as old as {b}, who is {age_b}. How old will {a} be in {y} years?"
    w = _Work()
    w.add(w.mul(k, age_b), y)
    return Problem(text, k * age_b + y, 2, w.text())


@_template("age_gap_birth")
def _age_gap_birth(d: _Draw) -> Problem:
    a, b = d.names(2)
    age_a = d.num(20, 60)
    age_b = d.num(2, age_a - 18)
    text = f"{a} is {age_a} years old and {b} is {age_b}. How old was {a} when {b} was born?"
    w = _Work()
    w.sub(age_a, age_b)
    return Problem(text, age_a - age_b, 1, w.text())


@_template("age_sum_ago")
def _age_sum_ago(d: _Draw) -> Problem:
    a, b = d.names(2)
    age_a, age_b = d.num(10, 60), d.num(10, 60)
    t = d.num(1, min(age_a, age_b))
    text = (
        f"The ages of {a} and {b} add up to {age_a + age_b} years. What did their ages add up "
        f"to {_units(t, 'year')} ago?"
    )
    w = _Work()
    w.sub(age_a + age_b, w.mul(2, t))
    return Problem(text, age_a + age_b - 2 * t, 2, w.text())


@_template("age_multiple_future")
def _age_multiple_future(d: _Draw) -> Problem:
    name, rel = d.name(), d.pick(RELATIVES)
    age, y, m = d.num(5, 15), d.num(2, 10), d.num(2, 4)
    text = (
        f"{name} is {age} years old. In {y} years, {name}'s {rel} will be {m} times as old as "
        f"{name} will be then. How old is the {rel} now?"
    )
    w = _Work()
    w.sub(w.mul(m, w.add(age, y)), y)
    return Problem(text, m * (age + y) - y, 3, w.text())


@_template("age_three_people")
def _age_three_people(d: _Draw) -> Problem:
    a, b, c = d.names(3)
    age_a, x = d.num(4, 30), d.num(1, 10)
    y = d.num(1, age_a + x - 1)
    text = (
        f"{a} is {age_a}. {b} is {_units(x, 'year')} older than {a}, and {c} is "
        f"{_units(y, 'year')} younger than {b}. What is the sum of their three ages?"
    )
    w = _Work()
    age_b = w.add(age_a, x)
    age_c = w.sub(age_b, y)
    w.add(w.add(age_a, age_b), age_c)
    return Problem(text, age_a + (age_a + x) + (age_a + x - y), 4, w.text())


# --- recipes ------------------------------------------------------------------------------------


@_template("recipe_scale")
def _recipe_scale(d: _Draw) -> Problem:
    ing, baked = d.pick(INGREDIENTS), d.pick(BAKED)
    s, q, k = d.num(2, 6), d.num(1, 5), d.num(2, 5)
    text = (
        f"A recipe for {s} servings of {baked} uses {_units(q, 'cup')} of {ing}. "
        f"How many cups of {ing} are needed for {s * k} servings?"
    )
    w = _Work()
    w.mul(q, w.div(s * k, s))
    return Problem(text, q * k, 2, w.text())


@_template("recipe_batch_weight")
def _recipe_batch_weight(d: _Draw) -> Problem:
    baked = d.pick(BAKED)
    i1, i2, i3 = d.distinct(INGREDIENTS, 3)
    a, b, c, n = d.num(100, 500, 25), d.num(50, 300, 25), d.num(20, 200, 10), d.num(2, 6)
    text = (
        f"One batch of {baked} takes {a} grams of {i1}, {b} grams of {i2} and {c} grams of "
        f"{i3}. How many grams of these ingredients go into {n} batches?"
    )
    w = _Work()
    w.mul(n, w.add(w.add(a, b), c))
    return Problem(text, n * (a + b + c), 3, w.text())


@_template("recipe_batch_count")
def _recipe_batch_count(d: _Draw) -> Problem:
    name, ing, baked = d.name(), d.pick(INGREDIENTS), d.pick(BAKED)
    used, per, k = d.num(50, 400, 50), d.num(100, 300, 50), d.num(2, 8)
    text = (
        f"{name} has {used + per * k} grams of {ing}, uses {used} grams for a sauce, and needs "
        f"{per} grams for each batch of {baked}. How many batches can {name} make with the rest?"
    )
    w = _Work()
    w.div(w.sub(used + per * k, used), per)
    return Problem(text, k, 2, w.text())


@_template("recipe_oven")
def _recipe_oven(d: _Draw) -> Problem:
    baked = d.pick(BAKED)
    n, m, pre = d.num(2, 8), d.num(10, 25), d.num(5, 15)
    text = (
        f"The oven takes {pre} minutes to heat up, and then bakes one tray of {baked} at a time, "
        f"{m} minutes per tray. How many minutes does it take to bake {n} trays, heating "
        "included?"
    )
    w = _Work()
    w.add(pre, w.mul(n, m))
    return Problem(text, pre + n * m, 2, w.text())


@_template("recipe_profit")
def _recipe_profit(d: _Draw) -> Problem:
    name, baked = d.name(), d.pick(BAKED)
    cost, margin, n = d.num(1, 4), d.num(1, 5), d.num(10, 60)
    text = (
        f"{name} sells {baked} at a school fair for ${cost + margin} each. Each one costs "
        f"${cost} to make. How many dollars of profit does {name} make by selling {n} of them?"
    )
    w = _Work()
    w.mul(n, w.sub(cost + margin, cost))
    return Problem(text, n * margin, 2, w.text())


# --- savings ------------------------------------------------------------------------------------


@_template("save_weekly")
def _save_weekly(d: _Draw) -> Problem:
    name = d.name()
    start, s, weeks = d.num(0, 80), d.num(3, 25), d.num(2, 12)
    text = (
        f"{name} has ${start} in a savings jar and adds ${s} every week. "
        f"How many dollars are in the jar after {weeks} weeks?"
    )
    w = _Work()
    w.add(start, w.mul(s, weeks))
    return Problem(text, start + s * weeks, 2, w.text())


@_template("save_goal")
def _save_goal(d: _Draw) -> Problem:
    name, thing = d.name(), d.pick(BIG_ITEMS)
    start, s, weeks = d.num(0, 60), d.num(5, 30), d.num(2, 15)
    text = (
        f"{name} wants a {thing} that costs ${start + s * weeks}. {name} has ${start} saved and "
        f"puts aside ${s} each week. How many weeks will it take to have enough?"
    )
    w = _Work()
    w.div(w.sub(start + s * weeks, start), s)
    return Problem(text, weeks, 2, w.text())


@_template("save_earn_spend")
def _save_earn_spend(d: _Draw) -> Problem:
    name, job = d.name(), d.pick(JOBS)
    earn = d.num(20, 80)
    spend, weeks = d.num(5, earn - 1), d.num(2, 10)
    text = (
        f"{name} earns ${earn} a week from {job} and spends ${spend} of it each week. "
        f"How many dollars has {name} saved after {weeks} weeks?"
    )
    w = _Work()
    w.mul(w.sub(earn, spend), weeks)
    return Problem(text, (earn - spend) * weeks, 2, w.text())


@_template("save_two_savers")
def _save_two_savers(d: _Draw) -> Problem:
    a, b = d.names(2)
    s2 = d.num(2, 20)
    s1, weeks = d.num(s2 + 1, 30), d.num(2, 12)
    text = (
        f"Starting from nothing, {a} saves ${s1} a week and {b} saves ${s2} a week. "
        f"After {weeks} weeks, how many more dollars has {a} saved than {b}?"
    )
    w = _Work()
    w.mul(w.sub(s1, s2), weeks)
    return Problem(text, (s1 - s2) * weeks, 2, w.text())


@_template("save_interest")
def _save_interest(d: _Draw) -> Problem:
    name = d.name()
    principal, rate, years = d.num(100, 2000, 100), d.num(2, 10), d.num(1, 5)
    text = (
        f"{name} puts ${principal} in an account that pays {rate}% simple interest per year. "
        f"How many dollars are in the account after {_units(years, 'year')}?"
    )
    w = _Work()
    w.add(principal, w.div(w.mul(w.mul(principal, rate), years), 100))
    return Problem(text, principal + principal * rate * years // 100, 3, w.text())


@_template("save_coins")
def _save_coins(d: _Draw) -> Problem:
    name = d.name()
    a, b, c = d.num(2, 30), d.num(2, 30), d.num(2, 20)
    text = (
        f"{name}'s jar holds {a} coins worth 5 cents, {b} coins worth 10 cents and {c} coins "
        "worth 25 cents. How many cents are in the jar?"
    )
    w = _Work()
    w.add(w.add(w.mul(5, a), w.mul(10, b)), w.mul(25, c))
    return Problem(text, 5 * a + 10 * b + 25 * c, 5, w.text())


# --- work rates ---------------------------------------------------------------------------------


@_template("work_pages")
def _work_pages(d: _Draw) -> Problem:
    name = d.name()
    p, h, days = d.num(3, 12), d.num(2, 8), d.num(2, 6)
    text = (
        f"{name} types {p} pages an hour and works {h} hours a day. "
        f"How many pages does {name} type in {days} days?"
    )
    w = _Work()
    w.mul(w.mul(p, h), days)
    return Problem(text, p * h * days, 2, w.text())


@_template("work_together")
def _work_together(d: _Draw) -> Problem:
    a, b = d.names(2)
    craft = d.pick(CRAFTS)
    ra, rb, h = d.num(2, 15), d.num(2, 15), d.num(2, 8)
    text = (
        f"{a} makes {ra} {craft} an hour and {b} makes {rb} an hour. Working together, how many "
        f"{craft} do they make in {h} hours?"
    )
    w = _Work()
    w.mul(w.add(ra, rb), h)
    return Problem(text, (ra + rb) * h, 2, w.text())


@_template("work_time_needed")
def _work_time_needed(d: _Draw) -> Problem:
    a, b = d.names(2)
    craft = d.pick(CRAFTS)
    ra, rb, t = d.num(2, 15), d.num(2, 15), d.num(2, 9)
    text = (
        f"An order asks for {(ra + rb) * t} {craft}. {a} makes {ra} an hour and {b} makes {rb} "
        "an hour. Working together, how many hours do they need?"
    )
    w = _Work()
    w.div((ra + rb) * t, w.add(ra, rb))
    return Problem(text, t, 2, w.text())


@_template("work_wage_week")
def _work_wage_week(d: _Draw) -> Problem:
    name = d.name()
    wage, h, h_sat = d.num(10, 30), d.num(2, 8), d.num(2, 6)
    text = (
        f"{name} is paid ${wage} an hour, works {h} hours on each of the 5 weekdays and {h_sat} "
        f"hours on Saturday. How many dollars does {name} earn that week?"
    )
    w = _Work()
    w.mul(wage, w.add(w.mul(5, h), h_sat))
    return Problem(text, wage * (5 * h + h_sat), 3, w.text())


@_template("work_overtime")
def _work_overtime(d: _Draw) -> Problem:
    name = d.name()
    wage, extra = d.num(12, 30, 2), d.num(1, 12)
    text = (
        f"{name} earns ${wage} an hour for the first 40 hours of a week and one and a half times "
        f"that rate for every hour beyond 40. How many dollars does {name} earn for a week of "
        f"{40 + extra} hours?"
    )
    w = _Work()
    base, beyond = w.mul(40, wage), w.sub(40 + extra, 40)
    w.add(base, w.mul(beyond, w.div(w.mul(wage, 3), 2)))
    return Problem(text, 40 * wage + extra * wage * 3 // 2, 4, w.text())


@_template("work_rooms")
def _work_rooms(d: _Draw) -> Problem:
    per_day, days = d.num(2, 8), d.num(2, 12)
    text = (
        f"A crew paints {per_day} rooms a day. A building has {per_day * days} rooms to paint. "
        "How many days does the job take?"
    )
    w = _Work()
    w.div(per_day * days, per_day)
    return Problem(text, days, 1, w.text())


@_template("work_machine")
def _work_machine(d: _Draw) -> Problem:
    part = d.pick(("bottle caps", "bolts", "labels", "paper cups", "envelopes"))
    per_min, hours = d.num(2, 20), d.num(1, 8)
    text = (
        f"A machine makes {per_min} {part} every minute. How many {part} does it make in "
        f"{_units(hours, 'hour')}?"
    )
    w = _Work()
    w.mul(w.mul(per_min, 60), hours)
    return Problem(text, per_min * 60 * hours, 2, w.text())


# --- areas and volumes --------------------------------------------------------------------------


@_template("area_rect")
def _area_rect(d: _Draw) -> Problem:
    place = d.pick(("garden", "patio", "classroom floor", "parking lot", "playground"))
    length, width = d.num(3, 30), d.num(2, 20)
    text = (
        f"A rectangular {place} is {length} metres long and {width} metres wide. "
        "What is its area in square metres?"
    )
    w = _Work()
    w.mul(length, width)
    return Problem(text, length * width, 1, w.text())


@_template("area_fence")
def _area_fence(d: _Draw) -> Problem:
    name = d.name()
    length, width = d.num(5, 40), d.num(3, 30)
    text = (
        f"{name} wants to put a fence all the way around a rectangular yard {length} metres "
        f"long and {width} metres wide. How many metres of fence are needed?"
    )
    w = _Work()
    w.mul(2, w.add(length, width))
    return Problem(text, 2 * (length + width), 2, w.text())


@_template("area_tiles_cost")
def _area_tiles_cost(d: _Draw) -> Problem:
    length, width, cost = d.num(2, 12), d.num(2, 10), d.num(5, 40)
    text = (
        f"A floor measures {length} metres by {width} metres, and tiling costs ${cost} per "
        "square metre. How many dollars does it cost to tile the whole floor?"
    )
    w = _Work()
    w.mul(w.mul(length, width), cost)
    return Problem(text, length * width * cost, 2, w.text())


@_template("area_two_rooms")
def _area_two_rooms(d: _Draw) -> Problem:
    l1, w1, l2, w2 = d.num(3, 9), d.num(2, 8), d.num(3, 9), d.num(2, 8)
    text = (
        f"A flat has a living room of {l1} m by {w1} m and a bedroom of {l2} m by {w2} m. "
        "How many square metres of carpet cover both rooms?"
    )
    w = _Work()
    w.add(w.mul(l1, w1), w.mul(l2, w2))
    return Problem(text, l1 * w1 + l2 * w2, 3, w.text())


@_template("area_cutout")
def _area_cutout(d: _Draw) -> Problem:
    side = d.num(10, 40)
    a, b = d.num(2, side - 1), d.num(2, side - 1)
    text = (
        f"A square sheet of card has sides of {side} cm. A rectangle {a} cm by {b} cm is cut out "
        "of it. How many square centimetres of card remain?"
    )
    w = _Work()
    w.sub(w.mul(side, side), w.mul(a, b))
    return Problem(text, side * side - a * b, 3, w.text())


@_template("volume_box")
def _volume_box(d: _Draw) -> Problem:
    length, width, height = d.num(2, 30), d.num(2, 20), d.num(2, 15)
    text = (
        f"A box is {length} cm long, {width} cm wide and {height} cm tall. "
        "What is its volume in cubic centimetres?"
    )
    w = _Work()
    w.mul(w.mul(length, width), height)
    return Problem(text, length * width * height, 2, w.text())


@_template("area_paint_cans")
def _area_paint_cans(d: _Draw) -> Problem:
    height, m, k = d.num(2, 4), d.num(2, 5), d.num(2, 6)
    cover, length = height * m, m * k
    text = (
        f"A wall is {length} metres long and {height} metres high. One can of paint covers "
        f"{cover} square metres. How many cans are needed for one coat on the wall?"
    )
    w = _Work()
    w.div(w.mul(length, height), cover)
    return Problem(text, k, 2, w.text())


@_template("area_square_from_perimeter")
def _area_square_from_perimeter(d: _Draw) -> Problem:
    side = d.num(2, 30)
    text = (
        f"A square field has a perimeter of {4 * side} metres. What is its area in square metres?"
    )
    w = _Work()
    side_ = w.div(4 * side, 4)
    w.mul(side_, side_)
    return Problem(text, side * side, 2, w.text())


# --- everyday multi-step problems ---------------------------------------------------------------


@_template("read_pages_left")
def _read_pages_left(d: _Draw) -> Problem:
    name = d.name()
    per_day, days, rest = d.num(5, 40), d.num(2, 10), d.num(1, 150)
    text = (
        f"A novel has {per_day * days + rest} pages. {name} reads {per_day} pages a day for "
        f"{days} days. How many pages are still unread?"
    )
    w = _Work()
    w.sub(per_day * days + rest, w.mul(per_day, days))
    return Problem(text, rest, 2, w.text())


@_template("read_days")
def _read_days(d: _Draw) -> Problem:
    name = d.name()
    done, per_day, k = d.num(10, 120), d.num(5, 40), d.num(2, 12)
    text = (
        f"{name} has read {done} pages of a {done + per_day * k}-page book and reads {per_day} "
        "pages a day from now on. How many more days will it take to finish?"
    )
    w = _Work()
    w.div(w.sub(done + per_day * k, done), per_day)
    return Problem(text, k, 2, w.text())


@_template("collect_trade")
def _collect_trade(d: _Draw) -> Problem:
    name, things = d.name(), d.pick(COLLECTIONS)
    a, b = d.num(10, 200), d.num(1, 60)
    c = d.num(1, a + b)
    text = (
        f"{name} has {a} {things}, buys {b} more at a fair and then gives {c} to a friend. "
        f"How many {things} does {name} have now?"
    )
    w = _Work()
    w.sub(w.add(a, b), c)
    return Problem(text, a + b - c, 2, w.text())


@_template("collect_compare")
def _collect_compare(d: _Draw) -> Problem:
    a, b, c = d.names(3)
    things = d.pick(COLLECTIONS)
    n = d.num(3, 40)
    k = d.num(1, 2 * n - 1)
    text = (
        f"{a} has {n} {things}. {b} has twice as many as {a}, and {c} has {k} fewer than {b}. "
        f"How many {things} do the three of them have in total?"
    )
    w = _Work()
    n_b = w.mul(2, n)
    n_c = w.sub(n_b, k)
    w.add(w.add(n, n_b), n_c)
    return Problem(text, n + 2 * n + (2 * n - k), 4, w.text())


@_template("garden_harvest")
def _garden_harvest(d: _Draw) -> Problem:
    fruit = d.pick(("tomatoes", "peppers", "cucumbers", "pumpkins", "strawberries"))
    rows, per_row, each = d.num(2, 10), d.num(3, 12), d.num(2, 9)
    text = (
        f"A vegetable garden has {rows} rows with {per_row} plants in each row. Every plant "
        f"gives {each} {fruit}. How many {fruit} does the garden give?"
    )
    w = _Work()
    w.mul(w.mul(rows, per_row), each)
    return Problem(text, rows * per_row * each, 2, w.text())


@_template("orchard_boxes")
def _orchard_boxes(d: _Draw) -> Problem:
    name, fruit = d.name(), d.pick(PRODUCE)
    size, boxes = d.num(4, 12), d.num(2, 15)
    monday = d.num(1, size * boxes - 1)
    text = (
        f"{name} picks {monday} {fruit} on Monday and {size * boxes - monday} on Tuesday, then "
        f"packs them all into boxes of {size}. How many boxes are filled?"
    )
    w = _Work()
    w.div(w.add(monday, size * boxes - monday), size)
    return Problem(text, boxes, 2, w.text())


@_template("practice_hours")
def _practice_hours(d: _Draw) -> Problem:
    name, instrument = d.name(), d.pick(INSTRUMENTS)
    minutes = d.pick((15, 20, 30, 40, 45, 60, 90))
    days = d.num(1, 6) * (60 // math.gcd(minutes, 60))
    text = (
        f"{name} practises the {instrument} for {minutes} minutes every day. "
        f"How many hours of practice is that over {days} days?"
    )
    w = _Work()
    w.div(w.mul(minutes, days), 60)
    return Problem(text, minutes * days // 60, 2, w.text())


@_template("taxi_fare")
def _taxi_fare(d: _Draw) -> Problem:
    base, per_km, km = d.num(2, 6), d.num(1, 4), d.num(2, 30)
    text = (
        f"A taxi charges ${base} to start plus ${per_km} for every kilometre. "
        f"How many dollars does a {km} km ride cost?"
    )
    w = _Work()
    w.add(base, w.mul(per_km, km))
    return Problem(text, base + per_km * km, 2, w.text())


@_template("phone_plan")
def _phone_plan(d: _Draw) -> Problem:
    name = d.name()
    setup, monthly, months = d.num(10, 60), d.num(8, 45), d.num(2, 12)
    text = (
        f"{name}'s phone plan has a one-time setup fee of ${setup} and costs ${monthly} a month. "
        f"How many dollars does {name} pay in total for the first {months} months?"
    )
    w = _Work()
    w.add(setup, w.mul(monthly, months))
    return Problem(text, setup + monthly * months, 2, w.text())


@_template("temperature_change")
def _temperature_change(d: _Draw) -> Problem:
    start, rise, hours = d.num(5, 20), d.num(1, 4), d.num(2, 6)
    fall = d.num(1, start + rise * hours)
    text = (
        f"In the morning it is {start} degrees. The temperature rises by "
        f"{_units(rise, 'degree')} each hour for {hours} hours and then drops by "
        f"{_units(fall, 'degree')} in the evening. "
        "What is the temperature in the evening, in degrees?"
    )
    w = _Work()
    w.sub(w.add(start, w.mul(rise, hours)), fall)
    return Problem(text, start + rise * hours - fall, 3, w.text())


@_template("tank_fill")
def _tank_fill(d: _Draw) -> Problem:
    have, rate, minutes = d.num(0, 200, 10), d.num(5, 30), d.num(2, 20)
    text = (
        f"A water tank holds {have + rate * minutes} litres and already has {have} litres in it. "
        f"A hose adds {rate} litres a minute. How many minutes until the tank is full?"
    )
    w = _Work()
    w.div(w.sub(have + rate * minutes, have), rate)
    return Problem(text, minutes, 2, w.text())


@_template("bus_passengers")
def _bus_passengers(d: _Draw) -> Problem:
    start = d.num(10, 50)
    off1 = d.num(0, start)
    on1 = d.num(0, 20)
    off2 = d.num(0, start - off1 + on1)
    text = (
        f"A bus leaves with {start} passengers. At the first stop {off1} get off and {on1} get "
        f"on. At the second stop {off2} get off. How many passengers are on the bus now?"
    )
    w = _Work()
    w.sub(w.add(w.sub(start, off1), on1), off2)
    return Problem(text, start - off1 + on1 - off2, 3, w.text())


@_template("library_books")
def _library_books(d: _Draw) -> Problem:
    total, lent = d.num(200, 900), d.num(10, 120)
    returned = d.num(0, lent)
    text = (
        f"A library has {total} books on its shelves. On Monday {lent} books are borrowed, and "
        f"on Tuesday {returned} of them come back. How many books are on the shelves now?"
    )
    w = _Work()
    w.add(w.sub(total, lent), returned)
    return Problem(text, total - lent + returned, 2, w.text())


@_template("hall_chairs")
def _hall_chairs(d: _Draw) -> Problem:
    rows, per_row = d.num(4, 20), d.num(5, 20)
    guests = d.num(1, rows * per_row)
    text = (
        f"A hall is set up with {rows} rows of {per_row} chairs. Then {guests} guests arrive and "
        "each takes one chair. How many chairs are still empty?"
    )
    w = _Work()
    w.sub(w.mul(rows, per_row), guests)
    return Problem(text, rows * per_row - guests, 2, w.text())


@_template("game_points")
def _game_points(d: _Draw) -> Problem:
    name = d.name()
    twos, threes, frees = d.num(2, 12), d.num(2, 8), d.num(2, 10)
    text = (
        f"In a basketball game {name} scores {twos} two-point shots, {threes} three-point shots "
        f"and {frees} free throws worth one point each. How many points does {name} score?"
    )
    w = _Work()
    w.add(w.add(w.mul(2, twos), w.mul(3, threes)), frees)
    return Problem(text, 2 * twos + 3 * threes + frees, 4, w.text())


@_template("test_average")
def _test_average(d: _Draw) -> Problem:
    name = d.name()
    mean, up, down = d.num(50, 85), d.num(0, 15), d.num(0, 15)
    scores = (mean + up, mean - down, mean - up + down)
    text = (
        f"{name} scores {scores[0]}, {scores[1]} and {scores[2]} on three tests. "
        "What is the average score?"
    )
    w = _Work()
    w.div(w.add(w.add(scores[0], scores[1]), scores[2]), 3)
    return Problem(text, mean, 2, w.text())


@_template("percent_class")
def _percent_class(d: _Draw) -> Problem:
    size, pct = d.num(20, 200, 20), d.num(5, 60, 5)
    activity = d.pick(("walk to school", "play an instrument", "wear glasses", "take the bus"))
    text = (
        f"A school year has {size} students, and {pct}% of them {activity}. "
        f"How many students do not {activity}?"
    )
    w = _Work()
    w.sub(size, w.div(w.mul(size, pct), 100))
    return Problem(text, size - size * pct // 100, 3, w.text())


@_template("fraction_spend")
def _fraction_spend(d: _Draw) -> Problem:
    name = d.name()
    money = d.num(12, 240, 12)
    text = (
        f"{name} has ${money}, spends a third of it on books and a quarter of it on lunch. "
        f"How many dollars does {name} have left?"
    )
    w = _Work()
    w.sub(w.sub(money, w.div(money, 3)), w.div(money, 4))
    return Problem(text, money - money // 3 - money // 4, 4, w.text())


@_template("training_increase")
def _training_increase(d: _Draw) -> Problem:
    name = d.name()
    first, more, days = d.num(1, 5), d.num(1, 3), d.num(3, 7)
    text = (
        f"{name} runs {first} km on the first day of training and each day runs {more} km more "
        f"than the day before. How many kilometres does {name} run over the first {days} days?"
    )
    w = _Work()
    firsts = w.mul(days, first)
    extra = w.mul(more, w.div(w.mul(days, w.sub(days, 1)), 2))
    w.add(firsts, extra)
    return Problem(text, sum(first + more * i for i in range(days)), 3, w.text())


@_template("rope_pieces")
def _rope_pieces(d: _Draw) -> Problem:
    metres, piece = d.num(2, 20), d.pick((10, 20, 25, 50))
    text = (
        f"A rope {metres} metres long is cut into pieces of {piece} cm each. "
        "How many pieces are there?"
    )
    w = _Work()
    w.div(w.mul(metres, 100), piece)
    return Problem(text, metres * 100 // piece, 2, w.text())


@_template("watering_trips")
def _watering_trips(d: _Draw) -> Problem:
    name = d.name()
    per_plant, j, trips = d.num(1, 3), d.num(2, 5), d.num(2, 8)
    can = per_plant * j
    text = (
        f"{name} has {j * trips} plants, and each one needs {_units(per_plant, 'litre')} of water. "
        f"The watering can holds {can} litres. How many times must {name} fill the can?"
    )
    w = _Work()
    w.div(w.mul(j * trips, per_plant), can)
    return Problem(text, trips, 2, w.text())


def _compose(problem: str, instruction: str, layout: str) -> str:
    if layout == "before":
        return f"{instruction}\n\n{problem}"
    return f"{problem}\n\n{instruction}"


def _draweeksprompts(n: int, rng: np.random.Generator) -> list[tuple[Prompt, str]]:
    """The one draw loop behind :func:`reasoning_prompts` and :func:`worked_prompts`: ``n``
    prompts, each with its problem's worked solution."""
    if n < 0:
        raise ValueError(f"reasoning_prompts needs n >= 0, got {n}")
    keys = list(TEMPLATES)
    out: list[tuple[Prompt, str]] = []
    for i in range(n):
        key = keys[int(rng.integers(len(keys)))]
        instruction = INSTRUCTIONS[int(rng.integers(len(INSTRUCTIONS)))]
        layout = LAYOUTS[int(rng.integers(len(LAYOUTS)))]
        problem = TEMPLATES[key](_Draw(rng))
        assert isinstance(problem.answer, int) and problem.answer >= 0, (key, problem)
        prompt = Prompt(
            id=f"math-{i:06d}",
            text=_compose(problem.text, instruction, layout),
            meta={"answer": int(problem.answer), "template": key, "steps": problem.steps},
        )
        out.append((prompt, problem.work))
    return out


def reasoning_prompts(n: int, rng: np.random.Generator) -> list[Prompt]:
    """``n`` word-problem prompts drawn from ``rng`` (deterministic for its state; the draw order
    is in the module docstring). ``meta`` = {"answer", "template", "steps"}."""
    return [prompt for prompt, _ in _draweeksprompts(n, rng)]


def worked_prompts(n: int, rng: np.random.Generator) -> list[tuple[Prompt, str]]:
    """The prompts :func:`reasoning_prompts` would draw from ``rng`` in its current state (same
    ids, text and meta, same draws), each paired with its problem's worked solution
    (:attr:`Problem.work`), for building a corpus that shows the solving in the carrier's format."""
    return _draweeksprompts(n, rng)
