# The nixswarm configuration (TOML, as an attribute set) that the module's
# options produce. Pure: builtins only, so a test can evaluate it with
# `nix-instantiate --eval --json` and no nixpkgs.
{
  contribute,
  amount,
  location,
  shareInstalledPaths,
  shareKeys,
  uploadLimit,
  listenPort,
  bootstrapPeers,
  gatewayPort,
  gatewayPriority,
}:
let
  port = toString listenPort;
  where = import ./location.nix location;
in
{
  # The node key and small state in the StateDirectory; the store (what
  # `amount` bounds) under `location`.
  data-dir = where.stateDir;
  gateway = {
    listen = "127.0.0.1:${toString gatewayPort}";
    priority = gatewayPriority;
  };
  store = {
    inherit amount;
    location = where.store;
  };
  # A contributing node keeps and shares what it fetches, and (unless
  # turned off) the signed paths installed in /nix/store. A download-only
  # machine shares and keeps nothing.
  donor = {
    contribute = if contribute then "cache" else "none";
    share-installed = shareInstalledPaths;
    # Only paths signed by these keys leave the machine, whatever else it
    # trusts; unsigned content-addressed paths never do.
    share-keys = shareKeys;
    nix-store-root = "/";
  };
  p2p =
    {
      # A contributing node answers the DHT and serves chunks; a
      # download-only machine runs its node as a client and listens nowhere.
      mode = if contribute then "auto" else "client";
      listen =
        if contribute then
          [
            "/ip4/0.0.0.0/tcp/${port}"
            "/ip6/::/tcp/${port}"
            "/ip4/0.0.0.0/udp/${port}/quic-v1"
            "/ip6/::/udp/${port}/quic-v1"
          ]
        else
          [ ];
      bootstrap = bootstrapPeers;
    }
    // (if uploadLimit == null then { } else { upload-limit = uploadLimit; });
}
