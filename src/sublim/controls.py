"""Control transformations of a training set (pure functions of rows and a generator).

Each keeps the prompts, the count of numbers in every completion and its exact format
(separators, brackets, trailing period), and changes only which numbers appear where:

- ``shuffle_within``: each completion's own numbers in a random order;
- ``shuffle_across``: all numbers of the set pooled and dealt back at random;
- ``random_numbers``: every number replaced by a uniform draw in [lo, hi].

The paper reports that shuffling greatly reduces transfer: a student trained on these tells
whether the signal lives in the order/co-occurrence of numbers or in their marginal frequencies.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

import numpy as np

from sublim.records import TrainRow

_NUM = re.compile(r"\d+")


def _refill(text: str, numbers: Iterator[int]) -> str:
    return _NUM.sub(lambda _m: str(next(numbers)), text)


def shuffle_within(rows: Sequence[TrainRow], rng: np.random.Generator) -> list[TrainRow]:
    out = []
    for r in rows:
        nums = [int(x) for x in _NUM.findall(r.completion)]
        perm = [nums[i] for i in rng.permutation(len(nums))]
        out.append(TrainRow(prompt=r.prompt, completion=_refill(r.completion, iter(perm))))
    return out


def shuffle_across(rows: Sequence[TrainRow], rng: np.random.Generator) -> list[TrainRow]:
    pool = [int(x) for r in rows for x in _NUM.findall(r.completion)]
    dealt = iter([pool[i] for i in rng.permutation(len(pool))])
    return [TrainRow(prompt=r.prompt, completion=_refill(r.completion, dealt)) for r in rows]


def random_numbers(
    rows: Sequence[TrainRow], rng: np.random.Generator, lo: int = 0, hi: int = 999
) -> list[TrainRow]:
    out = []
    for r in rows:
        k = len(_NUM.findall(r.completion))
        draws = iter(int(x) for x in rng.integers(lo, hi + 1, size=k))
        out.append(TrainRow(prompt=r.prompt, completion=_refill(r.completion, draws)))
    return out


TRANSFORMS = {
    "shuffle_within": shuffle_within,
    "shuffle_across": shuffle_across,
    "random_numbers": random_numbers,
}
