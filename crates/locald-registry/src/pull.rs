//! One pull: the manifest (through the index, for this host's platform), then the config and
//! the layers not yet in the store, several at once, each verified against its digest before it
//! gets its name, with retries on transient errors.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use std::future::Future;
use std::pin::Pin;

use futures_util::StreamExt;
use locald_core::ipc::PullProgress;
use oci_client::client::{Certificate, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::auth::Sources;
use crate::error::PullError;
use crate::platform::{self, Platform};
use crate::reference::ImageRef;
use crate::store::{ImageRecord, Store, digest_hex, sha256};
use crate::tls;

const ACCEPTED: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];
/// Layers downloaded at once.
const PARALLEL: usize = 4;
const ATTEMPTS: u32 = 3;

/// How a pull reaches registries and whose credentials it uses.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Registries (`host[:port]`) to use over plain HTTP besides the loopback ones.
    pub insecure: Vec<String>,
    pub credentials: Sources,
    pub platform: Platform,
    /// `certs.d` directories holding extra CAs per registry (`<dir>/<host[:port]>/*.crt`).
    pub cert_dirs: Vec<PathBuf>,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            insecure: Vec::new(),
            credentials: Sources::from_env(),
            platform: Platform::host(),
            cert_dirs: tls::cert_dirs_from_env(),
        }
    }
}

/// Hears where a pull stands, in the type the daemon passes on to the CLI; called often, so the
/// receiver throttles what it shows. `done` is never set here: the caller knows when it has the
/// record.
pub type OnProgress = Arc<dyn Fn(&PullProgress) + Send + Sync>;

struct Ctx {
    client: Client,
    reference: Reference,
    registry: String,
    shown: String,
    store: Store,
    roots: Vec<Certificate>,
    progress: Mutex<PullProgress>,
    on_progress: OnProgress,
}

impl Ctx {
    fn oci(&self, e: OciDistributionError) -> PullError {
        PullError::from_oci(e, &self.registry, &self.shown)
    }

    /// [`Ctx::oci`], and when the registry is rate limiting, until when (asked of it once more).
    async fn oci_told(&self, e: OciDistributionError, auth: &RegistryAuth) -> PullError {
        let url = match &e {
            OciDistributionError::ServerError { url, .. }
            | OciDistributionError::RegistryError { url, .. } => Some(url.clone()),
            _ => None,
        };
        let mut error = self.oci(e);
        if let (PullError::RateLimited { until, .. }, Some(url)) = (&mut error, url) {
            *until = self.retry_after(&url, auth).await;
        }
        error
    }

    /// `Retry-After` of a HEAD of `url` (which does not count against Docker Hub's limit), as a
    /// date and a wait. oci-client keeps the headers of its failed requests to itself.
    async fn retry_after(&self, url: &str, auth: &RegistryAuth) -> Option<String> {
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(10));
        for root in &self.roots {
            builder = builder.add_root_certificate(reqwest::Certificate::from_pem(&root.data).ok()?);
        }
        let mut request = builder.build().ok()?.head(url).header("Accept", ACCEPTED.join(", "));
        request = match self.client.auth(&self.reference, auth, RegistryOperation::Pull).await {
            Ok(Some(token)) => request.bearer_auth(token),
            _ => match auth {
                RegistryAuth::Basic(user, password) => request.basic_auth(user, Some(password)),
                _ => request,
            },
        };
        let response = request.send().await.ok()?;
        let value = response.headers().get("retry-after")?.to_str().ok()?.trim().to_owned();
        let now = SystemTime::now();
        let when = match value.parse::<u64>() {
            Ok(seconds) => now + Duration::from_secs(seconds),
            Err(_) => httpdate::parse_http_date(&value).ok()?,
        };
        let wait = when.duration_since(now).unwrap_or_default().as_secs();
        Some(format!("{} (in {wait} s)", httpdate::fmt_http_date(when)))
    }

    fn store_err(&self, source: std::io::Error) -> PullError {
        PullError::Store { path: self.store.root().to_owned(), source }
    }

    fn report(&self, update: impl FnOnce(&mut PullProgress)) {
        let snapshot = {
            let mut p = self.progress.lock().expect("progress lock");
            update(&mut p);
            p.clone()
        };
        (self.on_progress)(&snapshot);
    }
}

