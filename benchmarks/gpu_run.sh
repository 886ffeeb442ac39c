#!/usr/bin/env bash
# The GPU check of issue 6 in one call, for a lent GPU machine whose python3
# already has jax (CUDA), numpy, optax, chex, scikit-learn and pytest:
#   1. the environment (GPU, JAX and its devices);
#   2. the chunk-budget sweep (bench_chunks.py) on 1,000,000 x 64, K=64 and
#      workload 3;
#   3. bench_em.py on the gpu workload and workloads 2 and 3 (scikit-learn on
#      the machine's CPUs), fixed iterations;
#   4. the numerical test files on the GPU;
#   5. vmapped restarts' peak memory with and without the block bound
#      (vmapped_memory.py, each in its own process under a memory fraction).
# Logs and results go to $OUT (default /tmp/gpu_out). Each step has its own
# time limit, so one slow step cannot take the others' time; STEPS picks
# steps (default "chunks bench tests memory").
#
#   OUT=/tmp/o bash benchmarks/gpu_run.sh [quick]
set -u
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false
PY=${PY:-python3}
Q=""
if [ "${1:-}" = quick ]; then Q=--quick; fi
STEPS=${STEPS:-"chunks bench tests memory"}
step() { case " $STEPS " in *" $1 "*) return 0;; *) return 1;; esac; }

{
  date -u; nvidia-smi -L 2>&1; nvidia-smi --query-gpu=clocks.sm,clocks.mem,temperature.gpu,utilization.gpu --format=csv 2>&1
  $PY -c "import jax, jaxlib, numpy, optax, chex, sklearn; print('jax', jax.__version__, 'numpy', numpy.__version__, 'sklearn', sklearn.__version__, jax.devices())"
} 2>&1 | tee "$OUT/env.log"

step chunks && timeout "${T_CHUNKS:-130}" $PY benchmarks/bench_chunks.py $Q \
  --workloads gpu,3 --budgets-mib "${BUDGETS:-8,64,256,1024}" \
  --out "$OUT/chunks.json" 2>&1 | tee "$OUT/chunks.log"

step bench && timeout "${T_BENCH:-200}" $PY benchmarks/bench_em.py $Q \
  --workloads "${BENCH_WL:-gpu,2,3}" --no-converge --libs "${BENCH_LIBS-sklearn}" \
  --out "$OUT" --tag gpu 2>&1 | tee "$OUT/bench.log"

# Failures are written to $OUT/failures.log as they happen (the time limit
# can stop pytest before its summary). TESTS=all runs the whole suite.
TESTS=${TESTS:-"kernels em sklearn_agreement numerics hard_cases implicit fit"}
step tests && PYTHONPATH=$PWD/benchmarks:$PYTHONPATH GMMJAX_TEST_CPU_FLAGS=0 OUT=$OUT \
  timeout "${T_TESTS:-130}" $PY -m pytest -q -n "${WORKERS:-8}" \
  -p no:cacheprovider -p _failures_plugin --maxfail=30 --durations=10 \
  $(if [ "$TESTS" = all ]; then echo tests; else for t in $TESTS; do echo "tests/test_$t.py"; done; fi) 2>&1 \
  | grep -v "PytestBenchmarkWarning\|warner(" | tee "$OUT/tests.log"
if step memory; then
  for flag in "" --unbounded; do
    XLA_PYTHON_CLIENT_MEM_FRACTION=${MEM_FRACTION:-0.12} \
      timeout "${T_MEMORY:-80}" $PY benchmarks/vmapped_memory.py $flag \
      --n-init "${MEM_N_INIT:-32}" 2>&1 | grep -v "^ \|Traceback" | tail -3
  done 2>&1 | tee "$OUT/memory.log"
fi
echo "gpu_run done $(date -u)"
