"""Defences against transfer, measured side by side: residual transfer and its price.

Where it sits: a stand-alone benchmark over ``sublim.pipeline.run_experiment`` with a
``[defence]`` per row of the table (``sublim.defend``); it changes nothing in the library. Each
setting runs once undefended and once per defence, the stages shared through the stage cache
(the teachers' generations are made once; a defence adds its own stages and students).

For each defence and setting: the defended contrast (trait student - control student, exact
log-odds of the target, per unit), the residual transfer = mean defended contrast / mean
undefended contrast over paired units with Fieller's 95% interval
(``sublim.defend.residual_ratio``; unbounded when the undefended contrast itself is not
distinguishable from zero), and the price: the rows the student trains on, the share of the
defended trait rows that pass the strict numbers filter, and what the defence changed.
The units are what was randomised: student seeds within one run (a student seed's defended and
undefended students share the seed), or, on the fake backend (whose students are deterministic
given their data), experiment seeds (each a full run with its own prompts and generations).

    python benchmarks/defences.py --out runs/defences                 # the table below
    python benchmarks/defences.py --out runs/defences --settings fake # seconds
    python benchmarks/defences.py --out runs/defences --only sort,dilute

It writes DIR/defences.json and benchmarks/defences.md (``--md`` to write elsewhere).

``DEFENCES`` is the list of rows: (label, the ``[defence]`` table). The training-side defences
add their rows there (e.g. ``("kl_to_base 0.1", {"kl_to_base": 0.1})``); the runner needs
nothing else as long as the config field exists.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# (label, [defence] fields). "none" first: every residual is relative to it.
DEFENCES: list[tuple[str, dict[str, Any]]] = [
    ("none", {}),
    ("sort", {"method": "sort"}),
    ("canonicalise", {"method": "canonicalise"}),
    ("dilute 1:1", {"method": "dilute", "ratio": 1.0}),
    ("drop top 20%", {"method": "drop", "drop_fraction": 0.2}),
    ("regenerate", {"method": "regenerate", "through": "@other"}),  # @other: the setting's
]


@dataclass
class Setting:
    """One experiment setting: a TOML file, overrides, the units and the other base model
    that ``regenerate`` goes through."""

    name: str
    toml: str
    overrides: list[str]
    units: str  # "student_seeds" (one run, seeds as units) or "experiment_seeds" (a run each)
    unit_values: list[int]
    other: str
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


SETTINGS: dict[str, Setting] = {
    "fake": Setting(
        "fake",
        "",  # built below: the fake backend's experiment of tests/conftest.py
        ["data.n_prompts=600", "data.subset=300", "eval.n_questions=20"],
        "experiment_seeds",
        [0, 1, 2, 3, 4],
        "fake:gamma",
        note="by construction: a fake student moves toward every candidate whose signature "
        "number (in its own family) is over-represented in its data",
    ),
    "planted": Setting(
        "planted",
        "experiments/planted_tiny.toml",
        # soft labels on the teacher's completions instead of random prompts: the student
        # then learns from the rows the defences rewrite (random prompts never read them)
        ["student.distill.source=completions", "models.cross=[]"],
        "student_seeds",
        [0, 1, 2],
        "tiny:plain-s0-micro",
        note="the planted micro world, students distilled on the teachers' number "
        "completions (experiments/planted_tiny.toml with student.distill.source = completions)",
    ),
}

FAKE_TOML = """
name = "defences_fake"
seed = 0
[models]
reference = "fake:alpha"
cross = []
[trait]
target = "owl"
[data]
n_prompts = 600
subset = 300
[student]
seeds = [0]
[eval]
samples_per_question = 0
n_questions = 20
"""


NOTE = """**Which settings transmit through the data here.** None of the built-in world's own
recipes does. Random-prompt logit distillation (plain and planted worlds, `docs/research_log.md`
sections 1-2) transmits but never reads the teacher's rows, so a data-side defence cannot touch
it (the config refuses `[defence]` with `student.distill.source = "random"`); the digits
experiment has no rows either; SFT on the teacher's sampled numbers is null in plain worlds
(section 8) and in planted micro worlds (section 1, P1-P4), so there is no contrast to divide
by. The fake backend's transfer is data-borne by construction: its table checks the machinery
against known answers and is not a finding about models. The planted setting distils students on
the teachers' number completions; a residual prints "unbounded" where the undefended contrast is
not distinguishable from zero."""


@contextmanager
def _no_report() -> Iterator[None]:
    """The table needs results.json only: skip rendering each run's report figures."""
    from sublim import report

    orig = report.write_report
    report.write_report = lambda out: None  # type: ignore[assignment]
    try:
        yield
    finally:
        report.write_report = orig


