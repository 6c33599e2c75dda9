//! The content-addressed store: an OCI image layout (blobs, index.json with names), unpacked
//! layer snapshots, build-cache records, one writer lock. Knows digests and bytes only: it
//! never sees build instructions, containers or registries.
//!
//! On disk, under one root:
//!
//! ```text
//! oci-layout                 {"imageLayoutVersion":"1.0.0"}
//! index.json                 one descriptor per (image, name); the name is the annotation
//!                            org.opencontainers.image.ref.name = full normalised reference
//!                            (docker.io/library/busybox:latest); unnamed (dangling) images
//!                            have a descriptor without it
//! blobs/sha256/<hex>         manifests, configs, layers (as received or zstd when kiln made them)
//! snapshots/<chainid-hex>/   unpacked layers keyed by chain ID, usable as overlay lower dirs
//! cache/                     build-cache records (owned by the cache/executor modules)
//! containers/                running containers' upper/work dirs (owned by the executor),
//!                            each named `owned_name(id)` so `sweep` knows its owner process
//! tmp/                       ingest files and staging dirs, same filesystem so rename commits;
//!                            named `owned_name(label)` too
//! lock                       flock: exclusive while index.json is changed
//! gc.lock                    flock: shared while a writer has uncommitted blobs; exclusive
//!                            while prune deletes
//! ```
//!
//! Invariants: a blob appears in `blobs/` only by rename after its digest was checked; index.json
//! is replaced whole by rename under `lock`; so a process killed anywhere leaves at most garbage
//! in `tmp/` and unreferenced blobs, which `prune` removes; `sweep` (run by build, run and
//! prune) removes the `tmp/` and `containers/` entries whose owner process is gone.

pub mod archive;
pub mod blob;
pub mod compression;
pub mod fsck;
pub mod image;
pub mod index;
pub mod ingest;
pub mod lock;
pub mod members;
pub mod prune;
pub mod snapshot;
pub mod sweep;
mod uncached;

use crate::digest::Digest;
use std::path::{Path, PathBuf};

pub use blob::{BlobInfo, BlobWriter};

/// `cache/<this>/`: the build's notes of which files a COPY left in which snapshot (a JSON
/// object whose `snapshot` field is the chain ID); `prune` removes those whose snapshot it
/// removed.
pub const COPY_NOTE_DIR: &str = "copies";
pub use compression::Compression;
pub use image::{Healthcheck, Image, ImageConfig};
pub use ingest::LayerInfo;
pub use lock::{GcPin, StoreLock};
pub use oci_spec::distribution::Reference;
pub use sweep::{owned_name, SweepReport};

/// Everything that can go wrong in the store, one variant per step.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create store directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot lock {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not an OCI image layout (oci-layout says {found:?})")]
    NotLayout { path: PathBuf, found: String },
    #[error("cannot write temporary file in {dir}")]
    TempFile {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to write blob")]
    WriteBlob(#[source] std::io::Error),
    #[error("failed to commit blob {digest}")]
    CommitBlob {
        digest: Digest,
        #[source]
        source: std::io::Error,
    },
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("size mismatch for {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("blob {digest} is missing from the store")]
    MissingBlob { digest: Digest },
    #[error("failed to read blob {digest}")]
    ReadBlob {
        digest: Digest,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to read {path}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to write {path}")]
    WriteFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} is not valid JSON: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid digest {value:?} in {what}")]
    BadDigest { what: String, value: String },
    #[error("invalid image reference {value:?}: {source}")]
    BadReference {
        value: String,
        #[source]
        source: oci_spec::distribution::ParseError,
    },
    #[error("no such image: {0}")]
    NoSuchImage(String),
    #[error("image ID prefix {prefix:?} is ambiguous: matches {n_matches} images")]
    AmbiguousId { prefix: String, n_matches: usize },
    #[error("unsupported media type {media_type:?} for {what}")]
    UnknownMediaType { what: String, media_type: String },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// An opened store root. Cheap to clone; holds no file handles.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

const OCI_LAYOUT: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;

/// ext2/3/4's "top of a directory hierarchy" inode flag (`chattr +T`, `FS_TOPDIR_FL`).
const FS_TOPDIR_FL: libc::c_int = 0x0002_0000;

/// Creates `dir` (when missing) and marks it `chattr +T`, so that ext4 places each directory
/// made in it (every container's and COPY's state dir) in a block group of its own choosing
/// (Orlov) rather than next to `dir`, and the files below it with it.
///
/// Why: on ext4 without a journal, allocating an inode skips, one by one and re-reading the
/// inode table each time, every inode of the group freed in the last 30 s or more. Without
/// the flag all state dirs land in the same few groups, the very ones `prune` or `rmi` just
/// freed a 10,000-file snapshot in, and a cold 10,000-file COPY after a prune took 3–8 s instead
/// of 1–1.5 s (bench/RESULTS.md). Only a placement hint: on other file systems, which do not
/// know the flag, nothing happens.
fn spread_subdirectories(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let Ok(file) = std::fs::File::open(dir) else {
        return Ok(());
    };
    use std::os::fd::AsRawFd;
    let mut flags: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS/SETFLAGS read and write one int at the pointer, which is valid.
    unsafe {
        if libc::ioctl(file.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) != 0
            || flags & FS_TOPDIR_FL != 0
        {
            return Ok(());
        }
        flags |= FS_TOPDIR_FL;
        // Best effort: a file system may refuse the flag.
        let _ = libc::ioctl(file.as_raw_fd(), libc::FS_IOC_SETFLAGS, &flags);
    }
    Ok(())
}

impl Store {
    /// Opens the store at `root`, creating the layout (directories, `oci-layout`, an empty
    /// `index.json`) when it is missing. Refuses a directory whose `oci-layout` is not 1.0.0.
    pub fn open(root: &Path) -> Result<Store> {
        let store = Store {
            root: root.to_path_buf(),
        };
        for dir in [
            store.root.clone(),
            store.blobs_dir(),
            store.tmp_dir(),
            store.cache_dir(),
            store.snapshots_dir(),
        ] {
            std::fs::create_dir_all(&dir).map_err(|source| StoreError::CreateDir {
                path: dir.clone(),
                source,
            })?;
        }
        spread_subdirectories(&store.containers_dir()).map_err(|source| StoreError::CreateDir {
            path: store.containers_dir(),
            source,
        })?;
        let layout_path = store.root.join("oci-layout");
        let index_path = store.index_path();
        if !layout_path.exists() || !index_path.exists() {
            let _lock = store.lock()?;
            if !layout_path.exists() {
                blob::write_file_atomic(&store.tmp_dir(), &layout_path, OCI_LAYOUT.as_bytes())?;
            }
            if !index_path.exists() {
                index::write_index(&store, &index::empty_index())?;
            }
        }
        let found =
            std::fs::read_to_string(&layout_path).map_err(|source| StoreError::ReadFile {
                path: layout_path.clone(),
                source,
            })?;
        let version = serde_json::from_str::<serde_json::Value>(&found)
            .ok()
            .and_then(|v| v["imageLayoutVersion"].as_str().map(str::to_string));
        if version.as_deref() != Some("1.0.0") {
            return Err(StoreError::NotLayout {
                path: store.root.clone(),
                found,
            });
        }
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `blobs/sha256`.
    pub fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }
    /// Where ingest files live until renamed into place; same filesystem as the blobs.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }
    /// Build-cache records; the store only creates the directory and never reads it.
    pub fn cache_dir(&self) -> PathBuf {
        self.root.join("cache")
    }
    /// Unpacked layers keyed by chain ID.
    pub fn snapshots_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }
    /// Containers' upper/work/merged dirs (the executor's).
    pub fn containers_dir(&self) -> PathBuf {
        self.root.join("containers")
    }
    pub fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }
    /// The path of a blob (which may not exist).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir().join(digest.hex())
    }
}

