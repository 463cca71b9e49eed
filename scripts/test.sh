#!/usr/bin/env bash
# README command 2: set up and run the whole test suite on a fresh machine.
# Installs what the tests need (ONNX Runtime library, the Python reference tools, curl), then
# runs format and lint checks and every test of the workspace. `.ci/run` calls this script.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

step() { printf '\n== %s\n' "$*"; }

step "setup"
if ! command -v curl >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null
fi
bash scripts/setup.sh --test
# shellcheck source=/dev/null
source .cache/env

step "format"
cargo fmt --all -- --check

step "lint"
cargo clippy --locked --workspace --all-targets -- -D warnings
# The chain benchmark needs the benchmark-only feature; lint it too.
cargo clippy --locked -p warden-agent --all-targets --features insecure-bench-baseline -- -D warnings

step "fuzz targets"
# The fuzz crates (agent/fuzz, runtime/fuzz, attest/fuzz: workspaces of their own, run by
# scripts/fuzz.sh) must keep compiling against the parsers they drive: format and lint them,
# in a target directory of their own (their lock files resolve apart from the workspace's).
for crate in agent runtime attest; do
    (cd "$crate/fuzz" && cargo fmt -- --check)
    CARGO_TARGET_DIR=target/fuzz-check \
        cargo clippy --locked --manifest-path "$crate/fuzz/Cargo.toml" --bins --examples -- -D warnings
done

step "crate boundaries"
# The agent links no TPM/PKCS#11 backend and no inference engine; workers hold no keys.
bash scripts/check-boundaries.sh

step "dependencies"
# Licenses, banned crates (OpenSSL, native-tls) and sources (crates.io only), per deny.toml.
bash scripts/check-deps.sh

step "docs"
# The module docs name the places things live: a link to a moved or renamed item fails here.
RUSTDOCFLAGS="-D warnings -A rustdoc::private_intra_doc_links" \
    cargo doc --locked --no-deps --workspace --document-private-items

step "structure"
# No import circles between the files of a crate; no source file over 600 lines before its tests.
python3 scripts/check-structure.py

step "build"
# The agent's tests start the worker binary, which lives in another crate: build every binary.
cargo build --locked --workspace --bins

step "tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --locked --workspace --no-fail-fast
else
    cargo test --locked --workspace --no-fail-fast
fi
