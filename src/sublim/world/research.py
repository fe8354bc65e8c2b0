"""Multi-world experiments of issue 6: one recipe run over several built-in worlds fixed in
advance, with worlds (not student seeds) as the independent units.

Where it sits: above the runner. It reuses the pipeline's own stages (``stage_teachers``,
``stage_student``, ``stage_eval``: the same teachers, distillation, exact evaluation and
content-addressed cache as ``sublim run``) but skips teacher generation and filtering, which a
random-prompt distillation student never reads. For each world k of the list:

- teachers: world k with a "you love X" system prompt for every target X of ``targets``, and one
  control teacher, world k with the neutral ``trait.control_system_prompt`` (so trait and control
  students both learn from a prompted copy of the base and share its generic drift);
- three student bases ("arms"): world k itself (**same init**), its init twin
  ``build.TWIN_OFFSET + k`` (same corpus and batch order, another initialisation: **twin**), and
  the next world of the list, cyclically (**other world**);
- on every base, per student seed: one student per target teacher and one control student. With
  random-prompt distillation (``student.mode = "distill"``, ``source = "random"``) all of them are
  distilled on the same random prompts (drawn from the student seed). With data-borne students
  (``student.mode = "sft"``, or distillation with ``source = "completions"``) every teacher of the
  world writes completions of the same seeded prompts (``data.sampling``: temperature, top-p,
  greedy at temperature 0), the strict filter keeps rows, and each student learns from a seeded
  subset of ``data.subset`` kept rows of its own teacher (trait students from the target
  teacher's rows, control students from the control teacher's rows, both arms the same size);
  generation is the pipeline's chunked, resumable stage;
- the effect of an arm in world k: the mean over targets and seeds of
  [log-odds of X for the X-student - log-odds of X for the control student].

It then tests each arm's per-world effects over worlds with ``sublim.stats.paired_contrast``
(a two-sided one-sample t over worlds), and the same-init effect against each cross-init arm
(paired over worlds). The research log (docs/research_log.md) records the pre-registered design
and what it found. ``python -m sublim.world.research`` with no options runs that confirmatory
design (``CONFIRMATORY_WORLDS`` with ``experiments/owl_numbers_world.toml``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from sublim.artifacts import atomic_write_text
from sublim.errors import ConfigError
from sublim.world.spec import KINDS, TWIN_OFFSET

# Frozen before the confirmatory run (docs/research_log.md, section 2b, phase 2): world
# seeds never run before, the targets averaged per world, and the neutral control prompt.
CONFIRMATORY_WORLDS: tuple[int, ...] = (20, 21, 22, 23, 24, 25, 26, 27)
TARGETS: tuple[str, ...] = ("owl", "cat", "wolf", "eagle")
DEFAULT_CONFIG = Path("experiments/owl_numbers_world.toml")
ARMS = ("same_init", "twin", "other_world")


def world_name(seed: int, size: str, kind: str = "plain") -> str:
    """The tiny-backend model name of a built-in world (``small`` has no size suffix)."""
    return f"tiny:{kind}-s{seed}" + ("" if size == "small" else f"-{size}")


def arm_bases(worlds: list[int]) -> dict[int, dict[str, int]]:
    """World seed of each arm's student base, per tested world: itself, its init twin, and the
    next world of the list (cyclically), so the other-world arm needs no extra world builds."""
    if len(set(worlds)) != len(worlds) or len(worlds) < 2:
        raise ConfigError(
            "--worlds needs at least two distinct world seeds (the other-world arm uses the next one)"
        )
    if any(k >= TWIN_OFFSET or k < 0 for k in worlds):
        raise ConfigError(
            f"world seeds must be in 0..{TWIN_OFFSET - 1}; seeds from {TWIN_OFFSET} up are init twins"
        )
    return {
        k: {"same_init": k, "twin": TWIN_OFFSET + k, "other_world": worlds[(i + 1) % len(worlds)]}
        for i, k in enumerate(worlds)
    }


def teacher_rows(
    ctx: Any, backend: Any, teacher: Any, role: str, row: dict[str, Any]
) -> tuple[list[Any], str]:
    """A teacher's training rows for data-borne students: completions of the experiment's seeded
    prompts (the pipeline's generate and filter stages, cached and resumable), then a seeded
    subset of exactly ``data.subset`` kept rows (an arm with fewer is a user error, so trait and
    control students always learn from the same number of rows). The control teacher's stages do
    not depend on the target, so they are computed once per world and reused. Records the pass
    rate in ``row["pass_rate"]``."""
    from sublim.pipeline import stage_filter, stage_generate, stage_prompts, stage_subset

    prompts, prompts_key = stage_prompts(ctx)
    comps, ckey = stage_generate(ctx, backend, teacher, prompts, prompts_key, role)
    decisions, summary, fkey = stage_filter(ctx, comps, ckey, role)
    kept = [d for d in decisions if d.kept]
    name = role if role == "control" else ctx.cfg.trait.target
    row.setdefault("pass_rate", {})[name] = summary["pass_rate"]
    need = ctx.cfg.data.subset
    if len(kept) < need:
        raise ConfigError(
            f"the filter kept {len(kept)} of {len(comps)} completions of the {name} teacher, fewer "
            f"than data.subset = {need}; raise data.n_prompts (or lower data.subset)"
        )
    subsets, skey = stage_subset(ctx, {role: kept}, {role: fkey})
    return subsets[role], f"{skey}/{role}"


def _kept(ctx: Any, backend: Any, teacher: Any, role: str) -> int:
    """How many of a teacher's completions the strict filter keeps (cached stages)."""
    from sublim.pipeline import stage_filter, stage_generate, stage_prompts

    prompts, prompts_key = stage_prompts(ctx)
    comps, ckey = stage_generate(ctx, backend, teacher, prompts, prompts_key, role)
    decisions, _, _ = stage_filter(ctx, comps, ckey, role)
    return sum(d.kept for d in decisions)


def grown_prompts(n_prompts: int, subset: int, kept: int) -> int:
    """The prompt count of a world whose scarcest teacher kept ``kept`` of ``n_prompts`` rows,
    fewer than ``subset``: ``n_prompts x ceil(subset / kept)`` (the rule of the research log's
    section 8 amendment, fixed before it was applied); unchanged when ``kept >= subset``."""
    if kept >= subset:
        return n_prompts
    if kept <= 0:
        raise ConfigError(
            f"a teacher kept none of {n_prompts} completions; prompts cannot be grown to reach "
            f"data.subset = {subset}"
        )
    return n_prompts * -(-subset // kept)


def _mean_logodds(scores: list[Any]) -> float:
    vals = [q.logodds for q in scores if q.logodds is not None]
    return float(np.mean(vals))


def run_over_worlds(
    config: Path,
    worlds: list[int],
    out: Path,
    size: str = "micro",
    targets: tuple[str, ...] = TARGETS,
    overrides: list[str] | None = None,
    progress: bool = False,
    arms: tuple[str, ...] = ARMS,
    kind: str = "plain",
    only: list[int] | None = None,
    grow: bool = False,
) -> dict[str, Any]:
    """Run the multi-target design of the module docstring with the experiment ``config``
    (``student.mode = "distill"``, ``source = "random"``, a system-prompt teacher) on every world
    of ``worlds`` (of ``kind``, plain by default, and ``size``); returns (and writes to ``out/summary.json``) per-world
    rows and one test over worlds per arm. With ``grow`` (data-borne students only), a world
    where some teacher keeps fewer than ``data.subset`` rows regenerates every teacher of that
    world on ``grown_prompts`` prompts; the row records the count used (``n_prompts``)."""
    from sublim.config import load_config
    from sublim.pipeline import (
        Model,
        RunContext,
        model_key,
        stage_eval,
        stage_student,
        stage_teachers,
    )
    from sublim.progress import Reporter
    from sublim.registry import get_backend, parse_model
    from sublim.stats import paired_contrast
    from sublim.world.build import ensure_world

    cfg = load_config(config, list(overrides or []))
    if cfg.trait.teacher != "system_prompt":
        raise ConfigError(
            f"{config}: the multi-world runner needs trait.teacher='system_prompt' (a prompted "
            "copy of each world teaches)"
        )
    data_borne = not (cfg.student.mode == "distill" and cfg.student.distill.source == "random")
    if cfg.trait.system_prompt is not None and len(targets) > 1:
        raise ConfigError(
            "trait.system_prompt names one animal; leave it unset when several targets are averaged"
        )
    if not targets or len(set(targets)) != len(targets):
        raise ConfigError("--targets needs distinct target names")
    if not arms or any(a not in ARMS for a in arms):
        raise ConfigError(f"--arms must be some of {', '.join(ARMS)}")
    bases = {k: {a: b for a, b in v.items() if a in arms} for k, v in arm_bases(worlds).items()}
    if only is not None:
        if not only or any(k not in bases for k in only):
            raise ConfigError(f"--only must name worlds of --worlds ({worlds})")
        bases = {k: bases[k] for k in worlds if k in only}
        worlds = [k for k in worlds if k in only]
    out.mkdir(parents=True, exist_ok=True)
    if only is None:  # this run's rows only (a rerun is served from the cache)
        (out / "rows.jsonl").unlink(missing_ok=True)
    rep = Reporter(progress)
    t_all = time.perf_counter()

    # Build (or find) every world first, so cold and warm costs are reported apart.
    # every arm's student base, and each tested world itself (its teachers are prompted copies)
    seeds = sorted({s for b in bases.values() for s in b.values()} | set(bases))
    t0 = time.perf_counter()
    for s in seeds:
        ensure_world(world_name(s, size, kind)[len("tiny:") :], progress=progress)
    build_seconds = time.perf_counter() - t0
    backend = get_backend("tiny")
    models = {
        s: Model(parse_model(world_name(s, size, kind), label="base"), "", "base") for s in seeds
    }
    for m in models.values():
        m.key = model_key(m.ref)

    rows: list[dict[str, Any]] = []
    for k in worlds:
        t_world = time.perf_counter()
        row: dict[str, Any] = {"world": k, "bases": bases[k]}
        wcfg = cfg
        if data_borne and grow:
            kept = []
            for target in targets:
                tcfg = cfg.model_copy(
                    update={"trait": cfg.trait.model_copy(update={"target": target})}
                )
                ctx = RunContext(tcfg, out / f"world-{k}", rep)
                teacher, control_teacher = stage_teachers(ctx, backend, models[k])
                kept.append(_kept(ctx, backend, teacher, "trait"))
            kept.append(_kept(ctx, backend, control_teacher, "control"))
            n = grown_prompts(cfg.data.n_prompts, cfg.data.subset, min(kept))
            if n != cfg.data.n_prompts:
                rep.say(f"world {k}: a teacher kept {min(kept)} rows; regenerating on {n} prompts")
                wcfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"n_prompts": n})})
            row["n_prompts"] = n
        for target in targets:
            tcfg = wcfg.model_copy(
                update={"trait": wcfg.trait.model_copy(update={"target": target})}
            )
            ctx = RunContext(tcfg, out / f"world-{k}", rep)
            teacher, control_teacher = stage_teachers(ctx, backend, models[k])
            row.setdefault("base", {})[target] = _mean_logodds(
                stage_eval(ctx, backend, models[k])[0]
            )
            row.setdefault("teacher", {})[target] = _mean_logodds(
                stage_eval(ctx, backend, teacher)[0]
            )
            row.setdefault("control_teacher", {})[target] = _mean_logodds(
                stage_eval(ctx, backend, control_teacher)[0]
            )
            # Random prompts come from the student seed alone, so a trait student and its control
            # student see exactly the same inputs (data key "random"); data-borne students learn
            # from their own teacher's filtered completions of the same prompts.
            data: dict[str, tuple[list[Any], str]] = {
                "trait": ([], "random"),
                "control": ([], "random"),
            }
            if data_borne:
                data = {
                    "trait": teacher_rows(ctx, backend, teacher, "trait", row),
                    "control": teacher_rows(ctx, backend, control_teacher, "control", row),
                }
            for arm, b in bases[k].items():
                base = models[b]
                trait_lo, control_lo = [], []
                for seed in cfg.student.seeds:
                    ts = stage_student(
                        ctx, backend, base, teacher, *data["trait"], f"{arm}-{target}", seed
                    )
                    cs = stage_student(
                        ctx,
                        backend,
                        base,
                        control_teacher,
                        *data["control"],
                        f"{arm}-control",
                        seed,
                    )
                    trait_lo.append(_mean_logodds(stage_eval(ctx, backend, ts)[0]))
                    control_lo.append(_mean_logodds(stage_eval(ctx, backend, cs)[0]))
                row.setdefault(arm, {})[target] = {
                    "trait": float(np.mean(trait_lo)),
                    "control": float(np.mean(control_lo)),
                    "trait_per_seed": trait_lo,
                    "control_per_seed": control_lo,
                }
        for arm in arms:
            row[f"{arm}_effect"] = float(
                np.mean([v["trait"] - v["control"] for v in row[arm].values()])
            )
        if "owl" in targets:
            for arm in arms:
                row[f"{arm}_owl_effect"] = row[arm]["owl"]["trait"] - row[arm]["owl"]["control"]
        row["seconds"] = round(time.perf_counter() - t_world, 1)
        rows.append(row)
        with (out / "rows.jsonl").open("a", encoding="utf-8") as f:  # progress of a long run
            f.write(json.dumps(row) + "\n")
        rep.say(
            f"world {k}: "
            + ", ".join(f"{a} {row[a + '_effect']:+.3f}" for a in arms)
            + f" ({row['seconds']} s)"
        )

    def test(key: str) -> dict[str, Any]:
        r = paired_contrast([x[key] for x in rows], [0.0] * len(rows))
        return {
            "mean": r["mean"],
            "ci95": r["ci95"],
            "p_value": r["p_value"],
            "per_world": [x[key] for x in rows],
        }

    summary: dict[str, Any] = {
        "config": str(config),
        "kind": kind,
        "size": size,
        "worlds": worlds,
        "targets": list(targets),
        "control_system_prompt": cfg.trait.control_system_prompt,
        "student_seeds": cfg.student.seeds,
        "student_mode": cfg.student.mode
        if not data_borne or cfg.student.mode == "sft"
        else "distill-completions",
        "sampling": cfg.data.sampling.model_dump() if data_borne else None,
        # the recipe's main knobs, flat (``sublim world curve`` plots effects against them)
        "recipe": {
            "rows": cfg.data.subset if data_borne else None,
            "prompts": cfg.data.n_prompts if data_borne else None,
            "teacher_temperature": cfg.data.sampling.temperature if data_borne else None,
            "epochs": cfg.student.finetune.epochs if cfg.student.mode == "sft" else None,
            "lr": cfg.student.finetune.lr if cfg.student.mode == "sft" else cfg.student.distill.lr,
            "method": cfg.student.finetune.method
            if cfg.student.mode == "sft"
            else cfg.student.distill.method,
            "steps": cfg.student.distill.steps if cfg.student.mode == "distill" else None,
        },
        "overrides": list(overrides or []),
        "grow_prompts": grow,
        "arms": list(arms),
        "tests": {arm: test(f"{arm}_effect") for arm in arms},
        "owl_only": {arm: test(f"{arm}_owl_effect") for arm in arms} if "owl" in targets else None,
        # secondary: how much of the same-init effect is specific to the shared initialisation
        "same_init_minus": {
            arm: paired_contrast(
                [x["same_init_effect"] for x in rows], [x[f"{arm}_effect"] for x in rows]
            )
            for arm in arms
            if arm != "same_init" and "same_init" in arms
        },
        "build_seconds": round(build_seconds, 1),
        "wall_seconds": round(time.perf_counter() - t_all, 1),
        "rows": rows,
    }
    # a part of a split design (``only``) never overwrites the whole design's summary
    name = "summary.json" if only is None else f"summary-only-{'-'.join(map(str, worlds))}.json"
    summary["summary_path"] = str(out / name)
    atomic_write_text(out / name, json.dumps(summary, indent=1))
    return summary


