//! The set-up steps inside the container, written against the [`Kernel`] trait so each step's
//! exact system calls are unit-tested with the recording fake: the root mount (overlay with the
//! new mount API, the legacy `mount(2)` fallback with short relative lowerdir names, or a bind
//! of a copied root), `/proc`, `/dev`, `/sys`, bind mounts, masked and read-only paths,
//! `pivot_root`, and the process's credentials, capabilities and executable lookup.
//!
//! Paths inside the image are resolved by hand, symlink by symlink, confined to the new root
//! (like runc's securejoin), because mounts are made before `pivot_root` and an image symlink
//! such as `/etc -> /host-etc` must not redirect a mount outside the container.

use super::kernel::{FileKind, Kernel};
use super::user::{self, ExecUser};
use super::{BindMount, ExtraMount, InitSpec, NetworkMode, RootSource};
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::stat::SFlag;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SetupError {
    #[error("unshare namespaces: {0}")]
    Unshare(Errno),
    #[error("block signals: {0}")]
    Signals(Errno),
    #[error("fork: {0}")]
    Fork(Errno),
    #[error("set the parent death signal: {0}")]
    ParentDeathSignal(Errno),
    #[error("close inherited file descriptors: {0}")]
    CloseFds(Errno),
    #[error("make the mount tree private: {0}")]
    MakePrivate(Errno),
    #[error("mount overlay on {target}: {errno}")]
    MountOverlay { target: PathBuf, errno: Errno },
    #[error(
        "overlay options for {n_layers} layers do not fit in one page even with relative names"
    )]
    TooManyLayers { n_layers: usize },
    #[error("resolve {path} inside the container: {errno}")]
    Resolve { path: String, errno: Errno },
    #[error("create mount point {path}: {errno}")]
    CreateStub { path: PathBuf, errno: Errno },
    #[error("record mount-point stubs in {path}: {errno}")]
    RecordStubs { path: PathBuf, errno: Errno },
    #[error("mount {what} on {target}: {errno}")]
    Mount {
        what: String,
        target: PathBuf,
        errno: Errno,
    },
    #[error("mount source {path:?} not found")]
    MountSourceMissing { path: String },
    #[error("write {path}: {errno}")]
    MountFile { path: PathBuf, errno: Errno },
    #[error("create device {path}: {errno}")]
    Device { path: PathBuf, errno: Errno },
    #[error("create symlink {path}: {errno}")]
    Symlink { path: PathBuf, errno: Errno },
    #[error("set hostname {hostname:?}: {errno}")]
    Hostname { hostname: String, errno: Errno },
    #[error("bring loopback up: {0}")]
    Loopback(Errno),
    #[error("pivot_root into {root}: {errno}")]
    PivotRoot { root: PathBuf, errno: Errno },
    #[error(transparent)]
    User(#[from] user::UserError),
    #[error("create working directory {path}: {errno}")]
    Workdir { path: String, errno: Errno },
    #[error("chdir to cwd ({path:?}) set in config.json failed: {errno}")]
    Chdir { path: String, errno: Errno },
    #[error("drop capabilities: {0}")]
    Capabilities(Errno),
    #[error("set user {uid}:{gid}: {errno}")]
    Credentials { uid: u32, gid: u32, errno: Errno },
    #[error("set no_new_privs: {0}")]
    NoNewPrivs(Errno),
    #[error("exec: {command:?}: executable file not found in $PATH")]
    CommandNotFound { command: String },
    #[error("exec: {command:?}: permission denied")]
    NotExecutable { command: String },
    #[error("set up the terminal: {0}")]
    Pty(Errno),
    #[error("exec {command:?}: {errno}")]
    Exec { command: String, errno: Errno },
}

/// Docker's default capability set (moby `oci/caps/defaults.go`), as capability numbers.
pub const DEFAULT_CAPABILITIES: [u32; 14] = [
    0,  // CHOWN
    1,  // DAC_OVERRIDE
    3,  // FOWNER
    4,  // FSETID
    5,  // KILL
    6,  // SETGID
    7,  // SETUID
    8,  // SETPCAP
    10, // NET_BIND_SERVICE
    13, // NET_RAW
    18, // SYS_CHROOT
    27, // MKNOD
    29, // AUDIT_WRITE
    31, // SETFCAP
];

