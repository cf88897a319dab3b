#!/usr/bin/env bash
# The peer-to-peer benchmark (benches/p2p.rs): installs nginx-light, curl and
# nix-bin if missing, builds in release mode and prints a Markdown table
# (also written to $BENCH_OUT if set). Everything stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
install_missing nginx:nginx-light curl:curl nix-store:nix-bin
cargo bench --bench p2p