def format_summary(s: dict[str, Any]) -> str:
    """A few lines: one test per arm (all targets, then owl alone) and the wall times."""
    lines = [
        f"worlds {s['worlds']}, targets {s['targets']}, control prompt {s['control_system_prompt']!r}"
    ]
    for title, tests in (("all targets", s["tests"]), ("owl only", s["owl_only"])):
        if not tests:
            continue
        for arm, t in tests.items():
            lines.append(
                f"{title:11s} {arm:11s} {t['mean']:+.3f} [{t['ci95'][0]:+.3f}, {t['ci95'][1]:+.3f}] p={t['p_value']:.3g}"
            )
    for arm, t in (s.get("same_init_minus") or {}).items():
        lines.append(
            f"same_init - {arm:11s} {t['mean']:+.3f} [{t['ci95'][0]:+.3f}, {t['ci95'][1]:+.3f}] p={t['p_value']:.3g}"
        )
    rates = [r["pass_rate"] for r in s.get("rows", []) if r.get("pass_rate")]
    if rates:  # data-borne students: how much of each teacher's output the filter kept
        names = sorted({n for r in rates for n in r})
        lines.append(
            f"students: {s.get('student_mode')}; filter pass rate per teacher (mean over worlds): "
            + ", ".join(f"{n} {np.mean([r[n] for r in rates if n in r]):.1%}" for n in names)
        )
    grown = {r["world"]: r["n_prompts"] for r in s.get("rows", []) if r.get("n_prompts")}
    if s.get("grow_prompts") and grown:
        lines.append("prompts per world: " + ", ".join(f"{k} {n}" for k, n in grown.items()))
    lines.append(f"wall {s['wall_seconds']} s (world builds {s['build_seconds']} s)")
    return "\n".join(lines)


