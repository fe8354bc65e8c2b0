"""The GPU training path and the vLLM backend, validated offline on CPU (docs/gpu.md).

No GPU runs here: the precision, device and memory options are checked for what they refuse and
what they key, the CPU-reachable settings (bfloat16 weights, gradient clipping, gradient
checkpointing) train a tiny random Llama, and the vLLM backend runs against a fake engine that
records what it is asked (vllm itself is not installed).
"""

from __future__ import annotations

import json
import os
import types
from pathlib import Path
from typing import Any

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from test_cache_keys import BASES, FT_TEACHERS, NONE, STUDENTS, E, _changed, _expected, _keys
from test_hf_backend import ROWS, _weights, build_tiny_model

from sublim.backends import hf_models, hf_train
from sublim.config import ExperimentConfig, FinetuneParams, apply_overrides, semantic_dump
from sublim.errors import ConfigError, MissingExtraError, SublimError
from sublim.records import ModelRef, SampleParams, user_chat

# every key FinetuneParams put in a cache key before the GPU path existed: a default config must
# keep exactly these (so its stage keys, and every cached student, stay as they were)
OLD_KEYS = {
    "method",
    "epochs",
    "lr",
    "warmup_ratio",
    "scheduler",
    "weight_decay",
    "max_len",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_targets",
    "snapshot_every",
    "update_batch",
}
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def ref(tmp_path_factory: pytest.TempPathFactory) -> ModelRef:
    torch.set_num_threads(1)
    d = build_tiny_model(tmp_path_factory.mktemp("gpu") / "model")
    return ModelRef(backend="hf", id=str(d))


# --- keys ------------------------------------------------------------------------------------


def test_defaults_keep_every_old_key_and_fingerprint() -> None:
    p = FinetuneParams()
    assert set(semantic_dump(p)) == OLD_KEYS
    assert p.precision_extra() == {}
    fp = hf_train.fingerprint_params(p)
    assert not set(fp) & set(hf_train._GPU_FIELDS)  # a pre-GPU-path checkpoint still resumes
    bf = FinetuneParams(dtype="bfloat16", max_grad_norm=1.0)
    assert hf_train.fingerprint_params(bf)["dtype"] == "bfloat16"
    assert semantic_dump(bf)["max_grad_norm"] == 1.0


@pytest.mark.parametrize(
    "field,value,keyed",
    [
        ("dtype", "bfloat16", True),
        ("autocast", "bfloat16", True),
        ("max_grad_norm", 1.0, True),
        ("tf32", True, True),
        ("gradient_checkpointing", True, False),
        ("device", "cuda:1", False),
        ("device_map", "auto", False),
        ("memory_check", False, False),
    ],
)
def test_precision_settings_key_their_students_and_teachers(
    field: str, value: Any, keyed: bool
) -> None:
    for bname in ("sft", "distill"):
        cfg = ExperimentConfig.model_validate(BASES[bname])
        data = cfg.model_dump(mode="json")
        before = _keys(cfg)
        for where, sft_effect in (("student", E(*STUDENTS)), ("trait", FT_TEACHERS)):
            new = ExperimentConfig.model_validate(
                apply_overrides(data, [f"{where}.finetune.{field}={json.dumps(value)}"])
            )
            exp = sft_effect if keyed and bname == "sft" else NONE
            got = _changed(before, _keys(new))
            assert got == _expected(set(before), exp), (bname, where, field)


# --- what a device refuses -------------------------------------------------------------------


def test_float16_is_refused_on_cpu_and_for_full_weights() -> None:
    with pytest.raises(ConfigError, match="CUDA only"):
        hf_models.check_precision(FinetuneParams(method="lora", dtype="float16"), CPU)
    with pytest.raises(ConfigError, match="CUDA only"):
        hf_models.check_precision(FinetuneParams(autocast="float16"), CPU)
    with pytest.raises(ConfigError, match="underflow"):
        hf_models.check_precision(
            FinetuneParams(method="full", dtype="float16"), torch.device("cuda")
        )
    # bfloat16 on CPU is the documented fallback: allowed (torch computes it)
    hf_models.check_precision(FinetuneParams(dtype="bfloat16", autocast="bfloat16"), CPU)


def test_bfloat16_on_a_gpu_without_it_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla T4")
    with pytest.raises(ConfigError, match=r"Tesla T4.*autocast = 'float16'") as e:
        hf_models.check_precision(FinetuneParams(dtype="bfloat16"), torch.device("cuda"))
    assert "\n" not in str(e.value)
    hf_models.check_precision(FinetuneParams(autocast="float16"), torch.device("cuda"))


