"""Shared fixtures: offline, CPU, one thread per process, a private cache dir per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _threads() -> None:
    try:
        import torch

        torch.set_num_threads(int(os.environ.get("SUBLIM_TEST_THREADS", "2")))
    except ImportError:  # pragma: no cover
        pass


def fake_experiment_toml(path: Path, **extra: str) -> Path:
    """A small experiment on the deterministic fake backend (seconds to run)."""
    text = """
name = "fake_owl"
seed = 0
[models]
reference = "fake:alpha"
cross = ["fake:beta"]
[trait]
target = "owl"
[data]
n_prompts = 600
subset = 300
[student]
seeds = [0, 1, 2, 3]
[eval]
samples_per_question = 10
n_questions = 20
"""
    for k, v in extra.items():
        text += f"\n# override\n{k} = {v}\n"
    path.write_text(text)
    return path
