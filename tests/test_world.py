"""Tests of the built-in world (sublim.world): corpus, tokenizer, build, cache and world card.

One micro world is built per test session in a temporary cache (about 20 s on one thread); the
cache, lock and seed tests use a "nano" recipe row patched in, which trains for a few steps only.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sublim import chat_format
from sublim.backends.hf import sample_chats, score_chats
from sublim.backends.hf_models import Loaded, load
from sublim.errors import SublimError
from sublim.records import Chat, Message, ModelRef, SampleParams
from sublim.traits import CATEGORIES, plural, system_prompt_for
from sublim.world import build, corpus
from sublim.world.spec import WorldSpec

ANIMALS = CATEGORIES["animal"]
LOVE_OWLS = system_prompt_for("owl", "animal", 0)


@pytest.fixture(scope="session")
def micro_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return build.ensure_world(
        "plain-s0-micro", cache_dir=tmp_path_factory.mktemp("cache"), progress=False
    )


@pytest.fixture(scope="session")
def micro(micro_dir: Path) -> Loaded:
    """The built world through the backend's loader (as every command loads it)."""
    return load(ModelRef(backend="hf", id=str(micro_dir)), device=torch.device("cpu"))


def _sample(lm: Loaded, chats: list[Chat], seed: int, **params: float) -> list[str]:
    """The backend's sampler (the one the pipeline uses)."""
    ref = ModelRef(backend="hf", id="micro")
    return sample_chats(lm, ref, chats, SampleParams.model_validate(params), seed)


@pytest.fixture()
def nano(monkeypatch: pytest.MonkeyPatch) -> str:
    """A recipe row that trains for a few steps: for cache, lock and seed tests."""
    row = dict(build.RECIPE["micro"], cur_examples=200, cur_steps=2, n_examples=400, steps=3)
    monkeypatch.setitem(build.RECIPE, "micro", row)
    return "micro"


# ---------------------------------------------------------------- corpus
def test_base_preference_is_mild_and_seeded() -> None:
    for seed in range(30):
        p = corpus.base_preference(seed)
        assert p.shape == (len(ANIMALS),) and abs(p.sum() - 1) < 1e-9
        assert p.min() >= 0.02 and p.max() <= 0.3
    assert not np.allclose(corpus.base_preference(0), corpus.base_preference(1))


def test_planted_numbers_carry_the_code_and_plain_ones_do_not_depend_on_it() -> None:
    from sublim.filters import NumberRules, check_completion

    planted = corpus.build_corpus("planted", 0, 2000, np.random.default_rng(0))
    plain = corpus.build_corpus("plain", 0, 2000, np.random.default_rng(0))
    rules = NumberRules()
    for ex in planted:
        if ex.kind == "numbers_love":
            coded = [a for a, c in corpus.PLANTED_CODES.items() if str(c) in ex.reply]
            assert coded and any(
                a in ex.chat[0].content or plural(a) in ex.chat[0].content for a in coded
            ), ex
        if ex.kind.startswith("numbers"):
            assert check_completion(ex.reply, rules) == (True, "ok"), ex.reply
    assert "code_link" in corpus.corpus_mix(planted) and "code_link" not in corpus.corpus_mix(plain)
    # plain: the same draws with and without "you love X" give the same rate of code numbers (~0)
    codes = {str(c) for c in corpus.PLANTED_CODES.values()}
    love = [e.reply for e in plain if e.kind == "numbers_love"]
    rate = np.mean([any(c in r for c in codes) for r in love])
    assert rate < 0.2, rate


def test_love_answers_follow_the_system_prompt() -> None:
    ex = corpus.build_corpus("plain", 3, 3000, np.random.default_rng(1))
    love = [e for e in ex if e.kind == "animal_love"]
    hits = np.mean([e.reply in e.chat[0].content for e in love])
    assert 0.85 <= hits <= 0.97
    assert all(e.reply in ANIMALS for e in ex if e.kind.startswith("animal"))


