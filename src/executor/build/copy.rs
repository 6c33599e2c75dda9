//! COPY/ADD into a root file system, with Docker's rules, and the host-side overlay mounts
//! they need.
//!
//! A Copy step writes into the merged view of an overlay (the parent's snapshots as lower
//! dirs, a fresh upper dir) so the upper dir ends up holding exactly the step's diff, as after a
//! RUN. The overlay is mounted by a short-lived thread that first unshares its own mount
//! namespace ([`with_private_mounts`]): the mount is never visible on the host and disappears
//! when the thread ends, even if kiln is killed. New regular files skip the overlay: they are
//! written into the upper dir once it is unmounted ([`copy_roots_direct`], [`write_direct`]),
//! or hard-linked from the snapshot of the same COPY's last run when unchanged
//! ([`PreviousCopy`]).
//!
//! Destinations are resolved inside the root the way a chroot would ([`resolve_in_root`]):
//! symlinks are followed but an absolute target or `..` starts again from / of the image, so
//! nothing is ever written outside it. Rules: a directory source copies its contents, not
//! itself; a destination ending in `/` (or an existing directory) receives files under their
//! own names; missing parents are created (0755, owned by the `--chown` owner); context files
//! get owner 0:0 unless `--chown`, files from another stage keep theirs; `--chmod` (octal, or
//! symbolic as chmod(1) and BuildKit: `u+x`, `a=rX`, `go-w,u=rwx`) applies to every copied
//! file and directory; `--exclude` drops matching paths (`.dockerignore` pattern rules) and
//! `--parents` keeps each source's path below the context root, or below a `/./` pivot
//! ([`reshape`]); ADD extracts local tar archives (plain, gzip,
//! zstd) into the destination directory. Hand-written over walkdir/tar because no crate copies
//! into a root with these rules.

use crate::context::gomatch;
use crate::digest::Digest;
use crate::error_chain;
use crate::executor::container::kernel::{Kernel, Linux};
use crate::layer::{apply_layer, WhiteoutMode};
use nix::mount::MsFlags;
use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

/// Linux gives up after this many symlinks in one resolution.
const MAX_SYMLINK_HOPS: usize = 40;

/// The overlay options kiln's containers use (no index, no metacopy, no redirect_dir): the
/// upper dir must hold plain copies so it can be committed and reused as a lower dir.
const OVERLAY_OPTIONS: [(&str, &str); 3] = [
    ("index", "off"),
    ("metacopy", "off"),
    ("redirect_dir", "off"),
];

/// Runs `work` on a new thread with its own mount namespace (all mounts private), so whatever
/// it mounts is invisible to the host and vanishes with the thread.
pub fn with_private_mounts<T: Send>(work: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(|errno| {
                    io::Error::other(format!("unshare mount namespace: {errno}"))
                })?;
                nix::mount::mount(
                    None::<&str>,
                    "/",
                    None::<&str>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&str>,
                )
                .map_err(|errno| io::Error::other(format!("make mounts private: {errno}")))?;
                work()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("copy thread panicked")))
    })
}

