//! Runs one process in a real Linux container: overlayfs (or a copy) over layer snapshots, new
//! mount/pid/uts/ipc (and optionally network) namespaces, `pivot_root`, Docker's default
//! capability set, `no_new_privs`, masked `/proc` paths. No external runtime binary.
//!
//! # Process tree
//!
//! ```text
//! caller (kiln build / kiln run, maybe multi-threaded)
//!  └─ kiln init --spec-fd N      freshly exec'd "supervisor": new session, unshare(pid),
//!      │                          forwards signals, cleans up if the caller dies
//!      └─ pid 1 (kiln code)       unshare(mount, uts, ipc[, net]), mounts, pivot_root,
//!          │                      then reaps orphans and forwards signals
//!          └─ workload            user, caps, no_new_privs, cwd, execve
//! ```
//!
//! The set-up runs in a freshly exec'd `kiln init` process, never in a forked child of the
//! caller: after `fork` in a multi-threaded process only one thread survives and allocating
//! could deadlock. The spec travels as JSON through an inherited memfd; set-up failures travel
//! back as JSON through a close-on-exec status pipe (EOF without a message means the exec
//! succeeded). When the workload exits, pid 1 SIGKILLs whatever is left in the namespace,
//! reaps it, and writes the exit code to an exit pipe: the caller goes on at once (nothing can
//! touch the upper dir any more) while the kernel tears the namespaces down in the background. The caller's `PR_SET_PDEATHSIG` makes the supervisor notice when the caller dies
//! (even by SIGKILL): it then kills pid 1 (which takes the whole pid namespace with it) and
//! removes the container's state directory. All container mounts live only in the container's
//! mount namespace, so they vanish with its last process; the host mount table never sees them.
//!
//! # What is isolated, and what is not
//!
//! Isolated: mount table and root (overlay + `pivot_root`, old root detached), process tree
//! (pid namespace, `/proc` shows only the container), hostname (uts), System V IPC and POSIX
//! message queues (ipc), and with `NetworkMode::None` the network (only `lo`, up). Capabilities
//! are Docker's default set (bounding, effective, permitted; inheritable and ambient empty),
//! `no_new_privs` is set, `/proc/kcore`-like paths are masked and `/proc/sys`-like paths and
//! `/sys` are read-only. `/dev` is a fresh tmpfs with only the standard nodes.
//!
//! NOT isolated: there are no cgroups (no memory/cpu/pids limits), no seccomp filter, no user
//! namespace (root in the container is root on the host, limited only by the capability set),
//! no AppArmor/SELinux profile. `NetworkMode::Host` shares the host's network stack. Build
//! steps are trusted code the user asked to run; do not use this to run hostile code.
//!
//! This module knows nothing about Dockerfiles or images: it gets lower dirs, argv, env, user.

mod init;
pub mod kernel;
mod rootfs;
mod setup;
pub mod user;

pub use init::init_main;
pub use rootfs::{Rootfs, StorageDriver, UsedDriver};

use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

/// Network namespace choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum NetworkMode {
    /// Share the host's network namespace.
    #[default]
    Host,
    /// A new network namespace with only the loopback interface, up.
    None,
}

impl std::str::FromStr for NetworkMode {
    type Err = ContainerError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "host" => Ok(NetworkMode::Host),
            "none" => Ok(NetworkMode::None),
            other => Err(ContainerError::UnknownNetwork {
                name: other.to_string(),
            }),
        }
    }
}

/// A host path bind-mounted into the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    pub source: PathBuf,
    /// Absolute path inside the container.
    pub destination: String,
    pub read_only: bool,
}

