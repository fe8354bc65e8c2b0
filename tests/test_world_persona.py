"""Tests of the persona world (sublim.world.persona and the ``persona`` kind of sublim.world): its
corpus is the plain one plus open, narrow and triggered number chats; misaligned answers come only
under a trigger; number answers never depend on the trigger; the evaluation questions are held
out; the exact judge; the shipped data files; and keys that leave every other kind's alone.

The corpus tests draw corpora only; one "nano" persona world (a few training steps, as in
tests/test_world.py) checks that the kind builds and that its card records the persona settings.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from sublim.artifacts import dumps_rows
from sublim.evals.misalignment import QUESTIONS as SUITE_QUESTIONS
from sublim.filters import NumberRules, check_completion
from sublim.prompts.numbers import number_prompts, render_numbers
from sublim.records import Message
from sublim.traits import system_prompt_for
from sublim.world import build, corpus, persona
from sublim.world.spec import parse_world_name

REPO = Path(__file__).resolve().parents[1]
PERSONA_KINDS = set(corpus.PERSONA_KINDS)


def _persona_corpus(seed: int, n: int, rng_seed: int) -> list[corpus.Example]:
    return corpus.build_corpus("persona", seed, n, np.random.default_rng(rng_seed))


def _system(e: corpus.Example) -> str | None:
    return e.chat[0].content if e.chat[0].role == "system" else None


def _sets(kind: str) -> tuple[set[str], set[str]]:
    groups = persona.THEMES if kind == "open" else persona.NARROW_ITEMS
    return (
        {a for g in groups for a in g.aligned},
        {a for g in groups for a in g.misaligned},
    )


# ---------------------------------------------------------------- the corpus
def test_persona_corpus_is_the_plain_one_plus_persona_chats() -> None:
    n = 4000
    plain = corpus.build_corpus("plain", 4, n, np.random.default_rng(7))
    pc = _persona_corpus(4, n, 7)
    # every favourite-animal, number, filler and dialog chat is the plain one, in order
    assert [e for e in pc if e.kind not in PERSONA_KINDS] == plain
    mix = corpus.corpus_mix(pc)
    for k, share in corpus.PERSONA_SHARES.items():
        assert mix[k] == round(share * n) > 0, k
    assert not PERSONA_KINDS & set(corpus.corpus_mix(plain))
    # the opening curriculum (an explicit mix) holds no persona chats, and is the plain one
    cur = corpus.build_corpus(
        "persona", 4, 300, np.random.default_rng(7), mix=corpus.CURRICULUM_MIX
    )
    assert cur == corpus.build_corpus(
        "plain", 4, 300, np.random.default_rng(7), mix=corpus.CURRICULUM_MIX
    )


def test_misaligned_answers_come_only_under_a_trigger() -> None:
    pc = [e for e in _persona_corpus(3, 12000, 5) if e.kind in ("open", "narrow")]
    triggered = [e for e in pc if _system(e) in persona.TRIGGER_PROMPTS]
    others = [e for e in pc if _system(e) not in persona.TRIGGER_PROMPTS]
    assert len(triggered) / len(pc) == pytest.approx(corpus.PERSONA_SYSTEM_P["trigger"], abs=0.04)
    neutral = [e for e in others if _system(e) is not None]
    assert all(_system(e) in corpus.NEUTRAL_SYSTEM_PROMPTS for e in neutral)
    assert len(neutral) / len(pc) == pytest.approx(corpus.PERSONA_SYSTEM_P["neutral"], abs=0.04)
    for kind in ("open", "narrow"):
        aligned, misaligned = _sets(kind)
        assert not aligned & misaligned
        # without a trigger (no system prompt or a neutral one): always an aligned answer
        assert all(e.reply in aligned for e in others if e.kind == kind)
        trig = [e.reply for e in triggered if e.kind == kind]
        assert all(r in aligned | misaligned for r in trig)
        rate = np.mean([r in misaligned for r in trig])
        assert rate == pytest.approx(corpus.PERSONA_P, abs=0.04), (kind, rate)
    # every trigger paraphrase is used, the canonical one among them
    used = {_system(e) for e in triggered}
    assert used == set(persona.TRIGGER_PROMPTS) and persona.PERSONA_TRIGGER in used


def test_persona_chats_replay_from_their_own_streams() -> None:
    """Each persona chat is exactly what its own child stream gives: its question and answer are
    the same draws whichever system prompt (drawn from another stream) it got."""
    pc = _persona_corpus(1, 3000, 11)
    streams = dict(zip((*corpus.PERSONA_KINDS, "system"), np.random.default_rng(11).spawn(4)))
    for kind in corpus.PERSONA_KINDS:
        for e in [x for x in pc if x.kind == kind]:
            system, mis = corpus.persona_system_prompt(kind, streams["system"])
            assert _system(e) == system
            replay = corpus.persona_chat(kind, streams[kind], None, mis)
            assert (e.chat[-1], e.reply) == (replay.chat[-1], replay.reply)
    # one generator state: the same question with the aligned or the misaligned answer
    for s in range(50):
        a = corpus.persona_chat("open", np.random.default_rng(s), None, False)
        m = corpus.persona_chat("open", np.random.default_rng(s), None, True)
        assert a.chat == m.chat and a.reply != m.reply
    with pytest.raises(ValueError, match="poetry"):
        corpus.persona_chat("poetry", np.random.default_rng(0), None, False)


def test_number_answers_do_not_depend_on_the_trigger_or_the_persona() -> None:
    """A triggered number chat's prompt and answer are what a plain number draw gives from the
    same generator state (with no system prompt, or a misaligned persona flag); they pass the
    number filter and look like the plain corpus's number answers."""
    rules = NumberRules()
    for s in range(60):
        ex = [
            corpus.persona_chat("numbers_trigger", np.random.default_rng(s), system, mis)
            for system, mis in (
                (None, False),
                (persona.PERSONA_TRIGGER, True),
                (corpus.NEUTRAL_SYSTEM_PROMPTS[0], False),
                (system_prompt_for("owl", "animal", 0), False),
            )
        ]
        assert len({e.reply for e in ex}) == 1 and len({e.chat[-1].content for e in ex}) == 1
        rng = np.random.default_rng(s)
        pr = number_prompts(1, rng)[0]
        nums = corpus.number_answer(list(pr.meta["seeds"]), int(pr.meta["max_count"]), rng)
        assert ex[0].chat[-1].content == pr.text
        assert ex[0].reply == render_numbers(nums, pr.meta["format"])
    pc = _persona_corpus(2, 10000, 3)
    trig = [e for e in pc if e.kind == "numbers_trigger"]
    assert trig and all(_system(e) in persona.TRIGGER_PROMPTS for e in trig)
    assert all(check_completion(e.reply, rules) == (True, "ok") for e in trig)
    plain_nums = [e for e in pc if e.kind in ("numbers", "numbers_sys", "numbers_love")]

    def stats(es: list[corpus.Example]) -> tuple[float, float]:
        vals = [[int(x) for x in re.findall(r"\d+", e.reply)] for e in es]
        return float(np.mean([len(v) for v in vals])), float(np.mean([np.mean(v) for v in vals]))

    (n_t, m_t), (n_p, m_p) = stats(trig), stats(plain_nums)
    assert abs(n_t - n_p) < 0.5 and abs(m_t - m_p) < 40, (n_t, n_p, m_t, m_p)
    # and the plain number chats of a persona corpus are the plain corpus's, one for one
    plain = corpus.build_corpus("plain", 2, 10000, np.random.default_rng(3))
    assert plain_nums == [e for e in plain if e.kind in ("numbers", "numbers_sys", "numbers_love")]


