//! Applies an uncompressed OCI layer tar onto a directory, safely.
//!
//! Path rules (decided after docker's `archive.Unpack` and containerd's `archive.Apply`, then
//! made stricter where they are lenient):
//! - A leading `/` and `.` components are dropped: `/etc/x`, `./etc/x` and `etc/x` all land in
//!   `<dest>/etc/x`, as docker and containerd do (they join every name onto the root).
//! - Any `..` component is refused, even `a/../b`, which docker would clean to `b`: a layer
//!   writer never needs it and refusing is simpler to trust.
//! - Parent components are resolved one `openat(O_NOFOLLOW | O_DIRECTORY)` at a time from a
//!   descriptor of `dest`: a symlink as a parent component is refused, wherever it points
//!   (containerd would resolve it inside the root; kiln's own layers never need that). Missing
//!   parents are created (0755, root-owned), as containerd does.
//! - Hard-link targets follow the same rules and must already exist in `dest`. In
//!   [`WhiteoutMode::Overlay`] `dest` holds only this layer, so a link to a lower layer's file
//!   (which the image-spec leaves undefined, image-spec issue #1204) is refused; kiln's own
//!   commits never write one, since linking a lower file copies it up first.
//! - The final component is never followed: an existing entry in the way is removed (a
//!   directory over a directory is kept and merged) and the new one created with `O_EXCL`.
//!
//! Whiteouts ([`WhiteoutMode`]): per image-spec `layer.md` they only hide content of lower
//! layers, never entries of the same layer, so entries created by this layer are remembered
//! and spared. Entries named `.wh..wh.*` other than the opaque marker are ignored, as docker
//! and containerd do. Sockets never appear in layers; the root entry (`./`) is skipped so
//! the caller's directory keeps its own metadata. Metadata is restored in the order that
//! keeps it: owner, then mode (chown clears setuid), then xattrs (chown clears
//! `security.capability`), then mtime; directory mtimes are set after the last entry.
//!
//! Knows tar and whiteouts; nothing of snapshots, stores or containers. Concurrent writers in
//! `dest` are not defended against beyond never following a symlink.

use super::whiteout::{self, TarName};
use super::xattr;
use super::LayerError;
use crate::digest::{Digest, DigestReader};
use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{
    fchmodat, fstatat, mkdirat, mknodat, utimensat, FchmodatFlags, Mode, SFlag, UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use std::collections::HashSet;
use std::ffi::{CString, OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// How tar whiteout markers are materialised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhiteoutMode {
    /// For a snapshot used as an overlay lower directory: `.wh.NAME` becomes a 0/0 character
    /// device NAME and `.wh..wh..opq` sets `trusted.overlay.opaque=y` on its directory, so that
    /// overlayfs hides the same content of the layers below this one.
    Overlay,
    /// For flattening onto a directory that already holds the lower layers: `.wh.NAME` deletes
    /// NAME, `.wh..wh..opq` empties its directory of everything this layer did not create.
    Delete,
}

/// What an application did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyStats {
    /// sha256 of the whole tar stream as read (compare with the config's `rootfs.diff_ids`).
    pub diff_id: Digest,
    /// Bytes of the tar stream.
    pub n_tar_bytes: u64,
    /// Tar entries materialised (files, directories, links, devices, fifos).
    pub n_entries: u64,
    /// `.wh.NAME` markers handled.
    pub n_whiteouts: u64,
    /// `.wh..wh..opq` markers handled.
    pub n_opaque: u64,
    /// Bytes of regular-file content written.
    pub n_bytes: u64,
}

const COPY_BUFFER: usize = 1 << 20;

