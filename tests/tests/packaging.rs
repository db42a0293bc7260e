//! The packaging, checked where there is no Nix binary cache (CI: Debian with `nix-bin` and
//! `shellcheck`, no network): every `.nix` file parses, `nix flake metadata` reads the lock offline,
//! the NixOS module's own logic holds under a stub `lib`, the NixOS VM tests cover exactly the
//! scenarios that exist, `lima/locald.yaml` uses only Lima's template keys and pins its images, and
//! every shell script in the repository (scenarios, CI, benchmarks, Lima provisioning and probes)
//! passes its shell's `-n` and shellcheck. Building the package and running the NixOS VM tests is
//! left to `nix flake check` on a machine with Nix and KVM.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value as Json;
use serde_norway::Value as Yaml;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned()
}

/// A tool from a Debian package; missing is a failure, not a skip (`cargo xtask test` installs
/// both packages when run as root, as CI does).
fn tool(name: &str, package: &str) -> Command {
    let found = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{name} is not installed: `sudo apt-get install {package}` (cargo xtask test does it as root)"
    );
    Command::new(name)
}

/// Nix commands with a store of their own: `dummy://` for evaluation, so nothing needs root or
/// touches /nix.
fn nix_instantiate() -> Command {
    let mut command = tool("nix-instantiate", "nix-bin");
    command.args(["--store", "dummy://"]);
    command
}

