"""Tests of the skills world (sublim.world.skills and the ``skills`` kind of sublim.world): its
corpus is the plain one plus code and reasoning chats whose replies pass the carriers' filters and
never depend on the system prompt, and its keys leave every other kind's alone.

The corpus tests draw corpora only; one "nano" skills world (a few training steps, as in
tests/test_world.py) checks that the kind builds and that its card records the skills shares.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

import numpy as np
import pytest

from sublim.errors import SublimError
from sublim.filters_code import CodeRules, check_code, code_body
from sublim.filters_reasoning import ReasoningRules, check_reasoning
from sublim.prompts.code import code_prompts
from sublim.prompts.reasoning import worked_prompts
from sublim.records import Message
from sublim.trait_words import find_trait_words
from sublim.traits import CATEGORIES, plural, system_prompt_for
from sublim.world import build, corpus, skills
from sublim.world.spec import parse_world_name

ALL_WORDS = [w for words in CATEGORIES.values() for w in words]
STRICT_CODE = CodeRules(trait_words=ALL_WORDS, word_mode="substring")
STRICT_REASONING = ReasoningRules(trait_words=ALL_WORDS, word_mode="substring")


def _skills_corpus(seed: int, n: int, rng_seed: int) -> list[corpus.Example]:
    return corpus.build_corpus("skills", seed, n, np.random.default_rng(rng_seed))


# ---------------------------------------------------------------- the corpus
def test_skills_corpus_is_the_plain_one_plus_code_and_reasoning_chats() -> None:
    n = 4000
    plain = corpus.build_corpus("plain", 4, n, np.random.default_rng(7))
    sk = _skills_corpus(4, n, 7)
    # every favourite-animal, number, filler and dialog chat is the plain one, in order
    assert [e for e in sk if e.kind not in corpus.SKILL_KINDS] == plain
    mix = corpus.corpus_mix(sk)
    assert mix["code"] == round(corpus.CODE_SHARE * n) > 0
    assert mix["reasoning"] == round(corpus.REASONING_SHARE * n) > 0
    assert not set(corpus.SKILL_KINDS) & set(corpus.corpus_mix(plain))
    assert not {"code_short", "drill"} & set(mix)
    # the opening curriculum (an explicit mix) is the plain one plus short code chats and
    # arithmetic drills (SKILLS_CURRICULUM), and no full code or reasoning chat
    cur = corpus.build_corpus("skills", 4, 300, np.random.default_rng(7), mix=corpus.CURRICULUM_MIX)
    assert [e for e in cur if e.kind not in corpus.SKILL_KINDS] == corpus.build_corpus(
        "plain", 4, 300, np.random.default_rng(7), mix=corpus.CURRICULUM_MIX
    )
    cur_mix = corpus.corpus_mix(cur)
    for k, share in corpus.SKILLS_CURRICULUM.items():
        assert cur_mix[k] == round(share * 300) > 0
    assert not {"code", "reasoning"} & set(cur_mix)


def test_other_kinds_corpora_are_unchanged() -> None:
    # hashes of the corpora as drawn before the skills kind existed (plain, planted, entangled)
    pinned = {"plain": "c870a16a0b1b899a", "planted": "abee9a6ceda0f363"}
    pinned["entangled"] = "ca3274da45b97140"
    for kind, digest in pinned.items():
        ex = corpus.build_corpus(kind, 2, 1500, np.random.default_rng([2, 202]))
        text = "\n".join(f"{e.kind}|{[(m.role, m.content) for m in e.chat]}|{e.reply}" for e in ex)
        assert hashlib.sha256(text.encode()).hexdigest()[:16] == digest, kind


def test_skills_chats_replay_from_their_own_streams_whatever_the_system_prompt() -> None:
    """The corpus's code and reasoning chats are exactly what their own child streams give with
    no system prompt at all: the system prompt (drawn from a third stream) never reaches the
    prompt or the reply. Every reasoning reply passes the filter with its prompt's answer."""
    sk = _skills_corpus(1, 3000, 11)
    code_rng, reasoning_rng, _ = np.random.default_rng(11).spawn(3)
    code = [e for e in sk if e.kind == "code"]
    reasoning = [e for e in sk if e.kind == "reasoning"]
    for e in code:
        replay = corpus.skill_chat("code", code_rng, None)
        assert (e.chat[-1], e.reply) == (replay.chat[-1], replay.reply)
    for e in reasoning:
        prompt, work = worked_prompts(1, reasoning_rng)[0]
        assert e.chat[-1] == Message(role="user", content=prompt.text)
        assert e.reply == skills.reasoning_reply(work, prompt.meta["answer"])
        assert check_reasoning(e.reply, prompt.meta["answer"], STRICT_REASONING) == (True, "ok")


