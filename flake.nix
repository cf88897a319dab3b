{
  description = "nixswarm: a peer-to-peer distribution network for the Nix binary cache";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAll = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAll (pkgs: rec {
        nixswarm = pkgs.callPackage ./nixos-module/package.nix { };
        default = nixswarm;
      });

      overlays.default = final: _prev: { nixswarm = final.callPackage ./nixos-module/package.nix { }; };

      nixosModules.default = {
        imports = [ ./nixos-module ];
        nixpkgs.overlays = [ self.overlays.default ];
      };

      devShells = forAll (pkgs: {
        default = pkgs.mkShell {
          packages = with pkgs; [
            cargo
            rustc
            clippy
            rustfmt
            cargo-nextest
            nginx
            curl
          ];
        };
      });

      checks = forAll (pkgs: {
        vm = import ./nixos-module/vm-test.nix { inherit pkgs self; };
      });
    };
}
