#!/usr/bin/env bash
# One GPU session's checks, in one command: every kernel's GPU tests, then the benchmarks.
#
#   OUT=/tmp/out TESTS_S=130 BENCH_S=380 bash benchmarks/device_check.sh
#   FULL_TESTS="tests/test_kernel_softmax.py" ONLY=softmax,rmsnorm bash benchmarks/device_check.sh
#
# Runs from the repository root on a machine with its own CUDA torch and Triton (a lent GPU
# has no network: llmlab is used from the source tree, nothing is installed). Writes under
# $OUT: env.txt (versions, GPU), tests.log and gpu_tests.xml (pytest -m gpu), bench.log,
# results.tgz (one JSON and one PNG per benchmark, in <device-slug>/). Each phase has its own
# time limit, so a slow phase cannot starve the next; what a phase wrote stays.
set -u
OUT=${OUT:-/tmp/device_check}
TESTS_S=${TESTS_S:-130}
BENCH_S=${BENCH_S:-380}
PY=${PY:-python3}
mkdir -p "$OUT" /tmp/device_results
export PYTHONPATH="$PWD/utils${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

{
  echo "commit: ${LLMLAB_COMMIT:-unknown}"
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  $PY - <<'EOF'
import platform, torch, triton
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "triton", triton.__version__)
print("device", torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0),
      torch.cuda.get_device_properties(0).multi_processor_count, "SMs")
EOF
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# Correctness: one configuration per kernel (LLMLAB_AUTOTUNE=first); the benchmarks tune fully.
echo "== pytest -m gpu (limit ${TESTS_S} s)"
LLMLAB_AUTOTUNE=first timeout -k 5 "$TESTS_S" $PY -m pytest -m gpu tests/test_kernel_*.py \
  -n 8 -p no:cacheprovider --timeout 100 -q -rfE --junitxml "$OUT/gpu_tests.xml" \
  > "$OUT/tests.log" 2>&1
echo "pytest exit: $?"
tail -n 40 "$OUT/tests.log"

# Kernels whose correctness depends on the configuration tuning picks (rows per program) or
# on tuning itself (in-place writes restored between trials): again, every config timed.
if [ -n "${FULL_TESTS:-}" ]; then
  echo "== pytest -m gpu, full autotuning: $FULL_TESTS (limit ${FULL_TESTS_S:-60} s)"
  LLMLAB_AUTOTUNE=full timeout -k 5 "${FULL_TESTS_S:-60}" $PY -m pytest -m gpu $FULL_TESTS \
    -n 8 -p no:cacheprovider --timeout 60 -q -rfE --junitxml "$OUT/gpu_tests_full.xml" \
    > "$OUT/tests_full.log" 2>&1
  echo "pytest exit: $?"
  tail -n 25 "$OUT/tests_full.log"
fi

echo "== benchmarks (budget ${BENCH_S} s)"
TRITON_PRINT_AUTOTUNING=1 timeout -k 5 $((BENCH_S + 60)) $PY benchmarks/device_check.py \
  --out /tmp/device_results --budget-s "$BENCH_S" ${ONLY:+--only "$ONLY"} > "$OUT/bench.log" 2>&1
echo "bench exit: $?"
tar czf "$OUT/results.tgz" -C /tmp/device_results .
grep -E "^\[|^ *[0-9]+ |^==|wrote|budget|err|Error" "$OUT/bench.log" | tail -n 120
