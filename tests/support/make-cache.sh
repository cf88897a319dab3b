#!/usr/bin/env bash
# Builds a signed binary cache with the real Nix (Debian's nix-bin) for the
# end-to-end tests and benchmarks: 29 input-addressed store paths with
# references between them, from a few bytes to 20 MB, some xz- and some
# zstd-compressed. Idempotent and safe to call concurrently.
#
# usage: make-cache.sh OUT
#   OUT/cache            signed by OUT/keys/trusted.{sec,pub}
#   OUT/cache-untrusted  the same paths, signed by OUT/keys/untrusted.{sec,pub}
#   OUT/paths            every store path, one per line
#   OUT/store            the chroot store they were built in
set -euo pipefail
out=${1:?usage: make-cache.sh OUT}
mkdir -p "$out"
exec 9>"$out.lock"
flock 9
[ -e "$out/done" ] && exit 0
rm -rf "${out:?}"/*
command -v nix-build >/dev/null || { echo "nix-build not found: install nix-bin (scripts/test.sh does)" >&2; exit 1; }

export XDG_CACHE_HOME="$out/xdg-cache"
export NIX_CONFIG=$'build-users-group =\nsubstituters ='
store="local?root=$out/store"
nixopts=(--option substituters "" --option build-users-group "" --option sandbox true
  --option extra-sandbox-paths "/bin /usr /lib /lib64" --max-jobs 4)
mkdir -p "$out/keys"
nix-store --generate-binary-cache-key nixswarm-test-1 "$out/keys/trusted.sec" "$out/keys/trusted.pub"
nix-store --generate-binary-cache-key nixswarm-untrusted-1 "$out/keys/untrusted.sec" "$out/keys/untrusted.pub"

cat > "$out/paths.nix" <<'NIX'
let
  mk = name: script: derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" ("export PATH=/usr/bin:/bin; set -e; " + script) ];
  };
  at = builtins.elemAt;
  s = toString;
  leaves = builtins.genList (i: mk "leaf-${s i}" "printf 'leaf ${s i}' > $out") 10;
  mids = builtins.genList (i: mk "mid-${s i}" ''
    mkdir -p $out/bin $out/share
    echo ${at leaves i} ${at leaves (9 - i)} > $out/share/refs
    head -c ${s ((i + 1) * 37000)} /dev/urandom > $out/bin/blob
    chmod +x $out/bin/blob
    seq 1 ${s ((i + 1) * 3000)} > $out/share/text
    ln -s ../share/text $out/bin/link
  '') 10;
  xz = builtins.genList (i: mk "xz-${s i}" ''
    mkdir $out
    echo ${at mids i} > $out/ref
    seq 1 ${s ((i + 1) * 20000)} > $out/numbers
    head -c 200000 /dev/urandom > $out/rand
  '') 6;
  big = [
    (mk "big-20m" "head -c 20000000 /dev/urandom > $out")
    (mk "big-text" "mkdir $out; echo ${at mids 0} > $out/ref; seq 1 1500000 > $out/seq")
  ];
  top = mk "top" "mkdir $out; echo ${toString (mids ++ xz ++ big)} > $out/all";
in { zstd = leaves ++ mids ++ big; xz = xz ++ [ top ]; }
NIX

build() { nix-build --store "$store" "${nixopts[@]}" --no-out-link "$out/paths.nix" -A "$1" 2>"$out/build-$1.log"; }
zstd_paths=$(build zstd)
xz_paths=$(build xz)
copy() { # DEST-URL-PARAMS PATHS...
  local params=$1; shift
  nix --extra-experimental-features nix-command copy --store "$store" --to "file://$params" "$@" 2>>"$out/copy.log"
}
# zstd first: the xz paths' closures are then already in the cache and stay zstd.
copy "$out/cache?compression=zstd&secret-key=$out/keys/trusted.sec" $zstd_paths
copy "$out/cache?compression=xz&compression-level=0&secret-key=$out/keys/trusted.sec" $xz_paths
copy "$out/cache-untrusted?compression=zstd&secret-key=$out/keys/untrusted.sec" $zstd_paths $xz_paths
printf '%s\n' $zstd_paths $xz_paths > "$out/paths"
touch "$out/done"
