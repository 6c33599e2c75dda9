//! Runs a `BuildGraph`: every node in dependency order, independent nodes (so independent
//! stages) at the same time on up to `jobs` threads, each step first looked up in the build
//! cache. Produces the target's image in the store.
//!
//! - Source: the base image's layers, unpacked on demand as snapshots (lower dirs).
//! - Exec: a container (`executor::container`) over the parent's snapshots with a fresh upper
//!   dir; after exit 0 the mount stubs are removed, the upper dir is committed as a zstd layer
//!   blob and then renamed to be the snapshot of the new chain ID (never unpacked again).
//!   `RUN --mount`s come from `mounts` (bind, cache, tmpfs, secret, ssh); a build-context
//!   bind's content digest is part of the step's key, like a COPY source's.
//! - Copy: the same, but the files are written host-side into an overlay mounted in a private
//!   mount namespace (`copy`).
//! - Meta: no layer (WORKDIR creates its directory like a Copy); the config comes from the
//!   planner, which computed it exactly.
//!
//! Cache: each node's `CacheKey` is the planner's op key over the parent's key plus what only
//! the executor knows (COPY sources' content digests, the keys of stages copied from). A
//! record (`record`) maps the key to the step's layer; a hit needs the blob still present (a
//! missing snapshot is unpacked from it when a later step runs on it), and then nothing runs.
//! A key that misses locally is looked up in the caches imported with `--cache-from`
//! (`remote_cache`): a hit there downloads just that layer and writes the local record. The
//! final image's history keeps each step's original time, so a fully cached rebuild produces the
//! same image ID.
//!
//! Stages are evaluated lazily, as BuildKit does: when the graph has `COPY --from` or
//! `RUN --mount from=` edges, every node's key is computed first (keys depend on the keys of
//! the stages referenced, never on their output, so no step has to run for it), then the
//! needed nodes are found from the target backwards (`plan_lazy`). A node needs its parent;
//! it needs the nodes it references only when its own key misses. A stage whose every consumer
//! hits the cache is not run at all, not even unpacked: this is what lets a `--cache-from`
//! of `mode=min` (only the final image's steps) rebuild a multi-stage image on an empty store
//! without running its builder stages.
//!
//! Knows graphs, containers, snapshots and the store; never Dockerfile syntax. Progress goes to
//! a `ProgressSink`; nothing here prints.

pub mod copy;
pub mod image;
pub mod mounts;
pub mod progress;
pub mod record;
pub mod remote_cache;

use crate::cache::CacheKey;
use crate::context::{ContextError, ContextIndex};
use crate::digest::Digest;
use crate::error_chain;
use crate::executor::container::{
    self, BindMount, CommandLine, ContainerError, ContainerIo, ContainerSpec, ExtraMount,
    NetworkMode, OutputSink, Rootfs, StorageDriver,
};
use crate::layer::{LayerError, DEFAULT_ZSTD_LEVEL};
use crate::planner::{
    BuildGraph, CacheKeyError, ConfigChange, CopyOp, CopySource, ExecOp, Network, Node, NodeId, Op,
    SourceOp,
};
use crate::store::{Image, Store, StoreError};
use copy::{Item, ItemKind, Root};
use progress::{Event, ProgressSink, StepInfo, Stream};
use record::{CacheRecord, LayerRef};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// How many bytes of a failed step's output the error keeps.
const TAIL_BYTES: usize = 4096;

/// Why a build failed; every step variant names the step and its Dockerfile place.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{step}: process {argv:?} did not complete successfully: exit code: {code}{}",
        if tail.is_empty() { String::new() } else { format!("\n--- last output ---\n{tail}") })]
    StepFailed {
        step: String,
        argv: Vec<String>,
        code: i32,
        tail: String,
    },
    #[error("{step}: container failed")]
    Container {
        step: String,
        #[source]
        source: ContainerError,
    },
    #[error("{step}: failed to commit the layer")]
    Commit {
        step: String,
        #[source]
        source: LayerError,
    },
    #[error("{step}: {message}")]
    Copy { step: String, message: String },
    #[error("{step}")]
    Context {
        step: String,
        #[source]
        source: ContextError,
    },
    #[error("{step}: no build context (the Dockerfile came from stdin): {what} needs one")]
    NoContext { step: String, what: String },
    #[error("{step}: {what} is not supported yet")]
    Unsupported { step: String, what: String },
    #[error("{step}: {message}")]
    Mount { step: String, message: String },
    #[error("{step}: failed to download {url}: {message}")]
    Download {
        step: String,
        url: String,
        message: String,
    },
    #[error("{step}: checksum mismatch for {url}: expected {expected}, got {actual}")]
    Checksum {
        step: String,
        url: String,
        expected: String,
        actual: Digest,
    },
    #[error("{step}: cache key")]
    CacheKey {
        step: String,
        #[source]
        source: CacheKeyError,
    },
    #[error("{what}")]
    Store {
        what: String,
        #[source]
        source: StoreError,
    },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

/// What the build reads besides the graph.
pub struct BuildInputs<'a> {
    /// The scanned build context; `None` when the Dockerfile came from stdin.
    pub context: Option<&'a ContextIndex>,
    /// Base images by manifest digest (what the planner's Source nodes name).
    pub images: BTreeMap<Digest, Image>,
    /// Secrets and ssh agents RUN mounts may use (`--secret`, `--ssh`).
    pub session: mounts::SessionInputs,
    /// Caches imported with `--cache-from`, consulted when a step's key misses locally.
    pub remote_cache: Option<&'a remote_cache::RemoteCache>,
}

/// Executor settings that never change a result.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// Steps run at once at most (0: as many as are ready).
    pub jobs: usize,
    /// Ignore cache records (they are still written).
    pub no_cache: bool,
    /// Default network of RUN steps (`--network`); `RUN --network=` overrides it.
    pub network: NetworkMode,
    /// The kiln binary containers start as `kiln init` (default: this executable).
    pub kiln_binary: Option<PathBuf>,
    /// `--cache-to type=inline`: write the cache records of the final image's steps into its
    /// config (`remote_cache::INLINE_CACHE_FIELD`), so `--cache-from IMAGE` can use it.
    pub inline_cache: bool,
    /// Evaluate every stage the target needs, even one whose every consumer hits the cache
    /// (`--cache-to mode=max` exports every step's record, so it needs them all).
    pub all_stages: bool,
}

/// The built image and what ran.
#[derive(Debug, Clone)]
pub struct BuildResult {
    pub image: Image,
    pub n_steps: usize,
    pub n_cached: usize,
    /// The cache key of every step that can have a record (all but `FROM`), in graph order.
    pub steps: Vec<StepKey>,
}

/// One step's cache key, and whether the step's layer is part of the final image (the step is
/// on the target's chain of parents), which is what `--cache-to mode=min` exports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepKey {
    pub key: CacheKey,
    pub in_final_image: bool,
}

/// A step's history entry as it goes into the image.
#[derive(Debug, Clone)]
struct History {
    created_by: String,
    created: String,
    empty_layer: bool,
    cached: bool,
}

/// What a finished node hands to the nodes after it.
#[derive(Debug, Clone)]
struct NodeState {
    key: CacheKey,
    /// The image the node's chain started from (None: scratch).
    base: Option<Image>,
    /// Layers added by this chain's steps, bottom first (the base image's are in `base`).
    layers: Vec<LayerRef>,
    history: Vec<History>,
    /// A stand-in for a node `plan_lazy` found nobody needs: only `key` is real. A step that
    /// references it must be a cache hit.
    skipped: bool,
}

impl NodeState {
    fn skipped(key: CacheKey) -> NodeState {
        NodeState {
            key,
            base: None,
            layers: Vec::new(),
            history: Vec::new(),
            skipped: true,
        }
    }
}

/// What `plan_lazy` worked out before anything runs.
#[derive(Default)]
struct LazyPlan {
    /// The key of every node not needed, for its consumers' keys.
    skipped: BTreeMap<NodeId, CacheKey>,
    /// The skipped nodes that have a cache record (local, or in an imported cache), in
    /// topological order: shown as CACHED, as they are, though nothing of them is fetched.
    skipped_hits: Vec<NodeId>,
    /// Copy preparations (context hashed, URLs fetched) made while computing keys, taken by
    /// the node when it runs so nothing is hashed or downloaded twice.
    prepared: Mutex<BTreeMap<NodeId, PreparedCopy>>,
}