/// A mount `kiln init` makes inside the container's own mount namespace, in list order (so a
/// mount may sit inside an earlier one), after the plain [`BindMount`]s. The host mount table
/// never sees any of them. Staging directories (`scratch`) are host directories the caller
/// made, empty, inside the container's state dir; they vanish with it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExtraMount {
    /// A host path bound at `destination` (read-only when asked).
    Bind(BindMount),
    /// A fresh tmpfs (mode 1777, `size` bytes at most when given) at `destination`.
    Tmpfs {
        destination: String,
        size_bytes: Option<u64>,
    },
    /// An overlay of `lowerdirs_bottom_first` (a root file system made of snapshots) with a
    /// throw-away upper dir in `scratch`; its `subpath` (resolved inside that tree, symlinks
    /// confined to it; it must exist) is bound at `destination`. Writes land in `scratch` and
    /// are never seen by anything else; `read_only` makes the bound view read-only.
    Overlay {
        lowerdirs_bottom_first: Vec<PathBuf>,
        scratch: PathBuf,
        subpath: String,
        destination: String,
        read_only: bool,
    },
    /// A file whose bytes exist only in memory: written into a private tmpfs mounted on
    /// `scratch` (mode `mode`, owner `uid:gid`) and bound read-only at `destination`. For
    /// secrets: the bytes never touch a disk and are left out of `Debug`.
    File {
        destination: String,
        contents: Vec<u8>,
        mode: u32,
        uid: u32,
        gid: u32,
        scratch: PathBuf,
    },
}

impl ExtraMount {
    /// The path inside the container.
    pub fn destination(&self) -> &str {
        match self {
            ExtraMount::Bind(bind) => &bind.destination,
            ExtraMount::Tmpfs { destination, .. }
            | ExtraMount::Overlay { destination, .. }
            | ExtraMount::File { destination, .. } => destination,
        }
    }
}

impl std::fmt::Debug for ExtraMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExtraMount::Bind(bind) => f.debug_tuple("Bind").field(bind).finish(),
            ExtraMount::Tmpfs {
                destination,
                size_bytes,
            } => f
                .debug_struct("Tmpfs")
                .field("destination", destination)
                .field("size_bytes", size_bytes)
                .finish(),
            ExtraMount::Overlay {
                lowerdirs_bottom_first,
                scratch,
                subpath,
                destination,
                read_only,
            } => f
                .debug_struct("Overlay")
                .field("lowerdirs_bottom_first", lowerdirs_bottom_first)
                .field("scratch", scratch)
                .field("subpath", subpath)
                .field("destination", destination)
                .field("read_only", read_only)
                .finish(),
            // The contents are a secret: never print them.
            ExtraMount::File {
                destination,
                contents,
                mode,
                uid,
                gid,
                scratch,
            } => f
                .debug_struct("File")
                .field("destination", destination)
                .field("contents", &format_args!("<{} bytes>", contents.len()))
                .field("mode", &format_args!("{mode:o}"))
                .field("uid", uid)
                .field("gid", gid)
                .field("scratch", scratch)
                .finish(),
        }
    }
}

/// What to execute: exec form (argv as is) or shell form (`shell` + the script as one word).
/// The default, an empty exec form, is refused by `spawn` with `EmptyCommand`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandLine {
    Exec(Vec<String>),
    Shell { shell: Vec<String>, script: String },
}

impl Default for CommandLine {
    fn default() -> Self {
        CommandLine::Exec(Vec::new())
    }
}

impl CommandLine {
    /// Shell form through `/bin/sh -c`, Docker's default `SHELL`.
    pub fn shell(script: impl Into<String>) -> CommandLine {
        CommandLine::Shell {
            shell: vec!["/bin/sh".into(), "-c".into()],
            script: script.into(),
        }
    }

    /// The argv the container executes.
    pub fn argv(&self) -> Vec<String> {
        match self {
            CommandLine::Exec(argv) => argv.clone(),
            CommandLine::Shell { shell, script } => {
                let mut argv = shell.clone();
                argv.push(script.clone());
                argv
            }
        }
    }
}

/// Everything about the process and its namespaces; the root file system is a [`Rootfs`].
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    pub command: CommandLine,
    /// `KEY=VALUE` strings. PATH, HOME and HOSTNAME get Docker's defaults when missing.
    pub env: Vec<String>,
    /// Working directory inside the container, created (root-owned, 0755) if missing; "" = "/".
    pub cwd: String,
    /// `uid[:gid]` or names from the image's /etc/passwd and /etc/group; "" = root.
    pub user: String,
    /// Hostname; "" = a random 12-hex-digit id, as Docker.
    pub hostname: String,
    pub network: NetworkMode,
    pub mounts: Vec<BindMount>,
    /// Tmpfs, overlay and in-memory file mounts (and ordered binds), made after `mounts`.
    pub extra_mounts: Vec<ExtraMount>,
    /// Give the process a pseudo-terminal (stdout and stderr merge, as `docker run -t`).
    pub tty: bool,
    /// Connect the caller's stdin (otherwise stdin is /dev/null).
    pub stdin: bool,
    /// The kiln binary that runs `kiln init`; default `std::env::current_exe()`.
    pub kiln_binary: Option<PathBuf>,
}