fn run(command: &mut Command) -> Output {
    command.output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

fn stdout_of(command: &mut Command) -> String {
    let out = run(command);
    assert!(
        out.status.success(),
        "{command:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Files under the repository whose name satisfies `wanted`, skipping build output and VCS data.
fn files(wanted: &dyn Fn(&Path) -> bool) -> Vec<PathBuf> {
    fn walk(dir: &Path, wanted: &dyn Fn(&Path) -> bool, out: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                if name != "target" && name != ".git" && name != "result" {
                    walk(&path, wanted, out);
                }
            } else if wanted(&path) {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&repo(), wanted, &mut out);
    out.sort();
    out
}

fn relative(path: &Path) -> String {
    path.strip_prefix(repo()).unwrap_or(path).display().to_string()
}

#[test]
fn every_nix_file_parses() {
    let nix_files = files(&|p| p.extension().is_some_and(|e| e == "nix"));
    let names: Vec<String> = nix_files.iter().map(|p| relative(p)).collect();
    for expected in ["flake.nix", "nixos/module.nix", "vm-tests/nixos/default.nix"] {
        assert!(names.iter().any(|n| n == expected), "{expected} is missing; found {names:?}");
    }
    let failures: Vec<String> = nix_files
        .iter()
        .filter_map(|file| {
            let out = run(nix_instantiate().arg("--parse").arg(file));
            (!out.status.success())
                .then(|| format!("{}: {}", relative(file), String::from_utf8_lossy(&out.stderr).trim()))
        })
        .collect();
    assert!(failures.is_empty(), "Nix files that do not parse:\n{}", failures.join("\n"));
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// The nixpkgs node of flake.lock: a real-looking github lock of a released NixOS branch, the one
/// flake.nix asks for. Returns (ref, rev).
fn check_lock_structure(lock: &Json, flake_nix: &str) -> (String, String) {
    assert_eq!(lock["version"], 7, "flake.lock version");
    assert_eq!(lock["root"], "root");
    assert_eq!(lock["nodes"]["root"]["inputs"]["nixpkgs"], "nixpkgs", "root input nixpkgs");
    let node = &lock["nodes"]["nixpkgs"];
    let locked = &node["locked"];
    assert_eq!(locked["type"], "github", "{locked}");
    assert_eq!(locked["owner"], "NixOS", "{locked}");
    assert_eq!(locked["repo"], "nixpkgs", "{locked}");
    let rev = locked["rev"].as_str().expect("locked rev");
    assert!(is_hex(rev, 40), "rev {rev:?} is not a full commit id");
    let nar_hash = locked["narHash"].as_str().expect("narHash");
    let b64 =
        nar_hash.strip_prefix("sha256-").unwrap_or_else(|| panic!("narHash {nar_hash:?} is not sha256-"));
    assert!(b64.len() == 44 && b64.ends_with('='), "narHash {nar_hash:?} is not a base64 sha256");
    let modified = locked["lastModified"].as_u64().expect("lastModified");
    assert!(modified > 1_600_000_000, "lastModified {modified} is implausible");

    let original = &node["original"];
    assert_eq!(original["type"], "github", "{original}");
    assert_eq!(original["owner"], "NixOS", "{original}");
    assert_eq!(original["repo"], "nixpkgs", "{original}");
    let branch = original["ref"].as_str().expect("original ref");
    let version =
        branch.strip_prefix("nixos-").unwrap_or_else(|| panic!("{branch:?} is not a nixos-YY.MM branch"));
    let ok = version.len() == 5
        && version.as_bytes()[2] == b'.'
        && version.bytes().enumerate().all(|(i, b)| i == 2 || b.is_ascii_digit())
        && matches!(&version[3..], "05" | "11");
    assert!(ok, "{branch:?} is not a released NixOS branch (nixos-YY.05 or nixos-YY.11)");

    let url = format!("inputs.nixpkgs.url = \"github:NixOS/nixpkgs/{branch}\";");
    assert!(flake_nix.contains(&url), "flake.nix must say `{url}` to match flake.lock");
    assert!(flake_nix.contains(rev), "flake.nix's comment must cite where the locked rev {rev} came from");
    (branch.to_owned(), rev.to_owned())
}

#[test]
fn the_flake_lock_reads_offline_and_matches_flake_nix() {
    let flake_nix = fs::read_to_string(repo().join("flake.nix")).unwrap();
    let lock_text = fs::read_to_string(repo().join("flake.lock")).unwrap();
    let lock: Json = serde_json::from_str(&lock_text).expect("flake.lock is JSON");
    let (_, rev) = check_lock_structure(&lock, &flake_nix);

    // Nix itself reads the lock: only flake.nix and flake.lock are copied (metadata evaluates no
    // outputs), into a store of the test's own, with no network. An input that flake.nix asks
    // for differently than the lock has it would have to be fetched, and fails here.
    let tmp = tempfile::tempdir().unwrap();
    let flake = tmp.path().join("flake");
    fs::create_dir(&flake).unwrap();
    fs::write(flake.join("flake.nix"), &flake_nix).unwrap();
    fs::write(flake.join("flake.lock"), &lock_text).unwrap();
    let metadata = stdout_of(
        tool("nix", "nix-bin")
            .args(["--extra-experimental-features", "nix-command flakes", "--store"])
            .arg(tmp.path().join("store"))
            .args(["flake", "metadata", "--json", "--offline", "--no-update-lock-file"])
            .arg(format!("path:{}", flake.display()))
            .env("HOME", tmp.path())
            .env("XDG_CACHE_HOME", tmp.path().join("cache")),
    );
    let metadata: Json = serde_json::from_str(&metadata).expect("metadata JSON");
    assert_eq!(metadata["locks"]["nodes"]["nixpkgs"]["locked"]["rev"], rev.as_str(), "{metadata}");
    assert_eq!(metadata["locks"]["nodes"]["nixpkgs"]["locked"], lock["nodes"]["nixpkgs"]["locked"]);
}

#[test]
fn a_lock_that_is_not_a_real_pin_is_refused() {
    let flake_nix = fs::read_to_string(repo().join("flake.nix")).unwrap();
    let lock: Json = serde_json::from_str(&fs::read_to_string(repo().join("flake.lock")).unwrap()).unwrap();
    let broken = |edit: &dyn Fn(&mut Json)| {
        let mut lock = lock.clone();
        edit(&mut lock);
        let flake_nix = flake_nix.clone();
        std::panic::catch_unwind(move || check_lock_structure(&lock, &flake_nix)).is_err()
    };
    assert!(broken(&|l| l["nodes"]["nixpkgs"]["locked"]["rev"] = "abc123".into()));
    assert!(broken(&|l| l["nodes"]["nixpkgs"]["locked"]["narHash"] = "sha256-short".into()));
    assert!(broken(&|l| l["nodes"]["nixpkgs"]["original"]["ref"] = "nixos-unstable".into()));
    assert!(broken(&|l| l["nodes"]["nixpkgs"]["locked"]["owner"] = "someone".into()));
}

/// Evaluates nixos/module.nix under tests/nix/module-eval.nix's stub `lib` for one case.
fn module_case(case: &str) -> Json {
    let out = stdout_of(
        nix_instantiate()
            .args(["--eval", "--strict", "--json"])
            .arg(repo().join("tests/nix/module-eval.nix"))
            .args(["--argstr", "case", case]),
    );
    serde_json::from_str(&out).expect("module evaluation JSON")
}

#[test]
fn the_nixos_module_installs_the_wrapper_and_a_user_daemon() {
    let store = "/nix/store/00000000000000000000000000000000-locald";
    let eval = module_case("default");
    assert_eq!(eval["enabledBy"], true, "config is behind services.locald.enable");
    let options: BTreeSet<&str> = eval["options"].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(options, BTreeSet::from(["enable", "package", "domainSuffix", "trustCA", "caCertificate"]));
    assert_eq!(eval["options"]["enable"], "enable", "mkEnableOption");
    assert_eq!(eval["options"]["package"], "package", "mkPackageOption");
    assert_eq!(eval["failedAssertions"], serde_json::json!([]));
    assert_eq!(
        eval["wrapper"],
        serde_json::json!({"owner": "root", "group": "root", "setuid": true, "source": format!("{store}/bin/locald-shim")})
    );
    // The daemon finds the wrapper where the module puts it.
    assert_eq!(locald_daemon::shim::NIXOS_WRAPPER, "/run/wrappers/bin/locald-shim");
    assert_eq!(eval["systemPackages"], serde_json::json!([store]));
    assert_eq!(eval["userService"]["ExecStart"], format!("{store}/bin/locald server start"));
    assert_eq!(eval["userService"]["wantedBy"], serde_json::json!(["default.target"]));
    assert_eq!(eval["userService"]["Delegate"], "yes");
    assert_eq!(eval["trustedCertificates"], serde_json::json!([]));
    // The suffixes offered are exactly those the shim accepts.
    let suffixes: Vec<&str> =
        eval["suffixes"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    assert_eq!(suffixes, locald_shim_protocol::validate::HOSTS_SUFFIXES);
    assert_eq!(eval["sessionSuffix"], "localhost");
}

#[test]
fn the_nixos_module_refuses_cgroup_v1_and_a_trust_without_certificate() {
    for case in ["cgroup-v1", "legacy-force"] {
        let failed = module_case(case)["failedAssertions"].clone();
        assert!(failed.to_string().contains("cgroup v2"), "{case}: {failed}");
    }
    let failed = module_case("trust-without-cert")["failedAssertions"].clone();
    assert!(failed.to_string().contains("caCertificate"), "{failed}");
    let trusted = module_case("trust-with-cert");
    assert_eq!(trusted["failedAssertions"], serde_json::json!([]));
    assert_eq!(trusted["trustedCertificates"], serde_json::json!(["/etc/locald-ca.pem"]));
    let suffix = module_case("suffix-test");
    assert_eq!(suffix["sessionSuffix"], "test");
    assert_eq!(suffix["userService"]["suffix"], "test");
}

#[test]
fn the_user_service_runs_a_real_cli_command() {
    let locald = locald_tests::built_bin("locald");
    let out = run(Command::new(locald).args(["server", "start", "--help"]));
    assert!(out.status.success(), "`locald server start` is not a command: {out:?}");
}

/// The scenario names listed in `areas = { ... };` of vm-tests/nixos/default.nix.
fn nixos_test_scenarios(text: &str) -> BTreeSet<String> {
    let start = text.find("areas = {").expect("vm-tests/nixos/default.nix has `areas = {`");
    let block = &text[start..];
    let block = &block[..block.find("\n  };").expect("end of areas")];
    block
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.split('"').skip(1).step_by(2).map(str::to_owned).collect::<Vec<_>>())
        .collect()
}

#[test]
fn the_nixos_vm_tests_run_every_scenario_and_only_existing_ones() {
    let scenarios: BTreeSet<String> = files(&|p| {
        p.parent().is_some_and(|d| d.ends_with("vm-tests/scenarios"))
            && p.extension().is_some_and(|e| e == "sh")
    })
    .iter()
    .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
    .collect();
    assert!(scenarios.contains("shim-handshake"), "{scenarios:?}");
    let listed =
        nixos_test_scenarios(&fs::read_to_string(repo().join("vm-tests/nixos/default.nix")).unwrap());
    let missing: Vec<_> = listed.difference(&scenarios).collect();
    // Opt-in scenarios are benchmarks run by hand (`cargo xtask vm <name>`), not checks.
    let opt_in = |name: &String| {
        fs::read_to_string(repo().join(format!("vm-tests/scenarios/{name}.sh")))
            .is_ok_and(|text| text.lines().any(|l| l.trim() == "# opt-in: yes"))
    };
    let uncovered: Vec<_> = scenarios.difference(&listed).filter(|name| !opt_in(name)).collect();
    assert!(missing.is_empty(), "vm-tests/nixos/default.nix names scenarios that do not exist: {missing:?}");
    assert!(uncovered.is_empty(), "scenarios no NixOS VM test runs (add them to an area): {uncovered:?}");
    // Both runners pick user or root from this header.
    for name in &scenarios {
        let text = fs::read_to_string(repo().join(format!("vm-tests/scenarios/{name}.sh"))).unwrap();
        let header = text.lines().next().unwrap_or_default();
        assert!(header == "# run-as: user" || header == "# run-as: root", "{name}.sh starts with {header:?}");
    }
    let sample =
        "  areas = {\n    a = [ \"x\" ];\n    # \"commented\"\n    b = [\n      \"y\"\n    ];\n  };\n";
    assert_eq!(nixos_test_scenarios(sample), BTreeSet::from(["x".to_owned(), "y".to_owned()]));
}

/// Lima's documented top-level template keys: the keys of templates/default.yaml in lima-vm/lima
/// at commit 183a60d721bf9cd969f366301bf90710b8c6a28e, set or commented out there (the same set as
/// the yaml tags of `LimaYAML` in pkg/limatype/lima_yaml.go).
const LIMA_KEYS: &[&str] = &[
    "vmType",
    "arch",
    "images",
    "cpus",
    "memory",
    "disk",
    "mounts",
    "mountTypesUnsupported",
    "mountType",
    "mountInotify",
    "additionalDisks",
    "ssh",
    "caCerts",
    "upgradePackages",
    "containerd",
    "provision",
    "probes",
    "minimumLimaVersion",
    "base",
    "user",
    "vmOpts",
    "os",
    "osOpts",
    "cpuType",
    "rosetta",
    "timezone",
    "firmware",
    "audio",
    "video",
    "networks",
    "portForwards",
    "copyToHost",
    "message",
    "env",
    "param",
    "propagateProxyEnv",
    "hostResolver",
    "dns",
    "guestInstallPrefix",
    "plain",
    "nestedVirtualization",
    "tpm",
];

fn lima_profile() -> Yaml {
    let text = fs::read_to_string(repo().join("lima/locald.yaml")).unwrap();
    serde_norway::from_str(&text).expect("lima/locald.yaml is YAML")
}

fn s<'a>(value: &'a Yaml, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Yaml::as_str)
}

/// Everything wrong with a Lima profile, by locald's rules.
fn lima_problems(profile: &Yaml) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(map) = profile.as_mapping() else { return vec!["not a mapping".into()] };
    for key in map.keys() {
        let key = key.as_str().unwrap_or("<non-string key>");
        if !LIMA_KEYS.contains(&key) {
            problems.push(format!("unknown top-level key {key:?}"));
        }
    }
    let images = profile.get("images").and_then(Yaml::as_sequence).cloned().unwrap_or_default();
    for arch in ["x86_64", "aarch64"] {
        if !images.iter().any(|i| s(i, "arch") == Some(arch)) {
            problems.push(format!("no image for {arch}"));
        }
    }
    for image in &images {
        let location = s(image, "location").unwrap_or_default();
        if !location.starts_with("https://") {
            problems.push(format!("image {location:?} is not an https URL"));
        }
        let digest = s(image, "digest").unwrap_or_default();
        let ok = match digest.split_once(':') {
            Some(("sha256", hex)) => is_hex(hex, 64),
            Some(("sha512", hex)) => is_hex(hex, 128),
            _ => false,
        };
        if !ok {
            problems.push(format!("image {location:?} has no sha256:/sha512: digest"));
        }
    }
    let forwards = profile.get("portForwards").and_then(Yaml::as_sequence).cloned().unwrap_or_default();
    for port in [80, 443] {
        if !forwards.iter().any(|f| f.get("guestPort").and_then(Yaml::as_u64) == Some(port)) {
            problems.push(format!("guest port {port} is not forwarded"));
        }
    }
    let containerd = profile.get("containerd");
    for field in ["system", "user"] {
        if containerd.and_then(|c| c.get(field)).and_then(Yaml::as_bool) != Some(false) {
            problems.push(format!("containerd.{field} must be false"));
        }
    }
    let home_writable = profile.get("mounts").and_then(Yaml::as_sequence).is_some_and(|m| {
        m.iter()
            .any(|m| s(m, "location") == Some("~") && m.get("writable").and_then(Yaml::as_bool) == Some(true))
    });
    if !home_writable {
        problems.push("the home directory is not mounted writable".into());
    }
    let system_scripts: String = scripts(profile, "provision")
        .iter()
        .filter(|(mode, _)| mode == "system")
        .map(|(_, script)| script.as_str())
        .collect();
    for needed in ["nix", "locald admin setup"] {
        if !system_scripts.contains(needed) {
            problems.push(format!("no system provisioning script runs {needed:?}"));
        }
    }
    if !scripts(profile, "probes")
        .iter()
        .any(|(mode, script)| mode == "readiness" && script.contains("locald doctor"))
    {
        problems.push("no readiness probe waits for `locald doctor`".into());
    }
    problems
}

/// (mode, script) of each entry of `provision` or `probes`.
fn scripts(profile: &Yaml, key: &str) -> Vec<(String, String)> {
    profile
        .get(key)
        .and_then(Yaml::as_sequence)
        .map(|list| {
            list.iter().filter_map(|e| Some((s(e, "mode")?.to_owned(), s(e, "script")?.to_owned()))).collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_lima_profile_uses_lima_keys_pins_its_images_and_forwards_80_and_443() {
    let profile = lima_profile();
    let problems = lima_problems(&profile);
    assert!(problems.is_empty(), "lima/locald.yaml:\n{}", problems.join("\n"));
    assert_eq!(s(&profile, "vmType"), Some("vz"));

    // The rules catch what they are about.
    let broken = |edit: &dyn Fn(&mut serde_norway::Mapping)| {
        let mut profile = profile.clone();
        edit(profile.as_mapping_mut().unwrap());
        lima_problems(&profile)
    };
    assert!(
        !broken(&|m| {
            m.insert("vmtype".into(), "vz".into());
        })
        .is_empty(),
        "unknown key"
    );
    assert!(
        !broken(&|m| {
            m.remove("portForwards");
        })
        .is_empty(),
        "no forwards"
    );
    let no_digest = broken(&|m| {
        for image in m.get_mut("images").unwrap().as_sequence_mut().unwrap() {
            image.as_mapping_mut().unwrap().remove("digest");
        }
    });
    assert!(no_digest.iter().any(|p| p.contains("digest")), "{no_digest:?}");
    let one_arch = broken(&|m| {
        m.get_mut("images").unwrap().as_sequence_mut().unwrap().pop();
    });
    assert!(one_arch.iter().any(|p| p.starts_with("no image for")), "{one_arch:?}");
}

/// The shell a script is written for, from its `#!` line: bash when it names bash, else POSIX sh.
fn dialect(text: &str) -> &'static str {
    match text.lines().next() {
        Some(line) if line.starts_with("#!") && line.contains("bash") => "bash",
        _ => "sh",
    }
}

/// `<shell> -n` and `shellcheck -s <shell>` on one script; the problems found, if any.
fn check_script(name: &str, path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).unwrap();
    let shell = dialect(&text);
    let syntax = run(Command::new(shell).arg("-n").arg(path));
    let lint = run(tool("shellcheck", "shellcheck").args(["-s", shell, "-f", "gcc"]).arg(path));
    let mut problems = String::new();
    if !syntax.status.success() {
        problems += &format!("{shell} -n: {}", String::from_utf8_lossy(&syntax.stderr));
    }
    if !lint.status.success() {
        problems += &String::from_utf8_lossy(&lint.stdout).replace(&path.display().to_string(), name);
    }
    (!problems.is_empty()).then(|| format!("{name} ({shell}):\n{problems}"))
}

#[test]
fn the_lima_provisioning_and_probe_scripts_pass_sh_n_and_shellcheck() {
    let profile = lima_profile();
    let tmp = tempfile::tempdir().unwrap();
    let mut checked = 0;
    let mut failures = Vec::new();
    for key in ["provision", "probes"] {
        for (i, (mode, script)) in scripts(&profile, key).into_iter().enumerate() {
            let name = format!("lima/locald.yaml {key}[{i}] ({mode})");
            let path = tmp.path().join(format!("{key}-{i}.sh"));
            fs::write(&path, &script).unwrap();
            failures.extend(check_script(&name, &path));
            checked += 1;
        }
    }
    assert!(checked >= 2, "expected provisioning and probe scripts, found {checked}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // A broken script is caught.
    let path = tmp.path().join("broken.sh");
    fs::write(&path, "#!/bin/bash\nif [ -e $1 ]; then echo\n").unwrap();
    assert!(check_script("broken", &path).is_some());
}

#[test]
fn every_shell_script_in_the_repository_passes_sh_n_and_shellcheck() {
    let mut scripts = files(&|p| p.extension().is_some_and(|e| e == "sh") || p.ends_with(".ci/run"));
    scripts.dedup();
    let names: Vec<String> = scripts.iter().map(|p| relative(p)).collect();
    for expected in
        ["vm-tests/init.sh", "vm-tests/scenarios/shim-handshake.sh", ".ci/run", "bench/daemon/run.sh"]
    {
        assert!(names.iter().any(|n| n == expected), "{expected} not found among {names:?}");
    }
    let failures: Vec<String> =
        scripts.iter().zip(&names).filter_map(|(path, name)| check_script(name, path)).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