struct Shared<'a> {
    graph: &'a BuildGraph,
    store: &'a Store,
    inputs: &'a BuildInputs<'a>,
    options: &'a ExecOptions,
    sink: &'a dyn ProgressSink,
    counter: AtomicUsize,
    n_cached: AtomicUsize,
    n_steps: AtomicUsize,
    lazy: LazyPlan,
    /// COPY layers whose blobs are still being written ([`commit_in_background`]).
    pending: Mutex<Vec<PendingLayer>>,
}

/// A COPY layer whose blob is being written on a thread of its own while the build goes on:
/// the next steps need only its snapshot and diff ID. Joined before the image is assembled
/// (and before a failed build returns), when its record is saved.
struct PendingLayer {
    diff_id: Digest,
    done: std::thread::JoinHandle<Result<LayerRef, BuildError>>,
    /// The step's cache record, saved once the blob is in.
    record: Option<(CacheKey, CacheRecord)>,
}

/// Waits for every pending layer and saves its record; returns the finished layers by diff
/// ID, or the first failure.
fn join_pending(shared: &Shared<'_>) -> Result<HashMap<Digest, LayerRef>, BuildError> {
    let pending = std::mem::take(
        &mut *shared
            .pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
    );
    let mut finished = HashMap::new();
    let mut failure = None;
    for layer in pending {
        let joined = layer
            .done
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        match joined {
            Ok(done) => {
                if let Some((key, mut record)) = layer.record {
                    record.layer = Some(done.clone());
                    if let Err(source) = record::save(shared.store, &key, &record) {
                        failure.get_or_insert(BuildError::Io {
                            what: "write cache record".into(),
                            source,
                        });
                    }
                }
                finished.insert(layer.diff_id, done);
            }
            Err(err) => {
                failure.get_or_insert(err);
            }
        }
    }
    match failure {
        Some(err) => Err(err),
        None => Ok(finished),
    }
}

