//! Trust and scheme for one registry: the extra CAs users already give Docker and Podman
//! (`certs.d/<host[:port]>/*.crt`), on top of the system store; and, for a registry that may
//! speak plain HTTP (loopback or listed as insecure), whether it speaks TLS after all.

use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_client::client::{Certificate, CertificateEncoding};

/// `$XDG_CONFIG_HOME/containers/certs.d` (else `~/.config/containers/certs.d`),
/// `/etc/containers/certs.d`, `/etc/docker/certs.d`: where `podman` and `docker` look.
pub fn cert_dirs_from_env() -> Vec<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let config = var("XDG_CONFIG_HOME").or_else(|| var("HOME").map(|h| h.join(".config")));
    let mut dirs: Vec<PathBuf> = config.map(|c| c.join("containers/certs.d")).into_iter().collect();
    dirs.push("/etc/containers/certs.d".into());
    dirs.push("/etc/docker/certs.d".into());
    dirs
}

/// The CA certificates filed for `registry` (`host[:port]` as written) under `dirs`, one entry
/// per PEM block of every `*.crt` file (`.cert`/`.key` pairs are client certificates, not CAs).
pub fn extra_roots(dirs: &[PathBuf], registry: &str) -> Result<Vec<Certificate>, String> {
    // A registry name is a host and port, never a path; a `..` or `/` would name another dir.
    if registry.contains('/') || registry.starts_with('.') {
        return Ok(Vec::new());
    }
    let mut roots = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir.join(registry)) else { continue };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "crt"))
            .collect();
        files.sort();
        for file in files {
            roots.extend(pem_blocks(&file)?);
        }
    }
    Ok(roots)
}

fn pem_blocks(file: &Path) -> Result<Vec<Certificate>, String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut blocks = Vec::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else { break };
        let block = &rest[start..start + len + END.len()];
        // Checked here so a bad file is named, not a vague failure of the whole client.
        reqwest::Certificate::from_pem(block.as_bytes())
            .map_err(|e| format!("{}: not a PEM certificate: {e}", file.display()))?;
        blocks.push(Certificate {
            encoding: CertificateEncoding::Pem,
            data: format!("{block}\n").into_bytes(),
        });
        rest = &rest[start + len + END.len()..];
    }
    if blocks.is_empty() {
        return Err(format!("{}: holds no PEM certificate", file.display()));
    }
    Ok(blocks)
}

/// The certificate problem somewhere in `error`'s source chain, if that is why it failed.
pub fn certificate_error(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(error);
    while let Some(e) = next {
        let tls = e.downcast_ref::<rustls::Error>().or_else(|| {
            e.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(
            tls @ (rustls::Error::InvalidCertificate(_)
            | rustls::Error::NoCertificatesPresented
            | rustls::Error::InvalidCertRevocationList(_)),
        ) = tls
        {
            return Some(tls.to_string());
        }
        // A boxed layer between reqwest and rustls can hide the type; rustls's wording cannot.
        let text = e.to_string();
        if let Some(at) = text.find("invalid peer certificate") {
            return Some(text[at..].to_owned());
        }
        next = e.source();
    }
    None
}

/// Whether `registry` answers TLS: a response, or a handshake that failed on its certificate
/// (it speaks TLS, just not trusted). Anything else — a plain HTTP answer to the handshake,
/// nothing listening — and the caller may use plain HTTP, as Docker falls back for the
/// registries it treats as insecure.
pub async fn speaks_tls(registry: &str, roots: &[Certificate]) -> bool {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none());
    for root in roots {
        if let Ok(cert) = reqwest::Certificate::from_pem(&root.data) {
            builder = builder.add_root_certificate(cert);
        }
    }
    let Ok(client) = builder.build() else { return false };
    match client.get(format!("https://{registry}/v2/")).send().await {
        Ok(_) => true,
        Err(e) => certificate_error(&e).is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_crt_files_of_the_registrys_own_directory_count() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("reg.example:5000");
        std::fs::create_dir_all(&host).unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["ca.example".into()]).unwrap().cert.pem();
        let other = rcgen::generate_simple_self_signed(vec!["b.example".into()]).unwrap().cert.pem();
        std::fs::write(host.join("ca.crt"), format!("{ca}{other}")).unwrap();
        std::fs::write(host.join("client.cert"), &ca).unwrap();
        let dirs = vec![dir.path().to_owned(), dir.path().join("missing")];
        assert_eq!(extra_roots(&dirs, "reg.example:5000").unwrap().len(), 2, "both blocks of ca.crt");
        assert!(extra_roots(&dirs, "other.example").unwrap().is_empty());
        assert!(extra_roots(&dirs, "../reg.example:5000").unwrap().is_empty());
        std::fs::write(host.join("bad.crt"), "not a certificate").unwrap();
        let e = extra_roots(&dirs, "reg.example:5000").unwrap_err();
        assert!(e.contains("bad.crt") && !e.contains('\n'), "{e}");
    }
}
