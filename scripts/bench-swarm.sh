#!/usr/bin/env bash
# The swarm benchmark (benches/swarm.rs): eight cache-mode nodes and an nginx
# upstream with an access log on 127.0.0.1; does each path leave the
# upstream once? Installs nginx-light, curl and nix-bin if missing, builds
# in release mode with the test-only latency switch (feature test-hooks; the
# next `cargo run --release` rebuilds the binary without it) and prints a
# Markdown table (also written to $BENCH_OUT if set). Needs root (Nix builds
# the benchmark cache in a chroot store, once) and about 1 GB under target/.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
install_missing nginx:nginx-light curl:curl nix-store:nix-bin
cargo bench --bench swarm --features test-hooks
