//! Image configs between the store and the planner, the base-image resolver, and the
//! assembly of the built image (config + manifest) from the base image, the built layers and
//! their history.
//!
//! The resolver ([`StoreResolver`]) finds `FROM` and `COPY --from=<image>` images in the store
//! and, given a [`RegistryPull`], pulls what the store lacks (with `--pull`, every tagged
//! image) through `registry::image::pull_image`, once per reference however many stages ask.
//! The image's manifest digest is what the planner puts in the Source node's cache key, so a
//! base re-tagged at the registry changes every key after it. It knows the registry only
//! through `pull_image` and `Client`, never the wire protocol or the store's layout.
//!
//! The final config starts from the base image's config as stored (so fields kiln does not
//! model survive), takes the runtime settings from the planner's config of the target stage,
//! appends the layers' diff IDs and one history entry per step (`created_by` as the planner
//! wrote it, the step's original time, `empty_layer` when it added no layer). Its `created` is
//! the newest history time, so a fully cached rebuild gives the same image ID.

use super::progress::{Event, NullSink, ProgressSink, StepInfo, Stream};
use super::record::LayerRef;
use super::{BuildError, History};
use crate::digest::Digest;
use crate::error_chain;
use crate::planner::{self, BaseImageResolver, BuildGraph, Platform, ResolvedImage};
use crate::registry::{
    self, image::pull_image, transfer::BlobStatus, Client, ImageRef, RegistryConfig, RegistryError,
};
use crate::store::{self, Image, Store};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The planner's view of a stored image config.
pub fn planner_config(config: &store::ImageConfig) -> planner::ImageConfig {
    let inner = config.oci.config().clone().unwrap_or_default();
    let healthcheck = config
        .healthcheck
        .as_ref()
        .map(|check| planner::Healthcheck {
            test: check.test.clone(),
            interval: nanos(check.interval),
            timeout: nanos(check.timeout),
            start_period: nanos(check.start_period),
            start_interval: nanos(check.start_interval),
            retries: check.retries.unwrap_or(0),
        });
    planner::ImageConfig {
        env: inner.env().clone().unwrap_or_default(),
        working_dir: inner.working_dir().clone().unwrap_or_default(),
        user: inner.user().clone().unwrap_or_default(),
        shell: config.shell.clone().unwrap_or_default(),
        on_build: config.on_build.clone().unwrap_or_default(),
        entrypoint: inner.entrypoint().clone(),
        cmd: inner.cmd().clone(),
        labels: inner
            .labels()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        exposed_ports: inner
            .exposed_ports()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        volumes: inner
            .volumes()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        stop_signal: inner.stop_signal().clone(),
        healthcheck,
        author: config.oci.author().clone(),
        args_escaped: config.args_escaped.unwrap_or(false),
    }
}

fn nanos(value: Option<i64>) -> Duration {
    Duration::from_nanos(value.unwrap_or(0).max(0) as u64)
}

/// Why a base image could not be had: every variant names the reference (and the registry
/// when one was asked).
#[derive(Debug, thiserror::Error)]
pub enum BaseImageError {
    #[error("image {reference} is not in the store (pull it, load it, or let the build pull it)")]
    NotInStore { reference: String },
    #[error("{reference} is not a reference a registry can serve")]
    Reference {
        reference: String,
        #[source]
        source: Box<RegistryError>,
    },
    #[error("look up image {reference} in the store")]
    Store {
        reference: String,
        #[source]
        source: store::StoreError,
    },
    #[error("pull {reference} from registry {registry}")]
    Pull {
        reference: String,
        registry: String,
        #[source]
        source: Box<RegistryError>,
    },
    #[error("image {reference} is for {found}, not {wanted}")]
    Platform {
        reference: String,
        found: String,
        wanted: String,
    },
}

/// How the resolver may use registries.
#[derive(Clone, Debug)]
pub struct RegistryPull {
    /// Registry settings (insecure hosts, timeouts, parallel transfers).
    pub config: RegistryConfig,
    /// `--pull`: ask the registry for every tagged base image even when the store has one,
    /// and use what it serves now. A digest-pinned image in the store is used as it is (its
    /// content cannot change). A registry that cannot be reached is an error, as in Docker.
    pub always: bool,
}

/// One lookup's outcome, shared by every caller asking for the same reference.
type Lookup = Arc<OnceLock<Result<Digest, Arc<BaseImageError>>>>;

