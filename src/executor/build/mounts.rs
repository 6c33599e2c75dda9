//! `RUN --mount=`: turns the planner's [`ExecMount`]s into container mounts with BuildKit's
//! semantics, plus the session inputs (`--secret`, `--ssh`) they read.
//!
//! - bind: from a stage or image, an overlay of that node's snapshots with a throw-away upper
//!   dir, its `source` bound at the target (read-only unless `rw`; writes are discarded). From
//!   the build context, the selected path itself (read-only) or an overlay over it (`rw`);
//!   when `.dockerignore` hides something below it, a copy of the visible files instead, so
//!   the step sees exactly what COPY would.
//! - cache: a directory `<store>/cache/mounts/<sha256(id)>` that outlives builds; never in
//!   a layer or a cache key. `sharing=shared` takes a shared flock, `locked` an exclusive one
//!   (concurrent users wait), `private` the first instance nobody holds (`<hash>-<n>`).
//!   Created on first use with `mode`/`uid`/`gid`, seeded from `from`/`source` when given.
//! - tmpfs: a fresh tmpfs (`size` with docker's units).
//! - secret: the bytes of `--secret id=..` in a tmpfs file bound read-only (never on disk,
//!   never in a key, a log or the history); `env=` also (or only) sets a variable.
//! - ssh: a socket of the mount's `mode`/`uid`/`gid` (0600 root by default) at the target that
//!   kiln forwards to the agent of `--ssh id=SOCKET`, `SSH_AUTH_SOCK` set; `--ssh
//!   id=KEY[,KEY]` loads key files into an `ssh-agent` kiln runs for the build.
//!
//! A missing secret or ssh id is an error when `required`, else the mount is skipped (as
//! BuildKit does). Mount points created in the root file system are stubs the container
//! records and removes before commit.
//!
//! Knows the graph's mount ops, the store's layout and the container's mount kinds; never
//! Dockerfile syntax.

use super::{copy, lowerdirs, BuildError, NodeState, Shared};
use crate::context::{ContextIndex, EntryKind};
use crate::digest::Digest;
use crate::executor::container::{BindMount, ExtraMount};
use crate::planner::{CacheSharingMode, ExecMount, ExecOp, MountKind, NodeId};
use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Where a `--secret` comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// `src=FILE` (read when a step mounts it).
    File(PathBuf),
    /// `env=VAR` of the kiln process.
    Env(String),
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::File(path) => write!(f, "File({})", path.display()),
            SecretSource::Env(name) => write!(f, "Env({name})"),
        }
    }
}

/// What the client side of a build offers RUN mounts (BuildKit's session attachables).
#[derive(Debug, Clone, Default)]
pub struct SessionInputs {
    /// `--secret id=...`: id -> source.
    pub secrets: BTreeMap<String, SecretSource>,
    /// `--ssh ID=...`: id -> agent socket (one kiln started for key files included).
    pub ssh: BTreeMap<String, PathBuf>,
    /// The agents kiln started for key files; they live as long as these inputs.
    pub agents: Vec<std::sync::Arc<SshAgent>>,
}

