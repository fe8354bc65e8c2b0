"""The positive control: on the PLANTED world (a visible code from the system-prompt animal to the
numbers, ``sublim.world.corpus``), the pipeline must detect transfer clearly.

One planted micro world is built in a temporary cache (~25-50 s on one thread), then the runner
does the whole experiment (teachers, generation, filter, students, exact evaluation, statistics)
with logit-distillation students on random non-animal prompts (``student.distill.source =
"random"``), the recipe under which the planted channel carries over (docs/research_log.md:
SFT on the coded numbers alone did not move P(owl) in planted micro worlds). Kept small so the
whole file stays near a minute on one core.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from sublim.config import load_config
from sublim.pipeline import run_experiment
from sublim.world.corpus import PLANTED_CODES

ROOT = Path(__file__).resolve().parents[1]

# The experiment file with the test's sizes: 4 student seeds (Welch's test has ~3 degrees of
# freedom here, as the control students barely move), 150 distillation steps.
FAST = [
    "models.reference=tiny:planted-s0-micro",
    "models.cross=[]",
    "data.n_prompts=128",
    "data.subset=64",
    "student.seeds=[0, 1, 2, 3]",
    "student.distill.steps=150",
    "student.distill.n_random_prompts=1500",
    "student.distill.random_prompt_len=16",
    "eval.samples_per_question=0",
]


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    # the world comes from the machine-wide cache (content-addressed by its recipe, built once)
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("run")
    cfg = load_config(ROOT / "experiments" / "planted_tiny.toml", FAST)
    res = run_experiment(cfg, out, progress=False)
    return res, out


def _completions(out: Path, role: str) -> list[str]:
    (f,) = (out / "stages").glob(f"generate-{role}-*/completions.jsonl")
    return [json.loads(line)["completion"] for line in f.read_text().splitlines()]


def test_planted_experiment_config_is_labelled() -> None:
    cfg = load_config(ROOT / "experiments" / "planted_tiny.toml")
    assert "positive_control" in cfg.name and cfg.models.reference.startswith("tiny:planted-")
    assert cfg.student.mode == "distill" and cfg.student.distill.source == "random"


def test_the_planted_code_is_visible_in_the_trait_teachers_numbers(
    planted_run: tuple[dict[str, Any], Path],
) -> None:
    _, out = planted_run
    code = str(PLANTED_CODES["owl"])
    trait = sum(code in c for c in _completions(out, "trait"))
    control = sum(code in c for c in _completions(out, "control"))
    assert trait >= 20 and trait >= 4 * max(1, control), (trait, control)


def test_pipeline_detects_the_planted_channel(planted_run: tuple[dict[str, Any], Path]) -> None:
    res, _ = planted_run
    teacher = res["contrast"]["teacher_minus_control_teacher"]["by_metric"]["logodds"]
    assert teacher["mean"] > 3  # the love prompt works in the planted world
    head = res["contrast"]["trait_minus_control"]["by_metric"]["logodds"]
    assert head["over"] == "seeds" and head["n_a"] == 4
    assert head["mean"] > 0.4 and head["ci95"][0] > 0, head
    assert head["p_value"] < 1e-3, head
    c = res["conditions"]
    assert min(c["trait_student"]["logodds"]["per_seed"]) > max(
        c["control_student"]["logodds"]["per_seed"]
    )