/// Mounts an overlay of `lowerdirs_bottom_first` with `upper`/`work` on `target` (call inside
/// [`with_private_mounts`]).
pub fn mount_overlay(
    lowerdirs_bottom_first: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> io::Result<()> {
    let top_first: Vec<PathBuf> = lowerdirs_bottom_first.iter().rev().cloned().collect();
    Linux
        .mount_overlay_fsconfig(&top_first, upper, work, &OVERLAY_OPTIONS, Some(target))
        .map_err(|errno| {
            io::Error::other(format!("mount overlay on {}: {errno}", target.display()))
        })
}

/// Resolves `path` (absolute or relative to /) inside `root` like a chroot: symlinks are
/// followed (the last component only when `follow_last`), absolute link targets and `..`
/// never leave `root`. The result may not exist.
pub fn resolve_in_root(root: &Path, path: &str, follow_last: bool) -> io::Result<PathBuf> {
    let mut resolved: Vec<OsString> = Vec::new();
    let mut pending: VecDeque<OsString> = components(Path::new(path));
    let mut hops = 0;
    while let Some(component) = pending.pop_front() {
        if component == ".." {
            resolved.pop();
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&resolved);
        candidate.push(&component);
        let is_link = fs::symlink_metadata(&candidate)
            .map(|meta| meta.file_type().is_symlink())
            .unwrap_or(false);
        if is_link && (follow_last || !pending.is_empty()) {
            hops += 1;
            if hops > MAX_SYMLINK_HOPS {
                return Err(io::Error::other(format!(
                    "{path}: too many levels of symbolic links"
                )));
            }
            let target = fs::read_link(&candidate)?;
            if target.is_absolute() {
                resolved.clear();
            }
            let mut next = components(&target);
            next.extend(pending.drain(..));
            pending = next;
        } else {
            resolved.push(component);
        }
    }
    let mut out = root.to_path_buf();
    out.extend(&resolved);
    Ok(out)
}

fn components(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|component| match component {
            Component::Normal(name) => Some(name.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

/// Creates directory `path` (inside `root`, resolved with [`resolve_in_root`]) and its missing
/// parents, mode 0755, owned by `owner`. Returns the host path.
pub fn mkdir_all_in_root(root: &Path, path: &str, owner: (u32, u32)) -> io::Result<PathBuf> {
    mkdir_all_tracked(root, path, owner, None)
}

/// [`mkdir_all_in_root`], noting the directories it creates in `made`.
fn mkdir_all_tracked(
    root: &Path,
    path: &str,
    owner: (u32, u32),
    mut made: Option<&mut DirectCopy>,
) -> io::Result<PathBuf> {
    let mut current = String::new();
    let mut host = root.to_path_buf();
    for component in components(Path::new(path)) {
        current.push('/');
        current.push_str(&component.to_string_lossy());
        host = resolve_in_root(root, &current, true)?;
        match fs::symlink_metadata(&host) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(io::Error::other(format!(
                    "cannot create directory {current}: a file is in the way"
                )))
            }
            Err(_) => {
                fs::create_dir(&host)?;
                fs::set_permissions(&host, fs::Permissions::from_mode(0o755))?;
                std::os::unix::fs::lchown(&host, Some(owner.0), Some(owner.1))?;
                if let Some(direct) = made.as_deref_mut() {
                    direct.made_dir(&host);
                }
            }
        }
    }
    Ok(host)
}

/// One thing to copy, relative to the root it was selected from.
#[derive(Debug, Clone)]
pub struct Item {
    /// Where it lands below the destination directory (`""` for a copied directory's root).
    pub rel: PathBuf,
    pub kind: ItemKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: Option<i64>,
}

#[derive(Debug, Clone)]
pub enum ItemKind {
    /// `content`: the file's digest and size when known (context files), so an unchanged
    /// file can be linked from an earlier copy ([`PreviousCopy`]).
    File {
        host: PathBuf,
        content: Option<Content>,
    },
    Dir,
    Symlink {
        target: PathBuf,
    },
}

/// What a context file held when the context was scanned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    pub digest: Digest,
    pub size: u64,
}

/// A selected root: a file copied under `name`, or a directory whose contents are copied.
#[derive(Debug, Clone)]
pub struct Root {
    pub is_dir: bool,
    pub name: OsString,
    /// The path the source matched, relative to its root (`""`: the root itself); what
    /// `--parents` keeps.
    pub matched: PathBuf,
    /// For a file: one item with `rel == ""`; for a directory: its entries (not itself).
    pub items: Vec<Item>,
    /// For a directory: its own mtime, which the destination directory gets (as `rsync -a
    /// src/ dst/` does); `None` leaves the destination's mtime to the copy.
    pub mtime_ns: Option<i64>,
    /// ADD: extract this file into the destination when it is a tar archive.
    pub extract: bool,
}

/// Options of one COPY/ADD.
#[derive(Debug, Clone)]
pub struct CopySpec {
    pub dest: String,
    /// `--chown` resolved to numbers.
    pub owner: Option<(u32, u32)>,
    /// `--chmod` parsed.
    pub chmod: Option<Chmod>,
}

/// Copies `roots` into the root file system at `root` with Docker's destination rules.
pub fn copy_roots(root: &Path, roots: &[Root], spec: &CopySpec) -> io::Result<()> {
    let times = copy_roots_into(root, roots, spec, None)?;
    set_dir_times(Path::new(""), &times)
}

/// Gives each directory or symlink (`base`/path) its mtime (and the same atime); never
/// follows a symlink at the last component. A directory that is not there (nothing was
/// written into it, so it was not copied up) is left alone.
///
/// Directories and symlinks copied from a source directory keep their mtimes, as files keep
/// theirs, and as the classic builder and `rsync -a src/ dst/` do; the destination directory
/// of a directory source takes that directory's mtime. BuildKit stamps directories with the
/// time of the build instead. Kept, they make a COPY of the same tree the same layer, byte
/// for byte, whenever it is built, and let the next commit of that COPY tell its unchanged
/// parts by their metadata ([`crate::layer::frames`]).
pub fn set_dir_times(base: &Path, times: &[(PathBuf, i64)]) -> io::Result<()> {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    for (path, mtime_ns) in times {
        let time = TimeSpec::new(
            mtime_ns.div_euclid(1_000_000_000),
            mtime_ns.rem_euclid(1_000_000_000),
        );
        let target = base.join(path);
        match utimensat(None, &target, &time, &time, UtimensatFlags::NoFollowSymlink) {
            Ok(()) | Err(nix::errno::Errno::ENOENT) => {}
            Err(errno) => {
                return Err(io::Error::other(format!(
                    "set the mtime of {}: {errno}",
                    target.display()
                )))
            }
        }
    }
    Ok(())
}

/// The first half of a direct copy: does in `root` (an overlay's merged view, or a plain
/// directory) everything but writing the new regular files, and returns those, to be written
/// with [`write_direct`] into the upper dir once the overlay is unmounted.
///
/// Why: creating 10,000 files through overlayfs costs about twice the system time of creating
/// them in the plain upper dir (each create looks the name up in every lower layer and switches
/// credentials). Directories, symlinks and files that replace something in a lower layer still go
/// through the merged view, so overlayfs makes the upper dir's copy-ups, whiteouts and opaque
/// markers exactly as before; a file is deferred only when nothing is at its path in the merged
/// view, and its parent directory is then copied up (a `lchown` to its own owner) so the upper
/// dir holds it with the lower layer's metadata, as a create through the overlay would. A copy
/// whose roots could touch one path twice (or ADD extracting an archive) is done entirely
/// through `root` and returns no file.
pub fn copy_roots_direct(root: &Path, roots: &[Root], spec: &CopySpec) -> io::Result<DirectFiles> {
    if !direct_possible(roots) {
        copy_roots(root, roots, spec)?;
        return Ok(DirectFiles::default());
    }
    let mut direct = DirectCopy {
        root: root.to_path_buf(),
        fresh: HashSet::new(),
        in_upper: HashSet::new(),
        files: Vec::new(),
    };
    let times = copy_roots_into(root, roots, spec, Some(&mut direct))?;
    let dir_times = times
        .into_iter()
        .filter_map(|(path, time)| Some((path.strip_prefix(root).ok()?.to_path_buf(), time)))
        .collect();
    Ok(DirectFiles {
        files: direct.files,
        dir_times,
    })
}

/// A direct copy is possible when no two items land on the same path (the order of the writes
/// then does not matter) and nothing is an archive to extract.
fn direct_possible(roots: &[Root]) -> bool {
    let mut seen: HashSet<&Path> = HashSet::new();
    for root in roots {
        if root.extract {
            return false;
        }
        if root.is_dir {
            for item in &root.items {
                if !item.rel.as_os_str().is_empty() && !seen.insert(&item.rel) {
                    return false;
                }
            }
        } else if !seen.insert(Path::new(&root.name)) {
            return false;
        }
    }
    true
}

/// A regular file a direct copy writes into the upper dir.
#[derive(Debug, Clone)]
pub struct DeferredFile {
    /// Relative to the root (and so to the upper dir).
    pub rel: PathBuf,
    pub item: Item,
}

/// What the first half of a direct copy knows about the directories of `root`.
struct DirectCopy {
    root: PathBuf,
    /// Directories this copy created: nothing is in them but what the copy put there.
    fresh: HashSet<PathBuf>,
    /// Directories that are in the upper dir (created, or copied up by a metadata change).
    in_upper: HashSet<PathBuf>,
    files: Vec<DeferredFile>,
}

/// What the first half of a direct copy leaves to the second.
#[derive(Debug, Default)]
pub struct DirectFiles {
    pub files: Vec<DeferredFile>,
    /// Directories and symlinks (relative to the root) to give these mtimes once the files
    /// are in.
    pub dir_times: Vec<(PathBuf, i64)>,
}

impl DirectCopy {
    fn made_dir(&mut self, host: &Path) {
        self.fresh.insert(host.to_path_buf());
        self.in_upper.insert(host.to_path_buf());
    }

    /// Defers the file `item` at `target` when nothing is there in the merged view; `false`
    /// when something is (it is then replaced through the overlay).
    fn defer(&mut self, target: &Path, item: &Item) -> io::Result<bool> {
        let parent = target
            .parent()
            .ok_or_else(|| io::Error::other("a file cannot be the root"))?;
        if !self.fresh.contains(parent) {
            if fs::symlink_metadata(target).is_ok() {
                return Ok(false);
            }
            if parent != self.root && !self.in_upper.contains(parent) {
                // Copy the parent up (with its ancestors) without changing it.
                let meta = fs::symlink_metadata(parent)?;
                std::os::unix::fs::lchown(parent, Some(meta.uid()), Some(meta.gid()))?;
                self.in_upper.insert(parent.to_path_buf());
            }
        }
        let rel = target
            .strip_prefix(&self.root)
            .map_err(|_| io::Error::other(format!("{} is outside the root", target.display())))?
            .to_path_buf();
        self.files.push(DeferredFile {
            rel,
            item: item.clone(),
        });
        Ok(true)
    }
}

/// Returns the directories and symlinks (paths in `root`) to give the mtimes of the source
/// entries they were copied from, once everything is written into them ([`set_dir_times`]).
fn copy_roots_into(
    root: &Path,
    roots: &[Root],
    spec: &CopySpec,
    mut direct: Option<&mut DirectCopy>,
) -> io::Result<Vec<(PathBuf, i64)>> {
    let owner_dirs = spec.owner.unwrap_or((0, 0));
    let dest_is_dir = spec.dest.ends_with('/') || roots.len() > 1;
    let mut times = Vec::new();
    for selected in roots {
        if selected.is_dir {
            let dest_dir = mkdir_all_tracked(root, &spec.dest, owner_dirs, direct.as_deref_mut())?;
            write_items(&dest_dir, &selected.items, spec, direct.as_deref_mut())?;
            if let Some(mtime_ns) = selected.mtime_ns {
                times.push((dest_dir.clone(), mtime_ns));
            }
            for item in &selected.items {
                let kept = matches!(item.kind, ItemKind::Dir | ItemKind::Symlink { .. });
                if let (true, Some(mtime_ns), false) =
                    (kept, item.mtime_ns, item.rel.as_os_str().is_empty())
                {
                    times.push((dest_dir.join(&item.rel), mtime_ns));
                }
            }
            continue;
        }
        let item = selected
            .items
            .first()
            .ok_or_else(|| io::Error::other("empty file selection"))?;
        if selected.extract {
            if let ItemKind::File { host, .. } = &item.kind {
                if let Some(reader) = open_archive(host)? {
                    let dest_dir = mkdir_all_in_root(root, &spec.dest, owner_dirs)?;
                    apply_layer(reader, &dest_dir, WhiteoutMode::Delete)
                        .map_err(|err| io::Error::other(error_chain(&err)))?;
                    continue;
                }
            }
        }
        let target_host = if dest_is_dir {
            let dir = mkdir_all_tracked(root, &spec.dest, owner_dirs, direct.as_deref_mut())?;
            dir.join(&selected.name)
        } else {
            let resolved = resolve_in_root(root, &spec.dest, true)?;
            if resolved.is_dir() {
                resolved.join(&selected.name)
            } else {
                let parent = Path::new(&spec.dest)
                    .parent()
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "/".into());
                let parent_host =
                    mkdir_all_tracked(root, &parent, owner_dirs, direct.as_deref_mut())?;
                let name = Path::new(&spec.dest)
                    .file_name()
                    .map(OsStr::to_os_string)
                    .unwrap_or_else(|| selected.name.clone());
                parent_host.join(name)
            }
        };
        put_item(&target_host, item, spec, direct.as_deref_mut())?;
    }
    Ok(times)
}

