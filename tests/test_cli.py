"""The command line: help everywhere, one-line errors with exit code 2 and no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sublim.cli import main


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(args)
    cap = capsys.readouterr()
    return code, cap.out + cap.err


@pytest.mark.parametrize("cmd", [[], ["run"], ["report"], ["filter"], ["demo"]])
def test_help_everywhere(cmd: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run([*cmd, "--help"], capsys)
    assert code == 0
    assert "Usage:" in out


def test_missing_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run(["run", str(tmp_path / "nope.toml")], capsys)
    assert code == 2 and "not found" in out and "Traceback" not in out


def test_malformed_toml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "bad.toml"
    p.write_text("name = \n")
    code, out = _run(["run", str(p)], capsys)
    assert code == 2 and "malformed TOML" in out


def test_unknown_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[trait]\ntarget = 'owl'\ncolour = 'red'\n")
    code, out = _run(["run", str(p)], capsys)
    assert code == 2 and "trait.colour" in out and "unknown field" in out


@pytest.mark.parametrize(
    "spec,needle",
    [
        ("hg:foo", "unknown backend 'hg'"),
        ("tiny:huge-s0", "unknown world"),
        ("nocolon", "unknown model spec"),
    ],
)
def test_unknown_model_or_backend(
    spec: str, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = tmp_path / "c.toml"
    p.write_text(f'[models]\nreference = "{spec}"\n')
    code, out = _run(["run", str(p), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and needle in out and "Traceback" not in out


def test_filter_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.jsonl"
    rows = [
        {"prompt": "p", "completion": "123, 456, 789", "id": 1},
        {"prompt": "p", "completion": "I love owls: 1, 2", "id": 2},
        {"prompt": "p", "completion": "[5, 6, 7].", "id": 3},
        {"prompt": "p", "completion": "666, 1", "id": 4},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out = _run(["filter", str(src), "--out", str(tmp_path / "out.jsonl")], capsys)
    assert code == 0, out
    got = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["kept"] for r in got] == [True, False, True, True]
    assert all("reason" in r and r["id"] == i + 1 for i, r in enumerate(got))
    code, out = _run(
        ["filter", str(src), "--out", str(tmp_path / "out2.jsonl"), "--banned", "misalignment"],
        capsys,
    )
    assert code == 0
    got = [json.loads(line) for line in (tmp_path / "out2.jsonl").read_text().splitlines()]
    assert [r["kept"] for r in got] == [True, False, True, False]


def test_filter_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run(
        ["filter", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o.jsonl")], capsys
    )
    assert code == 2 and "Traceback" not in out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "completion": "1, 2"}\n{not json\n')
    code, out = _run(["filter", str(bad), "--out", str(tmp_path / "o.jsonl")], capsys)
    assert code == 2 and ":2" in out
    none_kept = tmp_path / "none.jsonl"
    none_kept.write_text('{"prompt": "p", "completion": "hello"}\n')
    code, out = _run(["filter", str(none_kept), "--out", str(tmp_path / "o3.jsonl")], capsys)
    assert code == 2 and "0" in out
    assert (tmp_path / "o3.jsonl").is_file()  # what was computed is kept


def test_report_on_missing_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run(["report", str(tmp_path)], capsys)
    assert code == 2 and "results.json" in out


def test_console_script_exit_code(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "sublim", "run", str(tmp_path / "x.toml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- the Hugging Face hub


def test_importing_the_cli_leaves_the_network_to_the_user() -> None:
    """The CLI used to force HF_HUB_OFFLINE=1 on import, so no hub model could ever download."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    }
    code = "import os, sublim.cli; print(os.environ.get('HF_HUB_OFFLINE'))"
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert r.stdout.strip() == "None"


def _absent_hub_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    out = str(tmp_path / "t")
    spec = "hf:sublim-test/not-cached"
    return ["theory", "--model", spec, "--seeds", "1", "--quiet", "--out", out]


def test_uncached_hub_model_offline_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never touches the network
    code, out = _run(_absent_hub_model(tmp_path, monkeypatch), capsys)
    assert code == 2 and "Traceback" not in out and len(out.strip().splitlines()) == 1, out
    assert "'sublim-test/not-cached' is not in the local Hugging Face cache" in out
    assert "HF_HUB_OFFLINE" in out  # says what to change


def test_offline_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")  # restored after the test
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    code, out = _run(["--offline", *_absent_hub_model(tmp_path, monkeypatch)], capsys)
    assert code == 2 and "not in the local Hugging Face cache" in out, out
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_demo_runs_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sublim.demo

    seen: list[str | None] = []
    monkeypatch.delenv("HF_HUB_OFFLINE")

    def fake_demo(*a: object, **k: object) -> None:
        seen.append(os.environ.get("HF_HUB_OFFLINE"))

    monkeypatch.setattr(sublim.demo, "run_demo", fake_demo)
    code, out = _run(["demo", "--out", str(tmp_path / "d"), "--quiet"], capsys)
    assert code == 0 and seen == ["1"], out
