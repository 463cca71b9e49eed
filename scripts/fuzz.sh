#!/usr/bin/env bash
# Runs the cargo-fuzz (libFuzzer) targets of every parser at a trust boundary, each for a
# bounded time, starting from the committed seed corpora, and fails if any target crashes.
#
#   scripts/fuzz.sh                      every target of every fuzz crate, 300 s each
#   scripts/fuzz.sh -t 60                every target, 60 s each (or FUZZ_SECONDS=60)
#   scripts/fuzz.sh oip_codec            one target (by name, or as agent/oip_codec)
#   scripts/fuzz.sh attest               every target of one fuzz crate (agent, runtime, attest)
#   scripts/fuzz.sh -l                   list the targets
#
# The fuzz crates are agent/fuzz, runtime/fuzz and attest/fuzz: each is a cargo workspace of
# its own (the root workspace never builds them) with its own Cargo.lock and target/ directory.
# Seeds live in <crate>/fuzz/corpus/<target>/ and are only read: a run fuzzes into the ignored
# working corpus <crate>/fuzz/work/<target>/corpus/ (kept between runs, so later runs start
# where earlier ones stopped; delete work/ to start over), its libFuzzer log is
# <crate>/fuzz/work/<target>/fuzz-0.log, and crashes land in the ignored
# <crate>/fuzz/artifacts/<target>/. Reproduce one by running the built binary on it,
# `<crate>/fuzz/target/x86_64-unknown-linux-gnu/release/<target> <artifact>`, and minimise it
# with the same binary and `-minimize_crash=1 -max_total_time=60 <artifact>`.
#
# Toolchain: cargo fuzz's instrumentation flags (`-C passes=sancov-module`, `-C llvm-args=...`)
# are stable, so `cargo fuzz build --sanitizer none` works on the stable 1.95 this project
# builds with (no nightly can be fetched here). AddressSanitizer needs `-Zsanitizer=address`:
# RUSTC_BOOTSTRAP=1 makes the stable compiler accept it, and the stable
# x86_64-unknown-linux-gnu sysroot ships the runtime (librustc-stable_rt.asan.a), so it works
# too, without build-std. This script sets RUSTC_BOOTSTRAP=1 only for cargo fuzz commands that
# build with a sanitizer, never for the project's own builds.
#
# Sanitizer per crate, from measurements on the 2-core development machine (attest targets,
# 30 s each from the seeds, same machine and load): ASan ran 2.4 to 5 times fewer executions
# per second (tpm_event_log 42 k/s vs 216 k/s, ak_public_area 38 k vs 91 k, oms_statement 231
# vs 1215, keyd_protocol 34 k/s with ASan) and used about 0.5 GB instead of 30-100 MB.
# The code under test in agent and attest is safe Rust (the workspace forbids `unsafe`), run
# with overflow checks and debug assertions (cargo fuzz -O): its out-of-bounds accesses and
# overflows already panic, and ASan would mostly add checks inside dependencies, at a fraction
# of the speed. So agent/fuzz and attest/fuzz build with `--sanitizer none`, and runtime/fuzz,
# whose worker_frames target drives the tensor arena's `unsafe` raw copies
# (warden-runtime-client's sys.rs) between the heap and the shared mapping, with
# `--sanitizer address` (ASan checks the heap side of every copy; the mapping itself is
# checked by the target's assertions). FUZZ_SANITIZER=address (or none) overrides the choice
# for every crate, e.g. for an occasional deep run of everything under ASan.
#
# libFuzzer runs with -jobs=1 -workers=1 (one process, its output in fuzz-0.log; the machine
# is shared with builds) under `nice`; -timeout=10 turns a hang of 10 s on one input into a
# failure, -rss_limit_mb=2048 a runaway allocation.
#
# Environment: FUZZ_SECONDS (default 300) per target; FUZZ_SANITIZER (address | none, for
# every crate; default: per crate, above); FUZZ_NICE (default 15); FUZZ_EXTRA (more libFuzzer
# flags, e.g. "-max_len=65536").
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CRATES=(agent runtime attest)
SECONDS_PER_TARGET="${FUZZ_SECONDS:-300}"
declare -A CRATE_SANITIZER=([agent]=none [runtime]=address [attest]=none)
NICE="${FUZZ_NICE:-15}"
LIST_ONLY=0

while getopts "t:lh" opt; do
    case "$opt" in
        t) SECONDS_PER_TARGET="$OPTARG" ;;
        l) LIST_ONLY=1 ;;
        h)
            sed -n '2,12p' "$0"
            exit 0
            ;;
        *) exit 2 ;;
    esac
done
shift $((OPTIND - 1))
case "$SECONDS_PER_TARGET" in
    '' | *[!0-9]*)
        echo "fuzz.sh: -t wants whole seconds, not '$SECONDS_PER_TARGET'" >&2
        exit 2
        ;;
esac

export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo fuzz --version > /dev/null 2>&1; then
    echo "== installing cargo-fuzz (cargo install cargo-fuzz --locked)"
    nice -n "$NICE" cargo install cargo-fuzz --locked
fi

sanitizer_of() {
    echo "${FUZZ_SANITIZER:-${CRATE_SANITIZER[$1]}}"
}

# `fuzz <sanitizer> <cargo fuzz arguments>`: RUSTC_BOOTSTRAP only where a sanitizer needs -Z.
fuzz() {
    local san="$1"
    shift
    if [ "$san" = none ]; then
        nice -n "$NICE" cargo fuzz "$@"
    else
        RUSTC_BOOTSTRAP=1 nice -n "$NICE" cargo fuzz "$@"
    fi
}

