//! The file capability of the `--ports-only` shim install: the `security.capability` attribute
//! (`struct vfs_cap_data` of `<linux/capability.h>`) that makes the kernel grant
//! `cap_net_bind_service` at exec, written by `locald admin setup` and read by discovery.

use std::path::Path;

pub const ATTRIBUTE: &str = "security.capability";
/// `CAP_NET_BIND_SERVICE` of `<linux/capability.h>`.
pub const CAP_NET_BIND_SERVICE: u32 = 10;

const REVISION_MASK: u32 = 0xFF00_0000;
const REVISION_2: u32 = 0x0200_0000;
const REVISION_3: u32 = 0x0300_0000;
const FLAG_EFFECTIVE: u32 = 0x0000_0001;

/// A file capability as the kernel applies it at exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileCaps {
    pub permitted: u64,
    pub inheritable: u64,
    pub effective: bool,
    /// v3 only: the root uid of the user namespace it applies in (0: the initial one).
    pub root_id: u32,
}

impl FileCaps {
    /// `cap_net_bind_service=ep`: what the install writes and the only value discovery trusts.
    pub const BIND_ONLY: FileCaps =
        FileCaps { permitted: 1 << CAP_NET_BIND_SERVICE, inheritable: 0, effective: true, root_id: 0 };

    /// The revision-2 attribute (20 bytes, little-endian as the kernel stores it on every
    /// architecture locald runs on): what `setcap` writes as root in the initial namespace.
    pub fn to_v2_bytes(self) -> Vec<u8> {
        let magic = REVISION_2 | if self.effective { FLAG_EFFECTIVE } else { 0 };
        let words = [
            magic,
            self.permitted as u32,
            self.inheritable as u32,
            (self.permitted >> 32) as u32,
            (self.inheritable >> 32) as u32,
        ];
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    /// Revisions 2 and 3; revision 1 (32 capabilities, pre-2.6.25) and anything malformed is `None`.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let word = |i: usize| Some(u32::from_le_bytes(bytes.get(i * 4..i * 4 + 4)?.try_into().ok()?));
        let magic = word(0)?;
        let root_id = match (magic & REVISION_MASK, bytes.len()) {
            (REVISION_2, 20) => 0,
            (REVISION_3, 24) => word(5)?,
            _ => return None,
        };
        Some(Self {
            permitted: u64::from(word(1)?) | u64::from(word(3)?) << 32,
            inheritable: u64::from(word(2)?) | u64::from(word(4)?) << 32,
            effective: magic & FLAG_EFFECTIVE != 0,
            root_id,
        })
    }
}

/// The file capability of `path`, `None` when it has none (or one this code cannot read).
pub fn read(path: &Path) -> std::io::Result<Option<FileCaps>> {
    Ok(xattr::get(path, ATTRIBUTE)?.and_then(|bytes| FileCaps::parse(&bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `setcap cap_net_bind_service=ep` writes exactly these bytes (checked with `getfattr -e hex`).
    const SETCAP_BYTES: [u8; 20] = [1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

    #[test]
    fn bind_only_is_what_setcap_writes() {
        assert_eq!(FileCaps::BIND_ONLY.to_v2_bytes(), SETCAP_BYTES);
        assert_eq!(FileCaps::parse(&SETCAP_BYTES), Some(FileCaps::BIND_ONLY));
    }

    #[test]
    fn revision_3_carries_a_root_id_and_malformed_attributes_are_none() {
        let mut v3 = SETCAP_BYTES.to_vec();
        v3[3] = 3;
        v3.extend(1000u32.to_le_bytes());
        assert_eq!(FileCaps::parse(&v3), Some(FileCaps { root_id: 1000, ..FileCaps::BIND_ONLY }));
        assert_eq!(FileCaps::parse(&SETCAP_BYTES[..19]), None);
        assert_eq!(FileCaps::parse(&[1, 0, 0, 1, 0, 4, 0, 0, 0, 0, 0, 0]), None, "revision 1");
        assert_eq!(FileCaps::parse(&v3[..20]), None);
    }
}