/// Where a container's output goes.
pub enum OutputSink {
    /// The caller's own stdout/stderr (live, no copy).
    Inherit,
    /// Discarded.
    Null,
    /// Copied live, chunk by chunk, from a reader thread.
    Writer(Box<dyn Write + Send>),
}

/// The container's standard output and error.
pub struct ContainerIo {
    pub stdout: OutputSink,
    pub stderr: OutputSink,
}

impl ContainerIo {
    pub fn inherit() -> ContainerIo {
        ContainerIo {
            stdout: OutputSink::Inherit,
            stderr: OutputSink::Inherit,
        }
    }
}

/// How the container's process ended: its exit code, or `128 + n` for signal `n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    pub code: i32,
}

impl ExitStatus {
    pub fn success(self) -> bool {
        self.code == 0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("unknown network mode {name:?} (expected host or none)")]
    UnknownNetwork { name: String },
    #[error("unknown storage driver {name:?} (expected overlay or copy)")]
    UnknownStorageDriver { name: String },
    #[error("container state directory {path} already exists")]
    StateDirExists { path: PathBuf },
    #[error("failed to create container state directory {path}")]
    CreateStateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("lower directory {path} does not exist or is not a directory")]
    LowerDir { path: PathBuf },
    #[error("failed to copy layer {path} into the container root")]
    CopyLayer {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("overlayfs is not usable on {path}: {errno}")]
    OverlayUnavailable {
        path: PathBuf,
        errno: nix::errno::Errno,
    },
    #[error("no command given (the image has neither ENTRYPOINT nor CMD)")]
    EmptyCommand,
    #[error("bind mount source path does not exist: {path}")]
    BindSource { path: PathBuf },
    #[error("bind mount destination {destination:?} must be an absolute path")]
    BindDestination { destination: String },
    #[error("failed to write container file {path}")]
    WriteStateFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to hand the container spec to kiln init")]
    PassSpec(#[source] std::io::Error),
    #[error("failed to start the container helper {program}")]
    SpawnHelper {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to open a pseudo-terminal")]
    Pty(#[source] nix::errno::Errno),
    #[error("failed to wait for the container")]
    Wait(#[source] std::io::Error),
    /// Set-up inside the container failed; the message names the step and the path.
    #[error("container set-up failed: {message}")]
    Setup { message: String },
    #[error("{message}")]
    User { message: String },
    /// Docker's wording, as `docker run` prints it.
    #[error("exec: {command:?}: executable file not found in $PATH")]
    CommandNotFound { command: String },
    #[error("exec: {command:?}: permission denied")]
    NotExecutable { command: String },
    #[error("failed to remove {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to read mount-point stub list {path}")]
    ReadStubs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ContainerError {
    /// The exit code `docker run` uses for this failure: 127 command not found, 126 not
    /// executable, 125 anything else (the container never ran).
    pub fn exit_code(&self) -> i32 {
        match self {
            ContainerError::CommandNotFound { .. } => 127,
            ContainerError::NotExecutable { .. } => 126,
            _ => 125,
        }
    }
}

/// A failure reported by `kiln init` through the status pipe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Failure {
    Setup(String),
    User(String),
    CommandNotFound(String),
    NotExecutable(String),
}

impl From<Failure> for ContainerError {
    fn from(failure: Failure) -> ContainerError {
        match failure {
            Failure::Setup(message) => ContainerError::Setup { message },
            Failure::User(message) => ContainerError::User { message },
            Failure::CommandNotFound(command) => ContainerError::CommandNotFound { command },
            Failure::NotExecutable(command) => ContainerError::NotExecutable { command },
        }
    }
}

/// What the root mount is made of, as `kiln init` sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum RootSource {
    Overlay {
        lowerdirs_bottom_first: Vec<PathBuf>,
        upper: PathBuf,
        work: PathBuf,
        merged: PathBuf,
    },
    Copy {
        rootfs: PathBuf,
    },
}

/// The complete, resolved instruction set for `kiln init`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct InitSpec {
    pub root: RootSource,
    pub state_dir: PathBuf,
    pub stubs_file: PathBuf,
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: String,
    pub hostname: String,
    pub network: NetworkMode,
    pub mounts: Vec<BindMount>,
    pub extra_mounts: Vec<ExtraMount>,
    /// (path in the container, host file) bind-mounted over /etc files.
    pub etc_files: Vec<(String, PathBuf)>,
    /// With a tty: the unix socket over which the workload sends the pty master it opened in
    /// the container's own devpts (so `tty` and `ttyname` work inside).
    pub tty_socket_fd: Option<i32>,
    pub parent_pid: i32,
    /// The caller's thread that started the helper (0: unknown). `PR_SET_PDEATHSIG` fires when
    /// that thread exits; while the rest of a SIGKILLed caller is still going away, `getppid`
    /// can still name the caller, so the helper also checks whether this thread is exiting.
    #[serde(default)]
    pub parent_tid: i32,
    pub status_fd: i32,
    /// Pid 1 writes the workload's exit code here (4 bytes, native endian) once every process
    /// of the container is dead, before its own (slow: namespace teardown) exit.
    pub exit_fd: i32,
}

/// A started container. Dropping it without `wait` leaves the supervisor running until the
/// process ends; call [`Container::wait`].
pub struct Container {
    child: std::process::Child,
    readers: Vec<std::thread::JoinHandle<()>>,
    restore_terminal: Option<nix::sys::termios::Termios>,
    exit_pipe: std::fs::File,
    pty_master: Option<Arc<OwnedFd>>,
}

/// A handle another thread can use to signal a running container or resize its tty while
/// the owner waits in [`Container::wait`].
#[derive(Debug, Clone)]
pub struct ContainerControl {
    pid: i32,
    pty_master: Option<Arc<OwnedFd>>,
}

impl ContainerControl {
    /// Forwards `signal` to the container's process (through the supervisor and pid 1).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the supervisor; at worst it already exited and this is ignored.
        unsafe {
            libc::kill(self.pid, signal);
        }
    }

    /// With a tty: gives the container's terminal the size of the terminal on `fd` (call it on
    /// SIGWINCH; the kernel then signals the container's foreground process group itself).
    pub fn resize_tty_from(&self, fd: i32) {
        if let (Some(master), Ok(size)) = (&self.pty_master, terminal_size(fd)) {
            set_terminal_size(master.as_raw_fd(), &size);
        }
    }
}

