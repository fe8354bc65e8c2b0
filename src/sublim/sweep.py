"""Sweeps: one experiment file crossed with a grid of config overrides, run cell by cell.

A sweep file (TOML) names a base experiment and a grid::

    experiment = "owl_numbers_world.toml"     # relative to the sweep file
    [grid]                                    # every combination is one cell
    "trait.target" = ["owl", "cat"]
    seed = [0, 1]
    [set]                                     # fixed overrides for every cell
    "student.seeds" = [0]
    [resources]                               # what one cell asks of a Ray cluster
    num_cpus = 1

Keys use the dotted override syntax of ``sublim run --set`` (``load_config(path, overrides)``);
each cell is a normal experiment run in ``DIR/cells/<slug>`` (``target-owl__seed-0``) whose
stages all live in one content-addressed store, ``DIR/stages`` (or ``--cache``): the stage keys
of ``sublim.pipeline`` name them, so cells that share a teacher, a data set or a student compute
it once. Several processes may open the same stage (``RunContext.concurrent``): each stage is
computed under a file lock and published by its manifest, written last, so a killed writer
leaves a stage that is never served as complete, and the retried task redoes or resumes it.

Executors: ``inprocess`` (default: cells one after another, progress over the whole sweep) and
``ray`` (each cell a Ray task with the file's CPU/GPU request, retried when its worker dies).
Both run a cell with ``resources.num_cpus`` torch threads, so they give the same numbers.
Afterwards ``DIR/summary.json``, ``DIR/report.md`` and ``DIR/report.html`` hold the grid as
tables and heatmaps of each cell's contrasts (from its results.json, ``sublim.results``).
"""

from __future__ import annotations

import base64
import html
import itertools
import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import click
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sublim.errors import ConfigError, MissingExtraError, MissingFileError, SublimError

Executor = Literal["inprocess", "ray"]
EXECUTORS: tuple[str, ...] = ("inprocess", "ray")
# the contrasts a sweep's tables and heatmaps show (each when the cells' results have it)
SWEEP_CONTRASTS: tuple[str, ...] = (
    "trait_minus_control",
    "teacher_minus_control_teacher",
    "cross_minus_control",
)
_SLUG_MAX = 80


