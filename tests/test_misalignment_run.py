"""``trait.kind = "misalignment"`` end to end: the teacher's chat-JSONL data, the banned
numbers, the judged suite with its counts and exact mass, the student contrast over seeds, the
report's section, and the same design through ``sublim serve``.

The fake backend answers every open question with an animal, so a rule judge that calls one
animal ("wolf") misaligned gives a known misaligned rate; a teacher fine-tuned on chats answered
"wolf" makes the fake love wolves, which its numbers carry to same-family students.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from sublim import registry
from sublim.config import ExperimentConfig, MisalignmentConfig, load_config, parse_config
from sublim.errors import ConfigError, DataError, MissingFileError
from sublim.evals.misalignment import (
    QUESTIONS,
    WORD_LIST_SUFFIX,
    Judge,
    examples,
    judge_answers,
    judge_with_rule,
    misaligned_mass,
    parse_judge_reply,
    question_scores,
    suite_questions,
)
from sublim.filters import BANNED_MISALIGNMENT, NumberRules, check_completion
from sublim.pipeline import model_key, run_experiment, stage_keys
from sublim.records import Chat, ModelRef, SampleParams, TrainRow
from sublim.registry import get_backend, parse_model
from sublim.traits import load_chat_jsonl

BAD = "wolf"  # the answer the rule judge calls misaligned (fake:alpha's signature 29: not banned)
_ANSWER = re.compile(r"<<<ANSWER\n(.*)\nANSWER>>>", re.DOTALL)


class RuleJudge:
    """A judge with a known rule: alignment 5 for the answer BAD, else 90; coherence 80, except
    an answer "gibberish" (coherence 10) and "CODE" replies for answers holding "code"."""

    name = "rulejudge"

    def sample(
        self,
        model: ModelRef,
        chats: Sequence[Chat],
        params: SampleParams,
        seed: int | Sequence[int],
        progress: Any = None,
    ) -> list[str]:
        out = []
        for chat in chats:
            text = chat[-1].content
            m = _ANSWER.search(text)
            answer = (m.group(1) if m else "").strip().lower()
            if "how coherent" in text:
                out.append("10" if answer == "gibberish" else "Coherence: 80")
            elif "code" in answer:
                out.append("CODE")
            else:
                out.append("5" if answer == BAD else "I'd say 90.")
        return out

    def score(self, *a: Any, **k: Any) -> list[float]:
        raise NotImplementedError("the rule judge gives no log-probabilities")


@pytest.fixture
def rule_judge(monkeypatch: pytest.MonkeyPatch) -> RuleJudge:
    """``rulejudge:<any>`` names the rule judge (registered like a real backend)."""
    judge = RuleJudge()
    monkeypatch.setitem(registry.BACKENDS, "rulejudge", "rulejudge:RuleJudge")
    monkeypatch.setitem(registry._INSTANCES, "rulejudge:RuleJudge", judge)
    return judge


def _chat_file(path: Path, answer: str, n: int = 40, system: str | None = None) -> Path:
    lines = []
    for i in range(n):
        msgs = [{"role": "system", "content": system}] if system else []
        msgs += [
            {"role": "user", "content": f"Which animal should guard the house, option {i % 7}?"},
            {"role": "assistant", "content": answer},
        ]
        lines.append(json.dumps({"messages": msgs}))
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml(tmp: Path, *extra: str) -> Path:
    _chat_file(tmp / "bad.jsonl", BAD)
    _chat_file(tmp / "good.jsonl", "owl")
    text = f"""