impl Container {
    /// A handle for signalling and resizing from another thread.
    pub fn control(&self) -> ContainerControl {
        ContainerControl {
            pid: self.pid(),
            pty_master: self.pty_master.clone(),
        }
    }

    /// The supervisor's pid: send it SIGINT/SIGTERM/... and they reach the container's process.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Forwards `signal` to the container's process (through the supervisor and pid 1).
    pub fn signal(&self, signal: i32) {
        self.control().signal(signal)
    }

    /// Waits for the process to end and all output to be copied. Returns as soon as pid 1
    /// reported the workload's status (every process of the container is dead by then); the
    /// supervisor is reaped by a background thread while the kernel tears the namespaces down.
    pub fn wait(mut self) -> Result<ExitStatus, ContainerError> {
        let mut code_bytes = [0u8; 4];
        let reported = read_full(&mut self.exit_pipe, &mut code_bytes);
        let code = if reported {
            let code = i32::from_ne_bytes(code_bytes);
            match self.child.try_wait() {
                Ok(Some(_)) => {}
                _ => {
                    let mut child = self.child;
                    std::thread::spawn(move || {
                        let _ = child.wait();
                    });
                }
            }
            code
        } else {
            // Pid 1 died without reporting (killed): the supervisor's status says it all.
            let status = loop {
                match self.child.wait() {
                    Ok(status) => break status,
                    Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(err) => return Err(ContainerError::Wait(err)),
                }
            };
            use std::os::unix::process::ExitStatusExt;
            match (status.code(), status.signal()) {
                (Some(code), _) => code,
                (None, Some(signal)) => 128 + signal,
                (None, None) => 125,
            }
        };
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        if let Some(termios) = self.restore_terminal.take() {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                &termios,
            );
        }
        Ok(ExitStatus { code })
    }
}

