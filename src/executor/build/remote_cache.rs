//! The build cache shared through a registry (`kiln build --cache-to` / `--cache-from`).
//!
//! Modelled on BuildKit's registry cache (`type=registry,image-manifest=true`): the cache is an
//! OCI artifact, one OCI image manifest pushed at the `ref` tag, whose
//!
//! - `config` is a JSON blob of media type [`CONFIG_MEDIA_TYPE`]:
//!   `{"version": 1, "records": {"sha256:<cache key>": {"layer": L | null, "created": T}}}`
//!   where `L = {"digest", "diff_id", "size", "media_type"}` is the step's layer (null for a step
//!   that changed no file: ENV, LABEL, a RUN that wrote nothing) and `T` the RFC 3339 time the
//!   step first ran (kept so the importing machine writes the same image history, hence the
//!   same image digest). These are exactly the local records of `record`.
//! - `layers` are the distinct layer blobs those records name (sorted by digest), as stored.
//!
//! Export (`export`) pushes the blobs the registry lacks (HEAD, cross-repository mount from
//! a repository the store's image names say has them, else upload), then the config and the
//! manifest. Import (`RemoteCache::import`) fetches only the manifest and the config before
//! the build; a layer blob is downloaded (verified against its digest and size) only when a
//! step's key misses locally and hits a record, and written as a local record, so the step is
//! a cache hit and nothing runs. Its snapshot is unpacked (`unpack_snapshot`, checked against
//! the diff ID) only when a later step runs on top of it.
//!
//! `mode=min` (the default, as in BuildKit) exports the records of the steps whose layers are
//! in the final image: the target's chain of parents back to its `FROM`, which can cross
//! stages (`FROM builder`). `mode=max` exports every step of the build, every stage included.
//! With `min`, an importing build still hits on the final stage's `COPY --from`, because its
//! key depends on the source stage's key, not on its output, and so it skips the source stage
//! entirely, as BuildKit does (the executor's lazy plan: a stage runs only when a step reading
//! it misses). A build that itself exports `mode=max` evaluates every stage, since it exports
//! every step's record.
//!
//! `--cache-to type=inline` (BuildKit's inline cache) writes the records of the final image's
//! steps (`mode=min` only) into the image config's top-level field [`INLINE_CACHE_FIELD`] (the
//! same `{"version", "records"}` object; not a label, so `docker inspect`'s Labels are
//! untouched, but the config and so the image ID differ from a build without it). An image
//! pushed or saved with it serves as a cache: `--cache-from IMAGE` reads the config, finds each
//! record's layer among the image's own layers by diff ID (the image may have been recompressed
//! since) and fetches from the image's repository. The plain `--cache-from REF` form takes such
//! an image from the local store first, without the registry, as `docker build --cache-from`
//! does. An image built without it carries no keys: kiln does not guess hits from `created_by`
//! history text, which cannot tell two different COPY sources apart.
//!
//! Flag values are parsed here ([`parse_cache_to`], [`parse_cache_from`]) so the errors name
//! the flag and the bad part. Knows the registry client, the store and cache records; never
//! Dockerfile syntax, never output (the caller reports).

use super::record::{self, CacheRecord, LayerRef};
use super::StepKey;
use crate::cache::CacheKey;
use crate::digest::Digest;
use crate::error_chain;
use crate::layer::{apply_layer, WhiteoutMode};
use crate::registry::transfer::{self, BlobUpload};
use crate::registry::{BlobSource, Client, ImageRef, RegistryConfig, RegistryError};
use crate::store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Media type of the cache artifact's config blob (the records).
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.kiln.cache.config.v1+json";
/// The version inside the config blob.
pub const CONFIG_VERSION: u32 = 1;
/// The image config field `--cache-to type=inline` writes (BuildKit's is
/// `moby.buildkit.cache.v0`): a [`CacheConfig`] of the image's own steps.
pub const INLINE_CACHE_FIELD: &str = "kiln.cache.v1";
/// Cache configs larger than this are refused on import.
const MAX_CONFIG_BYTES: u64 = 64 * 1024 * 1024;

/// What can go wrong with a flag value, an import or an export.
#[derive(Debug, thiserror::Error)]
pub enum RemoteCacheError {
    #[error("{flag} {value:?}: {reason}")]
    BadOption {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error("{reference}")]
    Registry {
        reference: String,
        #[source]
        source: Box<RegistryError>,
    },
    #[error("{reference} is not a kiln build cache: {reason}")]
    NotACache { reference: String, reason: String },
    #[error("{what}")]
    Store {
        what: String,
        #[source]
        source: StoreError,
    },
    #[error("cannot unpack cached layer {digest}: {reason}")]
    Unpack { digest: Digest, reason: String },
}

