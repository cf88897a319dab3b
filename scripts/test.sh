#!/usr/bin/env bash
# The whole test suite. Installs what the tests need (Debian's nix-bin for the
# end-to-end tests, cargo-nextest), then runs every test in the workspace.
# Run as root on Debian: the end-to-end tests drive Nix in single-user mode
# with chroot stores, and building the fixture cache uses Nix's sandbox.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib.sh
install_missing nix-store:nix-bin flock:util-linux curl:curl ip:iproute2 nft:nftables chromium:chromium
# The S3 test's server: moto, from PyPI, in a venv of its own.
MOTO_VENV=/opt/nixswarm-test-venv
if [ ! -x "$MOTO_VENV/bin/moto_server" ]; then
  install_missing python3:python3
  python3 -c 'import ensurepip, venv' 2>/dev/null || install_missing no-such-command:python3-venv
  python3 -m venv "$MOTO_VENV"
  "$MOTO_VENV/bin/pip" install -q --disable-pip-version-check 'moto[server]'
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi

# test-hooks compiles in the hidden --test-corrupt-chunks and --test-fake-manifest (lying peers) and
# --test-peer-latency (a far-away peer) switches; release builds never have them.
cargo nextest run --workspace --features nixswarm/test-hooks --no-fail-fast "$@"
