#!/usr/bin/env bash
# Bundle verification throughput, against the single-core SHA-256 ceiling (`openssl speed`) and
# `model_signing verify`, all measured in this one run on generated models (never committed).
#
#   scripts/bench-bundle.sh              1 GiB and 4 GiB single files, 8 × 512 MiB multi-file
#   BENCH_QUICK=1 scripts/bench-bundle.sh  256 MiB and 1 GiB single files, 8 × 128 MiB
#   KEEP=1                               keep the generated models in .cache/bench-models
#   RUNS=3                               timed runs per measurement (after one warm-up run)
#
# Page cache is warm (one untimed run first), so this measures hashing and I/O-copy cost, not
# the disk. Throughput is in GB/s (10^9 bytes/s), the unit `openssl speed` reports in.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=/dev/null
[ -f .cache/env ] && source .cache/env

runs=${RUNS:-3}
warden=target/release/warden
python=.venv/bin/python
if [ ! -x "$warden" ]; then
    cargo build --release --locked -p warden-agent --bin warden
fi
if ! "$python" -c 'import model_signing' 2>/dev/null; then
    bash scripts/setup.sh --test
fi

work=.cache/bench-models
mkdir -p "$work"
cleanup() {
    if [ "${KEEP:-0}" != 1 ]; then rm -rf "$work"; fi
}
trap cleanup EXIT

mib=$((1024 * 1024))
if [ "${BENCH_QUICK:-0}" = 1 ]; then
    small=$((256 * mib)) big=$((1024 * mib)) part=$((128 * mib))
else
    small=$((1024 * mib)) big=$((4096 * mib)) part=$((512 * mib))
fi
parts=8
need_kb=$(((small + big + parts * part) / 1024 + 1024 * 1024))
avail_kb=$(df -Pk "$work" | awk 'NR == 2 { print $4 }')
if [ "$avail_kb" -lt "$need_kb" ]; then
    echo "bench-bundle: need $((need_kb / 1024 / 1024)) GiB free under $work, have $((avail_kb / 1024 / 1024)) GiB" >&2
    exit 1
fi

# The single-core SHA-256 ceiling: openssl's EVP SHA-256 (SHA-NI where the CPU has it), 16 KiB
# blocks. Prints GB/s.
sha256_ceiling() {
    openssl speed -evp sha256 -bytes 16384 -seconds 3 2>/dev/null |
        awk '/^sha256/ { v = $NF; sub(/k$/, "", v); printf "%.3f\n", v * 1000 / 1e9 }'
}

now() { date +%s.%N; }
# Floating-point arithmetic (bc has no 1e9 notation).
calc() { awk "BEGIN { printf \"%.6f\", $* }"; }
lt() { awk "BEGIN { exit !($1 < $2) }"; }
# One timed run of "$@" in seconds.
time_once() {
    local t0 t1
    t0=$(now)
    "$@" >/dev/null 2>&1 || { echo "bench-bundle: failed: $*" >&2; "$@" >&2 || true; return 1; }
    t1=$(now)
    calc "$t1 - $t0"
}
median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
# A file of pseudo-random bytes, written fast: AES-CTR keystream over zeros (seeded by name).
gen() {
    local path=$1 size=$2
    # openssl dies of SIGPIPE when head has enough: expected, so pipefail is off here.
    (set +o pipefail
        openssl enc -aes-128-ctr -nosalt -pbkdf2 -pass "pass:warden-bench-$(basename "$path")" \
            </dev/zero 2>/dev/null | head -c "$size" >"$path")
    [ "$(stat -c %s "$path")" = "$size" ] || { echo "bench-bundle: short write to $path" >&2; return 1; }
}

echo "== bench-bundle: $(date -u +%FT%TZ), $(nproc) cores, $(uptime | sed 's/.*load/load/')"
ceil1=$(sha256_ceiling)
echo "openssl speed -evp sha256 (16 KiB, 1 core): $ceil1 GB/s"

t0=$(now)
mkdir -p "$work/m-small" "$work/m-big" "$work/m-multi"
gen "$work/m-small/model.bin" "$small"
gen "$work/m-big/model.bin" "$big"
for ((i = 0; i < parts; i++)); do gen "$work/m-multi/part-$i.safetensors" "$part"; done
echo "generated models in $(calc "$(now) - $t0") s"

openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/key.pem" 2>/dev/null
openssl pkey -in "$work/key.pem" -pubout -out "$work/pub.pem" 2>/dev/null