type Result<T, E = RemoteCacheError> = std::result::Result<T, E>;

/// Which steps `--cache-to` exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    /// The steps whose layers are in the final image (the target's chain of parents).
    Min,
    /// Every step of the build.
    Max,
}

/// A parsed `--cache-to` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheExport {
    /// `type=registry`: the cache artifact pushed at `reference`.
    Registry {
        reference: ImageRef,
        mode: CacheMode,
        /// `ignore-error=true`: a failed export is a warning, not a failed command.
        ignore_error: bool,
    },
    /// `type=inline`: the records of the final image's steps in its own config.
    Inline,
}

/// A parsed `--cache-from` value: where the cache is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheImport {
    pub reference: ImageRef,
    /// The plain `REF` form: an image in the local store by that name is used first (its
    /// layers are already here), as `docker build --cache-from IMAGE` does.
    pub local_first: bool,
}

/// `KEY=VALUE,...` with no empty part, no duplicate key.
fn parse_fields(flag: &'static str, text: &str) -> Result<BTreeMap<String, String>> {
    let bad = |reason: String| RemoteCacheError::BadOption {
        flag,
        value: text.to_string(),
        reason,
    };
    let mut fields = BTreeMap::new();
    for part in text.split(',') {
        let Some((key, value)) = part.split_once('=') else {
            return Err(bad(format!("{part:?} is not KEY=VALUE")));
        };
        let key = key.trim().to_ascii_lowercase();
        if key.is_empty() || value.is_empty() {
            return Err(bad(format!("{part:?} is not KEY=VALUE")));
        }
        if fields.insert(key.clone(), value.to_string()).is_some() {
            return Err(bad(format!("{key} is given twice")));
        }
    }
    Ok(fields)
}

/// The `type=` field: only `registry` is supported.
fn check_type(flag: &'static str, text: &str, fields: &BTreeMap<String, String>) -> Result<()> {
    let bad = |reason: String| RemoteCacheError::BadOption {
        flag,
        value: text.to_string(),
        reason,
    };
    match fields.get("type").map(String::as_str) {
        Some("registry") => Ok(()),
        Some("inline") if flag == "--cache-to" => Ok(()),
        Some(other) => Err(bad(format!(
            "unsupported cache type {other:?} (kiln supports type=registry{})",
            if flag == "--cache-to" {
                " and type=inline"
            } else {
                ""
            }
        ))),
        None => Err(bad(
            "missing type= (expected type=registry,ref=HOST/REPO:TAG)".into(),
        )),
    }
}

fn parse_ref(
    flag: &'static str,
    text: &str,
    fields: &BTreeMap<String, String>,
) -> Result<ImageRef> {
    let bad = |reason: String| RemoteCacheError::BadOption {
        flag,
        value: text.to_string(),
        reason,
    };
    let value = fields
        .get("ref")
        .ok_or_else(|| bad("missing ref= (the registry repository and tag of the cache)".into()))?;
    value.parse::<ImageRef>().map_err(|err| {
        bad(format!(
            "ref {value:?} is not a valid reference: {}",
            match err {
                RegistryError::InvalidReference { reason, .. } => reason,
                other => other.to_string(),
            }
        ))
    })
}

fn unknown_keys(
    flag: &'static str,
    text: &str,
    fields: &BTreeMap<String, String>,
    known: &[&str],
) -> Result<()> {
    match fields.keys().find(|key| !known.contains(&key.as_str())) {
        Some(key) => Err(RemoteCacheError::BadOption {
            flag,
            value: text.to_string(),
            reason: format!("unknown option {key:?} (expected {})", known.join(", ")),
        }),
        None => Ok(()),
    }
}

