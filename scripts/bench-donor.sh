#!/usr/bin/env bash
# The donor benchmark (benches/donor.rs): installs nginx-light, curl and
# nix-bin if missing, builds in release mode and prints a Markdown table.
# Everything stays on 127.0.0.1. Needs root (Nix builds in chroot stores)
# and about 2 GB of disk under target/.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
install_missing nginx:nginx-light curl:curl nix-store:nix-bin
cargo bench --bench donor
