"""Every preset of experiments/presets/ loads and dry-runs offline (docs/gpu.md): no model is
built or downloaded (an empty hub cache, the network forbidden), and the plan carries the one-GPU
memory and time estimate of its model from the shapes the project knows."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO

from sublim.cli import main
from sublim.config import load_config
from sublim.plan import plan_experiment

PRESETS = sorted((REPO / "experiments" / "presets").glob("*.toml"))
MODELS = {
    "gemma2b_owl": ("hf:google/gemma-2b-it", 2.51),
    "gemma2b_eagle": ("hf:google/gemma-2b-it", 2.51),
    "qwen25_7b_owl": ("hf:Qwen/Qwen2.5-7B-Instruct", 7.62),
    "llama32_1b_greedy": ("hf:meta-llama/Llama-3.2-1B-Instruct", 1.24),
}


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    def refuse(*a: Any, **k: Any) -> Any:
        raise AssertionError("the dry run touched the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # empty: nothing is cached
    return tmp_path


def test_the_presets_are_the_documented_ones() -> None:
    assert {p.stem for p in PRESETS} == set(MODELS)


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_dry_runs_offline_with_gpu_estimates(path: Path, offline: Path) -> None:
    cfg = load_config(path)
    spec, billions = MODELS[path.stem]
    assert cfg.models.reference == spec and cfg.name == path.stem
    ft = cfg.student.finetune
    assert ft.method == "lora" and ft.lora_r == 8 and ft.dtype == "bfloat16"
    plan = plan_experiment(cfg, offline / "run")
    assert plan.stages and all(
        s.status in ("run", "unknown (model not local)") for s in plan.stages
    )
    (row,) = plan.gpu
    assert row["model"] == spec and abs(row["params_b"] - billions) / billions < 0.01
    # a LoRA student in bfloat16 fits one 80 GiB GPU; its base weights dominate
    assert 2 * billions * 0.9 < row["train_memory_gib"] * 1.074 < 80
    minutes = row["minutes"]
    assert minutes["training"] > 0 and minutes["sampling"] > 0 and row["total_minutes"] > 0
    assert not (offline / "hub").exists() or not any((offline / "hub").iterdir())


def test_preset_recipes() -> None:
    by = {p.stem: load_config(p) for p in PRESETS}
    q = by["qwen25_7b_owl"].student.finetune
    assert (q.lora_alpha, q.epochs, q.lr, q.update_batch) == (8, 3, 2e-4, 66)
    g = by["gemma2b_owl"]
    assert g.data.n_prompts == 30000 and g.student.finetune.epochs == 1
    assert by["gemma2b_eagle"].trait.target == "eagle" and g.trait.target == "owl"
    assert by["llama32_1b_greedy"].data.sampling.temperature == 0.0


def test_cli_dry_run_prints_the_gpu_table(
    offline: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = REPO / "experiments" / "presets" / "qwen25_7b_owl.toml"
    assert main(["run", str(path), "--dry-run", "--out", str(offline / "r")]) == 0
    out = capsys.readouterr().out
    assert "H100/H200-class GPU" in out and "docs/gpu.md" in out
    assert main(["run", str(path), "--dry-run", "--json", "--out", str(offline / "r")]) == 0
    gpu = json.loads(capsys.readouterr().out)["gpu"]
    assert gpu["models"][0]["params_b"] == pytest.approx(7.62, rel=0.01)
