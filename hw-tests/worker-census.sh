#!/usr/bin/env bash
# The system-call census (hw-tests/syscall_census.py) of the sandboxed workers started by
# runtime/tests/device.rs's sandboxed-worker test. With onnxruntime-gpu's library on a GPU
# machine (hw-tests/gpu.sh) that is the cuda:0 worker under the device profile, whose device
# calls and library list have never been measured; elsewhere, the CPU workers of the refusal
# and fallback paths.
#   ORT_DYLIB_PATH          the ONNX Runtime library the test loads (as for the test itself)
#   WARDEN_DEVICE_TEST_BIN  a prebuilt device test (else cargo builds and runs it)
#   WARDEN_RUNTIME_BIN      the worker binary to trace (else cargo's debug build)
#   WARDEN_STRACE           the strace command (else `strace` on PATH; the GPU kit carries one)
#   OUT                     if set, the traces are copied there (the device tool brings it back)
# One report per traced worker. Exits 1 when a worker made a call its filter refuses, 0 when
# none did; without strace it skips, saying so.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export ORT_DISABLE_TELEMETRY=1
strace_cmd=${WARDEN_STRACE:-$(command -v strace || true)}
if [ -z "$strace_cmd" ]; then
    echo "SKIP syscall census: no strace (none on PATH, WARDEN_STRACE unset)"
    exit 0
fi
python=$(command -v python3 || true)
real=${WARDEN_RUNTIME_BIN:-}
if [ -z "$real" ]; then
    cargo build --locked -q -p warden-runtime --bin warden-runtime
    real=$root/target/debug/warden-runtime
fi
work=$(mktemp -d /tmp/warden-census.XXXX)
trap 'rm -rf "$work"' EXIT
# One trace per worker started: $$ is the wrapper's pid, which strace then becomes.
cat >"$work/traced-worker" <<EOF
#!/bin/sh
exec $strace_cmd -f --decode-pids=pidns -qq -o "$work/trace.\$\$" "$real" "\$@"
EOF
chmod +x "$work/traced-worker"
test_name=the_sandboxed_worker_serves_on_the_gpu_or_refuses_or_falls_back
if [ -n "${WARDEN_DEVICE_TEST_BIN:-}" ]; then
    WARDEN_RUNTIME_BIN=$work/traced-worker "$WARDEN_DEVICE_TEST_BIN" --exact "$test_name" \
        --test-threads 1 >"$work/test.log" 2>&1 || { cat "$work/test.log"; exit 1; }
else
    WARDEN_RUNTIME_BIN=$work/traced-worker cargo test --locked -q -p warden-runtime \
        --test device -- --exact "$test_name" >"$work/test.log" 2>&1 ||
        { cat "$work/test.log"; exit 1; }
fi
device=()
[ -e /dev/nvidiactl ] && device=(--device)
traces=("$work"/trace.*)
[ -e "${traces[0]}" ] || { echo "FAIL syscall census: the test started no worker"; exit 1; }
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT/census"
    for t in "${traces[@]}"; do gzip -c "$t" >"$OUT/census/$(basename "$t").gz"; done
    echo "syscall census: traces in \$OUT/census"
fi
if [ -z "$python" ]; then
    echo "SKIP syscall census report: no python3 here (run hw-tests/syscall_census.py on the traces)"
    exit 0
fi
status=0
for t in "${traces[@]}"; do
    echo "== syscall census of worker $(basename "$t")${device:+ (device profile)}"
    "$python" hw-tests/syscall_census.py "$t" "${device[@]}" --fail-on-refused || status=1
done
[ "$status" = 0 ] && echo "ok: no worker made a call its seccomp filter refuses"
exit "$status"
