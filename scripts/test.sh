#!/usr/bin/env bash
# The whole test suite. Installs what the tests need (Debian's nix-bin for the
# end-to-end tests, cargo-nextest), then runs every test in the workspace.
# Run as root on Debian: the end-to-end tests drive Nix in single-user mode
# with chroot stores, and building the fixture cache uses Nix's sandbox.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib.sh
install_missing nix-store:nix-bin flock:util-linux curl:curl ip:iproute2 nft:nftables chromium:chromium
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi

# test-hooks compiles in the hidden --test-corrupt-chunks and --test-fake-manifest (lying peers) and
# --test-peer-latency (a far-away peer) switches; release builds never have them.
cargo nextest run --workspace --features nixswarm/test-hooks --no-fail-fast "$@"
