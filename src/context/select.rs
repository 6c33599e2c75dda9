//! `COPY`/`ADD` source selection over a scanned [`ContextIndex`], with Docker's semantics,
//! and the canonical digest of a selection for cache keys.
//!
//! A source is a path relative to the context root (a leading `/` also means the root),
//! cleaned like Go `filepath.Clean`. Components up to the first one holding a wildcard
//! (`*`, `?`, `[` not escaped by `\`) are a literal path; the rest is matched against the
//! paths below it with Go `filepath.Match` (as BuildKit's `ResolveWildcards` does: `*` never
//! crosses `/`, and the contents of a matched directory are not matched again). Symlinks on
//! the literal path, and a symlink that is itself the selected root, are followed inside the
//! context; a directory root selects its contents (the directory itself is not copied). Paths
//! that leave the context (`..` above the root, a symlink to an absolute path or above the
//! root) are refused instead of being clamped to the root as BuildKit does, so a Dockerfile
//! that means to reach outside gets an error rather than a different file.
//!
//! Paths excluded by `.dockerignore` are not in the index and so are "not found"; the error
//! says when the path exists on disk but is excluded.
//!
//! This module knows nothing about how or where the files are copied.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::gomatch;
use super::walk::{ContextIndex, Entry, EntryKind};
use super::ContextError;
use crate::digest::Digest;

/// Linux gives up after this many symlinks in one resolution (`ELOOP`).
const MAX_SYMLINK_HOPS: usize = 40;

/// What one COPY/ADD source selected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection<'a> {
    /// The source as written in the Dockerfile.
    pub source: String,
    /// One root for a plain path; every match, in path order, for a wildcard.
    pub roots: Vec<SelectedRoot<'a>>,
}

/// One selected path: a file (copied under its own name) or a directory (its contents are
/// copied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectedRoot<'a> {
    /// The context path the source named or a wildcard matched, before a final symlink is
    /// followed (`""` is the context root). Its last component names a copied file.
    pub matched: PathBuf,
    /// The context path after following symlinks (`""` is the context root).
    pub resolved: PathBuf,
    /// The entry at `resolved` (a file or a directory); `None` for the context root.
    pub entry: Option<&'a Entry>,
    /// For a directory: every entry below it, sorted by path; empty for a file.
    pub subtree: &'a [Entry],
}

impl SelectedRoot<'_> {
    pub fn is_dir(&self) -> bool {
        self.entry
            .map_or(true, |entry| entry.kind == EntryKind::Dir)
    }

    /// The name a copied file gets (the matched name, not a symlink target's); `None` for the
    /// context root.
    pub fn name(&self) -> Option<&OsStr> {
        self.matched.file_name()
    }

    /// `entry`'s path relative to this root (where it lands below the destination).
    pub fn relative_path<'e>(&self, entry: &'e Entry) -> &'e Path {
        entry
            .path
            .strip_prefix(&self.resolved)
            .unwrap_or(&entry.path)
    }
}

impl<'a> Selection<'a> {
    /// Every selected entry: each root's own entry (when it has one) then its subtree.
    pub fn entries(&self) -> Vec<&'a Entry> {
        let mut entries = Vec::new();
        for root in &self.roots {
            entries.extend(root.entry);
            entries.extend(root.subtree.iter());
        }
        entries
    }

    /// The canonical digest of what this selection copies; see [`source_digest`].
    pub fn digest(&self) -> Digest {
        source_digest(self)
    }
}

