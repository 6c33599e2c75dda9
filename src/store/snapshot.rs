//! Snapshots: each layer of an image unpacked on demand into `snapshots/<chain id hex>/`, with
//! whiteouts as overlay whiteouts, so the directories of an image's chain stack as overlayfs
//! lower directories.
//!
//! A snapshot is unpacked into a directory under `tmp/` (same filesystem) and renamed into
//! place only when the layer's uncompressed bytes matched its diff ID, so a snapshot directory
//! that exists is complete. Applying the tar (escapes refused, whiteouts) is `layer::apply_layer`.
//!
//! Snapshots are derived data and are not fsynced file by file (neither unpacked ones nor the
//! upper dirs of RUN/COPY steps, whose overlays are mounted `volatile`): only the layer blob,
//! the cache record and the index are durable. So that a power loss or kernel crash cannot
//! leave a half-written snapshot that later builds would stack on, every process that is about
//! to create a snapshot first makes sure a durable marker `cache/unsynced/<boot id>` exists
//! (one fsync per boot). The sweep at the start of the next command of a later boot sees the
//! earlier boot's marker and removes every snapshot whose directory changed between that
//! marker and the current boot (ctime in `[marker mtime, boot time)`): after a clean shutdown
//! they were fine, after a crash they may not be, and either way they are unpacked again from
//! their blobs when needed. Snapshots older than the marker were made in an earlier boot and
//! survived its shutdown.

use super::{Image, Result, Store, StoreError};
use crate::digest::Digest;
use crate::error_chain;
use crate::layer::{apply_layer, WhiteoutMode};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// This boot's id (`/proc/sys/kernel/random/boot_id`), read once.
fn boot_id() -> Option<&'static str> {
    static BOOT_ID: OnceLock<Option<String>> = OnceLock::new();
    BOOT_ID
        .get_or_init(|| {
            std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .ok()
                .map(|text| text.trim().to_string())
                .filter(|id| !id.is_empty() && !id.contains('/'))
        })
        .as_deref()
}

/// When this boot began (`btime` of `/proc/stat`).
fn boot_time() -> Option<SystemTime> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let seconds: u64 = stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(seconds))
}

fn ctime(meta: &std::fs::Metadata) -> SystemTime {
    let seconds = Duration::from_secs(meta.ctime().max(0) as u64);
    UNIX_EPOCH + seconds + Duration::from_nanos(meta.ctime_nsec().max(0) as u64)
}

impl Store {
    fn unsynced_dir(&self) -> PathBuf {
        self.cache_dir().join("unsynced")
    }

    /// Call before creating a snapshot that is not fsynced: makes sure this boot's durable
    /// marker exists (see the module doc). One `stat` once the marker is there.
    pub fn note_unsynced_snapshot(&self) -> Result<()> {
        let Some(id) = boot_id() else {
            return Ok(());
        };
        let dir = self.unsynced_dir();
        let marker = dir.join(id);
        if marker.exists() {
            return Ok(());
        }
        let write_error = |source| StoreError::WriteFile {
            path: marker.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(write_error)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&marker)
            .map_err(write_error)?;
        file.sync_all().map_err(write_error)?;
        super::blob::sync_dir(&dir).map_err(write_error)?;
        super::blob::sync_dir(&self.cache_dir()).map_err(write_error)?;
        Ok(())
    }

    /// Removes the snapshots a crash in an earlier boot may have left incomplete (see the
    /// module doc), then that boot's marker. Returns how many were removed.
    pub fn drop_unsynced_snapshots(&self) -> Result<usize> {
        match (boot_id(), boot_time()) {
            (Some(id), Some(booted)) => self.drop_unsynced_snapshots_since(id, booted),
            _ => Ok(0),
        }
    }

