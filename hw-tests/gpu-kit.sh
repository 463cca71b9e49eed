#!/usr/bin/env bash
# The GPU kit: everything `hw-tests/gpu.sh` needs on a GPU machine that has neither a Rust
# toolchain nor a network (the lent device machine), built here and carried over in parts.
#
#   hw-tests/gpu-kit.sh build     # here: prebuilt binaries (also candle's CUDA build,
#                                 # hw-tests/candle-cuda.sh), onnxruntime-gpu's libraries, the
#                                 # benchmark's models; packed and split into parts of at most
#                                 # 60 MiB under .cache/gpu-kit/parts/ (ignored by git)
#   hw-tests/gpu-kit.sh stash     # there, once per part carried: moves the parts that arrived
#                                 # with this call to /tmp/warden-gpu-kit/parts
#   hw-tests/gpu-kit.sh run       # there, after the last part: checks the whole against its
#                                 # SHA-256, unpacks it, finds the CUDA libraries and runs
#                                 # hw-tests/gpu.sh with every prebuilt piece
#   hw-tests/gpu-kit.sh selftest  # here: unpacks the parts as `run` would, into a temporary
#                                 # directory, and runs the prebuilt device test, the `warden`
#                                 # binary and the system-call census (the kit's strace) from
#                                 # there (on a machine without a GPU the test proves the
#                                 # refusal path, and that the kit works when moved)
#
# onnxruntime-gpu's wheel (version = scripts/setup.sh's ORT_VERSION) links CUDA 13
# (libcublas.so.13, libcudart.so.13, libcurand.so.10; cuDNN 9 is opened when needed). The
# machine must have those; `run` names what it could not find.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
kit=.cache/gpu-kit
parts_here=$kit/parts
stash=/tmp/warden-gpu-kit
say() { echo "gpu-kit: $*"; }

# The executables cargo reports for a `--no-run` build, one per line.
executables() { python3 hw-tests/executables.py; }

