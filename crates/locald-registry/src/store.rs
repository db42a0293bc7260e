//! The per-user content-addressed store, `<cache>/oci/`: `blobs/sha256/<hex>` once per blob
//! (manifests, configs, layers), `layers/sha256/<hex>/` each layer unpacked once on its own,
//! `images/<hex>.json` per pulled image manifest, and
//! `projects/` naming the projects whose `.locald/images.json` pin images. A blob appears
//! under its name only whole and verified (written to a temp file, hashed, renamed), and writers
//! of one blob take its lock, so two pulls of the same image download it once.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};

use locald_core::atomic_file;
use locald_image::owned;

/// The owners record of a layer unpacked with every file the user's.
const CALLER: &str = "caller";

/// How a layer unpacked now is owned: the user's, or kept through this allocation.
fn owners_now() -> String {
    owned::mapping().map_or_else(|| CALLER.to_owned(), |(_, mapping)| mapping.key())
}

/// What the store knows of one pulled image manifest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageRecord {
    /// The references it was pulled as, normalised.
    pub references: BTreeSet<String>,
    /// `sha256:…` of the platform manifest.
    pub digest: String,
    /// The index it was chosen from, when the reference named one.
    #[serde(default)]
    pub index: Option<String>,
    pub config: String,
    pub layers: Vec<String>,
    /// Compressed bytes of config and layers.
    pub size: u64,
}

/// A project's pins: reference as written → what was pulled for it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProjectImages {
    pub images: BTreeMap<String, Pinned>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pinned {
    /// The normalised reference.
    pub reference: String,
    /// The platform manifest's digest.
    pub digest: String,
}

impl ProjectImages {
    pub fn path(project: &Path) -> PathBuf {
        project.join(".locald").join("images.json")
    }

    pub fn load(project: &Path) -> ProjectImages {
        fs::read(Self::path(project)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    pub fn save(&self, project: &Path) -> io::Result<()> {
        let path = Self::path(project);
        fs::create_dir_all(path.parent().expect("has a parent"))?;
        let json = serde_json::to_vec_pretty(self).expect("serializes");
        atomic_file::write(&path, &json, 0o644)
    }
}

/// One line of `locald images`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub record: ImageRecord,
    pub projects: Vec<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// `sha256:<64 hex>` → the hex; anything else is refused before it names a path.
pub fn digest_hex(digest: &str) -> io::Result<&str> {
    match digest.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) => {
            Ok(hex)
        }
        _ => Err(io::Error::new(io::ErrorKind::InvalidData, format!("unsupported digest {digest:?}"))),
    }
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl Store {
    /// `<cache>/oci`, created as needed.
    pub fn open(cache: &Path) -> io::Result<Store> {
        let root = cache.join("oci");
        for dir in ["blobs/sha256", "layers/sha256", "images", "projects", "locks"] {
            fs::create_dir_all(root.join(dir))?;
        }
        Ok(Store { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, digest: &str) -> io::Result<PathBuf> {
        Ok(self.root.join("blobs/sha256").join(digest_hex(digest)?))
    }

    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_ok_and(|p| p.is_file())
    }

    /// Blocks until this process is the only writer of `digest`'s blob.
    pub fn lock(&self, digest: &str) -> io::Result<Flock<File>> {
        self.lock_named(&format!("{}.lock", digest_hex(digest)?), FlockArg::LockExclusive)
    }

    fn lock_named(&self, name: &str, how: FlockArg) -> io::Result<Flock<File>> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join("locks").join(name))?;
        Flock::lock(file, how).map_err(|(_, e)| io::Error::from(e))
    }

    /// Where layer `digest` is unpacked on its own (whiteouts kept as `.wh.` marker files).
    pub fn layer_dir(&self, digest: &str) -> io::Result<PathBuf> {
        Ok(self.root.join("layers/sha256").join(digest_hex(digest)?))
    }

