//! The proxy's TLS side: a rustls server config whose certificate resolver issues a leaf from the
//! local CA on the first handshake for a name — and only for names the route table holds. A
//! handshake for any other name (say `example.com`) fails: no certificate is made for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{CipherSuite, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::routes::Routes;
use time::OffsetDateTime;

use locald_ca::ca::{Leaf, LeafCache, RENEW_BEFORE};

pub struct CertResolver {
    leaves: LeafCache,
    routes: Arc<Routes>,
    /// Parsed keys per name, with their leaf's expiry: a handshake for a known name costs one
    /// lookup, not an issuance or a PEM parse.
    keys: Mutex<HashMap<String, (OffsetDateTime, Arc<CertifiedKey>)>>,
}

impl std::fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertResolver").finish_non_exhaustive()
    }
}

impl CertResolver {
    pub fn new(leaves: LeafCache, routes: Arc<Routes>) -> Self {
        Self { leaves, routes, keys: Mutex::new(HashMap::new()) }
    }

    /// The key for `name` if locald routes it; issued (or renewed) on demand.
    pub fn certified_key(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if !self.routes.current().is_routed(&name) {
            return None;
        }
        if let Some((not_after, key)) = self.keys.lock().unwrap_or_else(|e| e.into_inner()).get(&name)
            && *not_after - OffsetDateTime::now_utc() > RENEW_BEFORE
        {
            return Some(key.clone());
        }
        // The leaf cache renews a leaf that nears its expiry.
        let leaf = match self.leaves.get(&name) {
            Ok(leaf) => leaf,
            Err(e) => {
                eprintln!("locald: proxy: {e}");
                return None;
            }
        };
        let key = match certified(&leaf) {
            Ok(key) => Arc::new(key),
            Err(e) => {
                eprintln!("locald: proxy: leaf for {name}: {e}");
                return None;
            }
        };
        self.keys.lock().unwrap_or_else(|e| e.into_inner()).insert(name, (leaf.not_after, key.clone()));
        Some(key)
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // No SNI (an IP literal or an old client): nothing to name, nothing issued.
        self.certified_key(hello.server_name()?)
    }
}

fn certified(leaf: &Leaf) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).map_err(|e| e.to_string())?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| e.to_string())?;
    Ok(CertifiedKey::new(chain, signing))
}

/// TLS 1.2 and 1.3 with the ring provider (rcgen's too), ALPN `h2` then `http/1.1`.
pub fn server_config(resolver: Arc<CertResolver>) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut provider = rustls::crypto::ring::default_provider();
    // AES-128-GCM/SHA-256 first, and chosen over the client's order: as safe as AES-256/SHA-384
    // for a loopback proxy, and cheaper per handshake (SHA-256 has CPU instructions, SHA-384
    // has none) and per byte; OpenSSL clients (curl, wrk) list AES-256 first.
    provider.cipher_suites.sort_by_key(|suite| match suite.suite() {
        CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => 1,
        _ => 2,
    });
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.ignore_client_order = true;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // One resumption ticket per full handshake is enough for a browser's next connection.
    config.send_tls13_tickets = 1;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use locald_ca::ca::LocalCa;
    use rustls::pki_types::ServerName;

    /// Moves everything `from` has to send into `to`.
    fn pass(
        from: &mut impl std::ops::DerefMut<Target = rustls::ConnectionCommon<impl Sized>>,
        to: &mut impl std::ops::DerefMut<Target = rustls::ConnectionCommon<impl Sized>>,
    ) {
        let mut bytes = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut bytes).unwrap();
        }
        let mut reader = &bytes[..];
        while !reader.is_empty() {
            to.read_tls(&mut reader).unwrap();
        }
    }

    #[test]
    fn aes_128_is_chosen_even_when_the_client_prefers_aes_256_and_only_the_leaf_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_create(dir.path(), &[]).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca.cert_pem().as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let resolver = Arc::new(CertResolver::new(LeafCache::new(ca), Arc::new(Routes::default())));
        let server_config = server_config(resolver).unwrap();

        let mut client_provider = rustls::crypto::ring::default_provider();
        client_provider.cipher_suites.sort_by_key(|s| s.suite() != CipherSuite::TLS13_AES_256_GCM_SHA384);
        assert_eq!(client_provider.cipher_suites[0].suite(), CipherSuite::TLS13_AES_256_GCM_SHA384);
        let client_config = rustls::ClientConfig::builder_with_provider(Arc::new(client_provider))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut client = rustls::ClientConnection::new(
            Arc::new(client_config),
            ServerName::try_from("localhost").unwrap(),
        )
        .unwrap();
        let mut server = rustls::ServerConnection::new(server_config).unwrap();
        for _ in 0..10 {
            if !client.is_handshaking() && !server.is_handshaking() {
                break;
            }
            pass(&mut client, &mut server);
            server.process_new_packets().unwrap();
            pass(&mut server, &mut client);
            client.process_new_packets().unwrap();
        }
        assert!(!client.is_handshaking(), "the handshake completed");
        assert_eq!(server.negotiated_cipher_suite().unwrap().suite(), CipherSuite::TLS13_AES_128_GCM_SHA256);
        // Verified against the CA as trust anchor, with the CA itself not on the wire.
        assert_eq!(client.peer_certificates().map(<[_]>::len), Some(1), "the leaf alone");
    }
}
