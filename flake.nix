{
  description = "locald: a project's processes and containers at https://<name>.localhost";

  # nixpkgs is pinned in flake.lock to the nixos-26.05 branch at
  # 5880666fd9eb563038431edb35c2d0aa595884e6. That lock entry (rev, narHash, lastModified) was
  # not computed here: it is the one published by nix-community/home-manager in its flake.lock
  # at commit 65258d5c65a250189fde2e35f490d15e064c4c62 (branch release-26.05). nixos-26.05
  # carries a Rust new enough for the workspace (edition 2024, let-chains). To move the pin,
  # run `nix flake update` on a machine with Nix and network, never by editing the lock.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
        "x86_64-darwin"
        "aarch64-darwin"
      ];
      linuxSystems = lib.filter (lib.hasSuffix "-linux") systems;
      forSystems = list: f: lib.genAttrs list (system: f nixpkgs.legacyPackages.${system});
      forAllSystems = forSystems systems;

      version = (lib.importTOML ./Cargo.toml).workspace.package.version;

      # Only what cargo needs: every workspace member (cargo reads all their manifests), the
      # lock, and rustfmt's settings for the fmt check.
      src = lib.fileset.toSource {
        root = ./.;
        fileset = lib.fileset.unions [
          ./Cargo.toml
          ./Cargo.lock
          ./rustfmt.toml
          ./crates
          ./xtask
          ./tests
        ];
      };

      # One recipe for every cargo build of the workspace; `cargoLock` vendors Cargo.lock, so
      # nothing is fetched at build time.
      workspaceBuild =
        { rustPlatform }:
        args:
        rustPlatform.buildRustPackage (
          {
            inherit version src;
            cargoLock.lockFile = ./Cargo.lock;
          }
          // args
        );

      # locald and locald-shim. The tests run in checkPhase are the unit tests that need no
      # root and no daemon; the black-box and privileged suites (package locald-tests) run in
      # CI as root and, through vm-tests/scenarios, in the NixOS VM tests below.
      mkLocald =
        { lib, rustPlatform }:
        workspaceBuild { inherit rustPlatform; } {
          pname = "locald";
          cargoBuildFlags = [
            "-p"
            "locald"
            "-p"
            "locald-shim"
          ];
          cargoTestFlags = [
            "-p"
            "locald-core"
            "-p"
            "locald-shim-protocol"
            "--lib"
          ];
          meta = {
            description = "Runs a project's services at https://<name>.localhost, with one setuid helper";
            homepage = "https://github.com/locald-dev/locald";
            license = with lib.licenses; [
              mit
              asl20
            ];
            mainProgram = "locald";
            # On macOS processes run natively; container services need Linux and `up` says so,
            # pointing at the Lima profile (packages.lima).
            platforms = lib.platforms.linux ++ lib.platforms.darwin;
          };
        };

      # The shim alone: it builds on macOS too (its protocol crate is shared with the daemon),
      # where `bundle run` answers that containers need Linux.
      mkShim =
        { lib, rustPlatform }:
        workspaceBuild { inherit rustPlatform; } {
          pname = "locald-shim";
          cargoBuildFlags = [
            "-p"
            "locald-shim"
          ];
          cargoTestFlags = [
            "-p"
            "locald-shim-protocol"
            "--lib"
          ];
          meta = {
            description = "locald's setuid helper";
            license = with lib.licenses; [
              mit
              asl20
            ];
            mainProgram = "locald-shim";
            platforms = lib.platforms.unix;
          };
        };

      # The VM scenarios' test helpers: `shim-caller` plays the daemon's side of the shim protocol,
      # `proxy-probe` both ends of a request through the proxy.
      mkTestHelpers =
        { rustPlatform }:
        workspaceBuild { inherit rustPlatform; } {
          pname = "locald-test-helpers";
          cargoBuildFlags = [
            "-p"
            "locald-tests"
            "--bin"
            "shim-caller"
            "--bin"
            "proxy-probe"
          ];
          doCheck = false;
        };

      # macOS: `locald-lima` runs the Linux locald inside the Lima VM of lima/locald.yaml, for
      # projects with container services.
      mkLimaLocald =
        { writeShellApplication }:
        writeShellApplication {
          name = "locald-lima";
          text = ''
            export LOCALD_LIMA_PROFILE=${./lima/locald.yaml}
            ${builtins.readFile ./lima/locald-in-lima.sh}
          '';
        };
    in
    {
      overlays.default = final: prev: {
        locald = final.callPackage mkLocald { };
        locald-shim = final.callPackage mkShim { };
      }
      // lib.optionalAttrs prev.stdenv.hostPlatform.isDarwin {
        locald-lima = final.callPackage mkLimaLocald { };
      };

      # The module alone expects `pkgs.locald` (the overlay); through the flake it defaults to
      # this flake's build for the machine's platform.
      nixosModules.default =
        { pkgs, ... }:
        {
          imports = [ ./nixos/module.nix ];
          services.locald.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        };

      packages = forAllSystems (
        pkgs:
        if pkgs.stdenv.hostPlatform.isLinux then
          {
            default = pkgs.callPackage mkLocald { };
            locald-shim = pkgs.callPackage mkShim { };
            test-helpers = pkgs.callPackage mkTestHelpers { };
          }
        else
          {
            default = pkgs.callPackage mkLocald { };
            locald-shim = pkgs.callPackage mkShim { };
            lima = pkgs.callPackage mkLimaLocald { };
          }
      );

      # `nix run . -- up` is `locald up`; on macOS `nix run .#lima -- up` is the same inside the
      # Lima VM.
      apps = forAllSystems (
        pkgs:
        let
          packages = self.packages.${pkgs.stdenv.hostPlatform.system};
        in
        {
          default = {
            type = "app";
            program = lib.getExe packages.default;
            meta.description = "locald";
          };
        }
        // lib.optionalAttrs pkgs.stdenv.hostPlatform.isDarwin {
          lima = {
            type = "app";
            program = lib.getExe packages.lima;
            meta.description = "locald inside the Lima VM (container services on macOS)";
          };
        }
      );

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages =
            [
              pkgs.cargo
              pkgs.rustc
              pkgs.clippy
              pkgs.rustfmt
              pkgs.rust-analyzer
              pkgs.qemu
              pkgs.nixfmt
              pkgs.nix
              pkgs.shellcheck
            ]
            ++ lib.optionals pkgs.stdenv.hostPlatform.isLinux [
              # What `cargo xtask vm` packs into its initramfs.
              pkgs.cpio
              pkgs.kmod
              pkgs.pkgsStatic.busybox
            ]
            ++ lib.optionals pkgs.stdenv.hostPlatform.isDarwin [ pkgs.lima ];
        };
      });

      # nixfmt is the RFC 166 formatter (called nixfmt-rfc-style in nixpkgs before 25.11).
      formatter = forAllSystems (pkgs: pkgs.nixfmt);

      checks = forSystems linuxSystems (
        pkgs:
        let
          system = pkgs.stdenv.hostPlatform.system;
        in
        {
          package = self.packages.${system}.default;
          lint = workspaceBuild { inherit (pkgs) rustPlatform; } {
            pname = "locald-lint";
            nativeBuildInputs = [
              pkgs.clippy
              pkgs.rustfmt
            ];
            buildPhase = ''
              runHook preBuild
              cargo fmt --all --check
              cargo clippy --workspace --all-targets --offline -- -D warnings
              runHook postBuild
            '';
            doCheck = false;
            installPhase = "touch $out";
          };
        }
        // import ./vm-tests/nixos {
          inherit pkgs;
          locald = self.packages.${system}.default;
          testHelpers = self.packages.${system}.test-helpers;
          module = ./nixos/module.nix;
        }
      );
    };
}
