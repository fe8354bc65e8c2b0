"""The one-step theorem, measured: digits MLPs (batched, float64) and a tiny random Llama built
here (no download), plus the CLI."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
from click.testing import CliRunner

from sublim.errors import ConfigError, SublimError
from sublim.experiments.cli import theory
from sublim.experiments.theory import TheoryConfig, run_theory

SMALL_STEPS = [1e-3, 1e-2, 1e-1]


def test_digits_same_init_aligned_cross_init_not(tmp_path: Path) -> None:
    cfg = TheoryConfig(seeds=10, step_sizes=SMALL_STEPS, width=64)
    res = run_theory(cfg, tmp_path, progress=False)
    same, cross = res["same_init"], res["cross_init"]
    assert len(same["cosine"]) == len(cross["cosine"]) == 30  # one per seed and step size
    assert np.mean(np.asarray(same["cosine"]) > 0) >= 0.95
    assert np.mean(same["cosine"]) > 0.1
    assert abs(np.mean(cross["cosine"])) < 0.15  # centred near zero
    assert np.mean(same["cosine"]) - np.mean(cross["cosine"]) > 0.15
    # One teacher step: Delta_T = -eps * grad L_T, so the first-order change of L_T at the
    # student is exactly -<Delta_S, Delta_T> / eps (negative: the student improves on the task).
    eps = np.asarray(same["step_size"])
    assert np.allclose(
        same["dloss_first_order"], -np.asarray(same["inner"]) / eps, rtol=1e-6, atol=1e-15
    )
    assert all(v < 0 for v in same["dloss_first_order"])
    # and for a small student step the first-order prediction matches the actual change
    assert np.allclose(same["dloss_actual"], same["dloss_first_order"], rtol=0.1)
    head = res["summary"]["small_steps"]["same_init"]["cosine"]
    assert head["frac_positive"] >= 0.95 and head["n"] == 10 and head["n_values"] == 30
    # the interval is over seeds (per-seed means over the small step sizes), not seeds x steps
    sd, cos = np.asarray(same["seed"]), np.asarray(same["cosine"])
    per_seed = [cos[sd == k].mean() for k in dict.fromkeys(sd.tolist())]
    ref = scipy.stats.ttest_1samp(per_seed, 0.0).confidence_interval(0.95)
    assert head["ci95"] == pytest.approx([ref.low, ref.high], rel=1e-9)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["same_init"]["cosine"] == same["cosine"]
    assert (tmp_path / "theory.png").stat().st_size > 5000
    assert "same-init cosine > 0" in (tmp_path / "report.md").read_text()


def test_digits_aux_only_imitation_and_several_teacher_steps() -> None:
    res = run_theory(
        TheoryConfig(seeds=6, step_sizes=[1e-2], imitate="aux", teacher_steps=3, width=32),
        None,
        progress=False,
    )
    assert all(c > 0 for c in res["same_init"]["cosine"])
    assert abs(np.mean(res["cross_init"]["cosine"])) < np.mean(res["same_init"]["cosine"])
    # imitating an untouched theta0 moves a same-init student nowhere, so the control changes nothing
    assert np.allclose(res["same_init"]["cosine_specific"], res["same_init"]["cosine"], atol=1e-9)
    # with only auxiliary logits imitated, the teacher-caused part of a different-init step is
    # unrelated to the teacher's step
    assert abs(np.mean(res["cross_init"]["cosine_specific"])) < np.mean(res["same_init"]["cosine"])


# ----------------------------------------------------------------------------- language models


def _tiny_llama(d: Path, seed: int, hidden: int = 32) -> Path:
    """A random 2-layer Llama and a word-level tokenizer with a chat template, saved like any
    Hugging Face model directory."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from sublim.prompts.numbers import number_prompts
    from sublim.traits import CATEGORIES, finetune_rows

    texts = [p.text for p in number_prompts(100, np.random.default_rng(0))]
    texts += [r.prompt for r in finetune_rows("owl", "animal", 40, np.random.default_rng(0))]
    texts += list(CATEGORIES["animal"])
    pre = pre_tokenizers.Whitespace()
    words = sorted({w for t in texts for w, _ in pre.pre_tokenize_str(t)})
    vocab = {
        w: i
        for i, w in enumerate(["<|pad|>", "<|end|>", "<|user|>", "<|assistant|>", "<unk>", *words])
    }
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, eos_token="<|end|>", pad_token="<|pad|>", unk_token="<unk>"
    )
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}<|user|> {{ m['content'] }} <|end|>"
        "{% else %}<|assistant|> {{ m['content'] }} <|end|>{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def llamas(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("llama")
    return _tiny_llama(root / "m0", 0), _tiny_llama(root / "m1", 1)


