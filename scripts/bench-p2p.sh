#!/usr/bin/env bash
# The peer-to-peer benchmarks: benches/p2p.rs (one NAR, providers, lookups,
# misses) and benches/peer_cache.rs (Nix realising a whole cache through
# peers). Installs nginx-light, curl and nix-bin if missing, builds in
# release mode and prints two Markdown tables (also written to $BENCH_OUT
# and $BENCH_OUT.cache if set). Everything stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
install_missing nginx:nginx-light curl:curl nix-store:nix-bin
cargo bench --bench p2p
cargo bench --bench peer_cache
