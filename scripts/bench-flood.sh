#!/usr/bin/env bash
# The identify-push flood benchmark (benches/flood.rs): a hostile libp2p
# peer pushes identify messages of 150 fresh addresses 20 times a second at
# a `nixswarm run` on 127.0.0.1 for BENCH_FLOOD_SECS (default 180), after
# BENCH_IDLE_SECS (default 20) idle as the reference. Reports the victim's
# CPU, memory, /status latency and routing-table addresses as a Markdown
# table (also written to $BENCH_OUT if set). Installs curl if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
install_missing curl:curl
cargo bench --bench flood --features test-hooks
