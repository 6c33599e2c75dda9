//! The two whiteout dialects kiln translates between: OCI layer tar markers (image-spec
//! `layer.md`: a `.wh.NAME` entry deletes NAME from lower layers, a `.wh..wh..opq` entry hides
//! every lower-layer child of its directory) and overlayfs upper/lower directories (a 0/0
//! character device is a whiteout, the `trusted.overlay.opaque` = `y` xattr, or
//! `user.overlay.opaque` with the `userxattr` mount option, marks an opaque directory).
//!
//! Pure name and metadata rules; no I/O beyond what the caller passes in.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// Prefix of a whiteout entry in a layer tar.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// Name of the opaque-directory marker entry in a layer tar.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// Prefix of names the spec reserves for whiteout metadata (aufs `.wh..wh.plnk` and the like).
pub const RESERVED_PREFIX: &str = ".wh..wh.";
/// The xattr overlayfs sets on an opaque directory (value `y`).
pub const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// The same with the `userxattr` mount option (unprivileged overlay).
pub const USER_OVERLAY_OPAQUE_XATTR: &str = "user.overlay.opaque";
/// xattr prefixes private to overlayfs: never copied into a layer.
pub const OVERLAY_PRIVATE_XATTR_PREFIXES: [&str; 2] = ["trusted.overlay.", "user.overlay."];

/// What a tar entry's final name component means for whiteout handling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TarName {
    /// An ordinary name.
    Plain,
    /// `.wh.NAME`: delete NAME from the layers below.
    Whiteout(OsString),
    /// `.wh..wh..opq`: the parent directory is opaque.
    Opaque,
    /// Another `.wh..wh.` name: reserved metadata, ignored as docker and containerd do.
    Reserved,
    /// `.wh.` with an empty, `.` or `..` name: refused.
    Invalid,
}

/// Classifies a tar entry's final name component.
pub fn classify(file_name: &OsStr) -> TarName {
    let bytes = file_name.as_bytes();
    if bytes == OPAQUE_MARKER.as_bytes() {
        return TarName::Opaque;
    }
    if bytes.starts_with(RESERVED_PREFIX.as_bytes()) {
        return TarName::Reserved;
    }
    match bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
        None => TarName::Plain,
        Some(b"") | Some(b".") | Some(b"..") => TarName::Invalid,
        Some(name) => TarName::Whiteout(OsString::from_vec(name.to_vec())),
    }
}

/// The tar name that whites out `file_name`.
pub fn whiteout_name(file_name: &OsStr) -> OsString {
    let mut name = OsString::from(WHITEOUT_PREFIX);
    name.push(file_name);
    name
}

/// Whether an upper-directory entry is an overlayfs whiteout: a character device 0/0.
pub fn is_overlay_whiteout(metadata: &std::fs::Metadata) -> bool {
    metadata.file_type().is_char_device() && metadata.rdev() == 0
}

/// Whether an xattr value marks an overlayfs opaque directory. Only `y` does; newer kernels
/// also write `x` ("may contain xattr whiteouts"), which is not opaque.
pub fn is_opaque_value(value: &[u8]) -> bool {
    value == b"y"
}

/// Whether an xattr is private to overlayfs and must not travel in a layer.
pub fn is_overlay_private_xattr(name: &[u8]) -> bool {
    OVERLAY_PRIVATE_XATTR_PREFIXES
        .iter()
        .any(|prefix| name.starts_with(prefix.as_bytes()))
}

/// Whether an xattr makes an upper-directory entry depend on lower-layer content that a tar
/// layer cannot carry: a directory renamed with `redirect_dir=on`, or a metadata-only copy-up
/// with `metacopy=on`.
pub fn needs_lower_layers(name: &[u8]) -> bool {
    ["redirect", "metacopy"].iter().any(|suffix| {
        OVERLAY_PRIVATE_XATTR_PREFIXES
            .iter()
            .any(|prefix| name.strip_prefix(prefix.as_bytes()) == Some(suffix.as_bytes()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, expect: TarName) {
        assert_eq!(classify(OsStr::new(name)), expect, "{name}");
    }

    #[test]
    fn classifies_tar_names() {
        check("file", TarName::Plain);
        check(".whatever", TarName::Plain);
        check(".wh.file", TarName::Whiteout("file".into()));
        check(".wh..hidden", TarName::Whiteout(".hidden".into()));
        check(".wh..wh..opq", TarName::Opaque);
        check(".wh..wh.plnk", TarName::Reserved);
        check(".wh.", TarName::Invalid);
        check(".wh..", TarName::Invalid);
        check(".wh...", TarName::Invalid);
        assert_eq!(whiteout_name(OsStr::new("x")), OsString::from(".wh.x"));
    }

    #[test]
    fn overlay_private_xattrs() {
        assert!(is_overlay_private_xattr(b"trusted.overlay.opaque"));
        assert!(is_overlay_private_xattr(b"user.overlay.origin"));
        assert!(!is_overlay_private_xattr(b"user.overlayish"));
        assert!(!is_overlay_private_xattr(b"security.capability"));
        assert!(is_opaque_value(b"y"));
        assert!(needs_lower_layers(b"trusted.overlay.redirect"));
        assert!(needs_lower_layers(b"user.overlay.metacopy"));
        assert!(!needs_lower_layers(b"trusted.overlay.origin"));
        assert!(!is_opaque_value(b"x"));
    }
}