    /// Unpacked, and owned as trees are owned now ([`locald_image::owned`]): a layer unpacked
    /// under another allocation (or none) holds other host ids and is unpacked again.
    pub fn has_layer(&self, digest: &str) -> bool {
        self.layer_dir(digest).is_ok_and(|p| p.is_dir())
            && fs::read_to_string(self.owners_path(digest)).unwrap_or_else(|_| CALLER.into()) == owners_now()
    }

    /// Beside the layer's directory, never in it: the directory is the layer's content alone.
    fn owners_path(&self, digest: &str) -> PathBuf {
        let hex = digest_hex(digest).unwrap_or_default();
        self.root.join("layers/sha256").join(format!(".{hex}.owners"))
    }

    /// Unpacks the stored blob of layer `digest` into its directory, once: into a temp
    /// directory first, renamed when whole, so a pull killed halfway leaves no half layer under
    /// the layer's name (the temp directory is removed by the next unpack of that layer).
    pub fn unpack_layer(&self, digest: &str) -> io::Result<PathBuf> {
        let dir = self.layer_dir(digest)?;
        if self.has_layer(digest) {
            return Ok(dir);
        }
        let hex = digest_hex(digest)?;
        let _guard = self.lock_named(&format!("{hex}.layer.lock"), FlockArg::LockExclusive)?;
        if self.has_layer(digest) {
            return Ok(dir);
        }
        let parent = self.root.join("layers/sha256");
        // Leftovers of a killed unpack of this layer: nobody else holds its lock.
        for entry in fs::read_dir(&parent)?.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&format!(".tmp-{hex}-")) {
                let _ = owned::remove_dir_all(&entry.path());
            }
        }
        // Unpacked under another allocation: its files hold ids that are not the user's now.
        owned::remove_dir_all(&dir)?;
        let temp = parent.join(format!(".tmp-{hex}-{}", atomic_file::unique()));
        fs::create_dir(&temp)?;
        let owners = owners_now();
        let result = locald_image::unpack_layer(&self.blob_path(digest)?, digest, &temp)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
            .and_then(|_| atomic_file::write(&self.owners_path(digest), owners.as_bytes(), 0o644))
            .and_then(|()| fs::rename(&temp, &dir));
        if let Err(e) = result {
            let _ = owned::remove_dir_all(&temp);
            return Err(e);
        }
        Ok(dir)
    }

    /// A fresh temp path beside the blobs, so the final rename stays on one filesystem.
    pub fn temp_path(&self, digest: &str) -> io::Result<PathBuf> {
        Ok(self.root.join("blobs/sha256").join(format!(
            ".tmp-{}-{}",
            digest_hex(digest)?,
            atomic_file::unique()
        )))
    }

    /// Moves a fully written and verified temp file to its name.
    pub fn commit_blob(&self, temp: &Path, digest: &str) -> io::Result<()> {
        File::open(temp)?.sync_all()?;
        fs::rename(temp, self.blob_path(digest)?)
    }

    /// Stores small `bytes` (a manifest) under `digest`, which they must match.
    pub fn put_bytes(&self, digest: &str, bytes: &[u8]) -> io::Result<()> {
        if sha256(bytes) != digest {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("content does not match {digest}"),
            ));
        }
        if self.has_blob(digest) {
            return Ok(());
        }
        let temp = self.temp_path(digest)?;
        fs::write(&temp, bytes)?;
        self.commit_blob(&temp, digest)
    }

    pub fn read_blob(&self, digest: &str) -> io::Result<Vec<u8>> {
        fs::read(self.blob_path(digest)?)
    }

    fn record_path(&self, digest: &str) -> io::Result<PathBuf> {
        Ok(self.root.join("images").join(format!("{}.json", digest_hex(digest)?)))
    }

    /// The record of a manifest whose blobs are all present; `None` when anything is missing.
    pub fn image(&self, digest: &str) -> Option<ImageRecord> {
        let record: ImageRecord =
            serde_json::from_slice(&fs::read(self.record_path(digest).ok()?).ok()?).ok()?;
        let complete = self.has_blob(&record.digest)
            && self.has_blob(&record.config)
            && record.layers.iter().all(|l| self.has_blob(l) && self.has_layer(l));
        complete.then_some(record)
    }

    /// Records `record`, merging the references of an earlier record of the same manifest.
    pub fn save_image(&self, mut record: ImageRecord) -> io::Result<()> {
        let path = self.record_path(&record.digest)?;
        let _guard = self.lock(&record.digest)?;
        if let Some(old) = fs::read(&path).ok().and_then(|b| serde_json::from_slice::<ImageRecord>(&b).ok()) {
            record.references.extend(old.references);
        }
        atomic_file::write(&path, &serde_json::to_vec_pretty(&record).expect("serializes"), 0o644)
    }

    /// Remembers `project` as one that pins images, for `locald images` and `prune`.
    pub fn register_project(&self, project: &Path) -> io::Result<()> {
        let name = hex::encode(&Sha256::digest(project.as_os_str().as_encoded_bytes())[..8]);
        let path = self.root.join("projects").join(name);
        if fs::read(&path).is_ok_and(|b| b == project.as_os_str().as_encoded_bytes()) {
            return Ok(());
        }
        atomic_file::write(&path, project.as_os_str().as_encoded_bytes(), 0o644)
    }

    /// Registered projects that still exist, with their pins.
    fn projects(&self) -> Vec<(PathBuf, ProjectImages)> {
        let Ok(entries) = fs::read_dir(self.root.join("projects")) else { return Vec::new() };
        entries
            .flatten()
            .filter_map(|e| fs::read_to_string(e.path()).ok())
            .map(PathBuf::from)
            .filter(|p| ProjectImages::path(p).is_file())
            .map(|p| {
                let pins = ProjectImages::load(&p);
                (p, pins)
            })
            .collect()
    }

    fn records(&self) -> Vec<ImageRecord> {
        let Ok(entries) = fs::read_dir(self.root.join("images")) else { return Vec::new() };
        let mut records: Vec<ImageRecord> = entries
            .flatten()
            .filter_map(|e| fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect();
        records.sort_by(|a, b| a.references.cmp(&b.references));
        records
    }

    /// Every image in the store with the projects that pin it.
    pub fn list(&self) -> Vec<Listed> {
        let projects = self.projects();
        self.records()
            .into_iter()
            .map(|record| {
                let users = projects
                    .iter()
                    .filter(|(_, pins)| pins.images.values().any(|p| p.digest == record.digest))
                    .map(|(dir, _)| dir.clone())
                    .collect();
                Listed { record, projects: users }
            })
            .collect()
    }

    /// Removes the images no project pins and every blob no remaining image uses. Returns the
    /// removed images and the bytes freed.
    pub fn prune(&self) -> io::Result<(Vec<ImageRecord>, u64)> {
        let mut removed = Vec::new();
        let mut keep: BTreeSet<String> = BTreeSet::new();
        for listed in self.list() {
            if listed.projects.is_empty() {
                fs::remove_file(self.record_path(&listed.record.digest)?)?;
                removed.push(listed.record);
            } else {
                let r = listed.record;
                keep.insert(r.digest.clone());
                keep.extend(r.index.clone());
                keep.insert(r.config.clone());
                keep.extend(r.layers.iter().cloned());
            }
        }
        let mut freed = 0;
        for entry in fs::read_dir(self.root.join("blobs/sha256"))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let digest = format!("sha256:{name}");
            if name.starts_with('.') || keep.contains(&digest) {
                continue;
            }
            // A pull writing this blob right now holds its lock; leave it be.
            let Ok(_guard) = self.try_lock(&digest) else { continue };
            freed += entry.metadata().map(|m| m.len()).unwrap_or(0);
            fs::remove_file(entry.path())?;
        }
        for entry in fs::read_dir(self.root.join("layers/sha256"))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || keep.contains(&format!("sha256:{name}")) {
                continue;
            }
            let Ok(_guard) = self.lock_named(&format!("{name}.layer.lock"), FlockArg::LockExclusiveNonblock)
            else {
                continue;
            };
            owned::remove_dir_all(&entry.path())?;
            let _ = fs::remove_file(self.owners_path(&format!("sha256:{name}")));
        }
        Ok((removed, freed))
    }

    fn try_lock(&self, digest: &str) -> io::Result<Flock<File>> {
        self.lock_named(&format!("{}.lock", digest_hex(digest)?), FlockArg::LockExclusiveNonblock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, name, *data).unwrap();
        }
        tar.into_inner().unwrap()
    }

    fn xattr_of(path: &Path, name: &str) -> Option<Vec<u8>> {
        let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        let name = std::ffi::CString::new(name).unwrap();
        let mut buf = [0u8; 64];
        // SAFETY: getxattr with NUL-terminated strings and a buffer of the size given.
        let n =
            unsafe { nix::libc::getxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        (n >= 0).then(|| buf[..n as usize].to_vec())
    }

    fn put_blob(store: &Store, bytes: &[u8]) -> String {
        let digest = sha256(bytes);
        store.put_bytes(&digest, bytes).unwrap();
        digest
    }

    #[test]
    fn a_layer_is_unpacked_once_on_its_own_with_its_whiteouts_kept() {
        let cache = tempfile::tempdir().unwrap();
        let store = Store::open(cache.path()).unwrap();
        let digest = put_blob(
            &store,
            &layer_tar(&[("etc/app.conf", b"x=1\n"), ("etc/.wh.old.conf", b""), ("var/.wh..wh..opq", b"")]),
        );
        // A killed unpack left a half directory behind; it is never used, and is cleared.
        let hex = digest_hex(&digest).unwrap().to_owned();
        let stale = store.root().join("layers/sha256").join(format!(".tmp-{hex}-killed"));
        fs::create_dir_all(stale.join("etc")).unwrap();
        assert!(!store.has_layer(&digest));

        let dir = store.unpack_layer(&digest).unwrap();
        assert_eq!(fs::read(dir.join("etc/app.conf")).unwrap(), b"x=1\n");
        // Kept in overlayfs' form, so the directory is a lower as it is.
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let whiteout = fs::symlink_metadata(dir.join("etc/old.conf")).unwrap();
        assert!(whiteout.file_type().is_char_device() && whiteout.rdev() == 0, "{whiteout:?}");
        assert!(!dir.join("etc/.wh.old.conf").exists());
        let opaque = xattr_of(&dir.join("var"), "user.overlay.opaque");
        assert_eq!(opaque.as_deref(), Some(&b"y"[..]), "the opaque directory is marked for overlayfs");
        assert!(!stale.exists(), "the half directory of a killed unpack was left");
        assert_eq!(store.unpack_layer(&digest).unwrap(), dir);
    }

    #[test]
    fn a_blob_that_does_not_match_its_digest_leaves_no_layer() {
        let cache = tempfile::tempdir().unwrap();
        let store = Store::open(cache.path()).unwrap();
        let good = layer_tar(&[("file", b"content")]);
        let digest = sha256(&good);
        assert!(store.put_bytes(&digest, b"other bytes").is_err(), "put_bytes checks the digest");
        // Corrupted after it was stored (disk, another process): unpack checks again.
        let mut bad = good.clone();
        bad[600] ^= 1;
        fs::write(store.blob_path(&digest).unwrap(), &bad).unwrap();
        let e = store.unpack_layer(&digest).unwrap_err();
        assert!(e.to_string().contains("does not match its digest"), "{e}");
        assert!(!store.has_layer(&digest));
        let left: Vec<_> = fs::read_dir(store.root().join("layers/sha256")).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn digests_that_are_not_sha256_hex_name_no_path() {
        for bad in ["sha256:../../etc", "sha512:abc", &format!("sha256:{}", "A".repeat(64))] {
            assert!(digest_hex(bad).is_err(), "{bad}");
        }
    }
}
