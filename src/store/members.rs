//! Safety checks on tar member names, for archives kiln reads (`load` archives, `import`
//! rootfs tarballs): no absolute paths, no `..`, no member written through an earlier symlink
//! member, no hard link to a path outside the archive.
//!
//! Hand-written because the check is about the archive as a whole (what earlier members made
//! symlinks), which no tar crate offers without extracting to disk.

use std::collections::HashSet;

/// Why a member was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemberError {
    #[error("archive member {0:?} has an absolute path")]
    Absolute(String),
    #[error("archive member {0:?} escapes the archive with '..'")]
    DotDot(String),
    #[error("archive member {path:?} would be written through the symlink {symlink:?}")]
    ThroughSymlink { path: String, symlink: String },
    #[error("hard link {path:?} points outside the archive ({target:?})")]
    HardLinkOutside { path: String, target: String },
    #[error("archive member has an empty name")]
    Empty,
}

/// Normalises a member name: drops `.` and empty components and a leading `./`. Refuses
/// absolute names and `..` components.
pub fn normalize(name: &str) -> Result<String, MemberError> {
    if name.starts_with('/') {
        return Err(MemberError::Absolute(name.to_string()));
    }
    let mut parts = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(MemberError::DotDot(name.to_string())),
            other => parts.push(other),
        }
    }
    Ok(parts.join("/"))
}

/// Resolves a symlink `target` found at member `link` to an archive path, or `None` when it
/// points outside the archive (absolute, or `..` past the top).
pub fn resolve_symlink(link: &str, target: &str) -> Option<String> {
    if target.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = link.split('/').collect();
    parts.pop();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            other => parts.push(other),
        }
    }
    Some(parts.join("/"))
}

/// Walks the members of one archive in order.
#[derive(Debug, Default)]
pub struct MemberChecker {
    symlinks: HashSet<String>,
}

/// The kind of member, as far as the checks care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberKind<'a> {
    Directory,
    File,
    Symlink,
    HardLink { target: &'a str },
    Other,
}

impl MemberChecker {
    /// Checks one member and returns its normalised name.
    pub fn check(&mut self, name: &str, kind: MemberKind<'_>) -> Result<String, MemberError> {
        let path = normalize(name)?;
        if path.is_empty() && kind != MemberKind::Directory {
            return Err(MemberError::Empty);
        }
        self.check_not_through_symlink(&path)?;
        if let MemberKind::HardLink { target } = kind {
            let target_path = normalize(target).map_err(|_| MemberError::HardLinkOutside {
                path: path.clone(),
                target: target.to_string(),
            })?;
            self.check_not_through_symlink(&target_path).map_err(|_| {
                MemberError::HardLinkOutside {
                    path: path.clone(),
                    target: target.to_string(),
                }
            })?;
        }
        if kind == MemberKind::Symlink {
            self.symlinks.insert(path.clone());
        } else {
            // A later member of another type replaces the symlink.
            self.symlinks.remove(&path);
        }
        Ok(path)
    }

    fn check_not_through_symlink(&self, path: &str) -> Result<(), MemberError> {
        let mut prefix = String::new();
        let components: Vec<&str> = path.split('/').collect();
        for component in &components[..components.len().saturating_sub(1)] {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(component);
            if self.symlinks.contains(&prefix) {
                return Err(MemberError::ThroughSymlink {
                    path: path.to_string(),
                    symlink: prefix,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(members: &[(&str, MemberKind<'_>)]) -> Result<Vec<String>, MemberError> {
        let mut checker = MemberChecker::default();
        members
            .iter()
            .map(|(name, kind)| checker.check(name, *kind))
            .collect()
    }

    #[test]
    fn accepts_ordinary_archives() {
        assert_eq!(
            check(&[
                ("./", MemberKind::Directory),
                ("./bin/", MemberKind::Directory),
                ("bin/sh", MemberKind::Symlink),
                ("etc//passwd", MemberKind::File),
                (
                    "etc/link",
                    MemberKind::HardLink {
                        target: "etc/passwd"
                    }
                ),
            ])
            .unwrap(),
            vec!["", "bin", "bin/sh", "etc/passwd", "etc/link"]
        );
    }

    #[test]
    fn refuses_escapes() {
        assert!(matches!(
            check(&[("../x", MemberKind::File)]),
            Err(MemberError::DotDot(_))
        ));
        assert!(matches!(
            check(&[("a/../../x", MemberKind::File)]),
            Err(MemberError::DotDot(_))
        ));
        assert!(matches!(
            check(&[("/etc/passwd", MemberKind::File)]),
            Err(MemberError::Absolute(_))
        ));
        assert!(matches!(
            check(&[("lnk", MemberKind::Symlink), ("lnk/x", MemberKind::File)]),
            Err(MemberError::ThroughSymlink { .. })
        ));
        assert!(matches!(
            check(&[(
                "h",
                MemberKind::HardLink {
                    target: "../etc/shadow"
                }
            )]),
            Err(MemberError::HardLinkOutside { .. })
        ));
        assert!(matches!(
            check(&[(
                "h",
                MemberKind::HardLink {
                    target: "/etc/shadow"
                }
            )]),
            Err(MemberError::HardLinkOutside { .. })
        ));
    }

    #[test]
    fn resolves_symlink_targets() {
        assert_eq!(
            resolve_symlink("a/b/layer.tar", "../c/layer.tar").as_deref(),
            Some("a/c/layer.tar")
        );
        assert_eq!(resolve_symlink("a", "../../x"), None);
        assert_eq!(resolve_symlink("a", "/x"), None);
    }
}
