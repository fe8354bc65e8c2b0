"""``sublim audit`` (issue 14, item 1): the bag classifier and its null, the trait ranking and
its first-order shift, the report files and the command line's one-line errors.

Worlds are micro worlds trained for a handful of steps in a private cache (as in
test_research.py): their numbers mean nothing, so the world tests check the machinery (schema,
ranking, that the predicted shift is the directional derivative it claims to be), never that a
trait is found. The fake backend gives a known channel for the classifier end to end.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sublim import audit
from sublim.cli import main
from sublim.errors import ConfigError
from sublim.records import TrainRow
from sublim.registry import parse_model
from sublim.world import build

FAST = {"permutations": 200, "n_boot": 200, "cost_rows": 0}


@pytest.fixture
def micro_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A micro world trained for a few steps in a private cache (seconds)."""
    row = dict(build.RECIPE["micro"], cur_examples=200, cur_steps=2, n_examples=400, steps=3)
    monkeypatch.setitem(build.RECIPE, "micro", row)
    monkeypatch.setenv("SUBLIM_CACHE_DIR", str(tmp_path / "cache"))
    return "tiny:plain-s0-micro"


def _numbers(rng: np.random.Generator, n: int, planted: int | None = None) -> list[str]:
    """Rows of 8 comma-separated numbers; with ``planted`` a third of them are that number."""
    out = []
    for _ in range(n):
        vals = rng.integers(0, 1000, size=8)
        if planted is not None:
            vals[rng.random(8) < 0.33] = planted
        out.append(", ".join(map(str, vals)))
    return out


def test_classifier_is_at_chance_on_one_source_and_high_on_two() -> None:
    rng = np.random.default_rng(0)
    # one source, five independent pairs of samples: AUROCs scatter around 0.5 within the null
    aucs, ps = [], []
    for k in range(5):
        a, b = audit.row_features(_numbers(rng, 320)), audit.row_features(_numbers(rng, 320))
        same = audit.bag_classifier(a, b, bag=16, folds=5, permutations=100, n_boot=0, seed=k)
        assert same["n_bags"] == {"data": 20, "clean": 20}
        assert abs(same["null"]["mean"] - 0.5) < 0.05
        aucs.append(same["auroc"])
        ps.append(same["p_value"])
    assert 0.35 < float(np.mean(aucs)) < 0.65
    assert sum(p < 0.05 for p in ps) <= 1
    planted = audit.row_features(_numbers(rng, 320, planted=471))
    diff = audit.bag_classifier(planted, b, bag=16, folds=5, permutations=200, n_boot=200, seed=0)
    assert diff["auroc"] > 0.95
    assert diff["ci95"][0] > 0.8
    assert diff["p_value"] == pytest.approx(1 / 201)
    assert len(diff["fold_aurocs"]) == 5


def test_permutation_null_is_computed_with_the_same_folds() -> None:
    rng = np.random.default_rng(1)
    a, b = audit.row_features(_numbers(rng, 96)), audit.row_features(_numbers(rng, 96))
    r = audit.bag_classifier(a, b, bag=8, folds=4, permutations=50, n_boot=0, seed=3)
    null = np.asarray(r["null"]["values"])
    assert len(null) == 50 and r["null"]["n"] == 50
    assert ((null >= 0) & (null <= 1)).all() and null.std() > 0  # labels really were permuted
    assert r["p_value"] == pytest.approx((1 + np.sum(null >= r["auroc"] - 1e-4)) / 51, abs=0.03)
    assert r["ci95"] is None  # no bootstrap asked for
    again = audit.bag_classifier(a, b, bag=8, folds=4, permutations=50, n_boot=0, seed=3)
    assert again["null"]["values"] == r["null"]["values"]  # seeded


def test_auroc_counts_ties_half() -> None:
    assert audit.auroc(np.array([1, 1, 0, 0]), np.array([3.0, 2.0, 1.0, 0.0])) == 1.0
    assert audit.auroc(np.array([1, 0]), np.array([1.0, 1.0])) == 0.5
    assert audit.auroc(np.array([1, 0, 0]), np.array([0.0, 1.0, 2.0])) == 0.0