/// Builds the graph's target and stores its image (unnamed; the caller names it).
pub fn execute(
    graph: &BuildGraph,
    store: &Store,
    inputs: &BuildInputs<'_>,
    options: &ExecOptions,
    sink: &dyn ProgressSink,
) -> Result<BuildResult, BuildError> {
    let _pin = store.pin().map_err(|source| BuildError::Store {
        what: "pin the store against prune".into(),
        source,
    })?;
    std::fs::create_dir_all(store.containers_dir()).map_err(|source| BuildError::Io {
        what: format!("create {}", store.containers_dir().display()),
        source,
    })?;
    let mut shared = Shared {
        graph,
        store,
        inputs,
        options,
        sink,
        counter: AtomicUsize::new(0),
        n_cached: AtomicUsize::new(0),
        n_steps: AtomicUsize::new(0),
        lazy: LazyPlan::default(),
        pending: Mutex::new(Vec::new()),
    };
    shared.lazy = plan_lazy(&shared)?;
    for id in &shared.lazy.skipped_hits {
        let node = graph.node(*id);
        if shown(node) {
            let number = shared.counter.fetch_add(1, Ordering::SeqCst) + 1;
            sink.event(Event::Started(StepInfo {
                number,
                label: step_label(graph, node),
                description: node.description.clone(),
            }));
            sink.event(Event::Cached { number });
            shared.n_cached.fetch_add(1, Ordering::SeqCst);
            shared.n_steps.fetch_add(1, Ordering::SeqCst);
        }
    }
    let jobs = if options.jobs == 0 {
        graph.stages.len().max(1)
    } else {
        options.jobs
    };
    let mut states: BTreeMap<NodeId, NodeState> = shared
        .lazy
        .skipped
        .iter()
        .map(|(id, key)| (*id, NodeState::skipped(key.clone())))
        .collect();
    let mut failure: Option<BuildError> = None;
    std::thread::scope(|scope| {
        let (sender, receiver) = std::sync::mpsc::channel();
        let mut done: BTreeSet<NodeId> = shared.lazy.skipped.keys().copied().collect();
        let mut running: BTreeSet<NodeId> = BTreeSet::new();
        loop {
            if failure.is_none() {
                for id in graph.ready(&done) {
                    if running.len() >= jobs {
                        break;
                    }
                    if running.contains(&id) {
                        continue;
                    }
                    running.insert(id);
                    let node = graph.node(id);
                    let parent = node.parent.map(|parent| states[&parent].clone());
                    let others: BTreeMap<NodeId, NodeState> = node
                        .inputs
                        .iter()
                        .filter(|input| Some(**input) != node.parent)
                        .map(|input| (*input, states[input].clone()))
                        .collect();
                    let sender = sender.clone();
                    let shared = &shared;
                    scope.spawn(move || {
                        let result = run_node(shared, node, parent, &others);
                        let _ = sender.send((id, result));
                    });
                }
            }
            if running.is_empty() {
                break;
            }
            let Ok((id, result)) = receiver.recv() else {
                break;
            };
            running.remove(&id);
            match result {
                Ok(state) => {
                    states.insert(id, state);
                    done.insert(id);
                }
                Err(err) => {
                    failure.get_or_insert(err);
                }
            }
        }
    });
    // Every layer still being written is waited for, whether the build failed or not.
    let joined = join_pending(&shared);
    if let Some(err) = failure {
        return Err(err);
    }
    let finished = joined?;
    let mut final_chain = BTreeSet::new();
    let mut cursor = Some(graph.target);
    while let Some(id) = cursor {
        final_chain.insert(id);
        cursor = graph.node(id).parent;
    }
    let steps: Vec<StepKey> = graph
        .nodes
        .iter()
        .filter(|node| !matches!(node.op, Op::Source(_)))
        .filter_map(|node| {
            states.get(&node.id).map(|state| StepKey {
                key: state.key.clone(),
                in_final_image: final_chain.contains(&node.id),
            })
        })
        .collect();
    let mut state = states
        .remove(&graph.target)
        .expect("the target is done when nothing failed");
    for layer in &mut state.layers {
        if layer.is_pending() {
            *layer = finished
                .get(&layer.diff_id)
                .cloned()
                .ok_or_else(|| BuildError::Store {
                    what: format!("layer {} was not finished", layer.diff_id),
                    source: StoreError::Invalid("a pending layer was lost".into()),
                })?;
        }
    }
    let inline_cache = options.inline_cache.then(|| {
        remote_cache::inline_cache_value(&remote_cache::records_to_export(
            store,
            &steps,
            remote_cache::CacheMode::Min,
        ))
    });
    let image = image::assemble(
        store,
        graph,
        &state.base,
        &state.layers,
        &state.history,
        inline_cache,
    )?;
    let cached: Vec<bool> = image::base_history_len(&state.base)
        .map(|n| std::iter::repeat(false).take(n))
        .into_iter()
        .flatten()
        .chain(state.history.iter().map(|h| h.cached))
        .collect();
    // Best effort: only `kiln history` reads it.
    let _ = record::save_build_note(store, &image.id(), &cached);
    Ok(BuildResult {
        image,
        n_steps: shared.n_steps.load(Ordering::SeqCst),
        n_cached: shared.n_cached.load(Ordering::SeqCst),
        steps,
    })
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Whether progress shows a node (BuildKit shows FROM, RUN, COPY/ADD and WORKDIR).
fn shown(node: &Node) -> bool {
    match &node.op {
        Op::Source(_) | Op::Exec(_) | Op::Copy(_) => true,
        Op::Meta(meta) => matches!(meta.change, ConfigChange::Workdir { create: true, .. }),
    }
}

/// `[stage k/n]` for a shown node.
fn step_label(graph: &BuildGraph, node: &Node) -> String {
    let steps: Vec<NodeId> = graph
        .nodes
        .iter()
        .filter(|other| other.stage == node.stage && shown(other))
        .map(|other| other.id)
        .collect();
    let position = steps.iter().position(|id| *id == node.id).unwrap_or(0) + 1;
    let stage = graph.stage(node.stage);
    let name = stage.and_then(|stage| stage.name.clone());
    match name {
        Some(name) => format!("[{name} {position}/{}]", steps.len()),
        None if graph.stages.len() > 1 => {
            format!("[stage-{} {position}/{}]", node.stage, steps.len())
        }
        None => format!("[{position}/{}]", steps.len()),
    }
}

fn step_name(node: &Node) -> String {
    match &node.location {
        Some(location) => format!("{location}: {}", node.description),
        None => node.description.clone(),
    }
}

fn run_node(
    shared: &Shared<'_>,
    node: &Node,
    parent: Option<NodeState>,
    others: &BTreeMap<NodeId, NodeState>,
) -> Result<NodeState, BuildError> {
    let step = step_name(node);
    let number = if shown(node) {
        let number = shared.counter.fetch_add(1, Ordering::SeqCst) + 1;
        shared.sink.event(Event::Started(StepInfo {
            number,
            label: step_label(shared.graph, node),
            description: node.description.clone(),
        }));
        Some(number)
    } else {
        None
    };
    let started = Instant::now();
    let result = run_node_inner(shared, node, parent, others, number, &step);
    if let Some(number) = number {
        match &result {
            Ok((_, true)) => {}
            Ok((_, false)) => shared.sink.event(Event::Done {
                number,
                elapsed: started.elapsed(),
            }),
            Err(err) => shared.sink.event(Event::Failed {
                number,
                message: err.to_string(),
            }),
        }
    }
    result.map(|(state, _)| state)
}

/// Runs (or finds in the cache) one node; the flag says it was a cache hit.
fn run_node_inner(
    shared: &Shared<'_>,
    node: &Node,
    parent: Option<NodeState>,
    others: &BTreeMap<NodeId, NodeState>,
    number: Option<usize>,
    step: &str,
) -> Result<(NodeState, bool), BuildError> {
    let store = shared.store;
    let key_error = |source| BuildError::CacheKey {
        step: step.to_string(),
        source,
    };
    let parent = match (&node.op, parent) {
        (Op::Source(source), _) => {
            let key = shared
                .graph
                .cache_key(node.id, &BTreeMap::new(), &[])
                .map_err(key_error)?;
            let base = match source {
                SourceOp::Scratch => None,
                SourceOp::Image {
                    digest, reference, ..
                } => Some(shared.inputs.images.get(digest).cloned().ok_or_else(|| {
                    BuildError::Store {
                        what: format!("{step}: base image {reference} is not in the store"),
                        source: StoreError::NoSuchImage(reference.clone()),
                    }
                })?),
            };
            if let Some(image) = &base {
                // Unpack the base layers now, in this step, so progress shows the time here.
                store
                    .snapshot_lowerdirs(image)
                    .map_err(|source| BuildError::Store {
                        what: format!("{step}: unpack base image layers"),
                        source,
                    })?;
            }
            return Ok((
                NodeState {
                    key,
                    base,
                    layers: Vec::new(),
                    history: Vec::new(),
                    skipped: false,
                },
                false,
            ));
        }
        (_, Some(parent)) => parent,
        (_, None) => unreachable!("every non-source node has a parent"),
    };

    // The cache key: the op over the parent's key plus what only the executor knows.
    let mut keys: BTreeMap<NodeId, CacheKey> = others
        .iter()
        .map(|(id, state)| (*id, state.key.clone()))
        .collect();
    if let Some(parent_id) = node.parent {
        keys.insert(parent_id, parent.key.clone());
    }
    let mut prepared: Option<PreparedCopy> = None;
    let mut source_digests = Vec::new();
    if let Op::Copy(copy_op) = &node.op {
        let planned = shared
            .lazy
            .prepared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&node.id);
        let prepared_copy = match planned {
            Some(prepared_copy) => prepared_copy,
            None => prepare_copy(shared, copy_op, step)?,
        };
        source_digests = prepared_copy.digests.clone();
        prepared = Some(prepared_copy);
    }
    if let Op::Exec(exec) = &node.op {
        source_digests = mounts::context_digests(shared.inputs.context, exec, step)?;
    }
    let key = shared
        .graph
        .cache_key(node.id, &keys, &source_digests)
        .map_err(key_error)?;

    // The same COPY with any source content: what its last run wrote may be linked from
    // (not with --no-cache, which still leaves a note for the next build).
    let lineage = match &node.op {
        Op::Copy(_) => {
            let placeholder = Digest::of_bytes(b"kiln copy lineage");
            let any_content: Vec<Option<Digest>> = source_digests
                .iter()
                .map(|digest| digest.as_ref().map(|_| placeholder.clone()))
                .collect();
            shared.graph.cache_key(node.id, &keys, &any_content).ok()
        }
        _ => None,
    };

    let mut state = parent.clone();
    state.key = key.clone();
    let history_entry = node.history.clone();

    if !shared.options.no_cache && !shared.graph.no_cache {
        let mut hit = usable_record(store, &key);
        if hit.is_none() {
            if let Some(remote) = shared.inputs.remote_cache {
                hit = remote_hit(shared, remote, &key, step);
            }
        }
        if let Some(record) = hit {
            if let Some(number) = number {
                shared.sink.event(Event::Cached { number });
            }
            if number.is_some() {
                shared.n_cached.fetch_add(1, Ordering::SeqCst);
                shared.n_steps.fetch_add(1, Ordering::SeqCst);
            }
            if let Some(layer) = &record.layer {
                state.layers.push(layer.clone());
            }
            if let Some(entry) = history_entry {
                state.history.push(History {
                    created_by: entry.created_by,
                    created: record.created.clone(),
                    empty_layer: record.layer.is_none(),
                    cached: true,
                });
            }
            return Ok((state, true));
        }
    }
    if number.is_some() {
        shared.n_steps.fetch_add(1, Ordering::SeqCst);
    }
    if others.values().any(|state| state.skipped) {
        // plan_lazy skipped a stage because this step hit; the record went away since.
        return Err(BuildError::Store {
            what: format!(
                "{step}: its cache record disappeared during the build, and the stage it \
                 reads was skipped because of it; run the build again"
            ),
            source: StoreError::Invalid(format!("cache record {key} missing")),
        });
    }

    let layer = match &node.op {
        Op::Exec(exec) => run_exec(shared, &parent, others, exec, number, step)?,
        Op::Copy(copy_op) => {
            let prepared = prepared.expect("prepared above");
            let result = run_copy(
                shared,
                &parent,
                others,
                copy_op,
                &prepared,
                lineage.as_ref(),
                step,
            );
            prepared.cleanup();
            result?
        }
        Op::Meta(meta) => match &meta.change {
            ConfigChange::Workdir {
                path,
                create: true,
                user,
            } => run_workdir(shared, &parent, path, user, step)?,
            _ => None,
        },
        Op::Source(_) => unreachable!("handled above"),
    };
    let record = CacheRecord {
        layer: layer.clone(),
        created: now_rfc3339(),
    };
    match layer.as_ref().filter(|layer| layer.is_pending()) {
        // Saved with the finished layer once its blob is in.
        Some(pending) => attach_record(shared, &pending.diff_id, key.clone(), record.clone()),
        None => record::save(store, &key, &record).map_err(|source| BuildError::Io {
            what: format!("{step}: write cache record"),
            source,
        })?,
    }
    if let Some(layer) = layer {
        state.layers.push(layer);
    }
    if let Some(entry) = history_entry {
        state.history.push(History {
            created_by: entry.created_by,
            created: record.created,
            empty_layer: record.layer.is_none(),
            cached: false,
        });
    }
    Ok((state, false))
}

/// Hands a step's record to its pending layer, to be saved when the layer is finished.
fn attach_record(shared: &Shared<'_>, diff_id: &Digest, key: CacheKey, record: CacheRecord) {
    let mut pending = shared
        .pending
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(layer) = pending
        .iter_mut()
        .rev()
        .find(|layer| layer.diff_id == *diff_id && layer.record.is_none())
    {
        layer.record = Some((key, record));
    }
}