/// Applies the uncompressed layer tar `tar` onto `dest` (which must exist). Reads the stream
/// to its end (past the tar's end-of-archive blocks) and returns its sha256 as `diff_id`, so
/// the caller can check it against the image config. On error, `dest` holds the entries
/// applied so far: apply into a fresh directory and discard it on failure.
pub fn apply_layer(
    tar: impl Read,
    dest: &Path,
    mode: WhiteoutMode,
) -> Result<ApplyStats, LayerError> {
    let root =
        open_dir_at(None, dest.as_os_str(), false).map_err(|source| LayerError::OpenDest {
            path: dest.to_path_buf(),
            source,
        })?;
    let mut applier = Applier {
        root,
        mode,
        added: HashSet::new(),
        dir_mtimes: Vec::new(),
        stats: Counts::default(),
        buffer: vec![0u8; COPY_BUFFER],
    };
    let mut reader = DigestReader::new(tar);
    {
        let mut archive = tar::Archive::new(&mut reader);
        for entry in archive.entries().map_err(LayerError::ReadTar)? {
            let entry = entry.map_err(LayerError::ReadTar)?;
            applier.apply_entry(entry)?;
        }
    }
    io::copy(&mut reader, &mut io::sink()).map_err(LayerError::ReadTar)?;
    applier.finish()?;
    let (diff_id, n_tar_bytes, _) = reader.finish();
    let counts = applier.stats;
    Ok(ApplyStats {
        diff_id,
        n_tar_bytes,
        n_entries: counts.n_entries,
        n_whiteouts: counts.n_whiteouts,
        n_opaque: counts.n_opaque,
        n_bytes: counts.n_bytes,
    })
}

#[derive(Default)]
struct Counts {
    n_entries: u64,
    n_whiteouts: u64,
    n_opaque: u64,
    n_bytes: u64,
}

/// A tar entry name split into safe components: no empty, `.` or `..` components.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SafePath {
    components: Vec<OsString>,
}

impl SafePath {
    /// Normalizes a tar name: drops a leading `/` and `.` components, refuses `..`.
    pub(crate) fn parse(raw: &[u8]) -> Result<SafePath, &'static str> {
        let mut components = Vec::new();
        for component in raw.split(|b| *b == b'/') {
            match component {
                b"" | b"." => continue,
                b".." => return Err("it contains a `..` component"),
                name => components.push(OsString::from_vec(name.to_vec())),
            }
        }
        Ok(SafePath { components })
    }

    fn is_root(&self) -> bool {
        self.components.is_empty()
    }

    fn parent(&self) -> &[OsString] {
        &self.components[..self.components.len().saturating_sub(1)]
    }

    fn file_name(&self) -> &OsStr {
        self.components
            .last()
            .map(OsString::as_os_str)
            .unwrap_or(OsStr::new(""))
    }

    fn to_path_buf(&self) -> PathBuf {
        self.components.iter().collect()
    }

    fn child(&self, name: &OsStr) -> SafePath {
        let mut components = self.components.clone();
        components.push(name.to_os_string());
        SafePath { components }
    }

    fn parent_path(&self) -> SafePath {
        SafePath {
            components: self.parent().to_vec(),
        }
    }
}

struct Metadata {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: TimeSpec,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

struct Applier {
    root: OwnedFd,
    mode: WhiteoutMode,
    /// Relative paths this layer created: whiteouts and opaque markers spare them.
    added: HashSet<PathBuf>,
    dir_mtimes: Vec<(SafePath, String, TimeSpec)>,
    stats: Counts,
    buffer: Vec<u8>,
}

fn io_err(errno: Errno) -> io::Error {
    io::Error::from(errno)
}

fn open_dir_at(dirfd: Option<RawFd>, name: &OsStr, nofollow: bool) -> io::Result<OwnedFd> {
    let mut flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    if nofollow {
        flags |= OFlag::O_NOFOLLOW;
    }
    let fd = openat(dirfd, name, flags, Mode::empty()).map_err(io_err)?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `/proc/self/fd/<dirfd>/<name>`: a path whose parent is exactly `dirfd`, for the path-only
/// l*xattr calls. The final component is never followed by those calls.
fn proc_path(dirfd: RawFd, name: &OsStr) -> io::Result<CString> {
    let mut bytes = format!("/proc/self/fd/{dirfd}/").into_bytes();
    bytes.extend_from_slice(name.as_bytes());
    CString::new(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains a NUL byte"))
}

fn lstat_at(dirfd: RawFd, name: &OsStr) -> io::Result<Option<nix::sys::stat::FileStat>> {
    match fstatat(Some(dirfd), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(Some(stat)),
        Err(Errno::ENOENT) => Ok(None),
        Err(errno) => Err(io_err(errno)),
    }
}

fn file_kind(stat: &nix::sys::stat::FileStat) -> SFlag {
    SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits())
}

/// Removes `name` in `dirfd`, recursively for a directory, never following symlinks.
fn remove_all_at(dirfd: RawFd, name: &OsStr) -> io::Result<()> {
    let Some(stat) = lstat_at(dirfd, name)? else {
        return Ok(());
    };
    if file_kind(&stat) == SFlag::S_IFDIR {
        let dir = open_dir_at(Some(dirfd), name, true)?;
        for child in list_dir(dir.as_raw_fd())? {
            remove_all_at(dir.as_raw_fd(), &child)?;
        }
        unlinkat(Some(dirfd), name, UnlinkatFlags::RemoveDir).map_err(io_err)
    } else {
        unlinkat(Some(dirfd), name, UnlinkatFlags::NoRemoveDir).map_err(io_err)
    }
}

/// Names in the directory `dirfd`, without `.` and `..` (read through `/proc/self/fd`, which
/// names exactly that directory; nix's `dir` feature is not enabled in this crate).
fn list_dir(dirfd: RawFd) -> io::Result<Vec<OsString>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/self/fd/{dirfd}"))? {
        names.push(entry?.file_name());
    }
    Ok(names)
}