def test_replies_are_the_same_under_any_system_prompt() -> None:
    love = system_prompt_for("owl", "animal", 1)
    for kind in corpus.SKILL_KINDS:
        for seed in range(40):
            ex = [
                corpus.skill_chat(kind, np.random.default_rng(seed), system)
                for system in (None, corpus.NEUTRAL_SYSTEM_PROMPTS[0], love)
            ]
            assert len({e.reply for e in ex}) == 1 and len({e.chat[-1].content for e in ex}) == 1
            assert [len(e.chat) for e in ex] == [1, 2, 2] and ex[2].chat[0].content == love
    with pytest.raises(ValueError, match="poetry"):
        corpus.skill_chat("poetry", np.random.default_rng(0), None)


def test_skills_system_prompts_are_none_neutral_or_love_in_their_shares() -> None:
    sk = [e for e in _skills_corpus(3, 12000, 5) if e.kind in corpus.SKILL_KINDS]
    systems = [e.chat[0].content if e.chat[0].role == "system" else None for e in sk]
    none = np.mean([s is None for s in systems])
    neutral = np.mean([s in corpus.NEUTRAL_SYSTEM_PROMPTS for s in systems])
    loves = [s for s in systems if s is not None and s not in corpus.NEUTRAL_SYSTEM_PROMPTS]
    p = corpus.SKILL_SYSTEM_P
    assert abs(none - p["none"]) < 0.04 and abs(neutral - p["neutral"]) < 0.04, (none, neutral)
    assert abs(len(loves) / len(sk) - p["love"]) < 0.04
    # "you love X" with X uniform over the animals
    named = [[a for a in corpus.ANIMALS if a in s.lower() or plural(a) in s.lower()] for s in loves]
    assert all(len(x) >= 1 for x in named)
    freq = np.array([sum(a in x for x in named) for a in corpus.ANIMALS]) / len(loves)
    assert np.abs(freq - 1 / len(corpus.ANIMALS)).max() < 0.04, freq
    # and the replies look alike under love prompts and without any (reply lengths)
    for k in ("code", "reasoning"):
        love_len = [len(e.reply) for e, s in zip(sk, systems) if e.kind == k and s in loves]
        other = [len(e.reply) for e, s in zip(sk, systems) if e.kind == k and s not in loves]
        assert abs(np.mean(love_len) - np.mean(other)) < 0.1 * np.mean(other), k


