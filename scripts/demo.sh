#!/usr/bin/env bash
# README command 1: set up and run the demo on a fresh machine (Rust toolchain + Python 3).
# Fetches the ONNX Runtime library, builds Warden in release mode, and runs `warden demo`,
# which serves the signed demo model on https://127.0.0.1:8443 over mutual TLS and prints a
# ready-to-paste curl command. Extra arguments go to `warden demo` (e.g. --port 9443).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/setup.sh
# shellcheck source=/dev/null
source .cache/env
cargo build --release --locked -p warden-agent -p warden-runtime --bins
exec target/release/warden demo "$@"
