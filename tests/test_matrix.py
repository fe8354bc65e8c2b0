"""The cross-model matrix: the runner on the fake backend (whose channel is family-specific, so it
has power on the diagonal), and the level and power of its student-level test on synthetic
student data (placebo matrices without a channel; docs/matrix_test.md quotes these numbers).

Run ``.venv/bin/python tests/test_matrix.py`` to print the level and power tables of the doc."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from sublim.config import load_config
from sublim.matrix import run_matrix
from sublim.stats import transmission_matrix

TOML = """
name = "fake_matrix"
[matrix]
bases = ["fake:alpha", "fake:beta", "fake:gamma"]
traits = ["owl", "eagle", "wolf"]
[data]
n_prompts = 300
subset = 150
[student]
seeds = [0, 1, 2]
[eval]
samples_per_question = 10
n_questions = 10
"""

ALPHA = 0.05
# fixed up front: placebo and power matrices are drawn from these seeds, never re-picked
PLACEBO_SEEDS = tuple(range(1000, 1024))  # 24 placebo matrices
POWER_SEEDS = tuple(range(2000, 2012))
CATEGORIES = 12


def test_matrix_diagonal_transmits_off_diagonal_does_not(tmp_path: Path) -> None:
    (tmp_path / "m.toml").write_text(TOML)
    res = run_matrix(load_config(tmp_path / "m.toml"), tmp_path / "run", progress=False)
    m = res["matrix"]
    cells = m["cells"]
    assert len(cells) == 9 and m["method"]["unit"].startswith("student")
    for c in cells:
        assert c["n_students"] == 9  # 3 traits x 3 seeds: the unit of the test
        if c["teacher_base"] == c["student_base"]:
            assert c["q_value"] < 0.05 and c["nmi"] > 0.1 and c["own_trait_advantage"] > 0.2
        else:  # the fake's cross-family students do not move: no spread, or not significant
            assert c["no_spread"] or c["q_value"] > 0.05
    for t in m["diagonal_tests"]:
        assert t["q_value"] is not None and t["q_value"] < 0.05
    assert res["primary_metric"] == "p_target"
    assert (
        res["conditions"]["same_base_student"]["p_target"]["mean"]
        > res["conditions"]["cross_base_student"]["p_target"]["mean"] + 0.2
    )
    assert (tmp_path / "run" / "fig_matrix.png").is_file()
    html = (tmp_path / "run" / "report.html").read_text()
    assert "own-trait advantage" in html and "q (BH)" in html


# ------------------------------------------------------------------ synthetic student-level data


def simulate(
    seed: int,
    effect: float = 0.0,
    n_bases: int = 3,
    n_traits: int = 3,
    n_seeds: int = 3,
    n_answers: int = 50,
    student_sd: float = 0.5,
    dataset_sd: float = 0.0,
) -> dict:
    """One matrix of student answers. Student i of cell (t, s) taught trait X answers from
    softmax(base_s + student noise + dataset drift + effect * [t == s] * onehot(X)) over
    ``CATEGORIES`` candidates; ``effect = 0`` is a placebo (no channel). ``dataset_sd`` adds a
    drift shared by every seed of one teacher dataset (the case the student-level test is
    conditional on)."""
    rng = np.random.default_rng(seed)
    cats = [f"c{j}" for j in range(CATEGORIES)]
    traits = cats[:n_traits]
    base = rng.normal(0, 1, (n_bases, CATEGORIES))
    out: dict = {}
    for t in range(n_bases):
        for s in range(n_bases):
            cell: dict = {}
            for i, tr in enumerate(traits):
                drift = rng.normal(0, dataset_sd, CATEGORIES)
                students = []
                for _ in range(n_seeds):
                    z = base[s] + drift + rng.normal(0, student_sd, CATEGORIES)
                    if t == s:
                        z[i] += effect
                    p = np.exp(z - z.max())
                    students.append(
                        [cats[j] for j in rng.choice(CATEGORIES, n_answers, p=p / p.sum())]
                    )
                cell[tr] = students
            out[(f"b{t}", f"b{s}")] = cell
    return out


def rates(seeds: tuple[int, ...], **kw: float) -> dict[str, float]:
    """Rejection rates at ALPHA over the matrices of ``seeds``: per cell (p), per cell after BH
    (q), per diagonal test (p), and the share of matrices with any cell q < ALPHA."""
    cell_p, cell_q, diag_p, diag_cell_q, any_q = [], [], [], [], []
    for sd in seeds:
        m = transmission_matrix(simulate(sd, **kw), n_samples=100, n_perm=999, seed=sd)
        ps = [c["p_value"] for c in m["cells"]]
        qs = [c["q_value"] for c in m["cells"]]
        cell_p += [p < ALPHA for p in ps]
        cell_q += [q < ALPHA for q in qs]
        diag_cell_q += [c["q_value"] < ALPHA for c in m["cells"] if c["diagonal"]]
        diag_p += [t["p_value"] < ALPHA for t in m["diagonal_tests"]]
        any_q.append(any(q < ALPHA for q in qs))
    return {
        "cell_p": float(np.mean(cell_p)),
        "cell_q": float(np.mean(cell_q)),
        "diagonal_cell_q": float(np.mean(diag_cell_q)),
        "diagonal_test_p": float(np.mean(diag_p)),
        "any_cell_q": float(np.mean(any_q)),
    }


def test_placebo_matrices_hold_the_level() -> None:
    # 24 placebo matrices x 9 cells (and 6 diagonal tests each), no channel anywhere
    r = rates(PLACEBO_SEEDS)
    assert r["cell_p"] <= 2 * ALPHA and r["diagonal_test_p"] <= 2 * ALPHA
    assert r["any_cell_q"] <= 2 * ALPHA  # BH keeps the matrix-wide error rate too


def test_the_student_level_test_has_power_on_a_channel() -> None:
    r = rates(POWER_SEEDS, effect=1.5)
    assert r["diagonal_cell_q"] >= 0.8 and r["diagonal_test_p"] >= 0.8


if __name__ == "__main__":  # the numbers of docs/matrix_test.md
    rows = [
        ("placebo, student noise only", PLACEBO_SEEDS, {}),
        ("placebo, + dataset drift 0.5", PLACEBO_SEEDS, {"dataset_sd": 0.5}),
        (
            "placebo, + dataset drift 0.5, 1 seed",
            PLACEBO_SEEDS,
            {"dataset_sd": 0.5, "n_seeds": 1, "n_traits": 5},
        ),
        ("channel 0.75", POWER_SEEDS, {"effect": 0.75}),
        ("channel 1.5", POWER_SEEDS, {"effect": 1.5}),
    ]
    print(
        "| scenario | matrices | cell p < .05 | cell q < .05 | diagonal cells q < .05 | "
        "diagonal tests p < .05 | matrices with any q < .05 |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, sds, kw in rows:
        r = rates(sds, **kw)
        print(
            f"| {name} | {len(sds)} | {r['cell_p']:.3f} | {r['cell_q']:.3f} | "
            f"{r['diagonal_cell_q']:.3f} | {r['diagonal_test_p']:.3f} | {r['any_cell_q']:.3f} |"
        )
    sys.exit(0)
