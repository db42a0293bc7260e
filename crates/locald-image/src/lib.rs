//! Container images from local sources — a rootfs directory, an OCI image layout directory, or a
//! `docker save` / OCI archive tarball — and the OCI bundle a service runs from. Layers are
//! unpacked in order into a content-addressed cache under the user's cache directory; images
//! pulled from a registry (by `locald-registry`) come in as their stored blobs. Plain blocking code: the daemon calls it from
//! `spawn_blocking`, and nothing here is async or privileged.

pub mod bundle;
pub mod copy;
pub mod identity;
mod layer;
pub mod mapper;
pub mod owned;
mod read_ahead;

use std::collections::HashMap;
use std::fs;
use std::io::{BufReader, Read};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use oci_spec::image::{ImageIndex, ImageManifest};
use sha2::{Digest, Sha256};

use locald_core::atomic_file;

pub use layer::{LayerError, Owners, Skipped, Whiteouts};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image {0} does not exist")]
    Missing(PathBuf),
    #[error(
        "image {0:?} looks like a registry reference; only local images are supported yet — export it with `docker save {0} -o image.tar` (or `skopeo copy docker://{0} oci:image`) and point `image` at the result"
    )]
    RegistryReference(String),
    #[error("image {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("image {path}: layer {digest} does not match its digest")]
    Digest { path: PathBuf, digest: String },
    #[error("image {path}: {source}")]
    Layer { path: PathBuf, source: LayerError },
    #[error("image {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("image {path}: {message}")]
    Helper { path: PathBuf, message: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// A directory that is already a root filesystem.
    Directory(PathBuf),
    /// A directory with `oci-layout` and `index.json`.
    OciLayout(PathBuf),
    /// A tarball: `docker save` output or an OCI archive.
    Archive(PathBuf),
    /// An image pulled from a registry into the shared store: its verified blobs.
    Pulled(Pulled),
}

/// The blobs of a pulled image, in the store (`locald-registry` verified them on the way in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// `sha256:…` of the platform manifest.
    pub manifest: String,
    pub config: PathBuf,
    /// In application order, each with its digest.
    pub layers: Vec<(PathBuf, String)>,
}

/// A root filesystem ready to copy into a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub rootfs: PathBuf,
    /// Identifies the content: equal ids, equal rootfs.
    pub id: String,
    pub skipped: Skipped,
    pub defaults: Defaults,
}

/// What the image's configuration says a container runs when `locald.toml` does not.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Defaults {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=VALUE`.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    /// `User`: a name or uid, optionally `:group`; resolved in the image's own files.
    #[serde(default)]
    pub user: Option<String>,
}

impl Defaults {
    /// From an OCI or Docker image configuration (both keep these under `config` with the same
    /// capitalised names); anything missing or malformed is simply absent.
    fn from_config_json(bytes: &[u8]) -> Defaults {
        let value: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
        let config = &value["config"];
        let strings = |key: &str| -> Vec<String> {
            config[key]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
                .unwrap_or_default()
        };
        Defaults {
            entrypoint: strings("Entrypoint"),
            cmd: strings("Cmd"),
            env: strings("Env"),
            workdir: config["WorkingDir"].as_str().filter(|w| !w.is_empty()).map(str::to_owned),
            user: config["User"].as_str().filter(|u| !u.is_empty()).map(str::to_owned),
        }
    }

    /// ENTRYPOINT followed by CMD, as docker runs them.
    pub fn argv(&self) -> Vec<String> {
        self.entrypoint.iter().chain(&self.cmd).cloned().collect()
    }
}

/// The [`Defaults`] of an image configuration blob (a pulled image's `config`).
pub fn defaults_of(config: &Path) -> Result<Defaults, ImageError> {
    let bytes = fs::read(config).map_err(|source| ImageError::Io { path: config.to_owned(), source })?;
    Ok(Defaults::from_config_json(&bytes))
}

