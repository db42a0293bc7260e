//! The per-user content-addressed store, `<cache>/oci/`: `blobs/sha256/<hex>` once per blob
//! (manifests, configs, layers), `images/<hex>.json` per pulled image manifest, and
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
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) => Ok(hex),
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
        for dir in ["blobs/sha256", "images", "projects", "locks"] {
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
        let path = self.root.join("locks").join(format!("{}.lock", digest_hex(digest)?));
        let file = OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| io::Error::from(e))
    }

    /// A fresh temp path beside the blobs, so the final rename stays on one filesystem.
    pub fn temp_path(&self, digest: &str) -> io::Result<PathBuf> {
        Ok(self.root.join("blobs/sha256").join(format!(".tmp-{}-{}", digest_hex(digest)?, atomic_file::unique())))
    }

    /// Moves a fully written and verified temp file to its name.
    pub fn commit_blob(&self, temp: &Path, digest: &str) -> io::Result<()> {
        File::open(temp)?.sync_all()?;
        fs::rename(temp, self.blob_path(digest)?)
    }

    /// Stores small `bytes` (a manifest) under `digest`, which they must match.
    pub fn put_bytes(&self, digest: &str, bytes: &[u8]) -> io::Result<()> {
        if sha256(bytes) != digest {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("content does not match {digest}")));
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
        let record: ImageRecord = serde_json::from_slice(&fs::read(self.record_path(digest).ok()?).ok()?).ok()?;
        let complete = self.has_blob(&record.digest)
            && self.has_blob(&record.config)
            && record.layers.iter().all(|l| self.has_blob(l));
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
        Ok((removed, freed))
    }

    fn try_lock(&self, digest: &str) -> io::Result<Flock<File>> {
        let path = self.root.join("locks").join(format!("{}.lock", digest_hex(digest)?));
        let file = OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
        Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| io::Error::from(e))
    }
}
