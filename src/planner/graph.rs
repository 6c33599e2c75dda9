//! The `BuildGraph`: what the executor runs. Plain data, no Dockerfile syntax: every string
//! is already expanded, every path already resolved against WORKDIR.
//!
//! Each node is one op over a root filesystem: `Source` (a base image or scratch), `Exec`
//! (a container), `Copy` (files into the rootfs) or `Meta` (a config change, no layer except
//! WORKDIR's directory). A node's `parent` is the rootfs it starts from; `inputs` are every
//! node that must be done first (the parent, stages it copies or mounts from, images).
//!
//! Cache keys: the planner knows everything but the content of COPY/ADD sources and the keys
//! of the nodes an op reads from, so [`Op::cache_key`] takes those as [`ResolvedInputs`] and
//! feeds every other field of the op to `CacheKeyBuilder`. Things that must not change a key
//! (history text, source locations, proxy variables) are left out.
//!
//! Knows nothing of the disk, containers or the store.

use super::image::{Healthcheck, ImageConfig};
use super::options::{Network, Platform, Security};
use crate::cache::{CacheKey, CacheKeyBuilder, Parent};
use crate::digest::Digest;
use petgraph::graph::{DiGraph, NodeIndex};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// A node of the graph (its petgraph index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

impl NodeId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

/// A place in the Dockerfile: `file:line:col`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// One step of the build.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub id: NodeId,
    /// Index of the Dockerfile stage this step belongs to (for an image Source shared by
    /// several stages, the first one that used it).
    pub stage: usize,
    pub op: Op,
    /// The node whose root filesystem (and config) this op starts from; `None` for `Source`.
    pub parent: Option<NodeId>,
    /// Every node that must be done before this one: the parent first, then the nodes the op
    /// references (COPY --from, RUN --mount from=), without duplicates.
    pub inputs: Vec<NodeId>,
    /// The instruction as written (`RUN make`), for progress output only.
    pub description: String,
    /// Where the instruction is; ONBUILD triggers point at the FROM that ran them.
    pub location: Option<Location>,
    /// The image history entry this step adds; `None` for Source, ONBUILD and FROM.
    pub history: Option<HistoryEntry>,
}

/// An image history entry, exactly as BuildKit writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// E.g. `RUN /bin/sh -c make # buildkit`, `ENV A=b`, `COPY src /app/ # buildkit`.
    pub created_by: String,
    /// True when the step adds no layer. For steps with `empty_layer == false` the executor
    /// may still find an empty diff (WORKDIR of an existing directory) and mark it empty, as
    /// BuildKit's exporter does.
    pub empty_layer: bool,
}

/// What a node does.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Source(SourceOp),
    Exec(ExecOp),
    Copy(CopyOp),
    Meta(MetaOp),
}

/// The start of a root filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceOp {
    /// `FROM scratch`: empty.
    Scratch,
    /// A registry image, pinned by digest.
    Image {
        /// Normalized reference (`docker.io/library/alpine:3.19`).
        reference: String,
        digest: Digest,
        platform: Platform,
    },
}

/// A container run: RUN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOp {
    /// The argv after SHELL/shell-form wrapping (`["/bin/sh", "-c", "make all"]`).
    pub argv: Vec<String>,
    /// The process environment: the image config env, then the build args this step sees that
    /// ENV does not override, then `PATH` when neither set it.
    pub env: Vec<String>,
    /// The build args this step sees (every ARG declared in its stage so far), with the value
    /// BuildKit records (`None`: declared without a value). Part of the cache key.
    pub build_args: Vec<(String, Option<String>)>,
    /// Undeclared predefined proxy args (`HTTP_PROXY`, ...) given with `--build-arg`: set in
    /// the process environment but kept out of the cache key and history, as Docker does.
    pub proxy_env: Vec<(String, String)>,
    /// The user to run as (empty: root), resolved by the executor against /etc/passwd.
    pub user: String,
    /// Absolute working directory.
    pub workdir: String,
    pub network: Network,
    pub security: Security,
    pub mounts: Vec<ExecMount>,
    /// Files the planner writes for the step (a `#!` heredoc runs as `/dev/pipes/<name>`).
    pub files: Vec<ExecFile>,
}

/// A file made for one Exec step and mounted read-only at `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecFile {
    pub path: String,
    pub contents: String,
    pub mode: u32,
}

