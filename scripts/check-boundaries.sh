#!/usr/bin/env bash
# Crate boundaries are trust and process boundaries (DESIGN.md): the network-facing agent
# (`warden`) links neither a hardware key backend (only `warden-keyd` opens the TPM or the
# PKCS#11 module) nor an inference engine (only `warden-runtime` workers run models); workers
# hold no keys; the key service runs no model. Checked on the normal dependency tree of each
# binary's package, alone and as a workspace build unifies features. Exits 1 on a violation.
set -euo pipefail
cd "$(dirname "$0")/.."

failed=0
# forbid PACKAGE CRATE...: none of CRATE may be in PACKAGE's normal dependency tree.
forbid() {
    local package=$1; shift
    local before=$failed tree
    tree=$(cargo tree --locked -p "$package" -e normal --prefix none --format '{p}' | awk '{print $1}' | sort -u)
    for crate in "$@"; do
        if grep -qx "$crate" <<<"$tree"; then
            echo "boundary broken: $package links $crate:" >&2
            cargo tree --locked -p "$package" -e normal -i "$crate" >&2 || true
            failed=1
        fi
    done
    # The same with the whole workspace's features unified (as `cargo build --workspace`
    # builds it): nothing may reach CRATE through PACKAGE.
    for crate in "$@"; do
        if cargo tree --locked --workspace -e normal -i "$crate" --prefix none --format '{p}' 2>/dev/null |
            awk '{print $1}' | grep -qx "$package"; then
            echo "boundary broken: $package reaches $crate in a workspace build" >&2
            failed=1
        fi
    done
    if [ "$failed" = "$before" ]; then
        printf 'boundaries: %s links none of %s\n' "$package" "$*"
    fi
}

hardware_keys=(tss-esapi tss-esapi-sys cryptoki cryptoki-sys)
engines=(ort ort-sys candle-core candle-nn)

forbid warden-agent "${hardware_keys[@]}" "${engines[@]}" warden-keyd warden-runtime
forbid warden-runtime "${hardware_keys[@]}" warden-keystore warden-keyd
forbid warden-keyd "${engines[@]}" warden-runtime-client
exit "$failed"
