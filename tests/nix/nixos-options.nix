# The NixOS options nixos/module.nix sets, declared the way nixpkgs declares them, so that
# tests/nix/module-eval.nix can evaluate the module under nixpkgs' real module system without a
# nixpkgs checkout. Minimal: only the options the module (or a test's user configuration) sets,
# but with nixpkgs' types, since the types decide how definitions merge and what is refused.
# Written for these tests; each block names the nixpkgs file whose declarations it mirrors.
# Left out on purpose: everything these options drive (activation scripts, unit files, the
# trust bundle), and the `PATH` that nixpkgs derives for a service from its `path`.
{ lib, ... }:
let
  inherit (lib) mkOption types;

  # nixos/modules/security/wrappers/default.nix: a chmod(1) mode, symbolic or numeric.
  chmodMode =
    let
      clause = "[ugoa]*([-+=]([rwxXst]*|[ugo]))+|[-+=][0-7]+";
    in
    types.strMatching "((${clause})(,${clause})*)|([-+=]?[0-7]{0,4})"
    // {
      description = "file mode string";
    };

  # nixos/modules/security/wrappers/default.nix: one wrapper under /run/wrappers/bin.
  wrapper = types.submodule (
    { name, ... }:
    {
      options = {
        enable = mkOption {
          type = types.bool;
          default = true;
        };
        source = mkOption { type = types.path; };
        program = mkOption {
          type = types.nullOr types.str;
          default = name;
        };
        # No default: nixpkgs makes every wrapper say who owns it.
        owner = mkOption { type = types.str; };
        group = mkOption { type = types.str; };
        permissions = mkOption {
          type = chmodMode;
          default = "u+rx,g+x,o+x";
        };
        capabilities = mkOption {
          type = types.commas;
          default = "";
        };
        setuid = mkOption {
          type = types.bool;
          default = false;
        };
        setgid = mkOption {
          type = types.bool;
          default = false;
        };
      };
    }
  );

  # nixos/lib/systemd-lib.nix (unitNameType): a unit name with its type suffix.
  unitName = types.strMatching "[a-zA-Z0-9@%:_.\\-]+[.](service|socket|device|mount|automount|swap|target|path|timer|scope|slice)";

  # nixos/lib/systemd-unit-options.nix (unitOption): a directive of a unit section. Lists are
  # repeated directives and concatenate; a single value must be defined once, or identically,
  # unless a priority (mkForce, mkDefault) picks one.
  unitOption = lib.mkOptionType {
    name = "systemd option";
    merge =
      loc: defs:
      let
        kept = lib.filterOverrides defs;
      in
      if lib.any (def: lib.isList def.value) kept then
        lib.concatMap (def: lib.toList def.value) kept
      else
        lib.mergeEqualOption loc kept;
  };

  # nixos/lib/systemd-unit-options.nix (checkService, through systemd-lib.nix's
  # checkUnitConfig): Type= and Restart= take only systemd's values. The check sees each
  # definition before merging, so a directive may still be wrapped in mkForce or mkIf.
  serviceSection =
    let
      allowed = {
        Type = [
          "exec"
          "simple"
          "forking"
          "oneshot"
          "dbus"
          "notify"
          "notify-reload"
          "idle"
        ];
        Restart = [
          "no"
          "on-success"
          "on-failure"
          "on-abnormal"
          "on-abort"
          "always"
        ];
      };
      unwrap = v: if lib.elem (v._type or "") [ "override" "if" ] then v.content else v;
      valid =
        section:
        lib.all (
          directive: !(section ? ${directive}) || lib.elem (unwrap section.${directive}) allowed.${directive}
        ) (lib.attrNames allowed);
    in
    types.addCheck (types.attrsOf unitOption) valid;

  listOfUnits = mkOption {
    type = types.listOf unitName;
    default = [ ];
  };

  # nixos/lib/systemd-unit-options.nix (sharedOptions, commonUnitOptions, serviceOptions) as
  # nixos/lib/systemd-types.nix assembles them into `services`.
  service = types.submodule {
    options = {
      enable = mkOption {
        type = types.bool;
        default = true;
      };
      description = mkOption {
        type = types.singleLineStr;
        default = "";
      };
      wantedBy = listOfUnits;
      requiredBy = listOfUnits;
      wants = listOfUnits;
      requires = listOfUnits;
      after = listOfUnits;
      before = listOfUnits;
      partOf = listOfUnits;
      environment = mkOption {
        type = types.attrsOf (
          types.nullOr (
            types.oneOf [
              types.str
              types.path
              types.package
            ]
          )
        );
        default = { };
      };
      path = mkOption {
        type = types.listOf (
          types.oneOf [
            types.package
            types.str
          ]
        );
        default = [ ];
      };
      unitConfig = mkOption {
        type = types.attrsOf unitOption;
        default = { };
      };
      serviceConfig = mkOption {
        type = serviceSection;
        default = { };
      };
    };
  };

  # nixos/modules/config/system-environment.nix: a session variable is a value or a list of
  # them, the list joined with colons.
  sessionValue = types.oneOf [
    types.int
    types.str
    types.path
  ];
in
{
  options = {
    # nixos/modules/misc/assertions.nix (enforced by nixos/modules/system/activation/top-level.nix;
    # module-eval.nix lists the failed ones instead of throwing).
    assertions = mkOption {
      type = types.listOf types.unspecified;
      default = [ ];
    };
    warnings = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };

    # nixos/modules/system/boot/kernel.nix: one parameter, spaces only inside double quotes.
    boot.kernelParams = mkOption {
      type = types.listOf (
        types.strMatching ''([^"[:space:]]|"[^"]*")+''
        // {
          name = "kernelParam";
        }
      );
      default = [ ];
    };

    # nixos/modules/config/system-path.nix.
    environment.systemPackages = mkOption {
      type = types.listOf types.package;
      default = [ ];
    };

    environment.sessionVariables = mkOption {
      type = types.attrsOf (types.either (types.listOf sessionValue) sessionValue);
      default = { };
      apply = lib.mapAttrs (_: v: if lib.isList v then lib.concatMapStringsSep ":" toString v else toString v);
    };

    # nixos/modules/security/wrappers/default.nix.
    security.wrappers = mkOption {
      type = types.attrsOf wrapper;
      default = { };
    };

    # nixos/modules/security/ca.nix.
    security.pki.certificateFiles = mkOption {
      type = types.listOf types.path;
      default = [ ];
    };

    # nixos/modules/system/boot/systemd/user.nix.
    systemd.user.services = mkOption {
      type = types.attrsOf service;
      default = { };
    };
  };
}
