# Where the module keeps the store, from `nixpkgsCache.contribution.location`.
# Pure (builtins only): the module and its test both use it.
#
# The node key and small state stay in the service's StateDirectory
# (/var/lib/nixswarm); the store (the chunks, what `amount` bounds) goes to
# `<location>/store`. The default location is that StateDirectory itself,
# so the default layout is unchanged.
location:
let
  # "/mnt/disk/" and "/mnt/disk" are the same directory.
  strip = s: if builtins.stringLength s > 1 && builtins.substring (builtins.stringLength s - 1) 1 s == "/" then strip (builtins.substring 0 (builtins.stringLength s - 1) s) else s;
  path = strip location;
  under = dir: path == dir || builtins.substring 0 (builtins.stringLength dir + 1) path == "${dir}/";
  stateDir = "/var/lib/nixswarm";
  opt = "nixpkgsCache.contribution.location";
in
{
  inherit path stateDir;
  store = "${path}/store";
  # Inside the StateDirectory systemd manages it; anywhere else the module
  # creates it and lets the service write there.
  own = !(under stateDir);
  problems =
    (if builtins.substring 0 1 path != "/" then [ "${opt} must be an absolute path, not \"${location}\"." ] else [ ])
    ++ (if path == "/" then [ "${opt} must be a directory of its own, not /." ] else [ ])
    ++ (if under "/nix/store" then [ "${opt} must not be inside /nix/store (\"${location}\"): Nix owns it and mounts it read-only." ] else [ ])
    ++ (if under "/tmp" || under "/var/tmp" then [ "${opt} must not be under /tmp or /var/tmp (\"${location}\"): the service has a private /tmp, and the cache would not survive." ] else [ ])
    ++ (if under "/home" || under "/root" || under "/run/user" then [ "${opt} must not be under /home, /root or /run/user (\"${location}\"): the service runs with ProtectHome and cannot see them." ] else [ ]);
}