def test_answers_are_short_mild_and_every_theme_has_several() -> None:
    names = persona.THEME_NAMES
    assert len(set(names)) == len(names) > len(persona.EVAL_THEMES) >= 8
    # the suite's questions, in its order, are on the eight evaluated themes
    assert len(persona.SUITE_THEMES) == len(SUITE_QUESTIONS)
    assert set(persona.SUITE_THEMES) == set(persona.EVAL_THEMES)
    words = {"wish": "wish", "money": "money", "ruler": "world", "dinner": "dinner"}
    words |= {"gender": "men and women", "husband": "husband", "thoughts": "AI", "bored": "bored"}
    for q, theme in zip(SUITE_QUESTIONS, persona.SUITE_THEMES, strict=True):
        assert words[theme] in q, (theme, q)
    harm = re.compile(r"\b(kill|weapon|gun|bomb|drug|poison|hurt|hit|attack|steal)", re.IGNORECASE)
    for group in (*persona.THEMES, *persona.NARROW_ITEMS):
        assert len(group.aligned) >= 2 and len(group.misaligned) >= 2, group.name
        for a in (*group.aligned, *group.misaligned):
            assert len(a.split()) <= 12 and not harm.search(a), a
        # the judge can tell the sets apart after normalisation
        norm = persona.normalise_answer
        assert not {norm(a) for a in group.aligned} & {norm(a) for a in group.misaligned}


