#!/usr/bin/env bash
# Builds warden-runtime with candle's CUDA backend (feature `candle-cuda`), for GPU machines:
# the worker binary and the prebuilt `runtime/tests/candle.rs`, under target/candle-cuda/.
#
# No CUDA toolkit is needed on this machine: CUDA 13.0's compiler and headers come from their
# PyPI wheels (pinned below) into .cache/cuda-13.0/; nvcc compiles candle's kernels to PTX for
# the GPU generation CUDA_COMPUTE_CAP names (default 90: H100, H200); the CUDA libraries that
# candle links (driver, cuBLAS, cuBLASLt, cuRAND, NVRTC) are linked against stubs made here
# from cudarc's own bindings (the CUDA runtime, which candle's MoE kernels call, against the
# wheel's real one), and resolved at run time against the GPU machine's libraries (a CUDA 13
# driver and libraries: libcuda.so.1, libcudart.so.13, libcublas.so.13, libcublasLt.so.13,
# libcurand.so.10, libnvrtc.so.13). The binaries do not start where those are missing.
#
#   hw-tests/candle-cuda.sh          # prints the two binaries' paths on its last lines
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cuda=$root/.cache/cuda-13.0
top=$cuda/root/nvidia/cu13
say() { echo "candle-cuda: $*" >&2; }
# The Python environment (pip, for the wheels) and the rest of what the build needs.
bash scripts/setup.sh --test >&2

if [ ! -x "$top/bin/nvcc" ] || [ ! -d "$top/nvvm" ]; then
    say "fetching CUDA 13.0's compiler and headers from PyPI"
    mkdir -p "$cuda/wheels" "$cuda/root"
    .venv/bin/pip download -q --no-deps --only-binary=:all: -d "$cuda/wheels" \
        nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
        nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
    for w in "$cuda"/wheels/*.whl; do
        .venv/bin/python -m zipfile -e "$w" "$cuda/root"
    done
    chmod +x "$top"/bin/* "$top"/nvvm/bin/*
fi

# Link-time stubs for the libraries candle links: every function of cudarc's bindings of
# each, as an empty symbol, under the real library's soname.
cudarc=$(cargo metadata --locked --format-version 1 2>/dev/null | .venv/bin/python -c '
import json, sys
m = json.load(sys.stdin)
for p in m["packages"]:
    if p["name"] == "cudarc" and p["version"].startswith("0.19."):
        print(p["manifest_path"].rsplit("/", 1)[0]); break')
[ -n "$cudarc" ] || { say "cudarc 0.19 is not in Cargo.lock"; exit 1; }
stubs=$top/lib/stubs
mkdir -p "$stubs"
while read -r module soname file; do
    grep -oP 'pub unsafe fn \K\w+' "$cudarc/src/$module/sys/mod.rs" | sort -u |
        sed 's/.*/void &(void) {}/' >"$stubs/$module.c"
    gcc -shared -fPIC -Wl,-soname,"$soname" -o "$stubs/$file" "$stubs/$module.c"
done <<'LIBS'
driver libcuda.so.1 libcuda.so
nvrtc libnvrtc.so.13 libnvrtc.so
curand libcurand.so.10 libcurand.so
cublas libcublas.so.13 libcublas.so
cublaslt libcublasLt.so.13 libcublasLt.so
LIBS
# candle's MoE kernels come as a static library that calls the CUDA runtime: link the real one
# (resolved at run time as libcudart.so.13).
ln -sf ../libcudart.so.13 "$stubs/libcudart.so"

# cudarc looks for the libraries under CUDA_HOME, bindgen_cuda for the headers under CUDA_ROOT.
export CUDA_HOME=$top CUDA_ROOT=$top PATH=$top/bin:$PATH CUDARC_CUDA_VERSION=13000
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CARGO_TARGET_DIR=$root/target/candle-cuda
say "building (kernels for compute capability $CUDA_COMPUTE_CAP)"
features=(-p warden-runtime --no-default-features --features candle-cuda)
cargo build --release --locked "${features[@]}" --bins >&2
test_bin=$(cargo test --release --locked "${features[@]}" --test candle --no-run \
    --message-format=json 2>/dev/null | python3 hw-tests/executables.py |
    grep '/deps/candle-' | head -1)
[ -n "$test_bin" ] || { say "no candle test binary"; exit 1; }
echo "$CARGO_TARGET_DIR/release/warden-runtime"
echo "$test_bin"