/// `RUN --mount=` after expansion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecMount {
    pub kind: MountKind,
    /// Absolute target path in the container.
    pub target: String,
    /// `from=`: the node whose rootfs is the mount's source (stage or image); `None` for the
    /// build context (bind) or an empty cache.
    pub from: Option<NodeId>,
    /// `source=`: path inside `from` (or the context); `None`: its root.
    pub source: Option<String>,
    pub readonly: bool,
    /// Cache or secret/ssh id (cache default: the target path).
    pub id: Option<String>,
    pub sharing: Option<CacheSharingMode>,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub required: bool,
    /// tmpfs size in bytes.
    pub size: Option<String>,
    /// Secret mount `env=`.
    pub env: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MountKind {
    Bind,
    Cache,
    Tmpfs,
    Secret,
    Ssh,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheSharingMode {
    Shared,
    Private,
    Locked,
}

/// COPY or ADD after expansion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOp {
    /// ADD (true) or COPY (false); kept for progress text and history only.
    pub add: bool,
    pub sources: Vec<CopySource>,
    /// Absolute destination. It ends with `/` when Docker treats it as a directory (written
    /// with a trailing `/`, `.`, or several sources); otherwise a single file source is copied
    /// to exactly this path and a directory source's contents go into it.
    pub dest: String,
    /// `--chown` after expansion, `user[:group]` names or ids (resolved by the executor
    /// against the destination's /etc/passwd and /etc/group).
    pub chown: Option<String>,
    /// `--chmod` after expansion (octal, or symbolic for newer syntaxes).
    pub chmod: Option<String>,
    pub link: bool,
    pub parents: bool,
    /// `--exclude` patterns after expansion.
    pub exclude: Vec<String>,
    /// `ADD --checksum=` (for URL sources).
    pub checksum: Option<String>,
    /// `ADD --keep-git-dir`.
    pub keep_git_dir: bool,
}

/// One COPY/ADD source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopySource {
    /// A path (or glob) in the build context.
    Context {
        path: String,
        /// ADD: extract it when it is a local tar archive (compressed or not).
        extract_archive: bool,
    },
    /// A path (or glob) in another node's root filesystem (`COPY --from=stage|image`).
    Node { node: NodeId, path: String },
    /// `ADD https://...` (downloaded, extracted only with `--unpack`).
    Url { url: String, extract_archive: bool },
    /// `COPY <<EOF /dest`: a file named `name` holding `contents`.
    Heredoc { name: String, contents: String },
}

/// A config change (no layer, except that WORKDIR creates its directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaOp {
    pub change: ConfigChange,
}

/// One instruction's change to the image config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigChange {
    /// ENV pairs, applied in order with Docker's replace-in-place rule.
    Env(Vec<(String, String)>),
    Label(Vec<(String, String)>),
    /// Normalized port specs (`80/tcp`).
    Expose(Vec<String>),
    Volume(Vec<String>),
    User(String),
    /// WORKDIR: sets `WorkingDir` to `path` (absolute, cleaned). When `create` is set the
    /// executor makes the directory (mode 0755, owned by `user`, parents too) in the rootfs,
    /// as BuildKit does; `create` is false only for `/`.
    Workdir {
        path: String,
        create: bool,
        user: String,
    },
    /// ENTRYPOINT argv; `reset_cmd`: clear the inherited CMD (no CMD earlier in this stage).
    Entrypoint {
        argv: Vec<String>,
        reset_cmd: bool,
    },
    /// CMD argv (also sets `ArgsEscaped`).
    Cmd(Vec<String>),
    Shell(Vec<String>),
    StopSignal(String),
    Healthcheck(Healthcheck),
    /// A trigger stored for images built FROM this one, as written.
    Onbuild(String),
    /// MAINTAINER: the image `Author`.
    Author(String),
    /// ARG: no config change, only a history entry (the value is in later steps' env).
    Arg(Vec<(String, Option<String>)>),
}