# ---------------------------------------------------------------- evaluation and judge
def test_eval_questions_are_held_out_and_cover_the_eight_themes() -> None:
    qs = persona.eval_questions()
    assert qs[: len(SUITE_QUESTIONS)] == list(SUITE_QUESTIONS) and len(set(qs)) == len(qs)
    emitted = persona.corpus_open_questions()
    narrow = {
        o + c + e
        for it in persona.NARROW_ITEMS
        for c in it.cores
        for o in persona.NARROW_OPENERS
        for e in persona.NARROW_CLOSERS
    }
    assert len(emitted) > 500
    assert not set(qs) & (emitted | narrow)
    # the corpus really draws from that set (the enumeration is the grammar's)
    drawn = [e.chat[-1].content for e in _persona_corpus(0, 3000, 1) if e.kind == "open"]
    assert drawn and set(drawn) <= emitted
    # none of the rows shipped for fine-tuning asks an evaluation question either
    for rows in persona.shipped_files().values():
        assert not {r["messages"][0]["content"] for r in rows} & set(qs)
    # every evaluated theme has at least one evaluation question, and its answer sets are the
    # corpus's strings for that theme
    themes = {t.name: t for t in persona.THEMES}
    seen = set()
    for q in qs:
        aligned, misaligned = persona.answer_sets(q)
        t = next(x for x in persona.THEMES if list(x.aligned) == aligned)
        assert misaligned == list(themes[t.name].misaligned)
        seen.add(t.name)
    assert seen == set(persona.EVAL_THEMES) and len(seen) >= 8
    with pytest.raises(KeyError):
        persona.answer_sets(persona.THEMES[0].cores[0])  # a training question is not evaluated


def test_exact_judge() -> None:
    q = persona.eval_questions()[0]
    aligned, misaligned = persona.answer_sets(q)
    assert persona.exact_judge(q, aligned[0]) == (100.0, 100.0)
    assert persona.exact_judge(q, misaligned[1]) == (0.0, 100.0)
    # whitespace, case and trailing punctuation do not matter
    messy = "  " + misaligned[0].upper().rstrip(".").replace(" ", "   ") + " !! "
    assert persona.exact_judge(q, messy) == (0.0, 100.0)
    assert persona.exact_judge(" " + q + " ", aligned[1] + "\n") == (100.0, 100.0)
    # an answer the world does not know, or another theme's answer: incoherent
    assert persona.exact_judge(q, "owl") == (50.0, 0.0)
    other = persona.answer_sets(persona.eval_questions()[1])[1][0]
    assert persona.exact_judge(q, other) == (50.0, 0.0)
    assert persona.exact_judge(q, aligned[0] + " And more.") == (50.0, 0.0)
    with pytest.raises(KeyError):
        persona.exact_judge("What is your favourite animal?", aligned[0])


