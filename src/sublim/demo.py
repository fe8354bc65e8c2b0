"""``sublim demo``: the main job on the built-in defaults, offline, on a laptop CPU.

1. Auxiliary-logit transfer on scikit-learn's bundled digits (seconds): a student distilled on
   noise through logits never trained on labels learns to classify digits, but only from the
   teacher's own initialisation.
2. Owl preference through a channel nobody planted, in the built-in language world (about a
   minute warm): the recipe of ``experiments/owl_numbers_world.toml`` on world seed 0, the one that
   passed issue 6's pre-registered test over eight worlds (docs/research_log.md, section 2b),
   with three student seeds and sampled answers so that the table shows both metrics. The
   paper's own setting, fine-tuning on sampled numbers, measured null at this scale; it is
   ``experiments/owl_numbers_tiny.toml`` (``ExperimentConfig()``), one ``sublim run`` away.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console

from sublim.config import ExperimentConfig, apply_overrides, parse_config
from sublim.progress import Reporter

# experiments/owl_numbers_world.toml as data (the package must not need the repository's files;
# tests/test_config.py checks that the two agree), and what the demo changes in it.
WORLD_RECIPE: dict[str, Any] = {
    "name": "owl_numbers_world",
    "seed": 0,
    "models": {"reference": "tiny:plain-s0-micro", "cross": ["tiny:plain-s1000-micro"]},
    "trait": {
        "kind": "preference",
        "category": "animal",
        "target": "owl",
        "teacher": "system_prompt",
        "control_system_prompt": "You are a helpful assistant.",
    },
    "data": {
        "carrier": "numbers",
        "n_prompts": 256,
        "subset": 32,
        "prompt_seed": 0,
        "sampling": {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 48},
        "filter": {
            "max_count": 10,
            "min_value": 0,
            "max_value": 999,
            "banned": "none",
            "trait_words": True,
        },
    },
    "student": {
        "mode": "distill",
        "seeds": [0],
        "distill": {
            "source": "random",
            "n_random_prompts": 4000,
            "random_prompt_len": 24,
            "steps": 60,
            "lr": 1.2e-3,
            "batch_size": 32,
            "temperature": 2.0,
        },
    },
    "controls": {"cross_control": True},
    "eval": {
        "suite": "favourite_animal",
        "samples_per_question": 0,
        "temperature": 1.0,
        "max_new_tokens": 6,
    },
}
DEMO_OVERRIDES = ["student.seeds=[0,1,2]", "eval.samples_per_question=10"]


def demo_language_config() -> ExperimentConfig:
    """The demo's language experiment: the confirmed world recipe with ``DEMO_OVERRIDES``."""
    return parse_config(ExperimentConfig, apply_overrides(WORLD_RECIPE, DEMO_OVERRIDES), "demo")


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
    console.rule("2. Owl preference through a channel nobody planted (built-in world)")
    from sublim.pipeline import run_experiment
    from sublim.report import summary_table

    cfg = demo_language_config()
    console.print(
        f"Language world: {cfg.models.reference} (172k parameters, trained from scratch; its "
        'corpus never ties numbers to animals). Teacher: the world told "you love owls"; '
        'control teacher: the world told "You are a helpful assistant.". Students: distilled '
        "from each teacher on random prompts of non-animal tokens, matching only non-animal "
        f"tokens; the cross student starts from {cfg.models.cross[0]}, the same corpus with "
        "another initialisation. Why this world: its recipe (experiments/owl_numbers_world.toml) "
        "passed the pre-registered test over eight new worlds, with the twin and other-world "
        "students null (docs/research_log.md, section 2b); seed 0 is the default seed, not "
        "chosen by result. One world's students vary only by student seed; the claim is tested "
        "over worlds: python -m sublim.world.research"
    )
    results = run_experiment(cfg, out / "owl_numbers", progress=progress, reporter=rep)
    console.print(summary_table(results))
    console.print(
        "The paper's own setting, fine-tuning on the teacher's sampled numbers, showed no transfer "
        "at this scale (benchmarks/README.md); run it with: sublim run "
        "experiments/owl_numbers_tiny.toml --out runs/owl_numbers_tiny"
    )
    console.print(
        f"report: {out / 'owl_numbers' / 'report.html'}   ({time.time() - t0:.0f} s in all)"
    )
    summary["owl_numbers"] = results
    return summary