/// Parses a `--cache-to` value:
/// `type=registry,ref=HOST/REPO:TAG[,mode=min|max][,ignore-error=true|false]` or `type=inline`.
pub fn parse_cache_to(text: &str) -> Result<CacheExport> {
    const FLAG: &str = "--cache-to";
    let fields = parse_fields(FLAG, text)?;
    check_type(FLAG, text, &fields)?;
    let bad = |reason: String| RemoteCacheError::BadOption {
        flag: FLAG,
        value: text.to_string(),
        reason,
    };
    if fields.get("type").map(String::as_str) == Some("inline") {
        unknown_keys(FLAG, text, &fields, &["type", "mode"])?;
        return match fields.get("mode").map(String::as_str) {
            None | Some("min") => Ok(CacheExport::Inline),
            Some(other) => Err(bad(format!(
                "type=inline only holds the final image's steps (mode=min), not mode={other}"
            ))),
        };
    }
    unknown_keys(
        FLAG,
        text,
        &fields,
        &["type", "ref", "mode", "ignore-error"],
    )?;
    let reference = parse_ref(FLAG, text, &fields)?;
    let mode = match fields.get("mode").map(String::as_str) {
        None | Some("min") => CacheMode::Min,
        Some("max") => CacheMode::Max,
        Some(other) => return Err(bad(format!("mode {other:?} is not min or max"))),
    };
    let ignore_error = match fields.get("ignore-error").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => return Err(bad(format!("ignore-error {other:?} is not true or false"))),
    };
    Ok(CacheExport::Registry {
        reference,
        mode,
        ignore_error,
    })
}

/// Parses a `--cache-from` value: `type=registry,ref=HOST/REPO:TAG`, or a plain reference
/// (`HOST/REPO:TAG`, as `docker build --cache-from` takes), which means the same.
pub fn parse_cache_from(text: &str) -> Result<CacheImport> {
    const FLAG: &str = "--cache-from";
    if text.is_empty() {
        return Err(RemoteCacheError::BadOption {
            flag: FLAG,
            value: String::new(),
            reason: "empty value (expected type=registry,ref=HOST/REPO:TAG or an image reference)"
                .into(),
        });
    }
    let local_first = !(text.contains('=') || text.contains(','));
    let fields = if !local_first {
        parse_fields(FLAG, text)?
    } else {
        BTreeMap::from([
            ("type".to_string(), "registry".to_string()),
            ("ref".to_string(), text.to_string()),
        ])
    };
    check_type(FLAG, text, &fields)?;
    if fields.contains_key("mode") {
        return Err(RemoteCacheError::BadOption {
            flag: FLAG,
            value: text.to_string(),
            reason: "mode= is an option of --cache-to only".into(),
        });
    }
    unknown_keys(FLAG, text, &fields, &["type", "ref"])?;
    Ok(CacheImport {
        reference: parse_ref(FLAG, text, &fields)?,
        local_first,
    })
}

/// The config blob of the cache artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheConfig {
    pub version: u32,
    /// Cache key (`sha256:<hex>`) -> record.
    pub records: BTreeMap<CacheKey, CacheRecord>,
}

/// The value `--cache-to type=inline` puts under [`INLINE_CACHE_FIELD`] in the image config.
pub fn inline_cache_value(records: &BTreeMap<CacheKey, CacheRecord>) -> serde_json::Value {
    serde_json::to_value(CacheConfig {
        version: CONFIG_VERSION,
        records: records.clone(),
    })
    .expect("records serialize")
}

/// The cache manifest and config of `records`: (manifest bytes, config bytes, layers).
pub fn artifact(records: &BTreeMap<CacheKey, CacheRecord>) -> (Vec<u8>, Vec<u8>, Vec<LayerRef>) {
    let config = CacheConfig {
        version: CONFIG_VERSION,
        records: records.clone(),
    };
    let config_bytes = serde_json::to_vec(&config).expect("records serialize");
    let mut layers: BTreeMap<Digest, LayerRef> = BTreeMap::new();
    for layer in records.values().filter_map(|r| r.layer.as_ref()) {
        layers.entry(layer.digest.clone()).or_insert(layer.clone());
    }
    let layers: Vec<LayerRef> = layers.into_values().collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": crate::registry::MEDIA_TYPE_OCI_MANIFEST,
        "config": {
            "mediaType": CONFIG_MEDIA_TYPE,
            "digest": Digest::of_bytes(&config_bytes).to_string(),
            "size": config_bytes.len(),
        },
        "layers": layers.iter().map(|layer| serde_json::json!({
            "mediaType": layer.media_type,
            "digest": layer.digest.to_string(),
            "size": layer.size,
        })).collect::<Vec<_>>(),
    });
    let manifest_bytes = serde_json::to_vec(&manifest).expect("manifest serializes");
    (manifest_bytes, config_bytes, layers)
}

/// The local records `mode` exports from a build's steps. Steps without a usable record (its
/// blob pruned meanwhile) are left out: the cache never names a blob kiln cannot push.
pub fn records_to_export(
    store: &Store,
    steps: &[StepKey],
    mode: CacheMode,
) -> BTreeMap<CacheKey, CacheRecord> {
    steps
        .iter()
        .filter(|step| mode == CacheMode::Max || step.in_final_image)
        .filter_map(|step| {
            let record = record::load(store, &step.key)?;
            match &record.layer {
                Some(layer) if !store.has_blob(&layer.digest) => None,
                _ => Some((step.key.clone(), record)),
            }
        })
        .collect()
}

