"""Command-line entry points of the self-contained experiments: ``sublim digits`` (and
``sublim digits sweep PARAM=v1,v2,...``) and ``sublim theory``.

Each command parses its options into a frozen config (defaults < ``--config`` TOML < flags <
``--set key=value``), calls one library function, and prints a short rich table plus the output
path. Problems a user can fix raise SublimError; the main CLI prints them as one line.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from sublim.config import apply_overrides, load_toml
from sublim.errors import ConfigError

console = Console()


def _parse_scalar(raw: str) -> Any:
    """A TOML scalar when the text is one (1, 0.5, true, "x"), else the text itself."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _build(
    config: Path | None, flags: dict[str, Any], overrides: tuple[str, ...]
) -> dict[str, Any]:
    data: dict[str, Any] = load_toml(config) if config else {}
    for table in ("digits", "theory"):  # a TOML file may wrap its options in one table
        if set(data) == {table} and isinstance(data[table], dict):
            data = data[table]
    data.update({k: v for k, v in flags.items() if v is not None})
    return apply_overrides(data, list(overrides))


def _digits_options(f: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option(
            "--out",
            type=click.Path(path_type=Path),
            default=None,
            help="output directory [default: runs/digits]",
        ),
        click.option(
            "--seeds",
            type=int,
            default=None,
            help="number of seeds (one teacher and four students each) [default: 5]",
        ),
        click.option(
            "--data",
            type=click.Choice(["digits", "mnist"]),
            default=None,
            help="digits: sklearn's bundled 8x8 set; mnist: local files",
        ),
        click.option(
            "--data-dir",
            type=str,
            default=None,
            help="directory with MNIST IDX (.gz ok) or .npz files",
        ),
        click.option(
            "--config",
            "config",
            type=click.Path(path_type=Path),
            default=None,
            help="TOML with DigitsConfig fields (e.g. experiments/digits.toml)",
        ),
        click.option(
            "--set",
            "overrides",
            multiple=True,
            metavar="KEY=VALUE",
            help="override one option, e.g. --set n_aux=5",
        ),
        click.option("--quiet", is_flag=True, default=None, help="no progress bar"),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _digits_cfg(opts: dict[str, Any]) -> Any:
    from sublim.experiments.digits import parse_digits_config

    flags = {"seeds": opts.get("seeds"), "data": opts.get("data"), "data_dir": opts.get("data_dir")}
    src = str(opts["config"]) if opts.get("config") else "digits options"
    return parse_digits_config(
        _build(opts.get("config"), flags, tuple(opts.get("overrides") or ())), source=src
    )


@click.group(invoke_without_command=True)
@_digits_options
@click.pass_context
def digits(ctx: click.Context, **opts: Any) -> None:
    """Auxiliary-logit transfer: students distilled on noise through logits never trained on
    labels learn digits only from the teacher's own initialisation."""
    ctx.obj = opts
    if ctx.invoked_subcommand is not None:
        return
    from sublim.experiments.digits import digits_table, run_digits

    cfg = _digits_cfg(opts)
    out = opts["out"] or Path("runs/digits")
    res = run_digits(cfg, out, progress=not opts["quiet"])
    console.print(digits_table(res))
    console.print(
        f"{res['timings']['total_s']:.1f} s; results: {out / 'results.json'}  report: {out / 'report.md'}"
    )


@digits.command()
@click.argument("spec", metavar="PARAM=V1,V2,...")
@_digits_options
@click.pass_context
def sweep(ctx: click.Context, spec: str, **opts: Any) -> None:
    """Run the experiment once per value of one option and draw a line plot,
    e.g. `sublim digits sweep n_aux=1,3,10`."""
    from rich.table import Table

    from sublim.experiments.digits import run_sweep

    if "=" not in spec:
        raise ConfigError(
            f"sweep expects PARAM=v1,v2,..., got '{spec}' (e.g. student_steps=200,400,800)"
        )
    param, raw = (s.strip() for s in spec.split("=", 1))
    values = [_parse_scalar(v.strip()) for v in raw.split(",") if v.strip()]
    # Options given after `sweep` win over those given to `digits`.
    merged = {k: v if v not in (None, ()) else (ctx.obj or {}).get(k) for k, v in opts.items()}
    cfg = _digits_cfg(merged)
    out = merged["out"] or Path("runs/digits") / f"sweep_{param}"
    res = run_sweep(cfg, param, values, out, progress=not merged["quiet"])
    t = Table(title=f"sweep {param} ({cfg.seeds} seeds)")
    for col in (
        param,
        "teacher",
        "aux same-init",
        "aux diff-init",
        "all same-init",
        "all diff-init",
    ):
        t.add_column(col, justify="right")
    for r in res["runs"]:
        c = r["conditions"]
        t.add_row(
            str(r["value"]),
            *(
                f"{c[k]['mean']:.3f}"
                for k in ("teacher", "student_aux", "cross_aux", "student_all", "cross_all")
            ),
        )
    console.print(t)
    console.print(f"results: {out / 'sweep.json'}  figure: {out / f'sweep_{param}.png'}")


@click.command()
@click.option("--model", default=None, help="digits (default), hf:/path/to/dir or tiny:<world>")
@click.option(
    "--cross-model",
    default=None,
    help="the different-init student (default: next world seed, or a fresh init)",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="output directory [default: runs/theory]",
)
@click.option("--seeds", type=int, default=None, help="number of seeds [default: 10]")
@click.option(
    "--step-sizes",
    default=None,
    help="teacher step sizes, comma-separated [default: 1e-3,1e-2,1e-1,1]",
)
@click.option(
    "--teacher-steps", type=int, default=None, help="SGD steps that make the teacher [default: 1]"
)
@click.option(
    "--imitate",
    type=click.Choice(["all", "aux"]),
    default=None,
    help="digits: logits the student imitates",
)
@click.option(
    "--config",
    "config",
    type=click.Path(path_type=Path),
    default=None,
    help="TOML with TheoryConfig fields",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="override one option, e.g. --set student_lr=0.1",
)
@click.option("--quiet", is_flag=True, help="no progress bar")
def theory(
    model: str | None,
    cross_model: str | None,
    out: Path | None,
    seeds: int | None,
    step_sizes: str | None,
    teacher_steps: int | None,
    imitate: str | None,
    config: Path | None,
    overrides: tuple[str, ...],
    quiet: bool,
) -> None:
    """The one-step theorem, measured: cosine between a student's imitation step and the
    teacher's step, same vs different initialisation, across seeds and step sizes."""
    from sublim.experiments.theory import parse_theory_config, run_theory, theory_table

    steps = None
    if step_sizes is not None:
        try:
            steps = [float(s) for s in step_sizes.split(",") if s.strip()]
        except ValueError:
            raise ConfigError(
                f"--step-sizes expects numbers separated by commas, got '{step_sizes}'"
            ) from None
    flags = {
        "model": model,
        "cross_model": cross_model,
        "seeds": seeds,
        "step_sizes": steps,
        "teacher_steps": teacher_steps,
        "imitate": imitate,
    }
    cfg = parse_theory_config(
        _build(config, flags, overrides), source=str(config) if config else "theory options"
    )
    out = out or Path("runs/theory")
    res = run_theory(cfg, out, progress=not quiet)
    console.print(theory_table(res))
    h = res["summary"]["small_steps"]
    console.print(
        f"small steps: same-init cosine > 0 in {h['same_init']['cosine']['frac_positive']:.0%}, "
        f"different-init mean {h['cross_init']['cosine']['mean']:+.3f}; results: {out / 'results.json'}  report: {out / 'report.md'}"
    )
