//! The local certificate authority. Its root carries X.509 name constraints permitting only
//! `localhost` (and the configured local suffixes) plus loopback addresses, so even a stolen key
//! cannot make a certificate a browser accepts for a real site. The key is created 0600 in the
//! user's data directory and never leaves it.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose, NameConstraints, SanType,
};
use time::{Duration, OffsetDateTime};

pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca-key.pem";
/// Leaves are short-lived and renewed this long before they expire.
const LEAF_LIFETIME: Duration = Duration::days(30);
pub const RENEW_BEFORE: Duration = Duration::days(7);
const CA_LIFETIME: Duration = Duration::days(3650);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("no certificate for {0:?}: locald only issues certificates for the local names it routes")]
    NotLocal(String),
}

pub struct LocalCa {
    cert_path: PathBuf,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
    suffixes: Vec<String>,
    replaced: Vec<String>,
}

/// A leaf certificate and its key, PEM-encoded. The CA is not appended: every client that can
/// verify the leaf has the CA as its trust anchor already (RFC 8446 §4.4.2 lets the root be
/// left out), and each handshake is then one certificate shorter to send and parse.
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub not_after: OffsetDateTime,
}

impl LocalCa {
    /// Loads the CA from `dir`, creating it (and `dir`, 0700) on first use. `suffixes` are the
    /// domain suffixes besides `localhost` that the name constraints permit. A CA whose
    /// constraints permit more (one made by a locald that still allowed `internal` and
    /// `home.arpa`, or one without constraints) is replaced, key and certificate: it stays in the
    /// trust stores it was added to, and its key could sign for real hosts there.
    pub fn load_or_create(dir: &Path, suffixes: &[String]) -> Result<Self, TlsError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| TlsError::Io { path, source }
        };
        let mut permitted = vec!["localhost".to_owned()];
        permitted.extend(suffixes.iter().map(|s| s.trim_matches('.').to_ascii_lowercase()));
        permitted.sort();
        permitted.dedup();

        let cert_path = dir.join(CA_CERT);
        let key_path = dir.join(CA_KEY);
        let mut replaced = Vec::new();
        if cert_path.is_file() && key_path.is_file() {
            let cert_pem = fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
            replaced = beyond(&cert_pem, &permitted)?;
            if replaced.is_empty() {
                let key = KeyPair::from_pem(&fs::read_to_string(&key_path).map_err(io(&key_path))?)?;
                let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)?;
                return Ok(Self { cert_path, cert_pem, issuer, suffixes: permitted, replaced });
            }
        }

        fs::create_dir_all(dir).map_err(io(dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "locald");
        name.push(DnType::CommonName, format!("locald development CA ({})", whoami()));
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.name_constraints = Some(NameConstraints {
            permitted_subtrees: permitted
                .iter()
                .map(|s| GeneralSubtree::DnsName(s.clone()))
                .chain([
                    GeneralSubtree::IpAddress(CidrSubnet::V4([127, 0, 0, 0], [255, 0, 0, 0])),
                    GeneralSubtree::IpAddress(CidrSubnet::V6(
                        std::net::Ipv6Addr::LOCALHOST.octets(),
                        [0xff; 16],
                    )),
                ])
                .collect(),
            excluded_subtrees: Vec::new(),
        });
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + CA_LIFETIME;
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();

        // Key first, 0600 from its creation; then the certificate, which marks the CA complete.
        // Replacing a stale CA overwrites its key here, so it can sign nothing more.
        locald_core::atomic_file::write(&key_path, key.serialize_pem().as_bytes(), 0o600)
            .map_err(io(&key_path))?;
        locald_core::atomic_file::write(&cert_path, cert_pem.as_bytes(), 0o644).map_err(io(&cert_path))?;
        let issuer = Issuer::new(params, key);
        Ok(Self { cert_path, cert_pem, issuer, suffixes: permitted, replaced })
    }

    /// What the CA found in `dir` permitted beyond today's constraints, when this call replaced
    /// it; empty otherwise. The caller says so: the new CA must be trusted again.
    pub fn replaced(&self) -> &[String] {
        &self.replaced
    }

    /// What `locald ca` prints and what `curl --cacert` takes.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A leaf for `name`, which must be a hostname under the permitted suffixes.
    pub fn issue(&self, name: &str) -> Result<Leaf, TlsError> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if !self.permits(&name) {
            return Err(TlsError::NotLocal(name));
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::DnsName(name.clone().try_into()?)];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name.clone());
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + LEAF_LIFETIME;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem(), not_after: params.not_after })
    }

    fn permits(&self, name: &str) -> bool {
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            });
        valid && self.suffixes.iter().any(|s| name == s || name.ends_with(&format!(".{s}")))
    }
}