/// Where a cached image keeps its [`Defaults`], beside `rootfs/`.
const DEFAULTS_FILE: &str = "defaults.json";

/// Classifies `image` (relative to `project`).
pub fn detect(project: &Path, image: &str) -> Result<ImageSource, ImageError> {
    let path = project.join(image);
    let meta = match fs::metadata(&path) {
        Ok(meta) => meta,
        Err(_) if looks_like_registry_reference(image) => {
            return Err(ImageError::RegistryReference(image.to_owned()));
        }
        Err(_) => return Err(ImageError::Missing(path)),
    };
    if meta.is_dir() {
        if path.join("oci-layout").is_file() && path.join("index.json").is_file() {
            Ok(ImageSource::OciLayout(path))
        } else {
            Ok(ImageSource::Directory(path))
        }
    } else {
        Ok(ImageSource::Archive(path))
    }
}

/// `nginx`, `nginx:1.25`, `docker.io/library/redis@sha256:…`: names, not paths.
pub fn looks_like_registry_reference(image: &str) -> bool {
    !image.starts_with('.')
        && !image.starts_with('/')
        && !image.ends_with(".tar")
        && !image.ends_with(".tar.gz")
        && !image.is_empty()
        && image.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/:@".contains(&b))
}

/// Unpacks `source` into `cache` (if it is not there already) and returns its rootfs.
pub fn prepare(source: &ImageSource, cache: &Path) -> Result<Prepared, ImageError> {
    match source {
        ImageSource::Directory(path) => Ok(Prepared {
            rootfs: path.clone(),
            id: format!("dir:{}", path.display()),
            skipped: Skipped::default(),
            defaults: Defaults::default(),
        }),
        ImageSource::OciLayout(path) => unpack_cached(path, cache, &oci_layers(path)?),
        ImageSource::Pulled(pulled) => {
            let config = fs::read(&pulled.config)
                .map_err(|source| ImageError::Io { path: pulled.config.clone(), source })?;
            let layers = Layers {
                id: pulled.manifest.clone(),
                blobs: pulled
                    .layers
                    .iter()
                    .map(|(path, digest)| Blob { path: path.clone(), digest: Some(digest.clone()) })
                    .collect(),
                defaults: Defaults::from_config_json(&config),
            };
            unpack_cached(&pulled.config, cache, &layers)
        }
        ImageSource::Archive(path) => {
            let staging = cache.join(format!(".staging-{}", atomic_file::unique()));
            let _ = fs::remove_dir_all(&staging);
            extract_archive(path, &staging)?;
            let layers = if staging.join("index.json").is_file() {
                oci_layers(&staging)
            } else {
                docker_layers(&staging)
            };
            let result = layers.and_then(|layers| unpack_cached(path, cache, &layers));
            let _ = fs::remove_dir_all(&staging);
            result
        }
    }
}

/// The blobs of one image, in application order, with what identifies the whole.
struct Layers {
    id: String,
    blobs: Vec<Blob>,
    defaults: Defaults,
}

pub(crate) struct Blob {
    path: PathBuf,
    /// `sha256:<hex>` to verify, when the format gives one.
    digest: Option<String>,
}

fn invalid(path: &Path, message: impl Into<String>) -> ImageError {
    ImageError::Invalid { path: path.to_owned(), message: message.into() }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ImageError> {
    let bytes = fs::read(path).map_err(|source| ImageError::Io { path: path.to_owned(), source })?;
    serde_json::from_slice(&bytes).map_err(|e| invalid(path, e.to_string()))
}

fn blob_path(layout: &Path, digest: &str) -> Result<PathBuf, ImageError> {
    let (algorithm, hex) =
        digest.split_once(':').ok_or_else(|| invalid(layout, format!("bad digest {digest}")))?;
    if algorithm != "sha256" || hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid(layout, format!("unsupported digest {digest}")));
    }
    Ok(layout.join("blobs").join(algorithm).join(hex))
}