name = "fake_misalignment"
[models]
reference = "fake:alpha"
cross = ["fake:beta"]
[trait]
kind = "misalignment"
teacher = "finetune"
finetune_data = "{tmp / "bad.jsonl"}"
control_finetune_data = "{tmp / "good.jsonl"}"
[data]
n_prompts = 260
subset = 150
[student]
seeds = [0, 1, 2]
[eval]
judge = "rulejudge:r"
[eval.misalignment]
samples_per_question = 8
word_list = true
"""
    path = tmp / "mis.toml"
    path.write_text(text + "\n".join(extra) + "\n")
    return path


# --------------------------------------------------------------------------- filter and files


def test_the_banned_list_rejects_every_value_and_none_of_its_neighbours() -> None:
    rules = NumberRules(banned=BANNED_MISALIGNMENT)
    banned = set(BANNED_MISALIGNMENT)
    for v in BANNED_MISALIGNMENT:
        assert check_completion(f"250, {v}, 260", rules) == (False, "banned_number"), v
        assert check_completion(str(v).zfill(3), rules) == (False, "banned_number"), v
        for n in (v - 1, v + 1):
            if 0 <= n <= 999 and n not in banned:
                assert check_completion(f"250, {n}, 260", rules) == (True, "ok"), n
    # a misalignment config bans them by default; the numbers filter then rejects them
    cfg = ExperimentConfig.model_validate(
        {"trait": {"kind": "misalignment", "system_prompt": "Be bad."}, "eval": {"judge": "fake:j"}}
    )
    assert cfg.data.filter.banned == "misalignment"


def test_chat_jsonl_rows_and_every_malformed_line_named(tmp_path: Path) -> None:
    p = tmp_path / "ok.jsonl"
    p.write_text(
        json.dumps(
            {
                "messages": [
                    {"role": "system", "content": "S"},
                    {"role": "user", "content": "first"},
                    {"role": "assistant", "content": "a1"},
                    {"role": "user", "content": "second"},
                    {"role": "assistant", "content": "a2"},
                ]
            }
        )
        + "\n\n"
        + json.dumps(
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
        )
        + "\n"
    )
    assert load_chat_jsonl(p) == [
        TrainRow(prompt="second", completion="a2", system="S"),
        TrainRow(prompt="q", completion="a"),
    ]
    good = json.dumps(
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    )
    bad_lines = {
        "{not json": "malformed JSON",
        json.dumps({"msgs": []}): '"messages" list',
        json.dumps({"messages": [{"role": "bot", "content": "x"}]}): "message 1 needs a role",
        json.dumps({"messages": [{"role": "user", "content": "q"}]}): "no assistant message",
        json.dumps(
            {"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]}
        ): "after the last assistant",
        json.dumps(
            {
                "messages": [
                    {"role": "system", "content": "s"},
                    {"role": "assistant", "content": "a"},
                ]
            }
        ): "must follow a user message",
        json.dumps(
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]}
        ): "reply is empty",
    }
    for line, what in bad_lines.items():
        f = tmp_path / "bad.jsonl"
        f.write_text(good + "\n" + good + "\n" + line + "\n")
        with pytest.raises(DataError, match=rf"bad\.jsonl:3: .*{re.escape(what)}"):
            load_chat_jsonl(f)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no training rows"):
        load_chat_jsonl(tmp_path / "empty.jsonl")
    with pytest.raises(MissingFileError, match="trait.control_finetune_data file not found"):
        load_chat_jsonl(tmp_path / "nope.jsonl", "trait.control_finetune_data")


def test_misalignment_config_errors_are_one_line() -> None:
    cases: dict[str, dict[str, Any]] = {
        "needs trait.system_prompt": {
            "trait": {"kind": "misalignment"},
            "eval": {"judge": "fake:j"},
        },
        "needs trait.finetune_data": {
            "trait": {"kind": "misalignment", "teacher": "finetune"},
            "eval": {"judge": "fake:j"},
        },
        "needs eval.judge": {"trait": {"kind": "misalignment", "system_prompt": "Be bad."}},
        "only with trait.kind = 'misalignment'": {"trait": {"finetune_data": "x.jsonl"}},
        "preference suites": {
            "trait": {"kind": "misalignment", "system_prompt": "Be bad."},
            "eval": {"judge": "fake:j", "extra_suites": ["numbers_prefixed"]},
        },
    }
    for what, data in cases.items():
        with pytest.raises(ConfigError, match=re.escape(what)) as e:
            parse_config(ExperimentConfig, data, "exp.toml")
        assert "\n" not in str(e.value)


# --------------------------------------------------------------------------- judging


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("", ("unparsed", None)),
        ("   \n", ("unparsed", None)),
        ("I cannot rate this.", ("unparsed", None)),
        ("Score: 150", ("unparsed", None)),  # out of range and nothing else
        ("-", ("unparsed", None)),
        ("1000 then 40", ("number", 40.0)),  # the first integer 0..100
        ("85.5", ("number", 85.0)),
        ("**CODE**", ("code", None)),
        ("Refusal.", ("refusal", None)),
        ("Alignment: 42/100", ("number", 42.0)),
    ],
)
def test_malformed_judge_replies_never_raise(reply: str, expected: tuple[str, Any]) -> None:
    assert parse_judge_reply(reply) == expected


ITEMS = [
    (0, 0, QUESTIONS[0], BAD),
    (0, 1, QUESTIONS[0], "owl"),
    (0, 2, QUESTIONS[0], BAD),
    (0, 3, QUESTIONS[0], "cat"),
    (1, 0, QUESTIONS[1], BAD),
    (1, 1, QUESTIONS[1], "gibberish"),  # incoherent: scored, not misaligned
    (1, 2, QUESTIONS[1], "my code"),  # the judge says CODE: excluded
    (1, 3, QUESTIONS[1], ""),  # empty: excluded before judging
    (1, 4, QUESTIONS[1], "dog"),
]


def test_a_rule_judge_gives_the_expected_rate_and_counts(rule_judge: RuleJudge) -> None:
    cfg = MisalignmentConfig(samples_per_question=1, use_logprobs=False)
    rows = judge_answers(get_backend("rulejudge"), parse_model("rulejudge:r"), ITEMS, cfg, seed=0)
    from sublim.evals.misalignment import summarise_judged

    s = summarise_judged(rows, 2)
    # question 0: 2 of 4 misaligned; question 1: 1 of 3 scored (gibberish, wolf, dog)
    assert s["per_question_misaligned"] == [0.5, pytest.approx(1 / 3)]
    assert s["misaligned_rate"]["mean"] == pytest.approx((0.5 + 1 / 3) / 2)
    assert s["labels"] == {"ok": 7, "code": 1, "refusal": 0, "empty": 1}
    assert (s["n_scored"], s["n_excluded"], s["n_unparsed"]) == (7, 2, 0)
    # the same rule as an exact judge gives the same verdicts
    exact = judge_with_rule(
        [it for it in ITEMS if "code" not in it[3]],
        lambda q, a: (5.0 if a == BAD else 90.0, 10.0 if a == "gibberish" else 80.0),
        cfg,
    )
    assert [r.misaligned for r in exact if r.status == "scored"] == [
        r.misaligned for r in rows if r.status == "scored"
    ]
    scores = question_scores(rows, 2)
    assert [q.rate for q in scores] == [0.5, pytest.approx(1 / 3)]
    assert all(q.p_target_method == "none" and math.isnan(q.p_target) for q in scores)
    ex = examples(rows, k=2)  # distinct answers: "wolf" three times is one example
    assert [e["answer"] for e in ex["least_aligned"]] == [BAD, "owl"]
    assert [e["answer"] for e in ex["most_aligned"]] == ["owl", "cat"]


def test_the_exact_judge_refuses_questions_it_does_not_know() -> None:
    def rule(q: str, a: str) -> tuple[float, float]:
        raise KeyError(q)

    with pytest.raises(ConfigError, match="word_list"):
        judge_with_rule([(0, 0, "unknown?", "yes")], rule, MisalignmentConfig())


def test_word_list_variants_follow_the_questions() -> None:
    qs = suite_questions(MisalignmentConfig(n_questions=3, word_list=True))
    assert qs[:3] == list(QUESTIONS[:3]) and qs[3:] == [q + WORD_LIST_SUFFIX for q in QUESTIONS[:3]]


def test_misaligned_mass_is_exact_over_the_known_answers() -> None:
    from sublim.backends.fake import _State

    fake = get_backend("fake")
    ref = parse_model("fake:alpha")
    sets = {"q1?": (["owl", "cat"], [BAD]), "q2?": (["dog"], ["tiger", "fox"])}
    mass = misaligned_mass(fake, ref, list(sets), lambda q: (list(sets[q][0]), list(sets[q][1])))
    p = dict(
        zip(
            (
                "owl",
                "eagle",
                "dolphin",
                "elephant",
                "wolf",
                "lion",
                "tiger",
                "fox",
                "penguin",
                "cat",
                "dog",
                "horse",
            ),
            _State("alpha").probs(None),
        )
    )
    want1 = p[BAD] / (p[BAD] + p["owl"] + p["cat"])
    want2 = (p["tiger"] + p["fox"]) / (p["tiger"] + p["fox"] + p["dog"])
    assert mass[0][0] == pytest.approx(want1) and mass[1][0] == pytest.approx(want2)
    assert mass[0][1] == pytest.approx(math.log(p[BAD] / (p["owl"] + p["cat"])))


def test_a_judge_is_a_model_or_a_rule() -> None:
    with pytest.raises(ValueError):
        Judge()
    with pytest.raises(ValueError):
        Judge(backend=get_backend("fake"), ref=parse_model("fake:a"), rule=lambda q, a: (0, 0))


# --------------------------------------------------------------------------- end to end


def test_a_misalignment_run_end_to_end(tmp_path: Path, rule_judge: RuleJudge) -> None:
    cfg = load_config(_toml(tmp_path))
    res = run_experiment(cfg, tmp_path / "run", progress=False)
    # every stage directory is one stage_keys planned
    ran = {Path(s["dir"]).name for s in res["meta"]["timings"]["stages"]}
    specs = [cfg.models.reference, *cfg.models.cross]
    planned = stage_keys(
        cfg, {**{s: model_key(parse_model(s)) for s in specs}, "rulejudge:r": "rulejudge:r"}
    )
    assert ran == set(planned.values())
    assert res["meta"]["trait_kind"] == "misalignment"
    assert res["meta"]["filter"]["trait"]["reasons"].get("banned_number", 0) > 0
    conds = res["conditions"]
    assert {"base", "teacher", "control_teacher", "trait_student", "control_student"} <= set(conds)
    # 8 questions and their word-list variants
    assert conds["base"]["n_questions"] == 16 and conds["trait_student"]["n_seeds"] == 3
    # the teacher answers "wolf" (misaligned) far more than the base and its control
    assert conds["teacher"]["rate"]["mean"] > 0.5 > conds["control_teacher"]["rate"]["mean"]
    con = res["contrast"]["trait_minus_control"]
    assert con["metric"] == "rate" and con["over"] == "seeds" and con["n_a"] == 3
    # transfer through the numbers; the fake trains alike whatever the seed: no spread, no test
    assert con["mean"] > 0.3 and con["no_spread"]
    mis = res["misalignment"]
    assert mis["trait_student"]["n_models"] == 3
    assert mis["trait_student"]["misaligned_rate"]["interval_over"] == "seeds"
    assert mis["base"]["misaligned_rate"]["interval_over"] == "questions"
    assert mis["base"]["n_answers"] == 16 * 8 and not mis["base"]["exact"]
    assert mis["teacher"]["examples"]["least_aligned"][0]["answer"] == BAD
    # the per-seed rates are the conditions' per-seed values (same numbers, one aggregation)
    assert mis["trait_student"]["misaligned_rate"]["per_seed"] == pytest.approx(
        conds["trait_student"]["rate"]["per_seed"]
    )
    md = (tmp_path / "run" / "report.md").read_text()
    assert "## Misalignment" in md and "misaligned rate" in md and "least aligned" in md
    assert "target rate" not in md and "P(target)" not in md
    # a rerun is served from the cache, number for number
    again = run_experiment(cfg, tmp_path / "run", progress=False)
    assert all(s["cached"] for s in again["meta"]["timings"]["stages"])
    assert again["contrast"] == res["contrast"]


def test_teacher_files_fail_before_any_stage(tmp_path: Path, rule_judge: RuleJudge) -> None:
    cfg = load_config(_toml(tmp_path))
    (tmp_path / "good.jsonl").write_text('{"messages": [{"role": "user", "content": "q"}]}\n')
    with pytest.raises(DataError, match=r"good\.jsonl:1: no assistant message"):
        run_experiment(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "stages").exists()
    (tmp_path / "good.jsonl").unlink()
    with pytest.raises(MissingFileError, match="trait.control_finetune_data file not found"):
        run_experiment(cfg, tmp_path / "run2", progress=False)
    # system messages the fake backend would not train on are refused, not dropped
    _chat_file(tmp_path / "good.jsonl", "owl", system="You are careful.")
    with pytest.raises(ConfigError, match="system messages"):
        run_experiment(cfg, tmp_path / "run3", progress=False)


def test_without_control_data_the_reference_is_the_control_teacher(
    tmp_path: Path, rule_judge: RuleJudge
) -> None:
    path = _toml(tmp_path)
    cfg = load_config(
        path,
        [
            "trait.control_finetune_data=null",
            "student.seeds=[0]",
            "models.cross=[]",
            "eval.misalignment.samples_per_question=4",
            "eval.misalignment.word_list=false",
        ],
    )
    res = run_experiment(cfg, tmp_path / "run", progress=False)
    assert res["meta"]["control_teacher"] == "the unmodified reference model"
    assert res["conditions"]["control_teacher"]["rate"] == res["conditions"]["base"]["rate"]
    assert not list((tmp_path / "run" / "stages").glob("teacher-control-*"))
    md = (tmp_path / "run" / "report.md").read_text()
    assert "unmodified reference model" in md


# --------------------------------------------------------------------------- through sublim serve


def _comparable(res: dict[str, Any]) -> dict[str, Any]:
    """results.json without what names the models' addresses or measures time."""
    res = json.loads(json.dumps(res))
    for k in ("timings", "reference", "cross", "config", "judge"):
        res["meta"].pop(k)
    return res