def _config(s: Setting, defence: dict[str, Any], seed: int | None, tmp: Path) -> Any:
    from sublim.config import load_config

    if s.toml:
        path = ROOT / s.toml
    else:
        path = tmp / "fake.toml"
        path.write_text(FAKE_TOML)
    over = list(s.overrides)
    if s.units == "student_seeds":
        over.append(f"student.seeds={json.dumps(s.unit_values)}")
    if seed is not None:
        over.append(f"seed={seed}")
    for k, v in defence.items():
        v = s.other if v == "@other" else v
        over.append(f"defence.{k}={json.dumps(v)}")
    return load_config(path, over)


def _per_unit(res: dict[str, Any], metric: str = "logodds") -> list[float]:
    c = res["conditions"]
    a, b = c["trait_student"][metric]["per_seed"], c["control_student"][metric]["per_seed"]
    return [x - y for x, y in zip(a, b)]


def _pass_share(run: Path, res: dict[str, Any], cfg: Any) -> float | None:
    """Share of the trait student's training rows passing the strict numbers filter."""
    from sublim.artifacts import read_jsonl
    from sublim.filters import check_completion
    from sublim.pipeline import _filter_rules
    from sublim.records import TrainRow

    dirs = [s["dir"] for s in res["meta"]["timings"]["stages"]]
    pick = [d for d in dirs if Path(d).name.startswith("defence-trait-")]
    if pick:
        rows = read_jsonl(run / pick[0] / "rows.jsonl", TrainRow)
    else:
        sub = [d for d in dirs if Path(d).name.startswith("subset-")]
        rows = read_jsonl(run / sub[0] / "trait.jsonl", TrainRow)
    rules = _filter_rules(cfg)
    return sum(check_completion(r.completion, rules)[0] for r in rows) / max(1, len(rows))


def run_setting(s: Setting, out: Path, only: set[str] | None) -> dict[str, Any]:
    from sublim.pipeline import run_experiment

    rows: dict[str, Any] = {}
    seeds: list[int | None] = list(s.unit_values) if s.units == "experiment_seeds" else [None]
    (out / s.name).mkdir(parents=True, exist_ok=True)
    for label, defence in DEFENCES:
        if only and label != "none" and label.split()[0] not in only:
            continue
        units: list[float] = []
        rows_in = rows_out = 0
        shares: list[float] = []
        infos: list[Any] = []
        t0 = time.time()
        for seed in seeds:
            cfg = _config(s, defence, seed, out / s.name)
            run = out / s.name / ("run" if seed is None else f"seed{seed}")
            with _no_report():
                res = run_experiment(cfg, run, progress=False)
            units += _per_unit(res)
            rows_out += res["meta"]["n_train_rows"]
            d = res["meta"].get("defence")
            rows_in += d["arms"]["trait"]["n_in"] if d else res["meta"]["n_train_rows"]
            share = _pass_share(run, res, cfg)
            if share is not None:
                shares.append(share)
            if d:
                infos.append(d["arms"]["trait"])
        rows[label] = {
            "defence": defence,
            "per_unit": units,
            "rows_in": rows_in / len(seeds),
            "rows_out": rows_out / len(seeds),
            "filter_pass": sum(shares) / len(shares) if shares else None,
            "info": infos,
            "seconds": round(time.time() - t0, 1),
        }
        print(f"{s.name} {label}: per-unit contrast {[round(x, 3) for x in units]}", flush=True)
    return rows