/// Finds the nodes nobody needs (see the module doc). Computes every node's key in
/// topological order without running anything, then walks back from the target: a node needs
/// its parent, and the nodes it references only when its key misses (locally, or in the
/// imported caches: such a hit is fetched now and recorded, so the step hits when it runs).
/// With `--no-cache`, `all_stages` (`--cache-to mode=max`), or when no node references another
/// stage, everything is needed.
fn plan_lazy(shared: &Shared<'_>) -> Result<LazyPlan, BuildError> {
    let graph = shared.graph;
    let references = |node: &Node| -> Vec<NodeId> {
        node.inputs
            .iter()
            .copied()
            .filter(|input| Some(*input) != node.parent)
            .collect()
    };
    let mut plan = LazyPlan::default();
    if shared.options.no_cache
        || shared.options.all_stages
        || graph.no_cache
        || graph.nodes.iter().all(|node| references(node).is_empty())
    {
        return Ok(plan);
    }
    let mut keys: BTreeMap<NodeId, CacheKey> = BTreeMap::new();
    let mut prepared = BTreeMap::new();
    for id in graph.topological_order() {
        let node = graph.node(id);
        let step = step_name(node);
        let source_digests = match &node.op {
            Op::Copy(copy_op) => {
                let prepared_copy = prepare_copy(shared, copy_op, &step)?;
                let digests = prepared_copy.digests.clone();
                prepared.insert(id, prepared_copy);
                digests
            }
            Op::Exec(exec) => mounts::context_digests(shared.inputs.context, exec, &step)?,
            _ => Vec::new(),
        };
        let key = graph
            .cache_key(id, &keys, &source_digests)
            .map_err(|source| BuildError::CacheKey {
                step: step.clone(),
                source,
            })?;
        keys.insert(id, key);
    }
    let hits = |id: NodeId| -> bool {
        let key = &keys[&id];
        if usable_record(shared.store, key).is_some() {
            return true;
        }
        match shared.inputs.remote_cache {
            Some(remote) => remote_hit(shared, remote, key, &step_name(graph.node(id))).is_some(),
            None => false,
        }
    };
    let mut needed = BTreeSet::new();
    let mut stack = vec![graph.target];
    while let Some(id) = stack.pop() {
        if !needed.insert(id) {
            continue;
        }
        let node = graph.node(id);
        stack.extend(node.parent);
        let referenced = references(node);
        if !referenced.is_empty() && !hits(id) {
            stack.extend(referenced);
        }
    }
    for id in graph.topological_order() {
        if needed.contains(&id) {
            continue;
        }
        let key = keys.remove(&id).expect("every node has a key");
        let has_record = usable_record(shared.store, &key).is_some()
            || shared
                .inputs
                .remote_cache
                .is_some_and(|remote| remote.lookup(&key).is_some());
        if has_record {
            plan.skipped_hits.push(id);
        }
        plan.skipped.insert(id, key);
        prepared.remove(&id);
    }
    plan.prepared = Mutex::new(prepared);
    Ok(plan)
}

/// Looks `key` up in the imported caches; on a hit, fetches the layer blob, writes the local
/// record and returns it. A hit that cannot be fetched is a
/// warning and a miss: the step runs as if the cache had not had it.
fn remote_hit(
    shared: &Shared<'_>,
    remote: &remote_cache::RemoteCache,
    key: &CacheKey,
    step: &str,
) -> Option<CacheRecord> {
    let hit = remote.lookup(key)?;
    let result = (|| -> Result<(), String> {
        // Only the blob: its snapshot is unpacked if and when a step runs on it (`lowerdirs`),
        // so a build whose steps all hit unpacks nothing.
        remote
            .fetch(shared.store, &hit)
            .map_err(|err| error_chain(&err))?;
        record::save(shared.store, key, &hit.record)
            .map_err(|err| format!("write cache record: {err}"))
    })();
    match result {
        Ok(()) => Some(hit.record),
        Err(message) => {
            shared.sink.event(Event::Note {
                message: format!(
                    "warning: {step}: cannot use the imported cache record, running the step: {message}"
                ),
            });
            None
        }
    }
}

/// The chain IDs of a state's whole layer stack (base image's, then built ones).
fn chain_ids(state: &NodeState) -> Result<Vec<Digest>, BuildError> {
    let mut diff_ids = match &state.base {
        Some(image) => image.diff_ids().map_err(|source| BuildError::Store {
            what: "read base image diff IDs".into(),
            source,
        })?,
        None => Vec::new(),
    };
    diff_ids.extend(state.layers.iter().map(|layer| layer.diff_id.clone()));
    Ok(crate::store::image::chain_ids(&diff_ids))
}

/// The local record of `key` if it is usable: its layer blob is in the store (a missing
/// snapshot, pruned or imported from a remote cache, is unpacked from the blob when a step
/// needs it).
fn usable_record(store: &Store, key: &CacheKey) -> Option<CacheRecord> {
    record::load(store, key).filter(|record| match &record.layer {
        None => true,
        Some(layer) => store.has_blob(&layer.digest),
    })
}

/// The snapshot dirs of a state's root file system, bottom first.
fn lowerdirs(store: &Store, state: &NodeState, step: &str) -> Result<Vec<PathBuf>, BuildError> {
    let mut dirs = match &state.base {
        Some(image) => {
            let mut dirs = store
                .snapshot_lowerdirs(image)
                .map_err(|source| BuildError::Store {
                    what: format!("{step}: unpack base image layers"),
                    source,
                })?;
            dirs.reverse();
            dirs
        }
        None => Vec::new(),
    };
    let ids = chain_ids(state)?;
    let n_base = ids.len() - state.layers.len();
    for (id, layer) in ids[n_base..].iter().zip(&state.layers) {
        let dir = store.snapshot_path(id);
        if !dir.is_dir() {
            // A cache hit whose snapshot is not here (imported, or pruned): unpack its blob.
            remote_cache::unpack_snapshot(store, layer, &dir).map_err(|err| BuildError::Store {
                what: format!("{step}: snapshot {id} is missing and cannot be unpacked"),
                source: StoreError::Invalid(error_chain(&err)),
            })?;
        }
        dirs.push(dir);
    }
    Ok(dirs)
}

fn random_id() -> String {
    use rand::Rng;
    let bytes: [u8; 16] = rand::thread_rng().gen();
    hex::encode(bytes)
}

/// Commits `changes` (an upper dir) as a layer and keeps it as the snapshot of the new chain
/// ID. `None` when nothing changed.
fn commit(
    store: &Store,
    parent: &NodeState,
    changes: &Path,
    step: &str,
) -> Result<Option<LayerRef>, BuildError> {
    if !has_changes(changes, step)? {
        return Ok(None);
    }
    let (layer, _) = write_layer_blob(store, changes, step, None, |_, _| {})?;
    keep_snapshot(store, parent, &layer, changes, step)?;
    Ok(Some(layer))
}

/// Whether the upper dir `changes` holds anything (else the step adds no layer).
fn has_changes(changes: &Path, step: &str) -> Result<bool, BuildError> {
    Ok(std::fs::read_dir(changes)
        .map_err(|source| BuildError::Io {
            what: format!("{step}: read {}", changes.display()),
            source,
        })?
        .next()
        .is_some())
}

/// Writes the layer blob of `changes` into the store (reusing what `reuse` allows, calling
/// `tar_done` as soon as the diff ID is known); gives the layer and the blob's frame index.
fn write_layer_blob(
    store: &Store,
    changes: &Path,
    step: &str,
    reuse: Option<&crate::layer::Reuse>,
    tar_done: impl FnOnce(&Digest, u64),
) -> Result<(LayerRef, crate::layer::FrameIndex), BuildError> {
    let store_error = |what: &str| {
        let what = format!("{step}: {what}");
        move |source| BuildError::Store { what, source }
    };
    // Uncached: nothing reads the blob back during the build (the upper dir becomes the
    // snapshot), so its bytes go to disk as they are made instead of waiting in the page cache
    // for the fsync. The blob writer digests the compressed bytes itself (on its own thread):
    // no second hash of them here.
    let mut blob = store
        .blob_writer_uncached()
        .map_err(store_error("open layer blob"))?;
    let stream = crate::layer::write_layer_frames_with(
        changes,
        &mut blob,
        DEFAULT_ZSTD_LEVEL,
        &[],
        reuse,
        tar_done,
    )
    .map_err(|source| BuildError::Commit {
        step: step.to_string(),
        source,
    })?;
    let stored = blob.commit(None).map_err(store_error("store layer blob"))?;
    let layer = LayerRef {
        digest: stored.digest,
        diff_id: stream.diff_id,
        size: stored.size,
        media_type: layer_media_type(),
    };
    Ok((layer, stream.index))
}