/// A digest over everything that decides what a selection copies, for the COPY cache key:
/// per root its type (and a file's name), then per entry, sorted, its path relative to the
/// root, type, mode, uid, gid, size, content sha256 and symlink target. Not mtimes, not inode
/// numbers, not where the context lives. Versioned: a new field needs a new version string.
pub fn source_digest(selection: &Selection<'_>) -> Digest {
    let mut hasher = Sha256::new();
    hasher.update(b"kiln-context-source-v1\n");
    for root in &selection.roots {
        if root.is_dir() {
            hasher.update(b"dir\0");
        } else {
            hasher.update(b"file\0");
            hasher.update(root.name().map_or(&[][..], OsStr::as_bytes));
            hasher.update(b"\0");
        }
        if let Some(entry) = root.entry {
            put_entry(&mut hasher, b"", entry);
        }
        for entry in root.subtree {
            put_entry(
                &mut hasher,
                root.relative_path(entry).as_os_str().as_bytes(),
                entry,
            );
        }
        hasher.update(b"end\0");
    }
    Digest::from_sha256(hasher.finalize().into())
}

fn put_entry(hasher: &mut Sha256, relative: &[u8], entry: &Entry) {
    hasher.update(relative);
    hasher.update(b"\0");
    hasher.update(match entry.kind {
        EntryKind::File => b"f",
        EntryKind::Dir => b"d",
        EntryKind::Symlink => b"l",
    });
    hasher.update(entry.mode.to_be_bytes());
    hasher.update(entry.uid.to_be_bytes());
    hasher.update(entry.gid.to_be_bytes());
    hasher.update(entry.size.to_be_bytes());
    match &entry.digest {
        Some(digest) => hasher.update(digest.hex().as_bytes()),
        None => hasher.update(b"-"),
    }
    if let Some(target) = &entry.link_target {
        hasher.update(target.as_os_str().as_bytes());
    }
    hasher.update(b"\0");
}

/// BuildKit `containsWildcards`: `*`, `?` or `[` not escaped by `\`.
fn has_wildcards(component: &str) -> bool {
    let bytes = component.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 1,
            b'*' | b'?' | b'[' => return true,
            _ => {}
        }
        i += 1;
    }
    false
}

impl ContextIndex {
    /// The entries COPY/ADD `source` selects; an error names the source when nothing matches,
    /// the path is missing or excluded, or it would leave the context.
    pub fn select(&self, source: &str) -> Result<Selection<'_>, ContextError> {
        if source.trim().is_empty() {
            return Err(ContextError::EmptySource {
                copy_source: source.to_string(),
            });
        }
        let cleaned = gomatch::clean(source.trim_start_matches('/'));
        if cleaned == ".." || cleaned.starts_with("../") {
            return Err(ContextError::OutsideContext {
                copy_source: source.to_string(),
                reason: "`..` climbs above the context root".to_string(),
            });
        }
        let components: Vec<&str> = cleaned.split('/').filter(|c| *c != ".").collect();
        let first_wild = components
            .iter()
            .position(|c| has_wildcards(c))
            .unwrap_or(components.len());
        let literal = components[..first_wild].join("/");
        let pattern = components[first_wild..].join("/");