    /// [`drop_unsynced_snapshots`](Self::drop_unsynced_snapshots) as seen from the boot
    /// `boot_id` that began at `booted`.
    pub fn drop_unsynced_snapshots_since(
        &self,
        boot_id: &str,
        booted: SystemTime,
    ) -> Result<usize> {
        let Ok(read_dir) = std::fs::read_dir(self.unsynced_dir()) else {
            return Ok(0);
        };
        let mut earlier: Vec<(PathBuf, SystemTime)> = Vec::new();
        for entry in read_dir.filter_map(|e| e.ok()) {
            if entry.file_name() == boot_id {
                continue;
            }
            if let Ok(modified) = entry.metadata().and_then(|m| m.modified()) {
                earlier.push((entry.path(), modified));
            }
        }
        let Some(since) = earlier.iter().map(|(_, t)| *t).min() else {
            return Ok(0);
        };
        let _pin = self.pin()?;
        let snapshots = self.snapshots_dir();
        let read_dir = std::fs::read_dir(&snapshots).map_err(|source| StoreError::WriteFile {
            path: snapshots.clone(),
            source,
        })?;
        let mut removed = 0;
        for entry in read_dir.filter_map(|e| e.ok()) {
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            let changed = ctime(&meta);
            if changed >= since && changed < booted {
                remove_snapshot(self, &entry.path())?;
                removed += 1;
            }
        }
        for (marker, _) in earlier {
            let _ = std::fs::remove_file(marker);
        }
        Ok(removed)
    }

    /// The directory of the snapshot with this chain ID (which may not exist yet).
    pub fn snapshot_path(&self, chain_id: &Digest) -> PathBuf {
        self.snapshots_dir().join(chain_id.hex())
    }

    /// Makes sure the snapshot of layer `n` of `image` exists (its lower layers need not be
    /// unpacked first: each snapshot holds only its own layer) and returns its directory.
    pub fn snapshot(&self, image: &Image, n: usize) -> Result<PathBuf> {
        let chain_ids = image.chain_ids()?;
        let diff_ids = image.diff_ids()?;
        let layer_digests = image.layer_digests()?;
        let (Some(chain_id), Some(diff_id), Some(layer_digest)) =
            (chain_ids.get(n), diff_ids.get(n), layer_digests.get(n))
        else {
            return Err(StoreError::Invalid(format!(
                "image {} has no layer {n}",
                image.id()
            )));
        };
        let target = self.snapshot_path(chain_id);
        if target.is_dir() {
            return Ok(target);
        }
        let _pin = self.pin()?;
        let staging = tempfile::Builder::new()
            .prefix(&super::owned_name("snapshot-"))
            .tempdir_in(self.tmp_dir())
            .map_err(|source| StoreError::TempFile {
                dir: self.tmp_dir(),
                source,
            })?;
        let reader = self.read_layer_uncompressed(layer_digest)?;
        // apply_layer reads the stream to its end and hashes all of it.
        let stats = apply_layer(reader, staging.path(), WhiteoutMode::Overlay).map_err(|err| {
            StoreError::Invalid(format!(
                "cannot unpack layer {layer_digest}: {}",
                error_chain(&err)
            ))
        })?;
        if stats.diff_id != *diff_id {
            return Err(StoreError::DigestMismatch {
                expected: diff_id.clone(),
                actual: stats.diff_id,
            });
        }
        let staged = staging.keep();
        self.note_unsynced_snapshot()?;
        match std::fs::rename(&staged, &target) {
            Ok(()) => {}
            // Another process unpacked the same layer meanwhile: theirs is as good as ours.
            Err(_) if target.is_dir() => {
                let _ = std::fs::remove_dir_all(&staged);
            }
            Err(source) => {
                let _ = std::fs::remove_dir_all(&staged);
                return Err(StoreError::WriteFile {
                    path: target,
                    source,
                });
            }
        }
        super::blob::sync_dir(&self.snapshots_dir()).map_err(|source| StoreError::WriteFile {
            path: self.snapshots_dir(),
            source,
        })?;
        Ok(target)
    }

    /// Unpacks every layer of `image` as needed and returns the snapshot directories in
    /// overlayfs `lowerdir=` order: the top layer first, the base layer last.
    pub fn snapshot_lowerdirs(&self, image: &Image) -> Result<Vec<PathBuf>> {
        let n_layers = image.layers().len();
        let mut dirs = (0..n_layers)
            .map(|n| self.snapshot(image, n))
            .collect::<Result<Vec<_>>>()?;
        dirs.reverse();
        Ok(dirs)
    }
}

