//! Credentials where users already keep them: Docker's `config.json` (`auths`, `credHelpers`,
//! `credsStore` through the `docker-credential-*` helper), then Podman's `auth.json`.

use std::path::{Path, PathBuf};

use docker_credential::{CredentialRetrievalError, DockerCredential};
use oci_client::secrets::RegistryAuth;

/// Where to look, in order; from the environment by [`Sources::from_env`], explicit in tests.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub files: Vec<PathBuf>,
}

impl Sources {
    /// `$DOCKER_CONFIG/config.json` (else `~/.docker/config.json`), `$REGISTRY_AUTH_FILE`,
    /// `$XDG_RUNTIME_DIR/containers/auth.json`, `~/.config/containers/auth.json`.
    pub fn from_env() -> Sources {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        let home = var("HOME");
        let mut files = Vec::new();
        match var("DOCKER_CONFIG") {
            Some(dir) => files.push(dir.join("config.json")),
            None => files.extend(home.as_ref().map(|h| h.join(".docker/config.json"))),
        }
        files.extend(var("REGISTRY_AUTH_FILE"));
        files.extend(var("XDG_RUNTIME_DIR").map(|d| d.join("containers/auth.json")));
        files.extend(home.as_ref().map(|h| h.join(".config/containers/auth.json")));
        Sources { files }
    }

    /// The credential for `registry` (as written in the reference), anonymous when none is
    /// configured. A helper that fails is an error: the user configured it for this registry.
    pub fn lookup(&self, registry: &str) -> Result<RegistryAuth, String> {
        for file in &self.files {
            match lookup_in(file, registry) {
                Ok(Some(auth)) => return Ok(auth),
                Ok(None) => {}
                Err(e) => return Err(format!("credentials for {registry} in {}: {e}", file.display())),
            }
        }
        Ok(RegistryAuth::Anonymous)
    }
}

/// The keys Docker and Podman file a registry under.
fn keys(registry: &str) -> Vec<String> {
    if matches!(registry, "docker.io" | "index.docker.io" | "registry-1.docker.io") {
        vec!["https://index.docker.io/v1/".into(), "docker.io".into(), "index.docker.io".into()]
    } else {
        vec![registry.to_owned(), format!("https://{registry}"), format!("http://{registry}")]
    }
}

fn lookup_in(file: &Path, registry: &str) -> Result<Option<RegistryAuth>, String> {
    let Ok(bytes) = std::fs::read(file) else { return Ok(None) };
    for key in keys(registry) {
        match docker_credential::get_credential_from_reader(bytes.as_slice(), &key) {
            Ok(DockerCredential::UsernamePassword(user, password)) => {
                return Ok(Some(RegistryAuth::Basic(user, password)));
            }
            Ok(DockerCredential::IdentityToken(token)) => return Ok(Some(RegistryAuth::Bearer(token))),
            Err(CredentialRetrievalError::NoCredentialConfigured) => {}
            Err(CredentialRetrievalError::HelperFailure { helper, stderr, .. }) => {
                let why = stderr.lines().next().unwrap_or("").trim().to_owned();
                return Err(format!("docker-credential-{helper} failed: {why}"));
            }
            Err(e) => return Err(e.to_string().lines().next().unwrap_or("").to_owned()),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, json: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, json).unwrap();
        path
    }

    fn basic(auth: RegistryAuth) -> (String, String) {
        match auth {
            RegistryAuth::Basic(u, p) => (u, p),
            other => panic!("expected basic auth, got {other:?}"),
        }
    }

    #[test]
    fn docker_auths_are_found_by_host_and_docker_hub_by_its_legacy_key() {
        let dir = tempfile::tempdir().unwrap();
        // "alice:s3cret", "bob:pw"
        let docker = write(
            dir.path(),
            "config.json",
            r#"{"auths":{"127.0.0.1:5000":{"auth":"YWxpY2U6czNjcmV0"},"https://index.docker.io/v1/":{"auth":"Ym9iOnB3"}}}"#,
        );
        let sources = Sources { files: vec![docker] };
        assert_eq!(basic(sources.lookup("127.0.0.1:5000").unwrap()), ("alice".into(), "s3cret".into()));
        assert_eq!(basic(sources.lookup("docker.io").unwrap()), ("bob".into(), "pw".into()));
        assert!(matches!(sources.lookup("ghcr.io").unwrap(), RegistryAuth::Anonymous));
    }

    #[test]
    fn podmans_auth_json_is_consulted_after_docker() {
        let dir = tempfile::tempdir().unwrap();
        let docker = write(dir.path(), "config.json", r#"{"auths":{}}"#);
        let podman = write(dir.path(), "auth.json", r#"{"auths":{"quay.io":{"auth":"Ym9iOnB3"}}}"#);
        let missing = dir.path().join("nope.json");
        let sources = Sources { files: vec![missing, docker, podman] };
        assert_eq!(basic(sources.lookup("quay.io").unwrap()), ("bob".into(), "pw".into()));
    }

    #[test]
    fn a_failing_credential_helper_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let docker = write(
            dir.path(),
            "config.json",
            r#"{"credHelpers":{"registry.example":"locald-test-no-such-helper"}}"#,
        );
        let sources = Sources { files: vec![docker] };
        let e = sources.lookup("registry.example").unwrap_err();
        assert!(e.contains("registry.example") && !e.contains('\n'), "{e}");
    }
}