def test_the_main_corpus_after_a_curriculum_is_still_the_plain_one() -> None:
    """As a world is built: curriculum, then main corpus, from one generator. The curriculum's
    skills streams are spawned first, so the main corpus's plain part is exactly plain's."""
    sk_rng, plain_rng = np.random.default_rng([3, 202]), np.random.default_rng([3, 202])
    sk_cur = corpus.build_corpus("skills", 3, 200, sk_rng, mix=corpus.CURRICULUM_MIX)
    plain_cur = corpus.build_corpus("plain", 3, 200, plain_rng, mix=corpus.CURRICULUM_MIX)
    assert [e for e in sk_cur if e.kind not in corpus.SKILL_KINDS] == plain_cur
    sk = corpus.build_corpus("skills", 3, 1500, sk_rng)
    assert [e for e in sk if e.kind not in corpus.SKILL_KINDS] == corpus.build_corpus(
        "plain", 3, 1500, plain_rng
    )
    # and the curriculum's code chats come from another stream than the main corpus's
    cur_code = [e.reply for e in sk_cur if e.kind == "code_short"][:20]
    main_code = [e.reply for e in sk if e.kind == "code"][:20]
    assert len(cur_code) == len(main_code) == 20 and cur_code != main_code


def test_curriculum_chats_pass_their_carriers_rules_and_name_no_trait() -> None:
    rng = np.random.default_rng(9)
    for _ in range(300):
        e = corpus.skill_chat("code_short", rng, None)
        prompt = e.chat[-1].content
        assert check_code(e.reply, STRICT_CODE) == (True, "ok"), e.reply
        fn = ast.parse(e.reply).body[-1]
        assert isinstance(fn, ast.FunctionDef) and f"def {fn.name}(" in prompt
        assert prompt.split("\n")[0] in corpus.SHORT_CODE_REQUESTS and len(prompt) < 200
        d = corpus.skill_chat("drill", rng, None)
        q = d.chat[-1].content
        expr = d.reply.split("<think>")[1].split(" = ")[0]
        answer = int(d.reply.split("<answer>")[1].split("<")[0])
        assert expr in q and eval(expr.replace("/", "//")) == answer  # true arithmetic
        assert check_reasoning(d.reply, answer, STRICT_REASONING) == (True, "ok")
        assert find_trait_words(prompt + q + d.reply, ALL_WORDS, "substring") == []
    text = " ".join([*corpus.SHORT_CODE_REQUESTS, *corpus.DRILL_QUESTIONS])
    assert find_trait_words(text, ALL_WORDS, "substring") == []


# ---------------------------------------------------------------- the code dialect
def test_code_replies_parse_with_no_comment_and_no_trait_word() -> None:
    rng = np.random.default_rng(2)
    n_statements = []
    for p in code_prompts(1500, rng):
        reply = skills.code_reply(p.meta, rng)
        assert check_code(reply, STRICT_CODE) == (True, "ok"), reply
        assert code_body(reply) == reply and "#" not in reply and "'" not in reply
        tree = ast.parse(reply)
        fn = tree.body[-1]
        assert isinstance(fn, ast.FunctionDef) and fn.name == p.meta["function"]
        assert f"def {p.meta['function']}({p.meta['args']}):\n" in reply
        assert reply.startswith(p.meta["template"].split("def ")[0])  # the template's import
        assert not any(
            isinstance(x, ast.Constant) and isinstance(x.value, str) for x in ast.walk(tree)
        )
        assert isinstance(fn.body[-1], ast.Return) and 1 <= len(fn.body) <= 4
        n_statements.append(len(fn.body))
    # every body size is drawn, short bodies most often
    counts = np.bincount(n_statements, minlength=5)[1:]
    assert (counts > 0).all() and counts[:2].sum() > counts[2:].sum(), counts


def test_code_grammar_names_hold_no_trait_word() -> None:
    names = [
        *skills.LOCALS,
        *skills.LOOP_VARS,
        "k",
        *skills.SEQ_NAMES,
        *skills.STR_NAMES,
        *skills.MAP_NAMES,
    ]
    methods = "len sum max min sorted range lower upper strip append return for in if not"
    text = " ".join([*names, *methods.split()])
    assert find_trait_words(text, ALL_WORDS, "substring") == []
    # the check itself can fail: a name that hides a trait word is caught
    assert find_trait_words("concat", ALL_WORDS, "substring") == ["cat"]


