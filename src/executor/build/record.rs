//! Build-cache records: `CacheKey -> what the step produced`, one small JSON file per key
//! under `<store>/cache/records/<key hex>.json`, replaced whole (temp file, fsync, rename) so a
//! reader never sees half a record.
//!
//! A record holds the step's layer (blob digest, diff ID, size, media type) or none for a step
//! with an empty diff, the chain ID whose snapshot is the step's root file system, and the time
//! the step first ran (kept in the image history so a fully cached rebuild gives the same
//! image). The config change a step makes is not stored: the planner recomputes it exactly from
//! the Dockerfile, and it is part of the key. A record is only usable when its blob is still in
//! the store (`prune` may have removed it); its snapshot is unpacked again from the blob when
//! missing. `remote_cache` ships these records through a registry as they are.

use crate::cache::CacheKey;
use crate::digest::Digest;
use crate::store::Store;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::PathBuf;

/// A layer a step added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRef {
    pub digest: Digest,
    pub diff_id: Digest,
    pub size: u64,
    pub media_type: String,
}

impl LayerRef {
    /// A layer whose blob is still being written: only its diff ID is known (enough for chain
    /// IDs and snapshots). Its digest is the diff ID and its size 0 until the executor puts
    /// the finished layer in its place; no record or image is ever written with it.
    pub fn pending(diff_id: Digest, media_type: String) -> LayerRef {
        LayerRef {
            digest: diff_id.clone(),
            diff_id,
            size: 0,
            media_type,
        }
    }

    /// Whether this is a [`LayerRef::pending`] layer (a real blob is never empty, and a
    /// compressed one never has its tar's digest).
    pub fn is_pending(&self) -> bool {
        self.size == 0 && self.digest == self.diff_id
    }
}

/// What a cached step produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheRecord {
    /// The layer, or `None` when the step changed no file.
    pub layer: Option<LayerRef>,
    /// RFC 3339 time the step ran.
    pub created: String,
}

const RECORD_DIR: &str = "records";

fn record_path(store: &Store, key: &CacheKey) -> PathBuf {
    store
        .cache_dir()
        .join(RECORD_DIR)
        .join(format!("{}.json", key.digest().hex()))
}

