#!/usr/bin/env bash
# The no-peers benchmark (benches/alone.rs): Nix realising a 160-path zstd
# cache through a gateway whose only source is its upstream (nginx on
# 127.0.0.1), keeping what it fetches and keeping nothing, against nginx
# direct, in alternating rounds (BENCH_RUNS, default 5). Installs
# nginx-light and nix-bin if missing; needs root once (Nix builds the cache
# in a chroot store). Prints a Markdown table (also written to $BENCH_OUT
# if set). The gateway logs at info level, as a user's would.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
install_missing nginx:nginx-light nix-store:nix-bin
export NIXSWARM_CHILD_LOG=${NIXSWARM_CHILD_LOG:-info}
cargo bench --bench alone