build() {
    bash scripts/setup.sh --test
    # shellcheck source=/dev/null
    source .cache/env
    version=$(sed -n 's/^ORT_VERSION=//p' scripts/setup.sh)
    stage=$kit/stage
    rm -rf "$stage" "$parts_here"
    mkdir -p "$stage/bin" "$stage/ort" "$stage/models" "$parts_here" "$kit/wheel"

    if ! ls "$kit/wheel"/onnxruntime_gpu-"$version"-*.whl >/dev/null 2>&1; then
        say "downloading onnxruntime-gpu $version (about 250 MB)"
        .venv/bin/pip download -q "onnxruntime-gpu==$version" --no-deps --only-binary=:all: \
            --python-version 3.11 -d "$kit/wheel"
    fi
    wheel=$(ls "$kit/wheel"/onnxruntime_gpu-"$version"-*.whl)
    .venv/bin/python - "$wheel" "$stage/ort" "$version" <<'EOF'
import sys, zipfile
wheel, out, version = sys.argv[1:]
wanted = {f"libonnxruntime.so.{version}", "libonnxruntime_providers_shared.so",
          "libonnxruntime_providers_cuda.so", "libonnxruntime_providers_tensorrt.so"}
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        name = info.filename.rsplit("/", 1)[-1]
        if name in wanted:
            with z.open(info) as src, open(f"{out}/{name}", "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
            wanted.discard(name)
if wanted:
    sys.exit(f"not in the wheel: {sorted(wanted)}")
EOF

    say "building the binaries (release)"
    cargo build --release --locked -p warden-runtime --bins -p warden-agent --bin warden
    cp target/release/warden target/release/warden-runtime "$stage/bin/"
    cargo test --release --locked -p warden-runtime --test accel --test device --no-run \
        --message-format=json 2>/dev/null | executables >"$kit/tests.txt"
    cargo bench --locked -p warden-runtime --bench engines --no-run \
        --message-format=json 2>/dev/null | executables >"$kit/benches.txt"
    for name in accel device; do
        exe=$(grep "/deps/$name-" "$kit/tests.txt" | head -1)
        [ -n "$exe" ] || { say "no $name test binary"; exit 1; }
        cp "$exe" "$stage/bin/test-$name"
    done
    exe=$(grep "/deps/engines-" "$kit/benches.txt" | head -1)
    [ -n "$exe" ] || { say "no engines bench binary"; exit 1; }
    cp "$exe" "$stage/bin/bench-engines"
    say "building candle's CUDA backend (hw-tests/candle-cuda.sh)"
    mapfile -t candle_cuda < <(bash hw-tests/candle-cuda.sh)
    cp "${candle_cuda[0]}" "$stage/bin/warden-runtime-candle-cuda"
    cp "${candle_cuda[1]}" "$stage/bin/test-candle-cuda"
    strip "$stage"/bin/*
    # strace for the GPU worker's system-call census (hw-tests/worker-census.sh): the device
    # machines have none. Its libraries beside it, started through the loader with
    # --library-path, so that the traced worker's environment is not changed.
    mkdir -p "$stage/strace"
    cp "$(command -v strace)" "$stage/strace/"
    ldd "$(command -v strace)" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' |
        grep -v -E '/(libc|ld-linux[^/]*)\.so' | xargs -r -I{} cp -L {} "$stage/strace/"

    say "writing the benchmark's models"
    .venv/bin/python runtime/tests/python/bert_reference.py "$stage/models/small" >/dev/null
    .venv/bin/python runtime/tests/python/bert_reference.py "$stage/models/mini" \
        --layers 4 --hidden 256 >/dev/null

    git rev-parse HEAD >"$stage/commit"
    tar -C "$stage" -czf "$kit/kit.tar.gz" .
    (cd "$kit" && sha256sum kit.tar.gz >parts/kit.sha256)
    split -b 60M -d -a 2 "$kit/kit.tar.gz" "$parts_here/kit.tar.gz.part"
    rm -f "$kit/kit.tar.gz"
    say "built from $(cat "$stage/commit"); the parts, each for one device call:"
    ls -l "$parts_here"
    n=$(ls "$parts_here"/kit.tar.gz.part* | wc -l)
    say "carry kit.sha256 with the first part; the calls (back to back, the machine goes back"
    say "after 30 s idle):"
    i=0
    for part in "$parts_here"/kit.tar.gz.part*; do
        i=$((i + 1))
        extra=""
        [ "$i" = 1 ] && extra=", \"$parts_here/kit.sha256\""
        cmd="bash hw-tests/gpu-kit.sh stash"
        [ "$i" = "$n" ] && cmd="bash hw-tests/gpu-kit.sh stash && bash hw-tests/gpu-kit.sh run"
        echo "  run(command=\"$cmd\", carry=[\"$part\"$extra])"
    done
}

stash_parts() {
    mkdir -p "$stash/parts"
    moved=0
    for f in "$parts_here"/kit.tar.gz.part* "$parts_here"/kit.sha256; do
        [ -e "$f" ] || continue
        mv -f "$f" "$stash/parts/"
        moved=$((moved + 1))
    done
    say "stashed $moved file(s); $stash/parts now holds:"
    ls -l "$stash/parts"
}

# Checks and unpacks the parts in $1 into $2.
unpack() {
    local from=$1 into=$2
    [ -f "$from/kit.sha256" ] || { say "no kit.sha256 in $from"; exit 1; }
    cat "$from"/kit.tar.gz.part* >"$into/kit.tar.gz"
    (cd "$into" && sha256sum -c --quiet "$from/kit.sha256") ||
        { say "the kit does not match its SHA-256 (a part missing or damaged)"; exit 1; }
    mkdir -p "$into/kit"
    tar -C "$into/kit" -xzf "$into/kit.tar.gz"
    rm -f "$into/kit.tar.gz"
    say "unpacked the kit built from $(cat "$into/kit/commit")"
}

# The command that starts the strace of the kit unpacked at $1, through the dynamic loader
# with the kit's libraries (the traced worker's environment stays as it is).
kit_strace() {
    local l
    for l in /lib64/ld-linux-x86-64.so.2 /lib/ld-linux-aarch64.so.1; do
        [ -x "$l" ] && { echo "$l --library-path $1/strace $1/strace/strace"; return; }
    done
    echo "gpu-kit: no dynamic loader found" >&2
    return 1
}

# Directories holding the CUDA libraries the GPU provider needs, colon-separated.
cuda_dirs() {
    local dirs=() want found
    for want in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libcufft.so.12 libcudnn.so.9; do
        found=$( (ldconfig -p 2>/dev/null | awk -v w="$want" '$1 == w { print $NF; exit }') || true)
        if [ -z "$found" ]; then
            found=$(find /usr/local/cuda* /usr/lib/x86_64-linux-gnu /usr/local/lib /opt \
                -name "$want" 2>/dev/null | head -1 || true)
        fi
        if [ -n "$found" ]; then
            dirs+=("$(dirname "$(readlink -f "$found")")")
        else
            echo "gpu-kit: not found on this machine: $want" >&2
        fi
    done
    printf '%s\n' "${dirs[@]}" | awk 'NF && !seen[$0]++' | paste -sd: -
}

run_kit() {
    local work
    work=$(mktemp -d /tmp/warden-gpu-run.XXXX)
    unpack "$stash/parts" "$work"
    local k=$work/kit version
    version=$(ls "$k/ort" | sed -n 's/^libonnxruntime\.so\.//p')
    export WARDEN_REPO_ROOT=$root
    export WARDEN_RUNTIME_BIN=$k/bin/warden-runtime
    export WARDEN_ACCEL_TEST_BIN=$k/bin/test-accel
    export WARDEN_DEVICE_TEST_BIN=$k/bin/test-device
    export WARDEN_ENGINES_BENCH_BIN=$k/bin/bench-engines
    export WARDEN_BENCH_MODELS=$k/models
    export WARDEN_BIN=$k/bin/warden
    export WARDEN_CANDLE_CUDA_TEST_BIN=$k/bin/test-candle-cuda
    export WARDEN_CANDLE_CUDA_RUNTIME_BIN=$k/bin/warden-runtime-candle-cuda
    export WARDEN_CANDLE_TEST_MODEL=$k/models/small
    export WARDEN_ORT_GPU_LIB=$k/ort/libonnxruntime.so.$version
    WARDEN_STRACE=$(kit_strace "$k")
    export WARDEN_STRACE
    WARDEN_CUDA_LIBRARY_DIRS=$(cuda_dirs)
    export WARDEN_CUDA_LIBRARY_DIRS
    say "CUDA library directories: ${WARDEN_CUDA_LIBRARY_DIRS:-none found}"
    bash hw-tests/gpu.sh
}

selftest() {
    # shellcheck source=/dev/null
    source .cache/env
    local work
    work=$(mktemp -d)
    trap 'rm -rf "$work"' RETURN
    mkdir -p "$work/parts"
    cp "$parts_here"/kit.tar.gz.part* "$parts_here"/kit.sha256 "$work/parts/"
    unpack "$work/parts" "$work"
    local k=$work/kit version
    version=$(ls "$k/ort" | sed -n 's/^libonnxruntime\.so\.//p')
    # From the unpacked kit, with a build directory that is not this one's.
    WARDEN_REPO_ROOT=$root WARDEN_RUNTIME_BIN=$k/bin/warden-runtime \
        ORT_DYLIB_PATH=$k/ort/libonnxruntime.so.$version \
        "$k/bin/test-device" --test-threads 1
    "$k/bin/warden" --help >/dev/null
    # The system-call census with the kit's own strace, as `run` starts it.
    WARDEN_REPO_ROOT=$root WARDEN_RUNTIME_BIN=$k/bin/warden-runtime \
        WARDEN_DEVICE_TEST_BIN=$k/bin/test-device \
        ORT_DYLIB_PATH=$k/ort/libonnxruntime.so.$version \
        WARDEN_STRACE=$(kit_strace "$k") \
        bash hw-tests/worker-census.sh
    say "selftest passed: the prebuilt device test and the census ran from the unpacked kit"
}

case "${1:-}" in
build) build ;;
stash) stash_parts ;;
run) run_kit ;;
selftest) selftest ;;
*)
    echo "usage: hw-tests/gpu-kit.sh build|stash|run|selftest" >&2
    exit 2
    ;;
esac