/// Docker's masked paths: files get /dev/null bound over them, directories an empty read-only
/// tmpfs.
pub const MASKED_PATHS: [&str; 7] = [
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/timer_list",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];

/// Docker's read-only paths.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Overlay options that keep the upper dir a plain diff a commit can tar as is.
pub const OVERLAY_OPTIONS: [(&str, &str); 3] = [
    ("index", "off"),
    ("metacopy", "off"),
    ("redirect_dir", "off"),
];

/// Options tried first on top of [`OVERLAY_OPTIONS`]: `volatile` (Linux 5.10) skips every
/// sync to the upper filesystem. Without it, the unmount when a container's mount namespace
/// goes away runs `syncfs` on the whole filesystem holding the upper dir: a build waited there
/// for the RUN's output (512 MiB on the big-layer bench: 0.2-0.5 s) and for every other dirty
/// byte on that disk. A container's upper dir is never mounted again after a crash (sweep
/// removes it), the layer committed from it is fsynced on its own, and snapshots are derived
/// data like the unpacked layers of pulls; buildah mounts its build containers the same way.
/// An empty value is a flag option.
pub const VOLATILE_OPTIONS: [(&str, &str); 1] = [("volatile", "")];

/// The largest mount(2) data string (one page, with its NUL).
const PAGE_LIMIT: usize = 4095;

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Namespaces pid 1 unshares (the pid namespace was already unshared by the supervisor).
pub fn namespaces(network: NetworkMode) -> CloneFlags {
    let mut flags = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC;
    if network == NetworkMode::None {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    flags
}

/// Escapes a path for the legacy overlay option string.
fn escape_overlay(path: &Path) -> String {
    let mut out = String::new();
    for ch in path.to_string_lossy().chars() {
        if matches!(ch, '\\' | ',' | ':') {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

fn legacy_overlay_data(
    lowers_top_first: &[String],
    upper: &Path,
    work: &Path,
    options: &[(&str, &str)],
) -> String {
    let mut data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers_top_first.join(":"),
        escape_overlay(upper),
        escape_overlay(work)
    );
    for (key, value) in options {
        if value.is_empty() {
            data.push_str(&format!(",{key}"));
        } else {
            data.push_str(&format!(",{key}={value}"));
        }
    }
    data
}

fn common_parent(paths: &[PathBuf]) -> Option<PathBuf> {
    let mut common = paths.first()?.parent()?.to_path_buf();
    for path in paths {
        while !path.starts_with(&common) {
            common = common.parent()?.to_path_buf();
        }
    }
    Some(common)
}

/// Mounts the overlay with [`OVERLAY_OPTIONS`] and `volatile` ([`VOLATILE_OPTIONS`]), or
/// without `volatile` on a kernel that refuses it (before 5.10: `EINVAL`).
pub fn mount_overlay<K: Kernel>(
    kernel: &mut K,
    lowerdirs_bottom_first: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), SetupError> {
    let volatile: Vec<(&str, &str)> = OVERLAY_OPTIONS
        .iter()
        .chain(VOLATILE_OPTIONS.iter())
        .copied()
        .collect();
    match mount_overlay_with(
        kernel,
        lowerdirs_bottom_first,
        upper,
        work,
        target,
        &volatile,
    ) {
        Err(SetupError::MountOverlay {
            errno: Errno::EINVAL,
            ..
        }) => mount_overlay_with(
            kernel,
            lowerdirs_bottom_first,
            upper,
            work,
            target,
            &OVERLAY_OPTIONS,
        ),
        result => result,
    }
}

/// Mounts the overlay with `options`: new mount API first (`lowerdir+`, one call per layer,
/// no length limit); if the kernel lacks it, `mount(2)` with absolute names, and when those
/// overflow the one-page option limit, relative names from the lower dirs' common parent
/// (after `chdir`).
fn mount_overlay_with<K: Kernel>(
    kernel: &mut K,
    lowerdirs_bottom_first: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
    options: &[(&str, &str)],
) -> Result<(), SetupError> {
    let top_first: Vec<PathBuf> = lowerdirs_bottom_first.iter().rev().cloned().collect();
    let overlay_error = |errno| SetupError::MountOverlay {
        target: target.to_path_buf(),
        errno,
    };
    match kernel.mount_overlay_fsconfig(&top_first, upper, work, options, Some(target)) {
        Ok(()) => return Ok(()),
        Err(Errno::ENOSYS | Errno::EINVAL | Errno::EOPNOTSUPP) => {}
        Err(errno) => return Err(overlay_error(errno)),
    }
    let absolute: Vec<String> = top_first.iter().map(|p| escape_overlay(p)).collect();
    let data = legacy_overlay_data(&absolute, upper, work, options);
    if data.len() <= PAGE_LIMIT {
        return kernel
            .mount(
                Some(Path::new("overlay")),
                target,
                Some("overlay"),
                MsFlags::empty(),
                Some(&data),
            )
            .map_err(overlay_error);
    }
    let parent = common_parent(&top_first).ok_or(SetupError::TooManyLayers {
        n_layers: top_first.len(),
    })?;
    let relative: Vec<String> = top_first
        .iter()
        .map(|p| escape_overlay(p.strip_prefix(&parent).unwrap_or(p)))
        .collect();
    let data = legacy_overlay_data(&relative, upper, work, options);
    if data.len() > PAGE_LIMIT {
        return Err(SetupError::TooManyLayers {
            n_layers: top_first.len(),
        });
    }
    kernel.chdir(&parent).map_err(overlay_error)?;
    kernel
        .mount(
            Some(Path::new("overlay")),
            target,
            Some("overlay"),
            MsFlags::empty(),
            Some(&data),
        )
        .map_err(overlay_error)?;
    kernel.chdir(Path::new("/")).map_err(overlay_error)
}

/// Resolves `path` (absolute, inside the container) under `root` without ever leaving it,
/// creating missing components: directories, and for the last one a directory or an empty
/// file. Every created path (relative to the root) is appended to `stubs`.
pub fn ensure_in_root<K: Kernel>(
    kernel: &mut K,
    root: &Path,
    path: &str,
    last_is_dir: bool,
    stubs: &mut Vec<PathBuf>,
) -> Result<PathBuf, SetupError> {
    let resolve_error = |errno| SetupError::Resolve {
        path: path.to_string(),
        errno,
    };
    let mut pending: Vec<PathBuf> = Path::new(path)
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(PathBuf::from(name)),
            Component::ParentDir => Some(PathBuf::from("..")),
            _ => None,
        })
        .collect();
    let mut current = PathBuf::new();
    let mut n_links = 0;
    while let Some(name) = pending.pop() {
        if name.as_os_str() == ".." {
            current.pop();
            continue;
        }
        let candidate = current.join(&name);
        let is_last = pending.is_empty();
        let host = root.join(&candidate);
        match kernel.file_kind(&host).map_err(resolve_error)? {
            Some(FileKind::Symlink) => {
                n_links += 1;
                if n_links > 40 {
                    return Err(resolve_error(Errno::ELOOP));
                }
                let target = kernel.read_link(&host).map_err(resolve_error)?;
                if target.is_absolute() {
                    current = PathBuf::new();
                }
                for component in target.components().rev() {
                    match component {
                        Component::Normal(part) => pending.push(PathBuf::from(part)),
                        Component::ParentDir => pending.push(PathBuf::from("..")),
                        _ => {}
                    }
                }
            }
            Some(FileKind::Directory) => current = candidate,
            Some(_) if is_last => current = candidate,
            Some(_) => return Err(resolve_error(Errno::ENOTDIR)),
            None => {
                let create = if is_last && !last_is_dir {
                    kernel.create_file(&host, 0o644)
                } else {
                    kernel.mkdir(&host, 0o755)
                };
                create.map_err(|errno| SetupError::CreateStub {
                    path: host.clone(),
                    errno,
                })?;
                stubs.push(candidate.clone());
                current = candidate;
            }
        }
    }
    Ok(root.join(current))
}

fn mount_at<K: Kernel>(
    kernel: &mut K,
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), SetupError> {
    kernel
        .mount(source, target, fstype, flags, data)
        .map_err(|errno| SetupError::Mount {
            what: fstype
                .map(str::to_string)
                .or_else(|| source.map(|s| s.display().to_string()))
                .unwrap_or_else(|| "remount".into()),
            target: target.to_path_buf(),
            errno,
        })
}

const NODE_FLAGS: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// Everything pid 1 does between `unshare` and the workload's fork: root mount, special file
/// systems, bind mounts, /etc files, hostname, loopback, masks, `pivot_root`. Returns the
/// stubs it had to create (also written to `spec.stubs_file` before each creation matters).
pub fn setup_root<K: Kernel>(kernel: &mut K, spec: &InitSpec) -> Result<Vec<PathBuf>, SetupError> {
    kernel
        .mount(
            None,
            Path::new("/"),
            None,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None,
        )
        .map_err(SetupError::MakePrivate)?;
    let root: PathBuf = match &spec.root {
        RootSource::Overlay {
            lowerdirs_bottom_first,
            upper,
            work,
            merged,
        } => {
            mount_overlay(kernel, lowerdirs_bottom_first, upper, work, merged)?;
            merged.clone()
        }
        RootSource::Copy { rootfs } => {
            // pivot_root needs the new root to be a mount point.
            mount_at(
                kernel,
                Some(rootfs),
                rootfs,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            )?;
            rootfs.clone()
        }
    };
    let mut stubs = Vec::new();
    let result = mount_everything(kernel, spec, &root, &mut stubs);
    record_stubs(kernel, spec, &stubs)?;
    result?;
    pivot(kernel, &root)?;
    Ok(stubs)
}

fn record_stubs<K: Kernel>(
    kernel: &mut K,
    spec: &InitSpec,
    stubs: &[PathBuf],
) -> Result<(), SetupError> {
    if stubs.is_empty() {
        return Ok(());
    }
    let mut text = String::new();
    for stub in stubs {
        text.push_str(&stub.to_string_lossy());
        text.push('\n');
    }
    kernel
        .write_file(&spec.stubs_file, text.as_bytes())
        .map_err(|errno| SetupError::RecordStubs {
            path: spec.stubs_file.clone(),
            errno,
        })
}

fn mount_everything<K: Kernel>(
    kernel: &mut K,
    spec: &InitSpec,
    root: &Path,
    stubs: &mut Vec<PathBuf>,
) -> Result<(), SetupError> {
    // /proc of the new pid namespace (we are its pid 1).
    let proc_dir = ensure_in_root(kernel, root, "/proc", true, stubs)?;
    mount_at(
        kernel,
        Some(Path::new("proc")),
        &proc_dir,
        Some("proc"),
        NODE_FLAGS,
        None,
    )?;

    // /dev: a small tmpfs with the standard nodes, its own devpts and shm.
    let dev = ensure_in_root(kernel, root, "/dev", true, stubs)?;
    mount_at(
        kernel,
        Some(Path::new("tmpfs")),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let path = dev.join(name);
        kernel
            .mknod(
                &path,
                SFlag::S_IFCHR,
                0o666,
                nix::sys::stat::makedev(major, minor),
            )
            .map_err(|errno| SetupError::Device { path, errno })?;
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("core", "/proc/kcore"),
        ("ptmx", "pts/ptmx"),
    ] {
        let path = dev.join(name);
        kernel
            .symlink(Path::new(target), &path)
            .map_err(|errno| SetupError::Symlink { path, errno })?;
    }
    for (name, fstype, flags, data) in [
        (
            "pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            "newinstance,ptmxmode=0666,mode=0620,gid=5",
        ),
        ("shm", "tmpfs", NODE_FLAGS, "mode=1777,size=65536k"),
        ("mqueue", "mqueue", NODE_FLAGS, ""),
    ] {
        let path = dev.join(name);
        kernel
            .mkdir(&path, 0o755)
            .map_err(|errno| SetupError::Device {
                path: path.clone(),
                errno,
            })?;
        let data = if data.is_empty() { None } else { Some(data) };
        mount_at(
            kernel,
            Some(Path::new(fstype)),
            &path,
            Some(fstype),
            flags,
            data,
        )?;
    }

    // /sys, read-only.
    let sys = ensure_in_root(kernel, root, "/sys", true, stubs)?;
    mount_at(
        kernel,
        Some(Path::new("sysfs")),
        &sys,
        Some("sysfs"),
        NODE_FLAGS | MsFlags::MS_RDONLY,
        None,
    )?;

    // Generated /etc files and the caller's bind mounts.
    for (container_path, host_file) in &spec.etc_files {
        let target = ensure_in_root(kernel, root, container_path, false, stubs)?;
        mount_at(
            kernel,
            Some(host_file),
            &target,
            None,
            MsFlags::MS_BIND,
            None,
        )?;
    }
    for mount in &spec.mounts {
        bind_mount(kernel, root, mount, stubs)?;
    }
    for mount in &spec.extra_mounts {
        extra_mount(kernel, root, mount, stubs)?;
    }

    kernel
        .sethostname(&spec.hostname)
        .map_err(|errno| SetupError::Hostname {
            hostname: spec.hostname.clone(),
            errno,
        })?;
    if spec.network == NetworkMode::None {
        kernel.loopback_up().map_err(SetupError::Loopback)?;
    }

    for path in MASKED_PATHS {
        let target = root.join(&path[1..]);
        match kernel.file_kind(&target) {
            Ok(Some(FileKind::Directory)) => mount_at(
                kernel,
                Some(Path::new("tmpfs")),
                &target,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None,
            )?,
            Ok(Some(_)) => mount_at(
                kernel,
                Some(Path::new("/dev/null")),
                &target,
                None,
                MsFlags::MS_BIND,
                None,
            )?,
            _ => {}
        }
    }
    for path in READONLY_PATHS {
        let target = root.join(&path[1..]);
        if !matches!(kernel.file_kind(&target), Ok(Some(_))) {
            continue;
        }
        mount_at(
            kernel,
            Some(&target),
            &target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?;
        mount_at(
            kernel,
            None,
            &target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | NODE_FLAGS,
            None,
        )?;
    }
    Ok(())
}

fn bind_mount<K: Kernel>(
    kernel: &mut K,
    root: &Path,
    mount: &BindMount,
    stubs: &mut Vec<PathBuf>,
) -> Result<(), SetupError> {
    let source_is_dir = matches!(
        kernel.file_kind(&mount.source),
        Ok(Some(FileKind::Directory))
    ) || std::fs::metadata(&mount.source)
        .map(|m| m.is_dir())
        .unwrap_or(false);
    let target = ensure_in_root(kernel, root, &mount.destination, source_is_dir, stubs)?;
    mount_at(
        kernel,
        Some(&mount.source),
        &target,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    if mount.read_only {
        mount_at(
            kernel,
            None,
            &target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None,
        )?;
    }
    Ok(())
}

/// One [`ExtraMount`]; its mount point in the root is created (and recorded as a stub) when
/// missing, like a bind mount's.
fn extra_mount<K: Kernel>(
    kernel: &mut K,
    root: &Path,
    mount: &ExtraMount,
    stubs: &mut Vec<PathBuf>,
) -> Result<(), SetupError> {
    match mount {
        ExtraMount::Bind(bind) => bind_mount(kernel, root, bind, stubs),
        ExtraMount::Tmpfs {
            destination,
            size_bytes,
        } => {
            let target = ensure_in_root(kernel, root, destination, true, stubs)?;
            let data = size_bytes.map(|size| format!("size={size}"));
            mount_at(
                kernel,
                Some(Path::new("tmpfs")),
                &target,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                data.as_deref(),
            )
        }
        ExtraMount::Overlay {
            lowerdirs_bottom_first,
            scratch,
            subpath,
            destination,
            read_only,
        } => {
            let (upper, work, merged) = (
                scratch.join("upper"),
                scratch.join("work"),
                scratch.join("merged"),
            );
            mount_overlay(kernel, lowerdirs_bottom_first, &upper, &work, &merged)?;
            // Resolved inside the mounted tree; anything this had to create lands in the
            // throw-away upper dir, and means the source does not exist.
            let mut created = Vec::new();
            let source = ensure_in_root(kernel, &merged, subpath, true, &mut created)?;
            if !created.is_empty() {
                return Err(SetupError::MountSourceMissing {
                    path: subpath.clone(),
                });
            }
            bind_mount(
                kernel,
                root,
                &BindMount {
                    source,
                    destination: destination.clone(),
                    read_only: *read_only,
                },
                stubs,
            )
        }
        ExtraMount::File {
            destination,
            contents,
            mode,
            uid,
            gid,
            scratch,
        } => {
            mount_at(
                kernel,
                Some(Path::new("tmpfs")),
                scratch,
                Some("tmpfs"),
                NODE_FLAGS,
                Some("mode=700,size=1048576k"),
            )?;
            let file = scratch.join("file");
            let file_error = |errno| SetupError::MountFile {
                path: file.clone(),
                errno,
            };
            kernel.create_file(&file, *mode).map_err(file_error)?;
            kernel.write_file(&file, contents).map_err(file_error)?;
            kernel.lchown(&file, *uid, *gid).map_err(file_error)?;
            let target = ensure_in_root(kernel, root, destination, false, stubs)?;
            mount_at(kernel, Some(&file), &target, None, MsFlags::MS_BIND, None)?;
            mount_at(
                kernel,
                None,
                &target,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | NODE_FLAGS,
                None,
            )
        }
    }
}

/// `pivot_root(".", ".")` then detach the old root stacked on top (runc's way: no put_old
/// directory is needed, so nothing is created in the image).
fn pivot<K: Kernel>(kernel: &mut K, root: &Path) -> Result<(), SetupError> {
    let pivot_error = |errno| SetupError::PivotRoot {
        root: root.to_path_buf(),
        errno,
    };
    kernel.chdir(root).map_err(pivot_error)?;
    kernel
        .pivot_root(Path::new("."), Path::new("."))
        .map_err(pivot_error)?;
    kernel
        .mount(
            None,
            Path::new("."),
            None,
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            None,
        )
        .map_err(pivot_error)?;
    kernel
        .umount(Path::new("."), MntFlags::MNT_DETACH)
        .map_err(pivot_error)?;
    kernel.chdir(Path::new("/")).map_err(pivot_error)
}

/// Opens a pty in the container's own devpts, sends the master to the caller over `socket`,
/// and makes the slave the workload's stdin, stdout, stderr and controlling terminal (the
/// caller must already be a session leader).
pub fn attach_pty<K: Kernel>(kernel: &mut K, socket: i32) -> Result<(), SetupError> {
    let (master, slave) = kernel.open_pty().map_err(SetupError::Pty)?;
    kernel.send_fd(socket, master).map_err(SetupError::Pty)?;
    // kiln answers once the master has the caller's window size and mode; exec'ing before that
    // would let the workload see a 0x0 terminal.
    kernel.wait_byte(socket).map_err(SetupError::Pty)?;
    kernel.close(master);
    kernel.close(socket);
    for fd in 0..3 {
        kernel.dup2(slave, fd).map_err(SetupError::Pty)?;
    }
    kernel.close(slave);
    kernel.set_controlling_tty().map_err(SetupError::Pty)
}

/// What the workload will execute, after the lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Executable {
    pub path: PathBuf,
    pub argv: Vec<String>,
    pub env: Vec<String>,
}

fn env_value<'a>(env: &'a [String], key: &str) -> Option<&'a str> {
    env.iter()
        .rev()
        .find_map(|var| var.strip_prefix(key)?.strip_prefix('='))
}

/// Docker's environment defaults: PATH, HOSTNAME, HOME (from the user) when not given.
pub fn complete_env(env: &[String], hostname: &str, exec_user: &ExecUser) -> Vec<String> {
    let mut out = Vec::new();
    if env_value(env, "PATH").is_none() {
        out.push(format!("PATH={DEFAULT_PATH}"));
    }
    if env_value(env, "HOSTNAME").is_none() {
        out.push(format!("HOSTNAME={hostname}"));
    }
    out.extend(env.iter().cloned());
    if env_value(env, "HOME").is_none() {
        out.push(format!("HOME={}", exec_user.home));
    }
    out
}

fn read_text<K: Kernel>(kernel: &mut K, path: &str) -> String {
    kernel
        .read_file(Path::new(path))
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

/// Finds `command` as Go's `exec.LookPath` does (which is what gives Docker its messages).
pub fn look_path<K: Kernel>(
    kernel: &mut K,
    command: &str,
    path_var: &str,
) -> Result<PathBuf, SetupError> {
    let check = |kernel: &mut K, candidate: &Path| -> Option<bool> {
        kernel.is_executable(candidate).ok().flatten()
    };
    if command.contains('/') {
        return match check(kernel, Path::new(command)) {
            Some(true) => Ok(PathBuf::from(command)),
            Some(false) => Err(SetupError::NotExecutable {
                command: command.into(),
            }),
            None => Err(SetupError::CommandNotFound {
                command: command.into(),
            }),
        };
    }
    let mut found_not_executable = false;
    for dir in path_var.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = Path::new(dir).join(command);
        match check(kernel, &candidate) {
            Some(true) => return Ok(candidate),
            Some(false) => found_not_executable = true,
            None => {}
        }
    }
    if found_not_executable {
        return Err(SetupError::NotExecutable {
            command: command.into(),
        });
    }
    Err(SetupError::CommandNotFound {
        command: command.into(),
    })
}

/// Everything the workload does after `pivot_root` and before `execve`, in this order: user
/// lookup (in the image's own files), working directory creation as root, capabilities (still
/// root, so CAP_SETPCAP allows the bounding-set drop), uid/gid/groups (a non-root uid loses the
/// remaining effective caps), `no_new_privs`, `chdir` (as the user), executable lookup.
pub fn prepare_process<K: Kernel>(
    kernel: &mut K,
    spec: &InitSpec,
) -> Result<Executable, SetupError> {
    let passwd = read_text(kernel, "/etc/passwd");
    let group = read_text(kernel, "/etc/group");
    let exec_user = user::resolve(&spec.user, &passwd, &group)?;
    let env = complete_env(&spec.env, &spec.hostname, &exec_user);

    let mut stubs = Vec::new();
    ensure_in_root(kernel, Path::new("/"), &spec.cwd, true, &mut stubs).map_err(
        |err| match err {
            SetupError::Resolve { errno, .. } | SetupError::CreateStub { errno, .. } => {
                SetupError::Workdir {
                    path: spec.cwd.clone(),
                    errno,
                }
            }
            other => other,
        },
    )?;

    kernel
        .limit_capabilities(&DEFAULT_CAPABILITIES)
        .map_err(SetupError::Capabilities)?;
    kernel
        .set_credentials(exec_user.uid, exec_user.gid, &exec_user.groups)
        .map_err(|errno| SetupError::Credentials {
            uid: exec_user.uid,
            gid: exec_user.gid,
            errno,
        })?;
    kernel.set_no_new_privs().map_err(SetupError::NoNewPrivs)?;
    kernel
        .chdir(Path::new(&spec.cwd))
        .map_err(|errno| SetupError::Chdir {
            path: spec.cwd.clone(),
            errno,
        })?;
    let path_var = env_value(&env, "PATH").unwrap_or(DEFAULT_PATH).to_string();
    let path = look_path(kernel, &spec.argv[0], &path_var)?;
    Ok(Executable {
        path,
        argv: spec.argv.clone(),
        env,
    })
}

#[cfg(test)]
mod tests {
    use super::super::kernel::tests::Recorder;
    use super::*;

    fn spec(root: RootSource) -> InitSpec {
        InitSpec {
            root,
            state_dir: "/state".into(),
            stubs_file: "/state/stubs".into(),
            argv: vec!["echo".into(), "hi".into()],
            env: vec!["A=1".into()],
            cwd: "/work/dir".into(),
            user: "kiln".into(),
            hostname: "box".into(),
            network: NetworkMode::None,
            mounts: vec![BindMount {
                source: "/host/data".into(),
                destination: "/data".into(),
                read_only: true,
            }],
            extra_mounts: Vec::new(),
            etc_files: vec![("/etc/hosts".into(), "/state/etc/hosts".into())],
            tty_socket_fd: None,
            parent_pid: 1,
            parent_tid: 0,
            status_fd: 9,
            exit_fd: 10,
        }
    }

    fn overlay() -> RootSource {
        RootSource::Overlay {
            lowerdirs_bottom_first: vec!["/s/base".into(), "/s/top".into()],
            upper: "/c/upper".into(),
            work: "/c/work".into(),
            merged: "/c/merged".into(),
        }
    }

    /// Runs `setup_root` on a fake root that has /proc, /dev, /sys, /etc and the masked paths.
    fn check_setup(recorder: &mut Recorder, spec: &InitSpec) -> Result<Vec<PathBuf>, SetupError> {
        setup_root(recorder, spec)
    }

    fn image_root(root: &str) -> Recorder {
        let dirs: Vec<String> = ["proc", "dev", "sys", "etc", "proc/scsi", "proc/sys"]
            .iter()
            .map(|d| format!("{root}/{d}"))
            .collect();
        let dirs: Vec<&str> = dirs.iter().map(String::as_str).collect();
        let mut recorder = Recorder::with_dirs(&dirs);
        recorder
            .files
            .insert(PathBuf::from(format!("{root}/proc/kcore")), FileKind::File);
        recorder
            .files
            .insert("/host/data".into(), FileKind::Directory);
        recorder
    }

    #[test]
    fn overlay_root_is_mounted_with_plain_diff_options_top_layer_first() {
        let mut recorder = image_root("/c/merged");
        check_setup(&mut recorder, &spec(overlay())).unwrap();
        assert_eq!(recorder.calls[0], "mount - / - MS_REC | MS_PRIVATE -");
        assert_eq!(
            recorder.calls[1],
            "fsconfig-overlay [\"/s/top\", \"/s/base\"] /c/upper /c/work [(\"index\", \"off\"), (\"metacopy\", \"off\"), (\"redirect_dir\", \"off\"), (\"volatile\", \"\")] Some(\"/c/merged\")"
        );
    }

    /// A kernel before 5.10 refuses `volatile` (EINVAL, through both mount APIs): the overlay
    /// is mounted without it.
    #[test]
    fn overlay_without_volatile_where_the_kernel_refuses_it() {
        let mut recorder = Recorder::default();
        recorder
            .failures_containing
            .push(("volatile".into(), Errno::EINVAL));
        mount_overlay(
            &mut recorder,
            &["/s/base".into()],
            Path::new("/u"),
            Path::new("/w"),
            Path::new("/m"),
        )
        .unwrap();
        assert_eq!(recorder.calls.len(), 3, "{:#?}", recorder.calls);
        assert!(recorder.calls[0].contains("(\"volatile\", \"\")"));
        assert!(recorder.calls[1].ends_with("redirect_dir=off,volatile"));
        assert_eq!(
            recorder.calls[2],
            "fsconfig-overlay [\"/s/base\"] /u /w [(\"index\", \"off\"), (\"metacopy\", \"off\"), (\"redirect_dir\", \"off\")] Some(\"/m\")"
        );
        // Any other error is not retried.
        let mut recorder = Recorder::default();
        recorder
            .failures
            .insert("fsconfig-overlay".into(), Errno::EPERM);
        assert!(mount_overlay(
            &mut recorder,
            &["/s/base".into()],
            Path::new("/u"),
            Path::new("/w"),
            Path::new("/m"),
        )
        .is_err());
        assert_eq!(recorder.calls.len(), 1, "{:#?}", recorder.calls);
    }

    #[test]
    fn extra_mounts_tmpfs_secret_file_and_overlay_view() {
        let mut recorder = image_root("/c/merged");
        recorder
            .files
            .insert("/s/stage".into(), FileKind::Directory);
        recorder
            .files
            .insert("/state/m2/merged/out".into(), FileKind::Directory);
        let mut init = spec(overlay());
        init.extra_mounts = vec![
            ExtraMount::Tmpfs {
                destination: "/scratch".into(),
                size_bytes: Some(4096),
            },
            ExtraMount::File {
                destination: "/run/secrets/token".into(),
                contents: b"s3cret".to_vec(),
                mode: 0o400,
                uid: 0,
                gid: 0,
                scratch: "/state/m1".into(),
            },
            ExtraMount::Overlay {
                lowerdirs_bottom_first: vec!["/s/stage".into()],
                scratch: "/state/m2".into(),
                subpath: "/out".into(),
                destination: "/in".into(),
                read_only: true,
            },
        ];
        let stubs = check_setup(&mut recorder, &init).unwrap();
        for call in [
            "mount tmpfs /c/merged/scratch tmpfs MS_NOSUID | MS_NODEV size=4096",
            "mount tmpfs /state/m1 tmpfs MS_NOSUID | MS_NODEV | MS_NOEXEC mode=700,size=1048576k",
            "create /state/m1/file 400",
            "mount /state/m1/file /c/merged/run/secrets/token - MS_BIND -",
            "mount /state/m2/merged/out /c/merged/in - MS_BIND | MS_REC -",
        ] {
            assert!(recorder.has(call), "{call} not in {:#?}", recorder.calls);
        }
        // The secret's bytes are written, never logged, and never in Debug output.
        assert!(!format!("{:?}", init.extra_mounts).contains("s3cret"));
        for stub in ["scratch", "run", "run/secrets", "run/secrets/token", "in"] {
            assert!(stubs.contains(&PathBuf::from(stub)), "{stub} in {stubs:?}");
        }
    }

    #[test]
    fn overlay_mount_source_must_exist() {
        let mut recorder = image_root("/c/merged");
        let mut init = spec(overlay());
        init.extra_mounts = vec![ExtraMount::Overlay {
            lowerdirs_bottom_first: vec!["/s/stage".into()],
            scratch: "/state/m".into(),
            subpath: "/missing".into(),
            destination: "/in".into(),
            read_only: true,
        }];
        assert_eq!(
            check_setup(&mut recorder, &init).unwrap_err(),
            SetupError::MountSourceMissing {
                path: "/missing".into()
            }
        );
    }

    #[test]
    fn legacy_mount_uses_relative_names_past_a_page() {
        let mut recorder = Recorder::default();
        recorder
            .failures
            .insert("fsconfig-overlay".into(), Errno::ENOSYS);
        let lowers: Vec<PathBuf> = (0..50)
            .map(|i| PathBuf::from(format!("/var/lib/kiln/snapshots/{i:064}")))
            .collect();
        mount_overlay(
            &mut recorder,
            &lowers,
            Path::new("/u"),
            Path::new("/w"),
            Path::new("/m"),
        )
        .unwrap();
        let chdir = recorder.position("chdir /var/lib/kiln/snapshots");
        let mount = recorder
            .calls
            .iter()
            .position(|c| c.starts_with("mount overlay /m overlay"))
            .unwrap();
        assert!(chdir < mount);
        let call = &recorder.calls[mount];
        assert!(call.contains(&format!("lowerdir={:064}:", 49)), "{call}");
        assert!(!call.contains("/var/lib/kiln/snapshots/"), "{call}");
        assert!(call
            .ends_with("upperdir=/u,workdir=/w,index=off,metacopy=off,redirect_dir=off,volatile"));
        assert_eq!(recorder.calls.last().unwrap(), "chdir /");
    }

    #[test]
    fn legacy_mount_with_short_names_stays_absolute() {
        let mut recorder = Recorder::default();
        recorder
            .failures
            .insert("fsconfig-overlay".into(), Errno::EINVAL);
        mount_overlay(
            &mut recorder,
            &["/a,b".into(), "/c".into()],
            Path::new("/u"),
            Path::new("/w"),
            Path::new("/m"),
        )
        .unwrap();
        assert!(recorder.has("mount overlay /m overlay - lowerdir=/c:/a\\,b,upperdir=/u,workdir=/w,index=off,metacopy=off,redirect_dir=off,volatile"), "{:#?}", recorder.calls);
    }

    #[test]
    fn special_filesystems_devices_masks_and_pivot() {
        let mut recorder = image_root("/c/merged");
        let stubs = check_setup(&mut recorder, &spec(overlay())).unwrap();
        for call in [
            "mount proc /c/merged/proc proc MS_NOSUID | MS_NODEV | MS_NOEXEC -",
            "mount tmpfs /c/merged/dev tmpfs MS_NOSUID | MS_STRICTATIME mode=755,size=65536k",
            "mknod /c/merged/dev/null S_IFCHR 666 1:3",
            "mknod /c/merged/dev/urandom S_IFCHR 666 1:9",
            "mknod /c/merged/dev/tty S_IFCHR 666 5:0",
            "symlink pts/ptmx /c/merged/dev/ptmx",
            "mount devpts /c/merged/dev/pts devpts MS_NOSUID | MS_NOEXEC newinstance,ptmxmode=0666,mode=0620,gid=5",
            "mount sysfs /c/merged/sys sysfs MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC -",
            "mount /dev/null /c/merged/proc/kcore - MS_BIND -",
            "mount tmpfs /c/merged/proc/scsi tmpfs MS_RDONLY -",
            "mount - /c/merged/proc/sys - MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_REMOUNT | MS_BIND -",
            "sethostname box",
            "loopback_up",
            "mount /state/etc/hosts /c/merged/etc/hosts - MS_BIND -",
            "mount /host/data /c/merged/data - MS_BIND | MS_REC -",
            "mount - /c/merged/data - MS_RDONLY | MS_REMOUNT | MS_BIND -",
        ] {
            assert!(recorder.has(call), "missing {call:?} in {:#?}", recorder.calls);
        }
        let pivot = recorder.position("pivot_root . .");
        assert_eq!(recorder.calls[pivot - 1], "chdir /c/merged");
        assert_eq!(recorder.calls[pivot + 2], "umount . MNT_DETACH");
        // /etc/hosts and /data were missing from the image: recorded as stubs.
        assert_eq!(
            stubs,
            vec![PathBuf::from("etc/hosts"), PathBuf::from("data")]
        );
        assert!(recorder.has("write /state/stubs"));
        assert_eq!(
            recorder.contents[Path::new("/state/stubs")],
            b"etc/hosts\ndata\n"
        );
        assert!(!recorder.calls.iter().any(|c| c.contains("chroot")));
    }

    #[test]
    fn copy_root_is_bind_mounted_onto_itself() {
        let mut recorder = image_root("/c/rootfs");
        check_setup(
            &mut recorder,
            &spec(RootSource::Copy {
                rootfs: "/c/rootfs".into(),
            }),
        )
        .unwrap();
        assert_eq!(
            recorder.calls[1],
            "mount /c/rootfs /c/rootfs - MS_BIND | MS_REC -"
        );
    }

    #[test]
    fn image_symlinks_cannot_lead_mounts_out_of_the_root() {
        let mut recorder = Recorder::with_dirs(&["/r", "/r/real"]);
        recorder.files.insert("/r/etc".into(), FileKind::Symlink);
        recorder
            .links
            .insert("/r/etc".into(), "/../../../real".into());
        let mut stubs = Vec::new();
        let path = ensure_in_root(
            &mut recorder,
            Path::new("/r"),
            "/etc/hosts",
            false,
            &mut stubs,
        )
        .unwrap();
        assert_eq!(path, PathBuf::from("/r/real/hosts"));
        assert_eq!(stubs, vec![PathBuf::from("real/hosts")]);
        assert!(recorder.has("create /r/real/hosts 644"));
    }

    #[test]
    fn failures_name_the_step() {
        let mut recorder = image_root("/c/merged");
        recorder.failures.insert("pivot_root".into(), Errno::EINVAL);
        let err = check_setup(&mut recorder, &spec(overlay())).unwrap_err();
        assert_eq!(
            err.to_string(),
            "pivot_root into /c/merged: EINVAL: Invalid argument"
        );
    }

    #[test]
    fn process_credentials_caps_then_user_then_no_new_privs() {
        let mut recorder = Recorder::with_dirs(&["/work"]);
        recorder.contents.insert(
            "/etc/passwd".into(),
            b"root:x:0:0::/root:/bin/sh\nkiln:x:1000:1000::/home/kiln:/bin/sh\n".to_vec(),
        );
        recorder
            .contents
            .insert("/etc/group".into(), b"daemon:x:1:kiln\n".to_vec());
        recorder.executables.insert("/bin/echo".into(), true);
        let executable = prepare_process(&mut recorder, &spec(overlay())).unwrap();
        assert_eq!(executable.path, PathBuf::from("/bin/echo"));
        assert_eq!(
            executable.env,
            vec![
                format!("PATH={DEFAULT_PATH}"),
                "HOSTNAME=box".into(),
                "A=1".into(),
                "HOME=/home/kiln".into()
            ]
        );
        let mkdir = recorder.position("mkdir /work/dir 755");
        let caps = recorder.position(&format!("caps {:?}", DEFAULT_CAPABILITIES));
        let creds = recorder.position("credentials 1000 1000 [1000, 1]");
        let nnp = recorder.position("no_new_privs");
        let chdir = recorder.position("chdir /work/dir");
        assert!(mkdir < caps && caps < creds && creds < nnp && nnp < chdir);
    }

    #[test]
    fn pty_is_opened_inside_and_becomes_the_controlling_terminal() {
        let mut recorder = Recorder::default();
        attach_pty(&mut recorder, 7).unwrap();
        assert_eq!(
            recorder.calls,
            vec![
                "open_pty",
                "send_fd 7 100",
                "wait_byte 7",
                "close 100",
                "close 7",
                "dup2 101 0",
                "dup2 101 1",
                "dup2 101 2",
                "close 101",
                "set_controlling_tty"
            ]
        );
    }

    #[test]
    fn lookup_errors_match_docker() {
        let mut recorder = Recorder::default();
        recorder.executables.insert("/usr/bin/script".into(), false);
        assert_eq!(
            look_path(&mut recorder, "foo", "/bin:/usr/bin")
                .unwrap_err()
                .to_string(),
            "exec: \"foo\": executable file not found in $PATH"
        );
        assert_eq!(
            look_path(&mut recorder, "script", "/bin:/usr/bin").unwrap_err(),
            SetupError::NotExecutable {
                command: "script".into()
            }
        );
        assert!(look_path(&mut recorder, "/nope", "/bin").is_err());
    }

    #[test]
    fn unknown_user_fails_before_any_credential_change() {
        let mut recorder = Recorder::default();
        let mut unknown = spec(overlay());
        unknown.user = "ghost".into();
        let err = prepare_process(&mut recorder, &unknown).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unable to find user ghost: no matching entries in passwd file"
        );
        assert!(!recorder.calls.iter().any(|c| c.starts_with("credentials")));
    }
}
