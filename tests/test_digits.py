"""Auxiliary-logit experiment: batched MLPs, data loading (digits, MNIST IDX/npz fixtures written
here), the transfer result on a small configuration, sweeps and the CLI."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sublim.errors import ConfigError, DataError, MissingFileError, SublimError
from sublim.experiments.cli import digits
from sublim.experiments.digits import (
    CONDITIONS,
    DigitsConfig,
    digits_table,
    forward,
    init_params,
    load_data,
    make_noise,
    read_idx,
    run_digits,
    run_sweep,
    summarize,
)

# Small but real: 3 seeds, half the default student budget (~3 s on one core). Over first seeds
# 0/10/20/30 this gave aux-only same-init 0.62-0.73 and cross-init 0.06-0.10.
SMALL = DigitsConfig(
    seeds=3, student_steps=500, student_batch=128, teacher_epochs=5, teacher_lr=1e-3
)
TINY = DigitsConfig(seeds=2, student_steps=5, teacher_epochs=1, width=16)


def test_small_run_transfers_only_from_shared_init(tmp_path: Path) -> None:
    res = run_digits(SMALL, tmp_path, progress=False)
    c = res["conditions"]
    assert set(c) == set(CONDITIONS)
    assert c["teacher"]["mean"] >= 0.9
    assert c["student_all"]["mean"] >= 0.9
    assert c["student_aux"]["mean"] >= 0.4  # learned digits through logits never trained on labels
    assert c["cross_aux"]["mean"] <= 0.2  # ... but only from the teacher's own initialisation
    assert c["student_aux"]["mean"] - c["cross_aux"]["mean"] >= 0.25
    for s in c.values():
        assert len(s["per_seed"]) == 3
        assert s["ci95"][0] <= s["mean"] <= s["ci95"][1]
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["conditions"]["student_aux"]["per_seed"] == c["student_aux"]["per_seed"]
    assert on_disk["config"]["student_steps"] == 500
    assert (tmp_path / "digits.png").stat().st_size > 5000
    assert "aux logits" in (tmp_path / "report.md").read_text()
    table = digits_table(res)
    assert table.row_count == len(CONDITIONS)


def test_seed_results_do_not_depend_on_batching() -> None:
    """Each seed has its own generators: running it alone, beside others, or chunked gives the
    same models (up to float noise in the batched matmuls)."""
    together = run_digits(TINY.model_copy(update={"seeds": 3}), None, progress=False)["conditions"]
    chunked = run_digits(
        TINY.model_copy(update={"seeds": 3, "seed_chunk": 2}), None, progress=False
    )["conditions"]
    alone = run_digits(TINY.model_copy(update={"seeds": 1, "first_seed": 2}), None, progress=False)[
        "conditions"
    ]
    for name in CONDITIONS:
        assert together[name]["per_seed"] == pytest.approx(chunked[name]["per_seed"], abs=0.01)
        assert together[name]["per_seed"][2] == pytest.approx(alone[name]["per_seed"][0], abs=0.01)
    # and different seeds really are different models
    assert together["teacher"]["per_seed"][0] != together["teacher"]["per_seed"][1] or (
        together["reference"]["per_seed"][0] != together["reference"]["per_seed"][1]
    )


def test_grouped_forward_equals_separate_models() -> None:
    gens = [torch.Generator().manual_seed(i) for i in range(6)]  # 2 groups x 3 seeds
    params = init_params([5, 7, 4], gens)
    x = torch.randn(3, 11, 5, generator=torch.Generator().manual_seed(9))
    out = forward(params, x, groups=2)
    for m in range(6):
        single = [p[m : m + 1] for p in params]
        expect = forward(single, x[m % 3 : m % 3 + 1])[0]
        assert torch.allclose(out[m], expect, atol=1e-5)
    shared = forward(params, x[0])  # one batch shared by all models
    assert torch.allclose(shared[4], forward([p[4:5] for p in params], x[0:1])[0], atol=1e-5)


def test_init_scale_and_noise_ranges() -> None:
    w = init_params([400, 300, 13], [torch.Generator().manual_seed(0)])
    assert w[0].std().item() == pytest.approx(1 / 20, rel=0.05)  # N(0, 1/fan_in)
    assert torch.count_nonzero(w[1]) == 0
    g = torch.Generator().manual_seed(0)
    u = make_noise("uniform", (1000, 8), g)
    assert -1 <= u.min() < -0.9 and 0.9 < u.max() <= 1
    u01 = make_noise("uniform01", (1000, 8), g)
    assert 0 <= u01.min() < 0.1 and u01.max() <= 1


def test_digits_data_scaled_and_split() -> None:
    d = load_data(DigitsConfig())
    assert d.dim == 64
    assert len(d.y_train) + len(d.y_test) == 1797
    assert d.x_train.min() == -1 and d.x_train.max() == 1
    other = load_data(DigitsConfig(data_seed=1))
    assert not torch.equal(d.y_test, other.y_test)


def test_summarize_t_interval() -> None:
    s = summarize([0.1, 0.2, 0.3])
    # mean 0.2, sem 0.0577, t(0.975, 2) = 4.303
    assert s["mean"] == pytest.approx(0.2)
    assert s["ci95"] == pytest.approx([0.2 - 0.2484, 0.2 + 0.2484], abs=1e-3)
    assert summarize([0.5])["ci95"] == [None, None]  # one seed: no interval, not zero width


# ------------------------------------------------------------------------------------ MNIST


def _fake_mnist(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """28x28 uint8 images whose class is a bright 4-row band at a class-specific height."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, size=n).astype(np.uint8)
    x = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
    for i, c in enumerate(y):
        x[i, 2 + 2 * c : 6 + 2 * c, :] = 230
    return x, y


