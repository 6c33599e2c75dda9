//! Snapshots: each layer of an image unpacked on demand into `snapshots/<chain id hex>/`, with
//! whiteouts as overlay whiteouts, so the directories of an image's chain stack as overlayfs
//! lower directories.
//!
//! A snapshot is unpacked into a directory under `tmp/` (same filesystem) and renamed into
//! place only when the layer's uncompressed bytes matched its diff ID, so a snapshot directory
//! that exists is complete. Applying the tar (escapes refused, whiteouts) is `layer::apply_layer`.

use super::{Image, Result, Store, StoreError};
use crate::digest::Digest;
use crate::error_chain;
use crate::layer::{apply_layer, WhiteoutMode};
use std::path::PathBuf;

impl Store {
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
}
