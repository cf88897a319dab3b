# The nixswarm NixOS module. All a user writes:
#
#   nixpkgsCache.contribution.enable = true;
#
# That runs a node (sharing what this machine fetched, within `amount`) and
# its gateway on 127.0.0.1, and puts the gateway ahead of cache.nixos.org
# in nix.settings.substituters. `nixpkgsCache.gateway.enable = true` alone
# gives a download-only machine.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib)
    literalExpression
    mkEnableOption
    mkIf
    mkOption
    types
    ;
  cfg = config.nixpkgsCache;
  contrib = cfg.contribution;
  defaults = import ./defaults.nix;
  settingsFormat = pkgs.formats.toml { };
  generated = import ./settings.nix {
    contribute = contrib.enable;
    inherit (contrib)
      amount
      location
      shareInstalledPaths
      shareKeys
      uploadLimit
      listenPort
      bootstrapPeers
      ;
    gatewayPort = cfg.gateway.port;
    gatewayPriority = cfg.gateway.priority;
  };
  where = import ./location.nix contrib.location;
  finalSettings = lib.recursiveUpdate generated contrib.settings;
  configFile = settingsFormat.generate "nixswarm.toml" finalSettings;
  # Refuse a configuration nixswarm would refuse, at build time.
  checkedConfig = pkgs.runCommand "nixswarm-config-checked.toml" { } ''
    ${lib.getExe contrib.package} check-config --config ${configFile} > /dev/null
    cp ${configFile} $out
  '';
  gatewayUrl = "http://127.0.0.1:${toString cfg.gateway.port}";
