"""``sublim sweep`` (issue 15 item 4): a grid over an experiment file, in-process and on Ray.

Worlds are built with a shrunken recipe (a few training steps, as in test_research.py) in a
private cache, and the experiment is shrunk with fixed overrides, so the numbers mean nothing:
what is checked is that a 2 traits x 2 seeds sweep runs, shares stages through one store, gives
the same results in-process, on a local Ray cluster and on Ray with a worker killed mid-stage, and
that user errors are one line with exit code 2. One Ray session serves the whole module (its
start-up is the slow part on two cores).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import import_optional

from sublim.cli import main
from sublim.errors import ConfigError, SublimError
from sublim.sweep import load_sweep, run_sweep
from sublim.world import build

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ROOT / "experiments" / "owl_numbers_world.toml"
# the world's micro recipe cut to a few steps (test_research.py's tiny_worlds)
MICRO = dict(build.RECIPE["micro"], cur_examples=200, cur_steps=2, n_examples=400, steps=3)
SHRINK = """
[set]
"models.cross" = []
"data.n_prompts" = 32
"data.subset" = 8
"data.sampling.max_new_tokens" = 16
"student.distill.steps" = 3
"student.distill.n_random_prompts" = 16
"student.distill.random_prompt_len" = 6
"student.distill.batch_size" = 4
"eval.n_questions" = 4
"""
SLUGS = ["target-owl__seeds-0", "target-owl__seeds-1", "target-cat__seeds-0", "target-cat__seeds-1"]


def write_sweep(path: Path, grid: str, extra: str = SHRINK) -> Path:
    path.write_text(f'experiment = "{EXPERIMENT}"\nname = "t"\n[grid]\n{grid}\n{extra}')
    return path


# two traits x two student seeds: the cells of one trait share its teachers and data set
GRID = '"trait.target" = ["owl", "cat"]\n"student.seeds" = [[0], [1]]'


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("sweep")
    mp = pytest.MonkeyPatch()
    mp.setitem(build.RECIPE, "micro", MICRO)
    mp.setenv("SUBLIM_CACHE_DIR", str(d / "cache"))
    yield d
    mp.undo()


def _results(run: Path, slug: str) -> dict[str, Any]:
    res = json.loads((run / "cells" / slug / "results.json").read_text())
    res["meta"].pop("timings")  # seconds and which stages were found done
    return res


@pytest.fixture(scope="module")
def inprocess(env: Path) -> Path:
    out = env / "inprocess"
    assert (
        main(["sweep", str(write_sweep(env / "s.toml", GRID)), "--out", str(out), "--quiet"]) == 0
    )
    return out


@pytest.fixture(scope="module")
def ray_session(env: Path) -> Iterator[Path]:
    """A local two-CPU Ray cluster whose workers use the shrunken recipe, with a fault switch:
    while ``faults/arm`` exists, the first worker to finish a student stage takes it (an atomic
    rename) and dies before writing the manifest: its files are written, the stage incomplete."""
    ray = import_optional("ray")
    faults = env / "faults"
    faults.mkdir()

    def setup() -> None:  # runs in every worker process
        from sublim import artifacts
        from sublim.world import build as b

        b.RECIPE["micro"] = MICRO
        finish = artifacts.StageDir.finish

        def dying_finish(self: Any, **info: Any) -> Any:
            if self.stage.startswith("student"):
                try:
                    os.rename(faults / "arm", faults / "fired")
                except FileNotFoundError:
                    pass
                else:
                    os._exit(1)
            return finish(self, **info)

        artifacts.StageDir.finish = dying_finish  # type: ignore[method-assign]

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"worker_process_setup_hook": setup},
    )
    yield faults
    ray.shutdown()


def test_sweep_file_names_cells_and_their_overrides(env: Path) -> None:
    sw = load_sweep(write_sweep(env / "names.toml", GRID))
    assert [c.slug for c in sw.cells] == SLUGS
    c = sw.cells[1]
    assert c.params == {"trait.target": "owl", "student.seeds": [1]}
    assert 'trait.target="owl"' in c.overrides and "student.seeds=[1]" in c.overrides
    assert c.data["trait"]["target"] == "owl" and c.data["student"]["seeds"] == [1]
    assert c.data["data"]["subset"] == 8  # [set] applies to every cell
    # nested tables are the same dotted keys; two keys ending alike keep their full names
    grid = "[grid.eval]\ntemperature = [0.5]\n[grid.data.sampling]\ntemperature = [1.0, 0.0]"
    sw = load_sweep(write_sweep(env / "nested.toml", grid, ""))
    assert sw.cells[1].params == {"eval.temperature": 0.5, "data.sampling.temperature": 0.0}
    assert [c.slug for c in sw.cells] == [
        "eval-temperature-0.5__data-sampling-temperature-1.0",
        "eval-temperature-0.5__data-sampling-temperature-0.0",
    ]


def test_inprocess_sweep_summary_report_and_shared_stages(inprocess: Path) -> None:
    s = json.loads((inprocess / "summary.json").read_text())
    assert [c["slug"] for c in s["cells"]] == SLUGS and s["n_failed"] == 0
    for c in s["cells"]:
        res = _results(inprocess, c["slug"])
        assert res["meta"]["target"] == c["params"]["trait.target"]
        assert res["meta"]["config"]["student"]["seeds"] == c["params"]["student.seeds"]
        want = res["contrast"]["trait_minus_control"]
        got = c["contrast"]["trait_minus_control"]
        assert (got["mean"], got["ci95"], got["p_value"]) == (
            want["mean"],
            want["ci95"],
            want["p_value"],
        )
    # one store: every cell's stages live in DIR/stages, and cells share what they can
    dirs = [
        st["dir"]
        for c in SLUGS
        for st in json.loads((inprocess / "cells" / c / "results.json").read_text())["meta"][
            "timings"
        ]["stages"]
    ]
    assert all(d.startswith("../../stages/") for d in dirs)
    assert len(set(dirs)) < len(dirs) and s["stages"]["reused"] == len(dirs) - len(set(dirs))
    assert not list((inprocess / "cells").glob("*/stages"))

    def n(pattern: str) -> int:
        return len(list((inprocess / "stages").glob(pattern)))

    # one prompt set and one control-teacher data set for all; a teacher's data per trait
    assert (n("prompts-*"), n("generate-control-*"), n("generate-trait-*")) == (1, 1, 2)
    assert (n("subset-*"), n("student-trait-*"), n("eval-*-teacher-*")) == (2, 4, 2)
    md = (inprocess / "report.md").read_text()
    assert all(f"| {slug} |" in md for slug in SLUGS)
    assert (inprocess / "fig_sweep_trait_minus_control.png").stat().st_size > 1000
    assert "data:image/png;base64," in (inprocess / "report.html").read_text()


def test_ray_sweep_gives_the_inprocess_results(
    inprocess: Path, ray_session: Path, env: Path
) -> None:
    out = env / "ray"
    s = run_sweep(load_sweep(env / "s.toml"), out, executor="ray", progress=False)
    assert s["n_failed"] == 0 and s["executor"] == "ray"
    for slug in SLUGS:
        assert _results(out, slug) == _results(inprocess, slug)


def test_a_worker_killed_mid_stage_leaves_no_half_stage_and_the_same_results(
    inprocess: Path, ray_session: Path, env: Path
) -> None:
    (ray_session / "arm").write_text("")
    out = env / "killed"
    sw = load_sweep(
        write_sweep(env / "owl.toml", '"trait.target" = ["owl"]\n"student.seeds" = [[0], [1]]')
    )
    s = run_sweep(sw, out, executor="ray", progress=False)
    assert (ray_session / "fired").is_file() and not (ray_session / "arm").exists()
    assert s["n_failed"] == 0
    for slug in SLUGS[:2]:
        assert _results(out, slug) == _results(inprocess, slug)
    # the retried task finished the stage its worker died in: every stage has its manifest
    stages = [p for p in (out / "stages").iterdir() if not p.name.startswith(".")]
    assert stages and all((p / "manifest.json").is_file() for p in stages)


def test_user_errors_are_one_line_with_exit_code_2(
    env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def err(*args: str) -> str:
        capsys.readouterr()
        assert main(["sweep", *args, "--out", str(env / "err"), "--quiet"]) == 2
        e = capsys.readouterr().err.strip()
        assert e.startswith("error:") and "\n" not in e and "Traceback" not in e
        return e

    assert "sweep file not found" in err(str(env / "missing.toml"))
    bad = env / "bad.toml"
    bad.write_text("experiment = \n")
    assert "malformed TOML" in err(str(bad))
    assert "grd: unknown field" in err(str(write_sweep(env / "typo.toml", "", "[grd]\nseed = [0]")))
    assert "non-empty list" in err(str(write_sweep(env / "scalar.toml", "seed = 0", "")))
    e = err(str(write_sweep(env / "key.toml", '"trait.targt" = ["owl"]', "")))
    assert "cell targt-owl" in e and "trait.targt: unknown field" in e
    with pytest.raises(ConfigError, match="both in"):
        load_sweep(write_sweep(env / "both.toml", "seed = [0]", "[set]\nseed = 1"))
    assert not (env / "err" / "summary.json").exists()  # nothing ran
    # ray missing: the executor says which extra to install
    monkeypatch.setitem(sys.modules, "ray", None)
    e = err(str(write_sweep(env / "r.toml", "seed = [0]")), "--executor", "ray")
    assert "--executor ray needs the 'ray' package" in e
    # the message names the extra (the CLI's rich markup currently hides "[ray]" when printing)
    from sublim.sweep import import_ray

    with pytest.raises(SublimError, match=r"pip install 'sublim\[ray\]'"):
        import_ray()
