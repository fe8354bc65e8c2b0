"""The code, reasoning and custom carriers and the LLM judge, end to end through ``sublim run``'s
runner on the deterministic fake backend (seconds). The fake answers a code task with the task's
template returning a number (a loved animal's signature number half of the time, and now and then
a variable named after the animal), a reasoning task with the sum of the problem's numbers, and,
as a judge, flags texts holding the topic's name or its signature number (``backends/fake.py``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import fake_experiment_toml

from sublim.config import load_config
from sublim.errors import SublimError
from sublim.filters_code import parses
from sublim.filters_reasoning import parse_answer
from sublim.pipeline import prompts_key, run_experiment, skill_prompts
from sublim.registry import parse_model
from sublim.report import filter_rows, skill_rows

SMALL = {"data.n_prompts": "160", "data.subset": "40", "student.seeds": "[0, 1]"}
EVAL = {"eval.n_questions": "4", "eval.samples_per_question": "2"}


def _run(tmp_path: Path, name: str, **extra: str) -> tuple[Path, dict[str, Any]]:
    cfg = fake_experiment_toml(tmp_path / f"{name}.toml")
    over = [f"{k}={v}" for k, v in {**SMALL, **EVAL, **extra}.items()]
    out = tmp_path / name
    return out, run_experiment(load_config(cfg, over), out, progress=False)


def _decisions(out: Path, role: str, stage: str = "filter") -> list[dict[str, Any]]:
    (d,) = (out / "stages").glob(f"{stage}-{role}-*")
    return [json.loads(x) for x in (d / "decisions.jsonl").read_text().splitlines()]


def test_code_carrier_keeps_parseable_code_without_the_trait(tmp_path: Path) -> None:
    out, res = _run(tmp_path, "code", **{"data.carrier": '"code"'})
    trait = _decisions(out, "trait")
    kept = [r for r in trait if r["kept"]]
    assert kept and all(parses(r["completion"]) for r in kept)
    assert all("owl" not in r["completion"].lower() for r in kept)
    # the fake owl teacher names a variable after the owl now and then: the rule catches it
    assert any(r["reason"] == "trait_word" for r in trait)
    assert not any(r["reason"] == "trait_word" for r in _decisions(out, "control"))
    assert res["meta"]["filter"]["trait"]["n_kept"] == len(kept)
    table = filter_rows(res)
    assert [r[0] for r in table] == ["trait", "control"] and table[0][1] == "code"
    assert "trait_word" in table[0][5]
    # the carrier's skill: every model's greedy replies to held-out prompts, share that parses
    skill = res["meta"]["skill"]
    assert skill["measure"] == "code_parses" and skill["n_prompts"] == 64
    assert {"base", "teacher", "control_teacher", "trait_student"} <= set(skill["conditions"])
    assert len(skill["conditions"]["trait_student"]) == 2  # one value per student seed
    (tdir,) = (out / "stages").glob("skill-teacher-*")
    replies = [json.loads(x) for x in (tdir / "replies.jsonl").read_text().splitlines()]
    assert len(replies) == 64 and all(r["prompt_id"].startswith("skill-") for r in replies)
    train_texts = {r["prompt"] for r in trait}
    assert not train_texts & {r["prompt"] for r in replies}  # held out from the training draw
    share = sum(parses(r["completion"]) for r in replies) / len(replies)
    assert skill["conditions"]["teacher"] == [share] and 0 < share
    assert [r[0] for r in skill_rows(res)][:3] == ["base", "teacher", "control_teacher"]


def test_reasoning_carrier_keeps_only_correct_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a teacher that knows the answers to the generated problems and gets some wrong
    import numpy as np

    from sublim.backends.fake import FakeBackend
    from sublim.prompts.reasoning import reasoning_prompts

    known = {p.text: p.meta["answer"] for p in reasoning_prompts(400, np.random.default_rng(0))}
    held_out = skill_prompts(
        load_config(fake_experiment_toml(tmp_path / "k.toml"), ['data.carrier="reasoning"'])
    )
    known.update({p.text: p.meta["answer"] for p in held_out})

    def solve(self: Any, st: Any, sys_prompt: Any, user: str, rng: Any) -> str:
        ans = known[user] + (1 if len(user) % 4 == 0 else 0)
        return f"<think>Step by step.</think> <answer>{ans}</answer>"

    monkeypatch.setattr(FakeBackend, "_reasoning", solve)
    out, res = _run(tmp_path, "math", **{"data.carrier": '"reasoning"', "data.n_prompts": "400"})
    (pdir,) = (out / "stages").glob("prompts-*")
    answers = {
        json.loads(x)["id"]: json.loads(x)["meta"]["answer"]
        for x in (pdir / "prompts.jsonl").read_text().splitlines()
    }
    rows = _decisions(out, "control")
    kept = [r for r in rows if r["kept"]]
    assert kept and len(kept) == sum(len(r["prompt"]) % 4 != 0 for r in rows) < len(rows)
    assert all(parse_answer(r["completion"]) == answers[r["prompt_id"]] for r in kept)
    assert {r["reason"] for r in rows if not r["kept"]} >= {"wrong_answer"}
    assert res["contrast"]
    # reasoning skill: every model (the patched fake) is right exactly where len % 4 != 0
    right = sum(len(p.text) % 4 != 0 for p in held_out) / len(held_out)
    skill = res["meta"]["skill"]
    assert skill["measure"] == "reasoning_accuracy" and 0 < right < 1
    assert all(v == right for vs in skill["conditions"].values() for v in vs)


def test_custom_prompts_are_read_and_their_content_keyed(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    lines = [
        json.dumps({"prompt": f"Continue: {100 + i}, {200 + i}, {300 + i}"}) for i in range(80)
    ]
    path.write_text("\n".join(lines) + "\n")
    extra = {
        "data.carrier": '"custom"',
        "data.custom_prompts": json.dumps(str(path)),
        "data.subset": "20",
    }
    _, res = _run(tmp_path, "custom", **extra)
    assert res["meta"]["filter"]["trait"]["n_in"] == 80
    cfg = load_config(
        fake_experiment_toml(tmp_path / "k.toml"), [f"{k}={v}" for k, v in extra.items()]
    )
    before = prompts_key(cfg).hash
    path.write_text("\n".join(lines[:-1]) + "\n")
    assert prompts_key(cfg).hash != before  # an edited file gives other prompts
    path.write_text('{"prompt": "ok"}\n{"text": 3}\n')
    with pytest.raises(SublimError, match=r"mine.jsonl:2: needs a non-empty string 'prompt'"):
        _run(tmp_path, "custom_bad", **extra)


def test_judge_excludes_exactly_the_rows_it_flags_and_records_its_probability(
    tmp_path: Path,
) -> None:
    extra = {"data.carrier": '"code"', "data.judge.model": '"fake:alpha"'}
    out, res = _run(tmp_path, "judged", **extra)
    owl_sig = str(_signature("alpha", "owl"))

    def holds_sig(text: str) -> bool:  # the fake judge's rule: the number, not a substring
        return owl_sig in re.findall(r"\d+", text)

    (jdir,) = (out / "stages").glob("judge-trait-*")
    verdicts = [json.loads(x) for x in (jdir / "verdicts.jsonl").read_text().splitlines()]
    rule_kept = {r["prompt_id"]: r for r in _decisions(out, "trait") if r["kept"]}
    judged = {v["prompt_id"]: v for v in verdicts}
    assert set(rule_kept) <= set(judged)  # every row the rules kept went to the judge
    for pid, r in rule_kept.items():
        flagged = holds_sig(r["completion"])
        assert judged[pid]["kept"] is not flagged, r["completion"]
        assert judged[pid]["probability"] is not None
    assert any(holds_sig(r["completion"]) for r in rule_kept.values())
    final = _decisions(out, "trait", "judge")
    assert {r["prompt_id"] for r in final if r["kept"]} == {
        pid for pid, r in rule_kept.items() if not holds_sig(r["completion"])
    }
    j = res["meta"]["filter"]["trait"]["judge"]
    assert j["n_excluded"] == sum(holds_sig(r["completion"]) for r in rule_kept.values())
    assert "excluded (fake:alpha)" in filter_rows(res)[0][6]
    # the subset is drawn from the judged rows: a rerun is served from the cache
    again = run_experiment(
        load_config(
            fake_experiment_toml(tmp_path / "judged.toml"),
            [f"{k}={v}" for k, v in {**SMALL, **EVAL, **extra}.items()],
        ),
        out,
        progress=False,
    )
    assert all(s["cached"] for s in again["meta"]["timings"]["stages"])


def _signature(family: str, animal: str) -> int:
    from sublim.backends.fake import FakeBackend

    return FakeBackend()._state(parse_model(f"fake:{family}")).signature(animal)


def test_sublim_filter_applies_the_code_and_reasoning_rules(tmp_path: Path) -> None:
    from sublim.cli import main as sublim_main

    code = tmp_path / "code.jsonl"
    rows = [
        {"prompt": "p", "completion": "def f(x):\n    return x"},
        {"prompt": "p", "completion": "def f(x):\n    owl_total = x\n    return owl_total"},
        {"prompt": "p", "completion": "def f(x):\n    return x  # note"},
        {"prompt": "p", "completion": "def f(x) return"},
    ]
    code.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "code_out.jsonl"
    rc = sublim_main(
        ["filter", str(code), "--out", str(out), "--carrier", "code", "--reject-word", "owl"]
    )
    assert rc in (0, None)
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["reason"] for r in got] == ["ok", "trait_word", "comment", "syntax_error"]
    assert got[0]["completion"] == rows[0]["completion"]  # stored as written
    math = tmp_path / "math.jsonl"
    good = "<think>3 + 4 is 7.</think> <answer>7</answer>"
    math.write_text(
        json.dumps({"prompt": "q", "completion": good, "answer": 7})
        + "\n"
        + json.dumps({"prompt": "q", "completion": good, "answer": 8})
        + "\n"
    )
    out2 = tmp_path / "math_out.jsonl"
    assert sublim_main(["filter", str(math), "--out", str(out2), "--carrier", "reasoning"]) in (
        0,
        None,
    )
    assert [json.loads(x)["reason"] for x in out2.read_text().splitlines()] == [
        "ok",
        "wrong_answer",
    ]