rows=()
# bench NAME MODEL_DIR SERIALIZATION: signs with warden, times warden verify and (for files,
# which is all `model_signing verify` re-hashes with) model_signing verify on the same model.
ms_cache=()
bench() {
    local name=$1 model=$2 ser=$3
    local sig="$work/$name-$ser.sig" bytes tw tm gw gm gbest ratio speedup
    bytes=$(du -sb --apparent-size "$model" | cut -f1)
    "$warden" bundle sign key --private-key "$work/key.pem" --serialization "$ser" \
        --signature "$sig" "$model" >/dev/null
    local wcmd=("$warden" bundle verify key --public-key "$work/pub.pem" --signature "$sig" "$model")
    local mcmd=("$python" -m model_signing verify key --public_key "$work/pub.pem" --signature "$sig" "$model")
    # One untimed run each (warms the page cache), then the two tools alternate so that both
    # see the same background load; medians of $runs runs.
    local tws=() tms=() i
    time_once "${wcmd[@]}" >/dev/null
    [ "$ser" = files ] && time_once "${mcmd[@]}" >/dev/null
    for ((i = 0; i < runs; i++)); do
        tws+=("$(time_once "${wcmd[@]}")")
        if [ "$ser" = files ]; then tms+=("$(time_once "${mcmd[@]}")"); fi
    done
    tw=$(printf '%s\n' "${tws[@]}" | median)
    gw=$(calc "$bytes / $tw / 1e9")
    # The fastest run: what the machine allows when the other load lets up.
    gbest=$(calc "$bytes / $(printf '%s\n' "${tws[@]}" | sort -g | head -1) / 1e9")
    if [ "$ser" = files ]; then
        tm=$(printf '%s\n' "${tms[@]}" | median)
        gm=$(calc "$bytes / $tm / 1e9")
        ms_cache+=("$model=$gm")
        note=""
    else
        # model_signing verify always re-hashes files+sha256: compare with its number for
        # the same model (measured on the files bundle).
        gm=""
        for kv in "${ms_cache[@]}"; do [ "${kv%%=*}" = "$model" ] && gm=${kv#*=}; done
        note=" (ms: files)"
    fi
    ratio=$(calc "$gw / $ceil1")
    speedup=$(calc "$gw / $gm")
    rows+=("$(printf '%-8s %-9s %7.2f %-7s %6.2f %6.2fx %9.2f %7.2fx %6.2f%s' \
        "$name" "$(awk "BEGIN { printf \"%.2fGiB\", $bytes / 1073741824 }")" \
        "$(calc "$bytes / 1e9")" "$ser" "$gw" "$ratio" "$gm" "$speedup" "$gbest" "$note")")
    echo "  $name $ser: warden ${tws[*]} s (median $tw), model_signing ${tms[*]:-n/a} s; $(uptime | sed 's/.*load/load/')"
}

bench single "$work/m-small" files
bench single "$work/m-big" files
bench single "$work/m-big" shards
bench multi "$work/m-multi" files
bench multi "$work/m-multi" shards

ceil2=$(sha256_ceiling)
echo "openssl speed -evp sha256 again at the end: $ceil2 GB/s"
echo
echo "SHA-256 single-core ceiling (start): $ceil1 GB/s; load at end: $(uptime | sed 's/.*load average: //')"
printf '%-8s %-9s %7s %-7s %6s %7s %9s %8s %6s\n' model size GB ser warden ratio m_s speedup best
printf '%-8s %-9s %7s %-7s %6s %7s %9s %8s %6s\n' "" "" "" "" GB/s "/ceil" GB/s "vs m_s" GB/s
echo "(medians of $runs warm runs; best = warden's fastest run; ms = model_signing)"
printf '%s\n' "${rows[@]}"
echo
# Goals: single-file files bundle ≥ 0.9× the ceiling; multi-file or sharded ≥ 1.6× (all cores
# in use on 2 cores); ≥ 1.5× model_signing.
ok=1
for r in "${rows[@]}"; do
    read -r name _ _ ser gw ratio _ speedup _ <<<"$r"
    ratio=${ratio%x} speedup=${speedup%x}
    if [ "$name" = single ] && [ "$ser" = files ]; then goal=0.9; else goal=$(awk "BEGIN { printf \"%.2f\", 0.8 * $(nproc) }"); fi
    verdict=ok
    if lt "$ratio" "$goal"; then verdict="MISS (< ${goal}x ceiling)"; ok=0; fi
    if lt "$speedup" 1.5; then verdict="$verdict; MISS (< 1.5x model_signing)"; ok=0; fi
    printf 'goal %-6s %-6s ratio %5sx (goal %.2fx): %s\n' "$name" "$ser" "$ratio" "$goal" "$verdict"
done
[ "$ok" = 1 ] && echo "all goals hold" || echo "some goals missed (see above)"