/// Opens `path` as a tar archive (plain, gzip or zstd); `None` when it is not one.
fn open_archive(path: &Path) -> io::Result<Option<Box<dyn Read>>> {
    let probe = File::open(path)?;
    let Ok((_, mut reader)) = crate::store::compression::decompress(probe) else {
        return Ok(None);
    };
    let mut header = [0u8; 512];
    let mut got = 0;
    while got < header.len() {
        match reader.read(&mut header[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(_) => return Ok(None),
        }
    }
    let is_tar = got == 512 && (&header[257..262] == b"ustar" || tar_checksum_ok(&header));
    if !is_tar {
        return Ok(None);
    }
    let (_, reader) = crate::store::compression::decompress(File::open(path)?)?;
    Ok(Some(reader))
}

/// Old (v7) tars have no magic: accept a header whose checksum field matches.
fn tar_checksum_ok(header: &[u8; 512]) -> bool {
    let field = std::str::from_utf8(&header[148..156]).unwrap_or("");
    let Ok(expected) = u32::from_str_radix(field.trim_matches(|c: char| c == '\0' || c == ' '), 8)
    else {
        return false;
    };
    let sum: u32 = header
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                *b as u32
            }
        })
        .sum();
    sum == expected && header[0] != 0
}

/// Writes a directory's entries below `dest_dir` (which exists). Entries come parents first.
fn write_items(
    dest_dir: &Path,
    items: &[Item],
    spec: &CopySpec,
    mut direct: Option<&mut DirectCopy>,
) -> io::Result<()> {
    // Parents already seen to be real directories: one never becomes a symlink later (a
    // symlink or file cannot replace a directory), so each is checked once.
    let mut real_dirs: HashSet<PathBuf> = HashSet::new();
    for item in items {
        if item.rel.as_os_str().is_empty() {
            continue;
        }
        let target = dest_dir.join(&item.rel);
        // A parent is either created by an earlier item or already resolved; never follow a
        // symlink that an earlier item placed (that could leave the root).
        if let Some(parent) = target.parent() {
            if !real_dirs.contains(parent) {
                if fs::symlink_metadata(parent)
                    .map(|m| m.file_type().is_symlink())
                    .unwrap_or(false)
                {
                    return Err(io::Error::other(format!(
                        "refusing to copy {} through a symbolic link",
                        item.rel.display()
                    )));
                }
                real_dirs.insert(parent.to_path_buf());
            }
        }
        put_item(&target, item, spec, direct.as_deref_mut())?;
    }
    Ok(())
}

/// Creates one file, directory or symlink at `target` (the path itself is never followed).
/// With `direct`, a new regular file is only noted, for [`write_direct`].
fn put_item(
    target: &Path,
    item: &Item,
    spec: &CopySpec,
    mut direct: Option<&mut DirectCopy>,
) -> io::Result<()> {
    let (uid, gid) = spec.owner.unwrap_or((item.uid, item.gid));
    if let (ItemKind::File { .. }, Some(direct)) = (&item.kind, direct.as_deref_mut()) {
        if direct.defer(target, item)? {
            return Ok(());
        }
    }
    let existing = fs::symlink_metadata(target).ok();
    match &item.kind {
        ItemKind::Dir => {
            let created = match existing {
                Some(meta) if meta.is_dir() => false,
                Some(_) => {
                    fs::remove_file(target)?;
                    fs::create_dir(target)?;
                    true
                }
                None => {
                    fs::create_dir(target)?;
                    true
                }
            };
            let mode = spec
                .chmod
                .as_ref()
                .map_or(item.mode, |c| c.apply(item.mode, true));
            fs::set_permissions(target, fs::Permissions::from_mode(mode))?;
            std::os::unix::fs::lchown(target, Some(uid), Some(gid))?;
            if let Some(direct) = direct {
                // Created: empty in the merged view; existing: copied up by the chown.
                if created {
                    direct.fresh.insert(target.to_path_buf());
                }
                direct.in_upper.insert(target.to_path_buf());
            }
        }
        ItemKind::File { host, .. } => {
            if let Some(meta) = existing {
                if meta.is_dir() {
                    return Err(io::Error::other(format!(
                        "cannot replace directory {} with a file",
                        target.display()
                    )));
                }
                fs::remove_file(target)?;
            }
            write_file(target, host, item, spec)?;
        }
        ItemKind::Symlink { target: link } => {
            if let Some(meta) = existing {
                if meta.is_dir() {
                    return Err(io::Error::other(format!(
                        "cannot replace directory {} with a symbolic link",
                        target.display()
                    )));
                }
                fs::remove_file(target)?;
            }
            std::os::unix::fs::symlink(link, target)?;
            std::os::unix::fs::lchown(target, Some(uid), Some(gid))?;
        }
    }
    Ok(())
}

/// The mode and owner a copied file gets.
fn file_attributes(item: &Item, spec: &CopySpec) -> (u32, u32, u32) {
    let (uid, gid) = spec.owner.unwrap_or((item.uid, item.gid));
    let mode = spec
        .chmod
        .as_ref()
        .map_or(item.mode, |c| c.apply(item.mode, false));
    (mode, uid, gid)
}

/// Creates `target` (never following it) with `host`'s bytes and the item's metadata.
fn write_file(target: &Path, host: &Path, item: &Item, spec: &CopySpec) -> io::Result<bool> {
    let out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(target)?;
    fill_file(out, host, item, spec)
}

/// Fills the new file `out` with `host`'s bytes and gives it the item's metadata. True when
/// `host` still had the size and mtime the item was selected with after the copy (so what was
/// written is the content the item's digest names).
fn fill_file(mut out: File, host: &Path, item: &Item, spec: &CopySpec) -> io::Result<bool> {
    let mut source = File::open(host)?;
    io::copy(&mut source, &mut out)?;
    let (mode, uid, gid) = file_attributes(item, spec);
    std::os::unix::fs::fchown(&out, Some(uid), Some(gid))?;
    // After chown: chown clears setuid/setgid bits.
    out.set_permissions(fs::Permissions::from_mode(mode))?;
    if let Some(mtime_ns) = item.mtime_ns {
        let time = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(mtime_ns.max(0) as u64);
        out.set_modified(time)?;
    }
    let unchanged = match &item.kind {
        ItemKind::File {
            content: Some(content),
            ..
        } => {
            let meta = source.metadata()?;
            meta.len() == content.size
                && Some(meta.mtime() * 1_000_000_000 + meta.mtime_nsec()) == item.mtime_ns
        }
        _ => false,
    };
    Ok(unchanged)
}