/// Parses docker's `--secret` value: `id=X,src=FILE` (or `source=`), `id=X,env=VAR`,
/// `type=file|env`; `id=X` alone reads the variable `X` (buildx's rule). Returns the id and
/// the source.
pub fn parse_secret_flag(text: &str) -> Result<(String, SecretSource), String> {
    let mut id = None;
    let mut kind = None;
    let mut src = None;
    let mut env = None;
    for field in text.split(',') {
        let (key, value) = field
            .split_once('=')
            .ok_or_else(|| format!("{field:?} is not KEY=VALUE"))?;
        match key.trim().to_lowercase().as_str() {
            "id" => id = Some(value.to_string()),
            "type" => match value {
                "file" | "env" => kind = Some(value.to_string()),
                _ => return Err(format!("unsupported secret type {value:?}")),
            },
            "src" | "source" => src = Some(value.to_string()),
            "env" => env = Some(value.to_string()),
            other => return Err(format!("unexpected key {other:?}")),
        }
    }
    let source = match (kind.as_deref(), src, env) {
        (Some("env"), Some(name), None) | (_, None, Some(name)) => SecretSource::Env(name),
        (Some("file") | None, Some(path), None) => SecretSource::File(PathBuf::from(path)),
        (_, Some(_), Some(_)) => return Err("give either src= or env=, not both".to_string()),
        (_, None, None) => match &id {
            // `--secret id=TOKEN`: the variable TOKEN (buildx's rule).
            Some(id) => SecretSource::Env(id.clone()),
            None => return Err("an id= is required".to_string()),
        },
        (Some(_), Some(_), None) => return Err("unsupported secret type".to_string()),
    };
    let id = match id {
        Some(id) if !id.is_empty() => id,
        _ => match &source {
            SecretSource::File(path) => path
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .ok_or("an id= is required")?,
            SecretSource::Env(name) => name.clone(),
        },
    };
    Ok((id, source))
}

/// What one `--ssh ID=...` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SshSource {
    /// A running agent's socket.
    Socket(PathBuf),
    /// Private key files, loaded into an ssh-agent kiln starts for the build
    /// ([`SshAgent::start`]), as BuildKit loads them into its own agent.
    Keys(Vec<PathBuf>),
}

/// Parses docker's `--ssh` value: `default`, `ID=SOCKET`, `ID=KEY[,KEY...]`. `ID` alone
/// takes `$SSH_AUTH_SOCK` (given as `agent_env`).
pub fn parse_ssh_flag(text: &str, agent_env: Option<&str>) -> Result<(String, SshSource), String> {
    let (id, paths) = match text.split_once('=') {
        Some((id, paths)) => (id.to_string(), paths.to_string()),
        None => (
            text.to_string(),
            agent_env
                .filter(|socket| !socket.is_empty())
                .ok_or_else(|| format!("{text}: no path given and SSH_AUTH_SOCK is not set"))?
                .to_string(),
        ),
    };
    if id.is_empty() {
        return Err("an id is required (e.g. default)".to_string());
    }
    let paths: Vec<PathBuf> = paths
        .split(',')
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .collect();
    use std::os::unix::fs::FileTypeExt;
    let mut keys = Vec::new();
    for path in &paths {
        match std::fs::metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                if paths.len() > 1 {
                    return Err(format!(
                        "{}: an agent socket must be the only path of an ssh id",
                        path.display()
                    ));
                }
                return Ok((id, SshSource::Socket(path.clone())));
            }
            Ok(meta) if meta.is_file() => keys.push(path.clone()),
            Ok(_) => {
                return Err(format!(
                    "{}: neither an ssh-agent socket nor a key file",
                    path.display()
                ))
            }
            Err(err) => return Err(format!("{}: {err}", path.display())),
        }
    }
    if keys.is_empty() {
        return Err(format!("{text}: no socket or key file given"));
    }
    Ok((id, SshSource::Keys(keys)))
}

/// An `ssh-agent` kiln runs for one build, holding `--ssh` key files; killed, and its socket
/// directory removed, when dropped. Uses the system's `ssh-agent`/`ssh-add` (openssh-client)
/// rather than an agent written here: key formats and their parsing are theirs.
pub struct SshAgent {
    child: std::process::Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for SshAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshAgent")
            .field("pid", &self.child.id())
            .field("socket", &self.socket)
            .finish()
    }
}

