"""``sublim demo``: the main job on the built-in defaults, offline, on a laptop CPU.

1. Auxiliary-logit transfer on scikit-learn's bundled digits (seconds): a student distilled on
   noise through logits never trained on labels learns to classify digits, but only from the
   teacher's own initialisation.
2. Owl preference through numbers on the built-in tiny world (minutes): the default
   ``ExperimentConfig`` (the same as ``experiments/owl_numbers_tiny.toml``).
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from sublim.config import ExperimentConfig
from sublim.progress import Reporter


def run_demo(out: Path, progress: bool = True, console: Console | None = None) -> dict[str, object]:
    console = console or Console()
    rep = Reporter(progress)
    out = Path(out)
    summary: dict[str, object] = {}
    t0 = time.time()
    try:
        from sublim.experiments.digits import DigitsConfig, digits_table, run_digits
    except ImportError:  # pragma: no cover - the digits module ships with the package
        run_digits = None  # type: ignore[assignment]
    if run_digits is not None:
        console.rule("1. Auxiliary-logit transfer (digits, 5 seeds)")
        res = run_digits(DigitsConfig(), out / "digits", progress=progress)
        console.print(digits_table(res))
        console.print(f"report: {out / 'digits' / 'report.md'}")
        summary["digits"] = res
    console.rule("2. Owl preference through numbers (built-in tiny world)")
    from sublim.pipeline import run_experiment
    from sublim.report import summary_table

    cfg = ExperimentConfig(name="owl_numbers_tiny")
    console.print(
        f"Language world: {cfg.models.reference} (students), cross-model control: "
        f"{', '.join(cfg.models.cross)}. The plain world has no planted channel: no number in "
        "its corpus carries information about any animal, so any owl-specific shift is "
        "subliminal; a null result is an honest outcome at this scale (docs/research_log.md)."
    )
    results = run_experiment(cfg, out / "owl_numbers", progress=progress, reporter=rep)
    console.print(summary_table(results))
    console.print(f"report: {out / 'owl_numbers' / 'report.html'}   ({time.time() - t0:.0f} s in all)")
    summary["owl_numbers"] = results
    return summary
