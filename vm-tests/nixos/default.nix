# The NixOS VM tests, wired into the flake's `checks` (`nix flake check` on Linux with KVM).
# One test per area, named `vm-<area>`, each a NixOS machine with services.locald enabled and a
# normal user `locald` logged in (lingering), running scenarios from ../scenarios: the very files
# `cargo xtask vm` runs in CI. To cover a new scenario, add its name to an area below (or a new
# area); tests/tests/packaging.rs fails while a scenario is in no area or an area names a
# scenario that does not exist.
{
  pkgs,
  locald,
  testHelpers,
  module,
}:
let
  inherit (pkgs) lib;

  areas = {
    # The wrapper is root-owned and setuid, the handshake passes, doctor trusts it.
    shim-handshake = [ "shim-handshake" ];
    # cgroup v2 delegation and cgroup.kill; a container with memory/pids limits through the shim;
    # a caller's pids.max holding inside its container; `locald up` of an image service with the
    # limits of its locald.toml; a user with a subuid/subgid allocation running an image user
    # (uid 101) with an idmapped volume and a plain one.
    containers = [
      "cgroup-v2"
      "container-limits"
      "container-nested"
      "container-service"
      "container-subid"
    ];
    # Ports 80 and 443 bound by the shim and handed to the unprivileged user; the proxy on them
    # answering HTTPS (HTTP/2, WebSockets, SSE, a streamed upload, status pages) with its CA.
    ports = [
      "bind-ports"
      "proxy-https"
    ];
    # A loop mount through the shim, ro,nosuid,nodev,noexec.
    loop-mount = [ "loop-mount" ];
    # `locald admin setup --ports-only`: only cap_net_bind_service, 80/443 and nothing else.
    ports-only = [ "ports-only" ];
  };

  scenarioTest =
    area: scenarios:
    pkgs.testers.runNixOSTest {
      name = "locald-${area}";
      nodes.machine = import ./machine.nix {
        inherit
          pkgs
          locald
          testHelpers
          module
          ;
      };
      testScript = ''
        machine.wait_for_unit("multi-user.target")
        machine.wait_for_unit("user@1000.service")
        machine.wait_for_unit("locald.service", "locald")
      ''
      + lib.optionalString (area == "shim-handshake") ''
        with subtest("the wrapper is root-owned and setuid, the store binary is not privileged"):
            machine.succeed("test -u /run/wrappers/bin/locald-shim")
            machine.succeed("test \"$(stat -L -c %u:%g /run/wrappers/bin/locald-shim)\" = 0:0")
            machine.fail("test -u ${locald}/bin/locald-shim")
            machine.fail("runuser -u locald -- ${locald}/bin/locald-shim admin sync-hosts x.localhost")
      ''
      + lib.concatMapStrings (scenario: ''
        with subtest("${scenario}"):
            machine.succeed("locald-scenario ${scenario}")
      '') scenarios;
    };

  missing = lib.filter (s: !builtins.pathExists (../scenarios + "/${s}.sh")) (
    lib.concatLists (lib.attrValues areas)
  );
in
assert lib.assertMsg (missing == [ ]) "vm-tests/nixos: no such scenario: ${toString missing}";
lib.mapAttrs' (area: scenarios: lib.nameValuePair "vm-${area}" (scenarioTest area scenarios)) areas
