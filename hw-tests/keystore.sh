#!/usr/bin/env bash
# Runs the key-store suite (attest/keyd/tests/keystore.rs) against real devices, one test at a time
# on a device reset before each test. Each device is skipped with its reason when absent or not
# declared disposable: the suite defines NV indices (0x01570000..), persistent keys
# (0x81015701..) and token objects, and resets PCR 16.
#
#   TPM:  WARDEN_HW_TPM_DISPOSABLE=1 [WARDEN_HW_TCTI=device:/dev/tpmrm0] hw-tests/keystore.sh
#         (the TPM is cleared with `tpm2_clear` before each test: empty lockout authorization)
#   HSM:  WARDEN_HW_PKCS11_MODULE=/usr/lib/…/vendor.so WARDEN_HW_PKCS11_TOKEN=label \
#         WARDEN_HW_PKCS11_PIN_FILE=/path/pin WARDEN_HW_PKCS11_RESET='command that re-initializes
#         the token with that label and PIN' hw-tests/keystore.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
[ -f .cache/env ] && . .cache/env

say() { printf 'hw-tests/keystore: %s\n' "$*" >&2; }
failed=0

# The names of the suite's tests whose path starts with $1 (`tpm`, `pkcs11::`).
tests_for() {
    cargo test -q -p warden-keyd --test keystore -- --list 2>/dev/null |
        sed -n 's/: test$//p' | grep "^$1" || true
}

tcti=${WARDEN_HW_TCTI:-device:/dev/tpmrm0}
if [ "$tcti" = device:/dev/tpmrm0 ] && [ ! -e /dev/tpmrm0 ]; then
    say "SKIP TPM: no /dev/tpmrm0 on this machine"
elif [ "${WARDEN_HW_TPM_DISPOSABLE:-}" != 1 ]; then
    say "SKIP TPM: $tcti is present, but the suite changes TPM state; set WARDEN_HW_TPM_DISPOSABLE=1 on a TPM that may be cleared"
elif ! command -v tpm2_clear >/dev/null; then
    say "FAIL TPM: tpm2_clear (Debian tpm2-tools) is missing: run scripts/setup.sh --test"
    failed=1
else
    for t in $(tests_for tpm); do
        tpm2_clear -T "$tcti" -c p >/dev/null 2>&1 || tpm2_clear -T "$tcti" >/dev/null
        say "TPM ($tcti): $t"
        WARDEN_TEST_TCTI=$tcti cargo test -q -p warden-keyd --test keystore -- --exact "$t" --test-threads=1 || failed=1
    done
fi

if [ -z "${WARDEN_HW_PKCS11_MODULE:-}" ]; then
    say "SKIP HSM: WARDEN_HW_PKCS11_MODULE is not set"
elif [ -z "${WARDEN_HW_PKCS11_RESET:-}" ] || [ -z "${WARDEN_HW_PKCS11_TOKEN:-}" ] || [ -z "${WARDEN_HW_PKCS11_PIN_FILE:-}" ]; then
    say "SKIP HSM: set WARDEN_HW_PKCS11_TOKEN, WARDEN_HW_PKCS11_PIN_FILE and WARDEN_HW_PKCS11_RESET (re-initializes the token before each test)"
else
    for t in $(tests_for 'pkcs11::'); do
        bash -c "$WARDEN_HW_PKCS11_RESET"
        say "HSM ($WARDEN_HW_PKCS11_MODULE, token $WARDEN_HW_PKCS11_TOKEN): $t"
        WARDEN_TEST_PKCS11_MODULE=$WARDEN_HW_PKCS11_MODULE \
        WARDEN_TEST_PKCS11_TOKEN=$WARDEN_HW_PKCS11_TOKEN \
        WARDEN_TEST_PKCS11_PIN_FILE=$WARDEN_HW_PKCS11_PIN_FILE \
            cargo test -q -p warden-keyd --test keystore -- --exact "$t" --test-threads=1 || failed=1
    done
fi
exit "$failed"