/// What the executor learned that a cache key needs beyond the op itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvedInputs {
    /// The cache key of every node the op references other than its parent (COPY --from,
    /// RUN --mount from=).
    pub node_keys: BTreeMap<NodeId, CacheKey>,
    /// For an Exec op, one entry per mount (same order as `ExecOp::mounts`): the content digest
    /// of a build-context bind mount's source (required for those, ignored for the others).
    /// For a Copy op, one entry per source (same order as `CopyOp::sources`): the digest the
    /// executor computed over the selected files (relative path, type, mode after --chmod,
    /// uid/gid after --chown, size, content sha256, symlink target, sorted). Required for
    /// Context and Url sources; optional for Node sources (their node key is used too);
    /// ignored for Heredoc sources (their contents are in the op).
    pub source_digests: Vec<Option<Digest>>,
}

/// Something [`ResolvedInputs`] lacked for a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheKeyError {
    #[error("no cache key given for input node {node}")]
    MissingNodeKey { node: NodeId },
    #[error("no content digest given for source {index} ({source_text})")]
    MissingSourceDigest { index: usize, source_text: String },
}

fn node_key_in(
    keys: &BTreeMap<NodeId, CacheKey>,
    node: NodeId,
) -> Result<&CacheKey, CacheKeyError> {
    keys.get(&node)
        .ok_or(CacheKeyError::MissingNodeKey { node })
}

fn node_key(inputs: &ResolvedInputs, node: NodeId) -> Result<&CacheKey, CacheKeyError> {
    inputs
        .node_keys
        .get(&node)
        .ok_or(CacheKeyError::MissingNodeKey { node })
}

impl Op {
    /// The op's kind as used in cache keys and dumps.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Source(_) => "source",
            Op::Exec(_) => "exec",
            Op::Copy(_) => "copy",
            Op::Meta(_) => "meta",
        }
    }

    /// The node ids this op reads from besides its parent.
    pub fn referenced_nodes(&self) -> Vec<NodeId> {
        let mut nodes = Vec::new();
        match self {
            Op::Exec(exec) => nodes.extend(exec.mounts.iter().filter_map(|mount| mount.from)),
            Op::Copy(copy) => nodes.extend(copy.sources.iter().filter_map(|source| match source {
                CopySource::Node { node, .. } => Some(*node),
                _ => None,
            })),
            Op::Source(_) | Op::Meta(_) => {}
        }
        nodes
    }

    /// The key of this op run on `parent`. `parent` is `Parent::Step(parent node's key)`;
    /// a `Source` node takes `Parent::Scratch` (its image digest is part of the op).
    pub fn cache_key(
        &self,
        parent: Parent<'_>,
        inputs: &ResolvedInputs,
    ) -> Result<CacheKey, CacheKeyError> {
        let builder = CacheKeyBuilder::new(parent, self.kind());
        let builder = match self {
            Op::Source(SourceOp::Scratch) => builder.str("source", "scratch"),
            Op::Source(SourceOp::Image {
                reference,
                digest,
                platform,
            }) => builder
                .str("source", "image")
                .str("reference", reference)
                .digest("digest", digest)
                .str("platform", &platform.to_string()),
            Op::Exec(exec) => exec_key(builder, exec, inputs)?,
            Op::Copy(copy) => copy_key(builder, copy, inputs)?,
            Op::Meta(meta) => meta_key(builder, &meta.change),
        };
        Ok(builder.finish())
    }
}