/// What an export pushed.
#[derive(Debug, Clone)]
pub struct ExportReport {
    pub manifest_digest: Digest,
    pub n_records: usize,
    pub n_layers: usize,
    /// Layers the repository already had (HEAD).
    pub n_layers_present: usize,
    /// Layers mounted from another repository of the registry.
    pub n_layers_mounted: usize,
}

/// Pushes `records` as the cache artifact at `target` (blobs first, manifest last, so a
/// reader never sees a manifest whose blobs are missing).
///
/// `imported` (the `--cache-from` caches of the build) adds mount sources: a layer that came
/// from an imported cache on the same registry is mounted from its repository, not uploaded.
pub fn export(
    store: &Store,
    config: &RegistryConfig,
    target: &ImageRef,
    records: &BTreeMap<CacheKey, CacheRecord>,
    imported: Option<&RemoteCache>,
) -> Result<ExportReport> {
    let registry_error = |source| RemoteCacheError::Registry {
        reference: target.to_string(),
        source: Box::new(source),
    };
    let client = Client::from_environment(target, config).map_err(registry_error)?;
    let _pin = store.pin().map_err(|source| RemoteCacheError::Store {
        what: "pin the store".into(),
        source,
    })?;
    let (manifest_bytes, config_bytes, layers) = artifact(records);
    let mut mounts = crate::registry::image::mount_sources(store, target);
    if let Some(imported) = imported {
        for (digest, repository) in imported.mount_sources(target) {
            mounts.entry(digest).or_insert(repository);
        }
    }
    let mut uploads: Vec<BlobUpload> = layers
        .iter()
        .map(|layer| BlobUpload {
            digest: layer.digest.clone(),
            size: layer.size,
            source: Box::new(store.blob_path(&layer.digest)) as Box<dyn BlobSource>,
            mount_from: mounts.get(&layer.digest).cloned(),
        })
        .collect();
    uploads.push(BlobUpload {
        digest: Digest::of_bytes(&config_bytes),
        size: config_bytes.len() as u64,
        source: Box::new(config_bytes.clone()),
        mount_from: None,
    });
    let outcomes = transfer::all_ok(
        transfer::upload_blobs(
            &client,
            target.repository(),
            uploads,
            config.parallel_transfers,
        )
        .map_err(registry_error)?,
    )
    .map_err(registry_error)?;
    let count = |wanted: crate::registry::PushOutcome| {
        outcomes[..layers.len()]
            .iter()
            .filter(|outcome| **outcome == wanted)
            .count()
    };
    let n_layers_present = count(crate::registry::PushOutcome::AlreadyPresent);
    let n_layers_mounted = count(crate::registry::PushOutcome::Mounted);
    let reference = match target.digest() {
        Some(_) => Digest::of_bytes(&manifest_bytes).to_string(),
        None => target.manifest_reference(),
    };
    let manifest_digest = client
        .put_manifest(
            target.repository(),
            &reference,
            crate::registry::MEDIA_TYPE_OCI_MANIFEST,
            &manifest_bytes,
        )
        .map_err(registry_error)?;
    Ok(ExportReport {
        manifest_digest,
        n_records: records.len(),
        n_layers: layers.len(),
        n_layers_present,
        n_layers_mounted,
    })
}

/// One imported cache: its records and where its layers can be fetched.
struct Source {
    reference: ImageRef,
    /// `None`: a local image, whose layers are in the store already.
    client: Option<Client>,
    records: BTreeMap<CacheKey, CacheRecord>,
}

/// The caches `--cache-from` imported, consulted by the executor when a key misses locally.
#[derive(Default)]
pub struct RemoteCache {
    sources: Vec<Source>,
}

impl std::fmt::Debug for RemoteCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.sources.iter().map(|s| s.reference.to_string()))
            .finish()
    }
}

/// A record an imported cache has for a key, and which cache it came from.
#[derive(Debug, Clone)]
pub struct RemoteHit {
    pub record: CacheRecord,
    source: usize,
}

impl RemoteCache {
    /// An empty set of caches.
    pub fn new() -> Self {
        RemoteCache::default()
    }

