#!/usr/bin/env bash
# The WAN benchmark (benches/wan.rs): six cache-mode nodes, each in its own
# network namespace behind a userspace delay line (10 ms each way, 1500-byte
# MTU; peers 40 ms apart, the upstream 20 ms away), uplinks uncapped and
# capped at 50 Mbit/s. Reports Nix through the swarm against the upstream
# direct and against nginx serving from a peer's namespace, upstream/unique,
# the peers' share and its bound. Needs root (namespaces, TAP devices, tc);
# installs nginx-light, curl, iproute2 and nix-bin if missing. Prints a
# Markdown table (also written to $BENCH_OUT if set); WAN_ONLY=uncapped or
# WAN_ONLY=50 runs one of the two.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
install_missing nginx:nginx-light curl:curl nix-store:nix-bin tc:iproute2
cargo bench --bench wan