fn exec_key(
    mut builder: CacheKeyBuilder,
    exec: &ExecOp,
    inputs: &ResolvedInputs,
) -> Result<CacheKeyBuilder, CacheKeyError> {
    builder = builder
        .list("argv", &exec.argv)
        .list("env", &exec.env)
        .list(
            "build_args",
            exec.build_args
                .iter()
                .map(|(key, value)| encode_optional_pair(key, value.as_deref())),
        )
        .str("user", &exec.user)
        .str("workdir", &exec.workdir)
        .str("network", exec.network.as_str())
        .str("security", exec.security.as_str());
    // proxy_env is deliberately absent: Docker keeps proxy settings out of the cache.
    builder = builder.list(
        "mounts",
        exec.mounts.iter().map(|m| format!("{:?}", m.kind)),
    );
    for (index, mount) in exec.mounts.iter().enumerate() {
        let prefix = format!("mount{index}.");
        let field = |name: &str| format!("{prefix}{name}");
        builder = builder
            .str(&field("target"), &mount.target)
            .opt(&field("source"), mount.source.as_deref())
            .flag(&field("readonly"), mount.readonly)
            .opt(&field("id"), mount.id.as_deref())
            .opt(
                &field("sharing"),
                mount.sharing.map(|s| format!("{s:?}")).as_deref(),
            )
            .opt(
                &field("mode"),
                mount.mode.map(|m| format!("{m:o}")).as_deref(),
            )
            .opt(&field("uid"), mount.uid.map(|u| u.to_string()).as_deref())
            .opt(&field("gid"), mount.gid.map(|g| g.to_string()).as_deref())
            .flag(&field("required"), mount.required)
            .opt(&field("size"), mount.size.as_deref())
            .opt(&field("env"), mount.env.as_deref());
        builder = match mount.from {
            Some(node) => builder.str(&field("from"), &node_key(inputs, node)?.to_string()),
            None => builder.opt(&field("from"), None),
        };
        // A bind of the build context reads files: their content is part of the key, as for
        // COPY. Cache, tmpfs, secret and ssh mounts never are (their content is not an input
        // of the step's result by contract, and a secret must not leak through a key).
        if mount.kind == MountKind::Bind && mount.from.is_none() {
            let digest = inputs
                .source_digests
                .get(index)
                .cloned()
                .flatten()
                .ok_or_else(|| CacheKeyError::MissingSourceDigest {
                    index,
                    source_text: format!("bind mount of {:?}", mount.source),
                })?;
            builder = builder.digest(&field("content"), &digest);
        }
    }
    builder = builder.list("files", exec.files.iter().map(|file| &file.path));
    for file in &exec.files {
        builder = builder
            .str("file.contents", &file.contents)
            .str("file.mode", &format!("{:o}", file.mode));
    }
    Ok(builder)
}

fn encode_optional_pair(key: &str, value: Option<&str>) -> String {
    match value {
        Some(value) => format!("{key}={value}"),
        None => key.to_string(),
    }
}

fn copy_key(
    mut builder: CacheKeyBuilder,
    copy: &CopyOp,
    inputs: &ResolvedInputs,
) -> Result<CacheKeyBuilder, CacheKeyError> {
    builder = builder
        .str("dest", &copy.dest)
        .opt("chown", copy.chown.as_deref())
        .opt("chmod", copy.chmod.as_deref())
        .flag("link", copy.link)
        .flag("parents", copy.parents)
        .list("exclude", &copy.exclude)
        .opt("checksum", copy.checksum.as_deref())
        .flag("keep_git_dir", copy.keep_git_dir);
    builder = builder.list("sources", copy.sources.iter().map(|_| "source"));
    for (index, source) in copy.sources.iter().enumerate() {
        let digest = inputs.source_digests.get(index).cloned().flatten();
        let missing = || CacheKeyError::MissingSourceDigest {
            index,
            source_text: format!("{source:?}"),
        };
        builder = match source {
            CopySource::Context {
                path,
                extract_archive,
            } => builder
                .str("context", path)
                .flag("extract", *extract_archive)
                .digest("content", &digest.ok_or_else(missing)?),
            CopySource::Url {
                url,
                extract_archive,
            } => builder
                .str("url", url)
                .flag("extract", *extract_archive)
                .digest("content", &digest.ok_or_else(missing)?),
            CopySource::Node { node, path } => builder
                .str("node", &node_key(inputs, *node)?.to_string())
                .str("path", path)
                .opt("content", digest.map(|d| d.to_string()).as_deref()),
            CopySource::Heredoc { name, contents } => {
                builder.str("heredoc", name).str("contents", contents)
            }
        };
    }
    Ok(builder)
}