    /// Reads the cache at `import.reference` and adds its records; returns how many it holds.
    /// Only the manifest and the config are fetched (a platform's manifest when the reference
    /// names an index). The reference may name a cache artifact (`--cache-to type=registry`)
    /// or an image built with `--cache-to type=inline`; with `local_first`, an image of that
    /// name in `store` is used without asking the registry. On error nothing is added.
    pub fn import(
        &mut self,
        store: &Store,
        config: &RegistryConfig,
        import: &CacheImport,
    ) -> Result<usize> {
        let reference = &import.reference;
        let not_cache = |reason: String| RemoteCacheError::NotACache {
            reference: reference.to_string(),
            reason,
        };
        if import.local_first {
            if let Ok(image) = store.resolve(&reference.to_string()) {
                let config_bytes = image.config_bytes.clone();
                let records = parse_artifact(&image.manifest_bytes, |_, _| Ok(config_bytes))
                    .map_err(|err| match err {
                        ArtifactError::Fetch(err) => err,
                        ArtifactError::Invalid(reason) => not_cache(reason),
                    })?;
                let n_records = records.len();
                self.sources.push(Source {
                    reference: reference.clone(),
                    client: None,
                    records,
                });
                return Ok(n_records);
            }
        }
        let registry_error = |source| RemoteCacheError::Registry {
            reference: reference.to_string(),
            source: Box::new(source),
        };
        let client = Client::from_environment(reference, config).map_err(registry_error)?;
        let manifest = crate::registry::platform::fetch_image_manifest(
            &client,
            reference.repository(),
            &reference.manifest_reference(),
            &crate::registry::Platform::host(),
        )
        .map_err(registry_error)?
        .manifest;
        let records = parse_artifact(&manifest.bytes, |digest, size| {
            if size > MAX_CONFIG_BYTES {
                return Err(not_cache(format!(
                    "its config is {size} bytes (at most {MAX_CONFIG_BYTES})"
                )));
            }
            let mut bytes = Vec::new();
            client
                .get_blob(reference.repository(), digest, Some(size), &mut bytes)
                .map_err(registry_error)?;
            Ok(bytes)
        })
        .map_err(|err| match err {
            ArtifactError::Fetch(err) => err,
            ArtifactError::Invalid(reason) => not_cache(reason),
        })?;
        let n_records = records.len();
        self.sources.push(Source {
            reference: reference.clone(),
            client: Some(client),
            records,
        });
        Ok(n_records)
    }

    /// For each layer an imported cache on `target`'s registry names, the repository it can be
    /// mounted from (local images' caches aside: their repository is not known to hold it).
    pub fn mount_sources(&self, target: &ImageRef) -> BTreeMap<Digest, String> {
        let mut sources = BTreeMap::new();
        for source in self.sources.iter().filter(|s| s.client.is_some()) {
            if source.reference.registry() != target.registry()
                || source.reference.repository() == target.repository()
            {
                continue;
            }
            for layer in source.records.values().filter_map(|r| r.layer.as_ref()) {
                sources
                    .entry(layer.digest.clone())
                    .or_insert_with(|| source.reference.repository().to_string());
            }
        }
        sources
    }

    /// True when no cache was imported.
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// The record of `key` in the first imported cache that has one.
    pub fn lookup(&self, key: &CacheKey) -> Option<RemoteHit> {
        self.sources.iter().enumerate().find_map(|(source, cache)| {
            cache.records.get(key).map(|record| RemoteHit {
                record: record.clone(),
                source,
            })
        })
    }

    /// Makes `hit`'s layer blob present in `store`: downloads it unless the store has it,
    /// verified against digest and size before it becomes visible. Its snapshot is unpacked
    /// later, only if a step runs on it ([`unpack_snapshot`]).
    pub fn fetch(&self, store: &Store, hit: &RemoteHit) -> Result<()> {
        let Some(layer) = &hit.record.layer else {
            return Ok(());
        };
        let source = &self.sources[hit.source];
        let store_error = |what: String| move |source| RemoteCacheError::Store { what, source };
        if !store.has_blob(&layer.digest) {
            let Some(client) = &source.client else {
                return Err(RemoteCacheError::Store {
                    what: format!("layer {} of {}", layer.digest, source.reference),
                    source: StoreError::MissingBlob {
                        digest: layer.digest.clone(),
                    },
                });
            };
            // get_blob verifies the digest as the bytes arrive: not hashed twice.
            let mut writer = store
                .blob_writer_digested_by_caller()
                .map_err(store_error(format!("store layer {}", layer.digest)))?;
            client
                .get_blob(
                    source.reference.repository(),
                    &layer.digest,
                    Some(layer.size),
                    &mut writer,
                )
                .map_err(|err| RemoteCacheError::Registry {
                    reference: source.reference.to_string(),
                    source: Box::new(err),
                })?;
            writer
                .commit_digested(&layer.digest)
                .map_err(store_error(format!("store layer {}", layer.digest)))?;
        }
        Ok(())
    }
}

