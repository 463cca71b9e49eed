#!/usr/bin/env bash
# Sets up what Warden needs on a fresh Debian machine that has the Rust toolchain and Python 3:
#   - the ONNX Runtime shared library, taken from the `onnxruntime` wheel on PyPI
#     (the `ort` crate loads it at run time; nothing is downloaded at build time);
#   - the Debian packages the build needs: `pkg-config` and `libtss2-dev` (tss-esapi links
#     the TPM2 software stack);
#   - with `--test`, a Python virtual environment with the reference tools the tests run
#     against (`model_signing`, `tritonclient[http]`, `onnxruntime`, numpy, `safetensors`), and the devices
#     the key-store and measured-boot tests start themselves: swtpm (`swtpm`, `swtpm-tools`),
#     `tpm2-tools`, SoftHSM2 (`softhsm2`) and OpenSC (`opensc`, for pkcs11-tool), the OCI
#     registry the pull tests start on loopback (`docker-registry`), `systemd` for its offline
#     tools (systemd-analyze verify/security, systemd-sysusers, systemd-tmpfiles) that check
#     the unit files, util-linux's `setpriv` for the key service's privilege test, and
#     `strace` for the system-call census of a sandboxed worker (hw-tests/syscall_census.py).
# Idempotent: a second run only checks (apt-get runs only when a program or library is
# missing). Everything else lands under .cache/ and .venv/ (ignored).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

ORT_VERSION=1.31.1
ort_dir="$root/.cache/onnxruntime-$ORT_VERSION"
ort_lib="$ort_dir/libonnxruntime.so.$ORT_VERSION"
want_test=0
[ "${1:-}" = "--test" ] && want_test=1

say() { printf 'setup: %s\n' "$*" >&2; }

# Debian packages, installed only when what they provide is missing.
apt_missing=()
need_pkg() { # need_pkg PACKAGE TEST-COMMAND...
    local pkg=$1; shift
    "$@" >/dev/null 2>&1 || apt_missing+=("$pkg")
}
need_pkg pkg-config command -v pkg-config
need_pkg libtss2-dev pkg-config --exists tss2-esys tss2-tctildr tss2-mu
if [ "$want_test" = 1 ]; then
    need_pkg swtpm command -v swtpm
    need_pkg swtpm-tools command -v swtpm_setup
    need_pkg tpm2-tools command -v tpm2_pcrread
    need_pkg softhsm2 command -v softhsm2-util
    need_pkg opensc command -v pkcs11-tool
    need_pkg docker-registry test -x /usr/bin/docker-registry
    need_pkg systemd command -v systemd-analyze
    need_pkg util-linux command -v setpriv
    need_pkg strace command -v strace
    # The fuzz crates' lint (scripts/test.sh) builds libFuzzer, which is C++.
    need_pkg g++ command -v g++
fi
if [ "${#apt_missing[@]}" -gt 0 ]; then
    say "installing ${apt_missing[*]} (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_missing[@]}" >/dev/null
    # The package enables its own registry service (with auth, on every address); the tests
    # start their own on loopback, so the packaged one is stopped where systemd runs.
    if [[ " ${apt_missing[*]} " == *" docker-registry "* ]] && command -v systemctl >/dev/null 2>&1; then
        systemctl disable --now docker-registry >/dev/null 2>&1 || true
    fi
fi

# Python's venv module is a separate Debian package.
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    say "installing python3-venv (apt)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
    say "creating .venv"
    python3 -m venv .venv
    .venv/bin/pip install -q --upgrade pip
fi

if [ ! -f "$ort_lib" ]; then
    say "fetching the onnxruntime $ORT_VERSION wheel for its shared library"
    tmp=$(mktemp -d)
    .venv/bin/pip download -q "onnxruntime==$ORT_VERSION" --no-deps --only-binary=:all: -d "$tmp"
    mkdir -p "$ort_dir"
    .venv/bin/python - "$tmp" "$ort_dir" "$ORT_VERSION" <<'PY'
import glob, sys, zipfile
tmp, out, ver = sys.argv[1:4]
wheel = glob.glob(f"{tmp}/onnxruntime-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    name = f"onnxruntime/capi/libonnxruntime.so.{ver}"
    with z.open(name) as src, open(f"{out}/libonnxruntime.so.{ver}", "wb") as dst:
        dst.write(src.read())
PY
    rm -rf "$tmp"
fi
ln -sf "libonnxruntime.so.$ORT_VERSION" "$ort_dir/libonnxruntime.so"

if [ "$want_test" = 1 ]; then
    # Reference implementations the tests talk to; pinned where the format matters.
    if ! .venv/bin/python -c 'import model_signing, tritonclient.http, onnxruntime, onnx, numpy, OpenSSL, safetensors' 2>/dev/null; then
        say "installing the Python reference tools for the tests"
        .venv/bin/pip install -q "onnxruntime==$ORT_VERSION" onnx numpy safetensors "model-signing==1.1.1" pyopenssl "tritonclient[http]"
    fi
fi

# The environment the binaries and tests read.
cat > .cache/env <<ENV
export ORT_DYLIB_PATH="$ort_dir/libonnxruntime.so"
export WARDEN_PYTHON="$root/.venv/bin/python"
# ONNX Runtime's Linux builds keep a device identifier under ~/.cache/Microsoft and upload usage
# events unless this is 1 when they start: the tests, benchmarks and Python reference tools run
# it in process (Warden's engine refuses to load it otherwise; the agent sets it for workers).
export ORT_DISABLE_TELEMETRY=1
ENV
say "ready: ORT_DYLIB_PATH=$ort_dir/libonnxruntime.so"
