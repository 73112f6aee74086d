#!/usr/bin/env bash
# The GPU check, in one go: everything the first minutes on a GPU should run,
# inside one device call of at most 10 minutes on a fresh machine.
#
#   bash benchmarks/stage_gpu_data.sh            # here, once: CIFAR-10 into gpu_check_data/
#   bash benchmarks/gpu_check.sh [OUT_DIR]       # there; logs in OUT_DIR (default $OUT or ./gpu_check)
#
# With the device tool: run(command="bash benchmarks/gpu_check.sh",
# carry=["gpu_check_data"], timeout_s=600).
#
# Steps, each with its own time limit (seconds), the critical path about 480 s:
#
#   machine     20  the GPU, driver, CUDA, Python, NumPy, CuPy, PyTorch, and
#                   whether tinygnet finds the GPU usable (one kernel compiled);
#   tests_cuda 240  the GPU cases alone (pytest -m cuda, one process): every CUDA
#                   fast path against its reference, every op GPU against CPU,
#                   gradcheck on the GPU, a GoogLeNet step GPU vs CPU, the
#                   device-parametrised engine checks. CuPy's kernel cache starts
#                   empty, so this step also compiles, with NVRTC, every kernel the
#                   later steps use (its size is logged after the step);
#   tests_rest 200  the rest of the suite on 8 CPU workers, at the same time as
#   make_data  150  tests_cuda, and building CIFAR-10 from gpu_check_data/ (or
#                   shared/data, ../shared/data), also at the same time;
#   gpu_bench  100  a GoogLeNet training step (cifar, width 1, batch 128, float32)
#                   against PyTorch on the same GPU, alone on the machine;
#   demo       110  a short CIFAR-10 run on the GPU: 2 epochs on 10,000 images.
#
# A step that fails or runs out of time (exit 124) does not stop the others.
# GPU_CHECK_PYTEST_ARGS adds arguments to both pytest steps (e.g. "-k backend" to
# try the script's plumbing quickly on a machine without a GPU).
# The summary at the end (also OUT_DIR/summary.txt) is meant to be enough to read.
# OUT_DIR receives at most 8 files, as the device tool brings back.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-gpu_check}}"
mkdir -p "$OUT_DIR"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
CACHE="${CUPY_CACHE_DIR:-$HOME/.cupy/kernel_cache}"
PYTHON="${PYTHON:-python3}"
STARTED=$SECONDS

step() {   # step NAME SECONDS COMMAND...: run with a time limit, log to $LOG_DIR/NAME.log
    local name="$1" limit="$2"
    shift 2
    local start=$SECONDS
    echo "=== $name (limit ${limit}s, at ${start}s): $*"
    timeout --signal=INT --kill-after=10 "$limit" "$@" >"${LOG_DIR:-$OUT_DIR}/$name.log" 2>&1
    local code=$?
    echo "exit $code in $((SECONDS - start))s" >"$WORK/$name.status"
    echo "=== $name: exit $code in $((SECONDS - start))s"
}

kernels_cached() {
    find "$CACHE" -type f 2>/dev/null | wc -l
}

# 1. the machine ------------------------------------------------------------
step machine 20 bash -c '
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
        | sed "s/^/card: /"
    '"$PYTHON"' - <<EOF
import sys, numpy, cupy
print("software: python", sys.version.split()[0], "| numpy", numpy.__version__,
      "| cupy", cupy.__version__, "| CUDA runtime", cupy.cuda.runtime.runtimeGetVersion(),
      "| driver", cupy.cuda.runtime.driverGetVersion())
from tinygnet import backend
print("usable:", backend.gpu_problem() or "yes, a test kernel compiled and ran")
try:
    import torch
    print("torch:", torch.__version__, "| cuda", torch.version.cuda,
          "| cudnn", torch.backends.cudnn.version())
except Exception as error:
    print("torch: unavailable:", error)
EOF'
cat "$OUT_DIR/machine.log"
echo "kernels in CuPy's cache before the tests: $(kernels_cached)" | tee -a "$OUT_DIR/machine.log"

