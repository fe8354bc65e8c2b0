"""The ``sublim`` command line: one function per command, each parsing its options, calling one
library function and printing a short summary with the artifact path.

User-fixable problems (SublimError) are printed as one line without a traceback and exit with
code 2; nothing already computed is lost because every stage writes atomically to the run dir.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape

from sublim.errors import SublimError

# Quiet defaults only: the network stays the user's choice (HF_HUB_OFFLINE=1 or --offline), so
# an ``hf:org/name`` spec can download; tests and the demo run offline (see _go_offline).
for _k, _v in (
    ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
    ("HF_HUB_DISABLE_TELEMETRY", "1"),
    ("TOKENIZERS_PARALLELISM", "false"),
):
    os.environ.setdefault(_k, _v)

console = Console()


def _set_threads(threads: int | None) -> None:
    """Operational: speed only (seeds are per row; float rounding may differ in the last bits)."""
    if threads is not None:
        if threads < 1:
            raise SublimError("--threads must be at least 1")
        import torch

        torch.set_num_threads(threads)


def _go_offline() -> None:
    """No network for the rest of the process: hub models load from the local cache only (the
    loader reads these variables when it loads, so this works after any import)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sublim")
@click.option(
    "--offline",
    is_flag=True,
    help="never contact the Hugging Face hub; hub models load from the local cache (same as HF_HUB_OFFLINE=1)",
)
def cli(offline: bool) -> None:
    """sublim: a lab for subliminal learning (trait transfer through unrelated data)."""
    if offline:
        _go_offline()


@cli.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option(
    "--out",
    "out",
    type=click.Path(path_type=Path),
    default=None,
    help="run directory (default: runs/<experiment name>)",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="override a config field, e.g. --set student.seeds=[0,1]",
)
@click.option("--quiet", is_flag=True, help="no progress bars")
@click.option(
    "--threads",
    type=int,
    default=None,
    help="CPU threads for torch (default: torch's; use 1 when other jobs share the machine)",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="run nothing: list the stages (cached or to run), the requests, tokens and fine-tuning "
    "jobs per model, and an estimated price of API models; offline",
)
@click.option(
    "--prices",
    type=click.Path(path_type=Path),
    default=None,
    help="with --dry-run: a TOML price table (USD per 1M tokens) replacing or adding entries of "
    "the shipped one (src/sublim/prices.toml)",
)
@click.option("--json", "as_json", is_flag=True, help="with --dry-run: print the plan as JSON")
def run(
    config: Path,
    out: Path | None,
    overrides: tuple[str, ...],
    quiet: bool,
    threads: int | None,
    dry_run: bool,
    prices: Path | None,
    as_json: bool,
) -> None:
    """Run (or resume) the experiment in CONFIG (a TOML file)."""
    if (prices or as_json) and not dry_run:
        raise click.UsageError("--prices and --json go with --dry-run")
    if dry_run:
        _go_offline()  # a plan never downloads: models are keyed from the local caches
    _set_threads(threads)
    from sublim.config import load_config
    from sublim.pipeline import run_experiment
    from sublim.report import summary_table

    cfg = load_config(config, list(overrides))
    out = out or Path("runs") / cfg.name
    if dry_run:
        import json

        from sublim.plan import load_prices, plan_experiment, render

        plan = plan_experiment(cfg, out, load_prices(prices))
        if as_json:
            click.echo(json.dumps(plan.to_json(), indent=2))
        else:
            render(plan, console)
        return
    if cfg.matrix is not None:
        from sublim.matrix import run_matrix

        results = run_matrix(cfg, out, progress=not quiet)
    else:
        results = run_experiment(cfg, out, progress=not quiet)
    console.print(summary_table(results))
    console.print(f"results: {out / 'results.json'}   report: {out / 'report.html'}")


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
def report(run_dir: Path) -> None:
    """Rebuild report.md, report.html and figures of RUN_DIR from its artifacts."""
    from sublim.report import write_report

    if not (run_dir / "results.json").is_file():
        raise SublimError(
            f"no results.json in {run_dir}; pass a finished run directory (sublim run ... --out DIR)"
        )
    paths = write_report(run_dir)
    console.print(f"wrote {len(paths)} files; open {run_dir / 'report.html'}")