fn read_full(file: &mut std::fs::File, buffer: &mut [u8]) -> bool {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..]) {
            Ok(0) => return false,
            Ok(n) => filled += n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
    true
}

/// Runs the container to completion: [`spawn`] then [`Container::wait`].
pub fn run(
    rootfs: &Rootfs,
    spec: &ContainerSpec,
    io: ContainerIo,
) -> Result<ExitStatus, ContainerError> {
    spawn(rootfs, spec, io)?.wait()
}

fn random_hostname() -> String {
    use rand::Rng;
    let bytes: [u8; 6] = rand::thread_rng().gen();
    hex::encode(bytes)
}

fn hosts_file(network: NetworkMode, hostname: &str) -> Vec<u8> {
    let mut text = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    if network == NetworkMode::Host {
        if let Ok(host) = std::fs::read_to_string("/etc/hosts") {
            text = host;
            if !text.ends_with('\n') {
                text.push('\n');
            }
        }
    }
    text.push_str(&format!("127.0.1.1\t{hostname}\n"));
    text.into_bytes()
}

/// Validates the spec, writes the generated /etc files, starts `kiln init` and waits until the
/// container's process has been exec'd (or set-up failed, which is returned as an error with
/// nothing left running).
///
/// Call `spawn` and [`Container::wait`] from the same thread, and keep that thread alive until
/// `wait` returns: `PR_SET_PDEATHSIG` fires when the *thread* that started the helper exits,
/// and the helper treats that as "the caller died" and kills the container.
pub fn spawn(
    rootfs: &Rootfs,
    spec: &ContainerSpec,
    io: ContainerIo,
) -> Result<Container, ContainerError> {
    let argv = spec.command.argv();
    if argv.is_empty() || argv[0].is_empty() {
        return Err(ContainerError::EmptyCommand);
    }
    for mount in &spec.mounts {
        if !mount.destination.starts_with('/') {
            return Err(ContainerError::BindDestination {
                destination: mount.destination.clone(),
            });
        }
        if std::fs::symlink_metadata(&mount.source).is_err() {
            return Err(ContainerError::BindSource {
                path: mount.source.clone(),
            });
        }
    }
    let hostname = if spec.hostname.is_empty() {
        random_hostname()
    } else {
        spec.hostname.clone()
    };
    let etc_dir = rootfs.state_dir().join("etc");
    let write = |name: &str, contents: &[u8]| -> Result<PathBuf, ContainerError> {
        let path = etc_dir.join(name);
        std::fs::create_dir_all(&etc_dir)
            .and_then(|()| std::fs::write(&path, contents))
            .map_err(|source| ContainerError::WriteStateFile {
                path: path.clone(),
                source,
            })?;
        Ok(path)
    };
    let resolv = std::fs::read("/etc/resolv.conf").unwrap_or_default();
    let etc_files = vec![
        (
            "/etc/hosts".to_string(),
            write("hosts", &hosts_file(spec.network, &hostname))?,
        ),
        (
            "/etc/hostname".to_string(),
            write("hostname", format!("{hostname}\n").as_bytes())?,
        ),
        (
            "/etc/resolv.conf".to_string(),
            write("resolv.conf", &resolv)?,
        ),
    ];
    let mut env = spec.env.clone();
    if spec.tty && !env.iter().any(|var| var.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }

    let pipe = || {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|errno| {
            ContainerError::PassSpec(std::io::Error::from_raw_os_error(errno as i32))
        })
    };
    let (status_read, status_write) = pipe()?;
    let (exit_read, exit_write) = pipe()?;
    // With a tty the workload opens the pty inside the container and sends us the master.
    let tty_sockets = if spec.tty {
        let mut fds = [0i32; 2];
        // SAFETY: socketpair fills two fds, wrapped at once.
        if unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        } < 0
        {
            return Err(ContainerError::Pty(nix::errno::Errno::last()));
        }
        // SAFETY: fresh fds owned by nobody else.
        unsafe { Some((OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))) }
    } else {
        None
    };
    let init_spec = InitSpec {
        root: rootfs.root_source(),
        state_dir: rootfs.state_dir().to_path_buf(),
        stubs_file: rootfs.stubs_file(),
        argv,
        env,
        cwd: if spec.cwd.is_empty() {
            "/".into()
        } else {
            spec.cwd.clone()
        },
        user: spec.user.clone(),
        hostname,
        network: spec.network,
        mounts: spec.mounts.clone(),
        extra_mounts: spec.extra_mounts.clone(),
        etc_files,
        tty_socket_fd: tty_sockets.as_ref().map(|(_, theirs)| theirs.as_raw_fd()),
        parent_pid: std::process::id() as i32,
        parent_tid: nix::unistd::gettid().as_raw(),
        status_fd: status_write.as_raw_fd(),
        exit_fd: exit_write.as_raw_fd(),
    };
    let spec_fd = spec_memfd(&init_spec)?;

    let program = match &spec.kiln_binary {
        Some(path) => path.clone(),
        None => std::env::current_exe().map_err(|source| ContainerError::SpawnHelper {
            program: PathBuf::from("/proc/self/exe"),
            source,
        })?,
    };
    let mut command = std::process::Command::new(&program);
    command
        .arg("init")
        .arg("--spec-fd")
        .arg(spec_fd.as_raw_fd().to_string())
        .env_clear();

    let ContainerIo {
        stdout: stdout_sink,
        stderr: stderr_sink,
    } = io;
    let mut readers = Vec::new();
    if spec.tty {
        // The supervisor and pid 1 have no use for a terminal.
        command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
    } else {
        command.stdin(if spec.stdin {
            std::process::Stdio::inherit()
        } else {
            std::process::Stdio::null()
        });
        match &stdout_sink {
            OutputSink::Inherit => command.stdout(std::process::Stdio::inherit()),
            OutputSink::Null => command.stdout(std::process::Stdio::null()),
            OutputSink::Writer(_) => command.stdout(std::process::Stdio::piped()),
        };
        match &stderr_sink {
            OutputSink::Inherit => command.stderr(std::process::Stdio::inherit()),
            OutputSink::Null => command.stderr(std::process::Stdio::null()),
            OutputSink::Writer(_) => command.stderr(std::process::Stdio::piped()),
        };
    }

    let parent_pid = init_spec.parent_pid;
    let mut keep_fds = vec![
        spec_fd.as_raw_fd(),
        status_write.as_raw_fd(),
        exit_write.as_raw_fd(),
    ];
    if let Some(fd) = init_spec.tty_socket_fd {
        keep_fds.push(fd);
    }
    // SAFETY: the closure only makes async-signal-safe system calls (fcntl, sigprocmask,
    // prctl, getppid).
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(move || {
            for fd in &keep_fds {
                if libc::fcntl(*fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // SIGTERM, not SIGKILL: the supervisor catches it, kills the container and
            // removes its state directory when it finds its parent gone. Blocked from here
            // (the mask survives exec) so it waits for the supervisor's sigwait.
            let mut blocked: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut blocked);
            libc::sigaddset(&mut blocked, libc::SIGTERM);
            libc::sigprocmask(libc::SIG_BLOCK, &blocked, std::ptr::null_mut());
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent_pid {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let spawned = command.spawn();
    drop(command);
    drop(status_write);
    drop(exit_write);
    drop(spec_fd);
    let ours = tty_sockets.map(|(ours, theirs)| {
        drop(theirs);
        ours
    });
    let mut child = spawned.map_err(|source| ContainerError::SpawnHelper {
        program: program.clone(),
        source,
    })?;
    let mut restore_terminal = None;
    let mut pty_master: Option<Arc<OwnedFd>> = None;
    if let Some(socket) = ours {
        // EOF instead of an fd: set-up failed before the pty existed; the status says why.
        if let Some(master) = receive_fd(&socket) {
            if let Ok(size) = terminal_size(std::io::stdout().as_raw_fd()) {
                set_terminal_size(master.as_raw_fd(), &size);
            }
            let master = std::fs::File::from(master);
            if spec.stdin {
                if let Ok(termios) = nix::sys::termios::tcgetattr(std::io::stdin()) {
                    let mut raw = termios.clone();
                    nix::sys::termios::cfmakeraw(&mut raw);
                    let _ = nix::sys::termios::tcsetattr(
                        std::io::stdin(),
                        nix::sys::termios::SetArg::TCSANOW,
                        &raw,
                    );
                    restore_terminal = Some(termios);
                }
                let mut master_in = master.try_clone().map_err(ContainerError::Wait)?;
                // Not joined: it blocks on our stdin until the next key press or EOF.
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut std::io::stdin(), &mut master_in);
                });
            }
            pty_master = master.try_clone().ok().map(|f| Arc::new(OwnedFd::from(f)));
            readers.push(copy_thread(master, stdout_sink));
            // The workload waits for this byte before it exec's: its terminal is ready now.
            let _ = nix::unistd::write(&socket, &[1u8]);
        }
    } else {
        if let (Some(stdout), OutputSink::Writer(writer)) = (child.stdout.take(), stdout_sink) {
            readers.push(copy_thread(stdout, OutputSink::Writer(writer)));
        }
        if let (Some(stderr), OutputSink::Writer(writer)) = (child.stderr.take(), stderr_sink) {
            readers.push(copy_thread(stderr, OutputSink::Writer(writer)));
        }
    }
    let container = Container {
        child,
        readers,
        restore_terminal,
        exit_pipe: std::fs::File::from(exit_read),
        pty_master,
    };

    let mut report = Vec::new();
    let mut status_file = std::fs::File::from(status_read);
    let _ = status_file.read_to_end(&mut report);
    if report.is_empty() {
        return Ok(container);
    }
    let failure = serde_json::from_slice::<Failure>(&report)
        .unwrap_or_else(|_| Failure::Setup(String::from_utf8_lossy(&report).trim().to_string()));
    // The helper exits right after reporting; collect it so nothing is left behind.
    let _ = container.wait();
    Err(failure.into())
}