# cargo fuzz builds for the host triple explicitly: <fuzz dir>/target/<host>/release/<target>.
HOST="$(rustc -vV | sed -n 's/^host: //p')"

# Every (crate, target) pair, as "crate/target".
all_targets() {
    local crate t
    for crate in "${CRATES[@]}"; do
        (cd "$ROOT/$crate" && fuzz none list --fuzz-dir "$ROOT/$crate/fuzz") | while read -r t; do
            echo "$crate/$t"
        done
    done
}

mapfile -t ALL < <(all_targets)
if [ "$LIST_ONLY" = 1 ]; then
    printf '%s\n' "${ALL[@]}"
    exit 0
fi

# Select by argument: a crate, a target name, or crate/target.
SELECTED=()
if [ $# -eq 0 ]; then
    SELECTED=("${ALL[@]}")
else
    for arg in "$@"; do
        matched=0
        for ct in "${ALL[@]}"; do
            if [ "$arg" = "$ct" ] || [ "$arg" = "${ct%%/*}" ] || [ "$arg" = "${ct##*/}" ]; then
                SELECTED+=("$ct")
                matched=1
            fi
        done
        if [ "$matched" = 0 ]; then
            echo "fuzz.sh: no target or crate '$arg' (scripts/fuzz.sh -l lists them)" >&2
            exit 2
        fi
    done
fi

# Build each crate involved once (all its targets).
declare -A BUILT=()
for ct in "${SELECTED[@]}"; do
    crate="${ct%%/*}"
    [ -n "${BUILT[$crate]:-}" ] && continue
    san="$(sanitizer_of "$crate")"
    echo "== building $crate/fuzz (sanitizer: $san)"
    (cd "$ROOT/$crate" && fuzz "$san" build -O --sanitizer "$san" --fuzz-dir "$ROOT/$crate/fuzz")
    BUILT[$crate]=1
done

declare -a SUMMARY=()
FAILED=0
for ct in "${SELECTED[@]}"; do
    crate="${ct%%/*}"
    target="${ct##*/}"
    dir="$ROOT/$crate/fuzz"
    seeds="$dir/corpus/$target"
    work="$dir/work/$target"
    artifacts="$dir/artifacts/$target"
    mkdir -p "$work/corpus" "$seeds" "$artifacts"
    rm -f "$work/fuzz-0.log"
    before=$(find "$artifacts" -type f | wc -l)
    echo "== $ct: ${SECONDS_PER_TARGET}s, sanitizer $(sanitizer_of "$crate") (seeds: $(find "$seeds" -type f | wc -l), working corpus: $(find "$work/corpus" -type f | wc -l))"
    start=$(date +%s)
    set +e
    # The binary `cargo fuzz build` made above, run directly: `cargo fuzz run` would build again
    # before every target, and pick up whatever changed in the tree meanwhile.
    # (ASAN_OPTIONS as cargo fuzz run sets it; ignored without ASan.)
    # shellcheck disable=SC2086 # FUZZ_EXTRA is a list of flags.
    (cd "$work" && ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_odr_violation=0" \
        nice -n "$NICE" "$dir/target/$HOST/release/$target" \
        -artifact_prefix="$artifacts/" \
        -max_total_time="$SECONDS_PER_TARGET" -jobs=1 -workers=1 -timeout=10 \
        -rss_limit_mb=2048 -print_final_stats=1 ${FUZZ_EXTRA:-} \
        "$work/corpus" "$seeds" > /dev/null 2>&1)
    rc=$?
    set -e
    took=$(($(date +%s) - start))
    log="$work/fuzz-0.log"
    after=$(find "$artifacts" -type f | wc -l)
    # The last status line: "#<runs> DONE cov: <edges> ft: <features> corp: <n>/<size> ...".
    last=$(grep -E '^#[0-9]+' "$log" 2> /dev/null | tail -n 1 || true)
    runs=$(grep -oE '^stat::number_of_executed_units: [0-9]+' "$log" 2> /dev/null | grep -oE '[0-9]+$' || true)
    [ -z "$runs" ] && runs=$(echo "$last" | sed -nE 's/^#([0-9]+).*/\1/p')
    cov=$(echo "$last" | sed -nE 's/.* cov: ([0-9]+).*/\1/p')
    ft=$(echo "$last" | sed -nE 's/.* ft: ([0-9]+).*/\1/p')
    corp=$(echo "$last" | sed -nE 's/.* corp: ([0-9]+)\/.*/\1/p')
    result=ok
    if [ "$rc" -ne 0 ] || [ "$after" -gt "$before" ] || ! grep -qE '^#[0-9]+[[:space:]]+DONE' "$log" 2> /dev/null; then
        result="FAILED (exit $rc; artifacts: $artifacts)"
        FAILED=1
        echo "-- $ct: the end of $log:"
        tail -n 40 "$log" 2> /dev/null || true
    fi
    SUMMARY+=("$(printf '%-28s %12s %8s %8s %8s %6ss  %s' "$ct" "${runs:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$took" "$result")")
done

echo
printf '%-28s %12s %8s %8s %8s %7s  %s\n' target runs cov ft corpus time result
printf '%s\n' "${SUMMARY[@]}"
if [ "$FAILED" -ne 0 ]; then
    echo "fuzz.sh: a target failed; reproduce a crash with <crate>/fuzz/target/$HOST/release/<target> <artifact>, minimise it by adding -minimize_crash=1 -max_total_time=60" >&2
    exit 1
fi
