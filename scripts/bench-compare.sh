#!/usr/bin/env bash
# Before/after of the latency benchmarks, alternating in one run, so that the machine's drift
# falls on both sides alike:
#
#   scripts/bench-compare.sh BASE_REVISION [ROUNDS]      (default 15 rounds)
#
# Builds BASE_REVISION in a git worktree under .cache/bench-base (its own target directory) and
# the working tree as it is, then runs `https_latency` and `worker_hop` base, head, base, head…
# and prints, per measurement, the median over rounds of the paired head/base ratio of the p50
# (each round's pair ran back to back) with its interquartile range. Logs stay in
# .cache/bench-compare/. Run scripts/setup.sh --test first (it writes .cache/env).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
base_rev=${1:?usage: scripts/bench-compare.sh BASE_REVISION [ROUNDS]}
rounds=${2:-15}
# shellcheck source=/dev/null
source .cache/env

base_dir="$root/.cache/bench-base"
logs="$root/.cache/bench-compare"
mkdir -p "$logs"
if [ -d "$base_dir" ]; then
    git -C "$base_dir" checkout -q --detach "$base_rev"
else
    git worktree add -q --detach "$base_dir" "$base_rev"
fi

build() {
    (cd "$1" && cargo build --release --locked --workspace --bins &&
        cargo bench --locked --no-run -p warden-agent --bench https_latency \
            -p warden-runtime --bench worker_hop)
}
build "$base_dir"
build "$root"

# The newest build of bench $2 in the tree $1.
bench_binary() {
    find "$1/target/release/deps" -maxdepth 1 -type f -executable -name "$2-*" -printf '%T@ %p\n' |
        sort -n | tail -1 | cut -d' ' -f2
}

for bench in worker_hop https_latency; do
    log="$logs/$bench.log"
    : >"$log"
    : >"$log.stderr"
    base_bin=$(bench_binary "$base_dir" "$bench")
    head_bin=$(bench_binary "$root" "$bench")
    for round in $(seq 1 "$rounds"); do
        for side in base head; do
            if [ "$side" = base ]; then dir=$base_dir bin=$base_bin; else dir=$root bin=$head_bin; fi
            echo "=== round $round $side" >>"$log"
            (cd "$dir" && "$bin" --bench 2>>"$log.stderr") >>"$log" ||
                { echo "$bench ($side) failed; see $log.stderr" >&2; exit 1; }
        done
    done
    echo "== $bench ($rounds rounds, base $base_rev)"
    python3 - "$log" <<'EOF'
import re
import statistics
import sys

# "<label> p50 <value> us|µs" on each measurement line; the label is what precedes "p50".
line_re = re.compile(r"^(?P<label>\S.*?)[: ]\s*p50\s+(?P<p50>[\d.]+) (?:us|µs)")
rounds = {}
side = rnd = None
for line in open(sys.argv[1], encoding="utf-8"):
    m = re.match(r"=== round (\d+) (\w+)", line)
    if m:
        rnd, side = int(m.group(1)), m.group(2)
        continue
    m = line_re.match(line)
    if m:
        label = re.sub(r"\s+", " ", m.group("label")).strip()
        rounds.setdefault(label, {}).setdefault(rnd, {})[side] = float(m.group("p50"))
for label, by_round in rounds.items():
    pairs = [r for r in by_round.values() if "base" in r and "head" in r]
    if len(pairs) < 2:
        continue
    ratios = [r["head"] / r["base"] for r in pairs]
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    base = statistics.median(r["base"] for r in pairs)
    head = statistics.median(r["head"] for r in pairs)
    print(
        f"  {label}: p50 base {base:.1f} head {head:.1f}; "
        f"paired head/base {statistics.median(ratios):.3f} (IQR {q1:.2f}-{q3:.2f})"
    )
EOF
done
