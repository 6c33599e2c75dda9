//! A container's root file system on disk: its state directory (`containers/<id>/`) with an
//! overlay upper/work/merged triple, or — where overlayfs cannot be used — a full copy of the
//! layers (the copy snapshotter). Also the mount-point stubs list and cleanup.
//!
//! The overlay itself is mounted by `kiln init` inside the container's mount namespace (see
//! `setup`), never here, so no mount of a container is ever visible on the host. Choosing the
//! driver automatically probes overlayfs with the new mount API without mounting anything:
//! `fsconfig(FSCONFIG_CMD_CREATE)` builds a superblock on scratch dirs next to the state dir,
//! then the fd is closed.
//!
//! Layer snapshots are in overlay's own format (whiteouts are 0:0 character devices, opaque
//! directories carry `trusted.overlay.opaque=y`); the copy snapshotter applies them layer by
//! layer so both drivers show the same tree. It is written by hand over walkdir because no
//! crate here applies overlay-format diffs.

use super::kernel::{Kernel, Linux};
use super::{ContainerError, RootSource};
use nix::errno::Errno;
use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The snapshotter a caller asks for (`--storage-driver`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StorageDriver {
    /// Overlay when the kernel and the state directory's file system support it, else copy.
    #[default]
    Auto,
    Overlay,
    Copy,
}

impl std::str::FromStr for StorageDriver {
    type Err = ContainerError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "auto" => Ok(StorageDriver::Auto),
            "overlay" | "overlayfs" | "overlay2" => Ok(StorageDriver::Overlay),
            "copy" | "vfs" => Ok(StorageDriver::Copy),
            other => Err(ContainerError::UnknownStorageDriver {
                name: other.to_string(),
            }),
        }
    }
}

/// The snapshotter a [`Rootfs`] actually uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsedDriver {
    Overlay,
    Copy,
}

/// One container's root file system and state directory.
#[derive(Debug)]
pub struct Rootfs {
    state_dir: PathBuf,
    lowerdirs: Vec<PathBuf>,
    driver: UsedDriver,
    /// Copy driver: the identity of every path of the pristine copy, to find the changes.
    pristine: BTreeMap<PathBuf, Identity>,
}

/// Probe results per file-system device, so a build probes once.
static PROBED: Mutex<BTreeMap<u64, bool>> = Mutex::new(BTreeMap::new());

fn create_dir(path: &Path) -> Result<(), ContainerError> {
    std::fs::create_dir(path).map_err(|source| ContainerError::CreateStateDir {
        path: path.to_path_buf(),
        source,
    })
}

/// Probes overlayfs on the file system holding `state_dir` without mounting anything. A
/// success is remembered per process and, in a marker file next to the state directories
/// naming the kernel release and device, across processes: closing a probe superblock costs
/// tens of milliseconds (an RCU grace period), too much for every `kiln run`.
fn overlay_works(state_dir: &Path) -> Result<(), Errno> {
    let device = std::fs::metadata(state_dir)
        .map(|meta| meta.dev())
        .map_err(|_| Errno::ENOENT)?;
    if let Some(ok) = PROBED
        .lock()
        .map(|map| map.get(&device).copied())
        .ok()
        .flatten()
    {
        return if ok { Ok(()) } else { Err(Errno::EOPNOTSUPP) };
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim();
    let marker_text = format!("overlay ok {release} {device}\n");
    let marker = state_dir
        .parent()
        .map(|parent| parent.join(".overlay-probe"));
    if let Some(marker) = &marker {
        if std::fs::read_to_string(marker).ok().as_deref() == Some(marker_text.as_str()) {
            return Ok(());
        }
    }
    let probe = state_dir.join("probe");
    let dirs = [probe.join("l"), probe.join("u"), probe.join("w")];
    for dir in &dirs {
        std::fs::create_dir_all(dir).map_err(|_| Errno::EIO)?;
    }
    let mut kernel = Linux;
    let mut result = kernel.mount_overlay_fsconfig(
        &[dirs[0].clone()],
        &dirs[1],
        &dirs[2],
        &super::setup::OVERLAY_OPTIONS,
        None,
    );
    if result == Err(Errno::ENOSYS) {
        // No new mount API: trust /proc/filesystems.
        let listed = std::fs::read_to_string("/proc/filesystems")
            .map(|text| {
                text.lines()
                    .any(|line| line.trim_end().ends_with("\toverlay"))
            })
            .unwrap_or(false);
        result = if listed { Ok(()) } else { Err(Errno::ENODEV) };
    }
    let _ = std::fs::remove_dir_all(&probe);
    if let Ok(mut map) = PROBED.lock() {
        map.insert(device, result.is_ok());
    }
    if let (Ok(()), Some(marker)) = (result, &marker) {
        // Best effort, atomically: a missing marker only costs a probe.
        let tmp = marker.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, &marker_text).is_ok() {
            let _ = std::fs::rename(&tmp, marker);
        }
    }
    result
}

