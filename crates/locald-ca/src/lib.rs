//! The user's local certificate authority: a CA that can only ever vouch for local names, leaf
//! certificates issued per SNI on demand (cached and renewed), the system and browser trust
//! stores it is added to, and the CA bundle handed to services.

pub mod ca;
pub mod ca_bundle;
pub mod trust;

use std::path::{Path, PathBuf};

pub use ca::{Leaf, LeafCache, LocalCa, RENEW_BEFORE, TlsError};
use locald_core::paths::{self, PathError};
use locald_shim_protocol::validate::HOSTS_SUFFIXES;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error(transparent)]
    Paths(#[from] PathError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("{0}: {1}")]
    Lock(PathBuf, std::io::Error),
    #[error("cannot write the CA bundle {0}: {1}")]
    Bundle(PathBuf, std::io::Error),
}

/// Where the user's CA lives: `<data dir>/ca` (`~/.local/share/locald/ca`).
pub fn ca_dir() -> Result<PathBuf, PathError> {
    Ok(paths::data_dir()?.join(CA_DIR))
}

/// The same for another user, at the default place under their `home` (`locald trust` under
/// sudo, where that user's `XDG_DATA_HOME` is not known).
pub fn default_ca_dir(home: &Path) -> PathBuf {
    paths::default_data_dir(home).join(CA_DIR)
}

const CA_DIR: &str = "ca";

/// The user's CA, created on first use. A lock keeps the CLI (`locald ca`) and the daemon from
/// both creating one at the same moment and mixing one's key with the other's certificate.
pub fn user_ca() -> Result<LocalCa, CaError> {
    let dir = ca_dir()?;
    let lock_path = dir.with_extension("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| CaError::Lock(lock_path.clone(), e))?;
    let _lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| CaError::Lock(lock_path, e.into()))?;
    // Besides `localhost` (always permitted), the suffixes the shim also writes to /etc/hosts
    // (RFC 6761 `test`), so no real host, not even one on a private network, is within the CA's
    // reach.
    let suffixes: Vec<String> =
        HOSTS_SUFFIXES.iter().filter(|s| **s != "localhost").map(|s| s.to_string()).collect();
    let ca = LocalCa::load_or_create(&dir, &suffixes)?;
    if !ca.replaced().is_empty() {
        tracing::warn!(
            "replaced the local CA in {}: it also permitted {}, names real hosts can have; \
             its key is gone, so it can sign nothing more — run `sudo locald trust` to trust the new one",
            dir.display(),
            ca.replaced().join(", ")
        );
    }
    Ok(ca)
}
