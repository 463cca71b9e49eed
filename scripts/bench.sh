#!/usr/bin/env bash
# Benchmarks, release build, numbers printed with their baselines measured in the same run.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# --test: the benchmarks use the reference tools too (model_signing, the onnx package).
bash scripts/setup.sh --test
# shellcheck source=/dev/null
source .cache/env
cargo build --release --locked --workspace --bins
cargo bench --locked -p warden-agent --bench https_latency
cargo bench --locked -p warden-agent --features insecure-bench-baseline --bench gateway_chain
cargo bench --locked -p warden-runtime --bench worker_hop
cargo bench --locked -p warden-runtime --bench large_tensors
cargo bench --locked -p warden-runtime --bench engines
bash scripts/bench-bundle.sh
# The chain bench builds `warden` with the benchmark-only feature and cargo leaves that build at
# target/release/warden: put the normal binaries back.
cargo build --release --locked --workspace --bins