# 2. the tests, and the data set, at the same time ---------------------------
MAKE=""
for folder in gpu_check_data shared/data ../shared/data; do
    if [ -f "$folder/make_cifar10.py" ] && [ -f "$folder/cifar10-jpeg.tar.gz" ]; then
        MAKE="$folder/make_cifar10.py"
        break
    fi
done
if [ -n "$MAKE" ]; then
    LOG_DIR="$WORK" step make_data 150 "$PYTHON" "$MAKE" "$WORK/data" &
else
    echo "=== make_data: no make_cifar10.py with its tarball in gpu_check_data/, shared/data" \
         "or ../shared/data (bash benchmarks/stage_gpu_data.sh, then carry gpu_check_data)"
fi
# shellcheck disable=SC2086  # GPU_CHECK_PYTEST_ARGS: several words
step tests_rest 200 "$PYTHON" -m pytest -m "not cuda" -q -n 8 -p no:cacheprovider \
    ${GPU_CHECK_PYTEST_ARGS:-} &
# shellcheck disable=SC2086
step tests_cuda 240 "$PYTHON" -m pytest -m cuda -q -rs -p no:cacheprovider --durations=15 \
    ${GPU_CHECK_PYTEST_ARGS:-}
echo "kernels in CuPy's cache after tests_cuda: $(kernels_cached)" | tee -a "$OUT_DIR/tests_cuda.log"
wait

# 3. the benchmark, alone ---------------------------------------------------
step gpu_bench 100 "$PYTHON" benchmarks/gpu_bench.py --repeats 20 --warmup 3 \
    --out "$WORK/gpu_bench.md"
[ -f "$WORK/gpu_bench.md" ] && cp "$WORK/gpu_bench.md" "$OUT_DIR/gpu_bench.md"

# 4. the demo on CIFAR-10 ---------------------------------------------------
if [ -d "$WORK/data/cifar-10-batches-py" ]; then
    step demo 110 "$PYTHON" -m tinygnet.demo cifar --device cuda --epochs 2 \
        --train-images 10000 --test-images 2000 --data "$WORK/data" --no-download \
        --no-progress --out "$WORK/demo"
    [ -f "$WORK/demo/metrics.csv" ] && cp "$WORK/demo/metrics.csv" "$OUT_DIR/demo_metrics.csv"
else
    echo "=== demo: skipped, no data set (see make_data above)"
    echo "skipped: no data set" >"$WORK/demo.status"
fi

# 5. the summary ------------------------------------------------------------
status() { cat "$WORK/$1.status" 2>/dev/null || echo "not run"; }
last() { grep -E "$2" "$1" 2>/dev/null | tail -n 1; }
{
    echo "=== summary ($((SECONDS - STARTED)) s in all; exit status 124 = time limit)"
    grep -E "^(card|software|usable|torch):" "$OUT_DIR/machine.log"
    echo "machine:    $(status machine)"
    echo "tests_cuda: $(status tests_cuda): $(last "$OUT_DIR/tests_cuda.log" '[0-9]+ (passed|failed|error)')"
    echo "            $(last "$OUT_DIR/tests_cuda.log" 'kernels in CuPy')"
    echo "tests_rest: $(status tests_rest): $(last "$OUT_DIR/tests_rest.log" '[0-9]+ (passed|failed|error)')"
    echo "make_data:  $(status make_data)"
    echo "gpu_bench:  $(status gpu_bench)"
    grep -E "^\| (tinygnet|torch) |same logits|throughput ratio" "$OUT_DIR/gpu_bench.md" 2>/dev/null \
        | sed 's/^/            /'
    echo "demo:       $(status demo): $(last "$OUT_DIR/demo.log" 'final test accuracy')"
    echo "log tails of the failed steps:"
    for name in machine tests_cuda tests_rest gpu_bench demo; do
        if ! grep -q "^exit 0 " "$WORK/$name.status" 2>/dev/null \
                && [ -f "$OUT_DIR/$name.log" ]; then
            echo "--- $name"
            tail -n 8 "$OUT_DIR/$name.log"
        fi
    done
    [ -f "$WORK/make_data.log" ] && ! grep -q "^exit 0 " "$WORK/make_data.status" \
        && echo "--- make_data" && tail -n 8 "$WORK/make_data.log"
} | tee "$OUT_DIR/summary.txt"
