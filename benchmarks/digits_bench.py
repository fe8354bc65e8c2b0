"""Benchmark of the auxiliary-logit experiment (``sublim digits``): wall time and peak memory.

What it measures, each in its own child process (peak RSS of that child from ``os.wait4``):

1. ``sublim digits`` with its defaults (5 seeds, 8x8 digits, 1 torch thread), then at 2 threads, with the
   numbers it reports (goal: <= 30 s on 2 cores, <= 1.5 GB peak RSS; aux-only same-init >= 0.5,
   cross-init <= 0.2, teacher >= 0.9).
2. An MNIST-shaped run (784 inputs, 784-256-256-13 MLPs, 60,000 / 10,000 images): real MNIST
   when ``--mnist-dir`` points at local files, else synthetic images of the same shape (class =
   a bright band at a class-specific height, on uniform background noise).
3. A memory probe at 100 seeds (100 teachers + 400 students in one batched program) with only a
   few steps: peak memory does not grow with the number of steps, so this bounds a full run.
4. The memory the original design would need to materialise every student's noise images.

Load from other processes makes timings noisy, so the load average is recorded beside them.

Usage: python benchmarks/digits_bench.py [--out runs/bench/digits_bench.json] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

GB = 1024**3


def run_child(args: list[str]) -> dict[str, Any]:
    """Run ``python -m sublim ARGS``; return wall seconds and the child's peak RSS."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sublim", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    out = proc.stdout.read().decode() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"sublim {' '.join(args)} failed ({proc.returncode}):\n{out}")
    return {
        "command": "sublim " + " ".join(args),
        "wall_s": round(wall, 2),
        "peak_rss_gib": round(usage.ru_maxrss * 1024 / GB, 3),  # ru_maxrss is in KiB on Linux
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "load_avg_1m_before": round(load_before[0], 2),
        "load_avg_1m_after": round(os.getloadavg()[0], 2),
    }


def synthetic_mnist(path: Path, n_train: int = 60000, n_test: int = 10000) -> None:
    """MNIST-shaped uint8 images (28x28) with learnable classes, saved as a keras-style npz."""
    rng = np.random.default_rng(0)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 10, size=n).astype(np.uint8)
        x = rng.integers(0, 90, size=(n, 28, 28), dtype=np.uint8)
        rows = 2 + 2 * y[:, None] + np.arange(4)[None, :]  # a 4-row band per class
        x[np.arange(n)[:, None], rows, :] = 220
        return x, y

    (xtr, ytr), (xte, yte) = make(n_train), make(n_test)
    np.savez(path, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)


def mlp_params(dims: list[int]) -> int:
    return sum(a * b + b for a, b in pairwise(dims))


