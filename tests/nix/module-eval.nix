# Evaluates nixos/module.nix under nixpkgs' own module system (`lib.evalModules` of nixpkgs'
# lib/, given as `nixpkgsLib`), with tests/nix/nixos-options.nix declaring the NixOS options the
# module sets, and a user's configuration (a NixOS module) beside it, as a NixOS system would.
# For tests/tests/packaging.rs:
#
#   nix-instantiate --eval --strict --json tests/nix/module-eval.nix \
#     --argstr nixpkgsLib <path to nixpkgs' lib> \
#     --arg user '{ lib, ... }: { services.locald.enable = true; }' [--argstr entry flake]
#
# entry: "module" is nixos/module.nix with `pkgs.locald` (the flake's overlay); "flake" is the
# flake's nixosModules.default, which defaults the package to the flake's own build; "none" is
# no locald module at all (what "disabled" must be indistinguishable from).
{
  nixpkgsLib,
  user ? { },
  entry ? "module",
}:
let
  lib = import nixpkgsLib;
  system = "x86_64-linux";

  # Stand-ins for the packages: real derivations (so `types.package` and `lib.getExe` treat
  # them as nixpkgs would), never built.
  package =
    name:
    derivation {
      inherit name system;
      builder = "/bin/sh";
    }
    // {
      meta.mainProgram = "locald";
    };
  pkgs = {
    locald = package "locald";
    stdenv.hostPlatform.system = system;
  };
  flakePackage = package "locald-flake";

  # Only `lib` of nixpkgs is needed for this output of the flake.
  flake = (import ../../flake.nix).outputs {
    self.packages.${system}.default = flakePackage;
    nixpkgs = { inherit lib; };
  };

  locald =
    {
      module = [ ../../nixos/module.nix ];
      flake = [ flake.nixosModules.default ];
      none = [ ];
    }
    .${entry};

  eval = lib.evalModules {
    modules = [
      ./nixos-options.nix
      { _module.args.pkgs = pkgs; }
      user
    ]
    ++ locald;
  };
  inherit (eval) config options;
  failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
in
# A system with failed assertions is refused before anything else of it is evaluated
# (nixos/modules/system/activation/top-level.nix); so here only the messages are given.
if failedAssertions != [ ] then
  { inherit failedAssertions; }
else
  {
    inherit failedAssertions;
    packages = {
      pkgs = toString pkgs.locald;
      flake = toString flakePackage;
    };
    # Every NixOS option, with the module's own left out (only the module declares them).
    nixos = removeAttrs config [
      "_module"
      "services"
    ];
  }
  // lib.optionalAttrs (entry != "none") {
    locald = config.services.locald;
    optionTypes = lib.mapAttrs (_: o: o.type.name) options.services.locald;
    suffixes = options.services.locald.domainSuffix.type.functor.payload.values;
  }