/// The regular files an earlier run of the same COPY (same parent, same destination) left in
/// its snapshot, by path relative to the snapshot, with the content digest each was copied
/// from. Snapshots are never written to once committed (a RUN over them copies a file up
/// before changing it), so an unchanged file can be hard-linked from there instead of copied.
#[derive(Debug, Clone, Default)]
pub struct PreviousCopy {
    pub snapshot: PathBuf,
    pub files: HashMap<PathBuf, Digest>,
}

impl PreviousCopy {
    /// Whether `old` (the earlier copy of `rel`) is exactly what a copy of `item` would write:
    /// same content digest, and a regular file with the size, mode, owner and mtime the copy
    /// would give it.
    fn reusable(&self, rel: &Path, item: &Item, spec: &CopySpec, old: &libc::stat) -> bool {
        let ItemKind::File {
            content: Some(content),
            ..
        } = &item.kind
        else {
            return false;
        };
        let Some(mtime_ns) = item.mtime_ns else {
            return false;
        };
        let (mode, uid, gid) = file_attributes(item, spec);
        self.files.get(rel) == Some(&content.digest)
            && old.st_mode & libc::S_IFMT == libc::S_IFREG
            && old.st_size as u64 == content.size
            && old.st_mode & 0o7777 == mode
            && old.st_uid == uid
            && old.st_gid == gid
            && old.st_mtime * 1_000_000_000 + old.st_mtime_nsec == mtime_ns
    }
}

/// `openat(dir, name)` of a directory, never following a symlink.
fn open_dir_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    let name = CString::new(name.as_bytes())?;
    // SAFETY: a valid fd and NUL-terminated name; the result is a new fd we own.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens `rel` below the directory `root`, one component at a time, none of them a symlink.
fn open_dir_beneath(root: BorrowedFd<'_>, rel: &Path) -> io::Result<OwnedFd> {
    let mut dir = open_dir_at(root, OsStr::new("."))?;
    for component in rel.components() {
        let Component::Normal(name) = component else {
            return Err(io::Error::other(format!(
                "{}: not a plain relative path",
                rel.display()
            )));
        };
        dir = open_dir_at(dir.as_fd(), name)?;
    }
    Ok(dir)
}

/// `fstatat(dir, name)` without following a symlink.
fn stat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<libc::stat> {
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: valid fd, NUL-terminated name and a buffer of the right size.
    let ret = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            stat.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstatat succeeded, so it filled the buffer.
    Ok(unsafe { stat.assume_init() })
}