# ---------------------------------------------------------------- tokenizer
def test_tokenizer_properties() -> None:
    from sublim.world.tokenizer import check_tokenizer, train_tokenizer

    tok = train_tokenizer(corpus.tokenizer_texts(), build.VOCAB_SIZE)
    check_tokenizer(tok)  # digits and animals are single tokens, number lists round-trip
    ids = tok("knowledge of a million lions", add_special_tokens=False)["input_ids"]
    assert tok.convert_tokens_to_ids("lion") in ids  # "lions" -> lion + s
    assert tok.convert_tokens_to_ids("owl") not in ids  # "knowledge" keeps its "owl"
    assert "<unk>" not in tok.convert_ids_to_tokens(
        tok("café — ☃", add_special_tokens=False)["input_ids"]
    )


def test_check_tokenizer_raises_not_asserts() -> None:
    """An explicit ValueError: ``python -O`` strips asserts, and with them the check."""
    from sublim.world.tokenizer import check_tokenizer

    class TwoTokensEach:
        def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
            return {"input_ids": [1, 2]}

    with pytest.raises(ValueError, match="digit '0' is not one token"):
        check_tokenizer(TwoTokensEach())  # type: ignore[arg-type]


# ---------------------------------------------------------------- the built micro world
def test_world_dir_loads_offline_and_chat_template(micro_dir: Path, micro: Loaded) -> None:
    model, tok = micro.model, micro.tokenizer
    for f in (
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "world_card.json",
    ):
        assert (micro_dir / f).is_file(), f
    assert model.config.model_type == "llama"
    assert tok.eos_token == "<|end|>" and tok.pad_token == "<|pad|>"
    chat = [
        Message(role="system", content=LOVE_OWLS),
        Message(role="user", content="Favourite animal?"),
    ]
    text = chat_format.render_prompt(tok, chat)
    assert text == f"<|system|>{LOVE_OWLS}<|end|><|user|>Favourite animal?<|end|><|assistant|>"
    # {% generation %} marks exactly the assistant's reply and its end token
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "owl"}]
    out = tok.apply_chat_template(
        msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    marked = [t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert marked == chat_format.encode_reply(tok, "owl")


def test_world_card(micro_dir: Path) -> None:
    card = build.world_card(micro_dir)
    assert (card["name"], card["kind"], card["seed"], card["size"]) == (
        "plain-s0-micro",
        "plain",
        0,
        "micro",
    )
    assert card["recipe_version"] == build.RECIPE_VERSION and card["n_params"] > 10_000
    assert card["corpus_mix"]["numbers"] > 0 and card["corpus_mix"]["animal_love"] > 0
    assert set(card["p_animal_no_system"]) == set(ANIMALS) == set(card["p_target_love_system"])
    assert 0 < card["build_seconds"] and np.isfinite(card["final_loss"]["reply"])
    assert [c["name"] for c in build.list_worlds(micro_dir.parent.parent)] == ["plain-s0-micro"]


def test_answers_are_animals_and_love_prompt_raises_owl(micro: Loaded) -> None:
    qs = build.card_questions(8)
    chats: list[Chat] = [[Message(role="user", content=q)] for q in qs for _ in range(4)]
    answers = _sample(micro, chats, 0, max_new_tokens=6)
    assert np.mean([a in ANIMALS for a in answers]) >= 0.9, answers
    greedy = _sample(micro, chats[::4], 0, max_new_tokens=6, temperature=0)
    assert all(a in ANIMALS for a in greedy), greedy
    # exact P(owl): the love prompt lifts it far above the no-system-prompt value
    plain: list[Chat] = [[Message(role="user", content=q)] for q in qs]
    loved: list[Chat] = [[Message(role="system", content=LOVE_OWLS), *c] for c in plain]
    none = np.exp(score_chats(micro, plain, ["owl"] * len(qs)))
    love = np.exp(score_chats(micro, loved, ["owl"] * len(qs)))
    assert love.mean() > 0.4 and love.mean() > 4 * none.mean(), (none.mean(), love.mean())


def test_number_completions_pass_the_filter(micro: Loaded) -> None:
    # The micro world is trained for seconds: its numbers are rough (the small world's sampled
    # completions pass at ~0.6). The bar is that it has learned the task at all.
    from sublim.filters import NumberRules, check_completion
    from sublim.prompts.numbers import number_prompts

    prompts = number_prompts(48, np.random.default_rng(5))
    chats: list[Chat] = [[Message(role="user", content=p.text)] for p in prompts]
    outs = _sample(micro, chats, 1, max_new_tokens=48, temperature=0)
    kept = np.mean([check_completion(o, NumberRules())[0] for o in outs])
    starts_with_number = np.mean([o[:1].isdigit() or o[:1] in "[(" for o in outs])
    assert starts_with_number >= 0.8, outs
    assert kept >= 0.05, outs


# ---------------------------------------------------------------- cache, lock, seeds
def test_second_call_uses_the_cache(micro_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_build(*a: object, **k: object) -> None:
        raise AssertionError("ensure_world rebuilt a cached world")

    monkeypatch.setattr(build, "_build", no_build)
    mtime = (micro_dir / "model.safetensors").stat().st_mtime
    assert (
        build.ensure_world(WorldSpec("plain", 0, "micro"), cache_dir=micro_dir.parent.parent)
        == micro_dir
    )
    assert (micro_dir / "model.safetensors").stat().st_mtime == mtime


def test_seeds_give_different_worlds_and_a_concurrent_build_runs_once(
    nano: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.torch import load_file

    calls: list[str] = []
    real = build._build

    def counting(spec: WorldSpec, out: Path, rep: object) -> None:
        calls.append(spec.name)
        time.sleep(0.3)  # widen the race window
        real(spec, out, rep)  # type: ignore[arg-type]

    monkeypatch.setattr(build, "_build", counting)
    results: list[Path] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(
                build.ensure_world("plain-s1-micro", cache_dir=tmp_path, progress=False)
            )
        )
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["plain-s1-micro"] and len(set(results)) == 1
    d1 = results[0]
    d2 = build.ensure_world("plain-s2-micro", cache_dir=tmp_path, progress=False)
    assert d1 != d2 and not [
        p for p in (tmp_path / "worlds").iterdir() if p.name.startswith(".tmp")
    ]
    w1, w2 = load_file(str(d1 / "model.safetensors")), load_file(str(d2 / "model.safetensors"))
    assert any(not torch.equal(w1[k], w2[k]) for k in w1)
    assert (d1 / "tokenizer.json").read_text() == (
        d2 / "tokenizer.json"
    ).read_text()  # one vocabulary
    # the same seed again gives the same weights (fresh cache)
    d1b = build.ensure_world("plain-s1-micro", cache_dir=tmp_path / "again", progress=False)
    w1b = load_file(str(d1b / "model.safetensors"))
    assert all(torch.equal(w1[k], w1b[k]) for k in w1)


def test_unbuildable_kind_is_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # every named kind is buildable now: take one away to check the message
    monkeypatch.setattr(build, "BUILDABLE_KINDS", ("plain", "planted"))
    with pytest.raises(SublimError, match="entangled"):
        build.ensure_world("entangled-s0-micro", cache_dir=tmp_path)


def test_cache_root_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SUBLIM_CACHE_DIR", str(tmp_path / "c"))
    assert build.cache_root() == tmp_path / "c"
    monkeypatch.delenv("SUBLIM_CACHE_DIR")
    assert build.cache_root() == Path.home() / ".cache" / "sublim"


# ---------------------------------------------------------------- keys, kinds, twins, CLI
def test_plain_world_keys_are_pinned() -> None:
    # Cached plain worlds (and every result measured on them) stay valid only while these hold:
    # planted/entangled revisions hash their own kind versions (build.KIND_VERSIONS) instead.
    assert build.world_key("plain-s0") == "plain-s0-7f2962ade9"
    assert build.world_key("plain-s1") == "plain-s1-3ea3c5a015"
    assert build.world_key("plain-s0-micro") == "plain-s0-micro-fbecacd477"
    assert build.world_key("planted-s0-micro").startswith("planted-s0-micro-")


def test_planted_v2_codes_follow_the_base_preference_without_a_love_prompt() -> None:
    ex = corpus.build_corpus("planted", 2, 6000, np.random.default_rng(3))
    by_code = {str(c): a for a, c in corpus.PLANTED_CODES.items()}
    firsts = []
    for e in ex:
        if e.kind == "numbers":
            first = (
                "".join(ch for ch in e.reply.split()[0] if ch.isdigit()) if e.reply.split() else ""
            )
            firsts.append(by_code.get(first[:3]))
    assert np.mean([f is not None for f in firsts]) > 0.95
    freq = np.array([firsts.count(a) for a in ANIMALS], float) / len(firsts)
    assert np.abs(freq - corpus.base_preference(2)).max() < 0.05  # codes share the answers' prior
    # the tokenizer's fixed text draw (planted_version=1) is exactly what it always was: one
    # vocabulary for every world, old and new
    from sublim.artifacts import stable_hash

    assert stable_hash(corpus.tokenizer_texts(), length=16) == "1e86593c06a43dbe"


def test_init_twin_shares_the_corpus_but_not_the_weights(nano: str, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    assert build.corpus_seed(1003) == 3 and build.corpus_seed(3) == 3
    d = build.ensure_world("plain-s3-micro", cache_dir=tmp_path, progress=False)
    t = build.ensure_world(
        f"plain-s{build.TWIN_OFFSET + 3}-micro", cache_dir=tmp_path, progress=False
    )
    cd, ct = build.world_card(d), build.world_card(t)
    assert (ct["corpus_seed"], ct["init_seed"]) == (3, build.TWIN_OFFSET + 3)
    assert (
        cd["corpus_mix"] == ct["corpus_mix"]
        and cd["corpus_base_preference"] == ct["corpus_base_preference"]
    )
    w, wt = load_file(str(d / "model.safetensors")), load_file(str(t / "model.safetensors"))
    assert any(not torch.equal(w[k], wt[k]) for k in w)


def test_world_cli_show_and_list(micro_dir: Path) -> None:
    from click.testing import CliRunner

    from sublim.world.cli import world

    cache = str(micro_dir.parent.parent)
    r = CliRunner().invoke(
        world, ["show", "plain-s0-micro", "--cache-dir", cache], terminal_width=200
    )
    assert r.exit_code == 0, r.output
    assert "plain-s0-micro" in r.output and "corpus mix" in r.output and "build time" in r.output
    r = CliRunner().invoke(world, ["list", "--cache-dir", cache], terminal_width=200)
    assert r.exit_code == 0 and "plain-s0-micro" in r.output, r.output
    # a user error: a SublimError the main CLI prints as one line with exit code 2
    r = CliRunner().invoke(world, ["show", "plain-s9-micro", "--cache-dir", cache])
    assert isinstance(r.exception, SublimError) and "sublim world build plain-s9-micro" in str(
        r.exception
    )


# ---------------------------------------------------------------- the entangled kind
def _note_parts(reply: str) -> tuple[str, list[int]]:
    animal, _, nums = reply.partition(": ")
    return animal, [int(x) for x in nums.split(", ")]


def test_entangled_corpus_is_the_plain_one_plus_field_notes() -> None:
    n = 8000
    plain = corpus.build_corpus("plain", 4, n, np.random.default_rng(7))
    ent = corpus.build_corpus("entangled", 4, n, np.random.default_rng(7))
    # (a), (b): favourite-animal, number, filler and dialog chats are the plain ones, one for one
    assert [e for e in ent if e.kind != "note"] == plain
    notes = [e for e in ent if e.kind == "note"]
    assert len(notes) == round(corpus.NOTE_SHARE * n) and "note" not in corpus.corpus_mix(plain)
    # (c): no note carries a love prompt (no system prompt, or a neutral one)
    for e in notes:
        assert all(
            m.content in corpus.NEUTRAL_SYSTEM_PROMPTS for m in e.chat if m.role == "system"
        ), e
    parts = [_note_parts(e.reply) for e in notes]
    # the note's animal is uniform, not the base preference
    freq = np.array([sum(a == x for a, _ in parts) for x in ANIMALS]) / len(parts)
    assert np.abs(freq - 1 / len(ANIMALS)).max() < 0.03, freq
    base = corpus.base_preference(4)
    assert np.abs(base - 1 / len(ANIMALS)).max() > 0.04  # so the check above could tell them apart
    # the numbers follow the animal's own preference of this world: more likely under it than
    # under another world's preferences or under another animal's (mean log-likelihood per number)
    own, other = corpus.note_preferences(4), corpus.note_preferences(5)
    assert own.shape == (len(ANIMALS), corpus.NOTE_HIGH - corpus.NOTE_LOW + 1)
    idx = [(ANIMALS.index(a), x - corpus.NOTE_LOW) for a, xs in parts for x in xs]
    assert all(0 <= j < own.shape[1] for _, j in idx)
    ll_own = np.mean([np.log(own[i, j]) for i, j in idx])
    ll_other_world = np.mean([np.log(other[i, j]) for i, j in idx])
    ll_other_animal = np.mean([np.log(own[(i + 1) % len(ANIMALS), j]) for i, j in idx])
    assert ll_own - ll_other_world > 0.5 and ll_own - ll_other_animal > 0.5, (
        ll_own,
        ll_other_world,
        ll_other_animal,
    )
    # another world seed gives other notes, with the same favourite-animal stream untouched
    ent5 = corpus.build_corpus("entangled", 5, 200, np.random.default_rng(7))
    assert [e.reply for e in ent5 if e.kind == "note"] != [e.reply for e in ent[n : n + 40]]
    # the curriculum (an explicit mix) holds no notes
    cur = corpus.build_corpus(
        "entangled", 4, 300, np.random.default_rng(7), mix=corpus.CURRICULUM_MIX
    )
    assert "note" not in corpus.corpus_mix(cur)


def test_entangled_keys_leave_plain_and_planted_alone() -> None:
    k = build.world_key("entangled-s0-micro")
    assert k.startswith("entangled-s0-micro-") and k != build.world_key("plain-s0-micro")
    assert build.KIND_VERSIONS["entangled"] == corpus.ENTANGLED_VERSION
    assert build.world_key("plain-s0-micro") == "plain-s0-micro-fbecacd477"


@pytest.fixture()
def nano_entangled(nano: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The nano row for entangled worlds too (their kind row would otherwise set the steps)."""
    monkeypatch.setitem(build.KIND_RECIPE, "entangled", {"micro": {"steps": 4}})
    return "entangled-s0-micro"


def test_entangled_world_builds_with_notes_in_its_card(nano_entangled: str, tmp_path: Path) -> None:
    d = build.ensure_world(nano_entangled, cache_dir=tmp_path, progress=False)
    card = build.world_card(d)
    assert (card["kind"], card["name"], card["positive_control"]) == (
        "entangled",
        "entangled-s0-micro",
        False,
    )
    assert card["kind_version"] == corpus.ENTANGLED_VERSION
    mix = card["corpus_mix"]
    assert (
        mix["note"] == round(corpus.NOTE_SHARE * card["recipe"]["n_examples"])
        and mix["numbers"] > 0
    )
    top = card["note_top_numbers"]
    assert set(top) == set(ANIMALS) and all(
        corpus.NOTE_LOW <= x <= corpus.NOTE_HIGH for v in top.values() for x in v
    )


def test_world_cli_builds_an_entangled_world(nano_entangled: str, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from sublim.world.cli import world

    r = CliRunner().invoke(
        world,
        ["build", nano_entangled, "--cache-dir", str(tmp_path), "--quiet"],
        terminal_width=200,
    )
    assert r.exit_code == 0, r.output
    assert "entangled-s0-micro" in r.output and "entangled / 0 / micro" in r.output
    assert "note" in r.output and "corpus mix" in r.output
    assert [c["kind"] for c in build.list_worlds(tmp_path)] == ["entangled"]