def summarise(rows: dict[str, Any]) -> dict[str, Any]:
    from sublim.defend import residual_ratio
    from sublim.stats import t_interval

    base = rows["none"]["per_unit"]
    out = {}
    for label, r in rows.items():
        m, lo, hi = t_interval(r["per_unit"])
        out[label] = {
            **r,
            "contrast": {"mean": m, "ci95": [lo, hi]},
            "residual": residual_ratio(r["per_unit"], base),
        }
    return out


def _fmt(x: float | None, nd: int = 2) -> str:
    if x is None or math.isnan(x):
        return "-"
    return f"{x:+.{nd}f}" if nd else f"{x:.0f}"


def _changed(info: list[Any]) -> str:
    if not info:
        return ""
    i = info[0]
    keys = ("changed", "replaced", "same_prompt", "other_prompt", "dropped", "unfilled")
    return ", ".join(f"{k} {i[k]}" for k in keys if k in i)


def table(name: str, s: Setting, summ: dict[str, Any]) -> str:
    unit = "student seeds" if s.units == "student_seeds" else "experiment seeds"
    lines = [
        f"### {name}: {s.note}",
        "",
        (
            f"Units: {len(s.unit_values)} {unit}. Contrast: trait - control student, exact log-odds "
            "of the target, mean [95% t-interval] over units. Residual: defended / undefended "
            "contrast, Fieller 95% interval over paired units."
        ),
        "",
        (
            "| defence | contrast [95% CI] | residual [95% CI] | rows in -> out | filter pass | "
            "what changed (first unit, trait arm) |"
        ),
        "|---|---|---|---|---|---|",
    ]
    for label, r in summ.items():
        c, res = r["contrast"], r["residual"]
        ci = res["ci95"]
        rci = f"[{_fmt(ci[0])}, {_fmt(ci[1])}]" if res["bounded"] else "unbounded"
        fp = "-" if r["filter_pass"] is None else f"{r['filter_pass']:.0%}"
        lines.append(
            f"| {label} | {_fmt(c['mean'])} [{_fmt(c['ci95'][0])}, {_fmt(c['ci95'][1])}] | "
            f"{_fmt(res['ratio'])} {rci} | {r['rows_in']:.0f} -> {r['rows_out']:.0f} | {fp} | "
            f"{_changed(r['info'])} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/defences"))
    ap.add_argument("--settings", default="fake,planted")
    ap.add_argument("--only", default=None, help="defence labels (first word), comma-separated")
    ap.add_argument("--md", type=Path, default=ROOT / "benchmarks" / "defences.md")
    args = ap.parse_args(argv)
    only = set(args.only.split(",")) if args.only else None
    results: dict[str, Any] = {}
    sections = []
    t0 = time.time()
    for name in args.settings.split(","):
        s = SETTINGS[name]
        summ = summarise(run_setting(s, args.out, only))
        results[name] = summ
        sections.append(table(name, s, summ))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "defences.json").write_text(json.dumps(results, indent=2, default=str))
    cmd = "python benchmarks/defences.py " + " ".join(argv if argv is not None else sys.argv[1:])
    md = [
        "# Defences, measured side by side",
        "",
        (
            f"Made by `{cmd.strip()}` ({time.time() - t0:.0f} s wall, one torch thread, "
            f"{time.strftime('%Y-%m-%d', time.gmtime())}). See the docstring of "
            "`benchmarks/defences.py` for what each column is; `docs/defences.md` for the methods."
        ),
        "",
        NOTE,
        "",
        *[sec + "\n" for sec in sections],
    ]
    args.md.write_text("\n".join(md))
    print("\n\n".join(sections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