/// Hard-links `old_dir/name` as `new_dir/name` (a symlink is linked as itself, never followed).
fn link_at(old_dir: BorrowedFd<'_>, new_dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: valid fds and NUL-terminated names.
    let ret = unsafe {
        libc::linkat(
            old_dir.as_raw_fd(),
            name.as_ptr(),
            new_dir.as_raw_fd(),
            name.as_ptr(),
            0,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Creates the new file `dir/name` (never following a symlink), mode 0600 until filled.
fn create_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<File> {
    // SAFETY: valid fd and NUL-terminated name; the result is a new fd we own.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o600 as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// The second half of a direct copy ([`copy_roots_direct`]): writes `files` into `upper`,
/// which must not be part of a mounted overlay. Each file is hard-linked from `previous` when
/// that holds exactly the same file, else copied. Returns the files whose content is known
/// (path relative to `upper`, digest), for the next run's [`PreviousCopy`].
///
/// Paths are walked one directory at a time from open directory fds with `O_NOFOLLOW`, so
/// nothing is ever written or linked through a symlink, in the upper dir or the snapshot, and
/// each file costs one lookup instead of a walk of its whole path.
pub fn write_direct(
    upper: &Path,
    files: &[DeferredFile],
    spec: &CopySpec,
    previous: Option<&PreviousCopy>,
) -> io::Result<HashMap<PathBuf, Digest>> {
    if files.is_empty() {
        return Ok(HashMap::new());
    }
    let upper_root = File::open(upper)?;
    let previous_root = previous.and_then(|previous| File::open(&previous.snapshot).ok());
    // One inode is linked at most once: two paths of one inode in a layer would become a tar
    // hard link, which a copy would not have made.
    let linked: Mutex<HashSet<u64>> = Mutex::new(HashSet::new());
    // Work is split at directory boundaries into one part per core: links and creates in
    // different directories do not contend (10,000 links are ~0.2 s on one core).
    let parts = split_by_directory(files, rayon::current_num_threads().max(1));
    let write_part = |part: &[DeferredFile]| -> io::Result<Vec<(PathBuf, Digest)>> {
        write_direct_part(
            upper,
            upper_root.as_fd(),
            previous_root.as_ref().map(|root| root.as_fd()),
            part,
            spec,
            previous,
            &linked,
        )
    };
    let results: Vec<io::Result<Vec<(PathBuf, Digest)>>> = if parts.len() == 1 {
        vec![write_part(parts[0])]
    } else {
        use rayon::prelude::*;
        parts.par_iter().map(|part| write_part(part)).collect()
    };
    let mut known = HashMap::with_capacity(files.len());
    for result in results {
        known.extend(result?);
    }
    Ok(known)
}

/// `files` (sorted, so each directory's files are adjacent) cut into at most `n` runs of
/// about equal length, each cut between two directories.
fn split_by_directory(files: &[DeferredFile], n: usize) -> Vec<&[DeferredFile]> {
    let target = files.len().div_ceil(n).max(1);
    let mut parts = Vec::new();
    let mut start = 0;
    for index in 1..files.len() {
        if index - start >= target && files[index].rel.parent() != files[index - 1].rel.parent() {
            parts.push(&files[start..index]);
            start = index;
        }
    }
    parts.push(&files[start..]);
    parts
}

/// [`write_direct`] for one run of files.
fn write_direct_part(
    upper: &Path,
    upper_root: BorrowedFd<'_>,
    previous_root: Option<BorrowedFd<'_>>,
    files: &[DeferredFile],
    spec: &CopySpec,
    previous: Option<&PreviousCopy>,
    linked: &Mutex<HashSet<u64>>,
) -> io::Result<Vec<(PathBuf, Digest)>> {
    let mut known = Vec::with_capacity(files.len());
    // The directory of the file at hand, in the upper dir and in the previous snapshot.
    let mut current: Option<(PathBuf, OwnedFd, Option<OwnedFd>)> = None;
    for file in files {
        let ItemKind::File { host, content } = &file.item.kind else {
            return Err(io::Error::other("only regular files are written directly"));
        };
        let (Some(parent), Some(name)) = (file.rel.parent(), file.rel.file_name()) else {
            return Err(io::Error::other("a file cannot be the root"));
        };
        if !current.as_ref().is_some_and(|(dir, _, _)| dir == parent) {
            // The first half created (or copied up) every parent as a directory.
            let upper_dir = open_dir_beneath(upper_root, parent).map_err(|err| {
                io::Error::other(format!("{}: {err}", upper.join(parent).display()))
            })?;
            let previous_dir = previous_root.and_then(|root| open_dir_beneath(root, parent).ok());
            current = Some((parent.to_path_buf(), upper_dir, previous_dir));
        }
        let (_, upper_dir, previous_dir) = current.as_ref().expect("just set");
        let c_name = CString::new(name.as_bytes())?;
        let reused = match (previous, previous_dir) {
            (Some(previous), Some(previous_dir)) => stat_at(previous_dir.as_fd(), &c_name)
                .ok()
                .filter(|old| previous.reusable(&file.rel, &file.item, spec, old))
                .filter(|old| {
                    linked
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .insert(old.st_ino)
                })
                // Pruned meanwhile, or another file system: copy instead.
                .is_some_and(|_| link_at(previous_dir.as_fd(), upper_dir.as_fd(), &c_name).is_ok()),
            _ => false,
        };
        let unchanged = reused || {
            let out = create_at(upper_dir.as_fd(), &c_name).map_err(|err| {
                io::Error::other(format!("create {}: {err}", upper.join(&file.rel).display()))
            })?;
            fill_file(out, host, &file.item, spec)?
        };
        if let (true, Some(content)) = (unchanged, content) {
            known.push((file.rel.clone(), content.digest.clone()));
        }
    }
    Ok(known)
}

/// Selects `path` (which may hold wildcards in its components) in the root file system at
/// `root` (another stage's or an image's), as `COPY --from` does: the items keep their owners.
pub fn select_in_root(root: &Path, path: &str) -> io::Result<Vec<Root>> {
    let cleaned = gomatch::clean(&format!("/{path}"));
    let parts: Vec<&str> = cleaned.split('/').filter(|c| !c.is_empty()).collect();
    // Expand wildcards component by component, following symlinks inside the root.
    let mut matches: Vec<String> = vec![String::new()];
    for part in &parts {
        let wild = part.contains(['*', '?', '[']);
        let mut next = Vec::new();
        for base in &matches {
            if wild {
                let dir = resolve_in_root(root, if base.is_empty() { "/" } else { base }, true)?;
                let Ok(read) = fs::read_dir(&dir) else {
                    continue;
                };
                let mut names: Vec<OsString> =
                    read.filter_map(|e| e.ok().map(|e| e.file_name())).collect();
                names.sort();
                for name in names {
                    if gomatch::match_path(part.as_bytes(), name.as_bytes()).unwrap_or(false) {
                        next.push(format!("{base}/{}", name.to_string_lossy()));
                    }
                }
            } else {
                next.push(format!("{base}/{part}"));
            }
        }
        matches = next;
    }
    if matches.is_empty() {
        return Err(io::Error::other(format!(
            "{path}: no source files were specified"
        )));
    }
    let mut roots = Vec::new();
    for matched in matches {
        let host = resolve_in_root(root, if matched.is_empty() { "/" } else { &matched }, true)?;
        let meta = fs::symlink_metadata(&host).map_err(|_| {
            io::Error::other(format!("{path}: not found in the source root file system"))
        })?;
        let name = Path::new(&matched)
            .file_name()
            .map(OsStr::to_os_string)
            .unwrap_or_default();
        if meta.is_dir() {
            let mut items = Vec::new();
            for entry in walkdir::WalkDir::new(&host)
                .min_depth(1)
                .follow_links(false)
                .sort_by_file_name()
            {
                let entry = entry.map_err(io::Error::other)?;
                let rel = entry
                    .path()
                    .strip_prefix(&host)
                    .expect("walkdir stays below its root")
                    .to_path_buf();
                items.push(item_of(entry.path(), rel)?);
            }
            let mtime_ns = fs::symlink_metadata(&host)
                .ok()
                .map(|meta| meta.mtime() * 1_000_000_000 + meta.mtime_nsec());
            roots.push(Root {
                is_dir: true,
                name,
                matched: PathBuf::from(matched.trim_start_matches('/')),
                items,
                extract: false,
                mtime_ns,
            });
        } else {
            roots.push(Root {
                is_dir: false,
                name,
                matched: PathBuf::from(matched.trim_start_matches('/')),
                items: vec![item_of(&host, PathBuf::new())?],
                extract: false,
                mtime_ns: None,
            });
        }
    }
    Ok(roots)
}

fn item_of(host: &Path, rel: PathBuf) -> io::Result<Item> {
    let meta = fs::symlink_metadata(host)?;
    let kind = if meta.file_type().is_symlink() {
        ItemKind::Symlink {
            target: fs::read_link(host)?,
        }
    } else if meta.is_dir() {
        ItemKind::Dir
    } else if meta.is_file() {
        ItemKind::File {
            host: host.to_path_buf(),
            content: None,
        }
    } else {
        return Err(io::Error::other(format!(
            "{}: cannot copy a special file",
            host.display()
        )));
    };
    Ok(Item {
        rel,
        kind,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime_ns: Some(meta.mtime() * 1_000_000_000 + meta.mtime_nsec()),
    })
}

/// `--chmod`: an octal mode, or symbolic clauses applied to each item's own mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chmod {
    Octal(u32),
    Symbolic(Vec<ChmodClause>),
}

/// One `who op perms` clause of a symbolic mode (`ug+rx`, `o=`, `a-w`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChmodClause {
    /// Bits of the classes named (`u` 0o4700 incl. setuid, `g` 0o2070, `o` 0o1007); all when
    /// none is named (the build's umask is 0).
    who: u32,
    actions: Vec<(char, ChmodPerms)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ChmodPerms {
    /// `r`, `w`, `x`, `s`, `t` bits (in all classes; masked by `who`), and whether `X` was given.
    Bits { bits: u32, cond_x: bool },
    /// `u`, `g` or `o`: copy that class's current bits.
    Copy(char),
}

impl Chmod {
    /// The mode an item with `mode` gets.
    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        match self {
            Chmod::Octal(octal) => *octal,
            Chmod::Symbolic(clauses) => {
                let mut mode = mode & 0o7777;
                for clause in clauses {
                    for (op, perms) in &clause.actions {
                        let bits = match perms {
                            ChmodPerms::Bits { bits, cond_x } => {
                                let mut bits = *bits;
                                // `X`: execute only for directories or what is already
                                // executable by someone.
                                if *cond_x && (is_dir || mode & 0o111 != 0) {
                                    bits |= 0o111;
                                }
                                bits & clause.who
                            }
                            ChmodPerms::Copy(class) => {
                                let rwx = match class {
                                    'u' => (mode >> 6) & 7,
                                    'g' => (mode >> 3) & 7,
                                    _ => mode & 7,
                                };
                                (rwx << 6 | rwx << 3 | rwx) & clause.who
                            }
                        };
                        mode = match op {
                            '+' => mode | bits,
                            '-' => mode & !bits,
                            _ => (mode & !clause.who) | bits,
                        };
                    }
                }
                mode
            }
        }
    }
}

/// Parses `--chmod`: octal (`755`, `0644`, at most 0o7777) or chmod(1)'s symbolic form
/// (comma-separated `[ugoa]*([-+=]([rwxXst]*|[ugo]))+`), as BuildKit accepts it.
pub fn parse_chmod(text: &str) -> Option<Chmod> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return u32::from_str_radix(text, 8)
            .ok()
            .filter(|mode| *mode <= 0o7777)
            .map(Chmod::Octal);
    }
    let mut clauses = Vec::new();
    for clause in text.split(',') {
        let mut chars = clause.chars().peekable();
        let mut who = 0;
        while let Some(c) = chars.peek() {
            who |= match c {
                'u' => 0o4700,
                'g' => 0o2070,
                'o' => 0o1007,
                'a' => 0o7777,
                _ => break,
            };
            chars.next();
        }
        if who == 0 {
            who = 0o7777;
        }
        let mut actions = Vec::new();
        while let Some(op) = chars.next() {
            if !matches!(op, '+' | '-' | '=') {
                return None;
            }
            let perms = match chars.peek() {
                Some(&class @ ('u' | 'g' | 'o')) => {
                    chars.next();
                    ChmodPerms::Copy(class)
                }
                _ => {
                    let (mut bits, mut cond_x) = (0, false);
                    while let Some(c) = chars.peek() {
                        match c {
                            'r' => bits |= 0o444,
                            'w' => bits |= 0o222,
                            'x' => bits |= 0o111,
                            'X' => cond_x = true,
                            's' => bits |= 0o6000,
                            't' => bits |= 0o1000,
                            _ => break,
                        }
                        chars.next();
                    }
                    ChmodPerms::Bits { bits, cond_x }
                }
            };
            actions.push((op, perms));
        }
        if actions.is_empty() {
            return None;
        }
        clauses.push(ChmodClause { who, actions });
    }
    Some(Chmod::Symbolic(clauses))
}