/// The media type of the layers a build commits.
fn layer_media_type() -> String {
    crate::layer::Compression::Zstd {
        level: DEFAULT_ZSTD_LEVEL,
    }
    .media_type()
    .to_string()
}

/// Renames `changes` (the upper dir of `layer` over `parent`) to the snapshot of the new
/// chain ID, unless that snapshot is there already.
fn keep_snapshot(
    store: &Store,
    parent: &NodeState,
    layer: &LayerRef,
    changes: &Path,
    step: &str,
) -> Result<(), BuildError> {
    let mut with = parent.clone();
    with.layers.push(layer.clone());
    let chain_id = chain_ids(&with)?
        .last()
        .cloned()
        .expect("at least one layer");
    let snapshot = store.snapshot_path(&chain_id);
    if !snapshot.is_dir() {
        // The upper dir was written unsynced (volatile overlay): a crash before the next
        // boot's sweep must not leave it standing as a complete snapshot.
        store
            .note_unsynced_snapshot()
            .map_err(|source| BuildError::Store {
                what: format!("{step}: keep snapshot {}", snapshot.display()),
                source,
            })?;
        match std::fs::rename(changes, &snapshot) {
            Ok(()) => {}
            // Someone else made the same snapshot meanwhile: theirs is as good.
            Err(_) if snapshot.is_dir() => {}
            Err(source) => {
                return Err(BuildError::Io {
                    what: format!("{step}: keep snapshot {}", snapshot.display()),
                    source,
                })
            }
        }
    }
    Ok(())
}

/// Commits a COPY's upper dir as [`commit`] does, but returns as soon as the layer's diff ID
/// is known and the upper dir is the snapshot, with a [`LayerRef::pending`] layer: the blob
/// (frames copied from the last run's blob, reading it back takes the disk a while) is
/// finished on a thread of its own, joined by `execute` before the image is assembled. The
/// next steps need only the snapshot. The thread also keeps the copy note for the next run
/// and removes `state_dir`.
#[allow(clippy::too_many_arguments)]
fn commit_in_background(
    shared: &Shared<'_>,
    parent: &NodeState,
    upper: PathBuf,
    state_dir: PathBuf,
    step: &str,
    reuse: crate::layer::Reuse,
    lineage: Option<CacheKey>,
) -> Result<Option<LayerRef>, BuildError> {
    if !has_changes(&upper, step)? {
        let _ = remove_all(&state_dir);
        return Ok(None);
    }
    let store = shared.store.clone();
    let (tar_done, diff_id) = std::sync::mpsc::channel::<Digest>();
    let thread_upper = upper.clone();
    let thread_parent = parent.clone();
    let thread_step = step.to_string();
    let thread = std::thread::Builder::new()
        .name("kiln-layer".into())
        .spawn(move || -> Result<LayerRef, BuildError> {
            let result = write_layer_blob(
                &store,
                &thread_upper,
                &thread_step,
                Some(&reuse),
                |digest, _| {
                    let _ = tar_done.send(digest.clone());
                },
            );
            let _ = remove_all(&state_dir);
            let (layer, frames) = result?;
            if let Some(lineage) = &lineage {
                if !reuse.digests.is_empty() {
                    save_previous_copy(
                        &store,
                        &thread_parent,
                        &layer,
                        &frames,
                        lineage,
                        reuse.digests,
                    );
                }
            }
            Ok(layer)
        })
        .map_err(|source| BuildError::Io {
            what: format!("{step}: start the layer writer"),
            source,
        })?;
    let join = |thread: std::thread::JoinHandle<Result<LayerRef, BuildError>>| {
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    };
    let diff_id = match diff_id.recv() {
        Ok(diff_id) => diff_id,
        // The thread ended before the tar was read: it failed, and says why.
        Err(_) => {
            return match join(thread) {
                Err(err) => Err(err),
                Ok(layer) => Err(BuildError::Store {
                    what: format!("{step}: layer {} gave no diff ID", layer.digest),
                    source: StoreError::Invalid("the layer writer did not report".into()),
                }),
            }
        }
    };
    let layer = LayerRef::pending(diff_id.clone(), layer_media_type());
    if let Err(err) = keep_snapshot(shared.store, parent, &layer, &upper, step) {
        let _ = join(thread);
        return Err(err);
    }
    shared
        .pending
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(PendingLayer {
            diff_id,
            done: thread,
            record: None,
        });
    Ok(Some(layer))
}

/// Copies a step's output to the progress sink and keeps its tail for the error message.
struct StepOutput<'a> {
    sink: &'a dyn ProgressSink,
    number: Option<usize>,
    stream: Stream,
    tail: Arc<Mutex<Vec<u8>>>,
}

impl Write for StepOutput<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(number) = self.number {
            self.sink.event(Event::Output {
                number,
                stream: self.stream,
                bytes: buf.to_vec(),
            });
        }
        if let Ok(mut tail) = self.tail.lock() {
            tail.extend_from_slice(buf);
            if tail.len() > TAIL_BYTES * 2 {
                let cut = tail.len() - TAIL_BYTES;
                tail.drain(..cut);
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn tail_text(tail: &Mutex<Vec<u8>>) -> String {
    let bytes = tail.lock().map(|t| t.clone()).unwrap_or_default();
    let start = bytes.len().saturating_sub(TAIL_BYTES);
    let text = String::from_utf8_lossy(&bytes[start..]).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(10);
    lines[from..].join("\n")
}

fn run_exec(
    shared: &Shared<'_>,
    parent: &NodeState,
    others: &BTreeMap<NodeId, NodeState>,
    exec: &ExecOp,
    number: Option<usize>,
    step: &str,
) -> Result<Option<LayerRef>, BuildError> {
    let store = shared.store;
    let lowers = lowerdirs(store, parent, step)?;
    let id = random_id();
    let state_dir = store.container_dir(&id);
    let driver = if lowers.is_empty() {
        StorageDriver::Auto
    } else {
        StorageDriver::Overlay
    };
    let container_error = |source| BuildError::Container {
        step: step.to_string(),
        source,
    };
    let rootfs = Rootfs::prepare(&state_dir, &lowers, driver).map_err(container_error)?;
    let result = run_exec_in(shared, parent, others, exec, number, step, &rootfs, &id);
    let _ = rootfs.cleanup();
    result
}

#[allow(clippy::too_many_arguments)]
fn run_exec_in(
    shared: &Shared<'_>,
    parent: &NodeState,
    others: &BTreeMap<NodeId, NodeState>,
    exec: &ExecOp,
    number: Option<usize>,
    step: &str,
    rootfs: &Rootfs,
    id: &str,
) -> Result<Option<LayerRef>, BuildError> {
    let io_error = |what: String| move |source| BuildError::Io { what, source };
    let mut mounts = Vec::new();
    let files_dir = rootfs.state_dir().join("files");
    for (index, file) in exec.files.iter().enumerate() {
        std::fs::create_dir_all(&files_dir)
            .map_err(io_error(format!("{step}: create {}", files_dir.display())))?;
        let host = files_dir.join(index.to_string());
        std::fs::write(&host, &file.contents)
            .and_then(|()| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&host, std::fs::Permissions::from_mode(file.mode))
            })
            .map_err(io_error(format!("{step}: write {}", host.display())))?;
        mounts.push(BindMount {
            source: host,
            destination: file.path.clone(),
            read_only: true,
        });
    }
    let prepared_mounts = mounts::prepare(shared, others, exec, rootfs.state_dir(), step)?;
    // Files first (they live in /dev), then the step's mounts, parents before children.
    let mut extra_mounts: Vec<ExtraMount> = mounts.drain(..).map(ExtraMount::Bind).collect();
    let mut step_mounts = prepared_mounts.mounts.clone();
    step_mounts.sort_by_key(|mount| {
        std::path::Path::new(mount.destination())
            .components()
            .count()
    });
    extra_mounts.extend(step_mounts);
    let mut env = exec.env.clone();
    env.extend(exec.proxy_env.iter().map(|(k, v)| format!("{k}={v}")));
    // Secret variables and SSH_AUTH_SOCK: in the process only, never in a key or history.
    for (key, value) in &prepared_mounts.env {
        env.retain(|entry| entry.split_once('=').map(|(k, _)| k) != Some(key.as_str()));
        env.push(format!("{key}={value}"));
    }
    let network = match exec.network {
        Network::None => NetworkMode::None,
        Network::Host => NetworkMode::Host,
        Network::Default => shared.options.network,
    };
    let spec = ContainerSpec {
        command: CommandLine::Exec(exec.argv.clone()),
        env,
        cwd: exec.workdir.clone(),
        user: exec.user.clone(),
        hostname: id[..12].to_string(),
        network,
        mounts: Vec::new(),
        extra_mounts,
        tty: false,
        stdin: false,
        kiln_binary: shared.options.kiln_binary.clone(),
    };
    let tail = Arc::new(Mutex::new(Vec::new()));
    // The sink outlives the container (scoped to this build), but OutputSink needs 'static
    // writers: hand the output over through a channel drained here.
    let (sender, receiver) = std::sync::mpsc::channel::<(Stream, Vec<u8>)>();
    let writer = |stream: Stream| -> OutputSink {
        OutputSink::Writer(Box::new(ChannelWriter {
            stream,
            sender: sender.clone(),
        }))
    };
    let io = ContainerIo {
        stdout: writer(Stream::Stdout),
        stderr: writer(Stream::Stderr),
    };
    drop(sender);
    let container_error = |source| BuildError::Container {
        step: step.to_string(),
        source,
    };
    let status = std::thread::scope(|scope| {
        let forward = scope.spawn(|| {
            let mut out = StepOutput {
                sink: shared.sink,
                number,
                stream: Stream::Stdout,
                tail: Arc::clone(&tail),
            };
            for (stream, bytes) in receiver {
                out.stream = stream;
                let _ = out.write(&bytes);
            }
        });
        let status = container::run(rootfs, &spec, io);
        let _ = forward.join();
        status
    })
    .map_err(container_error)?;
    if !status.success() {
        return Err(BuildError::StepFailed {
            step: step.to_string(),
            argv: exec.argv.clone(),
            code: status.code,
            tail: tail_text(&tail),
        });
    }
    rootfs.remove_mount_stubs().map_err(container_error)?;
    commit(shared.store, parent, &rootfs.changes_dir(), step)
}

