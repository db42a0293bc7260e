//! nixos/module.nix under nixpkgs' own module system: tests/nix/module-eval.nix evaluates it with
//! nixpkgs' real `lib` (`lib.evalModules`, its types, priorities and merging) beside a user's
//! configuration, with tests/nix/nixos-options.nix declaring the NixOS options it sets as nixpkgs
//! types them. nixpkgs' `lib` comes from outside the repository (../shared/nixpkgs-lib, see its
//! README); where it is missing CI fails, and elsewhere these tests say loudly that they did not
//! run (`nix flake check` on a machine with Nix is the full check there).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::{Value as Json, json};

use super::{nix_instantiate, repo, run};

/// An explicit nixpkgs `lib/` directory; without it, `shared/nixpkgs-lib/lib` beside the clone.
const LIB_VAR: &str = "LOCALD_NIXPKGS_LIB";

/// Set by CI runners (`.ci/run` sets LOCALD_REQUIRE_PRIVILEGED=1): a missing library fails there.
fn strict() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
        || std::env::var(locald_tests::REQUIRE_PRIVILEGED).as_deref() == Ok("1")
}

/// nixpkgs' `lib/`, or `None` after a loud SKIPPED line when it cannot be found and the run is
/// not strict.
fn nixpkgs_lib() -> Option<&'static PathBuf> {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = FOUND.get_or_init(|| {
        let beside = repo().parent().expect("the clone has a parent").join("shared/nixpkgs-lib/lib");
        match std::env::var_os(LIB_VAR).map(PathBuf::from) {
            // A wrong explicit path is a mistake to fix, never a reason to skip or look elsewhere.
            Some(path) => {
                assert!(
                    path.join("default.nix").is_file(),
                    "${LIB_VAR}={} has no default.nix",
                    path.display()
                );
                Ok(path)
            }
            None if beside.join("default.nix").is_file() => Ok(beside),
            None => Err(format!(
                "nixpkgs' lib, needed to evaluate nixos/module.nix, is neither at ${LIB_VAR} (unset) \
                 nor at {} (no default.nix)",
                beside.display()
            )),
        }
    });
    match found {
        Ok(path) => Some(path),
        Err(missing) if strict() => panic!("{missing}"),
        Err(missing) => {
            eprintln!(
                "SKIPPED: {missing} (CI=true or {}=1 make this a failure)",
                locald_tests::REQUIRE_PRIVILEGED
            );
            None
        }
    }
}

