//! Layers as streams: commit of an overlay upper directory into an OCI
//! layer tar, and safe application of a layer tar onto a directory.
//!
//! This module knows tar, overlayfs whiteouts and the OCI image-spec layer rules
//! (`layer.md`: `.wh.NAME` whiteouts, `.wh..wh..opq` opaque markers). It works on plain
//! `Read`/`Write` streams and paths: it knows nothing of the store, of snapshots' ids, of
//! containers or of Dockerfiles.
//!
//! - [`commit::write_layer`] walks an upper directory once and streams
//!   tar -> sha256 (diff ID) -> compressor -> sha256 (digest) -> the caller's writer.
//! - zstd blobs are runs of independent frames ([`frames`]), so a commit of a tree that
//!   changed in one place can copy the other frames from the previous blob of the same step.
//! - [`apply::apply_layer`] applies an uncompressed layer tar onto a directory, refusing any
//!   entry that would escape it, turning whiteouts into overlay whiteouts or deletions.

pub mod apply;
pub mod commit;
pub mod frames;
pub(crate) mod tar_format;
pub mod whiteout;
pub(crate) mod xattr;

pub use apply::{apply_layer, ApplyStats, WhiteoutMode};
pub use commit::{
    write_layer, write_layer_frames, write_layer_frames_with, write_layer_stream, write_tar,
    CommitOptions, CommittedLayer, Compression, LayerStream, TarLayer, DEFAULT_ZSTD_LEVEL,
};
pub use frames::{FrameIndex, FramedStream, Reuse};

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while committing or applying a layer; each variant names the
/// path or tar entry it failed on.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("failed to read {path} in the upper directory")]
    ReadUpper {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to read extended attributes of {path}")]
    ReadXattrs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} changed size while it was committed: expected {expected} bytes, read {actual}"
    )]
    FileChanged {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("{path} in the upper directory carries {xattr}: mount the overlay with redirect_dir=off,metacopy=off so every change is in the upper directory")]
    OverlayRedirect { path: PathBuf, xattr: String },
    #[error("invalid exclude path {path}: {reason}")]
    InvalidExclude { path: PathBuf, reason: &'static str },
    #[error("failed to write the layer stream")]
    WriteLayer(#[source] io::Error),
    #[error("failed to copy frames of the previous layer blob")]
    ReadPrevious {
        #[source]
        source: io::Error,
    },
    #[error("failed to finish the {compression} compressor")]
    FinishCompression {
        compression: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("failed to open destination directory {path}")]
    OpenDest {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to read the layer tar stream")]
    ReadTar(#[source] io::Error),
    #[error("failed to read tar entry {entry:?}")]
    ReadEntry {
        entry: String,
        #[source]
        source: io::Error,
    },
    #[error("refusing tar entry {entry:?}: {reason}")]
    UnsafePath { entry: String, reason: &'static str },
    #[error("refusing tar entry {entry:?}: hard link target {target:?} {reason}")]
    UnsafeLinkTarget {
        entry: String,
        target: String,
        reason: &'static str,
    },
    #[error("refusing tar entry {entry:?}: parent {component:?} is a symbolic link, which is never followed")]
    SymlinkParent { entry: String, component: String },
    #[error("tar entry {entry:?}: parent {component:?} is not a directory")]
    ParentNotDirectory { entry: String, component: String },
    #[error("tar entry {entry:?} has unsupported type {kind}")]
    UnsupportedEntry { entry: String, kind: String },
    #[error("failed to {step} for tar entry {entry:?}")]
    Apply {
        entry: String,
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("failed to open compressed layer stream")]
    Decompress(#[source] io::Error),
}
