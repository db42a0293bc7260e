//! What a service that opts in (`trust_local_ca`) gets so its own HTTPS calls to other local
//! services verify: a bundle file of the system's roots plus the locald CA, and the variables
//! common TLS clients read. The two kinds of client need different files: OpenSSL-based ones
//! (curl, Python's `ssl` and `requests`, Ruby, PHP) take `SSL_CERT_FILE` / `CURL_CA_BUNDLE` /
//! `REQUESTS_CA_BUNDLE` *instead of* their store, so the bundle must still carry the public
//! roots; Node adds `NODE_EXTRA_CA_CERTS` *to* its built-in store, so it gets the CA alone.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use locald_core::config::Service;

use super::CaError;
use super::ca::LocalCa;

/// Next to `ca.pem` in the CA directory.
pub const BUNDLE_FILE: &str = "ca-bundle.pem";
/// Debian/Ubuntu/Arch, Fedora/RHEL, Alpine/macOS-style: the first that exists is the system's.
pub const SYSTEM_BUNDLES: &[&str] =
    &["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"];
/// Where a container sees the two files (bind-mounted read-only): its own `/etc/ssl` is the
/// image's business, so they go in a directory of their own.
pub const CONTAINER_CA: &str = "/etc/ssl/locald/ca.pem";
pub const CONTAINER_BUNDLE: &str = "/etc/ssl/locald/ca-bundle.pem";

/// The variables, in the order they are added; each names the CA alone or the bundle.
const VARIABLES: &[(&str, File)] = &[
    ("NODE_EXTRA_CA_CERTS", File::Ca),
    ("SSL_CERT_FILE", File::Bundle),
    ("REQUESTS_CA_BUNDLE", File::Bundle),
    ("CURL_CA_BUNDLE", File::Bundle),
];

#[derive(Clone, Copy)]
enum File {
    Ca,
    Bundle,
}

/// The CA certificate and the bundle, on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaFiles {
    pub ca: PathBuf,
    pub bundle: PathBuf,
}

/// The user's CA (made if need be) and a fresh bundle beside it.
pub fn prepare() -> Result<CaFiles, CaError> {
    let ca = super::user_ca()?;
    let system: Vec<&Path> = SYSTEM_BUNDLES.iter().map(Path::new).collect();
    write(&ca, &system)
}

/// Writes `<CA dir>/ca-bundle.pem` = the first of `system` that can be read (or nothing) + the
/// CA certificate. Through a temporary file and a rename, so a service starting meanwhile never
/// reads half a bundle; 0644 whatever the umask, since a container's user reads it too.
pub fn write(ca: &LocalCa, system: &[&Path]) -> Result<CaFiles, CaError> {
    let ca_path = ca.cert_path().to_owned();
    let dir = ca_path.parent().unwrap_or(Path::new("/"));
    let bundle = dir.join(BUNDLE_FILE);
    for path in [&ca_path, &bundle] {
        if path.to_str().is_none() {
            return Err(CaError::Bundle(path.clone(), io::Error::other("the path is not UTF-8")));
        }
    }
    let mut text = system.iter().find_map(|path| fs::read(path).ok()).unwrap_or_default();
    if !text.is_empty() && !text.ends_with(b"\n") {
        text.push(b'\n');
    }
    text.extend_from_slice(ca.cert_pem().as_bytes());
    // 0644: a container's user reads it too.
    locald_core::atomic_file::write(&bundle, &text, 0o644).map_err(|e| CaError::Bundle(bundle.clone(), e))?;
    Ok(CaFiles { ca: ca_path, bundle })
}