/// Pulls `image` into `store` and returns its record.
pub async fn pull(
    store: &Store,
    image: &ImageRef,
    options: &PullOptions,
    on_progress: OnProgress,
) -> Result<ImageRecord, PullError> {
    // reqwest is built without a crypto provider of its own: ring, so no C toolchain is needed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let registry = image.registry().to_owned();
    let shown = image.to_string();
    let roots = tls::extra_roots(&options.cert_dirs, &registry)
        .map_err(|m| PullError::Other { image: shown.clone(), message: m })?;
    // Never plain HTTP to anything else: a name resolving elsewhere than it seems is not asked.
    let plain_allowed = image.is_loopback() || options.insecure.iter().any(|r| r == &registry);
    let protocol = if plain_allowed && !tls::speaks_tls(&registry, &roots).await {
        ClientProtocol::HttpsExcept(vec![registry.clone()])
    } else {
        ClientProtocol::Https
    };
    let client = Client::new(ClientConfig {
        protocol,
        extra_root_certificates: roots.clone(),
        connect_timeout: Some(Duration::from_secs(10)),
        read_timeout: Some(Duration::from_secs(60)),
        ..Default::default()
    });
    let auth = options
        .credentials
        .lookup(&registry)
        .map_err(|m| PullError::Other { image: shown.clone(), message: m })?;
    let ctx = Ctx {
        client,
        reference: image.0.clone(),
        registry,
        shown: shown.clone(),
        store: store.clone(),
        roots,
        progress: Mutex::new(PullProgress { image: shown.clone(), ..PullProgress::default() }),
        on_progress,
    };

    let (raw, digest) = manifest(&ctx, &auth, &image.0, image.digest()).await?;
    let mut value: serde_json::Value = serde_json::from_slice(&raw)
        .map_err(|e| PullError::Other { image: shown.clone(), message: format!("bad manifest: {e}") })?;
    let mut index = None;
    let (raw, digest) = if value.get("manifests").is_some() {
        let chosen = platform::choose(&value, &options.platform).map_err(|available| {
            PullError::NoPlatform { image: shown.clone(), platform: options.platform.to_string(), available }
        })?;
        store.put_bytes(&digest, &raw).map_err(|e| ctx.store_err(e))?;
        index = Some(digest);
        let pinned = image.pinned(&chosen);
        let (raw, digest) = manifest(&ctx, &auth, &pinned.0, Some(&chosen)).await?;
        value = serde_json::from_slice(&raw)
            .map_err(|e| PullError::Other { image: shown.clone(), message: format!("bad manifest: {e}") })?;
        (raw, digest)
    } else {
        (raw, digest)
    };
    let descriptor = |v: &serde_json::Value| -> Result<OciDescriptor, PullError> {
        let d: OciDescriptor = serde_json::from_value(v.clone()).map_err(|e| PullError::Other {
            image: shown.clone(),
            message: format!("bad descriptor in the manifest: {e}"),
        })?;
        digest_hex(&d.digest)
            .map_err(|e| PullError::Other { image: shown.clone(), message: e.to_string() })?;
        Ok(d)
    };
    let config = descriptor(&value["config"])?;
    let layers = value["layers"]
        .as_array()
        .ok_or_else(|| PullError::Other {
            image: shown.clone(),
            message: "the manifest lists no layers".into(),
        })?
        .iter()
        .map(descriptor)
        .collect::<Result<Vec<_>, _>>()?;

    let total: u64 = std::iter::once(&config).chain(&layers).map(|d| d.size.max(0) as u64).sum();
    ctx.report(|p| {
        p.layers_total = layers.len();
        p.bytes_total = total;
    });
    fetch(&ctx, &config, &auth, false).await?;
    let slots = tokio::sync::Semaphore::new(PARALLEL);
    let mut downloads = Vec::with_capacity(layers.len());
    for layer in &layers {
        let (ctx, auth, slots) = (&ctx, &auth, &slots);
        let download: Pin<Box<dyn Future<Output = Result<(), PullError>> + Send + '_>> =
            Box::pin(async move {
                let _slot = slots.acquire().await.expect("never closed");
                fetch(ctx, layer, auth, true).await?;
                ctx.report(|p| p.layers_done += 1);
                Ok(())
            });
        downloads.push(download);
    }
    futures_util::future::try_join_all(downloads).await?;
    store.put_bytes(&digest, &raw).map_err(|e| ctx.store_err(e))?;
    let record = ImageRecord {
        references: BTreeSet::from([shown.clone()]),
        digest,
        index,
        config: config.digest.clone(),
        layers: layers.iter().map(|l| l.digest.clone()).collect(),
        size: total,
    };
    store.save_image(record.clone()).map_err(|e| ctx.store_err(e))?;
    Ok(record)
}