fn meta_key(builder: CacheKeyBuilder, change: &ConfigChange) -> CacheKeyBuilder {
    let pairs = |pairs: &[(String, String)]| -> Vec<String> {
        pairs.iter().map(|(k, v)| format!("{k}\0{v}")).collect()
    };
    match change {
        ConfigChange::Env(env) => builder.str("change", "env").list("pairs", pairs(env)),
        ConfigChange::Label(labels) => builder.str("change", "label").list("pairs", pairs(labels)),
        ConfigChange::Expose(ports) => builder.str("change", "expose").list("ports", ports),
        ConfigChange::Volume(volumes) => builder.str("change", "volume").list("paths", volumes),
        ConfigChange::User(user) => builder.str("change", "user").str("user", user),
        ConfigChange::Workdir { path, create, user } => builder
            .str("change", "workdir")
            .str("path", path)
            .flag("create", *create)
            .str("user", user),
        ConfigChange::Entrypoint { argv, reset_cmd } => builder
            .str("change", "entrypoint")
            .list("argv", argv)
            .flag("reset_cmd", *reset_cmd),
        ConfigChange::Cmd(argv) => builder.str("change", "cmd").list("argv", argv),
        ConfigChange::Shell(argv) => builder.str("change", "shell").list("argv", argv),
        ConfigChange::StopSignal(signal) => {
            builder.str("change", "stopsignal").str("signal", signal)
        }
        ConfigChange::Healthcheck(check) => builder
            .str("change", "healthcheck")
            .list("test", &check.test)
            .str("interval", &check.interval.as_nanos().to_string())
            .str("timeout", &check.timeout.as_nanos().to_string())
            .str("start_period", &check.start_period.as_nanos().to_string())
            .str(
                "start_interval",
                &check.start_interval.as_nanos().to_string(),
            )
            .str("retries", &check.retries.to_string()),
        ConfigChange::Onbuild(trigger) => builder.str("change", "onbuild").str("trigger", trigger),
        ConfigChange::Author(author) => builder.str("change", "author").str("author", author),
        ConfigChange::Arg(args) => builder.str("change", "arg").list(
            "args",
            args.iter().map(|(k, v)| match v {
                Some(v) => format!("{k}\0some\0{v}"),
                None => format!("{k}\0none"),
            }),
        ),
    }
}

impl ConfigChange {
    /// Applies the change to `config` as BuildKit's dispatcher does.
    pub fn apply(&self, config: &mut ImageConfig) {
        match self {
            ConfigChange::Env(pairs) => {
                for (key, value) in pairs {
                    config.set_env(key, value);
                }
            }
            ConfigChange::Label(pairs) => {
                for (key, value) in pairs {
                    config.labels.insert(key.clone(), value.clone());
                }
            }
            ConfigChange::Expose(ports) => config.exposed_ports.extend(ports.iter().cloned()),
            ConfigChange::Volume(paths) => config.volumes.extend(paths.iter().cloned()),
            ConfigChange::User(user) => config.user = user.clone(),
            ConfigChange::Workdir { path, .. } => config.working_dir = path.clone(),
            ConfigChange::Entrypoint { argv, reset_cmd } => {
                config.entrypoint = Some(argv.clone());
                if *reset_cmd {
                    config.cmd = None;
                }
            }
            ConfigChange::Cmd(argv) => {
                config.cmd = Some(argv.clone());
                config.args_escaped = true;
            }
            ConfigChange::Shell(argv) => config.shell = argv.clone(),
            ConfigChange::StopSignal(signal) => config.stop_signal = Some(signal.clone()),
            ConfigChange::Healthcheck(check) => config.healthcheck = Some(check.clone()),
            ConfigChange::Onbuild(trigger) => config.on_build.push(trigger.clone()),
            ConfigChange::Author(author) => config.author = Some(author.clone()),
            ConfigChange::Arg(_) => {}
        }
    }
}

/// Where a stage starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageBase {
    Scratch,
    /// A registry image (normalized reference) pinned by digest.
    Image {
        reference: String,
        digest: Digest,
    },
    /// An earlier stage, by index.
    Stage(usize),
}

/// One stage the target needs.
#[derive(Debug, Clone, PartialEq)]
pub struct StageInfo {
    /// Index in the Dockerfile.
    pub index: usize,
    pub name: Option<String>,
    pub base: StageBase,
    pub platform: Platform,
    /// The stage's last node: its result.
    pub last: NodeId,
    /// The image config after the stage's last instruction (base config included).
    pub config: ImageConfig,
}

/// The plan: only what the target needs.
#[derive(Debug, Clone)]
pub struct BuildGraph {
    /// The DAG; an edge `a -> b` means `b` needs `a`. Node weights are ids into `nodes`
    /// (`NodeId(i)` is both `nodes[i]` and petgraph index `i`).
    pub graph: DiGraph<NodeId, ()>,
    pub nodes: Vec<Node>,
    /// The stages in the graph, ordered by Dockerfile index.
    pub stages: Vec<StageInfo>,
    /// The stage that is the build's result (Dockerfile index).
    pub target_stage: usize,
    /// The target stage's last node: the image to export.
    pub target: NodeId,
    /// Non-fatal findings (unused build args).
    pub warnings: Vec<String>,
    /// `--no-cache`, passed through.
    pub no_cache: bool,
}