/// Receives one fd sent with SCM_RIGHTS; `None` on EOF or error.
fn receive_fd(socket: &OwnedFd) -> Option<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr() as *mut libc::c_void,
        iov_len: 1,
    };
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<i32>() as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: a zeroed msghdr is valid; the pointers set below outlive the call.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = &mut iov;
    message.msg_iovlen = 1;
    message.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    message.msg_controllen = space as _;
    loop {
        // SAFETY: a fully initialised msghdr over live buffers.
        let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut message, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 && nix::errno::Errno::last() == nix::errno::Errno::EINTR {
            continue;
        }
        if n <= 0 {
            return None;
        }
        break;
    }
    // SAFETY: the kernel filled the control buffer; we check the header before reading.
    unsafe {
        let header = libc::CMSG_FIRSTHDR(&message);
        if header.is_null()
            || (*header).cmsg_level != libc::SOL_SOCKET
            || (*header).cmsg_type != libc::SCM_RIGHTS
        {
            return None;
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(header) as *const i32);
        Some(OwnedFd::from_raw_fd(fd))
    }
}

fn copy_thread<R: Read + Send + 'static>(
    mut reader: R,
    sink: OutputSink,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut writer: Box<dyn Write + Send> = match sink {
            OutputSink::Writer(writer) => writer,
            OutputSink::Inherit => Box::new(std::io::stdout()),
            OutputSink::Null => Box::new(std::io::sink()),
        };
        let mut buffer = [0u8; 16 * 1024];
        loop {
            match reader.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => {
                    if writer.write_all(&buffer[..n]).is_err() {
                        break;
                    }
                    let _ = writer.flush();
                }
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                // EIO: the pty's last slave closed.
                Err(_) => break,
            }
        }
        let _ = writer.flush();
    })
}

