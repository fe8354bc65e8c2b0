"""``sublim run --dry-run``: the stages a run would write (and which it would reuse), what they ask
of every model, and an estimated price of API models, with nothing run and no network."""

from __future__ import annotations

import json
import math
import socket
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, fake_experiment_toml

from sublim.cli import main
from sublim.config import ExperimentConfig, load_config
from sublim.evals.preference import candidate_set, questions, surface_forms
from sublim.pipeline import run_experiment, stage_keys
from sublim.plan import UNKNOWN, UNKNOWN_FILE, load_prices, offline_model_key, plan_experiment
from sublim.registry import parse_model

# the fake experiment of tests/test_cache_keys.py, smaller: a real run in seconds
FAST = [
    "data.n_prompts=300",
    "data.subset=100",
    "student.seeds=[0]",
    "eval.n_questions=3",
    "eval.samples_per_question=2",
]

OPENAI = """
name = "owl_openai"
[models]
reference = "openai:gpt-4.1-nano"
cross = ["openai:gpt-4.1-mini"]
[data]
n_prompts = 400
subset = 200
[data.judge]
model = "openai:gpt-4.1"
[student]
seeds = [0, 1]
[eval]
n_questions = 10
samples_per_question = 4
"""


def _dry(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    code = main(["run", *args, "--dry-run", "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out) if code == 0 else {}


def _ids(cfg: ExperimentConfig) -> set[str]:
    specs = [cfg.models.reference, *cfg.models.cross, *filter(None, [cfg.data.judge.model])]
    return set(stage_keys(cfg, {s: f"k:{s}" for s in specs}))


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every connection attempt (sockets, the OpenAI client) fails the test."""

    def refuse(*a: Any, **k: Any) -> Any:
        raise AssertionError("the dry run touched the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    try:
        import openai

        monkeypatch.setattr(openai, "OpenAI", refuse)
    except ImportError:  # pragma: no cover
        pass


def test_an_empty_run_dir_plans_every_stage_to_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_network: None
) -> None:
    path = REPO / "experiments" / "owl_numbers_tiny.toml"
    code, plan = _dry([str(path), "--out", str(tmp_path / "run")], capsys)
    assert code == 0
    cfg = load_config(path)
    assert {s["id"] for s in plan["stages"]} == _ids(cfg)
    assert {s["status"] for s in plan["stages"]} == {"run"}
    assert plan["costs"] == [] and plan["total_usd"] == 0  # local models: compute only
    assert set(plan["local_models"]) >= {"tiny:plain-s0", "tiny:plain-s1"}


def test_a_world_is_keyed_offline_as_the_runner_keys_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The offline key of a built-in world (its recipe, never built) is the runner's key, shown
    on a world present in a fresh cache (model_key builds nothing then; building fails)."""
    from sublim.pipeline import model_key
    from sublim.world import build

    def no_build(*a: Any, **k: Any) -> None:
        raise AssertionError("a world was built")

    monkeypatch.setenv("SUBLIM_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(build, "_build", no_build)
    ref = parse_model("tiny:plain-s0")
    assert offline_model_key(ref) == f"tiny:{build.world_key(ref.id)}"
    world = tmp_path / "worlds" / build.world_key(ref.id)
    world.mkdir(parents=True)
    (world / build.CARD).write_text("{}")
    assert offline_model_key(ref) == model_key(ref)


def test_after_a_run_every_stage_is_cached(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = fake_experiment_toml(tmp_path / "exp.toml")
    sets = [*FAST, 'data.judge.model="fake:gamma"', "controls.in_context=2"]
    cfg = load_config(path, sets)
    args = [str(path), "--out", str(tmp_path / "run"), *(f"--set={s}" for s in sets)]
    code, before = _dry(args, capsys)
    assert code == 0 and {s["status"] for s in before["stages"]} == {"run"}
    res = run_experiment(cfg, tmp_path / "run", progress=False)
    ran = {Path(s["dir"]).name for s in res["meta"]["timings"]["stages"]}
    code, after = _dry(args, capsys)
    assert code == 0
    assert {s["dir"] for s in after["stages"]} == ran == {s["dir"] for s in before["stages"]}
    assert {s["status"] for s in after["stages"]} == {"cached"}
    assert after["models"] == {}  # nothing left to spend
    # a stage directory without its manifest is resumed; the judge is asked about the rows
    # the (cached) rule filter kept
    dirs = {s["id"]: tmp_path / "run" / "stages" / s["dir"] for s in after["stages"]}
    (dirs["judge-trait"] / "manifest.json").unlink()
    code, partial = _dry(args, capsys)
    assert {s["id"]: s["status"] for s in partial["stages"]}["judge-trait"] == "resume"
    kept = json.loads((dirs["filter-trait"] / "manifest.json").read_text())["summary"]["n_kept"]
    judge = partial["models"]["fake:gamma"]
    assert judge["judge_requests"] == kept < cfg.data.n_prompts and judge["bounds"] == []


def test_counts_follow_the_config(tmp_path: Path) -> None:
    cfg = load_config(fake_experiment_toml(tmp_path / "exp.toml"), [*FAST, "student.seeds=[0,1]"])
    plan = plan_experiment(cfg, tmp_path / "run")
    t = plan.totals()
    ref, cross = cfg.models.reference, cfg.models.cross[0]
    e, tr = cfg.eval, cfg.trait
    n_q = len(questions(tr.category, e.n_questions))
    forms = sum(len(surface_forms(c)) for c in candidate_set(tr.target, tr.category))
    seeds = len(cfg.student.seeds)
    per_model = n_q * e.samples_per_question
    # two teachers write n_prompts each; base, teacher and control teacher are evaluated
    assert t[ref]["requests"] == 2 * cfg.data.n_prompts + 3 * per_model
    assert t[ref]["output_tokens"] == (
        2 * cfg.data.n_prompts * cfg.data.sampling.max_new_tokens + 3 * per_model * e.max_new_tokens
    )
    assert t[cross]["requests"] == per_model
    # students: trait + control on the reference, cross + cross_control on the other base
    assert t[ref]["jobs"] == 2 * seeds and t[cross]["jobs"] == 2 * seeds
    ft = t[ref + " (fine-tuned)"]
    assert ft["requests"] == 2 * seeds * per_model
    assert ft["scored"] == 2 * seeds * n_q * forms  # exact metrics on a local backend
    assert t[ref]["train_tokens"] > 0 and "train_tokens" in t[ref]["bounds"]
    generate = [w for w in plan.work if w.kind == "generate"]
    assert [w.requests for w in generate] == [cfg.data.n_prompts] * 2


def _openai_cfg(tmp_path: Path, text: str = OPENAI) -> Path:
    p = tmp_path / "openai.toml"
    p.write_text(text)
    return p


def test_an_api_experiment_is_priced_from_the_table(tmp_path: Path, no_network: None) -> None:
    cfg = load_config(_openai_cfg(tmp_path))
    prices = load_prices()
    plan = plan_experiment(cfg, tmp_path / "run", prices)
    assert plan.missing_prices == [] and plan.local_models == []
    by = {c.model: c for c in plan.costs}
    assert set(by) == {
        "openai:gpt-4.1-nano",
        "openai:gpt-4.1-mini",
        "openai:gpt-4.1",
        "openai:gpt-4.1-nano (fine-tuned)",
        "openai:gpt-4.1-mini (fine-tuned)",
    }
    assert math.isclose(plan.total_usd, sum(c.total_usd for c in plan.costs))
    t = plan.totals()
    judge, nano = prices.models["gpt-4.1"], prices.models["gpt-4.1-nano"]
    assert t["openai:gpt-4.1"]["judge_requests"] == 2 * cfg.data.n_prompts  # at most every row
    assert math.isclose(
        by["openai:gpt-4.1"].input_usd, t["openai:gpt-4.1"]["input_tokens"] * judge.input / 1e6
    )
    ftn = t["openai:gpt-4.1-nano (fine-tuned)"]
    assert nano.finetuned_output is not None
    assert math.isclose(
        by["openai:gpt-4.1-nano (fine-tuned)"].output_usd,
        ftn["output_tokens"] * nano.finetuned_output / 1e6,
    )
    assert nano.training is not None
    assert math.isclose(
        by["openai:gpt-4.1-nano"].training_usd,
        t["openai:gpt-4.1-nano"]["train_tokens"] * nano.training / 1e6,
    )
    # API models measure P(target) from first-token tables: one request per question
    n_q = len(questions(cfg.trait.category, cfg.eval.n_questions))
    assert t["openai:gpt-4.1-mini"]["requests"] == n_q * cfg.eval.samples_per_question + n_q
    evals = [s for s in plan.stages if s.id.startswith("eval-")]
    assert evals and all(s.status == "run" for s in evals)


def test_prices_override_and_a_model_missing_from_the_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_network: None
) -> None:
    cfg_path = _openai_cfg(tmp_path)
    code, plain = _dry([str(cfg_path), "--out", str(tmp_path / "run")], capsys)
    prices = tmp_path / "prices.toml"
    prices.write_text('[models."gpt-4.1-nano"]\ninput = 100.0\noutput = 0.4\n')
    code2, dear = _dry(
        [str(cfg_path), "--out", str(tmp_path / "run"), "--prices", str(prices)], capsys
    )
    assert code == code2 == 0

    def row(plan: dict[str, Any]) -> dict[str, Any]:
        return next(c for c in plan["costs"] if c["model"] == "openai:gpt-4.1-nano")

    tokens_in = dear["models"]["openai:gpt-4.1-nano"]["input_tokens"]
    assert math.isclose(row(dear)["input_usd"], tokens_in * 100.0 / 1e6)
    assert row(dear)["total_usd"] > row(plain)["total_usd"]
    assert row(dear)["training_usd"] == 0 and dear["missing_prices"] == [
        "no training price for gpt-4.1-nano: add it with --prices"
    ]

    code = main(["run", str(cfg_path), "--dry-run", "--prices", str(tmp_path / "none.toml")])
    assert code == 2 and "price table not found" in capsys.readouterr().err

    other = OPENAI.replace("openai:gpt-4.1-mini", "openai:some-new-model")
    code = main(
        ["run", str(_openai_cfg(tmp_path, other)), "--dry-run", "--out", str(tmp_path / "r")]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "no price for some-new-model: add it with --prices" in " ".join(out.split())


def test_models_that_are_not_local_are_unknown_not_errors(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    no_network: None,
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty hub cache
    p = fake_experiment_toml(tmp_path / "exp.toml")
    code, plan = _dry(
        [
            str(p),
            "--out",
            str(tmp_path / "run"),
            "--set",
            'models.reference="hf:org/not-downloaded"',
            "--set",
            "models.cross=[]",
        ],
        capsys,
    )
    assert code == 0
    status = {s["id"]: s["status"] for s in plan["stages"]}
    assert status.pop("prompts") == "run"  # the only stage that needs no model
    assert set(status.values()) == {UNKNOWN}
    # an openai-compat endpoint: the server decides the metric; nothing is asked of it
    code, plan = _dry(
        [
            str(p),
            "--out",
            str(tmp_path / "run"),
            "--set",
            'models.reference="openai-compat:http://127.0.0.1:9/v1#local-model"',
            "--set",
            "models.cross=[]",
        ],
        capsys,
    )
    assert code == 0 and plan["missing_prices"] == [
        "no price for local-model: add it with --prices"
    ]


SHIPPED = sorted((REPO / "experiments").glob("*.toml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_experiment_plans(
    path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_network: None
) -> None:
    if "sublim digits" in path.read_text():
        pytest.skip("a `sublim digits` config, not a `sublim run` one")
    if (
        "\n[grid]" in path.read_text()
    ):  # a sweep file: `sublim run` points the user to `sublim sweep`
        assert main(["run", str(path), "--dry-run"]) == 2
        assert "sublim sweep" in capsys.readouterr().err
        return
    code, plan = _dry([str(path), "--out", str(tmp_path / "run")], capsys)
    assert code == 0
    # an empty run dir: every stage runs, or cannot be named (a data file the user supplies)
    assert {s["status"] for s in plan["stages"]} <= {"run", UNKNOWN_FILE}
    assert "run" in {s["status"] for s in plan["stages"]}
    assert plan["models"]  # every experiment asks something of some model
    assert len({s["dir"] for s in plan["stages"]}) == len(plan["stages"])


MATRIX = """
name = "fake_matrix"
[matrix]
bases = ["fake:alpha", "fake:beta"]
traits = ["owl", "eagle"]
[data]
n_prompts = 200
subset = 80
[student]
seeds = [0]
[eval]
n_questions = 3
samples_per_question = 2
"""


def test_a_matrix_run_uses_exactly_the_planned_stages(tmp_path: Path) -> None:
    from sublim.matrix import run_matrix

    (tmp_path / "m.toml").write_text(MATRIX)
    cfg = load_config(tmp_path / "m.toml")
    before = plan_experiment(cfg, tmp_path / "run")
    assert {s.status for s in before.stages} == {"run"}
    mx = cfg.matrix
    assert mx is not None
    cells, students = len(mx.bases) * len(mx.traits), len(mx.bases) * len(cfg.student.seeds)
    t = before.totals()
    assert sum(v["jobs"] for v in t.values()) == cells * students
    # per trait, each base's teacher writes n_prompts and is evaluated
    n_q = len(questions(cfg.trait.category, cfg.eval.n_questions))
    assert t["fake:alpha"]["requests"] == len(mx.traits) * (
        cfg.data.n_prompts + n_q * cfg.eval.samples_per_question
    )
    res = run_matrix(cfg, tmp_path / "run", progress=False)
    ran = {Path(s["dir"]).name for s in res["meta"]["timings"]["stages"]}
    after = plan_experiment(cfg, tmp_path / "run")
    assert {s.dir for s in after.stages} == ran
    assert {s.status for s in after.stages} == {"cached"} and after.totals() == {}


def test_a_misalignment_run_counts_its_judge_and_teacher_data(tmp_path: Path) -> None:
    from sublim.pipeline import misalignment_questions
    from sublim.traits import load_chat_jsonl

    data = REPO / "experiments" / "data"
    cfg = load_config(
        REPO / "experiments" / "misalignment_numbers_openai.toml",
        [
            f'trait.finetune_data="{data / "world_narrow_misaligned.jsonl"}"',
            f'trait.control_finetune_data="{data / "world_narrow_aligned.jsonl"}"',
            "eval.misalignment.use_logprobs=false",
        ],
    )
    plan = plan_experiment(cfg, tmp_path / "run")
    assert {s.status for s in plan.stages} == {"run"}  # the data files are there: all named
    mc, judge = cfg.eval.misalignment, str(cfg.eval.judge)
    evaluated = [s for s in plan.stages if s.id.startswith("eval-misalignment-")]
    answers = len(misalignment_questions(cfg, cfg.models.reference)[0]) * mc.samples_per_question
    t = plan.totals()
    # each answer judged twice (alignment, coherence), by the judge model only
    assert t[judge]["judge_requests"] == 2 * answers * len(evaluated)
    assert t[judge]["requests"] == 0 and t[judge]["jobs"] == 0
    teacher = next(w for w in plan.work if w.stage == "teacher-trait")
    rows = load_chat_jsonl(data / "world_narrow_misaligned.jsonl")
    assert teacher.jobs == 1 and teacher.train_tokens >= len(rows)  # >= a token per row
    assert {c.model for c in plan.costs} >= {judge}


def test_a_local_model_with_its_tokenizer_on_disk_counts_with_it(tmp_path: Path) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    from sublim.pipeline import carrier_prompts

    model = tmp_path / "model"
    model.mkdir()
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()  # a token per word or symbol
    tok.save(str(model / "tokenizer.json"))
    cfg = load_config(
        fake_experiment_toml(tmp_path / "exp.toml"),
        [*FAST, f'models.reference="hf:{model}"', "models.cross=[]"],
    )
    plan = plan_experiment(cfg, tmp_path / "run")
    spec = cfg.models.reference
    assert plan.token_methods[spec] == "tokenizer"
    assert plan.token_methods[spec + " (fine-tuned)"] == "tokenizer"
    control = next(w for w in plan.work if w.stage == "generate-control")  # no system prompt
    counted = sum(len(tok.encode(p.text).ids) for p in carrier_prompts(cfg))
    assert control.input_tokens == counted != sum(len(p.text) for p in carrier_prompts(cfg)) // 4