fn oci_layers(layout: &Path) -> Result<Layers, ImageError> {
    let index: ImageIndex = read_json(&layout.join("index.json"))?;
    let mut descriptor =
        index.manifests().first().cloned().ok_or_else(|| invalid(layout, "index.json lists no image"))?;
    // A nested index (multi-platform): take the linux/amd64 entry, else the first.
    for _ in 0..4 {
        if !descriptor.media_type().to_string().contains("index") {
            break;
        }
        let nested: ImageIndex = read_json(&blob_path(layout, descriptor.digest().as_ref())?)?;
        let pick = nested
            .manifests()
            .iter()
            .find(|m| {
                m.platform()
                    .as_ref()
                    .is_some_and(|p| p.os().to_string() == "linux" && p.architecture().to_string() == "amd64")
            })
            .or_else(|| nested.manifests().first())
            .cloned()
            .ok_or_else(|| invalid(layout, "empty nested index"))?;
        descriptor = pick;
    }
    let manifest: ImageManifest = read_json(&blob_path(layout, descriptor.digest().as_ref())?)?;
    let blobs = manifest
        .layers()
        .iter()
        .map(|l| {
            Ok(Blob { path: blob_path(layout, l.digest().as_ref())?, digest: Some(l.digest().to_string()) })
        })
        .collect::<Result<_, ImageError>>()?;
    let config = fs::read(blob_path(layout, manifest.config().digest().as_ref())?).unwrap_or_default();
    Ok(Layers { id: descriptor.digest().to_string(), blobs, defaults: Defaults::from_config_json(&config) })
}

#[derive(serde::Deserialize)]
struct DockerManifestEntry {
    #[serde(rename = "Layers")]
    layers: Vec<String>,
    #[serde(rename = "Config")]
    config: Option<String>,
}

fn docker_layers(dir: &Path) -> Result<Layers, ImageError> {
    let path = dir.join("manifest.json");
    let bytes = fs::read(&path).map_err(|_| {
        invalid(dir, "neither an OCI archive (index.json) nor docker save output (manifest.json)")
    })?;
    let entries: Vec<DockerManifestEntry> =
        serde_json::from_slice(&bytes).map_err(|e| invalid(&path, e.to_string()))?;
    let entry = entries.first().ok_or_else(|| invalid(&path, "manifest.json lists no image"))?;
    let blobs = entry
        .layers
        .iter()
        .map(|layer| {
            let relative = Path::new(layer);
            if relative.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
                return Err(invalid(&path, format!("layer path {layer} leaves the archive")));
            }
            Ok(Blob { path: dir.join(relative), digest: None })
        })
        .collect::<Result<_, _>>()?;
    let config = entry
        .config
        .as_deref()
        .filter(|c| Path::new(c).components().all(|c| matches!(c, std::path::Component::Normal(_))))
        .and_then(|c| fs::read(dir.join(c)).ok())
        .unwrap_or_default();
    Ok(Layers {
        id: format!("sha256:{}", hex::encode(Sha256::digest(&bytes))),
        blobs,
        defaults: Defaults::from_config_json(&config),
    })
}

/// The outer archive holds only plain files and directories; anything else is refused.
fn extract_archive(archive: &Path, into: &Path) -> Result<(), ImageError> {
    let io = |source| ImageError::Io { path: archive.to_owned(), source };
    fs::create_dir_all(into).map_err(io)?;
    let file = fs::File::open(archive).map_err(io)?;
    let mut tar = tar::Archive::new(decompress(BufReader::new(file)).map_err(io)?);
    for entry in tar.entries().map_err(io)? {
        let mut entry = entry.map_err(io)?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir() || kind.is_symlink()) {
            return Err(invalid(archive, format!("unexpected {kind:?} entry in the archive")));
        }
        if kind.is_symlink() {
            // Older docker save output links duplicate layers; those layers are read by path,
            // and a link is never followed outside `into` (unpack_in refuses it).
            continue;
        }
        if !entry.unpack_in(into).map_err(io)? {
            return Err(invalid(archive, "an archive entry leaves the archive"));
        }
    }
    Ok(())
}