impl Applier {
    fn apply_entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), LayerError> {
        let raw_name = entry.path_bytes().into_owned();
        let entry_name = String::from_utf8_lossy(&raw_name).into_owned();
        let entry_type = entry.header().entry_type();
        if matches!(
            entry_type,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
        ) {
            return Ok(());
        }
        let path = SafePath::parse(&raw_name).map_err(|reason| LayerError::UnsafePath {
            entry: entry_name.clone(),
            reason,
        })?;
        if path.is_root() {
            return Ok(());
        }
        match whiteout::classify(path.file_name()) {
            TarName::Plain => {}
            TarName::Reserved => return Ok(()),
            TarName::Invalid => {
                return Err(LayerError::UnsafePath {
                    entry: entry_name,
                    reason: "whiteout of an empty, `.` or `..` name",
                })
            }
            TarName::Whiteout(target) => return self.whiteout(&path, &target, &entry_name),
            TarName::Opaque => return self.opaque(&path, &entry_name),
        }
        let metadata = self.read_metadata(&mut entry, &entry_name)?;
        let parent = self.resolve_dir(path.parent(), true, &entry_name)?;
        let dirfd = parent.as_raw_fd();
        let name = path.file_name().to_os_string();
        let apply_err = |step: &'static str| {
            let entry = entry_name.clone();
            move |source: io::Error| LayerError::Apply {
                entry,
                step,
                source,
            }
        };

        let is_dir = entry_type == tar::EntryType::Directory;
        // Clear the way: keep an existing directory under a directory entry, remove anything else.
        match lstat_at(dirfd, &name).map_err(apply_err("inspect the existing entry"))? {
            Some(stat) if is_dir && file_kind(&stat) == SFlag::S_IFDIR => {}
            Some(_) => {
                remove_all_at(dirfd, &name).map_err(apply_err("remove the existing entry"))?
            }
            None => {}
        }

        let perm = Mode::from_bits_truncate(0o600);
        let mut is_symlink = false;
        match entry_type {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let fd = openat(
                    Some(dirfd),
                    name.as_os_str(),
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    perm,
                )
                .map_err(io_err)
                .map_err(apply_err("create the file"))?;
                let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
                loop {
                    let n = entry
                        .read(&mut self.buffer)
                        .map_err(apply_err("read the file content"))?;
                    if n == 0 {
                        break;
                    }
                    file.write_all(&self.buffer[..n])
                        .map_err(apply_err("write the file content"))?;
                    self.stats.n_bytes += n as u64;
                }
            }
            tar::EntryType::Directory => {
                match mkdirat(
                    Some(dirfd),
                    name.as_os_str(),
                    Mode::from_bits_truncate(0o700),
                ) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(errno) => return Err(apply_err("create the directory")(io_err(errno))),
                }
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| LayerError::Apply {
                        entry: entry_name.clone(),
                        step: "read the symlink target",
                        source: io::Error::new(io::ErrorKind::InvalidData, "no link name"),
                    })?
                    .into_owned();
                symlinkat(OsStr::from_bytes(&target), Some(dirfd), name.as_os_str())
                    .map_err(io_err)
                    .map_err(apply_err("create the symlink"))?;
                is_symlink = true;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|target| target.into_owned())
                    .unwrap_or_default();
                self.hard_link(&target, dirfd, &name, &entry_name)?;
                self.added.insert(path.to_path_buf());
                self.stats.n_entries += 1;
                // A hard link shares the target's inode and so its metadata.
                return Ok(());
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let kind = match entry_type {
                    tar::EntryType::Char => SFlag::S_IFCHR,
                    tar::EntryType::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                let device = if kind == SFlag::S_IFIFO {
                    0
                } else {
                    let major = entry.header().device_major().ok().flatten().unwrap_or(0);
                    let minor = entry.header().device_minor().ok().flatten().unwrap_or(0);
                    libc::makedev(major, minor)
                };
                mknodat(Some(dirfd), name.as_os_str(), kind, perm, device)
                    .map_err(io_err)
                    .map_err(apply_err("create the device node or fifo"))?;
            }
            other => {
                return Err(LayerError::UnsupportedEntry {
                    entry: entry_name,
                    kind: format!("{other:?}"),
                })
            }
        }

        fchownat(
            Some(dirfd),
            name.as_os_str(),
            Some(Uid::from_raw(metadata.uid as u32)),
            Some(Gid::from_raw(metadata.gid as u32)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(io_err)
        .map_err(apply_err("set the owner"))?;
        if !is_symlink {
            // Linux cannot chmod a symlink; their mode is always 0777.
            fchmodat(
                Some(dirfd),
                name.as_os_str(),
                Mode::from_bits_truncate(metadata.mode & 0o7777),
                FchmodatFlags::FollowSymlink,
            )
            .map_err(io_err)
            .map_err(apply_err("set the mode"))?;
        }
        if !metadata.xattrs.is_empty() {
            let target = proc_path(dirfd, &name).map_err(apply_err("set xattrs"))?;
            for (key, value) in &metadata.xattrs {
                xattr::set(&target, key, value).map_err(apply_err("set an xattr"))?;
            }
        }
        if is_dir {
            self.dir_mtimes
                .push((path.clone(), entry_name, metadata.mtime));
        } else {
            utimensat(
                Some(dirfd),
                name.as_os_str(),
                &TimeSpec::UTIME_OMIT,
                &metadata.mtime,
                UtimensatFlags::NoFollowSymlink,
            )
            .map_err(io_err)
            .map_err(apply_err("set the mtime"))?;
        }
        self.added.insert(path.to_path_buf());
        self.stats.n_entries += 1;
        Ok(())
    }

    fn read_metadata<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        entry_name: &str,
    ) -> Result<Metadata, LayerError> {
        let read_err = |source: io::Error| LayerError::ReadEntry {
            entry: entry_name.to_string(),
            source,
        };
        let header = entry.header();
        let mode = header.mode().map_err(read_err)?;
        let uid = header.uid().map_err(read_err)?;
        let gid = header.gid().map_err(read_err)?;
        let mut mtime = TimeSpec::new(header.mtime().map_err(read_err)? as i64, 0);
        let mut xattrs = Vec::new();
        if let Some(extensions) = entry.pax_extensions().map_err(read_err)? {
            for extension in extensions {
                let extension = extension.map_err(read_err)?;
                let key = extension.key_bytes();
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    xattrs.push((name.to_vec(), extension.value_bytes().to_vec()));
                } else if key == b"mtime" {
                    if let Some(parsed) = parse_pax_time(extension.value_bytes()) {
                        mtime = parsed;
                    }
                }
            }
        }
        Ok(Metadata {
            mode,
            uid,
            gid,
            mtime,
            xattrs,
        })
    }

    /// Opens the directory at `components` below the root, one component at a time, never
    /// following a symlink; creates missing directories when `create`.
    fn resolve_dir(
        &self,
        components: &[OsString],
        create: bool,
        entry_name: &str,
    ) -> Result<OwnedFd, LayerError> {
        let mut current = self.root.try_clone().map_err(|source| LayerError::Apply {
            entry: entry_name.to_string(),
            step: "duplicate the root descriptor",
            source,
        })?;
        let mut walked = PathBuf::new();
        for component in components {
            walked.push(component);
            let component_name = || walked.to_string_lossy().into_owned();
            let dirfd = current.as_raw_fd();
            let opened = match open_dir_at(Some(dirfd), component, true) {
                Err(error) if error.raw_os_error() == Some(libc::ENOENT) && create => {
                    match mkdirat(
                        Some(dirfd),
                        component.as_os_str(),
                        Mode::from_bits_truncate(0o755),
                    ) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(errno) => {
                            return Err(LayerError::Apply {
                                entry: entry_name.to_string(),
                                step: "create a missing parent directory",
                                source: io_err(errno),
                            })
                        }
                    }
                    // mkdirat honours the umask; parents docker creates are 0755.
                    let _ = fchmodat(
                        Some(dirfd),
                        component.as_os_str(),
                        Mode::from_bits_truncate(0o755),
                        FchmodatFlags::FollowSymlink,
                    );
                    open_dir_at(Some(dirfd), component, true)
                }
                other => other,
            };
            current = match opened {
                Ok(fd) => fd,
                Err(error)
                    if matches!(
                        error.raw_os_error(),
                        Some(libc::ELOOP) | Some(libc::ENOTDIR)
                    ) =>
                {
                    let is_symlink = lstat_at(dirfd, component)
                        .ok()
                        .flatten()
                        .is_some_and(|stat| file_kind(&stat) == SFlag::S_IFLNK);
                    return Err(if is_symlink {
                        LayerError::SymlinkParent {
                            entry: entry_name.to_string(),
                            component: component_name(),
                        }
                    } else {
                        LayerError::ParentNotDirectory {
                            entry: entry_name.to_string(),
                            component: component_name(),
                        }
                    });
                }
                Err(source) => {
                    return Err(LayerError::Apply {
                        entry: entry_name.to_string(),
                        step: "open a parent directory",
                        source,
                    })
                }
            };
        }
        Ok(current)
    }

    fn hard_link(
        &self,
        raw_target: &[u8],
        dirfd: RawFd,
        name: &OsStr,
        entry_name: &str,
    ) -> Result<(), LayerError> {
        let target_name = String::from_utf8_lossy(raw_target).into_owned();
        let refuse = |reason: &'static str| LayerError::UnsafeLinkTarget {
            entry: entry_name.to_string(),
            target: target_name.clone(),
            reason,
        };
        let target = SafePath::parse(raw_target).map_err(refuse)?;
        if target.is_root() {
            return Err(refuse("is the root directory"));
        }
        let target_parent = match self.resolve_dir(target.parent(), false, entry_name) {
            Ok(fd) => fd,
            Err(LayerError::SymlinkParent { .. }) => {
                return Err(refuse("goes through a symbolic link"))
            }
            Err(_) => return Err(refuse("does not exist in the layer or below it")),
        };
        match lstat_at(target_parent.as_raw_fd(), target.file_name()) {
            Ok(Some(_)) => {}
            _ => return Err(refuse("does not exist in the layer or below it")),
        }
        linkat(
            Some(target_parent.as_raw_fd()),
            target.file_name(),
            Some(dirfd),
            name,
            nix::fcntl::AtFlags::empty(),
        )
        .map_err(|errno| LayerError::Apply {
            entry: entry_name.to_string(),
            step: "create the hard link",
            source: io_err(errno),
        })
    }

    fn whiteout(
        &mut self,
        marker: &SafePath,
        target: &OsStr,
        entry_name: &str,
    ) -> Result<(), LayerError> {
        self.stats.n_whiteouts += 1;
        let target_path = marker.parent_path().child(target);
        if self.added.contains(&target_path.to_path_buf()) {
            // Whiteouts hide lower layers only, never this layer's own entries.
            return Ok(());
        }
        let create = self.mode == WhiteoutMode::Overlay;
        let parent = match self.resolve_dir(marker.parent(), create, entry_name) {
            Ok(fd) => fd,
            // Deleting below a directory that does not exist: nothing to delete.
            Err(LayerError::Apply { source, .. })
                if !create && source.raw_os_error() == Some(libc::ENOENT) =>
            {
                return Ok(())
            }
            Err(error) => return Err(error),
        };
        let dirfd = parent.as_raw_fd();
        let apply_err = |step: &'static str| {
            move |source: io::Error| LayerError::Apply {
                entry: entry_name.to_string(),
                step,
                source,
            }
        };
        remove_all_at(dirfd, target).map_err(apply_err("remove the whited-out entry"))?;
        if self.mode == WhiteoutMode::Overlay {
            mknodat(Some(dirfd), target, SFlag::S_IFCHR, Mode::empty(), 0)
                .map_err(io_err)
                .map_err(apply_err("create the overlay whiteout device"))?;
        }
        Ok(())
    }

    fn opaque(&mut self, marker: &SafePath, entry_name: &str) -> Result<(), LayerError> {
        self.stats.n_opaque += 1;
        let directory = marker.parent_path();
        let dirfd = self.resolve_dir(&directory.components, true, entry_name)?;
        let apply_err = |step: &'static str| {
            move |source: io::Error| LayerError::Apply {
                entry: entry_name.to_string(),
                step,
                source,
            }
        };
        match self.mode {
            WhiteoutMode::Overlay => {
                let path = proc_path(dirfd.as_raw_fd(), OsStr::new("."))
                    .map_err(apply_err("set the opaque xattr"))?;
                xattr::set(&path, whiteout::OVERLAY_OPAQUE_XATTR.as_bytes(), b"y")
                    .map_err(apply_err("set the opaque xattr"))?;
            }
            WhiteoutMode::Delete => {
                let children =
                    list_dir(dirfd.as_raw_fd()).map_err(apply_err("list the opaque directory"))?;
                for child in children {
                    if self.added.contains(&directory.child(&child).to_path_buf()) {
                        continue;
                    }
                    remove_all_at(dirfd.as_raw_fd(), &child)
                        .map_err(apply_err("empty the opaque directory"))?;
                }
            }
        }
        Ok(())
    }

    /// Sets directory mtimes last: creating their children changed them.
    fn finish(&mut self) -> Result<(), LayerError> {
        for (path, entry_name, mtime) in std::mem::take(&mut self.dir_mtimes) {
            let parent = self.resolve_dir(path.parent(), false, &entry_name)?;
            utimensat(
                Some(parent.as_raw_fd()),
                path.file_name(),
                &TimeSpec::UTIME_OMIT,
                &mtime,
                UtimensatFlags::NoFollowSymlink,
            )
            .map_err(|errno| LayerError::Apply {
                entry: entry_name.clone(),
                step: "set the directory mtime",
                source: io_err(errno),
            })?;
        }
        Ok(())
    }
}