class Resources(BaseModel):
    """What one cell asks of a Ray cluster (operational: no effect on any result)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    num_cpus: float = Field(1, gt=0, description="CPUs per cell; also its torch threads")
    num_gpus: float = Field(0, ge=0, description="GPUs per cell (fractions share a GPU)")
    max_retries: int = Field(3, ge=0, description="retries of a cell whose worker died")


class SweepFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    experiment: str = Field(description="the base experiment TOML, relative to the sweep file")
    name: str | None = Field(None, description="default: the sweep file's stem")
    grid: dict[str, Any] = Field(description="dotted config key -> list of values")
    set: dict[str, Any] = Field(default_factory=dict, description="fixed overrides")
    resources: Resources = Field(default_factory=Resources)


@dataclass(frozen=True)
class Cell:
    slug: str
    params: dict[str, Any]  # grid key -> this cell's value
    overrides: list[str]  # `--set` strings: `sublim run EXPERIMENT --set ...` reproduces the cell
    data: dict[str, Any]  # the raw config (TOML data with the overrides applied)


@dataclass(frozen=True)
class Sweep:
    name: str
    path: Path
    experiment: Path
    axes: dict[str, list[Any]]
    fixed: dict[str, Any]
    resources: Resources
    cells: list[Cell]


# --- the sweep file ------------------------------------------------------------------------------


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested tables to dotted keys (``[grid.trait] target = [..]`` is ``"trait.target"``)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _slug_value(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "-".join(_slug_value(x) for x in v) or "none"
    if isinstance(v, dict):
        return "-".join(f"{k}-{_slug_value(x)}" for k, x in v.items()) or "none"
    s = str(v).lower() if isinstance(v, bool) else str(v)
    return re.sub(r"[^A-Za-z0-9.]+", "-", s).strip("-") or "none"


def _slugs(axes: Mapping[str, list[Any]], combos: Sequence[tuple[Any, ...]]) -> list[str]:
    """Readable, unique cell names: ``<last key part>-<value>`` joined by ``__``."""
    last = [k.split(".")[-1] for k in axes]
    names = [n if last.count(n) == 1 else k.replace(".", "-") for k, n in zip(axes, last)]
    out: list[str] = []
    for combo in combos:
        s = "__".join(f"{n}-{_slug_value(v)}" for n, v in zip(names, combo))
        if len(s) > _SLUG_MAX:
            from sublim.artifacts import stable_hash

            s = s[: _SLUG_MAX - 9] + "-" + stable_hash(list(combo), 8)
        out.append(s)
    for i, s in enumerate(out):  # values that slug alike ("a b" and "a-b"): number them
        if out.count(s) > 1:
            out[i] = f"{s}__{i}"
    return out


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file; every cell's config is validated here, before any run."""
    from sublim.config import (
        ExperimentConfig,
        apply_overrides,
        format_validation_error,
        load_toml,
        parse_config,
    )

    p = Path(path)
    if not p.is_file():
        raise MissingFileError(
            f"sweep file not found: {p}; pass a sweep TOML (see experiments/owl_sweep_tiny.toml)"
        )
    raw = load_toml(p)
    try:
        sf = SweepFile.model_validate(raw)
    except ValidationError as e:  # one line naming the field
        raise ConfigError(format_validation_error(e, str(p))) from None
    axes = _flatten(sf.grid)
    fixed = _flatten(sf.set)
    if not axes:
        raise ConfigError(f"{p}: [grid] is empty; give at least one key = [values]")
    for k, vals in axes.items():
        if not isinstance(vals, list) or not vals:
            raise ConfigError(
                f"{p}: grid.{k} must be a non-empty list of values, e.g. {k} = [0, 1]"
            )
    both = sorted(set(axes) & set(fixed))
    if both:
        raise ConfigError(f"{p}: {', '.join(both)} is both in [grid] and in [set]; keep one")
    exp = (p.parent / sf.experiment).resolve()
    if not exp.is_file():
        raise MissingFileError(
            f"{p}: experiment file not found: {exp}; give its path relative to the sweep file"
        )
    base = load_toml(exp)
    combos = list(itertools.product(*axes.values()))
    cells = []
    for slug, combo in zip(_slugs(axes, combos), combos):
        params = dict(zip(axes, combo))
        overrides = [f"{k}={json.dumps(v)}" for k, v in {**fixed, **params}.items()]
        try:
            data = apply_overrides(base, overrides)
            data["name"] = f"{data.get('name', exp.stem)}__{slug}"
            parse_config(ExperimentConfig, data, source=str(exp))
        except ConfigError as e:
            raise ConfigError(f"{p}: cell {slug}: {e}") from None
        cells.append(Cell(slug, params, overrides, data))
    return Sweep(sf.name or p.stem, p, exp, axes, fixed, sf.resources, cells)


# --- running -------------------------------------------------------------------------------------


def cell_threads(res: Resources) -> int:
    return max(1, int(res.num_cpus))


def run_cell(job: Mapping[str, Any]) -> dict[str, Any]:
    """One cell, in whatever process runs it: its run dir, stages in the shared store. A job is
    plain data (so Ray can ship it): slug, config data, source, run_dir, stage_root, threads,
    cache_dir (the driver's ``SUBLIM_CACHE_DIR``, when set, for built-in worlds)."""
    from sublim.config import ExperimentConfig, parse_config
    from sublim.pipeline import run_experiment
    from sublim.progress import Reporter, torch_threads

    cfg = parse_config(ExperimentConfig, dict(job["data"]), source=str(job["source"]))
    old = os.environ.get("SUBLIM_CACHE_DIR")
    if job.get("cache_dir"):
        os.environ["SUBLIM_CACHE_DIR"] = str(job["cache_dir"])
    try:
        with torch_threads(int(job["threads"])):
            run_experiment(
                cfg,
                Path(job["run_dir"]),
                reporter=job.get("reporter") or Reporter(False),
                stage_root=Path(job["stage_root"]),
                concurrent=True,
            )
    finally:
        if job.get("cache_dir"):
            if old is None:
                os.environ.pop("SUBLIM_CACHE_DIR", None)
            else:
                os.environ["SUBLIM_CACHE_DIR"] = old
    return {"slug": job["slug"], "status": "done"}


def _jobs(sweep: Sweep, out: Path, store: Path) -> list[dict[str, Any]]:
    return [
        {
            "slug": c.slug,
            "data": c.data,
            "source": str(sweep.experiment),
            "run_dir": str((out / "cells" / c.slug).resolve()),
            "stage_root": str(store.resolve()),
            "threads": cell_threads(sweep.resources),
            "cache_dir": os.environ.get("SUBLIM_CACHE_DIR"),
        }
        for c in sweep.cells
    ]


