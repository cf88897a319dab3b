#!/usr/bin/env bash
# Hole-punch success rate: runs the NAT test (a donor and a client each
# behind a masquerading router, two public relays; tests/e2e_nat.rs, TCP
# and QUIC, then QUIC alone) PUNCH_RUNS times each (default 20) and
# counts the runs in which the client got every path from the donor over
# a punched direct connection, the punches that failed on the way, and
# the retries it took. Needs root (network namespaces). Prints a Markdown
# table (also written to $BENCH_OUT if set).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
install_missing nft:nftables
runs=${PUNCH_RUNS:-20}
cargo nextest run --features test-hooks --test e2e_nat --no-run >/dev/null 2>&1 || cargo build --features test-hooks --tests
table="| test | runs | direct in the end | punches failed on the way | retries |
|---|---|---|---|---|"
for t in a_donor_behind_nat_serves_a_client_behind_nat_over_a_punched_direct_connection the_same_over_quic_alone; do
  ok=0 failed=0 retries=0
  for i in $(seq "$runs"); do
    out=$(cargo nextest run --features test-hooks --test e2e_nat --no-capture -E "test(=$t)" 2>&1 || true)
    line=$(grep -o 'punch: [0-9]* punches failed first, [0-9]* retries' <<<"$out" | tail -1 || true)
    if grep -q '1 passed' <<<"$out" && [ -n "$line" ]; then
      ok=$((ok + 1))
      read -r f r < <(sed 's/punch: \([0-9]*\) punches failed first, \([0-9]*\) retries/\1 \2/' <<<"$line")
      failed=$((failed + f)); retries=$((retries + r))
    fi
    echo "$t run $i: ${line:-failed}" >&2
  done
  table+="
| $t | $runs | $ok | $failed | $retries |"
done
echo "$table"
[ -n "${BENCH_OUT:-}" ] && echo "$table" >"$BENCH_OUT"
exit 0
