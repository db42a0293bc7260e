//! Image references as Docker and compose write them, normalised the way Docker does:
//! `postgres:16` is `docker.io/library/postgres:16`, a first component with a `.` or `:` (or
//! `localhost`) is a registry host.

use std::net::IpAddr;

use oci_client::Reference;

/// A parsed reference; `Display` gives the full normalised form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef(pub(crate) Reference);

impl ImageRef {
    /// Parses `text`; the error is one line saying what is wrong.
    pub fn parse(text: &str) -> Result<ImageRef, String> {
        if text.is_empty() || text.chars().any(char::is_whitespace) {
            return Err(format!("{text:?} is not an image reference"));
        }
        let reference: Reference =
            text.parse().map_err(|e| format!("{text:?} is not an image reference: {e}"))?;
        if let Some(digest) = reference.digest() {
            let hex = digest.strip_prefix("sha256:").unwrap_or("");
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("{text:?}: only sha256 digests are supported"));
            }
        }
        Ok(ImageRef(reference))
    }

    /// The registry as written (`docker.io`, `127.0.0.1:5000`).
    pub fn registry(&self) -> &str {
        self.0.registry()
    }

    pub fn repository(&self) -> &str {
        self.0.repository()
    }

    pub fn tag(&self) -> Option<&str> {
        self.0.tag()
    }

    pub fn digest(&self) -> Option<&str> {
        self.0.digest()
    }

    /// The same image pinned to `digest`.
    pub fn pinned(&self, digest: &str) -> ImageRef {
        ImageRef(Reference::with_digest(
            self.0.registry().to_owned(),
            self.0.repository().to_owned(),
            digest.to_owned(),
        ))
    }

    /// Whether plain HTTP is allowed without the user asking: as Docker does, for registries on
    /// this machine only (127.0.0.0/8, ::1, localhost).
    pub fn is_loopback(&self) -> bool {
        is_loopback_host(self.registry())
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.whole())
    }
}

/// `host`, `host:port`, `[v6]:port`.
pub fn is_loopback_host(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        match registry.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => registry,
        }
    };
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_short_names_are_normalised() {
        let r = ImageRef::parse("postgres:16").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/postgres:16");
        assert_eq!(r.registry(), "docker.io");
        assert_eq!(r.repository(), "library/postgres");
        let r = ImageRef::parse("bitnami/redis").unwrap();
        assert_eq!(r.to_string(), "docker.io/bitnami/redis:latest");
    }

    #[test]
    fn hosts_ports_and_digests() {
        let r = ImageRef::parse("127.0.0.1:5000/team/app:main").unwrap();
        assert_eq!((r.registry(), r.repository(), r.tag()), ("127.0.0.1:5000", "team/app", Some("main")));
        assert!(r.is_loopback());
        let hex = "a".repeat(64);
        let r = ImageRef::parse(&format!("ghcr.io/org/app@sha256:{hex}")).unwrap();
        assert_eq!(r.digest(), Some(format!("sha256:{hex}").as_str()));
        assert!(!r.is_loopback());
        assert_eq!(r.pinned(&format!("sha256:{hex}")).to_string(), format!("ghcr.io/org/app@sha256:{hex}"));
        assert!(ImageRef::parse("localhost/app").unwrap().is_loopback());
    }

    #[test]
    fn malformed_references_are_refused_in_one_line() {
        for bad in ["", "Upper/Case", "app:tag with space", "app@sha256:short", "a//b"] {
            let e = ImageRef::parse(bad).unwrap_err();
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn only_loopback_hosts_count_as_loopback() {
        for (host, expected) in [
            ("127.0.0.1", true),
            ("127.1.2.3:5000", true),
            ("[::1]:5000", true),
            ("localhost:5000", true),
            ("10.0.0.1:5000", false),
            ("registry.local", false),
            ("localhost.evil.com", false),
        ] {
            assert_eq!(is_loopback_host(host), expected, "{host}");
        }
    }
}
