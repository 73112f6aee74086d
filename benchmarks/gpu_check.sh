#!/usr/bin/env bash
# The GPU check, in one go (at most 8 minutes: the step limits add up to 480 s):
#
#   1. the machine: GPU, CUDA, Python, NumPy, CuPy, PyTorch;
#   2. the tests that run on the GPU (pytest -m cuda: every CUDA fast path
#      against its reference op on the GPU, tests/kernels/test_fast_paths.py;
#      every op GPU against CPU, gradcheck on the GPU, one GoogLeNet training
#      step GPU vs CPU, tests/cuda/; the whole network with the fast paths on
#      and off; the device-parametrised engine checks), then the rest of the
#      suite;
#   3. benchmarks/gpu_bench.py: a training step of GoogLeNet (cifar, width 1,
#      batch 128, float32) against PyTorch on the same GPU;
#   4. a short CIFAR-10 demo run on the GPU (2 epochs on 10,000 images), with
#      data built from shared/data/make_cifar10.py in a temporary folder.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]      # logs go to OUT_DIR (default $OUT or ./gpu_check)
#
# Each step has its own time limit and the script goes on after a failure;
# the summary at the end lists each step's exit status (124 = ran out of time).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-gpu_check}}"
mkdir -p "$OUT_DIR"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export PYTHONUNBUFFERED=1
declare -A STATUS

step() {   # step NAME SECONDS COMMAND...: run with a time limit, log to OUT_DIR/NAME.log
    local name="$1" limit="$2"
    shift 2
    echo "=== $name (limit ${limit}s): $*"
    local start=$SECONDS
    timeout --signal=INT --kill-after=15 "$limit" "$@" 2>&1 | tee "$OUT_DIR/$name.log"
    STATUS[$name]="${PIPESTATUS[0]} in $((SECONDS - start))s"
    echo "=== $name: exit ${STATUS[$name]}"
}

# 1. the machine ------------------------------------------------------------
step machine 30 bash -c '
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python - <<EOF
import sys, numpy, cupy
print("python", sys.version.split()[0], "| numpy", numpy.__version__, "| cupy", cupy.__version__,
      "| CUDA runtime", cupy.cuda.runtime.runtimeGetVersion())
import tinygnet
print("tinygnet sees a GPU:", tinygnet.is_cuda_available())
try:
    import torch
    print("torch", torch.__version__, "| cuda", torch.version.cuda, "| cudnn", torch.backends.cudnn.version())
except Exception as error:
    print("torch unavailable:", error)
EOF'

# 2. the tests --------------------------------------------------------------
# The GPU cases first, in one process (CuPy fills its kernel cache, which the
# later steps reuse), then everything else in parallel on the CPU cores.
step tests_cuda 150 python -m pytest -m cuda -q -rs -p no:cacheprovider --durations=10
step tests_rest 100 python -m pytest -m "not cuda" -q -n 8 -p no:cacheprovider

# 3. the benchmark ----------------------------------------------------------
step gpu_bench 75 python benchmarks/gpu_bench.py --repeats 20 --warmup 3 \
    --out "$OUT_DIR/gpu_bench.md"

# 4. the demo on CIFAR-10 ---------------------------------------------------
MAKE=""
for candidate in shared/data/make_cifar10.py ../shared/data/make_cifar10.py; do
    [ -f "$candidate" ] && MAKE="$candidate" && break
done
if [ -n "$MAKE" ]; then
    step make_data 40 python "$MAKE" "$WORK/data"
    step demo 85 python -m tinygnet.demo cifar --device cuda --epochs 2 \
        --train-images 10000 --test-images 2000 --data "$WORK/data" --no-download \
        --no-progress --out "$OUT_DIR/demo"
else
    echo "=== demo: skipped, shared/data/make_cifar10.py not found"
    STATUS[demo]="skipped"
fi

echo
echo "=== summary (exit status per step; 124 = time limit)"
for name in machine tests_cuda tests_rest gpu_bench make_data demo; do
    [ -n "${STATUS[$name]:-}" ] && echo "$name: ${STATUS[$name]}"
done
