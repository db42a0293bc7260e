//! The `--ports-only` install: the shim is not setuid but carries the file capability
//! `cap_net_bind_service=ep`, so it runs as the caller holding that one capability. It then serves
//! `bind` and the handshake only, and gives the capability up from every set once the socket is
//! bound.

use caps::{CapSet, Capability};
use locald_shim_protocol::{ShimError, ShimMode};

/// What this process holds, judged from the process itself: euid 0 is the setuid install; only
/// `cap_net_bind_service` in the permitted set (from the file capability, or from the ambient set
/// a NixOS wrapper raises) is the capability install; anything else is no privilege at all.
pub fn mode() -> ShimMode {
    if nix::unistd::geteuid().is_root() {
        return ShimMode::Setuid;
    }
    match caps::read(None, CapSet::Permitted) {
        Ok(held) if held.len() == 1 && held.contains(&Capability::CAP_NET_BIND_SERVICE) => {
            ShimMode::Capabilities
        }
        _ => ShimMode::Unprivileged,
    }
}

/// Proof that the process runs as its caller with only the bind capability; consumed by
/// [`BindOnly::drop_all`].
#[derive(Debug)]
pub struct BindOnly(());

impl BindOnly {
    pub fn acquire() -> Result<Self, ShimError> {
        if mode() != ShimMode::Capabilities {
            return Err(ShimError::refused(
                "this locald-shim holds neither root nor only cap_net_bind_service",
            ));
        }
        // `=ep` makes it effective at exec; a wrapper may have raised it as permitted only.
        caps::raise(None, CapSet::Effective, Capability::CAP_NET_BIND_SERVICE)
            .map_err(|e| ShimError::os("raise cap_net_bind_service", e))?;
        Ok(Self(()))
    }

    /// Empties every capability set the process can change and checks that nothing is left,
    /// so the caller's process that receives the listener gains nothing else from the shim.
    pub fn drop_all(self) -> Result<(), ShimError> {
        // Ambient first (it needs no capability); the bounding set needs CAP_SETPCAP, which this
        // process never has, so it stays as the caller's was: without a permitted capability the
        // bounding set only limits, it grants nothing.
        caps::clear(None, CapSet::Ambient).map_err(|e| ShimError::os("clear ambient capabilities", e))?;
        let _ = caps::drop(None, CapSet::Bounding, Capability::CAP_NET_BIND_SERVICE);
        for set in [CapSet::Effective, CapSet::Permitted, CapSet::Inheritable] {
            caps::clear(None, set).map_err(|e| ShimError::os(&format!("clear {set:?} capabilities"), e))?;
        }
        for set in [CapSet::Effective, CapSet::Permitted, CapSet::Inheritable, CapSet::Ambient] {
            if !caps::read(None, set).map_err(|e| ShimError::os("read capabilities", e))?.is_empty() {
                return Err(ShimError::os("drop capabilities", format!("{set:?} set is not empty")));
            }
        }
        Ok(())
    }
}

/// The one-line refusal of every request the capability install does not serve.
pub fn refuse(request: &str) -> ShimError {
    ShimError::refused(format!(
        "{request} needs the full install: this locald-shim runs in capabilities mode \
         (cap_net_bind_service only, `locald admin setup --ports-only`), which serves bind alone — \
         run `sudo locald admin setup` for the setuid install"
    ))
}
