# Defaults of the nixpkgsCache options, in one place: used by the module's
# option declarations and by the test that checks the generated settings
# with `nixswarm check-config` (it evaluates this without nixpkgs).
{
  amount = "10G";
  location = "/var/lib/nixswarm";
  shareInstalledPaths = true;
  shareKeys = [ "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=" ];
  uploadLimit = null;
  listenPort = 37516;
  openFirewall = false;
  bootstrapPeers = [ ];
  gatewayPort = 37515;
  gatewayPriority = 30;
}
