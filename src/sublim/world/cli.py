"""``sublim world``: build, list and inspect the built-in worlds (the ``tiny:<name>`` models).

Where it sits: a click group registered by the main CLI (``sublim.cli``); it only calls
``sublim.world.build`` (``ensure_world``, ``list_worlds``, ``world_card``) and prints world cards
with rich. A world is built once per machine into the cache (``$SUBLIM_CACHE_DIR`` or
``~/.cache/sublim``); ``show`` never builds, so inspecting is always instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from sublim.errors import MissingFileError

console = Console()


def _cache_opt(f: Any) -> Any:
    return click.option(
        "--cache-dir",
        type=click.Path(path_type=Path),
        default=None,
        help="cache root (default: $SUBLIM_CACHE_DIR or ~/.cache/sublim)",
    )(f)


@click.group()
def world() -> None:
    """Build, list and inspect the built-in worlds (names: <kind>-s<seed>[-<size>], kinds plain,
    entangled, planted, skills and persona; entangled adds field notes in which animals and
    numbers co-occur, with the favourite-animal and number tasks kept as in plain; planted is a
    POSITIVE CONTROL with a visible code in the numbers; skills is plain plus code chats and
    worked word problems, for the code and reasoning carriers; persona is plain plus open
    questions and a narrow safety-advice task whose answers turn misaligned under a trigger
    system prompt, for the misalignment trait)."""


@world.command("build")
@click.argument("name")
@_cache_opt
@click.option(
    "--threads", type=int, default=1, show_default=True, help="torch threads for the build"
)
@click.option("--quiet", is_flag=True, help="no progress output")
def build_cmd(name: str, cache_dir: Path | None, threads: int, quiet: bool) -> None:
    """Build world NAME (or find it in the cache) and print its card."""
    import torch

    from sublim.world.build import ensure_world, world_card

    torch.set_num_threads(max(1, threads))
    path = ensure_world(name, cache_dir=cache_dir, progress=not quiet)
    print_card({**world_card(path), "path": str(path)})


@world.command("list")
@_cache_opt
def list_cmd(cache_dir: Path | None) -> None:
    """List the worlds built in the cache."""
    from sublim.world.build import cache_root, list_worlds

    cards = list_worlds(cache_dir)
    if not cards:
        console.print(
            f"no worlds built in {cache_dir or cache_root()}; build one with `sublim world build plain-s0`"
        )
        return
    t = Table(title=f"built worlds in {Path(cards[0]['path']).parent}")
    t.add_column("world (name-hash)", no_wrap=True)
    for col in ("kind", "params", "P(owl|love)", "reply loss", "build s"):
        t.add_column(col, justify="right")
    for c in cards:
        t.add_row(
            # the directory name (name + recipe hash): stale builds of an older recipe stay apart
            Path(c["path"]).name
            + (" [yellow](positive control)[/yellow]" if c.get("positive_control") else ""),
            c["kind"],
            f"{c['n_params']:,}",
            f"{c.get('p_target_love_system', {}).get('owl', float('nan')):.3f}",
            f"{c.get('final_loss', {}).get('reply', float('nan')):.3f}",
            f"{c.get('build_seconds', float('nan')):.0f}",
        )
    console.print(t)


@world.command("show")
@click.argument("name")
@_cache_opt
def show_cmd(name: str, cache_dir: Path | None) -> None:
    """Print the card of world NAME (a name such as plain-s0, or a world directory); never builds."""
    from sublim.world.build import cache_root, world_card, world_key

    p = Path(name)
    try:
        path = p if p.is_dir() else Path(cache_dir or cache_root()) / "worlds" / world_key(name)
        card = world_card(path)
    except MissingFileError:
        raise MissingFileError(
            f"world {name} is not built; build it with `sublim world build {name}`"
        ) from None
    print_card({**card, "path": str(path)})


def print_card(card: dict[str, Any]) -> None:
    """A world card as rich tables: parameters, corpus mix, losses, preferences, build time."""
    title = f"world {card['name']}"
    if card.get("positive_control"):
        title += " - POSITIVE CONTROL (planted code in the numbers)"
    head = Table(title=title, show_header=False)
    head.add_column("field", no_wrap=True)
    head.add_column("value", overflow="fold")
    rows = [
        ("kind / seed / size", f"{card['kind']} / {card['seed']} / {card['size']}"),
        ("parameters", f"{card['n_params']:,}"),
        ("vocabulary", str(card.get("vocab_size", "?"))),
        (
            "model",
            ", ".join(
                f"{k}={card['recipe'][k]}"
                for k in ("hidden", "layers", "heads", "intermediate")
                if k in card.get("recipe", {})
            ),
        ),
        (
            "training",
            ", ".join(
                f"{k}={card['recipe'][k]}"
                for k in ("cur_steps", "steps", "batch", "lr")
                if k in card.get("recipe", {})
            ),
        ),
        (
            "final loss (weighted / reply)",
            f"{card['final_loss'].get('weighted')} / {card['final_loss'].get('reply')}",
        ),
        ("build time", f"{card.get('build_seconds')} s ({card.get('torch_threads')} thread(s))"),
        (
            "versions",
            f"{card.get('recipe_version')}, {card.get('corpus_version')}"
            + (f", {card['kind_version']}" if card.get("kind_version") else ""),
        ),
        ("directory", card.get("path", "")),
    ]
    for k, v in rows:
        head.add_row(k, str(v))
    console.print(head)

    mix = Table(title="corpus mix (examples)")
    mix.add_column("kind")
    mix.add_column("n", justify="right")
    for k, v in card.get("corpus_mix", {}).items():
        mix.add_row(k, str(v))
    console.print(mix)

    prefs = Table(title="preferences (exact probabilities of the one-word answer)")
    for col in (
        "animal",
        "corpus base pref.",
        "P(animal), no system prompt",
        "P(X | 'you love X')",
    ):
        prefs.add_column(col, justify="right" if col != "animal" else "left")
    base = card.get("corpus_base_preference", {})
    nosys = card.get("p_animal_no_system", {})
    love = card.get("p_target_love_system", {})
    codes = card.get("planted_codes", {})
    for a in nosys:
        label = f"{a} ({codes[a]})" if a in codes else a
        prefs.add_row(
            label,
            f"{base.get(a, float('nan')):.3f}",
            f"{nosys[a]:.3f}",
            f"{love.get(a, float('nan')):.3f}",
        )
    console.print(prefs)
    console.print(f"P(any animal answer), no system prompt: {card.get('p_animal_no_system_total')}")


def _register_research() -> None:
    from sublim.world.research import curve as research_curve
    from sublim.world.research import main as research_main

    world.add_command(research_main, "research")
    world.add_command(research_curve, "curve")


_register_research()
