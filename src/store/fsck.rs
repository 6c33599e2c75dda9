//! `fsck`: re-hashes every blob against its file name and checks every reference in
//! index.json down to the layers (present, right size, config diff IDs matching the layer
//! count). Read-only: it reports problems and never repairs.

use super::image::parse_manifest;
use super::index::is_manifest_media_type;
use super::{kiln_digest, Result, Store, StoreError};
use crate::digest::{Digest, DigestReader};
use std::collections::BTreeSet;

/// What `fsck` found.
#[derive(Debug, Default)]
pub struct FsckReport {
    pub n_blobs: usize,
    pub n_images: usize,
    /// One line per problem, naming the blob or reference.
    pub problems: Vec<String>,
}

impl FsckReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

impl Store {
    /// Verifies every blob and every reference.
    pub fn fsck(&self) -> Result<FsckReport> {
        let mut report = FsckReport::default();
        let mut present = BTreeSet::new();
        let dir = self.blobs_dir();
        let read_dir = std::fs::read_dir(&dir).map_err(|source| StoreError::ReadFile {
            path: dir.clone(),
            source,
        })?;
        let mut names: Vec<String> = Vec::new();
        for entry in read_dir {
            let entry = entry.map_err(|source| StoreError::ReadFile {
                path: dir.clone(),
                source,
            })?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        for name in names {
            report.n_blobs += 1;
            let Ok(digest) = format!("sha256:{name}").parse::<Digest>() else {
                report
                    .problems
                    .push(format!("blobs/sha256/{name}: not a sha256 digest name"));
                continue;
            };
            match self.read_blob(&digest).and_then(|file| {
                let mut reader =
                    DigestReader::new(std::io::BufReader::with_capacity(1 << 20, file));
                std::io::copy(&mut reader, &mut std::io::sink()).map_err(|source| {
                    StoreError::ReadBlob {
                        digest: digest.clone(),
                        source,
                    }
                })?;
                Ok(reader.finish().0)
            }) {
                Ok(actual) if actual == digest => {
                    present.insert(digest);
                }
                Ok(actual) => report
                    .problems
                    .push(format!("blob {digest}: content hashes to {actual}")),
                Err(err) => report.problems.push(format!("blob {digest}: {err}")),
            }
        }
        let entries = match self.index_entries() {
            Ok(entries) => entries,
            Err(err) => {
                report.problems.push(format!("index.json: {err}"));
                return Ok(report);
            }
        };
        let mut checked = BTreeSet::new();
        for entry in entries {
            let label = match &entry.name {
                Some(name) => format!("{name} ({})", entry.manifest),
                None => entry.manifest.to_string(),
            };
            if !present.contains(&entry.manifest) {
                report
                    .problems
                    .push(format!("{label}: manifest blob missing or corrupt"));
                continue;
            }
            if !checked.insert(entry.manifest.clone()) {
                continue;
            }
            if !is_manifest_media_type(entry.descriptor.media_type().as_ref()) {
                // A nested index (multi-platform image): check its children are present.
                let bytes = self.read_blob_bytes(&entry.manifest)?;
                match serde_json::from_slice::<oci_spec::image::ImageIndex>(&bytes) {
                    Ok(index) => {
                        for child in index.manifests() {
                            match kiln_digest(child.digest(), &label) {
                                Ok(d) if present.contains(&d) => {}
                                _ => report.problems.push(format!(
                                    "{label}: index names missing manifest {}",
                                    child.digest()
                                )),
                            }
                        }
                    }
                    Err(err) => report.problems.push(format!("{label}: {err}")),
                }
                continue;
            }
            report.n_images += 1;
            let bytes = self.read_blob_bytes(&entry.manifest)?;
            let manifest = match parse_manifest(&bytes, &label) {
                Ok(manifest) => manifest,
                Err(err) => {
                    report.problems.push(format!("{label}: {err}"));
                    continue;
                }
            };
            for descriptor in std::iter::once(manifest.config()).chain(manifest.layers()) {
                let digest = match kiln_digest(descriptor.digest(), &label) {
                    Ok(d) => d,
                    Err(err) => {
                        report.problems.push(format!("{label}: {err}"));
                        continue;
                    }
                };
                if !present.contains(&digest) {
                    report
                        .problems
                        .push(format!("{label}: blob {digest} missing or corrupt"));
                    continue;
                }
                let size = self.blob_size(&digest)?;
                if size != descriptor.size() {
                    report.problems.push(format!(
                        "{label}: blob {digest} is {size} bytes, manifest says {}",
                        descriptor.size()
                    ));
                }
            }
            match self.image(&entry.manifest) {
                Ok(image) => match image.diff_ids() {
                    Ok(diff_ids) if diff_ids.len() == manifest.layers().len() => {}
                    Ok(diff_ids) => report.problems.push(format!(
                        "{label}: {} layers but {} diff IDs in the config",
                        manifest.layers().len(),
                        diff_ids.len()
                    )),
                    Err(err) => report.problems.push(format!("{label}: {err}")),
                },
                Err(err) => report.problems.push(format!("{label}: {err}")),
            }
        }
        Ok(report)
    }
}