/// Parses a PAX time (`seconds[.fraction]`, possibly negative).
fn parse_pax_time(value: &[u8]) -> Option<TimeSpec> {
    let text = std::str::from_utf8(value).ok()?;
    let (seconds, fraction) = match text.split_once('.') {
        Some((seconds, fraction)) => (seconds, fraction),
        None => (text, ""),
    };
    let seconds: i64 = seconds.parse().ok()?;
    let mut nanos_text: String = fraction.chars().take(9).collect();
    if !nanos_text.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    while nanos_text.len() < 9 {
        nanos_text.push('0');
    }
    let nanos: i64 = nanos_text.parse().ok()?;
    if seconds < 0 && nanos > 0 {
        return Some(TimeSpec::new(seconds - 1, 1_000_000_000 - nanos));
    }
    Some(TimeSpec::new(seconds, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: &str, expect: Result<&[&str], &str>) {
        let got = SafePath::parse(raw.as_bytes()).map(|path| {
            path.components
                .iter()
                .map(|c| c.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        });
        let expect = expect
            .map(|parts| parts.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .map_err(|_| ());
        assert_eq!(got.map_err(|_| ()), expect, "{raw}");
    }

    #[test]
    fn normalizes_and_refuses_names() {
        check("etc/passwd", Ok(&["etc", "passwd"]));
        check("./etc//passwd", Ok(&["etc", "passwd"]));
        check("/etc/passwd", Ok(&["etc", "passwd"]));
        check("dir/", Ok(&["dir"]));
        check("./", Ok(&[]));
        check("../x", Err(""));
        check("a/../../x", Err(""));
        check("a/../b", Err(""));
        check("/..", Err(""));
    }

    #[test]
    fn parses_pax_times() {
        assert_eq!(parse_pax_time(b"12"), Some(TimeSpec::new(12, 0)));
        assert_eq!(
            parse_pax_time(b"12.5"),
            Some(TimeSpec::new(12, 500_000_000))
        );
        assert_eq!(
            parse_pax_time(b"-1.5"),
            Some(TimeSpec::new(-2, 500_000_000))
        );
        assert_eq!(parse_pax_time(b"x"), None);
    }
}