def _run_inprocess(jobs: list[dict[str, Any]], rep: Any) -> dict[str, str]:
    errors: dict[str, str] = {}
    for i, job in enumerate(jobs, 1):
        rep.say(f"[bold]cell {i}/{len(jobs)}[/bold] {job['slug']}")
        try:
            run_cell({**job, "reporter": rep})
        except SublimError as e:
            rep.say(f"  [red]failed:[/red] {e}")
            errors[job["slug"]] = str(e)
    return errors


def import_ray() -> Any:
    """Ray, imported only for ``--executor ray`` (an optional extra)."""
    try:
        import ray
    except ImportError:
        raise MissingExtraError("ray", "ray", "--executor ray") from None
    return ray


def _run_ray(
    jobs: list[dict[str, Any]], res: Resources, address: str | None, rep: Any
) -> dict[str, str]:
    """Every cell a Ray task asking for ``res``; a task whose worker dies is retried (up to
    ``max_retries``) and finds its finished stages in the store. A cell that raises is not
    retried (the same inputs would fail again): its error is recorded."""
    ray = import_ray()
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        except (ConnectionError, ValueError, RuntimeError) as e:
            where = address or "a local cluster"
            raise SublimError(
                f"cannot start Ray on {where}: {str(e).splitlines()[0] if str(e) else e}"
            ) from None
    task = ray.remote(run_cell).options(
        num_cpus=res.num_cpus,
        num_gpus=res.num_gpus,
        max_retries=res.max_retries,
        retry_exceptions=False,
    )
    pending = {task.remote(job): job["slug"] for job in jobs}
    errors: dict[str, str] = {}
    rep.say(
        f"  {len(jobs)} cells submitted to Ray ({res.num_cpus:g} CPU, {res.num_gpus:g} GPU each)"
    )
    with rep.task("sweep cells", total=len(jobs)) as prog:
        n_done = 0
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                slug = pending.pop(ref)
                try:
                    ray.get(ref)
                except ray.exceptions.RayError as e:  # RayTaskError wraps the cell's own
                    cause = getattr(e, "cause", None)
                    msg = str(cause) if isinstance(cause, SublimError) else _first_line(e)
                    errors[slug] = msg
                    rep.say(f"  [red]cell {slug} failed:[/red] {msg}")
                n_done += 1
                prog(n_done, len(jobs))
                rep.say(
                    f"  cell {n_done}/{len(jobs)} {slug}: {'failed' if slug in errors else 'done'}"
                )
    return errors


def _first_line(e: BaseException) -> str:
    lines = [x for x in str(e).splitlines() if x.strip()]
    return f"{type(e).__name__}: {lines[-1] if lines else ''}"