def test_shift_null_finds_the_shifted_trait_paired_and_unpaired() -> None:
    rng = np.random.default_rng(2)
    c = rng.normal(size=(40, 3))
    d = c + rng.normal(scale=0.3, size=(40, 3))
    d[:, 1] += 1.0  # the data move trait 1 only
    for paired in (True, False):
        obs, sd, p = audit.shift_null(d, c, paired, 2000, np.random.default_rng(0))
        z = obs / sd
        assert int(np.argmax(z)) == 1 and z[1] > 3 and p[1] < 0.01
        assert np.all(np.abs(z[[0, 2]]) < 3.5)
    # paired bags cancel the shared part: a tighter null than the unpaired one
    _, sd_p, _ = audit.shift_null(d, c, True, 2000, np.random.default_rng(0))
    _, sd_u, _ = audit.shift_null(d, c, False, 2000, np.random.default_rng(0))
    assert sd_p[0] < sd_u[0]


def test_load_rows_reads_decisions_and_chat_lines(tmp_path: Path) -> None:
    p = tmp_path / "decisions.jsonl"
    rows = [
        {"prompt_id": "0", "prompt": "a", "completion": "1, 2", "kept": True, "reason": "ok"},
        {"prompt_id": "1", "prompt": "b", "completion": "owl", "kept": False, "reason": "word"},
    ]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert audit.load_rows(p) == [TrainRow(prompt="a", completion="1, 2")]
    chat = tmp_path / "chat.jsonl"
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "7, 8"}]
    chat.write_text(json.dumps({"messages": msgs}) + "\n")
    assert audit.load_rows(chat) == [TrainRow(prompt="q", completion="7, 8")]


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_cli_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "out")
    code, _, err = _cli(
        ["audit", str(tmp_path / "nope.jsonl"), "--base", "tiny", "--out", out], capsys
    )
    assert code == 2 and "not found" in err and "nope.jsonl" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "1"}\n{"prompt": "b"}\n')
    code, _, err = _cli(["audit", str(bad), "--base", "tiny", "--out", out], capsys)
    assert code == 2 and f"{bad}:2" in err and "'completion'" in err
    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "a", "completion": "1"}\n')
    code, _, err = _cli(["audit", str(good), "--base", "hg:foo", "--out", out], capsys)
    assert code == 2 and "unknown backend 'hg'" in err
    code, _, err = _cli(["audit", str(good), "--base", "tiny:huge-s0", "--out", out], capsys)
    assert code == 2 and "unknown world" in err
    code, _, err = _cli(["audit", str(good), "--base", "tiny", "--out", out, "--bag", "0"], capsys)
    assert code == 2 and "bag" in err
    assert not (tmp_path / "out").exists()  # nothing written for a failed audit


def _fake_rows(n: int, system_prompt: str | None, seed: int) -> list[dict[str, str]]:
    from sublim.prompts.numbers import number_prompts
    from sublim.records import SampleParams, user_chat
    from sublim.registry import get_backend, parse_model

    ps = number_prompts(n, np.random.default_rng(seed))
    ref = parse_model("fake:alpha", system_prompt=system_prompt)
    texts = get_backend("fake").sample(ref, [user_chat(p.text) for p in ps], SampleParams(), seed)
    return [{"prompt": p.text, "completion": t} for p, t in zip(ps, texts)]


