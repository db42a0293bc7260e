//! What a pull can go wrong with, each as one line saying what happened and what to do.

use oci_client::errors::{OciDistributionError, OciErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("image {0}: {1}")]
    Reference(String, String),
    #[error("image {0} not found in its registry (check the name and tag)")]
    NotFound(String),
    #[error(
        "registry {registry} refused access to {image}: log in with `docker login {registry}` (or `podman login {registry}`) and run `up` again"
    )]
    Unauthorized { registry: String, image: String },
    #[error(
        "registry {registry} is rate limiting pulls of {image}{}; try again then or log in with `docker login {registry}`",
        until.as_ref().map(|u| format!(" until {u}")).unwrap_or_default()
    )]
    RateLimited { registry: String, image: String, until: Option<String> },
    #[error("image {image} has no manifest for {platform} (it has: {available})")]
    NoPlatform { image: String, platform: String, available: String },
    #[error(
        "image {image}: blob {digest} does not match its digest (corrupt or tampered download); nothing of it was stored"
    )]
    DigestMismatch { image: String, digest: String },
    #[error("cannot reach registry {registry} for {image}: {reason}")]
    NoNetwork { registry: String, image: String, reason: String },
    #[error(
        "registry {registry} (for {image}) has a certificate this machine does not trust ({reason}): put its CA in ~/.config/containers/certs.d/{registry}/ca.crt"
    )]
    Untrusted { registry: String, image: String, reason: String },
    #[error("registry {registry} broke off the transfer of {image}: {reason}")]
    Interrupted { registry: String, image: String, reason: String },
    #[error("registry {registry} failed serving {image}: it answered {code} {message}")]
    Server { registry: String, image: String, code: u16, message: String },
    #[error("image {image} is not in the local store and `pull = \"never\"`: run `locald pull` first")]
    NotPulled { image: String },
    #[error("image {image}: {message}")]
    Other { image: String, message: String },
    #[error("image store {path}: {source}")]
    Store { path: std::path::PathBuf, source: std::io::Error },
}

/// First line only: registries put whole HTML pages in error bodies.
fn one_line(text: &str) -> String {
    let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
    line.chars().take(200).collect()
}

/// The most specific cause: "connection refused", not "error sending request for url …".
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut reason = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        reason = s.to_string();
        source = s.source();
    }
    reason
}

impl PullError {
    /// Classifies an error of the distribution client for `image` on `registry`.
    pub(crate) fn from_oci(e: OciDistributionError, registry: &str, image: &str) -> PullError {
        let (registry, image_s) = (registry.to_owned(), image.to_owned());
        let unauthorized = || PullError::Unauthorized { registry: registry.clone(), image: image_s.clone() };
        let not_found = || PullError::NotFound(image_s.clone());
        match &e {
            OciDistributionError::ImageManifestNotFoundError(_) => not_found(),
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => unauthorized(),
            OciDistributionError::DigestError(_) => {
                PullError::DigestMismatch { image: image_s.clone(), digest: "?".into() }
            }
            OciDistributionError::RegistryError { envelope, .. } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                if codes.iter().any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied)) {
                    unauthorized()
                } else if codes.iter().any(|c| matches!(c, OciErrorCode::Toomanyrequests)) {
                    PullError::RateLimited { registry, image: image_s, until: None }
                } else if codes.iter().any(|c| {
                    matches!(
                        c,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::NotFound
                            | OciErrorCode::BlobUnknown
                    )
                }) {
                    not_found()
                } else {
                    PullError::Other { image: image_s, message: one_line(&envelope.to_string()) }
                }
            }
            OciDistributionError::ServerError { code, message, .. } => match code {
                401 | 403 => unauthorized(),
                404 => not_found(),
                429 => PullError::RateLimited { registry, image: image_s, until: None },
                _ => PullError::Server { registry, image: image_s, code: *code, message: one_line(message) },
            },
            OciDistributionError::RequestError(r) => {
                if let Some(reason) = crate::tls::certificate_error(r) {
                    return PullError::Untrusted { registry, image: image_s, reason: one_line(&reason) };
                }
                let reason = one_line(&innermost(r));
                if r.is_connect() || r.is_timeout() {
                    PullError::NoNetwork { registry, image: image_s, reason }
                } else {
                    PullError::Interrupted { registry, image: image_s, reason }
                }
            }
            OciDistributionError::IoError(io) if io.to_string().to_lowercase().contains("digest") => {
                PullError::DigestMismatch { image: image_s, digest: "?".into() }
            }
            _ => PullError::Other { image: image_s, message: one_line(&e.to_string()) },
        }
    }

    /// Worth trying again: the network or the registry hiccuped.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            PullError::NoNetwork { .. } | PullError::Interrupted { .. } => true,
            // 501 (not implemented) and 505 will not change on a second try.
            PullError::Server { code, .. } => (500..600).contains(code) && !matches!(code, 501 | 505),
            _ => false,
        }
    }
}
