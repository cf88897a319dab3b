#!/usr/bin/env bash
# Gateway benchmark, against nginx serving the same files in the same run:
#   1. NAR throughput: a 256 MiB NAR from the gateway's local store vs nginx
#      serving it uncompressed from disk (curl to /dev/null, median of 5).
#   2. narinfo requests/s: the same narinfo from the gateway (local hit) vs
#      nginx (wrk, 2 threads, 32 connections, 5 s each).
#   3. The real Nix client: nix-store -r of the 29-path test cache through the
#      gateway (local hits) vs directly from nginx (median of 5, fresh stores).
# Prints a Markdown table (also written to $BENCH_OUT if set). Installs
# nginx-light, wrk and nix-bin if missing. Everything stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
install_missing nginx:nginx-light wrk:wrk nix-store:nix-bin curl:curl bc:bc
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
RUNS=${BENCH_RUNS:-5}

cargo build --release --quiet --bin nixswarm
BIN=$PWD/target/release/nixswarm
work=$(mktemp -d /tmp/nixswarm-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; [ -n "${BENCH_KEEP:-}" ] || rm -rf "$work"; }
trap cleanup EXIT

echo "building the test caches with Nix..." >&2
fixture=$PWD/target/bench-fixture
bash tests/support/make-cache.sh "$fixture"
key=$(cat "$fixture/keys/trusted.pub")
export NIX_CONFIG=$'build-users-group =\nsubstituters ='
export XDG_CACHE_HOME=$work/xdg
big=$(nix-build --store "local?root=$work/bigstore" --option sandbox true \
  --option extra-sandbox-paths "/bin /usr /lib /lib64" --no-out-link -E \
  'derivation { name = "big-256m"; system = builtins.currentSystem; builder = "/bin/sh";
     args = [ "-c" "/usr/bin/head -c 268435456 /dev/urandom > $out" ]; }' 2>/dev/null)
nix --extra-experimental-features nix-command copy --store "local?root=$work/bigstore" \
  --to "file://$work/www/big?compression=none&secret-key=$fixture/keys/trusted.sec" "$big" 2>/dev/null
ln -s "$fixture/cache" "$work/www/fixture"
bighash=$(basename "$big" | cut -c1-32)
bignar=$(sed -n 's/^URL: //p' "$work/www/big/$bighash.narinfo")

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null \
  || echo $((20000 + RANDOM % 20000)); }
nport=$(port)
mkdir -p "$work/nginx"
# nginx's workers drop privileges; let them read the benchmark files.
nginx_user=""; [ "$(id -u)" = 0 ] && nginx_user="user root root;"
cat > "$work/nginx/nginx.conf" <<NGINX
$nginx_user
daemon off;
worker_processes 2;
error_log $work/nginx/error.log;
pid $work/nginx/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  types { text/x-nix-narinfo narinfo; }
  default_type application/octet-stream;
  client_body_temp_path $work/nginx; proxy_temp_path $work/nginx; fastcgi_temp_path $work/nginx;
  uwsgi_temp_path $work/nginx; scgi_temp_path $work/nginx;
  server { listen 127.0.0.1:$nport; root $work/www; disable_symlinks off; }
}
NGINX
"$NGINX" -c "$work/nginx/nginx.conf" -p "$work/nginx" & pids+=($!)
nginx=http://127.0.0.1:$nport

"$BIN" run --data-dir "$work/gw" --gateway-listen 127.0.0.1:0 --no-p2p --no-mdns --no-upnp --amount 4G --contribute cache --share-installed false --trusted-key "$key" \
  --upstream "$nginx/big" --upstream "$nginx/fixture" > "$work/gw.out" 2> "$work/gw.log" & pids+=($!)
for _ in $(seq 100); do grep -q listening "$work/gw.out" 2>/dev/null && break; sleep 0.1; done
gw=$(sed -n 's/^nixswarm gateway listening on //p' "$work/gw.out")
[ -n "$gw" ] || { cat "$work/gw.log" >&2; exit 1; }

realise() { # SUBSTITUTER DIR
  XDG_CACHE_HOME=$2/xdg nix-store --store "local?root=$2/root" --option substituters "$1" \
    --option trusted-public-keys "$key" --max-jobs 16 -r $(cat "$fixture/paths") >/dev/null 2>"$2.log"
}
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
now() { date +%s.%N; }

echo "warming the gateway's store (pull-through from nginx)..." >&2
curl -sf "$gw/$bighash.narinfo" >/dev/null || { echo "the gateway could not fetch from nginx: see $work (BENCH_KEEP=1)" >&2; exit 1; }
gwnar=$(curl -sf "$gw/$bighash.narinfo" | sed -n 's/^URL: //p')
curl -sf -o /dev/null "$gw/$gwnar"
realise "$gw" "$work/warm"
for _ in $(seq 100); do curl -sf "$gw/metrics" | grep -q '^nixswarm_store_paths 30$' && break; sleep 0.1; done

echo "1/3 NAR throughput..." >&2
thr() { for _ in $(seq "$RUNS"); do curl -sf -o /dev/null -w '%{speed_download}\n' "$1"; done | median; }
n_thr=$(thr "$nginx/big/$bignar"); g_thr=$(thr "$gw/$gwnar")

echo "2/3 narinfo requests/s..." >&2
rps() { wrk -t2 -c32 -d5s "$1" | awk '/Requests\/sec/ {print $2}'; }
n_rps=$(rps "$nginx/big/$bighash.narinfo"); g_rps=$(rps "$gw/$bighash.narinfo")

echo "3/3 nix-store -r of $(wc -l < "$fixture/paths") paths..." >&2
nixtime() { for i in $(seq "$RUNS"); do d=$work/nix-$2-$i; s=$(now); realise "$1" "$d"; e=$(now); rm -rf "$d"; echo "$e - $s" | bc -l; done | median; }
n_nix=$(nixtime "$nginx/fixture" nginx); g_nix=$(nixtime "$gw" gw)

ratio() { printf "%.2f" "$(echo "$1 / $2" | bc -l)"; }
mb() { echo "scale=0; $1 / 1048576" | bc -l; }
table=$(cat <<TABLE
| measurement | nginx | nixswarm gateway | ratio (gateway / nginx) | target |
|---|---|---|---|---|
| 256 MiB NAR from local store, MiB/s | $(mb "$n_thr") | $(mb "$g_thr") | $(ratio "$g_thr" "$n_thr") | >= 0.5 |
| narinfo requests/s (local hit) | ${n_rps%.*} | ${g_rps%.*} | $(ratio "$g_rps" "$n_rps") | >= 0.5 |
| nix-store -r, $(wc -l < "$fixture/paths") paths / $(du -sm "$fixture/cache" | cut -f1) MiB cache, seconds | $(printf %.2f "$n_nix") | $(printf %.2f "$g_nix") | $(ratio "$g_nix" "$n_nix") | <= 1.2 |
TABLE
)
echo "$table"
[ -z "${BENCH_OUT:-}" ] || echo "$table" > "$BENCH_OUT"