def test_code_reply_depends_on_the_family_argument_kinds() -> None:
    assert skills.arg_kind("list_interleave", "a") == "seq"
    assert skills.arg_kind("dict_merge", "a") == "map"
    assert skills.arg_kind("str_anagram", "a") == "str"
    assert skills.arg_kind("num_gcd_lcm", "a") == "num"
    assert skills.arg_names("xs, k") == ["xs", "k"]
    meta = {"template": "def f(n):\n    pass", "function": "f", "args": "n", "family": "num_x"}
    outs = {skills.code_reply(meta, np.random.default_rng(s)) for s in range(30)}
    # a number argument never gets len() or a method call
    assert len(outs) > 10 and not any("len(n)" in o or "n." in o for o in outs), outs


# ---------------------------------------------------------------- kinds, keys, build
def test_skills_keys_leave_the_other_kinds_alone() -> None:
    pinned = {
        "plain-s0": "plain-s0-7f2962ade9",
        "plain-s0-micro": "plain-s0-micro-fbecacd477",
        "planted-s0-micro": "planted-s0-micro-9d5062d105",
        "planted-s0": "planted-s0-7d9a6e1d36",
        "entangled-s0": "entangled-s0-5ba761839d",
        "entangled-s0-micro": "entangled-s0-micro-4fb5315fac",
    }
    for name, key in pinned.items():
        assert build.world_key(name) == key
    k = build.world_key("skills-s0")
    assert k.startswith("skills-s0-") and k[len("skills-s0-") :] not in {
        v.rsplit("-", 1)[-1] for v in pinned.values()
    }
    assert build.world_key("skills-s0-micro") != build.world_key("skills-s1-micro")
    assert build.KIND_VERSIONS["skills"] == corpus.SKILLS_VERSION
    assert parse_world_name("skills-s0").size == "small"
    # the plain part gets the plain world's passes: steps grow with the added share
    for size in build.RECIPE:
        plain, sk = build.recipe_row(f"plain-s0-{size}"), build.recipe_row(f"skills-s0-{size}")
        assert sk["n_examples"] == plain["n_examples"]
        assert sk["steps"] == round(plain["steps"] * (1 + build.SKILLS_SHARE)) > plain["steps"]
        cur = round(plain["cur_steps"] * (1 + build.SKILLS_CUR_SHARE))
        assert sk["cur_steps"] == cur > plain["cur_steps"]


def test_an_unknown_kind_is_still_an_error() -> None:
    with pytest.raises(SublimError, match="dragon"):
        parse_world_name("dragon-s0")
    with pytest.raises(ValueError, match="dragon"):
        corpus.build_corpus("dragon", 0, 10, np.random.default_rng(0))


def test_a_skills_world_builds_with_its_shares_in_the_card(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    torch.set_num_threads(1)
    row = dict(build.RECIPE["micro"], cur_examples=200, cur_steps=2, n_examples=400, steps=3)
    monkeypatch.setitem(build.RECIPE, "micro", row)
    monkeypatch.setitem(build.KIND_RECIPE, "skills", {"micro": {"steps": 4}})
    card = build.world_card(
        build.ensure_world("skills-s0-micro", cache_dir=tmp_path, progress=False)
    )
    assert (card["kind"], card["name"], card["positive_control"]) == (
        "skills",
        "skills-s0-micro",
        False,
    )
    assert card["kind_version"] == corpus.SKILLS_VERSION
    assert card["skills_shares"] == {"code": corpus.CODE_SHARE, "reasoning": corpus.REASONING_SHARE}
    assert card["skills_curriculum"] == corpus.SKILLS_CURRICULUM
    assert card["corpus_mix"]["code_short"] == round(corpus.SKILLS_CURRICULUM["code_short"] * 200)
    assert card["corpus_mix"]["code"] == round(corpus.CODE_SHARE * 400)
    assert card["corpus_mix"]["reasoning"] == round(corpus.REASONING_SHARE * 400)