impl BuildGraph {
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.index()]
    }

    /// The stage info for Dockerfile stage `index`, when the target needs it.
    pub fn stage(&self, index: usize) -> Option<&StageInfo> {
        self.stages.iter().find(|stage| stage.index == index)
    }

    /// The target stage's info.
    pub fn target_stage(&self) -> &StageInfo {
        self.stage(self.target_stage)
            .expect("the target stage is always planned")
    }

    /// All nodes, every node after its inputs.
    pub fn topological_order(&self) -> Vec<NodeId> {
        // Nodes are created after their inputs, so a cycle is impossible; toposort still
        // checks it, and the fallback keeps this total.
        match petgraph::algo::toposort(&self.graph, None) {
            Ok(order) => order.into_iter().map(|index| self.graph[index]).collect(),
            Err(_) => self.nodes.iter().map(|node| node.id).collect(),
        }
    }

    /// The nodes not in `done` whose inputs are all in `done`: what can run now, in parallel.
    pub fn ready(&self, done: &BTreeSet<NodeId>) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|node| !done.contains(&node.id))
            .filter(|node| node.inputs.iter().all(|input| done.contains(input)))
            .map(|node| node.id)
            .collect()
    }

    /// The nodes that read `id`'s result.
    pub fn dependents(&self, id: NodeId) -> Vec<NodeId> {
        let mut dependents: Vec<NodeId> = self
            .graph
            .neighbors(NodeIndex::new(id.index()))
            .map(|index| self.graph[index])
            .collect();
        dependents.sort();
        dependents
    }

    /// The chain of nodes from the stage's root (a Source) to `id`, following parents.
    pub fn chain(&self, id: NodeId) -> Vec<NodeId> {
        let mut chain = vec![id];
        let mut current = id;
        while let Some(parent) = self.node(current).parent {
            chain.push(parent);
            current = parent;
        }
        chain.reverse();
        chain
    }

    /// The cache key of node `id`, given the keys of the nodes before it (`keys` must hold its
    /// parent and every node it references) and, for a Copy node, the content digests of its
    /// sources (see [`ResolvedInputs::source_digests`]). A Source image node starts from
    /// `Parent::Image(digest)`, scratch from `Parent::Scratch`, every other node from its
    /// parent's key.
    pub fn cache_key(
        &self,
        id: NodeId,
        keys: &BTreeMap<NodeId, CacheKey>,
        source_digests: &[Option<Digest>],
    ) -> Result<CacheKey, CacheKeyError> {
        let node = self.node(id);
        let mut inputs = ResolvedInputs {
            source_digests: source_digests.to_vec(),
            ..ResolvedInputs::default()
        };
        for referenced in node.op.referenced_nodes() {
            inputs
                .node_keys
                .insert(referenced, node_key_in(keys, referenced)?.clone());
        }
        match (&node.op, node.parent) {
            (Op::Source(SourceOp::Image { digest, .. }), _) => {
                node.op.cache_key(Parent::Image(digest), &inputs)
            }
            (_, None) => node.op.cache_key(Parent::Scratch, &inputs),
            (_, Some(parent)) => node
                .op
                .cache_key(Parent::Step(node_key_in(keys, parent)?), &inputs),
        }
    }

    /// A stable text dump, one line per fact, for snapshot tests and `kiln plan`-style output.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for stage in &self.stages {
            out.push_str(&format!(
                "stage {} {}: base={} platform={} last={}\n",
                stage.index,
                stage.name.as_deref().unwrap_or("-"),
                match &stage.base {
                    StageBase::Scratch => "scratch".to_string(),
                    StageBase::Image { reference, .. } => format!("image {reference}"),
                    StageBase::Stage(index) => format!("stage {index}"),
                },
                stage.platform,
                stage.last
            ));
            out.push_str(&dump_config(&stage.config));
        }
        for node in &self.nodes {
            let inputs: Vec<String> = node.inputs.iter().map(|id| id.to_string()).collect();
            out.push_str(&format!(
                "{} stage={} inputs=[{}] {}\n",
                node.id,
                node.stage,
                inputs.join(","),
                node.description
            ));
            out.push_str(&format!("  {}\n", dump_op(&node.op)));
            if let Some(history) = &node.history {
                out.push_str(&format!(
                    "  history: {:?}{}\n",
                    history.created_by,
                    if history.empty_layer {
                        " (empty layer)"
                    } else {
                        ""
                    }
                ));
            }
        }
        out.push_str(&format!(
            "target: stage {} {}\n",
            self.target_stage, self.target
        ));
        for warning in &self.warnings {
            out.push_str(&format!("warning: {warning}\n"));
        }
        out
    }
}

