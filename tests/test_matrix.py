"""The cross-model matrix runner on the fake backend, whose channel is family-specific."""

from __future__ import annotations

from pathlib import Path

from sublim.config import load_config
from sublim.matrix import run_matrix

TOML = """
name = "fake_matrix"
[matrix]
bases = ["fake:alpha", "fake:beta", "fake:gamma"]
traits = ["owl", "eagle", "wolf"]
[data]
n_prompts = 300
subset = 150
[student]
seeds = [0]
[eval]
samples_per_question = 10
n_questions = 10
"""


def test_matrix_diagonal_transmits_off_diagonal_does_not(tmp_path: Path) -> None:
    (tmp_path / "m.toml").write_text(TOML)
    res = run_matrix(load_config(tmp_path / "m.toml"), tmp_path / "run", progress=False)
    cells = res["matrix"]["cells"]
    assert len(cells) == 9
    for c in cells:
        if c["teacher_base"] == c["student_base"]:
            assert c["q_value"] < 0.05 and c["nmi"] > 0.1
        else:
            assert c["q_value"] > 0.05
    assert res["conditions"]["same_base_student"]["p_target"]["mean"] > res["conditions"]["cross_base_student"]["p_target"]["mean"] + 0.2
    assert (tmp_path / "run" / "fig_matrix.png").is_file()
    html = (tmp_path / "run" / "report.html").read_text()
    assert "Benjamini" in html or "q-value" in html or "q_value" in html
