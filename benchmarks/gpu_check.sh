#!/usr/bin/env bash
# The GPU check: at most 8 minutes on one H100/H200, each step under its own time cap.
#
#   bash benchmarks/gpu_check.sh            # on a CUDA machine: writes RESULTS.md's GPU sections
#   bash benchmarks/gpu_check.sh --smoke    # anywhere: the same steps on the CPU at toy sizes (the test suite runs it)
#
# Steps: the `gpu` tests (tests/test_gpu.py), bench_train.py --device cuda (models 1-2 against pythae,
# one 60k-image epoch of model 2), bench_seeds.py --device cuda (8 seeds as one SeedStack), and
# bench_workers.py --device cuda when that file exists; then a `gpu-check` section of RESULTS.md that
# names the device and says how each step ended. A failed step does not stop the others; the exit
# status is the number of steps that failed.
# Needs no network and no install of aelab (it runs from this folder via PYTHONPATH):
#   .whl/       pythae and its pure-python dependencies (see benchmarks/README.md), installed with
#               pip --no-index --no-deps into /tmp/site when pythae is not importable;
#   $AELAB_FASHION (default .data/fashion-mnist if present): the 4 Fashion-MNIST IDX .gz files,
#               linked into $AELAB_CACHE/fashion-mnist (AELAB_CACHE defaults to /tmp/aelab-cache).
# Caps (seconds) can be changed: CAP_TESTS CAP_TRAIN CAP_SEEDS CAP_WORKERS (defaults sum to 470: 110, 120, 90, 150).
set -uo pipefail
cd "$(dirname "$0")/.."
SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export CUBLAS_WORKSPACE_CONFIG=${CUBLAS_WORKSPACE_CONFIG:-:4096:8}  # deterministic cuBLAS for the resume test
# the smoke shares a CPU with the test suite: one thread, and threads that sleep rather than spin while they
# wait (bench_workers' 2-thread arm spun 3-4x its CPU time away on 2 busy cores; the results are the same)
[ $SMOKE = 1 ] && export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}

if ! $PY -c "import pythae" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
FASHION=${AELAB_FASHION:-}
[ -z "$FASHION" ] && [ -d .data/fashion-mnist ] && FASHION=$PWD/.data/fashion-mnist
if [ -n "$FASHION" ]; then
  export AELAB_CACHE=${AELAB_CACHE:-/tmp/aelab-cache}
  mkdir -p "$AELAB_CACHE/fashion-mnist"
  ln -sf "$(cd "$FASHION" && pwd)"/*.gz "$AELAB_CACHE/fashion-mnist/"
fi

if [ $SMOKE = 1 ]; then
  DEV=(--device cpu --smoke); WRITE=(); TESTS=(-n0 -m gpu tests/test_gpu.py)
else
  DEV=(--device cuda); WRITE=(--write-results); TESTS=(-n0 -m gpu tests/test_gpu.py -rA)
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  $PY -c "import torch, aelab.amp as a; print('torch', torch.__version__, '| CPU bf16 units:', a.cpu_bf16_units() or 'none')" || true
fi
STATUS=$(mktemp)
FAILED=0
step() {  # step NAME CAP COMMAND...: run under `timeout`, log how it ended
  local name=$1 cap=$2; shift 2
  echo "== $name (cap ${cap}s): $*"
  local t0=$SECONDS
  timeout "$cap" "$@" 2>&1 | tee "$STATUS.$name"
  local rc=${PIPESTATUS[0]}
  local how="ok"
  [ "$rc" = 124 ] && how="stopped at the ${cap}s cap" || { [ "$rc" != 0 ] && how="failed (exit $rc)"; }
  [ "$how" != ok ] && FAILED=$((FAILED + 1))
  local last
  last=$(grep -E "[0-9]+ (passed|failed|skipped|error).* in [0-9.]+s" "$STATUS.$name" | tail -1 | tr -d '=')
  echo "| $name | $how | $((SECONDS - t0)) | ${last:-} |" >> "$STATUS"
}

step gpu-tests "${CAP_TESTS:-110}" $PY -m pytest -p no:cacheprovider "${TESTS[@]}"
step bench-train "${CAP_TRAIN:-120}" $PY benchmarks/bench_train.py "${DEV[@]}" --models 1,2 "${WRITE[@]}"
SEEDS=(); [ $SMOKE = 0 ] && SEEDS=(--repeats 2)  # 2 x (8 seeds x 60k images) per arm fits its cap
step bench-seeds "${CAP_SEEDS:-90}" $PY benchmarks/bench_seeds.py "${DEV[@]}" "${SEEDS[@]}" "${WRITE[@]}"
if [ -f benchmarks/bench_workers.py ]; then
  if [ $SMOKE = 1 ]; then W=(--smoke); else W=(--device cuda --write-results); fi
  step bench-workers "${CAP_WORKERS:-150}" $PY benchmarks/bench_workers.py "${W[@]}"
fi

echo "== summary"
cat "$STATUS"
if [ $SMOKE = 0 ]; then
  $PY - "$STATUS" <<'PY'
import sys, time
sys.path.insert(0, "benchmarks")
from common import machine, write_section
rows = open(sys.argv[1]).read().strip()
write_section("gpu-check", "## GPU check\n\n"
              f"Machine: {machine('cuda')}  \nCommand: `bash benchmarks/gpu_check.sh`, {time.strftime('%Y-%m-%d')}\n\n"
              "| step | how it ended | seconds | last pytest line |\n|---|---|---|---|\n" + rows)
PY
fi
rm -f "$STATUS" "$STATUS".*
exit $FAILED