/// Reads the record of `key`; `None` when there is none or it does not parse (a damaged
/// record is a miss, never an error: the step simply runs again and rewrites it).
pub fn load(store: &Store, key: &CacheKey) -> Option<CacheRecord> {
    let bytes = std::fs::read(record_path(store, key)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Writes the record of `key` atomically.
pub fn save(store: &Store, key: &CacheKey, record: &CacheRecord) -> std::io::Result<()> {
    let path = record_path(store, key);
    let dir = path
        .parent()
        .expect("record path has a parent")
        .to_path_buf();
    std::fs::create_dir_all(&dir)?;
    let mut file = tempfile::NamedTempFile::new_in(&dir)?;
    file.write_all(&serde_json::to_vec(record).map_err(std::io::Error::other)?)?;
    file.as_file().sync_all()?;
    file.persist(&path).map_err(|err| err.error)?;
    Ok(())
}

/// Per-image note of which history entries were cache hits in the build that last produced
/// the image: `<store>/cache/builds/<image id hex>.json` = `{"cached": [bool per history entry]}`.
/// Kept outside the image config so a cached rebuild gives the same image ID.
pub fn save_build_note(store: &Store, image_id: &Digest, cached: &[bool]) -> std::io::Result<()> {
    let dir = store.cache_dir().join("builds");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{}.json", image_id.hex()));
    let bytes = serde_json::to_vec(&serde_json::json!({ "cached": cached }))
        .map_err(std::io::Error::other)?;
    // A rebuild that hit the same steps as last time has nothing new to say.
    if std::fs::read(&path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    let mut file = tempfile::NamedTempFile::new_in(&dir)?;
    file.write_all(&bytes)?;
    file.as_file().sync_all()?;
    file.persist(&path).map_err(|err| err.error)?;
    Ok(())
}

/// The cache-hit flags of `image_id`'s history entries from the last build that produced it.
pub fn load_build_note(store: &Store, image_id: &Digest) -> Option<Vec<bool>> {
    let path = store
        .cache_dir()
        .join("builds")
        .join(format!("{}.json", image_id.hex()));
    let value: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    serde_json::from_value(value["cached"].clone()).ok()
}

/// What the last run of a COPY wrote, for the next run of the same COPY (same parent key, same
/// op, any source content) to hard-link its unchanged files from:
/// `<store>/cache/copies/<lineage key hex>.json` =
/// `{"snapshot": "sha256:<chain id>", "files": {"<path in the snapshot>": "sha256:<content>"}}`.
/// Only a hint: every file is checked against the snapshot before it is linked, `prune` removes
/// notes whose snapshot is gone, and a damaged or missing note is simply not used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyNote {
    pub snapshot: Digest,
    pub files: std::collections::BTreeMap<String, Digest>,
    /// The layer blob that run committed and its frames, whose unchanged ones the next run
    /// copies instead of compressing again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<NotedLayer>,
}

/// A committed blob and its frame index ([`crate::layer::frames`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotedLayer {
    pub blob: Digest,
    pub frames: crate::layer::FrameIndex,
}

fn copy_note_path(store: &Store, lineage: &CacheKey) -> PathBuf {
    store
        .cache_dir()
        .join(crate::store::COPY_NOTE_DIR)
        .join(format!("{}.json", lineage.digest().hex()))
}

pub fn load_copy_note(store: &Store, lineage: &CacheKey) -> Option<CopyNote> {
    let bytes = std::fs::read(copy_note_path(store, lineage)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Replaces the note of `lineage` (temp file and rename; not fsynced: a note lost in a crash
/// only costs the next build its links).
pub fn save_copy_note(store: &Store, lineage: &CacheKey, note: &CopyNote) -> std::io::Result<()> {
    let path = copy_note_path(store, lineage);
    let dir = path.parent().expect("note path has a parent").to_path_buf();
    std::fs::create_dir_all(&dir)?;
    let mut file = tempfile::NamedTempFile::new_in(&dir)?;
    file.write_all(&serde_json::to_vec(note).map_err(std::io::Error::other)?)?;
    file.persist(&path).map_err(|err| err.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_damaged_records_are_misses() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = CacheKey::from(Digest::of_bytes(b"step"));
        assert_eq!(load(&store, &key), None);
        let record = CacheRecord {
            layer: Some(LayerRef {
                digest: Digest::of_bytes(b"blob"),
                diff_id: Digest::of_bytes(b"tar"),
                size: 4,
                media_type: "application/vnd.oci.image.layer.v1.tar+zstd".into(),
            }),
            created: "2026-01-01T00:00:00Z".into(),
        };
        save(&store, &key, &record).unwrap();
        assert_eq!(load(&store, &key), Some(record));
        std::fs::write(record_path(&store, &key), b"{not json").unwrap();
        assert_eq!(load(&store, &key), None);
    }

    #[test]
    fn build_notes_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = Digest::of_bytes(b"config");
        save_build_note(&store, &id, &[false, true]).unwrap();
        assert_eq!(load_build_note(&store, &id), Some(vec![false, true]));
    }

    #[test]
    fn an_unchanged_build_note_is_not_rewritten() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = Digest::of_bytes(b"config");
        let path = store
            .cache_dir()
            .join("builds")
            .join(format!("{}.json", id.hex()));
        save_build_note(&store, &id, &[false, true]).unwrap();
        let inode = std::fs::metadata(&path).unwrap().ino();
        save_build_note(&store, &id, &[false, true]).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), inode);
        save_build_note(&store, &id, &[true, true]).unwrap();
        assert_ne!(std::fs::metadata(&path).unwrap().ino(), inode);
        assert_eq!(load_build_note(&store, &id), Some(vec![true, true]));
    }
}