impl Rootfs {
    /// Creates `state_dir` (which must not exist; its parent must) for a container over
    /// `lowerdirs` (bottom layer first, like an image's layer list). With the copy driver the
    /// layers are copied now; with overlay nothing is mounted until the container starts.
    pub fn prepare(
        state_dir: &Path,
        lowerdirs: &[PathBuf],
        driver: StorageDriver,
    ) -> Result<Rootfs, ContainerError> {
        for lower in lowerdirs {
            if !lower.is_dir() {
                return Err(ContainerError::LowerDir {
                    path: lower.clone(),
                });
            }
        }
        if state_dir.exists() {
            return Err(ContainerError::StateDirExists {
                path: state_dir.to_path_buf(),
            });
        }
        create_dir(state_dir)?;
        let rootfs = Rootfs {
            state_dir: state_dir.to_path_buf(),
            lowerdirs: lowerdirs.to_vec(),
            driver: UsedDriver::Copy,
            pristine: BTreeMap::new(),
        };
        match Rootfs::choose_and_fill(rootfs, driver) {
            Ok(rootfs) => Ok(rootfs),
            Err((rootfs, err)) => {
                let _ = std::fs::remove_dir_all(&rootfs.state_dir);
                Err(err)
            }
        }
    }

    fn choose_and_fill(
        mut rootfs: Rootfs,
        driver: StorageDriver,
    ) -> Result<Rootfs, (Rootfs, ContainerError)> {
        let use_overlay = match driver {
            StorageDriver::Copy => false,
            StorageDriver::Overlay => match overlay_works(&rootfs.state_dir) {
                Ok(()) => true,
                Err(errno) => {
                    let path = rootfs.state_dir.clone();
                    return Err((rootfs, ContainerError::OverlayUnavailable { path, errno }));
                }
            },
            // Overlay needs at least one lower dir.
            StorageDriver::Auto => {
                !rootfs.lowerdirs.is_empty() && overlay_works(&rootfs.state_dir).is_ok()
            }
        };
        let result = if use_overlay && !rootfs.lowerdirs.is_empty() {
            rootfs.driver = UsedDriver::Overlay;
            ["upper", "work", "merged"]
                .iter()
                .try_for_each(|name| create_dir(&rootfs.state_dir.join(name)))
        } else {
            rootfs.driver = UsedDriver::Copy;
            let target = rootfs.state_dir.join("rootfs");
            create_dir(&target)
                .and_then(|()| {
                    rootfs
                        .lowerdirs
                        .iter()
                        .try_for_each(|lower| apply_layer(&mut Linux, lower, &target))
                })
                .and_then(|()| {
                    rootfs.pristine = snapshot_identity(&target)?;
                    Ok(())
                })
        };
        match result {
            Ok(()) => Ok(rootfs),
            Err(err) => Err((rootfs, err)),
        }
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    pub fn driver(&self) -> UsedDriver {
        self.driver
    }

    /// Lower dirs, bottom first.
    pub fn lowerdirs(&self) -> &[PathBuf] {
        &self.lowerdirs
    }

    /// The overlay upper dir: exactly the container's changes, in overlay format (whiteouts,
    /// opaque xattrs). `None` with the copy driver.
    pub fn upper_dir(&self) -> Option<PathBuf> {
        match self.driver {
            UsedDriver::Overlay => Some(self.state_dir.join("upper")),
            UsedDriver::Copy => None,
        }
    }

    /// The container's changes as an overlay-format diff directory (whiteouts as 0:0 character
    /// devices, replaced directories marked `trusted.overlay.opaque=y`), ready for a layer
    /// commit. Overlay: the upper dir as it is. Copy: computed now into `<state>/diff` by
    /// comparing the root with the (inode, ctime) of every path right after the copy — a
    /// process cannot write, chmod, chown or replace a path without changing one of them.
    /// Call after the container exited and after [`Rootfs::remove_mount_stubs`].
    pub fn changes(&self) -> Result<PathBuf, ContainerError> {
        match self.driver {
            UsedDriver::Overlay => Ok(self.state_dir.join("upper")),
            UsedDriver::Copy => {
                let diff = self.state_dir.join("diff");
                let _ = std::fs::remove_dir_all(&diff);
                create_dir(&diff)?;
                copy_diff(
                    &mut Linux,
                    &self.state_dir.join("rootfs"),
                    &self.pristine,
                    &diff,
                )
                .map_err(|source| ContainerError::CopyLayer {
                    path: diff.clone(),
                    source,
                })?;
                Ok(diff)
            }
        }
    }

    /// With the copy driver, the complete root (lower dirs applied, then the container's
    /// changes); with overlay, the upper dir.
    pub fn changes_dir(&self) -> PathBuf {
        match self.driver {
            UsedDriver::Overlay => self.state_dir.join("upper"),
            UsedDriver::Copy => self.state_dir.join("rootfs"),
        }
    }

    pub(crate) fn root_source(&self) -> RootSource {
        match self.driver {
            UsedDriver::Overlay => RootSource::Overlay {
                lowerdirs_bottom_first: self.lowerdirs.clone(),
                upper: self.state_dir.join("upper"),
                work: self.state_dir.join("work"),
                merged: self.state_dir.join("merged"),
            },
            UsedDriver::Copy => RootSource::Copy {
                rootfs: self.state_dir.join("rootfs"),
            },
        }
    }

    /// Removes the mount points kiln had to create (for /etc/hosts, /proc, bind mount targets,
    /// ...) from the upper dir or copied root, deepest first, as long as they are still empty
    /// (the process may have written into a created parent directory; that stays). Call it
    /// after the container exited and before committing. Returns what was removed.
    pub fn remove_mount_stubs(&self) -> Result<Vec<PathBuf>, ContainerError> {
        let stubs_file = self.state_dir.join("stubs");
        let text = match std::fs::read_to_string(&stubs_file) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(ContainerError::ReadStubs {
                    path: stubs_file,
                    source,
                })
            }
        };
        let base = self.changes_dir();
        let mut removed = Vec::new();
        for line in text.lines().rev().filter(|line| !line.is_empty()) {
            let path = base.join(line);
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let result = if meta.is_dir() {
                match std::fs::remove_dir(&path) {
                    // Not empty: the process put something there; keep it.
                    Err(err) if err.raw_os_error() == Some(libc::ENOTEMPTY) => continue,
                    other => other,
                }
            } else if meta.is_file() && meta.len() == 0 {
                std::fs::remove_file(&path)
            } else {
                continue;
            };
            result.map_err(|source| ContainerError::Remove {
                path: path.clone(),
                source,
            })?;
            removed.push(PathBuf::from(line));
        }
        let _ = std::fs::remove_file(&stubs_file);
        if self.driver == UsedDriver::Overlay {
            self.remove_copied_up_parents(&removed, &text)?;
        }
        Ok(removed)
    }

    /// Making a stub inside an existing directory copies that directory up into the upper
    /// dir; once the stub is gone it is an empty copy that differs from the lower one only by
    /// its mtime, which kiln caused. Remove such copies so that a step that changed nothing
    /// there commits nothing there (BuildKit's differ skips them too). A directory the process
    /// wrote into, chmod'ed, chown'ed or made opaque is kept.
    fn remove_copied_up_parents(
        &self,
        removed: &[PathBuf],
        stubs: &str,
    ) -> Result<(), ContainerError> {
        let stubs: std::collections::BTreeSet<&Path> = stubs
            .lines()
            .filter(|l| !l.is_empty())
            .map(Path::new)
            .collect();
        let mut parents: Vec<&Path> = removed
            .iter()
            .flat_map(|stub| stub.ancestors().skip(1))
            .filter(|parent| !parent.as_os_str().is_empty() && !stubs.contains(parent))
            .collect();
        parents.sort_by_key(|parent| std::cmp::Reverse(parent.components().count()));
        parents.dedup();
        let upper = self.changes_dir();
        for parent in parents {
            let path = upper.join(parent);
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let empty =
                meta.is_dir() && std::fs::read_dir(&path).is_ok_and(|mut dir| dir.next().is_none());
            if !empty || is_opaque(&path) {
                continue;
            }
            // The directory the lower layers show there (the topmost one that has the path).
            let lower = self
                .lowerdirs
                .iter()
                .rev()
                .find_map(|lower| std::fs::symlink_metadata(lower.join(parent)).ok());
            let same = lower.is_some_and(|lower| {
                lower.is_dir()
                    && lower.mode() == meta.mode()
                    && lower.uid() == meta.uid()
                    && lower.gid() == meta.gid()
            });
            if !same {
                continue;
            }
            std::fs::remove_dir(&path).map_err(|source| ContainerError::Remove {
                path: path.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Removes the state directory (upper, work, copied root, generated files).
    pub fn cleanup(self) -> Result<(), ContainerError> {
        match std::fs::remove_dir_all(&self.state_dir) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(ContainerError::Remove {
                path: self.state_dir.clone(),
                source,
            }),
        }
    }
}

fn io_errno(errno: Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(errno as i32)
}

fn is_opaque(path: &Path) -> bool {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    let name = c"trusted.overlay.opaque";
    let mut value = [0u8; 4];
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let n = unsafe {
        libc::lgetxattr(
            c_path.as_ptr(),
            name.as_ptr(),
            value.as_mut_ptr() as *mut libc::c_void,
            value.len(),
        )
    };
    n == 1 && value[0] == b'y'
}

fn remove_any(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err),
    }
}