enum ArtifactError {
    Fetch(RemoteCacheError),
    Invalid(String),
}

/// Reads a cache manifest: checks it is one, fetches its config through `fetch_config`
/// (digest, size) and keeps the records whose layer the manifest lists (digest and size), the
/// only blobs the cache promises.
fn parse_artifact(
    manifest_bytes: &[u8],
    fetch_config: impl FnOnce(&Digest, u64) -> Result<Vec<u8>>,
) -> Result<BTreeMap<CacheKey, CacheRecord>, ArtifactError> {
    #[derive(Deserialize)]
    struct Descriptor {
        #[serde(rename = "mediaType", default)]
        media_type: String,
        digest: Digest,
        size: u64,
    }
    #[derive(Deserialize)]
    struct Manifest {
        #[serde(default)]
        manifests: Option<serde_json::Value>,
        config: Option<Descriptor>,
        #[serde(default)]
        layers: Vec<Descriptor>,
    }
    let manifest: Manifest = serde_json::from_slice(manifest_bytes)
        .map_err(|err| ArtifactError::Invalid(format!("bad manifest: {err}")))?;
    if manifest.manifests.is_some() {
        return Err(ArtifactError::Invalid(
            "it is an image index, not a cache manifest".into(),
        ));
    }
    let config = manifest
        .config
        .ok_or_else(|| ArtifactError::Invalid("the manifest has no config".into()))?;
    const IMAGE_CONFIGS: [&str; 2] = [
        "application/vnd.oci.image.config.v1+json",
        "application/vnd.docker.container.image.v1+json",
    ];
    let is_image = IMAGE_CONFIGS.contains(&config.media_type.as_str());
    if config.media_type != CONFIG_MEDIA_TYPE && !is_image {
        return Err(ArtifactError::Invalid(format!(
            "its config has media type {:?}, neither a kiln cache ({CONFIG_MEDIA_TYPE:?}) nor an image",
            config.media_type
        )));
    }
    let bytes = fetch_config(&config.digest, config.size).map_err(ArtifactError::Fetch)?;
    let cache: CacheConfig = if is_image {
        #[derive(Deserialize, Default)]
        struct RootFs {
            #[serde(default)]
            diff_ids: Vec<Digest>,
        }
        #[derive(Deserialize)]
        struct WithInline {
            #[serde(rename = "kiln.cache.v1")]
            inline: Option<CacheConfig>,
            #[serde(default)]
            rootfs: RootFs,
        }
        let with_inline: WithInline = serde_json::from_slice(&bytes)
            .map_err(|err| ArtifactError::Invalid(format!("bad inline cache: {err}")))?;
        let mut cache = with_inline.inline.ok_or_else(|| {
            ArtifactError::Invalid(
                "it is an image without kiln cache records (build it with --cache-to type=inline)"
                    .into(),
            )
        })?;
        // The image's layers are the cache's. They may have been recompressed since the build
        // (`kiln push --compression`, save and load), so a record's layer is found by its diff
        // ID and then named by the image's blob.
        for record in cache.records.values_mut() {
            if let Some(layer) = &mut record.layer {
                let found = with_inline
                    .rootfs
                    .diff_ids
                    .iter()
                    .position(|diff_id| *diff_id == layer.diff_id)
                    .and_then(|n| manifest.layers.get(n));
                if let Some(descriptor) = found {
                    layer.digest = descriptor.digest.clone();
                    layer.size = descriptor.size;
                    layer.media_type = descriptor.media_type.clone();
                }
            }
        }
        cache
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|err| ArtifactError::Invalid(format!("bad cache config: {err}")))?
    };
    if cache.version != CONFIG_VERSION {
        return Err(ArtifactError::Invalid(format!(
            "cache config version {} (this kiln reads version {CONFIG_VERSION})",
            cache.version
        )));
    }
    let listed: BTreeSet<(Digest, u64)> = manifest
        .layers
        .into_iter()
        .map(|layer| (layer.digest, layer.size))
        .collect();
    Ok(cache
        .records
        .into_iter()
        .filter(|(_, record)| match &record.layer {
            Some(layer) => listed.contains(&(layer.digest.clone(), layer.size)),
            None => true,
        })
        .collect())
}