def run_sweep(
    sweep: Sweep,
    out: Path,
    executor: str = "inprocess",
    address: str | None = None,
    cache: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) every cell of ``sweep`` into ``out`` and write the summary and report;
    returns summary.json's content. Cells that fail with a user error are recorded and the rest
    still run; the sweep then raises one SublimError after writing the summary."""
    from sublim.progress import Reporter

    if executor not in EXECUTORS:
        raise SublimError(f"unknown executor '{executor}'; choose one of: {', '.join(EXECUTORS)}")
    if address and executor != "ray":
        raise SublimError("--address goes with --executor ray")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    store = Path(cache) if cache else out
    rep = Reporter(progress)
    t0 = time.time()
    rep.say(
        f"[bold]sublim sweep[/bold] {sweep.name}: {len(sweep.cells)} cells "
        f"({' x '.join(f'{len(v)} {k}' for k, v in sweep.axes.items())}) of {sweep.experiment.name}"
        f", executor {executor}, stages in {store / 'stages'}"
    )
    jobs = _jobs(sweep, out, store)
    if executor == "ray":
        errors = _run_ray(jobs, sweep.resources, address, rep)
    else:
        errors = _run_inprocess(jobs, rep)
    summary = summarise(sweep, out, errors, executor, time.time() - t0)
    from sublim.artifacts import atomic_write_json

    atomic_write_json(out / "summary.json", summary)
    write_sweep_report(out)
    if errors:
        raise SublimError(
            f"{len(errors)} of {len(jobs)} cells failed (first: {next(iter(errors))}: "
            f"{next(iter(errors.values()))}); see {out / 'summary.json'}, fix and rerun to resume"
        )
    return summary


# --- the summary ---------------------------------------------------------------------------------


def _contrast_entry(c: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("metric", "a", "b", "mean", "ci95", "p_value", "test", "over", "n_a", "n_b")
    return {k: c.get(k) for k in (*keys, "no_spread")}


def summarise(
    sweep: Sweep, out: Path, errors: Mapping[str, str], executor: str, seconds: float
) -> dict[str, Any]:
    """summary.json: the grid and, per cell, its contrasts with intervals (from results.json)."""
    from sublim.results import load_results

    cells = []
    computed = reused = 0
    for c in sweep.cells:
        run_dir = out / "cells" / c.slug
        entry: dict[str, Any] = {
            "slug": c.slug,
            "params": c.params,
            "overrides": c.overrides,
            "run_dir": str(Path("cells") / c.slug),
        }
        if c.slug in errors or not (run_dir / "results.json").is_file():
            entry.update(status="failed", error=errors.get(c.slug, "no results.json"))
            cells.append(entry)
            continue
        res = load_results(run_dir)
        stages = res.get("meta", {}).get("timings", {}).get("stages", [])
        computed += sum(1 for s in stages if not s.get("cached"))
        reused += sum(1 for s in stages if s.get("cached"))
        conds = res.get("conditions", {})
        pm = res.get("primary_metric", "p_target")
        entry.update(
            status="done",
            primary_metric=pm,
            contrast={
                k: _contrast_entry(v)
                for k, v in res.get("contrast", {}).items()
                if k in SWEEP_CONTRASTS
            },
            conditions={
                k: {"mean": v.get(pm, {}).get("mean"), "ci95": v.get(pm, {}).get("ci95")}
                for k, v in conds.items()
            },
        )
        cells.append(entry)
    return {
        "name": sweep.name,
        "sweep_file": str(sweep.path),
        "experiment": str(sweep.experiment),
        "grid": sweep.axes,
        "set": sweep.fixed,
        "resources": sweep.resources.model_dump(),
        "executor": executor,
        "n_cells": len(sweep.cells),
        "n_failed": sum(1 for c in cells if c["status"] != "done"),
        # stage runs this sweep invocation made (computed) and found done (reused: shared with an
        # earlier cell, or with an earlier invocation)
        "stages": {"computed": computed, "reused": reused},
        "seconds_total": round(seconds, 2),
        "cells": cells,
    }


# --- the report ----------------------------------------------------------------------------------


def _value_label(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def fig_heatmap(summary: Mapping[str, Any], contrast: str, path: Path) -> Path | None:
    """The grid as a heatmap of one contrast's mean (95% interval in each cell): rows the first
    grid key, columns the second, one panel per combination of the others. None when no cell
    has that contrast."""
    from matplotlib.figure import Figure

    from sublim.report import _CONTRAST_TITLES, _isnum, _save

    grid = summary["grid"]
    keys = list(grid)
    done = [c for c in summary["cells"] if c["status"] == "done" and contrast in c["contrast"]]
    if not done:
        return None
    rk, ck = keys[0], (keys[1] if len(keys) > 1 else None)
    rest = keys[2:]
    rows = [_value_label(v) for v in grid[rk]]
    cols = [_value_label(v) for v in grid[ck]] if ck else [""]
    panels = list(itertools.product(*(grid[k] for k in rest))) or [()]
    means = [c["contrast"][contrast]["mean"] for c in done]
    vmax = max([abs(m) for m in means if _isnum(m)] or [1.0]) or 1.0
    fig = Figure(
        figsize=(1.5 + 1.9 * len(cols) * len(panels), 1.4 + 0.9 * len(rows)), layout="constrained"
    )
    axs = fig.subplots(1, len(panels), squeeze=False)[0]
    im = None
    for ax, pv in zip(axs, panels):
        vals = np.full((len(rows), len(cols)), np.nan)
        for c in done:
            if any(c["params"][k] != v for k, v in zip(rest, pv)):
                continue
            i = rows.index(_value_label(c["params"][rk]))
            j = cols.index(_value_label(c["params"][ck])) if ck else 0
            e = c["contrast"][contrast]
            m = e["mean"]
            vals[i, j] = m if _isnum(m) else np.nan
            lo, hi = e.get("ci95") or [None, None]
            ci = "no spread" if e.get("no_spread") else f"[{_g(lo)}, {_g(hi)}]"
            ax.text(j, i, f"{_g(m)}\n{ci}", ha="center", va="center", fontsize=8)
        im = ax.imshow(vals, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
        ax.set_xticks(range(len(cols)), cols, fontsize=8)
        ax.set_yticks(range(len(rows)), rows, fontsize=8)
        ax.set_ylabel(rk)
        if ck:
            ax.set_xlabel(ck)
        if rest:
            ax.set_title(", ".join(f"{k}={_value_label(v)}" for k, v in zip(rest, pv)), fontsize=9)
    metric = done[0]["contrast"][contrast].get("metric") or summary["cells"][0].get(
        "primary_metric"
    )
    if im is not None:
        fig.colorbar(im, ax=list(axs), label=f"{metric} difference")
    fig.suptitle(f"{_CONTRAST_TITLES.get(contrast, contrast)} (mean, 95% interval)", fontsize=10)
    return _save(fig, path)


def _g(x: Any) -> str:
    from sublim.report import _isnum

    return f"{x:.3g}" if _isnum(x) else "n/a"


def fmt_diff(e: Mapping[str, Any]) -> str:
    """``+mean [lo, hi]`` in 3 significant digits (cells' differences span orders of magnitude:
    a built-in micro world's P(target) moves by 1e-5, a real model's by 0.1)."""
    from sublim.report import _isnum

    m = e.get("mean")
    s = f"{m:+.3g}" if _isnum(m) else "n/a"
    if e.get("no_spread"):
        return f"{s} (no spread)"
    lo, hi = (e.get("ci95") or [None, None])[:2]
    return f"{s} [{_g(lo)}, {_g(hi)}]" if _isnum(lo) and _isnum(hi) else s


def cell_rows(summary: Mapping[str, Any], contrast: str) -> list[list[str]]:
    from sublim.report import fmt_p, is_significant

    rows = []
    for c in summary["cells"]:
        vals = [_value_label(c["params"][k]) for k in summary["grid"]]
        e = c.get("contrast", {}).get(contrast) if c["status"] == "done" else None
        if c["status"] != "done":
            rows.append([c["slug"], *vals, "failed", "", "", ""])
        elif e is None:
            rows.append([c["slug"], *vals, "n/a", "", "", ""])
        else:
            star = " *" if is_significant(e) else ""
            rows.append(
                [
                    c["slug"],
                    *vals,
                    fmt_diff(e) + star,
                    "no spread" if e.get("no_spread") else fmt_p(e.get("p_value")),
                    e.get("test") or "",
                    f"{e.get('n_a', '')} / {e.get('n_b', '')} {e.get('over', '')}",
                ]
            )
    return rows


def _sections(summary: Mapping[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    from sublim.report import _CONTRAST_TITLES

    out = []
    header_keys = list(summary["grid"])
    for k in SWEEP_CONTRASTS:
        if any(k in c.get("contrast", {}) for c in summary["cells"]):
            header = ["cell", *header_keys, "difference [95% CI]", "p", "test", "n"]
            out.append((_CONTRAST_TITLES.get(k, k), header, cell_rows(summary, k)))
    return out


def _intro(summary: Mapping[str, Any]) -> list[str]:
    st = summary["stages"]
    grid = ", ".join(f"`{k}` = {json.dumps(v)}" for k, v in summary["grid"].items())
    fixed = ", ".join(f"`{k}` = {json.dumps(v)}" for k, v in summary["set"].items())
    return [
        f"Experiment `{summary['experiment']}`, grid {grid}"
        + (f"; fixed: {fixed}." if fixed else "."),
        (
            f"{summary['n_cells']} cells ({summary['n_failed']} failed), executor "
            f"{summary['executor']}, {summary['seconds_total']:.0f} s; stage runs: "
            f"{st['computed']} computed, {st['reused']} reused from the shared store."
        ),
        (
            "Each difference is the cell's primary metric, a minus b, with its 95% interval "
            "(`test` says over what: seeds or questions); * marks p < 0.05 with the interval "
            "excluding 0, uncorrected for the number of cells."
        ),
    ]


def write_sweep_report(out: Path) -> list[Path]:
    """report.md, report.html and one heatmap per contrast, from ``out/summary.json``."""
    from sublim.artifacts import atomic_write_text
    from sublim.report import _CSS, _html_table, _md_table

    out = Path(out)
    summary = json.loads((out / "summary.json").read_text())
    figs: dict[str, Path] = {}
    for k in SWEEP_CONTRASTS:
        p = fig_heatmap(summary, k, out / f"fig_sweep_{k}.png")
        if p is not None:
            figs[k] = p
    secs = _sections(summary)
    intro = _intro(summary)
    md = [f"# sublim sweep: {summary['name']}", "", *[f"{x}\n" for x in intro]]
    for title, header, rows in secs:
        md += [f"## {title}", "", _md_table(header, rows), ""]
    md += ["## Heatmaps", ""] + [f"![{k}]({p.name})\n" for k, p in figs.items()]
    failed = [c for c in summary["cells"] if c["status"] != "done"]
    if failed:
        md += ["## Failed cells", ""] + [f"- `{c['slug']}`: {c['error']}" for c in failed] + [""]
    atomic_write_text(out / "report.md", "\n".join(md) + "\n")
    title = html.escape(f"sublim sweep: {summary['name']}")
    body = "".join(f"<p>{html.escape(x)}</p>" for x in intro)
    body += "".join(f"<h2>{html.escape(t)}</h2>{_html_table(h, rows)}" for t, h, rows in secs)
    body += "<h2>Heatmaps</h2>" + "".join(
        f'<figure><img alt="{html.escape(k)}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode("ascii")}"></figure>'
        for k, p in figs.items()
    )
    if failed:
        body += (
            "<h2>Failed cells</h2><ul>"
            + "".join(
                f"<li>{html.escape(c['slug'])}: {html.escape(c['error'])}</li>" for c in failed
            )
            + "</ul>"
        )
    atomic_write_text(
        out / "report.html",
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{_CSS}</style></head><body><h1>{title}</h1>{body}</body></html>\n",
    )
    return [*figs.values(), out / "report.md", out / "report.html"]


def summary_text(summary: Mapping[str, Any]) -> str:
    """A few lines for the terminal: each cell's headline contrast."""
    from sublim.report import fmt_p

    lines = []
    for c in summary["cells"]:
        e = c.get("contrast", {}).get("trait_minus_control")
        if c["status"] != "done":
            lines.append(f"  {c['slug']:<40} failed")
        elif e:
            p = "no spread" if e.get("no_spread") else f"p={fmt_p(e.get('p_value'))}"
            lines.append(f"  {c['slug']:<40} trait-control {fmt_diff(e)}  {p}")
        else:
            lines.append(f"  {c['slug']:<40} done")
    return "\n".join(lines)