/// What the CA certificate `cert_pem` permits that `permitted` (DNS suffixes) and the loopback
/// ranges do not: empty for a CA locald would make today.
fn beyond(cert_pem: &str, permitted: &[String]) -> Result<Vec<String>, TlsError> {
    use x509_parser::extensions::GeneralName;
    let unreadable = || TlsError::Cert(rcgen::Error::CouldNotParseCertificate);
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).map_err(|_| unreadable())?;
    let cert = pem.parse_x509().map_err(|_| unreadable())?;
    let constraints = cert.name_constraints().map_err(|_| unreadable())?;
    let Some(subtrees) = constraints.and_then(|c| c.value.permitted_subtrees.as_ref()) else {
        return Ok(vec!["any name (no name constraints)".to_owned()]);
    };
    let v4: &[u8] = &[127, 0, 0, 0, 255, 0, 0, 0];
    let v6: Vec<u8> = std::net::Ipv6Addr::LOCALHOST.octets().into_iter().chain([0xff; 16]).collect();
    Ok(subtrees
        .iter()
        .filter_map(|subtree| match &subtree.base {
            GeneralName::DNSName(name) if permitted.iter().any(|p| p == name) => None,
            GeneralName::DNSName(name) => Some((*name).to_owned()),
            GeneralName::IPAddress(range) if *range == v4 || *range == v6.as_slice() => None,
            other => Some(format!("{other:?}")),
        })
        .collect())
}

/// Leaves per SNI name, issued on first use and renewed before they expire.
pub struct LeafCache {
    ca: LocalCa,
    leaves: Mutex<HashMap<String, Leaf>>,
}

impl LeafCache {
    pub fn new(ca: LocalCa) -> Self {
        Self { ca, leaves: Mutex::new(HashMap::new()) }
    }

    pub fn ca(&self) -> &LocalCa {
        &self.ca
    }

    pub fn get(&self, name: &str) -> Result<Leaf, TlsError> {
        let mut leaves = self.leaves.lock().expect("leaf cache lock");
        if let Some(leaf) = leaves.get(name)
            && leaf.not_after - OffsetDateTime::now_utc() > RENEW_BEFORE
        {
            return Ok(leaf.clone());
        }
        let leaf = self.ca.issue(name)?;
        leaves.insert(name.to_owned(), leaf.clone());
        Ok(leaf)
    }
}