        let mut roots = Vec::new();
        if pattern.is_empty() {
            roots.push(self.root_at(Path::new(&literal), source)?);
        } else {
            if gomatch::check_pattern(pattern.as_bytes()).is_err() {
                return Err(ContextError::BadPattern {
                    copy_source: source.to_string(),
                });
            }
            let (base, base_entry) = self.resolve(Path::new(&literal), source)?;
            if base_entry.is_some_and(|entry| entry.kind != EntryKind::Dir) {
                return Err(ContextError::NoMatch {
                    copy_source: source.to_string(),
                });
            }
            let mut matched_dir: Option<&Path> = None;
            for entry in self.subtree(&base) {
                if let Some(dir) = matched_dir {
                    if entry.path.starts_with(dir) {
                        continue;
                    }
                    matched_dir = None;
                }
                let relative = entry.path.strip_prefix(&base).unwrap_or(&entry.path);
                let hit = gomatch::match_path(pattern.as_bytes(), relative.as_os_str().as_bytes())
                    .map_err(|_| ContextError::BadPattern {
                        copy_source: source.to_string(),
                    })?;
                if hit {
                    if entry.kind == EntryKind::Dir {
                        matched_dir = Some(&entry.path);
                    }
                    roots.push(self.root_at(&entry.path, source)?);
                }
            }
            if roots.is_empty() {
                return Err(ContextError::NoMatch {
                    copy_source: source.to_string(),
                });
            }
        }
        Ok(Selection {
            source: source.to_string(),
            roots,
        })
    }

    fn root_at(&self, matched: &Path, source: &str) -> Result<SelectedRoot<'_>, ContextError> {
        let (resolved, entry) = self.resolve(matched, source)?;
        let subtree = match entry {
            Some(entry) if entry.kind != EntryKind::Dir => &[][..],
            _ => self.subtree(&resolved),
        };
        Ok(SelectedRoot {
            matched: matched.to_path_buf(),
            resolved,
            entry,
            subtree,
        })
    }

    /// Follows `path` component by component inside the index, symlinks included (the last
    /// one too). Returns the real path and its entry (`None` for the context root).
    fn resolve(
        &self,
        path: &Path,
        source: &str,
    ) -> Result<(PathBuf, Option<&Entry>), ContextError> {
        let split = |path: &OsStr| -> Vec<OsString> {
            path.as_bytes()
                .split(|&b| b == b'/')
                .filter(|c| !c.is_empty() && *c != b".")
                .map(|c| OsStr::from_bytes(c).to_os_string())
                .collect()
        };
        let mut queue: VecDeque<OsString> = split(path.as_os_str()).into();
        let mut current = PathBuf::new();
        let mut current_entry: Option<&Entry> = None;
        let mut last_link: Option<PathBuf> = None;
        let mut n_hops = 0;
        while let Some(component) = queue.pop_front() {
            if component == ".." {
                if !current.pop() {
                    let reason = match &last_link {
                        Some(link) => {
                            format!("symlink {} points above the context root", link.display())
                        }
                        None => "`..` climbs above the context root".to_string(),
                    };
                    return Err(ContextError::OutsideContext {
                        copy_source: source.to_string(),
                        reason,
                    });
                }
                current_entry = if current.as_os_str().is_empty() {
                    None
                } else {
                    self.get(&current)
                };
                continue;
            }
            if let Some(entry) = current_entry {
                if entry.kind != EntryKind::Dir {
                    return Err(ContextError::NotADirectoryInPath {
                        copy_source: source.to_string(),
                        path: current.display().to_string(),
                    });
                }
            }
            let candidate = current.join(&component);
            let Some(entry) = self.get(&candidate) else {
                let excluded = self.root().join(&candidate).symlink_metadata().is_ok();
                return Err(ContextError::SourceNotFound {
                    copy_source: source.to_string(),
                    path: candidate.display().to_string(),
                    excluded,
                });
            };
            if entry.kind == EntryKind::Symlink {
                n_hops += 1;
                if n_hops > MAX_SYMLINK_HOPS {
                    return Err(ContextError::SymlinkLoop {
                        copy_source: source.to_string(),
                    });
                }
                let target = entry.link_target.as_deref().unwrap_or(Path::new(""));
                if target.is_absolute() {
                    return Err(ContextError::OutsideContext {
                        copy_source: source.to_string(),
                        reason: format!(
                            "symlink {} points to the absolute path {}",
                            candidate.display(),
                            target.display()
                        ),
                    });
                }
                for part in split(target.as_os_str()).into_iter().rev() {
                    queue.push_front(part);
                }
                last_link = Some(candidate);
                continue;
            }
            current = candidate;
            current_entry = Some(entry);
        }
        Ok((current, current_entry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_detection_skips_escapes() {
        assert!(has_wildcards("*.txt"));
        assert!(has_wildcards("a[bc]"));
        assert!(!has_wildcards("a\\*b"));
        assert!(!has_wildcards("plain"));
    }
}
