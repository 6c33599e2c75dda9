//! The build context: `.dockerignore` reading and matching with Docker's semantics, the walk
//! of the context directory into a [`ContextIndex`] (metadata plus the sha256 of every regular
//! file, hashed in parallel, with a persistent stat cache), and `COPY`/`ADD` source selection
//! with the canonical source digest that cache keys use.
//!
//! This module reads the context directory and the stat cache file only. It knows nothing of
//! Dockerfiles, images, snapshots or how the selected files are copied.

pub mod gomatch;
pub mod hash;
pub mod ignore;
pub mod select;
pub mod statcache;
pub mod walk;

use std::path::PathBuf;

pub use ignore::{IgnoreError, IgnoreFile, Matcher, PatternError};
pub use select::{source_digest, SelectedRoot, Selection};
pub use walk::{ContextIndex, Entry, EntryKind, ScanStats};

/// Failures while scanning a context or selecting COPY sources from it.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("cannot open build context {path}")]
    OpenContext {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("build context {path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("failed to read directory {path}")]
    ReadDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to stat {path}")]
    Stat {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to read symlink {path}")]
    ReadLink {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to hash {path}")]
    Hash {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to read stat cache {path}")]
    LoadStatCache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to write stat cache {path}")]
    SaveStatCache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("COPY source {copy_source:?} is empty")]
    EmptySource { copy_source: String },
    #[error("COPY source {copy_source:?}: {path:?} not found in build context{}",
        if *excluded { " (it is excluded by .dockerignore)" } else { "" })]
    SourceNotFound {
        copy_source: String,
        path: String,
        excluded: bool,
    },
    #[error("COPY source {copy_source:?}: {path:?} is not a directory")]
    NotADirectoryInPath { copy_source: String, path: String },
    #[error("COPY source {copy_source:?}: no files in the build context match")]
    NoMatch { copy_source: String },
    #[error("COPY source {copy_source:?} is outside the build context: {reason}")]
    OutsideContext { copy_source: String, reason: String },
    #[error("COPY source {copy_source:?}: too many levels of symbolic links")]
    SymlinkLoop { copy_source: String },
    #[error("COPY source {copy_source:?}: syntax error in pattern")]
    BadPattern { copy_source: String },
}