/// Unpacks `layer` (already in the store) as the snapshot directory `target`: applied into a
/// staging dir under `tmp/`, checked against the diff ID, renamed into place. The same steps
/// as the store's snapshot of an image layer, for a layer no stored image names yet.
pub fn unpack_snapshot(store: &Store, layer: &LayerRef, target: &Path) -> Result<()> {
    let unpack_error = |reason: String| RemoteCacheError::Unpack {
        digest: layer.digest.clone(),
        reason,
    };
    let staging = tempfile::Builder::new()
        .prefix(&crate::store::owned_name("snapshot-"))
        .tempdir_in(store.tmp_dir())
        .map_err(|err| unpack_error(format!("staging dir: {err}")))?;
    let reader = store
        .read_layer_uncompressed(&layer.digest)
        .map_err(|err| unpack_error(err.to_string()))?;
    let stats = apply_layer(reader, staging.path(), WhiteoutMode::Overlay)
        .map_err(|err| unpack_error(error_chain(&err)))?;
    if stats.diff_id != layer.diff_id {
        return Err(unpack_error(format!(
            "its content has diff ID {}, the cache record says {}",
            stats.diff_id, layer.diff_id
        )));
    }
    let staged: PathBuf = staging.keep();
    store
        .note_unsynced_snapshot()
        .map_err(|err| unpack_error(err.to_string()))?;
    match std::fs::rename(&staged, target) {
        Ok(()) => Ok(()),
        // Another step unpacked the same snapshot meanwhile: theirs is as good.
        Err(_) if target.is_dir() => {
            let _ = std::fs::remove_dir_all(&staged);
            Ok(())
        }
        Err(err) => {
            let _ = std::fs::remove_dir_all(&staged);
            Err(unpack_error(format!("keep {}: {err}", target.display())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_to(text: &str, expect: std::result::Result<(&str, CacheMode), &str>) {
        match (parse_cache_to(text), expect) {
            (
                Ok(CacheExport::Registry {
                    reference: got,
                    mode: got_mode,
                    ..
                }),
                Ok((reference, mode)),
            ) => {
                assert_eq!(got.to_string(), reference, "{text}");
                assert_eq!(got_mode, mode, "{text}");
            }
            (Err(err), Err(part)) => {
                let message = err.to_string();
                assert!(message.starts_with("--cache-to"), "{message}");
                assert!(message.contains(part), "{text}: {message} lacks {part:?}");
            }
            (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn cache_to_values() {
        check_to(
            "type=registry,ref=127.0.0.1:5000/cache/app:buildcache,mode=max",
            Ok(("127.0.0.1:5000/cache/app:buildcache", CacheMode::Max)),
        );
        check_to(
            "type=registry,ref=localhost:5000/c:1",
            Ok(("localhost:5000/c:1", CacheMode::Min)),
        );
        check_to(
            "type=local,dest=/tmp/x",
            Err("unsupported cache type \"local\""),
        );
        check_to("ref=localhost:5000/c:1", Err("missing type="));
        check_to("type=registry", Err("missing ref="));
        check_to(
            "type=registry,ref=localhost:5000/c:1,mode=all",
            Err("mode \"all\""),
        );
        check_to(
            "type=registry,ref=localhost:5000/C:1",
            Err("ref \"localhost:5000/C:1\""),
        );
        check_to(
            "type=registry,ref=localhost:5000/c:1,colour=red",
            Err("unknown option \"colour\""),
        );
        check_to("type=registry,,ref=x", Err("\"\" is not KEY=VALUE"));
        check_to("localhost:5000/c:1", Err("is not KEY=VALUE"));
        check_to(
            "type=registry,type=registry,ref=x",
            Err("type is given twice"),
        );
    }

    #[test]
    fn cache_from_values() {
        let parsed = parse_cache_from("type=registry,ref=localhost:5000/c:1").unwrap();
        assert_eq!(parsed.reference.to_string(), "localhost:5000/c:1");
        assert!(!parsed.local_first);
        let plain = parse_cache_from("localhost:5000/c:1").unwrap();
        assert_eq!(plain.reference, parsed.reference);
        assert!(plain.local_first);
        for (text, part) in [
            (
                "type=registry,ref=x,mode=max",
                "mode= is an option of --cache-to only",
            ),
            ("type=gha", "unsupported cache type \"gha\""),
            ("", "empty value"),
            ("type=registry,ref=Bad:Ref:x", "is not a valid reference"),
        ] {
            let message = parse_cache_from(text).unwrap_err().to_string();
            assert!(message.starts_with("--cache-from"), "{message}");
            assert!(message.contains(part), "{text}: {message} lacks {part:?}");
        }
    }

    fn layer(n: u8) -> LayerRef {
        LayerRef {
            digest: Digest::of_bytes(&[n]),
            diff_id: Digest::of_bytes(&[n, n]),
            size: 10 + n as u64,
            media_type: "application/vnd.oci.image.layer.v1.tar+zstd".into(),
        }
    }

    #[test]
    fn artifact_round_trips_and_drops_records_of_unlisted_layers() {
        let mut records = BTreeMap::new();
        for (n, layer) in [
            (1u8, Some(layer(1))),
            (2, None),
            (3, Some(layer(1))),
            (4, Some(layer(2))),
        ] {
            records.insert(
                CacheKey::from(Digest::of_bytes(&[n, 0])),
                CacheRecord {
                    layer,
                    created: format!("2026-01-0{n}T00:00:00Z"),
                },
            );
        }
        let (manifest, config, layers) = artifact(&records);
        assert_eq!(layers.len(), 2);
        let parsed = parse_artifact(&manifest, |digest, size| {
            assert_eq!(*digest, Digest::of_bytes(&config));
            assert_eq!(size, config.len() as u64);
            Ok(config.clone())
        })
        .unwrap_or_else(|_| panic!("parse"));
        assert_eq!(parsed, records);
        // Same records, same bytes: the artifact is deterministic.
        assert_eq!(artifact(&records).0, manifest);

        // A manifest that does not list layer 2 keeps only the records it can serve.
        let mut value: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
        let kept: Vec<serde_json::Value> = value["layers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["digest"] == layer(1).digest.to_string())
            .cloned()
            .collect();
        value["layers"] = serde_json::Value::Array(kept);
        let parsed = parse_artifact(&serde_json::to_vec(&value).unwrap(), |_, _| {
            Ok(config.clone())
        })
        .unwrap_or_else(|_| panic!("parse"));
        assert_eq!(parsed.len(), 3);

        // An image is a cache only with inline records in its config.
        value["config"]["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
        let image_config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
        match parse_artifact(&serde_json::to_vec(&value).unwrap(), |_, _| {
            Ok(image_config.clone())
        }) {
            Err(ArtifactError::Invalid(reason)) => {
                assert!(reason.contains("--cache-to type=inline"), "{reason}")
            }
            _ => panic!("an image without records was taken for a cache"),
        }
        let mut with_inline: serde_json::Value = serde_json::from_slice(&image_config).unwrap();
        with_inline[INLINE_CACHE_FIELD] = inline_cache_value(&records);
        let parsed = parse_artifact(&serde_json::to_vec(&value).unwrap(), |_, _| {
            Ok(serde_json::to_vec(&with_inline).unwrap())
        })
        .unwrap_or_else(|_| panic!("parse"));
        assert_eq!(parsed.len(), 3);
        value["config"]["mediaType"] = "application/vnd.example+json".into();
        match parse_artifact(&serde_json::to_vec(&value).unwrap(), |_, _| {
            Ok(config.clone())
        }) {
            Err(ArtifactError::Invalid(reason)) => {
                assert!(reason.contains("media type"), "{reason}")
            }
            _ => panic!("an unknown artifact was taken for a cache"),
        }
    }

    #[test]
    fn records_to_export_follow_the_mode_and_skip_pruned_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let present = store.write_blob_bytes(b"layer").unwrap();
        let with_layer = |digest: Digest| CacheRecord {
            layer: Some(LayerRef {
                digest,
                diff_id: Digest::of_bytes(b"tar"),
                size: 5,
                media_type: "application/vnd.oci.image.layer.v1.tar+zstd".into(),
            }),
            created: "2026-01-01T00:00:00Z".into(),
        };
        let steps: Vec<StepKey> = (0u8..4)
            .map(|n| StepKey {
                key: CacheKey::from(Digest::of_bytes(&[n])),
                in_final_image: n >= 2,
            })
            .collect();
        // 0: builder stage, blob present; 1: builder stage, no record; 2: final, empty layer;
        // 3: final, blob pruned.
        record::save(&store, &steps[0].key, &with_layer(present.digest.clone())).unwrap();
        let empty = CacheRecord {
            layer: None,
            created: "2026-01-01T00:00:00Z".into(),
        };
        record::save(&store, &steps[2].key, &empty).unwrap();
        record::save(
            &store,
            &steps[3].key,
            &with_layer(Digest::of_bytes(b"gone")),
        )
        .unwrap();
        let min = records_to_export(&store, &steps, CacheMode::Min);
        assert_eq!(min.keys().collect::<Vec<_>>(), vec![&steps[2].key]);
        let max = records_to_export(&store, &steps, CacheMode::Max);
        let mut expected = vec![&steps[0].key, &steps[2].key];
        expected.sort();
        assert_eq!(max.keys().collect::<Vec<_>>(), expected);
    }
}