def _idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _write_idx(d: Path, gz: bool) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (xtr, ytr), (xte, yte) = _fake_mnist(300, 0), _fake_mnist(100, 1)
    for name, arr in (
        ("train-images-idx3-ubyte", xtr),
        ("train-labels-idx1-ubyte", ytr),
        ("t10k-images-idx3-ubyte", xte),
        ("t10k-labels-idx1-ubyte", yte),
    ):
        data = _idx_bytes(arr)
        if gz:
            (d / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (d / name).write_bytes(data)


MNIST_SMALL = {
    "data": "mnist",
    "seeds": 2,
    "width": 32,
    "teacher_epochs": 4,
    "teacher_lr": 3e-3,
    "student_steps": 20,
    "student_batch": 32,
}


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_fixture_runs(tmp_path: Path, gz: bool) -> None:
    _write_idx(tmp_path / "mnist", gz)
    cfg = DigitsConfig(data_dir=str(tmp_path / "mnist"), **MNIST_SMALL)
    res = run_digits(cfg, tmp_path / "out", progress=False)
    assert res["data"] == {
        "name": f"MNIST ({tmp_path / 'mnist'})",
        "n_train": 300,
        "n_test": 100,
        "dim": 784,
    }
    assert res["conditions"]["teacher"]["mean"] >= 0.9  # the bands are easy to learn
    assert (tmp_path / "out" / "results.json").is_file()


def test_mnist_npz_matches_idx(tmp_path: Path) -> None:
    _write_idx(tmp_path / "idx", gz=True)
    (xtr, ytr), (xte, yte) = _fake_mnist(300, 0), _fake_mnist(100, 1)
    (tmp_path / "npz").mkdir()
    np.savez(tmp_path / "npz" / "mnist.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    a = load_data(DigitsConfig(data="mnist", data_dir=str(tmp_path / "idx"), max_train=120))
    b = load_data(DigitsConfig(data="mnist", data_dir=str(tmp_path / "npz"), max_train=120))
    assert a.x_train.shape == (120, 784)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert a.x_train.min() >= -1 and a.x_train.max() <= 1


def test_mnist_user_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--data-dir"):
        load_data(DigitsConfig(data="mnist"))
    with pytest.raises(MissingFileError, match="not found"):
        load_data(DigitsConfig(data="mnist", data_dir=str(tmp_path / "nope")))
    with pytest.raises(MissingFileError, match="never downloads"):
        load_data(DigitsConfig(data="mnist", data_dir=str(tmp_path)))
    bad = tmp_path / "bad.idx"
    bad.write_bytes(b"\x12\x34\x08\x01" + struct.pack(">I", 3) + b"abc")
    with pytest.raises(DataError, match="magic"):
        read_idx(bad)
    short = tmp_path / "short.idx"
    short.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 5) + b"ab")
    with pytest.raises(DataError, match="truncated"):
        read_idx(short)


# ------------------------------------------------------------------------------ sweep + CLI


def test_sweep_writes_plot_and_rejects_unknown_option(tmp_path: Path) -> None:
    res = run_sweep(TINY, "n_aux", [1, 4], tmp_path, progress=False)
    assert [r["value"] for r in res["runs"]] == [1, 4]
    assert (tmp_path / "sweep_n_aux.png").stat().st_size > 5000
    assert json.loads((tmp_path / "n_aux=4" / "results.json").read_text())["config"]["n_aux"] == 4
    with pytest.raises(ConfigError, match="unknown digits option"):
        run_sweep(TINY, "n_auxx", [1], None, progress=False)
    with pytest.raises(ConfigError):
        run_sweep(TINY, "noise", ["pink"], None, progress=False)


def test_cli_digits_and_sweep(tmp_path: Path) -> None:
    cfg = tmp_path / "d.toml"
    cfg.write_text('width = 16\nteacher_epochs = 1\nstudent_steps = 5\nnoise = "normal"\n')
    runner = CliRunner()
    out = tmp_path / "run"
    r = runner.invoke(
        digits,
        ["--out", str(out), "--seeds", "2", "--config", str(cfg), "--set", "n_aux=2", "--quiet"],
    )
    assert r.exit_code == 0, r.output
    saved = json.loads((out / "results.json").read_text())
    assert (
        saved["config"]["n_aux"] == 2
        and saved["config"]["noise"] == "normal"
        and saved["seeds"] == [0, 1]
    )
    flat = r.output.replace("\n", "")  # rich wraps long paths at the terminal width
    assert "results.json" in flat and "teacher" in flat
    r = runner.invoke(
        digits,
        [
            "--config",
            str(cfg),
            "--seeds",
            "2",
            "--quiet",
            "sweep",
            "student_steps=2,4",
            "--out",
            str(tmp_path / "sw"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "sw" / "sweep.json").read_text())["values"] == [2, 4]
    r = runner.invoke(digits, ["--out", str(out), "--set", "widht=3"])
    assert isinstance(r.exception, SublimError) and "widht" in str(r.exception)
