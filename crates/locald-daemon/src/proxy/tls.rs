//! The proxy's TLS side: a rustls server config whose certificate resolver issues a leaf from the
//! local CA on the first handshake for a name — and only for names the route table holds. A
//! handshake for any other name (say `example.com`) fails: no certificate is made for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::routes::Routes;
use time::OffsetDateTime;

use crate::tls::ca::{Leaf, LeafCache, RENEW_BEFORE};

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
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(leaf.chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).map_err(|e| e.to_string())?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| e.to_string())?;
    Ok(CertifiedKey::new(chain, signing))
}

/// TLS 1.2 and 1.3 with the ring provider (rcgen's too), ALPN `h2` then `http/1.1`.
pub fn server_config(resolver: Arc<CertResolver>) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // One resumption ticket per full handshake is enough for a browser's next connection.
    config.send_tls13_tickets = 1;
    Ok(Arc::new(config))
}
