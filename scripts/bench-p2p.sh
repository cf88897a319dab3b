#!/usr/bin/env bash
# The peer-to-peer benchmark (benches/p2p.rs): installs nginx-light, curl and
# nix-bin if missing, builds in release mode and prints a Markdown table
# (also written to $BENCH_OUT if set). Everything stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
need=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v curl >/dev/null || need+=(curl)
command -v nix-store >/dev/null || need+=(nix-bin)
if [ ${#need[@]} -gt 0 ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
cargo bench --bench p2p
