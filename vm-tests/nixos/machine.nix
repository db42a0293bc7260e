# The machine of every NixOS VM test: services.locald as a user would enable it, a normal user
# `locald` (uid 1000, as in the QEMU harness) whose session is up from boot, and the scenario
# runner `locald-scenario NAME`.
{
  pkgs,
  locald,
  testHelpers,
  module,
}:
let
  runner = pkgs.writeShellApplication {
    name = "locald-scenario";
    runtimeInputs = [
      pkgs.coreutils
      pkgs.gnused
      pkgs.util-linux
    ];
    text = ''
      export LOCALD_SCENARIOS=${../scenarios}
      ${builtins.readFile ./run-scenario.sh}
    '';
  };
in
{
  imports = [ module ];

  services.locald = {
    enable = true;
    package = locald;
  };

  users.users.locald = {
    isNormalUser = true;
    uid = 1000;
    linger = true;
  };

  environment.systemPackages = [
    testHelpers
    runner
    pkgs.e2fsprogs
    # getcap, for ports-only.
    pkgs.libcap
  ];

  # container-limits copies /bin/busybox into its container's rootfs, so it must be static.
  systemd.tmpfiles.rules = [ "L+ /bin/busybox - - - - ${pkgs.pkgsStatic.busybox}/bin/busybox" ];

  virtualisation.memorySize = 2048;
}