/// Sends container output to the thread that forwards it to the progress sink.
struct ChannelWriter {
    stream: Stream,
    sender: std::sync::mpsc::Sender<(Stream, Vec<u8>)>,
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = self.sender.send((self.stream, buf.to_vec()));
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// COPY/ADD sources made ready before the cache lookup: context selections turned into
/// items, heredocs and downloads written to temporary files, and their digests.
struct PreparedCopy {
    /// One per op source; `None` for Node sources (selected once the source is mounted).
    roots: Vec<Option<Vec<Root>>>,
    digests: Vec<Option<Digest>>,
    temp: Option<tempfile::TempDir>,
}

impl PreparedCopy {
    fn cleanup(self) {
        drop(self.temp);
    }
}

fn prepare_copy(
    shared: &Shared<'_>,
    copy_op: &CopyOp,
    step: &str,
) -> Result<PreparedCopy, BuildError> {
    let io_error = |what: String| move |source| BuildError::Io { what, source };
    let exclude = exclude_matcher(copy_op, step)?;
    let reshaping = copy_op.parents || !exclude.is_empty();
    let mut temp: Option<tempfile::TempDir> = None;
    let mut temp_dir = |shared: &Shared<'_>| -> Result<PathBuf, BuildError> {
        if temp.is_none() {
            temp = Some(
                tempfile::Builder::new()
                    .prefix(&crate::store::owned_name("copy-"))
                    .tempdir_in(shared.store.tmp_dir())
                    .map_err(io_error(format!("{step}: create a temporary directory")))?,
            );
        }
        Ok(temp.as_ref().expect("just made").path().to_path_buf())
    };
    let mut roots = Vec::new();
    let mut digests = Vec::new();
    for (index, source) in copy_op.sources.iter().enumerate() {
        match source {
            CopySource::Context {
                path,
                extract_archive,
            } => {
                let context = shared.inputs.context.ok_or_else(|| BuildError::NoContext {
                    step: step.to_string(),
                    what: format!("source {path:?}"),
                })?;
                let selection = context.select(path).map_err(|source| BuildError::Context {
                    step: step.to_string(),
                    source,
                })?;
                let mut selected = Vec::new();
                for root in &selection.roots {
                    let host_of = |entry: &crate::context::Entry| context.root().join(&entry.path);
                    let item_of = |entry: &crate::context::Entry, rel: PathBuf| Item {
                        rel,
                        kind: match entry.kind {
                            crate::context::EntryKind::File => ItemKind::File {
                                host: host_of(entry),
                                content: entry.digest.clone().map(|digest| copy::Content {
                                    digest,
                                    size: entry.size,
                                }),
                            },
                            crate::context::EntryKind::Dir => ItemKind::Dir,
                            crate::context::EntryKind::Symlink => ItemKind::Symlink {
                                target: entry.link_target.clone().unwrap_or_default(),
                            },
                        },
                        mode: entry.mode,
                        uid: 0,
                        gid: 0,
                        mtime_ns: Some(entry.mtime_ns),
                    };
                    if root.is_dir() {
                        // The context root has no entry of its own: its mtime is read here.
                        let mtime_ns = match root.entry {
                            Some(entry) => Some(entry.mtime_ns),
                            None => std::fs::metadata(context.root()).ok().map(|meta| {
                                use std::os::unix::fs::MetadataExt;
                                meta.mtime() * 1_000_000_000 + meta.mtime_nsec()
                            }),
                        };
                        selected.push(Root {
                            is_dir: true,
                            mtime_ns,
                            name: root.name().map(|n| n.to_os_string()).unwrap_or_default(),
                            matched: root.matched.clone(),
                            items: root
                                .subtree
                                .iter()
                                .map(|entry| {
                                    item_of(entry, root.relative_path(entry).to_path_buf())
                                })
                                .collect(),
                            extract: false,
                        });
                    } else {
                        let entry = root.entry.expect("a file root has an entry");
                        selected.push(Root {
                            is_dir: false,
                            name: root.name().map(|n| n.to_os_string()).unwrap_or_default(),
                            matched: root.matched.clone(),
                            items: vec![item_of(entry, PathBuf::new())],
                            extract: *extract_archive,
                            mtime_ns: None,
                        });
                    }
                }
                if reshaping {
                    selected = copy::reshape(
                        selected,
                        copy_op.parents,
                        &copy::SourceParts::of(path),
                        &exclude,
                        context.root(),
                    );
                    // Only what is copied counts: an excluded file may change freely.
                    let content: BTreeMap<PathBuf, Digest> = selection
                        .entries()
                        .into_iter()
                        .filter_map(|entry| {
                            Some((context.root().join(&entry.path), entry.digest.clone()?))
                        })
                        .collect();
                    digests.push(Some(shaped_digest(&selected, &content)));
                } else {
                    digests.push(Some(selection.digest()));
                }
                roots.push(Some(selected));
            }
            CopySource::Node { .. } => {
                roots.push(None);
                digests.push(None);
            }
            CopySource::Heredoc { name, contents } => {
                let dir = temp_dir(shared)?;
                let host = dir.join(format!("heredoc-{index}"));
                std::fs::write(&host, contents)
                    .map_err(io_error(format!("{step}: write heredoc {name}")))?;
                roots.push(Some(vec![Root {
                    is_dir: false,
                    mtime_ns: None,
                    name: name.into(),
                    matched: PathBuf::from(name),
                    items: vec![Item {
                        rel: PathBuf::new(),
                        kind: ItemKind::File {
                            host,
                            content: None,
                        },
                        mode: 0o644,
                        uid: 0,
                        gid: 0,
                        mtime_ns: None,
                    }],
                    extract: false,
                }]));
                digests.push(None);
            }
            CopySource::Url {
                url,
                extract_archive,
            } => {
                let dir = temp_dir(shared)?;
                let host = dir.join(format!("download-{index}"));
                let digest = download(url, &host, step)?;
                if let Some(expected) = &copy_op.checksum {
                    if expected != &digest.to_string() {
                        return Err(BuildError::Checksum {
                            step: step.to_string(),
                            url: url.clone(),
                            expected: expected.clone(),
                            actual: digest,
                        });
                    }
                }
                let name = url_file_name(url);
                roots.push(Some(vec![Root {
                    is_dir: false,
                    mtime_ns: None,
                    matched: PathBuf::from(&name),
                    name: name.into(),
                    items: vec![Item {
                        rel: PathBuf::new(),
                        kind: ItemKind::File {
                            host,
                            content: None,
                        },
                        mode: 0o600,
                        uid: 0,
                        gid: 0,
                        mtime_ns: None,
                    }],
                    extract: *extract_archive,
                }]));
                digests.push(Some(digest));
            }
        }
    }
    Ok(PreparedCopy {
        roots,
        digests,
        temp,
    })
}

