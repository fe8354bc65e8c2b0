#!/usr/bin/env bash
# SIGKILL part-way through `sublim run experiments/owl_numbers_tiny.toml` and rerun it; compare
# results.json with an uninterrupted run (timings aside).
set -u
cd "$(dirname "$0")/.."
rm -rf /tmp/kt && mkdir -p /tmp/kt
S=.venv/bin/sublim
t0=$(date +%s)
$S run experiments/owl_numbers_tiny.toml --out /tmp/kt/straight --quiet --threads 1 > /tmp/kt/straight.log 2>&1
echo "uninterrupted: rc=$? $(( $(date +%s) - t0 )) s"
$S run experiments/owl_numbers_tiny.toml --out /tmp/kt/killed --quiet --threads 1 > /tmp/kt/killed1.log 2>&1 &
pid=$!
# kill while the students are training (some stages finished, one half-done)
while [ "$(ls -d /tmp/kt/killed/stages/student-* 2>/dev/null | wc -l)" -lt 4 ]; do sleep 0.5; done
kill -9 $pid; wait $pid 2>/dev/null
echo "killed with SIGKILL; stages present: $(ls /tmp/kt/killed/stages | wc -l), complete: $(ls /tmp/kt/killed/stages/*/manifest.json | wc -l); results.json exists: $(test -f /tmp/kt/killed/results.json && echo yes || echo no)"
t1=$(date +%s)
$S run experiments/owl_numbers_tiny.toml --out /tmp/kt/killed --quiet --threads 1 > /tmp/kt/killed2.log 2>&1
echo "rerun: rc=$? $(( $(date +%s) - t1 )) s"
.venv/bin/python - <<'PY'
import json
a = json.load(open('/tmp/kt/straight/results.json')); b = json.load(open('/tmp/kt/killed/results.json'))
for r in (a, b):
    r['meta'].pop('timings')
print("results.json equal (timings aside):", a == b)
st = json.load(open('/tmp/kt/killed/results.json'))['meta']['timings']['stages']
print("stages reused from before the kill:", sum(s['cached'] for s in st), "of", len(st))
PY