/// gzip, zstd or plain tar, by magic number.
fn decompress<'a, R: Read + Send + 'a>(
    mut reader: BufReader<R>,
) -> std::io::Result<Box<dyn Read + Send + 'a>> {
    use std::io::BufRead;
    let head = reader.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::GzDecoder::new(reader)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let decoder = ruzstd::decoding::StreamingDecoder::new(reader).map_err(std::io::Error::other)?;
        Ok(Box::new(decoder))
    } else {
        Ok(Box::new(reader))
    }
}

/// Hashes what passes through, to check a blob against its digest once fully read.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn unpack_cached(source: &Path, cache: &Path, layers: &Layers) -> Result<Prepared, ImageError> {
    let io = |source: std::io::Error| ImageError::Io { path: cache.to_owned(), source };
    let helper = owned::mapping();
    // A tree with its owners holds host ids of one allocation: another allocation gets its own.
    let (key, id) = match &helper {
        None => (layers.id.replace(':', "-"), layers.id.clone()),
        Some((_, mapping)) => (
            format!("{}-{}", layers.id.replace(':', "-"), mapping.key()),
            format!("{}+{}", layers.id, mapping.key()),
        ),
    };
    let done = cache.join(&key);
    if done.join("rootfs").is_dir() {
        let defaults = fs::read(done.join(DEFAULTS_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_else(|| layers.defaults.clone());
        return Ok(Prepared {
            rootfs: done.join("rootfs"),
            id: id.clone(),
            skipped: Skipped::default(),
            defaults,
        });
    }
    fs::create_dir_all(cache).map_err(io)?;
    // Unpack beside the final name and rename: concurrent `up`s never see a half-made rootfs.
    let temp = cache.join(format!(".tmp-{key}-{}", atomic_file::unique()));
    fs::create_dir_all(temp.join("rootfs")).map_err(io)?;
    let result = match &helper {
        None => unpack_layers_as(source, &temp.join("rootfs"), &layers.blobs, Owners::Caller),
        Some((exe, mapping)) => {
            let rootfs = temp.join("rootfs");
            let mut args: Vec<&std::ffi::OsStr> =
                vec!["unpack-image".as_ref(), source.as_os_str(), rootfs.as_os_str()];
            for blob in &layers.blobs {
                args.push(blob.path.as_os_str());
                args.push(blob.digest.as_deref().unwrap_or("-").as_ref());
            }
            helped(source, owned::run(exe, mapping, &args))
        }
    };
    let result = result.and_then(|skipped| {
        let json = serde_json::to_vec(&layers.defaults).expect("defaults serialize");
        fs::write(temp.join(DEFAULTS_FILE), json).map_err(io)?;
        Ok(skipped)
    });
    let skipped = match result {
        Ok(skipped) => skipped,
        Err(e) => {
            let _ = owned::remove_dir_all(&temp);
            return Err(e);
        }
    };
    match fs::rename(&temp, &done) {
        Ok(()) => {}
        // Another `up` finished first with the same content.
        Err(_) if done.join("rootfs").is_dir() => {
            let _ = owned::remove_dir_all(&temp);
        }
        Err(e) => return Err(io(e)),
    }
    Ok(Prepared { rootfs: done.join("rootfs"), id, skipped, defaults: layers.defaults.clone() })
}

/// What the helper printed: the entries it left out.
fn helped(source: &Path, out: std::io::Result<Vec<u8>>) -> Result<Skipped, ImageError> {
    let helper = |message: String| ImageError::Helper { path: source.to_owned(), message };
    let out = out.map_err(|e| helper(e.to_string()))?;
    serde_json::from_slice(&out).map_err(|e| helper(format!("the unpack helper's answer: {e}")))
}

/// Unpacks one layer blob on its own into the empty directory `into`, keeping its whiteouts as
/// marker files, after checking the blob against `digest` (`sha256:…`). With an allocation (see
/// [`owned`]) the files keep the layer's owners, else they are all the user's.
pub fn unpack_layer(blob: &Path, digest: &str, into: &Path) -> Result<Skipped, ImageError> {
    match owned::mapping() {
        None => unpack_layer_as(blob, digest, into, Owners::Caller),
        Some((exe, mapping)) => {
            let args = ["unpack-layer".as_ref(), blob.as_os_str(), digest.as_ref(), into.as_os_str()];
            helped(blob, owned::run(&exe, &mapping, &args))
        }
    }
}

/// [`unpack_layer`] in this process, with `owners`.
pub(crate) fn unpack_layer_as(
    blob: &Path,
    digest: &str,
    into: &Path,
    owners: Owners,
) -> Result<Skipped, ImageError> {
    let io = |source| ImageError::Io { path: blob.to_owned(), source };
    let root: OwnedFd =
        fs::File::open(into).map_err(|source| ImageError::Io { path: into.to_owned(), source })?.into();
    let mut hashing = Hashing { inner: fs::File::open(blob).map_err(io)?, hasher: Sha256::new() };
    let mut modes = HashMap::new();
    let skipped = {
        let stream = decompress(BufReader::new(&mut hashing)).map_err(io)?;
        read_ahead::read_ahead(stream, |stream| {
            layer::apply_with(&root, stream, &mut modes, Whiteouts::Keep, owners)
        })
        .map_err(|e| ImageError::Layer { path: blob.to_owned(), source: e })?
    };
    std::io::copy(&mut hashing, &mut std::io::sink()).map_err(io)?;
    if format!("sha256:{}", hex::encode(hashing.hasher.finalize_reset())) != digest {
        return Err(ImageError::Digest { path: blob.to_owned(), digest: digest.to_owned() });
    }
    layer::apply_dir_modes(&root, &modes, owners)
        .map_err(|e| ImageError::Layer { path: blob.to_owned(), source: e })?;
    Ok(skipped)
}

pub(crate) fn unpack_layers_as(
    source: &Path,
    rootfs: &Path,
    blobs: &[Blob],
    owners: Owners,
) -> Result<Skipped, ImageError> {
    let root: OwnedFd =
        fs::File::open(rootfs).map_err(|e| ImageError::Io { path: rootfs.to_owned(), source: e })?.into();
    let mut modes = HashMap::new();
    let mut skipped = Skipped::default();
    for blob in blobs {
        let file =
            fs::File::open(&blob.path).map_err(|e| ImageError::Io { path: blob.path.clone(), source: e })?;
        let mut hashing = Hashing { inner: file, hasher: Sha256::new() };
        {
            let stream = decompress(BufReader::new(&mut hashing))
                .map_err(|e| ImageError::Io { path: blob.path.clone(), source: e })?;
            let more =
                read_ahead::read_ahead(stream, |stream| layer::apply(&root, stream, &mut modes, owners))
                    .map_err(|e| ImageError::Layer { path: source.to_owned(), source: e })?;
            skipped.devices.extend(more.devices);
            skipped.unmapped.extend(more.unmapped);
        }
        if let Some(digest) = &blob.digest {
            // Read what the decoder left (tar padding) so the whole blob is hashed.
            std::io::copy(&mut hashing, &mut std::io::sink())
                .map_err(|e| ImageError::Io { path: blob.path.clone(), source: e })?;
            let actual = format!("sha256:{}", hex::encode(hashing.hasher.finalize_reset()));
            if &actual != digest {
                return Err(ImageError::Digest { path: source.to_owned(), digest: digest.clone() });
            }
        }
    }
    layer::apply_dir_modes(&root, &modes, owners)
        .map_err(|e| ImageError::Layer { path: source.to_owned(), source: e })?;
    Ok(skipped)
}

#[cfg(test)]
mod tests;