/// Evaluates a system of the options of tests/nix/nixos-options.nix, `entry` (see
/// module-eval.nix) and `user`, a NixOS module in Nix; the evaluation's error text when it fails.
fn eval(lib: &Path, entry: &str, user: &str) -> Result<Json, String> {
    let out = run(nix_instantiate()
        .args(["--eval", "--strict", "--json"])
        .arg(repo().join("tests/nix/module-eval.nix"))
        .arg("--argstr")
        .arg("nixpkgsLib")
        .arg(lib)
        .args(["--argstr", "entry", entry, "--arg", "user", user]));
    if out.status.success() {
        // nixpkgs' lib reports deprecated use (a package without meta.mainProgram for getExe, a
        // renamed function) as evaluation warnings: on a user's machine they would be the first
        // sign of breakage, so here they are failures.
        let printed = String::from_utf8_lossy(&out.stderr);
        assert!(printed.trim().is_empty(), "{entry} {user}: the evaluation printed:\n{printed}");
        Ok(serde_json::from_slice(&out.stdout).expect("module evaluation JSON"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A user's configuration that enables locald, plus `more` (Nix attributes, `lib` in scope).
fn enabled(more: &str) -> String {
    format!("{{ lib, pkgs, ... }}: {{ services.locald.enable = true; {more} }}")
}

fn system(lib: &Path, user: &str) -> Json {
    eval(lib, "module", user).unwrap_or_else(|e| panic!("{user}:\n{e}"))
}

fn refused(lib: &Path, user: &str) -> String {
    match eval(lib, "module", user) {
        Ok(json) => panic!("{user} evaluated, NixOS would refuse it: {json}"),
        Err(e) => e,
    }
}

fn service(eval: &Json) -> &Json {
    &eval["nixos"]["systemd"]["user"]["services"]["locald"]
}

#[test]
fn the_disabled_module_sets_no_nixos_option() {
    let Some(lib) = nixpkgs_lib() else { return };
    let without = eval(lib, "none", "{ }").unwrap()["nixos"].clone();
    assert_eq!(without["security"]["wrappers"], json!({}), "{without}");
    // Settings that would fail assertions or add a certificate do nothing while disabled.
    let settings = "services.locald = { trustCA = true; domainSuffix = \"test\"; }; \
                    boot.kernelParams = [ \"systemd.unified_cgroup_hierarchy=0\" ];";
    for entry in ["module", "flake"] {
        for user in ["{ }".to_owned(), format!("{{ {settings} }}")] {
            let disabled = eval(lib, entry, &user).unwrap_or_else(|e| panic!("{entry} {user}: {e}"));
            assert_eq!(disabled["failedAssertions"], json!([]), "{entry} {user}");
            let mut expected = without.clone();
            if user != "{ }" {
                expected["boot"]["kernelParams"] = json!(["systemd.unified_cgroup_hierarchy=0"]);
            }
            assert_eq!(disabled["nixos"], expected, "{entry} {user}: the disabled module set something");
        }
    }
}

#[test]
fn the_enabled_module_installs_the_setuid_wrapper_and_a_delegated_user_daemon() {
    let Some(lib) = nixpkgs_lib() else { return };
    let eval = system(lib, &enabled(""));
    let package = eval["packages"]["pkgs"].as_str().unwrap();
    assert_eq!(eval["locald"]["package"], package, "the package defaults to pkgs.locald");
    assert_eq!(
        eval["optionTypes"],
        json!({"enable": "bool", "package": "package", "domainSuffix": "enum", "trustCA": "bool", "privilege": "enum", "caCertificate": "nullOr"})
    );
    assert_eq!(eval["failedAssertions"], json!([]));
    let nixos = &eval["nixos"];
    assert_eq!(nixos["warnings"], json!([]));
    // Every field of the wrapper, nixpkgs' defaults included: setuid root, nothing else.
    assert_eq!(
        nixos["security"]["wrappers"],
        json!({"locald-shim": {
            "enable": true, "program": "locald-shim", "source": format!("{package}/bin/locald-shim"),
            "owner": "root", "group": "root", "setuid": true, "setgid": false,
            "permissions": "u+rx,g+x,o+x", "capabilities": "",
        }})
    );
    // The daemon finds the wrapper where NixOS puts it.
    assert_eq!(locald_daemon::shim::NIXOS_WRAPPER, "/run/wrappers/bin/locald-shim");
    assert_eq!(nixos["environment"]["systemPackages"], json!([package]));
    assert_eq!(nixos["environment"]["sessionVariables"], json!({"LOCALD_DOMAIN_SUFFIX": "localhost"}));
    assert_eq!(nixos["security"]["pki"]["certificateFiles"], json!([]));
    let services = &nixos["systemd"]["user"]["services"];
    assert_eq!(services.as_object().unwrap().len(), 1, "{services}");
    let service = service(&eval);
    assert_eq!(
        service["serviceConfig"],
        json!({"ExecStart": format!("{package}/bin/locald server start"), "Delegate": "yes", "Restart": "on-failure"})
    );
    assert_eq!(service["wantedBy"], json!(["default.target"]));
    assert_eq!(service["environment"], json!({"LOCALD_DOMAIN_SUFFIX": "localhost"}));
    assert_eq!(service["enable"], true);
    assert!(service["description"].as_str().is_some_and(|d| d.starts_with("locald")), "{service}");

    let trusted = system(
        lib,
        &enabled("services.locald = { trustCA = true; caCertificate = \"/etc/locald-ca.pem\"; };"),
    );
    assert_eq!(trusted["nixos"]["security"]["pki"]["certificateFiles"], json!(["/etc/locald-ca.pem"]));
}

#[test]
fn privilege_maps_to_a_setuid_or_a_capability_only_wrapper() {
    let Some(lib) = nixpkgs_lib() else { return };
    let wrapper = |eval: &Json| eval["nixos"]["security"]["wrappers"]["locald-shim"].clone();
    let default = system(lib, &enabled(""));
    let setuid = system(lib, &enabled("services.locald.privilege = \"setuid\";"));
    assert_eq!(default["locald"]["privilege"], "setuid");
    assert_eq!(wrapper(&setuid), wrapper(&default), "setuid is the default");
    assert_eq!((&wrapper(&setuid)["setuid"], &wrapper(&setuid)["capabilities"]), (&json!(true), &json!("")));

    let caps = system(lib, &enabled("services.locald.privilege = \"capabilities\";"));
    assert_eq!(caps["failedAssertions"], json!([]));
    let package = caps["packages"]["pkgs"].as_str().unwrap();
    // Every field: not setuid or setgid, only the bind capability, root-owned, the same program.
    assert_eq!(
        wrapper(&caps),
        json!({
            "enable": true, "program": "locald-shim", "source": format!("{package}/bin/locald-shim"),
            "owner": "root", "group": "root", "setuid": false, "setgid": false,
            "permissions": "u+rx,g+x,o+x", "capabilities": "cap_net_bind_service+ep",
        })
    );
    // Nothing else of the system differs.
    let (mut a, mut b) = (default["nixos"].clone(), caps["nixos"].clone());
    a["security"]["wrappers"] = json!(null);
    b["security"]["wrappers"] = json!(null);
    assert_eq!(a, b);

    for bad in ["root", "cap_net_bind_service", "", "Setuid"] {
        let error = refused(lib, &enabled(&format!("services.locald.privilege = \"{bad}\";")));
        assert!(
            error.contains("services.locald.privilege") && error.contains("is not of type"),
            "{bad:?}: {error}"
        );
    }
}

#[test]
fn the_flake_module_defaults_to_the_flakes_package_and_a_users_package_wins() {
    let Some(lib) = nixpkgs_lib() else { return };
    let source = |eval: &Json| eval["nixos"]["security"]["wrappers"]["locald-shim"]["source"].clone();
    let flake = eval(lib, "flake", &enabled("")).unwrap();
    let built = flake["packages"]["flake"].as_str().unwrap();
    assert_eq!(source(&flake), format!("{built}/bin/locald-shim"));
    assert_eq!(service(&flake)["serviceConfig"]["ExecStart"], format!("{built}/bin/locald server start"));
    // The flake sets the package with mkDefault: a user's plain value replaces it everywhere.
    let mine = eval(lib, "flake", &enabled("services.locald.package = pkgs.locald;")).unwrap();
    let theirs = mine["packages"]["pkgs"].as_str().unwrap();
    assert_eq!(source(&mine), format!("{theirs}/bin/locald-shim"));
    assert_eq!(mine["nixos"]["environment"]["systemPackages"], json!([theirs]));
}

/// Each assertion of the module, with a configuration that must fail it.
const ASSERTIONS: &[(&str, &str)] = &[
    ("cgroup v2", "boot.kernelParams = [ \"quiet\" \"systemd.unified_cgroup_hierarchy=0\" ];"),
    ("cgroup v2", "boot.kernelParams = [ \"SYSTEMD_CGROUP_ENABLE_LEGACY_FORCE=1\" ];"),
    ("caCertificate", "services.locald.trustCA = true;"),
];

#[test]
fn every_assertion_fails_on_its_bad_input_and_only_there() {
    let Some(lib) = nixpkgs_lib() else { return };
    let declared = system(lib, &enabled(""))["nixos"]["assertions"].as_array().unwrap().clone();
    let covered: std::collections::BTreeSet<&str> = ASSERTIONS.iter().map(|(m, _)| *m).collect();
    assert_eq!(declared.len(), covered.len(), "an assertion without a case here: {declared:?}");
    for (message, bad) in ASSERTIONS {
        let failed = system(lib, &enabled(bad))["failedAssertions"].clone();
        let failed = failed.as_array().unwrap();
        assert!(failed.len() == 1 && failed[0].as_str().unwrap().contains(message), "{bad}: {failed:?}");
    }
    // Their good neighbours pass.
    for good in [
        "boot.kernelParams = [ \"quiet\" \"systemd.unified_cgroup_hierarchy=1\" \"console=ttyS0\" ];",
        "services.locald = { trustCA = true; caCertificate = \"/etc/locald-ca.pem\"; };",
        "services.locald.caCertificate = \"/etc/locald-ca.pem\";",
    ] {
        assert_eq!(system(lib, &enabled(good))["failedAssertions"], json!([]), "{good}");
    }
}

#[test]
fn the_domain_suffix_accepts_exactly_the_suffixes_the_shim_accepts() {
    let Some(lib) = nixpkgs_lib() else { return };
    let suffixes = system(lib, &enabled(""))["suffixes"].clone();
    assert_eq!(suffixes, json!(locald_shim_protocol::validate::HOSTS_SUFFIXES));
    for suffix in locald_shim_protocol::validate::HOSTS_SUFFIXES {
        let eval = system(lib, &enabled(&format!("services.locald.domainSuffix = \"{suffix}\";")));
        assert_eq!(eval["nixos"]["environment"]["sessionVariables"]["LOCALD_DOMAIN_SUFFIX"], *suffix);
        assert_eq!(service(&eval)["environment"]["LOCALD_DOMAIN_SUFFIX"], *suffix);
    }
    for suffix in ["example", "local", "internal", "localhost.", "TEST", "x.test", ""] {
        let error = refused(lib, &enabled(&format!("services.locald.domainSuffix = \"{suffix}\";")));
        assert!(
            error.contains("services.locald.domainSuffix") && error.contains("is not of type"),
            "{suffix:?}: {error}"
        );
    }
}

#[test]
fn a_users_settings_merge_with_the_modules_as_nixos_merges_them() {
    let Some(lib) = nixpkgs_lib() else { return };
    let unit = "systemd.user.services.locald";
    let user = |more: &str| system(lib, &enabled(more));

    // mkForce wins over the module's plain value; a plain value of its own conflicts with it.
    let forced = user(&format!("{unit}.serviceConfig.ExecStart = lib.mkForce \"/bin/mine\";"));
    assert_eq!(service(&forced)["serviceConfig"]["ExecStart"], "/bin/mine");
    assert_eq!(service(&forced)["serviceConfig"]["Delegate"], "yes", "only ExecStart is forced");
    let conflict = refused(lib, &enabled(&format!("{unit}.serviceConfig.ExecStart = \"/bin/mine\";")));
    assert!(conflict.contains("ExecStart' has conflicting definition values"), "{conflict}");
    let forced = user(&format!("{unit}.environment = lib.mkForce {{ RUST_LOG = \"debug\"; }};"));
    assert_eq!(service(&forced)["environment"], json!({"RUST_LOG": "debug"}));
    let conflict = refused(lib, &enabled(&format!("{unit}.environment.LOCALD_DOMAIN_SUFFIX = \"test\";")));
    assert!(conflict.contains("LOCALD_DOMAIN_SUFFIX' has conflicting definition values"), "{conflict}");
    let conflict = refused(lib, &enabled("security.wrappers.locald-shim.owner = \"nobody\";"));
    assert!(conflict.contains("owner' has conflicting definition values"), "{conflict}");

    // A user's mkDefault loses to the module; the user's plain value beats an option's default.
    let defaulted = user(&format!("{unit}.serviceConfig.Restart = lib.mkDefault \"always\";"));
    assert_eq!(service(&defaulted)["serviceConfig"]["Restart"], "on-failure");
    let plain = user("services.locald.domainSuffix = \"test\";");
    assert_eq!(service(&plain)["environment"]["LOCALD_DOMAIN_SUFFIX"], "test");

    // What the module leaves unset merges in: lists concatenate, new attributes join.
    let merged = user(&format!(
        "{unit} = {{ wantedBy = [ \"graphical-session.target\" ]; serviceConfig.MemoryMax = \"4G\"; }}; \
         security.wrappers.locald-shim.permissions = \"u+rx,g+x\";"
    ));
    // (in module order, which says nothing about precedence)
    let mut wanted: Vec<&str> =
        service(&merged)["wantedBy"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    wanted.sort_unstable();
    assert_eq!(wanted, ["default.target", "graphical-session.target"]);
    assert_eq!(service(&merged)["serviceConfig"]["MemoryMax"], "4G");
    assert_eq!(service(&merged)["serviceConfig"]["Delegate"], "yes");
    let wrapper = &merged["nixos"]["security"]["wrappers"]["locald-shim"];
    assert_eq!((&wrapper["permissions"], &wrapper["setuid"]), (&json!("u+rx,g+x"), &json!(true)));

    // nixpkgs' types still judge the result.
    let bad = refused(lib, &enabled(&format!("{unit}.serviceConfig.Restart = lib.mkForce \"sometimes\";")));
    assert!(bad.contains("serviceConfig") && bad.contains("is not of type"), "{bad}");
    let bad = refused(lib, &enabled("boot.kernelParams = [ \"two words\" ];"));
    assert!(bad.contains("boot.kernelParams") && bad.contains("is not of type"), "{bad}");
}