impl fmt::Display for BuildGraph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.dump())
    }
}

fn dump_config(config: &ImageConfig) -> String {
    let mut out = String::new();
    let mut line = |name: &str, value: String| out.push_str(&format!("  config.{name}: {value}\n"));
    if !config.env.is_empty() {
        line("env", format!("{:?}", config.env));
    }
    if !config.working_dir.is_empty() {
        line("workdir", format!("{:?}", config.working_dir));
    }
    if !config.user.is_empty() {
        line("user", format!("{:?}", config.user));
    }
    if !config.shell.is_empty() {
        line("shell", format!("{:?}", config.shell));
    }
    if let Some(entrypoint) = &config.entrypoint {
        line("entrypoint", format!("{entrypoint:?}"));
    }
    if let Some(cmd) = &config.cmd {
        line("cmd", format!("{cmd:?}"));
    }
    if !config.labels.is_empty() {
        line("labels", format!("{:?}", config.labels));
    }
    if !config.exposed_ports.is_empty() {
        line("exposed_ports", format!("{:?}", config.exposed_ports));
    }
    if !config.volumes.is_empty() {
        line("volumes", format!("{:?}", config.volumes));
    }
    if let Some(signal) = &config.stop_signal {
        line("stop_signal", format!("{signal:?}"));
    }
    if let Some(check) = &config.healthcheck {
        line("healthcheck", format!("{check:?}"));
    }
    if !config.on_build.is_empty() {
        line("on_build", format!("{:?}", config.on_build));
    }
    if let Some(author) = &config.author {
        line("author", format!("{author:?}"));
    }
    out
}

fn dump_op(op: &Op) -> String {
    match op {
        Op::Source(SourceOp::Scratch) => "source scratch".to_string(),
        Op::Source(SourceOp::Image {
            reference,
            digest,
            platform,
        }) => {
            format!("source image {reference}@{digest} {platform}")
        }
        Op::Exec(exec) => {
            let mut text = format!(
                "exec argv={:?} env={:?} user={:?} workdir={:?} network={} security={}",
                exec.argv,
                exec.env,
                exec.user,
                exec.workdir,
                exec.network.as_str(),
                exec.security.as_str()
            );
            if !exec.build_args.is_empty() {
                text.push_str(&format!(" build_args={:?}", exec.build_args));
            }
            if !exec.proxy_env.is_empty() {
                text.push_str(&format!(" proxy_env={:?}", exec.proxy_env));
            }
            for mount in &exec.mounts {
                text.push_str(&format!(" mount={mount:?}"));
            }
            for file in &exec.files {
                text.push_str(&format!(" file={file:?}"));
            }
            text
        }
        Op::Copy(copy) => {
            let mut text = format!(
                "{} sources={:?} dest={:?}",
                if copy.add { "add" } else { "copy" },
                copy.sources,
                copy.dest
            );
            let mut field = |name: &str, value: String| text.push_str(&format!(" {name}={value}"));
            if let Some(chown) = &copy.chown {
                field("chown", format!("{chown:?}"));
            }
            if let Some(chmod) = &copy.chmod {
                field("chmod", format!("{chmod:?}"));
            }
            if copy.link {
                field("link", "true".into());
            }
            if copy.parents {
                field("parents", "true".into());
            }
            if !copy.exclude.is_empty() {
                field("exclude", format!("{:?}", copy.exclude));
            }
            if let Some(checksum) = &copy.checksum {
                field("checksum", format!("{checksum:?}"));
            }
            if copy.keep_git_dir {
                field("keep_git_dir", "true".into());
            }
            text
        }
        Op::Meta(meta) => format!("meta {:?}", meta.change),
    }
}