/// The variables `service` gets when it opts in: paths on the host for a process, the mount
/// points for a container. A variable the service sets itself (`env`, `env_file`) is left alone.
pub fn service_env(service: &Service, files: &CaFiles) -> Vec<(String, String)> {
    if !service.trust_local_ca {
        return Vec::new();
    }
    let (ca, bundle) = if service.container.is_some() {
        (CONTAINER_CA.to_owned(), CONTAINER_BUNDLE.to_owned())
    } else {
        (files.ca.to_string_lossy().into_owned(), files.bundle.to_string_lossy().into_owned())
    };
    VARIABLES
        .iter()
        .filter(|(name, _)| !service.env.iter().any(|(key, _)| key == name))
        .map(|(name, file)| {
            let value = match file {
                File::Ca => ca.clone(),
                File::Bundle => bundle.clone(),
            };
            ((*name).to_owned(), value)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn service(toml_extra: &str) -> Service {
        let text = format!("[services.web]\ncommand = \"x\"\nport = 41001\n{toml_extra}");
        let dir = std::env::temp_dir();
        let config =
            locald_core::config::resolve_toml(&dir, Path::new("locald.toml"), &text, &mut vec![41_000])
                .unwrap();
        config.services.into_iter().next().unwrap()
    }

    fn files() -> CaFiles {
        CaFiles { ca: "/home/u/.local/share/locald/ca/ca.pem".into(), bundle: "/home/u/b.pem".into() }
    }

    fn env(list: &[(String, String)]) -> Vec<(&str, &str)> {
        list.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    #[test]
    fn without_the_opt_in_nothing_is_set() {
        assert!(service_env(&service(""), &files()).is_empty());
        assert!(service_env(&service("trust_local_ca = false\n"), &files()).is_empty());
    }

    #[test]
    fn a_process_gets_host_paths_and_node_the_ca_alone() {
        let got = service_env(&service("trust_local_ca = true\n"), &files());
        assert_eq!(
            env(&got),
            [
                ("NODE_EXTRA_CA_CERTS", "/home/u/.local/share/locald/ca/ca.pem"),
                ("SSL_CERT_FILE", "/home/u/b.pem"),
                ("REQUESTS_CA_BUNDLE", "/home/u/b.pem"),
                ("CURL_CA_BUNDLE", "/home/u/b.pem"),
            ]
        );
    }

    #[test]
    fn what_the_user_sets_wins() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".env"), "CURL_CA_BUNDLE=/from/env-file\n").unwrap();
        let text = "[services.web]\ncommand = \"x\"\nport = 41001\ntrust_local_ca = true\nenv_file = \".env\"\n\
                    env = { SSL_CERT_FILE = \"/mine.pem\" }\n";
        let config =
            locald_core::config::resolve_toml(dir.path(), &dir.path().join("locald.toml"), text, &mut vec![])
                .unwrap();
        let got = service_env(&config.services[0], &files());
        let names: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["NODE_EXTRA_CA_CERTS", "REQUESTS_CA_BUNDLE"]);
    }

    #[test]
    fn a_container_gets_the_mount_points() {
        let mut web = service("trust_local_ca = true\n");
        web.container = Some(locald_core::config::Container {
            image: "./img".into(),
            volumes: Vec::new(),
            workdir: None,
            memory_bytes: None,
            pids: None,
            user: None,
            pull: Default::default(),
        });
        let got = service_env(&web, &files());
        assert_eq!(env(&got)[0], ("NODE_EXTRA_CA_CERTS", CONTAINER_CA));
        assert!(env(&got)[1..].iter().all(|(_, v)| *v == CONTAINER_BUNDLE), "{got:?}");
    }

    #[test]
    fn the_bundle_is_the_first_system_bundle_then_the_ca_world_readable() {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_create(&dir.path().join("ca"), &[]).unwrap();
        let (first, second) = (dir.path().join("first.crt"), dir.path().join("second.crt"));
        std::fs::write(&second, "SECOND\n").unwrap();
        // An unreadable or missing one is skipped; the first that reads is taken, alone.
        let system = [first.as_path(), second.as_path(), Path::new("/nonexistent")];
        let files = write(&ca, &system).unwrap();
        assert_eq!(files.ca, ca.cert_path());
        assert_eq!(files.bundle, dir.path().join("ca").join(BUNDLE_FILE));
        let text = std::fs::read_to_string(&files.bundle).unwrap();
        assert_eq!(text, format!("SECOND\n{}", ca.cert_pem()));
        assert_eq!(std::fs::metadata(&files.bundle).unwrap().mode() & 0o777, 0o644);

        // Rewritten in place of the old one, without the system part when there is none, and
        // nothing left behind.
        std::fs::write(&first, "FIRST").unwrap();
        write(&ca, &[first.as_path()]).unwrap();
        assert_eq!(std::fs::read_to_string(&files.bundle).unwrap(), format!("FIRST\n{}", ca.cert_pem()));
        write(&ca, &[]).unwrap();
        assert_eq!(std::fs::read_to_string(&files.bundle).unwrap(), ca.cert_pem());
        let left: Vec<_> = std::fs::read_dir(dir.path().join("ca"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn concurrent_writes_all_succeed_and_leave_a_whole_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_create(&dir.path().join("ca"), &[]).unwrap();
        let system = dir.path().join("system.crt");
        std::fs::write(&system, "SYSTEM\n".repeat(10_000)).unwrap();
        std::thread::scope(|scope| {
            let writers: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| (0..20).try_for_each(|_| write(&ca, &[system.as_path()]).map(drop))))
                .collect();
            for writer in writers {
                writer.join().unwrap().expect("every write succeeds");
            }
        });
        let text = std::fs::read_to_string(dir.path().join("ca").join(BUNDLE_FILE)).unwrap();
        assert_eq!(text, format!("{}{}", "SYSTEM\n".repeat(10_000), ca.cert_pem()));
    }
}
