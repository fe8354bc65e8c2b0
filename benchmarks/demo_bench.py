"""Time `sublim demo` cold (empty cache: the worlds are built) and warm (worlds cached, a fresh
run directory), with per-stage times and peak memory.

    .venv/bin/python benchmarks/demo_bench.py [--cache DIR] [--skip-cold]

Each run is a child process (`python -m sublim demo --out DIR --quiet`); peak RSS comes from
`os.wait4` on it. Per-stage seconds come from the run's results.json (meta.timings) and the world
build times from the world cards. The machine's load average is printed beside each run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_demo(cache: Path, out: Path) -> dict:
    env = {
        **os.environ,
        "SUBLIM_CACHE_DIR": str(cache),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    load = os.getloadavg()[0]
    t0 = time.time()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sublim", "demo", "--out", str(out), "--quiet"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.time() - t0
    output = proc.stdout.read() if proc.stdout else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"demo failed:\n{output}")
    res = json.loads((out / "owl_numbers" / "results.json").read_text())
    digits = json.loads((out / "digits" / "results.json").read_text())
    stages: dict[str, float] = {}
    for s in res["meta"]["timings"]["stages"]:
        kind = s["stage"].split("-")[0]
        stages[kind] = stages.get(kind, 0.0) + s["seconds"]
    worlds = {}
    for card in sorted((cache / "worlds").glob("*/world_card.json")):
        c = json.loads(card.read_text())
        worlds[c["name"]] = c.get("build_seconds")
    return {
        "wall_s": round(wall, 1),
        "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2),
        "load_before": round(load, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "pipeline_s": res["meta"]["timings"]["seconds_total"],
        "digits_s": digits.get("timings", {}).get("total_s") or digits.get("timings"),
        "stages_s": {k: round(v, 1) for k, v in stages.items()},
        "world_build_s": worlds,
        "output_tail": output.strip().splitlines()[-18:],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--cache", type=Path, default=None, help="cache dir (default: a new temporary one)"
    )
    ap.add_argument(
        "--skip-cold",
        action="store_true",
        help="only the warm run (the cache must hold the worlds)",
    )
    ap.add_argument("--json", type=Path, default=Path("runs/bench/demo_bench.json"))
    a = ap.parse_args()
    cache = a.cache or Path(tempfile.mkdtemp(prefix="sublim-cache-"))
    work = Path(tempfile.mkdtemp(prefix="sublim-demo-"))
    out: dict[str, dict] = {}
    if not a.skip_cold:
        out["cold"] = run_demo(cache, work / "cold")
        print(
            "cold:",
            json.dumps({k: v for k, v in out["cold"].items() if k != "output_tail"}),
            flush=True,
        )
    out["warm"] = run_demo(cache, work / "warm")
    print(
        "warm:",
        json.dumps({k: v for k, v in out["warm"].items() if k != "output_tail"}),
        flush=True,
    )
    print("\n".join(out["warm"]["output_tail"]))
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(out, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