/// Parses and normalises an image name (`busybox` -> `docker.io/library/busybox:latest`).
pub fn parse_reference(value: &str) -> Result<Reference> {
    crate::reference::parse(value).map_err(|source| StoreError::BadReference {
        value: value.to_string(),
        source,
    })
}

/// Converts kiln's digest to oci-spec's.
pub fn oci_digest(digest: &Digest) -> oci_spec::image::Digest {
    digest
        .to_string()
        .parse()
        .expect("a kiln Digest is always a valid OCI digest")
}

/// Converts an oci-spec digest (as found in a descriptor) to kiln's, naming the place on error.
pub fn kiln_digest(digest: &oci_spec::image::Digest, what: &str) -> Result<Digest> {
    digest
        .to_string()
        .parse()
        .map_err(|_| StoreError::BadDigest {
            what: what.to_string(),
            value: digest.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_spread_their_state_dirs_over_the_file_system() {
        use std::os::fd::AsRawFd;
        let flags_of = |path: &Path| {
            let file = std::fs::File::open(path).unwrap();
            let mut flags: libc::c_int = 0;
            // SAFETY: FS_IOC_GETFLAGS writes one int at a valid pointer.
            let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) };
            assert_eq!(
                ret,
                0,
                "{} has no inode flags: this test needs ext4 (or ext2/3) for its temp dirs",
                path.display()
            );
            flags
        };
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let store = Store::open(&root).unwrap();
        assert_ne!(flags_of(&store.containers_dir()) & FS_TOPDIR_FL, 0);
        assert_eq!(flags_of(&store.snapshots_dir()) & FS_TOPDIR_FL, 0);
        // Idempotent on an existing store.
        Store::open(&root).unwrap();
        assert_ne!(flags_of(&store.containers_dir()) & FS_TOPDIR_FL, 0);
    }

    #[test]
    fn open_creates_a_layout_and_refuses_other_directories() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("oci-layout")).unwrap(),
            OCI_LAYOUT
        );
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(store.index_path()).unwrap()).unwrap();
        assert_eq!(index["schemaVersion"], 2);
        assert_eq!(index["manifests"], serde_json::json!([]));
        // Opening again changes nothing.
        Store::open(dir.path()).unwrap();

        let other = tempfile::tempdir().unwrap();
        std::fs::write(
            other.path().join("oci-layout"),
            r#"{"imageLayoutVersion":"9"}"#,
        )
        .unwrap();
        let err = Store::open(other.path()).unwrap_err();
        assert!(matches!(err, StoreError::NotLayout { .. }), "{err}");
    }

    #[test]
    fn names_normalise_as_docker_does() {
        assert_eq!(
            parse_reference("busybox").unwrap().whole(),
            "docker.io/library/busybox:latest"
        );
        assert!(parse_reference("Bad Name").is_err());
    }
}
