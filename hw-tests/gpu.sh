#!/usr/bin/env bash
# The GPU suite: accelerator discovery (cudarc, CUDA driver API) on the real device.
# Skips, saying why, on a machine without an NVIDIA GPU; on one with a GPU, finding none fails.
#   hw-tests/gpu.sh                      # builds and runs through cargo
#   WARDEN_ACCEL_TEST_BIN=path gpu.sh    # runs a prebuilt `runtime/tests/accel.rs` binary
#                                        # (for a GPU machine without a toolchain)
#   WARDEN_BIN=path/to/warden gpu.sh     # also serves the demo (its sandboxed worker beside
#                                        # `warden`) and checks that `warden status` lists the GPUs
#   WARDEN_ORT_GPU_LIB=…/libonnxruntime.so.1.31.1  # onnxruntime-gpu's library: also runs
#   WARDEN_CUDA_LIBRARY_DIRS=dir:dir               # runtime/tests/device.rs and the engines
#                                                  # bench on the GPU (see README.md)
#   WARDEN_CANDLE_CUDA_TEST_BIN=path              # runtime/tests/candle.rs built with candle's
#                                                  # CUDA backend (hw-tests/candle-cuda.sh): candle
#                                                  # on cuda:0 against the Python reference
#   WARDEN_STRACE=cmd                              # strace for the GPU worker's system-call
#                                                  # census (hw-tests/worker-census.sh; the kit
#                                                  # carries one), run last
#   WARDEN_DEVICE_TEST_BIN, WARDEN_ENGINES_BENCH_BIN  # prebuilt device test and engines bench
#                                                  # (with WARDEN_RUNTIME_BIN, WARDEN_REPO_ROOT
#                                                  # and WARDEN_BENCH_MODELS: hw-tests/gpu-kit.sh
#                                                  # sets them all)
set -euo pipefail
# ONNX Runtime's telemetry off, as everywhere (the engine refuses to load the library otherwise).
export ORT_DISABLE_TELEMETRY=1
if [ ! -e /dev/nvidiactl ] && ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "SKIP gpu suite: no NVIDIA GPU here (no /dev/nvidiactl, no nvidia-smi)"
    exit 0
fi
command -v nvidia-smi >/dev/null 2>&1 &&
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
# candle on CUDA needs a `candle-cuda` build (hw-tests/candle-cuda.sh), which links the CUDA
# libraries: the loader must find them (WARDEN_CUDA_LIBRARY_DIRS).
if [ -n "${WARDEN_CANDLE_CUDA_TEST_BIN:-}" ]; then
    # Its sandboxed-worker test starts the candle-cuda worker (WARDEN_CANDLE_CUDA_RUNTIME_BIN).
    LD_LIBRARY_PATH=${WARDEN_CUDA_LIBRARY_DIRS:-}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} \
        WARDEN_RUNTIME_BIN=${WARDEN_CANDLE_CUDA_RUNTIME_BIN:-${WARDEN_RUNTIME_BIN:-}} \
        "$WARDEN_CANDLE_CUDA_TEST_BIN" --nocapture --test-threads 1 a_gpu_request_runs_there
else
    echo "SKIP candle cuda: WARDEN_CANDLE_CUDA_TEST_BIN names no candle-cuda build of runtime/tests/candle.rs (hw-tests/candle-cuda.sh builds one)"
fi
export WARDEN_EXPECT_GPU=1
if [ -n "${WARDEN_ACCEL_TEST_BIN:-}" ]; then
    "$WARDEN_ACCEL_TEST_BIN" --nocapture --test-threads 1
else
    cd "$(dirname "$0")/.."
    cargo test -p warden-runtime --test accel -- --nocapture --test-threads 1
fi
if [ -n "${WARDEN_ORT_GPU_LIB:-}" ]; then
    (
        export ORT_DYLIB_PATH=$WARDEN_ORT_GPU_LIB WARDEN_CUDA_LIBRARY_DIRS=${WARDEN_CUDA_LIBRARY_DIRS:-}
        cd "$(dirname "$0")/.."
        if [ -n "${WARDEN_DEVICE_TEST_BIN:-}" ]; then
            "$WARDEN_DEVICE_TEST_BIN" --nocapture --test-threads 1
        else
            cargo test -p warden-runtime --test device -- --nocapture --test-threads 1
        fi
        if [ -n "${WARDEN_ENGINES_BENCH_BIN:-}" ]; then
            WARDEN_BENCH_GPU=cuda:0 "$WARDEN_ENGINES_BENCH_BIN" --bench
        else
            WARDEN_BENCH_GPU=cuda:0 cargo bench -p warden-runtime --bench engines
        fi
    )
else
    echo "SKIP onnxruntime cuda: WARDEN_ORT_GPU_LIB does not name an onnxruntime-gpu library"
fi
if [ -n "${WARDEN_BIN:-}" ]; then
    demo=$(mktemp -d)
    "$WARDEN_BIN" demo --dir "$demo" --port 0 >"$demo/demo.log" 2>&1 &
    pid=$!
    trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$demo"' EXIT
    for _ in $(seq 1 120); do [ -f "$demo/state/status.json" ] && break; sleep 0.5; done
    out=$("$WARDEN_BIN" status --config "$demo/warden.toml" 2>&1) || { echo "$out"; echo "FAIL: warden status"; exit 1; }
    echo "$out"
    echo "$out" | grep -q '^  gpu 0: ' || { echo "FAIL: warden status lists no GPU"; exit 1; }
    echo "ok: warden status lists the GPUs beside the served demo model"
fi
# Last: the system calls of the sandboxed cuda:0 worker under the device profile, which no GPU
# run has measured yet. A refused call fails the suite, by name.
if [ -n "${WARDEN_ORT_GPU_LIB:-}" ]; then
    ORT_DYLIB_PATH=$WARDEN_ORT_GPU_LIB WARDEN_CUDA_LIBRARY_DIRS=${WARDEN_CUDA_LIBRARY_DIRS:-} \
        bash "$(dirname "$0")/worker-census.sh"
fi