in
{
  options.nixpkgsCache = {
    contribution = {
      enable = mkEnableOption ''
        contributing to nixswarm, the peer-to-peer distribution network for
        the Nix binary cache: run a node that shares verified store paths
        with peers, within `amount` of disk and `uploadLimit` of upload
      '';

      amount = mkOption {
        type = types.strMatching "[0-9]+(\\.[0-9]+)?([KMGTkmgt]?(i?B)?|%)";
        default = defaults.amount;
        example = "100%";
        description = ''
          Most disk space the store keeps: a size (K, M, G and T are powers
          of 1024) or a percentage of the filesystem holding `location`.
          A percentage is of what a plain user may fill there, less a
          reserve that always stays free (1% of the filesystem, at least
          256 MiB and at most 8 GiB): `"100%"` of a dedicated disk fills it
          up to that reserve and no further. On a disk shared with other
          data the store also evicts to keep the reserve free as the other
          data grows. Least recently used paths are evicted first.
        '';
      };

      location = mkOption {
        type = types.str;
        default = defaults.location;
        example = "/mnt/nixpkgsDisk/";
        description = ''
          The directory for the store, on a dedicated disk or volume if you
          like (a trailing slash is fine). The store goes to
          `<location>/store`; the node key and small state stay in
          /var/lib/nixswarm. Anywhere other than /var/lib/nixswarm, the
          directory is created (or taken over) for the `nixswarm` user and
          made the only place outside /var/lib/nixswarm the service may
          write; the service waits for its mount. It must be absolute and
          outside /nix/store, /tmp, /var/tmp, /home, /root and /run/user.
        '';
      };

      shareInstalledPaths = mkOption {
        type = types.bool;
        default = defaults.shareInstalledPaths;
        example = false;
        description = ''
          Also share the paths installed in this machine's /nix/store, read
          straight from their files (no second copy). Only paths signed by
          a share key (`shareKeys`) are ever shared: never what this machine
          built or added itself.
        '';
      };

      shareKeys = mkOption {
        type = types.listOf types.str;
        default = defaults.shareKeys;
        example = [ "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=" ];
        description = ''
          Keys (`name:base64`) whose signature lets a path leave this
          machine. Trusting a key (`settings.upstream.trusted-keys`, to use
          a private cache) is not sharing what it signed: a path signed only
          by a key not listed here is never announced or served, and the
          narinfos sent to peers carry only these keys' signatures.
        '';
      };

      uploadLimit = mkOption {
        type = types.nullOr (types.strMatching "[0-9]+(\\.[0-9]+)?[KMGTkmgt]?(i?B)?(/s)?");
        default = defaults.uploadLimit;
        example = "20M";
        description = "Upload limit for serving peers, per second (K, M, G are powers of 1024); \"0\" for none; null for the node's default (5M).";
      };

      listenPort = mkOption {
        type = types.port;
        default = defaults.listenPort;
        example = 4001;
        description = "TCP and UDP (QUIC) port the node listens on for peers.";
      };

      openFirewall = mkOption {
        type = types.bool;
        default = defaults.openFirewall;
        example = true;
        description = "Open `listenPort` (TCP and UDP) in the firewall so peers can reach this node.";
      };

      bootstrapPeers = mkOption {
        type = types.listOf types.str;
        default = defaults.bootstrapPeers;
        example = [ "/dns4/seed.example.org/tcp/37516/p2p/12D3KooWExample" ];
        description = "Multiaddrs (with /p2p/<peer id>) of nodes to join the swarm through. Peers on the LAN are found with mDNS.";
      };

      package = mkOption {
        type = types.package;
        default = pkgs.nixswarm or (pkgs.callPackage ./package.nix { });
        defaultText = literalExpression "pkgs.nixswarm";
        description = "The nixswarm package.";
      };

      finalSettings = mkOption {
        type = types.attrsOf types.anything;
        internal = true;
        readOnly = true;
        default = finalSettings;
        description = "The configuration written to nixswarm.toml: what the options generate, with `settings` merged over it.";
      };

      settings = mkOption {
        type = settingsFormat.type;
        default = { };
        example = {
          upstream.urls = [ "https://cache.nixos.org" ];
          p2p.lookup-budget = "30ms";
        };
        description = ''
          Free-form nixswarm configuration (see config.example.toml in the
          nixswarm sources), merged over what the options above generate.
          Checked with `nixswarm check-config` when the system is built.
        '';
      };
    };

    gateway = {
      enable = mkOption {
        type = types.bool;
        default = contrib.enable;
        defaultText = literalExpression "config.nixpkgsCache.contribution.enable";
        example = true;
        description = ''
          Run the gateway (a Nix substituter on 127.0.0.1) and put it ahead
          of cache.nixos.org in nix.settings.substituters. On by default when
          contributing; enable it alone on machines that only download.
        '';
      };

      port = mkOption {
        type = types.port;
        default = defaults.gatewayPort;
        example = 8080;
        description = "Port of the gateway on 127.0.0.1.";
      };

      priority = mkOption {
        type = types.ints.unsigned;
        default = defaults.gatewayPriority;
        example = 10;
        description = "Priority the gateway announces to Nix (lower is tried first; cache.nixos.org is 40).";
      };
    };
  };

  config = mkIf (contrib.enable || cfg.gateway.enable) {
    assertions = map (message: {
      assertion = false;
      inherit message;
    }) where.problems;

    # The gateway first; cache.nixos.org (added by NixOS with mkAfter) stays
    # behind it as the fallback. Trusted keys are unchanged: the gateway
    # passes the central cache's signatures through.
    nix.settings.substituters = mkIf cfg.gateway.enable (lib.mkBefore [ gatewayUrl ]);

    # `nixswarm status` for the administrator.
    environment.systemPackages = [ contrib.package ];

    networking.firewall = mkIf (contrib.enable && contrib.openFirewall) {
      allowedTCPPorts = [ contrib.listenPort ];
      allowedUDPPorts = [ contrib.listenPort ];
    };

    # A static user (not DynamicUser): it owns `location`, which may be on
    # another disk, across restarts.
    users.users.nixswarm = {
      isSystemUser = true;
      group = "nixswarm";
      description = "nixswarm peer-to-peer Nix cache";
    };
    users.groups.nixswarm = { };

    # `location` outside the StateDirectory: created, or taken over (the
    # root of a freshly formatted disk), for the service's user.
    systemd.tmpfiles.rules = lib.optional where.own "d ${where.path} 0750 nixswarm nixswarm - -";

    systemd.services.nixswarm = {
      description = "nixswarm peer-to-peer Nix cache node and gateway";
      wantedBy = [ "multi-user.target" ];
      after = [ "network-online.target" ];
      wants = [ "network-online.target" ];
      # A dedicated disk is mounted first.
      unitConfig.RequiresMountsFor = lib.optional where.own where.path;
      serviceConfig = {
        ExecStart = "${lib.getExe contrib.package} run --config ${checkedConfig}";
        Restart = "on-failure";
        RestartSec = 5;
        User = "nixswarm";
        Group = "nixswarm";
        StateDirectory = "nixswarm";
        StateDirectoryMode = "0700";
        # Read-only access to the store and the Nix database; writes only
        # to the StateDirectory and `location`.
        ProtectSystem = "strict";
        ReadOnlyPaths = [
          "/nix/store"
          "/nix/var/nix/db"
        ];
        ReadWritePaths = lib.optional where.own where.path;
        ProtectHome = true;
        PrivateTmp = true;
        PrivateDevices = true;
        NoNewPrivileges = true;
        CapabilityBoundingSet = "";
        AmbientCapabilities = "";
        RestrictAddressFamilies = [
          "AF_INET"
          "AF_INET6"
          "AF_UNIX"
          "AF_NETLINK"
        ];
        SystemCallFilter = [ "@system-service" ];
        SystemCallArchitectures = "native";
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        ProtectClock = true;
        ProtectHostname = true;
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        UMask = "0077";
        # A background service: bounded memory, yields disk to the user.
        MemoryMax = "1G";
        IOWeight = 20;
        Nice = 10;
      };
    };
  };
}