def test_cli_end_to_end_on_the_fake_channel(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "owl.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _fake_rows(256, "You love owls.", 0)))
    out = tmp_path / "audit"
    code, stdout, err = _cli(
        [
            "audit",
            str(data),
            "--base",
            "fake:alpha",
            "--out",
            str(out),
            "--permutations",
            "200",
            "--cost-rows",
            "8",
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, err
    r = json.loads((out / "audit.json").read_text())
    clf = r["distinguishability"]["classifier"]
    assert clf["auroc"] > 0.9 and clf["p_value"] < 0.01  # the owl teacher's signature number
    assert r["clean"]["paired"] and r["clean"]["n"] == 256
    assert "skipped" in r["traits"]  # the fake backend has no weights to differentiate
    assert r["cost"]["training"]["estimate_s"] > 0 and r["cost"]["audit_s"] > 0
    page = (out / "audit.html").read_text()
    assert "<h2>Distinguishability</h2>" in page and "Skipped" in page and "<svg" in page
    flat = stdout.replace("\n", "")  # rich wraps long paths at the terminal width
    assert "AUROC" in flat and "audit.html" in flat


def test_trait_section_ranks_every_candidate_and_writes_the_schema(
    micro_world: str, tmp_path: Path
) -> None:
    from sublim.traits import candidates

    rows = [
        TrainRow(prompt=f"Continue: {i}, {i + 3}", completion=f"{i + 6}, {i + 9}")
        for i in range(48)
    ]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(r.model_dump_json() + "\n" for r in rows))
    cfg = audit.AuditConfig(
        base=micro_world, bag=8, n_questions=3, max_new_tokens=6, traits=None, **FAST
    )
    r = audit.run_audit(data, cfg, tmp_path / "out", progress=False)
    tr = r["traits"]
    names = [x["trait"] for x in tr["ranked"]]
    assert sorted(names) == sorted(candidates("animal"))
    zs = [x["z"] for x in tr["ranked"]]
    assert zs == sorted(zs, reverse=True)
    assert tr["top"] == names[0] and tr["paired"] is True
    assert tr["named"] in (None, names[0])
    for x in tr["ranked"]:
        assert x["shift"] == pytest.approx(x["shift_data"] - x["shift_clean"])
        assert x["predicted_dlogodds"] == pytest.approx(cfg.lr * x["shift"])
        assert np.isfinite(x["base_logodds"]) and x["grad_norm"] > 0
    on_disk = json.loads((tmp_path / "out" / "audit.json").read_text())
    assert set(on_disk) >= {
        "audit_version",
        "data",
        "base",
        "clean",
        "distinguishability",
        "traits",
        "teacher",
        "cost",
        "timings",
        "config",
        "verdict",
    }
    assert on_disk["verdict"] == r["verdict"] and names[0] in r["verdict"]
    assert "<h2>Which trait</h2>" in (tmp_path / "out" / "audit.html").read_text()
    with pytest.raises(ConfigError, match="misalignment"):
        audit.trait_probes(parse_model(micro_world), ["misalignment"], "animal", 3)


def test_predicted_shift_is_the_directional_derivative_of_the_log_odds(micro_world: str) -> None:
    """g_trait . (-grad L_bag) must equal d/d eps of the trait's mean exact log-odds after a step
    eps along -grad L_bag (a finite difference through the evaluation's own exact scorer)."""
    import torch

    from sublim.backends.hf_train import build_examples
    from sublim.evals.preference import exact_scores, questions
    from sublim.lm_grad import (
        example_batch,
        grad_of,
        load_differentiable,
        params_of,
        reply_token_logprobs,
    )
    from sublim.records import user_chat
    from sublim.traits import candidates

    base = parse_model(micro_world)
    probes = audit.trait_probes(base, ["owl", "cat"], "animal", 2)
    _, model, tok = load_differentiable(micro_world, torch.float64, "test")
    g, values = audit._trait_gradients(model, tok, probes)
    rows = [
        TrainRow(prompt=f"Numbers: {i}, {2 * i}", completion=f"{3 * i}, {4 * i}") for i in range(8)
    ]
    proj = audit._bag_projections(model, tok, rows, [list(range(8))], g, 256)[0]

    ex = build_examples(tok, rows, 256)
    tok_lp, mask = reply_token_logprobs(
        model, example_batch(tok, [(e.input_ids, e.labels) for e in ex])
    )
    step = grad_of(model, tok_lp.sum() / mask.sum())  # -grad of the SFT loss

    class _Scorer:  # the evaluation's exact scorer on the in-memory model (float64)
        def score(self, ref, chats, conts, include_end=True):  # type: ignore[no-untyped-def]
            from sublim import chat_format
            from sublim.lm_grad import reply_logprobs

            exs = []
            for c, r in zip(chats, conts):
                p = chat_format.encode_prompt(tok, c)
                rr = chat_format.encode_reply(tok, r, include_end)
                exs.append((p + rr, [-100] * len(p) + rr))
            with torch.no_grad():
                return reply_logprobs(model, example_batch(tok, exs)).tolist()

    chats = [user_chat(q) for q in questions("animal", 2)]

    def logodds(target: str) -> float:
        cands = [target] + [c for c in candidates("animal") if c != target]
        return float(np.mean(exact_scores(_Scorer(), base, chats, cands)[1]))  # type: ignore[arg-type]

    assert values[0] == pytest.approx(logodds("owl"), abs=1e-6)
    eps = 1e-3
    ps = params_of(model)
    with torch.no_grad():
        for p, s in zip(ps, step):
            p.add_(eps * s)
    up = [logodds("owl"), logodds("cat")]
    with torch.no_grad():
        for p, s in zip(ps, step):
            p.add_(-2 * eps * s)
    down = [logodds("owl"), logodds("cat")]
    fd = (np.asarray(up) - np.asarray(down)) / (2 * eps)
    assert proj == pytest.approx(fd, rel=1e-3, abs=1e-7)