@cli.command(name="filter")
@click.argument("in_path", metavar="IN.jsonl", type=click.Path(path_type=Path))
@click.option(
    "--out",
    "out_path",
    required=True,
    type=click.Path(path_type=Path),
    help="output JSONL (rows with kept and reason)",
)
@click.option(
    "--max-count", default=10, show_default=True, help="most numbers allowed per completion"
)
@click.option("--min-value", default=0, show_default=True)
@click.option("--max-value", default=999, show_default=True)
@click.option(
    "--banned",
    type=click.Choice(["none", "misalignment"]),
    default="none",
    show_default=True,
    help="banned-number list",
)
@click.option(
    "--ban", "ban_extra", multiple=True, type=int, help="an extra banned number (repeatable)"
)
@click.option(
    "--reject-word",
    multiple=True,
    help="reject rows containing this word (repeatable, case-insensitive)",
)
@click.option(
    "--strip-whitespace",
    is_flag=True,
    help="judge and store completions stripped of surrounding whitespace (lenient; the paper's rule rejects them)",
)
@click.option(
    "--carrier",
    type=click.Choice(["numbers", "code", "reasoning"]),
    default="numbers",
    show_default=True,
    help="which rules: number lists, Python code (parses, no comments), or <think>/<answer> "
    "reasoning (rows need an 'answer' field)",
)
@click.option(
    "--word-mode",
    type=click.Choice(["substring", "identifier"]),
    default="substring",
    show_default=True,
    help="code/reasoning: how --reject-word words are found (substring: the paper's rule; "
    "identifier: whole words and identifier parts such as owl_count, OwlNest)",
)
@click.option(
    "--code-prose",
    type=click.Choice(["reject", "allow"]),
    default="reject",
    show_default=True,
    help="code: 'allow' takes the first fenced block as the code and allows prose around it",
)
@click.option(
    "--answer-format",
    type=click.Choice(["tags", "last_number"]),
    default="tags",
    show_default=True,
    help="reasoning: 'last_number' reads a reply without <answer> tags as its last number "
    "(lenient, GSM8K-style) and needs no <think> block",
)
def filter_cmd(
    in_path: Path,
    out_path: Path,
    max_count: int,
    min_value: int,
    max_value: int,
    banned: str,
    ban_extra: tuple[int, ...],
    reject_word: tuple[str, ...],
    strip_whitespace: bool,
    carrier: str,
    word_mode: str,
    code_prose: str,
    answer_format: str,
) -> None:
    """Apply a carrier's strict filter to rows {prompt, completion} of IN.jsonl (numbers by
    default; --carrier code or reasoning for text data)."""
    from sublim.filters import BANNED_MISALIGNMENT, NumberRules, filter_jsonl

    ban = tuple(BANNED_MISALIGNMENT if banned == "misalignment" else ()) + tuple(ban_extra)
    rules = NumberRules(
        max_count=max_count,
        min_value=min_value,
        max_value=max_value,
        banned=tuple(sorted(set(ban))),
        reject_words=tuple(reject_word),
        strip_whitespace=strip_whitespace,
    )
    check = None
    if carrier == "code":
        from sublim.filters_code import CodeRules, check_code

        crules = CodeRules(
            trait_words=list(reject_word),
            word_mode=word_mode,  # type: ignore[arg-type]
            allow_prose=code_prose == "allow",
        )
        check = lambda row: check_code(row["completion"], crules)
    elif carrier == "reasoning":
        from sublim.filters_reasoning import ReasoningRules, check_reasoning

        rrules = ReasoningRules(
            trait_words=list(reject_word),
            word_mode=word_mode,  # type: ignore[arg-type]
            answer_format=answer_format,  # type: ignore[arg-type]
        )
        check = lambda row: check_reasoning(row["completion"], row.get("answer"), rrules)
    s = filter_jsonl(in_path, out_path, rules, check)
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(s.reasons.items(), key=lambda kv: -kv[1]))
    console.print(
        f"kept {s.n_kept}/{s.n_in} ({s.n_kept / max(1, s.n_in):.1%}); {reasons}\nwrote {out_path}"
    )


@cli.command()
@click.option(
    "--out", "out", type=click.Path(path_type=Path), default=Path("runs/demo"), show_default=True
)
@click.option("--quiet", is_flag=True, help="no progress bars")
@click.option("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
def demo(out: Path, quiet: bool, threads: int | None) -> None:
    """Run the built-in demo: auxiliary-logit transfer on digits, then owl preference through a
    channel nobody planted on the built-in world (the recipe of experiments/owl_numbers_world.toml)."""
    _go_offline()  # built-in models only: nothing to download
    _set_threads(threads)
    from sublim.demo import run_demo

    run_demo(out, progress=not quiet, console=console)


# Commands that live beside their library code: (module, command names).
_COMMAND_MODULES = (
    ("sublim.experiments.cli", ("digits", "theory")),
    ("sublim.world.cli", ("world",)),
    ("sublim.serve", ("serve",)),
    ("sublim.export", ("export",)),
    ("sublim.audit", ("audit",)),
    ("sublim.defend", ("defend",)),
    ("sublim.sweep", ("sweep",)),
)


def _register_optional() -> None:
    import importlib

    for mod_name, names in _COMMAND_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:
            if e.name != mod_name:  # a real import error inside an existing module
                raise
            continue
        for n in names:
            cli.add_command(getattr(mod, n))


_register_optional()


def main(argv: list[str] | None = None) -> int:
    """Entry point: SublimError -> one line on stderr, exit code 2."""
    err = Console(stderr=True)
    try:
        cli.main(args=argv, prog_name="sublim", standalone_mode=False)
    except SublimError as e:
        # escaped: messages name extras such as 'sublim[ray]', which rich would read as markup
        err.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
        return 2
    except click.exceptions.Abort:
        err.print("aborted; rerun the same command to resume")
        return 130
    except click.ClickException as e:
        e.show()
        return 2 if e.exit_code == 2 or isinstance(e, click.UsageError) else e.exit_code
    except KeyboardInterrupt:
        err.print("interrupted; rerun the same command to resume")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