fn set_times(path: &Path, meta: &std::fs::Metadata) -> std::io::Result<()> {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    utimensat(
        None,
        path,
        &TimeSpec::new(meta.atime(), meta.atime_nsec()),
        &TimeSpec::new(meta.mtime(), meta.mtime_nsec()),
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(io_errno)
}

/// Applies one overlay-format layer onto `target`: whiteouts delete, opaque directories drop
/// what lower layers put there, everything else is copied with mode, owner and times.
fn apply_layer<K: Kernel>(
    kernel: &mut K,
    layer: &Path,
    target: &Path,
) -> Result<(), ContainerError> {
    let copy_error = |source: std::io::Error| ContainerError::CopyLayer {
        path: layer.to_path_buf(),
        source,
    };
    let mut dirs = Vec::new();
    for entry in walkdir::WalkDir::new(layer)
        .min_depth(1)
        .sort_by_file_name()
    {
        let entry = entry.map_err(|err| copy_error(err.into()))?;
        let relative = entry
            .path()
            .strip_prefix(layer)
            .expect("walkdir stays inside");
        let destination = target.join(relative);
        let meta = entry.path().symlink_metadata().map_err(copy_error)?;
        let file_type = meta.file_type();
        let name = entry.file_name().as_bytes();
        if name == b".wh..wh..opq" {
            if let Some(parent) = destination.parent() {
                clear_dir(parent).map_err(copy_error)?;
            }
            continue;
        }
        if let Some(hidden) = name.strip_prefix(b".wh.") {
            let hidden = destination.with_file_name(std::ffi::OsStr::from_bytes(hidden));
            remove_any(&hidden).map_err(copy_error)?;
            continue;
        }
        if file_type.is_char_device() && meta.rdev() == 0 {
            remove_any(&destination).map_err(copy_error)?;
            continue;
        }
        if file_type.is_dir() {
            let existing = std::fs::symlink_metadata(&destination);
            match existing {
                Ok(existing) if existing.is_dir() => {
                    if is_opaque(entry.path()) {
                        clear_dir(&destination).map_err(copy_error)?;
                    }
                }
                _ => {
                    remove_any(&destination).map_err(copy_error)?;
                    std::fs::create_dir(&destination).map_err(copy_error)?;
                }
            }
            std::fs::set_permissions(&destination, std::fs::Permissions::from_mode(meta.mode()))
                .map_err(copy_error)?;
            dirs.push((destination.clone(), meta.clone()));
        } else {
            remove_any(&destination).map_err(copy_error)?;
            if file_type.is_file() {
                std::fs::copy(entry.path(), &destination).map_err(copy_error)?;
                std::fs::set_permissions(
                    &destination,
                    std::fs::Permissions::from_mode(meta.mode() & 0o7777),
                )
                .map_err(copy_error)?;
            } else if file_type.is_symlink() {
                let link = std::fs::read_link(entry.path()).map_err(copy_error)?;
                kernel
                    .symlink(&link, &destination)
                    .map_err(|e| copy_error(io_errno(e)))?;
            } else {
                let kind = nix::sys::stat::SFlag::from_bits_truncate(meta.mode() & libc::S_IFMT);
                kernel
                    .mknod(&destination, kind, meta.mode() & 0o7777, meta.rdev())
                    .map_err(|e| copy_error(io_errno(e)))?;
            }
        }
        kernel
            .lchown(&destination, meta.uid(), meta.gid())
            .map_err(|e| copy_error(io_errno(e)))?;
        if file_type.is_file() && meta.mode() & 0o6000 != 0 {
            // chown clears setuid/setgid: put them back.
            std::fs::set_permissions(
                &destination,
                std::fs::Permissions::from_mode(meta.mode() & 0o7777),
            )
            .map_err(copy_error)?;
        }
        if !file_type.is_dir() {
            set_times(&destination, &meta).map_err(copy_error)?;
        }
    }
    // Directory times last: filling a directory changes its mtime.
    for (destination, meta) in dirs.iter().rev() {
        set_times(destination, meta).map_err(copy_error)?;
    }
    Ok(())
}

/// What a process cannot change about a path without it showing: the inode (replaced), the
/// ctime (any write or metadata change), and size and mtime as a second guard within one
/// coarse clock tick.
/// What tells a file apart from the one the copy started with: the inode and its birth time
/// (an inode number freed by a deletion is reused at once by the next create, so a directory
/// removed and made again often has the old number; its birth time differs), then the change
/// and modification times and the size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    ino: u64,
    born: Option<std::time::SystemTime>,
    ctime: (i64, i64),
    size: u64,
    mtime: (i64, i64),
}