/// `--exclude` patterns as a `.dockerignore` matcher.
fn exclude_matcher(copy_op: &CopyOp, step: &str) -> Result<crate::context::Matcher, BuildError> {
    crate::context::Matcher::new(&copy_op.exclude).map_err(|err| BuildError::Copy {
        step: step.to_string(),
        message: format!("--exclude {:?}: {err}", copy_op.exclude),
    })
}

/// The digest of what reshaped roots copy (`--parents`/`--exclude`): per item its path,
/// type, mode, owner, symlink target and content digest (from `content`, by host path).
fn shaped_digest(roots: &[Root], content: &BTreeMap<PathBuf, Digest>) -> Digest {
    let mut text = String::from("kiln-copy-shaped-v1\n");
    for root in roots {
        text.push_str(&format!(
            "root {} {:?} {:?}\n",
            root.is_dir, root.name, root.matched
        ));
        for item in &root.items {
            let what = match &item.kind {
                ItemKind::File { host, .. } => format!(
                    "file {}",
                    content.get(host).map(|d| d.to_string()).unwrap_or_default()
                ),
                ItemKind::Dir => "dir".to_string(),
                ItemKind::Symlink { target } => format!("symlink {target:?}"),
            };
            text.push_str(&format!(
                "{:?} {:o} {}:{} {what}\n",
                item.rel, item.mode, item.uid, item.gid
            ));
        }
    }
    Digest::of_bytes(text.as_bytes())
}

/// The file name an ADD of `url` gets: the last path segment (Docker's rule), or `download`.
fn url_file_name(url: &str) -> String {
    let without_query = url.split(['?', '#']).next().unwrap_or(url);
    let after_scheme = without_query
        .split_once("://")
        .map_or(without_query, |(_, rest)| rest);
    match after_scheme.split_once('/') {
        Some((_, path)) => path
            .rsplit('/')
            .next()
            .filter(|name| !name.is_empty())
            .unwrap_or("download")
            .to_string(),
        None => "download".to_string(),
    }
}

/// Downloads `url` to `path` and returns the content's sha256.
fn download(url: &str, path: &Path, step: &str) -> Result<Digest, BuildError> {
    let fail = |message: String| BuildError::Download {
        step: step.to_string(),
        url: url.to_string(),
        message,
    };
    let response = ureq::get(url).call().map_err(|err| fail(err.to_string()))?;
    let file = std::fs::File::create(path).map_err(|err| fail(err.to_string()))?;
    let mut writer = crate::digest::DigestWriter::new(io::BufWriter::new(file));
    io::copy(&mut response.into_reader(), &mut writer).map_err(|err| fail(err.to_string()))?;
    let (digest, _, mut inner) = writer.finish();
    inner.flush().map_err(|err| fail(err.to_string()))?;
    Ok(digest)
}

/// Resolves `--chown` against the root file system's /etc/passwd and /etc/group.
fn resolve_owner(root: &Path, chown: &str) -> io::Result<(u32, u32)> {
    let read = |file: &str| -> String {
        copy::resolve_in_root(root, file, true)
            .ok()
            .and_then(|path| std::fs::read_to_string(path).ok())
            .unwrap_or_default()
    };
    let passwd = read("/etc/passwd");
    let group = read("/etc/group");
    // `--chown=user` alone means user:user's primary group... Docker uses the same name as
    // group when it exists, else the user's primary group; runc's rule (primary group) is
    // what BuildKit does.
    let user = container::user::resolve(chown, &passwd, &group)
        .map_err(|err| io::Error::other(format!("--chown={chown}: {err}")))?;
    Ok((user.uid, user.gid))
}

fn run_copy(
    shared: &Shared<'_>,
    parent: &NodeState,
    others: &BTreeMap<NodeId, NodeState>,
    copy_op: &CopyOp,
    prepared: &PreparedCopy,
    lineage: Option<&CacheKey>,
    step: &str,
) -> Result<Option<LayerRef>, BuildError> {
    let store = shared.store;
    let lowers = lowerdirs(store, parent, step)?;
    let mut sources_lowers: Vec<Option<Vec<PathBuf>>> = Vec::new();
    for source in &copy_op.sources {
        match source {
            CopySource::Node { node, .. } => {
                let state = others.get(node).ok_or_else(|| BuildError::Copy {
                    step: step.to_string(),
                    message: format!("source node {node} was not built"),
                })?;
                sources_lowers.push(Some(lowerdirs(store, state, step)?));
            }
            _ => sources_lowers.push(None),
        }
    }
    let chmod = match &copy_op.chmod {
        Some(text) => Some(copy::parse_chmod(text).ok_or_else(|| BuildError::Copy {
            step: step.to_string(),
            message: format!(
                "invalid --chmod={text}: expected an octal mode or a symbolic one (u+x, a=rX)"
            ),
        })?),
        None => None,
    };
    let exclude = exclude_matcher(copy_op, step)?;
    let parents = copy_op.parents;
    let reshaping = parents || !exclude.is_empty();
    let dest = copy_op.dest.clone();
    let chown = copy_op.chown.clone();
    let sources = copy_op.sources.clone();
    let (previous, previous_layer) = lineage
        .filter(|_| !shared.options.no_cache && !shared.graph.no_cache)
        .and_then(|lineage| previous_copy(store, lineage))
        .map_or((None, None), |(files, layer)| (Some(files), layer));

    let first_half = move |target: &Path, scratch: &Path| {
        let owner = match &chown {
            Some(chown) => Some(resolve_owner(target, chown)?),
            None => None,
        };
        let mut roots: Vec<Root> = Vec::new();
        for (index, source) in sources.iter().enumerate() {
            match (source, &prepared.roots[index]) {
                (_, Some(selected)) => roots.extend(selected.iter().cloned()),
                (CopySource::Node { path, .. }, None) => {
                    let source_lowers = sources_lowers[index].as_ref().expect("set for nodes");
                    let source_root = match source_lowers.len() {
                        0 => {
                            let empty = scratch.join(format!("src{index}"));
                            std::fs::create_dir_all(&empty)?;
                            empty
                        }
                        1 => source_lowers[0].clone(),
                        _ => {
                            let base = scratch.join(format!("src{index}"));
                            let (upper, work, merged) =
                                (base.join("upper"), base.join("work"), base.join("merged"));
                            for dir in [&upper, &work, &merged] {
                                std::fs::create_dir_all(dir)?;
                            }
                            copy::mount_overlay(source_lowers, &upper, &work, &merged)?;
                            merged
                        }
                    };
                    let selected = copy::select_in_root(&source_root, path)?;
                    roots.extend(if reshaping {
                        copy::reshape(
                            selected,
                            parents,
                            &copy::SourceParts::of(path),
                            &exclude,
                            &source_root,
                        )
                    } else {
                        selected
                    });
                }
                (_, None) => return Err(io::Error::other("source was not prepared")),
            }
        }
        let spec = copy::CopySpec {
            dest: dest.clone(),
            owner,
            chmod,
        };
        let files = copy::copy_roots_direct(target, &roots, &spec)?;
        Ok((files, spec))
    };
    let second_half = |upper: &Path, (direct, spec): (copy::DirectFiles, copy::CopySpec)| {
        let known = copy::write_direct(upper, &direct.files, &spec, previous.as_ref())?;
        copy::set_dir_times(upper, &direct.dir_times)?;
        Ok(known)
    };
    let (upper, state_dir, known) =
        in_overlay_then_upper(store, &lowers, step, first_half, second_half)?;
    // The digests of the copied files let the commit tell unchanged segments of the layer
    // without reading them, and copy their frames from the previous run's blob.
    let reuse = crate::layer::Reuse {
        digests: known,
        previous: previous_layer,
    };
    commit_in_background(
        shared,
        parent,
        upper,
        state_dir,
        step,
        reuse,
        lineage.cloned(),
    )
}

