# A NixOS VM test (for people with Nix and network access; `nix flake
# check`): three contributing nodes and a download-only client, all with
# nothing but the module's options set. seed1 imports a signed cache built
# in the test; the client substitutes a path through its own gateway, which
# finds it on the seeds (mDNS on the test network), with its upstream
# pointed at nothing.
{ pkgs, self }:
let
  # A key pair only for this test.
  testPub = "nixswarm-vm-test-1:fKDer9JKNNFRYHaVTgfsjRUMuYk8r0dXQRm7HhPoElA=";
  testSec = "nixswarm-vm-test-1:wZ+74MARTA81BJkn1YBaJNBb3F/BkyBJ6uRG+1tKf6Z8oN6v0ko00VFgdpVOB+yNFQy5iTyvR1dBGbseE+gSUA==";
  common = {
    imports = [ self.nixosModules.default ];
    nixpkgsCache.contribution.settings.upstream = {
      urls = [ ];
      trusted-keys = [ testPub ];
    };
    # A swarm on one test LAN: its private addresses are the ones to dial.
    nixpkgsCache.contribution.settings.p2p.announce-private = true;
    # The test key stands for cache.nixos.org's: what it signed is shared.
    nixpkgsCache.contribution.shareKeys = [ testPub ];
    nix.settings.trusted-public-keys = [ testPub ];
    nix.settings.substituters = pkgs.lib.mkForce [ "http://127.0.0.1:37515" ];
    virtualisation.memorySize = 1024;
  };
  seed = {
    imports = [ common ];
    nixpkgsCache.contribution = {
      enable = true;
      openFirewall = true;
    };
  };
in
pkgs.testers.nixosTest {
  name = "nixswarm";
  nodes = {
    seed1 = seed;
    seed2 = seed;
    seed3 = seed;
    client = {
      imports = [ common ];
      nixpkgsCache.gateway.enable = true;
    };
  };
  testScript = ''
    start_all()
    for m in [seed1, seed2, seed3, client]:
        m.wait_for_unit("nixswarm.service")
        m.wait_for_open_port(37515)

    # A path built on seed1 only, signed into a binary cache, imported.
    seed1.succeed("echo '${testSec}' > /tmp/sk")
    path = seed1.succeed(
        "nix-build --option sandbox false -E 'derivation { name = \"swarm-test\"; system = builtins.currentSystem; "
        "builder = \"/bin/sh\"; args = [ \"-c\" \"echo hello from the swarm > $out\" ]; }'"
    ).strip()
    seed1.succeed(f"nix --extra-experimental-features nix-command copy --to 'file:///tmp/cache?secret-key=/tmp/sk' {path}")
    seed1.succeed("systemctl stop nixswarm")
    seed1.succeed(
        "${pkgs.lib.getExe self.packages.${pkgs.system}.default} import file:///tmp/cache "
        "--data-dir /var/lib/nixswarm --trusted-key ${testPub}"
    )
    seed1.succeed("systemctl start nixswarm")
    seed1.wait_for_open_port(37515)

    # The client finds it on the swarm and substitutes it through its gateway.
    client.wait_until_succeeds(f"nix-store -r {path}", timeout=120)
    client.succeed(f"grep 'hello from the swarm' {path}")
    client.succeed("nixswarm status | grep -q 'peers:'")
  '';
}