def test_device_settings_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA device"):
        hf_models.train_device(FinetuneParams(device="cuda"))
    with pytest.raises(ConfigError, match="not a torch device"):
        hf_models.train_device(FinetuneParams(device="gpu0"))
    with pytest.raises(ConfigError, match="device_map"):
        hf_models.train_device(FinetuneParams(device="cpu", device_map="auto"))
    monkeypatch.delenv("SUBLIM_DEVICE", raising=False)
    assert hf_models.train_device(FinetuneParams()) == CPU


# --- memory ----------------------------------------------------------------------------------


def test_shape_parameter_count_matches_a_real_model() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    c = LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=8,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(c)
    shape = hf_models.ModelShape.from_config(c.to_dict())
    assert shape.params == sum(p.numel() for p in model.parameters())
    from peft import LoraConfig, get_peft_model

    targets = ["q_proj", "v_proj", "down_proj"]
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=targets))
    n_lora = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    assert shape.lora_params(4, targets) == n_lora


def test_known_open_models_have_their_published_sizes() -> None:
    sizes = {  # parameters as published (embeddings included)
        "Qwen/Qwen2.5-7B-Instruct": 7.62e9,
        "meta-llama/Llama-3.2-1B-Instruct": 1.24e9,
        "google/gemma-2b-it": 2.51e9,
        "smollm2:SmolLM2-135M-Instruct": 0.135e9,
    }
    for name, n in sizes.items():
        got = hf_models.ModelShape(*hf_models.KNOWN_SHAPES[name]).params
        assert abs(got - n) / n < 0.01, (name, got)
    qwen = hf_models.ModelShape(*hf_models.KNOWN_SHAPES["Qwen/Qwen2.5-7B-Instruct"])
    full32 = hf_models.train_memory(qwen, FinetuneParams(method="full"), seq_len=128)
    assert full32.weights + full32.grads + full32.optimizer == 16 * qwen.params
    lora16 = hf_models.train_memory(
        qwen, FinetuneParams(method="lora", dtype="bfloat16", batch_size=8), seq_len=128
    )
    assert 14 * hf_models.GiB < lora16.weights < 15 * hf_models.GiB  # the 28 GB base, halved
    assert lora16.total < 24 * hf_models.GiB
    ckpt = FinetuneParams(
        method="lora", dtype="bfloat16", batch_size=8, gradient_checkpointing=True
    )
    assert hf_models.train_memory(qwen, ckpt, seq_len=128).activations < lora16.activations / 5