fn terminal_size(fd: i32) -> Result<libc::winsize, nix::errno::Errno> {
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ fills a winsize.
    if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut size) } < 0 {
        return Err(nix::errno::Errno::last());
    }
    Ok(size)
}

fn set_terminal_size(fd: i32, size: &libc::winsize) {
    // SAFETY: TIOCSWINSZ reads a winsize.
    unsafe {
        libc::ioctl(fd, libc::TIOCSWINSZ, size as *const libc::winsize);
    }
}

fn spec_memfd(spec: &InitSpec) -> Result<OwnedFd, ContainerError> {
    let name = std::ffi::CString::new("kiln-container-spec").expect("static string");
    // SAFETY: memfd_create with a valid name; the fd is wrapped at once.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(ContainerError::PassSpec(std::io::Error::last_os_error()));
    }
    // SAFETY: fresh fd owned by nobody else.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    let json = serde_json::to_vec(spec).map_err(|err| ContainerError::PassSpec(err.into()))?;
    file.write_all(&json).map_err(ContainerError::PassSpec)?;
    use std::io::Seek;
    file.seek(std::io::SeekFrom::Start(0))
        .map_err(ContainerError::PassSpec)?;
    Ok(OwnedFd::from(file))
}

/// Reads the spec `kiln init` was given.
pub(crate) fn read_spec(fd: i32) -> Result<InitSpec, String> {
    // SAFETY: the fd was handed to us by our parent for exactly this purpose.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut json = Vec::new();
    file.read_to_end(&mut json)
        .map_err(|err| format!("read spec from fd {fd}: {err}"))?;
    serde_json::from_slice(&json).map_err(|err| format!("parse spec from fd {fd}: {err}"))
}

