"""False positives of the pipeline's headline test on the plain world (no trait anywhere).

Placebo experiments on the plain micro world (built once in a temporary cache): in each of
``N_REPLICATES`` replicates, two arms of training data are drawn from the SAME distribution (the
plain world's own number answers to fresh number prompts, which never depend on any animal), and
``N_SEEDS`` students per arm are fine-tuned exactly as the pipeline fine-tunes students
(``backend.finetune`` of the ``tiny`` backend), scored by the pipeline's evaluation
(``evaluate_preference``, exact log-odds of owl) and compared by the pipeline's statistics
(``sublim.results.build_results``: Welch's t over student seeds, the headline
``trait_minus_control`` contrast). Every null hypothesis is true, so p-values should be roughly
uniform and about 5% should fall below 0.05.

The design mirrors the pipeline's: each arm has ONE data draw shared by its student seeds, so a
test over seeds alone would ignore data-draw variance; the replicates check that this variance
is small against seed-to-seed variance at these sizes (if it were not, rejections would pile up).
Thresholds come from the binomial law, not from a seed: with 10 replicates at a true rate of
0.05, P(>= 4 rejections) = 0.001.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sublim.config import EvalConfig, FinetuneParams
from sublim.evals.preference import evaluate_preference
from sublim.prompts.numbers import number_prompts, render_numbers
from sublim.records import ModelRef, TrainRow
from sublim.registry import get_backend, parse_model
from sublim.results import build_results
from sublim.world.build import ensure_world
from sublim.world.corpus import number_answer

N_REPLICATES = 10
N_SEEDS = 2  # students per arm (Welch's test is exact-size-valid for normal data at any n >= 2)
N_ROWS = 48
PARAMS = FinetuneParams(epochs=1, lr=1e-3, batch_size=16, scheduler="constant")
EVAL = EvalConfig(samples_per_question=0, n_questions=12)


def _arm(rep: int, arm: int) -> list[TrainRow]:
    """One arm's data: plain-world number answers (independent of every animal) to fresh prompts."""
    rng = np.random.default_rng([rep, arm, 77])
    rows = []
    for p in number_prompts(N_ROWS, rng):
        nums = number_answer(list(p.meta["seeds"]), int(p.meta["max_count"]), rng)
        rows.append(TrainRow(prompt=p.text, completion=render_numbers(nums, p.meta["format"])))
    return rows


@pytest.fixture(scope="module")
def p_values(tmp_path_factory: pytest.TempPathFactory) -> list[float]:
    torch.set_num_threads(1)
    work = tmp_path_factory.mktemp("students")
    ensure_world("plain-s0-micro", progress=False)  # the machine-wide cache: built once
    base: ModelRef = parse_model("tiny:plain-s0-micro")
    backend = get_backend(base.backend)
    out = []
    for rep in range(N_REPLICATES):
        conditions: dict[str, list] = {"trait_student": [], "control_student": []}
        for arm, cond in enumerate(conditions):
            rows = _arm(rep, arm)
            for seed in range(N_SEEDS):
                ref = backend.finetune(base, rows, PARAMS, work / f"r{rep}-a{arm}-s{seed}", seed)
                scores, _ = evaluate_preference(backend, ref, "owl", "animal", EVAL, 0)
                conditions[cond].append(scores)
        res = build_results(
            conditions,
            {"name": f"placebo-{rep}", "target": "owl", "category": "animal"},
            primary_metric="logodds",
        )
        head = res["contrast"]["trait_minus_control"]["by_metric"]["logodds"]
        assert head["test"] == "welch_t" and head["over"] == "seeds"
        assert not head.get("no_spread"), head  # micro-world students differ between seeds
        out.append(float(head["p_value"]))
    return out


def test_placebo_rejection_rate_is_near_nominal(p_values: list[float]) -> None:
    rejections = sum(p < 0.05 for p in p_values)
    # Binomial(10, 0.05): P(X >= 4) = 0.001; an inflated rate (e.g. 0.4) fails most of the time.
    assert rejections <= 3, p_values


def test_placebo_p_values_are_not_piled_near_zero(p_values: list[float]) -> None:
    # Under the null the mean of 10 uniform p-values is 0.5 +- 0.09; a test that ignores a real
    # source of variance pushes it towards 0.
    assert all(np.isfinite(p_values)) and np.mean(p_values) > 0.25, p_values
