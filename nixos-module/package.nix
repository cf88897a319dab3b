# The nixswarm package, built from this repository with its Cargo.lock.
{
  lib,
  rustPlatform,
}:
rustPlatform.buildRustPackage {
  pname = "nixswarm";
  version = "0.1.0";
  src = lib.cleanSource ../.;
  cargoLock.lockFile = ../Cargo.lock;
  cargoBuildFlags = [ "--bin" "nixswarm" ];
  # The test suite drives Debian's nix-bin and loopback networking; it runs
  # in CI (scripts/test.sh), not in the sandboxed build.
  doCheck = false;
  meta = {
    description = "Peer-to-peer distribution network for the Nix binary cache";
    license = with lib.licenses; [ mit asl20 ];
    mainProgram = "nixswarm";
    platforms = lib.platforms.linux;
  };
}