fn whoami() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| nix::unistd::getuid().to_string());
    let host = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
    format!("{user}@{host}")
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;
    use std::process::Command;

    use super::*;

    fn openssl(args: &[&str]) -> std::process::Output {
        Command::new("openssl").args(args).output().expect("openssl is needed for the CA tests")
    }

    #[test]
    fn the_ca_key_is_private_and_the_root_carries_name_constraints() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        let ca = LocalCa::load_or_create(&ca_dir, &["test".into()]).unwrap();
        assert_eq!(fs::metadata(ca_dir.join(CA_KEY)).unwrap().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(&ca_dir).unwrap().mode() & 0o777, 0o700);
        let text = openssl(&["x509", "-noout", "-text", "-in", ca.cert_path().to_str().unwrap()]);
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(text.contains("X509v3 Name Constraints: critical"), "{text}");
        assert!(text.contains("DNS:localhost") && text.contains("DNS:test"), "{text}");
        assert!(text.contains("CA:TRUE"), "{text}");
        // Loading again gives the same CA, not a new one.
        let again = LocalCa::load_or_create(&ca_dir, &["test".into()]).unwrap();
        assert_eq!(again.cert_pem(), ca.cert_pem());
    }

    /// A CA made by a locald that still permitted `internal` and `home.arpa`: its key could sign
    /// `metadata.google.internal` for every store that trusts it. It is replaced, key and all.
    #[test]
    fn a_ca_permitting_more_than_today_is_replaced_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let old_suffixes = ["test".to_owned(), "internal".to_owned(), "home.arpa".to_owned()];
        let old = LocalCa::load_or_create(dir.path(), &old_suffixes).unwrap();
        assert!(old.issue("metadata.google.internal").is_ok(), "the old CA did permit it");
        let old_key = fs::read(dir.path().join(CA_KEY)).unwrap();

        let new = LocalCa::load_or_create(dir.path(), &["test".into()]).unwrap();
        assert_eq!(new.replaced(), ["home.arpa", "internal"]);
        assert_ne!(new.cert_pem(), old.cert_pem());
        assert_ne!(fs::read(dir.path().join(CA_KEY)).unwrap(), old_key, "the old key is overwritten");
        assert_eq!(fs::metadata(dir.path().join(CA_KEY)).unwrap().mode() & 0o777, 0o600);
        let text = openssl(&["x509", "-noout", "-text", "-in", new.cert_path().to_str().unwrap()]);
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(
            text.contains("DNS:test") && !text.contains("DNS:internal") && !text.contains("arpa"),
            "{text}"
        );
        assert!(matches!(new.issue("metadata.google.internal"), Err(TlsError::NotLocal(_))));

        let again = LocalCa::load_or_create(dir.path(), &["test".into()]).unwrap();
        assert!(again.replaced().is_empty(), "a current CA is kept");
        assert_eq!(again.cert_pem(), new.cert_pem());
    }

    #[test]
    fn a_ca_without_name_constraints_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        let cert = params.self_signed(&key).unwrap();
        fs::write(dir.path().join(CA_KEY), key.serialize_pem()).unwrap();
        fs::write(dir.path().join(CA_CERT), cert.pem()).unwrap();
        let ca = LocalCa::load_or_create(dir.path(), &[]).unwrap();
        assert_eq!(ca.replaced().len(), 1, "{:?}", ca.replaced());
        assert_ne!(ca.cert_pem(), cert.pem());
    }

    #[test]
    fn leaves_are_issued_only_for_local_names_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_create(dir.path(), &[]).unwrap();
        for refused in
            ["example.com", "localhost.example.com", "evil-localhost", "", "a..localhost", "UPPER.example"]
        {
            assert!(matches!(ca.issue(refused), Err(TlsError::NotLocal(_))), "{refused}");
        }
        let leaf = ca.issue("web.shop.localhost").unwrap();
        let leaf_path = dir.path().join("leaf.pem");
        fs::write(&leaf_path, &leaf.cert_pem).unwrap();
        let out =
            openssl(&["verify", "-CAfile", ca.cert_path().to_str().unwrap(), leaf_path.to_str().unwrap()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    }

    /// What a thief with the key could make: a leaf for a real site, signed by the CA. The name
    /// constraints make every verifier refuse it.
    #[test]
    fn a_stolen_key_cannot_vouch_for_a_real_site() {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_create(dir.path(), &[]).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["bank.example.com".to_owned()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let forged = params.signed_by(&key, &ca.issuer).unwrap();
        let forged_path = dir.path().join("forged.pem");
        fs::write(&forged_path, forged.pem()).unwrap();
        let out =
            openssl(&["verify", "-CAfile", ca.cert_path().to_str().unwrap(), forged_path.to_str().unwrap()]);
        assert!(!out.status.success(), "a forged leaf verified: {}", String::from_utf8_lossy(&out.stdout));
        let message =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(message.contains("permitted subtree violation"), "{message}");
    }

    #[test]
    fn the_cache_reuses_a_leaf_until_it_nears_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let cache = LeafCache::new(LocalCa::load_or_create(dir.path(), &[]).unwrap());
        let first = cache.get("a.localhost").unwrap();
        assert_eq!(cache.get("a.localhost").unwrap().cert_pem, first.cert_pem);
        cache.leaves.lock().unwrap().get_mut("a.localhost").unwrap().not_after =
            OffsetDateTime::now_utc() + Duration::days(1);
        assert_ne!(cache.get("a.localhost").unwrap().cert_pem, first.cert_pem, "renewed");
        assert!(cache.get("example.com").is_err());
    }
}