/// Takes a snapshot out of `snapshots/` at once (rename into `tmp/`), then deletes it.
fn remove_snapshot(store: &Store, path: &Path) -> Result<()> {
    let trash = store.tmp_dir().join(super::owned_name("stale-snapshot"));
    std::fs::rename(path, &trash).map_err(|source| StoreError::WriteFile {
        path: path.to_path_buf(),
        source,
    })?;
    let _ = std::fs::remove_dir_all(&trash);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ImageConfig;
    use std::io::Write;

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            builder.append_data(&mut header, name, *data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn unpacks_each_layer_under_its_chain_id() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let base = store
            .write_layer(&mut &tar_of(&[("a", b"1")])[..], "base")
            .unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar_of(&[("b", b"2")])).unwrap();
        let top = store
            .write_layer(&mut &gz.finish().unwrap()[..], "top")
            .unwrap();
        let oci = serde_json::from_value(serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [base.diff_id.to_string(), top.diff_id.to_string()]},
        }))
        .unwrap();
        let image = store
            .put_image(
                &ImageConfig::new(oci),
                vec![base.descriptor(), top.descriptor()],
            )
            .unwrap();
        let lowerdirs = store.snapshot_lowerdirs(&image).unwrap();
        let chain = image.chain_ids().unwrap();
        assert_eq!(
            lowerdirs,
            vec![
                store.snapshot_path(&chain[1]),
                store.snapshot_path(&chain[0])
            ]
        );
        assert_eq!(std::fs::read(lowerdirs[0].join("b")).unwrap(), b"2");
        assert_eq!(std::fs::read(lowerdirs[1].join("a")).unwrap(), b"1");
        assert!(!lowerdirs[0].join("a").exists());
        // Idempotent, and nothing left in tmp.
        assert_eq!(store.snapshot_lowerdirs(&image).unwrap(), lowerdirs);
        assert_eq!(std::fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn unpacking_marks_the_boot_durably_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let layer = store
            .write_layer(&mut &tar_of(&[("a", b"1")])[..], "base")
            .unwrap();
        let oci = serde_json::from_value(serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id.to_string()]},
        }))
        .unwrap();
        let image = store
            .put_image(&ImageConfig::new(oci), vec![layer.descriptor()])
            .unwrap();
        store.snapshot(&image, 0).unwrap();
        let marker = store.unsynced_dir().join(boot_id().unwrap());
        assert!(marker.is_file(), "{}", marker.display());
        // This boot's own marker never drops anything.
        assert_eq!(store.drop_unsynced_snapshots().unwrap(), 0);
        assert!(marker.is_file());
    }

    #[test]
    fn a_later_boot_drops_the_snapshots_made_after_an_earlier_boots_marker() {
        let pause = || std::thread::sleep(Duration::from_millis(30));
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let snapshot = |name: &str| {
            let path = store.snapshots_dir().join(name);
            std::fs::create_dir(&path).unwrap();
            std::fs::write(path.join("f"), name).unwrap();
            path
        };
        // Made (and synced by a clean shutdown) before boot A wrote anything unsynced.
        let older = snapshot("older");
        pause();
        std::fs::create_dir_all(store.unsynced_dir()).unwrap();
        let marker = store.unsynced_dir().join("boot-a");
        std::fs::write(&marker, b"").unwrap();
        pause();
        let unsynced = snapshot("unsynced");
        pause();
        let booted = SystemTime::now();
        pause();
        // Made in the current boot, B, after it began.
        let current = snapshot("current");

        // Seen from boot A itself, nothing is dropped.
        assert_eq!(
            store
                .drop_unsynced_snapshots_since("boot-a", booted)
                .unwrap(),
            0
        );
        assert!(unsynced.is_dir() && marker.is_file());

        assert_eq!(
            store
                .drop_unsynced_snapshots_since("boot-b", booted)
                .unwrap(),
            1
        );
        assert!(!unsynced.exists());
        assert!(older.is_dir() && current.is_dir());
        assert!(!marker.exists(), "the earlier boot's marker is done with");
        assert_eq!(std::fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
        // Nothing more to do the next time.
        assert_eq!(
            store
                .drop_unsynced_snapshots_since("boot-b", booted)
                .unwrap(),
            0
        );
    }
}