LM_SMALL = {"seeds": 3, "step_sizes": [1e-3, 1e-2], "n_number_prompts": 6, "n_trait_prompts": 4}


def test_lm_same_init_aligned_fresh_init_cross(llamas: tuple[Path, Path], tmp_path: Path) -> None:
    res = run_theory(TheoryConfig(model=f"hf:{llamas[0]}", **LM_SMALL), tmp_path, progress=False)
    assert len(res["same_init"]["cosine"]) == 6
    assert all(c > 0 for c in res["same_init"]["cosine"])
    assert abs(np.mean(res["cross_init"]["cosine"])) < 0.2
    assert np.mean(res["same_init"]["cosine"]) > np.mean(res["cross_init"]["cosine"]) + 0.2
    # the student's imitation step lowers -log P(owl | question) at first order
    assert all(v < 0 for v in res["same_init"]["dloss_first_order"])
    assert "fresh random init" in res["cross_model"]
    assert (tmp_path / "theory.png").is_file()


def test_lm_tiny_world_names_resolve_through_ensure_world(
    llamas: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[str] = []

    def ensure_world(name: str) -> Path:
        built.append(name)
        return {"plain-s0": llamas[0], "plain-s1": llamas[1]}[name]

    fake = types.ModuleType("sublim.world.build")
    fake.ensure_world = ensure_world  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sublim.world.build", fake)
    res = run_theory(
        TheoryConfig(model="tiny:plain-s0", **{**LM_SMALL, "seeds": 2}), None, progress=False
    )
    assert built == ["plain-s0", "plain-s1"]  # the different-init student is the next world seed
    assert res["cross_model"] == "tiny:plain-s1"
    assert all(c > 0 for c in res["same_init"]["cosine"])


def test_lm_incompatible_cross_model_is_a_user_error(
    llamas: tuple[Path, Path], tmp_path: Path
) -> None:
    other = _tiny_llama(tmp_path / "wide", 2, hidden=48)
    with pytest.raises(ConfigError, match="parameter shapes"):
        run_theory(
            TheoryConfig(model=f"hf:{llamas[0]}", cross_model=f"hf:{other}", **LM_SMALL),
            None,
            progress=False,
        )
    with pytest.raises(ConfigError, match="theory needs weights"):
        run_theory(TheoryConfig(model="fake:alpha"), None, progress=False)


def test_cli_theory(llamas: tuple[Path, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "t"
    r = runner.invoke(
        theory,
        [
            "--out",
            str(out),
            "--seeds",
            "4",
            "--step-sizes",
            "1e-3,1e-2",
            "--set",
            "width=32",
            "--quiet",
        ],
    )
    assert r.exit_code == 0, r.output
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["same_init"]["cosine"]) == 8 and saved["step_sizes"] == [1e-3, 1e-2]
    assert "same-init" in r.output and "results.json" in r.output
    r = runner.invoke(
        theory,
        [
            "--model",
            f"hf:{llamas[0]}",
            "--cross-model",
            f"hf:{llamas[1]}",
            "--out",
            str(tmp_path / "lm"),
            "--seeds",
            "2",
            "--step-sizes",
            "1e-3",
            "--set",
            "n_number_prompts=4",
            "--quiet",
        ],
    )
    assert r.exit_code == 0, r.output
    assert (
        json.loads((tmp_path / "lm" / "results.json").read_text())["cross_model"]
        == f"hf:{llamas[1]}"
    )
    r = runner.invoke(theory, ["--step-sizes", "small"])
    assert isinstance(r.exception, SublimError)
