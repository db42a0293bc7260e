# Evaluates nixos/module.nix without nixpkgs, for tests/tests/packaging.rs: a stub `lib` with just
# the functions the module calls, so its own logic (option declarations, assertions, the wrapper,
# the user service) can be checked where no nixpkgs is available. Option types and module merging
# are nixpkgs' job and are only exercised by `nix flake check`.
#
#   nix-instantiate --eval --strict --json tests/nix/module-eval.nix --argstr case <name>
{ case }:
let
  lib = {
    mkEnableOption = name: {
      kind = "enable";
      description = "Whether to enable ${name}.";
    };
    mkPackageOption = _pkgs: name: _args: {
      kind = "package";
      default = name;
    };
    mkOption = args: args // { kind = "option"; };
    types = {
      bool = "bool";
      path = "path";
      enum = values: { enum = values; };
      nullOr = type: { nullOr = type; };
    };
    mkIf = condition: content: { inherit condition content; };
    getExe = pkg: "${pkg}/bin/${pkg.meta.mainProgram}";
    inherit (builtins) any elem;
    hasPrefix = prefix: s: builtins.substring 0 (builtins.stringLength prefix) s == prefix;
  };

  package = {
    outPath = "/nix/store/00000000000000000000000000000000-locald";
    meta.mainProgram = "locald";
  };

  settings = {
    default = { };
    cgroup-v1 = {
      kernelParams = [ "systemd.unified_cgroup_hierarchy=0" ];
    };
    legacy-force = {
      kernelParams = [ "SYSTEMD_CGROUP_ENABLE_LEGACY_FORCE=1" ];
    };
    trust-without-cert = {
      trustCA = true;
    };
    trust-with-cert = {
      trustCA = true;
      caCertificate = "/etc/locald-ca.pem";
    };
    suffix-test = {
      domainSuffix = "test";
    };
  };
  chosen = settings.${case};

  config = {
    services.locald = {
      enable = true;
      inherit package;
      domainSuffix = chosen.domainSuffix or "localhost";
      trustCA = chosen.trustCA or false;
      caCertificate = chosen.caCertificate or null;
    };
    boot.kernelParams = chosen.kernelParams or [ "quiet" ];
  };

  module = import ../../nixos/module.nix {
    inherit config lib;
    pkgs = { };
  };
  out = module.config.content;
  service = out.systemd.user.services.locald;
in
{
  options = builtins.mapAttrs (_: o: o.kind) module.options.services.locald;
  suffixes = module.options.services.locald.domainSuffix.type.enum;
  enabledBy = module.config.condition;
  failedAssertions = map (a: a.message) (builtins.filter (a: !a.assertion) out.assertions);
  wrapper = out.security.wrappers.locald-shim;
  systemPackages = map toString out.environment.systemPackages;
  sessionSuffix = out.environment.sessionVariables.LOCALD_DOMAIN_SUFFIX;
  userService = {
    inherit (service) wantedBy;
    inherit (service.serviceConfig) ExecStart Delegate;
    suffix = service.environment.LOCALD_DOMAIN_SUFFIX;
  };
  trustedCertificates = if out.security.pki.certificateFiles.condition then out.security.pki.certificateFiles.content else [ ];
}