def test_a_job_that_cannot_fit_stops_before_loading(
    ref: ModelRef, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # nothing cached, nothing fetched
    monkeypatch.setattr(hf_models, "_ram_available", lambda: 4 * hf_models.GiB)

    def no_load(*a: Any, **k: Any) -> Any:
        raise AssertionError("loaded a model that cannot fit")

    monkeypatch.setattr(hf_train, "load", no_load)
    qwen = ModelRef(backend="hf", id="Qwen/Qwen2.5-7B-Instruct")
    with pytest.raises(SublimError, match=r"needs ~.*GiB.*4\.00 GiB of available RAM") as e:
        hf_train.finetune(qwen, ROWS, FinetuneParams(method="full"), tmp_path / "x", seed=0)
    assert "\n" not in str(e.value) and "memory_check = false" in str(e.value)
    monkeypatch.undo()
    # the tiny model fits, and the estimate lands in the training stats
    _, stats = hf_train.finetune(
        ref, ROWS, FinetuneParams(method="lora", epochs=1, batch_size=4), tmp_path / "ok", seed=0
    )
    assert 0 < stats["memory_estimate_gib"] < 1


# --- training on CPU with the GPU-path settings ----------------------------------------------


def test_cpu_training_settings(ref: ModelRef, tmp_path: Path) -> None:
    base: dict[str, Any] = {"method": "full", "epochs": 2, "lr": 3e-3, "batch_size": 2}
    runs = {
        "default": FinetuneParams(**base),
        "checkpointing": FinetuneParams(**base, gradient_checkpointing=True),
        "clip": FinetuneParams(**base, max_grad_norm=0.05),
        "loose_clip": FinetuneParams(**base, max_grad_norm=1e6),
    }
    w = {}
    for name, p in runs.items():
        hf_train.finetune(ref, ROWS, p, tmp_path / name, seed=3)
        w[name] = _weights(tmp_path / name)
    d = w["default"]
    # gradient checkpointing recomputes the same activations: the same weights
    assert all(torch.allclose(d[k], w["checkpointing"][k], atol=1e-6) for k in d)
    # a clip that binds changes the weights; one that never binds changes nothing
    assert any(not torch.allclose(d[k], w["clip"][k], atol=1e-4) for k in d)
    assert all(torch.allclose(d[k], w["loose_clip"][k], atol=1e-6) for k in d)
    log = [
        json.loads(x) for x in (tmp_path / "clip" / "train_log.jsonl").read_text().split("\n") if x
    ]
    assert all(r["grad_norm"] > 0.05 for r in log)  # the pre-clip norms are logged
    plain = (tmp_path / "default" / "train_log.jsonl").read_text()
    assert "grad_norm" not in plain


def test_bfloat16_lora_trains_on_cpu(ref: ModelRef, tmp_path: Path) -> None:
    p = FinetuneParams(
        method="lora",
        dtype="bfloat16",
        autocast="bfloat16",
        epochs=3,
        lr=5e-3,
        batch_size=4,
        lora_r=4,
    )
    student, _ = hf_train.finetune(ref, ROWS, p, tmp_path / "bf16", seed=0)
    w = _weights(Path(student.adapter or ""))
    assert w and all(t.dtype == torch.float32 for t in w.values())  # the adapter stays float32
    log = [
        json.loads(x) for x in (tmp_path / "bf16" / "train_log.jsonl").read_text().split("\n") if x
    ]
    assert log[-1]["loss"] < log[0]["loss"]


# --- fast sampling switch -------------------------------------------------------------------


def test_static_cache_switch_gives_the_same_replies(
    ref: ModelRef, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sublim.backends import hf

    monkeypatch.setenv("SUBLIM_FAST_DECODE", "0")  # the transformers path, where the cache is used
    chats = [user_chat(r.prompt) for r in ROWS[:4]]
    params = SampleParams(temperature=1.0, max_new_tokens=8, batch_size=4)
    b = hf.HFBackend()
    dynamic = b.sample(ref, chats, params, seed=[1, 2, 3, 4])
    monkeypatch.setenv("SUBLIM_HF_CACHE", "static")
    assert hf.cache_implementation() == "static"
    static = b.sample(ref, chats, params, seed=[1, 2, 3, 4])
    assert static == dynamic
    monkeypatch.setenv("SUBLIM_HF_CACHE", "paged")
    with pytest.raises(ConfigError, match="SUBLIM_HF_CACHE"):
        hf.cache_implementation()


# --- the vLLM backend (a fake engine) --------------------------------------------------------


class FakeEngine:
    """Records generate calls; replies "r<seed>"; prompt log-probs: -0.5 per prompt token."""

    def __init__(self, **kw: Any) -> None:
        self.kw = kw
        self.calls: list[dict[str, Any]] = []

    def get_tokenizer(self) -> Any:
        return None

    def generate(
        self,
        prompts: list[dict[str, Any]],
        params: Any,
        lora_request: Any = None,
        use_tqdm: bool = False,
    ) -> list[Any]:
        params = params if isinstance(params, list) else [params] * len(prompts)
        self.calls.append({"prompts": prompts, "params": params, "lora": lora_request})
        out = []
        for pr, sp in zip(prompts, params):
            ids = pr["prompt_token_ids"]
            plp = [None] + [{t: types.SimpleNamespace(logprob=-0.5)} for t in ids[1:]]
            text = f"r{sp.seed}" if sp.seed is not None else "greedy"
            out.append(
                types.SimpleNamespace(
                    outputs=[types.SimpleNamespace(text=text)], prompt_logprobs=plp
                )
            )
        return out


def _fake_vllm(monkeypatch: pytest.MonkeyPatch) -> Any:
    from sublim.backends import vllm_backend

    fake = types.SimpleNamespace(
        SamplingParams=lambda **kw: types.SimpleNamespace(**{"seed": None, **kw}),
        LoRARequest=lambda name, int_id, path: types.SimpleNamespace(
            name=name, id=int_id, path=path
        ),
    )
    monkeypatch.setattr(vllm_backend, "_vllm", lambda: fake)
    return vllm_backend


def test_vllm_missing_is_a_one_line_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from sublim.backends import vllm_backend
    from sublim.registry import get_backend, parse_model

    real = builtins.__import__

    def no_vllm(name: str, *a: Any, **k: Any) -> Any:
        if name == "vllm" or name.startswith("vllm."):
            raise ImportError("No module named 'vllm'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_vllm)
    assert parse_model("vllm:Qwen/Qwen2.5-7B-Instruct").backend == "vllm"
    backend = get_backend("vllm")  # registering and naming it import nothing heavy
    with pytest.raises(MissingExtraError, match=r"sublim\[vllm\]"):
        vllm_backend._vllm()
    with pytest.raises(MissingExtraError):
        backend.sample(parse_model("vllm:org/m"), [user_chat("hi")], SampleParams(), seed=0)


def test_vllm_options_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from sublim.backends import vllm_backend

    monkeypatch.setenv("SUBLIM_VLLM_GPU_MEMORY_UTILIZATION", "0.5")
    monkeypatch.setenv("SUBLIM_VLLM_MAX_MODEL_LEN", "2048")
    o = vllm_backend.VLLMOptions.from_env()
    assert o.gpu_memory_utilization == 0.5 and o.max_model_len == 2048 and o.max_lora_rank == 64
    monkeypatch.setenv("SUBLIM_VLLM_GPU_MEMORY_UTILIZATION", "1.5")
    with pytest.raises(ConfigError, match="SUBLIM_VLLM_GPU_MEMORY_UTILIZATION"):
        vllm_backend.VLLMOptions.from_env()


def test_vllm_backend_with_a_fake_engine(
    ref: ModelRef, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vb = _fake_vllm(monkeypatch)
    made: list[FakeEngine] = []

    def factory(**kw: Any) -> FakeEngine:
        made.append(FakeEngine(**kw))
        return made[-1]

    backend = vb.VLLMBackend(engine_factory=factory)
    model = ModelRef(backend="vllm", id=ref.id)
    chats = [user_chat(r.prompt) for r in ROWS[:3]]
    out = backend.sample(model, chats, SampleParams(temperature=0.7, max_new_tokens=5), [7, 8, 9])
    assert out == ["r7", "r8", "r9"]  # one seed per row, passed to the engine
    call = made[0].calls[-1]
    assert [p.seed for p in call["params"]] == [7, 8, 9] and call["lora"] is None
    assert made[0].kw["enable_lora"] and made[0].kw["gpu_memory_utilization"] == 0.9
    # the prompt ids are sublim's own chat format (the same tokens the HF backend sees)
    lm = hf_models.get_loaded(ref)
    from sublim import chat_format

    assert call["prompts"][0]["prompt_token_ids"] == chat_format.encode_prompt(
        lm.tokenizer, chats[0]
    )
    # an int seed derives one seed per row, as every backend does
    from sublim.seeds import row_seeds

    backend.sample(model, chats, SampleParams(), 5)
    assert [p.seed for p in made[0].calls[-1]["params"]] == row_seeds(5, 3)
    # exact scores: the continuation's prompt log-probabilities, summed
    scores = backend.score(model, chats[:1], ["owl"], include_end=True)
    n_reply = len(chat_format.encode_reply(lm.tokenizer, "owl", True))
    assert scores == [pytest.approx(-0.5 * n_reply)]
    sp = made[0].calls[-1]["params"][0]
    assert sp.prompt_logprobs == 0 and sp.max_tokens == 1
    # LoRA students: trained by the HF trainer, served as adapters of the one engine
    p = FinetuneParams(method="lora", epochs=1, batch_size=4, lora_r=4)
    s1 = backend.finetune(model, ROWS, p, tmp_path / "s1", seed=0)
    s2 = backend.finetune(model, ROWS, p, tmp_path / "s2", seed=1)
    assert s1.backend == "vllm" and s1.adapter and s1.parent == model.spec
    backend.sample(s1, chats, SampleParams(), 0)
    r1 = made[0].calls[-1]["lora"]
    backend.sample(s2, chats, SampleParams(), 0)
    r2 = made[0].calls[-1]["lora"]
    backend.sample(s1, chats, SampleParams(), 0)
    assert r1.path == s1.adapter and r2.path == s2.adapter and r1.id != r2.id
    assert made[0].calls[-1]["lora"].id == r1.id  # the same adapter keeps its id
    assert len(made) == 1  # the base was loaded once for every student
    with pytest.raises(ConfigError, match="method = 'lora'"):
        backend.finetune(model, ROWS, FinetuneParams(method="full"), tmp_path / "f", seed=0)