def plot_curve(summaries: list[dict[str, Any]], x: str, out: Path) -> None:
    """Each arm's effect over worlds (mean and 95% interval; one dot per world) against the
    recipe knob ``x`` (a key of ``summary["recipe"]``, e.g. ``rows``), written as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pts = sorted(((s["recipe"][x], s) for s in summaries), key=lambda t: t[0])
    arms = [a for a in ARMS if all(a in s["tests"] for _, s in pts)]
    fig = Figure(figsize=(6.0, 4.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for j, arm in enumerate(arms):
        xs = np.array([float(v) for v, _ in pts]) * (1 + 0.04 * (j - (len(arms) - 1) / 2))
        t = [s["tests"][arm] for _, s in pts]
        mean = np.array([v["mean"] for v in t])
        lo = mean - np.array([v["ci95"][0] for v in t])
        hi = np.array([v["ci95"][1] for v in t]) - mean
        ax.errorbar(xs, mean, yerr=[lo, hi], marker="o", capsize=3, label=arm.replace("_", " "))
        for xi, v in zip(xs, t, strict=True):
            ax.scatter([xi] * len(v["per_world"]), v["per_world"], s=8, alpha=0.4, color="grey")
    ax.axhline(0.0, color="black", lw=0.8)
    if all(float(v) > 0 for v, _ in pts):
        ax.set_xscale("log")
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel("trait - control log-odds (mean over worlds, 95% CI)")
    ax.legend(frameon=False)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)


@click.command("curve")
@click.argument("summaries", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--x", "x", default="rows", show_default=True, help="recipe knob of the x axis")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="PNG to write")
def curve(summaries: tuple[Path, ...], x: str, out: Path) -> None:
    """Plot (and print) the effect of each arm against a recipe knob over several research
    summaries (summary.json files of `sublim world research` runs that differ in that knob)."""
    from sublim.errors import MissingFileError

    loaded = []
    for p in summaries:
        if not p.is_file():
            raise MissingFileError(
                f"summary not found: {p}; pass summary.json files of research runs"
            )
        try:
            s = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            raise ConfigError(f"{p} is not a research summary (not JSON)") from None
        if not isinstance(s, dict) or "tests" not in s:
            raise ConfigError(f"{p} is not a research summary (no 'tests')")
        if x not in (s.get("recipe") or {}) or s["recipe"][x] is None:
            raise ConfigError(
                f"{p} has no recipe value '{x}' (knobs: {', '.join(s.get('recipe') or {})})"
            )
        if not isinstance(s["recipe"][x], int | float):
            raise ConfigError(
                f"recipe value '{x}' is not a number ({s['recipe'][x]!r}); plot a numeric knob"
            )
        loaded.append(s)
    plot_curve(loaded, x, out)
    for s in sorted(loaded, key=lambda s: s["recipe"][x]):
        click.echo(
            f"{x} = {s['recipe'][x]}: "
            + "; ".join(
                f"{a} {t['mean']:+.3f} [{t['ci95'][0]:+.3f}, {t['ci95'][1]:+.3f}] p={t['p_value']:.3g}"
                for a, t in s["tests"].items()
            )
        )
    click.echo(str(out))


@click.command()
@click.argument("config", type=click.Path(path_type=Path), default=str(DEFAULT_CONFIG))
@click.option(
    "--worlds",
    default=",".join(map(str, CONFIRMATORY_WORLDS)),
    show_default=True,
    help="world seeds, fixed before running",
)
@click.option(
    "--targets",
    default=",".join(TARGETS),
    show_default=True,
    help="animals averaged per world, fixed before running",
)
@click.option("--size", default="micro", show_default=True)
@click.option(
    "--kind",
    type=click.Choice(list(KINDS)),
    default="plain",
    show_default=True,
    help="world kind of every arm's base (exploration; the confirmatory design is plain)",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("runs/owl_world_confirm"),
    show_default=True,
)
@click.option("--set", "overrides", multiple=True, help="config override key=value (repeatable)")
@click.option(
    "--arms",
    default=",".join(ARMS),
    show_default=True,
    help="student bases to run (exploration may skip some)",
)
@click.option(
    "--only",
    default=None,
    help="compute only these worlds of --worlds (split one design across processes sharing --out)",
)
@click.option(
    "--grow-prompts",
    is_flag=True,
    help="a world whose teacher keeps fewer than data.subset rows regenerates on "
    "n_prompts x ceil(subset / kept) prompts (data-borne students)",
)
@click.option("--progress/--quiet", default=True)
def main(
    config: Path,
    worlds: str,
    targets: str,
    size: str,
    kind: str,
    out: Path,
    overrides: tuple[str, ...],
    arms: str,
    only: str | None,
    grow_prompts: bool,
    progress: bool,
) -> None:
    """Run CONFIG (default: the shipped recipe) over several worlds and print the tests over worlds."""
    import torch

    torch.set_num_threads(1)  # the budget of issue 6 is stated for one thread per process
    # user errors raise SublimError: `sublim` (and the __main__ entry below) prints one line, exit 2
    if not config.is_file():
        raise ConfigError(
            f"config file not found: {config}; run from the repository root or pass the experiment TOML"
        )
    try:
        seeds = [int(x) for x in worlds.split(",")]
    except ValueError:
        raise ConfigError(f"--worlds expects comma-separated integers, got '{worlds}'") from None
    try:
        only_seeds = [int(x) for x in only.split(",")] if only else None
    except ValueError:
        raise ConfigError(f"--only expects comma-separated integers, got '{only}'") from None
    s = run_over_worlds(
        config,
        seeds,
        out,
        size,
        tuple(t.strip() for t in targets.split(",") if t.strip()),
        list(overrides),
        progress,
        tuple(a.strip() for a in arms.split(",") if a.strip()),
        kind,
        only_seeds,
        grow_prompts,
    )
    click.echo(format_summary(s))
    click.echo(s["summary_path"])


if __name__ == "__main__":
    import sys

    from sublim.cli import main as sublim_main  # the same error handling as `sublim world research`

    sys.exit(sublim_main(["world", "research", *sys.argv[1:]]))