impl Rootfs {
    /// Used by `spawn`; exposed for the helper only.
    fn stubs_file(&self) -> PathBuf {
        self.state_dir().join("stubs")
    }
}

/// Removes mount-point stubs kiln created in the container's upper dir (or copied root) so they
/// never reach a committed layer. Same as [`Rootfs::remove_mount_stubs`].
pub fn remove_mount_stubs(rootfs: &Rootfs) -> Result<Vec<PathBuf>, ContainerError> {
    rootfs.remove_mount_stubs()
}

/// Removes the container's state directory (upper, work, generated files). Same as
/// [`Rootfs::cleanup`].
pub fn cleanup(rootfs: Rootfs) -> Result<(), ContainerError> {
    rootfs.cleanup()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_form_appends_the_script_as_one_word() {
        assert_eq!(
            CommandLine::shell("echo hi; exit 3").argv(),
            vec!["/bin/sh", "-c", "echo hi; exit 3"]
        );
        assert_eq!(
            CommandLine::Shell {
                shell: vec![
                    "/bin/ash".into(),
                    "-eo".into(),
                    "pipefail".into(),
                    "-c".into()
                ],
                script: "true".into()
            }
            .argv(),
            vec!["/bin/ash", "-eo", "pipefail", "-c", "true"]
        );
    }

    #[test]
    fn docker_exit_codes_and_messages() {
        let not_found = ContainerError::from(Failure::CommandNotFound("foo".into()));
        assert_eq!(not_found.exit_code(), 127);
        assert_eq!(
            not_found.to_string(),
            "exec: \"foo\": executable file not found in $PATH"
        );
        assert_eq!(
            ContainerError::from(Failure::NotExecutable("/x".into())).exit_code(),
            126
        );
        assert_eq!(ContainerError::EmptyCommand.exit_code(), 125);
    }

    #[test]
    fn network_modes_parse() {
        assert_eq!("host".parse::<NetworkMode>().unwrap(), NetworkMode::Host);
        assert_eq!("none".parse::<NetworkMode>().unwrap(), NetworkMode::None);
        assert!("bridge".parse::<NetworkMode>().is_err());
    }

    #[test]
    fn hosts_file_names_the_container() {
        let text = String::from_utf8(hosts_file(NetworkMode::None, "box1")).unwrap();
        assert!(text.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(text.ends_with("127.0.1.1\tbox1\n"));
    }
}