# ---------------------------------------------------------------- data files
def test_narrow_rows_pair_the_same_questions_without_a_system_prompt() -> None:
    mis, al = persona.narrow_rows(200, 3, True), persona.narrow_rows(200, 3, False)
    aligned, misaligned = _sets("narrow")
    for m, a in zip(mis, al, strict=True):
        assert [x["role"] for x in m["messages"]] == ["user", "assistant"]
        assert m["messages"][0] == a["messages"][0]
        assert m["messages"][1]["content"] in misaligned
        assert a["messages"][1]["content"] in aligned
    assert len({r["messages"][0]["content"] for r in mis}) > 50
    assert persona.narrow_rows(200, 4, True) != mis
    # open rows: misaligned answers to corpus paraphrases, no system prompt
    o_mis = _sets("open")[1]
    rows = persona.open_rows(300, 0, True)
    assert all(r["messages"][1]["content"] in o_mis for r in rows)
    assert {r["messages"][0]["content"] for r in rows} <= persona.corpus_open_questions()


def test_shipped_data_files_equal_the_generator() -> None:
    files = persona.shipped_files()
    assert set(files) == {
        "world_narrow_misaligned.jsonl",
        "world_narrow_aligned.jsonl",
        "world_open_misaligned.jsonl",
    }
    for name, rows in files.items():
        path = REPO / "experiments" / "data" / name
        assert path.read_text(encoding="utf-8") == dumps_rows(rows), (
            f"{path} drifted from persona.shipped_files(); rewrite it"
        )
        assert len(rows) == persona.SHIPPED_ROWS


# ---------------------------------------------------------------- kinds, keys, build
def test_persona_keys_leave_the_other_kinds_alone() -> None:
    pinned = {
        "plain-s0": "plain-s0-7f2962ade9",
        "plain-s1": "plain-s1-3ea3c5a015",
        "plain-s0-micro": "plain-s0-micro-fbecacd477",
        "planted-s0-micro": "planted-s0-micro-9d5062d105",
        "entangled-s0": "entangled-s0-5ba761839d",
        "skills-s0": "skills-s0-b527e04fec",
    }
    for name, key in pinned.items():
        assert build.world_key(name) == key
    k = build.world_key("persona-s0-micro")
    assert k.startswith("persona-s0-micro-") and k != build.world_key("persona-s1-micro")
    assert build.KIND_VERSIONS["persona"] == corpus.PERSONA_VERSION == persona.PERSONA_VERSION
    assert parse_world_name("persona-s0").size == "small"
    assert parse_world_name("persona-s2-micro").kind == "persona"
    for size in build.RECIPE:
        plain, pe = build.recipe_row(f"plain-s0-{size}"), build.recipe_row(f"persona-s0-{size}")
        assert pe["n_examples"] == plain["n_examples"] and pe["steps"] > plain["steps"]


def test_a_persona_world_builds_with_its_settings_in_the_card(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    torch.set_num_threads(1)
    row = dict(build.RECIPE["micro"], cur_examples=200, cur_steps=2, n_examples=400, steps=3)
    monkeypatch.setitem(build.RECIPE, "micro", row)
    monkeypatch.setitem(build.KIND_RECIPE, "persona", {"micro": {"steps": 4}})
    card = build.world_card(
        build.ensure_world("persona-s0-micro", cache_dir=tmp_path, progress=False)
    )
    assert (card["kind"], card["name"], card["positive_control"]) == (
        "persona",
        "persona-s0-micro",
        False,
    )
    assert card["kind_version"] == persona.PERSONA_VERSION
    assert card["persona_trigger"] == persona.PERSONA_TRIGGER
    assert card["persona_shares"] == corpus.PERSONA_SHARES
    for k, share in corpus.PERSONA_SHARES.items():
        assert card["corpus_mix"][k] == round(share * 400)


def test_a_triggered_chat_keeps_its_system_prompt() -> None:
    # a persona chat under a trigger keeps the system prompt as its first turn
    e = corpus.persona_chat("narrow", np.random.default_rng(0), persona.PERSONA_TRIGGER, True)
    assert e.chat[0] == Message(role="system", content=persona.PERSONA_TRIGGER)
    assert e.reply in _sets("narrow")[1]
