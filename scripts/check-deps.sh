#!/usr/bin/env bash
# Checks the workspace's dependency tree against deny.toml: licenses (a permissive allow-list),
# bans (no wildcard versions, no OpenSSL or native-tls; duplicates are warnings) and sources
# (crates.io only). Installs cargo-deny first when it is missing.
#
# Advisories are not checked: the RustSec database is a git repository on GitHub, which the
# development machines and CI cannot reach (see deny.toml).
#
# Why `cargo install`: the only other source reachable here, the PyPI wheel `cargo-deny`, is
# 0.14.2; it cannot read a deny.toml in the current format (`[graph]`, `crate = ...` bans), its
# SPDX list has no `Unicode-3.0` (ICU4X's licence, in this tree), and it panics while
# building this workspace's crate graph (krates 0.15.1, builder.rs:776: cargo's newer package
# ids). `cargo install cargo-deny --locked` builds 0.20.2 from crates.io in 3 to 6 minutes on
# the 2-core development machine under `nice` (measured: 3 m 4 s wall and 2 m 48 s user for
# this script's install and check on a lightly loaded machine; 5 m 57 s wall while another
# build ran), once per machine. The version is pinned: deny.toml is written for it.
#
#   scripts/check-deps.sh            install if needed, then check
#
# Environment: CARGO_DENY_VERSION (default 0.20.2), CHECK_DEPS_NICE (default 15).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION="${CARGO_DENY_VERSION:-0.20.2}"
NICE="${CHECK_DEPS_NICE:-15}"
export PATH="$HOME/.cargo/bin:$PATH"

installed=""
if command -v cargo-deny > /dev/null 2>&1; then
    installed="$(cargo-deny --version 2> /dev/null | awk '{print $2}')"
fi
if [ "$installed" != "$VERSION" ]; then
    echo "== installing cargo-deny $VERSION (found: ${installed:-none}); this takes a few minutes"
    nice -n "$NICE" cargo install cargo-deny --locked --version "$VERSION"
fi

cd "$ROOT"
# --locked: check the tree as Cargo.lock pins it, and never rewrite the lock.
# --hide-inclusion-graph: a duplicate is reported by its lock entries, not by its whole
# inclusion graph (1,400 lines for the 16 duplicates of this tree).
exec cargo-deny --locked check --hide-inclusion-graph licenses bans sources