impl SshAgent {
    /// Starts an agent with its socket in a new directory under `parent` and adds `keys`
    /// (unencrypted keys only: nothing can prompt for a passphrase).
    pub fn start(keys: &[PathBuf], parent: &Path) -> Result<SshAgent, String> {
        let dir = tempfile::Builder::new()
            .prefix(&crate::store::owned_name("ssh-agent-"))
            .tempdir_in(parent)
            .map_err(|err| format!("create a directory in {}: {err}", parent.display()))?;
        let socket = dir.path().join("agent.sock");
        let mut command = std::process::Command::new("ssh-agent");
        command
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        // Even if kiln is killed outright, the agent (and the keys it holds) goes with it.
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().map_err(|err| {
            format!("start ssh-agent for key files: {err} (apt-get install openssh-client)")
        })?;
        let mut agent = SshAgent {
            child,
            socket,
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !agent.socket.exists() {
            if let Ok(Some(status)) = agent.child.try_wait() {
                return Err(format!("ssh-agent exited at start: {status}"));
            }
            if std::time::Instant::now() > deadline {
                return Err("ssh-agent did not open its socket within 10 s".to_string());
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        for key in keys {
            let output = std::process::Command::new("ssh-add")
                .arg(key)
                .env("SSH_AUTH_SOCK", &agent.socket)
                .env("SSH_ASKPASS_REQUIRE", "never")
                .stdin(std::process::Stdio::null())
                .output()
                .map_err(|err| format!("run ssh-add: {err} (apt-get install openssh-client)"))?;
            if !output.status.success() {
                return Err(format!(
                    "ssh-add {}: {}",
                    key.display(),
                    String::from_utf8_lossy(&output.stderr).trim()
                ));
            }
        }
        Ok(agent)
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for SshAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The container side of a step's mounts; the locks are held until it is dropped.
pub(super) struct PreparedMounts {
    pub mounts: Vec<ExtraMount>,
    /// Variables the mounts add (`SSH_AUTH_SOCK`, secret `env=`): never in a key or history.
    pub env: Vec<(String, String)>,
    _locks: Vec<File>,
    _proxies: Vec<SocketProxy>,
}

/// A unix socket kiln listens on for one step, forwarding each connection to an ssh agent's
/// socket. It gives the step a socket with the mount's own owner and mode without touching
/// the agent's; it stops (and the step's connections end) when dropped.
struct SocketProxy {
    path: PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SocketProxy {
    fn start(agent: &Path, path: &Path, mode: u32, uid: u32, gid: u32) -> io::Result<SocketProxy> {
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::net::{UnixListener, UnixStream};
        let listener = UnixListener::bind(path)?;
        std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let agent = agent.to_path_buf();
        let stopped = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopped.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let agent = agent.clone();
                std::thread::spawn(move || {
                    let Ok(upstream) = UnixStream::connect(&agent) else {
                        return;
                    };
                    let (Ok(mut client_read), Ok(mut upstream_write)) =
                        (client.try_clone(), upstream.try_clone())
                    else {
                        return;
                    };
                    let forward = std::thread::spawn(move || {
                        let _ = io::copy(&mut client_read, &mut upstream_write);
                        let _ = upstream_write.shutdown(std::net::Shutdown::Write);
                    });
                    let (mut upstream_read, mut client_write) = (upstream, client);
                    let _ = io::copy(&mut upstream_read, &mut client_write);
                    let _ = client_write.shutdown(std::net::Shutdown::Write);
                    let _ = forward.join();
                });
            }
        });
        Ok(SocketProxy {
            path: path.to_path_buf(),
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for SocketProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = std::os::unix::net::UnixStream::connect(&self.path);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The content digest of each build-context bind mount (same order as `exec.mounts`), for
/// the step's cache key.
pub(super) fn context_digests(
    context: Option<&ContextIndex>,
    exec: &ExecOp,
    step: &str,
) -> Result<Vec<Option<Digest>>, BuildError> {
    exec.mounts
        .iter()
        .map(|mount| {
            if mount.kind != MountKind::Bind || mount.from.is_some() {
                return Ok(None);
            }
            let context = context.ok_or_else(|| BuildError::NoContext {
                step: step.to_string(),
                what: "RUN --mount=type=bind".into(),
            })?;
            let selection =
                context
                    .select(&context_source(mount))
                    .map_err(|source| BuildError::Context {
                        step: step.to_string(),
                        source,
                    })?;
            Ok(Some(selection.digest()))
        })
        .collect()
}

fn context_source(mount: &ExecMount) -> String {
    match mount.source.as_deref() {
        None | Some("") => ".".to_string(),
        Some(source) => source.to_string(),
    }
}

fn mount_error(step: &str, message: String) -> BuildError {
    BuildError::Mount {
        step: step.to_string(),
        message,
    }
}

/// Builds the container mounts of `exec` (scratch space under `state_dir`, removed with the
/// container's state).
pub(super) fn prepare(
    shared: &Shared<'_>,
    others: &BTreeMap<NodeId, NodeState>,
    exec: &ExecOp,
    state_dir: &Path,
    step: &str,
) -> Result<PreparedMounts, BuildError> {
    let mut prepared = PreparedMounts {
        mounts: Vec::new(),
        env: Vec::new(),
        _locks: Vec::new(),
        _proxies: Vec::new(),
    };
    let mut held: BTreeMap<String, PathBuf> = BTreeMap::new();
    for (index, mount) in exec.mounts.iter().enumerate() {
        let scratch = state_dir.join("mounts").join(index.to_string());
        let io_error =
            |what: String| move |err: io::Error| mount_error(step, format!("{what}: {err}"));
        match mount.kind {
            MountKind::Bind => {
                let made = match mount.from {
                    Some(node) => node_view(shared, others, node, mount, &scratch, step)?,
                    None => context_view(shared, mount, &scratch, step)?,
                };
                prepared.mounts.push(made);
            }
            MountKind::Cache => {
                // The same cache twice in one step: one directory, one lock (a second flock
                // on it would wait for this very step).
                let id = mount.id.clone().unwrap_or_else(|| mount.target.clone());
                let host = match held.get(&id) {
                    Some(host) => host.clone(),
                    None => {
                        let (host, lock) = cache_dir(shared, others, mount, step)?;
                        prepared._locks.push(lock);
                        held.insert(id, host.clone());
                        host
                    }
                };
                prepared.mounts.push(ExtraMount::Bind(BindMount {
                    source: host,
                    destination: mount.target.clone(),
                    read_only: mount.readonly,
                }));
            }
            MountKind::Tmpfs => {
                let size_bytes = match &mount.size {
                    Some(size) => Some(parse_size(size).ok_or_else(|| {
                        mount_error(
                            step,
                            format!("tmpfs size {size:?}: expected bytes like 64m"),
                        )
                    })?),
                    None => None,
                };
                prepared.mounts.push(ExtraMount::Tmpfs {
                    destination: mount.target.clone(),
                    size_bytes,
                });
            }
            MountKind::Secret => {
                let id = mount.id.clone().unwrap_or_default();
                let Some(source) = shared.inputs.session.secrets.get(&id) else {
                    if mount.required {
                        return Err(mount_error(
                            step,
                            format!("secret {id} not found (give it with --secret id={id},src=FILE or id={id},env=VAR)"),
                        ));
                    }
                    continue;
                };
                let contents = match source {
                    SecretSource::File(path) => std::fs::read(path)
                        .map_err(io_error(format!("secret {id}: read {}", path.display())))?,
                    SecretSource::Env(name) => std::env::var_os(name)
                        .map(|value| {
                            use std::os::unix::ffi::OsStringExt;
                            value.into_vec()
                        })
                        .ok_or_else(|| {
                            mount_error(step, format!("secret {id}: variable {name} is not set"))
                        })?,
                };
                if let Some(name) = &mount.env {
                    prepared.env.push((
                        name.clone(),
                        String::from_utf8_lossy(&contents).into_owned(),
                    ));
                }
                if !mount.target.is_empty() {
                    std::fs::create_dir_all(&scratch)
                        .map_err(io_error(format!("create {}", scratch.display())))?;
                    prepared.mounts.push(ExtraMount::File {
                        destination: mount.target.clone(),
                        contents,
                        mode: mount.mode.unwrap_or(0o400),
                        uid: mount.uid.unwrap_or(0),
                        gid: mount.gid.unwrap_or(0),
                        scratch,
                    });
                }
            }
            MountKind::Ssh => {
                let id = mount.id.clone().unwrap_or_else(|| "default".into());
                let Some(socket) = shared.inputs.session.ssh.get(&id) else {
                    if mount.required {
                        return Err(mount_error(
                            step,
                            format!("no SSH key {id:?} forwarded from the client (give it with --ssh {id}=$SSH_AUTH_SOCK)"),
                        ));
                    }
                    continue;
                };
                // As BuildKit: the step gets its own socket (mode, uid, gid as asked; 0600
                // root by default) that kiln forwards to the agent for the step's duration.
                std::fs::create_dir_all(&scratch)
                    .map_err(io_error(format!("create {}", scratch.display())))?;
                let proxy = SocketProxy::start(
                    socket,
                    &scratch.join("ssh.sock"),
                    mount.mode.unwrap_or(0o600),
                    mount.uid.unwrap_or(0),
                    mount.gid.unwrap_or(0),
                )
                .map_err(io_error(format!("ssh agent socket for {id:?}")))?;
                prepared.mounts.push(ExtraMount::Bind(BindMount {
                    source: proxy.path.clone(),
                    destination: mount.target.clone(),
                    read_only: false,
                }));
                prepared._proxies.push(proxy);
                let has_sock = exec.env.iter().any(|e| e.starts_with("SSH_AUTH_SOCK="))
                    || prepared.env.iter().any(|(k, _)| k == "SSH_AUTH_SOCK");
                if !has_sock {
                    prepared
                        .env
                        .push(("SSH_AUTH_SOCK".into(), mount.target.clone()));
                }
            }
        }
    }
    Ok(prepared)
}

/// A bind from a stage or image: an overlay of its snapshots.
fn node_view(
    shared: &Shared<'_>,
    others: &BTreeMap<NodeId, NodeState>,
    node: NodeId,
    mount: &ExecMount,
    scratch: &Path,
    step: &str,
) -> Result<ExtraMount, BuildError> {
    let state = others
        .get(&node)
        .ok_or_else(|| mount_error(step, format!("mount source node {node} was not built")))?;
    let mut lowers = lowerdirs(shared.store, state, step)?;
    make_dirs(scratch, &["upper", "work", "merged"], step)?;
    if lowers.is_empty() {
        make_dirs(scratch, &["empty"], step)?;
        lowers.push(scratch.join("empty"));
    }
    Ok(ExtraMount::Overlay {
        lowerdirs_bottom_first: lowers,
        scratch: scratch.to_path_buf(),
        subpath: mount.source.clone().unwrap_or_else(|| "/".into()),
        destination: mount.target.clone(),
        read_only: mount.readonly,
    })
}

fn make_dirs(base: &Path, names: &[&str], step: &str) -> Result<(), BuildError> {
    for name in names {
        let dir = base.join(name);
        std::fs::create_dir_all(&dir)
            .map_err(|err| mount_error(step, format!("create {}: {err}", dir.display())))?;
    }
    Ok(())
}

/// A bind of the build context's `source`: exactly what COPY would see of it.
fn context_view(
    shared: &Shared<'_>,
    mount: &ExecMount,
    scratch: &Path,
    step: &str,
) -> Result<ExtraMount, BuildError> {
    let context = shared.inputs.context.ok_or_else(|| BuildError::NoContext {
        step: step.to_string(),
        what: "RUN --mount=type=bind".into(),
    })?;
    let source = context_source(mount);
    let selection = context
        .select(&source)
        .map_err(|source| BuildError::Context {
            step: step.to_string(),
            source,
        })?;
    let root = selection
        .roots
        .first()
        .ok_or_else(|| mount_error(step, format!("bind source {source:?} selects nothing")))?;
    let host = context.root().join(&root.resolved);
    let io_error = |what: String| move |err: io::Error| mount_error(step, format!("{what}: {err}"));
    let visible = if root.is_dir() {
        // Anything on disk the index does not have is hidden by .dockerignore.
        let on_disk = walkdir::WalkDir::new(&host)
            .min_depth(1)
            .into_iter()
            .count();
        on_disk == root.subtree.len()
    } else {
        true
    };
    let host = if visible {
        host
    } else {
        // Materialize the visible files (hidden ones must not be readable by the step).
        let copy_dir = scratch.join("view");
        make_dirs(&copy_dir, &[""], step)?;
        let items = root
            .subtree
            .iter()
            .map(|entry| copy::Item {
                rel: root.relative_path(entry).to_path_buf(),
                kind: match entry.kind {
                    EntryKind::File => copy::ItemKind::File {
                        host: context.root().join(&entry.path),
                        content: None,
                    },
                    EntryKind::Dir => copy::ItemKind::Dir,
                    EntryKind::Symlink => copy::ItemKind::Symlink {
                        target: entry.link_target.clone().unwrap_or_default(),
                    },
                },
                mode: entry.mode,
                uid: entry.uid,
                gid: entry.gid,
                mtime_ns: Some(entry.mtime_ns),
            })
            .collect();
        copy::copy_roots(
            &copy_dir,
            &[copy::Root {
                is_dir: true,
                name: Default::default(),
                matched: PathBuf::new(),
                items,
                extract: false,
                mtime_ns: None,
            }],
            &copy::CopySpec {
                dest: "/".into(),
                owner: None,
                chmod: None,
            },
        )
        .map_err(io_error(format!("copy the visible part of {source:?}")))?;
        copy_dir
    };
    if mount.readonly {
        return Ok(ExtraMount::Bind(BindMount {
            source: host,
            destination: mount.target.clone(),
            read_only: true,
        }));
    }
    // rw: writes go to a throw-away copy, never to the context.
    if host.is_dir() {
        make_dirs(scratch, &["upper", "work", "merged"], step)?;
        Ok(ExtraMount::Overlay {
            lowerdirs_bottom_first: vec![host],
            scratch: scratch.to_path_buf(),
            subpath: "/".into(),
            destination: mount.target.clone(),
            read_only: false,
        })
    } else {
        make_dirs(scratch, &[""], step)?;
        let copied = scratch.join("file");
        std::fs::copy(&host, &copied).map_err(io_error(format!("copy {}", host.display())))?;
        Ok(ExtraMount::Bind(BindMount {
            source: copied,
            destination: mount.target.clone(),
            read_only: false,
        }))
    }
}

/// The host directory of a cache mount, locked as its sharing mode asks.
fn cache_dir(
    shared: &Shared<'_>,
    others: &BTreeMap<NodeId, NodeState>,
    mount: &ExecMount,
    step: &str,
) -> Result<(PathBuf, File), BuildError> {
    let base = shared.store.cache_dir().join("mounts");
    std::fs::create_dir_all(&base)
        .map_err(|err| mount_error(step, format!("create {}: {err}", base.display())))?;
    let id = mount.id.clone().unwrap_or_else(|| mount.target.clone());
    let hash = Digest::of_bytes(id.as_bytes()).hex().to_string();
    let open_lock = |name: &str| -> Result<File, BuildError> {
        let path = base.join(format!("{name}.lock"));
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|err| mount_error(step, format!("open {}: {err}", path.display())))
    };
    let lock_error = |err: io::Error| mount_error(step, format!("lock cache mount {id:?}: {err}"));
    let (name, lock) = match mount.sharing.unwrap_or(CacheSharingMode::Shared) {
        CacheSharingMode::Shared => {
            let lock = open_lock(&hash)?;
            flock(&lock, libc::LOCK_SH).map_err(lock_error)?;
            (hash.clone(), lock)
        }
        CacheSharingMode::Locked => {
            let lock = open_lock(&hash)?;
            flock(&lock, libc::LOCK_EX).map_err(lock_error)?;
            (hash.clone(), lock)
        }
        CacheSharingMode::Private => {
            let mut instance = 0usize;
            loop {
                let name = if instance == 0 {
                    hash.clone()
                } else {
                    format!("{hash}-{instance}")
                };
                let lock = open_lock(&name)?;
                match flock(&lock, libc::LOCK_EX | libc::LOCK_NB) {
                    Ok(()) => break (name, lock),
                    Err(err) if err.raw_os_error() == Some(libc::EWOULDBLOCK) => instance += 1,
                    Err(err) => return Err(lock_error(err)),
                }
            }
        }
    };
    let dir = base.join(&name);
    if !dir.is_dir() {
        create_cache_dir(shared, others, mount, &base, &dir, step)?;
    }
    Ok((dir, lock))
}

/// Makes a new cache directory whole (seeded, owned, moded) and renames it into place.
fn create_cache_dir(
    shared: &Shared<'_>,
    others: &BTreeMap<NodeId, NodeState>,
    mount: &ExecMount,
    base: &Path,
    dir: &Path,
    step: &str,
) -> Result<(), BuildError> {
    let io_error = |what: String| move |err: io::Error| mount_error(step, format!("{what}: {err}"));
    let temp = tempfile::Builder::new()
        .prefix(&crate::store::owned_name("new-"))
        .tempdir_in(base)
        .map_err(io_error(format!(
            "create a directory in {}",
            base.display()
        )))?;
    let new_dir = temp.path().join("dir");
    std::fs::create_dir(&new_dir).map_err(io_error(format!("create {}", new_dir.display())))?;
    if let Some(node) = mount.from {
        let state = others
            .get(&node)
            .ok_or_else(|| mount_error(step, format!("mount source node {node} was not built")))?;
        let lowers = lowerdirs(shared.store, state, step)?;
        let source = mount.source.clone().unwrap_or_else(|| "/".into());
        let work_dir = temp.path().join("seed");
        let target = new_dir.clone();
        copy::with_private_mounts(move || {
            let root = if lowers.is_empty() {
                return Ok(());
            } else if lowers.len() == 1 {
                lowers[0].clone()
            } else {
                let (upper, work, merged) = (
                    work_dir.join("upper"),
                    work_dir.join("work"),
                    work_dir.join("merged"),
                );
                for dir in [&upper, &work, &merged] {
                    std::fs::create_dir_all(dir)?;
                }
                copy::mount_overlay(&lowers, &upper, &work, &merged)?;
                merged
            };
            let roots = copy::select_in_root(&root, &source)?;
            copy::copy_roots(
                &target,
                &roots,
                &copy::CopySpec {
                    dest: "/".into(),
                    owner: None,
                    chmod: None,
                },
            )
        })
        .map_err(io_error("seed the cache mount from its source".to_string()))?;
    }
    {
        use std::os::unix::fs::PermissionsExt;
        std::os::unix::fs::chown(
            &new_dir,
            Some(mount.uid.unwrap_or(0)),
            Some(mount.gid.unwrap_or(0)),
        )
        .map_err(io_error(format!("chown {}", new_dir.display())))?;
        std::fs::set_permissions(
            &new_dir,
            std::fs::Permissions::from_mode(mount.mode.unwrap_or(0o755)),
        )
        .map_err(io_error(format!("chmod {}", new_dir.display())))?;
    }
    match std::fs::rename(&new_dir, dir) {
        Ok(()) => Ok(()),
        // Another build made it meanwhile: theirs is as good.
        Err(_) if dir.is_dir() => Ok(()),
        Err(err) => Err(io_error(format!("create cache mount {}", dir.display()))(
            err,
        )),
    }
}

fn flock(file: &File, operation: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: a valid open fd for the call's duration.
        if unsafe { libc::flock(file.as_raw_fd(), operation) } == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Docker's `units.RAMInBytes`: a number with an optional binary unit (`k`, `m`, `g`, `t`,
/// `p`, optionally followed by `i`/`b`: `64m`, `1GiB`, `512kb`), or plain bytes.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let unit = unit.trim_start().to_lowercase();
    let unit = unit.strip_suffix('b').unwrap_or(&unit);
    let unit = unit.strip_suffix('i').unwrap_or(unit);
    let multiplier: u64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        "p" => 1 << 50,
        _ => return None,
    };
    if number < 0.0 {
        return None;
    }
    Some((number * multiplier as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_docker_units() {
        for (text, expect) in [
            ("100", Some(100)),
            ("64m", Some(64 << 20)),
            ("64MiB", Some(64 << 20)),
            ("1g", Some(1 << 30)),
            ("512kb", Some(512 << 10)),
            ("1.5k", Some(1536)),
            ("12x", None),
            ("", None),
        ] {
            assert_eq!(parse_size(text), expect, "{text}");
        }
    }

    #[test]
    fn secret_flags_follow_buildx() {
        let check = |text: &str, expect: Result<(&str, SecretSource), ()>| {
            let got = parse_secret_flag(text).map_err(|_| ());
            let expect = expect.map(|(id, source)| (id.to_string(), source));
            assert_eq!(got, expect, "{text}");
        };
        check(
            "id=tok,src=/tmp/t",
            Ok(("tok", SecretSource::File("/tmp/t".into()))),
        );
        check(
            "id=tok,source=/tmp/t,type=file",
            Ok(("tok", SecretSource::File("/tmp/t".into()))),
        );
        check(
            "id=tok,env=TOKEN",
            Ok(("tok", SecretSource::Env("TOKEN".into()))),
        );
        check(
            "id=tok,type=env,src=TOKEN",
            Ok(("tok", SecretSource::Env("TOKEN".into()))),
        );
        check("id=TOKEN", Ok(("TOKEN", SecretSource::Env("TOKEN".into()))));
        check(
            "src=/x/key.pem",
            Ok(("key.pem", SecretSource::File("/x/key.pem".into()))),
        );
        check("id=a,src=b,env=c", Err(()));
        check("id=a,bogus=1", Err(()));
        check("id=a,type=ssh", Err(()));
        check("justtext", Err(()));
    }

    #[test]
    fn socket_proxy_forwards_both_ways_with_its_own_mode() {
        use std::io::{Read, Write};
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let agent_path = dir.path().join("agent.sock");
        let agent = std::os::unix::net::UnixListener::bind(&agent_path).unwrap();
        let echo = std::thread::spawn(move || {
            let (mut stream, _) = agent.accept().unwrap();
            let mut request = Vec::new();
            stream.read_to_end(&mut request).unwrap();
            stream.write_all(b"reply:").unwrap();
            stream.write_all(&request).unwrap();
        });
        let proxy_path = dir.path().join("proxy.sock");
        let proxy = SocketProxy::start(&agent_path, &proxy_path, 0o640, 0, 0).unwrap();
        let meta = std::fs::metadata(&proxy_path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
        assert_eq!(meta.uid(), 0);
        let mut client = std::os::unix::net::UnixStream::connect(&proxy_path).unwrap();
        client.write_all(b"ping").unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).unwrap();
        assert_eq!(answer, "reply:ping");
        echo.join().unwrap();
        drop(proxy);
    }

    #[test]
    fn ssh_flags_take_a_socket_or_key_files() {
        assert!(parse_ssh_flag("default", None).is_err());
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let text = format!("default={}", socket.display());
        assert_eq!(
            parse_ssh_flag(&text, None).unwrap(),
            ("default".to_string(), SshSource::Socket(socket.clone()))
        );
        assert_eq!(
            parse_ssh_flag("work", socket.to_str()).unwrap(),
            ("work".to_string(), SshSource::Socket(socket.clone()))
        );
        let key = dir.path().join("id_ed25519");
        std::fs::write(&key, "key").unwrap();
        assert_eq!(
            parse_ssh_flag(&format!("default={}", key.display()), None).unwrap(),
            ("default".to_string(), SshSource::Keys(vec![key.clone()]))
        );
        let both = format!("default={},{}", key.display(), socket.display());
        assert!(parse_ssh_flag(&both, None).is_err());
        assert!(parse_ssh_flag("default=/nonexistent/key", None).is_err());
        assert!(parse_ssh_flag(&format!("default={}", dir.path().display()), None).is_err());
    }
}
