#!/usr/bin/env bash
# Adds seeds made by a real (software) TPM: the attestation key's public area as
# `tpm2_createak` makes it (the template keyd's AK follows: restricted ECDSA-SHA256 signing key
# on P-256), and a real quote's TPMS_ATTEST over the SHA-256 PCRs 0, 2, 4, 7 and 23. Needs
# swtpm and tpm2-tools (Debian: swtpm, tpm2-tools). Run from attest/fuzz; the seeds are
# committed, so this is only for making them again.
set -euo pipefail
out="$(pwd)/corpus"
dir="$(mktemp -d)"
trap 'kill "$(cat "$dir/pid")" 2> /dev/null || true; rm -rf "$dir"' EXIT
cd "$dir"
mkdir state
swtpm socket --tpm2 --tpmstate dir="$dir/state" --server type=tcp,port=23321 \
    --ctrl type=tcp,port=23322 --flags not-need-init,startup-clear &
echo $! > pid
sleep 1
export TPM2TOOLS_TCTI="swtpm:host=127.0.0.1,port=23321"
tpm2_createek -c ek.ctx -G ecc -u ek.pub > /dev/null
tpm2_createak -C ek.ctx -c ak.ctx -G ecc -g sha256 -s ecdsa -u ak.pub -n ak.name > /dev/null
# ak.pub is a TPM2B_PUBLIC: drop its 2-byte size to get the TPMT_PUBLIC.
mkdir -p "$out/ak_public_area" "$out/quote_attest"
tail -c +3 ak.pub > "$out/ak_public_area/swtpm_ak"
tpm2_pcrextend "23:sha256=$(printf app | sha256sum | cut -d' ' -f1)"
# Without a resource manager the AK stays loaded as the third transient object.
ak=$(tpm2_getcap handles-transient | sed -n 3p | tr -d ' -')
tpm2_quote -c "$ak" -l sha256:0,2,4,7,23 -q "$(printf 'verifier nonce' | xxd -p)" \
    -m quote.msg -s quote.sig -o quote.pcrs -g sha256 > /dev/null
pcr23=$(tpm2_pcrread sha256:23 | sed -nE 's/.*23 *: 0x([0-9A-F]+)/\1/p')
# The quote_attest input: flags 0x32, the nonce, the carried values, the attest bytes.
python3 - "$pcr23" > "$out/quote_attest/swtpm_quote" <<'PY'
import sys
nonce = b"verifier nonce"
values = [(0, bytes(32)), (2, bytes(32)), (4, bytes(32)), (7, bytes(32)), (23, bytes.fromhex(sys.argv[1]))]
out = bytes([0x32, len(nonce)]) + nonce + bytes([len(values)])
for pcr, value in values:
    out += bytes([pcr]) + value
out += open("quote.msg", "rb").read()
sys.stdout.buffer.write(out)
PY
