//! COPY/ADD into a root file system, with Docker's rules, and the host-side overlay mounts
//! they need.
//!
//! A Copy step writes into the merged view of an overlay (the parent's snapshots as lower
//! dirs, a fresh upper dir) so the upper dir ends up holding exactly the step's diff, as after a
//! RUN. The overlay is mounted by a short-lived thread that first unshares its own mount
//! namespace ([`with_private_mounts`]): the mount is never visible on the host and disappears
//! when the thread ends, even if kiln is killed.
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
use crate::error_chain;
use crate::executor::container::kernel::{Kernel, Linux};
use crate::layer::{apply_layer, WhiteoutMode};
use nix::mount::MsFlags;
use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

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
    File { host: PathBuf },
    Dir,
    Symlink { target: PathBuf },
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
    let owner_dirs = spec.owner.unwrap_or((0, 0));
    let dest_is_dir = spec.dest.ends_with('/') || roots.len() > 1;
    for selected in roots {
        if selected.is_dir {
            let dest_dir = mkdir_all_in_root(root, &spec.dest, owner_dirs)?;
            write_items(&dest_dir, &selected.items, spec)?;
            continue;
        }
        let item = selected
            .items
            .first()
            .ok_or_else(|| io::Error::other("empty file selection"))?;
        if selected.extract {
            if let ItemKind::File { host } = &item.kind {
                if let Some(reader) = open_archive(host)? {
                    let dest_dir = mkdir_all_in_root(root, &spec.dest, owner_dirs)?;
                    apply_layer(reader, &dest_dir, WhiteoutMode::Delete)
                        .map_err(|err| io::Error::other(error_chain(&err)))?;
                    continue;
                }
            }
        }
        let target_host = if dest_is_dir {
            let dir = mkdir_all_in_root(root, &spec.dest, owner_dirs)?;
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
                let parent_host = mkdir_all_in_root(root, &parent, owner_dirs)?;
                let name = Path::new(&spec.dest)
                    .file_name()
                    .map(OsStr::to_os_string)
                    .unwrap_or_else(|| selected.name.clone());
                parent_host.join(name)
            }
        };
        put_item(&target_host, item, spec)?;
    }
    Ok(())
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
fn write_items(dest_dir: &Path, items: &[Item], spec: &CopySpec) -> io::Result<()> {
    for item in items {
        if item.rel.as_os_str().is_empty() {
            continue;
        }
        let target = dest_dir.join(&item.rel);
        // A parent is either created by an earlier item or already resolved; never follow a
        // symlink that an earlier item placed (that could leave the root).
        if let Some(parent) = target.parent() {
            if fs::symlink_metadata(parent)
                .map(|m| m.file_type().is_symlink())
                .unwrap_or(false)
            {
                return Err(io::Error::other(format!(
                    "refusing to copy {} through a symbolic link",
                    item.rel.display()
                )));
            }
        }
        put_item(&target, item, spec)?;
    }
    Ok(())
}

/// Creates one file, directory or symlink at `target` (the path itself is never followed).
fn put_item(target: &Path, item: &Item, spec: &CopySpec) -> io::Result<()> {
    let (uid, gid) = spec.owner.unwrap_or((item.uid, item.gid));
    let existing = fs::symlink_metadata(target).ok();
    match &item.kind {
        ItemKind::Dir => {
            match existing {
                Some(meta) if meta.is_dir() => {}
                Some(_) => {
                    fs::remove_file(target)?;
                    fs::create_dir(target)?;
                }
                None => fs::create_dir(target)?,
            }
            let mode = spec
                .chmod
                .as_ref()
                .map_or(item.mode, |c| c.apply(item.mode, true));
            fs::set_permissions(target, fs::Permissions::from_mode(mode))?;
            std::os::unix::fs::lchown(target, Some(uid), Some(gid))?;
        }
        ItemKind::File { host } => {
            if let Some(meta) = existing {
                if meta.is_dir() {
                    return Err(io::Error::other(format!(
                        "cannot replace directory {} with a file",
                        target.display()
                    )));
                }
                fs::remove_file(target)?;
            }
            let mut source = File::open(host)?;
            let mut out = OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW)
                .mode(0o600)
                .open(target)?;
            io::copy(&mut source, &mut out)?;
            let mode = spec
                .chmod
                .as_ref()
                .map_or(item.mode, |c| c.apply(item.mode, false));
            std::os::unix::fs::fchown(&out, Some(uid), Some(gid))?;
            // After chown: chown clears setuid/setgid bits.
            out.set_permissions(fs::Permissions::from_mode(mode))?;
            if let Some(mtime_ns) = item.mtime_ns {
                let time =
                    std::time::UNIX_EPOCH + std::time::Duration::from_nanos(mtime_ns.max(0) as u64);
                out.set_modified(time)?;
            }
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
            roots.push(Root {
                is_dir: true,
                name,
                matched: PathBuf::from(matched.trim_start_matches('/')),
                items,
                extract: false,
            });
        } else {
            roots.push(Root {
                is_dir: false,
                name,
                matched: PathBuf::from(matched.trim_start_matches('/')),
                items: vec![item_of(&host, PathBuf::new())?],
                extract: false,
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
}
