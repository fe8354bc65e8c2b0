"""Multi-world experiments of issue 6: one recipe run over several built-in worlds fixed in
advance, with worlds (not student seeds) as the independent units.

Where it sits: above the runner. For each world seed k it calls ``sublim.pipeline.run_experiment``
twice into one run directory (so the teacher, control and same-init students are computed once):
once with the init twin of world k as the cross base (``build.TWIN_OFFSET + k``: the same corpus
and batch order, another initialisation) and once with another world as the cross base; both with
``controls.cross_control`` so every cross student has a control student on its own base. It then
tests, over worlds, the paired differences trait - control (same init), twin trait - twin
control, and other-world trait - other-world control, with ``sublim.stats.paired_contrast``.

The research log (docs/research_log.md) records what these runs found; reproduce one with

    OMP_NUM_THREADS=1 python -m sublim.world.research experiments/owl_numbers_world.toml \
        --worlds 0,1,2,3,4 --size micro --out runs/owl_world
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from sublim.stats import paired_contrast
from sublim.world.build import TWIN_OFFSET

OTHER_OFFSET = 5  # other-world bases: world OTHER_OFFSET + (k + 1) mod OTHER_OFFSET (never a tested world < 5)


def _name(seed: int, size: str) -> str:
    return f"tiny:plain-s{seed}" + ("" if size == "small" else f"-{size}")


def _mean_logodds(cond: dict[str, Any]) -> float:
    return float(np.mean(cond["logodds"]["per_seed"]))


def run_over_worlds(
    config: Path, worlds: list[int], size: str, out: Path, overrides: list[str] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Run the experiment ``config`` on every world of ``worlds`` (plain kind, ``size``); returns
    (and writes to ``out/summary.json``) per-world log-odds and the tests over worlds."""
    from sublim.config import load_config
    from sublim.pipeline import run_experiment

    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    t_all = time.perf_counter()
    for k in worlds:
        row: dict[str, Any] = {"world": k}
        for arm, cross in (("twin", TWIN_OFFSET + k), ("other", OTHER_OFFSET + (k + 1) % OTHER_OFFSET)):
            t0 = time.perf_counter()
            cfg = load_config(config, [
                f"models.reference={_name(k, size)}", f"models.cross=['{_name(cross, size)}']",
                "controls.cross_control=true", *(overrides or []),
            ])
            c = run_experiment(cfg, out / f"world-{k}", progress=progress)["conditions"]
            row.update(base=_mean_logodds(c["base"]), trait=_mean_logodds(c["trait_student"]),
                       control=_mean_logodds(c["control_student"]))
            row[f"{arm}_trait"] = _mean_logodds(c["cross_student"])
            row[f"{arm}_control"] = _mean_logodds(c["cross_control_student"])
            row[f"{arm}_seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)

    def test(a: str, b: str) -> dict[str, Any]:
        r = paired_contrast([x[a] for x in rows], [x[b] for x in rows])
        return {"mean": r["mean"], "ci95": r["ci95"], "p_value": r["p_value"],
                "per_world": [x[a] - x[b] for x in rows]}

    summary = {
        "config": str(config), "size": size, "worlds": worlds, "overrides": overrides or [],
        "same_init": test("trait", "control"),
        "twin": test("twin_trait", "twin_control"),
        "other_world": test("other_trait", "other_control"),
        "wall_seconds": round(time.perf_counter() - t_all, 1),
        "rows": rows,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return summary


@click.command()
@click.argument("config", type=click.Path(exists=True, path_type=Path))
@click.option("--worlds", default="0,1,2,3,4", show_default=True, help="world seeds, fixed before running")
@click.option("--size", default="micro", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--set", "overrides", multiple=True, help="config override key=value (repeatable)")
def main(config: Path, worlds: str, size: str, out: Path, overrides: tuple[str, ...]) -> None:
    """Run CONFIG over several worlds and print the tests over worlds."""
    import torch

    torch.set_num_threads(1)
    s = run_over_worlds(config, [int(x) for x in worlds.split(",")], size, out, list(overrides))
    for key in ("same_init", "twin", "other_world"):
        t = s[key]
        click.echo(f"{key:12s} {t['mean']:+.3f} [{t['ci95'][0]:+.3f}, {t['ci95'][1]:+.3f}] p={t['p_value']:.3g}")
    click.echo(f"wall {s['wall_seconds']} s; {out / 'summary.json'}")


if __name__ == "__main__":
    main()
