# services.locald: the shim as a NixOS security wrapper (setuid, or only cap_net_bind_service), and a per-user daemon as a
# systemd user service. The daemon runs as each user and never as root; only the wrapper
# /run/wrappers/bin/locald-shim is privileged, and that is the path locald's shim discovery looks
# for first (a store path can never be setuid).
#
# Name resolution: NixOS owns /etc/hosts (a link into the store), and nss-myhostname, which NixOS
# enables by default, already resolves every *.localhost name to loopback. This module therefore
# leaves /etc/hosts alone, and the shim refuses to rewrite a linked /etc/hosts in any case;
# `locald doctor` reports how *.localhost resolves (check dns.localhost). Names under another
# suffix need a resolver configured in NixOS (see domainSuffix).
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.services.locald;
in
{
  options.services.locald = {
    enable = lib.mkEnableOption "locald, which runs each user's project services at https://<name>.localhost";

    package = lib.mkPackageOption pkgs "locald" { };

    domainSuffix = lib.mkOption {
      type = lib.types.enum [
        "localhost"
        "test"
      ];
      default = "localhost";
      example = "test";
      description = ''
        The suffix of the names locald gives projects (`<project>.<suffix>`), passed to the daemon
        and the CLI as `LOCALD_DOMAIN_SUFFIX`. Only suffixes reserved for local use are accepted,
        the same ones the shim accepts. `localhost` needs nothing more: nss-myhostname resolves it.
        Any other suffix must be resolved to loopback by the system (for example with
        `services.dnsmasq.settings.address = [ "/test/127.0.0.1" ]`), because NixOS manages
        /etc/hosts and locald does not edit it here.
      '';
    };

    trustCA = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = ''
        Whether to add locald's certificate authority to the system trust store, so the HTTPS
        names locald serves are trusted by every program using it. The CA is made per user when
        the daemon first starts; give its certificate (`ca.pem` from that user's locald data
        directory) in {option}`services.locald.caCertificate`. The CA carries name constraints:
        it can only issue for localhost, the local suffixes and loopback addresses.
      '';
    };

    privilege = lib.mkOption {
      type = lib.types.enum [
        "setuid"
        "capabilities"
      ];
      default = "setuid";
      example = "capabilities";
      description = ''
        How the shim wrapper /run/wrappers/bin/locald-shim is privileged. `setuid` (root) serves
        everything locald asks of root: ports 80/443, containers, loop mounts, removing root-owned
        leftovers. `capabilities` gives the wrapper only `cap_net_bind_service` and no setuid bit
        (the `locald admin setup --ports-only` install): the shim then binds ports 1-1023 on
        loopback and refuses every other request, so projects with container services do not
        start (`locald doctor` reports the mode as `shim.mode`).
      '';
    };

    caCertificate = lib.mkOption {
      type = lib.types.nullOr lib.types.path;
      default = null;
      description = "The PEM certificate of locald's CA, trusted system-wide when {option}`services.locald.trustCA` is set.";
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        # Containers and per-service limits need the unified hierarchy. NixOS dropped the
        # option that selected cgroup v1 (systemd 256 refuses it); what remains is the kernel
        # parameter.
        assertion =
          !(lib.any (lib.hasPrefix "systemd.unified_cgroup_hierarchy=0") config.boot.kernelParams)
          && !(lib.elem "SYSTEMD_CGROUP_ENABLE_LEGACY_FORCE=1" config.boot.kernelParams);
        message = "services.locald needs the unified cgroup hierarchy (cgroup v2): remove systemd.unified_cgroup_hierarchy=0 and SYSTEMD_CGROUP_ENABLE_LEGACY_FORCE=1 from boot.kernelParams.";
      }
      {
        assertion = cfg.trustCA -> cfg.caCertificate != null;
        message = "services.locald.trustCA needs services.locald.caCertificate (the ca.pem of locald's CA).";
      }
    ];

    environment.systemPackages = [ cfg.package ];

    # Found by the daemon at /run/wrappers/bin/locald-shim. With capabilities the wrapper raises
    # its file capability into the ambient set before it runs the shim, which then holds exactly
    # cap_net_bind_service, the shim's sign of the ports-only install.
    security.wrappers.locald-shim = {
      setuid = cfg.privilege == "setuid";
      capabilities = lib.mkIf (cfg.privilege == "capabilities") "cap_net_bind_service+ep";
      owner = "root";
      group = "root";
      source = "${cfg.package}/bin/locald-shim";
    };

    environment.sessionVariables.LOCALD_DOMAIN_SUFFIX = cfg.domainSuffix;

    security.pki.certificateFiles = lib.mkIf cfg.trustCA [ cfg.caCertificate ];

    # One daemon per user, started with the user's session; the CLI would otherwise start it on
    # demand. Delegate=yes hands the unit's cgroup to the daemon, which puts each service in a
    # cgroup of its own (stop = cgroup.kill, nothing escapes).
    systemd.user.services.locald = {
      description = "locald, this user's project services";
      wantedBy = [ "default.target" ];
      environment.LOCALD_DOMAIN_SUFFIX = cfg.domainSuffix;
      serviceConfig = {
        ExecStart = "${lib.getExe cfg.package} server start";
        Restart = "on-failure";
        Delegate = "yes";
      };
    };
  };
}