/// Resolves FROM (and `COPY --from=<image>`) images: from the store, pulling from the
/// registry what the store lacks (or everything tagged, with `--pull`). Each reference and
/// platform is looked up once per build, however many stages ask for it at once, so an image
/// is pulled once. Pulls are progress steps `#N [internal] pull REF`; [`StepOffsetSink`] moves
/// the executor's step numbers after them.
pub struct StoreResolver<'a> {
    store: &'a Store,
    registry: Option<RegistryPull>,
    sink: &'a dyn ProgressSink,
    n_steps: AtomicUsize,
    resolved: Mutex<BTreeMap<Digest, Image>>,
    lookups: Mutex<HashMap<(String, String), Lookup>>,
}

impl<'a> StoreResolver<'a> {
    /// A resolver over the store only: a missing image is an error.
    pub fn new(store: &'a Store) -> Self {
        StoreResolver {
            store,
            registry: None,
            sink: &NullSink,
            n_steps: AtomicUsize::new(0),
            resolved: Mutex::new(BTreeMap::new()),
            lookups: Mutex::new(HashMap::new()),
        }
    }

    /// A resolver that pulls from registries as `registry` says, reporting pulls to `sink`.
    pub fn with_registry(
        store: &'a Store,
        registry: RegistryPull,
        sink: &'a dyn ProgressSink,
    ) -> Self {
        StoreResolver {
            registry: Some(registry),
            sink,
            ..StoreResolver::new(store)
        }
    }

    /// Every image resolved so far, by manifest digest.
    pub fn images(&self) -> BTreeMap<Digest, Image> {
        self.resolved.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// How many progress steps (pulls) the resolver has numbered.
    pub fn n_progress_steps(&self) -> usize {
        self.n_steps.load(Ordering::SeqCst)
    }

    /// The image `reference` names for `platform`, looked up (and pulled) at most once.
    fn lookup(&self, reference: &str, platform: &Platform) -> Result<Digest, Arc<BaseImageError>> {
        let key = (reference.to_string(), platform.to_string());
        let lookup: Lookup = {
            let mut lookups = self.lookups.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(lookups.entry(key).or_default())
        };
        // Other callers for the same key wait here until the first one is done.
        lookup
            .get_or_init(|| {
                let image = self.find_or_pull(reference, platform).map_err(Arc::new)?;
                let digest = image.manifest_digest.clone();
                if let Ok(mut map) = self.resolved.lock() {
                    map.insert(digest.clone(), image);
                }
                Ok(digest)
            })
            .clone()
    }

    fn find_or_pull(&self, reference: &str, platform: &Platform) -> Result<Image, BaseImageError> {
        let local = match self.store.resolve(reference) {
            Ok(image) => Some(image),
            Err(store::StoreError::NoSuchImage(_)) => None,
            Err(source) => {
                return Err(BaseImageError::Store {
                    reference: reference.to_string(),
                    source,
                })
            }
        };
        let image = match (&self.registry, local) {
            (None, None) => {
                return Err(BaseImageError::NotInStore {
                    reference: reference.to_string(),
                })
            }
            (None, Some(image)) => image,
            (Some(registry), Some(image)) if !registry.always || is_pinned(reference) => image,
            (Some(registry), _) => self.pull(reference, platform, registry)?,
        };
        check_platform(reference, &image, platform)?;
        Ok(image)
    }

    /// Pulls `reference` into the store as one progress step and returns the stored image.
    fn pull(
        &self,
        reference: &str,
        platform: &Platform,
        registry: &RegistryPull,
    ) -> Result<Image, BaseImageError> {
        let image_ref: ImageRef =
            reference
                .parse()
                .map_err(|source| BaseImageError::Reference {
                    reference: reference.to_string(),
                    source: Box::new(source),
                })?;
        let pull_error = |source| BaseImageError::Pull {
            reference: reference.to_string(),
            registry: image_ref.registry().to_string(),
            source: Box::new(source),
        };
        let number = self.n_steps.fetch_add(1, Ordering::SeqCst) + 1;
        self.sink.event(Event::Started(StepInfo {
            number,
            label: "[internal]".to_string(),
            description: format!("pull {image_ref}"),
        }));
        let started = Instant::now();
        let line = |text: String| {
            self.sink.event(Event::Output {
                number,
                stream: Stream::Stdout,
                bytes: format!("{text}\n").into_bytes(),
            })
        };
        let progress = |digest: &Digest, status: BlobStatus| {
            let status = match status {
                BlobStatus::AlreadyExists => "already exists",
                BlobStatus::Downloaded => "pull complete",
                BlobStatus::Mounted => "mounted",
                BlobStatus::Pushed => "pushed",
                BlobStatus::Failed => "failed",
            };
            line(format!("{} {status}", digest.short()));
        };
        let registry_platform = registry::Platform {
            os: platform.os.clone(),
            architecture: platform.architecture.clone(),
            variant: platform.variant.clone(),
        };
        let pulled = Client::from_environment(&image_ref, &registry.config).and_then(|client| {
            pull_image(
                self.store,
                &client,
                &image_ref,
                &registry_platform,
                registry.config.parallel_transfers,
                &progress,
            )
        });
        let report = match pulled {
            Ok(report) => report,
            Err(source) => {
                let err = pull_error(source);
                self.sink.event(Event::Failed {
                    number,
                    message: error_chain(&err),
                });
                return Err(err);
            }
        };
        if let Some(index) = &report.index_digest {
            line(format!("index {index}"));
        }
        line(format!("digest {}", report.manifest_digest));
        line(if report.fetched.is_empty() {
            format!("image is up to date for {}", report.name)
        } else {
            format!("downloaded newer image for {}", report.name)
        });
        self.sink.event(Event::Done {
            number,
            elapsed: started.elapsed(),
        });
        self.store
            .image(&report.manifest_digest)
            .map(|mut image| {
                image.names.push(report.name.clone());
                image
            })
            .map_err(|source| BaseImageError::Store {
                reference: reference.to_string(),
                source,
            })
    }
}

/// True for `name@sha256:...`: the content such a reference names cannot change.
fn is_pinned(reference: &str) -> bool {
    reference.contains("@sha256:")
}

fn check_platform(
    reference: &str,
    image: &Image,
    platform: &Platform,
) -> Result<(), BaseImageError> {
    let arch = image.config.oci.architecture().to_string();
    if !arch.is_empty() && arch != platform.architecture {
        return Err(BaseImageError::Platform {
            reference: reference.to_string(),
            found: format!("{}/{arch}", image.config.oci.os()),
            wanted: platform.to_string(),
        });
    }
    Ok(())
}

impl BaseImageResolver for StoreResolver<'_> {
    fn resolve(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<ResolvedImage, planner::ResolveError> {
        let digest = self
            .lookup(reference, platform)
            .map_err(|err| -> planner::ResolveError {
                // The planner prints its source's message inline: give it the whole chain.
                error_chain(err.as_ref()).into()
            })?;
        let config = self
            .resolved
            .lock()
            .ok()
            .and_then(|map| map.get(&digest).map(|image| planner_config(&image.config)))
            .ok_or_else(|| -> planner::ResolveError {
                format!("image {reference} ({digest}) vanished from the resolver").into()
            })?;
        Ok(ResolvedImage { digest, config })
    }
}

/// Passes events on with step numbers moved up by `offset`, so the executor's steps (which
/// it numbers from 1) follow the resolver's pull steps.
pub struct StepOffsetSink<'a> {
    pub inner: &'a dyn ProgressSink,
    pub offset: usize,
}