/// The files the last run of this COPY left in a snapshot that is still there, and the blob
/// it committed with that blob's frames.
fn previous_copy(
    store: &Store,
    lineage: &CacheKey,
) -> Option<(
    copy::PreviousCopy,
    Option<(crate::layer::FrameIndex, PathBuf)>,
)> {
    let note = record::load_copy_note(store, lineage)?;
    let snapshot = store.snapshot_path(&note.snapshot);
    if !snapshot.is_dir() {
        return None;
    }
    let layer = note
        .layer
        .map(|layer| (layer.frames, store.blob_path(&layer.blob)));
    let files = copy::PreviousCopy {
        snapshot,
        files: note
            .files
            .into_iter()
            .map(|(path, digest)| (PathBuf::from(path), digest))
            .collect(),
    };
    Some((files, layer))
}

/// Notes which files this COPY wrote into the snapshot of `parent` + `layer`. Best effort: a
/// missing note only means the next run copies every file.
fn save_previous_copy(
    store: &Store,
    parent: &NodeState,
    layer: &LayerRef,
    frames: &crate::layer::FrameIndex,
    lineage: &CacheKey,
    known: HashMap<PathBuf, Digest>,
) {
    let mut with = parent.clone();
    with.layers.push(layer.clone());
    let Some(chain_id) = chain_ids(&with).ok().and_then(|ids| ids.last().cloned()) else {
        return;
    };
    let note = record::CopyNote {
        snapshot: chain_id,
        files: known
            .into_iter()
            .filter_map(|(path, digest)| Some((path.into_os_string().into_string().ok()?, digest)))
            .collect(),
        layer: Some(record::NotedLayer {
            blob: layer.digest.clone(),
            frames: frames.clone(),
        }),
    };
    let _ = record::save_copy_note(store, lineage, &note);
}

/// WORKDIR: creates the directory (owned by the step's user) and commits it.
fn run_workdir(
    shared: &Shared<'_>,
    parent: &NodeState,
    path: &str,
    user: &str,
    step: &str,
) -> Result<Option<LayerRef>, BuildError> {
    let store = shared.store;
    let lowers = lowerdirs(store, parent, step)?;
    let path = path.to_string();
    let user = user.to_string();
    let (upper, state_dir) = in_overlay(store, &lowers, step, move |target, _| {
        let owner = if user.is_empty() {
            (0, 0)
        } else {
            resolve_owner(target, &user)?
        };
        let existing = copy::resolve_in_root(target, &path, true)?;
        if existing.is_dir() {
            return Ok(());
        }
        copy::mkdir_all_in_root(target, &path, owner).map(|_| ())
    })?;
    let result = commit(store, parent, &upper, step);
    let _ = remove_all(&state_dir);
    result
}

fn remove_all(path: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

/// Mounts an overlay of `lowers` with a fresh upper dir in a private mount namespace and runs
/// `work(merged root, scratch dir)`. Returns the upper dir (the changes) and the state dir to
/// remove after commit.
fn in_overlay(
    store: &Store,
    lowers: &[PathBuf],
    step: &str,
    work: impl FnOnce(&Path, &Path) -> io::Result<()> + Send,
) -> Result<(PathBuf, PathBuf), BuildError> {
    in_overlay_then_upper(store, lowers, step, work, |_, ()| Ok(()))
        .map(|(upper, state_dir, ())| (upper, state_dir))
}

/// [`in_overlay`], then unmounts the overlay and runs `then(upper dir, what work returned)`
/// (in the same private mount namespace, so mounts `work` made elsewhere are still there).
/// With no lower dirs nothing is mounted and `work` gets the upper dir itself.
fn in_overlay_then_upper<T, U: Send>(
    store: &Store,
    lowers: &[PathBuf],
    step: &str,
    work: impl FnOnce(&Path, &Path) -> io::Result<T> + Send,
    then: impl FnOnce(&Path, T) -> io::Result<U> + Send,
) -> Result<(PathBuf, PathBuf, U), BuildError> {
    let state_dir = store.container_dir(&random_id());
    let (upper, work_dir, merged, scratch) = (
        state_dir.join("upper"),
        state_dir.join("work"),
        state_dir.join("merged"),
        state_dir.join("scratch"),
    );
    let result = (|| -> io::Result<U> {
        for dir in [&upper, &work_dir, &merged, &scratch] {
            std::fs::create_dir_all(dir)?;
        }
        let lowers = lowers.to_vec();
        let (upper, work_dir, merged, scratch) = (&upper, &work_dir, &merged, &scratch);
        copy::with_private_mounts(move || {
            if lowers.is_empty() {
                let done = work(upper, scratch)?;
                return then(upper, done);
            }
            copy::mount_overlay(&lowers, upper, work_dir, merged)?;
            let done = work(merged, scratch);
            unmount_overlay(merged)?;
            then(upper, done?)
        })
    })();
    match result {
        Ok(done) => Ok((upper, state_dir, done)),
        Err(source) => {
            let _ = remove_all(&state_dir);
            Err(BuildError::Copy {
                step: step.to_string(),
                message: source.to_string(),
            })
        }
    }
}

/// Unmounts the overlay on `merged`, not lazily: the upper dir may be written to only once no
/// overlay uses it. A fork in another thread (a RUN spawning its container) holds copies of
/// all the process's fds until it execs, an fd of a file in `merged` among them for a moment,
/// which makes the unmount fail with EBUSY: it is retried until that fork is gone.
fn unmount_overlay(merged: &Path) -> io::Result<()> {
    use container::kernel::Kernel as _;
    let mut pause = std::time::Duration::from_micros(200);
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match container::kernel::Linux.umount(merged, nix::mount::MntFlags::empty()) {
            Ok(()) => return Ok(()),
            Err(nix::errno::Errno::EBUSY) if Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(50));
            }
            Err(errno) => {
                return Err(io::Error::other(format!(
                    "unmount {}: {errno}",
                    merged.display()
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overlay_busy_for_a_moment_is_unmounted_once_free() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test mounts an overlay: run it as root"
        );
        let base = tempfile::tempdir().unwrap();
        let [lower, upper, work, merged] =
            ["lower", "upper", "work", "merged"].map(|name| base.path().join(name));
        for dir in [&lower, &upper, &work, &merged] {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(lower.join("file"), "x").unwrap();
        copy::with_private_mounts(|| {
            copy::mount_overlay(std::slice::from_ref(&lower), &upper, &work, &merged)?;
            // As a fork between fork and exec would: a file in the overlay open for a moment.
            let open = std::fs::File::open(merged.join("file"))?;
            let holder = std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(30));
                drop(open);
            });
            let unmounted = unmount_overlay(&merged);
            holder.join().unwrap();
            unmounted
        })
        .expect("unmounted once the file was closed");
    }

    #[test]
    fn url_file_names_follow_docker() {
        assert_eq!(
            url_file_name("http://127.0.0.1:8080/a/b.tar.gz"),
            "b.tar.gz"
        );
        assert_eq!(url_file_name("https://example.com/x?y=1"), "x");
        assert_eq!(url_file_name("https://example.com/"), "download");
        assert_eq!(url_file_name("https://example.com"), "download");
    }
}