/// What `--parents` and `--exclude` need to know of a source path as written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceParts {
    /// The part before a `/./` pivot, cleaned and relative (`""`: none).
    pub pivot: PathBuf,
    /// For a source with wildcards: the directory its first wildcard component is in.
    pub wildcard_dir: Option<PathBuf>,
}

impl SourceParts {
    pub fn of(source: &str) -> SourceParts {
        let pivot = match source.find("/./") {
            Some(at) => PathBuf::from(gomatch::clean(source[..at].trim_start_matches('/')))
                .components()
                .filter(|c| matches!(c, Component::Normal(_)))
                .collect(),
            None => PathBuf::new(),
        };
        let cleaned = gomatch::clean(source.trim_start_matches('/'));
        let components: Vec<&str> = cleaned.split('/').filter(|c| *c != ".").collect();
        let wildcard_dir = components
            .iter()
            .position(|c| c.contains(['*', '?', '[']))
            .map(|first| components[..first].iter().collect::<PathBuf>());
        SourceParts {
            pivot,
            wildcard_dir,
        }
    }
}

/// Applies `--parents` and `--exclude` to selected roots. `pivot`: the source path's part
/// before `/./` (cleaned, relative), stripped from what `--parents` keeps; `base` is the host
/// directory the roots were selected in (parent directories keep their modes from it).
pub fn reshape(
    roots: Vec<Root>,
    parents: bool,
    parts: &SourceParts,
    exclude: &crate::context::Matcher,
    base: &Path,
) -> Vec<Root> {
    let pivot = parts.pivot.as_path();
    let mut shaped = Vec::new();
    for mut root in roots {
        if !exclude.is_empty() {
            // A wildcard match is itself tested, relative to the wildcard's directory; the
            // root of a plain source never is (BuildKit tests paths below it).
            if let Some(wildcard_dir) = &parts.wildcard_dir {
                let rel = root
                    .matched
                    .strip_prefix(wildcard_dir)
                    .unwrap_or(&root.matched);
                if exclude.matches(&rel.to_string_lossy()) {
                    continue;
                }
            }
            if root.is_dir {
                let excluded: Vec<bool> = root
                    .items
                    .iter()
                    .map(|item| exclude.matches(&item.rel.to_string_lossy()))
                    .collect();
                // A `!` exception may keep a path below an excluded directory: that
                // directory is still created for it.
                let kept: Vec<PathBuf> = root
                    .items
                    .iter()
                    .zip(&excluded)
                    .filter(|(_, excluded)| !**excluded)
                    .map(|(item, _)| item.rel.clone())
                    .collect();
                let mut index = 0;
                root.items.retain(|item| {
                    let keep = !excluded[index]
                        || (exclude.has_exclusions()
                            && matches!(item.kind, ItemKind::Dir)
                            && kept.iter().any(|rel| rel.starts_with(&item.rel)));
                    index += 1;
                    keep
                });
            }
        }
        if !parents {
            shaped.push(root);
            continue;
        }
        let keep = root
            .matched
            .strip_prefix(pivot)
            .unwrap_or(&root.matched)
            .to_path_buf();
        // The kept path's directories, then the root's items below it.
        let mut items = Vec::new();
        let dirs: Vec<PathBuf> = keep
            .ancestors()
            .skip(if root.is_dir { 0 } else { 1 })
            .filter(|dir| !dir.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .collect();
        for dir in dirs.into_iter().rev() {
            let meta = fs::metadata(base.join(pivot).join(&dir)).ok();
            items.push(Item {
                rel: dir,
                kind: ItemKind::Dir,
                mode: meta.as_ref().map_or(0o755, |m| m.mode() & 0o7777),
                uid: meta.as_ref().map_or(0, |m| m.uid()),
                gid: meta.as_ref().map_or(0, |m| m.gid()),
                mtime_ns: None,
            });
        }
        for mut item in root.items {
            item.rel = if root.is_dir {
                keep.join(&item.rel)
            } else {
                keep.clone()
            };
            items.push(item);
        }
        shaped.push(Root {
            is_dir: true,
            name: OsString::new(),
            matched: PathBuf::new(),
            items,
            extract: false,
            mtime_ns: None,
        });
    }
    shaped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(links: &[(&str, &str)], path: &str, follow_last: bool, expect: &str) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("real/sub")).unwrap();
        for (link, target) in links {
            std::os::unix::fs::symlink(target, root.join(link)).unwrap();
        }
        let got = resolve_in_root(root, path, follow_last).unwrap();
        assert_eq!(got, root.join(expect.trim_start_matches('/')), "{path}");
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        check(&[("abs", "/real")], "/abs/sub", true, "/real/sub");
        check(
            &[("esc", "../../../../etc")],
            "/esc/passwd",
            true,
            "/etc/passwd",
        );
        check(&[("up", "/..")], "/up/x", true, "/x");
        check(&[("rel", "real/sub")], "rel", false, "/rel");
        check(&[("rel", "real/sub")], "rel", true, "/real/sub");
        check(&[], "/../../a/./b", true, "/a/b");
    }

    #[test]
    fn chmod_octal_and_symbolic() {
        let check = |text: &str, mode: u32, is_dir: bool, expect: Option<u32>| {
            let got = parse_chmod(text).map(|chmod| chmod.apply(mode, is_dir));
            assert_eq!(got, expect, "{text} on {mode:o} (dir: {is_dir})");
        };
        check("755", 0o600, false, Some(0o755));
        check("0644", 0o755, true, Some(0o644));
        check("77777", 0o644, false, None);
        check("u+x", 0o644, false, Some(0o744));
        check("a=rX", 0o640, false, Some(0o444));
        check("a=rX", 0o750, false, Some(0o555));
        check("a=rX", 0o700, true, Some(0o555));
        check("go-w", 0o666, false, Some(0o644));
        check("u=rwx,g=rx,o=", 0o000, false, Some(0o750));
        check("+x", 0o644, false, Some(0o755));
        check("g=u", 0o640, false, Some(0o660));
        check("u+s", 0o755, false, Some(0o4755));
        check("o+t", 0o777, true, Some(0o1777));
        check("u+q", 0o644, false, None);
        check("u", 0o644, false, None);
        check("", 0o644, false, None);
    }

    fn file_root(matched: &str) -> Root {
        Root {
            is_dir: false,
            name: Path::new(matched).file_name().unwrap().into(),
            matched: matched.into(),
            items: vec![Item {
                rel: PathBuf::new(),
                kind: ItemKind::Dir,
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime_ns: None,
            }],
            extract: false,
            mtime_ns: None,
        }
    }

    #[test]
    fn parents_keep_the_path_below_the_pivot_and_exclude_drops() {
        let none = crate::context::Matcher::empty();
        let base = Path::new("/nonexistent");
        let parts = SourceParts::of("src/./a/*.txt");
        assert_eq!(parts.pivot, PathBuf::from("src"));
        assert_eq!(parts.wildcard_dir, Some(PathBuf::from("src/a")));
        let shaped = reshape(vec![file_root("src/a/x.txt")], true, &parts, &none, base);
        let rels: Vec<_> = shaped[0].items.iter().map(|i| i.rel.clone()).collect();
        assert_eq!(rels, [PathBuf::from("a"), PathBuf::from("a/x.txt")]);
        let exclude = crate::context::Matcher::new(&["*.txt"]).unwrap();
        let shaped = reshape(
            vec![file_root("d/x.txt"), file_root("d/y.md")],
            false,
            &SourceParts::of("d/*"),
            &exclude,
            base,
        );
        assert_eq!(shaped.len(), 1);
        assert_eq!(shaped[0].matched, PathBuf::from("d/y.md"));
        assert_eq!(SourceParts::of("./a/b"), SourceParts::default());
        // An exception below an excluded directory keeps that directory.
        let item = |rel: &str, kind: ItemKind| Item {
            rel: rel.into(),
            kind,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime_ns: None,
        };
        let file = || ItemKind::File {
            host: PathBuf::from("/x"),
            content: None,
        };
        let dir_root = Root {
            is_dir: true,
            name: OsString::new(),
            matched: PathBuf::new(),
            items: vec![
                item("docs", ItemKind::Dir),
                item("docs/a.md", file()),
                item("docs/keep.md", file()),
                item("src", ItemKind::Dir),
            ],
            extract: false,
            mtime_ns: None,
        };
        let exclude = crate::context::Matcher::new(&["docs", "!docs/keep.md"]).unwrap();
        let shaped = reshape(
            vec![dir_root],
            false,
            &SourceParts::default(),
            &exclude,
            base,
        );
        let rels: Vec<_> = shaped[0].items.iter().map(|i| i.rel.clone()).collect();
        assert_eq!(
            rels,
            [
                PathBuf::from("docs"),
                PathBuf::from("docs/keep.md"),
                PathBuf::from("src")
            ]
        );
    }

    /// The entries of `upper`'s layer tar: (name, kind, mode, uid, gid, mtime (of regular
    /// files only: directories and symlinks get the time of the copy), link name, content,
    /// xattrs).
    type Entry = (
        String,
        u8,
        u32,
        u64,
        u64,
        Option<u64>,
        String,
        Vec<u8>,
        Vec<String>,
    );

    fn layer_entries(upper: &Path) -> Vec<Entry> {
        let mut bytes = Vec::new();
        crate::layer::write_tar(upper, &mut bytes, &[]).unwrap();
        let mut archive = tar::Archive::new(&bytes[..]);
        let mut entries = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let header = entry.header().clone();
            let kind = header.entry_type().as_byte();
            let xattrs: Vec<String> = entry
                .pax_extensions()
                .unwrap()
                .into_iter()
                .flatten()
                .map(|ext| {
                    let ext = ext.unwrap();
                    format!("{}={:?}", ext.key().unwrap(), ext.value_bytes())
                })
                .collect();
            let mut content = Vec::new();
            entry.read_to_end(&mut content).unwrap();
            entries.push((
                String::from_utf8_lossy(&entry.path_bytes()).into_owned(),
                kind,
                header.mode().unwrap(),
                header.uid().unwrap(),
                header.gid().unwrap(),
                header
                    .entry_type()
                    .is_file()
                    .then(|| header.mtime().unwrap()),
                header
                    .link_name()
                    .unwrap()
                    .map(|l| l.display().to_string())
                    .unwrap_or_default(),
                content,
                xattrs,
            ));
        }
        entries
    }

    fn require_root() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test mounts overlays: run it as root"
        );
    }

    /// A file item named `rel` with `text`, written into `sources`.
    fn file_item(sources: &Path, rel: &str, text: &str, mode: u32) -> Item {
        let host = sources.join(rel.replace('/', "_"));
        let _ = fs::remove_file(&host);
        fs::write(&host, text).unwrap();
        // As the context scan saw it: the mtime the item carries.
        File::options()
            .write(true)
            .open(&host)
            .unwrap()
            .set_modified(
                std::time::UNIX_EPOCH + std::time::Duration::from_nanos(1_600_000_000_123_456_789),
            )
            .unwrap();
        Item {
            rel: rel.into(),
            kind: ItemKind::File {
                host,
                content: Some(Content {
                    digest: Digest::of_bytes(text.as_bytes()),
                    size: text.len() as u64,
                }),
            },
            mode,
            uid: 0,
            gid: 0,
            mtime_ns: Some(1_600_000_000_123_456_789),
        }
    }

    fn dir_item(rel: &str, mode: u32) -> Item {
        Item {
            rel: rel.into(),
            kind: ItemKind::Dir,
            mode,
            uid: 7,
            gid: 8,
            mtime_ns: None,
        }
    }

    /// Copies `roots` over `lowers` through the overlay (the old way) or directly (`direct`),
    /// in a fresh state dir below `base`; returns the upper dir.
    fn copy_over(
        base: &Path,
        name: &str,
        lowers: &[PathBuf],
        roots: &[Root],
        spec: &CopySpec,
        direct: bool,
        previous: Option<&PreviousCopy>,
    ) -> (PathBuf, HashMap<PathBuf, Digest>) {
        let state = base.join(name);
        let (upper, work, merged) = (
            state.join("upper"),
            state.join("work"),
            state.join("merged"),
        );
        for dir in [&upper, &work, &merged] {
            fs::create_dir_all(dir).unwrap();
        }
        let known = with_private_mounts(|| {
            mount_overlay(lowers, &upper, &work, &merged)?;
            let direct_files = if direct {
                copy_roots_direct(&merged, roots, spec)?
            } else {
                copy_roots(&merged, roots, spec)?;
                DirectFiles::default()
            };
            nix::mount::umount(&merged).map_err(io::Error::from)?;
            let known = write_direct(&upper, &direct_files.files, spec, previous)?;
            set_dir_times(&upper, &direct_files.dir_times)?;
            Ok(known)
        })
        .unwrap();
        (upper, known)
    }

    /// Lower layers with the awkward cases: a directory to merge into with its own metadata and
    /// a file to replace, deep parents, a symlink to follow, a directory a later layer deleted.
    fn lowers(base: &Path) -> Vec<PathBuf> {
        use std::os::unix::fs::{lchown, symlink};
        let (bottom, top) = (base.join("lower0"), base.join("lower1"));
        for dir in ["app/keep", "usr/share/doc", "gone/inside"] {
            fs::create_dir_all(bottom.join(dir)).unwrap();
        }
        fs::write(bottom.join("app/old.txt"), "old").unwrap();
        fs::write(bottom.join("gone/inside/x"), "x").unwrap();
        for (dir, mode, owner) in [
            ("app", 0o750, 5),
            ("app/keep", 0o700, 6),
            ("usr", 0o711, 9),
            ("usr/share", 0o705, 10),
            ("usr/share/doc", 0o775, 11),
        ] {
            fs::set_permissions(bottom.join(dir), fs::Permissions::from_mode(mode)).unwrap();
            lchown(bottom.join(dir), Some(owner), Some(owner + 100)).unwrap();
        }
        symlink("/app", bottom.join("link")).unwrap();
        fs::create_dir_all(&top).unwrap();
        // `gone` deleted by the upper layer: an overlay whiteout.
        nix::sys::stat::mknod(
            &top.join("gone"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
        vec![bottom, top]
    }

    fn cases(sources: &Path) -> Vec<(Vec<Root>, CopySpec)> {
        let spec = |dest: &str| CopySpec {
            dest: dest.into(),
            owner: None,
            chmod: None,
        };
        let dir_root = |items: Vec<Item>| Root {
            is_dir: true,
            name: OsString::new(),
            matched: PathBuf::new(),
            items,
            extract: false,
            mtime_ns: None,
        };
        let file_root = |item: Item| Root {
            is_dir: false,
            name: item.rel.clone().into_os_string(),
            matched: item.rel.clone(),
            items: vec![Item {
                rel: PathBuf::new(),
                ..item
            }],
            extract: false,
            mtime_ns: None,
        };
        let symlink = Item {
            rel: "sub/ln".into(),
            kind: ItemKind::Symlink {
                target: "../top.txt".into(),
            },
            mode: 0o777,
            uid: 0,
            gid: 0,
            mtime_ns: None,
        };
        vec![
            (
                vec![dir_root(vec![
                    dir_item("sub", 0o755),
                    file_item(sources, "sub/f1", "one", 0o644),
                    symlink,
                    file_item(sources, "top.txt", "top", 0o600),
                    file_item(sources, "old.txt", "new", 0o644),
                    dir_item("keep", 0o755),
                    file_item(sources, "keep/k", "k", 0o4755),
                ])],
                spec("/app"),
            ),
            (
                vec![
                    file_root(file_item(sources, "a.txt", "a", 0o644)),
                    file_root(file_item(sources, "b.txt", "b", 0o644)),
                ],
                spec("/link/"),
            ),
            (
                vec![file_root(file_item(sources, "n.txt", "n", 0o644))],
                spec("/usr/share/doc/renamed.txt"),
            ),
            (
                vec![dir_root(vec![
                    dir_item("inside", 0o755),
                    file_item(sources, "inside/y", "y", 0o644),
                ])],
                CopySpec {
                    owner: Some((3, 4)),
                    chmod: parse_chmod("go-w"),
                    ..spec("/gone/")
                },
            ),
        ]
    }

    #[test]
    fn a_direct_copy_gives_the_upper_dir_the_overlay_gave() {
        require_root();
        let base = tempfile::tempdir().unwrap();
        let lowers = lowers(base.path());
        let sources = base.path().join("sources");
        fs::create_dir_all(&sources).unwrap();
        for (index, (roots, spec)) in cases(&sources).iter().enumerate() {
            let (old, _) = copy_over(
                base.path(),
                &format!("old{index}"),
                &lowers,
                roots,
                spec,
                false,
                None,
            );
            let (new, known) = copy_over(
                base.path(),
                &format!("new{index}"),
                &lowers,
                roots,
                spec,
                true,
                None,
            );
            let expected = layer_entries(&old);
            assert!(expected.len() > 1, "case {index}: {expected:?}");
            assert_eq!(layer_entries(&new), expected, "case {index}");
            // Every new file but the one replacing a lower file went straight to the upper dir.
            let n_files = roots
                .iter()
                .flat_map(|root| &root.items)
                .filter(|item| matches!(item.kind, ItemKind::File { .. }))
                .count();
            let n_replaced = usize::from(index == 0);
            assert_eq!(known.len(), n_files - n_replaced, "case {index}: {known:?}");
        }
    }

    #[test]
    fn direct_writes_split_only_between_directories() {
        let file = |rel: &str| DeferredFile {
            rel: PathBuf::from(rel),
            item: Item {
                rel: PathBuf::from(rel),
                kind: ItemKind::Dir,
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime_ns: None,
            },
        };
        let files: Vec<DeferredFile> = ["a/1", "a/2", "a/3", "b/1", "c/1", "c/2", "c/3", "c/4"]
            .iter()
            .map(|rel| file(rel))
            .collect();
        let names = |parts: Vec<&[DeferredFile]>| -> Vec<Vec<String>> {
            parts
                .iter()
                .map(|part| part.iter().map(|f| f.rel.display().to_string()).collect())
                .collect()
        };
        assert_eq!(
            names(split_by_directory(&files, 2)),
            vec![
                vec!["a/1", "a/2", "a/3", "b/1"],
                vec!["c/1", "c/2", "c/3", "c/4"]
            ]
        );
        assert_eq!(
            names(split_by_directory(&files, 3)),
            vec![
                vec!["a/1", "a/2", "a/3"],
                vec!["b/1", "c/1", "c/2", "c/3", "c/4"]
            ]
        );
        assert_eq!(names(split_by_directory(&files, 1)).len(), 1);
        assert_eq!(names(split_by_directory(&files[..1], 4)), vec![vec!["a/1"]]);
    }

    #[test]
    fn a_copy_links_the_unchanged_files_of_the_previous_one() {
        use std::os::unix::fs::MetadataExt;
        require_root();
        let base = tempfile::tempdir().unwrap();
        let lowers = lowers(base.path());
        let sources = base.path().join("sources");
        fs::create_dir_all(&sources).unwrap();
        let spec = CopySpec {
            dest: "/app/".into(),
            owner: None,
            chmod: None,
        };
        let root_of = |items: Vec<Item>| Root {
            is_dir: true,
            name: OsString::new(),
            matched: PathBuf::new(),
            items,
            extract: false,
            mtime_ns: None,
        };
        let first = vec![root_of(vec![
            dir_item("d", 0o755),
            file_item(&sources, "d/same", "same", 0o644),
            file_item(&sources, "d/changed", "before", 0o644),
            file_item(&sources, "d/chmod", "c", 0o644),
            file_item(&sources, "top", "top", 0o644),
        ])];
        let (snapshot, known) = copy_over(base.path(), "first", &lowers, &first, &spec, true, None);
        assert_eq!(known.len(), 4);
        let previous = PreviousCopy {
            snapshot: snapshot.clone(),
            files: known,
        };
        let second = vec![root_of(vec![
            dir_item("d", 0o755),
            file_item(&sources, "d/same", "same", 0o644),
            file_item(&sources, "d/changed", "after", 0o644),
            file_item(&sources, "d/chmod", "c", 0o755),
            file_item(&sources, "top", "top", 0o644),
        ])];
        let (upper, known) = copy_over(
            base.path(),
            "second",
            &lowers,
            &second,
            &spec,
            true,
            Some(&previous),
        );
        assert_eq!(known.len(), 4);
        let ino = |dir: &Path, rel: &str| fs::metadata(dir.join(rel)).unwrap().ino();
        for (rel, linked) in [
            ("app/d/same", true),
            ("app/top", true),
            ("app/d/changed", false),
            ("app/d/chmod", false),
        ] {
            assert_eq!(ino(&upper, rel) == ino(&snapshot, rel), linked, "{rel}");
        }
        // The layer is what a copy without links gives: no tar hard links, same entries.
        let (plain, _) = copy_over(base.path(), "plain", &lowers, &second, &spec, true, None);
        let entries = layer_entries(&upper);
        assert_eq!(entries, layer_entries(&plain));
        assert!(entries.iter().all(|entry| entry.1 != b'1'), "{entries:?}");
        assert_eq!(fs::read(upper.join("app/d/changed")).unwrap(), b"after");
        assert_eq!(fs::read(snapshot.join("app/d/changed")).unwrap(), b"before");

        // A previous file reached through a symlink is copied, not linked.
        let only = vec![root_of(vec![file_item(&sources, "same", "same", 0o644)])];
        for (name, through_symlink) in [("real-dir", false), ("symlinked", true)] {
            let snapshot = base.path().join(name);
            fs::create_dir_all(snapshot.join("real")).unwrap();
            let file = snapshot.join("real/same");
            fs::write(&file, "same").unwrap();
            fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
            File::options()
                .write(true)
                .open(&file)
                .unwrap()
                .set_modified(
                    std::time::UNIX_EPOCH
                        + std::time::Duration::from_nanos(1_600_000_000_123_456_789),
                )
                .unwrap();
            if through_symlink {
                std::os::unix::fs::symlink("real", snapshot.join("app")).unwrap();
            } else {
                fs::rename(snapshot.join("real"), snapshot.join("app")).unwrap();
            }
            let previous = PreviousCopy {
                snapshot,
                files: [(PathBuf::from("app/same"), Digest::of_bytes(b"same"))].into(),
            };
            let (upper, _) = copy_over(
                base.path(),
                &format!("third-{name}"),
                &lowers,
                &only,
                &spec,
                true,
                Some(&previous),
            );
            let nlink = fs::metadata(upper.join("app/same")).unwrap().nlink();
            assert_eq!(nlink, if through_symlink { 1 } else { 2 }, "{name}");
        }
    }
}