impl ProgressSink for StepOffsetSink<'_> {
    fn event(&self, event: Event) {
        let offset = self.offset;
        let event = match event {
            Event::Started(mut step) => {
                step.number += offset;
                Event::Started(step)
            }
            Event::Cached { number } => Event::Cached {
                number: number + offset,
            },
            Event::Output {
                number,
                stream,
                bytes,
            } => Event::Output {
                number: number + offset,
                stream,
                bytes,
            },
            Event::Done { number, elapsed } => Event::Done {
                number: number + offset,
                elapsed,
            },
            Event::Failed { number, message } => Event::Failed {
                number: number + offset,
                message,
            },
            Event::Note { message } => Event::Note { message },
        };
        self.inner.event(event);
    }
}

/// How many history entries the base image has (its part of the final history).
pub(super) fn base_history_len(base: &Option<Image>) -> Option<usize> {
    base.as_ref()
        .map(|image| image.config.oci.history().as_ref().map_or(0, |h| h.len()))
}

fn set_or_remove(object: &mut Map<String, Value>, key: &str, value: Option<Value>) {
    match value {
        Some(value) => {
            object.insert(key.to_string(), value);
        }
        None => {
            object.remove(key);
        }
    }
}

/// Writes the target image (config, manifest) to the store.
pub(super) fn assemble(
    store: &Store,
    graph: &BuildGraph,
    base: &Option<Image>,
    layers: &[LayerRef],
    history: &[History],
    inline_cache: Option<Value>,
) -> Result<Image, BuildError> {
    let stage = graph.target_stage();
    let store_error = |what: &str| {
        let what = what.to_string();
        move |source| BuildError::Store { what, source }
    };
    let mut value: Value = match base {
        Some(image) => {
            serde_json::from_slice(&image.config_bytes).map_err(|source| BuildError::Store {
                what: "read base image config".into(),
                source: store::StoreError::Json {
                    what: "base image config".into(),
                    source,
                },
            })?
        }
        None => {
            let mut value = json!({
                "architecture": stage.platform.architecture,
                "os": stage.platform.os,
                "rootfs": {"type": "layers", "diff_ids": []},
            });
            if let Some(variant) = &stage.platform.variant {
                value["variant"] = json!(variant);
            }
            value
        }
    };
    let object = value.as_object_mut().ok_or_else(|| BuildError::Store {
        what: "base image config is not an object".into(),
        source: store::StoreError::Invalid("config is not a JSON object".into()),
    })?;
    let config = &stage.config;
    let mut inner = object
        .get("config")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let non_empty_list = |list: &Vec<String>| (!list.is_empty()).then(|| json!(list));
    set_or_remove(&mut inner, "Env", non_empty_list(&config.env));
    set_or_remove(
        &mut inner,
        "WorkingDir",
        (!config.working_dir.is_empty()).then(|| json!(config.working_dir)),
    );
    set_or_remove(
        &mut inner,
        "User",
        (!config.user.is_empty()).then(|| json!(config.user)),
    );
    set_or_remove(
        &mut inner,
        "Entrypoint",
        config.entrypoint.as_ref().map(|v| json!(v)),
    );
    set_or_remove(&mut inner, "Cmd", config.cmd.as_ref().map(|v| json!(v)));
    set_or_remove(
        &mut inner,
        "Labels",
        (!config.labels.is_empty()).then(|| json!(config.labels)),
    );
    let set_map = |set: &std::collections::BTreeSet<String>| {
        (!set.is_empty())
            .then(|| Value::Object(set.iter().map(|k| (k.clone(), json!({}))).collect()))
    };
    set_or_remove(&mut inner, "ExposedPorts", set_map(&config.exposed_ports));
    set_or_remove(&mut inner, "Volumes", set_map(&config.volumes));
    set_or_remove(
        &mut inner,
        "StopSignal",
        config.stop_signal.as_ref().map(|v| json!(v)),
    );
    set_or_remove(&mut inner, "Shell", non_empty_list(&config.shell));
    set_or_remove(&mut inner, "OnBuild", non_empty_list(&config.on_build));
    set_or_remove(
        &mut inner,
        "ArgsEscaped",
        config.args_escaped.then_some(json!(true)),
    );
    set_or_remove(
        &mut inner,
        "Healthcheck",
        config.healthcheck.as_ref().map(|check| {
            let mut value = json!({ "Test": check.test });
            let nanos = |d: Duration| d.as_nanos() as i64;
            for (key, duration) in [
                ("Interval", check.interval),
                ("Timeout", check.timeout),
                ("StartPeriod", check.start_period),
                ("StartInterval", check.start_interval),
            ] {
                if !duration.is_zero() {
                    value[key] = json!(nanos(duration));
                }
            }
            if check.retries != 0 {
                value["Retries"] = json!(check.retries);
            }
            value
        }),
    );
    object.insert("config".into(), Value::Object(inner));
    set_or_remove(object, "author", config.author.as_ref().map(|a| json!(a)));

    let mut diff_ids: Vec<Value> = object
        .get("rootfs")
        .and_then(|r| r.get("diff_ids"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    diff_ids.extend(layers.iter().map(|l| json!(l.diff_id.to_string())));
    object.insert(
        "rootfs".into(),
        json!({"type": "layers", "diff_ids": diff_ids}),
    );
    let mut entries: Vec<Value> = object
        .get("history")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for entry in history {
        let mut value = json!({
            "created": entry.created,
            "created_by": entry.created_by,
            "comment": "buildkit.dockerfile.v0",
        });
        if entry.empty_layer {
            value["empty_layer"] = json!(true);
        }
        entries.push(value);
    }
    object.insert("history".into(), Value::Array(entries));
    let created = history
        .iter()
        .map(|h| h.created.clone())
        .max()
        .or_else(|| {
            object
                .get("created")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(super::now_rfc3339);
    object.insert("created".into(), json!(created));

    let bytes = serde_json::to_vec(&value).map_err(|source| BuildError::Store {
        what: "serialise image config".into(),
        source: store::StoreError::Json {
            what: "image config".into(),
            source,
        },
    })?;
    let image_config = store::ImageConfig::from_bytes(&bytes, "built image config")
        .map_err(store_error("built image config"))?;
    let mut descriptors = match base {
        Some(image) => image.layers().to_vec(),
        None => Vec::new(),
    };
    for layer in layers {
        descriptors.push(oci_spec::image::Descriptor::new(
            oci_spec::image::MediaType::from(layer.media_type.as_str()),
            layer.size,
            store::oci_digest(&layer.digest),
        ));
    }
    match inline_cache {
        None => store
            .put_image(&image_config, descriptors)
            .map_err(store_error("store the built image")),
        Some(records) => put_with_inline_cache(store, &image_config, records, descriptors),
    }
}

/// `--cache-to type=inline`: the image as `put_image` writes it, plus the cache records of its
/// steps in the config's top-level [`INLINE_CACHE_FIELD`](super::remote_cache::INLINE_CACHE_FIELD)
/// (as BuildKit's `moby.buildkit.cache.v0`; not a label). `ImageConfig` does not model the
/// field, so the config bytes and the manifest are written here through the store's public API.
fn put_with_inline_cache(
    store: &Store,
    image_config: &store::ImageConfig,
    records: Value,
    descriptors: Vec<oci_spec::image::Descriptor>,
) -> Result<Image, BuildError> {
    let store_error = |what: &str| {
        let what = what.to_string();
        move |source| BuildError::Store { what, source }
    };
    let json_error = |source| BuildError::Store {
        what: "serialise image config".into(),
        source: store::StoreError::Json {
            what: "image config".into(),
            source,
        },
    };
    let bytes = image_config
        .to_bytes()
        .map_err(store_error("image config"))?;
    let mut value: Value = serde_json::from_slice(&bytes).map_err(json_error)?;
    if let Some(object) = value.as_object_mut() {
        object.insert(super::remote_cache::INLINE_CACHE_FIELD.into(), records);
    }
    let bytes = serde_json::to_vec(&value).map_err(json_error)?;
    let config_info = store
        .write_blob_bytes(&bytes)
        .map_err(store_error("store the image config"))?;
    let manifest = oci_spec::image::ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(oci_spec::image::MediaType::ImageManifest)
        .config(config_info.descriptor(oci_spec::image::MediaType::ImageConfig.as_ref()))
        .layers(descriptors)
        .build()
        .map_err(|err| BuildError::Store {
            what: "build the image manifest".into(),
            source: store::StoreError::Invalid(err.to_string()),
        })?;
    let manifest_bytes = serde_json::to_vec(&manifest).map_err(json_error)?;
    let manifest_bytes =
        serde_json::to_vec(&serde_json::from_slice::<Value>(&manifest_bytes).map_err(json_error)?)
            .map_err(json_error)?;
    store
        .put_manifest(&manifest_bytes)
        .map_err(store_error("store the built image"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what reaches it.
    #[derive(Default)]
    struct Recording(Mutex<Vec<Event>>);

    impl ProgressSink for Recording {
        fn event(&self, event: Event) {
            self.0.lock().unwrap().push(event);
        }
    }

    #[test]
    fn step_numbers_move_after_the_pulls_and_notes_pass_through() {
        let recording = Recording::default();
        let sink = StepOffsetSink {
            inner: &recording,
            offset: 2,
        };
        sink.event(Event::Started(StepInfo {
            number: 1,
            label: "[1/2]".into(),
            description: "FROM x".into(),
        }));
        sink.event(Event::Cached { number: 1 });
        sink.event(Event::Note {
            message: "naming".into(),
        });
        let events = recording.0.lock().unwrap();
        assert!(matches!(&events[0], Event::Started(step) if step.number == 3));
        assert_eq!(events[1], Event::Cached { number: 3 });
        assert_eq!(
            events[2],
            Event::Note {
                message: "naming".into()
            }
        );
    }

    #[test]
    fn without_a_registry_a_missing_image_is_named_and_nothing_is_pulled() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let resolver = StoreResolver::new(&store);
        let platform = Platform::host();
        let err = resolver
            .resolve("docker.io/library/missing:1", &platform)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("image docker.io/library/missing:1 is not in the store"),
            "{err}"
        );
        assert_eq!(resolver.n_progress_steps(), 0);
        assert!(resolver.images().is_empty());
    }

    #[test]
    fn digest_references_are_pinned() {
        let digest = format!("sha256:{}", "a".repeat(64));
        assert!(is_pinned(&format!("127.0.0.1:5000/base@{digest}")));
        assert!(!is_pinned("127.0.0.1:5000/base:1"));
    }
}