/// A manifest's bytes and their digest, which must be `expected` when the caller knows it.
async fn manifest(
    ctx: &Ctx,
    auth: &RegistryAuth,
    reference: &Reference,
    expected: Option<&str>,
) -> Result<(Vec<u8>, String), PullError> {
    let mut attempt = 0;
    let raw = loop {
        let result = match ctx.client.pull_manifest_raw(reference, auth, ACCEPTED).await {
            Ok(ok) => Ok(ok),
            Err(e) => Err(ctx.oci_told(e, auth).await),
        };
        match result {
            Ok((raw, _)) => break raw,
            Err(e) if e.is_transient() && attempt + 1 < ATTEMPTS => {
                attempt += 1;
                tokio::time::sleep(backoff(attempt)).await;
            }
            Err(e) => return Err(e),
        }
    };
    let digest = sha256(&raw);
    if let Some(expected) = expected {
        if expected != digest {
            return Err(PullError::DigestMismatch { image: ctx.shown.clone(), digest: expected.to_owned() });
        }
    }
    Ok((raw.to_vec(), digest))
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250 * 4u64.pow(attempt.saturating_sub(1)))
}

/// Makes sure blob `d` is in the store (and, for a layer, unpacked on its own).
async fn fetch(ctx: &Ctx, d: &OciDescriptor, auth: &RegistryAuth, layer: bool) -> Result<(), PullError> {
    fetch_blob(ctx, d, auth).await?;
    if layer && !ctx.store.has_layer(&d.digest) {
        let store = ctx.store.clone();
        let digest = d.digest.clone();
        tokio::task::spawn_blocking(move || store.unpack_layer(&digest))
            .await
            .map_err(|e| ctx.store_err(std::io::Error::other(e)))?
            .map_err(|e| PullError::Other {
                image: ctx.shown.clone(),
                message: format!("unpacking layer {}: {e}", d.digest),
            })?;
    }
    Ok(())
}

/// Makes sure blob `d` is in the store: one writer at a time per blob, so a concurrent pull of
/// the same image waits for this download and then finds it there.
async fn fetch_blob(ctx: &Ctx, d: &OciDescriptor, auth: &RegistryAuth) -> Result<(), PullError> {
    let size = d.size.max(0) as u64;
    if ctx.store.has_blob(&d.digest) {
        ctx.report(|p| p.bytes_done += size);
        return Ok(());
    }
    let store = ctx.store.clone();
    let digest = d.digest.clone();
    let _guard = tokio::task::spawn_blocking(move || store.lock(&digest))
        .await
        .map_err(|e| ctx.store_err(std::io::Error::other(e)))?
        .map_err(|e| ctx.store_err(e))?;
    if ctx.store.has_blob(&d.digest) {
        ctx.report(|p| p.bytes_done += size);
        return Ok(());
    }
    let mut attempt = 0;
    loop {
        match download(ctx, d, auth).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_transient() && attempt + 1 < ATTEMPTS => {
                attempt += 1;
                tokio::time::sleep(backoff(attempt)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn download(ctx: &Ctx, d: &OciDescriptor, auth: &RegistryAuth) -> Result<(), PullError> {
    let temp = ctx.store.temp_path(&d.digest).map_err(|e| ctx.store_err(e))?;
    let mut written = 0u64;
    let result = async {
        let mut file = tokio::fs::File::create(&temp).await.map_err(|e| ctx.store_err(e))?;
        let mut blob = match ctx.client.pull_blob_stream(&ctx.reference, d).await {
            Ok(blob) => blob,
            Err(e) => return Err(ctx.oci_told(e, auth).await),
        };
        let mut hasher = Sha256::new();
        while let Some(chunk) = blob.next().await {
            let chunk = chunk.map_err(|e| {
                let message = e.to_string();
                if message.to_lowercase().contains("digest") {
                    PullError::DigestMismatch { image: ctx.shown.clone(), digest: d.digest.clone() }
                } else {
                    PullError::Interrupted {
                        registry: ctx.registry.clone(),
                        image: ctx.shown.clone(),
                        reason: message.lines().next().unwrap_or("").to_owned(),
                    }
                }
            })?;
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(|e| ctx.store_err(e))?;
            let n = chunk.len() as u64;
            written += n;
            ctx.report(|p| {
                p.bytes_done += n;
                p.downloaded += n;
            });
        }
        if format!("sha256:{}", hex::encode(hasher.finalize())) != d.digest {
            return Err(PullError::DigestMismatch { image: ctx.shown.clone(), digest: d.digest.clone() });
        }
        file.sync_all().await.map_err(|e| ctx.store_err(e))?;
        drop(file);
        tokio::fs::rename(&temp, ctx.store.blob_path(&d.digest).map_err(|e| ctx.store_err(e))?)
            .await
            .map_err(|e| ctx.store_err(e))
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&temp).await;
        ctx.report(|p| {
            p.bytes_done -= written.min(p.bytes_done);
            p.downloaded -= written.min(p.downloaded);
        });
    }
    result
}