def noise_memory(n_models: int, n_images: int = 60000, dim: int = 784) -> float:
    """GiB to hold every student's noise images as float32 at once (the original design)."""
    return n_models * n_images * dim * 4 / GB


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", type=Path, default=Path("runs/bench/digits_bench.json"))
    ap.add_argument(
        "--mnist-dir", type=str, default=None, help="local MNIST (IDX or npz); default: synthetic"
    )
    ap.add_argument("--mnist-seeds", type=int, default=10)
    ap.add_argument("--mnist-steps", type=int, default=100)
    ap.add_argument("--probe-seeds", type=int, default=100)
    ap.add_argument(
        "--quick", action="store_true", help="skip the 2-thread run and the 100-seed probe"
    )
    a = ap.parse_args()

    report: dict[str, Any] = {
        "uptime": subprocess.run(
            ["uptime"], capture_output=True, text=True, check=False
        ).stdout.strip()
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmpd = Path(tmp)
        # 1. the default command
        report["default"] = []
        # The command exactly as a user types it (1 thread by default), then with 2 threads.
        for threads in [1] if a.quick else [1, 2]:
            extra = [] if threads == 1 else ["--set", f"threads={threads}"]
            r = run_child(["digits", "--out", str(tmpd / f"d{threads}"), "--quiet", *extra])
            res = json.loads((tmpd / f"d{threads}" / "results.json").read_text())
            r["threads"] = threads
            r["in_process_total_s"] = res["timings"]["total_s"]
            r["conditions"] = {
                k: {"mean": round(v["mean"], 3), "ci95": [round(x, 3) for x in v["ci95"]]}
                for k, v in res["conditions"].items()
            }
            c = res["conditions"]
            r["checks"] = {
                "wall_le_30s": r["wall_s"] <= 30,
                "rss_le_1.5GiB": r["peak_rss_gib"] <= 1.5,
                "aux_same_ge_0.5": c["student_aux"]["mean"] >= 0.5,
                "aux_cross_le_0.2": c["cross_aux"]["mean"] <= 0.2,
                "teacher_ge_0.9": c["teacher"]["mean"] >= 0.9,
            }
            report["default"].append(r)
            print(json.dumps(r, indent=1), flush=True)

        # 2. an MNIST-shaped run
        mnist_dir = a.mnist_dir
        if mnist_dir is None:
            mnist_dir = str(tmpd / "mnist")
            Path(mnist_dir).mkdir()
            synthetic_mnist(Path(mnist_dir) / "mnist.npz")
        common = [
            "--data",
            "mnist",
            "--data-dir",
            mnist_dir,
            "--quiet",
            "--set",
            "width=256",
            "--set",
            "threads=1",
        ]
        r = run_child(
            [
                "digits",
                "--out",
                str(tmpd / "m"),
                "--seeds",
                str(a.mnist_seeds),
                *common,
                "--set",
                "teacher_epochs=1",
                "--set",
                "max_train=10000",
                "--set",
                f"student_steps={a.mnist_steps}",
            ]
        )
        res = json.loads((tmpd / "m" / "results.json").read_text())
        t = res["timings"]
        n_teacher_steps = -(-10000 // 32)
        r.update(
            seeds=a.mnist_seeds,
            data=res["data"],
            synthetic=a.mnist_dir is None,
            timings=t,
            teacher_step_s=round(t["teacher_s"] / n_teacher_steps, 4),
            student_step_s=round(t["students_s"] / a.mnist_steps, 4),
            conditions={k: round(v["mean"], 3) for k, v in res["conditions"].items()},
        )
        report["mnist_small"] = r
        print(json.dumps(r, indent=1), flush=True)

        # 3. memory probe: all 100 seeds at once, and in chunks of 25
        if not a.quick:
            report["mnist_probe"] = []
            for chunk in (0, 25):
                r = run_child(
                    [
                        "digits",
                        "--out",
                        str(tmpd / f"p{chunk}"),
                        "--seeds",
                        str(a.probe_seeds),
                        *common,
                        "--set",
                        "teacher_epochs=1",
                        "--set",
                        "max_train=320",
                        "--set",
                        "student_steps=2",
                        "--set",
                        f"seed_chunk={chunk}",
                    ]
                )
                r.update(
                    seeds=a.probe_seeds,
                    seed_chunk=chunk,
                    timings=json.loads((tmpd / f"p{chunk}" / "results.json").read_text())[
                        "timings"
                    ],
                )
                report["mnist_probe"].append(r)
                print(json.dumps(r, indent=1), flush=True)

    # 4. arithmetic: the original design vs batch-by-batch noise, and a 100-seed plan
    p = mlp_params([784, 256, 256, 13])
    report["arithmetic"] = {
        "mlp_784_256_256_13_params": p,
        "original_noise_gib_100_students_x_60000_images": round(noise_memory(100), 2),
        "original_noise_gb_decimal": round(noise_memory(100) * GB / 1e9, 2),
        "batched_noise_in_flight_gib_100_seeds_x_256": round(100 * 256 * 784 * 4 / GB, 3),
        "students_params_grads_adam_gib_400_models": round(400 * p * 4 * 4 / GB, 2),
    }
    if "mnist_small" in report:
        ms = report["mnist_small"]
        scale = 100 / a.mnist_seeds  # per-step cost grows linearly in models (batched matmuls)
        report["plan_100_seeds_full"] = {
            "teacher_10_epochs_60k_est_min": round(
                ms["teacher_step_s"] * scale * 10 * (60000 // 32) / 60, 1
            ),
            "students_800_steps_est_min": round(ms["student_step_s"] * scale * 800 / 60, 1),
            "note": "1 thread, extrapolated linearly from the measured smaller run",
        }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
