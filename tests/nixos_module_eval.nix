# Evaluates nixos-module/ with nixpkgs' real module system and option types
# (tests/nixpkgs-lib), as a NixOS system would, with `configuration` (a
# module) on top. The NixOS options the module sets are declared here with
# their NixOS types (list and attribute options merge as in NixOS); `pkgs`
# has only what the module uses, and builds nothing.
#
#   nix-instantiate --eval --strict --json tests/nixos_module_eval.nix \
#     --arg configuration '{ nixpkgsCache.contribution.enable = true; }'
{ configuration }:
let
  lib = import ./nixpkgs-lib/lib;
  inherit (lib) mkOption types;
  store = name: "/nix/store/00000000000000000000000000000000-${name}";
  pkgs = {
    formats.toml = { }: {
      type = types.attrsOf types.anything;
      generate = name: _: store name;
    };
    runCommand = name: _: _: store name;
    callPackage = _: _: throw "the module test builds no package";
  };
  nixos = {
    options = {
      assertions = mkOption {
        type = types.listOf types.unspecified;
        default = [ ];
      };
      nix.settings.substituters = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      environment.systemPackages = mkOption {
        type = types.listOf types.package;
        default = [ ];
      };
      networking.firewall = {
        allowedTCPPorts = mkOption {
          type = types.listOf types.port;
          default = [ ];
        };
        allowedUDPPorts = mkOption {
          type = types.listOf types.port;
          default = [ ];
        };
      };
      systemd.services = mkOption {
        type = types.attrsOf (types.attrsOf types.anything);
        default = { };
      };
      systemd.tmpfiles.rules = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      users.users = mkOption {
        type = types.attrsOf (types.attrsOf types.anything);
        default = { };
      };
      users.groups = mkOption {
        type = types.attrsOf (types.attrsOf types.anything);
        default = { };
      };
    };
    config = {
      _module.args.pkgs = pkgs;
      nixpkgsCache.contribution.package = {
        type = "derivation";
        name = "nixswarm";
        outPath = store "nixswarm";
        meta.mainProgram = "nixswarm";
      };
    };
  };
  config =
    (lib.evalModules {
      modules = [
        ../nixos-module
        nixos
        configuration
      ];
    }).config;
  service = config.systemd.services.nixswarm or { };
in
{
  failed = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
  settings = config.nixpkgsCache.contribution.finalSettings;
  serviceConfig = service.serviceConfig or { };
  unitConfig = service.unitConfig or { };
  tmpfiles = config.systemd.tmpfiles.rules;
  users = builtins.attrNames config.users.users;
  groups = builtins.attrNames config.users.groups;
  firewall = config.networking.firewall;
  substituters = config.nix.settings.substituters;
}
