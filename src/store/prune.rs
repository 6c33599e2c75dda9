//! `prune`: removes blobs no image in index.json reaches, snapshots no image's chain uses, and
//! everything in `tmp/` but the entries of live kiln processes (`sweep::Owner`); it starts with
//! the sweep of dead kilns' container dirs and staging entries. Runs with the gc lock exclusive (so no writer holding a pin loses its
//! blobs) and the writer lock (so index.json does not change meanwhile).

use super::{kiln_digest, Result, Store, StoreError};
use crate::digest::Digest;
use std::collections::BTreeSet;
use std::path::Path;

/// What `prune` removed. `n_temp` and `bytes_freed` include what its sweep removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub n_blobs: usize,
    pub n_snapshots: usize,
    pub n_temp: usize,
    pub bytes_freed: u64,
    /// The sweep of dead kilns' entries that prune starts with (`Store::sweep`).
    pub swept: super::SweepReport,
}

fn dir_names(dir: &Path) -> Result<Vec<String>> {
    match std::fs::read_dir(dir) {
        Ok(read_dir) => Ok(read_dir
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(StoreError::ReadFile {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

fn remove_any(path: &Path) -> Result<u64> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(_) => return Ok(0),
    };
    let result = if meta.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    result.map_err(|source| StoreError::WriteFile {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(if meta.is_dir() { 0 } else { meta.len() })
}

impl Store {
    /// The blobs index.json reaches: manifests (and nested indexes), configs, layers.
    pub fn referenced_blobs(&self) -> Result<(BTreeSet<Digest>, BTreeSet<Digest>)> {
        let mut blobs = BTreeSet::new();
        let mut chains = BTreeSet::new();
        let mut pending: Vec<Digest> = self
            .index_entries()?
            .into_iter()
            .map(|e| e.manifest)
            .collect();
        while let Some(digest) = pending.pop() {
            if !blobs.insert(digest.clone()) {
                continue;
            }
            let bytes = match self.read_blob_bytes(&digest) {
                Ok(bytes) => bytes,
                Err(StoreError::MissingBlob { .. }) => continue,
                Err(err) => return Err(err),
            };
            let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            if let Some(children) = value["manifests"].as_array() {
                for child in children {
                    if let Some(d) = child["digest"].as_str().and_then(|d| d.parse().ok()) {
                        pending.push(d);
                    }
                }
                continue;
            }
            if let Ok(image) = self.image(&digest) {
                blobs.insert(kiln_digest(image.manifest.config().digest(), "manifest")?);
                blobs.extend(image.layer_digests()?);
                chains.extend(image.chain_ids()?);
            }
        }
        Ok((blobs, chains))
    }

    /// Sweeps the entries of dead kiln processes, then removes what nothing references.
    pub fn prune(&self) -> Result<PruneReport> {
        let swept = self.sweep();
        let _gc = self.gc_exclusive()?;
        let _lock = self.lock()?;
        let (blobs, chains) = self.referenced_blobs()?;
        let mut report = PruneReport {
            n_temp: swept.n_temp,
            bytes_freed: swept.bytes,
            swept,
            ..PruneReport::default()
        };
        for name in dir_names(&self.blobs_dir())? {
            let keep = format!("sha256:{name}")
                .parse::<Digest>()
                .map(|d| blobs.contains(&d))
                .unwrap_or(false);
            if !keep {
                report.bytes_freed += remove_any(&self.blobs_dir().join(&name))?;
                report.n_blobs += 1;
            }
        }
        for name in dir_names(&self.snapshots_dir())? {
            let keep = format!("sha256:{name}")
                .parse::<Digest>()
                .map(|d| chains.contains(&d))
                .unwrap_or(false);
            if !keep {
                remove_any(&self.snapshots_dir().join(&name))?;
                report.n_snapshots += 1;
            }
        }
        // Notes naming a snapshot that is gone (or unreadable ones, or a dead writer's temp file).
        let notes = self.cache_dir().join(super::COPY_NOTE_DIR);
        for name in dir_names(&notes)? {
            let path = notes.join(&name);
            let snapshot = std::fs::read(&path)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
                .and_then(|note| note["snapshot"].as_str()?.parse::<Digest>().ok());
            if !snapshot.is_some_and(|chain| chains.contains(&chain)) {
                remove_any(&path)?;
            }
        }
        for name in dir_names(&self.tmp_dir())? {
            // A live kiln's staging (a `kiln run`, a pull) is not garbage; see `sweep`.
            let owner = super::sweep::Owner::parse_name(&name).map(|(owner, _)| owner);
            if owner.is_some_and(|o| o.liveness() != super::sweep::Liveness::Dead) {
                continue;
            }
            report.bytes_freed += remove_any(&self.tmp_dir().join(&name))?;
            report.n_temp += 1;
        }
        Ok(report)
    }
}