impl Identity {
    /// The same file object (not necessarily the same content).
    fn same_object(&self, other: &Identity) -> bool {
        self.ino == other.ino && self.born == other.born
    }
}

fn identity(meta: &std::fs::Metadata) -> Identity {
    Identity {
        ino: meta.ino(),
        born: meta.created().ok(),
        ctime: (meta.ctime(), meta.ctime_nsec()),
        size: meta.size(),
        mtime: (meta.mtime(), meta.mtime_nsec()),
    }
}

fn snapshot_identity(root: &Path) -> Result<BTreeMap<PathBuf, Identity>, ContainerError> {
    let mut map = BTreeMap::new();
    for entry in walkdir::WalkDir::new(root).min_depth(1) {
        let entry = entry.map_err(|err| ContainerError::CopyLayer {
            path: root.to_path_buf(),
            source: err.into(),
        })?;
        let meta = entry
            .path()
            .symlink_metadata()
            .map_err(|source| ContainerError::CopyLayer {
                path: entry.path().to_path_buf(),
                source,
            })?;
        let relative = entry
            .path()
            .strip_prefix(root)
            .expect("walkdir stays inside");
        map.insert(relative.to_path_buf(), identity(&meta));
    }
    Ok(map)
}

fn set_opaque(path: &Path) -> std::io::Result<()> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let name = c"trusted.overlay.opaque";
    // SAFETY: valid NUL-terminated strings and a one-byte value.
    let ret = unsafe {
        libc::lsetxattr(
            c_path.as_ptr(),
            name.as_ptr(),
            b"y".as_ptr() as *const libc::c_void,
            1,
            0,
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Copies one entry of `root` into `diff` (hard link for regular files: same file system),
/// creating its missing parent directories with their metadata from `root`.
fn copy_entry<K: Kernel>(
    kernel: &mut K,
    root: &Path,
    diff: &Path,
    relative: &Path,
) -> std::io::Result<()> {
    let mut ancestors: Vec<&Path> = relative.ancestors().skip(1).collect();
    ancestors.reverse();
    for ancestor in ancestors.into_iter().filter(|a| !a.as_os_str().is_empty()) {
        if !diff.join(ancestor).exists() {
            copy_node(kernel, &root.join(ancestor), &diff.join(ancestor))?;
        }
    }
    let target = diff.join(relative);
    if target.symlink_metadata().is_ok() {
        return Ok(());
    }
    copy_node(kernel, &root.join(relative), &target)
}

fn copy_node<K: Kernel>(kernel: &mut K, source: &Path, target: &Path) -> std::io::Result<()> {
    let meta = source.symlink_metadata()?;
    let file_type = meta.file_type();
    if file_type.is_file() {
        if std::fs::hard_link(source, target).is_ok() {
            return Ok(());
        }
        std::fs::copy(source, target)?;
    } else if file_type.is_dir() {
        std::fs::create_dir(target)?;
    } else if file_type.is_symlink() {
        kernel
            .symlink(&std::fs::read_link(source)?, target)
            .map_err(io_errno)?;
    } else {
        let kind = nix::sys::stat::SFlag::from_bits_truncate(meta.mode() & libc::S_IFMT);
        kernel
            .mknod(target, kind, meta.mode() & 0o7777, meta.rdev())
            .map_err(io_errno)?;
    }
    kernel
        .lchown(target, meta.uid(), meta.gid())
        .map_err(io_errno)?;
    if !file_type.is_symlink() {
        std::fs::set_permissions(
            target,
            std::fs::Permissions::from_mode(meta.mode() & 0o7777),
        )?;
    }
    set_times(target, &meta)
}

/// Writes the overlay-format difference between `root` now and its `pristine` identities.
fn copy_diff<K: Kernel>(
    kernel: &mut K,
    root: &Path,
    pristine: &BTreeMap<PathBuf, Identity>,
    diff: &Path,
) -> std::io::Result<()> {
    let mut replaced_dirs: Vec<PathBuf> = Vec::new();
    for entry in walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name() {
        let entry = entry.map_err(std::io::Error::from)?;
        let relative = entry
            .path()
            .strip_prefix(root)
            .expect("walkdir stays inside");
        let meta = entry.path().symlink_metadata()?;
        match pristine.get(relative) {
            Some(old) if *old == identity(&meta) => continue,
            Some(old) if !old.same_object(&identity(&meta)) && meta.is_dir() => {
                // A new directory where one was: hide everything the lower layers had there.
                copy_entry(kernel, root, diff, relative)?;
                set_opaque(&diff.join(relative))?;
                replaced_dirs.push(relative.to_path_buf());
            }
            _ => copy_entry(kernel, root, diff, relative)?,
        }
    }
    // Deletions: a whiteout for each topmost path that is gone.
    for relative in pristine.keys() {
        if root.join(relative).symlink_metadata().is_ok() {
            continue;
        }
        let parent_gone = relative
            .parent()
            .map(|p| !p.as_os_str().is_empty() && root.join(p).symlink_metadata().is_err())
            .unwrap_or(false);
        let under_replaced = replaced_dirs.iter().any(|dir| relative.starts_with(dir));
        if parent_gone || under_replaced {
            continue;
        }
        if let Some(parent) = relative.parent().filter(|p| !p.as_os_str().is_empty()) {
            copy_entry(kernel, root, diff, parent)?;
        }
        kernel
            .mknod(&diff.join(relative), nix::sys::stat::SFlag::S_IFCHR, 0, 0)
            .map_err(io_errno)?;
    }
    Ok(())
}

fn clear_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                remove_any(&entry?.path())?;
            }
            Ok(())
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(dir: &Path) -> Vec<String> {
        let mut out: Vec<String> = walkdir::WalkDir::new(dir)
            .min_depth(1)
            .sort_by_file_name()
            .into_iter()
            .map(|entry| {
                let entry = entry.unwrap();
                let relative = entry
                    .path()
                    .strip_prefix(dir)
                    .unwrap()
                    .display()
                    .to_string();
                if entry.file_type().is_file() {
                    format!(
                        "{relative}={}",
                        std::fs::read_to_string(entry.path()).unwrap()
                    )
                } else {
                    relative
                }
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn copy_driver_applies_whiteouts_and_opaque_dirs() {
        let scratch = tempfile::tempdir().unwrap();
        let base = scratch.path().join("base");
        let top = scratch.path().join("top");
        for dir in ["a/keep", "gone", "opq"] {
            std::fs::create_dir_all(base.join(dir)).unwrap();
        }
        std::fs::write(base.join("a/keep/f"), "base").unwrap();
        std::fs::write(base.join("gone/x"), "x").unwrap();
        std::fs::write(base.join("opq/old"), "old").unwrap();
        std::fs::write(base.join("deleted"), "d").unwrap();
        std::fs::create_dir_all(top.join("opq")).unwrap();
        std::fs::create_dir_all(top.join("a")).unwrap();
        std::fs::write(top.join("a/new"), "new").unwrap();
        std::fs::write(top.join("opq/.wh..wh..opq"), "").unwrap();
        std::fs::write(top.join("opq/fresh"), "fresh").unwrap();
        nix::sys::stat::mknod(
            &top.join("deleted"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
        std::fs::write(top.join(".wh.gone"), "").unwrap();

        let state = scratch.path().join("c1");
        let rootfs = Rootfs::prepare(&state, &[base, top], StorageDriver::Copy).unwrap();
        assert_eq!(rootfs.driver(), UsedDriver::Copy);
        assert_eq!(rootfs.upper_dir(), None);
        assert_eq!(
            tree(&rootfs.changes_dir()),
            vec![
                "a",
                "a/keep",
                "a/keep/f=base",
                "a/new=new",
                "opq",
                "opq/fresh=fresh"
            ]
        );
        rootfs.cleanup().unwrap();
        assert!(!state.exists());
    }

    #[test]
    fn copy_driver_changes_are_an_overlay_format_diff() {
        let scratch = tempfile::tempdir().unwrap();
        let base = scratch.path().join("base");
        for dir in ["keep/sub", "gone/inner", "replaced", "touched"] {
            std::fs::create_dir_all(base.join(dir)).unwrap();
        }
        for file in [
            "keep/sub/same",
            "keep/edit",
            "keep/chmod",
            "keep/rm",
            "gone/inner/f",
            "replaced/old",
        ] {
            std::fs::write(base.join(file), file).unwrap();
        }
        let state = scratch.path().join("c1");
        let rootfs = Rootfs::prepare(&state, &[base], StorageDriver::Copy).unwrap();
        let root = rootfs.changes_dir();
        std::fs::write(root.join("keep/edit"), "edited").unwrap();
        std::fs::set_permissions(
            root.join("keep/chmod"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        std::fs::remove_file(root.join("keep/rm")).unwrap();
        std::fs::remove_dir_all(root.join("gone")).unwrap();
        std::fs::remove_dir_all(root.join("replaced")).unwrap();
        std::fs::create_dir(root.join("replaced")).unwrap();
        std::fs::write(root.join("replaced/new"), "new").unwrap();
        std::fs::write(root.join("added"), "added").unwrap();

        let diff = rootfs.changes().unwrap();
        let mut listing: Vec<String> = walkdir::WalkDir::new(&diff)
            .min_depth(1)
            .sort_by_file_name()
            .into_iter()
            .map(|entry| {
                let entry = entry.unwrap();
                let meta = entry.path().symlink_metadata().unwrap();
                let relative = entry
                    .path()
                    .strip_prefix(&diff)
                    .unwrap()
                    .display()
                    .to_string();
                if meta.file_type().is_char_device() && meta.rdev() == 0 {
                    format!("{relative} (whiteout)")
                } else if meta.is_dir() && is_opaque(entry.path()) {
                    format!("{relative} (opaque)")
                } else {
                    relative
                }
            })
            .collect();
        listing.sort();
        assert_eq!(
            listing,
            vec![
                "added",
                "gone (whiteout)",
                "keep",
                "keep/chmod",
                "keep/edit",
                "keep/rm (whiteout)",
                "replaced (opaque)",
                "replaced/new",
            ]
        );
        assert_eq!(
            std::fs::read_to_string(diff.join("keep/edit")).unwrap(),
            "edited"
        );
        rootfs.cleanup().unwrap();
    }

    #[test]
    fn overlay_driver_prepares_empty_upper_work_merged() {
        let scratch = tempfile::tempdir().unwrap();
        let base = scratch.path().join("base");
        std::fs::create_dir(&base).unwrap();
        let state = scratch.path().join("c1");
        let rootfs = Rootfs::prepare(&state, &[base], StorageDriver::Auto).unwrap();
        if rootfs.driver() == UsedDriver::Overlay {
            assert_eq!(rootfs.upper_dir(), Some(state.join("upper")));
            assert!(state.join("work").is_dir() && state.join("merged").is_dir());
        }
        assert!(!state.join("probe").exists());
        assert!(matches!(
            Rootfs::prepare(&state, &[], StorageDriver::Copy),
            Err(ContainerError::StateDirExists { .. })
        ));
        rootfs.cleanup().unwrap();
    }

    #[test]
    fn copied_up_parents_of_stubs_go_when_unchanged() {
        use std::os::unix::fs::PermissionsExt;
        let scratch = tempfile::tempdir().unwrap();
        let lower = scratch.path().join("lower");
        for dir in ["etc", "run", "var/lib"] {
            std::fs::create_dir_all(lower.join(dir)).unwrap();
            std::fs::set_permissions(lower.join(dir), std::fs::Permissions::from_mode(0o755))
                .unwrap();
        }
        let state = scratch.path().join("c1");
        let rootfs = Rootfs::prepare(&state, &[lower], StorageDriver::Overlay).unwrap();
        let upper = rootfs.changes_dir();
        // etc: copied up for a stub, unchanged; run: chmod'ed by the process; var/lib: the
        // process wrote a file there.
        for (dir, mode) in [("etc", 0o755), ("run", 0o700), ("var/lib", 0o755)] {
            std::fs::create_dir_all(upper.join(dir)).unwrap();
            std::fs::set_permissions(upper.join(dir), std::fs::Permissions::from_mode(mode))
                .unwrap();
        }
        std::fs::set_permissions(upper.join("var"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::fs::write(upper.join("etc/hosts"), "").unwrap();
        std::fs::create_dir(upper.join("run/x")).unwrap();
        std::fs::create_dir(upper.join("var/lib/m")).unwrap();
        std::fs::write(upper.join("var/lib/kept"), "k").unwrap();
        std::fs::write(state.join("stubs"), "etc/hosts\nrun/x\nvar/lib/m\n").unwrap();
        rootfs.remove_mount_stubs().unwrap();
        assert!(!upper.join("etc").exists());
        assert!(upper.join("run").is_dir() && !upper.join("run/x").exists());
        assert!(upper.join("var/lib/kept").is_file());
    }

    #[test]
    fn stubs_are_removed_only_while_empty() {
        let scratch = tempfile::tempdir().unwrap();
        let state = scratch.path().join("c1");
        let rootfs = Rootfs::prepare(&state, &[], StorageDriver::Copy).unwrap();
        let root = rootfs.changes_dir();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/hosts"), "").unwrap();
        std::fs::create_dir_all(root.join("data/sub")).unwrap();
        std::fs::create_dir_all(root.join("used")).unwrap();
        std::fs::write(root.join("used/file"), "kept").unwrap();
        std::fs::write(state.join("stubs"), "etc/hosts\ndata\ndata/sub\nused\n").unwrap();
        let removed = rootfs.remove_mount_stubs().unwrap();
        assert_eq!(
            removed,
            vec![
                PathBuf::from("data/sub"),
                PathBuf::from("data"),
                PathBuf::from("etc/hosts")
            ]
        );
        assert!(root.join("etc").is_dir());
        assert!(root.join("used/file").is_file());
        assert!(
            "overlay".parse::<StorageDriver>().unwrap() == StorageDriver::Overlay
                && "copy".parse::<StorageDriver>().unwrap() == StorageDriver::Copy
                && "zfs".parse::<StorageDriver>().is_err()
        );
    }
}