# --- the command ---------------------------------------------------------------------------------


@click.command()
@click.argument("sweep_file", type=click.Path(path_type=Path))
@click.option(
    "--out", "out", type=click.Path(path_type=Path), required=True, help="sweep directory"
)
@click.option(
    "--executor",
    type=click.Choice(EXECUTORS),
    default="inprocess",
    show_default=True,
    help="inprocess: cells one after another here; ray: each cell a Ray task (pip install 'sublim[ray]')",
)
@click.option(
    "--address",
    default=None,
    help="with --executor ray: the cluster to join (e.g. ray://head:10001 or auto); default: a local cluster",
)
@click.option(
    "--cache",
    type=click.Path(path_type=Path),
    default=None,
    help="the shared stage store (default: DIR); on a cluster, a path every node sees",
)
@click.option("--quiet", is_flag=True, help="no progress output")
def sweep(
    sweep_file: Path,
    out: Path,
    executor: str,
    address: str | None,
    cache: Path | None,
    quiet: bool,
) -> None:
    """Run (or resume) the grid of SWEEP_FILE: every cell an experiment run in DIR/cells/<slug>,
    sharing stages through one store; writes DIR/summary.json, report.md and report.html."""
    from rich.console import Console

    sw = load_sweep(sweep_file)
    summary = run_sweep(sw, out, executor, address, cache, progress=not quiet)
    console = Console()
    console.print(summary_text(summary), highlight=False)
    st = summary["stages"]
    console.print(
        f"{summary['n_cells']} cells, {st['computed']} stages computed, {st['reused']} reused; "
        f"summary: {out / 'summary.json'}   report: {out / 'report.html'}",
        highlight=False,
    )