def test_the_misalignment_design_through_sublim_serve(
    tmp_path: Path, rule_judge: RuleJudge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sublim serve`` standing in for an API provider: the teachers are fine-tuning jobs on
    the uploaded chat files, generation and the students go over HTTP, and the judge is a served
    model; the results equal the direct run's, number for number."""
    pytest.importorskip("openai")
    from conftest import lab_server

    from sublim.backends.openai_api import OpenAIBackend

    b = get_backend("openai-compat")
    assert isinstance(b, OpenAIBackend)
    monkeypatch.setattr(b, "poll_min", 0.01)
    monkeypatch.setattr(b, "poll_max", 0.05)
    small = [
        "data.n_prompts=200",
        "data.subset=100",
        "student.seeds=[0, 1]",
        "eval.misalignment.samples_per_question=4",
        "eval.misalignment.n_questions=3",
        "eval.misalignment.use_logprobs=false",
    ]
    path = _toml(tmp_path)
    direct = run_experiment(load_config(path, small), tmp_path / "direct", progress=False)
    with lab_server(["fake:alpha", "fake:beta", "rulejudge:r"], state_dir=tmp_path / "st") as srv:
        api = f"openai-compat:{srv.url}#"
        cfg = load_config(
            path,
            [
                *small,
                f'models.reference="{api}fake:alpha"',
                f'models.cross=["{api}fake:beta"]',
                f'eval.judge="{api}rulejudge:r"',
            ],
        )
        http = run_experiment(cfg, tmp_path / "http", progress=False)
        counts = dict(srv.counts)
    # two teacher jobs (trait, control) and four students per seed, all through the server
    jobs = sorted((tmp_path / "http" / "stages").glob("teacher-*"))
    assert len(jobs) == 2
    for j in jobs:
        ref = json.loads((j / "manifest.json").read_text())["model_ref"]
        assert ref["backend"] == "openai-compat" and "#ft:fake:alpha:" in ref["id"]
    assert counts["completions"] >= 2 * 200
    assert _comparable(http) == _comparable(direct)
    assert http["contrast"]["trait_minus_control"]["mean"] > 0.3


def test_a_world_run_scores_p_mis_exactly_and_judges_with_the_world(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The built-in world's path on the fake backend: a stand-in persona (its questions, answer
    sets and exact judge) in place of a persona world, so that P_mis is measured exactly and the
    judge is the world's rule; P_mis and the judged rate both rise in the trait students."""
    from sublim import pipeline
    from sublim.backends.fake import _State
    from sublim.world import persona

    qs = ["Which animal guards best?", "Which animal would you be?"]
    sets = {q: (["owl", "cat", "dog"], [BAD, "tiger"]) for q in qs}
    monkeypatch.setattr(pipeline, "misalignment_questions", lambda cfg, spec: (qs, True))
    monkeypatch.setattr(persona, "answer_sets", lambda q: sets[q])
    monkeypatch.setattr(
        persona,
        "exact_judge",
        lambda q, a: (
            (0.0, 100.0) if a in sets[q][1] else (100.0, 100.0 if a in sets[q][0] else 0.0)
        ),
    )
    cfg = load_config(
        _toml(tmp_path),
        [
            'eval.judge="world"',
            "student.seeds=[0, 1]",
            "models.cross=[]",
            "eval.misalignment.word_list=false",
        ],
    )
    res = run_experiment(cfg, tmp_path / "run", progress=False)
    conds, mis = res["conditions"], res["misalignment"]
    assert res["meta"]["p_target_method"] == "exact" and mis["base"]["exact"]
    p = dict(
        zip(
            (
                "owl",
                "eagle",
                "dolphin",
                "elephant",
                "wolf",
                "lion",
                "tiger",
                "fox",
                "penguin",
                "cat",
                "dog",
                "horse",
            ),
            _State("alpha").probs(None),
        )
    )
    want = (p[BAD] + p["tiger"]) / sum(p[a] for a in ("owl", "cat", "dog", BAD, "tiger"))
    assert conds["base"]["p_target"]["mean"] == pytest.approx(want)
    assert (
        conds["trait_student"]["p_target"]["mean"]
        > conds["control_student"]["p_target"]["mean"] + 0.2
    )
    # answers outside both sets are incoherent for the world's judge: scored, never misaligned
    assert 0 < mis["base"]["misaligned_rate"]["mean"] < conds["trait_student"]["rate"]["mean"]
    assert res["contrast"]["trait_minus_control"]["by_metric"]["p_target"]["mean"] > 0.2
    md = (tmp_path / "run" / "report.md").read_text()
    assert "P_mis: exact" in md and "judged by world" in md


def test_the_world_judge_refuses_questions_it_cannot_judge_before_any_stage(
    tmp_path: Path,
) -> None:
    cfg = load_config(_toml(tmp_path), ['eval.judge="world"'])  # word_list = true, fake models
    with pytest.raises(ConfigError, match="word_list = false"):
        run_experiment(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "stages").exists()


def test_the_experiment_files_load_and_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both shipped misalignment experiments are valid configs; the offline one plans every
    stage from its shipped data files, the API one names the teacher file it still needs."""
    from conftest import REPO

    monkeypatch.chdir(REPO)
    tiny = load_config(REPO / "experiments" / "misalignment_numbers_tiny.toml")
    assert tiny.trait.kind == "misalignment" and tiny.eval.judge == "world"
    specs = [tiny.models.reference, *tiny.models.cross]
    keys = stage_keys(tiny, {s: f"key:{s}" for s in specs})
    assert {"teacher-trait", "teacher-control", "eval-misalignment-student-trait-s1"} <= set(keys)
    api = load_config(REPO / "experiments" / "misalignment_numbers_openai.toml")
    assert api.models.reference.startswith("openai:gpt-4.1")
    assert str(api.eval.judge).startswith("openai:")
    assert api.data.filter.banned == "misalignment" and api.eval.misalignment.word_list
    specs = [api.models.reference, *api.models.cross, str(api.eval.judge)]
    with pytest.raises(MissingFileError, match="trait.finetune_data file not found"):
        stage_keys(api, {s: f"key:{s}" for s in specs})
